//! sock_diag (the netlink interface behind `ss`): asks the kernel about
//! the few sockets that have a keepalive probe out, so that an answer is
//! seen within a poll interval instead of at the next timer run — without
//! a hook on the packet receive path.

use std::collections::HashMap;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;

use anyhow::{anyhow, Context as _, Result};
use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, Timer},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use crate::tracker::Probing;

/// Offset of `tcpi_probes` in `struct tcp_info` (uapi, stable).
const TCPI_PROBES: usize = 3;

/// A TCP socket whose keepalive timer is pending, as `ss -o` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeepaliveSocket {
    pub netns: u32,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub state: u8,
    pub uid: u32,
    pub inode: u32,
    /// Until the keepalive timer's next run.
    pub expires: Duration,
    /// Keepalive probes out (tcpi_probes).
    pub probes_out: u8,
}

fn probes(resp: &InetResponse) -> u8 {
    resp.nlas
        .iter()
        .find_map(|nla| match nla {
            Nla::TcpInfo(info) => info.get(TCPI_PROBES).copied(),
            _ => None,
        })
        .unwrap_or(0)
}

fn unmapped(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// Sends one TCP request (with tcp_info) for `socket_id`; `flags` adds
/// NLM_F_DUMP for a dump.
fn send(
    socket: &Socket,
    flags: u16,
    family: u8,
    states: StateFlags,
    socket_id: SocketId,
) -> Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states,
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).context("sock_diag send")?;
    Ok(())
}

/// One sock_diag socket per network namespace, opened on first use.
#[derive(Default)]
pub struct Diag {
    by_netns: HashMap<u32, Option<Socket>>,
}

fn netns_inode(path: &str) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

/// A handle on the network namespace with this inode: a named one
/// (/run/netns) or one a process lives in.
fn open_netns(inode: u32) -> Option<OwnedFd> {
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let procs = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"));
    named
        .chain(procs)
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() as u32 == inode))
        .and_then(|p| std::fs::File::open(p).ok())
        .map(OwnedFd::from)
}

fn open_socket() -> Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("sock_diag socket")?;
    socket.bind_auto().context("bind sock_diag socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connect sock_diag socket")?;
    Ok(socket)
}

/// A sock_diag socket created inside another network namespace (a socket
/// stays in the namespace it was created in; only this thread moves).
fn open_socket_in(netns: OwnedFd) -> Result<Socket> {
    std::thread::spawn(move || {
        nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the socket's network namespace")?;
        open_socket()
    })
    .join()
    .map_err(|_| anyhow!("sock_diag helper thread panicked"))?
}

/// The network namespaces kat can see by name or through a process.
pub fn visible_netns() -> Vec<u32> {
    let mut all: Vec<u32> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| netns_inode(&e.path().to_string_lossy()))
        .chain(netns_inode("/proc/self/ns/net"))
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

impl Diag {
    /// Every TCP socket of a namespace whose keepalive timer is pending.
    pub fn keepalive_sockets(&mut self, netns: u32) -> Result<Vec<KeepaliveSocket>> {
        let socket = self
            .socket(netns)
            .ok_or_else(|| anyhow!("no sock_diag socket for netns {netns}"))?;
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            let socket_id = if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            };
            let states = StateFlags::all() & !StateFlags::LISTEN;
            send(socket, NLM_F_DUMP, family, states, socket_id)?;
            let mut reply = vec![0; 64 * 1024];
            'dump: loop {
                let n = socket
                    .recv(&mut &mut reply[..], 0)
                    .context("sock_diag recv")?;
                let mut offset = 0;
                while offset < n {
                    let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&reply[offset..n])
                        .map_err(|e| anyhow!("sock_diag reply: {e}"))?;
                    let len = msg.header.length as usize;
                    match msg.payload {
                        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(resp)) => {
                            if let Some(Timer::KeepAlive(expires)) = resp.header.timer {
                                let id = &resp.header.socket_id;
                                out.push(KeepaliveSocket {
                                    netns,
                                    saddr: unmapped(id.source_address),
                                    sport: id.source_port,
                                    daddr: unmapped(id.destination_address),
                                    dport: id.destination_port,
                                    state: resp.header.state,
                                    uid: resp.header.uid,
                                    inode: resp.header.inode,
                                    expires,
                                    probes_out: probes(&resp),
                                });
                            }
                        }
                        NetlinkPayload::Done(_) => break 'dump,
                        NetlinkPayload::Error(e) => return Err(anyhow!("sock_diag dump: {e}")),
                        _ => {}
                    }
                    if len == 0 {
                        break;
                    }
                    offset += len;
                }
            }
        }
        Ok(out)
    }

    fn socket(&mut self, netns: u32) -> Option<&mut Socket> {
        self.by_netns
            .entry(netns)
            .or_insert_with(|| {
                let result = if netns_inode("/proc/self/ns/net") == Some(netns) {
                    open_socket()
                } else {
                    open_netns(netns)
                        .ok_or_else(|| anyhow!("no handle on network namespace {netns}"))
                        .and_then(open_socket_in)
                };
                result
                    .map_err(|e| log::debug!("sock_diag for netns {netns}: {e:#}"))
                    .ok()
            })
            .as_mut()
    }

    /// The socket's probes out, None when the kernel no longer has it, or
    /// an error when sock_diag cannot tell.
    pub fn probes_out(&mut self, p: &Probing) -> Result<Option<u8>> {
        let socket = self
            .socket(p.netns)
            .ok_or_else(|| anyhow!("no sock_diag socket for netns {}", p.netns))?;
        let family = if p.saddr.is_ipv4() { AF_INET } else { AF_INET6 };
        let socket_id = SocketId {
            source_port: p.sport,
            destination_port: p.dport,
            source_address: p.saddr,
            destination_address: p.daddr,
            interface_id: 0,
            // INET_DIAG_NOCOOKIE: match on the tuple alone.
            cookie: [0xff; 8],
        };
        send(socket, 0, family, StateFlags::all(), socket_id)?;
        let mut reply = vec![0; 8192];
        let n = socket
            .recv(&mut &mut reply[..], 0)
            .context("sock_diag recv")?;
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&reply[..n])
            .map_err(|e| anyhow!("sock_diag reply: {e}"))?;
        match msg.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(resp)) => {
                Ok(resp.nlas.iter().find_map(|nla| match nla {
                    Nla::TcpInfo(info) => info.get(TCPI_PROBES).copied(),
                    _ => None,
                }))
            }
            NetlinkPayload::Error(e) if e.code.is_some_and(|c| c.get() == -libc::ENOENT) => {
                Ok(None)
            }
            other => Err(anyhow!("unexpected sock_diag reply: {other:?}")),
        }
    }
}
