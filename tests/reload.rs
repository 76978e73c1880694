//! Reloading a running pipeline (`ocpipe run --watch`, SIGHUP) with events flowing at a steady
//! rate: a changed transform, source or sink is rebuilt and every event arrives once, in order;
//! unchanged components keep running; an invalid change is logged with its place and changes
//! nothing; a build that fails rolls the reload back; the page keeps its port.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const EVENTS: u64 = 1500;

/// A source printing `{"n": 0}` … at a steady rate (`rate_ms` apart), once; it waits at
/// `EVENTS / 2` until the file `go` exists, so a test's reloads happen while events flow.
fn numbers(rate_ms: u64) -> String {
    numbers_named("numbers", rate_ms)
}

fn numbers_named(id: &str, rate_ms: u64) -> String {
    format!(
        "[sources.{id}]\ntype = \"exec\"\nmode = \"once\"\n\
         command = [\"python3\", \"-c\", \"import json, os, time\\nfor n in range({EVENTS}):\\n    \
         while n == {half} and not os.path.exists('go'):\\n        time.sleep(0.01)\\n    \
         print(json.dumps({{'n': n}}), flush=True)\\n    time.sleep({})\"]\n",
        rate_ms as f64 / 1000.0,
        half = EVENTS / 2
    )
}

/// Lets the sources past their halfway wait.
fn go(dir: &Path) {
    std::fs::write(dir.join("go"), "").unwrap();
}

fn numbers_in(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["n"].as_u64().unwrap())
        .collect()
}

/// SIGHUP.
fn reload_by_signal(run: &Running) {
    signal(run.pid(), 1);
}

fn wait_log(run: &Running, needle: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let log = run.log();
        if log.contains(needle) {
            return log;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no `{needle}` in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_transform_changed_while_events_flow_loses_and_repeats_nothing() {
    let Some(_) = require("python3") else { return };
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |condition: &str, tag: &str| {
        format!(
            "{}\n[transforms.pass]\ntype = \"exec\"\ninputs = [\"numbers\"]\n\
             command = [\"python3\", \"-c\", \"import json, sys\\nfor l in sys.stdin:\\n    e = json.loads(l)\\n    \
             e['by'] = '{tag}'\\n    print(json.dumps(e))\\n    print(flush=True)\"]\n\
             [transforms.keep]\ntype = \"filter\"\ninputs = [\"pass\"]\ncondition = \"{condition}\"\n\
             [sinks.out]\ntype = \"jsonl\"\ninputs = [\"keep\"]\npath = \"out.jsonl\"\n",
            numbers(3)
        )
    };
    std::fs::write(dir.path().join("p.toml"), pipeline(".n >= 0", "first")).unwrap();
    let run = Running::start_args_in(dir.path(), &["run", "--watch", "p.toml"], &[]);
    let out = dir.path().join("out.jsonl");
    wait_for("events flowing", Duration::from_secs(20), || (numbers_in(&out).len() > 100).then_some(()));
    // Through the file watch: the plugin transform is rebuilt, the filter and the rest are not.
    std::fs::write(dir.path().join("p.toml"), pipeline(".n >= 0", "second")).unwrap();
    wait_log(&run, "reloaded: rebuilt pass; 3 unchanged");
    let before = numbers_in(&out).len();
    // And by SIGHUP: the filter changes (still keeping everything).
    std::fs::write(dir.path().join("p.toml"), pipeline(".n >= -1", "second")).unwrap();
    reload_by_signal(&run);
    wait_log(&run, "reloaded: rebuilt keep; 3 unchanged");
    go(dir.path());
    let (status, log) = run.finish(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let got = numbers_in(&out);
    assert_eq!(got, (0..EVENTS).collect::<Vec<_>>(), "every event once, in order:\n{log}");
    assert!(before <= (EVENTS / 2) as usize, "the reloads happened while events flowed ({before})");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("\"by\":\"first\"") && text.contains("\"by\":\"second\""), "both instances worked");
}

#[test]
fn a_changed_source_resumes_from_its_checkpoint_and_a_changed_sink_takes_over_its_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("traces");
    std::fs::create_dir(&traces).unwrap();
    let pipeline = |poll: u64, path: &str| {
        format!(
            "[sources.t]\ntype = \"trace_jsonl\"\npath = \"traces\"\nfollow = true\npoll_interval_ms = {poll}\n\
             [sinks.out]\ntype = \"jsonl\"\ninputs = [\"t\"]\npath = \"{path}\"\n"
        )
    };
    std::fs::write(dir.path().join("p.toml"), pipeline(1000, "a.jsonl")).unwrap();
    let run = Running::start_in(dir.path(), "p.toml", &[]);
    let line = |n: u64| {
        format!(
            "{{\"kind\":\"request\",\"id\":{n},\"sessionID\":\"ses_1\",\"method\":\"POST\",\"url\":\"http://127.0.0.1/v1\",\
             \"timestamp\":\"2026-11-21T15:58:35.721Z\",\"headers\":{{}},\"body\":{{\"n\":{n}}}}}\n"
        )
    };
    let file = traces.join("ses_1.jsonl");
    let write = |from: u64, to: u64| {
        let file = file.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(file).unwrap();
            for n in from..to {
                f.write_all(line(n).as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    // Each reload while lines are being appended.
    let first = write(0, 200);
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(dir.path().join("p.toml"), pipeline(500, "a.jsonl")).unwrap();
    reload_by_signal(&run);
    wait_log(&run, "reloaded: rebuilt t; 1 unchanged");
    first.join().unwrap();
    let second = write(200, 400);
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(dir.path().join("p.toml"), pipeline(500, "b.jsonl")).unwrap();
    reload_by_signal(&run);
    wait_log(&run, "reloaded: rebuilt out; 1 unchanged");
    second.join().unwrap();
    write(400, 600).join().unwrap();
    let ids = |p: &str| -> Vec<u64> {
        std::fs::read_to_string(dir.path().join(p))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_u64().unwrap())
            .collect()
    };
    wait_for("every line stored", Duration::from_secs(30), || {
        (ids("a.jsonl").len() + ids("b.jsonl").len() >= 600).then_some(())
    });
    let log = run.stop_with_log();
    let (a, b) = (ids("a.jsonl"), ids("b.jsonl"));
    assert!(!a.is_empty() && !b.is_empty(), "both sinks wrote ({} + {})", a.len(), b.len());
    let all: Vec<u64> = a.into_iter().chain(b).collect();
    assert_eq!(all, (0..600).collect::<Vec<_>>(), "every line once, in order:\n{log}");
    // After a restart the source's checkpoint is where the reloaded instance left it: the next
    // line is the only one stored.
    let again = Running::start_in(dir.path(), "p.toml", &[]);
    std::thread::sleep(Duration::from_millis(500));
    write(600, 601).join().unwrap();
    wait_for("the next line", Duration::from_secs(30), || (ids("b.jsonl").last() == Some(&600)).then_some(()));
    again.stop();
    assert_eq!(ids("b.jsonl").len() + ids("a.jsonl").len(), 601, "nothing read twice after a restart");
}

#[test]
fn an_invalid_change_is_located_and_changes_nothing() {
    let Some(_) = require("python3") else { return };
    let dir = tempfile::tempdir().unwrap();
    let good = format!("{}\n[sinks.out]\ntype = \"jsonl\"\ninputs = [\"numbers\"]\npath = \"out.jsonl\"\n", numbers(3));
    std::fs::write(dir.path().join("p.toml"), &good).unwrap();
    let run = Running::start_in(dir.path(), "p.toml", &[]);
    let out = dir.path().join("out.jsonl");
    wait_for("events flowing", Duration::from_secs(20), || (!numbers_in(&out).is_empty()).then_some(()));
    let bad = good.replace("path = \"out.jsonl\"", "path = \"out.jsonl\"\nbatch_max_event = 3\n")
        + "[sinks.x]\ntype = \"nope\"\n";
    std::fs::write(dir.path().join("p.toml"), bad).unwrap();
    reload_by_signal(&run);
    let log = wait_log(&run, "the changed pipeline is not valid; the running one goes on unchanged");
    assert!(log.contains("unknown field `batch_max_event`") && log.contains("p.toml:10:1"), "{log}");
    assert!(log.contains("unknown sink type `nope`"), "all errors at once: {log}");
    go(dir.path());
    let (status, log) = run.finish(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    assert_eq!(numbers_in(&out), (0..EVENTS).collect::<Vec<_>>());
}

#[test]
fn the_page_keeps_its_port_and_a_failed_build_rolls_the_reload_back() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pipeline = |address: &str, token: &str| {
        format!(
            "[sources.processes]\ntype = \"process_scan\"\n\
             [sinks.page]\ntype = \"websocket\"\ninputs = [\"processes\"]\naddress = \"{address}\"\ntoken = \"{token}\"\n"
        )
    };
    let address = format!("127.0.0.1:{port}");
    std::fs::write(dir.path().join("p.toml"), pipeline(&address, "")).unwrap();
    let run = Running::start_in(dir.path(), "p.toml", &[]);
    let health = format!("http://127.0.0.1:{port}/api/health");
    wait_for("the page", Duration::from_secs(20), || http("GET", &health, None));

    // A new token: the page is rebuilt on the same port (its old instance let go of it first).
    std::fs::write(dir.path().join("p.toml"), pipeline(&address, "s3cret")).unwrap();
    reload_by_signal(&run);
    wait_log(&run, "reloaded: rebuilt page; 1 unchanged");
    assert!(http("GET", &health, None).is_none(), "the new instance wants the token");
    let with_token = std::process::Command::new("curl")
        .args(["-s", "-f", "-H", "Authorization: Bearer s3cret", &health])
        .output()
        .unwrap();
    assert!(with_token.status.success(), "{}", run.log());

    // An address something else holds: the build fails, the reload is rolled back.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = taken.local_addr().unwrap().to_string();
    std::fs::write(dir.path().join("p.toml"), pipeline(&other, "s3cret")).unwrap();
    reload_by_signal(&run);
    let log = wait_log(&run, "the reload was rolled back; the pipeline runs as before");
    assert!(log.contains("sink `page` (websocket)"), "{log}");
    let again = std::process::Command::new("curl")
        .args(["-s", "-f", "-H", "Authorization: Bearer s3cret", &health])
        .output()
        .unwrap();
    assert!(again.status.success(), "the old page answers again on its port: {}", run.log());
    run.stop();
}

/// A stateful transform rebuilt mid-stream comes back with its state: the `aggregate`'s last
/// rollup counts every message once.
#[test]
fn a_rebuilt_aggregate_keeps_its_sums() {
    let Some(_) = require("python3") else { return };
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |throttle: u64| {
        format!(
            "[sources.opencode]\ntype = \"exec\"\nmode = \"once\"\nkind = \"message\"\n\
             command = [\"python3\", \"-c\", \"import json, time\\nfor n in range(800):\\n    \
             print(json.dumps({{'id': f'msg_{{n}}', 'sessionID': 's', 'role': 'assistant', 'tokens': {{'input': 1}}, 'timeCreated': 1764800000000}}), flush=True)\\n    \
             time.sleep(0.004)\"]\n\
             [transforms.usage]\ntype = \"aggregate\"\ninputs = [\"opencode\"]\ngroup_by = [\"all\"]\nthrottle_ms = {throttle}\n\
             [sinks.out]\ntype = \"jsonl\"\ninputs = [\"usage\"]\npath = \"rollups.jsonl\"\n"
        )
    };
    std::fs::write(dir.path().join("p.toml"), pipeline(200)).unwrap();
    let run = Running::start_in(dir.path(), "p.toml", &[]);
    let out = dir.path().join("rollups.jsonl");
    wait_for("a first rollup", Duration::from_secs(20), || {
        std::fs::read_to_string(&out).ok().filter(|s| !s.is_empty())
    });
    std::fs::write(dir.path().join("p.toml"), pipeline(300)).unwrap();
    reload_by_signal(&run);
    wait_log(&run, "reloaded: rebuilt usage; 2 unchanged");
    let (status, log) = run.finish(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let last: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&out).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!((last["messages"].as_u64(), last["tokens"]["input"].as_u64()), (Some(800), Some(800)), "{log}");
}

/// Two adjacent transforms and their slow sink change in one reload while the sink holds
/// everything back (full buffers all the way up): the successors start downstream first, so
/// nothing waits on a stopped reader; every event arrives once, in order. The sink's buffer size
/// changes too: what its old buffer held moves to the new one.
#[test]
fn adjacent_changes_under_backpressure_and_a_new_buffer_size_lose_nothing() {
    let Some(_) = require("python3") else { return };
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |tag: &str, max_events: usize| {
        format!(
            "{}\n[transforms.pass]\ntype = \"exec\"\ninputs = [\"numbers\"]\n\
             command = [\"python3\", \"-c\", \"import json, sys\\nfor l in sys.stdin:\\n    e = json.loads(l)\\n    \
             e['by'] = '{tag}'\\n    print(json.dumps(e))\\n    print(flush=True)\"]\n\
             [transforms.keep]\ntype = \"filter\"\ninputs = [\"pass\"]\ncondition = \".by == \\\"{tag}\\\" or .by != null\"\n\
             [sinks.out]\ntype = \"exec\"\ninputs = [\"keep\"]\nbuffer = {{ max_events = {max_events} }}\n\
             command = [\"python3\", \"-c\", \"import sys, time\\nout = open('out.jsonl', 'a')\\nfor l in sys.stdin:\\n    \
             time.sleep(0.003)\\n    out.write(l)\\n    out.flush()\\n    print(flush=True)\"]\n",
            numbers(0)
        )
    };
    std::fs::write(dir.path().join("p.toml"), pipeline("first", 20)).unwrap();
    let run = Running::start_in(dir.path(), "p.toml", &[]);
    let out = dir.path().join("out.jsonl");
    // The source has sent half and waits; the slow sink is still behind.
    wait_for("events flowing", Duration::from_secs(20), || (numbers_in(&out).len() > 20).then_some(()));
    std::fs::write(dir.path().join("p.toml"), pipeline("second", 200)).unwrap();
    reload_by_signal(&run);
    let log = wait_log(&run, "reloaded: rebuilt ");
    assert!(log.contains("rebuilt out, keep, pass; 1 unchanged"), "downstream first: {log}");
    assert!(numbers_in(&out).len() < (EVENTS / 2) as usize, "the sink was behind at the reload");
    go(dir.path());
    let (status, log) = run.finish(Duration::from_secs(90));
    assert!(status.success(), "{log}");
    assert!(!log.contains("did not stop within"), "{log}");
    assert_eq!(numbers_in(&out), (0..EVENTS).collect::<Vec<_>>(), "every event once, in order: {log}");
}

/// A source and its sink removed together while events flow: the source stops first (as at
/// shutdown), its sink reads what it was sent to the end, the reload does not wait out a
/// deadline, and the other branch goes on.
#[test]
fn removing_a_branch_while_it_flows_stores_what_it_sent() {
    let Some(_) = require("python3") else { return };
    let dir = tempfile::tempdir().unwrap();
    let branch = |id: &str| {
        format!(
            "{}\n[sinks.{id}_out]\ntype = \"jsonl\"\ninputs = [\"{id}\"]\npath = \"{id}.jsonl\"\n",
            numbers_named(id, 2)
        )
    };
    std::fs::write(dir.path().join("p.toml"), branch("a") + &branch("b")).unwrap();
    let run = Running::start_in(dir.path(), "p.toml", &[]);
    let b = dir.path().join("b.jsonl");
    wait_for("b flowing", Duration::from_secs(20), || (numbers_in(&b).len() > 50).then_some(()));
    std::fs::write(dir.path().join("p.toml"), branch("a")).unwrap();
    let asked = std::time::Instant::now();
    reload_by_signal(&run);
    wait_log(&run, "reloaded: removed b, b_out; 2 unchanged");
    assert!(asked.elapsed() < Duration::from_secs(10), "the reload took {:?}", asked.elapsed());
    go(dir.path());
    let (status, log) = run.finish(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    assert_eq!(numbers_in(&dir.path().join("a.jsonl")), (0..EVENTS).collect::<Vec<_>>());
    let got_b = numbers_in(&b);
    assert_eq!(got_b, (0..got_b.len() as u64).collect::<Vec<_>>(), "b: what was sent, once, in order");
}
