//! The scenario suite of `kat trace`: real connections, the real `kat`
//! binary, assertions on its JSON events. The same scenarios run on the
//! host between network namespaces (kat-userspace's kernel tests) and on
//! loopback inside QEMU on other kernels, once per lane (`cargo xtask
//! vm-test`). A failing assertion panics.

pub mod kat;
pub mod load;
pub mod loopback;
pub mod nat;
pub mod net;
pub mod netns;
pub mod ns;
pub mod soak;
pub mod spawn;
pub mod tmux;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use kat::{now, ts};
pub use kat::{Kat, KatCmd};
pub use net::{keepalive, Net, Side};

/// A scenario: its name and how to run it with a given port. Each uses
/// `port` (and `port + 1` where it needs a second one).
pub type Scenario = (&'static str, fn(&dyn Net, &KatCmd, u16));

/// Calls the macro `$then!` with every scenario's name: the one list the
/// suite is made of. [`SCENARIOS`] and the host suite's tests (one
/// `#[test]` per scenario, `kat-userspace/tests/trace.rs`) are both made
/// from it, so adding a scenario here adds its test.
#[macro_export]
macro_rules! with_scenarios {
    ($then:ident) => {
        $then! {
            healthy_probes_answered,
            vanished_peer_keepalive_timeout,
            restarted_peer_found_by_probe,
            abort_on_close_and_linger,
            user_timeout,
            user_timeout_without_keepalive,
            retransmit_timeout,
            orderly_close_only_with_all,
            port_filter_in_kernel,
            ipv6,
            recorded_death_in_the_journal,
            orderly_closes_counted_in_the_kernel,
            probe_names_its_owner,
            keepalive_death_during_churn,
            keepalive_death_when_the_close_hook_is_skipped,
            user_timeout_when_the_close_hook_is_skipped,
        }
    };
}

macro_rules! scenario_list {
    ($($name:ident),* $(,)?) => {
        /// Every scenario, in the order the VMs and the recorded suite run them.
        pub const SCENARIOS: &[Scenario] = &[$((stringify!($name), $name)),*];
    };
}

with_scenarios!(scenario_list);

/// True when a root-only test may run; without root it is skipped.
pub fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip("needs root (run the suite with `cargo xtask test`)");
    false
}

/// Something a test needs is missing: it is skipped, saying why, except
/// under CI=true, where skipping is a failure.
pub fn skip(why: &str) {
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{why}, and CI=true forbids skipping"
    );
    eprintln!("SKIPPED: {why}");
}

/// A finished command's exit status and output, for a failure message.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn addr(net: &dyn Net, port: u16) -> SocketAddr {
    SocketAddr::new(net.server_addr(false), port)
}

fn start(kat: &KatCmd, port: u16) -> Kat {
    Kat::trace(kat, &["--port", &port.to_string()], &[])
}

/// Idle 1 s, interval 1 s: each probe is number 1 of its run and is
/// answered promptly (sock_diag), never at the next timer run.
pub fn healthy_probes_answered(net: &dyn Net, kat: &KatCmd, port: u16) {
    let mut kat = start(kat, port);
    let listener = net.listen(addr(net, port));
    let _client = net.connect(addr(net, port), Box::new(|s| keepalive(s, 1, 1, 3)));
    let _server = listener.accept().expect("accept");

    let mut answers = 0;
    kat.wait_for("a third answer", secs(8.0 * net.slack()), |v| {
        answers += usize::from(net.is(v, "probe_answered", Side::Client, port));
        answers == 3
    });
    let mine: Vec<&Value> = kat
        .seen
        .iter()
        .filter(|v| {
            net.is(v, "probe", Side::Client, port)
                || net.is(v, "probe_answered", Side::Client, port)
        })
        .collect();
    assert_eq!(mine.len(), 6, "{mine:#?}");
    for pair in mine.chunks(2) {
        let (probe, answer) = (pair[0], pair[1]);
        assert_eq!(probe["type"], "probe", "{probe}");
        assert_eq!(probe["probe"], 1, "an answered run restarts at 1: {probe}");
        assert_eq!(probe["probes_max"], 3);
        assert_eq!(probe["dport"], port);
        assert_eq!(probe["keepalive"]["idle_s"], 1.0);
        assert_eq!(probe["keepalive"]["intvl_s"], 1.0);
        assert_eq!(probe["keepalive"]["idle_from"], "socket");
        assert_eq!(answer["type"], "probe_answered", "{answer}");
        assert_eq!(answer["probe"], 1);
        let delay = ts(answer) - ts(probe);
        assert!(
            (0.0..net.slack()).contains(&delay),
            "answer reported {delay:.3} s after the probe"
        );
    }
    let (status, events, _) = kat.stop();
    assert!(status.success(), "kat exited with {status}");
    assert!(
        !events
            .iter()
            .any(|v| net.is(v, "death", Side::Client, port)),
        "{events:#?}"
    );
}

/// The server's packets are dropped: exactly `count` unanswered probes,
/// then keepalive_timeout with ETIMEDOUT at idle + count × interval.
pub fn vanished_peer_keepalive_timeout(net: &dyn Net, kat: &KatCmd, port: u16) {
    let mut kat = start(kat, port);
    let listener = net.listen(addr(net, port));
    let mut silenced = silenced_keepalive(net, &listener, port);
    let sport = silenced.sport;
    let dead = kat.wait_for("death", secs(15.0 * net.slack()), |v| {
        net.is(v, "death", Side::Client, port) && v["sport"] == sport
    });
    check_keepalive_death(net, &mut kat, port, &dead, silenced.connected);
    // What the application sees matches kat's errno.
    let err = silenced
        .client
        .read(&mut [0u8; 1])
        .expect_err("the connection is dead");
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT));
    let (status, _, _) = kat.stop();
    assert!(status.success());
}

/// The kernel skips a program that fires on a CPU where it is already
/// running, as the CLOSE tracepoint does when a softirq interrupts it in
/// some process's close. With that skip forced on every close: the
/// keepalive death is still reported on time, from the keepalive timer's
/// own hook, and only once; a connection reset by its peer is reported
/// when its socket is freed.
pub fn keepalive_death_when_the_close_hook_is_skipped(net: &dyn Net, kat: &KatCmd, port: u16) {
    let fault = [(kat_common::FAULT_MISS_CLOSE, "1")];
    let mut kat = Kat::trace(kat, &["--port", &port.to_string()], &fault);
    // The kprobe lane's timer hooks are kprobes, which the kernel also
    // skips while a BPF map syscall runs on that CPU (kat's own loss
    // reads): there the timer's hook may miss this death too, and then
    // it comes at the socket's free.
    let kprobe_lane = kat.started.contains("kprobe");
    let listener = net.listen(addr(net, port));
    let reset = net.connect(addr(net, port), Box::new(|_| {}));
    let reset_port = reset.local_addr().expect("local address").port();
    let (server, _) = listener.accept().expect("accept");
    net::abort(server);

    let dying = silenced_keepalive(net, &listener, port);
    let sport = dying.sport;
    let is_death = |v: &Value| net.is(v, "death", Side::Client, port) && v["sport"] == sport;
    let dead = match kat.wait_until(secs(15.0 * net.slack()), is_death) {
        Ok(dead) => {
            check_keepalive_death(net, &mut kat, port, &dead, dying.connected);
            drop(dying);
            dead
        }
        Err(_) if kprobe_lane => {
            drop(dying);
            let dead = kat.wait_for(
                "keepalive death at the free",
                secs(5.0 * net.slack()),
                is_death,
            );
            assert_eq!(dead["reason"], "keepalive_timeout", "{dead}");
            assert_eq!(dead["errno"], "ETIMEDOUT");
            dead
        }
        Err(e) => panic!("no keepalive death ({e:?}); events seen: {:#?}", kat.seen),
    };
    assert!(
        !kat.seen.iter().any(|v| v["sport"] == reset_port),
        "the reset connection is told of only when it is freed: {:#?}",
        kat.seen
    );
    drop(reset);
    let reset_dead = kat.wait_for("death at the free", secs(5.0 * net.slack()), |v| {
        net.is(v, "death", Side::Client, port) && v["sport"] == reset_port
    });
    assert_eq!(reset_dead["reason"], "peer_reset", "{reset_dead}");
    assert_eq!(reset_dead["errno"], "ECONNRESET");
    assert_eq!(reset_dead["state"], "UNKNOWN", "{reset_dead}");

    std::thread::sleep(secs(0.5 * net.slack()));
    let (status, events, _) = kat.stop();
    assert!(status.success());
    let deaths = events
        .iter()
        .filter(|v| net.is(v, "death", Side::Client, port) && v["sport"] == dead["sport"])
        .count();
    assert_eq!(deaths, 1, "the keepalive death once, not again at the free");
}

/// The keepalive settings of the connections whose peer vanishes: idle,
/// interval, count.
const SILENCED: (u64, u64, u8) = (2, 1, 3);

/// A keepalive connection to `listener` whose server's packets are then
/// dropped.
struct Silenced {
    client: TcpStream,
    /// Kept open: its close would send a FIN wherever the blackhole drops
    /// only what it receives.
    _server: TcpStream,
    /// The client's local port.
    sport: u16,
    /// When it connected (seconds since the epoch).
    connected: f64,
}

fn silenced_keepalive(net: &dyn Net, listener: &std::net::TcpListener, port: u16) -> Silenced {
    let (idle, intvl, count) = SILENCED;
    let client = net.connect(
        addr(net, port),
        Box::new(move |s| keepalive(s, idle, intvl, u32::from(count))),
    );
    let sport = client.local_addr().expect("local address").port();
    let connected = now();
    let (server, _) = listener.accept().expect("accept");
    net.blackhole(&server);
    Silenced {
        client,
        _server: server,
        sport,
        connected,
    }
}

/// Probes of a dying connection that kat did not report (`probes`, of
/// `expected`) must be ones it counted as lost in `events`: timer runs the
/// kernel gave it no record of (`unseen_timer_run`); those it reported
/// come in order.
fn missing_probes_counted(events: &[Value], probes: &[u64], expected: &[u64]) {
    if probes == expected {
        return;
    }
    let unseen: u64 = events
        .iter()
        .filter(|v| v["type"] == "lost")
        .filter_map(|v| v["by_kind"]["unseen_timer_run"].as_u64())
        .max()
        .unwrap_or(0);
    let missing = expected.iter().filter(|p| !probes.contains(p)).count() as u64;
    assert!(
        probes.windows(2).all(|w| w[0] < w[1]) && unseen >= missing,
        "probes {probes:?}, not {expected:?}, and {unseen} unseen timer run(s) counted; \
         events seen: {events:#?}"
    );
    eprintln!("probes {probes:?}: kat counted {unseen} unseen timer run(s)");
}

/// The death of a [`silenced_keepalive`] connection, reported on time:
/// keepalive_timeout, ETIMEDOUT, every probe unanswered, at idle + count
/// × interval, after probes 1, 2, 3 and no answer.
fn check_keepalive_death(net: &dyn Net, kat: &mut Kat, port: u16, dead: &Value, connected: f64) {
    let (idle, intvl, count) = SILENCED;
    assert_eq!(dead["reason"], "keepalive_timeout", "{dead}");
    assert_eq!(dead["errno"], "ETIMEDOUT");
    assert_eq!(dead["unanswered_probes"], count);
    let expected = (idle + u64::from(count) * intvl) as f64;
    let took = ts(dead) - connected;
    assert!(
        (took - expected).abs() < 0.75 * net.slack(),
        "died after {took:.2} s, idle + count × interval = {expected} s; events seen: {:#?}",
        kat.seen
    );
    let probes: Vec<u64> = kat
        .seen
        .iter()
        .filter(|v| net.is(v, "probe", Side::Client, port) && v["sport"] == dead["sport"])
        .map(|v| v["probe"].as_u64().unwrap_or(0))
        .collect();
    if probes != [1, 2, 3] {
        // kat tells its losses once a second.
        kat.collect_for(Duration::from_secs(3));
        missing_probes_counted(&kat.seen, &probes, &[1, 2, 3]);
    }
    assert!(!kat
        .seen
        .iter()
        .any(|v| net.is(v, "probe_answered", Side::Client, port)));
}

/// The server host restarts: the next probe is answered by a RST.
pub fn restarted_peer_found_by_probe(net: &dyn Net, kat: &KatCmd, port: u16) {
    let mut kat = start(kat, port);
    let listener = net.listen(addr(net, port));
    let client = net.connect(addr(net, port), Box::new(|s| keepalive(s, 2, 1, 5)));
    let (server, _) = listener.accept().expect("accept");
    net.restart_server(server, listener, &client);

    let dead = kat.wait_for("death", secs(15.0 * net.slack()), |v| {
        net.is(v, "death", Side::Client, port)
    });
    assert_eq!(dead["reason"], "peer_reset", "{dead}");
    assert_eq!(dead["errno"], "ECONNRESET");
    assert_eq!(dead["found_by_probe"], true, "{dead}");
    assert!(kat
        .seen
        .iter()
        .any(|v| net.is(v, "probe", Side::Client, port)));
}

/// Closing with unread data, and with SO_LINGER 0.
pub fn abort_on_close_and_linger(net: &dyn Net, kat: &KatCmd, port: u16) {
    let mut kat = start(kat, port);
    let listener = net.listen(addr(net, port));

    let mut client = net.connect(addr(net, port), Box::new(|_| {}));
    let (unread, _) = listener.accept().expect("accept");
    client.write_all(b"never read").expect("write");
    std::thread::sleep(Duration::from_millis(100));
    // This process must be the closer, not a child being started.
    spawn::alone(|| drop(unread));
    let dead = kat.wait_for("abort_on_close", secs(5.0 * net.slack()), |v| {
        net.is(v, "death", Side::Server, port)
    });
    assert_eq!(dead["reason"], "abort_on_close", "{dead}");
    assert_eq!(
        dead["pid"],
        std::process::id(),
        "the closer is this process"
    );
    let peer = kat.wait_for("peer death", secs(5.0 * net.slack()), |v| {
        net.is(v, "death", Side::Client, port)
    });
    assert_eq!(peer["reason"], "peer_reset");
    assert_eq!(peer["found_by_probe"], false);
    kat.seen.clear();

    let _client2 = net.connect(addr(net, port), Box::new(|_| {}));
    let (lingering, _) = listener.accept().expect("accept");
    net::abort(lingering);
    let dead = kat.wait_for("abort_on_linger", secs(5.0 * net.slack()), |v| {
        net.is(v, "death", Side::Server, port)
    });
    assert_eq!(dead["reason"], "abort_on_linger", "{dead}");
    drop(client);
}

/// A probe is sent from a timer in softirq, where the current task is
/// anyone: its pid and comm are those of the process holding the socket,
/// this one, found in kat's owner index.
pub fn probe_names_its_owner(net: &dyn Net, kat: &KatCmd, port: u16) {
    let mut kat = start(kat, port);
    let listener = net.listen(addr(net, port));
    let _client = net.connect(addr(net, port), Box::new(|s| keepalive(s, 1, 1, 3)));
    let _server = listener.accept().expect("accept");
    let probe = kat.wait_for("a probe", secs(5.0 * net.slack()), |v| {
        net.is(v, "probe", Side::Client, port)
    });
    let comm = std::fs::read_to_string("/proc/self/comm").expect("own comm");
    assert_eq!(probe["pid"], std::process::id(), "{probe}");
    assert_eq!(probe["comm"], comm.trim_end(), "{probe}");
    let (status, _, _) = kat.stop();
    assert!(status.success(), "kat exited with {status}");
}

/// TCP_USER_TIMEOUT shorter than the probes decides.
pub fn user_timeout(net: &dyn Net, kat: &KatCmd, port: u16) {
    let mut kat = start(kat, port);
    let listener = net.listen(addr(net, port));
    let _client = net.connect(
        addr(net, port),
        Box::new(|s| {
            keepalive(s, 1, 1, 10);
            s.set_tcp_user_timeout(Some(Duration::from_millis(2500)))
                .expect("user timeout");
        }),
    );
    let connected = now();
    let (server, _) = listener.accept().expect("accept");
    net.blackhole(&server);

    let dead = kat.wait_for("death", secs(15.0 * net.slack()), |v| {
        net.is(v, "death", Side::Client, port)
    });
    assert_eq!(dead["reason"], "user_timeout", "{dead}");
    assert_eq!(dead["errno"], "ETIMEDOUT");
    assert_eq!(dead["keepalive"]["user_timeout_ms"], 2500);
    assert_eq!(dead["keepalive"]["enabled"], true, "{dead}");
    let took = ts(&dead) - connected;
    assert!(
        took < 5.0 * net.slack(),
        "died after {took:.2} s, long before 10 probes"
    );
    let probes = kat
        .seen
        .iter()
        .filter(|v| net.is(v, "probe", Side::Client, port))
        .count();
    assert!((1..10).contains(&probes), "{probes} probes");
}

/// A client with a user timeout of 2.5 s and no keepalive whose server
/// went silent (blackholed, its end held), and when it then wrote: its
/// data will never be acknowledged.
fn written_into_the_void(net: &dyn Net, port: u16) -> (TcpStream, TcpStream, f64) {
    let listener = net.listen(addr(net, port));
    let mut client = net.connect(
        addr(net, port),
        Box::new(|s| {
            s.set_tcp_user_timeout(Some(Duration::from_millis(2500)))
                .expect("user timeout");
        }),
    );
    let (server, _) = listener.accept().expect("accept");
    net.blackhole(&server);
    let sent = now();
    client.write_all(b"into the void").expect("write");
    (client, server, sent)
}

/// TCP_USER_TIMEOUT without keepalive (what database drivers and gRPC
/// set): data unacknowledged past it is `user_timeout`, judged by the
/// setting the socket had at its death.
pub fn user_timeout_without_keepalive(net: &dyn Net, kat: &KatCmd, port: u16) {
    let mut kat = start(kat, port);
    let (_client, _server, sent) = written_into_the_void(net, port);

    let dead = kat.wait_for("death", secs(20.0 * net.slack()), |v| {
        net.is(v, "death", Side::Client, port)
    });
    assert_eq!(dead["reason"], "user_timeout", "{dead}");
    assert_eq!(dead["errno"], "ETIMEDOUT");
    assert_eq!(dead["keepalive"]["user_timeout_ms"], 2500, "{dead}");
    assert_eq!(dead["keepalive"]["enabled"], false, "{dead}");
    unsuspected_silence(&dead, net);
    let took = ts(&dead) - sent;
    assert!(
        took < 10.0 * net.slack(),
        "died {took:.2} s after the write: the user timeout, not tcp_retries2"
    );
    assert!(!kat
        .seen
        .iter()
        .any(|v| net.is(v, "probe", Side::Client, port)));
}

/// A user-timeout death whose CLOSE tracepoint the kernel skipped: where
/// the timer tracepoints are the keepalive lane, the retransmission
/// timer's exit sends it on time; in the other lanes (no hook on that
/// timer) it comes when the socket is freed, never not at all.
pub fn user_timeout_when_the_close_hook_is_skipped(net: &dyn Net, kat: &KatCmd, port: u16) {
    let fault = [(kat_common::FAULT_MISS_CLOSE, "1")];
    let mut kat = Kat::trace(kat, &["--port", &port.to_string()], &fault);
    let timer_tracepoints = kat.started.contains("(tracepoint lane")
        || kat.started.contains("keepalive_timer=tracepoint");
    let (client, _server, sent) = written_into_the_void(net, port);

    let is_death = |v: &Value| net.is(v, "death", Side::Client, port);
    let dead = if timer_tracepoints {
        // The socket is still held: only the timer can have sent it.
        let dead = kat.wait_for(
            "death at the retransmission timer",
            secs(10.0 * net.slack()),
            is_death,
        );
        let took = ts(&dead) - sent;
        assert!(
            took < 10.0 * net.slack(),
            "died {took:.2} s after the write"
        );
        drop(client);
        dead
    } else {
        std::thread::sleep(secs(6.0 * net.slack()));
        drop(client);
        kat.wait_for("death at the free", secs(5.0 * net.slack()), is_death)
    };
    assert_eq!(dead["reason"], "user_timeout", "{dead}");
    assert_eq!(dead["errno"], "ETIMEDOUT");
    let (status, _, stderr) = kat.stop();
    assert!(status.success(), "kat exited with {status}: {stderr:#?}");
}

/// Data written at once after the handshake, then never acknowledged: the
/// silence before it (measured to its first retransmission, so about one
/// retransmission timeout) is short, and nothing on the path was seen
/// surviving a silence, so no verdict. Checks the kernel's clocks
/// (`lsndtime`, `retrans_stamp`, `tcp_mstamp`) on every kernel and lane.
fn unsuspected_silence(dead: &Value, net: &dyn Net) {
    let idle = dead["idle_before_s"].as_f64();
    assert!(
        idle.is_some_and(|s| (0.0..1.5 * net.slack()).contains(&s)),
        "idle_before_s: {dead}"
    );
    assert!(dead.get("verdict").is_none(), "{dead}");
}

/// Data never acknowledged, tcp_retries2=3: retransmit_timeout.
pub fn retransmit_timeout(net: &dyn Net, kat: &KatCmd, port: u16) {
    net.client_sysctl("net.ipv4.tcp_retries2", "3");
    let mut kat = start(kat, port);
    let listener = net.listen(addr(net, port));
    let mut client = net.connect(addr(net, port), Box::new(|_| {}));
    let (server, _) = listener.accept().expect("accept");
    net.blackhole(&server);
    client.write_all(b"into the void").expect("write");

    let dead = kat.wait_for("death", secs(20.0 * net.slack()), |v| {
        net.is(v, "death", Side::Client, port)
    });
    assert_eq!(dead["reason"], "retransmit_timeout", "{dead}");
    assert_eq!(dead["errno"], "ETIMEDOUT");
    unsuspected_silence(&dead, net);
    assert!(!kat
        .seen
        .iter()
        .any(|v| net.is(v, "probe", Side::Client, port)));
}

/// An orderly close is `closed`, shown with --all only.
pub fn orderly_close_only_with_all(net: &dyn Net, kat_cmd: &KatCmd, port: u16) {
    let p = port.to_string();
    let mut all = Kat::trace(kat_cmd, &["--port", &p, "--all"], &[]);
    let abnormal = Kat::trace(kat_cmd, &["--port", &p], &[]);
    let listener = net.listen(addr(net, port));
    let client = net.connect(addr(net, port), Box::new(|s| keepalive(s, 30, 5, 3)));
    let (mut server, _) = listener.accept().expect("accept");
    drop(client);
    assert_eq!(server.read(&mut [0u8; 8]).expect("EOF"), 0);
    drop(server);

    for side in [Side::Client, Side::Server] {
        let closed = all.wait_for("closed", secs(5.0 * net.slack()), |v| {
            net.is(v, "death", side, port)
        });
        assert_eq!(closed["reason"], "closed", "{closed}");
        assert_eq!(closed["errno"], Value::Null);
        assert!(closed["lifetime_s"]
            .as_f64()
            .is_some_and(|l| l < 5.0 * net.slack()));
    }
    let (_, hidden, _) = abnormal.stop();
    assert!(
        hidden.iter().all(|v| v["type"] != "death"),
        "without --all an orderly close is not shown: {hidden:#?}"
    );
}

/// `--port` keeps other ports out, in the kernel: no record of them is
/// even handed to userspace (kat logs every record at trace level).
pub fn port_filter_in_kernel(net: &dyn Net, kat: &KatCmd, port: u16) {
    let (wanted, other) = (port, port + 1);
    let mut kat = Kat::trace(
        kat,
        &["--port", &wanted.to_string()],
        &[("RUST_LOG", "kat=trace")],
    );
    let l1 = net.listen(addr(net, wanted));
    let l2 = net.listen(addr(net, other));
    let _c1 = net.connect(addr(net, wanted), Box::new(|s| keepalive(s, 1, 1, 2)));
    let _c2 = net.connect(addr(net, other), Box::new(|s| keepalive(s, 1, 1, 2)));
    let (s1, _) = l1.accept().expect("accept");
    let (s2, _) = l2.accept().expect("accept");
    net.blackhole(&s1);
    net.blackhole(&s2);

    kat.wait_for("death on the wanted port", secs(15.0 * net.slack()), |v| {
        net.is(v, "death", Side::Client, wanted)
    });
    kat.collect_for(Duration::from_secs(1));
    let (status, events, stderr) = kat.stop();
    assert!(status.success());
    assert!(events
        .iter()
        .any(|v| net.is(v, "probe", Side::Client, wanted)));
    for v in &events {
        assert!(
            v["sport"] != other && v["dport"] != other,
            "event of port {other} leaked: {v}"
        );
    }
    let records: Vec<&String> = stderr
        .iter()
        .filter(|l| l.contains("record Record"))
        .collect();
    assert!(!records.is_empty(), "no record was logged: {stderr:#?}");
    for line in records {
        assert!(
            !line.contains(&format!("sport: {other},"))
                && !line.contains(&format!("dport: {other},")),
            "the kernel passed a record of port {other}: {line}"
        );
    }
}

/// The same over IPv6: an answered probe, then keepalive_timeout.
pub fn ipv6(net: &dyn Net, kat: &KatCmd, port: u16) {
    let mut kat = start(kat, port);
    let a = SocketAddr::new(net.server_addr(true), port);
    let listener = net.listen(a);
    let _client = net.connect(a, Box::new(|s| keepalive(s, 1, 1, 2)));
    let (server, _) = listener.accept().expect("accept");

    let answered = kat.wait_for("answer", secs(5.0 * net.slack()), |v| {
        net.is(v, "probe_answered", Side::Client, port)
    });
    assert_eq!(answered["daddr"], net.server_addr(true).to_string());
    net.blackhole(&server);
    // Dead about 2 s from here; the long wait costs nothing when it is,
    // and outlasts a keepalive timer this VM's kernel once let run over 8 s
    // late (docs/testing.md, `ipv6`).
    let dead = kat.wait_for("death", secs(30.0 * net.slack()), |v| {
        net.is(v, "death", Side::Client, port)
    });
    assert_eq!(dead["reason"], "keepalive_timeout", "{dead}");
    assert_eq!(dead["unanswered_probes"], 2);
}

/// `kat record` (in the lane under test) keeps a vanished peer's death,
/// and `kat report` names it, with the probes before it.
pub fn recorded_death_in_the_journal(net: &dyn Net, kat: &KatCmd, port: u16) {
    let dir = std::env::temp_dir().join(format!("kat-journal-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let recorder = Kat::record(kat, &dir, &["--port", &port.to_string()]);
    let listener = net.listen(addr(net, port));
    let client = net.connect(addr(net, port), Box::new(|s| keepalive(s, 1, 1, 2)));
    let (server, _) = listener.accept().expect("accept");
    net.blackhole(&server);

    // Dead at idle + count × interval = 3 s, when the kernel's keepalive
    // timer runs; this VM has run one many seconds late (see `ipv6`), so
    // kat's part is timed from the kernel's own verdict on the socket.
    let ended = net::ended_with(&client, secs(30.0 * net.slack()))
        .expect("the kernel has not ended the connection 30 s after the blackhole");
    assert_eq!(ended.raw_os_error(), Some(libc::ETIMEDOUT), "{ended}");
    // In the file a batch later.
    let deadline = std::time::Instant::now() + secs(5.0 * net.slack());
    let death = loop {
        // Read before the report, so a stall of this machine between the
        // two cannot fail a report that never looked after the deadline.
        let last_look = std::time::Instant::now() >= deadline;
        let r = kat::report(kat, &dir, &[]);
        let mine = r["deaths"]
            .as_array()
            .and_then(|ds| ds.iter().find(|d| d["dport"] == port).cloned());
        if let Some(d) = mine {
            break d;
        }
        assert!(
            !last_look,
            "no death in the journal 5 s after the kernel ended the connection: {r}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let (status, _, stderr) = recorder.stop_with(Signal::SIGTERM);
    assert!(status.success(), "kat record: {status} {stderr:#?}");
    assert_eq!(death["reason"], "keepalive_timeout", "{death}");
    assert_eq!(death["errno"], "ETIMEDOUT");
    assert_eq!(death["unanswered_probes"], 2);

    let end = format!("{}:{}", death["daddr"].as_str().unwrap_or("?"), port);
    let t = kat::report(kat, &dir, &["--conn", &end]);
    let timeline = t["connections"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["sport"] == death["sport"]))
        .unwrap_or_else(|| panic!("no timeline for {end}: {t}"));
    let story: Vec<String> = timeline["events"]
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| format!("{} {}", e["type"], e["probe"]))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        story,
        ["\"probe\" 1", "\"probe\" 2", "\"death\" null"],
        "{t}"
    );
    let r = kat::report(kat, &dir, &[]);
    let lanes = r["runs"][0]["lanes"].as_str().unwrap_or_default();
    if let Some(lane) = &kat.lane {
        assert!(lanes.contains(lane.as_str()), "recorded lanes {lanes:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `closes` aggregates and `closed` deaths of a journal directory.
fn journal_lines(dir: &std::path::Path) -> Vec<Value> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        lines.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
        );
    }
    lines
}

/// Orderly closes are counted in the kernel, not sent one by one: `kat
/// record` writes them as `closes` aggregates per service port, direction
/// and peer, with their lifetimes; with `--all`, as `closed` deaths.
pub fn orderly_closes_counted_in_the_kernel(net: &dyn Net, kat: &KatCmd, port: u16) {
    const CONNECTIONS: u64 = 10;
    let dir = std::env::temp_dir().join(format!("kat-closes-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let p = port.to_string();
    let recorder = Kat::record(kat, &dir, &["--port", &p, "--closes-every", "1s"]);
    let listener = net.listen(addr(net, port));
    for _ in 0..CONNECTIONS {
        let client = net.connect(addr(net, port), Box::new(|_| {}));
        let (mut server, _) = listener.accept().expect("accept");
        drop(client);
        assert_eq!(server.read(&mut [0u8; 8]).expect("EOF"), 0);
        drop(server);
    }
    // Counted in one interval, written the next (and flushed a batch later).
    let deadline = std::time::Instant::now() + secs(6.0 * net.slack());
    let counted = |lines: &[Value], direction: &str| -> u64 {
        lines
            .iter()
            .filter(|v| v["type"] == "closes" && v["port"] == port && v["direction"] == direction)
            .map(|v| v["count"].as_u64().unwrap_or(0))
            .sum()
    };
    let lines = loop {
        let lines = journal_lines(&dir);
        if counted(&lines, "in") >= CONNECTIONS && counted(&lines, "out") >= CONNECTIONS {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "closes not counted in the journal: {lines:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let (status, _, stderr) = recorder.stop_with(Signal::SIGTERM);
    assert!(status.success(), "kat record: {status} {stderr:#?}");
    assert_eq!(counted(&lines, "in"), CONNECTIONS, "{lines:#?}");
    assert_eq!(counted(&lines, "out"), CONNECTIONS, "{lines:#?}");
    for c in lines
        .iter()
        .filter(|v| v["type"] == "closes" && v["port"] == port)
    {
        assert_eq!(c["timed"], c["count"], "kat saw them established: {c}");
        let max = c["lifetime_max_s"].as_f64().unwrap_or(-1.0);
        assert!((0.0..2.0 * net.slack()).contains(&max), "{c}");
        assert_eq!(
            c["peer"]
                .as_str()
                .map(|a| a.parse::<std::net::IpAddr>().is_ok()),
            Some(true)
        );
    }
    assert!(
        !lines.iter().any(|v| v["reason"] == "closed"),
        "no orderly close is recorded one by one without --all"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // With --all each orderly close is a death of its own, and no aggregate.
    let recorder = Kat::record(kat, &dir, &["--port", &p, "--all", "--closes-every", "1s"]);
    let client = net.connect(addr(net, port), Box::new(|_| {}));
    let (mut server, _) = listener.accept().expect("accept");
    drop(client);
    assert_eq!(server.read(&mut [0u8; 8]).expect("EOF"), 0);
    drop(server);
    std::thread::sleep(secs(1.5 * net.slack()));
    let (status, _, stderr) = recorder.stop_with(Signal::SIGTERM);
    assert!(status.success(), "kat record --all: {status} {stderr:#?}");
    let lines = journal_lines(&dir);
    let closed = lines
        .iter()
        .filter(|v| v["reason"] == "closed" && (v["sport"] == port || v["dport"] == port))
        .count();
    assert_eq!(closed, 2, "both ends, one by one: {lines:#?}");
    assert_eq!(
        counted(&lines, "in") + counted(&lines, "out"),
        0,
        "{lines:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A keepalive death while a churn generator opens and closes connections
/// in the same namespace, traced with `--all` through small rings: the
/// orderly closes may be shed (counted), the death and its probes never.
/// Only the scenario's two ports are traced: the precious records of
/// other tests running beside it (their probes and deaths) would share
/// the small precious ring and are not this scenario's flood.
pub fn keepalive_death_during_churn(net: &dyn Net, kat_cmd: &KatCmd, port: u16) {
    let (p, churn_port) = (port.to_string(), (port + 1).to_string());
    let mut kat = Kat::trace(
        kat_cmd,
        &[
            "--all",
            "--ring-size",
            "64KiB",
            "--port",
            &p,
            "--port",
            &churn_port,
        ],
        &[],
    );
    let churn = load::churn(load::ChurnSpec {
        client_ns: net.client_ns(),
        server_ns: net.client_ns(),
        server: SocketAddr::from(([127, 0, 0, 1], port + 1)),
        // Emulated kernels run it several times slower: at the host's rate
        // the VM's loopback overflows and the churn's own closes turn into
        // RSTs (precious records), which is not this scenario's flood.
        per_second: (2000.0 / net.slack()) as u32,
        max: 200_000,
        max_time: secs(30.0 * net.slack()),
        keepalive: None,
        hold: Duration::ZERO,
        abort_every: 0,
    })
    .expect("churn");
    let listener = net.listen(addr(net, port));
    let _client = net.connect(addr(net, port), Box::new(|s| keepalive(s, 1, 1, 2)));
    let (server, _) = listener.accept().expect("accept");
    net.blackhole(&server);

    let dead = kat.wait_for("death under churn", secs(15.0 * net.slack()), |v| {
        net.is(v, "death", Side::Client, port)
    });
    let made = churn.stop();
    let (status, events, stderr) = kat.stop();
    assert!(status.success(), "kat exited with {status}: {stderr:#?}");
    assert_eq!(dead["reason"], "keepalive_timeout", "{dead}");
    assert_eq!(dead["unanswered_probes"], 2, "{dead}");
    let probes: Vec<u64> = events
        .iter()
        .filter(|v| net.is(v, "probe", Side::Client, port))
        .map(|v| v["probe"].as_u64().unwrap_or(0))
        .collect();
    let told: Vec<Value> = events
        .iter()
        .filter(|v| v["type"] == "lost" || net.is(v, "probe", Side::Client, port))
        .cloned()
        .collect();
    missing_probes_counted(&told, &probes, &[1, 2]);
    assert!(made >= 100, "the churn ran: {made} connections");
    let closed = events
        .iter()
        .filter(|v| v["reason"] == "closed" && v["dport"] == port + 1)
        .count();
    // A timer run the kernel gave kat no record of is no record shed.
    for lost in events.iter().filter(|v| v["type"] == "lost") {
        let kinds = lost["by_kind"].as_object().cloned().unwrap_or_default();
        assert!(
            kinds
                .keys()
                .all(|k| k == "closed" || k == "unseen_timer_run"),
            "only orderly closes may be shed: {lost}"
        );
    }
    assert!(closed > 0, "orderly closes of the churn were traced too");
}

#[cfg(test)]
mod tests {
    use super::SCENARIOS;

    /// The scenarios docs/testing.md's table names.
    fn documented() -> Vec<String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/testing.md");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.lines()
            .skip_while(|l| !l.starts_with("| scenario |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.split('`').nth(1).map(str::to_owned))
            .collect()
    }

    #[test]
    fn the_documented_scenarios_are_the_listed_ones() {
        let mut listed: Vec<&str> = SCENARIOS.iter().map(|(name, _)| *name).collect();
        listed.sort_unstable();
        let count = listed.len();
        listed.dedup();
        assert_eq!(listed.len(), count, "a scenario is listed twice");
        let mut documented = documented();
        documented.sort_unstable();
        assert_eq!(
            documented, listed,
            "docs/testing.md's table of scenarios and with_scenarios! differ"
        );
    }
}
