//! Storage backends for **ha**: the raft log ([`LogStore`]) and the state
//! store ([`StateStore`]) defined in `ha-core`.
//!
//! This build has the in-memory backends only, which are test doubles for
//! tests and the deterministic simulator: [`MemLogStore`] and
//! [`MemStateStore`]. They model durability exactly — what was written but
//! not synced is lost by `crash()` — so crash-recovery logic can be tested
//! without a disk. RocksDB backends will come behind a `rocksdb` feature.
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
//! log.persist(&LogWrite { entries: entries.clone(), hard_state: None, sync: false })?;
//! assert_eq!(log.crash().last_index()?, 0);
//!
//! // A synced write is durable, with everything written before it.
//! let hard_state = HardState { term: 1, vote: 1, commit: 3 };
//! log.persist(&LogWrite { entries: vec![], hard_state: Some(hard_state.clone()), sync: true })?;
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
//! 3. Every backend passes the same conformance suites in [`testing`].
//!
//! [`LogStore`]: ha_core::LogStore
//! [`StateStore`]: ha_core::StateStore
#![deny(missing_docs)]

mod mem;
pub mod testing;

pub use mem::{MemLogStats, MemLogStore, MemStateStore};
