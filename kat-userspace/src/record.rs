//! `kat record`: the journal of every event, unattended (a systemd
//! service): messages on stderr, a clean stop on SIGTERM or SIGINT.

mod sinks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytesize::ByteSize;
use chrono::Utc;

use crate::engine::{Engine, Selection, Step, Wants};
use crate::event::{Event, Lost};
use crate::exit::Failure;
use crate::journal::writer::Limits;
use crate::journal::{Header, FORMAT};
use crate::loader::Orderly;
use crate::privilege;
use sinks::Sinks;

/// The journal's directory when neither --dir, --metrics nor --stdout is
/// given.
const DEFAULT_DIR: &str = "/var/lib/kat";
use crate::conns;
use crate::kernel;
use crate::metrics::{server, Build, Metrics};
use crate::source::LostCounts;

#[derive(Debug, Clone, clap::Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// The journal's directory (created 0700 when missing); by default
    /// /var/lib/kat, and none when --metrics or --stdout is given.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also write the journal's lines to stdout, for a log shipper.
    #[arg(long)]
    pub stdout: bool,
    /// The journal's total size; the oldest files go first (e.g. 256MiB, 1G).
    #[arg(long, default_value = "256MiB", value_parser = size)]
    pub max_size: u64,
    /// Start a new file at this size (default: an eighth of --max-size).
    #[arg(long, value_parser = size)]
    pub file_size: Option<u64>,
    /// Record each orderly (FIN) close as a `death` line; by default they
    /// are counted in the kernel and written as `closes` aggregates.
    #[arg(long)]
    pub all: bool,
    /// How often the `closes` aggregates are written (e.g. 60s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = every)]
    pub closes_every: Duration,
    /// Also serve Prometheus metrics on this address (`:9464` for every
    /// IPv4 address, `127.0.0.1:9464`): `/metrics` and `/healthz`.
    #[arg(long, value_name = "ADDR", value_parser = server::parse_addr)]
    pub metrics: Option<SocketAddr>,
    /// At most this many label sets per metric family with owner labels
    /// (namespace, pod, container, unit); later owners are counted under
    /// `_overflow`, so a node with thousands of pods cannot flood Prometheus.
    #[arg(long, value_name = "N", default_value_t = 1000, requires = "metrics",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub metrics_label_sets: u32,
    /// Also the established flows this host's conntrack forgets (on a NAT
    /// gateway or stateful firewall: every namespace kat sees at start).
    #[arg(long)]
    pub conntrack: bool,
}

fn every(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d >= Duration::from_secs(1) => Ok(d),
        _ => Err(format!(
            "{s:?} is not a duration of 1s or more (examples: 10s, 1m)"
        )),
    }
}

fn size(s: &str) -> Result<u64, String> {
    s.parse::<ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("{s:?} is not a size (examples: 64KiB, 256MiB, 1G)"))
}

/// Records are written and synced at least this often: a crash loses at
/// most this much.
pub const BATCH_INTERVAL: Duration = Duration::from_secs(1);
/// A busier batch is written sooner.
const BATCH_BYTES: usize = 1 << 20;

pub async fn run(args: RecordArgs) -> Result<()> {
    // Bad sizes are usage errors, before anything is loaded.
    let limits =
        Limits::new(args.max_size, args.file_size).map_err(|e| Failure::Usage(e.to_string()))?;
    kernel::require_root("record")?;
    privilege::plan(args.selection.user.as_deref())?;
    // Bound before the programs load: an address in use is told at once.
    let listener = match args.metrics {
        Some(addr) => Some(server::bind(addr).await?),
        None => None,
    };
    let mut engine = Engine::start(
        &args.selection,
        Wants {
            orderly: if args.all {
                Orderly::Sent
            } else {
                Orderly::Counted
            },
            conntrack: args.conntrack,
            ..Wants::default()
        },
    )?;
    let now = Utc::now();
    let header = Header {
        format: FORMAT,
        kat: env!("CARGO_PKG_VERSION").into(),
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kernel: kernel::release(),
        lanes: engine.lanes_text(),
        ports: args.selection.ports.clone(),
        run_started: now,
        file_started: now,
    };
    let dir = match (&args.dir, args.metrics.is_some() || args.stdout) {
        (Some(dir), _) => Some(dir.clone()),
        (None, true) => None,
        (None, false) => Some(PathBuf::from(DEFAULT_DIR)),
    };
    let mut journal = Sinks::open(dir.as_deref(), limits, args.stdout, header)?;
    if let Some(dir) = &dir {
        privilege::hand_over(dir)?;
    }
    privilege::settle()?;
    let metrics = listener.map(|listener| {
        let (metrics, registry) = Metrics::new(
            &Build {
                version: env!("CARGO_PKG_VERSION"),
                kernel: &kernel::release(),
                lanes: &engine.lanes_text(),
            },
            args.metrics_label_sets as usize,
        );
        if let Ok(addr) = listener.local_addr() {
            eprintln!("kat: metrics on http://{addr}/metrics");
        }
        tokio::spawn(server::serve(
            listener,
            Arc::new(registry),
            server::CONNECTION_TIMEOUT,
        ));
        metrics
    });
    match (&metrics, engine.take_conns()) {
        (Some(m), Some((iter, hz))) => {
            let gauges = m.conn_gauges();
            conns::start(iter, hz, move |census| gauges.publish(census));
        }
        (Some(_), None) => {
            eprintln!("kat: this kernel has no TCP iterator (5.9 and later): kat_connections and kat_keepalive_idle_seconds stay empty");
        }
        _ => {}
    }
    eprintln!(
        "kat: recording to {} on Linux {} ({}); SIGTERM or Ctrl-C to stop",
        journal.describe(limits),
        kernel::release(),
        engine.lanes_text(),
    );
    let mut batches = tokio::time::interval(BATCH_INTERVAL);
    let mut closes = tokio::time::interval(args.closes_every);
    let mut recorded: u64 = 0;
    let mut lost_written = 0;
    loop {
        let events = tokio::select! {
            step = engine.next() => match step {
                Step::Events(events) => events,
                Step::Expired(all) => {
                    for e in &all {
                        journal.push(e)?;
                    }
                    recorded += all.len() as u64;
                    if let Some(m) = &metrics {
                        m.conntrack_expired(all.len() as u64);
                    }
                    continue;
                }
                // Never asked for.
                Step::Snapshot(_) => continue,
                Step::Stop => break,
            },
            _ = batches.tick() => {
                // A batch the journal could not write is told in the next.
                push_lost(&mut journal, &engine.lost(), metrics.as_ref(), &mut lost_written)?;
                journal.flush()?;
                continue;
            }
            _ = closes.tick() => {
                push_closes(&mut journal, &mut engine, metrics.as_ref())?;
                continue;
            }
        };
        recorded += push(&mut journal, &events)?;
        if let Some(m) = &metrics {
            m.observe(&events);
        }
        push_lost(
            &mut journal,
            &engine.lost(),
            metrics.as_ref(),
            &mut lost_written,
        )?;
        if journal.pending() >= BATCH_BYTES {
            journal.flush()?;
        }
    }
    // Deaths still pending, and the closes counted since the last
    // aggregate, are recorded rather than lost.
    let events = engine.finish();
    recorded += push(&mut journal, &events)?;
    // Twice: the half quiet since the last aggregate, then the half that
    // counted until now.
    push_closes(&mut journal, &mut engine, metrics.as_ref())?;
    push_closes(&mut journal, &mut engine, metrics.as_ref())?;
    let lost = engine.lost_now();
    push_lost(&mut journal, &lost, metrics.as_ref(), &mut lost_written)?;
    journal.flush()?;
    eprintln!(
        "kat: recorded {recorded} events; {}{}",
        journal.files_text(),
        lost.text()
    );
    Ok(())
}

/// A `lost` line when the count grew since the last one: records the
/// kernel could not hand over, and (kind `journal`) those the journal
/// could not write.
fn push_lost(
    journal: &mut Sinks,
    lost: &LostCounts,
    metrics: Option<&Metrics>,
    written: &mut u64,
) -> Result<()> {
    let mut by_kind = lost.by_kind();
    let unwritten = journal.unwritten();
    if unwritten > 0 {
        by_kind.insert("journal".into(), unwritten);
    }
    if let Some(m) = metrics {
        m.lost(&by_kind);
    }
    let count = lost.total() + unwritten;
    if count > *written {
        *written = count;
        journal.push(&Lost {
            ts: Utc::now(),
            count,
            by_kind,
        })?;
    }
    Ok(())
}

/// The orderly closes the kernel counted in the last interval.
fn push_closes(journal: &mut Sinks, engine: &mut Engine, metrics: Option<&Metrics>) -> Result<()> {
    let closes = engine.take_closes(Utc::now());
    for c in &closes {
        journal.push(c)?;
    }
    if let Some(m) = metrics {
        m.closes(&closes);
    }
    Ok(())
}

/// Adds the events to the batch (`--port` was applied in the kernel);
/// returns how many.
fn push(journal: &mut Sinks, events: &[Event]) -> Result<u64> {
    for ev in events {
        journal.push(ev)?;
    }
    Ok(events.len() as u64)
}
