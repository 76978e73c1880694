//! The trace pipeline against a real OpenCode, live: `fixtures/tools/capture-traces.sh` runs
//! opencode-ai@1.18.33 (installed from npm, cached) against the scripted mock LLM with the
//! tracing plugin; ocpipe then stores what it wrote. Needs npm and python3 (skipped loudly when
//! missing; a failure under CI=true).

mod common;

use std::process::Command;

use common::*;

#[test]
fn real_opencode_traces_are_stored_redacted_and_complete() {
    if require("npm").is_none() || require("python3").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("traces");
    let capture =
        Command::new("bash").arg(root().join("fixtures/tools/capture-traces.sh")).arg(&traces).output().unwrap();
    assert!(capture.status.success(), "capture failed: {}", text(&capture.stderr));
    let records: Vec<serde_json::Value> = std::fs::read_dir(&traces)
        .unwrap()
        .flat_map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap().lines().map(String::from).collect::<Vec<_>>())
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    // What the script serves: 3 sessions, each with a title call; a 500, a dropped connection
    // (an error record) and a 400.
    let kinds = |k: &str| records.iter().filter(|r| r["kind"] == k).count();
    assert!(kinds("request") >= 8, "{records:?}");
    assert_eq!(kinds("error"), 1);
    assert!(records.iter().any(|r| r["status"] == 500) && records.iter().any(|r| r["status"] == 400));
    assert!(
        records.iter().all(|r| r["sessionID"].as_str().unwrap().starts_with("ses_")),
        "OpenCode 1.18 sends x-session-id"
    );

    std::fs::write(
        dir.path().join("p.toml"),
        "[sources.t]\ntype = \"trace_jsonl\"\npath = \"traces\"\nfollow = false\n\
         [transforms.r]\ntype = \"redact\"\ninputs = [\"t\"]\n\
         [sinks.db]\ntype = \"sqlite\"\ninputs = [\"r\"]\npath = \"out/t.db\"\n\
         [sinks.f]\ntype = \"jsonl\"\ninputs = [\"r\"]\npath = \"out/{sessionID}.jsonl\"\n",
    )
    .unwrap();
    let out = ocpipe(dir.path(), &["run", "p.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stored_traces(&dir.path().join("out/t.db")), records.len() as i64);
    assert_eq!(count(&dir.path().join("out/t.db"), "SELECT count(DISTINCT session_id) FROM trace_request"), 3);
    for secret in ["sk-ocpipe-fixture-0123456789abcdef", "sk-ant-api03-fixtureSecretValue0123456789"] {
        assert!(!files_containing(&traces, secret).is_empty(), "the capture holds {secret}");
        assert!(files_containing(&dir.path().join("out"), secret).is_empty(), "{secret} leaked");
    }
}

#[test]
fn stats_match_a_real_opencode_1_18_without_forks() {
    let Some(dir) = capture("capture-storage.sh", &["1.18.33", "--no-fork"]) else {
        return;
    };
    let data = dir.path().join("opencode");
    assert_matches_opencode(&["--data-dir", data.to_str().unwrap()], dir.path(), false, false);
}

#[test]
fn stats_count_a_real_fork_once_and_can_reproduce_opencode() {
    let Some(dir) = capture("capture-storage.sh", &["1.18.33"]) else {
        return;
    };
    let data = dir.path().join("opencode");
    assert_matches_opencode(&["--data-dir", data.to_str().unwrap()], dir.path(), false, true);
}

#[test]
fn stats_match_json_storage_of_a_real_opencode_1_1() {
    let Some(dir) = capture("capture-storage.sh", &["1.1.65", "--no-fork"]) else {
        return;
    };
    let data = dir.path().join("opencode");
    assert!(data.join("storage/message").is_dir(), "1.1.x writes JSON files");
    assert_matches_opencode(&["--data-dir", data.to_str().unwrap()], dir.path(), true, false);
}

fn stored_message(db: &std::path::Path, input: i64) -> Option<(i64, i64)> {
    if !db.exists() {
        return None;
    }
    let conn = rusqlite::Connection::open(db).ok()?;
    conn.query_row(
        "SELECT input, time_completed FROM opencode_message WHERE role = 'assistant' AND input = ?1 AND NOT fork_copy",
        [input],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

fn rollup_all(db: &std::path::Path) -> (i64, i64) {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("SELECT input, messages FROM rollup WHERE group_by = 'all'", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap_or((0, 0))
}

/// The main job against a real OpenCode `version`: history first, a session committed while it
/// runs reaches the store within a second, and after a restart nothing is sent again and the
/// rollups go on from where they were (equal to `ocpipe stats`), not from zero.
fn monitor_follows(version: &str) {
    let script = r#"[{"text": "first", "usage": {"prompt": 900, "completion": 5}},
                     {"text": "second", "usage": {"prompt": 1700, "completion": 9, "cached": 200}},
                     {"text": "third", "usage": {"prompt": 2500, "completion": 3}}]"#;
    let Some(oc) = OpenCode::start_version(script, version) else {
        return;
    };
    oc.run("The first session, before ocpipe starts");
    let out_dir = oc.dir.path().join("out");
    let state = oc.dir.path().join("ocpipe-state");
    // Killed when dropped: a failing assertion leaves no pipeline running.
    let start_ocpipe = || {
        let mut env: Vec<(&str, String)> = vec![
            ("OCPIPE_OUT", out_dir.display().to_string()),
            ("OCPIPE_DATA_DIR", state.display().to_string()),
            ("OCPIPE_HTTP", "127.0.0.1:0".to_string()),
        ];
        let isolated = oc.env();
        env.extend(isolated.iter().map(|(k, v)| (k.as_str(), v.display().to_string())));
        Running::start("pipelines/monitor.toml", &env)
    };
    let db = out_dir.join("monitor.db");
    let child = start_ocpipe();
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let t = std::time::Instant::now();
        while !f() {
            assert!(t.elapsed().as_secs() < 30, "{version}: timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    wait("the backfill", &|| stored_message(&db, 900).is_some());

    // A new session while ocpipe runs: its tokens reach the store within a second.
    oc.run("The second session, while ocpipe watches");
    let finished = std::time::Instant::now();
    wait("the live message", &|| stored_message(&db, 1500).is_some());
    let seen_ms = chrono::Utc::now().timestamp_millis();
    let after_exit = finished.elapsed();
    let (_, completed) = stored_message(&db, 1500).unwrap();
    let latency = seen_ms - completed;
    eprintln!(
        "{version}: commit-to-store latency: {latency} ms after OpenCode completed the message ({after_exit:?} after it exited)"
    );
    assert!(latency < 1000, "{version}: the message took {latency} ms to reach the store");
    wait("the rollup", &|| rollup_all(&db).0 == 900 + 1500);
    let messages = rollup_all(&db).1;

    let stop = |run: Running| run.stop_with_log();
    let log = stop(child);
    let sent = |log: &str| -> u64 {
        let line = log
            .lines()
            .find(|l| l.contains("final counters") && l.contains("component=opencode"))
            .expect("counters logged");
        line.split(" sent=").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap()
    };
    let first_run = sent(&log);
    let follow = if version.starts_with("1.1.") {
        "storage"
    } else if version.starts_with("1.18") || version.starts_with("1.17") {
        "`event` change feed"
    } else {
        "by its rows"
    };
    assert!(log.contains(follow) || version.starts_with("1.1."), "{version}: the feed is named: {log}");

    assert!(first_run > 0);
    // A restart with nothing new re-emits nothing.
    let quiet = start_ocpipe();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let log = stop(quiet);
    assert_eq!(sent(&log), 0, "{version}: a restart re-emitted history: {log}");
    // After another restart, the rollups go on from where they were (one user and one
    // assistant message more, counted on top of what was there), not from zero.
    let again = start_ocpipe();
    std::thread::sleep(std::time::Duration::from_secs(2));
    oc.run("The third session, after a restart");
    wait("the rollup after the restart", &|| rollup_all(&db) == (900 + 1500 + 2500, messages + 2));
    let log = stop(again);
    assert!(log.contains("rollups restored"), "{version}: {log}");
    let data = oc.dir.path().join("data/opencode");
    let stats = stats_json(&["--data-dir", data.to_str().unwrap()]);
    assert_eq!(stats["totals"]["input"].as_i64(), Some(rollup_all(&db).0), "{version}: rollup = ocpipe stats");
    assert_eq!(stats["totals"]["messages"].as_i64(), Some(rollup_all(&db).1), "{version}: rollup = ocpipe stats");
}

#[test]
fn the_monitor_pipeline_follows_opencode_1_18() {
    monitor_follows("1.18.33");
}

#[test]
fn the_monitor_pipeline_follows_opencode_1_15_by_rows() {
    monitor_follows("1.15.13");
}

#[test]
fn the_monitor_pipeline_follows_opencode_1_2_by_rows() {
    monitor_follows("1.2.27");
}

#[test]
fn the_monitor_pipeline_follows_opencode_1_1_json_storage() {
    monitor_follows("1.1.65");
}
