//! Empty programs on kat's hooks: the baselines that the benchmarks
//! measure kat against. `timer_expire_baseline` is the hook benchmark's
//! (`kat-userspace/benches/hooks.rs`); the socket hooks' are the floor of
//! any tracer on this kernel in the workload tax (`examples/floor.rs`,
//! `cargo xtask bench`). An object of its own, so that kat does not ship
//! it.
#![no_std]
#![no_main]

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_baseline(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "timer_expire_exit")]
pub fn timer_exit_baseline(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn set_state_baseline(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn destroy_baseline(_ctx: BtfTracePointContext) -> i32 {
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
