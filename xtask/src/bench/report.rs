//! `kat report` over a full journal: synthetic files in kat's journal
//! format (docs/events.md), a header then probe, answer, probe, death per
//! connection, each file at most 32 MiB; wall time and peak memory from
//! `/usr/bin/time -v`.

use std::fs;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

use super::proc::TempDir;
use super::Ctx;

const FILE_SIZE: u64 = 32 << 20;

/// `2026-11-21T03:12:00.000Z` plus `ms` (within the day).
fn ts(ms: u64) -> String {
    let ms = ms + (3 * 3600 + 12 * 60) * 1000;
    let (h, m, s, milli) = (
        ms / 3_600_000 % 24,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000,
    );
    format!("2026-11-21T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

fn header(file_started: &str) -> String {
    format!(
        r#"{{"type":"journal","format":1,"kat":"bench","host":"bench","kernel":"6.18","lanes":"tracepoint lane","ports":[],"run_started":"{}","file_started":"{file_started}"}}"#,
        ts(0)
    )
}

/// Event `i`: connections of four events, 37 ms apart.
fn event(i: u64) -> String {
    let conn = i / 4;
    let what = match i % 4 {
        0 | 2 => r#""type":"probe","probe":1,"probes_max":2,"idle_s":55.0"#.to_string(),
        1 => r#""type":"probe_answered","probe":1"#.to_string(),
        _ => format!(
            r#""type":"death","reason":"{}","errno":"ETIMEDOUT","unanswered_probes":2,"found_by_probe":false,"lifetime_s":70.5,"state":"ESTABLISHED""#,
            ["keepalive_timeout", "peer_reset", "closed"][conn as usize % 3]
        ),
    };
    format!(
        r#"{{{what},"ts":"{}","saddr":"198.18.1.2","sport":{},"daddr":"198.18.{}.{}","dport":6699,"netns":4026531840,"uid":0,"pid":1234,"comm":"server","keepalive":{{"idle_s":55.0,"idle_from":"socket","intvl_s":6.0,"intvl_from":"socket","probes":2,"probes_from":"sysctl"}}}}"#,
        ts(i * 37),
        30000 + conn % 30000,
        (conn >> 8) % 256,
        conn % 256
    )
}

/// Writes about `size` bytes of journal; returns the events written.
fn journal(dir: &Path, size: u64) -> Result<u64> {
    let (mut written, mut i, mut seq) = (0u64, 0u64, 1u32);
    while written < size {
        let name = format!("kat-{seq:06}-20261121T031200Z.jsonl");
        let mut f = BufWriter::new(fs::File::create(dir.join(name))?);
        let mut in_file = 0u64;
        let h = header(&ts(i * 37));
        writeln!(f, "{h}")?;
        in_file += h.len() as u64 + 1;
        loop {
            let e = event(i);
            if in_file + e.len() as u64 + 1 > FILE_SIZE || written + in_file >= size {
                break;
            }
            writeln!(f, "{e}")?;
            in_file += e.len() as u64 + 1;
            i += 1;
        }
        f.flush()?;
        written += in_file;
        seq += 1;
    }
    Ok(i)
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
    let events = journal(&dir.0, mib << 20)?;
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
        "### kat report over a full journal\n\n{mib} MiB of synthetic journal ({events} events: probe, answer, probe, \
         death per connection; {files} files of ≤ 32 MiB); `/usr/bin/time -v kat report --dir D > /dev/null`.\n\n\
         | what | figure |\n|---|---|\n| wall time | {wall:.2} s |\n| max RSS | {:.0} MiB |\n",
        rss / 1024.0
    ))
}
