//! What `kat record --metrics` serves: counters and histograms of the
//! events, in Prometheus' conventions (docs/metrics.md). Every label has
//! a bounded set of values (reasons, kinds, kernel RST reasons): never an
//! address, a port or a pid. The owner's labels (namespace, pod,
//! container, unit) are as many as the node runs, so each family takes at
//! most `max_label_sets` of them and counts the rest under `_overflow`.
//! Fed by the live loop; encoded on each scrape (`server`).

pub mod server;

use prometheus_client::encoding::{EncodeLabel as _, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;

use crate::conns::Census;
use crate::event::{Closes, Event, Origin, What};
use crate::workload::Workload;

/// Seconds: the idle timeouts middleboxes commonly have (AWS NLB 350 s,
/// many NATs 60 s, 240 s, 900 s, 1 or 2 hours), and shorter ones.
pub const IDLE_BUCKETS: [f64; 13] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 240.0, 350.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
];

/// Who owned the connection. A label kat has no value for (no pod, no
/// unit, owner unknown) is left out, as Prometheus reads an empty one.
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq)]
struct OwnerLabels {
    namespace: String,
    pod: String,
    container: String,
    unit: String,
}

impl EncodeLabelSet for OwnerLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        for (key, value) in self.pairs() {
            if !value.is_empty() {
                (key, value).encode(encoder.encode_label())?;
            }
        }
        Ok(())
    }
}

/// The owner labels of label sets over a family's cap.
pub const OVERFLOW: &str = "_overflow";

impl OwnerLabels {
    fn of(w: Option<&Workload>) -> Self {
        let Some(w) = w else {
            return Self::default();
        };
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        Self {
            namespace: s(&w.namespace),
            pod: s(&w.pod.clone().or_else(|| w.pod_uid.clone())),
            container: s(&w.container),
            unit: s(&w.unit),
        }
    }

    fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("container", &self.container),
            ("unit", &self.unit),
        ]
    }

    fn overflow() -> Self {
        Self {
            namespace: OVERFLOW.into(),
            pod: OVERFLOW.into(),
            container: OVERFLOW.into(),
            unit: OVERFLOW.into(),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
    #[prometheus(flatten)]
    owner: OwnerLabels,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
    #[prometheus(flatten)]
    owner: OwnerLabels,
}

/// The label sets one family has taken, up to its cap; a new set beyond it
/// has its owner labels replaced by `_overflow`.
struct Capped<L> {
    taken: Mutex<HashSet<L>>,
    max: usize,
}

impl<L: Clone + Hash + Eq> Capped<L> {
    fn new(max: usize) -> Self {
        Self {
            taken: Mutex::new(HashSet::new()),
            max,
        }
    }

    /// `labels`, or the same with `overflow` applied when the cap is reached.
    fn admit(&self, labels: L, overflow: impl FnOnce(L) -> L) -> L {
        // Only this set of labels is at stake: a panic elsewhere leaves it whole.
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if taken.contains(&labels) {
            return labels;
        }
        if taken.len() < self.max {
            taken.insert(labels.clone());
            return labels;
        }
        overflow(labels)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KernelReasonLabel {
    kernel_reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

fn idle_histogram() -> Histogram {
    Histogram::new(IDLE_BUCKETS)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    keepalive: String,
    source: String,
}

/// A histogram of what is true now rather than of what happened: each
/// census replaces it whole, so its buckets go down as well as up.
#[derive(Debug, Clone)]
pub struct Current(Arc<RwLock<Histogram>>);

impl Current {
    fn replace(&self, h: Histogram) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = h;
    }
}

impl EncodeMetric for Current {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The families the connections census sets (from its own thread).
#[derive(Clone)]
pub struct ConnGauges {
    connections: Family<ConnLabels, Gauge>,
    keepalive_idle: Current,
}

impl ConnGauges {
    /// Publishes one census: every combination is set, to 0 when none.
    pub fn publish(&self, census: &Census) {
        for on in [true, false] {
            for origin in [Origin::Socket, Origin::Sysctl] {
                let n = census.counts.get(&(on, origin)).copied().unwrap_or(0);
                self.connections
                    .get_or_create(&ConnLabels {
                        keepalive: if on { "on" } else { "off" }.into(),
                        source: match origin {
                            Origin::Socket => "socket",
                            Origin::Sysctl => "sysctl",
                        }
                        .into(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let h = idle_histogram();
        for &s in &census.idle_s {
            h.observe(s);
        }
        self.keepalive_idle.replace(h);
    }
}

fn reason_overflow(l: ReasonLabel) -> ReasonLabel {
    ReasonLabel {
        owner: OwnerLabels::overflow(),
        ..l
    }
}

/// The metric families, shared with the registry the server encodes.
pub struct Metrics {
    deaths: Family<ReasonLabel, Counter>,
    deaths_cap: Capped<ReasonLabel>,
    probes: Family<OutcomeLabel, Counter>,
    probes_cap: Capped<OutcomeLabel>,
    resets_sent: Family<KernelReasonLabel, Counter>,
    idle_before_death: Family<ReasonLabel, Histogram, fn() -> Histogram>,
    idle_cap: Capped<ReasonLabel>,
    lost: Family<KindLabel, Counter>,
    conntrack_expired: Counter,
    conns: ConnGauges,
}

/// Where kat runs, for `kat_build_info`.
pub struct Build<'a> {
    pub version: &'a str,
    pub kernel: &'a str,
    pub lanes: &'a str,
}

impl Metrics {
    /// The families, registered in a new registry for the server; each
    /// family with owner labels takes at most `max_label_sets` of them
    /// (and one `_overflow` set per value of its other label).
    pub fn new(build: &Build, max_label_sets: usize) -> (Self, Registry) {
        let metrics = Self {
            deaths: Family::default(),
            deaths_cap: Capped::new(max_label_sets),
            probes: Family::default(),
            probes_cap: Capped::new(max_label_sets),
            resets_sent: Family::default(),
            idle_before_death: Family::new_with_constructor(idle_histogram),
            idle_cap: Capped::new(max_label_sets),
            lost: Family::default(),
            conntrack_expired: Counter::default(),
            conns: ConnGauges {
                connections: Family::default(),
                keepalive_idle: Current(Arc::new(RwLock::new(idle_histogram()))),
            },
        };
        let mut registry = Registry::default();
        registry.register(
            "kat_connection_deaths",
            "Connections that ended, by kat's reason (docs/events.md)",
            metrics.deaths.clone(),
        );
        registry.register(
            "kat_keepalive_probes",
            "Keepalive probes that were answered, or still unanswered when their connection died",
            metrics.probes.clone(),
        );
        registry.register(
            "kat_tcp_resets_sent",
            "RSTs that ended a connection, by the kernel's own reason for them (Linux 6.10 and later)",
            metrics.resets_sent.clone(),
        );
        registry.register_with_unit(
            "kat_idle_before_death",
            "How long a connection that timed out or met a RST had been silent before the first segment that went unanswered",
            Unit::Seconds,
            metrics.idle_before_death.clone(),
        );
        registry.register(
            "kat_events_lost",
            "Kernel records lost (ring full) or possibly lost (hook run skipped), by kind",
            metrics.lost.clone(),
        );
        registry.register(
            "kat_conntrack_expired",
            "Established flows this host's conntrack forgot on its own (kat record --conntrack; 0 without it)",
            metrics.conntrack_expired.clone(),
        );
        registry.register(
            "kat_connections",
            "Established connections at the last census, by SO_KEEPALIVE on or off and where their idle setting comes from (TCP_KEEPIDLE on the socket, or the namespace's sysctl)",
            metrics.conns.connections.clone(),
        );
        registry.register_with_unit(
            "kat_keepalive_idle",
            "The keepalive idle time in force on each established connection with keepalive on, at the last census (not cumulative)",
            Unit::Seconds,
            metrics.conns.keepalive_idle.clone(),
        );
        registry.register(
            "kat_build",
            "kat's version, the kernel it runs on and the lane of each hook",
            Info::new(vec![
                ("version".to_string(), build.version.to_string()),
                ("kernel".to_string(), build.kernel.to_string()),
                ("lanes".to_string(), build.lanes.to_string()),
            ]),
        );
        (metrics, registry)
    }

    /// What the connections census sets.
    pub fn conn_gauges(&self) -> ConnGauges {
        self.conns.clone()
    }

    pub fn observe(&self, events: &[Event]) {
        for ev in events {
            match &ev.what {
                What::Probe { .. } => {}
                What::ProbeAnswered { probe } => self.probes_ended(ev, "answered", *probe),
                What::Death {
                    reason,
                    unanswered_probes,
                    kernel_reset_reason,
                    silence,
                    ..
                } => {
                    let reason = ReasonLabel {
                        reason: reason.name().to_string(),
                        owner: OwnerLabels::of(ev.workload.as_deref()),
                    };
                    let counted = self.deaths_cap.admit(reason.clone(), reason_overflow);
                    self.deaths.get_or_create(&counted).inc();
                    self.probes_ended(ev, "unanswered", *unanswered_probes);
                    if let Some(kernel_reason) = kernel_reset_reason {
                        self.resets_sent
                            .get_or_create(&KernelReasonLabel {
                                kernel_reason: kernel_reason.clone(),
                            })
                            .inc();
                    }
                    if let Some(s) = silence {
                        let observed = self.idle_cap.admit(reason, reason_overflow);
                        self.idle_before_death
                            .get_or_create(&observed)
                            .observe(s.idle_before_s);
                    }
                }
            }
        }
    }

    fn probes_ended(&self, ev: &Event, outcome: &str, n: u8) {
        if n > 0 {
            let labels = OutcomeLabel {
                outcome: outcome.to_string(),
                owner: OwnerLabels::of(ev.workload.as_deref()),
            };
            let counted = self.probes_cap.admit(labels, |l| OutcomeLabel {
                owner: OwnerLabels::overflow(),
                ..l
            });
            self.probes.get_or_create(&counted).inc_by(u64::from(n));
        }
    }

    /// Orderly closes the kernel counted (their owners are not known).
    pub fn closes(&self, closes: &[Closes]) {
        let n: u64 = closes.iter().map(|c| c.count).sum();
        if n > 0 {
            let labels = ReasonLabel {
                reason: crate::event::Reason::Closed.name().to_string(),
                owner: OwnerLabels::default(),
            };
            let counted = self.deaths_cap.admit(labels, reason_overflow);
            self.deaths.get_or_create(&counted).inc_by(n);
        }
    }

    /// Established flows this host's conntrack forgot.
    pub fn conntrack_expired(&self, n: u64) {
        self.conntrack_expired.inc_by(n);
    }

    /// The kernel's loss counts so far (they only grow).
    /// Records lost by kind, counted since kat started.
    pub fn lost(&self, by_kind: &BTreeMap<String, u64>) {
        for (kind, &n) in by_kind {
            let counter = self.lost.get_or_create(&KindLabel { kind: kind.clone() });
            let seen = counter.get();
            if n > seen {
                counter.inc_by(n - seen);
            }
        }
    }
}

#[cfg(test)]
mod tests;
