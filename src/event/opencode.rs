//! OpenCode's own records: sessions, messages, the part facts token views need, and rollups of
//! token usage. Field names follow OpenCode's JSON where it has them.

use serde::{Deserialize, Serialize};

/// Token counts as OpenCode stores them: `input` excludes cached tokens, `output` excludes
/// reasoning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub reasoning: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Tokens {
    /// Each kind with its name (`input`, `output`, `reasoning`, `cache_read`, `cache_write`):
    /// the kinds sum to the total.
    pub fn by_kind(&self) -> [(&'static str, u64); 5] {
        [
            ("input", self.input),
            ("output", self.output),
            ("reasoning", self.reasoning),
            ("cache_read", self.cache_read),
            ("cache_write", self.cache_write),
        ]
    }
}

/// The largest token count of one kind in one message; larger (or negative, or not a number)
/// stored counts saturate to the nearest of 0 and this, with a warning naming the message.
pub const TOKEN_MAX: u64 = u32::MAX as u64;
/// The largest cost of one message (dollars); the same rule.
pub const COST_MAX: f64 = 1e9;

/// A stored cost under the rule above.
pub fn cost_in_range(c: Option<f64>) -> f64 {
    match c {
        Some(c) if c.is_finite() => c.clamp(0.0, COST_MAX),
        Some(c) if c == f64::INFINITY => COST_MAX,
        _ => 0.0,
    }
}

impl Tokens {
    /// The five counts packed as u32 (each at most [`TOKEN_MAX`]), for compact per-message
    /// state: input, output, reasoning, cache read, cache write.
    pub fn packed(&self) -> [u32; 5] {
        [self.input, self.output, self.reasoning, self.cache_read, self.cache_write].map(|v| v.min(TOKEN_MAX) as u32)
    }

    pub fn from_packed(t: [u32; 5]) -> Tokens {
        let [input, output, reasoning, cache_read, cache_write] = t.map(u64::from);
        Tokens { input, output, reasoning, cache_read, cache_write }
    }

    /// All kinds together (sums saturate: they never wrap).
    pub fn total(&self) -> u64 {
        [self.input, self.output, self.reasoning, self.cache_read, self.cache_write]
            .into_iter()
            .fold(0u64, u64::saturating_add)
    }

    pub fn add(&mut self, o: &Tokens) {
        self.input = self.input.saturating_add(o.input);
        self.output = self.output.saturating_add(o.output);
        self.reasoning = self.reasoning.saturating_add(o.reasoning);
        self.cache_read = self.cache_read.saturating_add(o.cache_read);
        self.cache_write = self.cache_write.saturating_add(o.cache_write);
    }

    pub fn sub(&mut self, o: &Tokens) {
        self.input = self.input.saturating_sub(o.input);
        self.output = self.output.saturating_sub(o.output);
        self.reasoning = self.reasoning.saturating_sub(o.reasoning);
        self.cache_read = self.cache_read.saturating_sub(o.cache_read);
        self.cache_write = self.cache_write.saturating_sub(o.cache_write);
    }
}

/// An OpenCode session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub id: String,
    #[serde(rename = "projectID")]
    pub project_id: String,
    /// The project's worktree (`None` for the `global` project).
    pub project: Option<String>,
    #[serde(rename = "parentID")]
    pub parent_id: Option<String>,
    pub title: String,
    pub directory: String,
    pub slug: Option<String>,
    pub version: Option<String>,
    /// Milliseconds since the epoch.
    pub time_created: i64,
    pub time_updated: i64,
    /// Where it was read: `sqlite`, `json` or `event`.
    pub origin: String,
}

/// An OpenCode message (user or assistant) with its token usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct MessageInfo {
    pub id: String,
    #[serde(rename = "sessionID")]
    pub session_id: String,
    pub role: String,
    #[serde(rename = "providerID")]
    pub provider_id: Option<String>,
    #[serde(rename = "modelID")]
    pub model_id: Option<String>,
    pub agent: Option<String>,
    pub mode: Option<String>,
    /// `path.root`: the project root the agent worked in.
    pub root: Option<String>,
    pub cwd: Option<String>,
    pub tokens: Tokens,
    pub cost: f64,
    pub time_created: i64,
    pub time_completed: Option<i64>,
    pub finish: Option<String>,
    /// `error.name: error.data.message`, when the message failed.
    pub error: Option<String>,
    /// A copy of a parent session's message made by a fork (same creation time, model and
    /// tokens, new id): counted once, in the original.
    pub fork_copy: bool,
    pub origin: String,
}

impl MessageInfo {
    /// `provider/model`, or `unknown`.
    pub fn model_key(&self) -> String {
        match (&self.provider_id, &self.model_id) {
            (Some(p), Some(m)) => format!("{p}/{m}"),
            (None, Some(m)) => m.clone(),
            _ => "unknown".to_string(),
        }
    }
}

/// The facts of a message part that token views need: tool calls and step-finish tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct PartInfo {
    pub id: String,
    #[serde(rename = "messageID")]
    pub message_id: String,
    #[serde(rename = "sessionID")]
    pub session_id: String,
    /// `tool` or `step-finish`.
    #[serde(rename = "type")]
    pub part_type: String,
    /// The tool's name, for tool parts.
    pub tool: Option<String>,
    /// pending / running / completed / error, for tool parts.
    pub status: Option<String>,
    pub tokens: Option<Tokens>,
    pub cost: Option<f64>,
}

/// Token usage of one group over one range, as the `aggregate` transform emits it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct Rollup {
    /// session / project / model / agent / day / all
    pub group_by: String,
    /// today / week / month / all / custom
    pub range: String,
    pub key: String,
    pub sessions: u64,
    pub messages: u64,
    /// Assistant messages.
    pub responses: u64,
    pub tokens: Tokens,
    pub total: u64,
    /// Dollars: stored by OpenCode, plus estimated from the price table where it stored none.
    pub cost: f64,
    /// The part OpenCode stored.
    pub cost_stored: f64,
    /// The part estimated from the price table.
    pub cost_priced: f64,
    /// Messages with tokens, no stored cost and no known price (counted as 0).
    pub unpriced_messages: u64,
    /// Fork copies seen (not counted above).
    pub fork_copy_messages: u64,
}

impl Rollup {
    pub fn natural_id(&self) -> String {
        format!("rollup:{}:{}:{}", self.group_by, self.range, self.key)
    }
}

/// One event from a running OpenCode server (`GET /event`), tagged with the instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct LiveEvent {
    /// The server's base URL, e.g. `http://127.0.0.1:4096`.
    pub instance: String,
    pub port: u16,
    /// OpenCode's event type (`session.status`, `message.part.updated`, …), or
    /// `instance.connected` / `instance.disconnected` from the source itself.
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(rename = "sessionID")]
    pub session_id: Option<String>,
    pub properties: serde_json::Value,
}

impl LiveEvent {
    /// The session an OpenCode event is about, wherever its kind of event keeps it.
    pub fn session_of(properties: &serde_json::Value) -> Option<String> {
        let p = properties;
        [&p["sessionID"], &p["info"]["sessionID"], &p["part"]["sessionID"]]
            .into_iter()
            .find_map(|v| v.as_str().map(str::to_string))
            .or_else(|| p["info"]["id"].as_str().filter(|id| id.starts_with("ses_")).map(str::to_string))
    }
}

/// A running OpenCode process, as the process scan sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInfo {
    /// `started`, `updated` or `exited`.
    pub change: String,
    pub pid: u32,
    pub parent: Option<u32>,
    pub name: String,
    pub cmdline: Vec<String>,
    /// `tui`, `run`, `serve`, `web`, `acp`, `lsp` or `launcher` (the node/bun wrapper).
    pub mode: String,
    pub cpu_percent: f32,
    pub memory_bytes: u64,
    pub uptime_secs: u64,
    pub cwd: Option<String>,
    /// TCP ports it listens on.
    pub ports: Vec<u16>,
}

/// A status, as the status lights and pages show it (the seed's codes and labels).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusInfo {
    pub port: u16,
    pub instance: String,
    #[serde(rename = "sessionID")]
    pub session_id: Option<String>,
    pub title: Option<String>,
    /// idle, busy, retry, pending, reasoning, using_tool, running, completed,
    /// session_completed, permission, error
    pub code: String,
    /// The Chinese label, with the tool for running/completed (`运行中: bash`).
    pub status: String,
    /// The English label (`running: bash`).
    pub label: String,
    pub tool: Option<String>,
    /// The BLE light mode: idle, busy, thinking, ai, success, alarm, error.
    pub mode: String,
    pub timestamp: String,
    /// The pending permission request (`permission` only), for replying to it.
    #[serde(rename = "permissionID", default, skip_serializing_if = "Option::is_none")]
    pub permission_id: Option<String>,
}
