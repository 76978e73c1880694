//! Sources: one module each. A module registers itself with `register_component!`; this list
//! is the only place that names it.

pub mod docker_capture;
pub mod exec;
pub mod nats;
pub mod opencode_sse;
pub mod opencode_storage;
pub mod otlp;
pub mod process_scan;
pub mod trace_jsonl;
