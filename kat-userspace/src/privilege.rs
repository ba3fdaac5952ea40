//! Least privilege: once kat's programs are attached, its maps open, its
//! listener bound and its journal open, kat keeps only the capabilities
//! its live loop still uses and, with `--user NAME` (as `tcpdump -Z`),
//! runs as that user.
//!
//! Linux keeps capabilities and user ids per thread. So the plan is made
//! once ([`plan`]), every thread kat starts settles to it before its first
//! step ([`spawn`]), the main thread settles when start-up is over, and
//! threads started later inherit the settled state.

use std::path::Path;
use std::sync::OnceLock;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context as _, Result};
use caps::{CapSet, Capability, CapsHashSet};

use crate::exit::Failure;

/// What the live loop still needs, and why:
/// - CAP_BPF: bpf() on the maps and links kat holds (before 6.5 the kernel
///   checks it on every command when unprivileged BPF is off) and a TCP
///   iterator per network namespace for the census;
/// - CAP_SYS_ADMIN: setns into other network namespaces to ask sock_diag
///   about their sockets (and CAP_BPF's stand-in before 5.8);
/// - CAP_SYS_PTRACE: other users' /proc/PID/ns/net and /proc/PID/fd;
/// - CAP_DAC_READ_SEARCH: those /proc directories and the container
///   runtimes' bundles when kat is not their owner (`--user`).
///
/// Gone for good, among others: CAP_PERFMON and CAP_SYSLOG (attaching and
/// kallsyms are done), CAP_NET_ADMIN, CAP_NET_BIND_SERVICE (the listener
/// is bound), CAP_DAC_OVERRIDE, CAP_SETUID, CAP_SYS_MODULE.
pub const KEPT: [Capability; 4] = [
    Capability::CAP_BPF,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_DAC_READ_SEARCH,
];

/// The user `--user` names, resolved at start-up.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    groups: Vec<u32>,
}

#[derive(Debug)]
struct Plan {
    user: Option<User>,
}

static PLAN: OnceLock<Plan> = OnceLock::new();

/// Decides what every thread settles to; before it, [`settle`] does
/// nothing (the tests' engines, `kat demo`, which tears its lab down at
/// the end). A user that does not exist is a usage error.
pub fn plan(user: Option<&str>) -> Result<()> {
    let user = user.map(resolve).transpose()?;
    // A second engine in the same process settles to the first plan.
    let _ = PLAN.set(Plan { user });
    Ok(())
}

fn resolve(name: &str) -> Result<User> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| anyhow!("cannot look up the user {name:?}: {e}"))?
        .ok_or_else(|| Failure::Usage(format!("--user {name}: no such user")))?;
    let groups = std::ffi::CString::new(name)
        .ok()
        .and_then(|c| nix::unistd::getgrouplist(&c, user.gid).ok())
        .unwrap_or_else(|| vec![user.gid]);
    Ok(User {
        name: name.to_string(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: groups.into_iter().map(|g| g.as_raw()).collect(),
    })
}

/// The planned `--user`, if any.
pub fn user() -> Option<&'static User> {
    PLAN.get()?.user.as_ref()
}

/// Settles the calling thread: switches to the planned user, keeps no
/// capability outside [`KEPT`] (bounding set included, so none comes back
/// through exec), and sets no_new_privs. Idempotent.
pub fn settle() -> Result<()> {
    let Some(plan) = PLAN.get() else {
        return Ok(());
    };
    let kept: CapsHashSet = KEPT.into_iter().collect();
    // Needs CAP_SETPCAP: first, while the thread still has it.
    let bounding = caps::read(None, CapSet::Bounding).context("reading the bounding set")?;
    for cap in bounding.difference(&kept) {
        if let Err(e) = caps::drop(None, CapSet::Bounding, *cap) {
            log::debug!("cannot drop {cap} from the bounding set: {e}");
        }
    }
    if let Some(user) = &plan.user {
        switch_user(user)?;
    }
    let permitted = caps::read(None, CapSet::Permitted).context("reading the capabilities")?;
    let keep: CapsHashSet = permitted.intersection(&kept).copied().collect();
    caps::set(None, CapSet::Effective, &keep).context("lowering the effective set")?;
    caps::set(None, CapSet::Permitted, &keep).context("lowering the permitted set")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable set")?;
    caps::clear(None, CapSet::Ambient).context("clearing the ambient set")?;
    nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")?;
    Ok(())
}

/// Switches this thread alone (raw system calls: the C library's wrappers
/// would switch every thread at once, including those that have not
/// settled yet) and keeps the permitted set across the switch.
fn switch_user(user: &User) -> Result<()> {
    // SAFETY: getuid has no arguments and cannot fail.
    if unsafe { libc::syscall(libc::SYS_getuid) } == i64::from(user.uid) {
        return Ok(());
    }
    caps::securebits::set_keepcaps(true).context("keeping capabilities across --user")?;
    let failed = |what: &str| {
        Failure::NotRoot(format!(
            "--user {}: cannot {what}: {} (kat needs CAP_SETUID and CAP_SETGID to switch user)",
            user.name,
            std::io::Error::last_os_error()
        ))
    };
    // SAFETY: the pointer and length describe `groups`, alive for the call;
    // the other calls take plain integers.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, user.groups.len(), user.groups.as_ptr()) != 0 {
            return Err(failed("set the supplementary groups").into());
        }
        if libc::syscall(libc::SYS_setresgid, user.gid, user.gid, user.gid) != 0 {
            return Err(failed("set the group").into());
        }
        if libc::syscall(libc::SYS_setresuid, user.uid, user.uid, user.uid) != 0 {
            return Err(failed("set the user").into());
        }
    }
    caps::securebits::set_keepcaps(false).context("resetting keepcaps")?;
    Ok(())
}

/// Starts a named thread that settles before it runs `f`.
pub fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if let Err(e) = settle() {
                // The main thread settles the same way and stops kat.
                log::warn!("{e:#}");
            }
            f()
        })
}

/// With `--user`, gives the journal directory to that user, so that the
/// files kat opens after the switch (rotation) can be made there.
pub fn hand_over(dir: &Path) -> Result<()> {
    let Some(user) = user() else {
        return Ok(());
    };
    let owner = (
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.gid)),
    );
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for path in std::iter::once(dir.to_path_buf()).chain(entries.flatten().map(|e| e.path())) {
        nix::unistd::chown(&path, owner.0, owner.1)
            .with_context(|| format!("cannot give {} to --user {}", path.display(), user.name))?;
    }
    Ok(())
}
