//! Permission requests on the page: `GET /api/permissions` lists those waiting (from the
//! statuses this sink is fed), `POST /api/permissions/reply` with `{"reply": "once" | "always" |
//! "reject", "permissionID"?, "sessionID"?, "instance"?}` answers the newest one that matches on
//! the OpenCode instance that asked — the path the `mqtt` sink's command topic takes. Like every
//! changing route: the page's own origin only, and the token when one is set (the guard).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{Shared, envelope, failure};
use crate::permission::{Waiting, answer, valid_reply};

pub fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/api/permissions", get(list)).route("/api/permissions/reply", post(reply))
}

async fn list(State(shared): State<Arc<Shared>>) -> Response {
    let waiting: Vec<Waiting> = shared.desk.lock().unwrap().waiting().to_vec();
    envelope(json!(waiting)).into_response()
}

#[derive(Debug, Deserialize)]
struct Reply {
    reply: String,
    #[serde(rename = "permissionID")]
    permission_id: Option<String>,
    #[serde(rename = "sessionID")]
    session_id: Option<String>,
    instance: Option<String>,
}

async fn reply(State(shared): State<Arc<Shared>>, body: Option<Json<Reply>>) -> Response {
    let Some(Json(r)) = body else {
        return failure(
            StatusCode::BAD_REQUEST,
            "send JSON: {\"reply\": \"once\" | \"always\" | \"reject\", \"permissionID\": …}",
        );
    };
    if !valid_reply(&r.reply) {
        return failure(StatusCode::BAD_REQUEST, format!("reply `{}` is not once, always or reject", r.reply));
    }
    let matches = |w: &Waiting| {
        r.permission_id.as_deref().is_none_or(|id| id == w.id)
            && r.session_id.as_deref().is_none_or(|s| w.session.as_deref() == Some(s))
            && r.instance.as_deref().is_none_or(|i| i == w.instance)
    };
    let Some(w) = shared.desk.lock().unwrap().take(matches) else {
        return failure(StatusCode::NOT_FOUND, "no permission request waiting matches it (answered already?)");
    };
    match answer(&shared.http, &w, &r.reply, &shared.auth).await {
        Ok(()) => {
            tracing::info!("permission {} answered `{}` from the page ({})", w.id, r.reply, w.instance);
            envelope(json!({ "permissionID": w.id, "reply": r.reply })).into_response()
        }
        Err(e) => {
            // Still waiting: it can be answered again.
            shared.desk.lock().unwrap().put_back(w);
            failure(StatusCode::BAD_GATEWAY, e)
        }
    }
}
