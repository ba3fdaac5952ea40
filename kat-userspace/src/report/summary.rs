//! The report's numbers, built one journal entry at a time: only the
//! connections still open and a few numbers per death stay in memory, so a
//! whole journal never does.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::conntrack::Expired;
use crate::event::{
    rfc3339, rfc3339_opt, Closes, ConnKey, Event, Forgotten, Reason, Settings, Silence, What,
};
use crate::journal::{Entry, Header};
use crate::workload::{By, Workload};

use super::paths::{Learner, PathRow};

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
        self.wants_ends(ev.ts, (ev.saddr, ev.sport), (ev.daddr, ev.dport))
    }

    /// A connection at `ts` between these two ends, whichever is which.
    fn wants_ends(&self, ts: DateTime<Utc>, a: (IpAddr, u16), b: (IpAddr, u16)) -> bool {
        let (a, b) = (SocketAddr::from(a), SocketAddr::from(b));
        self.wants_time(ts)
            && (self.ports.is_empty()
                || self.ports.contains(&a.port())
                || self.ports.contains(&b.port()))
            && (self.addrs.is_empty()
                || self.addrs.contains(&a.ip())
                || self.addrs.contains(&b.ip()))
            && self.conn.is_none_or(|c| c == a || c == b)
    }

    /// An aggregate knows only its service port and its peer; it names no
    /// connection, so `--conn` leaves it out.
    pub fn wants_closes(&self, c: &Closes) -> bool {
        self.wants_time(c.ts)
            && (self.ports.is_empty() || self.ports.contains(&c.port))
            && (self.addrs.is_empty() || self.addrs.contains(&c.peer))
            && self.conn.is_none()
    }

    /// A flow conntrack forgot, by either end of its original direction.
    pub fn wants_expired(&self, e: &Expired) -> bool {
        let o = &e.orig;
        self.wants_ends(e.ts, (o.saddr, o.sport), (o.daddr, o.dport))
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<Arc<Workload>>,
    /// The latest settings seen.
    pub keepalive: Option<Settings>,
    /// Borrowed from the events kept for `--conn`.
    pub events: Vec<&'a Event>,
}

impl Timeline<'_> {
    pub fn death(&self) -> Option<&Event> {
        self.events.last().copied().filter(|e| e.reason().is_some())
    }
}

fn secs(d: TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// The connections' timelines in the order they started: a death ends a
/// timeline, and the same addresses later start a new one. Events are put
/// in time order first, the journal's order breaking ties, as the summary
/// takes them (events reach the journal up to about half a second late).
pub fn timelines<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<Timeline<'a>> {
    let mut events: Vec<&Event> = events.into_iter().collect();
    events.sort_by_key(|e| e.ts);
    let mut all: Vec<Timeline<'a>> = Vec::new();
    let mut open: HashMap<ConnKey, usize> = HashMap::new();
    for ev in events {
        let conn = ConnKey::of(ev);
        let i = *open.entry(conn).or_insert_with(|| {
            all.push(Timeline {
                conn,
                pid: None,
                comm: None,
                workload: None,
                keepalive: None,
                events: Vec::new(),
            });
            all.len() - 1
        });
        let t = &mut all[i];
        if ev.pid.is_some() {
            t.pid = ev.pid;
            t.comm.clone_from(&ev.comm);
            t.workload.clone_from(&ev.workload);
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<Arc<Workload>>,
    #[serde(flatten)]
    pub silence: Option<Silence>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack_forgot: Option<Forgotten>,
}

/// Established flows to one server that a conntrack on the recording host
/// forgot (`kat record --conntrack`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForgottenRow {
    /// The namespace whose conntrack forgot them.
    pub netns: u32,
    pub daddr: IpAddr,
    pub dport: u16,
    pub flows: u64,
    #[serde(serialize_with = "rfc3339")]
    pub last: DateTime<Utc>,
    /// The namespace's `nf_conntrack_tcp_timeout_established` at the
    /// latest of them: the silence after which it forgets a flow.
    pub established_timeout_s: Option<u32>,
}

/// The flows to one server one namespace's conntrack forgot, so far.
#[derive(Debug)]
struct Forgetting {
    flows: u64,
    last: DateTime<Utc>,
    /// The latest setting read, and when.
    timeout: Option<(DateTime<Utc>, u32)>,
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
    #[serde(serialize_with = "rfc3339_opt")]
    pub from: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339_opt")]
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
    /// Orderly (FIN) closes: `closed` deaths and `closes` aggregates.
    pub closed: u64,
    pub worst_peers: Vec<Worst>,
    pub worst_ports: Vec<Worst>,
    /// With `--by`: deaths by pod, container or unit, the most first
    /// (`-` for deaths whose owner has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_owner: Option<Vec<Worst>>,
    /// Abnormal deaths, oldest first: all of them, or the latest as many as
    /// `Deaths::Latest` asked for (`reasons` has the total).
    pub deaths: Vec<DeathRow>,
    /// Paths that forget idle flows, as the suspected deaths show them.
    pub paths: Vec<PathRow>,
    /// Flows the recording host's own conntrack forgot, by server.
    pub conntrack_expired: Vec<ForgottenRow>,
    /// Records the kernel could not queue while recording.
    pub lost: u64,
    /// Events that came later in the journal than `REORDER` after events
    /// of their time: counted where they came, not in time order.
    #[serde(skip)]
    pub out_of_order: u64,
}

impl Summary {
    /// Abnormal deaths, whether or not `deaths` lists them all.
    pub fn abnormal_deaths(&self) -> u64 {
        self.reasons.iter().map(|r| r.deaths).sum()
    }
}

/// Which abnormal deaths a summary lists one by one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deaths {
    /// Every one (`--json`).
    All,
    /// The latest this many (the text's "Latest deaths").
    Latest(usize),
}

/// Events reach the journal up to about half a second after their time (a
/// death waits up to 200 ms for its RST and is handed over at the next
/// drain or poll); within this window they are put back in time order.
pub const REORDER: TimeDelta = TimeDelta::seconds(5);

/// Where an event falls in time order: its time, then its place in the
/// journal (a stable sort of the whole journal would give the same).
type Place = (DateTime<Utc>, u64);

struct Pending {
    place: Place,
    ev: Event,
}

/// The open connections are looked up once an event: SipHash, which
/// guards against keys chosen to collide, was a tenth of the report's time,
/// and a journal is the host's own record. (FxHash's multiply-rotate.)
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }

    fn write_u16(&mut self, n: u16) {
        self.add(n.into());
    }

    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Fx {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A connection whose death has not come yet.
struct Open {
    /// Its first event: deaths at the same millisecond are listed in the
    /// order their connections started.
    start: Place,
    pid: Option<u32>,
    comm: Option<String>,
    workload: Option<Arc<Workload>>,
    probed: bool,
    /// The first probe of the current unanswered run.
    run_start: Option<DateTime<Utc>>,
}

/// The numbers kept of each death of one reason, for its medians.
#[derive(Default)]
struct PerReason {
    errnos: BTreeMap<String, u64>,
    probes: Vec<u8>,
    detected_s: Vec<f64>,
    lived_s: Vec<f64>,
}

#[derive(Default)]
struct Tally {
    deaths: u64,
    reasons: BTreeMap<Reason, u64>,
}

impl Tally {
    fn add(&mut self, reason: Reason) {
        self.deaths += 1;
        *self.reasons.entry(reason).or_default() += 1;
    }
}

struct Listed {
    order: (DateTime<Utc>, Place),
    row: DeathRow,
}

impl PartialEq for Listed {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}
impl Eq for Listed {}
impl PartialOrd for Listed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Listed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order.cmp(&other.order)
    }
}

/// Builds a `Summary` from entries fed in journal order.
pub struct Builder {
    filter: Filter,
    top: usize,
    keep: Deaths,
    runs: Vec<Run>,
    lost_by_run: Vec<u64>,
    /// Events not yet taken in, in time order. They come nearly sorted, so
    /// a sorted queue takes each at its back; a heap moved every event
    /// around.
    pending: VecDeque<Pending>,
    newest: Option<DateTime<Utc>>,
    taken: Option<Place>,
    seq: u64,
    open: HashMap<ConnKey, Open, BuildHasherDefault<Fx>>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    events: u64,
    connections: usize,
    probes: u64,
    probes_answered: u64,
    probing_connections: usize,
    closed: u64,
    per_reason: BTreeMap<Reason, PerReason>,
    peers: HashMap<IpAddr, Tally>,
    ports: HashMap<u16, Tally>,
    by: Option<By>,
    owners: HashMap<String, Tally>,
    /// The deaths listed, the earliest on top (to be dropped first).
    deaths: BinaryHeap<Reverse<Listed>>,
    paths: Learner,
    forgotten: BTreeMap<(u32, IpAddr, u16), Forgetting>,
    out_of_order: u64,
}

impl Summary {
    /// A summary of what `filter` selects; `top` bounds the worst-peers and
    /// worst-ports lists.
    pub fn builder(filter: Filter, top: usize, deaths: Deaths) -> Builder {
        Builder {
            filter,
            top,
            keep: deaths,
            runs: Vec::new(),
            lost_by_run: Vec::new(),
            pending: VecDeque::new(),
            newest: None,
            taken: None,
            seq: 0,
            open: HashMap::default(),
            from: None,
            to: None,
            events: 0,
            connections: 0,
            probes: 0,
            probes_answered: 0,
            probing_connections: 0,
            closed: 0,
            per_reason: BTreeMap::new(),
            peers: HashMap::new(),
            ports: HashMap::new(),
            by: None,
            owners: HashMap::new(),
            deaths: BinaryHeap::new(),
            paths: Learner::default(),
            forgotten: BTreeMap::new(),
            out_of_order: 0,
        }
    }
}

impl Builder {
    /// Deaths grouped by their owner's pod, container or unit too.
    pub fn grouped_by(mut self, by: Option<By>) -> Self {
        self.by = by;
        self
    }

    pub fn add(&mut self, entry: Entry) {
        match entry {
            Entry::Header(Header {
                host,
                kernel,
                lanes,
                run_started,
                ..
            }) => {
                if self.runs.last().is_none_or(|r| r.started != run_started) {
                    self.runs.push(Run {
                        host,
                        kernel,
                        lanes,
                        started: run_started,
                    });
                    self.lost_by_run.push(0);
                }
            }
            Entry::Event(ev) if self.filter.wants(&ev) => self.add_event(ev),
            Entry::Event(_) => {}
            Entry::Lost(l) if self.filter.wants_time(l.ts) => {
                if let Some(run) = self.lost_by_run.last_mut() {
                    // Counted since that kat started: the last count is the total.
                    *run = (*run).max(l.count);
                }
            }
            Entry::Lost(_) => {}
            Entry::Closes(c) if self.filter.wants_closes(&c) => self.closed += c.count,
            Entry::Closes(_) => {}
            Entry::Expired(e) if self.filter.wants_expired(&e) => {
                let key = (e.netns, e.orig.daddr, e.orig.dport);
                let f = self.forgotten.entry(key).or_insert(Forgetting {
                    flows: 0,
                    last: e.ts,
                    timeout: None,
                });
                f.flows += 1;
                f.last = f.last.max(e.ts);
                if let Some(t) = e.established_timeout_s {
                    if f.timeout.is_none_or(|(at, _)| e.ts >= at) {
                        f.timeout = Some((e.ts, t));
                    }
                }
            }
            Entry::Expired(_) => {}
        }
    }

    fn add_event(&mut self, ev: Event) {
        self.seq += 1;
        let place = (ev.ts, self.seq);
        if self.taken.is_some_and(|t| place < t) {
            self.out_of_order += 1;
        }
        self.newest = self.newest.max(Some(ev.ts));
        if self.pending.back().is_none_or(|p| p.place < place) {
            self.pending.push_back(Pending { place, ev });
        } else {
            let at = self.pending.partition_point(|p| p.place < place);
            self.pending.insert(at, Pending { place, ev });
        }
        while let Some(p) = self.pending.front() {
            if self.newest.is_some_and(|n| p.place.0 + REORDER >= n) {
                break;
            }
            self.take_next();
        }
    }

    fn take_next(&mut self) {
        let Some(Pending { place, ev }) = self.pending.pop_front() else {
            return;
        };
        self.taken = self.taken.max(Some(place));
        self.events += 1;
        self.from = Some(self.from.map_or(ev.ts, |f| f.min(ev.ts)));
        self.to = self.to.max(Some(ev.ts));
        let conn = ConnKey::of(&ev);
        self.paths.add(&ev);
        let t = self.open.entry(conn).or_insert_with(|| {
            self.connections += 1;
            Open {
                start: place,
                pid: None,
                comm: None,
                workload: None,
                probed: false,
                run_start: None,
            }
        });
        if ev.pid.is_some() {
            t.pid = ev.pid;
            t.comm = ev.comm;
            t.workload = ev.workload;
        }
        match ev.what {
            What::Probe { probe, .. } => {
                self.probes += 1;
                if !t.probed {
                    t.probed = true;
                    self.probing_connections += 1;
                }
                if probe == 1 {
                    t.run_start = Some(ev.ts);
                }
            }
            What::ProbeAnswered { .. } => {
                self.probes_answered += 1;
                t.run_start = None;
            }
            What::Death {
                reason,
                errno,
                unanswered_probes,
                lifetime_s,
                silence,
                conntrack_forgot,
                ..
            } => {
                // The timeline ends here: what is left of it is its row.
                let Some(t) = self.open.remove(&conn) else {
                    return;
                };
                if reason == Reason::Closed {
                    self.closed += 1;
                    return;
                }
                let detected_in_s = t.run_start.map(|s| secs(ev.ts - s));
                let r = self.per_reason.entry(reason).or_default();
                if let Some(e) = &errno {
                    match r.errnos.get_mut(e.as_str()) {
                        Some(n) => *n += 1,
                        None => {
                            r.errnos.insert(e.clone(), 1);
                        }
                    }
                }
                r.probes.push(unanswered_probes);
                r.detected_s.extend(detected_in_s);
                r.lived_s.extend(lifetime_s);
                self.peers.entry(conn.daddr).or_default().add(reason);
                self.ports
                    .entry(service_port(&conn))
                    .or_default()
                    .add(reason);
                if let Some(by) = self.by {
                    let name = t.workload.as_ref().and_then(|w| w.by(by));
                    self.owners
                        .entry(name.unwrap_or_else(|| "-".into()))
                        .or_default()
                        .add(reason);
                }
                self.list(Listed {
                    order: (ev.ts, t.start),
                    row: DeathRow {
                        ts: ev.ts,
                        conn,
                        reason,
                        errno,
                        unanswered_probes,
                        detected_in_s,
                        lived_s: lifetime_s,
                        pid: t.pid,
                        comm: t.comm,
                        workload: t.workload,
                        silence,
                        conntrack_forgot,
                    },
                });
            }
        }
    }

    fn list(&mut self, death: Listed) {
        self.deaths.push(Reverse(death));
        if let Deaths::Latest(n) = self.keep {
            while self.deaths.len() > n {
                self.deaths.pop();
            }
        }
    }

    /// Connections whose death has not been read (yet).
    #[cfg(test)]
    pub(crate) fn open_connections(&self) -> usize {
        self.open.len()
    }

    pub fn finish(mut self) -> Summary {
        while !self.pending.is_empty() {
            self.take_next();
        }
        let mut reasons: Vec<ReasonRow> = std::mem::take(&mut self.per_reason)
            .into_iter()
            .map(|(reason, r)| ReasonRow {
                reason,
                deaths: r.probes.len() as u64,
                errno: r.errnos.into_iter().max_by_key(|(_, n)| *n).map(|(e, _)| e),
                unanswered_probes_median: median(r.probes.into_iter().map(f64::from).collect()),
                detected_in_s_median: median(r.detected_s),
                lived_s_max: r.lived_s.iter().copied().reduce(f64::max),
                lived_s_median: median(r.lived_s),
            })
            .collect();
        reasons.sort_by(|a, b| b.deaths.cmp(&a.deaths).then(a.reason.cmp(&b.reason)));
        let deaths: Vec<DeathRow> = self
            .deaths
            .into_sorted_vec()
            .into_iter()
            .rev()
            .map(|Reverse(d)| d.row)
            .collect();
        Summary {
            from: self.from,
            to: self.to,
            runs: self.runs,
            events: self.events,
            connections: self.connections,
            probes: self.probes,
            probes_answered: self.probes_answered,
            probing_connections: self.probing_connections,
            reasons,
            closed: self.closed,
            worst_peers: worst(self.peers, self.top),
            worst_ports: worst(self.ports, self.top),
            by_owner: self
                .by
                .map(|_| worst(std::mem::take(&mut self.owners), self.top)),
            deaths,
            paths: self.paths.rows(),
            conntrack_expired: self
                .forgotten
                .into_iter()
                .map(|((netns, daddr, dport), f)| ForgottenRow {
                    netns,
                    daddr,
                    dport,
                    flows: f.flows,
                    last: f.last,
                    established_timeout_s: f.timeout.map(|(_, t)| t),
                })
                .collect(),
            lost: self.lost_by_run.iter().sum(),
            out_of_order: self.out_of_order,
        }
    }
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

/// The most deaths first, then by name (as text: port 10 before port 9).
fn worst<K: ToString>(by: HashMap<K, Tally>, top: usize) -> Vec<Worst> {
    let mut v: Vec<Worst> = by
        .into_iter()
        .map(|(k, t)| Worst {
            name: k.to_string(),
            deaths: t.deaths,
            reasons: t.reasons,
        })
        .collect();
    v.sort_by(|a, b| b.deaths.cmp(&a.deaths).then_with(|| a.name.cmp(&b.name)));
    v.truncate(top);
    v
}

/// The report over `entries` as `filter` selects them, every death listed;
/// `top` bounds the worst-peers and worst-ports lists.
pub fn summarize(entries: &[Entry], filter: &Filter, top: usize) -> Summary {
    let mut b = Summary::builder(filter.clone(), top, Deaths::All);
    for e in entries {
        b.add(e.clone());
    }
    b.finish()
}
