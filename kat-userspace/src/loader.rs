//! Loads kat's eBPF programs into the running kernel and attaches them.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::{programs::BtfTracePoint, Btf, Ebpf, EbpfLoader};
use kat_common::{Config, MAX_PORTS};

use crate::{btf::KernelBtf, exit::Failure, kernel};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kat-ebpf"));

/// The lane this build attaches; the fentry and kprobe lanes come later.
pub const LANE: &str = "tracepoint";

/// Loaded, attached programs and what userspace needs to read their records.
pub struct Loaded {
    /// Keeps the programs attached: dropping it detaches them.
    pub ebpf: Ebpf,
    pub hz: u32,
    /// Kernel reset reasons by value; None on kernels without them.
    pub reset_reasons: Option<BTreeMap<u32, String>>,
    pub lane: &'static str,
}

fn unsupported(err: anyhow::Error) -> anyhow::Error {
    Failure::Unsupported(format!("{err:#}")).into()
}

pub fn config_for(kbtf: &KernelBtf, keepalive_timer_fn: u64, ports: &[u16]) -> Result<Config> {
    anyhow::ensure!(
        ports.len() <= MAX_PORTS,
        "at most {MAX_PORTS} --port filters are supported"
    );
    let mut config = Config {
        offsets: kbtf.offsets()?,
        _pad: 0,
        keepalive_timer_fn,
        keepopen_bit: kbtf.keepopen_bit()?,
        nports: ports.len() as u32,
        ports: [0; MAX_PORTS],
    };
    config.ports[..ports.len()].copy_from_slice(ports);
    Ok(config)
}

/// Memory for maps is charged to the memory cgroup on current kernels; a
/// refused RLIMIT_MEMLOCK bump only matters on old ones.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!(
            "setrlimit(RLIMIT_MEMLOCK) refused: {}",
            std::io::Error::last_os_error()
        );
    }
}

pub fn load(ports: &[u16]) -> Result<Loaded> {
    let kbtf = KernelBtf::from_running_kernel().map_err(unsupported)?;
    let keepalive_fn = kernel::keepalive_timer_address().map_err(unsupported)?;
    let config = config_for(&kbtf, keepalive_fn, ports).map_err(unsupported)?;
    let hz = kernel::hz().map_err(unsupported)?;
    let reset_reasons = kbtf.reset_reasons();
    raise_memlock();

    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", &config, true)
        .load(EBPF_OBJECT)
        .context("cannot load kat's eBPF object")?;
    let btf = Btf::from_sys_fs()
        .map_err(|e| unsupported(anyhow::anyhow!("cannot read kernel BTF: {e}")))?;

    let send_reset = if reset_reasons.is_some() {
        "tcp_send_reset"
    } else {
        "tcp_send_reset_noreason"
    };
    for (program, tracepoint) in [
        ("timer_expire_entry", "timer_expire_entry"),
        ("timer_expire_exit", "timer_expire_exit"),
        (send_reset, "tcp_send_reset"),
        ("tcp_receive_reset", "tcp_receive_reset"),
        ("inet_sock_set_state", "inet_sock_set_state"),
        ("tcp_destroy_sock", "tcp_destroy_sock"),
    ] {
        attach(&mut ebpf, &btf, program, tracepoint).map_err(unsupported)?;
    }
    Ok(Loaded {
        ebpf,
        hz,
        reset_reasons,
        lane: LANE,
    })
}

fn attach(ebpf: &mut Ebpf, btf: &Btf, program: &str, tracepoint: &str) -> Result<()> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} is missing from kat's eBPF object"))?
        .try_into()
        .with_context(|| format!("program {program} is not a tp_btf program"))?;
    prog.load(tracepoint, btf)
        .with_context(|| format!("the kernel refused to load tp_btf/{tracepoint}"))?;
    prog.attach()
        .with_context(|| format!("cannot attach tp_btf/{tracepoint}"))?;
    Ok(())
}
