//! Records shared by the eBPF programs (kat-ebpf) and userspace (kat).
//!
//! Everything here is `#[repr(C)]` with explicit padding so that both sides
//! agree byte for byte; sizes are asserted at compile time.
#![no_std]

use core::marker::PhantomData;

/// What a [`Record`] reports.
pub mod kind {
    /// The keepalive timer ran for a socket with SO_KEEPALIVE on.
    pub const TIMER_RUN: u8 = 1;
    /// The socket sent a RST of its own (tcp_send_active_reset).
    pub const RESET_SENT: u8 = 2;
    /// The socket received a RST (tcp_reset).
    pub const RESET_RECEIVED: u8 = 3;
    /// The socket changed state to ESTABLISHED or CLOSE.
    pub const STATE_CHANGE: u8 = 4;
    /// The kernel is freeing the socket (tcp_destroy_sock): sent only for
    /// sockets userspace already heard of.
    pub const DESTROY: u8 = 5;
    /// An orderly close (no error, no RST), sent one by one only when
    /// [`Config::orderly`] asks (`kat trace --all`), through the bulk
    /// ring; otherwise counted in `CLOSES` or not at all.
    pub const CLOSED: u8 = 6;
    /// Kinds are below this (the per-kind lost counters' length).
    pub const COUNT: usize = 7;

    /// The name loss counts are shown under.
    pub fn name(kind: usize) -> &'static str {
        match kind as u8 {
            TIMER_RUN => "timer_run",
            RESET_SENT => "reset_sent",
            RESET_RECEIVED => "reset_received",
            STATE_CHANGE => "death",
            DESTROY => "destroy",
            CLOSED => "closed",
            _ => "other",
        }
    }
}

/// Bits of [`Record::flags`].
pub mod flag {
    /// SOCK_KEEPOPEN was set (SO_KEEPALIVE on).
    pub const KEEPOPEN: u8 = 1;
    /// The record was made inside the keepalive timer on this CPU.
    pub const IN_KEEPALIVE_TIMER: u8 = 2;
    /// `reset_reason` holds the kernel's `enum sk_rst_reason` value.
    pub const HAS_RESET_REASON: u8 = 4;
    /// `sk_shutdown` was SHUTDOWN_MASK: the application is in close().
    pub const IN_CLOSE: u8 = 8;
    /// tcp_write_wakeup sent a keepalive probe in this timer run
    /// (fentry and kprobe lanes).
    pub const PROBE_SENT: u8 = 16;
    /// The connection was opened from here (SYN_SENT → ESTABLISHED).
    pub const ACTIVE_OPEN: u8 = 32;
    /// The connection was accepted here (SYN_RECV → ESTABLISHED).
    pub const PASSIVE_OPEN: u8 = 64;
}

/// Bits of [`Record::context`]: kernel functions on the stack when a RST
/// was sent (how the reason is told on kernels without reset reasons).
/// Userspace fills them in from the record's `stack_id`.
pub mod context {
    pub const KEEPALIVE_TIMER: u8 = 1;
    pub const TCP_CLOSE: u8 = 2;
    pub const TCP_DISCONNECT: u8 = 4;
    pub const OUT_OF_RESOURCES: u8 = 8;
}

/// TCP states as the kernel numbers them (include/net/tcp_states.h: stable ABI).
pub mod tcp_state {
    /// Not a kernel state: a CLOSE learnt of only as the socket was freed
    /// does not know the state it left.
    pub const UNKNOWN: u8 = 0;
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Most ports `--port` may name; the filter is unrolled in the kernel.
pub const MAX_PORTS: usize = 8;

/// One kernel observation about one socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub ts_ns: u64,
    /// Kernel address of the `struct sock`: the socket's identity while it lives.
    pub sk: u64,
    /// Inode of the socket's file (0 once the application closed it).
    pub sock_ino: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    pub uid: u32,
    /// Current task; meaningful only for records made in process context.
    pub pid: u32,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    pub family: u16,
    pub kind: u8,
    /// `sk_state` (for STATE_CHANGE: the new state).
    pub state: u8,
    /// For STATE_CHANGE: the state before.
    pub old_state: u8,
    /// `icsk_probes_out` before the keepalive timer ran (TIMER_RUN).
    pub probes_before: u8,
    /// `icsk_probes_out` when the record was made.
    pub probes_after: u8,
    pub flags: u8,
    /// `tp->keepalive_time` in jiffies; 0 means the namespace sysctl applies.
    pub ka_time: u32,
    pub ka_intvl: u32,
    /// The socket's network namespace sysctls, in jiffies.
    pub sysctl_time: u32,
    pub sysctl_intvl: u32,
    /// `icsk_user_timeout` in milliseconds; 0 when unset.
    pub user_timeout_ms: u32,
    /// Jiffies since the last segment was received (the kernel's keepalive
    /// idle): TIMER_RUN, and a STATE_CHANGE to CLOSE.
    pub idle_jiffies: u32,
    pub packets_out: u32,
    pub sk_err: i32,
    pub sk_err_soft: i32,
    /// Raw `enum sk_rst_reason` when [`flag::HAS_RESET_REASON`] is set.
    pub reset_reason: u32,
    pub ka_probes: u8,
    pub sysctl_probes: u8,
    /// RESET_SENT: [`context`] bits, set by userspace from `stack_id`.
    pub context: u8,
    pub _pad0: u8,
    /// Current task's comm; meaningful only in process context.
    pub comm: [u8; 16],
    /// RESET_SENT: the kernel stack's id in the STACKS map; -1 if none.
    pub stack_id: i32,
    /// When kat saw the socket reach ESTABLISHED (ts_ns clock); 0 if it
    /// did not. Kept in the kernel's `SOCKS` map and sent with deaths.
    pub established_ns: u64,
    /// STATE_CHANGE to CLOSE: jiffies since new data was last sent
    /// (`tp->lsndtime`; retransmissions and probes do not count).
    pub sent_jiffies: u32,
    /// STATE_CHANGE to CLOSE: the smoothed round trip, µs (0: none yet).
    pub srtt_us: u32,
    /// STATE_CHANGE to CLOSE: ms since the first retransmission of the
    /// data still unacknowledged (`tp->retrans_stamp` against the socket's
    /// clock); 0 when nothing was retransmitted.
    pub retrans_ago_ms: u32,
    pub _pad1: u32,
}

pub const RECORD_SIZE: usize = 168;
const _: () = assert!(core::mem::size_of::<Record>() == RECORD_SIZE);

/// A kernel struct field: its byte offset (resolved from the running
/// kernel's BTF) and, as `T`, the width the programs read. The width is
/// said only here: the resolver checks `size_of::<T>()` against the
/// kernel's, and the programs' reads return a `T`, so the two cannot
/// disagree.
#[repr(transparent)]
pub struct Field<T> {
    pub offset: u32,
    width: PhantomData<T>,
}

impl<T> Field<T> {
    pub const fn at(offset: u32) -> Self {
        Self {
            offset,
            width: PhantomData,
        }
    }

    /// Bytes read at `offset` (0 for an embedded struct, never read).
    pub const fn width(&self) -> usize {
        core::mem::size_of::<T>()
    }
}

impl<T> Clone for Field<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Field<T> {}
impl<T> Default for Field<T> {
    fn default() -> Self {
        Self::at(0)
    }
}
impl<T> PartialEq for Field<T> {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
    }
}
impl<T> Eq for Field<T> {}
impl<T> core::fmt::Debug for Field<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.offset)
    }
}
#[cfg(feature = "user")]
impl<T> serde::Serialize for Field<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.offset)
    }
}

/// Declares [`Offsets`] and its listing from one list of fields.
macro_rules! offsets {
    ($( $(#[$doc:meta])* $name:ident: $ty:ty, )*) => {
        /// Where the programs find each kernel field they read, resolved
        /// from the running kernel's BTF: Rust eBPF gets no CO-RE
        /// relocations, so every field read goes through one of these.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[cfg_attr(feature = "user", derive(serde::Serialize))]
        pub struct Offsets {
            $( $(#[$doc])* pub $name: Field<$ty>, )*
        }

        impl Offsets {
            pub const COUNT: usize = [$(stringify!($name)),*].len();

            /// Each field's name, offset and width (`kat doctor`).
            pub fn each(&self) -> [(&'static str, u32, usize); Self::COUNT] {
                [$( (stringify!($name), self.$name.offset, self.$name.width()) ),*]
            }
        }
    };
}

offsets! {
    /// `timer_list.function`
    timer_function: u64,
    /// The socket's keepalive timer, an embedded struct (never read):
    /// `inet_connection_sock.icsk_keepalive_timer` where the kernel has it
    /// (6.19, and backported to stable 6.1 and 6.12 releases),
    /// `sock.sk_timer` before.
    keepalive_timer: (),
    /// `inet_connection_sock.icsk_retransmit_timer`, embedded (never read).
    retransmit_timer: (),
    skc_family: u16,
    skc_state: u8,
    /// `inet_sock.inet_sport`: local port, network order; still set at
    /// TCP_CLOSE, after the unhash.
    inet_sport: u16,
    /// `skc_num`: local port, host order; 0 once the socket is unhashed.
    skc_num: u16,
    /// `skc_dport`: remote port, network order.
    skc_dport: u16,
    skc_rcv_saddr: [u8; 4],
    skc_daddr: [u8; 4],
    skc_v6_rcv_saddr: [u8; 16],
    skc_v6_daddr: [u8; 16],
    /// `sock.__sk_common.skc_net` (a `struct net *`).
    skc_net: u64,
    /// `net.ns.inum`
    net_inum: u32,
    net_ka_time: u32,
    net_ka_intvl: u32,
    net_ka_probes: u8,
    sk_flags: u64,
    sk_protocol: u16,
    sk_err: i32,
    sk_err_soft: i32,
    sk_shutdown: u8,
    sk_uid: u32,
    /// `sock.sk_socket` (a `struct socket *`).
    sk_socket: u64,
    /// From a `struct socket *` to its inode's `i_ino` (socket_alloc layout).
    socket_ino: u64,
    icsk_probes_out: u8,
    icsk_user_timeout: u32,
    icsk_lrcvtime: u32,
    tp_rcv_tstamp: u32,
    /// `tcp_sock.lsndtime`: when new data was last sent (tcp_jiffies32).
    tp_lsndtime: u32,
    /// `tcp_sock.srtt_us`: the smoothed round trip in µs, times 8.
    tp_srtt_us: u32,
    /// `tcp_sock.retrans_stamp`: the first retransmission of the data in
    /// flight, in the socket's millisecond clock; 0 when none.
    tp_retrans_stamp: u32,
    /// `tcp_sock.tcp_mstamp`: the socket's clock, µs.
    tp_mstamp: u64,
    tp_packets_out: u32,
    tp_ka_time: u32,
    tp_ka_intvl: u32,
    tp_ka_probes: u8,
    /// The owner iterator's fields: `bpf_iter_meta.seq` (a `struct
    /// seq_file *`), the task's `tgid` and `comm`, `file.f_inode`, and the
    /// inode's `i_mode` and `i_ino`.
    iter_meta_seq: u64,
    task_tgid: u32,
    task_comm: [u8; 16],
    file_inode: u64,
    inode_mode: u16,
    inode_ino: u64,
}

/// One socket descriptor as the owner iterator (`kat_owners`, over every
/// task's files) writes it: the socket's inode and the process holding it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerRecord {
    pub ino: u64,
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

pub const OWNER_RECORD_SIZE: usize = 32;
const _: () = assert!(core::mem::size_of::<OwnerRecord>() == OWNER_RECORD_SIZE);

/// One established connection as the connections iterator (`kat_conns`,
/// over one network namespace's TCP sockets) writes it: whether keepalive
/// is on and the idle setting in force.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnRecord {
    /// `tp->keepalive_time` in jiffies; 0 means the namespace sysctl applies.
    pub ka_time: u32,
    /// The namespace's `net.ipv4.tcp_keepalive_time`, in jiffies.
    pub sysctl_time: u32,
    /// [`flag::KEEPOPEN`] when SO_KEEPALIVE is on.
    pub flags: u8,
    pub _pad: [u8; 7],
}

pub const CONN_RECORD_SIZE: usize = 16;
const _: () = assert!(core::mem::size_of::<ConnRecord>() == CONN_RECORD_SIZE);

/// Everything the programs are told at load time (one read-only global).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub offsets: Offsets,
    /// Bit number of SOCK_KEEPOPEN in `sk_flags` (enum sock_flags).
    pub keepopen_bit: u32,
    /// Address of `tcp_keepalive_timer` (from /proc/kallsyms).
    pub keepalive_timer_fn: u64,
    /// Address of `tcp_write_timer`, the retransmission timer; 0 where
    /// kallsyms does not name it.
    pub write_timer_fn: u64,
    /// How many entries of `ports` are in use; 0 = no port filter.
    pub nports: u32,
    pub ports: [u16; MAX_PORTS],
    /// Value of LINUX_MIB_TCPKEEPALIVE: tcp_write_wakeup's keepalive caller.
    pub mib_keepalive: u32,
    /// Non-zero when tcp_send_active_reset takes a reason (6.10+).
    pub has_reset_reason: u32,
    /// What becomes of an orderly close: one of [`orderly`].
    pub orderly: u32,
    /// Non-zero only in tests ([`FAULT_MISS_CLOSE`]): the CLOSE
    /// tracepoint does nothing, as when the kernel skips it.
    pub fault_miss_close: u32,
    /// Explicit: the struct must have no implicit padding (aya sets it as
    /// plain bytes), and its fields leave four bytes over.
    pub _pad: u32,
}

/// What the programs do with an orderly close ([`Config::orderly`]): only
/// what the view needs, for they run on every connection of the host.
pub mod orderly {
    /// Nothing (`kat trace`: it shows deaths only).
    pub const IGNORED: u32 = 0;
    /// Counted by service and peer in `CLOSES` (`kat top`, `kat record`).
    pub const COUNTED: u32 = 1;
    /// Sent one by one as [`super::kind::CLOSED`] records (`--all`).
    pub const SENT: u32 = 2;
}

/// Set in kat's environment, the CLOSE tracepoint does nothing: tests show
/// that a keepalive death the kernel skipped that tracepoint for is still
/// reported.
pub const FAULT_MISS_CLOSE: &str = "KAT_FAULT_MISS_CLOSE";

/// What the kernel remembers about a socket between its records
/// (`SOCKS`, an LRU map keyed by the socket's address): what is needed
/// only at its death travels once, with the death.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    pub established_ns: u64,
    /// A CLOSE not sent yet: it may turn out orderly (counted, not sent)
    /// or be followed by a RST (then sent with it).
    pub close_ns: u64,
    pub close_old_state: u8,
    /// [`sock_flag`] bits.
    pub flags: u8,
    /// Host order, as the port filter saw them when the entry was made:
    /// only sockets the filter wants have an entry.
    pub sport: u16,
    pub dport: u16,
    pub _pad: [u8; 2],
}

/// Bits of [`SockState::flags`].
pub mod sock_flag {
    /// Userspace has had a record of this socket: it hears of its end too.
    pub const REPORTED: u8 = 1;
    /// A RST was sent or received: its close is not orderly.
    pub const RESET: u8 = 2;
    /// A CLOSE is held in `close_ns`.
    pub const CLOSING: u8 = 4;
    /// The CLOSE tracepoint ran for this socket. The kernel skips a
    /// program that fires while it already runs on that CPU (a softirq
    /// interrupting it in a process's close); without this mark, the
    /// keepalive timer that leaves its socket closed, or else the socket's
    /// free, sends the CLOSE instead.
    pub const CLOSE_SEEN: u8 = 8;
    /// Direction, as in [`super::flag`].
    pub const ACTIVE_OPEN: u8 = super::flag::ACTIVE_OPEN;
    pub const PASSIVE_OPEN: u8 = super::flag::PASSIVE_OPEN;
}

/// `CLOSES` key: orderly closes of one service and peer. The epoch lets
/// userspace read one half while the kernel counts into the other.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseKey {
    /// The remote address (IPv4 in the first four bytes).
    pub peer: [u8; 16],
    pub netns: u32,
    /// The service port: local when accepted, remote when connected.
    pub port: u16,
    /// [`flag::ACTIVE_OPEN`], [`flag::PASSIVE_OPEN`] or 0 (unknown).
    pub direction: u8,
    /// 0 or 1: the half of `CLOSES` this was counted in.
    pub epoch: u8,
    pub family: u16,
    pub _pad: [u8; 6],
}

/// The key every close goes to once `CLOSES` is full (never a real
/// service: port 0), inserted by userspace at start for both epochs.
pub const CLOSES_OVERFLOW_PORT: u16 = 0;

/// `CLOSES` value, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseStats {
    pub count: u64,
    /// Closes whose ESTABLISHED kat saw (their lifetime is known).
    pub timed: u64,
    pub lifetime_sum_ns: u64,
    pub lifetime_max_ns: u64,
}

const _: () = assert!(core::mem::size_of::<Offsets>() == Offsets::COUNT * 4);
const _: () = assert!(
    core::mem::size_of::<Config>() == Offsets::COUNT * 4 + 4 + 8 + 8 + 4 + 2 * MAX_PORTS + 4 * 5
);
const _: () = assert!((Offsets::COUNT * 4 + 4).is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<SockState>() == 24);
const _: () = assert!(core::mem::size_of::<CloseKey>() == 32);
const _: () = assert!(core::mem::size_of::<CloseStats>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, repr(C), no implicit padding (sizes asserted above).
    unsafe impl aya::Pod for super::Record {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::CloseKey {}
    unsafe impl aya::Pod for super::CloseStats {}
}
