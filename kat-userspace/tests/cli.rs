//! Bad input gets a clear message and a meaningful exit code.

use std::process::{Command, Output};

fn kat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kat"))
        .args(args)
        .output()
        .expect("run kat")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn invalid_ports_are_usage_errors() {
    for port in ["0", "65536", "ssh", "-1"] {
        let o = kat(&["trace", &format!("--port={port}")]);
        assert_eq!(o.status.code(), Some(2), "--port {port}: {}", stderr(&o));
        assert!(stderr(&o).contains("--port"), "{}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }
}

#[test]
fn no_command_prints_usage() {
    let o = kat(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("Usage"), "{}", stderr(&o));
}

#[test]
fn not_root_names_the_missing_privilege() {
    // As root, drop to nobody to see what an ordinary user sees.
    let o = if nix::unistd::geteuid().is_root() {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_kat"))
            .args(["trace", "--port", "6699"])
            .output()
            .expect("setpriv")
    } else {
        kat(&["trace", "--port", "6699"])
    };
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("needs root") && err.contains("CAP_BPF"),
        "{err}"
    );
    assert!(err.contains("sudo kat trace"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn doctor_reports_the_lanes_and_whether_kat_can_run() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let o = kat(&["doctor", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(r["can_run"], true);
    assert_eq!(r["btf"], true);
    assert!(r["hz"].as_u64().is_some_and(|hz| hz >= 100));
    let lanes = r["lanes"].as_array().expect("lanes");
    for hook in ["keepalive_timer", "reset_sent", "socket_events"] {
        assert!(
            lanes.iter().any(|l| l[0] == hook),
            "{hook} has no lane: {r}"
        );
    }
    // Every hook was tried in every lane that has programs for it.
    assert!(
        r["attempts"].as_array().is_some_and(|a| a.len() >= 8),
        "{r}"
    );
    assert!(r["offsets"]["keepalive_timer"]
        .as_u64()
        .is_some_and(|o| o > 0));
    let text = kat(&["doctor"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("kat can run here."));
}

#[test]
fn a_forced_lane_that_cannot_attach_fails_clearly() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let o = kat(&["doctor", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let attempts = r["attempts"].as_array().expect("attempts");
    let failing = ["fentry", "kprobe"].into_iter().find(|lane| {
        attempts
            .iter()
            .any(|a| a["lane"] == *lane && a["hook"] == "keepalive_timer" && !a["error"].is_null())
    });
    let Some(lane) = failing else {
        eprintln!("every lane attaches on this kernel: nothing to refuse");
        return;
    };
    let o = kat(&["trace", "--lane", lane]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("--lane {lane} cannot hook keepalive_timer")),
        "{err}"
    );
    assert!(err.contains("kat doctor"), "{err}");
}

#[test]
fn top_without_a_terminal_points_at_trace() {
    // Output captured: stdout is a pipe, not a terminal.
    let o = kat(&["top"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("needs a terminal") && err.contains("kat trace"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
