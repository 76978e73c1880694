//! `capture_dir`: writes each finished capture run into its directory in the seed's layout.

use std::path::Path;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::capture::{Finished, layout, summarize, write_each_finished, write_file};
use crate::component::{ComponentFuture, Context, Input, Sink, SinkConfig};
use crate::event::DataType;

/// Writes each finished capture run (from `docker_capture`) into its directory:
/// `meta/run.json`, `input/issue.json`, `logs/container.log`, `logs/opencode.stdout.log`,
/// `logs/opencode.stderr.log`, `logs/opencode_export.{stdout,stderr}.log`,
/// `observations/{process_tree,fs_diff,network}.json`, `derived/summary.json` and, when the
/// session was exported, `session/export.json` (`events/opencode_events.jsonl` is the plugin's
/// own; `report/index.html` is the `html_report` sink's). `meta/run.json` is written last, with
/// `capture_valid: true` when it and the three observation files are on disk, whatever
/// happened to the agent. Files are 0600.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureDirConfig {}

crate::register_component!(
    sink CaptureDirConfig,
    "capture_dir",
    "Writes each finished capture run into its directory: meta, input, logs, observations, derived summary, session export",
    ""
);

impl SinkConfig for CaptureDirConfig {
    fn input(&self) -> DataType {
        DataType::CAPTURE
    }
    fn build(&self, cx: &Context) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(CaptureDirSink { cx: cx.clone() }))
    }
}

struct CaptureDirSink {
    cx: Context,
}

impl Sink for CaptureDirSink {
    fn run(self: Box<Self>, input: Input) -> ComponentFuture {
        Box::pin(write_each_finished(self.cx, input, "the run", write_run))
    }
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).expect("JSON values serialize");
    out.push(b'\n');
    out
}

/// The run's files, each written whatever happened to the others; `meta/run.json` last, valid
/// when the source saw the run through and the observations are on disk.
pub fn write_run(dir: &Path, run: &Finished) -> std::io::Result<()> {
    let mut problems: Vec<String> = Vec::new();
    let mut write = |rel: &str, bytes: &[u8]| -> bool {
        match write_file(dir, rel, bytes) {
            Ok(()) => true,
            Err(e) => {
                problems.push(format!("{rel}: {e}"));
                false
            }
        }
    };
    let task = serde_json::to_value(&run.task).expect("serializes");
    write(layout::ISSUE, &pretty(&task));
    let logs = [
        (layout::CONTAINER_LOG, &run.logs.container),
        (layout::STDOUT, &run.logs.stdout),
        (layout::STDERR, &run.logs.stderr),
        (layout::EXPORT_STDOUT, &run.logs.export_stdout),
        (layout::EXPORT_STDERR, &run.logs.export_stderr),
    ];
    for (rel, text) in logs {
        write(rel, text.as_bytes());
    }
    let observations =
        [(layout::PROCESS_TREE, &run.process_tree), (layout::FS_DIFF, &run.fs_diff), (layout::NETWORK, &run.network)];
    let mut observed = true;
    for (rel, value) in observations {
        observed &= write(rel, &pretty(value));
    }
    if let Some(export) = &run.export {
        write(layout::EXPORT, &pretty(export));
    }
    let mut meta = run.meta.clone();
    meta.capture_valid &= observed;
    if !problems.is_empty() {
        let written = format!("not written: {}", problems.join("; "));
        meta.error = Some(meta.error.map_or(written.clone(), |e| format!("{e}; {written}")));
    }
    let run = Finished { meta: meta.clone(), ..run.clone() };
    if let Err(e) = write_file(dir, layout::SUMMARY, &pretty(&summarize(&run))) {
        tracing::warn!("{}: {e}", dir.join(layout::SUMMARY).display());
    }
    write_file(dir, layout::RUN, &pretty(&serde_json::to_value(&meta).expect("serializes")))
}
