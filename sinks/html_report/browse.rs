//! `ocpipe browse`: a local page over the capture directories — a dropdown of every run, newest
//! first, showing its report, status and validity. Runs without a summary or report (from before
//! an upgrade, or with theirs deleted) get them built from their files on a scan. Read-only
//! over the runs' evidence; a path from the browser is only ever a run's name from the scan.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::capture::{layout, read_capture, summarize, write_file};

crate::register_command!("browse", command, run);

fn command() -> clap::Command {
    clap::Command::new("browse")
        .about("A local page over the capture runs (artifacts/captures/): choose a run, see its report")
        .arg(clap::arg!(--host <HOST> "Address to listen on").default_value("127.0.0.1"))
        .arg(
            clap::arg!(--port <PORT> "Port (0: any free one)")
                .default_value("8765")
                .value_parser(clap::value_parser!(u16)),
        )
        .arg(clap::arg!(--captures <DIR> "The captures folder").default_value("artifacts/captures"))
}

struct Browser {
    root: PathBuf,
    runs: RwLock<Vec<Value>>,
    addr: SocketAddr,
}

fn run(m: &clap::ArgMatches) -> ExitCode {
    let host = m.get_one::<String>("host").cloned().unwrap_or_default();
    let port = *m.get_one::<u16>("port").unwrap_or(&8765);
    let root = PathBuf::from(m.get_one::<String>("captures").cloned().unwrap_or_default());
    if !root.is_dir() {
        eprintln!(
            "error: {} is not a folder of captures (run `ocpipe capture` first, or pass --captures)",
            root.display()
        );
        return ExitCode::FAILURE;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind((host.as_str(), port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {host}:{port}: {e} (pass --port, or 0 for any)");
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().expect("bound");
        let b = Arc::new(Browser { root: root.clone(), runs: RwLock::default(), addr });
        let n = rescan(&b).await;
        println!("browsing {n} capture run(s) in {} at http://{addr}/", root.display());
        let app = Router::new()
            .route("/", get(page))
            .route("/api/captures", get(list))
            .route("/api/rescan", post(rescan_route))
            .route("/captures/{id}/report", get(report))
            .with_state(b);
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        match axum::serve(listener, app).with_graceful_shutdown(stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Lists the runs (newest first) and builds missing summaries and reports.
async fn rescan(b: &Arc<Browser>) -> usize {
    let root = b.root.clone();
    let runs = tokio::task::spawn_blocking(move || scan(&root)).await.unwrap_or_default();
    let n = runs.len();
    *b.runs.write().unwrap_or_else(|e| e.into_inner()) = runs;
    n
}

fn scan(root: &Path) -> Vec<Value> {
    let mut runs = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else { return runs };
    for e in rd.flatten() {
        let dir = e.path();
        if !dir.join(layout::RUN).is_file() {
            continue;
        }
        let Ok(run) = read_capture(&dir) else { continue };
        let mut backfilled = Vec::new();
        if !dir.join(layout::SUMMARY).is_file()
            && let Ok(bytes) = serde_json::to_vec_pretty(&summarize(&run))
            && write_file(&dir, layout::SUMMARY, &bytes).is_ok()
        {
            backfilled.push("summary");
        }
        if !dir.join(layout::REPORT).is_file()
            && let Ok(html) = super::render(&run)
            && write_file(&dir, layout::REPORT, html.as_bytes()).is_ok()
        {
            backfilled.push("report");
        }
        let m = &run.meta;
        runs.push(json!({
            "id": e.file_name().to_string_lossy(),
            "issue_id": m.issue_id, "title": m.title, "risk_level": m.risk_level,
            "run_status": m.run_status, "capture_valid": m.capture_valid,
            "started_at": m.started_at, "duration_secs": m.duration_secs, "backfilled": backfilled,
        }));
    }
    runs.sort_by(|a, b| {
        b["started_at"].as_str().cmp(&a["started_at"].as_str()).then(b["id"].as_str().cmp(&a["id"].as_str()))
    });
    runs
}

/// A request from this page itself: its `Host` is the bound address or a loopback name (no DNS
/// rebinding), and a state-changing one comes from the same origin.
fn same_site(b: &Browser, headers: &HeaderMap, changing: bool) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let port = b.addr.port();
    let ok_host =
        [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}"), b.addr.to_string()]
            .iter()
            .any(|h| h == host);
    let ok_origin = match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some(o) => o == format!("http://{host}"),
        None => !changing,
    };
    ok_host && ok_origin
}

fn refused() -> Response {
    (StatusCode::FORBIDDEN, axum::Json(json!({"code": 403, "message": "not from this page"}))).into_response()
}

async fn list(State(b): State<Arc<Browser>>, headers: HeaderMap) -> Response {
    if !same_site(&b, &headers, false) {
        return refused();
    }
    let runs = b.runs.read().unwrap_or_else(|e| e.into_inner()).clone();
    axum::Json(json!({"code": 0, "message": "ok", "data": runs})).into_response()
}

async fn rescan_route(State(b): State<Arc<Browser>>, headers: HeaderMap) -> Response {
    if !same_site(&b, &headers, true) {
        return refused();
    }
    rescan(&b).await;
    list(State(b), headers).await
}

async fn report(State(b): State<Arc<Browser>>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    if !same_site(&b, &headers, false) {
        return refused();
    }
    // Only a run the scan found: never a path the browser made up.
    let known = b.runs.read().unwrap_or_else(|e| e.into_inner()).iter().any(|r| r["id"] == id.as_str());
    if !known {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"code": 404, "message": format!("no capture `{id}` (rescan?)")})),
        )
            .into_response();
    }
    match tokio::fs::read_to_string(b.root.join(&id).join(layout::REPORT)).await {
        Ok(html) => {
            let mut r = Html(html).into_response();
            // The report has no script of its own: none may run in it.
            r.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src data:"),
            );
            r
        }
        Err(e) => (StatusCode::NOT_FOUND, axum::Json(json!({"code": 404, "message": e.to_string()}))).into_response(),
    }
}

async fn page(State(b): State<Arc<Browser>>, headers: HeaderMap) -> Response {
    if !same_site(&b, &headers, false) {
        return refused();
    }
    Html(PAGE).into_response()
}

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ocpipe captures</title>
<style>
:root { color-scheme: light dark; } body { font: 14px system-ui, sans-serif; margin: 0; display: flex; flex-direction: column; height: 100vh; }
header { display: flex; gap: 8px; align-items: center; padding: 8px 12px; border-bottom: 1px solid #8884; flex-wrap: wrap; }
select { min-width: 320px; max-width: 100%; } iframe { flex: 1; border: 0; width: 100%; }
.badge { padding: 1px 8px; border-radius: 10px; font-weight: 600; } .ok { background: #1a7f3722; color: #1a7f37; } .bad { background: #c6282822; color: #c62828; } .warn { background: #b26a0022; color: #b26a00; }
</style></head><body>
<header><strong>Capture runs</strong>
<select id="runs" aria-label="capture run"></select>
<span id="status"></span><span id="valid"></span>
<button id="rescan" type="button">Rescan</button><span id="count"></span></header>
<iframe id="report" title="report" sandbox="allow-same-origin"></iframe>
<script>
const sel = document.getElementById('runs');
let runs = [];
function badge(el, text, cls) { el.textContent = text; el.className = 'badge ' + cls; }
function show() {
  const r = runs.find(x => x.id === sel.value);
  if (!r) { document.getElementById('report').removeAttribute('src'); return; }
  badge(document.getElementById('status'), r.run_status, r.run_status === 'completed' ? 'ok' : (['failed','error','oom'].includes(r.run_status) ? 'bad' : 'warn'));
  badge(document.getElementById('valid'), r.capture_valid ? 'capture valid' : 'capture invalid', r.capture_valid ? 'ok' : 'bad');
  document.getElementById('report').src = '/captures/' + encodeURIComponent(r.id) + '/report';
}
function fill(data) {
  const keep = sel.value;
  runs = data;
  sel.replaceChildren(...runs.map(r => { const o = document.createElement('option'); o.value = r.id; o.textContent = r.id + ' — ' + (r.title || r.issue_id) + ' [' + r.run_status + ']'; return o; }));
  if (runs.some(r => r.id === keep)) sel.value = keep;
  document.getElementById('count').textContent = runs.length + ' run(s)';
  show();
}
async function load(method, url) { const r = await fetch(url, { method }); fill((await r.json()).data || []); }
sel.addEventListener('change', show);
document.getElementById('rescan').addEventListener('click', () => load('POST', '/api/rescan'));
load('GET', '/api/captures');
</script></body></html>
"#;
