//! Home Assistant MQTT discovery: one retained sensor config per OpenCode instance.

use serde_json::json;

use crate::event::{Event, StatusInfo};
use crate::template::TopicTemplate;

use super::MqttConfig;
use super::sink::Broker;

pub(super) fn node_id(client_id: &str) -> String {
    client_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

pub(super) fn discovery_topic(prefix: &str, client_id: &str, port: u16) -> String {
    let node = node_id(client_id);
    format!("{prefix}/sensor/{node}/{node}_{port}/config")
}

/// The Home Assistant discovery config of one instance's sensor.
pub(super) fn discovery(cfg: &MqttConfig, b: &Broker, state: &TopicTemplate, ev: &Event, s: &StatusInfo) -> Vec<u8> {
    let node = node_id(&b.target.client_id);
    let state_topic = state.render(ev);
    let mut c = json!({
        "name": format!("OpenCode :{}", s.port),
        "unique_id": format!("{node}_{}", s.port),
        "state_topic": state_topic,
        "value_template": "{{ value_json.status }}",
        "json_attributes_topic": state_topic,
        "icon": "mdi:robot",
        "device": {
            "identifiers": [node],
            "name": "OpenCode monitor",
            "manufacturer": "ocpipe",
            "model": "ocpipe mqtt sink",
            "sw_version": env!("CARGO_PKG_VERSION"),
        },
    });
    if !cfg.availability_topic.is_empty() {
        c["availability_topic"] = json!(cfg.availability_topic);
    }
    c.to_string().into_bytes()
}
