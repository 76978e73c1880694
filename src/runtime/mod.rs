//! Builds a [`Pipeline`] into running tasks and drives it to the end, reloading it in place.
//!
//! Every transform and sink owns one bounded input buffer (kept across rebuilds of its reader,
//! see `slot.rs`); every producer sends through a [`Wiring`](crate::component::Wiring) that
//! lists its consumers. Shutdown only cancels sources: as each producer finishes, its wiring is
//! emptied, so each consumer's input ends after it has drained, and the end ripples down the
//! graph. A deadline bounds the wait and names the components still running. `reload.rs`
//! rebuilds only the components whose configuration changed.

mod reload;
mod slot;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::component::{Resources, TapPoint};
use crate::config::Pipeline;
use crate::metrics::{ComponentMetrics, MetricsSnapshot, RunState};
use crate::registry::Kind;
use crate::telemetry::Telemetry;

pub use reload::Reload;
use slot::{Slot, Starting};

#[derive(Clone)]
pub struct RunOptions {
    /// Root of the components' state directories.
    pub data_dir: PathBuf,
    /// Where relative paths in component configs resolve.
    pub base_dir: PathBuf,
}

/// Per-component handles for observers (`tap`, metrics) while the pipeline runs.
#[derive(Clone, Default)]
pub struct Handles {
    pub components: Vec<ComponentHandle>,
}

#[derive(Clone)]
pub struct ComponentHandle {
    pub id: String,
    pub kind: Kind,
    pub type_name: &'static str,
    pub metrics: Arc<ComponentMetrics>,
    pub tap: Arc<TapPoint>,
    /// The input buffer's capacity (0 for a source, which has none).
    pub buffer_capacity: usize,
}

impl Handles {
    pub fn get(&self, id: &str) -> Option<&ComponentHandle> {
        self.components.iter().find(|c| c.id == id)
    }
    pub fn snapshot(&self) -> Vec<(String, Kind, &'static str, MetricsSnapshot)> {
        self.components.iter().map(|c| (c.id.clone(), c.kind, c.type_name, c.metrics.snapshot())).collect()
    }
}

/// How a run ended.
#[derive(Debug, Default)]
pub struct Summary {
    pub metrics: Vec<(String, Kind, &'static str, MetricsSnapshot)>,
    /// Components that returned an error.
    pub failed: Vec<(String, String)>,
    /// Components still running when the shutdown deadline passed.
    pub timed_out: Vec<String>,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.timed_out.is_empty()
    }
    pub fn get(&self, id: &str) -> Option<MetricsSnapshot> {
        self.metrics.iter().find(|m| m.0 == id).map(|m| m.3)
    }
}

type Task = futures::future::BoxFuture<'static, anyhow::Result<()>>;

/// What a finished component task reports: its id, which instance it was, how it ended.
type Joined = (String, u64, anyhow::Result<()>);

/// A built pipeline, ready to run.
pub struct Topology {
    slots: Vec<Slot>,
    /// Built instances waiting to be spawned.
    starting: Vec<Starting>,
    resources: Arc<Resources>,
    opts: RunOptions,
    /// Cancelled to stop the sources (shutdown, or a component failed); each source has a
    /// child token of its own, for a reload.
    sources_token: CancellationToken,
    shutdown_timeout: Duration,
    /// The pipeline-wide options the running graph was built with (to tell what a reload
    /// cannot change in place).
    top: reload::TopLevel,
    /// Instances started so far (each gets the next number).
    generation: u64,
    /// Components that returned an error (or could not be started again).
    failed: Vec<(String, String)>,
    /// Which instance each spawned task is, to name one that panicked.
    tasks: std::collections::HashMap<tokio::task::Id, (String, u64)>,
}

impl Topology {
    /// Builds every component, sources included, before anything runs. All build errors are
    /// reported together.
    pub fn build(pipeline: Pipeline, opts: &RunOptions) -> anyhow::Result<Topology> {
        let prices = match pipeline.prices.is_empty() {
            true => crate::usage::Prices::builtin(),
            false => Arc::new(crate::usage::Prices::builtin().with(&pipeline.prices)),
        };
        let resources = Arc::new(Resources::with_prices(prices));
        let mut t = Topology {
            slots: Vec::new(),
            starting: Vec::new(),
            resources,
            opts: opts.clone(),
            sources_token: CancellationToken::new(),
            shutdown_timeout: pipeline.shutdown_timeout,
            top: reload::TopLevel::of(&pipeline),
            generation: 0,
            failed: Vec::new(),
            tasks: std::collections::HashMap::new(),
        };
        for def in pipeline.components {
            let slot = Slot::new(def, &t.resources, &t.opts, None);
            t.slots.push(slot);
        }
        // Strong senders until every producer holds its own.
        t.rewire();
        t.release_inputs();
        let mut errors = Vec::new();
        let mut built = Vec::new();
        for slot in &t.slots {
            match slot.build(&t.sources_token) {
                Ok(b) => built.push(b),
                Err(e) => errors.push(format!("{}: {e:#}", slot.describe())),
            }
        }
        if !errors.is_empty() {
            return Err(anyhow!("could not build the pipeline:\n  {}", errors.join("\n  ")));
        }
        for (i, b) in built.into_iter().enumerate() {
            t.generation += 1;
            let starting = t.slots[i].start(b, t.generation);
            t.starting.push(starting);
        }
        t.publish_handles();
        Ok(t)
    }

    pub fn handles(&self) -> Handles {
        Handles { components: self.slots.iter().map(|s| s.handle.clone()).collect() }
    }

    /// What `/metrics`, `/health` and the control socket read.
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.resources.telemetry.clone()
    }

    fn publish_handles(&self) {
        self.resources.telemetry.set_handles(self.handles());
    }

    fn slot(&self, id: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.def.id == id)
    }

    /// Strong senders to every input buffer still open, so none closes while producers are
    /// changed; dropped when the change is done.
    fn hold_inputs(&self) -> Vec<mpsc::Sender<crate::event::Event>> {
        self.slots.iter().filter_map(|s| s.inbox.as_ref()?.sender()).collect()
    }

    /// New buffers are held open by their producers from now on.
    fn release_inputs(&mut self) {
        for inbox in self.slots.iter_mut().filter_map(|s| s.inbox.as_mut()) {
            inbox.release();
        }
    }

    /// Points every live producer at the consumers that name it.
    fn rewire(&self) {
        for producer in self.slots.iter().filter(|s| s.wiring.is_some() && s.alive()) {
            let targets = self
                .slots
                .iter()
                .filter(|c| c.def.inputs.contains(&producer.def.id))
                .filter_map(|c| c.target())
                .collect();
            producer.wiring.as_ref().expect("filtered").set(targets);
        }
    }

    /// Runs until every source has finished (or `shutdown` fires) and everything downstream has
    /// drained, or the shutdown deadline passes.
    pub async fn run(self, shutdown: CancellationToken) -> Summary {
        self.run_reloading(shutdown, None).await
    }

    /// [`run`](Self::run), taking reloads from `reloads` while it runs (`ocpipe run --watch`,
    /// SIGHUP).
    pub async fn run_reloading(
        mut self,
        shutdown: CancellationToken,
        mut reloads: Option<mpsc::Receiver<Reload>>,
    ) -> Summary {
        // Memory freed after a burst (a backfill, a folder of traces) goes back to the system.
        let trimmer = tokio::spawn(async {
            let mut every = tokio::time::interval(TRIM_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                let _ = tokio::task::spawn_blocking(crate::memory::trim).await;
            }
        });
        let mut set: JoinSet<Joined> = JoinSet::new();
        self.spawn_starting(&mut set);

        let mut timed_out = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        let every = Duration::from_secs(5);
        // Created when the deadline is set, so no ticks pile up before it.
        let mut report: Option<tokio::time::Interval> = None;
        loop {
            if set.is_empty() {
                break;
            }
            let wait_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let next_reload = async {
                match reloads.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                joined = set.join_next_with_id() => match joined {
                    Some(Ok((task, (id, generation, result)))) => {
                        self.tasks.remove(&task);
                        self.finished(&id, generation, result);
                    }
                    Some(Err(join_error)) => {
                        let (id, generation) =
                            self.tasks.remove(&join_error.id()).unwrap_or_else(|| ("?".into(), 0));
                        let why = if join_error.is_panic() { "panicked" } else { "was aborted" };
                        self.finished(&id, generation, Err(anyhow!("its task {why}")));
                    }
                    None => break,
                },
                _ = shutdown.cancelled(), if deadline.is_none() => {
                    self.sources_token.cancel();
                    tracing::info!("shutting down: sources stop, the rest drains (deadline {:?})", self.shutdown_timeout);
                    deadline = Some(tokio::time::Instant::now() + self.shutdown_timeout);
                }
                request = next_reload, if deadline.is_none() && !self.sources_token.is_cancelled() => match request {
                    Some(Reload { pipeline, reply }) => {
                        let outcome = self.reload(*pipeline, &mut set).await;
                        self.spawn_starting(&mut set);
                        let _ = reply.send(outcome);
                    }
                    None => reloads = None,
                },
                _ = async { report.as_mut().expect("set with the deadline").tick().await }, if report.is_some() => {
                    tracing::info!("still draining: {}", self.running().join(", "));
                }
                _ = wait_deadline => {
                    let running = self.running();
                    tracing::error!("shutdown deadline of {:?} passed; giving up on: {}", self.shutdown_timeout, running.join(", "));
                    timed_out = running;
                    set.abort_all();
                    break;
                }
            }
            if self.sources_token.is_cancelled() && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + self.shutdown_timeout);
            }
            if deadline.is_some() && report.is_none() {
                let mut r = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                r.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                report = Some(r);
            }
        }
        trimmer.abort();
        Summary { metrics: self.handles().snapshot(), failed: std::mem::take(&mut self.failed), timed_out }
    }

    fn spawn_starting(&mut self, set: &mut JoinSet<Joined>) {
        for s in self.starting.drain(..) {
            let abort = set.spawn(s.task);
            self.tasks.insert(abort.id(), (s.id.clone(), s.generation));
            if let Some(slot) = self.slots.iter_mut().find(|x| x.def.id == s.id) {
                slot.running_as(s.generation, abort);
            }
        }
    }

    /// A component task ended: the current instance's end is the component's; an instance a
    /// reload replaced or removed only says how it went.
    fn finished(&mut self, id: &str, generation: u64, result: anyhow::Result<()>) {
        let current = self.slot(id).is_some_and(|s| s.generation() == Some(generation));
        if !current {
            match result {
                Ok(()) => tracing::debug!(component = %id, "the replaced instance finished"),
                Err(e) => tracing::warn!(component = %id, "the replaced instance stopped with an error: {e:#}"),
            }
            return;
        }
        let slot = self.slots.iter().find(|s| s.def.id == id).expect("current");
        slot.handle.metrics.set_state(if result.is_ok() { RunState::Finished } else { RunState::Failed });
        if let Err(e) = result {
            tracing::error!(component = %id, "stopped with an error: {e:#}");
            // What reaches it from now on, and what waits in its buffer, fails (so its sources
            // keep it and nothing upstream waits); a broken component would silently lose
            // events: the pipeline stops.
            slot.close_input();
            self.failed.push((id.to_string(), format!("{e:#}")));
            self.sources_token.cancel();
        } else {
            tracing::debug!(component = %id, "finished");
        }
    }

    /// Components whose current instance has not ended.
    fn running(&self) -> Vec<String> {
        self.slots.iter().filter(|s| s.alive()).map(|s| s.def.id.clone()).collect()
    }
}

/// How often freed memory is handed back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Asks a running topology to reload; the answer says what changed, or why nothing did.
pub fn reload_channel() -> (mpsc::Sender<Reload>, mpsc::Receiver<Reload>) {
    mpsc::channel(1)
}

impl Reload {
    pub fn new(pipeline: Pipeline) -> (Reload, oneshot::Receiver<Result<String, String>>) {
        let (reply, rx) = oneshot::channel();
        (Reload { pipeline: Box::new(pipeline), reply }, rx)
    }
}
