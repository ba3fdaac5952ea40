//! The report's numbers: a pure function of the journal's entries and the
//! user's filter.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::event::{rfc3339, ConnKey, Event, Reason, Settings, What};
use crate::journal::{Entry, Header};

/// Which events the report looks at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Either port of the connection.
    pub ports: Vec<u16>,
    /// Either address of the connection.
    pub addrs: Vec<IpAddr>,
    /// Either end of the connection.
    pub conn: Option<SocketAddr>,
}

impl Filter {
    pub fn wants(&self, ev: &Event) -> bool {
        let local = SocketAddr::new(ev.saddr, ev.sport);
        let remote = SocketAddr::new(ev.daddr, ev.dport);
        self.wants_time(ev.ts)
            && (self.ports.is_empty()
                || self.ports.contains(&ev.sport)
                || self.ports.contains(&ev.dport))
            && (self.addrs.is_empty()
                || self.addrs.contains(&ev.saddr)
                || self.addrs.contains(&ev.daddr))
            && self.conn.is_none_or(|c| c == local || c == remote)
    }

    fn wants_time(&self, ts: DateTime<Utc>) -> bool {
        self.since.is_none_or(|t| ts >= t) && self.until.is_none_or(|t| ts <= t)
    }
}

/// The port a peer or service is known by: the lower one, which is the
/// service's when the other is ephemeral.
pub fn service_port(c: &ConnKey) -> u16 {
    c.sport.min(c.dport)
}

/// One connection's life as recorded, from its first event to its death.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline<'a> {
    #[serde(flatten)]
    pub conn: ConnKey,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The latest settings seen.
    pub keepalive: Option<Settings>,
    /// Borrowed from the journal: a report may hold a whole journal.
    pub events: Vec<&'a Event>,
}

impl Timeline<'_> {
    pub fn death(&self) -> Option<&Event> {
        self.events.last().copied().filter(|e| e.reason().is_some())
    }

    /// Seconds from the first probe of the final unanswered run to the
    /// death: how long it took to find the peer gone.
    pub fn detected_in_s(&self) -> Option<f64> {
        let death = self.death()?;
        let mut run_start = None;
        for ev in &self.events {
            match ev.what {
                What::Probe { probe: 1, .. } => run_start = Some(ev.ts),
                What::ProbeAnswered { .. } => run_start = None,
                _ => {}
            }
        }
        run_start.map(|t| secs(death.ts - t))
    }
}

fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// The connections' timelines in the order they started: a death ends a
/// timeline, and the same addresses later start a new one.
pub fn timelines<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<Timeline<'a>> {
    let mut all: Vec<Timeline<'a>> = Vec::new();
    let mut open: HashMap<ConnKey, usize> = HashMap::new();
    for ev in events {
        let conn = ConnKey::of(ev);
        let i = *open.entry(conn).or_insert_with(|| {
            all.push(Timeline {
                conn,
                pid: None,
                comm: None,
                keepalive: None,
                events: Vec::new(),
            });
            all.len() - 1
        });
        let t = &mut all[i];
        if ev.pid.is_some() {
            t.pid = ev.pid;
            t.comm.clone_from(&ev.comm);
        }
        if ev.keepalive.is_some() {
            t.keepalive = ev.keepalive;
        }
        t.events.push(ev);
        if ev.reason().is_some() {
            open.remove(&conn);
        }
    }
    all
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReasonRow {
    pub reason: Reason,
    pub deaths: u64,
    /// The errno most of these deaths gave the application.
    pub errno: Option<String>,
    pub unanswered_probes_median: Option<f64>,
    pub detected_in_s_median: Option<f64>,
    pub lived_s_median: Option<f64>,
    pub lived_s_max: Option<f64>,
}

/// Deaths of one peer address or one port.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Worst {
    pub name: String,
    pub deaths: u64,
    pub reasons: BTreeMap<Reason, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeathRow {
    #[serde(serialize_with = "rfc3339")]
    pub ts: DateTime<Utc>,
    #[serde(flatten)]
    pub conn: ConnKey,
    pub reason: Reason,
    pub errno: Option<String>,
    pub unanswered_probes: u8,
    pub detected_in_s: Option<f64>,
    pub lived_s: Option<f64>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// Where and how the journal was recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub host: String,
    pub kernel: String,
    pub lanes: String,
    #[serde(serialize_with = "rfc3339")]
    pub started: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub runs: Vec<Run>,
    pub events: u64,
    pub connections: usize,
    pub probes: u64,
    pub probes_answered: u64,
    /// Connections that sent at least one probe.
    pub probing_connections: usize,
    /// Abnormal deaths, the most frequent reason first.
    pub reasons: Vec<ReasonRow>,
    /// Orderly (FIN) closes.
    pub closed: u64,
    pub worst_peers: Vec<Worst>,
    pub worst_ports: Vec<Worst>,
    /// Abnormal deaths, oldest first.
    pub deaths: Vec<DeathRow>,
    /// Records the kernel could not queue while recording.
    pub lost: u64,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn worst(deaths: &[DeathRow], top: usize, name: impl Fn(&DeathRow) -> String) -> Vec<Worst> {
    let mut by: BTreeMap<String, Worst> = BTreeMap::new();
    for d in deaths {
        let n = name(d);
        let w = by.entry(n.clone()).or_insert_with(|| Worst {
            name: n,
            deaths: 0,
            reasons: BTreeMap::new(),
        });
        w.deaths += 1;
        *w.reasons.entry(d.reason).or_default() += 1;
    }
    let mut v: Vec<Worst> = by.into_values().collect();
    v.sort_by(|a, b| b.deaths.cmp(&a.deaths).then_with(|| a.name.cmp(&b.name)));
    v.truncate(top);
    v
}

/// The report over `entries` as `filter` selects them; `top` bounds the
/// worst-peers and worst-ports lists.
pub fn summarize(entries: &[Entry], filter: &Filter, top: usize) -> Summary {
    let mut runs: Vec<Run> = Vec::new();
    let mut lost_by_run: Vec<u64> = Vec::new();
    let mut events: Vec<&Event> = Vec::new();
    for entry in entries {
        match entry {
            Entry::Header(Header {
                host,
                kernel,
                lanes,
                run_started,
                ..
            }) => {
                if runs.last().is_none_or(|r| r.started != *run_started) {
                    runs.push(Run {
                        host: host.clone(),
                        kernel: kernel.clone(),
                        lanes: lanes.clone(),
                        started: *run_started,
                    });
                    lost_by_run.push(0);
                }
            }
            Entry::Event(ev) if filter.wants(ev) => events.push(ev),
            Entry::Event(_) => {}
            Entry::Lost(l) if filter.wants_time(l.ts) => {
                if let Some(run) = lost_by_run.last_mut() {
                    // Counted since that kat started: the last count is the total.
                    *run = (*run).max(l.count);
                }
            }
            Entry::Lost(_) => {}
            Entry::Closes(_) => {}
        }
    }
    events.sort_by_key(|e| e.ts);
    let timelines = timelines(events.iter().copied());

    let mut deaths = Vec::new();
    let mut closed = 0;
    for t in &timelines {
        let Some(death) = t.death() else { continue };
        let What::Death {
            reason,
            errno,
            unanswered_probes,
            lifetime_s,
            ..
        } = &death.what
        else {
            continue;
        };
        if *reason == Reason::Closed {
            closed += 1;
            continue;
        }
        deaths.push(DeathRow {
            ts: death.ts,
            conn: t.conn,
            reason: *reason,
            errno: errno.clone(),
            unanswered_probes: *unanswered_probes,
            detected_in_s: t.detected_in_s(),
            lived_s: *lifetime_s,
            pid: t.pid,
            comm: t.comm.clone(),
        });
    }
    deaths.sort_by_key(|d| d.ts);

    let mut by_reason: BTreeMap<Reason, Vec<&DeathRow>> = BTreeMap::new();
    for d in &deaths {
        by_reason.entry(d.reason).or_default().push(d);
    }
    let mut reasons: Vec<ReasonRow> = by_reason
        .into_iter()
        .map(|(reason, ds)| {
            let mut errnos: BTreeMap<&str, u64> = BTreeMap::new();
            for d in &ds {
                if let Some(e) = &d.errno {
                    *errnos.entry(e).or_default() += 1;
                }
            }
            let lived: Vec<f64> = ds.iter().filter_map(|d| d.lived_s).collect();
            ReasonRow {
                reason,
                deaths: ds.len() as u64,
                errno: errnos
                    .into_iter()
                    .max_by_key(|(_, n)| *n)
                    .map(|(e, _)| e.to_string()),
                unanswered_probes_median: median(
                    ds.iter().map(|d| f64::from(d.unanswered_probes)).collect(),
                ),
                detected_in_s_median: median(ds.iter().filter_map(|d| d.detected_in_s).collect()),
                lived_s_max: lived.iter().copied().reduce(f64::max),
                lived_s_median: median(lived),
            }
        })
        .collect();
    reasons.sort_by(|a, b| b.deaths.cmp(&a.deaths).then(a.reason.cmp(&b.reason)));

    let count = |f: fn(&What) -> bool| events.iter().filter(|e| f(&e.what)).count() as u64;
    Summary {
        from: events.first().map(|e| e.ts),
        to: events.last().map(|e| e.ts),
        runs,
        events: events.len() as u64,
        connections: timelines.len(),
        probes: count(|w| matches!(w, What::Probe { .. })),
        probes_answered: count(|w| matches!(w, What::ProbeAnswered { .. })),
        probing_connections: timelines
            .iter()
            .filter(|t| {
                t.events
                    .iter()
                    .any(|e| matches!(e.what, What::Probe { .. }))
            })
            .count(),
        reasons,
        closed,
        worst_peers: worst(&deaths, top, |d| d.conn.daddr.to_string()),
        worst_ports: worst(&deaths, top, |d| service_port(&d.conn).to_string()),
        deaths,
        lost: lost_by_run.iter().sum(),
    }
}
