//! The component test harness. Every component's tests run it through these functions, which
//! check what all components promise:
//! - the host's counters add up (received = events fed in; sent = events that came out);
//! - a transform or sink ends by itself once its input ends (after flushing);
//! - a source stops promptly when shut down.
//!
//! `tests/compliance.rs` fails when a registered component has no compliance case.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::component::{
    Context, Input, Moved, Output, SinkConfig, SourceConfig, SourceContext, TapPoint, Target, Transform,
    TransformConfig,
};
use crate::config::{FieldError, WhenFull};
use crate::event::{DataType, Event};
use crate::metrics::{ComponentMetrics, MetricsSnapshot};
use crate::registry::{self, AnyConfig, Kind};

/// How long a component may take to stop once it should.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Parses and validates a component config the way the loader does.
pub fn parse(kind: Kind, type_name: &str, body: &str) -> Result<AnyConfig, Vec<FieldError>> {
    let reg = registry::find(kind, type_name).unwrap_or_else(|| panic!("no {kind} `{type_name}` registered"));
    let table: toml::Table = toml::from_str(body).expect("test config is valid TOML");
    let cfg = (reg.parse)(toml::Value::Table(table))?;
    let problems = cfg.validate();
    if problems.is_empty() { Ok(cfg) } else { Err(problems) }
}

pub fn context(id: &str, dir: &Path) -> Context {
    Context::new(id, dir.join("data"), dir.to_path_buf())
}

/// An output that collects into a channel, counting on the component's own metrics.
fn capture(metrics: &Arc<ComponentMetrics>) -> (Output, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel(1_000_000);
    let target = Target {
        tx,
        when_full: WhenFull::Block,
        metrics: Arc::default(),
        accepts: DataType::ANY,
        moved: Moved::never(),
    };
    (Output::new(vec![target], metrics.clone(), Arc::new(TapPoint::default())), rx)
}

fn feed(events: Vec<Event>, metrics: Arc<ComponentMetrics>) -> Input {
    let (tx, rx) = mpsc::channel(events.len().max(1));
    for e in events {
        tx.try_send(e).expect("channel sized for all events");
    }
    Input::new(rx, metrics)
}

/// Acknowledges an event as a sink would once it is stored.
fn delivered(mut e: Event) -> Event {
    e.meta.finalizer = None;
    e
}

/// What a harness run saw.
pub struct Outcome {
    pub events: Vec<Event>,
    pub metrics: MetricsSnapshot,
    /// A per-event transform (each event is sent on or dropped), not a stateful one.
    pub per_event: bool,
}

/// Feeds `events` to a transform, ends its input, and checks that it finishes and that its
/// counters match what went in and came out.
pub async fn run_transform(cfg: &dyn TransformConfig, events: Vec<Event>, dir: &Path) -> Outcome {
    let n = events.len() as u64;
    let cx = context("transform_under_test", dir);
    let transform = cfg.build(&cx).expect("transform builds");
    let per_event = matches!(transform, Transform::Function(_));
    let input = feed(events, cx.metrics.clone());
    let (mut out, mut rx) = capture(&cx.metrics);
    let task = async move {
        match transform {
            Transform::Function(mut f) => {
                let mut input = input;
                let mut buf = Vec::new();
                while let Some(ev) = input.recv().await {
                    f.transform(ev, &mut buf);
                    out.send_all(buf.drain(..)).await;
                }
                Ok(())
            }
            Transform::Task(t) => t.run(input, out).await,
        }
    };
    tokio::time::timeout(STOP_DEADLINE, task)
        .await
        .expect("transform must finish once its input ends")
        .expect("transform runs without error");
    let mut got = Vec::new();
    while let Ok(e) = rx.try_recv() {
        got.push(e);
    }
    let metrics = cx.metrics.snapshot();
    assert_eq!(metrics.received, n, "transform must count every event received");
    assert_eq!(metrics.sent, got.len() as u64, "transform must count every event sent");
    assert!(metrics.dropped.total() <= n, "a transform cannot drop more than it received");
    Outcome { events: got, metrics, per_event }
}

/// What a sink's `validate` says of `toml_text` (its options), as `path: message` lines.
pub fn sink_errors<C: SinkConfig + serde::de::DeserializeOwned>(toml_text: &str) -> Vec<String> {
    let cfg: C = toml::from_str(toml_text).expect("the options parse");
    cfg.validate().iter().map(|e| format!("{}: {}", e.path, e.message)).collect()
}

/// Feeds `events` to a sink, ends its input, and checks that it finishes and counts them.
pub async fn run_sink(cfg: &dyn SinkConfig, events: Vec<Event>, dir: &Path) -> MetricsSnapshot {
    let n = events.len() as u64;
    let cx = context("sink_under_test", dir);
    let sink = cfg.build(&cx).expect("sink builds");
    let input = feed(events, cx.metrics.clone());
    tokio::time::timeout(STOP_DEADLINE, sink.run(input))
        .await
        .expect("sink must finish once its input ends")
        .expect("sink runs without error");
    let m = cx.metrics.snapshot();
    assert_eq!(m.received, n, "sink must count every event received");
    m
}

/// Builds a source (without running it): whether it can start here.
pub fn try_build_source(cfg: &dyn SourceConfig, dir: &Path) -> anyhow::Result<()> {
    let cx = context("source_under_test", dir);
    let (out, _rx) = capture(&cx.metrics);
    cfg.build(SourceContext { cx, out, shutdown: CancellationToken::new() }).map(drop)
}

/// Runs a source until `done` says so (given what it emitted so far) or `max` passes, shuts it
/// down, and checks that it stops in time and counted what it sent.
pub async fn run_source(cfg: &dyn SourceConfig, dir: &Path, max: Duration, done: impl Fn(&[Event]) -> bool) -> Outcome {
    run_source_live(cfg, dir, max, || {}, done).await
}

/// Like [`run_source`], calling `caught_up` once the source says it has read what was there
/// and follows changes: a test writes its changes then, so that they arrive live.
pub async fn run_source_live(
    cfg: &dyn SourceConfig,
    dir: &Path,
    max: Duration,
    caught_up: impl FnOnce(),
    done: impl Fn(&[Event]) -> bool,
) -> Outcome {
    let cx = context("source_under_test", dir);
    let (out, mut rx) = capture(&cx.metrics);
    let shutdown = CancellationToken::new();
    let fut = cfg.build(SourceContext { cx: cx.clone(), out, shutdown: shutdown.clone() }).expect("source builds");
    let handle = tokio::spawn(fut);
    let mut got = Vec::new();
    let mut caught_up = Some(caught_up);
    let until = tokio::time::Instant::now() + max;
    while !done(&got) && tokio::time::Instant::now() < until {
        if caught_up.is_some() && cx.metrics.caught_up() {
            caught_up.take().expect("checked")();
        }
        // Short waits while the source has not caught up, so that the moment is not missed.
        let wait = if caught_up.is_some() {
            (tokio::time::Instant::now() + Duration::from_millis(10)).min(until)
        } else {
            until
        };
        match tokio::time::timeout_at(wait, rx.recv()).await {
            Ok(Some(e)) => got.push(delivered(e)),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    shutdown.cancel();
    // Keep receiving while it stops: a source may still be handing over events.
    let stop = async {
        while let Some(e) = rx.recv().await {
            got.push(delivered(e));
        }
    };
    tokio::time::timeout(STOP_DEADLINE, stop).await.expect("source must stop after shutdown");
    tokio::time::timeout(STOP_DEADLINE, handle)
        .await
        .expect("source must stop after shutdown")
        .expect("source task does not panic")
        .expect("source runs without error");
    let metrics = cx.metrics.snapshot();
    assert_eq!(metrics.sent, got.len() as u64, "source must count every event sent");
    Outcome { events: got, metrics, per_event: false }
}
