//! `html_report`: one self-contained `report/index.html` per capture run, and `ocpipe browse`.

mod browse;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::capture::{Finished, layout, summarize, write_each_finished, write_file};
use crate::component::{ComponentFuture, Context, Input, Sink, SinkConfig};
use crate::event::DataType;

/// Writes `report/index.html` for each finished capture run: the supervisor summary first
/// (status, validity, duration, exit, timeout/OOM, processes with a chart over time, files
/// changed with their diffs, network endpoints), then the native event timeline with noisy
/// events folded, then the logs. No external assets; every value from the run is escaped
/// (minijinja auto-escaping), so a title or a file holding markup shows as text.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HtmlReportConfig {}

crate::register_component!(
    sink HtmlReportConfig,
    "html_report",
    "Writes a self-contained HTML report per capture run (summary, charts, diffs, endpoints, event timeline)",
    ""
);

impl SinkConfig for HtmlReportConfig {
    fn input(&self) -> DataType {
        DataType::CAPTURE
    }
    fn build(&self, cx: &Context) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(HtmlReportSink { cx: cx.clone() }))
    }
}

struct HtmlReportSink {
    cx: Context,
}

impl Sink for HtmlReportSink {
    fn run(self: Box<Self>, input: Input) -> ComponentFuture {
        Box::pin(write_each_finished(self.cx, input, "the report", |dir, run| {
            let html = render(run).map_err(|e| std::io::Error::other(e.to_string()))?;
            write_file(dir, layout::REPORT, html.as_bytes())
        }))
    }
}

const TEMPLATE: &str = include_str!("report.html");
/// The end of each log shown in the report (the files hold all of it).
const LOG_TAIL: usize = 64 * 1024;
/// Event types folded when they repeat (they say little each).
const NOISY: [&str; 5] =
    ["message.part.delta", "message.part.updated", "tui.toast.show", "lsp.client.diagnostics", "lsp.updated"];

/// The report of one run.
pub fn render(run: &Finished) -> anyhow::Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    env.add_template("report.html", TEMPLATE)?;
    let summary = summarize(run);
    let files_changed: usize =
        ["added", "modified", "deleted"].iter().map(|k| run.fs_diff[*k].as_array().map_or(0, Vec::len)).sum();
    let status_class = match run.meta.run_status.as_str() {
        "completed" => "ok",
        "failed" | "error" | "oom" => "bad",
        _ => "warn",
    };
    let tail = |s: &str| -> String {
        if s.len() <= LOG_TAIL {
            return s.to_string();
        }
        let mut start = s.len() - LOG_TAIL;
        while !s.is_char_boundary(start) {
            start += 1;
        }
        format!("… ({} bytes before)\n{}", start, &s[start..])
    };
    let ctx = json!({
        "meta": run.meta,
        "task": run.task,
        "summary": summary,
        "process_tree": with_clock_times(&run.process_tree, "processes"),
        "fs_diff": run.fs_diff,
        "network": with_clock_times(&run.network, "endpoints"),
        "files_changed": files_changed,
        "status_class": status_class,
        "chart": chart(&run.process_tree),
        "timeline": timeline(&run.events),
        "strip": strip(run),
        "logs": {"stdout": tail(&run.logs.stdout), "stderr": tail(&run.logs.stderr)},
    });
    Ok(env.get_template("report.html")?.render(ctx)?)
}

/// The rows of `list` with `first_seen`/`last_seen` as times of day.
fn with_clock_times(doc: &Value, list: &str) -> Value {
    let mut tree = doc.clone();
    for p in tree[list].as_array_mut().into_iter().flatten() {
        for k in ["first_seen", "last_seen"] {
            p[k] = json!(clock(p[k].as_str().unwrap_or("")));
        }
    }
    tree
}

/// Polyline points for processes and RSS over the run (numbers only).
fn chart(tree: &Value) -> Value {
    let samples = tree["timeline"].as_array().cloned().unwrap_or_default();
    let (width, height) = (900.0, 160.0);
    if samples.is_empty() {
        return json!({"points": 0, "width": width, "height": height});
    }
    let procs: Vec<f64> = samples.iter().map(|s| s["processes"].as_f64().unwrap_or(0.0)).collect();
    let rss: Vec<f64> = samples.iter().map(|s| s["rss_kb"].as_f64().unwrap_or(0.0) / 1024.0).collect();
    let line = |ys: &[f64]| -> String {
        let max = ys.iter().cloned().fold(1.0, f64::max);
        let step = if ys.len() > 1 { width / (ys.len() - 1) as f64 } else { 0.0 };
        ys.iter()
            .enumerate()
            .map(|(i, y)| format!("{:.1},{:.1}", i as f64 * step, height - y / max * (height - 10.0)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    json!({
        "points": samples.len(), "width": width, "height": height,
        "processes": line(&procs), "memory": line(&rss),
        "max_processes": procs.iter().cloned().fold(0.0, f64::max),
        "max_rss_mb": format!("{:.1}", rss.iter().cloned().fold(0.0, f64::max)),
    })
}

/// The native events on the run's time axis: one tick each, coloured by family.
fn strip(run: &Finished) -> Value {
    let time = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis() as f64);
    let (Some(start), Some(end)) = (time(&run.meta.started_at), time(&run.meta.finished_at)) else {
        return json!([]);
    };
    let span = (end - start).max(1.0);
    let ticks: Vec<Value> = run
        .events
        .iter()
        .filter_map(|e| {
            let t = time(e["time"].as_str()?)?;
            let ty = e["type"].as_str().unwrap_or("?");
            let (row, color) = match ty.split('.').next().unwrap_or("") {
                "tool" => (0, "#3b82f6"),
                "permission" => (1, "#dc2626"),
                "file" | "command" => (2, "#f59e0b"),
                "session" => (3, "#16a34a"),
                _ => (4, "#9ca3af"),
            };
            Some(json!({"x": format!("{:.1}", ((t - start) / span).clamp(0.0, 1.0) * 896.0 + 2.0), "y": row * 14 + 4, "color": color, "title": ty}))
        })
        .collect();
    Value::Array(ticks)
}

/// The native events as rows; a run of the same noisy type (or repeated updates of one part)
/// folds into one row with its count.
fn timeline(events: &[Value]) -> Vec<Value> {
    let mut rows: Vec<Value> = Vec::new();
    let mut last_key: Option<String> = None;
    for e in events {
        let ty = e["type"].as_str().unwrap_or("?");
        let p = &e["properties"];
        let key = NOISY.contains(&ty).then(|| format!("{ty}:{}", p["part"]["id"].as_str().unwrap_or("")));
        if key.is_some()
            && key == last_key
            && let Some(row) = rows.last_mut()
        {
            row["folded"] = json!(row["folded"].as_u64().unwrap_or(1) + 1);
            row["detail"] = json!(detail(ty, p));
            continue;
        }
        last_key = key;
        rows.push(
            json!({"time": clock(e["time"].as_str().unwrap_or("")), "type": ty, "detail": detail(ty, p), "folded": 1}),
        );
    }
    rows
}

/// `2026-11-29T15:15:11.371Z` → `15:15:11.371` (the report's day is in its header).
fn clock(t: &str) -> String {
    t.get(11..23).unwrap_or(t).trim_end_matches('Z').to_string()
}

/// One line about an event.
fn detail(ty: &str, p: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    match ty {
        "tool.execute.before" | "tool.execute.after" => {
            format!(
                "{} {}",
                s(&p["tool"]),
                p["args"].as_object().map(|a| Value::Object(a.clone()).to_string()).unwrap_or_default()
            )
        }
        "message.part.updated" => {
            let part = &p["part"];
            match part["type"].as_str() {
                Some("tool") => format!("tool {} {}", s(&part["tool"]), s(&part["state"]["status"])),
                Some("text") => s(&part["text"]).chars().take(200).collect(),
                Some(t) => t.to_string(),
                None => String::new(),
            }
        }
        "message.updated" => {
            let i = &p["info"];
            format!("{} {} {}", s(&i["role"]), s(&i["modelID"]), i["tokens"])
        }
        "session.error" => p["error"].to_string(),
        "file.edited" => s(&p["file"]),
        "permission.asked" | "permission.ask" | "permission.updated" => {
            format!("{} {}", s(&p["permission"]), p["patterns"])
        }
        _ => p["info"]["title"].as_str().or(p["sessionID"].as_str()).unwrap_or("").to_string(),
    }
}
