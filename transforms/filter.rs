//! `filter`: keeps the events for which a jq condition (run by jaq) is true.
//!
//! The condition sees the event's JSON view as `.` and its metadata as `$meta`
//! (`{kind, source, timestamp, id}`). An event is kept when the condition's first output is
//! neither `false` nor `null`; a condition that errors on an event drops it and counts an error.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{Context, FunctionTransform, Transform, TransformConfig};
use crate::config::{FieldError, FieldPath};
use crate::event::Event;

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

type Program = jaq_core::Filter<data::JustLut<Val>>;

/// Compiles a jq program; errors carry the byte offset in the program and a message.
pub fn compile(code: &str) -> Result<Program, Vec<(usize, String)>> {
    let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
    let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let offset = |part: &str| jaq_core::load::span(code, part).start;
    let modules = loader.load(&arena, File { code, path: () }).map_err(|errs| {
        let mut out = Vec::new();
        for (_, e) in errs {
            match e {
                jaq_core::load::Error::Io(v) => out.extend(v.into_iter().map(|(_, m)| (0, m))),
                jaq_core::load::Error::Lex(v) => {
                    out.extend(v.into_iter().map(|(exp, at)| (offset(at), format!("expected {}", exp.as_str()))))
                }
                jaq_core::load::Error::Parse(v) => out.extend(v.into_iter().map(|(exp, at)| {
                    let found = if at.is_empty() {
                        "end of input".to_string()
                    } else {
                        format!("`{}`", at.chars().take(20).collect::<String>())
                    };
                    (offset(at), format!("expected {}, found {found}", exp.as_str()))
                })),
            }
        }
        out
    })?;
    Compiler::default().with_funs(funs).with_global_vars(["$meta"]).compile(modules).map_err(|errs| {
        errs.into_iter()
            .flat_map(|(_, v)| v)
            .map(|(name, undefined)| (offset(name), format!("undefined {} `{name}`", undefined.as_str())))
            .collect()
    })
}

impl TransformConfig for FilterConfig {
    fn validate(&self) -> Vec<FieldError> {
        match compile(&self.condition) {
            Ok(_) => Vec::new(),
            Err(errs) => errs
                .into_iter()
                .map(|(at, msg)| {
                    let col = self.condition[..at.min(self.condition.len())].chars().count() + 1;
                    FieldError::new(
                        FieldPath::key("condition"),
                        format!("condition does not compile: {msg} (at character {col} of the condition)"),
                    )
                    .help("conditions are jq expressions, e.g. '.kind == \"request\"'")
                })
                .collect(),
        }
    }

    fn build(&self, cx: &Context) -> anyhow::Result<Transform> {
        let program = compile(&self.condition).map_err(|e| anyhow::anyhow!("condition does not compile: {e:?}"))?;
        Ok(Transform::Function(Box::new(Filter { program, cx: cx.clone() })))
    }
}

struct Filter {
    program: Program,
    cx: Context,
}

impl Filter {
    fn keep(&self, event: &Event) -> Result<bool, String> {
        let mut json = Vec::with_capacity(256);
        event.write_json(&mut json);
        let input = jaq_json::read::parse_single(&json).map_err(|e| e.to_string())?;
        let meta = serde_json::to_vec(&event.meta_json()).expect("in-memory write");
        let meta = jaq_json::read::parse_single(&meta).map_err(|e| e.to_string())?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.program.lut, Vars::new([meta]));
        let mut out = self.program.id.run((ctx, input)).map(unwrap_valr);
        match out.next() {
            None => Ok(false),
            Some(Ok(v)) => Ok(jaq_core::ValT::as_bool(&v)),
            Some(Err(e)) => Err(e.to_string()),
        }
    }
}

impl FunctionTransform for Filter {
    fn transform(&mut self, event: Event, out: &mut Vec<Event>) {
        match self.keep(&event) {
            Ok(true) => out.push(event),
            Ok(false) => self.cx.metrics.dropped(1),
            Err(e) => {
                self.cx.metrics.dropped(1);
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
        assert_eq!(out.metrics.dropped, 1);
        assert_eq!(out.metrics.errors, 0);
    }

    #[tokio::test]
    async fn runtime_errors_drop_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: FilterConfig = toml::from_str(r#"condition = '.a | error("boom")'"#).unwrap();
        let out = testing::run_transform(&cfg, vec![ev(serde_json::json!({"a": 1}))], dir.path()).await;
        assert!(out.events.is_empty());
        assert_eq!((out.metrics.dropped, out.metrics.errors), (1, 1));
    }
}
