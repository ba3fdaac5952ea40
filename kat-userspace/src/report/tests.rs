use chrono::{Local, TimeZone as _};

use super::summary::*;
use super::*;
use crate::event::{Lost, Reason, What};
use crate::journal::tests::{at, death, event, header, probe};
use crate::journal::Entry;

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
    assert!(lines[1].ends_with("probe 1/3, idle 1.0 s"), "{t}");
    assert!(lines[2].ends_with("probe 1 answered"), "{t}");
    assert!(
        lines[5].ends_with("probe 3/3, idle 12.0 s, previous unanswered"),
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
