//! The push-target API (`/api/mqtt`, `/api/ble`), kept in an overlay file beside the pipeline.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Shared, failure};
use crate::sinks::push_targets::{Ble, DEFAULT_CHAR_UUID, DEFAULT_SERVICE_UUID, Mqtt, PushTargets, Targets};

pub struct Store {
    /// The file, and the links the sinks driving its targets report.
    shared: Arc<PushTargets>,
    pub targets: Targets,
}

impl Store {
    pub fn load(shared: Arc<PushTargets>) -> anyhow::Result<Store> {
        let targets = Targets::load(shared.file())?;
        Ok(Store { shared, targets })
    }

    fn path(&self) -> &Path {
        self.shared.file()
    }

    /// Reads the file again before a change, so hand edits made since are kept, not erased.
    /// A file that does not parse is not overwritten: the change is refused until it is fixed.
    fn reload(&mut self) -> Result<(), Refused> {
        match Targets::load(self.path()) {
            Ok(t) => {
                self.targets = t;
                Ok(())
            }
            Err(e) => Err(Refused(
                StatusCode::CONFLICT,
                format!("{e}; fix or remove the file (it was edited by hand), then try again"),
            )),
        }
    }

    /// Written private (0600: it holds broker passwords), through a temporary file.
    fn save(&self) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = format!(
            "# Push targets managed through the status API (/api/mqtt, /api/ble). Edits here are\n# picked up and kept (the API reads this file before each change).\n{}",
            toml::to_string(&self.targets).map_err(std::io::Error::other)?
        );
        let tmp = self.path().with_extension("toml.tmp");
        let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(tmp, self.path())
    }
}

/// A body that could not be taken: its own status (413 for one too large), in the envelope.
fn rejected(e: axum::extract::rejection::JsonRejection) -> Response {
    failure(e.status(), e.body_text())
}

type IdParam = Result<UrlPath<u64>, axum::extract::rejection::PathRejection>;

/// The id in the URL; one that is not a number is a 400 in the envelope.
fn id_of(id: IdParam) -> Result<u64, Refused> {
    id.map(|UrlPath(id)| id)
        .map_err(|e| Refused(StatusCode::BAD_REQUEST, format!("the target id must be a number: {}", e.body_text())))
}

/// A request refused before it reached its target, answered in the envelope.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        failure(self.0, self.1)
    }
}

/// The store, read again from its file (hand edits since are kept).
fn fresh(s: &Shared) -> Result<std::sync::MutexGuard<'_, Store>, Refused> {
    let mut store = s.targets.lock().unwrap_or_else(|e| e.into_inner());
    store.reload()?;
    Ok(store)
}

/// A target as the API shows it: secrets are write-only (`password: null`, `has_password`).
fn public(mut target: Value) -> Value {
    if let Some(obj) = target.as_object_mut()
        && let Some(p) = obj.get("password").cloned()
    {
        obj.insert("has_password".into(), json!(!p.is_null()));
        obj.insert("password".into(), Value::Null);
    }
    target
}

/// What a client may send: every field optional, defaults as in the seed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttInput {
    broker: Option<String>,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    topic: Option<String>,
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BleInput {
    device_name: Option<String>,
    service_uuid: Option<String>,
    char_uuid: Option<String>,
    enabled: Option<bool>,
}

impl MqttInput {
    fn apply(self, id: u64, old: Option<&Mqtt>) -> Result<Mqtt, String> {
        let broker = self.broker.or(old.map(|o| o.broker.clone())).ok_or("broker is required")?;
        let m = Mqtt {
            id,
            broker,
            client_id: self.client_id.or(old.map(|o| o.client_id.clone())).unwrap_or_else(|| "opencode-monitor".into()),
            username: self.username.or(old.and_then(|o| o.username.clone())),
            // Left out: the stored one is kept; empty: removed.
            password: match self.password {
                Some(p) if p.is_empty() => None,
                Some(p) => Some(p),
                None => old.and_then(|o| o.password.clone()),
            },
            topic: self.topic.or(old.map(|o| o.topic.clone())).unwrap_or_else(|| "opencode/status".into()),
            enabled: self.enabled.or(old.map(|o| o.enabled)).unwrap_or(true),
        };
        // What the mqtt sink would refuse, the API refuses.
        m.validate()?;
        Ok(m)
    }
}

impl BleInput {
    fn apply(self, id: u64, old: Option<&Ble>) -> Result<Ble, String> {
        let b = Ble {
            id,
            device_name: self.device_name.or(old.map(|o| o.device_name.clone())).unwrap_or_else(|| "AI-Light".into()),
            service_uuid: self
                .service_uuid
                .or(old.map(|o| o.service_uuid.clone()))
                .unwrap_or_else(|| DEFAULT_SERVICE_UUID.into()),
            char_uuid: self.char_uuid.or(old.map(|o| o.char_uuid.clone())).unwrap_or_else(|| DEFAULT_CHAR_UUID.into()),
            enabled: self.enabled.or(old.map(|o| o.enabled)).unwrap_or(true),
        };
        b.validate()?;
        Ok(b)
    }
}

/// CRUD over one list of targets.
macro_rules! crud {
    ($list:ident, $ty:ty, $input:ty) => {{
        async fn list(State(s): State<Arc<Shared>>) -> Response {
            let store = match fresh(&s) {
                Ok(store) => store,
                Err(r) => return r.into_response(),
            };
            let kind = stringify!($list);
            let items: Vec<Value> =
                store.targets.$list.iter().map(|t| with_link(&store.shared, kind, json!(t))).collect();
            super::envelope(json!(items)).into_response()
        }
        async fn one(State(s): State<Arc<Shared>>, id: IdParam) -> Response {
            let id = match id_of(id) {
                Ok(id) => id,
                Err(r) => return r.into_response(),
            };
            let store = match fresh(&s) {
                Ok(store) => store,
                Err(r) => return r.into_response(),
            };
            match store.targets.$list.iter().find(|t| t.id == id) {
                Some(t) => super::envelope(with_link(&store.shared, stringify!($list), json!(t))).into_response(),
                None => failure(StatusCode::NOT_FOUND, format!("no {} target {id}", stringify!($list))),
            }
        }
        async fn create(
            State(s): State<Arc<Shared>>,
            body: Result<Json<$input>, axum::extract::rejection::JsonRejection>,
        ) -> Response {
            let input = match body {
                Ok(Json(b)) => b,
                Err(e) => return rejected(e),
            };
            let mut store = match fresh(&s) {
                Ok(store) => store,
                Err(r) => return r.into_response(),
            };
            let id = store.targets.$list.iter().map(|t| t.id).max().unwrap_or(0) + 1;
            match input.apply(id, None) {
                Ok(t) => {
                    store.targets.$list.push(t.clone());
                    saved(&store, "创建成功", public(json!(t)))
                }
                Err(e) => failure(StatusCode::BAD_REQUEST, e),
            }
        }
        async fn update(
            State(s): State<Arc<Shared>>,
            id: IdParam,
            body: Result<Json<$input>, axum::extract::rejection::JsonRejection>,
        ) -> Response {
            let id = match id_of(id) {
                Ok(id) => id,
                Err(r) => return r.into_response(),
            };
            let input = match body {
                Ok(Json(b)) => b,
                Err(e) => return rejected(e),
            };
            let mut store = match fresh(&s) {
                Ok(store) => store,
                Err(r) => return r.into_response(),
            };
            let Some(pos) = store.targets.$list.iter().position(|t| t.id == id) else {
                return failure(StatusCode::NOT_FOUND, format!("no {} target {id}", stringify!($list)));
            };
            match input.apply(id, Some(&store.targets.$list[pos])) {
                Ok(t) => {
                    store.targets.$list[pos] = t.clone();
                    saved(&store, "更新成功", public(json!(t)))
                }
                Err(e) => failure(StatusCode::BAD_REQUEST, e),
            }
        }
        async fn delete(State(s): State<Arc<Shared>>, id: IdParam) -> Response {
            let id = match id_of(id) {
                Ok(id) => id,
                Err(r) => return r.into_response(),
            };
            let mut store = match fresh(&s) {
                Ok(store) => store,
                Err(r) => return r.into_response(),
            };
            let before = store.targets.$list.len();
            store.targets.$list.retain(|t| t.id != id);
            if store.targets.$list.len() == before {
                return failure(StatusCode::NOT_FOUND, format!("no {} target {id}", stringify!($list)));
            }
            saved(&store, "删除成功", Value::Null)
        }
        let path = concat!("/api/", stringify!($list));
        Router::new()
            .route(path, get(list).post(create))
            .route(&format!("{path}/{{id}}"), get(one).put(update).delete(delete))
    }};
}

/// Adds how the target's link is doing (`connected`, `state`), as the sink driving it reports.
fn with_link(shared: &PushTargets, kind: &'static str, target: Value) -> Value {
    let mut target = public(target);
    let id = target["id"].as_u64().unwrap_or(0);
    let link = shared.link(kind, id);
    target["connected"] = json!(link.as_ref().is_some_and(|l| l.connected));
    target["state"] = json!(match link {
        Some(l) => l.detail,
        None if target["enabled"] == false => "disabled".to_string(),
        None => format!("no {kind} sink reads these targets (targets_from)"),
    });
    target
}

fn saved(store: &Store, message: &str, data: Value) -> Response {
    match store.save() {
        Ok(()) if data.is_null() => Json(json!({ "code": 0, "message": message })).into_response(),
        Ok(()) => Json(json!({ "code": 0, "message": message, "data": data })).into_response(),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, format!("saving {}: {e}", store.path().display())),
    }
}

pub fn routes() -> Router<Arc<Shared>> {
    let mqtt: Router<Arc<Shared>> = crud!(mqtt, Mqtt, MqttInput);
    let ble: Router<Arc<Shared>> = crud!(ble, Ble, BleInput);
    mqtt.merge(ble)
}
