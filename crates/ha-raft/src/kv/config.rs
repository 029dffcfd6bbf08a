//! [`KvConfig`]: the KV's limits, space quota and automatic compaction.

use std::time::Duration;

use ha_core::ConfigError;
use serde::{Deserialize, Serialize};

/// Automatic compaction, proposed by the leader. Off by default, as in
/// etcd (`--auto-compaction-retention=0`): history grows until the
/// application compacts or the space quota refuses writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum AutoCompaction {
    /// Never compact automatically.
    #[default]
    Off,
    /// Keep about `retention` of history: every `retention / 10` the
    /// leader notes the revision, and compacts to the one it noted
    /// `retention` ago (etcd's periodic mode).
    Periodic {
        /// How much history to keep, e.g. `"1h"`.
        #[serde(with = "humantime_serde")]
        retention: Duration,
    },
    /// Keep the last `retention` revisions, checked every `interval`
    /// (etcd's revision mode checks every 5 minutes).
    Revision {
        /// Revisions to keep.
        retention: u64,
        /// How often the leader checks, e.g. `"5m"`.
        #[serde(with = "humantime_serde")]
        interval: Duration,
    },
}

/// Configuration of the replicated KV. Defaults are etcd's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KvConfig {
    /// Longest key, bytes (default 1.5 MiB: etcd bounds keys only by the
    /// request size).
    pub max_key_bytes: usize,
    /// Longest value, bytes (default 1.5 MiB, likewise).
    pub max_value_bytes: usize,
    /// Largest encoded request, bytes (default 1.5 MiB, etcd's
    /// `--max-request-bytes`). Must fit the engine's `max_command_size`.
    pub max_request_bytes: usize,
    /// Most operations in one transaction branch (default 128, etcd's
    /// `--max-txn-ops`).
    pub max_txn_ops: usize,
    /// Space quota over the bytes of stored records, history included
    /// (default 2 GiB, etcd's `--quota-backend-bytes`; 0: none). Writes
    /// beyond it fail with `NoSpace`; reads, deletes and compaction work.
    pub quota_bytes: u64,
    /// Automatic compaction (default off).
    pub auto_compaction: AutoCompaction,
    /// Responses buffered per watcher (default 128). A watcher whose
    /// buffer is full when new events arrive is cancelled with
    /// `WatchCancelled { resume_revision, reason: SlowConsumer }`: the
    /// member never waits for a watcher.
    pub watch_buffer: usize,
    /// How long a watch that asked for `progress_notify` may stay idle
    /// before it gets a progress notification (default 10 minutes, as in
    /// etcd).
    #[serde(with = "humantime_serde")]
    pub watch_progress_interval: Duration,
    /// Most history events read under one hold of the state machine while
    /// catching up watchers that start in the past (default 1,000): the
    /// apply thread waits at most that long.
    pub watch_catch_up_chunk: usize,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            max_key_bytes: 1536 * 1024,
            max_value_bytes: 1536 * 1024,
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            quota_bytes: 2 * 1024 * 1024 * 1024,
            auto_compaction: AutoCompaction::Off,
            watch_buffer: 128,
            watch_progress_interval: Duration::from_secs(600),
            watch_catch_up_chunk: 1000,
        }
    }
}

impl KvConfig {
    /// Checks the configuration.
    ///
    /// # Errors
    /// The first field that is zero or out of range.
    pub fn validate(self) -> Result<Self, ConfigError> {
        for (field, value) in [
            ("max_key_bytes", self.max_key_bytes),
            ("max_value_bytes", self.max_value_bytes),
            ("max_request_bytes", self.max_request_bytes),
            ("max_txn_ops", self.max_txn_ops),
            ("watch_buffer", self.watch_buffer),
            ("watch_catch_up_chunk", self.watch_catch_up_chunk),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        for (field, value) in [
            ("max_key_bytes", self.max_key_bytes),
            ("max_value_bytes", self.max_value_bytes),
        ] {
            if value > self.max_request_bytes {
                return Err(ConfigError::OutOfRange {
                    field,
                    value: value as u64,
                    expected: "at most max_request_bytes",
                });
            }
        }
        if self.watch_progress_interval < Duration::from_millis(10) {
            return Err(ConfigError::OutOfRange {
                field: "watch_progress_interval",
                value: self.watch_progress_interval.as_millis() as u64,
                expected: "at least 10ms",
            });
        }
        match self.auto_compaction {
            AutoCompaction::Off => {}
            AutoCompaction::Periodic { retention } => {
                if retention < Duration::from_millis(100) {
                    return Err(ConfigError::OutOfRange {
                        field: "auto_compaction.retention",
                        value: retention.as_millis() as u64,
                        expected: "at least 100ms",
                    });
                }
            }
            AutoCompaction::Revision {
                retention,
                interval,
            } => {
                if retention == 0 {
                    return Err(ConfigError::Zero {
                        field: "auto_compaction.retention",
                    });
                }
                if interval.is_zero() {
                    return Err(ConfigError::Zero {
                        field: "auto_compaction.interval",
                    });
                }
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_serde_fills_missing_fields() {
        assert!(KvConfig::default().validate().is_ok());
        let c: KvConfig = serde_json::from_str(
            r#"{"max_txn_ops": 64, "auto_compaction": {"mode": "periodic", "retention": "1h"}}"#,
        )
        .expect("parses");
        assert_eq!(c.max_txn_ops, 64);
        assert_eq!(c.max_request_bytes, KvConfig::default().max_request_bytes);
        assert_eq!(
            c.auto_compaction,
            AutoCompaction::Periodic {
                retention: Duration::from_secs(3600)
            }
        );
    }

    #[test]
    fn validate_names_the_bad_field() {
        let bad = KvConfig {
            max_txn_ops: 0,
            ..KvConfig::default()
        };
        assert_eq!(
            bad.validate(),
            Err(ConfigError::Zero {
                field: "max_txn_ops"
            })
        );
        let bad = KvConfig {
            max_key_bytes: 10,
            max_request_bytes: 5,
            ..KvConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::OutOfRange {
                field: "max_key_bytes",
                ..
            })
        ));
        let bad = KvConfig {
            watch_buffer: 0,
            ..KvConfig::default()
        };
        assert_eq!(
            bad.validate(),
            Err(ConfigError::Zero {
                field: "watch_buffer"
            })
        );
        let bad = KvConfig {
            watch_progress_interval: Duration::from_millis(1),
            ..KvConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::OutOfRange {
                field: "watch_progress_interval",
                ..
            })
        ));
        let c: KvConfig =
            serde_json::from_str(r#"{"watch_progress_interval": "250ms"}"#).expect("parses");
        assert_eq!(c.watch_progress_interval, Duration::from_millis(250));
    }
}
