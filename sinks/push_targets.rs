//! `push-targets.toml`: the MQTT brokers and BLE lights added at run time through the status
//! API (`websocket` sink, `/api/mqtt` and `/api/ble`). The `mqtt` and `ble` sinks read it with
//! `targets_from = "<websocket sink id>"` and pick up changes while running.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::component::{Context, Shared};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mqtt {
    pub id: u64,
    pub broker: String,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub topic: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ble {
    pub id: u64,
    pub device_name: String,
    pub service_uuid: String,
    pub char_uuid: String,
    pub enabled: bool,
}

pub const DEFAULT_SERVICE_UUID: &str = "b8b7e001-7a6b-4f4f-9a8b-11c0ffee0001";
pub const DEFAULT_CHAR_UUID: &str = "b8b7e002-7a6b-4f4f-9a8b-11c0ffee0001";

/// `push-targets.toml`: `[[mqtt]]` and `[[ble]]` tables.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Targets {
    #[serde(default)]
    pub mqtt: Vec<Mqtt>,
    #[serde(default)]
    pub ble: Vec<Ble>,
}

/// Checks `tcp://`, `mqtt://` or `mqtts://host:port` and returns (tls, host, port).
pub fn parse_broker(b: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(r) = b.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = b.strip_prefix("tcp://").or_else(|| b.strip_prefix("mqtt://")) {
        (false, r)
    } else {
        return Err(format!("broker `{b}` must be tcp://, mqtt:// or mqtts://host:port"));
    };
    match rest.trim_end_matches('/').rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => match p.parse::<u16>() {
            Ok(port) => Ok((tls, h.trim_matches(['[', ']']).to_string(), port)),
            Err(_) => Err(format!("broker `{b}`: `{p}` is not a port")),
        },
        _ => Err(format!("broker `{b}` must be tcp://, mqtt:// or mqtts://host:port")),
    }
}

impl Mqtt {
    /// Whether the `mqtt` sink can use this target: the one check the status API and the sink
    /// both make, so the API never accepts what the sink then refuses.
    pub fn validate(&self) -> Result<(), String> {
        parse_broker(&self.broker)?;
        crate::template::TopicTemplate::parse(&self.topic).map_err(|e| format!("topic: {}", e.message))?;
        if self.client_id.trim().is_empty() {
            return Err("client_id is empty".into());
        }
        Ok(())
    }
}

impl Ble {
    /// Whether the `ble` sink can use this light (and its service and characteristic UUIDs).
    pub fn validate(&self) -> Result<(uuid::Uuid, uuid::Uuid), String> {
        if self.device_name.trim().is_empty() {
            return Err("device_name is empty".into());
        }
        let uuid = |name: &str, v: &str| {
            uuid::Uuid::parse_str(v).map_err(|e| format!("{name} `{v}` is not a UUID (8-4-4-4-12 hex digits): {e}"))
        };
        Ok((uuid("service_uuid", &self.service_uuid)?, uuid("char_uuid", &self.char_uuid)?))
    }
}

impl Targets {
    /// Reads the file; a missing file is an empty list.
    pub fn load(path: &Path) -> anyhow::Result<Targets> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Targets::default()),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
        }
    }
}

/// What `targets_from` names: the `websocket` sink whose status API keeps the targets (the
/// loader checks it exists).
pub fn references(targets_from: Option<&str>) -> Vec<crate::component::Reference> {
    targets_from
        .map(|id| crate::component::Reference {
            field: crate::config::FieldPath::key("targets_from"),
            id: id.to_string(),
            type_name: "websocket",
        })
        .into_iter()
        .collect()
}

/// The file name inside the websocket sink's data directory.
pub const FILE_NAME: &str = "push-targets.toml";

/// What a `websocket` sink shares with the `mqtt` and `ble` sinks that name it in
/// `targets_from`: the file its status API keeps the targets in, and how each target's link is
/// doing (the sinks report, the API shows). Handed out by the host: `cx.shared::<PushTargets>(id)`.
#[derive(Debug)]
pub struct PushTargets {
    file: PathBuf,
    links: Mutex<HashMap<(&'static str, u64), LinkState>>,
}

impl Shared for PushTargets {
    fn new(dir: PathBuf) -> Self {
        PushTargets { file: dir.join(FILE_NAME), links: Mutex::default() }
    }
}

impl PushTargets {
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The state of target `id` of `kind` (`mqtt` or `ble`), when a sink drives it.
    pub fn link(&self, kind: &'static str, id: u64) -> Option<LinkState> {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).get(&(kind, id)).cloned()
    }

    fn set_link(&self, kind: &'static str, id: u64, state: Option<LinkState>) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        match state {
            Some(s) => links.insert((kind, id), s),
            None => links.remove(&(kind, id)),
        };
    }
}

/// Watches the targets file: [`Overlay::poll`] returns the new contents after each change.
pub struct Overlay {
    shared: Arc<PushTargets>,
    seen: Option<Option<(SystemTime, u64)>>,
}

impl Overlay {
    pub fn new(shared: Arc<PushTargets>) -> Overlay {
        Overlay { shared, seen: None }
    }

    pub fn shared(&self) -> &Arc<PushTargets> {
        &self.shared
    }

    /// The targets, when the file changed (or appeared, or went away) since the last call. A
    /// file that does not parse is reported on `cx` and ignored.
    pub fn poll(&mut self, cx: &Context) -> Option<Targets> {
        let path = self.shared.file();
        let mtime = std::fs::metadata(path).and_then(|m| Ok((m.modified()?, m.len()))).ok();
        if self.seen == Some(mtime) {
            return None;
        }
        self.seen = Some(mtime);
        match Targets::load(path) {
            Ok(t) => Some(t),
            Err(e) => {
                cx.error(format_args!("push targets not applied: {e}"));
                None
            }
        }
    }
}

/// What to stop and what to start so that the running workers (by target id) match `wanted`.
/// Id 0 is the target of the pipeline's own config and is left alone.
pub fn plan<W, T: PartialEq>(
    running: &HashMap<u64, W>,
    target: impl Fn(&W) -> &T,
    wanted: HashMap<u64, T>,
) -> (Vec<u64>, Vec<(u64, T)>) {
    let stop = running.iter().filter(|(k, w)| **k != 0 && wanted.get(k) != Some(target(w))).map(|(k, _)| *k).collect();
    let start = wanted.into_iter().filter(|(k, t)| *k != 0 && running.get(k).is_none_or(|w| target(w) != t)).collect();
    (stop, start)
}

/// How the link to one push target is doing, as its sink last saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkState {
    pub connected: bool,
    /// `connected`, or why not (the last connection error), or `connecting`.
    pub detail: String,
}

/// Whether a push target is connected: shared by the task driving it and its sink, and, for a
/// target from the targets file, reported to the status API (`kind` is `mqtt` or `ble`).
#[derive(Debug, Clone)]
pub struct Connection {
    up: Arc<AtomicBool>,
    link: Option<(Arc<PushTargets>, &'static str, u64)>,
}

impl Connection {
    /// `listed_in` is where the target came from (none for the pipeline's own target).
    pub fn new(listed_in: Option<&Arc<PushTargets>>, kind: &'static str, id: u64) -> Connection {
        let c = Connection { up: Arc::default(), link: listed_in.map(|t| (t.clone(), kind, id)) };
        c.set(false, &"connecting");
        c
    }

    pub fn set(&self, connected: bool, detail: &dyn std::fmt::Display) {
        self.up.store(connected, Ordering::Release);
        if let Some((targets, kind, id)) = &self.link {
            targets.set_link(kind, *id, Some(LinkState { connected, detail: detail.to_string() }));
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The driver is done: not connected, and the status API forgets the target.
    pub fn close(&self) {
        self.up.store(false, Ordering::Release);
        if let Some((targets, kind, id)) = &self.link {
            targets.set_link(kind, *id, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_need_a_scheme_host_and_port() {
        assert_eq!(parse_broker("tcp://127.0.0.1:1883").unwrap(), (false, "127.0.0.1".into(), 1883));
        assert_eq!(parse_broker("mqtts://broker.local:8883").unwrap(), (true, "broker.local".into(), 8883));
        assert!(parse_broker("127.0.0.1:1883").is_err());
        assert!(parse_broker("tcp://:1883").is_err());
        assert!(parse_broker("tcp://h:x").unwrap_err().contains("not a port"));
    }

    #[test]
    fn plan_starts_new_and_changed_targets_and_stops_the_rest() {
        let running: HashMap<u64, &str> = [(0, "config"), (1, "a"), (2, "b"), (3, "c")].into();
        let wanted: HashMap<u64, &str> = [(1, "a"), (2, "b2"), (4, "d")].into();
        let (mut stop, mut start) = plan(&running, |w| w, wanted);
        stop.sort();
        start.sort();
        assert_eq!(stop, [2, 3]);
        assert_eq!(start, [(2, "b2"), (4, "d")]);
    }
}
