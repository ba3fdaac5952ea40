//! The sock_diag worker: a thread that does the netlink round trips (the
//! answer poll, `kat top`'s snapshots) so the loop draining the ring never
//! waits on them. Requests go in over a channel; answers and snapshots come
//! back over tokio channels the loop can `select!` on.

use std::sync::mpsc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use std::time::{Duration, Instant};

use super::{visible_netns, Answer, Diag, KeepaliveSocket};
use crate::tracker::Probing;

enum Request {
    Answers(Vec<Probing>),
    /// Namespaces to list besides the visible ones.
    Snapshot(Vec<u32>),
}

/// Every socket with a pending keepalive timer, and how long listing them
/// took (the view paces its requests by it).
#[derive(Debug)]
pub struct Snapshot {
    pub sockets: Vec<KeepaliveSocket>,
    pub took: Duration,
}

pub struct Worker {
    requests: mpsc::Sender<Request>,
    pub answers: UnboundedReceiver<Vec<Answer>>,
    pub snapshots: UnboundedReceiver<Snapshot>,
}

impl Worker {
    /// Starts the thread; snapshots keep only connections with one of
    /// `ports` (all when empty). The filter runs here, on each reply's
    /// fixed header, not in the kernel: netlink-packet-sock-diag 0.5
    /// cannot attach INET_DIAG_REQ_BYTECODE.
    pub fn start(ports: Vec<u16>) -> Self {
        let (requests, inbox) = mpsc::channel();
        let (answers_tx, answers) = unbounded_channel();
        let (snapshots_tx, snapshots) = unbounded_channel();
        // Not joined: it ends when the loop's side of the channels goes.
        std::thread::Builder::new()
            .name("kat-sock-diag".into())
            .spawn(move || run(&inbox, &answers_tx, &snapshots_tx, &ports))
            .map_err(|e| log::warn!("cannot start the sock_diag worker: {e}"))
            .ok();
        Self {
            requests,
            answers,
            snapshots,
        }
    }

    /// Asks whether these sockets' probes were answered.
    pub fn ask_answers(&self, probing: Vec<Probing>) {
        // The worker is gone only when kat is ending.
        let _ = self.requests.send(Request::Answers(probing));
    }

    /// Asks for every socket with a pending keepalive timer.
    pub fn ask_snapshot(&self, extra_netns: Vec<u32>) {
        let _ = self.requests.send(Request::Snapshot(extra_netns));
    }
}

fn run(
    inbox: &mpsc::Receiver<Request>,
    answers: &UnboundedSender<Vec<Answer>>,
    snapshots: &UnboundedSender<Snapshot>,
    ports: &[u16],
) {
    let mut diag = Diag::default();
    while let Ok(first) = inbox.recv() {
        // Only the newest request of each kind matters: after a slow round
        // the stale ones are skipped, not queued up.
        let mut probing = None;
        let mut snapshot = None;
        for request in std::iter::once(first).chain(inbox.try_iter()) {
            match request {
                Request::Answers(p) => probing = Some(p),
                Request::Snapshot(n) => snapshot = Some(n),
            }
        }
        // Answers first: their timestamps say when a probe was answered.
        if let Some(probing) = probing {
            if answers.send(diag.answers(&probing)).is_err() {
                return;
            }
        }
        if let Some(extra) = snapshot {
            if snapshots
                .send(take_snapshot(&mut diag, &extra, ports))
                .is_err()
            {
                return;
            }
        }
    }
}

fn take_snapshot(diag: &mut Diag, extra_netns: &[u32], ports: &[u16]) -> Snapshot {
    let began = Instant::now();
    let mut all = visible_netns();
    all.extend_from_slice(extra_netns);
    all.sort_unstable();
    all.dedup();
    let mut out = Vec::new();
    for netns in all {
        match diag.keepalive_sockets(netns, ports) {
            Ok(sockets) => out.extend(sockets),
            Err(e) => log::debug!("snapshot of netns {netns}: {e:#}"),
        }
    }
    Snapshot {
        sockets: out,
        took: began.elapsed(),
    }
}
