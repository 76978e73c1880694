use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use super::*;
use crate::event::{Event, Payload};
use crate::registry::Kind;
use crate::testing;
use crate::usage::{GroupBy, Prices, Window};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/storage").join(p)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() { copy_dir(&p, &dst) } else { std::fs::copy(&p, &dst).map(|_| ()).unwrap() }
    }
}

fn totals(loc: &Location, forks: bool) -> crate::usage::Usage {
    Catalog::load(loc).aggregate(GroupBy::All, Window::default(), forks, &Prices::builtin()).1
}

#[test]
fn sqlite_history_counts_fork_copies_once() {
    let loc = Location::find(None, Some(&fixture("v1.18.33-fork/opencode.db")));
    let cat = Catalog::load(&loc);
    assert!(cat.report.warnings.is_empty(), "{:?}", cat.report.warnings);
    let (_, t, forks) = cat.aggregate(GroupBy::All, Window::default(), false, &Prices::builtin());
    assert_eq!((t.sessions, t.messages, t.responses), (6, 13, 7));
    assert_eq!((t.tokens.input, t.tokens.output, t.tokens.reasoning, t.tokens.cache_read), (8334, 64, 28, 6100));
    assert_eq!((forks.messages, forks.tokens.input, forks.sessions), (2, 1600, 1));
    let with = totals(&loc, true);
    assert_eq!((with.messages, with.tokens.input), (15, 9934));
}

#[test]
fn json_storage_of_1_1_is_read() {
    let loc = Location::find(Some(&fixture("v1.1.65")), None);
    assert!(loc.dbs.is_empty() && loc.storage.is_some());
    let t = totals(&loc, false);
    assert_eq!((t.sessions, t.messages, t.tokens.input, t.tokens.output, t.tokens.cache_read), (5, 11, 5334, 81, 5100));
}

/// A database holding the same messages as the JSON storage, as OpenCode 1.2's import made.
fn migrate_json_into_db(storage: &Path, db: &Path) {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch(&std::fs::read_to_string(fixture("opencode-1.18.33-schema.sql")).unwrap()).unwrap();
    conn.execute(
        "INSERT INTO project (id, worktree, time_created, time_updated, sandboxes) VALUES ('global', '/', 0, 0, '[]')",
        [],
    )
    .ok();
    for dir in std::fs::read_dir(storage.join("message")).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(f.unwrap().path()).unwrap()).unwrap();
            let id = v["id"].as_str().unwrap().to_string();
            let session = v["sessionID"].as_str().unwrap().to_string();
            let created = v["time"]["created"].as_i64().unwrap();
            v.as_object_mut().unwrap().remove("id");
            v.as_object_mut().unwrap().remove("sessionID");
            conn.execute(
                "INSERT OR IGNORE INTO session (id, project_id, slug, directory, title, version, time_created, time_updated) VALUES (?1, 'global', 's', '/', 'migrated', '1.2.0', ?2, ?2)",
                rusqlite::params![session, created],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO message (id, session_id, time_created, time_updated, data) VALUES (?1, ?2, ?3, ?3, ?4)",
                rusqlite::params![id, session, created, v.to_string()],
            )
            .unwrap();
        }
    }
}

#[test]
fn mixed_generations_count_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("v1.1.65"), dir.path());
    migrate_json_into_db(&dir.path().join("storage"), &dir.path().join("opencode.db"));
    let loc = Location::find(Some(dir.path()), None);
    assert_eq!(loc.dbs.len(), 1);
    let cat = Catalog::load(&loc);
    assert_eq!(cat.report.duplicates, 11);
    let t = cat.aggregate(GroupBy::All, Window::default(), false, &Prices::builtin()).1;
    assert_eq!((t.sessions, t.messages, t.tokens.input, t.tokens.output), (5, 11, 5334, 81));

    // Newer runners add session_message rows beside the v1 tables: union, no double count.
    let conn = Connection::open(dir.path().join("opencode.db")).unwrap();
    conn.execute_batch(
        "INSERT INTO session_message (id, session_id, type, seq, time_created, time_updated, data)
           SELECT id, session_id, 'message', rowid, time_created, time_updated, data FROM message;
         INSERT INTO session_message (id, session_id, type, seq, time_created, time_updated, data)
           SELECT 'msg_v2_only', session_id, 'message', 1000, time_created + 1, time_updated, data FROM message
           WHERE json_extract(data, '$.role') = 'assistant' AND json_extract(data, '$.tokens.input') > 0 LIMIT 1;
         INSERT INTO session_message (id, session_id, type, seq, time_created, time_updated, data)
           SELECT 'sm_other', session_id, 'compaction', 1001, 0, 0, '{\"kind\":\"x\"}' FROM message LIMIT 1;",
    )
    .unwrap();
    let t2 = totals(&loc, true);
    assert_eq!(t2.messages, 12);
    assert!(t2.tokens.input > 5334);
}

#[test]
fn corrupt_records_are_named_and_skipped_and_empty_dirs_say_why() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("v1.1.65"), dir.path());
    let bad = dir.path().join("storage/message/ses_bad/msg_bad.json");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, "{\"id\": \"msg_bad\", \"role\": ").unwrap();
    let loc = Location::find(Some(dir.path()), None);
    let cat = Catalog::load(&loc);
    assert_eq!(cat.report.warnings.len(), 1);
    assert!(
        cat.report.warnings[0].contains("msg_bad.json") && cat.report.warnings[0].contains("not valid JSON"),
        "{:?}",
        cat.report.warnings
    );
    assert_eq!(cat.messages.len(), 11);

    let db = dir.path().join("db.db");
    std::fs::copy(fixture("v1.18.33-fork/opencode.db"), &db).unwrap();
    Connection::open(&db).unwrap().execute("UPDATE message SET data = '{broken' WHERE rowid = 3", []).unwrap();
    let cat = Catalog::load(&Location::find(None, Some(&db)));
    assert!(
        cat.report.warnings.iter().any(|w| w.contains("message row msg_") && w.contains("not valid message JSON")),
        "{:?}",
        cat.report.warnings
    );
    assert_eq!(cat.messages.len(), 14);

    let other = dir.path().join("other.db");
    Connection::open(&other).unwrap().execute_batch("CREATE TABLE notes (x)").unwrap();
    let cat = Catalog::load(&Location::find(None, Some(&other)));
    assert!(cat.report.warnings[0].contains("unknown schema"), "{:?}", cat.report.warnings);

    let empty = tempfile::tempdir().unwrap();
    let loc = Location::find(Some(empty.path()), None);
    assert!(loc.explain_empty().contains("has no opencode.db"));
    let loc = Location::find(Some(&empty.path().join("nope")), None);
    assert!(loc.explain_empty().contains("does not exist"));
}

#[test]
fn the_warm_index_answers_without_reading_and_catches_up_with_new_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("opencode.db");
    std::fs::copy(fixture("v1.18.33-fork/opencode.db"), &db).unwrap();
    // The index in the test's own folder (no process-wide XDG_CACHE_HOME to race with).
    let loc = Location { index_dir: Some(dir.path().join("cache")), ..Location::find(None, Some(&db)) };
    let first = index::load_or_build(&loc);
    assert!(index::index_path(&loc).exists());
    let again = index::load_or_build(&loc);
    assert_eq!(first.messages, again.messages);
    // Unchanged, the id hashes are not even read, unless asked for: the backfill looks fork
    // copies up by id, and a warm index used to give it none to find.
    assert!(again.ids.is_empty());
    let with_ids = index::load_or_build_with_ids(&loc);
    assert_eq!((&with_ids.messages, &with_ids.ids), (&first.messages, &first.ids));
    let copies = with_ids.messages.iter().zip(&with_ids.ids).filter(|(m, _)| m.flags & catalog::FORK_COPY != 0);
    assert_eq!(copies.count(), 2);

    // OpenCode adds a message and updates another in place (with a change-feed row).
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "INSERT INTO message (id, session_id, time_created, time_updated, data)
           SELECT 'msg_new', session_id, time_created + 5, time_updated, json_set(data, '$.tokens.input', 777, '$.time.created', time_created + 5)
           FROM message WHERE json_extract(data, '$.tokens.input') = 1134;
         UPDATE message SET data = json_set(data, '$.tokens.output', 1000) WHERE id = (SELECT id FROM message WHERE json_extract(data, '$.tokens.input') = 1134);
         INSERT INTO event (id, aggregate_id, seq, type, data)
           SELECT 'evt_test', session_id, 999, 'message.updated.1', json_object('sessionID', session_id, 'info', json_object('id', id))
           FROM message WHERE json_extract(data, '$.tokens.input') = 1134;",
    )
    .unwrap();
    drop(conn);
    let caught_up = index::load_or_build(&loc);
    let fresh = Catalog::load(&loc);
    let agg = |c: &Catalog| c.aggregate(GroupBy::All, Window::default(), false, &Prices::builtin()).1;
    assert_eq!(agg(&caught_up), agg(&fresh));
    assert_eq!(agg(&fresh).tokens.input, 8334 + 777);
    // The new message copies the one with 4 output tokens, whose output became 1000.
    assert_eq!(agg(&fresh).tokens.output, 64 + 4 - 4 + 1000);
}

fn cfg(body: &str) -> OpencodeStorageConfig {
    match testing::parse(Kind::Source, "opencode_storage", body) {
        Ok(_) => toml::from_str(body).unwrap(),
        Err(e) => panic!("{e:?}"),
    }
}

fn kinds(events: &[Event]) -> (usize, usize, usize) {
    let count = |k: &str| events.iter().filter(|e| e.kind() == k).count();
    (count("opencode.session"), count("opencode.message"), count("opencode.part"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_then_checkpoint_then_live_changes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("oc");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(fixture("v1.18.33-fork/opencode.db"), data.join("opencode.db")).unwrap();
    let c = cfg(&format!("data_dir = \"{}\"\nfollow = false", data.display()));
    // The index is warm and unchanged, as after `ocpipe stats`: fork copies are flagged all the same.
    index::load_or_build(&Location::find(Some(&data), None));
    let out = testing::run_source(&c, dir.path(), Duration::from_secs(10), |_| false).await;
    assert_eq!(kinds(&out.events).0, 6);
    assert_eq!(kinds(&out.events).1, 15);
    let copies: Vec<_> = out
        .events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::Message(m) if m.fork_copy => Some(m.session_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(copies.len(), 2);
    assert!(copies.iter().all(|s| s == "ses_e01242a2effenbbW8xzS5x1peb"));
    assert!(out.events.iter().any(|e| matches!(&e.payload, Payload::Part(p) if p.tool.as_deref() == Some("bash"))));

    // A restart re-emits nothing.
    let out = testing::run_source(&c, dir.path(), Duration::from_secs(10), |_| false).await;
    assert!(out.events.is_empty(), "{} events re-emitted", out.events.len());

    // Live: a message committed with its change-feed row arrives.
    // A poll slower than the test: only a notification can deliver in time.
    let c = cfg(&format!("data_dir = \"{}\"\nfollow = true\npoll_interval_ms = 600000", data.display()));
    let db = data.join("opencode.db");
    // Written once the source has caught up and follows.
    let write = move || {
        let conn = Connection::open(db).unwrap();
        conn.execute_batch(
            "INSERT INTO event (id, aggregate_id, seq, type, data)
               SELECT 'evt_live', session_id, 1000, 'message.updated.1',
                 json_object('sessionID', session_id, 'info', json_set(json(data), '$.id', 'msg_live', '$.sessionID', session_id, '$.tokens.input', 4242, '$.time.created', 1795277999999))
               FROM message WHERE json_extract(data, '$.role') = 'assistant' LIMIT 1;",
        )
        .unwrap();
    };
    let out = testing::run_source_live(&c, dir.path(), Duration::from_secs(20), write, |e| !e.is_empty()).await;
    match &out.events[..] {
        [e] => match &e.payload {
            Payload::Message(m) => assert_eq!((m.id.as_str(), m.tokens.input, m.fork_copy), ("msg_live", 4242, false)),
            other => panic!("{other:?}"),
        },
        other => panic!("{} events", other.len()),
    }
}

/// Writes `body` to `path` in one step (a rename), so no round reads half of it.
fn write_json(path: &Path, body: &serde_json::Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn inputs_of(events: &[Event], id: &str) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::Message(m) if m.id == id => Some(m.tokens.input),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_follow_sends_each_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("oc");
    copy_dir(&fixture("v1.1.65/storage"), &data.join("storage"));
    // (Files changed within 0.1 s before a checkpoint's mark may be sent once more after a
    // restart; a user's storage is not copied that close to a start.)
    std::thread::sleep(Duration::from_millis(300));
    let backfill = cfg(&format!("data_dir = \"{}\"\nfollow = false", data.display()));
    let out = testing::run_source(&backfill, dir.path(), Duration::from_secs(10), |_| false).await;
    assert_eq!((kinds(&out.events).0, kinds(&out.events).1), (5, 11));

    // Following: a new message is sent as written, not again for rewriting the same content,
    // and once more for a change; nothing backfilled is sent again.
    let c = cfg(&format!("data_dir = \"{}\"\nfollow = true\npoll_interval_ms = 20", data.display()));
    let ses = data.join("storage/message/ses_e0123b8faffeNi1XSADhs3k0Mk");
    let mut body: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ses.join("msg_1fedc476c001YIC9uzwP8QzhXO.json")).unwrap()).unwrap();
    body["id"] = "msg_json_live".into();
    body["time"]["created"] = 1795277999999i64.into();
    let path = ses.join("msg_json_live.json");
    body["tokens"]["input"] = 111.into();
    write_json(&path, &body);
    // Once 111 is out: the same content written again (not sent), then a change (sent).
    let writer = std::cell::RefCell::new(None);
    let out = testing::run_source(&c, dir.path(), Duration::from_secs(10), |e| {
        let seen = inputs_of(e, "msg_json_live");
        if seen == [111] && writer.borrow().is_none() {
            let (path, mut body) = (path.clone(), body.clone());
            *writer.borrow_mut() = Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                write_json(&path, &body);
                std::thread::sleep(Duration::from_millis(300));
                body["tokens"]["input"] = 222.into();
                write_json(&path, &body);
            }));
        }
        seen.last() == Some(&222)
    })
    .await;
    if let Some(w) = writer.take() {
        w.join().unwrap();
    }
    assert_eq!(inputs_of(&out.events, "msg_json_live"), [111, 222]);
    assert_eq!(out.events.len(), 2, "{:?}", out.events.iter().map(|e| &e.meta.id).collect::<Vec<_>>());

    // A change made while stopped arrives after the restart.
    body["tokens"]["input"] = 333.into();
    write_json(&path, &body);
    let out =
        testing::run_source(&c, dir.path(), Duration::from_secs(10), |e| inputs_of(e, "msg_json_live").contains(&333))
            .await;
    assert_eq!(inputs_of(&out.events, "msg_json_live"), [333]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_without_a_change_feed_are_followed_by_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("oc");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("opencode.db");
    std::fs::copy(fixture("v1.18.33-fork/opencode.db"), &db).unwrap();
    // As OpenCode 1.2 - 1.13 wrote it: no `event` table.
    Connection::open(&db).unwrap().execute_batch("DROP TABLE event; PRAGMA journal_mode = WAL;").unwrap();
    // A poll slower than the test: only notifications can deliver in time.
    let c = cfg(&format!("data_dir = \"{}\"\nfollow = true\npoll_interval_ms = 600000", data.display()));
    let out = testing::run_source(&c, dir.path(), Duration::from_secs(10), |e| kinds(e).1 >= 15).await;
    assert_eq!(kinds(&out.events).1, 15);

    // A message inserted in progress (once the source follows): it arrives as it is.
    let write = |sql: &'static str| {
        let db = db.clone();
        move || Connection::open(db).unwrap().execute_batch(sql).unwrap()
    };
    let insert = write(
        "INSERT INTO message (id, session_id, time_created, time_updated, data)
           SELECT 'msg_rows', session_id, 1795277999999, 1795277999999,
             json_remove(json_set(data, '$.tokens.input', 0, '$.time.created', 1795277999999), '$.time.completed')
           FROM message WHERE json_extract(data, '$.role') = 'assistant' LIMIT 1;",
    );
    let out = testing::run_source_live(&c, dir.path(), Duration::from_secs(20), insert, |e| {
        !inputs_of(e, "msg_rows").is_empty()
    })
    .await;
    assert_eq!(inputs_of(&out.events, "msg_rows"), [0], "in progress");
    assert_eq!(kinds(&out.events).1, 1, "nothing else again");

    // Completed in place (as OpenCode does) while ocpipe is stopped, and a new session: the
    // message in progress is remembered across the restart and read again.
    write(
        "UPDATE message SET time_updated = 1795278000999,
           data = json_set(data, '$.tokens.input', 5150, '$.time.completed', 1795278000999) WHERE id = 'msg_rows';
         INSERT INTO session (id, project_id, slug, directory, title, version, time_created, time_updated)
           VALUES ('ses_rows', 'global', 's', '/w', 'Rows', '1.2.27', 1795278000000, 9795278000000);",
    )();
    let out = testing::run_source(&c, dir.path(), Duration::from_secs(10), |e| {
        inputs_of(e, "msg_rows").last() == Some(&5150)
            && e.iter().any(|e| matches!(&e.payload, Payload::Session(s) if s.id == "ses_rows"))
    })
    .await;
    let seen = inputs_of(&out.events, "msg_rows");
    assert_eq!(seen, [5150], "completed");
    assert!(
        out.events.iter().any(|e| matches!(&e.payload, Payload::Session(s) if s.id == "ses_rows")),
        "the new session"
    );
    assert_eq!(kinds(&out.events).1, seen.len(), "nothing else again");

    // A restart re-emits nothing.
    let out = testing::run_source(&c, dir.path(), Duration::from_millis(800), |_| false).await;
    assert_eq!(kinds(&out.events).1, 0, "{:?}", out.events.iter().map(|e| &e.meta.id).collect::<Vec<_>>());
}

#[test]
fn messages_read_in_rowid_ranges_at_once_make_the_same_catalog_as_one_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("opencode.db");
    std::fs::copy(fixture("v1.18.33-fork/opencode.db"), &db).unwrap();
    // A deleted row leaves a hole in its range; a message of an unknown model names what only
    // the second range knows.
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "DELETE FROM message WHERE rowid = 3;
         UPDATE message SET data = json_set(data, '$.modelID', 'only-in-range-2')
           WHERE rowid = (SELECT max(rowid) FROM message);",
    )
    .unwrap();
    let (first, last): (i64, i64) =
        conn.query_row("SELECT min(rowid), max(rowid) FROM message", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    drop(conn);
    let loc = Location::find(None, Some(&db));
    let serial = catalog::Catalog::load_serial(&loc);
    for parts in [2, 3, 5] {
        let span = last - first + 1;
        let ranges: Vec<store::RowRange> = (0..parts)
            .map(|k| store::RowRange { first: first + span * k / parts, last: first + span * (k + 1) / parts - 1 })
            .collect();
        let split = catalog::Catalog::load_split(&loc, &ranges);
        let named = |c: &catalog::Catalog| -> Vec<(String, String, String, i64, [u32; 5])> {
            c.messages
                .iter()
                .map(|m| {
                    let n = |i| c.names.name(i).to_string();
                    (n(m.session), n(m.provider), n(m.model), m.created, m.tokens)
                })
                .collect()
        };
        assert_eq!(named(&split), named(&serial), "{parts} ranges");
        assert_eq!(split.ids, serial.ids);
        assert_eq!((split.report.messages, split.report.sessions), (serial.report.messages, serial.report.sessions));
        assert_eq!(split.sessions.len(), serial.sessions.len());
        assert!(named(&split).iter().any(|m| m.2 == "only-in-range-2"));
    }
    // The fixture is small: reading it in one go is the plan.
    assert!(store::split_messages(&loc, 2).is_none());
}
