//! `kat trace`: one line (or one JSON object) per event.

use std::io::{BufWriter, Stdout, Write as _};
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;

use crate::at_risk::{self, DEFAULT_IDLE_OVER};
use crate::conntrack::Expired;
use crate::engine::{Engine, Selection, Step, Wants};
use crate::event::{ConnKey, Event, Lost, Reason};
use crate::kernel;
use crate::loader::Orderly;
use crate::privilege;
use crate::source::LostCounts;
use crate::text;

#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// One JSON object per line (schema: docs/events.md).
    #[arg(long)]
    pub json: bool,
    /// Include orderly (FIN) closes, not only abnormal deaths.
    #[arg(long)]
    pub all: bool,
    /// List once the established connections silent in both directions
    /// for over --idle-over (those a NAT or firewall forgets next) and
    /// exit. Without root: this network namespace and your own processes.
    #[arg(long, conflicts_with_all = ["all", "lane"])]
    pub at_risk: bool,
    /// With --at-risk: how long a connection has been silent (90s, 5m).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_IDLE_OVER,
          value_parser = at_risk::idle_over, requires = "at_risk")]
    pub idle_over: Duration,
    /// Also the established flows this host's conntrack forgets (on a NAT
    /// gateway or stateful firewall: every namespace kat sees at start).
    #[arg(long, conflicts_with = "at_risk")]
    pub conntrack: bool,
}

/// Which events the user asked for. `--port` is not checked again: the
/// kernel applied it (the loader refuses a filter it cannot apply).
pub fn wanted(args: &TraceArgs, ev: &Event) -> bool {
    args.all || ev.reason() != Some(Reason::Closed)
}

/// The text line for an event (time in the local zone, like bcc tools).
pub fn line(ev: &Event) -> String {
    let mut s = format!(
        "{} {} {}",
        text::clock_ms(ev.ts),
        ConnKey::of(ev),
        text::what(&ev.what)
    );
    if let Some(k) = &ev.keepalive {
        s.push_str(&format!("  [{}]", text::settings(k)));
    }
    if let Some(pid) = ev.pid {
        s.push_str(&format!(
            " pid {}",
            text::owner(pid, ev.comm.as_deref(), ev.workload.as_deref())
        ));
    }
    s
}

/// The text line for a flow conntrack forgot.
pub fn expired_line(e: &Expired) -> String {
    let mut s = format!(
        "{} {} → {} conntrack of netns {} forgot the established flow",
        text::clock_ms(e.ts),
        text::endpoint(&e.orig.saddr, e.orig.sport),
        text::endpoint(&e.orig.daddr, e.orig.dport),
        e.netns
    );
    let mut more = Vec::new();
    if (e.reply.daddr, e.reply.dport) != (e.orig.saddr, e.orig.sport) {
        more.push(format!(
            "NAT as {}",
            text::endpoint(&e.reply.daddr, e.reply.dport)
        ));
    }
    if let Some(t) = e.established_timeout_s {
        more.push(format!("idle timeout {}", text::duration(f64::from(t))));
    }
    if !more.is_empty() {
        s.push_str(&format!(" ({})", more.join("; ")));
    }
    s
}

struct Output {
    args: TraceArgs,
    lost_shown: u64,
    events: u64,
    /// One write per batch, not per line: a keepalive storm is thousands
    /// of lines a second.
    stdout: BufWriter<Stdout>,
}

impl Output {
    /// Writes one event; false when stdout is gone (e.g. `| head`).
    fn event(&mut self, ev: &Event) -> bool {
        if !wanted(&self.args, ev) {
            return true;
        }
        self.events += 1;
        let text = if self.args.json {
            serde_json::to_string(ev).unwrap_or_default()
        } else {
            line(ev)
        };
        writeln!(self.stdout, "{text}").is_ok()
    }

    /// Writes the flows conntrack forgot; false when stdout is gone.
    fn expired(&mut self, all: &[Expired]) -> bool {
        all.iter().all(|e| {
            self.events += 1;
            let text = if self.args.json {
                serde_json::to_string(e).unwrap_or_default()
            } else {
                expired_line(e)
            };
            writeln!(self.stdout, "{text}").is_ok()
        })
    }

    /// Writes out the batch; false when stdout is gone.
    fn flush(&mut self) -> bool {
        self.stdout.flush().is_ok()
    }

    fn lost(&mut self, lost: &LostCounts) -> bool {
        if lost.total() <= self.lost_shown {
            return true;
        }
        self.lost_shown = lost.total();
        if self.args.json {
            let rec = Lost {
                ts: Utc::now(),
                count: lost.total(),
                by_kind: lost.by_kind(),
            };
            writeln!(
                self.stdout,
                "{}",
                serde_json::to_string(&rec).unwrap_or_default()
            )
            .is_ok()
        } else {
            eprintln!("kat: {} so far", lost.text());
            true
        }
    }
}

/// `--at-risk`: one listing, like `ss`.
fn list_at_risk(args: &TraceArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "kat: not root: only this network namespace, and owners among your own processes"
        );
    }
    let list = at_risk::list(
        &args.selection.ports,
        args.idle_over,
        &args.selection.host_root,
    );
    let mut stdout = BufWriter::new(std::io::stdout());
    for a in &list {
        let text = if args.json {
            serde_json::to_string(a).unwrap_or_default()
        } else {
            at_risk::line(a)
        };
        if writeln!(stdout, "{text}").is_err() {
            return Ok(());
        }
    }
    if stdout.flush().is_ok() && !args.json {
        eprintln!(
            "kat: {} established connections silent for over {}",
            list.len(),
            text::duration(args.idle_over.as_secs_f64())
        );
    }
    Ok(())
}

pub async fn run(args: TraceArgs) -> Result<()> {
    if args.at_risk {
        return list_at_risk(&args);
    }
    kernel::require_root("trace")?;
    privilege::plan(args.selection.user.as_deref())?;
    let mut engine = Engine::start(
        &args.selection,
        Wants {
            // Without --all, orderly closes are neither shown nor counted.
            orderly: if args.all {
                Orderly::Sent
            } else {
                Orderly::Ignored
            },
            conntrack: args.conntrack,
            ..Wants::default()
        },
    )?;
    privilege::settle()?;
    let mut out = Output {
        args,
        lost_shown: 0,
        events: 0,
        stdout: BufWriter::new(std::io::stdout()),
    };
    eprintln!(
        "kat: tracing keepalive probes and connection deaths on Linux {} ({}, reset reasons {}); Ctrl-C to stop",
        kernel::release(),
        engine.lanes_text(),
        if engine.kernel_names_resets() { "from the kernel" } else { "inferred" },
    );
    loop {
        let events = match engine.next().await {
            Step::Events(events) => events,
            Step::Expired(all) => {
                if !out.expired(&all) || !out.flush() {
                    return Ok(());
                }
                continue;
            }
            // Never asked for.
            Step::Snapshot(_) => continue,
            Step::Stop => break,
        };
        for ev in &events {
            if !out.event(ev) {
                return Ok(());
            }
        }
        if !out.lost(&engine.lost()) || !out.flush() {
            return Ok(());
        }
    }
    // Report what is still pending rather than lose it.
    for ev in &engine.finish() {
        if !out.event(ev) {
            return Ok(());
        }
    }
    let lost = engine.lost_now();
    if !out.lost(&lost) || !out.flush() {
        return Ok(());
    }
    eprintln!(
        "kat: {} events shown, {} connections still tracked, {}{}",
        out.events,
        engine.tracked(),
        lost.text(),
        if engine.malformed() > 0 {
            format!(", {} malformed", engine.malformed())
        } else {
            String::new()
        }
    );
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::What;
    use crate::testkit::{self, addr, at, conn, settings};

    fn ev(what: What) -> Event {
        let k = conn(addr("198.18.0.1"), 6699, addr("fd00:6b61:74::2"), 40000);
        Event {
            pid: Some(42),
            comm: Some("server".into()),
            keepalive: Some(settings(55.0, 6.0, 2)),
            ..testkit::event(k, at(0.0), what)
        }
    }

    #[test]
    fn probe_line_names_the_connection_and_settings() {
        let l = line(&ev(What::Probe {
            probe: 2,
            probes_max: 2,
            idle_s: 61.0,
        }));
        assert!(
            l.ends_with(
                "198.18.0.1:6699 → [fd00:6b61:74::2]:40000 probe 2/2, idle 61s, \
                 previous unanswered  [keepalive 55s/6s/2*] pid 42 (server)"
            ),
            "{l}"
        );
    }

    #[test]
    fn a_line_names_the_owners_pod_and_container() {
        let mut e = ev(What::ProbeAnswered { probe: 1 });
        e.workload = Some(std::sync::Arc::new(crate::workload::Workload {
            pod: Some("web-7d9f".into()),
            namespace: Some("shop".into()),
            container: Some("nginx".into()),
            ..Default::default()
        }));
        let l = line(&e);
        assert!(l.ends_with("pid 42 (server) shop/web-7d9f/nginx"), "{l}");
    }

    #[test]
    fn death_line_says_why() {
        let l = line(&ev(What::Death {
            reason: Reason::KeepaliveTimeout,
            errno: Some("ETIMEDOUT".into()),
            unanswered_probes: 3,
            found_by_probe: false,
            lifetime_s: Some(63.25),
            state: "ESTABLISHED".into(),
            kernel_reset_reason: Some("TCP_KEEPALIVE_TIMEOUT".into()),
            silence: None,
            conntrack_forgot: None,
        }));
        assert!(
            l.contains("DEAD keepalive_timeout after 3 unanswered probes, ETIMEDOUT, lived 63s"),
            "{l}"
        );
    }

    #[test]
    fn a_forgotten_flow_line_names_the_namespace_and_the_nat() {
        let tuple = |s: &str, sp, d: &str, dp| crate::conntrack::Tuple {
            saddr: addr(s),
            sport: sp,
            daddr: addr(d),
            dport: dp,
        };
        let mut e = crate::conntrack::Expired {
            ts: at(0.0),
            netns: 4026532411,
            orig: tuple("198.18.20.1", 41000, "198.18.21.2", 6795),
            reply: tuple("198.18.21.2", 6795, "198.18.21.254", 41000),
            established_timeout_s: Some(3),
        };
        let l = expired_line(&e);
        assert!(
            l.ends_with(
                "198.18.20.1:41000 → 198.18.21.2:6795 conntrack of netns 4026532411 \
                 forgot the established flow (NAT as 198.18.21.254:41000; idle timeout 3s)"
            ),
            "{l}"
        );
        e.reply = tuple("198.18.21.2", 6795, "198.18.20.1", 41000);
        e.established_timeout_s = None;
        assert!(expired_line(&e).ends_with("forgot the established flow"));
    }

    #[test]
    fn closed_is_hidden_unless_all() {
        let closed = ev(What::Death {
            reason: Reason::Closed,
            errno: None,
            unanswered_probes: 0,
            found_by_probe: false,
            lifetime_s: None,
            state: "LAST_ACK".into(),
            kernel_reset_reason: None,
            silence: None,
            conntrack_forgot: None,
        });
        let mut args = TraceArgs {
            selection: Selection::default(),
            json: false,
            all: false,
            at_risk: false,
            idle_over: Duration::from_secs(60),
            conntrack: false,
        };
        assert!(!wanted(&args, &closed));
        args.all = true;
        assert!(wanted(&args, &closed));
    }
}
