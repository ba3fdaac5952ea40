//! Network namespaces by name (`/run/netns/NAME`), as the labs use them:
//! made and removed with iproute2, joined by veth pairs, packets dropped
//! with nftables, code and sockets run inside one. Every step returns an
//! error rather than panicking: the scenarios' [`crate::netns::Lab`]
//! panics on one, the load generators and `kat demo` report it.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};

use crate::spawn::starting;

/// Runs a command; an error names it and what it printed on stderr.
pub fn command(cmd: &[&str]) -> io::Result<()> {
    let out = {
        let _starting = starting();
        Command::new(cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot run {} (is iproute2/nftables installed?): {e}",
                        cmd[0]
                    ),
                )
            })?
    };
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{}` failed ({}): {}",
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// `ip` with space-separated arguments.
pub fn ip(args: &str) -> io::Result<()> {
    let mut cmd = vec!["ip"];
    cmd.extend(args.split_whitespace());
    command(&cmd)
}

/// An nftables script run in namespace `ns`.
pub fn nft(ns: &str, script: &str) -> io::Result<()> {
    command(&["ip", "netns", "exec", ns, "nft", script])
}

/// Sets a sysctl inside namespace `ns` (`sysctl -w KEY=VALUE`).
pub fn sysctl(ns: &str, key: &str, value: &str) -> io::Result<()> {
    ip(&format!("netns exec {ns} sysctl -qw {key}={value}"))
}

/// A new namespace with its loopback up.
pub fn add(name: &str) -> io::Result<()> {
    ip(&format!("netns add {name}"))?;
    ip(&format!("-n {name} link set lo up"))
}

/// Removes a namespace; its sockets go once the last of them is freed.
pub fn del(name: &str) -> io::Result<()> {
    ip(&format!("netns del {name}"))
}

/// The namespace's inode: events carry it as `netns`.
pub fn inode(name: &str) -> io::Result<u64> {
    std::fs::metadata(format!("/run/netns/{name}")).map(|m| m.ino())
}

/// A veth pair, both ends named `name`, from namespace `a.0` to `b.0`,
/// each end up with its addresses (`198.18.0.1/24`, `fd00::1/64`; IPv6
/// ones without duplicate address detection, usable at once).
pub fn veth(name: &str, a: (&str, &[&str]), b: (&str, &[&str])) -> io::Result<()> {
    ip(&format!(
        "-n {} link add {name} type veth peer name {name} netns {}",
        a.0, b.0
    ))?;
    for (ns, addrs) in [a, b] {
        for addr in addrs {
            let nodad = if addr.contains(':') { " nodad" } else { "" };
            ip(&format!("-n {ns} addr add {addr} dev {name}{nodad}"))?;
        }
        ip(&format!("-n {ns} link set {name} up"))?;
    }
    Ok(())
}

/// Drops every packet in and out of namespace `ns` (nftables table
/// `table`): a dead host, whose sockets still think they are alive.
pub fn drop_all(ns: &str, table: &str) -> io::Result<()> {
    nft(
        ns,
        &format!(
            "add table inet {table}; \
             add chain inet {table} in {{ type filter hook input priority 0; policy drop; }}; \
             add chain inet {table} out {{ type filter hook output priority 0; policy drop; }}"
        ),
    )
}

/// Moves the calling thread into namespace `ns` (None: stays where it is).
pub fn enter(ns: Option<&str>) -> io::Result<()> {
    let Some(ns) = ns else { return Ok(()) };
    let file = std::fs::File::open(format!("/run/netns/{ns}"))?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Runs `f` on a thread inside `ns` (None: this one): the sockets it
/// creates live there.
pub fn within<T: Send + 'static>(
    ns: Option<&str>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = ns.map(str::to_owned);
    std::thread::spawn(move || {
        enter(ns.as_deref())?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}

/// A listener in namespace `ns`.
pub fn listen(ns: Option<&str>, addr: SocketAddr) -> io::Result<TcpListener> {
    within(ns, move || TcpListener::bind(addr))
}

/// SO_KEEPALIVE with TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT.
pub fn set_keepalive(s: &Socket, (idle_s, intvl_s, count): (u64, u64, u32)) -> io::Result<()> {
    let ka = TcpKeepalive::new()
        .with_time(Duration::from_secs(idle_s))
        .with_interval(Duration::from_secs(intvl_s))
        .with_retries(count);
    s.set_tcp_keepalive(&ka)
}

/// A connection from this thread's namespace, with keepalive (idle,
/// interval, count) if given, waiting at most `timeout` for the peer.
pub fn connect(
    addr: SocketAddr,
    keepalive: Option<(u64, u64, u32)>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let Some(ka) = keepalive {
        set_keepalive(&s, ka)?;
    }
    s.connect_timeout(&addr.into(), timeout)?;
    Ok(s.into())
}

/// Closes a socket with SO_LINGER 0: a RST instead of a FIN.
pub fn abort(s: TcpStream) -> io::Result<()> {
    SockRef::from(&s).set_linger(Some(Duration::ZERO))
}
