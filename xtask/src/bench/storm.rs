//! Keepalive storm: many connections probing every second between two lab
//! namespaces (kat-load storm), a tenth of them silenced after a warm-up;
//! what `kat trace --json` sees of it and what that costs.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;

use super::proc::{hwm_mib, CpuWindow, Kat, TempDir};
use super::work::{field, number, Load};
use super::{Ctx, Lost};

pub fn run(ctx: &Ctx) -> Result<String> {
    let connections: u64 = ctx.pick(10_000, 2_000);
    let silent = connections / 10;
    let window = ctx.pick(15.0, 8.0);
    let tmp = TempDir::new("storm")?;
    // The healthy ones are `connections - silent`, so `connections` in all.
    let healthy = connections - silent;
    let mut load = Load::start(
        &ctx.kat_load,
        "storm",
        &[
            "--connections",
            &healthy.to_string(),
            "--silent",
            &silent.to_string(),
            "--keepalive",
            "1,1,3",
            "--hold",
            "300",
        ],
    )?;
    let ready = load.expect("ready", Duration::from_secs(180))?;
    let netns: u64 = field(&ready, "client_netns")?.parse()?;
    let silent_ports = number(&ready, "silent_port")? as u64;
    let setup = number(&ready, "setup_s")?;
    // Warm-up: every connection has probed and been answered once.
    std::thread::sleep(Duration::from_secs(2));
    let events = tmp.0.join("events.jsonl");
    let kat = Kat::start(
        &ctx.kat,
        &["trace", "--json"],
        Some(&events),
        tmp.0.join("stderr"),
        "kat: tracing",
    )?;
    let cpu = CpuWindow::start(kat.pid())?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    load.send("silence")?;
    load.expect("silenced", Duration::from_secs(10))?;
    let rest = Duration::from_secs_f64(window).saturating_sub(t0.elapsed());
    std::thread::sleep(rest);
    let cpu = cpu.percent()?;
    let rss = hwm_mib(kat.pid())?;
    // The window, not the time kat then takes to stop.
    let seconds = t0.elapsed().as_secs_f64();
    let err = kat.stop("INT")?;
    drop(load);

    let text = fs::read_to_string(&events)?;
    let (mut probes_healthy, mut probes_silent, mut deaths, mut other_deaths) =
        (0u64, 0u64, 0u64, 0u64);
    for l in text.lines() {
        if !(l.contains(r#""type":"probe""#) || l.contains(r#""type":"death""#)) {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        if v["netns"] != netns {
            continue;
        }
        let is_silent = v["dport"]
            .as_u64()
            .is_some_and(|p| (silent_ports..silent_ports + 100).contains(&p));
        match (v["type"].as_str(), is_silent) {
            (Some("probe"), false) => probes_healthy += 1,
            (Some("probe"), true) => probes_silent += 1,
            (Some("death"), true) if v["reason"] == "keepalive_timeout" => deaths += 1,
            (Some("death"), _) => other_deaths += 1,
            _ => {}
        }
    }
    let lost = Lost::from_json_lines(&text)
        .or_else(|| Lost::from_stderr(&err))
        .unwrap_or_default();
    let expected = healthy as f64 * seconds;
    Ok(format!(
        "### Keepalive storm\n\n`kat-load storm`: {connections} connections between two lab namespaces \
         (set up in {setup:.1} s), keepalive idle 1 s, interval 1 s, count 3; {silent} of them silenced by nftables \
         3 s after kat started (2 s warm-up before); `kat trace --json` for {seconds:.1} s. \
         Goal: kat < 15 % of a core, every probe and death seen, 0 lost.\n\n\
         | what | seen | expected |\n|---|---|---|\n\
         | probes of the healthy connections | {probes_healthy} ({:.0} %) | ≈ {expected:.0} ({healthy} × {seconds:.1} s) |\n\
         | probes of the silenced ones | {probes_silent} | ≈ {} (3 answered + 3 unanswered each) |\n\
         | keepalive_timeout deaths of the silenced | {deaths} | {silent} |\n\
         | other deaths | {other_deaths} | 0 |\n\
         | records lost | {} | 0 |\n\
         | kat CPU, % of a core | {cpu:.1} | < 15 |\n\
         | kat max RSS, MiB | {rss:.1} | |\n",
        100.0 * probes_healthy as f64 / expected.max(1.0),
        silent * 6,
        lost.text()
    ))
}
