//! Agent → aggregator through a real three-node NATS JetStream cluster (Debian's `nats-server`,
//! routes on loopback ports, stream replicas 3): `pipelines/team-agent.toml` on two generated
//! OpenCode histories, `pipelines/team-aggregator.toml` rolling them up. Nodes, the aggregator,
//! an agent and the whole cluster go away while events flow; the aggregator's totals equal the
//! sum of both agents' `ocpipe stats --json`, nothing lost, nothing counted twice.

mod common;
#[path = "common/nats_cluster.rs"]
mod nats_cluster;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use nats_cluster::Cluster;

/// A generated OpenCode history under `dir/NAME/opencode/opencode.db`, and its `ocpipe stats`
/// totals.
fn history(dir: &Path, name: &str, messages: usize, seed: u64) -> (PathBuf, serde_json::Value) {
    let data = dir.join(name);
    std::fs::create_dir_all(data.join("opencode")).unwrap();
    let made = Command::new("python3")
        .arg(root().join("benches/gen_opencode_db.py"))
        .arg(data.join("opencode/opencode.db"))
        .args([messages.to_string(), seed.to_string()])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    let stats = stats_json(&["--data-dir", &data.join("opencode").display().to_string(), "--range", "all"]);
    (data, stats["totals"].clone())
}

/// The aggregator database's `all` rollup: messages, input, output, total.
fn rolled_up(db: &Path) -> Option<[u64; 4]> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.query_row("SELECT messages, input, output, total FROM rollup WHERE group_by = 'all'", [], |r| {
        Ok([
            r.get::<_, i64>(0)? as u64,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? as u64,
            r.get::<_, i64>(3)? as u64,
        ])
    })
    .ok()
}

fn expected(totals: &[&serde_json::Value]) -> [u64; 4] {
    let sum = |k: &str| totals.iter().map(|t| t[k].as_u64().unwrap()).sum::<u64>();
    [sum("messages"), sum("input"), sum("output"), sum("total")]
}

struct Team<'a> {
    dir: &'a Path,
    urls: String,
}

/// A running ocpipe, with the address of its `/metrics`.
struct Member {
    run: Running,
    metrics: String,
}

impl Member {
    /// What its component `team` (the agent's `nats` sink, the aggregator's `nats` source)
    /// has sent on, from `/metrics` (the sink: what the stream acknowledged).
    fn sent(&self) -> Option<u64> {
        let out = Command::new("curl").args(["-s", "--max-time", "2", &self.metrics]).output().ok()?;
        text(&out.stdout)
            .lines()
            .find(|l| l.starts_with("ocpipe_component_sent_events_total{component_id=\"team\""))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    }
}

/// `pipeline` with the metrics API on a free port, written into `dir` as `name.toml`.
fn with_api(dir: &Path, name: &str, pipeline: &str) -> (PathBuf, String) {
    let api = free_port();
    let path = dir.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(root().join(pipeline)).unwrap();
    std::fs::write(&path, format!("api = {{ address = \"127.0.0.1:{api}\" }}\n{text}")).unwrap();
    (path, format!("http://127.0.0.1:{api}/metrics"))
}

impl Team<'_> {
    fn agent(&self, name: &str, data: &Path, state: &str) -> Member {
        let (pipeline, metrics) = with_api(self.dir, &format!("{name}-{state}"), "pipelines/team-agent.toml");
        let env = [
            ("XDG_DATA_HOME", data.display().to_string()),
            ("HOME", data.display().to_string()),
            ("OCPIPE_DATA_DIR", self.dir.join(state).display().to_string()),
            ("OCPIPE_NATS_URL", self.urls.clone()),
            ("OCPIPE_NATS_REPLICAS", "3".into()),
            ("OCPIPE_HOST", name.into()),
        ];
        Member { run: Running::start(&pipeline.display().to_string(), &env), metrics }
    }

    fn aggregator(&self) -> Member {
        self.aggregator_named("aggregator", "ocpipe-aggregator")
    }

    /// An aggregator with its own state and output (`dir/NAME-state`, `dir/out` for the first,
    /// `dir/NAME-out` for others) reading through the durable consumer `consumer`.
    fn aggregator_named(&self, name: &str, consumer: &str) -> Member {
        let (pipeline, metrics) = with_api(self.dir, name, "pipelines/team-aggregator.toml");
        let out = if name == "aggregator" { self.dir.join("out") } else { self.dir.join(format!("{name}-out")) };
        let env = [
            ("HOME", self.dir.join("home").display().to_string()),
            ("OCPIPE_DATA_DIR", self.dir.join(format!("{name}-state")).display().to_string()),
            ("OCPIPE_OUT", out.display().to_string()),
            ("OCPIPE_HTTP", format!("127.0.0.1:{}", free_port())),
            ("OCPIPE_NATS_URL", self.urls.clone()),
            ("OCPIPE_NATS_REPLICAS", "3".into()),
            ("OCPIPE_NATS_CONSUMER", consumer.into()),
        ];
        Member { run: Running::start(&pipeline.display().to_string(), &env), metrics }
    }

    fn db(&self) -> PathBuf {
        self.dir.join("out/team.db")
    }
}

#[test]
fn two_agents_through_a_cluster_losing_a_node_and_the_aggregator_count_everything_once() {
    let Some(program) = require("nats-server") else { return };
    let Some(_) = require("python3") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data_a, totals_a) = history(dir.path(), "a", 10000, 11);
    let (data_b, totals_b) = history(dir.path(), "b", 10000, 12);
    let want = expected(&[&totals_a, &totals_b]);
    let mut cluster = Cluster::start(program);
    let team = Team { dir: dir.path(), urls: cluster.urls() };

    let agent_a = team.agent("agent-a", &data_a, "state-a");
    let agent_b = team.agent("agent-b", &data_b, "state-b");
    let delivered = || Some(agent_a.sent()? + agent_b.sent()?);
    // A node dies while events flow, and comes back: the other two go on storing them.
    wait_for("the first events in the stream", Duration::from_secs(60), || delivered().filter(|n| *n > 0));
    cluster.kill(1);
    let at_kill = wait_for("the agents' counts", Duration::from_secs(10), delivered);
    // A new stream leader may take some seconds to be elected when the killed node led.
    let while_down = wait_for("events stored with a node down", Duration::from_secs(30), || {
        delivered().filter(|n| *n > at_kill + 100)
    });
    cluster.up(1);
    eprintln!("delivered when node 1 was killed: {at_kill}, then with it down: {while_down}");
    // The aggregator starts on a full stream, is killed as soon as it has taken something,
    // and started again.
    let aggregator = team.aggregator();
    let taken =
        wait_for("the aggregator to take events", Duration::from_secs(60), || aggregator.sent().filter(|n| *n > 0));
    signal(aggregator.run.pid(), 9);
    drop(aggregator);
    assert!(taken < want[0], "killed mid-stream: {taken} events of more than {} taken", want[0]);
    let partial = rolled_up(&team.db());
    let aggregator = team.aggregator();
    let got = wait_for("the aggregator to count both agents", Duration::from_secs(120), || {
        rolled_up(&team.db()).filter(|r| r[0] >= want[0])
    });
    assert_eq!(got, want, "aggregator rollup = stats of a + stats of b (partial before the kill: {partial:?})");

    // An agent starts again from nothing (its checkpoint lost): the stream drops the resent.
    let log_a = agent_a.run.stop_with_log();
    let sent_a = final_counter(&log_a, "team", "sent");
    assert!(sent_a > want[0] / 2, "agent a sent its history: {log_a}");
    let again = team.agent("agent-a", &data_a, "state-a-lost");
    wait_for("agent a to send its history again", Duration::from_secs(120), || again.sent().filter(|n| *n >= sent_a));
    let log_again = again.run.stop_with_log();
    let dups: u64 = log_again
        .lines()
        .find(|l| l.contains("dropped by its duplicate window"))
        .and_then(|l| l.split("duplicates=").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert_eq!(dups, sent_a, "every resent event was a duplicate: {log_again}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rolled_up(&team.db()), Some(want), "nothing counted twice");

    // OpenCode writes a new message on agent b's machine, then completes it in place (its
    // tokens arrive): the new version passes the duplicate window and replaces the first.
    let conn = rusqlite::Connection::open(data_b.join("opencode/opencode.db")).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let tokens = |input: u64, output: u64| {
        format!(
            r#"{{"total":{},"input":{input},"output":{output},"reasoning":0,"cache":{{"write":0,"read":0}}}}"#,
            input + output
        )
    };
    conn.execute(
        "INSERT INTO message (id, session_id, time_created, time_updated, data)
         SELECT 'msg_zzlive', session_id, ?1, ?1,
                json_set(json_remove(data, '$.time.completed', '$.finish'), '$.tokens', json(?2), '$.cost', 0,
                         '$.time.created', ?1)
         FROM message WHERE rowid = (SELECT max(rowid) FROM message WHERE json_extract(data, '$.role') = 'assistant')",
        rusqlite::params![now, tokens(0, 0)],
    )
    .unwrap();
    let opened = [want[0] + 1, want[1], want[2], want[3]];
    let got = wait_for("the new message at the aggregator", Duration::from_secs(60), || {
        rolled_up(&team.db()).filter(|r| r[0] > want[0])
    });
    assert_eq!(got, opened, "the message in progress counted once, without tokens yet");
    conn.execute(
        "UPDATE message SET data = json_set(data, '$.tokens', json(?1), '$.time.completed', ?2, '$.finish', 'stop'),
           time_updated = ?2 WHERE id = 'msg_zzlive'",
        rusqlite::params![tokens(1000, 10), now + 1000],
    )
    .unwrap();
    drop(conn);
    let completed = [want[0] + 1, want[1] + 1000, want[2] + 10, want[3] + 1010];
    let got = wait_for("the completed message at the aggregator", Duration::from_secs(60), || {
        rolled_up(&team.db()).filter(|r| r[1] > want[1])
    });
    assert_eq!(got, completed, "the completed version replaced the first");
    let log = aggregator.run.stop_with_log();
    assert!(!log.contains("skipped"), "{log}");
    drop(agent_b);
}

#[test]
fn a_cluster_away_for_30_seconds_holds_the_agents_backlog_then_it_drains() {
    let Some(program) = require("nats-server") else { return };
    let Some(_) = require("python3") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, totals) = history(dir.path(), "a", 20000, 21);
    let want = expected(&[&totals]);
    let mut cluster = Cluster::start(program);
    let team = Team { dir: dir.path(), urls: cluster.urls() };
    let aggregator = team.aggregator();
    let agent = team.agent("agent-a", &data, "state-a");
    wait_for("the first rollups", Duration::from_secs(60), || rolled_up(&team.db()).filter(|r| r[0] > 0));
    for i in 0..3 {
        cluster.kill(i);
    }
    let before = rolled_up(&team.db()).unwrap();
    let delivered_before = wait_for("the agent's count", Duration::from_secs(10), || agent.sent());
    let mut peak_kb = 0;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_secs(1));
        peak_kb = peak_kb.max(rss_kb(agent.run.pid()));
    }
    assert!(before[0] < want[0], "the cluster went away before everything was sent: {before:?}");
    // Nothing counts as delivered while nothing can store it: the backlog is held, not lost.
    let delivered_away = wait_for("the agent's count", Duration::from_secs(10), || agent.sent());
    assert!(
        delivered_away <= delivered_before + 256,
        "at most the in-flight window settled: {delivered_before} → {delivered_away}"
    );
    assert!(peak_kb < 300_000, "the agent's memory stays bounded while the cluster is away: {peak_kb} kB");
    for i in 0..3 {
        cluster.up(i);
    }
    cluster.wait_ready();
    let got = wait_for("the backlog to drain", Duration::from_secs(120), || {
        rolled_up(&team.db()).filter(|r| r[0] >= want[0])
    });
    assert_eq!(got, want);
    eprintln!("agent peak RSS while the cluster was away: {peak_kb} kB");
    let log = agent.run.stop_with_log();
    eprintln!("AGENT LOG\n{log}");
    let log = aggregator.run.stop_with_log();
    eprintln!("AGGREGATOR LOG\n{log}");
}

/// The ids in an aggregator database's `opencode_message` table.
fn message_ids(db: &Path) -> Vec<String> {
    let Ok(conn) = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return Vec::new();
    };
    let Ok(mut st) = conn.prepare("SELECT id FROM opencode_message") else { return Vec::new() };
    st.query_map([], |r| r.get(0)).map(|rows| rows.filter_map(Result::ok).collect()).unwrap_or_default()
}

/// How many message rows two databases hold together, and how many ids both hold.
fn rows_and_overlap(a: &[String], b: &[String]) -> (usize, usize) {
    let first: std::collections::HashSet<&String> = a.iter().collect();
    (a.len() + b.len(), b.iter().filter(|id| first.contains(id)).count())
}

#[test]
fn aggregators_sharing_a_consumer_take_each_message_once_and_one_goes_on_when_the_other_stops() {
    let Some(program) = require("nats-server") else { return };
    let Some(_) = require("python3") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = history(dir.path(), "a", 3000, 31);
    let db = data.join("opencode/opencode.db");
    // Every message row (the `stats` total leaves fork copies out; the tables keep them).
    let count = || -> usize {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM message", [], |r| r.get::<_, i64>(0))
            .unwrap() as usize
    };
    let messages = count();
    let cluster = Cluster::start(program);
    let team = Team { dir: dir.path(), urls: cluster.urls() };
    // Both pull from the shared consumer before anything is published.
    let members = [team.aggregator_named("first", "shared"), team.aggregator_named("second", "shared")];
    for m in &members {
        wait_for("the aggregator's consumer", Duration::from_secs(30), || {
            m.run.log().contains("through the durable consumer `shared`").then_some(())
        });
    }
    let agent = team.agent("agent-a", &data, "state-a");
    let dbs = [dir.path().join("first-out/team.db"), dir.path().join("second-out/team.db")];
    let taken = |want: usize| {
        wait_for("every message in one of the two databases", Duration::from_secs(120), || {
            let ids = [message_ids(&dbs[0]), message_ids(&dbs[1])];
            (ids[0].len() + ids[1].len() >= want).then_some(ids)
        })
    };
    let [a, b] = taken(messages);
    assert_eq!(rows_and_overlap(&a, &b), (messages, 0), "each message taken by exactly one aggregator");
    eprintln!("shares: {} and {}", a.len(), b.len());

    // The one that took more stops; new messages all go to the other, which goes on from the
    // consumer's place (it reads nothing again).
    let [first, second] = members;
    let (stopping, going_on, other_db) = if a.len() >= b.len() { (first, second, 1) } else { (second, first, 0) };
    stopping.run.stop_with_log();
    let before = message_ids(&dbs[other_db]).len();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO message (id, session_id, time_created, time_updated, data)
             SELECT 'msg_zznew' || rowid, session_id, ?1, ?1, data FROM message ORDER BY rowid LIMIT 50",
            [now],
        )
        .unwrap();
    let [a, b] = taken(messages + 50);
    assert_eq!(rows_and_overlap(&a, &b), (count(), 0), "still each message once");
    assert_eq!(message_ids(&dbs[other_db]).len(), before + 50, "the one going on took all the new ones");
    going_on.run.stop_with_log();
    agent.run.stop_with_log();
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
