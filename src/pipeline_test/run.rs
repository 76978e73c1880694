//! Runs one `[[tests]]` table on a fresh copy of its pipeline: no source runs (a source named by
//! `insert_at` gives the test's events instead), every sink is replaced by a capture that takes
//! the kinds the sink takes, transforms run as configured (state in a temporary directory), and
//! what each component named by `extract_from` gives is captured beside its consumers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::TestSpec;
use crate::component::{ComponentFuture, Context, Input, Sink, SinkConfig, SourceConfig, SourceContext};
use crate::config::{BufferConfig, ComponentDef, Pipeline};
use crate::event::{DataType, Event, EventKind};
use crate::registry::{AnyConfig, Kind};
use crate::runtime::{RunOptions, Topology};

/// Events each checked component gave, by id.
pub type Captured = HashMap<String, Vec<Event>>;

/// How long one test may run (its transforms' timers and plugins included).
const TEST_DEADLINE: Duration = Duration::from_secs(60);

/// The test's events, sent once in order; then the source ends.
#[derive(Debug)]
struct Feed {
    events: Vec<(EventKind, serde_json::Value)>,
}

impl SourceConfig for Feed {
    fn outputs(&self) -> DataType {
        self.events.iter().fold(DataType::empty(), |acc, (k, _)| acc | k.data_type())
    }
    fn build(&self, sc: SourceContext) -> anyhow::Result<ComponentFuture> {
        let mut events = Vec::with_capacity(self.events.len());
        for (kind, view) in &self.events {
            let payload = kind.payload(view.clone()).map_err(anyhow::Error::msg)?;
            events.push(Event::new(sc.cx.id.clone(), chrono::Utc::now(), payload));
        }
        let SourceContext { mut out, .. } = sc;
        Ok(Box::pin(async move {
            out.send_all(events).await;
            Ok(())
        }))
    }
}

/// Keeps what reaches it.
#[derive(Debug)]
struct Capture {
    accepts: DataType,
    into: Arc<Mutex<Vec<Event>>>,
}

impl SinkConfig for Capture {
    fn input(&self) -> DataType {
        self.accepts
    }
    fn build(&self, _: &Context) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(CaptureSink(self.into.clone())))
    }
}

struct CaptureSink(Arc<Mutex<Vec<Event>>>);

impl Sink for CaptureSink {
    fn run(self: Box<Self>, mut input: Input) -> ComponentFuture {
        Box::pin(async move {
            while let Some(ev) = input.recv().await {
                self.0.lock().unwrap().push(ev);
            }
            Ok(())
        })
    }
}

fn def(id: String, kind: Kind, type_name: &'static str, inputs: Vec<String>, config: AnyConfig) -> ComponentDef {
    ComponentDef { id, kind, type_name, inputs, buffer: BufferConfig::default(), config, options: String::new() }
}

/// Runs `test` on `pipeline` (a fresh load: components are built once).
pub async fn run(test: &TestSpec, pipeline: Pipeline, base_dir: &Path) -> anyhow::Result<Captured> {
    let mut feeds: HashMap<String, Vec<(EventKind, serde_json::Value)>> = HashMap::new();
    for input in &test.inputs {
        let list = feeds.entry(input.insert_at.clone()).or_default();
        list.extend(input.all_events().map(|v| (input.kind, v.clone())));
    }
    let mut captures: HashMap<String, Arc<Mutex<Vec<Event>>>> = HashMap::new();
    let mut capture = |id: &str| captures.entry(id.to_string()).or_default().clone();
    let wanted: Vec<&str> = test
        .outputs
        .iter()
        .map(|o| o.extract_from.as_str())
        .chain(test.no_outputs_from.iter().map(String::as_str))
        .collect();

    let mut components = Vec::new();
    for mut c in pipeline.components {
        match c.kind {
            // A source never runs; one the test feeds gives its events under the same id.
            Kind::Source => {
                if let Some(events) = feeds.remove(&c.id) {
                    let feed = AnyConfig::Source(Box::new(Feed { events }));
                    components.push(def(c.id.clone(), Kind::Source, "test input", vec![], feed));
                    if wanted.contains(&c.id.as_str()) {
                        let cap = AnyConfig::Sink(Box::new(Capture { accepts: DataType::ANY, into: capture(&c.id) }));
                        components.push(def(
                            format!("{}__test_capture", c.id),
                            Kind::Sink,
                            "test capture",
                            vec![c.id],
                            cap,
                        ));
                    }
                }
            }
            Kind::Sink => {
                let accepts = c.config.input().unwrap_or(DataType::ANY);
                let into = capture(&c.id);
                if let Some(events) = feeds.remove(&c.id) {
                    let feed = format!("{}__test_input", c.id);
                    components.push(def(
                        feed.clone(),
                        Kind::Source,
                        "test input",
                        vec![],
                        AnyConfig::Source(Box::new(Feed { events })),
                    ));
                    c.inputs.push(feed);
                }
                components.push(def(
                    c.id,
                    Kind::Sink,
                    "test capture",
                    c.inputs,
                    AnyConfig::Sink(Box::new(Capture { accepts, into })),
                ));
            }
            Kind::Transform => {
                if let Some(events) = feeds.remove(&c.id) {
                    let feed = format!("{}__test_input", c.id);
                    components.push(def(
                        feed.clone(),
                        Kind::Source,
                        "test input",
                        vec![],
                        AnyConfig::Source(Box::new(Feed { events })),
                    ));
                    c.inputs.push(feed);
                }
                let id = c.id.clone();
                components.push(c);
                if wanted.contains(&id.as_str()) {
                    let into = capture(&id);
                    let cap = AnyConfig::Sink(Box::new(Capture { accepts: DataType::ANY, into }));
                    components.push(def(format!("{id}__test_capture"), Kind::Sink, "test capture", vec![id], cap));
                }
            }
        }
    }
    let data_dir = tempfile::tempdir()?;
    let pipeline = Pipeline { components, tests: Vec::new(), api: None, ..pipeline };
    let opts = RunOptions { data_dir: data_dir.path().to_path_buf(), base_dir: base_dir.to_path_buf() };
    let topology = Topology::build(pipeline, &opts)?;
    let summary = tokio::time::timeout(TEST_DEADLINE, topology.run(CancellationToken::new()))
        .await
        .map_err(|_| anyhow::anyhow!("the pipeline did not finish within {TEST_DEADLINE:?}"))?;
    if let Some((id, why)) = summary.failed.first() {
        anyhow::bail!("component `{id}` failed: {why}");
    }
    Ok(captures.into_iter().map(|(id, events)| (id, std::mem::take(&mut *events.lock().unwrap()))).collect())
}
