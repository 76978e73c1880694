//! A compact in-memory catalog of every session and message, for answering token views fast
//! and in little memory: strings are interned, a message is 56 bytes.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::store::{Location, RawMessage, ReadReport, Visitor, read_all};
use crate::event::{SessionInfo, Tokens};
use crate::transforms::aggregate::{GroupBy, Usage, Window, local_day, project_key};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Interner {
    names: Vec<Box<str>>,
    #[serde(skip)]
    index: HashMap<Box<str>, u32>,
}

impl Interner {
    /// An interner over `names`; its lookup index is built on first use.
    pub fn from_names(names: Vec<Box<str>>) -> Self {
        Interner {
            names,
            index: HashMap::new(),
        }
    }
    pub fn names(&self) -> &[Box<str>] {
        &self.names
    }
    pub fn id(&mut self, s: &str) -> u32 {
        if self.index.len() != self.names.len() {
            self.reindex();
        }
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(s.into());
        self.index.insert(s.into(), i);
        i
    }
    pub fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }
    /// Rebuilds the lookup index after deserializing.
    pub fn reindex(&mut self) {
        self.index = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CSession {
    pub id: u32,
    pub project: u32,
    pub title: u32,
    pub created: i64,
}

pub const ASSISTANT: u8 = 1;
pub const FORK_COPY: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CMessage {
    pub session: u32,
    pub provider: u32,
    pub model: u32,
    pub agent: u32,
    pub created: i64,
    pub tokens: [u32; 5],
    pub cost: f64,
    pub flags: u8,
}

impl CMessage {
    pub fn tokens(&self) -> Tokens {
        let [input, output, reasoning, cache_read, cache_write] = self.tokens.map(u64::from);
        Tokens {
            input,
            output,
            reasoning,
            cache_read,
            cache_write,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Catalog {
    pub names: Interner,
    pub sessions: Vec<CSession>,
    pub messages: Vec<CMessage>,
    /// Hashes of the message ids, in the order of `messages`.
    pub ids: Vec<u64>,
    #[serde(skip)]
    pub report: ReadReport,
}

struct Builder {
    cat: Catalog,
}

impl Visitor for Builder {
    fn session(&mut self, s: SessionInfo) {
        let n = &mut self.cat.names;
        let cs = CSession {
            id: n.id(&s.id),
            project: n.id(&project_key(&s)),
            title: n.id(&s.title),
            created: s.time_created,
        };
        self.cat.sessions.push(cs);
    }

    fn message(
        &mut self,
        id: &str,
        session: &str,
        row_created: i64,
        m: &RawMessage<'_>,
        _origin: &'static str,
    ) {
        self.cat.messages.push(super::index::compact(
            &mut self.cat.names,
            session,
            row_created,
            m,
        ));
        self.cat.ids.push(xxhash_rust::xxh3::xxh3_64(id.as_bytes()));
    }
}

impl Catalog {
    /// Reads everything at `loc` and marks fork copies.
    pub fn load(loc: &Location) -> Catalog {
        let mut b = Builder {
            cat: Catalog::default(),
        };
        b.cat.names.id("");
        let report = read_all(loc, &mut b);
        let mut cat = b.cat;
        cat.report = report;
        cat.mark_fork_copies();
        cat
    }

    /// A fork copies its parent's messages under new ids with the same creation time, model,
    /// agent and tokens. Of each such set, the message in the earliest-created session is the
    /// original; the others are copies.
    pub fn mark_fork_copies(&mut self) {
        let created_of: HashMap<u32, i64> =
            self.sessions.iter().map(|s| (s.id, s.created)).collect();
        let key = |m: &CMessage| {
            (
                m.created,
                m.provider,
                m.model,
                m.agent,
                m.tokens,
                m.flags & ASSISTANT,
            )
        };
        let mut order: Vec<u32> = (0..self.messages.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            let (ma, mb) = (&self.messages[a as usize], &self.messages[b as usize]);
            key(ma).cmp(&key(mb)).then_with(|| {
                let ca = created_of.get(&ma.session).copied().unwrap_or(i64::MAX);
                let cb = created_of.get(&mb.session).copied().unwrap_or(i64::MAX);
                (ca, ma.session).cmp(&(cb, mb.session))
            })
        });
        let mut i = 0;
        while i < order.len() {
            let first = self.messages[order[i] as usize];
            let mut j = i + 1;
            while j < order.len() && key(&self.messages[order[j] as usize]) == key(&first) {
                let m = &mut self.messages[order[j] as usize];
                if m.session != first.session {
                    m.flags |= FORK_COPY;
                }
                j += 1;
            }
            i = j;
        }
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Sums messages in `window` by `group`; fork copies go to the second result unless
    /// `include_fork_copies`.
    pub fn aggregate(
        &self,
        group: GroupBy,
        window: Window,
        include_fork_copies: bool,
    ) -> (Vec<(String, Usage)>, Usage, Usage) {
        let sessions: HashMap<u32, &CSession> = self.sessions.iter().map(|s| (s.id, s)).collect();
        let mut groups: HashMap<String, (Usage, HashSet<u32>)> = HashMap::new();
        let mut keys: HashMap<(u32, u32), String> = HashMap::new();
        let mut day_cache: HashMap<i64, String> = HashMap::new();
        let mut totals = (Usage::default(), HashSet::new());
        let mut forks = (Usage::default(), HashSet::new());
        for m in &self.messages {
            if !window.contains(m.created) {
                continue;
            }
            let assistant = m.flags & ASSISTANT != 0;
            let tokens = m.tokens();
            if m.flags & FORK_COPY != 0 && !include_fork_copies {
                forks.0.add_message(&tokens, m.cost, assistant);
                forks.1.insert(m.session);
                continue;
            }
            totals.0.add_message(&tokens, m.cost, assistant);
            totals.1.insert(m.session);
            let key_ids = match group {
                GroupBy::All => (0, 0),
                GroupBy::Session => (m.session, 0),
                GroupBy::Project => (sessions.get(&m.session).map_or(u32::MAX, |s| s.project), 0),
                GroupBy::Model => (m.provider, m.model),
                GroupBy::Agent => (m.agent, 0),
                GroupBy::Day => {
                    // Local days: cache by the UTC hour, which never straddles a local day
                    // boundary in whole-hour time zones.
                    let hour = m.created.div_euclid(3_600_000);
                    let day = day_cache
                        .entry(hour)
                        .or_insert_with(|| local_day(m.created));
                    let e = groups.entry(day.clone()).or_default();
                    e.0.add_message(&tokens, m.cost, assistant);
                    e.1.insert(m.session);
                    continue;
                }
            };
            let key = keys
                .entry(key_ids)
                .or_insert_with(|| self.key_name(group, key_ids));
            let e = groups.entry(key.clone()).or_default();
            e.0.add_message(&tokens, m.cost, assistant);
            e.1.insert(m.session);
        }
        let finish = |(mut u, s): (Usage, HashSet<u32>)| {
            u.sessions = s.len() as u64;
            u
        };
        let mut rows: Vec<(String, Usage)> =
            groups.into_iter().map(|(k, v)| (k, finish(v))).collect();
        rows.sort_by(|a, b| b.1.total.cmp(&a.1.total).then_with(|| a.0.cmp(&b.0)));
        if group == GroupBy::Day {
            rows.sort_by(|a, b| b.0.cmp(&a.0));
        }
        (rows, finish(totals), finish(forks))
    }

    fn key_name(&self, group: GroupBy, (a, b): (u32, u32)) -> String {
        let n = |i: u32| {
            if i == u32::MAX {
                "(unknown)"
            } else {
                self.names.name(i)
            }
        };
        match group {
            GroupBy::All => "all".into(),
            GroupBy::Model => match (n(a), n(b)) {
                ("", "") => "unknown".into(),
                ("", m) => m.into(),
                (p, m) => format!("{p}/{m}"),
            },
            _ if n(a).is_empty() => "unknown".into(),
            _ => n(a).into(),
        }
    }

    /// The title of a session, by its id.
    pub fn title_of(&self, session_id: &str) -> Option<&str> {
        self.sessions
            .iter()
            .find(|s| self.names.name(s.id) == session_id)
            .map(|s| self.names.name(s.title))
    }
}
