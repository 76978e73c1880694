//! One harness checks every registered component (like Vector's compliance tests): its example
//! config parses and validates, and it passes the shared harness in `ocpipe::testing` — the
//! counters add up, a transform or sink ends when its input ends, a source stops on shutdown.
//! Each is fed events of every kind it declares it takes (made from real OpenCode captures), and
//! what it gives must be of the kinds it declares. A new component is checked here without
//! anyone adding a line.

mod common;

use std::time::Duration;

use ocpipe::capture::{CaptureEvent, Step, read_capture};
use ocpipe::event::{DataType, Event, LiveEvent, Payload, ProcessInfo, TraceRecord};
use ocpipe::registry::{self, AnyConfig, Kind};
use ocpipe::testing;

fn event(payload: Payload) -> Event {
    Event::new("fixture".into(), chrono::Utc::now(), payload)
}

/// Every record of the captured traces.
fn traces() -> Vec<Event> {
    let mut events = Vec::new();
    for e in std::fs::read_dir(common::root().join("fixtures/traces")).unwrap() {
        for line in std::fs::read_to_string(e.unwrap().path()).unwrap().lines() {
            let rec: TraceRecord = serde_json::from_str(line).unwrap();
            let id = rec.natural_id();
            events.push(event(Payload::Trace(Box::new(rec))).with_id(id));
        }
    }
    events
}

/// The recorded event stream of a real `opencode serve` (a bash call asking for permission).
fn live() -> Vec<Event> {
    let text = std::fs::read_to_string(common::root().join("fixtures/sse/bash-permission.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let properties = v["properties"].clone();
            event(Payload::Live(Box::new(LiveEvent {
                instance: "http://127.0.0.1:4096".into(),
                port: 4096,
                event_type: v["type"].as_str().unwrap().into(),
                session_id: LiveEvent::session_of(&properties),
                properties,
            })))
        })
        .collect()
}

/// A real capture run (OpenCode 1.18.33 in a container, `fixtures/captures/`), as the
/// `docker_capture` source emits it: started, its native events, finished. Written to a copy,
/// so the sinks under test write there.
fn capture(dir: &std::path::Path) -> Vec<Event> {
    let run_dir = dir.join("captures/fix_math_utils");
    copy_dir(&common::root().join("fixtures/captures/fix_math_utils"), &run_dir);
    let run = read_capture(&run_dir).unwrap();
    let (run_id, issue_id) = (run.meta.run_id.clone(), run.meta.issue_id.clone());
    let ev = |step: Step| {
        let c = CaptureEvent { run_id: run_id.clone(), issue_id: issue_id.clone(), capture_dir: run_dir.clone(), step };
        event(Payload::Capture(Box::new(c)))
    };
    let mut events = vec![ev(Step::Started {
        task: run.task.clone(),
        image: run.meta.image.clone(),
        started_at: run.meta.started_at.clone(),
    })];
    events.extend(run.events.iter().enumerate().map(|(n, e)| ev(Step::Native { n, event: e.clone() })));
    events.push(ev(Step::Finished(Box::new(run))));
    events
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn parse(kind: Kind, type_name: &str, body: &str) -> AnyConfig {
    testing::parse(kind, type_name, body).unwrap_or_else(|e| panic!("{type_name}: {e:?}"))
}

/// Samples of every kind of event, each kind made the way a pipeline makes it: OpenCode
/// records by `opencode_storage` from a real 1.18.33 database, statuses by `status` from the
/// recorded live stream, rollups by `aggregate` from those records.
async fn samples(captures: &std::path::Path) -> Vec<Event> {
    let dir = tempfile::tempdir().unwrap();
    let fixture = common::root().join("fixtures/storage/v1.18.33-fork");
    let storage = format!("data_dir = {:?}\nfollow = false\n", fixture.display().to_string());
    let AnyConfig::Source(source) = parse(Kind::Source, "opencode_storage", &storage) else { unreachable!() };
    let opencode = testing::run_source(source.as_ref(), dir.path(), Duration::from_secs(20), |_| false).await.events;
    let of = |events: &[Event], t: DataType| -> Vec<Event> {
        events.iter().filter(|e| t.admits(&e.payload)).cloned().collect()
    };
    let AnyConfig::Transform(status) = parse(Kind::Transform, "status", "debounce_ms = 0\n") else { unreachable!() };
    let statuses = testing::run_transform(status.as_ref(), live(), dir.path()).await.events;
    let AnyConfig::Transform(usage) = parse(Kind::Transform, "aggregate", "group_by = [\"model\"]\nthrottle_ms = 0\n")
    else {
        unreachable!()
    };
    let rollups =
        testing::run_transform(usage.as_ref(), of(&opencode, DataType::SESSION | DataType::MESSAGE), dir.path())
            .await
            .events;
    let process = ProcessInfo {
        pid: std::process::id(),
        change: "started".into(),
        name: "opencode".into(),
        mode: "serve".into(),
        ports: vec![4096],
        ..Default::default()
    };
    let mut all = traces();
    all.extend(opencode);
    all.extend(live());
    all.extend(statuses);
    all.extend(rollups);
    all.push(event(Payload::Process(Box::new(process))));
    all.push(event(Payload::Json(serde_json::json!({"n": 1, "note": "untyped"}))));
    // A model request as the `otlp` source makes it of OpenCode's `ai.streamText.doStream` span.
    let call = serde_json::json!({"sessionID": "ses_1", "providerID": "mock", "modelID": "mock-1",
        "tokens": {"input": 2900, "output": 17, "reasoning": 3, "cache_read": 100}, "timeStart": 1764800000000u64,
        "timeEnd": 1764800000478u64, "msToFirstChunk": 7.1, "traceID": "1e3e", "spanID": "77aa"});
    all.push(event(Payload::Call(Box::new(serde_json::from_value(call).unwrap()))));
    all.extend(capture(captures));
    let mut all: Vec<Event> = all
        .into_iter()
        .map(|mut e| {
            e.meta.finalizer = None;
            e
        })
        .collect();
    all.sort_by_key(|e| e.meta.timestamp);
    all
}

fn kinds(events: &[Event]) -> DataType {
    events.iter().fold(DataType::empty(), |acc, e| acc | DataType::of(&e.payload))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registered_component_passes_the_harness() {
    let regs = registry::all();
    assert!(regs.len() >= 5, "components are registered: {}", regs.len());
    let captures = tempfile::tempdir().unwrap();
    let samples = samples(captures.path()).await;
    assert_eq!(kinds(&samples), DataType::ANY, "samples of every kind");
    for reg in regs {
        let dir = tempfile::tempdir().unwrap();
        let what = format!("{} `{}`", reg.kind, reg.type_name);
        assert!(!reg.description.is_empty() && !reg.description.ends_with('.'), "{what}: one-line description");
        let cfg = testing::parse(reg.kind, reg.type_name, reg.example)
            .unwrap_or_else(|e| panic!("{what}: its example does not validate: {e:?}"));
        let takes = cfg.input().unwrap_or(DataType::empty());
        let fed: Vec<Event> = samples.iter().filter(|e| takes.admits(&e.payload)).cloned().collect();
        let n = fed.len() as u64;
        match &cfg {
            AnyConfig::Source(c) => {
                // A source that needs something this machine may not give its example (a task
                // file, a Docker engine) must refuse to build with an error that says what to do.
                if let Err(e) = testing::try_build_source(c.as_ref(), dir.path()) {
                    let msg = format!("{e:#}");
                    assert!(msg.contains(": ") && msg.len() > 30, "{what}: an unclear build error: {msg}");
                    eprintln!("compliant: {what} (refuses to build here, clearly: {msg})");
                    continue;
                }
                let out = testing::run_source(c.as_ref(), dir.path(), Duration::from_millis(300), |_| false).await;
                assert_eq!(out.metrics.errors, 0, "{what}");
                assert!(
                    c.outputs().contains(kinds(&out.events)),
                    "{what} gave {} beyond what it declares",
                    kinds(&out.events)
                );
            }
            AnyConfig::Transform(c) => {
                assert!(!fed.is_empty(), "{what}: no samples of {takes}");
                let fed_kinds = kinds(&fed);
                let out = testing::run_transform(c.as_ref(), fed, dir.path()).await;
                let (m, gave) = (out.metrics, kinds(&out.events));
                assert!(c.outputs(fed_kinds).contains(gave), "{what} fed {fed_kinds} gave {gave}, not declared");
                assert_eq!((m.errors, m.dropped.error), (0, 0), "{what}: {m:?}");
                if out.per_event {
                    assert_eq!(m.sent + m.dropped.total(), n, "{what}: every event is sent on or dropped");
                } else {
                    // A stateful transform fed what it takes makes something of it.
                    assert!(m.sent > 0, "{what}: fed {n} events of {fed_kinds}, gave nothing");
                    assert_eq!(m.dropped.total(), 0, "{what} dropped events of kinds it declares: {m:?}");
                }
            }
            AnyConfig::Sink(c) => {
                assert!(!fed.is_empty(), "{what}: no samples of {takes}");
                let m = testing::run_sink(c.as_ref(), fed, dir.path()).await;
                // A sink whose far end is not there (the `mqtt` example's broker) counts what it
                // could not deliver as dropped for an error; that is no error of its own.
                assert_eq!(m.errors, 0, "{what}: {m:?}");
            }
        }
        eprintln!("compliant: {what} (takes {takes}, fed {n})");
    }
}

#[test]
fn reference_pages_are_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    ocpipe::docs::write_docs(dir.path()).unwrap();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        let checked_in = common::root().join("docs/components").join(name);
        let want = std::fs::read_to_string(&p).unwrap();
        let have = std::fs::read_to_string(&checked_in).unwrap_or_default();
        assert!(want == have, "docs/components/{} is stale: run `cargo run -- doc`", name.to_string_lossy());
    }
}
