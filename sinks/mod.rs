//! Sinks: one module each, self-registered with `register_component!`.

pub mod ble;
pub mod capture_dir;
pub mod exec;
pub mod html_report;
pub mod jsonl;
pub mod mqtt;
pub mod nats;
pub mod otlp;
pub mod push_targets;
pub mod sqlite;
pub mod websocket;
