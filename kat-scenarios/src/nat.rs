//! A NAT that forgets idle flows, as seed 001 tells it: a `client`
//! namespace (198.18.20.1) behind a `router` namespace that masquerades it
//! towards a `server` namespace (198.18.21.2). The router's conntrack keeps
//! an established flow for a few seconds of silence only (a per-namespace
//! sysctl), and with `nf_conntrack_tcp_loose` 0 a packet of a flow it has
//! forgotten is invalid and dropped: neither end is told. In the test
//! VMs too, whose init loads the kernel's netfilter and veth modules.

use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use socket2::{Domain, Socket, Type};

use crate::kat::{self, now, ts, Kat, KatCmd};
use crate::ns;

pub const CLIENT_ADDR: &str = "198.18.20.1";
pub const ROUTER_INSIDE: &str = "198.18.20.254";
pub const ROUTER_OUTSIDE: &str = "198.18.21.254";
pub const SERVER_ADDR: &str = "198.18.21.2";

/// The scenario's name where results are listed (the VM runner's).
pub const SCENARIO: &str = "nat_forgets_idle_flows";
/// How long the scenario's router remembers a silent flow.
pub const FORGETS_S: u32 = 3;

/// Three namespaces in a row; removed on drop.
pub struct Nat {
    pub client: String,
    pub router: String,
    pub server: String,
}

impl Nat {
    /// The lab, the router forgetting a flow after `idle_timeout_s` of
    /// silence.
    pub fn new(tag: &str, idle_timeout_s: u32) -> io::Result<Self> {
        let nat = Nat {
            client: format!("{tag}-nc"),
            router: format!("{tag}-nr"),
            server: format!("{tag}-ns"),
        };
        for name in [&nat.client, &nat.router, &nat.server] {
            ns::add(name)?;
        }
        ns::veth(
            "inside",
            (&nat.client, &[&format!("{CLIENT_ADDR}/24")]),
            (&nat.router, &[&format!("{ROUTER_INSIDE}/24")]),
        )?;
        ns::veth(
            "outside",
            (&nat.router, &[&format!("{ROUTER_OUTSIDE}/24")]),
            (&nat.server, &[&format!("{SERVER_ADDR}/24")]),
        )?;
        ns::ip(&format!(
            "-n {} route add default via {ROUTER_INSIDE}",
            nat.client
        ))?;
        // The nat chain brings conntrack into the router's namespace; its
        // sysctls exist there from then on.
        ns::nft(
            &nat.router,
            "add table ip katnat; \
             add chain ip katnat post { type nat hook postrouting priority 100; }; \
             add rule ip katnat post oifname \"outside\" masquerade; \
             add chain ip katnat forward { type filter hook forward priority 0; }; \
             add rule ip katnat forward ct state invalid drop",
        )?;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1".to_string()),
            (
                "net.netfilter.nf_conntrack_tcp_timeout_established",
                idle_timeout_s.to_string(),
            ),
            ("net.netfilter.nf_conntrack_tcp_loose", "0".to_string()),
        ] {
            ns::sysctl(&nat.router, key, &value)?;
        }
        Ok(nat)
    }

    pub fn listen(&self, port: u16) -> io::Result<TcpListener> {
        let addr: SocketAddr = format!("{SERVER_ADDR}:{port}")
            .parse()
            .map_err(io::Error::other)?;
        ns::listen(Some(&self.server), addr)
    }

    /// A connection from the client, `setup` applied to its socket first.
    pub fn connect(
        &self,
        port: u16,
        setup: impl FnOnce(&Socket) -> io::Result<()> + Send + 'static,
    ) -> io::Result<TcpStream> {
        let addr: SocketAddr = format!("{SERVER_ADDR}:{port}")
            .parse()
            .map_err(io::Error::other)?;
        ns::within(Some(&self.client), move || {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            setup(&s)?;
            s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
            Ok(s.into())
        })
    }

    /// The flows the router's conntrack remembers (`/proc/net/nf_conntrack`
    /// is not there in every build: counted from the namespace's sysctl).
    pub fn remembered(&self) -> io::Result<u64> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.router, "sysctl", "-n"])
            .arg("net.netfilter.nf_conntrack_count")
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(io::Error::other)
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        for name in [&self.client, &self.router, &self.server] {
            let _ = ns::del(name);
        }
    }
}

/// The router's conntrack forgot the client's flow from `sport`.
fn forgotten(v: &Value, sport: u16, port: u16, router: u64) -> bool {
    v["type"] == "conntrack_expired"
        && v["saddr"] == CLIENT_ADDR
        && v["sport"] == sport
        && v["daddr"] == SERVER_ADDR
        && v["dport"] == port
        && v["netns"] == router
}

/// A death or probe of the client's end of the connection from `sport`.
fn client_event(v: &Value, ty: &str, sport: u16) -> bool {
    v["type"] == ty && v["saddr"] == CLIENT_ADDR && v["sport"] == sport
}

/// A death kat judged a middlebox's doing, after a silence of `low` to
/// `high` seconds, on a path that answered after 1 s (`lag` later at
/// most: a timer of an emulated kernel runs late).
fn suspected(dead: &Value, low: f64, high: f64, lag: f64) {
    assert_eq!(dead["verdict"], "middlebox_idle_drop_suspected", "{dead}");
    let idle = dead["idle_before_s"].as_f64().unwrap_or(0.0);
    assert!((low..high).contains(&idle), "idle_before_s {idle}: {dead}");
    let survived = dead["survived_idle_s"].as_f64().unwrap_or(0.0);
    assert!(
        (0.9..1.0 + lag).contains(&survived),
        "survived_idle_s: {dead}"
    );
}

/// The death says which conntrack forgot its flow first (kat runs on the
/// gateway with `--conntrack`), or nothing where kat was not told.
fn forgot_first(dead: &Value, router: Option<u64>) {
    let Some(router) = router else {
        assert!(dead["conntrack_forgot"].is_null(), "{dead}");
        return;
    };
    assert_eq!(dead["conntrack_forgot"]["netns"], router, "{dead}");
    let before = dead["conntrack_forgot"]["before_death_s"]
        .as_f64()
        .unwrap_or(-1.0);
    assert!(
        (0.5..10.0).contains(&before),
        "told before the death: {dead}"
    );
}

/// Whether `kat doctor` says --conntrack can be told of expiries here;
/// where not, only because the kernel predates 5.11, and `kat trace
/// --conntrack` then refuses to start, saying why.
fn conntrack_tells(kat_cmd: &KatCmd) -> bool {
    let doctor = kat::doctor(kat_cmd);
    let Some(why) = doctor["conntrack_problem"].as_str() else {
        return true;
    };
    assert!(
        why.contains("5.11 and later"),
        "--conntrack unavailable: {why}"
    );
    let refused = Command::new("timeout")
        .args(["30", &kat_cmd.binary, "trace", "--conntrack", "--json"])
        .output()
        .expect("kat trace --conntrack");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "unsupported: {stderr}");
    assert!(stderr.contains("5.11 and later"), "{stderr}");
    false
}

fn local_port(s: &TcpStream) -> u16 {
    s.local_addr().map_or(0, |a| a.port())
}

/// The story of seed 001 through a NAT that forgets a flow after 3 s of
/// silence, three connections at once:
/// - no keepalive (TCP_USER_TIMEOUT 3 s): listed at risk while silent,
///   then its first write after the silence is dropped and it dies of
///   `user_timeout`, suspected of being the middlebox's doing;
/// - keepalive every second: its probes keep the flow remembered, they
///   are answered and it lives;
/// - keepalive idle 5 s (TCP_KEEPIDLE): longer than the NAT remembers;
///   listed at risk, its first probe is dropped and it dies of
///   `keepalive_timeout`, suspected too (the path answered the 1 s probes);
/// - keepalive on with the client namespace's own idle, 6 s
///   (`net.ipv4.tcp_keepalive_time`): dies the same way at 6 s, and the
///   report's advice names that sysctl for it, TCP_KEEPIDLE for the other.
///
/// kat runs on the gateway too (the router is a namespace of this host):
/// with `--conntrack` it is told each flow the router's conntrack forgot,
/// the NAT's outside address in the reply direction, and the report counts
/// them by server.
///
/// `slack` is how much slower than a bare-metal host time runs (1 on the
/// host, 3 under QEMU's emulation): the kernel's timers and the test's
/// own steps may run that much later, and the time windows allow it.
pub fn nat_forgets_idle_flows(nat: &Nat, kat_cmd: &KatCmd, port: u16, slack: f64) {
    let lag = 0.5 * slack;
    let p = port.to_string();
    let journal = std::env::temp_dir().join(format!("kat-nat-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&journal);
    for (key, value) in [
        ("net.ipv4.tcp_keepalive_time", "6"),
        ("net.ipv4.tcp_keepalive_intvl", "1"),
        ("net.ipv4.tcp_keepalive_probes", "2"),
    ] {
        ns::sysctl(&nat.client, key, value).expect("client sysctl");
    }
    let router = ns::inode(&nat.router).expect("router netns");
    let told = conntrack_tells(kat_cmd);
    let mut args = vec!["--port", p.as_str()];
    if told {
        args.push("--conntrack");
    }
    let recorder = Kat::record(kat_cmd, &journal, &args);
    let mut kat = Kat::trace(kat_cmd, &args, &[]);
    // Told by the router's conntrack where the kernel can tell.
    let forgetter = told.then_some(router);
    let listener = nat.listen(port).expect("listen");
    let accept = || listener.accept().expect("accept").0;
    let mut silent = nat
        .connect(port, |s| {
            s.set_tcp_user_timeout(Some(Duration::from_secs(3)))
        })
        .expect("connect");
    let _silent_server = accept();
    let kept = nat
        .connect(port, |s| ns::set_keepalive(s, (1, 1, 3)))
        .expect("connect");
    let _kept_server = accept();
    let late = nat
        .connect(port, |s| ns::set_keepalive(s, (5, 1, 2)))
        .expect("connect");
    let _late_server = accept();
    let by_sysctl = nat
        .connect(port, |s| s.set_keepalive(true))
        .expect("connect");
    let _by_sysctl_server = accept();
    let started = now();
    assert!(
        nat.remembered().expect("conntrack count") >= 4,
        "the router tracks the four flows"
    );

    // 4.3 s of silence: the router has forgotten the silent flows.
    std::thread::sleep(Duration::from_millis(4300));
    let at_risk = Command::new(&kat_cmd.binary)
        .args([
            "trace",
            "--at-risk",
            "--json",
            "--idle-over",
            "3s",
            "--port",
            &p,
        ])
        .output()
        .expect("kat trace --at-risk");
    assert!(at_risk.status.success(), "{at_risk:?}");
    let listed: Vec<Value> = String::from_utf8_lossy(&at_risk.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let find = |s: &TcpStream| {
        listed
            .iter()
            .find(|v| client_event(v, "at_risk", local_port(s)))
    };
    let silent_listed = find(&silent).expect("the silent connection is at risk");
    assert_eq!(silent_listed["keepalive"], false, "{silent_listed}");
    let late_listed = find(&late).expect("keepalive idle 5 s > 3 s: at risk");
    assert_eq!(late_listed["keepalive"], true, "{late_listed}");
    assert!(find(&by_sysctl).is_some(), "the sysctl's 6 s: at risk");
    assert!(
        find(&kept).is_none(),
        "answered probes keep it fresh: {listed:?}"
    );

    // The silent one speaks: the router drops it as a stranger.
    let wrote = now();
    silent.write_all(b"still there?").expect("write");
    let dead = kat.wait_for("the silent one's death", Duration::from_secs(15), |v| {
        client_event(v, "death", local_port(&silent))
    });
    assert_eq!(dead["reason"], "user_timeout", "{dead}");
    assert_eq!(dead["keepalive"]["enabled"], false, "{dead}");
    // Silent from the handshake to the write, 4.3 s and the at-risk
    // listing; the path answered the kept connection's probes after 1 s.
    let silence = wrote - started;
    suspected(&dead, 4.0, silence + lag, lag);
    forgot_first(&dead, forgetter);
    // The router forgot it before the write, and told kat at the latest
    // when the write found its entry expired.
    if let Some(router) = forgetter {
        let expired = kat
            .seen
            .iter()
            .find(|v| forgotten(v, local_port(&silent), port, router))
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "the router's conntrack forgot the silent flow: {:#?}",
                    kat.seen
                )
            });
        assert_eq!(expired["reply"]["daddr"], ROUTER_OUTSIDE, "{expired}");
        // The router's own setting, not this host's (5 days by default).
        assert_eq!(expired["established_timeout_s"], 3, "{expired}");
        assert!(
            ts(&expired) - started > 2.5 && ts(&expired) < wrote + lag,
            "forgotten after 3 s of silence, told by the write at the latest: {expired}"
        );
    }

    let dead = kat.wait_for("the late keepalive's death", Duration::from_secs(15), |v| {
        client_event(v, "death", local_port(&late))
    });
    assert_eq!(dead["reason"], "keepalive_timeout", "{dead}");
    assert_eq!(dead["unanswered_probes"], 2, "{dead}");
    suspected(&dead, 4.9, 5.0 + lag, lag);
    forgot_first(&dead, forgetter);
    // Its first probe went at 5 s idle, after the NAT had forgotten it.
    let first_probe = kat
        .seen
        .iter()
        .find(|v| client_event(v, "probe", local_port(&late)))
        .cloned()
        .expect("its probes were traced");
    assert_eq!(first_probe["probe"], 1);
    assert!(ts(&first_probe) - started > 4.0, "{first_probe}");

    let dead = kat.wait_for(
        "the sysctl keepalive's death",
        Duration::from_secs(15),
        |v| client_event(v, "death", local_port(&by_sysctl)),
    );
    assert_eq!(dead["reason"], "keepalive_timeout", "{dead}");
    assert_eq!(dead["keepalive"]["idle_from"], "sysctl", "{dead}");
    suspected(&dead, 5.9, 6.0 + lag, lag);
    forgot_first(&dead, forgetter);

    let (status, events, _) = kat.stop();
    assert!(status.success(), "kat exited with {status}");
    let kept_port = local_port(&kept);
    let answered = events
        .iter()
        .filter(|v| client_event(v, "probe_answered", kept_port))
        .count();
    assert!(answered >= 5, "every second a probe, answered: {answered}");
    assert!(
        !events.iter().any(|v| client_event(v, "death", kept_port)),
        "keepalive shorter than the NAT's timeout lives: {events:#?}"
    );
    if let Some(router) = forgetter {
        for (s, what) in [
            (&late, "the late keepalive's"),
            (&by_sysctl, "the sysctl keepalive's"),
        ] {
            assert!(
                events
                    .iter()
                    .any(|v| forgotten(v, local_port(s), port, router)),
                "the router forgot {what} flow: {events:#?}"
            );
        }
    }
    assert!(
        !events.iter().any(|v| forgotten(v, kept_port, port, router)),
        "a flow its probes keep fresh is never forgotten: {events:#?}"
    );

    // The report learnt the path's idle timeout and names the knobs.
    let (status, _, _) = recorder.stop();
    assert!(status.success(), "kat record exited with {status}");
    let report = kat::report(kat_cmd, &journal, &[]);
    let _ = std::fs::remove_dir_all(&journal);
    let forgotten_rows = report["conntrack_expired"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let three = |v: &Value| {
        v["daddr"] == SERVER_ADDR
            && v["dport"] == port
            && v["netns"] == router
            && v["flows"] == 3
            && v["established_timeout_s"] == 3
    };
    assert_eq!(
        forgotten_rows.iter().any(three),
        told,
        "the journal's three forgotten flows, by server, where kat was told: {report:#}"
    );
    let paths = report["paths"].as_array().cloned().unwrap_or_default();
    let path = paths
        .iter()
        .find(|v| v["daddr"] == SERVER_ADDR && v["dport"] == port)
        .unwrap_or_else(|| panic!("the path is learnt: {report:#}"));
    assert_eq!(path["deaths"], 3, "{path}");
    let survived = path["survived_idle_s"].as_f64().unwrap_or(0.0);
    let died = path["died_idle_s"].as_f64().unwrap_or(0.0);
    assert!(
        (0.9..1.0 + lag).contains(&survived) && (4.0..silence.min(5.0) + lag).contains(&died),
        "{path}"
    );
    let advice = path["advice"].as_str().unwrap_or_default();
    let netns = ns::inode(&nat.client).expect("client netns");
    assert!(
        advice.contains(&format!(
            "no keepalive (SO_KEEPALIVE off); TCP_KEEPIDLE 5s; keepalive idle 6s \
             (net.ipv4.tcp_keepalive_time of netns {netns})"
        )) && advice.contains("turn SO_KEEPALIVE on"),
        "{advice}"
    );
}
