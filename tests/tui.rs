//! `ocpipe tui` as a user runs it: the real binary in tmux (`send-keys`, `capture-pane`) on the
//! stored OpenCode 1.18.33 fixture with a fork: the totals `ocpipe stats` gives, every view, a
//! range switch, quitting.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

struct Tmux {
    name: String,
}

impl Tmux {
    fn capture(&self) -> String {
        text(&Command::new("tmux").args(["capture-pane", "-p", "-t", &self.name]).output().unwrap().stdout)
    }
    fn keys(&self, keys: &str) {
        assert!(Command::new("tmux").args(["send-keys", "-t", &self.name, keys]).status().unwrap().success());
    }
    /// Waits until the screen shows `want`.
    fn wait_for(&self, want: &str) -> String {
        let start = Instant::now();
        loop {
            let screen = self.capture();
            if screen.contains(want) {
                return screen;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "`{want}` never showed:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.name]).status();
    }
}

#[test]
fn the_tui_in_tmux_shows_what_stats_counts_in_every_view() {
    let Some(_) = require("tmux") else { return };
    let fixture = root().join("fixtures/storage/v1.18.33-fork");
    let cache = tempfile::tempdir().unwrap();
    let stats = Command::new(bin())
        .args(["stats", "--json", "--data-dir"])
        .arg(&fixture)
        .env("XDG_CACHE_HOME", cache.path())
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let total = stats["totals"]["total"].as_u64().unwrap();
    let with_commas = |n: u64| {
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    let tmux = Tmux { name: format!("ocpipe-tui-{}", std::process::id()) };
    let cmd = format!("XDG_CACHE_HOME={} {} tui --data-dir {}", cache.path().display(), bin(), fixture.display());
    let started = Command::new("tmux")
        .args(["new-session", "-d", "-s", &tmux.name, "-x", "120", "-y", "32", &cmd])
        .status()
        .unwrap();
    assert!(started.success());
    let screen = tmux.wait_for(&format!("total {}", with_commas(total)));
    assert!(screen.contains("fork copies (counted once, not again)"), "{screen}");
    tmux.keys("2");
    let screen = tmux.wait_for("Sessions (6 of 6)");
    assert!(screen.contains("(fork #1)"), "{screen}");
    tmux.keys("4");
    tmux.wait_for("mock/mock-1");
    tmux.keys("6");
    tmux.wait_for("Timeline (local days)");
    // Today: the fixture is from another day, so nothing of it counts.
    tmux.keys("1");
    tmux.keys("t");
    tmux.wait_for("range: today");
    tmux.wait_for("total 0");
    tmux.keys("q");
    let start = Instant::now();
    while Command::new("tmux").args(["has-session", "-t", &tmux.name]).status().unwrap().success() {
        assert!(start.elapsed() < Duration::from_secs(10), "q quits");
        std::thread::sleep(Duration::from_millis(100));
    }
}
