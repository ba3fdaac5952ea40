//! `kat record --metrics` scraped every second by a real Prometheus server
//! (Debian's package) while two scenarios of the suite run: a keepalive
//! death and answered probes. Prometheus's HTTP API must say what the same
//! kat wrote in its journal.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

mod prometheus;

use kat_scenarios::kat::Kat;
use kat_scenarios::netns::Lab;
use kat_scenarios::KatCmd;
use kat_userspace::journal::reader::read_dir;
use kat_userspace::journal::Entry;
use prometheus::{free_port, Prometheus};
use serde_json::Value;

const KEEPALIVE_DEATH_PORT: u16 = 6851;
const ANSWERED_PORT: u16 = 6853;
/// Held open on loopback for the census: keepalive on with TCP_KEEPIDLE
/// 1234 s, and keepalive off.
const HELD_PORT: u16 = 6855;
const HELD_IDLE_S: u64 = 1234;

fn kat_cmd() -> KatCmd {
    KatCmd {
        binary: env!("CARGO_BIN_EXE_kat").to_string(),
        lane: None,
    }
}

/// The value of a query with one result (0 with none).
fn one(prometheus: &Prometheus, q: &str) -> f64 {
    match prometheus.query(q).as_slice() {
        [] => 0.0,
        [(_, v)] => *v,
        many => panic!("{q}: more than one result: {many:?}"),
    }
}

/// A keepalive connection on loopback (TCP_KEEPIDLE `HELD_IDLE_S`) and
/// its server's end (keepalive off), held until dropped.
fn held_connections() -> (TcpListener, std::net::TcpStream, std::net::TcpStream) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], HELD_PORT));
    let listener = TcpListener::bind(addr).expect("listen");
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    kat_scenarios::net::keepalive(&s, HELD_IDLE_S, 60, 5);
    s.connect(&addr.into()).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (listener, s.into(), server)
}

#[test]
fn prometheus_scrapes_what_kat_saw() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = kat_cmd();
    let metrics = format!("127.0.0.1:{}", free_port());
    let ports = [KEEPALIVE_DEATH_PORT, ANSWERED_PORT, HELD_PORT].map(|p| p.to_string());
    let filter = [
        "--port", &ports[0], "--port", &ports[1], "--port", &ports[2],
    ];
    let mut args = vec!["--metrics", metrics.as_str()];
    args.extend(filter);
    let journal = dir.path().join("journal");
    let recorder = Kat::record(&cmd, &journal, &args);
    let prometheus = Prometheus::start(dir.path(), &metrics);

    // What a scrape gets besides the metrics.
    let url = format!("http://{metrics}");
    assert!(ureq::get(format!("{url}/healthz")).call().is_ok());
    match ureq::get(format!("{url}/nope")).call() {
        Err(ureq::Error::StatusCode(code)) => assert_eq!(code, 404),
        other => panic!("GET /nope: {other:?}"),
    }
    match ureq::post(format!("{url}/metrics")).send_empty() {
        Err(ureq::Error::StatusCode(code)) => assert_eq!(code, 405),
        other => panic!("POST /metrics: {other:?}"),
    }
    // The address is taken: a second kat says so at once, and fails.
    let second = Command::new(&cmd.binary)
        .args(["record", "--dir"])
        .arg(dir.path().join("second"))
        .args(["--metrics", &metrics])
        .output()
        .expect("a second kat record");
    assert_eq!(second.status.code(), Some(1));
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.contains(&format!("cannot serve metrics on {metrics}")),
        "{said}"
    );

    let held = held_connections();

    kat_scenarios::vanished_peer_keepalive_timeout(&Lab::new(), &cmd, KEEPALIVE_DEATH_PORT);
    kat_scenarios::healthy_probes_answered(&Lab::new(), &cmd, ANSWERED_PORT);
    // Two scrapes after the last event.
    std::thread::sleep(Duration::from_millis(2500));

    let deaths_by_reason = |reason: &str| {
        one(
            &prometheus,
            &format!(r#"kat_connection_deaths_total{{reason="{reason}"}}"#),
        )
    };
    let scraped = [
        deaths_by_reason("keepalive_timeout"),
        deaths_by_reason("peer_reset"),
        one(
            &prometheus,
            r#"kat_keepalive_probes_total{outcome="answered"}"#,
        ),
        one(
            &prometheus,
            r#"kat_keepalive_probes_total{outcome="unanswered"}"#,
        ),
        one(
            &prometheus,
            r#"kat_idle_before_death_seconds_count{reason="keepalive_timeout"}"#,
        ),
    ];
    let build = prometheus.query("kat_build_info");
    // The census (every 10 s) counts the held connections: the client with
    // keepalive on and its own idle setting, the server's end without.
    let census_deadline = Instant::now() + Duration::from_secs(30);
    let on_socket = r#"kat_connections{keepalive="on",source="socket"}"#;
    while one(&prometheus, on_socket) < 1.0 {
        assert!(
            Instant::now() < census_deadline,
            "no census counted the held connection"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        one(
            &prometheus,
            r#"kat_connections{keepalive="off",source="sysctl"}"#
        ) >= 1.0,
        "the server's end, keepalive off"
    );
    let idle_between = one(
        &prometheus,
        r#"kat_keepalive_idle_seconds_bucket{le="1800.0"} - ignoring(le) kat_keepalive_idle_seconds_bucket{le="900.0"}"#,
    );
    assert_eq!(
        idle_between, 1.0,
        "one connection with an idle of {HELD_IDLE_S} s"
    );
    drop(held);
    let (status, _, _) = recorder.stop();
    assert!(status.success());

    let seen: Vec<Value> = read_dir(&journal)
        .expect("the journal")
        .entries
        .into_iter()
        .filter_map(|e| match e {
            Entry::Event(ev) => serde_json::to_value(ev).ok(),
            _ => None,
        })
        .collect();
    let deaths = |reason: &str| {
        seen.iter()
            .filter(|v| v["type"] == "death" && v["reason"] == reason)
            .count() as f64
    };
    let sum = |ty: &str, field: &str| -> f64 {
        seen.iter()
            .filter(|v| v["type"] == ty)
            .map(|v| v[field].as_f64().unwrap_or(0.0))
            .sum()
    };
    assert!(deaths("keepalive_timeout") >= 1.0, "{seen:#?}");
    let answered = sum("probe_answered", "probe");
    assert!(answered >= 1.0, "{seen:#?}");
    assert_eq!(
        scraped,
        [
            deaths("keepalive_timeout"),
            deaths("peer_reset"),
            answered,
            sum("death", "unanswered_probes"),
            deaths("keepalive_timeout"),
        ],
        "Prometheus (keepalive_timeout and peer_reset deaths, probes answered and unanswered, silences) against the journal"
    );
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0].0["version"], env!("CARGO_PKG_VERSION"));
    assert!(build[0].0["lanes"]
        .as_str()
        .is_some_and(|l| l.contains("lane")));
}
