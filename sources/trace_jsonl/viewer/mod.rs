//! `ocpipe traces [DIR]`: the trace viewer. A session list, a session's records (time, kind,
//! status, latency, size with a bar, growth over the previous request), and the selected
//! record's payload (pretty JSON; a streamed response assembled). Follows the directory.

mod model;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table, TableState, Wrap};

use crate::event::TraceKind;
pub use model::{Traces, load};

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

pub struct Viewer {
    pub traces: Traces,
    pub session: Option<usize>,
    pub selected: usize,
    pub scroll: u16,
    pub shown: Shown,
    pub search: String,
    pub editing: bool,
    pub include_meta: bool,
    pub message: String,
    pub quit: bool,
}

impl Viewer {
    pub fn new(traces: Traces, include_meta: bool) -> Viewer {
        Viewer {
            traces,
            session: None,
            selected: 0,
            scroll: 0,
            shown: Shown { requests: true, responses: true, errors: true },
            search: String::new(),
            editing: false,
            include_meta,
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

    pub fn selected_payload(&self) -> Option<String> {
        self.records().get(self.selected).map(|i| model::payload(&i.record))
    }

    pub fn key(&mut self, k: KeyEvent) {
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
        let len = if self.session.is_some() { self.records().len() } else { self.traces.sessions.len() };
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Down => self.pick(self.selected + 1, len),
            KeyCode::Up => self.pick(self.selected.saturating_sub(1), len),
            KeyCode::Home => self.pick(0, len),
            KeyCode::End => self.pick(len.saturating_sub(1), len),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_add(10),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(10),
            KeyCode::Enter if self.session.is_none() && len > 0 => {
                self.session = Some(self.selected);
                self.selected = 0;
                self.scroll = 0;
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

    fn pick(&mut self, i: usize, len: usize) {
        self.selected = i.min(len.saturating_sub(1));
        self.scroll = 0;
    }

    fn write_payload(&mut self) {
        let Some(p) = self.selected_payload() else { return };
        let path = std::env::temp_dir().join(format!("ocpipe-payload-{}.txt", std::process::id()));
        self.message = match std::fs::write(&path, p) {
            Ok(()) => format!("payload written to {}", path.display()),
            Err(e) => format!("cannot write {}: {e}", path.display()),
        };
    }

    /// OSC 52 (wrapped for tmux), up to what terminals take.
    fn copy_payload(&mut self) {
        let Some(p) = self.selected_payload() else { return };
        self.message = match osc52(&p) {
            Some(seq) => {
                let mut out = std::io::stdout();
                let _ = out.write_all(seq.as_bytes()).and_then(|()| out.flush());
                format!("copied {} bytes (OSC 52)", p.len())
            }
            None => format!(
                "the payload ({} bytes) is larger than terminals take for a copy; `w` writes it to a file",
                p.len()
            ),
        };
    }
}

/// The OSC 52 sequence that puts `text` on the clipboard. Inside tmux: as is (tmux keeps it in
/// its buffer with `set-clipboard on`) and wrapped to pass through to the outer terminal
/// (`allow-passthrough on`).
pub fn osc52(text: &str) -> Option<String> {
    const MAX: usize = 74_994; // what xterm and tmux accept, base64-encoded
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(text);
    if b64.len() > MAX {
        return None;
    }
    let seq = format!("\x1b]52;c;{b64}\x07");
    Some(if std::env::var_os("TMUX").is_some() {
        format!("{seq}\x1bPtmux;{}\x1b\\", seq.replace('\x1b', "\x1b\x1b"))
    } else {
        seq
    })
}

pub fn draw(f: &mut Frame<'_>, v: &Viewer) {
    let [body, status] = Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(f.area());
    let keys = if v.editing {
        format!("search: {}▏ (Enter/Esc done)", v.search)
    } else if !v.message.is_empty() {
        v.message.clone()
    } else if v.session.is_some() {
        "↑↓ record  PgUp/PgDn payload  1 requests 2 responses 3 errors  / search  c copy  w write  Esc back  q quit"
            .into()
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
            let text = v.selected_payload().unwrap_or_default();
            let lines: Vec<Line<'_>> = text.lines().map(|l| Line::from(l.to_string())).collect();
            f.render_widget(
                Paragraph::new(lines)
                    .wrap(Wrap { trim: false })
                    .scroll((v.scroll, 0))
                    .block(Block::default().borders(Borders::ALL).title("Payload")),
                pane,
            );
        }
    }
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
    if let Err(code) = crate::terminal::require_terminal("ocpipe traces", "") {
        return code;
    }
    let mut v = Viewer::new(load(&dir), m.get_flag("include-meta"));
    if let Some(id) = m.get_one::<String>("session") {
        match v.traces.sessions.iter().position(|s| &s.id == id) {
            Some(i) => v.session = Some(i),
            None => {
                eprintln!("error: no session `{id}` in {}", dir.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let follow = !m.get_flag("static");
    let mut watch = follow.then(|| {
        crate::watch::Watch::new(
            "traces",
            vec![(dir.clone(), notify::RecursiveMode::NonRecursive)],
            std::sync::Arc::new(|p: &std::path::Path| p.extension().is_some_and(|e| e == "jsonl")),
        )
    });
    crate::terminal::fullscreen(|terminal| {
        // Drawn again only after a key, a resize or new records.
        let mut redraw = true;
        loop {
            if redraw {
                terminal.draw(|f| draw(f, &v))?;
                redraw = false;
            }
            if event::poll(Duration::from_millis(500))? {
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
            // Follow: new records appear as the files grow (the files notifications name).
            let changed = watch.as_mut().is_some_and(|w| {
                let ch = w.take();
                ch.rescan || !ch.paths.is_empty()
            });
            if changed {
                redraw = true;
                let open = v.session.and_then(|i| v.traces.sessions.get(i)).map(|s| s.id.clone());
                v.traces = load(&dir);
                v.session = open.and_then(|id| v.traces.sessions.iter().position(|s| s.id == id));
            }
            if v.quit {
                return Ok(());
            }
        }
    })
}

#[cfg(test)]
mod tests;
