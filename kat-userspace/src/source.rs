//! Kernel records in: the ring buffer, drained in batches, and the
//! lost-record counter.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use aya::maps::{MapData, PerCpuArray, RingBuf, StackTraceMap};
use kat_common::{kind, Record, RECORD_SIZE};

use crate::kernel::ContextRanges;
use crate::misses::Misses;
use tokio::io::unix::AsyncFd;

/// Decodes one ring-buffer item; None when it is not a whole record.
pub fn decode(bytes: &[u8]) -> Option<Record> {
    if bytes.len() < RECORD_SIZE {
        return None;
    }
    // SAFETY: length checked; Record is plain old data, read unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Record>()) })
}

pub struct Source {
    precious: AsyncFd<RingBuf<MapData>>,
    bulk: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    stacks: StackTraceMap<MapData>,
    contexts: ContextRanges,
    misses: Misses,
    /// The loss counts last read, and when.
    lost_read: Cell<Option<(Instant, LostCounts)>>,
    /// Malformed items (never expected; counted rather than trusted).
    pub malformed: u64,
}

/// How long records may wait in a ring when the kernel did not wake us.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How often the loss counters are read from the kernel.
const LOST_EVERY: Duration = Duration::from_secs(1);

fn ring(ebpf: &mut aya::Ebpf, name: &str) -> Result<AsyncFd<RingBuf<MapData>>> {
    let ring = RingBuf::try_from(
        ebpf.take_map(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?,
    )?;
    // SAFETY: the RingBuf owns its map fd, which stays open and the same
    // for as long as the AsyncFd owns the RingBuf.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow!("cannot poll the ring buffer {name}: {e}"))
}

/// What the kernel could not tell kat so far: records it could not queue
/// (the ring was full) or whose program it skipped (crate::misses), by
/// kind (`kat_common::kind`), skipped runs that may each have been any
/// kind, keepalive timer runs the tracker found no record of, and
/// conntrack expiries that did not reach kat (`--conntrack`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LostCounts {
    pub by_kind: [u64; kind::COUNT],
    pub skipped_runs: u64,
    pub unseen_timer_runs: u64,
    pub conntrack_expired: u64,
}

/// The names skipped and unseen runs go by beside the kinds.
const SKIPPED_RUN: &str = "skipped_run";
const UNSEEN_TIMER_RUN: &str = "unseen_timer_run";
const CONNTRACK_EXPIRED: &str = "conntrack_expired";

impl LostCounts {
    pub fn total(&self) -> u64 {
        self.by_kind.iter().sum::<u64>()
            + self.skipped_runs
            + self.unseen_timer_runs
            + self.conntrack_expired
    }

    /// All but orderly closes: what must never be lost. A skipped run may
    /// have been a death.
    pub fn precious(&self) -> u64 {
        self.total() - self.by_kind[kind::CLOSED as usize]
    }

    /// The kinds with losses, by name, and the skipped runs.
    pub fn by_kind(&self) -> BTreeMap<String, u64> {
        self.by_kind
            .iter()
            .enumerate()
            .map(|(k, &n)| (kind::name(k), n))
            .chain([
                (SKIPPED_RUN, self.skipped_runs),
                (UNSEEN_TIMER_RUN, self.unseen_timer_runs),
                (CONNTRACK_EXPIRED, self.conntrack_expired),
            ])
            .filter(|&(_, n)| n > 0)
            .map(|(k, n)| (k.to_string(), n))
            .collect()
    }

    /// `12 records lost (death 2, closed 10)`.
    pub fn text(&self) -> String {
        let kinds: Vec<String> = self
            .by_kind()
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if kinds.is_empty() {
            "0 records lost".into()
        } else {
            format!("{} records lost ({})", self.total(), kinds.join(", "))
        }
    }
}

impl Source {
    pub fn new(ebpf: &mut aya::Ebpf, contexts: ContextRanges) -> Result<Self> {
        let precious = ring(ebpf, "PRECIOUS")?;
        let bulk = ring(ebpf, "BULK")?;
        let lost = PerCpuArray::try_from(
            ebpf.take_map("LOST")
                .ok_or_else(|| anyhow!("map LOST missing"))?,
        )?;
        let stacks = StackTraceMap::try_from(
            ebpf.take_map("STACKS")
                .ok_or_else(|| anyhow!("map STACKS missing"))?,
        )?;
        Ok(Self {
            misses: Misses::start(ebpf),
            lost_read: Cell::new(None),
            precious,
            bulk,
            lost,
            stacks,
            contexts,
            malformed: 0,
        })
    }

    /// Waits until the kernel wakes us (either ring) or the drain interval
    /// passes, then returns every record in both rings.
    pub async fn next_batch(&mut self) -> Vec<Record> {
        let woken = async {
            tokio::select! {
                guard = self.precious.readable_mut() => {
                    if let Ok(mut g) = guard { g.clear_ready(); }
                }
                guard = self.bulk.readable_mut() => {
                    if let Ok(mut g) = guard { g.clear_ready(); }
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_EVERY, woken).await;
        self.drain()
    }

    /// Every record waiting, precious ones first.
    pub fn drain(&mut self) -> Vec<Record> {
        let mut out = Vec::new();
        for ring in [&mut self.precious, &mut self.bulk] {
            let ring = ring.get_mut();
            while let Some(item) = ring.next() {
                match decode(&item) {
                    Some(rec) => out.push(rec),
                    None => self.malformed += 1,
                }
            }
        }
        for rec in out.iter_mut().filter(|r| r.kind == kind::RESET_SENT) {
            rec.context = self.stack_context(rec.stack_id);
        }
        if log::log_enabled!(log::Level::Trace) {
            for rec in &out {
                log::trace!("record {rec:?}");
            }
        }
        out
    }

    /// Which telling functions a RST's kernel stack passed through; the
    /// stack is removed once read, so the map never fills.
    fn stack_context(&mut self, stack_id: i32) -> u8 {
        let Ok(id) = u32::try_from(stack_id) else {
            return 0;
        };
        let context = match self.stacks.get(&id, 0) {
            Ok(stack) => self.contexts.of(stack.frames().iter().map(|f| f.ip)),
            Err(e) => {
                log::debug!("stack {id}: {e}");
                0
            }
        };
        let _ = self.stacks.remove(&id);
        context
    }

    /// Records the kernel could not queue, by kind, summed over CPUs, and
    /// the runs it skipped; read from the kernel at most once a second
    /// (`fresh` always). Each read is a map syscall, and while one runs
    /// the kernel skips the kprobe lane's programs on that CPU: the views
    /// ask after every drain.
    pub fn lost(&self, fresh: bool) -> LostCounts {
        if let Some((at, counts)) = self.lost_read.get() {
            if !fresh && at.elapsed() < LOST_EVERY {
                return counts;
            }
        }
        let counts = self.read_lost();
        self.lost_read.set(Some((Instant::now(), counts)));
        counts
    }

    fn read_lost(&self) -> LostCounts {
        let skipped = self.misses.get();
        let mut counts = LostCounts {
            skipped_runs: skipped.anything,
            ..LostCounts::default()
        };
        for (k, n) in counts.by_kind.iter_mut().enumerate() {
            *n = self
                .lost
                .get(&(k as u32), 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0);
        }
        counts.by_kind[kind::CLOSED as usize] += skipped.orderly_closes;
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_whole_records_only() {
        let rec = Record {
            sk: 0xffff_8880_1234_5678,
            established_ns: 7,
            sport: 6699,
            kind: kat_common::kind::TIMER_RUN,
            probes_after: 2,
            ..Default::default()
        };
        // SAFETY: Record is plain old data.
        let bytes = unsafe {
            std::slice::from_raw_parts((&rec as *const Record).cast::<u8>(), RECORD_SIZE)
        };
        assert_eq!(decode(bytes), Some(rec));
        // Unaligned input decodes too.
        let mut shifted = [0u8; RECORD_SIZE + 1];
        shifted[1..].copy_from_slice(bytes);
        assert_eq!(decode(&shifted[1..]), Some(rec));
        assert_eq!(decode(&bytes[..RECORD_SIZE - 1]), None);
    }

    #[test]
    fn loss_is_told_by_kind_and_precious_excludes_orderly_closes() {
        let mut lost = LostCounts::default();
        assert_eq!(lost.text(), "0 records lost");
        lost.by_kind[kind::CLOSED as usize] = 10;
        lost.by_kind[kind::STATE_CHANGE as usize] = 2;
        assert_eq!(lost.total(), 12);
        assert_eq!(lost.precious(), 2);
        assert_eq!(lost.text(), "12 records lost (closed 10, death 2)");
        assert_eq!(lost.by_kind().get("closed"), Some(&10));
        lost.skipped_runs = 3;
        assert_eq!(lost.total(), 15);
        assert_eq!(lost.precious(), 5, "a skipped run may have been a death");
        assert_eq!(
            lost.text(),
            "15 records lost (closed 10, death 2, skipped_run 3)"
        );
        lost.unseen_timer_runs = 1;
        assert_eq!(lost.precious(), 6, "an unseen run may have been a probe");
        assert_eq!(lost.by_kind().get("unseen_timer_run"), Some(&1));
    }
}
