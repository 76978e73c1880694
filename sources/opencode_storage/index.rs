//! ocpipe's index of already-read rows, so `ocpipe stats` answers in milliseconds when nothing
//! changed and reads only what is new otherwise.
//!
//! Kept in `$XDG_CACHE_HOME/ocpipe/stats-<hash>.idx` (a compact binary snapshot of the
//! [`Catalog`]), next to what it was built from: each file's size and modification time, and
//! per database the highest `rowid` read from `session`, `message` and `event`. When the files
//! are unchanged the snapshot is the answer. When only databases grew, new `session`/`message`
//! rows (by rowid) and the messages and sessions named by new `event` rows (OpenCode's change
//! feed: a message updated in place appears there) are read and merged. Anything else — a
//! database replaced or shrunk, JSON storage changed — rebuilds from scratch.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::catalog::{ASSISTANT, CMessage, CSession, Catalog, FORK_COPY, Interner};
use super::store::{Location, RawMessage, has_table, open_read_only};
use crate::event::SessionInfo;
use crate::transforms::aggregate::project_key;

const MAGIC: &[u8; 8] = b"OCPIDX2\n";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FileStamp {
    path: PathBuf,
    len: u64,
    mtime_ns: i128,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DbMark {
    path: PathBuf,
    session: i64,
    message: i64,
    event: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Header {
    /// Stamps of every database (with -wal) and of the JSON storage tree.
    stamps: Vec<FileStamp>,
    marks: Vec<DbMark>,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    let mtime = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos() as i128;
    Some(FileStamp {
        path: path.to_path_buf(),
        len: m.len(),
        mtime_ns: mtime,
    })
}

fn stamps(loc: &Location) -> Vec<FileStamp> {
    let mut out = Vec::new();
    for db in &loc.dbs {
        out.extend(stamp(db));
        out.extend(stamp(&PathBuf::from(format!("{}-wal", db.display()))));
    }
    if let Some(storage) = &loc.storage {
        // Directories change when files are added, renamed or removed.
        let mut stack = vec![storage.clone()];
        while let Some(d) = stack.pop() {
            out.extend(stamp(&d));
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

pub fn index_path(loc: &Location) -> PathBuf {
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => crate::component::home_dir().join(".cache"),
    };
    let key = format!("{:?}|{:?}", loc.dbs, loc.storage);
    cache.join("ocpipe").join(format!(
        "stats-{:016x}.idx",
        xxhash_rust::xxh3::xxh3_64(key.as_bytes())
    ))
}

/// The catalog for `loc`, from the index when possible; the index is refreshed.
pub fn load_or_build(loc: &Location) -> Catalog {
    let path = index_path(loc);
    let now = stamps(loc);
    match read(&path) {
        Ok(Some((header, mut cat))) if header.stamps == now => {
            cat.report.sessions = cat.sessions.len();
            cat.report.messages = cat.messages.len();
            return cat;
        }
        Ok(Some((header, mut cat))) if loc.storage.is_none() => {
            if let Some(marks) = catch_up(loc, &header, &mut cat) {
                write_quietly(
                    &path,
                    &Header {
                        stamps: stamps(loc),
                        marks,
                    },
                    &cat,
                );
                return cat;
            }
        }
        Err(e) => tracing::debug!("ignoring index {}: {e}", path.display()),
        _ => {}
    }
    let marks = marks_now(loc);
    let cat = Catalog::load(loc);
    write_quietly(&path, &Header { stamps: now, marks }, &cat);
    cat
}

fn write_quietly(path: &Path, header: &Header, cat: &Catalog) {
    if let Err(e) = write(path, header, cat) {
        tracing::warn!("could not save the stats index {}: {e}", path.display());
    }
}

fn max_rowid(conn: &Connection, table: &str) -> i64 {
    if !has_table(conn, table) {
        return 0;
    }
    conn.query_row(
        &format!("SELECT coalesce(max(rowid), 0) FROM {table}"),
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

fn marks_now(loc: &Location) -> Vec<DbMark> {
    loc.dbs
        .iter()
        .filter_map(|db| {
            let conn = open_read_only(db).ok()?;
            Some(DbMark {
                path: db.clone(),
                session: max_rowid(&conn, "session"),
                message: max_rowid(&conn, "message"),
                event: max_rowid(&conn, "event"),
            })
        })
        .collect()
}

/// Brings `cat` up to date with what was added since `header`. `None` means rebuild.
fn catch_up(loc: &Location, header: &Header, cat: &mut Catalog) -> Option<Vec<DbMark>> {
    if header.marks.iter().map(|m| &m.path).ne(loc.dbs.iter()) {
        return None;
    }
    let mut marks = Vec::new();
    let mut by_id: HashMap<u64, usize> = cat.ids.iter().enumerate().map(|(i, h)| (*h, i)).collect();
    let mut session_at: HashMap<u32, usize> = cat
        .sessions
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id, i))
        .collect();
    for old in &header.marks {
        let conn = open_read_only(&old.path).ok()?;
        let now = DbMark {
            path: old.path.clone(),
            session: max_rowid(&conn, "session"),
            message: max_rowid(&conn, "message"),
            event: max_rowid(&conn, "event"),
        };
        if now.session < old.session
            || now.message < old.message
            || now.event < old.event
            || has_table(&conn, "session_message")
        {
            return None;
        }
        // Messages and sessions named by the change feed since last time.
        let mut msg_ids: Vec<String> = Vec::new();
        let mut ses_ids: Vec<String> = Vec::new();
        if has_table(&conn, "event") {
            let mut st = conn.prepare("SELECT type, aggregate_id, json_extract(data, '$.info.id') FROM event WHERE rowid > ?1").ok()?;
            let rows = st
                .query_map([old.event], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                })
                .ok()?;
            for (ty, aggregate, info_id) in rows.flatten() {
                if ty.starts_with("message.updated") {
                    msg_ids.extend(info_id);
                } else if ty.starts_with("session.") {
                    ses_ids.push(aggregate);
                }
            }
        }
        let mut st = conn
            .prepare("SELECT id FROM session WHERE rowid > ?1")
            .ok()?;
        ses_ids.extend(
            st.query_map([old.session], |r| r.get::<_, String>(0))
                .ok()?
                .flatten(),
        );
        let mut st = conn
            .prepare("SELECT id FROM message WHERE rowid > ?1")
            .ok()?;
        msg_ids.extend(
            st.query_map([old.message], |r| r.get::<_, String>(0))
                .ok()?
                .flatten(),
        );
        ses_ids.sort();
        ses_ids.dedup();
        msg_ids.sort();
        msg_ids.dedup();

        let projects: HashMap<String, String> = if has_table(&conn, "project") {
            let mut st = conn.prepare("SELECT id, worktree FROM project").ok()?;
            st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .ok()?
                .flatten()
                .collect()
        } else {
            HashMap::new()
        };
        let mut st = conn
            .prepare("SELECT project_id, title, time_created FROM session WHERE id = ?1")
            .ok()?;
        for id in &ses_ids {
            let Ok((project_id, title, created)) = st.query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            }) else {
                continue;
            };
            let info = SessionInfo {
                project: if project_id == "global" {
                    None
                } else {
                    projects.get(&project_id).cloned()
                },
                project_id,
                ..Default::default()
            };
            let n = &mut cat.names;
            let s = CSession {
                id: n.id(id),
                project: n.id(&project_key(&info)),
                title: n.id(&title),
                created,
            };
            match session_at.get(&s.id) {
                Some(&i) => cat.sessions[i] = s,
                None => {
                    session_at.insert(s.id, cat.sessions.len());
                    cat.sessions.push(s);
                }
            }
        }
        let mut st = conn
            .prepare("SELECT session_id, time_created, data FROM message WHERE id = ?1")
            .ok()?;
        for id in &msg_ids {
            let Ok((session, created, data)) = st.query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            }) else {
                continue;
            };
            let Ok(m) = serde_json::from_slice::<RawMessage<'_>>(&data) else {
                continue;
            };
            let c = compact(&mut cat.names, &session, created, &m);
            let h = xxhash_rust::xxh3::xxh3_64(id.as_bytes());
            match by_id.get(&h) {
                Some(&i) => cat.messages[i] = c,
                None => {
                    by_id.insert(h, cat.messages.len());
                    cat.messages.push(c);
                    cat.ids.push(h);
                }
            }
        }
        marks.push(now);
    }
    for m in &mut cat.messages {
        m.flags &= !FORK_COPY;
    }
    cat.mark_fork_copies();
    cat.report.sessions = cat.sessions.len();
    cat.report.messages = cat.messages.len();
    Some(marks)
}

pub fn compact(
    names: &mut Interner,
    session: &str,
    row_created: i64,
    m: &RawMessage<'_>,
) -> CMessage {
    let none = names.id("");
    let sat = |v: u64| v.min(u32::MAX as u64) as u32;
    let t = m.tokens();
    CMessage {
        session: names.id(session),
        provider: m.provider().map_or(none, |p| names.id(p)),
        model: m.model_name().map_or(none, |x| names.id(x)),
        agent: m.agent.as_deref().map_or(none, |a| names.id(a)),
        created: m.created().unwrap_or(row_created),
        tokens: [
            sat(t.input),
            sat(t.output),
            sat(t.reasoning),
            sat(t.cache_read),
            sat(t.cache_write),
        ],
        cost: m.cost.filter(|c| c.is_finite()).unwrap_or(0.0),
        flags: if m.role.as_deref() == Some("assistant") {
            ASSISTANT
        } else {
            0
        },
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn write(path: &Path, header: &Header, cat: &Catalog) -> io::Result<()> {
    let mut out = Vec::with_capacity(64 + cat.messages.len() * 61);
    out.extend_from_slice(MAGIC);
    let h = serde_json::to_vec(header)?;
    put_u32(&mut out, h.len() as u32);
    out.extend_from_slice(&h);
    let names = cat.names.names();
    put_u32(&mut out, names.len() as u32);
    for n in names {
        put_u32(&mut out, n.len() as u32);
        out.extend_from_slice(n.as_bytes());
    }
    put_u32(&mut out, cat.sessions.len() as u32);
    for s in &cat.sessions {
        for v in [s.id, s.project, s.title] {
            put_u32(&mut out, v);
        }
        out.extend_from_slice(&s.created.to_le_bytes());
    }
    put_u32(&mut out, cat.messages.len() as u32);
    for (m, id) in cat.messages.iter().zip(&cat.ids) {
        for v in [m.session, m.provider, m.model, m.agent] {
            put_u32(&mut out, v);
        }
        out.extend_from_slice(&m.created.to_le_bytes());
        for v in m.tokens {
            put_u32(&mut out, v);
        }
        out.extend_from_slice(&m.cost.to_le_bytes());
        out.push(m.flags);
        out.extend_from_slice(&id.to_le_bytes());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("idx.tmp");
    std::fs::File::create(&tmp)?.write_all(&out)?;
    std::fs::rename(tmp, path)
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.0.len() < n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated index",
            ));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
}

fn read(path: &Path) -> io::Result<Option<(Header, Catalog)>> {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut c = Cursor(&bytes);
    if c.take(8)? != MAGIC {
        return Ok(None);
    }
    let n = c.u32()? as usize;
    let header: Header = serde_json::from_slice(c.take(n)?)?;
    let mut names = Vec::new();
    for _ in 0..c.u32()? {
        let n = c.u32()? as usize;
        names.push(
            std::str::from_utf8(c.take(n)?)
                .map_err(io::Error::other)?
                .into(),
        );
    }
    let mut cat = Catalog {
        names: Interner::from_names(names),
        ..Default::default()
    };
    let ns = c.u32()? as usize;
    cat.sessions.reserve(ns);
    for _ in 0..ns {
        cat.sessions.push(CSession {
            id: c.u32()?,
            project: c.u32()?,
            title: c.u32()?,
            created: c.u64()? as i64,
        });
    }
    let nm = c.u32()? as usize;
    cat.messages.reserve(nm);
    cat.ids.reserve(nm);
    for _ in 0..nm {
        let (session, provider, model, agent) = (c.u32()?, c.u32()?, c.u32()?, c.u32()?);
        let created = c.u64()? as i64;
        let tokens = [c.u32()?, c.u32()?, c.u32()?, c.u32()?, c.u32()?];
        let cost = f64::from_bits(c.u64()?);
        let flags = c.take(1)?[0];
        cat.messages.push(CMessage {
            session,
            provider,
            model,
            agent,
            created,
            tokens,
            cost,
            flags,
        });
        cat.ids.push(c.u64()?);
    }
    Ok(Some((header, cat)))
}
