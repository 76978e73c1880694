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
    let capture = Command::new("bash")
        .arg(root().join("fixtures/tools/capture-traces.sh"))
        .arg(&traces)
        .output()
        .unwrap();
    assert!(
        capture.status.success(),
        "capture failed: {}",
        text(&capture.stderr)
    );
    let records: Vec<serde_json::Value> = std::fs::read_dir(&traces)
        .unwrap()
        .flat_map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    // What the script serves: 3 sessions, each with a title call; a 500, a dropped connection
    // (an error record) and a 400.
    let kinds = |k: &str| records.iter().filter(|r| r["kind"] == k).count();
    assert!(kinds("request") >= 8, "{records:?}");
    assert_eq!(kinds("error"), 1);
    assert!(
        records.iter().any(|r| r["status"] == 500) && records.iter().any(|r| r["status"] == 400)
    );
    assert!(
        records
            .iter()
            .all(|r| r["sessionID"].as_str().unwrap().starts_with("ses_")),
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
    assert_eq!(
        stored_traces(&dir.path().join("out/t.db")),
        records.len() as i64
    );
    assert_eq!(
        count(
            &dir.path().join("out/t.db"),
            "SELECT count(DISTINCT session_id) FROM trace_request"
        ),
        3
    );
    for secret in [
        "sk-ocpipe-fixture-0123456789abcdef",
        "sk-ant-api03-fixtureSecretValue0123456789",
    ] {
        assert!(
            !files_containing(&traces, secret).is_empty(),
            "the capture holds {secret}"
        );
        assert!(
            files_containing(&dir.path().join("out"), secret).is_empty(),
            "{secret} leaked"
        );
    }
}
