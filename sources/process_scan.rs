//! `process_scan`: the OpenCode processes on this machine — mode, pid, parent, CPU, memory,
//! uptime, working directory and listening TCP ports — as started / updated / exited events.
//!
//! Processes are matched by name and command line (the native binaries, and node/bun launching
//! the npm package); threads are not processes. CPU % compares two samples one interval apart.
//! Listening ports come from `/proc/net/tcp{,6}` matched against the process's socket inodes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::{ComponentFuture, SourceConfig, SourceContext};
use crate::config::{FieldError, FieldPath};
use crate::event::{DataType, Event, Payload, ProcessInfo};
use crate::process::Scanner;

/// Finds OpenCode processes and reports them as they start, change and exit.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ProcessScanConfig {
    /// How often to look, in milliseconds (CPU % is measured over this interval).
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Process names that are OpenCode.
    #[serde(default = "crate::process::default_names")]
    pub names: Vec<String>,
    /// Regular expressions on the command line (arguments joined by spaces) that are OpenCode.
    #[serde(default = "crate::process::default_patterns")]
    pub cmdline_patterns: Vec<String>,
    /// Ignore processes using less memory than this (MB).
    #[serde(default)]
    pub min_memory_mb: u64,
    /// Send `updated` events every interval (else only starts and exits).
    #[serde(default = "yes")]
    pub updates: bool,
}

fn default_interval() -> u64 {
    2000
}
fn yes() -> bool {
    true
}

const EXAMPLE: &str = "interval_ms = 2000\n";

crate::register_component!(
    source ProcessScanConfig,
    "process_scan",
    "OpenCode processes: mode, pid, parent, CPU, memory, uptime, cwd, listening ports (started/updated/exited)",
    EXAMPLE
);

impl SourceConfig for ProcessScanConfig {
    fn outputs(&self) -> DataType {
        DataType::PROCESS
    }
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (i, p) in self.cmdline_patterns.iter().enumerate() {
            if let Err(e) = Regex::new(p) {
                errs.push(FieldError::new(
                    FieldPath::key("cmdline_patterns").index(i),
                    format!("invalid regular expression: {e}"),
                ));
            }
        }
        if self.interval_ms < 100 {
            errs.push(FieldError::new(FieldPath::key("interval_ms"), "`interval_ms` must be at least 100"));
        }
        errs
    }

    fn build(&self, sc: SourceContext) -> anyhow::Result<ComponentFuture> {
        let mut scanner = Some(Scanner::new(&self.names, &self.cmdline_patterns, self.min_memory_mb)?);
        let (interval, updates) = (Duration::from_millis(self.interval_ms), self.updates);
        Ok(Box::pin(async move {
            let SourceContext { cx, mut out, shutdown } = sc;
            let mut known: HashMap<u32, ProcessInfo> = HashMap::new();
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let mut s = scanner.take().expect("scanner is back after each scan");
                let (s, found) = tokio::task::spawn_blocking(move || {
                    let found = s.scan();
                    (s, found)
                })
                .await?;
                scanner = Some(s);
                let mut events = Vec::new();
                let pids: HashSet<u32> = found.iter().map(|p| p.pid).collect();
                for mut p in found {
                    p.change = if known.contains_key(&p.pid) { "updated" } else { "started" }.into();
                    let changed = known.get(&p.pid).is_none_or(|old| old.ports != p.ports || updates);
                    known.insert(p.pid, p.clone());
                    if changed {
                        events.push(p);
                    }
                }
                let gone: Vec<u32> = known.keys().copied().filter(|pid| !pids.contains(pid)).collect();
                for pid in gone {
                    if let Some(mut p) = known.remove(&pid) {
                        p.change = "exited".into();
                        p.cpu_percent = 0.0;
                        events.push(p);
                    }
                }
                for p in events {
                    let id = format!("process:{}:{}", p.pid, p.change);
                    out.send(Event::new(cx.id.clone(), chrono::Utc::now(), Payload::Process(Box::new(p))).with_id(id))
                        .await;
                }
                cx.metrics.set_caught_up();
            }
            Ok(())
        }))
    }
}
