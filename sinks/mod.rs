//! Sinks: one module each, self-registered with `register_component!`.

pub mod jsonl;
pub mod sqlite;
pub mod websocket;
