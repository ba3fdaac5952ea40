//! A synthetic journal written by kat's own writer, for `benches/report.rs`
//! and `examples/journal.rs`.

use std::net::IpAddr;
use std::path::Path;

use kat_userspace::event::{Event, Reason, What};
use kat_userspace::journal::files;
use kat_userspace::journal::writer::{Limits, Writer};
use kat_userspace::testkit::{self, conn, death, probe, settings};

/// Connections of four events: probe, answer, probe, death; 37 ms apart.
pub fn event(i: u32) -> Event {
    let conn_no = i / 4;
    let what = match i % 4 {
        0 | 2 => probe(1, 2, 55.0),
        1 => What::ProbeAnswered { probe: 1 },
        _ => death(
            [Reason::KeepaliveTimeout, Reason::PeerReset, Reason::Closed][conn_no as usize % 3],
            Some("ETIMEDOUT"),
            2,
            Some(70.5),
        ),
    };
    let k = conn(
        IpAddr::from([198, 18, 1, 2]),
        30000 + (conn_no % 30000) as u16,
        IpAddr::from([198, 18, (conn_no >> 8) as u8, conn_no as u8]),
        6699,
    );
    Event {
        pid: Some(1234),
        comm: Some("server".into()),
        keepalive: Some(settings(55.0, 6.0, 2)),
        ..testkit::event(k, testkit::at(f64::from(i) * 0.037), what)
    }
}

/// What was written.
pub struct Written {
    pub events: u32,
    pub bytes: u64,
    pub files: usize,
}

/// Writes `events` events into a journal in `dir`, or fewer if it reaches
/// `max_size` first (kat record's cap: files of an eighth of it). Stops
/// short of the cap, so no file is dropped.
pub fn write(dir: &Path, events: u32, max_size: u64) -> Written {
    let header = testkit::header();
    let limits = Limits::new(max_size, None).expect("limits");
    let mut w = Writer::open(dir, limits, header).expect("writer");
    let size = || -> u64 {
        files(dir)
            .expect("files")
            .iter()
            .map(|(_, _, size)| size)
            .sum()
    };
    // A batch is at most 1 MiB, as in kat record.
    const BATCH: u32 = 2000;
    let mut written = 0;
    while written < events && size() + 2 * (1 << 20) < max_size {
        for i in written..events.min(written + BATCH) {
            w.push(&event(i)).expect("push");
        }
        written = events.min(written + BATCH);
        // A notice means the journal's state changed: trouble, for a bench.
        if let Some(notice) = w.flush() {
            panic!("journal: {notice}");
        }
    }
    drop(w);
    let files = files(dir).expect("files");
    Written {
        events: written,
        bytes: files.iter().map(|(_, _, size)| size).sum(),
        files: files.len(),
    }
}
