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

/// Reads what a capture directory holds back into a [`Finished`] (for a report built after the
/// fact: captures from before an upgrade, or whose report was deleted).
pub fn read_capture(dir: &Path) -> anyhow::Result<Finished> {
    let json = |rel: &str| -> Value {
        std::fs::read(dir.join(rel)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null)
    };
    let text = |rel: &str| std::fs::read_to_string(dir.join(rel)).unwrap_or_default();
    let meta: RunMeta = serde_json::from_slice(&std::fs::read(dir.join(layout::RUN))?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(layout::RUN).display()))?;
    let task: Task = serde_json::from_value(json(layout::ISSUE)).unwrap_or_else(|_| Task {
        id: meta.issue_id.clone(),
        title: meta.title.clone(),
        ..Default::default()
    });
    let events = text(layout::EVENTS).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
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
