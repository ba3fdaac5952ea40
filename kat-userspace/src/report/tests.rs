use chrono::{Local, TimeZone as _};

use super::summary::*;
use super::*;
use crate::event::{Closes, Direction, Lost, Reason, What};
use crate::journal::tests::{death, event, probe};
use crate::journal::Entry;
use crate::testkit::{at, header};

fn answered(ts: f64, sport: u16) -> Entry {
    Entry::Event(event(ts, sport, What::ProbeAnswered { probe: 1 }))
}

fn ev(e: crate::event::Event) -> Entry {
    Entry::Event(e)
}

fn with_peer(mut e: crate::event::Event, peer: &str) -> crate::event::Event {
    e.daddr = peer.parse().expect("addr");
    e
}

/// Three stories: a vanished peer (probes 1-3 then keepalive_timeout),
/// a peer reset, an orderly close; a healthy connection; a lost count.
fn journal() -> Vec<Entry> {
    let mut reset = death(20.0, 40002, Reason::PeerReset);
    if let What::Death {
        errno,
        unanswered_probes,
        lifetime_s,
        ..
    } = &mut reset.what
    {
        *errno = Some("ECONNRESET".into());
        *unanswered_probes = 1;
        *lifetime_s = Some(100.0);
    }
    vec![
        Entry::Header(header()),
        ev(probe(1.0, 40001, 1)),
        answered(1.2, 40001),
        ev(probe(10.0, 40001, 1)),
        ev(probe(11.0, 40001, 2)),
        ev(probe(12.0, 40001, 3)),
        ev(death(13.0, 40001, Reason::KeepaliveTimeout)),
        ev(probe(15.0, 40002, 1)),
        ev(reset),
        ev(death(21.0, 40003, Reason::Closed)),
        ev(probe(22.0, 40004, 1)),
        answered(22.1, 40004),
        Entry::Lost(Lost {
            ts: at(5.0),
            count: 2,
            by_kind: Default::default(),
        }),
        Entry::Lost(Lost {
            ts: at(23.0),
            count: 5,
            by_kind: Default::default(),
        }),
    ]
}

#[test]
fn deaths_are_counted_by_reason_with_their_numbers() {
    let s = summarize(&journal(), &Filter::default(), 10);
    assert_eq!(s.events, 11);
    assert_eq!(s.connections, 4);
    assert_eq!((s.probes, s.probes_answered), (6, 2));
    assert_eq!(s.probing_connections, 3);
    assert_eq!(s.closed, 1);
    assert_eq!(s.lost, 5, "the last count of a run is its total");
    let reasons: Vec<(Reason, u64)> = s.reasons.iter().map(|r| (r.reason, r.deaths)).collect();
    assert_eq!(
        reasons,
        [(Reason::KeepaliveTimeout, 1), (Reason::PeerReset, 1)]
    );
    let k = &s.reasons[0];
    assert_eq!(k.errno.as_deref(), Some("ETIMEDOUT"));
    assert_eq!(k.unanswered_probes_median, Some(3.0));
    // The final run of probes started at 10 s; the death came at 13 s.
    assert_eq!(k.detected_in_s_median, Some(3.0));
    assert_eq!(k.lived_s_median, Some(13.0));
    let r = &s.reasons[1];
    assert_eq!(r.errno.as_deref(), Some("ECONNRESET"));
    assert_eq!(r.detected_in_s_median, Some(5.0));
    assert_eq!(r.lived_s_max, Some(100.0));
    assert_eq!(s.deaths.len(), 2);
    assert_eq!(s.deaths[0].conn.sport, 40001);
    assert_eq!(s.from, Some(at(1.0)));
    assert_eq!(s.to, Some(at(22.1)));
}

#[test]
fn medians_worst_peers_and_ports() {
    let mut entries = vec![Entry::Header(header())];
    for (i, (peer, reason)) in [
        ("198.18.2.9", Reason::PeerReset),
        ("198.18.2.9", Reason::KeepaliveTimeout),
        ("198.18.2.9", Reason::KeepaliveTimeout),
        ("198.18.2.7", Reason::RetransmitTimeout),
    ]
    .into_iter()
    .enumerate()
    {
        let mut d = with_peer(death(i as f64, 41000 + i as u16, reason), peer);
        if let What::Death { lifetime_s, .. } = &mut d.what {
            *lifetime_s = Some(10.0 * (i + 1) as f64);
        }
        entries.push(ev(d));
    }
    let s = summarize(&entries, &Filter::default(), 1);
    assert_eq!(s.worst_peers.len(), 1, "--top 1");
    let w = &s.worst_peers[0];
    assert_eq!((w.name.as_str(), w.deaths), ("198.18.2.9", 3));
    assert_eq!(w.reasons.get(&Reason::KeepaliveTimeout), Some(&2));
    assert_eq!(s.worst_ports[0].name, "6699");
    assert_eq!(s.worst_ports[0].deaths, 4);
    let k = s
        .reasons
        .iter()
        .find(|r| r.reason == Reason::KeepaliveTimeout)
        .expect("row");
    assert_eq!(k.lived_s_median, Some(25.0), "median of 20 and 30");
    assert_eq!(k.lived_s_max, Some(30.0));
}

#[test]
fn filters_select_time_ports_addresses_and_one_end() {
    let j = journal();
    let by = |f: Filter| summarize(&j, &f, 10);
    let late = by(Filter {
        since: Some(at(14.0)),
        ..Filter::default()
    });
    assert_eq!(late.reasons.len(), 1);
    assert_eq!(late.reasons[0].reason, Reason::PeerReset);
    assert_eq!(late.lost, 5);
    let early = by(Filter {
        until: Some(at(14.0)),
        ..Filter::default()
    });
    assert_eq!(early.reasons[0].reason, Reason::KeepaliveTimeout);
    assert_eq!(early.lost, 2);
    let port = by(Filter {
        ports: vec![40002],
        ..Filter::default()
    });
    assert_eq!(port.connections, 1);
    let nobody = by(Filter {
        addrs: vec!["10.0.0.1".parse().expect("addr")],
        ..Filter::default()
    });
    assert_eq!((nobody.events, nobody.from), (0, None));
    let conn = Filter {
        conn: Some("198.18.1.2:40001".parse().expect("addr")),
        ..Filter::default()
    };
    assert_eq!(by(conn.clone()).events, 6);
    let remote = Filter {
        conn: Some("198.18.2.2:6699".parse().expect("addr")),
        ..Filter::default()
    };
    assert_eq!(by(remote).connections, 4);
}

#[test]
fn a_death_ends_a_timeline_and_the_same_addresses_start_another() {
    let j = [
        probe(1.0, 40001, 1),
        death(2.0, 40001, Reason::PeerReset),
        probe(3.0, 40001, 1),
    ];
    let t = timelines(j.iter());
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].events.len(), 2);
    assert!(t[0].death().is_some());
    assert!(t[1].death().is_none());
    assert_eq!((t[0].pid, t[0].comm.as_deref()), (Some(7), Some("client")));
}

#[test]
fn restarts_sum_their_lost_counts() {
    let mut j = journal();
    let mut second = header();
    second.run_started = at(30.0);
    j.push(Entry::Header(second));
    j.push(Entry::Lost(Lost {
        ts: at(31.0),
        count: 3,
        by_kind: Default::default(),
    }));
    let s = summarize(&j, &Filter::default(), 10);
    assert_eq!(s.lost, 8);
    assert_eq!(s.runs.len(), 2);
}

#[test]
fn times_and_durations_for_since_and_until() {
    let now = Local
        .with_ymd_and_hms(2026, 11, 21, 12, 0, 0)
        .single()
        .expect("now");
    let utc = |s: &str| parse_when(s, now).expect(s);
    assert_eq!(
        utc("2h"),
        (now - chrono::Duration::hours(2)).with_timezone(&Utc)
    );
    assert_eq!(
        utc("1d 30m"),
        (now - chrono::Duration::minutes(1470)).with_timezone(&Utc)
    );
    assert_eq!(
        utc("2026-11-21T03:12:00Z"),
        Utc.with_ymd_and_hms(2026, 11, 21, 3, 12, 0)
            .single()
            .expect("t")
    );
    let local = |h, m| {
        Local
            .with_ymd_and_hms(2026, 11, 21, h, m, 0)
            .single()
            .expect("t")
            .with_timezone(&Utc)
    };
    assert_eq!(utc("2026-11-21 03:12"), local(3, 12));
    assert_eq!(utc("2026-11-21T03:12:00"), local(3, 12));
    assert_eq!(utc("03:12"), local(3, 12));
    assert_eq!(utc("2026-11-21"), local(0, 0));
    for bad in ["yesterday", "", "25:00", "2026-13-01"] {
        let e = parse_when(bad, now).expect_err(bad);
        assert!(e.contains("neither a duration"), "{e}");
    }
}

#[test]
fn text_report_names_reasons_peers_and_latest_deaths() {
    let s = summarize(&journal(), &Filter::default(), 10);
    let t = text::summary(&s, std::path::Path::new("/var/lib/kat"), 2, 10);
    for want in [
        "kat report of /var/lib/kat (2 files)",
        "on web-1, Linux 6.18.44, tracepoint lane",
        "Events    11: 6 probes (2 answered) on 3 of 4 connections, 2 deaths, 1 orderly closes",
        "Lost      5 records",
        "keepalive_timeout         1  ETIMEDOUT           3           3s",
        "Worst peers",
        "198.18.2.2                                    2  keepalive_timeout 1, peer_reset 1",
        "198.18.1.2:40001 → 198.18.2.2:6699",
        "kat report --conn ADDR:PORT",
    ] {
        assert!(t.contains(want), "no {want:?} in:\n{t}");
    }
    let empty = summarize(
        &journal(),
        &Filter {
            since: Some(at(99.0)),
            ..Filter::default()
        },
        10,
    );
    let t = text::summary(&empty, std::path::Path::new("/j"), 1, 10);
    assert!(t.contains("No events in this period."), "{t}");
}

#[test]
fn timeline_text_tells_the_story_in_order() {
    let j: Vec<crate::event::Event> = journal()
        .into_iter()
        .filter_map(|e| match e {
            Entry::Event(ev) if ev.sport == 40001 => Some(ev),
            _ => None,
        })
        .collect();
    let t = text::timelines(&timelines(j.iter()));
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[0].starts_with("198.18.1.2:40001 → 198.18.2.2:6699  netns"),
        "{t}"
    );
    assert!(lines[0].contains("pid 7 (client)"), "{t}");
    assert!(lines[1].ends_with("probe 1/3, idle 1s"), "{t}");
    assert!(lines[2].ends_with("probe 1 answered"), "{t}");
    assert!(
        lines[5].ends_with("probe 3/3, idle 12s, previous unanswered"),
        "{t}"
    );
    assert!(
        lines[6].contains("DEAD keepalive_timeout after 3 unanswered probes, ETIMEDOUT"),
        "{t}"
    );
    assert_eq!(lines.len(), 7, "{t}");
    assert_eq!(
        text::timelines(&[]),
        "No matching connection in the journal."
    );
}

fn closes(ts: f64, port: u16, peer: &str, count: u64) -> Entry {
    Entry::Closes(Closes {
        ts: at(ts),
        interval_s: 10.0,
        netns: 4026531840,
        port,
        direction: Direction::Out,
        peer: peer.parse().expect("addr"),
        count,
        timed: count,
        lifetime_sum_s: 5.0 * count as f64,
        lifetime_max_s: 9.0,
    })
}

#[test]
fn kernel_counted_closes_add_to_the_orderly_closes_as_filtered() {
    let mut j = journal();
    j.push(closes(24.0, 6699, "198.18.2.2", 4));
    j.push(closes(25.0, 8080, "198.18.2.7", 2));
    let s = summarize(&j, &Filter::default(), 10);
    assert_eq!(
        s.closed, 7,
        "one closed death and 4 + 2 counted in the kernel"
    );
    // They are closes, not events, connections or abnormal deaths.
    assert_eq!((s.events, s.connections, s.to), (11, 4, Some(at(22.1))));
    assert!(s.reasons.iter().all(|r| r.reason != Reason::Closed));
    let peers: Vec<(&str, u64)> = s
        .worst_peers
        .iter()
        .map(|w| (w.name.as_str(), w.deaths))
        .collect();
    assert_eq!(peers, [("198.18.2.2", 2)]);
    assert_eq!(s.worst_ports.len(), 1);
    let t = text::summary(&s, std::path::Path::new("/j"), 1, 10);
    assert!(t.contains("2 deaths, 7 orderly closes"), "{t}");

    let closed = |f: Filter| summarize(&j, &f, 10).closed;
    let port = |p| Filter {
        ports: vec![p],
        ..Filter::default()
    };
    assert_eq!(closed(port(8080)), 2);
    assert_eq!(closed(port(6699)), 5, "the closed death's remote port too");
    assert_eq!(closed(port(40003)), 1, "an aggregate has no client port");
    let addr = |a: &str| Filter {
        addrs: vec![a.parse().expect("addr")],
        ..Filter::default()
    };
    assert_eq!(closed(addr("198.18.2.7")), 2);
    assert_eq!(closed(addr("198.18.1.2")), 1, "nor a local address");
    let since = Filter {
        since: Some(at(24.5)),
        ..Filter::default()
    };
    assert_eq!(closed(since), 2);
    let until = Filter {
        until: Some(at(24.5)),
        ..Filter::default()
    };
    assert_eq!(closed(until), 5);
    let conn = Filter {
        conn: Some("198.18.2.2:6699".parse().expect("addr")),
        ..Filter::default()
    };
    assert_eq!(closed(conn), 1, "an aggregate names no connection");
}

#[test]
fn events_a_few_seconds_out_of_order_count_as_if_sorted() {
    let j = journal();
    let mut late = j.clone();
    // Probe 3 written after the death it came before, and a close after
    // the next connection's probe.
    late.swap(5, 6);
    late.swap(9, 10);
    let s = summarize(&late, &Filter::default(), 10);
    assert_eq!(s, summarize(&j, &Filter::default(), 10));
    assert_eq!((s.connections, s.out_of_order), (4, 0));

    // Written more than REORDER after events of its time: taken as it comes.
    let j = [probe(100.0, 1, 1), probe(200.0, 2, 1), probe(10.0, 3, 1)].map(ev);
    let s = summarize(&j, &Filter::default(), 10);
    assert_eq!((s.events, s.out_of_order, s.from), (3, 1, Some(at(10.0))));
}

#[test]
fn deaths_at_the_same_time_are_listed_in_the_order_their_connections_started() {
    let j = [
        probe(1.0, 40001, 1),
        probe(2.0, 40002, 1),
        death(5.0, 40002, Reason::PeerReset),
        death(5.0, 40001, Reason::PeerReset),
    ]
    .map(ev);
    let s = summarize(&j, &Filter::default(), 10);
    let ports: Vec<u16> = s.deaths.iter().map(|d| d.conn.sport).collect();
    assert_eq!(ports, [40001, 40002]);
}

#[test]
fn the_text_keeps_only_the_latest_deaths_and_the_numbers_stay_whole() {
    let all = summarize(&journal(), &Filter::default(), 10);
    for n in [0, 1] {
        let mut b = Summary::builder(Filter::default(), 10, Deaths::Latest(n));
        for e in journal() {
            b.add(e);
        }
        let s = b.finish();
        let ports: Vec<u16> = s.deaths.iter().map(|d| d.conn.sport).collect();
        assert_eq!(ports, [40002][..n]);
        assert_eq!(
            (&s.reasons, &s.worst_peers, s.abnormal_deaths()),
            (&all.reasons, &all.worst_peers, 2)
        );
        // As the whole list shown with --top n.
        let dir = std::path::Path::new("/j");
        assert_eq!(text::summary(&s, dir, 1, n), text::summary(&all, dir, 1, n));
        let t = text::summary(&s, dir, 1, n);
        assert!(t.contains(&format!("Latest deaths ({n} of 2)")), "{t}");
    }
}

#[test]
fn a_timeline_leaves_memory_when_its_death_is_counted() {
    let mut b = Summary::builder(Filter::default(), 10, Deaths::Latest(10));
    b.add(ev(probe(0.0, 1, 1)));
    for i in 0..1000u16 {
        let t = 10.0 * f64::from(i);
        b.add(ev(probe(t + 1.0, 2000 + i, 1)));
        b.add(ev(death(t + 2.0, 2000 + i, Reason::KeepaliveTimeout)));
    }
    assert_eq!(b.open_connections(), 1, "only the one still alive");
    let s = b.finish();
    assert_eq!((s.connections, s.deaths.len()), (1001, 10));
    assert_eq!(s.abnormal_deaths(), 1000);
}

#[test]
fn conn_timelines_are_in_time_order_like_the_summary() {
    // A death handed over late reaches the journal after a later probe;
    // another connection's earlier probe comes last.
    let j = [
        probe(1.0, 40001, 1),
        probe(3.0, 40001, 1),
        death(2.0, 40001, Reason::PeerReset),
        probe(0.5, 40002, 1),
    ];
    let t = timelines(j.iter());
    let story: Vec<(u16, Vec<DateTime<Utc>>)> = t
        .iter()
        .map(|t| (t.conn.sport, t.events.iter().map(|e| e.ts).collect()))
        .collect();
    assert_eq!(
        story,
        [
            (40002, vec![at(0.5)]),
            (40001, vec![at(1.0), at(2.0)]),
            (40001, vec![at(3.0)]),
        ],
        "in the order they started; the death ends a timeline, the probe after it starts another"
    );
}

#[test]
fn json_from_and_to_are_rfc3339_like_every_other_time() {
    let s = summarize(&journal(), &Filter::default(), 10);
    let v = serde_json::to_value(&s).expect("JSON");
    let from = v["from"].as_str().expect("from");
    assert_eq!(
        Some(from),
        s.from
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .as_deref()
    );
    assert!(from.ends_with(".000Z"), "{from}");
    assert!(v["to"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
    let empty = summarize(&[], &Filter::default(), 10);
    assert!(serde_json::to_value(&empty).expect("JSON")["from"].is_null());
}

fn owned_by(mut e: crate::event::Event, workload: crate::workload::Workload) -> Entry {
    e.pid = Some(7);
    e.comm = Some("client".into());
    e.workload = Some(std::sync::Arc::new(workload));
    Entry::Event(e)
}

#[test]
fn deaths_by_pod_container_or_unit() {
    use crate::workload::{By, Workload};
    let pod = |name: &str, container: &str| Workload {
        pod: Some(name.into()),
        namespace: Some("shop".into()),
        container: Some(container.into()),
        ..Workload::default()
    };
    let unit = Workload {
        unit: Some("psql.service".into()),
        ..Workload::default()
    };
    let j = vec![
        Entry::Header(header()),
        // The owner comes with the probe; the death inherits it.
        owned_by(probe(1.0, 40001, 1), pod("web-1", "nginx")),
        ev(crate::event::Event {
            pid: None,
            comm: None,
            ..death(2.0, 40001, Reason::KeepaliveTimeout)
        }),
        owned_by(death(3.0, 40002, Reason::PeerReset), pod("web-1", "php")),
        owned_by(death(4.0, 40003, Reason::PeerReset), unit),
        ev(death(5.0, 40004, Reason::PeerReset)),
    ];
    let by = |b: Option<By>| {
        let mut builder = Summary::builder(Filter::default(), 10, Deaths::All).grouped_by(b);
        for e in &j {
            builder.add(e.clone());
        }
        builder.finish().by_owner.map(|rows| {
            rows.into_iter()
                .map(|w| (w.name, w.deaths))
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(by(None), None);
    let names = |v: &[(&str, u64)]| Some(v.iter().map(|(n, d)| (n.to_string(), *d)).collect());
    assert_eq!(by(Some(By::Pod)), names(&[("-", 2), ("shop/web-1", 2)]));
    assert_eq!(
        by(Some(By::Container)),
        names(&[("-", 2), ("shop/web-1/nginx", 1), ("shop/web-1/php", 1)])
    );
    assert_eq!(by(Some(By::Unit)), names(&[("-", 3), ("psql.service", 1)]));

    let mut builder =
        Summary::builder(Filter::default(), 10, Deaths::All).grouped_by(Some(By::Pod));
    for e in &j {
        builder.add(e.clone());
    }
    let s = builder.finish();
    let t = text::summary(&s, std::path::Path::new("/var/lib/kat"), 1, 10);
    assert!(t.contains("Deaths by owner"), "{t}");
    assert!(t.contains("pid 7 (client) shop/web-1/php"), "{t}");
    let json = serde_json::to_value(&s).expect("json");
    assert_eq!(json["deaths"][0]["workload"]["pod"], "web-1", "{json}");
}

#[test]
fn flows_a_gateway_forgot_are_counted_by_server_with_its_timeout() {
    let a = |s: &str| -> std::net::IpAddr { s.parse().expect("addr") };
    let forgot = |ts: f64, sport: u16, timeout: Option<u32>| {
        Entry::Expired(crate::conntrack::Expired {
            ts: at(ts),
            netns: 4026532411,
            orig: crate::conntrack::Tuple {
                saddr: a("198.18.20.1"),
                sport,
                daddr: a("198.18.21.2"),
                dport: 6795,
            },
            reply: crate::conntrack::Tuple {
                saddr: a("198.18.21.2"),
                sport: 6795,
                daddr: a("198.18.21.254"),
                dport: sport,
            },
            established_timeout_s: timeout,
        })
    };
    let mut b = Summary::builder(Filter::default(), 10, Deaths::All);
    b.add(forgot(1.0, 41000, Some(3)));
    b.add(forgot(5.0, 41001, None));
    b.add(forgot(3.0, 41002, Some(300)));
    let s = b.finish();
    assert_eq!(s.conntrack_expired.len(), 1, "{:?}", s.conntrack_expired);
    let row = &s.conntrack_expired[0];
    assert_eq!((row.flows, row.last), (3, at(5.0)));
    // The setting read with the latest flow that had one.
    assert_eq!(row.established_timeout_s, Some(300));
    let t = text::summary(&s, std::path::Path::new("/j"), 1, 10);
    assert!(
        t.contains("198.18.21.2:6795 (3 flows, netns 4026532411")
            && t.contains(
                "after 5m of silence (net.netfilter.nf_conntrack_tcp_timeout_established of netns 4026532411)"
            ),
        "{t}"
    );
    let other_port = Filter {
        ports: vec![22],
        ..Filter::default()
    };
    let mut b = Summary::builder(other_port, 10, Deaths::All);
    b.add(forgot(1.0, 41000, Some(3)));
    assert!(
        b.finish().conntrack_expired.is_empty(),
        "--port selects them"
    );
}
