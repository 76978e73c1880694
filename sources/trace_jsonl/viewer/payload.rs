//! The payload pane's content: a record's body as coloured JSON lines whose objects and arrays
//! fold, under the error, the token usage and, for a streamed response, the assembled text and
//! tool calls.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::event::TraceRecord;

/// What a piece of a line is, for its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok {
    Plain,
    Heading,
    Key,
    Str,
    Num,
    /// `true`, `false`, `null`.
    Lit,
    Punct,
}

#[derive(Debug, Clone)]
pub struct PLine {
    pub indent: usize,
    pub spans: Vec<(Tok, String)>,
    /// For a line opening a non-empty object or array: the line that closes it.
    pub close: Option<usize>,
}

impl PLine {
    fn plain(tok: Tok, text: &str) -> PLine {
        PLine { indent: 0, spans: vec![(tok, text.to_string())], close: None }
    }

    pub fn text(&self) -> String {
        let mut s = "  ".repeat(self.indent);
        for (_, t) in &self.spans {
            s.push_str(t);
        }
        s
    }
}

#[derive(Debug, Clone, Default)]
pub struct Payload {
    pub lines: Vec<PLine>,
}

impl Payload {
    pub fn of(r: &TraceRecord) -> Payload {
        let mut p = Payload::default();
        if let Some(e) = &r.error {
            p.heading("error");
            p.text_lines(e);
            p.blank();
        }
        let Some(body) = &r.body else { return p };
        match serde_json::from_str::<Value>(body.get()) {
            Ok(Value::String(stream)) if stream.contains("data:") => {
                let (text, tools, usage) = assemble_sse(&stream);
                p.heading("assembled text");
                p.text_lines(&text);
                for (name, args) in tools {
                    p.blank();
                    p.heading(&format!("tool call: {name}"));
                    match serde_json::from_str::<Value>(&args) {
                        Ok(v) => p.json(&v),
                        Err(_) => p.text_lines(&args),
                    }
                }
                if let Some(u) = usage {
                    p.blank();
                    p.heading("usage");
                    p.json(&u);
                }
                p.blank();
                p.heading("raw stream");
                p.text_lines(&stream);
            }
            Ok(v) => {
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    p.heading("usage");
                    p.json(u);
                    p.blank();
                }
                p.json(&v);
            }
            Err(_) => p.text_lines(body.get()),
        }
        p
    }

    fn heading(&mut self, h: &str) {
        self.lines.push(PLine::plain(Tok::Heading, &format!("{h}:")));
    }

    fn blank(&mut self) {
        self.lines.push(PLine::plain(Tok::Plain, ""));
    }

    fn text_lines(&mut self, text: &str) {
        for l in text.lines() {
            self.lines.push(PLine::plain(Tok::Plain, l));
        }
    }

    fn json(&mut self, v: &Value) {
        self.value(v, None, 0, false);
    }

    fn value(&mut self, v: &Value, key: Option<&str>, indent: usize, comma: bool) {
        let mut spans = Vec::new();
        if let Some(k) = key {
            spans.push((Tok::Key, Value::from(k).to_string()));
            spans.push((Tok::Punct, ": ".into()));
        }
        let end = if comma { "," } else { "" };
        let children: Vec<(Option<&str>, &Value)> = match v {
            Value::Object(m) if !m.is_empty() => m.iter().map(|(k, v)| (Some(k.as_str()), v)).collect(),
            Value::Array(a) if !a.is_empty() => a.iter().map(|v| (None, v)).collect(),
            _ => {
                let tok = match v {
                    Value::String(_) => Tok::Str,
                    Value::Number(_) => Tok::Num,
                    Value::Object(_) | Value::Array(_) => Tok::Punct,
                    Value::Bool(_) | Value::Null => Tok::Lit,
                };
                spans.push((tok, v.to_string()));
                spans.push((Tok::Punct, end.into()));
                self.lines.push(PLine { indent, spans, close: None });
                return;
            }
        };
        let (open, close) = if v.is_object() { ("{", "}") } else { ("[", "]") };
        spans.push((Tok::Punct, open.into()));
        let at = self.lines.len();
        self.lines.push(PLine { indent, spans, close: None });
        let n = children.len();
        for (i, (k, child)) in children.into_iter().enumerate() {
            self.value(child, k, indent + 1, i + 1 < n);
        }
        self.lines[at].close = Some(self.lines.len());
        self.lines.push(PLine { indent, spans: vec![(Tok::Punct, format!("{close}{end}"))], close: None });
    }

    /// The indices of the lines shown when the lines in `folded` are folded.
    pub fn visible(&self, folded: &BTreeSet<usize>) -> Vec<usize> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.lines.len() {
            out.push(i);
            i = match self.lines[i].close {
                Some(c) if folded.contains(&i) => c + 1,
                _ => i + 1,
            };
        }
        out
    }

    /// The text of lines `first..=last` (a folded last line with what it hides).
    pub fn text(&self, first: usize, last: usize, folded: &BTreeSet<usize>) -> String {
        let last = match self.lines.get(last).and_then(|l| l.close) {
            Some(c) if folded.contains(&last) => c,
            _ => last,
        };
        let mut s = String::new();
        for l in self.lines.iter().take(last + 1).skip(first) {
            s.push_str(&l.text());
            s.push('\n');
        }
        s
    }

    pub fn all_text(&self) -> String {
        self.text(0, self.lines.len().saturating_sub(1), &BTreeSet::new())
    }
}

/// Text, tool calls (name and arguments) and usage of an OpenAI- or Anthropic-style stream.
fn assemble_sse(stream: &str) -> (String, Vec<(String, String)>, Option<Value>) {
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
        // Anthropic: text deltas, tool input as partial JSON.
        match v["delta"]["type"].as_str() {
            Some("text_delta") => text.push_str(v["delta"]["text"].as_str().unwrap_or_default()),
            Some("input_json_delta") => {
                let i = v["index"].as_i64().unwrap_or(0);
                tools.entry(i).or_default().1.push_str(v["delta"]["partial_json"].as_str().unwrap_or_default());
            }
            _ => {
                if let Some(t) = v["delta"]["text"].as_str() {
                    text.push_str(t);
                }
            }
        }
        if v["type"] == "content_block_start" && v["content_block"]["type"] == "tool_use" {
            let i = v["index"].as_i64().unwrap_or(0);
            tools.entry(i).or_default().0 = v["content_block"]["name"].as_str().unwrap_or_default().to_string();
        }
        for u in [&v["usage"], &v["message"]["usage"]] {
            if !u.is_null() {
                usage = Some(u.clone());
            }
        }
    }
    (text, tools.into_values().collect(), usage)
}
