//! `kat demo` end to end in a real terminal (tmux): the dashboard shows a
//! probing connection, a keepalive_timeout death and a death through the
//! NAT marked `middlebox?` (or `conntrack`), later one marked `conntrack`;
//! key a shows the path learnt and a keepalive too slow for it; q quits
//! with 0, and no namespace is left. A second
//! demo whose terminal is closed (SIGHUP) ends and leaves none either; a
//! third killed hard leaves its lab, which the fourth clears as it starts.

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
        "a probing connection, a keepalive_timeout and a middlebox? or conntrack death",
        Duration::from_secs(90),
        |screen| {
            // A row whose PROBES column reads n/m with n > 0.
            probing |= screen
                .lines()
                .any(|l| l.contains("→") && ["1/3", "2/3"].iter().any(|p| l.contains(p)));
            timeout |= screen.contains("keepalive_timeout");
            // Only the deaths through the NAT are suspected of a middlebox
            // (or seen forgotten by its conntrack, where kat subscribed
            // before the round's flows began).
            middlebox |= screen
                .lines()
                .any(|l| l.contains("middlebox?") || l.contains("s conntrack"));
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
    // A round whose flows began after kat subscribed: its NAT deaths are
    // seen, not suspected (key a goes back to the deaths).
    term.keys("a");
    wait_for_screen(
        &term,
        "a death the router's conntrack was seen forgetting",
        Duration::from_secs(40),
        |screen| screen.lines().any(|l| l.contains("s conntrack")),
    );
    assert!(screen.contains("kat top"), "{screen}");
    term.keys("q");
    assert_eq!(
        term.exit_code(Duration::from_secs(30)),
        "0",
        "kat demo's exit code"
    );
    assert_eq!(demo_namespaces(), 0, "the demo left namespaces behind");

    // A demo whose terminal closes (SIGHUP) removes its lab and ends too.
    let term = Terminal::start("kat-e2e-hup", &command, 120, 40);
    wait_for_screen(&term, "the dashboard", Duration::from_secs(60), |screen| {
        screen.contains("kat top")
    });
    assert!(demo_namespaces() > 0, "the second demo built no lab");
    drop(term);
    let deadline = Instant::now() + Duration::from_secs(30);
    while demo_namespaces() > 0 || demos_running() > 0 {
        assert!(
            Instant::now() < deadline,
            "after its terminal closed: {} demo namespaces, {} kat demo processes",
            demo_namespaces(),
            demos_running()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A demo killed hard leaves its lab; the next one clears it and starts.
    let term = Terminal::start("kat-e2e-kill", &command, 120, 40);
    wait_for_screen(&term, "the dashboard", Duration::from_secs(60), |screen| {
        screen.contains("kat top")
    });
    for pid in demo_pids() {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    assert_eq!(
        term.exit_code(Duration::from_secs(10)),
        "137",
        "killed by SIGKILL"
    );
    let left = demo_namespaces();
    assert!(left > 0, "a demo killed hard cannot clean up");
    let term = Terminal::start("kat-e2e-next", &command, 120, 40);
    wait_for_screen(&term, "the dashboard", Duration::from_secs(60), |screen| {
        screen.contains("kat top")
    });
    assert_eq!(demo_namespaces(), left, "the same lab, built anew");
    term.keys("q");
    assert_eq!(term.exit_code(Duration::from_secs(30)), "0");
    assert_eq!(demo_namespaces(), 0, "the demo left namespaces behind");
}

fn demos_running() -> usize {
    demo_pids().len()
}

/// `kat demo` processes of this test's kat.
fn demo_pids() -> Vec<nix::unistd::Pid> {
    let kat = env!("CARGO_BIN_EXE_kat");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            (args.first().is_some_and(|a| *a == kat.as_bytes())
                && args.get(1) == Some(&&b"demo"[..]))
            .then(|| nix::unistd::Pid::from_raw(pid))
        })
        .collect()
}
