use std::io::Cursor;
use std::os::unix::fs::PermissionsExt as _;

use chrono::{DateTime, Utc};

use super::reader::{self, Journal};
use super::writer::{Limits, Writer};
use super::*;
use crate::event::{Origin, Reason, Settings, What};
use crate::testkit::{self, addr, at, conn, header};

/// `what` at second `ts` on a connection from local port `sport` of
/// 198.18.1.2 to 198.18.2.2:6699, held by pid 7 (client): the stories of
/// the journal, report and replay tests.
pub(crate) fn event(ts: f64, sport: u16, what: What) -> Event {
    let k = conn(addr("198.18.1.2"), sport, addr("198.18.2.2"), 6699);
    Event {
        pid: Some(7),
        comm: Some("client".into()),
        ..testkit::event(k, at(ts), what)
    }
}

pub(crate) fn probe(ts: f64, sport: u16, n: u8) -> Event {
    event(ts, sport, testkit::probe(n, 3, ts))
}

pub(crate) fn death(ts: f64, sport: u16, reason: Reason) -> Event {
    event(
        ts,
        sport,
        testkit::death(reason, Some("ETIMEDOUT"), 3, Some(ts)),
    )
}

fn events(j: &Journal) -> Vec<&Event> {
    j.entries
        .iter()
        .filter_map(|e| match e {
            Entry::Event(ev) => Some(ev),
            _ => None,
        })
        .collect()
}

#[test]
fn what_is_written_reads_back_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits::new(1 << 20, None).expect("limits");
    let mut w = Writer::open(dir.path(), limits, header()).expect("open");
    let written = [probe(1.0, 40000, 1), death(2.5, 40000, Reason::PeerReset)];
    for ev in &written {
        w.push(ev).expect("push");
    }
    let lost = Lost {
        ts: at(3.0),
        count: 12,
        by_kind: [("closed".to_string(), 12)].into(),
    };
    w.push(&lost).expect("push");
    assert_eq!(w.flush(), None);

    let j = reader::read_dir(dir.path()).expect("read");
    assert!(j.problems.is_empty(), "{:?}", j.problems);
    assert_eq!(j.files.len(), 1);
    let Entry::Header(h) = &j.entries[0] else {
        panic!("no header first: {:?}", j.entries[0]);
    };
    assert_eq!((h.host.as_str(), h.format), ("web-1", FORMAT));
    assert_eq!(events(&j), written.iter().collect::<Vec<_>>());
    assert_eq!(j.entries.last(), Some(&Entry::Lost(lost)));
    let mode = std::fs::metadata(w.path())
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

#[test]
fn a_journal_directory_removed_under_kat_is_made_anew() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("journal");
    let limits = Limits::new(1 << 20, None).expect("limits");
    let mut w = Writer::open(&dir, limits, header()).expect("open");
    w.push(&probe(1.0, 40000, 1)).expect("push");
    assert_eq!(w.flush(), None);
    std::fs::remove_dir_all(&dir).expect("rm");

    w.push(&probe(2.0, 40000, 2)).expect("push");
    let notice = w.flush().expect("told");
    assert!(notice.contains("was removed under kat"), "{notice}");
    let j = reader::read_dir(&dir).expect("read");
    assert_eq!(events(&j), [&probe(2.0, 40000, 2)]);
    assert_eq!(w.unwritten, 0);
    // Told once: the next batch goes on quietly.
    w.push(&probe(3.0, 40000, 3)).expect("push");
    assert_eq!(w.flush(), None);

    // A directory that cannot be made: counted, told once, then back.
    std::fs::remove_dir_all(&dir).expect("rm");
    std::fs::write(&dir, b"a file in the way").expect("file");
    for ts in [4.0, 5.0] {
        w.push(&probe(ts, 40000, 1)).expect("push");
    }
    let notice = w.flush().expect("told");
    assert!(notice.contains("counted as unwritten"), "{notice}");
    w.push(&probe(6.0, 40000, 1)).expect("push");
    assert_eq!(w.flush(), None, "told once");
    assert_eq!(w.unwritten, 3);
    std::fs::remove_file(&dir).expect("rm");
    w.push(&probe(7.0, 40000, 1)).expect("push");
    let notice = w.flush().expect("told");
    assert!(
        notice.contains("again; 3 records could not be written"),
        "{notice}"
    );
    let j = reader::read_dir(&dir).expect("read");
    assert_eq!(events(&j), [&probe(7.0, 40000, 1)]);
}

#[test]
fn files_rotate_and_the_oldest_go_over_the_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits::new(4 * 4096, Some(4096)).expect("limits");
    let mut w = Writer::open(dir.path(), limits, header()).expect("open");
    let mut n = 0;
    for batch in 0..40 {
        for _ in 0..10 {
            n += 1;
            w.push(&probe(f64::from(batch), n, 1)).expect("push");
        }
        assert_eq!(w.flush(), None);
    }
    let files = files(dir.path()).expect("files");
    let total: u64 = files.iter().map(|(_, _, size)| size).sum();
    assert!(total <= limits.max_size, "{total} bytes in {files:?}");
    assert!(w.files_removed > 0 && files.len() >= 3, "{files:?}");
    assert!(files.iter().all(|(_, _, size)| *size <= 4096), "{files:?}");
    // The newest files are kept, in order, with no gap and no half record.
    let seqs: Vec<u64> = files.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(*seqs.last().expect("one"), w.files_opened);
    assert!(seqs.windows(2).all(|p| p[1] == p[0] + 1), "{seqs:?}");
    let j = reader::read_dir(dir.path()).expect("read");
    assert!(j.problems.is_empty(), "{:?}", j.problems);
    let ports: Vec<u16> = events(&j).iter().map(|e| e.sport).collect();
    assert_eq!(ports.last(), Some(&n));
    assert!(ports.windows(2).all(|p| p[1] == p[0] + 1));
    for (_, path, _) in &files {
        let text = std::fs::read_to_string(path).expect("read");
        assert!(text.starts_with("{\"type\":\"journal\""), "{text}");
    }
}

#[test]
fn a_new_start_never_appends_to_an_old_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits::new(1 << 20, None).expect("limits");
    let first = Writer::open(dir.path(), limits, header()).expect("open");
    let first_path = first.path().to_path_buf();
    drop(first);
    // A crash cut the last record short.
    let mut cut = std::fs::OpenOptions::new()
        .append(true)
        .open(&first_path)
        .expect("open");
    std::io::Write::write_all(&mut cut, b"{\"type\":\"probe\",\"ts\":\"20").expect("write");
    let mut second = Writer::open(dir.path(), limits, header()).expect("open");
    assert_ne!(second.path(), first_path);
    second.push(&probe(1.0, 1, 1)).expect("push");
    assert_eq!(second.flush(), None);
    let j = reader::read_dir(dir.path()).expect("read");
    assert_eq!(j.files.len(), 2);
    assert_eq!(events(&j).len(), 1);
    assert_eq!(j.problems.len(), 1, "{:?}", j.problems);
    assert_eq!(j.problems[0].line, 2);
    assert!(j.problems[0].what.contains("truncated"), "{:?}", j.problems);
}

#[test]
fn corrupt_and_foreign_lines_are_named_and_skipped() {
    let good = serde_json::to_string(&probe(1.0, 40000, 1)).expect("json");
    let mut text = Vec::new();
    for line in [
        serde_json::to_string(&header()).expect("json").as_bytes(),
        good.as_bytes(),
        b"not json at all",
        b"{\"type\":\"http_request\",\"path\":\"/\"}",
        b"{\"type\":\"probe\",\"ts\":\"2026-11-21T03:12:00.000Z\"}",
        b"[1, 2, 3]",
        b"{\"type\":\"death\",\"reason\":\"\xff\"}",
        b"",
        good.as_bytes(),
    ] {
        text.extend_from_slice(line);
        text.push(b'\n');
    }
    text.extend_from_slice(&good.as_bytes()[..good.len() / 2]);
    let mut j = Journal::default();
    reader::read(Cursor::new(text), Path::new("fixture.jsonl"), &mut j);
    assert_eq!(events(&j).len(), 2);
    let problems: Vec<(usize, &str)> = j
        .problems
        .iter()
        .map(|p| (p.line, p.what.as_str()))
        .collect();
    let lines: Vec<usize> = problems.iter().map(|p| p.0).collect();
    assert_eq!(lines, [3, 4, 5, 6, 7, 10], "{problems:#?}");
    assert!(problems[0].1.starts_with("not JSON"), "{problems:?}");
    assert!(problems[1].1.contains("\"http_request\""), "{problems:?}");
    assert!(
        problems[2].1.contains("not a valid probe record"),
        "{problems:?}"
    );
    assert!(problems[4].1.contains("UTF-8"), "{problems:?}");
    assert!(problems[5].1.contains("truncated"), "{problems:?}");
    assert_eq!(
        j.problems[0].to_string(),
        format!("fixture.jsonl:3: {}", problems[0].1)
    );
}

#[test]
fn names_sort_by_sequence_and_foreign_files_are_ignored() {
    assert_eq!(file_name(7, at(0.0)), "kat-000007-20251121T044000Z.jsonl");
    assert_eq!(
        seq_of(Path::new("/x/kat-000007-20261118T110640Z.jsonl")),
        Some(7)
    );
    assert_eq!(seq_of(Path::new("/x/kat-1234567-x.jsonl")), Some(1234567));
    for foreign in [
        "notes.txt",
        "kat-x-y.jsonl",
        "kat-000001.jsonl.gz",
        "kat.jsonl",
    ] {
        assert_eq!(seq_of(Path::new(foreign)), None, "{foreign}");
    }
}

#[test]
fn limits_are_checked() {
    assert!(Limits::new(100, None).is_err());
    assert!(Limits::new(1 << 20, Some(2 << 20)).is_err());
    let l = Limits::new(256 << 20, None).expect("limits");
    assert_eq!(l.file_size, 32 << 20);
}

#[test]
fn one_writer_at_a_time_per_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits::new(1 << 20, None).expect("limits");
    let first = Writer::open(dir.path(), limits, header()).expect("open");
    let second = Writer::open(dir.path(), limits, header()).map(|_| ());
    let err = second.expect_err("a second writer");
    assert!(
        err.to_string().contains("another kat record is writing to"),
        "{err}"
    );
    drop(first);
    assert!(Writer::open(dir.path(), limits, header()).is_ok());
}

fn kind(e: &Entry) -> &'static str {
    match e {
        Entry::Header(_) => "journal",
        Entry::Event(ev) => match ev.what {
            What::Probe { .. } => "probe",
            What::ProbeAnswered { .. } => "probe_answered",
            What::Death { .. } => "death",
        },
        Entry::Lost(_) => "lost",
        Entry::Closes(_) => "closes",
        Entry::Expired(_) => "conntrack_expired",
    }
}

#[test]
fn a_flow_conntrack_forgot_reads_back_as_written() {
    let written = crate::conntrack::Expired {
        ts: at(3.0),
        netns: 4026532177,
        orig: crate::conntrack::Tuple {
            saddr: addr("198.18.20.1"),
            sport: 41000,
            daddr: addr("198.18.21.2"),
            dport: 5432,
        },
        reply: crate::conntrack::Tuple {
            saddr: addr("198.18.21.2"),
            sport: 5432,
            daddr: addr("198.18.21.254"),
            dport: 41000,
        },
        established_timeout_s: Some(350),
    };
    let line = serde_json::to_string(&written).expect("json");
    let read = reader::parse_line(&line).expect("a journal entry");
    assert_eq!(kind(&read), "conntrack_expired");
    assert!(matches!(read, Entry::Expired(e) if e == written), "{line}");
}

#[test]
fn entries_stream_file_by_file_and_bad_lines_keep_their_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let head = serde_json::to_string(&header()).expect("json");
    let line = |e: &Event| serde_json::to_string(e).expect("json");
    let first = dir.path().join("kat-000001-20261121T030000Z.jsonl");
    let second = dir.path().join("kat-000002-20261121T031000Z.jsonl");
    let closes = r#"{"type":"closes","ts":"2026-11-21T03:10:10.000Z","interval_s":10.0,"netns":4026531840,"port":6699,"direction":"in","peer":"198.18.0.2","count":3,"timed":2,"lifetime_sum_s":7.5,"lifetime_max_s":5.0}"#;
    std::fs::write(
        &first,
        format!("{head}\n{}\ngarbage\n", line(&probe(1.0, 40000, 1))),
    )
    .expect("write");
    std::fs::write(
        &second,
        format!(
            "{head}\n{closes}\n{}\n",
            line(&death(2.0, 40000, Reason::PeerReset))
        ),
    )
    .expect("write");
    let mut seen = Vec::new();
    let read = reader::each_entry(dir.path(), |e| seen.push(e)).expect("read");
    let kinds: Vec<&str> = seen.iter().map(kind).collect();
    assert_eq!(kinds, ["journal", "probe", "journal", "closes", "death"]);
    assert_eq!(read.files, [first.clone(), second]);
    let problems: Vec<String> = read.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(&format!("{}:3: not JSON", first.display())),
        "{problems:?}"
    );
    let Entry::Closes(c) = &seen[3] else {
        panic!("not closes: {:?}", seen[3]);
    };
    assert_eq!(
        (c.port, c.direction, c.count, c.timed, c.lifetime_max_s),
        (6699, crate::event::Direction::In, 3, 2, 5.0)
    );
    assert_eq!(c.peer.to_string(), "198.18.0.2");
}

#[test]
fn every_kind_of_event_reads_back_field_for_field() {
    let mut with_settings = probe(1.0, 40000, 2);
    with_settings.keepalive = Some(Settings {
        intvl_from: Origin::Sysctl,
        user_timeout_ms: Some(2500),
        ..testkit::settings(55.0, 6.5, 4)
    });
    with_settings.workload = Some(std::sync::Arc::new(crate::workload::Workload {
        runtime: Some("containerd".into()),
        container_id: Some("4f1b".repeat(16)),
        container: Some("nginx".into()),
        pod_uid: Some("0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9".into()),
        pod: Some("web-7d9f".into()),
        namespace: Some("shop".into()),
        unit: None,
    }));
    let mut bare = death(3.0, 40000, Reason::Unknown);
    bare.pid = None;
    bare.comm = None;
    if let What::Death {
        errno,
        lifetime_s,
        kernel_reset_reason,
        found_by_probe,
        ..
    } = &mut bare.what
    {
        *errno = None;
        *lifetime_s = None;
        *kernel_reset_reason = Some("TCP_KEEPALIVE_TIMEOUT".into());
        *found_by_probe = true;
    }
    let mut suspect = death(4.0, 40000, Reason::RetransmitTimeout);
    if let What::Death { silence, .. } = &mut suspect.what {
        *silence = Some(crate::event::Silence {
            idle_before_s: 4.3,
            verdict: Some(crate::event::Verdict::MiddleboxIdleDropSuspected),
            survived_idle_s: Some(1.0),
        });
    }
    let v = serde_json::to_value(&suspect).expect("json");
    assert_eq!(v["idle_before_s"], 4.3, "flat in the death: {v}");
    assert_eq!(v["verdict"], "middlebox_idle_drop_suspected");
    assert_eq!(v["survived_idle_s"], 1.0);
    for ev in [
        with_settings,
        event(2.0, 40000, What::ProbeAnswered { probe: 2 }),
        death(2.5, 40000, Reason::PeerReset),
        bare,
        suspect,
    ] {
        let line = serde_json::to_string(&ev).expect("json");
        assert_eq!(reader::parse_line(&line), Ok(Entry::Event(ev)), "{line}");
    }
    // Fields a later kat adds are not a problem.
    let mut newer = serde_json::to_value(probe(1.0, 40000, 1)).expect("json");
    newer["rtt_us"] = 120.into();
    assert!(reader::parse_line(&newer.to_string()).is_ok());
}

#[test]
fn an_event_without_a_field_its_type_needs_is_named() {
    let mut v = serde_json::to_value(death(2.0, 40000, Reason::PeerReset)).expect("json");
    v.as_object_mut().expect("object").remove("state");
    let e = reader::parse_line(&v.to_string()).expect_err("no state");
    assert!(
        e.starts_with("not a valid death record (missing field `state`"),
        "{e}"
    );
    let mut v = serde_json::to_value(probe(1.0, 40000, 1)).expect("json");
    v["sport"] = "http".into();
    let e = reader::parse_line(&v.to_string()).expect_err("bad port");
    assert!(
        e.starts_with("not a valid probe record (invalid type"),
        "{e}"
    );
    let answered = r#"{"type":"probe_answered","ts":"2026-11-21T03:12:00.000Z","saddr":"198.18.1.2","sport":1,"daddr":"198.18.2.2","dport":2,"netns":1,"uid":0}"#;
    let e = reader::parse_line(answered).expect_err("no probe");
    assert!(e.contains("missing field `probe`"), "{e}");
}

#[test]
fn times_in_any_rfc3339_form_read_as_chrono_reads_them() {
    let mut v = serde_json::to_value(probe(1.0, 40000, 1)).expect("json");
    for ts in [
        "2026-11-21T14:18:09.544Z",
        "2026-11-21T14:18:09Z",
        "2026-11-21T14:18:09.544123Z",
        "2026-11-21T15:18:09.544+01:00",
        "2026-11-21 14:18:09.544Z",
        "2016-12-31T23:59:60.500Z",
    ] {
        v["ts"] = ts.into();
        let Ok(Entry::Event(ev)) = reader::parse_line(&v.to_string()) else {
            panic!("{ts} not read");
        };
        let want: DateTime<Utc> = ts.parse().expect(ts);
        assert_eq!(ev.ts, want, "{ts}");
    }
    for bad in [
        "2026-13-21T14:18:09.544Z",
        "2026-11-21T14:18:09.5x4Z",
        "yesterday",
    ] {
        v["ts"] = bad.into();
        let e = reader::parse_line(&v.to_string()).expect_err(bad);
        assert!(e.starts_with("not a valid probe record"), "{bad}: {e}");
    }
}

#[test]
fn lines_longer_than_the_read_buffer_read_the_same() {
    let good = serde_json::to_string(&death(2.0, 40000, Reason::PeerReset)).expect("json");
    let text = format!("{good}\nnot json\n\n{good}\n{}", &good[..good.len() / 2]);
    let read = |capacity| {
        let mut j = Journal::default();
        let input = std::io::BufReader::with_capacity(capacity, Cursor::new(text.clone()));
        reader::read(input, Path::new("f.jsonl"), &mut j);
        j
    };
    let (small, large) = (read(7), read(1 << 16));
    assert_eq!(events(&small).len(), 2);
    assert_eq!(small.entries, large.entries);
    assert_eq!(small.problems, large.problems);
    let lines: Vec<usize> = small.problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [2, 5], "{:?}", small.problems);
}

#[test]
fn settings_written_before_enabled_existed_read_as_keepalive_on() {
    // Journals before the field had settings only for sockets that probed.
    let old = r#"{"idle_s":2.0,"idle_from":"socket","intvl_s":1.0,"intvl_from":"socket","probes":3,"probes_from":"socket"}"#;
    let k: Settings = serde_json::from_str(old).expect("an old journal's settings");
    assert!(k.enabled);
    let off = serde_json::to_value(Settings {
        enabled: false,
        ..testkit::settings(2.0, 1.0, 3)
    })
    .expect("json");
    assert_eq!(off["enabled"], false);
}
