//! `kat demo` end to end in a real terminal (tmux): the dashboard shows a
//! probing connection, a keepalive_timeout death and a death through the
//! NAT marked `middlebox?`; key a shows the path learnt and a keepalive
//! too slow for it; q quits with 0, and no namespace is left.

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

/// Reads the screen every half second until `done` says so; fails naming
/// `what` once `timeout` has passed.
fn wait_for_screen(
    term: &Terminal,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let screen = term.screen();
        if done(&screen) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "the demo never showed {what}:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn demo_shows_probes_and_deaths_and_cleans_up() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let command = format!("{} demo", env!("CARGO_BIN_EXE_kat"));
    let term = Terminal::start("kat-e2e", &command, 120, 40);

    let (mut probing, mut timeout, mut middlebox) = (false, false, false);
    let screen = wait_for_screen(
        &term,
        "a probing connection, a keepalive_timeout and a middlebox? death",
        Duration::from_secs(90),
        |screen| {
            // A row whose PROBES column reads n/m with n > 0.
            probing |= screen
                .lines()
                .any(|l| l.contains("→") && ["1/3", "2/3"].iter().any(|p| l.contains(p)));
            timeout |= screen.contains("keepalive_timeout");
            // Only the deaths through the NAT are suspected of a middlebox.
            middlebox |= screen.lines().any(|l| l.contains("middlebox?"));
            probing && timeout && middlebox
        },
    );
    term.keys("a");
    wait_for_screen(
        &term,
        "the path learnt in the at-risk panel",
        Duration::from_secs(10),
        |screen| screen.contains("198.18.21.2:6703 forgets idle flows"),
    );
    // A later round's keepalive of 7 s is flagged before it dies: its
    // next probe comes after more silence than the path survives.
    wait_for_screen(
        &term,
        "a keepalive slower than the path flagged in the at-risk panel",
        Duration::from_secs(40),
        |screen| screen.contains("its path survives"),
    );
    assert!(screen.contains("kat top"), "{screen}");
    term.keys("q");
    assert_eq!(
        term.exit_code(Duration::from_secs(30)),
        "0",
        "kat demo's exit code"
    );
    assert_eq!(demo_namespaces(), 0, "the demo left namespaces behind");
}
