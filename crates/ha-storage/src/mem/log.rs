//! [`MemLogStore`]: the raft log in memory, with a simulated durable layer.

use std::fmt;
use std::sync::Arc;

use ha_core::eraftpb::{Entry, HardState};
use ha_core::{LogPoint, LogStore, LogWrite, MemberIdentity, StorageError};
use parking_lot::Mutex;
use prost::Message;

use super::injected_write_failure;
use crate::misuse::{Misuse, check_after_snapshot, check_contiguous};

/// Counters of a [`MemLogStore`], for benchmarks (entries per sync) and for
/// tests that check batching.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemLogStats {
    /// Successful [`LogStore::persist`] calls.
    pub persist_calls: u64,
    /// Successful [`LogStore::persist`] calls with `sync` set.
    pub syncs: u64,
    /// Entries passed to successful [`LogStore::persist`] calls.
    pub entries_persisted: u64,
}

/// An in-memory [`LogStore`] for tests and simulation.
///
/// It keeps the three layers a real device has, so that [`MemLogStore::crash`]
/// loses exactly what a power failure could:
///
/// - the *readable* view, written by [`LogStore::append_readable`], which
///   every read (`first_index`, `last_index`, `term`, `entries`) sees;
/// - the *written* writes, passed to [`LogStore::persist`] without `sync`,
///   which a crash drops;
/// - the *durable* state: entries and hard state made durable by a persist
///   with `sync` (which also makes every earlier write durable, like a WAL),
///   and the identity, which [`LogStore::set_identity`] stores durably at once.
///
/// [`LogStore::hard_state`] answers with the durable hard state, as the trait
/// says.
///
/// Clones share the same log, so a test can keep a handle on the store it
/// gave to the engine. Writes can be made to fail at run time with
/// [`MemLogStore::set_fail_writes`].
///
/// Where a real backend would silently corrupt itself on a caller bug (a gap
/// in the log, non-contiguous entries, overwriting compacted entries), this
/// store returns [`StorageError::Other`] instead.
#[derive(Clone, Default)]
pub struct MemLogStore {
    inner: Arc<Mutex<Inner>>,
    /// Held by a write for its whole length, sync delay included, and
    /// taken by compaction: as in a real store, whose compaction waits for
    /// the write (and its fsync) in progress.
    writer: Arc<Mutex<()>>,
}

#[derive(Default)]
struct Inner {
    identity: Option<MemberIdentity>,
    /// Durable at once, like the identity.
    pending_install: Option<Vec<u8>>,
    readable: EntryLog,
    durable: EntryLog,
    durable_hard_state: HardState,
    /// Written but not synced, oldest first; folded into `durable` by the
    /// next sync so that a sync never copies the whole log.
    unsynced: Vec<UnsyncedWrite>,
    /// Last index of the written log (durable plus unsynced), kept so that a
    /// write leaving a gap is refused before anything is applied.
    written_last: u64,
    fail_writes: bool,
    /// Every synced persist takes at least this long (a slow disk).
    sync_delay: std::time::Duration,
    stats: MemLogStats,
}

struct UnsyncedWrite {
    snapshot: Option<LogPoint>,
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
}

/// A contiguous run of entries starting at `first`, with the term of the
/// entry just before it (the compaction point).
#[derive(Clone)]
struct EntryLog {
    first: u64,
    compacted_term: u64,
    entries: Vec<Entry>,
}

impl Default for EntryLog {
    fn default() -> Self {
        // A fresh raft log starts at index 1 behind a dummy entry 0 of term 0.
        EntryLog {
            first: 1,
            compacted_term: 0,
            entries: Vec::new(),
        }
    }
}

impl EntryLog {
    /// An empty log continuing after `point`.
    fn after(point: LogPoint) -> Self {
        EntryLog {
            first: point.index.saturating_add(1),
            compacted_term: point.term,
            entries: Vec::new(),
        }
    }

    fn last_index(&self) -> u64 {
        // `first >= 1` always, so this cannot underflow.
        self.first + self.entries.len() as u64 - 1
    }

    /// Position of `index` in `entries`, if it is stored.
    fn position(&self, index: u64) -> Option<usize> {
        let offset = usize::try_from(index.checked_sub(self.first)?).ok()?;
        (offset < self.entries.len()).then_some(offset)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        // `first >= 1`, so `first - 1` cannot underflow (and, unlike
        // `index + 1`, cannot overflow on a hostile index).
        if index == self.first - 1 {
            return Ok(self.compacted_term);
        }
        if index < self.first {
            return Err(StorageError::Compacted {
                first_index: self.first,
            });
        }
        self.position(index)
            .map(|p| self.entries[p].term)
            .ok_or(StorageError::Unavailable { index })
    }

    /// Refuses entries starting at `first_new` unless they continue or
    /// overwrite the stored (not compacted) log.
    fn check_append(&self, first_new: u64) -> Result<(), Misuse> {
        if first_new < self.first {
            return Err(Misuse::OverwritesCompacted {
                first: first_new,
                first_index: self.first,
            });
        }
        let last = self.last_index();
        if first_new > last + 1 {
            return Err(Misuse::Gap {
                first: first_new,
                last,
            });
        }
        Ok(())
    }

    /// Drops stored entries from `first_new` on. The caller has run
    /// [`EntryLog::check_append`].
    fn truncate_from(&mut self, first_new: u64) {
        let keep = usize::try_from(first_new.saturating_sub(self.first)).unwrap_or(usize::MAX);
        self.entries.truncate(keep);
    }

    fn slice(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        if low > high {
            return Err(Misuse::InvertedRange { low, high }.into());
        }
        if low < self.first {
            return Err(StorageError::Compacted {
                first_index: self.first,
            });
        }
        let last = self.last_index();
        if high > last + 1 {
            return Err(StorageError::Unavailable {
                index: low.max(last + 1),
            });
        }
        // In range: `first <= low <= high <= last + 1`.
        let from = (low - self.first) as usize;
        let to = (high - self.first) as usize;
        let range = &self.entries[from..to];
        // The same cut as raft-rs's `limit_size`: the first entry always, then
        // entries while the running total of encoded sizes stays within the limit.
        let Some(max) = max_size else {
            return Ok(range.to_vec());
        };
        let mut out = Vec::new();
        let mut size = 0u64;
        for entry in range {
            size = size.saturating_add(entry.encoded_len() as u64);
            if !out.is_empty() && size > max {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn compact(&mut self, through: u64, through_term: u64) {
        let drop = usize::try_from(through + 1 - self.first).unwrap_or(usize::MAX);
        self.entries.drain(..drop.min(self.entries.len()));
        self.first = through + 1;
        self.compacted_term = through_term;
    }
}

impl Inner {
    /// Makes every written write durable, oldest first.
    fn fold_unsynced(&mut self) {
        for write in std::mem::take(&mut self.unsynced) {
            self.apply_durably(write.snapshot, write.entries, write.hard_state);
        }
    }

    fn apply_durably(
        &mut self,
        snapshot: Option<LogPoint>,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    ) {
        if let Some(point) = snapshot {
            self.durable = EntryLog::after(point);
            self.pending_install = None;
        }
        if let Some(first) = entries.first() {
            self.durable.truncate_from(first.index);
            self.durable.entries.extend(entries);
        }
        if let Some(hs) = hard_state {
            self.durable_hard_state = hs;
        }
    }
}

impl MemLogStore {
    /// An empty log: first index 1, last index 0, default hard state, no
    /// identity.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store as it would be after a power failure and a restart: only
    /// durable state survives. The readable view is rebuilt from the durable
    /// entries and every unsynced write is gone. The new store is independent
    /// of this one, its counters start at zero and its writes do not fail.
    pub fn crash(&self) -> MemLogStore {
        let inner = self.inner.lock();
        MemLogStore {
            inner: Arc::new(Mutex::new(Inner {
                identity: inner.identity.clone(),
                pending_install: inner.pending_install.clone(),
                readable: inner.durable.clone(),
                durable: inner.durable.clone(),
                durable_hard_state: inner.durable_hard_state.clone(),
                unsynced: Vec::new(),
                written_last: inner.durable.last_index(),
                fail_writes: false,
                sync_delay: std::time::Duration::ZERO,
                stats: MemLogStats::default(),
            })),
            writer: Arc::default(),
        }
    }

    /// Drops the entries up to and including `through` from both the
    /// readable view and the durable state; `term(through)` keeps answering
    /// (as the compaction point). Compacting at or below the current
    /// compaction point does nothing.
    ///
    /// # Errors
    ///
    /// [`StorageError::Other`] when `through` is past the last durable or the
    /// last readable index, when an unsynced write rewrites entries at or
    /// below `through`, or when the readable and durable terms at `through`
    /// differ: compacting then could drop entries a crash would need, or
    /// keep a compaction point that raft has already overwritten.
    pub fn compact(&self, through: u64) -> Result<(), StorageError> {
        let _writer = self.writer.lock();
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        // The readable view and the durable state are always compacted
        // together, so they share their first index.
        if through < inner.durable.first {
            return Ok(());
        }
        let refuse = |reason| Err(Misuse::CannotCompact { through, reason }.into());
        if through > inner.durable.last_index() {
            return refuse("it is past the last durable index");
        }
        if through > inner.readable.last_index() {
            return refuse("it is past the last readable index");
        }
        let rewritten = inner
            .unsynced
            .iter()
            .any(|w| w.entries.first().is_some_and(|e| e.index <= through));
        if rewritten {
            return refuse("an unsynced write rewrites entries at or below it");
        }
        let term = inner.durable.term(through)?;
        if inner.readable.term(through)? != term {
            return refuse("the readable and durable logs disagree at that index");
        }
        inner.durable.compact(through, term);
        inner.readable.compact(through, term);
        Ok(())
    }

    /// Makes every synced [`LogStore::persist`] take at least `delay`, as a
    /// slow or overloaded disk would (the log writer blocks meanwhile, and
    /// so does a [`compact`](Self::compact) called during it).
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        self.inner.lock().sync_delay = delay;
    }

    /// While `fail` is true, [`LogStore::persist`] and
    /// [`LogStore::set_identity`] change nothing and return
    /// [`StorageError::Io`] ("injected write failure"), as a failing device
    /// would. Reads and [`LogStore::append_readable`] (memory only) still work.
    pub fn set_fail_writes(&self, fail: bool) {
        self.inner.lock().fail_writes = fail;
    }

    /// The counters so far.
    pub fn stats(&self) -> MemLogStats {
        self.inner.lock().stats
    }
}

impl fmt::Debug for MemLogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `try_lock`: formatting must not deadlock if a caller holds the lock.
        let Some(inner) = self.inner.try_lock() else {
            return f.write_str("MemLogStore { <locked> }");
        };
        f.debug_struct("MemLogStore")
            .field("first_index", &inner.readable.first)
            .field("last_index", &inner.readable.last_index())
            .field("durable_last_index", &inner.durable.last_index())
            .field("unsynced_writes", &inner.unsynced.len())
            .field("durable_hard_state", &inner.durable_hard_state)
            .field("fail_writes", &inner.fail_writes)
            .finish()
    }
}

impl LogStore for MemLogStore {
    fn identity(&self) -> Result<Option<MemberIdentity>, StorageError> {
        Ok(self.inner.lock().identity.clone())
    }

    fn set_identity(&self, identity: &MemberIdentity) -> Result<(), StorageError> {
        let mut inner = self.inner.lock();
        if inner.fail_writes {
            return Err(injected_write_failure("set_identity"));
        }
        // A synced write to the log makes every earlier write durable too,
        // as it would on a WAL-based backend.
        inner.fold_unsynced();
        inner.identity = Some(identity.clone());
        Ok(())
    }

    fn hard_state(&self) -> Result<HardState, StorageError> {
        Ok(self.inner.lock().durable_hard_state.clone())
    }

    fn first_index(&self) -> Result<u64, StorageError> {
        Ok(self.inner.lock().readable.first)
    }

    fn last_index(&self) -> Result<u64, StorageError> {
        Ok(self.inner.lock().readable.last_index())
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        self.inner.lock().readable.term(index)
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.lock().readable.slice(low, high, max_size)
    }

    fn append_readable(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        check_contiguous(entries)?;
        let mut inner = self.inner.lock();
        inner.readable.check_append(first.index)?;
        inner.readable.truncate_from(first.index);
        inner.readable.entries.extend_from_slice(entries);
        Ok(())
    }

    fn persist(&self, write: &LogWrite) -> Result<(), StorageError> {
        check_contiguous(&write.entries)?;
        check_after_snapshot(write)?;
        let _writer = self.writer.lock();
        if write.sync {
            let delay = self.inner.lock().sync_delay;
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
        }
        let mut inner = self.inner.lock();
        if inner.fail_writes {
            return Err(injected_write_failure("persist"));
        }
        if let Some(point) = write.snapshot {
            inner.written_last = point.index;
        }
        // Check against the written log (durable plus unsynced) before
        // changing anything: a refused write leaves no trace.
        if let (None, Some(first)) = (write.snapshot, write.entries.first()) {
            if first.index < inner.durable.first {
                return Err(Misuse::OverwritesCompacted {
                    first: first.index,
                    first_index: inner.durable.first,
                }
                .into());
            }
            if first.index > inner.written_last + 1 {
                return Err(Misuse::Gap {
                    first: first.index,
                    last: inner.written_last,
                }
                .into());
            }
        }
        if let Some(last) = write.entries.last() {
            inner.written_last = last.index;
        }
        inner.stats.persist_calls += 1;
        inner.stats.entries_persisted += write.entries.len() as u64;
        if write.sync {
            inner.stats.syncs += 1;
            inner.fold_unsynced();
            inner.apply_durably(
                write.snapshot,
                write.entries.clone(),
                write.hard_state.clone(),
            );
        } else if write.snapshot.is_some()
            || !write.entries.is_empty()
            || write.hard_state.is_some()
        {
            inner.unsynced.push(UnsyncedWrite {
                snapshot: write.snapshot,
                entries: write.entries.clone(),
                hard_state: write.hard_state.clone(),
            });
        }
        Ok(())
    }

    fn restart_readable(&self, point: LogPoint) -> Result<(), StorageError> {
        self.inner.lock().readable = EntryLog::after(point);
        Ok(())
    }

    fn compact(&self, through: u64) -> Result<(), StorageError> {
        MemLogStore::compact(self, through)
    }

    fn pending_install(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.inner.lock().pending_install.clone())
    }

    fn set_pending_install(&self, marker: &[u8]) -> Result<(), StorageError> {
        let mut inner = self.inner.lock();
        if inner.fail_writes {
            return Err(injected_write_failure("set_pending_install"));
        }
        inner.fold_unsynced();
        inner.pending_install = Some(marker.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::{ClusterId, NodeId};
    use proptest::prelude::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("{index}@{term}").into_bytes(),
            ..Default::default()
        }
    }

    fn run(first: u64, last: u64, term: u64) -> Vec<Entry> {
        (first..=last).map(|i| entry(i, term)).collect()
    }

    fn write(entries: Vec<Entry>, sync: bool) -> LogWrite {
        LogWrite {
            snapshot: None,
            entries,
            hard_state: None,
            sync,
        }
    }

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState { term, vote, commit }
    }

    /// Appends readable, then persists the same entries.
    fn append_and_persist(store: &MemLogStore, entries: Vec<Entry>, sync: bool) {
        store.append_readable(&entries).unwrap();
        store.persist(&write(entries, sync)).unwrap();
    }

    fn all_entries(store: &impl LogStore) -> Vec<Entry> {
        let (first, last) = (store.first_index().unwrap(), store.last_index().unwrap());
        store.entries(first, last + 1, None).unwrap()
    }

    fn identity(incarnation: u64) -> MemberIdentity {
        MemberIdentity {
            cluster_id: ClusterId::derive(&[NodeId(1)], "test"),
            node_id: NodeId(1),
            incarnation,
        }
    }

    #[test]
    fn unsynced_write_is_lost_on_crash() {
        let store = MemLogStore::new();
        append_and_persist(&store, run(1, 3, 1), false);
        assert_eq!(store.last_index().unwrap(), 3, "readable before the crash");
        let after = store.crash();
        assert_eq!(
            after.last_index().unwrap(),
            0,
            "unsynced entries survived a crash"
        );
        assert_eq!(after.first_index().unwrap(), 1);
    }

    #[test]
    fn synced_write_survives_crash() {
        let store = MemLogStore::new();
        store.append_readable(&run(1, 3, 1)).unwrap();
        store
            .persist(&LogWrite {
                snapshot: None,
                entries: run(1, 3, 1),
                hard_state: Some(hs(1, 2, 3)),
                sync: true,
            })
            .unwrap();
        let after = store.crash();
        assert_eq!(all_entries(&after), run(1, 3, 1), "synced entries lost");
        assert_eq!(
            after.hard_state().unwrap(),
            hs(1, 2, 3),
            "synced hard state lost"
        );
    }

    #[test]
    fn synced_write_makes_earlier_unsynced_writes_durable() {
        let store = MemLogStore::new();
        append_and_persist(&store, run(1, 2, 1), false);
        store
            .persist(&LogWrite {
                snapshot: None,
                entries: vec![],
                hard_state: Some(hs(1, 1, 1)),
                sync: false,
            })
            .unwrap();
        append_and_persist(&store, run(3, 4, 1), true);
        let after = store.crash();
        assert_eq!(
            all_entries(&after),
            run(1, 4, 1),
            "earlier unsynced entries not made durable"
        );
        assert_eq!(
            after.hard_state().unwrap(),
            hs(1, 1, 1),
            "earlier unsynced hard state not made durable"
        );
    }

    #[test]
    fn only_writes_before_the_last_sync_survive() {
        let store = MemLogStore::new();
        append_and_persist(&store, run(1, 2, 1), false);
        append_and_persist(&store, run(3, 3, 1), true);
        append_and_persist(&store, run(4, 6, 1), false);
        assert_eq!(all_entries(&store.crash()), run(1, 3, 1));
    }

    #[test]
    fn hard_state_is_the_durable_one() {
        let store = MemLogStore::new();
        store
            .persist(&LogWrite {
                snapshot: None,
                entries: vec![],
                hard_state: Some(hs(2, 1, 0)),
                sync: true,
            })
            .unwrap();
        store
            .persist(&LogWrite {
                snapshot: None,
                entries: vec![],
                hard_state: Some(hs(2, 1, 5)),
                sync: false,
            })
            .unwrap();
        assert_eq!(
            store.hard_state().unwrap(),
            hs(2, 1, 0),
            "an unsynced hard state is not durable"
        );
        assert_eq!(store.crash().hard_state().unwrap(), hs(2, 1, 0));
    }

    #[test]
    fn synced_truncation_survives_crash() {
        let store = MemLogStore::new();
        append_and_persist(&store, run(1, 5, 1), true);
        append_and_persist(&store, run(3, 3, 2), true);
        let expected = vec![entry(1, 1), entry(2, 1), entry(3, 2)];
        assert_eq!(
            all_entries(&store.crash()),
            expected,
            "conflicting suffix survived a synced truncation"
        );
    }

    #[test]
    fn unsynced_truncation_is_lost_on_crash() {
        let store = MemLogStore::new();
        append_and_persist(&store, run(1, 5, 1), true);
        append_and_persist(&store, run(3, 3, 2), false);
        assert_eq!(store.last_index().unwrap(), 3);
        assert_eq!(all_entries(&store.crash()), run(1, 5, 1));
    }

    #[test]
    fn readable_only_entries_are_lost_on_crash() {
        let store = MemLogStore::new();
        append_and_persist(&store, run(1, 2, 1), true);
        store.append_readable(&run(3, 9, 1)).unwrap();
        assert_eq!(all_entries(&store.crash()), run(1, 2, 1));
    }

    #[test]
    fn readable_view_may_differ_from_durable_until_persisted() {
        // raft truncates readable at once; the persist of the truncation
        // comes later and the durable log keeps the old suffix until then.
        let store = MemLogStore::new();
        append_and_persist(&store, run(1, 5, 1), true);
        store.append_readable(&run(2, 2, 3)).unwrap();
        assert_eq!(all_entries(&store), vec![entry(1, 1), entry(2, 3)]);
        assert_eq!(all_entries(&store.crash()), run(1, 5, 1));
    }

    #[test]
    fn identity_is_durable_at_once_and_syncs_earlier_writes() {
        let store = MemLogStore::new();
        append_and_persist(&store, run(1, 2, 1), false);
        store.set_identity(&identity(1)).unwrap();
        let after = store.crash();
        assert_eq!(after.identity().unwrap(), Some(identity(1)));
        assert_eq!(all_entries(&after), run(1, 2, 1));
    }

    #[test]
    fn injected_write_failures_change_nothing() {
        let store = MemLogStore::new();
        append_and_persist(&store, run(1, 2, 1), true);
        store.set_fail_writes(true);
        store.append_readable(&run(3, 3, 1)).unwrap();
        let err = store.persist(&write(run(3, 3, 1), true)).unwrap_err();
        match &err {
            StorageError::Io { source, .. } => {
                assert_eq!(source.kind(), std::io::ErrorKind::Other);
                assert_eq!(source.to_string(), "injected write failure");
            }
            other => panic!("expected an injected Io error, got {other:?}"),
        }
        assert!(matches!(
            store.set_identity(&identity(1)),
            Err(StorageError::Io { .. })
        ));
        assert_eq!(store.identity().unwrap(), None);
        assert_eq!(
            store.stats().persist_calls,
            1,
            "a failed persist was counted"
        );
        assert_eq!(
            all_entries(&store.crash()),
            run(1, 2, 1),
            "a failed persist reached the durable log"
        );

        store.set_fail_writes(false);
        store.persist(&write(run(3, 3, 1), true)).unwrap();
        assert_eq!(all_entries(&store.crash()), run(1, 3, 1));
    }

    #[test]
    fn stats_count_calls_syncs_and_entries() {
        let store = MemLogStore::new();
        append_and_persist(&store, run(1, 10, 1), false);
        append_and_persist(&store, run(11, 15, 1), true);
        store
            .persist(&LogWrite {
                snapshot: None,
                entries: vec![],
                hard_state: Some(hs(1, 1, 15)),
                sync: false,
            })
            .unwrap();
        assert_eq!(
            store.stats(),
            MemLogStats {
                persist_calls: 3,
                syncs: 1,
                entries_persisted: 15,
            }
        );
    }

    #[test]
    fn clones_share_the_log() {
        let store = MemLogStore::new();
        let handle = store.clone();
        append_and_persist(&store, run(1, 3, 1), true);
        assert_eq!(handle.last_index().unwrap(), 3);
        assert_eq!(handle.stats().syncs, 1);
    }

    #[test]
    fn crash_does_not_disturb_the_original() {
        let store = MemLogStore::new();
        append_and_persist(&store, run(1, 3, 1), false);
        let after = store.crash();
        after.append_readable(&run(1, 1, 7)).unwrap();
        assert_eq!(all_entries(&store), run(1, 3, 1));
        store.persist(&write(vec![], true)).unwrap();
        assert_eq!(all_entries(&store.crash()), run(1, 3, 1));
    }

    #[test]
    fn misuse_is_refused_without_effect() {
        let store = MemLogStore::new();
        append_and_persist(&store, run(1, 3, 1), true);
        let gap = store.append_readable(&run(5, 6, 1));
        assert!(
            matches!(gap, Err(StorageError::Other(_))),
            "gap accepted: {gap:?}"
        );
        let holes = store.append_readable(&[entry(4, 1), entry(6, 1)]);
        assert!(
            matches!(holes, Err(StorageError::Other(_))),
            "non-contiguous accepted: {holes:?}"
        );
        let persist_gap = store.persist(&write(run(5, 5, 1), true));
        assert!(
            matches!(persist_gap, Err(StorageError::Other(_))),
            "persist gap accepted"
        );
        let inverted = store.entries(3, 2, None);
        assert!(
            matches!(inverted, Err(StorageError::Other(_))),
            "inverted range accepted"
        );
        assert_eq!(all_entries(&store), run(1, 3, 1));
        assert_eq!(all_entries(&store.crash()), run(1, 3, 1));
        assert_eq!(store.stats().persist_calls, 1);
    }

    #[test]
    fn compaction_keeps_the_compaction_point_term() {
        let store = MemLogStore::new();
        append_and_persist(
            &store,
            vec![entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)],
            true,
        );
        store.compact(2).unwrap();
        assert_eq!(store.first_index().unwrap(), 3);
        assert_eq!(store.last_index().unwrap(), 4);
        assert_eq!(store.term(2).unwrap(), 1, "compaction point term");
        assert_eq!(store.term(3).unwrap(), 2);
        assert!(matches!(
            store.term(1),
            Err(StorageError::Compacted { first_index: 3 })
        ));
        assert!(matches!(
            store.entries(2, 4, None),
            Err(StorageError::Compacted { first_index: 3 })
        ));
        assert_eq!(
            store.entries(3, 5, None).unwrap(),
            vec![entry(3, 2), entry(4, 2)]
        );

        // Compacting at or below the compaction point is a no-op.
        store.compact(1).unwrap();
        store.compact(2).unwrap();
        assert_eq!(store.first_index().unwrap(), 3);

        // Writes below the first index are refused; continuing works.
        assert!(store.append_readable(&run(2, 2, 1)).is_err());
        assert!(store.persist(&write(run(2, 2, 1), true)).is_err());
        append_and_persist(&store, run(3, 5, 3), true);

        let after = store.crash();
        assert_eq!(after.first_index().unwrap(), 3, "compaction lost on crash");
        assert_eq!(after.term(2).unwrap(), 1);
        assert_eq!(all_entries(&after), run(3, 5, 3));
    }

    #[test]
    fn compaction_stops_at_the_last_durable_index() {
        let store = MemLogStore::new();
        append_and_persist(&store, run(1, 3, 1), true);
        append_and_persist(&store, run(4, 6, 1), false);
        assert!(
            matches!(store.compact(4), Err(StorageError::Other(_))),
            "compacted past durable"
        );
        store.compact(3).unwrap();
        assert_eq!(store.first_index().unwrap(), 4);
    }

    #[test]
    fn compaction_refuses_where_layers_disagree() {
        let store = MemLogStore::new();
        append_and_persist(&store, run(1, 5, 1), true);
        // Readable already truncated at 3, not yet persisted.
        store.append_readable(&run(3, 3, 2)).unwrap();
        assert!(store.compact(4).is_err(), "compacted past the readable log");
        assert!(
            store.compact(3).is_err(),
            "compacted where the terms disagree"
        );
        // The truncation written but unsynced rewrites index 3.
        store.persist(&write(run(3, 3, 2), false)).unwrap();
        assert!(
            store.compact(3).is_err(),
            "compacted over an unsynced rewrite"
        );
        store.compact(2).unwrap();
        store.persist(&write(vec![], true)).unwrap();
        store.compact(3).unwrap();
        assert_eq!(store.term(3).unwrap(), 2);
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Produce a write: append readable now, queue it for the log writer.
        /// `back` is how far behind `last_index + 1` the entries start.
        Produce {
            back: u64,
            len: u64,
            sync: bool,
            commit: Option<u64>,
        },
        /// The log writer persists the oldest queued write.
        PersistNext,
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..4, 0u64..5, any::<bool>(), proptest::option::of(0u64..50))
                .prop_map(|(back, len, sync, commit)| Op::Produce { back, len, sync, commit }),
            4 => Just(Op::PersistNext),
            1 => Just(Op::Crash),
        ]
    }

    /// An obviously correct model: whole logs as plain vectors from index 1.
    #[derive(Default)]
    struct Model {
        readable: Vec<Entry>,
        written: Vec<Entry>,
        written_hs: HardState,
        durable: Vec<Entry>,
        durable_hs: HardState,
    }

    fn overwrite(log: &mut Vec<Entry>, entries: &[Entry]) {
        if let Some(first) = entries.first() {
            log.truncate(first.index as usize - 1);
            log.extend_from_slice(entries);
        }
    }

    proptest! {
        #[test]
        fn matches_a_model_across_crashes(ops in proptest::collection::vec(op(), 1..60)) {
            let mut store = MemLogStore::new();
            let mut model = Model::default();
            let mut queue: std::collections::VecDeque<LogWrite> = Default::default();
            let mut term = 1;
            for op in ops {
                match op {
                    Op::Produce { back, len, sync, commit } => {
                        term += 1;
                        let next = model.readable.len() as u64 + 1;
                        let first = next.saturating_sub(back).max(1);
                        let entries: Vec<Entry> = (first..first + len).map(|i| entry(i, term)).collect();
                        store.append_readable(&entries).unwrap();
                        overwrite(&mut model.readable, &entries);
                        let hard_state = commit.map(|c| hs(term, 1, c));
                        queue.push_back(LogWrite {
                            snapshot: None,
                            entries,
                            hard_state,
                            sync,
                        });
                    }
                    Op::PersistNext => {
                        if let Some(w) = queue.pop_front() {
                            store.persist(&w).unwrap();
                            overwrite(&mut model.written, &w.entries);
                            if let Some(h) = &w.hard_state {
                                model.written_hs = h.clone();
                            }
                            if w.sync {
                                model.durable = model.written.clone();
                                model.durable_hs = model.written_hs.clone();
                            }
                        }
                    }
                    Op::Crash => {
                        store = store.crash();
                        queue.clear();
                        model.readable = model.durable.clone();
                        model.written = model.durable.clone();
                        model.written_hs = model.durable_hs.clone();
                    }
                }
                prop_assert_eq!(store.last_index().unwrap(), model.readable.len() as u64);
                prop_assert_eq!(&all_entries(&store), &model.readable);
                prop_assert_eq!(store.hard_state().unwrap(), model.durable_hs.clone());
                let crashed = store.crash();
                prop_assert_eq!(&all_entries(&crashed), &model.durable, "durable log differs from the model");
                prop_assert_eq!(crashed.hard_state().unwrap(), model.durable_hs.clone());
            }
        }
    }
}
