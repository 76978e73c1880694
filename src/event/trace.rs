//! LLM API trace records, in the format written by `opencode-api-tracer`:
//! one JSON object per line with `kind` request / response / error.
//!
//! The body stays raw JSON text: a 50 KB prompt is never parsed into a tree unless a component
//! asks for it, and it is written back byte for byte.

use std::borrow::Cow;
use std::fmt;

use indexmap::IndexMap;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceKind {
    Request,
    Response,
    Error,
}

impl TraceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TraceKind::Request => "request",
            TraceKind::Response => "response",
            TraceKind::Error => "error",
        }
    }

    pub fn event_kind(self) -> &'static str {
        match self {
            TraceKind::Request => "trace.request",
            TraceKind::Response => "trace.response",
            TraceKind::Error => "trace.error",
        }
    }
}

/// One tracer record. Fields the format does not define are kept in `extra`, in order.
#[derive(Debug, Clone)]
pub struct TraceRecord {
    pub kind: TraceKind,
    /// The tracer's id; a request and its response share it.
    pub id: Value,
    pub timestamp: String,
    pub session_id: String,
    pub method: Option<String>,
    pub url: Option<String>,
    pub status: Option<i64>,
    pub status_text: Option<String>,
    pub headers: IndexMap<String, String>,
    pub body: Option<Box<RawValue>>,
    pub error: Option<String>,
    pub extra: Vec<(String, Box<RawValue>)>,
}

impl TraceRecord {
    /// The id as text (`3`, or the string itself).
    pub fn id_text(&self) -> Cow<'_, str> {
        match &self.id {
            Value::String(s) => Cow::Borrowed(s),
            other => Cow::Owned(other.to_string()),
        }
    }

    /// The natural id that makes sinks idempotent: equal records get equal ids.
    pub fn natural_id(&self) -> String {
        format!("trace:{}:{}:{}:{}", self.session_id, self.id_text(), self.kind.as_str(), self.timestamp)
    }

    pub fn field(&self, name: &str) -> Option<Cow<'_, str>> {
        fn opt(o: &Option<String>) -> Option<Cow<'_, str>> {
            o.as_deref().map(Cow::Borrowed)
        }
        match name {
            "kind" => Some(Cow::Borrowed(self.kind.as_str())),
            "id" => Some(self.id_text()),
            "timestamp" => Some(Cow::Borrowed(&self.timestamp)),
            "sessionID" => Some(Cow::Borrowed(&self.session_id)),
            "method" => opt(&self.method),
            "url" => opt(&self.url),
            "statusText" => opt(&self.status_text),
            "error" => opt(&self.error),
            "status" => self.status.map(|s| Cow::Owned(s.to_string())),
            _ => {
                if let Some(header) = name.strip_prefix("headers.") {
                    return self
                        .headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(header))
                        .map(|(_, v)| Cow::Borrowed(v.as_str()));
                }
                let (top, rest) = name.split_once('.').unwrap_or((name, ""));
                let raw = match top {
                    "body" => self.body.as_deref(),
                    _ => self.extra.iter().find(|(k, _)| k == top).map(|(_, v)| &**v),
                }?;
                let value: Value = serde_json::from_str(raw.get()).ok()?;
                let found = if rest.is_empty() { &value } else { super::lookup(&value, rest)? };
                match found {
                    Value::String(s) => Some(Cow::Owned(s.clone())),
                    Value::Number(_) | Value::Bool(_) => Some(Cow::Owned(found.to_string())),
                    _ => None,
                }
            }
        }
    }
}

impl Serialize for TraceRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("kind", &self.kind)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        map.serialize_entry("sessionID", &self.session_id)?;
        if let Some(m) = &self.method {
            map.serialize_entry("method", m)?;
        }
        if let Some(u) = &self.url {
            map.serialize_entry("url", u)?;
        }
        if let Some(s) = &self.status {
            map.serialize_entry("status", s)?;
        }
        if let Some(s) = &self.status_text {
            map.serialize_entry("statusText", s)?;
        }
        map.serialize_entry("headers", &self.headers)?;
        if let Some(b) = &self.body {
            map.serialize_entry("body", b)?;
        }
        if let Some(e) = &self.error {
            map.serialize_entry("error", e)?;
        }
        for (k, v) in &self.extra {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for TraceRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor)
    }
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = TraceRecord;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a trace record object with kind, id, timestamp and sessionID")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TraceRecord, A::Error> {
        let mut kind = None;
        let mut id = None;
        let mut timestamp = None;
        let mut session_id = None;
        let mut rec = TraceRecord {
            kind: TraceKind::Request,
            id: Value::Null,
            timestamp: String::new(),
            session_id: String::new(),
            method: None,
            url: None,
            status: None,
            status_text: None,
            headers: IndexMap::new(),
            body: None,
            error: None,
            extra: Vec::new(),
        };
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match &*key {
                "kind" => kind = Some(map.next_value::<TraceKind>()?),
                "id" => id = Some(map.next_value::<Value>()?),
                "timestamp" => timestamp = Some(map.next_value::<String>()?),
                "sessionID" => session_id = Some(map.next_value::<String>()?),
                "method" => rec.method = map.next_value()?,
                "url" => rec.url = map.next_value()?,
                "status" => rec.status = map.next_value()?,
                "statusText" => rec.status_text = map.next_value()?,
                "headers" => rec.headers = map.next_value::<Option<_>>()?.unwrap_or_default(),
                "body" => rec.body = Some(map.next_value()?),
                "error" => rec.error = map.next_value()?,
                _ => rec.extra.push((key.into_owned(), map.next_value()?)),
            }
        }
        rec.kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
        rec.id = id.ok_or_else(|| de::Error::missing_field("id"))?;
        rec.timestamp = timestamp.ok_or_else(|| de::Error::missing_field("timestamp"))?;
        rec.session_id = session_id.ok_or_else(|| de::Error::missing_field("sessionID"))?;
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"kind":"response","id":1,"timestamp":"2026-04-25T02:41:10.000Z","sessionID":"ses_a","method":"POST","url":"http://x/v1/chat/completions","status":200,"statusText":"OK","headers":{"Content-Type":"text/event-stream"},"body":{"a":[1,2,{"b":"c"}]},"durationMs":12}"#;

    #[test]
    fn round_trips_byte_for_byte_with_unknown_fields() {
        let rec: TraceRecord = serde_json::from_str(LINE).unwrap();
        assert_eq!(rec.kind, TraceKind::Response);
        assert_eq!(rec.status, Some(200));
        assert_eq!(rec.extra.len(), 1);
        assert_eq!(serde_json::to_string(&rec).unwrap(), LINE);
    }

    #[test]
    fn fields_answer_typed_and_nested_lookups() {
        let rec: TraceRecord = serde_json::from_str(LINE).unwrap();
        assert_eq!(rec.field("sessionID").as_deref(), Some("ses_a"));
        assert_eq!(rec.field("status").as_deref(), Some("200"));
        assert_eq!(rec.field("headers.content-type").as_deref(), Some("text/event-stream"));
        assert_eq!(rec.field("body.a.2.b").as_deref(), Some("c"));
        assert_eq!(rec.field("durationMs").as_deref(), Some("12"));
        assert_eq!(rec.natural_id(), "trace:ses_a:1:response:2026-04-25T02:41:10.000Z");
    }

    #[test]
    fn missing_required_field_is_named() {
        let err = serde_json::from_str::<TraceRecord>(r#"{"kind":"request","id":1,"timestamp":"t"}"#).unwrap_err();
        assert!(err.to_string().contains("sessionID"), "{err}");
    }
}
