//! The churn soak (kat_scenarios::soak) for an hour: `kat trace`, `kat
//! record` and `kat top` side by side, their resident memory after the
//! warm-up and at the end.

use std::time::Duration;

use anyhow::{anyhow, Result};
use kat_scenarios::soak::{self, SoakSpec};

use super::proc::TempDir;
use super::Ctx;

pub fn run(ctx: &Ctx) -> Result<String> {
    let seconds: u64 = ctx.pick(3600, 120);
    let per_second = 200;
    let tmp = TempDir::new("soak")?;
    let soak = soak::run(
        &SoakSpec {
            kat: ctx.kat.clone(),
            duration: Duration::from_secs(seconds),
            every: Duration::from_secs(10),
            per_second,
        },
        &tmp.0,
    )
    .map_err(|e| anyhow!(e))?;
    let mut md = format!(
        "### Memory over a churn soak\n\n`kat trace --json`, `kat record --max-size 64MiB` and `kat top` (tmux 160×45), \
         all `--port 7600`, side by side for {:.0} s under a churn of {per_second} \
         connections a second between two lab namespaces ({} made): each with keepalive \
         (idle 1 s), probed and answered once, closed after 1.5 s, every third with a RST. \
         Resident memory (VmRSS) every 10 s; \"after the warm-up\" is the median of the \
         run's second quarter, \"at the end\" of its last quarter; flat: grown by no more \
         than 5 % or 2 MiB.\n\n\
         | view | after the warm-up | at the end | growth | max | flat |\n\
         |---|---|---|---|---|---|\n",
        soak.seconds, soak.made
    );
    for s in &soak.series {
        let max = s.rss_mib.iter().map(|(_, m)| *m).fold(0.0, f64::max);
        md += &format!(
            "| `kat {}` | {:.1} MiB | {:.1} MiB | {:+.2} MiB | {max:.1} MiB | {} |\n",
            s.view,
            s.after_warm_up(),
            s.at_end(),
            s.growth_mib(),
            if s.flat() { "yes" } else { "**no**" },
        );
    }
    md += "\nHow each ended:\n\n";
    for (view, exit) in &soak.exits {
        md += &format!("- `kat {view}`: {exit}\n");
    }
    Ok(md)
}
