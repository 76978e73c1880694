//! One broker's connection: the task driving rumqttc's event loop (reconnects with backoff,
//! carries unacknowledged messages over) and the goodbye at shutdown.

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, Outgoing, Packet, QoS, Request};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::component::Context;
use crate::metrics::DropReason;
use crate::sinks::push_targets::Connection;

use super::MqttConfig;
use super::sink::Broker;

/// Says goodbye to a broker: `offline`, then a clean disconnect once the backlog is out. A broker
/// that is not connected gets two seconds to connect; then what it still holds is counted as
/// dropped.
pub(super) async fn close(b: Broker, cfg: &MqttConfig, cx: &Context) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !b.connection.is_up() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if b.connection.is_up() {
        if !cfg.availability_topic.is_empty() {
            let _ = b.client.publish(&cfg.availability_topic, QoS::AtLeastOnce, true, "offline").await;
        }
        let _ = b.client.disconnect().await;
    } else {
        b.stop.cancel();
    }
    let mut task = b.task;
    let lost = match tokio::time::timeout(Duration::from_secs(3), &mut task).await {
        Ok(r) => r.unwrap_or(0),
        Err(_) => {
            b.stop.cancel();
            task.await.unwrap_or(0)
        }
    };
    if lost > 0 {
        cx.metrics.dropped(DropReason::Error, lost as u64);
        tracing::warn!(component = &*cx.id, broker = %b.target.broker, "{lost} messages not delivered: the broker was unreachable at shutdown");
    }
}

/// Drives one broker's rumqttc event loop: reconnects with backoff and carries what the broker
/// had not acknowledged over to the next connection.
pub(super) struct Driver {
    pub(super) label: String,
    pub(super) client: AsyncClient,
    pub(super) connection: Connection,
    pub(super) availability: Option<String>,
    pub(super) command: Option<(String, mpsc::Sender<Vec<u8>>)>,
    pub(super) reconnect_max: Duration,
    pub(super) cx: Context,
}

impl Driver {
    /// Returns how many messages were still waiting when it was stopped (0 after a clean
    /// disconnect).
    pub(super) async fn run(self, mut el: EventLoop, stop: CancellationToken) -> usize {
        let first = Duration::from_millis(100);
        let mut backoff = first;
        let mut saved: VecDeque<Request> = VecDeque::new();
        let mut down_since: Option<std::time::Instant> = Some(std::time::Instant::now());
        let mut warned = false;
        loop {
            let polled = tokio::select! {
                _ = stop.cancelled() => break,
                p = el.poll() => p,
            };
            match polled {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                    // A new session: rumqttc forgot its unacknowledged messages; put them back first.
                    if !saved.is_empty() {
                        let waiting = saved.len() + el.pending.len();
                        saved.extend(el.pending.drain(..));
                        el.pending = std::mem::take(&mut saved);
                        tracing::info!(component = &*self.cx.id, broker = %self.label, "{waiting} waiting messages go out first");
                    }
                    self.connection.set(true, &"connected");
                    let after = down_since.take().map(|t| t.elapsed()).unwrap_or_default();
                    if warned {
                        tracing::warn!(component = &*self.cx.id, broker = %self.label, "reconnected after {:.1} s", after.as_secs_f64());
                    } else {
                        tracing::info!(component = &*self.cx.id, broker = %self.label, "connected");
                    }
                    warned = false;
                    backoff = first;
                    if let Some(t) = &self.availability {
                        let _ = self.client.try_publish(t, QoS::AtLeastOnce, true, "online");
                    }
                    if let Some((t, _)) = &self.command {
                        let _ = self.client.try_subscribe(t, QoS::AtLeastOnce);
                    }
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                    if let Some((t, tx)) = &self.command
                        && p.topic == *t
                    {
                        let _ = tx.try_send(p.payload.to_vec());
                    }
                }
                Ok(rumqttc::Event::Outgoing(Outgoing::Disconnect)) => {
                    self.connection.close();
                    return 0;
                }
                Ok(_) => {}
                Err(e) => {
                    self.connection.set(false, &e);
                    down_since.get_or_insert_with(std::time::Instant::now);
                    saved.extend(el.pending.drain(..).filter(|r| matches!(r, Request::Publish(_))));
                    if !warned {
                        warned = true;
                        tracing::warn!(
                            component = &*self.cx.id,
                            broker = %self.label,
                            "no connection to the broker: {e}; retrying every {} ms at most, {} messages waiting",
                            self.reconnect_max.as_millis(),
                            saved.len()
                        );
                    }
                    let jitter = 0.8 + rand::random::<f64>() * 0.4;
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                    }
                    backoff = (backoff * 2).min(self.reconnect_max);
                }
            }
        }
        // Stopped without a clean disconnect: count what never reached the broker (or was not
        // acknowledged by it), including what still waits in the client's channel.
        self.connection.close();
        el.clean();
        saved.len() + el.pending.iter().filter(|r| matches!(r, Request::Publish(_))).count()
    }
}
