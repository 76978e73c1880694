//! Token usage per message, kept compact, summed for any grouping and range when asked: what a
//! page or an API answers (`/api/usage?range=week&by=model`) with the rules of
//! [`crate::usage`], so its numbers are `ocpipe stats`'s. A message seen again (OpenCode fills
//! in tokens at completion) replaces its earlier entry; fork copies are kept apart.

use std::collections::HashMap;

use serde::Serialize;

use crate::event::{MessageInfo, SessionInfo, Tokens};
use std::sync::Arc;

use crate::usage::{CostSource, GroupBy, LocalDays, MessageCost, Prices, Usage, Window, model_name, project_key};

/// A session as the ledger keeps it (names are ids into the ledger's strings).
#[derive(Debug, Clone, Copy)]
struct SessionRow {
    project: u32,
    title: u32,
    directory: u32,
    parent: Option<u32>,
    created: i64,
    updated: i64,
}

/// One message's part in the sums: 48 bytes whatever its strings.
#[derive(Debug, Clone, Copy)]
struct Entry {
    created: i64,
    cost: f64,
    tokens: [u32; 5],
    session: u32,
    /// `provider/model`, as `ocpipe stats` names it.
    model: u32,
    /// The agent's name (the low 30 bits), [`ASSISTANT`] and [`FORK_COPY`].
    agent_flags: u32,
}

const ASSISTANT: u32 = 1 << 31;
const FORK_COPY: u32 = 1 << 30;
/// The cost came from the price table.
const PRICED: u32 = 1 << 29;
/// OpenCode stored no cost and no price is known.
const UNPRICED: u32 = 1 << 28;
const FLAGS: u32 = ASSISTANT | FORK_COPY | PRICED | UNPRICED;
const _: () = assert!(std::mem::size_of::<Entry>() == 48);

impl Entry {
    fn agent(&self) -> u32 {
        self.agent_flags & !FLAGS
    }
    fn cost(&self) -> MessageCost {
        let source = match self.agent_flags & (PRICED | UNPRICED) {
            PRICED => CostSource::Priced,
            UNPRICED => CostSource::Unknown,
            _ => return MessageCost::stored(self.cost),
        };
        MessageCost { dollars: self.cost, source }
    }
    fn assistant(&self) -> bool {
        self.agent_flags & ASSISTANT != 0
    }
    fn fork_copy(&self) -> bool {
        self.agent_flags & FORK_COPY != 0
    }
}

/// The sums of one grouping over one window: rows (largest first; days newest first), totals
/// and the fork copies left out of both.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub rows: Vec<(String, Usage)>,
    pub totals: Usage,
    pub fork_copies: Usage,
}

/// A session with its sums in a window.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    pub id: String,
    pub title: String,
    pub directory: String,
    pub project: String,
    #[serde(rename = "parentID")]
    pub parent_id: Option<String>,
    pub created: i64,
    pub updated: i64,
    /// First and last message time in the window (milliseconds).
    pub first: i64,
    pub last: i64,
    pub usage: Usage,
}

/// One message of a session.
#[derive(Debug, Clone, Serialize)]
pub struct MessageRow {
    pub created: i64,
    pub model: String,
    pub agent: String,
    pub assistant: bool,
    pub fork_copy: bool,
    pub tokens: Tokens,
    pub total: u64,
    pub cost: f64,
}

#[derive(Debug, Default)]
pub struct Ledger {
    /// What a message without a stored cost costs (the built-in table unless given one).
    prices: Option<Arc<Prices>>,
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, u32>,
    sessions: HashMap<u32, SessionRow>,
    /// Every message once, in the order first seen…
    entries: Vec<Entry>,
    /// …found by a hash of its id (an update replaces its entry).
    at: HashMap<u64, u32>,
}

impl Ledger {
    /// An empty ledger pricing messages with `prices`.
    pub fn with_prices(prices: Arc<Prices>) -> Ledger {
        Ledger { prices: Some(prices), ..Ledger::default() }
    }

    fn id(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.names.len() as u32;
        // Agent ids share their word with four flags.
        assert!(i < UNPRICED, "more than 2^28 names");
        self.names.push(s.into());
        self.index.insert(s.into(), i);
        i
    }

    fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }

    /// Messages kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn session(&mut self, s: &SessionInfo) {
        let row = SessionRow {
            project: self.id(&project_key(s)),
            title: self.id(&s.title),
            directory: self.id(&s.directory),
            parent: s.parent_id.as_deref().map(|p| self.id(p)),
            created: s.time_created,
            updated: s.time_updated,
        };
        let id = self.id(&s.id);
        self.sessions.insert(id, row);
    }

    pub fn message(&mut self, m: &MessageInfo) {
        // Named as `ocpipe stats` names them (an empty name is unknown).
        let model = model_name(m.provider_id.as_deref().unwrap_or(""), m.model_id.as_deref().unwrap_or(""));
        let known = |s: &str| if s.is_empty() { "unknown" } else { s }.to_string();
        let agent = self.id(&known(m.agent.as_deref().unwrap_or("")));
        let prices = self.prices.get_or_insert_with(Prices::builtin);
        let cost = prices.cost(m.provider_id.as_deref(), m.model_id.as_deref(), m.cost, &m.tokens);
        let source = match cost.source {
            CostSource::Priced => PRICED,
            CostSource::Unknown => UNPRICED,
            _ => 0,
        };
        let flags =
            if m.role == "assistant" { ASSISTANT } else { 0 } | if m.fork_copy { FORK_COPY } else { 0 } | source;
        let entry = Entry {
            created: m.time_created,
            cost: cost.dollars,
            tokens: m.tokens.packed(),
            session: self.id(&known(&m.session_id)),
            model: self.id(&model),
            agent_flags: agent | flags,
        };
        match self.at.entry(xxhash_rust::xxh3::xxh3_64(m.id.as_bytes())) {
            std::collections::hash_map::Entry::Occupied(o) => self.entries[*o.get() as usize] = entry,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(self.entries.len() as u32);
                self.entries.push(entry);
            }
        }
    }

    fn project_of(&self, session: u32) -> &str {
        self.sessions.get(&session).map_or("(unknown)", |s| self.name(s.project))
    }

    /// The sums of `by` over `window` (fork copies counted only with `include_fork_copies`).
    pub fn sum(&self, by: GroupBy, window: Window, include_fork_copies: bool) -> Summary {
        #[derive(Default)]
        struct Acc {
            usage: Usage,
            sessions: std::collections::HashSet<u32>,
        }
        impl Acc {
            fn add(&mut self, e: &Entry) {
                self.usage.add_message(&Tokens::from_packed(e.tokens), e.cost(), e.assistant());
                self.sessions.insert(e.session);
            }
            fn finish(mut self) -> Usage {
                self.usage.sessions = self.sessions.len() as u64;
                self.usage
            }
        }
        // Keys as numbers (names once per group at the end).
        let mut groups: HashMap<u64, Acc> = HashMap::new();
        let mut days = LocalDays::default();
        let (mut totals, mut forks) = (Acc::default(), Acc::default());
        for e in self.entries.iter().filter(|e| window.contains(e.created)) {
            if e.fork_copy() && !include_fork_copies {
                forks.add(e);
                continue;
            }
            totals.add(e);
            let key = match by {
                GroupBy::All => 0,
                GroupBy::Session => u64::from(e.session),
                GroupBy::Project => self.sessions.get(&e.session).map_or(u64::MAX, |s| u64::from(s.project)),
                GroupBy::Model => u64::from(e.model),
                GroupBy::Agent => u64::from(e.agent()),
                GroupBy::Day => days.day(e.created).map_or(u64::MAX, |d| d as u64),
            };
            groups.entry(key).or_default().add(e);
        }
        let name = |k: u64| -> String {
            match by {
                GroupBy::All => "all".into(),
                GroupBy::Day => {
                    chrono::NaiveDate::from_num_days_from_ce_opt(k as i32).map_or("unknown".into(), |d| d.to_string())
                }
                GroupBy::Project if k == u64::MAX => "(unknown)".into(),
                _ => self.name(k as u32).to_string(),
            }
        };
        let groups: Vec<(String, Acc)> = groups.into_iter().map(|(k, a)| (name(k), a)).collect();
        let mut rows: Vec<(String, Usage)> = groups.into_iter().map(|(k, a)| (k, a.finish())).collect();
        if by == GroupBy::Day {
            rows.sort_by(|a, b| b.0.cmp(&a.0));
        } else {
            rows.sort_by(|a, b| b.1.total.cmp(&a.1.total).then_with(|| a.0.cmp(&b.0)));
        }
        Summary { rows, totals: totals.finish(), fork_copies: forks.finish() }
    }

    /// The sessions with messages in `window` (fork copies left out of the sums), largest
    /// first, at most `limit`.
    pub fn sessions(&self, window: Window, limit: usize) -> Vec<SessionSummary> {
        let mut by: HashMap<u32, (Usage, i64, i64)> = HashMap::new();
        for e in self.entries.iter().filter(|e| window.contains(e.created) && !e.fork_copy()) {
            let (u, first, last) = by.entry(e.session).or_insert((Usage::default(), i64::MAX, i64::MIN));
            u.add_message(&Tokens::from_packed(e.tokens), e.cost(), e.assistant());
            u.sessions = 1;
            (*first, *last) = ((*first).min(e.created), (*last).max(e.created));
        }
        let mut top: Vec<(u32, (Usage, i64, i64))> = by.into_iter().collect();
        top.sort_by(|a, b| b.1.0.total.cmp(&a.1.0.total).then_with(|| self.name(a.0).cmp(self.name(b.0))));
        top.truncate(limit);
        let mut out: Vec<SessionSummary> = top
            .into_iter()
            .map(|(id, (usage, first, last))| {
                let s = self.sessions.get(&id);
                let name = |f: fn(&SessionRow) -> u32| s.map_or(String::new(), |s| self.name(f(s)).to_string());
                SessionSummary {
                    id: self.name(id).to_string(),
                    title: name(|s| s.title),
                    directory: name(|s| s.directory),
                    project: self.project_of(id).to_string(),
                    parent_id: s.and_then(|s| s.parent).map(|p| self.name(p).to_string()),
                    created: s.map_or(first, |s| s.created),
                    updated: s.map_or(last, |s| s.updated),
                    first,
                    last,
                    usage,
                }
            })
            .collect();
        out.sort_by(|a, b| b.usage.total.cmp(&a.usage.total).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// Session id -> title.
    pub fn titles(&self) -> HashMap<String, String> {
        self.sessions.iter().map(|(&id, s)| (self.name(id).to_string(), self.name(s.title).to_string())).collect()
    }

    /// The messages of one session, oldest first (`None`: no such session).
    pub fn messages_of(&self, session: &str) -> Option<Vec<MessageRow>> {
        let &id = self.index.get(session)?;
        let mut rows: Vec<MessageRow> = self
            .entries
            .iter()
            .filter(|e| e.session == id)
            .map(|e| {
                let tokens = Tokens::from_packed(e.tokens);
                MessageRow {
                    created: e.created,
                    model: self.name(e.model).to_string(),
                    agent: self.name(e.agent()).to_string(),
                    assistant: e.assistant(),
                    fork_copy: e.fork_copy(),
                    total: tokens.total(),
                    tokens,
                    cost: e.cost,
                }
            })
            .collect();
        rows.sort_by_key(|r| r.created);
        Some(rows)
    }
}
