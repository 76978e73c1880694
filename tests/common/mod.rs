//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// Every file below `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                hits.push(p);
            }
        }
    }
    hits
}

/// A program a test needs. Missing: a loud skip locally, a failure under CI (`CI=true`).
pub fn require(program: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = format!("`{program}` is not installed; this test needs it");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg} (CI=true: a missing program is a failure)");
        }
        eprintln!("\n*** SKIPPED: {msg} ***\n");
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
        require("npm")?;
        require("python3")?;
        let out = Command::new("bash").arg(root().join("fixtures/tools/opencode-bin.sh")).output().unwrap();
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
