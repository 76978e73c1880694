//! Drawing `ocpipe tui` (ratatui): a tab line, the view, and the keys, always.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row as TRow, Table, TableState, Wrap};

use super::app::{App, Row, Sort, View};
use crate::sources::opencode_storage::stats::thousands;
use crate::usage::RangeName;

const KEYS: &str =
    "1-6/Tab view  t/w/m/a range  s sort  / filter  ↑↓ PgUp/PgDn Home/End  Enter open  Esc back  r refresh  q quit";

pub fn draw(f: &mut Frame<'_>, app: &App) {
    let [tabs, body, keys] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(1)]).areas(f.area());
    f.render_widget(Paragraph::new(tab_line(app)), tabs);
    let keys_line = if app.editing { format!("filter: {}▏ (Enter/Esc done)", app.filter) } else { KEYS.to_string() };
    f.render_widget(
        Paragraph::new(Line::from(Span::styled(keys_line, style(app, Style::default().add_modifier(Modifier::DIM))))),
        keys,
    );
    if let Some(why) = &app.empty {
        let text = format!(
            "Nothing to show: {why}.\n\nocpipe reads OpenCode's storage (its SQLite databases and JSON files); pass --data-dir or --db if it lives elsewhere."
        );
        f.render_widget(
            Paragraph::new(text)
                .wrap(Wrap { trim: false })
                .block(Block::default().borders(Borders::ALL).title(app.view.title())),
            body,
        );
        return;
    }
    if let Some((id, messages)) = &app.session {
        session(f, app, body, id, messages);
        return;
    }
    match app.view {
        View::Overview => overview(f, app, body),
        View::Timeline => timeline(f, app, body),
        _ => table(f, app, body),
    }
}

fn style(app: &App, s: Style) -> Style {
    if app.color { s } else { Style::default() }
}

fn tab_line(app: &App) -> Line<'static> {
    let mut spans = Vec::new();
    for (i, v) in View::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, v.title());
        let s = if *v == app.view {
            style(app, Style::default().fg(Color::Black).bg(Color::Cyan).add_modifier(Modifier::BOLD))
        } else {
            Style::default()
        };
        // Without colour the current view still shows: in brackets.
        let label = if *v == app.view && !app.color { format!("[{}]", label.trim()) } else { label };
        spans.push(Span::styled(label, s));
    }
    let range = match app.range {
        RangeName::Today => "today",
        RangeName::Week => "week",
        RangeName::Month => "month",
        RangeName::All => "all",
    };
    let sort = match app.sort {
        Sort::Tokens => "tokens",
        Sort::Messages => "messages",
        Sort::Name => "name",
    };
    spans.push(Span::raw(format!("  range: {range}  sort: {sort}")));
    if !app.filter.is_empty() {
        spans.push(Span::raw(format!("  filter: {}", app.filter)));
    }
    Line::from(spans)
}

fn overview(f: &mut Frame<'_>, app: &App, area: Rect) {
    let procs_height = (app.processes.len() as u16 + 3).clamp(4, 10);
    let [procs, totals, models] =
        Layout::vertical([Constraint::Length(procs_height), Constraint::Length(6), Constraint::Min(3)]).areas(area);
    let narrow = area.width < 80;
    let rows: Vec<TRow<'_>> = app
        .processes
        .iter()
        .map(|p| {
            let mut cells = vec![
                p.pid.to_string(),
                p.mode.clone(),
                format!("{:.1}%", p.cpu_percent),
                format!("{} MB", p.memory_bytes / 1_048_576),
                uptime(p.uptime_secs),
            ];
            if !narrow {
                cells.push(p.cwd.clone().unwrap_or_default());
            }
            TRow::new(cells)
        })
        .collect();
    let mut header = vec!["PID", "MODE", "CPU", "MEMORY", "UPTIME"];
    let mut widths = vec![
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(9),
    ];
    if !narrow {
        header.push("DIRECTORY");
        widths.push(Constraint::Min(10));
    }
    let title = if app.processes.is_empty() {
        "OpenCode processes: none running".to_string()
    } else {
        format!("OpenCode processes: {}", app.processes.len())
    };
    f.render_widget(
        Table::new(rows, widths)
            .header(TRow::new(header).style(bold(app)))
            .block(Block::default().borders(Borders::ALL).title(title)),
        procs,
    );
    let t = &app.totals;
    let k = &t.tokens;
    let mut lines = vec![
        Line::from(format!(
            "input {}  output {}  reasoning {}  cache read {}  cache write {}",
            thousands(k.input),
            thousands(k.output),
            thousands(k.reasoning),
            thousands(k.cache_read),
            thousands(k.cache_write)
        )),
        Line::from(vec![
            Span::styled(format!("total {}", thousands(t.total)), bold(app)),
            Span::raw(format!(
                "  cost ${:.4}  messages {}  sessions {}",
                t.cost,
                thousands(t.messages),
                thousands(t.sessions)
            )),
        ]),
    ];
    if app.forks.messages > 0 {
        lines.push(Line::from(format!(
            "fork copies (counted once, not again): {} messages, {} tokens",
            thousands(app.forks.messages),
            thousands(app.forks.total)
        )));
    }
    f.render_widget(Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title("Tokens")), totals);
    let total = app.totals.total.max(1) as f64;
    let rows: Vec<TRow<'_>> = app
        .models
        .iter()
        .map(|r| {
            TRow::new(vec![
                r.key.clone(),
                thousands(r.usage.total),
                format!("{:.1}%", r.usage.total as f64 * 100.0 / total),
            ])
        })
        .collect();
    f.render_widget(
        Table::new(rows, [Constraint::Min(20), Constraint::Length(14), Constraint::Length(8)])
            .header(TRow::new(vec!["MODEL", "TOKENS", "SHARE"]).style(bold(app)))
            .block(Block::default().borders(Borders::ALL).title("Top models")),
        models,
    );
}

fn bold(app: &App) -> Style {
    style(app, Style::default().add_modifier(Modifier::BOLD))
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Sessions, projects, models, agents.
fn table(f: &mut Frame<'_>, app: &App, area: Rect) {
    let narrow = area.width < 80;
    let visible = app.visible();
    let (header, widths): (Vec<&str>, Vec<Constraint>) = match (app.view, narrow) {
        (View::Sessions, false) => (
            vec!["TITLE", "SESSION", "TIME", "TOKENS", "MESSAGES", "COST"],
            vec![
                Constraint::Min(20),
                Constraint::Length(30),
                Constraint::Length(19),
                Constraint::Length(14),
                Constraint::Length(9),
                Constraint::Length(10),
            ],
        ),
        (View::Sessions, true) => (
            vec!["TITLE", "TOKENS", "MESSAGES"],
            vec![Constraint::Min(10), Constraint::Length(12), Constraint::Length(9)],
        ),
        (View::Projects, _) => (
            vec!["PROJECT", "TOKENS", "SESSIONS"],
            vec![Constraint::Min(20), Constraint::Length(14), Constraint::Length(9)],
        ),
        (View::Agents, _) => (
            vec!["AGENT", "TOKENS", "MESSAGES", "PER MESSAGE"],
            vec![Constraint::Min(12), Constraint::Length(14), Constraint::Length(9), Constraint::Length(12)],
        ),
        _ => (
            vec!["MODEL", "TOKENS", "MESSAGES"],
            vec![Constraint::Min(20), Constraint::Length(14), Constraint::Length(9)],
        ),
    };
    let rows: Vec<TRow<'_>> = visible.iter().map(|r| TRow::new(cells(app.view, narrow, r))).collect();
    let title = format!("{} ({} of {})", app.view.title(), visible.len(), app.rows.len());
    let mut state = TableState::default().with_selected(Some(app.selected));
    f.render_stateful_widget(
        Table::new(rows, widths)
            .header(TRow::new(header).style(bold(app)))
            .row_highlight_style(style(app, Style::default().add_modifier(Modifier::REVERSED)))
            .highlight_symbol("› ")
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
        &mut state,
    );
}

/// A sub-agent session's title, indented under its parent.
fn nested(r: &Row, title: &str) -> String {
    if r.depth == 0 { title.to_string() } else { format!("{}└ {title}", "  ".repeat(r.depth - 1)) }
}

/// A session's first and last message time, local: `11-21 15:58–16:40` (the day again when
/// it differs).
fn span((first, last): (i64, i64)) -> String {
    let local = |ms| chrono::DateTime::from_timestamp_millis(ms).map(|t| t.with_timezone(&chrono::Local));
    let (Some(a), Some(b)) = (local(first), local(last)) else { return String::new() };
    if a.date_naive() == b.date_naive() {
        format!("{}–{}", a.format("%m-%d %H:%M"), b.format("%H:%M"))
    } else {
        format!("{}–{}", a.format("%m-%d %H:%M"), b.format("%m-%d"))
    }
}

fn cells(view: View, narrow: bool, r: &Row) -> Vec<Cell<'static>> {
    let u = &r.usage;
    let v: Vec<String> = match (view, narrow) {
        (View::Sessions, false) => vec![
            nested(r, if r.label.is_empty() { "(untitled)" } else { &r.label }),
            r.key.clone(),
            r.span.map(span).unwrap_or_default(),
            thousands(u.total),
            thousands(u.messages),
            format!("${:.4}", u.cost),
        ],
        (View::Sessions, true) => vec![
            nested(r, if r.label.is_empty() { &r.key } else { &r.label }),
            thousands(u.total),
            thousands(u.messages),
        ],
        (View::Projects, _) => vec![r.key.clone(), thousands(u.total), thousands(u.sessions)],
        (View::Agents, _) => {
            vec![r.key.clone(), thousands(u.total), thousands(u.messages), thousands(u.total / u.messages.max(1))]
        }
        _ => vec![r.key.clone(), thousands(u.total), thousands(u.messages)],
    };
    v.into_iter().map(Cell::from).collect()
}

fn timeline(f: &mut Frame<'_>, app: &App, area: Rect) {
    let visible = app.visible();
    let max = visible.iter().map(|r| r.usage.total).max().unwrap_or(1).max(1);
    let narrow = area.width < 80;
    let bar_width = if narrow { 10 } else { (area.width as usize).saturating_sub(80).max(10) };
    let rows: Vec<TRow<'_>> = visible
        .iter()
        .map(|r| {
            let k = &r.usage.tokens;
            let bar = "█".repeat(((r.usage.total as f64 / max as f64) * bar_width as f64).round() as usize);
            let mut cells = vec![r.key.clone()];
            if !narrow {
                cells.extend([
                    thousands(k.input),
                    thousands(k.output),
                    thousands(k.reasoning),
                    thousands(k.cache_read + k.cache_write),
                ]);
            }
            cells.extend([thousands(r.usage.total), bar]);
            TRow::new(cells)
        })
        .collect();
    let (header, widths): (Vec<&str>, Vec<Constraint>) = if narrow {
        (vec!["DAY", "TOTAL", ""], vec![Constraint::Length(10), Constraint::Length(12), Constraint::Min(5)])
    } else {
        (
            vec!["DAY", "INPUT", "OUTPUT", "REASONING", "CACHE", "TOTAL", ""],
            vec![
                Constraint::Length(10),
                Constraint::Length(12),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(12),
                Constraint::Length(12),
                Constraint::Min(10),
            ],
        )
    };
    let mut state = TableState::default().with_selected(Some(app.selected));
    f.render_stateful_widget(
        Table::new(rows, widths)
            .header(TRow::new(header).style(bold(app)))
            .row_highlight_style(style(app, Style::default().add_modifier(Modifier::REVERSED)))
            .block(Block::default().borders(Borders::ALL).title("Timeline (local days)")),
        area,
        &mut state,
    );
}

fn session(f: &mut Frame<'_>, app: &App, area: Rect, id: &str, messages: &[super::app::MessageRow]) {
    let rows: Vec<TRow<'_>> = messages
        .iter()
        .map(|m| {
            let role = match (m.assistant, m.fork_copy) {
                (_, true) => "fork copy",
                (true, _) => "assistant",
                (false, _) => "user",
            };
            TRow::new(vec![
                m.time.clone(),
                role.to_string(),
                m.model.clone(),
                m.agent.clone(),
                thousands(m.tokens),
                format!("${:.4}", m.cost),
            ])
        })
        .collect();
    let mut state = TableState::default().with_selected(Some(app.selected));
    f.render_stateful_widget(
        Table::new(
            rows,
            [
                Constraint::Length(15),
                Constraint::Length(10),
                Constraint::Min(16),
                Constraint::Length(10),
                Constraint::Length(12),
                Constraint::Length(10),
            ],
        )
        .header(TRow::new(vec!["TIME", "ROLE", "MODEL", "AGENT", "TOKENS", "COST"]).style(bold(app)))
        .row_highlight_style(style(app, Style::default().add_modifier(Modifier::REVERSED)))
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!("Session {id}: {} messages (Esc back)", messages.len())),
        ),
        area,
        &mut state,
    );
}
