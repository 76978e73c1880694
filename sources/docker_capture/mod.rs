//! `docker_capture`: runs OpenCode tasks, one container each, strictly one after another, and
//! emits what each run did (the seed's capture supervisor). See `run.rs` for one run.

mod command;
mod observe;
mod run;
mod workspace;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::capture::{Task, load_tasks};
use crate::component::{ComponentFuture, Context, SourceConfig, SourceContext};
use crate::config::{FieldError, FieldPath};
use crate::event::DataType;

/// Runs each task of a task file (`[{id, risk_level, title, prompt, files?}]`) in its own
/// container, serially: a run directory `<captures>/<UTC time>-<id>/`, a disposable copy of the
/// project in its `workspace/` with ocpipe's event plugin in `.opencode/plugins/`, then
/// `opencode run --print-logs <prompt>` in the workspace with a memory and CPU limit, a timeout
/// and a network mode. While it runs: the container's processes (`docker top`), their
/// connections (host `/proc`), its cgroup's memory and OOM kills, every `poll_ms`. At the end:
/// exit code, timeout, OOM (the container state, the cgroup's `oom_kill` count, the engine's
/// `oom` event), the workspace diff, the container's own changes, its logs, the native events
/// and `opencode export` of the session. Emits `capture` events: `started`, `observed` (each
/// poll), `native` (each recorded OpenCode event), `finished` (all of it; the `capture_dir` and
/// `html_report` sinks write it out).
///
/// Docker is found as the docker CLI finds it (`DOCKER_HOST`, else the default socket). The
/// container runs as root with `HOME=/root`; OpenCode's config directory is mounted read-only
/// at `/root/.config/opencode` and the variables in `pass_env` are passed through (never written
/// to the capture directory).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DockerCaptureConfig {
    /// The task file.
    #[serde(default = "default_tasks")]
    pub tasks: String,
    /// Run only this task (empty: every task, in file order).
    #[serde(default)]
    pub issue: String,
    /// The project copied into each run's workspace.
    #[serde(default = "default_project")]
    pub project: String,
    /// Where run directories go.
    #[serde(default = "default_captures")]
    pub captures: String,
    /// The image to run; it has `opencode` on its PATH, or gets `opencode_bin`.
    pub image_ref: String,
    /// A host `opencode` binary, mounted read-only at `/usr/local/bin/opencode`.
    #[serde(default)]
    pub opencode_bin: Option<String>,
    /// OpenCode's configuration directory, mounted read-only (default: `~/.config/opencode`
    /// when it exists; `""` for none).
    #[serde(default)]
    pub opencode_config: Option<String>,
    /// Environment variables passed through from ocpipe's environment (API keys).
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// Environment variables set in the container.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `provider/model` for `opencode run --model`.
    #[serde(default)]
    pub model: Option<String>,
    /// `none`, `host`, `bridge` or the name of a Docker network.
    #[serde(default = "default_network")]
    pub network: String,
    #[serde(default = "default_memory")]
    pub memory_mb: u64,
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// How often the running container is looked at.
    #[serde(default = "default_poll")]
    pub poll_ms: u64,
    /// Keep each run's `workspace/` (deleted by default).
    #[serde(default)]
    pub keep_workspace: bool,
    /// Inject ocpipe's OpenCode event plugin into the workspace.
    #[serde(default = "yes")]
    pub plugin: bool,
    /// `opencode export <session>` after the run.
    #[serde(default = "yes")]
    pub export_session: bool,
    /// Print each run's progress on stderr (a bar on a terminal, plain lines otherwise).
    #[serde(default)]
    pub progress: bool,
}

fn default_tasks() -> String {
    "tasks/issues.json".into()
}
fn default_project() -> String {
    ".".into()
}
fn default_captures() -> String {
    "artifacts/captures".into()
}
fn default_network() -> String {
    "bridge".into()
}
fn default_memory() -> u64 {
    2048
}
fn default_cpus() -> f64 {
    2.0
}
fn default_timeout() -> u64 {
    900
}
fn default_poll() -> u64 {
    1000
}
fn yes() -> bool {
    true
}

const EXAMPLE: &str = r#"tasks = "tasks/issues.json"
image_ref = "ocpipe-capture:latest"
network = "host"
memory_mb = 2048
timeout_secs = 900
pass_env = ["ANTHROPIC_API_KEY"]
"#;

crate::register_component!(
    source DockerCaptureConfig,
    "docker_capture",
    "Runs OpenCode tasks one container each (Docker), observing processes, connections, memory/OOM, files and native events",
    EXAMPLE
);

impl SourceConfig for DockerCaptureConfig {
    fn outputs(&self) -> DataType {
        DataType::CAPTURE
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.image_ref.trim().is_empty() {
            errs.push(
                FieldError::new(FieldPath::key("image_ref"), "`image_ref` is empty")
                    .help("name an image with opencode in it, or a base image with `opencode_bin`"),
            );
        }
        if self.memory_mb < 6 {
            errs.push(FieldError::new(
                FieldPath::key("memory_mb"),
                "`memory_mb` must be at least 6 (Docker's minimum)",
            ));
        }
        if self.cpus.is_nan() || self.cpus <= 0.0 {
            errs.push(FieldError::new(FieldPath::key("cpus"), "`cpus` must be more than 0"));
        }
        if self.timeout_secs == 0 {
            errs.push(FieldError::new(FieldPath::key("timeout_secs"), "`timeout_secs` must be at least 1"));
        }
        if self.poll_ms < 100 {
            errs.push(FieldError::new(FieldPath::key("poll_ms"), "`poll_ms` must be at least 100"));
        }
        if self.network.trim().is_empty() {
            errs.push(
                FieldError::new(FieldPath::key("network"), "`network` is empty")
                    .help("none, host, bridge or a network's name"),
            );
        }
        errs
    }

    fn build(&self, sc: SourceContext) -> anyhow::Result<ComponentFuture> {
        let cx = sc.cx.clone();
        let project = cx.resolve(&self.project);
        let tasks_path = cx.resolve(&self.tasks);
        let all = load_tasks(&tasks_path, &project).map_err(anyhow::Error::msg)?;
        let tasks: Vec<Task> = if self.issue.is_empty() {
            all
        } else {
            let ids: Vec<&str> = all.iter().map(|t| t.id.as_str()).collect();
            match all.iter().find(|t| t.id == self.issue) {
                Some(t) => vec![t.clone()],
                None => {
                    anyhow::bail!("no task `{}` in {}; its tasks: {}", self.issue, tasks_path.display(), ids.join(", "))
                }
            }
        };
        let settings = self.settings(&cx, project)?;
        let progress = self.progress;
        let mut settings = settings;
        Ok(Box::pin(async move {
            let SourceContext { cx, mut out, shutdown } = sc;
            settings.docker = check_engine(&settings).await?;
            run::abandoned(&settings, &cx, &mut out).await;
            let mut bar = Progress::new(progress, tasks.len());
            for (i, task) in tasks.iter().enumerate() {
                if shutdown.is_cancelled() {
                    break;
                }
                bar.start(i, task);
                let meta = run::run(&settings, &cx, task, &shutdown, &mut out).await;
                bar.done(&meta, &settings.captures.join(&meta.run_id));
            }
            bar.finish();
            Ok(())
        }))
    }
}

impl DockerCaptureConfig {
    fn settings(&self, cx: &Context, project: PathBuf) -> anyhow::Result<run::Settings> {
        let docker = bollard::Docker::connect_with_defaults().map_err(|e| {
            anyhow::anyhow!("no Docker engine answers at {} ({e}): start dockerd, or set DOCKER_HOST", docker_host())
        })?;
        let opencode_config = match self.opencode_config.as_deref() {
            Some("") => None,
            Some(p) => Some(cx.resolve(p)),
            None => Some(crate::component::home_dir().join(".config/opencode")).filter(|p| p.is_dir()),
        };
        if let Some(c) = opencode_config.as_ref().filter(|c| !c.is_dir()) {
            anyhow::bail!("opencode_config {} is not a directory", c.display());
        }
        let opencode_bin = self.opencode_bin.as_deref().filter(|b| !b.is_empty()).map(|b| cx.resolve(b));
        if let Some(b) = opencode_bin.as_ref().filter(|b| !b.is_file()) {
            anyhow::bail!("opencode_bin {} is not a file", b.display());
        }
        let mut env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut unset = Vec::new();
        for name in &self.pass_env {
            match std::env::var(name) {
                Ok(v) => env.push(format!("{name}={v}")),
                Err(_) => unset.push(name.as_str()),
            }
        }
        if !unset.is_empty() {
            tracing::info!(component = &*cx.id, "pass_env: not set here, so not passed: {}", unset.join(", "));
        }
        let captures = cx.resolve(&self.captures);
        crate::component::create_private_dir(&captures)
            .map_err(|e| anyhow::anyhow!("cannot create the captures folder {}: {e}", captures.display()))?;
        let lock = lock_captures(&captures)?;
        Ok(run::Settings {
            _lock: lock,
            docker,
            image: self.image_ref.clone(),
            opencode_bin,
            opencode_config,
            env,
            network: self.network.clone(),
            memory_mb: self.memory_mb,
            cpus: self.cpus,
            timeout: Duration::from_secs(self.timeout_secs),
            poll: Duration::from_millis(self.poll_ms),
            keep_workspace: self.keep_workspace,
            plugin: self.plugin,
            export_session: self.export_session,
            model: self.model.clone().filter(|m| !m.is_empty()),
            captures: std::fs::canonicalize(&captures).unwrap_or(captures),
            project: std::fs::canonicalize(&project).unwrap_or(project),
        })
    }
}

/// One capture at a time per captures folder (so a run without `meta/run.json` found at start
/// is one a stopped ocpipe left): an exclusive lock on `<captures>/.lock`, held while running.
fn lock_captures(captures: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = captures.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "another ocpipe capture is running on {} (one at a time per captures folder): wait for it, or set `captures`",
            captures.display()
        );
    }
    Ok(f)
}

/// The engine answers (in the API version both sides speak) and has the image: one clear error
/// that says what to do, otherwise.
fn docker_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

async fn check_engine(s: &run::Settings) -> anyhow::Result<bollard::Docker> {
    let host = docker_host();
    let no_engine = |e: bollard::errors::Error| {
        anyhow::anyhow!("no Docker engine answers at {host} ({e}): start dockerd, or set DOCKER_HOST")
    };
    s.docker.ping().await.map_err(no_engine)?;
    let docker = s.docker.clone().negotiate_version().await.map_err(no_engine)?;
    docker.inspect_image(&s.image).await.map_err(|_| {
        anyhow::anyhow!(
            "the image `{}` is not in the Docker engine at {host}: build or load it (docker build / docker import), or set image_ref",
            s.image
        )
    })?;
    Ok(docker)
}

/// Progress of a run of all tasks: a bar on a terminal, plain lines otherwise.
struct Progress {
    on: bool,
    total: usize,
    ok: usize,
    failed: usize,
    bar: Option<indicatif::ProgressBar>,
    started: std::time::Instant,
}

impl Progress {
    fn new(on: bool, total: usize) -> Progress {
        use std::io::IsTerminal;
        let bar = (on && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Progress { on, total, ok: 0, failed: 0, bar, started: std::time::Instant::now() }
    }

    fn say(&self, line: String) {
        match &self.bar {
            Some(b) => b.println(line),
            None if self.on => eprintln!("{line}"),
            None => tracing::info!("{line}"),
        }
    }

    fn start(&mut self, i: usize, task: &Task) {
        self.started = std::time::Instant::now();
        self.say(format!("[{}/{}] {} ({}): {}", i + 1, self.total, task.id, task.risk_level, task.title));
        if let Some(b) = &self.bar {
            b.set_message(format!("{} ({})", task.id, task.risk_level));
        }
    }

    fn done(&mut self, meta: &crate::capture::RunMeta, dir: &std::path::Path) {
        if meta.run_status == "completed" {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        self.say(format!(
            "      {} in {:.1} s (ok {}, failed {}) -> {}",
            meta.run_status,
            self.started.elapsed().as_secs_f64(),
            self.ok,
            self.failed,
            dir.display()
        ));
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if self.on {
            eprintln!("{} run(s): {} completed, {} not", self.ok + self.failed, self.ok, self.failed);
        }
    }
}
