//! `derived/summary.json`: one run normalised — counts by event type, tools called, files
//! changed, tokens and cost (from the session export, else from the native events), first error.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::Finished;

/// Tokens and cost per assistant message, by message id (the last update of each counts).
fn usage_of_messages<'a>(infos: impl Iterator<Item = &'a Value>) -> (BTreeMap<String, (Value, f64)>, usize) {
    let mut by_id = BTreeMap::new();
    for info in infos {
        if info["role"] != "assistant" {
            continue;
        }
        let id = info["id"].as_str().unwrap_or_default().to_string();
        by_id.insert(id, (info["tokens"].clone(), info["cost"].as_f64().unwrap_or(0.0)));
    }
    let n = by_id.len();
    (by_id, n)
}

pub fn summarize(run: &Finished) -> Value {
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut tools: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_error: Option<String> = run.meta.error.clone();
    // Tool calls: each `tool.execute.before` hook is one call; without hooks, each tool part.
    let hooks = run.events.iter().any(|e| e["type"] == "tool.execute.before");
    let mut seen_parts = std::collections::HashSet::new();
    for e in &run.events {
        let ty = e["type"].as_str().unwrap_or("?").to_string();
        *by_type.entry(ty.clone()).or_default() += 1;
        let p = &e["properties"];
        let tool = match ty.as_str() {
            "tool.execute.before" if hooks => p["tool"].as_str(),
            "message.part.updated" if !hooks && p["part"]["type"] == "tool" => {
                let id = p["part"]["id"].as_str().unwrap_or_default().to_string();
                p["part"]["tool"].as_str().filter(|_| seen_parts.insert(id))
            }
            _ => None,
        };
        if let Some(tool) = tool {
            *tools.entry(tool.to_string()).or_default() += 1;
        }
        if ty == "session.error" && first_error.is_none() {
            let err = &p["error"];
            first_error = Some(
                err["data"]["message"]
                    .as_str()
                    .or(err["name"].as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| err.to_string()),
            );
        }
    }
    // Tokens: the export is the session as OpenCode stored it; the events are what was seen.
    let (usage, from) = match &run.export {
        Some(export) => {
            let infos = export["messages"].as_array().into_iter().flatten().map(|m| &m["info"]);
            (usage_of_messages(infos), "session_export")
        }
        None => {
            let infos = run.events.iter().filter(|e| e["type"] == "message.updated").map(|e| &e["properties"]["info"]);
            (usage_of_messages(infos), "native_events")
        }
    };
    let (messages, assistant_messages) = usage;
    let mut tokens = json!({"input": 0, "output": 0, "reasoning": 0, "cache_read": 0, "cache_write": 0, "total": 0});
    let mut cost = 0.0;
    for (t, c) in messages.values() {
        let add = |tokens: &mut Value, key: &str, v: &Value| {
            tokens[key] = json!(tokens[key].as_u64().unwrap_or(0) + v.as_u64().unwrap_or(0));
        };
        add(&mut tokens, "input", &t["input"]);
        add(&mut tokens, "output", &t["output"]);
        add(&mut tokens, "reasoning", &t["reasoning"]);
        add(&mut tokens, "cache_read", &t["cache"]["read"]);
        add(&mut tokens, "cache_write", &t["cache"]["write"]);
        cost += c;
    }
    let total: u64 = ["input", "output", "reasoning", "cache_read", "cache_write"]
        .iter()
        .map(|k| tokens[*k].as_u64().unwrap_or(0))
        .sum();
    tokens["total"] = json!(total);
    let files = |kind: &str| -> Vec<Value> {
        run.fs_diff[kind].as_array().into_iter().flatten().map(|f| f["path"].clone()).collect()
    };
    json!({
        "run_id": run.meta.run_id,
        "issue_id": run.meta.issue_id,
        "title": run.meta.title,
        "risk_level": run.meta.risk_level,
        "run_status": run.meta.run_status,
        "capture_valid": run.meta.capture_valid,
        "exit_code": run.meta.exit_code,
        "duration_secs": run.meta.duration_secs,
        "timed_out": run.meta.timed_out,
        "oom_killed": run.meta.oom_killed,
        "session_id": run.meta.session_id,
        "native_events": run.meta.native_events,
        "event_count": run.events.len(),
        "events_by_type": by_type,
        "tools": tools,
        "files_changed": {"added": files("added"), "modified": files("modified"), "deleted": files("deleted")},
        "processes_seen": run.process_tree["processes"].as_array().map_or(0, Vec::len),
        "remote_endpoints": run.network["endpoints"].as_array().map_or(0, Vec::len),
        "assistant_messages": assistant_messages,
        "tokens": tokens,
        "cost": cost,
        "tokens_from": if assistant_messages > 0 { from } else { "none" },
        "first_error": first_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_run_is_summarised_from_its_export_and_events() {
        // OpenCode 1.18.33 in a container, served 1000+20, 1100+15, 1200+5 tokens (write, bash, text).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/captures/fix_math_utils");
        let mut run = crate::capture::read_capture(&dir).unwrap();
        let s = summarize(&run);
        assert_eq!((s["tokens"]["input"].as_u64(), s["tokens"]["output"].as_u64()), (Some(3300), Some(40)), "{s}");
        assert_eq!(s["tokens_from"], "session_export");
        assert_eq!(s["tools"], json!({"bash": 1, "write": 1}));
        assert_eq!(s["files_changed"]["modified"], json!(["math_utils.py"]));
        assert_eq!(s["assistant_messages"], 3);
        // Without the export, the native events give the same tokens.
        run.export = None;
        let s = summarize(&run);
        assert_eq!((s["tokens"]["total"].as_u64(), s["tokens_from"].as_str()), (Some(3340), Some("native_events")));
    }
}
