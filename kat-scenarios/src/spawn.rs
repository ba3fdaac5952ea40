//! Starting processes from scenarios that run side by side in one process.
//! A child holds copies of the parent's sockets from fork until it execs;
//! a socket closed meanwhile is really closed by the child, which the kernel
//! (and kat) then name as the closer. A close whose closer is asserted runs
//! `alone`, while no child is being started.

use std::process::{Child, Command};
use std::sync::{PoisonError, RwLock};

static STARTING: RwLock<()> = RwLock::new(());

/// Starts `cmd`; when this returns the child has exec'd and holds none of
/// this process's sockets.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    let _starting = STARTING.read().unwrap_or_else(PoisonError::into_inner);
    cmd.spawn()
}

/// Runs `f` while no child is being started.
pub fn alone<T>(f: impl FnOnce() -> T) -> T {
    let _alone = STARTING.write().unwrap_or_else(PoisonError::into_inner);
    f()
}
