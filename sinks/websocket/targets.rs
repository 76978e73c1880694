//! The push-target API (`/api/mqtt`, `/api/ble`), kept in an overlay file beside the pipeline.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Shared, failure};
use crate::sinks::push_targets::{self, Ble, DEFAULT_CHAR_UUID, DEFAULT_SERVICE_UUID, Mqtt, Targets};

pub struct Store {
    path: PathBuf,
    pub targets: Targets,
}

impl Store {
    pub fn load(path: &Path) -> anyhow::Result<Store> {
        Ok(Store { path: path.to_path_buf(), targets: Targets::load(path)? })
    }

    fn save(&self) -> std::io::Result<()> {
        let text = format!(
            "# Push targets managed through the status API (/api/mqtt, /api/ble). Edits here are\n# picked up too.\n{}",
            toml::to_string(&self.targets).map_err(std::io::Error::other)?
        );
        let tmp = self.path.with_extension("toml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, &self.path)
    }
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
        push_targets::parse_broker(&broker)?;
        Ok(Mqtt {
            id,
            broker,
            client_id: self.client_id.or(old.map(|o| o.client_id.clone())).unwrap_or_else(|| "opencode-monitor".into()),
            username: self.username.or(old.and_then(|o| o.username.clone())),
            password: self.password.or(old.and_then(|o| o.password.clone())),
            topic: self.topic.or(old.map(|o| o.topic.clone())).unwrap_or_else(|| "opencode/status".into()),
            enabled: self.enabled.or(old.map(|o| o.enabled)).unwrap_or(true),
        })
    }
}

impl BleInput {
    fn apply(self, id: u64, old: Option<&Ble>) -> Result<Ble, String> {
        let uuid = |s: &str| s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4;
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
        if !uuid(&b.service_uuid) || !uuid(&b.char_uuid) {
            return Err("service_uuid and char_uuid must be UUIDs (8-4-4-4-12 hex digits)".into());
        }
        Ok(b)
    }
}

/// CRUD over one list of targets.
macro_rules! crud {
    ($list:ident, $ty:ty, $input:ty) => {{
        async fn list(State(s): State<Arc<Shared>>) -> Response {
            let store = s.targets.lock().unwrap();
            let kind = stringify!($list);
            let items: Vec<Value> =
                store.targets.$list.iter().map(|t| with_link(&store.path, kind, json!(t))).collect();
            super::envelope(json!(items)).into_response()
        }
        async fn one(State(s): State<Arc<Shared>>, UrlPath(id): UrlPath<u64>) -> Response {
            let store = s.targets.lock().unwrap();
            match store.targets.$list.iter().find(|t| t.id == id) {
                Some(t) => super::envelope(with_link(&store.path, stringify!($list), json!(t))).into_response(),
                None => failure(StatusCode::NOT_FOUND, format!("no {} target {id}", stringify!($list))),
            }
        }
        async fn create(
            State(s): State<Arc<Shared>>,
            body: Result<Json<$input>, axum::extract::rejection::JsonRejection>,
        ) -> Response {
            let input = match body {
                Ok(Json(b)) => b,
                Err(e) => return failure(StatusCode::BAD_REQUEST, e.body_text()),
            };
            let mut store = s.targets.lock().unwrap();
            let id = store.targets.$list.iter().map(|t| t.id).max().unwrap_or(0) + 1;
            match input.apply(id, None) {
                Ok(t) => {
                    store.targets.$list.push(t.clone());
                    saved(&store, "创建成功", json!(t))
                }
                Err(e) => failure(StatusCode::BAD_REQUEST, e),
            }
        }
        async fn update(
            State(s): State<Arc<Shared>>,
            UrlPath(id): UrlPath<u64>,
            body: Result<Json<$input>, axum::extract::rejection::JsonRejection>,
        ) -> Response {
            let input = match body {
                Ok(Json(b)) => b,
                Err(e) => return failure(StatusCode::BAD_REQUEST, e.body_text()),
            };
            let mut store = s.targets.lock().unwrap();
            let Some(pos) = store.targets.$list.iter().position(|t| t.id == id) else {
                return failure(StatusCode::NOT_FOUND, format!("no {} target {id}", stringify!($list)));
            };
            match input.apply(id, Some(&store.targets.$list[pos])) {
                Ok(t) => {
                    store.targets.$list[pos] = t.clone();
                    saved(&store, "更新成功", json!(t))
                }
                Err(e) => failure(StatusCode::BAD_REQUEST, e),
            }
        }
        async fn delete(State(s): State<Arc<Shared>>, UrlPath(id): UrlPath<u64>) -> Response {
            let mut store = s.targets.lock().unwrap();
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
fn with_link(file: &Path, kind: &'static str, mut target: Value) -> Value {
    let id = target["id"].as_u64().unwrap_or(0);
    let link = push_targets::link_state(file, kind, id);
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
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, format!("saving {}: {e}", store.path.display())),
    }
}

pub fn routes() -> Router<Arc<Shared>> {
    let mqtt: Router<Arc<Shared>> = crud!(mqtt, Mqtt, MqttInput);
    let ble: Router<Arc<Shared>> = crud!(ble, Ble, BleInput);
    mqtt.merge(ble)
}
