//! `kat top`: the live dashboard. This module is the I/O edge: terminal,
//! keys, timers, kernel records and sock_diag snapshots become messages for
//! the pure model; the view draws the model. With `--replay` a journal
//! takes the kernel's place.

pub mod model;
pub mod replay;
pub mod view;

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use chrono::Utc;
use crossterm::event::{
    Event as TermEvent, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers,
};
use futures_util::StreamExt as _;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

use crate::at_risk::{self, DEFAULT_IDLE_OVER};
use crate::diag::worker::Ask;
use crate::engine::{Engine, Selection, Step, StopSignals, Wants};
use crate::journal::{reader, Entry};
use crate::tracker::state_name;
use crate::{diag, kernel};
use model::{pid_wanted, Action, ConnKey, Key, Live, Model, Msg};
use replay::{Replay, MAX_SPEED, MIN_SPEED};

#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Only connections owned by this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Open the dashboard on a journal written by `kat record`, for the
    /// post-mortem (no root needed).
    #[arg(long, value_name = "DIR", conflicts_with = "lane")]
    pub replay: Option<PathBuf>,
    /// Journal seconds played per second with --replay (1/16 to 4096).
    #[arg(long, value_name = "N", default_value_t = 1.0, value_parser = speed, requires = "replay")]
    pub speed: f64,
    /// The silence that puts a connection in the at-risk panel (key a).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_IDLE_OVER,
          value_parser = at_risk::idle_over, conflicts_with = "replay")]
    pub idle_over: Duration,
    /// A death whose flow this host's conntrack forgot first says so (on a
    /// NAT gateway or stateful firewall; docs/events.md).
    #[arg(long, conflicts_with = "replay")]
    pub conntrack: bool,
}

fn speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(n) if (MIN_SPEED..=MAX_SPEED).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a speed: a number from {MIN_SPEED} to {MAX_SPEED} (2 plays twice as fast)"
        )),
    }
}

/// Raw mode and the alternate screen while it lives; restored on drop,
/// and by the panic hook, so a crash never leaves a broken terminal.
struct TerminalGuard;

fn restore() {
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// Raw mode, the alternate screen, no cursor: the dashboard's terminal.
fn take_over() -> Result<()> {
    crossterm::terminal::enable_raw_mode()?;
    crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::EnterAlternateScreen,
        crossterm::cursor::Hide
    )?;
    Ok(())
}

impl TerminalGuard {
    fn enter() -> Result<Self> {
        take_over()?;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        Ok(Self)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

fn key(k: KeyEvent) -> Option<Key> {
    if k.kind == KeyEventKind::Release {
        return None;
    }
    Some(match k.code {
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}

/// The worker's snapshot as table rows, with the owners the index knows
/// (the others show up once a walk has found them).
fn live(engine: &Engine, sockets: Vec<diag::KeepaliveSocket>) -> Vec<Live> {
    sockets
        .into_iter()
        .map(|k| {
            let s = &k.socket;
            Live {
                key: ConnKey {
                    netns: k.netns,
                    saddr: s.saddr,
                    sport: s.sport,
                    daddr: s.daddr,
                    dport: s.dport,
                },
                state: state_name(s.state),
                uid: s.uid,
                owner: engine.owner(u64::from(s.inode)),
                next_run_s: k.expires.as_secs_f64(),
                probes_out: s.probes_out,
            }
        })
        .collect()
}

/// A snapshot dumps every namespace, which on a host with 100 000
/// connections takes a good part of a second. The next one is asked for
/// only after 19 times as long as the last one took (at most 5 % of the
/// time spent dumping), at most once a second, and never while one is out.
#[derive(Debug, Default)]
struct SnapshotPace {
    out: bool,
    next: Option<Instant>,
}

impl SnapshotPace {
    /// Whether to ask for a snapshot now (and if so, it is asked).
    fn due(&mut self, now: Instant) -> bool {
        if self.out || self.next.is_some_and(|n| now < n) {
            return false;
        }
        self.out = true;
        true
    }

    /// The snapshot asked for came back `now`, after `took` listing.
    fn answered(&mut self, now: Instant, took: Duration) {
        if std::mem::take(&mut self.out) {
            self.next = Some(now + took * 19);
        }
    }
}

/// Hands the messages to the model, and the keys it routes to the
/// replay's player (with `--replay`) to the player, whose answer goes to
/// the model in turn. False once the model says quit.
fn update(model: &mut Model, mut replay: Option<&mut Replay>, msgs: Vec<Msg>) -> bool {
    let mut msgs = VecDeque::from(msgs);
    while let Some(msg) = msgs.pop_front() {
        match model.update(msg) {
            Action::Continue => {}
            Action::Quit => return false,
            Action::Replay(k) => {
                if let Some(r) = replay.as_deref_mut() {
                    msgs.extend(r.key(k));
                }
            }
        }
    }
    true
}

type Screen = Terminal<CrosstermBackend<std::io::Stdout>>;

/// Ctrl-Z, as a shell expects it (raw mode turns the terminal's own
/// suspend key off): the terminal handed back as it was, the process
/// stopped; after `fg`, the dashboard taken over again and drawn anew.
fn suspend(screen: &mut Screen) -> Result<()> {
    restore();
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGTSTP)?;
    // Running again (`fg`, SIGCONT).
    take_over()?;
    screen.clear()?;
    Ok(())
}

fn is_suspend(k: &KeyEvent) -> bool {
    k.kind != KeyEventKind::Release
        && k.code == KeyCode::Char('z')
        && k.modifiers.contains(KeyModifiers::CONTROL)
}

/// A terminal event: a key as a message for the model; Ctrl-Z handled
/// here; a resize needs nothing (the next draw takes the new size).
fn terminal_input(
    term: Option<std::io::Result<TermEvent>>,
    screen: &mut Screen,
) -> Result<Option<Msg>> {
    match term {
        Some(Ok(TermEvent::Key(k))) if is_suspend(&k) => {
            suspend(screen)?;
            Ok(None)
        }
        other => key_msg(other),
    }
}

/// A key pressed, as a message; other terminal events are none.
fn key_msg(term: Option<std::io::Result<TermEvent>>) -> Result<Option<Msg>> {
    match term {
        Some(Ok(TermEvent::Key(k))) => Ok(key(k).map(Msg::Key)),
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => bail!("reading the terminal: {e}"),
        // The terminal is gone: as good as Ctrl-C.
        None => Ok(Some(Msg::Key(Key::CtrlC))),
    }
}

pub async fn run(args: TopArgs) -> Result<()> {
    dashboard(args, Privileges::Drop).await
}

/// Whether the live dashboard keeps only what it needs once attached
/// (`kat top`), or everything (`kat demo`, which removes its lab at the
/// end).
pub enum Privileges {
    Drop,
    Keep,
}

pub async fn dashboard(args: TopArgs, privileges: Privileges) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!("kat top draws a dashboard and needs a terminal; for pipes and logs use `kat trace` (or `kat trace --json`)");
    }
    if let Some(dir) = &args.replay {
        return run_replay(dir, &args).await;
    }
    kernel::require_root("top")?;
    if let Privileges::Drop = privileges {
        crate::privilege::plan(args.selection.user.as_deref())?;
    }
    let mut pace = SnapshotPace::default();
    pace.due(Instant::now());
    let mut engine = Engine::start(
        &args.selection,
        Wants {
            snapshot: true,
            conntrack: args.conntrack,
            ..Wants::default()
        },
    )?;
    crate::privilege::settle()?;
    let mut model = Model::new(
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kernel::release(),
        engine.lanes_text(),
        Utc::now(),
    );
    model.pid = args.pid;
    model.idle_over_s = args.idle_over.as_secs_f64();
    let mut seen_netns: Vec<u32> = Vec::new();
    // The first frame comes at once; the table fills in when the worker
    // has listed the sockets.
    model.listing = true;

    // Nothing may write over the dashboard.
    log::set_max_level(log::LevelFilter::Off);
    let _guard = TerminalGuard::enter()?;
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    let mut keys = EventStream::new();
    let mut second = tokio::time::interval(Duration::from_secs(1));
    // Drawn only when something changed: the engine wakes ten times a
    // second, under a flood of other connections mostly with nothing for
    // the dashboard.
    let mut stale = true;
    loop {
        if std::mem::take(&mut stale) {
            terminal.draw(|f| view::view(f, &model))?;
        }
        let mut msgs = Vec::new();
        tokio::select! {
            step = engine.next() => match step {
                Step::Events(events) => {
                    for ev in events {
                        if !seen_netns.contains(&ev.netns) {
                            seen_netns.push(ev.netns);
                        }
                        msgs.push(Msg::Event(Box::new(ev)));
                    }
                }
                Step::Snapshot(snapshot) => {
                    pace.answered(Instant::now(), snapshot.took);
                    if let Some(idle) = &snapshot.idle {
                        msgs.push(Msg::AtRisk(at_risk::rows(idle, |inode| engine.owner(inode))));
                    }
                    msgs.push(Msg::Snapshot(live(&engine, snapshot.sockets)));
                }
                // The tracker has them for the deaths that follow.
                Step::Expired(_) => {}
                Step::Stop => break,
            },
            // The first snapshot was asked for at the engine's start.
            _ = second.tick() => {
                msgs.push(Msg::Tick(Utc::now()));
                let lost = engine.lost();
                msgs.push(Msg::Lost { total: lost.total(), precious: lost.precious() });
                msgs.push(Msg::Closes(engine.take_closes(Utc::now()).iter().map(|c| c.count).sum()));
                if pace.due(Instant::now()) {
                    engine.ask_snapshot(Ask {
                        extra_netns: seen_netns.clone(),
                        idle_over: model.at_risk_shown.then_some(args.idle_over),
                    });
                }
            }
            // Any terminal event redraws: a resize or a return from
            // Ctrl-Z brings no message but needs a frame.
            term = keys.next() => {
                msgs.extend(terminal_input(term, &mut terminal)?);
                stale = true;
            }
        }
        stale |= !msgs.is_empty();
        if !update(&mut model, None, msgs) {
            break;
        }
    }
    Ok(())
}

/// The dashboard on a journal: no kernel, no root.
async fn run_replay(dir: &Path, args: &TopArgs) -> Result<()> {
    let journal = reader::read_dir(dir)?;
    // Said before the dashboard hides the terminal: they stay readable after.
    for p in &journal.problems {
        eprintln!("kat: {p} (skipped)");
    }
    let (host, kernel, lanes) = journal
        .entries
        .iter()
        .find_map(|e| match e {
            Entry::Header(h) => Some((h.host.clone(), h.kernel.clone(), h.lanes.clone())),
            _ => None,
        })
        .unwrap_or_else(|| ("?".into(), "?".into(), "lanes unknown".into()));
    let filtered = !args.selection.ports.is_empty() || args.pid.is_some();
    // The player rebuilds the table from the events it plays: it plays only
    // those the model would keep.
    let keep = |ev: &crate::event::Event| {
        args.selection.wants(ev.sport, ev.dport) && pid_wanted(args.pid, ev.pid)
    };
    let mut replay = Replay::new(journal.entries, keep, args.speed, journal.problems.len())
        .ok_or_else(|| {
            let which = if filtered {
                " for this --port/--pid"
            } else {
                ""
            };
            anyhow!("the journal in {} has no events{which}", dir.display())
        })?;
    let mut model = Model::new(host, kernel, lanes, replay.clock());
    model.pid = args.pid;

    log::set_max_level(log::LevelFilter::Off);
    let _guard = TerminalGuard::enter()?;
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    let mut keys = EventStream::new();
    let mut stop = StopSignals::catch()?;
    let mut frame = tokio::time::interval(Duration::from_millis(100));
    // The real time passed is measured: a late frame moves the clock as far.
    frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = tokio::time::Instant::now();
    let mut msgs = replay.advance(Duration::ZERO);
    loop {
        if !update(&mut model, Some(&mut replay), std::mem::take(&mut msgs)) {
            break;
        }
        terminal.draw(|f| view::view(f, &model))?;
        tokio::select! {
            now = frame.tick() => {
                msgs = replay.advance(now - last);
                last = now;
            }
            term = keys.next() => msgs.extend(terminal_input(term, &mut terminal)?),
            () = stop.recv() => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod pace_tests {
    use super::*;

    #[test]
    fn a_slow_snapshot_spaces_out_the_next_and_one_is_out_at_a_time() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut pace = SnapshotPace::default();
        assert!(pace.due(at(0)), "the first at once");
        assert!(!pace.due(at(1000)), "not while one is out");
        pace.answered(at(10), Duration::from_millis(10));
        assert!(pace.due(at(1000)), "a quick one: every tick");
        pace.answered(at(1500), Duration::from_millis(500));
        assert!(!pace.due(at(2000)));
        assert!(!pace.due(at(10_000)), "500 ms dumping: 9.5 s of rest");
        assert!(pace.due(at(11_000)));
    }
}
