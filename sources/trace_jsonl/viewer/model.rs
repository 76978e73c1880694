//! What `ocpipe traces` shows: the records of a tracer directory grouped by session, each
//! request paired with its response (latency) and the one before it (growth), malformed lines
//! kept with their place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::super::TraceJsonlConfig;
use super::super::files::{Found, Reader};
use crate::event::{TraceKind, TraceRecord};

/// One record as the viewer lists it.
#[derive(Debug, Clone)]
pub struct Item {
    pub line: usize,
    pub record: TraceRecord,
    pub bytes: usize,
    /// Milliseconds from the request to this response (responses and errors).
    pub latency_ms: Option<i64>,
    /// Bytes this request grew over the session's previous request.
    pub growth: Option<i64>,
    /// A title-generation or other meta request (hidden unless `--include-meta`).
    pub meta: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Session {
    pub id: String,
    pub title: String,
    pub requests: usize,
    pub responses: usize,
    pub errors: usize,
    pub first: String,
    pub last: String,
    pub bytes: usize,
    pub items: Vec<Item>,
}

/// A line that is not a trace record.
#[derive(Debug, Clone)]
pub struct Bad {
    pub file: PathBuf,
    pub line: usize,
    pub error: String,
}

#[derive(Debug, Default)]
pub struct Traces {
    pub sessions: Vec<Session>,
    pub bad: Vec<Bad>,
}

impl Traces {
    /// Adds what the reader found: records to their sessions (each touched session worked out
    /// again), bad lines to the list.
    pub fn add(&mut self, found: Vec<Found>) {
        let mut touched: BTreeMap<String, Vec<Item>> = BTreeMap::new();
        for f in found {
            match f.record {
                Ok(record) => touched.entry(record.session_id.clone()).or_default().push(Item {
                    line: f.line as usize,
                    bytes: f.bytes,
                    record,
                    latency_ms: None,
                    growth: None,
                    meta: false,
                }),
                Err(error) => self.bad.push(Bad { file: f.path.to_path_buf(), line: f.line as usize, error }),
            }
        }
        for (id, mut items) in touched {
            let s = match self.sessions.binary_search_by(|s| s.id.cmp(&id)) {
                Ok(i) => &mut self.sessions[i],
                Err(i) => {
                    self.sessions.insert(i, Session { id: id.clone(), ..Session::default() });
                    &mut self.sessions[i]
                }
            };
            items.append(&mut s.items);
            *s = finish(id, items);
        }
    }
}

/// Everything in the `*.jsonl` files of `dir` now (not the tracer's debug log), read by
/// `trace_jsonl`'s own reader.
#[cfg(test)]
pub fn load(dir: &Path) -> Traces {
    let mut traces = Traces::default();
    if let Ok(mut reader) = reader(dir) {
        loop {
            let (found, more) = reader.read_new(true);
            traces.add(found);
            if !more {
                break;
            }
        }
    }
    traces
}

/// `trace_jsonl`'s reader over a tracer directory, for the viewer: from the beginning of every
/// file, no checkpoint.
pub fn reader(dir: &Path) -> anyhow::Result<Reader> {
    let dir = std::path::absolute(dir)?;
    let path = toml::Value::from(dir.to_string_lossy().as_ref());
    let cfg: TraceJsonlConfig = toml::from_str(&format!("path = {path}"))?;
    let cx = crate::component::Context::new("traces", std::env::temp_dir(), dir.clone());
    Reader::unsaved(&cfg, &cx)
}

fn millis(ts: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(ts).ok().map(|t| t.timestamp_millis())
}

fn body_json(r: &TraceRecord) -> Value {
    r.body.as_ref().and_then(|b| serde_json::from_str(b.get()).ok()).unwrap_or(Value::Null)
}

/// OpenCode's title generator: its system prompt asks for a title.
fn is_meta(r: &TraceRecord) -> bool {
    let body = body_json(r);
    let system = body["messages"]
        .as_array()
        .and_then(|m| m.first())
        .filter(|m| m["role"] == "system")
        .map(|m| m["content"].to_string());
    system.is_some_and(|s| {
        s.contains("title generator") || s.contains("generate a title") || s.contains("You are a title")
    })
}

/// The first user prompt of a request.
pub fn prompt_of(r: &TraceRecord) -> Option<String> {
    let body = body_json(r);
    body["messages"].as_array()?.iter().filter(|m| m["role"] == "user").find_map(|m| match &m["content"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => parts.iter().find_map(|p| p["text"].as_str().map(str::to_string)),
        _ => None,
    })
}

fn finish(id: String, mut items: Vec<Item>) -> Session {
    for it in &mut items {
        (it.latency_ms, it.growth, it.meta) = (None, None, false);
    }
    items.sort_by(|a, b| a.record.timestamp.cmp(&b.record.timestamp).then(a.line.cmp(&b.line)));
    // A file read again from its start (truncated or replaced) brings its records again.
    let mut seen = std::collections::HashSet::new();
    items
        .retain(|i| seen.insert((i.record.kind, i.record.id_text().into_owned(), i.record.timestamp.clone(), i.bytes)));
    let mut requests: BTreeMap<String, (i64, bool)> = BTreeMap::new();
    let mut previous_request: Option<usize> = None;
    for it in &mut items {
        let key = it.record.id_text().into_owned();
        match it.record.kind {
            TraceKind::Request => {
                it.meta = is_meta(&it.record);
                if let Some(t) = millis(&it.record.timestamp) {
                    requests.insert(key, (t, it.meta));
                }
                if !it.meta {
                    it.growth = previous_request.map(|p| it.bytes as i64 - p as i64);
                    previous_request = Some(it.bytes);
                }
            }
            _ => {
                if let (Some((start, meta)), Some(t)) = (requests.get(&key), millis(&it.record.timestamp)) {
                    it.latency_ms = Some(t - start);
                    it.meta = *meta;
                }
            }
        }
    }
    let count = |k: TraceKind| items.iter().filter(|i| i.record.kind == k && !i.meta).count();
    let title = items
        .iter()
        .filter(|i| i.record.kind == TraceKind::Request && !i.meta)
        .find_map(|i| prompt_of(&i.record))
        .map(|p| p.trim_matches('"').split_whitespace().collect::<Vec<_>>().join(" ").chars().take(60).collect())
        .unwrap_or_default();
    Session {
        title,
        requests: count(TraceKind::Request),
        responses: count(TraceKind::Response),
        errors: count(TraceKind::Error),
        first: items.first().map(|i| i.record.timestamp.clone()).unwrap_or_default(),
        last: items.last().map(|i| i.record.timestamp.clone()).unwrap_or_default(),
        bytes: items.iter().map(|i| i.bytes).sum(),
        id,
        items,
    }
}
