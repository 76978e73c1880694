use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::{Viewer, draw, load, osc52};

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/traces")
}

fn screen(v: &Viewer) -> String {
    crate::testing::screen(140, 40, |f| draw(f, v))
}

fn key(v: &mut Viewer, code: KeyCode) {
    v.key(KeyEvent::new(code, KeyModifiers::NONE));
}

#[test]
fn sessions_list_their_counts_and_open_to_records_with_latency_and_growth() {
    let traces = load(&fixtures());
    // The three captured sessions (README of fixtures/: 2+2, 4+3+1 error, 2+2), meta hidden.
    assert_eq!(traces.sessions.len(), 3, "{:?}", traces.sessions.iter().map(|s| &s.id).collect::<Vec<_>>());
    let retry = traces.sessions.iter().find(|s| s.errors == 1).expect("the session with an error");
    assert!(retry.requests >= 3 && retry.responses >= 2, "{} {} {}", retry.requests, retry.responses, retry.errors);
    let mut v = Viewer::new(traces, false);
    let s = screen(&v);
    assert!(s.contains("Sessions: 3 (0 malformed lines)"), "{s}");
    assert!(s.contains("REQ/RES/ERR"), "{s}");
    let i = v.traces.sessions.iter().position(|s| s.errors == 1).unwrap();
    for _ in 0..i {
        key(&mut v, KeyCode::Down);
    }
    key(&mut v, KeyCode::Enter);
    let s = screen(&v);
    assert!(s.contains("LATENCY") && s.contains(" ms"), "{s}");
    assert!(v.records().iter().any(|r| r.growth.is_some()), "growth of later requests");
    // 3 hides errors, 1 hides requests: only responses remain.
    let all = v.records().len();
    key(&mut v, KeyCode::Char('3'));
    assert!(v.records().len() < all);
    key(&mut v, KeyCode::Char('1'));
    assert!(v.records().iter().all(|r| r.record.kind.as_str() == "response"));
    // A response's payload: the streamed text assembled.
    let payload = v.selected_payload().unwrap();
    assert!(payload.contains("assembled text:") || payload.contains('{'), "{payload}");
    key(&mut v, KeyCode::Esc);
    assert!(v.session.is_none());
    key(&mut v, KeyCode::Char('q'));
    assert!(v.quit);
}

#[test]
fn search_finds_bodies_and_malformed_lines_are_listed_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixtures()).unwrap().flatten() {
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    std::fs::write(dir.path().join("broken.jsonl"), "{not json\n").unwrap();
    let mut v = Viewer::new(load(dir.path()), false);
    assert_eq!(v.traces.bad.len(), 1);
    let s = screen(&v);
    assert!(s.contains("malformed:") && s.contains("broken.jsonl:1"), "{s}");
    key(&mut v, KeyCode::Enter);
    let before = v.records().len();
    key(&mut v, KeyCode::Char('/'));
    for c in "no-such-text-anywhere".chars() {
        key(&mut v, KeyCode::Char(c));
    }
    key(&mut v, KeyCode::Enter);
    assert_eq!(v.records().len(), 0);
    key(&mut v, KeyCode::Esc);
    assert_eq!(v.records().len(), before);
}

#[test]
fn osc52_copies_small_payloads_and_refuses_huge_ones() {
    let seq = osc52("hello").unwrap();
    assert!(seq.contains("]52;c;aGVsbG8="), "{seq:?}");
    assert!(osc52(&"x".repeat(100_000)).is_none());
}
