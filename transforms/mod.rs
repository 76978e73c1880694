//! Transforms: one module each, self-registered with `register_component!`.

pub mod aggregate;
pub mod exec;
pub mod filter;
pub mod redact;
pub mod status;
