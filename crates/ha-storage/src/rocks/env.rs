//! [`RocksEnv`]: what the RocksDB instances of one process share.

use std::fmt;
use std::path::Path;

use ha_core::StorageError;
use rocksdb::{Cache, Env};

use super::config::StorageConfig;
use super::log::RocksLogStore;
use super::state::RocksStateStore;

/// The block cache and the background thread pool that every RocksDB
/// instance opened through it shares — both databases of a member, and the
/// members of several groups hosted by one process. Cloning is cheap and
/// shares the same resources; they are freed when the last clone and the
/// last database opened through it are dropped.
///
/// ```
/// use ha_core::LogStore;
/// use ha_storage::{RocksEnv, StorageConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = StorageConfig::default().validate()?;
/// let env = RocksEnv::new(&config)?;
/// let dir = tempfile::tempdir()?;
/// // Two members in one process, one cache and one thread pool.
/// let (log_1, _state_1) = env.open(&dir.path().join("member-1"), &config)?;
/// let (log_2, _state_2) = env.open(&dir.path().join("member-2"), &config)?;
/// assert_eq!(log_1.last_index()?, 0);
/// assert_eq!(log_2.last_index()?, 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RocksEnv {
    cache: Cache,
    env: Env,
}

impl RocksEnv {
    /// Creates the shared resources: a block cache of
    /// `config.block_cache_bytes`, and RocksDB's default `Env`, whose
    /// background pools are process-wide and which every open grows (never
    /// shrinks) to its database's `max_background_jobs`.
    ///
    /// # Errors
    ///
    /// [`StorageError::Other`] when `config` is invalid or RocksDB cannot
    /// create its environment.
    pub fn new(config: &StorageConfig) -> Result<Self, StorageError> {
        let config = valid(config)?;
        let cache_bytes = usize::try_from(config.block_cache_bytes).unwrap_or(usize::MAX);
        let env = Env::new().map_err(|e| StorageError::Other(std::sync::Arc::new(e)))?;
        Ok(RocksEnv {
            cache: Cache::new_lru_cache(cache_bytes),
            env,
        })
    }

    /// Opens a member's storage under `dir` — the log in `dir/log`, the
    /// state in `dir/state` — creating what does not exist yet.
    ///
    /// Only `config`'s per-database fields are used; the shared cache and
    /// pool are this environment's.
    ///
    /// # Errors
    ///
    /// - [`StorageError::Corrupt`] when either database is damaged (a
    ///   checksum mismatch, a missing or truncated file) or its format
    ///   record is missing;
    /// - [`StorageError::UnknownFormat`] when a newer build wrote it;
    /// - [`StorageError::Io`] when the device fails, or another open
    ///   instance holds the directory;
    /// - [`StorageError::Other`] for an invalid `config`.
    pub fn open(
        &self,
        dir: &Path,
        config: &StorageConfig,
    ) -> Result<(RocksLogStore, RocksStateStore), StorageError> {
        let log = RocksLogStore::open(&dir.join("log"), config, self)?;
        let state = RocksStateStore::open(&dir.join("state"), config, self)?;
        Ok((log, state))
    }

    /// Bytes held in the shared block cache now.
    pub fn block_cache_usage(&self) -> usize {
        self.cache.get_usage()
    }

    pub(crate) fn cache(&self) -> &Cache {
        &self.cache
    }

    pub(crate) fn env(&self) -> &Env {
        &self.env
    }
}

impl fmt::Debug for RocksEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksEnv")
            .field("block_cache_usage", &self.cache.get_usage())
            .finish_non_exhaustive()
    }
}

/// Validates `config` for an open.
pub(crate) fn valid(config: &StorageConfig) -> Result<StorageConfig, StorageError> {
    config
        .clone()
        .validate()
        .map_err(|e| StorageError::Other(std::sync::Arc::new(e)))
}
