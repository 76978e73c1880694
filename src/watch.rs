//! Watching files for the sources that follow them, cheaply.
//!
//! [`Watch`] wraps `notify` so that a waiting loop really waits:
//! - only changes of content wake it (created, written, removed, renamed); opening or reading a
//!   file — which the source itself does all the time — does not;
//! - a path that does not exist yet is watched through its nearest existing ancestor and taken
//!   over when it appears;
//! - when notifications cannot be had (no inotify, too many watches) it says so once and the
//!   caller's poll does the work: [`Watch::is_live`] tells which.
//!
//! The paths that changed are collected (bounded) for callers that want to look only at them;
//! past the bound, or when the kernel's queue overflowed, [`Changes::rescan`] is set.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

/// Changed paths kept between two [`Watch::take`]s; past this a rescan is asked instead.
const MAX_PATHS: usize = 10_000;

/// Decides which changed paths matter to the caller.
pub type PathFilter = Arc<dyn Fn(&Path) -> bool + Send + Sync>;

/// What changed since the last [`Watch::take`].
#[derive(Debug, Default)]
pub struct Changes {
    pub paths: HashSet<PathBuf>,
    /// Too much changed (or the kernel dropped notifications): look at everything.
    pub rescan: bool,
}

#[derive(Default)]
struct Shared {
    changes: Mutex<Changes>,
    wake: Notify,
}

/// What one target is watched through.
#[derive(Debug, Clone, PartialEq)]
enum Armed {
    Not,
    /// The target itself.
    Itself,
    /// Its nearest existing ancestor, until the target appears.
    Ancestor(PathBuf),
}

struct Target {
    path: PathBuf,
    mode: RecursiveMode,
    armed: Armed,
}

pub struct Watch {
    shared: Arc<Shared>,
    watcher: Option<RecommendedWatcher>,
    targets: Vec<Target>,
    /// How many targets rely on each watched path (notify keeps one watch per path: two
    /// targets may share one, e.g. a folder and a missing child waiting on it).
    users: std::collections::HashMap<PathBuf, usize>,
    warned: bool,
    label: String,
}

/// Whether a notification is about content (not about somebody merely looking).
fn is_change(kind: &EventKind) -> bool {
    match kind {
        // Writes were told as modifications already; a close after writing is also what
        // SQLite's own reading connection does to its `-wal`.
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        _ => true,
    }
}

impl Watch {
    /// Watches `targets` (each a file or directory, recursive or not); only paths `filter`
    /// accepts (or the targets' ancestors, while waiting for them) wake the caller. `label`
    /// names the owner in logs.
    pub fn new(label: &str, targets: Vec<(PathBuf, RecursiveMode)>, filter: PathFilter) -> Watch {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let waiting: Vec<PathBuf> = targets.iter().map(|(p, _)| p.clone()).collect();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let mut ch = s.changes.lock().unwrap_or_else(|e| e.into_inner());
            match res {
                Ok(ev) if ev.need_rescan() => ch.rescan = true,
                Ok(ev) if is_change(&ev.kind) => {
                    let relevant: Vec<PathBuf> = ev
                        .paths
                        .into_iter()
                        .filter(|p| filter(p) || waiting.iter().any(|w| w.starts_with(p)))
                        .collect();
                    if relevant.is_empty() {
                        return;
                    }
                    for p in relevant {
                        if ch.paths.len() >= MAX_PATHS {
                            ch.rescan = true;
                            break;
                        }
                        ch.paths.insert(p);
                    }
                }
                Ok(_) => return,
                Err(_) => ch.rescan = true,
            }
            drop(ch);
            s.wake.notify_one();
        });
        let mut w = Watch {
            shared,
            watcher: None,
            targets: targets.into_iter().map(|(path, mode)| Target { path, mode, armed: Armed::Not }).collect(),
            users: std::collections::HashMap::new(),
            warned: false,
            label: label.to_string(),
        };
        match watcher {
            Ok(watcher) => {
                w.watcher = Some(watcher);
                w.arm();
            }
            Err(e) => w.warn_once(&e),
        }
        w
    }

    fn warn_once(&mut self, e: &dyn std::fmt::Display) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(component = &*self.label, "no file notifications ({e}): polling instead");
        }
    }

    /// Watches each target directly when it exists, else through its nearest existing
    /// ancestor. Cheap when nothing needs to change.
    fn arm(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let mut failure = None;
        for t in &mut self.targets {
            let want = if t.path.exists() {
                Armed::Itself
            } else {
                match t.path.ancestors().skip(1).find(|a| a.is_dir()) {
                    Some(a) => Armed::Ancestor(a.to_path_buf()),
                    None => Armed::Not,
                }
            };
            if want == t.armed {
                continue;
            }
            let path_of = |a: &Armed| match a {
                Armed::Itself => Some((t.path.clone(), t.mode)),
                Armed::Ancestor(p) => Some((p.clone(), RecursiveMode::NonRecursive)),
                Armed::Not => None,
            };
            if let Some((old, _)) = path_of(&t.armed)
                && let Some(n) = self.users.get_mut(&old)
            {
                *n -= 1;
                if *n == 0 {
                    self.users.remove(&old);
                    let _ = watcher.unwatch(&old);
                }
            }
            let res = match path_of(&want) {
                Some((p, mode)) => {
                    let first = !self.users.contains_key(&p);
                    let r = if first { watcher.watch(&p, mode) } else { Ok(()) };
                    if r.is_ok() {
                        *self.users.entry(p).or_default() += 1;
                    }
                    r
                }
                None => Ok(()),
            };
            match res {
                Ok(()) => {
                    tracing::debug!(component = &*self.label, "watching {} ({want:?})", t.path.display());
                    t.armed = want;
                }
                Err(e) => {
                    t.armed = Armed::Not;
                    failure = Some(e);
                }
            }
        }
        if let Some(e) = failure {
            self.warn_once(&e);
        }
    }

    /// Whether every target is watched itself (so a change will wake the caller).
    pub fn is_live(&self) -> bool {
        self.watcher.is_some() && self.targets.iter().all(|t| t.armed == Armed::Itself)
    }

    /// Waits for the next change (returns at once if one arrived since the last call).
    pub async fn changed(&self) {
        self.shared.wake.notified().await;
    }

    /// What changed since the last call; re-arms targets that appeared or went away.
    pub fn take(&mut self) -> Changes {
        let ch = std::mem::take(&mut *self.shared.changes.lock().unwrap_or_else(|e| e.into_inner()));
        if !ch.paths.is_empty() || ch.rescan || !self.is_live() {
            self.arm();
        }
        ch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn woke(w: &Watch) -> bool {
        tokio::time::timeout(Duration::from_secs(2), w.changed()).await.is_ok()
    }

    #[tokio::test]
    async fn reading_does_not_wake_writing_does() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.db");
        std::fs::write(&f, b"x").unwrap();
        let mut w = Watch::new("t", vec![(dir.path().to_path_buf(), RecursiveMode::NonRecursive)], Arc::new(|_| true));
        assert!(w.is_live());
        for _ in 0..100 {
            let _ = std::fs::read(&f).unwrap();
        }
        assert!(tokio::time::timeout(Duration::from_millis(300), w.changed()).await.is_err(), "reads woke the watcher");
        std::fs::write(&f, b"y").unwrap();
        assert!(woke(&w).await);
        assert!(w.take().paths.contains(&f));
    }

    #[tokio::test]
    async fn a_missing_directory_is_picked_up_when_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b");
        let mut w = Watch::new("t", vec![(target.clone(), RecursiveMode::NonRecursive)], Arc::new(|_| true));
        assert!(!w.is_live());
        std::fs::create_dir(dir.path().join("a")).unwrap();
        assert!(woke(&w).await, "the ancestor's change wakes");
        w.take();
        std::fs::create_dir(&target).unwrap();
        assert!(woke(&w).await);
        w.take();
        assert!(w.is_live(), "now watching the target itself");
        std::fs::write(target.join("f"), b"1").unwrap();
        assert!(woke(&w).await);
        assert!(w.take().paths.contains(&target.join("f")));
    }

    #[tokio::test]
    async fn a_folder_stays_watched_when_a_missing_child_it_waited_for_appears() {
        let dir = tempfile::tempdir().unwrap();
        let child = dir.path().join("storage");
        let mut w = Watch::new(
            "t",
            vec![(dir.path().to_path_buf(), RecursiveMode::NonRecursive), (child.clone(), RecursiveMode::Recursive)],
            Arc::new(|_| true),
        );
        std::fs::create_dir(&child).unwrap();
        assert!(woke(&w).await);
        w.take();
        assert!(w.is_live());
        std::fs::write(dir.path().join("opencode.db"), b"1").unwrap();
        assert!(woke(&w).await, "the folder's own watch survived");
        assert!(w.take().paths.contains(&dir.path().join("opencode.db")));
    }

    #[tokio::test]
    async fn unrelated_files_do_not_wake() {
        let dir = tempfile::tempdir().unwrap();
        let w = Watch::new(
            "t",
            vec![(dir.path().to_path_buf(), RecursiveMode::NonRecursive)],
            Arc::new(|p: &Path| p.extension().is_some_and(|e| e == "db")),
        );
        std::fs::write(dir.path().join("x.log"), b"1").unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), w.changed()).await.is_err());
        std::fs::write(dir.path().join("x.db"), b"1").unwrap();
        assert!(woke(&w).await);
    }
}
