//! A synthetic journal written by kat's own writer, for `benches/report.rs`
//! and `examples/journal.rs`.

use std::net::IpAddr;
use std::path::Path;

use chrono::{DateTime, Utc};
use kat_userspace::event::{Event, Origin, Reason, Settings, What};
use kat_userspace::journal::writer::{Limits, Writer};
use kat_userspace::journal::{files, Header, FORMAT};

fn at(i: u32) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_763_700_000_000 + i64::from(i) * 37).expect("ts")
}

/// Connections of four events: probe, answer, probe, death.
pub fn event(i: u32) -> Event {
    let conn = i / 4;
    let what = match i % 4 {
        0 | 2 => What::Probe {
            probe: 1,
            probes_max: 2,
            idle_s: 55.0,
        },
        1 => What::ProbeAnswered { probe: 1 },
        _ => What::Death {
            reason: [Reason::KeepaliveTimeout, Reason::PeerReset, Reason::Closed]
                [conn as usize % 3],
            errno: Some("ETIMEDOUT".into()),
            unanswered_probes: 2,
            found_by_probe: false,
            lifetime_s: Some(70.5),
            state: "ESTABLISHED".into(),
            kernel_reset_reason: None,
        },
    };
    Event {
        what,
        ts: at(i),
        saddr: IpAddr::from([198, 18, 1, 2]),
        sport: 30000 + (conn % 30000) as u16,
        daddr: IpAddr::from([198, 18, (conn >> 8) as u8, conn as u8]),
        dport: 6699,
        netns: 4026531840,
        uid: 0,
        pid: Some(1234),
        comm: Some("server".into()),
        keepalive: Some(Settings {
            idle_s: 55.0,
            idle_from: Origin::Socket,
            intvl_s: 6.0,
            intvl_from: Origin::Socket,
            probes: 2,
            probes_from: Origin::Sysctl,
            user_timeout_ms: None,
        }),
        sock_ino: 0,
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
    let header = Header {
        format: FORMAT,
        kat: "bench".into(),
        host: "bench".into(),
        kernel: "6.18".into(),
        lanes: "tracepoint lane".into(),
        ports: vec![],
        run_started: at(0),
        file_started: at(0),
    };
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
        w.flush().expect("flush");
    }
    drop(w);
    let files = files(dir).expect("files");
    Written {
        events: written,
        bytes: files.iter().map(|(_, _, size)| size).sum(),
        files: files.len(),
    }
}
