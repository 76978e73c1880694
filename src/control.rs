//! The control socket of a running pipeline (`DATA_DIR/control.sock`): `ocpipe tap` watches the
//! events leaving a component, `ocpipe top` reads the counters.
//!
//! Protocol: the client writes one JSON line, `{"tap": "ID"}` or `{"metrics": true}`; the server
//! answers with JSON lines. A tap has its own small buffer and misses events when the viewer is
//! slow: the pipeline never waits for a viewer.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::metrics::MetricsSnapshot;
use crate::runtime::Handles;
use crate::telemetry::Telemetry;
use std::sync::Arc;

pub const TAP_BUFFER: usize = 256;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Tap(String),
    Metrics(bool),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ComponentMetricsRow {
    pub id: String,
    pub kind: String,
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(flatten)]
    pub counters: MetricsSnapshot,
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Binds the control socket. Fails if another ocpipe answers on it (two pipelines must not share
/// a data directory: their checkpoints would collide).
pub async fn bind(data_dir: &Path) -> anyhow::Result<UnixListener> {
    let path = socket_path(data_dir);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            bail!(
                "another ocpipe is running with data directory {} (its control socket answers); \
                 give this one its own with --data-dir",
                data_dir.display()
            );
        }
        std::fs::remove_file(&path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))
}

/// Serves the control socket; `telemetry` knows the components running now (a reload changes
/// them).
pub async fn serve(listener: UnixListener, telemetry: Arc<Telemetry>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let handles = telemetry.handles();
                let stop = stop.clone();
                tokio::spawn(async move {
                    if let Err(e) = client(stream, handles, stop).await {
                        tracing::debug!("control client: {e:#}");
                    }
                });
            }
        }
    }
    if let Ok(addr) = listener.local_addr()
        && let Some(p) = addr.as_pathname()
    {
        let _ = std::fs::remove_file(p);
    }
}

async fn client(stream: UnixStream, handles: Handles, stop: CancellationToken) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let request: Request = serde_json::from_str(&line).context("bad request")?;
    match request {
        Request::Metrics(_) => {
            let rows: Vec<ComponentMetricsRow> = handles
                .snapshot()
                .into_iter()
                .map(|(id, kind, t, counters)| ComponentMetricsRow {
                    id,
                    kind: kind.to_string(),
                    type_name: t.to_string(),
                    counters,
                })
                .collect();
            let mut out = serde_json::to_vec(&rows)?;
            out.push(b'\n');
            write.write_all(&out).await?;
        }
        Request::Tap(id) => {
            let Some(h) = handles.get(&id) else {
                let ids: Vec<_> = handles.components.iter().map(|c| c.id.as_str()).collect();
                let msg = serde_json::json!({"error": format!("no component `{id}`; components: {}", ids.join(", "))});
                write.write_all(format!("{msg}\n").as_bytes()).await?;
                return Ok(());
            };
            let mut rx = h.tap.subscribe(TAP_BUFFER);
            // The handshake: from here on, every event the component sends is seen.
            write.write_all(format!("{}\n", serde_json::json!({ "tapping": id })).as_bytes()).await?;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    line = rx.recv() => match line {
                        Some(l) => {
                            write.write_all(l.as_bytes()).await?;
                            write.write_all(b"\n").await?;
                        }
                        None => break,
                    }
                }
            }
        }
    }
    Ok(())
}

/// Client side: sends `request` and passes each answer line to `on_line` until the server closes
/// or `on_line` returns false.
pub async fn request(data_dir: &Path, request: &Request, mut on_line: impl FnMut(&str) -> bool) -> anyhow::Result<()> {
    let path = socket_path(data_dir);
    let stream = UnixStream::connect(&path).await.with_context(|| {
        format!("no running ocpipe answers on {} (start one with `ocpipe run`, or pass its --data-dir)", path.display())
    })?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{}\n", serde_json::to_string(request)?).as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        if !on_line(&line) {
            break;
        }
    }
    Ok(())
}
