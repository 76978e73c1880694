//! `/metrics`: a registry built from the current figures at each scrape, encoded by
//! `prometheus-client` (OpenMetrics text, which Prometheus reads).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::{LiveBoard, Telemetry};

type Labels = Vec<(&'static str, String)>;
type Counters = Family<Labels, Counter>;
type FloatCounters = Family<Labels, Counter<f64, AtomicU64>>;
type Gauges = Family<Labels, Gauge>;

/// The content type of what [`encode`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Telemetry {
    /// Everything, as Prometheus/OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        self.components(&mut registry);
        self.process(&mut registry);
        self.usage_metrics(&mut registry);
        self.live_metrics(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
        out
    }

    fn components(&self, registry: &mut Registry) {
        let received = Counters::default();
        let sent = Counters::default();
        let dropped = Counters::default();
        let errors = Counters::default();
        let fill = Gauges::default();
        let capacity = Gauges::default();
        let up = Gauges::default();
        for c in self.handles().components {
            let m = c.metrics.snapshot();
            let labels: Labels = vec![
                ("component_id", c.id.clone()),
                ("component_kind", c.kind.to_string()),
                ("component_type", c.type_name.to_string()),
            ];
            received.get_or_create(&labels).inc_by(m.received);
            sent.get_or_create(&labels).inc_by(m.sent);
            errors.get_or_create(&labels).inc_by(m.errors);
            for (reason, n) in
                [("full", m.dropped.full), ("intentional", m.dropped.intentional), ("error", m.dropped.error)]
            {
                let mut l = labels.clone();
                l.push(("reason", reason.to_string()));
                dropped.get_or_create(&l).inc_by(n);
            }
            if c.buffer_capacity > 0 {
                fill.get_or_create(&labels).set(c.metrics.buffered() as i64);
                capacity.get_or_create(&labels).set(c.buffer_capacity as i64);
            }
            up.get_or_create(&labels).set(i64::from(c.metrics.state() == crate::metrics::RunState::Running));
        }
        registry.register("ocpipe_component_received_events", "Events a component took from its input", received);
        registry.register("ocpipe_component_sent_events", "Events a component sent on", sent);
        registry.register(
            "ocpipe_component_dropped_events",
            "Events discarded: reason full (a drop_newest buffer had no room), intentional (a filter, nothing to do), error",
            dropped,
        );
        registry.register("ocpipe_component_errors", "Errors a component counted", errors);
        registry.register("ocpipe_component_buffer_events", "Events waiting in a component's input buffer", fill);
        registry.register("ocpipe_component_buffer_max_events", "Capacity of a component's input buffer", capacity);
        registry.register("ocpipe_component_up", "1 while a component runs", up);
    }

    fn process(&self, registry: &mut Registry) {
        let (rss, cpu) = own_usage();
        let g = Gauge::<i64>::default();
        g.set(rss as i64);
        registry.register_with_unit("process_resident_memory", "Resident memory of ocpipe", Unit::Bytes, g);
        let c = Counter::<f64, AtomicU64>::default();
        c.inc_by(cpu);
        registry.register_with_unit("process_cpu", "CPU time ocpipe used (user and system)", Unit::Seconds, c);
        let start = Gauge::<f64, AtomicU64>::default();
        start.set(self.started_at.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()));
        registry.register_with_unit("process_start_time", "When ocpipe started (Unix time)", Unit::Seconds, start);
        let up = Gauge::<f64, AtomicU64>::default();
        up.set(self.started.elapsed().as_secs_f64());
        registry.register_with_unit("ocpipe_uptime", "How long ocpipe has run", Unit::Seconds, up);
    }

    fn usage_metrics(&self, registry: &mut Registry) {
        let tokens = Counters::default();
        let messages = Counters::default();
        let cost = FloatCounters::default();
        let usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        for (component, rows) in usage.iter() {
            for r in rows {
                let labels: Labels = vec![
                    ("provider", r.provider.clone()),
                    ("model", r.model.clone()),
                    ("agent", r.agent.clone()),
                    ("project", r.project.clone()),
                    ("component_id", component.clone()),
                ];
                for (kind, n) in r.tokens.by_kind() {
                    let mut l = labels.clone();
                    l.insert(0, ("kind", kind.to_string()));
                    tokens.get_or_create(&l).inc_by(n);
                }
                messages.get_or_create(&labels).inc_by(r.messages);
                for (source, v) in [("stored", r.cost.stored), ("priced", r.cost.priced)] {
                    let mut l = labels.clone();
                    l.push(("source", source.to_string()));
                    cost.get_or_create(&l).inc_by(v);
                }
            }
        }
        registry.register(
            "ocpipe_tokens",
            "Tokens of OpenCode messages, all time, by kind (the kinds sum to the total)",
            tokens,
        );
        registry.register("ocpipe_messages", "OpenCode messages counted (fork copies apart)", messages);
        registry.register(
            "ocpipe_cost_usd",
            "Cost of OpenCode messages in dollars: source stored (as OpenCode stored it) or priced (from the price table)",
            cost,
        );
    }

    fn live_metrics(&self, registry: &mut Registry) {
        let instances = Gauges::default();
        let sessions = Gauges::default();
        let working = Gauges::default();
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_code: BTreeMap<&str, i64> = BTreeMap::new();
        for board in live.values() {
            let LiveBoard { instances: map } = board;
            for (instance, list) in map {
                // The instance's status is its busiest session's (any working one), else idle.
                let lead = list.values().next().map_or("idle", String::as_str);
                instances.get_or_create(&vec![("instance", instance.clone()), ("status", lead.to_string())]).set(1);
                for (session, code) in list {
                    *by_code.entry(code).or_default() += 1;
                    let l =
                        vec![("instance", instance.clone()), ("session", session.clone()), ("status", code.clone())];
                    working.get_or_create(&l).set(1);
                }
            }
        }
        for (code, n) in by_code {
            sessions.get_or_create(&vec![("status", code.to_string())]).set(n);
        }
        registry.register(
            "ocpipe_opencode_instance_status",
            "1 for each OpenCode instance followed, labelled with its status",
            instances,
        );
        registry.register("ocpipe_opencode_sessions", "OpenCode sessions working now, by status", sessions);
        registry.register(
            "ocpipe_opencode_session_status",
            "1 for each OpenCode session working now (sessions at rest are not listed)",
            working,
        );
    }
}

/// This process's resident memory (bytes) and CPU time (seconds).
fn own_usage() -> (u64, f64) {
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page_size());
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let cpu = if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(ru.ru_utime) + secs(ru.ru_stime)
    } else {
        0.0
    };
    (rss, cpu)
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}
