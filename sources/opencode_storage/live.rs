//! Following OpenCode's storage live: the `event` change feed of each database, and changed
//! files of the legacy JSON storage.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::catalog::{ASSISTANT, Catalog, FORK_COPY};
use super::store::{self, Location, RawMessage, RawPart, has_table, open_read_only};
use crate::checkpoint::CheckpointFile;
use crate::component::{Context, Output};
use crate::event::{BatchTracker, Event, MessageInfo, Payload, SessionInfo, Tokens};

/// Rows read per database per round, so one huge burst cannot starve shutdown.
const ROUND: i64 = 5000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DbPos {
    pub path: PathBuf,
    /// Highest `event` rowid delivered.
    pub event: i64,
}

/// The checkpoint: how far each database's change feed, and the JSON storage, were delivered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Marks {
    pub dbs: Vec<DbPos>,
    /// Files of the JSON storage modified after this (ms since the epoch) are new.
    pub json_ms: i64,
}

impl Marks {
    pub fn now(loc: &Location) -> Marks {
        let dbs = loc
            .dbs
            .iter()
            .map(|p| {
                let event = open_read_only(p)
                    .ok()
                    .filter(|c| has_table(c, "event"))
                    .and_then(|c| c.query_row("SELECT coalesce(max(rowid), 0) FROM event", [], |r| r.get(0)).ok())
                    .unwrap_or(0);
                DbPos { path: p.clone(), event }
            })
            .collect();
        Marks { dbs, json_ms: chrono::Utc::now().timestamp_millis() }
    }

    fn event_mark(&self, path: &PathBuf) -> i64 {
        self.dbs.iter().find(|d| &d.path == path).map_or(0, |d| d.event)
    }
}

/// Recognises fork copies among live messages: the key of every original message, with its
/// session. A message whose key belongs to another session is a copy.
#[derive(Default)]
pub struct ForkKeys {
    keys: HashMap<u64, u64>,
}

fn fork_key(created: i64, provider: &str, model: &str, agent: &str, t: [u32; 5], assistant: bool) -> u64 {
    let mut buf = Vec::with_capacity(96);
    buf.extend_from_slice(&created.to_le_bytes());
    for s in [provider, model, agent] {
        buf.extend_from_slice(s.as_bytes());
        buf.push(0);
    }
    for v in t {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    buf.push(u8::from(assistant));
    xxhash_rust::xxh3::xxh3_64(&buf)
}

fn sat(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

fn token_array(t: &Tokens) -> [u32; 5] {
    [sat(t.input), sat(t.output), sat(t.reasoning), sat(t.cache_read), sat(t.cache_write)]
}

impl ForkKeys {
    pub fn from_catalog(cat: &Catalog) -> ForkKeys {
        let n = |i: u32| cat.names.name(i);
        let keys = cat
            .messages
            .iter()
            .filter(|m| m.flags & FORK_COPY == 0)
            .map(|m| {
                let k = fork_key(m.created, n(m.provider), n(m.model), n(m.agent), m.tokens, m.flags & ASSISTANT != 0);
                (k, xxhash_rust::xxh3::xxh3_64(n(m.session).as_bytes()))
            })
            .collect();
        ForkKeys { keys }
    }

    /// Whether `m` copies a message of another session; remembers it otherwise. Messages still
    /// in progress (no tokens yet) are not judged.
    pub fn is_copy(&mut self, m: &MessageInfo) -> bool {
        if m.role == "assistant" && m.tokens.total() == 0 && m.time_completed.is_none() {
            return false;
        }
        let k = fork_key(
            m.time_created,
            m.provider_id.as_deref().unwrap_or(""),
            m.model_id.as_deref().unwrap_or(""),
            m.agent.as_deref().unwrap_or(""),
            token_array(&m.tokens),
            m.role == "assistant",
        );
        let session = xxhash_rust::xxh3::xxh3_64(m.session_id.as_bytes());
        match self.keys.get(&k) {
            Some(&s) => s != session,
            None => {
                self.keys.insert(k, session);
                false
            }
        }
    }
}

pub fn message_event(cx: &Context, info: MessageInfo) -> Event {
    let ts =
        chrono::DateTime::from_timestamp_millis(info.time_completed.unwrap_or(info.time_created)).unwrap_or_default();
    let id = format!("opencode.message:{}", info.id);
    Event::new(cx.id.clone(), ts, Payload::Message(Box::new(info))).with_id(id)
}

fn session_event(cx: &Context, s: SessionInfo) -> Event {
    let ts = chrono::DateTime::from_timestamp_millis(s.time_updated).unwrap_or_default();
    let id = format!("opencode.session:{}", s.id);
    Event::new(cx.id.clone(), ts, Payload::Session(Box::new(s))).with_id(id)
}

#[derive(Deserialize)]
struct FeedSession {
    info: store::RawSession,
}

#[derive(Deserialize)]
struct FeedMessage<'a> {
    #[serde(borrow)]
    info: RawMessage<'a>,
}

#[derive(Deserialize)]
struct FeedPart<'a> {
    #[serde(borrow)]
    part: RawPart<'a>,
}

pub struct Follower {
    loc: Location,
    /// The data directory to look in again for new databases (unless one was named).
    rediscover: Option<PathBuf>,
    parts: bool,
    marks: Marks,
    tracker: BatchTracker<Marks>,
    keys: ForkKeys,
    conns: HashMap<PathBuf, Connection>,
}

impl Follower {
    /// `fixed_db`: the database was named explicitly, so no other is looked for.
    pub fn new(loc: Location, fixed_db: bool, parts: bool, resume: Option<Marks>) -> Self {
        Follower {
            rediscover: (!fixed_db).then(|| loc.data_dir.clone()),
            loc,
            parts,
            marks: resume.unwrap_or_default(),
            tracker: BatchTracker::default(),
            keys: ForkKeys::default(),
            conns: HashMap::new(),
        }
    }

    pub fn set_marks(&mut self, m: Marks) {
        self.marks = m;
    }
    pub fn set_fork_keys(&mut self, k: ForkKeys) {
        self.keys = k;
    }
    pub fn tracker(&mut self) -> &mut BatchTracker<Marks> {
        &mut self.tracker
    }

    fn watch(&self, wake: mpsc::Sender<()>) -> Vec<notify::RecommendedWatcher> {
        use notify::Watcher;
        let mut out = Vec::new();
        let mut targets = vec![(self.loc.data_dir.clone(), notify::RecursiveMode::NonRecursive)];
        for db in &self.loc.dbs {
            if let Some(dir) = db.parent().filter(|d| *d != self.loc.data_dir) {
                targets.push((dir.to_path_buf(), notify::RecursiveMode::NonRecursive));
            }
        }
        if let Some(s) = &self.loc.storage {
            targets.push((s.clone(), notify::RecursiveMode::Recursive));
        }
        for (dir, mode) in targets {
            let wake = wake.clone();
            let Ok(mut w) = notify::recommended_watcher(move |_res| {
                let _ = wake.try_send(());
            }) else {
                continue;
            };
            if w.watch(&dir, mode).is_ok() {
                out.push(w);
            }
        }
        out
    }

    /// Follows changes until shutdown, then waits for what was sent to be delivered and saves
    /// the checkpoint.
    pub async fn run(
        &mut self,
        cx: &Context,
        out: &mut Output,
        shutdown: &CancellationToken,
        poll: Duration,
        checkpoint: &CheckpointFile,
    ) -> anyhow::Result<()> {
        let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
        let _watchers = self.watch(wake_tx);
        loop {
            let more = self.round(cx, out).await;
            if let Some(m) = self.tracker.committed()
                && let Err(e) = checkpoint.store(&m)
            {
                cx.error(format_args!("writing checkpoint {}: {e}", checkpoint.path().display()));
            }
            if shutdown.is_cancelled() {
                break;
            }
            if more {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake_rx.recv() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
        Ok(())
    }

    /// Waits until everything sent has been delivered (or failed), saving the checkpoint.
    pub async fn settle(&mut self, cx: &Context, checkpoint: &CheckpointFile) {
        let mut last = None;
        while self.tracker.in_flight() {
            if let Some(m) = self.tracker.committed() {
                last = Some(m);
                continue;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            if !self.tracker.in_flight() {
                break;
            }
            // A failed batch never commits: stop waiting once nothing is pending anymore.
            if self.tracker.stuck() {
                tracing::warn!(
                    component = &*cx.id,
                    "some changes were not delivered; they will be read again on restart"
                );
                break;
            }
        }
        if let Some(m) = last.or_else(|| self.tracker.committed())
            && let Err(e) = checkpoint.store(&m)
        {
            cx.error(format_args!("writing checkpoint {}: {e}", checkpoint.path().display()));
        }
    }

    /// Reads one round of changes; returns whether more are waiting.
    async fn round(&mut self, cx: &Context, out: &mut Output) -> bool {
        // Databases (or a JSON storage) that appeared since the start are followed from their
        // first change.
        if let Some(data_dir) = &self.rediscover {
            let found = Location::find(Some(data_dir), None);
            if found.dbs != self.loc.dbs || found.storage != self.loc.storage {
                tracing::info!(component = &*cx.id, "now reading {:?}", found.dbs);
                self.loc = found;
            }
        }
        let mut events = Vec::new();
        let mut next = self.marks.clone();
        let mut more = false;
        for db in self.loc.dbs.clone() {
            match self.read_feed(cx, &db, &mut next, &mut events) {
                Ok(m) => more |= m,
                Err(e) => {
                    self.conns.remove(&db);
                    tracing::debug!(component = &*cx.id, "reading {}: {e}", db.display());
                }
            }
        }
        if let Some(storage) = self.loc.storage.clone() {
            let since = self.marks.json_ms;
            let started = chrono::Utc::now().timestamp_millis();
            let mut v = JsonChanges { cx: cx.clone(), events: &mut events, keys: &mut self.keys, parts: self.parts };
            store::read_json_changed(&storage, since, &mut v);
            next.json_ms = started;
        }
        if next == self.marks {
            return more;
        }
        let batch = self.tracker.batch(next.clone());
        for ev in events {
            out.send(ev.with_finalizer(batch.finalizer())).await;
        }
        self.marks = next;
        more
    }

    fn read_feed(
        &mut self,
        cx: &Context,
        db: &PathBuf,
        next: &mut Marks,
        events: &mut Vec<Event>,
    ) -> rusqlite::Result<bool> {
        if !self.conns.contains_key(db) {
            if !db.exists() {
                return Ok(false);
            }
            let conn = open_read_only(db)?;
            if !has_table(&conn, "event") {
                return Ok(false);
            }
            self.conns.insert(db.clone(), conn);
        }
        let conn = &self.conns[db];
        let from = self.marks.event_mark(db);
        let mut st =
            conn.prepare_cached("SELECT rowid, type, data FROM event WHERE rowid > ?1 ORDER BY rowid LIMIT ?2")?;
        let mut rows = st.query(rusqlite::params![from, ROUND])?;
        let mut last = from;
        let mut n = 0;
        let mut project_cache: HashMap<String, Option<String>> = HashMap::new();
        while let Some(r) = rows.next()? {
            n += 1;
            last = r.get(0)?;
            let ty = r.get_ref(1)?.as_str()?;
            let data = r.get_ref(2)?.as_bytes()?;
            if ty.starts_with("message.updated") {
                match serde_json::from_slice::<FeedMessage<'_>>(data) {
                    Ok(f) => {
                        let id = f.info.id.as_deref().unwrap_or("").to_string();
                        let session = f.info.session_id.as_deref().unwrap_or("").to_string();
                        let mut info = f.info.to_info(&id, &session, 0, "event");
                        info.fork_copy = self.keys.is_copy(&info);
                        events.push(message_event(cx, info));
                    }
                    Err(e) => {
                        cx.error(format_args!("{}: event row {last} ({ty}) is not valid: {e}; skipped", db.display()))
                    }
                }
            } else if ty.starts_with("session.created") || ty.starts_with("session.updated") {
                match serde_json::from_slice::<FeedSession>(data) {
                    Ok(f) => {
                        let s = f.info;
                        let project = (s.project_id() != "global")
                            .then(|| {
                                project_cache
                                    .entry(s.project_id().to_string())
                                    .or_insert_with(|| {
                                        conn.query_row(
                                            "SELECT worktree FROM project WHERE id = ?1",
                                            [s.project_id()],
                                            |r| r.get(0),
                                        )
                                        .ok()
                                    })
                                    .clone()
                            })
                            .flatten();
                        events.push(session_event(cx, s.into_info(project, "event")));
                    }
                    Err(e) => {
                        cx.error(format_args!("{}: event row {last} ({ty}) is not valid: {e}; skipped", db.display()))
                    }
                }
            } else if self.parts
                && ty.starts_with("message.part.updated")
                && let Ok(f) = serde_json::from_slice::<FeedPart<'_>>(data)
                && let Some(p) = f.part.to_info("", "", "")
            {
                let id = format!("opencode.part:{}", p.id);
                events.push(Event::new(cx.id.clone(), chrono::Utc::now(), Payload::Part(Box::new(p))).with_id(id));
            }
        }
        match next.dbs.iter_mut().find(|d| &d.path == db) {
            Some(d) => d.event = last,
            None => next.dbs.push(DbPos { path: db.clone(), event: last }),
        }
        Ok(n == ROUND)
    }
}

struct JsonChanges<'a> {
    cx: Context,
    events: &'a mut Vec<Event>,
    keys: &'a mut ForkKeys,
    parts: bool,
}

impl store::Visitor for JsonChanges<'_> {
    fn session(&mut self, s: SessionInfo) {
        self.events.push(session_event(&self.cx, s));
    }
    fn message(&mut self, id: &str, session: &str, row_created: i64, m: &RawMessage<'_>, _origin: &'static str) {
        let mut info = m.to_info(id, session, row_created, "json");
        info.fork_copy = self.keys.is_copy(&info);
        self.events.push(message_event(&self.cx, info));
    }
    fn part(&mut self, p: crate::event::PartInfo) {
        let id = format!("opencode.part:{}", p.id);
        self.events.push(Event::new(self.cx.id.clone(), chrono::Utc::now(), Payload::Part(Box::new(p))).with_id(id));
    }
    fn wants_parts(&self) -> bool {
        self.parts
    }
}

/// Files changed after `since` (ms since the epoch).
pub fn modified_after(path: &std::path::Path, since: i64) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .is_some_and(|d| d.as_millis() as i64 > since - 1000)
}
