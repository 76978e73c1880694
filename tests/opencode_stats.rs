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

fn stats_of(db: &std::path::Path, cache: &std::path::Path) -> std::process::Output {
    Command::new(bin())
        .args(["stats", "--json", "--db", db.to_str().unwrap()])
        .env("XDG_CACHE_HOME", cache)
        .output()
        .unwrap()
}

#[test]
fn a_damaged_or_locked_database_is_an_error_not_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(root().join("fixtures/storage/v1.18.33-fork/opencode.db")).unwrap();
    let cut = dir.path().join("cut.db");
    std::fs::write(&cut, &good[..100_000.min(good.len() / 2)]).unwrap();
    let out = stats_of(&cut, dir.path());
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a truncated database must fail: {err}");
    assert!(err.contains("cut.db") && (err.contains("malformed") || err.contains("damaged")), "{err}");
    assert!(!err.contains("unknown schema"), "{err}");
    assert!(out.stdout.is_empty(), "no totals are printed: {}", text(&out.stdout));

    // Locked by a writer (rollback journal, exclusive): an error after the wait, not zeros.
    let locked = dir.path().join("locked.db");
    std::fs::write(&locked, &good).unwrap();
    let conn = rusqlite::Connection::open(&locked).unwrap();
    conn.execute_batch("PRAGMA journal_mode = DELETE; BEGIN EXCLUSIVE; UPDATE session SET title = title;").unwrap();
    let out = stats_of(&locked, dir.path());
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("locked"), "{err}");
    conn.execute_batch("COMMIT").unwrap();
    let out = stats_of(&locked, dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn counts_out_of_range_saturate_the_same_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("opencode/opencode.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::copy(root().join("fixtures/storage/v1.18.33-fork/opencode.db"), &db).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (id, input, output): (String, i64, i64) = conn
        .query_row(
            "SELECT id, json_extract(data, '$.tokens.input'), json_extract(data, '$.tokens.output') FROM message \
             WHERE json_extract(data, '$.role') = 'assistant' AND json_extract(data, '$.tokens.input') > 0 LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    conn.execute(
        "UPDATE message SET data = json_set(data, '$.tokens.input', 1e20, '$.tokens.output', -5, '$.cost', 1.7e308) \
         WHERE id = ?1",
        [&id],
    )
    .unwrap();
    drop(conn);
    let before = stats_json(&["--db", root().join("fixtures/storage/v1.18.33-fork/opencode.db").to_str().unwrap()]);
    let out = stats_of(&db, dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains(&id) && err.contains("out of range"), "the message is named: {err}");
    let after: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = |v: &serde_json::Value, k: &str| v["totals"][k].as_u64().unwrap();
    let max = u32::MAX as u64;
    assert_eq!(t(&after, "input"), t(&before, "input") - input as u64 + max);
    assert_eq!(t(&after, "output"), t(&before, "output") - output as u64);
    assert_eq!(after["totals"]["cost"].as_f64(), Some(1e9));

    // The pipeline stores and sums the same numbers.
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        format!(
            "[sources.oc]\ntype = \"opencode_storage\"\ndata_dir = \"{}\"\nfollow = false\n\
             [transforms.usage]\ntype = \"aggregate\"\ninputs = [\"oc\"]\n\
             [sinks.db]\ntype = \"sqlite\"\ninputs = [\"oc\", \"usage\"]\npath = \"out.db\"\n",
            db.parent().unwrap().display()
        ),
    )
    .unwrap();
    let run = ocpipe(dir.path(), &["run", p.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("out of range"), "{}", text(&run.stderr));
    let out = dir.path().join("out.db");
    assert_eq!(count(&out, &format!("SELECT input FROM opencode_message WHERE id = '{id}'")), max as i64);
    assert_eq!(count(&out, "SELECT input FROM rollup WHERE group_by = 'all'"), t(&after, "input") as i64);
    assert_eq!(count(&out, "SELECT output FROM rollup WHERE group_by = 'all'"), t(&after, "output") as i64);
}

#[test]
fn the_pipeline_waits_out_a_locked_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("opencode");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("opencode.db");
    std::fs::copy(root().join("fixtures/storage/v1.18.33-fork/opencode.db"), &db).unwrap();
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        format!(
            "[sources.oc]\ntype = \"opencode_storage\"\ndata_dir = \"{}\"\nfollow = false\n\
             [sinks.db]\ntype = \"sqlite\"\ninputs = [\"oc\"]\npath = \"out.db\"\n",
            data.display()
        ),
    )
    .unwrap();
    // A writer holds an exclusive lock until ocpipe has said it waits (past one 5 s wait).
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA journal_mode = DELETE; BEGIN EXCLUSIVE; UPDATE session SET title = title;").unwrap();
    let run = Running::start_in(dir.path(), p.to_str().unwrap(), &[]);
    wait_for("the lock to be reported", std::time::Duration::from_secs(30), || {
        run.log().contains("retrying").then_some(())
    });
    conn.execute_batch("COMMIT").unwrap();
    let (status, log) = run.finish(std::time::Duration::from_secs(60));
    assert!(status.success(), "{log}");
    assert!(log.contains("locked") && log.contains("retrying"), "{log}");
    assert_eq!(count(&dir.path().join("out.db"), "SELECT count(*) FROM opencode_message"), 15, "{log}");
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    let db = root().join("fixtures/storage/v1.18.33-fork/opencode.db");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -o pipefail; '{}' stats --db '{}' --by session | head -1", bin(), db.display()))
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("Broken pipe"), "{}", text(&out.stderr));
}

/// The usage ledger a page answers from (fed the storage source's events, as in
/// `monitor.toml`) sums every range and grouping as `ocpipe stats --json` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_ledger_equals_stats_for_every_range_and_grouping() {
    use ocpipe::event::Payload;
    use ocpipe::usage::{GroupBy, Ledger, RangeName, Window};
    let dir = tempfile::tempdir().unwrap();
    let data = root().join("fixtures/storage/v1.18.33-fork");
    let body = format!("data_dir = \"{}\"\nfollow = false", data.display());
    let Ok(ocpipe::registry::AnyConfig::Source(source)) =
        ocpipe::testing::parse(ocpipe::registry::Kind::Source, "opencode_storage", &body)
    else {
        panic!("opencode_storage parses")
    };
    let out =
        ocpipe::testing::run_source(source.as_ref(), dir.path(), std::time::Duration::from_secs(20), |_| false).await;
    let mut ledger = Ledger::default();
    for e in &out.events {
        match &e.payload {
            Payload::Session(s) => ledger.session(s),
            Payload::Message(m) => ledger.message(m),
            _ => {}
        }
    }
    assert_eq!(ledger.len(), 15);
    for (range, name) in [(RangeName::All, "all"), (RangeName::Month, "month"), (RangeName::Today, "today")] {
        for by in [GroupBy::Model, GroupBy::Project, GroupBy::Agent, GroupBy::Session, GroupBy::Day] {
            let got = ledger.sum(by, Window::resolve(range, None, None, chrono::Local::now()), false);
            let args = ["stats", "--json", "--data-dir", data.to_str().unwrap(), "--range", name, "--by", by.name()];
            let stats = ocpipe(dir.path(), &args);
            let want: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
            assert_eq!(serde_json::to_value(&got.totals).unwrap(), want["totals"], "{name} {by:?}");
            assert_eq!(serde_json::to_value(&got.fork_copies).unwrap(), want["fork_copies"], "{name} {by:?}");
            let groups: Vec<serde_json::Value> = got
                .rows
                .iter()
                .map(|(k, u)| {
                    let mut v = serde_json::to_value(u).unwrap();
                    v["key"] = k.clone().into();
                    v
                })
                .collect();
            let strip = |g: &serde_json::Value| {
                let mut g = g.clone();
                g.as_object_mut().unwrap().remove("title");
                g
            };
            let want_groups: Vec<serde_json::Value> = want["groups"].as_array().unwrap().iter().map(strip).collect();
            assert_eq!(groups, want_groups, "{name} {by:?}");
        }
    }
}
