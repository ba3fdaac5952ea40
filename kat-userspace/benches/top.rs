//! The dashboard at scale: building and rendering one frame with 100 000
//! tracked connections, and the tracker's memory per connection.
//! `cargo bench --bench top` (no root, no kernel).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::IpAddr;
use std::sync::atomic::{AtomicIsize, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use kat_common::{flag, kind, tcp_state, Record, AF_INET};
use kat_userspace::event::{ConnKey, Event, Origin, Settings};
use kat_userspace::testkit::{at, conn, event, live, probe, settings};
use kat_userspace::top::model::{Model, Msg};
use kat_userspace::top::view::view;
use kat_userspace::tracker::{Setup, Tracker};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

/// Counts live heap bytes, to weigh the tracker.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE_BYTES.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const N: u32 = 100_000;

fn addr(i: u32) -> IpAddr {
    IpAddr::from([198, 18, (i >> 8) as u8, i as u8])
}

fn model() -> Model {
    let t = at(0.0);
    let mut m = Model::new("bench".into(), "6.18".into(), "tracepoint lane".into(), t);
    let keys: Vec<ConnKey> = (0..N)
        .map(|i| conn(addr(i), 30000 + (i % 30000) as u16, addr(i + 7), 6699))
        .collect();
    m.update(Msg::Snapshot(
        keys.iter()
            .enumerate()
            .map(|(i, &key)| {
                let (probes_out, next_run_s) = ((i % 4) as u8, (i % 7200) as f64);
                live(key, 1000 + i as u32 % 50, "svc", probes_out, next_run_s)
            })
            .collect(),
    ));
    // The kernel's defaults, from the sysctls.
    let defaults = Settings {
        idle_from: Origin::Sysctl,
        intvl_from: Origin::Sysctl,
        ..settings(7200.0, 75.0, 9)
    };
    for (i, key) in keys.iter().enumerate().step_by(10) {
        m.update(Msg::Event(Box::new(Event {
            pid: Some(i as u32),
            keepalive: Some(defaults),
            ..event(*key, t, probe(1, 3, 7200.0))
        })));
    }
    m
}

/// Heap bytes the tracker holds per connection, after an ESTABLISHED and
/// a keepalive timer run for each.
fn tracker_bytes_per_connection() -> f64 {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut tracker = Tracker::new(Setup {
        hz: 250,
        reset_reasons: None,
        realtime_offset_ns: 0,
    });
    for i in 0..N {
        let mut rec = Record {
            sk: 0xffff_8880_0000_0000 + u64::from(i) * 4096,
            family: AF_INET,
            sport: 30000 + (i % 30000) as u16,
            dport: 6699,
            kind: kind::STATE_CHANGE,
            state: tcp_state::ESTABLISHED,
            flags: flag::KEEPOPEN,
            ..Default::default()
        };
        rec.saddr[..4].copy_from_slice(&[198, 18, (i >> 8) as u8, i as u8]);
        tracker.update(kat_userspace::tracker::Msg::Record(rec));
        rec.kind = kind::TIMER_RUN;
        tracker.update(kat_userspace::tracker::Msg::Record(rec));
    }
    let bytes = LIVE_BYTES.load(Ordering::Relaxed) - before;
    assert_eq!(tracker.tracked(), N as usize);
    bytes as f64 / f64::from(N)
}

fn bench(c: &mut Criterion) {
    println!(
        "tracker memory: {:.0} bytes per connection (heap, {N} connections)",
        tracker_bytes_per_connection()
    );
    let m = model();
    let mut terminal = Terminal::new(TestBackend::new(160, 45)).expect("terminal");
    c.bench_function("top frame, 100k connections, 160x45", |b| {
        b.iter(|| {
            terminal.draw(|f| view(f, &m)).expect("draw");
        })
    });
    c.bench_function("top rows (filter + sort), 100k connections", |b| {
        b.iter(|| m.rows().len())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
