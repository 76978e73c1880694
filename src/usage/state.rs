//! Token usage state on disk, so what a component summed comes back right after a restart (the
//! `aggregate` transform's rollups, the page's usage).
//!
//! What is kept is the input, not the sums: every session (its project, title, directory,
//! parent, times) and every message (its model, agent, tokens, cost, fork flag) the component
//! has taken in, in a small SQLite file in its state directory. On start they are replayed, so a
//! change of grouping or of the day (`range = "today"`) is computed afresh. The component holds
//! on to its input events' finalizers until what they brought is written here
//! ([`super::Keeper`]): the source's checkpoint never moves past state that would be lost.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use crate::event::{MessageInfo, SessionInfo, Tokens};

/// One record of the state, as it was taken in.
pub enum Record {
    Session(SessionInfo),
    Message(MessageInfo),
}

pub struct StateFile {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS session (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, project TEXT, title TEXT NOT NULL,
  directory TEXT NOT NULL DEFAULT '', parent_id TEXT, created INTEGER NOT NULL DEFAULT 0, updated INTEGER NOT NULL DEFAULT 0,
  revision INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS message (
  id TEXT PRIMARY KEY, session_id TEXT NOT NULL, role TEXT NOT NULL, provider TEXT, model TEXT, agent TEXT,
  created INTEGER NOT NULL, input INTEGER NOT NULL, output INTEGER NOT NULL, reasoning INTEGER NOT NULL,
  cache_read INTEGER NOT NULL, cache_write INTEGER NOT NULL, cost REAL NOT NULL, fork_copy INTEGER NOT NULL,
  revision INTEGER NOT NULL DEFAULT 0
);
";

/// A revision as stored (revisions fit i64 until the year 2262).
fn revision(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    r.get::<_, i64>(i).map(|v| v.max(0) as u64)
}

/// Token counts are stored as SQLite integers (i64); larger ones saturate.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl StateFile {
    pub fn open(path: &Path) -> rusqlite::Result<StateFile> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A commit is on disk before the finalizers it covers are released.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        // Files from before sessions kept their directory, parent and times.
        let has_parent = conn.prepare("SELECT parent_id FROM session LIMIT 0").is_ok();
        if !has_parent {
            conn.execute_batch(
                "ALTER TABLE session ADD COLUMN directory TEXT NOT NULL DEFAULT '';
                 ALTER TABLE session ADD COLUMN parent_id TEXT;
                 ALTER TABLE session ADD COLUMN created INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE session ADD COLUMN updated INTEGER NOT NULL DEFAULT 0;",
            )?;
        }
        // Files from before revisions (records from another machine kept their order).
        for table in ["session", "message"] {
            if conn.prepare(&format!("SELECT revision FROM {table} LIMIT 0")).is_err() {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN revision INTEGER NOT NULL DEFAULT 0"))?;
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(StateFile { conn, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every session, then every message, as they were taken in, with their revisions (0:
    /// read on this machine).
    pub fn load(&self, f: &mut dyn FnMut(Record, u64)) -> rusqlite::Result<()> {
        let mut st = self.conn.prepare(
            "SELECT id, project_id, project, title, directory, parent_id, created, updated, revision FROM session",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            f(
                Record::Session(SessionInfo {
                    id: r.get(0)?,
                    project_id: r.get(1)?,
                    project: r.get(2)?,
                    title: r.get(3)?,
                    directory: r.get(4)?,
                    parent_id: r.get(5)?,
                    time_created: r.get(6)?,
                    time_updated: r.get(7)?,
                    ..Default::default()
                }),
                revision(r, 8)?,
            );
        }
        let mut st = self.conn.prepare(
            "SELECT id, session_id, role, provider, model, agent, created, input, output, reasoning, cache_read, \
             cache_write, cost, fork_copy, revision FROM message",
        )?;
        let mut rows = st.query([])?;
        let n = |r: &rusqlite::Row<'_>, i| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
        while let Some(r) = rows.next()? {
            f(
                Record::Message(MessageInfo {
                    id: r.get(0)?,
                    session_id: r.get(1)?,
                    role: r.get(2)?,
                    provider_id: r.get(3)?,
                    model_id: r.get(4)?,
                    agent: r.get(5)?,
                    time_created: r.get(6)?,
                    tokens: Tokens {
                        input: n(r, 7)?,
                        output: n(r, 8)?,
                        reasoning: n(r, 9)?,
                        cache_read: n(r, 10)?,
                        cache_write: n(r, 11)?,
                    },
                    cost: r.get(12)?,
                    fork_copy: r.get(13)?,
                    ..Default::default()
                }),
                revision(r, 14)?,
            );
        }
        Ok(())
    }

    /// Writes sessions and messages (with their revisions) in one durable transaction.
    pub fn write(&mut self, sessions: &[(SessionInfo, u64)], messages: &[(MessageInfo, u64)]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO session (id, project_id, project, title, directory, parent_id, created, updated, revision) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT(id) DO UPDATE SET project_id = ?2, project = ?3, \
                 title = ?4, directory = ?5, parent_id = ?6, created = ?7, updated = ?8, revision = ?9",
            )?;
            for (s, rev) in sessions {
                st.execute(params![
                    s.id,
                    s.project_id,
                    s.project,
                    s.title,
                    s.directory,
                    s.parent_id,
                    s.time_created,
                    s.time_updated,
                    int(*rev)
                ])?;
            }
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO message (id, session_id, role, provider, model, agent, created, input, output, \
                 reasoning, cache_read, cache_write, cost, fork_copy, revision) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?;
            for (m, rev) in messages {
                let t = &m.tokens;
                st.execute(params![
                    m.id,
                    m.session_id,
                    m.role,
                    m.provider_id,
                    m.model_id,
                    m.agent,
                    m.time_created,
                    int(t.input),
                    int(t.output),
                    int(t.reasoning),
                    int(t.cache_read),
                    int(t.cache_write),
                    m.cost,
                    m.fork_copy,
                    int(*rev)
                ])?;
            }
        }
        tx.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_from_before_session_details_is_brought_up_and_keeps_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE session (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, project TEXT, title TEXT NOT NULL);
             INSERT INTO session VALUES ('s1', 'p1', '/w/app', 'Old title');",
        )
        .unwrap();
        drop(old);
        let mut f = StateFile::open(&path).unwrap();
        let session = SessionInfo {
            id: "s2".into(),
            project_id: "p1".into(),
            title: "Child".into(),
            directory: "/w/app".into(),
            parent_id: Some("s1".into()),
            time_created: 5,
            time_updated: 9,
            ..Default::default()
        };
        f.write(&[(session, 77)], &[]).unwrap();
        let mut got = Vec::new();
        let mut revisions = Vec::new();
        f.load(&mut |r, rev| {
            if let Record::Session(s) = r {
                got.push(s);
                revisions.push(rev);
            }
        })
        .unwrap();
        got.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!((got[0].id.as_str(), got[0].title.as_str(), got[0].parent_id.as_deref()), ("s1", "Old title", None));
        assert_eq!(
            (got[1].parent_id.as_deref(), got[1].directory.as_str(), got[1].time_updated),
            (Some("s1"), "/w/app", 9)
        );
        revisions.sort();
        assert_eq!(revisions, [0, 77], "the old record has none, the new one keeps its own");
        // Opened again: nothing to bring up twice.
        drop(f);
        StateFile::open(&path).unwrap();
    }
}
