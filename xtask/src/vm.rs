//! `cargo xtask vm-test`: the scenario suite on Debian's own kernels under
//! QEMU, once per lane, and a kernel × lane × scenario matrix.
//!
//! Kernel packages come from apt and are cached outside the repository
//! (VM_CACHE); each VM boots an initramfs holding busybox, static builds of
//! `kat` and `kat-scenarios`, and the kernel's config (for CONFIG_HZ).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::cargo::{self, Built};
use crate::run;

/// Debian 12's cloud kernels: 6.1 (no reset reasons) and 6.12 (with).
const KERNELS: [&str; 2] = [
    "linux-image-6.1.0-56-cloud-amd64-unsigned",
    "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
];
const LANES: [&str; 3] = ["fentry", "kprobe", "tracepoint"];
const VM_CACHE: &str = "/var/cache/kat-vm";
const MUSL: &str = "x86_64-unknown-linux-musl";
/// A whole VM run (boot, three lanes of scenarios, power off) under TCG.
const VM_TIMEOUT: Duration = Duration::from_secs(2400);

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
ip link set lo up
arg() { sed -n "s/.*kat\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
export KAT_SCENARIO="$(arg scenario)" RUST_LOG="$(arg log)"
echo "KAT-VM kernel $(uname -r)"
/kat doctor
/kat-scenarios /kat $(arg lanes | tr , ' ')
echo "KAT-VM exit $?"
poweroff -f
"#;

/// The kernel package unpacked in the cache: (vmlinuz, config, release).
fn kernel(package: &str) -> Result<(PathBuf, PathBuf, String)> {
    let cache = Path::new(VM_CACHE);
    fs::create_dir_all(cache)?;
    let dir = cache.join(package);
    if !dir.join("boot").is_dir() {
        let deb_prefix = format!("{package}_");
        let find_deb = || {
            fs::read_dir(cache).ok().and_then(|entries| {
                entries.flatten().map(|e| e.path()).find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&deb_prefix))
                })
            })
        };
        if find_deb().is_none() {
            eprintln!("xtask: downloading {package}");
            let downloaded = Command::new("apt-get")
                .args(["download", package])
                .current_dir(cache)
                .status()
                .is_ok_and(|s| s.success());
            if !downloaded {
                run(Command::new("apt-get").args(["update", "-q"]))?;
                run(Command::new("apt-get")
                    .args(["download", package])
                    .current_dir(cache))?;
            }
        }
        let deb = find_deb().with_context(|| format!("{package} did not download"))?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    }
    let boot = dir.join("boot");
    let mut vmlinuz = None;
    let mut config = None;
    for e in fs::read_dir(&boot)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("vmlinuz-") {
            vmlinuz = Some(e.path());
        } else if name.starts_with("config-") {
            config = Some(e.path());
        }
    }
    let vmlinuz = vmlinuz.context("no vmlinuz in the kernel package")?;
    let config = config.context("no config in the kernel package")?;
    let release = vmlinuz
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_string()
        })
        .unwrap_or_default();
    Ok((vmlinuz, config, release))
}

/// Static builds of kat and the scenario runner.
fn binaries() -> Result<Built> {
    cargo::build(&[
        "--release",
        "--target",
        MUSL,
        "--package",
        "kat-userspace",
        "--package",
        "kat-scenarios",
        "--bin",
        "kat",
        "--bin",
        "kat-scenarios",
    ])
}

fn initramfs(work: &Path, bins: &Built, config: &Path, release: &str) -> Result<PathBuf> {
    let root = work.join("root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for d in ["bin", "proc", "sys", "dev", "tmp", "run", "boot"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy("/usr/bin/busybox", root.join("bin/busybox")).context("busybox-static")?;
    for bin in ["kat", "kat-scenarios"] {
        fs::copy(bins.bin(bin)?, root.join(bin))?;
    }
    fs::copy(config, root.join(format!("boot/config-{release}")))?;
    fs::write(root.join("init"), INIT)?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))?;
    let image = work.join("initrd.gz");
    run(Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > ../initrd.gz")
        .current_dir(&root))?;
    Ok(image)
}

/// Boots one VM and returns its console output (also saved to `log`).
fn boot(vmlinuz: &Path, initrd: &Path, log: &Path) -> Result<(String, bool)> {
    let console = fs::File::create(log)?;
    let mut child = Command::new("qemu-system-x86_64")
        // One vCPU: under TCG, the kernel patching a hot tracepoint's jump
        // label (kat attaching and detaching, over and over) raced with the
        // other vCPU executing it and oopsed on the int3 (seen on 6.12).
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1024"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &cmdline()])
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let start = Instant::now();
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if start.elapsed() > VM_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut out = String::new();
    fs::File::open(log)?.read_to_string(&mut out)?;
    Ok((out, timed_out))
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

fn lanes() -> Vec<String> {
    match env("KAT_VM_LANES") {
        l if l.is_empty() => LANES.iter().map(|s| s.to_string()).collect(),
        l => l.split(',').map(str::to_string).collect(),
    }
}

fn cmdline() -> String {
    format!(
        "console=ttyS0 quiet panic=-1 kat.lanes={} kat.scenario={} kat.log={}",
        lanes().join(","),
        env("KAT_SCENARIO"),
        env("KAT_VM_LOG")
    )
}

/// scenario → lane → result, from the console's RESULT lines.
type Results = BTreeMap<String, BTreeMap<String, String>>;

fn parse(console: &str) -> (Results, bool) {
    let mut results = Results::new();
    let mut done = false;
    for line in console.lines().map(str::trim) {
        if line == "RESULTS DONE" {
            done = true;
            continue;
        }
        let Some(rest) = line.strip_prefix("RESULT ") else {
            continue;
        };
        let mut parts = rest.splitn(3, ' ');
        if let (Some(lane), Some(scenario), Some(result)) =
            (parts.next(), parts.next(), parts.next())
        {
            results
                .entry(scenario.to_string())
                .or_default()
                .insert(lane.to_string(), result.to_string());
        }
    }
    (results, done)
}

/// Runs the matrix; Ok((passed, failed)) only when nothing failed.
pub fn test() -> Result<(u64, u64)> {
    let bins = binaries()?;
    let work = cargo::workspace()?.target_dir.join("vm");
    fs::create_dir_all(&work)?;
    let mut failures = Vec::new();
    let mut table: Vec<(String, Results)> = Vec::new();
    let only = env("KAT_VM_KERNEL");
    for package in KERNELS.iter().filter(|k| k.contains(&only)) {
        let (vmlinuz, config, release) = kernel(package)?;
        let kwork = work.join(&release);
        fs::create_dir_all(&kwork)?;
        let initrd = initramfs(&kwork, &bins, &config, &release)?;
        let log = kwork.join("console.log");
        eprintln!(
            "xtask: booting {release} under QEMU (TCG); console in {}",
            log.display()
        );
        let started = Instant::now();
        let (console, timed_out) = boot(&vmlinuz, &initrd, &log)?;
        eprintln!(
            "xtask: {release} done in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        let (results, done) = parse(&console);
        if console.contains("Kernel panic") {
            failures.push(format!("{release}: kernel panic (see {})", log.display()));
        } else if timed_out {
            failures.push(format!("{release}: timed out after {VM_TIMEOUT:?}"));
        } else if !done {
            failures.push(format!("{release}: the scenario runner did not finish"));
        }
        for (scenario, by_lane) in &results {
            for lane in lanes() {
                match by_lane.get(&lane) {
                    Some(r) if r == "PASS" => {}
                    Some(r) => failures.push(format!("{release} {lane} {scenario}: {r}")),
                    None => failures.push(format!("{release} {lane} {scenario}: no result")),
                }
            }
        }
        if results.is_empty() {
            failures.push(format!("{release}: no scenario result"));
        }
        table.push((release, results));
    }
    let counts = print_matrix(&table);
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAIL {f}");
        }
        bail!("{} VM failures", failures.len());
    }
    Ok(counts)
}

/// Prints the matrix; returns (passed, failed) cells.
fn print_matrix(table: &[(String, Results)]) -> (u64, u64) {
    let mut header = format!("{:<34}", "scenario");
    for (release, _) in table {
        for lane in lanes() {
            let short: Vec<&str> = release.split(['.', '-', '+']).take(2).collect();
            let short = short.join(".");
            header.push_str(&format!("{:<18}", format!("{short} {lane}")));
        }
    }
    println!("{header}");
    let scenarios: std::collections::BTreeSet<&String> =
        table.iter().flat_map(|(_, r)| r.keys()).collect();
    let mut passed = 0;
    let mut failed = 0;
    for s in scenarios {
        let mut row = format!("{s:<34}");
        for (_, results) in table {
            for lane in lanes() {
                let cell = results.get(s).and_then(|l| l.get(&lane));
                let mark = match cell {
                    Some(r) if r == "PASS" => {
                        passed += 1;
                        "pass"
                    }
                    Some(_) => {
                        failed += 1;
                        "FAIL"
                    }
                    None => {
                        failed += 1;
                        "-"
                    }
                };
                row.push_str(&format!("{mark:<18}"));
            }
        }
        println!("{row}");
    }
    println!("vm: {passed} passed, {failed} failed");
    (passed, failed)
}
