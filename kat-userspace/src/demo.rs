//! `kat demo`: a small lab of network namespaces running the seed
//! articles' experiments with short timers, over and over, under the
//! dashboard. Quitting removes every namespace it made; a demo killed hard
//! is cleaned up on the next start.
//!
//! client 198.18.1.1 ── veth ── server 198.18.1.2  (ports 6699, 6700, 6702)
//!        198.18.2.1 ── veth ── peer   198.18.2.2  (port 6701, "restarts")
//! nat-client 198.18.20.1 ── NAT router ── nat-server 198.18.21.2 (port 6703;
//!        the router forgets a flow after 4 s of silence)

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kat_scenarios::nat::Nat;
use kat_scenarios::ns;

use crate::engine::Selection;
use crate::kernel;
use crate::top::{self, TopArgs};

const PREFIX: &str = "kat-demo-";
const CLIENT: &str = "kat-demo-client";
const SERVER: &str = "kat-demo-server";
const PEER: &str = "kat-demo-peer";
/// Healthy connections: their probes are answered.
const HEALTHY: u16 = 6699;
/// Its server stops answering: keepalive_timeout.
const BLACKHOLE: u16 = 6700;
/// Its server host restarts: peer_reset found by a probe.
const RESTART: u16 = 6701;
/// Closed with unread data: abort_on_close.
const UNREAD: u16 = 6702;
/// Through a NAT that forgets idle flows: seed 001's story.
const NAT: u16 = 6703;
/// Seconds of silence after which the NAT forgets a flow.
const NAT_FORGETS_S: u32 = 4;
pub const PORTS: [u16; 5] = [HEALTHY, BLACKHOLE, RESTART, UNREAD, NAT];

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {}

/// Namespaces left by an earlier demo (killed hard), or by this one.
fn remove_all() {
    let list = Command::new("ip").args(["netns", "list"]).output();
    let names = list
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for name in names.lines().filter_map(|l| l.split_whitespace().next()) {
        if name.starts_with(PREFIX) {
            let _ = ns::del(name);
        }
    }
}

/// A veth pair `name` between two namespaces, `NET.1/24` and `NET.2/24`.
fn link(a: &str, b: &str, name: &str, net: &str) -> Result<()> {
    let (end_a, end_b) = (format!("{net}.1/24"), format!("{net}.2/24"));
    Ok(ns::veth(name, (a, &[&end_a]), (b, &[&end_b]))?)
}

/// A connection from the client namespace.
fn connect(addr: &str, port: u16, keepalive: Option<(u64, u64, u32)>) -> Result<TcpStream> {
    let addr: SocketAddr = format!("{addr}:{port}").parse()?;
    let timeout = Duration::from_secs(2);
    Ok(ns::within(Some(CLIENT), move || {
        ns::connect(addr, keepalive, timeout)
    })?)
}

fn listen(name: &str, addr: &str, port: u16) -> Result<TcpListener> {
    let addr: SocketAddr = format!("{addr}:{port}").parse()?;
    Ok(ns::listen(Some(name), addr)?)
}

/// Sleeps in small steps; false once the demo is stopping.
fn pause(stop: &AtomicBool, d: Duration) -> bool {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
    !stop.load(Ordering::Relaxed)
}

/// The peer host "restarts": nothing leaves it, its namespace goes away
/// with its sockets and comes back with the same address.
fn restart_peer(server: TcpStream, listener: TcpListener) -> Result<TcpListener> {
    ns::drop_all(PEER, "katdemo")?;
    let _ = ns::abort(server);
    drop(listener);
    ns::del(PEER)?;
    // The namespace is torn down in the background: cut the link now.
    let _ = ns::ip(&format!("-n {CLIENT} link del to-peer"));
    ns::add(PEER)?;
    link(CLIENT, PEER, "to-peer", "198.18.2")?;
    listen(PEER, "198.18.2.2", RESTART)
}

/// The listeners of the stories that loop.
struct Stories {
    blackhole: TcpListener,
    unread: TcpListener,
    /// None only while the peer host is being restarted.
    peer: Option<TcpListener>,
}

impl Stories {
    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self.round(stop) {
                log::debug!("demo round: {e:#}");
                if !pause(stop, Duration::from_secs(2)) {
                    return;
                }
            }
        }
    }

    /// One round of every story; returns when it is over or the demo stops.
    fn round(&mut self, stop: &AtomicBool) -> Result<()> {
        // A peer whose packets are dropped: probes 1, 2, 3, then the RST.
        let lost = connect("198.18.1.2", BLACKHOLE, Some((2, 1, 3)))?;
        let (lost_peer, _) = self.blackhole.accept()?;
        ns::nft(
            SERVER,
            &format!(
                "add table inet katdemo; \
             add chain inet katdemo in {{ type filter hook input priority 0; }}; \
             add rule inet katdemo in tcp dport {BLACKHOLE} drop"
            ),
        )?;

        // A peer that restarts: its first answer is a RST.
        let listener = match self.peer.take() {
            Some(l) => l,
            None => listen(PEER, "198.18.2.2", RESTART)?,
        };
        let half_open = connect("198.18.2.2", RESTART, Some((3, 1, 5)))?;
        let (restarting, _) = listener.accept()?;
        if !pause(stop, Duration::from_secs(1)) {
            return Ok(());
        }
        self.peer = Some(restart_peer(restarting, listener)?);

        // A client that closes with unread data.
        let mut talker = connect("198.18.1.2", UNREAD, None)?;
        let (unread, _) = self.unread.accept()?;
        talker.write_all(b"a request nobody reads")?;
        std::thread::sleep(Duration::from_millis(200));
        drop(unread);

        let over = pause(stop, Duration::from_secs(9));
        let _ = ns::nft(SERVER, "delete table inet katdemo");
        drop((lost, lost_peer, half_open, talker));
        if over {
            pause(stop, Duration::from_secs(2));
        }
        Ok(())
    }
}

/// Seed 001's story through the NAT, round after round: a connection
/// without keepalive goes silently dead and is found only when it next
/// sends (`user_timeout`); one with keepalive shorter than the NAT's
/// timeout lives; one with keepalive longer than it dies at its first
/// probe. The dashboard marks both deaths `middlebox?` (`conntrack` once
/// it saw the router forget their flows), lists the silent ones at risk
/// (key a) and learns the path.
fn nat_round(nat: &Nat, listener: &TcpListener, stop: &AtomicBool) -> Result<()> {
    let mut silent = nat.connect(NAT, |s| {
        s.set_tcp_user_timeout(Some(Duration::from_secs(3)))
    })?;
    let kept = nat.connect(NAT, |s| ns::set_keepalive(s, (2, 1, 3)))?;
    let late = nat.connect(NAT, |s| ns::set_keepalive(s, (7, 1, 2)))?;
    let servers = [listener.accept()?, listener.accept()?, listener.accept()?];
    if !pause(stop, Duration::from_secs(8)) {
        return Ok(());
    }
    silent.write_all(b"still there?")?;
    pause(stop, Duration::from_secs(6));
    drop((silent, kept, late, servers));
    Ok(())
}

fn nat_stories(nat: &Nat, listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = nat_round(nat, listener, stop) {
            log::debug!("demo NAT round: {e:#}");
            if !pause(stop, Duration::from_secs(2)) {
                return;
            }
        }
    }
}

/// The lab and the threads that drive it; removed on drop.
struct Lab {
    stop: Arc<AtomicBool>,
    drivers: Vec<JoinHandle<()>>,
}

impl Lab {
    /// Builds the lab; nothing is left behind when that fails half way.
    fn start() -> Result<Self> {
        Self::build().inspect_err(|_| remove_all())
    }

    fn build() -> Result<Self> {
        remove_all();
        for name in [CLIENT, SERVER, PEER] {
            ns::add(name)?;
        }
        link(CLIENT, SERVER, "to-server", "198.18.1")?;
        link(CLIENT, PEER, "to-peer", "198.18.2")?;
        let healthy_listener = listen(SERVER, "198.18.1.2", HEALTHY)?;
        let mut healthy = Vec::new();
        for (idle, intvl, count) in [(2, 1, 3), (3, 1, 4), (5, 2, 3)] {
            healthy.push(connect("198.18.1.2", HEALTHY, Some((idle, intvl, count)))?);
            healthy.push(healthy_listener.accept()?.0);
        }
        let stories = Stories {
            blackhole: listen(SERVER, "198.18.1.2", BLACKHOLE)?,
            unread: listen(SERVER, "198.18.1.2", UNREAD)?,
            peer: Some(listen(PEER, "198.18.2.2", RESTART)?),
        };
        let nat = Nat::new("kat-demo", NAT_FORGETS_S)?;
        let nat_listener = nat.listen(NAT)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let driver = std::thread::spawn(move || {
            let _open = (healthy, healthy_listener);
            stories.run(&flag);
        });
        let flag = Arc::clone(&stop);
        let nat_driver = std::thread::spawn(move || nat_stories(&nat, &nat_listener, &flag));
        Ok(Self {
            stop,
            drivers: vec![driver, nat_driver],
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for d in self.drivers.drain(..) {
            let _ = d.join();
        }
        remove_all();
    }
}

pub async fn run(_args: DemoArgs) -> Result<()> {
    kernel::require_root("demo")?;
    let lab = Lab::start().context("building the demo lab")?;
    let result = top::dashboard(
        TopArgs {
            selection: Selection {
                ports: PORTS.to_vec(),
                ..Selection::default()
            },
            pid: None,
            replay: None,
            speed: 1.0,
            // The lab's stories play in seconds.
            idle_over: std::time::Duration::from_secs(5),
            // The router of the NAT story is a namespace of this host.
            conntrack: true,
        },
        top::Privileges::Keep,
    )
    .await;
    drop(lab);
    result
}
