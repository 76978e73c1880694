//! Following OpenCode's storage live: each database through its feed (`feed.rs`), and the
//! changed files of the legacy JSON storage. The reading runs on a blocking thread; the async
//! side waits on file notifications (`crate::watch`) and a slow poll, and sends what was read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::catalog::{ASSISTANT, Catalog, FORK_COPY};
use super::feed::{Feed, RowMarks};
use super::store::{self, JsonSelect, Location, RawMessage};
use crate::checkpoint::CheckpointFile;
use crate::component::{Context, Output};
use crate::event::{BatchTracker, Event, MessageInfo, Payload, SessionInfo};
use crate::watch::{Changes, Watch};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DbPos {
    pub path: PathBuf,
    /// Highest `event` rowid delivered.
    pub event: i64,
    /// Where the row feed is (databases without a written `event` table).
    #[serde(default)]
    pub rows: Option<RowMarks>,
}

/// The checkpoint: how far each database's change feed, and the JSON storage, were delivered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Marks {
    pub dbs: Vec<DbPos>,
    /// Files of the JSON storage modified after this (ms since the epoch) are new.
    pub json_ms: i64,
    /// What was sent in the last seconds before this mark (id hash, content hash): the first
    /// rounds after a restart read those again (slack windows, in-progress rows) and must know
    /// they went out.
    #[serde(default)]
    pub recent: Vec<(u64, u64)>,
}

impl Marks {
    pub fn now(loc: &Location) -> Marks {
        Marks {
            dbs: loc.dbs.iter().map(|p| DbPos::now(p)).collect(),
            json_ms: chrono::Utc::now().timestamp_millis(),
            recent: Vec::new(),
        }
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
            m.tokens.packed(),
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

pub struct Follower {
    /// The blocking half; lent to a blocking thread for each round.
    reader: Option<Reader>,
    tracker: BatchTracker<Marks>,
}

/// Reads one round of changes from every database and the JSON storage (blocking).
struct Reader {
    cx: Context,
    loc: Location,
    /// The data directory to look in again for new databases (unless one was named).
    rediscover: Option<PathBuf>,
    parts: bool,
    marks: Marks,
    keys: ForkKeys,
    feeds: HashMap<PathBuf, Feed>,
    /// The last error of each database that fails (logged once until it changes).
    failing: HashMap<PathBuf, String>,
    sent: Sent,
}

/// What each record looked like when it was last sent, so a change is sent once however often
/// it is read again (rescans, in-progress rows, files rewritten with the same content).
#[derive(Default)]
pub struct Sent {
    last: HashMap<u64, u64>,
    /// The sends of the last [`RECENT`], oldest first.
    recent: std::collections::VecDeque<(std::time::Instant, u64, u64)>,
}

/// How far back sends are kept in the checkpoint (longer than any re-read window).
const RECENT: Duration = Duration::from_secs(10);

/// How often the JSON storage is walked even though notifications cover it (a safety net for
/// a notification the kernel could not give).
const FULL_LOOK_EVERY: Duration = Duration::from_secs(60);

/// After a notification, the rounds that look again for a commit not yet visible (ms apart).
const RECHECKS: [u64; 5] = [5, 10, 20, 40, 80];

/// Records remembered before [`Sent`] starts over (about 32 bytes each).
const SENT_MAX: usize = 200_000;

impl Sent {
    /// Forgets what was recorded for `ev`'s id (it was not sent after all).
    fn forget(&mut self, ev: &Event) {
        if let Some(id) = ev.meta.id.as_deref() {
            let k = xxhash_rust::xxh3::xxh3_64(id.as_bytes());
            self.last.remove(&k);
            self.recent.retain(|(_, rk, _)| *rk != k);
        }
    }

    /// Seeds what a checkpoint says was sent last.
    fn resume(&mut self, recent: &[(u64, u64)]) {
        let now = std::time::Instant::now();
        for &(k, v) in recent {
            self.last.insert(k, v);
            self.recent.push_back((now, k, v));
        }
    }

    /// The sends of the last seconds, for the checkpoint.
    fn recent(&mut self) -> Vec<(u64, u64)> {
        while self.recent.front().is_some_and(|(at, _, _)| at.elapsed() > RECENT) {
            self.recent.pop_front();
        }
        self.recent.iter().map(|(_, k, v)| (*k, *v)).collect()
    }

    /// Whether `ev` differs from what was last sent under its id (and remembers it).
    pub fn is_new(&mut self, ev: &Event) -> bool {
        let Some(id) = ev.meta.id.as_deref() else {
            return true;
        };
        let mut body = Vec::new();
        ev.write_json(&mut body);
        let (k, v) = (xxhash_rust::xxh3::xxh3_64(id.as_bytes()), xxhash_rust::xxh3::xxh3_64(&body));
        if self.last.get(&k) == Some(&v) {
            return false;
        }
        if self.last.len() >= SENT_MAX {
            self.last.clear();
        }
        self.last.insert(k, v);
        self.recent.push_back((std::time::Instant::now(), k, v));
        true
    }
}

/// One round's result.
struct Round {
    events: Vec<Event>,
    next: Marks,
    more: bool,
}

impl Follower {
    /// `fixed_db`: the database was named explicitly, so no other is looked for.
    pub fn new(cx: &Context, loc: Location, fixed_db: bool, parts: bool, resume: Option<Marks>) -> Self {
        Follower {
            reader: Some(Reader {
                cx: cx.clone(),
                rediscover: (!fixed_db).then(|| loc.data_dir.clone()),
                loc,
                parts,
                sent: {
                    let mut sent = Sent::default();
                    sent.resume(resume.as_ref().map_or(&[][..], |m| &m.recent));
                    sent
                },
                marks: resume.unwrap_or_default(),
                keys: ForkKeys::default(),
                feeds: HashMap::new(),
                failing: HashMap::new(),
            }),
            tracker: BatchTracker::default(),
        }
    }

    fn reader(&mut self) -> &mut Reader {
        self.reader.as_mut().expect("the reader is back after each round")
    }
    pub fn set_marks(&mut self, m: Marks) {
        self.reader().marks = m;
    }
    pub fn set_fork_keys(&mut self, k: ForkKeys) {
        self.reader().keys = k;
    }
    /// What the backfill sent, so the first rounds do not send it again.
    pub fn set_sent(&mut self, s: Sent) {
        self.reader().sent = s;
    }
    pub fn tracker(&mut self) -> &mut BatchTracker<Marks> {
        &mut self.tracker
    }

    /// Watches the data directory (databases and their `-wal`), the databases' own folders and
    /// the JSON storage; any of them may appear later.
    fn watch(&mut self) -> Watch {
        use notify::RecursiveMode::{NonRecursive, Recursive};
        let r = self.reader();
        let data_dir = r.loc.data_dir.clone();
        let mut targets = vec![(data_dir.clone(), NonRecursive), (data_dir.join("storage"), Recursive)];
        for db in &r.loc.dbs {
            if let Some(dir) = db.parent().filter(|d| *d != data_dir) {
                targets.push((dir.to_path_buf(), NonRecursive));
            }
        }
        let storage = data_dir.join("storage");
        // The databases followed (whatever their names) and their `-wal`, new `opencode*.db`
        // files, and the JSON storage.
        let dbs: Vec<PathBuf> = r.loc.dbs.clone();
        let filter = Arc::new(move |p: &Path| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let db = name.strip_suffix("-wal").map_or(p.to_path_buf(), |n| p.with_file_name(n));
            p.starts_with(&storage)
                || dbs.contains(&db)
                || (name.starts_with("opencode") && (name.ends_with(".db") || name.ends_with(".db-wal")))
        });
        Watch::new(&r.cx.id, targets, filter)
    }

    /// Follows changes until shutdown.
    pub async fn run(
        &mut self,
        cx: &Context,
        out: &mut Output,
        shutdown: &CancellationToken,
        poll: Duration,
        checkpoint: &CheckpointFile,
    ) -> anyhow::Result<()> {
        let mut watch = self.watch();
        // The first round looks at everything.
        let mut changes = Changes { rescan: true, ..Default::default() };
        let mut last_walk = std::time::Instant::now();
        let mut rechecks = RECHECKS.len();
        loop {
            let storage_watched = watch.is_live();
            let mut reader = self.reader.take().expect("reader");
            let (reader, round) = tokio::task::spawn_blocking(move || {
                let round = reader.round(changes, storage_watched);
                (reader, round)
            })
            .await?;
            self.reader = Some(reader);
            let Round { events, next, more } = round;
            // Sent even when no mark moved: a session re-read within its slack is news too.
            if next != self.reader().marks || !events.is_empty() {
                let batch = self.tracker.batch(next.clone());
                for ev in events {
                    out.send(ev.with_finalizer(batch.finalizer())).await;
                }
                self.reader().marks = next;
            }
            if let Some(m) = self.tracker.committed()
                && let Err(e) = checkpoint.store_async(m).await
            {
                cx.error(format_args!("writing checkpoint {}: {e}", checkpoint.path().display()));
            }
            if shutdown.is_cancelled() {
                break;
            }
            if !more {
                // Read what there was, watching for more.
                cx.metrics.set_caught_up();
                // A writer's last notification comes with its last write, a moment before the
                // commit is visible (SQLite then updates its `-shm` through a memory map, which
                // notifies nobody): look again a few times shortly after, then only on the poll.
                let wait = RECHECKS.get(rechecks).copied().map_or(poll, Duration::from_millis).min(poll);
                let woke = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = watch.changed() => true,
                    _ = tokio::time::sleep(wait) => false,
                };
                rechecks = if woke { 0 } else { (rechecks + 1).min(RECHECKS.len()) };
            }
            changes = watch.take();
            // Now and then everything is looked at, notified or not.
            if last_walk.elapsed() >= FULL_LOOK_EVERY {
                changes.rescan = true;
            }
            if changes.rescan {
                last_walk = std::time::Instant::now();
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
            && let Err(e) = checkpoint.store_async(m).await
        {
            cx.error(format_args!("writing checkpoint {}: {e}", checkpoint.path().display()));
        }
    }
}

impl Reader {
    /// Reads one round of changes. `storage_watched`: file notifications cover the JSON
    /// storage, so only the files they named need reading (else the storage is walked).
    fn round(&mut self, changes: Changes, storage_watched: bool) -> Round {
        // Databases (or a JSON storage) that appeared since the start are followed from their
        // first change.
        if let Some(data_dir) = &self.rediscover {
            let found = Location::find(Some(data_dir), None);
            if found.dbs != self.loc.dbs || found.storage != self.loc.storage {
                tracing::info!(component = &*self.cx.id, "now reading {:?}", found.dbs);
                self.loc = found;
            }
        }
        let mut out = Collect {
            cx: self.cx.clone(),
            events: Vec::new(),
            keys: &mut self.keys,
            parts: self.parts,
            sent: &mut self.sent,
        };
        let mut next = self.marks.clone();
        let mut more = false;
        for db in &self.loc.dbs {
            if !self.feeds.contains_key(db) {
                if !db.exists() {
                    continue;
                }
                match Feed::open(db) {
                    Ok((feed, how)) => {
                        tracing::info!(component = &*self.cx.id, "following {} by {how}", db.display());
                        self.feeds.insert(db.clone(), feed);
                    }
                    Err(e) => {
                        tracing::debug!(component = &*self.cx.id, "opening {}: {e}", db.display());
                        continue;
                    }
                }
            }
            let pos = match next.dbs.iter_mut().position(|d| &d.path == db) {
                Some(i) => &mut next.dbs[i],
                None => {
                    next.dbs.push(DbPos { path: db.clone(), ..Default::default() });
                    next.dbs.last_mut().expect("just pushed")
                }
            };
            let feed = self.feeds.get_mut(db).expect("opened above");
            let before = pos.clone();
            let collected = out.events.len();
            match feed.read(db, pos, &mut out) {
                Ok(m) => {
                    more |= m;
                    self.failing.remove(db);
                }
                Err(e) => {
                    // Nothing of a failed round counts: it is read again, and sent then.
                    *pos = before;
                    for ev in out.events.drain(collected..) {
                        out.sent.forget(&ev);
                    }
                    self.feeds.remove(db);
                    let e = e.to_string();
                    if self.failing.insert(db.clone(), e.clone()).as_ref() != Some(&e) {
                        self.cx.error(format_args!("reading {}: {e}; trying again", db.display()));
                    }
                }
            }
        }
        if let Some(storage) = self.loc.storage.clone() {
            let started = chrono::Utc::now().timestamp_millis();
            let select = if changes.rescan || !storage_watched {
                Some(JsonSelect::ModifiedAfter(self.marks.json_ms))
            } else if changes.paths.iter().any(|p| p.starts_with(&storage)) {
                Some(JsonSelect::Paths(&changes.paths))
            } else {
                None
            };
            if let Some(select) = select {
                // Files made in a new folder before its watch was set are named by no
                // notification: the folder's own is, and `Paths` reads all it holds.
                store::read_json_changed(&storage, select, &mut out);
            }
            // Read up to now: with notifications live, a round that read nothing has nothing
            // before `started` left to read either (a restart then reads only what came after).
            next.json_ms = started;
        }
        let events = out.events;
        next.recent = self.sent.recent();
        Round { events, next, more }
    }
}

/// Gathers one round's events: fork copies flagged, repeats dropped.
struct Collect<'a> {
    cx: Context,
    events: Vec<Event>,
    keys: &'a mut ForkKeys,
    parts: bool,
    sent: &'a mut Sent,
}

impl Collect<'_> {
    fn push(&mut self, ev: Event) {
        if self.sent.is_new(&ev) {
            self.events.push(ev);
        }
    }
}

impl store::Visitor for Collect<'_> {
    fn session(&mut self, s: SessionInfo) {
        let ev = session_event(&self.cx, s);
        self.push(ev);
    }
    fn message(&mut self, id: &str, session: &str, row_created: i64, m: &RawMessage<'_>, origin: &'static str) {
        let mut info = m.to_info(id, session, row_created, origin);
        if let Some(w) = m.out_of_range(&info.id) {
            self.cx.error(format_args!("{w}"));
        }
        info.fork_copy = self.keys.is_copy(&info);
        let ev = message_event(&self.cx, info);
        self.push(ev);
    }
    fn part(&mut self, p: crate::event::PartInfo) {
        let id = format!("opencode.part:{}", p.id);
        let ev = Event::new(self.cx.id.clone(), chrono::Utc::now(), Payload::Part(Box::new(p))).with_id(id);
        self.push(ev);
    }
    fn error(&mut self, what: String) {
        self.cx.error(format_args!("{what}"));
    }
    fn wants_parts(&self) -> bool {
        self.parts
    }
}

/// How long before a mark a file's modification time still counts as after it (modification
/// times can trail the clock by a tick).
const MTIME_SLACK_MS: i64 = 100;

/// Files changed after `since` (ms since the epoch).
pub fn modified_after(path: &std::path::Path, since: i64) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .is_some_and(|d| d.as_millis() as i64 > since - MTIME_SLACK_MS)
}
