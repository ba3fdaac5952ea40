//! `kat record` on the running kernel, read back by `kat report`: while
//! the scenario suite of `kat trace` runs (with a real Prometheus server
//! scraping its metrics every second), after SIGTERM and after kill -9,
//! and with a size cap small enough to rotate every second; and its lines
//! on stdout for a log shipper.

mod prometheus;

use std::collections::BTreeMap;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use kat_scenarios::kat::ts;
use kat_scenarios::{keepalive, netns::Lab, Kat, KatCmd, Net as _};
use kat_userspace::journal::reader::read_dir;
use kat_userspace::journal::Entry;
use nix::sys::signal::Signal;
use serde_json::Value;

const KAT: &str = env!("CARGO_BIN_EXE_kat");

fn kat_cmd() -> KatCmd {
    KatCmd {
        binary: KAT.to_string(),
        lane: None,
    }
}

fn report(dir: &Path, args: &[&str]) -> Value {
    kat_scenarios::kat::report(&kat_cmd(), dir, args)
}

fn same_socket(a: &Value, b: &Value) -> bool {
    ["saddr", "sport", "daddr", "dport", "netns"]
        .iter()
        .all(|k| a[k] == b[k])
}

/// What an event says, without its timing: sock_diag answers are noticed
/// by each kat on its own poll.
fn story(v: &Value) -> String {
    match v["type"].as_str() {
        Some("death") => format!("death {} {}", v["reason"], v["errno"]),
        Some(t) => format!("{t} {}", v["probe"]),
        None => format!("? {v}"),
    }
}

/// Deaths by reason (orderly closes aside: they come as the kernel's
/// aggregates, on their own schedule) and probes answered and unanswered,
/// as the journal in `dir` has them so far.
fn journal_counts(dir: &Path) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let (mut deaths, mut probes) = (BTreeMap::new(), BTreeMap::new());
    let count = |m: &mut BTreeMap<String, f64>, k: &str, n: f64| {
        if n > 0.0 {
            *m.entry(k.to_string()).or_default() += n;
        }
    };
    let entries = read_dir(dir).map(|j| j.entries).unwrap_or_default();
    for entry in entries {
        let Entry::Event(ev) = entry else { continue };
        let v = serde_json::to_value(&ev).expect("JSON");
        match v["type"].as_str() {
            Some("death") => {
                let reason = v["reason"].as_str().unwrap_or_default();
                if reason != "closed" {
                    count(&mut deaths, reason, 1.0);
                }
                let unanswered = v["unanswered_probes"].as_f64().unwrap_or(0.0);
                count(&mut probes, "unanswered", unanswered);
            }
            Some("probe_answered") => {
                count(&mut probes, "answered", v["probe"].as_f64().unwrap_or(0.0));
            }
            _ => {}
        }
    }
    (deaths, probes)
}

const SUITE_PORT: u16 = 6801;

#[test]
fn the_journal_of_the_scenario_suite_names_every_death_and_its_timeline() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = format!("127.0.0.1:{}", prometheus::free_port());
    let recorder = Kat::record(&kat_cmd(), dir.path(), &["--metrics", &metrics]);
    let prometheus_dir = tempfile::tempdir().expect("tempdir");
    let prometheus = prometheus::Prometheus::start(prometheus_dir.path(), &metrics);
    // A second kat traces everything alongside: the journal must say what it said.
    let cmd = kat_cmd();
    let reference = Kat::trace(&cmd, &["--all"], &[]);
    // One after another, as the suite runs in the VMs: a dozen kat
    // processes loading and leaving at once is not what is tested here.
    for (i, (name, scenario)) in kat_scenarios::SCENARIOS.iter().enumerate() {
        let port = SUITE_PORT + 2 * i as u16;
        let run = std::panic::catch_unwind(|| scenario(&Lab::new(), &cmd, port));
        assert!(run.is_ok(), "scenario {name} failed");
    }
    std::thread::sleep(Duration::from_secs(1));
    // Prometheus says what the journal says (deaths by reason, probes
    // answered and unanswered), both read while kat still records: the
    // last events reach the journal and a scrape within a second or two.
    let by = |q: &str, label: &str| -> BTreeMap<String, f64> {
        prometheus
            .query(q)
            .into_iter()
            .map(|(m, v)| (m[label].as_str().unwrap_or_default().to_string(), v))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let journal = journal_counts(dir.path());
        let scraped = (
            by(
                r#"sum by (reason) (kat_connection_deaths_total{reason!="closed"})"#,
                "reason",
            ),
            by("sum by (outcome) (kat_keepalive_probes_total)", "outcome"),
        );
        if scraped == journal {
            assert!(journal.0.len() >= 6, "{journal:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deaths by reason and probes, Prometheus {scraped:?}, journal {journal:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(prometheus);
    let (_, traced, _) = reference.stop();
    let (status, _, stderr) = recorder.stop_with(Signal::SIGTERM);
    assert!(status.success(), "kat record: {status} {stderr:#?}");
    assert!(
        stderr.iter().any(|l| l.starts_with("kat: recorded ")),
        "{stderr:#?}"
    );

    let suite_ports = SUITE_PORT..SUITE_PORT + 2 * kat_scenarios::SCENARIOS.len() as u16;
    let in_suite = |v: &Value| {
        [&v["sport"], &v["dport"]].iter().any(|p| {
            p.as_u64()
                .is_some_and(|p| suite_ports.contains(&(p as u16)))
        })
    };
    let traced: Vec<&Value> = traced.iter().filter(|v| in_suite(v)).collect();
    let deaths: Vec<&Value> = traced
        .iter()
        .copied()
        .filter(|v| v["type"] == "death" && v["reason"] != "closed")
        .collect();

    assert!(deaths.len() >= 6, "{traced:#?}");
    let r = report(dir.path(), &[]);
    assert_eq!(r["problems"].as_array().map(Vec::len), Some(0), "{r}");
    let reported = r["deaths"].as_array().expect("deaths");
    for d in &deaths {
        assert!(
            reported.iter().any(|x| same_socket(x, d)
                && x["reason"] == d["reason"]
                && (ts(x) - ts(d)).abs() < 0.01),
            "the report lacks {d}"
        );
    }
    let reasons: Vec<&str> = r["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter_map(|x| x["reason"].as_str())
        .collect();
    for want in [
        "keepalive_timeout",
        "peer_reset",
        "abort_on_close",
        "abort_on_linger",
        "user_timeout",
        "retransmit_timeout",
    ] {
        assert!(reasons.contains(&want), "no {want} in {reasons:?}");
    }

    // Each dead connection's timeline tells the story kat trace told.
    for d in &deaths {
        let end = format!("{}:{}", d["saddr"].as_str().expect("saddr"), d["sport"]);
        let end = if d["saddr"].as_str().is_some_and(|a| a.contains(':')) {
            format!("[{}]:{}", d["saddr"].as_str().expect("saddr"), d["sport"])
        } else {
            end
        };
        let t = report(dir.path(), &["--conn", &end]);
        let timeline = t["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .find(|c| {
                same_socket(c, d)
                    && c["events"]
                        .as_array()
                        .and_then(|e| e.last())
                        .is_some_and(|l| l["type"] == "death")
            })
            .unwrap_or_else(|| panic!("no timeline for {end}: {t}"));
        let recorded: Vec<String> = timeline["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(story)
            .collect();
        // A churn reuses four-tuples: the connection is what came after
        // the previous death of the same four-tuple.
        let life: Vec<&&Value> = traced
            .iter()
            .filter(|v| same_socket(v, d) && ts(v) <= ts(d))
            .collect();
        let born = life[..life.len().saturating_sub(1)]
            .iter()
            .rposition(|v| v["type"] == "death")
            .map_or(0, |i| i + 1);
        let expected: Vec<String> = life[born..].iter().map(|v| story(v)).collect();
        assert!(
            recorded.ends_with(&expected),
            "timeline of {end}: recorded {recorded:#?}, traced {expected:#?}"
        );
    }

    // --port keeps to one port.
    let one = report(dir.path(), &["--port", &(SUITE_PORT + 2).to_string()]);
    for x in one["deaths"].as_array().expect("deaths") {
        assert!(
            x["sport"] == SUITE_PORT + 2 || x["dport"] == SUITE_PORT + 2,
            "{x}"
        );
    }
    assert!(one["events"].as_u64() < r["events"].as_u64());
}

/// Probing connections to `port` in a fresh lab: about two events a
/// second each (a probe and its answer).
fn probing(lab: &Lab, port: u16, n: usize) -> Vec<std::net::TcpStream> {
    let addr = std::net::SocketAddr::new(lab.server_addr(false), port);
    let listener = lab.listen(addr);
    let mut keep = Vec::new();
    for _ in 0..n {
        keep.push(lab.connect(addr, Box::new(|s| keepalive(s, 1, 1, 3))));
        keep.push(listener.accept().expect("accept").0);
    }
    keep
}

#[test]
fn kill_9_keeps_every_record_written_before_it() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let port = 6831;
    let dir = tempfile::tempdir().expect("tempdir");
    let recorder = Kat::record(&kat_cmd(), dir.path(), &["--port", &port.to_string()]);
    let cmd = kat_cmd();
    let mut reference = Kat::trace(&cmd, &["--port", &port.to_string()], &[]);
    let lab = Lab::new();
    let _conns = probing(&lab, port, 6);
    reference.collect_for(Duration::from_secs(6));
    let (status, _, _) = recorder.stop_with(Signal::SIGKILL);
    let killed = kat_scenarios::kat::now();
    assert_eq!(status.code(), None, "killed by a signal");
    let (_, traced, _) = reference.stop();

    let journal = read_dir(dir.path()).expect("journal");
    // Only the very last record may be cut short.
    for p in &journal.problems {
        assert!(
            p.what.contains("truncated") && p.line > 1,
            "{p} in {:?}",
            journal.files
        );
    }
    let recorded: Vec<Value> = journal
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Event(ev) => Some(serde_json::to_value(ev).expect("JSON")),
            _ => None,
        })
        .collect();
    // A batch is written every second: anything older than that is on disk.
    let written = traced
        .iter()
        .filter(|v| v["type"] == "probe" && ts(v) < killed - 1.5)
        .collect::<Vec<_>>();
    assert!(written.len() >= 10, "{traced:#?}");
    for v in written {
        assert!(
            recorded
                .iter()
                .any(|r| same_socket(r, v) && r["type"] == "probe" && (ts(r) - ts(v)).abs() < 0.01),
            "lost by kill -9: {v}"
        );
    }

    // The next start carries on in a new file, and the report reads both.
    let first = journal.files.clone();
    let again = Kat::record(&kat_cmd(), dir.path(), &["--port", &port.to_string()]);
    let (status, _, _) = again.stop();
    assert!(status.success());
    let journal = read_dir(dir.path()).expect("journal");
    assert_eq!(journal.files.len(), first.len() + 1);
    assert_eq!(&journal.files[..first.len()], &first[..]);
    let r = report(dir.path(), &[]);
    assert!(r["probes"].as_u64().is_some_and(|p| p >= 8), "{r}");
    assert_eq!(r["runs"].as_array().map(Vec::len), Some(2), "{r}");
}

#[test]
fn a_small_max_size_rotates_files_and_drops_the_oldest() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let port = 6833;
    let (max, file) = (16 * 1024, 4 * 1024);
    let dir = tempfile::tempdir().expect("tempdir");
    let recorder = Kat::record(
        &kat_cmd(),
        dir.path(),
        &[
            "--port",
            &port.to_string(),
            "--max-size",
            "16KiB",
            "--file-size",
            "4KiB",
        ],
    );
    let lab = Lab::new();
    let conns = probing(&lab, port, 20);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _, stderr) = recorder.stop_with(Signal::SIGTERM);
    drop(conns);
    assert!(status.success(), "{stderr:#?}");

    let mut files: Vec<(String, u64, u32)> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| {
            let e = e.expect("entry");
            let m = e.metadata().expect("metadata");
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.permissions().mode() & 0o777,
            )
        })
        .collect();
    files.sort();
    let total: u64 = files.iter().map(|f| f.1).sum();
    assert!(total <= max, "{total} bytes: {files:#?}");
    assert!(
        files.iter().all(|f| f.1 <= file && f.2 == 0o600),
        "{files:#?}"
    );
    assert!(
        !files[0].0.starts_with("kat-000001-"),
        "the oldest file was not dropped: {files:#?}"
    );
    assert!(files.len() >= 3, "{files:#?}");
    let removed = stderr
        .iter()
        .find(|l| l.starts_with("kat: recorded "))
        .expect("summary line");
    assert!(!removed.contains(" 0 removed"), "{removed}");

    let journal = read_dir(dir.path()).expect("journal");
    assert!(journal.problems.is_empty(), "{:?}", journal.problems);
    for path in &journal.files {
        let text = std::fs::read_to_string(path).expect("read");
        assert!(text.starts_with("{\"type\":\"journal\""), "{text}");
    }
    let r = report(dir.path(), &[]);
    assert!(r["probes"].as_u64().is_some_and(|p| p > 10), "{r}");
}

const STDOUT_PORT: u16 = 6861;

#[test]
fn stdout_carries_the_journals_lines_for_a_log_shipper() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let cmd = kat_cmd();
    let port = STDOUT_PORT.to_string();
    let mut recorder = Kat::record_to_stdout(&cmd, &["--port", &port]);
    assert!(
        recorder
            .started
            .starts_with("kat: recording to stdout on Linux"),
        "{}",
        recorder.started
    );
    kat_scenarios::vanished_peer_keepalive_timeout(&Lab::new(), &cmd, STDOUT_PORT);
    let dead = recorder.wait_for("death on stdout", Duration::from_secs(5), |v| {
        v["type"] == "death" && v["dport"] == STDOUT_PORT
    });
    assert_eq!(dead["reason"], "keepalive_timeout", "{dead}");
    let (status, lines, stderr) = recorder.stop_with(Signal::SIGTERM);
    assert!(status.success(), "{stderr:#?}");
    // The journal's own lines: its header first, then probes and the death.
    assert_eq!(lines[0]["type"], "journal", "{:#?}", lines[0]);
    assert_eq!(lines[0]["ports"][0], STDOUT_PORT);
    let probes = lines
        .iter()
        .filter(|v| v["type"] == "probe" && v["dport"] == STDOUT_PORT)
        .count();
    assert_eq!(probes, 3, "{lines:#?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.starts_with("kat: recorded ") && !l.contains("files opened")),
        "no journal, no files: {stderr:#?}"
    );
}
