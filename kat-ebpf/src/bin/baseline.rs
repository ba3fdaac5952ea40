//! An empty program on `timer_expire_entry`: the baseline that the hook
//! benchmark (`kat-userspace/benches/hooks.rs`, `cargo xtask bench`)
//! measures kat's timer hooks against. An object of its own, so that kat
//! does not ship it.
#![no_std]
#![no_main]

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_baseline(_ctx: BtfTracePointContext) -> i32 {
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
