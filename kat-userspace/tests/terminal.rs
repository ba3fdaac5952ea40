//! `kat top` in a real terminal (tmux) under an interactive shell with job
//! control (root): Ctrl-Z stops it and gives the shell its terminal back,
//! `fg` brings the dashboard back drawn anew, a resize redraws it at the
//! new size, and after q the terminal is as the shell left it (canonical
//! mode, echo).

use std::time::Duration;

use kat_scenarios::tmux::Terminal;

/// The state letter of /proc/PID/stat (R, S, T for stopped, …).
fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .expect("state")
}

/// kat top's process: the interactive shell's child.
fn top_pid(shell: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
        .expect("children")
        .split_whitespace()
        .next()
        .expect("kat top runs")
        .parse()
        .expect("pid")
}

#[test]
fn top_suspends_resumes_resizes_and_leaves_the_terminal_sane() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let stty = tempfile::NamedTempFile::new().expect("temp");
    let term = Terminal::start(
        "kat-tty",
        "env PS1='kat-test$ ' bash --norc --noprofile -i",
        120,
        40,
    );
    term.wait_for("a prompt", Duration::from_secs(10), |s| {
        s.contains("kat-test$")
    });
    let shell = term.pid().expect("the interactive shell");
    term.keys(&format!("{} top --port 6946", env!("CARGO_BIN_EXE_kat")));
    term.keys("Enter");
    let dashboard = |s: &str| s.contains("kat top") && !s.contains("kat-test$");
    term.wait_for("the dashboard", Duration::from_secs(60), dashboard);
    let kat = top_pid(shell);
    // Once attached, `kat top` keeps only what it needs (tests/privilege.rs
    // checks every thread of `kat trace` and `kat record`).
    let kept = kat_userspace::privilege::KEPT
        .iter()
        .fold(0, |m, c| m | c.bitmask());
    let status = std::fs::read_to_string(format!("/proc/{kat}/status")).expect("status");
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("CapEff");
    assert_eq!(effective & !kept, 0, "kat top kept {effective:x}");

    term.keys("C-z");
    let screen = term.wait_for("the shell's job stopped", Duration::from_secs(10), |s| {
        s.contains("Stopped")
    });
    assert!(
        !screen.contains("kat top  "),
        "the dashboard stays drawn:\n{screen}"
    );
    assert_eq!(state(kat), 'T', "kat top is not stopped");

    term.keys("fg");
    term.keys("Enter");
    term.wait_for("the dashboard again", Duration::from_secs(10), |s| {
        s.contains("kat top") && !s.contains("Stopped")
    });
    assert_ne!(state(kat), 'T');

    // Drawn anew at the new width: a box's right corner in column 90.
    term.resize(90, 30);
    term.wait_for("the dashboard at 90×30", Duration::from_secs(10), |s| {
        s.contains("kat top")
            && s.lines()
                .any(|l| l.chars().count() == 90 && l.ends_with('┐'))
    });

    term.keys("q");
    term.wait_for("the prompt after q", Duration::from_secs(20), |s| {
        s.contains("kat-test$")
    });
    term.keys(&format!("stty -a > {}", stty.path().display()));
    term.keys("Enter");
    let modes = (0..50)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(200));
            std::fs::read_to_string(stty.path())
                .ok()
                .filter(|t| !t.is_empty())
        })
        .expect("stty wrote its modes");
    let words: Vec<&str> = modes.split_whitespace().collect();
    for mode in ["icanon", "echo", "isig"] {
        assert!(words.contains(&mode), "{mode} not restored: {modes}");
    }
}
