//! What kinds of events a component takes and gives (Vector's `DataType`). Components declare
//! them; `validate` rejects an input that can never carry anything its reader uses, and the
//! runtime hands each consumer only the kinds it declared.

use std::fmt;

use super::Payload;

bitflags::bitflags! {
    /// A set of payload kinds: one bit per [`Payload`] variant.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct DataType: u16 {
        /// LLM API trace records.
        const TRACE = 1 << 0;
        /// OpenCode sessions.
        const SESSION = 1 << 1;
        /// OpenCode messages.
        const MESSAGE = 1 << 2;
        /// OpenCode parts (tool calls, step finishes).
        const PART = 1 << 3;
        /// Token usage rollups.
        const ROLLUP = 1 << 4;
        /// Events of a running OpenCode server.
        const LIVE = 1 << 5;
        /// OpenCode processes.
        const PROCESS = 1 << 6;
        /// Session and instance statuses.
        const STATUS = 1 << 7;
        /// Untyped JSON documents.
        const JSON = 1 << 8;
        /// Steps of capture runs.
        const CAPTURE = 1 << 9;
        /// Requests to a model, from OpenTelemetry.
        const CALL = 1 << 10;
        /// OpenCode's stored records: sessions, messages and parts.
        const OPENCODE = Self::SESSION.bits() | Self::MESSAGE.bits() | Self::PART.bits();
        /// Anything (generic sinks and pass-through transforms).
        const ANY = (1 << 11) - 1;
    }
}

/// Names for messages, in bit order.
const NAMES: [(DataType, &str); 11] = [
    (DataType::TRACE, "trace"),
    (DataType::SESSION, "session"),
    (DataType::MESSAGE, "message"),
    (DataType::PART, "part"),
    (DataType::ROLLUP, "rollup"),
    (DataType::LIVE, "live"),
    (DataType::PROCESS, "process"),
    (DataType::STATUS, "status"),
    (DataType::JSON, "json"),
    (DataType::CAPTURE, "capture"),
    (DataType::CALL, "call"),
];

impl DataType {
    /// The kind of one payload.
    pub fn of(payload: &Payload) -> DataType {
        match payload {
            Payload::Trace(_) => DataType::TRACE,
            Payload::Session(_) => DataType::SESSION,
            Payload::Message(_) => DataType::MESSAGE,
            Payload::Part(_) => DataType::PART,
            Payload::Rollup(_) => DataType::ROLLUP,
            Payload::Live(_) => DataType::LIVE,
            Payload::Process(_) => DataType::PROCESS,
            Payload::Status(_) => DataType::STATUS,
            Payload::Json(_) => DataType::JSON,
            Payload::Capture(_) => DataType::CAPTURE,
            Payload::Call(_) => DataType::CALL,
        }
    }

    /// Whether an event of this payload is one of these kinds.
    pub fn admits(self, payload: &Payload) -> bool {
        self.contains(DataType::of(payload))
    }
}

/// One kind of event, by name (as configs and the JSON-lines protocols name it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Trace,
    Session,
    Message,
    Part,
    Rollup,
    Live,
    Process,
    Status,
    Json,
    Capture,
    Call,
}

impl EventKind {
    pub fn data_type(self) -> DataType {
        NAMES[self as usize].0
    }
    pub fn name(self) -> &'static str {
        NAMES[self as usize].1
    }
    /// The kind of one payload.
    pub fn of(payload: &Payload) -> EventKind {
        let bit = DataType::of(payload).bits().trailing_zeros() as usize;
        ALL_KINDS[bit]
    }

    /// Builds the typed payload of this kind from its JSON view (what `Event::to_json` gives).
    /// A typed kind's view must name its record (`id`, `sessionID`, `instance` as the kind
    /// has them) and use only its fields: a misspelt field is an error, not a silent default.
    pub fn payload(self, view: serde_json::Value) -> Result<Payload, String> {
        let given = view.clone();
        let payload = self.payload_lenient(view)?;
        let required: &[&str] = match self {
            EventKind::Session => &["id"],
            EventKind::Message | EventKind::Part => &["id", "sessionID"],
            EventKind::Live | EventKind::Status => &["instance"],
            EventKind::Rollup => &["key"],
            EventKind::Call => &["sessionID", "spanID"],
            _ => return Ok(payload),
        };
        let event = crate::event::Event::new("".into(), chrono::Utc::now(), payload);
        let known = event.to_json();
        let (Some(given), Some(known)) = (given.as_object(), known.as_object()) else {
            return Err(format!("a {} event is a JSON object", self.name()));
        };
        let unknown: Vec<&str> = given
            .iter()
            .filter(|(k, v)| !known.contains_key(k.as_str()) && !v.is_null())
            .map(|(k, _)| k.as_str())
            .collect();
        if !unknown.is_empty() {
            let fields: Vec<&str> = known.keys().map(String::as_str).collect();
            return Err(format!("unknown field `{}`; its fields are: {}", unknown.join("`, `"), fields.join(", ")));
        }
        let named = |f: &&str| given.get(*f).and_then(|v| v.as_str()).is_some_and(|s| !s.is_empty());
        if let Some(missing) = required.iter().find(|f| !named(f)) {
            return Err(format!("no `{missing}`: a {} event names its record", self.name()));
        }
        Ok(event.payload)
    }

    /// Builds the typed payload from its JSON view, ignoring fields it does not know (a newer
    /// ocpipe's) and defaulting missing ones.
    pub fn payload_lenient(self, view: serde_json::Value) -> Result<Payload, String> {
        self.parse_view(view).map_err(|e| e.to_string())
    }

    fn parse_view(self, view: serde_json::Value) -> Result<Payload, serde_json::Error> {
        use serde_json::from_value as from;
        Ok(match self {
            EventKind::Trace => Payload::Trace(Box::new(from(view)?)),
            EventKind::Session => Payload::Session(Box::new(from(view)?)),
            EventKind::Message => Payload::Message(Box::new(from(view)?)),
            EventKind::Part => Payload::Part(Box::new(from(view)?)),
            EventKind::Rollup => Payload::Rollup(Box::new(from(view)?)),
            EventKind::Live => Payload::Live(Box::new(from(view)?)),
            EventKind::Process => Payload::Process(Box::new(from(view)?)),
            EventKind::Status => Payload::Status(Box::new(from(view)?)),
            EventKind::Capture => Payload::Capture(Box::new(from(view)?)),
            EventKind::Call => Payload::Call(Box::new(from(view)?)),
            EventKind::Json => Payload::Json(view),
        })
    }
}

const ALL_KINDS: [EventKind; 11] = [
    EventKind::Trace,
    EventKind::Session,
    EventKind::Message,
    EventKind::Part,
    EventKind::Rollup,
    EventKind::Live,
    EventKind::Process,
    EventKind::Status,
    EventKind::Json,
    EventKind::Capture,
    EventKind::Call,
];

impl fmt::Display for DataType {
    /// `any`, `nothing`, or the kinds joined: `session, message, part`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == DataType::ANY {
            return f.write_str("any kind");
        }
        if self.is_empty() {
            return f.write_str("nothing");
        }
        let names: Vec<&str> = NAMES.iter().filter(|(t, _)| self.contains(*t)).map(|(_, n)| *n).collect();
        f.write_str(&names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_payload_kind_has_one_named_bit() {
        let all = NAMES.iter().fold(DataType::empty(), |acc, (t, _)| {
            assert_eq!(t.bits().count_ones(), 1);
            assert!(!acc.intersects(*t));
            acc | *t
        });
        assert_eq!(all, DataType::ANY);
        assert_eq!((DataType::OPENCODE | DataType::STATUS).to_string(), "session, message, part, status");
        assert_eq!(DataType::ANY.to_string(), "any kind");
        for k in ALL_KINDS {
            assert_eq!(k.data_type().to_string(), k.name());
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
    }

    #[test]
    fn a_json_view_comes_back_as_its_typed_payload() {
        let m = crate::event::MessageInfo {
            id: "msg_1".into(),
            session_id: "ses_1".into(),
            role: "assistant".into(),
            ..Default::default()
        };
        let view = serde_json::to_value(&m).unwrap();
        let back = EventKind::Message.payload(view).unwrap();
        assert!(matches!(&back, Payload::Message(b) if **b == m));
        assert_eq!(EventKind::of(&back), EventKind::Message);
        assert!(EventKind::Message.payload(serde_json::json!({"id": 3})).is_err());
        let typo = EventKind::Message.payload(serde_json::json!({"id": "m", "sessionId": "s"})).unwrap_err();
        assert!(typo.starts_with("unknown field `sessionId`; its fields are: id, sessionID,"), "{typo}");
        let unnamed = EventKind::Message.payload(serde_json::json!({"role": "user"})).unwrap_err();
        assert_eq!(unnamed, "no `id`: a message event names its record");
    }
}
