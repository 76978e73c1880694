//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ocpipe::component::Input;
use ocpipe::event::{Event, Payload, StatusInfo};
use ocpipe::metrics::MetricsSnapshot;
use ocpipe::registry::{AnyConfig, Kind};
use ocpipe::testing;
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ocpipe")
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs ocpipe to completion with a private data dir under `dir`.
pub fn ocpipe(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env("OCPIPE_DATA_DIR", dir.join("state"))
        .env_remove("RUST_LOG")
        .output()
        .expect("ocpipe runs")
}

pub fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Copies the captured trace fixtures into `dst`.
pub fn copy_traces(dst: &Path) -> usize {
    std::fs::create_dir_all(dst).unwrap();
    let mut records = 0;
    for e in std::fs::read_dir(root().join("fixtures/traces")).unwrap() {
        let p = e.unwrap().path();
        let body = std::fs::read_to_string(&p).unwrap();
        records += body.lines().filter(|l| !l.trim().is_empty()).count();
        std::fs::write(dst.join(p.file_name().unwrap()), body).unwrap();
    }
    records
}

pub fn count(db: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

pub fn stored_traces(db: &Path) -> i64 {
    count(
        db,
        "SELECT (SELECT count(*) FROM trace_request) + (SELECT count(*) FROM trace_response) + (SELECT count(*) FROM trace_error)",
    )
}

/// Every file below `dir`.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { files.push(p) }
        }
    }
    files
}

/// Every file below `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    files_below(dir)
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())))
        .collect()
}

/// Says `line` where `cargo test` shows it, even for a passing test (whose own output it
/// hides): straight to the terminal's standard error.
pub fn loud(line: &str) {
    use std::io::Write;
    match std::fs::OpenOptions::new().write(true).open("/dev/stderr") {
        Ok(mut tty) => {
            let _ = writeln!(tty, "\n{line}");
        }
        Err(_) => eprintln!("\n{line}"),
    }
}

/// A program a test needs. Missing: a loud skip locally, a failure under CI (`CI=true`).
pub fn require(program: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        // Daemons (mosquitto, dbus-daemon) live in sbin, which is not always on PATH.
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = format!("`{program}` is not installed; this test needs it");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg} (CI=true: a missing program is a failure)");
        }
        loud(&format!("*** SKIPPED: {msg} ***"));
    }
    found
}

/// Token totals OpenCode should have stored for what the mock served (`served.jsonl`): title
/// calls are not stored; failed calls store nothing. `output_includes_reasoning` is true for
/// 1.1.x, which stored the completion count as output.
pub fn served_totals(served: &Path, output_includes_reasoning: bool) -> [u64; 4] {
    let mut t = [0u64; 4]; // input, output, reasoning, cache_read
    for line in std::fs::read_to_string(served).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = &v["step"];
        if v["title"] == true || step.get("status").is_some() || step.get("drop").is_some() {
            continue;
        }
        let u = &step["usage"];
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        t[0] += n("prompt") - n("cached");
        t[1] += if output_includes_reasoning { n("completion") } else { n("completion") - n("reasoning") };
        t[2] += n("reasoning");
        t[3] += n("cached");
    }
    t
}

/// The overview numbers of `opencode stats` (as printed: `5`, `5.3K`, `1.2M`).
pub fn opencode_stats_overview(text: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    for line in text.lines() {
        let inner = line.trim_matches(|c| c == '│' || c == ' ');
        for key in ["Sessions", "Messages", "Input", "Output", "Cache Read", "Cache Write"] {
            if let Some(rest) = inner.strip_prefix(key)
                && rest.starts_with(' ')
                && !out.contains_key(key)
            {
                out.insert(key.to_string(), rest.trim().to_string());
            }
        }
    }
    out
}

/// A number as `opencode stats` prints it.
pub fn opencode_number(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1}K", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

pub fn stats_json(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let out =
        Command::new(bin()).arg("stats").args(args).arg("--json").env("XDG_CACHE_HOME", dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Checks `ocpipe stats --json` totals against what the mock served and against OpenCode's own
/// overview of the same data.
pub fn assert_matches_opencode(data: &[&str], dir: &Path, output_includes_reasoning: bool, forks: bool) {
    let served = served_totals(&dir.join("served.jsonl"), output_includes_reasoning);
    let ours = stats_json(data);
    let t = &ours["totals"];
    let got = |k: &str| t[k].as_u64().unwrap();
    assert_eq!(
        [got("input"), got("output"), got("reasoning"), got("cache_read")],
        served,
        "ocpipe vs the usage served: {ours}"
    );
    assert_eq!(got("cache_write"), 0);
    assert_eq!(t["cost"], 0.0);
    if forks {
        assert!(ours["fork_copies"]["messages"].as_u64().unwrap() > 0, "{ours}");
    } else {
        assert_eq!(ours["fork_copies"]["messages"], 0, "{ours}");
    }
    // OpenCode's own sums count fork copies: compare with them included.
    let with: Vec<&str> = data.iter().copied().chain(["--include-fork-copies"]).collect();
    let all = stats_json(&with);
    let t = &all["totals"];
    let theirs = opencode_stats_overview(&std::fs::read_to_string(dir.join("opencode-stats.txt")).unwrap());
    for (key, ours) in [
        ("Sessions", t["sessions"].as_u64().unwrap()),
        ("Messages", t["messages"].as_u64().unwrap()),
        ("Input", t["input"].as_u64().unwrap()),
        ("Output", t["output"].as_u64().unwrap()),
        ("Cache Read", t["cache_read"].as_u64().unwrap()),
        ("Cache Write", t["cache_write"].as_u64().unwrap()),
    ] {
        assert_eq!(
            theirs.get(key),
            Some(&opencode_number(ours)),
            "{key}: opencode stats says {:?}, ocpipe {ours}",
            theirs.get(key)
        );
    }
}

/// A real OpenCode in temporary HOME/XDG directories, talking to the scripted mock LLM.
pub struct OpenCode {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    mock: std::process::Child,
}

impl OpenCode {
    /// `None` (after a loud skip, or a panic under CI) when npm or python3 is missing.
    pub fn start(script: &str) -> Option<OpenCode> {
        Self::start_version(script, "1.18.33")
    }

    /// A given release of opencode-ai (installed from npm, cached).
    pub fn start_version(script: &str, version: &str) -> Option<OpenCode> {
        require("npm")?;
        require("python3")?;
        let out =
            Command::new("bash").arg(root().join("fixtures/tools/opencode-bin.sh")).arg(version).output().unwrap();
        assert!(out.status.success(), "installing OpenCode: {}", text(&out.stderr));
        let bin = PathBuf::from(text(&out.stdout).trim());
        let dir = tempfile::tempdir().unwrap();
        for d in ["home", "data", "config/opencode", "cache", "state", "work"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("script.json"), script).unwrap();
        let mock = Command::new("python3")
            .arg(root().join("fixtures/tools/mock_llm.py"))
            .args(["--script", "script.json", "--port-file", "port", "--log", "served.jsonl"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let port_file = dir.path().join("port");
        let start = std::time::Instant::now();
        while !port_file.exists() {
            assert!(start.elapsed().as_secs() < 10, "the mock LLM did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let port = std::fs::read_to_string(port_file).unwrap();
        let config = format!(
            r#"{{"autoupdate": false, "share": "disabled", "model": "mock/mock-1", "small_model": "mock/mock-1",
 "provider": {{"mock": {{"npm": "@ai-sdk/openai-compatible", "name": "Mock",
   "options": {{"baseURL": "http://127.0.0.1:{port}/v1", "apiKey": "sk-test"}},
   "models": {{"mock-1": {{"name": "Mock 1"}}}}}}}}}}"#
        );
        std::fs::write(dir.path().join("config/opencode/opencode.json"), config).unwrap();
        Some(OpenCode { dir, bin, mock })
    }

    /// The isolating environment, for OpenCode and for ocpipe reading its data.
    pub fn env(&self) -> Vec<(String, PathBuf)> {
        let d = self.dir.path();
        [
            ("HOME", "home"),
            ("XDG_DATA_HOME", "data"),
            ("XDG_CONFIG_HOME", "config"),
            ("XDG_CACHE_HOME", "cache"),
            ("XDG_STATE_HOME", "state"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), d.join(v)))
        .collect()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args).current_dir(self.dir.path().join("work")).env("OPENCODE_DISABLE_MODELS_FETCH", "1");
        for (k, v) in self.env() {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, prompt: &str) {
        let out = self.command(&["run", prompt]).output().unwrap();
        assert!(out.status.success(), "opencode run: {}", text(&out.stderr));
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("data/opencode/opencode.db")
    }
}

impl Drop for OpenCode {
    fn drop(&mut self) {
        let _ = self.mock.kill();
        let _ = self.mock.wait();
    }
}

/// Runs a capture script from fixtures/tools into a new temporary directory.
pub fn capture(script: &str, args: &[&str]) -> Option<tempfile::TempDir> {
    require("npm")?;
    require("python3")?;
    require("sqlite3")?;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(root().join("fixtures/tools").join(script))
        .arg(dir.path())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{script} failed: {}", text(&out.stderr));
    Some(dir)
}

// ---- live servers: OpenCode serve, ocpipe run, mosquitto ----

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn http(method: &str, url: &str, body: Option<Value>) -> Option<Value> {
    let mut c = Command::new("curl");
    c.args(["-s", "-f", "--max-time", "5", "-X", method, url, "-H", "content-type: application/json"]);
    if let Some(b) = body {
        c.args(["-d", &b.to_string()]);
    }
    let out = c.output().ok()?;
    if !out.status.success() {
        return None;
    }
    if out.stdout.is_empty() { Some(Value::Null) } else { serde_json::from_slice(&out.stdout).ok() }
}

pub struct Server {
    child: Child,
    pub url: String,
}

impl OpenCode {
    /// `opencode serve` on `port`, once it answers.
    pub fn serve(&self, port: u16) -> Server {
        let child = self
            .command(&["serve", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        wait_for("opencode serve", Duration::from_secs(60), || http("GET", &format!("{url}/global/health"), None));
        Server { child, url }
    }

    /// Makes bash calls wait for a permission reply.
    pub fn ask_before_bash(&self) {
        let cfg = self.dir.path().join("config/opencode/opencode.json");
        let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        c["permission"] = json!({"bash": "ask"});
        std::fs::write(&cfg, c.to_string()).unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a bash prompt that asks for permission; returns the session and the request.
pub fn start_bash_prompt(server: &str) -> (String, Value) {
    let session =
        http("POST", &format!("{server}/session"), Some(json!({}))).unwrap()["id"].as_str().unwrap().to_string();
    http(
        "POST",
        &format!("{server}/session/{session}/prompt_async"),
        Some(json!({"parts": [{"type": "text", "text": "Run echo hi with bash"}]})),
    )
    .expect("prompt accepted");
    let permission = wait_for("the permission request", Duration::from_secs(60), || {
        let list = http("GET", &format!("{server}/permission"), None)?;
        list.as_array()?.first().cloned()
    });
    (session, permission)
}

/// `ocpipe run PIPELINE` in the background, its log collected.
pub struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Running {
    /// From the project's root (the caller's `env` names its data directory).
    pub fn start(pipeline: &str, env: &[(&str, String)]) -> Running {
        Self::spawn(&root(), pipeline, env)
    }

    /// In `dir` (relative paths of the pipeline are relative to it; its state in `dir/state`
    /// unless `env` says otherwise).
    pub fn start_in(dir: &Path, pipeline: &str, env: &[(&str, String)]) -> Running {
        Self::start_args_in(dir, &["run", pipeline], env)
    }

    /// `ocpipe ARGS` in `dir` (its state in `dir/state`).
    pub fn start_args_in(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Running {
        let state = dir.join("state").display().to_string();
        let env: Vec<(&str, String)> = std::iter::once(("OCPIPE_DATA_DIR", state)).chain(env.iter().cloned()).collect();
        Self::spawn_args(dir, args, &env)
    }

    fn spawn(dir: &Path, pipeline: &str, env: &[(&str, String)]) -> Running {
        Self::spawn_args(dir, &["run", pipeline], env)
    }

    fn spawn_args(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Running {
        let mut c = Command::new(bin());
        c.args(args).current_dir(dir).env_remove("OCPIPE_TOKEN").stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Running { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for it to end by itself (at most `limit`); its exit status and log.
    pub fn finish(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The log thread ends with the pipe; give it a moment to take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.log());
            }
            assert!(start.elapsed() < limit, "still running after {limit:?}: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM; it must exit cleanly. Its whole log.
    pub fn stop_with_log(self) -> String {
        signal(self.child.id(), 15);
        let (status, log) = self.finish(Duration::from_secs(120));
        assert!(status.success(), "{log}");
        log
    }

    /// SIGTERM, and it must exit cleanly.
    pub fn stop(mut self) {
        signal(self.child.id(), 15);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{}", self.log());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, sig: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    unsafe { kill(pid as i32, sig) };
}

/// A private mosquitto broker on a free port (persistent, so a subscriber's session and its
/// queued messages survive a restart).
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    conf: PathBuf,
    bin: PathBuf,
}

impl Mosquitto {
    /// `None` (after a loud skip, or a panic under CI) when mosquitto is not installed.
    pub fn start(dir: &Path) -> Option<Mosquitto> {
        Mosquitto::start_with(dir, "allow_anonymous true\n")
    }

    /// With more configuration for the listener (TLS files, a password file, …).
    pub fn start_with(dir: &Path, listener_conf: &str) -> Option<Mosquitto> {
        require("mosquitto_sub")?;
        let bin = require("mosquitto")?;
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        // Started as root, mosquitto would switch to its own user and could not write its
        // database into this private directory; `user root` keeps it (no effect otherwise).
        std::fs::write(
            &conf,
            format!(
                "user root\nlog_dest stderr\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\nlistener {port} 127.0.0.1\n{listener_conf}",
                dir.display()
            ),
        )
        .unwrap();
        let mut m = Mosquitto { child: None, port, conf, bin };
        m.spawn();
        Some(m)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_for("mosquitto to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    /// Stops the broker (SIGTERM: it saves its sessions).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), 15);
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// What the broker logged (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.conf.with_extension("log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---- a sink run in-process, fed by the test ----

/// A status event: `title` carries `seq`; odd and even alternate idle and busy.
pub fn status(port: u16, seq: usize) -> Event {
    let s = StatusInfo {
        port,
        instance: format!("http://127.0.0.1:{port}"),
        session_id: Some(format!("ses_{}", seq % 7)),
        title: Some(seq.to_string()),
        code: if seq.is_multiple_of(2) { "busy" } else { "idle" }.into(),
        status: "工作中".into(),
        label: "busy".into(),
        mode: "busy".into(),
        timestamp: chrono::Utc::now().to_rfc3339(),
        ..Default::default()
    };
    Event::new("test".into(), chrono::Utc::now(), Payload::Status(Box::new(s)))
}

/// A sink under test, fed through a channel.
pub struct Fed {
    pub tx: mpsc::Sender<Event>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    metrics: Arc<ocpipe::metrics::ComponentMetrics>,
    /// The sink's context: what it shares with other components (e.g. push-target links).
    pub cx: ocpipe::component::Context,
}

pub fn start_sink(dir: &std::path::Path, type_name: &str, body: &str) -> Fed {
    let AnyConfig::Sink(cfg) = testing::parse(Kind::Sink, type_name, body).unwrap() else { unreachable!() };
    let cx = testing::context(type_name, dir);
    let sink = cfg.build(&cx).unwrap();
    let (tx, rx) = mpsc::channel(100_000);
    let task = tokio::spawn(sink.run(Input::new(rx, cx.metrics.clone())));
    Fed { tx, task, metrics: cx.metrics.clone(), cx }
}

impl Fed {
    pub async fn finish(self) -> MetricsSnapshot {
        drop(self.tx);
        tokio::time::timeout(Duration::from_secs(10), self.task).await.unwrap().unwrap().unwrap();
        self.metrics.snapshot()
    }
}

pub async fn wait_for_async<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- a simulated BLE light (BlueZ mocked by python3-dbusmock on a private bus) ----

/// Like [`require`], for a condition other than a program on PATH.
pub fn require_that(what: &str, ok: bool) -> Option<()> {
    if !ok {
        let msg = format!("{what} is not available; this test needs it");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg} (CI=true: a missing program is a failure)");
        }
        loud(&format!("*** SKIPPED: {msg} ***"));
        return None;
    }
    Some(())
}

/// `fixtures/tools/ble_light.py`: a light named `AI-Light` with the seed's service and
/// characteristic; every write is recorded.
pub struct BleLight {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
    pub bus: String,
    writes: PathBuf,
}

impl BleLight {
    pub fn start(dir: &Path) -> Option<BleLight> {
        require("dbus-daemon")?;
        let has_dbusmock = Command::new("/usr/bin/python3")
            .args(["-c", "import dbusmock, dbus"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        require_that("python3-dbusmock (for /usr/bin/python3)", has_dbusmock)?;
        let writes = dir.join("ble-writes.txt");
        let mut child = Command::new("/usr/bin/python3")
            .arg(root().join("fixtures/tools/ble_light.py"))
            .arg("--writes")
            .arg(&writes)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let bus = line.trim().strip_prefix("bus ").unwrap_or_else(|| panic!("ble_light.py said {line:?}")).to_string();
        let mut light = BleLight { child, stdin, stdout, bus, writes };
        light.expect("ready");
        Some(light)
    }

    fn expect(&mut self, word: &str) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), word, "ble_light.py");
    }

    fn command(&mut self, cmd: &str) {
        use std::io::Write;
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        self.expect("ok");
    }

    /// The device goes out of range (removed from the adapter).
    pub fn vanish(&mut self) {
        self.command("vanish");
    }

    /// The device is back.
    pub fn come_back(&mut self) {
        self.command("return");
    }

    /// Everything written to the characteristic so far.
    pub fn writes(&self) -> Vec<Vec<u8>> {
        std::fs::read_to_string(&self.writes).unwrap_or_default().lines().map(|l| hex::decode(l).unwrap()).collect()
    }

    /// The writes as text (the default `text` format).
    pub fn modes(&self) -> Vec<String> {
        self.writes().into_iter().map(|w| String::from_utf8(w).unwrap()).collect()
    }
}

impl Drop for BleLight {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- capture runs: a Docker engine and an image with the real OpenCode ----

/// The capture test image (`fixtures/tools/capture-image.sh`: busybox, bash, the real
/// OpenCode), built once per test binary in the Docker engine the docker CLI finds
/// (`DOCKER_HOST`, as `.ci/run` sets it). `None` after a loud skip when there is no engine.
pub fn capture_image() -> Option<String> {
    static IMAGE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    require("docker")?;
    require("busybox")?;
    let engine = Command::new("docker").arg("version").output().is_ok_and(|o| o.status.success());
    require_that("a running Docker engine (set DOCKER_HOST; `.ci/run` starts one)", engine)?;
    let mut image = IMAGE.lock().unwrap_or_else(|e| e.into_inner());
    if image.is_none() {
        let out = Command::new("bash").arg(root().join("fixtures/tools/capture-image.sh")).output().unwrap();
        assert!(out.status.success(), "building the capture image: {}", text(&out.stderr));
        *image = Some(text(&out.stdout).trim().to_string());
    }
    image.clone()
}

impl OpenCode {
    /// The OpenCode config directory (its provider is the mock LLM on 127.0.0.1).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config/opencode")
    }
    /// What the mock LLM served, one JSON line per request.
    pub fn served(&self) -> PathBuf {
        self.dir.path().join("served.jsonl")
    }
}

/// A counter from the `final counters` line ocpipe logs for `component` at the end.
pub fn final_counter(log: &str, component: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("final counters") && l.contains(&format!("component={component} ")))
        .unwrap_or_else(|| panic!("no final counters of {component}: {log}"));
    let at = line.find(&format!(" {name}=")).unwrap() + name.len() + 2;
    line[at..].split(' ').next().unwrap().parse().unwrap()
}

/// What headless Chromium made of `url` (its DOM after scripts ran, up to 5 s virtual time).
pub fn headless_dom(chromium: &Path, url: &str) -> String {
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ])
        .output()
        .unwrap();
    text(&out.stdout)
}

/// A CA of the test's own (`ca.pem`), another one (`other.pem`) and a server certificate for
/// 127.0.0.1 and localhost signed by the first (`server.pem`, `server.key`), written in `dir`.
pub fn test_certificates(openssl: &Path, dir: &Path) {
    let ssl = |args: &[&str]| {
        let out = Command::new(openssl).args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out.stderr));
    };
    for ca in ["ca", "other"] {
        let (key, pem, subject) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN=ocpipe test {ca}"));
        ssl(&[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem, "-days", "2", "-subj",
            &subject,
        ]);
    }
    ssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}
