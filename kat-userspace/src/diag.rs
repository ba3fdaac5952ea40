//! sock_diag (the netlink interface behind `ss`): asks the kernel about
//! the sockets that have a keepalive probe out, so that an answer is seen
//! within a poll interval instead of at the next timer run — without a hook
//! on the packet receive path — and lists the sockets `kat top` shows.
//! Everything here blocks; it runs on the worker thread (`worker.rs`).

pub mod worker;

use std::collections::HashMap;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;

use anyhow::{anyhow, bail, Context as _, Result};
use std::net::IpAddr;
use std::time::{Duration, Instant};

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

/// `struct nlmsghdr`'s size: the payload (`struct inet_diag_msg`) follows.
const NLMSG_HDRLEN: usize = 16;
/// Offset of `idiag_retrans` in `struct inet_diag_msg`. With the keepalive
/// timer pending the kernel puts `icsk_probes_out` there
/// (net/ipv4/inet_diag.c, inet_sk_diag_fill); netlink-packet-sock-diag 0.5
/// parses it only for the retransmit timer, so it is read from the bytes.
const IDIAG_RETRANS: usize = 3;
/// `nlmsg_type` of a socket in a reply (SOCK_DIAG_BY_FAMILY).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `nlmsg_type` of inet_diag's first request, TCPDIAG_GETSOCK, and of the
/// sockets in its replies. It alone takes AF_UNSPEC: one walk of the
/// kernel's socket hash for both families, where SOCK_DIAG_BY_FAMILY
/// walks it once per family.
const TCPDIAG_GETSOCK: u16 = 18;
/// `sizeof(struct inet_diag_req)`: family, src_len, dst_len, ext, the
/// 48-byte `inet_diag_sockid`, states, dbs.
const INET_DIAG_REQ_LEN: usize = 60;
/// `idiag_timer` while the keepalive timer is pending.
const IDIAG_TIMER_KEEPALIVE: u8 = 2;
/// Offsets in `struct tcp_info` (the INET_DIAG_INFO attribute) of
/// `tcpi_last_data_sent`, `tcpi_last_data_recv` and `tcpi_last_ack_recv`:
/// milliseconds since the socket last sent data, received data and received
/// an ACK (include/uapi/linux/tcp.h, unchanged since 2.6).
const TCPI_LAST_DATA_SENT: usize = 44;
const TCPI_LAST_DATA_RECV: usize = 52;
const TCPI_LAST_ACK_RECV: usize = 56;

/// Which sockets of a reply become rows, judged from the fixed start of
/// `struct inet_diag_msg` before the message is parsed: on a host with
/// 100 000 connections, parsing every one was most of a snapshot's cost
/// though a few hundred have keepalive on.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Keep<'a> {
    /// Only sockets whose keepalive timer is pending.
    keepalive_only: bool,
    /// Only sockets with one of these ports at either end (all when empty).
    ports: &'a [u16],
}

impl Keep<'_> {
    /// Every socket the reply lists.
    #[cfg(test)]
    pub(crate) const ALL: Keep<'static> = Keep {
        keepalive_only: false,
        ports: &[],
    };

    /// `msg` is the payload after the netlink header.
    fn keeps(&self, msg: &[u8]) -> bool {
        // family, state, timer, retrans, then the ports, big-endian.
        let Some(&[_, _, timer, _, s0, s1, d0, d1]) = msg.get(..8) else {
            // Too short to judge: the parser says what is wrong with it.
            return true;
        };
        let (sport, dport) = (u16::from_be_bytes([s0, s1]), u16::from_be_bytes([d0, d1]));
        (!self.keepalive_only || timer == IDIAG_TIMER_KEEPALIVE)
            && (self.ports.is_empty() || self.ports.contains(&sport) || self.ports.contains(&dport))
    }
}

/// The states where a keepalive timer can be pending and a user cares:
/// not LISTEN, SYN_SENT, SYN_RECV, TIME_WAIT or CLOSE.
pub fn keepalive_states() -> StateFlags {
    StateFlags::ESTABLISHED
        | StateFlags::CLOSE_WAIT
        | StateFlags::FIN_WAIT1
        | StateFlags::FIN_WAIT2
        | StateFlags::LAST_ACK
        | StateFlags::CLOSING
}

/// One socket of a sock_diag reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub state: u8,
    pub uid: u32,
    pub inode: u32,
    /// Until the keepalive timer's next run; None under another timer or
    /// none (then sock_diag does not tell the probes out).
    pub keepalive: Option<Duration>,
    /// Keepalive probes out, when `keepalive` is Some.
    pub probes_out: u8,
    /// How long nothing has crossed the path either way, when the dump
    /// asked for tcp_info (`Query::Idle`).
    pub idle: Option<Duration>,
}

/// How long the socket has been silent in both directions, from its
/// tcp_info: since it last sent data or received anything. An answered
/// keepalive probe counts (its ACK is received); an unanswered one does
/// not, which is what a middlebox sees too.
fn idle(tcp_info: &[u8]) -> Option<Duration> {
    let ms = |at: usize| {
        let b = tcp_info.get(at..at + 4)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let quiet = ms(TCPI_LAST_DATA_SENT)?
        .min(ms(TCPI_LAST_DATA_RECV)?)
        .min(ms(TCPI_LAST_ACK_RECV)?);
    Some(Duration::from_millis(u64::from(quiet)))
}

/// A TCP socket whose keepalive timer is pending, as `ss -o` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeepaliveSocket {
    pub netns: u32,
    /// Until the keepalive timer's next run.
    pub expires: Duration,
    /// The socket as sock_diag told it (`probes_out` is meaningful here).
    pub socket: Row,
}

impl KeepaliveSocket {
    fn of(netns: u32, r: &Row) -> Option<Self> {
        Some(Self {
            netns,
            expires: r.keepalive?,
            socket: r.clone(),
        })
    }
}

/// An established connection nothing has crossed for a while.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleSocket {
    pub netns: u32,
    pub idle: Duration,
    pub socket: Row,
}

/// sock_diag's answer for a probing socket, as the tracker takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub sk: u64,
    /// Probes out, or None when the kernel no longer has the socket.
    pub probes_out: Option<u8>,
    pub ts_ns: u64,
}

fn unmapped(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

fn row(resp: &InetResponse, retrans: u8) -> Row {
    let id = &resp.header.socket_id;
    let keepalive = match resp.header.timer {
        Some(Timer::KeepAlive(expires)) => Some(expires),
        _ => None,
    };
    Row {
        saddr: unmapped(id.source_address),
        sport: id.source_port,
        daddr: unmapped(id.destination_address),
        dport: id.destination_port,
        state: resp.header.state,
        uid: resp.header.uid,
        inode: resp.header.inode,
        keepalive,
        probes_out: if keepalive.is_some() { retrans } else { 0 },
        idle: resp.nlas.iter().find_map(|n| match n {
            Nla::TcpInfo(bytes) => idle(bytes),
            _ => None,
        }),
    }
}

/// How a reply's messages ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// More messages to receive.
    More,
    /// NLMSG_DONE or an ACK.
    Done,
    /// NLMSG_ERROR with this (negative) errno.
    Errno(i32),
}

/// Parses the messages of one received buffer into `rows`, those `keep`
/// wants. A socket in a reply to TCPDIAG_GETSOCK is the same
/// `inet_diag_msg` under the old type: it is retyped in place so that the
/// sock_diag crate parses it.
pub(crate) fn parse(buf: &mut [u8], rows: &mut Vec<Row>, keep: Keep) -> Result<End> {
    let mut offset = 0;
    while offset < buf.len() {
        let Some(&[l0, l1, l2, l3, t0, t1, ..]) = buf.get(offset..offset + NLMSG_HDRLEN) else {
            bail!(
                "sock_diag reply: {} bytes left, no message",
                buf.len() - offset
            );
        };
        let len = u32::from_ne_bytes([l0, l1, l2, l3]) as usize;
        // A zero length would never move past this message.
        if len < NLMSG_HDRLEN {
            bail!("sock_diag reply: a message of {len} bytes");
        }
        // Messages are 4-byte aligned (NLMSG_ALIGN).
        let next = offset + ((len + 3) & !3);
        let kind = u16::from_ne_bytes([t0, t1]);
        if kind == SOCK_DIAG_BY_FAMILY || kind == TCPDIAG_GETSOCK {
            if !keep.keeps(buf.get(offset + NLMSG_HDRLEN..).unwrap_or_default()) {
                offset = next;
                continue;
            }
            buf[offset + 4..offset + 6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        }
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..])
            .map_err(|e| anyhow!("sock_diag reply: {e}"))?;
        match msg.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(resp)) => {
                let retrans = buf
                    .get(offset + NLMSG_HDRLEN + IDIAG_RETRANS)
                    .copied()
                    .unwrap_or(0);
                rows.push(row(&resp, retrans));
            }
            NetlinkPayload::Done(_) => return Ok(End::Done),
            NetlinkPayload::Error(e) => {
                return Ok(e.code.map_or(End::Done, |c| End::Errno(c.get())));
            }
            _ => {}
        }
        offset = next;
    }
    Ok(End::More)
}

/// The answers a dump of a namespace gives for its probing sockets: probes
/// out for those under their keepalive timer, None for those the dump
/// does not have (gone, or closing), nothing for those under another timer
/// (data in flight: the probes out are not told).
pub fn match_dump(probing: &[&Probing], rows: &[Row], ts_ns: u64) -> Vec<Answer> {
    let by_tuple: HashMap<(IpAddr, u16, IpAddr, u16), &Row> = rows
        .iter()
        .map(|r| ((r.saddr, r.sport, r.daddr, r.dport), r))
        .collect();
    probing
        .iter()
        .filter_map(|p| {
            let probes_out = match by_tuple.get(&(p.saddr, p.sport, p.daddr, p.dport)) {
                None => None,
                Some(r) if r.keepalive.is_some() => Some(r.probes_out),
                Some(_) => return None,
            };
            Some(Answer {
                sk: p.sk,
                probes_out,
                ts_ns,
            })
        })
        .collect()
}

/// What a dump asks the kernel for.
#[derive(Debug, Clone, Copy)]
enum Query {
    /// The sockets in `keepalive_states`; the header says all kat needs.
    Keepalive,
    /// The established sockets with their tcp_info, for idle times.
    Idle,
}

impl Query {
    fn states(self) -> StateFlags {
        match self {
            Query::Keepalive => keepalive_states(),
            Query::Idle => StateFlags::ESTABLISHED,
        }
    }

    fn extensions(self) -> ExtensionFlags {
        match self {
            Query::Keepalive => ExtensionFlags::empty(),
            Query::Idle => ExtensionFlags::INFO,
        }
    }
}

/// A request for a dump of the TCP sockets of both families, in one walk
/// (TCPDIAG_GETSOCK with AF_UNSPEC). netlink-packet-sock-diag builds only
/// the newer request, so this one is laid out here.
fn dump_request(query: Query) -> Vec<u8> {
    let len = NLMSG_HDRLEN + INET_DIAG_REQ_LEN;
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    // Sequence and port: 0, as for every request of this socket.
    buf.extend_from_slice(&[0; 8]);
    // AF_UNSPEC, no address lengths, the extensions, a zero socket id.
    buf.extend_from_slice(&[0, 0, 0, query.extensions().bits()]);
    buf.extend_from_slice(&[0; 48]);
    buf.extend_from_slice(&query.states().bits().to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf
}

/// Sends one TCP request; `flags` adds NLM_F_DUMP for a dump of one family.
fn send(
    socket: &Socket,
    flags: u16,
    family: u8,
    (states, extensions): (StateFlags, ExtensionFlags),
    socket_id: SocketId,
) -> Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions,
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

/// A sock_diag socket holds the network namespace it was made in: one
/// unused this long is closed, so that a namespace deleted on the host (a
/// container gone, a lab torn down) is freed, and the cache stays as
/// small as the namespaces in use.
pub const CLOSE_UNUSED_AFTER: Duration = Duration::from_secs(5);

/// A namespace's socket (None: it could not be made) and when it was
/// last used.
struct Cached {
    socket: Option<Socket>,
    used: Instant,
}

/// One sock_diag socket per network namespace, opened on first use and
/// closed when unused ([`CLOSE_UNUSED_AFTER`]).
#[derive(Default)]
pub struct Diag {
    by_netns: HashMap<u32, Cached>,
    dumped: HashMap<u32, Instant>,
    /// The kernel refused the one dump for both families: a dump per
    /// family (SOCK_DIAG_BY_FAMILY) instead.
    per_family: bool,
}

fn netns_inode(path: &str) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

/// A handle on the network namespace with this inode: a named one
/// (/run/netns) or one a process lives in.
pub fn open_netns(inode: u32) -> Option<OwnedFd> {
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

/// The network namespace kat itself runs in.
pub fn own_netns() -> Option<u32> {
    netns_inode("/proc/self/ns/net")
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

/// Receives a reply into `rows` until it ends; a reply to a request for
/// one socket (not `dump`) is one message.
fn receive(socket: &Socket, dump: bool, rows: &mut Vec<Row>, keep: Keep) -> Result<End> {
    let mut reply = vec![0; 64 * 1024];
    loop {
        let n = socket
            .recv(&mut &mut reply[..], 0)
            .context("sock_diag recv")?;
        if n == 0 {
            bail!("sock_diag recv: an empty reply");
        }
        match parse(&mut reply[..n], rows, keep)? {
            End::More if dump => {}
            End::More => return Ok(End::Done),
            end => return Ok(end),
        }
    }
}

/// Namespaces with more probing sockets than this are dumped once rather
/// than asked about socket by socket.
const DUMP_ABOVE: usize = 64;
/// A dump walks the kernel's whole established hash and every socket of
/// the namespace: at most one a second per namespace. Sockets skipped are
/// asked again after their next wait (Tracker::due_for_answer).
const DUMP_EVERY: Duration = Duration::from_secs(1);

impl Diag {
    /// The TCP sockets of a namespace that `query` asks for and `keep`
    /// wants.
    fn dump(&mut self, netns: u32, query: Query, keep: Keep) -> Result<Vec<Row>> {
        let per_family = self.per_family;
        let socket = self
            .socket(netns)
            .ok_or_else(|| anyhow!("no sock_diag socket for netns {netns}"))?;
        let mut rows = Vec::new();
        if !per_family {
            socket
                .send(&dump_request(query), 0)
                .context("sock_diag send")?;
            match receive(socket, true, &mut rows, keep)? {
                End::Errno(e) => {
                    log::info!("sock_diag: TCPDIAG_GETSOCK refused (errno {e}): one dump per family from now on");
                    self.per_family = true;
                    return self.dump(netns, query, keep);
                }
                _ => return Ok(rows),
            }
        }
        for family in [AF_INET, AF_INET6] {
            let socket_id = if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            };
            let what = (query.states(), query.extensions());
            send(socket, NLM_F_DUMP, family, what, socket_id)?;
            if let End::Errno(e) = receive(socket, true, &mut rows, keep)? {
                bail!("sock_diag dump: errno {e}");
            }
        }
        Ok(rows)
    }

    /// For `kat doctor`: whether this kernel dumps both families in one
    /// walk (false: kat dumps per family). Err when no dump works at all.
    pub fn one_walk_for_both_families() -> Result<bool> {
        let mut diag = Diag::default();
        let netns = netns_inode("/proc/self/ns/net")
            .ok_or_else(|| anyhow!("cannot read /proc/self/ns/net"))?;
        diag.keepalive_sockets(netns, &[])?;
        Ok(!diag.per_family)
    }

    /// Every TCP socket of a namespace whose keepalive timer is pending,
    /// with one of `ports` at either end (all when empty).
    pub fn keepalive_sockets(&mut self, netns: u32, ports: &[u16]) -> Result<Vec<KeepaliveSocket>> {
        let keep = Keep {
            keepalive_only: true,
            ports,
        };
        Ok(self
            .dump(netns, Query::Keepalive, keep)?
            .iter()
            .filter_map(|r| KeepaliveSocket::of(netns, r))
            .collect())
    }

    /// The established connections of `netns` silent for at least `over`
    /// (with one of `ports`, all when empty). Every established socket's
    /// tcp_info is parsed: this is for a listing on demand, not a poll.
    pub fn idle_sockets(
        &mut self,
        netns: u32,
        ports: &[u16],
        over: Duration,
    ) -> Result<Vec<IdleSocket>> {
        let keep = Keep {
            keepalive_only: false,
            ports,
        };
        Ok(self
            .dump(netns, Query::Idle, keep)?
            .into_iter()
            .filter_map(|socket| {
                let idle = socket.idle.filter(|&i| i >= over)?;
                Some(IdleSocket {
                    netns,
                    idle,
                    socket,
                })
            })
            .collect())
    }

    fn socket(&mut self, netns: u32) -> Option<&mut Socket> {
        let cached = self.by_netns.entry(netns).or_insert_with(|| {
            let result = if netns_inode("/proc/self/ns/net") == Some(netns) {
                open_socket()
            } else {
                open_netns(netns)
                    .ok_or_else(|| anyhow!("no handle on network namespace {netns}"))
                    .and_then(open_socket_in)
            };
            Cached {
                socket: result
                    .map_err(|e| log::debug!("sock_diag for netns {netns}: {e:#}"))
                    .ok(),
                used: Instant::now(),
            }
        });
        cached.used = Instant::now();
        cached.socket.as_mut()
    }

    /// Closes the sockets unused for [`CLOSE_UNUSED_AFTER`] at `now`, and
    /// forgets dumps as old (past DUMP_EVERY, they limit nothing).
    pub fn close_unused(&mut self, now: Instant) {
        self.by_netns
            .retain(|_, c| now.duration_since(c.used) < CLOSE_UNUSED_AFTER);
        self.dumped
            .retain(|_, at| now.duration_since(*at) < CLOSE_UNUSED_AFTER);
    }

    /// One socket of `netns` by its addresses and ports, or None when the
    /// kernel no longer has it.
    fn one(
        &mut self,
        netns: u32,
        saddr: IpAddr,
        sport: u16,
        daddr: IpAddr,
        dport: u16,
    ) -> Result<Option<Row>> {
        let socket = self
            .socket(netns)
            .ok_or_else(|| anyhow!("no sock_diag socket for netns {netns}"))?;
        let family = if saddr.is_ipv4() { AF_INET } else { AF_INET6 };
        let socket_id = SocketId {
            source_port: sport,
            destination_port: dport,
            source_address: saddr,
            destination_address: daddr,
            interface_id: 0,
            // INET_DIAG_NOCOOKIE: match on the tuple alone.
            cookie: [0xff; 8],
        };
        let what = (StateFlags::all(), ExtensionFlags::empty());
        send(socket, 0, family, what, socket_id)?;
        let mut rows = Vec::new();
        match receive(socket, false, &mut rows, Keep::default())? {
            End::Errno(e) if e == -libc::ENOENT => Ok(None),
            End::Errno(e) => bail!("sock_diag request: errno {e}"),
            _ => match rows.pop() {
                Some(r) => Ok(Some(r)),
                None => bail!("sock_diag request: no reply"),
            },
        }
    }

    /// The socket's probes out, None when the kernel no longer has it, or
    /// an error when sock_diag cannot tell.
    fn probes_out(&mut self, p: &Probing) -> Result<Option<u8>> {
        match self.one(p.netns, p.saddr, p.sport, p.daddr, p.dport)? {
            None => Ok(None),
            Some(r) if r.keepalive.is_some() => Ok(Some(r.probes_out)),
            Some(_) => bail!("not under its keepalive timer: probes out not told"),
        }
    }

    /// The sockets of an earlier snapshot as they are now, asked about one
    /// by one (a lookup each in the kernel, where a dump walks every
    /// socket of the host): those gone, or no longer under their keepalive
    /// timer, drop out.
    pub fn refresh(&mut self, known: &[KeepaliveSocket]) -> Vec<KeepaliveSocket> {
        known
            .iter()
            .filter_map(|k| {
                let s = &k.socket;
                match self.one(k.netns, s.saddr, s.sport, s.daddr, s.dport) {
                    Ok(row) => KeepaliveSocket::of(k.netns, &row?),
                    Err(e) => {
                        log::debug!("sock_diag refresh: {e:#}");
                        None
                    }
                }
            })
            .collect()
    }

    /// Answers for the probing sockets: per namespace one dump when many
    /// probe there, else one request per socket.
    pub fn answers(&mut self, probing: &[Probing]) -> Vec<Answer> {
        let mut by_netns: HashMap<u32, Vec<&Probing>> = HashMap::new();
        for p in probing {
            by_netns.entry(p.netns).or_default().push(p);
        }
        let mut out = Vec::new();
        for (netns, group) in by_netns {
            if group.len() > DUMP_ABOVE {
                let recent = self
                    .dumped
                    .get(&netns)
                    .is_some_and(|t| t.elapsed() < DUMP_EVERY);
                if recent {
                    continue;
                }
                self.dumped.insert(netns, Instant::now());
                // Every socket: one under another timer is there, not gone.
                match self.dump(netns, Query::Keepalive, Keep::default()) {
                    Ok(rows) => {
                        out.extend(match_dump(&group, &rows, crate::kernel::monotonic_now_ns()))
                    }
                    Err(e) => log::debug!("sock_diag dump of netns {netns}: {e:#}"),
                }
                continue;
            }
            for p in group {
                match self.probes_out(p) {
                    Ok(probes_out) => out.push(Answer {
                        sk: p.sk,
                        probes_out,
                        ts_ns: crate::kernel::monotonic_now_ns(),
                    }),
                    Err(e) => log::debug!("sock_diag: {e:#}"),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::DoneMessage;
    use netlink_packet_sock_diag::inet::InetResponseHeader;

    fn serialize(payload: NetlinkPayload<SockDiagMessage>) -> Vec<u8> {
        let mut msg = NetlinkMessage::new(NetlinkHeader::default(), payload);
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    /// One socket as the kernel would send it, `retrans` in idiag_retrans.
    fn response(sport: u16, timer: Option<Timer>, retrans: u8) -> Vec<u8> {
        let resp = InetResponse {
            header: InetResponseHeader {
                family: AF_INET,
                state: 1,
                timer,
                socket_id: SocketId {
                    source_port: sport,
                    destination_port: 40000,
                    source_address: "198.18.0.1".parse().expect("addr"),
                    destination_address: "198.18.0.2".parse().expect("addr"),
                    interface_id: 0,
                    cookie: [0; 8],
                },
                recv_queue: 0,
                send_queue: 0,
                uid: 1000,
                inode: 4242,
            },
            nlas: Default::default(),
        };
        let mut buf = serialize(NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(
            Box::new(resp),
        )));
        buf[NLMSG_HDRLEN + IDIAG_RETRANS] = retrans;
        buf
    }

    fn done() -> Vec<u8> {
        serialize(NetlinkPayload::Done(DoneMessage::default()))
    }

    #[test]
    fn probes_out_come_from_idiag_retrans_under_the_keepalive_timer() {
        let mut buf = response(6699, Some(Timer::KeepAlive(Duration::from_secs(3))), 2);
        buf.extend(response(
            6700,
            Some(Timer::Retransmit(Duration::ZERO, 5)),
            5,
        ));
        let mut rows = Vec::new();
        assert_eq!(
            parse(&mut buf, &mut rows, Keep::default()).expect("parse"),
            End::More
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].keepalive, Some(Duration::from_secs(3)));
        assert_eq!(rows[0].probes_out, 2);
        assert_eq!(rows[0].inode, 4242);
        // Retransmissions are not keepalive probes.
        assert_eq!((rows[1].keepalive, rows[1].probes_out), (None, 0));
        assert_eq!(KeepaliveSocket::of(7, &rows[1]), None);
        assert_eq!(KeepaliveSocket::of(7, &rows[0]).map(|k| k.netns), Some(7));
    }

    #[test]
    fn a_dump_ends_at_done() {
        let mut buf = response(6699, None, 0);
        buf.extend(done());
        buf.extend(response(6700, None, 0));
        let mut rows = Vec::new();
        assert_eq!(
            parse(&mut buf, &mut rows, Keep::default()).expect("parse"),
            End::Done
        );
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn a_zero_length_message_is_an_error_not_a_hang() {
        let mut buf = response(6699, None, 0);
        buf[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse(&mut buf, &mut Vec::new(), Keep::default()).is_err());
    }

    #[test]
    fn a_snapshot_parses_only_keepalive_sockets_with_a_wanted_port() {
        let keepalive = || Some(Timer::KeepAlive(Duration::from_secs(1)));
        let mut buf = response(6699, keepalive(), 0);
        buf.extend(response(
            6699,
            Some(Timer::Retransmit(Duration::ZERO, 1)),
            1,
        ));
        buf.extend(response(6699, None, 0));
        buf.extend(response(7000, keepalive(), 0));
        // The peer's port (40000) counts too.
        buf.extend(response(7001, keepalive(), 0));
        let parsed = |keep| {
            let mut rows = Vec::new();
            parse(&mut buf.clone(), &mut rows, keep).expect("parse");
            rows.iter().map(|r| r.sport).collect::<Vec<_>>()
        };
        assert_eq!(parsed(Keep::default()), [6699, 6699, 6699, 7000, 7001]);
        let keepalive_only = Keep {
            keepalive_only: true,
            ports: &[],
        };
        assert_eq!(parsed(keepalive_only), [6699, 7000, 7001]);
        let ports = Keep {
            keepalive_only: true,
            ports: &[6699, 7000],
        };
        assert_eq!(parsed(ports), [6699, 7000]);
        let peer = Keep {
            keepalive_only: true,
            ports: &[40000],
        };
        assert_eq!(parsed(peer), [6699, 7000, 7001]);
    }

    #[test]
    fn a_message_cut_short_is_an_error() {
        let mut buf = response(6699, None, 0);
        assert!(parse(
            &mut buf[..NLMSG_HDRLEN - 2],
            &mut Vec::new(),
            Keep::default()
        )
        .is_err());
    }

    #[test]
    fn the_dump_request_is_an_inet_diag_req_for_both_families() {
        let req = dump_request(Query::Keepalive);
        assert_eq!(req.len(), 76);
        assert_eq!(u32::from_ne_bytes(req[..4].try_into().expect("4")), 76);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), TCPDIAG_GETSOCK);
        assert_eq!(req[NLMSG_HDRLEN], 0, "AF_UNSPEC");
        let states = u32::from_ne_bytes(req[68..72].try_into().expect("4"));
        assert_eq!(states, keepalive_states().bits());
        assert_eq!(states & (1 << 10), 0, "no LISTEN");
        assert_eq!(req[NLMSG_HDRLEN + 3], 0, "no extensions");
        let idle = dump_request(Query::Idle);
        assert_eq!(idle[NLMSG_HDRLEN + 3], 1 << 1, "INET_DIAG_INFO");
        let states = u32::from_ne_bytes(idle[68..72].try_into().expect("4"));
        assert_eq!(states, 1 << 1, "ESTABLISHED only");
    }

    #[test]
    fn idle_is_the_least_of_last_sent_received_and_acked() {
        let mut info = vec![0u8; 104];
        let mut put = |at: usize, ms: u32| info[at..at + 4].copy_from_slice(&ms.to_ne_bytes());
        put(TCPI_LAST_DATA_SENT, 90_000);
        put(TCPI_LAST_DATA_RECV, 120_000);
        put(TCPI_LAST_ACK_RECV, 75_000);
        assert_eq!(idle(&info), Some(Duration::from_secs(75)));
        assert_eq!(idle(&info[..50]), None, "a tcp_info cut short");
    }

    #[test]
    fn a_socket_in_a_reply_to_the_old_request_is_parsed_like_a_new_one() {
        let keepalive = Some(Timer::KeepAlive(Duration::from_secs(1)));
        let mut buf = response(6699, keepalive, 1);
        buf[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
        buf.extend(response(7000, None, 0));
        let mut rows = Vec::new();
        parse(&mut buf, &mut rows, Keep::default()).expect("parse");
        let got: Vec<(u16, u8)> = rows.iter().map(|r| (r.sport, r.probes_out)).collect();
        assert_eq!(got, [(6699, 1), (7000, 0)]);
    }

    fn probing(sk: u64, sport: u16) -> Probing {
        Probing {
            sk,
            netns: 7,
            saddr: "198.18.0.1".parse().expect("addr"),
            sport,
            daddr: "198.18.0.2".parse().expect("addr"),
            dport: 40000,
        }
    }

    #[test]
    fn a_dump_answers_the_probing_sockets_by_tuple() {
        let mut buf = response(1, Some(Timer::KeepAlive(Duration::from_secs(1))), 0);
        buf.extend(response(
            2,
            Some(Timer::KeepAlive(Duration::from_secs(1))),
            1,
        ));
        buf.extend(response(3, Some(Timer::Retransmit(Duration::ZERO, 1)), 1));
        buf.extend(response(
            9,
            Some(Timer::KeepAlive(Duration::from_secs(1))),
            0,
        ));
        let mut rows = Vec::new();
        parse(&mut buf, &mut rows, Keep::default()).expect("parse");
        let probing = [
            probing(10, 1),
            probing(20, 2),
            probing(30, 3),
            probing(40, 4),
        ];
        let asked: Vec<&Probing> = probing.iter().collect();
        let answers = match_dump(&asked, &rows, 5);
        let got: Vec<(u64, Option<u8>)> = answers.iter().map(|a| (a.sk, a.probes_out)).collect();
        // 10 answered, 20 still out, 30 not told (data in flight), 40 gone;
        // the socket on port 9 was not asked about.
        assert_eq!(got, vec![(10, Some(0)), (20, Some(1)), (40, None)]);
        assert!(answers.iter().all(|a| a.ts_ns == 5));
    }

    /// A connected pair on loopback with keepalive on the client; the
    /// listener is returned too so that the server end stays.
    fn keepalive_pair(addr: &str) -> (std::net::TcpListener, socket2::Socket, u16) {
        let listener = std::net::TcpListener::bind(addr).expect("bind");
        let server = listener.local_addr().expect("addr");
        let client = socket2::Socket::new(
            socket2::Domain::for_address(server),
            socket2::Type::STREAM,
            None,
        )
        .expect("socket");
        client.set_keepalive(true).expect("SO_KEEPALIVE");
        client.connect(&server.into()).expect("connect");
        (listener, client, server.port())
    }

    /// The real kernel (no root: sock_diag dumps are open to any user):
    /// one dump lists the keepalive sockets of both families, and so do
    /// the dumps per family that kat falls back to where the kernel
    /// refuses the one.
    #[test]
    fn a_socket_unused_for_a_while_is_closed_and_its_namespace_let_go() {
        let own = netns_inode("/proc/self/ns/net").expect("own namespace");
        let mut diag = Diag::default();
        assert!(
            diag.socket(own).is_some(),
            "a sock_diag socket, no root needed"
        );
        let used = diag.by_netns[&own].used;
        diag.close_unused(used + CLOSE_UNUSED_AFTER - Duration::from_millis(1));
        assert!(diag.by_netns.contains_key(&own), "still in use");
        diag.close_unused(used + CLOSE_UNUSED_AFTER);
        assert!(diag.by_netns.is_empty(), "closed once unused");
        // Asked again, it is made anew.
        assert!(diag.socket(own).is_some());
    }

    #[test]
    fn one_dump_lists_both_families() {
        both_families_listed(false);
        assert!(Diag::one_walk_for_both_families().expect("a dump"));
    }

    /// The real kernel: a connection silent for over a second is listed
    /// with its idle time, both ends; once data crosses it is not.
    #[test]
    fn idle_connections_are_listed_with_their_idle_time() {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        let netns = netns_inode("/proc/self/ns/net").expect("own netns");
        let mut diag = Diag::default();
        let over = Duration::from_millis(1200);
        std::thread::sleep(Duration::from_millis(1500));
        let listed = diag.idle_sockets(netns, &[port], over).expect("dump");
        assert_eq!(listed.len(), 2, "both ends: {listed:?}");
        assert!(listed
            .iter()
            .all(|s| s.idle >= over && s.idle < Duration::from_secs(30)));
        assert!(listed.iter().all(|s| s.socket.keepalive.is_none()));
        client.write_all(b"x").expect("write");
        let mut byte = [0];
        server.read_exact(&mut byte).expect("read");
        std::thread::sleep(Duration::from_millis(100));
        let listed = diag.idle_sockets(netns, &[port], over).expect("dump");
        assert!(listed.is_empty(), "data crossed: {listed:?}");
    }

    #[test]
    fn dumps_per_family_list_both_families() {
        both_families_listed(true);
    }

    fn both_families_listed(per_family: bool) {
        let (_l4, _c4, p4) = keepalive_pair("127.0.0.1:0");
        let (_l6, _c6, p6) = keepalive_pair("[::1]:0");
        let netns = netns_inode("/proc/self/ns/net").expect("own netns");
        let mut diag = Diag {
            per_family,
            ..Diag::default()
        };
        let found = diag
            .keepalive_sockets(netns, &[p4, p6])
            .expect("sock_diag dump");
        let mut got: Vec<(IpAddr, u16)> = found
            .iter()
            .map(|k| (k.socket.daddr, k.socket.dport))
            .collect();
        got.sort();
        let want: Vec<(IpAddr, u16)> = vec![
            ("127.0.0.1".parse().expect("v4"), p4),
            ("::1".parse().expect("v6"), p6),
        ];
        assert_eq!(got, want, "only the clients have keepalive on");
    }
}
