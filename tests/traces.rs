//! `ocpipe traces` as a user runs it: the real binary in tmux on the captured traces: the
//! session list with counts, a session opened, errors toggled, a payload copied (the OSC 52
//! sequence reaches tmux's buffer), one line of it selected with `v` and copied, and a record
//! appended while it runs shows up (follow).

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().unwrap();
    text(&out.stdout)
}

#[test]
fn the_trace_viewer_in_tmux_lists_opens_copies_and_follows() {
    let Some(_) = require("tmux") else { return };
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(root().join("fixtures/traces")).unwrap().flatten() {
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    // A tmux server of our own, accepting OSC 52 from applications into its buffer.
    let socket = format!("ocpipe-traces-{}", std::process::id());
    let t = |args: &[&str]| {
        let mut all = vec!["-L", socket.as_str()];
        all.extend_from_slice(args);
        tmux(&all)
    };
    // No display: the copy goes by OSC 52 (and the user's clipboard is left alone).
    let cmd = format!("exec env -u DISPLAY -u WAYLAND_DISPLAY {} traces {}", bin(), dir.path().display());
    t(&["-f", "/dev/null", "new-session", "-d", "-s", "tv", "-x", "140", "-y", "40", &cmd]);
    t(&["set-option", "-g", "set-clipboard", "on"]);
    let session = "tv".to_string();
    let pane = |want: &str| {
        let start = Instant::now();
        loop {
            let screen = t(&["capture-pane", "-p", "-t", &session]);
            if screen.contains(want) {
                return screen;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "`{want}` never showed:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let screen = pane("Sessions: 3 (0 malformed lines)");
    assert!(screen.contains("3/2/1"), "the session with a retry and an error: {screen}");
    assert!(screen.contains("1/1/0"), "{screen}");
    // The session with the error: its records, then errors hidden.
    let row = screen.lines().position(|l| l.contains("3/2/1")).unwrap();
    let first = screen.lines().position(|l| l.contains("ses_")).unwrap();
    for _ in first..row {
        t(&["send-keys", "-t", &session, "Down"]);
    }
    t(&["send-keys", "-t", &session, "Enter"]);
    let screen = pane("6 records");
    assert!(screen.contains("error"), "{screen}");
    t(&["send-keys", "-t", &session, "3"]);
    pane("5 records");
    // Copy the selected payload: OSC 52 into tmux's buffer.
    t(&["send-keys", "-t", &session, "c"]);
    pane("copied");
    let start = Instant::now();
    loop {
        let buffer = t(&["show-buffer"]);
        if buffer.contains("\"model\"") || buffer.contains("messages") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the payload never reached tmux's buffer: {buffer:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // `v` in the payload pane: only the selected line is copied.
    for k in ["Tab", "Down", "v", "c"] {
        t(&["send-keys", "-t", &session, k]);
    }
    let start = Instant::now();
    loop {
        let buffer = t(&["show-buffer"]);
        if buffer.trim_end() == "  \"model\": \"mock-1\"," {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the selected line never reached tmux's buffer: {buffer:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Follow: a record appended to a new session's file shows up.
    // Back to the list, one Escape at a time (Escapes sent together can be read as one
    // Alt-Escape sequence by the terminal library).
    let start = Instant::now();
    while !t(&["capture-pane", "-p", "-t", &session]).contains("Sessions: 3") {
        assert!(start.elapsed() < Duration::from_secs(20), "Escape never led back to the list");
        t(&["send-keys", "-t", &session, "Escape"]);
        std::thread::sleep(Duration::from_millis(400));
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("late.jsonl")).unwrap();
    writeln!(
        f,
        r#"{{"kind":"request","id":1,"timestamp":"2026-11-29T10:00:00.000Z","sessionID":"ses_late","method":"POST","url":"http://127.0.0.1/v1/chat/completions","headers":{{}},"body":{{"messages":[{{"role":"user","content":"A late question"}}]}}}}"#
    )
    .unwrap();
    drop(f);
    pane("Sessions: 4");
    pane("A late question");
    t(&["send-keys", "-t", &session, "q"]);
    let _ = t(&["kill-server"]);
}
