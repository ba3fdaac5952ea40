//! Loads kat's eBPF programs into the running kernel and attaches, for
//! each hook, the best lane that works: fentry, then kprobe, then
//! tracepoint.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context as _, Result};
use aya::programs::{BtfTracePoint, FEntry, FExit, Iter, KProbe, Program, ProgramError};
use aya::{Btf, Ebpf, EbpfLoader};
use kat_common::{Config, MAX_PORTS};
use serde::Serialize;

use crate::{btf::KernelBtf, exit::Failure, kernel, owner::Census};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kat-ebpf"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// BPF trampolines on the kernel functions (fastest; most kernels >= 5.5).
    Fentry,
    /// kprobes on the kernel functions (kernels with CONFIG_KPROBES).
    Kprobe,
    /// Tracepoints only (any kernel with BTF).
    Tracepoint,
}

pub const LANES: [Lane; 3] = [Lane::Fentry, Lane::Kprobe, Lane::Tracepoint];

impl Lane {
    pub fn name(self) -> &'static str {
        match self {
            Lane::Fentry => "fentry",
            Lane::Kprobe => "kprobe",
            Lane::Tracepoint => "tracepoint",
        }
    }
}

/// What kat needs to see, each provided by a set of programs per lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// Each run of tcp_keepalive_timer.
    KeepaliveTimer,
    /// tcp_write_wakeup sending a keepalive probe (not a zero-window probe).
    ProbeSent,
    /// tcp_send_active_reset.
    ResetSent,
    /// RST received, state changes, socket freed: tracepoints in every lane.
    SocketEvents,
}

pub const HOOKS: [Hook; 4] = [
    Hook::KeepaliveTimer,
    Hook::ProbeSent,
    Hook::ResetSent,
    Hook::SocketEvents,
];

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::KeepaliveTimer => "keepalive_timer",
            Hook::ProbeSent => "probe_sent",
            Hook::ResetSent => "reset_sent",
            Hook::SocketEvents => "socket_events",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    TpBtf,
    FEntry,
    FExit,
    KProbe,
}

/// One program of kat-ebpf and where it goes.
#[derive(Debug, Clone, Copy)]
struct Prog {
    name: &'static str,
    kind: Kind,
    target: &'static str,
}

const fn prog(name: &'static str, kind: Kind, target: &'static str) -> Prog {
    Prog { name, kind, target }
}

/// Which program variants this kernel needs: the RST hooks' arguments
/// changed when reset reasons came (6.10), and not at once everywhere.
#[derive(Debug, Clone, Copy)]
pub struct Variants {
    /// The tcp_send_reset tracepoint passes a reason.
    pub tracepoint_reason: bool,
    /// tcp_send_active_reset takes a reason (its BTF prototype has 3
    /// parameters; stable kernels may have the enum but not the argument).
    pub function_reason: bool,
}

/// The programs that provide `hook` in `lane`; None when the lane has no
/// way to provide it.
fn programs(hook: Hook, lane: Lane, v: Variants) -> Option<Vec<Prog>> {
    use Kind::*;
    let progs = match (hook, lane) {
        (Hook::KeepaliveTimer, Lane::Fentry) => vec![
            prog("fentry_tcp_keepalive_timer", FEntry, "tcp_keepalive_timer"),
            prog("fexit_tcp_keepalive_timer", FExit, "tcp_keepalive_timer"),
        ],
        (Hook::KeepaliveTimer, Lane::Kprobe) => vec![
            prog("kprobe_tcp_keepalive_timer", KProbe, "tcp_keepalive_timer"),
            prog(
                "kretprobe_tcp_keepalive_timer",
                KProbe,
                "tcp_keepalive_timer",
            ),
        ],
        (Hook::KeepaliveTimer, Lane::Tracepoint) => vec![
            prog("timer_expire_entry", TpBtf, "timer_expire_entry"),
            prog("timer_expire_exit", TpBtf, "timer_expire_exit"),
        ],
        (Hook::ProbeSent, Lane::Fentry) => {
            vec![prog("fexit_tcp_write_wakeup", FExit, "tcp_write_wakeup")]
        }
        (Hook::ProbeSent, Lane::Kprobe) => vec![
            prog("kprobe_tcp_write_wakeup", KProbe, "tcp_write_wakeup"),
            prog("kretprobe_tcp_write_wakeup", KProbe, "tcp_write_wakeup"),
        ],
        // The tracepoint lane counts probes from icsk_probes_out instead.
        (Hook::ProbeSent, Lane::Tracepoint) => return None,
        (Hook::ResetSent, Lane::Fentry) => vec![prog(
            if v.function_reason {
                "fentry_tcp_send_active_reset"
            } else {
                "fentry_tcp_send_active_reset_noreason"
            },
            FEntry,
            "tcp_send_active_reset",
        )],
        (Hook::ResetSent, Lane::Kprobe) => vec![prog(
            "kprobe_tcp_send_active_reset",
            KProbe,
            "tcp_send_active_reset",
        )],
        (Hook::ResetSent, Lane::Tracepoint) => vec![prog(
            if v.tracepoint_reason {
                "tcp_send_reset"
            } else {
                "tcp_send_reset_noreason"
            },
            TpBtf,
            "tcp_send_reset",
        )],
        (Hook::SocketEvents, Lane::Tracepoint) => vec![
            prog("tcp_receive_reset", TpBtf, "tcp_receive_reset"),
            prog("inet_sock_set_state", TpBtf, "inet_sock_set_state"),
            prog("tcp_destroy_sock", TpBtf, "tcp_destroy_sock"),
        ],
        (Hook::SocketEvents, _) => return None,
    };
    Some(progs)
}

/// What differs between the kinds of program: tracing programs (tp_btf,
/// fentry, fexit) are bound to their target when loaded, kprobes when
/// attached.
trait Attachable {
    fn load_for(&mut self, target: &str, btf: &Btf) -> Result<(), ProgramError>;
    fn attach_to(&mut self, target: &str) -> Result<(), ProgramError>;
    fn unload_now(&mut self) -> Result<(), ProgramError>;
}

macro_rules! tracing_program {
    ($($ty:ty),+) => {$(
        impl Attachable for $ty {
            fn load_for(&mut self, target: &str, btf: &Btf) -> Result<(), ProgramError> {
                self.load(target, btf)
            }
            fn attach_to(&mut self, _target: &str) -> Result<(), ProgramError> {
                self.attach().map(drop)
            }
            fn unload_now(&mut self) -> Result<(), ProgramError> {
                self.unload()
            }
        }
    )+};
}

tracing_program!(BtfTracePoint, FEntry, FExit);

impl Attachable for KProbe {
    fn load_for(&mut self, _target: &str, _btf: &Btf) -> Result<(), ProgramError> {
        self.load()
    }
    fn attach_to(&mut self, target: &str) -> Result<(), ProgramError> {
        self.attach(target, 0).map(drop)
    }
    fn unload_now(&mut self) -> Result<(), ProgramError> {
        self.unload()
    }
}

/// `program` as the aya type of `kind`.
fn as_kind(program: &mut Program, kind: Kind) -> Result<&mut dyn Attachable, ProgramError> {
    let typed: &mut dyn Attachable = match kind {
        Kind::TpBtf => <&mut BtfTracePoint>::try_from(program)?,
        Kind::FEntry => <&mut FEntry>::try_from(program)?,
        Kind::FExit => <&mut FExit>::try_from(program)?,
        Kind::KProbe => <&mut KProbe>::try_from(program)?,
    };
    Ok(typed)
}

fn attach_one(ebpf: &mut Ebpf, btf: &Btf, p: &Prog) -> Result<()> {
    let program = ebpf
        .program_mut(p.name)
        .ok_or_else(|| anyhow!("program {} is missing from kat's eBPF object", p.name))?;
    let program = as_kind(program, p.kind)?;
    let what = || format!("{} on {}", p.name, p.target);
    program
        .load_for(p.target, btf)
        .with_context(|| format!("the kernel refused to load {}", what()))?;
    program
        .attach_to(p.target)
        .with_context(|| format!("cannot attach {}", what()))?;
    Ok(())
}

/// Detaches and unloads whatever of a lane's programs got in, so that a
/// half-attached lane does not run beside the one that replaces it.
fn unload(ebpf: &mut Ebpf, progs: &[Prog]) {
    for p in progs {
        let Some(program) = ebpf.program_mut(p.name) else {
            continue;
        };
        if let Err(e) = as_kind(program, p.kind).and_then(|x| x.unload_now()) {
            log::debug!("unloading {}: {e}", p.name);
        }
    }
}

/// Attaches `hook` in `lane`: Ok(false) when the lane has no programs for it.
fn attach_hook(ebpf: &mut Ebpf, btf: &Btf, hook: Hook, lane: Lane, v: Variants) -> Result<bool> {
    let Some(progs) = programs(hook, lane, v) else {
        return Ok(false);
    };
    for p in &progs {
        if let Err(e) = attach_one(ebpf, btf, p) {
            unload(ebpf, &progs);
            return Err(e);
        }
    }
    Ok(true)
}

/// Tries `hook` in `lane` and notes how it went in `attempts`: false when
/// it failed, or when the lane has no programs for it (nothing noted then).
fn try_hook(
    ebpf: &mut Ebpf,
    btf: &Btf,
    hook: Hook,
    lane: Lane,
    v: Variants,
    attempts: &mut Vec<Attempt>,
) -> bool {
    let error = match attach_hook(ebpf, btf, hook, lane, v) {
        Ok(false) => return false,
        Ok(true) => None,
        Err(e) => Some(format!("{e:#}")),
    };
    let attached = error.is_none();
    attempts.push(Attempt { hook, lane, error });
    attached
}

/// The lane policy, for `load` and for `kat doctor`: the keepalive timer
/// and the RST hook each in the first lane of `order` where they work;
/// probes through tcp_write_wakeup in the timer's lane where they work
/// there; the socket events in the tracepoint lane whatever `order` says.
/// `works` tries a hook in a lane (`load`) or looks up how that went
/// (`kat doctor`). Returns the chosen lanes in the order of [`HOOKS`].
pub fn choose(order: &[Lane], mut works: impl FnMut(Hook, Lane) -> bool) -> Vec<(Hook, Lane)> {
    let mut lanes = Vec::new();
    if let Some(timer) = order
        .iter()
        .copied()
        .find(|&lane| works(Hook::KeepaliveTimer, lane))
    {
        lanes.push((Hook::KeepaliveTimer, timer));
        if works(Hook::ProbeSent, timer) {
            lanes.push((Hook::ProbeSent, timer));
        }
    }
    if let Some(reset) = order
        .iter()
        .copied()
        .find(|&lane| works(Hook::ResetSent, lane))
    {
        lanes.push((Hook::ResetSent, reset));
    }
    if works(Hook::SocketEvents, Lane::Tracepoint) {
        lanes.push((Hook::SocketEvents, Lane::Tracepoint));
    }
    lanes
}

/// The hooks kat cannot run without that `lanes` has no lane for.
pub fn missing(lanes: &[(Hook, Lane)]) -> Vec<Hook> {
    [Hook::KeepaliveTimer, Hook::ResetSent, Hook::SocketEvents]
        .into_iter()
        .filter(|&h| !lanes.iter().any(|(hook, _)| *hook == h))
        .collect()
}

/// How one hook was tried in one lane.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub hook: Hook,
    pub lane: Lane,
    /// None: attached; Some: why not.
    pub error: Option<String>,
}

/// One of kat's iterator programs: its name in the object and the kernel
/// object it iterates over.
pub struct IterProgram {
    pub name: &'static str,
    target: &'static str,
}

/// Every process's files: finds sockets' owners. Where it cannot load,
/// owners come from a walk of /proc.
pub const OWNER_ITERATOR: IterProgram = IterProgram {
    name: "kat_owners",
    target: "task_file",
};

/// A network namespace's TCP sockets: counts the connections and their
/// keepalive settings (`kat record --metrics`). Where it cannot load
/// (before 5.9), the gauges stay empty.
pub const CONN_ITERATOR: IterProgram = IterProgram {
    name: "kat_conns",
    target: "tcp",
};

/// Loads an iterator and returns a handle of its own on it, which the
/// thread that runs it keeps (each run attaches and reads it).
fn iterator(ebpf: &mut Ebpf, btf: &Btf, it: &IterProgram) -> Result<Iter> {
    let program: &mut Iter = ebpf
        .program_mut(it.name)
        .ok_or_else(|| anyhow!("program {} is missing from kat's eBPF object", it.name))?
        .try_into()?;
    program
        .load(it.target, btf)
        .with_context(|| format!("the kernel refused to load the {} iterator", it.target))?;
    Ok(Iter::from_program_info(program.info()?, it.name.into())?)
}

/// Loaded, attached programs and what userspace needs to read their records.
pub struct Loaded {
    /// Keeps the programs attached: dropping it detaches them.
    pub ebpf: Ebpf,
    /// Where the owner index learns sockets' owners (taken by the engine).
    pub owners: Census,
    /// The connections census's iterator, where the kernel loaded it.
    pub conns: Option<Iter>,
    pub hz: u32,
    /// Kernel reset reasons by value; None on kernels without them.
    pub reset_reasons: Option<BTreeMap<u32, String>>,
    /// The lane each hook runs in.
    pub lanes: Vec<(Hook, Lane)>,
    /// Every lane tried, in order, and why those that failed failed.
    pub attempts: Vec<Attempt>,
    pub contexts: kernel::ContextRanges,
    /// What the programs log (`debug!` in kat-ebpf), read when RUST_LOG
    /// turns their level on.
    pub kernel_log: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Loaded {
    /// Passes on what the programs logged since the last call.
    pub fn flush_kernel_log(&mut self) {
        if let Some(logger) = &mut self.kernel_log {
            logger.flush();
        }
    }

    /// `keepalive_timer=fentry probe_sent=fentry …`, or the lane alone when
    /// every hook uses it.
    pub fn lanes_text(&self) -> String {
        let main: Vec<Lane> = self
            .lanes
            .iter()
            .filter(|(h, _)| *h != Hook::SocketEvents)
            .map(|(_, l)| *l)
            .collect();
        if main.windows(2).all(|w| w[0] == w[1]) {
            if let Some(l) = main.first() {
                return format!("{} lane", l.name());
            }
        }
        self.lanes
            .iter()
            .map(|(h, l)| format!("{}={}", h.name(), l.name()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn unsupported(err: anyhow::Error) -> anyhow::Error {
    Failure::Unsupported(format!("{err:#}")).into()
}

/// What the programs are told about this kernel.
pub struct KernelFacts {
    pub btf: KernelBtf,
    pub config: Config,
    pub hz: u32,
    pub reset_reasons: Option<BTreeMap<u32, String>>,
    /// Where the functions that tell a RST's origin live.
    pub contexts: kernel::ContextRanges,
    pub variants: Variants,
}

pub fn kernel_facts(ports: &[u16]) -> Result<KernelFacts> {
    anyhow::ensure!(
        ports.len() <= MAX_PORTS,
        "at most {MAX_PORTS} --port filters are supported"
    );
    // kallsyms is formatted by the kernel line by line as it is read: read
    // it on a second core while this one parses the BTF.
    let (btf, kallsyms) = std::thread::scope(|s| {
        let kallsyms = s.spawn(kernel::kallsyms);
        let btf = KernelBtf::from_running_kernel();
        let kallsyms = kallsyms
            .join()
            .unwrap_or_else(|_| Err(anyhow!("reading /proc/kallsyms panicked")));
        (btf, kallsyms)
    });
    let btf = btf.map_err(unsupported)?;
    let kallsyms = kallsyms.map_err(unsupported)?;
    let keepalive_timer_fn = kernel::keepalive_timer_address(&kallsyms).map_err(unsupported)?;
    let hz = kernel::hz().map_err(unsupported)?;
    let reset_reasons = btf.reset_reasons();
    let variants = Variants {
        tracepoint_reason: reset_reasons.is_some(),
        function_reason: reset_reasons.is_some()
            && btf
                .func_params("tcp_send_active_reset")
                .is_some_and(|n| n >= 3),
    };
    let mut config = Config {
        offsets: btf.offsets().map_err(unsupported)?,
        keepalive_timer_fn,
        // Only where the socket's timer is known: never an offset guessed.
        write_timer_fn: if btf.retransmit_timer_member().is_some() {
            kernel::write_timer_address(&kallsyms)
        } else {
            0
        },
        keepopen_bit: btf.keepopen_bit().map_err(unsupported)?,
        nports: ports.len() as u32,
        ports: [0; MAX_PORTS],
        mib_keepalive: btf.enum_constant("LINUX_MIB_TCPKEEPALIVE").ok_or_else(|| {
            unsupported(anyhow!("this kernel's BTF has no LINUX_MIB_TCPKEEPALIVE"))
        })?,
        has_reset_reason: u32::from(variants.function_reason),
        orderly: kat_common::orderly::COUNTED,
        fault_miss_close: u32::from(std::env::var_os(kat_common::FAULT_MISS_CLOSE).is_some()),
        _pad: 0,
    };
    config.ports[..ports.len()].copy_from_slice(ports);
    Ok(KernelFacts {
        btf,
        config,
        hz,
        reset_reasons,
        contexts: kernel::ContextRanges::from_kallsyms(&kallsyms),
        variants,
    })
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

/// Default byte size of each ring buffer (`--ring-size`).
pub const RING_BYTES: u32 = 4 << 20;

pub fn open(config: &Config, ring_bytes: u32) -> Result<(Ebpf, Btf)> {
    raise_memlock();
    let ebpf = EbpfLoader::new()
        .override_global("CONFIG", config, true)
        .override_global(aya_log::LEVEL, &kernel_log_level(), true)
        .map_max_entries("PRECIOUS", ring_bytes)
        .map_max_entries("BULK", ring_bytes)
        .load(EBPF_OBJECT)
        .context("cannot load kat's eBPF object")?;
    let btf =
        Btf::from_sys_fs().map_err(|e| unsupported(anyhow!("cannot read kernel BTF: {e}")))?;
    Ok((ebpf, btf))
}

/// The programs' own log level: kat's (RUST_LOG). A frozen constant, so
/// the verifier removes every log statement it turns off.
fn kernel_log_level() -> u8 {
    // aya_log::Level numbers Error 1 to Trace 5, as log's filters do; 0 is off.
    log::max_level() as u8
}

/// What a live command asks of the programs.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// `--port`: filtered in the kernel.
    pub ports: &'a [u16],
    /// `--lane`: only this lane, or the best per hook.
    pub lane: Option<Lane>,
    /// Each ring's size in bytes: a power of two, a multiple of the page size.
    pub ring_bytes: u32,
    /// What becomes of an orderly close.
    pub orderly: Orderly,
}

/// What the programs do with an orderly close: as little as the view
/// needs, for they do it for every connection of the host.
/// Its value is what the programs read in `Config.orderly`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(u32)]
pub enum Orderly {
    /// Nothing: the view shows deaths only (`kat trace`).
    Ignored = kat_common::orderly::IGNORED,
    /// Counted by service and peer, read as aggregates (`kat top`,
    /// `kat record`).
    #[default]
    Counted = kat_common::orderly::COUNTED,
    /// Sent one by one (`--all`).
    Sent = kat_common::orderly::SENT,
}

/// Loads the programs and attaches every hook, in the forced lane only or
/// in the best lane that works.
pub fn load(opts: &Options) -> Result<Loaded> {
    let forced = opts.lane;
    // Taken apart so that the parsed BTF is freed before aya parses its own.
    let KernelFacts {
        mut config,
        hz,
        reset_reasons,
        contexts,
        variants: v,
        ..
    } = kernel_facts(opts.ports)?;
    config.orderly = opts.orderly as u32;
    let (mut ebpf, btf) = open(&config, opts.ring_bytes)?;
    let order: Vec<Lane> = forced.map_or(LANES.to_vec(), |l| vec![l]);
    let mut attempts = Vec::new();
    let lanes = choose(&order, |hook, lane| {
        try_hook(&mut ebpf, &btf, hook, lane, v, &mut attempts)
    });
    if let Some(&hook) = missing(&lanes).first() {
        return Err(unsupported(cannot_hook(hook, forced, &attempts)));
    }
    let owners = match iterator(&mut ebpf, &btf, &OWNER_ITERATOR) {
        Ok(iter) => Census::Kernel(Box::new(iter)),
        Err(e) => {
            log::info!("socket owners from a walk of /proc: {e:#}");
            Census::default()
        }
    };
    let conns = iterator(&mut ebpf, &btf, &CONN_ITERATOR)
        .map_err(|e| log::info!("no connections census: {e:#}"))
        .ok();
    let kernel_log = if kernel_log_level() > 0 {
        aya_log::EbpfLogger::init(&mut ebpf)
            .map_err(|e| log::warn!("the programs' log cannot be read: {e}"))
            .ok()
    } else {
        None
    };
    Ok(Loaded {
        owners,
        conns,
        ebpf,
        hz,
        reset_reasons,
        lanes,
        attempts,
        contexts,
        kernel_log,
    })
}

/// Why `load` cannot run: how `hook` failed in each lane it was tried in.
fn cannot_hook(hook: Hook, forced: Option<Lane>, attempts: &[Attempt]) -> anyhow::Error {
    let failed = attempts
        .iter()
        .filter(|a| a.hook == hook)
        .filter_map(|a| Some((a.lane, a.error.as_deref()?)));
    if hook == Hook::SocketEvents {
        // Tried in the tracepoint lane only, whatever `--lane` says.
        let why: Vec<&str> = failed.map(|(_, e)| e).collect();
        return anyhow!("{}", why.join("; "));
    }
    let why: Vec<String> = failed
        .map(|(lane, e)| format!("{}: {e}", lane.name()))
        .collect();
    let what = match forced {
        Some(lane) => format!("--lane {} cannot hook {}", lane.name(), hook.name()),
        None => format!("no lane can hook {}", hook.name()),
    };
    anyhow!(
        "{what} on this kernel ({}); `kat doctor` shows every lane",
        why.join("; ")
    )
}

/// For `kat doctor`: whether each hook loads and attaches in each lane,
/// each lane tried in a fresh copy of the programs.
pub fn probe_all(facts: &KernelFacts) -> Result<Vec<Attempt>> {
    let v = facts.variants;
    let mut attempts = Vec::new();
    for lane in LANES {
        let (mut ebpf, btf) = open(&facts.config, RING_BYTES)?;
        for hook in HOOKS {
            try_hook(&mut ebpf, &btf, hook, lane, v, &mut attempts);
        }
    }
    Ok(attempts)
}

/// For `kat doctor`: whether an iterator loads here.
pub fn probe_iterator(facts: &KernelFacts, it: &IterProgram) -> Result<()> {
    let (mut ebpf, btf) = open(&facts.config, RING_BYTES)?;
    iterator(&mut ebpf, &btf, it).map(drop)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use aya_obj::{Object, ProgramSection};

    use super::*;

    /// A kernel where each hook attaches in the lanes given.
    fn kernel<'a>(works: &'a [(Hook, &'a [Lane])]) -> impl FnMut(Hook, Lane) -> bool + 'a {
        move |hook, lane| {
            works
                .iter()
                .any(|(h, lanes)| *h == hook && lanes.contains(&lane))
        }
    }

    const ALL: &[Lane] = &LANES;

    #[test]
    fn each_hook_falls_back_to_the_next_lane_that_works() {
        // Everything everywhere: the fastest lane.
        let lanes = choose(
            &LANES,
            kernel(&[
                (Hook::KeepaliveTimer, ALL),
                (Hook::ProbeSent, ALL),
                (Hook::ResetSent, ALL),
                (Hook::SocketEvents, ALL),
            ]),
        );
        assert_eq!(
            lanes,
            [
                (Hook::KeepaliveTimer, Lane::Fentry),
                (Hook::ProbeSent, Lane::Fentry),
                (Hook::ResetSent, Lane::Fentry),
                (Hook::SocketEvents, Lane::Tracepoint),
            ]
        );
        assert!(missing(&lanes).is_empty());
        // tcp_keepalive_timer renamed or inlined (no fentry, no kprobe):
        // the timer tracepoints; tcp_write_wakeup goes with the timer's
        // lane (kat tells probes from the timer's own run there);
        // tcp_send_active_reset still by kprobe where fentry fails.
        let lanes = choose(
            &LANES,
            kernel(&[
                (Hook::KeepaliveTimer, &[Lane::Tracepoint]),
                (Hook::ProbeSent, &[Lane::Fentry, Lane::Tracepoint]),
                (Hook::ResetSent, &[Lane::Kprobe, Lane::Tracepoint]),
                (Hook::SocketEvents, ALL),
            ]),
        );
        assert_eq!(
            lanes,
            [
                (Hook::KeepaliveTimer, Lane::Tracepoint),
                (Hook::ProbeSent, Lane::Tracepoint),
                (Hook::ResetSent, Lane::Kprobe),
                (Hook::SocketEvents, Lane::Tracepoint),
            ]
        );
        // tcp_write_wakeup gone in the timer's lane: kat runs without it.
        let lanes = choose(
            &LANES,
            kernel(&[
                (Hook::KeepaliveTimer, ALL),
                (Hook::ResetSent, ALL),
                (Hook::SocketEvents, ALL),
            ]),
        );
        assert!(!lanes.iter().any(|(h, _)| *h == Hook::ProbeSent));
        assert!(missing(&lanes).is_empty());
    }

    #[test]
    fn a_hook_no_lane_can_take_stops_kat_naming_every_lane_tried() {
        let lanes = choose(
            &LANES,
            kernel(&[(Hook::ResetSent, ALL), (Hook::SocketEvents, ALL)]),
        );
        assert_eq!(missing(&lanes), [Hook::KeepaliveTimer]);
        let attempts: Vec<Attempt> = LANES
            .iter()
            .map(|&lane| Attempt {
                hook: Hook::KeepaliveTimer,
                lane,
                error: Some(format!("no {} here", lane.name())),
            })
            .collect();
        let err = unsupported(cannot_hook(Hook::KeepaliveTimer, None, &attempts));
        assert_eq!(crate::exit::code(&err), crate::exit::UNSUPPORTED);
        let text = format!("{err:#}");
        assert!(
            text.starts_with("no lane can hook keepalive_timer"),
            "{text}"
        );
        for lane in LANES {
            assert!(
                text.contains(&format!("{}: no {} here", lane.name(), lane.name())),
                "{text}"
            );
        }
        // A forced lane is the only one tried, and said so.
        let lanes = choose(
            &[Lane::Kprobe],
            kernel(&[(Hook::KeepaliveTimer, &[Lane::Fentry])]),
        );
        assert_eq!(missing(&lanes)[0], Hook::KeepaliveTimer);
        let err = cannot_hook(Hook::KeepaliveTimer, Some(Lane::Kprobe), &attempts[1..2]);
        assert!(format!("{err}").starts_with("--lane kprobe cannot hook keepalive_timer"));
    }

    /// Every program `programs` names, on every kind of kernel.
    fn table() -> Vec<Prog> {
        let mut all = Vec::new();
        for tracepoint_reason in [false, true] {
            for function_reason in [false, true] {
                let v = Variants {
                    tracepoint_reason,
                    function_reason,
                };
                for hook in HOOKS {
                    for lane in LANES {
                        all.extend(programs(hook, lane, v).into_iter().flatten());
                    }
                }
            }
        }
        all
    }

    fn object() -> Object {
        Object::parse(EBPF_OBJECT).expect("kat's eBPF object parses")
    }

    #[test]
    fn every_program_the_loader_asks_for_is_in_the_object_as_its_kind() {
        let object = object();
        for p in table() {
            let section = &object
                .programs
                .get(p.name)
                .unwrap_or_else(|| panic!("{} is not in kat's eBPF object", p.name))
                .section;
            let as_kind = match p.kind {
                Kind::TpBtf => matches!(section, ProgramSection::BtfTracePoint),
                Kind::FEntry => matches!(section, ProgramSection::FEntry { sleepable: false }),
                Kind::FExit => matches!(section, ProgramSection::FExit { sleepable: false }),
                Kind::KProbe => {
                    matches!(section, ProgramSection::KProbe | ProgramSection::KRetProbe)
                }
            };
            assert!(
                as_kind,
                "{} is {section:?} in the object; the loader attaches it as {:?}",
                p.name, p.kind
            );
        }
    }

    #[test]
    fn the_owner_iterator_is_in_the_object_as_an_iterator() {
        let object = object();
        let program = object
            .programs
            .get(OWNER_ITERATOR.name)
            .expect("the owner iterator is in kat's eBPF object");
        assert!(
            matches!(program.section, ProgramSection::Iter { sleepable: false }),
            "{:?}",
            program.section
        );
    }

    #[test]
    fn the_object_holds_only_programs_the_loader_attaches() {
        let mut asked: BTreeSet<&str> = table().iter().map(|p| p.name).collect();
        asked.insert(OWNER_ITERATOR.name);
        asked.insert(CONN_ITERATOR.name);
        let object = object();
        let unused: BTreeSet<&str> = object
            .programs
            .keys()
            .map(String::as_str)
            .filter(|name| !asked.contains(name))
            .collect();
        assert!(
            unused.is_empty(),
            "kat ships programs it never attaches: {unused:?}"
        );
    }
}
