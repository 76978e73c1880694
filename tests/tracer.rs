//! `ocpipe tracer install`: ocpipe's own tracer plugin in a real OpenCode (1.18.33, and 1.2.27,
//! which sends no session header to custom providers) against the scripted LLM: the JSONL files
//! appear in the seed's format with the right session ids, no credential in them, 0600, the
//! diagnostic log says it patched fetch and traced; the files parse as `trace_jsonl` reads them.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;
use ocpipe::event::TraceRecord;

fn traced_by(version: &str, session_prefix: &str) {
    let script = r#"[{"text": "OK", "usage": {"prompt": 120, "completion": 2}}]"#;
    let Some(oc) = OpenCode::start_version(script, version) else { return };
    let traces = oc.dir.path().join("traces");
    let tracer = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.arg("tracer").args(args);
        for (k, v) in oc.env() {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = tracer(&["install", "--dir", traces.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plugin = oc.dir.path().join("config/opencode/plugins/ocpipe-api-tracer.js");
    assert!(plugin.is_file(), "{}", text(&out.stdout));

    oc.run("Reply exactly OK");

    let files: Vec<_> = std::fs::read_dir(&traces)
        .unwrap_or_else(|e| panic!("{}: {e}", traces.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl") && !p.to_string_lossy().ends_with(".debug.jsonl"))
        .collect();
    assert!(!files.is_empty(), "no trace file in {}", traces.display());
    let mut kinds = std::collections::BTreeSet::new();
    for f in &files {
        assert_eq!(std::fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600, "{}", f.display());
        let body = std::fs::read_to_string(f).unwrap();
        assert!(!body.contains("sk-test"), "a credential in {}", f.display());
        for line in body.lines() {
            let rec: TraceRecord = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(rec.session_id.starts_with(session_prefix), "{} in {}", rec.session_id, f.display());
            kinds.insert(rec.kind.as_str().to_string());
        }
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(name.len() > 20 && name.as_bytes()[4] == b'-', "named `<time>-<title>.jsonl`: {name}");
    }
    assert!(kinds.contains("request") && kinds.contains("response"), "{kinds:?}");
    let debug = std::fs::read_to_string(traces.join("opencode-api-tracer.debug.jsonl")).unwrap();
    for event in ["install.start", "install.patched", "fetch.seen", "fetch.traced", "jsonl.write.success"] {
        assert!(debug.contains(&format!("\"event\":\"{event}\"")), "{event} in the diagnostic log");
    }
    assert!(!debug.contains("sk-test"), "no header value in the diagnostic log");

    let out = tracer(&["uninstall"]);
    assert!(out.status.success() && !plugin.exists(), "{}", text(&out.stderr));
}

#[test]
fn the_tracer_records_a_real_opencode_1_18() {
    traced_by("1.18.33", "ses_");
}

#[test]
fn the_tracer_falls_back_to_run_ids_on_opencode_1_2() {
    traced_by("1.2.27", "run_");
}
