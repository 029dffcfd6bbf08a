//! The storage contracts: the raft log ([`LogStore`]) and the ordered state
//! store ([`StateStore`]) that the state machine and the engine write into.
//!
//! Both separate what is *readable* from what is *durable*. Under raft-rs's
//! asynchronous Ready the raft thread appends entries to the log's readable
//! view at once (raft drops them from its own memory immediately), and a log
//! writer thread later makes them durable; only then does raft learn they
//! are persisted.

use raft_proto::eraftpb::{ConfState, Entry, HardState};

use crate::error::StorageError;
use crate::ids::{ClusterId, NodeId};

/// What a member stores about itself, checked on every open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberIdentity {
    /// The group this data belongs to.
    pub cluster_id: ClusterId,
    /// The member this data belongs to.
    pub node_id: NodeId,
    /// Bumped and stored (synced) at every start; part of every request id.
    pub incarnation: u64,
}

/// The index and term of one log entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPoint {
    /// The entry's index.
    pub index: u64,
    /// The entry's term.
    pub term: u64,
}

/// One unit of work for the durable log: optionally a restart of the log
/// after an installed snapshot, then entries (which replace any stored
/// entries at and after the first one's index) and an optional hard state.
#[derive(Clone, Debug, Default)]
pub struct LogWrite {
    /// A snapshot up to this point was installed: discard every stored
    /// entry, make this the compaction point (so the log continues at
    /// `index + 1`), and clear the pending-install marker — in the same
    /// atomic write as the entries and hard state.
    pub snapshot: Option<LogPoint>,
    /// Entries to store, contiguous and ascending.
    pub entries: Vec<Entry>,
    /// New hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// Sync to stable storage before returning (raft's `must_sync`).
    pub sync: bool,
}

impl LogWrite {
    /// Merges a later write into this one (group commit): later entries
    /// overwrite from their first index; the later hard state wins.
    pub fn merge(&mut self, later: LogWrite) {
        if later.snapshot.is_some() {
            // The restart discards everything this write would store.
            self.snapshot = later.snapshot;
            self.entries.clear();
        }
        if let Some(first) = later.entries.first() {
            let first = first.index;
            while self.entries.last().is_some_and(|e| e.index >= first) {
                self.entries.pop();
            }
            self.entries.extend(later.entries);
        }
        if later.hard_state.is_some() {
            self.hard_state = later.hard_state;
        }
        self.sync |= later.sync;
    }
}

/// The raft log of one member.
///
/// Reads serve raft-rs's `Storage` and see the *readable* view. Writes come
/// in two steps: [`LogStore::append_readable`] from the raft thread (visible
/// at once, not durable), then [`LogStore::persist`] from the log writer
/// thread, in the same order, which must not return before the write is
/// durable when `sync` is set. A crash may lose writes that were not synced,
/// but never a synced one, and never part of a write.
///
/// The entries are raft's: two entries with the same index and term are the
/// same entry (raft's log matching property), and a store may rely on it,
/// for example to tell which of two writes of an index it holds.
pub trait LogStore: Send + Sync + 'static {
    /// The stored identity, or `None` for a fresh store.
    fn identity(&self) -> Result<Option<MemberIdentity>, StorageError>;
    /// Stores the identity durably (synced before returning).
    fn set_identity(&self, identity: &MemberIdentity) -> Result<(), StorageError>;

    /// The durable hard state (default for a fresh store).
    fn hard_state(&self) -> Result<HardState, StorageError>;
    /// Index of the first entry still stored (1 for a fresh store).
    fn first_index(&self) -> Result<u64, StorageError>;
    /// Index of the last entry in the readable view (first_index - 1 if none).
    fn last_index(&self) -> Result<u64, StorageError>;
    /// Term of the entry at `index`; `first_index - 1` answers with the
    /// term of the compaction point.
    fn term(&self, index: u64) -> Result<u64, StorageError>;
    /// Entries in `[low, high)`, at least one if any, at most `max_size`
    /// bytes in total otherwise.
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError>;

    /// Makes entries readable at once, replacing stored entries from the
    /// first one's index on. Not durable.
    fn append_readable(&self, entries: &[Entry]) -> Result<(), StorageError>;
    /// Makes a write durable (when `sync`) — blocking; called from the log
    /// writer thread in the order the writes were produced.
    fn persist(&self, write: &LogWrite) -> Result<(), StorageError>;

    /// Restarts the readable view after a snapshot up to `point`: no
    /// entries, `first_index() == point.index + 1`, `term(point.index) ==
    /// point.term`. Not durable; a [`LogWrite`] with `snapshot` set makes it
    /// so.
    fn restart_readable(&self, point: LogPoint) -> Result<(), StorageError>;

    /// Drops the entries up to and including `through` (log compaction);
    /// `term(through)` keeps answering as the compaction point. Compacting
    /// at or below the current compaction point does nothing. Need not be
    /// durable: a crash may undo a compaction, whole.
    ///
    /// # Errors
    /// [`StorageError::Other`] when `through` is past what is persisted or
    /// readable; the caller may try again later.
    fn compact(&self, through: u64) -> Result<(), StorageError>;

    /// The pending-install marker, if one is stored: a snapshot install
    /// began and its [`LogWrite`] with `snapshot` has not been persisted.
    fn pending_install(&self) -> Result<Option<Vec<u8>>, StorageError>;

    /// Stores the pending-install marker durably (synced before
    /// returning). A persisted [`LogWrite`] with `snapshot` clears it.
    fn set_pending_install(&self, marker: &[u8]) -> Result<(), StorageError>;
}

/// One change in a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

/// An atomic group of changes to a [`StateStore`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
    bytes: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        let (key, value) = (key.into(), value.into());
        self.bytes += key.len() + value.len();
        self.ops.push(BatchOp::Put { key, value });
    }
    /// Removes `key`.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        let key = key.into();
        self.bytes += key.len();
        self.ops.push(BatchOp::Delete { key });
    }
    /// The changes in order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }
    /// Takes the changes out.
    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }
    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// True when there are no changes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Approximate payload size in bytes.
    pub fn size_bytes(&self) -> usize {
        self.bytes
    }
}

/// Keys under this prefix belong to the engine (applied index, membership,
/// dedup table). A state machine must not write them.
pub const RESERVED_PREFIX: &[u8] = b"\x00ha/";

/// An ordered key-value store holding a member's state: the state machine's
/// data and the engine's metadata, always changed together in one atomic
/// [`WriteBatch`] per apply step.
pub trait StateStore: Send + Sync + 'static {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Visits keys in `[start, end)` (to the end when `end` is `None`) in
    /// ascending order until `visit` returns false.
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError>;
    /// Applies `batch` atomically; when `sync`, durably before returning.
    /// Without `sync` a crash may lose the batch, but only whole.
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError>;

    /// Calls `read` with a consistent, point-in-time view of the whole
    /// store: writes that land while `read` runs are not visible to it.
    /// Snapshots are built this way on a background thread, so `read` may
    /// take long and must not block writers.
    fn read_consistent(
        &self,
        read: &mut dyn FnMut(&dyn StateView) -> Result<(), StorageError>,
    ) -> Result<(), StorageError>;

    /// Replaces the whole contents with `pairs` (ascending, unique keys),
    /// durably before returning. NOT atomic: a crash part-way leaves a mix,
    /// which is why the engine stores a pending-install marker first and
    /// repeats the restore on the next open.
    fn restore(
        &self,
        pairs: &mut dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>>,
    ) -> Result<(), StorageError>;
}

/// A consistent read-only view of a [`StateStore`]; see
/// [`StateStore::read_consistent`].
pub trait StateView {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Visits keys in `[start, end)` in ascending order until `visit`
    /// returns false.
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError>;
}

/// The raft-level state recovered from storage on open.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecoveredState {
    /// Durable hard state (with `commit` raised to at least `applied`).
    pub hard_state: HardState,
    /// Membership as last applied.
    pub conf_state: ConfState,
    /// Last applied index.
    pub applied: u64,
}
