//! [`RocksLogStore`]: the raft log in a RocksDB instance, with its
//! readable tail in memory.

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use ha_core::eraftpb::{Entry, HardState};
use ha_core::{LogPoint, LogStore, LogWrite, MemberIdentity, StorageError};
use parking_lot::Mutex;
use prost::Message;
use rocksdb::statistics::Ticker;
use rocksdb::{DB, DEFAULT_COLUMN_FAMILY_NAME, Options, ReadOptions, WriteOptions};

use super::codec::{
    decode_entry, decode_identity, decode_message, decode_pair, encode_identity, encode_pair, seal,
    unseal,
};
use super::config::StorageConfig;
use super::db::{DbName, db_options, ensure_format, flush_on_close, open_db};
use super::env::{RocksEnv, valid};
use crate::misuse::{Misuse, check_after_snapshot, check_contiguous};

// The log DB holds everything in its default column family: a few
// metadata records under keys starting with 0x00, and the entries under
// 0x01 followed by the big-endian index, so that keys sort by index.
pub(super) const FORMAT_KEY: &[u8] = b"\x00format";
pub(super) const IDENTITY_KEY: &[u8] = b"\x00identity";
pub(super) const HARD_STATE_KEY: &[u8] = b"\x00hard_state";
/// The compaction point: the index and term of the last compacted entry.
pub(super) const COMPACTED_KEY: &[u8] = b"\x00compacted";
/// Present while a snapshot install is under way (see the engine).
pub(super) const PENDING_INSTALL_KEY: &[u8] = b"\x00pending_install";
const ENTRY_PREFIX: u8 = 0x01;
const ENTRIES_END: [u8; 1] = [ENTRY_PREFIX + 1];

pub(super) fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [0; 9];
    key[0] = ENTRY_PREFIX;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The index an entry key names, if `key` is one.
fn key_index(key: &[u8]) -> Option<u64> {
    let (&prefix, index) = key.split_first()?;
    let index: [u8; 8] = index.try_into().ok()?;
    (prefix == ENTRY_PREFIX).then_some(u64::from_be_bytes(index))
}

/// Counters of a [`RocksLogStore`] since it was opened, for benchmarks
/// (entries per sync) and for tests that check batching.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RocksLogStats {
    /// Successful [`LogStore::persist`] calls.
    pub persist_calls: u64,
    /// Successful [`LogStore::persist`] calls with `sync` set.
    pub syncs: u64,
    /// Entries passed to successful [`LogStore::persist`] calls.
    pub entries_persisted: u64,
}

/// A [`LogStore`] in a RocksDB instance (the member's *log DB*).
///
/// - [`LogStore::append_readable`] only touches memory: it puts the entries
///   into the readable tail, which holds every entry not persisted yet plus
///   up to [`StorageConfig::log_cache_bytes`] of recently persisted ones.
///   Reads serve the tail from memory and older entries from RocksDB.
/// - [`LogStore::persist`] writes one RocksDB write batch — the entries, a
///   range deletion of any stored entries past the last one when the write
///   truncates the log, and the hard state — synced to the WAL when `sync`
///   is set. A synced write also makes every earlier write durable (they
///   precede it in the WAL); a crash loses unsynced writes whole or keeps
///   them whole, never part of one.
/// - [`LogStore::hard_state`] answers with the durable hard state: the one
///   found on open, or the latest one written before the last sync.
/// - Every value carries a CRC32 of its key and payload; a mismatch is
///   [`StorageError::Corrupt`] on open (for the metadata and the first and
///   last entries) or on the read that meets it.
///
/// Clones share the same database. Open it with [`RocksEnv::open`] (or
/// [`RocksLogStore::open`] for the log alone).
#[derive(Clone)]
pub struct RocksLogStore {
    shared: Arc<Shared>,
}

struct Shared {
    db: DB,
    name: DbName,
    /// The options the database was opened with; they hold the statistics
    /// RocksDB keeps (the WAL-sync ticker).
    options: Options,
    /// Bytes of persisted entries the tail keeps.
    cache_budget: u64,
    /// Serialises the writers (persist, set_identity, compact), which each
    /// read the stored log's shape, write, and then record the new shape.
    /// Taken before `view`.
    writer: Mutex<()>,
    view: Mutex<View>,
}

/// What the reads see. Entries in `[first, tail_first)` are stored in
/// RocksDB exactly as the readable log holds them; entries in
/// `[tail_first, last]` are in `tail`.
struct View {
    first: u64,
    /// Term of entry `first - 1`.
    compacted_term: u64,
    /// Last index of the readable log.
    last: u64,
    tail: VecDeque<Cached>,
    tail_bytes: u64,
    /// Last index of the entries stored in RocksDB (which may differ from
    /// `last` until the log writer catches up).
    stored_last: u64,
    /// The hard state of the latest write, durable or not.
    written_hard_state: HardState,
    durable_hard_state: HardState,
    identity: Option<MemberIdentity>,
    pending_install: Option<Vec<u8>>,
    /// The readable log restarted after a snapshot that is not persisted
    /// yet: writes queued before it are obsolete and checked against
    /// nothing (the restart deletes what they store).
    restart_pending: bool,
    stats: RocksLogStats,
}

struct Cached {
    entry: Entry,
    /// `entry.encoded_len()`, the size raft's limits count.
    size: u64,
    /// Whether RocksDB holds this very entry; only such entries may leave
    /// the tail.
    stored: bool,
}

impl View {
    fn tail_first(&self) -> u64 {
        self.last + 1 - self.tail.len() as u64
    }

    fn cached(&self, index: u64) -> Option<&Cached> {
        let offset = usize::try_from(index.checked_sub(self.tail_first())?).ok()?;
        self.tail.get(offset)
    }

    fn cached_mut(&mut self, index: u64) -> Option<&mut Cached> {
        let offset = usize::try_from(index.checked_sub(self.tail_first())?).ok()?;
        self.tail.get_mut(offset)
    }

    /// Drops entries from the tail's front while it holds more than
    /// `budget` bytes and the front entry is stored.
    fn evict(&mut self, budget: u64) {
        while self.tail_bytes > budget && self.tail.front().is_some_and(|c| c.stored) {
            if let Some(c) = self.tail.pop_front() {
                self.tail_bytes -= c.size;
            }
        }
    }

    /// Drops the tail's entries from `index` on.
    fn truncate_tail(&mut self, index: u64) {
        while self.last >= index && !self.tail.is_empty() {
            if let Some(c) = self.tail.pop_back() {
                self.tail_bytes -= c.size;
            }
            self.last -= 1;
        }
    }
}

/// Adds `entry` to `out` unless that takes the total past `max_size` —
/// raft-rs's `limit_size`: the first entry always, then entries while the
/// running total of encoded sizes stays within the limit. False when full.
fn push_limited(
    out: &mut Vec<Entry>,
    total: &mut u64,
    entry: Entry,
    size: u64,
    max_size: Option<u64>,
) -> bool {
    *total = total.saturating_add(size);
    if !out.is_empty() && max_size.is_some_and(|max| *total > max) {
        return false;
    }
    out.push(entry);
    true
}

impl RocksLogStore {
    /// Opens the log DB in `dir`, creating it when `dir` holds no database,
    /// and checks its format, its metadata, and its first and last entries.
    ///
    /// # Errors
    ///
    /// As [`RocksEnv::open`].
    pub fn open(dir: &Path, config: &StorageConfig, env: &RocksEnv) -> Result<Self, StorageError> {
        let config = valid(config)?;
        let name = DbName::new("log DB", dir);
        let mut options = db_options(&config, env);
        options.enable_statistics();
        let db = open_db(&name, options.clone(), &[])?;
        ensure_format(
            &db,
            &name,
            DEFAULT_COLUMN_FAMILY_NAME,
            FORMAT_KEY,
            DEFAULT_COLUMN_FAMILY_NAME,
        )?;

        let read = |key: &[u8]| db.get(key).map_err(|e| name.error("read", e));
        let identity = match read(IDENTITY_KEY)? {
            Some(value) => Some(decode_identity(IDENTITY_KEY, &value, &|| {
                name.record("the member identity")
            })?),
            None => None,
        };
        let hard_state = match read(HARD_STATE_KEY)? {
            Some(value) => {
                decode_message(HARD_STATE_KEY, &value, &|| name.record("the hard state"))?
            }
            None => HardState::default(),
        };
        let pending_install = match read(PENDING_INSTALL_KEY)? {
            Some(value) => Some(
                unseal(PENDING_INSTALL_KEY, &value, &|| {
                    name.record("the pending-install marker")
                })?
                .to_vec(),
            ),
            None => None,
        };
        let (compacted, compacted_term) = match read(COMPACTED_KEY)? {
            Some(value) => decode_pair(COMPACTED_KEY, &value, &|| {
                name.record("the compaction point")
            })?,
            None => (0, 0),
        };
        let first = compacted.checked_add(1).ok_or_else(|| {
            StorageError::corrupt(name.record("the compaction point"), "index overflows")
        })?;
        let last = match stored_bounds(&db, &name)? {
            None => compacted,
            Some((low, high)) => {
                if low != first {
                    return Err(StorageError::corrupt(
                        name.to_string(),
                        format!(
                            "the entries start at {low}, but the log was compacted through {compacted}"
                        ),
                    ));
                }
                high
            }
        };
        let store = RocksLogStore {
            shared: Arc::new(Shared {
                db,
                name,
                options,
                cache_budget: config.log_cache_bytes,
                writer: Mutex::new(()),
                view: Mutex::new(View {
                    first,
                    compacted_term,
                    last,
                    tail: VecDeque::new(),
                    tail_bytes: 0,
                    stored_last: last,
                    written_hard_state: hard_state.clone(),
                    durable_hard_state: hard_state,
                    identity,
                    pending_install,
                    restart_pending: false,
                    stats: RocksLogStats::default(),
                }),
            }),
        };
        // Decode the first and last entries now: a damaged tail is reported
        // on open rather than when raft first asks for the last term.
        if last >= first {
            let view = store.shared.view.lock();
            store.shared.read_entry(&view, first)?;
            store.shared.read_entry(&view, last)?;
        }
        Ok(store)
    }

    /// Drops the entries up to and including `through`; `term(through)`
    /// keeps answering (as the compaction point). Compacting at or below
    /// the current compaction point does nothing.
    ///
    /// The deletion and the new compaction point are one write batch, not
    /// synced: a crash may undo the compaction, whole.
    ///
    /// # Errors
    ///
    /// [`StorageError::Other`] when `through` is past the last stored or
    /// the last readable index, or when entries at or below it are not
    /// persisted yet; RocksDB's errors as [`RocksEnv::open`] lists them.
    pub fn compact(&self, through: u64) -> Result<(), StorageError> {
        let shared = &*self.shared;
        let _writer = shared.writer.lock();
        let mut view = shared.view.lock();
        if through < view.first {
            return Ok(());
        }
        let refuse = |reason| Err(Misuse::CannotCompact { through, reason }.into());
        if through > view.stored_last {
            return refuse("it is past the last persisted index");
        }
        if through > view.last {
            return refuse("it is past the last readable index");
        }
        let unpersisted = view
            .tail
            .iter()
            .take_while(|c| c.entry.index <= through)
            .any(|c| !c.stored);
        if unpersisted {
            return refuse("entries at or below it are not persisted yet");
        }
        let term = shared.term(&view, through)?;
        let Some(new_first) = through.checked_add(1) else {
            return refuse("the index overflows");
        };
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range(entry_key(view.first), entry_key(new_first));
        batch.put(COMPACTED_KEY, encode_pair(COMPACTED_KEY, (through, term)));
        // The view moves first, so no read looks for a deleted entry; the
        // write happens without it, so readers (the raft thread) never
        // wait for RocksDB here. Should the write fail, the entries stay
        // on disk and the next open starts from the old compaction point.
        while view.tail.front().is_some_and(|c| c.entry.index <= through) {
            if let Some(c) = view.tail.pop_front() {
                view.tail_bytes -= c.size;
            }
        }
        view.first = new_first;
        view.compacted_term = term;
        drop(view);
        shared.write(batch, false, "compact")
    }

    /// The counters since the store was opened.
    pub fn stats(&self) -> RocksLogStats {
        self.shared.view.lock().stats
    }

    /// How many times RocksDB synced this database's WAL since it was
    /// opened (its `rocksdb.wal.synced` ticker): at least one per synced
    /// [`LogStore::persist`] or [`LogStore::set_identity`].
    pub fn wal_syncs(&self) -> u64 {
        self.shared.options.get_ticker_count(Ticker::WalFileSynced)
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

impl Shared {
    fn write(
        &self,
        batch: rocksdb::WriteBatch,
        sync: bool,
        op: &'static str,
    ) -> Result<(), StorageError> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| self.name.error(op, e))
    }

    fn missing(&self, view: &View, index: u64) -> StorageError {
        StorageError::corrupt(
            self.name.record(format!("log entry {index}")),
            format!(
                "missing, although the log holds entries {} to {}",
                view.first, view.last
            ),
        )
    }

    /// Reads a stored entry; the caller has checked that it is readable
    /// and not in the tail.
    fn read_entry(&self, view: &View, index: u64) -> Result<Entry, StorageError> {
        let key = entry_key(index);
        let value = self
            .db
            .get_pinned(key)
            .map_err(|e| self.name.error("read an entry", e))?;
        let value = value.ok_or_else(|| self.missing(view, index))?;
        decode_entry(&key, index, &value, &|| {
            self.name.record(format!("log entry {index}"))
        })
    }

    fn term(&self, view: &View, index: u64) -> Result<u64, StorageError> {
        // `first >= 1`, so `first - 1` cannot underflow.
        if index == view.first - 1 {
            return Ok(view.compacted_term);
        }
        if index < view.first {
            return Err(StorageError::Compacted {
                first_index: view.first,
            });
        }
        if index > view.last {
            return Err(StorageError::Unavailable { index });
        }
        match view.cached(index) {
            Some(c) => Ok(c.entry.term),
            None => Ok(self.read_entry(view, index)?.term),
        }
    }

    /// Appends the stored entries `[low, high)` to `out` within
    /// `max_size`; false when `out` is full.
    fn read_stored(
        &self,
        view: &View,
        (low, high): (u64, u64),
        out: &mut Vec<Entry>,
        total: &mut u64,
        max_size: Option<u64>,
    ) -> Result<bool, StorageError> {
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(entry_key(high).to_vec());
        let mut iter = self.db.raw_iterator_opt(options);
        iter.seek(entry_key(low));
        for index in low..high {
            let Some((key, value)) = iter.item() else {
                iter.status()
                    .map_err(|e| self.name.error("read entries", e))?;
                return Err(self.missing(view, index));
            };
            if key_index(key) != Some(index) {
                return Err(self.missing(view, index));
            }
            let entry = decode_entry(key, index, value, &|| {
                self.name.record(format!("log entry {index}"))
            })?;
            let size = entry.encoded_len() as u64;
            if !push_limited(out, total, entry, size, max_size) {
                return Ok(false);
            }
            iter.next();
        }
        Ok(true)
    }
}

/// The first and last stored entry indexes, if any entry is stored.
fn stored_bounds(db: &DB, name: &DbName) -> Result<Option<(u64, u64)>, StorageError> {
    let mut options = ReadOptions::default();
    options.set_iterate_lower_bound(vec![ENTRY_PREFIX]);
    options.set_iterate_upper_bound(ENTRIES_END.to_vec());
    let mut iter = db.raw_iterator_opt(options);
    let mut index_here = |seek_last: bool| -> Result<Option<u64>, StorageError> {
        if seek_last {
            iter.seek_to_last();
        } else {
            iter.seek_to_first();
        }
        let Some(key) = iter.key() else {
            iter.status()
                .map_err(|e| name.error("scan the entries", e))?;
            return Ok(None);
        };
        key_index(key).map(Some).ok_or_else(|| {
            StorageError::corrupt(
                name.to_string(),
                format!("a malformed entry key {key:02x?}"),
            )
        })
    };
    let Some(low) = index_here(false)? else {
        return Ok(None);
    };
    let high = index_here(true)?.unwrap_or(low);
    Ok(Some((low, high)))
}

impl Shared {
    /// A [`LogWrite`] that restarts the log after an installed snapshot:
    /// every stored entry goes, the snapshot point becomes the compaction
    /// point and the pending-install marker is cleared, with the write's
    /// entries and hard state, in one batch.
    fn persist_restart(&self, point: LogPoint, write: &LogWrite) -> Result<(), StorageError> {
        let _writer = self.writer.lock();
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range(entry_key(0).as_slice(), ENTRIES_END.as_slice());
        batch.put(
            COMPACTED_KEY,
            encode_pair(COMPACTED_KEY, (point.index, point.term)),
        );
        batch.delete(PENDING_INSTALL_KEY);
        for entry in &write.entries {
            let key = entry_key(entry.index);
            batch.put(key, seal(&key, entry.encode_to_vec()));
        }
        if let Some(hs) = &write.hard_state {
            batch.put(HARD_STATE_KEY, seal(HARD_STATE_KEY, hs.encode_to_vec()));
        }
        self.write(batch, write.sync, "persist")?;
        let mut view = self.view.lock();
        view.stored_last = point.index;
        view.pending_install = None;
        view.restart_pending = false;
        view.record_persist(write, self.cache_budget);
        Ok(())
    }
}

impl View {
    /// Records a write that RocksDB now holds: which tail entries are
    /// stored, the hard state, the counters.
    fn record_persist(&mut self, write: &LogWrite, cache_budget: u64) {
        if let Some(last) = write.entries.last() {
            self.stored_last = last.index;
        }
        for entry in &write.entries {
            if let Some(c) = self.cached_mut(entry.index) {
                // The same index and term is the same entry (raft's log
                // matching: a leader writes one entry per index in its
                // term), so the terms decide whether the cached entry is
                // the one just stored or a newer one that replaced it; no
                // need to compare the payloads byte by byte.
                c.stored = c.entry.term == entry.term;
            }
        }
        if let Some(hs) = &write.hard_state {
            self.written_hard_state = hs.clone();
        }
        if write.sync {
            self.durable_hard_state = self.written_hard_state.clone();
            self.stats.syncs += 1;
        }
        self.stats.persist_calls += 1;
        self.stats.entries_persisted += write.entries.len() as u64;
        self.evict(cache_budget);
    }
}

impl fmt::Debug for RocksLogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `try_lock`: formatting must not deadlock if a caller holds the lock.
        let mut s = f.debug_struct("RocksLogStore");
        s.field("path", &self.shared.name.path());
        if let Some(view) = self.shared.view.try_lock() {
            s.field("first_index", &view.first)
                .field("last_index", &view.last)
                .field("stored_last_index", &view.stored_last)
                .field("tail_entries", &view.tail.len())
                .field("durable_hard_state", &view.durable_hard_state);
        }
        s.finish_non_exhaustive()
    }
}

impl LogStore for RocksLogStore {
    fn identity(&self) -> Result<Option<MemberIdentity>, StorageError> {
        Ok(self.shared.view.lock().identity.clone())
    }

    fn set_identity(&self, identity: &MemberIdentity) -> Result<(), StorageError> {
        let shared = &*self.shared;
        let _writer = shared.writer.lock();
        let mut batch = rocksdb::WriteBatch::default();
        batch.put(IDENTITY_KEY, encode_identity(IDENTITY_KEY, identity));
        shared.write(batch, true, "set_identity")?;
        let mut view = shared.view.lock();
        view.identity = Some(identity.clone());
        // The sync made every earlier write durable too.
        view.durable_hard_state = view.written_hard_state.clone();
        Ok(())
    }

    fn hard_state(&self) -> Result<HardState, StorageError> {
        Ok(self.shared.view.lock().durable_hard_state.clone())
    }

    fn first_index(&self) -> Result<u64, StorageError> {
        Ok(self.shared.view.lock().first)
    }

    fn last_index(&self) -> Result<u64, StorageError> {
        Ok(self.shared.view.lock().last)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        let view = self.shared.view.lock();
        self.shared.term(&view, index)
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        // The view stays locked while RocksDB is read, so that a compaction
        // cannot delete the entries in between.
        let view = self.shared.view.lock();
        if low > high {
            return Err(Misuse::InvertedRange { low, high }.into());
        }
        if low < view.first {
            return Err(StorageError::Compacted {
                first_index: view.first,
            });
        }
        if high > view.last + 1 {
            return Err(StorageError::Unavailable {
                index: low.max(view.last + 1),
            });
        }
        let mut out = Vec::new();
        let mut total = 0;
        let tail_first = view.tail_first();
        if low < tail_first {
            let stored = (low, high.min(tail_first));
            if !self
                .shared
                .read_stored(&view, stored, &mut out, &mut total, max_size)?
            {
                return Ok(out);
            }
        }
        for index in low.max(tail_first)..high {
            let Some(c) = view.cached(index) else {
                break;
            };
            if !push_limited(&mut out, &mut total, c.entry.clone(), c.size, max_size) {
                break;
            }
        }
        Ok(out)
    }

    fn append_readable(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        check_contiguous(entries)?;
        let mut view = self.shared.view.lock();
        if first.index < view.first {
            return Err(Misuse::OverwritesCompacted {
                first: first.index,
                first_index: view.first,
            }
            .into());
        }
        if first.index > view.last + 1 {
            return Err(Misuse::Gap {
                first: first.index,
                last: view.last,
            }
            .into());
        }
        if first.index < view.tail_first() {
            // Everything before `first.index` is stored as it is readable.
            view.tail.clear();
            view.tail_bytes = 0;
            view.last = first.index - 1;
        } else {
            view.truncate_tail(first.index);
        }
        for entry in entries {
            let size = entry.encoded_len() as u64;
            view.tail_bytes += size;
            view.tail.push_back(Cached {
                entry: entry.clone(),
                size,
                stored: false,
            });
        }
        view.last += entries.len() as u64;
        view.evict(self.shared.cache_budget);
        Ok(())
    }

    fn persist(&self, write: &LogWrite) -> Result<(), StorageError> {
        check_contiguous(&write.entries)?;
        check_after_snapshot(write)?;
        if let Some(point) = write.snapshot {
            return self.shared.persist_restart(point, write);
        }
        let shared = &*self.shared;
        let _writer = shared.writer.lock();
        let range = write
            .entries
            .first()
            .zip(write.entries.last())
            .map(|(a, b)| (a.index, b.index));

        // Check the write against the stored log before changing anything.
        let mut truncates = false;
        let restart_pending = shared.view.lock().restart_pending;
        if let (Some((first, last)), false) = (range, restart_pending) {
            let mut view = shared.view.lock();
            if first < view.first {
                return Err(Misuse::OverwritesCompacted {
                    first,
                    first_index: view.first,
                }
                .into());
            }
            if first > view.stored_last + 1 {
                return Err(Misuse::Gap {
                    first,
                    last: view.stored_last,
                }
                .into());
            }
            truncates = last < view.stored_last;
            if truncates {
                if last + 1 < view.tail_first() {
                    return Err(Misuse::TruncatesReadable { last }.into());
                }
                // The entries past `last` leave RocksDB: keep them in the
                // tail until a later write stores them again.
                for index in last + 1..=view.last {
                    if let Some(c) = view.cached_mut(index) {
                        c.stored = false;
                    }
                }
            }
        }

        // Encode and write without holding the view: the raft thread keeps
        // reading and appending while this write syncs.
        let mut batch = rocksdb::WriteBatch::default();
        for entry in &write.entries {
            let key = entry_key(entry.index);
            batch.put(key, seal(&key, entry.encode_to_vec()));
        }
        if let (true, Some((_, last))) = (truncates, range) {
            batch.delete_range(entry_key(last + 1).as_slice(), ENTRIES_END.as_slice());
        }
        if let Some(hs) = &write.hard_state {
            batch.put(HARD_STATE_KEY, seal(HARD_STATE_KEY, hs.encode_to_vec()));
        }
        if !batch.is_empty() {
            shared.write(batch, write.sync, "persist")?;
        } else if write.sync {
            // Nothing to write, but earlier writes must become durable.
            shared
                .db
                .flush_wal(true)
                .map_err(|e| shared.name.error("persist", e))?;
        }

        shared
            .view
            .lock()
            .record_persist(write, shared.cache_budget);
        Ok(())
    }

    fn restart_readable(&self, point: LogPoint) -> Result<(), StorageError> {
        let mut view = self.shared.view.lock();
        view.first = point.index.saturating_add(1);
        view.compacted_term = point.term;
        view.last = point.index;
        view.tail.clear();
        view.tail_bytes = 0;
        view.restart_pending = true;
        Ok(())
    }

    fn compact(&self, through: u64) -> Result<(), StorageError> {
        RocksLogStore::compact(self, through)
    }

    fn pending_install(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.shared.view.lock().pending_install.clone())
    }

    fn set_pending_install(&self, marker: &[u8]) -> Result<(), StorageError> {
        let shared = &*self.shared;
        let _writer = shared.writer.lock();
        let mut batch = rocksdb::WriteBatch::default();
        batch.put(
            PENDING_INSTALL_KEY,
            seal(PENDING_INSTALL_KEY, marker.to_vec()),
        );
        shared.write(batch, true, "set_pending_install")?;
        let mut view = shared.view.lock();
        view.pending_install = Some(marker.to_vec());
        view.durable_hard_state = view.written_hard_state.clone();
        Ok(())
    }
}
