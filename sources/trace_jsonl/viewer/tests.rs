use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::clipboard::osc52_for;
use super::model::{load, reader};
use super::{Focus, Viewer, draw};

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/traces")
}

fn screen(v: &Viewer) -> String {
    crate::terminal::text_screen(140, 40, |f| draw(f, v))
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
fn a_relative_folder_is_read_from_where_ocpipe_runs() {
    // Tests run in the crate's folder.
    let traces = load(std::path::Path::new("fixtures/traces"));
    assert_eq!(traces.sessions.len(), 3);
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
fn osc52_copies_small_payloads_wrapped_for_tmux_chunked_for_screen_and_refuses_huge_ones() {
    let seq = osc52_for("hello", false, false).unwrap();
    assert_eq!(seq, "\x1b]52;c;aGVsbG8=\x07");
    // tmux: the plain sequence for its buffer, and a passthrough with every ESC doubled.
    let tmux = osc52_for("hello", true, false).unwrap();
    assert_eq!(tmux, "\x1b]52;c;aGVsbG8=\x07\x1bPtmux;\x1b\x1b]52;c;aGVsbG8=\x07\x1b\\");
    // screen: device control strings of at most 76 bytes each, which together are the sequence.
    let text = "x".repeat(300);
    let screen = osc52_for(&text, false, true).unwrap();
    let chunks: Vec<&str> = screen.split("\x1b\\").filter(|c| !c.is_empty()).collect();
    assert!(chunks.len() > 4, "{screen:?}");
    assert!(chunks.iter().all(|c| c.starts_with("\x1bP") && c.len() <= 78), "{chunks:?}");
    let joined: String = chunks.iter().map(|c| &c[2..]).collect();
    assert_eq!(joined, osc52_for(&text, false, false).unwrap());
    assert!(osc52_for(&"x".repeat(100_000), false, false).is_none());
}

fn open_first_request(v: &mut Viewer) {
    key(v, KeyCode::Enter);
    key(v, KeyCode::Char('2'));
    key(v, KeyCode::Char('3'));
    assert!(v.records().iter().all(|r| r.record.kind.as_str() == "request"));
    key(v, KeyCode::Tab);
    assert_eq!(v.focus, Focus::Payload);
}

/// The visible line (cursor position) whose text contains `needle`.
fn line_with(v: &Viewer, needle: &str) -> usize {
    let visible = v.pane.payload.visible(&v.pane.folded);
    visible.iter().position(|&i| v.pane.payload.lines[i].text().contains(needle)).expect(needle)
}

#[test]
fn the_payload_folds_selects_lines_to_copy_and_is_coloured_unless_no_color() {
    let mut v = Viewer::new(load(&fixtures()), false);
    open_first_request(&mut v);
    let all = v.pane.payload.visible(&v.pane.folded).len();
    let at = line_with(&v, "\"messages\": [");
    for _ in 0..at {
        key(&mut v, KeyCode::Down);
    }
    assert_eq!(v.pane.cursor, at);
    key(&mut v, KeyCode::Enter);
    let folded = v.pane.payload.visible(&v.pane.folded).len();
    assert!(folded < all, "folding the messages hides them: {folded} of {all}");
    let s = screen(&v);
    assert!(s.contains("\"messages\": [ …") && s.contains(" lines"), "{s}");
    // Enter again unfolds it.
    key(&mut v, KeyCode::Enter);
    assert_eq!(v.pane.payload.visible(&v.pane.folded).len(), all);

    // `v` on "model", two lines down: exactly those three lines are copied.
    let at = line_with(&v, "\"model\":");
    key(&mut v, KeyCode::Home);
    for _ in 0..at {
        key(&mut v, KeyCode::Down);
    }
    key(&mut v, KeyCode::Char('v'));
    key(&mut v, KeyCode::Down);
    key(&mut v, KeyCode::Down);
    let copied = v.copy_text().unwrap();
    assert_eq!(copied.lines().count(), 3, "{copied}");
    assert!(copied.lines().next().unwrap().contains("\"model\": \"mock-1\""), "{copied}");
    assert!(screen(&v).contains('┃'), "the selection is marked in the gutter");
    // Esc drops the selection (then `c` takes the whole payload), a second Esc leaves the pane.
    key(&mut v, KeyCode::Esc);
    assert_eq!(v.copy_text().unwrap(), v.selected_payload().unwrap());
    key(&mut v, KeyCode::Esc);
    assert_eq!(v.focus, Focus::Records);

    // Keys are cyan, strings green; NO_COLOR: none.
    let colour_of_key = |v: &Viewer| {
        let mut t = ratatui::Terminal::new(ratatui::backend::TestBackend::new(140, 40)).unwrap();
        t.draw(|f| draw(f, v)).unwrap();
        let buf = t.backend().buffer().clone();
        let row = (0..40)
            .find(|&y| (0..140).map(|x| buf[(x, y)].symbol()).collect::<String>().contains("\"model\":"))
            .unwrap();
        let x = (0..140).find(|&x| buf[(x, row)].symbol() == "\"").unwrap();
        buf[(x + 1, row)].fg
    };
    assert_eq!(colour_of_key(&v), ratatui::style::Color::Cyan);
    v.color = false;
    assert_eq!(colour_of_key(&v), ratatui::style::Color::Reset);
}

#[test]
fn follow_reads_only_what_was_appended_with_trace_jsonl_s_reader() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read_to_string(fixtures().join("session-plain.jsonl")).unwrap();
    let lines: Vec<&str> = src.lines().collect();
    let file = dir.path().join("session-plain.jsonl");
    std::fs::write(&file, format!("{}\n", lines[..2].join("\n"))).unwrap();
    let mut r = reader(dir.path()).unwrap();
    let mut v = Viewer::new(Default::default(), true);
    v.add(r.read_new(true).0);
    assert_eq!(v.traces.sessions[0].items.len(), 2);
    v.open(&v.traces.sessions[0].id.clone());
    // Nothing new: nothing read.
    assert!(r.read_new(true).0.is_empty());
    // Two more lines and a broken one: only those come back, the session stays open.
    let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
    use std::io::Write;
    writeln!(f, "{}\n{}\n{{broken", lines[2], lines[3]).unwrap();
    let (found, more) = r.read_new(false);
    assert!(!more);
    assert_eq!(found.len(), 3, "two records and the malformed line");
    v.add(found);
    assert_eq!(v.traces.sessions[0].items.len(), 4);
    assert!(v.session.is_some());
    assert_eq!(v.traces.bad.len(), 1);
    assert_eq!((v.traces.bad[0].line, v.traces.bad[0].file.clone()), (5, file.clone()));

    // The file truncated and written again from the start: read again, listed once.
    let selected = v.records()[v.selected].record.timestamp.clone();
    std::fs::write(&file, format!("{}\n", lines[..4].join("\n"))).unwrap();
    v.add(r.read_new(true).0);
    assert_eq!(v.traces.sessions[0].items.len(), 4, "records read again are not listed twice");
    assert_eq!(v.records()[v.selected].record.timestamp, selected, "the selected record stays selected");
}
