//! What a usage-keeping component (the `aggregate` transform, the page) took in, written to its
//! [`StateFile`] before the events it came from are released: taken records are collected,
//! their finalizers held, and on `flush` written in one transaction on a blocking thread; a
//! failed write fails them (the source reads them again after a restart). It also knows each
//! record's newest revision (kept in the file too), so a version from another machine that
//! arrives after a newer one is ignored ([`Keeper::current`]).

use std::collections::HashMap;
use std::path::PathBuf;

use super::state::{Record, StateFile};
use crate::component::Context;
use crate::event::revision::Revisions;
use crate::event::{Event, Finalizer, MessageInfo, Payload, SessionInfo};

/// Records taken in before they are written.
pub const FLUSH_EVERY: usize = 10_000;

pub struct Keeper {
    file: Option<StateFile>,
    path: PathBuf,
    sessions: HashMap<String, (SessionInfo, u64)>,
    messages: HashMap<String, (MessageInfo, u64)>,
    revisions: Revisions,
    held: Vec<Finalizer>,
    cx: Context,
}

impl Keeper {
    /// The keeper of `cx`'s `state.db` (opened by [`restore`](Self::restore)).
    pub fn new(cx: &Context) -> anyhow::Result<Keeper> {
        Ok(Keeper {
            file: None,
            path: cx.data_dir()?.join("state.db"),
            sessions: HashMap::new(),
            messages: HashMap::new(),
            revisions: Revisions::default(),
            held: Vec::new(),
            cx: cx.clone(),
        })
    }

    /// Opens the state file and replays it into `state` (on a blocking thread).
    pub async fn restore<S: Send + 'static>(&mut self, mut state: S, apply: fn(&mut S, Record)) -> anyhow::Result<S> {
        let path = self.path.clone();
        let mut revisions = std::mem::take(&mut self.revisions);
        let (state, file, revisions) = tokio::task::spawn_blocking(move || {
            let file = StateFile::open(&path).and_then(|f| {
                f.load(&mut |rec, rev| {
                    revisions.remember(&record_key(&rec), rev);
                    apply(&mut state, rec)
                })?;
                Ok(f)
            });
            (state, file, revisions)
        })
        .await?;
        self.revisions = revisions;
        let file = file.map_err(|e| {
            anyhow::anyhow!(
                "cannot read the state of `{}` {}: {e}; to start over, remove it together with the source's checkpoint (both in the data dir) so the history is read again",
                self.cx.id,
                self.path.display()
            )
        })?;
        self.file = Some(file);
        Ok(state)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Whether `ev` is the newest version of its record taken in (always, for what was read on
    /// this machine); an older one is to be ignored (and counts as delivered: nothing is lost).
    pub fn current(&mut self, ev: &Event) -> bool {
        if ev.meta.revision.is_none() {
            return true;
        }
        let key = match &ev.payload {
            Payload::Session(s) => key("session", &s.id),
            Payload::Message(m) => key("message", &m.id),
            // Shown, not kept: remembered for this run only.
            Payload::Status(s) => format!(
                "status:{}:{}:{}",
                ev.meta.host.as_deref().unwrap_or(""),
                s.instance,
                s.session_id.as_deref().unwrap_or("")
            ),
            _ => return true,
        };
        self.revisions.admit(&key, ev.meta.revision)
    }

    /// The newest revision of a record taken in (0 when none; no lookup while nothing came
    /// from another machine).
    fn revision_of(&self, kind: &str, id: &str) -> u64 {
        if self.revisions.is_empty() { 0 } else { self.revisions.get(&key(kind, id)) }
    }

    /// Keeps a session or message event's record (to be written) and its finalizer (released
    /// when written). Other payloads: `false`, untouched.
    pub fn keep(&mut self, ev: &mut Event) -> bool {
        match &ev.payload {
            Payload::Session(s) => {
                let rev = self.revision_of("session", &s.id);
                self.sessions.insert(s.id.clone(), ((**s).clone(), rev));
            }
            Payload::Message(m) => {
                let rev = self.revision_of("message", &m.id);
                self.messages.insert(m.id.clone(), ((**m).clone(), rev));
            }
            _ => return false,
        }
        if let Some(f) = ev.meta.finalizer.take() {
            self.held.push(f);
        }
        true
    }

    /// Records waiting to be written.
    pub fn pending(&self) -> usize {
        self.sessions.len() + self.messages.len()
    }

    /// Writes what was kept, then releases the events it came from.
    pub async fn flush(&mut self) {
        if self.pending() == 0 {
            self.held.clear();
            return;
        }
        // Taken whole (not drained): a burst's capacity is not kept for the rest of the day.
        let sessions: Vec<(SessionInfo, u64)> = std::mem::take(&mut self.sessions).into_values().collect();
        let messages: Vec<(MessageInfo, u64)> = std::mem::take(&mut self.messages).into_values().collect();
        let held = std::mem::take(&mut self.held);
        let Some(mut file) = self.file.take() else {
            // The file was lost with a failed write: nothing can be kept, so nothing is delivered.
            held.iter().for_each(Finalizer::fail);
            return;
        };
        let res = tokio::task::spawn_blocking(move || {
            let r = file.write(&sessions, &messages);
            (file, r)
        })
        .await;
        match res {
            Ok((file, Ok(()))) => self.file = Some(file),
            Ok((file, Err(e))) => {
                self.file = Some(file);
                self.cx.error(format_args!(
                    "writing the state {}: {e}; its input will be read again after a restart",
                    self.path.display()
                ));
                held.iter().for_each(Finalizer::fail);
            }
            Err(e) => {
                self.cx.error(format_args!("writing the state {}: {e}", self.path.display()));
                held.iter().for_each(Finalizer::fail);
            }
        }
    }
}

/// The key a record's revision is kept under.
fn key(kind: &str, id: &str) -> String {
    format!("{kind}:{id}")
}

fn record_key(rec: &Record) -> String {
    match rec {
        Record::Session(s) => key("session", &s.id),
        Record::Message(m) => key("message", &m.id),
    }
}

impl Drop for Keeper {
    /// Ending with records not written (an error, a cancelled run): their events are not
    /// delivered, so the source reads them again.
    fn drop(&mut self) {
        self.held.iter().for_each(Finalizer::fail);
    }
}
