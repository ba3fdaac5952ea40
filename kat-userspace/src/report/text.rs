//! The report as plain text: aligned columns that read well in a terminal
//! and in an email (no colours, no box drawing). Times in the local zone.

use std::fmt::Write as _;
use std::path::Path;

use super::summary::{Summary, Timeline, Worst};
use crate::text::{self, date_time as time, duration};

fn opt_s(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), duration)
}

fn reasons_text(w: &Worst) -> String {
    let mut v: Vec<(&crate::event::Reason, &u64)> = w.reasons.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    v.iter()
        .map(|(r, n)| format!("{} {n}", r.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn worst_table(out: &mut String, title: &str, column: &str, rows: &[Worst]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n{title}");
    let _ = writeln!(out, "  {column:<40} {:>6}  REASONS", "DEATHS");
    for w in rows {
        let _ = writeln!(out, "  {:<40} {:>6}  {}", w.name, w.deaths, reasons_text(w));
    }
}

/// The whole report: period, counts, deaths by reason, worst peers and
/// ports, and the latest deaths.
/// Flows this host's conntrack forgot (`kat record --conntrack`), by server:
/// shown even where no connection of this host had an event.
fn forgotten_flows(out: &mut String, s: &Summary) {
    if !s.conntrack_expired.is_empty() {
        let _ = writeln!(out, "\nEstablished flows this host's conntrack forgot");
        for f in &s.conntrack_expired {
            let _ = writeln!(
                out,
                "  {} ({} flow{}, netns {}, last at {})",
                text::endpoint(&f.daddr, f.dport),
                f.flows,
                if f.flows == 1 { "" } else { "s" },
                f.netns,
                time(f.last)
            );
            if let Some(t) = f.established_timeout_s {
                let _ = writeln!(
                    out,
                    "    it forgets an established flow after {} of silence \
                     (net.netfilter.nf_conntrack_tcp_timeout_established of netns {}): \
                     keep keepalive idle below it, or raise it",
                    duration(f64::from(t)),
                    f.netns
                );
            }
        }
    }
}

pub fn summary(s: &Summary, dir: &Path, files: usize, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kat report of {} ({files} file{})",
        dir.display(),
        if files == 1 { "" } else { "s" }
    );
    for r in &s.runs {
        let _ = writeln!(
            out,
            "Recorded  on {}, Linux {}, {}, from {}",
            r.host,
            r.kernel,
            r.lanes,
            time(r.started)
        );
    }
    let (Some(from), Some(to)) = (s.from, s.to) else {
        let _ = writeln!(out, "\nNo events in this period.");
        forgotten_flows(&mut out, s);
        return out;
    };
    let _ = writeln!(
        out,
        "Period    {} to {} ({})",
        time(from),
        time(to),
        duration((to - from).num_milliseconds() as f64 / 1000.0)
    );
    let deaths = s.abnormal_deaths();
    let _ = writeln!(
        out,
        "Events    {}: {} probes ({} answered) on {} of {} connections, {deaths} deaths, {} orderly closes",
        s.events, s.probes, s.probes_answered, s.probing_connections, s.connections, s.closed
    );
    if s.lost > 0 {
        let _ = writeln!(
            out,
            "Lost      {} records (a ring buffer was full, or the journal could not be written): the counts may be short",
            s.lost
        );
    }

    let _ = writeln!(out, "\nDeaths by reason");
    if s.reasons.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let _ = writeln!(
            out,
            "  {:<20} {:>6}  {:<12} {:>8}  {:>11}  {:>12}  {:>10}",
            "REASON", "DEATHS", "ERRNO", "PROBES", "DETECTED IN", "LIVED MEDIAN", "LIVED MAX"
        );
        for r in &s.reasons {
            let _ = writeln!(
                out,
                "  {:<20} {:>6}  {:<12} {:>8}  {:>11}  {:>12}  {:>10}",
                r.reason.name(),
                r.deaths,
                r.errno.as_deref().unwrap_or("-"),
                r.unanswered_probes_median
                    .map_or_else(|| "-".into(), |p| format!("{p}")),
                opt_s(r.detected_in_s_median),
                opt_s(r.lived_s_median),
                opt_s(r.lived_s_max),
            );
        }
        let _ = writeln!(
            out,
            "  PROBES: unanswered keepalive probes at death (median); DETECTED IN: from the\n  first unanswered probe to the death (median)."
        );
    }
    worst_table(
        &mut out,
        "Worst peers",
        "PEER (REMOTE ADDRESS)",
        &s.worst_peers,
    );
    worst_table(
        &mut out,
        "Worst ports",
        "PORT (THE LOWER OF THE TWO)",
        &s.worst_ports,
    );
    if let Some(rows) = &s.by_owner {
        worst_table(&mut out, "Deaths by owner", "OWNER", rows);
    }

    if !s.paths.is_empty() {
        let _ = writeln!(out, "\nPaths that forget idle flows");
        for p in &s.paths {
            let _ = writeln!(
                out,
                "  {} ({} death{}, netns {}): {}",
                text::endpoint(&p.daddr, p.dport),
                p.deaths,
                if p.deaths == 1 { "" } else { "s" },
                p.netns,
                p.advice
            );
        }
    }

    forgotten_flows(&mut out, s);

    let total = s.abnormal_deaths();
    if total > 0 {
        let shown = &s.deaths[s.deaths.len().saturating_sub(top)..];
        let _ = writeln!(out, "\nLatest deaths ({} of {total})", shown.len());
        for d in shown {
            let mut details: Vec<String> = Vec::new();
            details.extend(d.errno.clone());
            if d.unanswered_probes > 0 {
                let n = d.unanswered_probes;
                details.push(format!(
                    "{n} unanswered probe{}",
                    if n == 1 { "" } else { "s" }
                ));
            }
            if let Some(l) = d.lived_s {
                details.push(format!("lived {}", duration(l)));
            }
            if let Some(pid) = d.pid {
                details.push(format!(
                    "pid {}",
                    text::owner(pid, d.comm.as_deref(), d.workload.as_deref())
                ));
            }
            if let Some(silence) = &d.silence {
                details.push(text::silence(silence));
            }
            if let Some(f) = &d.conntrack_forgot {
                details.push(text::forgotten(f));
            }
            let line = format!(
                "  {}  {:<48} {:<18} {}",
                time(d.ts),
                d.conn.to_string(),
                d.reason.name(),
                details.join(", ")
            );
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(
            out,
            "\nA connection's whole story: kat report --conn ADDR:PORT"
        );
    }
    out
}

/// Each connection's timeline, like the dashboard's detail view.
pub fn timelines(conns: &[Timeline]) -> String {
    if conns.is_empty() {
        return "No matching connection in the journal.".into();
    }
    let mut out = String::new();
    for (i, t) in conns.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let mut head = format!("{}  netns {}", t.conn, t.conn.netns);
        if let Some(pid) = t.pid {
            let _ = write!(
                head,
                "  pid {}",
                text::owner(pid, t.comm.as_deref(), t.workload.as_deref())
            );
        }
        if let Some(k) = &t.keepalive {
            let _ = write!(head, "  {}", text::settings(k));
        }
        let _ = writeln!(out, "{head}");
        for ev in &t.events {
            let _ = writeln!(
                out,
                "  {}  {}",
                text::date_time_ms(ev.ts),
                text::what(&ev.what)
            );
        }
        if t.death().is_none() {
            let _ = writeln!(out, "  (no death recorded: alive when the journal ends)");
        }
    }
    out
}
