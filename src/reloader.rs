//! When to reload a running pipeline (`ocpipe run --watch`, SIGHUP) and with what: the files
//! are loaded and checked first, every error logged at once with its place, and only a valid
//! pipeline is handed to the runtime, which rebuilds what changed (see `runtime/reload.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use tokio::sync::mpsc;

use crate::config::{Pipeline, Report};
use crate::runtime::Reload;
use crate::watch::Watch;

/// Edits come in bursts (an editor writes, renames, touches): one reload after they settle.
const SETTLE: Duration = Duration::from_millis(300);

pub type Loader = Arc<dyn Fn(&[PathBuf]) -> Result<(Pipeline, Report), Report> + Send + Sync>;

/// Reloads `files` on SIGHUP and, with `watch`, whenever one of them changes; until the
/// runtime stops taking reloads.
pub async fn reload_on_change(files: Vec<PathBuf>, watch: bool, load: Loader, tx: mpsc::Sender<Reload>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler: no reloads");
        return;
    };
    let mut watcher = watch.then(|| watch_files(&files));
    if watch {
        tracing::info!("watching {} for changes (SIGHUP reloads too)", shown(&files));
    }
    loop {
        tokio::select! {
            _ = hup.recv() => tracing::info!("SIGHUP: reloading {}", shown(&files)),
            _ = async { watcher.as_ref().expect("guarded").changed().await }, if watcher.is_some() => {
                tokio::time::sleep(SETTLE).await;
                let w = watcher.as_mut().expect("guarded");
                w.take();
                tracing::info!("{} changed: reloading", shown(&files));
            }
        }
        let (files2, load2) = (files.clone(), load.clone());
        let loaded = match tokio::task::spawn_blocking(move || load2(&files2)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("loading the pipeline failed: {e}");
                continue;
            }
        };
        let pipeline = match loaded {
            Ok((p, warnings)) => {
                if !warnings.diagnostics.is_empty() {
                    tracing::warn!("{warnings}");
                }
                p
            }
            Err(report) => {
                tracing::error!("the changed pipeline is not valid; the running one goes on unchanged:\n{report}");
                continue;
            }
        };
        let (request, answer) = Reload::new(pipeline);
        if tx.send(request).await.is_err() {
            return;
        }
        match answer.await {
            Ok(Ok(summary)) => tracing::info!("{summary}"),
            Ok(Err(why)) => tracing::error!("{why}"),
            Err(_) => return,
        }
    }
}

fn shown(files: &[PathBuf]) -> String {
    files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Watches each file's folder (an editor replaces a file by renaming another over it).
fn watch_files(files: &[PathBuf]) -> Watch {
    let absolute: Vec<PathBuf> = files.iter().map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone())).collect();
    let dirs: Vec<(PathBuf, RecursiveMode)> = absolute
        .iter()
        .map(|f| (f.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf), RecursiveMode::NonRecursive))
        .collect();
    let wanted = absolute.clone();
    Watch::new("pipeline files", dirs, Arc::new(move |p: &Path| wanted.iter().any(|w| w == p)))
}
