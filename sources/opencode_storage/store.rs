//! Reading everything OpenCode has stored, in every generation, without disturbing it.
//!
//! - SQLite `opencode.db` (and channel databases `opencode-*.db`): `session`, `project`,
//!   `message`, `part`, and the newer `session_message` rows when the table exists;
//! - legacy JSON files under `storage/` (`session/<project>/<id>.json`, `message/<session>/…`,
//!   `part/<message>/…`, `project/<id>.json`).
//!
//! The same message seen twice (JSON and SQLite, v1 and v2 tables) counts once: the first
//! reading wins, in that order. Databases are opened read-only and each query is its own short
//! transaction, so OpenCode can keep writing (WAL).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use rustc_hash::FxHashSet;
use serde::Deserialize;

use crate::event::{COST_MAX, MessageInfo, PartInfo, SessionInfo, TOKEN_MAX, Tokens, cost_in_range};

/// Where OpenCode's data is.
#[derive(Debug, Clone, Default)]
pub struct Location {
    pub data_dir: PathBuf,
    pub dbs: Vec<PathBuf>,
    /// The legacy `storage/` directory, when it exists.
    pub storage: Option<PathBuf>,
    /// Where the stats index is kept (default: `$XDG_CACHE_HOME/ocpipe`, else `~/.cache/ocpipe`).
    pub index_dir: Option<PathBuf>,
}

impl Location {
    /// `db` wins; then `OPENCODE_DB` (absolute, or relative to the data dir); then
    /// `opencode.db` and `opencode-*.db` in the data dir (`data_dir`, else
    /// `$XDG_DATA_HOME/opencode`, else `~/.local/share/opencode`).
    pub fn find(data_dir: Option<&Path>, db: Option<&Path>) -> Location {
        let data_dir = data_dir.map(Path::to_path_buf).unwrap_or_else(default_data_dir);
        let dbs = if let Some(db) = db {
            vec![db.to_path_buf()]
        } else if let Some(env) = std::env::var_os("OPENCODE_DB").filter(|v| !v.is_empty()) {
            let p = PathBuf::from(env);
            vec![if p.is_absolute() { p } else { data_dir.join(p) }]
        } else {
            let mut dbs: Vec<PathBuf> = std::fs::read_dir(&data_dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    name == "opencode.db" || (name.starts_with("opencode-") && name.ends_with(".db"))
                })
                .collect();
            dbs.sort();
            dbs
        };
        let storage = Some(data_dir.join("storage")).filter(|s| s.is_dir());
        Location { data_dir, dbs, storage, index_dir: None }
    }

    /// Why nothing was found, for a data dir that yields nothing.
    pub fn explain_empty(&self) -> String {
        if !self.data_dir.exists() {
            format!(
                "{} does not exist: OpenCode has not run as this user, or its data is elsewhere (set data_dir / --data-dir, OPENCODE_DB or db)",
                self.data_dir.display()
            )
        } else if self.dbs.is_empty() && self.storage.is_none() {
            format!("{} has no opencode.db, opencode-*.db or storage/ directory", self.data_dir.display())
        } else {
            let what: Vec<String> = self
                .dbs
                .iter()
                .map(|d| d.display().to_string())
                .chain(self.storage.iter().map(|s| s.display().to_string()))
                .collect();
            format!("{} hold no sessions or messages yet", what.join(" and "))
        }
    }
}

pub fn default_data_dir() -> PathBuf {
    match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("opencode"),
        None => crate::component::home_dir().join(".local/share/opencode"),
    }
}

/// Opens a database read-only, without creating anything.
pub fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(BUSY_WAIT)?;
    // Read pages through a memory map instead of copying them (read-only: no risk to the file).
    // conn.pragma_update(None, "mmap_size", 1i64 << 32)?;
    Ok(conn)
}

pub fn has_table(conn: &Connection, name: &str) -> bool {
    conn.query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", [name], |_| Ok(()))
        .optional()
        .ok()
        .flatten()
        .is_some()
}

/// The session of a row whose first columns are `id, project_id, parent_id, title, directory,
/// slug, version, time_created, time_updated` (its project is the caller's to fill in).
pub fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionInfo> {
    Ok(SessionInfo {
        id: r.get(0)?,
        project_id: r.get(1)?,
        parent_id: r.get(2)?,
        title: r.get(3)?,
        directory: r.get(4)?,
        slug: r.get(5)?,
        version: r.get(6)?,
        time_created: r.get(7)?,
        time_updated: r.get(8)?,
        project: None,
        origin: "sqlite".into(),
    })
}

/// Why a database cannot be read at all.
#[derive(Debug, Clone, PartialEq)]
pub enum Unreadable {
    /// Another process holds a lock longer than we wait (`busy_timeout`): try again later.
    Locked(String),
    /// Not a database, or a damaged one (truncated, overwritten).
    Damaged(String),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::Locked(m) | Unreadable::Damaged(m) => f.write_str(m),
        }
    }
}

/// How long a reader waits for another process's lock.
pub const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens `db` and reads its schema: a damaged or locked database says so here, instead of
/// looking like one with no tables.
pub fn check(db: &Path) -> Result<Connection, Unreadable> {
    let what = |e: rusqlite::Error| {
        let code = e.sqlite_error_code();
        match code {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                Unreadable::Locked(format!(
                    "{} is locked by another process (waited {} s): {e}; it is read again later",
                    db.display(),
                    BUSY_WAIT.as_secs()
                ))
            }
            _ => Unreadable::Damaged(format!(
                "{} cannot be read: {e} (damaged or not an SQLite database?); restore it from a backup or point `db` / --db elsewhere",
                db.display()
            )),
        }
    };
    let conn = open_read_only(db).map_err(what)?;
    // Reads the whole schema: a truncated file fails here or, past it, while its rows are read
    // (both are reported as damage, not as an empty database).
    conn.query_row("SELECT count(*), max(length(sql)) FROM sqlite_master", [], |r| r.get::<_, i64>(0)).map_err(what)?;
    Ok(conn)
}

/// Whether `table` exists and holds at least one row.
pub fn has_rows(conn: &Connection, table: &str) -> bool {
    has_table(conn, table)
        && conn
            .query_row(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), [], |r| r.get::<_, bool>(0))
            .unwrap_or(false)
}

/// A message's JSON as OpenCode stores it (SQLite `data`, or a JSON file), borrowed.
#[derive(Debug, Deserialize)]
pub struct RawMessage<'a> {
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(rename = "sessionID", borrow)]
    pub session_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub role: Option<Cow<'a, str>>,
    #[serde(rename = "providerID", borrow)]
    pub provider_id: Option<Cow<'a, str>>,
    #[serde(rename = "modelID", borrow)]
    pub model_id: Option<Cow<'a, str>>,
    /// User messages name their model here.
    pub model: Option<RawModel<'a>>,
    #[serde(borrow)]
    pub agent: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub mode: Option<Cow<'a, str>>,
    /// Kept raw (parsed only for full messages): token views do not need it.
    #[serde(borrow)]
    pub path: Option<&'a serde_json::value::RawValue>,
    pub cost: Option<f64>,
    pub tokens: Option<RawTokens>,
    pub time: Option<RawTime>,
    #[serde(borrow)]
    pub finish: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub error: Option<&'a serde_json::value::RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct RawModel<'a> {
    #[serde(rename = "providerID", borrow)]
    pub provider_id: Option<Cow<'a, str>>,
    #[serde(rename = "modelID", borrow)]
    pub model_id: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub struct RawPath<'a> {
    #[serde(borrow)]
    pub cwd: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub root: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTokens {
    #[serde(default)]
    pub input: f64,
    #[serde(default)]
    pub output: f64,
    #[serde(default)]
    pub reasoning: f64,
    #[serde(default)]
    pub cache: RawCache,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawCache {
    #[serde(default)]
    pub read: f64,
    #[serde(default)]
    pub write: f64,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTime {
    pub created: Option<f64>,
    pub completed: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct RawError<'a> {
    #[serde(borrow)]
    pub name: Option<Cow<'a, str>>,
    pub data: Option<RawErrorData<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct RawErrorData<'a> {
    #[serde(borrow)]
    pub message: Option<Cow<'a, str>>,
}

impl RawTokens {
    pub fn to_tokens(&self) -> Tokens {
        let n = |v: f64| {
            if v.is_finite() && v > 0.0 { (v as u64).min(TOKEN_MAX) } else { 0 }
        };
        Tokens {
            input: n(self.input),
            output: n(self.output),
            reasoning: n(self.reasoning),
            cache_read: n(self.cache.read),
            cache_write: n(self.cache.write),
        }
    }
}

impl RawTokens {
    fn values(&self) -> [(&'static str, f64); 5] {
        [
            ("input", self.input),
            ("output", self.output),
            ("reasoning", self.reasoning),
            ("cache.read", self.cache.read),
            ("cache.write", self.cache.write),
        ]
    }
}

impl<'a> RawMessage<'a> {
    /// What of the message's counts is out of range (and how it is counted instead), if any.
    /// One rule everywhere: token counts are whole numbers from 0 to [`TOKEN_MAX`], a cost is
    /// from 0 to [`COST_MAX`]; others saturate, and the message is named in a warning.
    pub fn out_of_range(&self, id: &str) -> Option<String> {
        let mut bad = Vec::new();
        if let Some(t) = &self.tokens {
            for (name, v) in t.values() {
                if !(v.is_finite() && (0.0..=TOKEN_MAX as f64).contains(&v)) {
                    bad.push(format!("tokens.{name} = {v}"));
                }
            }
        }
        if let Some(c) = self.cost
            && !(c.is_finite() && (0.0..=COST_MAX).contains(&c))
        {
            bad.push(format!("cost = {c}"));
        }
        (!bad.is_empty()).then(|| {
            format!(
                "message {id}: {} out of range; counted as the nearest of 0 and {TOKEN_MAX} tokens (cost 0 and {COST_MAX})",
                bad.join(", ")
            )
        })
    }

    /// The cost, saturated to `[0, COST_MAX]` (not a number: 0).
    pub fn cost(&self) -> f64 {
        cost_in_range(self.cost)
    }

    pub fn provider(&self) -> Option<&str> {
        self.provider_id.as_deref().or_else(|| self.model.as_ref().and_then(|m| m.provider_id.as_deref()))
    }
    pub fn model_name(&self) -> Option<&str> {
        self.model_id.as_deref().or_else(|| self.model.as_ref().and_then(|m| m.model_id.as_deref()))
    }
    pub fn tokens(&self) -> Tokens {
        self.tokens.as_ref().map(RawTokens::to_tokens).unwrap_or_default()
    }
    pub fn created(&self) -> Option<i64> {
        self.time.as_ref().and_then(|t| t.created).map(|c| c as i64)
    }

    /// The full typed message. `id` and `session` fill in what SQLite keeps outside `data`.
    pub fn to_info(&self, id: &str, session: &str, row_created: i64, origin: &str) -> MessageInfo {
        let path: Option<RawPath<'_>> = self.path.and_then(|p| serde_json::from_str(p.get()).ok());
        let error: Option<RawError<'_>> = self.error.and_then(|e| serde_json::from_str(e.get()).ok());
        MessageInfo {
            id: self.id.as_deref().unwrap_or(id).to_string(),
            session_id: self.session_id.as_deref().unwrap_or(session).to_string(),
            role: self.role.as_deref().unwrap_or("unknown").to_string(),
            provider_id: self.provider().map(str::to_string),
            model_id: self.model_name().map(str::to_string),
            agent: self.agent.as_deref().map(str::to_string),
            mode: self.mode.as_deref().map(str::to_string),
            root: path.as_ref().and_then(|p| p.root.as_deref()).map(str::to_string),
            cwd: path.as_ref().and_then(|p| p.cwd.as_deref()).map(str::to_string),
            tokens: self.tokens(),
            cost: self.cost(),
            time_created: self.created().unwrap_or(row_created),
            time_completed: self.time.as_ref().and_then(|t| t.completed).map(|c| c as i64),
            finish: self.finish.as_deref().map(str::to_string),
            error: error.as_ref().map(|e| {
                let name = e.name.as_deref().unwrap_or("Error");
                match e.data.as_ref().and_then(|d| d.message.as_deref()) {
                    Some(m) => format!("{name}: {m}"),
                    None => name.to_string(),
                }
            }),
            fork_copy: false,
            origin: origin.to_string(),
        }
    }
}

/// A session's JSON (a `storage/session/…` file, or `info` of a change-feed row).
#[derive(Debug, Deserialize)]
pub struct RawSession {
    id: String,
    #[serde(rename = "projectID", default)]
    project_id: String,
    #[serde(rename = "parentID")]
    parent_id: Option<String>,
    #[serde(default)]
    title: String,
    #[serde(default)]
    directory: String,
    slug: Option<String>,
    version: Option<String>,
    #[serde(default)]
    time: RawSessionTime,
}

#[derive(Debug, Default, Deserialize)]
struct RawSessionTime {
    created: Option<f64>,
    updated: Option<f64>,
}

impl RawSession {
    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    /// The typed session; `project` is the worktree of its project, if known.
    pub fn into_info(self, project: Option<String>, origin: &str) -> SessionInfo {
        SessionInfo {
            project,
            id: self.id,
            project_id: self.project_id,
            parent_id: self.parent_id,
            title: self.title,
            directory: self.directory,
            slug: self.slug,
            version: self.version,
            time_created: self.time.created.unwrap_or(0.0) as i64,
            time_updated: self.time.updated.or(self.time.created).unwrap_or(0.0) as i64,
            origin: origin.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawProject {
    id: String,
    worktree: Option<String>,
}

/// A part's JSON (only what token views need).
#[derive(Debug, Deserialize)]
pub struct RawPart<'a> {
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(rename = "messageID", borrow)]
    pub message_id: Option<Cow<'a, str>>,
    #[serde(rename = "sessionID", borrow)]
    pub session_id: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    pub part_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub tool: Option<Cow<'a, str>>,
    pub state: Option<RawPartState<'a>>,
    pub tokens: Option<RawTokens>,
    pub cost: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct RawPartState<'a> {
    #[serde(borrow)]
    pub status: Option<Cow<'a, str>>,
}

impl RawPart<'_> {
    /// The part as a typed fact, if it is one token views need (a tool call or a step finish).
    pub fn to_info(&self, id: &str, message: &str, session: &str) -> Option<PartInfo> {
        let t = self.part_type.as_deref()?;
        if t != "tool" && t != "step-finish" {
            return None;
        }
        Some(PartInfo {
            id: self.id.as_deref().unwrap_or(id).to_string(),
            message_id: self.message_id.as_deref().unwrap_or(message).to_string(),
            session_id: self.session_id.as_deref().unwrap_or(session).to_string(),
            part_type: t.to_string(),
            tool: self.tool.as_deref().map(str::to_string),
            status: self.state.as_ref().and_then(|s| s.status.as_deref()).map(str::to_string),
            tokens: self.tokens.as_ref().map(RawTokens::to_tokens),
            cost: self.cost,
        })
    }
}

/// What a full read found, besides the records themselves.
#[derive(Debug, Default)]
pub struct ReadReport {
    pub warnings: Vec<String>,
    /// Databases that could not be read (or not to the end): what was read is incomplete.
    pub unreadable: Vec<Unreadable>,
    pub sessions: usize,
    pub messages: usize,
    pub duplicates: usize,
}

/// Receives what a read finds. Messages arrive as borrowed raw JSON to keep the fast path
/// allocation-free; `Sink::message` is called once per distinct message id.
pub trait Visitor {
    fn session(&mut self, s: SessionInfo);
    fn message(&mut self, id: &str, session: &str, row_created: i64, m: &RawMessage<'_>, origin: &'static str);
    fn part(&mut self, _p: PartInfo) {}
    /// A record that could not be used (live feeds report these as they go).
    fn error(&mut self, _what: String) {}
    /// Whether parts are wanted (reading them costs time).
    fn wants_parts(&self) -> bool {
        false
    }
}

/// Reads every generation at `loc`, calling `v` for each distinct session and message.
pub fn read_all(loc: &Location, v: &mut dyn Visitor) -> ReadReport {
    let mut r = Reading::default();
    // Dedupe messages only when more than one generation could hold the same one.
    let sources = loc.dbs.len() + usize::from(loc.storage.is_some());

    for db in &loc.dbs {
        let conn = match check(db) {
            Ok(c) => c,
            Err(e) => {
                r.report.unreadable.push(e);
                continue;
            }
        };
        // Newer runners' rows, when there are any, may repeat v1 messages.
        let v2 = has_rows(&conn, "session_message");
        if sources > 1 || v2 {
            r.seen.get_or_insert_with(FxHashSet::default);
        }
        if let Err(e) = read_db(&conn, db, v, &mut r, v2, Rows::All) {
            r.report.unreadable.push(unreadable(db, &e));
        }
    }
    if let Some(storage) = &loc.storage {
        if sources > 1 {
            r.seen.get_or_insert_with(FxHashSet::default);
        }
        read_json(storage, v, &mut r, JsonSelect::All);
    }
    r.report
}

/// Which files of the JSON storage to read.
pub enum JsonSelect<'a> {
    All,
    /// Files modified after this (ms since the epoch, with a second of slack): a full walk.
    ModifiedAfter(i64),
    /// Exactly these (the paths a file watch reported); no walk.
    Paths(&'a HashSet<PathBuf>),
}

impl JsonSelect<'_> {
    /// The `.json` files of `dir` this selection takes, sorted.
    fn files(&self, dir: &Path) -> Vec<PathBuf> {
        match self {
            JsonSelect::All => json_files(dir),
            JsonSelect::ModifiedAfter(since) => {
                json_files(dir).into_iter().filter(|p| super::live::modified_after(p, *since)).collect()
            }
            JsonSelect::Paths(paths) => {
                let mut v: Vec<PathBuf> = Vec::new();
                for p in paths.iter().filter(|p| p.starts_with(dir)) {
                    if p.is_dir() {
                        // A new folder: files made in it before its watch was set are named by
                        // no notification.
                        v.extend(json_files(p));
                    } else if p.extension().is_some_and(|x| x == "json") && p.is_file() {
                        v.push(p.clone());
                    }
                }
                v.sort();
                v.dedup();
                v
            }
        }
    }
}

/// Reads the JSON storage files `select` names (projects are always read: sessions need them).
pub fn read_json_changed(storage: &Path, select: JsonSelect<'_>, v: &mut dyn Visitor) -> ReadReport {
    let mut r = Reading::default();
    read_json(storage, v, &mut r, select);
    r.report
}

fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// What one read carries from generation to generation.
#[derive(Default)]
struct Reading {
    report: ReadReport,
    /// Message ids seen, when more than one generation could hold the same message.
    seen: Option<FxHashSet<u64>>,
    seen_sessions: HashSet<String>,
    /// Project id -> worktree.
    projects: HashMap<String, String>,
}

/// Which rows of a database a read takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    All,
    /// Projects and sessions only.
    Sessions,
    /// Only the `message` rows of this range.
    Messages(RowRange),
}

/// A stretch of a database's `message` table by rowid (both ends included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRange {
    pub first: i64,
    pub last: i64,
}

impl RowRange {
    /// At most this many rows fall in it.
    pub fn len(&self) -> usize {
        (self.last - self.first + 1).max(0) as usize
    }
}

/// When `loc` is one database whose messages are all in its `message` table (the usual case:
/// no JSON storage or newer rows to dedupe against), `parts` rowid ranges covering them, to be
/// read at once; `None` when that does not hold, when rowids are too sparse for the ranges'
/// lengths to size their output (more than a tenth deleted), or when it is small.
pub fn split_messages(loc: &Location, parts: usize) -> Option<Vec<RowRange>> {
    const WORTH_IT: i64 = 20_000;
    let [db] = loc.dbs.as_slice() else { return None };
    if loc.storage.is_some() || parts < 2 {
        return None;
    }
    let conn = open_read_only(db).ok()?;
    if !has_table(&conn, "message") || has_rows(&conn, "session_message") {
        return None;
    }
    let one = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0)).ok().flatten();
    let (first, last) = (one("SELECT min(rowid) FROM message")?, one("SELECT max(rowid) FROM message")?);
    let count = one("SELECT count(*) FROM message")?;
    let span = last - first + 1;
    if count < WORTH_IT || span > count + count / 10 {
        return None;
    }
    let parts = parts as i64;
    Some(
        (0..parts)
            .map(|k| RowRange { first: first + span * k / parts, last: first + span * (k + 1) / parts - 1 })
            .collect(),
    )
}

/// Projects and sessions of every generation at `loc`, no messages (see [`read_message_range`]).
pub fn read_sessions(loc: &Location, v: &mut dyn Visitor) -> ReadReport {
    let mut r = Reading::default();
    for db in &loc.dbs {
        match check(db) {
            Ok(conn) => {
                if let Err(e) = read_db(&conn, db, v, &mut r, false, Rows::Sessions) {
                    r.report.unreadable.push(unreadable(db, &e));
                }
            }
            Err(e) => r.report.unreadable.push(e),
        }
    }
    r.report
}

/// The `message` rows of `range` in `db` (as [`split_messages`] gave it).
pub fn read_message_range(db: &Path, range: RowRange, v: &mut dyn Visitor) -> ReadReport {
    let mut r = Reading::default();
    match check(db) {
        Ok(conn) => {
            if let Err(e) = read_db(&conn, db, v, &mut r, false, Rows::Messages(range)) {
                r.report.unreadable.push(unreadable(db, &e));
            }
        }
        Err(e) => r.report.unreadable.push(e),
    }
    r.report
}

/// Why a database could not be read to the end.
fn unreadable(db: &Path, e: &rusqlite::Error) -> Unreadable {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => Unreadable::Locked(format!(
            "{} is locked by another process (waited {} s): {e}",
            db.display(),
            BUSY_WAIT.as_secs()
        )),
        _ => Unreadable::Damaged(format!(
            "{}: reading stopped: {e} (damaged?); restore it from a backup or point `db` / --db elsewhere",
            db.display()
        )),
    }
}

/// Reads one database (the `rows` of it); `v2`: its `session_message` rows too.
fn read_db(
    conn: &Connection,
    db: &Path,
    v: &mut dyn Visitor,
    r: &mut Reading,
    v2: bool,
    rows: Rows,
) -> rusqlite::Result<()> {
    let Reading { report, seen, seen_sessions, projects } = r;
    if !["session", "message", "session_message"].iter().any(|t| has_table(conn, t)) {
        report.warnings.push(format!(
            "{}: unknown schema: no session or message table (is it an OpenCode database?)",
            db.display()
        ));
        return Ok(());
    }
    if matches!(rows, Rows::All | Rows::Sessions) && has_table(conn, "project") {
        let mut st = conn.prepare("SELECT id, worktree FROM project")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)))?;
        for (id, wt) in rows.flatten() {
            if let Some(wt) = wt {
                projects.insert(id, wt);
            }
        }
    }
    if matches!(rows, Rows::All | Rows::Sessions) && has_table(conn, "session") {
        let mut st = conn.prepare(
            "SELECT id, project_id, parent_id, title, directory, slug, version, time_created, time_updated FROM session",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let mut s = session_row(r)?;
            if !seen_sessions.insert(s.id.clone()) {
                continue;
            }
            report.sessions += 1;
            s.project = project_of(&s.project_id, projects);
            v.session(s);
        }
    }
    if rows == Rows::Sessions {
        return Ok(());
    }
    let mut tables = vec![("message", "sqlite")];
    if v2 {
        tables.push(("session_message", "sqlite-v2"));
    }
    for (table, origin) in tables {
        if !has_table(conn, table) {
            continue;
        }
        let mut sql = format!("SELECT id, session_id, time_created, data FROM {table}");
        if let Rows::Messages(range) = rows {
            sql.push_str(&format!(" WHERE rowid BETWEEN {} AND {}", range.first, range.last));
        }
        // A range is read beside others: on this thread, since the others keep the cores busy.
        let each_row = if matches!(rows, Rows::Messages(_)) { for_each_row_here } else { for_each_row };
        each_row(db, &sql, &mut |id, session, created, data| {
            if let Some(seen) = seen.as_mut()
                && !seen.insert(id_hash(id))
            {
                report.duplicates += 1;
                return;
            }
            match serde_json::from_slice::<RawMessage<'_>>(data) {
                // session_message also holds rows that are not messages: keep those with a role.
                Ok(m) if m.role.is_some() => {
                    report.messages += 1;
                    v.message(id, session, created, &m, origin);
                }
                Ok(_) if table == "session_message" => {}
                Ok(_) => report.warnings.push(format!("{}: {table} row {id} has no role; skipped", db.display())),
                Err(e) => report
                    .warnings
                    .push(format!("{}: {table} row {id} is not valid message JSON ({e}); skipped", db.display())),
            }
        })?;
    }
    if rows == Rows::All && v.wants_parts() && has_table(conn, "part") {
        let mut st = conn.prepare("SELECT id, message_id, session_id, data FROM part")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let (id, msg, ses) = (r.get_ref(0)?.as_str()?, r.get_ref(1)?.as_str()?, r.get_ref(2)?.as_str()?);
            match serde_json::from_slice::<RawPart<'_>>(r.get_ref(3)?.as_bytes()?) {
                Ok(p) => {
                    if let Some(info) = p.to_info(id, msg, ses) {
                        v.part(info);
                    }
                }
                Err(e) => {
                    report.warnings.push(format!("{}: part row {id} is not valid JSON ({e}); skipped", db.display()))
                }
            }
        }
    }
    Ok(())
}

/// Rows read on a second thread and handed over in batches, so SQLite's reading overlaps the
/// caller's parsing.
struct RowBatch {
    buf: Vec<u8>,
    /// (id end, session end, data end, created); each row's strings follow the previous row's.
    rows: Vec<(usize, usize, usize, i64)>,
}

const ROW_BATCH: usize = 4096;

impl RowBatch {
    fn new() -> Self {
        RowBatch { buf: Vec::with_capacity(ROW_BATCH * 400), rows: Vec::with_capacity(ROW_BATCH) }
    }
}

/// Receives `(id, session, created, data)` of each row.
type RowFn<'a> = dyn FnMut(&str, &str, i64, &[u8]) + 'a;

/// Calls `f(id, session, created, data)` for every row of `sql` (those 4 columns, in that
/// order), reading on a second thread.
fn for_each_row(db: &Path, sql: &str, f: &mut RowFn<'_>) -> rusqlite::Result<()> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<RowBatch>(2);
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> rusqlite::Result<()> {
            let conn = open_read_only(db)?;
            let mut st = conn.prepare(sql)?;
            let mut rows = st.query([])?;
            let mut b = RowBatch::new();
            while let Some(r) = rows.next()? {
                b.buf.extend_from_slice(r.get_ref(0)?.as_bytes()?);
                let id_end = b.buf.len();
                b.buf.extend_from_slice(r.get_ref(1)?.as_bytes()?);
                let session_end = b.buf.len();
                b.buf.extend_from_slice(r.get_ref(3)?.as_bytes()?);
                b.rows.push((id_end, session_end, b.buf.len(), r.get(2)?));
                if b.rows.len() == ROW_BATCH && tx.send(std::mem::replace(&mut b, RowBatch::new())).is_err() {
                    return Ok(());
                }
            }
            let _ = tx.send(b);
            Ok(())
        });
        for b in rx {
            let mut start = 0;
            for &(id_end, session_end, data_end, created) in &b.rows {
                let id = std::str::from_utf8(&b.buf[start..id_end]).unwrap_or("");
                let session = std::str::from_utf8(&b.buf[id_end..session_end]).unwrap_or("");
                f(id, session, created, &b.buf[session_end..data_end]);
                start = data_end;
            }
        }
        reader.join().unwrap_or(Ok(()))
    })
}

/// [`for_each_row`] on the calling thread.
fn for_each_row_here(db: &Path, sql: &str, f: &mut RowFn<'_>) -> rusqlite::Result<()> {
    let conn = open_read_only(db)?;
    let mut st = conn.prepare(sql)?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        // As `for_each_row`: a key that is not text reads as empty, not as a damaged database.
        let text = |i| r.get_ref(i).and_then(|v| Ok(std::str::from_utf8(v.as_bytes()?).unwrap_or("")));
        f(text(0)?, text(1)?, r.get(2)?, r.get_ref(3)?.as_bytes()?);
    }
    Ok(())
}

fn project_of(project_id: &str, projects: &HashMap<String, String>) -> Option<String> {
    if project_id == "global" { None } else { projects.get(project_id).cloned() }
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(json_files(&p));
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn read_json(storage: &Path, v: &mut dyn Visitor, r: &mut Reading, select: JsonSelect<'_>) {
    let Reading { report, seen, seen_sessions, projects } = r;
    let bad = |report: &mut ReadReport, p: &Path, e: &dyn std::fmt::Display| {
        report.warnings.push(format!("{}: not valid JSON ({e}); skipped", p.display()));
    };
    for p in json_files(&storage.join("project")) {
        match std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<RawProject>(&b).map_err(|e| e.to_string()))
        {
            Ok(proj) => {
                if let Some(wt) = proj.worktree {
                    projects.entry(proj.id).or_insert(wt);
                }
            }
            Err(e) => bad(report, &p, &e),
        }
    }
    for p in select.files(&storage.join("session")) {
        match std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<RawSession>(&b).map_err(|e| e.to_string()))
        {
            Ok(s) => {
                if !seen_sessions.insert(s.id.clone()) {
                    continue;
                }
                report.sessions += 1;
                let project = project_of(&s.project_id, projects);
                v.session(s.into_info(project, "json"));
            }
            Err(e) => bad(report, &p, &e),
        }
    }
    for p in select.files(&storage.join("message")) {
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) => {
                bad(report, &p, &e);
                continue;
            }
        };
        match serde_json::from_slice::<RawMessage<'_>>(&bytes) {
            Ok(m) if m.role.is_some() => {
                let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                let dir = p.parent().and_then(|d| d.file_name()).and_then(|s| s.to_str()).unwrap_or("");
                let id = m.id.as_deref().unwrap_or(stem).to_string();
                if let Some(seen) = seen.as_mut()
                    && !seen.insert(id_hash(&id))
                {
                    report.duplicates += 1;
                    continue;
                }
                let session = m.session_id.as_deref().unwrap_or(dir).to_string();
                report.messages += 1;
                v.message(&id, &session, m.created().unwrap_or(0), &m, "json");
            }
            Ok(_) => report.warnings.push(format!("{}: message without a role; skipped", p.display())),
            Err(e) => bad(report, &p, &e),
        }
    }
    if v.wants_parts() {
        for p in select.files(&storage.join("part")) {
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            match serde_json::from_slice::<RawPart<'_>>(&bytes) {
                Ok(part) => {
                    let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                    let msg = p.parent().and_then(|d| d.file_name()).and_then(|s| s.to_str()).unwrap_or("");
                    if let Some(info) = part.to_info(stem, msg, "") {
                        v.part(info);
                    }
                }
                Err(e) => bad(report, &p, &e),
            }
        }
    }
}
