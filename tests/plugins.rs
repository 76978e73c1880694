//! `exec` plugins as a user writes them: Python and shell programs over JSON lines, run by
//! `ocpipe run`. A transform and a sink that crash mid-stream lose nothing and repeat nothing; a
//! plugin writing garbage has each bad line counted and the rest kept; a hung plugin is timed out
//! and restarted; a source is started again when it exits, with its `env` and `cwd`; the Python
//! example of `docs/plugins.md` runs as printed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

const EVENTS: usize = 200;

/// A source printing `{"n": 0}` … `{"n": 199}` at a steady rate, once.
fn counting_source() -> String {
    format!(
        "[sources.numbers]\ntype = \"exec\"\nmode = \"once\"\n\
         command = [\"python3\", \"-c\", \"import json, sys, time\\nfor n in range({EVENTS}):\\n    \
         print(json.dumps({{'n': n}}), flush=True)\\n    time.sleep(0.002)\"]\n"
    )
}

fn write_plugin(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

/// Runs `pipeline` (written in `dir`) to its end; its log.
fn run_to_end(dir: &Path, pipeline: &str) -> String {
    std::fs::write(dir.join("p.toml"), pipeline).unwrap();
    let (status, log) = Running::start_in(dir, "p.toml", &[]).finish(Duration::from_secs(120));
    assert!(status.success(), "{log}");
    log
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn numbers(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["n"].as_u64().unwrap()).collect()
}

const MARKED_CRASH: &str = r#"
import json, os, sys
crash_at, marker = int(sys.argv[1]), sys.argv[2]
for line in sys.stdin:
    event = json.loads(line)
    if event["n"] == crash_at and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)  # mid-stream, before answering
    event["pid"] = os.getpid()
    print(json.dumps(event))
    print(flush=True)
"#;

#[test]
fn a_python_transform_that_crashes_mid_stream_loses_and_repeats_nothing() {
    let Some(_) = require("python3") else { return };
    let dir = tempfile::tempdir().unwrap();
    let plugin = write_plugin(dir.path(), "crash.py", MARKED_CRASH);
    let marker = dir.path().join("crashed").display().to_string();
    let log = run_to_end(
        dir.path(),
        &format!(
            "{}\n[transforms.t]\ntype = \"exec\"\ninputs = [\"numbers\"]\ncommand = [\"python3\", \"{plugin}\", \"50\", \"{marker}\"]\n\
             [sinks.out]\ntype = \"jsonl\"\ninputs = [\"t\"]\npath = \"out.jsonl\"\n",
            counting_source()
        ),
    );
    let got = lines(&dir.path().join("out.jsonl"));
    assert_eq!(numbers(&got), (0..EVENTS as u64).collect::<Vec<_>>(), "all, once, in order");
    let pids: std::collections::BTreeSet<u64> = got.iter().map(|e| e["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids.len(), 2, "started again once");
    assert!(log.contains("the plugin died"), "{log}");
    assert_eq!(final_counter(&log, "t", "errors"), 1);
}

#[test]
fn a_shell_sink_that_crashes_mid_stream_gets_every_event_once() {
    let Some(_) = require("python3") else { return };
    let dir = tempfile::tempdir().unwrap();
    let plugin = write_plugin(
        dir.path(),
        "sink.sh",
        "count=0\nwhile IFS= read -r event; do\n  count=$((count + 1))\n  \
         if [ \"$count\" = 30 ] && [ ! -f crashed ]; then touch crashed; exit 1; fi\n  \
         printf '%s\\n' \"$event\" >> \"$OUT\"\n  echo\ndone\n",
    );
    let log = run_to_end(
        dir.path(),
        &format!(
            "{}\n[sinks.out]\ntype = \"exec\"\ninputs = [\"numbers\"]\ncommand = [\"sh\", \"{plugin}\"]\n\
             env = {{ OUT = \"stored.jsonl\" }}\n",
            counting_source()
        ),
    );
    let got = lines(&dir.path().join("stored.jsonl"));
    assert_eq!(numbers(&got), (0..EVENTS as u64).collect::<Vec<_>>(), "all, once, in order");
    assert_eq!(final_counter(&log, "out", "received"), EVENTS as u64);
    assert_eq!(final_counter(&log, "out", "dropped_error"), 0);
}

#[test]
fn garbage_lines_are_located_counted_and_skipped() {
    let Some(_) = require("python3") else { return };
    let dir = tempfile::tempdir().unwrap();
    let plugin = write_plugin(
        dir.path(),
        "garbage.py",
        "import json, sys\nfor line in sys.stdin:\n    e = json.loads(line)\n    \
         if e['n'] % 10 == 3:\n        print('not json {')\n    print(json.dumps(e))\n    print(flush=True)\n",
    );
    let log = run_to_end(
        dir.path(),
        &format!(
            "{}\n[transforms.t]\ntype = \"exec\"\ninputs = [\"numbers\"]\ncommand = [\"python3\", \"{plugin}\"]\n\
             [sinks.out]\ntype = \"jsonl\"\ninputs = [\"t\"]\npath = \"out.jsonl\"\n",
            counting_source()
        ),
    );
    assert_eq!(lines(&dir.path().join("out.jsonl")).len(), EVENTS);
    assert_eq!(final_counter(&log, "t", "errors"), (EVENTS / 10) as u64);
    // The 4th event's answer starts at output line 7: n=0,1,2 took two lines each.
    assert!(
        log.contains("output line 7, column 2: not JSON (expected ident); write one JSON document per line"),
        "{log}"
    );
}

#[test]
fn a_hung_plugin_is_timed_out_and_an_event_no_run_can_answer_fails() {
    let Some(_) = require("python3") else { return };
    let dir = tempfile::tempdir().unwrap();
    // Hangs on n=5 the first time; crashes on n=7 every time.
    let plugin = write_plugin(
        dir.path(),
        "hang.py",
        "import json, os, sys, time\nfor line in sys.stdin:\n    e = json.loads(line)\n    \
         if e['n'] == 5 and not os.path.exists('hung'):\n        open('hung', 'w').close()\n        time.sleep(600)\n    \
         if e['n'] == 7:\n        os._exit(1)\n    print(json.dumps(e))\n    print(flush=True)\n",
    );
    let log = run_to_end(
        dir.path(),
        &format!(
            "{}\n[transforms.t]\ntype = \"exec\"\ninputs = [\"numbers\"]\ncommand = [\"python3\", \"{plugin}\"]\n\
             timeout_secs = 3\nmax_attempts = 2\n\
             [sinks.out]\ntype = \"jsonl\"\ninputs = [\"t\"]\npath = \"out.jsonl\"\n",
            counting_source()
        ),
    );
    let want: Vec<u64> = (0..EVENTS as u64).filter(|&n| n != 7).collect();
    assert_eq!(numbers(&lines(&dir.path().join("out.jsonl"))), want);
    assert!(log.contains("no answer within 3s"), "{log}");
    assert_eq!(final_counter(&log, "t", "dropped_error"), 1, "n=7 failed after 2 runs");
}

#[test]
fn a_streaming_source_is_started_again_with_its_env_and_cwd() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        "[sources.s]\ntype = \"exec\"\ncommand = [\"sh\", \"-c\", \"echo \\\"{\\\\\\\"cwd\\\\\\\": \\\\\\\"$(pwd)\\\\\\\", \\\\\\\"v\\\\\\\": \\\\\\\"$V\\\\\\\"}\\\"\"]\n\
         env = { V = \"from-env\" }\ncwd = \"work\"\n\
         [sinks.out]\ntype = \"jsonl\"\ninputs = [\"s\"]\npath = \"out.jsonl\"\nbatch_max_events = 1\n",
    )
    .unwrap();
    let run = Running::start_in(dir.path(), "p.toml", &[]);
    let out = dir.path().join("out.jsonl");
    let got = wait_for("three runs of the source", Duration::from_secs(20), || {
        let got = std::fs::read_to_string(&out).ok()?;
        (got.lines().count() >= 3).then_some(got)
    });
    let log = run.stop_with_log();
    let first: Value = serde_json::from_str(got.lines().next().unwrap()).unwrap();
    let work = dir.path().join("work").canonicalize().unwrap();
    assert_eq!(first["cwd"], work.display().to_string(), "{log}");
    assert_eq!(first["v"], "from-env");
    assert!(log.contains("starting it again in"), "{log}");
}

#[test]
fn the_python_example_of_docs_plugins_md_runs_as_printed() {
    let Some(_) = require("python3") else { return };
    let doc = std::fs::read_to_string(root().join("docs/plugins.md")).unwrap();
    let start = doc.find("```python\n").unwrap() + "```python\n".len();
    let code = &doc[start..start + doc[start..].find("```").unwrap()];
    assert!(code.lines().count() <= 10, "the example is ten lines at most");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("totals.py"), code).unwrap();
    // Typed messages from a source plugin (kind = "message"), through the example.
    let messages = "import json\nfor i, role in enumerate(['user', 'assistant', 'assistant']):\n    \
                    print(json.dumps({'id': f'msg_{i}', 'sessionID': 'ses_1', 'role': role, 'modelID': 'm1', \
                    'tokens': {'input': 10 * i, 'output': 2, 'reasoning': 0, 'cache_read': 1, 'cache_write': 0}, \
                    'cost': 0, 'timeCreated': 0, 'forkCopy': False, 'origin': 'test'}))\n";
    std::fs::write(dir.path().join("messages.py"), messages).unwrap();
    run_to_end(
        dir.path(),
        "[sources.opencode]\ntype = \"exec\"\nmode = \"once\"\nkind = \"message\"\ncommand = [\"python3\", \"messages.py\"]\n\
         [transforms.totals]\ntype = \"exec\"\ninputs = [\"opencode\"]\ncommand = [\"python3\", \"totals.py\"]\nkind = \"json\"\n\
         [sinks.out]\ntype = \"jsonl\"\ninputs = [\"totals\"]\npath = \"out.jsonl\"\n",
    );
    let got = lines(&dir.path().join("out.jsonl"));
    assert_eq!(
        got,
        [
            serde_json::json!({"id": "msg_1", "model": "m1", "total": 13}),
            serde_json::json!({"id": "msg_2", "model": "m1", "total": 23}),
        ]
    );
}
