//! `kat top --replay`: a journal written by `kat record` played back
//! through the dashboard's model. Pure: the edge says how much real time
//! passed and which keys were pressed; the replay answers with the messages
//! the live edge would have sent (events, ticks, lost counts and the
//! connections table, which it rebuilds from the events), so the model and
//! the view work as they do live.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::model::{ConnKey, Key, Live, Msg, ReplayStatus, HISTORY};
use crate::event::{Event, What};
use crate::journal::Entry;
use crate::owner::Owner;

/// The bounds of `--speed` and of the `+` and `-` keys.
pub const MIN_SPEED: f64 = 1.0 / 16.0;
pub const MAX_SPEED: f64 = 4096.0;

enum Item {
    Event(Box<Event>),
    /// Records lost, counted since that run of `kat record` started:
    /// (all, all but orderly closes).
    Lost(u64, u64),
    /// `kat record` started again: what was live before the gap is unknown.
    Restart,
}

/// Of a lost count, the records other than orderly closes (journals
/// older than the split count every loss as precious).
fn precious(l: &crate::event::Lost) -> u64 {
    if l.by_kind.is_empty() {
        return l.count;
    }
    l.by_kind
        .iter()
        .filter(|(k, _)| k.as_str() != "closed")
        .map(|(_, n)| n)
        .sum()
}

/// A connection seen in the journal and not dead yet.
struct Conn {
    live: Live,
    /// When its keepalive timer should run next, if its settings are known.
    next_run: Option<DateTime<Utc>>,
}

pub struct Replay {
    /// What is still to be played, oldest first.
    items: VecDeque<(DateTime<Utc>, Item)>,
    clock: DateTime<Utc>,
    /// The last whole second a tick was sent for.
    ticked: i64,
    speed: f64,
    paused: bool,
    problems: usize,
    conns: BTreeMap<ConnKey, Conn>,
    /// Lost by the earlier runs of `kat record`, and by the current one.
    /// (all, precious) lost in earlier runs, and in this one.
    lost_before: (u64, u64),
    lost_run: (u64, u64),
}

/// The first whole second at or after `ts`.
fn ceil_s(ts: DateTime<Utc>) -> i64 {
    ts.timestamp() + i64::from(ts.timestamp_subsec_nanos() > 0)
}

fn after(ts: DateTime<Utc>, seconds: f64) -> Option<DateTime<Utc>> {
    let d = TimeDelta::from_std(Duration::try_from_secs_f64(seconds).ok()?).ok()?;
    ts.checked_add_signed(d)
}

impl Replay {
    /// The replay of the events in `entries` that `keep` wants, its clock
    /// a second before the first; None when no event is wanted.
    pub fn new(
        entries: Vec<Entry>,
        keep: impl Fn(&Event) -> bool,
        speed: f64,
        problems: usize,
    ) -> Option<Self> {
        let mut items = Vec::new();
        let mut run = None;
        for entry in entries {
            match entry {
                Entry::Event(ev) if keep(&ev) => items.push((ev.ts, Item::Event(Box::new(ev)))),
                Entry::Event(_) => {}
                Entry::Lost(l) => items.push((l.ts, Item::Lost(l.count, precious(&l)))),
                Entry::Closes(_) | Entry::Expired(_) => {}
                Entry::Header(h) => {
                    if run.is_some_and(|r| r != h.run_started) {
                        items.push((h.run_started, Item::Restart));
                    }
                    run = Some(h.run_started);
                }
            }
        }
        // Stable: records with the same time keep the order they were written in.
        items.sort_by_key(|(ts, _)| *ts);
        let last = items
            .iter()
            .rposition(|(_, i)| matches!(i, Item::Event(_)))?;
        let end = items[last].0;
        // After the last event only a lost count still matters (a restart
        // would empty the table the post-mortem is about): it comes with it.
        let tail = items.split_off(last + 1);
        items.extend(
            tail.into_iter()
                .filter(|(_, i)| matches!(i, Item::Lost(..)))
                .map(|(_, i)| (end, i)),
        );
        let first = items
            .iter()
            .find_map(|(ts, i)| matches!(i, Item::Event(_)).then_some(*ts))?;
        let clock = first
            .checked_sub_signed(TimeDelta::seconds(1))
            .unwrap_or(first);
        Some(Self {
            items: items.into(),
            clock,
            ticked: clock.timestamp(),
            speed,
            paused: false,
            problems,
            conns: BTreeMap::new(),
            lost_before: (0, 0),
            lost_run: (0, 0),
        })
    }

    pub fn clock(&self) -> DateTime<Utc> {
        self.clock
    }

    pub fn status(&self) -> ReplayStatus {
        ReplayStatus {
            clock: self.clock,
            speed: self.speed,
            paused: self.paused,
            at_end: self.items.is_empty(),
            problems: self.problems,
        }
    }

    /// `real` time passed: unless paused, the clock moves `speed` times as
    /// far (no further than the last event) and what it passes is played.
    pub fn advance(&mut self, real: Duration) -> Vec<Msg> {
        if self.paused {
            return vec![Msg::Replay(self.status())];
        }
        let end = self.items.back().map_or(self.clock, |(ts, _)| *ts);
        let step = TimeDelta::from_std(real.mul_f64(self.speed)).unwrap_or(TimeDelta::MAX);
        self.clock = self.clock.checked_add_signed(step).unwrap_or(end).min(end);
        self.play(false)
    }

    /// A replay key (the model routes them here), played.
    pub fn key(&mut self, k: Key) -> Vec<Msg> {
        match k {
            // At the end there is nothing left to resume.
            Key::Char('p' | ' ') if !self.items.is_empty() => self.paused = !self.paused,
            Key::Char('+' | '=') => self.speed = (self.speed * 2.0).min(MAX_SPEED),
            Key::Char('-') => self.speed = (self.speed / 2.0).max(MIN_SPEED),
            Key::Char('n') => {
                if let Some(ts) = self.next_event() {
                    self.clock = self.clock.max(ts);
                    return self.play(true);
                }
            }
            Key::Char(']') => {
                let quiet_until = self
                    .next_event()
                    .and_then(|ts| ts.checked_sub_signed(TimeDelta::seconds(1)));
                if let Some(ts) = quiet_until {
                    self.clock = self.clock.max(ts);
                    return self.play(false);
                }
            }
            _ => {}
        }
        vec![Msg::Replay(self.status())]
    }

    fn next_event(&self) -> Option<DateTime<Utc>> {
        self.items
            .iter()
            .find_map(|(ts, i)| matches!(i, Item::Event(_)).then_some(*ts))
    }

    /// Plays what the clock has reached (with `one`, no further than the
    /// next event), with a tick at every whole second crossed, in order.
    fn play(&mut self, one: bool) -> Vec<Msg> {
        let mut msgs = Vec::new();
        let now = self.clock.timestamp();
        // Only the last HISTORY seconds can be drawn; the seconds before
        // would cost time at high speeds and be dropped by the model.
        let mut second = (self.ticked + 1).max(now - HISTORY as i64);
        let mut tick = |msgs: &mut Vec<Msg>, until: i64| {
            while second <= now && second < until {
                msgs.extend(DateTime::from_timestamp(second, 0).map(Msg::Tick));
                second += 1;
            }
        };
        let (mut played, mut any) = (false, false);
        while let Some((ts, item)) = self.items.front() {
            let is_event = matches!(item, Item::Event(_));
            if *ts > self.clock || (one && played && is_event) {
                break;
            }
            tick(&mut msgs, ceil_s(*ts));
            played |= is_event;
            any = true;
            let Some((_, item)) = self.items.pop_front() else {
                break;
            };
            match item {
                Item::Event(ev) => {
                    self.track(&ev);
                    msgs.push(Msg::Event(ev));
                }
                Item::Lost(total, precious) => {
                    self.lost_run = (total, precious);
                    msgs.push(Msg::Lost {
                        total: self.lost_before.0 + total,
                        precious: self.lost_before.1 + precious,
                    });
                }
                Item::Restart => {
                    self.conns.clear();
                    self.lost_before.0 += self.lost_run.0;
                    self.lost_before.1 += self.lost_run.1;
                    self.lost_run = (0, 0);
                }
            }
        }
        tick(&mut msgs, i64::MAX);
        self.ticked = self.ticked.max(now);
        if any || !msgs.is_empty() {
            msgs.push(Msg::Snapshot(self.snapshot()));
        }
        if self.items.is_empty() {
            self.paused = true;
        }
        msgs.push(Msg::Replay(self.status()));
        msgs
    }

    fn track(&mut self, ev: &Event) {
        let key = ConnKey::of(ev);
        let (probes_out, wait) = match ev.what {
            What::Death { .. } => {
                self.conns.remove(&key);
                return;
            }
            What::Probe { probe, .. } => (probe, ev.keepalive.map(|s| s.intvl_s)),
            // The peer was just heard from: the timer waits the idle time again.
            What::ProbeAnswered { .. } => (0, ev.keepalive.map(|s| s.idle_s)),
        };
        let conn = self.conns.entry(key).or_insert_with(|| Conn {
            live: Live {
                key,
                state: "ESTABLISHED",
                uid: ev.uid,
                owner: None,
                next_run_s: 0.0,
                probes_out: 0,
            },
            next_run: None,
        });
        conn.live.probes_out = probes_out;
        conn.next_run = wait.and_then(|s| after(ev.ts, s));
        if let Some(pid) = ev.pid {
            conn.live.owner = Some(Owner {
                pid,
                comm: ev.comm.clone().unwrap_or_default(),
                workload: ev.workload.clone(),
            });
        }
    }

    /// The connections table at the clock.
    fn snapshot(&self) -> Vec<Live> {
        self.conns
            .values()
            .map(|c| Live {
                next_run_s: c
                    .next_run
                    .map_or(0.0, |t| (t - self.clock).as_seconds_f64().max(0.0)),
                ..c.live.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
