//! What `ocpipe traces` shows: the records of a tracer directory grouped by session, each
//! request paired with its response (latency) and the one before it (growth), malformed lines
//! kept with their place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

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

/// Reads every `*.jsonl` of `dir` (not the tracer's debug log).
pub fn load(dir: &Path) -> Traces {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "jsonl") && !p.to_string_lossy().ends_with(".debug.jsonl"));
    files.sort();
    let mut by_session: BTreeMap<String, Session> = BTreeMap::new();
    let mut bad = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read(&file) else { continue };
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<TraceRecord>(line) {
                Ok(record) => {
                    let s = by_session.entry(record.session_id.clone()).or_default();
                    s.items.push(Item {
                        line: i + 1,
                        bytes: line.len(),
                        record,
                        latency_ms: None,
                        growth: None,
                        meta: false,
                    });
                }
                Err(e) => bad.push(Bad { file: file.clone(), line: i + 1, error: e.to_string() }),
            }
        }
    }
    let sessions = by_session.into_iter().map(|(id, s)| finish(id, s.items)).collect();
    Traces { sessions, bad }
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
    items.sort_by(|a, b| a.record.timestamp.cmp(&b.record.timestamp).then(a.line.cmp(&b.line)));
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

/// The payload to show: pretty JSON, and for a streamed (SSE) response the assembled text,
/// tool calls and usage.
pub fn payload(r: &TraceRecord) -> String {
    let mut out = String::new();
    if let Some(e) = &r.error {
        out.push_str(&format!("error: {e}\n\n"));
    }
    let Some(body) = &r.body else { return out };
    match serde_json::from_str::<Value>(body.get()) {
        Ok(Value::String(text)) if text.contains("data:") => {
            let (assembled, tools, usage) = assemble_sse(&text);
            out.push_str("assembled text:\n");
            out.push_str(&assembled);
            out.push('\n');
            for t in tools {
                out.push_str(&format!("\ntool call: {t}\n"));
            }
            if let Some(u) = usage {
                out.push_str(&format!("\nusage: {u}\n"));
            }
            out.push_str("\nraw stream:\n");
            out.push_str(&text);
        }
        Ok(v) => {
            if let Some(u) = v.get("usage") {
                out.push_str(&format!("usage: {u}\n\n"));
            }
            out.push_str(&serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Err(_) => out.push_str(body.get()),
    }
    out
}

/// Text, tool calls (name and arguments) and usage of an OpenAI- or Anthropic-style stream.
fn assemble_sse(stream: &str) -> (String, Vec<String>, Option<Value>) {
    let mut text = String::new();
    let mut tools: BTreeMap<i64, (String, String)> = BTreeMap::new();
    let mut usage = None;
    for line in stream.lines() {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
        let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
        for c in v["choices"].as_array().into_iter().flatten() {
            if let Some(t) = c["delta"]["content"].as_str() {
                text.push_str(t);
            }
            for call in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let e = tools.entry(call["index"].as_i64().unwrap_or(0)).or_default();
                if let Some(n) = call["function"]["name"].as_str() {
                    e.0.push_str(n);
                }
                if let Some(a) = call["function"]["arguments"].as_str() {
                    e.1.push_str(a);
                }
            }
        }
        if let Some(t) = v["delta"]["text"].as_str() {
            text.push_str(t);
        }
        if !v["usage"].is_null() {
            usage = Some(v["usage"].clone());
        }
    }
    (text, tools.into_values().map(|(n, a)| format!("{n} {a}")).collect(), usage)
}
