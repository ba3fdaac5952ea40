//! The connections census behind `kat record --metrics`'s gauges: every
//! established connection (of `--port`), keepalive on or off, and the idle
//! setting in force with where it comes from. kat's iterator over TCP
//! sockets (`kat_conns`) lists one network namespace, the one it is opened
//! in, so a thread of its own enters each namespace kat can see in turn,
//! every `EVERY`: never the loop that drains the ring.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read as _};
use std::os::fd::{AsFd as _, OwnedFd};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use aya::programs::Iter;
use kat_common::{flag, ConnRecord, CONN_RECORD_SIZE};

use crate::diag;
use crate::event::Origin;

/// How often the census is taken.
pub const EVERY: Duration = Duration::from_secs(10);

/// What one census counted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Census {
    /// Connections by keepalive on, and where their idle setting comes from.
    pub counts: BTreeMap<(bool, Origin), u64>,
    /// The idle setting, in seconds, of each connection with keepalive on.
    pub idle_s: Vec<f64>,
}

impl Census {
    /// Counts one connection; `hz` is the kernel's jiffies per second.
    pub fn add(&mut self, rec: &ConnRecord, hz: f64) {
        let on = rec.flags & flag::KEEPOPEN != 0;
        let (jiffies, origin) = if rec.ka_time != 0 {
            (rec.ka_time, Origin::Socket)
        } else {
            (rec.sysctl_time, Origin::Sysctl)
        };
        *self.counts.entry((on, origin)).or_default() += 1;
        if on {
            self.idle_s.push(f64::from(jiffies) / hz);
        }
    }
}

fn decode(bytes: &[u8; CONN_RECORD_SIZE]) -> ConnRecord {
    let word = |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    ConnRecord {
        ka_time: word(0),
        sysctl_time: word(4),
        flags: bytes[8],
        _pad: [0; 7],
    }
}

/// Reads every record of one run of the iterator.
fn read_all(file: File, census: &mut Census, hz: f64) -> Result<()> {
    let mut reader = BufReader::with_capacity(64 << 10, file);
    let mut rec = [0; CONN_RECORD_SIZE];
    loop {
        match reader.read_exact(&mut rec) {
            Ok(()) => census.add(&decode(&rec), hz),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// One run of the iterator in one network namespace: the iterator lists
/// the namespace of the thread that opens it, so a scoped thread enters
/// the namespace first.
fn count_in(iter: &mut Iter, netns: OwnedFd, census: &mut Census, hz: f64) -> Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .context("setns")?;
            let link = iter.attach()?;
            let file = iter.take_link(link)?.into_file()?;
            read_all(file, census, hz)
        })
        .join()
        .map_err(|_| anyhow!("the census thread panicked"))?
    })
}

/// One census of every namespace kat can see (by name, and its own); a
/// namespace that is gone by now is skipped.
pub fn take(iter: &mut Iter, hz: f64) -> Census {
    let mut census = Census::default();
    for netns in diag::visible_netns() {
        let Some(fd) = diag::open_netns(netns) else {
            continue;
        };
        if let Err(e) = count_in(iter, fd, &mut census, hz) {
            log::debug!("connections of netns {netns}: {e:#}");
        }
    }
    census
}

/// Takes a census every `EVERY` on a thread of its own and hands each to
/// `publish`.
pub fn start(mut iter: Iter, hz: f64, publish: impl Fn(&Census) + Send + 'static) {
    // Not joined: it ends with kat.
    crate::privilege::spawn("kat-conns", move || loop {
        publish(&take(&mut iter, hz));
        std::thread::sleep(EVERY);
    })
    .map_err(|e| log::warn!("cannot start the connections census: {e}"))
    .ok();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ka_time: u32, sysctl_time: u32, on: bool) -> [u8; CONN_RECORD_SIZE] {
        let mut b = [0; CONN_RECORD_SIZE];
        b[..4].copy_from_slice(&ka_time.to_ne_bytes());
        b[4..8].copy_from_slice(&sysctl_time.to_ne_bytes());
        b[8] = if on { flag::KEEPOPEN } else { 0 };
        b
    }

    #[test]
    fn connections_are_counted_by_keepalive_and_where_idle_comes_from() {
        let hz = 250.0;
        let mut census = Census::default();
        for r in [
            rec(250 * 60, 250 * 7200, true),
            rec(0, 250 * 7200, true),
            rec(0, 250 * 7200, false),
            rec(250 * 30, 250 * 7200, false),
            rec(0, 250 * 7200, false),
        ] {
            census.add(&decode(&r), hz);
        }
        let counts: Vec<_> = census.counts.into_iter().collect();
        assert_eq!(
            counts,
            [
                ((false, Origin::Socket), 1),
                ((false, Origin::Sysctl), 2),
                ((true, Origin::Socket), 1),
                ((true, Origin::Sysctl), 1),
            ]
        );
        // Only connections with keepalive on have an idle setting in force.
        assert_eq!(census.idle_s, [60.0, 7200.0]);
    }

    #[test]
    fn a_short_read_ends_the_run_without_a_half_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("records");
        let mut bytes = rec(0, 250, true).to_vec();
        bytes.extend_from_slice(&rec(0, 250, false)[..5]);
        std::fs::write(&path, bytes).expect("write");
        let mut census = Census::default();
        read_all(File::open(&path).expect("open"), &mut census, 250.0).expect("read");
        assert_eq!(census.counts.values().sum::<u64>(), 1);
    }
}
