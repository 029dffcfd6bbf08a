//! [`KvObserver`]: what the MVCC machine tells the node about applied
//! changes, so that the watch hub and the lease manager (both outside the
//! replicated state) can follow them.

use std::time::Duration;

use ha_core::{LeaseId, WatchEvent};

/// Told by [`MvccMachine`](super::MvccMachine) about every change it
/// applied, once the apply step's batch is in the store (from
/// `StateMachine::on_committed`), on the apply thread: keep it quick and
/// never block.
pub trait KvObserver: Send + 'static {
    /// The events of the revisions written in the step, in revision order
    /// (each revision's events together, in the order written), every
    /// event carrying its `prev_kv`; `revision` is the machine's revision
    /// after the step.
    fn events(&mut self, events: &[WatchEvent], revision: i64) {
        let _ = (events, revision);
    }

    /// The step compacted history: revisions at or below
    /// `compact_revision` can no longer be read or watched from.
    fn compacted(&mut self, compact_revision: i64) {
        let _ = compact_revision;
    }

    /// A lease was granted in the step.
    fn lease_granted(&mut self, id: LeaseId, ttl: Duration) {
        let _ = (id, ttl);
    }

    /// A lease was revoked (or expired) in the step; its keys' deletions
    /// are among the step's events.
    fn lease_revoked(&mut self, id: LeaseId) {
        let _ = id;
    }

    /// The machine was reloaded from a snapshot: its revision jumped to
    /// `revision` (history kept down to `compact_revision`), and `leases`
    /// is now the whole set of leases with their TTLs.
    fn restored(&mut self, revision: i64, compact_revision: i64, leases: &[(LeaseId, Duration)]) {
        let _ = (revision, compact_revision, leases);
    }
}
