//! `ocpipe stats` on storage captured from real OpenCode runs (fixtures/storage): its numbers
//! equal the usage the mock served and OpenCode's own `opencode stats` on the same data.

mod common;

use std::process::Command;

use common::*;

#[test]
fn sqlite_storage_of_1_18_with_a_fork_matches_opencode() {
    let dir = root().join("fixtures/storage/v1.18.33-fork");
    let db = dir.join("opencode.db");
    assert_matches_opencode(&["--db", db.to_str().unwrap()], &dir, false, true);
}

#[test]
fn json_storage_of_1_1_matches_opencode() {
    let dir = root().join("fixtures/storage/v1.1.65");
    assert_matches_opencode(&["--data-dir", dir.to_str().unwrap()], &dir, true, false);
}

#[test]
fn views_group_and_format_as_asked() {
    let db = root().join("fixtures/storage/v1.18.33-fork/opencode.db");
    let db = db.to_str().unwrap();
    let by = |g: &str| stats_json(&["--db", db, "--by", g]);
    let sessions = by("session");
    assert_eq!(sessions["groups"].as_array().unwrap().len(), 6);
    assert_eq!(sessions["groups"][0]["title"], "Mock session title");
    assert_eq!(by("model")["groups"][0]["key"], "mock/mock-1");
    assert_eq!(by("agent")["groups"][0]["key"], "build");
    assert_eq!(by("project")["groups"][0]["key"], "(global)");
    assert_eq!(by("day")["groups"].as_array().unwrap().len(), 1);
    // The capture is from 2026-11-21: nothing before it, everything since.
    let none = stats_json(&["--db", db, "--until", "2026-01-01"]);
    assert_eq!(none["totals"]["messages"], 0);
    let since = stats_json(&["--db", db, "--since", "2026-01-01"]);
    assert_eq!(since["totals"]["messages"], 13);

    let out = Command::new(bin())
        .args(["stats", "--db", db, "--by", "model"])
        .env("XDG_CACHE_HOME", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let table = text(&out.stdout);
    assert!(table.contains("mock/mock-1") && table.contains("8,334") && table.contains("TOTAL"), "{table}");
    assert!(table.contains("Fork copies, counted once above: 2 copied messages"), "{table}");
    let out = Command::new(bin())
        .args(["stats", "--db", db, "--csv"])
        .env("XDG_CACHE_HOME", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let csv = text(&out.stdout);
    assert!(csv.starts_with("key,sessions,messages,responses,input,"), "{csv}");
    assert!(csv.lines().last().unwrap().starts_with("TOTAL,6,13,7,8334,"), "{csv}");
}

#[test]
fn an_empty_data_dir_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["stats", "--data-dir", dir.path().to_str().unwrap()])
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("has no opencode.db, opencode-*.db or storage/ directory"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn stats_is_listed_in_help() {
    let out = Command::new(bin()).arg("--help").output().unwrap();
    assert!(text(&out.stdout).contains("stats"), "{}", text(&out.stdout));
}
