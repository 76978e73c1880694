//! Permission replies: statuses asking for permission are remembered (`permission::Desk`), and
//! a message on the command topic answers the one it names (or the newest) on the OpenCode
//! instance that asked, the path the page's buttons take too.

use serde_json::{Value, json};

use crate::event::StatusInfo;
use crate::permission::{ServerAuth, Waiting, answer, valid_reply};

use super::sink::MqttSink;

impl MqttSink {
    pub(super) fn track_permission(&mut self, s: &StatusInfo) {
        self.permissions.track(s);
    }

    /// A message on the command topic: reply to the permission request it names (or the newest).
    pub(super) fn command(&mut self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let cmd: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "reply": text.trim() }));
        let reply = cmd["reply"].as_str().unwrap_or("").to_string();
        if !valid_reply(&reply) {
            self.cx.error(format_args!("command `{text}`: the reply must be once, always or reject"));
            return;
        }
        let matches = |w: &Waiting| {
            cmd["permissionID"].as_str().is_none_or(|id| id == w.id)
                && cmd["sessionID"].as_str().is_none_or(|s| w.session.as_deref() == Some(s))
                && cmd["port"].as_u64().is_none_or(|p| p == u64::from(w.port))
        };
        let Some(w) = self.permissions.take(matches) else {
            self.cx.error(format_args!("command `{text}`: no permission request waiting matches it"));
            return;
        };
        let auth = ServerAuth::resolve(Some(&self.cfg.opencode_username), self.cfg.opencode_password.as_deref());
        let (http, cx) = (self.http.clone(), self.cx.clone());
        tokio::spawn(async move {
            match answer(&http, &w, &reply, &auth).await {
                Ok(()) => {
                    tracing::info!(component = &*cx.id, "permission {} answered `{reply}` ({})", w.id, w.instance)
                }
                Err(e) => cx.error(format_args!("{e}")),
            }
        });
    }
}
