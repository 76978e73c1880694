use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::super::catalog::Catalog;
use super::super::stats::thousands;
use super::super::store::Location;
use super::app::{App, View};
use super::view;
use crate::usage::{GroupBy, Prices, RangeName, Window};

fn fixture() -> Catalog {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/storage/v1.18.33-fork");
    Catalog::load(&Location::find(Some(&dir), None))
}

fn screen(app: &App, width: u16) -> String {
    crate::terminal::text_screen(width, 30, |f| view::draw(f, app))
}

fn key(app: &mut App, cat: &Catalog, code: KeyCode) {
    if app.key(KeyEvent::new(code, KeyModifiers::NONE), 10) {
        app.refresh(cat, None);
    }
}

#[test]
fn every_view_shows_the_sums_of_ocpipe_stats() {
    let cat = fixture();
    let all = Window::resolve(RangeName::All, None, None, chrono::Local::now());
    let (_, totals, forks) = cat.aggregate(GroupBy::All, all, false, &Prices::builtin());
    let mut app = App::new(RangeName::All, true);
    app.refresh(&cat, None);
    let s = screen(&app, 120);
    assert!(s.contains(&format!("total {}", thousands(totals.total))), "{s}");
    assert!(s.contains("fork copies (counted once, not again)"), "{s}");
    assert!(forks.messages > 0);
    assert!(s.contains("OpenCode processes: none running"), "{s}");
    assert!(s.contains("1 Overview") && s.contains("q quit"), "tabs and keys always shown: {s}");

    for (k, view, want) in [
        ('2', View::Sessions, "SESSION"),
        ('3', View::Projects, "PROJECT"),
        ('4', View::Models, "MODEL"),
        ('5', View::Agents, "PER MESSAGE"),
        ('6', View::Timeline, "REASONING"),
    ] {
        key(&mut app, &cat, KeyCode::Char(k));
        assert_eq!(app.view, view);
        let (rows, t, _) = cat.aggregate(
            match view {
                View::Sessions => GroupBy::Session,
                View::Projects => GroupBy::Project,
                View::Agents => GroupBy::Agent,
                View::Timeline => GroupBy::Day,
                _ => GroupBy::Model,
            },
            all,
            false,
            &Prices::builtin(),
        );
        assert_eq!(app.rows.len(), rows.len(), "{view:?}");
        assert_eq!(app.rows.iter().map(|r| r.usage.total).sum::<u64>(), t.total, "{view:?}");
        let s = screen(&app, 120);
        assert!(s.contains(want), "{view:?}: {s}");
        assert!(s.contains(&thousands(app.rows[0].usage.total)), "{view:?}: {s}");
    }
    // Tab wraps to the overview; Shift-Tab goes back.
    key(&mut app, &cat, KeyCode::Tab);
    assert_eq!(app.view, View::Overview);
    key(&mut app, &cat, KeyCode::BackTab);
    assert_eq!(app.view, View::Timeline);
}

#[test]
fn sessions_open_filter_sort_and_ranges_change_what_is_shown() {
    let cat = fixture();
    let mut app = App::new(RangeName::All, true);
    app.refresh(&cat, None);
    key(&mut app, &cat, KeyCode::Char('2'));
    let n = app.rows.len();
    assert!(n >= 4, "{n}");
    // Enter opens the selected session's messages; Esc goes back.
    key(&mut app, &cat, KeyCode::End);
    assert_eq!(app.selected, n - 1);
    key(&mut app, &cat, KeyCode::Home);
    key(&mut app, &cat, KeyCode::Enter);
    let (id, messages) = app.session.clone().expect("opened");
    assert!(!messages.is_empty());
    let s = screen(&app, 120);
    assert!(s.contains(&format!("Session {id}")) && s.contains("assistant"), "{s}");
    key(&mut app, &cat, KeyCode::Esc);
    assert!(app.session.is_none());
    // `/` filters by text (title or id).
    let id = app.rows[0].key.clone();
    key(&mut app, &cat, KeyCode::Char('/'));
    for c in id.chars() {
        key(&mut app, &cat, KeyCode::Char(c));
    }
    key(&mut app, &cat, KeyCode::Enter);
    assert_eq!(app.visible().len(), 1, "{} of {n}", app.visible().len());
    key(&mut app, &cat, KeyCode::Esc);
    assert_eq!(app.visible().len(), n);
    // `s` cycles the sort: by messages, then by name.
    key(&mut app, &cat, KeyCode::Char('s'));
    assert!(app.rows.windows(2).all(|w| w[0].usage.messages >= w[1].usage.messages));
    key(&mut app, &cat, KeyCode::Char('s'));
    assert!(app.rows.windows(2).all(|w| w[0].key <= w[1].key));
    // The fixture's messages are from 2026-11-21: not today.
    key(&mut app, &cat, KeyCode::Char('t'));
    assert_eq!(app.range, RangeName::Today);
    let today = Window::resolve(RangeName::Today, None, None, chrono::Local::now());
    assert_eq!(app.rows.len(), cat.aggregate(GroupBy::Session, today, false, &Prices::builtin()).0.len());
    key(&mut app, &cat, KeyCode::Char('a'));
    assert_eq!(app.rows.len(), n);
    key(&mut app, &cat, KeyCode::Char('q'));
    assert!(app.quit);
}

#[test]
fn narrow_terminals_drop_columns_and_no_color_still_marks_the_view() {
    let cat = fixture();
    let mut app = App::new(RangeName::All, false);
    app.refresh(&cat, None);
    key(&mut app, &cat, KeyCode::Char('2'));
    let wide = screen(&app, 120);
    let narrow = screen(&app, 60);
    assert!(wide.contains("SESSION") && wide.contains("COST"), "{wide}");
    assert!(!narrow.contains("COST") && narrow.contains("TOKENS"), "{narrow}");
    assert!(narrow.contains("[2 Sessions]"), "without colour the current view is bracketed: {narrow}");
    let mut t = Terminal::new(TestBackend::new(60, 30)).unwrap();
    t.draw(|f| view::draw(f, &app)).unwrap();
    let buf = t.backend().buffer();
    assert!(
        (0..buf.area.height).all(|y| (0..buf.area.width).all(|x| buf[(x, y)].fg == ratatui::style::Color::Reset)),
        "NO_COLOR: no colours"
    );
}

#[test]
fn an_empty_data_dir_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let loc = Location::find(Some(dir.path()), None);
    let cat = Catalog::load(&loc);
    let mut app = App::new(RangeName::All, true);
    app.refresh(&cat, Some(loc.explain_empty()));
    let s = screen(&app, 100);
    assert!(s.contains("Nothing to show:"), "{s}");
    assert!(s.contains("--data-dir"), "{s}");
}

#[test]
fn a_damaged_database_shows_no_totals_as_stats_prints_none() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("opencode.db"), vec![0x5au8; 8192]).unwrap();
    let loc = Location::find(Some(dir.path()), None);
    let cat = Catalog::load(&loc);
    assert!(!cat.report.unreadable.is_empty());
    let mut app = App::new(RangeName::All, true);
    let why = format!("{}; totals would be wrong, so none are shown", cat.report.unreadable[0]);
    app.refresh(&cat, Some(why));
    let s = screen(&app, 120);
    assert!(s.contains("Nothing to show:") && s.contains("totals would be wrong"), "{s}");
    assert!(!s.contains("total 0"), "{s}");
}

#[test]
fn sub_agent_sessions_sit_under_their_parent_with_their_time_span_also_from_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("opencode.db");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/storage/v1.18.33-fork/opencode.db");
    std::fs::copy(fixture, &db).unwrap();
    let loc = Location { index_dir: Some(dir.path().join("cache")), ..Location::find(None, Some(&db)) };
    let conn = rusqlite::Connection::open(&db).unwrap();
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM session ORDER BY time_created")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // The last session becomes a sub-agent of the first.
    conn.execute("UPDATE session SET parent_id = ?1 WHERE id = ?2", [&ids[0], &ids[4]]).unwrap();
    let check = |cat: &Catalog, children: &[&str]| {
        let mut app = App::new(RangeName::All, true);
        app.view = View::Sessions;
        app.refresh(cat, None);
        let at = app.rows.iter().position(|r| r.key == ids[0]).expect("the parent");
        for (i, child) in children.iter().enumerate() {
            let r = &app.rows[at + 1 + i];
            assert_eq!(
                (r.key.as_str(), r.depth),
                (*child, 1),
                "{:?}",
                app.rows.iter().map(|r| (&r.key, r.depth)).collect::<Vec<_>>()
            );
        }
        // Sorting again keeps them under it.
        key(&mut app, cat, KeyCode::Char('s'));
        let at = app.rows.iter().position(|r| r.key == ids[0]).unwrap();
        assert_eq!(app.rows[at + 1].parent.as_deref(), Some(ids[0].as_str()));
        let s = screen(&app, 140);
        assert!(s.contains("└ Mock session title") && s.contains("TIME"), "{s}");
        // The span: first and last message of the session, local time, in the row.
        let (first, last) = app.rows[at].span.expect("a span");
        assert!(first <= last);
        let day = chrono::DateTime::from_timestamp_millis(first).unwrap().with_timezone(&chrono::Local);
        assert!(s.contains(&day.format("%m-%d %H:%M–").to_string()), "{s}");
    };
    let built = super::super::index::load_or_build(&loc);
    check(&built, &[&ids[4]]);
    // From the index, unchanged.
    check(&super::super::index::load_or_build(&loc), &[&ids[4]]);
    // A new sub-agent session and its message, caught up from the database's new rows.
    conn.execute_batch(&format!(
        "INSERT INTO session (id, project_id, parent_id, slug, directory, title, version, time_created, time_updated)
           SELECT 'ses_child2', project_id, '{p}', slug, directory, 'Sub-agent two', version, time_created + 1, time_updated
           FROM session WHERE id = '{p}';
         INSERT INTO message (id, session_id, time_created, time_updated, data)
           SELECT 'msg_child2', 'ses_child2', time_created + 10, time_updated,
             json_set(data, '$.id', 'msg_child2', '$.sessionID', 'ses_child2', '$.tokens.input', 4242, '$.time.created', time_created + 10) FROM message
           WHERE session_id = '{p}' AND json_extract(data, '$.role') = 'assistant' LIMIT 1;",
        p = ids[0]
    ))
    .unwrap();
    let caught_up = super::super::index::load_or_build(&loc);
    assert_eq!(caught_up.sessions.len(), built.sessions.len() + 1);
    let mut app = App::new(RangeName::All, true);
    app.view = View::Sessions;
    app.refresh(&caught_up, None);
    let child = app.rows.iter().find(|r| r.key == "ses_child2").expect("the new sub-agent session");
    assert_eq!((child.parent.as_deref(), child.depth), (Some(ids[0].as_str()), 1));
}
