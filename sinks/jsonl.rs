//! `jsonl`: writes each event's JSON view as one line, to files named by a path template.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{ComponentFuture, Context, Input, Sink, SinkConfig, create_private_dir};
use crate::config::{FieldError, FieldPath};
use crate::event::{DataType, Event};
use crate::template::PathTemplate;

/// Appends events as JSON lines. Files are created with mode 0600 (directories 0700) and are
/// written before the events are acknowledged, so a restart after a crash may append a record
/// again (at-least-once); the `sqlite` sink is the idempotent store.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct JsonlConfig {
    /// Path template: `{field}` takes a field of the event (`{sessionID}`, `{kind}`,
    /// `{headers.x-foo}`; `{_kind}`/`{_source}` for metadata), `%Y`, `%m`, `%d`, `%H` the
    /// event's UTC date. Substituted values cannot contain `/` or start with `.`.
    pub path: String,
    /// The directory files must stay in. Default: the part of `path` before its first
    /// placeholder. A relative `path` is placed inside it.
    pub base_dir: Option<String>,
    /// The most events written between two flushes.
    #[serde(default = "default_batch")]
    pub batch_max_events: usize,
    /// How many files are kept open at once (least recently used are closed).
    #[serde(default = "default_open")]
    pub max_open_files: usize,
}

fn default_batch() -> usize {
    1000
}
fn default_open() -> usize {
    64
}

const EXAMPLE: &str = r#"path = "out/traces/%Y-%m-%d/{sessionID}.jsonl"
"#;

crate::register_component!(
    sink JsonlConfig,
    "jsonl",
    "Appends events as JSON lines to files named by a template ({field}, %Y-%m-%d), mode 0600",
    EXAMPLE
);

impl JsonlConfig {
    fn template(&self) -> Result<PathTemplate, FieldError> {
        PathTemplate::parse(&self.path, self.base_dir.as_deref()).map_err(|e| {
            let field = if e.message.contains("base_dir") && self.base_dir.is_some() { "base_dir" } else { "path" };
            FieldError::new(FieldPath::key(field), e.message).help(e.help)
        })
    }
}

impl SinkConfig for JsonlConfig {
    fn input(&self) -> DataType {
        DataType::ANY
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Err(e) = self.template() {
            errs.push(e);
        }
        for (name, v) in [("batch_max_events", self.batch_max_events), ("max_open_files", self.max_open_files)] {
            if v == 0 {
                errs.push(FieldError::new(FieldPath::key(name), format!("`{name}` must be at least 1")));
            }
        }
        errs
    }

    fn build(&self, cx: &Context) -> anyhow::Result<Box<dyn Sink>> {
        let template = self.template().map_err(|e| anyhow::anyhow!(e.message))?.resolved(|p| cx.resolve(p));
        Ok(Box::new(JsonlSink {
            template,
            batch: self.batch_max_events,
            files: OpenFiles { max: self.max_open_files, open: HashMap::new(), tick: 0 },
            failing: HashMap::new(),
            cx: cx.clone(),
        }))
    }
}

struct OpenFiles {
    max: usize,
    /// path -> (file, last use)
    open: HashMap<PathBuf, (File, u64)>,
    tick: u64,
}

impl OpenFiles {
    fn get(&mut self, path: &Path) -> std::io::Result<&mut File> {
        self.tick += 1;
        if !self.open.contains_key(path) {
            if self.open.len() >= self.max {
                let oldest = self.open.iter().min_by_key(|(_, (_, t))| *t).map(|(p, _)| p.clone());
                if let Some(p) = oldest {
                    self.open.remove(&p);
                }
            }
            if let Some(dir) = path.parent() {
                create_private_dir(dir)?;
            }
            let f = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
            self.open.insert(path.to_path_buf(), (f, self.tick));
        }
        let entry = self.open.get_mut(path).expect("just inserted");
        entry.1 = self.tick;
        Ok(&mut entry.0)
    }
}

/// What went wrong writing `path`, in words that say what to do.
fn explain(path: &Path, e: &std::io::Error) -> String {
    match path.ancestors().skip(1).find(|a| a.exists() && !a.is_dir()) {
        Some(file) => format!("{} is a file, not a directory: move it away or change `path`", file.display()),
        None => e.to_string(),
    }
}

struct JsonlSink {
    template: PathTemplate,
    /// Paths that failed, with the error last logged.
    failing: HashMap<PathBuf, String>,
    batch: usize,
    files: OpenFiles,
    cx: Context,
}

impl JsonlSink {
    /// Writes one batch, grouped by file; events of a file that fails are marked failed.
    fn write(&mut self, batch: &[Event]) {
        let mut by_file: Vec<(PathBuf, Vec<u8>, Vec<usize>)> = Vec::new();
        let mut index: HashMap<PathBuf, usize> = HashMap::new();
        for (i, ev) in batch.iter().enumerate() {
            let path = self.template.render(ev);
            let slot = *index.entry(path.clone()).or_insert_with(|| {
                by_file.push((path, Vec::new(), Vec::new()));
                by_file.len() - 1
            });
            let (_, buf, members) = &mut by_file[slot];
            ev.write_json(buf);
            buf.push(b'\n');
            members.push(i);
        }
        for (path, buf, members) in by_file {
            let result = self.files.get(&path).and_then(|f| f.write_all(&buf));
            match result {
                Ok(()) => {
                    self.failing.remove(&path);
                }
                Err(e) => {
                    self.files.open.remove(&path);
                    let why = explain(&path, &e);
                    // Logged once while the same path fails the same way; counted every time.
                    if self.failing.get(&path) != Some(&why) {
                        tracing::warn!(component = &*self.cx.id, "writing {}: {why}", path.display());
                        self.failing.insert(path.clone(), why);
                    }
                    self.cx.metrics.errors(members.len() as u64);
                    members.iter().for_each(|&i| batch[i].fail());
                }
            }
        }
    }
}

impl Sink for JsonlSink {
    fn run(mut self: Box<Self>, mut input: Input) -> ComponentFuture {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut batch = Vec::with_capacity(self.batch);
                while input.blocking_recv_batch(&mut batch, self.batch) {
                    self.write(&batch);
                    // Dropping the events acknowledges them: they are in the files now.
                    batch.clear();
                }
                Ok(())
            })
            .await?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Payload, TraceRecord};
    use crate::registry::Kind;
    use crate::testing;
    use std::os::unix::fs::PermissionsExt;

    fn trace(session: &str, id: u32) -> Event {
        let rec: TraceRecord = serde_json::from_str(&format!(
            r#"{{"kind":"request","id":{id},"timestamp":"2026-04-25T02:41:09.000Z","sessionID":"{session}","method":"POST","url":"http://x","headers":{{}},"body":{{"n":{id}}}}}"#
        ))
        .unwrap();
        let ts = chrono::DateTime::parse_from_rfc3339(&rec.timestamp).unwrap().into();
        Event::new("t".into(), ts, Payload::Trace(Box::new(rec)))
    }

    #[tokio::test]
    async fn writes_per_session_files_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: JsonlConfig = toml::from_str(r#"path = "out/%Y/{sessionID}.jsonl""#).unwrap();
        let events = vec![trace("ses_a", 1), trace("ses_b", 2), trace("ses_a", 3), trace("../../x", 4)];
        let m = testing::run_sink(&cfg, events, dir.path()).await;
        assert_eq!(m.errors, 0);
        let a = std::fs::read_to_string(dir.path().join("out/2026/ses_a.jsonl")).unwrap();
        assert_eq!(a.lines().count(), 2);
        assert!(a.lines().next().unwrap().ends_with(r#""body":{"n":1}}"#));
        assert!(dir.path().join("out/2026/_.._.._x.jsonl").exists());
        let mode = std::fs::metadata(dir.path().join("out/2026/ses_b.jsonl")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(dir.path().join("out/2026")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn escaping_templates_are_config_errors() {
        let errs = testing::parse(Kind::Sink, "jsonl", r#"path = "out/../../{sessionID}.jsonl""#).unwrap_err();
        assert_eq!(errs[0].path.to_string(), "path");
        assert!(errs[0].message.contains("could escape"));
        let errs = testing::parse(Kind::Sink, "jsonl", "path = \"/etc/{x}\"\nbase_dir = \"/data\"").unwrap_err();
        assert_eq!(errs[0].path.to_string(), "base_dir");
    }

    #[tokio::test]
    async fn few_open_files_still_write_everything() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: JsonlConfig =
            toml::from_str("path = \"o/{sessionID}.jsonl\"\nmax_open_files = 2\nbatch_max_events = 3").unwrap();
        let events: Vec<Event> = (0..30).map(|i| trace(&format!("s{}", i % 5), i)).collect();
        testing::run_sink(&cfg, events, dir.path()).await;
        for s in 0..5 {
            let text = std::fs::read_to_string(dir.path().join(format!("o/s{s}.jsonl"))).unwrap();
            assert_eq!(text.lines().count(), 6);
        }
    }
}
