//! `kat report`: what a journal says happened, for a terminal, an email or
//! a script. Reads files only; needs no privilege beyond reading them.

pub mod paths;
pub mod summary;
pub mod text;

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Result;
use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, NaiveTime, TimeZone as _, Utc};
use serde::Serialize;

use crate::exit::Failure;
use crate::journal::reader::{self, Problem};
use crate::journal::Entry;
use crate::workload::By;
use summary::{timelines, Deaths, Filter, Summary, Timeline};

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// The journal's directory (as given to `kat record`).
    #[arg(long, default_value = "/var/lib/kat")]
    pub dir: PathBuf,
    /// From this time: a duration back from now (2h, 30m, 1d) or a time
    /// (2026-11-21 03:00, 03:00, RFC 3339).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Up to this time, in the same forms as --since.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Only connections with this local or remote port (repeatable).
    #[arg(long = "port", value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Only connections with this local or remote address (repeatable).
    #[arg(long = "addr", value_name = "ADDR")]
    pub addrs: Vec<IpAddr>,
    /// The full timeline of the connections with this end
    /// (198.18.2.2:6699, [fd00::2]:6699).
    #[arg(long, value_name = "ADDR:PORT")]
    pub conn: Option<SocketAddr>,
    /// One JSON object for scripts.
    #[arg(long)]
    pub json: bool,
    /// How many peers, ports and latest deaths to list.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Deaths by the owner's Kubernetes pod, container, or systemd unit too.
    #[arg(long, value_enum, value_name = "WHAT")]
    pub by: Option<By>,
}

/// A `--since`/`--until` value: a duration back from `now`, or a time
/// (the local zone unless it says otherwise).
pub fn parse_when(s: &str, now: DateTime<Local>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        let d = chrono::Duration::from_std(d).map_err(|_| format!("{s:?} is too long ago"))?;
        return Ok((now - d).with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let local = |naive: NaiveDateTime| {
        Local
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| format!("{s:?} does not exist in the local time zone"))
    };
    for f in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, f) {
            return local(naive);
        }
    }
    if let Ok(day) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return local(day.and_time(NaiveTime::MIN));
    }
    for f in ["%H:%M:%S", "%H:%M"] {
        if let Ok(time) = NaiveTime::parse_from_str(s, f) {
            return local(now.date_naive().and_time(time));
        }
    }
    Err(format!(
        "{s:?} is neither a duration (2h, 30m, 1d) nor a time (2026-11-21 03:00, 03:00, 2026-11-21T03:00:00Z)"
    ))
}

fn filter(args: &ReportArgs) -> Result<Filter, Failure> {
    let now = Local::now();
    let when = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| parse_when(s, now))
            .transpose()
            .map_err(|e| Failure::Usage(format!("--{flag}: {e}")))
    };
    let f = Filter {
        since: when("since", &args.since)?,
        until: when("until", &args.until)?,
        ports: args.ports.clone(),
        addrs: args.addrs.clone(),
        conn: args.conn,
    };
    if let (Some(a), Some(b)) = (f.since, f.until) {
        if a > b {
            return Err(Failure::Usage("--since is after --until".into()));
        }
    }
    Ok(f)
}

#[derive(Serialize)]
struct JsonReport<'a> {
    dir: &'a std::path::Path,
    files: usize,
    #[serde(flatten)]
    summary: &'a Summary,
    problems: &'a [Problem],
}

#[derive(Serialize)]
struct JsonTimelines<'a> {
    connections: &'a [Timeline<'a>],
    problems: &'a [Problem],
}

/// Bad lines are named and skipped; the report goes on without them.
fn tell(problems: &[Problem]) {
    for p in problems {
        eprintln!("kat: {p} (skipped)");
    }
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let filter = filter(args)?;
    let out = if args.conn.is_some() {
        // Only the matching connections' events are kept (put in time
        // order by `timelines`).
        let mut events = Vec::new();
        let read = reader::each_entry(&args.dir, |e| match e {
            Entry::Event(ev) if filter.wants(&ev) => events.push(ev),
            _ => {}
        })?;
        tell(&read.problems);
        let conns = timelines(&events);
        if args.json {
            serde_json::to_string_pretty(&JsonTimelines {
                connections: &conns,
                problems: &read.problems,
            })?
        } else {
            text::timelines(&conns)
        }
    } else {
        // The text lists only the latest deaths; --json lists every one.
        let keep = if args.json {
            Deaths::All
        } else {
            Deaths::Latest(args.top)
        };
        let mut builder = Summary::builder(filter, args.top, keep).grouped_by(args.by);
        let read = reader::each_entry(&args.dir, |e| builder.add(e))?;
        tell(&read.problems);
        let summary = builder.finish();
        if summary.out_of_order > 0 {
            eprintln!(
                "kat: {} events were written more than {} s after later ones; they are counted where they came",
                summary.out_of_order,
                summary::REORDER.num_seconds()
            );
        }
        if args.json {
            serde_json::to_string_pretty(&JsonReport {
                dir: &args.dir,
                files: read.files.len(),
                summary: &summary,
                problems: &read.problems,
            })?
        } else {
            text::summary(&summary, &args.dir, read.files.len(), args.top)
        }
    };
    // A closed pipe (`| head`) is not an error.
    let _ = writeln!(std::io::stdout(), "{out}");
    Ok(())
}

#[cfg(test)]
mod tests;
