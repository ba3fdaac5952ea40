//! Path idle timeouts learnt from the deaths kat suspected of a
//! middlebox's doing: per path (namespace, peer address and port), the
//! longest silence it answered after and the shortest it died after. The
//! path forgets idle flows somewhere between; the advice names the
//! keepalive knob in force for the sockets that died.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;

use crate::event::{Event, Origin, Settings, What};
use crate::text::{duration, endpoint};

/// The keepalive knob that decided when a dead socket would first probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "keepalive", rename_all = "snake_case")]
pub enum Knob {
    /// SO_KEEPALIVE was off.
    Off,
    /// TCP_KEEPIDLE on the socket, in whole seconds.
    Socket { idle_s: u64 },
    /// The namespace's net.ipv4.tcp_keepalive_time, in whole seconds.
    Sysctl { idle_s: u64 },
}

impl Knob {
    fn of(s: &Settings) -> Self {
        let idle_s = s.idle_s.round() as u64;
        match (s.enabled, s.idle_from) {
            (false, _) => Knob::Off,
            (true, Origin::Socket) => Knob::Socket { idle_s },
            (true, Origin::Sysctl) => Knob::Sysctl { idle_s },
        }
    }

    fn text(self, netns: u32) -> String {
        match self {
            Knob::Off => "no keepalive (SO_KEEPALIVE off)".into(),
            Knob::Socket { idle_s } => format!("TCP_KEEPIDLE {}", duration(idle_s as f64)),
            Knob::Sysctl { idle_s } => format!(
                "keepalive idle {} (net.ipv4.tcp_keepalive_time of netns {netns})",
                duration(idle_s as f64)
            ),
        }
    }
}

/// One path that forgets idle flows, as the evidence shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathRow {
    pub netns: u32,
    pub daddr: IpAddr,
    pub dport: u16,
    /// The longest silence after which the path still answered.
    pub survived_idle_s: f64,
    /// The shortest silence before a death suspected of its doing.
    pub died_idle_s: f64,
    pub deaths: u64,
    /// The keepalive knobs in force for the sockets that died.
    pub knobs: BTreeSet<Knob>,
    pub advice: String,
}

#[derive(Debug, Default)]
struct Tally {
    survived: f64,
    died: f64,
    deaths: u64,
    knobs: BTreeSet<Knob>,
}

/// Paths learnt at most: a dashboard left running for days stays bounded
/// (the tracker remembers as many paths).
const PATHS_KEPT: usize = 4096;

/// Learns from deaths (a journal's, or the dashboard's), one at a time.
#[derive(Debug, Default)]
pub struct Learner {
    paths: BTreeMap<(u32, IpAddr, u16), Tally>,
}

impl Learner {
    pub fn add(&mut self, ev: &Event) {
        let What::Death {
            silence: Some(s), ..
        } = &ev.what
        else {
            return;
        };
        let (Some(_), Some(survived)) = (s.verdict, s.survived_idle_s) else {
            return;
        };
        let key = (ev.netns, ev.daddr, ev.dport);
        if !self.paths.contains_key(&key) && self.paths.len() >= PATHS_KEPT {
            return;
        }
        let t = self.paths.entry(key).or_insert_with(|| Tally {
            died: f64::INFINITY,
            ..Tally::default()
        });
        t.survived = t.survived.max(survived);
        t.died = t.died.min(s.idle_before_s);
        t.deaths += 1;
        t.knobs.extend(ev.keepalive.as_ref().map(Knob::of));
    }

    /// The longest silence a path was seen to survive, when kat has learnt
    /// that it forgets idle flows.
    pub fn survives(&self, netns: u32, daddr: IpAddr, dport: u16) -> Option<f64> {
        self.paths.get(&(netns, daddr, dport)).map(|t| t.survived)
    }

    /// The paths, the most deaths first.
    pub fn rows(&self) -> Vec<PathRow> {
        let mut rows: Vec<PathRow> = self
            .paths
            .iter()
            .map(|(&(netns, daddr, dport), t)| {
                let mut row = PathRow {
                    netns,
                    daddr,
                    dport,
                    survived_idle_s: t.survived,
                    died_idle_s: t.died,
                    deaths: t.deaths,
                    knobs: t.knobs.clone(),
                    advice: String::new(),
                };
                row.advice = advice(&row);
                row
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.deaths));
        rows
    }
}

/// What the evidence says and what to change, in a user's words.
pub fn advice(p: &PathRow) -> String {
    let survived = duration(p.survived_idle_s);
    let mut s = format!(
        "flows to {} survive {survived} idle and die after {}: the path forgets idle flows somewhere between.",
        endpoint(&p.daddr, p.dport),
        duration(p.died_idle_s),
    );
    if !p.knobs.is_empty() {
        let knobs: Vec<String> = p.knobs.iter().map(|k| k.text(p.netns)).collect();
        s.push_str(&format!(" The sockets that died had {}.", knobs.join("; ")));
    }
    let fix = if p.knobs.iter().all(|k| matches!(k, Knob::Socket { .. })) && !p.knobs.is_empty() {
        format!("set TCP_KEEPIDLE below {survived}")
    } else if p.knobs.contains(&Knob::Off) {
        format!(
            "turn SO_KEEPALIVE on, with TCP_KEEPIDLE (or net.ipv4.tcp_keepalive_time of netns {}) below {survived}",
            p.netns
        )
    } else {
        format!(
            "set net.ipv4.tcp_keepalive_time of netns {} (or TCP_KEEPIDLE) below {survived}",
            p.netns
        )
    };
    s.push_str(&format!(" Keep them alive: {fix}."));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Reason, Silence, Verdict};
    use crate::testkit::{self, addr, at, conn};

    fn suspect(sport: u16, idle_before_s: f64, survived: f64, settings: Settings) -> Event {
        let k = conn(addr("198.18.20.1"), sport, addr("198.18.21.2"), 5432);
        let mut what = testkit::death(Reason::RetransmitTimeout, Some("ETIMEDOUT"), 0, None);
        if let What::Death { silence, .. } = &mut what {
            *silence = Some(Silence {
                idle_before_s,
                verdict: Some(Verdict::MiddleboxIdleDropSuspected),
                survived_idle_s: Some(survived),
            });
        }
        Event {
            keepalive: Some(settings),
            ..testkit::event(k, at(0.0), what)
        }
    }

    fn sysctl(idle_s: f64) -> Settings {
        Settings {
            idle_from: Origin::Sysctl,
            ..testkit::settings(idle_s, 75.0, 9)
        }
    }

    #[test]
    fn a_path_survives_its_longest_answered_silence_and_dies_after_its_shortest_fatal_one() {
        let mut l = Learner::default();
        l.add(&suspect(1, 400.0, 200.0, sysctl(7200.0)));
        l.add(&suspect(2, 360.0, 240.0, sysctl(7200.0)));
        let rows = l.rows();
        assert_eq!(rows.len(), 1);
        let p = &rows[0];
        assert_eq!(
            (p.survived_idle_s, p.died_idle_s, p.deaths),
            (240.0, 360.0, 2)
        );
        assert_eq!(
            p.advice,
            format!(
                "flows to 198.18.21.2:5432 survive 4m idle and die after 6m: the path forgets \
                 idle flows somewhere between. The sockets that died had keepalive idle 2h \
                 (net.ipv4.tcp_keepalive_time of netns {}). Keep them alive: set \
                 net.ipv4.tcp_keepalive_time of netns {} (or TCP_KEEPIDLE) below 4m.",
                p.netns, p.netns
            )
        );
    }

    #[test]
    fn the_advice_names_the_knob_in_force() {
        let mut own = Learner::default();
        let socket = Settings {
            idle_from: Origin::Socket,
            ..testkit::settings(5.0, 1.0, 2)
        };
        own.add(&suspect(1, 5.0, 1.0, socket));
        let advice = &own.rows()[0].advice;
        assert!(advice.contains("had TCP_KEEPIDLE 5s."), "{advice}");
        assert!(advice.ends_with("set TCP_KEEPIDLE below 1s."), "{advice}");

        let mut off = Learner::default();
        off.add(&suspect(
            1,
            4.3,
            1.0,
            Settings {
                enabled: false,
                ..sysctl(7200.0)
            },
        ));
        off.add(&suspect(2, 5.0, 1.0, socket));
        let advice = &off.rows()[0].advice;
        assert!(
            advice.contains("no keepalive (SO_KEEPALIVE off); TCP_KEEPIDLE 5s"),
            "{advice}"
        );
        assert!(advice.contains("turn SO_KEEPALIVE on"), "{advice}");
    }

    #[test]
    fn deaths_without_a_verdict_teach_nothing() {
        let mut l = Learner::default();
        let mut ev = suspect(1, 5.0, 1.0, sysctl(7200.0));
        if let What::Death {
            silence: Some(s), ..
        } = &mut ev.what
        {
            s.verdict = None;
            s.survived_idle_s = None;
        }
        l.add(&ev);
        assert!(l.rows().is_empty());
    }
}
