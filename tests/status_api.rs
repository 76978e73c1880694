//! The live-status path against a scripted OpenCode-shaped server inside the test: basic auth,
//! `/global/event` envelopes, reconnecting after a silent stream (state rebuilt from
//! `/session/status`), and the websocket sink's token, CORS and push-target API (its defences:
//! `tests/status_api_security.rs`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::routing::get;
use futures::StreamExt;
use ocpipe::config;
use ocpipe::runtime::{RunOptions, Topology};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Fake {
    connections: usize,
    /// What `/session/status` answers.
    statuses: Value,
}

fn authorized(h: &HeaderMap) -> bool {
    // opencode:secret
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Basic b3BlbmNvZGU6c2VjcmV0")
}

/// An OpenCode-shaped server: the first connection gets a busy status then goes silent (no
/// heartbeat); later ones rebuild from `/session/status`.
async fn fake_opencode(state: Arc<Mutex<Fake>>) -> String {
    let s1 = state.clone();
    let s2 = state.clone();
    let app = Router::new()
        .route("/global/health", get(|| async { axum::Json(json!({"healthy": true})) }))
        .route(
            "/session/status",
            get(move |h: HeaderMap| {
                let s = s1.clone();
                async move {
                    if !authorized(&h) {
                        return StatusCode::UNAUTHORIZED.into_response();
                    }
                    axum::Json(s.lock().unwrap().statuses.clone()).into_response()
                }
            }),
        )
        .route(
            "/global/event",
            get(move |h: HeaderMap| {
                let s = s2.clone();
                async move {
                    if !authorized(&h) {
                        return StatusCode::UNAUTHORIZED.into_response();
                    }
                    let n = {
                        let mut f = s.lock().unwrap();
                        f.connections += 1;
                        f.connections
                    };
                    let frames: Vec<String> = if n == 1 {
                        vec![json!({"directory": "/w", "payload": {"type": "session.status", "properties": {"sessionID": "ses_a", "status": {"type": "busy"}}}}).to_string()]
                    } else {
                        vec![json!({"directory": "/w", "payload": {"type": "server.connected", "properties": {}}}).to_string()]
                    };
                    let stream = futures::stream::iter(frames.into_iter().map(|d| Ok::<_, std::convert::Infallible>(SseEvent::default().data(d))))
                        .chain(futures::stream::pending());
                    Sse::new(stream).into_response()
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_global_events_reconnects_and_the_api() {
    let state = Arc::new(Mutex::new(Fake { statuses: json!({}), ..Default::default() }));
    let server = fake_opencode(state.clone()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let api = format!("http://127.0.0.1:{port}");
    let toml = format!(
        r#"
[sources.sse]
type = "opencode_sse"
urls = ["{server}"]
endpoint = "global"
password = "secret"
heartbeat_timeout_secs = 1

[transforms.status]
type = "status"
inputs = ["sse"]

[sinks.page]
type = "websocket"
inputs = ["status"]
address = "127.0.0.1:{port}"
token = "t0ken"
cors_origins = ["http://example.test"]
"#
    );
    let (pipeline, _) = config::load_str("t.toml", &toml).unwrap_or_else(|r| panic!("{r}"));
    let dir = tempfile::tempdir().unwrap();
    let topology =
        Topology::build(pipeline, &RunOptions { data_dir: dir.path().join("state"), base_dir: dir.path().into() })
            .unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(topology.run(stop.clone()));

    let client = reqwest::Client::new();
    let get = |path: &str, token: bool| {
        let mut r = client.get(format!("{api}{path}"));
        if token {
            r = r.bearer_auth("t0ken");
        }
        r.send()
    };
    // The first stream reports ses_a busy, then goes silent: after 1 s ocpipe reconnects, and
    // /session/status (now empty) says ses_a is idle.
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < Duration::from_secs(15) {
        if let Ok(r) = get("/api/status", true).await {
            let v: Value = r.json().await.unwrap();
            if let Some(code) = v["data"]["instances"][0]["sessions"][0]["code"].as_str() {
                if seen.last().map(String::as_str) != Some(code) {
                    seen.push(code.to_string());
                }
                if code == "idle" {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, ["busy", "idle"]);
    assert!(state.lock().unwrap().connections >= 2, "reconnected after the silence");

    // The token guards everything; CORS answers the configured origin.
    assert_eq!(get("/api/health", false).await.unwrap().status(), 401);
    assert_eq!(client.get(format!("{api}/api/health?token=t0ken")).send().await.unwrap().status(), 401);
    let ok = client
        .get(format!("{api}/api/health"))
        .bearer_auth("t0ken")
        .header("origin", "http://example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["access-control-allow-origin"], "http://example.test");

    // Push targets: the seed's envelopes, validation, and the overlay file.
    let post = |path: &str, body: Value| client.post(format!("{api}{path}")).bearer_auth("t0ken").json(&body).send();
    let created: Value = post("/api/mqtt", json!({"broker": "tcp://127.0.0.1:1883", "username": "u"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["code"], 0);
    assert_eq!(created["message"], "创建成功");
    assert_eq!(
        created["data"],
        json!({"id": 1, "broker": "tcp://127.0.0.1:1883", "client_id": "opencode-monitor", "username": "u", "password": null, "has_password": false, "topic": "opencode/status", "enabled": true})
    );
    let bad = post("/api/mqtt", json!({"broker": "127.0.0.1:1883"})).await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await.unwrap()["code"], -1);
    let ble: Value = post("/api/ble", json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(ble["data"]["device_name"], "AI-Light");
    assert_eq!(ble["data"]["char_uuid"], "b8b7e002-7a6b-4f4f-9a8b-11c0ffee0001");
    let updated: Value = client
        .put(format!("{api}/api/mqtt/1"))
        .bearer_auth("t0ken")
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (updated["message"].as_str(), updated["data"]["enabled"].as_bool(), updated["data"]["username"].as_str()),
        (Some("更新成功"), Some(false), Some("u"))
    );
    let overlay = std::fs::read_to_string(dir.path().join("state/page/push-targets.toml")).unwrap();
    assert!(
        overlay.contains("[[mqtt]]") && overlay.contains("enabled = false") && overlay.contains("[[ble]]"),
        "{overlay}"
    );
    let deleted: Value =
        client.delete(format!("{api}/api/mqtt/1")).bearer_auth("t0ken").send().await.unwrap().json().await.unwrap();
    assert_eq!(deleted, json!({"code": 0, "message": "删除成功"}));
    assert_eq!(client.get(format!("{api}/api/mqtt/1")).bearer_auth("t0ken").send().await.unwrap().status(), 404);

    stop.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(10), run).await.unwrap().unwrap();
    assert!(summary.ok(), "{summary:?}");
}
