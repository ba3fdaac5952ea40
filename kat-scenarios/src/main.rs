//! Runs the scenario suite on loopback, once per lane, and prints one
//! `RESULT <lane> <scenario> PASS|FAIL` line each (read by `cargo xtask
//! vm-test` from the VM's console).
//!
//! Usage: kat-scenarios KAT_BINARY LANE...
//! KAT_SCENARIO=name runs only the scenarios whose name contains it.

use std::panic::{catch_unwind, AssertUnwindSafe};

use kat_scenarios::{loopback::Loopback, KatCmd, SCENARIOS};

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(binary) = args.next() else {
        eprintln!("usage: kat-scenarios KAT_BINARY LANE...");
        return std::process::ExitCode::from(2);
    };
    let mut failed = 0;
    for lane in args {
        let kat = KatCmd {
            binary: binary.clone(),
            lane: Some(lane.clone()),
        };
        let only = std::env::var("KAT_SCENARIO").unwrap_or_default();
        for (i, (name, scenario)) in SCENARIOS.iter().enumerate() {
            if !name.contains(&only) {
                continue;
            }
            let port = 7000 + 2 * i as u16;
            let outcome = catch_unwind(AssertUnwindSafe(|| scenario(&Loopback, &kat, port)));
            match outcome {
                Ok(()) => println!("RESULT {lane} {name} PASS"),
                Err(panic) => {
                    failed += 1;
                    let why = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("panic");
                    let first = why.lines().next().unwrap_or(why);
                    println!("RESULT {lane} {name} FAIL {first}");
                }
            }
        }
    }
    println!("RESULTS DONE");
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
