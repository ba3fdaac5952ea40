//! Flows this host's own conntrack forgot while they were established
//! (`--conntrack`): where kat runs on the NAT gateway or stateful firewall
//! itself, the kernel tells the moment it drops an idle flow's entry
//! (ctnetlink's destroy events), rather than kat inferring it from a
//! death later.
//!
//! Subscribing costs the host a message for every conntrack entry that
//! ends, so it is asked for, not the default. The kernel tags an entry for
//! events when it is created and a listener exists (`nf_conntrack_events`
//! 2, the default): flows older than the subscription are told only where
//! the sysctl is 1. Before Linux 5.11 a destroy event carries no TCP
//! state, so a flow forgotten while established cannot be told from one
//! that closed: `--conntrack` refuses such kernels and says why.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context as _, Result};
use chrono::{DateTime, Utc};
use netlink_packet_core::{NetlinkBuffer, NlaBuffer, NlasIterator};
use netlink_sys::{Socket, SocketAddr};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::diag::{open_netns, visible_netns};
use crate::event::rfc3339;

const NETLINK_NETFILTER: isize = 12;
/// NFNLGRP_CONNTRACK_DESTROY, as a bit of the bind's group mask.
const DESTROY_GROUP: u32 = 1 << (3 - 1);
/// NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE.
const CT_DELETE: u16 = (1 << 8) | 2;
const NFGENMSG_LEN: usize = 4;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const IPPROTO_TCP: u8 = 6;
const TCP_CONNTRACK_ESTABLISHED: u8 = 3;

/// The first kernel whose destroy events carry the TCP state
/// ("netfilter: ctnetlink: add timeout and protoinfo to destroy events").
const TCP_STATE_TOLD_FROM: (u32, u32) = (5, 11);

/// Namespaces watched at most: a socket each.
const MAX_NAMESPACES: usize = 256;
/// Expiries waiting for the view at most; more are counted as lost.
const QUEUE: usize = 4096;

/// One direction of a flow as conntrack keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuple {
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

/// An established TCP flow whose conntrack entry the kernel dropped on its
/// own (its idle timeout ran out), not one a process deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "conntrack_expired")]
pub struct Expired {
    /// When kat was told: at the expiry, or at the flow's next packet,
    /// which finds the entry expired (whichever the kernel notices first).
    #[serde(serialize_with = "rfc3339")]
    pub ts: DateTime<Utc>,
    /// The namespace whose conntrack forgot it (the gateway's).
    pub netns: u32,
    /// The flow as its first packet went: client to server.
    #[serde(flatten)]
    pub orig: Tuple,
    /// The answers' direction as the gateway expected them; a NAT shows
    /// here (its outside address and port as the destination).
    pub reply: Tuple,
    /// That namespace's `net.netfilter.nf_conntrack_tcp_timeout_established`
    /// when kat was told: the silence after which it forgets a flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established_timeout_s: Option<u32>,
}

impl Expired {
    /// `--port` matches either end of the original direction.
    fn wanted(&self, ports: &[u16]) -> bool {
        ports.is_empty() || ports.contains(&self.orig.sport) || ports.contains(&self.orig.dport)
    }
}

/// The expired established TCP flows in one datagram of ctnetlink
/// messages; anything else (other protocols, flows that ended with a FIN
/// or RST, entries a process deleted, malformed messages) is skipped.
pub fn parse(datagram: &[u8], netns: u32, ts: DateTime<Utc>) -> Vec<Expired> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while let Ok(msg) = NetlinkBuffer::new_checked(rest) {
        let len = msg.length() as usize;
        // A process's delete carries its netlink port; the kernel's own, 0.
        if msg.message_type() == CT_DELETE && msg.port_number() == 0 {
            if let Some(payload) = msg.payload().get(NFGENMSG_LEN..) {
                out.extend(expired(payload, netns, ts));
            }
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    out
}

fn attrs(buf: &[u8]) -> impl Iterator<Item = NlaBuffer<&[u8]>> {
    NlasIterator::new(buf).map_while(|a| a.ok())
}

/// The value of the first attribute of this kind (its header of 4 bytes
/// off: the iterator checked that the length fits).
fn attr(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|a| a.kind() == kind).and_then(|a| {
        let len = usize::from(a.length());
        a.into_inner().get(4..len)
    })
}

fn expired(payload: &[u8], netns: u32, ts: DateTime<Utc>) -> Option<Expired> {
    let state = attr(payload, CTA_PROTOINFO)
        .and_then(|p| attr(p, CTA_PROTOINFO_TCP))
        .and_then(|t| attr(t, CTA_PROTOINFO_TCP_STATE))
        .and_then(|s| s.first().copied())?;
    if state != TCP_CONNTRACK_ESTABLISHED {
        return None;
    }
    let orig = tuple(attr(payload, CTA_TUPLE_ORIG)?)?;
    let reply = tuple(attr(payload, CTA_TUPLE_REPLY)?)?;
    Some(Expired {
        ts,
        netns,
        orig,
        reply,
        established_timeout_s: None,
    })
}

fn tuple(buf: &[u8]) -> Option<Tuple> {
    let ip = attr(buf, CTA_TUPLE_IP)?;
    let proto = attr(buf, CTA_TUPLE_PROTO)?;
    if attr(proto, CTA_PROTO_NUM)?.first() != Some(&IPPROTO_TCP) {
        return None;
    }
    let (saddr, daddr) = match (attr(ip, CTA_IP_V4_SRC), attr(ip, CTA_IP_V4_DST)) {
        (Some(s), Some(d)) => (v4(s)?, v4(d)?),
        _ => (v6(attr(ip, CTA_IP_V6_SRC)?)?, v6(attr(ip, CTA_IP_V6_DST)?)?),
    };
    Some(Tuple {
        saddr,
        sport: port(attr(proto, CTA_PROTO_SRC_PORT)?)?,
        daddr,
        dport: port(attr(proto, CTA_PROTO_DST_PORT)?)?,
    })
}

fn v4(b: &[u8]) -> Option<IpAddr> {
    <[u8; 4]>::try_from(b).ok().map(IpAddr::from)
}

fn v6(b: &[u8]) -> Option<IpAddr> {
    <[u8; 16]>::try_from(b).ok().map(IpAddr::from)
}

fn port(b: &[u8]) -> Option<u16> {
    <[u8; 2]>::try_from(b).ok().map(u16::from_be_bytes)
}

/// One namespace's conntrack as kat watches it.
struct Gateway {
    netns: u32,
    socket: Socket,
    /// Its idle timeout for established flows, opened in the namespace (a
    /// sysctl file stays bound to the namespace it was opened in); none
    /// where conntrack was not loaded there yet.
    timeout: Option<File>,
}

impl Gateway {
    fn timeout_s(&self) -> Option<u32> {
        let mut buf = [0u8; 16];
        let n = self.timeout.as_ref()?.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
    }
}

/// Watches the current network namespace's conntrack.
fn gateway(netns: u32) -> Result<Gateway> {
    Ok(Gateway {
        netns,
        socket: subscribe()?,
        timeout: File::open("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established").ok(),
    })
}

/// A socket subscribed to conntrack's destroy events in the current
/// network namespace.
fn subscribe() -> Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER).context("netfilter netlink socket")?;
    socket
        .bind(&SocketAddr::new(0, DESTROY_GROUP))
        .context("subscribe to conntrack's destroy events (CAP_NET_ADMIN)")?;
    // Room for a burst of ends on a busy gateway; an overflow is counted.
    let _ = socket.set_rx_buf_sz(4 << 20);
    socket.set_non_blocking(true).context("non-blocking")?;
    Ok(socket)
}

/// The same in another namespace (the socket stays where it was made).
fn gateway_in(netns: u32) -> Result<Gateway> {
    let fd = open_netns(netns).ok_or_else(|| anyhow!("netns {netns} is gone"))?;
    std::thread::spawn(move || {
        nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the namespace")?;
        gateway(netns)
    })
    .join()
    .map_err(|_| anyhow!("conntrack helper thread panicked"))?
}

/// Whether kat can be told of expiries here, for `kat doctor`.
pub fn available() -> Result<()> {
    tells_tcp_state(&crate::kernel::release())?;
    subscribe().map(drop)
}

/// (major, minor) of a kernel release (`6.1.0-56-cloud-amd64`).
fn version(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit());
    Some((numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?))
}

/// Refuses a kernel whose destroy events do not say whether the flow
/// was established; a release kat cannot read is given the benefit of
/// the doubt.
fn tells_tcp_state(release: &str) -> Result<()> {
    match version(release) {
        Some(v) if v < TCP_STATE_TOLD_FROM => Err(crate::exit::Failure::Unsupported(format!(
            "Linux {release} sends no TCP state with conntrack's destroy events \
             (5.11 and later do): a flow forgotten while established cannot be told \
             from one that closed"
        ))
        .into()),
        _ => Ok(()),
    }
}

/// The expiries, from a thread that reads every namespace's socket.
pub struct Watch {
    pub expired: mpsc::Receiver<Expired>,
    lost: Arc<AtomicU64>,
    /// The namespaces watched.
    pub namespaces: usize,
}

impl Watch {
    /// Subscribes in every namespace kat sees now (its own and the named
    /// ones), before kat gives up the capabilities that takes; namespaces
    /// made later are not watched.
    pub fn start(ports: Vec<u16>) -> Result<Self> {
        tells_tcp_state(&crate::kernel::release())?;
        let own = crate::diag::own_netns();
        let mut gateways = Vec::new();
        for netns in visible_netns().into_iter().take(MAX_NAMESPACES) {
            let gateway = if Some(netns) == own {
                gateway(netns)
            } else {
                gateway_in(netns)
            };
            match gateway {
                Ok(g) => gateways.push(g),
                Err(e) if Some(netns) == own => return Err(e),
                Err(e) => eprintln!("kat: conntrack of netns {netns} not watched: {e:#}"),
            }
        }
        let namespaces = gateways.len();
        let (tx, expired) = mpsc::channel(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let counted = lost.clone();
        crate::privilege::spawn("kat-conntrack", move || {
            relay(gateways, &ports, &tx, &counted)
        })?;
        Ok(Self {
            expired,
            lost,
            namespaces,
        })
    }

    /// Expiries kat could not keep: the socket's buffer overflowed (the
    /// kernel says only that some were dropped: counted as one) or the view
    /// fell behind.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// Hands each expiry of `--port` to the view until it is gone.
fn relay(gateways: Vec<Gateway>, ports: &[u16], tx: &mpsc::Sender<Expired>, lost: &AtomicU64) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds: Vec<PollFd> = gateways
            .iter()
            .map(|g| PollFd::new(g.socket.as_fd(), PollFlags::POLLIN))
            .collect();
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        for (g, ready) in gateways.iter().zip(ready) {
            if !ready {
                continue;
            }
            loop {
                match g.socket.recv(&mut &mut buf[..], 0) {
                    Ok(0) => break,
                    Ok(n) => {
                        for mut e in parse(&buf[..n], g.netns, Utc::now()) {
                            e.established_timeout_s = g.timeout_s();
                            if e.wanted(ports) && tx.try_send(e).is_err() {
                                lost.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_before_5_11_are_refused_by_name() {
        assert_eq!(version("5.10.0-32-cloud-amd64"), Some((5, 10)));
        assert_eq!(version("7.2.13+deb14-cloud-amd64"), Some((7, 2)));
        assert_eq!(version("6.18.44-fc-v1300"), Some((6, 18)));
        let why = tells_tcp_state("5.10.0-32-cloud-amd64").expect_err("5.10");
        assert!(why.to_string().contains("5.11 and later"), "{why}");
        assert_eq!(crate::exit::code(&why), crate::exit::UNSUPPORTED);
        assert!(tells_tcp_state("5.11.0").is_ok());
        assert!(tells_tcp_state("6.1.0-56-cloud-amd64").is_ok());
        assert!(tells_tcp_state("unknown").is_ok(), "not read: not refused");
    }

    /// A destroy event as Linux 6.18 sent it: 127.0.0.1:34640 → :6800,
    /// established, expired after 2 s of silence (nlmsg port 0).
    const EXPIRED_V4: &str = "9c000000020100000000000000000000020000003400018014000180080001007f000001080002007f0000011c00028005000100060000000600020087500000060003001a9000003400028014000180080001007f000001080002007f0000011c0002800500010006000000060002001a900000060003008750000008000c00fbe2911a080003000000020e100004800c0001800500010003000000";

    fn bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0))
            .collect()
    }

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000, 0).unwrap_or_default()
    }

    #[test]
    fn an_established_flow_the_kernel_dropped_is_told_with_both_directions() {
        let got = parse(&bytes(EXPIRED_V4), 7, at());
        let lo: IpAddr = "127.0.0.1".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(
            got,
            vec![Expired {
                ts: at(),
                netns: 7,
                orig: Tuple {
                    saddr: lo,
                    sport: 34640,
                    daddr: lo,
                    dport: 6800
                },
                reply: Tuple {
                    saddr: lo,
                    sport: 6800,
                    daddr: lo,
                    dport: 34640
                },
                established_timeout_s: None,
            }]
        );
        let json = serde_json::to_value(&got[0]).unwrap_or_default();
        assert_eq!(json["type"], "conntrack_expired");
        assert_eq!(json["sport"], 34640);
        assert_eq!(json["reply"]["dport"], 34640);
        let back: Expired = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, got[0]);
    }

    #[test]
    fn a_process_delete_or_an_ended_flow_is_not_an_expiry() {
        let mut by_process = bytes(EXPIRED_V4);
        by_process[12] = 0x2a; // nlmsg_pid: conntrack -D
        assert!(parse(&by_process, 7, at()).is_empty());
        let mut time_wait = bytes(EXPIRED_V4);
        let last = time_wait.len() - 4;
        time_wait[last] = 7; // TCP_CONNTRACK_TIME_WAIT
        assert!(parse(&time_wait, 7, at()).is_empty());
    }

    #[test]
    fn two_messages_in_a_datagram_are_both_read_and_a_port_selects_either_end() {
        let one = bytes(EXPIRED_V4);
        let two = [one.clone(), one].concat();
        let got = parse(&two, 7, at());
        assert_eq!(got.len(), 2);
        assert!(got[0].wanted(&[6800]) && got[0].wanted(&[34640]) && got[0].wanted(&[]));
        assert!(!got[0].wanted(&[22]));
    }

    proptest::proptest! {
        /// Whatever the kernel (or a corrupted buffer) hands over: no panic.
        #[test]
        fn any_bytes_parse_without_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
                                         cut in 0usize..156) {
            let _ = parse(&data, 1, at());
            let real = bytes(EXPIRED_V4);
            let _ = parse(&real[..cut], 1, at());
            let mut flipped = real.clone();
            flipped[cut] ^= data.first().copied().unwrap_or(0xff);
            let _ = parse(&flipped, 1, at());
        }
    }
}
