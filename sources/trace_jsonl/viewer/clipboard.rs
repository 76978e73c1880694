//! Copying a payload: the system clipboard when there is one (a Wayland or X display with
//! `wl-copy`, `xclip` or `xsel`; `pbcopy` on macOS), else OSC 52 through the terminal, wrapped
//! for tmux and chunked for GNU screen.

use std::io::Write;
use std::process::{Command, Stdio};

/// What xterm and tmux accept in one OSC 52 sequence, base64-encoded.
const OSC52_MAX: usize = 74_994;
/// GNU screen passes a device control string of at most this many bytes through.
const SCREEN_CHUNK: usize = 76;

/// Puts `text` on the clipboard; says how, or why not.
pub fn copy(text: &str) -> String {
    if let Some(tool) = system_clipboard(text) {
        return format!("copied {} bytes ({tool})", text.len());
    }
    match osc52(text) {
        Some(seq) => {
            let mut out = std::io::stdout();
            match out.write_all(seq.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => format!("copied {} bytes (OSC 52)", text.len()),
                Err(e) => format!("cannot copy: {e}"),
            }
        }
        None => format!(
            "{} bytes is more than a terminal takes for a copy (about {} KB); `w` writes it to a file",
            text.len(),
            OSC52_MAX / 4 * 3 / 1024
        ),
    }
}

/// The first clipboard program this session has a display for, fed `text`.
fn system_clipboard(text: &str) -> Option<&'static str> {
    let env = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    let mut tools: Vec<(&'static str, &[&str])> = Vec::new();
    if cfg!(target_os = "macos") {
        tools.push(("pbcopy", &[]));
    }
    if env("WAYLAND_DISPLAY") {
        tools.push(("wl-copy", &[]));
    }
    if env("DISPLAY") {
        tools.push(("xclip", &["-selection", "clipboard"]));
        tools.push(("xsel", &["--clipboard", "--input"]));
    }
    tools.into_iter().find_map(|(tool, args)| {
        let mut child = Command::new(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let written = child.stdin.take()?.write_all(text.as_bytes()).is_ok();
        (child.wait().ok()?.success() && written).then_some(tool)
    })
}

/// The OSC 52 sequence that puts `text` on the clipboard, or `None` when it is too long.
/// Inside tmux: as is (tmux keeps it in its buffer with `set-clipboard on`) and wrapped to pass
/// through to the outer terminal (`allow-passthrough on`); inside GNU screen: in chunks screen
/// passes through.
pub fn osc52(text: &str) -> Option<String> {
    let term = std::env::var("TERM").unwrap_or_default();
    osc52_for(text, std::env::var_os("TMUX").is_some(), term.starts_with("screen"))
}

pub fn osc52_for(text: &str, tmux: bool, screen: bool) -> Option<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(text);
    if b64.len() > OSC52_MAX {
        return None;
    }
    let seq = format!("\x1b]52;c;{b64}\x07");
    Some(if tmux {
        format!("{seq}\x1bPtmux;{}\x1b\\", seq.replace('\x1b', "\x1b\x1b"))
    } else if screen {
        // ASCII only, so byte chunks are character chunks.
        seq.as_bytes()
            .chunks(SCREEN_CHUNK)
            .map(|c| format!("\x1bP{}\x1b\\", std::str::from_utf8(c).expect("ascii")))
            .collect()
    } else {
        seq
    })
}
