//! Least privilege (root): once attached, every thread of kat keeps only
//! the capabilities of `privilege::KEPT`, none can come back through exec,
//! and with `--user` every thread runs as that user — while kat still
//! sees probes, their answers (sock_diag inside the lab's namespace) and
//! their owners (another user's process), and `kat record` still writes
//! and rotates its journal. Nothing listens unless asked.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::time::Duration;

use kat_scenarios::netns::Lab;
use kat_scenarios::{keepalive, Kat, KatCmd, Net, Side};
use kat_userspace::privilege::KEPT;

fn kat_cmd() -> KatCmd {
    KatCmd {
        binary: env!("CARGO_BIN_EXE_kat").to_string(),
        lane: None,
    }
}

fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |m, c| m | c.bitmask())
}

/// The `key:` line of a /proc status file.
fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
}

/// Checks every thread of `pid`: capabilities within KEPT (effective,
/// permitted, bounding), none inheritable or ambient, no_new_privs, and
/// all four user ids `uid`.
fn assert_settled(pid: u32, uid: u32) {
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
        .collect();
    assert!(
        tasks.len() >= 3,
        "kat runs its workers: {} threads",
        tasks.len()
    );
    for task in tasks {
        let status = std::fs::read_to_string(task.path().join("status")).expect("status");
        let name = field(&status, "Name:");
        for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
            let caps = u64::from_str_radix(field(&status, set), 16).expect("hex");
            assert_eq!(
                caps & !kept_mask(),
                0,
                "thread {name}: {set} {caps:x} beyond {:x}",
                kept_mask()
            );
        }
        for set in ["CapInh:", "CapAmb:"] {
            assert_eq!(
                u64::from_str_radix(field(&status, set), 16),
                Ok(0),
                "{name} {set}"
            );
        }
        assert_eq!(field(&status, "NoNewPrivs:"), "1", "thread {name}");
        let ids: Vec<u32> = field(&status, "Uid:")
            .split_whitespace()
            .map(|u| u.parse().expect("uid"))
            .collect();
        assert_eq!(ids, [uid; 4], "thread {name}");
    }
}

/// Inodes of the TCP sockets listening in kat's network namespace that
/// belong to `pid`.
fn listening(pid: u32) -> Vec<u64> {
    let mine: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
        .filter_map(|fd| {
            let link = std::fs::read_link(fd.path()).ok()?;
            link.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .map(|f| std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    (cols.get(3) == Some(&"0A")).then(|| cols.get(9)?.parse().ok())?
                })
                .collect::<Vec<u64>>()
        })
        .filter(|inode| mine.contains(inode))
        .collect()
}

fn nobody() -> u32 {
    nix::unistd::User::from_name("nobody")
        .expect("passwd")
        .expect("a user nobody")
        .uid
        .as_raw()
}

/// A keepalive connection in a lab of its own; kat sees its probe answered
/// and names this (root) process as its owner.
fn probe_seen_with_owner(net: &dyn Net, kat: &mut Kat, port: u16) {
    let listener = net.listen(std::net::SocketAddr::new(net.server_addr(false), port));
    let _client = net.connect(
        std::net::SocketAddr::new(net.server_addr(false), port),
        Box::new(|s| keepalive(s, 1, 1, 3)),
    );
    let _server = listener.accept().expect("accept");
    let answered = kat.wait_for("an answered probe", Duration::from_secs(10), |v| {
        net.is(v, "probe_answered", Side::Client, port)
    });
    assert_eq!(answered["pid"], std::process::id(), "{answered}");
}

#[test]
fn trace_keeps_only_what_it_needs_as_root_and_as_another_user() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    for (port, user) in [(6941u16, None), (6942, Some("nobody"))] {
        let lab = Lab::new();
        let port_arg = port.to_string();
        let mut args = vec!["--port", port_arg.as_str()];
        args.extend(user.iter().flat_map(|u| ["--user", *u]));
        let mut kat = Kat::trace(&kat_cmd(), &args, &[]);
        probe_seen_with_owner(&lab, &mut kat, port);
        assert_settled(kat.pid(), user.map_or(0, |_| nobody()));
        assert_eq!(
            listening(kat.pid()),
            Vec::<u64>::new(),
            "kat listens unasked"
        );
        let (status, _, stderr) = kat.stop();
        assert!(status.success(), "kat exited with {status}: {stderr:?}");
    }
}

#[test]
fn record_as_another_user_writes_and_rotates_its_journal() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("journal");
    let lab = Lab::new();
    let port = 6943;
    let (port_arg, other) = (port.to_string(), (port + 100).to_string());
    let mut kat = Kat::record(
        &kat_cmd(),
        &dir,
        &[
            "--stdout",
            "--port",
            &port_arg,
            "--port",
            &other,
            "--user",
            "nobody",
            "--file-size",
            "4KiB",
            "--max-size",
            "1MiB",
        ],
    );
    probe_seen_with_owner(&lab, &mut kat, port);
    // More connections probing: past 4 KiB, files made after the switch.
    let server = std::net::SocketAddr::new(lab.server_addr(false), port + 100);
    let listener = lab.listen(server);
    let more: Vec<_> = (0..10)
        .map(|_| {
            let client = lab.connect(server, Box::new(|s| keepalive(s, 1, 1, 3)));
            (client, listener.accept().expect("accept"))
        })
        .collect();
    kat.collect_for(Duration::from_secs(5));
    assert_settled(kat.pid(), nobody());
    let (status, _, stderr) = kat.stop();
    drop(more);
    assert!(status.success(), "kat exited with {status}: {stderr:?}");

    let meta = std::fs::metadata(&dir).expect("journal dir");
    assert_eq!(meta.uid(), nobody());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("journal")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .collect();
    assert!(
        files.len() >= 2,
        "the journal rotated: {} files",
        files.len()
    );
    for f in &files {
        let meta = f.metadata().expect("file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{:?}", f.path());
    }
    let lines: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f.path()).expect("read"))
        .collect();
    assert!(
        lines.contains("\"probe_answered\""),
        "no answered probe in the journal"
    );
}

#[test]
fn an_unknown_user_is_a_usage_error() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kat"))
        .args(["trace", "--port", "6944", "--user", "no-such-user-kat"])
        .output()
        .expect("kat");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--user no-such-user-kat: no such user"),
        "{stderr}"
    );
}
