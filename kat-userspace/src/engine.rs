//! What every live view runs: the loaded programs, the record source, the
//! tracker, the sock_diag worker for answers, the owner index for the
//! events shown, and the stop signals. The engine owns the live loop: a
//! view awaits `next()` and gets events (or a snapshot it asked for, or
//! the stop). It never blocks on slow I/O: the workers do that, and their
//! results come back over channels.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

use aya::programs::Iter;
use chrono::{DateTime, Utc};
use tokio::time::Interval;

use crate::closes::ClosesSource;
use crate::conntrack::{self, Expired};
use crate::diag::worker::{Ask, Snapshot, Worker};
use crate::diag::Answer;
use crate::event::{Closes, Event};
use crate::kernel;
use crate::loader::{self, Lane, Loaded, Orderly};
use crate::owner::{Index, Owner, Owners};
use crate::source::{LostCounts, Source};
use crate::tracker::{Msg, Setup, Tracker};
use crate::workload::Attributor;

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
    /// Where the node's /run and /var/log are, for the container runtimes'
    /// and the kubelet's names of containers and pods (/host when kat runs
    /// in a pod with the node's directories mounted there).
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub host_root: PathBuf,
    /// Once attached, run as this user (as `tcpdump -Z`), keeping only the
    /// capabilities kat still uses (docs/deploy.md).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
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
            host_root: PathBuf::from("/"),
            user: None,
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

/// What the live loop hands a view.
pub enum Step {
    /// Events in time order, maybe none: the ring is drained at least
    /// every 100 ms, so a view also hears of new losses that often.
    Events(Vec<Event>),
    /// The keepalive sockets the view asked for (`ask_snapshot`).
    Snapshot(Snapshot),
    /// Flows this host's conntrack forgot (`Wants::conntrack`).
    Expired(Vec<Expired>),
    /// SIGINT or SIGTERM: the view reports what `finish` returns and ends.
    Stop,
}

pub struct Engine {
    loaded: Loaded,
    source: Source,
    closes: ClosesSource,
    tracker: Tracker,
    diag: Worker,
    owners: Owners,
    conntrack: Option<conntrack::Watch>,
    answer_poll: Interval,
    stop: StopSignals,
}

/// What a view asks of the engine besides its selection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wants {
    /// What becomes of an orderly close: counted unless the view says.
    pub orderly: Orderly,
    /// A snapshot of the keepalive sockets at once (`ask_snapshot`),
    /// taken while the programs load: on a host with 100 000 connections
    /// both take a good part of a second, and `kat top`'s first frame
    /// waits for both.
    pub snapshot: bool,
    /// The flows this host's conntrack forgets (`--conntrack`).
    pub conntrack: bool,
}

impl Engine {
    /// Loads and attaches. SIGINT and SIGTERM are caught from here on.
    pub fn start(selection: &Selection, wants: Wants) -> Result<Self> {
        let diag = Worker::start(selection.ports.clone());
        if wants.snapshot {
            diag.ask_snapshot(Ask::default());
        }
        let mut loaded = loader::load(&loader::Options {
            ports: &selection.ports,
            lane: selection.lane,
            ring_bytes: selection.ring_size,
            orderly: wants.orderly,
        })?;
        let source = Source::new(&mut loaded.ebpf, loaded.contexts.clone())?;
        let closes = ClosesSource::new(&mut loaded.ebpf, chrono::Utc::now())?;
        let owners = Owners::new(Index::start(
            std::mem::take(&mut loaded.owners),
            Attributor::new(Path::new("/proc"), &selection.host_root),
        ));
        // Subscribed while kat still has the capabilities it takes.
        let conntrack = if wants.conntrack {
            let watch = conntrack::Watch::start(selection.ports.clone())
                .context("--conntrack: cannot watch this host's conntrack")?;
            eprintln!(
                "kat: watching the conntrack of {} network namespace(s) for established flows it forgets",
                watch.namespaces
            );
            Some(watch)
        } else {
            None
        };
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
            diag,
            owners,
            conntrack,
            answer_poll: tokio::time::interval(ANSWER_POLL),
            stop: StopSignals::catch()?,
        })
    }

    /// The next step of the live loop. Cancel-safe: a view may `select!`
    /// it against its own timers and keys; nothing is lost when another
    /// branch wins, since every branch here finishes its work without
    /// awaiting again.
    pub async fn next(&mut self) -> Step {
        loop {
            let step = tokio::select! {
                batch = self.source.next_batch() => {
                    // Two clock reads: cheap enough for every batch, so a
                    // wall-clock step dates the events after it at once.
                    let mut msgs = vec![Msg::WallClock(kernel::monotonic_to_realtime_ns())];
                    msgs.extend(batch.into_iter().map(Msg::Record));
                    msgs.push(Msg::Tick(kernel::monotonic_now_ns()));
                    Step::Events(self.feed(msgs))
                }
                // Asking is all a poll does; the answers come later.
                _ = self.answer_poll.tick() => {
                    self.ask_answers();
                    self.loaded.flush_kernel_log();
                    continue;
                }
                Some(found) = self.diag.answers.recv() => Step::Events(self.answers(found)),
                () = self.owners.ready() => Step::Events(self.owners.release(false)),
                Some(snapshot) = self.diag.snapshots.recv() => Step::Snapshot(snapshot),
                Some(first) = next_expired(&mut self.conntrack) => {
                    let all = self.more_expired(first);
                    // Remembered for the deaths that follow; no event of their own.
                    for e in &all {
                        self.tracker.update(Msg::Expired(e.clone()));
                    }
                    Step::Expired(all)
                }
                () = self.stop.recv() => Step::Stop,
            };
            return step;
        }
    }

    /// `first` and every expiry already waiting behind it.
    fn more_expired(&mut self, first: Expired) -> Vec<Expired> {
        let mut all = vec![first];
        if let Some(watch) = &mut self.conntrack {
            while let Ok(e) = watch.expired.try_recv() {
                all.push(e);
            }
        }
        all
    }

    /// Sends the sockets with a probe out to the sock_diag worker; its
    /// answers come back through `next`.
    fn ask_answers(&mut self) {
        let probing = self.tracker.due_for_answer(kernel::monotonic_now_ns());
        if !probing.is_empty() {
            self.diag.ask_answers(probing);
        }
    }

    /// Feeds the worker's answers to the tracker.
    fn answers(&mut self, answers: Vec<Answer>) -> Vec<Event> {
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

    /// Asks the sock_diag worker for every socket with a pending keepalive
    /// timer (and what else `ask` says); it comes through `next`.
    pub fn ask_snapshot(&self, ask: Ask) {
        self.diag.ask_snapshot(ask);
    }

    /// The orderly closes the kernel counted in the last interval.
    pub fn take_closes(&mut self, now: DateTime<Utc>) -> Vec<Closes> {
        self.closes.take(now)
    }

    /// The owner of a socket inode, if the index knows it now.
    pub fn owner(&self, inode: u64) -> Option<Owner> {
        self.owners.index.owner(inode)
    }

    /// Which lane each hook attached in.
    /// The connections census's iterator and the kernel's HZ, once.
    pub fn take_conns(&mut self) -> Option<(Iter, f64)> {
        let hz = f64::from(self.loaded.hz);
        self.loaded.conns.take().map(|iter| (iter, hz))
    }

    pub fn lanes_text(&self) -> String {
        self.loaded.lanes_text()
    }

    /// Whether the kernel names its reset reasons (else kat infers them).
    pub fn kernel_names_resets(&self) -> bool {
        self.loaded.reset_reasons.is_some()
    }

    /// What the kernel lost so far, as read in the last second.
    pub fn lost(&self) -> LostCounts {
        self.with_unseen(self.source.lost(false))
    }

    /// The same, read now: for the last word on a run.
    pub fn lost_now(&self) -> LostCounts {
        self.with_unseen(self.source.lost(true))
    }

    fn with_unseen(&self, mut lost: LostCounts) -> LostCounts {
        lost.unseen_timer_runs = self.tracker.unseen_timer_runs();
        lost.conntrack_expired = self.conntrack.as_ref().map_or(0, conntrack::Watch::lost);
        lost
    }

    /// Ring-buffer items that were not whole records.
    pub fn malformed(&self) -> u64 {
        self.source.malformed
    }

    /// Connections the tracker still follows.
    pub fn tracked(&self) -> usize {
        self.tracker.tracked()
    }
}

/// The next expiry, or never without `--conntrack`. Cancel-safe, as
/// `Engine::next` needs: a channel's `recv` is.
async fn next_expired(watch: &mut Option<conntrack::Watch>) -> Option<Expired> {
    match watch {
        Some(w) => w.expired.recv().await,
        None => std::future::pending().await,
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

/// SIGINT, SIGTERM and SIGHUP (the terminal closed), caught from before
/// kat says it has started: a stop sent right after that line must end kat
/// cleanly, not kill it, and `kat demo` must remove its lab.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    pub fn catch() -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("cannot catch SIGHUP")?,
        })
    }

    /// Resolves at the first SIGINT, SIGTERM or SIGHUP.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            _ = self.hangup.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_selects_either_end() {
        let mut selection = Selection::default();
        assert!(selection.wants(6699, 40000), "no --port: everything");
        selection.ports = vec![22];
        assert!(!selection.wants(6699, 40000));
        selection.ports = vec![40000];
        assert!(selection.wants(6699, 40000));
    }
}
