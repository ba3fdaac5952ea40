//! `kat trace` on the running kernel: real programs, real connections
//! between network namespaces, assertions on kat's JSON events.

mod lab;

use std::io::{Read as _, Write as _};
use std::time::Duration;

use lab::{keepalive, now, ts, Kat, Lab, CLIENT_ADDR, CLIENT_ADDR6, SERVER_ADDR, SERVER_ADDR6};
use serde_json::Value;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn death<'a>(lab: &Lab, events: &'a [Value], saddr: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|v| lab.is(v, "death", saddr))
        .collect()
}

#[test]
fn healthy_idle_connection_has_its_probes_answered() {
    if !lab::root_or_skip() {
        return;
    }
    let port = 6701;
    let lab = Lab::new();
    let mut kat = Kat::trace(&["--port", &port.to_string()]);
    let listener = lab.listen(port);
    let _client = lab.connect(port, |s| keepalive(s, 1, 1, 3));
    let _server = listener.accept().expect("accept");

    // Three idle periods: each probe is the first of its run and is
    // answered well within a second.
    let answers = std::cell::Cell::new(0);
    kat.wait_for("a third answer", secs(8), |v| {
        answers.set(answers.get() + usize::from(lab.is(v, "probe_answered", CLIENT_ADDR)));
        answers.get() == 3
    });
    let mine: Vec<&Value> = kat
        .seen
        .iter()
        .filter(|v| v["saddr"] == CLIENT_ADDR)
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
            (0.0..1.0).contains(&delay),
            "answer reported {delay:.3} s after the probe"
        );
    }
    let (status, events, _) = kat.stop();
    assert!(status.success(), "kat exited with {status}");
    assert!(death(&lab, &events, CLIENT_ADDR).is_empty(), "{events:#?}");
}

#[test]
fn vanished_peer_ends_in_keepalive_timeout() {
    if !lab::root_or_skip() {
        return;
    }
    let port = 6702;
    let (idle, intvl, count) = (2, 1, 3);
    let lab = Lab::new();
    let mut kat = Kat::trace(&["--port", &port.to_string()]);
    let listener = lab.listen(port);
    let mut client = lab.connect(port, move |s| keepalive(s, idle, intvl, count));
    let connected = now();
    let _server = listener.accept().expect("accept");
    lab.blackhole(&lab.server);

    let dead = kat.wait_for("death", secs(15), |v| lab.is(v, "death", CLIENT_ADDR));
    assert_eq!(dead["reason"], "keepalive_timeout", "{dead}");
    assert_eq!(dead["errno"], "ETIMEDOUT");
    assert_eq!(dead["unanswered_probes"], count);
    let expected = (idle + u64::from(count) * intvl) as f64;
    let took = ts(&dead) - connected;
    assert!(
        (took - expected).abs() < 0.75,
        "died after {took:.2} s, idle + count × interval = {expected} s"
    );
    let probes: Vec<u64> = kat
        .seen
        .iter()
        .filter(|v| lab.is(v, "probe", CLIENT_ADDR))
        .map(|v| v["probe"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(probes, [1, 2, 3], "{:#?}", kat.seen);
    assert!(!kat
        .seen
        .iter()
        .any(|v| lab.is(v, "probe_answered", CLIENT_ADDR)));

    // What the application sees matches kat's errno.
    let err = client
        .read(&mut [0u8; 1])
        .expect_err("the connection is dead");
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT));
    let (status, _, _) = kat.stop();
    assert!(status.success());
}

#[test]
fn restarted_peer_is_found_by_a_probe() {
    if !lab::root_or_skip() {
        return;
    }
    let port = 6703;
    let lab = Lab::new();
    let mut kat = Kat::trace(&["--port", &port.to_string()]);
    let listener = lab.listen(port);
    let _client = lab.connect(port, |s| keepalive(s, 2, 1, 5));
    let (server, _) = listener.accept().expect("accept");
    // The host goes down without a word: nothing leaves its namespace.
    lab.blackhole(&lab.server);
    socket2::SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(server);
    drop(listener);
    lab.restart_server();

    let dead = kat.wait_for("death", secs(15), |v| lab.is(v, "death", CLIENT_ADDR));
    assert_eq!(dead["reason"], "peer_reset", "{dead}");
    assert_eq!(dead["errno"], "ECONNRESET");
    assert_eq!(dead["found_by_probe"], true, "{dead}");
    assert!(kat.seen.iter().any(|v| lab.is(v, "probe", CLIENT_ADDR)));
}

#[test]
fn close_with_unread_data_and_linger_zero_abort() {
    if !lab::root_or_skip() {
        return;
    }
    let port = 6704;
    let lab = Lab::new();
    let mut kat = Kat::trace(&["--port", &port.to_string()]);
    let listener = lab.listen(port);

    let mut client = lab.connect(port, |_| {});
    let (unread, _) = listener.accept().expect("accept");
    client.write_all(b"never read").expect("write");
    std::thread::sleep(Duration::from_millis(100));
    drop(unread);
    let dead = kat.wait_for("abort_on_close", secs(5), |v| {
        lab.is(v, "death", SERVER_ADDR)
    });
    assert_eq!(dead["reason"], "abort_on_close", "{dead}");
    assert_eq!(dead["kernel_reset_reason"], "TCP_ABORT_ON_CLOSE");
    assert_eq!(dead["pid"], std::process::id(), "the closer is this test");
    let peer = kat.wait_for("peer death", secs(5), |v| lab.is(v, "death", CLIENT_ADDR));
    assert_eq!(peer["reason"], "peer_reset");
    assert_eq!(peer["found_by_probe"], false);
    kat.seen.clear();

    let _client2 = lab.connect(port, |_| {});
    let (lingering, _) = listener.accept().expect("accept");
    socket2::SockRef::from(&lingering)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(lingering);
    let dead = kat.wait_for("abort_on_linger", secs(5), |v| {
        lab.is(v, "death", SERVER_ADDR)
    });
    assert_eq!(dead["reason"], "abort_on_linger", "{dead}");
    drop(client);
}

#[test]
fn user_timeout_shorter_than_the_probes() {
    if !lab::root_or_skip() {
        return;
    }
    let port = 6705;
    let lab = Lab::new();
    let mut kat = Kat::trace(&["--port", &port.to_string()]);
    let listener = lab.listen(port);
    let _client = lab.connect(port, |s| {
        keepalive(s, 1, 1, 10);
        s.set_tcp_user_timeout(Some(Duration::from_millis(2500)))
            .expect("user timeout");
    });
    let connected = now();
    let _server = listener.accept().expect("accept");
    lab.blackhole(&lab.server);

    let dead = kat.wait_for("death", secs(15), |v| lab.is(v, "death", CLIENT_ADDR));
    assert_eq!(dead["reason"], "user_timeout", "{dead}");
    assert_eq!(dead["errno"], "ETIMEDOUT");
    assert_eq!(dead["keepalive"]["user_timeout_ms"], 2500);
    let took = ts(&dead) - connected;
    assert!(took < 5.0, "died after {took:.2} s, long before 10 probes");
    let probes = kat
        .seen
        .iter()
        .filter(|v| lab.is(v, "probe", CLIENT_ADDR))
        .count();
    assert!((1..10).contains(&probes), "{probes} probes");
}

#[test]
fn unacknowledged_data_ends_in_retransmit_timeout() {
    if !lab::root_or_skip() {
        return;
    }
    let port = 6706;
    let lab = Lab::new();
    lab.sysctl(&lab.client, "net.ipv4.tcp_retries2", "3");
    let mut kat = Kat::trace(&["--port", &port.to_string()]);
    let listener = lab.listen(port);
    let mut client = lab.connect(port, |_| {});
    let _server = listener.accept().expect("accept");
    lab.blackhole(&lab.server);
    client.write_all(b"into the void").expect("write");

    let dead = kat.wait_for("death", secs(20), |v| lab.is(v, "death", CLIENT_ADDR));
    assert_eq!(dead["reason"], "retransmit_timeout", "{dead}");
    assert_eq!(dead["errno"], "ETIMEDOUT");
    assert!(!kat.seen.iter().any(|v| lab.is(v, "probe", CLIENT_ADDR)));
}

#[test]
fn orderly_close_is_shown_only_with_all() {
    if !lab::root_or_skip() {
        return;
    }
    let port = 6707;
    let lab = Lab::new();
    let p = port.to_string();
    let mut all = Kat::trace(&["--port", &p, "--all"]);
    let abnormal = Kat::trace(&["--port", &p]);
    let listener = lab.listen(port);
    let client = lab.connect(port, |s| keepalive(s, 30, 5, 3));
    let (mut server, _) = listener.accept().expect("accept");
    drop(client);
    assert_eq!(server.read(&mut [0u8; 8]).expect("EOF"), 0);
    drop(server);

    for saddr in [CLIENT_ADDR, SERVER_ADDR] {
        let closed = all.wait_for("closed", secs(5), |v| lab.is(v, "death", saddr));
        assert_eq!(closed["reason"], "closed", "{closed}");
        assert_eq!(closed["errno"], Value::Null);
        assert!(closed["lifetime_s"].as_f64().is_some_and(|l| l < 5.0));
    }
    let (_, hidden, _) = abnormal.stop();
    assert!(
        hidden.iter().all(|v| v["type"] != "death"),
        "without --all an orderly close is not shown: {hidden:#?}"
    );
}

#[test]
fn port_filter_keeps_other_ports_out_in_the_kernel() {
    if !lab::root_or_skip() {
        return;
    }
    let (wanted, other) = (6708, 6709);
    let lab = Lab::new();
    let mut kat = Kat::trace_env(
        &["--port", &wanted.to_string()],
        &[("RUST_LOG", "kat=trace")],
    );
    let l1 = lab.listen(wanted);
    let l2 = lab.listen(other);
    let _c1 = lab.connect(wanted, |s| keepalive(s, 1, 1, 2));
    let _c2 = lab.connect(other, |s| keepalive(s, 1, 1, 2));
    let _s1 = l1.accept().expect("accept");
    let _s2 = l2.accept().expect("accept");
    lab.blackhole(&lab.server);

    kat.wait_for("death on the wanted port", secs(10), |v| {
        lab.is(v, "death", CLIENT_ADDR) && v["dport"] == wanted
    });
    kat.collect_for(Duration::from_secs(1));
    let (status, events, stderr) = kat.stop();
    assert!(status.success());
    assert!(events.iter().any(|v| lab.is(v, "probe", CLIENT_ADDR)));
    for v in &events {
        assert!(
            v["sport"] != other && v["dport"] != other,
            "event of port {other} leaked: {v}"
        );
    }
    // Every record the kernel handed over is logged at trace level: none
    // may be about the other port, or the filter ran in userspace only.
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

#[test]
fn ipv6_connections_are_traced_too() {
    if !lab::root_or_skip() {
        return;
    }
    let port = 6710;
    let lab = Lab::new();
    let mut kat = Kat::trace(&["--port", &port.to_string()]);
    let listener = lab.listen_on(SERVER_ADDR6, port);
    let addr = format!("[{SERVER_ADDR6}]:{port}").parse().expect("addr");
    let _client = lab.connect_to(addr, |s| keepalive(s, 1, 1, 2));
    let _server = listener.accept().expect("accept");

    let answered = kat.wait_for("answer", secs(5), |v| {
        lab.is(v, "probe_answered", CLIENT_ADDR6)
    });
    assert_eq!(answered["daddr"], SERVER_ADDR6);
    lab.blackhole(&lab.server);
    let dead = kat.wait_for("death", secs(10), |v| lab.is(v, "death", CLIENT_ADDR6));
    assert_eq!(dead["reason"], "keepalive_timeout", "{dead}");
    assert_eq!(dead["unanswered_probes"], 2);
}
