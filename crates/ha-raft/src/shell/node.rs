//! [`Node`]: one member of a group, as the application holds it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use ha_core::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType, HardState,
};
use ha_core::{
    ClusterId, Config, Error, LogPoint, LogStore, LogWrite, MemberIdentity, NodeId, OverloadReason,
    RecoveredState, Result, StartMode, StateMachine, StateStore, StorageError, Transport,
    UnknownCause,
};
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::WatchStream;

use super::threads::MembershipRequest;
use super::threads::{ApplyTask, Input, RaftThread, run_apply, run_builder, run_log_writer};
use super::waiters::Waiters;
use super::{MAX_INBOX, Metrics, NodeSink, RUNNING, STOPPED, STOPPING, Shared};
use crate::apply::{Applier, bootstrap_meta, load_meta};
use crate::bugs::{Bugs, CrashSwitch, InjectedBug, InstallCrashPoint};
use crate::call::{CallHandler, Calls};
use crate::codec::{ConfContext, MemberRecord};
use crate::core::{Core, CoreStatus, LeaderInfo, PeerProgress, Role};
use crate::latency::Latency;
use crate::logging::raft_logger;
use crate::membership::{MemberChange, MemberSet, Membership};
use crate::snapshot::{InstallMarker, SnapshotFiles, Snapshots};

/// How a read sees the group's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// Reflects every write acknowledged before the read started, on any
    /// member (ReadIndex: the leader confirms it still leads with a quorum
    /// round shared by a batch of reads, then this member waits until it
    /// has applied that far).
    #[default]
    Linearizable,
    /// This member's applied state, at once. May be stale.
    Serializable,
    /// Linearizable, without a quorum round while the leader holds its read
    /// lease: the leader answers once it has applied its commit index. The
    /// lease starts when a ReadIndex round that a quorum acknowledged was
    /// sent, and lasts `Config::lease_duration` (less than an election
    /// timeout, minus `Config::max_clock_drift`): it assumes no two
    /// members' clocks drift apart by more than that bound. On a follower,
    /// and on a leader without a lease (just elected, a leader transfer
    /// started in its term, a membership change), it is a ReadIndex read;
    /// the leader renews the lease with a round of its own while lease
    /// reads keep coming.
    Lease,
}

/// Options of a proposal.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallOptions {
    /// Deadline for the call; `None` uses `Config::request_timeout`.
    pub timeout: Option<Duration>,
}

/// Options of a read.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadOptions {
    /// Consistency of the read.
    pub consistency: ReadConsistency,
    /// Deadline for the call; `None` uses `Config::request_timeout`.
    pub timeout: Option<Duration>,
}

/// A member's view of itself and its group.
#[derive(Clone, Debug)]
pub struct Status {
    /// This member.
    pub id: NodeId,
    /// Its incarnation (bumped at every start).
    pub incarnation: u64,
    /// Its role.
    pub role: Role,
    /// The current term.
    pub term: u64,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index applied here.
    pub applied: u64,
    /// Term of the last entry applied since this start (0 before one
    /// is). A leader whose `applied_term` equals `term` has applied the
    /// first entry of its term, and with it everything an earlier leader
    /// committed.
    pub applied_term: u64,
    /// Voting members.
    pub voters: Vec<NodeId>,
    /// Non-voting members.
    pub learners: Vec<NodeId>,
    /// Proposals of this member not answered yet.
    pub pending_proposals: usize,
    /// The last tick's lateness (the raft thread could not keep time).
    pub tick_lag: Duration,
    /// Why this member stopped, if it stopped on a fatal error.
    pub fatal: Option<Error>,
    /// This member was removed from the group.
    pub removed: bool,
    /// As leader: how it replicates to each other member, by id (empty
    /// on other members).
    pub peers: Vec<PeerProgress>,
}

/// Counters of one member's engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineMetrics {
    /// Durable log writes (one per group commit).
    pub persist_batches: u64,
    /// Of those, synced ones.
    pub syncs: u64,
    /// Entries made durable.
    pub entries_persisted: u64,
    /// Entries applied.
    pub entries_applied: u64,
    /// Times this member saw a new leader.
    pub leader_changes: u64,
    /// Lateness of the last tick, microseconds.
    pub tick_lag_us: u64,
    /// Worst tick lateness seen, microseconds.
    pub max_tick_lag_us: u64,
    /// Snapshots this member built (as a leader, for followers the log
    /// could no longer serve).
    pub snapshots_built: u64,
    /// Snapshot transfers this member started.
    pub snapshots_sent: u64,
    /// Snapshots this member received and verified.
    pub snapshots_received: u64,
    /// Snapshots this member installed.
    pub snapshots_installed: u64,
    /// Snapshot bytes this member sent.
    pub snapshot_bytes_sent: u64,
    /// Proposals from the call to the answer (successful ones).
    pub proposal_latency: Latency,
    /// Synced log writes (write plus sync) on the log writer thread.
    pub sync_latency: Latency,
    /// Linearizable (ReadIndex) reads from the call to the answer.
    pub read_index_latency: Latency,
    /// Lease reads (answered locally or by a ReadIndex round).
    pub lease_read_latency: Latency,
    /// Serializable reads.
    pub serializable_read_latency: Latency,
}

/// One member of an ha group.
///
/// Cheap to clone; every clone is the same member. Every call has a
/// deadline (`Config::request_timeout` unless the options give one).
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    leader_rx: watch::Receiver<LeaderInfo>,
    membership_rx: watch::Receiver<Membership>,
    next_token: Arc<AtomicU64>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.shared.id).finish()
    }
}

/// How long past its deadline a caller keeps waiting for the core's own
/// verdict (which is more precise) before answering `OutcomeUnknown`.
const GRACE: Duration = Duration::from_millis(500);

/// Waits for the core's answer. The core answers by the deadline itself
/// (it knows whether a proposal left this member); past the deadline plus
/// a grace period, `on_timeout` withdraws the waiter and says what to report.
async fn await_reply<T>(
    sh: &Shared,
    rx: oneshot::Receiver<Result<T>>,
    deadline: Instant,
    on_timeout: impl FnOnce() -> Error,
) -> Result<T> {
    match tokio::time::timeout_at((deadline + GRACE).into(), rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(sh.stopped_error()),
        Err(_) => Err(on_timeout()),
    }
}

pub(crate) struct Opened {
    /// An interrupted snapshot install was finished at this index.
    pub(crate) installed: Option<u64>,
    pub(crate) incarnation: u64,
    pub(crate) recovered: RecoveredState,
    members: MemberSet,
}

/// Writes a new group's first entries: one configuration change per
/// initial voter at term 1, committed, exactly as on every other initial
/// member. A member that joins later replays them from the log and so
/// learns the configuration the same way the others did.
fn bootstrap<L: LogStore, S: StateStore + ?Sized>(cfg: &Config, log: &L, state: &S) -> Result<()> {
    let mut entries = Vec::new();
    let mut members = MemberSet::default();
    for (i, m) in cfg.initial_members.iter().enumerate() {
        let ctx = ConfContext {
            members: vec![MemberRecord {
                id: m.0,
                address: Vec::new(),
                auto_promote: false,
            }],
            ..Default::default()
        };
        let cc = ConfChangeV2 {
            transition: ConfChangeTransition::Auto as i32,
            changes: vec![ConfChangeSingle {
                change_type: ConfChangeType::AddNode as i32,
                node_id: m.0,
            }],
            context: ctx.encode_to_vec(),
        };
        entries.push(Entry {
            entry_type: EntryType::EntryConfChangeV2 as i32,
            term: 1,
            index: i as u64 + 1,
            data: cc.encode_to_vec(),
            ..Default::default()
        });
        members.info.insert(m.0, (Bytes::new(), false));
    }
    let n = entries.len() as u64;
    let voters: Vec<u64> = cfg.initial_members.iter().map(|m| m.0).collect();
    bootstrap_meta(
        state,
        &ConfState::from((voters, Vec::<u64>::new())),
        &members,
    )?;
    log.append_readable(&entries)?;
    log.persist(&LogWrite {
        snapshot: None,
        entries,
        hard_state: Some(HardState {
            term: 1,
            vote: 0,
            commit: n,
        }),
        sync: true,
    })?;
    Ok(())
}

/// A snapshot install that a crash interrupted (the pending-install marker
/// is there) is finished from its staged file: the state store is restored
/// again, then the log restarts after the snapshot, which clears the
/// marker. Leftover snapshot files go.
fn finish_interrupted_install<L: LogStore, S: StateStore + ?Sized>(
    log: &L,
    state: &S,
    snapshots: &Snapshots,
    bugs: Bugs,
) -> Result<Option<u64>> {
    let Some(marker) = log.pending_install()? else {
        snapshots.files().clear_except(None);
        return Ok(None);
    };
    if bugs.non_atomic_install {
        // The injected bug: the interrupted install is left as it was.
        return Ok(None);
    }
    let marker = InstallMarker::decode(marker.as_slice())
        .map_err(|e| StorageError::corrupt("pending-install marker", e.to_string()))?;
    let descriptor = marker
        .descriptor
        .ok_or_else(|| StorageError::corrupt("pending-install marker", "no descriptor"))?;
    snapshots.files().clear_except(Some(&marker.file));
    tracing::warn!(index = descriptor.index, file = %marker.file, "finishing a snapshot install that a crash interrupted");
    let mut pairs = snapshots.staged_pairs(&descriptor).map_err(|e| {
        StorageError::corrupt(
            "data directory",
            format!(
                "a snapshot install was interrupted and its staged file cannot be read ({e}); \
                 the member cannot recover by itself: remove its data and let it rejoin"
            ),
        )
    })?;
    state.restore(&mut pairs)?;
    let meta = load_meta(state)?;
    if meta.applied != descriptor.index {
        return Err(StorageError::corrupt(
            "restored snapshot",
            format!(
                "applied index {} where {} was expected",
                meta.applied, descriptor.index
            ),
        )
        .into());
    }
    let point = LogPoint {
        index: descriptor.index,
        term: descriptor.term,
    };
    let mut hard_state = log.hard_state()?;
    hard_state.commit = hard_state.commit.max(point.index);
    log.restart_readable(point)?;
    log.persist(&LogWrite {
        snapshot: Some(point),
        entries: Vec::new(),
        hard_state: Some(hard_state),
        sync: true,
    })?;
    snapshots.discard_staged(&descriptor);
    Ok(Some(point.index))
}

/// Checks identity, bumps the incarnation, bootstraps a new group, and
/// recovers raft's state. Blocking.
fn open_storage<L: LogStore, S: StateStore + ?Sized>(
    cfg: &Config,
    log: &L,
    state: &S,
    snapshots: &Snapshots,
    bugs: Bugs,
) -> Result<Opened> {
    let cluster_id = ClusterId::derive(&cfg.initial_members, &cfg.cluster_token);
    let incarnation = match log.identity()? {
        Some(id) => {
            if id.node_id != cfg.node_id {
                return Err(StorageError::MemberMismatch {
                    expected: cfg.node_id,
                    found: id.node_id,
                }
                .into());
            }
            if id.cluster_id != cluster_id {
                return Err(StorageError::ClusterMismatch {
                    expected: cluster_id,
                    found: id.cluster_id,
                }
                .into());
            }
            id.incarnation + 1
        }
        None => {
            // Fresh storage (or a bootstrap that crashed before its identity
            // was stored: then only the bootstrap entries can be there, and
            // writing them again is idempotent).
            let meta = load_meta(state)?;
            let bootstrap_len = cfg.initial_members.len() as u64;
            if meta.applied != 0 || log.last_index()? > bootstrap_len || log.hard_state()?.term > 1
            {
                return Err(StorageError::corrupt(
                    "data directory",
                    "state or log present but no member identity",
                )
                .into());
            }
            match cfg.start_mode {
                StartMode::Bootstrap => {
                    bootstrap(cfg, log, state)?;
                    tracing::info!(node = %cfg.node_id, cluster = %cluster_id, "bootstrapped a new group");
                }
                StartMode::Join => {
                    bootstrap_meta(state, &ConfState::default(), &MemberSet::default())?;
                    tracing::info!(node = %cfg.node_id, cluster = %cluster_id, "joining an existing group");
                }
            }
            1
        }
    };
    let installed = finish_interrupted_install(log, state, snapshots, bugs)?;
    log.set_identity(&MemberIdentity {
        cluster_id,
        node_id: cfg.node_id,
        incarnation,
    })?;
    let meta = load_meta(state)?;
    let conf_state = meta
        .conf_state
        .ok_or_else(|| StorageError::corrupt("state store", "no membership stored"))?;
    let mut hard_state = log.hard_state()?;
    let last = log.last_index()?;
    if meta.applied > last {
        return Err(StorageError::corrupt(
            "data directory",
            format!(
                "state applied through {} but the log ends at {last}",
                meta.applied
            ),
        )
        .into());
    }
    // A commit-only hard state change is not synced, so the stored commit
    // can lag what was applied; raft-rs panics if applied > commit.
    hard_state.commit = hard_state.commit.max(meta.applied);
    Ok(Opened {
        installed,
        incarnation,
        members: meta.members,
        recovered: RecoveredState {
            hard_state,
            conf_state,
            applied: meta.applied,
        },
    })
}

/// Opens a member's storage and builds its core and applier. Every start
/// goes through here: production's and the simulator's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn open_engine<L: LogStore, S: StateStore + ?Sized, M: StateMachine>(
    cfg: &Config,
    log: Arc<L>,
    state: Arc<S>,
    sm: M,
    logger: &slog::Logger,
    rng_seed: u64,
    bugs: Bugs,
    snapshots: Arc<Snapshots>,
) -> Result<(Opened, Core<L>, Applier<S, M>)> {
    let opened = open_storage(cfg, &*log, &*state, &snapshots, bugs)?;
    let mut core = Core::new(
        cfg.clone(),
        log,
        opened.recovered.clone(),
        opened.incarnation,
        logger,
        rng_seed,
        bugs,
        snapshots,
    )?;
    core.set_members(opened.members.clone());
    let mut applier = Applier::open(state, sm, cfg.node_id, opened.incarnation, bugs)?;
    if let Some(index) = opened.installed {
        // The state store changed under the state machine the caller built.
        applier.reload(index)?;
    }
    Ok((opened, core, applier))
}

impl Node {
    /// Opens storage and starts a member: bootstraps a new group from
    /// `config.initial_members` on empty storage, or restarts from what
    /// the storage holds. Must be called within a tokio runtime; the
    /// member's threads are its own, its async API uses the caller's runtime.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid config; [`Error::Storage`] when the
    /// storage belongs to another member or cluster, or is corrupt.
    pub async fn start<L, S, M>(
        config: Config,
        log: Arc<L>,
        state: Arc<S>,
        state_machine: M,
        transport: Arc<dyn Transport>,
    ) -> Result<Node>
    where
        L: LogStore,
        S: StateStore,
        M: StateMachine,
    {
        Node::start_with_bugs(
            config,
            log,
            state,
            state_machine,
            transport,
            Bugs::default(),
        )
        .await
    }

    /// [`Node::start`], with a known bug switched on: for tests that prove
    /// a checker outside the simulator catches it (for example that
    /// [`InjectedBug::AckBeforeSync`] shows in a durability check). Never
    /// use it to run a real group.
    ///
    /// # Errors
    /// As [`Node::start`].
    pub async fn start_with_injected_bug<L, S, M>(
        config: Config,
        log: Arc<L>,
        state: Arc<S>,
        state_machine: M,
        transport: Arc<dyn Transport>,
        bug: InjectedBug,
    ) -> Result<Node>
    where
        L: LogStore,
        S: StateStore,
        M: StateMachine,
    {
        let bugs = Bugs::with(Some(bug));
        Node::start_with_bugs(config, log, state, state_machine, transport, bugs).await
    }

    async fn start_with_bugs<L, S, M>(
        config: Config,
        log: Arc<L>,
        state: Arc<S>,
        state_machine: M,
        transport: Arc<dyn Transport>,
        bugs: Bugs,
    ) -> Result<Node>
    where
        L: LogStore,
        S: StateStore,
        M: StateMachine,
    {
        let cfg = config.validate()?;
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            Node::start_blocking(cfg, log, state, state_machine, transport, bugs, runtime)
        })
        .await
        .map_err(|e| Error::fatal(format!("start task failed: {e}")))?
    }

    fn start_blocking<L, S, M>(
        cfg: Config,
        log: Arc<L>,
        state: Arc<S>,
        sm: M,
        transport: Arc<dyn Transport>,
        bugs: Bugs,
        runtime: tokio::runtime::Handle,
    ) -> Result<Node>
    where
        L: LogStore,
        S: StateStore,
        M: StateMachine,
    {
        let id = cfg.node_id;
        let snapshots = Snapshots::new(&cfg, SnapshotFiles::open(cfg.snapshot_dir.as_deref())?);
        let (opened, core, applier) = open_engine(
            &cfg,
            log.clone(),
            state.clone(),
            sm,
            &raft_logger(id.0),
            rand::random(),
            bugs,
            snapshots.clone(),
        )?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let (apply_tx, apply_rx) = crossbeam_channel::unbounded();
        let (log_tx, log_rx) = crossbeam_channel::unbounded();
        let (leader_tx, leader_rx) = watch::channel(LeaderInfo::default());
        let (membership_tx, membership_rx) = watch::channel(core.membership());
        let status = core.status();
        let shared = Arc::new(Shared {
            id,
            cfg: cfg.clone(),
            incarnation: opened.incarnation,
            tx: tx.clone(),
            apply_tx: apply_tx.clone(),
            inbox: AtomicUsize::new(0),
            seq: Mutex::new(0),
            next_read: AtomicU64::new(0),
            waiters: Waiters::default(),
            state: AtomicU8::new(RUNNING),
            killed: AtomicBool::new(false),
            fatal: Mutex::new(None),
            status: Mutex::new(status),
            applied: AtomicU64::new(opened.recovered.applied),
            applied_term: AtomicU64::new(0),
            commit: AtomicU64::new(opened.recovered.hard_state.commit),
            lease: Mutex::new(None),
            lease_used: AtomicBool::new(false),
            leader_tx,
            membership_tx,
            metrics: Metrics::default(),
            transport: transport.clone(),
            snapshots: snapshots.clone(),
            durable_applied: AtomicU64::new(0),
            faults: CrashSwitch::default(),
            calls: Calls::new(id, cfg.max_concurrent_calls, runtime),
        });
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map_err(|e| Error::Storage(StorageError::io("spawn thread", e)))
        };
        let mut threads = Vec::new();
        {
            let (log, tx, shared) = (log.clone(), tx.clone(), shared.clone());
            threads.push(spawn(
                format!("ha-log-{id}"),
                Box::new(move || run_log_writer(log, log_rx, tx, shared)),
            )?);
        }
        {
            let (tx, shared) = (tx.clone(), shared.clone());
            threads.push(spawn(
                format!("ha-apply-{id}"),
                Box::new(move || run_apply(applier, apply_rx, tx, shared)),
            )?);
        }
        {
            let (build_tx, build_rx) = crossbeam_channel::bounded(1);
            snapshots.set_builder(build_tx);
            let shared = shared.clone();
            threads.push(spawn(
                format!("ha-snap-{id}"),
                Box::new(move || run_builder(state, build_rx, shared)),
            )?);
        }
        let raft = RaftThread {
            core,
            rx,
            shared: shared.clone(),
            log_tx,
            apply_tx,
        };
        threads.push(spawn(
            format!("ha-raft-{id}"),
            Box::new(move || raft.run()),
        )?);
        transport.start(
            id,
            Arc::new(NodeSink {
                shared: shared.clone(),
            }),
        );
        // A single-member group has nobody to wait for.
        if cfg.initial_members == [id] && opened.recovered.conf_state.voters == [id.0] {
            let _ = tx.send(Input::Campaign);
        }
        tracing::info!(node = %id, incarnation = opened.incarnation, applied = opened.recovered.applied, "member started");
        Ok(Node {
            shared,
            threads: Arc::new(Mutex::new(threads)),
            leader_rx,
            membership_rx,
            next_token: Arc::new(AtomicU64::new(0)),
        })
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// `Ok` while this member runs; else why it stopped (`Shutdown`, or
    /// the fatal error).
    pub(crate) fn check_running(&self) -> Result<()> {
        self.shared.check_running()
    }

    /// Proposes `command` with the default deadline. Resolves with the
    /// state machine's response once THIS member has applied it. Works on
    /// any member: followers forward to the leader, and a member with no
    /// leader waits for one until the deadline.
    ///
    /// # Errors
    /// See the error table in [`ha_core::Error`]'s module docs.
    ///
    /// # Cancel safety
    /// Dropping the future does not withdraw the proposal: it may still be
    /// applied.
    pub async fn propose(&self, command: impl Into<Bytes>) -> Result<Bytes> {
        self.propose_with(command, CallOptions::default()).await
    }

    /// [`Node::propose`] with options.
    ///
    /// # Errors
    /// See [`Node::propose`].
    pub async fn propose_with(
        &self,
        command: impl Into<Bytes>,
        opts: CallOptions,
    ) -> Result<Bytes> {
        let command: Bytes = command.into();
        let sh = &self.shared;
        sh.check_running()?;
        let started = Instant::now();
        if sh.status.lock().removed {
            return Err(Error::Removed { member: sh.id });
        }
        if command.len() > sh.cfg.max_command_size {
            return Err(Error::TooLarge {
                size: command.len(),
                max: sh.cfg.max_command_size,
            });
        }
        if sh.inbox.load(Ordering::Relaxed) >= MAX_INBOX {
            return Err(Error::Overloaded {
                reason: OverloadReason::QueueFull,
            });
        }
        let timeout = opts.timeout.unwrap_or(sh.cfg.request_timeout);
        let deadline = Instant::now() + timeout;
        let (tx, rx) = oneshot::channel();
        let seq = {
            let mut seq = sh.seq.lock();
            *seq += 1;
            sh.waiters.add_proposal(*seq, tx);
            sh.inbox.fetch_add(1, Ordering::Relaxed);
            if sh
                .tx
                .send(Input::Propose {
                    seq: *seq,
                    command: command.to_vec(),
                    deadline,
                })
                .is_err()
            {
                sh.waiters.remove_proposal(*seq);
                return Err(sh.stopped_error());
            }
            *seq
        };
        let reply = await_reply(sh, rx, deadline, || {
            sh.waiters.remove_proposal(seq);
            Error::OutcomeUnknown {
                cause: UnknownCause::DeadlineExceeded,
            }
        })
        .await;
        if reply.is_ok() {
            sh.metrics.proposal_latency.record(started.elapsed());
        }
        reply
    }

    /// Reads with the state machine's `query`, linearizably by default.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the read could not be confirmed in time —
    /// a leader cut off from the majority never answers with stale data.
    pub async fn read(
        &self,
        query: impl Into<Bytes>,
        consistency: ReadConsistency,
    ) -> Result<Bytes> {
        self.read_with(
            query,
            ReadOptions {
                consistency,
                timeout: None,
            },
        )
        .await
    }

    /// [`Node::read`] with options.
    ///
    /// # Errors
    /// See [`Node::read`].
    pub async fn read_with(&self, query: impl Into<Bytes>, opts: ReadOptions) -> Result<Bytes> {
        let sh = &self.shared;
        sh.check_running()?;
        let started = Instant::now();
        let timeout = opts.timeout.unwrap_or(sh.cfg.request_timeout);
        let deadline = started + timeout;
        let token = sh.next_read.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        sh.waiters.add_read(token, query.into(), tx);
        let sent = match opts.consistency {
            ReadConsistency::Linearizable => sh.tx.send(Input::Read { token, deadline }).is_ok(),
            // A hit on the lease the raft thread published goes straight to
            // the apply thread; anything else is the raft thread's to decide.
            ReadConsistency::Lease => match sh.lease_hit(Instant::now()) {
                Some(index) => sh
                    .apply_tx
                    .send(ApplyTask::Reads {
                        index,
                        tokens: vec![token],
                    })
                    .is_ok(),
                None => sh.tx.send(Input::LeaseRead { token, deadline }).is_ok(),
            },
            ReadConsistency::Serializable => {
                sh.apply_tx.send(ApplyTask::Serializable { token }).is_ok()
            }
        };
        if !sent {
            sh.waiters.remove_read(token);
            return Err(sh.stopped_error());
        }
        let reply = await_reply(sh, rx, deadline, || {
            sh.waiters.remove_read(token);
            Error::Timeout { after: timeout }
        })
        .await;
        if reply.is_ok() {
            let m = &sh.metrics;
            match opts.consistency {
                ReadConsistency::Linearizable => &m.read_index_latency,
                ReadConsistency::Lease => &m.lease_read_latency,
                ReadConsistency::Serializable => &m.serializable_read_latency,
            }
            .record(started.elapsed());
        }
        reply
    }

    /// Hands leadership to `target` (any voter), waiting until it leads.
    ///
    /// # Errors
    /// [`Error::NotLeader`] when called on a follower; [`Error::Timeout`]
    /// when leadership did not move in time.
    pub async fn transfer_leader(&self, target: NodeId) -> Result<()> {
        self.transfer(Some(target), self.shared.cfg.request_timeout)
            .await
            .map(|_| ())
    }

    async fn transfer(&self, target: Option<NodeId>, timeout: Duration) -> Result<NodeId> {
        self.shared.check_running()?;
        self.hand_over(target, timeout, || self.shared.stopped_error())
            .await
    }

    /// Asks raft to hand leadership to `target` (or the best voter) and
    /// waits until it moved. raft gives a transfer up after one election
    /// timeout when the transferee did not take over (it was slow, or did
    /// not hear the leader); while this member still leads, it asks again
    /// each time until `timeout`.
    async fn hand_over(
        &self,
        target: Option<NodeId>,
        timeout: Duration,
        stopped: impl Fn() -> Error,
    ) -> Result<NodeId> {
        let sh = &self.shared;
        let deadline = Instant::now() + timeout;
        // raft's give-up point, plus two ticks of slack.
        let round = sh.cfg.tick_interval * (sh.cfg.election_tick as u32 + 2);
        let me = sh.id;
        let mut first = true;
        loop {
            let (tx, rx) = oneshot::channel();
            sh.tx
                .send(Input::Transfer {
                    target,
                    again: !first,
                    reply: tx,
                })
                .map_err(|_| stopped())?;
            match rx.await.map_err(|_| stopped())? {
                Ok(_) => {}
                // No longer leading: the wait below decides.
                Err(Error::NotLeader { .. }) if !first => {}
                Err(e) => return Err(e),
            }
            first = false;
            let mut leader = self.leader_rx.clone();
            let moved = leader.wait_for(|l| match target {
                Some(t) => l.leader == Some(t),
                None => l.leader.is_some_and(|l| l != me),
            });
            let until = deadline.min(Instant::now() + round);
            match tokio::time::timeout_at(until.into(), moved).await {
                Ok(Ok(l)) => return l.leader.ok_or_else(&stopped),
                Ok(Err(_)) => return Err(stopped()),
                Err(_) if Instant::now() >= deadline => {
                    return Err(Error::Timeout { after: timeout });
                }
                Err(_) => {}
            }
        }
    }

    /// Sets (or replaces) the handler that answers peer calls to this
    /// member. Until one is set, calls get [`Error::NoCallHandler`].
    pub fn set_call_handler(&self, handler: Arc<dyn CallHandler>) {
        self.shared.calls.set_handler(handler);
    }

    /// Calls member `to`'s [`CallHandler`] with `request` and returns its
    /// reply; a call to this member itself runs the local handler. No
    /// retries: what to retry is the application's choice.
    ///
    /// # Errors
    /// [`Error::PeerUnreachable`] (the handler did not run),
    /// [`Error::CallOutcomeUnknown`] (no reply by `timeout`, or the
    /// connection broke: the handler may have run), [`Error::NoCallHandler`],
    /// [`Error::Overloaded`], [`Error::CallFailed`] or [`Error::NotLeader`]
    /// from the peer, [`Error::Shutdown`] when this member stopped.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the reply; the peer's handler may still
    /// run.
    pub async fn call(&self, to: NodeId, request: Bytes, timeout: Duration) -> Result<Bytes> {
        let sh = &self.shared;
        sh.check_running()?;
        if to == sh.id {
            return self.call_local(request, timeout).await;
        }
        let (tx, rx) = oneshot::channel();
        sh.transport.call(
            to,
            request,
            timeout,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        // The transport enforces the deadline; this bound only guards
        // against a transport that never answers.
        match tokio::time::timeout(timeout + GRACE, rx).await {
            Ok(Ok(result)) => result,
            // The transport dropped the call without answering it.
            Ok(Err(_)) => Err(Error::CallOutcomeUnknown {
                peer: to,
                cause: UnknownCause::ConnectionLost,
            }),
            Err(_) => Err(Error::CallOutcomeUnknown {
                peer: to,
                cause: UnknownCause::DeadlineExceeded,
            }),
        }
    }

    /// Calls the current leader (waiting up to `timeout` for one to be
    /// known); if this member leads, runs the local handler directly. The
    /// whole call, the wait included, ends by `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] when no leader was known in time (nothing was
    /// sent); otherwise as [`Node::call`]. A leader that lost leadership
    /// meanwhile can answer [`Error::NotLeader`] from its handler.
    ///
    /// # Cancel safety
    /// As [`Node::call`].
    pub async fn call_leader(&self, request: Bytes, timeout: Duration) -> Result<Bytes> {
        self.shared.check_running()?;
        let deadline = Instant::now() + timeout;
        let leader = self.wait_for_leader(timeout).await?;
        let Some(leader) = leader.leader else {
            return Err(Error::Timeout { after: timeout });
        };
        let left = deadline.saturating_duration_since(Instant::now());
        self.call(leader, request, left).await
    }

    /// Runs this member's own handler, with the same bound and deadline as
    /// a call from a peer.
    async fn call_local(&self, request: Bytes, timeout: Duration) -> Result<Bytes> {
        let sh = &self.shared;
        let (tx, rx) = oneshot::channel();
        sh.calls.dispatch(
            sh.id,
            request,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(sh.stopped_error()),
            Err(_) => Err(Error::CallOutcomeUnknown {
                peer: sh.id,
                cause: UnknownCause::DeadlineExceeded,
            }),
        }
    }

    /// Who leads, as this member sees it now.
    pub fn leader(&self) -> LeaderInfo {
        *self.leader_rx.borrow()
    }

    /// Leadership as it changes (the current value first). Coalesces
    /// changes a slow consumer did not see.
    pub fn leader_changes(&self) -> impl Stream<Item = LeaderInfo> + Send + 'static {
        WatchStream::new(self.leader_rx.clone())
    }

    /// Waits until this member knows a leader.
    ///
    /// # Errors
    /// [`Error::Timeout`] when none is known within `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<LeaderInfo> {
        let mut rx = self.leader_rx.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|l| l.leader.is_some())).await {
            Ok(Ok(l)) => Ok(*l),
            Ok(Err(_)) => Err(self.shared.stopped_error()),
            Err(_) => Err(Error::Timeout { after: timeout }),
        }
    }

    /// This member's status (refreshed every tick).
    pub fn status(&self) -> Status {
        let s: CoreStatus = self.shared.status.lock().clone();
        Status {
            id: self.shared.id,
            incarnation: self.shared.incarnation,
            role: s.role,
            term: s.term,
            leader: s.leader,
            commit: self.shared.commit.load(Ordering::Relaxed),
            applied: self.shared.applied.load(Ordering::Relaxed),
            applied_term: self.shared.applied_term.load(Ordering::Relaxed),
            voters: s.voters,
            learners: s.learners,
            pending_proposals: s.pending_proposals,
            tick_lag: Duration::from_micros(
                self.shared.metrics.tick_lag_us.load(Ordering::Relaxed),
            ),
            fatal: self.shared.fatal.lock().clone(),
            removed: s.removed,
            peers: s.peers,
        }
    }

    /// The term this member leads in (None unless it leads) and the term
    /// of the last entry it applied: what lease keeping needs on every
    /// renewal, without copying the whole [`Status`].
    pub(crate) fn leading_and_applied_term(&self) -> (Option<u64>, u64) {
        let leading = {
            let s = self.shared.status.lock();
            (s.role == Role::Leader).then_some(s.term)
        };
        (leading, self.shared.applied_term.load(Ordering::Relaxed))
    }

    /// Engine counters.
    pub fn metrics(&self) -> EngineMetrics {
        let m = &self.shared.metrics;
        let snap = &self.shared.snapshots.stats;
        EngineMetrics {
            persist_batches: m.persist_batches.load(Ordering::Relaxed),
            syncs: m.syncs.load(Ordering::Relaxed),
            entries_persisted: m.entries_persisted.load(Ordering::Relaxed),
            entries_applied: m.entries_applied.load(Ordering::Relaxed),
            leader_changes: m.leader_changes.load(Ordering::Relaxed),
            tick_lag_us: m.tick_lag_us.load(Ordering::Relaxed),
            max_tick_lag_us: m.max_tick_lag_us.load(Ordering::Relaxed),
            snapshots_built: snap.built.load(Ordering::Relaxed),
            snapshots_sent: snap.sent.load(Ordering::Relaxed),
            snapshots_received: snap.received.load(Ordering::Relaxed),
            snapshots_installed: snap.installed.load(Ordering::Relaxed),
            snapshot_bytes_sent: snap.bytes_sent.load(Ordering::Relaxed),
            proposal_latency: m.proposal_latency.snapshot(),
            sync_latency: m.sync_latency.snapshot(),
            read_index_latency: m.read_index_latency.snapshot(),
            lease_read_latency: m.lease_read_latency.snapshot(),
            serializable_read_latency: m.serializable_read_latency.snapshot(),
        }
    }

    /// Makes this member crash (stop as if the process died, with
    /// [`Error::Fatal`]) at `point` of its next snapshot install — for
    /// tests that check recovery from every step of an install. Off unless
    /// called.
    pub fn crash_during_install(&self, point: InstallCrashPoint) {
        self.shared.faults.arm(point);
    }

    /// The membership as applied on this member.
    pub fn membership(&self) -> Membership {
        self.membership_rx.borrow().clone()
    }

    /// Membership as it changes (the current value first). Coalesces
    /// changes a slow consumer did not see.
    pub fn membership_changes(&self) -> impl Stream<Item = Membership> + Send + 'static {
        WatchStream::new(self.membership_rx.clone())
    }

    /// Applies membership changes, on the leader: one change is a simple
    /// change; several are one joint-consensus change (ConfChangeV2), left
    /// automatically. Resolves once the change (and for a joint change,
    /// leaving the joint configuration) has been applied here.
    ///
    /// Refused with a typed error, changing nothing: on a follower
    /// ([`Error::NotLeader`]); while another change is pending or the
    /// configuration is joint ([`Error::MembershipChangeInProgress`]);
    /// re-adding a removed id ([`Error::MemberIdReused`]); leaving fewer
    /// healthy voters than a quorum unless `force` ([`Error::UnsafeMembershipChange`]);
    /// removing the leader itself: it hands leadership to the most
    /// up-to-date voter first and answers [`Error::NotLeader`] with the new
    /// leader as hint — ask it.
    ///
    /// # Errors
    /// As above, and `OutcomeUnknown` when the deadline passes after the
    /// change was proposed.
    pub async fn change_membership(&self, changes: Vec<MemberChange>, force: bool) -> Result<()> {
        let removes_self = changes
            .iter()
            .any(|c| matches!(c, MemberChange::Remove(id) if *id == self.shared.id));
        if removes_self && self.status().role == Role::Leader {
            let timeout = self.shared.cfg.request_timeout;
            let new = self.transfer(None, timeout).await?;
            return Err(Error::NotLeader {
                leader_hint: Some(new),
            });
        }
        self.membership_request(MembershipRequest::Change { changes, force })
            .await
    }

    /// Adds a learner (a full, non-voting replica); with
    /// `promote_when_caught_up` the leader makes it a voter once its log is
    /// within `Config::promote_within_entries` of the leader's.
    ///
    /// # Errors
    /// See [`Node::change_membership`].
    pub async fn add_learner(
        &self,
        id: NodeId,
        address: impl Into<Bytes>,
        promote_when_caught_up: bool,
    ) -> Result<()> {
        self.change_membership(
            vec![MemberChange::AddLearner {
                id,
                address: address.into(),
                promote_when_caught_up,
            }],
            false,
        )
        .await
    }

    /// Makes a learner a voter.
    ///
    /// # Errors
    /// See [`Node::change_membership`].
    pub async fn promote(&self, id: NodeId) -> Result<()> {
        self.change_membership(vec![MemberChange::Promote(id)], false)
            .await
    }

    /// Removes a member. Its id can never be used again.
    ///
    /// # Errors
    /// See [`Node::change_membership`].
    pub async fn remove_member(&self, id: NodeId) -> Result<()> {
        self.change_membership(vec![MemberChange::Remove(id)], false)
            .await
    }

    /// Changes a member's address, keeping its id.
    ///
    /// # Errors
    /// See [`Node::change_membership`].
    pub async fn update_address(&self, id: NodeId, address: impl Into<Bytes>) -> Result<()> {
        self.membership_request(MembershipRequest::Address {
            id,
            address: address.into(),
        })
        .await
    }

    async fn membership_request(&self, request: MembershipRequest) -> Result<()> {
        let sh = &self.shared;
        sh.check_running()?;
        let timeout = sh.cfg.request_timeout;
        let deadline = Instant::now() + timeout;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        sh.waiters.add_membership(token, tx);
        if sh
            .tx
            .send(Input::Membership {
                token,
                request,
                deadline,
            })
            .is_err()
        {
            sh.waiters.remove_membership(token);
            return Err(sh.stopped_error());
        }
        await_reply(sh, rx, deadline, || {
            sh.waiters.remove_membership(token);
            Error::OutcomeUnknown {
                cause: UnknownCause::DeadlineExceeded,
            }
        })
        .await
    }

    /// Stops this member in order: a leader first hands leadership to the
    /// most up-to-date voter (within `Config::shutdown_transfer_timeout`),
    /// then outstanding calls are answered (`Shutdown`, or `OutcomeUnknown`
    /// for proposals that already left), queued log writes are made
    /// durable, and the threads stop. Idempotent: later calls wait for the
    /// first one and return `Ok`.
    ///
    /// # Errors
    /// Only when the member had stopped on a fatal error (returned here).
    pub async fn shutdown(&self) -> Result<()> {
        let sh = &self.shared;
        if sh
            .state
            .compare_exchange(RUNNING, STOPPING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let st = self.status();
            if st.role == Role::Leader && st.voters.len() > 1 {
                let timeout = sh.cfg.shutdown_transfer_timeout;
                match self.transfer_while_stopping(timeout).await {
                    Ok(to) => {
                        tracing::info!(node = %sh.id, to = %to, "handed leadership over before shutdown")
                    }
                    Err(e) => {
                        tracing::warn!(node = %sh.id, error = %e, "leadership transfer before shutdown failed")
                    }
                }
            }
        }
        self.stop_threads().await;
        sh.state.store(STOPPED, Ordering::SeqCst);
        match sh.fatal.lock().clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn transfer_while_stopping(&self, timeout: Duration) -> Result<NodeId> {
        self.hand_over(None, timeout, || Error::Shutdown).await
    }

    /// Stops this member at once, as if its process died: no leadership
    /// transfer, log writes still queued are NOT made durable, nothing more
    /// is applied. A test double for crashes (pair it with the memory
    /// stores' `crash()`).
    pub async fn kill(&self) {
        self.shared.killed.store(true, Ordering::SeqCst);
        self.shared.state.store(STOPPING, Ordering::SeqCst);
        self.stop_threads().await;
        self.shared.state.store(STOPPED, Ordering::SeqCst);
    }

    async fn stop_threads(&self) {
        let _ = self.shared.tx.send(Input::Shutdown);
        let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *self.threads.lock());
        if !handles.is_empty() {
            let _ = tokio::task::spawn_blocking(move || {
                for h in handles {
                    let _ = h.join();
                }
            })
            .await;
            self.shared.transport.stop();
        } else {
            // Another call is stopping the threads; wait for it to finish.
            while self.shared.state.load(Ordering::SeqCst) != STOPPED {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}
