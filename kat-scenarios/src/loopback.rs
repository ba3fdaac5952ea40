//! Both ends on loopback of the machine's own namespace (the test VMs).
//! Packets are dropped by a classic BPF socket filter on the receiving
//! socket: TCP runs it on every segment before acting on it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;
use socket2::{Domain, SockFilter, SockRef, Socket, Type};

use crate::net::{abort, on_port, Net, Side};

/// `ret #0`: accept nothing.
const DROP_ALL: [SockFilter; 1] = [SockFilter::new(0x06, 0, 0, 0)];

pub struct Loopback;

impl Net for Loopback {
    fn server_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    }

    fn listen(&self, addr: SocketAddr) -> TcpListener {
        TcpListener::bind(addr).expect("listen")
    }

    fn connect(&self, addr: SocketAddr, setup: Box<dyn FnOnce(&Socket) + Send>) -> TcpStream {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        setup(&s);
        s.connect(&addr.into()).expect("connect");
        s.into()
    }

    fn blackhole(&self, server: &TcpStream) {
        SockRef::from(server)
            .attach_filter(&DROP_ALL)
            .expect("SO_ATTACH_FILTER");
    }

    fn restart_server(&self, server: TcpStream, listener: TcpListener, client: &TcpStream) {
        // The client hears nothing of the server's end (its RST is
        // dropped), then the port answers again, with nothing behind it.
        let client = SockRef::from(client);
        client.attach_filter(&DROP_ALL).expect("SO_ATTACH_FILTER");
        abort(server);
        drop(listener);
        std::thread::sleep(Duration::from_millis(200));
        client.detach_filter().expect("SO_DETACH_FILTER");
    }

    fn client_sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {path}: {e}"));
    }

    fn is(&self, v: &Value, ty: &str, side: Side, port: u16) -> bool {
        v["type"] == ty && on_port(v, side, port)
    }

    fn slack(&self) -> f64 {
        // Software-emulated CPUs (QEMU TCG).
        3.0
    }

    fn client_ns(&self) -> Option<String> {
        None
    }
}
