//! Durable component state: versioned JSON written to a temp file, synced, then renamed.
//! Reading prefers a complete temp file (a crash between write and rename), then the main file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    version: u32,
    data: T,
}

#[derive(Debug, Clone)]
pub struct CheckpointFile {
    path: PathBuf,
}

impl CheckpointFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CheckpointFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn tmp(&self) -> PathBuf {
        self.path.with_extension("json.tmp")
    }

    /// The stored state, or `None` when there is none yet. A file that cannot be read is an
    /// error naming the file, so state is never silently reset.
    pub fn load<T: DeserializeOwned>(&self) -> io::Result<Option<T>> {
        if let Ok(bytes) = fs::read(self.tmp())
            && let Ok(env) = serde_json::from_slice::<Envelope<T>>(&bytes)
            && env.version == VERSION
        {
            return Ok(Some(env.data));
        }
        match fs::read(&self.path) {
            Ok(bytes) => match serde_json::from_slice::<Envelope<T>>(&bytes) {
                Ok(env) if env.version == VERSION => Ok(Some(env.data)),
                Ok(env) => Err(io::Error::other(format!(
                    "{}: checkpoint version {} is not supported (expected {VERSION})",
                    self.path.display(),
                    env.version
                ))),
                Err(e) => Err(io::Error::other(format!(
                    "{}: unreadable checkpoint ({e}); move it away to start over",
                    self.path.display()
                ))),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", self.path.display()))),
        }
    }

    /// [`store`](Self::store) on a blocking thread (it writes and fsyncs), for async loops.
    pub async fn store_async<T: Serialize + Send + 'static>(&self, data: T) -> io::Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.store(&data)).await.map_err(io::Error::other)?
    }

    pub fn store<T: Serialize>(&self, data: &T) -> io::Result<()> {
        let bytes = serde_json::to_vec(&Envelope { version: VERSION, data }).map_err(io::Error::other)?;
        let tmp = self.tmp();
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_data()?;
        fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_recovers_from_a_crash_before_rename() {
        let dir = tempfile::tempdir().unwrap();
        let cp = CheckpointFile::new(dir.path().join("c.json"));
        assert_eq!(cp.load::<u64>().unwrap(), None);
        cp.store(&7u64).unwrap();
        assert_eq!(cp.load::<u64>().unwrap(), Some(7));
        // A complete temp file left by a crash is newer than the main file.
        fs::write(cp.tmp(), br#"{"version":1,"data":9}"#).unwrap();
        assert_eq!(cp.load::<u64>().unwrap(), Some(9));
        // A torn temp file is ignored.
        fs::write(cp.tmp(), br#"{"version":1,"da"#).unwrap();
        assert_eq!(cp.load::<u64>().unwrap(), Some(7));
        fs::write(cp.path(), b"garbage").unwrap();
        assert!(cp.load::<u64>().unwrap_err().to_string().contains("unreadable checkpoint"));
    }
}
