//! How events read to a person, for every view (`kat trace`, `kat top`,
//! `kat report`): endpoints, durations, settings, processes, times and an
//! event's words. One style everywhere, so a line of `kat trace` reads like
//! the dashboard and the report.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Local, Utc};

use crate::event::{ConnKey, Forgotten, Origin, Reason, Settings, Silence, What};
use crate::workload::Workload;

/// `198.18.0.1:6699`, `[fd00::1]:6699`.
pub fn endpoint(addr: &IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// `local → remote`.
impl fmt::Display for ConnKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} → {}",
            endpoint(&self.saddr, self.sport),
            endpoint(&self.daddr, self.dport)
        )
    }
}

/// `0.4s`, `2s`, `61s`, `15m`, `2h`, `2.5h`: tenths only where they
/// matter (under 10 s, and hours), a trailing `.0` never.
pub fn duration(s: f64) -> String {
    let tenths = |v: f64, unit: &str| {
        let t = (v * 10.0).round() / 10.0;
        if t.fract() == 0.0 {
            format!("{t:.0}{unit}")
        } else {
            format!("{t:.1}{unit}")
        }
    };
    if s < 10.0 {
        tenths(s, "s")
    } else if s < 120.0 {
        format!("{s:.0}s")
    } else if s < 7200.0 {
        format!("{:.0}m", s / 60.0)
    } else {
        tenths(s / 3600.0, "h")
    }
}

/// `*` marks a value taken from the namespace's sysctl.
fn mark(o: Origin) -> &'static str {
    match o {
        Origin::Socket => "",
        Origin::Sysctl => "*",
    }
}

/// `55s/6s/2*`: idle time, interval and probe count, each marked when it
/// comes from the namespace's sysctl.
pub fn keepalive(k: &Settings) -> String {
    format!(
        "{}{}/{}{}/{}{}",
        duration(k.idle_s),
        mark(k.idle_from),
        duration(k.intvl_s),
        mark(k.intvl_from),
        k.probes,
        mark(k.probes_from)
    )
}

/// TCP_USER_TIMEOUT as a duration.
pub fn user_timeout(ms: u32) -> String {
    duration(f64::from(ms) / 1000.0)
}

/// `keepalive 55s/6s/2*`, and the user timeout when set.
pub fn settings(k: &Settings) -> String {
    let mut s = if k.enabled {
        format!("keepalive {}", keepalive(k))
    } else {
        "keepalive off".to_string()
    };
    if let Some(ms) = k.user_timeout_ms {
        s.push_str(&format!(" user_timeout {}", user_timeout(ms)));
    }
    s
}

/// `4242 (client)`, or the pid alone when its command is not known.
pub fn process(pid: u32, comm: Option<&str>) -> String {
    match comm {
        Some(c) => format!("{pid} ({c})"),
        None => pid.to_string(),
    }
}

/// The process, and where it runs when kat knows:
/// `4242 (nginx) shop/web-7d9f/nginx`, `812 (postgres) postgresql.service`.
pub fn owner(pid: u32, comm: Option<&str>, workload: Option<&Workload>) -> String {
    let mut s = process(pid, comm);
    if let Some(label) = workload.and_then(Workload::label) {
        s.push(' ');
        s.push_str(&label);
    }
    s
}

/// What happened, in words: `probe 2/2, idle 61s, previous unanswered`,
/// `probe 1 answered`, `DEAD keepalive_timeout after 2 unanswered probes,
/// ETIMEDOUT, lived 63s`.
pub fn what(what: &What) -> String {
    match what {
        What::Probe {
            probe,
            probes_max,
            idle_s,
        } => {
            let mut s = format!("probe {probe}/{probes_max}, idle {}", duration(*idle_s));
            if *probe > 1 {
                s.push_str(", previous unanswered");
            }
            s
        }
        What::ProbeAnswered { probe } => format!("probe {probe} answered"),
        What::Death {
            reason,
            errno,
            unanswered_probes,
            found_by_probe,
            lifetime_s,
            state,
            kernel_reset_reason,
            silence,
            conntrack_forgot,
        } => {
            let mut s = if *reason == Reason::Closed {
                format!("closed from {state}")
            } else {
                format!("DEAD {}", reason.name())
            };
            match reason {
                Reason::KeepaliveTimeout | Reason::UserTimeout => {
                    s.push_str(&format!(" after {unanswered_probes} unanswered probes"));
                }
                Reason::PeerReset if *found_by_probe => {
                    s.push_str(" (RST answered a keepalive probe: half-open connection found)");
                }
                Reason::Unknown => {
                    s.push_str(&format!(" (state {state}"));
                    if let Some(k) = kernel_reset_reason {
                        s.push_str(&format!(", kernel reset reason {k}"));
                    }
                    s.push(')');
                }
                _ => {}
            }
            if let Some(e) = errno {
                s.push_str(&format!(", {e}"));
            }
            if let Some(l) = lifetime_s {
                s.push_str(&format!(", lived {}", duration(*l)));
            }
            if let Some(silence) = silence {
                s.push_str(&format!(", {}", self::silence(silence)));
            }
            if let Some(f) = conntrack_forgot {
                s.push_str(&format!("; {}", forgotten(f)));
            }
            s
        }
    }
}

/// `conntrack of netns 4026532411 forgot the flow 2.9s before`.
pub fn forgotten(f: &Forgotten) -> String {
    format!(
        "conntrack of netns {} forgot the flow {} before",
        f.netns,
        duration(f.before_death_s)
    )
}

/// `silent 5s before; middlebox_idle_drop_suspected (this path answered
/// after 1s of silence)`.
pub fn silence(s: &Silence) -> String {
    let mut out = format!("silent {} before", duration(s.idle_before_s));
    if let Some(v) = s.verdict {
        out.push_str(&format!("; {}", v.name()));
        if let Some(survived) = s.survived_idle_s {
            out.push_str(&format!(
                " (this path answered after {} of silence)",
                duration(survived)
            ));
        }
    }
    out
}

fn local(ts: DateTime<Utc>, format: &str) -> String {
    let local: DateTime<Local> = ts.into();
    local.format(format).to_string()
}

/// `14:18:09`, in the local zone (like bcc tools).
pub fn clock(ts: DateTime<Utc>) -> String {
    local(ts, "%H:%M:%S")
}

/// `14:18:09.544`.
pub fn clock_ms(ts: DateTime<Utc>) -> String {
    local(ts, "%H:%M:%S%.3f")
}

/// `2026-11-21 14:18:09`.
pub fn date_time(ts: DateTime<Utc>) -> String {
    local(ts, "%Y-%m-%d %H:%M:%S")
}

/// `2026-11-21 14:18:09.544`.
pub fn date_time_ms(ts: DateTime<Utc>) -> String {
    local(ts, "%Y-%m-%d %H:%M:%S%.3f")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_have_one_style() {
        for (s, text) in [
            (0.4, "0.4s"),
            (2.0, "2s"),
            (9.96, "10s"),
            (55.0, "55s"),
            (61.0, "61s"),
            (63.25, "63s"),
            (900.0, "15m"),
            (7200.0, "2h"),
            (9000.0, "2.5h"),
        ] {
            assert_eq!(duration(s), text, "{s}");
        }
    }

    #[test]
    fn settings_mark_sysctl_values_and_say_the_user_timeout() {
        let mut k = Settings {
            enabled: true,
            idle_s: 7200.0,
            idle_from: Origin::Sysctl,
            intvl_s: 75.0,
            intvl_from: Origin::Sysctl,
            probes: 9,
            probes_from: Origin::Socket,
            user_timeout_ms: None,
        };
        assert_eq!(settings(&k), "keepalive 2h*/75s*/9");
        k.user_timeout_ms = Some(5000);
        assert_eq!(settings(&k), "keepalive 2h*/75s*/9 user_timeout 5s");
        k.enabled = false;
        assert_eq!(settings(&k), "keepalive off user_timeout 5s");
    }

    #[test]
    fn a_process_is_its_pid_and_command() {
        assert_eq!(process(42, Some("server")), "42 (server)");
        assert_eq!(process(42, None), "42");
    }
}
