//! Two network namespaces, `client` (198.18.0.1, fd00:6b61:74::1) and
//! `server` (198.18.0.2, fd00:6b61:74::2), joined by a veth pair; packets
//! dropped with nftables. Removed on drop, also when a scenario fails.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use socket2::{Domain, Socket, Type};

use crate::net::{abort, Net, Side};
use crate::spawn::starting;

pub const CLIENT_ADDR: &str = "198.18.0.1";
pub const SERVER_ADDR: &str = "198.18.0.2";
pub const CLIENT_ADDR6: &str = "fd00:6b61:74::1";
pub const SERVER_ADDR6: &str = "fd00:6b61:74::2";

fn run(cmd: &[&str]) {
    let _starting = starting();
    let status = Command::new(cmd[0])
        .args(&cmd[1..])
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// `ip` with space-separated arguments.
fn ip(args: &str) {
    let mut cmd = vec!["ip"];
    cmd.extend(args.split_whitespace());
    run(&cmd);
}

fn netns_inode(name: &str) -> u64 {
    std::fs::metadata(format!("/run/netns/{name}"))
        .expect("netns")
        .ino()
}

static LABS: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    pub client: String,
    pub server: String,
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Lab {
    pub fn new() -> Self {
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let tag = format!("kat{}-{n}", std::process::id());
        let lab = Lab {
            client: format!("{tag}-c"),
            server: format!("{tag}-s"),
        };
        ip(&format!("netns add {}", lab.client));
        ip(&format!("netns add {}", lab.server));
        ip(&format!("-n {} link set lo up", lab.client));
        lab.connect_server();
        lab
    }

    /// (Re)creates the server namespace's side of the link.
    fn connect_server(&self) {
        let (c, s) = (&self.client, &self.server);
        ip(&format!("-n {s} link set lo up"));
        ip(&format!(
            "-n {c} link add veth0 type veth peer name veth0 netns {s}"
        ));
        for (ns, addr, addr6) in [
            (c, CLIENT_ADDR, CLIENT_ADDR6),
            (s, SERVER_ADDR, SERVER_ADDR6),
        ] {
            ip(&format!("-n {ns} addr add {addr}/24 dev veth0"));
            // nodad: usable at once, without duplicate address detection.
            ip(&format!("-n {ns} addr add {addr6}/64 dev veth0 nodad"));
            ip(&format!("-n {ns} link set veth0 up"));
        }
    }

    /// Runs `f` on a thread inside namespace `ns`: sockets it creates live there.
    fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }

    fn drop_all(ns: &str) {
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "add table inet katlab; \
             add chain inet katlab in { type filter hook input priority 0; policy drop; }; \
             add chain inet katlab out { type filter hook output priority 0; policy drop; }",
        ]);
    }
}

impl Net for Lab {
    fn server_addr(&self, v6: bool) -> IpAddr {
        let a = if v6 { SERVER_ADDR6 } else { SERVER_ADDR };
        a.parse().expect("addr")
    }

    fn listen(&self, addr: SocketAddr) -> TcpListener {
        Self::within(&self.server, move || {
            TcpListener::bind(addr).expect("listen")
        })
    }

    fn connect(&self, addr: SocketAddr, setup: Box<dyn FnOnce(&Socket) + Send>) -> TcpStream {
        Self::within(&self.client, move || {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
            setup(&s);
            s.connect(&addr.into()).expect("connect");
            s.into()
        })
    }

    fn blackhole(&self, _server: &TcpStream) {
        Self::drop_all(&self.server);
    }

    fn restart_server(&self, server: TcpStream, listener: TcpListener, _client: &TcpStream) {
        // Nothing leaves the dying host, then the namespace goes with
        // every socket in it and comes back with the same addresses.
        Self::drop_all(&self.server);
        abort(server);
        drop(listener);
        ip(&format!("netns del {}", self.server));
        let deadline = Instant::now() + Duration::from_secs(10);
        // The veth pair goes away with the namespace, once its last socket is freed.
        while {
            let _starting = starting();
            Command::new("ip")
                .args(["-n", &self.client, "link", "show", "veth0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        } {
            assert!(
                Instant::now() < deadline,
                "old server namespace did not go away"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ip(&format!("netns add {}", self.server));
        self.connect_server();
    }

    fn client_sysctl(&self, key: &str, value: &str) {
        ip(&format!(
            "netns exec {} sysctl -qw {key}={value}",
            self.client
        ));
    }

    /// Matched by local address *and* namespace inode: other labs use the
    /// same addresses.
    fn is(&self, v: &Value, ty: &str, side: Side, _port: u16) -> bool {
        let (ns, addrs) = match side {
            Side::Client => (&self.client, [CLIENT_ADDR, CLIENT_ADDR6]),
            Side::Server => (&self.server, [SERVER_ADDR, SERVER_ADDR6]),
        };
        v["type"] == ty && addrs.iter().any(|a| v["saddr"] == *a) && v["netns"] == netns_inode(ns)
    }

    fn slack(&self) -> f64 {
        1.0
    }

    fn client_ns(&self) -> Option<String> {
        Some(self.client.clone())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _starting = starting();
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}
