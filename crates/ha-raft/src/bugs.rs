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
}

/// The set of switched-on bugs (empty in production).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bugs {
    pub(crate) local_reads: bool,
    pub(crate) ack_before_sync: bool,
    pub(crate) reapply_after_restart: bool,
    pub(crate) no_dedup: bool,
    pub(crate) reuse_read_context: bool,
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
        }
        b
    }
}
