//! Permission replies: statuses asking for permission are remembered, and a message on the
//! command topic answers the one it names (or the newest) on the OpenCode instance that asked.

use std::time::Duration;

use serde_json::{Value, json};

use crate::event::StatusInfo;

use super::sink::MqttSink;

/// A permission request waiting for a reply.
pub(super) struct Waiting {
    pub(super) instance: String,
    pub(super) port: u16,
    pub(super) session: Option<String>,
    pub(super) id: String,
}

impl MqttSink {
    pub(super) fn track_permission(&mut self, s: &StatusInfo) {
        let same = |w: &Waiting| w.instance == s.instance && w.session == s.session_id;
        self.permissions.retain(|w| !same(w));
        if let (Some(id), "permission") = (&s.permission_id, s.code.as_str()) {
            self.permissions.push(Waiting {
                instance: s.instance.clone(),
                port: s.port,
                session: s.session_id.clone(),
                id: id.clone(),
            });
        }
    }

    /// A message on the command topic: reply to the permission request it names (or the newest).
    pub(super) fn command(&mut self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let cmd: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "reply": text.trim() }));
        let reply = cmd["reply"].as_str().unwrap_or("").to_string();
        if !matches!(reply.as_str(), "once" | "always" | "reject") {
            self.cx.error(format_args!("command `{text}`: the reply must be once, always or reject"));
            return;
        }
        let matches = |w: &Waiting| {
            cmd["permissionID"].as_str().is_none_or(|id| id == w.id)
                && cmd["sessionID"].as_str().is_none_or(|s| w.session.as_deref() == Some(s))
                && cmd["port"].as_u64().is_none_or(|p| p == u64::from(w.port))
        };
        let Some(pos) = self.permissions.iter().rposition(matches) else {
            self.cx.error(format_args!("command `{text}`: no permission request waiting matches it"));
            return;
        };
        let w = self.permissions.remove(pos);
        let url = format!("{}/permission/{}/reply", w.instance.trim_end_matches('/'), w.id);
        let mut req = self.http.post(&url).json(&json!({ "reply": reply }));
        if let Some(pw) = &self.cfg.opencode_password {
            req = req.basic_auth(&self.cfg.opencode_username, Some(pw));
        }
        let cx = self.cx.clone();
        tokio::spawn(async move {
            match req.timeout(Duration::from_secs(10)).send().await.and_then(|r| r.error_for_status()) {
                Ok(_) => tracing::info!(component = &*cx.id, "permission {} answered `{reply}` ({url})", w.id),
                Err(e) => cx.error(format_args!("permission reply to {url} failed: {e}")),
            }
        });
    }
}
