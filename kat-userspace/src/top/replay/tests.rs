use super::*;
use crate::event::{Lost, Reason};
use crate::journal::tests::{death, event, probe};
use crate::journal::Header;
use crate::testkit::{at, header, settings};

fn replay(entries: Vec<Entry>) -> Replay {
    Replay::new(entries, |_| true, 1.0, 0).expect("events")
}

fn journal(events: impl IntoIterator<Item = Event>) -> Vec<Entry> {
    std::iter::once(Entry::Header(header()))
        .chain(events.into_iter().map(Entry::Event))
        .collect()
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The events played, as (local port, time in seconds from `at(0)`).
fn played(msgs: &[Msg]) -> Vec<(u16, f64)> {
    msgs.iter()
        .filter_map(|m| match m {
            Msg::Event(ev) => Some((ev.sport, (ev.ts - at(0.0)).as_seconds_f64())),
            _ => None,
        })
        .collect()
}

fn ticks(msgs: &[Msg]) -> Vec<i64> {
    msgs.iter()
        .filter_map(|m| match m {
            Msg::Tick(t) => Some(t.timestamp() - at(0.0).timestamp()),
            _ => None,
        })
        .collect()
}

fn table(msgs: &[Msg]) -> Option<&Vec<Live>> {
    msgs.iter().rev().find_map(|m| match m {
        Msg::Snapshot(live) => Some(live),
        _ => None,
    })
}

fn answered(ts: f64, sport: u16) -> Event {
    event(ts, sport, What::ProbeAnswered { probe: 1 })
}

#[test]
fn events_are_played_in_time_order_as_the_clock_moves() {
    // Written out of order (two lanes flush separately): played in order.
    let mut r = replay(journal([
        probe(1.0, 1, 1),
        probe(3.0, 3, 1),
        probe(2.5, 2, 1),
        death(4.0, 1, Reason::KeepaliveTimeout),
    ]));
    assert_eq!(r.clock(), at(0.0), "a second before the first event");
    assert!(played(&r.advance(secs(0.5))).is_empty());
    assert_eq!(played(&r.advance(secs(0.5))), [(1, 1.0)]);
    assert_eq!(played(&r.advance(secs(2.0))), [(2, 2.5), (3, 3.0)]);
    assert!(!r.status().at_end);
    assert_eq!(played(&r.advance(secs(5.0))), [(1, 4.0)]);
    let end = r.status();
    assert!(end.at_end && end.paused, "the replay stops at the end");
    assert_eq!(end.clock, at(4.0), "the clock stops at the last event");
    assert!(played(&r.advance(secs(5.0))).is_empty());
}

#[test]
fn speed_scales_the_clock_and_keys_bound_it() {
    let mut r = Replay::new(
        journal([probe(100.0, 1, 1), probe(200.0, 1, 2)]),
        |_| true,
        4.0,
        0,
    )
    .expect("events");
    r.advance(secs(0.5));
    assert_eq!(r.clock(), at(101.0));
    for _ in 0..20 {
        r.key(Key::Char('+'));
    }
    assert_eq!(r.status().speed, MAX_SPEED);
    for _ in 0..30 {
        r.key(Key::Char('-'));
    }
    assert_eq!(r.status().speed, MIN_SPEED);
    r.key(Key::Char('='));
    assert_eq!(r.status().speed, MIN_SPEED * 2.0, "= is + without shift");
}

#[test]
fn pause_stops_the_clock() {
    let mut r = replay(journal([probe(1.0, 1, 1), probe(5.0, 2, 1)]));
    r.key(Key::Char('p'));
    assert!(r.status().paused);
    assert!(played(&r.advance(secs(10.0))).is_empty());
    assert_eq!(r.clock(), at(0.0));
    r.key(Key::Char(' '));
    assert!(!r.status().paused, "space resumes too");
    assert_eq!(played(&r.advance(secs(1.0))), [(1, 1.0)]);
}

#[test]
fn next_steps_exactly_one_event_even_at_the_same_time() {
    let mut r = replay(journal([
        probe(1.0, 1, 1),
        probe(1.0, 2, 1),
        probe(9.0, 3, 1),
    ]));
    r.key(Key::Char('p'));
    let step = |r: &mut Replay| played(&r.key(Key::Char('n')));
    assert_eq!(step(&mut r), [(1, 1.0)]);
    assert_eq!(r.clock(), at(1.0));
    assert!(r.status().paused, "stepping keeps the pause");
    assert_eq!(step(&mut r), [(2, 1.0)]);
    assert_eq!(step(&mut r), [(3, 9.0)]);
    assert!(r.status().at_end);
    assert!(step(&mut r).is_empty());
    r.key(Key::Char('p'));
    assert!(r.status().paused, "nothing to resume at the end");
}

#[test]
fn skip_jumps_a_quiet_stretch_to_a_second_before_the_next_event() {
    let mut r = replay(journal([probe(1.0, 1, 1), probe(3600.0, 2, 1)]));
    r.advance(secs(1.0));
    let msgs = r.key(Key::Char(']'));
    assert!(played(&msgs).is_empty());
    assert_eq!(r.clock(), at(3599.0));
    assert_eq!(played(&r.advance(secs(1.0))), [(2, 3600.0)]);
}

#[test]
fn a_tick_for_every_second_crossed_between_the_events() {
    let mut r = replay(journal([probe(1.5, 1, 1), probe(2.0, 2, 1)]));
    let msgs = r.advance(secs(2.5));
    // The tick of second 2 closes the second the events happened in.
    let order: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            Msg::Tick(t) => Some(format!("tick {}", t.timestamp() - at(0.0).timestamp())),
            Msg::Event(ev) => Some(format!("event {}", ev.sport)),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["tick 1", "event 1", "event 2", "tick 2"]);
    assert!(ticks(&r.advance(secs(0.4))).is_empty());
}

#[test]
fn ticks_are_capped_at_the_history_a_chart_can_show() {
    let mut r = Replay::new(
        journal([probe(1.0, 1, 1), probe(100_000.0, 2, 1)]),
        |_| true,
        MAX_SPEED,
        0,
    )
    .expect("events");
    let msgs = r.advance(secs(30.0));
    let t = ticks(&msgs);
    assert_eq!(t.len(), HISTORY + 1, "{} ticks", t.len());
    assert_eq!(t.last(), Some(&100_000));
    assert_eq!(played(&msgs).len(), 2);
}

#[test]
fn the_table_follows_probes_answers_and_deaths() {
    let with_settings = |mut ev: Event| {
        ev.keepalive = Some(settings(2.0, 1.0, 3));
        ev
    };
    let mut r = replay(journal([
        with_settings(probe(1.0, 1, 1)),
        with_settings(probe(2.0, 1, 2)),
        probe(2.0, 2, 1),
        with_settings(answered(3.0, 1)),
        death(4.0, 2, Reason::PeerReset),
    ]));
    let msgs = r.advance(secs(2.5));
    let live = table(&msgs).expect("a table");
    assert_eq!(live.len(), 2);
    assert_eq!((live[0].key.sport, live[0].probes_out), (1, 2));
    // Probe 2 at 2.0 s, interval 1 s: the next at 3.0 s, half a second on.
    assert_eq!(live[0].next_run_s, 0.5);
    assert_eq!(live[0].state, "ESTABLISHED");
    let owner = live[0].owner.as_ref().expect("owner");
    assert_eq!((owner.pid, owner.comm.as_str()), (7, "client"));
    assert_eq!(live[1].next_run_s, 0.0, "no settings, no estimate");

    let live = table(&r.advance(secs(1.0))).expect("a table").clone();
    assert_eq!(live[0].probes_out, 0, "answered: no probe out");
    // Answered at 3.0 s, the idle time (2 s) runs again: 1.5 s from 3.5 s.
    assert_eq!(live[0].next_run_s, 1.5);

    let live = table(&r.advance(secs(1.0))).expect("a table").clone();
    assert_eq!(live.len(), 1, "the dead connection left");
    assert_eq!(live[0].key.sport, 1);
}

#[test]
fn a_restart_of_kat_record_empties_the_table_and_lost_adds_up() {
    let restarted = Header {
        run_started: at(5.0),
        file_started: at(5.0),
        ..header()
    };
    let lost = |ts, count| {
        Entry::Lost(Lost {
            ts: at(ts),
            count,
            by_kind: Default::default(),
        })
    };
    let mut entries = journal([probe(1.0, 1, 1)]);
    entries.extend([
        lost(2.0, 3),
        Entry::Header(restarted),
        Entry::Event(probe(6.0, 2, 1)),
        lost(7.0, 4),
        Entry::Event(probe(8.0, 3, 1)),
        lost(9.0, 5),
    ]);
    let mut r = replay(entries);
    let lost_of = |msgs: &[Msg]| {
        msgs.iter().find_map(|m| match m {
            Msg::Lost { total, .. } => Some(*total),
            _ => None,
        })
    };
    let msgs = r.advance(secs(3.0));
    assert_eq!(lost_of(&msgs), Some(3));
    assert_eq!(table(&msgs).expect("a table").len(), 1);
    let msgs = r.advance(secs(4.0));
    let live = table(&msgs).expect("a table");
    assert_eq!(live.len(), 1, "only what the new run saw");
    assert_eq!(live[0].key.sport, 2);
    assert_eq!(lost_of(&msgs), Some(3 + 4));
    // A lost count after the last event comes with it.
    let msgs = r.advance(secs(1.0));
    assert_eq!(lost_of(&msgs), Some(3 + 5));
    assert!(r.status().at_end);
}

#[test]
fn filtered_and_empty_journals() {
    let entries = journal([probe(1.0, 1, 1), probe(2.0, 2, 1)]);
    let mut r = Replay::new(entries.clone(), |ev| ev.sport == 2, 1.0, 3).expect("events");
    assert_eq!(
        r.clock(),
        at(1.0),
        "the clock starts at the first kept event"
    );
    assert_eq!(played(&r.advance(secs(5.0))), [(2, 2.0)]);
    assert_eq!(r.status().problems, 3);
    assert!(Replay::new(entries, |_| false, 1.0, 0).is_none());
    assert!(Replay::new(vec![Entry::Header(header())], |_| true, 1.0, 0).is_none());
}
