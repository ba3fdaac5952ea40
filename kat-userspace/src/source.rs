//! Kernel records in: the ring buffer, drained in batches, and the
//! lost-record counter.

use std::time::Duration;

use anyhow::{anyhow, Result};
use aya::maps::{MapData, PerCpuArray, RingBuf, StackTraceMap};
use kat_common::{kind, Record, RECORD_SIZE};

use crate::kernel::ContextRanges;
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
    ring: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    stacks: StackTraceMap<MapData>,
    contexts: ContextRanges,
    /// Malformed items (never expected; counted rather than trusted).
    pub malformed: u64,
}

/// How long records may wait in the ring when the kernel did not wake us.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

impl Source {
    pub fn new(ebpf: &mut aya::Ebpf, contexts: ContextRanges) -> Result<Self> {
        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or_else(|| anyhow!("map EVENTS missing"))?,
        )?;
        let lost = PerCpuArray::try_from(
            ebpf.take_map("LOST")
                .ok_or_else(|| anyhow!("map LOST missing"))?,
        )?;
        let stacks = StackTraceMap::try_from(
            ebpf.take_map("STACKS")
                .ok_or_else(|| anyhow!("map STACKS missing"))?,
        )?;
        // SAFETY: the RingBuf owns its map fd, which stays open and the
        // same for as long as the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow!("cannot poll the ring buffer: {e}"))?;
        Ok(Self {
            ring,
            lost,
            stacks,
            contexts,
            malformed: 0,
        })
    }

    /// Waits until the kernel wakes us or the drain interval passes, then
    /// returns every record in the ring.
    pub async fn next_batch(&mut self) -> Vec<Record> {
        if let Ok(Ok(mut guard)) = tokio::time::timeout(DRAIN_EVERY, self.ring.readable_mut()).await
        {
            guard.clear_ready();
        }
        self.drain()
    }

    pub fn drain(&mut self) -> Vec<Record> {
        let mut out = Vec::new();
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            match decode(&item) {
                Some(rec) => {
                    log::trace!("record {rec:?}");
                    out.push(rec);
                }
                None => self.malformed += 1,
            }
        }
        for rec in out.iter_mut().filter(|r| r.kind == kind::RESET_SENT) {
            rec.context = self.stack_context(rec.stack_id);
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

    /// Records the kernel could not queue, summed over CPUs.
    pub fn lost(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_whole_records_only() {
        let rec = Record {
            sk: 0xffff_8880_1234_5678,
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
}
