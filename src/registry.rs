//! The component registry. Each component submits one [`Registration`] with
//! [`register_component!`](crate::register_component); the host finds components only here.

use std::fmt;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::component::{SinkConfig, SourceConfig, TransformConfig};
use crate::config::{FieldError, FieldPath, Seg};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Source,
    Transform,
    Sink,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Source, Kind::Transform, Kind::Sink];

    /// The config table that holds components of this kind.
    pub fn table(self) -> &'static str {
        match self {
            Kind::Source => "sources",
            Kind::Transform => "transforms",
            Kind::Sink => "sinks",
        }
    }

    pub fn from_table(table: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.table() == table)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Kind::Source => "source",
            Kind::Transform => "transform",
            Kind::Sink => "sink",
        })
    }
}

/// A parsed component config of any kind.
#[derive(Debug)]
pub enum AnyConfig {
    Source(Box<dyn SourceConfig>),
    Transform(Box<dyn TransformConfig>),
    Sink(Box<dyn SinkConfig>),
}

impl AnyConfig {
    pub fn validate(&self) -> Vec<FieldError> {
        match self {
            AnyConfig::Source(c) => c.validate(),
            AnyConfig::Transform(c) => c.validate(),
            AnyConfig::Sink(c) => c.validate(),
        }
    }

    /// The other components its options name (sinks only, so far).
    pub fn references(&self) -> Vec<crate::component::Reference> {
        match self {
            AnyConfig::Sink(c) => c.references(),
            _ => Vec::new(),
        }
    }
}

/// What a component tells the host about itself.
pub struct Registration {
    pub kind: Kind,
    /// The `type = "…"` name.
    pub type_name: &'static str,
    /// One line, shown by `ocpipe list`.
    pub description: &'static str,
    /// A complete TOML table for this component (without the `[kind.id]` header). The registry
    /// test parses and validates every example.
    pub example: &'static str,
    pub schema: fn() -> schemars::Schema,
    pub parse: fn(toml::Value) -> Result<AnyConfig, Vec<FieldError>>,
}

inventory::collect!(Registration);

/// Every registered component, sorted by kind and name.
pub fn all() -> Vec<&'static Registration> {
    let mut regs: Vec<_> = inventory::iter::<Registration>.into_iter().collect();
    regs.sort_by_key(|r| (r.kind, r.type_name));
    regs
}

pub fn find(kind: Kind, type_name: &str) -> Option<&'static Registration> {
    inventory::iter::<Registration>.into_iter().find(|r| r.kind == kind && r.type_name == type_name)
}

/// Names close to `wanted` (for "did you mean").
pub fn suggest<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut scored: Vec<(f64, &str)> =
        candidates.into_iter().map(|c| (strsim::jaro_winkler(wanted, c), c)).filter(|(s, _)| *s >= 0.75).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().map(|(_, c)| c).take(3).collect()
}

pub fn schema_of<T: JsonSchema>() -> schemars::Schema {
    schemars::schema_for!(T)
}

pub fn parse_source<T: SourceConfig + DeserializeOwned + JsonSchema + 'static>(
    v: toml::Value,
) -> Result<AnyConfig, Vec<FieldError>> {
    parse_strict::<T>(v).map(|c| AnyConfig::Source(Box::new(c)))
}

pub fn parse_transform<T: TransformConfig + DeserializeOwned + JsonSchema + 'static>(
    v: toml::Value,
) -> Result<AnyConfig, Vec<FieldError>> {
    parse_strict::<T>(v).map(|c| AnyConfig::Transform(Box::new(c)))
}

pub fn parse_sink<T: SinkConfig + DeserializeOwned + JsonSchema + 'static>(
    v: toml::Value,
) -> Result<AnyConfig, Vec<FieldError>> {
    parse_strict::<T>(v).map(|c| AnyConfig::Sink(Box::new(c)))
}

/// Deserializes `value` into `T`, reporting every unknown field (with the known ones as help)
/// and the first type error, each with its path.
pub fn parse_strict<T: DeserializeOwned + JsonSchema>(value: toml::Value) -> Result<T, Vec<FieldError>> {
    let mut unknown: Vec<FieldPath> = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let result = {
        let de = serde_path_to_error::Deserializer::new(value, &mut track);
        serde_ignored::deserialize(de, |path| unknown.push(ignored_path(&path)))
    };
    let schema = serde_json::to_value(schema_of::<T>()).unwrap_or(Value::Null);
    let mut errors: Vec<FieldError> = unknown
        .into_iter()
        .map(|path| {
            let parent = FieldPath(path.0[..path.0.len().saturating_sub(1)].to_vec());
            let name = match path.0.last() {
                Some(Seg::Key(k)) => k.clone(),
                _ => path.to_string(),
            };
            let known = known_fields(&schema, &parent);
            let mut e = FieldError::new(path, format!("unknown field `{name}`"));
            e.at_key = true;
            let close = suggest(&name, known.iter().map(String::as_str));
            e.help = Some(match close.first() {
                Some(c) => format!("did you mean `{c}`?"),
                None if known.is_empty() => "remove it".to_string(),
                None => format!("remove it; known fields: {}", known.join(", ")),
            });
            e
        })
        .collect();
    match result {
        Ok(v) if errors.is_empty() => Ok(v),
        Ok(_) => Err(errors),
        Err(err) => {
            let path = to_field_path(&track.path());
            let message = err.to_string();
            let help = if message.starts_with("missing field") {
                "add it; `ocpipe list` shows an example of every component"
            } else {
                "see the component's reference page (`ocpipe doc`)"
            };
            errors.push(FieldError::new(path, message).help(help));
            Err(errors)
        }
    }
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> FieldPath {
    let mut segs = Vec::new();
    fn walk(p: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
        use serde_ignored::Path as P;
        match p {
            P::Root => {}
            P::Seq { parent, index } => {
                walk(parent, out);
                out.push(Seg::Index(*index));
            }
            P::Map { parent, key } => {
                walk(parent, out);
                out.push(Seg::Key(key.clone()));
            }
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => walk(parent, out),
        }
    }
    walk(path, &mut segs);
    FieldPath(segs)
}

fn to_field_path(path: &serde_path_to_error::Path) -> FieldPath {
    use serde_path_to_error::Segment;
    FieldPath(
        path.iter()
            .filter_map(|s| match s {
                Segment::Seq { index } => Some(Seg::Index(*index)),
                Segment::Map { key } => Some(Seg::Key(key.clone())),
                Segment::Enum { .. } | Segment::Unknown => None,
            })
            .collect(),
    )
}

/// The property names of the object at `path` in a JSON schema (following `$ref`s).
fn known_fields(schema: &Value, path: &FieldPath) -> Vec<String> {
    fn deref<'a>(schema: &'a Value, mut node: &'a Value) -> &'a Value {
        while let Some(r) = node.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap_or("");
            match schema.get("$defs").and_then(|d| d.get(name)) {
                Some(n) => node = n,
                None => break,
            }
        }
        node
    }
    let resolve = |node| deref(schema, node);
    let mut node = resolve(schema);
    for seg in &path.0 {
        let next = match seg {
            Seg::Key(k) => node.get("properties").and_then(|p| p.get(k)),
            Seg::Index(_) => node.get("items"),
        };
        match next {
            Some(n) => node = resolve(n),
            None => return Vec::new(),
        }
        // Option<T> is `anyOf: [T, null]` or `type: [.., null]`.
        if let Some(any) = node.get("anyOf").and_then(Value::as_array)
            && let Some(first) = any.iter().find(|v| v.get("type") != Some(&Value::from("null")))
        {
            node = resolve(first);
        }
    }
    node.get("properties").and_then(Value::as_object).map(|p| p.keys().cloned().collect()).unwrap_or_default()
}

/// Writes one Markdown reference page per component into `dir` (plus an index); returns how
/// many pages were written.
pub fn write_docs(dir: &std::path::Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let regs = all();
    let mut index = String::from(
        "# Component reference\n\nGenerated by `ocpipe doc` from the registry; do not edit.\n\n| kind | type | description |\n|---|---|---|\n",
    );
    for r in &regs {
        index.push_str(&format!("| {} | [`{}`]({}.md) | {} |\n", r.kind, r.type_name, r.type_name, r.description));
        std::fs::write(dir.join(format!("{}.md", r.type_name)), reference_page(r))?;
    }
    std::fs::write(dir.join("README.md"), index)?;
    Ok(regs.len())
}

/// The Markdown reference page of one component.
pub fn reference_page(r: &Registration) -> String {
    let schema = serde_json::to_value((r.schema)()).unwrap_or(Value::Null);
    let mut page = format!(
        "# `{}` ({})\n\n{}\n\n## Example\n\n```toml\n[{}.my_{}]\ntype = \"{}\"\n{}{}```\n\n",
        r.type_name,
        r.kind,
        r.description,
        r.kind.table(),
        r.type_name,
        r.type_name,
        if r.kind == Kind::Source { "" } else { "inputs = [\"...\"]\n" },
        r.example.trim_start(),
    );
    if let Some(doc) = schema.get("description").and_then(Value::as_str) {
        page.push_str(doc);
        page.push_str("\n\n");
    }
    page.push_str("## Options\n\n| option | type | default | description |\n|---|---|---|---|\n");
    let props = schema.get("properties").and_then(Value::as_object);
    for (name, prop) in props.into_iter().flatten() {
        let ty = type_name_of(&schema, prop);
        let default = prop.get("default").map(|d| format!("`{d}`")).unwrap_or_else(|| "required".into());
        let default = if default == "required" && !required(&schema, name) { "none".into() } else { default };
        let desc = prop.get("description").and_then(Value::as_str).unwrap_or("").replace('\n', " ");
        page.push_str(&format!("| `{name}` | {ty} | {default} | {desc} |\n"));
    }
    match r.kind {
        Kind::Source => {}
        Kind::Transform => page.push_str("| `inputs` | array of ids or globs | required | Components this one reads from. |\n"),
        Kind::Sink => page.push_str(
            "| `inputs` | array of ids or globs | required | Components this one reads from. |\n\
             | `buffer` | table | `{max_events = 500, when_full = \"block\"}` | The sink's input buffer; `drop_newest` drops instead of slowing the pipeline. |\n",
        ),
    }
    page.push_str("\nEvery component counts events received, sent, dropped, and errors (`ocpipe top`).\n");
    page
}

fn required(schema: &Value, name: &str) -> bool {
    schema.get("required").and_then(Value::as_array).is_some_and(|r| r.iter().any(|v| v == name))
}

fn type_name_of(schema: &Value, prop: &Value) -> String {
    if let Some(r) = prop.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or("");
        if let Some(def) = schema.get("$defs").and_then(|d| d.get(name)) {
            if let Some(vals) = def.get("enum").and_then(Value::as_array) {
                return vals.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(" / ");
            }
            if let Some(one) = def.get("oneOf").and_then(Value::as_array) {
                let vals: Vec<String> = one
                    .iter()
                    .filter_map(|v| v.get("const").or_else(|| v.get("enum").and_then(|e| e.get(0))))
                    .map(|v| format!("`{v}`"))
                    .collect();
                if !vals.is_empty() {
                    return vals.join(" / ");
                }
            }
        }
        return name.to_string();
    }
    match prop.get("type") {
        Some(Value::String(t)) if t == "array" => {
            let inner = prop.get("items").map(|i| type_name_of(schema, i)).unwrap_or_default();
            format!("array of {inner}")
        }
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => {
            ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect::<Vec<_>>().join(" or ")
        }
        _ => prop
            .get("anyOf")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|v| v.get("type") != Some(&Value::from("null"))))
            .map(|v| type_name_of(schema, v))
            .unwrap_or_else(|| "any".into()),
    }
}

/// A subcommand a component contributes (e.g. `ocpipe stats`), registered with
/// [`register_command!`](crate::register_command).
pub struct CommandRegistration {
    pub name: &'static str,
    /// The clap definition of the subcommand (name, about, arguments).
    pub command: fn() -> clap::Command,
    pub run: fn(&clap::ArgMatches) -> std::process::ExitCode,
}

inventory::collect!(CommandRegistration);

pub fn commands() -> Vec<&'static CommandRegistration> {
    let mut c: Vec<_> = inventory::iter::<CommandRegistration>.into_iter().collect();
    c.sort_by_key(|c| c.name);
    c
}

/// Registers a subcommand: `register_command!("stats", command_fn, run_fn);`
#[macro_export]
macro_rules! register_command {
    ($name:literal, $command:path, $run:path) => {
        $crate::inventory::submit! {
            $crate::registry::CommandRegistration { name: $name, command: $command, run: $run }
        }
    };
}

/// Registers a component: `register_component!(source TraceJsonlConfig, "trace_jsonl",
/// "description", EXAMPLE_TOML);` (likewise `transform` and `sink`).
#[macro_export]
macro_rules! register_component {
    (source $ty:ty, $name:literal, $desc:literal, $example:expr) => {
        $crate::register_component!(@ Source, parse_source, $ty, $name, $desc, $example);
    };
    (transform $ty:ty, $name:literal, $desc:literal, $example:expr) => {
        $crate::register_component!(@ Transform, parse_transform, $ty, $name, $desc, $example);
    };
    (sink $ty:ty, $name:literal, $desc:literal, $example:expr) => {
        $crate::register_component!(@ Sink, parse_sink, $ty, $name, $desc, $example);
    };
    (@ $kind:ident, $parse:ident, $ty:ty, $name:literal, $desc:literal, $example:expr) => {
        $crate::inventory::submit! {
            $crate::registry::Registration {
                kind: $crate::registry::Kind::$kind,
                type_name: $name,
                description: $desc,
                example: $example,
                schema: $crate::registry::schema_of::<$ty>,
                parse: $crate::registry::$parse::<$ty>,
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Inner {
        #[serde(default)]
        depth: u32,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Demo {
        path: String,
        #[serde(default)]
        follow: bool,
        inner: Option<Inner>,
    }

    fn toml(s: &str) -> toml::Value {
        toml::Value::Table(toml::from_str(s).unwrap())
    }

    #[test]
    fn reports_every_unknown_field_with_suggestions() {
        let errs = parse_strict::<Demo>(toml("path = 'x'\nfolow = true\nextra = 1\ninner = { dept = 2 }")).unwrap_err();
        let msgs: Vec<_> = errs.iter().map(|e| (e.path.to_string(), e.help.clone().unwrap())).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs.contains(&("folow".into(), "did you mean `follow`?".into())), "{msgs:?}");
        assert!(msgs.iter().any(|(p, h)| p == "extra" && h.contains("known fields")), "{msgs:?}");
        assert!(msgs.contains(&("inner.dept".into(), "did you mean `depth`?".into())), "{msgs:?}");
    }

    #[test]
    fn type_errors_carry_their_path() {
        let errs = parse_strict::<Demo>(toml("path = 'x'\ninner = { depth = 'deep' }")).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path.to_string(), "inner.depth");
        let errs = parse_strict::<Demo>(toml("follow = true")).unwrap_err();
        assert!(errs[0].message.contains("missing field `path`"), "{:?}", errs[0]);
    }
}
