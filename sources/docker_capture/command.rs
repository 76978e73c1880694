//! `ocpipe capture`: runs `pipelines/capture.toml` (the file in the current directory when
//! there is one, else the copy in the binary) with the flags set as options of its
//! `docker_capture` source. Exit status 0 when every run is `capture_valid`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::capture::{RunMeta, layout};

crate::register_command!("capture", command, run);

const PIPELINE: &str = "pipelines/capture.toml";

fn command() -> clap::Command {
    use clap::{Arg, ArgAction, arg};
    clap::Command::new("capture")
        .about("Runs OpenCode tasks in Docker containers and records what they did (artifacts/captures/)")
        .arg(arg!(--issue <ID> "Run this task of the task file").conflicts_with("all"))
        .arg(Arg::new("all").long("all").action(ArgAction::SetTrue).help("Run every task, one after another"))
        .arg(
            Arg::new("keep-workspace")
                .long("keep-workspace")
                .action(ArgAction::SetTrue)
                .help("Keep each run's workspace/"),
        )
        .arg(arg!(--"image-ref" <IMAGE> "The image to run"))
        .arg(arg!(--"opencode-bin" <PATH> "A host opencode binary, mounted into the container"))
        .arg(arg!(--network <MODE> "none, host, bridge or a network's name"))
        .arg(arg!(--tasks <FILE> "The task file (default tasks/issues.json)"))
        .arg(arg!(--captures <DIR> "Where runs go (default artifacts/captures)"))
        .arg(arg!(--project <DIR> "The project to copy (default: the current directory)"))
        .arg(arg!(--"timeout-secs" <SECS> "Per run").value_parser(clap::value_parser!(u64)))
        .arg(arg!(--"memory-mb" <MB> "Memory limit per container").value_parser(clap::value_parser!(u64)))
        .arg(arg!(--"opencode-config" <DIR> "OpenCode's config directory to mount (default ~/.config/opencode)"))
        .arg(arg!(--pipeline <FILE> "Another capture pipeline file (default pipelines/capture.toml)"))
        .arg(
            arg!(--"data-dir" <DIR> "ocpipe's state directory for this run").value_parser(clap::value_parser!(PathBuf)),
        )
}

fn run(m: &clap::ArgMatches) -> ExitCode {
    if m.get_one::<String>("issue").is_none() && !m.get_flag("all") {
        eprintln!("error: say which task: --issue ID, or --all");
        return ExitCode::FAILURE;
    }
    let (name, text) = match pipeline_text(m.get_one::<String>("pipeline").map(PathBuf::from)) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (text, captures) = match with_flags(&text, m) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let loaded = crate::config::load_str(&name, &text);
    let before = std::time::SystemTime::now();
    let code = crate::cli::run_loaded(loaded, m.get_one::<PathBuf>("data-dir").cloned());
    if code != ExitCode::SUCCESS {
        return code;
    }
    // Every run this command made must be valid.
    let runs = runs_since(&captures, before);
    let invalid: Vec<&str> = runs.iter().filter(|r| !r.capture_valid).map(|r| r.run_id.as_str()).collect();
    if runs.is_empty() {
        eprintln!("error: no run was recorded");
        return ExitCode::FAILURE;
    }
    if !invalid.is_empty() {
        eprintln!("error: {} run(s) not capture_valid: {}", invalid.len(), invalid.join(", "));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The capture pipeline: `--pipeline`, else the checked-in file here, else the binary's copy.
fn pipeline_text(file: Option<PathBuf>) -> Result<(String, String), String> {
    let file = file.or_else(|| Some(PathBuf::from(PIPELINE)).filter(|p| p.is_file()));
    match file {
        Some(f) => std::fs::read_to_string(&f)
            .map(|t| (f.display().to_string(), t))
            .map_err(|e| format!("{}: {e}", f.display())),
        None => Ok((PIPELINE.to_string(), crate::cli::embedded_pipeline(PIPELINE).expect("embedded").to_string())),
    }
}

/// Sets the flags given as options of the pipeline's `docker_capture` source; returns the text
/// and where its runs go.
fn with_flags(text: &str, m: &clap::ArgMatches) -> Result<(String, PathBuf), String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let sources = doc.get_mut("sources").and_then(|s| s.as_table_like_mut()).ok_or("no [sources]")?;
    let id = sources
        .iter()
        .find(|(_, v)| v.get("type").and_then(|t| t.as_str()) == Some("docker_capture"))
        .map(|(k, _)| k.to_string())
        .ok_or("no docker_capture source")?;
    let src = sources.get_mut(&id).and_then(|s| s.as_table_like_mut()).ok_or("the source is not a table")?;
    let strings = [
        ("issue", "issue"),
        ("image-ref", "image_ref"),
        ("opencode-bin", "opencode_bin"),
        ("network", "network"),
        ("tasks", "tasks"),
        ("captures", "captures"),
        ("project", "project"),
        ("opencode-config", "opencode_config"),
    ];
    for (flag, key) in strings {
        if let Some(v) = m.get_one::<String>(flag) {
            src.insert(key, toml_edit::value(v.as_str()));
        }
    }
    if m.get_flag("all") {
        src.insert("issue", toml_edit::value(""));
    }
    if m.get_flag("keep-workspace") {
        src.insert("keep_workspace", toml_edit::value(true));
    }
    for (flag, key) in [("timeout-secs", "timeout_secs"), ("memory-mb", "memory_mb")] {
        if let Some(v) = m.get_one::<u64>(flag) {
            src.insert(key, toml_edit::value(*v as i64));
        }
    }
    let captures = src.get("captures").and_then(|c| c.as_str()).unwrap_or("artifacts/captures");
    let captures = crate::config::interpolate_str(captures, &|n| std::env::var(n).ok()).unwrap_or_default();
    let captures = crate::component::expand_home(&captures);
    Ok((doc.to_string(), captures))
}

/// The runs this command started (their ids begin with their UTC start time), each read from
/// its `meta/run.json`; one that has none counts as not valid.
fn runs_since(captures: &Path, since: std::time::SystemTime) -> Vec<RunMeta> {
    let since = chrono::DateTime::<chrono::Utc>::from(since).format("%Y%m%dT%H%M%SZ").to_string();
    let Ok(rd) = std::fs::read_dir(captures) else { return Vec::new() };
    rd.flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.get(..16).is_some_and(|t| t >= since.as_str()))
        .map(|name| {
            std::fs::read(captures.join(&name).join(layout::RUN))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(RunMeta { run_id: name, ..Default::default() })
        })
        .collect()
}
