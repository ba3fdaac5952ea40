//! `kat report` over a full journal written by kat's own writer (the
//! synthetic journal of `cargo bench --bench report`); wall time and peak
//! memory from `/usr/bin/time -v`.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

use super::proc::TempDir;
use super::Ctx;

/// Writes about `mib` MiB of journal with kat's own writer (the
/// `journal` example of kat-userspace, also used by `cargo bench --bench
/// report`); returns the events written.
fn journal(dir: &Path, mib: u64) -> Result<u64> {
    let out = crate::cargo::command()
        .args([
            "run",
            "--release",
            "-q",
            "-p",
            "kat-userspace",
            "--example",
            "journal",
            "--",
        ])
        .arg(dir)
        .arg(format!("{mib}MiB"))
        .stderr(Stdio::inherit())
        .output()
        .context("cargo run --example journal")?;
    if !out.status.success() {
        bail!("the journal example failed: {}", out.status);
    }
    let said = String::from_utf8_lossy(&out.stdout);
    said.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("the journal example said {said:?}"))
}

/// A value of `/usr/bin/time -v`'s output.
fn time_v<'a>(text: &'a str, key: &str) -> Result<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
        .with_context(|| format!("no {key:?} in /usr/bin/time -v output"))
}

/// `h:mm:ss` or `m:ss.cc` in seconds.
fn clock(s: &str) -> f64 {
    s.split(':')
        .fold(0.0, |acc, p| acc * 60.0 + p.parse::<f64>().unwrap_or(0.0))
}

pub fn run(ctx: &Ctx) -> Result<String> {
    let mib: u64 = ctx.pick(256, 32);
    let dir = TempDir::new("report")?;
    let events = journal(&dir.0, mib)?;
    let files = fs::read_dir(&dir.0)?.count();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(&ctx.kat)
        .args(["report", "--dir"])
        .arg(&dir.0)
        .stdout(Stdio::null())
        .output()
        .context("/usr/bin/time (Debian package time)")?;
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("kat report failed: {text}");
    }
    let wall = clock(time_v(
        &text,
        "Elapsed (wall clock) time (h:mm:ss or m:ss):",
    )?);
    let rss: f64 = time_v(&text, "Maximum resident set size (kbytes):")?.parse()?;
    Ok(format!(
        "### kat report over a full journal\n\n{mib} MiB of synthetic journal written by kat's writer \
         ({events} events in {files} files, `cargo run --release --example journal`); `/usr/bin/time -v kat report --dir D > /dev/null`.\n\n\
         | what | figure |\n|---|---|\n| wall time | {wall:.2} s |\n| max RSS | {:.0} MiB |\n",
        rss / 1024.0
    ))
}
