//! One simulated member: its stores (which outlive crashes) and, while it
//! runs, its process — the engine core, the applier, and the queues that
//! the shell's log-writer and apply threads hold in production.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use ha_core::Config;
use ha_core::eraftpb::Entry;
use ha_core::eraftpb::Message;
use ha_storage::{MemLogStore, MemStateStore};

use super::executor::Nanos;
use super::kvload::SimMachine;
use crate::apply::Applier;
use crate::core::{Core, PersistTask};
use crate::kv::lease::LeaseManager;
use crate::kv::watch::WatchHub;
use crate::membership::MemberSet;
use crate::snapshot::{SnapshotDescriptor, SnapshotFiles, Snapshots};

pub(crate) struct Member {
    pub(crate) cfg: Config,
    pub(crate) log: MemLogStore,
    pub(crate) state: MemStateStore,
    pub(crate) proc: Option<Process>,
    /// Bumped at every start and crash; events of an old life are dropped.
    pub(crate) life: u64,
    /// This member's tick interval (its clock drifts).
    pub(crate) tick_ns: Nanos,
    /// Its nominal tick interval: its clock reads `tick / tick_ns` of the
    /// virtual time, so its ticks and its time drift together.
    pub(crate) nominal_tick_ns: Nanos,
    /// The process handles nothing before this time.
    pub(crate) paused_until: Nanos,
    /// Disk latency multiplier (a slow-disk fault).
    pub(crate) disk_factor: u64,
    /// Messages that waited in senders' reconnect queues while it was down.
    pub(crate) held: Vec<Message>,
    /// Its snapshot files (built and staged): on its disk, so they outlive
    /// crashes, as a pending install needs.
    pub(crate) files: SnapshotFiles,
    /// Removed from the group: its process stopped for good.
    pub(crate) removed: bool,
}

impl Member {
    /// This member's clock at virtual time `now`.
    pub(crate) fn local_ns(&self, now: Nanos) -> Nanos {
        let t =
            u128::from(now) * u128::from(self.nominal_tick_ns) / u128::from(self.tick_ns.max(1));
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    pub(crate) fn new(cfg: Config, tick_ns: Nanos) -> Self {
        let nominal_tick_ns = u64::try_from(cfg.tick_interval.as_nanos()).unwrap_or(u64::MAX);
        Member {
            nominal_tick_ns,
            cfg,
            log: MemLogStore::new(),
            state: MemStateStore::new(),
            proc: None,
            life: 0,
            tick_ns,
            paused_until: 0,
            disk_factor: 1,
            held: Vec::new(),
            files: SnapshotFiles::Memory(Default::default()),
            removed: false,
        }
    }
}

/// A running member process.
pub(crate) struct Process {
    pub(crate) core: Core<MemLogStore>,
    pub(crate) applier: Applier<MemStateStore, SimMachine>,
    pub(crate) incarnation: u64,
    /// Persist tasks waiting for the disk, in order.
    pub(crate) disk_queue: VecDeque<PersistTask>,
    /// The tasks the disk is writing now (one group commit).
    pub(crate) disk_batch: Vec<PersistTask>,
    pub(crate) disk_busy: bool,
    /// Committed entries not applied yet.
    pub(crate) apply_queue: Vec<Entry>,
    pub(crate) apply_scheduled: bool,
    /// Linearizable reads by the index they wait for.
    pub(crate) lin_reads: BTreeMap<u64, Vec<u64>>,
    /// Serializable reads, answered at the next apply step.
    pub(crate) ser_reads: Vec<u64>,
    pub(crate) next_seq: u64,
    pub(crate) next_token: u64,
    /// Proposal seq → client request.
    pub(crate) proposals: BTreeMap<u64, u64>,
    /// Read token → client request.
    pub(crate) reads: BTreeMap<u64, u64>,
    /// When the state store was last written with sync.
    pub(crate) last_sync: Nanos,
    /// Applied index the state store holds durably (the shell's
    /// `durable_applied`): the log is never compacted past it.
    pub(crate) durable_applied: u64,
    /// This process's snapshots (raft's storage adapter asks them).
    pub(crate) snapshots: Arc<Snapshots>,
    /// Build requests from `Snapshots::for_raft` (the shell's builder
    /// thread listens on this channel).
    pub(crate) build_rx: crossbeam_channel::Receiver<()>,
    /// A snapshot install in progress (the disk batch's first task).
    pub(crate) install: Option<Installing>,
    /// The lease grant published at the end of the last drive, where the
    /// shell's raft thread publishes it (before the messages leave and the
    /// committed entries reach the state machine): lease reads check it
    /// first, as `Node::read_with` does.
    pub(crate) lease: Option<crate::core::LeaseGrant>,
    /// A lease read was answered from `lease` since the last drive.
    pub(crate) lease_used: bool,
    /// KV workload: the production lease manager (deadlines on the
    /// leader), driven with this member's virtual clock.
    pub(crate) leases: LeaseManager,
    /// The term of the last entry applied (a leader expires and renews
    /// only once it applied an entry of its term).
    pub(crate) applied_term: u64,
    /// KV workload: the production watch hub (created when the machine
    /// reports its revision).
    pub(crate) hub: Option<WatchHub>,
}

/// A snapshot install between its steps: the pending-install marker is
/// stored, then the state store restored, then the log restarted.
pub(crate) struct Installing {
    pub(crate) descriptor: SnapshotDescriptor,
    /// The state store was restored: the snapshot's member metadata.
    pub(crate) restored: Option<MemberSet>,
}

impl Process {
    pub(crate) fn new(
        core: Core<MemLogStore>,
        applier: Applier<MemStateStore, SimMachine>,
        incarnation: u64,
        now: Nanos,
        snapshots: Arc<Snapshots>,
        build_rx: crossbeam_channel::Receiver<()>,
    ) -> Self {
        Process {
            core,
            applier,
            incarnation,
            disk_queue: VecDeque::new(),
            disk_batch: Vec::new(),
            disk_busy: false,
            apply_queue: Vec::new(),
            apply_scheduled: false,
            lin_reads: BTreeMap::new(),
            ser_reads: Vec::new(),
            next_seq: 0,
            next_token: 0,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            last_sync: now,
            durable_applied: 0,
            snapshots,
            build_rx,
            install: None,
            lease: None,
            lease_used: false,
            leases: LeaseManager::new(std::time::Duration::ZERO, std::time::Duration::ZERO),
            applied_term: 0,
            hub: None,
        }
    }
}
