//! Known bugs that can be switched on at run time, one at a time, to prove
//! that the simulator's checkers catch them. Never a cargo feature: the
//! production build carries the switches, all off.

/// A bug the engine can be told to have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InjectedBug {
    /// Linearizable reads are served from local state, without ReadIndex.
    LocalReads,
    /// A follower acknowledges appended entries before they are synced.
    AckBeforeSync,
    /// After a restart, committed entries are applied again, bypassing the
    /// dedup table.
    ReapplyAfterRestart,
    /// The dedup table is ignored (re-proposals after a leader change then
    /// apply twice).
    NoDedup,
    /// ReadIndex contexts restart from zero at every start, so an answer to
    /// a round from before a restart can complete a new one.
    ReuseReadContext,
    /// Lease reads go through raft-rs's `ReadOnlyOption::LeaseBased` (which
    /// checks no clock: any member that believes it leads answers at once),
    /// and so do linearizable reads.
    RaftLeaseBased,
    /// A member that just started grants votes at once (no vote guard), so
    /// a restart lets a rival win while the old leader's lease holds.
    NoVoteGuard,
    /// The lease is kept after a leader transfer starts.
    LeaseAcrossTransfer,
    /// The lease is renewed, from the time they arrive, whenever heartbeat
    /// responses from a quorum have been counted: duplicated and late
    /// responses count too.
    LeaseFromHeartbeatCount,
    /// The lease lasts `(election_tick - 1)` ticks, with no allowance for
    /// clock drift.
    LeaseIgnoresDrift,
    /// The leader answers a follower's lease-read round from its commit
    /// index without checking that it holds its lease (any member that
    /// believes it leads answers at once).
    FollowerLeaseUnchecked,
    /// (f) A new leader expires leases without the promotion reset: every
    /// member counts a lease's deadline from its grant (followers too, never
    /// renewed there), and a promotion keeps those deadlines, so the new
    /// leader expires leases the old one kept alive.
    LeaseNoPromotionReset,
    /// (i) A watch that starts (or resumes) at a past revision starts one
    /// revision too late: the events of its start revision are lost.
    WatchResumeLate,
    /// A progress notification names the hub's revision even while the
    /// watcher is still catching up from history: events at or below it
    /// come later (not bookmarkable).
    WatchProgressAhead,
    /// A client's cancel of a watch (`WatchControl::cancel`, in
    /// `WatchHub::cancel`) is ignored: the hub keeps the watcher and goes
    /// on offering it responses.
    WatchCancelIgnored,
    /// (g) The log is compacted up to the applied index rather than the
    /// applied index the state store holds durably: after a crash the
    /// state store restarts below the log's first entry.
    CompactPastDurable,
    /// (h) A snapshot install is not one unit across a crash: a restart
    /// ignores the pending-install marker instead of finishing the install,
    /// so a crash between restoring the state store and restarting the log
    /// leaves the two at different points.
    NonAtomicInstall,
    /// A lease's revocation or expiry deletes its keys over two revisions
    /// (the first key at one, the others at the next) instead of one (in
    /// the MVCC machine).
    LeaseDeletesSplit,
}

/// The set of switched-on bugs (empty in production).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bugs {
    pub(crate) local_reads: bool,
    pub(crate) ack_before_sync: bool,
    pub(crate) reapply_after_restart: bool,
    pub(crate) no_dedup: bool,
    pub(crate) reuse_read_context: bool,
    pub(crate) raft_lease_based: bool,
    pub(crate) no_vote_guard: bool,
    pub(crate) lease_across_transfer: bool,
    pub(crate) lease_from_heartbeat_count: bool,
    pub(crate) lease_ignores_drift: bool,
    pub(crate) follower_lease_unchecked: bool,
    pub(crate) lease_no_promotion_reset: bool,
    pub(crate) watch_resume_late: bool,
    pub(crate) watch_progress_ahead: bool,
    pub(crate) watch_cancel_ignored: bool,
    pub(crate) compact_past_durable: bool,
    pub(crate) non_atomic_install: bool,
    pub(crate) lease_deletes_split: bool,
}

impl Bugs {
    pub(crate) fn with(bug: Option<InjectedBug>) -> Self {
        let mut b = Bugs::default();
        match bug {
            None => {}
            Some(InjectedBug::LocalReads) => b.local_reads = true,
            Some(InjectedBug::AckBeforeSync) => b.ack_before_sync = true,
            Some(InjectedBug::ReapplyAfterRestart) => b.reapply_after_restart = true,
            Some(InjectedBug::NoDedup) => b.no_dedup = true,
            Some(InjectedBug::ReuseReadContext) => b.reuse_read_context = true,
            Some(InjectedBug::RaftLeaseBased) => b.raft_lease_based = true,
            Some(InjectedBug::NoVoteGuard) => b.no_vote_guard = true,
            Some(InjectedBug::LeaseAcrossTransfer) => b.lease_across_transfer = true,
            Some(InjectedBug::LeaseFromHeartbeatCount) => b.lease_from_heartbeat_count = true,
            Some(InjectedBug::LeaseIgnoresDrift) => b.lease_ignores_drift = true,
            Some(InjectedBug::FollowerLeaseUnchecked) => b.follower_lease_unchecked = true,
            Some(InjectedBug::LeaseNoPromotionReset) => b.lease_no_promotion_reset = true,
            Some(InjectedBug::WatchResumeLate) => b.watch_resume_late = true,
            Some(InjectedBug::WatchProgressAhead) => b.watch_progress_ahead = true,
            Some(InjectedBug::WatchCancelIgnored) => b.watch_cancel_ignored = true,
            Some(InjectedBug::CompactPastDurable) => b.compact_past_durable = true,
            Some(InjectedBug::NonAtomicInstall) => b.non_atomic_install = true,
            Some(InjectedBug::LeaseDeletesSplit) => b.lease_deletes_split = true,
        }
        b
    }
}

/// A point in a snapshot install where a test can make the member crash,
/// to check that the next start recovers (see `Node::crash_during_install`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InstallCrashPoint {
    /// After the pending-install marker is stored, before the state store
    /// is touched.
    AfterMarker,
    /// Half-way through restoring the state store.
    MidRestore,
    /// After the state store is restored, before the log restarts after
    /// the snapshot (the marker is still there).
    AfterRestore,
}

/// The armed crash point of a member, if any: a run-time switch, off in
/// production.
#[derive(Debug, Default)]
pub(crate) struct CrashSwitch(parking_lot::Mutex<Option<InstallCrashPoint>>);

impl CrashSwitch {
    pub(crate) fn arm(&self, point: InstallCrashPoint) {
        *self.0.lock() = Some(point);
    }

    pub(crate) fn armed(&self, point: InstallCrashPoint) -> bool {
        *self.0.lock() == Some(point)
    }

    /// Fails (the member stops as if it crashed) when `point` is armed.
    pub(crate) fn hit(&self, point: InstallCrashPoint) -> Result<(), ha_core::Error> {
        if self.armed(point) {
            return Err(ha_core::Error::fatal(format!(
                "injected crash during a snapshot install: {point:?}"
            )));
        }
        Ok(())
    }
}
