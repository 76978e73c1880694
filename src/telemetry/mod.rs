//! What a running pipeline tells about itself: every component's counters and health, the
//! process's own figures, and the domain figures components hand in (token usage from a rollup,
//! the live status of OpenCode instances and sessions). `encode.rs` turns them into Prometheus
//! text; `server.rs` serves `/metrics` and `/health` (the top-level `api` option, and any
//! component's own server through [`routes`]).
//!
//! Components write here through [`Context::telemetry`](crate::component::Context::telemetry),
//! keyed by their id, so the host names none of them; a component removed by a reload takes its
//! figures with it ([`Telemetry::forget`]).

mod encode;
mod server;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::{Instant, SystemTime};

use serde::Deserialize;

use crate::event::{StatusInfo, Tokens};
use crate::runtime::Handles;

pub use server::{ApiConfig, names_loopback, routes, serve};

/// Token usage of one (provider, model, agent, project): the label set of `ocpipe_tokens_total`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageRow {
    pub provider: String,
    pub model: String,
    pub agent: String,
    pub project: String,
    pub messages: u64,
    pub tokens: Tokens,
    /// Dollars, by where each message's cost came from.
    pub cost: CostBySource,
}

/// A cost split by where it came from: OpenCode stored it, or a price table gave it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, serde::Serialize)]
pub struct CostBySource {
    pub stored: f64,
    pub priced: f64,
}

/// The live status of the OpenCode instances one component follows.
#[derive(Debug, Default)]
struct LiveBoard {
    /// instance -> session -> its status code (sessions at rest are left out)
    instances: BTreeMap<String, BTreeMap<String, String>>,
}

/// Codes of a session at rest: not kept (so the sessions listed are the working ones).
fn at_rest(code: &str) -> bool {
    matches!(code, "idle" | "session_completed")
}

/// Shared by the components of a pipeline (and kept across reloads).
pub struct Telemetry {
    handles: RwLock<Handles>,
    usage: Mutex<HashMap<String, Vec<UsageRow>>>,
    live: Mutex<HashMap<String, LiveBoard>>,
    started: Instant,
    started_at: SystemTime,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("started", &self.started).finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            handles: RwLock::default(),
            usage: Mutex::default(),
            live: Mutex::default(),
            started: Instant::now(),
            started_at: SystemTime::now(),
        }
    }
}

impl Telemetry {
    /// The components running now (set by the runtime when it builds or reloads).
    pub fn set_handles(&self, handles: Handles) {
        *self.handles.write().unwrap_or_else(|e| e.into_inner()) = handles;
    }

    pub fn handles(&self) -> Handles {
        self.handles.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A component's current token usage, all rows at once (replacing what it gave before).
    pub fn set_usage(&self, component: &str, rows: Vec<UsageRow>) {
        self.usage.lock().unwrap_or_else(|e| e.into_inner()).insert(component.to_string(), rows);
    }

    /// A status a component worked out: kept while the session works, dropped when it rests.
    pub fn set_status(&self, component: &str, s: &StatusInfo) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let sessions = live.entry(component.to_string()).or_default().instances.entry(s.instance.clone()).or_default();
        let session = s.session_id.clone().unwrap_or_default();
        if at_rest(&s.code) {
            sessions.remove(&session);
        } else {
            sessions.insert(session, s.code.clone());
        }
    }

    /// An instance a component followed is gone (or connected: known, with nothing working yet).
    pub fn instance(&self, component: &str, instance: &str, up: bool) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let board = live.entry(component.to_string()).or_default();
        if up {
            board.instances.entry(instance.to_string()).or_default();
        } else {
            board.instances.remove(instance);
        }
    }

    /// Drops what a component handed in (it was removed by a reload).
    pub fn forget(&self, component: &str) {
        self.usage.lock().unwrap_or_else(|e| e.into_inner()).remove(component);
        self.live.lock().unwrap_or_else(|e| e.into_inner()).remove(component);
    }

    /// Every component's state: healthy when each is running.
    pub fn health(&self) -> (bool, Vec<serde_json::Value>) {
        let handles = self.handles();
        let mut ok = !handles.components.is_empty();
        let list = handles
            .components
            .iter()
            .map(|c| {
                let state = c.metrics.state();
                ok &= state == crate::metrics::RunState::Running;
                serde_json::json!({
                    "component_id": c.id, "component_kind": c.kind.to_string(),
                    "component_type": c.type_name, "state": state.name(),
                })
            })
            .collect();
        (ok, list)
    }
}
