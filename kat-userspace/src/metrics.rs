//! What `kat record --metrics` serves: counters and histograms of the
//! events, in Prometheus' conventions (docs/metrics.md). Every label has
//! a bounded set of values (reasons, kinds, kernel RST reasons): never an
//! address, a port or a pid. Fed by the live loop; encoded on each scrape
//! (`server`).

pub mod server;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::event::{Closes, Event, What};
use crate::source::LostCounts;

/// Seconds: the idle timeouts middleboxes commonly have (AWS NLB 350 s,
/// many NATs 60 s, 240 s, 900 s, 1 or 2 hours), and shorter ones.
pub const IDLE_BUCKETS: [f64; 13] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 240.0, 350.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
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

/// The metric families, shared with the registry the server encodes.
pub struct Metrics {
    deaths: Family<ReasonLabel, Counter>,
    probes: Family<OutcomeLabel, Counter>,
    resets_sent: Family<KernelReasonLabel, Counter>,
    idle_before_death: Family<ReasonLabel, Histogram, fn() -> Histogram>,
    lost: Family<KindLabel, Counter>,
}

/// Where kat runs, for `kat_build_info`.
pub struct Build<'a> {
    pub version: &'a str,
    pub kernel: &'a str,
    pub lanes: &'a str,
}

impl Metrics {
    /// The families, registered in a new registry for the server.
    pub fn new(build: &Build) -> (Self, Registry) {
        let metrics = Self {
            deaths: Family::default(),
            probes: Family::default(),
            resets_sent: Family::default(),
            idle_before_death: Family::new_with_constructor(idle_histogram),
            lost: Family::default(),
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

    pub fn observe(&self, events: &[Event]) {
        for ev in events {
            match &ev.what {
                What::Probe { .. } => {}
                What::ProbeAnswered { probe } => self.probes_ended("answered", *probe),
                What::Death {
                    reason,
                    unanswered_probes,
                    kernel_reset_reason,
                    silence,
                    ..
                } => {
                    let reason = ReasonLabel {
                        reason: reason.name().to_string(),
                    };
                    self.deaths.get_or_create(&reason).inc();
                    self.probes_ended("unanswered", *unanswered_probes);
                    if let Some(kernel_reason) = kernel_reset_reason {
                        self.resets_sent
                            .get_or_create(&KernelReasonLabel {
                                kernel_reason: kernel_reason.clone(),
                            })
                            .inc();
                    }
                    if let Some(s) = silence {
                        self.idle_before_death
                            .get_or_create(&reason)
                            .observe(s.idle_before_s);
                    }
                }
            }
        }
    }

    fn probes_ended(&self, outcome: &str, n: u8) {
        if n > 0 {
            self.probes
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.to_string(),
                })
                .inc_by(u64::from(n));
        }
    }

    /// Orderly closes the kernel counted.
    pub fn closes(&self, closes: &[Closes]) {
        let n: u64 = closes.iter().map(|c| c.count).sum();
        if n > 0 {
            self.deaths
                .get_or_create(&ReasonLabel {
                    reason: crate::event::Reason::Closed.name().to_string(),
                })
                .inc_by(n);
        }
    }

    /// The kernel's loss counts so far (they only grow).
    pub fn lost(&self, lost: &LostCounts) {
        for (kind, n) in lost.by_kind() {
            let counter = self.lost.get_or_create(&KindLabel { kind });
            let seen = counter.get();
            if n > seen {
                counter.inc_by(n - seen);
            }
        }
    }
}

#[cfg(test)]
mod tests;
