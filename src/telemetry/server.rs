//! `GET /metrics` and `GET /health`: on their own server (`api = { address = "…" }` at the top
//! of a pipeline) and on any component's server that merges [`routes`] (the `websocket` sink's).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::Telemetry;
use super::encode::CONTENT_TYPE;

/// `api = { address = "127.0.0.1:9598" }`: serve `/metrics` (Prometheus) and `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Where to listen, `HOST:PORT`. Keep it on loopback unless a scraper elsewhere needs it.
    pub address: String,
}

impl ApiConfig {
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        self.address.parse().map_err(|_| format!("`{}` is not an address like 127.0.0.1:9598", self.address))
    }
}

/// The two routes, for a server of the host's or a component's.
pub fn routes<S: Clone + Send + Sync + 'static>(telemetry: Arc<Telemetry>) -> Router<S> {
    Router::new().route("/metrics", get(metrics)).route("/health", get(health)).with_state(telemetry)
}

async fn metrics(State(t): State<Arc<Telemetry>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], t.encode()).into_response()
}

/// 200 when every component runs, else 503; each component's state either way.
async fn health(State(t): State<Arc<Telemetry>>) -> Response {
    let (ok, components) = t.health();
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({ "status": if ok { "ok" } else { "degraded" }, "components": components });
    (status, axum::Json(body)).into_response()
}

/// Serves the routes on `listener` until `stop` fires. On a loopback address only requests
/// naming a loopback host are answered (a web page that rebinds its own name to 127.0.0.1
/// cannot read the figures).
pub async fn serve(listener: tokio::net::TcpListener, telemetry: Arc<Telemetry>, stop: CancellationToken) {
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let app: Router = routes(telemetry).layer(axum::middleware::from_fn(move |req: Request, next: Next| async move {
        if loopback && !names_loopback(req.headers().get(header::HOST)) {
            return (StatusCode::FORBIDDEN, "this server answers requests for localhost only\n").into_response();
        }
        next.run(req).await
    }));
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
        tracing::error!("the metrics server stopped: {e}");
    }
}

/// A `Host` header naming this machine's loopback (`localhost`, `127.0.0.1`, `[::1]`, any port).
pub fn names_loopback(host: Option<&axum::http::HeaderValue>) -> bool {
    let Some(host) = host.and_then(|h| h.to_str().ok()) else { return false };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_answered() {
        let h = |s: &str| names_loopback(Some(&axum::http::HeaderValue::from_str(s).unwrap()));
        assert!(h("127.0.0.1:9598") && h("localhost:9598") && h("[::1]:9598") && h("LOCALHOST") && h("127.0.0.2"));
        assert!(!h("evil.example:9598") && !h("localhost.evil.example") && !h("10.0.0.1:9598"));
        assert!(!names_loopback(None));
    }
}
