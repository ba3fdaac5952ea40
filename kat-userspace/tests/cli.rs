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
fn no_command_says_what_to_try_first_and_prints_usage() {
    let o = kat(&[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("Usage: kat"), "{err}");
    assert!(
        err.contains("kat doctor") && err.contains("sudo kat top"),
        "{err}"
    );
    assert!(err.contains("kat --help"), "{err}");
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

/// `kat trace` as root with only `caps` (setpriv, as a container or a
/// systemd unit bounds them).
fn trace_with_only(caps: &str) -> std::process::Output {
    Command::new("setpriv")
        .arg("--inh-caps=-all")
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg(env!("CARGO_BIN_EXE_kat"))
        .args(["trace", "--port", "6699"])
        .output()
        .expect("setpriv")
}

#[test]
fn missing_capabilities_are_named() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let o = trace_with_only("+bpf,+syslog");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("without CAP_PERFMON"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Enough to load, not to read kernel symbols: named when it matters,
    // and what the others would have given is said first.
    let o = trace_with_only("+bpf,+perfmon");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("CAP_SYSLOG"), "{err}");
    assert!(err.contains("without CAP_SYS_ADMIN"), "{err}");
    assert!(err.contains("without CAP_SYS_PTRACE"), "{err}");
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
    // Whether --conntrack can be told of expired flows, said either way.
    assert!(
        r.as_object()
            .is_some_and(|o| o.contains_key("conntrack_problem")),
        "{r}"
    );
    let text = kat(&["doctor"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("kat can run here."), "{text}");
    assert!(text.contains("conntrack expiry"), "{text}");
}

/// Every lane is either used when forced or refused clearly, so this
/// checks something on every kernel: a lane that cannot hook one of the
/// required hooks (as `kat doctor` found) ends kat with exit 3 naming it;
/// one that can is the lane kat traces in, and SIGINT ends it with 0.
#[test]
fn a_forced_lane_is_used_or_refused_clearly() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let o = kat(&["doctor", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let attempts = r["attempts"].as_array().expect("attempts");
    for lane in ["fentry", "kprobe", "tracepoint"] {
        let refused = ["keepalive_timer", "reset_sent"].into_iter().find(|hook| {
            !attempts
                .iter()
                .any(|a| a["lane"] == lane && a["hook"] == *hook && a["error"].is_null())
        });
        match refused {
            Some(hook) => {
                let o = kat(&["trace", "--lane", lane]);
                let err = stderr(&o);
                assert_eq!(o.status.code(), Some(3), "{err}");
                assert!(
                    err.contains(&format!("--lane {lane} cannot hook {hook}")),
                    "{err}"
                );
                assert!(err.contains("kat doctor"), "{err}");
            }
            None => {
                let cmd = kat_scenarios::KatCmd {
                    binary: env!("CARGO_BIN_EXE_kat").to_string(),
                    lane: Some(lane.to_string()),
                };
                let tracing = kat_scenarios::Kat::trace(&cmd, &[], &[]);
                assert!(
                    tracing.started.contains(&format!("({lane} lane,")),
                    "--lane {lane}: {}",
                    tracing.started
                );
                let (status, _, err) = tracing.stop();
                assert!(status.success(), "--lane {lane}: {status} {err:#?}");
            }
        }
    }
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

/// A journal as `kat record` writes it, with one corrupt and one foreign line.
const JOURNAL: &str = concat!(
    r#"{"type":"journal","format":1,"kat":"0.1.0","host":"web-1","kernel":"6.18.44","lanes":"tracepoint lane","ports":[],"run_started":"2026-11-21T03:00:00.000Z","file_started":"2026-11-21T03:00:00.000Z"}"#,
    "\n",
    r#"{"type":"probe","probe":1,"probes_max":2,"idle_s":55.0,"ts":"2026-11-21T03:12:01.000Z","saddr":"198.18.1.2","sport":41000,"daddr":"198.18.2.2","dport":6699,"netns":4026531840,"uid":0}"#,
    "\n",
    r#"{"type":"probe","probe":2,"probes_max":2,"idle_s":61.0,"ts":"2026-11-21T03:12:07.0"#,
    "\n",
    "GET / HTTP/1.1\n",
    r#"{"type":"death","reason":"keepalive_timeout","errno":"ETIMEDOUT","unanswered_probes":2,"found_by_probe":false,"lifetime_s":70.5,"state":"ESTABLISHED","ts":"2026-11-21T03:12:13.000Z","saddr":"198.18.1.2","sport":41000,"daddr":"198.18.2.2","dport":6699,"netns":4026531840,"uid":0}"#,
    "\n",
);

#[test]
fn report_reads_a_journal_without_root_and_names_bad_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("kat-000001-20261121T030000Z.jsonl");
    std::fs::write(&file, JOURNAL).expect("write");
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let o = if nix::unistd::geteuid().is_root() {
        // As an ordinary user who owns the files.
        let nobody = Some(nix::unistd::Uid::from_raw(65534));
        for p in [dir.path(), file.as_path()] {
            nix::unistd::chown(p, nobody, None).expect("chown");
        }
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_kat"))
            .args(["report", "--dir", &dir_arg])
            .output()
            .expect("setpriv")
    } else {
        kat(&["report", "--dir", &dir_arg])
    };
    let err = stderr(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{err}");
    for line in [3, 4] {
        assert!(
            err.contains(&format!("kat-000001-20261121T030000Z.jsonl:{line}: ")),
            "line {line} not named: {err}"
        );
    }
    assert!(
        out.contains("keepalive_timeout         1  ETIMEDOUT"),
        "{out}"
    );
    assert!(out.contains("on web-1, Linux 6.18.44"), "{out}");

    let conn = kat(&["report", "--dir", &dir_arg, "--conn", "198.18.2.2:6699"]);
    let out = String::from_utf8_lossy(&conn.stdout);
    assert!(out.contains("probe 1/2, idle 55s"), "{out}");
    assert!(
        out.contains("DEAD keepalive_timeout after 2 unanswered probes"),
        "{out}"
    );
}

#[test]
fn report_and_record_refuse_bad_arguments_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("kat-000001-20261121T030000Z.jsonl"),
        JOURNAL,
    )
    .expect("write");
    let d = dir.path().to_string_lossy().into_owned();
    for (args, code, says) in [
        (
            vec!["report", "--dir", &d, "--since", "yesterday"],
            2,
            "--since",
        ),
        (
            vec!["report", "--dir", &d, "--since", "1h", "--until", "2h"],
            2,
            "--since is after --until",
        ),
        (vec!["report", "--dir", &d, "--conn", "6699"], 2, "--conn"),
        (
            vec!["report", "--dir", "/nonexistent/kat"],
            1,
            "no journal directory",
        ),
        (vec!["report", "--dir", "/etc"], 1, "no journal files"),
        (
            vec!["record", "--max-size", "1KiB"],
            2,
            "at least 4096 bytes",
        ),
        (vec!["record", "--max-size", "banana"], 2, "not a size"),
        (
            vec!["record", "--metrics", "9464"],
            2,
            "not an address to listen on",
        ),
        (
            vec!["record", "--max-size", "1MiB", "--file-size", "2MiB"],
            2,
            "smaller than one file",
        ),
        (
            vec!["top", "--replay", &d, "--speed", "0"],
            2,
            "not a speed",
        ),
        (vec!["top", "--speed", "2"], 2, "--replay"),
        (
            vec!["top", "--replay", &d, "--lane", "kprobe"],
            2,
            "cannot be used with",
        ),
    ] {
        let o = kat(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn record_fails_clearly_when_it_cannot_write() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let o = kat(&["record", "--dir", "/proc/kat-journal"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot create the journal directory /proc/kat-journal"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// `kat trace --at-risk` on real sockets: the connections silent for over
/// --idle-over are listed with their keepalive and owner; one that talks
/// is not.
#[test]
fn at_risk_lists_the_silent_connections_with_their_owner() {
    use std::io::{Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let connect = || {
        let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (s, _) = listener.accept().expect("accept");
        (c, s)
    };
    let (silent, _silent_server) = connect();
    let (with_keepalive, _keepalive_server) = connect();
    socket2::SockRef::from(&with_keepalive)
        .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(600)))
        .expect("keepalive");
    let (mut talking, mut talking_server) = connect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        talking.write_all(b"x").expect("write");
        let mut byte = [0];
        talking_server.read_exact(&mut byte).expect("read");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = kat(&[
        "trace",
        "--at-risk",
        "--json",
        "--idle-over",
        "2s",
        "--port",
        &port.to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let listed: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let local_port = |s: &TcpStream| s.local_addr().expect("addr").port();
    let find = |sport: u16| listed.iter().find(|v| v["sport"] == sport);
    let silent = find(local_port(&silent)).expect("the silent client is listed");
    assert_eq!(silent["type"], "at_risk");
    assert_eq!(silent["keepalive"], false);
    assert!(
        silent["idle_s"].as_f64().is_some_and(|s| s >= 2.0),
        "{silent}"
    );
    assert_eq!(silent["pid"], std::process::id());
    let kept = find(local_port(&with_keepalive)).expect("keepalive idle 600s: listed");
    assert_eq!(kept["keepalive"], true);
    assert!(
        kept["next_probe_s"].as_f64().is_some_and(|s| s > 500.0),
        "{kept}"
    );
    assert!(
        find(local_port(&talking)).is_none(),
        "the talking one is not at risk: {listed:?}"
    );
    // Both ends of the two silent ones, nothing else on this port.
    assert_eq!(listed.len(), 4, "{listed:?}");
}

#[test]
fn idle_over_takes_only_a_duration_with_at_risk() {
    let o = kat(&["trace", "--at-risk", "--idle-over", "a while"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a duration"), "{}", stderr(&o));
    let o = kat(&["trace", "--idle-over", "5m"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--at-risk"), "{}", stderr(&o));
}

/// The programs explain themselves through aya-log when RUST_LOG asks,
/// and say nothing otherwise: a CLOSE skipped on purpose
/// (`KAT_FAULT_MISS_CLOSE`) on a loopback connection of this test.
#[test]
fn the_programs_log_only_when_rust_log_asks() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let cmd = kat_scenarios::KatCmd {
        binary: env!("CARGO_BIN_EXE_kat").to_string(),
        lane: None,
    };
    for (rust_log, logs) in [(Some("kat_ebpf=debug"), true), (None, false)] {
        let mut env = vec![(kat_common::FAULT_MISS_CLOSE, "1")];
        env.extend(rust_log.map(|l| ("RUST_LOG", l)));
        let kat = kat_scenarios::Kat::trace(&cmd, &["--port", "6948"], &env);
        let listener = std::net::TcpListener::bind("127.0.0.1:6948").expect("listen");
        let client = std::net::TcpStream::connect("127.0.0.1:6948").expect("connect");
        let port = client.local_addr().expect("local").port();
        let (server, _) = listener.accept().expect("accept");
        drop((client, server));
        // The log is read every 250 ms.
        std::thread::sleep(std::time::Duration::from_secs(1));
        let (status, _, stderr) = kat.stop();
        assert!(status.success(), "{status}: {stderr:#?}");
        let line = format!("CLOSE of {port} -> 6948 skipped on purpose");
        assert_eq!(
            stderr
                .iter()
                .any(|l| l.contains("kat_ebpf") && l.contains(&line)),
            logs,
            "RUST_LOG={rust_log:?}: {stderr:#?}"
        );
    }
}
