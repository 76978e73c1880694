//! `mqtt`: publishes each status (or any event) to MQTT brokers (rumqttc).
//! The reference (behaviour, options) is the doc comment of the config below.

use std::collections::HashMap;

use rumqttc::{QoS, TlsConfiguration};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{Context, Sink, SinkConfig};
use crate::config::{FieldError, FieldPath, WhenFull};
use crate::event::DataType;
use crate::jq::{self};
use crate::sinks::push_targets::{self, Overlay, PushTargets};
use crate::template::TopicTemplate;

/// One connection per broker: the one in the config and, with `targets_from`, each enabled
/// `[[mqtt]]` entry of the status API's `push-targets.toml` (re-read when it changes). Each
/// connection has its own bounded backlog, so a broker that is away never holds up another or
/// the rest of the pipeline:
///
/// - while a broker is unreachable its statuses wait (up to `backlog.max_events`; beyond that
///   `when_full` decides: `drop_newest` counts and drops, `block` holds this sink's input);
/// - it is retried with backoff (doubling up to `reconnect_max_ms`), and on reconnect the
///   backlog goes out first, oldest first (messages the broker had not acknowledged included);
/// - the broker learns the monitor is gone through a retained last-will `offline` on
///   `availability_topic` (`online` is published on each connect).
///
/// Optional: Home Assistant MQTT discovery (one device, one sensor per OpenCode instance), and
/// answering permission requests from a command topic (`once`, `always` or `reject`, as text or
/// `{"reply": "once", "permissionID"?, "sessionID"?, "port"?}`), which becomes
/// `POST /permission/{id}/reply` on the instance that asked.
///
/// Counters: `sent` counts statuses taken into at least one broker's backlog; `dropped` those
/// no broker could take (backlog full, no broker configured, still undelivered at shutdown);
/// `errors` payload expressions that failed and unanswerable permission commands.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct MqttConfig {
    /// `tcp://host:port`, `mqtt://host:port` or `mqtts://host:port` (TLS). Empty: only the
    /// brokers listed in `targets_from`.
    #[serde(default)]
    pub broker: String,
    /// The MQTT client id (also names the Home Assistant device).
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Empty: none.
    pub username: Option<String>,
    /// Use `${MQTT_PASSWORD}` rather than writing it here.
    pub password: Option<String>,
    /// Topic template: `{field}` takes a field of the status (`{port}`, `{sessionID}`, `{code}`).
    #[serde(default = "default_topic")]
    pub topic: String,
    /// 0 (at most once), 1 (at least once: nothing lost over a reconnect) or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    /// A jq expression for the message body (a string result is sent as is, anything else as
    /// JSON). Default: `{port, status, code, timestamp, sessionID, tool}` (plus `permissionID`
    /// while a permission waits); other events as their JSON.
    pub payload: Option<String>,
    /// Retained `online` on connect, `offline` as the last will and on shutdown. Empty: none.
    #[serde(default = "default_availability")]
    pub availability_topic: String,
    /// For `mqtts`: the CA (PEM) to trust instead of the system's, and a client certificate.
    #[serde(default)]
    pub tls: TlsOptions,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// Reconnect backoff cap; the first retry is after 100 ms.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Statuses waiting per broker while it is unreachable.
    #[serde(default)]
    pub backlog: Backlog,
    /// The id of a `websocket` sink: also publish to the brokers added through its API.
    pub targets_from: Option<String>,
    pub home_assistant: Option<HomeAssistant>,
    /// Subscribe here for permission replies (see above). Unset or empty: no replies from MQTT.
    pub command_topic: Option<String>,
    /// Basic-auth for the permission reply, when `opencode serve` runs with a password.
    #[serde(default = "default_opencode_username")]
    pub opencode_username: String,
    pub opencode_password: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    pub ca_file: Option<String>,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
}

/// Home Assistant MQTT discovery: a retained config per OpenCode instance under
/// `<prefix>/sensor/<client_id>/<client_id>_<port>/config`, all under one device.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistant {
    #[serde(default = "default_ha_prefix")]
    pub prefix: String,
    /// Where each instance's latest status is kept (retained) for its sensor.
    #[serde(default = "default_ha_state_topic")]
    pub state_topic: String,
}

fn default_client_id() -> String {
    "opencode-monitor".into()
}
fn default_topic() -> String {
    "opencode/status".into()
}
fn default_qos() -> u8 {
    1
}
fn default_availability() -> String {
    "opencode/monitor/availability".into()
}
fn default_keep_alive() -> u64 {
    30
}
fn default_reconnect_max_ms() -> u64 {
    1000
}
/// `backlog = { max_events = 10000, when_full = "drop_newest" }`: per broker, while it is away.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Backlog {
    pub max_events: usize,
    /// `drop_newest` (default) never holds up the pipeline; `block` holds this sink's input.
    pub when_full: WhenFull,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog { max_events: 10_000, when_full: WhenFull::DropNewest }
    }
}
fn default_opencode_username() -> String {
    "opencode".into()
}
fn default_ha_prefix() -> String {
    "homeassistant".into()
}
fn default_ha_state_topic() -> String {
    "opencode/instance/{port}".into()
}

const EXAMPLE: &str = r#"broker = "tcp://127.0.0.1:1883"
topic = "opencode/status/{port}"
qos = 1
home_assistant = { prefix = "homeassistant" }
"#;

crate::register_component!(
    sink MqttConfig,
    "mqtt",
    "Publishes statuses to MQTT brokers: backlog and backoff across outages, last will, TLS, Home Assistant discovery, permission replies",
    EXAMPLE
);

pub(super) fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

impl SinkConfig for MqttConfig {
    /// Statuses by default; any event with a `payload` expression.
    fn input(&self) -> DataType {
        DataType::ANY
    }
    fn references(&self) -> Vec<crate::component::Reference> {
        push_targets::references(self.targets_from.as_deref())
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.broker.is_empty() && self.targets_from.is_none() {
            errs.push(
                FieldError::new(FieldPath::key("broker"), "no broker: set `broker` or `targets_from`")
                    .help("e.g. broker = \"tcp://127.0.0.1:1883\", or targets_from = \"<websocket sink id>\""),
            );
        } else if !self.broker.is_empty()
            && let Err(e) = push_targets::parse_broker(&self.broker)
        {
            errs.push(FieldError::new(FieldPath::key("broker"), e).help("e.g. \"tcp://127.0.0.1:1883\""));
        }
        if self.qos > 2 {
            errs.push(FieldError::new(FieldPath::key("qos"), format!("qos {} is not 0, 1 or 2", self.qos)));
        }
        let topics = [
            ("topic", Some(&self.topic)),
            ("command_topic", self.command_topic.as_ref().filter(|t| !t.is_empty())),
            ("availability_topic", Some(&self.availability_topic).filter(|t| !t.is_empty())),
        ];
        for (key, t) in topics {
            if let Some(t) = t
                && let Err(e) = TopicTemplate::parse(t)
            {
                errs.push(FieldError::new(FieldPath::key(key), e.message).help(e.help));
            }
        }
        if let Some(ha) = &self.home_assistant
            && let Err(e) = TopicTemplate::parse(&ha.state_topic)
        {
            errs.push(FieldError::new(FieldPath::key("home_assistant").child("state_topic"), e.message).help(e.help));
        }
        if let Some(p) = &self.payload {
            errs.extend(jq::check("payload", p, "payloads are jq expressions, e.g. '{state: .code, port}' or '.code'"));
        }
        if self.backlog.max_events == 0 {
            errs.push(FieldError::new(FieldPath::key("backlog").child("max_events"), "the backlog needs room"));
        }
        errs
    }

    fn build(&self, cx: &Context) -> anyhow::Result<Box<dyn Sink>> {
        let payload = match &self.payload {
            Some(p) => Some(jq::compile(p).map_err(|e| anyhow::anyhow!("payload does not compile: {e:?}"))?),
            None => None,
        };
        let tls = match &self.tls.ca_file {
            Some(ca) => {
                let read = |p: &str| std::fs::read(cx.resolve(p)).map_err(|e| anyhow::anyhow!("tls: {p}: {e}"));
                let client_auth = match (&self.tls.client_cert_file, &self.tls.client_key_file) {
                    (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                    (None, None) => None,
                    _ => anyhow::bail!("tls: set both client_cert_file and client_key_file, or neither"),
                };
                Some(TlsConfiguration::Simple { ca: read(ca)?, alpn: None, client_auth })
            }
            None => None,
        };
        let ha = match &self.home_assistant {
            Some(h) => {
                Some((h.prefix.clone(), TopicTemplate::parse(&h.state_topic).map_err(|e| anyhow::anyhow!(e.message))?))
            }
            None => None,
        };
        let overlay = self.targets_from.as_ref().map(|id| Overlay::new(cx.shared::<PushTargets>(id)));
        Ok(Box::new(MqttSink {
            cfg: self.clone(),
            payload,
            tls,
            ha,
            overlay,
            brokers: HashMap::new(),
            permissions: crate::permission::Desk::default(),
            http: reqwest::Client::new(),
            cx: cx.clone(),
        }))
    }
}

mod broker;
mod discovery;
mod permission;
mod sink;

use sink::MqttSink;

#[cfg(test)]
mod tests {
    use crate::registry::Kind;
    use crate::testing;

    #[test]
    fn config_errors_name_the_option() {
        let errs = testing::parse(Kind::Sink, "mqtt", "qos = 3\ntopic = \"a/#\"\npayload = \".code |\"").unwrap_err();
        let paths: Vec<String> = errs.iter().map(|e| e.path.to_string()).collect();
        assert_eq!(paths, ["broker", "qos", "topic", "payload"], "{errs:?}");
        assert!(testing::parse(Kind::Sink, "mqtt", "targets_from = \"page\"").is_ok());
    }
}
