//! The `mqtt` sink against a real broker (Debian `mosquitto`, started by the test), and the `ble`
//! sink against BlueZ simulated by python3-dbusmock:
//! - a real `opencode serve` bash prompt: its statuses reach `mosquitto_sub` in order, the
//!   permission it asks for is answered by publishing `once` on the command topic, and the
//!   simulated light receives each status's mode;
//! - the broker is stopped for 30 s and started again: nothing within the backlog is lost, the
//!   backlog comes out in order, publishing resumes within 2 s; a small backlog drops (and
//!   counts) the overflow instead of growing;
//! - Home Assistant discovery announces one sensor per instance, not one per session;
//! - `mqtts` with a private CA and a password; the retained last will after `kill -9`; brokers
//!   added and disabled through the status API.
//!
//! Needs mosquitto and mosquitto_sub, dbus-daemon and python3-dbusmock (and npm, python3 for
//! OpenCode): skipped loudly when
//! missing, a failure under CI=true.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
use serde_json::Value;

/// `mosquitto_sub -v` on `topic`, lines collected in the background; returns once it is
/// subscribed (a probe published to the topic came through; probe lines are not kept).
fn mosquitto_sub(port: u16, topic: &str) -> (std::process::Child, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-v", "-t", topic])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let out = child.stdout.take().unwrap();
    let (ready, probed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.ends_with(PROBE) {
                let _ = ready.send(());
            } else {
                sink.lock().unwrap().push(line);
            }
        }
    });
    let probe_topic = topic.replace('#', "probe");
    let start = Instant::now();
    loop {
        let published = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", &probe_topic, "-m", PROBE])
            .status()
            .unwrap();
        assert!(published.success(), "mosquitto_pub works");
        if probed.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "mosquitto_sub never subscribed to {topic}");
    }
    (child, lines)
}

const PROBE: &str = "__ocpipe_test_subscribed__";

/// The JSON messages received on `topic`.
fn messages(lines: &Arc<Mutex<Vec<String>>>, topic: &str) -> Vec<Value> {
    let prefix = format!("{topic} ");
    lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|p| serde_json::from_str(p).ok())
        .collect()
}

#[test]
fn a_real_bash_prompt_reaches_mosquitto_sub_in_order_and_is_answered_over_mqtt() {
    let broker_dir = tempfile::tempdir().unwrap();
    let Some(broker) = Mosquitto::start(broker_dir.path()) else { return };
    let script = r#"[
      {"tool": "bash", "arguments": {"command": "echo hi", "description": "Say hi"}, "usage": {"prompt": 3000, "completion": 20}},
      {"reasoning": "Done thinking.", "text": "It printed hi.", "usage": {"prompt": 3100, "completion": 9}}
    ]"#;
    let Some(oc) = OpenCode::start(script) else { return };
    let Some(light) = BleLight::start(broker_dir.path()) else { return };
    oc.ask_before_bash();
    let port = free_port();
    let server = oc.serve(port);
    let (mut sub, lines) = mosquitto_sub(broker.port, "opencode/#");

    let ocpipe = Running::start(
        "pipelines/status-light.toml",
        &[
            ("OCPIPE_HTTP", format!("127.0.0.1:{}", free_port())),
            ("OCPIPE_DATA_DIR", oc.dir.path().join("ocpipe-state").display().to_string()),
            ("OCPIPE_MQTT_BROKER", broker.url()),
            ("OCPIPE_MQTT_COMMAND_TOPIC", "opencode/permission/reply".into()),
            ("OCPIPE_BLE_DEVICE", "AI-Light".into()),
            ("DBUS_SYSTEM_BUS_ADDRESS", light.bus.clone()),
        ],
    );
    wait_for("ocpipe online at the broker", Duration::from_secs(30), || {
        lines.lock().unwrap().iter().any(|l| l == "opencode/monitor/availability online").then_some(())
    });
    wait_for("ocpipe to discover the server", Duration::from_secs(30), || {
        ocpipe.log().contains(&format!("following {}", server.url)).then_some(())
    });

    let (session, permission) = start_bash_prompt(&server.url);
    let of_session = || -> Vec<Value> {
        messages(&lines, "opencode/status").into_iter().filter(|m| m["sessionID"] == session.as_str()).collect()
    };
    let asked = wait_for("the permission status at the subscriber", Duration::from_secs(20), || {
        of_session().into_iter().find(|m| m["code"] == "permission")
    });
    assert_eq!(asked["permissionID"], permission["id"], "{asked}");
    assert_eq!((asked["port"].as_u64(), asked["tool"].as_str()), (Some(u64::from(port)), Some("bash")));

    // Answer from MQTT: ocpipe replies to OpenCode's permission request.
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-t",
            "opencode/permission/reply",
            "-m",
            "once",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for("the session to end", Duration::from_secs(60), || {
        of_session().last().is_some_and(|m| m["code"] == "idle").then_some(())
    });
    let codes: Vec<String> = of_session().iter().map(|m| m["code"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        codes,
        [
            "busy",
            "using_tool",
            "running",
            "permission",
            "completed",
            "busy",
            "reasoning",
            "busy",
            "session_completed",
            "idle"
        ],
        "{:?}",
        lines.lock().unwrap()
    );
    let first = &of_session()[0];
    assert_eq!(first["status"], "工作中");
    assert!(first["timestamp"].as_str().unwrap().ends_with('Z'), "{first}");
    assert!(ocpipe.log().contains(&format!("permission {} answered `once`", permission["id"].as_str().unwrap())));
    // OpenCode ran the command: the permission really was granted.
    assert_eq!(http("GET", &format!("{}/permission", server.url), None).unwrap(), serde_json::json!([]));

    // The light showed each status's mode (the seed's table), repeats not written twice.
    wait_for("the light to show idle", Duration::from_secs(10), || {
        light.modes().last().is_some_and(|m| m == "idle").then_some(())
    });
    assert_eq!(
        light.modes(),
        ["busy", "ai", "alarm", "success", "busy", "thinking", "busy", "success", "idle"],
        "{}",
        ocpipe.log()
    );

    ocpipe.stop();
    wait_for("offline after shutdown", Duration::from_secs(10), || {
        lines.lock().unwrap().iter().any(|l| l == "opencode/monitor/availability offline").then_some(())
    });
    let _ = sub.kill();
    let _ = sub.wait();
}

/// What a subscriber received: (topic, payload, when).
type Received = Arc<Mutex<Vec<(String, String, Instant)>>>;

/// A subscriber with a persistent session that reconnects by itself: what the broker queued for
/// it while it was away arrives once it is back. Records (topic, payload, when).
/// Subscribes to `topic` and returns once the broker acknowledged the subscription (SUBACK).
async fn subscriber(port: u16, topic: &str) -> Received {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let (subscribed, suback) = tokio::sync::oneshot::channel::<()>();
    let mut subscribed = Some(subscribed);
    let mut opts = MqttOptions::new("test-subscriber", "127.0.0.1", port);
    opts.set_clean_session(false).set_keep_alive(Duration::from_secs(5));
    let (client, mut el) = AsyncClient::new(opts, 100);
    let topic = topic.to_string();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(&topic, QoS::AtLeastOnce).await;
                }
                Ok(rumqttc::Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(s) = subscribed.take() {
                        let _ = s.send(());
                    }
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => sink.lock().unwrap().push((
                    p.topic.clone(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                    Instant::now(),
                )),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), suback)
        .await
        .expect("the broker acknowledges the subscription")
        .unwrap();
    got
}

/// The sequence numbers received on `topic`, repeats (QoS 1 redeliveries) folded.
fn seqs(got: &Received, topic: &str) -> Vec<(usize, Instant)> {
    let mut seen = std::collections::HashSet::new();
    got.lock()
        .unwrap()
        .iter()
        .filter(|(t, _, _)| t == topic)
        .filter_map(|(_, p, at)| Some((p.parse::<usize>().ok()?, *at)))
        .filter(|(n, _)| seen.insert(*n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_second_broker_outage_loses_nothing_within_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut broker) = Mosquitto::start(dir.path()) else { return };
    let got = subscriber(broker.port, "#").await;
    let fed = start_sink(
        dir.path(),
        "mqtt",
        &format!(
            "broker = \"{}\"\ntopic = \"test/seq\"\npayload = '.title'\nhome_assistant = {{}}\nreconnect_max_ms = 1000\n",
            broker.url()
        ),
    );
    // 20 statuses a second from two instances; the broker is away from second 2 to second 32.
    let total = 700;
    let mut restarted = None;
    let start = Instant::now();
    for seq in 0..total {
        fed.tx.send(status(4096 + (seq % 2) as u16, seq)).await.unwrap();
        if seq == 40 {
            broker.stop();
        }
        if seq == 640 {
            broker.restart();
            restarted = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outage_secs = restarted.unwrap().duration_since(start).as_secs_f64() - 2.0;
    let m = fed.finish().await;
    let restarted = restarted.unwrap();
    let all = wait_for_async(Duration::from_secs(20), || {
        let s = seqs(&got, "test/seq");
        (s.len() == total).then_some(s)
    })
    .await
    .unwrap_or_else(|| seqs(&got, "test/seq"));
    let numbers: Vec<usize> = all.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (0..total).collect::<Vec<_>>(), "every status, in order (outage {outage_secs:.1} s)");
    assert_eq!((m.received, m.sent, m.dropped.total(), m.errors), (total as u64, total as u64, 0, 0));
    // Publishing resumed within 2 s of the broker coming back.
    let first_after = all.iter().find(|(_, at)| *at > restarted).map(|(_, at)| at.duration_since(restarted)).unwrap();
    eprintln!(
        "outage {outage_secs:.1} s; first message {:.0} ms after the broker came back",
        first_after.as_secs_f64() * 1e3
    );
    assert!(first_after < Duration::from_secs(2), "resumed after {first_after:?}");

    // Home Assistant: one retained sensor config per instance (two ports, seven sessions).
    let configs: Vec<(String, Value)> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, _)| t.starts_with("homeassistant/"))
        .map(|(t, p, _)| (t.clone(), serde_json::from_str(p).unwrap()))
        .collect();
    let mut topics: Vec<&str> = configs.iter().map(|(t, _)| t.as_str()).collect();
    topics.sort();
    topics.dedup();
    assert_eq!(
        topics,
        [
            "homeassistant/sensor/opencode-monitor/opencode-monitor_4096/config",
            "homeassistant/sensor/opencode-monitor/opencode-monitor_4097/config"
        ]
    );
    let c = &configs[0].1;
    assert_eq!(c["state_topic"], "opencode/instance/4096");
    assert_eq!(c["device"]["identifiers"], serde_json::json!(["opencode-monitor"]));
    assert_eq!(c["availability_topic"], "opencode/monitor/availability");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_drops_the_newest_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut broker) = Mosquitto::start(dir.path()) else { return };
    let got = subscriber(broker.port, "test/seq").await;
    let fed = start_sink(
        dir.path(),
        "mqtt",
        &format!(
            "broker = \"{}\"\ntopic = \"test/seq\"\npayload = '.title'\nbacklog = {{ max_events = 50 }}\n",
            broker.url()
        ),
    );
    fed.tx.send(status(4096, 0)).await.unwrap();
    wait_for_async(Duration::from_secs(5), || (seqs(&got, "test/seq").len() == 1).then_some(())).await.unwrap();
    broker.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for seq in 1..=500 {
        fed.tx.send(status(4096, seq)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.restart();
    let delivered = wait_for_async(Duration::from_secs(10), || {
        let s = seqs(&got, "test/seq");
        (s.len() >= 51).then_some(s)
    })
    .await
    .expect("the backlog is delivered after the restart");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = fed.finish().await;
    let numbers: Vec<usize> = seqs(&got, "test/seq").iter().map(|(n, _)| *n).collect();
    // The oldest statuses (up to the backlog's room) arrive in order; the rest were dropped.
    assert_eq!(numbers, (0..numbers.len()).collect::<Vec<_>>());
    assert!(numbers.len() <= 52, "bounded: {} delivered", numbers.len());
    assert_eq!(m.dropped.full + numbers.len() as u64, 501, "{m:?}, delivered {}", numbers.len());
    assert!(delivered.len() >= 51);
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl command.
fn certificates(dir: &std::path::Path) -> Option<()> {
    require("openssl")?;
    let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 \
  -subj "/CN=ocpipe test CA" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1"
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf
"#;
    let out = Command::new("bash").args(["-c", script]).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_password_and_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if certificates(d).is_none() {
        return;
    }
    let Some(_) = require("mosquitto_passwd") else { return };
    let out =
        Command::new("mosquitto_passwd").args(["-b", "-c"]).arg(d.join("passwd")).args(["lamp", "s3cret"]).output();
    assert!(out.unwrap().status.success());
    let listener = format!(
        "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nallow_anonymous false\npassword_file {0}/passwd\n",
        d.display()
    );
    let Some(broker) = Mosquitto::start_with(d, &listener) else { return };
    let port = broker.port.to_string();
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "--cafile"])
        .arg(d.join("ca.pem"))
        .args(["-u", "lamp", "-P", "s3cret", "-q", "1", "-C", "2", "-t", "lamp/#", "-v"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    let body = |password: &str| {
        format!(
            "broker = \"mqtts://127.0.0.1:{port}\"\nusername = \"lamp\"\npassword = \"{password}\"\n\
             topic = \"lamp/{{port}}\"\nretain = true\navailability_topic = \"\"\ntls = {{ ca_file = \"{}\" }}\n",
            d.join("ca.pem").display()
        )
    };
    // A wrong password: refused, nothing published, the sink still ends cleanly.
    let wrong = start_sink(d, "mqtt", &body("nope"));
    wrong.tx.send(status(4096, 0)).await.unwrap();
    // Finishing gives the broker two seconds to take it; it never does.
    let m = wrong.finish().await;
    assert_eq!((m.received, m.dropped.error), (1, 1), "not delivered: {m:?}");

    let fed = start_sink(d, "mqtt", &body("s3cret"));
    fed.tx.send(status(4096, 1)).await.unwrap();
    fed.tx.send(status(4097, 2)).await.unwrap();
    let m = fed.finish().await;
    assert_eq!((m.sent, m.dropped.total(), m.errors), (2, 0, 0), "{}", broker.log());
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output()).await.unwrap().unwrap();
    let got: Vec<(String, Value)> = text(&out.stdout)
        .lines()
        .map(|l| {
            let (t, p) = l.split_once(' ').unwrap();
            (t.to_string(), serde_json::from_str(p).unwrap())
        })
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].0.as_str(), got[0].1["code"].as_str()), ("lamp/4096", Some("idle")));
    assert_eq!((got[1].0.as_str(), got[1].1["code"].as_str()), ("lamp/4097", Some("busy")));
}

#[test]
fn brokers_added_through_the_status_api_are_published_to_and_dropped_when_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = Mosquitto::start(dir.path()) else { return };
    let (mut sub, lines) = mosquitto_sub(broker.port, "opencode/#");
    let http_port = free_port();
    let api = format!("http://127.0.0.1:{http_port}");
    // No broker configured: the mqtt sink only has what the page's API gives it.
    let ocpipe = Running::start(
        "pipelines/status-light.toml",
        &[
            ("OCPIPE_HTTP", format!("127.0.0.1:{http_port}")),
            ("OCPIPE_DATA_DIR", dir.path().join("state").display().to_string()),
        ],
    );
    wait_for("the API", Duration::from_secs(30), || http("GET", &format!("{api}/api/health"), None));
    let created = http("POST", &format!("{api}/api/mqtt"), Some(serde_json::json!({"broker": broker.url()}))).unwrap();
    let id = created["data"]["id"].as_u64().unwrap();
    wait_for("ocpipe online at the broker it was given", Duration::from_secs(10), || {
        lines.lock().unwrap().iter().any(|l| l == "opencode/monitor/availability online").then_some(())
    });
    // The API (and the page) say how the link is doing.
    let listed = http("GET", &format!("{api}/api/mqtt/{id}"), None).unwrap();
    assert_eq!(
        (listed["data"]["connected"].as_bool(), listed["data"]["state"].as_str()),
        (Some(true), Some("connected"))
    );
    if let Some(chromium) = require("chromium") {
        let dom = Command::new(chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
            .args(["--virtual-time-budget=3000", "--dump-dom", &api])
            .output()
            .unwrap();
        let dom = text(&dom.stdout);
        assert!(dom.contains(&format!(r#"data-target="mqtt-{id}" data-connected="true""#)), "{dom}");
    }
    http("PUT", &format!("{api}/api/mqtt/{id}"), Some(serde_json::json!({"enabled": false}))).unwrap();
    wait_for("offline once the target is disabled", Duration::from_secs(10), || {
        lines.lock().unwrap().iter().any(|l| l == "opencode/monitor/availability offline").then_some(())
    });
    let listed = wait_for("the API to say disabled", Duration::from_secs(5), || {
        let l = http("GET", &format!("{api}/api/mqtt/{id}"), None)?;
        (l["data"]["state"] == "disabled").then_some(l)
    });
    assert_eq!(listed["data"]["connected"], false);
    assert!(ocpipe.log().contains("push target removed or changed"), "{}", ocpipe.log());
    ocpipe.stop();
    let _ = sub.kill();
    let _ = sub.wait();
}

#[test]
fn the_last_will_marks_the_monitor_offline_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = Mosquitto::start(dir.path()) else { return };
    let (mut sub, lines) = mosquitto_sub(broker.port, "opencode/monitor/availability");
    let ocpipe = Running::start(
        "pipelines/status-light.toml",
        &[
            ("OCPIPE_HTTP", format!("127.0.0.1:{}", free_port())),
            ("OCPIPE_DATA_DIR", dir.path().join("state").display().to_string()),
            ("OCPIPE_MQTT_BROKER", broker.url()),
        ],
    );
    wait_for("online", Duration::from_secs(30), || {
        lines.lock().unwrap().iter().any(|l| l == "opencode/monitor/availability online").then_some(())
    });
    drop(ocpipe); // SIGKILL: no goodbye, only the will the broker holds
    wait_for("the will: offline", Duration::from_secs(10), || {
        lines.lock().unwrap().iter().any(|l| l == "opencode/monitor/availability offline").then_some(())
    });
    // Retained: a client that looks later still sees it.
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-t", "opencode/monitor/availability", "-C", "1"])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "offline");
    let _ = sub.kill();
    let _ = sub.wait();
}
