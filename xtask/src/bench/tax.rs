//! The workload tax: nginx's requests a second with a new connection per
//! request, without kat and with each way of running it, interleaved.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::proc::{cpu_seconds, hwm_mib, CpuWindow, Kat, TempDir, Tmux};
use super::work::{requests_per_second, Nginx};
use super::{median, Ctx, Lost};

pub const VARIANTS: [(&str, &str); 4] = [
    ("trace", "`kat trace > /dev/null`"),
    ("all", "`kat trace --all --json > /dev/null`"),
    ("record", "`kat record --dir TMP`"),
    ("top", "`kat top` in tmux 160×45"),
];

/// kat running one way or another.
pub enum Running {
    Kat(Kat),
    Top(Tmux, u32, TempDir),
    Record(Kat, TempDir),
}

impl Running {
    pub fn start(ctx: &Ctx, variant: &str, tmp: &TempDir) -> Result<Self> {
        let stderr = tmp.0.join(format!("kat-{variant}.stderr"));
        Ok(match variant {
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
            Running::Kat(k) | Running::Record(k, _) => k.pid(),
            Running::Top(_, pid, _) => *pid,
        }
    }

    /// Stops kat; what it lost.
    pub fn stop(self) -> Result<Lost> {
        match self {
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
/// `kernel.bpf_stats_enabled` is 1).
fn bpf_run_time(pid: u32) -> Result<(u64, u64)> {
    let mut total = (0, 0);
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
        total.0 += field("run_time_ns:");
        total.1 += field("run_cnt:");
    }
    Ok(total)
}

/// kat's kernel cost during one more flood, with BPF run-time statistics
/// on: the ratios above cannot tell 3 % on a shared machine, this can.
struct KernelCost {
    runs_per_request: f64,
    ns_per_request: f64,
    /// kat's programs and process together, as a share of the machine's
    /// CPUs over the flood: what a CPU-bound host loses to kat.
    share: f64,
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
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let bpf_s = (time1 - time0) as f64 / 1e9;
        Ok(KernelCost {
            runs_per_request: (runs1 - runs0) as f64 / requests,
            ns_per_request: (time1 - time0) as f64 / requests,
            share: (bpf_s + cpu) / (cpus * seconds as f64),
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
         {rounds} round(s) of: without, trace, without, all, without, record, without, top, …, without. \
         The ratio is to the mean of the two neighbouring runs without kat; CPU is kat's utime+stime \
         over the wrk window; RSS is VmHWM. Goals: ≤ 3 % fewer req/s (trace, top, record), \
         kat < 10 % of a core, 0 precious records lost.\n\n\
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
    md.push_str(&format!(
        "\nkat's kernel cost, measured: {rounds} more round(s) of one {seconds}-s flood per kat with \
         `kernel.bpf_stats_enabled=1` (the programs' `run_time_ns` and `run_cnt` from \
         kat's fdinfo; the statistics add two clock reads a run, so these are upper \
         bounds). The share is kat's programs and process together over the machine's \
         CPUs for the flood: on this CPU-bound workload, about the requests a second \
         kat takes away, without the noise of the ratios. Every kat runs the same \
         programs; the process is kat's own (for `kat top`, not tmux's redrawing). Medians, \
         and each round's share in brackets.\n\n\
         | kat | BPF runs per request (median) | BPF ns per request (median) | share of the machine (median, each round) |\n\
         |---|---|---|---|\n"
    ));
    // One list per kat, in VARIANTS' order.
    let mut costs: Vec<Vec<KernelCost>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for ((variant, _), mine) in VARIANTS.iter().zip(&mut costs) {
            mine.push(kernel_cost(ctx, &nginx, variant, seconds, &tmp)?);
        }
    }
    for ((_, name), mine) in VARIANTS.iter().zip(&costs) {
        let m = |f: fn(&KernelCost) -> f64| median(&mine.iter().map(f).collect::<Vec<_>>());
        let shares: Vec<String> = mine
            .iter()
            .map(|k| format!("{:.1}", 100.0 * k.share))
            .collect();
        md.push_str(&format!(
            "| {name} | {:.1} | {:.0} | {:.1} % ({} %) |\n",
            m(|k| k.runs_per_request),
            m(|k| k.ns_per_request),
            100.0 * m(|k| k.share),
            shares.join(", ")
        ));
    }
    Ok(md)
}
