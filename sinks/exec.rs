//! `exec` sink: each event's JSON view to a user program's stdin, one line; the program answers
//! each with an empty line once it has handled it, or a line of text saying why it could not
//! (the event then fails: its source keeps it). A plugin that dies or does not answer within
//! `timeout` is started again and the event sent again (the plugin protocol in `docs/plugins.md`).

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{ComponentFuture, Context, Input, Sink, SinkConfig};
use crate::config::FieldError;
use crate::event::DataType;
use crate::metrics::DropReason;
use crate::plugin::{PluginCommand, Supervised, default_attempts, default_timeout, validate_supervised};

/// Hands every event to a user program speaking JSON lines.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ExecSinkConfig {
    #[serde(flatten)]
    pub plugin: PluginCommand,
    /// Seconds the program has to answer one event before it is started again.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Runs of the program an event is given to before it fails.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

const EXAMPLE: &str = r#"# Answers each event with an empty line: handled (see docs/plugins.md for a real one).
command = ["sh", "-c", "while read -r event; do echo; done"]
"#;

crate::register_component!(
    sink ExecSinkConfig,
    "exec",
    "Every event to a user program over JSON lines (answered per event; restarted when it dies)",
    EXAMPLE
);

impl SinkConfig for ExecSinkConfig {
    fn input(&self) -> DataType {
        DataType::ANY
    }
    fn validate(&self) -> Vec<FieldError> {
        validate_supervised(&self.plugin, self.timeout_secs, self.max_attempts)
    }
    fn build(&self, cx: &Context) -> anyhow::Result<Box<dyn Sink>> {
        let timeout = Duration::from_secs_f64(self.timeout_secs);
        Ok(Box::new(ExecSink {
            plugin: Supervised::new(self.plugin.clone(), cx.clone(), timeout, self.max_attempts),
            cx: cx.clone(),
        }))
    }
}

struct ExecSink {
    plugin: Supervised,
    cx: Context,
}

impl Sink for ExecSink {
    fn run(mut self: Box<Self>, mut input: Input) -> ComponentFuture {
        Box::pin(async move {
            while let Some(ev) = input.recv().await {
                match self.plugin.ask(&ev).await {
                    Some(lines) if lines.is_empty() => {}
                    Some(lines) => {
                        let why: Vec<String> = lines.into_iter().map(|(n, l)| format!("line {n}: {l}")).collect();
                        self.cx.error(format_args!("the plugin could not handle an event: {}", why.join("; ")));
                        self.cx.metrics.dropped(DropReason::Error, 1);
                        ev.fail();
                    }
                    None => {
                        self.cx.metrics.dropped(DropReason::Error, 1);
                        ev.fail();
                    }
                }
            }
            self.plugin.finish().await;
            Ok(())
        })
    }
}
