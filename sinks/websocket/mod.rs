//! `websocket`: the page of the main job (usage, live status, processes, permission answers,
//! push targets), a WebSocket push of every status and usage change, and the REST API behind
//! them (axum).

mod guard;
mod permission;
mod targets;
mod usage;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
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
use crate::event::{DataType, Payload, ProcessInfo, StatusInfo};
use crate::metrics::DropReason;
use crate::permission::{Desk, ServerAuth};
use crate::usage::{FLUSH_EVERY, Keeper, Ledger};

/// Serves `/` (the page: token usage by range with a chart per day and tables by model,
/// project, agent, day and session; each OpenCode instance and session live with buttons to
/// answer permission requests; processes; push targets — no external assets, English or
/// Chinese), `/ws` (every status as JSON: `{port, status, code, timestamp}` plus `sessionID`,
/// `title`, `tool`, `label`, `mode`, `instance`, `permissionID`; `{"usage": "changed"}` when
/// usage changed; `{"rollup": …}` for each rollup it is fed), `/api/health`, `/api/status`,
/// `/api/processes` (when a `process_scan` feeds it), `/api/usage?range=…&by=…`,
/// `/api/sessions?range=…`, `/api/sessions/{id}/messages` (from the sessions and messages of an
/// `opencode_storage` source it is fed, with `ocpipe stats`'s rules; kept in its state
/// directory, so they are back after a restart), `/api/permissions` and `POST
/// /api/permissions/reply`, and the push target API `/api/mqtt[/:id]` and `/api/ble[/:id]` (GET,
/// POST, PUT, DELETE; `{code, message, data}` envelopes). Push targets are kept in
/// `push-targets.toml` in the sink's data directory: an overlay beside the pipeline files that
/// the `mqtt` and `ble` sinks read (and re-read when it changes); editing them never rewrites the
/// pipeline's own TOML.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct WebsocketConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port, logged at start).
    #[serde(default = "default_address")]
    pub address: String,
    /// Other origins whose pages may read the API and `/ws` (CORS), e.g.
    /// `["https://dash.example"]`; `["*"]` lets any page read. Empty (the default): only the
    /// page served here. No other origin may ever change anything (POST, PUT, DELETE).
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Host names (besides loopback names and IP addresses) this server answers to, e.g. the
    /// machine's name on the LAN. Others are refused, so DNS rebinding cannot reach the API.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// When set and not empty, every request needs `Authorization: Bearer <token>`; the page and
    /// the WebSocket also take `?token=`. Use `${VAR:-}`: empty means no token.
    pub token: Option<String>,
    /// How many messages a slow WebSocket client may fall behind before it misses some.
    #[serde(default = "default_client_buffer")]
    pub client_buffer: usize,
    /// Basic-auth user for answering permission requests on `opencode serve` (default
    /// `$OPENCODE_SERVER_USERNAME`, else `opencode`).
    pub opencode_username: Option<String>,
    /// Basic-auth password for them (default `$OPENCODE_SERVER_PASSWORD`; none: no auth).
    pub opencode_password: Option<String>,
}

fn default_address() -> String {
    "127.0.0.1:8080".into()
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
    fn input(&self) -> DataType {
        DataType::STATUS | DataType::PROCESS | DataType::SESSION | DataType::MESSAGE | DataType::ROLLUP
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.address.parse::<std::net::SocketAddr>().is_err() {
            errs.push(
                FieldError::new(FieldPath::key("address"), format!("`{}` is not an address", self.address))
                    .help("e.g. \"127.0.0.1:8080\""),
            );
        }
        for (i, o) in self.cors_origins.iter().enumerate() {
            let origin = url::Url::parse(o).ok().filter(|u| u.origin().ascii_serialization() == *o);
            if o != "*" && (origin.is_none() || HeaderValue::from_str(o).is_err()) {
                errs.push(
                    FieldError::new(FieldPath::key("cors_origins").index(i), format!("`{o}` is not an origin"))
                        .help("scheme://host[:port] with no path, e.g. \"https://dash.example\", or \"*\""),
                );
            }
        }
        errs
    }

    fn build(&self, cx: &Context) -> anyhow::Result<Box<dyn Sink>> {
        let listener = std::net::TcpListener::bind(&self.address).map_err(|e| {
            anyhow::anyhow!("cannot listen on {}: {e} (set `address` to a free one, or port 0)", self.address)
        })?;
        listener.set_nonblocking(true)?;
        let token = self.token.clone().filter(|t| !t.is_empty());
        if token.is_none() && listener.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
            tracing::warn!(
                component = &*cx.id,
                "the status API listens on {} without a token: anyone who can reach it can add push targets; set `token`",
                self.address
            );
        }
        // Its state directory holds the targets file the API writes.
        cx.data_dir()?;
        let push_targets = cx.shared::<crate::sinks::push_targets::PushTargets>(&cx.id);
        let (tx, _) = broadcast::channel(self.client_buffer.max(16));
        let shared = Arc::new(Shared {
            board: RwLock::default(),
            processes: RwLock::default(),
            tx,
            targets: Mutex::new(targets::Store::load(push_targets)?),
            ledger: RwLock::default(),
            desk: Mutex::default(),
            http: reqwest::Client::new(),
            auth: ServerAuth::resolve(self.opencode_username.as_deref(), self.opencode_password.as_deref()),
        });
        let guard = Arc::new(guard::Guard {
            token,
            allowed_hosts: self.allowed_hosts.clone(),
            cors_origins: self.cors_origins.clone(),
        });
        let keeper = Keeper::new(cx)?;
        Ok(Box::new(WebsocketSink { listener, shared, guard, keeper, cx: cx.clone() }))
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
    targets: Mutex<targets::Store>,
    /// Every session and message fed in, for the usage routes.
    ledger: RwLock<Ledger>,
    /// Permission requests waiting, for the page's buttons.
    desk: Mutex<Desk>,
    http: reqwest::Client,
    auth: ServerAuth,
}

struct WebsocketSink {
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    guard: Arc<guard::Guard>,
    /// The ledger's input on disk: written before the events it came from are released.
    keeper: Keeper,
    cx: Context,
}

/// How often a usage change is told to the pages (and what was taken in written).
const USAGE_TICK: Duration = Duration::from_millis(250);

pub fn envelope(data: Value) -> Json<Value> {
    Json(json!({ "code": 0, "message": "ok", "data": data }))
}

pub fn failure(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "code": -1, "message": message.into() }))).into_response()
}

impl Sink for WebsocketSink {
    fn run(self: Box<Self>, mut input: Input) -> ComponentFuture {
        Box::pin(async move {
            let WebsocketSink { listener, shared, guard, mut keeper, cx } = *self;
            // The ledger as it was: the source resumes after what was written here.
            let ledger = keeper
                .restore(Ledger::with_prices(cx.prices().clone()), |l, rec| match rec {
                    crate::usage::state::Record::Session(s) => l.session(&s),
                    crate::usage::state::Record::Message(m) => l.message(&m),
                })
                .await?;
            if !ledger.is_empty() {
                tracing::info!(component = &*cx.id, messages = ledger.len(), "usage restored");
            } else {
                // Sources resume after what they sent before: a page new to a pipeline that ran
                // already sees only what comes from now on.
                tracing::info!(
                    component = &*cx.id,
                    "the page's usage is empty and fills from what the storage source sends; if this pipeline \
                     read OpenCode's history before (an upgrade), stop it and remove the storage source's folder \
                     in the data dir so the history is read again"
                );
            }
            *shared.ledger.write().unwrap() = ledger;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let addr = listener.local_addr()?;
            tracing::info!(component = &*cx.id, "page at http://{addr}/ (WebSocket at ws://{addr}/ws)");
            let app = router(shared.clone(), guard, cx.telemetry().clone());
            let stop = CancellationToken::new();
            let server_stop = stop.clone();
            let server = tokio::spawn(async move {
                axum::serve(listener, app).with_graceful_shutdown(async move { server_stop.cancelled().await }).await
            });
            let mut tick = tokio::time::interval(USAGE_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut changed = false;
            loop {
                tokio::select! {
                    ev = input.recv() => match ev {
                        Some(ev) => {
                            changed |= take(&shared, &mut keeper, &cx, ev)?;
                            if keeper.pending() >= FLUSH_EVERY {
                                keeper.flush().await;
                            }
                        }
                        None => break,
                    },
                    // Only while there is something to do: an idle page costs nothing.
                    _ = tick.tick(), if changed || keeper.pending() > 0 => {
                        keeper.flush().await;
                        if std::mem::take(&mut changed) {
                            let _ = shared.tx.send(Arc::from(r#"{"usage":"changed"}"#));
                        }
                    }
                }
            }
            keeper.flush().await;
            stop.cancel();
            server.await??;
            Ok(())
        })
    }
}

/// Takes one event in; whether usage changed.
fn take(shared: &Shared, keeper: &mut Keeper, cx: &Context, mut ev: crate::event::Event) -> anyhow::Result<bool> {
    // A version from another machine older than one already shown: moot.
    if !keeper.current(&ev) {
        cx.metrics.dropped(DropReason::Intentional, 1);
        return Ok(false);
    }
    match &ev.payload {
        Payload::Status(s) => {
            let key = s.session_id.clone().unwrap_or_default();
            shared.desk.lock().unwrap().track(s);
            shared.board.write().unwrap().instances.entry(s.instance.clone()).or_default().insert(key, (**s).clone());
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
        Payload::Session(s) => shared.ledger.write().unwrap().session(s),
        Payload::Message(m) => shared.ledger.write().unwrap().message(m),
        Payload::Rollup(r) => {
            let _ = shared.tx.send(json!({ "rollup": r }).to_string().into());
        }
        _ => cx.metrics.dropped(DropReason::Intentional, 1),
    }
    // Sessions and messages are delivered once on disk.
    Ok(keeper.keep(&mut ev))
}

fn router(shared: Arc<Shared>, guard: Arc<guard::Guard>, telemetry: Arc<crate::telemetry::Telemetry>) -> Router {
    use axum::http::Method;
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins = &guard.cors_origins;
    // Same origin only unless origins are listed; `*` lets any page read, never change.
    let cors = if origins.iter().any(|o| o == "*") {
        Some(CorsLayer::new().allow_origin(tower_http::cors::Any).allow_methods([Method::GET]))
    } else if !origins.is_empty() {
        Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok())))
                .allow_methods([Method::GET]),
        )
    } else {
        None
    }
    .map(|c| c.allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]));
    let app = Router::new()
        .route("/", get(page))
        .route("/ws", get(ws))
        .route("/api/health", get(|| async { Json(json!({ "code": 0, "message": "ok" })) }))
        .route("/api/status", get(status))
        .route("/api/processes", get(processes))
        .merge(targets::routes())
        .merge(usage::routes())
        .merge(permission::routes())
        .with_state(shared)
        .merge(crate::telemetry::routes(telemetry));
    let app = match cors {
        Some(cors) => app.layer(cors),
        None => app,
    };
    // The guard runs first (outermost): a refused request reaches neither CORS nor a route.
    app.layer(middleware::from_fn_with_state(guard, guard::check))
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
