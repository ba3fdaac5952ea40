//! `kat demo` end to end in a real terminal (tmux): the dashboard shows a
//! probing connection and a keepalive_timeout death, q quits with 0, and no
//! namespace is left.

use std::process::Command;
use std::time::{Duration, Instant};

use kat_scenarios::tmux::Terminal;

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
    let command = format!("{} demo", env!("CARGO_BIN_EXE_kat"));
    let term = Terminal::start("kat-e2e", &command, 120, 40);

    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut probing, mut timeout) = (false, false);
    let mut screen = String::new();
    while !(probing && timeout) {
        assert!(
            Instant::now() < deadline,
            "the demo never showed both a probing connection and a keepalive_timeout:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(500));
        screen = term.screen();
        // A row whose PROBES column reads n/m with n > 0.
        probing |= screen
            .lines()
            .any(|l| l.contains("→") && ["1/3", "2/3"].iter().any(|p| l.contains(p)));
        timeout |= screen.contains("keepalive_timeout");
    }
    assert!(screen.contains("kat top"), "{screen}");
    term.keys("q");
    assert_eq!(
        term.exit_code(Duration::from_secs(30)),
        "0",
        "kat demo's exit code"
    );
    assert_eq!(demo_namespaces(), 0, "the demo left namespaces behind");
}
