//! The local cache of a [`crate::TypedConfig`]: the last version it ran,
//! on disk, so an instance can start when the group is unreachable.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::error::{ConfigCenterError, ConfigResult};
use crate::config::model::{ConfigId, Record, sha256_hex};

/// One config's cache file. It holds the record exactly as stored in the
/// KV (a secret stays encrypted), written atomically: a temporary file in
/// the same directory, fsynced, renamed over the old one.
#[derive(Clone, Debug)]
pub(crate) struct DiskCache {
    path: PathBuf,
}

impl DiskCache {
    /// The file for `id` of the center rooted at `root`, in `dir`.
    pub(crate) fn new(dir: &Path, root: &str, id: &ConfigId) -> DiskCache {
        // A hash keeps any id a safe file name; the data id, when plain,
        // keeps it readable.
        let digest = sha256_hex(format!("{root}\0{id}").as_bytes());
        let readable: String = id
            .data_id()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            .take(64)
            .collect();
        DiskCache {
            path: dir.join(format!("{}-{readable}.cfgcache", &digest[..16])),
        }
    }

    /// The file.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn io_error(&self, e: std::io::Error) -> ConfigCenterError {
        ConfigCenterError::Cache {
            path: self.path.clone(),
            source: Arc::new(e),
        }
    }

    /// The cached record, `None` when there is no cache file.
    ///
    /// # Errors
    /// [`ConfigCenterError::Cache`] for an unreadable file;
    /// [`ConfigCenterError::Corrupt`] for one whose content does not match
    /// its hash.
    pub(crate) fn load(&self) -> ConfigResult<Option<Record>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error(e)),
        };
        let name = self.path.display().to_string();
        let record = Record::decode(name.as_bytes(), &bytes, 0)?;
        if sha256_hex(&record.body) != record.meta.hash {
            return Err(ConfigCenterError::Corrupt {
                key: name,
                reason: "content does not match its hash".into(),
            });
        }
        Ok(Some(record))
    }

    /// Replaces the cache with `record`, atomically.
    ///
    /// # Errors
    /// [`ConfigCenterError::Cache`].
    pub(crate) fn store(&self, record: &Record) -> ConfigResult<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| self.io_error(e))?;
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| self.io_error(e))?;
        file.write_all(&record.encode())
            .and_then(|()| file.as_file().sync_all())
            .map_err(|e| self.io_error(e))?;
        file.persist(&self.path)
            .map_err(|e| self.io_error(e.error))?;
        // The rename itself is durable once the directory is synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{ConfigFormat, RecordMeta};

    #[test]
    fn stores_loads_and_detects_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = ConfigId::new("ns", "g", "app.json").expect("id");
        let cache = DiskCache::new(dir.path(), "_config", &id);
        assert!(cache.load().expect("no file is fine").is_none());
        let body = br#"{"a":1}"#.to_vec();
        let record = Record {
            meta: RecordMeta {
                version: 3,
                format: ConfigFormat::Json,
                hash: sha256_hex(&body),
                author: "t".into(),
                timestamp_ms: 1,
                message: String::new(),
                nonce: None,
                grey: None,
            },
            body,
            revision: 9,
        };
        cache.store(&record).expect("stores");
        let back = cache.load().expect("loads").expect("present");
        assert_eq!((back.meta.version, back.body), (3, record.body.clone()));
        // Only the cache file is left (no temporary files).
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
        let mut bytes = std::fs::read(cache.path()).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(cache.path(), bytes).expect("write");
        assert!(matches!(
            cache.load(),
            Err(ConfigCenterError::Corrupt { .. })
        ));
    }
}
