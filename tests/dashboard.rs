//! The main job's page as a user has it: `pipelines/monitor.toml` over a copy of the stored
//! OpenCode 1.18.33 data (with a fork, and a title holding markup): `/api/usage` equals
//! `ocpipe stats --json` for every range and grouping; a message committed while it runs is told
//! over the WebSocket and counted within a second; after a restart the figures are back at once
//! (not from zero, not twice); in headless Chromium the page shows those totals and the markup as
//! text.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A headless Chromium showing one page, driven over the DevTools protocol.
struct Browser {
    child: std::process::Child,
    page_ws: String,
    rt: tokio::runtime::Runtime,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(chromium: &std::path::Path, url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = l.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(at.to_string());
                }
            }
        });
        let devtools = rx.recv_timeout(Duration::from_secs(20)).expect("Chromium says where DevTools listen");
        let base = devtools.replace("ws://", "http://");
        let base = base[..base.find("/devtools").unwrap()].to_string();
        let page_ws = wait_for("the page target", Duration::from_secs(10), || {
            let list = http("GET", &format!("{base}/json/list"), None)?;
            list.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"].as_str().map(str::to_string)
        });
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Browser { child, page_ws, rt, _profile: profile }
    }

    /// The value of a JavaScript expression on the page.
    fn eval(&self, expression: &str) -> Option<Value> {
        self.rt.block_on(async {
            use futures::{SinkExt, StreamExt};
            let (mut ws, _) = tokio_tungstenite::connect_async(self.page_ws.as_str()).await.ok()?;
            let ask = serde_json::json!({"id": 1, "method": "Runtime.evaluate",
                "params": {"expression": expression, "returnByValue": true, "awaitPromise": true}});
            ws.send(tokio_tungstenite::tungstenite::Message::Text(ask.to_string().into())).await.ok()?;
            while let Some(Ok(m)) = ws.next().await {
                let v: Value = serde_json::from_str(m.to_text().ok()?).ok()?;
                if v["id"] == 1 {
                    return Some(v["result"]["result"]["value"].clone());
                }
            }
            None
        })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MARKUP: &str = r#"<img src=x onerror="document.title='pwned'">"#;

struct Dash {
    dir: tempfile::TempDir,
    port: u16,
}

impl Dash {
    fn new() -> Dash {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data/opencode");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::copy(root().join("fixtures/storage/v1.18.33-fork/opencode.db"), data.join("opencode.db")).unwrap();
        let conn = rusqlite::Connection::open(data.join("opencode.db")).unwrap();
        // Markup in every name the page shows: a title, a directory, a model, an agent.
        conn.execute("UPDATE session SET title = ?1 WHERE rowid = (SELECT min(rowid) FROM session)", [MARKUP]).unwrap();
        conn.execute("UPDATE session SET directory = ?1 WHERE rowid = (SELECT max(rowid) FROM session)", [MARKUP])
            .unwrap();
        conn.execute(
            "UPDATE message SET data = json_set(data, '$.modelID', ?1, '$.agent', ?1)
             WHERE rowid = (SELECT max(rowid) FROM message WHERE json_extract(data, '$.role') = 'assistant')",
            [MARKUP],
        )
        .unwrap();
        Dash { dir, port: free_port() }
    }

    /// Over a generated history of the last 90 days (so every range has something).
    fn generated() -> Dash {
        let d = Dash::new();
        let db = d.dir.path().join("data/opencode/opencode.db");
        std::fs::remove_file(&db).unwrap();
        let made = Command::new("python3")
            .arg(root().join("benches/gen_opencode_db.py"))
            .arg(&db)
            .args(["3000", "11"])
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", text(&made.stderr));
        d
    }

    fn start(&self) -> Running {
        let p = |s: &str| self.dir.path().join(s).display().to_string();
        let env = [
            ("XDG_DATA_HOME", p("data")),
            ("HOME", p("home")),
            ("OCPIPE_OUT", p("out")),
            ("OCPIPE_DATA_DIR", p("state")),
            ("OCPIPE_HTTP", format!("127.0.0.1:{}", self.port)),
        ];
        Running::start("pipelines/monitor.toml", &env)
    }

    /// OpenCode commits an assistant message (a copy of one, `input` tokens) as 1.18 does: the
    /// row and its `message.updated` change-feed entry.
    fn commit_message(&self, name: &str, input: u64) {
        let conn = rusqlite::Connection::open(self.dir.path().join("data/opencode/opencode.db")).unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO message (id, session_id, time_created, time_updated, data)
               SELECT 'msg_{name}', session_id, time_created + 5, time_updated,
                      json_set(data, '$.id', 'msg_{name}', '$.sessionID', session_id, '$.tokens.input', {input},
                               '$.time.created', time_created + 5)
               FROM message WHERE json_extract(data, '$.role') = 'assistant' LIMIT 1;
             INSERT INTO event (id, aggregate_id, seq, type, data)
               SELECT 'evt_{name}', session_id, (SELECT count(*) FROM event) + 10000, 'message.updated.1',
                      json_object('sessionID', session_id, 'info', json(data))
               FROM message WHERE id = 'msg_{name}';"
        ))
        .unwrap();
    }

    fn data(&self) -> String {
        self.dir.path().join("data/opencode").display().to_string()
    }

    fn api(&self, path: &str) -> Option<Value> {
        let body = http("GET", &format!("http://127.0.0.1:{}{path}", self.port), None)?;
        (body["code"] == 0).then(|| body["data"].clone())
    }

    fn stats(&self, range: &str, by: &str) -> Value {
        stats_json(&["--data-dir", &self.data(), "--range", range, "--by", by])
    }

    fn total_messages(&self) -> Option<i64> {
        self.api("/api/usage?range=all&by=all")?["totals"]["messages"].as_i64()
    }
}

/// Equal, costs to the last few bits (sums of floats in another order).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-9 * x.abs().max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn same_as_stats(d: &Dash) {
    for range in ["today", "week", "month", "all"] {
        for by in ["model", "project", "agent", "session", "day"] {
            let page = d.api(&format!("/api/usage?range={range}&by={by}")).expect("usage answers");
            let stats = d.stats(range, by);
            for k in ["totals", "fork_copies", "groups"] {
                assert!(same(&page[k], &stats[k]), "{range} by {by}: {k}:\n{}\n{}", page[k], stats[k]);
            }
        }
    }
}

/// The page of every range over a generated 90-day history: its totals and model rows are
/// `ocpipe stats`'s, as its API's are for every grouping.
#[test]
fn every_range_on_the_page_equals_stats_over_a_generated_history() {
    let Some(_) = require("python3") else { return };
    let d = Dash::generated();
    let want = d.stats("all", "model")["totals"]["messages"].as_i64().unwrap();
    let run = d.start();
    wait_for("the backfill on the page", Duration::from_secs(60), || (d.total_messages()? == want).then_some(()));
    same_as_stats(&d);
    let Some(chromium) = require("chromium") else { return };
    for range in ["today", "week", "month", "all"] {
        let stats = d.stats(range, "model");
        let page = format!("http://127.0.0.1:{}/?range={range}&lang=en", d.port);
        let dom = Command::new(&chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
            .args(["--virtual-time-budget=5000", "--dump-dom", &page])
            .output()
            .unwrap();
        let dom = text(&dom.stdout);
        assert!(dom.contains(&format!("data-range=\"{range}\"")), "{range}: {dom}");
        for k in ["input", "output", "total", "messages", "sessions"] {
            let want = format!("data-{k}=\"{}\"", stats["totals"][k]);
            assert!(dom.contains(&want), "{range}: {want} on the page");
        }
        for g in stats["groups"].as_array().unwrap() {
            let row = format!("data-key=\"{}\" data-total=\"{}\"", g["key"].as_str().unwrap(), g["total"]);
            assert!(dom.contains(&row), "{range}: {row} on the page");
        }
    }
    run.stop();
}

#[test]
fn the_page_answers_usage_as_stats_live_and_after_a_restart() {
    let d = Dash::new();
    let want = d.stats("all", "model")["totals"]["messages"].as_i64().unwrap();
    let run = d.start();
    wait_for("the backfill on the page", Duration::from_secs(30), || (d.total_messages()? == want).then_some(()));
    same_as_stats(&d);
    let sessions = d.api("/api/sessions?range=all").unwrap();
    let list = sessions["sessions"].as_array().unwrap();
    assert!(list.iter().any(|s| s["title"] == MARKUP), "titles as stored: {sessions}");
    let id = list[0]["id"].as_str().unwrap();
    let msgs = d.api(&format!("/api/sessions/{id}/messages")).unwrap();
    assert!(!msgs["messages"].as_array().unwrap().is_empty());
    let bad = http("GET", &format!("http://127.0.0.1:{}/api/usage?range=year", d.port), None);
    assert!(bad.is_none(), "an unknown range is a 400");

    // Live: a message committed while the page is open is announced and counted within a second.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = format!("ws://127.0.0.1:{}/ws", d.port);
    let (mut ws, _) = rt.block_on(tokio_tungstenite::connect_async(&url)).expect("the WebSocket opens");
    let committed = Instant::now();
    d.commit_message("live", 4321);
    let told = rt.block_on(async {
        use futures::StreamExt;
        tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(m)) = ws.next().await {
                if m.to_text().is_ok_and(|t| t.contains("\"usage\"")) {
                    return Some(committed.elapsed());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    });
    let told = told.expect("the page is told usage changed");
    assert!(told < Duration::from_secs(1), "told after {told:?}");
    assert_eq!(d.total_messages(), Some(want + 1));
    same_as_stats(&d);
    run.stop();

    // A restart: the figures are there at once (restored), counted once.
    let again = d.start();
    wait_for("the page after the restart", Duration::from_secs(30), || d.api("/api/usage?range=all&by=all"));
    assert_eq!(d.total_messages(), Some(want + 1), "restored, not from zero and not twice");
    same_as_stats(&d);

    // The page in headless Chromium: the totals of `ocpipe stats`, markup shown as text.
    if let Some(chromium) = require("chromium") {
        let page = format!("http://127.0.0.1:{}/?range=all&lang=en", d.port);
        let headless =
            ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"];
        let dom = Command::new(&chromium)
            .args(headless)
            .args(["--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0", "--dump-dom", &page])
            .output()
            .unwrap();
        let console = text(&dom.stderr);
        assert!(!console.contains("Uncaught"), "a script error on the page: {console}");
        let dom = text(&dom.stdout);
        // Screenshots at desktop and phone widths, kept as test artifacts (not committed).
        let artifacts = root().join("target/test-artifacts");
        std::fs::create_dir_all(&artifacts).unwrap();
        for (name, size) in [("dashboard-desktop.png", "1280,800"), ("dashboard-phone.png", "390,844")] {
            let shot = artifacts.join(name);
            let _ = std::fs::remove_file(&shot);
            Command::new(&chromium)
                .args(headless)
                .args(["--virtual-time-budget=5000", &format!("--window-size={size}")])
                .arg(format!("--screenshot={}", shot.display()))
                .arg(&page)
                .output()
                .unwrap();
            assert!(shot.metadata().is_ok_and(|m| m.len() > 10_000), "{name} taken");
        }
        let totals = d.stats("all", "model")["totals"].clone();
        for (attr, k) in [("input", "input"), ("output", "output"), ("total", "total"), ("messages", "messages")] {
            let want = format!("data-{attr}=\"{}\"", totals[k]);
            assert!(dom.contains(&want), "{want} on the page: {dom}");
        }
        // The title, the directory and the model name show as text, and never run.
        assert!(dom.matches("&lt;img src=x onerror=").count() >= 3, "names show as text: {dom}");
        assert!(!dom.contains("<img") && !dom.contains("<title>pwned"), "markup never runs: {dom}");
    }
    again.stop();
}

/// A bash call that needs permission, asked by a real `opencode serve` the main job found by
/// itself: the page shows the request with its buttons, the answer it sends (same origin) goes
/// to that server, and OpenCode carries on; another origin may not answer.
#[test]
fn a_permission_asked_by_a_real_opencode_serve_is_answered_from_the_page() {
    let script = r#"[
      {"tool": "bash", "arguments": {"command": "echo hi", "description": "Say hi"}, "usage": {"prompt": 3000, "completion": 20}},
      {"text": "It printed hi.", "usage": {"prompt": 3100, "completion": 9}}
    ]"#;
    let Some(oc) = OpenCode::start(script) else { return };
    oc.ask_before_bash();
    let server = oc.serve(free_port());
    let port = free_port();
    let page = format!("http://127.0.0.1:{port}");
    let mut env: Vec<(&str, String)> = vec![
        ("OCPIPE_HTTP", format!("127.0.0.1:{port}")),
        ("OCPIPE_OUT", oc.dir.path().join("out").display().to_string()),
        ("OCPIPE_DATA_DIR", oc.dir.path().join("ocpipe-state").display().to_string()),
    ];
    let isolated = oc.env();
    env.extend(isolated.iter().map(|(k, v)| (k.as_str(), v.display().to_string())));
    let ocpipe = Running::start("pipelines/monitor.toml", &env);
    wait_for("ocpipe to discover the server", Duration::from_secs(30), || {
        ocpipe.log().contains(&format!("following {}", server.url)).then_some(())
    });
    let (session, permission) = start_bash_prompt(&server.url);
    let id = permission["id"].as_str().unwrap().to_string();
    let waiting = wait_for("the request on the page's API", Duration::from_secs(10), || {
        let list = http("GET", &format!("{page}/api/permissions"), None)?;
        list["data"].as_array()?.iter().find(|w| w["permissionID"] == id.as_str()).cloned()
    });
    assert_eq!((waiting["sessionID"].as_str(), waiting["tool"].as_str()), (Some(session.as_str()), Some("bash")));

    let reply = |origin: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "POST",
                &format!("{page}/api/permissions/reply"),
            ])
            .args(["-H", "content-type: application/json", "-H", &format!("Origin: {origin}")])
            .args(["-d", &serde_json::json!({"reply": "once", "permissionID": id}).to_string()])
            .output()
            .unwrap();
        text(&out.stdout)
    };
    assert_eq!(reply("http://evil.example"), "403", "another origin may not answer");
    // The page shows the request; its "Allow once" button answers it.
    if let Some(chromium) = require("chromium") {
        let browser = Browser::open(&chromium, &format!("{page}/?lang=en"));
        let button = format!("document.querySelector('[data-permission=\"{id}\"] [data-reply=once]')");
        wait_for("the request's buttons on the page", Duration::from_secs(10), || {
            browser.eval(&format!("!!{button}"))?.as_bool()?.then_some(())
        });
        browser.eval(&format!("{button}.click()"));
        let answered = wait_for("the page to say it was answered", Duration::from_secs(10), || {
            let v = browser.eval("document.body.dataset.lastAnswer ?? ''")?;
            v.as_str().filter(|a| !a.is_empty()).map(str::to_string)
        });
        assert_eq!(answered, format!("{id}:once"));
    } else {
        assert_eq!(reply(&page), "200", "the page's own origin answers");
    }
    // OpenCode carries on: the bash call runs and the reply after it arrives.
    wait_for("OpenCode to finish the session", Duration::from_secs(60), || {
        let msgs = http("GET", &format!("{}/session/{session}/message", server.url), None)?;
        msgs.to_string().contains("It printed hi.").then_some(())
    });
    assert!(http("GET", &format!("{page}/api/permissions"), None).unwrap()["data"].as_array().unwrap().is_empty());
    ocpipe.stop();
}

/// The page in a running headless Chromium (driven over the DevTools protocol): a message
/// committed while it is open changes the total it shows within a second, without a reload.
#[test]
fn the_open_page_shows_a_new_message_within_a_second_without_a_reload() {
    let Some(chromium) = require("chromium") else { return };
    let d = Dash::new();
    let want = d.stats("all", "model")["totals"]["total"].as_i64().unwrap();
    let run = d.start();
    wait_for("the backfill on the page", Duration::from_secs(30), || {
        (d.api("/api/usage?range=all&by=all")?["totals"]["total"].as_i64()? == want).then_some(())
    });
    let browser = Browser::open(&chromium, &format!("http://127.0.0.1:{}/?range=all&lang=en", d.port));
    let shown =
        || browser.eval("document.getElementById('totals')?.dataset.total ?? ''")?.as_str()?.parse::<i64>().ok();
    wait_for("the page to show the total", Duration::from_secs(20), || (shown()? == want).then_some(()));
    d.commit_message("seen", 1000);
    let committed = Instant::now();
    let grown = d.stats("all", "model")["totals"]["total"].as_i64().unwrap();
    assert!(grown > want);
    wait_for("the page to show the new total", Duration::from_secs(5), || (shown()? == grown).then_some(()));
    let took = committed.elapsed();
    assert!(took < Duration::from_secs(1), "the open page showed it after {took:?}");
    drop(browser);
    run.stop();
}
