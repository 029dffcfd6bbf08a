//! Where snapshot files live: a directory of the member's own, or memory.
//!
//! A file is written under a temporary name and only becomes visible under
//! its real name once complete: fsync the file, rename, fsync the
//! directory — so a crash never leaves a half-written file under a real
//! name.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ha_core::StorageError;
use parking_lot::Mutex;

const TMP: &str = ".tmp";

#[derive(Clone)]
pub(crate) enum SnapshotFiles {
    Dir(PathBuf),
    Memory(Arc<Mutex<HashMap<String, Arc<Vec<u8>>>>>),
}

impl std::fmt::Debug for SnapshotFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotFiles::Dir(p) => write!(f, "SnapshotFiles({})", p.display()),
            SnapshotFiles::Memory(_) => f.write_str("SnapshotFiles(memory)"),
        }
    }
}

fn io_err(op: &'static str, path: &Path, e: io::Error) -> StorageError {
    StorageError::io(
        op,
        io::Error::new(e.kind(), format!("{}: {e}", path.display())),
    )
}

/// A file being written; invisible under its name until `finish`.
pub(crate) struct NewFile {
    name: String,
    sink: Sink,
    files: SnapshotFiles,
    finished: bool,
}

enum Sink {
    File(BufWriter<fs::File>),
    Memory(Vec<u8>),
}

impl NewFile {
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        match &mut self.sink {
            Sink::File(w) => w
                .write_all(bytes)
                .map_err(|e| StorageError::io("write a snapshot file", e)),
            Sink::Memory(v) => {
                v.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// Makes the file durable and visible under its name.
    pub(crate) fn finish(mut self) -> Result<(), StorageError> {
        self.finished = true;
        let sink = std::mem::replace(&mut self.sink, Sink::Memory(Vec::new()));
        match (&self.files, sink) {
            (SnapshotFiles::Dir(dir), Sink::File(w)) => {
                let tmp = dir.join(format!("{}{TMP}", self.name));
                let file = w
                    .into_inner()
                    .map_err(|e| io_err("write a snapshot file", &tmp, e.into_error()))?;
                file.sync_all()
                    .map_err(|e| io_err("sync a snapshot file", &tmp, e))?;
                let path = dir.join(&self.name);
                fs::rename(&tmp, &path).map_err(|e| io_err("rename a snapshot file", &tmp, e))?;
                sync_dir(dir)
            }
            (SnapshotFiles::Memory(map), Sink::Memory(bytes)) => {
                map.lock().insert(self.name.clone(), Arc::new(bytes));
                Ok(())
            }
            _ => Err(StorageError::corrupt("snapshot files", "mixed backends")),
        }
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.finished {
            if let SnapshotFiles::Dir(dir) = &self.files {
                let _ = fs::remove_file(dir.join(format!("{}{TMP}", self.name)));
            }
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("sync the snapshot directory", dir, e))
}

impl SnapshotFiles {
    /// The directory (created if missing), or memory.
    pub(crate) fn open(dir: Option<&Path>) -> Result<Self, StorageError> {
        match dir {
            None => Ok(SnapshotFiles::Memory(Arc::default())),
            Some(dir) => {
                fs::create_dir_all(dir)
                    .map_err(|e| io_err("create the snapshot directory", dir, e))?;
                Ok(SnapshotFiles::Dir(dir.to_path_buf()))
            }
        }
    }

    pub(crate) fn create(&self, name: &str) -> Result<NewFile, StorageError> {
        let sink = match self {
            SnapshotFiles::Dir(dir) => {
                let tmp = dir.join(format!("{name}{TMP}"));
                let f = fs::File::create(&tmp)
                    .map_err(|e| io_err("create a snapshot file", &tmp, e))?;
                Sink::File(BufWriter::with_capacity(1 << 20, f))
            }
            SnapshotFiles::Memory(_) => Sink::Memory(Vec::new()),
        };
        Ok(NewFile {
            name: name.to_owned(),
            sink,
            files: self.clone(),
            finished: false,
        })
    }

    /// Opens a finished file for reading.
    pub(crate) fn read(&self, name: &str) -> Result<Box<dyn Read + Send>, StorageError> {
        match self {
            SnapshotFiles::Dir(dir) => {
                let path = dir.join(name);
                let f =
                    fs::File::open(&path).map_err(|e| io_err("open a snapshot file", &path, e))?;
                Ok(Box::new(io::BufReader::with_capacity(1 << 20, f)))
            }
            SnapshotFiles::Memory(map) => {
                let bytes = map.lock().get(name).cloned().ok_or_else(|| {
                    StorageError::io(
                        "open a snapshot file",
                        io::Error::new(io::ErrorKind::NotFound, name.to_owned()),
                    )
                })?;
                Ok(Box::new(io::Cursor::new(ArcBytes(bytes))))
            }
        }
    }

    pub(crate) fn remove(&self, name: &str) {
        match self {
            SnapshotFiles::Dir(dir) => {
                let _ = fs::remove_file(dir.join(name));
            }
            SnapshotFiles::Memory(map) => {
                map.lock().remove(name);
            }
        }
    }

    /// Removes every file but `keep` (leftovers of an earlier run).
    pub(crate) fn clear_except(&self, keep: Option<&str>) {
        match self {
            SnapshotFiles::Dir(dir) => {
                let Ok(entries) = fs::read_dir(dir) else {
                    return;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if Some(name.to_string_lossy().as_ref()) != keep {
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
            SnapshotFiles::Memory(map) => map.lock().retain(|k, _| Some(k.as_str()) == keep),
        }
    }
}

struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
