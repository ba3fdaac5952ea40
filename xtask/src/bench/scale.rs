//! Start-up and steady state at scale: `kat top` in front of many idle
//! established connections (most without keepalive, one in a hundred with
//! a long one), side by side with `ss -tonie` once a second; and kat's
//! idle memory.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::proc::{hwm_mib, rss_mib, CpuWindow, Kat, TempDir, Tmux};
use super::work::{field, number, Load};
use super::{median, Ctx};

/// One `ss -tonie` in namespace `ns` under /usr/bin/time: (wall, user+sys).
fn ss(ns: &str, tmp: &TempDir) -> Result<(f64, f64)> {
    let out = tmp.0.join("ss.time");
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%e %U %S", "-o"])
        .arg(&out)
        .args(["ss", "-tonie", "-N", ns])
        .stdout(Stdio::null())
        // ss -e complains about every socket without a cgroup2 mount.
        .stderr(Stdio::null())
        .status()
        .context("/usr/bin/time (Debian package time)")?;
    if !status.success() {
        bail!("ss -tonie -N {ns}: {status}");
    }
    let t: Vec<f64> = fs::read_to_string(&out)?
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    match t[..] {
        [wall, user, sys] => Ok((wall, user + sys)),
        _ => bail!("unexpected /usr/bin/time output"),
    }
}

/// From the first frame to the start of the steady-state window.
const SETTLE: Duration = Duration::from_secs(5);

pub fn run(ctx: &Ctx) -> Result<String> {
    let connections: u64 = ctx.pick(100_000, 20_000);
    let steady = ctx.pick(20, 5);
    let tmp = TempDir::new("scale")?;

    // Idle: no lab traffic yet (the shared host has its own).
    let idle = Kat::start(
        &ctx.kat,
        &["trace"],
        None,
        tmp.0.join("idle.stderr"),
        "kat: tracing",
    )?;
    std::thread::sleep(Duration::from_secs(3));
    let (idle_rss, idle_hwm) = (rss_mib(idle.pid())?, hwm_mib(idle.pid())?);
    idle.stop("INT")?;

    let load = Load::start(
        &ctx.kat_load,
        "storm",
        &[
            "--connections",
            &connections.to_string(),
            "--keepalive",
            "600,60,5",
            "--keepalive-every",
            "100",
            "--hold",
            "600",
        ],
    )?;
    let ready = load.expect("ready", Duration::from_secs(300))?;
    let setup = number(&ready, "setup_s")?;
    let processes = number(&ready, "processes")?;
    let (client_ns, server_ns) = (
        field(&ready, "client_ns")?.to_string(),
        field(&ready, "server_ns")?.to_string(),
    );

    let cmd = format!("{} top 2>{}/top.stderr", ctx.kat.display(), tmp.0.display());
    let started = Instant::now();
    let top = Tmux::start("kat-bench-scale", &cmd)?;
    let first_frame = loop {
        let screen = top.screen()?;
        // The header and at least one of the lab's connections.
        if screen.contains("kat top") && screen.lines().any(|l| l.contains("│198.18.")) {
            break started.elapsed().as_secs_f64();
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("kat top showed no lab connection within 60 s:\n{screen}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let pid = top.pid()?;
    // Steady state: after the start-up's one-off work (the first full
    // snapshot and owner census, the loader's memory handed back).
    std::thread::sleep(SETTLE);
    let cpu = CpuWindow::start(pid)?;
    std::thread::sleep(Duration::from_secs(steady));
    let top_cpu = cpu.percent()?;
    let top_rss = hwm_mib(pid)?;
    let conns_line = top
        .screen()?
        .lines()
        .find(|l| l.contains("conns "))
        .unwrap_or_default()
        .trim()
        .to_string();
    top.keys("q")?;
    drop(top);

    // What an operator would run instead: ss once a second, both ends.
    let (mut walls, mut cpu_sum) = (Vec::new(), 0.0);
    let t0 = Instant::now();
    for i in 0..steady {
        for ns in [&client_ns, &server_ns] {
            let (wall, used) = ss(ns, &tmp)?;
            walls.push(wall);
            cpu_sum += used;
        }
        let next = Duration::from_secs(i + 1);
        std::thread::sleep(next.saturating_sub(t0.elapsed()));
    }
    drop(load);
    let ss_cpu = 100.0 * cpu_sum / t0.elapsed().as_secs_f64();
    Ok(format!(
        "### Start-up and steady state at scale\n\n`kat-load storm --keepalive 600,60,5 --keepalive-every 100`: \
         {connections} idle established connections between two lab namespaces ({} sockets, {processes:.0} processes, \
         set up in {setup:.1} s), one in a hundred with keepalive. `kat top` in tmux 160×45; \
         `ss -tonie -N NS` for both namespaces once a second for {steady} s. Goals: first frame < 1 s, refresh < 5 % \
         of a core, RSS < 100 MiB; idle kat < 30 MiB.\n\n\
         | what | figure |\n|---|---|\n\
         | `kat top`: process start → first frame with a lab connection | {first_frame:.2} s |\n\
         | `kat top`: CPU over {steady} s of steady refresh, from {settle} s after the first frame | {top_cpu:.1} % of a core |\n\
         | `kat top`: max RSS | {top_rss:.1} MiB |\n\
         | `kat top`'s header line | `{conns_line}` |\n\
         | `ss -tonie` (both namespaces) once a second: CPU | {ss_cpu:.1} % of a core |\n\
         | `ss -tonie`: time per call (median, one namespace) | {:.2} s |\n\
         | idle `kat trace` (no lab traffic), 3 s after start: resident (VmRSS) | {idle_rss:.1} MiB |\n\
         | idle `kat trace`: start-up peak (VmHWM) | {idle_hwm:.1} MiB |\n",
        connections * 2,
        median(&walls),
        settle = SETTLE.as_secs()
    ))
}
