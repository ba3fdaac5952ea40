//! Runs the scenario suite on loopback, once per lane, and then the NAT
//! story through namespaces (kat_scenarios::nat), and prints one
//! `RESULT <lane> <scenario> PASS|FAIL` line each (read by `cargo xtask
//! vm-test` from the VM's console).
//!
//! Usage: kat-scenarios KAT_BINARY LANE...
//! KAT_SCENARIO=name runs only the scenarios whose name contains it.

use std::panic::{catch_unwind, AssertUnwindSafe};

use kat_scenarios::loopback::Loopback;
use kat_scenarios::nat::{self, Nat};
use kat_scenarios::net::Net as _;
use kat_scenarios::{KatCmd, SCENARIOS};

/// Runs one scenario and prints its RESULT line; true if it passed.
fn result(lane: &str, name: &str, scenario: impl FnOnce()) -> bool {
    match catch_unwind(AssertUnwindSafe(scenario)) {
        Ok(()) => {
            println!("RESULT {lane} {name} PASS");
            true
        }
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("panic");
            let first = why.lines().next().unwrap_or(why);
            println!("RESULT {lane} {name} FAIL {first}");
            false
        }
    }
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(binary) = args.next() else {
        eprintln!("usage: kat-scenarios KAT_BINARY LANE...");
        return std::process::ExitCode::from(2);
    };
    let only = std::env::var("KAT_SCENARIO").unwrap_or_default();
    let mut failed = 0;
    for lane in args {
        let kat = KatCmd {
            binary: binary.clone(),
            lane: Some(lane.clone()),
        };
        for (i, (name, scenario)) in SCENARIOS.iter().enumerate() {
            if name.contains(&only) && !result(&lane, name, || scenario(&Loopback, &kat, port(i))) {
                failed += 1;
            }
        }
        if nat::SCENARIO.contains(&only) {
            let passed = result(&lane, nat::SCENARIO, || {
                let lab = Nat::new("kat", nat::FORGETS_S).expect("the NAT lab");
                nat::nat_forgets_idle_flows(&lab, &kat, port(SCENARIOS.len()), Loopback.slack());
            });
            if !passed {
                failed += 1;
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

/// The i-th scenario's port (and the one above it, for a second server).
fn port(i: usize) -> u16 {
    7000 + 2 * i as u16
}
