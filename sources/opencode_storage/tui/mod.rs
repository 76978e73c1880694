//! `ocpipe tui`: token usage and OpenCode processes in the terminal (ratatui, crossterm). Six
//! views over the same sums as `ocpipe stats`; processes refresh every second, and the data
//! again whenever OpenCode's storage changes (file notifications), without asking.

mod app;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Args, FromArgMatches};
use ratatui::crossterm::event::{self, Event, KeyEventKind};

use super::catalog::Catalog;
use super::index;
use super::store::Location;
use crate::usage::RangeName;
use app::App;

#[derive(Debug, Args)]
pub struct TuiArgs {
    /// today, week, month or all (local time zone); `t`/`w`/`m`/`a` change it.
    #[arg(long, value_enum, default_value = "all")]
    pub range: RangeName,
    /// OpenCode's data directory (default $XDG_DATA_HOME/opencode or ~/.local/share/opencode).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// One database file to read instead.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Print the first screen of view N (1-6) as text and exit (no terminal needed): for
    /// scripts, READMEs and timing the first screen.
    #[arg(long, value_name = "VIEW", value_parser = clap::value_parser!(u8).range(1..=6))]
    pub snapshot: Option<u8>,
    /// The snapshot's size in columns and rows.
    #[arg(long, default_value = "120x32", value_parser = parse_size)]
    pub size: (u16, u16),
}

fn parse_size(s: &str) -> Result<(u16, u16), String> {
    let (w, h) = s.split_once('x').ok_or("expected COLUMNSxROWS, e.g. 120x32")?;
    let n = |v: &str| {
        v.parse::<u16>()
            .ok()
            .filter(|n| (10..=1000).contains(n))
            .ok_or(format!("`{v}` is not a size between 10 and 1000"))
    };
    Ok((n(w)?, n(h)?))
}

crate::register_command!("tui", command, run);

fn command() -> clap::Command {
    TuiArgs::augment_args(clap::Command::new("tui").about("Token usage and OpenCode processes in the terminal, live"))
}

/// What the loader thread hands over.
enum Update {
    Data(Box<Catalog>, Option<String>),
    Processes(Vec<crate::event::ProcessInfo>),
}

fn run(m: &clap::ArgMatches) -> ExitCode {
    let args = match TuiArgs::from_arg_matches(m) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let loc = Location::find(args.data_dir.as_deref(), args.db.as_deref());
    if let Some(view) = args.snapshot {
        return snapshot(&loc, args.range, view, args.size);
    }
    if let Err(code) = crate::terminal::require_terminal("ocpipe tui", " (for a report, use `ocpipe stats`)") {
        return code;
    }
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut app = App::new(args.range, color);
    let (tx, rx) = mpsc::channel();
    spawn_loaders(loc, tx);
    crate::terminal::fullscreen(|terminal| event_loop(terminal, &mut app, &rx))
}

/// The first screen of a view, as text.
fn snapshot(loc: &Location, range: RangeName, view: u8, (width, height): (u16, u16)) -> ExitCode {
    let mut app = App::new(range, false);
    app.view = app::View::ALL[usize::from(view) - 1];
    app.processes = crate::process::Scanner::with_defaults().scan();
    index::with_catalog(loc, |cat| app.refresh(cat, why_empty(loc, cat)));
    let screen = crate::terminal::text_screen(width, height, |f| view::draw(f, &app));
    println!("{screen}");
    ExitCode::SUCCESS
}

/// Why there is nothing to show, or no totals (as `ocpipe stats`: totals with a database
/// missing would be wrong, so none).
fn why_empty(loc: &Location, cat: &Catalog) -> Option<String> {
    if !cat.report.unreadable.is_empty() {
        let list: Vec<String> = cat.report.unreadable.iter().map(|u| u.to_string()).collect();
        Some(format!("{}; totals would be wrong, so none are shown", list.join("; ")))
    } else {
        cat.messages.is_empty().then(|| loc.explain_empty())
    }
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    rx: &mpsc::Receiver<Update>,
) -> std::io::Result<()> {
    let mut catalog: Option<Box<Catalog>> = None;
    let mut why_empty = None;
    let mut dirty = true;
    // Drawn again only when something changed: a key, new data, other processes, a resize.
    let mut redraw = true;
    loop {
        while let Ok(u) = rx.try_recv() {
            match u {
                Update::Data(cat, why) => {
                    catalog = Some(cat);
                    why_empty = why;
                    dirty = true;
                }
                Update::Processes(p) if p != app.processes => {
                    app.processes = p;
                    redraw = true;
                }
                Update::Processes(_) => {}
            }
        }
        if dirty && let Some(cat) = &catalog {
            app.refresh(cat, why_empty.clone());
            dirty = false;
            redraw = true;
        }
        let page = terminal.size()?.height.saturating_sub(6) as usize;
        if redraw {
            terminal.draw(|f| {
                if catalog.is_none() {
                    f.render_widget(ratatui::widgets::Paragraph::new("reading OpenCode's storage…"), f.area());
                } else {
                    view::draw(f, app)
                }
            })?;
            redraw = false;
        }
        // Wait for a key, or wake for what the loaders send (they send at most every second).
        if event::poll(Duration::from_millis(250))? {
            match event::read()? {
                Event::Key(k) if k.kind == KeyEventKind::Press => {
                    dirty |= app.key(k, page.max(1));
                    redraw = true;
                }
                Event::Resize(..) => redraw = true,
                _ => {}
            }
        }
        if app.quit {
            return Ok(());
        }
    }
}

/// Two threads: OpenCode's processes every second; the catalog at start and again after each
/// change of the storage (notified), at most once a second.
fn spawn_loaders(loc: Location, tx: mpsc::Sender<Update>) {
    let ptx = tx.clone();
    std::thread::spawn(move || {
        let mut scanner = crate::process::Scanner::with_defaults();
        loop {
            if ptx.send(Update::Processes(scanner.scan())).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(_) => return,
        };
        let data_dir = loc.data_dir.clone();
        let mut watch = crate::watch::Watch::new(
            "tui",
            vec![(data_dir, notify::RecursiveMode::Recursive)],
            std::sync::Arc::new(|p: &std::path::Path| {
                let name = p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
                name.ends_with(".db") || name.ends_with(".db-wal") || name.ends_with(".json")
            }),
        );
        loop {
            let started = Instant::now();
            let cat = index::load_or_build(&loc);
            let why = why_empty(&loc, &cat);
            if tx.send(Update::Data(Box::new(cat), why)).is_err() {
                return;
            }
            // At most once a second, then on the next change (or every minute).
            std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
            rt.block_on(async {
                tokio::select! {
                    _ = watch.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            });
            watch.take();
        }
    });
}

#[cfg(test)]
mod tests;
