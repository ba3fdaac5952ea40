//! Two network namespaces, `client` (198.18.0.1, fd00:6b61:74::1) and
//! `server` (198.18.0.2, fd00:6b61:74::2), joined by a veth pair; packets
//! dropped with nftables. Removed on drop, also when a scenario fails.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use socket2::{Domain, Socket, Type};

use crate::net::{abort, on_port, Net, Side};
use crate::ns;

pub const CLIENT_ADDR: &str = "198.18.0.1";
pub const SERVER_ADDR: &str = "198.18.0.2";
pub const CLIENT_ADDR6: &str = "fd00:6b61:74::1";
pub const SERVER_ADDR6: &str = "fd00:6b61:74::2";

/// A lab step that cannot fail unless the machine cannot run the suite.
fn must<T>(what: &str, r: std::io::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
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
        must("client namespace", ns::add(&lab.client));
        must("server namespace", ns::add(&lab.server));
        lab.connect_server();
        lab
    }

    /// Links the (new) server namespace to the client's.
    fn connect_server(&self) {
        let (c4, c6) = (format!("{CLIENT_ADDR}/24"), format!("{CLIENT_ADDR6}/64"));
        let (s4, s6) = (format!("{SERVER_ADDR}/24"), format!("{SERVER_ADDR6}/64"));
        must(
            "veth pair",
            ns::veth(
                "veth0",
                (&self.client, &[&c4, &c6]),
                (&self.server, &[&s4, &s6]),
            ),
        );
    }

    fn drop_all(name: &str) {
        must("nftables drop", ns::drop_all(name, "katlab"));
    }
}

impl Net for Lab {
    fn server_addr(&self, v6: bool) -> IpAddr {
        let a = if v6 { SERVER_ADDR6 } else { SERVER_ADDR };
        a.parse().expect("addr")
    }

    fn listen(&self, addr: SocketAddr) -> TcpListener {
        must("listen", ns::listen(Some(&self.server), addr))
    }

    fn connect(&self, addr: SocketAddr, setup: Box<dyn FnOnce(&Socket) + Send>) -> TcpStream {
        let connected = ns::within(Some(&self.client), move || {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            setup(&s);
            s.connect(&addr.into())?;
            Ok(s.into())
        });
        must("connect", connected)
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
        must("server namespace gone", ns::del(&self.server));
        let deadline = Instant::now() + Duration::from_secs(10);
        // The veth pair goes away with the namespace, once its last socket is freed.
        while ns::ip(&format!("-n {} link show veth0", self.client)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "old server namespace did not go away"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        must("server namespace again", ns::add(&self.server));
        self.connect_server();
    }

    fn client_sysctl(&self, key: &str, value: &str) {
        must("sysctl", ns::sysctl(&self.client, key, value));
    }

    /// Matched by port, local address *and* namespace inode: other labs
    /// use the same addresses (and maybe the same ports).
    fn is(&self, v: &Value, ty: &str, side: Side, port: u16) -> bool {
        let (name, addrs) = match side {
            Side::Client => (&self.client, [CLIENT_ADDR, CLIENT_ADDR6]),
            Side::Server => (&self.server, [SERVER_ADDR, SERVER_ADDR6]),
        };
        v["type"] == ty
            && on_port(v, side, port)
            && addrs.iter().any(|a| v["saddr"] == *a)
            && v["netns"] == must("netns", ns::inode(name))
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
        for name in [&self.client, &self.server] {
            let _ = ns::del(name);
        }
    }
}
