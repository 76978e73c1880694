//! A compact in-memory catalog of every session and message, for answering token views fast
//! and in little memory: strings are interned, a message is 56 bytes.

use rustc_hash::{FxHashMap, FxHashSet};

use serde::{Deserialize, Serialize};

use super::store::{Location, RawMessage, ReadReport, RowRange, Visitor, read_all};
use crate::event::{SessionInfo, Tokens};
use crate::usage::prices::price_with;
use crate::usage::{GroupBy, LocalDays, MessageCost, Price, Prices, Usage, Window, model_name, project_key};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Interner {
    names: Vec<Box<str>>,
    #[serde(skip)]
    index: FxHashMap<Box<str>, u32>,
    /// The last id returned per slot: runs of one session or model skip the hash lookup.
    #[serde(skip)]
    recent: [u32; 4],
}

impl Interner {
    /// An interner over `names`; its lookup index is built on first use.
    pub fn from_names(names: Vec<Box<str>>) -> Self {
        Interner { names, ..Default::default() }
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
    /// [`id`](Self::id), first checking the last answer given for `slot` (0..4).
    pub fn id_in(&mut self, slot: usize, s: &str) -> u32 {
        let last = self.recent[slot];
        if self.names.get(last as usize).is_some_and(|n| &**n == s) {
            return last;
        }
        let i = self.id(s);
        self.recent[slot] = i;
        i
    }
    pub fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }
    /// Rebuilds the lookup index after deserializing.
    pub fn reindex(&mut self) {
        self.index = self.names.iter().enumerate().map(|(i, n)| (n.clone(), i as u32)).collect();
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CSession {
    pub id: u32,
    pub project: u32,
    pub title: u32,
    pub created: i64,
    /// The session a sub-agent session was started from, or [`NO_PARENT`].
    #[serde(default = "no_parent")]
    pub parent: u32,
}

pub const NO_PARENT: u32 = u32::MAX;

fn no_parent() -> u32 {
    NO_PARENT
}

pub const ASSISTANT: u8 = 1;
pub const FORK_COPY: u8 = 2;

#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
        Tokens::from_packed(self.tokens)
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
            parent: s.parent_id.as_deref().map_or(NO_PARENT, |p| n.id(p)),
        };
        self.cat.sessions.push(cs);
    }

    fn message(&mut self, id: &str, session: &str, row_created: i64, m: &RawMessage<'_>, _origin: &'static str) {
        if let Some(w) = m.out_of_range(id) {
            self.cat.report.warnings.push(w);
        }
        self.cat.messages.push(super::index::compact(&mut self.cat.names, session, row_created, m));
        self.cat.ids.push(xxhash_rust::xxh3::xxh3_64(id.as_bytes()));
    }
}

/// Messages of one rowid range, written into its own stretch of the catalog's arrays (sized
/// by the range, so nothing grows or is copied), with names interned on its own.
struct RangeBuilder<'a> {
    names: &'a mut Interner,
    messages: &'a mut [CMessage],
    ids: &'a mut [u64],
    filled: usize,
    warnings: Vec<String>,
}

impl Visitor for RangeBuilder<'_> {
    fn session(&mut self, _s: SessionInfo) {}

    fn message(&mut self, id: &str, session: &str, row_created: i64, m: &RawMessage<'_>, _origin: &'static str) {
        if let Some(w) = m.out_of_range(id) {
            self.warnings.push(w);
        }
        // A range holds at most its length of rows.
        if self.filled < self.messages.len() {
            self.messages[self.filled] = super::index::compact(self.names, session, row_created, m);
            self.ids[self.filled] = xxhash_rust::xxh3::xxh3_64(id.as_bytes());
            self.filled += 1;
        }
    }
}

impl Catalog {
    /// Reads everything at `loc` and marks fork copies. A single database's messages are read
    /// in as many rowid ranges as there are cores, at once.
    pub fn load(loc: &Location) -> Catalog {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let mut cat = match super::store::split_messages(loc, cores) {
            Some(ranges) => Catalog::load_split(loc, &ranges),
            None => Catalog::load_serial(loc),
        };
        cat.mark_fork_copies();
        cat
    }

    pub(super) fn load_split(loc: &Location, ranges: &[RowRange]) -> Catalog {
        let mut cat = Catalog::default();
        cat.names.id("");
        let mut b = Builder { cat };
        let mut report = super::store::read_sessions(loc, &mut b);
        let mut cat = b.cat;
        // Unreadable already: the ranges would only say so again.
        if !report.unreadable.is_empty() {
            cat.report = report;
            return cat;
        }
        let total: usize = ranges.iter().map(RowRange::len).sum();
        cat.messages = vec![CMessage::default(); total];
        cat.ids = vec![0; total];
        // Each range's stretch of the arrays; the first range interns into the catalog's names.
        let mut parts: Vec<(RowRange, &mut [CMessage], &mut [u64])> = Vec::new();
        let (mut msgs, mut ids) = (cat.messages.as_mut_slice(), cat.ids.as_mut_slice());
        for r in ranges {
            let (m, rest_m) = std::mem::take(&mut msgs).split_at_mut(r.len());
            let (i, rest_i) = std::mem::take(&mut ids).split_at_mut(r.len());
            parts.push((*r, m, i));
            (msgs, ids) = (rest_m, rest_i);
        }
        let db = &loc.dbs[0];
        let mut own_names: Vec<Interner> = ranges.iter().skip(1).map(|_| Interner::default()).collect();
        let results: Vec<(usize, Vec<String>, ReadReport)> = std::thread::scope(|s| {
            let mut names_of = std::iter::once(&mut cat.names).chain(own_names.iter_mut());
            let handles: Vec<_> = parts
                .into_iter()
                .map(|(range, messages, ids)| {
                    let names = names_of.next().expect("one interner per range");
                    s.spawn(move || {
                        let mut b = RangeBuilder { names, messages, ids, filled: 0, warnings: Vec::new() };
                        let report = super::store::read_message_range(db, range, &mut b);
                        (b.filled, b.warnings, report)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a range reader panicked")).collect()
        });
        // Names of the other ranges to the catalog's; the stretches closed up.
        let mut at = 0;
        let mut start = 0;
        for (k, (r, (filled, mut warnings, mut part))) in ranges.iter().zip(results).enumerate() {
            if k > 0 {
                let names = &own_names[k - 1];
                let map: Vec<u32> = names.names().iter().map(|n| cat.names.id(n)).collect();
                for m in &mut cat.messages[start..start + filled] {
                    for v in [&mut m.session, &mut m.provider, &mut m.model, &mut m.agent] {
                        *v = map[*v as usize];
                    }
                }
            }
            cat.messages.copy_within(start..start + filled, at);
            cat.ids.copy_within(start..start + filled, at);
            at += filled;
            start += r.len();
            report.messages += part.messages;
            report.warnings.append(&mut part.warnings);
            report.warnings.append(&mut warnings);
            report.unreadable.append(&mut part.unreadable);
        }
        cat.messages.truncate(at);
        cat.messages.shrink_to_fit();
        cat.ids.truncate(at);
        cat.ids.shrink_to_fit();
        cat.report = report;
        cat
    }

    pub(super) fn load_serial(loc: &Location) -> Catalog {
        let mut b = Builder { cat: Catalog::default() };
        b.cat.names.id("");
        // Size the arrays once: growing by doubling would hold twice the memory at the end.
        let hint: usize = loc
            .dbs
            .iter()
            .filter_map(|d| super::store::open_read_only(d).ok())
            .map(|c| c.query_row("SELECT count(*) FROM message", [], |r| r.get::<_, i64>(0)).unwrap_or(0) as usize)
            .sum();
        b.cat.messages.reserve_exact(hint);
        b.cat.ids.reserve_exact(hint);
        let mut report = read_all(loc, &mut b);
        let mut cat = b.cat;
        report.warnings.append(&mut cat.report.warnings);
        cat.report = report;
        cat
    }

    /// A fork copies its parent's messages under new ids with the same creation time, model,
    /// agent and tokens. Of each such set, the message in the earliest-created session is the
    /// original; the others are copies.
    pub fn mark_fork_copies(&mut self) {
        let created_of: FxHashMap<u32, i64> = self.sessions.iter().map(|s| (s.id, s.created)).collect();
        let key = |m: &CMessage| (m.created, m.provider, m.model, m.agent, m.tokens, m.flags & ASSISTANT);
        // Copies share their creation time: sort by it (cheap), then compare whole keys only
        // within runs of equal times, earliest-created session first.
        // (created - earliest) << 24 | index in one u64 when it fits (8 bytes a message instead
        // of 16), else (created, index) pairs.
        let n = self.messages.len();
        let min = self.messages.iter().map(|m| m.created).min().unwrap_or(0);
        let max = self.messages.iter().map(|m| m.created).max().unwrap_or(0);
        let packed = n < (1 << 24) && (max - min) < (1 << 39);
        let mut order: Vec<(i64, u32)> = Vec::new();
        let mut packed_order: Vec<u64> = Vec::new();
        if packed {
            packed_order =
                self.messages.iter().enumerate().map(|(i, m)| (((m.created - min) as u64) << 24) | i as u64).collect();
            packed_order.sort_unstable();
        } else {
            order = self.messages.iter().enumerate().map(|(i, m)| (m.created, i as u32)).collect();
            order.sort_unstable();
        }
        let at = |k: usize| -> (i64, u32) {
            if packed {
                let v = packed_order[k];
                ((v >> 24) as i64 + min, (v & 0xff_ffff) as u32)
            } else {
                order[k]
            }
        };
        let mut i = 0;
        while i < n {
            let mut j = i + 1;
            while j < n && at(j).0 == at(i).0 {
                j += 1;
            }
            if j - i > 1 {
                let mut run: Vec<(i64, u32)> = (i..j).map(at).collect();
                let session_created =
                    |m: &CMessage| (created_of.get(&m.session).copied().unwrap_or(i64::MAX), m.session);
                run.sort_by(|a, b| {
                    let (ma, mb) = (&self.messages[a.1 as usize], &self.messages[b.1 as usize]);
                    key(ma).cmp(&key(mb)).then_with(|| session_created(ma).cmp(&session_created(mb)))
                });
                let mut k = 0;
                while k < run.len() {
                    let first = self.messages[run[k].1 as usize];
                    let mut l = k + 1;
                    while l < run.len() && key(&self.messages[run[l].1 as usize]) == key(&first) {
                        let m = &mut self.messages[run[l].1 as usize];
                        if m.session != first.session {
                            m.flags |= FORK_COPY;
                        }
                        l += 1;
                    }
                    k = l;
                }
            }
            i = j;
        }
    }

    /// Re-checks fork copies among messages created at the given times (after a few changed):
    /// one pass over the messages, then only the matches are compared. Returns their positions.
    pub fn remark_forks_at(&mut self, times: &[i64]) -> Vec<u32> {
        if times.is_empty() {
            return Vec::new();
        }
        let times: FxHashSet<i64> = times.iter().copied().collect();
        let mut hits: Vec<u32> =
            (0..self.messages.len() as u32).filter(|&i| times.contains(&self.messages[i as usize].created)).collect();
        let created_of: FxHashMap<u32, i64> = self.sessions.iter().map(|s| (s.id, s.created)).collect();
        let key = |m: &CMessage| (m.created, m.provider, m.model, m.agent, m.tokens, m.flags & ASSISTANT);
        let rank = |m: &CMessage| (created_of.get(&m.session).copied().unwrap_or(i64::MAX), m.session);
        hits.sort_by(|&a, &b| {
            let (ma, mb) = (&self.messages[a as usize], &self.messages[b as usize]);
            key(ma).cmp(&key(mb)).then_with(|| rank(ma).cmp(&rank(mb)))
        });
        let mut k = 0;
        while k < hits.len() {
            let first = self.messages[hits[k] as usize];
            self.messages[hits[k] as usize].flags &= !FORK_COPY;
            let mut l = k + 1;
            while l < hits.len() && key(&self.messages[hits[l] as usize]) == key(&first) {
                let m = &mut self.messages[hits[l] as usize];
                m.flags = if m.session != first.session { m.flags | FORK_COPY } else { m.flags & !FORK_COPY };
                l += 1;
            }
            k = l;
        }
        hits
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
        prices: &Prices,
    ) -> (Vec<(String, Usage)>, Usage, Usage) {
        /// A group's sums; `last` skips the set for runs of one session's messages.
        #[derive(Default)]
        struct Acc {
            usage: Usage,
            sessions: FxHashSet<u32>,
            last: Option<u32>,
        }
        impl Acc {
            fn add(&mut self, m: &CMessage, cost: MessageCost) {
                self.usage.add_message(&m.tokens(), cost, m.flags & ASSISTANT != 0);
                if self.last != Some(m.session) {
                    self.sessions.insert(m.session);
                    self.last = Some(m.session);
                }
            }
            fn finish(mut self) -> Usage {
                self.usage.sessions = self.sessions.len() as u64;
                self.usage
            }
        }
        let project_of: FxHashMap<u32, u32> = self.sessions.iter().map(|s| (s.id, s.project)).collect();
        let mut groups: FxHashMap<u64, Acc> = FxHashMap::default();
        let mut days = LocalDays::default();
        let (mut totals, mut forks) = (Acc::default(), Acc::default());
        // Prices by (provider, model), looked up once each.
        let mut price_of: FxHashMap<(u32, u32), Option<Price>> = FxHashMap::default();
        for m in &self.messages {
            if !window.contains(m.created) {
                continue;
            }
            let cost = price_with(m.cost, &m.tokens(), || {
                *price_of
                    .entry((m.provider, m.model))
                    .or_insert_with(|| prices.find(self.names.name(m.provider), self.names.name(m.model)))
            });
            if m.flags & FORK_COPY != 0 && !include_fork_copies {
                forks.add(m, cost);
                continue;
            }
            totals.add(m, cost);
            let key = match group {
                GroupBy::All => 0,
                GroupBy::Session => u64::from(m.session),
                GroupBy::Project => u64::from(project_of.get(&m.session).copied().unwrap_or(u32::MAX)),
                GroupBy::Model => (u64::from(m.provider) << 32) | u64::from(m.model),
                GroupBy::Agent => u64::from(m.agent),
                GroupBy::Day => days.day(m.created).map_or(0, |d| d as u64),
            };
            groups.entry(key).or_default().add(m, cost);
        }
        let mut rows: Vec<(String, Usage)> =
            groups.into_iter().map(|(k, acc)| (self.key_name(group, k), acc.finish())).collect();
        rows.sort_by(|a, b| b.1.total.cmp(&a.1.total).then_with(|| a.0.cmp(&b.0)));
        if group == GroupBy::Day {
            rows.sort_by(|a, b| b.0.cmp(&a.0));
        }
        (rows, totals.finish(), forks.finish())
    }

    fn key_name(&self, group: GroupBy, key: u64) -> String {
        let n = |i: u32| {
            if i == u32::MAX { "(unknown)" } else { self.names.name(i) }
        };
        let (high, low) = ((key >> 32) as u32, key as u32);
        match group {
            GroupBy::All => "all".into(),
            GroupBy::Day => {
                chrono::NaiveDate::from_num_days_from_ce_opt(key as i32).map_or("unknown".into(), |d| d.to_string())
            }
            GroupBy::Model => model_name(n(high), n(low)),
            _ if n(low).is_empty() => "unknown".into(),
            _ => n(low).into(),
        }
    }

    /// Session id -> title, for labelling rows.
    pub fn titles(&self) -> FxHashMap<&str, &str> {
        self.sessions.iter().map(|s| (self.names.name(s.id), self.names.name(s.title))).collect()
    }

    /// Each sub-agent session's parent, by id.
    pub fn parents(&self) -> FxHashMap<&str, &str> {
        self.sessions
            .iter()
            .filter(|s| s.parent != NO_PARENT)
            .map(|s| (self.names.name(s.id), self.names.name(s.parent)))
            .collect()
    }

    /// The first and last message time (milliseconds) of each session in `window`.
    pub fn spans(&self, window: Window) -> FxHashMap<&str, (i64, i64)> {
        let mut by_id: FxHashMap<u32, (i64, i64)> = FxHashMap::default();
        for m in self.messages.iter().filter(|m| window.contains(m.created)) {
            let e = by_id.entry(m.session).or_insert((m.created, m.created));
            e.0 = e.0.min(m.created);
            e.1 = e.1.max(m.created);
        }
        by_id.into_iter().map(|(id, span)| (self.names.name(id), span)).collect()
    }
}
