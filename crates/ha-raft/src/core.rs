//! The sans-IO core: the only owner of `raft::RawNode`.
//!
//! The core takes inputs (a tick, a peer message, a proposal, a read, "log
//! persisted up to Ready n", "applied up to index i") with the current time
//! passed in, and leaves its outputs in an [`Outbox`]: messages to send, log
//! writes to persist (and the messages that may go out only after them),
//! committed entries to apply, reads that may be answered at an index, and
//! calls that failed. It never reads a clock, sleeps, or touches a thread or
//! a socket, so the tokio shell and the deterministic simulator drive the
//! very same code.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ha_core::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType, Message, MessageType,
};
use ha_core::{
    Config, DropReason, Error, LogPoint, LogStore, LogWrite, NodeId, OverloadReason,
    RecoveredState, SnapshotOutcome, UnknownCause,
};
use prost::Message as _;
use raft::{ProgressState, RawNode, StateRole};
use rand::{Rng, SeedableRng};

use crate::bugs::Bugs;

use crate::codec::{ConfContext, Envelope, MemberRecord, ReadContext};
use crate::membership::{MemberChange, MemberSet, Membership};
use crate::raft_storage::RaftStorage;
use crate::snapshot::{SnapshotDescriptor, Snapshots, decode_descriptor};

/// The role of a member in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for pre-votes before starting an election.
    PreCandidate,
    /// Running an election.
    Candidate,
    /// The leader of its term.
    Leader,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Self {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// Who leads, as this member sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LeaderInfo {
    /// The term.
    pub term: u64,
    /// The leader of that term, if known.
    pub leader: Option<NodeId>,
}

/// Log writes of one raft Ready, and the messages that may leave only once
/// they are durable.
#[derive(Debug)]
pub(crate) struct PersistTask {
    pub(crate) number: u64,
    pub(crate) write: LogWrite,
    pub(crate) messages: Vec<Message>,
    /// A snapshot to install before the write (whose `snapshot` is set).
    pub(crate) install: Option<SnapshotDescriptor>,
}

/// Linearizable reads that may be answered once `index` is applied.
#[derive(Debug)]
pub(crate) struct ReadReady {
    pub(crate) index: u64,
    pub(crate) tokens: Vec<u64>,
}

/// A leader's read lease as the driver publishes it after each turn, so
/// lease reads are answered without a trip through the raft thread: a read
/// that finds `now < until` is answered at `commit` (or later) by the apply
/// thread.
///
/// The driver must publish it (1) BEFORE the turn's messages leave, so a
/// transfer's `MsgTimeoutNow` never goes out while a grant is visible, and
/// (2) BEFORE the turn's committed entries reach the state machine, so no
/// write is acknowledged — here or, through the commit index the messages
/// carry, on a follower — at an index above the published `commit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeaseGrant {
    pub(crate) until: Instant,
    pub(crate) commit: u64,
}

/// A call that ended without reaching the state machine.
#[derive(Debug)]
pub(crate) enum Failure {
    Proposal { seq: u64, error: Error },
    Read { token: u64, error: Error },
}

/// What the core asks its driver to do. The driver drains every field.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) messages: Vec<Message>,
    pub(crate) persist: Vec<PersistTask>,
    pub(crate) committed: Vec<Entry>,
    pub(crate) reads: Vec<ReadReady>,
    pub(crate) failures: Vec<Failure>,
    pub(crate) leader_changed: Option<LeaderInfo>,
    /// Membership changes requested here that finished (by token).
    pub(crate) membership_done: Vec<(u64, Result<(), Error>)>,
    /// The applied membership, when it changed.
    pub(crate) membership_changed: Option<Membership>,
}

impl Outbox {
    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.persist.is_empty()
            && self.committed.is_empty()
            && self.reads.is_empty()
            && self.failures.is_empty()
            && self.leader_changed.is_none()
            && self.membership_done.is_empty()
            && self.membership_changed.is_none()
    }
}

/// Why a proposal that has not left this member is still here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// Not tried yet, or no leader known.
    NoLeader,
    /// Applying lags too far behind.
    ApplyLag,
    /// raft refused it here.
    Dropped(DropReason),
    /// The leader's uncommitted budget is full.
    Uncommitted,
}

#[derive(Debug)]
struct Pending {
    data: Vec<u8>,
    deadline: Instant,
    /// Accepted by raft here: appended (leader) or forwarded (follower).
    /// From then on the only honest answers are the result or
    /// `OutcomeUnknown`.
    left: bool,
    last_attempt: Instant,
    held: Held,
}

#[derive(Clone, Copy, Debug)]
struct ReadWaiter {
    token: u64,
    deadline: Instant,
    /// A lease read: on a follower it goes in a round the leader may answer
    /// from its lease.
    lease: bool,
}

#[derive(Debug)]
struct ReadBatch {
    waiters: Vec<ReadWaiter>,
    /// When the round's context left: the start of the lease it confirms.
    issued_at: Instant,
    /// The term and membership epoch it was issued in: a round confirms a
    /// lease only in both.
    term: u64,
    epoch: u64,
    /// A lease renewal round with no reads of its own.
    renewal: bool,
}

/// The leader's read lease: while it holds, no other member can have been
/// elected, so this leader's commit index covers every committed write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lease {
    term: u64,
    /// Valid while `now < until` (the core's clock).
    until: Instant,
}

/// How the leader replicates to one member (raft's progress state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Replication {
    /// Probing for the last entry the two logs share: one append at a
    /// time.
    Probe,
    /// Streaming appends, pipelined.
    Replicate,
    /// Waiting for a snapshot to reach the member; no appends meanwhile.
    Snapshot,
}

impl Replication {
    /// A stable lowercase name (for labels and JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Replication::Probe => "probe",
            Replication::Replicate => "replicate",
            Replication::Snapshot => "snapshot",
        }
    }
}

/// The leader's view of one member's log: what etcd's raft status calls
/// progress. A member whose `matched` stops moving while writes commit
/// elsewhere, or that stays `paused`, is the one to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    /// The member.
    pub id: NodeId,
    /// Voter (false: learner).
    pub voter: bool,
    /// How the leader sends to it now.
    pub state: Replication,
    /// Highest index known to be in its log.
    pub matched: u64,
    /// The next index the leader sends it.
    pub next_index: u64,
    /// The leader sends it nothing until it answers (raft's flow control).
    pub paused: bool,
    /// It answered since the last quorum check.
    pub recent_active: bool,
    /// The snapshot index it waits for (`Snapshot` state), else 0.
    pub pending_snapshot: u64,
    /// The window of appends in flight to it is full.
    pub inflight_full: bool,
}

/// A snapshot of the core's state for `status()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CoreStatus {
    pub(crate) role: Role,
    pub(crate) term: u64,
    pub(crate) leader: Option<NodeId>,
    pub(crate) commit: u64,
    pub(crate) applied: u64,
    pub(crate) voters: Vec<NodeId>,
    pub(crate) learners: Vec<NodeId>,
    pub(crate) pending_proposals: usize,
    pub(crate) lead_transferee: Option<NodeId>,
    pub(crate) removed: bool,
    /// The leader's progress of every other member (empty unless leader).
    pub(crate) peers: Vec<PeerProgress>,
}

/// The engine core. See the module docs.
pub(crate) struct Core<L: LogStore> {
    raw: RawNode<RaftStorage<L>>,
    cfg: Config,
    id: NodeId,
    incarnation: u64,
    /// Ticks since this core started; the vote guard uses it.
    ticks: u64,
    applied: u64,
    pending: BTreeMap<u64, Pending>,
    waiting: VecDeque<u64>,
    last_seq: u64,
    read_counter: u64,
    queued_reads: Vec<ReadWaiter>,
    inflight_reads: BTreeMap<u64, ReadBatch>,
    /// The read lease, if this leader holds one.
    lease: Option<Lease>,
    /// A leader transfer started in this term: no lease for the rest of it
    /// (the transferee may win at once, votes of followers that still
    /// heard from this leader included).
    transfer_term: Option<u64>,
    /// Bumped on every membership change: a round issued under another
    /// configuration confirms no lease.
    conf_epoch: u64,
    /// When a lease read last came in: renewal rounds run while they do.
    lease_wanted: Option<Instant>,
    /// Heartbeat responses counted this term (only for the injected bug
    /// that renews the lease from them).
    heartbeat_responses: usize,
    /// Persist tasks handed out and not yet reported durable.
    persisting: usize,
    /// The last compaction point handed out (`compaction_due`).
    compaction_asked: u64,
    leader: LeaderInfo,
    /// raft-rs draws election timeouts from the thread's RNG; the core
    /// overrides each draw from this seeded one, so that a simulated run is
    /// reproducible from its seed.
    rng: rand::rngs::StdRng,
    /// (term, role) after the last raft call: a change means raft-rs reset
    /// its election timeout.
    last_reset: (u64, StateRole),
    bugs: Bugs,
    /// Replicated member metadata (addresses, removed ids), as applied.
    members: MemberSet,
    /// The configuration as last applied.
    conf_state: ConfState,
    /// Membership changes requested here, by op number.
    conf_ops: BTreeMap<u64, ConfOp>,
    op_counter: u64,
    /// This member applied its own removal.
    removed_self: bool,
    /// When each removed peer was last told it is removed (tick).
    removed_notices: BTreeMap<u64, u64>,
    /// Notices to removed members, sent with the next Ready.
    notices: Vec<Message>,
    /// Finished membership ops, answered once the apply thread reports the
    /// entry applied (so that a caller's next change is not refused as
    /// "in progress" by an applied index that lags).
    conf_answers: Vec<(u64, u64, Result<(), Error>)>,
    ready_answers: Vec<(u64, Result<(), Error>)>,
    /// The snapshot handed out for install and not yet reported installed:
    /// its staged file must stay (a second copy that raft declines has the
    /// same file name).
    installing: Option<SnapshotDescriptor>,
}

#[derive(Debug)]
struct ConfOp {
    token: u64,
    deadline: Instant,
    /// Entered a joint configuration: done only when it is left.
    awaiting_leave: bool,
}

/// Sent to a removed member that keeps talking to the group (never stepped
/// into raft: the core intercepts it).
const REMOVED_NOTICE: &[u8] = b"ha/removed";

impl<L: LogStore> Core<L> {
    /// Builds the core over a log whose readable view is already loaded and
    /// the state recovered from the state store.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: Config,
        log: Arc<L>,
        recovered: RecoveredState,
        incarnation: u64,
        logger: &slog::Logger,
        rng_seed: u64,
        bugs: Bugs,
        snapshots: Arc<Snapshots>,
    ) -> Result<Self, Error> {
        let raft_cfg = raft::Config {
            id: cfg.node_id.0,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            applied: if bugs.reapply_after_restart {
                0
            } else {
                recovered.applied
            },
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            check_quorum: cfg.check_quorum,
            pre_vote: cfg.pre_vote,
            min_election_tick: cfg.election_tick,
            max_election_tick: cfg.max_election_tick,
            // Never LeaseBased (it checks no clock and trusts a lease across
            // a leader transfer): ha's lease is its own, below.
            read_only_option: if bugs.raft_lease_based {
                raft::ReadOnlyOption::LeaseBased
            } else {
                raft::ReadOnlyOption::Safe
            },
            skip_bcast_commit: false,
            batch_append: true,
            max_uncommitted_size: cfg.max_uncommitted_size,
            max_committed_size_per_ready: cfg.max_committed_size_per_ready,
            ..Default::default()
        };
        raft_cfg
            .validate()
            .map_err(|e| Error::fatal(format!("raft rejected the configuration: {e}")))?;
        let storage = RaftStorage::new(
            log,
            recovered.hard_state,
            recovered.conf_state.clone(),
            snapshots,
        );
        let raw = RawNode::new(&raft_cfg, storage, logger)
            .map_err(|e| Error::fatal(format!("raft failed to start: {e}")))?;
        let id = cfg.node_id;
        Ok(Core {
            raw,
            cfg,
            id,
            incarnation,
            ticks: 0,
            applied: recovered.applied,
            pending: BTreeMap::new(),
            waiting: VecDeque::new(),
            last_seq: 0,
            read_counter: 0,
            queued_reads: Vec::new(),
            inflight_reads: BTreeMap::new(),
            lease: None,
            transfer_term: None,
            conf_epoch: 0,
            lease_wanted: None,
            heartbeat_responses: 0,
            persisting: 0,
            compaction_asked: 0,
            leader: LeaderInfo::default(),
            rng: rand::rngs::StdRng::seed_from_u64(rng_seed),
            last_reset: (u64::MAX, StateRole::Follower),
            bugs,
            members: MemberSet::default(),
            conf_state: recovered.conf_state.clone(),
            conf_ops: BTreeMap::new(),
            op_counter: 0,
            removed_self: false,
            removed_notices: BTreeMap::new(),
            notices: Vec::new(),
            conf_answers: Vec::new(),
            ready_answers: Vec::new(),
            installing: None,
        })
        .map(|mut core| {
            core.rerandomize();
            core
        })
    }

    /// Replaces raft-rs's election-timeout draw with one from the seeded
    /// RNG whenever raft-rs has just made one (on every role or term
    /// change). Called after every call into raft.
    fn rerandomize(&mut self) {
        let now = (self.raw.raft.term, self.raw.raft.state);
        if now == self.last_reset {
            return;
        }
        self.last_reset = now;
        let (min, max) = (self.cfg.election_tick, self.cfg.max_election_tick);
        let t = self.rng.gen_range(min..max);
        self.raw.raft.set_randomized_election_timeout(t);
    }

    pub(crate) fn id(&self) -> NodeId {
        self.id
    }

    pub(crate) fn leader(&self) -> LeaderInfo {
        self.leader
    }

    pub(crate) fn commit(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Advances logical time by one tick.
    pub(crate) fn tick(&mut self, now: Instant, out: &mut Outbox) {
        self.raw.tick();
        self.rerandomize();
        self.observe_transfer();
        self.ticks += 1;
        self.expire(now, out);
        self.expire_conf_ops(now, out);
        self.auto_promote(now);
        self.retry_proposals(now);
        self.retry_reads(now);
        self.admit(now);
        self.issue_reads(now, out);
    }

    /// How many of the coming ticks would only advance raft's counters:
    /// nothing waits on a deadline, no read or lease renewal is due, no
    /// membership work or leader transfer is under way, and the next
    /// election timeout (follower), heartbeat or quorum check (leader) is
    /// further away. The shell sleeps through that many ticks when idle
    /// and replays them from the clock when it wakes ([`Core::tick`] for
    /// each, before it handles what woke it), so that an idle member wakes
    /// for heartbeats instead of every tick while raft's timing stays the
    /// same. 0 for candidates and whenever anything is pending.
    pub(crate) fn quiet_ticks(&self, now: Instant) -> usize {
        if !self.pending.is_empty()
            || !self.waiting.is_empty()
            || !self.queued_reads.is_empty()
            || !self.inflight_reads.is_empty()
            || !self.conf_ops.is_empty()
            || self.lease_in_use(now)
            || self.bugs != Bugs::default()
        {
            return 0;
        }
        let raft = &self.raw.raft;
        match raft.state {
            StateRole::Follower => raft
                .randomized_election_timeout()
                .saturating_sub(raft.election_elapsed + 1),
            StateRole::Leader
                if raft.lead_transferee.is_none() && self.conf_state.learners.is_empty() =>
            {
                let beat = raft
                    .heartbeat_timeout()
                    .saturating_sub(raft.heartbeat_elapsed() + 1);
                let quorum = raft
                    .election_timeout()
                    .saturating_sub(raft.election_elapsed + 1);
                beat.min(quorum)
            }
            _ => 0,
        }
    }

    /// Steps a message from a peer; `now` is the clock as it is handled.
    pub(crate) fn step(&mut self, msg: Message, now: Instant) {
        if msg.msg_type == MessageType::MsgSnapshot as i32 {
            // A snapshot reaches raft only through `step_staged_snapshot`,
            // once its bytes are staged and verified.
            tracing::warn!(
                from = msg.from,
                "snapshot message without staged data dropped"
            );
            return;
        }
        self.step_peer(msg, Some(now));
    }

    /// Steps a `MsgSnapshot` whose snapshot is staged and verified. Returns
    /// whether raft took it (it will come back in a `Ready`); if not, the
    /// caller discards the staging.
    pub(crate) fn step_staged_snapshot(&mut self, msg: Message) -> bool {
        let wanted = msg
            .snapshot
            .as_ref()
            .and_then(|s| s.metadata.as_ref())
            .map(|m| (m.index, m.term));
        self.step_peer(msg, None);
        let pending = self
            .raw
            .raft
            .raft_log
            .unstable()
            .snapshot
            .as_ref()
            .and_then(|s| s.metadata.as_ref())
            .map(|m| (m.index, m.term));
        wanted.is_some() && pending == wanted
    }

    /// Whether the staged file of `descriptor` is still needed: raft holds
    /// that snapshot, or it is being installed. A declined copy of it must
    /// then not discard the staging (both copies share the file name).
    pub(crate) fn needs_staged(&self, descriptor: &SnapshotDescriptor) -> bool {
        let pending = self
            .raw
            .raft
            .raft_log
            .unstable()
            .snapshot
            .as_ref()
            .and_then(|s| decode_descriptor(&s.data).ok());
        pending.as_ref() == Some(descriptor) || self.installing.as_ref() == Some(descriptor)
    }

    fn step_peer(&mut self, msg: Message, now: Option<Instant>) {
        if !valid_peer_message(&msg) {
            // raft-proto's getters panic on enum values they do not know,
            // and prost decodes them without complaint: one forged message
            // would stop the member. Whatever the transport checked, the
            // core refuses them too.
            tracing::warn!(
                from = msg.from,
                msg_type = msg.msg_type,
                "invalid peer message dropped"
            );
            return;
        }
        let t = msg.msg_type();
        if matches!(
            t,
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        ) && self.ticks < self.cfg.election_tick as u64
            && msg.context != raft::CAMPAIGN_TRANSFER
            && !self.bugs.no_vote_guard
        {
            // The vote guard: a member that just started may have missed a
            // live leader whose lease still holds; it grants no vote until
            // an election timeout has passed (except to a leader transfer).
            tracing::debug!(from = msg.from, "vote request ignored: member just started");
            return;
        }
        if msg.to != self.id.0 {
            tracing::debug!(to = msg.to, "message for another member dropped");
            return;
        }
        if msg.context == REMOVED_NOTICE {
            if !self.in_config(msg.from) {
                return;
            }
            if !self.removed_self {
                tracing::warn!(node = %self.id, told_by = msg.from, "this member was removed from the group");
            }
            self.removed_self = true;
            return;
        }
        if self.in_config(self.id.0)
            && !self.in_config(msg.from)
            && self.members.removed.contains(&msg.from)
        {
            // A removed member takes no part: it is told so (at most once
            // per election timeout), so it stops campaigning instead of
            // disrupting the group. Any OTHER sender outside the applied
            // configuration may be a member added after it (this member
            // lags): raft must hear it, or a lagging member never learns
            // of a leader that joined later (found by the simulator).
            let last = self.removed_notices.get(&msg.from).copied();
            if last.is_none_or(|t| self.ticks >= t + self.cfg.election_tick as u64) {
                self.removed_notices.insert(msg.from, self.ticks);
                self.notices.push(Message {
                    msg_type: MessageType::MsgHeartbeatResponse as i32,
                    to: msg.from,
                    from: self.id.0,
                    term: self.raw.raft.term,
                    context: REMOVED_NOTICE.to_vec(),
                    ..Default::default()
                });
            }
            return;
        }
        if self.bugs.lease_from_heartbeat_count
            && t == MessageType::MsgHeartbeatResponse
            && msg.term == self.raw.raft.term
            && self.is_leader()
        {
            self.heartbeat_responses += 1;
        }
        if t == MessageType::MsgReadIndex
            && let Some(now) = now
            && self.answer_lease_round(&msg, now)
        {
            return;
        }
        if let Err(e) = self.raw.step(msg) {
            tracing::debug!(error = %e, "raft refused a peer message");
        }
        self.rerandomize();
        // A transfer request may have arrived, forwarded by a follower.
        self.observe_transfer();
    }

    /// The lease rule for leader transfers: once one starts in a term, no
    /// lease for the rest of it, whether raft-rs aborts it later or not.
    fn observe_transfer(&mut self) {
        if self.raw.raft.lead_transferee.is_some() && !self.bugs.lease_across_transfer {
            self.transfer_term = Some(self.raw.raft.term);
            self.lease = None;
        }
    }

    /// The lease length in force.
    fn lease_duration(&self) -> Duration {
        if self.bugs.lease_ignores_drift {
            self.cfg.tick_interval * (self.cfg.election_tick as u32 - 1)
        } else {
            self.cfg.lease_duration()
        }
    }

    /// When this member's read lease ends, if it leads in a term in which
    /// no transfer started and holds a lease of that term (validity against
    /// the clock is the caller's).
    fn lease_end(&mut self) -> Option<Instant> {
        self.observe_transfer();
        let term = self.raw.raft.term;
        let lease = self.lease.filter(|l| l.term == term)?;
        (self.is_leader() && self.transfer_term != Some(term)).then_some(lease.until)
    }

    /// Whether this member leads with a read lease at `now`.
    fn holds_lease(&mut self, now: Instant) -> bool {
        self.lease_end().is_some_and(|until| now < until)
    }

    /// The lease to publish at the end of a turn (see [`LeaseGrant`]); none
    /// unless [`Core::lease_end`] has one. Validity against the clock is
    /// checked by the reader.
    pub(crate) fn lease_grant(&mut self) -> Option<LeaseGrant> {
        if self.bugs.raft_lease_based {
            return None;
        }
        let until = self.lease_end()?;
        Some(LeaseGrant {
            until,
            commit: self.commit(),
        })
    }

    /// Lease reads were answered from a published grant (at or before
    /// `now`): keeps the renewal rounds going as [`Core::lease_read`] does.
    pub(crate) fn note_lease_wanted(&mut self, now: Instant) {
        self.lease_wanted = Some(self.lease_wanted.map_or(now, |t| t.max(now)));
    }

    /// A lease read came in within the last lease length: renewal rounds
    /// keep the lease while this holds.
    fn lease_in_use(&self, now: Instant) -> bool {
        self.lease_wanted
            .is_some_and(|t| now.saturating_duration_since(t) < self.lease_duration())
    }

    /// When this leader's read lease runs out (on its own clock), if it holds
    /// one. The simulator watches it to time a partition right after a
    /// round was acknowledged.
    pub(crate) fn lease_until(&self) -> Option<Instant> {
        self.lease.map(|l| l.until)
    }

    /// Extends the lease to `start + lease_duration` when a round started at
    /// `start` in `term`/`epoch` was acknowledged by a quorum.
    fn confirm_lease(&mut self, start: Instant, term: u64, epoch: u64) {
        let current = self.raw.raft.term;
        if !self.is_leader()
            || term != current
            || epoch != self.conf_epoch
            || self.transfer_term == Some(current)
        {
            return;
        }
        let until = start + self.lease_duration();
        match &mut self.lease {
            Some(l) if l.term == current => l.until = l.until.max(until),
            _ => {
                self.lease = Some(Lease {
                    term: current,
                    until,
                })
            }
        }
    }

    /// Drops the lease (a membership change: the quorum that confirmed it
    /// is not the group's quorum any more).
    fn drop_lease(&mut self) {
        self.lease = None;
        self.conf_epoch += 1;
    }

    /// A lease renewal round is due: lease reads came in lately, the lease
    /// was last confirmed more than a heartbeat interval ago (so lease reads
    /// in steady use never find it expired), and no round of this term is
    /// in flight that would renew it.
    fn renewal_due(&self, now: Instant) -> bool {
        let len = self.lease_duration();
        let term = self.raw.raft.term;
        self.is_leader()
            && !self.bugs.raft_lease_based
            && self.transfer_term != Some(term)
            && self.lease_in_use(now)
            && self.lease.is_none_or(|l| {
                let heartbeat = self.cfg.tick_interval * self.cfg.heartbeat_tick as u32;
                l.term != term || l.until.saturating_duration_since(now) + heartbeat < len
            })
            && !self.inflight_reads.values().any(|b| b.term == term)
    }

    /// Queues a proposal. `seq` must grow with every call.
    pub(crate) fn propose(
        &mut self,
        seq: u64,
        command: Vec<u8>,
        deadline: Instant,
        now: Instant,
        out: &mut Outbox,
    ) {
        if seq <= self.last_seq {
            out.failures.push(Failure::Proposal {
                seq,
                error: Error::fatal(format!(
                    "proposal sequence went backwards ({seq} after {})",
                    self.last_seq
                )),
            });
            return;
        }
        self.last_seq = seq;
        if self.pending.len() >= self.cfg.max_pending_proposals {
            out.failures.push(Failure::Proposal {
                seq,
                error: Error::Overloaded {
                    reason: OverloadReason::TooManyPending,
                },
            });
            return;
        }
        let lowest_outstanding = self.pending.keys().next().copied().unwrap_or(seq).min(seq);
        let data = Envelope {
            member: self.id.0,
            incarnation: self.incarnation,
            seq,
            lowest_outstanding,
            command,
        }
        .encode_to_vec();
        self.pending.insert(
            seq,
            Pending {
                data,
                deadline,
                left: false,
                last_attempt: now,
                held: Held::NoLeader,
            },
        );
        self.waiting.push_back(seq);
        if self.waiting.len() == 1 {
            self.admit(now);
        }
    }

    /// Queues a linearizable read; it is answered once the read index
    /// round completes and the index is applied.
    pub(crate) fn read(&mut self, token: u64, deadline: Instant) {
        self.queued_reads.push(ReadWaiter {
            token,
            deadline,
            lease: false,
        });
    }

    /// Queues a lease read: answered at this leader's commit index at once
    /// while it holds its lease; otherwise it joins the next ReadIndex
    /// round. A follower sends its lease reads in a round of their own,
    /// which a leader holding its lease answers at once (one round trip to
    /// the leader, no quorum round); a leader without one runs the round.
    pub(crate) fn lease_read(
        &mut self,
        token: u64,
        deadline: Instant,
        now: Instant,
        out: &mut Outbox,
    ) {
        self.lease_wanted = Some(now);
        if !self.bugs.raft_lease_based && self.holds_lease(now) {
            let index = self.commit();
            match out.reads.last_mut() {
                Some(r) if r.index == index => r.tokens.push(token),
                _ => out.reads.push(ReadReady {
                    index,
                    tokens: vec![token],
                }),
            }
            return;
        }
        self.queued_reads.push(ReadWaiter {
            token,
            deadline,
            lease: true,
        });
    }

    /// Starts a ReadIndex round for every queued read (and lease renewal
    /// rounds). Called by the driver after a batch of inputs, so that many
    /// reads share one round.
    pub(crate) fn issue_reads(&mut self, now: Instant, out: &mut Outbox) {
        if self.bugs.lease_from_heartbeat_count && self.is_leader() {
            let quorum = self.conf_state.voters.len() / 2 + 1;
            if self.heartbeat_responses + 1 >= quorum {
                self.heartbeat_responses = 0;
                let (term, epoch) = (self.raw.raft.term, self.conf_epoch);
                if self.raw.raft.commit_to_current_term() {
                    self.confirm_lease(now, term, epoch);
                }
            }
        }
        let renewal = self.queued_reads.is_empty() && self.renewal_due(now);
        if self.queued_reads.is_empty() && !renewal {
            return;
        }
        if self.bugs.local_reads && !renewal {
            out.reads.push(ReadReady {
                index: self.applied,
                tokens: self.queued_reads.drain(..).map(|w| w.token).collect(),
            });
            return;
        }
        if self.leader.leader.is_none() {
            return;
        }
        if self.is_leader() && !self.raw.raft.commit_to_current_term() {
            // raft-rs would drop it silently; wait for the term's first commit.
            return;
        }
        let queued = std::mem::take(&mut self.queued_reads);
        let (lease, plain): (Vec<_>, Vec<_>) = if self.is_leader() || self.bugs.raft_lease_based {
            (Vec::new(), queued)
        } else {
            queued.into_iter().partition(|w| w.lease)
        };
        if !plain.is_empty() || renewal {
            self.issue_round(plain, now, renewal, false);
        }
        if !lease.is_empty() {
            self.issue_round(lease, now, false, true);
        }
    }

    fn issue_round(&mut self, waiters: Vec<ReadWaiter>, now: Instant, renewal: bool, lease: bool) {
        self.read_counter += 1;
        let ctx = ReadContext {
            member: self.id.0,
            incarnation: if self.bugs.reuse_read_context {
                0
            } else {
                self.incarnation
            },
            counter: self.read_counter,
            lease,
        };
        self.raw.read_index(ctx.encode());
        self.inflight_reads.insert(
            self.read_counter,
            ReadBatch {
                waiters,
                issued_at: now,
                term: self.raw.raft.term,
                epoch: self.conf_epoch,
                renewal,
            },
        );
    }

    /// A follower's round of lease reads reaching the leader: answered at
    /// once with the commit index while this leader holds its lease (`now`
    /// is the clock as the message is handled). Returns whether it was
    /// answered; if not, raft runs the round as usual. Either way the
    /// lease is wanted, so renewal rounds keep it.
    fn answer_lease_round(&mut self, msg: &Message, now: Instant) -> bool {
        let lease_round = msg.entries.len() == 1
            && ReadContext::decode(&msg.entries[0].data).is_some_and(|c| c.lease);
        if !lease_round || !self.is_leader() || self.bugs.raft_lease_based {
            return false;
        }
        self.note_lease_wanted(now);
        let holds = self.bugs.follower_lease_unchecked || self.holds_lease(now);
        if !holds || !self.raw.raft.commit_to_current_term() {
            return false;
        }
        self.notices.push(Message {
            msg_type: MessageType::MsgReadIndexResp as i32,
            to: msg.from,
            from: self.id.0,
            term: self.raw.raft.term,
            index: self.commit(),
            entries: msg.entries.clone(),
            ..Default::default()
        });
        true
    }

    /// Hands queued proposals to raft while admission allows.
    pub(crate) fn admit(&mut self, now: Instant) {
        while let Some(&seq) = self.waiting.front() {
            let lag = self
                .raw
                .raft
                .raft_log
                .committed
                .saturating_sub(self.applied);
            let Some(p) = self.pending.get_mut(&seq) else {
                self.waiting.pop_front();
                continue;
            };
            if lag > self.cfg.max_apply_lag {
                p.held = Held::ApplyLag;
                return;
            }
            if self.leader.leader.is_none() {
                p.held = Held::NoLeader;
                return;
            }
            match self.raw.propose(Vec::new(), p.data.clone()) {
                Ok(()) => {
                    p.left = true;
                    p.last_attempt = now;
                    self.waiting.pop_front();
                }
                Err(raft::Error::ProposalDropped) => {
                    p.held = if self.raw.raft.lead_transferee.is_some() {
                        Held::Dropped(DropReason::LeaderTransfer)
                    } else if self.raw.raft.state == StateRole::Leader {
                        Held::Uncommitted
                    } else {
                        Held::Dropped(DropReason::Rejected)
                    };
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "raft refused a proposal");
                    p.held = Held::Dropped(DropReason::Rejected);
                    return;
                }
            }
        }
    }

    /// The durable log has caught up with Ready `number`.
    pub(crate) fn on_persisted(
        &mut self,
        number: u64,
        tasks: usize,
        installed: Option<(u64, MemberSet)>,
        out: &mut Outbox,
    ) {
        self.persisting = self.persisting.saturating_sub(tasks);
        self.raw.on_persist_ready(number);
        if let Some((index, members)) = installed {
            // A later snapshot may be handed out already: it stays.
            if self.installing.as_ref().is_some_and(|d| d.index <= index) {
                self.installing = None;
            }
            // The state store now stands at the snapshot: raft may count it
            // as applied (on_persist_ready made it persisted).
            if index > self.applied {
                self.applied = index;
                self.raw.advance_apply_to(index);
            }
            // raft took the configuration from the snapshot's metadata.
            self.conf_state = self.raw.raft.prs().conf().to_conf_state();
            self.drop_lease();
            self.set_members(members);
            out.membership_changed = Some(self.membership());
        }
    }

    /// Where to compact the log now, if anywhere: once it holds
    /// `compaction_threshold` entries that the state store has durably
    /// applied, through all but `compaction_retain` of them (kept for
    /// followers a little behind). Each point is answered once; the caller
    /// compacts ([`compact_log`]) off the raft thread: a compaction
    /// waits for the log's writer, which may be in a slow sync, and the
    /// raft thread must keep ticking meanwhile.
    pub(crate) fn compaction_due(&mut self, durable_applied: u64) -> Option<u64> {
        let first = self.raw.store().log().first_index().ok()?;
        let applied = if self.bugs.compact_past_durable {
            self.applied
        } else {
            durable_applied.min(self.applied)
        };
        if applied < first.saturating_add(self.cfg.compaction_threshold) {
            return None;
        }
        let through = applied.saturating_sub(self.cfg.compaction_retain);
        if through < first || through <= self.compaction_asked {
            return None;
        }
        self.compaction_asked = through;
        Some(through)
    }

    /// The state machine applied everything up to `index`; `completed`
    /// lists this member's proposals (by seq) that got their answer.
    pub(crate) fn on_applied(&mut self, index: u64, completed: &[u64], now: Instant) {
        for seq in completed {
            self.pending.remove(seq);
        }
        if index > self.applied {
            self.applied = index;
            self.raw.advance_apply_to(index);
        }
        if !self.conf_answers.is_empty() {
            let applied = self.applied;
            let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.conf_answers)
                .into_iter()
                .partition(|(i, _, _)| *i <= applied);
            self.conf_answers = later;
            self.ready_answers
                .extend(ready.into_iter().map(|(_, t, r)| (t, r)));
        }
        if !self.waiting.is_empty() {
            self.admit(now);
        }
    }

    /// Applies a committed membership change. Returns the new `ConfState`
    /// and member metadata, which the caller persists with the applied index.
    ///
    /// A change that re-adds a removed id is skipped (on every member alike,
    /// so replicas stay identical). raft-rs refusing a change (it cannot
    /// happen for changes ha proposes) keeps the configuration as it was.
    pub(crate) fn apply_conf_change(
        &mut self,
        entry: &Entry,
        out: &mut Outbox,
    ) -> Result<(ConfState, MemberSet), Error> {
        let cc = match entry.entry_type() {
            EntryType::EntryConfChange => {
                ha_core::eraftpb::ConfChange::decode(entry.data.as_slice())
                    .map(raft_proto::ConfChangeI::into_v2)
            }
            EntryType::EntryConfChangeV2 => ConfChangeV2::decode(entry.data.as_slice()),
            EntryType::EntryNormal => {
                return Err(Error::fatal("apply_conf_change on a normal entry"));
            }
        };
        let cc = match cc {
            Ok(cc) => cc,
            Err(e) => {
                tracing::warn!(index = entry.index, error = %e, "skipping undecodable conf change");
                return Ok((self.conf_state.clone(), self.members.clone()));
            }
        };
        let ctx = ConfContext::decode(cc.context.as_slice()).unwrap_or_default();
        let own = ctx.member == self.id.0 && ctx.incarnation == self.incarnation;
        let reused = cc.changes.iter().find(|c| {
            c.change_type() != ConfChangeType::RemoveNode
                && self.members.removed.contains(&c.node_id)
        });
        if let Some(c) = reused {
            tracing::warn!(member = c.node_id, "refusing to re-add a removed member id");
            if own && let Some(op) = self.conf_ops.remove(&ctx.op) {
                self.conf_answers.push((
                    entry.index,
                    op.token,
                    Err(Error::MemberIdReused {
                        member: NodeId(c.node_id),
                    }),
                ));
            }
            return Ok((self.conf_state.clone(), self.members.clone()));
        }
        match self.raw.apply_conf_change(&cc) {
            Ok(cs) => {
                self.conf_state = cs;
                self.drop_lease();
                let me = self.id.0;
                if self.is_leader()
                    && !self.conf_state.voters.contains(&me)
                    && !self.conf_state.voters_outgoing.contains(&me)
                {
                    // A leader elected during a joint change that removes
                    // it has just applied its own removal. raft-rs keeps it
                    // leading (untested there, its comment says) and then
                    // panics on the next append response, as its own
                    // progress is gone (found by the simulator). It steps
                    // down instead; the remaining voters elect a leader.
                    tracing::info!(node = %self.id, "this leader applied its own removal: stepping down");
                    let term = self.raw.raft.term;
                    self.raw.raft.become_follower(term, raft::INVALID_ID);
                }
            }
            Err(e) => {
                tracing::warn!(index = entry.index, error = %e, "raft refused a committed conf change; configuration unchanged");
                if own && let Some(op) = self.conf_ops.remove(&ctx.op) {
                    self.conf_answers.push((
                        entry.index,
                        op.token,
                        Err(Error::InvalidMembershipChange {
                            member: NodeId(cc.changes.first().map(|c| c.node_id).unwrap_or(0)),
                            reason: "raft refused the change",
                        }),
                    ));
                }
                return Ok((self.conf_state.clone(), self.members.clone()));
            }
        }
        self.rerandomize();
        for c in &cc.changes {
            match c.change_type() {
                ConfChangeType::RemoveNode => {
                    self.members.info.remove(&c.node_id);
                    self.members.removed.insert(c.node_id);
                }
                ConfChangeType::AddNode => {
                    let entry = self.members.info.entry(c.node_id).or_default();
                    entry.1 = false;
                }
                ConfChangeType::AddLearnerNode => {
                    self.members.info.entry(c.node_id).or_default();
                }
            }
        }
        for m in &ctx.members {
            if self.members.info.contains_key(&m.id) {
                let e = self.members.info.entry(m.id).or_default();
                e.0 = Bytes::from(m.address.clone());
                if !ctx.address_update {
                    e.1 = m.auto_promote;
                }
            }
        }
        let joint = !self.conf_state.voters_outgoing.is_empty();
        if own && let Some(op) = self.conf_ops.get_mut(&ctx.op) {
            if joint {
                op.awaiting_leave = true;
            } else if let Some(op) = self.conf_ops.remove(&ctx.op) {
                self.conf_answers.push((entry.index, op.token, Ok(())));
            }
        }
        if !joint {
            let waiting: Vec<u64> = self
                .conf_ops
                .iter()
                .filter(|(_, op)| op.awaiting_leave)
                .map(|(k, _)| *k)
                .collect();
            for k in waiting {
                if let Some(op) = self.conf_ops.remove(&k) {
                    self.conf_answers.push((entry.index, op.token, Ok(())));
                }
            }
        }
        if self.members.removed.contains(&self.id.0) {
            if !self.removed_self {
                tracing::warn!(node = %self.id, "this member applied its own removal");
            }
            self.removed_self = true;
        }
        out.membership_changed = Some(self.membership());
        Ok((self.conf_state.clone(), self.members.clone()))
    }

    /// A peer could not be reached.
    pub(crate) fn report_unreachable(&mut self, peer: NodeId) {
        self.raw.report_unreachable(peer.0);
    }

    /// The outcome of sending a snapshot.
    pub(crate) fn report_snapshot(&mut self, peer: NodeId, outcome: SnapshotOutcome) {
        let status = match outcome {
            SnapshotOutcome::Finished => raft::SnapshotStatus::Finish,
            SnapshotOutcome::Failed => raft::SnapshotStatus::Failure,
        };
        self.raw.report_snapshot(peer.0, status);
    }

    /// Asks raft to hand leadership to `target`.
    pub(crate) fn transfer_leader(&mut self, target: NodeId) -> Result<(), Error> {
        if !self.is_leader() {
            return Err(Error::NotLeader {
                leader_hint: self.leader.leader,
            });
        }
        self.raw.transfer_leader(target.0);
        self.observe_transfer();
        Ok(())
    }

    /// Whether this leader heard from `peer` within the last election
    /// timeout (raft's `recent_active`); false on a follower.
    pub(crate) fn recently_active(&self, peer: NodeId) -> bool {
        self.is_leader()
            && self
                .raw
                .raft
                .prs()
                .get(peer.0)
                .is_some_and(|p| p.recent_active)
    }

    /// The most up-to-date voter other than this member: the best target
    /// for a leader transfer.
    pub(crate) fn best_transferee(&self) -> Option<NodeId> {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        conf.voters
            .iter()
            .filter(|&&v| v != self.id.0)
            .filter_map(|&v| self.raw.raft.prs().get(v).map(|p| (v, p)))
            // A peer we have not heard from lately cannot take over.
            .filter(|(_, p)| p.recent_active)
            .map(|(v, p)| (p.matched, v))
            .max()
            .map(|(_, v)| NodeId(v))
    }

    /// Handles every Ready raft has, leaving the work in `out`.
    ///
    /// # Errors
    /// A log write that cannot be made readable is fatal for this member.
    pub(crate) fn handle_ready(&mut self, now: Instant, out: &mut Outbox) -> Result<(), Error> {
        self.rerandomize();
        out.messages.append(&mut self.notices);
        out.membership_done.append(&mut self.ready_answers);
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            out.messages.extend(rd.take_messages());
            let mut install = None;
            let mut restart = None;
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot();
                let meta = snap.metadata.clone().unwrap_or_default();
                let descriptor = decode_descriptor(&snap.data).map_err(Error::Storage)?;
                if (descriptor.index, descriptor.term) != (meta.index, meta.term) {
                    return Err(Error::fatal(
                        "raft handed back a snapshot whose descriptor disagrees with it",
                    ));
                }
                let point = LogPoint {
                    index: meta.index,
                    term: meta.term,
                };
                self.raw.store().log().restart_readable(point)?;
                restart = Some(point);
                self.installing = Some(descriptor.clone());
                install = Some(descriptor);
            }
            for rs in rd.take_read_states() {
                self.read_state_ready(rs.index, &rs.request_ctx, out);
            }
            out.committed.extend(rd.take_committed_entries());
            let entries = rd.take_entries();
            if !entries.is_empty() {
                self.raw.store().log().append_readable(&entries)?;
            }
            let write = LogWrite {
                snapshot: restart,
                entries,
                hard_state: rd.hs().cloned(),
                sync: rd.must_sync() || restart.is_some(),
            };
            let mut messages = rd.take_persisted_messages();
            if self.bugs.ack_before_sync {
                out.messages.append(&mut messages);
            }
            // raft-rs holds every message of a follower until the Ready's
            // writes are durable, but only some of them claim anything about
            // this member's disk (append and vote responses). Heartbeat
            // responses and ReadIndex traffic claim nothing, so they leave
            // now: otherwise a slow fsync silences a follower for as long
            // as it lasts, stalls linearizable reads behind log writes, and
            // can make a check-quorum leader step down (etcd's raft sends
            // only these three types after the append, too).
            let (wait, now): (Vec<Message>, Vec<Message>) =
                messages.into_iter().partition(claims_persistence);
            out.messages.extend(now);
            let messages = wait;
            let number = rd.number();
            let nothing_to_persist = write.entries.is_empty()
                && write.hard_state.is_none()
                && messages.is_empty()
                && install.is_none();
            self.raw.advance_append_async(rd);
            if nothing_to_persist && self.persisting == 0 {
                self.raw.on_persist_ready(number);
            } else {
                self.persisting += 1;
                out.persist.push(PersistTask {
                    number,
                    write,
                    messages,
                    install,
                });
            }
        }
        self.observe_leader(now, out);
        Ok(())
    }

    fn read_state_ready(&mut self, index: u64, ctx: &[u8], out: &mut Outbox) {
        let Some(ctx) = ReadContext::decode(ctx) else {
            return;
        };
        let incarnation = if self.bugs.reuse_read_context {
            0
        } else {
            self.incarnation
        };
        if ctx.member != self.id.0 || ctx.incarnation != incarnation {
            return;
        }
        if let Some(batch) = self.inflight_reads.remove(&ctx.counter) {
            // A quorum acknowledged this context after it was sent: no
            // other leader can be elected until a follower's election
            // timeout after that (see `Config::lease_duration`). raft-rs
            // also releases earlier rounds with a later one; their own,
            // earlier send time is the safe start.
            if !self.bugs.raft_lease_based {
                self.confirm_lease(batch.issued_at, batch.term, batch.epoch);
            }
            if !batch.waiters.is_empty() {
                out.reads.push(ReadReady {
                    index,
                    tokens: batch.waiters.iter().map(|w| w.token).collect(),
                });
            }
        }
    }

    fn observe_leader(&mut self, now: Instant, out: &mut Outbox) {
        let current = LeaderInfo {
            term: self.raw.raft.term,
            leader: match self.raw.raft.leader_id {
                0 => None,
                id => Some(NodeId(id)),
            },
        };
        if current == self.leader {
            return;
        }
        let leader_moved = current.leader != self.leader.leader;
        if current.term != self.leader.term {
            self.heartbeat_responses = 0;
        }
        if !self.is_leader() {
            self.lease = None;
        }
        self.leader = current;
        out.leader_changed = Some(current);
        if current.leader.is_none() {
            return;
        }
        if leader_moved {
            // A new leader may never have seen what we forwarded to the old
            // one: propose it again (the dedup table makes that safe), and
            // ask again for reads whose round the old leader may drop.
            for p in self.pending.values_mut().filter(|p| p.left) {
                if self.raw.propose(Vec::new(), p.data.clone()).is_ok() {
                    p.last_attempt = now;
                }
            }
            for (_, batch) in std::mem::take(&mut self.inflight_reads) {
                self.queued_reads.extend(batch.waiters);
            }
        }
        self.admit(now);
        self.issue_reads(now, out);
    }

    fn retry_proposals(&mut self, now: Instant) {
        let every = self.cfg.proposal_retry_interval;
        if self.leader.leader.is_none() {
            return;
        }
        for p in self.pending.values_mut() {
            if p.left && now.saturating_duration_since(p.last_attempt) >= every {
                p.last_attempt = now;
                if let Err(e) = self.raw.propose(Vec::new(), p.data.clone()) {
                    tracing::debug!(error = %e, "re-proposal refused; will retry");
                }
            }
        }
    }

    fn retry_reads(&mut self, now: Instant) {
        let every = self.cfg.read_retry_interval;
        let stale: Vec<u64> = self
            .inflight_reads
            .iter()
            .filter(|(_, b)| now.saturating_duration_since(b.issued_at) >= every)
            .map(|(c, _)| *c)
            .collect();
        for c in stale {
            if let Some(b) = self.inflight_reads.remove(&c) {
                self.queued_reads.extend(b.waiters);
            }
        }
    }

    fn expire(&mut self, now: Instant, out: &mut Outbox) {
        let timeout = self.cfg.request_timeout;
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in expired {
            let Some(p) = self.pending.remove(&seq) else {
                continue;
            };
            let error = if p.left {
                Error::OutcomeUnknown {
                    cause: UnknownCause::DeadlineExceeded,
                }
            } else {
                match p.held {
                    Held::NoLeader => Error::Timeout { after: timeout },
                    Held::ApplyLag => Error::Overloaded {
                        reason: OverloadReason::ApplyLag,
                    },
                    Held::Uncommitted => Error::Overloaded {
                        reason: OverloadReason::Uncommitted,
                    },
                    Held::Dropped(reason) => Error::ProposalDropped { reason },
                }
            };
            out.failures.push(Failure::Proposal { seq, error });
        }
        if !self.waiting.is_empty() {
            let pending = &self.pending;
            self.waiting.retain(|s| pending.contains_key(s));
        }
        let expire_reads = |waiters: &mut Vec<ReadWaiter>, out: &mut Outbox| {
            waiters.retain(|w| {
                if w.deadline <= now {
                    out.failures.push(Failure::Read {
                        token: w.token,
                        error: Error::Timeout { after: timeout },
                    });
                    false
                } else {
                    true
                }
            });
        };
        expire_reads(&mut self.queued_reads, out);
        for b in self.inflight_reads.values_mut() {
            expire_reads(&mut b.waiters, out);
        }
        self.inflight_reads
            .retain(|_, b| b.renewal || !b.waiters.is_empty());
    }

    /// Fails every outstanding call (shutdown or fatal error).
    pub(crate) fn fail_all(&mut self, fatal: Option<&Error>, out: &mut Outbox) {
        for (_, op) in std::mem::take(&mut self.conf_ops) {
            let error = match fatal {
                Some(e) => e.clone(),
                None => Error::OutcomeUnknown {
                    cause: UnknownCause::Shutdown,
                },
            };
            out.membership_done.push((op.token, Err(error)));
        }
        for (seq, p) in std::mem::take(&mut self.pending) {
            let error = match fatal {
                Some(e) => e.clone(),
                None if p.left => Error::OutcomeUnknown {
                    cause: UnknownCause::Shutdown,
                },
                None => Error::Shutdown,
            };
            out.failures.push(Failure::Proposal { seq, error });
        }
        self.waiting.clear();
        let mut readers = std::mem::take(&mut self.queued_reads);
        for (_, b) in std::mem::take(&mut self.inflight_reads) {
            readers.extend(b.waiters);
        }
        for w in readers {
            let error = match fatal {
                Some(e) => e.clone(),
                None => Error::Shutdown,
            };
            out.failures.push(Failure::Read {
                token: w.token,
                error,
            });
        }
    }

    pub(crate) fn status(&self) -> CoreStatus {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let mut voters: Vec<NodeId> = conf.voters.iter().map(|&v| NodeId(v)).collect();
        let mut learners: Vec<NodeId> = conf.learners.iter().map(|&v| NodeId(v)).collect();
        voters.sort_unstable();
        learners.sort_unstable();
        CoreStatus {
            role: self.raw.raft.state.into(),
            term: self.raw.raft.term,
            leader: self.leader.leader,
            commit: self.raw.raft.raft_log.committed,
            applied: self.applied,
            voters,
            learners,
            pending_proposals: self.pending.len(),
            lead_transferee: self.raw.raft.lead_transferee.map(NodeId),
            removed: self.removed_self,
            peers: self.peer_progress(),
        }
    }

    /// The leader's progress of every other member, by id (empty unless
    /// this member leads).
    pub(crate) fn peer_progress(&self) -> Vec<PeerProgress> {
        if !self.is_leader() {
            return Vec::new();
        }
        let voters = self.raw.raft.prs().conf().voters();
        let mut peers: Vec<PeerProgress> = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != self.id.0)
            .map(|(id, p)| PeerProgress {
                id: NodeId(*id),
                voter: voters.contains(*id),
                state: match p.state {
                    ProgressState::Probe => Replication::Probe,
                    ProgressState::Replicate => Replication::Replicate,
                    ProgressState::Snapshot => Replication::Snapshot,
                },
                matched: p.matched,
                next_index: p.next_idx,
                paused: p.is_paused(),
                recent_active: p.recent_active,
                pending_snapshot: p.pending_snapshot,
                inflight_full: p.ins.full(),
            })
            .collect();
        peers.sort_unstable_by_key(|p| p.id);
        peers
    }

    /// Campaign at once (tests and single-member groups).
    pub(crate) fn campaign(&mut self) -> Result<(), Error> {
        let r = self
            .raw
            .campaign()
            .map_err(|e| Error::fatal(format!("campaign failed: {e}")));
        self.rerandomize();
        r
    }
}

/// Compacts `log` through `through` (a point from
/// [`Core::compaction_due`]); a refusal (entries not persisted yet, a
/// compaction already past it) leaves it for a later point.
pub(crate) fn compact_log<L: LogStore + ?Sized>(log: &L, node: NodeId, through: u64) {
    match log.compact(through) {
        Ok(()) => tracing::debug!(%node, through, "log compacted"),
        Err(e) => tracing::debug!(%node, through, error = %e, "log compaction deferred"),
    }
}

/// Whether a message of a follower or candidate tells its receiver
/// something about this member's durable state, so that it may leave only
/// once the Ready's writes are durable. Unknown types wait, to be safe.
pub(crate) fn claims_persistence(m: &Message) -> bool {
    !matches!(
        MessageType::from_i32(m.msg_type),
        Some(
            MessageType::MsgHeartbeatResponse
                | MessageType::MsgReadIndex
                | MessageType::MsgReadIndexResp
                | MessageType::MsgPropose
        )
    )
}

/// A message a peer may send: a known, non-local message type whose entries
/// all have known types.
pub(crate) fn valid_peer_message(m: &Message) -> bool {
    match MessageType::from_i32(m.msg_type) {
        None
        | Some(
            MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum,
        ) => false,
        Some(_) => m
            .entries
            .iter()
            .all(|e| EntryType::from_i32(e.entry_type).is_some()),
    }
}

impl<L: LogStore> Core<L> {
    /// Sets the replicated member metadata recovered from the state store.
    pub(crate) fn set_members(&mut self, members: MemberSet) {
        self.members = members;
        if self.members.removed.contains(&self.id.0) {
            self.removed_self = true;
        }
    }

    /// The applied membership.
    pub(crate) fn membership(&self) -> Membership {
        self.members.view(&self.conf_state)
    }

    fn in_config(&self, id: u64) -> bool {
        let cs = &self.conf_state;
        cs.voters.contains(&id)
            || cs.voters_outgoing.contains(&id)
            || cs.learners.contains(&id)
            || cs.learners_next.contains(&id)
    }

    /// Proposes a membership change (several changes: one joint change,
    /// left automatically). Only the leader decides; the answer arrives in
    /// `Outbox::membership_done` under `token`.
    pub(crate) fn propose_membership(
        &mut self,
        token: u64,
        changes: Vec<MemberChange>,
        force: bool,
        deadline: Instant,
        out: &mut Outbox,
    ) {
        match self.check_membership(&changes, force) {
            Ok(()) => {}
            Err(e) => {
                out.membership_done.push((token, Err(e)));
                return;
            }
        }
        self.op_counter += 1;
        let op = self.op_counter;
        let mut ctx = ConfContext {
            member: self.id.0,
            incarnation: self.incarnation,
            op,
            members: Vec::new(),
            address_update: false,
        };
        let mut singles = Vec::new();
        for c in &changes {
            let (change_type, id) = match c {
                MemberChange::AddVoter { id, address } => {
                    ctx.members.push(MemberRecord {
                        id: id.0,
                        address: address.to_vec(),
                        auto_promote: false,
                    });
                    (ConfChangeType::AddNode, *id)
                }
                MemberChange::AddLearner {
                    id,
                    address,
                    promote_when_caught_up,
                } => {
                    ctx.members.push(MemberRecord {
                        id: id.0,
                        address: address.to_vec(),
                        auto_promote: *promote_when_caught_up,
                    });
                    (ConfChangeType::AddLearnerNode, *id)
                }
                MemberChange::Promote(id) => (ConfChangeType::AddNode, *id),
                MemberChange::Remove(id) => (ConfChangeType::RemoveNode, *id),
            };
            singles.push(ConfChangeSingle {
                change_type: change_type as i32,
                node_id: id.0,
            });
        }
        self.submit_conf_change(token, op, ctx, singles, deadline, out);
    }

    /// Changes a member's address: a conf change that raft sees as a no-op
    /// (re-adding the member in its current role), keeping the id.
    pub(crate) fn propose_address_update(
        &mut self,
        token: u64,
        id: NodeId,
        address: Bytes,
        deadline: Instant,
        out: &mut Outbox,
    ) {
        let role = if self.conf_state.voters.contains(&id.0) {
            ConfChangeType::AddNode
        } else if self.conf_state.learners.contains(&id.0) {
            ConfChangeType::AddLearnerNode
        } else {
            out.membership_done.push((
                token,
                Err(Error::InvalidMembershipChange {
                    member: id,
                    reason: "not a member",
                }),
            ));
            return;
        };
        if let Err(e) = self.check_leader_and_idle() {
            out.membership_done.push((token, Err(e)));
            return;
        }
        self.op_counter += 1;
        let op = self.op_counter;
        let auto_promote = self.members.info.get(&id.0).is_some_and(|(_, p)| *p);
        let ctx = ConfContext {
            member: self.id.0,
            incarnation: self.incarnation,
            op,
            members: vec![MemberRecord {
                id: id.0,
                address: address.to_vec(),
                auto_promote,
            }],
            address_update: true,
        };
        let single = ConfChangeSingle {
            change_type: role as i32,
            node_id: id.0,
        };
        self.submit_conf_change(token, op, ctx, vec![single], deadline, out);
    }

    fn submit_conf_change(
        &mut self,
        token: u64,
        op: u64,
        ctx: ConfContext,
        changes: Vec<ConfChangeSingle>,
        deadline: Instant,
        out: &mut Outbox,
    ) {
        let cc = ConfChangeV2 {
            transition: ConfChangeTransition::Auto as i32,
            changes,
            context: ctx.encode_to_vec(),
        };
        match self.raw.propose_conf_change(Vec::new(), cc) {
            Ok(()) => {
                self.conf_ops.insert(
                    op,
                    ConfOp {
                        token,
                        deadline,
                        awaiting_leave: false,
                    },
                );
            }
            Err(raft::Error::ProposalDropped) => out.membership_done.push((
                token,
                Err(Error::ProposalDropped {
                    reason: if self.raw.raft.lead_transferee.is_some() {
                        DropReason::LeaderTransfer
                    } else {
                        DropReason::Rejected
                    },
                }),
            )),
            Err(e) => out.membership_done.push((
                token,
                Err(Error::InvalidMembershipChange {
                    member: NodeId(0),
                    reason: if matches!(e, raft::Error::ConfChangeError(_)) {
                        "raft refused the change"
                    } else {
                        "raft refused the proposal"
                    },
                }),
            )),
        }
    }

    fn check_leader_and_idle(&self) -> Result<(), Error> {
        if self.removed_self {
            return Err(Error::Removed { member: self.id });
        }
        if !self.is_leader() {
            return Err(Error::NotLeader {
                leader_hint: self.leader.leader,
            });
        }
        // raft-rs silently turns a change proposed while another is pending
        // or while the configuration is joint into an empty entry; refuse it
        // here, with a typed error, instead.
        if self.raw.raft.pending_conf_index > self.applied
            || !self.conf_state.voters_outgoing.is_empty()
            || !self.conf_ops.is_empty()
        {
            return Err(Error::MembershipChangeInProgress);
        }
        Ok(())
    }

    fn check_membership(&self, changes: &[MemberChange], force: bool) -> Result<(), Error> {
        self.check_leader_and_idle()?;
        let cs = &self.conf_state;
        let mut voters: std::collections::BTreeSet<u64> = cs.voters.iter().copied().collect();
        let mut seen = std::collections::BTreeSet::new();
        if changes.is_empty() {
            return Err(Error::InvalidMembershipChange {
                member: self.id,
                reason: "no change requested",
            });
        }
        for c in changes {
            let id = c.id();
            if id.0 == 0 {
                return Err(Error::InvalidMembershipChange {
                    member: id,
                    reason: "member id 0 is reserved",
                });
            }
            if !seen.insert(id.0) {
                return Err(Error::InvalidMembershipChange {
                    member: id,
                    reason: "the same member twice in one change",
                });
            }
            let known = self.in_config(id.0);
            match c {
                MemberChange::AddVoter { .. } | MemberChange::AddLearner { .. } => {
                    if self.members.removed.contains(&id.0) {
                        return Err(Error::MemberIdReused { member: id });
                    }
                    if known {
                        return Err(Error::InvalidMembershipChange {
                            member: id,
                            reason: "already a member",
                        });
                    }
                    if matches!(c, MemberChange::AddVoter { .. }) {
                        voters.insert(id.0);
                    }
                }
                MemberChange::Promote(_) => {
                    if !cs.learners.contains(&id.0) {
                        return Err(Error::InvalidMembershipChange {
                            member: id,
                            reason: "only a learner can be promoted",
                        });
                    }
                    voters.insert(id.0);
                }
                MemberChange::Remove(_) => {
                    if !known {
                        return Err(Error::InvalidMembershipChange {
                            member: id,
                            reason: "not a member",
                        });
                    }
                    if id == self.id {
                        // The caller hands leadership over first.
                        return Err(Error::NotLeader {
                            leader_hint: self.best_transferee(),
                        });
                    }
                    voters.remove(&id.0);
                }
            }
        }
        if voters.is_empty() {
            return Err(Error::InvalidMembershipChange {
                member: self.id,
                reason: "the group would have no voter left",
            });
        }
        if !force {
            let healthy = voters
                .iter()
                .filter(|&&v| {
                    v == self.id.0 || self.raw.raft.prs().get(v).is_some_and(|p| p.recent_active)
                })
                .count();
            let required = voters.len() / 2 + 1;
            if healthy < required {
                return Err(Error::UnsafeMembershipChange { healthy, required });
            }
        }
        Ok(())
    }

    fn expire_conf_ops(&mut self, now: Instant, out: &mut Outbox) {
        let expired: Vec<u64> = self
            .conf_ops
            .iter()
            .filter(|(_, op)| op.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            if let Some(op) = self.conf_ops.remove(&k) {
                out.membership_done.push((
                    op.token,
                    Err(Error::OutcomeUnknown {
                        cause: UnknownCause::DeadlineExceeded,
                    }),
                ));
            }
        }
    }

    /// The leader promotes a learner that asked for it once its log is
    /// close enough to the leader's.
    fn auto_promote(&mut self, now: Instant) {
        if !self.is_leader() || self.check_leader_and_idle().is_err() {
            return;
        }
        let last = self.raw.raft.raft_log.last_index();
        let within = self.cfg.promote_within_entries;
        let candidate =
            self.conf_state.learners.iter().copied().find(|l| {
                self.members.info.get(l).is_some_and(|(_, p)| *p)
                    && self.raw.raft.prs().get(*l).is_some_and(|p| {
                        p.recent_active && p.matched + within >= last && p.matched > 0
                    })
            });
        if let Some(l) = candidate {
            tracing::info!(learner = l, "promoting a caught-up learner");
            let mut out = Outbox::default();
            // An internal op: nobody waits for it (token 0 is never used by callers).
            self.propose_membership(
                0,
                vec![MemberChange::Promote(NodeId(l))],
                false,
                now + self.cfg.request_timeout,
                &mut out,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::eraftpb::HardState;
    use ha_storage::MemLogStore;

    fn fresh_core() -> Core<MemLogStore> {
        let members = vec![NodeId(1), NodeId(2), NodeId(3)];
        let recovered = RecoveredState {
            hard_state: HardState::default(),
            conf_state: ConfState::from((vec![1, 2, 3], Vec::<u64>::new())),
            applied: 0,
        };
        Core::new(
            Config::new(NodeId(1), members),
            Arc::new(MemLogStore::new()),
            recovered,
            1,
            &crate::logging::raft_logger(1),
            7,
            Bugs::default(),
            Snapshots::new(
                &Config::new(NodeId(1), vec![NodeId(1)]),
                crate::snapshot::SnapshotFiles::Memory(Default::default()),
            ),
        )
        .expect("core starts")
    }

    /// Makes member 1 of `fresh_core` leader with member 2's votes.
    fn elect(core: &mut Core<MemLogStore>, now: Instant) {
        core.campaign().expect("campaign");
        for _ in 0..2 {
            let (t, term) = match core.raw.raft.state {
                StateRole::PreCandidate => (
                    MessageType::MsgRequestPreVoteResponse,
                    core.raw.raft.term + 1,
                ),
                StateRole::Candidate => (MessageType::MsgRequestVoteResponse, core.raw.raft.term),
                _ => break,
            };
            core.step(
                Message {
                    msg_type: t as i32,
                    from: 2,
                    to: 1,
                    term,
                    ..Default::default()
                },
                now,
            );
        }
    }

    /// Found by the simulator (seed 228 of the default three-member runs):
    /// a member elected during a joint change that removes it applies its
    /// own removal as leader; raft-rs keeps it leading and panics on the
    /// next append response. It must step down.
    #[test]
    fn a_leader_that_applies_its_own_removal_steps_down() {
        let now = Instant::now();
        let mut core = fresh_core();
        elect(&mut core, now);
        assert!(core.is_leader(), "member 1 leads");
        let cc = ConfChangeV2 {
            changes: vec![ConfChangeSingle {
                change_type: ConfChangeType::RemoveNode as i32,
                node_id: 1,
            }],
            ..Default::default()
        };
        let entry = Entry {
            entry_type: EntryType::EntryConfChangeV2 as i32,
            index: 2,
            term: core.raw.raft.term,
            data: cc.encode_to_vec(),
            ..Default::default()
        };
        let mut out = Outbox::default();
        core.apply_conf_change(&entry, &mut out)
            .expect("conf change applies");
        assert!(!core.is_leader(), "a removed leader steps down");
        // What made raft-rs panic before: an append response to the removed
        // leader.
        core.step(
            Message {
                msg_type: MessageType::MsgAppendResponse as i32,
                from: 2,
                to: 1,
                term: core.raw.raft.term,
                index: 2,
                ..Default::default()
            },
            now,
        );
    }

    /// The shell sleeps through `quiet_ticks` when idle: those ticks must
    /// be exactly the ones that change nothing but counters, so that the
    /// tick after them still campaigns (follower) or beats (leader) on time.
    #[test]
    fn quiet_ticks_end_just_before_the_tick_that_acts() {
        let now = Instant::now();
        let mut out = Outbox::default();
        let mut core = fresh_core();
        let quiet = core.quiet_ticks(now);
        assert!(
            quiet >= 20,
            "an idle follower sleeps most of its timeout: {quiet}"
        );
        for _ in 0..quiet {
            core.tick(now, &mut out);
            assert_eq!(core.raw.raft.state, StateRole::Follower, "campaigned early");
        }
        assert_eq!(core.quiet_ticks(now), 0, "the next tick is the timeout");
        core.tick(now, &mut out);
        assert_ne!(
            core.raw.raft.state,
            StateRole::Follower,
            "the tick after the quiet ones campaigns"
        );

        // A leader: quiet until the heartbeat tick.
        let mut core = fresh_core();
        elect(&mut core, now);
        assert!(core.is_leader());
        let beats = |core: &Core<MemLogStore>| {
            core.raw
                .raft
                .msgs
                .iter()
                .filter(|m| m.msg_type() == MessageType::MsgHeartbeat)
                .count()
        };
        core.raw.raft.msgs.clear();
        let quiet = core.quiet_ticks(now);
        assert_eq!(quiet, core.cfg.heartbeat_tick - 1);
        for _ in 0..quiet {
            core.tick(now, &mut out);
            assert_eq!(beats(&core), 0, "a quiet tick sent a heartbeat");
        }
        core.tick(now, &mut out);
        assert_eq!(beats(&core), 2, "the tick after the quiet ones beats");

        // Anything waiting on the clock: no quiet ticks.
        core.read(1, now + Duration::from_secs(1));
        assert_eq!(core.quiet_ticks(now), 0, "a queued read must be ticked for");
    }

    fn vote_request(context: &[u8]) -> Message {
        Message {
            msg_type: MessageType::MsgRequestVote as i32,
            from: 2,
            to: 1,
            term: 1,
            context: context.to_vec(),
            ..Default::default()
        }
    }

    /// Every message the core asked to send, before or after persisting.
    fn sent(out: &mut Outbox) -> Vec<Message> {
        let mut all: Vec<Message> = out.messages.drain(..).collect();
        for t in out.persist.drain(..) {
            all.extend(t.messages);
        }
        all
    }

    fn granted_to_2(msgs: &[Message]) -> bool {
        msgs.iter()
            .any(|m| m.msg_type() == MessageType::MsgRequestVoteResponse && m.to == 2 && !m.reject)
    }

    #[test]
    fn forged_enum_values_and_local_messages_from_peers_are_dropped_not_panicked_on() {
        let now = Instant::now();
        let mut core = fresh_core();
        let mut out = Outbox::default();
        let mut bad_type = vote_request(b"");
        bad_type.msg_type = 99;
        core.step(bad_type, Instant::now());
        let mut bad_entry = vote_request(b"");
        bad_entry.msg_type = MessageType::MsgAppend as i32;
        bad_entry.entries.push(Entry {
            entry_type: 42,
            ..Default::default()
        });
        core.step(bad_entry, Instant::now());
        let mut hup = vote_request(b"");
        hup.msg_type = MessageType::MsgHup as i32;
        core.step(hup, Instant::now());
        core.handle_ready(now, &mut out).unwrap();
        assert_eq!(core.status().term, 0, "a forged message changed raft state");
    }

    #[test]
    fn a_declined_copy_of_the_snapshot_being_installed_keeps_its_staging() {
        use ha_core::eraftpb::{Snapshot, SnapshotMetadata};
        let now = Instant::now();
        let mut core = fresh_core();
        let mut out = Outbox::default();
        let descriptor = SnapshotDescriptor {
            index: 10,
            term: 2,
            size: 8,
            crc32: 1,
            id: 7,
            builder: 2,
        };
        let msg = Message {
            msg_type: MessageType::MsgSnapshot as i32,
            from: 2,
            to: 1,
            term: 2,
            snapshot: Some(Snapshot {
                data: descriptor.encode_to_vec(),
                metadata: Some(SnapshotMetadata {
                    conf_state: Some(ConfState::from((vec![1, 2, 3], Vec::<u64>::new()))),
                    index: 10,
                    term: 2,
                }),
            }),
            ..Default::default()
        };
        assert!(
            core.step_staged_snapshot(msg.clone()),
            "raft took the snapshot"
        );
        assert!(core.needs_staged(&descriptor));
        core.handle_ready(now, &mut out).unwrap();
        let task = out.persist.iter().find(|t| t.install.is_some());
        assert!(task.is_some(), "the snapshot was handed out for install");
        // Raft sent it again meanwhile; the copy is declined, and its
        // staging (the same file) must not be discarded under the install.
        assert!(!core.step_staged_snapshot(msg.clone()));
        assert!(
            core.needs_staged(&descriptor),
            "the staging of the snapshot being installed would be discarded"
        );
        let number = out.persist.last().map(|t| t.number).unwrap();
        let tasks = out.persist.len();
        out.persist.clear();
        // A newer snapshot is handed out before the first one is installed.
        let later = SnapshotDescriptor {
            index: 20,
            id: 8,
            ..descriptor.clone()
        };
        let mut msg = msg;
        if let Some(snap) = msg.snapshot.as_mut() {
            snap.data = later.encode_to_vec();
            if let Some(meta) = snap.metadata.as_mut() {
                meta.index = 20;
            }
        }
        assert!(
            core.step_staged_snapshot(msg),
            "raft took the newer snapshot"
        );
        core.handle_ready(now, &mut out).unwrap();
        core.on_persisted(number, tasks, Some((10, MemberSet::default())), &mut out);
        assert!(
            !core.needs_staged(&descriptor),
            "installed: the staging can go"
        );
        assert!(
            core.needs_staged(&later),
            "the first install's end forgot the snapshot handed out after it"
        );
        let number = out.persist.last().map(|t| t.number).unwrap();
        core.on_persisted(
            number,
            out.persist.len(),
            Some((20, MemberSet::default())),
            &mut out,
        );
        assert!(!core.needs_staged(&later));
    }

    #[test]
    fn a_lagging_member_follows_a_leader_added_after_its_configuration() {
        // Member 1 applied {1, 2, 3}; meanwhile 5 joined, 3 left, and 5
        // leads. Its appends must reach raft, or member 1 never catches up.
        let now = Instant::now();
        let mut core = fresh_core();
        let mut out = Outbox::default();
        core.step(
            Message {
                msg_type: MessageType::MsgHeartbeat as i32,
                from: 5,
                to: 1,
                term: 4,
                ..Default::default()
            },
            Instant::now(),
        );
        core.handle_ready(now, &mut out).unwrap();
        assert_eq!(
            core.leader(),
            LeaderInfo {
                term: 4,
                leader: Some(NodeId(5))
            },
            "a leader outside the applied configuration was ignored"
        );
        assert!(
            sent(&mut out)
                .iter()
                .any(|m| m.msg_type() == MessageType::MsgHeartbeatResponse && m.to == 5),
            "no answer to the new leader"
        );
        // A member known to be removed is still refused (and told so).
        let mut core = fresh_core();
        core.set_members(MemberSet {
            removed: [4].into_iter().collect(),
            ..MemberSet::default()
        });
        core.step(
            Message {
                msg_type: MessageType::MsgHeartbeat as i32,
                from: 4,
                to: 1,
                term: 4,
                ..Default::default()
            },
            Instant::now(),
        );
        core.handle_ready(now, &mut out).unwrap();
        assert_eq!(core.leader().leader, None, "a removed member was followed");
        let msgs = sent(&mut out);
        assert!(
            msgs.iter()
                .all(|m| m.to != 4 || m.context == REMOVED_NOTICE),
            "a removed member got an answer other than the notice: {msgs:?}"
        );
    }

    #[test]
    fn a_member_that_just_started_grants_no_vote_except_to_a_leader_transfer() {
        let now = Instant::now();
        let mut core = fresh_core();
        let mut out = Outbox::default();
        core.step(vote_request(b""), Instant::now());
        core.handle_ready(now, &mut out).unwrap();
        assert!(
            !granted_to_2(&sent(&mut out)),
            "granted a vote right after starting: a rival could win while the old leader's lease holds"
        );

        core.step(vote_request(raft::CAMPAIGN_TRANSFER), Instant::now());
        core.handle_ready(now, &mut out).unwrap();
        assert!(
            granted_to_2(&sent(&mut out)),
            "a leader transfer must be able to win at once"
        );

        let mut core = fresh_core();
        for _ in 0..core.cfg.election_tick {
            core.tick(now, &mut out);
        }
        core.handle_ready(now, &mut out).unwrap();
        sent(&mut out);
        let mut late = vote_request(b"");
        late.term = 5;
        core.step(late, Instant::now());
        core.handle_ready(now, &mut out).unwrap();
        assert!(
            granted_to_2(&sent(&mut out)),
            "after an election timeout the member votes normally"
        );
    }
}
