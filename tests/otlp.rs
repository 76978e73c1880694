//! OpenTelemetry in and out: the `otlp` sink's requests decoded by the reference protobuf
//! definitions (the `opentelemetry-proto` Python package), a round trip sink → ocpipe's own
//! `otlp` source with the typed events unchanged, and a real OpenCode 1.18.33 exporting its
//! traces to the source: each request to the model becomes a `call` with the tokens the
//! database stored.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Status and rollup events (their JSON views) an `exec` source prints.
const STATUSES: &str = r#"{"instance": "http://127.0.0.1:4096", "port": 4096, "sessionID": "ses_1", "code": "busy", "status": "busy", "label": "busy", "mode": "busy", "timestamp": "2026-12-04T10:00:00Z"}
{"instance": "http://127.0.0.1:4096", "port": 4096, "sessionID": "ses_1", "code": "idle", "status": "idle", "label": "idle", "mode": "idle", "timestamp": "2026-12-04T10:00:05Z"}"#;
const ROLLUPS: &str = r#"{"groupBy": "all", "range": "all", "key": "all", "sessions": 2, "messages": 7, "responses": 3, "tokens": {"input": 1200, "output": 340, "reasoning": 12, "cache_read": 5000, "cache_write": 64}, "total": 6616, "cost": 0.25, "costStored": 0.2, "costPriced": 0.05}
{"groupBy": "model", "range": "all", "key": "anthropic/claude-sonnet-4-5", "sessions": 1, "messages": 4, "responses": 2, "tokens": {"input": 700, "output": 200, "reasoning": 0, "cache_read": 3000, "cache_write": 0}, "total": 3900, "cost": 0.2, "costStored": 0.2}"#;

/// A pipeline printing the statuses and rollups into an `otlp` sink at `endpoint`, and into
/// `sent.jsonl` (their views as ocpipe has them).
fn exporter(dir: &Path, endpoint: &str, protocol: &str) -> String {
    exporter_with(dir, endpoint, protocol, "")
}

/// The same, with more options for the `otlp` sink (TOML lines).
fn exporter_with(dir: &Path, endpoint: &str, protocol: &str, options: &str) -> String {
    std::fs::write(dir.join("statuses.jsonl"), STATUSES).unwrap();
    std::fs::write(dir.join("rollups.jsonl"), ROLLUPS).unwrap();
    let p = dir.join("exporter.toml");
    std::fs::write(
        &p,
        format!(
            "[sources.statuses]\ntype = \"exec\"\nkind = \"status\"\nmode = \"once\"\ncommand = [\"cat\", \"statuses.jsonl\"]\n\
             [sources.rollups]\ntype = \"exec\"\nkind = \"rollup\"\nmode = \"once\"\ncommand = [\"cat\", \"rollups.jsonl\"]\n\
             [sinks.collector]\ntype = \"otlp\"\ninputs = [\"statuses\", \"rollups\"]\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\n{options}\n\
             [sinks.sent]\ntype = \"jsonl\"\ninputs = [\"statuses\", \"rollups\"]\npath = \"sent.jsonl\"\n"
        ),
    )
    .unwrap();
    p.display().to_string()
}

fn views(path: &Path) -> Vec<Value> {
    let mut v: Vec<Value> =
        std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    v.sort_by_key(|x| x.to_string());
    v
}

/// ocpipe's `otlp` source on a free port, the events matching `condition` into `out`; running.
fn receiver(dir: &Path, name: &str, condition: &str, out: &Path) -> (Running, u16) {
    let port = free_port();
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "[sources.otel]\ntype = \"otlp\"\naddress = \"127.0.0.1:{port}\"\n\
             [transforms.keep]\ntype = \"filter\"\ninputs = [\"otel\"]\ncondition = '{condition}'\n\
             [sinks.out]\ntype = \"jsonl\"\ninputs = [\"keep\"]\npath = \"{}\"\n",
            out.display()
        ),
    )
    .unwrap();
    let env = [("OCPIPE_DATA_DIR", dir.join(format!("{name}-state")).display().to_string())];
    let rx = Running::start_args_in(dir, &["run", &p.display().to_string()], &env);
    wait_for("the receiver", Duration::from_secs(20), || rx.log().contains("OTLP/HTTP receiver").then_some(()));
    (rx, port)
}

#[test]
fn the_sinks_events_come_back_typed_through_the_otlp_source() {
    let dir = tempfile::tempdir().unwrap();
    for protocol in ["protobuf", "json"] {
        let got = dir.path().join(format!("got-{protocol}.jsonl"));
        let (rx, port) = receiver(dir.path(), &format!("receiver-{protocol}"), "$meta.kind != \"json\"", &got);
        let sender = Running::start_args_in(
            &dir.path().join("."),
            &["run", &exporter(dir.path(), &format!("http://127.0.0.1:{port}"), protocol)],
            &[("OCPIPE_DATA_DIR", dir.path().join(format!("state-{protocol}")).display().to_string())],
        );
        let (status, log) = sender.finish(Duration::from_secs(60));
        assert!(status.success(), "{log}");
        assert_eq!(final_counter(&log, "collector", "sent"), 4, "{log}");
        wait_for("the typed events", Duration::from_secs(20), || (views(&got).len() >= 4).then_some(()));
        let log = rx.stop_with_log();
        let sent = views(&dir.path().join("sent.jsonl"));
        assert_eq!(views(&got), sent, "{protocol}: the same views, typed again: {log}");
        std::fs::remove_file(dir.path().join("sent.jsonl")).unwrap();
    }
}

/// The capture server: decodes each request with the reference Python classes.
const DECODER: &str = r#"
import http.server, json, sys
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest, ExportMetricsServiceResponse
kinds = {"/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse), "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse)}
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        req, resp = kinds[self.path]
        m = req(); m.ParseFromString(body)
        with open("decoded.jsonl", "a") as f:
            f.write(json.dumps({"path": self.path, "type": self.headers["Content-Type"], "request": MessageToDict(m)}) + "\n")
        out = resp().SerializeToString()
        self.send_response(200); self.send_header("Content-Type", "application/x-protobuf"); self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)
s = http.server.HTTPServer(("127.0.0.1", 0), H)
if len(sys.argv) > 2:
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
open("port", "w").write(str(s.server_address[1]))
s.serve_forever()
"#;

#[test]
fn the_reference_protobuf_definitions_decode_what_the_sink_sends() {
    let Some(python) = require("python3") else { return };
    let ok =
        Command::new(&python).args(["-c", "import opentelemetry.proto, google.protobuf"]).status().unwrap().success();
    let Some(()) = require_that("the Python package opentelemetry-proto (pip install opentelemetry-proto)", ok) else {
        return;
    };
    let Some(openssl) = require("openssl") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The collector speaks HTTPS with a certificate from a CA of its own.
    test_certificates(&openssl, d);
    std::fs::write(d.join("decoder.py"), DECODER).unwrap();
    let mut server = Command::new(&python)
        .args(["decoder.py", "server.pem", "server.key"])
        .current_dir(d)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let port = wait_for("the decoder", Duration::from_secs(20), || std::fs::read_to_string(d.join("port")).ok());
    let endpoint = format!("https://127.0.0.1:{port}");
    // Trusting another CA: refused, said, nothing counted as sent.
    let other = format!("tls = {{ ca_file = \"{}\" }}", d.join("other.pem").display());
    let sender = Running::start_args_in(d, &["run", &exporter_with(d, &endpoint, "protobuf", &other)], &[]);
    let (_, log) = sender.finish(Duration::from_secs(60));
    assert!(log.contains("UnknownIssuer"), "the log says the certificate is not trusted: {log}");
    assert_eq!(final_counter(&log, "collector", "sent"), 0, "{log}");
    assert!(!d.join("decoded.jsonl").exists());
    std::fs::remove_file(d.join("sent.jsonl")).unwrap();
    let ca = format!("tls = {{ ca_file = \"{}\" }}", d.join("ca.pem").display());
    let sender = Running::start_args_in(d, &["run", &exporter_with(d, &endpoint, "protobuf", &ca)], &[]);
    let (status, log) = sender.finish(Duration::from_secs(60));
    let _ = server.kill();
    let _ = server.wait();
    assert!(status.success(), "{log}");
    let decoded: Vec<Value> = std::fs::read_to_string(dir.path().join("decoded.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(decoded.iter().all(|d| d["type"] == "application/x-protobuf"));
    // Logs: every event, with its kind and JSON view.
    let records: Vec<&Value> = decoded
        .iter()
        .filter(|d| d["path"] == "/v1/logs")
        .flat_map(|d| d["request"]["resourceLogs"][0]["scopeLogs"][0]["logRecords"].as_array().unwrap())
        .collect();
    assert_eq!(records.len(), 4, "{decoded:?}");
    let attr = |r: &Value, k: &str| {
        r["attributes"].as_array().unwrap().iter().find(|a| a["key"] == k).map(|a| a["value"]["stringValue"].clone())
    };
    assert_eq!(records.iter().filter(|r| attr(r, "ocpipe.kind") == Some("status".into())).count(), 2);
    assert!(
        records.iter().any(|r| attr(r, "opencode.status") == Some("busy".into()) && r["body"]["stringValue"] == "busy")
    );
    // Metrics: the rollups' tokens by kind, messages and cost, as gauges.
    let metrics: Vec<&Value> = decoded
        .iter()
        .filter(|d| d["path"] == "/v1/metrics")
        .flat_map(|d| d["request"]["resourceMetrics"][0]["scopeMetrics"][0]["metrics"].as_array().unwrap())
        .collect();
    let point = |name: &str, key: &str, kind: Option<&str>| -> Option<Value> {
        metrics
            .iter()
            .filter(|m| m["name"] == name)
            .flat_map(|m| m["gauge"]["dataPoints"].as_array().unwrap())
            .find_map(|p| {
                let a = |k: &str| {
                    p["attributes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|x| x["key"] == k)
                        .map(|x| x["value"]["stringValue"].clone())
                };
                (a("key") == Some(key.into()) && kind.is_none_or(|k| a("kind") == Some(k.into())))
                    .then(|| p.get("asInt").or_else(|| p.get("asDouble")).cloned().unwrap())
            })
    };
    assert_eq!(point("ocpipe.tokens", "all", Some("input")), Some("1200".into()), "{metrics:?}");
    assert_eq!(point("ocpipe.tokens", "all", Some("cache_write")), Some("64".into()));
    assert_eq!(point("ocpipe.tokens", "anthropic/claude-sonnet-4-5", Some("output")), Some("200".into()));
    assert_eq!(point("ocpipe.messages", "all", None), Some("7".into()));
}

#[test]
fn opencode_exports_its_model_requests_as_calls_with_the_stored_tokens() {
    let script = r#"[{"tool": "bash", "arguments": {"command": "echo hi", "description": "say hi"}, "usage": {"prompt": 3000, "completion": 20, "cached": 100, "reasoning": 3}},
                     {"text": "done", "usage": {"prompt": 3200, "completion": 7}}]"#;
    let Some(oc) = OpenCode::start(script) else { return };
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls.jsonl");
    let (rx, port) = receiver(dir.path(), "otel", "$meta.kind == \"llm.call\"", &calls);
    let out = oc
        .command(&["run", "Say hi with bash"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OPENCODE_CONFIG_CONTENT", r#"{"experimental":{"openTelemetry":true}}"#)
        .output()
        .unwrap();
    assert!(out.status.success(), "opencode run: {}", text(&out.stderr));
    // The assistant messages OpenCode stored, (input, output, reasoning, cache read) each.
    let db = rusqlite::Connection::open_with_flags(oc.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = db.prepare("SELECT session_id, data FROM message").unwrap();
    let stored: Vec<(String, [u64; 4])> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .filter_map(|(s, data)| {
            let v: Value = serde_json::from_str(&data).ok()?;
            (v["role"] == "assistant").then(|| {
                let t = &v["tokens"];
                let n = |x: &Value| x.as_u64().unwrap_or(0);
                (s, [n(&t["input"]), n(&t["output"]), n(&t["reasoning"]), n(&t["cache"]["read"])])
            })
        })
        .collect();
    assert_eq!(stored.len(), 2, "two model requests stored: {stored:?}");
    let got = wait_for("a call per stored request", Duration::from_secs(30), || {
        let v = views(&calls);
        let tokens: Vec<(String, [u64; 4])> = v
            .iter()
            .map(|c| {
                let t = &c["tokens"];
                let n = |k: &str| t[k].as_u64().unwrap_or(0);
                (
                    c["sessionID"].as_str().unwrap_or("").to_string(),
                    [n("input"), n("output"), n("reasoning"), n("cache_read")],
                )
            })
            .collect();
        stored.iter().all(|s| tokens.contains(s)).then_some((v, tokens))
    });
    let (got, tokens) = got;
    for s in &stored {
        assert_eq!(
            tokens.iter().filter(|t| *t == s).count(),
            1,
            "one call per request, not its parent span too: {s:?}"
        );
    }
    let main = got.iter().find(|c| c["tokens"]["reasoning"] == 3).unwrap();
    assert_eq!((main["providerID"].as_str(), main["modelID"].as_str()), (Some("mock"), Some("mock-1")), "{main}");
    assert_eq!(main["version"], "1.18.33");
    assert!(
        main["msToFirstChunk"].as_f64().is_some() && main["timeEnd"].as_i64() >= main["timeStart"].as_i64(),
        "{main}"
    );
    rx.stop_with_log();
}

/// A web page open in the same browser, and a DNS-rebinding name, cannot feed the receiver:
/// a page can send only "simple" requests (text/plain, no preflight), which are refused with
/// 415; a request for a host name that is not loopback is refused with 403. The same log
/// record sent properly arrives, so the empty output is the refusals' doing.
#[test]
fn a_hostile_page_or_a_rebound_host_name_cannot_feed_the_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("got.jsonl");
    let (rx, port) = receiver(dir.path(), "receiver", "true", &got);
    let url = format!("http://127.0.0.1:{port}/v1/logs");
    let record = |text: &str| {
        format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{{"stringValue":"{text}"}}}}]}}]}}]}}"#)
    };
    let post = |extra: &[&str], body: String| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "-X", "POST", &url])
            .args(extra)
            .args(["--data-binary", &body])
            .output()
            .unwrap();
        text(&out.stdout)
    };
    let rebound = post(&["-H", "content-type: application/json", "-H", "Host: evil.example"], record("rebound"));
    assert_eq!(rebound, "403");
    let simple = post(&["-H", "content-type: text/plain"], record("simple"));
    assert_eq!(simple, "415");

    if let Some(chromium) = require("chromium") {
        let page = format!(
            r#"<html><body><script>
(async () => {{
  const out = [];
  for (const [name, init] of [
    ["simple", {{method: "POST", mode: "no-cors", headers: {{"content-type": "text/plain"}}, body: `{simple}`}}],
    ["json", {{method: "POST", headers: {{"content-type": "application/json"}}, body: `{json}`}}],
  ]) {{
    try {{ const r = await fetch("{url}", init); out.push(name + ":" + r.status); }}
    catch (e) {{ out.push(name + ":blocked"); }}
  }}
  document.body.setAttribute("data-result", out.join("|"));
}})();
</script></body></html>"#,
            simple = record("from-a-page-simple"),
            json = record("from-a-page-json"),
        );
        let site = dir.path().join("evil");
        std::fs::create_dir_all(&site).unwrap();
        std::fs::write(site.join("index.html"), page).unwrap();
        let evil_port = free_port();
        let mut server = Command::new("python3")
            .args(["-m", "http.server", &evil_port.to_string(), "--bind", "127.0.0.1"])
            .current_dir(&site)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let evil = format!("http://127.0.0.1:{evil_port}/");
        wait_for("the hostile page's server", Duration::from_secs(10), || {
            let out = Command::new("curl").args(["-s", "-f", &evil]).output().ok()?;
            out.status.success().then_some(())
        });
        let dom = headless_dom(&chromium, &evil);
        let _ = server.kill();
        let _ = server.wait();
        let result = dom.split("data-result=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
        assert!(result.contains("json:blocked"), "the preflight is refused: {dom}");
        assert!(result.contains("simple:"), "the page ran: {dom}");
    }

    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(views(&got), Vec::<Value>::new(), "nothing from a page or a foreign host name got in");
    let proper = post(&["-H", "content-type: application/json"], record("proper"));
    assert_eq!(proper, "200");
    wait_for("the proper record", Duration::from_secs(10), || (views(&got).len() == 1).then_some(()));
    let log = rx.stop_with_log();
    let all = std::fs::read_to_string(&got).unwrap();
    assert!(all.contains("proper") && !all.contains("from-a-page") && !all.contains("rebound"), "{all}\n{log}");
}
