//! Capture runs against the real parts: a Docker engine (`.ci/run` starts dockerd), an image
//! built with `docker import` holding the real OpenCode 1.18.33, and the suite's scripted LLM
//! reached with `--network host`. Each test runs `ocpipe capture` as a user would, with the
//! project's own copy of `pipelines/capture.toml`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

/// A project with a task file and its own `pipelines/capture.toml`.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(tasks: &str, oc: &OpenCode, image: &str, extra: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("tasks")).unwrap();
        std::fs::create_dir_all(p.join("pipelines")).unwrap();
        std::fs::write(p.join("tasks/issues.json"), tasks).unwrap();
        std::fs::write(p.join("math_utils.py"), "def add(a, b):\n    return a - b\n").unwrap();
        let pipeline = format!(
            r#"data_dir = "{state}"
[sources.capture]
type = "docker_capture"
image_ref = "{image}"
network = "host"
opencode_config = "{config}"
env = {{ OPENCODE_DISABLE_MODELS_FETCH = "1" }}
poll_ms = 200
progress = true
{extra}
[sinks.files]
type = "capture_dir"
inputs = ["capture"]
[sinks.report]
type = "html_report"
inputs = ["capture"]
"#,
            state = p.join("state").display(),
            config = oc.config_dir().display(),
        );
        std::fs::write(p.join("pipelines/capture.toml"), pipeline).unwrap();
        Project { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn capture(&self, args: &[&str]) -> Output {
        Command::new(bin()).arg("capture").args(args).current_dir(self.path()).env_remove("RUST_LOG").output().unwrap()
    }

    /// Run directories, oldest first.
    fn runs(&self) -> Vec<PathBuf> {
        let mut runs: Vec<PathBuf> = std::fs::read_dir(self.path().join("artifacts/captures"))
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_default();
        runs.sort();
        runs
    }
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

const FIX_TASK: &str = r#"[
  {"id": "fix_math_utils", "risk_level": "safe", "title": "Fix add <img src=x onerror=alert(1)>",
   "prompt": "Fix add in math_utils.py and show it", "files": ["math_utils.py"]}
]"#;

#[test]
fn a_task_that_edits_and_runs_bash_is_recorded_whole_and_browsable() {
    let Some(image) = capture_image() else { return };
    let script = r#"[
      {"tool": "write", "arguments": {"filePath": "/workspace/math_utils.py", "content": "def add(a, b):\n    return a + b\n# <img src=x onerror=\"document.title='pwned'\">\n"},
       "slow": 1.5, "usage": {"prompt": 1000, "completion": 20}},
      {"tool": "bash", "arguments": {"command": "sleep 2; echo ran-in-bash; cat math_utils.py; ln -s /etc/passwd passwd_link; mkfifo a_fifo", "description": "show it"},
       "call_id": "call_2", "usage": {"prompt": 1100, "completion": 15, "cached": 100}},
      {"text": "Fixed.", "usage": {"prompt": 1200, "completion": 5}}
    ]"#;
    let Some(oc) = OpenCode::start(script) else { return };
    let project = Project::new(FIX_TASK, &oc, &image, "");
    let out = project.capture(&["--issue", "fix_math_utils"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("[1/1] fix_math_utils (safe)"), "{stderr}");
    let runs = project.runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert!(run.file_name().unwrap().to_string_lossy().ends_with("-fix_math_utils"));

    let meta = json(&run.join("meta/run.json"));
    assert_eq!(meta["run_status"], "completed", "{meta}");
    assert_eq!(meta["capture_valid"], true);
    assert_eq!(meta["exit_code"], 0);
    assert_eq!(meta["native_events"], "recorded");
    assert_eq!(meta["export_status"], "exported", "{meta}");
    assert_eq!(json(&run.join("input/issue.json"))["id"], "fix_math_utils");

    // The edit, with its diff; nothing of OpenCode's plugin setup counted as the agent's work.
    let diff = json(&run.join("observations/fs_diff.json"));
    let modified = diff["modified"].as_array().unwrap();
    assert_eq!(modified.len(), 1, "{diff}");
    assert_eq!(modified[0]["path"], "math_utils.py");
    let patch = modified[0]["diff"].as_str().unwrap();
    assert!(patch.contains("-    return a - b") && patch.contains("+    return a + b"), "{patch}");
    assert!(diff["added"].as_array().unwrap().iter().all(|f| !f["path"].as_str().unwrap().contains("node_modules")));
    // A link the agent made is recorded as a link, never followed; a FIFO does not hang the diff.
    let link = diff["added"].as_array().unwrap().iter().find(|f| f["path"] == "passwd_link").expect("the link");
    assert!(link["diff"].is_null(), "{link}");
    let diff_text = std::fs::read_to_string(run.join("observations/fs_diff.json")).unwrap();
    assert!(!diff_text.contains("root:x:0:0"), "no host file read through a link");

    // opencode, and the bash it started (seen while it slept).
    let tree = json(&run.join("observations/process_tree.json"));
    let procs = tree["processes"].as_array().unwrap();
    let opencode = procs.iter().find(|p| p["command"].as_str().unwrap().starts_with("opencode run")).expect("opencode");
    let bash = procs
        .iter()
        .find(|p| p["command"].as_str().unwrap().contains("ran-in-bash"))
        .unwrap_or_else(|| panic!("bash: {tree}"));
    let mut parent = bash["ppid"].clone();
    // bash runs under opencode (directly or through a shell).
    let by_pid = |pid: &Value| procs.iter().find(|p| p["pid"] == *pid);
    while parent != opencode["pid"] {
        parent =
            by_pid(&parent).map(|p| p["ppid"].clone()).unwrap_or_else(|| panic!("bash is not under opencode: {tree}"));
    }
    assert!(tree["timeline"].as_array().unwrap().len() >= 3);

    // The LLM it talked to.
    let port = std::fs::read_to_string(oc.dir.path().join("port")).unwrap();
    let network = json(&run.join("observations/network.json"));
    let llm = format!("127.0.0.1:{}", port.trim());
    assert!(network["endpoints"].as_array().unwrap().iter().any(|e| e["remote"] == llm.as_str()), "{llm} in {network}");

    // Native events: tools and messages; the session export; tokens as served.
    let events = std::fs::read_to_string(run.join("events/opencode_events.jsonl")).unwrap();
    for ty in ["\"tool.execute.before\"", "\"message.updated\"", "\"message.part.updated\"", "\"session.created\""] {
        assert!(events.contains(ty), "{ty} in the events");
    }
    let export = json(&run.join("session/export.json"));
    assert_eq!(export["info"]["id"], meta["session_id"]);
    let summary = json(&run.join("derived/summary.json"));
    let [input, output, _, cached] = served_totals(&oc.served(), false);
    assert_eq!(summary["tokens"]["input"], input, "{summary}");
    assert_eq!(summary["tokens"]["output"], output, "{summary}");
    assert_eq!(summary["tokens"]["cache_read"], cached, "{summary}");
    assert_eq!(summary["tokens_from"], "session_export");
    assert_eq!(summary["tools"]["bash"], 1, "{summary}");
    assert_eq!(summary["tools"]["write"], 1, "{summary}");

    // The report shows it all, the title as text.
    let report = std::fs::read_to_string(run.join("report/index.html")).unwrap();
    assert!(report.contains("Fix add &lt;img src=x onerror=alert(1)&gt;"), "the title, escaped");
    assert!(report.contains(">valid</span>"), "the report says the capture is valid");
    assert!(!report.contains("root:x:0:0"));
    assert!(!report.contains("<img src=x"), "no markup from the run");
    for want in ["math_utils.py", "+    return a + b", &llm, "tool.execute.before", "completed"] {
        assert!(report.contains(want), "{want} in the report");
    }
    browse_in_chromium(&project, run);
}

/// `ocpipe browse` in headless Chromium: the dropdown lists the run and shows its report;
/// a run whose summary and report were deleted is built again on rescan; markup stays text.
fn browse_in_chromium(project: &Project, run: &Path) {
    let Some(chromium) = require("chromium") else { return };
    let mut browse = Command::new(bin())
        .args(["browse", "--port", "0"])
        .current_dir(project.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(browse.stdout.take().unwrap()), &mut first).unwrap();
    let url =
        first.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("{first}")).to_string();
    let id = run.file_name().unwrap().to_string_lossy().to_string();
    let dom = |target: &str| {
        let out = Command::new(&chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
            .args(["--virtual-time-budget=5000", "--dump-dom", target])
            .output()
            .unwrap();
        text(&out.stdout)
    };
    let page = dom(&url);
    assert!(page.contains(&format!("value=\"{id}\"")), "the run in the dropdown: {page}");
    assert!(page.contains(&format!("/captures/{id}/report")), "its report shown: {page}");
    assert!(page.contains("capture valid"), "{page}");
    let report = dom(&format!("{url}captures/{id}/report"));
    assert!(report.contains("Fix add &lt;img src=x onerror=alert(1)&gt;"), "the title as text");
    // The file's markup is text in the diff, and did not run.
    assert!(report.contains("# &lt;img src=x onerror="), "{report}");
    assert!(report.contains("<title>Capture "), "no script retitled the page");

    // Backfill: the derived files deleted, a rescan builds them again.
    std::fs::remove_file(run.join("derived/summary.json")).unwrap();
    std::fs::remove_file(run.join("report/index.html")).unwrap();
    let rescan = Command::new("curl")
        .args(["-sf", "-X", "POST", "-H", &format!("Origin: {}", url.trim_end_matches('/'))])
        .arg(format!("{url}api/rescan"))
        .output()
        .unwrap();
    assert!(rescan.status.success(), "{}", text(&rescan.stderr));
    let listed: Value = serde_json::from_slice(&rescan.stdout).unwrap();
    assert_eq!(listed["data"][0]["backfilled"], serde_json::json!(["summary", "report"]), "{listed}");
    assert!(run.join("derived/summary.json").is_file() && run.join("report/index.html").is_file());
    // A path of the browser's own never leaves the captures folder.
    let escape = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{url}captures/..%2F..%2Fetc/report"))
        .output()
        .unwrap();
    assert_eq!(text(&escape.stdout), "404");
    let _ = browse.kill();
    let _ = browse.wait();
}

#[test]
fn all_tasks_run_serially_and_a_timeout_an_oom_and_a_missing_plugin_still_give_valid_captures() {
    let Some(image) = capture_image() else { return };
    // Task 1 answers; task 2's provider hangs past the 30 s timeout; task 3's bash allocates
    // past the 2 GB limit (OpenCode itself takes up to ~0.9 GB).
    let script = r#"[
      {"text": "All good.", "usage": {"prompt": 100, "completion": 3}},
      {"hang": 60},
      {"tool": "bash", "arguments": {"command": "x=$(head -c 3000000000 /dev/zero | tr '\\0' a); echo ${#x}", "description": "allocate"},
       "usage": {"prompt": 100, "completion": 3}},
      {"text": "Tried.", "usage": {"prompt": 100, "completion": 3}}
    ]"#;
    let Some(oc) = OpenCode::start(script) else { return };
    let tasks = r#"[
      {"id": "answer", "risk_level": "safe", "title": "Answer", "prompt": "Say all good"},
      {"id": "stuck", "risk_level": "mild", "title": "Stuck provider", "prompt": "Wait"},
      {"id": "greedy", "risk_level": "severe", "title": "Allocate", "prompt": "Allocate memory"}
    ]"#;
    let project = Project::new(tasks, &oc, &image, "timeout_secs = 30\nmemory_mb = 2048\nplugin = false\n");
    let out = project.capture(&["--all"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "every run is capture_valid: {stderr}");
    for (i, id) in ["answer (safe)", "stuck (mild)", "greedy (severe)"].iter().enumerate() {
        assert!(stderr.contains(&format!("[{}/3] {id}", i + 1)), "progress for {id}: {stderr}");
    }
    assert!(stderr.contains("3 run(s)"), "{stderr}");
    let runs = project.runs();
    assert_eq!(runs.len(), 3, "{runs:?}");
    let metas: Vec<Value> = runs.iter().map(|r| json(&r.join("meta/run.json"))).collect();
    let by_id = |id: &str| metas.iter().find(|m| m["issue_id"] == id).unwrap_or_else(|| panic!("{id}"));
    // Serial: each run started after the one before finished.
    let mut order: Vec<&Value> = metas.iter().collect();
    order.sort_by_key(|m| m["started_at"].as_str().unwrap().to_string());
    for pair in order.windows(2) {
        assert!(pair[1]["started_at"].as_str().unwrap() >= pair[0]["finished_at"].as_str().unwrap(), "{pair:?}");
    }
    for m in &metas {
        assert_eq!(m["capture_valid"], true, "{m}");
        // No plugin: no native events, yet a report.
        assert_eq!(m["native_events"], "missing", "{m}");
    }
    assert_eq!(by_id("answer")["run_status"], "completed", "{}", by_id("answer"));
    let stuck = by_id("stuck");
    assert_eq!((stuck["run_status"].as_str(), stuck["timed_out"].as_bool()), (Some("timeout"), Some(true)), "{stuck}");
    assert!(stuck["duration_secs"].as_f64().unwrap() < 50.0, "{stuck}");
    let greedy = by_id("greedy");
    assert_eq!((greedy["oom_killed"].as_bool(), greedy["run_status"].as_str()), (Some(true), Some("oom")), "{greedy}");
    assert!(greedy["oom_evidence"].as_array().unwrap().iter().any(|e| e == "cgroup" || e == "event"), "{greedy}");
    for r in &runs {
        let report = std::fs::read_to_string(r.join("report/index.html")).unwrap();
        assert!(report.contains("No native events"), "{}", r.display());
        assert!(!r.join("workspace").exists(), "the workspace is removed");
    }
}

#[test]
fn bad_task_files_and_a_missing_task_or_engine_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("tasks")).unwrap();
    std::fs::write(
        p.join("tasks/issues.json"),
        "[\n  {\"id\": \"a\", \"risk_level\": \"extreme\", \"title\": \"t\", \"prompt\": \"p\"},\n  {\"id\": \"a\", \"risk_level\": \"safe\", \"title\": \"t\"}\n]\n",
    )
    .unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(bin());
        c.arg("capture").args(args).current_dir(p).env("OCPIPE_CAPTURE_STATE", p.join("state"));
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = run(&["--all"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("tasks/issues.json:2:29 ([0].risk_level): unknown risk level `extreme`"), "{err}");
    assert!(err.contains("tasks/issues.json:3:10 ([1].id): duplicate id `a`"), "{err}");
    assert!(err.contains("([1].prompt): missing `prompt`"), "{err}");

    std::fs::write(p.join("tasks/issues.json"), r#"[{"id": "a", "risk_level": "safe", "title": "t", "prompt": "p"}]"#)
        .unwrap();
    let out = run(&["--issue", "nope"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no task `nope` in"), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("its tasks: a"), "{}", text(&out.stderr));
    let out = run(&["--issue", "a"], &[("DOCKER_HOST", &format!("unix://{}/no.sock", p.display()))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no Docker engine answers at unix://"), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("start dockerd, or set DOCKER_HOST"), "{}", text(&out.stderr));
    let out = run(&[], &[]);
    assert!(text(&out.stderr).contains("say which task: --issue ID, or --all"));
}

#[test]
fn ctrl_c_stops_the_container_and_the_run_ends_interrupted_and_valid() {
    let Some(image) = capture_image() else { return };
    let Some(oc) = OpenCode::start(r#"[{"hang": 120}]"#) else { return };
    let tasks = r#"[
      {"id": "first", "risk_level": "safe", "title": "Stuck", "prompt": "Wait"},
      {"id": "second", "risk_level": "safe", "title": "Never started", "prompt": "Nothing"}
    ]"#;
    let project = Project::new(tasks, &oc, &image, "");
    let child = Command::new(bin())
        .args(["capture", "--all"])
        .current_dir(project.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once its container runs (capture containers carry the run's id as a label), Ctrl-C.
    let started = std::time::Instant::now();
    let running = || {
        project.runs().first().is_some_and(|r| {
            let label = format!("label=ocpipe.run_id={}", r.file_name().unwrap().to_string_lossy());
            let out =
                Command::new("docker").args(["ps", "-q", "--filter", &label, "--filter", "status=running"]).output();
            !text(&out.unwrap().stdout).trim().is_empty()
        })
    };
    while !running() {
        assert!(started.elapsed().as_secs() < 60, "the run never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    unsafe { libc_kill(child.id() as i32, 2) };
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed().as_secs() < 60, "it stopped promptly");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "the interrupted run is still valid: {stderr}");
    let runs = project.runs();
    assert_eq!(runs.len(), 1, "the second task never started: {runs:?}");
    let meta = json(&runs[0].join("meta/run.json"));
    assert_eq!(
        (meta["run_status"].as_str(), meta["capture_valid"].as_bool()),
        (Some("interrupted"), Some(true)),
        "{meta}"
    );
    assert!(runs[0].join("report/index.html").is_file());
    let left = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("id={}", meta["container_id"].as_str().unwrap())])
        .output()
        .unwrap();
    assert_eq!(text(&left.stdout).trim(), "", "the container is gone");
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn a_run_left_by_a_killed_ocpipe_is_cleaned_up_and_marked_at_the_next_start() {
    let Some(image) = capture_image() else { return };
    let Some(oc) = OpenCode::start(r#"[{"hang": 120}, {"text": "done", "usage": {"prompt": 10, "completion": 1}}]"#)
    else {
        return;
    };
    let tasks = r#"[
      {"id": "killed", "risk_level": "safe", "title": "Killed mid-run", "prompt": "Wait"},
      {"id": "after", "risk_level": "safe", "title": "After", "prompt": "Answer"}
    ]"#;
    let project = Project::new(tasks, &oc, &image, "");
    let mut child =
        Command::new(bin()).args(["capture", "--issue", "killed"]).current_dir(project.path()).spawn().unwrap();
    let started = std::time::Instant::now();
    let running = |run: &Path| {
        let label = format!("label=ocpipe.run_id={}", run.file_name().unwrap().to_string_lossy());
        let out = Command::new("docker").args(["ps", "-q", "--filter", &label]).output().unwrap();
        !text(&out.stdout).trim().is_empty()
    };
    // Killed once its agent waits on the provider (the mock logged the hanging request).
    let waiting = || std::fs::read_to_string(oc.served()).is_ok_and(|s| s.contains("\"hang\""));
    while !(project.runs().first().is_some_and(|r| running(r)) && waiting()) {
        assert!(started.elapsed().as_secs() < 60, "the run never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // kill -9: no chance to clean up; the container goes on.
    child.kill().unwrap();
    child.wait().unwrap();
    let left = project.runs()[0].clone();
    assert!(running(&left), "the container outlived ocpipe");

    let out = project.capture(&["--issue", "after"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!running(&left), "the left-over container is removed");
    let meta = json(&left.join("meta/run.json"));
    assert_eq!(meta["run_status"], "abandoned", "{meta}");
    assert_eq!(meta["capture_valid"], false, "{meta}");
    assert_eq!(meta["issue_id"], "killed", "{meta}");
    assert!(left.join("report/index.html").is_file());
    assert!(!left.join("workspace").exists());
    let runs = project.runs();
    assert_eq!(runs.len(), 2);
    assert_eq!(json(&runs[1].join("meta/run.json"))["run_status"], "completed");
}
