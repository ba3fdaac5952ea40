//! Hostile and broken input, as property tests: the ring-buffer record
//! decoder and the tracker behind it (kernel memory read by probes can be
//! anything), the sock_diag reply parser, the BTF offset resolver and the
//! journal reader. None may panic, hang or allocate without bound, whatever
//! the bytes. Each also runs the corpus in `corpus/` (inputs that broke, or
//! nearly broke, a parser); proptest keeps any new failure in
//! `proptest-regressions/`.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use kat_common::{Record, RECORD_SIZE};
use proptest::prelude::*;

use crate::diag;
use crate::journal::reader::{self, Journal};
use crate::source;
use crate::tracker::{Msg, Setup, Tracker};

/// The corpus files of one parser.
fn corpus(parser: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(parser);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

fn tracker() -> Tracker {
    Tracker::new(Setup {
        hz: 250,
        reset_reasons: None,
        realtime_offset_ns: 1_700_000_000_000_000_000,
    })
}

/// Records made of arbitrary bytes, fed to the tracker with ticks between.
fn feed(tracker: &mut Tracker, items: &[Vec<u8>]) {
    for (i, bytes) in items.iter().enumerate() {
        if let Some(rec) = source::decode(bytes) {
            tracker.update(Msg::Record(rec));
        }
        tracker.update(Msg::Tick(i as u64 * 1_000_000_000));
    }
}

fn sock_diag(buf: &[u8]) {
    let mut buf = buf.to_vec();
    let mut rows = Vec::new();
    let _ = diag::parse(&mut buf, &mut rows, diag::Keep::ALL);
    // Every row came from a message of at least a header and a payload.
    assert!(rows.len() <= buf.len() / 16, "{} rows", rows.len());
}

fn journal(bytes: &[u8]) -> Journal {
    let mut j = Journal::default();
    reader::read(Cursor::new(bytes), Path::new("corpus"), &mut j);
    j
}

/// A whole record with these fields set from arbitrary values: the kinds
/// and states the tracker switches on, and sockets that repeat.
fn record() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(any::<u8>(), RECORD_SIZE),
        0u8..12,
        0u8..14,
        0u64..4,
    )
        .prop_map(|(mut bytes, kind, state, sk)| {
            // SAFETY: RECORD_SIZE bytes; Record is plain old data.
            let mut rec: Record = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            rec.kind = kind;
            rec.state = state;
            rec.sk = 0xffff_8880_0000_0000 + sk * 64;
            // SAFETY: as above, written back whole.
            unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), rec) };
            bytes
        })
}

proptest! {
    #[test]
    fn records_of_any_bytes_never_break_the_tracker(
        items in proptest::collection::vec(
            prop_oneof![record(), proptest::collection::vec(any::<u8>(), 0..2 * RECORD_SIZE)],
            0..64,
        )
    ) {
        feed(&mut tracker(), &items);
    }

    #[test]
    fn sock_diag_replies_of_any_bytes_end_in_a_result(
        buf in proptest::collection::vec(any::<u8>(), 0..4096)
    ) {
        sock_diag(&buf);
    }

    #[test]
    fn sock_diag_headers_with_any_length_end_in_a_result(
        lens in proptest::collection::vec(any::<u32>(), 1..8),
        kinds in proptest::collection::vec(prop_oneof![Just(2u16), Just(3), Just(18), Just(20), any::<u16>()], 8),
    ) {
        // Headers that claim any length, zero and beyond the buffer among them.
        let mut buf = Vec::new();
        for (len, kind) in lens.iter().zip(&kinds) {
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.extend_from_slice(&kind.to_ne_bytes());
            buf.extend_from_slice(&[0; 10]);
            buf.extend_from_slice(&[0x55; 72]);
        }
        sock_diag(&buf);
    }

    #[test]
    fn journal_lines_of_any_text_are_read_or_named(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048)
    ) {
        let j = journal(&bytes);
        // Every line is an entry or a problem, never lost silently.
        let lines = bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
        prop_assert!(j.entries.len() + j.problems.len() <= lines + 1);
    }

    #[test]
    fn journal_lines_like_kats_with_any_values_are_read_or_named(
        ty in prop_oneof![
            Just("probe".to_string()),
            Just("death".to_string()),
            Just("lost".to_string()),
            Just("closes".to_string()),
            Just("journal".to_string()),
            ".*",
        ],
        ts in prop_oneof![Just("2026-11-21T14:18:09.544Z".to_string()), ".{0,30}"],
        n in any::<i64>(),
        f in any::<f64>(),
        s in ".{0,20}",
    ) {
        let line = serde_json::json!({
            "type": ty, "ts": ts, "saddr": "198.18.0.1", "sport": n, "daddr": s,
            "dport": 6699, "netns": n, "uid": 0, "probe": n, "probes_max": 3,
            "idle_s": f, "reason": s, "count": n, "interval_s": f,
        });
        let _ = reader::parse_line(&line.to_string());
    }

    #[test]
    fn btf_of_any_bytes_is_refused_or_resolved(
        bytes in proptest::collection::vec(any::<u8>(), 0..512)
    ) {
        if let Ok(btf) = crate::btf::KernelBtf::from_bytes(bytes) {
            let _ = btf.offsets();
        }
    }
}

#[test]
fn the_corpus_of_records_never_breaks_the_tracker() {
    let items: Vec<Vec<u8>> = corpus("record").into_iter().map(|(_, b)| b).collect();
    feed(&mut tracker(), &items);
}

#[test]
fn the_corpus_of_sock_diag_replies_ends_in_a_result() {
    for (path, bytes) in corpus("sock_diag") {
        let mut buf = bytes.clone();
        let mut rows = Vec::new();
        let result = diag::parse(&mut buf, &mut rows, diag::Keep::ALL);
        // Each file is broken somewhere: the parser says so, or stops at
        // the end of the dump, never loops.
        assert!(
            result.is_err() || rows.is_empty(),
            "{}: {result:?}",
            path.display()
        );
    }
}

#[test]
fn the_corpus_of_journal_lines_is_named_as_problems() {
    for (path, bytes) in corpus("journal") {
        let j = journal(&bytes);
        assert!(j.entries.is_empty(), "{}: {:?}", path.display(), j.entries);
        assert!(!j.problems.is_empty(), "{}", path.display());
    }
}

/// The running kernel's BTF with bytes flipped here and there: refused,
/// or resolved to something, never a panic.
#[test]
fn the_running_kernels_btf_damaged_is_refused_or_resolved() {
    let Ok(real) = std::fs::read(crate::btf::VMLINUX) else {
        assert!(
            std::env::var("CI").is_err(),
            "CI machines must have {}",
            crate::btf::VMLINUX
        );
        return;
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 16,
        ..ProptestConfig::default()
    });
    let damage = proptest::collection::vec((0..real.len(), any::<u8>()), 1..64);
    runner
        .run(&damage, |flips| {
            let mut bytes = real.clone();
            for (at, b) in flips {
                bytes[at] = b;
            }
            if let Ok(btf) = crate::btf::KernelBtf::from_bytes(bytes) {
                let _ = btf.offsets();
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
