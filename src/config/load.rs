//! Reads TOML files into a checked [`Pipeline`], collecting every problem before reporting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::diagnostic::{Diagnostic, Report, SourceFiles};
use super::interpolate::interpolate_value;
use super::topology::{self, Node};
use super::wiring::{self, Wired};
use super::{BufferConfig, ComponentDef, FieldError, FieldPath, Pipeline, spans};
use crate::pipeline_test::TestSpec;
use crate::registry::{self, AnyConfig, Kind};
use crate::telemetry::ApiConfig;
use crate::usage::PriceOverrides;

const TOP_LEVEL: [&str; 8] =
    ["data_dir", "shutdown_timeout_secs", "api", "prices", "sources", "transforms", "sinks", "tests"];

/// Loads and checks the given files. `Ok` carries warnings (possibly none).
pub fn load(paths: &[PathBuf]) -> Result<(Pipeline, Report), Report> {
    let inputs = paths
        .iter()
        .map(|p| (p.display().to_string(), std::fs::read_to_string(p).map_err(|e| read_error(p, e))))
        .collect();
    load_texts(inputs, &|name| std::env::var(name).ok())
}

/// Loads one config from a string (tests, embedded pipelines).
pub fn load_str(name: &str, text: &str) -> Result<(Pipeline, Report), Report> {
    load_texts(vec![(name.to_string(), Ok(text.to_string()))], &|n| std::env::var(n).ok())
}

fn read_error(path: &Path, e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => format!("cannot read {}: no such file", path.display()),
        _ => format!("cannot read {}: {e}", path.display()),
    }
}

struct Pending {
    id: String,
    kind: Kind,
    file: usize,
    type_name: &'static str,
    inputs: Vec<String>,
    buffer: BufferConfig,
    config: Option<AnyConfig>,
    /// The component's own options as written (variables expanded), to tell a changed one.
    options: String,
}

impl Pending {
    /// Where the component's table is: `sinks.out`.
    fn path(&self) -> FieldPath {
        FieldPath::key(self.kind.table()).child(&self.id)
    }
}

/// Everything gathered while loading; each step adds what it finds to `diags`.
struct Loader<'e> {
    files: SourceFiles,
    docs: HashMap<usize, toml_edit::Document<String>>,
    diags: Vec<Diagnostic>,
    env: &'e dyn Fn(&str) -> Option<String>,
    pending: Vec<Pending>,
    /// Where each id was first defined (ids are unique across kinds and files).
    first_seen: HashMap<String, usize>,
    data_dir: Option<(PathBuf, usize)>,
    shutdown_timeout: Duration,
    api: Option<ApiConfig>,
    /// `[[tests]]`: (file, index in that file's list, the test).
    tests: Vec<(usize, usize, TestSpec)>,
    prices: PriceOverrides,
}

fn load_texts(
    inputs: Vec<(String, Result<String, String>)>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Pipeline, Report), Report> {
    let mut l = Loader {
        files: SourceFiles::default(),
        docs: HashMap::new(),
        diags: Vec::new(),
        env,
        pending: Vec::new(),
        first_seen: HashMap::new(),
        data_dir: None,
        shutdown_timeout: Duration::from_secs(60),
        api: None,
        tests: Vec::new(),
        prices: PriceOverrides::new(),
    };
    if inputs.is_empty() {
        l.diags.push(Diagnostic::error("no config file given").help("pass one or more TOML files"));
    }
    for (name, text) in inputs {
        match text {
            Ok(text) => l.read_file(name, text),
            Err(msg) => l.diags.push(Diagnostic::error(msg).help("check the path")),
        }
    }
    let checked = l.check_graph();
    l.check_references();
    l.check_tests();
    l.check_wiring(&checked.matched);
    l.warn_unused(&checked.unused);
    l.finish(checked.inputs)
}

impl Loader<'_> {
    fn error_at(&mut self, file: usize, path: &FieldPath, at_key: bool, message: String, help: Option<String>) {
        let span = self.docs.get(&file).and_then(|d| spans::find(d, path, at_key));
        let mut d = Diagnostic::error(message).at(file, span);
        if !path.0.is_empty() {
            d = d.path(path);
        }
        if let Some(h) = help {
            d = d.help(h);
        }
        self.diags.push(d);
    }

    fn field_errors(&mut self, file: usize, base: &FieldPath, errors: Vec<FieldError>) {
        for e in errors {
            self.error_at(file, &base.join(&e.path), e.at_key, e.message, e.help);
        }
    }

    fn has_errors(&self) -> bool {
        self.diags.iter().any(|d| d.severity == super::Severity::Error)
    }

    /// Parses one file (twice: `toml_edit` for spans, `toml` for values) and takes in its keys.
    fn read_file(&mut self, name: String, text: String) {
        let file = self.files.add(name, text.clone());
        let doc = match toml_edit::Document::parse(text.clone()) {
            Ok(d) => d,
            Err(e) => {
                self.diags.push(
                    Diagnostic::error(format!("invalid TOML: {}", e.message().trim()))
                        .at(file, e.span())
                        .help("fix the syntax; see https://toml.io"),
                );
                return;
            }
        };
        self.docs.insert(file, doc);
        let table: toml::Table = match toml::from_str(&text) {
            Ok(t) => t,
            Err(e) => {
                self.diags.push(Diagnostic::error(format!("invalid TOML: {}", e.message())).at(file, e.span()));
                return;
            }
        };
        for (key, value) in table {
            let path = FieldPath::key(&key);
            match (key.as_str(), Kind::from_table(&key)) {
                (_, Some(kind)) => self.components(file, kind, &path, value),
                ("data_dir", _) => self.data_dir(file, &path, value),
                ("api", _) => self.api(file, &path, value),
                ("tests", _) => self.tests(file, &path, value),
                ("prices", _) => self.prices(file, &path, value),
                ("shutdown_timeout_secs", _) => match value.as_integer() {
                    Some(n) if n > 0 => self.shutdown_timeout = Duration::from_secs(n as u64),
                    _ => self.error_at(
                        file,
                        &path,
                        false,
                        "`shutdown_timeout_secs` must be a positive integer".into(),
                        None,
                    ),
                },
                _ => {
                    let close = registry::suggest(&key, TOP_LEVEL);
                    let help = match close.first() {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => format!("top-level keys are: {}", TOP_LEVEL.join(", ")),
                    };
                    self.error_at(file, &path, true, format!("unknown top-level key `{key}`"), Some(help));
                }
            }
        }
    }

    /// A `[sources]`, `[transforms]` or `[sinks]` table: each id once, then its component.
    fn components(&mut self, file: usize, kind: Kind, path: &FieldPath, value: toml::Value) {
        let key = kind.table();
        let toml::Value::Table(components) = value else {
            self.error_at(
                file,
                path,
                false,
                format!("`{key}` must be a table of components"),
                Some(format!("write `[{key}.ID]` sections")),
            );
            return;
        };
        for (id, body) in components {
            let cpath = path.clone().child(&id);
            if let Some(prev_file) = self.first_seen.get(&id) {
                let prev = self.files.name(*prev_file).to_string();
                self.error_at(
                    file,
                    &cpath,
                    true,
                    format!("component id `{id}` is defined twice"),
                    Some(format!("it is also defined in {prev}; ids are shared by sources, transforms and sinks")),
                );
                continue;
            }
            self.first_seen.insert(id.clone(), file);
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                self.error_at(
                    file,
                    &cpath,
                    true,
                    format!("component id `{id}` is not valid"),
                    Some("ids use letters, digits, `_` and `-`".into()),
                );
            }
            if let Some(p) = component(self, file, kind, id, body, &cpath) {
                self.pending.push(p);
            }
        }
    }

    fn data_dir(&mut self, file: usize, path: &FieldPath, value: toml::Value) {
        let toml::Value::String(s) = value else {
            self.error_at(
                file,
                path,
                false,
                "`data_dir` must be a string".into(),
                Some("e.g. data_dir = \"~/.local/state/ocpipe\"".into()),
            );
            return;
        };
        let mut v = toml::Value::String(s);
        let mut errs = Vec::new();
        interpolate_value(&mut v, &FieldPath::default(), self.env, &mut errs);
        self.field_errors(file, path, errs);
        let dir = PathBuf::from(v.as_str().unwrap_or_default());
        if let Some((prev, prev_file)) = &self.data_dir
            && *prev != dir
        {
            let message =
                format!("data_dir differs from the one in {} ({})", self.files.name(*prev_file), prev.display());
            self.error_at(file, path, false, message, Some("set it in one file only".into()));
        }
        self.data_dir = Some((dir, file));
    }

    /// `api = { address = "…" }`: the metrics and health server.
    fn api(&mut self, file: usize, path: &FieldPath, mut value: toml::Value) {
        let mut errs = Vec::new();
        interpolate_value(&mut value, &FieldPath::default(), self.env, &mut errs);
        if !errs.is_empty() {
            return self.field_errors(file, path, errs);
        }
        match registry::parse_strict::<ApiConfig>(value) {
            Ok(api) => match api.socket_addr() {
                Ok(_) => self.api = Some(api),
                Err(e) => self.error_at(
                    file,
                    &path.clone().child("address"),
                    false,
                    e,
                    Some("e.g. api = { address = \"127.0.0.1:9598\" }".into()),
                ),
            },
            Err(errs) => self.field_errors(file, path, errs),
        }
    }

    /// `[[tests]]` of one file (checked against the components once all files are read).
    fn tests(&mut self, file: usize, path: &FieldPath, mut value: toml::Value) {
        let mut errs = Vec::new();
        interpolate_value(&mut value, &FieldPath::default(), self.env, &mut errs);
        if !errs.is_empty() {
            return self.field_errors(file, path, errs);
        }
        if !value.is_array() {
            let help = Some("write [[tests]] tables".to_string());
            return self.error_at(file, path, false, "`tests` must be a list of tables".into(), help);
        }
        match registry::parse_strict::<Vec<TestSpec>>(value) {
            Ok(list) => self.tests.extend(list.into_iter().enumerate().map(|(i, t)| (file, i, t))),
            Err(errs) => self.field_errors(file, path, errs),
        }
    }

    /// `[prices."provider/model"]`: the user's own prices over the built-in table.
    fn prices(&mut self, file: usize, path: &FieldPath, value: toml::Value) {
        match registry::parse_strict::<PriceOverrides>(value) {
            Ok(list) => {
                for (key, price) in list {
                    let at = path.clone().child(&key);
                    if !key.contains('/') {
                        let help =
                            Some("name it as OpenCode does, e.g. [prices.\"anthropic/claude-sonnet-4-5\"]".into());
                        self.error_at(file, &at, true, format!("`{key}` is not `provider/model`"), help);
                    } else if [price.input, price.output]
                        .iter()
                        .chain(&price.cache_read)
                        .chain(&price.cache_write)
                        .any(|p| p.is_nan() || *p < 0.0)
                    {
                        let help = Some("prices are dollars per million tokens, 0 or more".into());
                        self.error_at(file, &at, false, format!("a price of `{key}` is negative"), help);
                    } else {
                        self.prices.insert(key, price);
                    }
                }
            }
            Err(errs) => self.field_errors(file, path, errs),
        }
    }

    /// What the tests name must exist; their events and conditions must be valid.
    fn check_tests(&mut self) {
        let ids: Vec<&str> = self.pending.iter().map(|p| p.id.as_str()).collect();
        let errors: Vec<(usize, usize, Vec<FieldError>)> =
            self.tests.iter().map(|(file, i, t)| (*file, *i, t.check(&ids))).collect();
        for (file, i, errs) in errors {
            self.field_errors(file, &FieldPath::key("tests").index(i), errs);
        }
    }

    /// Inputs that name nothing, sinks used as inputs, cycles, a pipeline without a source.
    fn check_graph(&mut self) -> topology::Checked {
        let nodes: Vec<Node<'_>> =
            self.pending.iter().map(|p| Node { id: &p.id, kind: p.kind, inputs: &p.inputs }).collect();
        if nodes.is_empty() && !self.has_errors() {
            self.diags.push(
                Diagnostic::error("the configuration defines no components")
                    .help("add `[sources.ID]` and `[sinks.ID]` tables; `ocpipe list` shows the types"),
            );
        }
        let mut checked = topology::check(&nodes);
        self.graph_errors(std::mem::take(&mut checked.errors));
        checked
    }

    fn graph_errors(&mut self, errors: Vec<topology::GraphError>) {
        for e in errors {
            let p = &self.pending[e.component];
            let (path, at_key) = match e.input {
                Some(i) => (p.path().child("inputs").index(i), false),
                None if e.message.starts_with("cycle") => (p.path().child("inputs"), false),
                None => (p.path(), true),
            };
            self.error_at(p.file, &path, at_key, e.message, e.help);
        }
    }

    /// Options that name another component: it must exist and be of the type they need.
    fn check_references(&mut self) {
        let mut errors = Vec::new();
        for p in &self.pending {
            for r in p.config.as_ref().map(AnyConfig::references).unwrap_or_default() {
                let path = p.path().join(&r.field);
                let help = Some(format!("name the id of a `{}` component of this pipeline", r.type_name));
                match self.pending.iter().find(|q| q.id == r.id) {
                    None => {
                        errors.push((p.file, path, format!("no component `{}` (`{}` names it)", r.id, r.field), help))
                    }
                    Some(q) if q.type_name != r.type_name => errors.push((
                        p.file,
                        path,
                        format!("`{}` is a `{}` {}, not a `{}`", r.id, q.type_name, q.kind, r.type_name),
                        help,
                    )),
                    Some(_) => {}
                }
            }
        }
        for (file, path, message, help) in errors {
            self.error_at(file, &path, false, message, help);
        }
    }

    /// Inputs that can never carry a kind of event their reader takes.
    fn check_wiring(&mut self, matched: &[Vec<Vec<usize>>]) {
        let nodes: Vec<Wired<'_>> = self
            .pending
            .iter()
            .map(|p| Wired {
                id: &p.id,
                kind: p.kind,
                type_name: p.type_name,
                inputs: &p.inputs,
                config: p.config.as_ref(),
            })
            .collect();
        let errors = wiring::check(&nodes, matched);
        self.graph_errors(errors);
    }

    /// Components nobody reads (only once the errors are fixed: an unknown input also orphans
    /// its source).
    fn warn_unused(&mut self, unused: &[usize]) {
        if self.has_errors() {
            return;
        }
        for &i in unused {
            let p = &self.pending[i];
            let span = self.docs.get(&p.file).and_then(|d| spans::find(d, &p.path(), true));
            self.diags.push(
                Diagnostic::warning(format!("nothing reads the output of {} `{}`", p.kind, p.id))
                    .at(p.file, span)
                    .path(p.path())
                    .help("add it to some component's `inputs`, or remove it"),
            );
        }
    }

    fn finish(self, inputs: Vec<Vec<String>>) -> Result<(Pipeline, Report), Report> {
        let report = Report { diagnostics: self.diags, files: self.files };
        if report.has_errors() {
            return Err(report);
        }
        let components = self
            .pending
            .into_iter()
            .zip(inputs)
            .map(|(p, inputs)| ComponentDef {
                id: p.id,
                kind: p.kind,
                type_name: p.type_name,
                inputs,
                buffer: p.buffer,
                config: p.config.expect("no errors means every component parsed"),
                options: p.options,
            })
            .collect();
        let pipeline = Pipeline {
            data_dir: self.data_dir.map(|(d, _)| d),
            shutdown_timeout: self.shutdown_timeout,
            api: self.api,
            tests: self.tests.into_iter().map(|(_, _, t)| t).collect(),
            prices: self.prices,
            components,
        };
        Ok((pipeline, report))
    }
}

/// Parses one `[kind.id]` table: the shared options, then the component's own config.
fn component(
    l: &mut Loader<'_>,
    file: usize,
    kind: Kind,
    id: String,
    body: toml::Value,
    cpath: &FieldPath,
) -> Option<Pending> {
    let toml::Value::Table(mut table) = body else {
        l.error_at(
            file,
            cpath,
            false,
            format!("{kind} `{id}` must be a table"),
            Some(format!("write `[{}.{id}]` with `type = \"…\"`", kind.table())),
        );
        return None;
    };
    let types: Vec<&str> = registry::all().into_iter().filter(|r| r.kind == kind).map(|r| r.type_name).collect();
    let reg = match table.remove("type") {
        None => {
            l.error_at(
                file,
                cpath,
                true,
                format!("{kind} `{id}` has no `type`"),
                Some(format!("add `type = \"…\"`, one of: {}", types.join(", "))),
            );
            None
        }
        Some(toml::Value::String(t)) => match registry::find(kind, &t) {
            Some(r) => Some(r),
            None => {
                let close = registry::suggest(&t, types.iter().copied());
                let help = match close.first() {
                    Some(c) => format!("did you mean `{c}`? {kind} types: {}", types.join(", ")),
                    None => format!("{kind} types: {}", types.join(", ")),
                };
                l.error_at(file, &cpath.clone().child("type"), false, format!("unknown {kind} type `{t}`"), Some(help));
                None
            }
        },
        Some(_) => {
            l.error_at(file, &cpath.clone().child("type"), false, "`type` must be a string".into(), None);
            None
        }
    };

    // Options every transform and sink shares, declared once here.
    let mut inputs = Vec::new();
    match (kind, table.remove("inputs")) {
        (Kind::Source, Some(_)) => {
            l.error_at(
                file,
                &cpath.clone().child("inputs"),
                true,
                "sources take no inputs".into(),
                Some("remove `inputs`".into()),
            );
        }
        (_, Some(v)) => match Vec::<String>::deserialize(v) {
            Ok(v) => inputs = v,
            Err(_) => l.error_at(
                file,
                &cpath.clone().child("inputs"),
                false,
                "`inputs` must be a list of component ids".into(),
                Some("e.g. inputs = [\"traces\"]".into()),
            ),
        },
        (_, None) => {}
    }
    let mut buffer = BufferConfig::default();
    if let Some(v) = table.remove("buffer") {
        if kind == Kind::Sink {
            match registry::parse_strict::<BufferConfig>(v) {
                Ok(b) if b.max_events == 0 => l.error_at(
                    file,
                    &cpath.clone().child("buffer").child("max_events"),
                    false,
                    "`max_events` must be at least 1".into(),
                    None,
                ),
                Ok(b) => buffer = b,
                Err(errs) => l.field_errors(file, &cpath.clone().child("buffer"), errs),
            }
        } else {
            l.error_at(
                file,
                &cpath.clone().child("buffer"),
                true,
                format!("`buffer` is a sink option; {kind}s have none"),
                Some("remove it".into()),
            );
        }
    }

    let reg = reg?;
    let mut value = toml::Value::Table(table);
    let mut errs = Vec::new();
    interpolate_value(&mut value, &FieldPath::default(), l.env, &mut errs);
    let options = format!("{}:{}", reg.type_name, serde_json::to_string(&value).unwrap_or_default());
    let config = if errs.is_empty() {
        match (reg.parse)(value) {
            Ok(c) => {
                let problems = c.validate();
                if problems.is_empty() {
                    Some(c)
                } else {
                    l.field_errors(file, cpath, problems);
                    None
                }
            }
            Err(problems) => {
                l.field_errors(file, cpath, problems);
                None
            }
        }
    } else {
        l.field_errors(file, cpath, errs);
        None
    };
    Some(Pending { id, kind, file, type_name: reg.type_name, inputs, buffer, config, options })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)], env: &dyn Fn(&str) -> Option<String>) -> Result<(Pipeline, Report), Report> {
        load_texts(files.iter().map(|(n, t)| (n.to_string(), Ok(t.to_string()))).collect(), env)
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn files_merge_and_duplicate_ids_are_located() {
        let a = "[sources.t]\ntype = \"trace_jsonl\"\npath = \"x\"\n";
        let b = "[sinks.s]\ntype = \"jsonl\"\ninputs = [\"t\"]\npath = \"o/{sessionID}.jsonl\"\n";
        let (p, _) = load(&[("a.toml", a), ("b.toml", b)], &no_env).unwrap();
        assert_eq!(p.components.len(), 2);
        assert_eq!(p.get("s").unwrap().inputs, ["t"]);
        let err = load(&[("a.toml", a), ("c.toml", a)], &no_env).unwrap_err().to_string();
        assert!(err.contains("component id `t` is defined twice"), "{err}");
        assert!(err.contains("c.toml:1:10"), "{err}");
        assert!(err.contains("also defined in a.toml"), "{err}");
    }

    #[test]
    fn env_values_are_expanded_inside_strings_and_missing_ones_located() {
        let cfg = "data_dir = \"${STATE:-/var/x}\"\n[sources.t]\ntype = \"trace_jsonl\"\npath = \"${DIR}/traces\"\n\
                   [sinks.s]\ntype = \"sqlite\"\ninputs = [\"t\"]\npath = \"${OUT}/t.db\"\n";
        let env = |n: &str| (n == "DIR").then(|| "/home/u".to_string());
        let err = load(&[("p.toml", cfg)], &env).unwrap_err().to_string();
        assert!(err.contains("environment variable OUT is not set"), "{err}");
        assert!(err.contains("p.toml:8:8 (sinks.s.path)"), "{err}");
        let env = |n: &str| matches!(n, "DIR" | "OUT").then(|| "/home/u".to_string());
        let (p, _) = load(&[("p.toml", cfg)], &env).unwrap();
        assert_eq!(p.data_dir.as_deref(), Some(std::path::Path::new("/var/x")));
    }

    #[test]
    fn shape_errors_are_reported() {
        let cfg = "nonsense = 1\n[sources.t]\ntype = \"trace_jsonl\"\npath = \"x\"\ninputs = [\"a\"]\n\
                   [sinks.s]\ntype = \"jsonl\"\npath = \"o/x.jsonl\"\n[sinks.\"a.b\"]\ntype = \"nope\"\n";
        let err = load(&[("p.toml", cfg)], &no_env).unwrap_err().to_string();
        for want in [
            "unknown top-level key `nonsense`",
            "sources take no inputs",
            "sink `s` has no inputs",
            "component id `a.b` is not valid",
            "unknown sink type `nope`",
        ] {
            assert!(err.contains(want), "missing {want:?} in {err}");
        }
    }

    #[test]
    fn inputs_that_can_never_carry_what_their_reader_takes_are_located_with_both_kinds() {
        let cfg = "[sources.traces]\ntype = \"trace_jsonl\"\npath = \"x\"\n\
                   [sources.sse]\ntype = \"opencode_sse\"\ndiscover = true\n\
                   [transforms.only]\ntype = \"filter\"\ninputs = [\"traces\"]\ncondition = \"true\"\n\
                   [transforms.st]\ntype = \"status\"\ninputs = [\"sse\", \"only\"]\n\
                   [sinks.page]\ntype = \"websocket\"\ninputs = [\"st\", \"traces\"]\n\
                   [sinks.all]\ntype = \"jsonl\"\ninputs = [\"*\"]\npath = \"o/x.jsonl\"\n";
        let err = load(&[("p.toml", cfg)], &no_env).unwrap_err().to_string();
        // The filter passes on what it is fed (traces), so `status` cannot use it.
        assert!(
            err.contains("transform `st` (status) takes live, but `only` (filter) gives trace: this input can never carry anything it takes"),
            "{err}"
        );
        assert!(err.contains("p.toml:13:18 (transforms.st.inputs[1])"), "{err}");
        assert!(err.contains("read from one that gives live: `sse`"), "{err}");
        assert!(
            err.contains("sink `page` (websocket) takes session, message, rollup, process, status, but `traces` (trace_jsonl) gives trace"),
            "{err}"
        );
        assert!(err.contains("p.toml:16:17 (sinks.page.inputs[1])"), "{err}");
        // Exactly those two: `sse` feeds `st` well, `st` feeds the page, a glob into `jsonl` is fine.
        assert_eq!(err.matches("error:").count(), 2, "{err}");
    }
}
