use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::TraceJsonlConfig;
use crate::event::{Event, Payload};
use crate::testing;

fn record(session: &str, id: u32, kind: &str) -> String {
    format!(
        r#"{{"kind":"{kind}","id":{id},"timestamp":"2026-04-25T02:41:{:02}.000Z","sessionID":"{session}","method":"POST","url":"http://127.0.0.1/v1/chat/completions","headers":{{}},"body":{{"n":{id}}}}}"#,
        id % 60
    ) + "\n"
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn cfg(dir: &Path, follow: bool) -> TraceJsonlConfig {
    toml::from_str(&format!("path = \"{}\"\nfollow = {follow}\npoll_interval_ms = 20", dir.display())).unwrap()
}

fn ids(events: &[Event]) -> Vec<String> {
    let mut v: Vec<String> = events
        .iter()
        .map(|e| match &e.payload {
            Payload::Trace(t) => format!("{}/{}/{}", t.session_id, t.id_text(), t.kind.as_str()),
            _ => unreachable!(),
        })
        .collect();
    v.sort();
    v
}

async fn read_once(traces: &Path, state: &Path) -> testing::Outcome {
    testing::run_source(&cfg(traces, false), state, Duration::from_secs(10), |_| false).await
}

#[tokio::test]
async fn reads_complete_records_reports_bad_lines_and_waits_for_partial_ones() {
    let traces = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let f = traces.path().join("2026-04-25-10-41-09-Reply.jsonl");
    append(&f, &(record("ses_a", 1, "request") + "{not json\n" + &record("ses_a", 1, "response")));
    append(&f, "\n"); // blank lines are fine
    append(&f, r#"{"kind":"request","id":2,"timestamp":"2026-04-25T02:41:09.000Z","sessionID":"ses_a""#); // no newline yet
    append(&traces.path().join("opencode-api-tracer.debug.jsonl"), "{\"event\":\"install.start\"}\n");
    append(&traces.path().join("notes.txt"), "ignored\n");

    let out = read_once(traces.path(), state.path()).await;
    assert_eq!(ids(&out.events), ["ses_a/1/request", "ses_a/1/response"]);
    assert_eq!(out.metrics.errors, 1, "the malformed line is counted");
    let ev = &out.events[0];
    assert_eq!(ev.meta.id.as_deref(), Some("trace:ses_a:1:request:2026-04-25T02:41:01.000Z"));
    assert_eq!(ev.meta.timestamp.to_rfc3339(), "2026-04-25T02:41:01+00:00");

    // The partial line completes; a second run emits only it.
    append(&f, ",\"headers\":{}}\n");
    let out = read_once(traces.path(), state.path()).await;
    assert_eq!(ids(&out.events), ["ses_a/2/request"]);
    // Nothing new: nothing emitted.
    let out = read_once(traces.path(), state.path()).await;
    assert!(out.events.is_empty());
}

#[tokio::test]
async fn follows_appends_and_new_files() {
    let traces = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    append(&traces.path().join("a.jsonl"), &record("ses_a", 1, "request"));
    let dir = traces.path().to_path_buf();
    let writer = std::sync::Mutex::new(None);
    // Once it follows: an append, a new file with half a line, later the rest of the line.
    let write = || {
        *writer.lock().unwrap() = Some(std::thread::spawn(move || {
            append(&dir.join("a.jsonl"), &record("ses_a", 1, "response"));
            append(&dir.join("b.jsonl"), &record("ses_b", 7, "request")[..40]);
            std::thread::sleep(Duration::from_millis(200));
            append(&dir.join("b.jsonl"), &record("ses_b", 7, "request")[40..]);
        }));
    };
    let out = testing::run_source_live(&cfg(traces.path(), true), state.path(), Duration::from_secs(10), write, |e| {
        e.len() >= 3
    })
    .await;
    writer.lock().unwrap().take().expect("it caught up").join().unwrap();
    assert_eq!(ids(&out.events), ["ses_a/1/request", "ses_a/1/response", "ses_b/7/request"]);
}

#[tokio::test]
async fn rotation_keeps_position_and_truncation_starts_over() {
    let traces = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let a = traces.path().join("a.jsonl");
    append(&a, &(record("ses_a", 1, "request") + &record("ses_a", 1, "response")));
    assert_eq!(read_once(traces.path(), state.path()).await.events.len(), 2);

    // Renamed (still matched) and continued; a new file takes the old name.
    let rotated = traces.path().join("a.1.jsonl");
    std::fs::rename(&a, &rotated).unwrap();
    append(&rotated, &record("ses_a", 2, "request"));
    append(&a, &record("ses_c", 1, "request"));
    let out = read_once(traces.path(), state.path()).await;
    assert_eq!(ids(&out.events), ["ses_a/2/request", "ses_c/1/request"]);

    // Truncated and rewritten: read from the start.
    std::fs::write(&rotated, record("ses_d", 1, "request")).unwrap();
    let out = read_once(traces.path(), state.path()).await;
    assert_eq!(ids(&out.events), ["ses_d/1/request"]);
}

#[tokio::test]
async fn files_that_begin_alike_are_both_read() {
    let traces = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let first = record("ses_a", 1, "request");
    append(&traces.path().join("a.jsonl"), &(first.clone() + &record("ses_a", 2, "request")));
    append(&traces.path().join("b.jsonl"), &(first + &record("ses_b", 3, "request")));
    let out = read_once(traces.path(), state.path()).await;
    // The first records are the same record (one natural id): both copies come out.
    assert_eq!(ids(&out.events), ["ses_a/1/request", "ses_a/1/request", "ses_a/2/request", "ses_b/3/request"]);
    // Each has its own checkpoint.
    append(&traces.path().join("b.jsonl"), &record("ses_b", 4, "request"));
    assert_eq!(ids(&read_once(traces.path(), state.path()).await.events), ["ses_b/4/request"]);
}

#[tokio::test]
async fn many_files_with_few_open_files_lose_nothing() {
    let traces = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    for i in 0..40 {
        append(&traces.path().join(format!("{i:02}.jsonl")), &record(&format!("ses_{i:02}"), 1, "request"));
    }
    let mut c = cfg(traces.path(), true);
    c.max_open_files = 3;
    let dir = traces.path().to_path_buf();
    // Once it follows (and has closed the files it read to their end).
    let write = move || {
        for i in 0..40 {
            append(&dir.join(format!("{i:02}.jsonl")), &record(&format!("ses_{i:02}"), 1, "response"));
        }
    };
    let out = testing::run_source_live(&c, state.path(), Duration::from_secs(10), write, |e| e.len() >= 80).await;
    assert_eq!(out.events.len(), 80, "every file read, before and after it was closed");
    assert!(read_once(traces.path(), state.path()).await.events.is_empty(), "checkpoints for all of them");
}

#[tokio::test]
async fn huge_lines_work_and_lines_over_the_limit_are_skipped() {
    let traces = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let big = "x".repeat(30 * 1024 * 1024);
    let line = format!(
        r#"{{"kind":"request","id":1,"timestamp":"2026-04-25T02:41:09.000Z","sessionID":"ses_big","headers":{{}},"body":{{"prompt":"{big}"}}}}"#
    );
    append(&traces.path().join("a.jsonl"), &(line + "\n" + &record("ses_big", 2, "request")));
    let out = read_once(traces.path(), state.path()).await;
    assert_eq!(ids(&out.events), ["ses_big/1/request", "ses_big/2/request"]);
    match &out.events[0].payload {
        Payload::Trace(t) => assert!(t.body.as_ref().unwrap().get().len() > 30 * 1024 * 1024),
        _ => unreachable!(),
    }

    let state = tempfile::tempdir().unwrap();
    let mut c = cfg(traces.path(), false);
    c.max_line_bytes = 1024 * 1024;
    let out = testing::run_source(&c, state.path(), Duration::from_secs(10), |_| false).await;
    assert_eq!(ids(&out.events), ["ses_big/2/request"]);
    assert_eq!(out.metrics.errors, 1);
}

#[tokio::test]
async fn stops_promptly_on_shutdown_while_following() {
    let traces = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let out = testing::run_source(
        &cfg(&traces.path().join("missing"), true),
        state.path(),
        Duration::from_millis(300),
        |_| false,
    )
    .await;
    assert!(out.events.is_empty());
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn config_errors_point_at_fields() {
    use crate::registry::Kind;
    let errs = testing::parse(Kind::Source, "trace_jsonl", "path = \"\"\npoll_interval_ms = 1\nexclude = [\"a{\"]")
        .unwrap_err();
    let paths: Vec<_> = errs.iter().map(|e| e.path.to_string()).collect();
    assert_eq!(paths, ["path", "exclude[0]", "poll_interval_ms"]);
}

#[tokio::test]
async fn a_big_file_does_not_keep_the_others_waiting() {
    let traces = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // 12 MB in `a` (three rounds' worth), one record in `b`.
    let pad = "x".repeat(10_000);
    let big: String = (0..1200)
        .map(|i| record("ses_a", i, "request").replace("{\"n\"", &format!("{{\"pad\":\"{pad}\",\"n\"")))
        .collect();
    append(&traces.path().join("a.jsonl"), &big);
    append(&traces.path().join("b.jsonl"), &record("ses_b", 1, "request"));
    let out = read_once(traces.path(), state.path()).await;
    assert_eq!(out.events.len(), 1201);
    let order: Vec<String> = out
        .events
        .iter()
        .map(|e| match &e.payload {
            Payload::Trace(t) => t.session_id.clone(),
            _ => unreachable!(),
        })
        .collect();
    let b = order.iter().position(|s| s == "ses_b").unwrap();
    // One turn of `a` (1 MB, about 100 records) before `b`, not all of it.
    assert!(b <= 150, "`b` waited for `a`: read after {b} of its records");
}
