//! `cargo xtask bench`: what kat costs a busy host (issue 9). Each part
//! prints a markdown section and writes it into docs/performance.md
//! between its markers, so a rerun replaces it.

mod needle;
mod proc;
mod report;
mod scale;
mod soak;
mod storm;
mod tax;
mod work;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::cargo;
pub use kat_scenarios::soak::median;

/// The parts, in the order a full run takes them.
pub const PARTS: [&str; 7] = ["hooks", "tax", "needle", "storm", "scale", "report", "soak"];

const DOC: &str = "docs/performance.md";

/// What every part needs.
pub struct Ctx {
    pub kat: PathBuf,
    /// Empty programs on kat's hooks (`examples/floor.rs`).
    pub floor: PathBuf,
    pub kat_load: PathBuf,
    pub quick: bool,
}

impl Ctx {
    /// The full figure, or the quick one.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

pub fn run_parts(only: &[String], quick: bool) -> Result<()> {
    if fs::metadata("/proc/self")?.uid() != 0 {
        bail!(
            "cargo xtask bench loads eBPF programs and creates network namespaces: run it as root"
        );
    }
    for p in only {
        if !PARTS.contains(&p.as_str()) {
            bail!("unknown part {p:?}; parts: {}", PARTS.join(","));
        }
    }
    let kat = cargo::build(&["--release", "--package", "kat-userspace", "--bin", "kat"])?;
    let kat_load = cargo::build(&[
        "--release",
        "--package",
        "kat-scenarios",
        "--bin",
        "kat-load",
    ])?;
    let floor = cargo::build(&[
        "--release",
        "--package",
        "kat-userspace",
        "--example",
        "floor",
    ])?;
    let ctx = Ctx {
        kat: kat.bin("kat")?.to_path_buf(),
        floor: floor.bin("floor")?.to_path_buf(),
        kat_load: kat_load.bin("kat-load")?.to_path_buf(),
        quick,
    };
    let doc = cargo::workspace()?.root.join(DOC);
    let mut failed = Vec::new();
    for part in PARTS
        .iter()
        .filter(|p| only.is_empty() || only.iter().any(|o| o == *p))
    {
        eprintln!("xtask bench: {part}");
        let started = std::time::Instant::now();
        let body = match run_part(part, &ctx) {
            Ok(md) => md,
            Err(e) => {
                eprintln!("xtask bench: {part} failed: {e:#}");
                failed.push(*part);
                format!("**Failed:** {e:#}\n")
            }
        };
        let took = started.elapsed().as_secs_f64();
        let md = format!("{}\n{body}", stamp(&ctx, took));
        println!("{md}");
        write_section(&doc, part, &md)?;
    }
    if !failed.is_empty() {
        bail!("bench parts failed: {}", failed.join(", "));
    }
    Ok(())
}

fn run_part(part: &str, ctx: &Ctx) -> Result<String> {
    match part {
        "hooks" => hooks(ctx),
        "tax" => tax::run(ctx),
        "needle" => needle::run(ctx),
        "storm" => storm::run(ctx),
        "scale" => scale::run(ctx),
        "report" => report::run(ctx),
        "soak" => soak::run(ctx),
        _ => bail!("unknown part {part}"),
    }
}

fn output(cmd: &[&str]) -> String {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// When, where and how a part ran (the figures are noisy: the machine is
/// shared, so the load average is part of them).
fn stamp(ctx: &Ctx, took: f64) -> String {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "_{} · Linux {} · {} CPUs · kat {} · `cargo xtask bench{}` · {took:.0} s · load average {}_\n",
        output(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
        output(&["uname", "-r"]),
        output(&["nproc"]),
        output(&["git", "rev-parse", "--short", "HEAD"]),
        if ctx.quick { " --quick" } else { "" },
        load.join(" "),
    )
}

/// Replaces the text between `<!-- bench:PART -->` and `<!-- /bench:PART -->`,
/// appending both (under the bench's heading) when missing.
fn write_section(doc: &Path, part: &str, md: &str) -> Result<()> {
    let text = fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
    let (begin, end) = (
        format!("<!-- bench:{part} -->"),
        format!("<!-- /bench:{part} -->"),
    );
    let block = format!("{begin}\n{md}{end}");
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{block}{}", &text[..b], &text[e + end.len()..])
        }
        _ => {
            let mut t = text.trim_end().to_string();
            if !t.contains(HEADING) {
                t.push_str(&format!("\n\n{HEADING}\n\n{INTRO}"));
            }
            format!("{t}\n\n{block}\n")
        }
    };
    fs::write(doc, new)?;
    Ok(())
}

const HEADING: &str = "## The host's cost: `cargo xtask bench` (latest run)";
const INTRO: &str = "Written by `cargo xtask bench` (as root; `--only PART,…`, `--quick`);\n\
each part replaces its own block below. The machine is shared with other\n\
engineers' builds and tests: compare ratios measured in one run, not\n\
absolute figures across runs.";

/// The hot-path cost per timer (criterion-free: BPF run-time statistics).
fn hooks(ctx: &Ctx) -> Result<String> {
    let seconds = ctx.pick("10", "3");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["bench", "--package", "kat-userspace", "--bench", "hooks"])
        .env("KAT_BENCH_SECONDS", seconds)
        .output()?;
    if !out.status.success() {
        bail!(
            "cargo bench --bench hooks: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("program"))
        .collect();
    Ok(format!(
        "### Hot hooks\n\n`KAT_BENCH_SECONDS={seconds} cargo bench --bench hooks` (200 loopback connections' delayed-ACK timers):\n\n```\n{}\n```\n",
        table.join("\n")
    ))
}

/// Records lost, as kat reports them.
#[derive(Debug, Default, Clone)]
pub struct Lost {
    pub total: u64,
    /// By kind, when kat gave them.
    pub by_kind: Option<BTreeMap<String, u64>>,
    /// Why there is no count.
    pub note: Option<String>,
}

/// The kinds kat counts losses by (and its skipped hook runs, which may
/// have been any kind); all but `closed` are precious.
const KINDS: [&str; 7] = [
    "timer_run",
    "reset_sent",
    "reset_received",
    "death",
    "destroy",
    "closed",
    "skipped_run",
];

impl Lost {
    /// Records lost that carried a probe, an RST or a death.
    pub fn precious(&self) -> Option<u64> {
        self.by_kind.as_ref().map(|m| {
            m.iter()
                .filter(|(k, _)| *k != "closed")
                .map(|(_, n)| n)
                .sum()
        })
    }

    /// From kat's stop line on stderr (`kat: … K records lost…`), with
    /// the kinds when it names them (`timer_run 3`, `closed: 5`, …).
    pub fn from_stderr(stderr: &str) -> Option<Self> {
        if stderr.contains(proc::KILLED) {
            return Some(Self {
                note: Some("not reported: kat did not stop within 60 s".into()),
                ..Self::default()
            });
        }
        let line = stderr.lines().rev().find(|l| l.contains("records lost"))?;
        let before = &line[..line.find(" records lost")?];
        let total = before.rsplit(' ').next()?.parse().ok()?;
        let mut by_kind = BTreeMap::new();
        for kind in KINDS {
            if let Some(at) = line.find(kind) {
                let rest = line[at + kind.len()..].trim_start_matches([':', '=', ' ', '"']);
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(n) = digits.parse() {
                    by_kind.insert(kind.to_string(), n);
                }
            }
        }
        Some(Self {
            total,
            by_kind: (!by_kind.is_empty()).then_some(by_kind),
            note: None,
        })
    }

    /// The largest of kat's `{"type":"lost",…}` lines (counts only grow
    /// within a run).
    pub fn from_json_lines(text: &str) -> Option<Self> {
        text.lines()
            .filter(|l| l.contains(r#""type":"lost""#))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| Self {
                note: None,
                total: v["count"].as_u64().unwrap_or(0),
                by_kind: v["by_kind"].as_object().map(|m| {
                    m.iter()
                        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                        .collect()
                }),
            })
            .max_by_key(|l| l.total)
    }

    /// `12 (precious 3)`, `12 (by kind: not reported)`.
    pub fn text(&self) -> String {
        if let Some(n) = &self.note {
            return n.clone();
        }
        match self.precious() {
            Some(p) => format!("{} (precious {p})", self.total),
            None if self.total == 0 => "0".into(),
            None => format!("{} (kinds not reported)", self.total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_from_the_stop_line_and_json() {
        let l =
            Lost::from_stderr("kat: 5 events shown, 2 connections still tracked, 123 records lost")
                .expect("parsed");
        assert_eq!((l.total, l.precious()), (123, None));
        let l = Lost::from_stderr("kat: 5 events shown, 0 connections still tracked, 9 records lost (timer_run 2, closed 7)")
            .expect("parsed");
        assert_eq!((l.total, l.precious()), (9, Some(2)));
        let l = Lost::from_stderr(
            "kat: 5 events shown, 0 connections still tracked, 12 records lost (closed 7, skipped_run 5)",
        )
        .expect("parsed");
        assert_eq!((l.total, l.precious()), (12, Some(5)));
        let j = r#"{"type":"lost","ts":"x","count":4}
{"type":"lost","ts":"x","count":10,"by_kind":{"closed":8,"death":2}}"#;
        let l = Lost::from_json_lines(j).expect("parsed");
        assert_eq!((l.total, l.precious()), (10, Some(2)));
    }

    #[test]
    fn sections_are_replaced_between_markers() {
        let dir = std::env::temp_dir().join(format!("xtask-doc-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let doc = dir.join("p.md");
        fs::write(&doc, "# Performance\n").expect("write");
        write_section(&doc, "tax", "block-1\n").expect("first");
        write_section(&doc, "storm", "block-2\n").expect("second");
        write_section(&doc, "tax", "block-3\n").expect("third");
        let t = fs::read_to_string(&doc).expect("read");
        assert!(
            t.contains("<!-- bench:tax -->\nblock-3\n<!-- /bench:tax -->"),
            "{t}"
        );
        assert!(t.contains("block-2") && !t.contains("block-1"), "{t}");
        assert_eq!(t.matches(HEADING).count(), 1);
        let _ = fs::remove_dir_all(&dir);
    }
}
