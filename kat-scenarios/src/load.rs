//! Load generators for benchmarks and tests, bounded in count and time:
//! `churn` opens and closes connections at a rate; `storm` holds many
//! connections (with keepalive, or mostly without) and can silence a
//! share of them. Both ends live in network namespaces given by name
//! (`/run/netns/NAME`), e.g. a [`crate::netns::Lab`]'s.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::ns::{self, enter, within};

/// A listener with a backlog deep enough for connections made in bursts
/// (the kernel caps it at the namespace's `net.core.somaxconn`).
fn listen(ns: Option<&str>, addr: SocketAddr) -> io::Result<TcpListener> {
    within(ns, move || {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(65535)?;
        // accept() honours the receive timeout: accepting threads can stop.
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(s.into())
    })
}

/// Raises the soft open-files limit to `n`. The hard limit cannot be
/// raised without CAP_SYS_RESOURCE (which the dev machines' root lacks):
/// callers needing more spread the sockets over processes.
pub fn raise_nofile(n: u64) -> io::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft >= n {
        return Ok(());
    }
    if hard < n {
        return Err(io::Error::other(format!(
            "{n} open files needed, the hard limit is {hard}"
        )));
    }
    setrlimit(Resource::RLIMIT_NOFILE, n, hard).map_err(io::Error::from)
}

/// The open-files hard limit of this process.
pub fn nofile_hard() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(_, hard)| hard)
}

/// What `churn` does: `per_second` connections to `server`, each held
/// `hold` by both ends (the server's a little longer, so the client closes
/// first) and then closed, every `abort_every`-th with a RST (0: none),
/// until `max` connections or `max_time`, whichever comes first.
#[derive(Debug, Clone)]
pub struct ChurnSpec {
    pub client_ns: Option<String>,
    pub server_ns: Option<String>,
    pub server: SocketAddr,
    pub per_second: u32,
    pub max: u64,
    pub max_time: Duration,
    /// (idle, interval, count) on the client's end.
    pub keepalive: Option<(u64, u64, u32)>,
    pub hold: Duration,
    pub abort_every: u64,
}

/// How much longer the server holds its end than the client.
const SERVER_LINGERS: Duration = Duration::from_millis(500);

/// Connections held until their time is up.
struct Held(VecDeque<(Instant, TcpStream, bool)>);

impl Held {
    /// Closes those whose time is up, with a RST where asked.
    fn release(&mut self, now: Instant) {
        while self.0.front().is_some_and(|(until, _, _)| *until <= now) {
            if let Some((_, s, abort)) = self.0.pop_front() {
                if abort {
                    let _ = ns::abort(s);
                }
            }
        }
    }
}

/// A running churn generator; stops (and joins its threads) on drop.
pub struct Churn {
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts a churn generator on two threads (connecting, accepting).
pub fn churn(spec: ChurnSpec) -> io::Result<Churn> {
    let listener = listen(spec.server_ns.as_deref(), spec.server)?;
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + spec.max_time;
    let accepting = {
        let stop = stop.clone();
        let hold = spec.hold + SERVER_LINGERS;
        std::thread::spawn(move || {
            let mut held = Held(VecDeque::new());
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                held.release(Instant::now());
                // A timeout or a failed accept: look at the clock again.
                if let Ok((s, _)) = listener.accept() {
                    held.0.push_back((Instant::now() + hold, s, false));
                }
            }
        })
    };
    let connecting = {
        let (stop, made) = (stop.clone(), made.clone());
        std::thread::spawn(move || {
            if enter(spec.client_ns.as_deref()).is_err() {
                return;
            }
            let started = Instant::now();
            let gap = Duration::from_secs(1) / spec.per_second.max(1);
            let mut held = Held(VecDeque::new());
            let mut n = 0u64;
            while n < spec.max && !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                // Paced against the start, so a slow connect is caught up.
                let due = started + gap * u32::try_from(n).unwrap_or(u32::MAX);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                held.release(Instant::now());
                n += 1;
                if let Ok(s) = ns::connect(spec.server, spec.keepalive, Duration::from_secs(1)) {
                    let abort = spec.abort_every > 0 && n.is_multiple_of(spec.abort_every);
                    held.0.push_back((Instant::now() + spec.hold, s, abort));
                    made.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    Ok(Churn {
        stop,
        made,
        threads: vec![accepting, connecting],
    })
}

impl Churn {
    /// Connections made so far.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// Stops the generator; returns how many connections it made.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.made()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What `storm` holds: `connections` from `client_ns` to `server` on
/// `ports` (round robin), keepalive on every `keepalive_every`-th (1: all,
/// 0: none), and `silent` more connections to `silent_port`, which
/// `Storm::silence` blackholes in `server_ns`.
#[derive(Debug, Clone)]
pub struct StormSpec {
    pub client_ns: Option<String>,
    pub server_ns: String,
    pub server: IpAddr,
    pub ports: Vec<u16>,
    pub connections: usize,
    pub silent: usize,
    pub silent_port: u16,
    /// (idle, interval, count) in seconds, probes.
    pub keepalive: (u64, u64, u32),
    pub keepalive_every: usize,
    /// How long setting up may take.
    pub setup_timeout: Duration,
}

/// Held connections (both ends), closed on drop.
pub struct Storm {
    spec: StormSpec,
    clients: Vec<TcpStream>,
    /// Only held: the server ends stay open as long as the storm.
    _servers: Vec<TcpStream>,
}

fn connect(addr: SocketAddr, keepalive: Option<(u64, u64, u32)>) -> io::Result<TcpStream> {
    ns::connect(addr, keepalive, Duration::from_secs(5))
}

/// Opens every connection of `spec` and returns once all are accepted.
pub fn storm(spec: StormSpec) -> io::Result<Storm> {
    let total = spec.connections + spec.silent;
    // Both ends of every connection are open in this process.
    raise_nofile(2 * total as u64 + 1024)?;
    let deadline = Instant::now() + spec.setup_timeout;
    let mut targets: Vec<(u16, usize)> = spec.ports.iter().map(|&p| (p, 0)).collect();
    if targets.is_empty() {
        return Err(io::Error::other("storm: no ports"));
    }
    for i in 0..spec.connections {
        let n = targets.len();
        targets[i % n].1 += 1;
    }
    if spec.silent > 0 {
        targets.push((spec.silent_port, spec.silent));
    }
    let mut accepting = Vec::new();
    for &(port, count) in &targets {
        let l = listen(Some(&spec.server_ns), SocketAddr::new(spec.server, port))?;
        accepting.push(std::thread::spawn(move || -> io::Result<Vec<TcpStream>> {
            let mut got = Vec::with_capacity(count);
            while got.len() < count {
                match l.accept() {
                    Ok((s, _)) => got.push(s),
                    Err(_) if Instant::now() < deadline => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(got)
        }));
    }
    let clients = {
        let spec = spec.clone();
        let client_ns = spec.client_ns.clone();
        within(client_ns.as_deref(), move || {
            let mut clients = Vec::with_capacity(total);
            let ka = |i: usize| {
                (spec.keepalive_every > 0 && i.is_multiple_of(spec.keepalive_every))
                    .then_some(spec.keepalive)
            };
            for i in 0..spec.connections {
                let port = spec.ports[i % spec.ports.len()];
                clients.push(connect(SocketAddr::new(spec.server, port), ka(i))?);
            }
            // The silent share all probe, whatever keepalive_every says.
            for _ in 0..spec.silent {
                let addr = SocketAddr::new(spec.server, spec.silent_port);
                clients.push(connect(addr, Some(spec.keepalive))?);
            }
            Ok(clients)
        })?
    };
    let mut servers = Vec::with_capacity(total);
    for t in accepting {
        let got = t
            .join()
            .map_err(|_| io::Error::other("accepting thread panicked"))??;
        servers.extend(got);
    }
    Ok(Storm {
        spec,
        clients,
        _servers: servers,
    })
}

impl Storm {
    /// Connections held (client ends).
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Drops everything to and from the silent port in the server's
    /// namespace: those connections' probes go unanswered.
    pub fn silence(&self) -> io::Result<()> {
        let p = self.spec.silent_port;
        silence(&self.spec.server_ns, p, p)
    }
}

/// Drops everything to and from server ports `first..=last` in namespace
/// `name` (nftables).
pub fn silence(name: &str, first: u16, last: u16) -> io::Result<()> {
    let rules = format!(
        "add table inet katload; \
         add chain inet katload in {{ type filter hook input priority 0; }}; \
         add chain inet katload out {{ type filter hook output priority 0; }}; \
         add rule inet katload in tcp dport {first}-{last} drop; \
         add rule inet katload out tcp sport {first}-{last} drop"
    );
    ns::nft(name, &rules)
}
