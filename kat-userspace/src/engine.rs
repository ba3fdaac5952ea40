//! What every live view runs: the loaded programs, the record source, the
//! tracker, the sock_diag worker for answers, and the owner index for the
//! events shown. The loop using it must never block on slow I/O: the
//! workers do that, and their results come back over channels.

use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::diag::worker::Worker;
use crate::diag::Answer;
use crate::event::Event;
use crate::kernel;
use crate::loader::{self, Lane, Loaded};
use crate::owner::{Index, Owners};
use crate::source::Source;
use crate::tracker::{Msg, Setup, Tracker};

/// What every live command traces: `--port` and `--lane`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Selection {
    /// Only connections with this local or remote port (repeatable).
    #[arg(long = "port", value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Use only this lane of hooks; fail if it cannot attach
    /// (default: the best lane that works, per hook).
    #[arg(long, value_enum)]
    pub lane: Option<Lane>,
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
    pub tracker: Tracker,
    pub diag: Worker,
    pub owners: Owners,
}

impl Engine {
    pub fn start(selection: &Selection) -> Result<Self> {
        let mut loaded = loader::load(&selection.ports, selection.lane)?;
        let source = Source::new(&mut loaded.ebpf, loaded.contexts.clone())?;
        let tracker = Tracker::new(Setup {
            hz: loaded.hz,
            reset_reasons: loaded.reset_reasons.clone(),
            realtime_offset_ns: kernel::monotonic_to_realtime_ns(),
        });
        Ok(Self {
            loaded,
            source,
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
    pub fn ask_answers(&self) {
        let probing = self.tracker.probing();
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
