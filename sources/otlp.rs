//! `otlp`: an OpenTelemetry receiver (OTLP over HTTP, protobuf or JSON, gzip or not). OpenCode
//! exports traces and logs when `OTEL_EXPORTER_OTLP_ENDPOINT` names it (docs/opentelemetry.md
//! says what it sends); each request to a model (`ai.streamText.doStream`, with
//! `experimental.openTelemetry`) becomes a typed `call` event with what the storage database does
//! not have: its start and end, time to first token, output rate. Log records another ocpipe's
//! `otlp` sink wrote come back as the typed events they were; other logs, spans (`spans =
//! "all"`) and metric points come as `json` events. A request is answered once everything it
//! brought was delivered downstream (503 otherwise, so the exporter sends it again).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, TimeZone, Utc};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, oneshot};

use crate::component::{ComponentFuture, Context, Output, SourceConfig, SourceContext};
use crate::config::{FieldError, FieldPath};
use crate::event::{CallInfo, DataType, Event, EventKind, Finalizer, Payload, Status, Tokens};

/// Receives OpenTelemetry (OTLP/HTTP: `/v1/traces`, `/v1/logs`, `/v1/metrics`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct OtlpSourceConfig {
    /// Where to listen (the OTLP/HTTP port is 4318). On a loopback address only requests for a
    /// loopback host name are answered.
    #[serde(default = "default_address")]
    pub address: String,
    /// `calls`: only requests to models become events; `all`: every span too, as `json`.
    #[serde(default)]
    pub spans: Spans,
    /// Log records that are not ocpipe's own as `json` events.
    #[serde(default = "yes")]
    pub logs: bool,
    /// Metric points as `json` events.
    #[serde(default = "yes")]
    pub metrics: bool,
    /// How long a request waits for its events to be delivered before it is answered 503.
    #[serde(default = "default_wait")]
    pub delivery_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Spans {
    #[default]
    Calls,
    All,
}

fn default_address() -> String {
    "127.0.0.1:4318".into()
}
fn yes() -> bool {
    true
}
fn default_wait() -> u64 {
    // Under the OpenTelemetry exporters' own 10 s timeout.
    8
}

/// The largest request taken (after gzip).
const BODY_LIMIT: usize = 256 << 20;

const EXAMPLE: &str = r#"address = "127.0.0.1:0"
"#;

crate::register_component!(
    source OtlpSourceConfig,
    "otlp",
    "An OpenTelemetry receiver (OTLP/HTTP, protobuf or JSON): OpenCode's model requests as typed calls",
    EXAMPLE
);

impl SourceConfig for OtlpSourceConfig {
    fn outputs(&self) -> DataType {
        DataType::ANY
    }

    fn validate(&self) -> Vec<FieldError> {
        match self.address.parse::<SocketAddr>() {
            Ok(_) => vec![],
            Err(_) => vec![FieldError::new(
                FieldPath::key("address"),
                format!("`{}` is not an address to listen on; write IP:PORT, e.g. 127.0.0.1:4318", self.address),
            )],
        }
    }

    fn build(&self, sc: SourceContext) -> anyhow::Result<ComponentFuture> {
        let addr: SocketAddr = self.address.parse()?;
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("listening on {addr}: {e}; choose another `address`"))?;
        listener.set_nonblocking(true)?;
        let cfg = self.clone();
        Ok(Box::pin(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let local = listener.local_addr()?;
            tracing::info!(
                component = &*sc.cx.id,
                "OTLP/HTTP receiver on http://{local} (/v1/traces, /v1/logs, /v1/metrics)"
            );
            let loopback = local.ip().is_loopback();
            let shared = Arc::new(Shared { cfg, cx: sc.cx.clone(), out: Mutex::new(sc.out), loopback });
            let app = Router::new()
                .route("/v1/traces", post(traces))
                .route("/v1/logs", post(logs))
                .route("/v1/metrics", post(metrics))
                .layer(tower_http::decompression::RequestDecompressionLayer::new())
                // OpenCode's spans carry whole prompts: a batch can be far over axum's 2 MB.
                .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
                .with_state(shared.clone());
            sc.cx.metrics.set_caught_up();
            let stop = sc.shutdown.clone();
            axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await?;
            Ok(())
        }))
    }
}

struct Shared {
    cfg: OtlpSourceConfig,
    cx: Context,
    out: Mutex<Output>,
    loopback: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Json,
    Protobuf,
}

/// What the request says it carries; anything else is refused (a web page can only send
/// `text/plain` and forms without asking first).
fn encoding(headers: &HeaderMap) -> Option<Encoding> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let ct = ct.split(';').next()?.trim();
    match ct {
        "application/json" => Some(Encoding::Json),
        "application/x-protobuf" | "application/protobuf" => Some(Encoding::Protobuf),
        _ => None,
    }
}

fn decode<T: Message + Default + serde::de::DeserializeOwned>(enc: Encoding, body: &[u8]) -> Result<T, String> {
    match enc {
        Encoding::Protobuf => T::decode(body).map_err(|e| format!("not an OTLP protobuf request: {e}")),
        Encoding::Json => serde_json::from_slice(body)
            .map_err(|e| format!("not an OTLP JSON request: line {}, column {}: {e}", e.line(), e.column())),
    }
}

fn respond<R: Message + serde::Serialize>(enc: Encoding, r: R) -> Response {
    match enc {
        Encoding::Protobuf => ([(header::CONTENT_TYPE, "application/x-protobuf")], r.encode_to_vec()).into_response(),
        Encoding::Json => {
            ([(header::CONTENT_TYPE, "application/json")], serde_json::to_vec(&r).unwrap_or_default()).into_response()
        }
    }
}

impl Shared {
    /// Checks a request: its host and content type.
    #[allow(clippy::result_large_err)] // a response, built once per refused request
    fn admit(&self, headers: &HeaderMap, path: &str) -> Result<Encoding, Response> {
        if self.loopback && !crate::telemetry::names_loopback(headers.get(header::HOST)) {
            return Err(
                (StatusCode::FORBIDDEN, "this receiver answers requests for a loopback host only\n").into_response()
            );
        }
        encoding(headers).ok_or_else(|| {
            self.cx
                .error(format_args!("{path}: a request that is neither application/json nor application/x-protobuf"));
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "send OTLP as application/json or application/x-protobuf\n")
                .into_response()
        })
    }

    fn bad(&self, path: &str, e: String) -> Response {
        self.cx.error(format_args!("{path}: {e}"));
        (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
    }

    /// Sends `events` on and waits until they are delivered: whether they were.
    async fn deliver(&self, events: Vec<Event>) -> bool {
        if events.is_empty() {
            return true;
        }
        let (tx, rx) = oneshot::channel();
        let finalizer = Finalizer::new(move |status| {
            let _ = tx.send(status);
        });
        {
            let mut out = self.out.lock().await;
            for ev in events {
                out.send(ev.with_finalizer(finalizer.clone())).await;
            }
        }
        drop(finalizer);
        let wait = Duration::from_secs(self.cfg.delivery_timeout_secs.max(1));
        matches!(tokio::time::timeout(wait, rx).await, Ok(Ok(Status::Delivered)))
    }

    fn event(&self, time: DateTime<Utc>, payload: Payload) -> Event {
        Event::new(self.cx.id.clone(), time, payload)
    }

    /// A `json` event with an id of what it says, so a request sent again stores nothing twice.
    fn json(&self, time: DateTime<Utc>, what: &str, view: Value) -> Event {
        let id = format!("{what}:{:032x}", xxhash_rust::xxh3::xxh3_128(view.to_string().as_bytes()));
        self.event(time, Payload::Json(view)).with_id(id)
    }
}

impl Shared {
    /// One OTLP request: checked, decoded, turned into events by `convert`, answered once they
    /// were delivered.
    async fn serve<Req, Resp>(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        path: &str,
        convert: fn(&Shared, Req) -> Vec<Event>,
        ok: Resp,
    ) -> Response
    where
        Req: Message + Default + serde::de::DeserializeOwned,
        Resp: Message + serde::Serialize,
    {
        let enc = match self.admit(headers, path) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let req: Req = match decode(enc, body) {
            Ok(r) => r,
            Err(e) => return self.bad(path, e),
        };
        if self.deliver(convert(self, req)).await { respond(enc, ok) } else { unavailable() }
    }
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], "not delivered yet; send it again\n")
        .into_response()
}

async fn traces(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    s.serve(&headers, &body, "/v1/traces", trace_events, ExportTraceServiceResponse::default()).await
}

fn trace_events(s: &Shared, req: ExportTraceServiceRequest) -> Vec<Event> {
    let mut events = Vec::new();
    let mut ignored = 0;
    for rs in &req.resource_spans {
        let resource = rs.resource.as_ref().map(|r| attributes(&r.attributes)).unwrap_or_default();
        for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            if let Some(call) = call(span, &resource) {
                let id = call.natural_id();
                events.push(s.event(time(span.start_time_unix_nano), Payload::Call(Box::new(call))).with_id(id));
            } else if s.cfg.spans == Spans::All {
                events.push(s.json(time(span.start_time_unix_nano), "span", span_view(span, &resource)));
            } else {
                ignored += 1;
            }
        }
    }
    s.cx.metrics.dropped(crate::metrics::DropReason::Intentional, ignored);
    events
}

async fn logs(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    s.serve(&headers, &body, "/v1/logs", log_events, ExportLogsServiceResponse::default()).await
}

fn log_events(s: &Shared, req: ExportLogsServiceRequest) -> Vec<Event> {
    let mut events = Vec::new();
    for rl in &req.resource_logs {
        let resource = rl.resource.as_ref().map(|r| attributes(&r.attributes)).unwrap_or_default();
        for rec in rl.scope_logs.iter().flat_map(|sl| &sl.log_records) {
            let attrs = attributes(&rec.attributes);
            let at = time(if rec.time_unix_nano > 0 { rec.time_unix_nano } else { rec.observed_time_unix_nano });
            // One of ocpipe's own events (the `otlp` sink): rebuilt as it was.
            if let (Some(kind), Some(view)) = (attrs.get("ocpipe.kind"), attrs.get("ocpipe.event")) {
                let rebuilt = serde_json::from_value::<EventKind>(kind.clone())
                    .map_err(|_| format!("unknown event kind {kind}"))
                    .and_then(|k| {
                        let view = view.as_str().and_then(|v| serde_json::from_str(v).ok()).unwrap_or(Value::Null);
                        k.payload_lenient(view)
                    });
                match rebuilt {
                    Ok(p) => {
                        let mut ev = s.event(at, p);
                        ev.meta.id = attrs.get("ocpipe.id").and_then(|v| v.as_str()).map(String::from);
                        ev.meta.host = resource.get("host.name").and_then(|v| v.as_str()).map(Into::into);
                        events.push(ev);
                    }
                    Err(e) => s.cx.error(format_args!("/v1/logs: an ocpipe event that does not fit: {e}")),
                }
            } else if s.cfg.logs {
                let view = json!({
                    "timeUnixNano": rec.time_unix_nano.max(rec.observed_time_unix_nano),
                    "severity": rec.severity_text,
                    "body": rec.body.as_ref().map(any).unwrap_or(Value::Null),
                    "attributes": attrs,
                    "traceID": hex(&rec.trace_id),
                    "spanID": hex(&rec.span_id),
                    "resource": resource,
                });
                events.push(s.json(at, "log", view));
            }
        }
    }
    events
}

async fn metrics(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    s.serve(&headers, &body, "/v1/metrics", metric_events, ExportMetricsServiceResponse::default()).await
}

fn metric_events(s: &Shared, req: ExportMetricsServiceRequest) -> Vec<Event> {
    let mut events = Vec::new();
    for rm in req.resource_metrics.iter().filter(|_| s.cfg.metrics) {
        let resource = rm.resource.as_ref().map(|r| attributes(&r.attributes)).unwrap_or_default();
        for m in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
            let points = match &m.data {
                Some(metric::Data::Gauge(g)) => &g.data_points,
                Some(metric::Data::Sum(sum)) => &sum.data_points,
                _ => continue,
            };
            for p in points {
                let value = match p.value {
                    Some(number_data_point::Value::AsDouble(d)) => json!(d),
                    Some(number_data_point::Value::AsInt(i)) => json!(i),
                    None => Value::Null,
                };
                let view = json!({
                    "metric": m.name, "unit": m.unit, "value": value, "timeUnixNano": p.time_unix_nano,
                    "attributes": attributes(&p.attributes), "resource": resource,
                });
                events.push(s.json(time(p.time_unix_nano), "metric", view));
            }
        }
    }
    events
}

fn time(nanos: u64) -> DateTime<Utc> {
    if nanos == 0 { Utc::now() } else { Utc.timestamp_nanos(nanos as i64) }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn any(v: &AnyValue) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(a.values.iter().map(any).collect()),
        Some(any_value::Value::KvlistValue(kv)) => Value::Object(attributes(&kv.values)),
        Some(any_value::Value::BytesValue(b)) => json!(hex(b)),
        _ => Value::Null,
    }
}

fn attributes(kvs: &[KeyValue]) -> serde_json::Map<String, Value> {
    kvs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(any).unwrap_or(Value::Null))).collect()
}

fn span_view(span: &Span, resource: &serde_json::Map<String, Value>) -> Value {
    json!({
        "name": span.name,
        "traceID": hex(&span.trace_id),
        "spanID": hex(&span.span_id),
        "parentSpanID": hex(&span.parent_span_id),
        "timeStart": span.start_time_unix_nano / 1_000_000,
        "timeEnd": span.end_time_unix_nano / 1_000_000,
        "attributes": attributes(&span.attributes),
        "resource": resource,
    })
}

/// A request to a model: the AI SDK's span of one provider request (`ai.streamText.doStream`,
/// `ai.generateText.doGenerate`; not their parents, which sum their steps) or any span with the
/// OpenTelemetry GenAI usage keys, with a session.
pub fn call(span: &Span, resource: &serde_json::Map<String, Value>) -> Option<CallInfo> {
    let mut a = attributes(&span.attributes);
    let request = span.name.ends_with(".doStream") || span.name.ends_with(".doGenerate");
    if !request && !a.contains_key("gen_ai.usage.input_tokens") {
        return None;
    }
    // Timings may come as the span's events (`ai.stream.firstChunk`, `ai.stream.finish`).
    for ev in &span.events {
        for (k, v) in attributes(&ev.attributes) {
            a.entry(k).or_insert(v);
        }
    }
    let first_chunk = span
        .events
        .iter()
        .find(|e| e.name == "ai.stream.firstChunk" && e.time_unix_nano >= span.start_time_unix_nano)
        .map(|e| (e.time_unix_nano - span.start_time_unix_nano) as f64 / 1e6);
    let num = |k: &str| a.get(k).and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()));
    let count = |k: &str| num(k).map(|n| n.max(0.0) as u64);
    let text = |k: &str| a.get(k).and_then(|v| v.as_str()).map(String::from);
    let input_all = count("ai.usage.inputTokens").or_else(|| count("gen_ai.usage.input_tokens"))?;
    let session = text("session.id").or_else(|| text("ai.telemetry.metadata.sessionId"))?;
    let output_all = count("ai.usage.outputTokens").or_else(|| count("gen_ai.usage.output_tokens")).unwrap_or(0);
    let cache_read =
        count("ai.usage.inputTokenDetails.cacheReadTokens").or_else(|| count("ai.usage.cachedInputTokens"));
    let cache_write = count("ai.usage.inputTokenDetails.cacheWriteTokens").unwrap_or(0);
    let reasoning = count("ai.usage.outputTokenDetails.reasoningTokens").or_else(|| count("ai.usage.reasoningTokens"));
    // The database counts input without cached tokens and output without reasoning.
    let tokens = Tokens {
        input: count("ai.usage.inputTokenDetails.noCacheTokens")
            .unwrap_or_else(|| input_all.saturating_sub(cache_read.unwrap_or(0) + cache_write)),
        output: count("ai.usage.outputTokenDetails.textTokens")
            .unwrap_or_else(|| output_all.saturating_sub(reasoning.unwrap_or(0))),
        reasoning: reasoning.unwrap_or(0),
        cache_read: cache_read.unwrap_or(0),
        cache_write,
    };
    // `mock.chat` → `mock`: the AI SDK adds the API's name to the provider's.
    let provider = text("ai.model.provider").or_else(|| text("gen_ai.system"));
    Some(CallInfo {
        session_id: session,
        provider_id: provider.map(|p| p.split('.').next().unwrap_or(&p).to_string()),
        model_id: text("ai.model.id").or_else(|| text("gen_ai.request.model")),
        tokens,
        time_start: (span.start_time_unix_nano / 1_000_000) as i64,
        time_end: (span.end_time_unix_nano / 1_000_000) as i64,
        ms_to_first_chunk: num("ai.response.msToFirstChunk").or(first_chunk),
        ms_to_finish: num("ai.response.msToFinish"),
        output_tokens_per_second: num("ai.response.avgOutputTokensPerSecond"),
        finish_reason: text("ai.response.finishReason"),
        version: resource.get("service.version").and_then(|v| v.as_str()).map(String::from),
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request OpenCode 1.18.33 sent (fixtures/otlp), decoded as the receiver does.
    #[test]
    fn opencodes_model_requests_become_calls_with_database_token_meanings() {
        let body =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/otlp/opencode-1.18.33-traces.json")).unwrap();
        let req: ExportTraceServiceRequest = decode(Encoding::Json, &body).unwrap();
        let mut calls = Vec::new();
        for rs in &req.resource_spans {
            let resource = rs.resource.as_ref().map(|r| attributes(&r.attributes)).unwrap_or_default();
            calls.extend(rs.scope_spans.iter().flat_map(|ss| &ss.spans).filter_map(|s| call(s, &resource)));
        }
        assert!(!calls.is_empty(), "the fixture holds model requests");
        let c = &calls[0];
        assert!(c.session_id.starts_with("ses_"), "{c:?}");
        assert_eq!((c.provider_id.as_deref(), c.model_id.as_deref()), (Some("mock"), Some("mock-1")));
        assert_eq!(c.version.as_deref(), Some("1.18.33"));
        assert!(c.time_end >= c.time_start && c.ms_to_first_chunk.is_some(), "{c:?}");
        // The protobuf form decodes the same.
        let pb = req.encode_to_vec();
        let again: ExportTraceServiceRequest = decode(Encoding::Protobuf, &pb).unwrap();
        assert_eq!(again, req);
    }
}
