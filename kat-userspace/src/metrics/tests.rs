use hyper::{Method, StatusCode};
use prometheus_client::encoding::text::encode;

use super::server::{parse_addr, respond};
use super::*;
use crate::event::{Reason, Silence, Verdict};
use crate::testkit::{addr, at, conn, death, event};

fn build() -> Build<'static> {
    Build {
        version: "0.1.0",
        kernel: "6.18.44",
        lanes: "tracepoint lane",
    }
}

fn text(registry: &Registry) -> String {
    let mut s = String::new();
    encode(&mut s, registry).expect("encodes");
    s
}

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
fn deaths_probes_resets_and_silences_are_counted_by_reason() {
    let (metrics, registry) = Metrics::new(&build(), 1000);
    let k = conn(addr("10.0.0.1"), 40000, addr("10.0.0.2"), 6699);
    let mut keepalive = death(Reason::KeepaliveTimeout, Some("ETIMEDOUT"), 3, Some(9.0));
    if let What::Death {
        kernel_reset_reason,
        silence,
        ..
    } = &mut keepalive
    {
        *kernel_reset_reason = Some("TCP_KEEPALIVE_TIMEOUT".into());
        *silence = Some(Silence {
            idle_before_s: 400.0,
            verdict: Some(Verdict::MiddleboxIdleDropSuspected),
            survived_idle_s: Some(300.0),
        });
    }
    metrics.observe(&[
        event(k, at(1.0), What::ProbeAnswered { probe: 2 }),
        event(k, at(2.0), keepalive),
        event(
            k,
            at(3.0),
            death(Reason::PeerReset, Some("ECONNRESET"), 0, None),
        ),
    ]);
    let t = text(&registry);
    assert!(
        has(
            &t,
            r#"kat_connection_deaths_total{reason="keepalive_timeout"} 1"#
        ),
        "{t}"
    );
    assert!(
        has(&t, r#"kat_connection_deaths_total{reason="peer_reset"} 1"#),
        "{t}"
    );
    assert!(
        has(&t, r#"kat_keepalive_probes_total{outcome="answered"} 2"#),
        "{t}"
    );
    assert!(
        has(&t, r#"kat_keepalive_probes_total{outcome="unanswered"} 3"#),
        "{t}"
    );
    assert!(
        has(
            &t,
            r#"kat_tcp_resets_sent_total{kernel_reason="TCP_KEEPALIVE_TIMEOUT"} 1"#
        ),
        "{t}"
    );
    // 400 s is over the 350 s bucket, under the 600 s one.
    assert!(
        has(
            &t,
            r#"kat_idle_before_death_seconds_bucket{le="350.0",reason="keepalive_timeout"} 0"#
        ),
        "{t}"
    );
    assert!(
        has(
            &t,
            r#"kat_idle_before_death_seconds_bucket{le="600.0",reason="keepalive_timeout"} 1"#
        ),
        "{t}"
    );
    assert!(
        has(
            &t,
            r#"kat_build_info{version="0.1.0",kernel="6.18.44",lanes="tracepoint lane"} 1"#
        ),
        "{t}"
    );
    // No address, port or pid is ever a label.
    assert!(!t.contains("10.0.0") && !t.contains("6699"), "{t}");
}

#[test]
fn losses_follow_the_kernel_counts_and_closes_count_as_closed() {
    let (metrics, registry) = Metrics::new(&build(), 1000);
    let mut lost = crate::source::LostCounts::default();
    lost.by_kind[kat_common::kind::CLOSED as usize] = 5;
    metrics.lost(&lost.by_kind());
    lost.by_kind[kat_common::kind::CLOSED as usize] = 8;
    lost.skipped_runs = 1;
    let mut by_kind = lost.by_kind();
    by_kind.insert("journal".into(), 3);
    metrics.lost(&by_kind);
    metrics.lost(&by_kind);
    let t = text(&registry);
    assert!(has(&t, r#"kat_events_lost_total{kind="closed"} 8"#), "{t}");
    assert!(
        has(&t, r#"kat_events_lost_total{kind="skipped_run"} 1"#),
        "{t}"
    );
    assert!(has(&t, r#"kat_events_lost_total{kind="journal"} 3"#), "{t}");
}

#[test]
fn flows_conntrack_forgot_are_counted_with_their_lost_ones_apart() {
    let (metrics, registry) = Metrics::new(&build(), 1000);
    assert!(has(&text(&registry), "kat_conntrack_expired_total 0"));
    metrics.conntrack_expired(2);
    metrics.conntrack_expired(1);
    let lost = crate::source::LostCounts {
        conntrack_expired: 4,
        ..Default::default()
    };
    metrics.lost(&lost.by_kind());
    let t = text(&registry);
    assert!(has(&t, "kat_conntrack_expired_total 3"), "{t}");
    assert!(
        has(&t, r#"kat_events_lost_total{kind="conntrack_expired"} 4"#),
        "{t}"
    );
    assert_eq!(lost.precious(), 4, "a lost expiry is not an orderly close");
}

#[test]
fn scrapes_get_metrics_and_health_and_nothing_else() {
    let (_metrics, registry) = Metrics::new(&build(), 1000);
    let ok = respond(&Method::GET, "/metrics", &registry);
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(ok.headers()["content-type"]
        .to_str()
        .is_ok_and(|v| v.starts_with("application/openmetrics-text")));
    assert_eq!(
        respond(&Method::GET, "/healthz", &registry).status(),
        StatusCode::OK
    );
    assert_eq!(
        respond(&Method::GET, "/", &registry).status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        respond(&Method::GET, "/metrics/x", &registry).status(),
        StatusCode::NOT_FOUND
    );
    let post = respond(&Method::POST, "/metrics", &registry);
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
}

#[test]
fn the_listen_address_takes_a_bare_port() {
    assert_eq!(
        parse_addr(":9464"),
        Ok("0.0.0.0:9464".parse().expect("addr"))
    );
    assert_eq!(
        parse_addr("127.0.0.1:9464"),
        Ok("127.0.0.1:9464".parse().expect("addr"))
    );
    assert!(parse_addr("[::1]:9464").is_ok());
    assert!(parse_addr("9464").is_err());
    assert!(parse_addr("localhost:x").is_err());
}

fn owned(pod: &str, reason: Reason) -> Event {
    let k = conn(addr("10.0.0.1"), 40000, addr("10.0.0.2"), 6699);
    let mut ev = event(k, at(1.0), death(reason, None, 0, None));
    ev.workload = Some(std::sync::Arc::new(crate::workload::Workload {
        namespace: Some("shop".into()),
        pod: Some(pod.into()),
        container: Some("nginx".into()),
        ..Default::default()
    }));
    ev
}

#[test]
fn deaths_carry_their_owners_labels_and_only_known_ones() {
    let (metrics, registry) = Metrics::new(&build(), 1000);
    let k = conn(addr("10.0.0.1"), 40000, addr("10.0.0.2"), 6699);
    let mut unit = event(k, at(1.0), death(Reason::PeerReset, None, 0, None));
    unit.workload = Some(std::sync::Arc::new(crate::workload::Workload {
        unit: Some("psql.service".into()),
        ..Default::default()
    }));
    metrics.observe(&[owned("web-1", Reason::PeerReset), unit]);
    let t = text(&registry);
    assert!(
        has(
            &t,
            r#"kat_connection_deaths_total{reason="peer_reset",namespace="shop",pod="web-1",container="nginx"} 1"#
        ),
        "{t}"
    );
    assert!(
        has(
            &t,
            r#"kat_connection_deaths_total{reason="peer_reset",unit="psql.service"} 1"#
        ),
        "{t}"
    );
}

#[test]
fn thousands_of_pods_stop_at_the_cap_and_the_rest_count_as_overflow() {
    let (metrics, registry) = Metrics::new(&build(), 100);
    let deaths: Vec<Event> = (0..5000)
        .map(|i| owned(&format!("web-{i}"), Reason::PeerReset))
        .collect();
    metrics.observe(&deaths);
    // An owner seen before the cap keeps its own series.
    metrics.observe(&[owned("web-7", Reason::PeerReset)]);
    let t = text(&registry);
    let series = t
        .lines()
        .filter(|l| l.starts_with("kat_connection_deaths_total{"))
        .count();
    assert_eq!(series, 101, "100 owners and the overflow");
    assert!(
        has(
            &t,
            r#"kat_connection_deaths_total{reason="peer_reset",namespace="_overflow",pod="_overflow",container="_overflow",unit="_overflow"} 4900"#
        ),
        "{t}"
    );
    assert!(
        has(
            &t,
            r#"kat_connection_deaths_total{reason="peer_reset",namespace="shop",pod="web-7",container="nginx"} 2"#
        ),
        "{t}"
    );
}

#[test]
fn a_census_sets_the_connection_gauges_and_replaces_the_idle_histogram() {
    let (metrics, registry) = Metrics::new(&build(), 1000);
    let gauges = metrics.conn_gauges();
    let mut census = crate::conns::Census::default();
    census
        .counts
        .insert((true, crate::event::Origin::Socket), 2);
    census
        .counts
        .insert((false, crate::event::Origin::Sysctl), 5);
    census.idle_s = vec![60.0, 400.0];
    gauges.publish(&census);
    let t = text(&registry);
    for line in [
        r#"kat_connections{keepalive="on",source="socket"} 2"#,
        r#"kat_connections{keepalive="on",source="sysctl"} 0"#,
        r#"kat_connections{keepalive="off",source="sysctl"} 5"#,
        r#"kat_keepalive_idle_seconds_count 2"#,
        r#"kat_keepalive_idle_seconds_bucket{le="60.0"} 1"#,
        r#"kat_keepalive_idle_seconds_bucket{le="600.0"} 2"#,
    ] {
        assert!(has(&t, line), "no {line} in\n{t}");
    }
    // The next census replaces the last: nothing is summed across them.
    gauges.publish(&crate::conns::Census::default());
    let t = text(&registry);
    assert!(has(&t, "kat_keepalive_idle_seconds_count 0"), "{t}");
    assert!(
        has(&t, r#"kat_connections{keepalive="on",source="socket"} 0"#),
        "{t}"
    );
}

/// Everything a plain HTTP/1.1 client reads for `request` on `addr`.
async fn fetch(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.expect("read");
    reply
}

#[tokio::test]
async fn stalled_clients_cost_their_own_connections_for_a_while_only() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (_metrics, registry) = Metrics::new(&build(), 1000);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let timeout = Duration::from_millis(500);
    tokio::spawn(super::server::serve(
        listener,
        std::sync::Arc::new(registry),
        timeout,
    ));
    // A hundred clients that send half a request and stall.
    let mut stalled = Vec::new();
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /metr").await.expect("write");
        stalled.push(s);
    }
    // A scrape beside them is answered at once.
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        fetch(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: kat\r\nConnection: close\r\n\r\n",
        ),
    )
    .await
    .expect("a scrape beside stalled clients is answered");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("kat_build_info"), "{reply}");
    // And the stalled ones are closed once their time is up.
    for s in &mut stalled {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(timeout * 4, s.read(&mut buf))
            .await
            .expect("closed by the server in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing but the close");
    }
}
