//! The high-level events every view reads, and their JSON form (the
//! contract documented in docs/events.md).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::workload::Workload;

/// Why a connection died: the names users see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    KeepaliveTimeout,
    UserTimeout,
    RetransmitTimeout,
    PeerReset,
    AbortOnClose,
    AbortOnLinger,
    AbortOnMemory,
    Disconnect,
    Closed,
    Unknown,
}

impl Reason {
    /// Every reason, in the order docs/events.md and the man page list them.
    pub const ALL: [Reason; 10] = [
        Reason::KeepaliveTimeout,
        Reason::UserTimeout,
        Reason::RetransmitTimeout,
        Reason::PeerReset,
        Reason::AbortOnClose,
        Reason::AbortOnLinger,
        Reason::AbortOnMemory,
        Reason::Disconnect,
        Reason::Closed,
        Reason::Unknown,
    ];

    /// What happened to the connection, in a line (kat(1)'s DEATH REASONS).
    pub fn meaning(self) -> &'static str {
        match self {
            Reason::KeepaliveTimeout => "all keepalive probes went unanswered",
            Reason::UserTimeout => "TCP_USER_TIMEOUT expired, while probing or retransmitting",
            Reason::RetransmitTimeout => "data was never acknowledged (tcp_retries2)",
            Reason::PeerReset => "the peer sent a RST (e.g. it restarted and answered a probe)",
            Reason::AbortOnClose => "the application closed the socket with unread data",
            Reason::AbortOnLinger => "closed with SO_LINGER 0 (or TCP_LINGER2 < 0 in FIN_WAIT2)",
            Reason::AbortOnMemory => "too many orphans / memory pressure",
            Reason::Disconnect => "connect(AF_UNSPEC) on a live connection",
            Reason::Closed => "orderly FIN close (shown with --all)",
            Reason::Unknown => "none of the above",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Reason::KeepaliveTimeout => "keepalive_timeout",
            Reason::UserTimeout => "user_timeout",
            Reason::RetransmitTimeout => "retransmit_timeout",
            Reason::PeerReset => "peer_reset",
            Reason::AbortOnClose => "abort_on_close",
            Reason::AbortOnLinger => "abort_on_linger",
            Reason::AbortOnMemory => "abort_on_memory",
            Reason::Disconnect => "disconnect",
            Reason::Closed => "closed",
            Reason::Unknown => "unknown",
        }
    }
}

fn on() -> bool {
    true
}

/// What the evidence says about a death, when it fits a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The first segment after the connection's long silence went
    /// unanswered (or met a RST), where shorter silences on the same path
    /// were answered: something on the path forgot the idle flow.
    MiddleboxIdleDropSuspected,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::MiddleboxIdleDropSuspected => "middlebox_idle_drop_suspected",
        }
    }
}

/// How long a connection had been silent before it died, and what kat
/// makes of that.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Silence {
    /// Seconds nothing had been received before the first segment that
    /// went unanswered (the first probe of the fatal run, or the data sent
    /// after the silence).
    pub idle_before_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// With a verdict: the longest silence after which this path (peer
    /// address and port, namespace) still answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub survived_idle_s: Option<f64>,
}

/// This host's conntrack forgot the dying connection's flow first: where
/// kat runs on the gateway (`--conntrack`), the middlebox's drop seen,
/// not inferred.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Forgotten {
    /// The namespace whose conntrack forgot it.
    pub netns: u32,
    /// How long before the death kat was told.
    pub before_death_s: f64,
}

/// Where an effective keepalive setting comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT on the socket.
    Socket,
    /// The socket's network namespace's net.ipv4.tcp_keepalive_*.
    Sysctl,
}

/// The keepalive settings in force for one socket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// SO_KEEPALIVE is on. The other numbers are in force either way: they
    /// are what keepalive would use if it were turned on. (Journals from
    /// before this field had settings only for sockets that probed.)
    #[serde(default = "on")]
    pub enabled: bool,
    pub idle_s: f64,
    pub idle_from: Origin,
    pub intvl_s: f64,
    pub intvl_from: Origin,
    pub probes: u8,
    pub probes_from: Origin,
    /// TCP_USER_TIMEOUT, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_timeout_ms: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum What {
    /// A keepalive probe was sent.
    Probe {
        /// Its number in the current run of unanswered probes (1 = first).
        probe: u8,
        /// The effective probe count: this many unanswered probes kill it.
        probes_max: u8,
        /// Seconds since the peer was last heard from.
        idle_s: f64,
    },
    /// The peer acknowledged: every outstanding probe is answered.
    ProbeAnswered {
        /// How many probes were outstanding (the last one is the one answered).
        probe: u8,
    },
    /// The connection is gone.
    Death {
        reason: Reason,
        /// What the application sees (sk_err), e.g. ETIMEDOUT; null if none.
        errno: Option<String>,
        /// Keepalive probes outstanding at death.
        unanswered_probes: u8,
        /// peer_reset: the RST answered a keepalive probe (half-open found).
        found_by_probe: bool,
        /// Seconds from ESTABLISHED to death, when kat saw both.
        lifetime_s: Option<f64>,
        /// The TCP state the socket left.
        state: String,
        /// The kernel's own name for the RST it sent, when it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        kernel_reset_reason: Option<String>,
        /// For a timeout or a peer's RST: the silence before it.
        #[serde(flatten)]
        silence: Option<Silence>,
        /// With `--conntrack`: this host's conntrack forgot the flow first.
        #[serde(skip_serializing_if = "Option::is_none")]
        conntrack_forgot: Option<Forgotten>,
    },
}

/// Times are written with milliseconds (the kernel's nanoseconds would
/// only be noise after the clock conversion) and read in any RFC 3339 form.
pub fn rfc3339<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&ts.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The same for a time that may be missing (null).
pub fn rfc3339_opt<S: Serializer>(ts: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match ts {
        Some(ts) => rfc3339(ts, s),
        None => s.serialize_none(),
    }
}

/// One high-level event about one connection. Addresses are the socket's
/// own view: s = local, d = remote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "EventLine")]
pub struct Event {
    #[serde(flatten)]
    pub what: What,
    #[serde(serialize_with = "rfc3339")]
    pub ts: DateTime<Utc>,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// Network namespace inode (as in /proc/PID/ns/net).
    pub netns: u32,
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The owner's unit, container or pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<Arc<Workload>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<Settings>,
    /// Socket inode, for finding the owning process; not part of the JSON.
    #[serde(skip, default)]
    pub sock_ino: u64,
}

/// An event's JSON as read: every field of every type side by side.
/// `#[serde(flatten)]` on `what` would make serde gather each line into a
/// map of owned values first and read it again, at 4 µs an event; this is
/// read in one pass and checked for the fields its type needs.
#[derive(Deserialize)]
struct EventLine {
    #[serde(rename = "type")]
    kind: Kind,
    #[serde(deserialize_with = "timestamp")]
    ts: DateTime<Utc>,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    netns: u32,
    uid: u32,
    pid: Option<u32>,
    comm: Option<String>,
    workload: Option<Workload>,
    keepalive: Option<Settings>,
    probe: Option<u8>,
    probes_max: Option<u8>,
    idle_s: Option<f64>,
    reason: Option<Reason>,
    errno: Option<String>,
    unanswered_probes: Option<u8>,
    found_by_probe: Option<bool>,
    lifetime_s: Option<f64>,
    state: Option<String>,
    kernel_reset_reason: Option<String>,
    idle_before_s: Option<f64>,
    verdict: Option<Verdict>,
    survived_idle_s: Option<f64>,
    conntrack_forgot: Option<Forgotten>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Probe,
    ProbeAnswered,
    Death,
}

/// The form kat writes (`2026-11-21T14:18:09.544Z`) is read directly, in
/// a tenth of chrono's time; any other RFC 3339 form goes to chrono.
fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an RFC 3339 time")
        }

        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            match kats_time(s.as_bytes()) {
                Some(t) => Ok(t),
                None => s
                    .parse::<DateTime<chrono::FixedOffset>>()
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(E::custom),
            }
        }
    }
    d.deserialize_str(Visitor)
}

fn kats_time(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() != 24
        || [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (23, b'Z'),
        ]
        .iter()
        .any(|&(i, c)| b[i] != c)
    {
        return None;
    }
    let num = |from: usize, to: usize| {
        b[from..to].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let year = i32::try_from(num(0, 4)?).ok()?;
    chrono::NaiveDate::from_ymd_opt(year, num(5, 7)?, num(8, 10)?)?
        .and_hms_milli_opt(num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?)
        .map(|t| t.and_utc())
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, String> {
    v.ok_or_else(|| format!("missing field `{field}`"))
}

impl TryFrom<EventLine> for Event {
    type Error = String;

    fn try_from(l: EventLine) -> Result<Self, String> {
        let what = match l.kind {
            Kind::Probe => What::Probe {
                probe: required(l.probe, "probe")?,
                probes_max: required(l.probes_max, "probes_max")?,
                idle_s: required(l.idle_s, "idle_s")?,
            },
            Kind::ProbeAnswered => What::ProbeAnswered {
                probe: required(l.probe, "probe")?,
            },
            Kind::Death => What::Death {
                reason: required(l.reason, "reason")?,
                errno: l.errno,
                unanswered_probes: required(l.unanswered_probes, "unanswered_probes")?,
                found_by_probe: required(l.found_by_probe, "found_by_probe")?,
                lifetime_s: l.lifetime_s,
                state: required(l.state, "state")?,
                kernel_reset_reason: l.kernel_reset_reason,
                silence: l.idle_before_s.map(|idle_before_s| Silence {
                    idle_before_s,
                    verdict: l.verdict,
                    survived_idle_s: l.survived_idle_s,
                }),
                conntrack_forgot: l.conntrack_forgot,
            },
        };
        Ok(Event {
            what,
            ts: l.ts,
            saddr: l.saddr,
            sport: l.sport,
            daddr: l.daddr,
            dport: l.dport,
            netns: l.netns,
            uid: l.uid,
            pid: l.pid,
            comm: l.comm,
            workload: l.workload.map(Arc::new),
            keepalive: l.keepalive,
            sock_ino: 0,
        })
    }
}

impl Event {
    pub fn reason(&self) -> Option<Reason> {
        match self.what {
            What::Death { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// Records the kernel could not queue (their ring buffer was full),
/// counted since kat started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "lost")]
pub struct Lost {
    #[serde(serialize_with = "rfc3339")]
    pub ts: DateTime<Utc>,
    /// All kinds together.
    pub count: u64,
    /// By kind of record (`timer_run`, `reset_sent`, `reset_received`,
    /// `death`, `destroy`, `closed`, `skipped_run`; `journal` in `kat
    /// record`: not written); journals before kat 0.2 have none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_kind: BTreeMap<String, u64>,
}

/// Which end opened a connection, seen from the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Accepted here: the service port is the local port.
    In,
    /// Connected from here: the service port is the remote port.
    Out,
    /// Established before kat started: kat cannot tell.
    Unknown,
}

/// Orderly (FIN) closes of one service and peer, counted in the kernel
/// over one interval rather than sent one by one (`kat trace --all` sends
/// them one by one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "closes")]
pub struct Closes {
    /// The end of the interval.
    #[serde(serialize_with = "rfc3339")]
    pub ts: DateTime<Utc>,
    /// Its length in seconds.
    pub interval_s: f64,
    pub netns: u32,
    /// The service's port: local for `in`, remote for `out` (for
    /// `unknown`, the lower of the two).
    pub port: u16,
    pub direction: Direction,
    /// The remote address.
    pub peer: IpAddr,
    /// Orderly closes in the interval.
    pub count: u64,
    /// How many of them kat saw established (so their lifetime is known).
    pub timed: u64,
    /// Sum and maximum of the known lifetimes, seconds.
    pub lifetime_sum_s: f64,
    pub lifetime_max_s: f64,
}

/// A connection as the socket sees it, in its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ConnKey {
    pub netns: u32,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

impl ConnKey {
    pub fn of(ev: &Event) -> Self {
        Self {
            netns: ev.netns,
            saddr: ev.saddr,
            sport: ev.sport,
            daddr: ev.daddr,
            dport: ev.dport,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Reason::ALL` feeds the man page: it must name every reason
    /// docs/events.md's table does, in its order, and no other.
    #[test]
    fn every_reason_is_in_all_as_docs_events_md_lists_them() {
        let doc = include_str!("../../docs/events.md");
        let table = doc
            .split("### Reasons")
            .nth(1)
            .expect("docs/events.md has a Reasons section");
        let documented: Vec<&str> = table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
            .collect();
        let all: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(all, documented);
        for r in Reason::ALL {
            let json = serde_json::to_string(&r).expect("a reason serialises");
            assert_eq!(json, format!("\"{}\"", r.name()));
        }
    }
}
