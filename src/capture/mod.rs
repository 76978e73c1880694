//! Capture runs (shared vocabulary of the `docker_capture` source, the `capture_dir` and
//! `html_report` sinks and `ocpipe browse`): the task file, the events a run emits, the files of
//! a capture directory (the seed's layout) and the summary derived from them.

mod summary;
mod tasks;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use summary::summarize;
pub use tasks::{RiskLevel, Task, TaskError, load_tasks};

/// One event of a capture run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaptureEvent {
    pub run_id: String,
    pub issue_id: String,
    /// The run's directory (`artifacts/captures/<UTC timestamp>-<issue id>`).
    pub capture_dir: PathBuf,
    #[serde(flatten)]
    pub step: Step,
}

/// What happened in a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// The container was created and started.
    Started { task: Task, image: String, started_at: String },
    /// What the container ran and which connections it had at one moment.
    Observed { snapshot: Snapshot },
    /// One OpenCode event the capture plugin recorded (`n`: its line in the events file).
    Native { n: usize, event: Value },
    /// The run is over: everything the capture directory holds, in one piece.
    Finished(Box<Finished>),
}

/// The end of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finished {
    pub meta: RunMeta,
    pub task: Task,
    pub process_tree: Value,
    pub fs_diff: Value,
    pub network: Value,
    pub logs: Logs,
    /// `opencode export <session>` when a session id was found and the export worked.
    pub export: Option<Value>,
    /// The native events, as recorded.
    pub events: Vec<Value>,
}

/// The text the run printed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Logs {
    /// Both streams, in order, each line with its time and stream.
    pub container: String,
    pub stdout: String,
    pub stderr: String,
    pub export_stdout: String,
    pub export_stderr: String,
}

/// `meta/run.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunMeta {
    pub run_id: String,
    pub issue_id: String,
    pub risk_level: String,
    pub title: String,
    /// `completed` (the agent exited 0), `failed`, `timeout`, `oom`, `interrupted`, `error`.
    pub run_status: String,
    /// The four supervisor files were written, whatever happened to the agent.
    pub capture_valid: bool,
    pub exit_code: Option<i64>,
    pub timed_out: bool,
    pub oom_killed: bool,
    /// How the OOM was seen: `state`, `cgroup`, `event` (any of them).
    pub oom_evidence: Vec<String>,
    /// `recorded` (events were written), `empty` (the plugin loaded, nothing of interest), `missing`.
    pub native_events: String,
    pub native_event_count: usize,
    pub session_id: Option<String>,
    pub export_status: String,
    pub image: String,
    pub container_id: String,
    pub network_mode: String,
    pub memory_limit_mb: u64,
    pub cpus: f64,
    pub timeout_secs: u64,
    pub started_at: String,
    pub finished_at: String,
    pub duration_secs: f64,
    /// Why the run could not be carried out, when it could not.
    pub error: Option<String>,
    pub workspace_kept: bool,
    pub supervisor: String,
}

/// One look at the container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub at: String,
    pub processes: Vec<ProcessRow>,
    pub connections: Vec<ConnectionRow>,
    /// The container cgroup's memory use and OOM kills so far, when readable.
    pub memory_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub ppid: u32,
    /// Seconds since the process started.
    pub elapsed_secs: u64,
    pub cpu_percent: f64,
    pub rss_kb: u64,
    pub command: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnectionRow {
    pub pid: u32,
    pub protocol: String,
    pub local: String,
    pub remote: String,
    pub state: String,
}

/// The files of a capture directory (the seed's layout).
pub mod layout {
    pub const RUN: &str = "meta/run.json";
    pub const ISSUE: &str = "input/issue.json";
    pub const CONTAINER_LOG: &str = "logs/container.log";
    pub const STDOUT: &str = "logs/opencode.stdout.log";
    pub const STDERR: &str = "logs/opencode.stderr.log";
    pub const EXPORT_STDOUT: &str = "logs/opencode_export.stdout.log";
    pub const EXPORT_STDERR: &str = "logs/opencode_export.stderr.log";
    pub const PROCESS_TREE: &str = "observations/process_tree.json";
    pub const FS_DIFF: &str = "observations/fs_diff.json";
    pub const NETWORK: &str = "observations/network.json";
    pub const EVENTS: &str = "events/opencode_events.jsonl";
    pub const SUMMARY: &str = "derived/summary.json";
    pub const REPORT: &str = "report/index.html";
    pub const EXPORT: &str = "session/export.json";
    pub const WORKSPACE: &str = "workspace";
    /// What must be written for a run to be `capture_valid`.
    pub const REQUIRED: [&str; 4] = [RUN, PROCESS_TREE, FS_DIFF, NETWORK];
}

/// The bytes of a regular file of a capture (or its workspace): at most `max + 1` of them, so a
/// caller can tell "more than `max`". A link is not followed and a FIFO or device never opened:
/// a container wrote some of these files.
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if !std::fs::symlink_metadata(path)?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    let mut bytes = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The most of one capture file that is read (the plugin's events file can be large).
pub const READ_MAX: u64 = 256 * 1024 * 1024;

/// The JSON lines of a file (one bad line, or a line cut at the limit, loses only itself).
pub fn json_lines(bytes: &[u8]) -> Vec<Value> {
    bytes.split(|b| *b == b'\n').filter_map(|l| serde_json::from_str(&String::from_utf8_lossy(l)).ok()).collect()
}

/// Reads what a capture directory holds back into a [`Finished`] (for a report built after the
/// fact: captures from before an upgrade, or whose report was deleted).
pub fn read_capture(dir: &Path) -> anyhow::Result<Finished> {
    let read = |rel: &str| read_regular(&dir.join(rel), READ_MAX);
    let json =
        |rel: &str| -> Value { read(rel).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null) };
    let text = |rel: &str| read(rel).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let meta: RunMeta = serde_json::from_slice(&read(layout::RUN)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(layout::RUN).display()))?;
    let task: Task = serde_json::from_value(json(layout::ISSUE)).unwrap_or_else(|_| Task {
        id: meta.issue_id.clone(),
        title: meta.title.clone(),
        ..Default::default()
    });
    let events = read(layout::EVENTS).map(|b| json_lines(&b)).unwrap_or_default();
    let export = Some(json(layout::EXPORT)).filter(|v| !v.is_null());
    Ok(Finished {
        meta,
        task,
        process_tree: json(layout::PROCESS_TREE),
        fs_diff: json(layout::FS_DIFF),
        network: json(layout::NETWORK),
        logs: Logs {
            container: text(layout::CONTAINER_LOG),
            stdout: text(layout::STDOUT),
            stderr: text(layout::STDERR),
            export_stdout: text(layout::EXPORT_STDOUT),
            export_stderr: text(layout::EXPORT_STDERR),
        },
        export,
        events,
    })
}

/// Writes a file of a capture directory (and its folder), private (0600), through a temporary
/// file.
pub fn write_file(dir: &Path, rel: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        crate::component::create_private_dir(parent)?;
    }
    // A name of its own (a backfill and a sink may write the same file), never followed if a
    // link sits there already.
    let tmp = path.with_extension(format!("tmp.{}.{:08x}", std::process::id(), rand::random::<u32>()));
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all()).and_then(|()| std::fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The loop of a sink that writes each finished run into its directory: on a blocking thread,
/// `write` each `finished` step; counted as sent, or as an error (`what` says of what) with the
/// event failed. Other steps are not this kind of sink's business.
pub async fn write_each_finished(
    cx: crate::component::Context,
    mut input: crate::component::Input,
    what: &'static str,
    write: impl Fn(&Path, &Finished) -> std::io::Result<()> + Send + 'static,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        while let Some(ev) = input.blocking_recv() {
            let crate::event::Payload::Capture(c) = &ev.payload else { continue };
            let Step::Finished(run) = &c.step else { continue };
            match write(&c.capture_dir, run) {
                Ok(()) => cx.metrics.sent(1),
                Err(e) => {
                    cx.error(format_args!("writing {what} of {}: {e}", c.capture_dir.display()));
                    ev.fail();
                }
            }
        }
    })
    .await?;
    Ok(())
}
