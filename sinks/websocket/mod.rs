//! `websocket`: the live status page, a WebSocket push of every status, and the REST API of the
//! status monitor (axum).

mod targets;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::component::{ComponentFuture, Context, Input, Sink, SinkConfig};
use crate::config::{FieldError, FieldPath};
use crate::event::{Payload, ProcessInfo, StatusInfo};

/// Serves `/` (a live status page: a card per instance and session, no external assets),
/// `/ws` (every status as JSON: `{port, status, code, timestamp}` plus `sessionID`, `title`,
/// `tool`, `label`, `mode`, `instance`), `/api/health`, `/api/status` (the current state),
/// `/api/processes` (OpenCode processes, when a `process_scan` feeds this sink), and the push
/// target API `/api/mqtt[/:id]` and `/api/ble[/:id]` (GET, POST, PUT, DELETE; `{code, message,
/// data}` envelopes). Push targets are kept in `push-targets.toml` in the sink's data
/// directory: an overlay beside the pipeline files that the `mqtt` and `ble` sinks read (and
/// re-read when it changes); editing them never rewrites the pipeline's own TOML.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct WebsocketConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port, logged at start).
    #[serde(default = "default_address")]
    pub address: String,
    /// Origins allowed by CORS; `["*"]` allows any.
    #[serde(default = "default_origins")]
    pub cors_origins: Vec<String>,
    /// When set and not empty, every request needs `Authorization: Bearer <token>` (or
    /// `?token=` for the page and the WebSocket). Use `${VAR:-}`: empty means no token.
    pub token: Option<String>,
    /// How many messages a slow WebSocket client may fall behind before it misses some.
    #[serde(default = "default_client_buffer")]
    pub client_buffer: usize,
}

fn default_address() -> String {
    "127.0.0.1:8080".into()
}
fn default_origins() -> Vec<String> {
    vec!["*".into()]
}
fn default_client_buffer() -> usize {
    1024
}

const EXAMPLE: &str = "address = \"127.0.0.1:0\"\n";

crate::register_component!(
    sink WebsocketConfig,
    "websocket",
    "Live status page, WebSocket push of statuses, status/health/process API and MQTT/BLE push-target API",
    EXAMPLE
);

impl SinkConfig for WebsocketConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.address.parse::<std::net::SocketAddr>().is_err() {
            errs.push(
                FieldError::new(FieldPath::key("address"), format!("`{}` is not an address", self.address))
                    .help("e.g. \"127.0.0.1:8080\""),
            );
        }
        for (i, o) in self.cors_origins.iter().enumerate() {
            if o != "*" && HeaderValue::from_str(o).is_err() {
                errs.push(FieldError::new(FieldPath::key("cors_origins").index(i), format!("`{o}` is not an origin")));
            }
        }
        errs
    }

    fn build(&self, cx: &Context) -> anyhow::Result<Box<dyn Sink>> {
        let listener = std::net::TcpListener::bind(&self.address).map_err(|e| {
            anyhow::anyhow!("cannot listen on {}: {e} (set `address` to a free one, or port 0)", self.address)
        })?;
        listener.set_nonblocking(true)?;
        let targets_path = cx.data_dir()?.join(crate::sinks::push_targets::FILE_NAME);
        let (tx, _) = broadcast::channel(self.client_buffer.max(16));
        let shared = Arc::new(Shared {
            board: RwLock::default(),
            processes: RwLock::default(),
            tx,
            token: self.token.clone().filter(|t| !t.is_empty()),
            targets: Mutex::new(targets::Store::load(&targets_path)?),
        });
        Ok(Box::new(WebsocketSink { listener, shared, origins: self.cors_origins.clone(), cx: cx.clone() }))
    }
}

#[derive(Default)]
struct Board {
    /// instance URL -> session id -> its latest status
    instances: BTreeMap<String, BTreeMap<String, StatusInfo>>,
}

struct Shared {
    board: RwLock<Board>,
    processes: RwLock<BTreeMap<u32, ProcessInfo>>,
    tx: broadcast::Sender<Arc<str>>,
    token: Option<String>,
    targets: Mutex<targets::Store>,
}

struct WebsocketSink {
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    origins: Vec<String>,
    cx: Context,
}

pub fn envelope(data: Value) -> Json<Value> {
    Json(json!({ "code": 0, "message": "ok", "data": data }))
}

pub fn failure(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "code": -1, "message": message.into() }))).into_response()
}

impl Sink for WebsocketSink {
    fn run(self: Box<Self>, mut input: Input) -> ComponentFuture {
        Box::pin(async move {
            let WebsocketSink { listener, shared, origins, cx } = *self;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let addr = listener.local_addr()?;
            tracing::info!(component = &*cx.id, "status page at http://{addr}/ (WebSocket at ws://{addr}/ws)");
            let app = router(shared.clone(), &origins);
            let stop = CancellationToken::new();
            let server_stop = stop.clone();
            let server = tokio::spawn(async move {
                axum::serve(listener, app).with_graceful_shutdown(async move { server_stop.cancelled().await }).await
            });
            while let Some(ev) = input.recv().await {
                match &ev.payload {
                    Payload::Status(s) => {
                        let key = s.session_id.clone().unwrap_or_default();
                        shared
                            .board
                            .write()
                            .unwrap()
                            .instances
                            .entry(s.instance.clone())
                            .or_default()
                            .insert(key, (**s).clone());
                        let msg: Arc<str> = serde_json::to_string(&**s)?.into();
                        // No receivers is fine: nobody is watching.
                        let _ = shared.tx.send(msg);
                    }
                    Payload::Process(p) => {
                        let mut procs = shared.processes.write().unwrap();
                        if p.change == "exited" {
                            procs.remove(&p.pid);
                        } else {
                            procs.insert(p.pid, (**p).clone());
                        }
                    }
                    _ => cx.metrics.dropped(1),
                }
            }
            stop.cancel();
            server.await??;
            Ok(())
        })
    }
}

fn router(shared: Arc<Shared>, origins: &[String]) -> Router {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    let cors = if origins.iter().any(|o| o == "*") {
        CorsLayer::new().allow_origin(Any)
    } else {
        CorsLayer::new().allow_origin(AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok())))
    }
    .allow_methods(Any)
    .allow_headers(Any);
    Router::new()
        .route("/", get(page))
        .route("/ws", get(ws))
        .route("/api/health", get(|| async { Json(json!({ "code": 0, "message": "ok" })) }))
        .route("/api/status", get(status))
        .route("/api/processes", get(processes))
        .merge(targets::routes())
        .layer(middleware::from_fn_with_state(shared.clone(), auth))
        .layer(cors)
        .with_state(shared)
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn auth(State(shared): State<Arc<Shared>>, Query(q): Query<TokenQuery>, req: Request, next: Next) -> Response {
    if let Some(token) = &shared.token {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if bearer != Some(token.as_str()) && q.token.as_deref() != Some(token.as_str()) {
            return failure(StatusCode::UNAUTHORIZED, "unauthorized: send Authorization: Bearer <token>");
        }
    }
    next.run(req).await
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

/// An instance's status: its most recent non-idle session's, else idle.
#[derive(Serialize)]
struct InstanceView<'a> {
    instance: &'a str,
    port: u16,
    code: &'a str,
    status: &'a str,
    label: &'a str,
    sessions: Vec<&'a StatusInfo>,
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let board = shared.board.read().unwrap();
    let instances: Vec<InstanceView<'_>> = board
        .instances
        .iter()
        .map(|(instance, sessions)| {
            let mut list: Vec<&StatusInfo> = sessions.values().collect();
            list.sort_by(|a, b| b.timestamp.cmp(&a.timestamp));
            let lead = list.iter().find(|s| s.code != "idle").or(list.first()).copied();
            InstanceView {
                instance,
                port: list.first().map_or(0, |s| s.port),
                code: lead.map_or("idle", |s| &s.code),
                status: lead.map_or("空闲", |s| &s.status),
                label: lead.map_or("idle", |s| &s.label),
                sessions: list,
            }
        })
        .collect();
    envelope(json!({ "instances": instances }))
}

async fn processes(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let procs = shared.processes.read().unwrap();
    envelope(json!(procs.values().collect::<Vec<_>>()))
}

async fn ws(State(shared): State<Arc<Shared>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| push(socket, shared))
}

/// Sends the current statuses, then every new one. A client that falls behind misses some
/// (and is told how many); it never slows the pipeline.
async fn push(mut socket: WebSocket, shared: Arc<Shared>) {
    let mut rx = shared.tx.subscribe();
    let current: Vec<String> = {
        let board = shared.board.read().unwrap();
        board.instances.values().flat_map(|s| s.values()).filter_map(|s| serde_json::to_string(s).ok()).collect()
    };
    for m in current {
        if socket.send(Message::Text(m.into())).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Ok(m) => {
                    if socket.send(Message::Text((*m).into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = json!({ "missed": n }).to_string();
                    if socket.send(Message::Text(note.into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            }
        }
    }
}
