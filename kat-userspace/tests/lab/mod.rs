//! A lab for kernel tests: two network namespaces joined by a veth pair,
//! the real `kat` binary, and helpers to drive real TCP connections.
//!
//! Addresses come from the benchmarking range 198.18.0.0/15. Namespaces
//! are removed on drop, also when a test fails.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;
use socket2::{Domain, Socket, TcpKeepalive, Type};

pub const CLIENT_ADDR: &str = "198.18.0.1";
pub const SERVER_ADDR: &str = "198.18.0.2";
pub const CLIENT_ADDR6: &str = "fd00:6b61:74::1";
pub const SERVER_ADDR6: &str = "fd00:6b61:74::2";

/// True when the test may run. Root is needed to load eBPF and make
/// namespaces; under CI=true its absence is a failure, never a skip.
pub fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("kernel tests need root and CI=true forbids skipping them");
    }
    eprintln!("SKIPPED: kernel tests need root (run them with `cargo xtask test`)");
    false
}

fn run(cmd: &[&str]) {
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

static LABS: AtomicU32 = AtomicU32::new(0);

/// Two namespaces, `client` (198.18.0.1) and `server` (198.18.0.2).
pub struct Lab {
    pub client: String,
    pub server: String,
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

    pub fn sysctl(&self, ns: &str, key: &str, value: &str) {
        ip(&format!("netns exec {ns} sysctl -qw {key}={value}"));
    }

    /// The server stops answering: every packet it would receive or send
    /// is dropped (a dead host, a NAT that forgot the mapping).
    pub fn blackhole(&self, ns: &str) {
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

    /// The server host restarts: its namespace is destroyed (with every
    /// socket in it) and comes back with the same address and nothing
    /// listening.
    pub fn restart_server(&self) {
        ip(&format!("netns del {}", self.server));
        let deadline = Instant::now() + Duration::from_secs(10);
        // The veth pair goes away with the namespace, once its last socket is freed.
        while Command::new("ip")
            .args(["-n", &self.client, "link", "show", "veth0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                Instant::now() < deadline,
                "old server namespace did not go away"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ip(&format!("netns add {}", self.server));
        self.connect_server();
    }

    /// Runs `f` on a thread inside namespace `ns`: sockets it creates live there.
    pub fn within<T: Send + 'static>(&self, ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }

    pub fn listen(&self, port: u16) -> std::net::TcpListener {
        self.listen_on(SERVER_ADDR, port)
    }

    pub fn listen_on(&self, addr: &'static str, port: u16) -> std::net::TcpListener {
        self.within(&self.server.clone(), move || {
            std::net::TcpListener::bind((addr, port)).expect("listen")
        })
    }

    /// A client connection from the client namespace, configured by `setup`
    /// before it connects.
    pub fn connect(
        &self,
        port: u16,
        setup: impl FnOnce(&Socket) + Send + 'static,
    ) -> std::net::TcpStream {
        let addr = format!("{SERVER_ADDR}:{port}").parse().expect("addr");
        self.connect_to(addr, setup)
    }

    pub fn connect_to(
        &self,
        addr: SocketAddr,
        setup: impl FnOnce(&Socket) + Send + 'static,
    ) -> std::net::TcpStream {
        self.within(&self.client.clone(), move || {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
            setup(&s);
            s.connect(&addr.into()).expect("connect");
            s.into()
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// SO_KEEPALIVE with TCP_KEEPIDLE/INTVL/CNT.
pub fn keepalive(s: &Socket, idle_s: u64, intvl_s: u64, count: u32) {
    let ka = TcpKeepalive::new()
        .with_time(Duration::from_secs(idle_s))
        .with_interval(Duration::from_secs(intvl_s))
        .with_retries(count);
    s.set_tcp_keepalive(&ka).expect("keepalive");
}

/// A running `kat trace --json`, its events collected as they come.
pub struct Kat {
    child: Child,
    events: Receiver<Value>,
    pub seen: Vec<Value>,
    pub stderr: Receiver<String>,
}

impl Kat {
    pub fn trace(args: &[&str]) -> Self {
        Self::trace_env(args, &[])
    }

    pub fn trace_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kat"))
            .arg("trace")
            .arg("--json")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kat");
        let (tx, events) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("kat printed a non-JSON line {line:?}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let (etx, stderr) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if etx.send(line).is_err() {
                    break;
                }
            }
        });
        let kat = Kat {
            child,
            events,
            seen: Vec::new(),
            stderr,
        };
        // Ready once the programs are attached.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match kat.stderr.recv_timeout(left) {
                Ok(l) if l.starts_with("kat: tracing") => break,
                Ok(l) => eprintln!("kat stderr: {l}"),
                Err(_) => panic!("kat trace did not start within 30 s"),
            }
        }
        kat
    }

    /// Waits for an event matching `pred`, keeping every event seen.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {what} within {timeout:?}; events seen: {:#?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("kat exited before {what}; events seen: {:#?}", self.seen)
                }
            }
        }
    }

    /// Collects whatever arrives during `d`.
    pub fn collect_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(v) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(v);
        }
    }

    /// Stops kat with SIGINT; returns its exit status, all events and
    /// what it printed on stderr after starting.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<Value>, Vec<String>) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let status = self.child.wait().expect("wait kat");
        while let Ok(v) = self.events.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(v);
        }
        let stderr = self.stderr.try_iter().collect();
        (status, std::mem::take(&mut self.seen), stderr)
    }
}

impl Drop for Kat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn netns_inode(name: &str) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/run/netns/{name}"))
        .expect("netns")
        .ino()
}

impl Lab {
    /// An event of this type about a socket of this lab with this local
    /// address (the namespace is checked too: other labs use the same
    /// addresses).
    pub fn is(&self, v: &Value, ty: &str, saddr: &str) -> bool {
        let ns = if [CLIENT_ADDR, CLIENT_ADDR6].contains(&saddr) {
            &self.client
        } else {
            &self.server
        };
        v["type"] == ty && v["saddr"] == saddr && v["netns"] == netns_inode(ns)
    }
}

/// Seconds since the Unix epoch of an event's `ts`.
pub fn ts(v: &Value) -> f64 {
    let s = v["ts"].as_str().expect("ts");
    let t = chrono::DateTime::parse_from_rfc3339(s).expect("RFC 3339 ts");
    t.timestamp_millis() as f64 / 1000.0
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}
