//! The floor of any tracer on this kernel, for the workload tax
//! (`cargo xtask bench`): empty programs on the hooks kat's tracepoint
//! lane runs for every connection and timer of the host, attached until
//! SIGINT. Needs root. Says "floor: attached" on stderr once they are.

use anyhow::{bail, Context as _, Result};
use aya::programs::BtfTracePoint;

static BASELINE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kat-baseline"));

/// Each empty program and the tracepoint it goes on.
const HOOKS: [(&str, &str); 4] = [
    ("set_state_baseline", "inet_sock_set_state"),
    ("destroy_baseline", "tcp_destroy_sock"),
    ("timer_expire_baseline", "timer_expire_entry"),
    ("timer_exit_baseline", "timer_expire_exit"),
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the floor loads eBPF programs: run it as root");
    }
    let btf = aya::Btf::from_sys_fs()?;
    let mut ebpf = aya::Ebpf::load(BASELINE_OBJECT).context("cannot load the baseline object")?;
    for (name, hook) in HOOKS {
        let program: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        program.load(hook, &btf)?;
        program.attach()?;
    }
    eprintln!("floor: attached");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
