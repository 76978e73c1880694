//! `opencode_sse`: live events from running OpenCode servers (`opencode serve`, `web`, or a TUI
//! started with `--port`).
//!
//! Instances come from `urls`, `ports`, a `scan` range, and `discover`: every OpenCode process
//! the process scan sees listening is attached, and detached when it exits. Each instance is
//! one task: `GET /session/status` on every (re)connect rebuilds the state (the stream has no
//! resume ids), then `GET /event` (or `/global/event`) is read with an SSE parser. No event for
//! `heartbeat_timeout_secs` (OpenCode sends a heartbeat every 10 s) means reconnect; failures
//! back off exponentially with jitter.

use std::collections::HashMap;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::component::{ComponentFuture, Context, Output, SourceConfig, SourceContext};
use crate::config::{FieldError, FieldPath};
use crate::event::{DataType, Event, LiveEvent, Payload};

use crate::process::Scanner;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `GET /event`: the server's own directory.
    #[default]
    Event,
    /// `GET /global/event`: every directory the server serves.
    Global,
}

/// Follows the event streams of running OpenCode servers.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct OpencodeSseConfig {
    /// Base URLs, e.g. `["http://127.0.0.1:4096"]`.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Ports on `host`.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// A port range on `host` to probe, e.g. `"4096-4100"`.
    pub scan: Option<String>,
    /// Attach to every OpenCode process found listening; detach when it exits.
    #[serde(default)]
    pub discover: bool,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default)]
    pub endpoint: Endpoint,
    /// Basic-auth user (default `$OPENCODE_SERVER_USERNAME`, else `opencode`).
    pub username: Option<String>,
    /// Basic-auth password (default `$OPENCODE_SERVER_PASSWORD`).
    pub password: Option<String>,
    /// Reconnect when nothing (not even a heartbeat) arrives for this long.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_timeout_secs: u64,
    /// How often `discover` and `scan` look for servers, in milliseconds.
    #[serde(default = "default_discover")]
    pub discover_interval_ms: u64,
    /// Also pass on streaming deltas, heartbeats and plugin/catalog noise.
    #[serde(default)]
    pub include_noise: bool,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_heartbeat() -> u64 {
    30
}
fn default_discover() -> u64 {
    1000
}

const EXAMPLE: &str = "discover = true\n";

crate::register_component!(
    source OpencodeSseConfig,
    "opencode_sse",
    "Live events from running OpenCode servers (urls, ports, a scanned range, or discovered processes)",
    EXAMPLE
);

const NOISE: &[&str] = &[
    "message.part.delta",
    "server.heartbeat",
    "plugin.added",
    "catalog.updated",
    "reference.updated",
    "integration.updated",
];

fn parse_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b && b - a <= 1000).then_some((a, b))
}

impl SourceConfig for OpencodeSseConfig {
    fn outputs(&self) -> DataType {
        DataType::LIVE
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.urls.is_empty() && self.ports.is_empty() && self.scan.is_none() && !self.discover {
            errs.push(
                FieldError::new(FieldPath::default(), "no OpenCode server to follow")
                    .help("set `discover = true`, or `urls`, `ports` or `scan = \"4096-4100\"`"),
            );
        }
        if let Some(s) = &self.scan
            && parse_range(s).is_none()
        {
            errs.push(
                FieldError::new(FieldPath::key("scan"), format!("`{s}` is not a port range"))
                    .help("e.g. \"4096-4100\" (at most 1000 ports)"),
            );
        }
        for (i, u) in self.urls.iter().enumerate() {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                errs.push(
                    FieldError::new(FieldPath::key("urls").index(i), format!("`{u}` is not an http(s) URL"))
                        .help("e.g. \"http://127.0.0.1:4096\""),
                );
            }
        }
        errs
    }

    fn build(&self, sc: SourceContext) -> anyhow::Result<ComponentFuture> {
        let cfg = self.clone();
        let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).build()?;
        let auth = Auth {
            user: cfg
                .username
                .clone()
                .or_else(|| std::env::var("OPENCODE_SERVER_USERNAME").ok())
                .unwrap_or_else(|| "opencode".into()),
            password: cfg
                .password
                .clone()
                .or_else(|| std::env::var("OPENCODE_SERVER_PASSWORD").ok())
                .filter(|p| !p.is_empty()),
        };
        Ok(Box::pin(async move {
            let SourceContext { cx, out, shutdown } = sc;
            let mut fixed: Vec<String> = cfg.urls.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
            fixed.extend(cfg.ports.iter().map(|p| format!("http://{}:{p}", cfg.host)));
            let mut running: HashMap<String, (CancellationToken, tokio::task::JoinHandle<()>)> = HashMap::new();
            let attach = |url: &str, running: &mut HashMap<String, _>| {
                let token = shutdown.child_token();
                let inst = Instance {
                    url: url.to_string(),
                    client: client.clone(),
                    auth: auth.clone(),
                    cfg: cfg.clone(),
                    cx: cx.clone(),
                };
                let handle = tokio::spawn(inst.run(out.clone(), token.clone()));
                tracing::info!(component = &*cx.id, "following {url}");
                running.insert(url.to_string(), (token, handle));
            };
            for u in &fixed {
                attach(u, &mut running);
            }
            let mut scanner = cfg.discover.then(Scanner::with_defaults);
            let range = cfg.scan.as_deref().and_then(parse_range);
            let mut tick = tokio::time::interval(Duration::from_millis(cfg.discover_interval_ms.max(100)));
            while scanner.is_some() || range.is_some() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let mut seen: Vec<String> = Vec::new();
                if let Some(s) = scanner.take() {
                    let (s, found) = tokio::task::spawn_blocking(move || {
                        let mut s = s;
                        let f = s.scan();
                        (s, f)
                    })
                    .await?;
                    scanner = Some(s);
                    for p in found.iter().filter(|p| p.mode != "launcher" && p.mode != "lsp") {
                        seen.extend(p.ports.iter().map(|port| format!("http://{}:{port}", cfg.host)));
                    }
                }
                if let Some((a, b)) = range {
                    for port in a..=b {
                        let addr = format!("{}:{port}", cfg.host);
                        if let Ok(Ok(_)) =
                            tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(&addr))
                                .await
                        {
                            seen.push(format!("http://{addr}"));
                        }
                    }
                }
                for url in &seen {
                    if !running.contains_key(url) && is_opencode(&client, &auth, url).await {
                        attach(url, &mut running);
                    }
                }
                // Detach from servers that are gone (never from configured ones).
                let gone: Vec<String> =
                    running.keys().filter(|u| !fixed.contains(u) && !seen.contains(u)).cloned().collect();
                for url in gone {
                    if let Some((token, handle)) = running.remove(&url) {
                        tracing::info!(component = &*cx.id, "{url} is gone; detaching");
                        token.cancel();
                        let _ = handle.await;
                    }
                }
            }
            shutdown.cancelled().await;
            for (_, (token, handle)) in running {
                token.cancel();
                let _ = handle.await;
            }
            Ok(())
        }))
    }
}

#[derive(Clone)]
struct Auth {
    user: String,
    password: Option<String>,
}

impl Auth {
    fn apply(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.password {
            Some(p) => r.basic_auth(&self.user, Some(p)),
            None => r,
        }
    }
}

/// Whether `url` answers like an OpenCode server.
async fn is_opencode(client: &reqwest::Client, auth: &Auth, url: &str) -> bool {
    let r = auth.apply(client.get(format!("{url}/global/health")).timeout(Duration::from_secs(2))).send().await;
    matches!(r, Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::UNAUTHORIZED)
}

struct Instance {
    url: String,
    client: reqwest::Client,
    auth: Auth,
    cfg: OpencodeSseConfig,
    cx: Context,
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap_or(0)
}

/// The session an OpenCode event is about.
impl Instance {
    fn event(&self, event_type: &str, properties: Value) -> Event {
        let live = LiveEvent {
            instance: self.url.clone(),
            port: port_of(&self.url),
            event_type: event_type.to_string(),
            session_id: LiveEvent::session_of(&properties),
            properties,
        };
        Event::new(self.cx.id.clone(), chrono::Utc::now(), Payload::Live(Box::new(live)))
    }

    async fn run(self, mut out: Output, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(250);
        let mut connected = false;
        loop {
            let result = tokio::select! {
                _ = stop.cancelled() => break,
                r = self.session(&mut out, &mut connected) => r,
            };
            if connected {
                out.send(self.event("instance.disconnected", serde_json::json!({ "reason": format!("{result:#?}") })))
                    .await;
                connected = false;
                backoff = Duration::from_millis(250);
            }
            if let Err(e) = result {
                tracing::debug!(component = &*self.cx.id, "{}: {e:#}", self.url);
            }
            let jitter = rand::random::<f64>() * 0.5 + 0.75;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        if connected {
            out.send(self.event("instance.disconnected", serde_json::json!({ "reason": "detached" }))).await;
        }
    }

    /// One connection: the state, then the stream until it ends, fails or goes quiet.
    async fn session(&self, out: &mut Output, connected: &mut bool) -> anyhow::Result<()> {
        let statuses: Value = self
            .auth
            .apply(self.client.get(format!("{}/session/status", self.url)))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let path = match self.cfg.endpoint {
            Endpoint::Event => "event",
            Endpoint::Global => "global/event",
        };
        let resp = self.auth.apply(self.client.get(format!("{}/{path}", self.url))).send().await?.error_for_status()?;
        *connected = true;
        out.send(self.event("instance.connected", serde_json::json!({ "statuses": statuses }))).await;
        let mut stream = resp.bytes_stream().eventsource();
        let quiet = Duration::from_secs(self.cfg.heartbeat_timeout_secs.max(1));
        loop {
            let next = tokio::time::timeout(quiet, stream.next()).await;
            let ev = match next {
                Err(_) => anyhow::bail!("no event for {quiet:?}"),
                Ok(None) => anyhow::bail!("the stream ended"),
                Ok(Some(Err(e))) => anyhow::bail!("stream error: {e}"),
                Ok(Some(Ok(ev))) => ev,
            };
            let Ok(mut v) = serde_json::from_str::<Value>(&ev.data) else {
                self.cx.error(format_args!("{}: an event that is not JSON: {:.200}", self.url, ev.data));
                continue;
            };
            if self.cfg.endpoint == Endpoint::Global {
                v = v.get("payload").cloned().unwrap_or(v);
            }
            let ty = v["type"].as_str().unwrap_or("unknown").to_string();
            if !self.cfg.include_noise && NOISE.contains(&ty.as_str()) {
                continue;
            }
            let props = v.get("properties").cloned().unwrap_or(Value::Null);
            out.send(self.event(&ty, props)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_needs_a_server_and_valid_ranges() {
        use crate::registry::Kind;
        let errs = crate::testing::parse(Kind::Source, "opencode_sse", "").unwrap_err();
        assert!(errs[0].message.contains("no OpenCode server"));
        let errs = crate::testing::parse(Kind::Source, "opencode_sse", "scan = \"9-1\"\nurls = [\"localhost:1\"]")
            .unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(parse_range("4096-4100"), Some((4096, 4100)));
    }

    #[test]
    fn events_name_their_session() {
        let j = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(LiveEvent::session_of(&j(r#"{"sessionID":"ses_a","status":{}}"#)).as_deref(), Some("ses_a"));
        assert_eq!(LiveEvent::session_of(&j(r#"{"part":{"sessionID":"ses_b"}}"#)).as_deref(), Some("ses_b"));
        assert_eq!(LiveEvent::session_of(&j(r#"{"info":{"id":"ses_c"}}"#)).as_deref(), Some("ses_c"));
        assert_eq!(LiveEvent::session_of(&j(r#"{"info":{"id":"msg_x"}}"#)), None);
    }
}
