//! `sqlite`: stores events in documented tables, idempotently, in batched transactions.

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use rusqlite::{Connection, params};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{ComponentFuture, Context, Input, Sink, SinkConfig, create_private_dir};
use crate::config::{FieldError, FieldPath};
use crate::event::{DataType, Event, Payload, TraceKind};

/// Stores events in an SQLite database (WAL mode), one table per event kind, each with the
/// event's JSON view in `raw` beside the columns. Rows are keyed by the event's natural id, so
/// storing the same event twice (a re-run, a restart after a crash) adds no row.
///
/// Tables (`PRAGMA user_version` = 2):
///
/// - `trace_request(event_id TEXT PRIMARY KEY, session_id, trace_id, timestamp, method, url,
///   source, raw)`
/// - `trace_response(…same…, status INTEGER, status_text)`
/// - `trace_error(…same…, error)`
/// - `opencode_session(id PRIMARY KEY, project_id, project, parent_id, title, directory,
///   time_created, time_updated, source, raw)`
/// - `opencode_message(id PRIMARY KEY, session_id, role, provider_id, model_id, agent, root,
///   input, output, reasoning, cache_read, cache_write, total, cost, time_created,
///   time_completed, finish, error, fork_copy, source, raw)`: one row per message, updated in
///   place when OpenCode updates it (tokens arrive at completion); `fork_copy = 1` marks the
///   copies a fork makes of its parent's history.
/// - `opencode_part(id PRIMARY KEY, message_id, session_id, type, tool, status, input, output,
///   reasoning, cache_read, cache_write, cost, source, raw)`: tool calls and step-finish parts.
/// - `rollup(id PRIMARY KEY, group_by, range, key, sessions, messages, responses, input,
///   output, reasoning, cache_read, cache_write, total, cost, fork_copy_messages, updated,
///   raw)`: the latest rollup of each group from the `aggregate` transform.
/// - `events(seq INTEGER PRIMARY KEY, event_id TEXT UNIQUE, kind, source, timestamp, raw)`:
///   every other kind of event.
///
/// Times in the `opencode_*` tables are milliseconds since the epoch, as OpenCode keeps them.
/// Token usage by model, fork copies counted once:
/// `SELECT provider_id || '/' || model_id, sum(total) FROM opencode_message WHERE NOT fork_copy
/// GROUP BY 1`.
///
/// The four tables updated in place also have `revision`: the sender's order of the record's
/// versions when it came from another machine (NULL when read here); a row is not replaced by
/// an older version.
///
/// `timestamp` is the record's own (RFC 3339); `raw` is JSON, so
/// `json_extract(raw, '$.body.model')` reaches inside bodies.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct SqliteConfig {
    /// The database file (created with mode 0600 if missing).
    pub path: String,
    /// The most events written in one transaction.
    #[serde(default = "default_batch")]
    pub batch_max_events: usize,
}

fn default_batch() -> usize {
    500
}

const EXAMPLE: &str = r#"path = "${OCPIPE_OUT:-out}/ocpipe.db"
"#;

crate::register_component!(
    sink SqliteConfig,
    "sqlite",
    "Stores events in documented SQLite tables (WAL, batched, idempotent on natural ids)",
    EXAMPLE
);

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS trace_request (
    event_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, trace_id TEXT NOT NULL,
    timestamp TEXT NOT NULL, method TEXT, url TEXT, source TEXT NOT NULL, raw TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trace_response (
    event_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, trace_id TEXT NOT NULL,
    timestamp TEXT NOT NULL, method TEXT, url TEXT, source TEXT NOT NULL, raw TEXT NOT NULL,
    status INTEGER, status_text TEXT);
CREATE TABLE IF NOT EXISTS trace_error (
    event_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, trace_id TEXT NOT NULL,
    timestamp TEXT NOT NULL, method TEXT, url TEXT, source TEXT NOT NULL, raw TEXT NOT NULL,
    error TEXT);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, event_id TEXT UNIQUE, kind TEXT NOT NULL, source TEXT NOT NULL,
    timestamp TEXT NOT NULL, raw TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS opencode_session (
    id TEXT PRIMARY KEY, project_id TEXT, project TEXT, parent_id TEXT, title TEXT, directory TEXT,
    time_created INTEGER, time_updated INTEGER, source TEXT NOT NULL, raw TEXT NOT NULL, revision INTEGER);
CREATE TABLE IF NOT EXISTS opencode_message (
    id TEXT PRIMARY KEY, session_id TEXT NOT NULL, role TEXT, provider_id TEXT, model_id TEXT,
    agent TEXT, root TEXT, input INTEGER, output INTEGER, reasoning INTEGER, cache_read INTEGER,
    cache_write INTEGER, total INTEGER, cost REAL, time_created INTEGER, time_completed INTEGER,
    finish TEXT, error TEXT, fork_copy INTEGER NOT NULL, source TEXT NOT NULL, raw TEXT NOT NULL,
    revision INTEGER);
CREATE TABLE IF NOT EXISTS opencode_part (
    id TEXT PRIMARY KEY, message_id TEXT NOT NULL, session_id TEXT NOT NULL, type TEXT, tool TEXT,
    status TEXT, input INTEGER, output INTEGER, reasoning INTEGER, cache_read INTEGER,
    cache_write INTEGER, cost REAL, source TEXT NOT NULL, raw TEXT NOT NULL, revision INTEGER);
CREATE TABLE IF NOT EXISTS rollup (
    id TEXT PRIMARY KEY, group_by TEXT, range TEXT, key TEXT, sessions INTEGER, messages INTEGER,
    responses INTEGER, input INTEGER, output INTEGER, reasoning INTEGER, cache_read INTEGER,
    cache_write INTEGER, total INTEGER, cost REAL, fork_copy_messages INTEGER, updated TEXT,
    raw TEXT NOT NULL, revision INTEGER);
CREATE INDEX IF NOT EXISTS opencode_message_session ON opencode_message(session_id, time_created);
CREATE INDEX IF NOT EXISTS opencode_message_created ON opencode_message(time_created);
CREATE INDEX IF NOT EXISTS trace_request_session ON trace_request(session_id, timestamp);
CREATE INDEX IF NOT EXISTS trace_response_session ON trace_response(session_id, timestamp);
CREATE INDEX IF NOT EXISTS trace_error_session ON trace_error(session_id, timestamp);
";

/// The schema version this build writes (`PRAGMA user_version`). Version 1 had the trace
/// tables only; 2 added the OpenCode and rollup tables, so `SCHEMA` (all `IF NOT EXISTS`)
/// brings 0 or 1 up to 2.
const SCHEMA_VERSION: i64 = 2;

/// The tables updated in place, whose rows keep the revision of the version they hold.
const REVISED: [&str; 4] = ["opencode_session", "opencode_message", "opencode_part", "rollup"];

impl SinkConfig for SqliteConfig {
    fn input(&self) -> DataType {
        DataType::ANY
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.path.trim().is_empty() {
            errs.push(FieldError::new(FieldPath::key("path"), "`path` is empty").help("e.g. path = \"out/ocpipe.db\""));
        }
        if self.batch_max_events == 0 {
            errs.push(FieldError::new(FieldPath::key("batch_max_events"), "`batch_max_events` must be at least 1"));
        }
        errs
    }

    fn build(&self, cx: &Context) -> anyhow::Result<Box<dyn Sink>> {
        let path = cx.resolve(&self.path);
        let conn = open(&path)?;
        Ok(Box::new(SqliteSink { conn, path, batch: self.batch_max_events, cx: cx.clone() }))
    }
}

/// Opens (creating with mode 0600) and migrates the database; refuses one written by a newer
/// ocpipe (after a downgrade) rather than writing into tables it does not know.
pub fn open(path: &std::path::Path) -> anyhow::Result<Connection> {
    use anyhow::Context as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        anyhow::bail!(
            "{} has schema version {version}, written by a newer ocpipe (this one writes {SCHEMA_VERSION}): \
             run that version, or set `path` to another file",
            path.display()
        );
    }
    conn.execute_batch(SCHEMA).with_context(|| format!("preparing tables in {}", path.display()))?;
    // Tables from before revisions: the column is added (older ocpipe writes on, leaving it NULL).
    for table in REVISED {
        if conn.prepare(&format!("SELECT revision FROM {table} LIMIT 0")).is_err() {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN revision INTEGER"))
                .with_context(|| format!("adding `revision` to {table} in {}", path.display()))?;
        }
    }
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(conn)
}

struct SqliteSink {
    conn: Connection,
    path: PathBuf,
    batch: usize,
    cx: Context,
}

fn insert(tx: &rusqlite::Transaction<'_>, ev: &Event) -> rusqlite::Result<()> {
    let mut raw = Vec::with_capacity(1024);
    ev.write_json(&mut raw);
    let raw = String::from_utf8(raw).expect("serde_json writes UTF-8");
    match &ev.payload {
        Payload::Trace(t) => {
            let id = ev.meta.id.clone().unwrap_or_else(|| t.natural_id());
            let common = params![id, t.session_id, t.id_text(), t.timestamp, t.method, t.url, &*ev.meta.source, raw];
            match t.kind {
                TraceKind::Request => tx
                    .prepare_cached("INSERT OR IGNORE INTO trace_request VALUES (?1,?2,?3,?4,?5,?6,?7,?8)")?
                    .execute(common)?,
                TraceKind::Response => tx
                    .prepare_cached("INSERT OR IGNORE INTO trace_response VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)")?
                    .execute(params![
                        id,
                        t.session_id,
                        t.id_text(),
                        t.timestamp,
                        t.method,
                        t.url,
                        &*ev.meta.source,
                        raw,
                        t.status,
                        t.status_text
                    ])?,
                TraceKind::Error => tx
                    .prepare_cached("INSERT OR IGNORE INTO trace_error VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)")?
                    .execute(params![
                        id,
                        t.session_id,
                        t.id_text(),
                        t.timestamp,
                        t.method,
                        t.url,
                        &*ev.meta.source,
                        raw,
                        t.error
                    ])?,
            };
        }
        Payload::Session(s) => {
            upsert(
                tx,
                ev.meta.revision,
                "opencode_session",
                &[
                    "id",
                    "project_id",
                    "project",
                    "parent_id",
                    "title",
                    "directory",
                    "time_created",
                    "time_updated",
                    "source",
                    "raw",
                ],
                params![
                    s.id,
                    s.project_id,
                    s.project,
                    s.parent_id,
                    s.title,
                    s.directory,
                    s.time_created,
                    s.time_updated,
                    &*ev.meta.source,
                    raw
                ],
            )?;
        }
        Payload::Message(m) => {
            let t = &m.tokens;
            upsert(
                tx,
                ev.meta.revision,
                "opencode_message",
                &[
                    "id",
                    "session_id",
                    "role",
                    "provider_id",
                    "model_id",
                    "agent",
                    "root",
                    "input",
                    "output",
                    "reasoning",
                    "cache_read",
                    "cache_write",
                    "total",
                    "cost",
                    "time_created",
                    "time_completed",
                    "finish",
                    "error",
                    "fork_copy",
                    "source",
                    "raw",
                ],
                params![
                    m.id,
                    m.session_id,
                    m.role,
                    m.provider_id,
                    m.model_id,
                    m.agent,
                    m.root,
                    t.input as i64,
                    t.output as i64,
                    t.reasoning as i64,
                    t.cache_read as i64,
                    t.cache_write as i64,
                    t.total() as i64,
                    m.cost,
                    m.time_created,
                    m.time_completed,
                    m.finish,
                    m.error,
                    m.fork_copy,
                    &*ev.meta.source,
                    raw
                ],
            )?;
        }
        Payload::Part(p) => {
            let t = p.tokens.unwrap_or_default();
            let has = p.tokens.is_some();
            let n = |v: u64| has.then_some(v as i64);
            upsert(
                tx,
                ev.meta.revision,
                "opencode_part",
                &[
                    "id",
                    "message_id",
                    "session_id",
                    "type",
                    "tool",
                    "status",
                    "input",
                    "output",
                    "reasoning",
                    "cache_read",
                    "cache_write",
                    "cost",
                    "source",
                    "raw",
                ],
                params![
                    p.id,
                    p.message_id,
                    p.session_id,
                    p.part_type,
                    p.tool,
                    p.status,
                    n(t.input),
                    n(t.output),
                    n(t.reasoning),
                    n(t.cache_read),
                    n(t.cache_write),
                    p.cost,
                    &*ev.meta.source,
                    raw
                ],
            )?;
        }
        Payload::Rollup(r) => {
            let t = &r.tokens;
            upsert(
                tx,
                ev.meta.revision,
                "rollup",
                &[
                    "id",
                    "group_by",
                    "range",
                    "key",
                    "sessions",
                    "messages",
                    "responses",
                    "input",
                    "output",
                    "reasoning",
                    "cache_read",
                    "cache_write",
                    "total",
                    "cost",
                    "fork_copy_messages",
                    "updated",
                    "raw",
                ],
                params![
                    r.natural_id(),
                    r.group_by,
                    r.range,
                    r.key,
                    r.sessions as i64,
                    r.messages as i64,
                    r.responses as i64,
                    t.input as i64,
                    t.output as i64,
                    t.reasoning as i64,
                    t.cache_read as i64,
                    t.cache_write as i64,
                    r.total as i64,
                    r.cost,
                    r.fork_copy_messages as i64,
                    ev.meta.timestamp.to_rfc3339(),
                    raw
                ],
            )?;
        }
        Payload::Json(_)
        | Payload::Live(_)
        | Payload::Process(_)
        | Payload::Status(_)
        | Payload::Capture(_)
        | Payload::Call(_) => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO events (event_id, kind, source, timestamp, raw) VALUES (?1,?2,?3,?4,?5)",
            )?
            .execute(params![
                ev.meta.id,
                ev.kind(),
                &*ev.meta.source,
                ev.meta.timestamp.to_rfc3339(),
                raw
            ])?;
        }
    }
    Ok(())
}

/// Inserts a row, or updates the row with the same `id` when any value differs, unless the
/// row holds a later version of the record (a higher revision: versions from another machine
/// can arrive out of order).
fn upsert(
    tx: &rusqlite::Transaction<'_>,
    revision: Option<u64>,
    table: &str,
    cols: &[&str],
    values: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<()> {
    let revision = revision.map(|r| i64::try_from(r).unwrap_or(i64::MAX));
    let mut values = values.to_vec();
    values.push(&revision);
    let cols: Vec<&str> = cols.iter().copied().chain(["revision"]).collect();
    let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let updates: Vec<String> = cols[1..].iter().map(|c| format!("{c} = excluded.{c}")).collect();
    let sql = format!(
        "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT(id) DO UPDATE SET {} \
         WHERE (raw IS NOT excluded.raw OR excluded.revision > {table}.revision) \
         AND (excluded.revision IS NULL OR {table}.revision IS NULL OR excluded.revision >= {table}.revision)",
        cols.join(", "),
        placeholders.join(", "),
        updates.join(", ")
    );
    tx.prepare_cached(&sql)?.execute(values.as_slice())?;
    Ok(())
}

impl SqliteSink {
    fn write(&mut self, batch: &[Event]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        for ev in batch {
            insert(&tx, ev)?;
        }
        tx.commit()
    }
}

impl Sink for SqliteSink {
    fn run(mut self: Box<Self>, mut input: Input) -> ComponentFuture {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut batch = Vec::with_capacity(self.batch);
                while input.blocking_recv_batch(&mut batch, self.batch) {
                    if let Err(e) = self.write(&batch) {
                        self.cx.error(format_args!("writing {} events to {}: {e}", batch.len(), self.path.display()));
                        batch.iter().for_each(Event::fail);
                    }
                    // Dropping the events acknowledges them: they are committed.
                    batch.clear();
                }
                Ok(())
            })
            .await?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TraceRecord;
    use crate::testing;

    fn trace(kind: &str, id: u32) -> Event {
        let extra = match kind {
            "response" => r#","status":200,"statusText":"OK""#,
            "error" => r#","error":"fetch failed""#,
            _ => "",
        };
        let rec: TraceRecord = serde_json::from_str(&format!(
            r#"{{"kind":"{kind}","id":{id},"timestamp":"2026-04-25T02:41:09.000Z","sessionID":"ses_1","method":"POST","url":"http://x","headers":{{}},"body":{{"model":"m"}}{extra}}}"#
        ))
        .unwrap();
        let id = rec.natural_id();
        Event::new("t".into(), chrono::Utc::now(), Payload::Trace(Box::new(rec))).with_id(id)
    }

    #[tokio::test]
    async fn stores_each_kind_once_even_when_sent_twice() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: SqliteConfig = toml::from_str(r#"path = "db/t.db""#).unwrap();
        let batch = || vec![trace("request", 1), trace("response", 1), trace("error", 2), trace("request", 3)];
        testing::run_sink(&cfg, batch(), dir.path()).await;
        testing::run_sink(&cfg, batch(), dir.path()).await;
        let conn = Connection::open(dir.path().join("db/t.db")).unwrap();
        let count = |t: &str| conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!((count("trace_request"), count("trace_response"), count("trace_error")), (2, 1, 1));
        let (status, model): (i64, String) = conn
            .query_row("SELECT status, json_extract(raw, '$.body.model') FROM trace_response", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((status, model.as_str()), (200, "m"));
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn an_older_version_from_another_machine_does_not_replace_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: SqliteConfig = toml::from_str(r#"path = "t.db""#).unwrap();
        let message = |input: u64, revision: Option<u64>| {
            let m: crate::event::MessageInfo = serde_json::from_value(serde_json::json!({
                "id": "msg_1", "sessionID": "ses_1", "role": "assistant", "tokens": {"input": input}, "timeCreated": 1
            }))
            .unwrap();
            let mut ev = Event::new("team".into(), chrono::Utc::now(), Payload::Message(Box::new(m)));
            ev.meta.revision = revision;
            ev
        };
        let input = |dir: &std::path::Path| {
            Connection::open(dir.join("t.db"))
                .unwrap()
                .query_row("SELECT input, revision FROM opencode_message", [], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
                })
                .unwrap()
        };
        // The completed version (20) arrives before the one it replaced (10): it stays.
        testing::run_sink(&cfg, vec![message(100, Some(20)), message(5, Some(10))], dir.path()).await;
        assert_eq!(input(dir.path()), (100, Some(20)));
        // The same content again, later (a re-send after a restart): the row's revision rises,
        // so an older version that comes after still cannot replace it.
        testing::run_sink(&cfg, vec![message(100, Some(25)), message(5, Some(22))], dir.path()).await;
        assert_eq!(input(dir.path()), (100, Some(25)));
        // A later version replaces it; one read on this machine always does.
        testing::run_sink(&cfg, vec![message(120, Some(30))], dir.path()).await;
        assert_eq!(input(dir.path()), (120, Some(30)));
        testing::run_sink(&cfg, vec![message(7, None)], dir.path()).await;
        assert_eq!(input(dir.path()), (7, None));
    }

    #[test]
    fn older_databases_are_brought_up_and_newer_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Version 1: the trace tables only, with a row.
        let old = dir.path().join("v1.db");
        let conn = Connection::open(&old).unwrap();
        conn.execute_batch(
            "CREATE TABLE trace_request (event_id TEXT PRIMARY KEY, session_id TEXT, trace_id TEXT, timestamp TEXT,
               method TEXT, url TEXT, source TEXT, raw TEXT NOT NULL);
             INSERT INTO trace_request VALUES ('e1', 's', 't', 'now', 'POST', 'u', 'src', '{}');
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let conn = open(&old).unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        let kept: i64 = conn.query_row("SELECT count(*) FROM trace_request", [], |r| r.get(0)).unwrap();
        let rollups: i64 = conn.query_row("SELECT count(*) FROM rollup", [], |r| r.get(0)).unwrap();
        assert_eq!((v, kept, rollups), (SCHEMA_VERSION, 1, 0));
        for table in REVISED {
            assert!(conn.prepare(&format!("SELECT revision FROM {table}")).is_ok(), "{table}");
        }

        // Written by a newer ocpipe: refused, untouched.
        let newer = dir.path().join("v9.db");
        Connection::open(&newer).unwrap().execute_batch("PRAGMA user_version = 9;").unwrap();
        let err = open(&newer).unwrap_err().to_string();
        assert!(err.contains("schema version 9, written by a newer ocpipe (this one writes 2)"), "{err}");
        let v: i64 = Connection::open(&newer).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, 9);
    }
}
