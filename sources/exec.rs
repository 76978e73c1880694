//! `exec` source: a user program's stdout, one JSON document per line, as events (the plugin
//! protocol in `docs/plugins.md`). Restarted with backoff when it exits (`mode = "streaming"`),
//! or run once. A line that is not JSON (or not the configured kind's view) is logged with its
//! line and column, counted as an error and skipped.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{ComponentFuture, SourceConfig, SourceContext};
use crate::config::FieldError;
use crate::event::{DataType, Event, EventKind};
use crate::plugin::{Plugin, PluginCommand, Restarts, parse_line};

/// Runs a program and turns each line it prints into an event.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ExecSourceConfig {
    #[serde(flatten)]
    pub plugin: PluginCommand,
    /// The kind of event each line is (its JSON view): `json` (untyped) or a typed kind such as
    /// `message` or `status`, rebuilt so the rest of the pipeline can use its fields.
    #[serde(default = "json_kind")]
    pub kind: EventKind,
    /// `streaming`: start it again (with backoff) whenever it exits; `once`: run it once, the
    /// source ends when it exits.
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Streaming,
    Once,
}

fn json_kind() -> EventKind {
    EventKind::Json
}

const EXAMPLE: &str = r#"command = ["sh", "-c", "echo '{\"hello\": \"world\"}'"]
mode = "once"
"#;

crate::register_component!(
    source ExecSourceConfig,
    "exec",
    "A user program's output, one JSON event per line (restarted with backoff when it exits)",
    EXAMPLE
);

impl SourceConfig for ExecSourceConfig {
    fn outputs(&self) -> DataType {
        self.kind.data_type()
    }
    fn validate(&self) -> Vec<FieldError> {
        self.plugin.validate()
    }

    fn build(&self, sc: SourceContext) -> anyhow::Result<ComponentFuture> {
        let cfg = self.clone();
        Ok(Box::pin(async move {
            let SourceContext { cx, mut out, shutdown } = sc;
            let mut restarts = Restarts::default();
            loop {
                let mut plugin = match Plugin::spawn(&cfg.plugin, &cx) {
                    Ok(p) => p,
                    Err(e) if cfg.mode == Mode::Once => return Err(e.into()),
                    Err(e) => {
                        cx.error(format_args!("{e}"));
                        let wait = restarts.next(std::time::Duration::ZERO);
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(wait) => continue,
                        }
                    }
                };
                cx.metrics.set_caught_up();
                loop {
                    let line = tokio::select! {
                        _ = shutdown.cancelled() => {
                            // What it wrote before it was asked to stop is still sent.
                            plugin.close_input();
                            let grace = tokio::time::sleep(std::time::Duration::from_secs(2));
                            tokio::pin!(grace);
                            loop {
                                tokio::select! {
                                    _ = &mut grace => break,
                                    line = plugin.next_line() => match line {
                                        Ok(Some(line)) => emit(&cx, &mut out, &line, plugin.line, cfg.kind).await,
                                        _ => break,
                                    },
                                }
                            }
                            plugin.finish(std::time::Duration::from_secs(1)).await;
                            return Ok(());
                        }
                        line = plugin.next_line() => line,
                    };
                    match line {
                        Ok(Some(line)) => emit(&cx, &mut out, &line, plugin.line, cfg.kind).await,
                        Ok(None) => break,
                        Err(e) => {
                            cx.error(format_args!("reading its output: {e}"));
                            break;
                        }
                    }
                }
                let ran = plugin.age();
                let status = plugin.exit().await;
                if cfg.mode == Mode::Once {
                    tracing::info!(component = &*cx.id, "plugin ended: {status}");
                    return Ok(());
                }
                let wait = restarts.next(ran);
                tracing::warn!(component = &*cx.id, "plugin ended ({status}); starting it again in {wait:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }))
    }
}

/// One line of the plugin's output as an event (empty lines are nothing; bad ones are counted).
async fn emit(
    cx: &crate::component::Context,
    out: &mut crate::component::Output,
    line: &str,
    number: u64,
    kind: EventKind,
) {
    if line.trim().is_empty() {
        return;
    }
    match parse_line(line, number, kind) {
        Ok(payload) => out.send(Event::new(cx.id.clone(), chrono::Utc::now(), payload)).await,
        Err(e) => cx.error(format_args!("{e}")),
    }
}
