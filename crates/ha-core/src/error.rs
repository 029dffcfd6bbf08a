//! Errors, and what a caller should do about each.
//!
//! | error | did it take effect? | what to do |
//! |---|---|---|
//! | [`Error::NotLeader`] | no | retry on `leader_hint` (or anywhere, later) |
//! | [`Error::Timeout`] | no — it never left this member, or it was a read (or a peer call that found no leader to go to) | retry, maybe with a longer deadline |
//! | [`Error::ProposalDropped`] | no — raft rejected it here before it left | retry |
//! | [`Error::OutcomeUnknown`] | maybe | read back to find out, or make the command idempotent |
//! | [`Error::Overloaded`] | no (for a peer call: its handler did not run) | back off, then retry |
//! | [`Error::TooLarge`] | no | split the command |
//! | [`Error::Shutdown`] | no, unless it already left (then `OutcomeUnknown`) | use another member |
//! | [`Error::Fatal`] | — | this member stopped; restart it after fixing the cause |
//! | [`Error::MembershipChangeInProgress`] | no | retry when the pending change finished |
//! | [`Error::MemberIdReused`] | no | use a new id |
//! | [`Error::UnsafeMembershipChange`] | no | heal the group first, or force |
//! | [`Error::InvalidMembershipChange`] | no | fix the request |
//! | [`Error::Removed`] | — | this member was removed; stop it |
//! | [`Error::Compacted`] | no (a read or watch) | read at or after `compact_revision`; watch from after it |
//! | [`Error::FutureRevision`] | no (a read) | read at or before `current` |
//! | [`Error::NoSpace`] | no | delete and compact, or raise the quota |
//! | [`Error::LimitExceeded`] | no | make the key, value or request smaller, or split the transaction |
//! | [`Error::InvalidRequest`] | no | fix the request |
//! | [`Error::LeaseNotFound`] | no | grant a lease first (a kept-alive lease that is gone expired or was revoked: its keys are gone too) |
//! | [`Error::LeaseExists`] | no | choose another id, or let the member choose |
//! | [`Error::PeerUnreachable`] | no — a peer call did not reach the peer's handler | retry later, or call another member |
//! | [`Error::NoCallHandler`] | no — the peer has no call handler (yet) | retry once the peer set one |
//! | [`Error::CallOutcomeUnknown`] | maybe — the request left, no reply came | retry only if the request is idempotent |
//! | [`Error::CallFailed`] | the peer's handler returned an error | as the reason says |
//! | [`Error::WatchCancelled`] | — (a watch) | watch again from `resume_revision`, here or on another member |
//! | [`Error::Config`] | — | fix the configuration |
//! | [`Error::Storage`] | — | the data directory or device needs attention |

use std::sync::Arc;
use std::time::Duration;

use crate::ids::{ClusterId, NodeId};

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why raft rejected a proposal on this member before it left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// No leader was known for the whole deadline.
    NoLeader,
    /// A leader transfer was in progress (raft-rs refuses proposals then).
    LeaderTransfer,
    /// Another membership change is pending or the configuration is joint.
    MembershipChangeInProgress,
    /// raft-rs refused it for another reason.
    Rejected,
}

/// Why the outcome of a proposal is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownCause {
    /// The deadline passed after the proposal had left this member.
    DeadlineExceeded,
    /// The member shut down after the proposal had left it.
    Shutdown,
    /// A peer call's connection broke after its request was handed to it.
    ConnectionLost,
}

/// What is overloaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverloadReason {
    /// Applying lags too far behind commit; admission waited until the deadline.
    ApplyLag,
    /// Too many proposals are outstanding on this member.
    TooManyPending,
    /// The member's request queue is full.
    QueueFull,
    /// The leader holds as many uncommitted bytes as it accepts
    /// (`max_uncommitted_size`); admission waited until the deadline.
    Uncommitted,
    /// As many peer calls run as allowed: on the called member
    /// (`Config::max_concurrent_calls`), or in flight on this member's
    /// connection to it (the transport's bound).
    TooManyCalls,
}

/// Which KV size limit a request exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvLimit {
    /// A key's length.
    KeySize,
    /// A value's length.
    ValueSize,
    /// Operations in one transaction branch.
    TxnOps,
    /// The encoded request.
    RequestSize,
}

/// Why a KV request is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidRequest {
    /// A put with an empty key.
    EmptyKey,
    /// A transaction branch puts one key twice (etcd: "duplicate key given
    /// in txn request").
    DuplicateKeyInTxn,
    /// A transaction branch puts a key that it also deletes.
    PutInDeletedRange,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    KeyNotFound,
    /// A value given together with `ignore_value`, or a lease with
    /// `ignore_lease`.
    IgnoredFieldSet,
    /// A negative revision or limit.
    NegativeRevision,
    /// The request could not be decoded.
    Malformed,
    /// A lease TTL of zero, or too large to represent.
    InvalidTtl,
    /// A lease id that is not positive.
    InvalidLeaseId,
    /// A leader's expiry of a lease, proposed in an earlier term: a newer
    /// leader took over and decides alone (nothing was changed).
    StaleLeaseExpiry,
}

/// Why a watch was cancelled by the member serving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchCancelReason {
    /// The watcher did not take its responses fast enough: its buffer was
    /// full when new events arrived, and the member never waits for a
    /// watcher.
    SlowConsumer,
    /// The member serving the watch stopped (shut down, killed, or a
    /// fatal error).
    MemberStopped,
}

/// The error type of every ha operation.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operation must run on the leader and this member is not it.
    #[error("this member is not the leader (leader hint: {leader_hint:?}); retry there")]
    NotLeader {
        /// The leader this member believes in, if any.
        leader_hint: Option<NodeId>,
    },
    /// The deadline passed before the operation took effect. For a proposal,
    /// this is only returned when it never left this member, so it did not
    /// and will not apply: safe to retry.
    #[error("deadline of {after:?} passed; the operation did not take effect and is safe to retry")]
    Timeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// raft rejected the proposal on this member before it left; it was not
    /// applied and will not be. Safe to retry.
    #[error("proposal dropped before it left this member ({reason:?}); safe to retry")]
    ProposalDropped {
        /// Why raft dropped it.
        reason: DropReason,
    },
    /// The proposal left this member but its result is not known: it may or
    /// may not have been applied, and may still be applied later. Read back
    /// to find out.
    #[error("outcome unknown ({cause:?}): the proposal may or may not have been applied")]
    OutcomeUnknown {
        /// Why the outcome is unknown.
        cause: UnknownCause,
    },
    /// The member is overloaded; back off. Nothing was applied.
    #[error("overloaded ({reason:?}); back off and retry")]
    Overloaded {
        /// What is overloaded.
        reason: OverloadReason,
    },
    /// The command is larger than the configured maximum.
    #[error("command of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The size of the rejected command.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The member has shut down (or is shutting down).
    #[error("the member has shut down")]
    Shutdown,
    /// The member stopped because of an unrecoverable error (a storage write
    /// or sync failure, or a raft invariant violation). Restart it after the
    /// cause is fixed; it never acknowledges after such a failure.
    #[error("member stopped after a fatal error: {reason}")]
    Fatal {
        /// What happened.
        reason: Arc<str>,
    },
    /// Another membership change is pending, or the configuration is joint;
    /// retry once it has finished. Nothing was changed.
    #[error("another membership change is in progress; retry when it has finished")]
    MembershipChangeInProgress,
    /// The id belonged to a member that was removed; ids are never reused (a
    /// member that lost its data must rejoin under a new id).
    #[error("member id {member} was removed before and cannot be reused")]
    MemberIdReused {
        /// The refused id.
        member: NodeId,
    },
    /// The change would leave fewer healthy voters than a quorum; pass
    /// `force` to do it anyway.
    #[error(
        "unsafe membership change: {healthy} healthy voters would remain, {required} are needed for a quorum"
    )]
    UnsafeMembershipChange {
        /// Voters of the new configuration this leader heard from lately.
        healthy: usize,
        /// The quorum of the new configuration.
        required: usize,
    },
    /// A membership change that makes no sense (e.g. promoting a voter).
    #[error("invalid membership change for member {member}: {reason}")]
    InvalidMembershipChange {
        /// The member concerned.
        member: NodeId,
        /// What is wrong.
        reason: &'static str,
    },
    /// This member was removed from the group; it takes no further part.
    #[error("member {member} was removed from the group")]
    Removed {
        /// This member.
        member: NodeId,
    },
    /// A KV read asked for a revision that compaction removed, or a watch
    /// for one at or below the compact revision (a delete at exactly that
    /// revision is gone from history, so a watch from it could miss it).
    #[error("revision is compacted (compacted up to {compact_revision}); read at or after it")]
    Compacted {
        /// The store's compact revision: the oldest readable one.
        compact_revision: i64,
    },
    /// A KV read asked for a revision the store has not reached.
    #[error("revision {requested} is in the future (current revision {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: i64,
        /// The store's current revision.
        current: i64,
    },
    /// The KV's space quota is used up; writes fail until space is freed
    /// (delete, then compact). Reads, deletes and compaction still work.
    #[error("no space: {used} bytes used of a {quota}-byte quota; delete and compact")]
    NoSpace {
        /// Bytes the store's records use (history included).
        used: u64,
        /// The quota.
        quota: u64,
    },
    /// A KV request exceeds a configured limit. Nothing was proposed.
    #[error("{limit:?} of {size} exceeds the limit of {max}")]
    LimitExceeded {
        /// Which limit.
        limit: KvLimit,
        /// The request's size (bytes, or operations for `TxnOps`).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A KV request that makes no sense; nothing was changed.
    #[error("invalid request: {reason:?}")]
    InvalidRequest {
        /// What is wrong.
        reason: InvalidRequest,
    },
    /// The lease does not exist: never granted, revoked, or expired.
    #[error("lease {lease} not found")]
    LeaseNotFound {
        /// The lease id given.
        lease: i64,
    },
    /// A grant asked for a lease id that is already in use.
    #[error("lease {lease} already exists")]
    LeaseExists {
        /// The lease id given.
        lease: i64,
    },
    /// A peer call did not reach `peer`'s handler: the transport knows no
    /// address for it, cannot connect, the link is cut, or the peer is
    /// stopping. Its handler did not run.
    #[error("peer {peer} is unreachable; the call did not reach it")]
    PeerUnreachable {
        /// The member called.
        peer: NodeId,
    },
    /// The called member has no call handler set (yet); nothing ran.
    #[error("peer {peer} has no call handler")]
    NoCallHandler {
        /// The member called.
        peer: NodeId,
    },
    /// A peer call's request left this member but no reply came: the peer's
    /// handler may or may not have run (and may still be running).
    #[error("peer call to {peer}: no reply ({cause:?}); the handler may or may not have run")]
    CallOutcomeUnknown {
        /// The member called.
        peer: NodeId,
        /// Why no reply came.
        cause: UnknownCause,
    },
    /// The called member's handler returned an error (other than
    /// `NotLeader` and `Overloaded`, which arrive as themselves); `reason`
    /// is its text. Errors an application wants to act on belong inside its
    /// reply bytes.
    #[error("peer call to {peer} failed in its handler: {reason}")]
    CallFailed {
        /// The member called.
        peer: NodeId,
        /// The handler's error, as text.
        reason: Arc<str>,
    },
    /// The member ended the watch. Every event below `resume_revision`
    /// was delivered; watch again from `resume_revision` (on this or any
    /// member) to get exactly the rest.
    #[error(
        "watch cancelled ({reason:?}); every event below revision {resume_revision} was delivered, watch again from it"
    )]
    WatchCancelled {
        /// The first revision whose events the watcher has not been sent.
        resume_revision: i64,
        /// Why.
        reason: WatchCancelReason,
    },
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A storage backend failed or found its data unusable.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Error {
    /// True when the operation certainly did not take effect, so retrying it
    /// cannot apply it twice.
    pub fn is_not_applied(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::Timeout { .. }
                | Error::MembershipChangeInProgress
                | Error::MemberIdReused { .. }
                | Error::UnsafeMembershipChange { .. }
                | Error::InvalidMembershipChange { .. }
                | Error::ProposalDropped { .. }
                | Error::Overloaded { .. }
                | Error::TooLarge { .. }
                | Error::Compacted { .. }
                | Error::FutureRevision { .. }
                | Error::NoSpace { .. }
                | Error::LimitExceeded { .. }
                | Error::InvalidRequest { .. }
                | Error::LeaseNotFound { .. }
                | Error::PeerUnreachable { .. }
                | Error::NoCallHandler { .. }
                | Error::LeaseExists { .. }
                | Error::WatchCancelled { .. }
        )
    }

    /// Builds a [`Error::Fatal`].
    pub fn fatal(reason: impl Into<String>) -> Self {
        Error::Fatal {
            reason: Arc::from(reason.into()),
        }
    }
}

/// A configuration value that `validate()` refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `node_id` is zero.
    #[error("node_id must not be 0")]
    ZeroNodeId,
    /// The initial member list is empty.
    #[error("initial_members is empty; a group needs at least one voter")]
    NoMembers,
    /// A member id of zero.
    #[error("initial_members contains member id 0, which raft reserves")]
    ZeroMemberId,
    /// The same member id twice.
    #[error("initial_members lists member {0} more than once")]
    DuplicateMember(NodeId),
    /// This member is not in the initial member list.
    #[error("node_id {0} is not one of initial_members")]
    NotAMember(NodeId),
    /// A joining member must have an id of its own.
    #[error("node_id {0} is one of initial_members, so it cannot join: it bootstraps")]
    JoinAsInitialMember(NodeId),
    /// The election timeout must be longer than the heartbeat interval.
    #[error(
        "election_tick ({election_tick}) must be greater than heartbeat_tick ({heartbeat_tick})"
    )]
    ElectionTickTooSmall {
        /// Configured election tick.
        election_tick: usize,
        /// Configured heartbeat tick.
        heartbeat_tick: usize,
    },
    /// `max_election_tick` must exceed `election_tick` (raft-rs randomises in between).
    #[error("max_election_tick ({max}) must be greater than election_tick ({min})")]
    ElectionRange {
        /// Configured minimum.
        min: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The clock-drift allowance leaves no read lease: it must be shorter
    /// than `(election_tick - 1)` ticks.
    #[error(
        "max_clock_drift ({max_clock_drift:?}) must be shorter than (election_tick - 1) ticks \
         ({lease_window:?}), or no read lease is left"
    )]
    ClockDriftTooLarge {
        /// Configured drift allowance.
        max_clock_drift: std::time::Duration,
        /// `(election_tick - 1) * tick_interval`.
        lease_window: std::time::Duration,
    },
    /// A value that must be positive is zero.
    #[error("{field} must be greater than zero")]
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// A value is out of its allowed range.
    #[error("{field} = {value} is out of range: {expected}")]
    OutOfRange {
        /// The field's name.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The allowed range, in words.
        expected: &'static str,
    },
}

/// A storage failure, or stored data that cannot be used.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O error from the device or the backend.
    #[error("storage I/O error during {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Stored bytes failed their checksum or could not be decoded.
    #[error("corrupt data in {what}: {detail}")]
    Corrupt {
        /// Which record or file.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The data directory belongs to another cluster.
    #[error(
        "data belongs to cluster {found}, but this member is configured for cluster {expected}"
    )]
    ClusterMismatch {
        /// The configured cluster.
        expected: ClusterId,
        /// The stored cluster.
        found: ClusterId,
    },
    /// The data directory belongs to another member.
    #[error("data belongs to member {found}, but this member is {expected}")]
    MemberMismatch {
        /// The configured member.
        expected: NodeId,
        /// The stored member.
        found: NodeId,
    },
    /// The data was written by an unknown (newer) format version.
    #[error("unknown storage format version {found} (this build reads up to {supported})")]
    UnknownFormat {
        /// The stored version.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The requested log entries were compacted away.
    #[error("log entries before {first_index} are compacted")]
    Compacted {
        /// The first index still stored.
        first_index: u64,
    },
    /// The requested log entries do not exist (yet).
    #[error("log entry {index} is unavailable")]
    Unavailable {
        /// The requested index.
        index: u64,
    },
    /// A backend error that fits none of the above.
    #[error("storage backend error: {0}")]
    Other(Arc<dyn std::error::Error + Send + Sync>),
}

impl StorageError {
    /// Wraps an I/O error.
    pub fn io(op: &'static str, source: std::io::Error) -> Self {
        StorageError::Io {
            op,
            source: Arc::new(source),
        }
    }

    /// Builds a [`StorageError::Corrupt`].
    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        StorageError::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }
}
