//! Reaching a NATS JetStream cluster, for the `nats` sink and source: the servers, how to log
//! in, TLS, and the stream both sides use (created when missing). Shared vocabulary: the
//! components name their options with these structs and connect through [`NatsConnect::connect`].

use std::time::Duration;

use async_nats::jetstream;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::Context;
use crate::config::{FieldError, FieldPath, TlsFiles, given};

/// Where the cluster is and how to log in.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
pub struct NatsConnect {
    /// The cluster's servers, comma-separated (`nats://10.0.0.1:4222,nats://10.0.0.2:4222`);
    /// `tls://` for TLS. The client fails over to any of them (and to those the cluster
    /// announces) and reconnects forever.
    pub url: String,
    /// User and password (both or neither).
    pub user: Option<String>,
    pub password: Option<String>,
    /// An authentication token.
    pub token: Option<String>,
    /// An NKey seed (`SU…`).
    pub nkey: Option<String>,
    /// A credentials file (`.creds`: a user JWT and its NKey seed), as `nsc` writes them.
    pub credentials_file: Option<String>,
    /// TLS: the CA that signed the servers' certificates, and a client certificate and key for
    /// servers that ask for one (`tls://` URLs or `require = true` turn TLS on).
    #[serde(default)]
    pub tls: NatsTls,
    /// How long one connection attempt may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
pub struct NatsTls {
    #[serde(flatten)]
    pub files: TlsFiles,
    #[serde(default)]
    pub require: bool,
}

fn default_connect_timeout() -> u64 {
    5
}

/// The JetStream stream events are stored in. Created with these settings when missing; an
/// existing stream is used as it is.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
pub struct NatsStream {
    #[serde(default = "default_stream")]
    pub name: String,
    /// The subjects it stores.
    #[serde(default = "default_subjects")]
    pub subjects: Vec<String>,
    /// Copies kept on different servers (3 for a three-node cluster survives one down). A
    /// number, or text holding one (`"${OCPIPE_NATS_REPLICAS:-1}"`).
    #[serde(default = "one", deserialize_with = "number_or_text")]
    #[schemars(with = "usize")]
    pub replicas: usize,
    /// `limits` (keep until `max_age`/`max_bytes`), `interest` (until every consumer acked),
    /// `work_queue` (until one consumer acked).
    #[serde(default)]
    pub retention: Retention,
    /// How long events are kept (0: no limit).
    #[serde(default = "default_max_age")]
    pub max_age_secs: u64,
    /// The most bytes kept (0: no limit); the oldest go first.
    #[serde(default)]
    pub max_bytes: u64,
    /// How long a resent event (same `Nats-Msg-Id`) is recognised and dropped.
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window_secs: u64,
    /// `file` or `memory`.
    #[serde(default)]
    pub storage: Storage,
}

impl Default for NatsStream {
    fn default() -> Self {
        NatsStream {
            name: default_stream(),
            subjects: default_subjects(),
            replicas: 1,
            retention: Retention::default(),
            max_age_secs: default_max_age(),
            max_bytes: 0,
            duplicate_window_secs: default_duplicate_window(),
            storage: Storage::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Retention {
    #[default]
    Limits,
    Interest,
    WorkQueue,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

fn number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Number(usize),
        Text(String),
    }
    match Given::deserialize(d)? {
        Given::Number(n) => Ok(n),
        // An unset `${OCPIPE_NATS_REPLICAS:-}`: the default.
        Given::Text(t) if t.trim().is_empty() => Ok(one()),
        Given::Text(t) => t.trim().parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "`{t}` is not a number of copies: write 1 to 5 (3 for a three-node cluster)"
            ))
        }),
    }
}

fn default_stream() -> String {
    "OCPIPE".into()
}
fn default_subjects() -> Vec<String> {
    vec!["ocpipe.>".into()]
}
fn one() -> usize {
    1
}
fn default_max_age() -> u64 {
    30 * 24 * 3600
}
fn default_duplicate_window() -> u64 {
    600
}

impl NatsConnect {
    /// The servers, parsed.
    fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, String> {
        let list: Vec<&str> = self.url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        if list.is_empty() {
            return Err("no server: set `url` (e.g. \"nats://127.0.0.1:4222\", several comma-separated)".into());
        }
        list.iter()
            .map(|u| {
                u.parse::<async_nats::ServerAddr>().map_err(|e| {
                    format!(
                        "`{}` is not a NATS server address ({e}); write nats://HOST:PORT",
                        crate::config::without_secrets(u)
                    )
                })
            })
            .collect()
    }

    pub fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Err(e) = self.servers() {
            errs.push(FieldError::new(FieldPath::key("url"), e));
        }
        let (user, password) = (given(&self.user), given(&self.password));
        if user.is_some() != password.is_some() {
            errs.push(FieldError::new(
                FieldPath::key(if user.is_some() { "password" } else { "user" }),
                "`user` and `password` go together",
            ));
        }
        let ways = [
            ("user", user),
            ("token", given(&self.token)),
            ("nkey", given(&self.nkey)),
            ("credentials_file", given(&self.credentials_file)),
        ];
        let chosen: Vec<&str> = ways.iter().filter(|(_, w)| w.is_some()).map(|(name, _)| *name).collect();
        if let [first, second, ..] = chosen[..] {
            errs.push(FieldError::new(
                FieldPath::key(second),
                format!("more than one way to log in (`{first}` and `{second}`): keep one of user/password, token, nkey, credentials_file"),
            ));
        }
        errs.extend(self.tls.files.validate("tls"));
        errs
    }

    /// A client that keeps (re)connecting in the background; connection changes are logged
    /// under the component's id.
    pub async fn connect(&self, cx: &Context, name: &str) -> anyhow::Result<async_nats::Client> {
        Ok(self.connect_watched(cx, name).await?.0)
    }

    /// The same, with a flag raised when a connection attempt failed since the last connection
    /// (so a caller can tell "still connecting" from "away").
    pub async fn connect_watched(
        &self,
        cx: &Context,
        name: &str,
    ) -> anyhow::Result<(async_nats::Client, std::sync::Arc<std::sync::atomic::AtomicBool>)> {
        let servers = self.servers().map_err(|e| anyhow::anyhow!(e))?;
        let mut opts = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(self.connect_timeout_secs.max(1)))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempt| Duration::from_millis((100u64 << attempt.min(6)).min(5_000)))
            .require_tls(self.tls.require);
        if let (Some(u), Some(p)) = (given(&self.user), given(&self.password)) {
            opts = opts.user_and_password(u.into(), p.into());
        }
        if let Some(t) = given(&self.token) {
            opts = opts.token(t.into());
        }
        if let Some(seed) = given(&self.nkey) {
            opts = opts.nkey(seed.into());
        }
        if let Some(f) = given(&self.credentials_file) {
            let path = cx.resolve(f);
            opts = opts
                .credentials_file(&path)
                .await
                .map_err(|e| anyhow::anyhow!("reading the credentials file {}: {e}", path.display()))?;
        }
        if let Some(ca) = self.tls.files.ca() {
            opts = opts.add_root_certificates(cx.resolve(ca));
        }
        if let Some((c, k)) = self.tls.files.client() {
            opts = opts.add_client_certificate(cx.resolve(c), cx.resolve(k));
        }
        let tls = self.tls.require || self.tls.files.ca().is_some() || servers.iter().any(|s| s.scheme() == "tls");
        let id = cx.id.clone();
        // Said once per streak of failures, again after a connection.
        let said = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failed_out = failed.clone();
        opts = opts.event_callback(move |event| {
            let (id, said, failed) = (id.clone(), said.clone(), failed.clone());
            async move {
                use std::sync::atomic::Ordering::Relaxed;
                match event {
                    async_nats::Event::Connected => {
                        said.store(false, Relaxed);
                        failed.store(false, Relaxed);
                        tracing::info!(component = &*id, "connected to NATS")
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(component = &*id, "disconnected from NATS; reconnecting")
                    }
                    async_nats::Event::ServerError(e) => tracing::warn!(component = &*id, "NATS server: {e}"),
                    // Each failed (re)connect attempt: what the user can fix is said once.
                    async_nats::Event::ClientError(async_nats::ClientError::Other(e)) => {
                        failed.store(true, Relaxed);
                        if said.swap(true, Relaxed) {
                            tracing::debug!(component = &*id, "NATS: {e}")
                        } else {
                            tracing::error!(component = &*id, "{}; retrying", connect_trouble(&e, tls))
                        }
                    }
                    async_nats::Event::ClientError(e) => tracing::debug!(component = &*id, "NATS: {e}"),
                    other => tracing::info!(component = &*id, "NATS: {other}"),
                }
            }
        });
        Ok((opts.connect(servers).await?, failed_out))
    }
}

/// What went wrong connecting (async-nats says only the kind) and what to check.
fn connect_trouble(error: &str, tls: bool) -> String {
    const TLS: &str = "with TLS, the server's certificate must be signed by `tls.ca_file` (or a system CA) and name \
                       the host in `url`, and a server asking for a client certificate needs `tls.cert_file` and `key_file`";
    match error {
        "authorization violation" => "the cluster refused the login (authorization violation): check \
            `user`/`password`, `token`, `nkey` or `credentials_file` against the server's authorization"
            .into(),
        "failed signing nonce" => "signing the server's login challenge failed: check that `nkey` holds a user \
            seed (`SU…`) or that `credentials_file` holds a valid seed"
            .into(),
        "TLS error" => format!("the TLS handshake failed: {TLS}"),
        other if tls => format!(
            "cannot connect to any NATS server ({other}): check that they run and listen at `url`; the TLS handshake \
             may have failed: {TLS}"
        ),
        other => format!("cannot connect to any NATS server ({other}): check that they run and listen at `url`"),
    }
}

impl NatsStream {
    pub fn validate(&self, at: &str) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.name.is_empty() || self.name.contains(['.', ' ', '*', '>', '\t']) {
            errs.push(FieldError::new(
                FieldPath::key(at).child("name"),
                format!("`{}` cannot name a stream: no dots, spaces or wildcards", self.name),
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            errs.push(FieldError::new(FieldPath::key(at).child("replicas"), "replicas are 1 to 5"));
        }
        if self.subjects.is_empty() {
            errs.push(FieldError::new(FieldPath::key(at).child("subjects"), "a stream stores at least one subject"));
        }
        errs
    }

    /// Whether the stream could store a subject of `shape` (a template's shape: `*` in a level
    /// stands for a value, which may be anything).
    pub fn could_store(&self, shape: &str) -> bool {
        self.subjects.iter().any(|p| matches(p, shape, true))
    }

    fn config(&self) -> jetstream::stream::Config {
        use jetstream::stream::{RetentionPolicy, StorageType};
        jetstream::stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            num_replicas: self.replicas,
            retention: match self.retention {
                Retention::Limits => RetentionPolicy::Limits,
                Retention::Interest => RetentionPolicy::Interest,
                Retention::WorkQueue => RetentionPolicy::WorkQueue,
            },
            storage: match self.storage {
                Storage::File => StorageType::File,
                Storage::Memory => StorageType::Memory,
            },
            max_age: Duration::from_secs(self.max_age_secs),
            max_bytes: if self.max_bytes == 0 { -1 } else { self.max_bytes as i64 },
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            ..Default::default()
        }
    }

    /// The stream, created when missing.
    pub async fn ensure(&self, js: &jetstream::Context) -> anyhow::Result<jetstream::stream::Stream> {
        js.get_or_create_stream(self.config())
            .await
            .map_err(|e| anyhow::anyhow!("getting or creating the JetStream stream `{}`: {e}", self.name))
    }
}

/// Whether one of `patterns` (NATS subjects: `*` one level, `>` the rest) matches `subject`.
pub fn stored_in(patterns: &[String], subject: &str) -> bool {
    patterns.iter().any(|p| matches(p, subject, false))
}

/// Whether `pattern` matches `subject`; with `shape`, a subject level holding `*` (a value to
/// come) matches any one level.
fn matches(pattern: &str, subject: &str, shape: bool) -> bool {
    let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) | (None, None) => return true,
            (Some(a), Some(b)) if a == "*" || a == b || (shape && b.contains('*')) => continue,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(toml_text: &str) -> NatsConnect {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn subjects_match_like_the_server_matches_them() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(stored_in(&p(&["ocpipe.>"]), "ocpipe.message.laptop"));
        assert!(!stored_in(&p(&["ocpipe.>"]), "ocpipe"));
        assert!(stored_in(&p(&["ocpipe.*.laptop"]), "ocpipe.status.laptop"));
        assert!(!stored_in(&p(&["ocpipe.*"]), "ocpipe.status.laptop"));
        assert!(!stored_in(&p(&["team.>", "ocpipe.x"]), "ocpipe.x.y"));
        assert!(stored_in(&p(&["team.>", "ocpipe.x.y"]), "ocpipe.x.y"));
    }

    #[test]
    fn a_template_fits_a_stream_when_some_value_could_make_it_fit() {
        let stream = |subjects: &[&str]| NatsStream {
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            ..NatsStream::default()
        };
        assert!(stream(&["ocpipe.>"]).could_store("ocpipe.*.*"));
        assert!(stream(&["ocpipe.message.*", "ocpipe.status.*"]).could_store("ocpipe.*.*"));
        assert!(stream(&["ocpipe.*.laptop7"]).could_store("ocpipe.*.*"));
        assert!(stream(&["ocpipe.*.laptop7"]).could_store("ocpipe.*.x*"));
        assert!(!stream(&["ocpipe.>"]).could_store("team.*.*"));
        assert!(!stream(&["ocpipe.*"]).could_store("ocpipe.*.*"));
    }

    #[test]
    fn errors_never_show_a_password_or_token() {
        use crate::config::without_secrets;
        assert_eq!(without_secrets("nats://alice:s3cret@10.0.0.1:4222"), "nats://alice:***@10.0.0.1:4222");
        assert_eq!(without_secrets("nats://t0ken@10.0.0.1:4222"), "nats://***@10.0.0.1:4222");
        assert_eq!(without_secrets("nats://10.0.0.1:4222"), "nats://10.0.0.1:4222");
        assert_eq!(without_secrets("al:s3cret@bad host"), "***@bad host");
        let errs = connect(r#"url = "nats://alice:s3cret@bad host:4222""#).validate();
        assert!(errs.iter().all(|e| !e.message.contains("s3cret")), "{errs:?}");
    }

    #[test]
    fn login_errors_point_at_what_to_remove() {
        let errs = connect(
            r#"url = "nats://h:4222"
               nkey = "SUAB"
               credentials_file = "a.creds"
               token = ""
               tls = { cert_file = "c.pem", key_file = "" }"#,
        )
        .validate();
        let got: Vec<String> = errs.iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("credentials_file: more than one way to log in (`nkey` and `credentials_file`)"),
            "{got:?}"
        );
        assert!(got[1].starts_with("tls.key_file: `cert_file` and `key_file` go together"), "{got:?}");
    }

    #[test]
    fn replicas_from_an_unset_variable_are_the_default_and_bad_text_says_what_to_write() {
        let s: NatsStream = toml::from_str(r#"replicas = """#).unwrap();
        assert_eq!(s.replicas, 1);
        let s: NatsStream = toml::from_str(r#"replicas = " 3 ""#).unwrap();
        assert_eq!(s.replicas, 3);
        let e = toml::from_str::<NatsStream>(r#"replicas = "three""#).unwrap_err().to_string();
        assert!(e.contains("`three` is not a number of copies: write 1 to 5"), "{e}");
    }
}
