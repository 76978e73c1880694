//! Permission requests waiting for an answer, and answering one on the OpenCode instance that
//! asked (`POST /permission/{id}/reply`, basic auth when `opencode serve` has a password). The
//! `mqtt` sink's command topic and the page's buttons take this one path.

use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::event::StatusInfo;

/// A permission request waiting for a reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Waiting {
    pub instance: String,
    pub port: u16,
    #[serde(rename = "sessionID")]
    pub session: Option<String>,
    #[serde(rename = "permissionID")]
    pub id: String,
    pub tool: Option<String>,
    pub title: Option<String>,
    /// When it was asked (the status's timestamp).
    pub since: String,
}

/// The requests waiting, oldest first; a session's newer status replaces its request.
#[derive(Debug, Default)]
pub struct Desk {
    waiting: Vec<Waiting>,
}

impl Desk {
    /// Follows a status: a `permission` status with an id is a request waiting; any other
    /// status of that session means its request was answered (here or elsewhere).
    pub fn track(&mut self, s: &StatusInfo) {
        self.waiting.retain(|w| !(w.instance == s.instance && w.session == s.session_id));
        if let (Some(id), "permission") = (&s.permission_id, s.code.as_str()) {
            self.waiting.push(Waiting {
                instance: s.instance.clone(),
                port: s.port,
                session: s.session_id.clone(),
                id: id.clone(),
                tool: s.tool.clone(),
                title: s.title.clone(),
                since: s.timestamp.clone(),
            });
        }
    }

    pub fn waiting(&self) -> &[Waiting] {
        &self.waiting
    }

    /// Puts back a request whose answer did not get through (unless a newer status replaced it).
    pub fn put_back(&mut self, w: Waiting) {
        if !self.waiting.iter().any(|x| x.instance == w.instance && x.session == w.session) {
            self.waiting.push(w);
        }
    }

    /// Takes the newest request that `matches`.
    pub fn take(&mut self, matches: impl Fn(&Waiting) -> bool) -> Option<Waiting> {
        let pos = self.waiting.iter().rposition(matches)?;
        Some(self.waiting.remove(pos))
    }
}

/// How a request is answered.
pub fn valid_reply(reply: &str) -> bool {
    matches!(reply, "once" | "always" | "reject")
}

/// Basic auth for OpenCode's server: `username`/`password` as configured, else
/// `$OPENCODE_SERVER_USERNAME` (or `opencode`) and `$OPENCODE_SERVER_PASSWORD`; no password, no
/// auth.
#[derive(Debug, Clone, Default)]
pub struct ServerAuth {
    pub username: String,
    pub password: Option<String>,
}

impl ServerAuth {
    pub fn resolve(username: Option<&str>, password: Option<&str>) -> ServerAuth {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        ServerAuth {
            username: username
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .or_else(|| env("OPENCODE_SERVER_USERNAME"))
                .unwrap_or_else(|| "opencode".into()),
            password: password
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .or_else(|| env("OPENCODE_SERVER_PASSWORD")),
        }
    }
}

/// Sends `reply` (once, always or reject) to the instance that asked `w`.
pub async fn answer(http: &reqwest::Client, w: &Waiting, reply: &str, auth: &ServerAuth) -> Result<(), String> {
    let mut url = url::Url::parse(&w.instance).map_err(|e| format!("instance `{}`: {e}", w.instance))?;
    url.path_segments_mut()
        .map_err(|()| format!("instance `{}` cannot take a path", w.instance))?
        .pop_if_empty()
        .extend(["permission", w.id.as_str(), "reply"]);
    let mut req = http.post(url.clone()).json(&json!({ "reply": reply })).timeout(Duration::from_secs(10));
    if let Some(pw) = &auth.password {
        req = req.basic_auth(&auth.username, Some(pw));
    }
    match req.send().await.and_then(|r| r.error_for_status()) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("permission reply to {url} failed: {e}")),
    }
}
