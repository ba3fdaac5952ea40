//! `kat demo` end to end in a real terminal (tmux): the dashboard shows a
//! probing connection and a keepalive_timeout death, q quits with 0, and no
//! namespace is left.

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

fn demo_namespaces() -> usize {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("kat-demo-"))
        .count()
}

#[test]
fn demo_shows_probes_and_deaths_and_cleans_up() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let name = format!("kat-e2e-{}", std::process::id());
    let exit_file = std::env::temp_dir().join(format!("{name}.exit"));
    let _ = std::fs::remove_file(&exit_file);
    let command = format!(
        "{} demo; echo $? > {}; sleep 30",
        env!("CARGO_BIN_EXE_kat"),
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

    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut probing, mut timeout) = (false, false);
    let mut screen = String::new();
    while !(probing && timeout) {
        assert!(
            Instant::now() < deadline,
            "the demo never showed both a probing connection and a keepalive_timeout:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(500));
        screen = tmux(&["capture-pane", "-p", "-t", &session.0]);
        // A row whose PROBES column reads n/m with n > 0.
        probing |= screen
            .lines()
            .any(|l| l.contains("→") && ["1/3", "2/3"].iter().any(|p| l.contains(p)));
        timeout |= screen.contains("keepalive_timeout");
    }
    assert!(screen.contains("kat top"), "{screen}");
    tmux(&["send-keys", "-t", &session.0, "q"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Ok(code) = std::fs::read_to_string(&exit_file) {
            break code;
        }
        assert!(Instant::now() < deadline, "kat demo did not exit after q");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code.trim(), "0", "kat demo's exit code");
    assert_eq!(demo_namespaces(), 0, "the demo left namespaces behind");
    let _ = std::fs::remove_file(&exit_file);
}
