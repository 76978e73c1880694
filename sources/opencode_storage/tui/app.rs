//! The state of `ocpipe tui`: which view, range, sort, filter and scroll; the rows each view
//! shows, computed from the storage catalog (the same sums as `ocpipe stats`) and the running
//! OpenCode processes. Key handling is here, drawing in `view.rs`, so both are tested apart.

use chrono::Local;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::super::catalog::{ASSISTANT, Catalog, FORK_COPY};
use crate::event::ProcessInfo;
use crate::usage::{GroupBy, RangeName, Usage, Window};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Overview,
    Sessions,
    Projects,
    Models,
    Agents,
    Timeline,
}

impl View {
    pub const ALL: [View; 6] =
        [View::Overview, View::Sessions, View::Projects, View::Models, View::Agents, View::Timeline];

    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Sessions => "Sessions",
            View::Projects => "Projects",
            View::Models => "Models",
            View::Agents => "Agents",
            View::Timeline => "Timeline",
        }
    }

    fn group(self) -> GroupBy {
        match self {
            View::Overview | View::Models => GroupBy::Model,
            View::Sessions => GroupBy::Session,
            View::Projects => GroupBy::Project,
            View::Agents => GroupBy::Agent,
            View::Timeline => GroupBy::Day,
        }
    }
}

/// What a table row sorts by (`s` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Tokens,
    Messages,
    Name,
}

/// One row of a grouped view.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: String,
    /// The session's title (Sessions view).
    pub label: String,
    pub usage: Usage,
    /// Sessions view: the session a sub-agent session belongs to, how deep it sits under
    /// sessions shown, and its first and last message time in the range (milliseconds).
    pub parent: Option<String>,
    pub depth: usize,
    pub span: Option<(i64, i64)>,
}

/// One message of an opened session.
#[derive(Debug, Clone)]
pub struct MessageRow {
    pub time: String,
    pub model: String,
    pub agent: String,
    pub tokens: u64,
    pub cost: f64,
    pub assistant: bool,
    pub fork_copy: bool,
}

pub struct App {
    pub view: View,
    pub range: RangeName,
    pub sort: Sort,
    pub filter: String,
    /// Typing a filter (after `/`).
    pub editing: bool,
    pub selected: usize,
    /// An opened session: its id and messages.
    pub session: Option<(String, Vec<MessageRow>)>,
    pub rows: Vec<Row>,
    pub totals: Usage,
    pub forks: Usage,
    pub models: Vec<Row>,
    pub processes: Vec<ProcessInfo>,
    /// Why there is nothing to show, when there is nothing.
    pub empty: Option<String>,
    pub quit: bool,
    pub color: bool,
}

impl App {
    pub fn new(range: RangeName, color: bool) -> App {
        App {
            view: View::Overview,
            range,
            sort: Sort::Tokens,
            filter: String::new(),
            editing: false,
            selected: 0,
            session: None,
            rows: Vec::new(),
            totals: Usage::default(),
            forks: Usage::default(),
            models: Vec::new(),
            processes: Vec::new(),
            empty: None,
            quit: false,
            color,
        }
    }

    pub fn window(&self) -> Window {
        Window::resolve(self.range, None, None, Local::now())
    }

    /// Recomputes the rows of the current view from `cat`.
    pub fn refresh(&mut self, cat: &Catalog, why_empty: Option<String>) {
        self.empty = if cat.messages.is_empty() {
            why_empty.or_else(|| Some("no OpenCode messages found".into()))
        } else {
            None
        };
        let window = self.window();
        let (rows, totals, forks) = cat.aggregate(self.view.group(), window, false, &crate::usage::Prices::builtin());
        let sessions = self.view == View::Sessions;
        let (titles, parents, spans) =
            if sessions { (cat.titles(), cat.parents(), cat.spans(window)) } else { Default::default() };
        self.rows = rows
            .into_iter()
            .map(|(key, usage)| Row {
                label: titles.get(key.as_str()).copied().unwrap_or("").to_string(),
                parent: parents.get(key.as_str()).map(|p| p.to_string()),
                span: spans.get(key.as_str()).copied(),
                depth: 0,
                key,
                usage,
            })
            .collect();
        self.sort_rows();
        self.totals = totals;
        self.forks = forks;
        if self.view == View::Overview {
            // The top models by tokens, whatever the sort.
            let mut by_tokens = self.rows.clone();
            by_tokens.sort_by(|a, b| b.usage.total.cmp(&a.usage.total).then(a.key.cmp(&b.key)));
            self.models = by_tokens.into_iter().take(5).collect();
        }
        if let Some((id, _)) = &self.session {
            let id = id.clone();
            self.session = Some((id.clone(), messages_of(cat, &id, window)));
        }
        let len = self.session.as_ref().map_or_else(|| self.visible().len(), |(_, m)| m.len());
        self.selected = self.selected.min(len.saturating_sub(1));
    }

    fn sort_rows(&mut self) {
        match (self.sort, self.view) {
            (_, View::Timeline) => self.rows.sort_by(|a, b| b.key.cmp(&a.key)),
            (Sort::Tokens, _) => self.rows.sort_by(|a, b| b.usage.total.cmp(&a.usage.total).then(a.key.cmp(&b.key))),
            (Sort::Messages, _) => {
                self.rows.sort_by(|a, b| b.usage.messages.cmp(&a.usage.messages).then(a.key.cmp(&b.key)))
            }
            (Sort::Name, _) => self.rows.sort_by(|a, b| a.key.cmp(&b.key)),
        }
        if self.view == View::Sessions {
            self.rows = nest(std::mem::take(&mut self.rows));
        }
    }

    /// The rows the filter lets through.
    pub fn visible(&self) -> Vec<&Row> {
        let f = self.filter.to_lowercase();
        self.rows
            .iter()
            .filter(|r| f.is_empty() || r.key.to_lowercase().contains(&f) || r.label.to_lowercase().contains(&f))
            .collect()
    }

    /// Handles a key; returns whether the data must be computed again.
    pub fn key(&mut self, k: KeyEvent, page: usize) -> bool {
        if self.editing {
            match k.code {
                KeyCode::Enter | KeyCode::Esc => self.editing = false,
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            self.selected = 0;
            return false;
        }
        let len = self.session.as_ref().map_or_else(|| self.visible().len(), |(_, m)| m.len());
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => self.quit = true,
            KeyCode::Char(c @ '1'..='6') => return self.switch(View::ALL[c as usize - '1' as usize]),
            KeyCode::Tab => return self.switch(View::ALL[(self.index() + 1) % 6]),
            KeyCode::BackTab => return self.switch(View::ALL[(self.index() + 5) % 6]),
            KeyCode::Char('t') => return self.set_range(RangeName::Today),
            KeyCode::Char('w') => return self.set_range(RangeName::Week),
            KeyCode::Char('m') => return self.set_range(RangeName::Month),
            KeyCode::Char('a') => return self.set_range(RangeName::All),
            KeyCode::Char('r') => return true,
            KeyCode::Char('s') => {
                self.sort = match self.sort {
                    Sort::Tokens => Sort::Messages,
                    Sort::Messages => Sort::Name,
                    Sort::Name => Sort::Tokens,
                };
                self.sort_rows();
            }
            KeyCode::Char('/') => {
                self.editing = true;
                self.filter.clear();
            }
            KeyCode::Down => self.selected = (self.selected + 1).min(len.saturating_sub(1)),
            KeyCode::Up => self.selected = self.selected.saturating_sub(1),
            KeyCode::PageDown => self.selected = (self.selected + page).min(len.saturating_sub(1)),
            KeyCode::PageUp => self.selected = self.selected.saturating_sub(page),
            KeyCode::Home => self.selected = 0,
            KeyCode::End => self.selected = len.saturating_sub(1),
            KeyCode::Enter if self.view == View::Sessions && self.session.is_none() => {
                if let Some(r) = self.visible().get(self.selected) {
                    self.session = Some((r.key.clone(), Vec::new()));
                    self.selected = 0;
                    return true;
                }
            }
            KeyCode::Esc => {
                if self.session.take().is_none() {
                    self.filter.clear();
                }
                self.selected = 0;
            }
            _ => {}
        }
        false
    }

    fn index(&self) -> usize {
        View::ALL.iter().position(|v| *v == self.view).unwrap_or(0)
    }

    fn switch(&mut self, view: View) -> bool {
        self.view = view;
        self.session = None;
        self.selected = 0;
        self.filter.clear();
        true
    }

    fn set_range(&mut self, range: RangeName) -> bool {
        self.range = range;
        self.selected = 0;
        true
    }
}

/// Sub-agent sessions right under their parent (in the order they were sorted in), one level
/// deeper; a sub-agent session whose parent has nothing in the range stands on its own.
fn nest(rows: Vec<Row>) -> Vec<Row> {
    let shown: rustc_hash::FxHashSet<String> = rows.iter().map(|r| r.key.clone()).collect();
    let mut children: rustc_hash::FxHashMap<String, Vec<Row>> = Default::default();
    let mut top = Vec::new();
    for r in rows {
        match r.parent.clone().filter(|p| shown.contains(p) && *p != r.key) {
            Some(p) => children.entry(p).or_default().push(r),
            None => top.push(r),
        }
    }
    fn place(mut r: Row, depth: usize, children: &mut rustc_hash::FxHashMap<String, Vec<Row>>, out: &mut Vec<Row>) {
        r.depth = depth;
        let kids = children.remove(&r.key).unwrap_or_default();
        out.push(r);
        for k in kids {
            place(k, depth + 1, children, out);
        }
    }
    let mut out = Vec::with_capacity(shown.len());
    for r in top {
        place(r, 0, &mut children, &mut out);
    }
    // A cycle of parents (damaged data) has no top: its sessions are listed flat.
    out.extend(children.into_values().flatten());
    out
}

/// The messages of one session in the window, oldest first.
fn messages_of(cat: &Catalog, session: &str, window: Window) -> Vec<MessageRow> {
    let Some(sid) = cat.sessions.iter().map(|s| s.id).find(|&id| cat.names.name(id) == session) else {
        return Vec::new();
    };
    let mut rows: Vec<(i64, MessageRow)> = cat
        .messages
        .iter()
        .filter(|m| m.session == sid && window.contains(m.created))
        .map(|m| {
            let provider = cat.names.name(m.provider);
            let model = cat.names.name(m.model);
            let time = chrono::DateTime::from_timestamp_millis(m.created)
                .map(|t| t.with_timezone(&Local).format("%m-%d %H:%M:%S").to_string())
                .unwrap_or_default();
            let row = MessageRow {
                time,
                model: if provider.is_empty() { model.to_string() } else { format!("{provider}/{model}") },
                agent: cat.names.name(m.agent).to_string(),
                tokens: m.tokens().total(),
                cost: m.cost,
                assistant: m.flags & ASSISTANT != 0,
                fork_copy: m.flags & FORK_COPY != 0,
            };
            (m.created, row)
        })
        .collect();
    rows.sort_by_key(|(t, _)| *t);
    rows.into_iter().map(|(_, r)| r).collect()
}
