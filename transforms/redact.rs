//! `redact`: removes secrets from events — sensitive headers, chosen JSON paths in bodies, and
//! values that look like secrets anywhere (API keys, tokens, bearer credentials).
//!
//! Value patterns run over the body's raw JSON text, so a large body is not parsed unless
//! `paths` asks for it. Replacements are `[REDACTED]`, or `[REDACTED:<hmac>]` with `hash = true`
//! (HMAC-SHA256 under a key of the component's, so equal secrets still correlate).

use std::borrow::Cow;
use std::collections::HashSet;

use hmac::{Hmac, Mac};
use regex::{Captures, Regex};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use serde_json_path::JsonPath;
use sha2::Sha256;

use crate::component::{Context, FunctionTransform, Transform, TransformConfig};
use crate::config::{FieldError, FieldPath};
use crate::event::{DataType, Event, Payload, TraceRecord};

/// Header names always redacted when `default_headers` is on.
pub const DEFAULT_HEADERS: &[&str] =
    &["authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "set-cookie"];

/// A header or query parameter whose name says it holds a secret.
const SECRET_NAME: &str = r"(?i)(token|secret|passw|api[-_]?key|credential|auth)";

/// Secret-looking values. A `b` group marks the part to replace (the rest is kept).
pub const DEFAULT_PATTERNS: &[&str] = &[
    r"\bsk-[A-Za-z0-9_\-]{16,}",                   // OpenAI, Anthropic (sk-ant-…), most proxies
    r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}", // GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{22,}",             // GitHub fine-grained tokens
    r"\bAKIA[0-9A-Z]{16}\b",                       // AWS access key ids
    r"\bAIza[0-9A-Za-z\-_]{35}",                   // Google API keys
    r"\bxox[abprs]-[A-Za-z0-9\-]{10,}",            // Slack tokens
    r"(?i:\bbearer)\s+(?P<b>[A-Za-z0-9\-._~+/]{8,}=*)", // bearer credentials
];

const REDACTED: &str = "[REDACTED]";

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct RedactConfig {
    /// More header names to redact (case-insensitive).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Redact the usual credential headers (authorization, proxy-authorization, x-api-key,
    /// api-key, cookie, set-cookie) and any header whose name mentions a token, secret,
    /// password, api key, credential or auth.
    #[serde(default = "yes")]
    pub default_headers: bool,
    /// JSONPath expressions (RFC 9535) of values to redact inside bodies, e.g. `$.user.email`
    /// or `$.messages[*].content`.
    #[serde(default)]
    pub paths: Vec<String>,
    /// More regular expressions whose matches are redacted anywhere in the event. A named group
    /// `b` limits the replacement to that group.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Redact values that look like common secrets: `sk-…`, `sk-ant-…`, `ghp_…`,
    /// `github_pat_…`, `AKIA…`, `AIza…`, `xox?-…` and bearer tokens.
    #[serde(default = "yes")]
    pub default_patterns: bool,
    /// Replace secrets with `[REDACTED:<16 hex digits>]`, a keyed hash, so equal secrets still
    /// correlate across events and runs.
    #[serde(default)]
    pub hash: bool,
    /// The key for `hash` (use `${VAR}`). Default: a random key kept in the component's data
    /// directory.
    pub hash_key: Option<String>,
}

fn yes() -> bool {
    true
}

const EXAMPLE: &str = r#"headers = ["x-internal-token"]
paths = ["$.metadata.user_id"]
hash = false
"#;

crate::register_component!(
    transform RedactConfig,
    "redact",
    "Removes secrets: credential headers, JSON paths in bodies, secret-looking values anywhere",
    EXAMPLE
);

impl RedactConfig {
    fn patterns(&self) -> Vec<&str> {
        let defaults = if self.default_patterns { DEFAULT_PATTERNS } else { &[] };
        defaults.iter().copied().chain(self.patterns.iter().map(String::as_str)).collect()
    }
}

impl TransformConfig for RedactConfig {
    fn input(&self) -> DataType {
        DataType::ANY
    }
    fn outputs(&self, input: DataType) -> DataType {
        input
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (i, p) in self.patterns.iter().enumerate() {
            if let Err(e) = Regex::new(p) {
                errs.push(FieldError::new(
                    FieldPath::key("patterns").index(i),
                    format!("invalid regular expression: {e}"),
                ));
            }
        }
        for (i, p) in self.paths.iter().enumerate() {
            if let Err(e) = JsonPath::parse(p) {
                errs.push(
                    FieldError::new(FieldPath::key("paths").index(i), format!("invalid JSONPath `{p}`: {e}"))
                        .help("JSONPath starts with `$`, e.g. `$.user.email` or `$.messages[*].content`"),
                );
            }
        }
        if self.hash_key.as_deref() == Some("") {
            errs.push(
                FieldError::new(FieldPath::key("hash_key"), "`hash_key` is empty")
                    .help("remove it to use a generated key"),
            );
        }
        errs
    }

    fn build(&self, cx: &Context) -> anyhow::Result<Transform> {
        let key = match (&self.hash, &self.hash_key) {
            (false, _) => None,
            (true, Some(k)) => Some(k.as_bytes().to_vec()),
            (true, None) => Some(load_or_create_key(&cx.data_dir()?.join("hash.key"))?),
        };
        Ok(Transform::Function(Box::new(Redactor::new(self, key)?)))
    }
}

fn load_or_create_key(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(k) = std::fs::read_to_string(path) {
        return Ok(hex::decode(k.trim())?);
    }
    let key: [u8; 32] = rand::random();
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(hex::encode(key).as_bytes())?;
    Ok(key.to_vec())
}

pub struct Redactor {
    header_names: HashSet<String>,
    secret_name: Option<Regex>,
    values: Option<Regex>,
    paths: Vec<JsonPath>,
    key: Option<Vec<u8>>,
}

impl Redactor {
    pub fn new(cfg: &RedactConfig, key: Option<Vec<u8>>) -> anyhow::Result<Redactor> {
        let mut header_names: HashSet<String> = cfg.headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        if cfg.default_headers {
            header_names.extend(DEFAULT_HEADERS.iter().map(|h| h.to_string()));
        }
        let patterns = cfg.patterns();
        let values = if patterns.is_empty() {
            None
        } else {
            Some(Regex::new(&patterns.iter().map(|p| format!("(?:{p})")).collect::<Vec<_>>().join("|"))?)
        };
        Ok(Redactor {
            header_names,
            secret_name: cfg.default_headers.then(|| Regex::new(SECRET_NAME).expect("valid")),
            values,
            paths: cfg.paths.iter().map(|p| JsonPath::parse(p)).collect::<Result<_, _>>()?,
            key,
        })
    }

    fn replacement(&self, secret: &str) -> String {
        match &self.key {
            None => REDACTED.to_string(),
            Some(key) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
                mac.update(secret.as_bytes());
                let digest = mac.finalize().into_bytes();
                format!("[REDACTED:{}]", hex::encode(&digest[..8]))
            }
        }
    }

    fn sensitive_name(&self, name: &str) -> bool {
        self.header_names.contains(&name.to_ascii_lowercase())
            || self.secret_name.as_ref().is_some_and(|r| r.is_match(name))
    }

    /// Replaces secret-looking values in `text`.
    pub fn redact_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let Some(re) = &self.values else {
            return Cow::Borrowed(text);
        };
        re.replace_all(text, |caps: &Captures<'_>| {
            let whole = caps.get(0).expect("group 0");
            match caps.name("b") {
                Some(b) => format!("{}{}", &whole.as_str()[..b.start() - whole.start()], self.replacement(b.as_str())),
                None => self.replacement(whole.as_str()),
            }
        })
    }

    fn redact_raw(&self, raw: &mut Box<RawValue>) {
        if let Cow::Owned(text) = self.redact_text(raw.get()) {
            // Replacements never contain quotes or backslashes, but a user pattern may have
            // matched across JSON syntax: then redact the parsed value instead.
            match RawValue::from_string(text) {
                Ok(r) => *raw = r,
                Err(_) => {
                    if let Ok(mut v) = serde_json::from_str::<Value>(raw.get()) {
                        self.redact_value(&mut v);
                        *raw = serde_json::value::to_raw_value(&v).expect("values serialize");
                    }
                }
            }
        }
    }

    fn redact_value(&self, value: &mut Value) {
        match value {
            Value::String(s) => {
                if let Cow::Owned(r) = self.redact_text(s) {
                    *s = r;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_value(v)),
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    match v {
                        Value::String(s) if self.header_names.contains(&k.to_ascii_lowercase()) => {
                            *s = self.replacement(s)
                        }
                        _ => self.redact_value(v),
                    }
                }
            }
            _ => {}
        }
    }

    fn redact_paths(&self, value: &mut Value) {
        for path in &self.paths {
            let pointers: Vec<String> = path.query_located(value).locations().map(|l| l.to_json_pointer()).collect();
            for p in pointers {
                if let Some(v) = value.pointer_mut(&p) {
                    let secret = match &mut *v {
                        Value::String(s) => std::mem::take(s),
                        other => other.to_string(),
                    };
                    *v = Value::String(self.replacement(&secret));
                }
            }
        }
    }

    pub fn redact_trace(&self, rec: &mut TraceRecord) {
        for (name, value) in rec.headers.iter_mut() {
            if self.sensitive_name(name) {
                *value = self.replacement(value);
            } else if let Cow::Owned(v) = self.redact_text(value) {
                *value = v;
            }
        }
        if let Some(url) = &mut rec.url {
            let redacted = self.redact_url(url);
            if let Cow::Owned(u) = redacted {
                *url = u;
            }
        }
        if let Some(body) = &mut rec.body {
            if !self.paths.is_empty()
                && let Ok(mut v) = serde_json::from_str::<Value>(body.get())
            {
                self.redact_paths(&mut v);
                *body = serde_json::value::to_raw_value(&v).expect("values serialize");
            }
            self.redact_raw(body);
        }
        if let Some(e) = &mut rec.error
            && let Cow::Owned(v) = self.redact_text(e)
        {
            *e = v;
        }
        for s in [&mut rec.status_text].into_iter().flatten() {
            if let Cow::Owned(v) = self.redact_text(s) {
                *s = v;
            }
        }
        for (_, raw) in rec.extra.iter_mut() {
            self.redact_raw(raw);
        }
    }

    /// Redacts query parameters with secret names, then secret-looking values.
    fn redact_url<'a>(&self, url: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(url);
        if let Some((base, query)) = url.split_once('?') {
            let mut changed = false;
            let params: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) if !v.is_empty() && self.sensitive_name(k) => {
                        changed = true;
                        format!("{k}={}", self.replacement(v))
                    }
                    _ => kv.to_string(),
                })
                .collect();
            if changed {
                out = Cow::Owned(format!("{base}?{}", params.join("&")));
            }
        }
        match self.redact_text(&out) {
            Cow::Owned(s) => Cow::Owned(s),
            Cow::Borrowed(_) => out,
        }
    }
}

impl FunctionTransform for Redactor {
    fn transform(&mut self, mut event: Event, out: &mut Vec<Event>) {
        match &mut event.payload {
            Payload::Trace(rec) => self.redact_trace(rec),
            Payload::Json(v) => {
                self.redact_paths(v);
                self.redact_value(v);
            }
            Payload::Session(s) => {
                if let Cow::Owned(t) = self.redact_text(&s.title) {
                    s.title = t;
                }
            }
            Payload::Message(m) => {
                if let Some(Cow::Owned(e)) = m.error.as_deref().map(|e| self.redact_text(e)) {
                    m.error = Some(e);
                }
            }
            Payload::Live(e) => {
                self.redact_paths(&mut e.properties);
                self.redact_value(&mut e.properties);
            }
            Payload::Process(p) => {
                for arg in p.cmdline.iter_mut() {
                    if let Cow::Owned(a) = self.redact_text(arg) {
                        *arg = a;
                    }
                }
            }
            Payload::Capture(c) => {
                // Logs, commands and native events may hold secrets: the JSON view, redacted.
                if let Ok(mut v) = serde_json::to_value(&**c) {
                    self.redact_value(&mut v);
                    if let Ok(back) = serde_json::from_value(v) {
                        **c = back;
                    }
                }
            }
            Payload::Part(_) | Payload::Rollup(_) | Payload::Status(_) | Payload::Call(_) => {}
        }
        out.push(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Kind;
    use crate::testing;

    fn redactor(body: &str) -> Redactor {
        let cfg = match testing::parse(Kind::Transform, "redact", body) {
            Ok(crate::registry::AnyConfig::Transform(_)) => toml::from_str::<RedactConfig>(body).unwrap(),
            other => panic!("{other:?}"),
        };
        let key = cfg.hash.then(|| b"test-key".to_vec());
        Redactor::new(&cfg, key).unwrap()
    }

    fn record(json: &str) -> TraceRecord {
        serde_json::from_str(json).unwrap()
    }

    const REQ: &str = r#"{"kind":"request","id":1,"timestamp":"2026-04-25T02:41:09.000Z","sessionID":"ses_1","method":"POST","url":"https://api.example.com/v1/chat/completions?api_key=abc123&model=x","headers":{"Authorization":"Bearer sk-live-0123456789abcdefghij","X-Internal-Token":"tok-1","x-goog-api-key":"AIzaSyA-1234567890abcdefghijklmnopqrstu","content-type":"application/json","x-session-id":"ses_1"},"body":{"model":"gpt","max_tokens":50,"metadata":{"user_id":"u-42"},"messages":[{"role":"user","content":"my key is sk-ant-api03-abcdefghijklmnopqrstuvwxyz and ghp_abcdefghijklmnopqrstuvwxyz0123456789 and AKIAIOSFODNN7EXAMPLE; Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc"}]}}"#;

    #[test]
    fn removes_every_secret_and_keeps_the_rest() {
        let r = redactor("paths = [\"$.metadata.user_id\"]");
        let mut rec = record(REQ);
        r.redact_trace(&mut rec);
        let out = serde_json::to_string(&rec).unwrap();
        for secret in [
            "sk-live-0123",
            "tok-1",
            "AIzaSy",
            "sk-ant-api03",
            "ghp_abc",
            "AKIAIOSFODNN7",
            "eyJhbGci",
            "u-42",
            "abc123",
        ] {
            assert!(!out.contains(secret), "{secret} survived: {out}");
        }
        assert_eq!(rec.headers["Authorization"], "[REDACTED]");
        assert_eq!(rec.headers["content-type"], "application/json");
        assert_eq!(rec.headers["x-session-id"], "ses_1");
        assert!(out.contains(r#""max_tokens":50"#), "{out}");
        assert!(out.contains("Authorization: Bearer [REDACTED]"), "{out}");
        assert!(rec.url.as_deref().unwrap().ends_with("?api_key=[REDACTED]&model=x"));
        let body: Value = serde_json::from_str(rec.body.as_ref().unwrap().get()).unwrap();
        assert_eq!(body["metadata"]["user_id"], "[REDACTED]");
    }

    #[test]
    fn hashes_are_stable_and_distinguish_secrets() {
        let r = redactor("hash = true");
        assert_eq!(r.redact_text("sk-aaaaaaaaaaaaaaaaaaaa"), r.redact_text("sk-aaaaaaaaaaaaaaaaaaaa"));
        assert_ne!(r.redact_text("sk-aaaaaaaaaaaaaaaaaaaa"), r.redact_text("sk-bbbbbbbbbbbbbbbbbbbb"));
        assert!(r.redact_text("x sk-aaaaaaaaaaaaaaaaaaaa y").starts_with("x [REDACTED:"));
    }

    #[test]
    fn leaves_lookalikes_alone() {
        let r = redactor("");
        for s in ["task-abcdefghijklmnopqrstuv", "sk-short", "max_tokens", "the bearer of news"] {
            assert_eq!(r.redact_text(s), s);
        }
    }

    #[test]
    fn bad_patterns_and_paths_are_config_errors() {
        let errs = testing::parse(Kind::Transform, "redact", "patterns = [\"(\"]\npaths = [\"metadata\"]").unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.to_string()).collect();
        assert_eq!(paths, ["patterns[0]", "paths[0]"]);
    }

    #[tokio::test]
    async fn passes_the_compliance_harness() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = toml::from_str::<RedactConfig>("hash = true").unwrap();
        let events: Vec<Event> = (0..10)
            .map(|i| {
                let mut rec = record(REQ);
                rec.id = i.into();
                Event::new("t".into(), chrono::Utc::now(), Payload::Trace(Box::new(rec)))
            })
            .collect();
        let out = testing::run_transform(&cfg, events, dir.path()).await;
        assert_eq!(out.events.len(), 10);
        assert!(dir.path().join("data/transform_under_test/hash.key").exists());
    }
}
