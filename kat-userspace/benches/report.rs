//! `kat report` over a large journal: reading and parsing the files, and
//! the streaming summary on top. `cargo bench --bench report` (no root, no
//! kernel). For a full 256 MiB journal, see `examples/journal.rs`.

mod synthetic;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use kat_userspace::journal::reader::each_entry;
use kat_userspace::report::summary::{Deaths, Filter, Summary};

const EVENTS: u32 = 100_000;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    // Files of 8 MiB, as a 64 MiB cap would make them.
    let w = synthetic::write(dir.path(), EVENTS, 64 << 20);
    assert_eq!(w.events, EVENTS);
    eprintln!(
        "journal: {} events, {} bytes in {} files",
        w.events, w.bytes, w.files
    );

    let mut g = c.benchmark_group("report");
    g.sample_size(10);
    g.bench_function("read 100k events", |b| {
        b.iter(|| {
            let mut n = 0u32;
            let read = each_entry(dir.path(), |e| {
                black_box(e);
                n += 1;
            })
            .expect("read");
            black_box((n, read))
        })
    });
    g.bench_function("read and summarize 100k events", |b| {
        b.iter(|| {
            let mut s = Summary::builder(Filter::default(), 10, Deaths::Latest(10));
            let read = each_entry(dir.path(), |e| s.add(e)).expect("read");
            black_box((s.finish(), read))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
