//! `opencode_storage`: everything OpenCode has stored — every generation — then, live, every
//! change as it is committed.
//!
//! Backfill reads sessions, messages and part facts (tool calls, step-finish tokens) from all
//! databases and the legacy JSON storage, counting each message once and flagging fork copies.
//! Live, it watches the data directory (the database and its `-wal`) and tails OpenCode's
//! `event` table — the durable per-session change feed — so a committed change becomes an event
//! within milliseconds; a message updated later (tokens arrive at completion) is sent again with
//! the same id. The checkpoint (the highest `event` rowid delivered per database) moves only
//! once the events before it are delivered, so a restart neither re-emits history nor loses a
//! change.

mod catalog;
mod feed;
mod index;
mod live;
mod stats;
mod store;
mod tui;

use std::collections::HashSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often a database that another process keeps locked is tried again.
const LOCKED_RETRY: Duration = Duration::from_secs(5);

use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{ComponentFuture, Context, SourceConfig, SourceContext};
use crate::config::{FieldError, FieldPath};
use crate::event::{DataType, Event, Payload};

pub use catalog::Catalog;
pub use stats::{StatsArgs, stats};
pub use store::Location;

/// Reads OpenCode's storage: SQLite `opencode.db` (and `opencode-*.db`), newer `session_message`
/// rows, and legacy JSON files; then follows new commits live. Read-only: OpenCode is never
/// disturbed.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct OpencodeStorageConfig {
    /// OpenCode's data directory. Default: `$XDG_DATA_HOME/opencode`, else
    /// `~/.local/share/opencode`.
    pub data_dir: Option<String>,
    /// One database to read instead of the data directory's (`OPENCODE_DB` also works).
    pub db: Option<String>,
    /// `checkpoint`: after a restart, continue where the last run stopped; `beginning`: emit
    /// the whole history again.
    #[serde(default)]
    pub from: From,
    /// Keep following new changes after the backfill.
    #[serde(default = "yes")]
    pub follow: bool,
    /// Also emit part facts (tool calls by tool name, step-finish tokens).
    #[serde(default = "yes")]
    pub parts: bool,
    /// How often to look for changes when no file notification arrives, in milliseconds.
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum From {
    #[default]
    Checkpoint,
    Beginning,
}

fn yes() -> bool {
    true
}
fn default_poll() -> u64 {
    1000
}

const EXAMPLE: &str = r#"data_dir = "${OPENCODE_DATA_DIR:-~/.local/share/opencode}"
follow = true
"#;

crate::register_component!(
    source OpencodeStorageConfig,
    "opencode_storage",
    "OpenCode sessions, messages (tokens, cost, model, agent) and tool parts from every storage generation, live",
    EXAMPLE
);

impl OpencodeStorageConfig {
    pub fn location(&self, cx: &Context) -> Location {
        let data_dir = self.data_dir.as_deref().map(|d| cx.resolve(d));
        let db = self.db.as_deref().map(|d| cx.resolve(d));
        Location::find(data_dir.as_deref(), db.as_deref())
    }
}

impl SourceConfig for OpencodeStorageConfig {
    fn outputs(&self) -> DataType {
        DataType::OPENCODE
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.poll_interval_ms < 10 {
            errs.push(FieldError::new(FieldPath::key("poll_interval_ms"), "`poll_interval_ms` must be at least 10"));
        }
        for (name, v) in [("data_dir", &self.data_dir), ("db", &self.db)] {
            if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
                errs.push(
                    FieldError::new(FieldPath::key(name), format!("`{name}` is empty"))
                        .help("remove it to use the default"),
                );
            }
        }
        errs
    }

    fn build(&self, sc: SourceContext) -> anyhow::Result<ComponentFuture> {
        let loc = self.location(&sc.cx);
        let checkpoint = crate::checkpoint::CheckpointFile::new(sc.cx.data_dir()?.join("checkpoint.json"));
        let saved: Option<live::Marks> = checkpoint.load()?;
        let cfg = self.clone();
        Ok(Box::pin(async move {
            let SourceContext { cx, mut out, shutdown } = sc;
            let resume = saved.filter(|_| cfg.from == From::Checkpoint);
            let mut follower = live::Follower::new(
                &cx,
                loc.clone(),
                cfg.db.is_some() || std::env::var_os("OPENCODE_DB").is_some(),
                cfg.parts,
                resume.clone(),
            );
            if resume.is_none() {
                // Where following starts must be read from the databases themselves: wait out
                // a lock rather than start from nothing.
                wait_unlocked(&cx, &loc, &shutdown).await;
                let marks = live::Marks::now(&loc);
                let batch = follower.tracker().batch(marks.clone());
                out = backfill(&cx, &loc, cfg.parts, out, batch, &mut follower, shutdown.clone()).await?;
                follower.set_marks(marks);
            } else {
                tracing::info!(
                    component = &*cx.id,
                    "resuming after the checkpoint (set from = \"beginning\" to emit history again)"
                );
                let loc2 = loc.clone();
                let keys =
                    tokio::task::spawn_blocking(move || live::ForkKeys::from_catalog(&index::load_or_build(&loc2)))
                        .await?;
                follower.set_fork_keys(keys);
            }
            if cfg.follow {
                follower
                    .run(&cx, &mut out, &shutdown, Duration::from_millis(cfg.poll_interval_ms), &checkpoint)
                    .await?;
            }
            drop(out);
            follower.settle(&cx, &checkpoint).await;
            Ok(())
        }))
    }
}

/// Waits while another process keeps one of the databases locked (logged once, tried again
/// every [`LOCKED_RETRY`]).
async fn wait_unlocked(cx: &Context, loc: &Location, shutdown: &CancellationToken) {
    let mut said = false;
    loop {
        let dbs = loc.dbs.clone();
        let locked = tokio::task::spawn_blocking(move || {
            dbs.iter().find_map(|db| match store::check(db) {
                Err(e @ store::Unreadable::Locked(_)) => Some(e),
                _ => None,
            })
        })
        .await
        .ok()
        .flatten();
        let Some(e) = locked else {
            return;
        };
        if !said {
            cx.error(format_args!("{e}; retrying every {} s", LOCKED_RETRY.as_secs()));
            said = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(LOCKED_RETRY) => {}
        }
    }
}

/// Sends every session, message and part fact once, fork copies flagged. Runs the blocking
/// reads on a blocking thread and hands the output back.
async fn backfill(
    cx: &Context,
    loc: &Location,
    parts: bool,
    out: crate::component::Output,
    batch: crate::event::Batch,
    follower: &mut live::Follower,
    stop: CancellationToken,
) -> anyhow::Result<crate::component::Output> {
    let (cx2, loc2) = (cx.clone(), loc.clone());
    let rt = tokio::runtime::Handle::current();
    let (out, keys, sent) = tokio::task::spawn_blocking(move || {
        let cat = index::load_or_build_with_ids(&loc2);
        let forks: HashSet<u64> = cat
            .messages
            .iter()
            .zip(&cat.ids)
            .filter(|(m, _)| m.flags & catalog::FORK_COPY != 0)
            .map(|(_, id)| *id)
            .collect();
        let keys = live::ForkKeys::from_catalog(&cat);
        drop(cat);
        let sent = loc2.storage.is_some().then(live::Sent::default);
        let mut v = Emit { cx: cx2.clone(), out, rt, forks, parts, batch, sent };
        let mut report = store::read_all(&loc2, &mut v);
        // A database another process keeps locked is read again until it can be (what was
        // read before is sent again: the same ids, stored once); a damaged one is reported.
        let mut waited = 0;
        while report.unreadable.iter().any(|u| matches!(u, store::Unreadable::Locked(_))) && !stop.is_cancelled() {
            if waited == 0 {
                for u in &report.unreadable {
                    cx2.error(format_args!("{u}; retrying every {} s", LOCKED_RETRY.as_secs()));
                }
            }
            std::thread::sleep(LOCKED_RETRY);
            waited += 1;
            report = store::read_all(&loc2, &mut v);
        }
        if waited > 0 && report.unreadable.is_empty() {
            tracing::info!(component = &*cx2.id, "the locked database could be read now");
        }
        for u in report.unreadable.iter().filter(|u| matches!(u, store::Unreadable::Damaged(_))) {
            cx2.error(format_args!("{u}"));
        }
        for w in &report.warnings {
            cx2.error(format_args!("{w}"));
        }
        if report.sessions == 0 && report.messages == 0 {
            tracing::warn!(component = &*cx2.id, "no OpenCode data yet: {}", loc2.explain_empty());
        } else {
            tracing::info!(
                component = &*cx2.id,
                sessions = report.sessions,
                messages = report.messages,
                duplicates = report.duplicates,
                fork_copies = v.forks.len(),
                "read OpenCode's history"
            );
        }
        (v.out, keys, v.sent)
    })
    .await?;
    follower.set_fork_keys(keys);
    if let Some(sent) = sent {
        follower.set_sent(sent);
    }
    Ok(out)
}

struct Emit {
    cx: Context,
    out: crate::component::Output,
    rt: tokio::runtime::Handle,
    forks: HashSet<u64>,
    parts: bool,
    batch: crate::event::Batch,
    /// Kept for the live follow of JSON storage.
    sent: Option<live::Sent>,
}

impl Emit {
    fn send(&mut self, event: Event) {
        // The live follow reads JSON files changed around its mark again: it knows these.
        if let Some(sent) = self.sent.as_mut() {
            sent.is_new(&event);
        }
        let event = event.with_finalizer(self.batch.finalizer());
        self.rt.block_on(self.out.send(event));
    }
}

impl store::Visitor for Emit {
    fn session(&mut self, s: crate::event::SessionInfo) {
        let ts = chrono::DateTime::from_timestamp_millis(s.time_updated).unwrap_or_default();
        let id = format!("opencode.session:{}", s.id);
        self.send(Event::new(self.cx.id.clone(), ts, Payload::Session(Box::new(s))).with_id(id));
    }

    fn message(&mut self, id: &str, session: &str, row_created: i64, m: &store::RawMessage<'_>, origin: &'static str) {
        let mut info = m.to_info(id, session, row_created, origin);
        if let Some(w) = m.out_of_range(id) {
            self.cx.error(format_args!("{w}"));
        }
        info.fork_copy = self.forks.contains(&xxhash_rust::xxh3::xxh3_64(id.as_bytes()));
        self.send(live::message_event(&self.cx, info));
    }

    fn part(&mut self, p: crate::event::PartInfo) {
        let id = format!("opencode.part:{}", p.id);
        self.send(Event::new(self.cx.id.clone(), chrono::Utc::now(), Payload::Part(Box::new(p))).with_id(id));
    }

    fn wants_parts(&self) -> bool {
        self.parts
    }
}

#[cfg(test)]
mod tests;
