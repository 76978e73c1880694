//! `/metrics` and `/health` as an operator has them: `pipelines/monitor.toml` with
//! `api = { address = … }` over a generated OpenCode history, scraped by a real Prometheus
//! (Debian's `prometheus`); PromQL over what it scraped equals `ocpipe stats --json`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn scraping(program: &std::path::Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ocpipe\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(program)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus { child, port, _dir: dir }
    }

    /// One instant PromQL query: the first sample's value (None until there is one).
    fn query(&self, promql: &str) -> Option<Vec<(Value, f64)>> {
        let out = Command::new("curl")
            .args(["-s", "-f", "--max-time", "5", "-G", &format!("http://127.0.0.1:{}/api/v1/query", self.port)])
            .args(["--data-urlencode", &format!("query={promql}")])
            .output()
            .ok()?;
        let body: Value = serde_json::from_slice(&out.stdout).ok()?;
        let result = body["data"]["result"].as_array()?;
        if result.is_empty() {
            return None;
        }
        Some(
            result
                .iter()
                .map(|r| (r["metric"].clone(), r["value"][1].as_str().unwrap().parse::<f64>().unwrap()))
                .collect(),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(url: &str, host: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "--max-time", "5", "-w", "\n%{http_code}", url]);
    if let Some(h) = host {
        c.args(["-H", &format!("Host: {h}")]);
    }
    let out = text(&c.output().unwrap().stdout);
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn prometheus_scrapes_token_usage_equal_to_stats() {
    let Some(prometheus) = require("prometheus") else { return };
    let Some(_) = require("python3") else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).display().to_string();
    let data = dir.path().join("data/opencode");
    std::fs::create_dir_all(&data).unwrap();
    let made = Command::new("python3")
        .arg(root().join("benches/gen_opencode_db.py"))
        .arg(data.join("opencode.db"))
        .args(["2000", "5"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    let stats = stats_json(&["--data-dir", &p("data/opencode"), "--range", "all", "--by", "model"]);
    let totals = &stats["totals"];

    let (api, page) = (free_port(), free_port());
    let monitor = std::fs::read_to_string(root().join("pipelines/monitor.toml")).unwrap();
    let pipeline = dir.path().join("monitor-with-api.toml");
    std::fs::write(&pipeline, format!("api = {{ address = \"127.0.0.1:{api}\" }}\n{monitor}")).unwrap();
    let env = [
        ("XDG_DATA_HOME", p("data")),
        ("HOME", p("data")),
        ("OCPIPE_OUT", p("out")),
        ("OCPIPE_DATA_DIR", p("state")),
        ("OCPIPE_HTTP", format!("127.0.0.1:{page}")),
    ];
    let run = Running::start(&pipeline.display().to_string(), &env);
    let metrics = format!("http://127.0.0.1:{api}/metrics");
    let messages_line = format!("{}", totals["messages"]);
    wait_for("the backfill in /metrics", Duration::from_secs(60), || {
        let (code, body) = get(&metrics, None);
        let sum: u64 = body
            .lines()
            .filter(|l| l.starts_with("ocpipe_messages_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        (code == 200 && sum.to_string() == messages_line).then_some(())
    });

    // The same routes on the page's server; health says every component runs.
    let (code, body) = get(&format!("http://127.0.0.1:{page}/metrics"), None);
    assert_eq!(code, 200);
    assert!(body.contains("ocpipe_component_received_events_total{component_id=\"store\""), "{body}");
    let (code, health) = get(&format!("http://127.0.0.1:{api}/health"), None);
    assert_eq!(code, 200, "{health}");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["components"].as_array().unwrap().len(), 9);
    // A page that rebinds its own name to 127.0.0.1 is not answered.
    assert_eq!(get(&metrics, Some("rebind.example:80")).0, 403);

    let prom = Prometheus::scraping(&prometheus, &format!("127.0.0.1:{api}"));
    let total = wait_for("Prometheus to scrape ocpipe", Duration::from_secs(60), || {
        prom.query("sum(ocpipe_tokens_total)").map(|r| r[0].1)
    });
    assert_eq!(total as u64, totals["total"].as_u64().unwrap(), "sum(ocpipe_tokens_total) = stats total");
    let by_kind = prom.query("sum by (kind) (ocpipe_tokens_total)").unwrap();
    assert_eq!(by_kind.len(), 5);
    for (labels, v) in by_kind {
        let kind = labels["kind"].as_str().unwrap();
        assert_eq!(v as u64, totals[kind].as_u64().unwrap(), "{kind}");
    }
    let messages = prom.query("sum(ocpipe_messages_total)").unwrap()[0].1;
    assert_eq!(messages as u64, totals["messages"].as_u64().unwrap());
    // One series per model, as stats groups them.
    let models = prom.query("count(count by (provider, model) (ocpipe_tokens_total))").unwrap()[0].1;
    assert_eq!(models as usize, stats["groups"].as_array().unwrap().len());
    let up = prom.query("min(ocpipe_component_up)").unwrap()[0].1;
    assert_eq!(up, 1.0);
    let rss = prom.query("process_resident_memory_bytes").unwrap()[0].1;
    assert!(rss > 1e6, "{rss}");
    run.stop();
}
