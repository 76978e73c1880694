//! A component's place in the running graph, kept across reloads: its definition, counters and
//! tap, its input buffer and the wiring of its output. An *instance* is one build of it running;
//! a reload stops the instance and starts another in the same slot, on the same buffer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::{ComponentHandle, Joined, RunOptions};
use crate::component::{
    Context, Input, InputStop, Moved, Output, Resources, SharedReceiver, Sink, SourceContext, Target, Transform, Wiring,
};
use crate::config::{ComponentDef, TRANSFORM_BUFFER, WhenFull};
use crate::event::{DataType, Event};
use crate::metrics::RunState;
use crate::registry::{AnyConfig, Kind};

/// A transform's or sink's input buffer.
#[derive(Clone)]
pub(super) struct Inbox {
    /// Producers hold the strong senders; this one keeps nothing open.
    weak: mpsc::WeakSender<Event>,
    /// The first strong sender, kept until the first producers are wired.
    fresh: Option<mpsc::Sender<Event>>,
    rx: SharedReceiver,
    capacity: usize,
    /// Where it went, once a reload gave its consumer a buffer of another size.
    moved: Arc<watch::Sender<Moved>>,
}

impl Inbox {
    fn new(capacity: usize) -> Inbox {
        let (tx, rx) = mpsc::channel(capacity);
        Inbox {
            weak: tx.downgrade(),
            fresh: Some(tx),
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            capacity,
            moved: Arc::new(watch::channel(Moved::Not).0),
        }
    }

    /// A sender, while the buffer is open.
    pub fn sender(&self) -> Option<mpsc::Sender<Event>> {
        self.fresh.clone().or_else(|| self.weak.upgrade())
    }

    pub fn release(&mut self) {
        self.fresh = None;
    }

    /// Closes the buffer of a component that is gone (removed, failed) and fails what is
    /// still in it (its sources will read it again), once its reader has let go (at most
    /// `limit`; `None` if it did not).
    pub async fn close(&self, limit: Duration) -> Option<usize> {
        let mut rx = tokio::time::timeout(limit, self.rx.lock()).await.ok()?;
        rx.close();
        let mut failed = 0;
        while let Ok(ev) = rx.try_recv() {
            ev.fail();
            failed += 1;
        }
        Some(failed)
    }

    /// Moves what is left in this (old) buffer into `into` once its reader has stopped, then
    /// closes it; producers whose sends find it closed wait for the move and go on to `into`
    /// (see [`Moved`]). Returns how many events moved.
    pub async fn move_into(&self, into: &Inbox) -> usize {
        self.moved.send_replace(Moved::Moving);
        let mut rx = self.rx.lock().await;
        rx.close();
        let tx = into.sender();
        let mut moved = 0;
        while let Some(ev) = rx.recv().await {
            match &tx {
                Some(tx) => match tx.send(ev).await {
                    Ok(()) => moved += 1,
                    Err(back) => back.0.fail(),
                },
                None => ev.fail(),
            }
        }
        self.moved.send_replace(Moved::To(into.weak.clone(), into.moved.subscribe()));
        moved
    }
}

/// Signals an instance's end whatever way it ends (returned, panicked, aborted): its wiring is
/// let go and its slot told.
struct Ended {
    wiring: Option<Arc<Wiring>>,
    generation: u64,
    done: watch::Sender<bool>,
}

impl Drop for Ended {
    fn drop(&mut self) {
        if let Some(w) = &self.wiring {
            w.release(self.generation);
        }
        let _ = self.done.send(true);
    }
}

/// How to stop an instance.
#[derive(Clone)]
enum Stopper {
    Source(CancellationToken),
    Input(InputStop),
}

/// One build of a component, running.
struct Instance {
    generation: u64,
    stopper: Stopper,
    done: watch::Receiver<bool>,
    abort: Option<AbortHandle>,
}

/// A component built and not yet running.
pub(super) struct Built {
    body: Body,
    stopper: Stopper,
}

enum Body {
    Source(super::Task),
    Transform(Transform),
    Sink(Box<dyn Sink>),
}

/// An instance to spawn.
pub(super) struct Starting {
    pub id: String,
    pub generation: u64,
    pub task: futures::future::BoxFuture<'static, Joined>,
}

/// How a reload stops an instance.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum StopHow {
    /// Its successor reads what is still buffered.
    HandOver,
    /// Removed: it reads its buffer to the end first.
    Drain,
}

pub(super) struct Slot {
    pub def: ComponentDef,
    pub handle: ComponentHandle,
    pub cx: Context,
    pub inbox: Option<Inbox>,
    /// A buffer of the new size, taken up once the old instance has stopped.
    resized: Option<Inbox>,
    pub wiring: Option<Arc<Wiring>>,
    instance: Option<Instance>,
}

impl Slot {
    /// A slot for `def`; `keep` carries the counters, tap, buffer and wiring of the slot it
    /// replaces (a rebuild), where they fit.
    pub fn new(def: ComponentDef, resources: &Arc<Resources>, opts: &RunOptions, keep: Option<&Slot>) -> Slot {
        let mut cx =
            Context::new(&def.id, opts.data_dir.clone(), opts.base_dir.clone()).with_resources(resources.clone());
        let capacity = match def.kind {
            Kind::Source => 0,
            Kind::Transform => TRANSFORM_BUFFER,
            Kind::Sink => def.buffer.max_events,
        };
        let mut resized = None;
        let (handle, inbox, wiring) = match keep {
            Some(old) => {
                cx.metrics = old.handle.metrics.clone();
                // The same buffer while it is open; one of a new size is taken up later.
                let inbox = match &old.inbox {
                    Some(i) if i.sender().is_some() => {
                        if i.capacity != capacity {
                            resized = Some(Inbox::new(capacity));
                        }
                        Some(i.clone())
                    }
                    _ => (capacity > 0).then(|| Inbox::new(capacity)),
                };
                let handle =
                    ComponentHandle { type_name: def.type_name, buffer_capacity: capacity, ..old.handle.clone() };
                (handle, inbox, old.wiring.clone().or_else(|| (def.kind != Kind::Sink).then(Arc::default)))
            }
            None => (
                ComponentHandle {
                    id: def.id.clone(),
                    kind: def.kind,
                    type_name: def.type_name,
                    metrics: cx.metrics.clone(),
                    tap: Arc::default(),
                    buffer_capacity: capacity,
                },
                (capacity > 0).then(|| Inbox::new(capacity)),
                (def.kind != Kind::Sink).then(Arc::default),
            ),
        };
        Slot { def, handle, cx, inbox, resized, wiring, instance: None }
    }

    /// Takes up the buffer of the new size (the old instance has stopped); the old buffer,
    /// whose contents are to move into it.
    pub fn take_resized(&mut self) -> Option<Inbox> {
        let new = self.resized.take()?;
        self.inbox.replace(new)
    }

    pub fn describe(&self) -> String {
        format!("{} `{}` ({})", self.def.kind, self.def.id, self.def.type_name)
    }

    /// The consumer end of this slot, for its producers' wiring.
    pub fn target(&self) -> Option<Target> {
        let inbox = self.inbox.as_ref()?;
        Some(Target {
            tx: inbox.sender()?,
            when_full: if self.def.kind == Kind::Sink { self.def.buffer.when_full } else { WhenFull::Block },
            metrics: self.handle.metrics.clone(),
            accepts: self.def.config.input().unwrap_or(DataType::ANY),
            moved: inbox.moved.subscribe(),
        })
    }

    /// Not started yet, or its instance is still running.
    pub fn alive(&self) -> bool {
        self.instance.as_ref().is_none_or(|i| !*i.done.borrow())
    }

    pub fn generation(&self) -> Option<u64> {
        self.instance.as_ref().map(|i| i.generation)
    }

    fn output(&self) -> Output {
        let wiring = self.wiring.clone().expect("producers have a wiring");
        Output::wired(wiring, self.handle.metrics.clone(), self.handle.tap.clone())
    }

    /// Builds the component from its definition (nothing runs yet).
    pub fn build(&self, sources_token: &CancellationToken) -> anyhow::Result<Built> {
        Ok(match &self.def.config {
            AnyConfig::Source(cfg) => {
                let token = sources_token.child_token();
                let sc = SourceContext { cx: self.cx.clone(), out: self.output(), shutdown: token.clone() };
                Built { body: Body::Source(cfg.build(sc)?), stopper: Stopper::Source(token) }
            }
            AnyConfig::Transform(cfg) => {
                Built { body: Body::Transform(cfg.build(&self.cx)?), stopper: Stopper::Input(InputStop::default()) }
            }
            AnyConfig::Sink(cfg) => {
                Built { body: Body::Sink(cfg.build(&self.cx)?), stopper: Stopper::Input(InputStop::default()) }
            }
        })
    }

    /// Makes `built` this slot's running instance; the task to spawn.
    pub fn start(&mut self, built: Built, generation: u64) -> Starting {
        let (done_tx, done) = watch::channel(false);
        let metrics = self.handle.metrics.clone();
        let input = |stop: &Stopper| {
            let rx = self.inbox.as_ref().expect("consumers have an input").rx.clone();
            let Stopper::Input(stop) = stop.clone() else { unreachable!("consumers stop by their input") };
            Input::shared(rx, metrics.clone(), stop)
        };
        let task: super::Task = match built.body {
            Body::Source(f) => f,
            Body::Transform(t) => {
                let (input, out) = (input(&built.stopper), self.output());
                Box::pin(async move { run_transform(t, input.await, out).await })
            }
            Body::Sink(sink) => {
                let input = input(&built.stopper);
                Box::pin(async move { sink.run(input.await).await })
            }
        };
        let (id, wiring) = (self.def.id.clone(), self.wiring.clone());
        if let Some(w) = &wiring {
            w.claim(generation);
        }
        self.instance = Some(Instance { generation, stopper: built.stopper, done, abort: None });
        self.handle.metrics.set_state(RunState::Running);
        let task = Box::pin(async move {
            // Its consumers' buffers close once no producer holds them.
            let _ended = Ended { wiring, generation, done: done_tx };
            let result = task.await;
            (id, generation, result)
        });
        Starting { id: self.def.id.clone(), generation, task }
    }

    /// A consumer that failed: its buffer closes and what is in it fails (its producers' sends
    /// fail from now on), so nothing upstream waits for it.
    pub fn close_input(&self) {
        if let Some(inbox) = self.inbox.clone() {
            tokio::spawn(async move {
                if let Some(failed @ 1..) = inbox.close(Duration::from_secs(60)).await {
                    tracing::warn!(failed, "events left in a failed component's buffer failed");
                }
            });
        }
    }

    pub fn running_as(&mut self, generation: u64, abort: AbortHandle) {
        if let Some(i) = self.instance.as_mut().filter(|i| i.generation == generation) {
            i.abort = Some(abort);
        }
    }

    /// Stops the running instance and waits for its end (at most `limit`, then aborts it).
    /// Returns false when it had to be aborted.
    pub async fn stop(&mut self, how: StopHow, limit: Duration) -> bool {
        let Some(instance) = self.instance.as_mut() else { return true };
        match (&instance.stopper, how) {
            (Stopper::Source(token), _) => token.cancel(),
            (Stopper::Input(stop), StopHow::HandOver) => stop.hand_over(),
            (Stopper::Input(stop), StopHow::Drain) => stop.drain(),
        }
        let ended = tokio::time::timeout(limit, instance.done.wait_for(|d| *d)).await.is_ok();
        if !ended {
            if let Some(a) = &instance.abort {
                a.abort();
            }
            tracing::error!(component = %self.def.id, "did not stop within {limit:?}; aborted");
        }
        ended
    }
}

fn run_transform(t: Transform, mut input: Input, mut out: Output) -> super::Task {
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
