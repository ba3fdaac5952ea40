//! `kat top --replay` end to end in a real terminal (tmux), on a journal
//! with one bad line: no root, the bad line named before the dashboard
//! opens, pause and stepping through the events to the death, q quits with 0.

use std::process::Command;
use std::time::{Duration, Instant};

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux (Debian package tmux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        tmux(&["kill-session", "-t", &self.0]);
    }
}

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

/// Waits until the screen satisfies `pred`.
fn screen_until(session: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if pred(&screen) {
            return screen;
        }
        assert!(Instant::now() < deadline, "never {what}:\n{screen}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn replay_steps_through_a_journal_to_the_death() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("kat-000001-20261121T030000Z.jsonl"),
        JOURNAL,
    )
    .expect("write");
    let name = format!("kat-replay-{}", std::process::id());
    let exit_file = dir.path().join("exit");
    let command = format!(
        "{} top --replay {} --speed 0.0625; echo $? > {}; sleep 30",
        env!("CARGO_BIN_EXE_kat"),
        dir.path().display(),
        exit_file.display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &name,
        "-x",
        "120",
        "-y",
        "40",
        &command,
    ]);
    let session = Session(name);

    screen_until(&session.0, "the replay header", |s| {
        s.contains("REPLAY 2026-11-21") && s.contains("db-7") && s.contains("1 bad line")
    });
    tmux(&["send-keys", "-t", &session.0, "p"]);
    screen_until(&session.0, "paused", |s| s.contains("paused"));
    // Step: the first probe, then the second, each exactly one event.
    tmux(&["send-keys", "-t", &session.0, "n"]);
    screen_until(&session.0, "the first probe", |s| {
        s.lines().any(|l| l.contains("41000") && l.contains("1/2"))
    });
    tmux(&["send-keys", "-t", &session.0, "n"]);
    let second = screen_until(&session.0, "the second probe", |s| {
        s.lines().any(|l| l.contains("41000") && l.contains("2/2"))
    });
    assert!(!second.contains("keepalive_timeout"), "{second}");
    tmux(&["send-keys", "-t", &session.0, "n"]);
    screen_until(&session.0, "the death", |s| {
        s.contains("keepalive_timeout") && s.contains("end of journal")
    });
    tmux(&["send-keys", "-t", &session.0, "q"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Ok(code) = std::fs::read_to_string(&exit_file) {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "kat top --replay did not exit after q"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code.trim(), "0");
    // The bad line was named where it stays readable: before the dashboard.
    let after = tmux(&["capture-pane", "-p", "-t", &session.0]);
    assert!(
        after.contains("kat-000001-20261121T030000Z.jsonl:3: not JSON"),
        "{after}"
    );
}
