//! Full-screen terminal programs (`ocpipe tui`, `ocpipe traces`): the terminal is taken for
//! `run` and given back however it ends, and an error is reported the same way.

use std::io::IsTerminal;
use std::process::ExitCode;

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
    let result = run(&mut terminal);
    ratatui::restore();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
