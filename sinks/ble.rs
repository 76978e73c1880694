//! `ble`: shows each status on a Bluetooth LE status light (btleplug; BlueZ on Linux).
//! The reference (behaviour, byte format, options) is the doc comment of the config below.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use btleplug::api::{Central, CharPropFlags, Characteristic, Manager as _, Peripheral as _, ScanFilter, WriteType};
use btleplug::platform::{Adapter, Manager, Peripheral};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::component::{ComponentFuture, Context, Input, Sink, SinkConfig};
use crate::config::{FieldError, FieldPath};
use crate::event::{DataType, Payload};
use crate::metrics::DropReason;
use crate::sinks::push_targets::{self, Connection, DEFAULT_CHAR_UUID, DEFAULT_SERVICE_UUID, Overlay, PushTargets};

/// The light modes, in the order of their byte values.
pub const MODES: [&str; 7] = ["idle", "busy", "thinking", "ai", "success", "alarm", "error"];

/// The light is found by its advertised name (`device_name`, default `AI-Light`) or its
/// `address`, connected, and each status's light mode is written to the characteristic
/// `char_uuid` of service `service_uuid`. The mode comes from the seed's table (the `status`
/// transform puts it on every status; `modes` overrides it per status code):
///
/// | status code | mode | `format = "byte"` |
/// |---|---|---|
/// | idle | `idle` | `0x00` |
/// | busy | `busy` | `0x01` |
/// | retry, pending, reasoning | `thinking` | `0x02` |
/// | using_tool, running | `ai` | `0x03` |
/// | completed, session_completed | `success` | `0x04` |
/// | permission | `alarm` | `0x05` |
/// | error | `error` | `0x06` |
///
/// **Byte format.** `format = "text"` (default) writes the mode's name in ASCII, nothing else
/// (`busy` is `62 75 73 79`); `format = "byte"` writes the one byte of the table. A repeat of the
/// mode just written is not written again. Writes use write-with-response when the
/// characteristic allows it.
///
/// Each light has its own task: scanning, connecting and writing never hold up the pipeline.
/// While a light is away its modes wait in a short queue (the oldest go first when it is full);
/// on reconnect only the newest is written, so the light shows the current state. A missing
/// adapter or light is one warning (repeated only when the reason changes), retried every
/// `retry_secs`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct BleConfig {
    /// The light's advertised name. Empty (and no `address`): only the lights of `targets_from`.
    #[serde(default = "default_device_name")]
    pub device_name: String,
    /// Find the light by address (`AA:BB:CC:DD:EE:FF`) instead of by name.
    pub address: Option<String>,
    /// The light's GATT service.
    #[serde(default = "default_service")]
    pub service_uuid: String,
    /// The characteristic the mode is written to.
    #[serde(default = "default_char")]
    pub char_uuid: String,
    /// `text` (the mode's name in ASCII) or `byte` (one byte, see the table).
    #[serde(default)]
    pub format: Format,
    /// Status code -> mode, replacing the seed's mapping for those codes.
    #[serde(default)]
    pub modes: BTreeMap<String, String>,
    /// The adapter to use (`hci0`); default: the first.
    pub adapter: Option<String>,
    /// How long to scan for the light, and to wait between attempts.
    #[serde(default = "default_retry_secs")]
    pub retry_secs: u64,
    /// The id of a `websocket` sink: also drive the lights added through its API.
    pub targets_from: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Text,
    Byte,
}

fn default_device_name() -> String {
    "AI-Light".into()
}
fn default_service() -> String {
    DEFAULT_SERVICE_UUID.into()
}
fn default_char() -> String {
    DEFAULT_CHAR_UUID.into()
}
fn default_retry_secs() -> u64 {
    5
}

const EXAMPLE: &str = r#"device_name = "AI-Light"
format = "text"
modes = { completed = "ai" }
"#;

crate::register_component!(
    sink BleConfig,
    "ble",
    "Shows statuses on a Bluetooth LE light: the status's mode written to a GATT characteristic, reconnecting by itself",
    EXAMPLE
);

/// The bytes written for a mode.
pub fn encode(format: Format, mode: &str) -> Vec<u8> {
    match format {
        Format::Text => mode.as_bytes().to_vec(),
        Format::Byte => vec![MODES.iter().position(|m| *m == mode).unwrap_or(0) as u8],
    }
}

impl SinkConfig for BleConfig {
    fn input(&self) -> DataType {
        DataType::STATUS
    }
    fn references(&self) -> Vec<crate::component::Reference> {
        push_targets::references(self.targets_from.as_deref())
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.device_name.is_empty()
            && self.address.as_deref().is_none_or(str::is_empty)
            && self.targets_from.is_none()
        {
            errs.push(
                FieldError::new(
                    FieldPath::key("device_name"),
                    "no light: set `device_name`, `address` or `targets_from`",
                )
                .help("e.g. device_name = \"AI-Light\""),
            );
        }
        for (key, v) in [("service_uuid", &self.service_uuid), ("char_uuid", &self.char_uuid)] {
            if Uuid::parse_str(v).is_err() {
                errs.push(
                    FieldError::new(FieldPath::key(key), format!("`{v}` is not a UUID")).help("8-4-4-4-12 hex digits"),
                );
            }
        }
        for (code, mode) in &self.modes {
            if !MODES.contains(&mode.as_str()) {
                errs.push(
                    FieldError::new(FieldPath::key("modes").child(code), format!("`{mode}` is not a light mode"))
                        .help(format!("one of {}", MODES.join(", "))),
                );
            }
        }
        errs
    }

    fn build(&self, cx: &Context) -> anyhow::Result<Box<dyn Sink>> {
        let overlay = self.targets_from.as_ref().map(|id| Overlay::new(cx.shared::<PushTargets>(id)));
        Ok(Box::new(BleSink { cfg: self.clone(), overlay, lights: HashMap::new(), cx: cx.clone() }))
    }
}

/// Which light, and where its mode goes.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    name: String,
    address: Option<String>,
    service: Uuid,
    characteristic: Uuid,
}

impl Target {
    fn label(&self) -> String {
        self.address.clone().filter(|a| !a.is_empty()).unwrap_or_else(|| self.name.clone())
    }
}

/// Modes waiting for a light; when full, the oldest go.
#[derive(Default)]
struct Queue {
    items: std::sync::Mutex<VecDeque<Vec<u8>>>,
    ready: Notify,
}

const QUEUE: usize = 64;

impl Queue {
    /// Returns whether an older mode had to make room.
    fn push(&self, bytes: Vec<u8>) -> bool {
        let mut q = self.items.lock().unwrap();
        let full = q.len() >= QUEUE;
        if full {
            q.pop_front();
        }
        q.push_back(bytes);
        drop(q);
        self.ready.notify_one();
        full
    }
    fn pop(&self) -> Option<Vec<u8>> {
        self.items.lock().unwrap().pop_front()
    }
    fn push_front(&self, bytes: Vec<u8>) {
        self.items.lock().unwrap().push_front(bytes);
    }
    /// Keeps only the newest.
    fn newest(&self) -> Option<Vec<u8>> {
        let mut q = self.items.lock().unwrap();
        let last = q.pop_back();
        q.clear();
        last
    }
    fn is_empty(&self) -> bool {
        self.items.lock().unwrap().is_empty()
    }
}

struct Light {
    target: Target,
    queue: Arc<Queue>,
    last: Option<Vec<u8>>,
    connection: Connection,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

struct BleSink {
    cfg: BleConfig,
    overlay: Option<Overlay>,
    lights: HashMap<u64, Light>,
    cx: Context,
}

impl Sink for BleSink {
    fn run(self: Box<Self>, input: Input) -> ComponentFuture {
        Box::pin(self.run_inner(input))
    }
}

impl BleSink {
    async fn run_inner(mut self, mut input: Input) -> anyhow::Result<()> {
        if !self.cfg.device_name.is_empty() || self.cfg.address.as_deref().is_some_and(|a| !a.is_empty()) {
            let t = Target {
                name: self.cfg.device_name.clone(),
                address: self.cfg.address.clone().filter(|a| !a.is_empty()),
                service: Uuid::parse_str(&self.cfg.service_uuid)?,
                characteristic: Uuid::parse_str(&self.cfg.char_uuid)?,
            };
            self.start(0, t);
        }
        self.reload();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = input.recv() => match ev {
                    Some(ev) => match &ev.payload {
                        Payload::Status(s) => {
                            let mode = self.cfg.modes.get(&s.code).map_or(s.mode.as_str(), String::as_str);
                            self.show(encode(self.cfg.format, mode));
                        }
                        _ => self.cx.metrics.dropped(DropReason::Intentional, 1),
                    },
                    None => break,
                },
                _ = tick.tick() => self.reload(),
            }
        }
        for (_, light) in self.lights.drain() {
            finish(light).await;
        }
        Ok(())
    }

    fn show(&mut self, bytes: Vec<u8>) {
        if self.lights.is_empty() {
            self.cx.metrics.dropped(DropReason::Intentional, 1);
            return;
        }
        for light in self.lights.values_mut() {
            if light.last.as_ref() == Some(&bytes) {
                continue;
            }
            light.last = Some(bytes.clone());
            if light.queue.push(bytes.clone()) {
                self.cx.metrics.dropped(DropReason::Full, 1);
            }
        }
        self.cx.metrics.sent(1);
    }

    fn reload(&mut self) {
        let Some(targets) = self.overlay.as_mut().and_then(|o| o.poll(&self.cx)) else { return };
        let mut wanted = HashMap::new();
        for b in targets.ble.into_iter().filter(|b| b.enabled) {
            match b.validate() {
                Ok((service, characteristic)) => {
                    wanted.insert(b.id, Target { name: b.device_name, address: None, service, characteristic });
                }
                Err(e) => self.cx.error(format_args!("push target ble {}: {e}", b.id)),
            }
        }
        let (stop, start) = push_targets::plan(&self.lights, |l| &l.target, wanted);
        for k in stop {
            self.lights.remove(&k).expect("running").stop.cancel();
        }
        for (k, t) in start {
            self.start(k, t);
        }
    }

    fn start(&mut self, key: u64, target: Target) {
        let queue = Arc::new(Queue::default());
        let listed_in = self.overlay.as_ref().filter(|_| key != 0).map(Overlay::shared);
        let connection = Connection::new(listed_in, "ble", key);
        let stop = CancellationToken::new();
        let driver = Driver {
            target: target.clone(),
            adapter: self.cfg.adapter.clone(),
            retry: Duration::from_secs(self.cfg.retry_secs.max(1)),
            queue: queue.clone(),
            connection: connection.clone(),
            stop: stop.clone(),
            cx: self.cx.clone(),
        };
        let task = tokio::spawn(driver.run());
        self.lights.insert(key, Light { target, queue, last: None, connection, stop, task });
    }
}

/// Lets a connected light take what is queued (briefly), then stops its task.
async fn finish(light: Light) {
    if light.connection.is_up() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !light.queue.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    light.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), light.task).await;
}

/// One light's connection: find, connect, write; on any failure start over after `retry`.
struct Driver {
    target: Target,
    adapter: Option<String>,
    retry: Duration,
    queue: Arc<Queue>,
    connection: Connection,
    stop: CancellationToken,
    cx: Context,
}

/// Every Bluetooth call gets this long.
const CALL: Duration = Duration::from_secs(10);

async fn within<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(CALL, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::anyhow!("{what}: {e}")),
        Err(_) => Err(anyhow::anyhow!("{what}: no answer in {} s", CALL.as_secs())),
    }
}

impl Driver {
    async fn run(self) {
        let label = self.target.label();
        let mut warned: Option<String> = None;
        // One D-Bus connection for the driver's life (each one lives on in a background task).
        let mut manager: Option<Manager> = None;
        while !self.stop.is_cancelled() {
            let attempt = tokio::select! {
                _ = self.stop.cancelled() => break,
                r = self.connect(&mut manager) => r,
            };
            match attempt {
                Ok((peripheral, ch)) => {
                    tracing::info!(component = &*self.cx.id, light = %label, "connected to the light");
                    warned = None;
                    self.connection.set(true, &"connected");
                    let outcome = self.serve(&peripheral, &ch).await;
                    self.connection.set(false, &"connection lost");
                    let _ = tokio::time::timeout(Duration::from_secs(2), peripheral.disconnect()).await;
                    match outcome {
                        Ok(()) => break,
                        Err(e) => tracing::warn!(component = &*self.cx.id, light = %label, "{e}; looking for it again"),
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.connection.set(false, &msg);
                    if warned.as_ref() != Some(&msg) {
                        tracing::warn!(
                            component = &*self.cx.id,
                            light = %label,
                            "{msg}; retrying every {} s (statuses are not held up)",
                            self.retry.as_secs()
                        );
                        warned = Some(msg);
                    }
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(self.retry) => {}
            }
        }
        self.connection.close();
    }

    async fn adapter(&self, manager: &mut Option<Manager>) -> anyhow::Result<Adapter> {
        if manager.is_none() {
            *manager = Some(within("Bluetooth (BlueZ on the system D-Bus) is not available", Manager::new()).await?);
        }
        let adapters = match within("listing Bluetooth adapters", manager.as_ref().expect("set").adapters()).await {
            Ok(a) => a,
            Err(e) => {
                // BlueZ may have restarted: connect afresh next time.
                *manager = None;
                return Err(e);
            }
        };
        for a in adapters {
            let info = within("reading the adapter", a.adapter_info()).await.unwrap_or_default();
            if self.adapter.as_deref().is_none_or(|want| info.split_whitespace().next() == Some(want)) {
                return Ok(a);
            }
        }
        match &self.adapter {
            Some(want) => anyhow::bail!("no Bluetooth adapter `{want}`"),
            None => anyhow::bail!("no Bluetooth adapter"),
        }
    }

    async fn find(&self, adapter: &Adapter) -> anyhow::Result<Peripheral> {
        let _ = within("starting a scan", adapter.start_scan(ScanFilter::default())).await;
        let until = tokio::time::Instant::now() + self.retry;
        let found = 'scan: loop {
            for p in within("listing devices", adapter.peripherals()).await? {
                let props = within("reading a device", p.properties()).await.ok().flatten();
                let name = props.as_ref().and_then(|p| p.local_name.clone());
                let hit = match &self.target.address {
                    Some(a) => p.address().to_string().eq_ignore_ascii_case(a),
                    None => name.as_deref() == Some(self.target.name.as_str()),
                };
                if hit {
                    break 'scan Some(p);
                }
            }
            if tokio::time::Instant::now() >= until {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let _ = within("stopping the scan", adapter.stop_scan()).await;
        found.ok_or_else(|| anyhow::anyhow!("light not found (scanned {} s)", self.retry.as_secs()))
    }

    async fn connect(&self, manager: &mut Option<Manager>) -> anyhow::Result<(Peripheral, Characteristic)> {
        let adapter = self.adapter(manager).await?;
        let p = self.find(&adapter).await?;
        if !within("checking the connection", p.is_connected()).await? {
            within("connecting", p.connect()).await?;
        }
        within("discovering services", p.discover_services()).await?;
        let ch = p
            .characteristics()
            .into_iter()
            .find(|c| c.uuid == self.target.characteristic && c.service_uuid == self.target.service)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the light has no characteristic {} in service {}",
                    self.target.characteristic,
                    self.target.service
                )
            })?;
        Ok((p, ch))
    }

    /// Writes modes as they come until stopped (Ok) or the light fails (Err).
    async fn serve(&self, p: &Peripheral, ch: &Characteristic) -> anyhow::Result<()> {
        let kind = if ch.properties.contains(CharPropFlags::WRITE) {
            WriteType::WithResponse
        } else {
            WriteType::WithoutResponse
        };
        // After a (re)connect only the newest mode matters.
        if let Some(newest) = self.queue.newest() {
            self.queue.push_front(newest);
        }
        loop {
            while let Some(bytes) = self.queue.pop() {
                if let Err(e) = within("writing the mode", p.write(ch, &bytes, kind)).await {
                    self.queue.push_front(bytes);
                    return Err(e);
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                _ = self.queue.ready.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    if !within("checking the connection", p.is_connected()).await.unwrap_or(false) {
                        anyhow::bail!("the light went away");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Kind;
    use crate::testing;

    #[test]
    fn the_byte_format_is_the_documented_one() {
        assert_eq!(encode(Format::Text, "busy"), b"busy");
        assert_eq!(encode(Format::Text, "alarm"), [0x61, 0x6c, 0x61, 0x72, 0x6d]);
        let bytes: Vec<u8> = MODES.iter().flat_map(|m| encode(Format::Byte, m)).collect();
        assert_eq!(bytes, [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn config_errors_name_the_option() {
        let errs =
            testing::parse(Kind::Sink, "ble", "char_uuid = \"nope\"\nmodes = { permission = \"blink\" }").unwrap_err();
        let paths: Vec<String> = errs.iter().map(|e| e.path.to_string()).collect();
        assert_eq!(paths, ["char_uuid", "modes.permission"], "{errs:?}");
        let errs = testing::parse(Kind::Sink, "ble", "device_name = \"\"").unwrap_err();
        assert!(errs[0].message.contains("no light"), "{errs:?}");
    }

    #[test]
    fn a_full_queue_keeps_the_newest() {
        let q = Queue::default();
        for i in 0..(QUEUE + 3) {
            q.push(vec![i as u8]);
        }
        assert_eq!(q.pop(), Some(vec![3]));
        assert_eq!(q.newest(), Some(vec![(QUEUE + 2) as u8]));
        assert!(q.is_empty());
    }
}
