//! `nats`: publishes events to a NATS JetStream stream (an agent's half of agent → aggregator).
//! An event counts as delivered only once the stream acknowledged it, so a source's checkpoint
//! never moves past what the cluster stored; `Nats-Msg-Id` names the record and its content, so
//! what is sent again after a crash or a reconnect is dropped by the stream's duplicate window.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::time::Duration;

use async_nats::jetstream;
use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{ComponentFuture, Context, Input, Sink, SinkConfig};
use crate::config::{FieldError, FieldPath};
use crate::event::wire;
use crate::event::wire::host_name;
use crate::event::{DataType, Event, Unsettled};
use crate::metrics::DropReason;
use crate::nats::{NatsConnect, NatsStream};
use crate::template::{TopicSyntax, TopicTemplate};

/// Publishes each event (kind, metadata, sending host and JSON view) to a JetStream stream.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct NatsSinkConfig {
    #[serde(flatten)]
    pub connect: NatsConnect,
    /// The subject: `{field}` takes a field of the event, `{_kind}` its kind, `{host}` this
    /// machine's name. Dots, spaces and wildcards in a value become `_`.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// The name events are sent under (default: this machine's host name).
    pub host: Option<String>,
    #[serde(default)]
    pub stream: NatsStream,
    /// Events published and not yet acknowledged by the stream.
    #[serde(default = "default_in_flight")]
    pub in_flight: usize,
    /// How long to wait for the stream's acknowledgement before sending again.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_secs: u64,
}

fn default_subject() -> String {
    "ocpipe.{_kind}.{host}".into()
}
fn default_in_flight() -> usize {
    256
}
fn default_ack_timeout() -> u64 {
    5
}

const EXAMPLE: &str = r#"url = "nats://127.0.0.1:4222"
subject = "ocpipe.{_kind}.{host}"
stream = { name = "OCPIPE", subjects = ["ocpipe.>"], replicas = 1 }
"#;

crate::register_component!(
    sink NatsSinkConfig,
    "nats",
    "Publishes events to a NATS JetStream stream, each delivered once the stream acknowledged it",
    EXAMPLE
);

impl NatsSinkConfig {
    fn subject(&self) -> Result<TopicTemplate, FieldError> {
        TopicTemplate::parse_as(&self.subject, TopicSyntax::NATS)
            .map_err(|e| FieldError::new(FieldPath::key("subject"), e.message).help(e.help))
    }
}

impl SinkConfig for NatsSinkConfig {
    fn input(&self) -> DataType {
        DataType::ANY
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = self.connect.validate();
        errs.extend(self.stream.validate("stream"));
        match self.subject() {
            Err(e) => errs.push(e),
            Ok(t) if !self.stream.could_store(&t.shape()) => errs.push(
                FieldError::new(
                    FieldPath::key("subject"),
                    format!(
                        "the stream `{}` stores {}, which `{}` can never be: it would refuse every event",
                        self.stream.name,
                        self.stream.subjects.join(", "),
                        self.subject
                    ),
                )
                .help("write a subject under the stream's (e.g. \"ocpipe.{_kind}.{host}\") or add yours to `stream.subjects`"),
            ),
            Ok(_) => {}
        }
        if self.in_flight == 0 {
            errs.push(FieldError::new(FieldPath::key("in_flight"), "`in_flight` must be at least 1"));
        }
        errs
    }

    fn build(&self, cx: &Context) -> anyhow::Result<Box<dyn Sink>> {
        let host = self.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(host_name);
        let subject = self.subject().map_err(|e| anyhow::anyhow!(e.message))?.with_value("host", &host);
        Ok(Box::new(NatsSink { cfg: self.clone(), subject, host, cx: cx.clone() }))
    }
}

struct NatsSink {
    cfg: NatsSinkConfig,
    subject: TopicTemplate,
    host: String,
    cx: Context,
}

/// Events between two writes of the last revision.
const KEEP_REVISION_EVERY: usize = 5_000;

/// The last revision this sink gave, on disk (`revision` in its data dir), so the next run's
/// revisions start above it whatever the clock says.
struct RevisionFloor {
    path: Option<std::path::PathBuf>,
}

impl RevisionFloor {
    fn restore(cx: &Context) -> RevisionFloor {
        let path = match cx.data_dir() {
            Ok(d) => Some(d.join("revision")),
            Err(e) => {
                cx.error(format_args!("no data dir for the last revision ({e}); revisions follow the clock alone"));
                None
            }
        };
        if let Some(floor) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok()) {
            crate::event::revision::at_least(floor);
        }
        RevisionFloor { path }
    }

    /// Writes the last revision given (on a blocking thread); a failure is logged.
    async fn keep(&self) {
        let Some(path) = self.path.clone() else { return };
        let last = crate::event::revision::last();
        let res = tokio::task::spawn_blocking(move || {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, last.to_string())?;
            std::fs::rename(&tmp, &path)
        })
        .await;
        if let Ok(Err(e)) = res {
            tracing::warn!("keeping the last revision: {e}");
        }
    }
}

type AckFuture = BoxFuture<'static, Result<jetstream::publish::PublishAck, jetstream::context::PublishError>>;

/// An event published and waiting for the stream's acknowledgement.
struct Pending {
    event: Unsettled,
    ack: AckFuture,
}

/// One event ready to go: where, its bytes and its id.
struct Outgoing {
    event: Unsettled,
    subject: String,
    body: bytes::Bytes,
    msg_id: String,
}

impl NatsSink {
    fn prepare(&self, mut event: Event) -> Outgoing {
        // Kept when relayed: the order is the first sender's.
        event.meta.revision.get_or_insert_with(crate::event::revision::next);
        self.prepare_held(Unsettled::new(event))
    }

    fn prepare_held(&self, event: Unsettled) -> Outgoing {
        let e = event.get();
        Outgoing {
            subject: self.subject.render(e),
            body: wire::encode(e, &self.host).into(),
            msg_id: wire::content_id(e, &self.host),
            event,
        }
    }
}

/// Publishes through one JetStream context, creating the stream when it is missing.
struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: NatsStream,
    stream_ready: bool,
    /// The subjects the stream stores (as the cluster says).
    stored: Vec<String>,
    /// How long to wait for the first connection before calling the cluster away (once).
    first_wait: Option<Duration>,
    /// Raised when a connection attempt failed since the last connection.
    attempt_failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cx: Context,
    duplicates: u64,
}

impl Publisher {
    async fn publish(&mut self, o: &Outgoing) -> Result<AckFuture, String> {
        if !self.stream_ready {
            let mut stream = self.stream.ensure(&self.js).await.map_err(|e| format!("{e:#}"))?;
            // An existing stream is used as it is: its subjects, not ours, decide.
            self.stored = stream.info().await.map(|i| i.config.subjects.clone()).unwrap_or_default();
            self.stream_ready = true;
        }
        if !self.stored.is_empty() && !crate::nats::stored_in(&self.stored, &o.subject) {
            return Err(format!(
                "the stream `{}` stores {}, not `{}`: change the sink's `subject` or the stream's subjects",
                self.stream.name,
                self.stored.join(", "),
                o.subject
            ));
        }
        let msg = jetstream::message::PublishMessage::build().payload(o.body.clone()).message_id(&o.msg_id);
        match self.js.send_publish(o.subject.clone(), msg).await {
            Ok(fut) => Ok(Box::pin(fut.into_future())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The outcome of one acknowledgement: whether the stream has the event.
    fn settled(
        &mut self,
        ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    ) -> Result<(), String> {
        match ack {
            Ok(a) => {
                if a.duplicate {
                    self.duplicates += 1;
                }
                Ok(())
            }
            Err(e) => {
                if matches!(e.kind(), jetstream::context::PublishErrorKind::StreamNotFound) {
                    self.stream_ready = false;
                }
                Err(e.to_string())
            }
        }
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Whether the cluster is away, for an ending input: not connected and an attempt failed
    /// (a short run's events come before the first connection: that one is waited for, up to
    /// the connect timeout).
    async fn away(&mut self) -> bool {
        if self.connected() {
            return false;
        }
        if let Some(limit) = self.first_wait.take() {
            let deadline = tokio::time::Instant::now() + limit;
            while !self.connected()
                && !self.attempt_failed.load(std::sync::atomic::Ordering::Relaxed)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        !self.connected()
    }

    /// Sends `o` until the stream has it, waiting longer between tries; once the input is
    /// ending, a few tries and none while the cluster is away. Returns false when it gave up.
    async fn until_stored(&mut self, o: &Outgoing, input: &Input) -> bool {
        let mut delays = crate::component::retry_delays(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempt = 0u32;
        loop {
            if input.ending() && self.away().await {
                return false;
            }
            attempt += 1;
            let result = match self.publish(o).await {
                Ok(ack) => ack.await.map_err(|e| e.to_string()).and_then(|a| self.settled(Ok(a))),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return true,
                Err(e) => {
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        self.cx.error(format_args!("publishing to `{}` failed ({e}); trying again", o.subject));
                    }
                    if input.ending() && attempt >= 3 {
                        return false;
                    }
                }
            }
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
        }
    }
}

impl NatsSink {
    /// Something failed: settles what is in flight, in order, and sends again what the stream
    /// does not have (`failed` first, `next` last) until it has it (see `until_stored`); what
    /// it gives up on fails, and its source keeps it.
    async fn recover(
        &self,
        p: &mut Publisher,
        pending: &mut VecDeque<Pending>,
        failed: Option<Unsettled>,
        next: Option<Outgoing>,
        input: &Input,
    ) {
        let mut again: Vec<Unsettled> = failed.into_iter().collect();
        // A later version of a record the stream has makes an earlier one that failed moot
        // (receivers would ignore it anyway); a later one that failed is sent again.
        let mut stored: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        // Each acknowledgement's timeout starts when it is awaited: await them together.
        let (events, acks): (Vec<Unsettled>, Vec<AckFuture>) = pending.drain(..).map(|x| (x.event, x.ack)).unzip();
        for (ev, ack) in events.into_iter().zip(futures::future::join_all(acks).await) {
            match p.settled(ack) {
                Ok(()) => {
                    let meta = &ev.get().meta;
                    if let Some(id) = &meta.id {
                        let rev = stored.entry(id.clone()).or_default();
                        *rev = (*rev).max(meta.revision.unwrap_or(0));
                    }
                    self.cx.metrics.sent(1);
                    ev.delivered();
                }
                Err(_) => again.push(ev),
            }
        }
        let mut outgoing: Vec<Outgoing> = Vec::new();
        for ev in again {
            let meta = &ev.get().meta;
            let superseded =
                meta.id.as_ref().and_then(|id| stored.get(id)).is_some_and(|&r| r > meta.revision.unwrap_or(0));
            if superseded {
                self.cx.metrics.dropped(DropReason::Intentional, 1);
                ev.delivered();
            } else {
                outgoing.push(self.prepare_held(ev));
            }
        }
        outgoing.extend(next);
        for o in outgoing {
            if p.until_stored(&o, input).await {
                self.cx.metrics.sent(1);
                o.event.delivered();
            } else {
                self.cx.metrics.dropped(DropReason::Error, 1);
                o.event.failed();
            }
        }
    }
}

impl Sink for NatsSink {
    fn run(self: Box<Self>, mut input: Input) -> ComponentFuture {
        Box::pin(async move {
            let name = format!("ocpipe {} on {}", self.cx.id, self.host);
            let (client, attempt_failed) = self.cfg.connect.connect_watched(&self.cx, &name).await?;
            let js = jetstream::ContextBuilder::new()
                .timeout(Duration::from_secs(self.cfg.ack_timeout_secs.max(1)))
                .build(client.clone());
            let mut p = Publisher {
                client: client.clone(),
                js,
                stream: self.cfg.stream.clone(),
                stream_ready: false,
                stored: Vec::new(),
                first_wait: Some(Duration::from_secs(self.cfg.connect.connect_timeout_secs.max(1))),
                attempt_failed,
                cx: self.cx.clone(),
                duplicates: 0,
            };
            let floor = RevisionFloor::restore(&self.cx);
            let mut pending: VecDeque<Pending> = VecDeque::new();
            let mut input_open = true;
            let mut since_kept = 0usize;
            while input_open || !pending.is_empty() {
                tokio::select! {
                    biased;
                    ack = async { (&mut pending.front_mut().expect("checked").ack).await }, if !pending.is_empty() => {
                        let head = pending.pop_front().expect("checked");
                        match p.settled(ack) {
                            Ok(()) => {
                                self.cx.metrics.sent(1);
                                head.event.delivered();
                            }
                            Err(e) => {
                                self.cx.error(format_args!("the stream did not store an event ({e}); sending it and those after it again"));
                                self.recover(&mut p, &mut pending, Some(head.event), None, &input).await;
                            }
                        }
                    }
                    ev = input.recv(), if input_open && pending.len() < self.cfg.in_flight => match ev {
                        // Shutting down with the cluster away: what is left fails at once (its
                        // source keeps it for the next start).
                        Some(ev) if input.ending() && p.away().await => {
                            self.cx.metrics.dropped(DropReason::Error, 1);
                            ev.fail();
                        }
                        Some(ev) => {
                            let o = self.prepare(ev);
                            since_kept += 1;
                            if since_kept >= KEEP_REVISION_EVERY {
                                since_kept = 0;
                                floor.keep().await;
                            }
                            match p.publish(&o).await {
                                Ok(ack) => pending.push_back(Pending { event: o.event, ack }),
                                Err(e) => {
                                    self.cx.error(format_args!("publishing to `{}` failed ({e}); trying again", o.subject));

                                    self.recover(&mut p, &mut pending, None, Some(o), &input).await;
                                }
                            }
                        }
                        None => input_open = false,
                    },
                }
            }
            floor.keep().await;
            if p.duplicates > 0 {
                tracing::info!(
                    component = &*self.cx.id,
                    duplicates = p.duplicates,
                    "events the stream already had (sent again after a restart or a reconnect, or read again unchanged) were dropped by its duplicate window"
                );
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(toml_text: &str) -> Vec<String> {
        crate::testing::sink_errors::<NatsSinkConfig>(toml_text)
    }

    #[test]
    fn a_subject_the_stream_would_not_store_is_refused_before_the_start() {
        assert_eq!(errors(r#"url = "nats://127.0.0.1:4222""#), Vec::<String>::new());
        let errs = errors(
            r#"url = "nats://127.0.0.1:4222"
               subject = "team.{_kind}.{host}""#,
        );
        assert_eq!(
            errs,
            [
                "subject: the stream `OCPIPE` stores ocpipe.>, which `team.{_kind}.{host}` can never be: it would refuse every event"
            ]
        );
        let fits = errors(
            r#"url = "nats://127.0.0.1:4222"
               subject = "team.{_kind}.{host}"
               stream = { subjects = ["team.*.*"] }"#,
        );
        assert!(fits.is_empty(), "{fits:?}");
    }
}
