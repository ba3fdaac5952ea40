//! Orderly closes counted in the kernel (`CLOSES`), read as aggregates.
//!
//! The map has two halves (the key's epoch). Each read empties the half the
//! kernel stopped counting into at the previous read, then switches halves:
//! the half read has been quiet for a whole interval, so no close counted
//! by a CPU in the middle of a switch is lost.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, Context as _, Result};
use aya::maps::{Array, MapData, PerCpuHashMap, PerCpuValues};
use chrono::{DateTime, Utc};
use kat_common::{flag, CloseKey, CloseStats, AF_INET, CLOSES_OVERFLOW_PORT};

use crate::event::{Closes, Direction};

pub struct ClosesSource {
    map: PerCpuHashMap<MapData, CloseKey, CloseStats>,
    epoch: Array<MapData, u32>,
    current: u32,
    /// When the half to be read next started and stopped counting.
    quiet_since: Option<(DateTime<Utc>, DateTime<Utc>)>,
    counting_since: DateTime<Utc>,
}

fn overflow_key(epoch: u8) -> CloseKey {
    CloseKey {
        port: CLOSES_OVERFLOW_PORT,
        epoch,
        ..CloseKey::default()
    }
}

fn zeroes() -> Result<PerCpuValues<CloseStats>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow!("cannot count CPUs: {e}"))?;
    PerCpuValues::try_from(vec![CloseStats::default(); cpus]).context("per-CPU values")
}

impl ClosesSource {
    pub fn new(ebpf: &mut aya::Ebpf, now: DateTime<Utc>) -> Result<Self> {
        let mut map: PerCpuHashMap<_, CloseKey, CloseStats> = PerCpuHashMap::try_from(
            ebpf.take_map("CLOSES")
                .ok_or_else(|| anyhow!("map CLOSES missing"))?,
        )?;
        let epoch = Array::try_from(
            ebpf.take_map("EPOCH")
                .ok_or_else(|| anyhow!("map EPOCH missing"))?,
        )?;
        // The kernel counts into these once the map is full.
        for e in 0..2 {
            map.insert(overflow_key(e), zeroes()?, 0)
                .context("cannot seed the CLOSES map")?;
        }
        Ok(Self {
            map,
            epoch,
            current: 0,
            quiet_since: None,
            counting_since: now,
        })
    }

    /// The closes of the half that has been quiet since the previous call
    /// (none at the first), then switches halves.
    pub fn take(&mut self, now: DateTime<Utc>) -> Vec<Closes> {
        let quiet = (1 - self.current) as u8;
        let mut read = Vec::new();
        if let Some((from, until)) = self.quiet_since {
            let entries: Vec<(CloseKey, Vec<CloseStats>)> = self
                .map
                .iter()
                .filter_map(|e| e.map_err(|e| log::debug!("CLOSES: {e}")).ok())
                .filter(|(k, _)| k.epoch == quiet)
                .map(|(k, v)| (k, v.iter().copied().collect()))
                .collect();
            for (key, _) in &entries {
                let emptied = if key.port == CLOSES_OVERFLOW_PORT {
                    zeroes().and_then(|z| Ok(self.map.insert(*key, z, 0)?))
                } else {
                    self.map.remove(key).map_err(Into::into)
                };
                if let Err(e) = emptied {
                    log::debug!("CLOSES: cannot empty {key:?}: {e:#}");
                }
            }
            read = aggregate(entries, from, until);
        }
        if let Err(e) = self.epoch.set(0, u32::from(quiet), 0) {
            log::warn!("cannot switch the CLOSES half: {e}");
            return read;
        }
        self.current = u32::from(quiet);
        self.quiet_since = Some((self.counting_since, now));
        self.counting_since = now;
        read
    }
}

fn peer(key: &CloseKey) -> IpAddr {
    if key.family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(
            key.peer[0],
            key.peer[1],
            key.peer[2],
            key.peer[3],
        ))
    } else if key.port == CLOSES_OVERFLOW_PORT {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        let v6 = Ipv6Addr::from(key.peer);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    }
}

/// One `closes` line per key with closes, its per-CPU values summed.
pub fn aggregate(
    entries: Vec<(CloseKey, Vec<CloseStats>)>,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<Closes> {
    let interval_s = (until - from).num_milliseconds().max(0) as f64 / 1e3;
    let mut out: Vec<Closes> = entries
        .into_iter()
        .filter_map(|(key, per_cpu)| {
            let mut sum = CloseStats::default();
            for s in &per_cpu {
                sum.count += s.count;
                sum.timed += s.timed;
                sum.lifetime_sum_ns += s.lifetime_sum_ns;
                sum.lifetime_max_ns = sum.lifetime_max_ns.max(s.lifetime_max_ns);
            }
            (sum.count > 0).then(|| Closes {
                ts: until,
                interval_s,
                netns: key.netns,
                port: key.port,
                direction: match key.direction {
                    flag::ACTIVE_OPEN => Direction::Out,
                    flag::PASSIVE_OPEN => Direction::In,
                    _ => Direction::Unknown,
                },
                peer: peer(&key),
                count: sum.count,
                timed: sum.timed,
                lifetime_sum_s: sum.lifetime_sum_ns as f64 / 1e9,
                lifetime_max_s: sum.lifetime_max_ns as f64 / 1e9,
            })
        })
        .collect();
    out.sort_by_key(|c| (c.netns, c.port, c.peer));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::at;

    fn key(peer: [u8; 4], port: u16, direction: u8) -> CloseKey {
        let mut k = CloseKey {
            netns: 7,
            port,
            direction,
            family: AF_INET,
            ..CloseKey::default()
        };
        k.peer[..4].copy_from_slice(&peer);
        k
    }

    fn stats(count: u64, timed: u64, sum_ms: u64, max_ms: u64) -> CloseStats {
        CloseStats {
            count,
            timed,
            lifetime_sum_ns: sum_ms * 1_000_000,
            lifetime_max_ns: max_ms * 1_000_000,
        }
    }

    #[test]
    fn per_cpu_counts_add_up_and_the_longest_lifetime_wins() {
        let out = aggregate(
            vec![(
                key([198, 18, 0, 2], 80, flag::PASSIVE_OPEN),
                vec![stats(3, 3, 300, 200), stats(2, 1, 50, 50)],
            )],
            at(0.0),
            at(10.0),
        );
        assert_eq!(out.len(), 1);
        let c = &out[0];
        assert_eq!((c.count, c.timed), (5, 4));
        assert!((c.lifetime_sum_s - 0.35).abs() < 1e-9);
        assert!((c.lifetime_max_s - 0.2).abs() < 1e-9);
        assert_eq!(c.interval_s, 10.0);
        assert_eq!(c.ts, at(10.0));
        assert_eq!(c.direction, Direction::In);
        assert_eq!(c.peer, "198.18.0.2".parse::<IpAddr>().expect("addr"));
        assert_eq!((c.netns, c.port), (7, 80));
    }

    #[test]
    fn empty_keys_make_no_line_and_lines_are_sorted() {
        let out = aggregate(
            vec![
                (
                    key([198, 18, 0, 9], 443, flag::ACTIVE_OPEN),
                    vec![stats(1, 0, 0, 0)],
                ),
                (key([198, 18, 0, 3], 22, 0), vec![stats(0, 0, 0, 0)]),
                (
                    key([198, 18, 0, 1], 443, flag::ACTIVE_OPEN),
                    vec![stats(2, 0, 0, 0)],
                ),
            ],
            at(0.0),
            at(1.0),
        );
        let peers: Vec<String> = out.iter().map(|c| c.peer.to_string()).collect();
        assert_eq!(peers, ["198.18.0.1", "198.18.0.9"]);
        assert!(out.iter().all(|c| c.direction == Direction::Out));
    }

    #[test]
    fn the_overflow_key_reads_as_port_0_of_no_peer() {
        let out = aggregate(
            vec![(overflow_key(1), vec![stats(4, 0, 0, 0)])],
            at(0.0),
            at(1.0),
        );
        assert_eq!(out[0].port, 0);
        assert_eq!(out[0].peer, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(out[0].direction, Direction::Unknown);
    }
}
