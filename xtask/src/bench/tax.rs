//! The workload tax: nginx's requests a second with a new connection per
//! request, without kat and with each way of running it, interleaved.

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::proc::{cpu_seconds, hwm_mib, CpuWindow, Kat, TempDir, Tmux};
use super::work::{requests_per_second, Nginx};
use super::{median, Ctx, Lost};

pub const VARIANTS: [(&str, &str); 5] = [
    (
        "floor",
        "empty programs on kat's hooks (the floor of any tracer here)",
    ),
    ("trace", "`kat trace > /dev/null`"),
    ("all", "`kat trace --all --json > /dev/null`"),
    ("record", "`kat record --dir TMP`"),
    ("top", "`kat top` in tmux 160×45"),
];

/// kat running one way or another.
pub enum Running {
    Floor(Kat),
    Kat(Kat),
    Top(Tmux, u32, TempDir),
    Record(Kat, TempDir),
}

impl Running {
    pub fn start(ctx: &Ctx, variant: &str, tmp: &TempDir) -> Result<Self> {
        let stderr = tmp.0.join(format!("kat-{variant}.stderr"));
        Ok(match variant {
            "floor" => Running::Floor(Kat::start(
                &ctx.floor,
                &[],
                None,
                stderr,
                "floor: attached",
            )?),
            "trace" => Running::Kat(Kat::start(
                &ctx.kat,
                &["trace"],
                None,
                stderr,
                "kat: tracing",
            )?),
            "all" => Running::Kat(Kat::start(
                &ctx.kat,
                &["trace", "--all", "--json"],
                None,
                stderr,
                "kat: tracing",
            )?),
            "record" => {
                let dir = TempDir::new("journal")?;
                let d = dir.0.display().to_string();
                let k = Kat::start(
                    &ctx.kat,
                    &["record", "--dir", &d],
                    None,
                    stderr,
                    "kat: recording to",
                )?;
                Running::Record(k, dir)
            }
            _ => {
                let dir = TempDir::new("top")?;
                let cmd = format!("{} top 2>{}/stderr", ctx.kat.display(), dir.0.display());
                let t = Tmux::start("kat-bench-top", &cmd)?;
                let deadline = Instant::now() + Duration::from_secs(30);
                while !t.screen()?.contains("kat top") {
                    anyhow::ensure!(Instant::now() < deadline, "kat top drew nothing in 30 s");
                    std::thread::sleep(Duration::from_millis(50));
                }
                let pid = t.pid()?;
                Running::Top(t, pid, dir)
            }
        })
    }

    pub fn pid(&self) -> u32 {
        match self {
            Running::Floor(k) | Running::Kat(k) | Running::Record(k, _) => k.pid(),
            Running::Top(_, pid, _) => *pid,
        }
    }

    /// Stops kat; what it lost.
    pub fn stop(self) -> Result<Lost> {
        match self {
            Running::Floor(k) => {
                k.stop("INT")?;
                Ok(Lost::default())
            }
            Running::Kat(k) => {
                let err = k.stop("INT")?;
                Lost::from_stderr(&err).context("kat trace printed no lost count")
            }
            Running::Record(k, dir) => {
                let err = k.stop("TERM")?;
                let mut journal = String::new();
                for e in fs::read_dir(&dir.0)?.flatten() {
                    journal.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
                }
                Lost::from_json_lines(&journal)
                    .or_else(|| Lost::from_stderr(&err))
                    .context("kat record reported no lost count")
            }
            Running::Top(t, pid, _dir) => {
                let screen = t.screen()?;
                let total = screen
                    .split("lost ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                t.keys("q")?;
                let deadline = Instant::now() + Duration::from_secs(10);
                while fs::metadata(format!("/proc/{pid}")).is_ok() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(Lost {
                    total,
                    ..Lost::default()
                })
            }
        }
    }
}

/// Run time and runs of the BPF programs a process holds, summed from
/// the fdinfo of its program descriptors (counted while
/// `kernel.bpf_stats_enabled` is 1). A program is counted once however
/// many descriptors refer to it (aya keeps more than one for some).
fn bpf_run_time(pid: u32) -> Result<(u64, u64)> {
    let mut programs = BTreeMap::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let info = fs::read_to_string(fd.path()).unwrap_or_default();
        if !info.contains("prog_type:") {
            continue;
        }
        let field = |key: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        // Kernels before 5.12 give no id: each descriptor counts then.
        let id = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .map_or_else(
                || format!("fd {:?}", fd.file_name()),
                |v| v.trim().to_string(),
            );
        programs.insert(id, (field("run_time_ns:"), field("run_cnt:")));
    }
    Ok(programs
        .values()
        .fold((0, 0), |(t, c), (rt, rc)| (t + rt, c + rc)))
}

/// kat's kernel cost during one more flood, with BPF run-time statistics
/// on.
struct KernelCost {
    runs_per_request: f64,
    ns_per_request: f64,
    /// The programs' run time over the flood, as a share of one core. The
    /// flood's bottleneck is wrk's one thread (a core busy all the time),
    /// and on loopback the programs run in the context of whoever sends,
    /// wrk as often as nginx: a share of one core, not of the machine, is
    /// what the requests a second lose where the programs land on wrk.
    programs: f64,
    /// kat's own process, share of one core.
    process: f64,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

fn kernel_cost(
    ctx: &Ctx,
    nginx: &Nginx,
    variant: &str,
    seconds: u64,
    tmp: &TempDir,
) -> Result<KernelCost> {
    let before = fs::read_to_string(BPF_STATS).context("reading kernel.bpf_stats_enabled")?;
    fs::write(BPF_STATS, "1").context("turning kernel.bpf_stats_enabled on")?;
    let measured = (|| {
        let kat = Running::start(ctx, variant, tmp)?;
        let (time0, runs0) = bpf_run_time(kat.pid())?;
        let cpu0 = cpu_seconds(kat.pid())?;
        let rps = requests_per_second(nginx.wrk(seconds)?)?;
        let (time1, runs1) = bpf_run_time(kat.pid())?;
        let cpu = cpu_seconds(kat.pid())? - cpu0;
        kat.stop()?;
        let requests = rps * seconds as f64;
        let bpf_s = (time1 - time0) as f64 / 1e9;
        Ok(KernelCost {
            runs_per_request: (runs1 - runs0) as f64 / requests,
            ns_per_request: (time1 - time0) as f64 / requests,
            programs: bpf_s / seconds as f64,
            process: cpu / seconds as f64,
        })
    })();
    fs::write(BPF_STATS, before.trim()).context("restoring kernel.bpf_stats_enabled")?;
    measured
}

struct Sample {
    variant: &'static str,
    rps: f64,
    ratio: f64,
    cpu: f64,
    rss: f64,
    lost: Lost,
}

pub fn run(ctx: &Ctx) -> Result<String> {
    // wrk's rate drifts by ±10 % from one run to the next here: five
    // rounds give a median that can tell a few per cent.
    let rounds = ctx.pick(5, 1);
    let seconds = ctx.pick(10, 3);
    let nginx = Nginx::start()?;
    let tmp = TempDir::new("tax")?;
    // Warm nginx and the page cache up once.
    requests_per_second(nginx.wrk(1)?)?;
    let mut without = vec![requests_per_second(nginx.wrk(seconds)?)?];
    let mut runs = Vec::new();
    for _ in 0..rounds {
        for (variant, _) in VARIANTS {
            let kat = Running::start(ctx, variant, &tmp)?;
            let cpu = CpuWindow::start(kat.pid())?;
            let rps = requests_per_second(nginx.wrk(seconds)?)?;
            let cpu = cpu.percent()?;
            let rss = hwm_mib(kat.pid())?;
            let lost = kat.stop()?;
            let before = without[without.len() - 1];
            let after = requests_per_second(nginx.wrk(seconds)?)?;
            without.push(after);
            runs.push(Sample {
                variant,
                rps,
                ratio: rps / ((before + after) / 2.0),
                cpu,
                rss,
                lost,
            });
        }
    }
    let mut md = format!(
        "### Workload tax\n\nnginx 1.22 (one worker, `keepalive_timeout 0`, a 100-byte file) on 127.0.0.1, \
         `wrk -t1 -c50 -d{seconds}s -H 'Connection: close'` (a new TCP connection per request); \
         {rounds} round(s) of: without, floor, without, trace, without, all, without, record, without, top, …, without. \
         The ratio is to the mean of the two neighbouring runs without kat; CPU is kat's utime+stime \
         over the wrk window; RSS is VmHWM. Goals: ≤ 3 % fewer req/s (trace, top, record), \
         kat < 10 % of a core, 0 precious records lost. The floor is empty programs on the \
         tracepoints kat's lane runs for every connection and timer (`examples/floor.rs`): \
         what any tracer on these hooks costs before it does anything.\n\n\
         | kat | req/s (median) | ratio to without (median) | kat CPU, % of a core | kat max RSS, MiB | records lost (last round) |\n\
         |---|---|---|---|---|---|\n\
         | none | {:.0} | 1 | – | – | – |\n",
        median(&without)
    );
    for (variant, name) in VARIANTS {
        let mine: Vec<&Sample> = runs.iter().filter(|s| s.variant == variant).collect();
        let m = |f: fn(&Sample) -> f64| median(&mine.iter().map(|s| f(s)).collect::<Vec<_>>());
        let lost = mine.last().map_or_else(String::new, |s| s.lost.text());
        md.push_str(&format!(
            "| {name} | {:.0} | {:.3} | {:.1} | {:.1} | {lost} |\n",
            m(|s| s.rps),
            m(|s| s.ratio),
            m(|s| s.cpu),
            m(|s| s.rss),
        ));
    }
    let all: Vec<String> = without.iter().map(|r| format!("{r:.0}")).collect();
    md.push_str(&format!(
        "\nWithout kat, in order: {} req/s.\n",
        all.join(", ")
    ));
    // Steadier than the ratios: three rounds tell it.
    let cost_rounds = ctx.pick(3, 1);
    md.push_str(&format!(
        "\nThe programs' cost, measured: {cost_rounds} more round(s) of one {seconds}-s flood per kat with \
         `kernel.bpf_stats_enabled=1` (the programs' `run_time_ns` and `run_cnt` from \
         the process's fdinfo; the statistics add two clock reads a run). The flood's \
         bottleneck is wrk's one thread, a core busy all the time, and on loopback the \
         programs run in the context of whoever sends, wrk as often as nginx: so the \
         programs' share of one core, not of the machine, is the scale of the requests a \
         second they take away. kat's process runs beside the load (for `kat top`, not \
         tmux's redrawing). Medians, and each round's figure in brackets.\n\n\
         | kat | BPF runs per request | BPF ns per request | programs, % of one core (each round) | kat's process, % of one core |\n\
         |---|---|---|---|---|\n"
    ));
    // One list per kat, in VARIANTS' order.
    let mut costs: Vec<Vec<KernelCost>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for _ in 0..cost_rounds {
        for ((variant, _), mine) in VARIANTS.iter().zip(&mut costs) {
            mine.push(kernel_cost(ctx, &nginx, variant, seconds, &tmp)?);
        }
    }
    for ((_, name), mine) in VARIANTS.iter().zip(&costs) {
        let m = |f: fn(&KernelCost) -> f64| median(&mine.iter().map(f).collect::<Vec<_>>());
        let shares: Vec<String> = mine
            .iter()
            .map(|k| format!("{:.1}", 100.0 * k.programs))
            .collect();
        md.push_str(&format!(
            "| {name} | {:.1} | {:.0} | {:.1} % ({} %) | {:.1} % |\n",
            m(|k| k.runs_per_request),
            m(|k| k.ns_per_request),
            100.0 * m(|k| k.programs),
            shares.join(", "),
            100.0 * m(|k| k.process),
        ));
    }
    Ok(md)
}
