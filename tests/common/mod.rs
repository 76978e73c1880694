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
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(p);
                }
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
