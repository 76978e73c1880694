//! Who may talk to the status API: the checks every request passes before its route.
//!
//! - **Host**: a loopback name, an IP address, or one of `allowed_hosts`. A page on another
//!   site that rebinds its own DNS name to 127.0.0.1 sends its own name: refused (403).
//! - **Origin**: a state-changing request (POST, PUT, DELETE, PATCH) from a browser page of
//!   another origin is refused whatever the CORS setting; reads (and `/ws`) from another
//!   origin only when `cors_origins` lists it (or is `["*"]`).
//! - **Token** (when set): `Authorization: Bearer <token>`; the `?token=` query parameter is
//!   accepted only for the page (`/`) and `/ws`, which a browser opens without headers.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::failure;

pub struct Guard {
    pub token: Option<String>,
    pub allowed_hosts: Vec<String>,
    pub cors_origins: Vec<String>,
}

/// The host name of a `Host` header or an origin's authority, without the port (and brackets).
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

impl Guard {
    fn host_allowed(&self, host: &str) -> bool {
        let name = host_part(host).to_ascii_lowercase();
        name == "localhost"
            || name.ends_with(".localhost")
            || name.parse::<IpAddr>().is_ok()
            || self.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(&name) || h.eq_ignore_ascii_case(host))
    }

    fn origin_listed(&self, origin: &str) -> bool {
        self.cors_origins.iter().any(|o| o == origin)
    }

    fn read_from_anywhere(&self) -> bool {
        self.cors_origins.iter().any(|o| o == "*")
    }
}

fn token_of(req: &Request) -> (Option<&str>, Option<String>) {
    let bearer =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let query = req.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
    });
    (bearer, query)
}

pub async fn check(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !host.is_empty() && !guard.host_allowed(host) {
        return failure(
            StatusCode::FORBIDDEN,
            format!("host `{host}` is not served: use 127.0.0.1 or localhost, or add it to `allowed_hosts`"),
        );
    }
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        // The page's own origin: same scheme-less authority as the Host it asked.
        let same = origin.split_once("://").is_some_and(|(_, authority)| !host.is_empty() && authority == host);
        let allowed = same || (!changes && (guard.origin_listed(origin) || guard.read_from_anywhere()));
        if !allowed {
            return failure(
                StatusCode::FORBIDDEN,
                if changes {
                    format!("origin `{origin}` may not change anything here (only the page itself may)")
                } else {
                    format!("origin `{origin}` is not allowed: add it to `cors_origins`")
                },
            );
        }
    }
    if let Some(token) = &guard.token {
        let (bearer, query) = token_of(&req);
        let path = req.uri().path();
        let query_ok = !changes && (path == "/" || path == "/ws") && query.as_deref() == Some(token.as_str());
        if bearer != Some(token.as_str()) && !query_ok {
            return failure(StatusCode::UNAUTHORIZED, "unauthorized: send Authorization: Bearer <token>");
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let g = Guard { token: None, allowed_hosts: vec!["monitor.lan".into()], cors_origins: vec![] };
        for ok in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "10.0.0.5", "monitor.lan:8080", "a.localhost"] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example:8080", "127.0.0.1.nip.io:8080", "monitor.lan.evil.example"] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
    }
}
