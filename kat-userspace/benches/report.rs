//! `kat report` over a large journal: reading and parsing the files, and
//! summarising. `cargo bench --bench report` (no root, no kernel).

use std::hint::black_box;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use kat_userspace::event::{Event, From, Reason, Settings, What};
use kat_userspace::journal::reader::read_dir;
use kat_userspace::journal::writer::{Limits, Writer};
use kat_userspace::journal::{Header, FORMAT};
use kat_userspace::report::summary::{summarize, Filter};

const EVENTS: u32 = 100_000;

fn at(i: u32) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_763_700_000_000 + i64::from(i) * 37).expect("ts")
}

/// Connections of four events: probe, answer, probe, death.
fn event(i: u32) -> Event {
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
            idle_from: From::Socket,
            intvl_s: 6.0,
            intvl_from: From::Socket,
            probes: 2,
            probes_from: From::Sysctl,
            user_timeout_ms: None,
        }),
        sock_ino: 0,
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
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
    let limits = Limits::new(1 << 30, Some(8 << 20)).expect("limits");
    let mut w = Writer::open(dir.path(), limits, header).expect("writer");
    for i in 0..EVENTS {
        w.push(&event(i)).expect("push");
    }
    w.flush().expect("flush");
    drop(w);
    let journal = read_dir(dir.path()).expect("read");
    let bytes: u64 = journal
        .files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    eprintln!(
        "journal: {EVENTS} events, {bytes} bytes in {} files",
        journal.files.len()
    );

    let mut g = c.benchmark_group("report");
    g.sample_size(10);
    g.bench_function("read 100k events", |b| {
        b.iter(|| black_box(read_dir(dir.path()).expect("read")))
    });
    g.bench_function("summarize 100k events", |b| {
        b.iter(|| black_box(summarize(&journal.entries, &Filter::default(), 10)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
