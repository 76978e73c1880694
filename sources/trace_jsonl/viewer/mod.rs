//! `ocpipe traces [DIR]`: the trace viewer. A session list, a session's records (time, kind,
//! status, latency, size with a bar, growth over the previous request), and the selected
//! record's payload (pretty JSON; a streamed response assembled). Follows the directory.

mod clipboard;
mod model;
mod payload;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table, TableState};

use crate::event::TraceKind;
pub use model::Traces;
use payload::{Payload, Tok};

crate::register_command!("traces", command, run);

fn command() -> clap::Command {
    use clap::{Arg, ArgAction, arg};
    clap::Command::new("traces")
        .about("Browse LLM API traces (a tracer directory): sessions, records, payloads")
        .arg(arg!([DIR] "The tracer directory (default $OPENCODE_API_TRACER_DIR, else ~/opencode-api-tracer)"))
        .arg(
            Arg::new("static")
                .long("static")
                .action(ArgAction::SetTrue)
                .help("History only: do not follow new records"),
        )
        .arg(arg!(--session <ID> "Open this session directly"))
        .arg(
            Arg::new("snapshot")
                .long("snapshot")
                .action(ArgAction::SetTrue)
                .help("Print the first screen as text (120x32) and exit (no terminal needed)"),
        )
        .arg(
            Arg::new("include-meta")
                .long("include-meta")
                .action(ArgAction::SetTrue)
                .help("Show title-generation and other meta requests"),
        )
}

/// Which records a session's list shows (`1`/`2`/`3` toggle).
#[derive(Debug, Clone, Copy)]
pub struct Shown {
    pub requests: bool,
    pub responses: bool,
    pub errors: bool,
}

/// Where the arrow keys go in a session: its records, or the payload pane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Records,
    Payload,
}

/// The payload pane: the selected record's lines, what is folded, the cursor and a selection.
#[derive(Debug, Default)]
pub struct Pane {
    /// The record shown: session, file line, time.
    of: Option<(String, usize, String)>,
    pub payload: Payload,
    pub folded: BTreeSet<usize>,
    /// Index into the visible lines.
    pub cursor: usize,
    /// Where a `v` selection started (visible index).
    pub anchor: Option<usize>,
    /// The first visible line drawn (kept so the view moves only when the cursor leaves it).
    top: Cell<usize>,
    pub column: u16,
}

impl Pane {
    fn visible(&self) -> Vec<usize> {
        self.payload.visible(&self.folded)
    }

    fn move_to(&mut self, i: usize) {
        self.cursor = i.min(self.visible().len().saturating_sub(1));
    }

    /// Folds or unfolds the object or array at the cursor (or the one the cursor is in).
    fn toggle_fold(&mut self) {
        let visible = self.visible();
        let Some(&at) = visible.get(self.cursor) else { return };
        let lines = &self.payload.lines;
        let opener = if lines[at].close.is_some() {
            Some(at)
        } else {
            (0..at).rev().find(|&j| lines[j].close.is_some_and(|c| c >= at))
        };
        let Some(opener) = opener else { return };
        if !self.folded.remove(&opener) {
            self.folded.insert(opener);
        }
        self.cursor = self.visible().iter().position(|&i| i == opener).unwrap_or(0);
        self.anchor = None;
    }

    /// The selected lines' text, or all of it without a selection.
    fn selection(&self) -> String {
        let Some(anchor) = self.anchor else { return self.payload.all_text() };
        let visible = self.visible();
        let (a, b) = (anchor.min(self.cursor), anchor.max(self.cursor));
        match (visible.get(a), visible.get(b)) {
            (Some(&first), Some(&last)) => self.payload.text(first, last, &self.folded),
            _ => String::new(),
        }
    }
}

pub struct Viewer {
    pub traces: Traces,
    pub session: Option<usize>,
    pub selected: usize,
    pub shown: Shown,
    pub search: String,
    pub editing: bool,
    pub include_meta: bool,
    pub focus: Focus,
    pub pane: Pane,
    pub color: bool,
    pub message: String,
    pub quit: bool,
}

impl Viewer {
    pub fn new(traces: Traces, include_meta: bool) -> Viewer {
        Viewer {
            traces,
            session: None,
            selected: 0,
            shown: Shown { requests: true, responses: true, errors: true },
            search: String::new(),
            editing: false,
            include_meta,
            focus: Focus::Records,
            pane: Pane::default(),
            color: true,
            message: String::new(),
            quit: false,
        }
    }

    /// The records of the open session the toggles, meta setting and search let through.
    pub fn records(&self) -> Vec<&model::Item> {
        let Some(s) = self.session.and_then(|i| self.traces.sessions.get(i)) else { return Vec::new() };
        let needle = self.search.to_lowercase();
        s.items
            .iter()
            .filter(|i| self.include_meta || !i.meta)
            .filter(|i| match i.record.kind {
                TraceKind::Request => self.shown.requests,
                TraceKind::Response => self.shown.responses,
                TraceKind::Error => self.shown.errors,
            })
            .filter(|i| {
                needle.is_empty() || i.record.body.as_ref().is_some_and(|b| b.get().to_lowercase().contains(&needle))
            })
            .collect()
    }

    /// The whole payload of the selected record, as copied without a selection.
    #[cfg(test)]
    pub fn selected_payload(&self) -> Option<String> {
        self.pane.of.as_ref().map(|_| self.pane.payload.all_text())
    }

    /// Opens the session with this id, if there is one.
    pub fn open(&mut self, id: &str) -> bool {
        let Some(i) = self.traces.sessions.iter().position(|s| s.id == id) else { return false };
        self.session = Some(i);
        self.selected = 0;
        self.sync_pane();
        true
    }

    /// Adds what the reader found, keeping the open session, the selected session or record
    /// and the payload shown where they are.
    pub fn add(&mut self, found: Vec<super::files::Found>) {
        if found.is_empty() {
            return;
        }
        let open = self.session.and_then(|i| self.traces.sessions.get(i)).map(|s| s.id.clone());
        let picked = match &open {
            None => self.traces.sessions.get(self.selected).map(|s| s.id.clone()),
            Some(_) => None,
        };
        self.traces.add(found);
        self.session = open.and_then(|id| self.traces.sessions.iter().position(|s| s.id == id));
        if let Some(id) = picked {
            self.selected = self.traces.sessions.iter().position(|s| s.id == id).unwrap_or(self.selected);
        } else if let Some((_, line, time)) = self.pane.of.clone() {
            let at = self.records().iter().position(|i| i.line == line && i.record.timestamp == time);
            self.selected = at.unwrap_or(self.selected);
        }
        self.sync_pane();
    }

    /// Shows the selected record in the payload pane (from the top) when it changed.
    fn sync_pane(&mut self) {
        let of = self.records().get(self.selected).map(|i| {
            let s = &self.traces.sessions[self.session.expect("records come from a session")];
            (s.id.clone(), i.line, i.record.timestamp.clone())
        });
        if of == self.pane.of {
            return;
        }
        let payload = self.records().get(self.selected).map(|i| Payload::of(&i.record)).unwrap_or_default();
        self.pane = Pane { of, payload, ..Pane::default() };
    }

    pub fn key(&mut self, k: KeyEvent) {
        self.on_key(k);
        self.sync_pane();
    }

    fn on_key(&mut self, k: KeyEvent) {
        if self.editing {
            match k.code {
                KeyCode::Enter | KeyCode::Esc => self.editing = false,
                KeyCode::Backspace => {
                    self.search.pop();
                }
                KeyCode::Char(c) => self.search.push(c),
                _ => {}
            }
            self.selected = 0;
            return;
        }
        if self.focus == Focus::Payload && self.session.is_some() && self.pane_key(k) {
            return;
        }
        let len = if self.session.is_some() { self.records().len() } else { self.traces.sessions.len() };
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Down => self.pick(self.selected + 1, len),
            KeyCode::Up => self.pick(self.selected.saturating_sub(1), len),
            KeyCode::Home => self.pick(0, len),
            KeyCode::End => self.pick(len.saturating_sub(1), len),
            KeyCode::PageDown => self.pane.move_to(self.pane.cursor + 10),
            KeyCode::PageUp => self.pane.move_to(self.pane.cursor.saturating_sub(10)),
            KeyCode::Tab if self.session.is_some() => self.focus = Focus::Payload,
            KeyCode::Enter if self.session.is_none() && len > 0 => {
                self.session = Some(self.selected);
                self.selected = 0;
            }
            KeyCode::Esc => {
                if !self.search.is_empty() {
                    self.search.clear();
                } else if let Some(i) = self.session.take() {
                    self.selected = i;
                }
            }
            KeyCode::Char('1') => self.shown.requests = !self.shown.requests,
            KeyCode::Char('2') => self.shown.responses = !self.shown.responses,
            KeyCode::Char('3') => self.shown.errors = !self.shown.errors,
            KeyCode::Char('/') if self.session.is_some() => {
                self.editing = true;
                self.search.clear();
            }
            KeyCode::Char('w') => self.write_payload(),
            KeyCode::Char('c') => self.copy_payload(),
            _ => {}
        }
    }

    /// Keys that act on the payload pane; `false` for the others.
    fn pane_key(&mut self, k: KeyEvent) -> bool {
        let p = &mut self.pane;
        match k.code {
            KeyCode::Down => p.move_to(p.cursor + 1),
            KeyCode::Up => p.move_to(p.cursor.saturating_sub(1)),
            KeyCode::PageDown => p.move_to(p.cursor + 10),
            KeyCode::PageUp => p.move_to(p.cursor.saturating_sub(10)),
            KeyCode::Home => p.move_to(0),
            KeyCode::End => p.move_to(usize::MAX),
            KeyCode::Right => p.column = p.column.saturating_add(8),
            KeyCode::Left => p.column = p.column.saturating_sub(8),
            KeyCode::Enter | KeyCode::Char(' ') => p.toggle_fold(),
            KeyCode::Char('v') => p.anchor = if p.anchor.is_some() { None } else { Some(p.cursor) },
            KeyCode::Esc if p.anchor.is_some() => p.anchor = None,
            KeyCode::Esc | KeyCode::Tab => self.focus = Focus::Records,
            _ => return false,
        }
        true
    }

    fn pick(&mut self, i: usize, len: usize) {
        self.selected = i.min(len.saturating_sub(1));
    }

    /// What `c` and `w` take: the selected lines, or the whole payload.
    pub fn copy_text(&self) -> Option<String> {
        self.pane.of.as_ref().map(|_| self.pane.selection())
    }

    fn write_payload(&mut self) {
        let Some(p) = self.copy_text() else { return };
        let path = std::env::temp_dir().join(format!("ocpipe-payload-{}.txt", std::process::id()));
        self.message = match std::fs::write(&path, p) {
            Ok(()) => format!("payload written to {}", path.display()),
            Err(e) => format!("cannot write {}: {e}", path.display()),
        };
    }

    fn copy_payload(&mut self) {
        let Some(p) = self.copy_text() else { return };
        self.message = clipboard::copy(&p);
    }
}

pub fn draw(f: &mut Frame<'_>, v: &Viewer) {
    let [body, status] = Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(f.area());
    let keys = if v.editing {
        format!("search: {}▏ (Enter/Esc done)", v.search)
    } else if !v.message.is_empty() {
        v.message.clone()
    } else if v.session.is_some() && v.focus == Focus::Payload {
        "↑↓ line  ←→ scroll  Enter fold  v select  c copy  w write  Tab/Esc records  q quit".into()
    } else if v.session.is_some() {
        "↑↓ record  Tab payload  1 requests 2 responses 3 errors  / search  c copy  w write  Esc back  q quit".into()
    } else {
        "↑↓ session  Enter open  q quit".into()
    };
    f.render_widget(Paragraph::new(keys), status);
    let bold = Style::default().add_modifier(Modifier::BOLD);
    match v.session.and_then(|i| v.traces.sessions.get(i)) {
        None => {
            let mut rows: Vec<Row<'_>> = v
                .traces
                .sessions
                .iter()
                .map(|s| {
                    Row::new(vec![
                        if s.title.is_empty() { "(no prompt)".into() } else { s.title.clone() },
                        s.id.clone(),
                        format!("{}/{}/{}", s.requests, s.responses, s.errors),
                        s.first.get(..19).unwrap_or(&s.first).replace('T', " "),
                        s.last.get(11..19).unwrap_or(&s.last).to_string(),
                        kib(s.bytes),
                    ])
                })
                .collect();
            for b in &v.traces.bad {
                rows.push(Row::new(vec![format!("malformed: {}:{}", b.file.display(), b.line), b.error.clone()]));
            }
            let title = format!("Sessions: {} ({} malformed lines)", v.traces.sessions.len(), v.traces.bad.len());
            let mut state = TableState::default().with_selected(Some(v.selected));
            let widths = [
                Constraint::Min(20),
                Constraint::Length(32),
                Constraint::Length(11),
                Constraint::Length(19),
                Constraint::Length(8),
                Constraint::Length(9),
            ];
            f.render_stateful_widget(
                Table::new(rows, widths)
                    .header(Row::new(vec!["TITLE", "SESSION", "REQ/RES/ERR", "FIRST", "LAST", "SIZE"]).style(bold))
                    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
                    .block(Block::default().borders(Borders::ALL).title(title)),
                body,
                &mut state,
            );
        }
        Some(s) => {
            let [list, pane] = Layout::vertical([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(body);
            let records = v.records();
            let max = records.iter().map(|i| i.bytes).max().unwrap_or(1).max(1);
            let rows: Vec<Row<'_>> = records
                .iter()
                .map(|i| {
                    let r = &i.record;
                    Row::new(vec![
                        r.timestamp.get(11..23).unwrap_or(&r.timestamp).to_string(),
                        r.kind.as_str().to_string(),
                        r.status.map(|s| s.to_string()).unwrap_or_default(),
                        i.latency_ms.map(|l| format!("{l} ms")).unwrap_or_default(),
                        kib(i.bytes),
                        "▇".repeat((i.bytes * 12).div_ceil(max)),
                        i.growth.map(|g| format!("{g:+}")).unwrap_or_default(),
                    ])
                })
                .collect();
            let flags = format!(
                "{}{}{}{}",
                if v.shown.requests { " requests" } else { "" },
                if v.shown.responses { " responses" } else { "" },
                if v.shown.errors { " errors" } else { "" },
                if v.search.is_empty() { String::new() } else { format!(" matching `{}`", v.search) }
            );
            let mut state = TableState::default().with_selected(Some(v.selected));
            let widths = [
                Constraint::Length(12),
                Constraint::Length(8),
                Constraint::Length(6),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(12),
                Constraint::Min(8),
            ];
            f.render_stateful_widget(
                Table::new(rows, widths)
                    .header(Row::new(vec!["TIME", "KIND", "STATUS", "LATENCY", "SIZE", "", "GROWTH"]).style(bold))
                    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
                    .block(Block::default().borders(Borders::ALL).title(format!(
                        "{} — {} records:{flags}",
                        s.id,
                        records.len()
                    ))),
                list,
                &mut state,
            );
            draw_pane(f, v, pane);
        }
    }
}

/// The payload pane: coloured lines, folds shown as `{ … N lines }`, the cursor (`>`) and the
/// selection (`┃`) in a gutter, so they show without colours too.
fn draw_pane(f: &mut Frame<'_>, v: &Viewer, area: ratatui::layout::Rect) {
    let p = &v.pane;
    let visible = p.visible();
    let height = area.height.saturating_sub(2).max(1) as usize;
    let mut top = p.top.get().min(p.cursor);
    if p.cursor >= top + height {
        top = p.cursor + 1 - height;
    }
    p.top.set(top);
    let focused = v.focus == Focus::Payload;
    let selected = p.anchor.map(|a| (a.min(p.cursor), a.max(p.cursor)));
    let style = |t: Tok| {
        if !v.color {
            return match t {
                Tok::Heading => Style::default().add_modifier(Modifier::BOLD),
                _ => Style::default(),
            };
        }
        match t {
            Tok::Heading => Style::default().fg(Color::Blue).add_modifier(Modifier::BOLD),
            Tok::Key => Style::default().fg(Color::Cyan),
            Tok::Str => Style::default().fg(Color::Green),
            Tok::Num => Style::default().fg(Color::Yellow),
            Tok::Lit => Style::default().fg(Color::Magenta),
            Tok::Plain | Tok::Punct => Style::default(),
        }
    };
    let lines: Vec<Line<'_>> = visible
        .iter()
        .enumerate()
        .skip(top)
        .take(height)
        .map(|(n, &i)| {
            let l = &p.payload.lines[i];
            let in_selection = selected.is_some_and(|(a, b)| (a..=b).contains(&n));
            let gutter = match (focused && n == p.cursor, in_selection) {
                (true, _) => ">",
                (false, true) => "┃",
                _ => " ",
            };
            let mut spans = vec![Span::raw(gutter), Span::raw("  ".repeat(l.indent))];
            spans.extend(l.spans.iter().map(|(t, s)| Span::styled(s.as_str(), style(*t))));
            if let Some(close) = l.close.filter(|_| p.folded.contains(&i)) {
                spans.push(Span::styled(
                    format!(" … {} lines", close - i - 1),
                    Style::default().add_modifier(Modifier::DIM),
                ));
            }
            let line = Line::from(spans);
            if in_selection { line.style(Style::default().add_modifier(Modifier::REVERSED)) } else { line }
        })
        .collect();
    let title = format!(
        "Payload — line {}/{}{}",
        visible.get(p.cursor).map_or(0, |i| i + 1),
        p.payload.lines.len(),
        if focused { "" } else { " (Tab to move in it)" }
    );
    let border = if focused { Style::default().add_modifier(Modifier::BOLD) } else { Style::default() };
    f.render_widget(
        Paragraph::new(lines)
            .scroll((0, p.column))
            .block(Block::default().borders(Borders::ALL).border_style(border).title(title)),
        area,
    );
}

fn kib(bytes: usize) -> String {
    if bytes < 1024 { format!("{bytes} B") } else { format!("{:.1} KB", bytes as f64 / 1024.0) }
}

fn run(m: &clap::ArgMatches) -> ExitCode {
    let dir = m
        .get_one::<String>("DIR")
        .map(|d| crate::component::expand_home(d))
        .or_else(|| std::env::var_os("OPENCODE_API_TRACER_DIR").map(PathBuf::from))
        .unwrap_or_else(|| crate::component::home_dir().join("opencode-api-tracer"));
    if !dir.is_dir() {
        eprintln!("error: {} is not a folder of traces (pass DIR, or set OPENCODE_API_TRACER_DIR)", dir.display());
        return ExitCode::FAILURE;
    }
    let mut reader = match model::reader(&dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot read {}: {e:#}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    let mut v = Viewer::new(Traces::default(), m.get_flag("include-meta"));
    v.color = std::env::var_os("NO_COLOR").is_none_or(|c| c.is_empty());
    loop {
        let (found, more) = reader.read_new(true);
        v.add(found);
        if !more {
            break;
        }
    }
    if let Some(id) = m.get_one::<String>("session")
        && !v.open(id)
    {
        eprintln!("error: no session `{id}` in {}", dir.display());
        return ExitCode::FAILURE;
    }
    if m.get_flag("snapshot") {
        v.color = false;
        println!("{}", crate::terminal::text_screen(120, 32, |f| draw(f, &v)));
        return ExitCode::SUCCESS;
    }
    if let Err(code) = crate::terminal::require_terminal("ocpipe traces", " (--snapshot prints the first screen)") {
        return code;
    }
    // Follow: `trace_jsonl`'s reader, woken by its file notifications (or at each 500 ms wake
    // where there are none).
    let mut watch = (!m.get_flag("static")).then(|| reader.watch());
    crate::terminal::fullscreen(|terminal| {
        // Drawn again only after a key, a resize or new records.
        let mut redraw = true;
        // The reader stopped with more to read: read on without waiting for a notification.
        let mut behind = false;
        loop {
            if redraw {
                terminal.draw(|f| draw(f, &v))?;
                redraw = false;
            }
            if event::poll(Duration::from_millis(if behind { 0 } else { 500 }))? {
                match event::read()? {
                    Event::Key(k) if k.kind == KeyEventKind::Press => {
                        v.message.clear();
                        v.key(k);
                        redraw = true;
                    }
                    Event::Resize(..) => redraw = true,
                    _ => {}
                }
            }
            if let Some(w) = watch.as_mut() {
                let ch = w.take();
                if behind || ch.rescan || !ch.paths.is_empty() || !w.is_live() {
                    let (found, more) = reader.read_new(true);
                    behind = more;
                    redraw |= !found.is_empty();
                    v.add(found);
                }
            }
            if v.quit {
                return Ok(());
            }
        }
    })
}

#[cfg(test)]
mod tests;
