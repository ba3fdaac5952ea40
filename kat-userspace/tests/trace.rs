//! `kat trace` on the running kernel: the scenario suite (kat-scenarios)
//! between network namespaces this test creates, with the real `kat`
//! binary choosing its lane as it would in production. One test per
//! scenario, named after it, made from the suite's own list.

use kat_scenarios::{netns::Lab, KatCmd, SCENARIOS};

/// Runs scenario `name` in a lab of its own, on ports of its own.
fn run(name: &str) {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let (i, (_, scenario)) = SCENARIOS
        .iter()
        .enumerate()
        .find(|(_, (n, _))| *n == name)
        .unwrap_or_else(|| panic!("{name} is not in kat_scenarios::SCENARIOS"));
    let kat = KatCmd {
        binary: env!("CARGO_BIN_EXE_kat").to_string(),
        lane: None,
    };
    scenario(&Lab::new(), &kat, 6701 + 2 * i as u16);
}

macro_rules! one_test_per_scenario {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*
    };
}

kat_scenarios::with_scenarios!(one_test_per_scenario);
