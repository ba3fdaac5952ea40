//! The tracker: a pure per-socket state machine that turns kernel records
//! into high-level events (probe numbering, answers, death reasons).
//!
//! No I/O here: messages in, events out, so it is tested without a kernel.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use kat_common::{context, flag, kind, tcp_state, Record, AF_INET};

use crate::conntrack::Expired;
use crate::event::{Event, Forgotten, Origin, Reason, Settings, Silence, Verdict, What};

/// How long a CLOSE waits for the RST that may follow it (tcp_close sends
/// the RST after the state change) before the death is reported anyway.
pub const CLOSE_GRACE_NS: u64 = 200_000_000;

/// A probing socket is first asked about its answer this long after its
/// probe; unanswered, the wait doubles up to [`ASK_GAP_MAX_NS`]: an answer
/// comes within a round trip or not at all, and a keepalive storm of
/// thousands of sockets must not become thousands of questions a second.
pub const ASK_FIRST_NS: u64 = 250_000_000;
pub const ASK_GAP_MAX_NS: u64 = 4_000_000_000;

pub enum Msg {
    Record(Record),
    /// sock_diag's view of a probing socket: its probes out, or None when
    /// the socket is no longer there.
    Diag {
        sk: u64,
        probes_out: Option<u8>,
        ts_ns: u64,
    },
    /// Monotonic time now, in ns.
    Tick(u64),
    /// CLOCK_REALTIME − CLOCK_MONOTONIC now, ns: the wall clock was set
    /// (NTP, `date -s`) or is being slewed. Events after it are dated by it.
    WallClock(i128),
    /// This host's conntrack forgot a flow (`--conntrack`): a socket of
    /// either end that dies later says so.
    Expired(Expired),
}

/// What the tracker needs to know about the kernel.
pub struct Setup {
    pub hz: u32,
    /// Kernel reset reasons by value (names without SK_RST_REASON_).
    pub reset_reasons: Option<BTreeMap<u32, String>>,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, ns.
    pub realtime_offset_ns: i128,
}

/// A socket sock_diag should be asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probing {
    pub sk: u64,
    pub netns: u32,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

#[derive(Debug, Clone)]
struct ResetSent {
    reason: Option<u32>,
    in_keepalive_timer: bool,
    /// `kat_common::context` bits: kernel functions on the stack.
    context: u8,
    pid: u32,
    comm: String,
}

#[derive(Debug, Clone)]
struct Closing {
    ts_ns: u64,
    old_state: u8,
    sk_err: i32,
    probes_out: u8,
    /// Seconds since anything was received, and since new data was last
    /// sent, as the socket closed; its smoothed round trip.
    silent_s: f64,
    sent_ago_s: f64,
    srtt_s: f64,
    /// Since the first retransmission of the data in flight; None when
    /// nothing was retransmitted.
    retrans_ago_s: Option<f64>,
    /// The keepalive timer closed it.
    in_keepalive_timer: bool,
}

impl Closing {
    /// The silence before the data that went unanswered: until its first
    /// retransmission (the first send was one retransmission timeout
    /// earlier: the silence is at most this), or until the one send, when
    /// a RST answered it before any retransmission. None when nothing was
    /// sent after the last thing received, or the kernel's clock says
    /// otherwise.
    fn data_silence(&self) -> Option<f64> {
        let since_send = self.retrans_ago_s.unwrap_or(self.sent_ago_s);
        (since_send < self.silent_s).then_some(self.silent_s - since_send)
    }
}

#[derive(Debug, Clone)]
struct Sock {
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    netns: u32,
    uid: u32,
    sock_ino: u64,
    established_ns: Option<u64>,
    /// Unanswered probes as kat last saw them.
    probes_out: u8,
    /// The probe count after the last keepalive timer run kat saw.
    last_run_probes: Option<u8>,
    /// The idle time at the first probe of the current unanswered run.
    first_unanswered_idle_s: Option<f64>,
    settings: Option<Settings>,
    reset_sent: Option<ResetSent>,
    /// Probes outstanding when a RST arrived.
    reset_received: Option<u8>,
    closing: Option<Closing>,
    /// When sock_diag should next be asked about the probe out, and the
    /// wait after that.
    ask_at_ns: u64,
    ask_gap_ns: u64,
}

impl Sock {
    /// Keepalive timer runs of this socket that came before `run` but
    /// never reached kat. Only such a run adds a probe, one at a time, and
    /// only an answer lowers the count (zero-window probes raise it too,
    /// but only while data waits, when this timer neither probes nor
    /// kills, and the window opens with an ACK, which zeroes it): a run
    /// that probes or kills and finds more probes out than the last run
    /// kat saw left follows that many unseen runs.
    fn runs_unseen_before(&mut self, run: &Record) -> u8 {
        let probed_or_killed =
            run.probes_after > run.probes_before || run.state == tcp_state::CLOSE;
        match self.last_run_probes.replace(run.probes_after) {
            Some(last) if probed_or_killed => run.probes_before.saturating_sub(last),
            _ => 0,
        }
    }
}

/// The kernel's reset reasons (`enum sk_rst_reason`) that tell kat why a
/// connection died; the rest are only named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelReset {
    KeepaliveTimeout,
    AbortOnClose,
    AbortOnLinger,
    AbortOnMemory,
    DisconnectWithData,
    /// tcp_disconnect's RST: from close() with SO_LINGER 0, or from
    /// connect(AF_UNSPEC).
    State,
    NotSpecified,
    Other,
}

impl KernelReset {
    /// From its BTF name (without SK_RST_REASON_).
    fn of(name: &str) -> Self {
        match name {
            "TCP_KEEPALIVE_TIMEOUT" => Self::KeepaliveTimeout,
            "TCP_ABORT_ON_CLOSE" => Self::AbortOnClose,
            "TCP_ABORT_ON_LINGER" => Self::AbortOnLinger,
            "TCP_ABORT_ON_MEMORY" => Self::AbortOnMemory,
            "TCP_DISCONNECT_WITH_DATA" => Self::DisconnectWithData,
            "TCP_STATE" => Self::State,
            "NOT_SPECIFIED" => Self::NotSpecified,
            _ => Self::Other,
        }
    }
}

/// A kernel reset reason as kat reads it, and as the event names it.
struct ResetName {
    kind: KernelReset,
    name: String,
}

pub struct Tracker {
    hz: u32,
    /// By value; mapped once at start, not at every death.
    reset_reasons: HashMap<u32, ResetName>,
    realtime_offset_ns: i128,
    socks: HashMap<u64, Sock>,
    /// Keepalive timer runs that no record told of (see `timer_run`).
    unseen_timer_runs: u64,
    /// By path (namespace, peer address and port): the longest silence
    /// after which a keepalive probe there was answered.
    survived: HashMap<Path, f64>,
    /// The flows this host's conntrack forgot, by each end's view of the
    /// connection (local address and port, remote address and port): the
    /// client's is the original direction, the server's the reply.
    forgotten: HashMap<Ends, (u32, DateTime<Utc>)>,
}

/// A connection as one socket sees it: local, then remote.
type Ends = (IpAddr, u16, IpAddr, u16);

/// Forgotten flows remembered until one of their sockets dies; beyond
/// this the oldest goes.
const FORGOTTEN_KEPT: usize = 4096;

/// A connection's path as far as a middlebox's idle timeout goes.
type Path = (u32, IpAddr, u16);

/// Paths whose survived silence is remembered; beyond this one goes.
const PATHS_KEPT: usize = 4096;

/// How much longer than the longest silence its path survived a fatal
/// silence must be to suspect a middlebox: keepalive probes at one
/// setting come at idle times a few jiffies apart, and a peer that
/// restarted kills the next probe at the same idle as the answered ones.
const SUSPECT_RATIO: f64 = 1.5;
/// ... and how many round trips long: a silence of a few round trips is
/// no silence to a middlebox.
const SUSPECT_RTTS: f64 = 10.0;

/// The silence before a timeout or a peer's RST and, when the evidence
/// fits, the verdict; nothing for other deaths, or where kat cannot tell
/// (`idle_before_s` None: no unanswered segment it saw). `survived_s` is
/// the longest silence the same path answered after.
fn judge(
    reason: Reason,
    idle_before_s: Option<f64>,
    survived_s: Option<f64>,
    srtt_s: f64,
) -> Option<Silence> {
    let fits = matches!(
        reason,
        Reason::KeepaliveTimeout
            | Reason::UserTimeout
            | Reason::RetransmitTimeout
            | Reason::PeerReset
    );
    if !fits {
        return None;
    }
    let idle_before_s = idle_before_s?;
    let survived = survived_s
        .filter(|&a| idle_before_s >= a * SUSPECT_RATIO && idle_before_s >= srtt_s * SUSPECT_RTTS);
    Some(Silence {
        idle_before_s,
        verdict: survived.map(|_| Verdict::MiddleboxIdleDropSuspected),
        survived_idle_s: survived,
    })
}

fn addr(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        let v6 = Ipv6Addr::from(*raw);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

fn probing(sk: u64, s: &Sock) -> Probing {
    Probing {
        sk,
        netns: s.netns,
        saddr: s.saddr,
        sport: s.sport,
        daddr: s.daddr,
        dport: s.dport,
    }
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

pub fn errno_name(err: i32) -> Option<String> {
    (err != 0).then(|| format!("{:?}", nix::errno::Errno::from_raw(err.abs())))
}

pub fn state_name(state: u8) -> &'static str {
    match state {
        tcp_state::ESTABLISHED => "ESTABLISHED",
        tcp_state::SYN_SENT => "SYN_SENT",
        tcp_state::SYN_RECV => "SYN_RECV",
        tcp_state::FIN_WAIT1 => "FIN_WAIT1",
        tcp_state::FIN_WAIT2 => "FIN_WAIT2",
        tcp_state::TIME_WAIT => "TIME_WAIT",
        tcp_state::CLOSE => "CLOSE",
        tcp_state::CLOSE_WAIT => "CLOSE_WAIT",
        tcp_state::LAST_ACK => "LAST_ACK",
        tcp_state::LISTEN => "LISTEN",
        tcp_state::CLOSING => "CLOSING",
        _ => "UNKNOWN",
    }
}

const ETIMEDOUT: i32 = libc::ETIMEDOUT;

impl Tracker {
    pub fn new(setup: Setup) -> Self {
        let reset_reasons = setup
            .reset_reasons
            .unwrap_or_default()
            .into_iter()
            .map(|(value, name)| {
                let kind = KernelReset::of(&name);
                (value, ResetName { kind, name })
            })
            .collect();
        Self {
            hz: setup.hz,
            reset_reasons,
            realtime_offset_ns: setup.realtime_offset_ns,
            socks: HashMap::new(),
            unseen_timer_runs: 0,
            survived: HashMap::new(),
            forgotten: HashMap::new(),
        }
    }

    fn forget(&mut self, e: &Expired) {
        for t in [&e.orig, &e.reply] {
            if self.forgotten.len() >= FORGOTTEN_KEPT {
                let oldest = self
                    .forgotten
                    .iter()
                    .min_by_key(|(_, (_, ts))| *ts)
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    self.forgotten.remove(&k);
                }
            }
            self.forgotten
                .insert((t.saddr, t.sport, t.daddr, t.dport), (e.netns, e.ts));
        }
    }

    /// Keepalive timer runs kat knows the kernel made but had no record
    /// of: a probe count that rose by more than one between two runs.
    pub fn unseen_timer_runs(&self) -> u64 {
        self.unseen_timer_runs
    }

    pub fn tracked(&self) -> usize {
        self.socks.len()
    }

    /// Sockets with a keepalive probe out: the ones whose answer we wait for.
    pub fn probing(&self) -> Vec<Probing> {
        self.socks
            .iter()
            .filter(|(_, s)| s.probes_out > 0 && s.closing.is_none())
            .map(|(&sk, s)| probing(sk, s))
            .collect()
    }

    /// The probing sockets due to be asked about their answer at `now`
    /// (monotonic ns); each is asked again after a doubled wait.
    pub fn due_for_answer(&mut self, now: u64) -> Vec<Probing> {
        self.socks
            .iter_mut()
            .filter(|(_, s)| s.probes_out > 0 && s.closing.is_none() && s.ask_at_ns <= now)
            .map(|(&sk, s)| {
                s.ask_at_ns = now + s.ask_gap_ns;
                s.ask_gap_ns = (s.ask_gap_ns * 2).min(ASK_GAP_MAX_NS);
                probing(sk, s)
            })
            .collect()
    }

    pub fn update(&mut self, msg: Msg) -> Vec<Event> {
        let mut out = Vec::new();
        match msg {
            Msg::Record(rec) => self.record(&rec, &mut out),
            Msg::Diag {
                sk,
                probes_out,
                ts_ns,
            } => {
                if let (Some(sock), Some(0)) = (self.socks.get(&sk), probes_out) {
                    if sock.probes_out > 0 && sock.closing.is_none() {
                        out.push(self.answered(sk, ts_ns));
                    }
                }
            }
            Msg::WallClock(offset_ns) => self.realtime_offset_ns = offset_ns,
            Msg::Expired(e) => self.forget(&e),
            Msg::Tick(now) => {
                let due: Vec<u64> = self
                    .socks
                    .iter()
                    .filter(|(_, s)| {
                        s.closing
                            .as_ref()
                            .is_some_and(|c| c.ts_ns + CLOSE_GRACE_NS <= now)
                    })
                    .map(|(&sk, _)| sk)
                    .collect();
                for sk in due {
                    self.finish(sk, &mut out);
                }
            }
        }
        out
    }

    /// The socket's probes were answered: the path survived the silence
    /// before the first of them.
    fn answered(&mut self, sk: u64, ts_ns: u64) -> Event {
        let sock = self.socks.get_mut(&sk).expect("the caller found it");
        let probe = std::mem::take(&mut sock.probes_out);
        let silence = sock.first_unanswered_idle_s.take();
        let path = (sock.netns, sock.daddr, sock.dport);
        if let Some(idle) = silence {
            if !self.survived.contains_key(&path) && self.survived.len() >= PATHS_KEPT {
                if let Some(any) = self.survived.keys().next().copied() {
                    self.survived.remove(&any);
                }
            }
            let longest = self.survived.entry(path).or_insert(idle);
            *longest = longest.max(idle);
        }
        self.event(sk, ts_ns, What::ProbeAnswered { probe })
    }

    fn wall(&self, mono_ns: u64) -> DateTime<Utc> {
        let ns = mono_ns as i128 + self.realtime_offset_ns;
        DateTime::from_timestamp_nanos(i64::try_from(ns).unwrap_or(i64::MAX))
    }

    fn settings(&self, rec: &Record) -> Settings {
        let hz = f64::from(self.hz.max(1));
        let pick = |own: u32, sysctl: u32| {
            if own != 0 {
                (f64::from(own) / hz, Origin::Socket)
            } else {
                (f64::from(sysctl) / hz, Origin::Sysctl)
            }
        };
        let (idle_s, idle_from) = pick(rec.ka_time, rec.sysctl_time);
        let (intvl_s, intvl_from) = pick(rec.ka_intvl, rec.sysctl_intvl);
        let (probes, probes_from) = if rec.ka_probes != 0 {
            (rec.ka_probes, Origin::Socket)
        } else {
            (rec.sysctl_probes, Origin::Sysctl)
        };
        Settings {
            enabled: rec.flags & flag::KEEPOPEN != 0,
            idle_s,
            idle_from,
            intvl_s,
            intvl_from,
            probes,
            probes_from,
            user_timeout_ms: (rec.user_timeout_ms != 0).then_some(rec.user_timeout_ms),
        }
    }

    fn event(&self, sk: u64, ts_ns: u64, what: What) -> Event {
        let s = &self.socks[&sk];
        Event {
            what,
            ts: self.wall(ts_ns),
            saddr: s.saddr,
            sport: s.sport,
            daddr: s.daddr,
            dport: s.dport,
            netns: s.netns,
            uid: s.uid,
            pid: None,
            comm: None,
            workload: None,
            keepalive: s.settings,
            sock_ino: s.sock_ino,
        }
    }

    /// The socket's entry, created on first sight; refreshes what the
    /// record knows better than we do.
    fn sock(&mut self, rec: &Record) -> &mut Sock {
        let sock = self.socks.entry(rec.sk).or_insert_with(|| Sock {
            saddr: addr(rec.family, &rec.saddr),
            sport: rec.sport,
            daddr: addr(rec.family, &rec.daddr),
            dport: rec.dport,
            netns: rec.netns,
            uid: rec.uid,
            sock_ino: rec.sock_ino,
            established_ns: None,
            probes_out: 0,
            last_run_probes: None,
            first_unanswered_idle_s: None,
            settings: None,
            reset_sent: None,
            reset_received: None,
            closing: None,
            ask_at_ns: 0,
            ask_gap_ns: ASK_FIRST_NS,
        });
        // Ports read 0 once the kernel unhashes the socket: keep what we had.
        if sock.sport == 0 {
            sock.sport = rec.sport;
            sock.saddr = addr(rec.family, &rec.saddr);
        }
        if sock.dport == 0 {
            sock.dport = rec.dport;
            sock.daddr = addr(rec.family, &rec.daddr);
        }
        if rec.sock_ino != 0 {
            sock.sock_ino = rec.sock_ino;
        }
        // The kernel keeps when the socket was established and sends it
        // with each record (0: before kat started).
        if rec.established_ns != 0 {
            sock.established_ns = Some(rec.established_ns);
        }
        sock
    }

    fn record(&mut self, rec: &Record, out: &mut Vec<Event>) {
        match rec.kind {
            kind::TIMER_RUN => self.timer_run(rec, out),
            kind::RESET_SENT => {
                let mut context = rec.context;
                // sk_shutdown says "in close()" even where the stack walk
                // found nothing.
                if rec.flags & flag::IN_CLOSE != 0 {
                    context |= context::TCP_CLOSE;
                }
                let reset = ResetSent {
                    reason: (rec.flags & flag::HAS_RESET_REASON != 0).then_some(rec.reset_reason),
                    in_keepalive_timer: rec.flags & flag::IN_KEEPALIVE_TIMER != 0
                        || rec.context & context::KEEPALIVE_TIMER != 0,
                    context,
                    pid: rec.pid,
                    comm: comm(&rec.comm),
                };
                let settings = self.settings(rec);
                let sock = self.sock(rec);
                sock.settings.get_or_insert(settings).user_timeout_ms = settings.user_timeout_ms;
                sock.reset_sent = Some(reset);
                // tcp_close and tcp_disconnect send their RST after CLOSE:
                // it is the last word on this connection.
                if sock.closing.is_some() {
                    self.finish(rec.sk, out);
                }
            }
            kind::RESET_RECEIVED => {
                let sock = self.sock(rec);
                sock.reset_received = Some(rec.probes_after.max(sock.probes_out));
            }
            kind::STATE_CHANGE if rec.state == tcp_state::CLOSE => {
                // A death is judged by the settings in force at death
                // (TCP_USER_TIMEOUT set on a socket that never ran its
                // keepalive timer, say), not those last seen at a probe.
                let settings = self.settings(rec);
                let hz = f64::from(self.hz.max(1));
                let sock = self.sock(rec);
                sock.settings = Some(settings);
                sock.closing = Some(Closing {
                    ts_ns: rec.ts_ns,
                    old_state: rec.old_state,
                    sk_err: rec.sk_err,
                    probes_out: rec.probes_after,
                    silent_s: f64::from(rec.idle_jiffies) / hz,
                    sent_ago_s: f64::from(rec.sent_jiffies) / hz,
                    srtt_s: f64::from(rec.srtt_us) / 1e6,
                    retrans_ago_s: (rec.retrans_ago_ms != 0)
                        .then(|| f64::from(rec.retrans_ago_ms) / 1e3),
                    in_keepalive_timer: rec.flags & flag::IN_KEEPALIVE_TIMER != 0,
                });
                // A RST already sent or received, or an error already set,
                // decides the reason: nothing more is coming.
                if sock.reset_sent.is_some() || sock.reset_received.is_some() || rec.sk_err != 0 {
                    self.finish(rec.sk, out);
                }
            }
            // Sent one by one only when asked (`--all`): its end is known.
            kind::CLOSED => {
                let settings = self.settings(rec);
                let sock = self.sock(rec);
                sock.settings = Some(settings);
                sock.closing = Some(Closing {
                    ts_ns: rec.ts_ns,
                    old_state: rec.old_state,
                    sk_err: 0,
                    probes_out: 0,
                    silent_s: 0.0,
                    sent_ago_s: 0.0,
                    srtt_s: 0.0,
                    retrans_ago_s: None,
                    in_keepalive_timer: false,
                });
                self.finish(rec.sk, out);
            }
            kind::DESTROY => {
                if self.socks.get(&rec.sk).is_some_and(|s| s.closing.is_some()) {
                    self.finish(rec.sk, out);
                }
                self.socks.remove(&rec.sk);
            }
            _ => {}
        }
    }

    fn timer_run(&mut self, rec: &Record, out: &mut Vec<Event>) {
        let settings = self.settings(rec);
        let sk = rec.sk;
        let sock = self.sock(rec);
        sock.settings = Some(settings);
        let unseen = sock.runs_unseen_before(rec);
        let was_out = sock.probes_out;
        self.unseen_timer_runs += u64::from(unseen);
        // The kernel zeroes icsk_probes_out on every valid ACK: if it is 0
        // now and we had probes out, they were answered (sock_diag usually
        // tells us sooner).
        if was_out > 0 && rec.probes_before == 0 {
            out.push(self.answered(sk, rec.ts_ns));
        }
        if rec.probes_after > rec.probes_before || rec.flags & flag::PROBE_SENT != 0 {
            let hz = f64::from(self.hz.max(1));
            let idle_s = f64::from(rec.idle_jiffies) / hz;
            let sock = self.socks.get_mut(&sk).expect("inserted above");
            if sock.probes_out == 0 {
                sock.first_unanswered_idle_s = Some(idle_s);
            }
            sock.probes_out = rec.probes_after;
            sock.ask_at_ns = rec.ts_ns + ASK_FIRST_NS;
            sock.ask_gap_ns = ASK_FIRST_NS;
            out.push(self.event(
                sk,
                rec.ts_ns,
                What::Probe {
                    probe: rec.probes_after.max(1),
                    probes_max: settings.probes,
                    idle_s,
                },
            ));
        }
    }

    /// Reports the death of a closing socket and forgets it.
    fn finish(&mut self, sk: u64, out: &mut Vec<Event>) {
        let Some(sock) = self.socks.get(&sk) else {
            return;
        };
        let Some(closing) = sock.closing.clone() else {
            return;
        };
        let reason = self.classify(sock, &closing);
        let kernel_reset_reason = sock
            .reset_sent
            .as_ref()
            .and_then(|r| r.reason)
            .and_then(|v| self.reset_reasons.get(&v))
            .map(|r| r.name.clone());
        let unanswered = closing.probes_out.max(sock.reset_received.unwrap_or(0));
        let found_by_probe =
            reason == Reason::PeerReset && sock.reset_received.is_some_and(|p| p > 0);
        let lifetime_s = sock
            .established_ns
            .map(|t| closing.ts_ns.saturating_sub(t) as f64 / 1e9);
        let idle_before_s = if unanswered > 0 {
            sock.first_unanswered_idle_s
        } else {
            closing.data_silence()
        };
        let survived = self
            .survived
            .get(&(sock.netns, sock.daddr, sock.dport))
            .copied();
        let silence = judge(reason, idle_before_s, survived, closing.srtt_s);
        // The closer is known only where the RST came from a system call.
        let closer = sock
            .reset_sent
            .as_ref()
            .filter(|_| {
                matches!(
                    reason,
                    Reason::AbortOnClose | Reason::AbortOnLinger | Reason::Disconnect
                )
            })
            .map(|r| (r.pid, r.comm.clone()));
        let mut ev = self.event(
            sk,
            closing.ts_ns,
            What::Death {
                reason,
                errno: errno_name(closing.sk_err),
                unanswered_probes: unanswered,
                found_by_probe,
                lifetime_s,
                state: state_name(closing.old_state).to_string(),
                kernel_reset_reason,
                silence,
                conntrack_forgot: None,
            },
        );
        if let What::Death {
            conntrack_forgot, ..
        } = &mut ev.what
        {
            let ends = (ev.saddr, ev.sport, ev.daddr, ev.dport);
            *conntrack_forgot = self.forgotten.remove(&ends).map(|(netns, ts)| Forgotten {
                netns,
                before_death_s: (ev.ts - ts).num_milliseconds().max(0) as f64 / 1000.0,
            });
        }
        if let Some((pid, comm)) = closer {
            ev.pid = Some(pid);
            ev.comm = Some(comm);
        }
        out.push(ev);
        self.socks.remove(&sk);
    }

    fn classify(&self, sock: &Sock, closing: &Closing) -> Reason {
        let user_timeout = sock.settings.and_then(|s| s.user_timeout_ms).is_some();
        let timed_out = |user_timeout: bool| {
            if user_timeout {
                Reason::UserTimeout
            } else {
                Reason::KeepaliveTimeout
            }
        };
        if let Some(rst) = &sock.reset_sent {
            let kind = rst
                .reason
                .and_then(|v| self.reset_reasons.get(&v))
                .map(|r| r.kind);
            return match kind {
                Some(KernelReset::KeepaliveTimeout) => timed_out(user_timeout),
                Some(KernelReset::AbortOnClose) => Reason::AbortOnClose,
                Some(KernelReset::AbortOnLinger) => Reason::AbortOnLinger,
                Some(KernelReset::AbortOnMemory) => Reason::AbortOnMemory,
                Some(KernelReset::DisconnectWithData) => Reason::Disconnect,
                // SO_LINGER 0 or connect(AF_UNSPEC): the stack tells which.
                Some(KernelReset::State) => from_context(rst.context | context::TCP_DISCONNECT),
                // NOT_SPECIFIED, or no reasons at all (before 6.10): where
                // the RST came from decides.
                Some(KernelReset::NotSpecified) | None => {
                    if rst.in_keepalive_timer {
                        timed_out(user_timeout)
                    } else {
                        from_context(rst.context)
                    }
                }
                Some(KernelReset::Other) => Reason::Unknown,
            };
        }
        if sock.reset_received.is_some() {
            return Reason::PeerReset;
        }
        if closing.sk_err != 0 {
            // The keepalive timer's RST unseen (its hook skipped by the
            // kernel): the timer that closed it tells.
            if closing.in_keepalive_timer {
                return timed_out(user_timeout);
            }
            // tcp_write_err: sk_err = sk_err_soft ?: ETIMEDOUT, from the
            // retransmit (or zero-window probe) timer, without a RST.
            return if user_timeout {
                Reason::UserTimeout
            } else if closing.sk_err == ETIMEDOUT || closing.old_state == tcp_state::ESTABLISHED {
                Reason::RetransmitTimeout
            } else {
                Reason::Unknown
            };
        }
        Reason::Closed
    }
}

/// A RST's reason from the kernel functions it was sent from.
fn from_context(c: u8) -> Reason {
    let close = c & context::TCP_CLOSE != 0;
    let disconnect = c & context::TCP_DISCONNECT != 0;
    if c & context::OUT_OF_RESOURCES != 0 {
        Reason::AbortOnMemory
    } else if close && disconnect {
        // __tcp_close calls tcp_disconnect only for SO_LINGER 0.
        Reason::AbortOnLinger
    } else if close {
        Reason::AbortOnClose
    } else if disconnect {
        Reason::Disconnect
    } else {
        Reason::Unknown
    }
}

#[cfg(test)]
mod tests;
