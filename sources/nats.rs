//! `nats`: events from a NATS JetStream stream through a durable pull consumer (the aggregator's
//! half of agent → aggregator). A message is acknowledged only once every sink downstream has
//! the event, so an aggregator that crashes gets it again rather than losing it; aggregators
//! sharing one durable consumer split the messages. Events come back typed, with the sending
//! host and the sender's revision.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::component::{ComponentFuture, Context, SourceConfig, SourceContext};
use crate::config::{FieldError, FieldPath};
use crate::event::{DataType, wire};
use crate::event::{Finalizer, Status};
use crate::nats::{NatsConnect, NatsStream};

/// Reads the events other ocpipes published (`nats` sink) from a JetStream stream.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct NatsSourceConfig {
    #[serde(flatten)]
    pub connect: NatsConnect,
    /// The stream (created with these settings when missing).
    #[serde(default)]
    pub stream: NatsStream,
    /// The durable consumer's name; the cluster keeps its place across restarts. Aggregators
    /// sharing a name split the messages (each sees part); give each its own name for each to
    /// see everything.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Only subjects matching this (default: all of the stream's).
    pub filter_subject: Option<String>,
    /// How long the cluster waits for an acknowledgement before delivering a message again.
    #[serde(default = "default_ack_wait")]
    pub ack_wait_secs: u64,
    /// Messages delivered and not yet acknowledged (the rest wait in the stream).
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: i64,
    /// Prefix each OpenCode instance with the host that sent it (`laptop-7/http://127.0.0.1:4096`),
    /// so two machines' servers on the same port stay apart on the page.
    #[serde(default = "yes")]
    pub host_in_instance: bool,
}

fn yes() -> bool {
    true
}

/// `instance` of a live event or status, prefixed with the sending host.
fn qualify(payload: &mut crate::event::Payload, host: &str) {
    use crate::event::Payload;
    let instance = match payload {
        Payload::Live(l) => &mut l.instance,
        Payload::Status(s) => &mut s.instance,
        _ => return,
    };
    if !instance.is_empty() {
        *instance = format!("{host}/{instance}");
    }
}

fn default_consumer() -> String {
    "ocpipe-aggregator".into()
}
fn default_ack_wait() -> u64 {
    60
}
fn default_max_ack_pending() -> i64 {
    20_000
}

const EXAMPLE: &str = r#"url = "nats://127.0.0.1:4222"
consumer = "aggregator"
"#;

crate::register_component!(
    source NatsSourceConfig,
    "nats",
    "Events other ocpipes published to a NATS JetStream stream (durable consumer, acknowledged once stored)",
    EXAMPLE
);

impl SourceConfig for NatsSourceConfig {
    fn outputs(&self) -> DataType {
        DataType::ANY
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = self.connect.validate();
        errs.extend(self.stream.validate("stream"));
        if self.consumer.is_empty() || self.consumer.contains(['.', ' ', '*', '>', '\t']) {
            errs.push(FieldError::new(
                FieldPath::key("consumer"),
                format!("`{}` cannot name a consumer: no dots, spaces or wildcards", self.consumer),
            ));
        }
        if self.max_ack_pending < 1 {
            errs.push(FieldError::new(FieldPath::key("max_ack_pending"), "`max_ack_pending` must be at least 1"));
        }
        errs
    }

    fn build(&self, sc: SourceContext) -> anyhow::Result<ComponentFuture> {
        let cfg = self.clone();
        Ok(Box::pin(async move { run(cfg, sc).await }))
    }
}

/// Waits `wait`, or less when shutdown comes; false on shutdown.
async fn pause(sc: &SourceContext, wait: Duration) -> bool {
    tokio::select! {
        _ = sc.shutdown.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// How long one pull request waits for messages, and how often the cluster says it is alive
/// meanwhile (two missed heartbeats: the request is made again).
const PULL_EXPIRES: Duration = Duration::from_secs(10);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);

/// The durable consumer, made when missing; tried again until the cluster answers.
async fn consumer(cfg: &NatsSourceConfig, js: &jetstream::Context, sc: &SourceContext) -> Option<pull::Stream> {
    let mut delays = crate::component::retry_delays(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let attempt = async {
            let stream = cfg.stream.ensure(js).await?;
            let config = pull::Config {
                durable_name: Some(cfg.consumer.clone()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(cfg.ack_wait_secs.max(1)),
                max_ack_pending: cfg.max_ack_pending,
                filter_subject: cfg.filter_subject.clone().unwrap_or_default(),
                ..Default::default()
            };
            let consumer: jetstream::consumer::PullConsumer = stream
                .get_or_create_consumer(&cfg.consumer, config)
                .await
                .map_err(|e| anyhow::anyhow!("the consumer `{}`: {e}", cfg.consumer))?;
            // Short pull requests with heartbeats: a request the cluster lost (sent while the
            // consumer's leader was being elected, or to a node that died) is noticed within
            // seconds, not after async-nats' default 30 s.
            let messages = consumer
                .stream()
                .max_messages_per_batch(200)
                .expires(PULL_EXPIRES)
                .heartbeat(PULL_HEARTBEAT)
                .messages()
                .await
                .map_err(|e| anyhow::anyhow!("pulling messages: {e}"))?;
            anyhow::Ok(messages)
        };
        let attempt = tokio::select! {
            _ = sc.shutdown.cancelled() => return None,
            a = attempt => a,
        };
        match attempt {
            Ok(m) => {
                tracing::info!(
                    component = &*sc.cx.id,
                    "reading the stream `{}` through the durable consumer `{}`",
                    cfg.stream.name,
                    cfg.consumer
                );
                return Some(m);
            }
            Err(e) => {
                sc.cx.error(format_args!("{e:#}; trying again"));
                if !pause(sc, delays.next().unwrap_or(Duration::from_secs(5))).await {
                    return None;
                }
            }
        }
    }
}

/// Acknowledgements waiting for their events' fate.
struct Acks {
    waiting: HashMap<u64, jetstream::message::Acker>,
    next: u64,
    tx: mpsc::UnboundedSender<(u64, Status)>,
}

impl Acks {
    fn track(&mut self, acker: jetstream::message::Acker) -> Finalizer {
        self.next += 1;
        let (key, tx) = (self.next, self.tx.clone());
        self.waiting.insert(key, acker);
        Finalizer::new(move |status| {
            let _ = tx.send((key, status));
        })
    }

    /// Tells the cluster one event's fate: stored (ack), or not (delivered again later).
    async fn settle(&mut self, key: u64, status: Status, cx: &Context) {
        let Some(acker) = self.waiting.remove(&key) else { return };
        let result = match status {
            Status::Delivered => acker.ack().await,
            Status::Failed => acker.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await,
        };
        if let Err(e) = result {
            // The cluster delivers it again after `ack_wait`; the stores downstream are idempotent.
            tracing::debug!(component = &*cx.id, "acknowledging a message failed: {e}");
        }
    }
}

async fn run(cfg: NatsSourceConfig, mut sc: SourceContext) -> anyhow::Result<()> {
    let client = cfg.connect.connect(&sc.cx, &format!("ocpipe {}", sc.cx.id)).await?;
    let js = jetstream::new(client.clone());
    let (tx, mut settled) = mpsc::unbounded_channel();
    let mut acks = Acks { waiting: HashMap::new(), next: 0, tx };
    let mut quiet_errors = 0u64;
    'outer: while let Some(mut messages) = consumer(&cfg, &js, &sc).await {
        sc.cx.metrics.set_caught_up();
        loop {
            tokio::select! {
                biased;
                _ = sc.shutdown.cancelled() => break 'outer,
                Some((key, status)) = settled.recv() => acks.settle(key, status, &sc.cx).await,
                next = messages.next() => match next {
                    Some(Ok(msg)) => {
                        let (msg, acker) = msg.split();
                        match wire::decode(&msg.payload, &sc.cx.id) {
                            Ok(mut received) => {
                                if cfg.host_in_instance {
                                    qualify(&mut received.event.payload, &received.host);
                                }
                                let finalizer = acks.track(acker);
                                sc.out.send(received.event.with_finalizer(finalizer)).await;
                            }
                            Err(e) => {
                                sc.cx.error(format_args!("a message on `{}` skipped for now: {e}", msg.subject));
                                // Perhaps from a newer ocpipe (a rolling upgrade): kept in the
                                // stream and offered again later, not thrown away.
                                let _ = acker.ack_with(AckKind::Nak(Some(Duration::from_secs(300)))).await;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        quiet_errors += 1;
                        if quiet_errors == 1 || quiet_errors.is_multiple_of(30) {
                            tracing::warn!(component = &*sc.cx.id, "pulling from NATS: {e}");
                        }
                        // Heartbeats missed: the cluster lost the pull request (a node went
                        // away, the consumer's leader changed). async-nats would wait for it
                        // to expire; a new subscription asks again now.
                        if e.kind() == pull::MessagesErrorKind::MissingHeartbeat {
                            if !pause(&sc, Duration::from_millis(200)).await {
                                break 'outer;
                            }
                            continue 'outer;
                        }
                    }
                    None => {
                        tracing::warn!(component = &*sc.cx.id, "the message stream ended; subscribing again");
                        if !pause(&sc, Duration::from_millis(500)).await {
                            break 'outer;
                        }
                        continue 'outer;
                    }
                },
            }
        }
    }
    // Shutdown: what was sent downstream settles (the runtime's deadline bounds this), so the
    // cluster does not deliver it again.
    while !acks.waiting.is_empty() {
        match tokio::time::timeout(Duration::from_secs(120), settled.recv()).await {
            Ok(Some((key, status))) => acks.settle(key, status, &sc.cx).await,
            _ => break,
        }
    }
    // The last acknowledgements out, unless the cluster is away.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    Ok(())
}
