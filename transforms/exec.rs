//! `exec` transform: each event's JSON view to a user program's stdin, one line; the program
//! answers with zero or more JSON lines (the events that replace it) and then an empty line (the
//! plugin protocol in `docs/plugins.md`). A plugin that dies or does not answer within `timeout`
//! is started again and the event sent again; an event no run could answer fails (its source
//! keeps it). A line that is not JSON is logged with its line and column, counted, skipped.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{ComponentFuture, Context, Input, Output, TaskTransform, Transform, TransformConfig};
use crate::config::FieldError;
use crate::event::{DataType, Event, EventKind};
use crate::metrics::DropReason;
use crate::plugin::{PluginCommand, Supervised, default_attempts, default_timeout, parse_line, validate_supervised};

/// Runs every event through a user program speaking JSON lines.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ExecTransformConfig {
    #[serde(flatten)]
    pub plugin: PluginCommand,
    /// The kind of the events the program writes; default: the kind of the event it was given.
    pub kind: Option<EventKind>,
    /// Seconds the program has to answer one event before it is started again.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Runs of the program an event is given to before it fails.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

const EXAMPLE: &str = r#"command = ["python3", "-c", "import sys\nfor l in sys.stdin: print(l.strip()); print(flush=True)"]
timeout_secs = 10
"#;

crate::register_component!(
    transform ExecTransformConfig,
    "exec",
    "Each event through a user program over JSON lines (zero or more events out per event in)",
    EXAMPLE
);

impl TransformConfig for ExecTransformConfig {
    fn input(&self) -> DataType {
        DataType::ANY
    }
    fn outputs(&self, input: DataType) -> DataType {
        self.kind.map_or(input, EventKind::data_type)
    }
    fn validate(&self) -> Vec<FieldError> {
        validate_supervised(&self.plugin, self.timeout_secs, self.max_attempts)
    }
    fn build(&self, cx: &Context) -> anyhow::Result<Transform> {
        let timeout = Duration::from_secs_f64(self.timeout_secs);
        Ok(Transform::Task(Box::new(ExecTransform {
            plugin: Supervised::new(self.plugin.clone(), cx.clone(), timeout, self.max_attempts),
            kind: self.kind,
            cx: cx.clone(),
        })))
    }
}

struct ExecTransform {
    plugin: Supervised,
    kind: Option<EventKind>,
    cx: Context,
}

impl ExecTransform {
    /// The events that replace `ev`: its metadata (natural id, finalizer) on each.
    fn replace(&self, ev: &Event, lines: Vec<(u64, String)>) -> Vec<Event> {
        let kind = self.kind.unwrap_or_else(|| EventKind::of(&ev.payload));
        let mut out = Vec::with_capacity(lines.len());
        for (number, line) in lines {
            match parse_line(&line, number, kind) {
                Ok(payload) => {
                    let mut e = Event { meta: ev.meta.clone(), payload };
                    e.meta.source = self.cx.id.clone();
                    if let (Some(id), n @ 1..) = (&ev.meta.id, out.len()) {
                        e.meta.id = Some(format!("{id}#{n}"));
                    }
                    out.push(e);
                }
                Err(e) => self.cx.error(format_args!("{e}")),
            }
        }
        out
    }
}

impl TaskTransform for ExecTransform {
    fn run(mut self: Box<Self>, mut input: Input, mut out: Output) -> ComponentFuture {
        Box::pin(async move {
            while let Some(ev) = input.recv().await {
                let Some(lines) = self.plugin.ask(&ev).await else {
                    ev.fail();
                    self.cx.metrics.dropped(DropReason::Error, 1);
                    continue;
                };
                let replaced = self.replace(&ev, lines);
                if replaced.is_empty() {
                    self.cx.metrics.dropped(DropReason::Intentional, 1);
                }
                drop(ev);
                out.send_all(replaced).await;
            }
            self.plugin.finish().await;
            Ok(())
        })
    }
}
