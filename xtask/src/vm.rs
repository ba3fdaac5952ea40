//! `cargo xtask vm-test`: the scenario suite on Debian's own kernels under
//! QEMU, once per lane, and a kernel × lane × scenario matrix.
//!
//! Kernel packages come from apt and are cached outside the repository
//! (`kernels.rs`); the VMs boot side by side, one per core, and each boots
//! an initramfs holding busybox, the released `kat` (`cargo xtask dist`'s
//! static binary), a static build of `kat-scenarios`, the kernel's config
//! (for CONFIG_HZ), this machine's `ip` and `nft` with their libraries
//! for the NAT lab, and the kernel's modules kat's tests need there
//! (`modules.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::cargo::{self, Built};
use kernels::{Unpacked, KERNELS};

mod kernels;
mod modules;
use crate::{run, Outcome};

const LANES: [&str; 3] = ["fentry", "kprobe", "tracepoint"];
/// A whole VM run (boot, three lanes of scenarios, power off) under TCG.
const VM_TIMEOUT: Duration = Duration::from_secs(2400);

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
export PATH=/usr/sbin:/bin
for m in $(cat /modules/order); do insmod /modules/$m.ko || echo "KAT-VM insmod $m failed"; done
ip link set lo up
arg() { sed -n "s/.*kat\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
export KAT_SCENARIO="$(arg scenario)" RUST_LOG="$(arg log)"
echo "KAT-VM kernel $(uname -r)"
/kat doctor
/kat-scenarios /kat $(arg lanes | tr , ' ')
echo "KAT-VM exit $?"
poweroff -f
"#;

/// The NAT lab's tools: iproute2's `ip` (busybox's has no `netns`) and
/// `nft`, dynamically linked.
const NAT_TOOLS: [&str; 2] = ["/usr/sbin/ip", "/usr/sbin/nft"];

fn initramfs(work: &Path, kat: &Path, scenarios: &Built, kernel: &Unpacked) -> Result<PathBuf> {
    let root = work.join("root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for d in [
        "bin", "proc", "sys", "dev", "tmp", "run", "boot", "usr/sbin", "var", "modules",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy("/usr/bin/busybox", root.join("bin/busybox")).context("busybox-static")?;
    fs::copy(kat, root.join("kat")).context("the dist binary")?;
    fs::copy(scenarios.bin("kat-scenarios")?, root.join("kat-scenarios"))?;
    fs::copy(
        &kernel.config,
        root.join(format!("boot/config-{}", kernel.release)),
    )?;
    // iproute2 keeps its namespaces under /var/run/netns.
    std::os::unix::fs::symlink("/run", root.join("var/run"))?;
    for tool in NAT_TOOLS {
        copy_as(&root, Path::new(tool))?;
        for lib in libraries(tool)? {
            copy_as(&root, &lib)?;
        }
    }
    let mut order = String::new();
    for (name, elf) in modules::resolve(&kernel.modules, &modules::NEEDED)? {
        fs::write(root.join(format!("modules/{name}.ko")), elf)?;
        order.push_str(&name);
        order.push('\n');
    }
    fs::write(root.join("modules/order"), order)?;
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

/// Copies `file` into `root` at the same path.
fn copy_as(root: &Path, file: &Path) -> Result<()> {
    let to = root.join(file.strip_prefix("/").unwrap_or(file));
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(file, &to).with_context(|| format!("copy {}", file.display()))?;
    Ok(())
}

/// The shared libraries and loader a dynamically linked program needs,
/// as `ldd` lists them.
fn libraries(program: &str) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("cannot run ldd")?;
    if !out.status.success() {
        bail!("ldd {program} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// VMs booted at once: each is one vCPU of TCG, about a core.
fn parallel() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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

/// The scenarios the runner is given, picked as it picks them: those whose
/// name contains KAT_SCENARIO.
fn expected() -> Vec<&'static str> {
    let only = env("KAT_SCENARIO");
    kat_scenarios::SCENARIOS
        .iter()
        .map(|(name, _)| *name)
        .chain([kat_scenarios::nat::SCENARIO])
        .filter(|name| name.contains(&only))
        .collect()
}

/// scenario → lane → result ("PASS", or "FAIL" and why).
type Results = BTreeMap<String, BTreeMap<String, String>>;

/// One kernel's run as its console tells it.
struct Console {
    results: Results,
    /// The runner's closing line came: it got through every scenario.
    done: bool,
    panicked: bool,
}

/// Reads the runner's lines out of a console full of other things (boot
/// messages, kernel log, kat's own output). A RESULT line the kernel wrote
/// into is no PASS.
fn parse(console: &str) -> Console {
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
    Console {
        results,
        done,
        panicked: console.contains("Kernel panic"),
    }
}

/// The matrix's rows: every scenario expected, and any other one that
/// reported.
fn rows<'a>(
    expected: &[&str],
    consoles: impl IntoIterator<Item = &'a Console>,
) -> BTreeSet<String> {
    let mut rows: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    for console in consoles {
        rows.extend(console.results.keys().cloned());
    }
    rows
}

fn cell<'a>(console: &'a Console, scenario: &str, lane: &str) -> Option<&'a str> {
    console
        .results
        .get(scenario)
        .and_then(|by_lane| by_lane.get(lane))
        .map(String::as_str)
}

/// Why one kernel's run failed, a line each; none when it passed. Every row
/// must PASS in every lane: a missing result (the VM died or timed out, the
/// line came garbled) fails like a FAIL.
fn failures(
    console: &Console,
    timed_out: bool,
    rows: &BTreeSet<String>,
    lanes: &[String],
) -> Vec<String> {
    let mut failures = Vec::new();
    if console.panicked {
        failures.push("kernel panic".to_string());
    } else if timed_out {
        failures.push(format!("timed out after {VM_TIMEOUT:?}"));
    } else if !console.done {
        failures.push("the scenario runner did not finish".to_string());
    }
    for scenario in rows {
        for lane in lanes {
            match cell(console, scenario, lane) {
                Some("PASS") => {}
                Some(r) => failures.push(format!("{lane} {scenario}: {r}")),
                None => failures.push(format!("{lane} {scenario}: no result")),
            }
        }
    }
    failures
}

/// One kernel booted.
struct Run {
    release: String,
    log: PathBuf,
    console: Console,
    timed_out: bool,
}

/// Runs the matrix with `kat`, the released binary. Err when it cannot run
/// at all (a build, a kernel download); the outcome's verdict says whether
/// every cell passed.
pub fn test(kat: &Path) -> Result<Outcome> {
    let expected = expected();
    if expected.is_empty() {
        bail!("KAT_SCENARIO={:?} names no scenario", env("KAT_SCENARIO"));
    }
    let only = env("KAT_VM_KERNEL");
    let kernels: Vec<_> = KERNELS
        .iter()
        .filter(|k| only.split(',').any(|o| k.label.contains(o)))
        .collect();
    if kernels.is_empty() {
        bail!("KAT_VM_KERNEL={only:?} names no kernel");
    }
    let lanes = lanes();
    let scenarios = cargo::build_static(&["kat-scenarios"], &["kat-scenarios"])?;
    let work = cargo::workspace()?.target_dir.join("vm");
    // Fetched and packed one by one (apt, disk), booted side by side.
    let mut vms = Vec::new();
    for k in kernels {
        let kernel = kernels::fetch(k)?;
        let kwork = work.join(&kernel.release);
        fs::create_dir_all(&kwork)?;
        let initrd = initramfs(&kwork, kat, &scenarios, &kernel)?;
        vms.push((kernel, initrd, kwork.join("console.log")));
    }
    let queue = std::sync::Mutex::new(vms.iter().enumerate());
    let done = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..parallel() {
            s.spawn(|| loop {
                let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                let Some((i, (kernel, initrd, log))) = next else {
                    return;
                };
                let release = &kernel.release;
                eprintln!(
                    "xtask: booting {release} under QEMU (TCG); console in {}",
                    log.display()
                );
                let started = Instant::now();
                let booted = boot(&kernel.vmlinuz, initrd, log);
                eprintln!(
                    "xtask: {release} done in {:.0} s",
                    started.elapsed().as_secs_f64()
                );
                if let Ok(mut done) = done.lock() {
                    done.push((i, booted));
                }
            });
        }
    });
    let mut done = done
        .into_inner()
        .map_err(|_| anyhow!("a VM thread panicked"))?;
    done.sort_by_key(|(i, _)| *i);
    let mut runs = Vec::new();
    for (i, booted) in done {
        let (kernel, _, log) = &vms[i];
        let (console, timed_out) = booted?;
        runs.push(Run {
            release: kernel.release.clone(),
            log: log.clone(),
            console: parse(&console),
            timed_out,
        });
    }
    let rows = rows(&expected, runs.iter().map(|r| &r.console));
    let (matrix, passed, failed) = matrix(&runs, &rows, &lanes);
    print!("{matrix}");
    let mut count = 0;
    for run in &runs {
        let failures = failures(&run.console, run.timed_out, &rows, &lanes);
        for f in &failures {
            eprintln!("FAIL {} {f}", run.release);
        }
        if !failures.is_empty() {
            eprintln!("xtask: {}'s console: {}", run.release, run.log.display());
        }
        count += failures.len();
    }
    let verdict = match count {
        0 => Ok(()),
        n => Err(anyhow!("{n} VM failures")),
    };
    Ok(Outcome {
        passed,
        failed,
        verdict,
    })
}

/// The matrix as printed, and its (passed, failed) cells: a cell without a
/// result counts as failed.
fn matrix(runs: &[Run], rows: &BTreeSet<String>, lanes: &[String]) -> (String, u64, u64) {
    let width = rows.iter().map(String::len).max().unwrap_or(0).max(8) + 2;
    let mut text = format!("{:<width$}", "scenario");
    for run in runs {
        let short: Vec<&str> = run.release.split(['.', '-', '+']).take(2).collect();
        let short = short.join(".");
        for lane in lanes {
            text.push_str(&format!("{:<18}", format!("{short} {lane}")));
        }
    }
    text.push('\n');
    let mut passed = 0;
    let mut failed = 0;
    for scenario in rows {
        text.push_str(&format!("{scenario:<width$}"));
        for run in runs {
            for lane in lanes {
                let mark = match cell(&run.console, scenario, lane) {
                    Some("PASS") => {
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
                text.push_str(&format!("{mark:<18}"));
            }
        }
        text.push('\n');
    }
    text.push_str(&format!("vm: {passed} passed, {failed} failed\n"));
    (text, passed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCENARIOS: [&str; 3] = ["healthy_probes_answered", "ipv6", "user_timeout"];

    /// What the serial console shows before the runner's first line (from
    /// a 6.1 run: the firmware's screen clear runs into the first line).
    const BOOT: &str = "\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)\r
\r
iPXE (http://ipxe.org) 00:03.0 CA00 PCI2.10 PnP PMM+3EFCF000+3EF0F000 CA00\r
Booting from ROM..\x1bc\x1b[?7l\x1b[2JKAT-VM kernel 6.1.0-56-cloud-amd64\r
kernel                 6.1.0-56-cloud-amd64\r
reset reasons          none (kernel before 6.10): told from the stack\r
hook              fentry      kprobe      tracepoint  kat uses\r
keepalive_timer   yes         yes         yes         fentry\r
kat can run here.\r
";

    const END: &str = "RESULTS DONE\r\nKAT-VM exit 0\r\n[  391.220431] reboot: Power down\r\n";

    /// Every scenario's line, lane by lane as the runner goes.
    fn all_pass() -> String {
        let mut text = String::new();
        for lane in LANES {
            for scenario in SCENARIOS {
                text.push_str(&format!("RESULT {lane} {scenario} PASS\r\n"));
            }
        }
        text
    }

    /// (failures, passed cells, failed cells) of one kernel's console.
    fn judge(console: &str, timed_out: bool) -> (Vec<String>, u64, u64) {
        let lanes: Vec<String> = LANES.map(String::from).to_vec();
        let console = parse(console);
        let rows = rows(&SCENARIOS, [&console]);
        let failures = failures(&console, timed_out, &rows, &lanes);
        let run = Run {
            release: "6.12.117+deb12-cloud-amd64".into(),
            log: PathBuf::new(),
            console,
            timed_out,
        };
        let (_, passed, failed) = matrix(&[run], &rows, &lanes);
        (failures, passed, failed)
    }

    #[test]
    fn all_passed() {
        let (failures, passed, failed) = judge(&format!("{BOOT}{}{END}", all_pass()), false);
        assert_eq!(failures, Vec::<String>::new());
        assert_eq!((passed, failed), (9, 0));
    }

    #[test]
    fn one_failed() {
        let console = all_pass().replace(
            "RESULT kprobe user_timeout PASS",
            "RESULT kprobe user_timeout FAIL no death within 30 s",
        );
        let (failures, passed, failed) = judge(&format!("{BOOT}{console}{END}"), false);
        assert_eq!(failures, ["kprobe user_timeout: FAIL no death within 30 s"]);
        assert_eq!((passed, failed), (8, 1));
    }

    #[test]
    fn a_vm_dying_mid_run_fails_every_missing_cell() {
        // The fentry lane done, then an oops took the runner down.
        let fentry: String = all_pass()
            .lines()
            .take(3)
            .map(|l| format!("{l}\n"))
            .collect();
        let console = format!(
            "{BOOT}{fentry}[  140.118204] BUG: kernel NULL pointer dereference, address: 0000000000000008\r
[  140.118911] Oops: 0000 [#1] PREEMPT SMP NOPTI\r
"
        );
        let (failures, passed, failed) = judge(&console, false);
        assert_eq!(failures[0], "the scenario runner did not finish");
        assert!(failures.contains(&"kprobe healthy_probes_answered: no result".to_string()));
        assert!(failures.contains(&"tracepoint user_timeout: no result".to_string()));
        assert_eq!(failures.len(), 1 + 6);
        assert_eq!((passed, failed), (3, 6));
    }

    #[test]
    fn a_vm_that_never_got_to_the_runner_fails_every_cell() {
        let (failures, passed, failed) = judge(BOOT, false);
        assert_eq!(failures.len(), 1 + 9);
        assert_eq!((passed, failed), (0, 9));
    }

    #[test]
    fn a_timeout_fails_even_when_the_results_are_in() {
        let (failures, passed, failed) = judge(&format!("{BOOT}{}", all_pass()), true);
        assert_eq!(failures, [format!("timed out after {VM_TIMEOUT:?}")]);
        assert_eq!((passed, failed), (9, 0));
    }

    #[test]
    fn a_kernel_panic_fails_even_after_the_last_result() {
        let console = format!(
            "{BOOT}{}{END}[  391.301377] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000\r\n",
            all_pass()
        );
        let (failures, ..) = judge(&console, false);
        assert_eq!(failures, ["kernel panic"]);
    }

    #[test]
    fn noise_between_and_inside_the_lines() {
        let console = all_pass()
            // kat's log and the kernel's between results.
            .replace(
                "RESULT fentry ipv6 PASS\r\n",
                "[2026-12-02T16:20:11Z INFO  kat] attached the fentry lane\r
RESULT fentry ipv6 PASS\r
[   61.004113] hrtimer: interrupt took 4113024 ns\r
",
            )
            // The kernel writing into a line: that result is lost.
            .replace(
                "RESULT kprobe ipv6 PASS\r\n",
                "RESULT kprobe ipv6 PA[   98.551092] clocksource: timekeeping watchdog on CPU0\r\nSS\r\n",
            )
            // Kernel messages naming a result are not one.
            .replace(
                "RESULT tracepoint ipv6 PASS\r\n",
                "[  250.000001] audit: comm=\"RESULT tracepoint ipv6 PASS\"\r\n",
            );
        let (failures, passed, failed) = judge(&format!("{BOOT}{console}{END}"), false);
        assert_eq!(
            failures,
            [
                "kprobe ipv6: PA[   98.551092] clocksource: timekeeping watchdog on CPU0",
                "tracepoint ipv6: no result",
            ]
        );
        assert_eq!((passed, failed), (7, 2));
    }

    #[test]
    fn a_scenario_nobody_expected_still_counts() {
        let console = format!(
            "{BOOT}{}RESULT fentry renamed_scenario FAIL gone\r\n{END}",
            all_pass()
        );
        let (failures, passed, failed) = judge(&console, false);
        assert_eq!(
            failures,
            [
                "fentry renamed_scenario: FAIL gone",
                "kprobe renamed_scenario: no result",
                "tracepoint renamed_scenario: no result",
            ]
        );
        assert_eq!((passed, failed), (9, 3));
    }

    #[test]
    fn the_matrix_names_each_kernel_and_lane() {
        let lanes: Vec<String> = LANES.map(String::from).to_vec();
        let console = parse(&format!("{BOOT}{}{END}", all_pass()));
        let rows = rows(&SCENARIOS, [&console]);
        let run = Run {
            release: "6.1.0-56-cloud-amd64".into(),
            log: PathBuf::new(),
            console,
            timed_out: false,
        };
        let (text, ..) = matrix(&[run], &rows, &lanes);
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        // The longest name still leaves a gap before the first cell.
        assert_eq!(
            lines[0],
            "scenario                 6.1 fentry        6.1 kprobe        6.1 tracepoint"
        );
        assert_eq!(
            lines[1],
            "healthy_probes_answered  pass              pass              pass"
        );
        assert_eq!(lines.last(), Some(&"vm: 9 passed, 0 failed"));
    }
}
