//! What every live view runs: the loaded programs, the record source, the
//! tracker, the sock_diag worker for answers, and the owner index for the
//! events shown. The loop using it must never block on slow I/O: the
//! workers do that, and their results come back over channels.

use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::closes::ClosesSource;
use crate::diag::worker::Worker;
use crate::diag::Answer;
use crate::event::Event;
use crate::kernel;
use crate::loader::{self, Lane, Loaded};
use crate::owner::{Index, Owners};
use crate::source::Source;
use crate::tracker::{Msg, Setup, Tracker};

/// What every live command traces: `--port` and `--lane`.
#[derive(Debug, Clone, clap::Args)]
pub struct Selection {
    /// Only connections with this local or remote port (repeatable).
    #[arg(long = "port", value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Use only this lane of hooks; fail if it cannot attach
    /// (default: the best lane that works, per hook).
    #[arg(long, value_enum)]
    pub lane: Option<Lane>,
    /// Size of each of the two ring buffers (precious records; orderly
    /// closes), rounded up to a power of two: more absorbs longer bursts.
    #[arg(long, value_name = "SIZE", default_value = "4MiB", value_parser = ring_size)]
    pub ring_size: u32,
}

fn ring_size(s: &str) -> Result<u32, String> {
    let bytes = s
        .parse::<bytesize::ByteSize>()
        .map_err(|_| format!("{s:?} is not a size (examples: 1MiB, 16MiB)"))?
        .as_u64();
    const MIN: u64 = 64 << 10;
    const MAX: u64 = 1 << 30;
    if !(MIN..=MAX).contains(&bytes) {
        return Err(format!("{s:?}: a ring is from 64KiB to 1GiB"));
    }
    u32::try_from(bytes.next_power_of_two()).map_err(|_| format!("{s:?} is too large"))
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            ports: Vec::new(),
            lane: None,
            ring_size: loader::RING_BYTES,
        }
    }
}

impl Selection {
    /// A connection with these ports passes `--port`.
    pub fn wants(&self, sport: u16, dport: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&sport) || self.ports.contains(&dport)
    }
}

/// How often sockets with a probe out are asked whether it was answered.
pub const ANSWER_POLL: Duration = Duration::from_millis(250);

pub struct Engine {
    pub loaded: Loaded,
    pub source: Source,
    pub closes: ClosesSource,
    pub tracker: Tracker,
    pub diag: Worker,
    pub owners: Owners,
}

impl Engine {
    /// Loads and attaches; `closed_one_by_one` sends every orderly close
    /// (`kat trace --all`) rather than only counting them.
    pub fn start(selection: &Selection, closed_one_by_one: bool) -> Result<Self> {
        let mut loaded = loader::load(&loader::Options {
            ports: &selection.ports,
            lane: selection.lane,
            ring_bytes: selection.ring_size,
            emit_closed: closed_one_by_one,
        })?;
        let source = Source::new(&mut loaded.ebpf, loaded.contexts.clone())?;
        let closes = ClosesSource::new(&mut loaded.ebpf, chrono::Utc::now())?;
        release_startup_memory();
        let tracker = Tracker::new(Setup {
            hz: loaded.hz,
            reset_reasons: loaded.reset_reasons.clone(),
            realtime_offset_ns: kernel::monotonic_to_realtime_ns(),
        });
        Ok(Self {
            loaded,
            source,
            closes,
            tracker,
            diag: Worker::start(selection.ports.clone()),
            owners: Owners::new(Index::start()),
        })
    }

    /// Feeds kernel records (and a clock tick) to the tracker.
    pub fn records(&mut self, records: Vec<kat_common::Record>) -> Vec<Event> {
        let mut msgs: Vec<Msg> = records.into_iter().map(Msg::Record).collect();
        msgs.push(Msg::Tick(kernel::monotonic_now_ns()));
        self.feed(msgs)
    }

    /// Sends the sockets with a probe out to the sock_diag worker; its
    /// answers come back on `diag.answers`.
    pub fn ask_answers(&mut self) {
        let probing = self.tracker.due_for_answer(kernel::monotonic_now_ns());
        if !probing.is_empty() {
            self.diag.ask_answers(probing);
        }
    }

    /// Feeds the worker's answers to the tracker.
    pub fn answers(&mut self, answers: Vec<Answer>) -> Vec<Event> {
        self.feed(
            answers
                .into_iter()
                .map(|a| Msg::Diag {
                    sk: a.sk,
                    probes_out: a.probes_out,
                    ts_ns: a.ts_ns,
                })
                .collect(),
        )
    }

    /// Events held for their owner that may go now (after `owners.ready()`).
    pub fn release(&mut self) -> Vec<Event> {
        self.owners.release(false)
    }

    /// Drains the ring and reports every pending death (on exit), and every
    /// event still waiting for its owner.
    pub fn finish(&mut self) -> Vec<Event> {
        let mut msgs: Vec<Msg> = self.source.drain().into_iter().map(Msg::Record).collect();
        msgs.push(Msg::Tick(u64::MAX));
        let mut out = self.feed(msgs);
        out.extend(self.owners.release(true));
        out
    }

    /// The tracker's events, with owners from the index. A death keeps the
    /// inode its socket had (the fd may be closed by now): the index still
    /// has it until the next walk.
    fn feed(&mut self, msgs: Vec<Msg>) -> Vec<Event> {
        let events = msgs
            .into_iter()
            .flat_map(|msg| self.tracker.update(msg))
            .collect();
        self.owners.attach(events)
    }
}

/// Loading parses the kernel's BTF (twice: for offsets, and aya's for
/// attaching) and all of kallsyms: tens of MB, freed once attached, which
/// the allocator would otherwise keep as resident memory for as long as
/// kat runs.
fn release_startup_memory() {
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// SIGINT and SIGTERM, caught from before kat says it has started: a stop
/// sent right after that line must end kat cleanly, not kill it.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    pub fn catch() -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
        })
    }

    /// Resolves at the first SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
