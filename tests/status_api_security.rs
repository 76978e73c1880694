//! The status API (`websocket` sink) is closed to other sites: Host checked (DNS rebinding),
//! no CORS unless configured, no change from another origin, tokens in headers, secrets
//! write-only, the sinks' own validation, bodies too large refused as such, errors always in the
//! envelope, hand edits of `push-targets.toml` kept; and a hostile page in headless Chromium
//! can neither add a broker nor read one.

mod common;

use common::*;
use serde_json::{Value, json};

struct Api {
    url: String,
    port: u16,
    dir: tempfile::TempDir,
    _fed: Fed,
}

async fn start(extra: &str) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let fed = start_sink(dir.path(), "websocket", &format!("address = \"127.0.0.1:{port}\"\n{extra}"));
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if reqwest::get(format!("{url}/api/health")).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Api { url, port, dir, _fed: fed }
}

fn targets_file(dir: &std::path::Path) -> std::path::PathBuf {
    files_below(dir)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "push-targets.toml"))
        .unwrap_or_else(|| panic!("no push-targets.toml under {}", dir.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_origins_and_tokens() {
    let api = start("token = \"t0ken\"\nallowed_hosts = [\"monitor.lan\"]").await;
    let c = reqwest::Client::new();
    let get =
        |path: &str, host: &str| c.get(format!("{}{path}", api.url)).header("host", host).bearer_auth("t0ken").send();
    // DNS rebinding: another name for 127.0.0.1 is refused; loopback names, IPs and allowed ones are served.
    assert_eq!(get("/api/health", "evil.example:80").await.unwrap().status(), 403);
    for host in [format!("127.0.0.1:{}", api.port), format!("localhost:{}", api.port), "monitor.lan".into()] {
        assert_eq!(get("/api/health", &host).await.unwrap().status(), 200, "{host}");
    }
    // No CORS by default: another origin may not read, the page's own may.
    let from = |origin: &str| {
        c.get(format!("{}/api/status", api.url)).header("origin", origin.to_string()).bearer_auth("t0ken").send()
    };
    let foreign = from("http://evil.example").await.unwrap();
    assert_eq!(foreign.status(), 403);
    assert!(foreign.headers().get("access-control-allow-origin").is_none());
    assert_eq!(from(&api.url).await.unwrap().status(), 200);
    // The token: a header for the API; the query parameter only for the page and /ws.
    let post = |q: &str, bearer: bool| {
        let mut r = c.post(format!("{}/api/ble{q}", api.url)).json(&json!({}));
        if bearer {
            r = r.bearer_auth("t0ken");
        }
        r.send()
    };
    assert_eq!(post("?token=t0ken", false).await.unwrap().status(), 401);
    assert_eq!(c.get(format!("{}/api/status?token=t0ken", api.url)).send().await.unwrap().status(), 401);
    assert_eq!(c.get(format!("{}/?token=t0ken", api.url)).send().await.unwrap().status(), 200);
    assert_eq!(post("", true).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_cors_reads_but_never_changes() {
    let api = start("cors_origins = [\"*\"]").await;
    let c = reqwest::Client::new();
    let read = c.get(format!("{}/api/status", api.url)).header("origin", "http://evil.example").send().await.unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.headers()["access-control-allow-origin"], "*");
    let change = c
        .post(format!("{}/api/mqtt", api.url))
        .header("origin", "http://evil.example")
        .json(&json!({"broker": "tcp://127.0.0.1:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(change.status(), 403);
    assert_eq!(change.json::<Value>().await.unwrap()["code"], -1);
    let list: Value = c.get(format!("{}/api/mqtt", api.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["data"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_validation_limits_envelopes_and_hand_edits() {
    let api = start("").await;
    let c = reqwest::Client::new();
    let post = |path: &str, body: Value| c.post(format!("{}{path}", api.url)).json(&body).send();
    let created: Value =
        post("/api/mqtt", json!({"broker": "tcp://127.0.0.1:1883", "username": "u", "password": "pw"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(
        (created["data"]["password"].clone(), created["data"]["has_password"].clone()),
        (Value::Null, json!(true))
    );
    let listed: Value = c.get(format!("{}/api/mqtt", api.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"][0]["password"], Value::Null, "secrets are write-only");
    assert_eq!(listed["data"][0]["has_password"], true);
    // A PUT without `password` keeps the stored one.
    let put = c.put(format!("{}/api/mqtt/1", api.url)).json(&json!({"topic": "t/x"})).send().await.unwrap();
    assert_eq!(put.status(), 200);
    let file = targets_file(api.dir.path());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("password = \"pw\"") && text.contains("topic = \"t/x\""), "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    // What the sinks refuse, the API refuses.
    for (path, body) in [
        ("/api/mqtt", json!({"broker": "tcp://127.0.0.1:1883", "topic": "#"})),
        ("/api/mqtt", json!({"broker": "tcp://127.0.0.1:1883", "topic": ""})),
        ("/api/ble", json!({"service_uuid": "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"})),
    ] {
        let r = post(path, body.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], -1);
    }
    // Too large is 413; a bad id is a 400; both in the envelope.
    // A 50 MB body, announced by its length. The server refuses once it has read past its
    // limit and may close before a client has written it all, so the body is written beside
    // the reading of the answer (and its end never comes: the refusal does).
    let (status, body) = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let conn = tokio::net::TcpStream::connect(("127.0.0.1", api.port)).await.unwrap();
        let (mut rd, mut wr) = conn.into_split();
        let port = api.port;
        let writer = tokio::spawn(async move {
            let head = format!(
                "POST /api/mqtt HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{{\"broker\": \"",
                50 << 20
            );
            let _ = wr.write_all(head.as_bytes()).await;
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..8 {
                if wr.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            wr
        });
        let mut answer = String::new();
        let mut buf = [0u8; 4096];
        while !(answer.contains("\r\n\r\n") && answer.ends_with('}')) {
            match tokio::time::timeout(std::time::Duration::from_secs(10), rd.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => answer.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => break,
            }
        }
        writer.abort();
        let status: u16 = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    };
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("\"code\":-1"), "{body}");
    let r = c.get(format!("{}/api/mqtt/abc", api.url)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], -1);

    // A hand edit is picked up and kept by the next change.
    let mut edited: toml::Table = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let light: toml::Table = toml::from_str(
        "id = 7\ndevice_name = \"Desk\"\nservice_uuid = \"b8b7e001-7a6b-4f4f-9a8b-11c0ffee0001\"\n\
         char_uuid = \"b8b7e002-7a6b-4f4f-9a8b-11c0ffee0001\"\nenabled = true",
    )
    .unwrap();
    edited.insert("ble".into(), toml::Value::Array(vec![toml::Value::Table(light)]));
    std::fs::write(&file, toml::to_string(&edited).unwrap()).unwrap();
    assert_eq!(post("/api/mqtt", json!({"broker": "tcp://127.0.0.1:1884"})).await.unwrap().status(), 200);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("Desk") && text.contains("1884"), "{text}");
    // A broken hand edit is not overwritten: the change is refused until it is fixed.
    std::fs::write(&file, "[[mqtt]\nbroken").unwrap();
    let r = post("/api/mqtt", json!({"broker": "tcp://127.0.0.1:1885"})).await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "[[mqtt]\nbroken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_page_in_chromium_can_neither_add_nor_read_a_broker() {
    let Some(chromium) = require("chromium") else {
        return;
    };
    let api = start("").await;
    let c = reqwest::Client::new();
    let made = c
        .post(format!("{}/api/mqtt", api.url))
        .json(&json!({"broker": "tcp://127.0.0.1:1883", "password": "secret-pw"}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 200);
    // The hostile page lives on another origin (another port of the same machine).
    let page = format!(
        r#"<html><body><script>
(async () => {{
  const api = "{api}";
  const out = [];
  for (const [name, init] of [
    ["json", {{method: "POST", headers: {{"content-type": "application/json"}}, body: JSON.stringify({{broker: "tcp://127.0.0.1:1"}})}}],
    ["simple", {{method: "POST", headers: {{"content-type": "text/plain"}}, body: JSON.stringify({{broker: "tcp://127.0.0.1:2"}})}}],
  ]) {{
    try {{ const r = await fetch(api + "/api/mqtt", init); out.push(name + ":" + r.status); }}
    catch (e) {{ out.push(name + ":blocked"); }}
  }}
  try {{ const r = await fetch(api + "/api/mqtt"); out.push("read:" + (await r.text())); }}
  catch (e) {{ out.push("read:blocked"); }}
  document.body.setAttribute("data-result", out.join("|"));
}})();
</script></body></html>"#,
        api = api.url
    );
    let evil = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil_url = format!("http://{}/", evil.local_addr().unwrap());
    let app = axum::Router::new().route("/", axum::routing::get(move || async move { axum::response::Html(page) }));
    tokio::spawn(async move { axum::serve(evil, app).await });
    let dom = tokio::task::spawn_blocking(move || headless_dom(&chromium, &evil_url)).await.unwrap();
    let result = dom.split("data-result=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
    assert!(!result.is_empty(), "the page ran: {dom}");
    assert!(result.contains("json:blocked"), "{result}");
    assert!(result.contains("read:blocked"), "{result}");
    assert!(!result.contains("secret-pw"), "{result}");
    // Whatever the browser let through, the API changed nothing.
    let list: Value = c.get(format!("{}/api/mqtt", api.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn listening_beyond_loopback_without_a_token_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        "[sources.procs]\ntype = \"process_scan\"\n[sinks.page]\ntype = \"websocket\"\ninputs = [\"procs\"]\naddress = \"0.0.0.0:0\"\n",
    )
    .unwrap();
    let run =
        Running::start(p.to_str().unwrap(), &[("OCPIPE_DATA_DIR", dir.path().join("state").display().to_string())]);
    let said = wait_for("the start", std::time::Duration::from_secs(10), || {
        let log = run.log();
        log.contains("page at http://").then_some(log)
    });
    run.stop();
    assert!(said.contains("without a token"), "{said}");
}
