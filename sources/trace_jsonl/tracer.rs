//! `ocpipe tracer install | uninstall`: ocpipe's own OpenCode plugin that writes the LLM API
//! traces this source reads (`tracer.js`, embedded in the binary).

use std::path::PathBuf;
use std::process::ExitCode;

crate::register_command!("tracer", command, run);

const PLUGIN: &str = include_str!("tracer.js");
const FILE_NAME: &str = "ocpipe-api-tracer.js";

fn command() -> clap::Command {
    use clap::{Arg, ArgAction, Command, arg};
    let scope = |c: Command| {
        c.arg(
            Arg::new("global")
                .long("global")
                .action(ArgAction::SetTrue)
                .help("OpenCode's global plugin folder (default)"),
        )
        .arg(
            Arg::new("project")
                .long("project")
                .action(ArgAction::SetTrue)
                .conflicts_with("global")
                .help("This project's .opencode/plugins/"),
        )
    };
    Command::new("tracer")
        .about("Installs or removes ocpipe's LLM API tracer plugin for OpenCode")
        .subcommand_required(true)
        .subcommand(scope(
            Command::new("install").about("Writes the tracer into OpenCode's plugin folder").arg(
                arg!(--dir <DIR> "Where traces go (default: $OPENCODE_API_TRACER_DIR, else ~/opencode-api-tracer)"),
            ),
        ))
        .subcommand(scope(Command::new("uninstall").about("Removes the tracer")))
}

/// OpenCode's plugin folder: global (`$XDG_CONFIG_HOME/opencode/plugins`, else
/// `~/.config/opencode/plugins`) or this project's `.opencode/plugins`.
fn plugin_dir(project: bool) -> PathBuf {
    if project {
        return PathBuf::from(".opencode/plugins");
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::component::home_dir().join(".config"));
    config.join("opencode/plugins")
}

fn run(m: &clap::ArgMatches) -> ExitCode {
    let Some((action, sub)) = m.subcommand() else { return ExitCode::FAILURE };
    let path = plugin_dir(sub.get_flag("project")).join(FILE_NAME);
    let result = match action {
        "install" => install(&path, sub.get_one::<String>("dir")),
        _ => uninstall(&path),
    };
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn install(path: &std::path::Path, dir: Option<&String>) -> Result<String, String> {
    let mut text = PLUGIN.to_string();
    let traces = match dir {
        Some(d) => {
            let d = crate::component::expand_home(d);
            let d = if d.is_absolute() { d } else { std::env::current_dir().map_err(|e| e.to_string())?.join(d) };
            let literal = serde_json::to_string(&d.to_string_lossy()).expect("a string serializes");
            text = text.replacen("const INSTALLED_DIR = null;", &format!("const INSTALLED_DIR = {literal};"), 1);
            d.display().to_string()
        }
        None => "$OPENCODE_API_TRACER_DIR, else ~/opencode-api-tracer".to_string(),
    };
    let parent = path.parent().expect("a plugin folder");
    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(format!("installed {}\ntraces go to {traces}; read them with `ocpipe run pipelines/trace.toml`", path.display()))
}

fn uninstall(path: &std::path::Path) -> Result<String, String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(format!("removed {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(format!("not installed ({} does not exist)", path.display()))
        }
        Err(e) => Err(format!("removing {}: {e}", path.display())),
    }
}
