//! `--log-file`: logs to a file as well as the console, rotated daily like the status monitor
//! did: `monitor.log` is today's; at the first line of a new day it becomes
//! `monitor.log.YYYY-MM-DD` (the day it covers) and a new `monitor.log` starts.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{Local, NaiveDate};

pub struct DailyFile {
    path: PathBuf,
    state: Mutex<(File, NaiveDate)>,
}

impl DailyFile {
    /// `path` is the log file, or a directory to hold `monitor.log`.
    pub fn open(path: &Path) -> io::Result<Arc<DailyFile>> {
        let path = if path.is_dir() || path.extension().is_none() && !path.exists() {
            std::fs::create_dir_all(path)?;
            path.join("monitor.log")
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            path.to_path_buf()
        };
        // A file left from an earlier day is that day's.
        let today = Local::now().date_naive();
        if let Some(day) = modified_day(&path).filter(|d| *d < today) {
            rotate(&path, day)?;
        }
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?;
        // A log made by an older ocpipe (0644) becomes private too: it names projects and sessions.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(Arc::new(DailyFile { path, state: Mutex::new((file, today)) }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_line(&self, buf: &[u8], today: NaiveDate) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if today != state.1 {
            state.0.flush()?;
            rotate(&self.path, state.1)?;
            state.0 = OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path)?;
            state.1 = today;
        }
        state.0.write_all(buf)
    }
}

fn modified_day(path: &Path) -> Option<NaiveDate> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(chrono::DateTime::<Local>::from(t).date_naive())
}

fn rotate(path: &Path, day: NaiveDate) -> io::Result<()> {
    let target = PathBuf::from(format!("{}.{}", path.display(), day.format("%Y-%m-%d")));
    match std::fs::rename(path, &target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A writer handle for `tracing_subscriber`.
pub struct Handle(pub Arc<DailyFile>);

impl Write for Handle {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_line(buf, Local::now().date_naive())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_first_line_of_a_new_day() {
        let dir = tempfile::tempdir().unwrap();
        let f = DailyFile::open(&dir.path().join("logs")).unwrap();
        assert_eq!(f.path(), dir.path().join("logs/monitor.log"));
        let day1 = NaiveDate::from_ymd_opt(2026, 6, 2).unwrap();
        let day2 = NaiveDate::from_ymd_opt(2026, 6, 3).unwrap();
        f.state.lock().unwrap().1 = day1;
        f.write_line(b"one\n", day1).unwrap();
        f.write_line(b"two\n", day2).unwrap();
        let logs = dir.path().join("logs");
        assert_eq!(std::fs::read_to_string(logs.join("monitor.log.2026-06-02")).unwrap(), "one\n");
        assert_eq!(std::fs::read_to_string(logs.join("monitor.log")).unwrap(), "two\n");
    }
}
