//! Which process owns a socket: found from the socket's inode in
//! /proc/PID/fd, cached. Timer callbacks run in softirq, so the kernel's
//! "current task" there says nothing about the owner.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
}

#[derive(Default)]
pub struct Owners {
    cache: HashMap<u64, Option<Owner>>,
}

fn scan(inode: u64) -> Option<Owner> {
    let target = format!("socket:[{inode}]");
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        let owns = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str())
        });
        if owns {
            let comm = std::fs::read_to_string(proc_entry.path().join("comm"))
                .map(|c| c.trim_end().to_string())
                .unwrap_or_default();
            return Some(Owner { pid, comm });
        }
    }
    None
}

impl Owners {
    /// The owner of the socket with this inode (0 = orphaned: none).
    pub fn lookup(&mut self, inode: u64) -> Option<Owner> {
        if inode == 0 {
            return None;
        }
        self.cache
            .entry(inode)
            .or_insert_with(|| scan(inode))
            .clone()
    }

    pub fn forget(&mut self, inode: u64) {
        self.cache.remove(&inode);
    }
}
