//! The workload tax: nginx's requests a second with a new connection per
//! request, without kat and with each way of running it, interleaved.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::proc::{hwm_mib, CpuWindow, Kat, TempDir, Tmux};
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
    Ok(md)
}
