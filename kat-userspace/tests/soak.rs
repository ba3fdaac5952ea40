//! The churn soak, shortened (root): `kat trace`, `kat record` and
//! `kat top` side by side for a few minutes (`KAT_SOAK_SECONDS`, default
//! 150) under a churn of keepalive connections, each probed, answered and
//! closed (every third with a RST). Each view's resident memory must be
//! flat after the warm-up, and each must end cleanly. The hour-long run
//! is `cargo xtask bench --only soak` (docs/performance.md).

use std::time::Duration;

use kat_scenarios::soak::{self, SoakSpec};

#[test]
fn memory_stays_flat_under_churn() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let seconds: u64 = std::env::var("KAT_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let per_second = 200;
    let work = tempfile::tempdir().expect("tempdir");
    let soak = soak::run(
        &SoakSpec {
            kat: env!("CARGO_BIN_EXE_kat").into(),
            duration: Duration::from_secs(seconds),
            every: Duration::from_secs(5),
            per_second,
        },
        work.path(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let report = serde_json::to_string_pretty(&soak.json()).expect("json");
    eprintln!("{report}");
    assert!(
        soak.made as f64 > 0.8 * f64::from(per_second) * seconds as f64,
        "the churn made {} connections",
        soak.made
    );
    for (view, exit) in &soak.exits {
        assert!(
            exit.starts_with("exit status: 0") || exit.starts_with("exit 0"),
            "kat {view}: {exit}"
        );
    }
    for s in &soak.series {
        assert!(
            s.flat(),
            "kat {} grew {:.1} MiB after the warm-up: {report}",
            s.view,
            s.growth_mib()
        );
    }
}
