//! Which process owns a socket: an index from socket inode to process,
//! rebuilt on a background thread by a census of every process's open
//! files — kat's iterator in the kernel (`kat_owners`), or a walk of
//! /proc/*/fd where the kernel cannot run it. Timer callbacks run in
//! softirq, so the kernel's "current task" there says nothing about the
//! owner. The loop that drains the ring only looks the index up (O(1));
//! a miss asks for a census, and they are rate-limited, so a flood of new
//! sockets costs at most one per `Timing::min_gap`.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::io::{BufReader, ErrorKind, Read as _};
use std::path::{Path, PathBuf};

use anyhow::Result;
use aya::programs::Iter;
use kat_common::OWNER_RECORD_SIZE;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::event::Event;
use crate::workload::{Attributor, Workload};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    /// Its unit, container or pod, where its cgroup says.
    pub workload: Option<Arc<Workload>>,
}

/// The socket inode in an fd's link text, `socket:[123]`.
fn socket_inode(link: &OsStr) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Where a census learns every socket's owner.
pub enum Census {
    /// kat's iterator over every process's files: one pass in the kernel.
    Kernel(Box<Iter>),
    /// A readlink of every descriptor under this root (normally /proc).
    Proc(PathBuf),
}

impl Default for Census {
    fn default() -> Self {
        Census::Proc(PathBuf::from("/proc"))
    }
}

impl Census {
    /// Every socket inode held by a process, and the process.
    pub fn take(&mut self) -> HashMap<u64, Owner> {
        match self {
            Census::Kernel(iter) => match iterate(iter) {
                Ok(index) => index,
                Err(e) => {
                    log::warn!("the owner iterator failed ({e:#}); walking /proc from now on");
                    *self = Census::default();
                    self.take()
                }
            },
            Census::Proc(root) => walk(root),
        }
    }
}

/// A socket held by several processes (fork, SCM_RIGHTS) goes to the
/// lowest pid, so the answer does not depend on the order processes are
/// listed in.
fn keep_lowest(
    index: &mut HashMap<u64, Owner>,
    inode: u64,
    pid: u32,
    comm: impl FnOnce() -> String,
) {
    if index.get(&inode).is_some_and(|o| o.pid < pid) {
        return;
    }
    index.insert(
        inode,
        Owner {
            pid,
            comm: comm(),
            workload: None,
        },
    );
}

/// One record of the owner iterator: the socket's inode and its owner.
fn decode(rec: &[u8; OWNER_RECORD_SIZE]) -> (u64, u32, String) {
    // OwnerRecord: ino u64, pid u32, padding, comm [u8; 16].
    let mut ino = [0; 8];
    ino.copy_from_slice(&rec[..8]);
    let pid = u32::from_ne_bytes([rec[8], rec[9], rec[10], rec[11]]);
    let comm = &rec[16..];
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    (
        u64::from_ne_bytes(ino),
        pid,
        String::from_utf8_lossy(&comm[..end]).into_owned(),
    )
}

/// One run of the owner iterator, read to its end.
fn iterate(iter: &mut Iter) -> Result<HashMap<u64, Owner>> {
    let link = iter.attach()?;
    let file = iter.take_link(link)?.into_file()?;
    let mut reader = BufReader::with_capacity(64 << 10, file);
    let mut index = HashMap::new();
    let mut rec = [0; OWNER_RECORD_SIZE];
    loop {
        match reader.read_exact(&mut rec) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(index),
            Err(e) => return Err(e.into()),
        }
        let (inode, pid, comm) = decode(&rec);
        keep_lowest(&mut index, inode, pid, || comm);
    }
}

/// One walk of `root`/*/fd: every socket inode held by a process.
pub fn walk(root: &Path) -> HashMap<u64, Owner> {
    let mut index: HashMap<u64, Owner> = HashMap::new();
    let Ok(procs) = std::fs::read_dir(root) else {
        return index;
    };
    for proc_entry in procs.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Gone between the listing and here: it simply holds nothing.
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        let mut comm: Option<String> = None;
        for fd in fds.flatten() {
            let Some(inode) = std::fs::read_link(fd.path())
                .ok()
                .and_then(|l| socket_inode(l.as_os_str()))
            else {
                continue;
            };
            keep_lowest(&mut index, inode, pid, || {
                comm.get_or_insert_with(|| {
                    std::fs::read_to_string(proc_entry.path().join("comm"))
                        .map(|c| c.trim_end().to_string())
                        .unwrap_or_default()
                })
                .clone()
            });
        }
    }
    index
}

/// How often the index may and must be rebuilt.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// At most one walk this often, however many misses ask for one.
    pub min_gap: Duration,
    /// A walk at least this often even without misses: sockets that
    /// changed hands and processes that exited.
    pub refresh: Duration,
    /// A missing inode asks again for a walk only after this long.
    pub retry_miss: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            min_gap: Duration::from_secs(1),
            refresh: Duration::from_secs(30),
            retry_miss: Duration::from_secs(10),
        }
    }
}

/// What the index says about an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Owner),
    /// Not in the index; a walk that will tell has not finished yet.
    Pending,
    /// Not found by a walk that began after it was asked for.
    Unknown,
}

struct State {
    owners: HashMap<u64, Owner>,
    /// The workload of each process that held a socket at the last walk.
    workloads: HashMap<u32, Arc<Workload>>,
    /// Walks begun, and the number of the last one finished.
    started: u64,
    finished: u64,
    /// A miss since the last walk began.
    wanted: bool,
    /// Missing inodes: when each asked for a walk, and the number of the
    /// first walk that begins after that.
    asked: HashMap<u64, (Instant, u64)>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Told after every walk: events held for an owner may go.
    walked: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere leaves the map whole: keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The socket inode → owner index and its walker thread.
pub struct Index {
    shared: Arc<Shared>,
    timing: Timing,
}

impl Index {
    /// Starts the walker (first census at once).
    pub fn start(census: Census, attributor: Attributor) -> Self {
        Self::start_with(census, attributor, Timing::default())
    }

    pub fn start_with(census: Census, attributor: Attributor, timing: Timing) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                owners: HashMap::new(),
                workloads: HashMap::new(),
                started: 0,
                finished: 0,
                wanted: true,
                asked: HashMap::new(),
                stop: false,
            }),
            wake: Condvar::new(),
            walked: Notify::new(),
        });
        let worker = Arc::clone(&shared);
        // Not joined: a walk in progress must not delay kat's exit.
        crate::privilege::spawn("kat-owners", move || {
            walker(&worker, census, attributor, timing)
        })
        .map_err(|e| log::warn!("cannot start the owner walker: {e}"))
        .ok();
        Self { shared, timing }
    }

    /// The owner of the socket with this inode (0 = orphaned: none); a
    /// miss asks the walker for a walk.
    pub fn lookup(&self, inode: u64) -> Lookup {
        if inode == 0 {
            return Lookup::Unknown;
        }
        let mut st = self.shared.lock();
        if let Some(owner) = st.owners.get(&inode) {
            return Lookup::Found(owner.clone());
        }
        let now = Instant::now();
        match st.asked.get(&inode) {
            Some(&(at, first)) if now.duration_since(at) < self.timing.retry_miss => {
                if st.finished >= first {
                    Lookup::Unknown
                } else {
                    Lookup::Pending
                }
            }
            _ => {
                let first = st.started + 1;
                st.asked.insert(inode, (now, first));
                st.wanted = true;
                self.shared.wake.notify_one();
                Lookup::Pending
            }
        }
    }

    /// The owner if the index knows it now.
    pub fn owner(&self, inode: u64) -> Option<Owner> {
        match self.lookup(inode) {
            Lookup::Found(o) => Some(o),
            _ => None,
        }
    }

    /// The workload of a process that held a socket at the last walk.
    pub fn workload(&self, pid: u32) -> Option<Arc<Workload>> {
        self.shared.lock().workloads.get(&pid).cloned()
    }

    /// Walks finished so far.
    pub fn walks(&self) -> u64 {
        self.shared.lock().finished
    }

    /// Resolves after the next walk finishes (at once if one finished
    /// since the last call).
    pub async fn walked(&self) {
        self.shared.walked.notified().await;
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
    }
}

/// Gives every owner its workload, read once per process; returns them
/// by process.
pub fn attribute(
    owners: &mut HashMap<u64, Owner>,
    attributor: &mut Attributor,
) -> HashMap<u32, Arc<Workload>> {
    let workloads = attributor.resolve_all(owners.values().map(|o| o.pid));
    for owner in owners.values_mut() {
        owner.workload = workloads.get(&owner.pid).cloned();
    }
    workloads
}

fn walker(shared: &Shared, mut census: Census, mut attributor: Attributor, timing: Timing) {
    let mut last: Option<Instant> = None;
    // A host with 200 000 socket descriptors makes a walk of seconds: the
    // gaps stretch so that at most 5 % of the time is spent walking.
    let mut took = Duration::ZERO;
    loop {
        let mut st = shared.lock();
        let number = loop {
            if st.stop {
                return;
            }
            let (min_gap, refresh) = (timing.min_gap.max(took * 20), timing.refresh.max(took * 20));
            let since = last.map_or(Duration::MAX, |l| l.elapsed());
            if (st.wanted && since >= min_gap) || since >= refresh {
                st.wanted = false;
                st.started += 1;
                break st.started;
            }
            let due = if st.wanted { min_gap } else { refresh };
            st = shared
                .wake
                .wait_timeout(st, due.saturating_sub(since))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(st);
        let began = Instant::now();
        last = Some(began);
        let mut fresh = census.take();
        let workloads = attribute(&mut fresh, &mut attributor);
        took = began.elapsed();
        log::debug!(
            "owner walk {number}: {} sockets in {:?}",
            fresh.len(),
            began.elapsed()
        );
        let mut st = shared.lock();
        st.owners = fresh;
        st.workloads = workloads;
        st.finished = number;
        let State { owners, asked, .. } = &mut *st;
        asked.retain(|inode, (at, _)| {
            !owners.contains_key(inode) && at.elapsed() < timing.retry_miss
        });
        drop(st);
        shared.walked.notify_one();
    }
}

/// Events whose owner is not in the index wait at most this long for the
/// walk their miss asked for.
pub const MAX_HOLD: Duration = Duration::from_millis(500);
/// ... and at most this many events wait.
pub const MAX_HELD: usize = 10_000;

/// The index and the events waiting for it, in time order: an event waits
/// only behind earlier ones, so output order stays time order.
pub struct Owners {
    pub index: Index,
    held: VecDeque<(Event, Instant)>,
}

impl Owners {
    pub fn new(index: Index) -> Self {
        Self {
            index,
            held: VecDeque::new(),
        }
    }

    /// Attaches owners to the events; returns the ones that may go now.
    pub fn attach(&mut self, events: Vec<Event>) -> Vec<Event> {
        let now = Instant::now();
        self.held.extend(events.into_iter().map(|e| (e, now)));
        self.release(false)
    }

    /// The events whose owner is known now, or whose wait is over; all of
    /// them with `all`.
    pub fn release(&mut self, all: bool) -> Vec<Event> {
        let mut out = Vec::new();
        loop {
            let crowded = self.held.len() > MAX_HELD;
            let Some((ev, since)) = self.held.front_mut() else {
                break;
            };
            if let (Some(pid), None) = (ev.pid, &ev.workload) {
                // The kernel named the process (a close in its context).
                ev.workload = self.index.workload(pid);
            } else if ev.pid.is_none() {
                match self.index.lookup(ev.sock_ino) {
                    Lookup::Found(owner) => {
                        ev.pid = Some(owner.pid);
                        ev.comm = Some(owner.comm);
                        ev.workload = owner.workload;
                    }
                    Lookup::Pending if !all && !crowded && since.elapsed() < MAX_HOLD => {
                        break;
                    }
                    _ => {}
                }
            }
            out.extend(self.held.pop_front().map(|(ev, _)| ev));
        }
        out
    }

    /// Resolves when held events may be released: after a walk, or when
    /// the oldest one's wait is over. Never while nothing is held.
    pub async fn ready(&self) {
        match self.held.front() {
            None => std::future::pending().await,
            Some((_, since)) => {
                let deadline = tokio::time::Instant::from_std(*since + MAX_HOLD);
                tokio::select! {
                    () = self.index.walked() => {}
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake /proc: PID/comm and PID/fd/N → `socket:[inode]`.
    struct FakeProc(tempfile::TempDir);

    impl FakeProc {
        fn new() -> Self {
            Self(tempfile::tempdir().expect("tempdir"))
        }

        fn root(&self) -> PathBuf {
            self.0.path().to_path_buf()
        }

        fn process(&self, pid: u32, comm: &str) {
            let dir = self.0.path().join(pid.to_string());
            std::fs::create_dir_all(dir.join("fd")).expect("fd dir");
            std::fs::write(dir.join("comm"), format!("{comm}\n")).expect("comm");
            // Not a socket: skipped.
            symlink("/dev/null", dir.join("fd/0")).expect("fd 0");
        }

        fn socket(&self, pid: u32, fd: u32, inode: u64) {
            let link = self.0.path().join(format!("{pid}/fd/{fd}"));
            symlink(format!("socket:[{inode}]"), link).expect("socket fd");
        }

        fn close(&self, pid: u32, fd: u32) {
            std::fs::remove_file(self.0.path().join(format!("{pid}/fd/{fd}"))).expect("close");
        }

        fn exit(&self, pid: u32) {
            std::fs::remove_dir_all(self.0.path().join(pid.to_string())).expect("exit");
        }
    }

    fn owner(pid: u32, comm: &str) -> Option<Owner> {
        Some(Owner {
            pid,
            comm: comm.into(),
            workload: None,
        })
    }

    #[test]
    fn an_iterator_record_reads_as_inode_pid_and_comm() {
        let mut rec = [0u8; OWNER_RECORD_SIZE];
        rec[..8].copy_from_slice(&123_456_789_u64.to_ne_bytes());
        rec[8..12].copy_from_slice(&4242_u32.to_ne_bytes());
        rec[16..21].copy_from_slice(b"nginx");
        assert_eq!(decode(&rec), (123_456_789, 4242, "nginx".to_string()));
        // A comm of all 16 bytes has no NUL.
        rec[16..].copy_from_slice(b"0123456789abcdef");
        assert_eq!(decode(&rec).2, "0123456789abcdef");
    }

    #[test]
    fn a_shared_socket_goes_to_the_lowest_pid_whatever_the_order() {
        let mut index = HashMap::new();
        keep_lowest(&mut index, 7, 300, || "c".into());
        keep_lowest(&mut index, 7, 100, || "a".into());
        keep_lowest(&mut index, 7, 200, || {
            panic!("not asked: a lower pid holds it")
        });
        assert_eq!(index[&7], owner(100, "a").expect("owner"));
    }

    #[test]
    fn a_walk_finds_sockets_and_skips_other_fds() {
        let proc = FakeProc::new();
        proc.process(10, "server");
        proc.socket(10, 3, 123);
        proc.socket(10, 4, 124);
        proc.process(11, "client");
        proc.socket(11, 3, 200);
        std::fs::create_dir(proc.0.path().join("self")).expect("non-pid dir");
        let index = walk(&proc.root());
        assert_eq!(index.len(), 3);
        assert_eq!(index.get(&123).cloned(), owner(10, "server"));
        assert_eq!(index.get(&200).cloned(), owner(11, "client"));
    }

    #[test]
    fn a_shared_socket_goes_to_the_lowest_pid() {
        let proc = FakeProc::new();
        for pid in [30, 7, 19] {
            proc.process(pid, &format!("p{pid}"));
            proc.socket(pid, 5, 77);
        }
        assert_eq!(walk(&proc.root()).get(&77).cloned(), owner(7, "p7"));
    }

    #[test]
    fn a_socket_that_changes_hands_and_a_process_that_exits() {
        let proc = FakeProc::new();
        proc.process(10, "parent");
        proc.socket(10, 3, 123);
        proc.process(20, "worker");
        assert_eq!(walk(&proc.root()).get(&123).cloned(), owner(10, "parent"));
        // Handed over (SCM_RIGHTS), then closed by the first holder.
        proc.socket(20, 9, 123);
        proc.close(10, 3);
        assert_eq!(walk(&proc.root()).get(&123).cloned(), owner(20, "worker"));
        proc.exit(20);
        assert_eq!(walk(&proc.root()).get(&123), None);
    }

    fn attributor(proc: &FakeProc) -> Attributor {
        Attributor::new(&proc.root(), &proc.root())
    }

    fn fast() -> Timing {
        Timing {
            min_gap: Duration::from_millis(300),
            refresh: Duration::from_secs(3600),
            retry_miss: Duration::from_secs(3600),
        }
    }

    fn wait_for(index: &Index, walks: u64) {
        let start = Instant::now();
        while index.walks() < walks {
            assert!(start.elapsed() < Duration::from_secs(5), "no walk {walks}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_miss_asks_for_a_walk_that_finds_the_new_socket() {
        let proc = FakeProc::new();
        proc.process(10, "server");
        let index = Index::start_with(Census::Proc(proc.root()), attributor(&proc), fast());
        wait_for(&index, 1);
        proc.socket(10, 3, 123);
        assert_eq!(index.lookup(123), Lookup::Pending);
        wait_for(&index, 2);
        assert_eq!(index.owner(123), owner(10, "server"));
    }

    #[test]
    fn a_walk_gives_each_owner_its_unit() {
        let proc = FakeProc::new();
        proc.process(10, "nginx");
        proc.socket(10, 3, 123);
        std::fs::write(
            proc.0.path().join("10/cgroup"),
            "1:name=systemd:/system.slice/nginx.service\n0::/\n",
        )
        .expect("cgroup");
        proc.process(11, "bash");
        proc.socket(11, 3, 124);
        let index = Index::start_with(Census::Proc(proc.root()), attributor(&proc), fast());
        wait_for(&index, 1);
        let unit = index
            .owner(123)
            .and_then(|o| o.workload)
            .and_then(|w| w.unit.clone());
        assert_eq!(unit.as_deref(), Some("nginx.service"));
        assert_eq!(index.owner(124).map(|o| o.workload), Some(None));
    }

    #[test]
    fn a_burst_of_misses_costs_one_walk() {
        let proc = FakeProc::new();
        proc.process(10, "server");
        let index = Index::start_with(Census::Proc(proc.root()), attributor(&proc), fast());
        wait_for(&index, 1);
        for inode in 1000..3000 {
            assert_eq!(index.lookup(inode), Lookup::Pending);
        }
        wait_for(&index, 2);
        std::thread::sleep(fast().min_gap * 3);
        assert_eq!(index.walks(), 2);
        // Answered: not found, and no new walk asked for.
        assert_eq!(index.lookup(1000), Lookup::Unknown);
        std::thread::sleep(fast().min_gap * 2);
        assert_eq!(index.walks(), 2);
    }
}
