//! The component registry. Each component submits one [`Registration`] with
//! [`register_component!`](crate::register_component); the host finds components only here.

use std::fmt;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::component::{SinkConfig, SourceConfig, TransformConfig};
use crate::config::{FieldError, FieldPath, Seg};
use crate::event::DataType;

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

    /// The kinds of events it takes (`None` for a source).
    pub fn input(&self) -> Option<DataType> {
        match self {
            AnyConfig::Source(_) => None,
            AnyConfig::Transform(c) => Some(c.input()),
            AnyConfig::Sink(c) => Some(c.input()),
        }
    }

    /// The kinds it gives when fed all it takes (nothing for a sink).
    pub fn outputs(&self) -> DataType {
        match self {
            AnyConfig::Source(c) => c.outputs(),
            AnyConfig::Transform(c) => c.outputs(c.input()),
            AnyConfig::Sink(_) => DataType::empty(),
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

impl Registration {
    /// What it takes and gives, as declared by its example config (`None` for a source's
    /// input). Every example parses: the compliance test checks it.
    pub fn data_types(&self) -> (Option<DataType>, DataType) {
        let table: toml::Table = toml::from_str(self.example).unwrap_or_default();
        match (self.parse)(toml::Value::Table(table)) {
            Ok(c) => (c.input(), c.outputs()),
            Err(_) => (Some(DataType::ANY), DataType::ANY),
        }
    }
}

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
    let schema = serde_json::to_value(schema_of::<T>()).unwrap_or(Value::Null);
    // Top-level keys the schema does not list: serde_ignored cannot see past `#[serde(flatten)]`.
    let top = known_fields(&schema, &FieldPath::default());
    if let (toml::Value::Table(t), false) = (&value, top.is_empty()) {
        unknown.extend(t.keys().filter(|k| !top.contains(k)).map(|k| FieldPath::key(k)));
    }
    let mut track = serde_path_to_error::Track::new();
    let result = {
        let de = serde_path_to_error::Deserializer::new(value, &mut track);
        serde_ignored::deserialize(de, |path| {
            let path = ignored_path(&path);
            if !unknown.contains(&path) {
                unknown.push(path);
            }
        })
    };
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
