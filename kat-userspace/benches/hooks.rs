//! What kat's hot hooks cost: the timer tracepoints fire for every timer
//! on the host. Loads kat's programs and an empty program on the same
//! tracepoint (from an eBPF object of its own, which kat does not ship),
//! turns on the kernel's BPF run-time statistics, creates timer load and
//! prints nanoseconds per run. Needs root.
//!
//! KAT_BENCH_SECONDS (default 10) sets the measuring time.

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use aya::programs::BtfTracePoint;
use aya::sys::{enable_stats, Stats};
use kat_userspace::loader;

static BASELINE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kat-baseline"));
const BASELINE: &str = "timer_expire_baseline";
const KAT_PROGRAMS: [&str; 2] = ["timer_expire_entry", "timer_expire_exit"];
const CONNECTIONS: usize = 200;

/// Run time and run count of each program, the baseline's first.
fn stats(baseline: &aya::Ebpf, kat: &aya::Ebpf) -> Result<Vec<(u64, u64)>> {
    std::iter::once((baseline, BASELINE))
        .chain(KAT_PROGRAMS.map(|name| (kat, name)))
        .map(|(ebpf, name)| {
            let prog: &BtfTracePoint = ebpf
                .program(name)
                .with_context(|| format!("no program {name}"))?
                .try_into()?;
            let info = prog.info()?;
            Ok((info.run_time().as_nanos() as u64, info.run_count()))
        })
        .collect()
}

/// Small writes the peer never reads or answers: its delayed-ACK timers
/// (plain timer_list timers, not kat's) expire over and over.
fn timer_load(for_how_long: Duration) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(TcpStream::connect(addr)?);
        servers.push(listener.accept()?.0);
    }
    let end = Instant::now() + for_how_long;
    while Instant::now() < end {
        for c in &mut clients {
            c.write_all(b"x")?;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the hook benchmark loads eBPF programs: run it as root");
    }
    let seconds: u64 = std::env::var("KAT_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let loaded = loader::load(&loader::Options {
        ports: &[],
        lane: Some(loader::Lane::Tracepoint),
        ring_bytes: loader::RING_BYTES,
        orderly: loader::Orderly::Counted,
    })?;
    let btf = aya::Btf::from_sys_fs()?;
    let mut baseline =
        aya::Ebpf::load(BASELINE_OBJECT).context("cannot load the baseline object")?;
    let program: &mut BtfTracePoint = baseline
        .program_mut(BASELINE)
        .context("no baseline program")?
        .try_into()?;
    program.load("timer_expire_entry", &btf)?;
    program.attach()?;
    let _stats = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?;

    let before = stats(&baseline, &loaded.ebpf)?;
    timer_load(Duration::from_secs(seconds))?;
    let after = stats(&baseline, &loaded.ebpf)?;

    println!("{:<24} {:>10} {:>10}", "program", "runs", "ns/run");
    let names = std::iter::once(BASELINE).chain(KAT_PROGRAMS);
    let mut per_run = Vec::new();
    for (name, (b, a)) in names.zip(before.iter().zip(&after)) {
        let runs = a.1 - b.1;
        let ns = if runs == 0 {
            0.0
        } else {
            (a.0 - b.0) as f64 / runs as f64
        };
        per_run.push(ns);
        println!("{name:<24} {runs:>10} {ns:>10.1}");
    }
    println!(
        "kat's timer hooks cost {:.1} ns (entry) and {:.1} ns (exit) per timer over an empty program",
        per_run[1] - per_run[0],
        per_run[2] - per_run[0]
    );
    Ok(())
}
