//! [`RocksStateStore`]: the ordered state store in a RocksDB instance.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use ha_core::{BatchOp, StateStore, StateView, StorageError, WriteBatch};
use rocksdb::{DB, DEFAULT_COLUMN_FAMILY_NAME, ReadOptions, SnapshotWithThreadMode, WriteOptions};

use super::config::StorageConfig;
use super::db::{DbName, db_options, ensure_format, flush_on_close, open_db};
use super::env::{RocksEnv, valid};

/// The column family of the state DB that holds ha's own records (the
/// format version), apart from the keys the engine and the state machine
/// write, so that no key of theirs can collide with it or see it in a scan.
pub(super) const META_CF: &str = "ha_meta";
pub(super) const FORMAT_KEY: &[u8] = b"format";

/// A [`StateStore`] in a RocksDB instance (the member's *state DB*).
///
/// Keys live in the default column family in bytewise order; each
/// [`WriteBatch`] is one RocksDB write batch, synced to the WAL when asked.
/// A synced write also makes every earlier write durable; a crash loses
/// unsynced batches whole or keeps them whole. Values are stored as given:
/// RocksDB's block checksums detect a damaged file, as
/// [`StorageError::Corrupt`] from the open or the read that meets it.
///
/// A scan reads a consistent snapshot taken when it starts, and its
/// callback may call back into the store.
///
/// Clones share the same database. Open it with [`RocksEnv::open`] (or
/// [`RocksStateStore::open`] for the state alone).
#[derive(Clone)]
pub struct RocksStateStore {
    shared: Arc<Shared>,
}

struct Shared {
    db: DB,
    name: DbName,
}

impl RocksStateStore {
    /// Opens the state DB in `dir`, creating it when `dir` holds no
    /// database, and checks its format.
    ///
    /// # Errors
    ///
    /// As [`RocksEnv::open`].
    pub fn open(dir: &Path, config: &StorageConfig, env: &RocksEnv) -> Result<Self, StorageError> {
        let config = valid(config)?;
        let name = DbName::new("state DB", dir);
        let db = open_db(&name, db_options(&config, env), &[META_CF])?;
        ensure_format(&db, &name, META_CF, FORMAT_KEY, DEFAULT_COLUMN_FAMILY_NAME)?;
        Ok(RocksStateStore {
            shared: Arc::new(Shared { db, name }),
        })
    }

    /// Flushes the memtable to a table file (tests damage table files).
    #[cfg(test)]
    pub(crate) fn flush(&self) -> Result<(), StorageError> {
        self.shared
            .db
            .flush()
            .map_err(|e| self.shared.name.error("flush", e))
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        flush_on_close(&self.db);
    }
}

impl fmt::Debug for RocksStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksStateStore")
            .field("path", &self.shared.name.path())
            .finish_non_exhaustive()
    }
}

/// Bytes of pairs per write batch while restoring a snapshot.
const RESTORE_BATCH_BYTES: usize = 4 << 20;

/// Visits `[start, end)` with a raw iterator made by `iter`.
fn scan_with<'a>(
    name: &DbName,
    make: &dyn Fn(ReadOptions) -> rocksdb::DBRawIterator<'a>,
    start: &[u8],
    end: Option<&[u8]>,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), StorageError> {
    if end.is_some_and(|end| start >= end) {
        return Ok(());
    }
    let mut options = ReadOptions::default();
    if let Some(end) = end {
        options.set_iterate_upper_bound(end.to_vec());
    }
    let mut iter = make(options);
    iter.seek(start);
    while let Some((key, value)) = iter.item() {
        if !visit(key, value) {
            return Ok(());
        }
        iter.next();
    }
    // An iterator stops early on an error, which only `status` tells.
    iter.status().map_err(|e| name.error("scan", e))
}

struct RocksView<'a> {
    snapshot: SnapshotWithThreadMode<'a, DB>,
    name: &'a DbName,
}

impl StateView for RocksView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.snapshot
            .get(key)
            .map_err(|e| self.name.error("get", e))
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        scan_with(
            self.name,
            &|options| self.snapshot.raw_iterator_opt(options),
            start,
            end,
            visit,
        )
    }
}

impl StateStore for RocksStateStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let shared = &*self.shared;
        shared.db.get(key).map_err(|e| shared.name.error("get", e))
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let shared = &*self.shared;
        scan_with(
            &shared.name,
            &|options| shared.db.raw_iterator_opt(options),
            start,
            end,
            visit,
        )
    }

    fn read_consistent(
        &self,
        read: &mut dyn FnMut(&dyn StateView) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let shared = &*self.shared;
        let view = RocksView {
            snapshot: shared.db.snapshot(),
            name: &shared.name,
        };
        read(&view)
    }

    fn restore(
        &self,
        pairs: &mut dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>>,
    ) -> Result<(), StorageError> {
        let shared = &*self.shared;
        // Bypassing the WAL: the flush at the end writes the data once, as
        // table files, and makes it durable (the engine's pending-install
        // marker covers a crash before that).
        let mut no_wal = WriteOptions::default();
        no_wal.disable_wal(true);
        let write = |batch: rocksdb::WriteBatch| {
            shared
                .db
                .write_opt(batch, &no_wal)
                .map_err(|e| shared.name.error("restore", e))
        };
        // Everything goes: one range deletion from the first to the last key
        // (there is no largest possible key), plus the last key itself.
        let bounds = {
            let mut iter = shared.db.raw_iterator();
            iter.seek_to_first();
            let first = iter.key().map(<[u8]>::to_vec);
            iter.seek_to_last();
            let last = iter.key().map(<[u8]>::to_vec);
            iter.status().map_err(|e| shared.name.error("restore", e))?;
            first.zip(last)
        };
        if let Some((first, last)) = bounds {
            let mut batch = rocksdb::WriteBatch::default();
            batch.delete_range(first.as_slice(), last.as_slice());
            batch.delete(last.as_slice());
            write(batch)?;
        }
        let mut batch = rocksdb::WriteBatch::default();
        for pair in pairs {
            let (key, value) = pair?;
            batch.put(key, value);
            if batch.size_in_bytes() >= RESTORE_BATCH_BYTES {
                write(std::mem::take(&mut batch))?;
            }
        }
        if !batch.is_empty() {
            write(batch)?;
        }
        shared
            .db
            .flush()
            .map_err(|e| shared.name.error("restore", e))
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let shared = &*self.shared;
        if batch.is_empty() {
            if sync {
                // Nothing to write, but earlier writes must become durable.
                shared
                    .db
                    .flush_wal(true)
                    .map_err(|e| shared.name.error("write", e))?;
            }
            return Ok(());
        }
        let mut rocks = rocksdb::WriteBatch::default();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { key, value } => rocks.put(key, value),
                BatchOp::Delete { key } => rocks.delete(key),
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        shared
            .db
            .write_opt(rocks, &options)
            .map_err(|e| shared.name.error("write", e))
    }
}
