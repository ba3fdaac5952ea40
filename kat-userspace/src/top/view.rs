//! The dashboard drawn from the model: a pure function of its state.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Paragraph, Row as TableRow, Sparkline, Table, TableState, Wrap,
};
use ratatui::Frame;

use super::model::{ConnKey, Model, ReplayStatus, Row, Second};
use crate::at_risk;
use crate::event::{Reason, Silence, What};
use crate::text::{self, duration, endpoint};

/// Smallest terminal the layout works in.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 15;

/// Below this width columns are dropped and local addresses shortened.
const WIDE: u16 = 120;

/// `:local-port → remote` where space is short: the local address is
/// usually the host's own.
fn conn_short(k: &ConnKey, wide: bool) -> String {
    if wide {
        k.to_string()
    } else {
        format!(":{} → {}", k.sport, endpoint(&k.daddr, k.dport))
    }
}

/// Keeps the cells whose column is shown.
fn pick<T>(cells: impl IntoIterator<Item = T>, shown: &[bool]) -> Vec<T> {
    cells
        .into_iter()
        .zip(shown)
        .filter_map(|(c, &keep)| keep.then_some(c))
        .collect()
}

fn reason_style(r: Reason) -> Style {
    match r {
        Reason::Closed => Style::new(),
        Reason::KeepaliveTimeout | Reason::UserTimeout | Reason::RetransmitTimeout => {
            Style::new().fg(Color::Red)
        }
        _ => Style::new().fg(Color::Magenta),
    }
}

pub fn view(frame: &mut Frame, m: &Model) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "kat top needs at least {MIN_WIDTH}×{MIN_HEIGHT} (this terminal is {}×{}); q quits",
            area.width, area.height
        );
        frame.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), area);
        return;
    }
    let [header, charts, body, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(4),
        Constraint::Min(6),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(frame, header, m);
    draw_charts(frame, charts, m);
    match m.detail {
        Some(key) => draw_detail(frame, body, m, &key),
        None => {
            let [conns, deaths] =
                Layout::vertical([Constraint::Percentage(62), Constraint::Percentage(38)])
                    .areas(body);
            draw_connections(frame, conns, m);
            if m.at_risk_shown {
                draw_at_risk(frame, deaths, m);
            } else {
                draw_deaths(frame, deaths, m);
            }
        }
    }
    draw_footer(frame, footer, m);
    if m.help {
        draw_help(frame, area, m.replay.is_some());
    }
}

fn draw_header(frame: &mut Frame, area: Rect, m: &Model) {
    let mut title = match &m.replay {
        Some(r) => replay_title(r),
        None => vec![Span::from("kat top ").bold()],
    };
    title.push(Span::from(format!(
        "{}  Linux {}  {}",
        m.host, m.kernel, m.lanes
    )));
    if m.paused {
        title.push(Span::from("  PAUSED").reversed());
    }
    let lost_style = if m.lost_precious > 0 {
        Style::new().fg(Color::Red).bold()
    } else {
        Style::new()
    };
    let mut stats = vec![
        Span::from(format!(
            "conns {}  probing {}  events/s {}  ",
            m.live.len(),
            m.probing_now(),
            m.events_per_s()
        )),
        Span::styled(
            if m.lost > m.lost_precious {
                format!("lost {} ({} closes)", m.lost, m.lost - m.lost_precious)
            } else {
                format!("lost {}", m.lost)
            },
            lost_style,
        ),
        Span::from("  deaths:"),
    ];
    if m.deaths_by_reason.is_empty() {
        stats.push(Span::from(" none"));
    }
    for (reason, n) in &m.deaths_by_reason {
        stats.push(Span::styled(
            format!(" {} {n}", reason.name()),
            reason_style(*reason),
        ));
    }
    frame.render_widget(
        Paragraph::new(vec![Line::from(title), Line::from(stats)]),
        area,
    );
}

/// Where the replay stands, first: the clock is the one thing that must
/// never be mistaken for the present.
fn replay_title(r: &ReplayStatus) -> Vec<Span<'static>> {
    let state = if r.at_end {
        " end of journal"
    } else if r.paused {
        " paused"
    } else {
        ""
    };
    let mut title = vec![Span::from(format!(
        "REPLAY {} ×{}{state}",
        text::date_time(r.clock),
        r.speed
    ))
    .bold()
    .reversed()];
    if r.problems > 0 {
        title.push(Span::styled(
            format!("  {} bad lines skipped", r.problems),
            Style::new().fg(Color::Red).bold(),
        ));
    }
    title.push(Span::from("  "));
    title
}

fn draw_charts(frame: &mut Frame, area: Rect, m: &Model) {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let width = usize::from(left.width.saturating_sub(2));
    let recent = |pick: fn(&Second) -> u64| -> Vec<u64> {
        let skip = m.history.len().saturating_sub(width);
        m.history.iter().skip(skip).map(pick).collect()
    };
    let probes = recent(|h| h.probes);
    let deaths = recent(|h| h.deaths);
    let title = |name: &str, v: &[u64]| {
        format!(
            " {name} (max {}/s, {} s) ",
            v.iter().max().unwrap_or(&0),
            v.len()
        )
    };
    frame.render_widget(
        Sparkline::default()
            .block(
                Block::new()
                    .borders(Borders::ALL)
                    .title(title("probes/s", &probes)),
            )
            .data(&probes)
            .style(Style::new().fg(Color::Yellow)),
        left,
    );
    frame.render_widget(
        Sparkline::default()
            .block(
                Block::new()
                    .borders(Borders::ALL)
                    .title(title("deaths/s", &deaths)),
            )
            .data(&deaths)
            .style(Style::new().fg(Color::Red)),
        right,
    );
}

fn probes_cell(r: &Row) -> Cell<'static> {
    let out = r.live.probes_out;
    let max = r.settings.map(|s| s.probes);
    let text = match max {
        Some(max) => format!("{out}/{max}"),
        None => out.to_string(),
    };
    let style = match max {
        _ if out == 0 => Style::new(),
        Some(max) if out + 1 >= max => Style::new().fg(Color::Red).bold(),
        _ => Style::new().fg(Color::Yellow).bold(),
    };
    Cell::from(text).style(style)
}

fn keepalive_text(r: &Row) -> String {
    r.settings
        .map_or_else(|| "?".into(), |s| text::keepalive(&s))
}

fn draw_connections(frame: &mut Frame, area: Rect, m: &Model) {
    let rows = m.rows();
    let wide = area.width >= WIDE;
    // LOCAL → REMOTE, OWNER, STATE, IDLE, KEEPALIVE, PROBES, NEXT, DEAD IN, UTO
    let shown = [true, true, wide, true, true, true, true, true, wide];
    let header = TableRow::new(pick(
        [
            "LOCAL → REMOTE",
            "OWNER",
            "STATE",
            "IDLE",
            "KEEPALIVE",
            "PROBES",
            "NEXT",
            "DEAD IN",
            "UTO",
        ],
        &shown,
    ))
    .style(Style::new().bold().reversed());
    // Only the rows that fit become widgets: the table may hold 100 000.
    let visible = usize::from(area.height.saturating_sub(3)).max(1);
    let first = m.selected.saturating_sub(visible - 1);
    let body: Vec<TableRow> = rows
        .iter()
        .skip(first)
        .take(visible)
        .map(|r| {
            let owner = r.live.owner.as_ref().map_or_else(
                || format!("uid {}", r.live.uid),
                |o| text::owner(o.pid, Some(&o.comm), o.workload.as_deref()),
            );
            TableRow::new(pick(
                [
                    Cell::from(conn_short(&r.live.key, wide)),
                    Cell::from(owner),
                    Cell::from(r.live.state),
                    Cell::from(r.idle_s.map_or("-".into(), duration)),
                    Cell::from(keepalive_text(r)),
                    probes_cell(r),
                    Cell::from(duration(r.live.next_run_s)),
                    Cell::from(r.dead_in_s.map_or("-".into(), duration)),
                    Cell::from(
                        r.settings
                            .and_then(|s| s.user_timeout_ms)
                            .map_or("-".into(), text::user_timeout),
                    ),
                ],
                &shown,
            ))
        })
        .collect();
    let title = format!(
        " connections with keepalive: {}{} (sort: {}) ",
        if m.listing {
            "listing…".to_string()
        } else {
            rows.len().to_string()
        },
        if m.filter.is_empty() {
            String::new()
        } else {
            format!(" matching “{}”", m.filter)
        },
        m.sort.name()
    );
    let widths = pick(
        [
            Constraint::Min(22),
            Constraint::Length(14),
            Constraint::Length(11),
            Constraint::Length(5),
            Constraint::Length(10),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Length(7),
            Constraint::Length(5),
        ],
        &shown,
    );
    let table = Table::new(body, widths)
        .header(header)
        .block(Block::new().borders(Borders::ALL).title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state =
        TableState::default().with_selected((!rows.is_empty()).then_some(m.selected - first));
    frame.render_stateful_widget(table, area, &mut state);
}

fn draw_deaths(frame: &mut Frame, area: Rect, m: &Model) {
    let wide = area.width >= WIDE;
    // TIME, CONNECTION, REASON, ERRNO, PROBES, LIVED, SILENT BEFORE, OWNER
    let shown = [true, true, true, true, wide, true, wide, wide];
    let header = TableRow::new(pick(
        [
            "TIME",
            "CONNECTION",
            "REASON",
            "ERRNO",
            "PROBES",
            "LIVED",
            "SILENT BEFORE",
            "OWNER",
        ],
        &shown,
    ))
    .style(Style::new().bold().reversed());
    let body: Vec<TableRow> = m
        .deaths
        .iter()
        .map(|d| {
            TableRow::new(pick(
                [
                    Cell::from(text::clock(d.ts)),
                    Cell::from(conn_short(&d.key, wide)),
                    Cell::from(d.reason.name()).style(reason_style(d.reason)),
                    Cell::from(d.errno.clone().unwrap_or_else(|| "-".into())),
                    Cell::from(d.probes.to_string()),
                    Cell::from(d.lifetime_s.map_or("-".into(), duration)),
                    silence_cell(d.silence, d.conntrack_forgot),
                    Cell::from(d.pid.map_or("-".into(), |p| {
                        text::owner(p, d.comm.as_deref(), d.workload.as_deref())
                    })),
                ],
                &shown,
            ))
        })
        .collect();
    let widths = pick(
        [
            Constraint::Length(8),
            Constraint::Min(22),
            Constraint::Length(18),
            Constraint::Length(10),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(18),
            Constraint::Length(14),
        ],
        &shown,
    );
    let table = Table::new(body, widths).header(header).block(
        Block::new()
            .borders(Borders::ALL)
            .title(format!(" deaths, newest first: {} ", m.deaths.len())),
    );
    frame.render_widget(table, area);
}

/// `5.1s middlebox?` for a death suspected of a middlebox's doing,
/// `5.1s conntrack` where this host's conntrack was seen forgetting it.
fn silence_cell(s: Option<Silence>, conntrack_forgot: bool) -> Cell<'static> {
    match s {
        None if conntrack_forgot => Cell::from("conntrack").style(Style::new().fg(Color::Red)),
        None => Cell::from("-"),
        Some(s) if conntrack_forgot => {
            Cell::from(format!("{} conntrack", duration(s.idle_before_s)))
                .style(Style::new().fg(Color::Red))
        }
        Some(s) if s.verdict.is_some() => {
            Cell::from(format!("{} middlebox?", duration(s.idle_before_s)))
                .style(Style::new().fg(Color::Red))
        }
        Some(s) => Cell::from(duration(s.idle_before_s)),
    }
}

/// The connections silent for over `--idle-over`: what a middlebox that
/// forgets idle flows kills next.
fn draw_at_risk(frame: &mut Frame, area: Rect, m: &Model) {
    let wide = area.width >= WIDE;
    let header = TableRow::new(["CONNECTION", "IDLE", "KEEPALIVE", "OWNER"])
        .style(Style::new().bold().reversed());
    let list = m.at_risk.as_deref().unwrap_or_default();
    let visible = usize::from(area.height.saturating_sub(3));
    let body: Vec<TableRow> = list
        .iter()
        .take(visible)
        .map(|a| {
            let keepalive = Cell::from(at_risk::keepalive(a));
            TableRow::new([
                Cell::from(conn_short(&a.conn, wide)),
                Cell::from(duration(a.idle_s)),
                if a.keepalive {
                    keepalive
                } else {
                    keepalive.style(Style::new().fg(Color::Red))
                },
                Cell::from(a.pid.map_or_else(
                    || format!("uid {}", a.uid),
                    |p| text::owner(p, a.comm.as_deref(), a.workload.as_deref()),
                )),
            ])
        })
        .collect();
    let count = m
        .at_risk
        .as_ref()
        .map_or_else(|| "listing…".to_string(), |l| l.len().to_string());
    let title = format!(
        " at risk, silent for over {}: {count} (a: deaths) ",
        duration(m.idle_over_s)
    );
    let widths = [
        Constraint::Min(22),
        Constraint::Length(6),
        Constraint::Length(24),
        Constraint::Length(14),
    ];
    let block = Block::new().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let red = Style::new().fg(Color::Red);
    let paths = m.paths.rows().into_iter().map(|p| {
        Line::styled(
            format!(
                "{} forgets idle flows: survives {}, dies after {} ({} death{})",
                endpoint(&p.daddr, p.dport),
                duration(p.survived_idle_s),
                duration(p.died_idle_s),
                p.deaths,
                if p.deaths == 1 { "" } else { "s" }
            ),
            red,
        )
    });
    let too_slow = m.keepalive_too_slow().into_iter().map(|(l, survives)| {
        Line::styled(
            format!(
                "{}: next probe in {}, its path survives {} of silence",
                conn_short(&l.key, wide),
                duration(l.next_run_s),
                duration(survives)
            ),
            red,
        )
    });
    let lines: Vec<Line> = paths.chain(too_slow).collect();
    let shown = lines.len().min(usize::from(inner.height / 2));
    let [rows_area, lines_area] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(shown as u16)]).areas(inner);
    frame.render_widget(Table::new(body, widths).header(header), rows_area);
    frame.render_widget(Paragraph::new(lines), lines_area);
}

/// An event of the timeline in the words of every view, coloured by kind.
fn timeline_style(what: &What) -> Style {
    match what {
        What::Probe { .. } => Style::new().fg(Color::Yellow),
        What::ProbeAnswered { .. } => Style::new().fg(Color::Green),
        What::Death { reason, .. } => reason_style(*reason).bold(),
    }
}

fn draw_detail(frame: &mut Frame, area: Rect, m: &Model, key: &ConnKey) {
    let mut lines = Vec::new();
    if let Some(live) = m.live.iter().find(|l| l.key == *key) {
        lines.push(Line::from(format!(
            "now {}; keepalive timer runs in {}; {} probe(s) out",
            live.state,
            duration(live.next_run_s),
            live.probes_out
        )));
    }
    if let Some(s) = m.settings.get(key) {
        lines.push(Line::from(format!(
            "{}   (idle/interval/probes; * = namespace sysctl)",
            text::settings(s)
        )));
    }
    lines.push(Line::from(""));
    match m.timelines.get(key) {
        Some(t) if !t.is_empty() => {
            for entry in t {
                lines.push(Line::from(vec![
                    Span::from(format!("{}  ", text::clock(entry.ts))),
                    Span::styled(text::what(&entry.what), timeline_style(&entry.what)),
                ]));
            }
        }
        _ => lines.push(Line::from("no probe or death seen since kat started")),
    }
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::ALL)
                .title(format!(" {} (netns {}) — Esc back ", key, key.netns)),
        ),
        area,
    );
}

fn draw_footer(frame: &mut Frame, area: Rect, m: &Model) {
    let filter = if m.editing_filter {
        format!("/{}▏ (Enter done)", m.filter)
    } else if m.filter.is_empty() {
        "/ filter".into()
    } else {
        format!("/ filter: {}", m.filter)
    };
    let text = match &m.replay {
        // Sorting gives way to the replay keys (it stays in the help).
        Some(r) if r.at_end => format!(" q quit  ? help  Enter detail  {filter}  end of journal"),
        Some(r) => format!(
            " q quit  ? help  Enter detail  {filter}  p {}  n next  +- speed  ] skip",
            if r.paused { "play" } else { "pause" }
        ),
        None => format!(
            " q quit  ? help  ↑↓ move  Enter detail  {filter}  s sort  a at risk  p {}",
            if m.paused { "resume" } else { "pause" }
        ),
    };
    frame.render_widget(Paragraph::new(text).reversed(), area);
}

fn draw_help(frame: &mut Frame, area: Rect, replay: bool) {
    let pause: &[&str] = if replay {
        &[
            "p, space         pause and play the journal",
            "n                the next event (also when paused)",
            "+ -              twice as fast, half as fast",
            "]                skip to just before the next event",
        ]
    } else {
        &["p                pause and resume"]
    };
    let lines: Vec<&str> = [
        "q, Ctrl-C        quit",
        "↑ ↓ PgUp PgDn    move",
        "Home End         first, last row",
        "Enter            the connection's timeline",
        "Esc              back, close help",
        "/                filter: port, address, command, pod",
        "s                sort by the next column",
    ]
    .into_iter()
    .chain((!replay).then_some("a                at risk (long silent) or deaths"))
    .chain(pause.iter().copied())
    .chain([
        "?                this help",
        "",
        "PROBES 2/3: probes out of the count that kills;",
        "* marks a setting from the namespace's sysctl;",
        "DEAD IN: worst case if no probe is answered.",
    ])
    .collect();
    let w = 56.min(area.width);
    let h = (lines.len() as u16 + 2).min(area.height);
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines.iter().map(|l| Line::from(*l)).collect::<Vec<_>>())
            .block(Block::new().borders(Borders::ALL).title(" keys ")),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    use super::super::model::tests::{at_risk, populated, suspected_death};
    use super::super::model::{Key, Model, Msg};
    use super::view;
    use crate::testkit::at;

    fn screen(m: &Model, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
        t.draw(|f| view(f, m)).expect("draw");
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                let line: String = (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect();
                line.trim_end().to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn both(name: &str, m: &Model) {
        insta::assert_snapshot!(format!("{name}_80x24"), screen(m, 80, 24));
        insta::assert_snapshot!(format!("{name}_160x45"), screen(m, 160, 45));
    }

    #[test]
    fn empty() {
        both(
            "empty",
            &Model::new(
                "lab-host".into(),
                "6.18.0".into(),
                "tracepoint lane".into(),
                at(0.0),
            ),
        );
    }

    #[test]
    fn populated_dashboard() {
        both("populated", &populated());
    }

    #[test]
    fn at_risk_panel() {
        let mut m = populated();
        m.update(Msg::Key(Key::Char('a')));
        both("at_risk_listing", &m);
        m.update(suspected_death(41005));
        let slow = crate::testkit::conn(
            crate::testkit::addr("198.18.1.1"),
            41010,
            crate::testkit::addr("198.18.1.2"),
            5432,
        );
        m.live
            .push(crate::testkit::live(slow, 4242, "client", 0, 7200.0));
        m.update(Msg::AtRisk(vec![
            at_risk(41000, 2520.0, None, 812),
            at_risk(41002, 540.0, Some(6480.0), 812),
        ]));
        both("at_risk", &m);
        // Back to the deaths: the suspected one says how long it was silent.
        m.update(Msg::Key(Key::Char('a')));
        insta::assert_snapshot!("deaths_suspected_160x45", screen(&m, 160, 45));
    }

    #[test]
    fn filtered() {
        let mut m = populated();
        for c in "/worker".chars() {
            m.update(Msg::Key(Key::Char(c)));
        }
        both("filtered", &m);
    }

    #[test]
    fn detail() {
        let mut m = populated();
        m.update(Msg::Key(Key::Enter));
        both("detail", &m);
    }

    #[test]
    fn help() {
        let mut m = populated();
        m.update(Msg::Key(Key::Char('?')));
        both("help", &m);
    }

    /// A journal with two connections probing, one answered and one dead,
    /// replayed at 4× up to its 5th second, with two bad lines skipped.
    fn replayed() -> Model {
        use crate::event::{Event, Reason, What};
        use crate::journal::tests::{death, event, probe};
        use crate::journal::Entry;
        use crate::testkit::header;
        use crate::top::replay::Replay;

        let known = |mut ev: Event| {
            ev.keepalive = Some(crate::testkit::settings(2.0, 1.0, 3));
            ev
        };
        let entries = [
            known(probe(1.0, 40001, 1)),
            known(probe(1.5, 40002, 1)),
            known(event(2.0, 40001, What::ProbeAnswered { probe: 1 })),
            known(probe(2.5, 40002, 2)),
            probe(3.0, 40003, 1),
            death(4.0, 40003, Reason::KeepaliveTimeout),
            known(probe(60.0, 40002, 3)),
        ]
        .map(Entry::Event);
        let journal = std::iter::once(Entry::Header(header())).chain(entries);
        let mut r = Replay::new(journal.collect(), |_| true, 4.0, 2).expect("events");
        let h = header();
        let mut m = Model::new(h.host, h.kernel, h.lanes, r.clock());
        for msg in r.advance(std::time::Duration::from_millis(1250)) {
            m.update(msg);
        }
        m
    }

    #[test]
    fn replay() {
        both("replay", &replayed());
    }

    #[test]
    fn replay_help() {
        let mut m = replayed();
        m.update(Msg::Key(Key::Char('?')));
        insta::assert_snapshot!("replay_help_80x24", screen(&m, 80, 24));
    }

    #[test]
    fn replay_states_in_the_header() {
        use crate::top::model::ReplayStatus;

        let mut m = replayed();
        let status = m.replay.expect("replaying");
        let first_line = |m: &Model| screen(m, 100, 24).lines().next().map(str::to_owned);
        m.update(Msg::Replay(ReplayStatus {
            paused: true,
            problems: 0,
            ..status
        }));
        let line = first_line(&m).expect("a header");
        assert!(line.contains(" ×4 paused  web-1  Linux 6.18.44"), "{line}");
        assert!(!line.contains("bad lines"), "{line}");
        m.update(Msg::Replay(ReplayStatus {
            at_end: true,
            paused: true,
            speed: 0.25,
            ..status
        }));
        let line = first_line(&m).expect("a header");
        assert!(
            line.contains(" ×0.25 end of journal  2 bad lines"),
            "{line}"
        );
        let footer = screen(&m, 100, 24).lines().last().map(str::to_owned);
        let footer = footer.expect("a footer");
        assert!(
            footer.contains("end of journal") && !footer.contains("p play"),
            "nothing is left to play: {footer}"
        );
    }

    #[test]
    fn too_small_gets_one_message() {
        let s = screen(&populated(), 50, 10).replace('\n', " ");
        assert!(
            s.starts_with("kat top needs at least 60×15 (this terminal is 50×10)"),
            "{s}"
        );
        assert!(!s.contains("connections"), "no broken layout: {s}");
    }
}
