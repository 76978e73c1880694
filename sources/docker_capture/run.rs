//! One capture run: its directory and workspace, one container, the supervision while it runs,
//! and everything collected when it ends. Whatever the agent does, the run ends with a
//! `Finished` event that holds the evidence.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{EventsOptions, KillContainerOptions, LogsOptions, RemoveContainerOptions, TopOptions};
use chrono::Utc;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::observe::{self, Observer};
use super::workspace;
use crate::capture::{CaptureEvent, Finished, Logs, RunMeta, Snapshot, Step, Task, layout};
use crate::component::{Context, Output};
use crate::event::{Event, Payload};

/// What every run of one source shares.
pub struct Settings {
    /// The captures folder's lock, held as long as these settings live.
    pub _lock: std::fs::File,
    pub docker: Docker,
    pub image: String,
    pub opencode_bin: Option<PathBuf>,
    pub opencode_config: Option<PathBuf>,
    /// `NAME=value` for the container.
    pub env: Vec<String>,
    pub network: String,
    pub memory_mb: u64,
    pub cpus: f64,
    pub timeout: Duration,
    pub poll: Duration,
    pub keep_workspace: bool,
    pub plugin: bool,
    pub export_session: bool,
    pub model: Option<String>,
    pub project: PathBuf,
    pub captures: PathBuf,
}

/// Where OpenCode keeps its data in the container (the run's scratch folder, so that the
/// export, run in a second container, reads the same database).
const DATA_IN_CONTAINER: &str = "/root/.local/share/opencode";

struct Emitter<'a> {
    cx: &'a Context,
    out: &'a mut Output,
    run_id: String,
    issue_id: String,
    dir: PathBuf,
}

impl Emitter<'_> {
    async fn send(&mut self, step: Step) {
        let ev = CaptureEvent {
            run_id: self.run_id.clone(),
            issue_id: self.issue_id.clone(),
            capture_dir: self.dir.clone(),
            step,
        };
        let id = format!("capture:{}:{}", self.run_id, step_name(&ev.step));
        self.out.send(Event::new(self.cx.id.clone(), Utc::now(), Payload::Capture(Box::new(ev))).with_id(id)).await;
    }
}

fn step_name(s: &Step) -> String {
    match s {
        Step::Started { .. } => "started".into(),
        Step::Observed { snapshot } => format!("observed:{}", snapshot.at),
        Step::Native { n, .. } => format!("native:{n}"),
        Step::Finished(_) => "finished".into(),
    }
}

/// Runs `task` in one container and reports it; returns the run's metadata.
pub async fn run(s: &Settings, cx: &Context, task: &Task, shutdown: &CancellationToken, out: &mut Output) -> RunMeta {
    let started = Utc::now();
    let clock = Instant::now();
    let mut run_id = format!("{}-{}", started.format("%Y%m%dT%H%M%SZ"), task.id);
    let mut n = 2;
    while s.captures.join(&run_id).exists() {
        run_id = format!("{}-{}-{n}", started.format("%Y%m%dT%H%M%SZ"), task.id);
        n += 1;
    }
    let dir = s.captures.join(&run_id);
    let mut meta = RunMeta {
        run_id: run_id.clone(),
        issue_id: task.id.clone(),
        risk_level: task.risk_level.to_string(),
        title: task.title.clone(),
        image: s.image.clone(),
        network_mode: s.network.clone(),
        memory_limit_mb: s.memory_mb,
        cpus: s.cpus,
        timeout_secs: s.timeout.as_secs(),
        started_at: started.to_rfc3339(),
        workspace_kept: s.keep_workspace,
        supervisor: format!("ocpipe {}", env!("CARGO_PKG_VERSION")),
        export_status: "not_attempted".into(),
        ..Default::default()
    };
    let mut emit = Emitter { cx, out, run_id, issue_id: task.id.clone(), dir: dir.clone() };
    let phase = |what: &str| tracing::debug!(component = &*cx.id, "{what} at {:.3} s", clock.elapsed().as_secs_f64());
    let mut observer = Observer::default();
    let mut logs = Logs::default();
    let mut fs_diff = json!({"added": [], "modified": [], "deleted": [], "outside_workspace": []});

    // A private scratch folder outside the capture directory: OpenCode's config (copied) and data.
    let (config, run_id) = (s.opencode_config.clone(), emit.run_id.clone());
    let scratch = tokio::task::spawn_blocking(move || Scratch::new(config.as_deref(), &run_id))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
    let prepared = match scratch {
        Ok(sc) => prepare(s, &dir, task).await.map(|b| (b, Some(sc))),
        Err(e) => Err(e),
    };
    let mut scratch = None;
    match prepared {
        Err(e) => {
            meta.run_status = "error".into();
            meta.error = Some(format!("preparing the run: {e}"));
        }
        Ok((before, sc)) => {
            scratch = sc;
            let mut sup = Supervision {
                s,
                scratch: scratch.as_ref().expect("made"),
                task,
                dir: &dir,
                meta: &mut meta,
                observer: &mut observer,
                logs: &mut logs,
                emit: &mut emit,
            };
            phase("prepared");
            let outside = sup.run(shutdown).await;
            phase("container removed");
            let (project, ws) = (s.project.clone(), dir.join(layout::WORKSPACE));
            fs_diff = tokio::task::spawn_blocking(move || {
                let after = workspace::hash_tree(&ws);
                workspace::diff(&project, &ws, &before, &after, outside)
            })
            .await
            .unwrap_or_else(|e| json!({"error": e.to_string()}));
        }
    }
    // Native events (the plugin's file, as written by the container: only a regular file is
    // read, and only so much of it), the session and its export.
    let (events_path, data) = (dir.join(layout::EVENTS), scratch.as_ref().map(|sc| sc.data.clone()));
    let (events, events_state, db_session) = tokio::task::spawn_blocking(move || {
        let (events, state) = read_events(&events_path);
        (events, state, data.and_then(|d| session_in_db(&d)))
    })
    .await
    .unwrap_or_default();
    meta.native_event_count = events.len();
    meta.native_events = events_state.into();
    meta.session_id = session_of(&events).or(db_session);
    phase("workspace compared");
    let mut export = None;
    let exportable = !matches!(meta.run_status.as_str(), "error" | "interrupted");
    if let (Some(sid), true, true, Some(sc)) = (&meta.session_id, s.export_session, exportable, &scratch) {
        let (status, value, stdout, stderr) = export_session(s, &dir, sc, sid).await;
        meta.export_status = status;
        export = value;
        logs.export_stdout = stdout;
        logs.export_stderr = stderr;
    }
    phase("exported");
    // The workspace goes unless kept; the scratch folder always (the export holds the session).
    let (keep, dir2) = (s.keep_workspace, dir.clone());
    let cleanup = tokio::task::spawn_blocking(move || {
        let mut problems = Vec::new();
        if !keep && let Err(e) = std::fs::remove_dir_all(dir2.join(layout::WORKSPACE)) {
            problems.push(format!("the workspace could not be removed: {e}"));
        }
        if let Some(sc) = scratch
            && let Err(e) = sc.remove()
        {
            problems.push(format!("the scratch folder could not be removed: {e}"));
        }
        problems
    })
    .await
    .unwrap_or_default();
    if !cleanup.is_empty() {
        tracing::warn!(component = &*cx.id, "{}: {}", emit.run_id, cleanup.join("; "));
        meta.workspace_kept |= dir.join(layout::WORKSPACE).exists();
        meta.error = Some(meta.error.take().map_or(cleanup.join("; "), |e| format!("{e}; {}", cleanup.join("; "))));
    }
    meta.finished_at = Utc::now().to_rfc3339();
    meta.duration_secs = clock.elapsed().as_secs_f64();
    // Valid when the supervisor saw the run through; `capture_dir` lowers it if a write fails.
    meta.capture_valid = meta.run_status != "error";
    for (n, event) in events.iter().enumerate() {
        emit.send(Step::Native { n, event: event.clone() }).await;
    }
    let finished = Finished {
        meta: meta.clone(),
        task: task.clone(),
        process_tree: observer.process_tree(),
        fs_diff,
        network: observer.network(&s.network),
        logs,
        export,
        events,
    };
    emit.send(Step::Finished(Box::new(finished))).await;
    meta
}

/// Runs left behind by an ocpipe that was killed mid-run (the captures folder is locked while a
/// capture runs, so any run without `meta/run.json` here is one): their containers (found by the
/// `ocpipe.run_id` label) and scratch folders are removed, and each is finished as `abandoned`
/// (not `capture_valid`: nobody watched it end), so no run stays half-written.
pub async fn abandoned(s: &Settings, cx: &Context, out: &mut Output) {
    let captures = s.captures.clone();
    // Run folders only (named `<UTC time>-<id>`, not links), without `meta/run.json`.
    let unfinished: Vec<PathBuf> = tokio::task::spawn_blocking(move || {
        std::fs::read_dir(&captures)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter(|e| is_run_id(&e.file_name().to_string_lossy()))
                    .map(|e| e.path())
                    .filter(|d| !d.join(layout::RUN).exists())
                    .collect()
            })
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    if unfinished.is_empty() {
        return;
    }
    let filters = HashMap::from([("label".to_string(), vec!["ocpipe.run_id".to_string()])]);
    let list =
        bollard::query_parameters::ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    // Without the list, a left container might still run: leave those runs for the next start.
    let containers = match s.docker.list_containers(Some(list)).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                component = &*cx.id,
                "cannot list containers ({e}): runs cut short are left for the next start"
            );
            return;
        }
    };
    for dir in unfinished {
        let run_id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        tracing::warn!(
            component = &*cx.id,
            "run {run_id} was cut short by a stopped ocpipe: finishing it as abandoned"
        );
        let mut logs = Logs::default();
        let mut container_id = String::new();
        for c in containers.iter().filter(|c| c.labels.as_ref().and_then(|l| l.get("ocpipe.run_id")) == Some(&run_id)) {
            let Some(id) = &c.id else { continue };
            if container_id.is_empty() {
                logs = container_logs(&s.docker, id).await;
                container_id = id.clone();
            }
            let remove = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            let _ = s.docker.remove_container(id, Some(remove)).await;
        }
        let (keep, d, rid) = (s.keep_workspace, dir.clone(), run_id.clone());
        let (task, events, events_state) = tokio::task::spawn_blocking(move || {
            let task: Task = std::fs::read(d.join(layout::ISSUE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_else(|| Task { id: rid.clone(), ..Default::default() });
            if !keep {
                let _ = std::fs::remove_dir_all(d.join(layout::WORKSPACE));
            }
            // Its scratch folder: `ocpipe-run-<run id>-<8 hex digits>`, exactly.
            let prefix = format!("ocpipe-run-{rid}-");
            for e in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let ours = name
                    .strip_prefix(&prefix)
                    .is_some_and(|h| h.len() == 8 && h.chars().all(|c| c.is_ascii_hexdigit()));
                if ours && e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            let (events, state) = read_events(&d.join(layout::EVENTS));
            (task, events, state)
        })
        .await
        .unwrap_or_default();
        let not_seen = json!({"note": "not observed: the supervisor was stopped during this run"});
        // The run id starts with its UTC start time.
        let started_at = chrono::NaiveDateTime::parse_from_str(run_id.get(..16).unwrap_or(""), "%Y%m%dT%H%M%SZ")
            .map(|t| t.and_utc().to_rfc3339())
            .unwrap_or_default();
        let meta = RunMeta {
            run_id: run_id.clone(),
            issue_id: task.id.clone(),
            risk_level: task.risk_level.to_string(),
            title: task.title.clone(),
            run_status: "abandoned".into(),
            container_id,
            image: s.image.clone(),
            started_at,
            finished_at: Utc::now().to_rfc3339(),
            error: Some("ocpipe was stopped during this run; what it left was cleaned up at the next start".into()),
            native_event_count: events.len(),
            native_events: events_state.into(),
            export_status: "not_attempted".into(),
            supervisor: format!("ocpipe {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let finished = Finished {
            meta,
            task: task.clone(),
            process_tree: not_seen.clone(),
            fs_diff: not_seen.clone(),
            network: not_seen,
            logs,
            export: None,
            events,
        };
        let mut emit = Emitter { cx, out: &mut *out, run_id, issue_id: task.id, dir };
        emit.send(Step::Finished(Box::new(finished))).await;
    }
}

/// `20261129T151500Z-fix_math_utils` (optionally `-2`, …): a run folder's name.
fn is_run_id(name: &str) -> bool {
    name.len() > 17
        && chrono::NaiveDateTime::parse_from_str(&name[..16], "%Y%m%dT%H%M%SZ").is_ok()
        && name.as_bytes()[16] == b'-'
}

/// Makes the run's folders, copies the project, injects the plugin; returns the workspace's
/// files before the run.
async fn prepare(
    s: &Settings,
    dir: &Path,
    task: &Task,
) -> std::io::Result<std::collections::BTreeMap<String, (u64, String)>> {
    let (project, captures, dir, plugin) = (s.project.clone(), s.captures.clone(), dir.to_path_buf(), s.plugin);
    let issue = serde_json::to_vec_pretty(task).map_err(std::io::Error::other)?;
    tokio::task::spawn_blocking(move || {
        for sub in ["meta", "input", "logs", "observations", "events", "derived", "report"] {
            crate::component::create_private_dir(&dir.join(sub))?;
        }
        // The task first: a run cut short still says what it was.
        crate::capture::write_file(&dir, layout::ISSUE, &issue)?;
        let ws = dir.join(layout::WORKSPACE);
        workspace::copy_project(&project, &ws, &[captures.clone(), dir.clone()])?;
        if plugin {
            workspace::inject_plugin(&ws)?;
        }
        Ok(workspace::hash_tree(&ws))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// A run's private scratch folder, outside the capture directory: a copy of the user's OpenCode
/// config (OpenCode writes into its config folder, and the user's own must stay as it is; its
/// credentials never land in the capture) and OpenCode's data (read again by the export).
pub(super) struct Scratch {
    root: PathBuf,
    config: Option<PathBuf>,
    data: PathBuf,
}

impl Scratch {
    fn new(config: Option<&Path>, run_id: &str) -> std::io::Result<Scratch> {
        let root = std::env::temp_dir().join(format!("ocpipe-run-{run_id}-{:08x}", rand::random::<u32>()));
        crate::component::create_private_dir(&root)?;
        let mut sc = Scratch { data: root.join("data"), config: None, root };
        crate::component::create_private_dir(&sc.data)?;
        if let Some(from) = config {
            let to = sc.root.join("config");
            workspace::copy_project(from, &to, &[])
                .map_err(|e| std::io::Error::new(e.kind(), format!("copying {}: {e}", from.display())))?;
            sc.config = Some(to);
        }
        Ok(sc)
    }

    fn remove(mut self) -> std::io::Result<()> {
        let root = std::mem::take(&mut self.root);
        std::fs::remove_dir_all(root)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.root.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// The plugin's events: only a regular file (not a link or a FIFO the agent put there), up to
/// `capture::READ_MAX` bytes, line by line. Returns them and `recorded`, `empty`, `missing` or
/// `unreadable`.
fn read_events(path: &Path) -> (Vec<Value>, &'static str) {
    match crate::capture::read_regular(path, crate::capture::READ_MAX) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::InvalidInput => {
            (Vec::new(), "missing")
        }
        Err(_) => (Vec::new(), "unreadable"),
        Ok(bytes) => {
            let events = crate::capture::json_lines(&bytes);
            let state = if events.is_empty() { "empty" } else { "recorded" };
            (events, state)
        }
    }
}

/// What the container sees of the host: its workspace, the events folder of its capture (the
/// only part of the capture it can write), OpenCode's data and config from the scratch folder.
/// The export's container (`agent: false`) gets the workspace read-only and no events folder:
/// what the agent left there cannot change the evidence already taken.
fn binds(s: &Settings, dir: &Path, scratch: &Scratch, agent: bool) -> Vec<String> {
    let workspace = dir.join(layout::WORKSPACE);
    let mut b = vec![
        if agent {
            format!("{}:/workspace", workspace.display())
        } else {
            format!("{}:/workspace:ro", workspace.display())
        },
        format!("{}:{DATA_IN_CONTAINER}", scratch.data.display()),
    ];
    if agent {
        b.push(format!("{}:/capture/events", dir.join("events").display()));
    }
    if let Some(c) = &scratch.config {
        b.push(format!("{}:/root/.config/opencode", c.display()));
    }
    if let Some(bin) = &s.opencode_bin {
        b.push(format!("{}:/usr/local/bin/opencode:ro", bin.display()));
    }
    b
}

/// What a container of a run is made of.
struct Spec<'a> {
    /// `ocpipe.run_id` (so `docker ps --filter label=ocpipe.run_id` finds capture containers).
    run_id: &'a str,
    dir: &'a Path,
    scratch: &'a Scratch,
    env: Vec<String>,
    cmd: Vec<String>,
    network: &'a str,
    /// The agent's own container (not the export's).
    agent: bool,
}

fn container_body(s: &Settings, spec: Spec<'_>) -> ContainerCreateBody {
    let Spec { run_id, dir, scratch, env, cmd, network, agent } = spec;
    ContainerCreateBody {
        image: Some(s.image.clone()),
        cmd: Some(cmd),
        env: Some(env),
        working_dir: Some("/workspace".into()),
        labels: Some(HashMap::from([("ocpipe.run_id".to_string(), run_id.to_string())])),
        host_config: Some(HostConfig {
            binds: Some(binds(s, dir, scratch, agent)),
            memory: Some((s.memory_mb * 1024 * 1024) as i64),
            memory_swap: Some((s.memory_mb * 1024 * 1024) as i64),
            nano_cpus: Some((s.cpus * 1e9) as i64),
            network_mode: Some(network.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container's part of a run, and what it fills in.
struct Supervision<'r, 'e> {
    s: &'r Settings,
    scratch: &'r Scratch,
    task: &'r Task,
    dir: &'r Path,
    meta: &'r mut RunMeta,
    observer: &'r mut Observer,
    logs: &'r mut Logs,
    emit: &'r mut Emitter<'e>,
}

impl Supervision<'_, '_> {
    /// Creates, starts and watches the container, then collects its exit, logs and changes and
    /// removes it. Returns the container's own changes outside the mounted folders.
    async fn run(&mut self, shutdown: &CancellationToken) -> Value {
        let s = self.s;
        let mut env = s.env.clone();
        env.extend([
            format!("MAS_RUN_ID={}", self.meta.run_id),
            format!("MAS_ISSUE_ID={}", self.task.id),
            "MAS_CAPTURE_DIR=/capture".to_string(),
            "HOME=/root".to_string(),
        ]);
        let mut cmd = vec!["opencode".to_string(), "run".into(), "--print-logs".into()];
        if let Some(m) = &s.model {
            cmd.extend(["--model".to_string(), m.clone()]);
        }
        cmd.push(self.task.prompt.clone());
        let body = container_body(
            s,
            Spec {
                run_id: &self.meta.run_id,
                dir: self.dir,
                scratch: self.scratch,
                env,
                cmd,
                network: &s.network,
                agent: true,
            },
        );
        let id = match s.docker.create_container(None::<bollard::query_parameters::CreateContainerOptions>, body).await
        {
            Ok(c) => c.id,
            Err(e) => {
                self.meta.run_status = "error".into();
                self.meta.error = Some(format!("creating the container from {}: {e}", s.image));
                return json!([]);
            }
        };
        self.meta.container_id = id.clone();
        let oom_event = Arc::new((AtomicBool::new(false), tokio::sync::Notify::new()));
        let watcher = tokio::spawn(watch_oom(s.docker.clone(), id.clone(), oom_event.clone()));
        if let Err(e) = s.docker.start_container(&id, None::<bollard::query_parameters::StartContainerOptions>).await {
            self.meta.run_status = "error".into();
            self.meta.error = Some(format!("starting the container: {e}"));
        } else {
            let started = Step::Started {
                task: self.task.clone(),
                image: s.image.clone(),
                started_at: self.meta.started_at.clone(),
            };
            self.emit.send(started).await;
            let outcome = watch(s, &id, self.observer, shutdown, self.emit).await;
            let state = s
                .docker
                .inspect_container(&id, None::<bollard::query_parameters::InspectContainerOptions>)
                .await
                .ok()
                .and_then(|i| i.state);
            self.meta.exit_code = state.as_ref().and_then(|st| st.exit_code);
            let state_oom = state.as_ref().and_then(|st| st.oom_killed).unwrap_or(false);
            // It exited killed (137) on its own: the engine's `oom` event may come a moment after
            // the exit, so it gets half a second; a clean exit, or our own kill, needs no wait.
            let notified = oom_event.1.notified();
            if outcome == Outcome::Exited && self.meta.exit_code == Some(137) && !oom_event.0.load(Ordering::Acquire) {
                let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
            }
            let evidence = [
                (state_oom, "state"),
                (self.observer.oom_kills > 0, "cgroup"),
                (oom_event.0.load(Ordering::Acquire), "event"),
            ];
            self.meta.oom_evidence =
                evidence.iter().filter(|(seen, _)| *seen).map(|(_, how)| how.to_string()).collect();
            self.meta.oom_killed = !self.meta.oom_evidence.is_empty();
            self.meta.timed_out = outcome == Outcome::Timeout;
            // An OOM kill is the likelier cause of what followed (even a timeout after it).
            self.meta.run_status = match outcome {
                Outcome::Interrupted => "interrupted",
                _ if self.meta.oom_killed => "oom",
                Outcome::Timeout => "timeout",
                Outcome::Exited if self.meta.exit_code == Some(0) => "completed",
                Outcome::Exited => "failed",
            }
            .into();
        }
        watcher.abort();
        // Its logs and its own changes, read together.
        let (logs, outside) = tokio::join!(container_logs(&s.docker, &id), outside_changes(&s.docker, &id));
        *self.logs = logs;
        let remove = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        let _ = s.docker.remove_container(&id, Some(remove)).await;
        outside
    }
}

/// Sets the flag (and wakes who waits) when the engine reports an OOM in the container.
async fn watch_oom(docker: Docker, id: String, flag: Arc<(AtomicBool, tokio::sync::Notify)>) {
    let filters = HashMap::from([("container".to_string(), vec![id]), ("event".to_string(), vec!["oom".to_string()])]);
    let mut events = docker.events(Some(EventsOptions { filters: Some(filters), ..Default::default() }));
    while let Some(Ok(_)) = events.next().await {
        flag.0.store(true, Ordering::Release);
        flag.1.notify_waiters();
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Exited,
    Timeout,
    Interrupted,
}

/// Polls the running container until it exits, the timeout passes or ocpipe is stopped.
async fn watch(
    s: &Settings,
    id: &str,
    observer: &mut Observer,
    shutdown: &CancellationToken,
    emit: &mut Emitter<'_>,
) -> Outcome {
    let deadline = tokio::time::Instant::now() + s.timeout;
    let mut wait = Box::pin(s.docker.wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>));
    let mut tick = tokio::time::interval(s.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cgroup: Option<PathBuf> = None;
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Outcome::Interrupted,
            _ = wait.next() => {
                // The wait can end without an exit (the engine restarted): look before believing it.
                let state = s.docker.inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>).await;
                match state.map(|i| i.state.and_then(|st| st.running)) {
                    Ok(Some(false)) | Ok(None) => break Outcome::Exited,
                    // Still running, or the engine does not answer yet: wait again, a moment later.
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
                wait = Box::pin(s.docker.wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>));
            }
            _ = tokio::time::sleep_until(deadline) => break Outcome::Timeout,
            _ = tick.tick() => {
                if let Some(snapshot) = snapshot(&s.docker, id, &mut cgroup, &mut observer.observable).await {
                    observer.add(&snapshot);
                    emit.send(Step::Observed { snapshot }).await;
                }
            }
        }
    };
    if outcome != Outcome::Exited {
        let _ = s.docker.kill_container(id, Some(KillContainerOptions { signal: "SIGKILL".into() })).await;
        let _ = wait.next().await;
    }
    outcome
}

async fn snapshot(docker: &Docker, id: &str, cgroup: &mut Option<PathBuf>, observable: &mut bool) -> Option<Snapshot> {
    let top = docker.top_processes(id, Some(TopOptions { ps_args: observe::PS_ARGS.into() })).await.ok()?;
    let processes = observe::parse_top(&top.titles.unwrap_or_default(), &top.processes.unwrap_or_default());
    let pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
    let (id, known) = (id.to_string(), cgroup.clone());
    let (connections, readable, cg, (memory_bytes, oom_kills)) = tokio::task::spawn_blocking(move || {
        // Only pids this machine's /proc shows as the container's (not a remote engine's).
        let local = observe::local_pids(&pids, &id);
        let cg = known.or_else(|| local.first().and_then(|p| observe::cgroup_of(*p)));
        let (connections, readable) = observe::connections(&local);
        (connections, readable, cg.clone(), cg.as_deref().map(observe::memory).unwrap_or((None, None)))
    })
    .await
    .ok()?;
    *cgroup = cg;
    *observable |= readable;
    Some(Snapshot { at: Utc::now().to_rfc3339(), processes, connections, memory_bytes, oom_kills })
}

/// Both streams with their times, and each stream alone.
async fn container_logs(docker: &Docker, id: &str) -> Logs {
    let opts = LogsOptions { stdout: true, stderr: true, timestamps: true, tail: "all".into(), ..Default::default() };
    let mut stream = docker.logs(id, Some(opts));
    let mut logs = Logs::default();
    while let Some(Ok(chunk)) = stream.next().await {
        let (name, text) = match &chunk {
            LogOutput::StdOut { message } => ("stdout", String::from_utf8_lossy(message).into_owned()),
            LogOutput::StdErr { message } => ("stderr", String::from_utf8_lossy(message).into_owned()),
            _ => continue,
        };
        for line in text.split_inclusive('\n') {
            let (time, rest) = line.split_once(' ').unwrap_or(("", line));
            logs.container.push_str(&format!("{time} [{name}] {rest}"));
            if !rest.ends_with('\n') {
                logs.container.push('\n');
            }
            if name == "stdout" { &mut logs.stdout } else { &mut logs.stderr }.push_str(rest);
        }
    }
    logs
}

/// The container's own changes outside the folders mounted into it (`docker diff`).
async fn outside_changes(docker: &Docker, id: &str) -> Value {
    let Ok(Some(changes)) = docker.container_changes(id).await else { return json!([]) };
    let mounted = ["/workspace", "/capture", DATA_IN_CONTAINER, "/root/.config/opencode", "/usr/local/bin/opencode"];
    let list: Vec<Value> = changes
        .into_iter()
        .filter(|c| !mounted.iter().any(|m| c.path == *m || c.path.starts_with(&format!("{m}/"))))
        .map(|c| {
            let kind = match c.kind as u8 {
                0 => "modified",
                1 => "added",
                _ => "deleted",
            };
            json!({"path": c.path, "kind": kind})
        })
        .collect();
    Value::Array(list)
}

/// The session the run made, from the plugin's events.
fn session_of(events: &[Value]) -> Option<String> {
    events.iter().find_map(|e| {
        let p = &e["properties"];
        p["info"]["id"]
            .as_str()
            .filter(|id| id.starts_with("ses_") && e["type"].as_str().is_some_and(|t| t.starts_with("session.")))
            .or(p["sessionID"].as_str())
            .map(str::to_string)
    })
}

/// The session in OpenCode's own database (when the plugin recorded nothing).
/// The container wrote this folder: only regular files are opened (a FIFO would hang the run, a
/// link would read a host database), without following links, and no schema code runs.
fn session_in_db(data: &Path) -> Option<String> {
    let db = data.join("opencode.db");
    for f in [db.clone(), data.join("opencode.db-wal"), data.join("opencode.db-shm")] {
        match std::fs::symlink_metadata(&f) {
            Ok(m) if !m.is_file() => return None,
            _ => {}
        }
    }
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = rusqlite::Connection::open_with_flags(&db, flags).ok()?;
    conn.pragma_update(None, "trusted_schema", "OFF").ok()?;
    conn.query_row("SELECT id FROM session WHERE parent_id IS NULL ORDER BY time_created LIMIT 1", [], |r| r.get(0))
        .ok()
}

/// `opencode export <session>` in a second container of the same image over the run's data.
async fn export_session(
    s: &Settings,
    dir: &Path,
    scratch: &Scratch,
    sid: &str,
) -> (String, Option<Value>, String, String) {
    let cmd = vec!["opencode".to_string(), "export".into(), sid.to_string()];
    let env = vec!["HOME=/root".to_string(), "OPENCODE_DISABLE_MODELS_FETCH=1".to_string()];
    let run_id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let body = container_body(s, Spec { run_id: &run_id, dir, scratch, env, cmd, network: "none", agent: false });
    let id = match s.docker.create_container(None::<bollard::query_parameters::CreateContainerOptions>, body).await {
        Ok(c) => c.id,
        Err(e) => return (format!("failed: {e}"), None, String::new(), String::new()),
    };
    let mut status = String::new();
    if let Err(e) = s.docker.start_container(&id, None::<bollard::query_parameters::StartContainerOptions>).await {
        status = format!("failed: {e}");
    } else {
        let mut wait = Box::pin(s.docker.wait_container(&id, None::<bollard::query_parameters::WaitContainerOptions>));
        if tokio::time::timeout(Duration::from_secs(60), wait.next()).await.is_err() {
            let _ = s.docker.kill_container(&id, Some(KillContainerOptions { signal: "SIGKILL".into() })).await;
            status = "failed: timed out after 60 s".into();
        }
    }
    let logs = container_logs(&s.docker, &id).await;
    let _ = s.docker.remove_container(&id, Some(RemoveContainerOptions { force: true, ..Default::default() })).await;
    // The export is the first JSON document that starts a line (log lines may come before it).
    let parsed = logs
        .stdout
        .match_indices('{')
        .filter(|(i, _)| *i == 0 || logs.stdout.as_bytes()[i - 1] == b'\n')
        .find_map(|(i, _)| serde_json::Deserializer::from_str(&logs.stdout[i..]).into_iter::<Value>().next()?.ok());
    if status.is_empty() {
        status = if parsed.is_some() { "exported".into() } else { "failed: no JSON on stdout".into() };
    }
    (status, parsed, logs.stdout, logs.stderr)
}
