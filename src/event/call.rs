//! One request to a model, as OpenTelemetry reports it (OpenCode's `ai.streamText.doStream`
//! span, through the `otlp` source): what the storage database does not have — when the request
//! started and ended, the time to its first token, its output rate — beside its session, model
//! and tokens (in the database's sense: `input` without cached tokens, `output` without
//! reasoning).

use serde::{Deserialize, Serialize};

use super::Tokens;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CallInfo {
    #[serde(rename = "sessionID")]
    pub session_id: String,
    #[serde(rename = "providerID", skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    #[serde(rename = "modelID", skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    pub tokens: Tokens,
    /// Start and end of the request, milliseconds since the epoch.
    pub time_start: i64,
    pub time_end: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms_to_first_chunk: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms_to_finish: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// The OpenCode release that made it (`service.version`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
}

impl CallInfo {
    pub fn natural_id(&self) -> String {
        format!("call:{}:{}", self.trace_id, self.span_id)
    }
}
