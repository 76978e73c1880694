//! `trace_jsonl`: LLM API traces written by `opencode-api-tracer` (one JSONL file per session).
//!
//! Files are identified by device, inode and a fingerprint of their first line together, so a
//! renamed (rotated) file keeps its place, two files that begin alike stay apart, and a
//! truncated or replaced one starts over. At most `max_open_files` are open at once. The checkpoint of each file moves only
//! when every event before it has been delivered by every sink (finalizers), so a crash re-reads
//! at most what was in flight and loses nothing.

mod files;
mod tracer;
mod viewer;

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{ComponentFuture, SourceConfig, SourceContext};
use crate::config::{FieldError, FieldPath};
use crate::event::DataType;

/// Reads tracer JSONL files: a directory (its `*.jsonl`) or a glob.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct TraceJsonlConfig {
    /// A directory of tracer files, or a glob such as `~/traces/*.jsonl`. `~/` is the home
    /// directory; relative paths are relative to where ocpipe starts.
    pub path: String,
    /// Keep watching for appended lines and new files. With `false`, read what is there and stop.
    #[serde(default = "default_follow")]
    pub follow: bool,
    /// File names to skip (globs on the file name). The tracer's own diagnostic log is skipped.
    #[serde(default = "default_exclude")]
    pub exclude: Vec<String>,
    /// How often to look for changes when no file notification arrives, in milliseconds.
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
    /// The longest line accepted, in bytes; a longer one is reported and skipped.
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
    /// Where to start in a file that has no checkpoint and exists at startup: `beginning` or
    /// `end` (files that appear later are always read from the beginning).
    #[serde(default)]
    pub start_at: StartAt,
    /// Files kept open at most; the least recently written are closed and reopened when they
    /// change, so a folder of many thousand files stays within the open-file limit.
    #[serde(default = "default_max_open")]
    pub max_open_files: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    #[default]
    Beginning,
    End,
}

fn default_follow() -> bool {
    true
}
fn default_exclude() -> Vec<String> {
    vec!["*.debug.jsonl".into()]
}
fn default_poll() -> u64 {
    250
}
fn default_max_open() -> usize {
    256
}
fn default_max_line() -> usize {
    256 * 1024 * 1024
}

const EXAMPLE: &str = r#"path = "${OPENCODE_API_TRACER_DIR:-~/opencode-api-tracer}"
follow = true
"#;

crate::register_component!(
    source TraceJsonlConfig,
    "trace_jsonl",
    "LLM API trace records (request/response/error) from opencode-api-tracer JSONL files",
    EXAMPLE
);

impl SourceConfig for TraceJsonlConfig {
    fn outputs(&self) -> DataType {
        DataType::TRACE
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.path.trim().is_empty() {
            errs.push(
                FieldError::new(FieldPath::key("path"), "`path` is empty")
                    .help("name the tracer directory, e.g. \"~/opencode-api-tracer\""),
            );
        } else if let Err(e) = glob::Pattern::new(&self.path) {
            errs.push(
                FieldError::new(FieldPath::key("path"), format!("`{}` is not a valid glob: {e}", self.path))
                    .help("escape `[` as `[[]`"),
            );
        }
        for (i, pat) in self.exclude.iter().enumerate() {
            if let Err(e) = globset::Glob::new(pat) {
                errs.push(FieldError::new(
                    FieldPath::key("exclude").index(i),
                    format!("`{pat}` is not a valid glob: {e}"),
                ));
            }
        }
        if self.poll_interval_ms < 10 {
            errs.push(
                FieldError::new(FieldPath::key("poll_interval_ms"), "`poll_interval_ms` must be at least 10")
                    .help("250 is a good value"),
            );
        }
        if self.max_open_files == 0 {
            errs.push(
                FieldError::new(FieldPath::key("max_open_files"), "`max_open_files` must be at least 1")
                    .help("256 is a good value"),
            );
        }
        if self.max_line_bytes < 1024 {
            errs.push(FieldError::new(FieldPath::key("max_line_bytes"), "`max_line_bytes` must be at least 1024"));
        }
        errs
    }

    fn build(&self, cx: SourceContext) -> anyhow::Result<ComponentFuture> {
        let reader = files::Reader::new(self, &cx.cx)?;
        let poll = Duration::from_millis(self.poll_interval_ms);
        Ok(Box::pin(reader.run(cx, self.follow, poll)))
    }
}

#[cfg(test)]
mod tests;
