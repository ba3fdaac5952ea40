//! No residue (root): however kat ends — SIGINT, SIGTERM, SIGHUP, or
//! `kill -9` at any moment, during its attach included — none of its
//! programs stays in the kernel. The kernel's own list of loaded programs
//! is the judge: after each end it must be back to what it was before kat
//! started. One test in its own binary, so no other test of this suite
//! loads programs meanwhile.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const STARTS: usize = 50;
const PORT: &str = "6891";

/// Programs loaded in the kernel now, whoever loaded them.
fn loaded() -> usize {
    aya::programs::loaded_programs()
        .filter(Result::is_ok)
        .count()
}

fn start() -> Child {
    Command::new(env!("CARGO_BIN_EXE_kat"))
        .args(["trace", "--port", PORT])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kat")
}

/// Waits for the kernel's list to be back to `baseline`.
fn back_to(baseline: usize, how: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = loaded();
        if now == baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {how}: {now} programs loaded, {baseline} before kat started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until kat has loaded programs (true), or gives up (false).
fn attached(baseline: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if loaded() > baseline {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn nothing_stays_in_the_kernel_however_kat_ends() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let baseline = loaded();

    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        let mut kat = start();
        assert!(
            attached(baseline, Duration::from_secs(30)),
            "kat loaded no program"
        );
        // Past the attach: the programs are all in.
        std::thread::sleep(Duration::from_millis(500));
        kill(Pid::from_raw(kat.id() as i32), signal).expect("signal");
        kat.wait().expect("wait");
        back_to(baseline, &format!("{signal}"));
    }

    // kill -9 at moments spread over the start: before, during and after
    // the attach (a fixed sequence, so that a failure replays).
    let mut seed: u64 = 0x6b61_745f_7265_7369;
    let (mut before_any, mut with_programs) = (0, 0);
    for i in 0..STARTS {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = Duration::from_millis((seed >> 33) % 1500);
        let mut kat = start();
        std::thread::sleep(delay);
        let programs = loaded();
        kat.kill().expect("kill -9");
        let status = kat.wait().expect("wait");
        if status.code() == Some(0) {
            // Ended before the kill (it cannot: nothing stops it).
            panic!("kat exited by itself on start {i}");
        }
        if programs > baseline {
            with_programs += 1;
        } else {
            before_any += 1;
        }
        back_to(baseline, &format!("kill -9 {delay:?} into start {i}"));
    }
    // The moments did fall on both sides of the attach.
    assert!(
        before_any >= 5 && with_programs >= 5,
        "{before_any} kills before any program was loaded, {with_programs} after"
    );
}
