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

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::catalog::{ASSISTANT, CMessage, CSession, Catalog, Interner, NO_PARENT};
use super::store::{Location, RawMessage, has_rows, has_table, open_read_only};
use crate::event::SessionInfo;
use crate::usage::project_key;

const MAGIC: &[u8; 8] = b"OCPIDX4\n";

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

impl DbMark {
    /// The highest rowids of a database now.
    fn read(conn: &Connection, path: &Path) -> DbMark {
        DbMark {
            path: path.to_path_buf(),
            session: max_rowid(conn, "session"),
            message: max_rowid(conn, "message"),
            event: max_rowid(conn, "event"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Header {
    /// Stamps of every database (with -wal) and of the JSON storage tree.
    stamps: Vec<FileStamp>,
    marks: Vec<DbMark>,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    let mtime = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as i128;
    Some(FileStamp { path: path.to_path_buf(), len: m.len(), mtime_ns: mtime })
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
    let dir = loc.index_dir.clone().unwrap_or_else(|| {
        match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => crate::component::home_dir().join(".cache"),
        }
        .join("ocpipe")
    });
    let key = format!("{:?}|{:?}", loc.dbs, loc.storage);
    dir.join(format!("stats-{:016x}.idx", xxhash_rust::xxh3::xxh3_64(key.as_bytes())))
}

/// The catalog for `loc`, from the index when possible; the index is refreshed. When nothing
/// changed, the message id hashes are not read: `cat.ids` is then empty (see
/// [`load_or_build_with_ids`]).
pub fn load_or_build(loc: &Location) -> Catalog {
    let (cat, pending) = load(loc, false);
    if let Some(p) = pending {
        p.write(&cat);
    }
    cat
}

/// [`load_or_build`] for `f`: a new index is written on another thread meanwhile (and done
/// when this returns).
pub fn with_catalog<R>(loc: &Location, f: impl FnOnce(&Catalog) -> R) -> R {
    let (cat, pending) = load(loc, false);
    std::thread::scope(|s| {
        if let Some(p) = pending {
            s.spawn(|| p.write(&cat));
        }
        f(&cat)
    })
}

/// An index to write for a catalog just built.
struct Pending {
    path: PathBuf,
    header: Header,
}

impl Pending {
    fn write(self, cat: &Catalog) {
        write_quietly(&self.path, &self.header, cat);
    }
}

/// [`load_or_build`], with `cat.ids` always in step with `cat.messages` (the backfill looks fork
/// copies up by message id).
pub fn load_or_build_with_ids(loc: &Location) -> Catalog {
    let (cat, pending) = load(loc, true);
    if let Some(p) = pending {
        p.write(&cat);
    }
    cat
}

/// The catalog, and the index to write when it was built anew.
fn load(loc: &Location, ids: bool) -> (Catalog, Option<Pending>) {
    let path = index_path(loc);
    let now = stamps(loc);
    let delta = read_delta(&path);
    let loaded = read(&path, |base| ids || delta.as_ref().map_or(&base.stamps, |d| &d.header.stamps) != &now);
    match loaded {
        Ok(Some((base, mut cat))) => {
            let base_id = header_id(&base);
            let mut since_base = Changes::default();
            let mut header = base;
            let mut base_names = cat.names.names().len();
            if let Some(d) = delta.filter(|d| d.base == base_id) {
                base_names = d.base_names;
                header = d.header.clone();
                since_base = d.apply(&mut cat);
            }
            // Unchanged: the snapshot is the answer (message ids were not even read).
            if header.stamps == now {
                cat.report.sessions = cat.sessions.len();
                cat.report.messages = cat.messages.len();
                return (cat, None);
            }
            if loc.storage.is_none()
                && let Some((marks, changes)) = catch_up(loc, &header, &mut cat)
            {
                since_base.messages.extend(changes.messages);
                since_base.sessions.extend(changes.sessions);
                let header = Header { stamps: stamps(loc), marks };
                // Small changes go to the delta file; past a tenth of the base, rewrite.
                if since_base.messages.len() * 10 < cat.messages.len().max(1000) {
                    let d = Delta::of(base_id, base_names, header, &cat, &since_base);
                    if let Err(e) = write_delta(&path, &d) {
                        tracing::warn!("could not save the stats index {}: {e}", path.display());
                    }
                } else {
                    write_quietly(&path, &header, &cat);
                }
                return (cat, None);
            }
        }
        Err(e) => tracing::debug!("ignoring index {}: {e}", path.display()),
        Ok(None) => {}
    }
    let marks = marks_now(loc);
    let cat = Catalog::load(loc);
    // An incomplete read (a locked or damaged database) is not kept as the answer.
    let pending = cat.report.unreadable.is_empty().then_some(Pending { path, header: Header { stamps: now, marks } });
    (cat, pending)
}

/// Positions (in the catalog) changed since the base snapshot was written.
#[derive(Debug, Default)]
struct Changes {
    messages: rustc_hash::FxHashSet<u32>,
    sessions: rustc_hash::FxHashSet<u32>,
}

/// What changed since the base snapshot, kept beside it (`.delta`, JSON) so a small change
/// costs a small write.
#[derive(Debug, Serialize, Deserialize)]
struct Delta {
    /// Identifies the base snapshot this delta applies to.
    base: u64,
    header: Header,
    /// Names the base has; `names` continue from there.
    base_names: usize,
    names: Vec<String>,
    sessions: Vec<(u32, CSession)>,
    messages: Vec<(u32, CMessage, u64)>,
}

impl Delta {
    fn of(base: u64, base_names: usize, header: Header, cat: &Catalog, changes: &Changes) -> Delta {
        let mut sessions: Vec<(u32, CSession)> =
            changes.sessions.iter().map(|&i| (i, cat.sessions[i as usize])).collect();
        sessions.sort_by_key(|s| s.0);
        let mut messages: Vec<(u32, CMessage, u64)> =
            changes.messages.iter().map(|&i| (i, cat.messages[i as usize], cat.ids[i as usize])).collect();
        messages.sort_by_key(|m| m.0);
        let names = cat.names.names()[base_names..].iter().map(|n| n.to_string()).collect();
        Delta { base, header, base_names, names, sessions, messages }
    }

    fn apply(self, cat: &mut Catalog) -> Changes {
        let mut changes = Changes::default();
        for n in &self.names {
            cat.names.id(n);
        }
        for (i, s) in self.sessions {
            match cat.sessions.get_mut(i as usize) {
                Some(slot) => *slot = s,
                None => cat.sessions.push(s),
            }
            changes.sessions.insert(i);
        }
        let with_ids = cat.ids.len() == cat.messages.len();
        for (i, m, id) in self.messages {
            match cat.messages.get_mut(i as usize) {
                Some(slot) => {
                    *slot = m;
                    if with_ids {
                        cat.ids[i as usize] = id;
                    }
                }
                None => {
                    cat.messages.push(m);
                    if with_ids {
                        cat.ids.push(id);
                    }
                }
            }
            changes.messages.insert(i);
        }
        changes
    }
}

fn header_id(h: &Header) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&serde_json::to_vec(h).unwrap_or_default())
}

fn delta_path(path: &Path) -> PathBuf {
    path.with_extension("delta")
}

fn read_delta(path: &Path) -> Option<Delta> {
    serde_json::from_slice(&std::fs::read(delta_path(path)).ok()?).ok()
}

fn write_delta(path: &Path, d: &Delta) -> io::Result<()> {
    let tmp =
        delta_path(path).with_extension(format!("delta.tmp.{}.{:08x}", std::process::id(), rand::random::<u32>()));
    private_file(&tmp)?.write_all(&serde_json::to_vec(d)?)?;
    std::fs::rename(tmp, delta_path(path))
}

/// A new file only its owner can read (the index holds session titles and project paths).
fn private_file(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)
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
    conn.query_row(&format!("SELECT coalesce(max(rowid), 0) FROM {table}"), [], |r| r.get(0)).unwrap_or(0)
}

fn marks_now(loc: &Location) -> Vec<DbMark> {
    loc.dbs
        .iter()
        .filter_map(|db| {
            let conn = open_read_only(db).ok()?;
            Some(DbMark::read(&conn, db))
        })
        .collect()
}

/// Brings `cat` up to date with what was added since `header`, reading only what changed:
/// rows after the saved rowids, and the messages and sessions named by new `event` rows.
/// `None` means rebuild.
fn catch_up(loc: &Location, header: &Header, cat: &mut Catalog) -> Option<(Vec<DbMark>, Changes)> {
    if header.marks.iter().map(|m| &m.path).ne(loc.dbs.iter()) || cat.ids.len() != cat.messages.len() {
        return None;
    }
    let mut marks = Vec::new();
    let mut changes = Changes::default();
    let mut found: Vec<(String, String, i64, String)> = Vec::new();
    let mut session_rows: Vec<SessionRow> = Vec::new();
    for old in &header.marks {
        let conn = open_read_only(&old.path).ok()?;
        let now = DbMark::read(&conn, &old.path);
        if now.session < old.session
            || now.message < old.message
            || now.event < old.event
            || has_rows(&conn, "session_message")
        {
            return None;
        }
        let mut msg_ids: Vec<String> = Vec::new();
        let mut ses_ids: Vec<String> = Vec::new();
        if has_table(&conn, "event") {
            let mut st = conn
                .prepare("SELECT type, aggregate_id, json_extract(data, '$.info.id') FROM event WHERE rowid > ?1")
                .ok()?;
            let rows = st
                .query_map([old.event], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?))
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
        let mut st = conn.prepare("SELECT id FROM session WHERE rowid > ?1").ok()?;
        ses_ids.extend(st.query_map([old.session], |r| r.get::<_, String>(0)).ok()?.flatten());
        let mut st = conn.prepare("SELECT id FROM message WHERE rowid > ?1").ok()?;
        msg_ids.extend(st.query_map([old.message], |r| r.get::<_, String>(0)).ok()?.flatten());
        ses_ids.sort();
        ses_ids.dedup();
        msg_ids.sort();
        msg_ids.dedup();
        let mut st = conn
            .prepare("SELECT s.project_id, s.title, s.time_created, p.worktree, s.parent_id FROM session s LEFT JOIN project p ON p.id = s.project_id WHERE s.id = ?1")
            .ok()?;
        for id in ses_ids {
            let row = |r: &rusqlite::Row<'_>| {
                Ok(SessionRow {
                    id: id.clone(),
                    project_id: r.get(0)?,
                    title: r.get(1)?,
                    created: r.get(2)?,
                    worktree: r.get(3)?,
                    parent: r.get(4)?,
                })
            };
            if let Ok(s) = st.query_row([&id], row) {
                session_rows.push(s);
            }
        }
        let mut st = conn.prepare("SELECT session_id, time_created, data FROM message WHERE id = ?1").ok()?;
        for id in msg_ids {
            match st.query_row([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))) {
                Ok((session, created, data)) => found.push((id, session, created, data)),
                // Named by the feed but gone since (deleted): a rebuild settles it.
                Err(rusqlite::Error::QueryReturnedNoRows) => return None,
                Err(e) => {
                    tracing::debug!("catching up on message {id}: {e}; rebuilding");
                    return None;
                }
            }
        }
        marks.push(now);
    }

    let mut session_at: rustc_hash::FxHashMap<u32, usize> =
        cat.sessions.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    for SessionRow { id, project_id, title, created, worktree, parent } in session_rows {
        let info =
            SessionInfo { project: worktree.filter(|_| project_id != "global"), project_id, ..Default::default() };
        let n = &mut cat.names;
        let parent = parent.map_or(NO_PARENT, |p: String| n.id(&p));
        let s = CSession { id: n.id(&id), project: n.id(&project_key(&info)), title: n.id(&title), created, parent };
        let at = *session_at.entry(s.id).or_insert_with(|| {
            cat.sessions.push(s);
            cat.sessions.len() - 1
        });
        cat.sessions[at] = s;
        changes.sessions.insert(at as u32);
    }
    // Where the changed messages already are: one pass over the id hashes.
    let wanted: rustc_hash::FxHashSet<u64> = found.iter().map(|f| xxhash_rust::xxh3::xxh3_64(f.0.as_bytes())).collect();
    let mut at: rustc_hash::FxHashMap<u64, usize> = rustc_hash::FxHashMap::default();
    if !wanted.is_empty() {
        for (i, h) in cat.ids.iter().enumerate() {
            if wanted.contains(h) {
                at.insert(*h, i);
            }
        }
    }
    let mut created = Vec::new();
    for (id, session, row_created, data) in found {
        let Ok(m) = serde_json::from_str::<RawMessage<'_>>(&data) else {
            return None;
        };
        let c = compact(&mut cat.names, &session, row_created, &m);
        let h = xxhash_rust::xxh3::xxh3_64(id.as_bytes());
        let i = *at.entry(h).or_insert_with(|| {
            cat.messages.push(c);
            cat.ids.push(h);
            cat.messages.len() - 1
        });
        if let Some(old) = cat.messages.get(i) {
            created.push(old.created);
        }
        cat.messages[i] = c;
        created.push(c.created);
        changes.messages.insert(i as u32);
    }
    changes.messages.extend(cat.remark_forks_at(&created));
    cat.report.sessions = cat.sessions.len();
    cat.report.messages = cat.messages.len();
    Some((marks, changes))
}

/// A session row read while catching up.
struct SessionRow {
    id: String,
    project_id: String,
    title: String,
    created: i64,
    worktree: Option<String>,
    parent: Option<String>,
}

pub fn compact(names: &mut Interner, session: &str, row_created: i64, m: &RawMessage<'_>) -> CMessage {
    let t = m.tokens();
    CMessage {
        session: names.id_in(0, session),
        provider: names.id_in(1, m.provider().unwrap_or("")),
        model: names.id_in(2, m.model_name().unwrap_or("")),
        agent: names.id_in(3, m.agent.as_deref().unwrap_or("")),
        created: m.created().unwrap_or(row_created),
        tokens: t.packed(),
        cost: m.cost(),
        flags: if m.role.as_deref() == Some("assistant") { ASSISTANT } else { 0 },
    }
}

/// One message on disk: session, provider, model, agent (u32), created (i64), tokens (5 ×
/// u32), cost (f64), flags (u8), little-endian. Message id hashes follow all messages, in the
/// same order, so an unchanged index is answered without reading them.
const RECORD: usize = 4 * 4 + 8 + 5 * 4 + 8 + 1;

fn write(path: &Path, header: &Header, cat: &Catalog) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("idx.tmp.{}.{:08x}", std::process::id(), rand::random::<u32>()));
    let mut out = io::BufWriter::with_capacity(1 << 20, private_file(&tmp)?);
    let u32le = |out: &mut io::BufWriter<std::fs::File>, v: u32| out.write_all(&v.to_le_bytes());
    out.write_all(MAGIC)?;
    let h = serde_json::to_vec(header)?;
    u32le(&mut out, h.len() as u32)?;
    out.write_all(&h)?;
    let names = cat.names.names();
    u32le(&mut out, names.len() as u32)?;
    for n in names {
        u32le(&mut out, n.len() as u32)?;
        out.write_all(n.as_bytes())?;
    }
    u32le(&mut out, cat.sessions.len() as u32)?;
    for s in &cat.sessions {
        for v in [s.id, s.project, s.title, s.parent] {
            u32le(&mut out, v)?;
        }
        out.write_all(&s.created.to_le_bytes())?;
    }
    u32le(&mut out, cat.messages.len() as u32)?;
    let mut rec = [0u8; RECORD];
    for m in &cat.messages {
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            rec[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        for v in [m.session, m.provider, m.model, m.agent] {
            put(&v.to_le_bytes());
        }
        put(&m.created.to_le_bytes());
        for v in m.tokens {
            put(&v.to_le_bytes());
        }
        put(&m.cost.to_le_bytes());
        put(&[m.flags]);
        out.write_all(&rec)?;
    }
    for id in &cat.ids {
        out.write_all(&id.to_le_bytes())?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_data()?;
    std::fs::rename(tmp, path)
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn le<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b[at..at + N].try_into().expect("in bounds")
}

/// Reads the index; message id hashes only when `want_ids(header)` says so.
fn read(path: &Path, want_ids: impl Fn(&Header) -> bool) -> io::Result<Option<(Header, Catalog)>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut r = io::BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Ok(None);
    }
    let mut h = vec![0u8; read_u32(&mut r)? as usize];
    r.read_exact(&mut h)?;
    let header: Header = serde_json::from_slice(&h)?;
    let mut names = Vec::new();
    for _ in 0..read_u32(&mut r)? {
        let mut n = vec![0u8; read_u32(&mut r)? as usize];
        r.read_exact(&mut n)?;
        names.push(String::from_utf8(n).map_err(io::Error::other)?.into_boxed_str());
    }
    let mut cat = Catalog { names: Interner::from_names(names), ..Default::default() };
    let ns = read_u32(&mut r)? as usize;
    cat.sessions.reserve_exact(ns);
    let mut s = [0u8; 24];
    for _ in 0..ns {
        r.read_exact(&mut s)?;
        let u = |at| u32::from_le_bytes(le(&s, at));
        let created = i64::from_le_bytes(le(&s, 16));
        cat.sessions.push(CSession { id: u(0), project: u(4), title: u(8), parent: u(12), created });
    }
    let nm = read_u32(&mut r)? as usize;
    cat.messages.reserve_exact(nm);
    let mut chunk = vec![0u8; RECORD * 8192];
    let mut left = nm;
    while left > 0 {
        let n = left.min(8192);
        r.read_exact(&mut chunk[..n * RECORD])?;
        for b in chunk[..n * RECORD].chunks_exact(RECORD) {
            let u = |at| u32::from_le_bytes(le(b, at));
            cat.messages.push(CMessage {
                session: u(0),
                provider: u(4),
                model: u(8),
                agent: u(12),
                created: i64::from_le_bytes(le(b, 16)),
                tokens: [u(24), u(28), u(32), u(36), u(40)],
                cost: f64::from_le_bytes(le(b, 44)),
                flags: b[52],
            });
        }
        left -= n;
    }
    // Every name a record points at exists (a damaged index is rebuilt, not trusted).
    let n = cat.names.names().len() as u32;
    let sessions_ok = cat
        .sessions
        .iter()
        .all(|s| [s.id, s.project, s.title].iter().all(|&i| i < n) && (s.parent < n || s.parent == NO_PARENT));
    let messages_ok = cat.messages.iter().all(|m| [m.session, m.provider, m.model, m.agent].iter().all(|&i| i < n));
    if !sessions_ok || !messages_ok {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "a record names a string the index does not hold"));
    }
    if want_ids(&header) {
        cat.ids.reserve_exact(nm);
        let mut b = [0u8; 8];
        for _ in 0..nm {
            r.read_exact(&mut b)?;
            cat.ids.push(u64::from_le_bytes(b));
        }
    }
    Ok(Some((header, cat)))
}
