//! A coarse guard against busy loops: each checked-in pipeline, left alone for 10 s, uses less
//! than half a second of CPU — with no data at all, and with OpenCode storage and trace files
//! to follow. (The figures themselves are measured by `benches/idle.sh`, not here.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// CPU seconds (user + system) `pid` has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn idle_cpu(pipeline: &str, home: &Path) -> (f64, String) {
    let env = [
        ("HOME", home.display().to_string()),
        ("XDG_DATA_HOME", home.join(".local/share").display().to_string()),
        ("XDG_CACHE_HOME", home.join(".cache").display().to_string()),
        ("OCPIPE_DATA_DIR", home.join("state").display().to_string()),
        ("OCPIPE_OUT", home.join("out").display().to_string()),
        ("OCPIPE_HTTP", format!("127.0.0.1:{}", free_port())),
        ("OPENCODE_API_TRACER_DIR", home.join("traces").display().to_string()),
    ];
    let run = Running::start(pipeline, &env);
    // Startup and the backfill are not idle: wait until it runs and its sources are caught up.
    wait_for("the start", Duration::from_secs(60), || run.log().contains("pipeline running").then_some(()));
    let caught_up = |log: &str| {
        !pipeline.contains("monitor") || log.contains("read OpenCode's history") || log.contains("no OpenCode data yet")
    };
    wait_for("the backfill", Duration::from_secs(60), || caught_up(&run.log()).then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    let pid = run.pid();
    let before = cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(10));
    let used = cpu_secs(pid) - before;
    let log = run.log();
    run.stop();
    (used, log)
}

#[test]
fn checked_in_pipelines_wait_without_spinning() {
    let homes: Vec<(bool, tempfile::TempDir)> = [false, true]
        .into_iter()
        .map(|with_data| {
            let home = tempfile::tempdir().unwrap();
            if with_data {
                let data = home.path().join(".local/share/opencode");
                std::fs::create_dir_all(&data).unwrap();
                std::fs::copy(root().join("fixtures/storage/v1.18.33-fork/opencode.db"), data.join("opencode.db"))
                    .unwrap();
                copy_traces(&home.path().join("traces"));
            }
            (with_data, home)
        })
        .collect();
    // All at once (CPU time is counted per process), each in its own home and state.
    let results: Vec<(String, f64, String)> = std::thread::scope(|s| {
        let mut runs = Vec::new();
        for (with_data, home) in &homes {
            for name in ["monitor", "trace", "status-light"] {
                let dir = home.path().join(name);
                runs.push(s.spawn(move || {
                    std::fs::create_dir_all(&dir).unwrap();
                    if *with_data {
                        // Each run its own copy of the data.
                        let data = dir.join(".local/share/opencode");
                        std::fs::create_dir_all(&data).unwrap();
                        std::fs::copy(home.path().join(".local/share/opencode/opencode.db"), data.join("opencode.db"))
                            .unwrap();
                        copy_traces(&dir.join("traces"));
                    }
                    let (used, log) = idle_cpu(&format!("pipelines/{name}.toml"), &dir);
                    (format!("{name} (data: {with_data})"), used, log)
                }));
            }
        }
        runs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (what, used, _) in &results {
        eprintln!("{what}: {used:.2} s of CPU in 10 idle seconds");
    }
    for (what, used, log) in &results {
        assert!(*used < 0.5, "{what} used {used:.2} s of CPU in 10 idle seconds: {log}");
    }
}
