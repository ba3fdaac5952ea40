//! Where a scenario's two hosts live: network namespaces joined by veth
//! (the host suite) or plain loopback (the suite inside the test VMs;
//! there only the NAT story, kat_scenarios::nat, uses namespaces).

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use socket2::{SockRef, Socket};

/// Which end of a scenario's connection an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

pub trait Net {
    /// The server's address, IPv4 or IPv6.
    fn server_addr(&self, v6: bool) -> IpAddr;
    fn listen(&self, addr: SocketAddr) -> TcpListener;
    /// A client connection, configured by `setup` before it connects.
    fn connect(&self, addr: SocketAddr, setup: Box<dyn FnOnce(&Socket) + Send>) -> TcpStream;
    /// The server stops answering: whatever reaches `server` is dropped
    /// (a dead host, a NAT that forgot the mapping).
    fn blackhole(&self, server: &TcpStream);
    /// The server host restarts without a word: its sockets are gone and
    /// nothing of their end reaches the client; the address answers again
    /// afterwards, with nothing listening.
    fn restart_server(&self, server: TcpStream, listener: TcpListener, client: &TcpStream);
    /// Sets a sysctl where the client's sockets live.
    fn client_sysctl(&self, key: &str, value: &str);
    /// An event of this type about this side of a connection to `port`.
    fn is(&self, v: &Value, ty: &str, side: Side, port: u16) -> bool;
    /// How much slower than a bare-metal host time runs here (timing bounds
    /// are multiplied by it).
    fn slack(&self) -> f64;
    /// The client's network namespace by name (None: this one).
    fn client_ns(&self) -> Option<String>;
}

/// Whether an event is about this side of a connection to `port`: the
/// client's end has it as destination (and not as source, which a
/// connection on loopback to itself would), the server's as source.
pub fn on_port(v: &Value, side: Side, port: u16) -> bool {
    match side {
        Side::Client => v["dport"] == port && v["sport"] != port,
        Side::Server => v["sport"] == port,
    }
}

/// SO_KEEPALIVE with TCP_KEEPIDLE/INTVL/CNT.
pub fn keepalive(s: &Socket, idle_s: u64, intvl_s: u64, count: u32) {
    crate::ns::set_keepalive(s, (idle_s, intvl_s, count)).expect("keepalive");
}

/// The error the kernel ended `s` with, waiting at most `timeout` for it;
/// None while the connection lives. Taking it clears the socket's error,
/// which kat has read at the state change by then.
pub fn ended_with(s: &TcpStream, timeout: Duration) -> Option<io::Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let last_look = Instant::now() >= deadline;
        match SockRef::from(s).take_error() {
            Ok(Some(e)) => return Some(e),
            Err(e) => panic!("SO_ERROR: {e}"),
            Ok(None) if last_look => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Closes a socket with SO_LINGER 0: a RST instead of a FIN.
pub fn abort(s: TcpStream) {
    crate::ns::abort(s).expect("linger");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_is_on_the_port_of_its_side() {
        let out = json!({"sport": 40000, "dport": 6701});
        assert!(on_port(&out, Side::Client, 6701));
        assert!(!on_port(&out, Side::Client, 6702), "another port");
        assert!(!on_port(&out, Side::Server, 6701), "the other side");
        let back = json!({"sport": 6701, "dport": 40000});
        assert!(on_port(&back, Side::Server, 6701));
        assert!(!on_port(&back, Side::Server, 6702));
        // Loopback to itself: the server's end, not the client's.
        let both = json!({"sport": 6701, "dport": 6701});
        assert!(!on_port(&both, Side::Client, 6701));
    }
}
