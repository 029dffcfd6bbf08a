//! Storage backends for **ha**: the raft log ([`LogStore`]) and the state
//! store ([`StateStore`]) defined in `ha-core`.
//!
//! Two families:
//!
//! - the RocksDB backends, behind the `rocksdb` feature (on by default
//!   here, off in the workspace dependency so that memory-only users never
//!   build RocksDB): `RocksLogStore` and `RocksStateStore`, two RocksDB
//!   instances per member sharing a block cache and a thread pool per
//!   process through a `RocksEnv`, tuned by a `StorageConfig`. What they
//!   store carries format versions and checksums: damaged or unknown data
//!   fails the open (or the read) with a typed error.
//! - the in-memory backends, test doubles for tests and the deterministic
//!   simulator: [`MemLogStore`] and [`MemStateStore`]. They model
//!   durability exactly — what was written but not synced is lost by
//!   `crash()` — so crash-recovery logic can be tested without a disk.
//!
//! A tour:
//!
//! 1. The raft thread makes entries readable at once; the log writer
//!    persists them later, and only a synced write is durable.
//!
//! ```
//! use ha_core::eraftpb::{Entry, HardState};
//! use ha_core::{LogStore, LogWrite};
//! use ha_storage::MemLogStore;
//!
//! # fn main() -> Result<(), ha_core::StorageError> {
//! let log = MemLogStore::new();
//! let entries: Vec<Entry> = (1..=3)
//!     .map(|index| Entry { index, term: 1, ..Default::default() })
//!     .collect();
//! log.append_readable(&entries)?;
//! assert_eq!(log.last_index()?, 3);
//!
//! // Written but not synced: a power failure loses it.
//! log.persist(&LogWrite { snapshot: None, entries: entries.clone(), hard_state: None, sync: false })?;
//! assert_eq!(log.crash().last_index()?, 0);
//!
//! // A synced write is durable, with everything written before it.
//! let hard_state = HardState { term: 1, vote: 1, commit: 3 };
//! log.persist(&LogWrite { snapshot: None, entries: vec![], hard_state: Some(hard_state.clone()), sync: true })?;
//! let after = log.crash();
//! assert_eq!(after.last_index()?, 3);
//! assert_eq!(after.hard_state()?, hard_state);
//! # Ok(())
//! # }
//! ```
//!
//! 2. The state store applies each [`WriteBatch`](ha_core::WriteBatch)
//!    atomically and scans in key order.
//!
//! ```
//! use ha_core::{StateStore, WriteBatch};
//! use ha_storage::MemStateStore;
//!
//! # fn main() -> Result<(), ha_core::StorageError> {
//! let state = MemStateStore::new();
//! let mut batch = WriteBatch::new();
//! batch.put("b", "2");
//! batch.put("a", "1");
//! state.write(batch, true)?;
//!
//! let mut keys = Vec::new();
//! state.scan(b"", None, &mut |key, _value| {
//!     keys.push(key.to_vec());
//!     true
//! })?;
//! assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()]);
//! # Ok(())
//! # }
//! ```
//!
//! 3. On disk: a member's log and state live in two RocksDB instances
//!    under one directory, and come back after a reopen (needs the
//!    `rocksdb` feature).
//!
//! ```
//! # #[cfg(feature = "rocksdb")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ha_core::eraftpb::{Entry, HardState};
//! use ha_core::{LogStore, LogWrite, StateStore, WriteBatch};
//! use ha_storage::{RocksEnv, StorageConfig};
//!
//! let config = StorageConfig::default().validate()?;
//! // One per process: the members opened through it share its block cache.
//! let env = RocksEnv::new(&config)?;
//! let dir = tempfile::tempdir()?;
//!
//! let (log, state) = env.open(dir.path(), &config)?;
//! let entries = vec![Entry { index: 1, term: 1, ..Default::default() }];
//! log.append_readable(&entries)?;
//! let hard_state = HardState { term: 1, vote: 1, commit: 1 };
//! log.persist(&LogWrite { snapshot: None, entries, hard_state: Some(hard_state.clone()), sync: true })?;
//! let mut batch = WriteBatch::new();
//! batch.put("key", "value");
//! state.write(batch, true)?;
//! drop((log, state));
//!
//! let (log, state) = env.open(dir.path(), &config)?;
//! assert_eq!(log.last_index()?, 1);
//! assert_eq!(log.hard_state()?, hard_state);
//! assert_eq!(state.get(b"key")?, Some(b"value".to_vec()));
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "rocksdb"))]
//! # fn main() {}
//! ```
//!
//! 4. The replicated KV's MVCC state machine, [`kv::MvccMachine`], is
//!    written once over [`StateStore`] and runs on every backend.
//!
//! 5. Every backend passes the same conformance suites in [`testing`].
//!
//! [`LogStore`]: ha_core::LogStore
//! [`StateStore`]: ha_core::StateStore
#![deny(missing_docs)]

pub mod kv;
mod mem;
mod misuse;
#[cfg(feature = "rocksdb")]
mod rocks;
pub mod testing;

pub use mem::{MemLogStats, MemLogStore, MemStateStore};
#[cfg(feature = "rocksdb")]
pub use rocks::{
    Compression, RocksEnv, RocksLogStats, RocksLogStore, RocksStateStore, StorageConfig,
};
