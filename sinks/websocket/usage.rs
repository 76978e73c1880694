//! The page's usage routes, answered from the sink's [`Ledger`] (every session and message it
//! was fed, kept on disk by a `usage::Keeper` so it is whole again after a restart while the
//! source resumes from its checkpoint), with the rules and JSON of `ocpipe stats --json`:
//!
//! - `GET /api/usage?range=today|week|month|all&by=all|model|project|agent|session|day`
//!   (`&include_fork_copies=true` counts fork copies again): totals, fork copies, a group per key;
//! - `GET /api/sessions?range=…[&limit=N]`: sessions (the N largest) with title, directory,
//!   project, parent, first and last message time and sums;
//! - `GET /api/sessions/{id}/messages`: a session's messages.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Shared, envelope, failure};
use crate::usage::{GroupBy, RangeName, Usage, Window};

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/usage", get(usage))
        .route("/api/sessions", get(sessions))
        .route("/api/sessions/{id}/messages", get(messages))
}

#[derive(Debug, Deserialize)]
struct UsageQuery {
    range: Option<String>,
    by: Option<String>,
    #[serde(default)]
    include_fork_copies: bool,
    /// Sessions: at most this many, the largest (default: all).
    limit: Option<usize>,
}

/// A query parameter naming one of `T`'s values (`all` when absent), as the command line takes
/// them.
fn choice<T: clap::ValueEnum>(what: &str, q: Option<&str>) -> Result<T, String> {
    let q = q.unwrap_or("all");
    T::from_str(q, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect();
        format!("{what} `{q}` is not one of {}", names.join(", "))
    })
}

fn range_of(q: Option<&str>) -> Result<RangeName, String> {
    choice("range", q)
}

fn group_of(q: Option<&str>) -> Result<GroupBy, String> {
    choice("by", q)
}

/// A group as `ocpipe stats --json` lists it: its key beside its sums.
fn group_json(key: &str, u: &Usage) -> Value {
    let mut v = serde_json::to_value(u).unwrap_or_default();
    v["key"] = key.into();
    v
}

async fn usage(State(shared): State<Arc<Shared>>, Query(q): Query<UsageQuery>) -> Response {
    let (range, by) = match (range_of(q.range.as_deref()), group_of(q.by.as_deref())) {
        (Ok(r), Ok(b)) => (r, b),
        (Err(e), _) | (_, Err(e)) => return failure(StatusCode::BAD_REQUEST, e),
    };
    let window = Window::resolve(range, None, None, chrono::Local::now());
    let include = q.include_fork_copies;
    // A million messages take a while: summed off the async workers.
    let summed = tokio::task::spawn_blocking(move || {
        let ledger = shared.ledger.read().unwrap();
        let titles = (by == GroupBy::Session).then(|| ledger.titles());
        (ledger.sum(by, window, include), titles)
    })
    .await;
    let Ok((sum, titles)) = summed else {
        return failure(StatusCode::INTERNAL_SERVER_ERROR, "summing usage failed");
    };
    let groups: Vec<Value> = sum
        .rows
        .iter()
        .map(|(k, u)| {
            let mut v = group_json(k, u);
            if let Some(t) = &titles {
                v["title"] = t.get(k).cloned().into();
            }
            v
        })
        .collect();
    envelope(json!({
        "range": window.name,
        "group_by": by.name(),
        "include_fork_copies": q.include_fork_copies,
        "totals": sum.totals,
        "fork_copies": sum.fork_copies,
        "groups": groups,
    }))
    .into_response()
}

async fn sessions(State(shared): State<Arc<Shared>>, Query(q): Query<UsageQuery>) -> Response {
    let range = match range_of(q.range.as_deref()) {
        Ok(r) => r,
        Err(e) => return failure(StatusCode::BAD_REQUEST, e),
    };
    let window = Window::resolve(range, None, None, chrono::Local::now());
    let limit = q.limit.unwrap_or(usize::MAX);
    let Ok(list) = tokio::task::spawn_blocking(move || shared.ledger.read().unwrap().sessions(window, limit)).await
    else {
        return failure(StatusCode::INTERNAL_SERVER_ERROR, "listing sessions failed");
    };
    envelope(json!({ "range": window.name, "sessions": list })).into_response()
}

async fn messages(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let key = id.clone();
    let found = tokio::task::spawn_blocking(move || shared.ledger.read().unwrap().messages_of(&key)).await;
    match found.ok().flatten() {
        Some(list) => envelope(json!({ "sessionID": id, "messages": list })).into_response(),
        None => failure(StatusCode::NOT_FOUND, format!("no session `{id}` has messages here")),
    }
}
