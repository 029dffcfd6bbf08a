//! [`RocksStateStore`]: the ordered state store in a RocksDB instance.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use ha_core::{BatchOp, StateStore, StateView, StorageError, WriteBatch};
use rocksdb::{
    ColumnFamily, DB, DEFAULT_COLUMN_FAMILY_NAME, ReadOptions, SnapshotWithThreadMode, WriteOptions,
};

use super::config::StorageConfig;
use super::db::{DbName, column_family, db_options, ensure_format, flush_on_close, open_db};
use super::env::{RocksEnv, valid};
use crate::kv::{RECORD_END, RECORD_PREFIX};

/// The column family of the state DB that holds ha's own records (the
/// format version), apart from the keys the engine and the state machine
/// write, so that no key of theirs can collide with it or see it in a scan.
pub(super) const META_CF: &str = "ha_meta";
pub(super) const FORMAT_KEY: &[u8] = b"format";

/// The column family that holds the MVCC machine's revision records (keys
/// in `[RECORD_PREFIX, RECORD_END)`); every other key stays in the default
/// one. Records are written in revision order and never rewritten, so in
/// a family of their own each flushed file follows the last and moves
/// down the levels without being rewritten. Mixed with the engine's small,
/// always rewritten keys, every flushed file spanned the whole key space
/// and every compaction rewrote the records: a fifth of a member's CPU
/// under a steady stream of puts.
pub(super) const RECORDS_CF: &str = "kv_records";

/// Whether `key` lives in [`RECORDS_CF`].
fn is_record(key: &[u8]) -> bool {
    key >= RECORD_PREFIX && key < RECORD_END
}

/// One part of a scanned range: whether it lies in [`RECORDS_CF`], its
/// start and its end (exclusive; `None`: unbounded).
type Part<'k> = (bool, &'k [u8], Option<&'k [u8]>);

/// A visitor of pairs that returns whether to go on.
type Visit<'v> = dyn FnMut(&[u8], &[u8]) -> bool + 'v;

/// Scans one part into a visitor.
type ScanPart<'s> =
    dyn FnMut(bool, &[u8], Option<&[u8]>, &mut Visit<'_>) -> Result<(), StorageError> + 's;

/// The parts of `[start, end)` in key order; empty parts are left out.
fn parts<'k>(start: &'k [u8], end: Option<&'k [u8]>) -> Vec<Part<'k>> {
    let before = |bound: &'k [u8]| Some(end.map_or(bound, |e| e.min(bound)));
    let candidates = [
        (false, start, before(RECORD_PREFIX)),
        (true, start.max(RECORD_PREFIX), before(RECORD_END)),
        (false, start.max(RECORD_END), end),
    ];
    candidates
        .into_iter()
        .filter(|(_, lo, hi)| hi.is_none_or(|hi| *lo < hi))
        .collect()
}

/// Scans `[start, end)` across the column families, in key order: `scan`
/// visits one family's part and returns whether `visit` asked to stop.
fn scan_parts(
    start: &[u8],
    end: Option<&[u8]>,
    visit: &mut Visit<'_>,
    scan: &mut ScanPart<'_>,
) -> Result<(), StorageError> {
    for (records, lo, hi) in parts(start, end) {
        let mut stopped = false;
        scan(records, lo, hi, &mut |k, v| {
            let go = visit(k, v);
            stopped = !go;
            go
        })?;
        if stopped {
            break;
        }
    }
    Ok(())
}

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
        let db = open_db(&name, db_options(&config, env), &[META_CF, RECORDS_CF])?;
        ensure_format(&db, &name, META_CF, FORMAT_KEY, DEFAULT_COLUMN_FAMILY_NAME)?;
        column_family(&db, &name, RECORDS_CF)?;
        let shared = Shared { db, name };
        shared.move_records()?;
        Ok(RocksStateStore {
            shared: Arc::new(shared),
        })
    }

    /// Flushes the memtable to a table file (tests damage table files).
    #[cfg(test)]
    pub(crate) fn flush(&self) -> Result<(), StorageError> {
        self.shared.flush_all()
    }
}

/// Both data families' handles, looked up once per call rather than per
/// key.
struct Families<'a> {
    default: &'a ColumnFamily,
    records: &'a ColumnFamily,
}

impl<'a> Families<'a> {
    /// The family `key` lives in.
    fn of(&self, key: &[u8]) -> &'a ColumnFamily {
        self.part(is_record(key))
    }

    fn part(&self, records: bool) -> &'a ColumnFamily {
        if records { self.records } else { self.default }
    }
}

impl Shared {
    fn families(&self) -> Families<'_> {
        Families {
            default: self.family(false),
            records: self.family(true),
        }
    }

    fn family(&self, records: bool) -> &ColumnFamily {
        let name = if records {
            RECORDS_CF
        } else {
            DEFAULT_COLUMN_FAMILY_NAME
        };
        // Both were checked at open.
        self.db
            .cf_handle(name)
            .expect("a column family opened at open")
    }

    /// Flushes the memtables of both data families to table files.
    fn flush_all(&self) -> Result<(), StorageError> {
        for records in [false, true] {
            self.db
                .flush_cf(self.family(records))
                .map_err(|e| self.name.error("flush", e))?;
        }
        Ok(())
    }

    /// Moves records that a state DB written before [`RECORDS_CF`]
    /// existed keeps in the default column family into it, a batch at a
    /// time: each batch puts and deletes together, so a crash part way
    /// leaves every record in one family or the other, and the next open
    /// finishes the move. Nothing to do (one seek) on later opens.
    fn move_records(&self) -> Result<(), StorageError> {
        let default = self.family(false);
        let records = self.family(true);
        let mut moved = false;
        // Each batch starts after the last one's keys, and deletes them
        // with one range: no seek walks over the tombstones of the keys
        // already moved, so a large move stays linear.
        let mut from = RECORD_PREFIX.to_vec();
        loop {
            let mut batch = rocksdb::WriteBatch::default();
            let mut options = ReadOptions::default();
            options.set_iterate_upper_bound(RECORD_END.to_vec());
            let mut iter = self.db.raw_iterator_cf_opt(default, options);
            iter.seek(&from);
            let mut last = None;
            while let Some((key, value)) = iter.item() {
                batch.put_cf(records, key, value);
                last = Some(key.to_vec());
                if batch.size_in_bytes() >= RESTORE_BATCH_BYTES {
                    break;
                }
                iter.next();
            }
            iter.status()
                .map_err(|e| self.name.error("move the records", e))?;
            drop(iter);
            let Some(mut last) = last else {
                break;
            };
            // The smallest key after `last`: the range ends just past it.
            last.push(0);
            batch.delete_range_cf(default, &from, &last);
            moved = true;
            self.db
                .write(batch)
                .map_err(|e| self.name.error("move the records", e))?;
            from = last;
        }
        if moved {
            self.db
                .flush_wal(true)
                .map_err(|e| self.name.error("move the records", e))?;
        }
        Ok(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        flush_on_close(&self.db);
        // `flush_on_close` covers the default family; the records too.
        let _ = self.db.flush_cf(self.family(true));
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
    shared: &'a Shared,
}

impl StateView for RocksView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.snapshot
            .get_cf(self.shared.family(is_record(key)), key)
            .map_err(|e| self.shared.name.error("get", e))
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let shared = self.shared;
        let families = shared.families();
        scan_parts(start, end, visit, &mut |records, lo, hi, visit| {
            let cf = families.part(records);
            scan_with(
                &shared.name,
                &|options| self.snapshot.raw_iterator_cf_opt(cf, options),
                lo,
                hi,
                visit,
            )
        })
    }
}

impl StateStore for RocksStateStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let shared = &*self.shared;
        shared
            .db
            .get_cf(shared.family(is_record(key)), key)
            .map_err(|e| shared.name.error("get", e))
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let shared = &*self.shared;
        match parts(start, end).as_slice() {
            // Within one family an iterator is a point in time already.
            [(records, lo, hi)] => {
                let cf = shared.family(*records);
                scan_with(
                    &shared.name,
                    &|options| shared.db.raw_iterator_cf_opt(cf, options),
                    lo,
                    *hi,
                    visit,
                )
            }
            [] => Ok(()),
            // Across families: one snapshot for every part.
            _ => self.read_consistent(&mut |view| view.scan(start, end, &mut *visit)),
        }
    }

    fn read_consistent(
        &self,
        read: &mut dyn FnMut(&dyn StateView) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let shared = &*self.shared;
        let view = RocksView {
            snapshot: shared.db.snapshot(),
            shared,
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
        // Everything goes, in both families: one range deletion from the
        // first to the last key (there is no largest possible key), plus
        // the last key itself.
        for records in [false, true] {
            let cf = shared.family(records);
            let bounds = {
                let mut iter = shared.db.raw_iterator_cf(cf);
                iter.seek_to_first();
                let first = iter.key().map(<[u8]>::to_vec);
                iter.seek_to_last();
                let last = iter.key().map(<[u8]>::to_vec);
                iter.status().map_err(|e| shared.name.error("restore", e))?;
                first.zip(last)
            };
            if let Some((first, last)) = bounds {
                let mut batch = rocksdb::WriteBatch::default();
                batch.delete_range_cf(cf, first.as_slice(), last.as_slice());
                batch.delete_cf(cf, last.as_slice());
                write(batch)?;
            }
        }
        let families = shared.families();
        let mut batch = rocksdb::WriteBatch::default();
        for pair in pairs {
            let (key, value) = pair?;
            batch.put_cf(families.of(&key), &key, value);
            if batch.size_in_bytes() >= RESTORE_BATCH_BYTES {
                write(std::mem::take(&mut batch))?;
            }
        }
        if !batch.is_empty() {
            write(batch)?;
        }
        shared.flush_all()
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
        let families = shared.families();
        let mut rocks = rocksdb::WriteBatch::default();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { key, value } => rocks.put_cf(families.of(&key), &key, value),
                BatchOp::Delete { key } => rocks.delete_cf(families.of(&key), &key),
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
