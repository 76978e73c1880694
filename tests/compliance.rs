//! One harness checks every registered component (like Vector's compliance tests): its example
//! config parses and validates, and it passes the shared harness in `ocpipe::testing` — the
//! counters add up, a transform or sink ends when its input ends, a source stops on shutdown.
//! A new component is checked here without anyone adding a line.

mod common;

use std::time::Duration;

use ocpipe::event::{Event, Payload, TraceRecord};
use ocpipe::registry::{self, AnyConfig};
use ocpipe::testing;

/// Every record of the captured fixtures, as events.
fn sample_events() -> Vec<Event> {
    let mut events = Vec::new();
    for e in std::fs::read_dir(common::root().join("fixtures/traces")).unwrap() {
        for line in std::fs::read_to_string(e.unwrap().path()).unwrap().lines() {
            let rec: TraceRecord = serde_json::from_str(line).unwrap();
            let id = rec.natural_id();
            events.push(Event::new("fixture".into(), chrono::Utc::now(), Payload::Trace(Box::new(rec))).with_id(id));
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registered_component_passes_the_harness() {
    let regs = registry::all();
    assert!(regs.len() >= 5, "components are registered: {}", regs.len());
    let n = sample_events().len() as u64;
    for reg in regs {
        let dir = tempfile::tempdir().unwrap();
        let what = format!("{} `{}`", reg.kind, reg.type_name);
        assert!(!reg.description.is_empty() && !reg.description.ends_with('.'), "{what}: one-line description");
        let cfg = testing::parse(reg.kind, reg.type_name, reg.example)
            .unwrap_or_else(|e| panic!("{what}: its example does not validate: {e:?}"));
        match cfg {
            AnyConfig::Source(c) => {
                let out = testing::run_source(c.as_ref(), dir.path(), Duration::from_millis(300), |_| false).await;
                assert_eq!(out.metrics.errors, 0, "{what}");
            }
            AnyConfig::Transform(c) => {
                let out = testing::run_transform(c.as_ref(), sample_events(), dir.path()).await;
                if out.per_event {
                    assert!(out.metrics.sent + out.metrics.dropped >= n, "{what}: every event is sent on or dropped");
                } else {
                    // A stateful transform absorbs what it sums; what it cannot use, it drops.
                    assert!(out.metrics.dropped <= n, "{what}");
                }
            }
            AnyConfig::Sink(c) => {
                let m = testing::run_sink(c.as_ref(), sample_events(), dir.path()).await;
                assert_eq!(m.errors, 0, "{what}");
            }
        }
        eprintln!("compliant: {what}");
    }
}

#[test]
fn reference_pages_are_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    registry::write_docs(dir.path()).unwrap();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        let checked_in = common::root().join("docs/components").join(name);
        let want = std::fs::read_to_string(&p).unwrap();
        let have = std::fs::read_to_string(&checked_in).unwrap_or_default();
        assert!(want == have, "docs/components/{} is stale: run `cargo run -- doc`", name.to_string_lossy());
    }
}
