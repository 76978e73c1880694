//! Pipeline configuration: TOML files → checked [`Pipeline`].
//!
//! Loading collects every problem before reporting (see [`load`]); each [`Diagnostic`] names the
//! file, line and column, the field path, and what to do.

mod diagnostic;
mod interpolate;
mod load;
mod spans;
mod topology;
mod wiring;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

pub use diagnostic::{Diagnostic, Report, Severity, SourceFiles};
pub use interpolate::interpolate_str;
pub use load::{load, load_str};

use crate::registry::{AnyConfig, Kind};

/// One segment of a path inside a config value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_string())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// A path such as `sinks.out.buffer.when_full` or `transforms.r.paths[2]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn key(k: &str) -> Self {
        FieldPath(vec![Seg::from(k)])
    }
    pub fn index(mut self, i: usize) -> Self {
        self.0.push(Seg::Index(i));
        self
    }
    pub fn child(mut self, k: &str) -> Self {
        self.0.push(Seg::from(k));
        self
    }
    pub fn join(&self, other: &FieldPath) -> FieldPath {
        FieldPath(self.0.iter().chain(other.0.iter()).cloned().collect())
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A problem with one field of a component's config, relative to the component's table.
#[derive(Debug, Clone)]
pub struct FieldError {
    pub path: FieldPath,
    pub message: String,
    pub help: Option<String>,
    /// Point at the key (an unknown field) rather than its value.
    pub at_key: bool,
}

impl FieldError {
    pub fn new(path: FieldPath, message: impl Into<String>) -> Self {
        FieldError { path, message: message.into(), help: None, at_key: false }
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// What a sink's buffer does when it is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for room: the upstream component (and so its source) slows down.
    #[default]
    Block,
    /// Discard the new event and count it as dropped.
    DropNewest,
}

/// `buffer = { max_events = N, when_full = "block" | "drop_newest" }` on any sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(default)]
pub struct BufferConfig {
    /// How many events wait in the sink's buffer.
    pub max_events: usize,
    pub when_full: WhenFull,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig { max_events: 500, when_full: WhenFull::Block }
    }
}

/// Capacity of a transform's input channel.
pub const TRANSFORM_BUFFER: usize = 100;

/// One configured component, parsed and checked.
#[derive(Debug)]
pub struct ComponentDef {
    pub id: String,
    pub kind: Kind,
    pub type_name: &'static str,
    /// Resolved input ids (globs expanded).
    pub inputs: Vec<String>,
    pub buffer: BufferConfig,
    pub config: AnyConfig,
    /// Its type and own options as written (variables expanded): a reload rebuilds a component
    /// whose `options`, `inputs` or `buffer` changed.
    pub options: String,
}

/// A loaded, checked pipeline: ready to build.
#[derive(Debug)]
pub struct Pipeline {
    pub data_dir: Option<PathBuf>,
    pub shutdown_timeout: Duration,
    /// The metrics and health server (`api = { address = "…" }`), off when absent.
    pub api: Option<crate::telemetry::ApiConfig>,
    /// `[[tests]]` for `ocpipe test` (ignored by `run`).
    pub tests: Vec<crate::pipeline_test::TestSpec>,
    /// `[prices."provider/model"]`: the user's prices over the built-in table.
    pub prices: crate::usage::PriceOverrides,
    pub components: Vec<ComponentDef>,
}

impl Pipeline {
    pub fn get(&self, id: &str) -> Option<&ComponentDef> {
        self.components.iter().find(|c| c.id == id)
    }
}

/// `url` with its password or token (`nats://user:secret@host`) replaced by `***`, for errors.
pub fn without_secrets(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.has_host() && u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(mut u) if u.has_host() && !u.username().is_empty() => {
            let _ = u.set_username("***");
            u.to_string()
        }
        Ok(u) if u.has_host() => url.to_string(),
        // Not a URL with a host: whatever stands before an `@` may be a secret.
        _ => match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_string(),
        },
    }
}

/// An option given as an empty string (an unset `${VAR:-}`) is not given.
pub fn given(o: &Option<String>) -> Option<&str> {
    o.as_deref().filter(|s| !s.is_empty())
}

/// A TLS client's files (PEM): the CA that signed the server's certificate (default: the
/// system's CAs), and a client certificate and its key for a server that asks for one. An
/// empty value is not given.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
pub struct TlsFiles {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

impl TlsFiles {
    pub fn ca(&self) -> Option<&str> {
        given(&self.ca_file)
    }

    /// The client certificate and its key, when both are given.
    pub fn client(&self) -> Option<(&str, &str)> {
        given(&self.cert_file).zip(given(&self.key_file))
    }

    /// The certificate without its key (or the key alone), located under `at`.
    pub fn validate(&self, at: &str) -> Vec<FieldError> {
        let (cert, key) = (given(&self.cert_file), given(&self.key_file));
        if cert.is_some() == key.is_some() {
            return Vec::new();
        }
        vec![FieldError::new(
            FieldPath::key(at).child(if cert.is_some() { "key_file" } else { "cert_file" }),
            "`cert_file` and `key_file` go together (a client certificate and its key)",
        )]
    }
}
