//! Runs of kat's programs the kernel skipped. A program that fires on a
//! CPU where it is already running (a softirq interrupting it in some
//! process's system call) is not run again; the kernel counts the skip
//! (`recursion_misses` in the program's fdinfo, Linux 5.12 and later).
//! What a skipped run would have sent is lost, and counted with the
//! losses, by what it can have been: the CLOSE tracepoint's skips are made
//! good (the keepalive timer's hook or the socket's free sends the close
//! instead, docs/design.md), the socket free's cost orderly closes only,
//! and any other program's may have been anything. Read on a thread of
//! its own, once a second: procfs reads stay off the path that drains the
//! ring.

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aya::programs::ProgramFd;

const EVERY: Duration = Duration::from_secs(1);

/// What a skipped run of a program can have cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cost {
    /// Nothing: other programs send what it would have.
    MadeGood,
    OrderlyCloses,
    Anything,
}

fn cost(program: &str) -> Cost {
    match program {
        "inet_sock_set_state" => Cost::MadeGood,
        "tcp_destroy_sock" => Cost::OrderlyCloses,
        _ => Cost::Anything,
    }
}

/// Skipped runs so far, by what they can have cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    pub orderly_closes: u64,
    pub anything: u64,
}

/// The kernel's counts of skipped runs of kat's programs.
pub struct Misses {
    orderly_closes: Arc<AtomicU64>,
    anything: Arc<AtomicU64>,
}

impl Misses {
    /// Reads the programs' counts now, then once a second until dropped.
    pub fn start(ebpf: &aya::Ebpf) -> Self {
        // Copies of the descriptors, owned by the thread: their numbers
        // stay theirs for as long as it reads them.
        let fds = |wanted: Cost| -> Vec<ProgramFd> {
            ebpf.programs()
                .filter(|(name, _)| cost(name) == wanted)
                .filter_map(|(_, p)| p.fd().ok()?.try_clone().ok())
                .collect()
        };
        let (closes, others) = (fds(Cost::OrderlyCloses), fds(Cost::Anything));
        let misses = Self {
            orderly_closes: Arc::new(AtomicU64::new(total(&closes))),
            anything: Arc::new(AtomicU64::new(total(&others))),
        };
        let (orderly_closes, anything) = (
            Arc::clone(&misses.orderly_closes),
            Arc::clone(&misses.anything),
        );
        crate::privilege::spawn("kat-misses", move || {
            while Arc::strong_count(&anything) > 1 {
                std::thread::sleep(EVERY);
                orderly_closes.store(total(&closes), Ordering::Relaxed);
                anything.store(total(&others), Ordering::Relaxed);
            }
        })
        .map_err(|e| log::warn!("cannot start the skipped-run counter: {e}"))
        .ok();
        misses
    }

    pub fn get(&self) -> Skipped {
        Skipped {
            orderly_closes: self.orderly_closes.load(Ordering::Relaxed),
            anything: self.anything.load(Ordering::Relaxed),
        }
    }
}

fn total(fds: &[ProgramFd]) -> u64 {
    fds.iter()
        .filter_map(|fd| {
            let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
            recursion_misses(&std::fs::read_to_string(path).ok()?)
        })
        .sum()
}

/// The `recursion_misses` field of a program's fdinfo; None on kernels
/// that do not count (before 5.12).
pub fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("recursion_misses:")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_costs_what_the_program_would_have_sent() {
        assert_eq!(cost("inet_sock_set_state"), Cost::MadeGood);
        assert_eq!(cost("tcp_destroy_sock"), Cost::OrderlyCloses);
        assert_eq!(cost("timer_expire_exit"), Cost::Anything);
        assert_eq!(cost("kretprobe_tcp_keepalive_timer"), Cost::Anything);
    }

    #[test]
    fn reads_the_count_from_a_programs_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nprog_id:\t13132\n\
                      run_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t17\nverified_insns:\t312\n";
        assert_eq!(recursion_misses(fdinfo), Some(17));
        assert_eq!(recursion_misses("pos:\t0\nprog_type:\t26\n"), None);
        assert_eq!(recursion_misses("recursion_misses:\tmany\n"), None);
    }
}
