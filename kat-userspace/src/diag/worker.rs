//! The sock_diag worker: a thread that does the netlink round trips (the
//! answer poll, `kat top`'s snapshots) so the loop draining the ring never
//! waits on them. Requests go in over a channel; answers and snapshots come
//! back over tokio channels the loop can `select!` on.

use std::sync::mpsc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use std::time::{Duration, Instant};

use super::{visible_netns, Answer, Diag, IdleSocket, KeepaliveSocket};
use crate::at_risk;
use crate::tracker::Probing;

enum Request {
    Answers(Vec<Probing>),
    Snapshot(Ask),
}

/// What a snapshot lists.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// Namespaces to list besides the visible ones.
    pub extra_netns: Vec<u32>,
    /// Also the connections silent for at least this long (`kat top`'s
    /// at-risk panel): a dump with every established socket's tcp_info.
    pub idle_over: Option<Duration>,
}

/// Every socket with a pending keepalive timer (and the silent ones when
/// asked), and how long listing them took (the view paces its requests by
/// it).
#[derive(Debug)]
pub struct Snapshot {
    pub sockets: Vec<KeepaliveSocket>,
    pub idle: Option<Vec<IdleSocket>>,
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
        crate::privilege::spawn("kat-sock-diag", move || {
            run(&inbox, &answers_tx, &snapshots_tx, &ports)
        })
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
    pub fn ask_snapshot(&self, ask: Ask) {
        let _ = self.requests.send(Request::Snapshot(ask));
    }
}

fn run(
    inbox: &mpsc::Receiver<Request>,
    answers: &UnboundedSender<Vec<Answer>>,
    snapshots: &UnboundedSender<Snapshot>,
    ports: &[u16],
) {
    let mut diag = Diag::default();
    let mut listing = Snapshots::default();
    loop {
        // Woken at least once a second to let go of unused namespaces.
        let first = match inbox.recv_timeout(Duration::from_secs(1)) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                diag.close_unused(Instant::now());
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
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
        if let Some(ask) = snapshot {
            if snapshots
                .send(listing.take(&mut diag, &ask, ports))
                .is_err()
            {
                return;
            }
        }
        diag.close_unused(Instant::now());
    }
}

/// A full snapshot dumps every namespace: the kernel walks every socket of
/// the host, which at 100 000 connections takes a good part of a second.
/// Between full ones, a snapshot asks only about the keepalive sockets the
/// last one found, one lookup each. A full one is due at the first, when
/// the namespaces to list change, and once 49 times as long as the last
/// full one took has passed (at most 2 % of the time spent dumping; on a
/// host of a few thousand connections that is every snapshot). Sockets
/// that turn keepalive on in between show up at the next full one.
#[derive(Default)]
struct Snapshots {
    known: Vec<KeepaliveSocket>,
    netns: Vec<u32>,
    /// When the last full snapshot began and how long it took.
    full: Option<(Instant, Duration)>,
}

const FULL_EVERY: u32 = 49;

impl Snapshots {
    fn full_due(&self, now: Instant, netns: &[u32]) -> bool {
        match self.full {
            None => true,
            Some((at, took)) => {
                netns != self.netns.as_slice() || now.duration_since(at) >= took * FULL_EVERY
            }
        }
    }

    fn take(&mut self, diag: &mut Diag, ask: &Ask, ports: &[u16]) -> Snapshot {
        let began = Instant::now();
        let mut all = visible_netns();
        all.extend_from_slice(&ask.extra_netns);
        all.sort_unstable();
        all.dedup();
        let sockets = if self.full_due(began, &all) {
            let mut out = Vec::new();
            for &netns in &all {
                match diag.keepalive_sockets(netns, ports) {
                    Ok(sockets) => out.extend(sockets),
                    Err(e) => log::debug!("snapshot of netns {netns}: {e:#}"),
                }
            }
            self.full = Some((began, began.elapsed()));
            self.netns = all;
            out
        } else {
            diag.refresh(&self.known)
        };
        self.known.clone_from(&sockets);
        let idle = ask
            .idle_over
            .map(|over| at_risk::idle_sockets(diag, &self.netns, ports, over));
        Snapshot {
            sockets,
            idle,
            took: began.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_snapshot_first_then_when_the_namespaces_change_or_its_time_has_come() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut s = Snapshots::default();
        assert!(s.full_due(t0, &[1]), "the first is full");
        s.full = Some((t0, Duration::from_millis(100)));
        s.netns = vec![1];
        assert!(!s.full_due(at(1000), &[1]), "100 ms dumping: 4.9 s between");
        assert!(s.full_due(at(1000), &[1, 2]), "a new namespace");
        assert!(s.full_due(at(4900), &[1]));
        s.full = Some((t0, Duration::from_millis(1)));
        assert!(s.full_due(at(49), &[1]), "a small host: every snapshot");
    }

    /// The real kernel: the silent connections come with a snapshot only
    /// when asked for (kat top's at-risk panel).
    #[test]
    fn a_snapshot_lists_the_silent_connections_when_asked() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _server = listener.accept().expect("accept");
        std::thread::sleep(Duration::from_millis(1100));
        let mut diag = Diag::default();
        let mut listing = Snapshots::default();
        let plain = listing.take(&mut diag, &Ask::default(), &[port]);
        assert!(plain.idle.is_none());
        let ask = Ask {
            extra_netns: Vec::new(),
            idle_over: Some(Duration::from_secs(1)),
        };
        let with_idle = listing.take(&mut diag, &ask, &[port]);
        let ports: Vec<u16> = with_idle
            .idle
            .iter()
            .flatten()
            .map(|s| s.socket.dport)
            .collect();
        assert_eq!(ports.len(), 2, "both ends: {ports:?}");
        assert!(ports.contains(&port));
    }
}
