//! ocpipe: an event pipeline for watching OpenCode coding agents.
//!
//! The host lives in `src/` (events, config, registry, runtime, CLI); components live in the
//! top-level `sources/`, `transforms/` and `sinks/` folders and register themselves with
//! [`register_component!`]. See ARCHITECTURE.md.

pub mod capture;
pub mod checkpoint;
pub mod cli;
pub mod component;
pub mod config;
pub mod control;
pub mod docs;
pub mod event;
pub mod jq;
pub mod logfile;
pub mod memory;
pub mod metrics;
pub mod nats;
pub mod permission;
pub mod pipeline_test;
pub mod plugin;
pub mod process;
pub mod registry;
pub mod reloader;
pub mod runtime;
pub mod telemetry;
pub mod template;
pub mod terminal;
pub mod testing;
pub mod usage;
pub mod watch;

#[path = "../sinks/mod.rs"]
pub mod sinks;
#[path = "../sources/mod.rs"]
pub mod sources;
#[path = "../transforms/mod.rs"]
pub mod transforms;

#[doc(hidden)]
pub use inventory;
