//! The fixtures of the unit tests, benches and examples, in one place:
//! times, endpoints, keepalive settings, events, journal headers and the
//! dashboard's live rows, each with one set of defaults that a test
//! changes with struct update syntax. Built for `cargo test` and, through
//! the `testkit` feature (the crate's dev-dependency on itself), for the
//! benches and examples; never in kat itself.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::event::{ConnKey, Event, Origin, Reason, Settings, What};
use crate::journal::{Header, FORMAT};
use crate::owner::Owner;
use crate::top::model::Live;

/// The fixtures' epoch, 2025-11-21 04:40:00 UTC, in milliseconds.
const EPOCH_MS: i64 = 1_763_700_000_000;

/// The initial network namespace's inode.
pub const NETNS: u32 = 4026531840;

/// `s` seconds after the fixtures' epoch, to the millisecond.
pub fn at(s: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(EPOCH_MS + (s * 1000.0) as i64).expect("a time in range")
}

/// An address written as text.
pub fn addr(a: &str) -> IpAddr {
    a.parse().expect("an address")
}

/// The connection `saddr:sport → daddr:dport` in [`NETNS`].
pub fn conn(saddr: IpAddr, sport: u16, daddr: IpAddr, dport: u16) -> ConnKey {
    ConnKey {
        netns: NETNS,
        saddr,
        sport,
        daddr,
        dport,
    }
}

/// Idle time and interval set on the socket, the probe count from the
/// sysctl, no TCP_USER_TIMEOUT.
pub fn settings(idle_s: f64, intvl_s: f64, probes: u8) -> Settings {
    Settings {
        enabled: true,
        idle_s,
        idle_from: Origin::Socket,
        intvl_s,
        intvl_from: Origin::Socket,
        probes,
        probes_from: Origin::Sysctl,
        user_timeout_ms: None,
    }
}

/// Probe number `probe` of `probes_max`, `idle_s` after the peer was last heard.
pub fn probe(probe: u8, probes_max: u8, idle_s: f64) -> What {
    What::Probe {
        probe,
        probes_max,
        idle_s,
    }
}

/// The death of an established connection, not found by a probe, with
/// no name from the kernel for it.
pub fn death(
    reason: Reason,
    errno: Option<&str>,
    unanswered_probes: u8,
    lifetime_s: Option<f64>,
) -> What {
    What::Death {
        reason,
        errno: errno.map(str::to_owned),
        unanswered_probes,
        found_by_probe: false,
        lifetime_s,
        state: "ESTABLISHED".into(),
        kernel_reset_reason: None,
        silence: None,
        conntrack_forgot: None,
    }
}

/// `what` happening to connection `k` at `ts`, uid 0, its owner and
/// settings unknown.
pub fn event(k: ConnKey, ts: DateTime<Utc>, what: What) -> Event {
    Event {
        what,
        ts,
        saddr: k.saddr,
        sport: k.sport,
        daddr: k.daddr,
        dport: k.dport,
        netns: k.netns,
        uid: 0,
        pid: None,
        comm: None,
        workload: None,
        keepalive: None,
        sock_ino: 0,
    }
}

/// The header of a journal whose run and file started at `at(0.0)`.
pub fn header() -> Header {
    Header {
        format: FORMAT,
        kat: "0.1.0".into(),
        host: "web-1".into(),
        kernel: "6.18.44".into(),
        lanes: "tracepoint lane".into(),
        ports: vec![],
        run_started: at(0.0),
        file_started: at(0.0),
    }
}

/// An established connection in the dashboard's table, held by `pid`.
pub fn live(key: ConnKey, pid: u32, comm: &str, probes_out: u8, next_run_s: f64) -> Live {
    Live {
        key,
        state: "ESTABLISHED",
        uid: 0,
        owner: Some(Owner {
            pid,
            comm: comm.into(),
            workload: None,
        }),
        next_run_s,
        probes_out,
    }
}
