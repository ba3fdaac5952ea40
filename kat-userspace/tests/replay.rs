//! `kat top --replay` end to end in a real terminal (tmux), on a journal
//! with one bad line: no root, the bad line named before the dashboard
//! opens, pause and stepping through the events to the death, q quits with 0.

use std::time::Duration;

use kat_scenarios::tmux::Terminal;

const JOURNAL: &str = concat!(
    r#"{"type":"journal","format":1,"kat":"0.1.0","host":"db-7","kernel":"6.12.117","lanes":"kprobe lane","ports":[],"run_started":"2026-11-21T03:00:00.000Z","file_started":"2026-11-21T03:00:00.000Z"}"#,
    "\n",
    r#"{"type":"probe","probe":1,"probes_max":2,"idle_s":55.0,"ts":"2026-11-21T03:12:01.000Z","saddr":"198.18.1.2","sport":41000,"daddr":"198.18.2.2","dport":6699,"netns":1,"uid":0,"pid":77,"comm":"pgbouncer","keepalive":{"idle_s":55.0,"idle_from":"socket","intvl_s":6.0,"intvl_from":"socket","probes":2,"probes_from":"socket"}}"#,
    "\n",
    "this line is not a record\n",
    r#"{"type":"probe","probe":2,"probes_max":2,"idle_s":61.0,"ts":"2026-11-21T03:12:07.000Z","saddr":"198.18.1.2","sport":41000,"daddr":"198.18.2.2","dport":6699,"netns":1,"uid":0,"pid":77,"comm":"pgbouncer"}"#,
    "\n",
    r#"{"type":"death","reason":"keepalive_timeout","errno":"ETIMEDOUT","unanswered_probes":2,"found_by_probe":false,"lifetime_s":3600.5,"state":"ESTABLISHED","ts":"2026-11-21T03:12:13.000Z","saddr":"198.18.1.2","sport":41000,"daddr":"198.18.2.2","dport":6699,"netns":1,"uid":0,"pid":77,"comm":"pgbouncer"}"#,
    "\n",
);

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn replay_steps_through_a_journal_to_the_death() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("kat-000001-20261121T030000Z.jsonl"),
        JOURNAL,
    )
    .expect("write");
    let command = format!(
        "{} top --replay {} --speed 0.0625",
        env!("CARGO_BIN_EXE_kat"),
        dir.path().display()
    );
    let term = Terminal::start("kat-replay", &command, 120, 40);

    term.wait_for("the replay header", WAIT, |s| {
        s.contains("REPLAY 2026-11-21") && s.contains("db-7") && s.contains("1 bad line")
    });
    term.keys("p");
    term.wait_for("paused", WAIT, |s| s.contains("paused"));
    // Step: the first probe, then the second, each exactly one event.
    term.keys("n");
    term.wait_for("the first probe", WAIT, |s| {
        s.lines().any(|l| l.contains("41000") && l.contains("1/2"))
    });
    term.keys("n");
    let second = term.wait_for("the second probe", WAIT, |s| {
        s.lines().any(|l| l.contains("41000") && l.contains("2/2"))
    });
    assert!(!second.contains("keepalive_timeout"), "{second}");
    term.keys("n");
    term.wait_for("the death", WAIT, |s| {
        s.contains("keepalive_timeout") && s.contains("end of journal")
    });
    term.keys("q");
    assert_eq!(term.exit_code(WAIT), "0");
    // The bad line was named where it stays readable: before the dashboard.
    let after = term.screen();
    assert!(
        after.contains("kat-000001-20261121T030000Z.jsonl:3: not JSON"),
        "{after}"
    );
}
