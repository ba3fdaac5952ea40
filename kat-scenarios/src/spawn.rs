//! Starting processes from scenarios that run side by side in one process.
//! A child holds copies of the parent's sockets from fork until its exec
//! has closed them, which completes after the parent is already running
//! again; a socket closed meanwhile is really closed by the child, which
//! the kernel (and kat) then name as the closer. A close whose closer is
//! asserted runs `alone`: once no child is between fork and a sign of
//! life (its exit, or a line it printed). Starting never waits for a
//! close, so no scenario's timing changes.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Children being started.
static STARTING: Mutex<usize> = Mutex::new(0);
static STARTED: Condvar = Condvar::new();

fn count() -> MutexGuard<'static, usize> {
    STARTING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Held from before a child is started until it has shown a sign of life.
pub struct Starting(());

pub fn starting() -> Starting {
    *count() += 1;
    Starting(())
}

impl Drop for Starting {
    fn drop(&mut self) {
        *count() -= 1;
        STARTED.notify_all();
    }
}

/// Runs `f` once no child is being started.
pub fn alone<T>(f: impl FnOnce() -> T) -> T {
    let mut n = count();
    while *n > 0 {
        n = STARTED.wait(n).unwrap_or_else(PoisonError::into_inner);
    }
    f()
}
