//! Benchmark: events through ocpipe's agent → NATS JetStream → aggregator on a three-node
//! cluster (Debian's `nats-server`, loopback ports, stream replicas 3), beside raw JetStream
//! publishing on the same cluster.
//!
//!     cargo bench --bench nats_cluster [-- EVENTS RATE]     (default 20000 events, 500/s)
//!
//! - Throughput: EVENTS events (~700 bytes of JSON each) as fast as they go. ocpipe: an `exec`
//!   source printing them → `nats` sink, and an aggregator `nats` source → `jsonl` sink; from the
//!   agent's start to the aggregator's last line. Raw: one async-nats client publishing the
//!   same bodies with 256 acknowledgements in flight and a pull consumer reading them.
//! - Latency, publish → aggregator: RATE events/s for 5 s, each carrying the time it was made;
//!   ocpipe's aggregator hands each to an `exec` sink that notes its arrival; the raw consumer
//!   notes it itself. p50 / p99 / max (after the first second, the agent connecting) and the
//!   ratios.

#[path = "../tests/common/nats_cluster.rs"]
mod nats_cluster;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures::StreamExt;

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99), *v.last().unwrap())
}

const PAD: usize = 600;

/// A Python program printing `n` events at `rate` per second (0: as fast as it can).
fn producer(n: usize, rate: u32) -> String {
    format!(
        "import json, sys, time\nstart = time.time()\nfor i in range({n}):\n    \
         sys.stdout.write(json.dumps({{'n': i, 't': time.time_ns(), 'pad': 'x' * {PAD}}}) + '\\n')\n    \
         if {rate}:\n        sys.stdout.flush()\n        wait = start + (i + 1) / {rate} - time.time()\n        \
         if wait > 0: time.sleep(wait)\nsys.stdout.flush()\n"
    )
}

/// The exec sink noting each event's age on arrival.
const ARRIVALS: &str = "import json, sys, time\nout = open('arrivals.txt', 'a')\nfor line in sys.stdin:\n    \
    e = json.loads(line)\n    out.write(str(e['n']) + ' ' + str(time.time_ns() - e['t']) + '\\n')\n    out.flush()\n    print(flush=True)\n";

struct Phase<'a> {
    dir: &'a Path,
    urls: &'a str,
    name: &'a str,
}

impl Phase<'_> {
    fn write(&self, file: &str, body: &str) -> String {
        let p = self.dir.join(format!("{}-{file}", self.name));
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    }

    fn stream(&self) -> String {
        format!(
            "url = \"{}\"\nstream = {{ name = \"{n}\", subjects = [\"{n}.>\"], replicas = 3 }}\n",
            self.urls,
            n = self.name.to_uppercase()
        )
    }

    fn run(&self, pipeline: &str) -> Child {
        Command::new(env!("CARGO_BIN_EXE_ocpipe"))
            .args(["run", pipeline])
            .current_dir(self.dir)
            .env("OCPIPE_DATA_DIR", format!("{pipeline}.state"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// ocpipe's agent and aggregator: seconds from the agent's start until `done` holds.
    fn ocpipe(&self, n: usize, rate: u32, sink: &str, done: impl Fn() -> bool) -> f64 {
        let program = self.write("producer.py", &producer(n, rate));
        let agent = self.write(
            "agent.toml",
            &format!(
                "[sources.gen]\ntype = \"exec\"\ncommand = [\"python3\", \"{program}\"]\nmode = \"once\"\n\
                 [sinks.out]\ntype = \"nats\"\ninputs = [\"gen\"]\nsubject = \"{}.{{_kind}}\"\n{}",
                self.name.to_uppercase(),
                self.stream()
            ),
        );
        let aggregator = self.write(
            "aggregator.toml",
            &format!(
                "[sources.team]\ntype = \"nats\"\nconsumer = \"bench\"\n{}\n[sinks.got]\ninputs = [\"team\"]\n{sink}",
                self.stream()
            ),
        );
        let mut agg = self.run(&aggregator);
        std::thread::sleep(Duration::from_secs(1));
        let start = Instant::now();
        let mut agent = self.run(&agent);
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(300), "{}: not done in 300 s", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = start.elapsed().as_secs_f64();
        let status = agent.wait().unwrap();
        assert!(status.success(), "{}: the agent failed", self.name);
        let _ = agg.kill();
        let _ = agg.wait();
        took
    }
}

fn lines(p: &Path) -> usize {
    std::fs::read(p).map(|b| b.iter().filter(|c| **c == b'\n').count()).unwrap_or(0)
}

/// Raw JetStream: `n` bodies published (`rate` per second, 0: 256 in flight) and read back by a
/// pull consumer; the seconds it took and each body's age on arrival (ms).
async fn raw(urls: &str, name: &str, n: usize, rate: u32) -> (f64, Vec<f64>) {
    let client = async_nats::connect(urls.split(',').next().unwrap()).await.unwrap();
    let js = jetstream::new(client);
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: name.into(),
            subjects: vec![format!("{name}.>")],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            "bench",
            jetstream::consumer::pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut messages = consumer.messages().await.unwrap();
        let mut ages = Vec::with_capacity(n);
        while ages.len() < n {
            let m = messages.next().await.unwrap().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            ages.push((now_ns() - v["t"].as_u64().unwrap()) as f64 / 1e6);
            m.ack().await.unwrap();
        }
        ages
    });
    let start = Instant::now();
    let mut acks = std::collections::VecDeque::new();
    for i in 0..n {
        let body = serde_json::json!({"n": i, "t": now_ns(), "pad": "x".repeat(PAD)}).to_string();
        acks.push_back(js.publish(format!("{name}.json"), body.into()).await.unwrap());
        if rate > 0 {
            while let Some(a) = acks.pop_front() {
                a.await.unwrap();
            }
            let due = start + Duration::from_secs_f64((i + 1) as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        } else if acks.len() >= 256 {
            acks.pop_front().unwrap().await.unwrap();
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    let ages = reader.await.unwrap();
    (start.elapsed().as_secs_f64(), ages)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rate: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(500);
    let Some(program) = which("nats-server") else {
        eprintln!("nats-server is not installed (Debian: apt install nats-server); nothing measured");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster = nats_cluster::Cluster::start(program);
    let urls = cluster.urls();
    let rt = tokio::runtime::Runtime::new().unwrap();

    let (raw_secs, _) = rt.block_on(raw(&urls, "RAWT", n, 0));
    let through = Phase { dir: dir.path(), urls: &urls, name: "t" };
    let out = dir.path().join("through.jsonl");
    let sink = format!("type = \"jsonl\"\npath = \"{}\"\n", out.display());
    let ocpipe_secs = through.ocpipe(n, 0, &sink, || lines(&out) >= n);
    println!(
        "throughput, {n} events: ocpipe {:.0} events/s ({ocpipe_secs:.2} s), raw JetStream {:.0} events/s ({raw_secs:.2} s): {:.2}× raw",
        n as f64 / ocpipe_secs,
        n as f64 / raw_secs,
        raw_secs / ocpipe_secs
    );

    let m = (rate * 5) as usize;
    let (_, raw_ages) = rt.block_on(raw(&urls, "RAWL", m, rate));
    let latency = Phase { dir: dir.path(), urls: &urls, name: "l" };
    let sink = format!("type = \"exec\"\ncommand = [\"python3\", \"{}\"]\n", latency.write("arrivals.py", ARRIVALS));
    let arrivals = dir.path().join("arrivals.txt");
    latency.ocpipe(m, rate, &sink, || lines(&arrivals) >= m);
    // The first second is the agent connecting: not counted, on either side.
    let warm = rate as u64;
    let ages: Vec<f64> = std::fs::read_to_string(&arrivals)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(n, _)| n.parse::<u64>().unwrap() >= warm)
        .map(|(_, ns)| ns.parse::<f64>().unwrap() / 1e6)
        .collect();
    let raw_ages = raw_ages.into_iter().skip(warm as usize).collect();
    let (o50, o99, omax) = percentiles(ages);
    let (r50, r99, rmax) = percentiles(raw_ages);
    println!(
        "latency at {rate}/s, publish → aggregator (ms): ocpipe p50 {o50:.2} p99 {o99:.2} max {omax:.2}; \
         raw JetStream p50 {r50:.2} p99 {r99:.2} max {rmax:.2}; p99 ratio {:.2}",
        o99 / r99
    );
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
