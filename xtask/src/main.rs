//! Project chores: `cargo xtask setup | run | dist | test | bench | vm-test`.
//!
//! Only crates that build with Rust alone here, so xtask builds on a fresh
//! machine before anything it installs is present.

mod bench;
mod cargo;
mod dist;
mod setup;
mod vm;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing kat needs (idempotent).
    Setup,
    /// Set up, build kat (release) and run it with these arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then build kat as released: the static binary and the
    /// Debian package, in dist/ under the target directory.
    Dist,
    /// Set up, then formatting, lints, the release build (dist), unit
    /// tests, kernel tests, the package's install test and the QEMU kernel
    /// matrix on the released binary.
    Test,
    /// Set up, then measure what kat costs a busy host and write the
    /// figures into docs/performance.md (needs root).
    Bench {
        /// Only these parts (comma-separated): hooks, tax, needle, storm,
        /// scale, report, soak (an hour; two minutes with --quick).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Shorter runs, fewer rounds and connections: to try it out.
        #[arg(long)]
        quick: bool,
    },
    /// Set up, build the released binary (dist), then run the scenario
    /// suite in QEMU on Debian's kernels, once per lane, and print the
    /// matrix.
    VmTest,
}

/// Runs a command, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// What one part of `cargo xtask test` counted, and whether it passed:
/// the verdict is the part's own (cargo's exit status, the VM harness's),
/// never read from the counts.
pub struct Outcome {
    pub passed: u64,
    pub failed: u64,
    pub verdict: Result<()>,
}

impl Outcome {
    /// A part that could not run at all.
    fn broken(e: anyhow::Error) -> Outcome {
        Outcome {
            passed: 0,
            failed: 0,
            verdict: Err(e),
        }
    }
}

/// The totals line CI reads.
fn print_totals(parts: &[&Outcome]) {
    let (passed, failed) = totals(parts);
    println!("tests: {passed} passed, {failed} failed");
}

/// A part that failed without a failed test to show for it (a build error,
/// a crashed test binary, a VM that never booted) counts as one, so a
/// failed run never reads "0 failed".
fn totals(parts: &[&Outcome]) -> (u64, u64) {
    let passed = parts.iter().map(|p| p.passed).sum();
    let failed = parts
        .iter()
        .map(|p| p.failed.max(u64::from(p.verdict.is_err())))
        .sum();
    (passed, failed)
}

/// `cargo test`, passed through, with the totals of every test binary
/// (cargo's own last line is its doc-test run's). `deb` is the package
/// tests/dist.rs installs.
fn cargo_test(deb: &Path) -> Outcome {
    // All targets: the benches run once each in criterion's test mode, so
    // a bench that no longer works fails here, not in `cargo xtask bench`.
    let mut child = match cargo::command()
        .args(["test", "--all-targets"])
        .env("KAT_DEB", deb)
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return Outcome::broken(anyhow::Error::new(e).context("cannot start cargo test")),
    };
    let (mut passed, mut failed) = (0, 0);
    if let Some(stdout) = child.stdout.take() {
        // Lossy and to the end: a test printing odd bytes must not stop the
        // count or leave cargo blocked on a full pipe.
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line);
            println!("{line}");
            if let Some((p, f)) = test_result(&line) {
                passed += p;
                failed += f;
            }
        }
    }
    let verdict = match child.wait() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(anyhow!("cargo test failed: {status}")),
        Err(e) => Err(anyhow::Error::new(e).context("waiting for cargo test")),
    };
    Outcome {
        passed,
        failed,
        verdict,
    }
}

/// (passed, failed) from a test binary's `test result:` line.
fn test_result(line: &str) -> Option<(u64, u64)> {
    let counts = line.strip_prefix("test result: ")?;
    let count = |word: &str| -> u64 {
        counts
            .split([';', '.'])
            .find_map(|part| part.trim().strip_suffix(word)?.trim().parse().ok())
            .unwrap_or(0)
    };
    Some((count("passed"), count("failed")))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::all(),
        Cmd::Dist => {
            setup::all()?;
            dist::build().map(drop)
        }
        Cmd::Run { args } => {
            setup::all()?;
            let built = cargo::build(&["--release", "--package", "kat-userspace"])?;
            run(Command::new(built.bin("kat")?).args(&args))
        }
        Cmd::Test => {
            setup::all()?;
            run(cargo::command().args(["fmt", "--all", "--", "--check"]))?;
            // Default members: everything but the eBPF crate, linted below
            // for its own target.
            run(cargo::command().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
            // The eBPF crate builds with nightly only (build-std).
            run(Command::new("rustup").args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "kat-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ]))?;
            // What is released is what the package test installs and the
            // VMs boot.
            let dist = dist::build()?;
            // The slow VM matrix only once the host tests passed.
            let host = cargo_test(&dist.deb);
            if host.verdict.is_err() {
                print_totals(&[&host]);
                return host.verdict;
            }
            let vm = vm::test(&dist.binary).unwrap_or_else(Outcome::broken);
            print_totals(&[&host, &vm]);
            vm.verdict
        }
        Cmd::VmTest => {
            setup::all()?;
            vm::test(&dist::build()?.binary)?.verdict
        }
        Cmd::Bench { only, quick } => {
            setup::all()?;
            bench::run_parts(&only, quick)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_test_result_lines() {
        assert_eq!(
            test_result("test result: ok. 46 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1.03s"),
            Some((46, 0))
        );
        assert_eq!(
            test_result("test result: FAILED. 10 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.46s"),
            Some((10, 1))
        );
        assert_eq!(test_result("test vm::tests::one_failed ... ok"), None);
    }

    fn outcome(passed: u64, failed: u64, ok: bool) -> Outcome {
        Outcome {
            passed,
            failed,
            verdict: if ok { Ok(()) } else { Err(anyhow!("failed")) },
        }
    }

    #[test]
    fn a_failed_part_never_totals_zero_failed() {
        let host = outcome(120, 0, true);
        assert_eq!(totals(&[&host, &outcome(78, 0, true)]), (198, 0));
        assert_eq!(totals(&[&host, &outcome(75, 3, false)]), (195, 3));
        // A build error: no test ran, none failed, cargo said no.
        assert_eq!(totals(&[&outcome(0, 0, false)]), (0, 1));
        assert_eq!(
            totals(&[&host, &Outcome::broken(anyhow!("no kernel"))]),
            (120, 1)
        );
    }
}
