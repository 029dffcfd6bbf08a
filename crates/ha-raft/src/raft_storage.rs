//! raft-rs's `Storage`, served from a [`LogStore`]'s readable view.

use std::sync::Arc;

use ha_core::eraftpb::{ConfState, Entry, HardState, Snapshot};
use ha_core::{LogStore, StorageError};
use raft::{GetEntriesContext, RaftState, Storage};

use crate::snapshot::Snapshots;

/// Adapts a [`LogStore`] to raft-rs. The initial state (hard state with
/// commit raised to applied, and the applied `ConfState` from the state
/// store) is fixed at open; raft-rs reads it only then.
pub(crate) struct RaftStorage<L: LogStore> {
    log: Arc<L>,
    initial: RaftState,
    snapshots: Arc<Snapshots>,
}

impl<L: LogStore> RaftStorage<L> {
    pub(crate) fn new(
        log: Arc<L>,
        hard_state: HardState,
        conf_state: ConfState,
        snapshots: Arc<Snapshots>,
    ) -> Self {
        RaftStorage {
            log,
            initial: RaftState {
                hard_state,
                conf_state,
            },
            snapshots,
        }
    }

    pub(crate) fn log(&self) -> &Arc<L> {
        &self.log
    }
}

fn to_raft(e: StorageError) -> raft::Error {
    match e {
        StorageError::Compacted { .. } => raft::Error::Store(raft::StorageError::Compacted),
        StorageError::Unavailable { .. } => raft::Error::Store(raft::StorageError::Unavailable),
        other => raft::Error::Store(raft::StorageError::Other(Box::new(other))),
    }
}

impl<L: LogStore> Storage for RaftStorage<L> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(self.initial.clone())
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.log
            .entries(low, high, max_size.into())
            .map_err(to_raft)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.log.term(idx).map_err(to_raft)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.log.first_index().map_err(to_raft)
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.log.last_index().map_err(to_raft)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // raft-rs treats any other error here as fatal: a snapshot that is
        // not ready (or a log that cannot be read right now) is "later".
        let first = self.log.first_index().unwrap_or(u64::MAX);
        self.snapshots
            .for_raft(request_index, first)
            .ok_or(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ))
    }
}
