//! The command line: `run`, `validate`, `list`, `doc`, `tap`, `top`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::component::{create_private_dir, expand_home, home_dir};
use crate::config::{self, Report};
use crate::control;
use crate::registry::{self, Kind};
use crate::runtime::{RunOptions, Topology};

#[derive(Parser, Debug)]
#[command(name = "ocpipe", version, about = "An event pipeline for watching OpenCode coding agents")]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace (RUST_LOG is used when this is not given).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Also log to this file (or to DIR/monitor.log), rotated daily: monitor.log is today's,
    /// monitor.log.YYYY-MM-DD the days before.
    #[arg(long, global = true, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a pipeline until its sources finish or SIGINT/SIGTERM.
    Run {
        /// Pipeline files (TOML); several are merged. A checked-in pipeline such as
        /// `pipelines/trace.toml` also works where the file is absent (the binary embeds it).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// State directory (checkpoints, control socket). Default: the config's `data_dir`,
        /// else $XDG_STATE_HOME/ocpipe or ~/.local/state/ocpipe.
        #[arg(long, env = "OCPIPE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Reload when a file changes (SIGHUP always reloads): an invalid change is logged and
        /// the running pipeline goes on; a valid one rebuilds only the components it changes.
        #[arg(long)]
        watch: bool,
    },
    /// Check pipeline files without running them (touches no files or network). Exit 0 or 1.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the `[[tests]]` of pipeline files without touching their real sources or sinks:
    /// events in at components, conditions on what others give. Each FILE is a pipeline (with
    /// `NAME.tests.toml` beside it when there is one). A line per test; exit 1 on a failure.
    Test {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List every component type with its description.
    List {
        /// Machine-readable: kind, type, description, example and JSON schema of each.
        #[arg(long)]
        json: bool,
    },
    /// Write a reference page for every component (Markdown) into a directory.
    Doc {
        #[arg(long, default_value = "docs/components")]
        out: PathBuf,
    },
    /// Print the events leaving one component of a running pipeline, as JSON lines. The viewer
    /// never slows the pipeline: when it falls behind, it misses events.
    Tap {
        component: String,
        #[arg(long, env = "OCPIPE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Show every component's counters (received, sent, dropped, errors) of a running pipeline.
    Top {
        #[arg(long, env = "OCPIPE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Print once as JSON and exit.
        #[arg(long)]
        once: bool,
    },
}

pub fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    // Subcommands that components contribute join the built-in ones.
    let extra = registry::commands();
    let matches = Cli::command().subcommands(extra.iter().map(|c| (c.command)())).get_matches();
    let level = matches.get_one::<String>("log_level").cloned();
    let log_file = matches.get_one::<PathBuf>("log_file").cloned();
    if let Some((name, sub)) = matches.subcommand()
        && let Some(c) = extra.iter().find(|c| c.name == name)
    {
        // Commands print answers, not progress: quiet unless asked.
        let quiet = std::env::var_os("RUST_LOG").is_none().then_some("warn");
        init_logging(level.as_deref().or(quiet), log_file.as_deref());
        return (c.run)(sub);
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    init_logging(cli.log_level.as_deref(), cli.log_file.as_deref());
    match cli.command {
        Command::Run { files, data_dir, watch } => run(files, data_dir, watch),
        Command::Validate { files } => validate(files),
        Command::Test { files } => {
            let load = |group: &[PathBuf]| load_files(group).map(|(p, _)| p).map_err(|report| report.to_string());
            if crate::pipeline_test::run_files(&files, &load) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Command::List { json } => list(json),
        Command::Doc { out } => match crate::docs::write_docs(&out) {
            Ok(n) => {
                println!("wrote {n} reference pages to {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(format_args!("{e:#}")),
        },
        Command::Tap { component, data_dir, limit } => tap(component, data_dir, limit),
        Command::Top { data_dir, once } => top(data_dir, once),
    }
}

fn init_logging(level: Option<&str>, file: Option<&Path>) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        // The NATS client logs every reconnect attempt; the components say what matters.
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn")),
    };
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    // Nothing is written over a full-screen program (`--log-file` still gets it).
    let stderr = std::io::stderr.with_filter(|_| !crate::terminal::screen_taken());
    let console = tracing_subscriber::fmt::layer().with_writer(stderr).with_ansi(std::io::stderr().is_terminal());
    let file = file.map(|p| match crate::logfile::DailyFile::open(p) {
        Ok(f) => {
            tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || crate::logfile::Handle(f.clone()))
        }
        Err(e) => {
            eprintln!("error: cannot open log file {}: {e}", p.display());
            std::process::exit(1);
        }
    });
    tracing_subscriber::registry().with(filter).with(console).with(file).init();
}

fn fail(msg: std::fmt::Arguments<'_>) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}

/// Pipelines shipped in the binary, so `ocpipe run pipelines/x.toml` works from any directory.
const EMBEDDED: &[(&str, &str)] = &[
    ("pipelines/trace.toml", include_str!("../pipelines/trace.toml")),
    ("pipelines/monitor.toml", include_str!("../pipelines/monitor.toml")),
    ("pipelines/status-light.toml", include_str!("../pipelines/status-light.toml")),
    ("pipelines/capture.toml", include_str!("../pipelines/capture.toml")),
    ("pipelines/team-agent.toml", include_str!("../pipelines/team-agent.toml")),
    ("pipelines/team-aggregator.toml", include_str!("../pipelines/team-aggregator.toml")),
];

fn load_files(files: &[PathBuf]) -> Result<(config::Pipeline, Report), Report> {
    if let [file] = files
        && let (false, Some(text)) = (file.exists(), embedded(file))
    {
        tracing::info!("{} is not here; using the copy built into ocpipe", file.display());
        return config::load_str(&file.display().to_string(), text);
    }
    config::load(files)
}

/// A pipeline shipped in the binary (`pipelines/NAME.toml`), for commands that run one.
pub fn embedded_pipeline(path: &str) -> Option<&'static str> {
    embedded(Path::new(path))
}

fn embedded(path: &Path) -> Option<&'static str> {
    let p = path.to_string_lossy();
    let p = p.trim_start_matches("./");
    EMBEDDED.iter().find(|(name, _)| *name == p).map(|(_, text)| *text)
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("ocpipe"),
        None => home_dir().join(".local/state/ocpipe"),
    }
}

fn run(files: Vec<PathBuf>, data_dir: Option<PathBuf>, watch: bool) -> ExitCode {
    let loaded = load_files(&files);
    run_pipeline(loaded, data_dir, Some(Reloading { files, watch }))
}

/// Where a running pipeline's reloads come from.
struct Reloading {
    files: Vec<PathBuf>,
    watch: bool,
}

/// Runs a loaded pipeline until its sources end or it is stopped (`ocpipe run`, and commands
/// that run a pipeline of their own, like `ocpipe capture`).
pub fn run_loaded(loaded: Result<(config::Pipeline, Report), Report>, data_dir: Option<PathBuf>) -> ExitCode {
    run_pipeline(loaded, data_dir, None)
}

fn run_pipeline(
    loaded: Result<(config::Pipeline, Report), Report>,
    data_dir: Option<PathBuf>,
    reloading: Option<Reloading>,
) -> ExitCode {
    let (pipeline, warnings) = match loaded {
        Ok(x) => x,
        Err(report) => {
            eprint!("{report}");
            return ExitCode::FAILURE;
        }
    };
    if !warnings.diagnostics.is_empty() {
        eprint!("{warnings}");
    }
    let data_dir = data_dir
        .or_else(|| pipeline.data_dir.as_ref().map(|d| expand_home(&d.to_string_lossy())))
        .unwrap_or_else(default_data_dir);
    if let Err(e) = create_private_dir(&data_dir) {
        return fail(format_args!("cannot create data directory {}: {e}", data_dir.display()));
    }
    let base_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format_args!("cannot start the runtime: {e}")),
    };
    rt.block_on(async move {
        let listener = match control::bind(&data_dir).await {
            Ok(l) => l,
            Err(e) => return fail(format_args!("{e:#}")),
        };
        let api = match &pipeline.api {
            Some(api) => match api_listener(api).await {
                Ok(l) => Some(l),
                Err(e) => return fail(format_args!("{e:#}")),
            },
            None => None,
        };
        let topology = match Topology::build(pipeline, &RunOptions { data_dir: data_dir.clone(), base_dir }) {
            Ok(t) => t,
            Err(e) => return fail(format_args!("{e:#}")),
        };
        let shutdown = CancellationToken::new();
        let control_stop = CancellationToken::new();
        tokio::spawn(control::serve(listener, topology.telemetry(), control_stop.clone()));
        if let Some(api) = api {
            tokio::spawn(crate::telemetry::serve(api, topology.telemetry(), control_stop.clone()));
        }
        tokio::spawn(signals(shutdown.clone()));
        tracing::info!(data_dir = %data_dir.display(), "pipeline running; `ocpipe tap ID` and `ocpipe top` watch it");
        let reloads = reloading.map(|r| {
            let (tx, rx) = crate::runtime::reload_channel();
            let load: crate::reloader::Loader = Arc::new(|files: &[PathBuf]| load_files(files));
            tokio::spawn(crate::reloader::reload_on_change(r.files, r.watch, load, tx));
            rx
        });
        let summary = topology.run_reloading(shutdown, reloads).await;
        control_stop.cancel();
        // Removed here, not only by the serving task: the runtime may end before that runs.
        let _ = std::fs::remove_file(control::socket_path(&data_dir));
        for (id, kind, t, m) in &summary.metrics {
            tracing::info!(
                component = %id, kind = %kind, r#type = t,
                received = m.received, sent = m.sent, dropped_full = m.dropped.full, dropped_intentional = m.dropped.intentional, dropped_error = m.dropped.error, errors = m.errors,
                "final counters"
            );
        }
        if summary.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    })
}

/// The metrics server's socket, bound before anything runs so a taken port stops the start.
async fn api_listener(api: &crate::telemetry::ApiConfig) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = api.socket_addr().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr} for `api` (/metrics, /health): {e}; change `api.address` or stop what uses it"
        )
    })?;
    tracing::info!("metrics on http://{addr}/metrics, health on http://{addr}/health");
    Ok(listener)
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        tracing::warn!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    shutdown.cancel();
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(130);
}

fn validate(files: Vec<PathBuf>) -> ExitCode {
    match load_files(&files) {
        Ok((pipeline, warnings)) => {
            eprint!("{warnings}");
            println!(
                "ok: {} component{} ({})",
                pipeline.components.len(),
                if pipeline.components.len() == 1 { "" } else { "s" },
                pipeline.components.iter().map(|c| format!("{} {}", c.kind, c.id)).collect::<Vec<_>>().join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(report) => {
            eprint!("{report}");
            ExitCode::FAILURE
        }
    }
}

fn list(json: bool) -> ExitCode {
    let regs = registry::all();
    let mut out = std::io::stdout().lock();
    if json {
        let items: Vec<_> = regs
            .iter()
            .map(|r| {
                let (takes, gives) = r.data_types();
                serde_json::json!({
                    "kind": r.kind, "type": r.type_name, "description": r.description,
                    "takes": takes.map(|t| t.to_string()), "gives": (r.kind != Kind::Sink).then(|| gives.to_string()),
                    "example": r.example, "schema": (r.schema)(),
                })
            })
            .collect();
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&items).unwrap());
    } else {
        let width = regs.iter().map(|r| r.type_name.len()).max().unwrap_or(0);
        for r in regs {
            let (takes, gives) = r.data_types();
            let flow = match (takes, r.kind) {
                (None, _) => format!("gives {gives}"),
                (Some(t), Kind::Sink) => format!("takes {t}"),
                (Some(t), _) if t == gives => format!("takes {t}, gives what it takes"),
                (Some(t), _) => format!("takes {t}, gives {gives}"),
            };
            let _ = writeln!(
                out,
                "{:<9} {:<width$}  {}\n{:<9} {:<width$}  ({flow})",
                r.kind, r.type_name, r.description, "", ""
            );
        }
    }
    ExitCode::SUCCESS
}

fn tap(component: String, data_dir: Option<PathBuf>, limit: Option<u64>) -> ExitCode {
    let data_dir = data_dir.unwrap_or_else(default_data_dir);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut seen = 0u64;
    let mut refused = None;
    let mut first = true;
    let result = rt.block_on(control::request(&data_dir, &control::Request::Tap(component), |line| {
        // The first line says whether the tap is in place (`tapping`) or why not (`error`).
        if std::mem::take(&mut first) {
            let answer: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            if let Some(id) = answer["tapping"].as_str() {
                eprintln!("tapping `{id}`: every event it sends from now on (Ctrl-C stops)");
                return true;
            }
            refused = Some(answer["error"].as_str().unwrap_or(line).to_string());
            return false;
        }
        println!("{line}");
        seen += 1;
        limit.is_none_or(|l| seen < l)
    }));
    match (result, refused) {
        (Err(e), _) => fail(format_args!("{e:#}")),
        (Ok(()), Some(why)) => fail(format_args!("{why}")),
        (Ok(()), None) => ExitCode::SUCCESS,
    }
}

fn top(data_dir: Option<PathBuf>, once: bool) -> ExitCode {
    let data_dir = data_dir.unwrap_or_else(default_data_dir);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    loop {
        let mut rows: Vec<control::ComponentMetricsRow> = Vec::new();
        let result = rt.block_on(control::request(&data_dir, &control::Request::Metrics(true), |line| {
            rows = serde_json::from_str(line).unwrap_or_default();
            false
        }));
        if let Err(e) = result {
            return fail(format_args!("{e:#}"));
        }
        if once {
            println!("{}", serde_json::to_string_pretty(&rows).unwrap());
            return ExitCode::SUCCESS;
        }
        print!("\x1b[2J\x1b[H");
        println!(
            "{:<20} {:<10} {:<14} {:>12} {:>12} {:>10} {:>11} {:>10} {:>8}  STATE",
            "ID", "KIND", "TYPE", "RECEIVED", "SENT", "DROP:FULL", "DROP:INTENT", "DROP:ERROR", "ERRORS"
        );
        for r in rows {
            let c = r.counters;
            let state = match (r.kind.as_str(), c.caught_up) {
                ("source", true) => "following",
                ("source", false) => "reading",
                _ => "",
            };
            println!(
                "{:<20} {:<10} {:<14} {:>12} {:>12} {:>10} {:>11} {:>10} {:>8}  {state}",
                r.id,
                r.kind,
                r.type_name,
                c.received,
                c.sent,
                c.dropped.full,
                c.dropped.intentional,
                c.dropped.error,
                c.errors
            );
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
