//! Benchmark: status latency through ocpipe, event in to WebSocket message (or MQTT message) out.
//!
//!     cargo bench --bench sse_latency [-- [mqtt] EVENTS_PER_SEC SECONDS]      (default 1000 10)
//!
//! A local SSE server shaped like `opencode serve` (`/session/status`, `/event`,
//! `/global/health`) sends `session.status` events at the given rate, each for a new session.
//! ocpipe (release build) runs `opencode_sse` (with this server's URL) -> `status` -> `websocket`
//! (or, with `mqtt`, -> `mqtt` publishing at QoS 1 to a mosquitto the bench starts); a WebSocket
//! client (or an MQTT subscriber) notes when each session's status arrives. Beside it, a client
//! reading the same SSE stream directly gives the transport's own latency, and with `mqtt` a
//! publisher sending the same statuses straight to the broker gives the broker's own round trip.
//! Prints p50 / p99 / max of each and the ratio. Target: p99 <= 5 ms.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;

type Sent = Arc<Mutex<HashMap<String, Instant>>>;

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64, usize) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99), *v.last().unwrap(), v.len())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mqtt = args.first().is_some_and(|a| a == "mqtt");
    if mqtt {
        args.remove(0);
    }
    let rate: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let root = env!("CARGO_MANIFEST_DIR");
    let status =
        std::process::Command::new("cargo").args(["build", "--release", "--quiet"]).current_dir(root).status()?;
    anyhow::ensure!(status.success(), "cargo build failed");

    // The OpenCode-shaped server.
    let (tx, _) = broadcast::channel::<String>(65536);
    let stream_tx = tx.clone();
    let app = Router::new()
        .route("/global/health", get(|| async { axum::Json(serde_json::json!({"healthy": true})) }))
        .route("/session/status", get(|| async { axum::Json(serde_json::json!({})) }))
        .route(
            "/event",
            get(move || {
                let rx = stream_tx.subscribe();
                async move {
                    let s: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>> = Box::pin(
                        futures::stream::once(async {
                            Ok(SseEvent::default().data(r#"{"type":"server.connected","properties":{}}"#))
                        })
                        .chain(tokio_stream_from(rx).map(|d| Ok(SseEvent::default().data(d)))),
                    );
                    Sse::new(s).keep_alive(KeepAlive::default())
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    // ocpipe.
    let dir = tempfile::tempdir()?;
    let ws_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let broker = if mqtt { Some(Broker::start(dir.path())?) } else { None };
    let sink = match &broker {
        Some(b) => format!("type = \"mqtt\"\nbroker = \"tcp://127.0.0.1:{}\"\ntopic = \"bench/status\"\n", b.port),
        None => format!("type = \"websocket\"\naddress = \"127.0.0.1:{ws_port}\"\n"),
    };
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[sources.sse]\ntype = \"opencode_sse\"\nurls = [\"{server}\"]\n\
             [transforms.status]\ntype = \"status\"\ninputs = [\"sse\"]\n\
             [sinks.out]\ninputs = [\"status\"]\n{sink}"
        ),
    )?;
    let mut ocpipe = tokio::process::Command::new(format!("{root}/target/release/ocpipe"))
        .args(["--log-level", "warn", "run"])
        .arg(&pipeline)
        .env("OCPIPE_DATA_DIR", dir.path().join("state"))
        .kill_on_drop(true)
        .spawn()?;

    // Clients: through ocpipe, and straight from the SSE stream.
    let sent: Sent = Arc::default();
    let through: Arc<Mutex<Vec<f64>>> = Arc::default();
    let direct: Arc<Mutex<Vec<f64>>> = Arc::default();
    let floor: Arc<Mutex<Vec<f64>>> = Arc::default();
    let record = |sent: &Sent, into: &Arc<Mutex<Vec<f64>>>, v: &serde_json::Value, now: Instant| {
        let key = format!("{}:{}", v["sessionID"].as_str().unwrap_or(""), v["code"].as_str().unwrap_or(""));
        if let Some(t) = sent.lock().unwrap().get(&key) {
            into.lock().unwrap().push(now.duration_since(*t).as_secs_f64() * 1000.0);
        }
    };
    let publisher = match &broker {
        Some(b) => {
            // One subscriber for both topics: ocpipe's statuses and the direct publisher's.
            let (sub, mut el) =
                rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("bench-sub", "127.0.0.1", b.port), 65536);
            sub.subscribe("bench/#", rumqttc::QoS::AtLeastOnce).await?;
            let (sent, through, floor) = (sent.clone(), through.clone(), floor.clone());
            tokio::spawn(async move {
                while let Ok(ev) = el.poll().await {
                    let now = Instant::now();
                    if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev
                        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload)
                    {
                        let into = if p.topic == "bench/status" { &through } else { &floor };
                        record(&sent, into, &v, now);
                    }
                }
            });
            let (publisher, mut el) =
                rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("bench-pub", "127.0.0.1", b.port), 65536);
            tokio::spawn(async move { while el.poll().await.is_ok() {} });
            Some(publisher)
        }
        None => {
            let mut ws = loop {
                match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{ws_port}/ws")).await {
                    Ok((ws, _)) => break ws,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            let (sent, through) = (sent.clone(), through.clone());
            tokio::spawn(async move {
                while let Some(Ok(m)) = ws.next().await {
                    let now = Instant::now();
                    let Ok(text) = m.to_text() else { continue };
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else { continue };
                    record(&sent, &through, &v, now);
                }
            });
            None
        }
    };
    {
        let (sent, direct, url) = (sent.clone(), direct.clone(), format!("{server}/event"));
        tokio::spawn(async move {
            use eventsource_stream::Eventsource;
            let resp = reqwest::get(url).await.unwrap();
            let mut s = resp.bytes_stream().eventsource();
            while let Some(Ok(ev)) = s.next().await {
                let now = Instant::now();
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&ev.data) else { continue };
                let p = &v["properties"];
                let code = p["status"]["type"].as_str().unwrap_or("");
                let key = format!("{}:{code}", p["sessionID"].as_str().unwrap_or(""));
                if let Some(t) = sent.lock().unwrap().get(&key) {
                    direct.lock().unwrap().push(now.duration_since(*t).as_secs_f64() * 1000.0);
                }
            }
        });
    }
    // Wait until ocpipe follows the stream (two subscribers: ocpipe and the direct client).
    let start = Instant::now();
    while tx.receiver_count() < 2 {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "ocpipe did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let total = rate * seconds;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        tick.tick().await;
        let session = format!("ses_bench{i:08}");
        let kind = "busy";
        let data = format!(
            r#"{{"type":"session.status","properties":{{"sessionID":"{session}","status":{{"type":"{kind}"}}}}}}"#
        );
        sent.lock().unwrap().insert(format!("{session}:{kind}"), Instant::now());
        let _ = tx.send(data);
        if let Some(p) = &publisher {
            let direct = serde_json::json!({"sessionID": session, "code": kind}).to_string();
            let _ = p.try_publish("bench/direct", rumqttc::QoS::AtLeastOnce, false, direct);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = ocpipe.kill().await;

    let (through, direct) = (through.lock().unwrap().clone(), direct.lock().unwrap().clone());
    anyhow::ensure!(!through.is_empty() && !direct.is_empty(), "no statuses arrived");
    let (t50, t99, tmax, tn) = percentiles(through);
    let (d50, d99, dmax, dn) = percentiles(direct);
    let out = if mqtt { "mqtt -> mosquitto -> subscriber" } else { "websocket" };
    println!("\n{total} events at {rate}/s over {seconds} s");
    println!("{:66} {:>8} {:>8} {:>8} {:>8}", "", "p50 ms", "p99 ms", "max ms", "received");
    println!("{:66} {t50:8.3} {t99:8.3} {tmax:8.3} {tn:8}", format!("event in -> ocpipe (sse, status, {out})"));
    println!("{:66} {d50:8.3} {d99:8.3} {dmax:8.3} {dn:8}", "baseline: the SSE stream read directly");
    let floor = floor.lock().unwrap().clone();
    if !floor.is_empty() {
        let (f50, f99, fmax, fn_) = percentiles(floor);
        println!("{:66} {f50:8.3} {f99:8.3} {fmax:8.3} {fn_:8}", "baseline: publisher -> mosquitto -> subscriber");
    }
    println!(
        "ocpipe adds {:.3} ms at p50, {:.3} ms at p99 ({:.1}x the direct p99); target p99 <= 5 ms: {}",
        t50 - d50,
        t99 - d99,
        t99 / d99.max(1e-9),
        if t99 <= 5.0 { "met" } else { "NOT met" }
    );
    Ok(())
}

/// A private mosquitto on a free port, stopped when dropped.
struct Broker {
    child: std::process::Child,
    port: u16,
}

impl Broker {
    fn start(dir: &std::path::Path) -> anyhow::Result<Broker> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"))?;
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"].into_iter().find(|p| std::path::Path::new(p).exists());
        let bin = bin.ok_or_else(|| anyhow::anyhow!("mosquitto is not installed (apt-get install mosquitto)"))?;
        let child = std::process::Command::new(bin).arg("-c").arg(&conf).stderr(std::process::Stdio::null()).spawn()?;
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Broker { child, port })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broadcast receiver as a stream (lagging subscribers skip what they missed).
fn tokio_stream_from(rx: broadcast::Receiver<String>) -> impl Stream<Item = String> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(v) => return Some((v, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
