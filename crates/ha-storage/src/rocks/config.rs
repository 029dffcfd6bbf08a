//! [`StorageConfig`]: the tuning of the RocksDB backends.

use ha_core::ConfigError;
use serde::{Deserialize, Serialize};

const MIB: u64 = 1 << 20;

/// How the RocksDB backends are tuned. Every field has a default that suits
/// a small HA group (a few members, a few GiB of state). The shared block
/// cache is sized by [`RocksEnv::new`](crate::RocksEnv::new); the other
/// fields apply to each database opened.
///
/// ```
/// use ha_storage::{Compression, StorageConfig};
///
/// let config: StorageConfig = serde_json::from_str(r#"{ "compression": "zstd" }"#)?;
/// let config = config.validate()?;
/// assert_eq!(config.compression, Compression::Zstd);
/// assert_eq!(config.block_cache_bytes, StorageConfig::default().block_cache_bytes);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Size of the block cache that every database opened through one
    /// [`RocksEnv`](crate::RocksEnv) shares, in bytes. Default 64 MiB.
    pub block_cache_bytes: u64,
    /// Size of one memtable of each database, in bytes: what is buffered in
    /// memory (and in the WAL) before it is flushed to a table file.
    /// Default 16 MiB.
    pub write_buffer_bytes: u64,
    /// Flushes and compactions that may run at once, per database. The
    /// background thread pool is shared by every database in the process
    /// and grows to the largest value opened. Default 2.
    pub max_background_jobs: u32,
    /// Compression of table files. Default [`Compression::Lz4`].
    pub compression: Compression,
    /// Bytes of recently persisted log entries that the log store keeps in
    /// memory besides the not yet persisted ones (which it always keeps),
    /// so that raft's reads of the log's tail (replication, apply) do not
    /// touch RocksDB. Default 8 MiB; 0 serves every persisted entry from
    /// RocksDB.
    pub log_cache_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            block_cache_bytes: 64 * MIB,
            write_buffer_bytes: 16 * MIB,
            max_background_jobs: 2,
            compression: Compression::Lz4,
            log_cache_bytes: 8 * MIB,
        }
    }
}

/// Compression of RocksDB table files (the WAL is never compressed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Compression {
    /// No compression.
    None,
    /// LZ4: fast, a moderate ratio.
    #[default]
    Lz4,
    /// Zstandard: a better ratio for more CPU.
    Zstd,
}

impl StorageConfig {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field out of range.
    pub fn validate(self) -> Result<Self, ConfigError> {
        fn range(
            field: &'static str,
            value: u64,
            min: u64,
            max: u64,
            expected: &'static str,
        ) -> Result<(), ConfigError> {
            if value == 0 && min > 0 {
                return Err(ConfigError::Zero { field });
            }
            if value < min || value > max {
                return Err(ConfigError::OutOfRange {
                    field,
                    value,
                    expected,
                });
            }
            Ok(())
        }
        // RocksDB takes sizes as `size_t`.
        let max_size = u64::try_from(usize::MAX).unwrap_or(u64::MAX);
        range(
            "block_cache_bytes",
            self.block_cache_bytes,
            1 << 20,
            max_size,
            "at least 1 MiB and addressable",
        )?;
        range(
            "write_buffer_bytes",
            self.write_buffer_bytes,
            64 << 10,
            (1 << 30).min(max_size),
            "64 KiB to 1 GiB",
        )?;
        range(
            "max_background_jobs",
            u64::from(self.max_background_jobs),
            1,
            64,
            "1 to 64",
        )?;
        range(
            "log_cache_bytes",
            self.log_cache_bytes,
            0,
            max_size,
            "addressable",
        )?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(
            StorageConfig::default().validate(),
            Ok(StorageConfig::default())
        );
    }

    #[test]
    fn validate_names_the_bad_field() {
        let zero_jobs = StorageConfig {
            max_background_jobs: 0,
            ..Default::default()
        };
        assert_eq!(
            zero_jobs.validate(),
            Err(ConfigError::Zero {
                field: "max_background_jobs"
            })
        );
        let tiny_cache = StorageConfig {
            block_cache_bytes: 1024,
            ..Default::default()
        };
        assert!(matches!(
            tiny_cache.validate(),
            Err(ConfigError::OutOfRange {
                field: "block_cache_bytes",
                value: 1024,
                ..
            })
        ));
        let huge_buffer = StorageConfig {
            write_buffer_bytes: 2 << 30,
            ..Default::default()
        };
        assert!(matches!(
            huge_buffer.validate(),
            Err(ConfigError::OutOfRange {
                field: "write_buffer_bytes",
                ..
            })
        ));
    }

    #[test]
    fn missing_fields_take_their_defaults() {
        let config: StorageConfig = serde_json::from_str(r#"{ "log_cache_bytes": 0 }"#).unwrap();
        assert_eq!(
            config,
            StorageConfig {
                log_cache_bytes: 0,
                ..Default::default()
            }
        );
        let round_trip: StorageConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(round_trip, config);
    }
}
