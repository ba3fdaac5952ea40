//! Connections at risk: established, and silent in both directions for
//! longer than a threshold. A NAT, a stateful firewall or a load balancer
//! that forgets idle flows kills these next, silently; keepalive probes
//! sent more often than the path's idle timeout would keep them alive.
//! `kat trace --at-risk` lists them once; `kat top` shows them on a key.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::diag::{self, Diag, IdleSocket};
use crate::event::{rfc3339, ConnKey};
use crate::owner::{self, Census, Owner};
use crate::text;
use crate::workload::{Attributor, Workload};

/// The default `--idle-over`: shorter than the idle timeouts of common
/// middleboxes (4 to 15 minutes), longer than a busy connection's gaps.
pub const DEFAULT_IDLE_OVER: &str = "60s";

/// Parses `--idle-over`: a duration of at least a second.
pub fn idle_over(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d >= Duration::from_secs(1) => Ok(d),
        Ok(_) => Err(format!("{s:?}: at least 1s")),
        Err(_) => Err(format!("{s:?} is not a duration (examples: 90s, 5m, 1h)")),
    }
}

/// One connection at risk, as `kat trace --at-risk --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename = "at_risk")]
pub struct AtRisk {
    /// When it was listed.
    #[serde(serialize_with = "rfc3339")]
    pub ts: DateTime<Utc>,
    #[serde(flatten)]
    pub conn: ConnKey,
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<Arc<Workload>>,
    /// Seconds since anything crossed the connection either way.
    pub idle_s: f64,
    /// SO_KEEPALIVE is on (its timer is pending).
    pub keepalive: bool,
    /// With keepalive on: seconds until its timer runs next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_probe_s: Option<f64>,
}

impl AtRisk {
    fn of(s: &IdleSocket, owner: Option<Owner>, ts: DateTime<Utc>) -> Self {
        let r = &s.socket;
        Self {
            ts,
            conn: ConnKey {
                netns: s.netns,
                saddr: r.saddr,
                sport: r.sport,
                daddr: r.daddr,
                dport: r.dport,
            },
            uid: r.uid,
            pid: owner.as_ref().map(|o| o.pid),
            workload: owner.as_ref().and_then(|o| o.workload.clone()),
            comm: owner.map(|o| o.comm),
            idle_s: s.idle.as_secs_f64(),
            keepalive: r.keepalive.is_some(),
            next_probe_s: r.keepalive.map(|d| d.as_secs_f64()),
        }
    }
}

/// The idle sockets as rows, with the owner `owner_of` finds for each
/// socket inode, longest silent first: the next a middlebox forgets.
pub fn rows(sockets: &[IdleSocket], owner_of: impl Fn(u64) -> Option<Owner>) -> Vec<AtRisk> {
    let now = Utc::now();
    let mut list: Vec<AtRisk> = sockets
        .iter()
        .map(|s| AtRisk::of(s, owner_of(u64::from(s.socket.inode)), now))
        .collect();
    list.sort_by(|a, b| b.idle_s.total_cmp(&a.idle_s));
    list
}

/// Every connection at risk in the namespaces kat can see, with owners
/// from one census. Blocking: for a one-shot listing.
pub fn list(ports: &[u16], over: Duration, host_root: &Path) -> Vec<AtRisk> {
    let sockets = idle_sockets(&mut Diag::default(), &diag::visible_netns(), ports, over);
    let mut owners = Census::default().take();
    owner::attribute(
        &mut owners,
        &mut Attributor::new(Path::new("/proc"), host_root),
    );
    rows(&sockets, |inode| owners.get(&inode).cloned())
}

/// The idle sockets of these namespaces; a namespace that cannot be asked
/// is skipped (it may be gone by now).
pub fn idle_sockets(
    diag: &mut Diag,
    netns: &[u32],
    ports: &[u16],
    over: Duration,
) -> Vec<IdleSocket> {
    let mut out = Vec::new();
    for &n in netns {
        match diag.idle_sockets(n, ports, over) {
            Ok(sockets) => out.extend(sockets),
            Err(e) => log::debug!("idle sockets of netns {n}: {e:#}"),
        }
    }
    out
}

/// `198.18.0.1:41000 → 198.18.0.2:5432  idle 7m  keepalive off  pid 4242
/// (psql)`.
pub fn line(a: &AtRisk) -> String {
    let mut s = format!(
        "{}  idle {}  keepalive {}",
        a.conn,
        text::duration(a.idle_s),
        keepalive(a)
    );
    if let Some(pid) = a.pid {
        s.push_str(&format!("  pid {}", text::process(pid, a.comm.as_deref())));
    }
    s
}

/// `off`, or `on, next probe in 2h`.
pub fn keepalive(a: &AtRisk) -> String {
    match a.next_probe_s {
        Some(next) if a.keepalive => {
            format!("on, next probe in {}", text::duration(next))
        }
        _ => "off".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Row;
    use crate::testkit::{addr, conn};

    fn at_risk(idle_s: f64, next_probe_s: Option<f64>) -> AtRisk {
        AtRisk {
            ts: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            conn: conn(addr("198.18.0.1"), 41000, addr("198.18.0.2"), 5432),
            uid: 0,
            pid: Some(4242),
            comm: Some("psql".into()),
            workload: None,
            idle_s,
            keepalive: next_probe_s.is_some(),
            next_probe_s,
        }
    }

    #[test]
    fn a_line_says_idle_time_keepalive_and_owner() {
        assert_eq!(
            line(&at_risk(420.0, None)),
            "198.18.0.1:41000 → 198.18.0.2:5432  idle 7m  keepalive off  pid 4242 (psql)"
        );
        let mut a = at_risk(300.0, Some(9000.0));
        a.pid = None;
        assert_eq!(
            line(&a),
            "198.18.0.1:41000 → 198.18.0.2:5432  idle 5m  keepalive on, next probe in 2.5h"
        );
    }

    #[test]
    fn json_has_a_type_and_leaves_out_what_is_not_known() {
        let v = serde_json::to_value(at_risk(61.5, None)).expect("json");
        assert_eq!(v["type"], "at_risk");
        assert_eq!(v["idle_s"], 61.5);
        assert_eq!(v["keepalive"], false);
        assert_eq!(v["ts"], "2023-11-14T22:13:20.000Z");
        assert!(v.get("next_probe_s").is_none());
        let mut a = at_risk(61.5, Some(3.0));
        a.comm = None;
        a.pid = None;
        let v = serde_json::to_value(a).expect("json");
        assert_eq!(v["next_probe_s"], 3.0);
        assert!(v.get("pid").is_none() && v.get("comm").is_none());
    }

    fn idle_socket(inode: u32, idle_s: u64) -> IdleSocket {
        IdleSocket {
            netns: 7,
            idle: Duration::from_secs(idle_s),
            socket: Row {
                saddr: addr("198.18.0.1"),
                sport: 41000,
                daddr: addr("198.18.0.2"),
                dport: 5432,
                state: 1,
                uid: 0,
                inode,
                keepalive: None,
                probes_out: 0,
                idle: Some(Duration::from_secs(idle_s)),
            },
        }
    }

    #[test]
    fn the_longest_silent_come_first_with_their_owners() {
        let sockets = [idle_socket(1, 61), idle_socket(2, 900), idle_socket(3, 300)];
        let owner = |inode| {
            (inode == 2).then(|| Owner {
                pid: 42,
                comm: "psql".into(),
                workload: None,
            })
        };
        let list = rows(&sockets, owner);
        let got: Vec<(f64, Option<u32>)> = list.iter().map(|a| (a.idle_s, a.pid)).collect();
        assert_eq!(got, [(900.0, Some(42)), (300.0, None), (61.0, None)]);
    }

    #[test]
    fn idle_over_takes_a_duration_of_a_second_or_more() {
        assert_eq!(idle_over("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(idle_over(DEFAULT_IDLE_OVER), Ok(Duration::from_secs(60)));
        assert!(idle_over("500ms").is_err());
        assert!(idle_over("soon").is_err());
    }
}
