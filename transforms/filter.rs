//! `filter`: keeps the events for which a jq condition (run by jaq) is true.
//!
//! The condition sees the event's JSON view as `.` and its metadata as `$meta`
//! (`{kind, source, timestamp, id}`). An event is kept when the condition's first output is
//! neither `false` nor `null`; a condition that errors on an event drops it and counts an error.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{Context, FunctionTransform, Transform, TransformConfig};
use crate::config::FieldError;
use crate::event::{DataType, Event};
use crate::jq::{self, Jq};
use crate::metrics::DropReason;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct FilterConfig {
    /// A jq expression, e.g. `.kind == "request" and ($meta.source | startswith("traces"))`.
    pub condition: String,
}

const EXAMPLE: &str = r#"condition = '.kind != "error" and (.url // "" | test("/chat/completions|/messages|/responses"))'
"#;

crate::register_component!(
    transform FilterConfig,
    "filter",
    "Keeps events for which a jq condition holds (jaq); $meta holds kind, source, timestamp, id",
    EXAMPLE
);

impl TransformConfig for FilterConfig {
    fn input(&self) -> DataType {
        DataType::ANY
    }
    fn outputs(&self, input: DataType) -> DataType {
        input
    }
    fn validate(&self) -> Vec<FieldError> {
        jq::check("condition", &self.condition, "conditions are jq expressions, e.g. '.kind == \"request\"'")
    }

    fn build(&self, cx: &Context) -> anyhow::Result<Transform> {
        let program = jq::compile(&self.condition).map_err(|e| anyhow::anyhow!("condition does not compile: {e:?}"))?;
        Ok(Transform::Function(Box::new(Filter { program, cx: cx.clone() })))
    }
}

struct Filter {
    program: Jq,
    cx: Context,
}

impl FunctionTransform for Filter {
    fn transform(&mut self, event: Event, out: &mut Vec<Event>) {
        match self.program.holds(&event) {
            Ok(true) => out.push(event),
            Ok(false) => self.cx.metrics.dropped(DropReason::Intentional, 1),
            Err(e) => {
                self.cx.metrics.dropped(DropReason::Error, 1);
                self.cx.error(format_args!("condition failed on a {} event: {e}", event.kind()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;
    use crate::registry::Kind;
    use crate::testing;

    fn ev(json: serde_json::Value) -> Event {
        Event::new("traces".into(), chrono::Utc::now(), Payload::Json(json))
    }

    #[test]
    fn compile_errors_name_the_place() {
        let errs = testing::parse(Kind::Transform, "filter", "condition = '.kind == '").unwrap_err();
        assert_eq!(errs[0].path.to_string(), "condition");
        assert!(errs[0].message.contains("does not compile"), "{}", errs[0].message);
        let errs = testing::parse(Kind::Transform, "filter", "condition = 'nosuchfn(1)'").unwrap_err();
        assert!(errs[0].message.contains("undefined filter `nosuchfn`"), "{}", errs[0].message);
        assert!(errs[0].message.contains("at character 1"), "{}", errs[0].message);
    }

    #[tokio::test]
    async fn keeps_matching_events_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: FilterConfig = toml::from_str(r#"condition = '.status >= 400 and $meta.source == "traces"'"#).unwrap();
        let events = vec![
            ev(serde_json::json!({"status": 200})),
            ev(serde_json::json!({"status": 500})),
            ev(serde_json::json!({"status": 404})),
            ev(serde_json::json!({"status": "x"})),
        ];
        let out = testing::run_transform(&cfg, events, dir.path()).await;
        let kept: Vec<_> = out.events.iter().map(|e| e.to_json()["status"].clone()).collect();
        // jq orders strings after numbers, so "x" >= 400 holds as in jq itself.
        assert_eq!(kept, [serde_json::json!(500), serde_json::json!(404), serde_json::json!("x")]);
        assert_eq!(out.metrics.dropped.intentional, 1);
        assert_eq!(out.metrics.errors, 0);
    }

    #[tokio::test]
    async fn runtime_errors_drop_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: FilterConfig = toml::from_str(r#"condition = '.a | error("boom")'"#).unwrap();
        let out = testing::run_transform(&cfg, vec![ev(serde_json::json!({"a": 1}))], dir.path()).await;
        assert!(out.events.is_empty());
        assert_eq!((out.metrics.dropped.error, out.metrics.errors), (1, 1));
    }
}
