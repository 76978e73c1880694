//! The event model: every event is a typed payload plus metadata.
//!
//! Payloads are typed so that components can work on fields without re-parsing; every payload
//! also has a JSON view (`Event::to_json`, `Event::write_json`) that expressions, redaction and
//! generic sinks use.

mod call;
mod data_type;
mod finalizer;
mod opencode;
pub mod revision;
mod trace;
pub mod wire;

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use call::CallInfo;
pub use data_type::{DataType, EventKind};
pub use finalizer::{Batch, BatchTracker, Finalizer, Status};
pub use opencode::{
    COST_MAX, LiveEvent, MessageInfo, PartInfo, ProcessInfo, Rollup, SessionInfo, StatusInfo, TOKEN_MAX, Tokens,
    cost_in_range,
};
pub use trace::{TraceKind, TraceRecord};

/// One event travelling through a pipeline.
#[derive(Debug, Clone)]
pub struct Event {
    pub meta: Meta,
    pub payload: Payload,
}

/// What every event carries besides its payload.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The id of the component that emitted the event.
    pub source: Arc<str>,
    /// When the thing the event describes happened (falls back to when it was read).
    pub timestamp: DateTime<Utc>,
    /// A natural id for sinks that must be idempotent (e.g. `trace:ses_1:3:request:...`).
    pub id: Option<String>,
    /// Notified when every copy of the event has been delivered or dropped.
    pub finalizer: Option<Finalizer>,
    /// The machine it was sent from, when another ocpipe sent it (the `nats` source).
    pub host: Option<Arc<str>>,
    /// The sender's order of this record's versions (see [`revision`]): stamped by the `nats`
    /// sink, kept across the hop, so a receiver ignores a version older than one it has.
    pub revision: Option<u64>,
}

/// The typed body of an event. New event families add a variant here.
#[derive(Debug, Clone)]
pub enum Payload {
    /// One record of an LLM API trace (request, response or error).
    Trace(Box<TraceRecord>),
    /// An OpenCode session (created or updated).
    Session(Box<SessionInfo>),
    /// An OpenCode message; the same id again is an update (tokens arrive at completion).
    Message(Box<MessageInfo>),
    /// A tool call or step-finish part of a message.
    Part(Box<PartInfo>),
    /// Token usage of one group, from the `aggregate` transform.
    Rollup(Box<Rollup>),
    /// An event from a running OpenCode server.
    Live(Box<LiveEvent>),
    /// An OpenCode process started, changed or exited.
    Process(Box<ProcessInfo>),
    /// A session's or instance's status, from the `status` transform.
    Status(Box<StatusInfo>),
    /// A step of a capture run (started, observed, a native OpenCode event, finished).
    Capture(Box<crate::capture::CaptureEvent>),
    /// One request to a model, from OpenTelemetry (the `otlp` source).
    Call(Box<CallInfo>),
    /// An untyped JSON document (tests, generic sources).
    Json(Value),
}

impl Event {
    pub fn new(source: Arc<str>, timestamp: DateTime<Utc>, payload: Payload) -> Self {
        Event { meta: Meta { source, timestamp, id: None, finalizer: None, host: None, revision: None }, payload }
    }

    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.meta.id = Some(id.into());
        self
    }

    pub fn with_finalizer(mut self, finalizer: Finalizer) -> Self {
        self.meta.finalizer = Some(finalizer);
        self
    }

    /// A dotted name of the event's kind, e.g. `trace.request`.
    pub fn kind(&self) -> &'static str {
        match &self.payload {
            Payload::Trace(t) => t.kind.event_kind(),
            Payload::Session(_) => "opencode.session",
            Payload::Message(_) => "opencode.message",
            Payload::Part(_) => "opencode.part",
            Payload::Rollup(_) => "rollup",
            Payload::Live(_) => "opencode.live",
            Payload::Process(_) => "process",
            Payload::Status(_) => "status",
            Payload::Capture(c) => match &c.step {
                crate::capture::Step::Started { .. } => "capture.started",
                crate::capture::Step::Observed { .. } => "capture.observed",
                crate::capture::Step::Native { .. } => "capture.native",
                crate::capture::Step::Finished(_) => "capture.finished",
            },
            Payload::Call(_) => "llm.call",
            Payload::Json(_) => "json",
        }
    }

    /// The JSON view of the payload.
    pub fn to_json(&self) -> Value {
        match &self.payload {
            Payload::Trace(t) => serde_json::to_value(t).expect("trace records serialize"),
            Payload::Session(s) => serde_json::to_value(s).expect("serializes"),
            Payload::Message(m) => serde_json::to_value(m).expect("serializes"),
            Payload::Part(p) => serde_json::to_value(p).expect("serializes"),
            Payload::Rollup(r) => serde_json::to_value(r).expect("serializes"),
            Payload::Live(e) => serde_json::to_value(e).expect("serializes"),
            Payload::Process(p) => serde_json::to_value(p).expect("serializes"),
            Payload::Status(s) => serde_json::to_value(s).expect("serializes"),
            Payload::Capture(c) => serde_json::to_value(c).expect("serializes"),
            Payload::Call(c) => serde_json::to_value(c).expect("serializes"),
            Payload::Json(v) => v.clone(),
        }
    }

    /// Appends the JSON view as one line (without the newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let result = match &self.payload {
            Payload::Trace(t) => serde_json::to_writer(&mut *out, t),
            Payload::Session(s) => serde_json::to_writer(&mut *out, s),
            Payload::Message(m) => serde_json::to_writer(&mut *out, m),
            Payload::Part(p) => serde_json::to_writer(&mut *out, p),
            Payload::Rollup(r) => serde_json::to_writer(&mut *out, r),
            Payload::Live(e) => serde_json::to_writer(&mut *out, e),
            Payload::Process(p) => serde_json::to_writer(&mut *out, p),
            Payload::Status(s) => serde_json::to_writer(&mut *out, s),
            Payload::Capture(c) => serde_json::to_writer(&mut *out, c),
            Payload::Call(c) => serde_json::to_writer(&mut *out, c),
            Payload::Json(v) => serde_json::to_writer(&mut *out, v),
        };
        result.expect("writing JSON into memory cannot fail");
    }

    /// Metadata as JSON, bound to `$meta` in expressions.
    pub fn meta_json(&self) -> Value {
        serde_json::json!({
            "kind": self.kind(),
            "source": &*self.meta.source,
            "timestamp": self.meta.timestamp.to_rfc3339(),
            "id": self.meta.id,
            "host": self.meta.host.as_deref(),
        })
    }

    /// A field of the JSON view (dotted path) as text, for path templates and keys; `_kind` and
    /// `_source` name the metadata.
    /// Typed payloads answer without building the JSON view.
    pub fn field(&self, name: &str) -> Option<Cow<'_, str>> {
        match (name, &self.payload) {
            ("_kind", _) => Some(Cow::Borrowed(self.kind())),
            ("_source", _) => Some(Cow::Borrowed(&self.meta.source)),
            ("_host", _) => self.meta.host.as_deref().map(Cow::Borrowed),
            (_, Payload::Trace(t)) => t.field(name),
            (_, Payload::Json(v)) => lookup(v, name).and_then(scalar_text),
            (_, _) => lookup(&self.to_json(), name).and_then(|v| scalar_text(v).map(|c| Cow::Owned(c.into_owned()))),
        }
    }

    /// Marks the event as failed to deliver: its source will not checkpoint past it.
    pub fn fail(&self) {
        if let Some(f) = &self.meta.finalizer {
            f.fail();
        }
    }
}

/// An event a sink holds until its far end has it. Dropped without [`Unsettled::delivered`] —
/// its task aborted at a deadline, a panic — it counts as failed, so its source keeps it.
#[derive(Debug)]
pub struct Unsettled(Option<Event>);

impl Unsettled {
    pub fn new(event: Event) -> Self {
        Unsettled(Some(event))
    }
    pub fn get(&self) -> &Event {
        self.0.as_ref().expect("held until settled")
    }
    /// The far end has it.
    pub fn delivered(mut self) {
        self.0.take();
    }
    /// It could not be delivered: its source keeps it.
    pub fn failed(self) {
        drop(self);
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        if let Some(e) = self.0.take() {
            e.fail();
        }
    }
}

/// Looks up a dotted path (`a.b.c`) in a JSON value.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| match v {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn scalar_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Owned(b.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_field_lookup_handles_nesting_and_scalars() {
        let ev = Event::new(
            "src".into(),
            Utc::now(),
            Payload::Json(serde_json::json!({"a": {"b": 3, "c": [true]}, "s": "x"})),
        );
        assert_eq!(ev.field("a.b").as_deref(), Some("3"));
        assert_eq!(ev.field("a.c.0").as_deref(), Some("true"));
        assert_eq!(ev.field("s").as_deref(), Some("x"));
        assert_eq!(ev.field("a").as_deref(), None);
        assert_eq!(ev.field("_source").as_deref(), Some("src"));
        assert_eq!(ev.field("_kind").as_deref(), Some("json"));
        assert_eq!(ev.field("kind").as_deref(), None);
    }
}
