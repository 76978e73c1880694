//! Publishing: one connection per broker (the config's and those of `targets_from`), each
//! status rendered and put in every broker's backlog.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::component::{ComponentFuture, Context, Input, Sink};
use crate::config::WhenFull;
use crate::event::{Event, Payload, StatusInfo};
use crate::jq::Jq;
use crate::metrics::DropReason;
use crate::sinks::push_targets::{self, Connection, Overlay};
use crate::template::TopicTemplate;

use super::broker::{Driver, close};
use super::discovery::{discovery, discovery_topic};
use super::{MqttConfig, qos};

/// One broker to publish to: from the config (`key` 0) or from the overlay (its id).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Target {
    pub(super) broker: String,
    pub(super) client_id: String,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) topic: String,
}

/// A live connection: the client half of rumqttc and the task driving its event loop.
pub(super) struct Broker {
    pub(super) target: Target,
    pub(super) topic: TopicTemplate,
    pub(super) client: AsyncClient,
    pub(super) connection: Connection,
    /// Instances announced to Home Assistant on this broker.
    pub(super) announced: HashSet<u16>,
    pub(super) stop: CancellationToken,
    pub(super) task: JoinHandle<usize>,
}

pub(super) struct MqttSink {
    pub(super) cfg: MqttConfig,
    pub(super) payload: Option<Jq>,
    pub(super) tls: Option<TlsConfiguration>,
    pub(super) ha: Option<(String, TopicTemplate)>,
    pub(super) overlay: Option<Overlay>,
    pub(super) brokers: HashMap<u64, Broker>,
    pub(super) permissions: crate::permission::Desk,
    pub(super) http: reqwest::Client,
    pub(super) cx: Context,
}

impl Sink for MqttSink {
    fn run(self: Box<Self>, input: Input) -> ComponentFuture {
        Box::pin(self.run_inner(input))
    }
}

impl MqttSink {
    async fn run_inner(mut self, mut input: Input) -> anyhow::Result<()> {
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<Vec<u8>>(64);
        if !self.cfg.broker.is_empty() {
            let t = Target {
                broker: self.cfg.broker.clone(),
                client_id: self.cfg.client_id.clone(),
                username: self.cfg.username.clone().filter(|u| !u.is_empty()),
                password: self.cfg.password.clone().filter(|p| !p.is_empty()),
                topic: self.cfg.topic.clone(),
            };
            self.connect(0, t, &cmd_tx)?;
        }
        self.reload(&cmd_tx);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = input.recv() => match ev {
                    Some(ev) => self.publish(ev).await,
                    None => break,
                },
                Some(cmd) = cmd_rx.recv() => self.command(&cmd),
                _ = tick.tick() => self.reload(&cmd_tx),
            }
        }
        for (_, b) in self.brokers.drain() {
            close(b, &self.cfg, &self.cx).await;
        }
        Ok(())
    }

    /// Applies the overlay file when it changed: connects new brokers, drops removed ones.
    fn reload(&mut self, cmd_tx: &mpsc::Sender<Vec<u8>>) {
        let Some(targets) = self.overlay.as_mut().and_then(|o| o.poll(&self.cx)) else { return };
        let wanted = targets
            .mqtt
            .into_iter()
            .filter(|m| m.enabled)
            .map(|m| {
                let t = Target {
                    broker: m.broker,
                    client_id: m.client_id,
                    username: m.username,
                    password: m.password,
                    topic: m.topic,
                };
                (m.id, t)
            })
            .collect();
        let (stop, start) = push_targets::plan(&self.brokers, |b| &b.target, wanted);
        for k in stop {
            let b = self.brokers.remove(&k).expect("running");
            tracing::info!(component = &*self.cx.id, broker = %b.target.broker, "push target removed or changed");
            let (cfg, cx) = (self.cfg.clone(), self.cx.clone());
            tokio::spawn(async move { close(b, &cfg, &cx).await });
        }
        for (k, t) in start {
            if let Err(e) = self.connect(k, t, cmd_tx) {
                self.cx.error(format_args!("push target {k}: {e}"));
            }
        }
    }

    fn connect(&mut self, key: u64, target: Target, cmd_tx: &mpsc::Sender<Vec<u8>>) -> anyhow::Result<()> {
        let (tls, host, port) = push_targets::parse_broker(&target.broker).map_err(|e| anyhow::anyhow!(e))?;
        if target.client_id.trim().is_empty() {
            anyhow::bail!("client_id is empty");
        }
        let topic = TopicTemplate::parse(&target.topic).map_err(|e| anyhow::anyhow!(e.message))?;
        let mut opts = MqttOptions::new(target.client_id.clone(), host, port);
        opts.set_keep_alive(Duration::from_secs(self.cfg.keep_alive_secs.max(5)));
        opts.set_request_channel_capacity(self.cfg.backlog.max_events);
        opts.set_clean_session(true);
        if let Some(user) = &target.username {
            opts.set_credentials(user.clone(), target.password.clone().unwrap_or_default());
        }
        if !self.cfg.availability_topic.is_empty() {
            opts.set_last_will(LastWill::new(&self.cfg.availability_topic, "offline", QoS::AtLeastOnce, true));
        }
        if tls {
            opts.set_transport(match &self.tls {
                Some(c) => Transport::tls_with_config(c.clone()),
                None => Transport::tls_with_default_config(),
            });
        }
        let (client, eventloop) = AsyncClient::new(opts, self.cfg.backlog.max_events);
        let listed_in = self.overlay.as_ref().filter(|_| key != 0).map(Overlay::shared);
        let connection = Connection::new(listed_in, "mqtt", key);
        let stop = CancellationToken::new();
        let driver = Driver {
            label: target.broker.clone(),
            client: client.clone(),
            connection: connection.clone(),
            availability: Some(self.cfg.availability_topic.clone()).filter(|t| !t.is_empty()),
            command: self.cfg.command_topic.clone().filter(|t| !t.is_empty()).map(|t| (t, cmd_tx.clone())),
            reconnect_max: Duration::from_millis(self.cfg.reconnect_max_ms.max(100)),
            cx: self.cx.clone(),
        };
        let task = tokio::spawn(driver.run(eventloop, stop.clone()));
        self.brokers.insert(key, Broker { target, topic, client, connection, announced: HashSet::new(), stop, task });
        Ok(())
    }

    fn body(&self, ev: &Event) -> Result<Vec<u8>, String> {
        if let Some(p) = &self.payload {
            return p.render(ev)?.ok_or_else(|| "the payload expression gave no output".to_string());
        }
        Ok(match &ev.payload {
            Payload::Status(s) => default_body(s).to_string().into_bytes(),
            _ => {
                let mut out = Vec::new();
                ev.write_json(&mut out);
                out
            }
        })
    }

    async fn publish(&mut self, ev: Event) {
        if let Payload::Status(s) = &ev.payload {
            self.track_permission(s);
        }
        let body = match self.body(&ev) {
            Ok(b) => b,
            Err(e) => {
                self.cx.error(format_args!("payload failed on a {} event: {e}", ev.kind()));
                return;
            }
        };
        let (q, retain) = (qos(self.cfg.qos), self.cfg.retain);
        let mut queued = false;
        for b in self.brokers.values_mut() {
            let mut extra = Vec::new();
            if let (Some((prefix, state)), Payload::Status(s)) = (&self.ha, &ev.payload) {
                if b.announced.insert(s.port) {
                    extra.push((
                        discovery_topic(prefix, &b.target.client_id, s.port),
                        discovery(&self.cfg, b, state, &ev, s),
                        true,
                    ));
                }
                extra.push((state.render(&ev), default_body(s).to_string().into_bytes(), true));
            }
            let topic = b.topic.render(&ev);
            for (topic, body, retain) in std::iter::once((topic, body.clone(), retain)).chain(extra) {
                let sent = match self.cfg.backlog.when_full {
                    WhenFull::DropNewest => b.client.try_publish(topic, q, retain, body).is_ok(),
                    WhenFull::Block => b.client.publish(topic, q, retain, body).await.is_ok(),
                };
                if !sent {
                    self.cx.metrics.dropped(DropReason::Full, 1);
                    tracing::debug!(component = &*self.cx.id, broker = %b.target.broker, "backlog full: status dropped");
                } else {
                    queued = true;
                }
            }
        }
        if queued {
            self.cx.metrics.sent(1);
        } else if self.brokers.is_empty() {
            self.cx.metrics.dropped(DropReason::Intentional, 1);
        }
    }
}

/// The seed's message: `{port, status, code, timestamp}` plus sessionID, tool, permissionID.
pub(super) fn default_body(s: &StatusInfo) -> Value {
    let mut v = json!({
        "port": s.port,
        "status": s.status,
        "code": s.code,
        "timestamp": s.timestamp,
        "sessionID": s.session_id,
        "tool": s.tool,
    });
    if let Some(id) = &s.permission_id {
        v["permissionID"] = json!(id);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_body_is_the_seeds_message() {
        let s = StatusInfo {
            port: 4096,
            code: "running".into(),
            status: "运行中: bash".into(),
            tool: Some("bash".into()),
            session_id: Some("ses_1".into()),
            timestamp: "2026-06-03T14:30:00Z".into(),
            ..Default::default()
        };
        assert_eq!(
            default_body(&s),
            json!({"port": 4096, "status": "运行中: bash", "code": "running", "timestamp": "2026-06-03T14:30:00Z",
                   "sessionID": "ses_1", "tool": "bash"})
        );
    }
}
