//! The dashboard's state and its pure update (The Elm Architecture):
//! messages in, state changed, no I/O.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::at_risk::AtRisk;
pub use crate::event::ConnKey;
use crate::event::{Event, Reason, Settings, Silence, What};
use crate::owner::Owner;
use crate::report::paths::Learner;
use crate::workload::Workload;

/// A socket with its keepalive timer pending, from the latest snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub key: ConnKey,
    pub state: &'static str,
    pub uid: u32,
    pub owner: Option<Owner>,
    /// Seconds until the keepalive timer runs next.
    pub next_run_s: f64,
    pub probes_out: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    pub ts: DateTime<Utc>,
    pub what: What,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Death {
    pub ts: DateTime<Utc>,
    pub key: ConnKey,
    pub reason: Reason,
    pub errno: Option<String>,
    pub probes: u8,
    pub lifetime_s: Option<f64>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub workload: Option<Arc<Workload>>,
    pub silence: Option<Silence>,
    /// This host's conntrack forgot its flow first (`--conntrack`).
    pub conntrack_forgot: bool,
}

/// One row of the connections table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row<'a> {
    pub live: &'a Live,
    pub settings: Option<Settings>,
    pub idle_s: Option<f64>,
    /// Worst case: every remaining probe unanswered.
    pub dead_in_s: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Probing,
    Local,
    Remote,
    Owner,
    NextProbe,
}

impl Sort {
    pub fn next(self) -> Self {
        match self {
            Sort::Probing => Sort::Local,
            Sort::Local => Sort::Remote,
            Sort::Remote => Sort::Owner,
            Sort::Owner => Sort::NextProbe,
            Sort::NextProbe => Sort::Probing,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sort::Probing => "probing first",
            Sort::Local => "local",
            Sort::Remote => "remote",
            Sort::Owner => "owner",
            Sort::NextProbe => "next probe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Enter,
    Esc,
    Backspace,
    CtrlC,
}

pub enum Msg {
    Event(Box<Event>),
    /// Every keepalive socket now, from sock_diag.
    Snapshot(Vec<Live>),
    /// The connections at risk now, longest silent first.
    AtRisk(Vec<AtRisk>),
    /// Records lost by the kernel so far: all, and all but orderly closes.
    Lost {
        total: u64,
        precious: u64,
    },
    /// Orderly closes the kernel counted since the last of these.
    Closes(u64),
    /// Once a second: the wall clock, for rates and ages.
    Tick(DateTime<Utc>),
    Key(Key),
    /// Where a replay of a journal stands (`kat top --replay`).
    Replay(ReplayStatus),
}

/// A replay's clock and controls, for the header and the footer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayStatus {
    /// The journal's time being shown.
    pub clock: DateTime<Utc>,
    /// Journal seconds per real second.
    pub speed: f64,
    pub paused: bool,
    /// Every event has been played.
    pub at_end: bool,
    /// Journal lines that could not be read and were skipped.
    pub problems: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Quit,
    /// A key for the replay's player (`Replay::key`), which answers with
    /// messages for the model.
    Replay(Key),
}

/// The keys a replay's player takes; the others are the model's.
fn replay_key(k: Key) -> bool {
    matches!(k, Key::Char('p' | ' ' | '+' | '=' | '-' | 'n' | ']'))
}

/// What happened in one second, for the charts and the rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Second {
    pub probes: u64,
    pub deaths: u64,
    pub events: u64,
}

/// `--pid`: whether a connection owned by `owner` is shown. One whose
/// owner is not known (yet) is kept: the owner index may learn it a walk
/// later, and a probe or death dropped now would never come back.
pub fn pid_wanted(pid: Option<u32>, owner: Option<u32>) -> bool {
    match (pid, owner) {
        (Some(want), Some(owner)) => want == owner,
        _ => true,
    }
}

/// Seconds of rate history kept for the charts.
pub const HISTORY: usize = 300;
const DEATHS_KEPT: usize = 500;
const TIMELINE_KEPT: usize = 50;
/// Connections whose timeline is kept: beyond this, the one whose last
/// event is oldest goes. (A timeline also goes when its connection dies,
/// unless it is the one shown.)
const TIMELINES_KEPT: usize = 10_000;
/// Rows a page key moves.
pub const PAGE: usize = 10;

pub struct Model {
    pub host: String,
    pub kernel: String,
    pub lanes: String,
    pub now: DateTime<Utc>,
    pub live: Vec<Live>,
    pub settings: HashMap<ConnKey, Settings>,
    pub idle: HashMap<ConnKey, f64>,
    pub timelines: HashMap<ConnKey, VecDeque<TimelineEntry>>,
    pub deaths: VecDeque<Death>,
    pub deaths_by_reason: BTreeMap<Reason, u64>,
    pub events_total: u64,
    pub lost: u64,
    /// Of `lost`, records other than orderly closes.
    pub lost_precious: u64,
    /// One entry per second, newest last.
    pub history: VecDeque<Second>,
    current: Second,
    pub selected: usize,
    pub filter: String,
    pub editing_filter: bool,
    pub sort: Sort,
    pub paused: bool,
    pending: Vec<Msg>,
    pub help: bool,
    pub detail: Option<ConnKey>,
    /// Only connections owned by this pid (`--pid`; see `pid_wanted`).
    pub pid: Option<u32>,
    /// Set when a journal is replayed rather than the kernel watched.
    pub replay: Option<ReplayStatus>,
    /// The first sock_diag snapshot is still on its way.
    pub listing: bool,
    /// The at-risk panel is shown in place of the deaths (key `a`).
    pub at_risk_shown: bool,
    /// The latest listing for the panel; None until the first since it
    /// was opened.
    pub at_risk: Option<Vec<AtRisk>>,
    /// The silence that puts a connection at risk (`--idle-over`).
    pub idle_over_s: f64,
    /// Path idle timeouts learnt from the deaths seen (the at-risk panel).
    pub paths: Learner,
}

impl Model {
    pub fn new(host: String, kernel: String, lanes: String, now: DateTime<Utc>) -> Self {
        Self {
            host,
            kernel,
            lanes,
            now,
            live: Vec::new(),
            settings: HashMap::new(),
            idle: HashMap::new(),
            timelines: HashMap::new(),
            deaths: VecDeque::new(),
            deaths_by_reason: BTreeMap::new(),
            events_total: 0,
            lost: 0,
            lost_precious: 0,
            history: VecDeque::new(),
            current: Second::default(),
            selected: 0,
            filter: String::new(),
            editing_filter: false,
            sort: Sort::Probing,
            paused: false,
            pending: Vec::new(),
            help: false,
            detail: None,
            pid: None,
            replay: None,
            listing: false,
            at_risk_shown: false,
            at_risk: None,
            idle_over_s: 60.0,
            paths: Learner::default(),
        }
    }

    pub fn update(&mut self, msg: Msg) -> Action {
        match msg {
            Msg::Key(k) => return self.key(k),
            Msg::Tick(now) => {
                self.now = now;
                self.history.push_back(std::mem::take(&mut self.current));
                while self.history.len() > HISTORY {
                    self.history.pop_front();
                }
            }
            Msg::Lost { total, precious } => {
                self.lost = total;
                self.lost_precious = precious;
            }
            Msg::Replay(status) => self.replay = Some(status),
            // While paused the screen holds still; nothing is lost.
            data if self.paused => self.pending.push(data),
            Msg::Event(ev) => self.event(*ev),
            Msg::Snapshot(live) => {
                self.live = live;
                self.listing = false;
                self.clamp_selection();
            }
            Msg::AtRisk(list) if self.at_risk_shown => {
                let pid = self.pid;
                self.at_risk = Some(
                    list.into_iter()
                        .filter(|a| pid_wanted(pid, a.pid))
                        .collect(),
                );
            }
            Msg::AtRisk(_) => {}
            Msg::Closes(n) if n > 0 => {
                *self.deaths_by_reason.entry(Reason::Closed).or_default() += n
            }
            Msg::Closes(_) => {}
        }
        Action::Continue
    }

    fn event(&mut self, ev: Event) {
        if !pid_wanted(self.pid, ev.pid) {
            return;
        }
        let key = ConnKey::of(&ev);
        self.events_total += 1;
        self.paths.add(&ev);
        self.current.events += 1;
        if let Some(s) = ev.keepalive {
            self.settings.insert(key, s);
        }
        if !self.timelines.contains_key(&key) && self.timelines.len() >= TIMELINES_KEPT {
            self.drop_oldest_timeline();
        }
        let timeline = self.timelines.entry(key).or_default();
        timeline.push_back(TimelineEntry {
            ts: ev.ts,
            what: ev.what.clone(),
        });
        while timeline.len() > TIMELINE_KEPT {
            timeline.pop_front();
        }
        match &ev.what {
            What::Probe { idle_s, .. } => {
                self.current.probes += 1;
                self.idle.insert(key, *idle_s);
            }
            What::ProbeAnswered { .. } => {}
            What::Death {
                reason,
                errno,
                unanswered_probes,
                lifetime_s,
                silence,
                conntrack_forgot,
                ..
            } => {
                self.current.deaths += 1;
                *self.deaths_by_reason.entry(*reason).or_default() += 1;
                self.deaths.push_front(Death {
                    ts: ev.ts,
                    key,
                    reason: *reason,
                    errno: errno.clone(),
                    probes: *unanswered_probes,
                    lifetime_s: *lifetime_s,
                    pid: ev.pid,
                    comm: ev.comm.clone(),
                    workload: ev.workload.clone(),
                    silence: *silence,
                    conntrack_forgot: conntrack_forgot.is_some(),
                });
                self.deaths.truncate(DEATHS_KEPT);
                self.live.retain(|l| l.key != key);
                self.settings.remove(&key);
                self.idle.remove(&key);
                // Only the detail view can show a dead connection's timeline.
                if self.detail != Some(key) {
                    self.timelines.remove(&key);
                }
                self.clamp_selection();
            }
        }
    }

    /// The timeline whose last event is oldest, other than the one shown.
    fn drop_oldest_timeline(&mut self) {
        let oldest = self
            .timelines
            .iter()
            .filter(|(k, _)| self.detail != Some(**k))
            .min_by_key(|(_, t)| t.back().map(|e| e.ts))
            .map(|(k, _)| *k);
        if let Some(k) = oldest {
            self.timelines.remove(&k);
        }
    }

    /// Keeps the cursor on a row when the table shrinks under it.
    fn clamp_selection(&mut self) {
        let rows = self.live.iter().filter(|l| self.matches(l)).count();
        self.selected = self.selected.min(rows.saturating_sub(1));
    }

    /// Leaves the detail view; the timeline of a connection that is gone
    /// meanwhile can no longer be shown, so it goes too.
    fn close_detail(&mut self) {
        if let Some(key) = self.detail.take() {
            if !self.live.iter().any(|l| l.key == key) {
                self.timelines.remove(&key);
            }
        }
    }

    fn key(&mut self, k: Key) -> Action {
        if self.editing_filter {
            match k {
                Key::Enter | Key::Esc => self.editing_filter = false,
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Char(c) => self.filter.push(c),
                Key::CtrlC => return Action::Quit,
                _ => {}
            }
            self.selected = 0;
            return Action::Continue;
        }
        if self.replay.is_some() && replay_key(k) {
            return Action::Replay(k);
        }
        let last = self.rows().len().saturating_sub(1);
        match k {
            Key::Char('q') | Key::CtrlC => return Action::Quit,
            Key::Char('?') => self.help = !self.help,
            Key::Esc if self.help => self.help = false,
            Key::Esc => self.close_detail(),
            Key::Char('/') => {
                self.editing_filter = true;
                self.filter.clear();
            }
            Key::Char('s') => self.sort = self.sort.next(),
            // A journal has no sockets to list.
            Key::Char('a') if self.replay.is_none() => {
                self.at_risk_shown = !self.at_risk_shown;
                self.at_risk = None;
            }
            Key::Char('p') => {
                self.paused = !self.paused;
                if !self.paused {
                    for msg in std::mem::take(&mut self.pending) {
                        self.update(msg);
                    }
                }
            }
            Key::Enter => {
                let chosen = self.rows().get(self.selected).map(|r| r.live.key);
                if chosen != self.detail {
                    self.close_detail();
                    self.detail = chosen;
                }
            }
            Key::Up => self.selected = self.selected.saturating_sub(1),
            Key::Down => self.selected = (self.selected + 1).min(last),
            Key::PageUp => self.selected = self.selected.saturating_sub(PAGE),
            Key::PageDown => self.selected = (self.selected + PAGE).min(last),
            Key::Home => self.selected = 0,
            Key::End => self.selected = last,
            _ => {}
        }
        Action::Continue
    }

    fn matches(&self, l: &Live) -> bool {
        if !pid_wanted(self.pid, l.owner.as_ref().map(|o| o.pid)) {
            return false;
        }
        let f = self.filter.trim();
        if f.is_empty() {
            return true;
        }
        let k = &l.key;
        f == k.sport.to_string()
            || f == k.dport.to_string()
            || k.saddr.to_string().contains(f)
            || k.daddr.to_string().contains(f)
            || l.owner.as_ref().is_some_and(|o| {
                o.comm.contains(f)
                    || o.workload
                        .as_ref()
                        .and_then(|w| w.label())
                        .is_some_and(|label| label.contains(f))
            })
    }

    /// The connections table, filtered and sorted.
    pub fn rows(&self) -> Vec<Row<'_>> {
        let mut rows: Vec<Row> = self
            .live
            .iter()
            .filter(|l| self.matches(l))
            .map(|l| {
                let settings = self.settings.get(&l.key).copied();
                let dead_in_s = settings.map(|s| {
                    let left = f64::from(s.probes.saturating_sub(l.probes_out));
                    l.next_run_s + left * s.intvl_s
                });
                Row {
                    live: l,
                    settings,
                    idle_s: self.idle.get(&l.key).copied(),
                    dead_in_s,
                }
            })
            .collect();
        match self.sort {
            Sort::Probing => rows.sort_by(|a, b| {
                b.live
                    .probes_out
                    .cmp(&a.live.probes_out)
                    .then(a.live.next_run_s.total_cmp(&b.live.next_run_s))
            }),
            Sort::Local => rows.sort_by_key(|r| (r.live.key.saddr, r.live.key.sport)),
            Sort::Remote => rows.sort_by_key(|r| (r.live.key.daddr, r.live.key.dport)),
            Sort::Owner => rows.sort_by(|a, b| {
                let (x, y) = (a.live.owner.as_ref(), b.live.owner.as_ref());
                x.map(|o| &o.comm).cmp(&y.map(|o| &o.comm))
            }),
            Sort::NextProbe => rows.sort_by(|a, b| a.live.next_run_s.total_cmp(&b.live.next_run_s)),
        }
        rows
    }

    /// Keepalive connections on a path kat has learnt to forget idle
    /// flows whose next probe comes later than the longest silence the
    /// path survives: at risk if they go quiet. With that silence.
    pub fn keepalive_too_slow(&self) -> Vec<(&Live, f64)> {
        self.live
            .iter()
            .filter(|l| pid_wanted(self.pid, l.owner.as_ref().map(|o| o.pid)))
            .filter_map(|l| {
                let k = &l.key;
                let survives = self.paths.survives(k.netns, k.daddr, k.dport)?;
                (l.next_run_s > survives).then_some((l, survives))
            })
            .collect()
    }

    pub fn probing_now(&self) -> usize {
        self.live.iter().filter(|l| l.probes_out > 0).count()
    }

    /// Events in the last complete second.
    pub fn events_per_s(&self) -> u64 {
        self.history.back().map_or(0, |h| h.events)
    }
}

#[cfg(test)]
pub(crate) mod tests;
