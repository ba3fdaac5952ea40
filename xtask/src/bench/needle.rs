//! Needle in the flood: during the nginx flood, a keepalive_timeout death
//! and a peer_reset found by a probe (kat-load needle, the scenario
//! suite's own code) must be reported by `kat trace --json` and found by
//! `kat report` in what `kat record` wrote.

use std::fs;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::proc::{Kat, TempDir};
use super::work::{requests_per_second, Load, Nginx};
use super::{Ctx, Lost};

/// The deaths kat-load announces.
fn expectations(load: &Load) -> Result<Vec<Value>> {
    let mut expected = Vec::new();
    loop {
        match load.line(Duration::from_secs(30))? {
            Some(l) if l == "done" => return Ok(expected),
            Some(l) => expected
                .push(serde_json::from_str(&l).with_context(|| format!("kat-load said {l:?}"))?),
            None => bail!("kat-load needle ended before `done`"),
        }
    }
}

fn is(death: &Value, want: &Value) -> bool {
    death["reason"] == want["expect"]
        && death["netns"] == want["netns"]
        && death["dport"] == want["dport"]
}

fn found(deaths: &[Value], expected: &[Value]) -> (usize, Vec<String>) {
    let mut missing = Vec::new();
    let n = expected
        .iter()
        .filter(|w| {
            let hit = deaths.iter().any(|d| is(d, w));
            if !hit {
                missing.push(format!("{} (port {})", w["expect"], w["dport"]));
            }
            hit
        })
        .count();
    (n, missing)
}

pub fn run(ctx: &Ctx) -> Result<String> {
    let nginx = Nginx::start()?;
    let tmp = TempDir::new("needle")?;
    let mut md = String::from(
        "### Needle in the flood\n\nDuring the nginx flood above (`wrk … -d15s`), in lab namespaces of \
         `kat-load needle`: a keepalive_timeout death (keepalive 1 s/1 s/2, server's packets dropped by \
         nftables) and a peer_reset found by a probe (the server namespace destroyed and recreated). \
         Found by `kat trace --json`, and by `kat report --dir D --json` after `kat record --dir D`.\n\n\
         | kat | found / expected | missing | records lost | flood req/s |\n|---|---|---|---|---|\n",
    );
    for mode in ["trace", "record"] {
        let journal = TempDir::new("needle-journal")?;
        let events = tmp.0.join("events.jsonl");
        let stderr = tmp.0.join(format!("{mode}.stderr"));
        let d = journal.0.display().to_string();
        let kat = if mode == "trace" {
            Kat::start(
                &ctx.kat,
                &["trace", "--json"],
                Some(&events),
                stderr,
                "kat: tracing",
            )?
        } else {
            Kat::start(
                &ctx.kat,
                &["record", "--dir", &d],
                None,
                stderr,
                "kat: recording to",
            )?
        };
        let wrk = nginx.wrk(15)?;
        let load = Load::start(&ctx.kat_load, "needle", &["--port", "7500"])?;
        let expected = expectations(&load)?;
        load.wait(Duration::from_secs(20))?;
        // A journal batch is written once a second.
        std::thread::sleep(Duration::from_millis(1500));
        let (deaths, lost) = if mode == "trace" {
            let err = kat.stop("INT")?;
            let text = fs::read_to_string(&events)?;
            let deaths: Vec<Value> = text
                .lines()
                .filter(|l| l.contains(r#""type":"death""#))
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let lost = Lost::from_json_lines(&text).or_else(|| Lost::from_stderr(&err));
            (deaths, lost.unwrap_or_default())
        } else {
            kat.stop("TERM")?;
            let out = Command::new(&ctx.kat)
                .args(["report", "--dir", &d, "--json"])
                .output()?;
            if !out.status.success() {
                bail!("kat report: {}", String::from_utf8_lossy(&out.stderr));
            }
            let report: Value = serde_json::from_slice(&out.stdout)?;
            let deaths = report["deaths"].as_array().cloned().unwrap_or_default();
            let lost = Lost {
                total: report["lost"].as_u64().unwrap_or(0),
                ..Lost::default()
            };
            (deaths, lost)
        };
        let rps = requests_per_second(wrk)?;
        let (n, missing) = found(&deaths, &expected);
        let name = if mode == "trace" {
            "`kat trace --json`"
        } else {
            "`kat record` + `kat report`"
        };
        md.push_str(&format!(
            "| {name} | {n} / {} | {} | {} | {rps:.0} |\n",
            expected.len(),
            if missing.is_empty() {
                "–".to_string()
            } else {
                missing.join(", ")
            },
            lost.text()
        ));
    }
    Ok(md)
}
