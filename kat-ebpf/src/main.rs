//! kat's kernel side: three lanes of hooks (fentry, kprobe, tracepoint)
//! feeding one stream of records.
//!
//! Every field of `struct sock` and friends is read through offsets that
//! userspace resolved from the running kernel's BTF (`CONFIG`), because
//! rustc emits no CO-RE relocations.
#![no_std]
#![no_main]

use core::ffi::c_void;
use core::mem::{size_of, MaybeUninit};

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_jiffies64, bpf_ktime_get_ns, generated,
    },
    macros::{btf_tracepoint, fentry, fexit, kprobe, kretprobe, map},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
    programs::{
        tracing::StackIdContext, BtfTracePointContext, FEntryContext, FExitContext, ProbeContext,
        RetProbeContext,
    },
};
use aya_log_ebpf::debug;
use kat_common::{
    flag, kind, orderly, sock_flag, tcp_state, CloseKey, CloseStats, Config, ConnRecord, Field,
    OwnerRecord, Record, SockState, AF_INET, CLOSES_OVERFLOW_PORT, MAX_PORTS,
};

/// Filled in by the loader; read-only and frozen, so the verifier sees
/// its values as constants.
#[no_mangle]
static CONFIG: Config = unsafe { core::mem::zeroed() };

/// Default ring sizes; the loader sets the real ones (`--ring-size`).
const RING_BYTES: u32 = 1 << 22;

/// Probes, resets and abnormal deaths: what a view must never miss.
#[map]
static PRECIOUS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Orderly closes, sent one by one only for `kat trace --all`: a flood of
/// them fills this ring, never PRECIOUS.
#[map]
static BULK: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Records that did not fit in their ring, by `kind`.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::COUNT as u32, 0);

/// What a socket's death needs that earlier moments knew (bounded: the
/// least recently used entry goes first).
#[map]
static SOCKS: LruHashMap<u64, SockState> = LruHashMap::with_max_entries(131_072, 0);

/// Orderly closes by service and peer, counted here instead of sent.
#[map]
static CLOSES: PerCpuHashMap<CloseKey, CloseStats> = PerCpuHashMap::with_max_entries(4096, 0);

/// Which half of CLOSES counts now (userspace flips it, then reads and
/// empties the other half).
#[map]
static EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// The socket whose keepalive timer runs on this CPU right now, and its
/// probe count before the run; the socket whose retransmission timer runs
/// (tracepoint lane). Timer callbacks do not nest on one CPU.
#[repr(C)]
#[derive(Clone, Copy)]
struct Running {
    sk: u64,
    /// tcp_write_wakeup's arguments, kept for its kretprobe.
    wakeup_sk: u64,
    wakeup_mib: u32,
    probes_before: u8,
    probe_sent: u8,
    /// The socket's TCP state before the run.
    state_before: u8,
    /// The same for the retransmission timer's run.
    write_state_before: u8,
    write_sk: u64,
}

/// Kernel stacks of the RSTs sent: userspace reads which functions they
/// came from (a loop over frames here is more than old verifiers accept).
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(1024, 0);

#[map]
static RUNNING: PerCpuArray<Running> = PerCpuArray::with_max_entries(1, 0);

const IPPROTO_TCP: u16 = 6;
const SHUTDOWN_MASK: u8 = 3;

#[inline(always)]
fn config() -> &'static Config {
    &CONFIG
}

#[inline(always)]
fn cfg_u32(v: &u32) -> u32 {
    // Volatile so that the compiler reads the loaded value, not the default.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn cfg_u64(v: &u64) -> u64 {
    unsafe { core::ptr::read_volatile(v) }
}

/// Reads field `f` of the kernel object at `base` with the probe-read
/// helper: any lane, any pointer; zero when the memory cannot be read
/// (the helper zero-fills its destination then).
#[inline(always)]
fn read<T: Copy>(base: u64, f: &Field<T>) -> T {
    let addr = base.wrapping_add(cfg_u32(&f.offset) as u64);
    let mut v = MaybeUninit::<T>::uninit();
    unsafe {
        generated::bpf_probe_read_kernel(
            v.as_mut_ptr().cast::<c_void>(),
            size_of::<T>() as u32,
            addr as *const c_void,
        );
        v.assume_init()
    }
}

/// Reads field `f` with a plain load: only for `base` a BTF pointer (a
/// tp_btf or fentry argument, or a pointer loaded through one) and `f`
/// inside the struct it points to. The offset is a constant of the frozen
/// CONFIG, so the verifier checks the access against the kernel's BTF and
/// the JIT makes it fault-safe; it costs one instruction where `read`
/// costs a helper call. The socket hooks run for every TCP state change
/// on the host, so they read this way.
#[inline(always)]
fn load<T: Copy>(base: u64, f: &Field<T>) -> T {
    let addr = base.wrapping_add(cfg_u32(&f.offset) as u64);
    unsafe { core::ptr::read_volatile(addr as *const T) }
}

/// Zeroes `n` u64 words at `p` with plain stores. Zeroing with a memset
/// call instead is a call to a global function with a pointer argument,
/// which 6.1's verifier refuses in kprobe programs.
#[inline(always)]
unsafe fn zero_words(p: *mut u64, n: usize) {
    let mut i = 0;
    while i < n {
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
}

/// A zeroed `T` (its size a multiple of 8), without a memset call.
#[inline(always)]
fn zeroed<T>() -> T {
    let mut v = MaybeUninit::<T>::uninit();
    unsafe {
        zero_words(v.as_mut_ptr().cast::<u64>(), size_of::<T>() / 8);
        v.assume_init()
    }
}

const _: () = assert!(size_of::<Record>().is_multiple_of(8));
const _: () = assert!(size_of::<SockState>().is_multiple_of(8));
const _: () = assert!(size_of::<CloseKey>().is_multiple_of(8));
const _: () = assert!(size_of::<CloseStats>().is_multiple_of(8));
const _: () = assert!(size_of::<OwnerRecord>().is_multiple_of(8));
const _: () = assert!(size_of::<ConnRecord>().is_multiple_of(8));

#[inline(always)]
fn port_wanted(sport: u16, dport: u16) -> bool {
    let cfg = config();
    let n = cfg_u32(&cfg.nports) as usize;
    if n == 0 {
        return true;
    }
    let mut i = 0;
    while i < MAX_PORTS {
        if i < n {
            let p = unsafe { core::ptr::read_volatile(&cfg.ports[i]) };
            if p == sport || p == dport {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// Local and remote port of a socket, host order. `inet_sport` survives
/// the unhash at TCP_CLOSE, where `skc_num` is already 0.
#[inline(always)]
fn ports(sk: u64) -> (u16, u16) {
    let o = &config().offsets;
    (
        u16::from_be(read(sk, &o.inet_sport)),
        u16::from_be(read(sk, &o.skc_dport)),
    )
}

/// Fills everything a record says about the socket itself.
#[inline(always)]
fn fill_socket(rec: &mut Record, sk: u64, sport: u16, dport: u16) {
    let cfg = config();
    let o = &cfg.offsets;
    rec.ts_ns = unsafe { bpf_ktime_get_ns() };
    rec.sk = sk;
    rec.sport = sport;
    rec.dport = dport;
    rec.family = read(sk, &o.skc_family);
    if rec.family == AF_INET {
        let s: [u8; 4] = read(sk, &o.skc_rcv_saddr);
        let d: [u8; 4] = read(sk, &o.skc_daddr);
        rec.saddr[..4].copy_from_slice(&s);
        rec.daddr[..4].copy_from_slice(&d);
    } else {
        rec.saddr = read(sk, &o.skc_v6_rcv_saddr);
        rec.daddr = read(sk, &o.skc_v6_daddr);
    }
    let net: u64 = read(sk, &o.skc_net);
    if net != 0 {
        rec.netns = read(net, &o.net_inum);
        rec.sysctl_time = read(net, &o.net_ka_time);
        rec.sysctl_intvl = read(net, &o.net_ka_intvl);
        rec.sysctl_probes = read(net, &o.net_ka_probes);
    }
    rec.uid = read(sk, &o.sk_uid);
    let socket: u64 = read(sk, &o.sk_socket);
    if socket != 0 {
        rec.sock_ino = read(socket, &o.socket_ino);
    }
    rec.state = read(sk, &o.skc_state);
    rec.probes_after = read(sk, &o.icsk_probes_out);
    let sk_flags: u64 = read(sk, &o.sk_flags);
    if (sk_flags >> (cfg_u32(&cfg.keepopen_bit) & 63)) & 1 == 1 {
        rec.flags |= flag::KEEPOPEN;
    }
    rec.sk_err = read(sk, &o.sk_err);
    rec.sk_err_soft = read(sk, &o.sk_err_soft);
    if read(sk, &o.sk_shutdown) == SHUTDOWN_MASK {
        rec.flags |= flag::IN_CLOSE;
    }
    rec.user_timeout_ms = read(sk, &o.icsk_user_timeout);
    rec.packets_out = read(sk, &o.tp_packets_out);
    rec.ka_time = read(sk, &o.tp_ka_time);
    rec.ka_intvl = read(sk, &o.tp_ka_intvl);
    rec.ka_probes = read(sk, &o.tp_ka_probes);
    if let Some(running) = RUNNING.get(0) {
        if running.sk == sk {
            rec.flags |= flag::IN_KEEPALIVE_TIMER;
        }
    }
}

#[inline(always)]
fn fill_task(rec: &mut Record) {
    rec.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    rec.comm = bpf_get_current_comm().unwrap_or_default();
}

/// Reserves a record in `ring`, lets `fill` write it and submits it;
/// counts it lost by `kind` when the ring is full. The reader is woken
/// only when the ring is a quarter full: it drains on its own clock
/// otherwise.
#[inline(always)]
fn emit_to(ring: &RingBuf, record_kind: u8, fill: impl FnOnce(&mut Record)) {
    match ring.reserve::<Record>(0) {
        Some(mut entry) => {
            let rec = entry.as_mut_ptr();
            // SAFETY: the entry is exactly one Record, zeroed before use.
            unsafe {
                zero_words(rec.cast::<u64>(), size_of::<Record>() / 8);
                (*rec).kind = record_kind;
                fill(&mut *rec);
            }
            let pending = ring.query(0); // BPF_RB_AVAIL_DATA
            let size = ring.query(1); // BPF_RB_RING_SIZE
            let wake = if pending > size / 4 {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(wake as u64);
        }
        None => {
            if let Some(lost) = LOST.get_ptr_mut(record_kind as u32) {
                unsafe { *lost += 1 };
            }
            // Off unless RUST_LOG asks: the level is a frozen constant, so
            // the verifier drops this branch. aya-log-ebpf 0.2 ignores the
            // context argument.
            debug!(&(), "ring full: a record of kind {} lost", record_kind);
        }
    }
}

/// A precious record about `sk` (its socket fields filled, then `fill`);
/// the socket is marked as known to userspace, so that its end is sent
/// too.
#[inline(always)]
fn emit(sk: u64, sport: u16, dport: u16, record_kind: u8, fill: impl FnOnce(&mut Record)) {
    let state = sock_state(sk, sport, dport);
    let established_ns = match state {
        Some(st) => unsafe {
            (*st).flags |= sock_flag::REPORTED;
            (*st).established_ns
        },
        None => 0,
    };
    emit_to(&PRECIOUS, record_kind, |rec| {
        fill_socket(rec, sk, sport, dport);
        rec.established_ns = established_ns;
        fill(rec);
    });
}

/// The socket's entry in SOCKS, created when missing. Callers have applied
/// the port filter: only sockets it wants have an entry.
#[inline(always)]
fn sock_state(sk: u64, sport: u16, dport: u16) -> Option<*mut SockState> {
    if let Some(st) = SOCKS.get_ptr_mut(sk) {
        return Some(st);
    }
    let mut fresh: SockState = zeroed();
    fresh.sport = sport;
    fresh.dport = dport;
    // BPF_NOEXIST: another CPU may have just created it; either is fine.
    let _ = SOCKS.insert(sk, fresh, 1);
    SOCKS.get_ptr_mut(sk)
}

/// The TCP timers the tracepoint lane follows.
enum SockTimer {
    Keepalive(u64),
    Retransmit(u64),
}

/// The socket whose keepalive or retransmission timer this is, or None
/// for any other timer. This runs for every timer on the host: one load
/// and two compares before leaving.
#[inline(always)]
fn sock_timer(ctx: &BtfTracePointContext) -> Option<SockTimer> {
    let cfg = config();
    let timer: u64 = ctx.arg(0);
    let function = load(timer, &cfg.offsets.timer_function);
    if function == cfg_u64(&cfg.keepalive_timer_fn) {
        return Some(SockTimer::Keepalive(timer_sock(timer)));
    }
    let write = cfg_u64(&cfg.write_timer_fn);
    if write != 0 && function == write {
        let offset = cfg_u32(&cfg.offsets.retransmit_timer.offset) as u64;
        return Some(SockTimer::Retransmit(timer.wrapping_sub(offset)));
    }
    None
}

/// A retransmission timer run begins: remember the socket and its state.
#[inline(always)]
fn retransmit_enter(sk: u64) {
    if let Some(running) = RUNNING.get_ptr_mut(0) {
        let state_before = read(sk, &config().offsets.skc_state);
        unsafe {
            (*running).write_sk = sk;
            (*running).write_state_before = state_before;
        }
    }
}

/// The run ends. Where it closed the socket (tcp_write_err: a
/// retransmission or user timeout) and the CLOSE tracepoint was skipped,
/// the death goes now rather than when the socket is freed, which for a
/// socket its program still holds may be never.
#[inline(always)]
fn retransmit_exit(sk: u64) {
    let Some(running) = RUNNING.get_ptr_mut(0) else {
        return;
    };
    let (write_sk, before) = unsafe { ((*running).write_sk, (*running).write_state_before) };
    if write_sk == sk && before != tcp_state::CLOSE {
        let state: u8 = read(sk, &config().offsets.skc_state);
        if state == tcp_state::CLOSE {
            close_if_unseen(sk, before);
        }
    }
    unsafe { (*running).write_sk = 0 };
}

/// A keepalive timer run begins on this CPU: remember the socket and its
/// probe count.
#[inline(always)]
fn keepalive_enter(sk: u64) {
    if let Some(running) = RUNNING.get_ptr_mut(0) {
        let o = &config().offsets;
        let probes_before = read(sk, &o.icsk_probes_out);
        let state_before = read(sk, &o.skc_state);
        unsafe {
            (*running).sk = sk;
            (*running).probes_before = probes_before;
            (*running).probe_sent = 0;
            (*running).state_before = state_before;
        }
    }
}

/// Jiffies since the socket last received a segment (data or ACK), as the
/// keepalive timer measures its idle.
#[inline(always)]
fn silent_jiffies(sk: u64, now: u32) -> u32 {
    let o = &config().offsets;
    let lrcv: u32 = read(sk, &o.icsk_lrcvtime);
    let rcv_tstamp: u32 = read(sk, &o.tp_rcv_tstamp);
    core::cmp::min(now.wrapping_sub(lrcv), now.wrapping_sub(rcv_tstamp))
}

/// The run ends: one TIMER_RUN record for a socket with keepalive on.
/// `sk` is None where the hook has no arguments (kretprobe). The run is
/// forgotten only afterwards, so that what is sent here is marked as sent
/// from within the keepalive timer.
#[inline(always)]
fn keepalive_exit(sk: Option<u64>) {
    let Some(running) = RUNNING.get_ptr_mut(0) else {
        return;
    };
    let run = unsafe { *running };
    let sk = sk.unwrap_or(run.sk);
    if run.sk == sk && sk != 0 {
        keepalive_run_ended(sk, &run);
    }
    unsafe { (*running).sk = 0 };
}

#[inline(always)]
fn keepalive_run_ended(sk: u64, run: &Running) {
    let o = &config().offsets;
    let sk_flags: u64 = read(sk, &o.sk_flags);
    if (sk_flags >> (cfg_u32(&config().keepopen_bit) & 63)) & 1 == 0 {
        return;
    }
    let (sport, dport) = ports(sk);
    if !port_wanted(sport, dport) {
        return;
    }
    let state: u8 = read(sk, &o.skc_state);
    if state == tcp_state::CLOSE && run.state_before != tcp_state::CLOSE {
        close_if_unseen(sk, run.state_before);
    }
    let idle = silent_jiffies(sk, unsafe { bpf_jiffies64() } as u32);
    let (probes_before, probe_sent) = (run.probes_before, run.probe_sent);
    emit(sk, sport, dport, kind::TIMER_RUN, |rec| {
        rec.probes_before = probes_before;
        rec.idle_jiffies = idle;
        if probe_sent != 0 {
            rec.flags |= flag::PROBE_SENT;
        }
    });
}

/// The timer closed a socket whose CLOSE tracepoint did not run (the
/// kernel skipped it): its death goes now, as the tracepoint would have
/// sent it.
#[inline(always)]
fn close_if_unseen(sk: u64, old: u8) {
    if let Some(st) = SOCKS.get_ptr_mut(sk) {
        if unsafe { (*st).flags } & sock_flag::CLOSE_SEEN == 0 {
            // Read, not loaded: the verifier knows `sk` only as an offset
            // from the timer.
            socket_closed(sk, old, read(sk, &config().offsets.sk_err));
        }
    }
}

/// tcp_write_wakeup returned: a keepalive probe left (mib KEEPALIVE, not
/// a zero-window probe) when it returned <= 0.
#[inline(always)]
fn write_wakeup_done(sk: u64, mib: u32, ret: i32) {
    if mib != cfg_u32(&config().mib_keepalive) || ret > 0 {
        return;
    }
    if let Some(running) = RUNNING.get_ptr_mut(0) {
        unsafe {
            if (*running).sk == sk {
                (*running).probe_sent = 1;
            }
        }
    }
}

// --- tracepoint lane: the timer tracepoints, filtered on the function ---

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: BtfTracePointContext) -> i32 {
    match sock_timer(&ctx) {
        Some(SockTimer::Keepalive(sk)) => keepalive_enter(sk),
        Some(SockTimer::Retransmit(sk)) => retransmit_enter(sk),
        None => {}
    }
    0
}

#[btf_tracepoint(function = "timer_expire_exit")]
pub fn timer_expire_exit(ctx: BtfTracePointContext) -> i32 {
    match sock_timer(&ctx) {
        Some(SockTimer::Keepalive(sk)) => keepalive_exit(Some(sk)),
        Some(SockTimer::Retransmit(sk)) => retransmit_exit(sk),
        None => {}
    }
    0
}

// --- fentry lane ---

#[inline(always)]
fn timer_sock(timer: u64) -> u64 {
    timer.wrapping_sub(cfg_u32(&config().offsets.keepalive_timer.offset) as u64)
}

#[fentry(function = "tcp_keepalive_timer")]
pub fn fentry_tcp_keepalive_timer(ctx: FEntryContext) -> i32 {
    keepalive_enter(timer_sock(ctx.arg(0)));
    0
}

#[fexit(function = "tcp_keepalive_timer")]
pub fn fexit_tcp_keepalive_timer(ctx: FExitContext) -> i32 {
    keepalive_exit(Some(timer_sock(ctx.arg(0))));
    0
}

/// tcp_write_wakeup(sk, mib) -> int: the return value follows the arguments.
#[fexit(function = "tcp_write_wakeup")]
pub fn fexit_tcp_write_wakeup(ctx: FExitContext) -> i32 {
    write_wakeup_done(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    0
}

/// tcp_send_active_reset(sk, priority, reason): 6.10+.
#[fentry(function = "tcp_send_active_reset")]
pub fn fentry_tcp_send_active_reset(ctx: FEntryContext) -> i32 {
    reset_sent(&ctx, ctx.arg(0), 0, Some(ctx.arg(2)))
}

/// tcp_send_active_reset(sk, priority): before reset reasons.
#[fentry(function = "tcp_send_active_reset")]
pub fn fentry_tcp_send_active_reset_noreason(ctx: FEntryContext) -> i32 {
    reset_sent(&ctx, ctx.arg(0), 0, None)
}

// --- kprobe lane ---

#[kprobe]
pub fn kprobe_tcp_keepalive_timer(ctx: ProbeContext) -> i32 {
    if let Some(timer) = ctx.arg::<u64>(0) {
        keepalive_enter(timer_sock(timer));
    }
    0
}

#[kretprobe]
pub fn kretprobe_tcp_keepalive_timer(_ctx: RetProbeContext) -> i32 {
    keepalive_exit(None);
    0
}

#[kprobe]
pub fn kprobe_tcp_write_wakeup(ctx: ProbeContext) -> i32 {
    let (Some(sk), Some(mib)) = (ctx.arg::<u64>(0), ctx.arg::<u32>(1)) else {
        return 0;
    };
    if let Some(running) = RUNNING.get_ptr_mut(0) {
        unsafe {
            (*running).wakeup_sk = sk;
            (*running).wakeup_mib = mib;
        }
    }
    0
}

#[kretprobe]
pub fn kretprobe_tcp_write_wakeup(ctx: RetProbeContext) -> i32 {
    let ret: i32 = ctx.ret();
    if let Some(running) = RUNNING.get(0) {
        let (sk, mib) = (running.wakeup_sk, running.wakeup_mib);
        write_wakeup_done(sk, mib, ret);
    }
    0
}

#[kprobe]
pub fn kprobe_tcp_send_active_reset(ctx: ProbeContext) -> i32 {
    let Some(sk) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let reason = if cfg_u32(&config().has_reset_reason) != 0 {
        ctx.arg::<u32>(2)
    } else {
        None
    };
    reset_sent(&ctx, sk, 0, reason)
}

#[inline(always)]
fn reset_sent(ctx: &impl StackIdContext, sk: u64, skb: u64, reason: Option<u32>) -> i32 {
    // Only resets the socket sends on its own initiative carry no skb;
    // replies to a segment are not a decision about this connection.
    if sk == 0 || skb != 0 {
        return 0;
    }
    let (sport, dport) = ports(sk);
    if !port_wanted(sport, dport) {
        return 0;
    }
    let stack_id = match ctx.get_stackid(&STACKS, 0) {
        Ok(id) => id as i32,
        Err(e) => {
            debug!(
                ctx,
                "no kernel stack for a RST from port {}: error {}", sport, e
            );
            -1
        }
    };
    let held = mark_reset(sk, sport, dport);
    emit(sk, sport, dport, kind::RESET_SENT, |rec| {
        fill_task(rec);
        rec.stack_id = stack_id;
        if let Some(reason) = reason {
            rec.reset_reason = reason;
            rec.flags |= flag::HAS_RESET_REASON;
        }
    });
    // tcp_close and tcp_disconnect set CLOSE before they send their RST:
    // the CLOSE held back then goes now, after the RST that explains it.
    let (close_ns, old_state) = held;
    if close_ns != 0 {
        emit(sk, sport, dport, kind::STATE_CHANGE, |rec| {
            fill_task(rec);
            rec.ts_ns = close_ns;
            rec.state = tcp_state::CLOSE;
            rec.old_state = old_state;
        });
    }
    0
}

/// A RST went or came: the socket's end is not orderly. Returns the CLOSE
/// held back for it as (its time, the state it left); a time of 0: none.
/// Not an Option: rustc reads an Option's payload from the stack even when
/// it is None, and verifiers before 5.14 refuse any read of a stack slot
/// never written.
#[inline(always)]
fn mark_reset(sk: u64, sport: u16, dport: u16) -> (u64, u8) {
    let Some(st) = sock_state(sk, sport, dport) else {
        return (0, 0);
    };
    unsafe {
        (*st).flags |= sock_flag::RESET;
        if (*st).flags & sock_flag::CLOSING == 0 {
            return (0, 0);
        }
        (*st).flags &= !sock_flag::CLOSING;
        ((*st).close_ns, (*st).close_old_state)
    }
}

/// Kernels with `enum sk_rst_reason` (6.10+): (sk, skb, reason).
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    reset_sent(&ctx, ctx.arg(0), ctx.arg(1), Some(ctx.arg(2)))
}

/// Older kernels: (sk, skb).
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_noreason(ctx: BtfTracePointContext) -> i32 {
    reset_sent(&ctx, ctx.arg(0), ctx.arg(1), None)
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let (sport, dport) = ports(sk);
    if !port_wanted(sport, dport) {
        return 0;
    }
    mark_reset(sk, sport, dport);
    emit(sk, sport, dport, kind::RESET_RECEIVED, |_| {});
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let (old, new) = (old as u8, new as u8);
    let established = new == tcp_state::ESTABLISHED;
    let closed = new == tcp_state::CLOSE
        && old != tcp_state::LISTEN
        && old != tcp_state::SYN_SENT
        && old != tcp_state::SYN_RECV;
    if !established && !closed {
        return 0;
    }
    if load(sk, &config().offsets.sk_protocol) != IPPROTO_TCP {
        return 0;
    }
    if closed && cfg_u32(&config().fault_miss_close) != 0 {
        let (sport, dport) = ports(sk);
        debug!(
            &ctx,
            "CLOSE of {} -> {} skipped on purpose (KAT_FAULT_MISS_CLOSE)", sport, dport
        );
        return 0;
    }
    if established {
        socket_established(sk, old);
    } else {
        socket_closed(sk, old, load(sk, &config().offsets.sk_err));
    }
    0
}

/// Remembered, not sent: the lifetime travels with the death. One map
/// write, no lookup, no helper reads: this runs for every connection on
/// the host.
#[inline(always)]
fn socket_established(sk: u64, old: u8) {
    let o = &config().offsets;
    // skc_num is the local port until the unhash at CLOSE.
    let sport = load(sk, &o.skc_num);
    let dport = u16::from_be(load(sk, &o.skc_dport));
    if !port_wanted(sport, dport) {
        return;
    }
    let mut fresh: SockState = zeroed();
    fresh.established_ns = unsafe { bpf_ktime_get_ns() };
    fresh.flags = match old {
        tcp_state::SYN_SENT => sock_flag::ACTIVE_OPEN,
        tcp_state::SYN_RECV => sock_flag::PASSIVE_OPEN,
        _ => 0,
    };
    fresh.sport = sport;
    fresh.dport = dport;
    let _ = SOCKS.insert(sk, fresh, 0);
}

/// CLOSE: sent now when it follows an error, a RST or a record userspace
/// had; otherwise probably orderly, and held until the socket is freed or
/// a RST shows it was not.
#[inline(always)]
fn socket_closed(sk: u64, old: u8, sk_err: i32) {
    let st = match SOCKS.get_ptr_mut(sk) {
        Some(st) => st,
        None => {
            // Established before kat started: the filter has not seen it.
            let (sport, dport) = ports(sk);
            if !port_wanted(sport, dport) {
                return;
            }
            match sock_state(sk, sport, dport) {
                Some(st) => st,
                None => return,
            }
        }
    };
    let (sport, dport, flags) = unsafe {
        (*st).flags |= sock_flag::CLOSE_SEEN;
        ((*st).sport, (*st).dport, (*st).flags)
    };
    if sk_err != 0 || flags & (sock_flag::RESET | sock_flag::REPORTED) != 0 {
        // How long the connection was silent before it died, for the
        // middlebox verdict: only deaths pay for these reads.
        let o = &config().offsets;
        let now = unsafe { bpf_jiffies64() } as u32;
        let sent: u32 = read(sk, &o.tp_lsndtime);
        let srtt: u32 = read(sk, &o.tp_srtt_us);
        let retrans_stamp: u32 = read(sk, &o.tp_retrans_stamp);
        let clock_us: u64 = read(sk, &o.tp_mstamp);
        let retrans_ago_ms = if retrans_stamp == 0 {
            0
        } else {
            ((clock_us / 1000) as u32).wrapping_sub(retrans_stamp)
        };
        emit(sk, sport, dport, kind::STATE_CHANGE, |rec| {
            fill_task(rec);
            rec.state = tcp_state::CLOSE;
            rec.old_state = old;
            rec.idle_jiffies = silent_jiffies(sk, now);
            rec.sent_jiffies = now.wrapping_sub(sent);
            rec.srtt_us = srtt >> 3;
            rec.retrans_ago_ms = retrans_ago_ms;
        });
    } else {
        unsafe {
            (*st).close_ns = bpf_ktime_get_ns();
            (*st).close_old_state = old;
            (*st).flags |= sock_flag::CLOSING;
        }
    }
}

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let Some(st) = SOCKS.get_ptr_mut(sk) else {
        return 0;
    };
    // The CLOSE tracepoint was skipped and no timer made up for it: the
    // close goes now, late but not lost.
    if unsafe { (*st).flags } & sock_flag::CLOSE_SEEN == 0 {
        socket_closed(sk, tcp_state::UNKNOWN, load(sk, &config().offsets.sk_err));
    }
    let st = unsafe { *st };
    if st.flags & sock_flag::REPORTED != 0 {
        emit_to(&PRECIOUS, kind::DESTROY, |rec| {
            fill_socket(rec, sk, st.sport, st.dport);
            rec.established_ns = st.established_ns;
        });
    } else if st.flags & sock_flag::CLOSING != 0 {
        orderly_close(sk, &st);
    }
    let _ = SOCKS.remove(sk);
    0
}

/// An orderly close: sent one by one when asked, counted by service and
/// peer when a view shows the counts (never both: a reader would count it
/// twice), and nothing more otherwise.
#[inline(always)]
fn orderly_close(sk: u64, st: &SockState) {
    let direction = st.flags & (sock_flag::ACTIVE_OPEN | sock_flag::PASSIVE_OPEN);
    let wanted = cfg_u32(&config().orderly);
    if wanted == orderly::IGNORED {
        return;
    }
    if wanted == orderly::SENT {
        emit_to(&BULK, kind::CLOSED, |rec| {
            fill_socket(rec, sk, st.sport, st.dport);
            rec.ts_ns = st.close_ns;
            rec.state = tcp_state::CLOSE;
            rec.old_state = st.close_old_state;
            rec.established_ns = st.established_ns;
            rec.flags |= direction;
        });
        return;
    }
    let o = &config().offsets;
    let mut key: CloseKey = zeroed();
    key.family = load(sk, &o.skc_family);
    key.direction = direction;
    if key.family == AF_INET {
        key.peer[..4].copy_from_slice(&load(sk, &o.skc_daddr));
    } else {
        key.peer = load(sk, &o.skc_v6_daddr);
    }
    let net = load(sk, &o.skc_net);
    if net != 0 {
        key.netns = load(net, &o.net_inum);
    }
    key.port = match direction {
        sock_flag::ACTIVE_OPEN => st.dport,
        sock_flag::PASSIVE_OPEN => st.sport,
        _ => core::cmp::min(st.sport, st.dport),
    };
    key.epoch = (EPOCH.get(0).copied().unwrap_or(0) & 1) as u8;
    let lifetime = if st.established_ns != 0 {
        Some(st.close_ns.saturating_sub(st.established_ns))
    } else {
        None
    };
    count_close(&key, lifetime);
}

#[inline(always)]
fn count_close(key: &CloseKey, lifetime: Option<u64>) {
    let stats = match CLOSES.get_ptr_mut(key) {
        Some(s) => s,
        None => {
            // BPF_NOEXIST; when the map is full the overflow key (put there
            // by userspace for both epochs) takes the count.
            if CLOSES.insert(key, zeroed::<CloseStats>(), 1).is_err() {
                debug!(
                    &(),
                    "CLOSES is full: port {} counted under the overflow key", key.port
                );
                let mut overflow: CloseKey = zeroed();
                overflow.port = CLOSES_OVERFLOW_PORT;
                overflow.epoch = key.epoch;
                match CLOSES.get_ptr_mut(overflow) {
                    Some(s) => s,
                    None => return,
                }
            } else {
                match CLOSES.get_ptr_mut(key) {
                    Some(s) => s,
                    None => return,
                }
            }
        }
    };
    // SAFETY: a per-CPU value: no other CPU writes it.
    unsafe {
        (*stats).count += 1;
        if let Some(l) = lifetime {
            (*stats).timed += 1;
            (*stats).lifetime_sum_ns += l;
            if l > (*stats).lifetime_max_ns {
                (*stats).lifetime_max_ns = l;
            }
        }
    }
}

// --- the owner index: an iterator over every process's open files ---

/// Writes one record to the reader of the iterator whose context's meta
/// is `meta` (the helper wants `meta->seq`).
#[inline(always)]
fn seq_write<T>(meta: u64, record: &T) {
    let seq: u64 = load(meta, &config().offsets.iter_meta_seq);
    unsafe {
        generated::bpf_seq_write(
            seq as *mut _,
            (record as *const T).cast::<c_void>(),
            size_of::<T>() as u32,
        );
    }
}

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

/// For each socket descriptor of each process (threads that share their
/// leader's file table are skipped by the kernel): the socket's inode and
/// the process, written to the reader of the iterator. One pass over the
/// host's descriptors in the kernel, where a walk of /proc/*/fd costs a
/// readlink each. The context is `struct bpf_iter__task_file`: meta, task,
/// fd, file, each in an 8-byte slot; task and file are NULL at the end.
#[no_mangle]
#[link_section = "iter/task_file"]
pub extern "C" fn kat_owners(ctx: *mut c_void) -> i32 {
    let slots = ctx as *const u64;
    let (meta, task, file) = unsafe {
        (
            core::ptr::read_volatile(slots),
            core::ptr::read_volatile(slots.add(1)),
            core::ptr::read_volatile(slots.add(3)),
        )
    };
    if task == 0 || file == 0 {
        return 0;
    }
    // Every pointer here is a BTF pointer (the context's, or loaded
    // through one): plain loads, checked by the verifier, fault-safe.
    let o = &config().offsets;
    let inode: u64 = load(file, &o.file_inode);
    if inode == 0 || load(inode, &o.inode_mode) & S_IFMT != S_IFSOCK {
        return 0;
    }
    let mut out: OwnerRecord = zeroed();
    out.ino = load(inode, &o.inode_ino);
    out.pid = load(task, &o.task_tgid);
    out.comm = load(task, &o.task_comm);
    seq_write(meta, &out);
    0
}

// --- the connections census: an iterator over a namespace's TCP sockets ---

/// For each established connection (of `--port`) in the network namespace
/// the reader opened the iterator in: keepalive on or off, and the idle
/// setting in force. The context is `struct bpf_iter__tcp`: meta, then
/// sk_common (NULL at the end), each in an 8-byte slot. Listeners, request
/// and time-wait sockets are skipped by their state before anything of
/// `tcp_sock` is read.
#[no_mangle]
#[link_section = "iter/tcp"]
pub extern "C" fn kat_conns(ctx: *mut c_void) -> i32 {
    let slots = ctx as *const u64;
    let (meta, sk) = unsafe {
        (
            core::ptr::read_volatile(slots),
            core::ptr::read_volatile(slots.add(1)),
        )
    };
    if sk == 0 {
        return 0;
    }
    let cfg = config();
    let o = &cfg.offsets;
    if read::<u8>(sk, &o.skc_state) != tcp_state::ESTABLISHED {
        return 0;
    }
    let (sport, dport) = ports(sk);
    if !port_wanted(sport, dport) {
        return 0;
    }
    let mut out: ConnRecord = zeroed();
    out.ka_time = read(sk, &o.tp_ka_time);
    let net: u64 = read(sk, &o.skc_net);
    if net != 0 {
        out.sysctl_time = read(net, &o.net_ka_time);
    }
    let sk_flags: u64 = read(sk, &o.sk_flags);
    if (sk_flags >> (cfg_u32(&cfg.keepopen_bit) & 63)) & 1 == 1 {
        out.flags = flag::KEEPOPEN;
    }
    seq_write(meta, &out);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
