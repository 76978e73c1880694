//! The traits a component implements and what the host hands it.
//!
//! - A **source** is a future that pushes events into its [`Output`] until its shutdown token
//!   fires (or its input is exhausted), then returns.
//! - A **transform** is either a [`FunctionTransform`] (one event in, zero or more out; the host
//!   drives the loop) or a [`TaskTransform`] (owns its input stream: timers, state).
//! - A **sink** is one async `run` over its [`Input`].
//!
//! Config structs implement [`SourceConfig`], [`TransformConfig`] or [`SinkConfig`] and are
//! registered with [`register_component!`](crate::register_component). `validate` must not touch
//! files or the network: it runs for `ocpipe validate`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

use crate::config::{FieldError, WhenFull};
use crate::event::{DataType, Event};
use crate::metrics::{ComponentMetrics, DropReason};
use crate::telemetry::Telemetry;
use crate::usage::Prices;

pub type RunResult = anyhow::Result<()>;
pub type ComponentFuture = BoxFuture<'static, RunResult>;

pub trait SourceConfig: Send + Sync + std::fmt::Debug {
    fn validate(&self) -> Vec<FieldError> {
        Vec::new()
    }
    /// The kinds of events it emits.
    fn outputs(&self) -> DataType;
    fn build(&self, cx: SourceContext) -> anyhow::Result<ComponentFuture>;
}

pub trait TransformConfig: Send + Sync + std::fmt::Debug {
    fn validate(&self) -> Vec<FieldError> {
        Vec::new()
    }
    /// The kinds of events it uses; the host hands it nothing else.
    fn input(&self) -> DataType;
    /// The kinds it emits when fed `input` (what its inputs emit, narrowed to [`input`](Self::input)).
    fn outputs(&self, input: DataType) -> DataType;
    fn build(&self, cx: &Context) -> anyhow::Result<Transform>;
}

/// An option that names another component of the pipeline (e.g. `targets_from = "page"`):
/// the loader checks that it exists and is of the type named, located at the option.
#[derive(Debug, Clone)]
pub struct Reference {
    pub field: crate::config::FieldPath,
    pub id: String,
    pub type_name: &'static str,
}

pub trait SinkConfig: Send + Sync + std::fmt::Debug {
    fn validate(&self) -> Vec<FieldError> {
        Vec::new()
    }
    /// The kinds of events it uses; the host hands it nothing else.
    fn input(&self) -> DataType;
    /// The other components this one's options name.
    fn references(&self) -> Vec<Reference> {
        Vec::new()
    }
    fn build(&self, cx: &Context) -> anyhow::Result<Box<dyn Sink>>;
}

pub enum Transform {
    Function(Box<dyn FunctionTransform>),
    Task(Box<dyn TaskTransform>),
}

/// A per-event transform. The host counts what goes in and out.
pub trait FunctionTransform: Send + 'static {
    fn transform(&mut self, event: Event, out: &mut Vec<Event>);
}

/// A transform that owns its input stream (for timers and state). It must flush what it holds
/// when its input ends.
pub trait TaskTransform: Send + 'static {
    fn run(self: Box<Self>, input: Input, output: Output) -> ComponentFuture;
}

pub trait Sink: Send + 'static {
    /// Consumes events until the input ends, delivering (and flushing) everything received.
    fn run(self: Box<Self>, input: Input) -> ComponentFuture;
}

/// What every component gets: its id, its counters, where its files live, and what the
/// pipeline's components share.
#[derive(Clone, Debug)]
pub struct Context {
    pub id: Arc<str>,
    pub metrics: Arc<ComponentMetrics>,
    data_root: PathBuf,
    base_dir: PathBuf,
    resources: Arc<Resources>,
}

impl Context {
    pub fn new(id: &str, data_root: PathBuf, base_dir: PathBuf) -> Self {
        Context { id: id.into(), metrics: Arc::default(), data_root, base_dir, resources: Arc::default() }
    }

    /// The same component, sharing `resources` with the rest of its pipeline.
    pub fn with_resources(mut self, resources: Arc<Resources>) -> Self {
        self.resources = resources;
        self
    }

    /// The `T` component `owner` shares with the others of the pipeline (made on first use,
    /// by whichever asks first): e.g. the push targets of a `websocket` sink, for the `mqtt`
    /// and `ble` sinks that name it in `targets_from` (the loader checks such names).
    pub fn shared<T: Shared>(&self, owner: &str) -> Arc<T> {
        let mut map = self.resources.by_owner.lock().unwrap_or_else(|e| e.into_inner());
        let any = map
            .entry((owner.to_string(), TypeId::of::<T>()))
            .or_insert_with(|| Arc::new(T::new(self.data_root.join(owner))))
            .clone();
        any.downcast::<T>().expect("keyed by its type")
    }

    /// What the pipeline tells about itself (`/metrics`, `/health`): components hand in their
    /// domain figures here, under their id.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.resources.telemetry
    }

    /// What a message without a stored cost costs (the built-in table and the pipeline's own).
    pub fn prices(&self) -> &Arc<Prices> {
        &self.resources.prices
    }

    /// The component's private state directory (`DATA_DIR/<id>`), created with mode 0700.
    pub fn data_dir(&self) -> io::Result<PathBuf> {
        let dir = self.data_root.join(&*self.id);
        create_private_dir(&dir)?;
        Ok(dir)
    }

    /// Resolves a configured path: `~/` is the home directory, relative paths are relative to
    /// the directory ocpipe was started in.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let expanded = expand_home(path);
        if expanded.is_absolute() { expanded } else { self.base_dir.join(expanded) }
    }

    /// Counts an error and logs it at warn level.
    pub fn error(&self, what: std::fmt::Arguments<'_>) {
        self.metrics.error();
        tracing::warn!(component = &*self.id, "{what}");
    }
}

/// State one component keeps for others of its pipeline, handed out by the host through
/// [`Context::shared`] so that no component reaches for another's files or a global.
pub trait Shared: Any + Send + Sync {
    /// Made once per owner; `dir` is the owner's state directory (not created).
    fn new(dir: PathBuf) -> Self;
}

/// What the components of one pipeline share: state by owner id and type, the pipeline's
/// [`Telemetry`] and its prices.
pub struct Resources {
    by_owner: Mutex<HashMap<(String, TypeId), Arc<dyn Any + Send + Sync>>>,
    pub telemetry: Arc<Telemetry>,
    /// What messages without a stored cost cost: the built-in table with the pipeline's own
    /// `[prices]` over it.
    pub prices: Arc<Prices>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { by_owner: Mutex::default(), telemetry: Arc::default(), prices: Prices::builtin() }
    }
}

impl Resources {
    pub fn with_prices(prices: Arc<Prices>) -> Self {
        Resources { prices, ..Resources::default() }
    }
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.by_owner.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "Resources({n})")
    }
}

/// The waits between tries at a far end (a broker, a collector): from `min`, doubling, up
/// to `max`, without end.
pub fn retry_delays(
    min: std::time::Duration,
    max: std::time::Duration,
) -> impl Iterator<Item = std::time::Duration> + Send + use<> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default().with_min_delay(min).with_max_delay(max).without_max_times().build()
}

pub fn expand_home(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => home_dir().join(rest),
        None if path == "~" => home_dir(),
        None => PathBuf::from(path),
    }
}

pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

pub struct SourceContext {
    pub cx: Context,
    pub out: Output,
    pub shutdown: CancellationToken,
}

/// The receiving end of a component's input buffer. Counts received events.
///
/// The buffer outlives the component reading it: a reload that rebuilds the component stops
/// this reader ([`InputStop`]) and hands the same buffer, with what is still in it, to the new
/// one.
pub struct Input {
    rx: tokio::sync::OwnedMutexGuard<mpsc::Receiver<Event>>,
    metrics: Arc<ComponentMetrics>,
    stop: InputStop,
}

/// Ends a component's input early (a reload): at once, leaving what is buffered to the
/// component's successor ([`InputStop::hand_over`]), or once the buffer is empty
/// ([`InputStop::drain`], a component removed).
#[derive(Clone, Default, Debug)]
pub struct InputStop {
    token: CancellationToken,
    drain: Arc<std::sync::atomic::AtomicBool>,
}

impl InputStop {
    pub fn hand_over(&self) {
        self.token.cancel();
    }
    pub fn drain(&self) {
        self.drain.store(true, Ordering::Release);
        self.token.cancel();
    }
}

/// A component's input buffer, kept by the runtime across rebuilds of its reader.
pub type SharedReceiver = Arc<tokio::sync::Mutex<mpsc::Receiver<Event>>>;

impl Input {
    /// An input of its own (tests, standalone runs).
    pub fn new(rx: mpsc::Receiver<Event>, metrics: Arc<ComponentMetrics>) -> Self {
        let rx = Arc::new(tokio::sync::Mutex::new(rx)).try_lock_owned().expect("a new lock is free");
        Input { rx, metrics, stop: InputStop::default() }
    }

    /// The reader of a shared buffer (waits for the previous reader to let go).
    pub async fn shared(rx: SharedReceiver, metrics: Arc<ComponentMetrics>, stop: InputStop) -> Self {
        Input { rx: rx.lock_owned().await, metrics, stop }
    }

    /// What is left to read once stopped: nothing (handed over), or what is buffered (drain).
    fn after_stop(&mut self) -> Option<Event> {
        if self.stop.drain.load(Ordering::Acquire) { self.rx.try_recv().ok() } else { None }
    }

    /// Whether the input is ending: every producer is gone (shutdown) or this reader was told
    /// to stop. What is still buffered can be read. A sink retrying a far end that is away
    /// gives up then, rather than holding the shutdown.
    pub fn ending(&self) -> bool {
        self.rx.is_closed() || self.stop.token.is_cancelled()
    }

    pub async fn recv(&mut self) -> Option<Event> {
        let ev = if self.stop.token.is_cancelled() {
            self.after_stop()
        } else {
            tokio::select! {
                biased;
                _ = self.stop.token.cancelled() => self.after_stop(),
                ev = self.rx.recv() => ev,
            }
        };
        if ev.is_some() {
            self.metrics.received(1);
        }
        ev
    }

    /// For sinks that run on their own thread.
    pub fn blocking_recv(&mut self) -> Option<Event> {
        futures::executor::block_on(self.recv())
    }

    /// Moves events that are already waiting into `batch`, up to `max` in all. Never waits.
    pub fn drain_ready(&mut self, batch: &mut Vec<Event>, max: usize) {
        if self.stop.token.is_cancelled() && !self.stop.drain.load(Ordering::Acquire) {
            return;
        }
        while batch.len() < max {
            match self.rx.try_recv() {
                Ok(ev) => {
                    self.metrics.received(1);
                    batch.push(ev);
                }
                Err(_) => break,
            }
        }
    }

    /// Waits for one event, then takes whatever else is ready (up to `max`). Returns false when
    /// the input has ended and nothing was read.
    pub async fn recv_batch(&mut self, batch: &mut Vec<Event>, max: usize) -> bool {
        match self.recv().await {
            Some(ev) => {
                batch.push(ev);
                self.drain_ready(batch, max);
                true
            }
            None => false,
        }
    }

    /// Blocking form of [`recv_batch`](Self::recv_batch).
    pub fn blocking_recv_batch(&mut self, batch: &mut Vec<Event>, max: usize) -> bool {
        match self.blocking_recv() {
            Some(ev) => {
                batch.push(ev);
                self.drain_ready(batch, max);
                true
            }
            None => false,
        }
    }
}

/// One downstream consumer of an output.
#[derive(Clone)]
pub struct Target {
    pub tx: mpsc::Sender<Event>,
    pub when_full: WhenFull,
    /// The consumer's counters: its buffer's drops count there.
    pub metrics: Arc<ComponentMetrics>,
    /// The kinds of events the consumer takes: it is handed nothing else.
    pub accepts: DataType,
    /// Where the consumer's buffer goes when a reload replaces it.
    pub moved: tokio::sync::watch::Receiver<Moved>,
}

/// Where a consumer's buffer went when a reload gave the consumer a new one (its size
/// changed). A send that finds the old buffer closed waits until what was in it has moved,
/// then goes on to the new one: nothing is lost and each producer's order holds.
#[derive(Clone, Default)]
pub enum Moved {
    /// Not moved: a closed buffer means the consumer is gone.
    #[default]
    Not,
    Moving,
    To(mpsc::WeakSender<Event>, tokio::sync::watch::Receiver<Moved>),
}

impl Moved {
    /// For a buffer that never moves.
    pub fn never() -> tokio::sync::watch::Receiver<Moved> {
        tokio::sync::watch::channel(Moved::Not).1
    }
}

/// Observers of a component's output (`ocpipe tap`). Each has its own small buffer and misses
/// events when it falls behind, so watching never slows the pipeline.
#[derive(Default)]
pub struct TapPoint {
    active: AtomicUsize,
    subscribers: std::sync::Mutex<Vec<mpsc::Sender<String>>>,
}

impl TapPoint {
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel(capacity);
        let mut subs = self.subscribers.lock().unwrap();
        subs.push(tx);
        self.active.store(subs.len(), Ordering::Release);
        rx
    }

    fn publish(&self, event: &Event) {
        if self.active.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut line = Vec::with_capacity(256);
        line.extend_from_slice(b"{\"meta\":");
        serde_json::to_writer(&mut line, &event.meta_json()).expect("in-memory write");
        line.extend_from_slice(b",\"event\":");
        event.write_json(&mut line);
        line.push(b'}');
        let line = String::from_utf8(line).expect("serde_json writes UTF-8");
        let mut subs = self.subscribers.lock().unwrap();
        subs.retain(|tx| !matches!(tx.try_send(line.clone()), Err(TrySendError::Closed(_))));
        self.active.store(subs.len(), Ordering::Release);
    }
}

/// Who a producer sends to, changed in place by a reload: each [`Output`] sharing it picks up
/// the new list before its next send.
#[derive(Default)]
pub struct Wiring {
    version: AtomicU64,
    targets: Mutex<Vec<Target>>,
    /// The instance sending through it now (a reload's successor takes it over).
    owner: AtomicU64,
}

impl Wiring {
    pub fn new(targets: Vec<Target>) -> Arc<Wiring> {
        Arc::new(Wiring { version: AtomicU64::new(0), targets: Mutex::new(targets), owner: AtomicU64::new(0) })
    }
    /// Instance `generation` sends through it from now on.
    pub fn claim(&self, generation: u64) {
        self.owner.store(generation, Ordering::Release);
    }
    /// Instance `generation` has ended: its consumers lose it as a producer, unless a
    /// successor has taken the wiring over.
    pub fn release(&self, generation: u64) {
        if self.owner.load(Ordering::Acquire) == generation {
            self.set(Vec::new());
        }
    }
    pub fn set(&self, targets: Vec<Target>) {
        *self.targets.lock().unwrap_or_else(|e| e.into_inner()) = targets;
        self.version.fetch_add(1, Ordering::AcqRel);
    }
    fn current(&self) -> (u64, Vec<Target>) {
        let targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        (self.version.load(Ordering::Acquire), targets.clone())
    }
}

/// The sending side of a component: fans each event out to every consumer.
#[derive(Clone)]
pub struct Output {
    wiring: Arc<Wiring>,
    /// The wiring's targets as of `seen`.
    targets: Vec<Target>,
    seen: u64,
    metrics: Arc<ComponentMetrics>,
    tap: Arc<TapPoint>,
}

impl Output {
    pub fn new(targets: Vec<Target>, metrics: Arc<ComponentMetrics>, tap: Arc<TapPoint>) -> Self {
        Self::wired(Wiring::new(targets), metrics, tap)
    }

    /// Sending through `wiring` (which a reload may change).
    pub fn wired(wiring: Arc<Wiring>, metrics: Arc<ComponentMetrics>, tap: Arc<TapPoint>) -> Self {
        let (seen, targets) = wiring.current();
        Output { wiring, targets, seen, metrics, tap }
    }

    /// Sends to every consumer that takes events of this kind. A `block` consumer with a full
    /// buffer makes this wait (and so slows this component); a `drop_newest` consumer with a
    /// full buffer loses the event.
    pub async fn send(&mut self, event: Event) {
        if self.wiring.version.load(Ordering::Acquire) != self.seen {
            (self.seen, self.targets) = self.wiring.current();
        }
        self.metrics.sent(1);
        self.tap.publish(&event);
        let kind = DataType::of(&event.payload);
        let mut takers = self.targets.iter().filter(|t| t.accepts.contains(kind));
        let Some(mut current) = takers.next() else {
            return;
        };
        for next in takers {
            deliver(current, event.clone()).await;
            current = next;
        }
        deliver(current, event).await;
    }

    pub async fn send_all(&mut self, events: impl IntoIterator<Item = Event>) {
        for ev in events {
            self.send(ev).await;
        }
    }
}

async fn deliver(target: &Target, event: Event) {
    match target.when_full {
        WhenFull::Block => {
            // The consumer is gone (it failed, or the shutdown deadline passed): the event is
            // not delivered, so its source must not checkpoint past it.
            match target.tx.send(event).await {
                Ok(()) => target.metrics.enqueued(),
                Err(returned) => resend(target, returned.0).await,
            }
        }
        WhenFull::DropNewest => match target.tx.try_send(event) {
            Ok(()) => target.metrics.enqueued(),
            Err(TrySendError::Full(_)) => target.metrics.dropped(DropReason::Full, 1),
            Err(TrySendError::Closed(returned)) => resend(target, returned).await,
        },
    }
}

/// The consumer's buffer is closed: a reload moved it (the event follows, after what was
/// moved), or the consumer is gone (the event fails: its source must not checkpoint past it).
async fn resend(target: &Target, mut event: Event) {
    let mut moved = target.moved.clone();
    loop {
        let next = match moved.wait_for(|m| !matches!(m, Moved::Moving)).await {
            Ok(m) => match &*m {
                Moved::To(tx, then) => tx.upgrade().map(|tx| (tx, then.clone())),
                _ => None,
            },
            Err(_) => None,
        };
        let Some((tx, then)) = next else { return event.fail() };
        match tx.send(event).await {
            Ok(()) => return target.metrics.enqueued(),
            Err(returned) => (event, moved) = (returned.0, then),
        }
    }
}
