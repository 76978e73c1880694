//! Following one OpenCode database live, whatever its generation.
//!
//! - **`event`** (OpenCode >= 1.17): the durable change feed, tailed by rowid.
//! - **`rows`** (1.2 – 1.15: no `event` table, or one never written): new `message`/`part` rows
//!   by rowid, in-progress messages and tool parts re-read by id until they complete (OpenCode
//!   updates them in place), and sessions by `time_updated`.
//!
//! The feed is chosen per database when it is first opened and logged once; a database on the
//! row feed moves to the event feed as soon as its `event` table gets rows (OpenCode upgraded in
//! place). `PRAGMA data_version` tells whether anybody committed since the last look, so an idle
//! database costs one pragma per round.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::live::DbPos;
use super::store::{self, RawMessage, RawPart, Visitor as FeedSink, has_table, open_read_only};

/// Rows read per table per round, so one huge burst cannot starve shutdown.
pub const ROUND: i64 = 5000;
/// Rows at the end of a table looked at for work in progress when following starts.
const TAIL: i64 = 500;
/// Slack on session `time_updated`: a transaction may commit after a later one's clock.
const SESSION_SLACK_MS: i64 = 5000;

/// Where the row feed is in one database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RowMarks {
    pub message: i64,
    pub part: i64,
    pub session_ms: i64,
    /// New sessions by rowid too: a `time_updated` from a clock ahead must not hide later ones.
    #[serde(default)]
    pub session: i64,
    /// Messages still in progress (re-read until they complete).
    #[serde(default)]
    pub open_messages: Vec<String>,
    /// Tool parts still pending or running.
    #[serde(default)]
    pub open_parts: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Event,
    Rows,
}

pub struct Feed {
    conn: Connection,
    kind: Kind,
    has_event_table: bool,
    data_version: Option<i64>,
    /// The last `time_updated` sent per session (the row feed rescans a window of them).
    sessions_sent: HashMap<String, i64>,
}

fn max_rowid(conn: &Connection, table: &str) -> i64 {
    if !has_table(conn, table) {
        return 0;
    }
    conn.query_row(&format!("SELECT coalesce(max(rowid), 0) FROM {table}"), [], |r| r.get(0)).unwrap_or(0)
}

fn message_open(m: &RawMessage<'_>) -> bool {
    m.role.as_deref() == Some("assistant") && m.time.as_ref().and_then(|t| t.completed).is_none() && m.error.is_none()
}

fn part_open(p: &RawPart<'_>) -> bool {
    p.part_type.as_deref() == Some("tool")
        && matches!(p.state.as_ref().and_then(|s| s.status.as_deref()), Some("pending" | "running") | None)
}

impl RowMarks {
    /// The position at the end of `conn` now, with the work in progress at its tail.
    pub fn now(conn: &Connection) -> RowMarks {
        let mut m = RowMarks {
            message: max_rowid(conn, "message"),
            part: max_rowid(conn, "part"),
            session: max_rowid(conn, "session"),
            session_ms: if has_table(conn, "session") {
                conn.query_row("SELECT coalesce(max(time_updated), 0) FROM session", [], |r| r.get(0)).unwrap_or(0)
            } else {
                0
            },
            ..Default::default()
        };
        let tail = |table: &str, from: i64, f: &mut dyn FnMut(&str, &[u8])| {
            let Ok(mut st) = conn.prepare(&format!("SELECT id, data FROM {table} WHERE rowid > ?1")) else {
                return;
            };
            let Ok(mut rows) = st.query([from - TAIL]) else {
                return;
            };
            while let Ok(Some(r)) = rows.next() {
                if let (Ok(id), Ok(data)) = (r.get_ref(0).and_then(|v| Ok(v.as_str()?)), r.get_ref(1)) {
                    f(id, data.as_bytes().unwrap_or_default());
                }
            }
        };
        let mut open = Vec::new();
        tail("message", m.message, &mut |id, data| {
            if serde_json::from_slice::<RawMessage<'_>>(data).is_ok_and(|r| message_open(&r)) {
                open.push(id.to_string());
            }
        });
        m.open_messages = open;
        let mut open = Vec::new();
        if has_table(conn, "part") {
            tail("part", m.part, &mut |id, data| {
                if serde_json::from_slice::<RawPart<'_>>(data).is_ok_and(|p| part_open(&p)) {
                    open.push(id.to_string());
                }
            });
        }
        m.open_parts = open;
        m
    }
}

impl DbPos {
    /// Where following `path` starts when it begins now.
    pub fn now(path: &Path) -> DbPos {
        let conn = open_read_only(path).ok();
        DbPos {
            path: path.to_path_buf(),
            event: conn.as_ref().map_or(0, |c| max_rowid(c, "event")),
            rows: conn.as_ref().map(RowMarks::now),
        }
    }
}

impl Feed {
    /// Opens `db` and chooses its feed (logged once by the caller through the returned name).
    pub fn open(db: &Path) -> rusqlite::Result<(Feed, &'static str)> {
        let conn = open_read_only(db)?;
        let has_event_table = has_table(&conn, "event");
        let kind = if has_event_table && max_rowid(&conn, "event") > 0 { Kind::Event } else { Kind::Rows };
        let name = match kind {
            Kind::Event => "its `event` change feed",
            Kind::Rows if has_event_table => {
                "its rows (its `event` table is empty: OpenCode 1.14/1.15 do not write it; the event feed takes over once they do)"
            }
            Kind::Rows => "its rows (no `event` table: OpenCode 1.2 – 1.13)",
        };
        Ok((Feed { conn, kind, has_event_table, data_version: None, sessions_sent: HashMap::new() }, name))
    }

    /// Whether anybody committed since the last call.
    fn changed(&mut self) -> rusqlite::Result<bool> {
        let v: i64 = self.conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok(self.data_version.replace(v) != Some(v))
    }

    /// Reads what changed after `pos` into `sink`, moving `pos`. Returns whether more rows are
    /// waiting (a round stops at [`ROUND`] rows).
    pub fn read(&mut self, db: &Path, pos: &mut DbPos, sink: &mut dyn FeedSink) -> rusqlite::Result<bool> {
        if !self.changed()? {
            return Ok(false);
        }
        if self.kind == Kind::Rows && self.has_event_table && max_rowid(&self.conn, "event") > pos.event {
            tracing::info!("{}: its `event` table is written now: following it instead of the rows", db.display());
            self.kind = Kind::Event;
        }
        let more = match self.kind {
            Kind::Event => self.read_events(db, pos, sink)?,
            Kind::Rows => {
                let marks = pos.rows.get_or_insert_with(RowMarks::default);
                self.read_rows(db, marks, sink)?
            }
        };
        // Come back for the rest even if nobody commits again.
        if more {
            self.data_version = None;
        }
        Ok(more)
    }

    fn read_events(&mut self, db: &Path, pos: &mut DbPos, sink: &mut dyn FeedSink) -> rusqlite::Result<bool> {
        let conn = &self.conn;
        let mut st =
            conn.prepare_cached("SELECT rowid, type, data FROM event WHERE rowid > ?1 ORDER BY rowid LIMIT ?2")?;
        let mut rows = st.query(rusqlite::params![pos.event, ROUND])?;
        let mut n = 0;
        let mut projects = Projects::default();
        while let Some(r) = rows.next()? {
            n += 1;
            pos.event = r.get(0)?;
            let ty = r.get_ref(1)?.as_str()?;
            let data = r.get_ref(2)?.as_bytes()?;
            let bad = |e: serde_json::Error| {
                format!("{}: event row {} ({ty}) is not valid: {e}; skipped", db.display(), pos.event)
            };
            if ty.starts_with("message.updated") {
                match serde_json::from_slice::<FeedMessage<'_>>(data) {
                    Ok(f) => sink.message("", "", 0, &f.info, "event"),
                    Err(e) => sink.error(bad(e)),
                }
            } else if ty.starts_with("session.created") || ty.starts_with("session.updated") {
                match serde_json::from_slice::<FeedSession>(data) {
                    Ok(f) => {
                        let project = projects.worktree(conn, f.info.project_id());
                        sink.session(f.info.into_info(project, "event"));
                    }
                    Err(e) => sink.error(bad(e)),
                }
            } else if ty.starts_with("message.part.updated")
                && let Ok(f) = serde_json::from_slice::<FeedPart<'_>>(data)
                && let Some(p) = f.part.to_info("", "", "")
            {
                sink.part(p);
            }
        }
        Ok(n == ROUND)
    }

    fn read_rows(&mut self, db: &Path, m: &mut RowMarks, sink: &mut dyn FeedSink) -> rusqlite::Result<bool> {
        let mut more = false;
        // SQLite gives the highest rowids again after the newest rows are deleted (an undo, a
        // session removed): a mark above the table's end goes back, and repeats are not sent.
        for (table, mark) in [("message", &mut m.message), ("part", &mut m.part), ("session", &mut m.session)] {
            let end = max_rowid(&self.conn, table);
            if end < *mark {
                *mark = (end - TAIL).max(0);
            }
        }
        // Sessions first: a message's rollup needs its session's project.
        if has_table(&self.conn, "session") {
            let mut st = self.conn.prepare_cached(
                "SELECT s.id, s.project_id, s.parent_id, s.title, s.directory, s.slug, s.version, s.time_created, \
                 s.time_updated, p.worktree, s.rowid FROM session s LEFT JOIN project p ON p.id = s.project_id \
                 WHERE s.time_updated > ?1 OR s.rowid > ?2 ORDER BY s.time_updated",
            )?;
            let mut rows = st.query([m.session_ms - SESSION_SLACK_MS, m.session])?;
            while let Some(r) = rows.next()? {
                m.session = m.session.max(r.get::<_, i64>(10)?);
                let mut s = store::session_row(r)?;
                s.project = r.get::<_, Option<String>>(9)?.filter(|_| s.project_id != "global");
                m.session_ms = m.session_ms.max(s.time_updated);
                if self.sessions_sent.get(&s.id) != Some(&s.time_updated) {
                    self.sessions_sent.insert(s.id.clone(), s.time_updated);
                    sink.session(s);
                }
            }
        }
        let mut open = std::mem::take(&mut m.open_messages);
        let mut still_open = Vec::new();
        let mut on_message =
            |id: &str, session: &str, created: i64, data: &[u8]| match serde_json::from_slice::<RawMessage<'_>>(data) {
                Ok(raw) if raw.role.is_some() => {
                    if message_open(&raw) {
                        still_open.push(id.to_string());
                    }
                    sink.message(id, session, created, &raw, "sqlite");
                }
                Ok(_) => {}
                Err(e) => sink.error(format!("{}: message row {id} is not valid JSON ({e}); skipped", db.display())),
            };
        {
            let mut st = self.conn.prepare_cached(
                "SELECT rowid, id, session_id, time_created, data FROM message WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            )?;
            let mut rows = st.query(rusqlite::params![m.message, ROUND])?;
            let mut n = 0;
            while let Some(r) = rows.next()? {
                n += 1;
                m.message = r.get(0)?;
                let id = r.get_ref(1)?.as_str()?;
                open.retain(|o| o != id);
                on_message(id, r.get_ref(2)?.as_str()?, r.get(3)?, r.get_ref(4)?.as_bytes()?);
            }
            more |= n == ROUND;
            let mut st =
                self.conn.prepare_cached("SELECT id, session_id, time_created, data FROM message WHERE id = ?1")?;
            for id in &open {
                // Gone (deleted or reverted): nothing more will come of it.
                if let Some((session, created, data)) = st
                    .query_row([id], |r| {
                        Ok((r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get_ref(3)?.as_bytes()?.to_vec()))
                    })
                    .optional()?
                {
                    on_message(id, &session, created, &data);
                }
            }
        }
        m.open_messages = still_open;
        if sink.wants_parts() && has_table(&self.conn, "part") {
            more |= self.read_parts(db, m, sink)?;
        }
        Ok(more)
    }

    fn read_parts(&mut self, db: &Path, m: &mut RowMarks, sink: &mut dyn FeedSink) -> rusqlite::Result<bool> {
        let mut open = std::mem::take(&mut m.open_parts);
        let mut still_open = Vec::new();
        let mut on_part =
            |id: &str, msg: &str, ses: &str, data: &[u8]| match serde_json::from_slice::<RawPart<'_>>(data) {
                Ok(p) => {
                    if part_open(&p) {
                        still_open.push(id.to_string());
                    }
                    if let Some(info) = p.to_info(id, msg, ses) {
                        sink.part(info);
                    }
                }
                Err(e) => sink.error(format!("{}: part row {id} is not valid JSON ({e}); skipped", db.display())),
            };
        let mut st = self.conn.prepare_cached(
            "SELECT rowid, id, message_id, session_id, data FROM part WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        )?;
        let mut rows = st.query(rusqlite::params![m.part, ROUND])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            n += 1;
            m.part = r.get(0)?;
            let id = r.get_ref(1)?.as_str()?;
            open.retain(|o| o != id);
            on_part(id, r.get_ref(2)?.as_str()?, r.get_ref(3)?.as_str()?, r.get_ref(4)?.as_bytes()?);
        }
        let mut st = self.conn.prepare_cached("SELECT message_id, session_id, data FROM part WHERE id = ?1")?;
        for id in &open {
            if let Some((msg, ses, data)) = st
                .query_row([id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get_ref(2)?.as_bytes()?.to_vec()))
                })
                .optional()?
            {
                on_part(id, &msg, &ses, &data);
            }
        }
        m.open_parts = still_open;
        Ok(n == ROUND)
    }
}

/// Worktrees of projects, looked up once per round.
#[derive(Default)]
struct Projects(HashMap<String, Option<String>>);

impl Projects {
    fn worktree(&mut self, conn: &Connection, id: &str) -> Option<String> {
        if id == "global" {
            return None;
        }
        self.0
            .entry(id.to_string())
            .or_insert_with(|| conn.query_row("SELECT worktree FROM project WHERE id = ?1", [id], |r| r.get(0)).ok())
            .clone()
    }
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
