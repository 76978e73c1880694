//! End to end: the ocpipe binary over trace files captured from a real OpenCode.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SECRETS: [&str; 2] = ["sk-ocpipe-fixture-0123456789abcdef", "sk-ant-api03-fixtureSecretValue0123456789"];

fn pipeline(dir: &Path, follow: bool) -> std::path::PathBuf {
    let cfg = format!(
        r#"
[sources.traces]
type = "trace_jsonl"
path = "traces"
follow = {follow}
poll_interval_ms = 50

[transforms.redacted]
type = "redact"
inputs = ["traces"]

[sinks.db]
type = "sqlite"
inputs = ["redacted"]
path = "out/traces.db"

[sinks.files]
type = "jsonl"
inputs = ["redact*"]
path = "out/jsonl/{{sessionID}}.jsonl"
"#
    );
    let p = dir.join("pipeline.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

#[test]
fn checked_in_pipelines_validate() {
    for p in ["pipelines/trace.toml", "pipelines/monitor.toml"] {
        let out = Command::new(bin()).args(["validate", p]).current_dir(root()).output().unwrap();
        assert!(out.status.success(), "{p}: {}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with("ok: "), "{}", text(&out.stdout));
    }
    // The binary carries them, so they work from any directory.
    let dir = tempfile::tempdir().unwrap();
    let out = ocpipe(dir.path(), &["validate", "pipelines/monitor.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn options_naming_another_component_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "\
[sources.procs]
type = \"process_scan\"

[sinks.mqtt]
type = \"mqtt\"
inputs = [\"procs\"]
targets_from = \"pag\"

[sinks.light]
type = \"ble\"
inputs = [\"procs\"]
targets_from = \"procs\"
";
    std::fs::write(dir.path().join("refs.toml"), cfg).unwrap();
    let out = ocpipe(dir.path(), &["validate", "refs.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("error: no component `pag` (`targets_from` names it)"), "{err}");
    assert!(err.contains("--> refs.toml:7:16 (sinks.mqtt.targets_from)"), "{err}");
    assert!(err.contains("error: `procs` is a `process_scan` source, not a `websocket`"), "{err}");
    assert!(err.contains("--> refs.toml:12:16 (sinks.light.targets_from)"), "{err}");
    // And `ble` takes statuses, which a process scan never gives.
    assert!(err.contains("error: sink `light` (ble) takes status, but `procs` (process_scan) gives process"), "{err}");
    assert!(err.contains("--> refs.toml:11:11 (sinks.light.inputs[0])"), "{err}");
    assert!(err.contains("3 errors in the configuration"), "{err}");
}

#[test]
fn config_errors_come_all_at_once_with_locations() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "\
[sources.traces]
type = \"trace_jsonl\"
path = \"traces\"
folow = true

[transforms.a]
type = \"filter\"
inputs = [\"b\"]
condition = \"true\"

[transforms.b]
type = \"redact\"
inputs = [\"a\"]

[sinks.out]
type = \"jsonl\"
inputs = [\"tracez\"]
path = \"out/{sessionID}.jsonl\"
";
    std::fs::write(dir.path().join("bad.toml"), cfg).unwrap();
    let out = ocpipe(dir.path(), &["validate", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("error: unknown field `folow`"), "{err}");
    assert!(err.contains("--> bad.toml:4:1 (sources.traces.folow)"), "{err}");
    assert!(err.contains("did you mean `follow`?"), "{err}");
    assert!(err.contains("error: unknown input `tracez` for sink `out`"), "{err}");
    assert!(err.contains("--> bad.toml:17:11 (sinks.out.inputs[0])"), "{err}");
    assert!(err.contains("did you mean `traces`?"), "{err}");
    assert!(err.contains("error: cycle: a -> b -> a") || err.contains("error: cycle: b -> a -> b"), "{err}");
    assert!(err.contains("3 errors in the configuration"), "{err}");
    // `run` refuses the same file the same way.
    let out = ocpipe(dir.path(), &["run", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("3 errors in the configuration"));
}

#[test]
fn unknown_types_and_bad_values_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "\
[sources.t]
type = \"trace_json\"
path = \"x\"

[sinks.s]
type = \"sqlite\"
inputs = [\"t\"]
path = \"x.db\"
buffer = { max_events = 10, when_full = \"drop_oldest\" }

[transforms.f]
type = \"filter\"
inputs = [\"t\"]
condition = '.kind =='
";
    std::fs::write(dir.path().join("bad.toml"), cfg).unwrap();
    let err = text(&ocpipe(dir.path(), &["validate", "bad.toml"]).stderr);
    assert!(err.contains("unknown source type `trace_json`"), "{err}");
    assert!(err.contains("did you mean `trace_jsonl`?"), "{err}");
    assert!(err.contains("bad.toml:2:8 (sources.t.type)"), "{err}");
    assert!(err.contains("unknown variant `drop_oldest`"), "{err}");
    assert!(err.contains("(sinks.s.buffer.when_full)"), "{err}");
    assert!(err.contains("condition does not compile"), "{err}");
    assert!(err.contains("bad.toml:14:13 (transforms.f.condition)"), "{err}");
}

#[test]
fn stores_every_record_reports_bad_lines_leaks_no_secret_and_reruns_add_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let records = copy_traces(&dir.path().join("traces"));
    // A malformed line in the middle of a real file, and a partial last line.
    let f = dir.path().join("traces/session-plain.jsonl");
    let mut body = std::fs::read_to_string(&f).unwrap();
    body.insert_str(body.find('\n').unwrap() + 1, "{\"kind\":\"request\", truncated\n");
    body.push_str("{\"kind\":\"request\",\"id\":9");
    std::fs::write(&f, body).unwrap();
    let cfg = pipeline(dir.path(), false);

    let out = ocpipe(dir.path(), &["run", cfg.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("session-plain.jsonl:2: malformed trace record"), "{err}");
    let db = dir.path().join("out/traces.db");
    assert_eq!(stored_traces(&db), records as i64);
    assert_eq!(count(&db, "SELECT count(*) FROM trace_error"), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM trace_response WHERE status = 500"), 1);
    let jsonl_lines: usize = std::fs::read_dir(dir.path().join("out/jsonl"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap().lines().count())
        .sum();
    assert_eq!(jsonl_lines, records);
    for secret in SECRETS {
        assert!(!files_containing(&dir.path().join("traces"), secret).is_empty(), "fixture lacks {secret}");
        let leaks = files_containing(&dir.path().join("out"), secret);
        assert!(leaks.is_empty(), "{secret} leaked into {leaks:?}");
    }
    let auth = count(
        &db,
        "SELECT count(*) FROM trace_request WHERE json_extract(raw, '$.headers.authorization') = '[REDACTED]'",
    );
    assert_eq!(auth, count(&db, "SELECT count(*) FROM trace_request"));

    // Again: the checkpoint means nothing is re-read.
    let out = ocpipe(dir.path(), &["run", cfg.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(stored_traces(&db), records as i64);
    // Without the checkpoint, everything is read again and the store stays the same.
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let out = ocpipe(dir.path(), &["run", cfg.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(stored_traces(&db), records as i64);
}

/// Writes `n` synthetic records (~2 KB each) over 4 files.
fn write_records(dir: &Path, from: usize, n: usize) {
    let pad = "p".repeat(2000);
    let mut files: Vec<_> = (0..4)
        .map(|i| std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("s{i}.jsonl"))).unwrap())
        .collect();
    for i in from..from + n {
        let line = format!(
            r#"{{"kind":"request","id":{i},"timestamp":"2026-04-25T02:41:09.000Z","sessionID":"ses_{}","method":"POST","url":"http://127.0.0.1/v1/chat/completions","headers":{{"authorization":"Bearer sk-bulk-0123456789abcdefghij"}},"body":{{"pad":"{pad}"}}}}"#,
            i % 4
        );
        writeln!(files[i % 4], "{line}").unwrap();
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stored_if_any(db: &Path) -> i64 {
    if !db.exists() {
        return 0;
    }
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM trace_request", [], |r| r.get(0)).unwrap_or(0)
}

#[test]
fn kill_9_mid_run_then_restart_stores_exactly_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("traces");
    std::fs::create_dir_all(&traces).unwrap();
    let total = 40_000;
    write_records(&traces, 0, total);
    let cfg = pipeline(dir.path(), true);
    let db = dir.path().join("out/traces.db");
    let mut child = spawn_run(dir.path(), &cfg, Stdio::null());
    wait_for("a partial store", Duration::from_secs(60), || stored_if_any(&db) >= 2_000);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = stored_if_any(&db);
    assert!(partial < total as i64, "the run should have been cut short ({partial})");

    let out = ocpipe(dir.path(), &["run", pipeline(dir.path(), false).to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stored_if_any(&db), total as i64);
}

#[test]
fn sigterm_mid_file_then_append_and_restart_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("traces");
    std::fs::create_dir_all(&traces).unwrap();
    write_records(&traces, 0, 20_000);
    let cfg = pipeline(dir.path(), true);
    let db = dir.path().join("out/traces.db");
    let child = spawn_run(dir.path(), &cfg, Stdio::piped());
    wait_for("a partial store", Duration::from_secs(60), || stored_if_any(&db) >= 1_000);
    unsafe { libc_kill(child.id() as i32, 15) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("shutting down"), "{}", text(&out.stderr));

    write_records(&traces, 20_000, 5_000);
    let out = ocpipe(dir.path(), &["run", pipeline(dir.path(), false).to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stored_if_any(&db), 25_000);
    // A graceful stop checkpoints exactly what was delivered: the JSONL has no duplicate.
    let lines: usize = std::fs::read_dir(dir.path().join("out/jsonl"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap().lines().count())
        .sum();
    assert_eq!(lines, 25_000);
}

/// `ocpipe run CFG` in the background, with its state under `dir`.
fn spawn_run(dir: &Path, cfg: &Path, stderr: Stdio) -> std::process::Child {
    Command::new(bin())
        .args(["run", cfg.to_str().unwrap()])
        .current_dir(dir)
        .env("OCPIPE_DATA_DIR", dir.join("state"))
        .stderr(stderr)
        .spawn()
        .unwrap()
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn tap_and_top_watch_a_running_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("traces")).unwrap();
    let cfg = pipeline(dir.path(), true);
    let mut child = spawn_run(dir.path(), &cfg, Stdio::null());
    wait_for("the control socket", Duration::from_secs(10), || dir.path().join("state/control.sock").exists());
    let mut tap = Command::new(bin())
        .args(["tap", "redacted", "--limit", "2"])
        .env("OCPIPE_DATA_DIR", dir.path().join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The handshake: once `tap` says it is tapping, nothing sent after is missed.
    let (said, heard) = std::sync::mpsc::channel();
    let stderr = tap.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = said.send(line);
        }
    });
    let hello = heard.recv_timeout(Duration::from_secs(10)).expect("`ocpipe tap` says when it is tapping");
    assert!(hello.starts_with("tapping `redacted`"), "{hello}");
    write_records(&dir.path().join("traces"), 0, 4);
    let (done, got) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(tap.wait_with_output());
    });
    let tapped =
        got.recv_timeout(Duration::from_secs(20)).expect("`ocpipe tap --limit 2` ends after 2 events").unwrap();
    let lines: Vec<serde_json::Value> =
        text(&tapped.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["meta"]["kind"], "trace.request");
    assert_eq!(lines[0]["event"]["headers"]["authorization"], "[REDACTED]");

    let top = ocpipe(dir.path(), &["top", "--once"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&top.stdout).unwrap();
    let traces = rows.iter().find(|r| r["id"] == "traces").unwrap();
    assert_eq!(traces["sent"], 4);
    assert_eq!(traces["caught_up"], true, "the source says it follows: {traces}");
    let wrong = ocpipe(dir.path(), &["tap", "redactd"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        text(&wrong.stderr).contains("no component `redactd`; components: traces, redacted"),
        "{}",
        text(&wrong.stderr)
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn the_readme_example_validates() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme.find("```toml\n").expect("README has a TOML example") + 8;
    let end = start + readme[start..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("readme.toml"), &readme[start..end]).unwrap();
    let out = ocpipe(dir.path(), &["validate", "readme.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_failed_delivery_does_not_hold_up_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("traces");
    std::fs::create_dir_all(&traces).unwrap();
    write_records(&traces, 0, 8);
    // The sink's directory is a file.
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    std::fs::write(dir.path().join("out/jsonl"), "not a directory").unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        "[sources.traces]\ntype = \"trace_jsonl\"\npath = \"traces\"\n\
         [sinks.files]\ntype = \"jsonl\"\ninputs = [\"traces\"]\npath = \"out/jsonl/{sessionID}.jsonl\"\n",
    )
    .unwrap();
    let run = Running::start_in(dir.path(), cfg.to_str().unwrap(), &[]);
    // Every record has failed (one line per trace file) before the end is asked for.
    common::wait_for("the failures", Duration::from_secs(30), || {
        (run.log().matches("was not delivered").count() == 4).then_some(())
    });
    let asked = Instant::now();
    signal(run.pid(), 2);
    let (status, log) = run.finish(Duration::from_secs(120));
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the end waited {:?} for a failed delivery: {log}",
        asked.elapsed()
    );
    assert!(status.success(), "{log}");
    // Said once per path and reason (four session files), in words that say what is wrong.
    let said = log.matches("is a file, not a directory").count();
    assert_eq!(said, 4, "{log}");
    assert!(log.contains("errors=8"), "every failed record counted: {log}");
    assert!(!log.contains("still draining"), "{log}");
    assert_eq!(log.matches("was not delivered").count(), 4, "once per trace file: {log}");
    // Nothing was checkpointed past the failures: a run with a good sink gets all 8.
    std::fs::remove_file(dir.path().join("out/jsonl")).unwrap();
    let out = ocpipe(dir.path(), &["run", pipeline(dir.path(), false).to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stored_if_any(&dir.path().join("out/traces.db")), 8);
    assert!(!dir.path().join("state/control.sock").exists(), "a finished run leaves no control socket");
}

#[test]
fn ten_thousand_files_under_a_low_open_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("traces");
    std::fs::create_dir_all(&traces).unwrap();
    let n = 10_000;
    for i in 0..n {
        std::fs::write(
            traces.join(format!("{i:05}.jsonl")),
            format!(
                "{{\"kind\":\"request\",\"id\":{i},\"timestamp\":\"2026-04-25T02:41:09.000Z\",\"sessionID\":\"ses_{}\",\"headers\":{{}}}}\n",
                i % 50
            ),
        )
        .unwrap();
    }
    let cfg = pipeline(dir.path(), false);
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -n 1024 && exec {} run {}", bin(), cfg.display()))
        .current_dir(dir.path())
        .env("OCPIPE_DATA_DIR", dir.path().join("state"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stored_if_any(&dir.path().join("out/traces.db")), n as i64);
    let lines: usize = std::fs::read_dir(dir.path().join("out/jsonl"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap().lines().count())
        .sum();
    assert_eq!(lines, n);
}
