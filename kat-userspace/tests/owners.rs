//! The owner census on the running kernel (root): kat's task_file
//! iterator finds the sockets this process holds, and agrees with a walk
//! of /proc/*/fd about every socket of this process.

use std::net::TcpListener;
use std::path::Path;

use kat_userspace::loader::{self, Options, RING_BYTES};
use kat_userspace::owner::{self, Census};

#[test]
fn the_kernel_census_finds_our_sockets_as_proc_does() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let mut loaded = loader::load(&Options {
        ports: &[],
        lane: None,
        ring_bytes: RING_BYTES,
        orderly: loader::Orderly::Counted,
    })
    .expect("kat's programs load");
    let mut census = std::mem::take(&mut loaded.owners);
    assert!(
        matches!(census, Census::Kernel(_)),
        "the owner iterator did not load on this kernel (kat doctor says why)"
    );

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let inode = nix::sys::stat::fstat(&listener).expect("fstat").st_ino;
    let me = std::process::id();
    let comm = std::fs::read_to_string("/proc/self/comm").expect("comm");

    let counted = census.take();
    let found = counted.get(&inode).expect("our listener is in the census");
    assert_eq!(found.pid, me);
    assert_eq!(found.comm, comm.trim_end());

    // Every socket this process holds, as /proc tells it, the census tells
    // alike (other processes may open and close sockets meanwhile).
    let walked = owner::walk(Path::new("/proc"));
    let ours: Vec<_> = walked.iter().filter(|(_, o)| o.pid == me).collect();
    assert!(ours.iter().any(|(i, _)| **i == inode));
    for (inode, o) in ours {
        assert_eq!(counted.get(inode), Some(o), "socket inode {inode}");
    }
    // The census ran in the kernel, not as a fallback walk.
    assert!(matches!(census, Census::Kernel(_)));
}
