//! Topology behaviour with exact counts: fan-out, fan-in, block vs drop_newest behind a slow
//! sink, draining on shutdown, and the shutdown deadline. The mock components below register
//! themselves from this test crate, like any component: no host file names them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ocpipe::component::*;
use ocpipe::config;
use ocpipe::event::{DataType, Event, Payload};
use ocpipe::runtime::{RunOptions, Summary, Topology};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Emits `count` JSON events (or, with `count = 0`, one every millisecond until shut down);
/// with `mixed`, every odd one is a process event instead.
#[derive(Debug, Deserialize, JsonSchema)]
struct GenConfig {
    count: u64,
    #[serde(default)]
    mixed: bool,
}

ocpipe::register_component!(source GenConfig, "test_gen", "test: numbered events", "count = 10\n");

impl SourceConfig for GenConfig {
    fn outputs(&self) -> DataType {
        if self.mixed { DataType::JSON | DataType::PROCESS } else { DataType::JSON }
    }
    fn build(&self, sc: SourceContext) -> anyhow::Result<ComponentFuture> {
        let (count, mixed) = (self.count, self.mixed);
        Ok(Box::pin(async move {
            let SourceContext { cx, mut out, shutdown } = sc;
            let mut n = 0u64;
            while (count == 0 || n < count) && !shutdown.is_cancelled() {
                let payload = if mixed && n % 2 == 1 {
                    Payload::Process(Box::default())
                } else {
                    Payload::Json(serde_json::json!({ "n": n }))
                };
                out.send(Event::new(cx.id.clone(), chrono::Utc::now(), payload)).await;
                n += 1;
                if count == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Ok(())
        }))
    }
}

static SEEN: Mutex<Option<HashMap<String, Vec<u64>>>> = Mutex::new(None);

fn seen(key: &str) -> Vec<u64> {
    SEEN.lock().unwrap().as_ref().and_then(|m| m.get(key).cloned()).unwrap_or_default()
}

/// Records the `n` of every event under `key`, sleeping `delay_ms` per event (`hang` never ends).
#[derive(Debug, Deserialize, JsonSchema)]
struct RecordConfig {
    key: String,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    hang: bool,
    /// Return an error (or, with `panic`, panic) after this many events.
    fail_after: Option<u64>,
    #[serde(default)]
    panic: bool,
}

ocpipe::register_component!(sink RecordConfig, "test_record", "test: records what arrives", "key = \"k\"\n");

struct Record(String, u64, bool, Option<u64>, bool);

impl SinkConfig for RecordConfig {
    fn input(&self) -> DataType {
        DataType::JSON
    }
    fn build(&self, _cx: &Context) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(Record(self.key.clone(), self.delay_ms, self.hang, self.fail_after, self.panic)))
    }
}

impl Sink for Record {
    fn run(self: Box<Self>, mut input: Input) -> ComponentFuture {
        Box::pin(async move {
            if self.2 {
                std::future::pending::<()>().await;
            }
            while let Some(ev) = input.recv().await {
                if self.1 > 0 {
                    tokio::time::sleep(Duration::from_millis(self.1)).await;
                }
                let n = ev.to_json()["n"].as_u64().unwrap();
                if self.3.is_some_and(|after| n + 1 >= after) {
                    assert!(!self.4, "the test sink panics as asked");
                    anyhow::bail!("the test sink fails as asked");
                }
                SEEN.lock().unwrap().get_or_insert_with(HashMap::new).entry(self.0.clone()).or_default().push(n);
            }
            Ok(())
        })
    }
}

async fn run(toml: &str, stop_after: Option<Duration>) -> Summary {
    let (pipeline, _) = config::load_str("test.toml", toml).unwrap_or_else(|r| panic!("{r}"));
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions { data_dir: dir.path().join("state"), base_dir: dir.path().to_path_buf() };
    let topology = Topology::build(pipeline, &opts).unwrap();
    let shutdown = CancellationToken::new();
    if let Some(after) = stop_after {
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            s.cancel();
        });
    }
    topology.run(shutdown).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_delivers_every_event_to_every_consumer() {
    let s = run(
        r#"
[sources.gen]
type = "test_gen"
count = 1000
[sinks.a]
type = "test_record"
inputs = ["gen"]
key = "fanout_a"
[sinks.b]
type = "test_record"
inputs = ["gen"]
key = "fanout_b"
"#,
        None,
    )
    .await;
    assert!(s.ok());
    assert_eq!(seen("fanout_a"), (0..1000).collect::<Vec<_>>());
    assert_eq!(seen("fanout_b"), (0..1000).collect::<Vec<_>>());
    assert_eq!(s.get("gen").unwrap().sent, 1000);
    assert_eq!(s.get("a").unwrap().received, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_in_merges_sources_through_a_transform() {
    let s = run(
        r#"
[sources.gen_a]
type = "test_gen"
count = 300
[sources.gen_b]
type = "test_gen"
count = 200
[transforms.keep_even]
type = "filter"
inputs = ["gen_*"]
condition = ".n % 2 == 0"
[sinks.out]
type = "test_record"
inputs = ["keep_even"]
key = "fanin"
"#,
        None,
    )
    .await;
    assert!(s.ok());
    assert_eq!(seen("fanin").len(), 250);
    let t = s.get("keep_even").unwrap();
    assert_eq!((t.received, t.sent, t.dropped.intentional), (500, 250, 250));
    assert_eq!(s.get("out").unwrap().received, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_consumer_is_handed_only_the_kinds_it_takes() {
    let s = run(
        r#"
[sources.gen]
type = "test_gen"
count = 100
mixed = true
[sinks.numbers]
type = "test_record"
inputs = ["gen"]
key = "json_only"
[sinks.all]
type = "jsonl"
inputs = ["gen"]
path = "out/{_kind}.jsonl"
"#,
        None,
    )
    .await;
    assert!(s.ok(), "{s:?}");
    assert_eq!(s.get("gen").unwrap().sent, 100);
    // `test_record` takes JSON only: the 50 process events never reach it (nor count there).
    assert_eq!(seen("json_only"), (0..100).step_by(2).collect::<Vec<u64>>());
    assert_eq!(s.get("numbers").unwrap().received, 50);
    assert_eq!(s.get("all").unwrap().received, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_blocks_or_drops_as_configured() {
    let blocking = run(
        r#"
[sources.gen]
type = "test_gen"
count = 200
[sinks.slow]
type = "test_record"
inputs = ["gen"]
key = "slow_block"
delay_ms = 2
buffer = { max_events = 10, when_full = "block" }
"#,
        None,
    )
    .await;
    assert!(blocking.ok());
    assert_eq!(seen("slow_block").len(), 200);
    assert_eq!(blocking.get("slow").unwrap().dropped.total(), 0);

    let dropping = run(
        r#"
[sources.gen]
type = "test_gen"
count = 200
[sinks.slow]
type = "test_record"
inputs = ["gen"]
key = "slow_drop"
delay_ms = 2
buffer = { max_events = 10, when_full = "drop_newest" }
[sinks.fast]
type = "test_record"
inputs = ["gen"]
key = "fast_beside_drop"
"#,
        None,
    )
    .await;
    assert!(dropping.ok());
    let slow = dropping.get("slow").unwrap();
    assert!(slow.dropped.full > 0, "a full drop_newest buffer drops");
    assert_eq!(slow.dropped.total(), slow.dropped.full, "and says why");
    assert_eq!(slow.received + slow.dropped.full, 200);
    assert_eq!(seen("slow_drop").len() as u64, slow.received);
    // The other consumer is not slowed into losing anything.
    assert_eq!(seen("fast_beside_drop").len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_sources_and_drains_everything_downstream() {
    let s = run(
        r#"
[sources.gen]
type = "test_gen"
count = 0
[transforms.pass]
type = "redact"
inputs = ["gen"]
[sinks.out]
type = "test_record"
inputs = ["pass"]
key = "drain"
delay_ms = 1
buffer = { max_events = 50 }
"#,
        Some(Duration::from_millis(300)),
    )
    .await;
    assert!(s.ok(), "{:?}", s);
    let sent = s.get("gen").unwrap().sent;
    assert!(sent > 10);
    let t = s.get("pass").unwrap();
    assert_eq!((t.received, t.sent), (sent, sent));
    assert_eq!(s.get("out").unwrap().received, sent);
    assert_eq!(seen("drain").len() as u64, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_deadline_names_what_is_stuck() {
    let s = run(
        r#"
shutdown_timeout_secs = 1
[sources.gen]
type = "test_gen"
count = 5
[sinks.stuck]
type = "test_record"
inputs = ["gen"]
key = "stuck"
hang = true
"#,
        Some(Duration::from_millis(50)),
    )
    .await;
    assert_eq!(s.timed_out, vec!["stuck".to_string()]);
    assert!(!s.ok());
}

/// A sink that fails (returns an error, or panics) stops the pipeline at once: its buffer is
/// closed, so nothing upstream waits on it until the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_panicked_sink_stops_the_pipeline_promptly() {
    for (key, panic) in [("fails", false), ("panics", true)] {
        let started = std::time::Instant::now();
        let s = run(
            &format!(
                r#"
[sources.gen]
type = "test_gen"
count = 0

[sinks.bad]
type = "test_record"
inputs = ["gen"]
key = "{key}"
fail_after = 5
panic = {panic}
buffer = {{ max_events = 2 }}
"#
            ),
            None,
        )
        .await;
        assert_eq!(s.failed.len(), 1, "{key}: {:?}", s.failed);
        assert_eq!(s.failed[0].0, "bad", "{key}: the component is named");
        assert!(s.timed_out.is_empty(), "{key}: {:?}", s.timed_out);
        assert!(started.elapsed() < Duration::from_secs(10), "{key}: ended in {:?}", started.elapsed());
    }
}
