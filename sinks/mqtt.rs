//! `mqtt`: publishes each status (or any event) to MQTT brokers (rumqttc).
//! The reference (behaviour, options) is the doc comment of the config below.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use rumqttc::{
    AsyncClient, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, Request, TlsConfiguration, Transport,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::component::{ComponentFuture, Context, Input, Sink, SinkConfig};
use crate::config::{FieldError, FieldPath, WhenFull};
use crate::event::{DataType, Event, Payload, StatusInfo};
use crate::jq::{self, Jq};
use crate::metrics::DropReason;
use crate::sinks::push_targets::{self, Connection, Overlay, PushTargets};
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

fn qos(q: u8) -> QoS {
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
            permissions: Vec::new(),
            http: reqwest::Client::new(),
            cx: cx.clone(),
        }))
    }
}

/// One broker to publish to: from the config (`key` 0) or from the overlay (its id).
#[derive(Debug, Clone, PartialEq)]
struct Target {
    broker: String,
    client_id: String,
    username: Option<String>,
    password: Option<String>,
    topic: String,
}

/// A live connection: the client half of rumqttc and the task driving its event loop.
struct Broker {
    target: Target,
    topic: TopicTemplate,
    client: AsyncClient,
    connection: Connection,
    /// Instances announced to Home Assistant on this broker.
    announced: HashSet<u16>,
    stop: CancellationToken,
    task: JoinHandle<usize>,
}

/// A permission request waiting for a reply.
struct Waiting {
    instance: String,
    port: u16,
    session: Option<String>,
    id: String,
}

struct MqttSink {
    cfg: MqttConfig,
    payload: Option<Jq>,
    tls: Option<TlsConfiguration>,
    ha: Option<(String, TopicTemplate)>,
    overlay: Option<Overlay>,
    brokers: HashMap<u64, Broker>,
    permissions: Vec<Waiting>,
    http: reqwest::Client,
    cx: Context,
}

impl Sink for MqttSink {
    fn run(self: Box<Self>, input: Input) -> ComponentFuture {
        Box::pin(self.run_inner(input))
    }
}

impl MqttSink {
    async fn run_inner(mut self, mut input: Input) -> anyhow::Result<()> {
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<Vec<u8>>(64);
        if !self.cfg.broker.is_empty() {
            let t = Target {
                broker: self.cfg.broker.clone(),
                client_id: self.cfg.client_id.clone(),
                username: self.cfg.username.clone().filter(|u| !u.is_empty()),
                password: self.cfg.password.clone().filter(|p| !p.is_empty()),
                topic: self.cfg.topic.clone(),
            };
            self.connect(0, t, &cmd_tx)?;
        }
        self.reload(&cmd_tx);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = input.recv() => match ev {
                    Some(ev) => self.publish(ev).await,
                    None => break,
                },
                Some(cmd) = cmd_rx.recv() => self.command(&cmd),
                _ = tick.tick() => self.reload(&cmd_tx),
            }
        }
        for (_, b) in self.brokers.drain() {
            close(b, &self.cfg, &self.cx).await;
        }
        Ok(())
    }

    /// Applies the overlay file when it changed: connects new brokers, drops removed ones.
    fn reload(&mut self, cmd_tx: &mpsc::Sender<Vec<u8>>) {
        let Some(targets) = self.overlay.as_mut().and_then(|o| o.poll(&self.cx)) else { return };
        let wanted = targets
            .mqtt
            .into_iter()
            .filter(|m| m.enabled)
            .map(|m| {
                let t = Target {
                    broker: m.broker,
                    client_id: m.client_id,
                    username: m.username,
                    password: m.password,
                    topic: m.topic,
                };
                (m.id, t)
            })
            .collect();
        let (stop, start) = push_targets::plan(&self.brokers, |b| &b.target, wanted);
        for k in stop {
            let b = self.brokers.remove(&k).expect("running");
            tracing::info!(component = &*self.cx.id, broker = %b.target.broker, "push target removed or changed");
            let (cfg, cx) = (self.cfg.clone(), self.cx.clone());
            tokio::spawn(async move { close(b, &cfg, &cx).await });
        }
        for (k, t) in start {
            if let Err(e) = self.connect(k, t, cmd_tx) {
                self.cx.error(format_args!("push target {k}: {e}"));
            }
        }
    }

    fn connect(&mut self, key: u64, target: Target, cmd_tx: &mpsc::Sender<Vec<u8>>) -> anyhow::Result<()> {
        let (tls, host, port) = push_targets::parse_broker(&target.broker).map_err(|e| anyhow::anyhow!(e))?;
        if target.client_id.trim().is_empty() {
            anyhow::bail!("client_id is empty");
        }
        let topic = TopicTemplate::parse(&target.topic).map_err(|e| anyhow::anyhow!(e.message))?;
        let mut opts = MqttOptions::new(target.client_id.clone(), host, port);
        opts.set_keep_alive(Duration::from_secs(self.cfg.keep_alive_secs.max(5)));
        opts.set_request_channel_capacity(self.cfg.backlog.max_events);
        opts.set_clean_session(true);
        if let Some(user) = &target.username {
            opts.set_credentials(user.clone(), target.password.clone().unwrap_or_default());
        }
        if !self.cfg.availability_topic.is_empty() {
            opts.set_last_will(LastWill::new(&self.cfg.availability_topic, "offline", QoS::AtLeastOnce, true));
        }
        if tls {
            opts.set_transport(match &self.tls {
                Some(c) => Transport::tls_with_config(c.clone()),
                None => Transport::tls_with_default_config(),
            });
        }
        let (client, eventloop) = AsyncClient::new(opts, self.cfg.backlog.max_events);
        let listed_in = self.overlay.as_ref().filter(|_| key != 0).map(Overlay::shared);
        let connection = Connection::new(listed_in, "mqtt", key);
        let stop = CancellationToken::new();
        let driver = Driver {
            label: target.broker.clone(),
            client: client.clone(),
            connection: connection.clone(),
            availability: Some(self.cfg.availability_topic.clone()).filter(|t| !t.is_empty()),
            command: self.cfg.command_topic.clone().filter(|t| !t.is_empty()).map(|t| (t, cmd_tx.clone())),
            reconnect_max: Duration::from_millis(self.cfg.reconnect_max_ms.max(100)),
            cx: self.cx.clone(),
        };
        let task = tokio::spawn(driver.run(eventloop, stop.clone()));
        self.brokers.insert(key, Broker { target, topic, client, connection, announced: HashSet::new(), stop, task });
        Ok(())
    }

    fn body(&self, ev: &Event) -> Result<Vec<u8>, String> {
        if let Some(p) = &self.payload {
            return p.render(ev)?.ok_or_else(|| "the payload expression gave no output".to_string());
        }
        Ok(match &ev.payload {
            Payload::Status(s) => default_body(s).to_string().into_bytes(),
            _ => {
                let mut out = Vec::new();
                ev.write_json(&mut out);
                out
            }
        })
    }

    async fn publish(&mut self, ev: Event) {
        if let Payload::Status(s) = &ev.payload {
            self.track_permission(s);
        }
        let body = match self.body(&ev) {
            Ok(b) => b,
            Err(e) => {
                self.cx.error(format_args!("payload failed on a {} event: {e}", ev.kind()));
                return;
            }
        };
        let (q, retain) = (qos(self.cfg.qos), self.cfg.retain);
        let mut queued = false;
        for b in self.brokers.values_mut() {
            let mut extra = Vec::new();
            if let (Some((prefix, state)), Payload::Status(s)) = (&self.ha, &ev.payload) {
                if b.announced.insert(s.port) {
                    extra.push((
                        discovery_topic(prefix, &b.target.client_id, s.port),
                        discovery(&self.cfg, b, state, &ev, s),
                        true,
                    ));
                }
                extra.push((state.render(&ev), default_body(s).to_string().into_bytes(), true));
            }
            let topic = b.topic.render(&ev);
            for (topic, body, retain) in std::iter::once((topic, body.clone(), retain)).chain(extra) {
                let sent = match self.cfg.backlog.when_full {
                    WhenFull::DropNewest => b.client.try_publish(topic, q, retain, body).is_ok(),
                    WhenFull::Block => b.client.publish(topic, q, retain, body).await.is_ok(),
                };
                if !sent {
                    self.cx.metrics.dropped(DropReason::Full, 1);
                    tracing::debug!(component = &*self.cx.id, broker = %b.target.broker, "backlog full: status dropped");
                } else {
                    queued = true;
                }
            }
        }
        if queued {
            self.cx.metrics.sent(1);
        } else if self.brokers.is_empty() {
            self.cx.metrics.dropped(DropReason::Intentional, 1);
        }
    }

    fn track_permission(&mut self, s: &StatusInfo) {
        let same = |w: &Waiting| w.instance == s.instance && w.session == s.session_id;
        self.permissions.retain(|w| !same(w));
        if let (Some(id), "permission") = (&s.permission_id, s.code.as_str()) {
            self.permissions.push(Waiting {
                instance: s.instance.clone(),
                port: s.port,
                session: s.session_id.clone(),
                id: id.clone(),
            });
        }
    }

    /// A message on the command topic: reply to the permission request it names (or the newest).
    fn command(&mut self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let cmd: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "reply": text.trim() }));
        let reply = cmd["reply"].as_str().unwrap_or("").to_string();
        if !matches!(reply.as_str(), "once" | "always" | "reject") {
            self.cx.error(format_args!("command `{text}`: the reply must be once, always or reject"));
            return;
        }
        let matches = |w: &Waiting| {
            cmd["permissionID"].as_str().is_none_or(|id| id == w.id)
                && cmd["sessionID"].as_str().is_none_or(|s| w.session.as_deref() == Some(s))
                && cmd["port"].as_u64().is_none_or(|p| p == u64::from(w.port))
        };
        let Some(pos) = self.permissions.iter().rposition(matches) else {
            self.cx.error(format_args!("command `{text}`: no permission request waiting matches it"));
            return;
        };
        let w = self.permissions.remove(pos);
        let url = format!("{}/permission/{}/reply", w.instance.trim_end_matches('/'), w.id);
        let mut req = self.http.post(&url).json(&json!({ "reply": reply }));
        if let Some(pw) = &self.cfg.opencode_password {
            req = req.basic_auth(&self.cfg.opencode_username, Some(pw));
        }
        let cx = self.cx.clone();
        tokio::spawn(async move {
            match req.timeout(Duration::from_secs(10)).send().await.and_then(|r| r.error_for_status()) {
                Ok(_) => tracing::info!(component = &*cx.id, "permission {} answered `{reply}` ({url})", w.id),
                Err(e) => cx.error(format_args!("permission reply to {url} failed: {e}")),
            }
        });
    }
}

/// The seed's message: `{port, status, code, timestamp}` plus sessionID, tool, permissionID.
fn default_body(s: &StatusInfo) -> Value {
    let mut v = json!({
        "port": s.port,
        "status": s.status,
        "code": s.code,
        "timestamp": s.timestamp,
        "sessionID": s.session_id,
        "tool": s.tool,
    });
    if let Some(id) = &s.permission_id {
        v["permissionID"] = json!(id);
    }
    v
}

fn node_id(client_id: &str) -> String {
    client_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

fn discovery_topic(prefix: &str, client_id: &str, port: u16) -> String {
    let node = node_id(client_id);
    format!("{prefix}/sensor/{node}/{node}_{port}/config")
}

/// The Home Assistant discovery config of one instance's sensor.
fn discovery(cfg: &MqttConfig, b: &Broker, state: &TopicTemplate, ev: &Event, s: &StatusInfo) -> Vec<u8> {
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

/// Says goodbye to a broker: `offline`, then a clean disconnect once the backlog is out. A broker
/// that is not connected gets two seconds to connect; then what it still holds is counted as
/// dropped.
async fn close(b: Broker, cfg: &MqttConfig, cx: &Context) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !b.connection.is_up() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if b.connection.is_up() {
        if !cfg.availability_topic.is_empty() {
            let _ = b.client.publish(&cfg.availability_topic, QoS::AtLeastOnce, true, "offline").await;
        }
        let _ = b.client.disconnect().await;
    } else {
        b.stop.cancel();
    }
    let mut task = b.task;
    let lost = match tokio::time::timeout(Duration::from_secs(3), &mut task).await {
        Ok(r) => r.unwrap_or(0),
        Err(_) => {
            b.stop.cancel();
            task.await.unwrap_or(0)
        }
    };
    if lost > 0 {
        cx.metrics.dropped(DropReason::Error, lost as u64);
        tracing::warn!(component = &*cx.id, broker = %b.target.broker, "{lost} messages not delivered: the broker was unreachable at shutdown");
    }
}

/// Drives one broker's rumqttc event loop: reconnects with backoff and carries what the broker
/// had not acknowledged over to the next connection.
struct Driver {
    label: String,
    client: AsyncClient,
    connection: Connection,
    availability: Option<String>,
    command: Option<(String, mpsc::Sender<Vec<u8>>)>,
    reconnect_max: Duration,
    cx: Context,
}

impl Driver {
    /// Returns how many messages were still waiting when it was stopped (0 after a clean
    /// disconnect).
    async fn run(self, mut el: EventLoop, stop: CancellationToken) -> usize {
        let first = Duration::from_millis(100);
        let mut backoff = first;
        let mut saved: VecDeque<Request> = VecDeque::new();
        let mut down_since: Option<std::time::Instant> = Some(std::time::Instant::now());
        let mut warned = false;
        loop {
            let polled = tokio::select! {
                _ = stop.cancelled() => break,
                p = el.poll() => p,
            };
            match polled {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                    // A new session: rumqttc forgot its unacknowledged messages; put them back first.
                    if !saved.is_empty() {
                        let waiting = saved.len() + el.pending.len();
                        saved.extend(el.pending.drain(..));
                        el.pending = std::mem::take(&mut saved);
                        tracing::info!(component = &*self.cx.id, broker = %self.label, "{waiting} waiting messages go out first");
                    }
                    self.connection.set(true, &"connected");
                    let after = down_since.take().map(|t| t.elapsed()).unwrap_or_default();
                    if warned {
                        tracing::warn!(component = &*self.cx.id, broker = %self.label, "reconnected after {:.1} s", after.as_secs_f64());
                    } else {
                        tracing::info!(component = &*self.cx.id, broker = %self.label, "connected");
                    }
                    warned = false;
                    backoff = first;
                    if let Some(t) = &self.availability {
                        let _ = self.client.try_publish(t, QoS::AtLeastOnce, true, "online");
                    }
                    if let Some((t, _)) = &self.command {
                        let _ = self.client.try_subscribe(t, QoS::AtLeastOnce);
                    }
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                    if let Some((t, tx)) = &self.command
                        && p.topic == *t
                    {
                        let _ = tx.try_send(p.payload.to_vec());
                    }
                }
                Ok(rumqttc::Event::Outgoing(Outgoing::Disconnect)) => {
                    self.connection.close();
                    return 0;
                }
                Ok(_) => {}
                Err(e) => {
                    self.connection.set(false, &e);
                    down_since.get_or_insert_with(std::time::Instant::now);
                    saved.extend(el.pending.drain(..).filter(|r| matches!(r, Request::Publish(_))));
                    if !warned {
                        warned = true;
                        tracing::warn!(
                            component = &*self.cx.id,
                            broker = %self.label,
                            "no connection to the broker: {e}; retrying every {} ms at most, {} messages waiting",
                            self.reconnect_max.as_millis(),
                            saved.len()
                        );
                    }
                    let jitter = 0.8 + rand::random::<f64>() * 0.4;
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                    }
                    backoff = (backoff * 2).min(self.reconnect_max);
                }
            }
        }
        // Stopped without a clean disconnect: count what never reached the broker (or was not
        // acknowledged by it), including what still waits in the client's channel.
        self.connection.close();
        el.clean();
        saved.len() + el.pending.iter().filter(|r| matches!(r, Request::Publish(_))).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Kind;
    use crate::testing;

    #[test]
    fn config_errors_name_the_option() {
        let errs = testing::parse(Kind::Sink, "mqtt", "qos = 3\ntopic = \"a/#\"\npayload = \".code |\"").unwrap_err();
        let paths: Vec<String> = errs.iter().map(|e| e.path.to_string()).collect();
        assert_eq!(paths, ["broker", "qos", "topic", "payload"], "{errs:?}");
        assert!(testing::parse(Kind::Sink, "mqtt", "targets_from = \"page\"").is_ok());
    }

    #[test]
    fn default_body_is_the_seeds_message() {
        let s = StatusInfo {
            port: 4096,
            code: "running".into(),
            status: "运行中: bash".into(),
            tool: Some("bash".into()),
            session_id: Some("ses_1".into()),
            timestamp: "2026-06-03T14:30:00Z".into(),
            ..Default::default()
        };
        assert_eq!(
            default_body(&s),
            json!({"port": 4096, "status": "运行中: bash", "code": "running", "timestamp": "2026-06-03T14:30:00Z",
                   "sessionID": "ses_1", "tool": "bash"})
        );
    }
}
