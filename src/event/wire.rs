//! The form an event travels in between ocpipe processes (the `nats` sink and source): one JSON
//! document with its kind, metadata, the sending host and its JSON view, so the receiving side
//! rebuilds the typed payload (`Message`, `Rollup`, `Status`, …), not untyped JSON.
//!
//! ```json
//! {"v":1,"kind":"message","host":"laptop-7","source":"opencode","timestamp":"…","id":"msg_1","rev":1764800000123456789,"event":{…}}
//! ```

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Event, EventKind};

/// The version this build writes and reads.
pub const WIRE_VERSION: u32 = 1;

#[derive(Serialize)]
struct Outgoing<'a> {
    v: u32,
    kind: EventKind,
    host: &'a str,
    source: &'a str,
    timestamp: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rev: Option<u64>,
    event: &'a RawValue,
}

#[derive(Deserialize)]
struct Incoming {
    v: u32,
    kind: String,
    host: String,
    source: String,
    timestamp: DateTime<Utc>,
    id: Option<String>,
    /// Absent from what ocpipe before revisions sent.
    rev: Option<u64>,
    event: serde_json::Value,
}

/// An event as it arrived from another ocpipe.
#[derive(Debug)]
pub struct Received {
    pub event: Event,
    /// The name of the host that sent it.
    pub host: String,
    /// The id of the component that emitted it there.
    pub origin: String,
}

/// This machine's name, as events sent from it carry it.
pub fn host_name() -> String {
    sysinfo::System::host_name().filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".into())
}

/// The wire form of `event`, sent from `host`.
pub fn encode(event: &Event, host: &str) -> Vec<u8> {
    let mut view = Vec::with_capacity(256);
    event.write_json(&mut view);
    let view = String::from_utf8(view).expect("serde_json writes UTF-8");
    let raw = RawValue::from_string(view).expect("a JSON view is one JSON document");
    let out = Outgoing {
        v: WIRE_VERSION,
        kind: EventKind::of(&event.payload),
        host,
        source: &event.meta.source,
        timestamp: event.meta.timestamp,
        id: event.meta.id.as_deref(),
        rev: event.meta.revision,
        event: &raw,
    };
    serde_json::to_vec(&out).expect("writing JSON into memory cannot fail")
}

/// A stable id of what `event` says (its natural id and a hash of its wire form without the
/// time it was read): the same record sent again has the same id, an update of it another.
pub fn content_id(event: &Event, host: &str) -> String {
    let mut view = Vec::with_capacity(256);
    event.write_json(&mut view);
    let hash = xxhash_rust::xxh3::xxh3_128(&[host.as_bytes(), b"\0", event.kind().as_bytes(), b"\0", &view].concat());
    match &event.meta.id {
        Some(id) => format!("{id}#{hash:032x}"),
        None => format!("{}#{hash:032x}", event.kind()),
    }
}

/// Rebuilds an event from its wire form; it is emitted by `component`. A newer sender's extra
/// fields are ignored; an unknown kind or version is an error that says so.
pub fn decode(bytes: &[u8], component: &Arc<str>) -> Result<Received, String> {
    let inc: Incoming = serde_json::from_slice(bytes).map_err(|e| format!("not an ocpipe event: {e}"))?;
    if inc.v != WIRE_VERSION {
        return Err(format!(
            "written in wire format {} by a newer or older ocpipe (this one reads {WIRE_VERSION}): run the same release on both ends",
            inc.v
        ));
    }
    let kind: EventKind = serde_json::from_value(serde_json::Value::String(inc.kind.clone()))
        .map_err(|_| format!("unknown event kind `{}`: the sender is a newer ocpipe", inc.kind))?;
    let payload =
        kind.payload_lenient(inc.event).map_err(|e| format!("a {} event that does not fit: {e}", kind.name()))?;
    let mut event = Event::new(component.clone(), inc.timestamp, payload);
    event.meta.id = inc.id;
    event.meta.revision = inc.rev;
    event.meta.host = Some(inc.host.as_str().into());
    Ok(Received { event, host: inc.host, origin: inc.source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{MessageInfo, Payload};

    fn message(tokens_in: u64) -> Event {
        let m: MessageInfo = serde_json::from_value(serde_json::json!({
            "id": "msg_1", "sessionID": "ses_1", "role": "assistant", "providerID": "p", "modelID": "m",
            "tokens": {"input": tokens_in, "output": 2}, "timeCreated": 1764800000000u64
        }))
        .unwrap();
        Event::new("opencode".into(), Utc::now(), Payload::Message(Box::new(m))).with_id("msg_1")
    }

    #[test]
    fn a_typed_event_comes_back_typed_with_its_host_and_id() {
        let mut ev = message(10);
        ev.meta.revision = Some(42);
        let got = decode(&encode(&ev, "laptop-7"), &"team".into()).unwrap();
        assert_eq!((got.host.as_str(), got.origin.as_str()), ("laptop-7", "opencode"));
        assert_eq!(got.event.meta.id.as_deref(), Some("msg_1"));
        assert_eq!(got.event.meta.host.as_deref(), Some("laptop-7"));
        assert_eq!(got.event.meta.revision, Some(42));
        assert_eq!(&*got.event.meta.source, "team");
        let Payload::Message(m) = &got.event.payload else { panic!("{:?}", got.event.payload) };
        assert_eq!(m.tokens.input, 10);
        assert_eq!(got.event.to_json(), ev.to_json());
    }

    #[test]
    fn the_same_record_has_the_same_content_id_and_an_update_another() {
        assert_eq!(content_id(&message(10), "h"), content_id(&message(10), "h"));
        assert_ne!(content_id(&message(10), "h"), content_id(&message(11), "h"));
        assert_ne!(content_id(&message(10), "h"), content_id(&message(10), "other"));
        assert!(content_id(&message(10), "h").starts_with("msg_1#"));
    }

    #[test]
    fn foreign_or_newer_documents_are_refused_with_the_reason() {
        let c: Arc<str> = "team".into();
        assert!(decode(b"hello", &c).unwrap_err().contains("not an ocpipe event"));
        let newer =
            br#"{"v":2,"kind":"message","host":"h","source":"s","timestamp":"2026-01-01T00:00:00Z","event":{}}"#;
        assert!(decode(newer, &c).unwrap_err().contains("wire format 2"));
        let kind =
            br#"{"v":1,"kind":"hologram","host":"h","source":"s","timestamp":"2026-01-01T00:00:00Z","event":{}}"#;
        assert!(decode(kind, &c).unwrap_err().contains("unknown event kind `hologram`"));
    }
}
