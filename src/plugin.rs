//! User programs speaking JSON lines on stdin/stdout (the `exec` source, transform and sink):
//! how one is started (command, arguments, environment, working directory), its stderr into
//! the log under the component's id, its output read line by line with each line's number, and
//! the backoff between restarts. The protocol is in `docs/plugins.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::component::Context;
use crate::config::{FieldError, FieldPath};
use crate::event::{Event, EventKind, Payload};

/// What to run: `command = ["python3", "plugin.py"]`, with `env` and `cwd`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
pub struct PluginCommand {
    /// The program and its arguments, e.g. `["python3", "plugin.py"]` (no shell: use
    /// `["sh", "-c", "…"]` for one). A relative program path is looked up on `PATH`.
    pub command: Vec<String>,
    /// Extra environment variables (the rest is ocpipe's own environment).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: where ocpipe was started). `~/` is the home directory.
    pub cwd: Option<String>,
}

impl PluginCommand {
    pub fn validate(&self) -> Vec<FieldError> {
        if self.command.first().is_none_or(|p| p.is_empty()) {
            return vec![
                FieldError::new(FieldPath::key("command"), "`command` names no program")
                    .help("e.g. command = [\"python3\", \"plugin.py\"]"),
            ];
        }
        Vec::new()
    }

    fn cwd(&self, cx: &Context) -> PathBuf {
        self.cwd.as_deref().map_or_else(|| cx.resolve("."), |c| cx.resolve(c))
    }
}

/// Default of `timeout_secs` (the transform and the sink).
pub fn default_timeout() -> f64 {
    30.0
}

/// Default of `max_attempts`.
pub fn default_attempts() -> u32 {
    3
}

/// Checks of the options a supervised plugin (transform, sink) has.
pub fn validate_supervised(plugin: &PluginCommand, timeout_secs: f64, max_attempts: u32) -> Vec<FieldError> {
    let mut errs = plugin.validate();
    if !(timeout_secs > 0.0 && timeout_secs.is_finite()) {
        errs.push(FieldError::new(FieldPath::key("timeout_secs"), "`timeout_secs` must be a positive number"));
    }
    if max_attempts == 0 {
        errs.push(FieldError::new(FieldPath::key("max_attempts"), "`max_attempts` must be at least 1"));
    }
    errs
}

/// A running plugin: write lines to it, read its lines back (numbered from 1 since it started).
pub struct Plugin {
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    /// Lines read from its stdout so far.
    pub line: u64,
    started: Instant,
}

impl Plugin {
    /// Starts it; its stderr goes to the log as warnings of component `cx.id`.
    pub fn spawn(cmd: &PluginCommand, cx: &Context) -> std::io::Result<Plugin> {
        let mut c = tokio::process::Command::new(&cmd.command[0]);
        c.args(&cmd.command[1..])
            .envs(&cmd.env)
            .current_dir(cmd.cwd(cx))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = c.spawn().map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot start {:?} in {}: {e}", cmd.command, cmd.cwd(cx).display()))
        })?;
        let stderr = child.stderr.take().expect("piped");
        let id = cx.id.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(component = &*id, "plugin: {line}");
            }
        });
        Ok(Plugin {
            stdin: Some(BufWriter::new(child.stdin.take().expect("piped"))),
            stdout: BufReader::new(child.stdout.take().expect("piped")).lines(),
            child,
            line: 0,
            started: Instant::now(),
        })
    }

    /// Writes the event's JSON view as one line and flushes.
    pub async fn send(&mut self, event: &Event) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(512);
        event.write_json(&mut line);
        line.push(b'\n');
        let stdin = self.stdin.as_mut().ok_or_else(|| std::io::Error::other("stdin closed"))?;
        stdin.write_all(&line).await?;
        stdin.flush().await
    }

    /// The next line it wrote; `None` once its stdout ends (it exited or closed it).
    pub async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        let line = self.stdout.next_line().await?;
        if line.is_some() {
            self.line += 1;
        }
        Ok(line)
    }

    /// Closes its stdin: it sees the end of its input.
    pub fn close_input(&mut self) {
        drop(self.stdin.take());
    }

    /// Closes its stdin (end of input) and waits for it to exit, killing it after `grace`.
    pub async fn finish(mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        drop(self.stdin.take());
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = self.child.kill().await;
                None
            }
        }
    }

    /// How it ended (after its stdout closed), or that it was killed.
    pub async fn exit(mut self) -> String {
        let _ = self.child.start_kill();
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            _ => "did not exit".into(),
        }
    }

    /// How long it has run.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Why a plugin gave no answer to an event: it is restarted and the event sent again.
#[derive(Debug)]
pub enum NoAnswer {
    /// Its output ended or a pipe broke (it exited or crashed).
    Died(String),
    /// No answer within the per-event timeout.
    Timeout(Duration),
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoAnswer::Died(e) => write!(f, "the plugin died ({e})"),
            NoAnswer::Timeout(t) => write!(f, "no answer within {t:?}"),
        }
    }
}

impl Plugin {
    /// Sends `event` and reads what the plugin writes up to the empty line that ends its answer
    /// (a transform's output lines; nothing for a sink), each with its line number.
    pub async fn ask(&mut self, event: &Event, timeout: Duration) -> Result<Vec<(u64, String)>, NoAnswer> {
        // Output nobody asked for (a banner, a second empty line) would shift every answer.
        let stray = self.stdout.get_ref().buffer();
        if !stray.is_empty() {
            let text = String::from_utf8_lossy(&stray[..stray.len().min(80)]).into_owned();
            return Err(NoAnswer::Died(format!("it wrote output nobody asked for ({text:?}); write only answers")));
        }
        let exchange = async {
            self.send(event).await.map_err(|e| NoAnswer::Died(e.to_string()))?;
            let mut lines = Vec::new();
            loop {
                match self.next_line().await {
                    Ok(Some(line)) if line.trim().is_empty() => return Ok(lines),
                    Ok(Some(line)) => lines.push((self.line, line)),
                    Ok(None) => return Err(NoAnswer::Died("its output ended".into())),
                    Err(e) => return Err(NoAnswer::Died(e.to_string())),
                }
            }
        };
        tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(NoAnswer::Timeout(timeout)))
    }
}

/// A plugin started on demand and started again (after a backoff) when it fails, for the
/// transform and the sink: each event is asked until answered or `max_attempts` runs failed.
pub struct Supervised {
    cmd: PluginCommand,
    cx: Context,
    plugin: Option<Plugin>,
    restarts: Restarts,
    pub timeout: Duration,
    pub max_attempts: u32,
}

impl Supervised {
    pub fn new(cmd: PluginCommand, cx: Context, timeout: Duration, max_attempts: u32) -> Self {
        Supervised { cmd, cx, plugin: None, restarts: Restarts::default(), timeout, max_attempts: max_attempts.max(1) }
    }

    /// The plugin's answer to `event`; `None` when every attempt failed (each logged).
    pub async fn ask(&mut self, event: &Event) -> Option<Vec<(u64, String)>> {
        for attempt in 1..=self.max_attempts {
            let plugin = match self.plugin.as_mut() {
                Some(p) => p,
                None => match Plugin::spawn(&self.cmd, &self.cx) {
                    Ok(p) => self.plugin.insert(p),
                    Err(e) => {
                        self.cx.error(format_args!("{e}"));
                        tokio::time::sleep(self.restarts.next(Duration::ZERO)).await;
                        continue;
                    }
                },
            };
            match plugin.ask(event, self.timeout).await {
                Ok(lines) => return Some(lines),
                Err(why) => {
                    let plugin = self.plugin.take().expect("asked above");
                    let ran = plugin.age();
                    let status = plugin.exit().await;
                    let wait = self.restarts.next(ran);
                    if attempt == self.max_attempts {
                        self.cx.error(format_args!(
                            "{why}, {status}; attempt {attempt} of {}: the event fails",
                            self.max_attempts
                        ));
                        break;
                    }
                    self.cx.error(format_args!(
                        "{why}, {status}; attempt {attempt} of {}; starting it again in {wait:?}",
                        self.max_attempts
                    ));
                    tokio::time::sleep(wait).await;
                }
            }
        }
        None
    }

    /// End of input: the plugin's stdin closes and it has a moment to exit.
    pub async fn finish(self) {
        if let Some(p) = self.plugin {
            p.finish(Duration::from_secs(5)).await;
        }
    }
}

/// Waits between restarts: 100 ms doubling to 30 s, back to the start after a run of a minute.
pub struct Restarts {
    delays: Box<dyn Iterator<Item = Duration> + Send>,
}

/// A plugin that ran this long was healthy: the next failure waits the shortest time again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

impl Default for Restarts {
    fn default() -> Self {
        Restarts { delays: Self::fresh() }
    }
}

impl Restarts {
    fn fresh() -> Box<dyn Iterator<Item = Duration> + Send> {
        Box::new(crate::component::retry_delays(Duration::from_millis(100), Duration::from_secs(30)))
    }

    /// The wait before the next start, given how long the last run lasted.
    pub fn next(&mut self, ran: Duration) -> Duration {
        if ran >= HEALTHY_RUN {
            self.delays = Self::fresh();
        }
        self.delays.next().unwrap_or(Duration::from_secs(30))
    }
}

/// One line of a plugin's output as an event payload of `kind`; the error names the line and
/// column and says what was expected.
pub fn parse_line(line: &str, number: u64, kind: EventKind) -> Result<Payload, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
        let what = e.to_string();
        let what = what.split(" at line ").next().unwrap_or(&what).to_string();
        format!("output line {number}, column {}: not JSON ({what}); write one JSON document per line", e.column())
    })?;
    kind.payload(value).map_err(|e| format!("output line {number}: not a {} event's JSON view: {e}", kind.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_located() {
        let e = parse_line("{\"a\": tru}", 7, EventKind::Json).unwrap_err();
        assert_eq!(e, "output line 7, column 10: not JSON (expected ident); write one JSON document per line");
        let e = parse_line("{\"id\": 3}", 2, EventKind::Message).unwrap_err();
        assert!(e.starts_with("output line 2: not a message event's JSON view"), "{e}");
        assert!(matches!(parse_line("[1]", 1, EventKind::Json), Ok(Payload::Json(_))));
    }

    #[test]
    fn restarts_back_off_and_start_over_after_a_healthy_run() {
        let mut r = Restarts::default();
        let first = r.next(Duration::ZERO);
        let second = r.next(Duration::ZERO);
        assert!(second > first, "{first:?} {second:?}");
        assert!(r.next(HEALTHY_RUN) <= first * 2);
    }
}
