//! `[[tests]]` tables: what a pipeline test feeds in and what it expects out (Vector's unit
//! tests, for whole pipelines too). Parsed and checked by the loader with every other option.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{FieldError, FieldPath};
use crate::event::EventKind;

/// One test: events in at some components, conditions on what others give.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct TestSpec {
    /// What it checks, printed on its line.
    pub name: String,
    /// Events fed in (`[[tests.inputs]]`).
    #[serde(default)]
    pub inputs: Vec<TestInput>,
    /// What must come out (`[[tests.outputs]]`).
    #[serde(default)]
    pub outputs: Vec<TestOutput>,
    /// Components that must give nothing.
    #[serde(default)]
    pub no_outputs_from: Vec<String>,
}

/// Events put in at one component: as a source's output (the source itself does not run), or
/// into a transform's or sink's input.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct TestInput {
    /// The component the events enter at.
    pub insert_at: String,
    /// Their kind (`message`, `live`, `status`, … or `json`); each event is that kind's JSON view.
    #[serde(default = "json_kind")]
    pub kind: EventKind,
    /// The events, in order.
    #[serde(default)]
    pub events: Vec<Value>,
    /// One event (the same as `events = [ … ]` with one).
    pub event: Option<Value>,
}

impl TestInput {
    pub fn all_events(&self) -> impl Iterator<Item = &Value> {
        self.event.iter().chain(&self.events)
    }
}

fn json_kind() -> EventKind {
    EventKind::Json
}

/// What one component gives (a sink: what it was handed; sinks are replaced by captures).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct TestOutput {
    /// The component whose events are checked.
    pub extract_from: String,
    /// Exactly this many events.
    pub count: Option<usize>,
    /// jq conditions (`.` the event's JSON view, `$meta` its metadata): at least one event
    /// satisfies all of them.
    #[serde(default)]
    pub conditions: Vec<String>,
    /// Exactly these events' JSON views, in order.
    pub equals: Option<Vec<Value>>,
}

impl TestSpec {
    /// Problems inside the test itself (paths relative to the test's table); `ids` are the
    /// pipeline's components.
    pub fn check(&self, ids: &[&str]) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let known = |errs: &mut Vec<FieldError>, path: FieldPath, id: &str| {
            if !ids.contains(&id) {
                let close = crate::registry::suggest(id, ids.iter().copied());
                let help = match close.first() {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => format!("components: {}", ids.join(", ")),
                };
                errs.push(FieldError::new(path, format!("no component `{id}` in this pipeline")).help(help));
            }
        };
        if self.inputs.is_empty() {
            errs.push(
                FieldError::new(FieldPath::key("name"), "the test feeds nothing in")
                    .help("add [[tests.inputs]] with insert_at = \"ID\", kind and events"),
            );
        }
        if self.outputs.is_empty() && self.no_outputs_from.is_empty() {
            errs.push(
                FieldError::new(FieldPath::key("name"), "the test checks nothing")
                    .help("add [[tests.outputs]] with extract_from = \"ID\" and conditions, count or equals"),
            );
        }
        for (i, input) in self.inputs.iter().enumerate() {
            let at = FieldPath::key("inputs").index(i);
            known(&mut errs, at.clone().child("insert_at"), &input.insert_at);
            if input.all_events().next().is_none() {
                errs.push(FieldError::new(at.clone().child("events"), "no events").help("add events = [{ … }]"));
            }
            let field = if input.event.is_some() { "event" } else { "events" };
            for (j, ev) in input.all_events().enumerate() {
                if let Err(e) = input.kind.payload(ev.clone()) {
                    let path = if field == "event" && j == 0 {
                        at.clone().child("event")
                    } else {
                        at.clone().child("events").index(j - usize::from(input.event.is_some()))
                    };
                    errs.push(
                        FieldError::new(path, format!("not a {} event: {e}", input.kind.name()))
                            .help("write the kind's JSON view, as `ocpipe tap` shows it"),
                    );
                }
            }
        }
        for (i, output) in self.outputs.iter().enumerate() {
            let at = FieldPath::key("outputs").index(i);
            known(&mut errs, at.clone().child("extract_from"), &output.extract_from);
            if output.count.is_none() && output.conditions.is_empty() && output.equals.is_none() {
                errs.push(
                    FieldError::new(at.clone().child("extract_from"), "nothing is expected of it")
                        .help("add conditions = [\"jq expression\"], count = N or equals = [{ … }]"),
                );
            }
            for (j, c) in output.conditions.iter().enumerate() {
                for mut e in
                    crate::jq::check("conditions", c, "conditions are jq expressions, e.g. '.code == \"busy\"'")
                {
                    e.path = at.clone().child("conditions").index(j);
                    errs.push(e);
                }
            }
        }
        for (i, id) in self.no_outputs_from.iter().enumerate() {
            known(&mut errs, FieldPath::key("no_outputs_from").index(i), id);
        }
        errs
    }
}
