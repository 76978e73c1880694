//! `otlp`: sends token usage and statuses to an OpenTelemetry collector (OTLP over HTTP,
//! protobuf or JSON): every event as a log record (its kind, id and JSON view as attributes, so
//! another ocpipe's `otlp` source rebuilds it), and each usage rollup as gauges
//! (`ocpipe.tokens{kind, group_by, key, range}`, `ocpipe.messages`, `ocpipe.cost_usd{source}`).
//! Events are delivered once the collector accepted them; an unreachable collector is tried
//! again with backoff (at shutdown a few times, then the events fail and their source keeps
//! them).

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use schemars::JsonSchema;
use serde::Deserialize;

mod http;

use crate::component::{ComponentFuture, Context, Input, Sink, SinkConfig};
use crate::config::{FieldError, FieldPath};
use crate::event::{DataType, Event, EventKind, Payload, Rollup, Unsettled};
use crate::metrics::DropReason;

/// Exports events to an OpenTelemetry collector as OTLP logs and usage metrics.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct OtlpSinkConfig {
    /// The collector's OTLP/HTTP base URL (`/v1/logs` and `/v1/metrics` are added), e.g.
    /// `http://127.0.0.1:4318` or `https://otel.example.com:4318`.
    pub endpoint: String,
    /// For an `https://` endpoint: `{ ca_file, cert_file, key_file }` (default: the system's CAs).
    #[serde(default)]
    pub tls: crate::config::TlsFiles,
    /// `protobuf` (default) or `json`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Extra request headers (`authorization = "Bearer …"`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The most events in one request.
    #[serde(default = "default_batch")]
    pub batch_max_events: usize,
    /// How long one request may take.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Protobuf,
    Json,
}

fn default_batch() -> usize {
    500
}
fn default_timeout() -> u64 {
    10
}

const EXAMPLE: &str = r#"endpoint = "http://127.0.0.1:4318"
"#;

crate::register_component!(
    sink OtlpSinkConfig,
    "otlp",
    "Exports events as OpenTelemetry logs and usage rollups as metrics to a collector (OTLP/HTTP)",
    EXAMPLE
);

impl SinkConfig for OtlpSinkConfig {
    fn input(&self) -> DataType {
        DataType::ANY
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        match url::Url::parse(&self.endpoint) {
            Ok(u) if !u.username().is_empty() || u.password().is_some() => errs.push(
                FieldError::new(
                    FieldPath::key("endpoint"),
                    format!("`{}` carries a login: it is not sent from the URL", crate::config::without_secrets(&self.endpoint)),
                )
                .help("write the URL without it and send the login as a header: headers = { authorization = \"Basic …\" }"),
            ),
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https")
                && self.endpoint.parse::<axum::http::Uri>().is_err() =>
            {
                errs.push(FieldError::new(
                    FieldPath::key("endpoint"),
                    format!("`{}` is not a URL an HTTP request can go to; write e.g. https://otel.example.com:4318", self.endpoint),
                ))
            }
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(u) => errs.push(FieldError::new(
                FieldPath::key("endpoint"),
                format!("`{}:` is not an OTLP/HTTP scheme: write http:// or https://", u.scheme()),
            )),
            Err(e) => errs.push(FieldError::new(
                FieldPath::key("endpoint"),
                format!(
                    "`{}` is not a URL ({e}); write e.g. http://127.0.0.1:4318",
                    crate::config::without_secrets(&self.endpoint)
                ),
            )),
        }
        for (k, v) in &self.headers {
            use axum::http::{HeaderName, HeaderValue};
            if HeaderName::from_bytes(k.as_bytes()).is_err() || HeaderValue::from_str(v).is_err() {
                errs.push(FieldError::new(
                    FieldPath::key("headers").child(k),
                    "not a valid HTTP header: a name of letters, digits and `-`, a value of visible characters",
                ));
            }
        }
        errs.extend(self.tls.validate("tls"));
        if self.batch_max_events == 0 {
            errs.push(FieldError::new(FieldPath::key("batch_max_events"), "`batch_max_events` must be at least 1"));
        }
        errs
    }

    fn build(&self, cx: &Context) -> anyhow::Result<Box<dyn Sink>> {
        let client = http::HttpClient::new(&self.tls, Duration::from_secs(self.timeout_secs.max(1)), cx)?;
        let host = crate::event::wire::host_name();
        Ok(Box::new(OtlpSink { cfg: self.clone(), client, host, cx: cx.clone() }))
    }
}

struct OtlpSink {
    cfg: OtlpSinkConfig,
    client: http::HttpClient,
    host: String,
    cx: Context,
}

fn text(k: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

fn nanos(ev: &Event) -> u64 {
    ev.meta.timestamp.timestamp_nanos_opt().unwrap_or(0).max(0) as u64
}

/// One event as a log record: its kind, id and JSON view, and the fields a collector's user
/// filters on.
fn record(ev: &Event) -> LogRecord {
    let kind = EventKind::of(&ev.payload);
    let mut attrs = vec![text("ocpipe.kind", kind.name()), text("ocpipe.event", ev.to_json().to_string())];
    if let Some(id) = &ev.meta.id {
        attrs.push(text("ocpipe.id", id.clone()));
    }
    let body = match &ev.payload {
        Payload::Status(s) => {
            attrs.push(text("opencode.instance", s.instance.clone()));
            if let Some(sid) = &s.session_id {
                attrs.push(text("session.id", sid.clone()));
            }
            attrs.push(text("opencode.status", s.code.clone()));
            s.label.clone()
        }
        Payload::Rollup(r) => format!("{} {} {}: {} tokens", r.range, r.group_by, r.key, r.total),
        _ => ev.kind().to_string(),
    };
    LogRecord {
        time_unix_nano: nanos(ev),
        observed_time_unix_nano: nanos(ev),
        severity_number: SeverityNumber::Info as i32,
        severity_text: "INFO".into(),
        event_name: ev.kind().into(),
        body: Some(AnyValue { value: Some(any_value::Value::StringValue(body)) }),
        attributes: attrs,
        ..Default::default()
    }
}

fn gauge(name: &str, unit: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(metric::Data::Gauge(Gauge { data_points: points })),
        ..Default::default()
    }
}

/// The usage rollups of a batch as gauges (the aggregate's current sums).
fn usage_metrics(rollups: &[(&Rollup, u64)]) -> Vec<Metric> {
    let point = |r: &Rollup, at: u64, extra: Vec<KeyValue>, v: number_data_point::Value| {
        let mut attributes =
            vec![text("group_by", r.group_by.clone()), text("key", r.key.clone()), text("range", r.range.clone())];
        attributes.extend(extra);
        NumberDataPoint { attributes, time_unix_nano: at, value: Some(v), ..Default::default() }
    };
    let (mut tokens, mut messages, mut cost) = (Vec::new(), Vec::new(), Vec::new());
    for (r, at) in rollups {
        for (kind, n) in r.tokens.by_kind() {
            tokens.push(point(r, *at, vec![text("kind", kind)], number_data_point::Value::AsInt(n as i64)));
        }
        messages.push(point(r, *at, vec![], number_data_point::Value::AsInt(r.messages as i64)));
        for (source, c) in [("stored", r.cost_stored), ("priced", r.cost_priced)] {
            cost.push(point(r, *at, vec![text("source", source)], number_data_point::Value::AsDouble(c)));
        }
    }
    if tokens.is_empty() {
        return Vec::new();
    }
    vec![
        gauge("ocpipe.tokens", "{token}", tokens),
        gauge("ocpipe.messages", "{message}", messages),
        gauge("ocpipe.cost_usd", "USD", cost),
    ]
}

impl OtlpSink {
    fn resource(&self) -> Resource {
        Resource {
            attributes: vec![
                text("service.name", "ocpipe"),
                text("service.version", env!("CARGO_PKG_VERSION")),
                text("host.name", self.host.clone()),
            ],
            ..Default::default()
        }
    }

    fn scope() -> InstrumentationScope {
        InstrumentationScope { name: "ocpipe".into(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }
    }

    /// The requests for one batch: (path, body).
    fn requests(&self, batch: &[Unsettled]) -> Vec<(&'static str, Vec<u8>)> {
        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(Self::scope()),
                    log_records: batch.iter().map(|e| record(e.get())).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let rollups: Vec<(&Rollup, u64)> = batch
            .iter()
            .map(Unsettled::get)
            .filter_map(|e| match &e.payload {
                Payload::Rollup(r) => Some((&**r, nanos(e))),
                _ => None,
            })
            .collect();
        let mut out = vec![("/v1/logs", self.encode(&logs))];
        let metrics = usage_metrics(&rollups);
        if !metrics.is_empty() {
            let req = ExportMetricsServiceRequest {
                resource_metrics: vec![ResourceMetrics {
                    resource: Some(self.resource()),
                    scope_metrics: vec![ScopeMetrics { scope: Some(Self::scope()), metrics, ..Default::default() }],
                    ..Default::default()
                }],
            };
            out.push(("/v1/metrics", self.encode(&req)));
        }
        out
    }

    fn encode<M: Message + serde::Serialize>(&self, m: &M) -> Vec<u8> {
        match self.cfg.protocol {
            Protocol::Protobuf => m.encode_to_vec(),
            Protocol::Json => serde_json::to_vec(m).expect("OTLP messages serialize"),
        }
    }

    /// One POST: Ok, or why not and whether trying again could help.
    async fn post(&self, path: &str, body: Vec<u8>) -> Result<(), (String, bool)> {
        use crate::config::without_secrets;
        let url = format!("{}{path}", self.cfg.endpoint.trim_end_matches('/'));
        let ct = match self.cfg.protocol {
            Protocol::Protobuf => "application/x-protobuf",
            Protocol::Json => "application/json",
        };
        let mut headers: Vec<(&str, &str)> = vec![("content-type", ct)];
        headers.extend(self.cfg.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        match self.client.post(&url, &headers, body).await {
            Ok(a) if a.status.is_success() => Ok(()),
            Ok(a) => {
                let status = a.status;
                let again = status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408;
                Err((format!("{} answered {status}: {}", without_secrets(&url), a.text.trim()), again))
            }
            Err(e) => Err((format!("{}: {e}", without_secrets(&url)), true)),
        }
    }

    /// Sends one batch until the collector took it (a few tries once the input is ending).
    async fn export(&self, batch: &[Unsettled], input: &Input) -> bool {
        let mut delays = crate::component::retry_delays(Duration::from_millis(200), Duration::from_secs(10));
        for (path, body) in self.requests(batch) {
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                match self.post(path, body.clone()).await {
                    Ok(()) => break,
                    Err((why, again)) => {
                        // The far end's trouble, not this sink's: logged, not counted as an error.
                        if attempt == 1 || attempt.is_multiple_of(10) {
                            let then = if again { "; trying again" } else { "" };
                            tracing::warn!(component = &*self.cx.id, "exporting failed ({why}){then}");
                        }
                        if !again || (input.ending() && attempt >= 3) {
                            return false;
                        }
                    }
                }
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(10))).await;
            }
        }
        true
    }
}

impl Sink for OtlpSink {
    fn run(self: Box<Self>, mut input: Input) -> ComponentFuture {
        Box::pin(async move {
            let mut batch = Vec::new();
            while input.recv_batch(&mut batch, self.cfg.batch_max_events).await {
                // Held so that an abort (a deadline) fails them rather than passing them as sent.
                let held: Vec<Unsettled> = batch.drain(..).map(Unsettled::new).collect();
                if self.export(&held, &input).await {
                    self.cx.metrics.sent(held.len() as u64);
                    held.into_iter().for_each(Unsettled::delivered);
                } else {
                    self.cx.metrics.dropped(DropReason::Error, held.len() as u64);
                    held.into_iter().for_each(Unsettled::failed);
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(toml_text: &str) -> Vec<String> {
        crate::testing::sink_errors::<OtlpSinkConfig>(toml_text)
    }

    #[test]
    fn endpoints_headers_and_certificates_are_checked_at_load() {
        assert!(errors(r#"endpoint = "https://otel.example.com:4318""#).is_empty());
        let got = errors(
            r#"endpoint = "https://bob:s3cret@otel.example.com:4318"
               headers = { "bad header" = "x", authorization = "Bearer ok" }
               tls = { cert_file = "c.pem" }"#,
        );
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].starts_with("endpoint: `https://bob:***@otel.example.com:4318/` carries a login"), "{got:?}");
        assert!(
            got[1].starts_with("headers.\"bad header\": not a valid HTTP header")
                || got[1].starts_with("headers.bad header"),
            "{got:?}"
        );
        assert!(got[2].starts_with("tls.key_file: `cert_file` and `key_file` go together"), "{got:?}");
        assert!(errors(r#"endpoint = "grpc://otel:4317""#)[0].contains("write http:// or https://"));
    }
}
