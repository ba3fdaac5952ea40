use super::*;
use crate::owner::Owner;
use crate::testkit::{self, addr, at, conn};

/// A connection of the dashboard's lab, from client port `sport`.
fn key(sport: u16, dport: u16) -> ConnKey {
    conn(addr("198.18.1.1"), sport, addr("198.18.1.2"), dport)
}

fn live(k: ConnKey, probes_out: u8, next: f64, comm: &str) -> Live {
    testkit::live(k, 4242, comm, probes_out, next)
}

/// The settings every event of the model's tests carries.
fn settings() -> Settings {
    testkit::settings(2.0, 1.0, 3)
}

/// `what` at second `ts`, from the client (pid 4242).
fn event(k: ConnKey, ts: i64, what: What) -> Event {
    Event {
        pid: Some(4242),
        comm: Some("client".into()),
        keepalive: Some(settings()),
        ..testkit::event(k, at(ts as f64), what)
    }
}

fn death(reason: Reason) -> What {
    testkit::death(reason, Some("ETIMEDOUT"), 3, Some(5.0))
}

/// A model with two healthy connections and one probing, one death.
pub(crate) fn populated() -> Model {
    let mut m = Model::new(
        "lab-host".into(),
        "6.18.0".into(),
        "tracepoint lane".into(),
        at(0.0),
    );
    let (a, b, c, dead) = (
        key(40001, 6699),
        key(40002, 6699),
        key(40003, 6700),
        key(40004, 6700),
    );
    m.update(Msg::Snapshot(vec![
        live(a, 0, 1.5, "client"),
        live(b, 0, 0.4, "client"),
        live(c, 2, 0.8, "worker"),
        live(dead, 3, 0.1, "worker"),
    ]));
    for (i, k) in [a, b, c].into_iter().enumerate() {
        m.update(Msg::Event(Box::new(event(
            k,
            i as i64,
            What::Probe {
                probe: 1,
                probes_max: 3,
                idle_s: 2.0,
            },
        ))));
    }
    m.update(Msg::Event(Box::new(event(
        a,
        3,
        What::ProbeAnswered { probe: 1 },
    ))));
    m.update(Msg::Event(Box::new(event(
        c,
        4,
        What::Probe {
            probe: 2,
            probes_max: 3,
            idle_s: 3.0,
        },
    ))));
    m.update(Msg::Tick(at(5.0)));
    m.update(Msg::Event(Box::new(event(
        dead,
        6,
        death(Reason::KeepaliveTimeout),
    ))));
    m.update(Msg::Tick(at(7.0)));
    m
}

#[test]
fn probing_connections_come_first_with_worst_case_dead_in() {
    let m = populated();
    let rows = m.rows();
    assert_eq!(rows.len(), 3, "the dead connection left the table");
    assert_eq!(rows[0].live.key.sport, 40003);
    assert_eq!(rows[0].live.probes_out, 2);
    // next run 0.8 s, then one more probe 1 s later, then the RST.
    assert_eq!(rows[0].dead_in_s, Some(0.8 + 1.0));
    assert_eq!(rows[0].idle_s, Some(3.0));
    assert_eq!(m.probing_now(), 1);
}

#[test]
fn deaths_are_counted_by_reason_newest_first() {
    let mut m = populated();
    m.update(Msg::Event(Box::new(event(
        key(1, 2),
        8,
        death(Reason::PeerReset),
    ))));
    assert_eq!(m.deaths[0].reason, Reason::PeerReset);
    assert_eq!(m.deaths[1].reason, Reason::KeepaliveTimeout);
    assert_eq!(m.deaths_by_reason[&Reason::KeepaliveTimeout], 1);
    assert_eq!(m.deaths_by_reason[&Reason::PeerReset], 1);
    assert_eq!(
        (m.deaths[0].pid, m.deaths[0].comm.as_deref()),
        (Some(4242), Some("client"))
    );
}

#[test]
fn history_counts_probes_and_deaths_per_second() {
    let m = populated();
    // Second 1: four probes (and one answer); second 2: one death.
    assert_eq!(
        m.history.iter().map(|h| h.probes).collect::<Vec<_>>(),
        [4, 0]
    );
    assert_eq!(
        m.history.iter().map(|h| h.deaths).collect::<Vec<_>>(),
        [0, 1]
    );
    assert_eq!(m.events_per_s(), 1);
}

#[test]
fn filter_matches_port_address_or_command() {
    let mut m = populated();
    for c in "/6700".chars() {
        m.update(Msg::Key(Key::Char(c)));
    }
    assert!(m.editing_filter);
    m.update(Msg::Key(Key::Enter));
    assert!(!m.editing_filter);
    assert_eq!(m.rows().len(), 1);
    m.update(Msg::Key(Key::Char('/')));
    for c in "client".chars() {
        m.update(Msg::Key(Key::Char(c)));
    }
    assert_eq!(m.rows().len(), 2);
    m.update(Msg::Key(Key::Backspace));
    m.update(Msg::Key(Key::Esc));
    assert_eq!(m.filter, "clien");
    m.pid = Some(1);
    assert!(
        m.rows().is_empty(),
        "--pid keeps only that process's sockets"
    );
}

#[test]
fn moving_sorting_and_detail() {
    let mut m = populated();
    m.update(Msg::Key(Key::End));
    assert_eq!(m.selected, 2);
    m.update(Msg::Key(Key::Down));
    assert_eq!(m.selected, 2, "stays on the last row");
    m.update(Msg::Key(Key::PageUp));
    assert_eq!(m.selected, 0);
    m.update(Msg::Key(Key::Char('s')));
    assert_eq!(m.sort, Sort::Local);
    assert_eq!(m.rows()[0].live.key.sport, 40001);
    m.update(Msg::Key(Key::Down));
    m.update(Msg::Key(Key::Enter));
    assert_eq!(m.detail, Some(key(40002, 6699)));
    m.update(Msg::Key(Key::Esc));
    assert_eq!(m.detail, None);
    m.update(Msg::Key(Key::Char('?')));
    assert!(m.help);
    m.update(Msg::Key(Key::Esc));
    assert!(!m.help);
}

#[test]
fn pause_holds_data_and_loses_nothing() {
    let mut m = populated();
    m.update(Msg::Key(Key::Char('p')));
    m.update(Msg::Event(Box::new(event(
        key(9, 9),
        9,
        death(Reason::AbortOnClose),
    ))));
    m.update(Msg::Snapshot(Vec::new()));
    assert_eq!(m.deaths.len(), 1, "paused: the screen holds still");
    assert_eq!(m.live.len(), 3);
    m.update(Msg::Key(Key::Char('p')));
    assert_eq!(m.deaths.len(), 2);
    assert!(m.live.is_empty());
}

#[test]
fn quit_keys() {
    let mut m = populated();
    assert_eq!(m.update(Msg::Key(Key::Char('x'))), Action::Continue);
    assert_eq!(m.update(Msg::Key(Key::Char('q'))), Action::Quit);
    assert_eq!(m.update(Msg::Key(Key::CtrlC)), Action::Quit);
    m.update(Msg::Key(Key::Char('/')));
    assert_eq!(
        m.update(Msg::Key(Key::Char('q'))),
        Action::Continue,
        "q is typed into the filter"
    );
    assert_eq!(m.update(Msg::Key(Key::CtrlC)), Action::Quit);
}

#[test]
fn a_replay_sets_its_status_and_the_clock_follows_its_ticks() {
    let mut m = populated();
    assert_eq!(m.replay, None, "live by default");
    let status = ReplayStatus {
        clock: at(9.0),
        speed: 2.0,
        paused: true,
        at_end: false,
        problems: 1,
    };
    m.update(Msg::Replay(status));
    m.update(Msg::Tick(at(9.0)));
    assert_eq!(m.replay, Some(status));
    assert_eq!(m.now, at(9.0));
    assert!(!m.paused, "the replay's pause is not the live one");
}

#[test]
fn a_table_that_shrinks_under_the_cursor_keeps_it_on_a_row() {
    let mut m = populated();
    m.update(Msg::Key(Key::End));
    assert_eq!(m.selected, 2);
    // The probing connection (first row) dies: two rows are left.
    m.update(Msg::Event(Box::new(event(
        key(40003, 6700),
        8,
        death(Reason::PeerReset),
    ))));
    assert_eq!(m.rows().len(), 2);
    assert_eq!(m.selected, 1, "on the last row that is left");
    m.update(Msg::Snapshot(vec![live(
        key(40001, 6699),
        0,
        1.0,
        "client",
    )]));
    assert_eq!(m.selected, 0);
    m.update(Msg::Snapshot(Vec::new()));
    assert_eq!(m.selected, 0, "an empty table has the cursor at its top");
}

#[test]
fn timelines_go_with_their_connection_and_are_bounded() {
    let mut m = populated();
    let (c, dead) = (key(40003, 6700), key(40004, 6700));
    assert!(
        !m.timelines.contains_key(&dead),
        "a death takes its timeline"
    );
    // The one shown stays until the detail view is left.
    m.update(Msg::Key(Key::Enter));
    assert_eq!(m.detail, Some(c));
    m.update(Msg::Event(Box::new(event(c, 8, death(Reason::PeerReset)))));
    assert_eq!(m.timelines[&c].len(), 3, "two probes and the death, shown");
    m.update(Msg::Key(Key::Esc));
    assert!(!m.timelines.contains_key(&c));
    // Connections that never die (their death lost) cannot pile up.
    for i in 0..TIMELINES_KEPT + 10 {
        let k = ConnKey {
            sport: (i % 60_000) as u16,
            dport: (i / 60_000) as u16,
            ..key(0, 0)
        };
        m.update(Msg::Event(Box::new(event(
            k,
            10 + i as i64,
            What::ProbeAnswered { probe: 1 },
        ))));
    }
    assert_eq!(m.timelines.len(), TIMELINES_KEPT);
    assert!(
        !m.timelines.contains_key(&key(40001, 6699)),
        "the oldest went first"
    );
    let newest = ConnKey {
        sport: ((TIMELINES_KEPT + 9) % 60_000) as u16,
        ..key(0, 0)
    };
    assert!(m.timelines.contains_key(&newest));
}

#[test]
fn keys_are_routed_in_the_model() {
    let mut m = populated();
    assert_eq!(m.update(Msg::Key(Key::Char('p'))), Action::Continue);
    assert!(m.paused, "live, p pauses the dashboard");
    m.update(Msg::Key(Key::Char('p')));
    m.update(Msg::Replay(ReplayStatus {
        clock: at(9.0),
        speed: 1.0,
        paused: false,
        at_end: false,
        problems: 0,
    }));
    for c in ['p', ' ', '+', '=', '-', 'n', ']'] {
        assert_eq!(
            m.update(Msg::Key(Key::Char(c))),
            Action::Replay(Key::Char(c)),
            "{c} is the player's"
        );
    }
    assert!(!m.paused, "the replay's pause is the player's");
    assert_eq!(m.update(Msg::Key(Key::Char('s'))), Action::Continue);
    assert_eq!(m.sort, Sort::Local, "the model's keys pass");
    m.update(Msg::Key(Key::Char('/')));
    assert_eq!(m.update(Msg::Key(Key::Char('n'))), Action::Continue);
    assert_eq!(m.filter, "n", "while a filter is typed every key is text");
}

#[test]
fn pid_keeps_its_process_and_the_owners_not_known_yet() {
    let mut m = populated();
    m.pid = Some(4242);
    let deaths = m.deaths.len();
    let mut other = event(key(1, 1), 8, death(Reason::PeerReset));
    other.pid = Some(1);
    m.update(Msg::Event(Box::new(other)));
    assert_eq!(
        m.deaths.len(),
        deaths,
        "another process's death is left out"
    );
    let mut unknown = event(key(2, 2), 9, death(Reason::PeerReset));
    (unknown.pid, unknown.comm) = (None, None);
    m.update(Msg::Event(Box::new(unknown)));
    assert_eq!(m.deaths.len(), deaths + 1, "an owner not known yet is kept");
    let mut unowned = live(key(3, 3), 0, 1.0, "x");
    unowned.owner = None;
    let mut foreign = live(key(4, 4), 0, 1.0, "x");
    foreign.owner = Some(Owner {
        pid: 1,
        comm: "x".into(),
        workload: None,
    });
    m.update(Msg::Snapshot(vec![
        live(key(5, 5), 0, 1.0, "client"),
        unowned,
        foreign,
    ]));
    let shown: Vec<u16> = m.rows().iter().map(|r| r.live.key.sport).collect();
    assert_eq!(shown.len(), 2);
    assert!(shown.contains(&5) && shown.contains(&3), "{shown:?}");
}

/// A connection at risk from client port `sport`, owned by `pid`.
pub(crate) fn at_risk(sport: u16, idle_s: f64, next_probe_s: Option<f64>, pid: u32) -> AtRisk {
    AtRisk {
        ts: at(0.0),
        conn: key(sport, 5432),
        uid: 1000,
        pid: Some(pid),
        comm: Some("psql".into()),
        workload: None,
        idle_s,
        keepalive: next_probe_s.is_some(),
        next_probe_s,
    }
}

#[test]
fn a_toggles_the_at_risk_panel_and_a_listing_fills_it_only_while_shown() {
    let mut m = populated();
    let listing = || {
        vec![
            at_risk(41000, 420.0, None, 4242),
            at_risk(41001, 90.0, Some(6000.0), 7),
        ]
    };
    m.update(Msg::AtRisk(listing()));
    assert_eq!(m.at_risk, None, "not shown: nothing kept");
    m.update(Msg::Key(Key::Char('a')));
    assert!(m.at_risk_shown);
    assert_eq!(m.at_risk, None, "listing…");
    m.update(Msg::AtRisk(listing()));
    assert_eq!(m.at_risk.as_ref().map(Vec::len), Some(2));
    m.update(Msg::Key(Key::Char('a')));
    assert!(!m.at_risk_shown);
    assert_eq!(m.at_risk, None, "closed: dropped");
}

#[test]
fn pid_applies_to_the_at_risk_panel() {
    let mut m = populated();
    m.pid = Some(7);
    m.update(Msg::Key(Key::Char('a')));
    m.update(Msg::AtRisk(vec![
        at_risk(41000, 420.0, None, 4242),
        at_risk(41001, 90.0, None, 7),
    ]));
    let ports: Vec<u16> = m.at_risk.iter().flatten().map(|a| a.conn.sport).collect();
    assert_eq!(ports, [41001]);
}

/// A death on port 5432 suspected of a middlebox's doing after 5 s of
/// silence, the path having answered after 1 s.
pub(crate) fn suspected_death(sport: u16) -> Msg {
    let mut what = death(Reason::KeepaliveTimeout);
    if let What::Death { silence, .. } = &mut what {
        *silence = Some(Silence {
            idle_before_s: 5.0,
            verdict: Some(crate::event::Verdict::MiddleboxIdleDropSuspected),
            survived_idle_s: Some(1.0),
        });
    }
    Msg::Event(Box::new(event(key(sport, 5432), 6, what)))
}

#[test]
fn suspected_deaths_teach_the_dashboard_the_path() {
    let mut m = populated();
    assert!(m.paths.rows().is_empty());
    m.update(suspected_death(41005));
    m.update(suspected_death(41006));
    let paths = m.paths.rows();
    assert_eq!(paths.len(), 1);
    assert_eq!((paths[0].dport, paths[0].deaths), (5432, 2));
    assert_eq!(m.deaths[0].silence.map(|s| s.idle_before_s), Some(5.0));
}

#[test]
fn keepalive_slower_than_a_learnt_path_is_at_risk() {
    let mut m = populated();
    // Not learnt yet: nothing is too slow.
    m.live.push(live(key(41010, 5432), 0, 6.0, "client"));
    assert!(m.keepalive_too_slow().is_empty());
    m.update(suspected_death(41005));
    m.live.push(live(key(41011, 5432), 0, 0.5, "client"));
    let slow: Vec<(u16, f64)> = m
        .keepalive_too_slow()
        .iter()
        .map(|(l, survives)| (l.key.sport, *survives))
        .collect();
    assert_eq!(
        slow,
        [(41010, 1.0)],
        "the path survives 1 s; 0.5 s is soon enough"
    );
    m.pid = Some(7);
    assert!(m.keepalive_too_slow().is_empty(), "--pid applies");
}
