//! The churn soak: `kat trace`, `kat record` and `kat top` side by side
//! under a steady churn of keepalive connections (each probed and
//! answered, then closed, every third with a RST: a death), their
//! resident memory sampled. Memory must be flat after the warm-up: every
//! per-connection structure is pruned when its connection goes.
//!
//! One procedure for the test (`kat-userspace/tests/soak.rs`, minutes)
//! and `cargo xtask bench --only soak` (an hour).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::load::{self, ChurnSpec};
use crate::netns::{Lab, SERVER_ADDR};
use crate::tmux::Terminal;

const PORT: u16 = 7600;

#[derive(Debug, Clone)]
pub struct SoakSpec {
    pub kat: PathBuf,
    pub duration: Duration,
    pub every: Duration,
    pub per_second: u32,
}

/// One view's resident memory over the soak: (seconds, MiB).
#[derive(Debug, Clone)]
pub struct Series {
    pub view: &'static str,
    pub rss_mib: Vec<(f64, f64)>,
}

/// The median; 0 for none (also the bench's, xtask).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Series {
    /// The median of the samples in [from, to) of the run (fractions).
    fn window(&self, from: f64, to: f64) -> f64 {
        let n = self.rss_mib.len() as f64;
        let window: Vec<f64> = self
            .rss_mib
            .iter()
            .enumerate()
            .filter(|(i, _)| (from * n..to * n).contains(&(*i as f64)))
            .map(|(_, (_, mib))| *mib)
            .collect();
        median(&window)
    }

    /// After the warm-up: the second quarter of the run.
    pub fn after_warm_up(&self) -> f64 {
        self.window(0.25, 0.5)
    }

    /// The last quarter.
    pub fn at_end(&self) -> f64 {
        self.window(0.75, 1.0)
    }

    pub fn growth_mib(&self) -> f64 {
        self.at_end() - self.after_warm_up()
    }

    /// Flat: grown by no more than 5 % or 2 MiB (the allocator's slack),
    /// whichever is more.
    pub fn flat(&self) -> bool {
        self.growth_mib() <= (0.05 * self.after_warm_up()).max(2.0)
    }

    pub fn json(&self) -> Value {
        json!({
            "view": self.view,
            "after_warm_up_mib": self.after_warm_up(),
            "at_end_mib": self.at_end(),
            "growth_mib": self.growth_mib(),
            "max_mib": self.rss_mib.iter().map(|(_, m)| *m).fold(0.0, f64::max),
            "flat": self.flat(),
            "samples": self.rss_mib,
        })
    }
}

#[derive(Debug)]
pub struct Soak {
    pub series: Vec<Series>,
    /// Connections the churn made.
    pub made: u64,
    pub seconds: f64,
    /// Each view's exit status and the tail of its stderr.
    pub exits: Vec<(&'static str, String)>,
}

impl Soak {
    pub fn json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "made": self.made,
            "series": self.series.iter().map(Series::json).collect::<Vec<_>>(),
            "exits": self.exits.iter().map(|(v, e)| json!({"view": v, "exit": e})).collect::<Vec<_>>(),
        })
    }
}

fn rss_mib(pid: u32) -> Result<f64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .ok_or_else(|| format!("no VmRSS for {pid}"))
}

fn spawn(kat: &Path, args: &[&str], stderr: &Path) -> Result<Child, String> {
    let err = std::fs::File::create(stderr).map_err(|e| format!("{}: {e}", stderr.display()))?;
    Command::new(kat)
        .args(args)
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", kat.display()))
}

/// Stops a view with SIGINT; its exit status and the end of its stderr.
fn stop(mut child: Child, stderr: &Path) -> String {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
    let err = std::fs::read_to_string(stderr).unwrap_or_default();
    let tail: Vec<&str> = err.lines().rev().take(2).collect();
    format!("{status}: {}", tail.join(" / "))
}

/// Runs the soak. `work` holds the journal and the views' stderr.
pub fn run(spec: &SoakSpec, work: &Path) -> Result<Soak, String> {
    let lab = Lab::new();
    let port = PORT.to_string();
    let kat = &spec.kat;
    let journal = work.join("journal");
    let journal_arg = journal.to_string_lossy().into_owned();
    let trace = spawn(
        kat,
        &["trace", "--json", "--port", &port],
        &work.join("trace.err"),
    )?;
    let record = spawn(
        kat,
        &[
            "record",
            "--dir",
            &journal_arg,
            "--max-size",
            "64MiB",
            "--port",
            &port,
        ],
        &work.join("record.err"),
    )?;
    let top_err = work.join("top.err");
    let top = Terminal::start(
        "kat-soak",
        &format!(
            "{} top --port {port} 2>{}",
            kat.display(),
            top_err.display()
        ),
        160,
        45,
    );
    let started = Instant::now();
    let top_pid = loop {
        if let Some(pid) = top.pid() {
            break pid;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("kat top did not start: {}", top.screen()));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Attached (or not) before the churn starts.
    std::thread::sleep(Duration::from_secs(5));

    let churn = load::churn(ChurnSpec {
        client_ns: Some(lab.client.clone()),
        server_ns: Some(lab.server.clone()),
        server: SocketAddr::new(SERVER_ADDR.parse().map_err(|e| format!("{e}"))?, PORT),
        per_second: spec.per_second,
        max: u64::from(spec.per_second) * (spec.duration.as_secs() + 10),
        max_time: spec.duration + Duration::from_secs(10),
        // Idle 1 s: one probe, answered, before the close at 1.5 s.
        keepalive: Some((1, 1, 3)),
        hold: Duration::from_millis(1500),
        abort_every: 3,
    })
    .map_err(|e| format!("churn: {e}"))?;

    let views = [
        ("trace", trace.id()),
        ("record", record.id()),
        ("top", top_pid),
    ];
    let mut series: Vec<Series> = views
        .iter()
        .map(|(view, _)| Series {
            view,
            rss_mib: Vec::new(),
        })
        .collect();
    let t0 = Instant::now();
    let mut sampled = Ok(());
    while t0.elapsed() < spec.duration && sampled.is_ok() {
        std::thread::sleep(spec.every);
        let at = t0.elapsed().as_secs_f64();
        for (s, (view, pid)) in series.iter_mut().zip(views) {
            match rss_mib(pid) {
                Ok(mib) => s.rss_mib.push((at, mib)),
                Err(e) => sampled = Err(format!("kat {view} ended during the soak: {e}")),
            }
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let made = churn.stop();
    top.keys("q");
    let top_exit = top.exit_code(Duration::from_secs(20));
    let exits = vec![
        ("trace", stop(trace, &work.join("trace.err"))),
        ("record", stop(record, &work.join("record.err"))),
        (
            "top",
            format!(
                "exit {top_exit}: {}",
                std::fs::read_to_string(&top_err).unwrap_or_default().trim()
            ),
        ),
    ];
    sampled?;
    Ok(Soak {
        series,
        made,
        seconds,
        exits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(mib: &[f64]) -> Series {
        Series {
            view: "trace",
            rss_mib: mib
                .iter()
                .enumerate()
                .map(|(i, m)| (i as f64, *m))
                .collect(),
        }
    }

    #[test]
    fn flat_is_judged_after_the_warm_up() {
        // Warm-up growth does not count; a plateau is flat.
        let s = series(&[5.0, 20.0, 30.0, 30.0, 30.5, 30.0, 31.0, 30.5]);
        assert_eq!(s.after_warm_up(), 30.0);
        assert_eq!(s.at_end(), 30.75);
        assert!(s.flat());
        // A steady climb is not.
        let climb: Vec<f64> = (0..40).map(|i| 20.0 + f64::from(i)).collect();
        assert!(!series(&climb).flat(), "{}", series(&climb).growth_mib());
    }
}
