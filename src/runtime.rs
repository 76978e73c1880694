//! Builds a [`Pipeline`] into running tasks and drives it to the end.
//!
//! Every transform and sink owns one bounded input channel; every producer holds an [`Output`]
//! with a [`Target`] per consumer. Shutdown only cancels sources: as each producer finishes, its
//! senders drop, so each consumer's input ends after it has drained, and the end ripples down the
//! graph. A deadline bounds the wait and names the components still running.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::component::{Context, Input, Output, Resources, SourceContext, TapPoint, Target, Transform};
use crate::config::{Pipeline, TRANSFORM_BUFFER, WhenFull};
use crate::event::DataType;
use crate::metrics::{ComponentMetrics, MetricsSnapshot, RunState};
use crate::registry::{AnyConfig, Kind};
use crate::telemetry::Telemetry;

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

/// A built pipeline, ready to run.
pub struct Topology {
    handles: Handles,
    sources: Vec<(String, Task)>,
    others: Vec<(String, Task)>,
    /// Cancelled to stop the sources (shutdown, or a component failed).
    sources_token: CancellationToken,
    shutdown_timeout: Duration,
    telemetry: Arc<Telemetry>,
}

impl Topology {
    /// Builds every component, sources included, before anything runs. All build errors are
    /// reported together.
    pub fn build(pipeline: Pipeline, opts: &RunOptions) -> anyhow::Result<Topology> {
        let sources_token = CancellationToken::new();
        let mut handles = Handles::default();
        let mut contexts: HashMap<String, Context> = HashMap::new();
        let mut senders: HashMap<String, mpsc::Sender<crate::event::Event>> = HashMap::new();
        let mut inputs: HashMap<String, Input> = HashMap::new();
        let prices = match pipeline.prices.is_empty() {
            true => crate::usage::Prices::builtin(),
            false => Arc::new(crate::usage::Prices::builtin().with(&pipeline.prices)),
        };
        let resources = Arc::new(Resources::with_prices(prices));

        for c in &pipeline.components {
            let cx =
                Context::new(&c.id, opts.data_dir.clone(), opts.base_dir.clone()).with_resources(resources.clone());
            let capacity = match c.kind {
                Kind::Source => 0,
                Kind::Transform => TRANSFORM_BUFFER,
                Kind::Sink => c.buffer.max_events,
            };
            handles.components.push(ComponentHandle {
                id: c.id.clone(),
                kind: c.kind,
                type_name: c.type_name,
                metrics: cx.metrics.clone(),
                tap: Arc::default(),
                buffer_capacity: capacity,
            });
            if c.kind != Kind::Source {
                let (tx, rx) = mpsc::channel(capacity);
                senders.insert(c.id.clone(), tx);
                inputs.insert(c.id.clone(), Input::new(rx, cx.metrics.clone()));
            }
            contexts.insert(c.id.clone(), cx);
        }

        let mut outputs: HashMap<String, Output> = HashMap::new();
        for producer in pipeline.components.iter().filter(|c| c.kind != Kind::Sink) {
            let targets = pipeline
                .components
                .iter()
                .filter(|c| c.inputs.contains(&producer.id))
                .map(|c| Target {
                    tx: senders[&c.id].clone(),
                    when_full: if c.kind == Kind::Sink { c.buffer.when_full } else { WhenFull::Block },
                    metrics: contexts[&c.id].metrics.clone(),
                    accepts: c.config.input().unwrap_or(DataType::ANY),
                })
                .collect();
            let h = handles.get(&producer.id).expect("handle for every component");
            outputs.insert(producer.id.clone(), Output::new(targets, h.metrics.clone(), h.tap.clone()));
        }
        drop(senders);
        let mut output_of = |id: &str| outputs.remove(id).expect("output for every producer");

        let mut errors = Vec::new();
        let mut sources: Vec<(String, Task)> = Vec::new();
        let mut others: Vec<(String, Task)> = Vec::new();
        for c in pipeline.components {
            let cx = contexts[&c.id].clone();
            let id = c.id.clone();
            let what = format!("{} `{}` ({})", c.kind, c.id, c.type_name);
            match c.config {
                AnyConfig::Sink(cfg) => match cfg.build(&cx) {
                    Ok(sink) => others.push((id.clone(), sink.run(inputs.remove(&id).unwrap()))),
                    Err(e) => errors.push(format!("{what}: {e:#}")),
                },
                AnyConfig::Transform(cfg) => match cfg.build(&cx) {
                    Ok(t) => {
                        let input = inputs.remove(&id).unwrap();
                        let out = output_of(&id);
                        others.push((id, run_transform(t, input, out)));
                    }
                    Err(e) => errors.push(format!("{what}: {e:#}")),
                },
                AnyConfig::Source(cfg) => {
                    let sc = SourceContext { cx, out: output_of(&id), shutdown: sources_token.clone() };
                    match cfg.build(sc) {
                        Ok(task) => sources.push((id, task)),
                        Err(e) => errors.push(format!("{what}: {e:#}")),
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(anyhow!("could not build the pipeline:\n  {}", errors.join("\n  ")));
        }
        resources.telemetry.set_handles(handles.clone());
        Ok(Topology {
            handles,
            sources,
            others,
            sources_token,
            shutdown_timeout: pipeline.shutdown_timeout,
            telemetry: resources.telemetry.clone(),
        })
    }

    pub fn handles(&self) -> Handles {
        self.handles.clone()
    }

    /// What `/metrics` and `/health` read.
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.telemetry.clone()
    }

    /// Runs until every source has finished (or `shutdown` fires) and everything downstream has
    /// drained, or the shutdown deadline passes.
    pub async fn run(self, shutdown: CancellationToken) -> Summary {
        let sources_token = self.sources_token;
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
        let mut set: JoinSet<(String, anyhow::Result<()>)> = JoinSet::new();
        let mut running: Vec<String> = Vec::new();
        let mut failed = Vec::new();
        let state = |id: &str, s: RunState| {
            if let Some(h) = self.handles.get(id) {
                h.metrics.set_state(s);
            }
        };
        for (id, task) in self.others.into_iter().chain(self.sources) {
            state(&id, RunState::Running);
            running.push(id.clone());
            set.spawn(async move { (id, task.await) });
        }

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
            tokio::select! {
                joined = set.join_next() => match joined {
                    Some(Ok((id, result))) => {
                        running.retain(|r| r != &id);
                        state(&id, if result.is_ok() { RunState::Finished } else { RunState::Failed });
                        if let Err(e) = result {
                            tracing::error!(component = %id, "stopped with an error: {e:#}");
                            failed.push((id, format!("{e:#}")));
                            // A broken component would silently lose what reaches it: stop.
                            sources_token.cancel();
                        } else {
                            tracing::debug!(component = %id, "finished");
                        }
                    }
                    Some(Err(join_error)) => {
                        tracing::error!("a component task panicked: {join_error}");
                        failed.push(("?".into(), join_error.to_string()));
                        sources_token.cancel();
                    }
                    None => break,
                },
                _ = shutdown.cancelled(), if deadline.is_none() => {
                    sources_token.cancel();
                    tracing::info!("shutting down: sources stop, the rest drains (deadline {:?})", self.shutdown_timeout);
                    deadline = Some(tokio::time::Instant::now() + self.shutdown_timeout);
                }
                _ = async { report.as_mut().expect("set with the deadline").tick().await }, if report.is_some() => {
                    tracing::info!("still draining: {}", running.join(", "));
                }
                _ = wait_deadline => {
                    tracing::error!("shutdown deadline of {:?} passed; giving up on: {}", self.shutdown_timeout, running.join(", "));
                    timed_out = running.clone();
                    set.abort_all();
                    break;
                }
            }
            if sources_token.is_cancelled() && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + self.shutdown_timeout);
            }
            if deadline.is_some() && report.is_none() {
                let mut r = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                r.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                report = Some(r);
            }
        }
        trimmer.abort();
        Summary { metrics: self.handles.snapshot(), failed, timed_out }
    }
}

/// How often freed memory is handed back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(10);

fn run_transform(t: Transform, mut input: Input, mut out: Output) -> Task {
    match t {
        Transform::Task(t) => t.run(input, out),
        Transform::Function(mut f) => Box::pin(async move {
            let mut buf = Vec::new();
            while let Some(ev) = input.recv().await {
                f.transform(ev, &mut buf);
                for e in buf.drain(..) {
                    out.send(e).await;
                }
            }
            Ok(())
        }),
    }
}
