//! Tailing many JSONL files with delivery-checked checkpoints.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{StartAt, TraceJsonlConfig};
use crate::checkpoint::CheckpointFile;
use crate::component::{Context, SourceContext};
use crate::event::{Event, Finalizer, Payload, Status, TraceRecord};
use crate::watch::{Changes, Watch};

/// Bytes of the first line that identify a file.
const FINGERPRINT_BYTES: usize = 1024;
/// Bytes read from one file before others get a turn.
const READ_BUDGET: usize = 1024 * 1024;
/// Bytes read in one round from all files together (their events are held until sent); the
/// next round starts after the last file this one read, so every file gets its turn.
const ROUND_BUDGET: usize = 4 * 1024 * 1024;
/// Rounds one [`Reader::read_new`] call reads at most (a file growing faster than that cannot
/// keep a viewer from its keys).
const VIEW_ROUNDS: usize = 16;
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Checkpoint entries of files not seen for this long are forgotten.
const FORGET_AFTER_SECS: i64 = 30 * 24 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    path: String,
    offset: u64,
    line: u64,
    updated: i64,
}

/// Delivery state of the lines read from one file, in order.
#[derive(Default)]
struct AckLog {
    front_seq: u64,
    /// (end offset, line number, state: 0 pending, 1 done, 2 failed)
    entries: VecDeque<(u64, u64, u8)>,
    blocked: bool,
    /// Entries still waiting for their ack (a failed one has had its answer).
    unacked: usize,
}

impl AckLog {
    fn push(&mut self, end: u64, line: u64, done: bool) -> u64 {
        self.entries.push_back((end, line, if done { 1 } else { 0 }));
        self.unacked += usize::from(!done);
        self.front_seq + self.entries.len() as u64 - 1
    }

    fn mark(&mut self, seq: u64, status: Status) {
        if let Some(i) = seq.checked_sub(self.front_seq)
            && let Some(e) = self.entries.get_mut(i as usize)
        {
            if e.2 == 0 {
                self.unacked -= 1;
            }
            e.2 = if status == Status::Delivered { 1 } else { 2 };
        }
    }

    /// Pops delivered lines from the front; returns the new committed position, if it moved.
    fn advance(&mut self) -> Option<(u64, u64)> {
        let mut moved = None;
        while let Some(&(end, line, state)) = self.entries.front() {
            match state {
                1 => {
                    self.entries.pop_front();
                    self.front_seq += 1;
                    moved = Some((end, line));
                }
                2 => {
                    self.blocked = true;
                    break;
                }
                _ => break,
            }
        }
        moved
    }

    /// Lines whose delivery is not known yet (a failed line is known: it stays before the
    /// checkpoint, but nothing waits for it).
    fn pending(&self) -> usize {
        self.unacked
    }
}

struct Tracked {
    path: PathBuf,
    fingerprint: u64,
    instance: u64,
    /// Open while the file is active; idle files are closed (at most `max_open` stay open) and
    /// reopened at `read_pos` when they change.
    reader: Option<BufReader<File>>,
    /// When the file was last read from (for closing the least recently active first).
    last_read: Instant,
    /// Bytes consumed by the reader (including a partial last line).
    read_pos: u64,
    /// Lines completed so far.
    line: u64,
    partial: Vec<u8>,
    /// Inside a line longer than the limit: discard up to its newline.
    skipping: bool,
    acks: AckLog,
    committed: (u64, u64),
    eof: bool,
}

enum Line {
    Data { data: Vec<u8>, line: u64, end: u64 },
    TooLong { line: u64, end: u64 },
}

/// A file's identity: device and inode (the fingerprint is checked beside it).
type FileId = (u64, u64);

type Ack = (FileId, u64, u64, Status);

fn file_id(m: &std::fs::Metadata) -> FileId {
    (m.dev(), m.ino())
}

/// The checkpoint key of a file: its fingerprint with its identity, so two files that begin
/// alike keep apart.
fn key_of(fp: u64, id: FileId) -> String {
    format!("{fp:016x}:{}:{}", id.0, id.1)
}

/// A line of a followed file, parsed.
pub struct Found {
    pub path: Arc<Path>,
    pub line: u64,
    /// The line's length in bytes.
    pub bytes: usize,
    pub record: Result<TraceRecord, String>,
    /// Where a record's acknowledgement goes: file, instance, sequence.
    ack: Option<(FileId, u64, u64)>,
}

pub struct Reader {
    root: PathBuf,
    pattern: String,
    exclude: GlobSet,
    max_line: usize,
    start_at_end: bool,
    /// `None` for a viewer, which keeps no place.
    checkpoint: Option<CheckpointFile>,
    saved: HashMap<String, Saved>,
    files: HashMap<FileId, Tracked>,
    /// Files kept open at most.
    max_open: usize,
    next_instance: u64,
    ack_tx: mpsc::UnboundedSender<Ack>,
    ack_rx: mpsc::UnboundedReceiver<Ack>,
    dirty: bool,
    first_scan: bool,
    warned_missing: bool,
    /// Where the last round stopped for lack of budget.
    resume_after: Option<PathBuf>,
    cx: Context,
}

impl Reader {
    pub fn new(cfg: &TraceJsonlConfig, cx: &Context) -> anyhow::Result<Reader> {
        let checkpoint = CheckpointFile::new(cx.data_dir()?.join("checkpoints.json"));
        Reader::with_checkpoint(cfg, cx, Some(checkpoint))
    }

    /// A reader that starts at the beginning of every file and keeps no checkpoint (a viewer's).
    pub fn unsaved(cfg: &TraceJsonlConfig, cx: &Context) -> anyhow::Result<Reader> {
        let mut r = Reader::with_checkpoint(cfg, cx, None)?;
        r.start_at_end = false;
        Ok(r)
    }

    fn with_checkpoint(
        cfg: &TraceJsonlConfig,
        cx: &Context,
        checkpoint: Option<CheckpointFile>,
    ) -> anyhow::Result<Reader> {
        let root = cx.resolve(&cfg.path);
        let mut b = GlobSetBuilder::new();
        for p in &cfg.exclude {
            b.add(Glob::new(p)?);
        }
        let saved = match &checkpoint {
            Some(c) => c.load::<HashMap<String, Saved>>()?.unwrap_or_default(),
            None => HashMap::new(),
        };
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        Ok(Reader {
            pattern: root.to_string_lossy().into_owned(),
            root,
            exclude: b.build()?,
            max_line: cfg.max_line_bytes,
            start_at_end: cfg.start_at == StartAt::End,
            checkpoint,
            saved,
            files: HashMap::new(),
            max_open: cfg.max_open_files,
            next_instance: 0,
            ack_tx,
            ack_rx,
            dirty: false,
            first_scan: true,
            warned_missing: false,
            resume_after: None,
            cx: cx.clone(),
        })
    }

    /// The async side only waits (notifications, the slow poll, acknowledgements) and sends;
    /// listing, reading and checkpoint writes run in rounds on a blocking thread.
    pub async fn run(self, sc: SourceContext, follow: bool, poll: Duration) -> anyhow::Result<()> {
        let SourceContext { cx: _, mut out, shutdown } = sc;
        let mut watch = follow.then(|| self.watch());
        let mut me = self;
        let mut last_flush = Instant::now();
        // The first round looks at everything.
        let mut changes = Changes { rescan: true, ..Default::default() };
        loop {
            // With live notifications, only the files they name are looked at; otherwise (and
            // on each slow poll) every file is.
            let live = !changes.rescan && watch.as_ref().is_some_and(Watch::is_live);
            let only = live.then(|| std::mem::take(&mut changes.paths));
            let new_files = only.as_ref().is_none_or(|paths| me.names_a_new_file(paths));
            let flush = last_flush.elapsed() >= CHECKPOINT_EVERY;
            let stop = shutdown.clone();
            let (back, events, more) = tokio::task::spawn_blocking(move || {
                if new_files {
                    me.scan();
                }
                let (found, more) = me.read_all(&stop, only.as_ref());
                let events = me.events_of(found);
                me.drain_acks();
                if flush {
                    me.save();
                }
                (me, events, more)
            })
            .await?;
            me = back;
            if flush {
                last_flush = Instant::now();
            }
            out.send_all(events).await;
            if shutdown.is_cancelled() || (!follow && !more) {
                break;
            }
            if more {
                // What is left to read is in files already named: look at them all again.
                changes = Changes { rescan: true, ..Default::default() };
                continue;
            }
            me.cx.metrics.set_caught_up();
            let live = watch.as_ref().is_some_and(Watch::is_live);
            // Notifications tell of changes; the poll only backs them up.
            let wait = if live { (poll * 20).max(Duration::from_secs(5)) } else { poll };
            let polled = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = async { watch.as_ref().expect("follow").changed().await }, if watch.is_some() => false,
                _ = tokio::time::sleep(wait) => true,
                Some(ack) = me.ack_rx.recv() => { me.on_ack(ack); false }
            };
            changes = watch.as_mut().map(Watch::take).unwrap_or_default();
            // Acks only: nothing to read unless a notification came with them.
            changes.rescan |= polled;
        }
        // Let everything downstream drain, then record what was delivered.
        drop(out);
        while me.pending() > 0 {
            match me.ack_rx.recv().await {
                Some(ack) => me.on_ack(ack),
                None => break,
            }
            me.drain_acks();
        }
        tokio::task::spawn_blocking(move || me.save()).await?;
        Ok(())
    }

    pub fn watch(&self) -> Watch {
        let dir = if self.root.is_dir() || !self.pattern.contains(['*', '?', '[']) {
            self.root.clone()
        } else {
            literal_dir(&self.pattern)
        };
        let exclude = self.exclude.clone();
        let filter = Arc::new(move |p: &Path| {
            p.extension().is_some_and(|e| e == "jsonl") && !p.file_name().is_some_and(|n| exclude.is_match(n))
        });
        Watch::new(&self.cx.id, vec![(dir, notify::RecursiveMode::NonRecursive)], filter)
    }

    /// Whether any of `paths` is not a file being followed (a new file, or a rename).
    fn names_a_new_file(&self, paths: &std::collections::HashSet<PathBuf>) -> bool {
        let tracked: std::collections::HashSet<&Path> = self.files.values().map(|t| t.path.as_path()).collect();
        paths.iter().any(|p| !tracked.contains(p.as_path()))
    }

    fn candidates(&mut self) -> Vec<PathBuf> {
        let paths: Vec<PathBuf> = if self.root.is_dir() {
            match std::fs::read_dir(&self.root) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                    .collect(),
                Err(e) => {
                    self.cx.error(format_args!("cannot list {}: {e}", self.root.display()));
                    Vec::new()
                }
            }
        } else {
            glob::glob(&self.pattern).map(|g| g.filter_map(Result::ok).collect()).unwrap_or_default()
        };
        if paths.is_empty() && !self.warned_missing && !self.root.exists() && !self.pattern.contains(['*', '?', '[']) {
            tracing::warn!(component = &*self.cx.id, "{} does not exist (yet); waiting for it", self.root.display());
            self.warned_missing = true;
        }
        let mut paths: Vec<PathBuf> = paths
            .into_iter()
            .filter(|p| p.is_file())
            .filter(|p| !p.file_name().is_some_and(|n| self.exclude.is_match(n)))
            .collect();
        paths.sort();
        paths
    }

    /// Finds new, renamed and replaced files. A file is the same file while its device, inode
    /// and fingerprint are; a renamed one keeps its place.
    fn scan(&mut self) {
        let start_at_end = self.first_scan && self.start_at_end;
        self.first_scan = false;
        for path in self.candidates() {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let id = file_id(&meta);
            if let Some(t) = self.files.get(&id)
                && t.path == path
            {
                continue;
            }
            let fp = match fingerprint(&path) {
                Ok(Some(fp)) => fp,
                Ok(None) => continue, // no complete first line yet
                Err(e) => {
                    self.cx.error(format_args!("cannot read {}: {e}", path.display()));
                    continue;
                }
            };
            if let Some(t) = self.files.get_mut(&id)
                && t.fingerprint == fp
            {
                tracing::debug!(component = &*self.cx.id, "{} is now {}", t.path.display(), path.display());
                t.path = path;
                continue;
            }
            // An inode reused by a different file: the old one is gone.
            self.files.remove(&id);
            let key = key_of(fp, id);
            // Checkpoints written before files were told apart by inode are keyed by the
            // fingerprint alone.
            let saved = self.saved.get(&key).or_else(|| self.saved.get(&format!("{fp:016x}")));
            let (offset, line) = match saved {
                Some(s) if s.offset <= meta.len() => (s.offset, s.line),
                Some(_) => {
                    tracing::warn!(
                        component = &*self.cx.id,
                        "{} is shorter than its checkpoint: reading it again from the start",
                        path.display()
                    );
                    (0, 0)
                }
                None if start_at_end => (meta.len(), 0),
                None => (0, 0),
            };
            self.next_instance += 1;
            self.files.insert(
                id,
                Tracked {
                    path,
                    fingerprint: fp,
                    instance: self.next_instance,
                    reader: None,
                    last_read: Instant::now(),
                    read_pos: offset,
                    line,
                    partial: Vec::new(),
                    skipping: false,
                    acks: AckLog::default(),
                    committed: (offset, line),
                    eof: false,
                },
            );
            self.dirty = true;
        }
    }

    /// Closes the least recently read files until fewer than `max_open` are open.
    fn make_room(&mut self) {
        let open = self.files.values().filter(|t| t.reader.is_some()).count();
        if open < self.max_open {
            return;
        }
        let mut by_age: Vec<(Instant, FileId)> =
            self.files.iter().filter(|(_, t)| t.reader.is_some()).map(|(k, t)| (t.last_read, *k)).collect();
        by_age.sort();
        for (_, k) in by_age.into_iter().take(open + 1 - self.max_open) {
            if let Some(t) = self.files.get_mut(&k) {
                t.reader = None;
            }
        }
    }

    /// Reads the files (all, or `only` those), each up to its budget and all together up to
    /// the round's. Returns the events and whether any file has more to read now.
    fn read_all(
        &mut self,
        shutdown: &CancellationToken,
        only: Option<&std::collections::HashSet<PathBuf>>,
    ) -> (Vec<Found>, bool) {
        let mut events = Vec::new();
        let mut round_left = ROUND_BUDGET;
        let mut keys: Vec<FileId> =
            self.files.iter().filter(|(_, t)| only.is_none_or(|o| o.contains(&t.path))).map(|(k, _)| *k).collect();
        keys.sort_by(|a, b| self.files[a].path.cmp(&self.files[b].path));
        if let Some(after) = self.resume_after.take() {
            let first = keys.partition_point(|k| self.files[k].path <= after);
            keys.rotate_left(first);
        }
        let mut more = false;
        for id in keys {
            if shutdown.is_cancelled() {
                return (events, false);
            }
            if round_left == 0 {
                // The rest waits for the next round, after these are sent.
                return (events, true);
            }
            self.resume_after = Some(self.files[&id].path.clone());
            let t = &self.files[&id];
            let meta = match &t.reader {
                Some(r) => r.get_ref().metadata(),
                None => std::fs::metadata(&t.path),
            };
            let len = match meta {
                Ok(m) if t.reader.is_some() || file_id(&m) == id => m.len(),
                // Gone, or another file at its path now: done once delivered.
                _ => {
                    if t.acks.pending() == 0 {
                        self.files.remove(&id);
                    }
                    continue;
                }
            };
            // Truncated in place: start over as a new file.
            if len < t.read_pos {
                tracing::warn!(
                    component = &*self.cx.id,
                    "{} was truncated: reading it again from the start",
                    t.path.display()
                );
                self.saved.remove(&key_of(t.fingerprint, id));
                self.files.remove(&id);
                self.dirty = true;
                more = true;
                continue;
            }
            if len == t.read_pos && t.reader.is_none() {
                continue;
            }
            if t.reader.is_none() {
                self.make_room();
            }
            let t = self.files.get_mut(&id).expect("key from map");
            if t.reader.is_none() {
                match open_at(&t.path, t.read_pos) {
                    Ok(r) => t.reader = Some(r),
                    Err(e) => {
                        let msg = format!("cannot open {}: {e}", t.path.display());
                        self.cx.error(format_args!("{msg}"));
                        continue;
                    }
                }
            }
            t.last_read = Instant::now();
            let before = t.read_pos;
            let (lines, eof) = match read_lines(t, self.max_line, READ_BUDGET.min(round_left)) {
                Ok(x) => x,
                Err(e) => {
                    let msg = format!("reading {}: {e}", t.path.display());
                    t.reader = None;
                    self.cx.error(format_args!("{msg}"));
                    continue;
                }
            };
            t.eof = eof;
            more |= !eof;
            round_left = round_left.saturating_sub((t.read_pos - before) as usize);
            let (path, instance): (Arc<Path>, u64) = (t.path.as_path().into(), t.instance);
            for line in lines {
                self.parse(id, instance, &path, line, &mut events);
            }
            self.drain_acks();
            // Read to its end: closed (its buffer freed) until a change names it again.
            let t = self.files.get_mut(&id).expect("key from map");
            if t.eof {
                t.reader = None;
            }
            // A rotated-away or deleted file that is fully read and delivered is done.
            let t = &self.files[&id];
            if t.eof && t.acks.pending() == 0 {
                let gone = std::fs::metadata(&t.path).map(|m| file_id(&m) != id).unwrap_or(true);
                if gone {
                    self.files.remove(&id);
                }
            }
        }
        (events, more)
    }

    /// Parses a line; a record's acknowledgement is counted before it (blank and bad lines are
    /// done at once).
    fn parse(&mut self, file: FileId, instance: u64, path: &Arc<Path>, line: Line, found: &mut Vec<Found>) {
        let t = self.files.get_mut(&file).expect("tracked");
        let (line, bytes, record, ack) = match line {
            Line::TooLong { line, end } => {
                t.acks.push(end, line, true);
                (line, 0, Err(format!("line longer than max_line_bytes ({})", self.max_line)), None)
            }
            Line::Data { data, line, end } => {
                let text = data.strip_suffix(b"\r").unwrap_or(&data);
                if text.iter().all(u8::is_ascii_whitespace) {
                    t.acks.push(end, line, true);
                    return;
                }
                match serde_json::from_slice::<TraceRecord>(text) {
                    Ok(rec) => {
                        let seq = t.acks.push(end, line, false);
                        (line, data.len(), Ok(rec), Some((file, instance, seq)))
                    }
                    Err(e) => {
                        t.acks.push(end, line, true);
                        (line, data.len(), Err(format!("malformed trace record: {e}")), None)
                    }
                }
            }
        };
        found.push(Found { path: path.clone(), line, bytes, record, ack });
    }

    /// The events of what a round found, each acknowledging its line when delivered; bad lines
    /// are counted and logged with their place.
    fn events_of(&self, found: Vec<Found>) -> Vec<Event> {
        let mut events = Vec::with_capacity(found.len());
        for f in found {
            let rec = match f.record {
                Ok(rec) => rec,
                Err(e) => {
                    self.cx.error(format_args!("{}:{}: {e}; skipped", f.path.display(), f.line));
                    continue;
                }
            };
            let ts = DateTime::parse_from_rfc3339(&rec.timestamp)
                .map(|d| d.with_timezone(&Utc))
                .unwrap_or_else(|_| Utc::now());
            let id = rec.natural_id();
            let ack = self.ack_tx.clone();
            let (file, instance, seq) = f.ack.expect("records carry their acknowledgement");
            events.push(Event::new(self.cx.id.clone(), ts, Payload::Trace(Box::new(rec))).with_id(id).with_finalizer(
                Finalizer::new(move |status| {
                    let _ = ack.send((file, instance, seq, status));
                }),
            ));
        }
        events
    }

    /// For a viewer: what is new in the files since the last call (everything the first time),
    /// each record counted as delivered at once; nothing is checkpointed. Reads at most
    /// [`VIEW_ROUNDS`] rounds; `true` with them when more is waiting (call again).
    pub fn read_new(&mut self, rescan: bool) -> (Vec<Found>, bool) {
        let never = CancellationToken::new();
        let mut all = Vec::new();
        if rescan || self.first_scan {
            self.scan();
        }
        for _ in 0..VIEW_ROUNDS {
            let (found, more) = self.read_all(&never, None);
            for f in &found {
                if let Some((file, instance, seq)) = f.ack {
                    self.on_ack((file, instance, seq, Status::Delivered));
                }
            }
            all.extend(found);
            self.drain_acks();
            if !more {
                return (all, false);
            }
        }
        (all, true)
    }

    fn on_ack(&mut self, (fp, instance, seq, status): Ack) {
        if let Some(t) = self.files.get_mut(&fp).filter(|t| t.instance == instance) {
            t.acks.mark(seq, status);
            if status == Status::Failed && !t.acks.blocked {
                // Once per file: its checkpoint cannot pass this line anyway.
                t.acks.blocked = true;
                tracing::warn!(
                    component = &*self.cx.id,
                    "a record of {} was not delivered; its checkpoint stays before it until restart",
                    t.path.display()
                );
            }
        }
    }

    fn drain_acks(&mut self) {
        while let Ok(ack) = self.ack_rx.try_recv() {
            self.on_ack(ack);
        }
        for t in self.files.values_mut() {
            if let Some(pos) = t.acks.advance() {
                t.committed = pos;
                self.dirty = true;
            }
        }
    }

    fn pending(&self) -> usize {
        self.files.values().map(|t| t.acks.pending()).sum()
    }

    fn save(&mut self) {
        let Some(checkpoint) = self.checkpoint.as_ref().filter(|_| self.dirty) else { return };
        let now = Utc::now().timestamp();
        for (id, t) in &self.files {
            self.saved.remove(&format!("{:016x}", t.fingerprint));
            self.saved.insert(
                key_of(t.fingerprint, *id),
                Saved { path: t.path.display().to_string(), offset: t.committed.0, line: t.committed.1, updated: now },
            );
        }
        self.saved.retain(|_, s| now - s.updated < FORGET_AFTER_SECS);
        match checkpoint.store(&self.saved) {
            Ok(()) => self.dirty = false,
            Err(e) => self.cx.error(format_args!("writing checkpoint {}: {e}", checkpoint.path().display())),
        }
    }
}

/// The directory part of a glob before its first wildcard.
fn literal_dir(pattern: &str) -> PathBuf {
    let mut dir = PathBuf::new();
    for comp in Path::new(pattern).components() {
        if comp.as_os_str().to_string_lossy().contains(['*', '?', '[']) {
            break;
        }
        dir.push(comp);
    }
    if dir.as_os_str() == pattern { dir.parent().map(Path::to_path_buf).unwrap_or(dir) } else { dir }
}

fn open_at(path: &Path, offset: u64) -> io::Result<BufReader<File>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    Ok(BufReader::with_capacity(256 * 1024, f))
}

/// A hash of the file's first line (at most [`FINGERPRINT_BYTES`]); `None` until the file has a
/// complete first line or that many bytes.
fn fingerprint(path: &Path) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; FINGERPRINT_BYTES];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let head = &buf[..n];
    let end = match memchr::memchr(b'\n', head) {
        Some(i) => i + 1,
        None if n == FINGERPRINT_BYTES => n,
        None => return Ok(None),
    };
    Ok(Some(xxhash_rust::xxh3::xxh3_64(&head[..end])))
}

/// Reads complete lines until `budget` bytes or the end of the file. A partial last line stays
/// in `t.partial` until its newline arrives.
fn read_lines(t: &mut Tracked, max_line: usize, budget: usize) -> io::Result<(Vec<Line>, bool)> {
    let mut reader = t.reader.take().expect("the file is open");
    let res = read_lines_from(&mut reader, t, max_line, budget);
    t.reader = Some(reader);
    res
}

fn read_lines_from(
    reader: &mut BufReader<File>,
    t: &mut Tracked,
    max_line: usize,
    budget: usize,
) -> io::Result<(Vec<Line>, bool)> {
    let mut lines = Vec::new();
    let mut bytes = 0;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((lines, true));
        }
        match memchr::memchr(b'\n', buf) {
            Some(i) => {
                let too_long = t.skipping || t.partial.len() + i > max_line;
                if !too_long {
                    t.partial.extend_from_slice(&buf[..i]);
                }
                reader.consume(i + 1);
                t.read_pos += i as u64 + 1;
                t.line += 1;
                t.skipping = false;
                if too_long {
                    t.partial.clear();
                    lines.push(Line::TooLong { line: t.line, end: t.read_pos });
                } else {
                    let data = std::mem::take(&mut t.partial);
                    bytes += data.len();
                    lines.push(Line::Data { data, line: t.line, end: t.read_pos });
                }
                if bytes >= budget {
                    return Ok((lines, false));
                }
            }
            None => {
                let n = buf.len();
                if !t.skipping {
                    if t.partial.len() + n > max_line {
                        t.skipping = true;
                        t.partial = Vec::new();
                    } else {
                        t.partial.extend_from_slice(buf);
                    }
                }
                reader.consume(n);
                t.read_pos += n as u64;
            }
        }
    }
}
