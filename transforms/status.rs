//! `status`: OpenCode's live events -> the status codes of the status lights, per session and
//! instance, with Chinese and English labels and the BLE light mode.
//!
//! | event | status |
//! |---|---|
//! | `session.status` busy / retry | `busy` / `retry` |
//! | `session.status` idle after work | `session_completed`, then `idle` |
//! | tool part pending / running / completed (or error) | `using_tool` / `running` / `completed`, with the tool |
//! | reasoning part started | `reasoning` |
//! | `permission.asked` | `permission` |
//! | `session.error` | `error` |
//! | reconnect: a session no longer busy | `idle` |
//!
//! A status equal to the session's last one is not repeated, and a tool part's own repeats (it
//! reports `running` again after a permission reply) are not news. With `debounce_ms`, a status
//! waits that long and only the newest of a burst is sent.

use std::collections::HashMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{ComponentFuture, Context, Input, Output, TaskTransform, Transform, TransformConfig};
use crate::event::{DataType, Event, LiveEvent, Payload, StatusInfo};
use crate::metrics::DropReason;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct StatusConfig {
    /// Hold each status this long and send only the newest of a burst (0: send at once).
    #[serde(default)]
    pub debounce_ms: u64,
}

const EXAMPLE: &str = "debounce_ms = 0\n";

crate::register_component!(
    transform StatusConfig,
    "status",
    "Maps OpenCode live events to status-light codes (idle, busy, running: bash, permission, …) with labels and BLE modes",
    EXAMPLE
);

impl TransformConfig for StatusConfig {
    fn input(&self) -> DataType {
        DataType::LIVE
    }
    fn outputs(&self, _: DataType) -> DataType {
        DataType::STATUS
    }
    fn build(&self, cx: &Context) -> anyhow::Result<Transform> {
        Ok(Transform::Task(Box::new(StatusTask {
            mapper: Mapper::default(),
            debounce: Duration::from_millis(self.debounce_ms),
            cx: cx.clone(),
        })))
    }
}

/// (code, Chinese label, English label, BLE mode)
const CODES: &[(&str, &str, &str, &str)] = &[
    ("idle", "空闲", "idle", "idle"),
    ("busy", "工作中", "busy", "busy"),
    ("retry", "重试中", "retrying", "thinking"),
    ("pending", "等待中", "pending", "thinking"),
    ("reasoning", "思考中", "reasoning", "thinking"),
    ("using_tool", "使用工具中", "using tool", "ai"),
    ("running", "运行中", "running", "ai"),
    ("completed", "工具执行完成", "completed", "success"),
    ("session_completed", "会话完成", "session completed", "success"),
    ("permission", "等待权限", "waiting for permission", "alarm"),
    ("error", "错误", "error", "error"),
];

/// The BLE light mode of a status code (the seed's table).
pub fn ble_mode(code: &str) -> &'static str {
    CODES.iter().find(|c| c.0 == code).map_or("idle", |c| c.3)
}

#[derive(Default)]
struct SessionState {
    last: Option<(String, Option<String>)>,
    /// Tool part id -> its last state; reasoning part ids seen.
    parts: HashMap<String, String>,
    title: Option<String>,
}

/// The per-session state machine.
#[derive(Default)]
pub struct Mapper {
    sessions: HashMap<(String, String), SessionState>,
}

impl Mapper {
    /// The statuses one live event leads to (usually none or one).
    pub fn map(&mut self, e: &LiveEvent) -> Vec<StatusInfo> {
        let p = &e.properties;
        if e.event_type == "instance.connected" {
            // Rebuild: sessions that are no longer working are idle now.
            let statuses = p["statuses"].as_object().cloned().unwrap_or_default();
            let known: Vec<String> =
                self.sessions.keys().filter(|(i, _)| *i == e.instance).map(|(_, s)| s.clone()).collect();
            let mut out = Vec::new();
            for s in known {
                if !statuses.contains_key(&s) {
                    out.extend(self.emit(e, &s, "idle", None));
                }
            }
            for (s, st) in statuses {
                let code = match st["type"].as_str() {
                    Some("retry") => "retry",
                    Some("idle") | None => "idle",
                    _ => "busy",
                };
                out.extend(self.emit(e, &s, code, None));
            }
            return out;
        }
        let Some(session) = e.session_id.clone() else { return Vec::new() };
        match e.event_type.as_str() {
            "session.created" | "session.updated" => {
                let title = p["info"]["title"].as_str().map(str::to_string);
                self.state(e, &session).title = title;
                Vec::new()
            }
            "session.status" => match p["status"]["type"].as_str() {
                Some("busy") => self.emit(e, &session, "busy", None).into_iter().collect(),
                Some("retry") => self.emit(e, &session, "retry", None).into_iter().collect(),
                Some("idle") => {
                    let was_working = self.state(e, &session).last.as_ref().is_some_and(|(c, _)| c != "idle");
                    let mut out = Vec::new();
                    if was_working {
                        out.extend(self.emit(e, &session, "session_completed", None));
                    }
                    out.extend(self.emit(e, &session, "idle", None));
                    out
                }
                _ => Vec::new(),
            },
            "session.error" => self.emit(e, &session, "error", None).into_iter().collect(),
            "permission.asked" => {
                let tool = p["permission"].as_str().map(str::to_string);
                let mut st = self.emit(e, &session, "permission", tool);
                if let Some(st) = &mut st {
                    st.permission_id = p["id"].as_str().map(str::to_string);
                }
                st.into_iter().collect()
            }
            "message.part.updated" => {
                let part = &p["part"];
                let id = part["id"].as_str().unwrap_or("").to_string();
                match part["type"].as_str() {
                    Some("tool") => {
                        let state = part["state"]["status"].as_str().unwrap_or("").to_string();
                        let code = match state.as_str() {
                            "pending" => "using_tool",
                            "running" => "running",
                            "completed" | "error" => "completed",
                            _ => return Vec::new(),
                        };
                        if self.state(e, &session).parts.insert(id, state.clone()).as_deref() == Some(state.as_str()) {
                            return Vec::new();
                        }
                        let tool = part["tool"].as_str().map(str::to_string);
                        self.emit(e, &session, code, tool).into_iter().collect()
                    }
                    Some("reasoning") if part["time"]["end"].is_null() => {
                        if self.state(e, &session).parts.insert(id, "reasoning".into()).is_some() {
                            return Vec::new();
                        }
                        self.emit(e, &session, "reasoning", None).into_iter().collect()
                    }
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }

    fn state(&mut self, e: &LiveEvent, session: &str) -> &mut SessionState {
        self.sessions.entry((e.instance.clone(), session.to_string())).or_default()
    }

    fn emit(&mut self, e: &LiveEvent, session: &str, code: &str, tool: Option<String>) -> Option<StatusInfo> {
        let st = self.state(e, session);
        let next = (code.to_string(), tool.clone());
        if st.last.as_ref() == Some(&next) {
            return None;
        }
        st.last = Some(next);
        let (_, zh, en, mode) = CODES.iter().find(|c| c.0 == code).copied().unwrap_or(("", code, code, "idle"));
        let with_tool = |label: &str| match (&tool, code) {
            (Some(t), "running" | "completed" | "using_tool" | "permission") => format!("{label}: {t}"),
            _ => label.to_string(),
        };
        Some(StatusInfo {
            port: e.port,
            instance: e.instance.clone(),
            session_id: Some(session.to_string()),
            title: st.title.clone(),
            code: code.to_string(),
            status: with_tool(zh),
            label: with_tool(en),
            tool,
            mode: mode.to_string(),
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            permission_id: None,
        })
    }
}

struct StatusTask {
    mapper: Mapper,
    debounce: Duration,
    cx: Context,
}

impl StatusTask {
    fn event(&self, s: StatusInfo) -> Event {
        let id = format!("status:{}:{}:{}", s.instance, s.session_id.as_deref().unwrap_or(""), s.timestamp);
        Event::new(self.cx.id.clone(), chrono::Utc::now(), Payload::Status(Box::new(s))).with_id(id)
    }
}

impl TaskTransform for StatusTask {
    fn run(mut self: Box<Self>, mut input: Input, mut out: Output) -> ComponentFuture {
        Box::pin(async move {
            // With debouncing: the newest status per session, and when it is due.
            let mut held: HashMap<(String, Option<String>), (StatusInfo, tokio::time::Instant)> = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tokio::select! {
                    ev = input.recv() => {
                        let Some(ev) = ev else { break };
                        let Payload::Live(live) = &ev.payload else {
                            self.cx.metrics.dropped(DropReason::Intentional, 1);
                            continue;
                        };
                        match live.event_type.as_str() {
                            "instance.connected" => self.cx.telemetry().instance(&self.cx.id, &live.instance, true),
                            "instance.disconnected" => self.cx.telemetry().instance(&self.cx.id, &live.instance, false),
                            _ => {}
                        }
                        for s in self.mapper.map(live) {
                            self.cx.telemetry().set_status(&self.cx.id, &s);
                            if self.debounce.is_zero() {
                                let e = self.event(s);
                                out.send(e).await;
                            } else {
                                let due = tokio::time::Instant::now() + self.debounce;
                                held.insert((s.instance.clone(), s.session_id.clone()), (s, due));
                            }
                        }
                    }
                    _ = tick.tick(), if !held.is_empty() => {
                        let now = tokio::time::Instant::now();
                        let due: Vec<_> = held.iter().filter(|(_, (_, d))| *d <= now).map(|(k, _)| k.clone()).collect();
                        for k in due {
                            if let Some((s, _)) = held.remove(&k) {
                                let e = self.event(s);
                                out.send(e).await;
                            }
                        }
                    }
                }
            }
            for (_, (s, _)) in held {
                let e = self.event(s);
                out.send(e).await;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The events a real `opencode serve` 1.18.33 sent for "run echo hi with bash" with
    /// `"permission": {"bash": "ask"}`, answered `once` (fixtures/sse).
    fn recorded() -> Vec<LiveEvent> {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sse/bash-permission.jsonl"))
            .unwrap();
        text.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let properties = v["properties"].clone();
                LiveEvent {
                    instance: "http://127.0.0.1:4096".into(),
                    port: 4096,
                    event_type: v["type"].as_str().unwrap().into(),
                    session_id: crate::event::LiveEvent::session_of(&properties),
                    properties,
                }
            })
            .collect()
    }

    #[test]
    fn a_real_bash_prompt_with_permission_maps_to_the_seed_sequence() {
        let mut m = Mapper::default();
        let got: Vec<String> = recorded().iter().flat_map(|e| m.map(e)).map(|s| s.label).collect();
        assert_eq!(
            got,
            [
                "busy",
                "using tool: bash",
                "running: bash",
                "waiting for permission: bash",
                "completed: bash",
                "busy",
                "reasoning",
                // OpenCode reports busy once more after the answer, just before idle.
                "busy",
                "session completed",
                "idle"
            ]
        );
        let mut m = Mapper::default();
        let zh: Vec<String> =
            recorded().iter().flat_map(|e| m.map(e)).map(|s| format!("{} {}", s.status, s.mode)).collect();
        assert_eq!(zh[2], "运行中: bash ai");
        assert_eq!(zh[3], "等待权限: bash alarm");
        assert_eq!(zh[4], "工具执行完成: bash success");
        assert_eq!(zh[9], "空闲 idle");
    }

    #[test]
    fn a_reconnect_rebuilds_state_from_session_status() {
        let mut m = Mapper::default();
        let ev = |ty: &str, props: Value| LiveEvent {
            instance: "i".into(),
            port: 1,
            event_type: ty.into(),
            session_id: crate::event::LiveEvent::session_of(&props),
            properties: props,
        };
        m.map(&ev("session.status", serde_json::json!({"sessionID": "ses_a", "status": {"type": "busy"}})));
        // The server restarted; ses_a finished meanwhile, ses_b is retrying.
        let out = m.map(&ev("instance.connected", serde_json::json!({"statuses": {"ses_b": {"type": "retry"}}})));
        let got: Vec<_> = out.iter().map(|s| (s.session_id.clone().unwrap(), s.code.clone())).collect();
        assert_eq!(got, [("ses_a".to_string(), "idle".to_string()), ("ses_b".to_string(), "retry".to_string())]);
    }

    #[tokio::test]
    async fn debouncing_sends_the_newest_of_a_burst() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: StatusConfig = toml::from_str("debounce_ms = 50").unwrap();
        let events: Vec<Event> = recorded()
            .into_iter()
            .map(|l| Event::new("s".into(), chrono::Utc::now(), Payload::Live(Box::new(l))))
            .collect();
        let out = crate::testing::run_transform(&cfg, events, dir.path()).await;
        let labels: Vec<String> = out
            .events
            .iter()
            .map(|e| match &e.payload {
                Payload::Status(s) => s.label.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(labels, ["idle"], "all arrived at once: only the last state is sent");
    }
}
