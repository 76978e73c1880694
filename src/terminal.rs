//! Full-screen terminal programs (`ocpipe tui`, `ocpipe traces`): the terminal is taken for
//! `run` and given back however it ends, and an error is reported the same way.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a full-screen program has the terminal (logs are kept off it meanwhile).
static TAKEN: AtomicBool = AtomicBool::new(false);

pub fn screen_taken() -> bool {
    TAKEN.load(Ordering::Relaxed)
}

/// Refuses (with what to use instead) when stdout is not a terminal.
pub fn require_terminal(program: &str, instead: &str) -> Result<(), ExitCode> {
    if std::io::stdout().is_terminal() {
        return Ok(());
    }
    eprintln!("error: {program} needs a terminal{instead}");
    Err(ExitCode::FAILURE)
}

/// Runs `run` on the alternate screen in raw mode, then restores the terminal.
pub fn fullscreen(run: impl FnOnce(&mut ratatui::DefaultTerminal) -> std::io::Result<()>) -> ExitCode {
    let mut terminal = ratatui::init();
    TAKEN.store(true, Ordering::Relaxed);
    let result = run(&mut terminal);
    TAKEN.store(false, Ordering::Relaxed);
    ratatui::restore();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What `draw` puts on a `width`×`height` screen, as lines of text without trailing blanks
/// (`--snapshot` output, and tests).
pub fn text_screen(width: u16, height: u16, draw: impl FnOnce(&mut ratatui::Frame<'_>)) -> String {
    let backend = ratatui::backend::TestBackend::new(width, height);
    let mut t = ratatui::Terminal::new(backend).expect("an in-memory terminal");
    t.draw(draw).expect("drawing in memory");
    let buf = t.backend().buffer();
    (0..buf.area.height)
        .map(|y| (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect::<String>().trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}
