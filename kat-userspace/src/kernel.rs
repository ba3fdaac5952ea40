//! Facts about the running kernel that kat reads at start-up.

use std::io::Read as _;

use anyhow::{anyhow, bail, Context as _, Result};
use kat_common::context;

/// Text symbols of /proc/kallsyms with their [start, end) ranges, read in
/// one pass: the file has over 100 000 lines, and a pass per symbol was a
/// good part of kat's start-up.
#[derive(Debug, Default)]
pub struct Kallsyms {
    /// (name, start) of every text symbol kat asked for.
    wanted: Vec<(&'static str, u64)>,
    /// Every symbol's address, sorted: a symbol ends where the next begins.
    addresses: Vec<u64>,
}

impl Kallsyms {
    /// Reads the text symbols among `names` (needs root for non-zero
    /// addresses).
    pub fn parse(text: &str, names: &[&'static str]) -> Self {
        let mut k = Self::default();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(addr), Some(kind), Some(sym)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            k.addresses.push(addr);
            if matches!(kind, "t" | "T") {
                if let Some(name) = names.iter().find(|&&n| n == sym) {
                    k.wanted.push((name, addr));
                }
            }
        }
        k.addresses.sort_unstable();
        k
    }

    /// Address of a text symbol.
    pub fn address(&self, name: &str) -> Option<u64> {
        self.wanted
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
    }

    /// [start, end) of a text symbol: it ends where the next symbol starts.
    pub fn range(&self, name: &str) -> Option<[u64; 2]> {
        let start = self.address(name)?;
        let next = self.addresses.partition_point(|&a| a <= start);
        Some([start, *self.addresses.get(next)?])
    }
}

/// Kernel functions whose presence on a RST's stack tells where it came
/// from, with the `kat_common::context` bit each sets.
const CONTEXT_FUNCTIONS: [(&str, u8); 5] = [
    ("tcp_keepalive_timer", context::KEEPALIVE_TIMER),
    ("tcp_close", context::TCP_CLOSE),
    ("__tcp_close", context::TCP_CLOSE),
    ("tcp_disconnect", context::TCP_DISCONNECT),
    ("tcp_out_of_resources", context::OUT_OF_RESOURCES),
];

/// Address ranges of [`CONTEXT_FUNCTIONS`] on this kernel.
#[derive(Debug, Clone, Default)]
pub struct ContextRanges(Vec<([u64; 2], u8)>);

impl ContextRanges {
    pub fn from_kallsyms(kallsyms: &Kallsyms) -> Self {
        Self(
            CONTEXT_FUNCTIONS
                .iter()
                .filter_map(|&(name, bit)| Some((kallsyms.range(name)?, bit)))
                .collect(),
        )
    }

    /// The context bits of a stack (its instruction pointers).
    pub fn of(&self, ips: impl IntoIterator<Item = u64>) -> u8 {
        ips.into_iter()
            .flat_map(|ip| {
                self.0
                    .iter()
                    .filter(move |([start, end], _)| (*start..*end).contains(&ip))
                    .map(|(_, bit)| *bit)
            })
            .fold(0, |acc, bit| acc | bit)
    }
}

/// The retransmission timer's function: where its run closed a socket
/// whose CLOSE tracepoint the kernel skipped (a retransmission or user
/// timeout), the death is sent at its exit rather than at the free.
const WRITE_TIMER: &str = "tcp_write_timer";

/// The timers' functions and those of [`CONTEXT_FUNCTIONS`].
pub fn kallsyms() -> Result<Kallsyms> {
    let text = std::fs::read_to_string("/proc/kallsyms").context("cannot read /proc/kallsyms")?;
    let names: Vec<&'static str> = CONTEXT_FUNCTIONS
        .iter()
        .map(|&(name, _)| name)
        .chain([WRITE_TIMER])
        .collect();
    Ok(Kallsyms::parse(&text, &names))
}

/// `tcp_write_timer`'s address, 0 where kallsyms hides or lacks it (the
/// skipped close then goes at the socket's free, as before).
pub fn write_timer_address(kallsyms: &Kallsyms) -> u64 {
    kallsyms.address(WRITE_TIMER).unwrap_or(0)
}

pub fn keepalive_timer_address(kallsyms: &Kallsyms) -> Result<u64> {
    match kallsyms.address("tcp_keepalive_timer") {
        Some(0) => bail!(
            "/proc/kallsyms hides addresses (kernel.kptr_restrict): kat needs root with CAP_SYSLOG to read them"
        ),
        Some(addr) => Ok(addr),
        None => bail!("tcp_keepalive_timer is not in /proc/kallsyms"),
    }
}

/// CONFIG_HZ from a kernel config text.
pub fn hz_from_config(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
}

/// The kernel's tick rate: keepalive settings and idle times are in jiffies.
/// Read the way libbpf reads Kconfig: /proc/config.gz, then /boot/config-*.
pub fn hz() -> Result<u32> {
    let mut text = String::new();
    if let Ok(file) = std::fs::File::open("/proc/config.gz") {
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .context("cannot read /proc/config.gz")?;
    } else {
        let path = format!("/boot/config-{}", release());
        text = std::fs::read_to_string(&path).map_err(|_| {
            anyhow!(
                "cannot find this kernel's config (/proc/config.gz or {path}) to learn CONFIG_HZ"
            )
        })?;
    }
    hz_from_config(&text).ok_or_else(|| anyhow!("the kernel config has no CONFIG_HZ"))
}

pub fn release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC in nanoseconds: turns the kernel's
/// bpf_ktime_get_ns() stamps into wall-clock time.
pub fn monotonic_to_realtime_ns() -> i128 {
    use nix::time::{clock_gettime, ClockId};
    let ns = |c| {
        clock_gettime(c)
            .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
            .unwrap_or(0)
    };
    ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_MONOTONIC)
}

pub fn monotonic_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// kat loads eBPF programs and reads kernel addresses: that takes root
/// (CAP_BPF + CAP_PERFMON + CAP_SYS_ADMIN in practice).
pub fn require_root(command: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(crate::exit::Failure::NotRoot(format!(
            "kat {command} needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN to load \
             eBPF programs and read kernel symbols): try `sudo kat {command}`"
        ))
        .into());
    }
    let Some(effective) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_caps(&s))
    else {
        return Ok(());
    };
    let (missing, degraded) = caps_check(effective);
    if !missing.is_empty() {
        return Err(crate::exit::Failure::NotRoot(format!(
            "kat {command} runs as root without {}: it needs CAP_BPF and CAP_PERFMON \
             (or CAP_SYS_ADMIN) to load its programs (docs/deploy.md)",
            missing.join(" and ")
        ))
        .into());
    }
    for (cap, what) in degraded {
        eprintln!("kat: without {cap}, {what} (docs/deploy.md)");
    }
    Ok(())
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set in /proc/self/status.
fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// What an effective set lacks that kat cannot start without, and what
/// it lacks that makes kat see less (each with what it costs).
fn caps_check(effective: u64) -> (Vec<&'static str>, Vec<(&'static str, &'static str)>) {
    let has = |cap: u32| effective & (1 << cap) != 0;
    let admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !admin {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !admin {
        missing.push("CAP_PERFMON");
    }
    let mut degraded = Vec::new();
    if !admin {
        degraded.push((
            "CAP_SYS_ADMIN",
            "owners come from a walk of /proc and answers in other network namespaces come late",
        ));
    }
    if !has(CAP_SYS_PTRACE) {
        degraded.push((
            "CAP_SYS_PTRACE",
            "the network namespaces of other users' processes stay out of sight",
        ));
    }
    (missing, degraded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_missing_and_wanting_are_named() {
        let caps = |list: &[u32]| list.iter().fold(0u64, |m, c| m | 1 << c);
        let full = caps(&[CAP_BPF, CAP_PERFMON, 34, CAP_SYS_ADMIN, CAP_SYS_PTRACE]);
        assert_eq!(caps_check(full), (vec![], vec![]));
        assert_eq!(caps_check(u64::MAX).0, Vec::<&str>::new());
        // Before 5.8, CAP_SYS_ADMIN stands for both.
        assert!(caps_check(caps(&[CAP_SYS_ADMIN, CAP_SYS_PTRACE]))
            .0
            .is_empty());
        let (missing, degraded) = caps_check(caps(&[CAP_BPF]));
        assert_eq!(missing, ["CAP_PERFMON"]);
        let wanting: Vec<&str> = degraded.iter().map(|(c, _)| *c).collect();
        assert_eq!(wanting, ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]);
        assert_eq!(
            effective_caps("Name:\tkat\nCapPrm:\t0\nCapEff:\t000001c000200000\n"),
            Some(caps(&[CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF, 40]))
        );
        assert_eq!(effective_caps("CapEff:\tzz\n"), None);
    }

    #[test]
    fn finds_text_symbols_only_by_exact_name() {
        let k = "ffffffff81243c71 t tcp_keepalive_timer.cold\n\
                 ffffffff8202b5f0 t tcp_keepalive_timer\n\
                 ffffffff8202b700 d tcp_keepalive_data\n";
        let k = Kallsyms::parse(
            k,
            &["tcp_keepalive_timer", "tcp_keepalive_data", "tcp_nothing"],
        );
        assert_eq!(k.address("tcp_keepalive_timer"), Some(0xffffffff8202b5f0));
        assert_eq!(k.address("tcp_keepalive_data"), None);
        assert_eq!(k.address("tcp_nothing"), None);
        assert_eq!(
            k.range("tcp_keepalive_timer"),
            Some([0xffffffff8202b5f0, 0xffffffff8202b700])
        );
        assert_eq!(k.range("tcp_keepalive_data"), None);
    }

    #[test]
    fn stacks_map_to_the_functions_they_pass_through() {
        let k = "ffffffff82010f40 T __tcp_close
                 ffffffff82011370 T tcp_close
                 ffffffff82011720 T tcp_disconnect
                 ffffffff82011900 T tcp_other
";
        let names: Vec<&'static str> = CONTEXT_FUNCTIONS.iter().map(|&(n, _)| n).collect();
        let r = ContextRanges::from_kallsyms(&Kallsyms::parse(k, &names));
        assert_eq!(r.of([0xffffffff82011000]), context::TCP_CLOSE);
        assert_eq!(
            r.of([0xffffffff82011730, 0xffffffff82011000, 0xdead]),
            context::TCP_CLOSE | context::TCP_DISCONNECT
        );
        assert_eq!(r.of([0xffffffff82011900, 0x1]), 0);
    }

    #[test]
    fn reads_hz_from_config() {
        let c = "# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n";
        assert_eq!(hz_from_config(c), Some(250));
        assert_eq!(hz_from_config("CONFIG_HZ_1000=y\n"), None);
    }
}
