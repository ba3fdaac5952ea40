//! Project chores: `cargo xtask setup | run | test | bench`.
//!
//! Only crates that build with Rust alone here, so xtask builds on a fresh
//! machine before anything it installs is present.

mod bench;
mod cargo;
mod setup;
mod vm;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};
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
    /// Set up, then formatting, lints, unit tests, kernel tests and the
    /// QEMU kernel matrix.
    Test,
    /// Set up, then measure what kat costs a busy host and write the
    /// figures into docs/performance.md (needs root).
    Bench {
        /// Only these parts (comma-separated): hooks, tax, needle, storm,
        /// scale, report.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Shorter runs, fewer rounds and connections: to try it out.
        #[arg(long)]
        quick: bool,
    },
    /// Set up, then run the scenario suite in QEMU on Debian's 6.1 and 6.12
    /// kernels, once per lane, and print the matrix.
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

/// `cargo test`, passed through; the totals of every test binary (cargo's
/// own last line is its doc-test run's, so xtask prints the sum).
fn cargo_test() -> Result<(u64, u64)> {
    let mut child = cargo::command()
        .arg("test")
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(counts) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                counts
                    .split([';', '.'])
                    .find_map(|part| part.trim().strip_suffix(word)?.trim().parse().ok())
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        println!("tests: {passed} passed, {failed} failed");
        bail!("cargo test failed: {status}");
    }
    Ok((passed, failed))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::all(),
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
            let (passed, failed) = cargo_test()?;
            let vm = vm::test();
            let (vm_passed, vm_failed) = vm.as_ref().map_or((0, 1), |&counts| counts);
            println!(
                "tests: {} passed, {} failed",
                passed + vm_passed,
                failed + vm_failed
            );
            vm.map(|_| ())
        }
        Cmd::VmTest => {
            setup::all()?;
            vm::test().map(|_| ())
        }
        Cmd::Bench { only, quick } => {
            setup::all()?;
            bench::run_parts(&only, quick)
        }
    }
}
