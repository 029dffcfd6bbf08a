//! The replicated state machine users implement.

use bytes::Bytes;

use crate::ids::RequestId;
use crate::storage::WriteBatch;

/// Where a command sits in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyContext {
    /// Log index of the entry.
    pub index: u64,
    /// Term of the entry.
    pub term: u64,
    /// The proposal's id.
    pub request: RequestId,
}

/// A deterministic state machine replicated by the group.
///
/// `apply` is called for every committed command, in log order, on every
/// member, exactly once per request id. It must be deterministic: the same
/// commands in the same order produce the same writes and responses on
/// every member. Anything time- or identity-dependent belongs in the command
/// (chosen by the proposer), never read at apply time.
///
/// Writes go into `batch`, which the ENGINE owns: it adds the applied index,
/// membership and dedup table, and commits everything atomically after the
/// apply step. A state machine never persists engine metadata itself. Note
/// that writes of earlier commands in the same step are still in `batch`,
/// not yet in the store: keep whatever you need to read back in memory.
pub trait StateMachine: Send + 'static {
    /// Applies one command and returns the response delivered to its proposer.
    fn apply(&mut self, ctx: &ApplyContext, command: &[u8], batch: &mut WriteBatch) -> Bytes;

    /// Called after the batch holding every write up to `applied_index` has
    /// been committed to the state store.
    fn on_committed(&mut self, applied_index: u64) {
        let _ = applied_index;
    }

    /// The state store's whole contents were just replaced by a snapshot
    /// taken at `applied_index` (this member was too far behind to catch up
    /// from the log). Drop every in-memory cache and reload from the store;
    /// later commands continue from `applied_index + 1`. Also called when
    /// the member starts and finishes an install that a crash interrupted.
    ///
    /// # Errors
    /// A store that cannot be read; the member then stops with `Fatal`.
    fn restored(&mut self, applied_index: u64) -> Result<(), crate::StorageError> {
        let _ = applied_index;
        Ok(())
    }

    /// Answers a read against the applied state. The engine calls it after
    /// every entry up to the read's index has been applied (linearizable) or
    /// at once (serializable).
    fn query(&self, query: &[u8]) -> Bytes;
}
