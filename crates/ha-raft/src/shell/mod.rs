//! The thin shell around the core: threads, channels, and the async API.

mod node;
mod threads;
mod waiters;

pub(crate) use node::open_engine;
pub use node::{CallOptions, EngineMetrics, Node, ReadConsistency, ReadOptions, Status};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Sender;
use ha_core::eraftpb::Message;
use ha_core::{
    CallReply, Config, Error, MessageSink, NodeId, SnapshotOutcome, SnapshotReader, SnapshotWriter,
    StorageError, Transport,
};
use parking_lot::Mutex;

use crate::bugs::CrashSwitch;
use crate::call::Calls;
use crate::core::{CoreStatus, LeaderInfo, LeaseGrant};
use crate::latency::LatencyRecorder;
use crate::snapshot::Snapshots;
use threads::{ApplyTask, Input};
use waiters::Waiters;

const RUNNING: u8 = 0;
const STOPPING: u8 = 1;
const STOPPED: u8 = 2;

/// Peer messages and proposals queued for the raft thread above which new
/// ones are refused (peers: dropped, raft retries; proposals: `Overloaded`).
const MAX_INBOX: usize = 200_000;

#[derive(Default)]
pub(crate) struct Metrics {
    persist_batches: AtomicU64,
    syncs: AtomicU64,
    entries_persisted: AtomicU64,
    entries_applied: AtomicU64,
    leader_changes: AtomicU64,
    tick_lag_us: AtomicU64,
    max_tick_lag_us: AtomicU64,
    proposal_latency: LatencyRecorder,
    sync_latency: LatencyRecorder,
    read_index_latency: LatencyRecorder,
    lease_read_latency: LatencyRecorder,
    serializable_read_latency: LatencyRecorder,
}

impl Metrics {
    fn record_persist(&self, entries: u64, synced: bool, took: Duration) {
        self.persist_batches.fetch_add(1, Ordering::Relaxed);
        self.entries_persisted.fetch_add(entries, Ordering::Relaxed);
        if synced {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            self.sync_latency.record(took);
        }
    }

    fn record_applied(&self, entries: u64) {
        self.entries_applied.fetch_add(entries, Ordering::Relaxed);
    }
}

/// State shared by the handle and the threads.
pub(crate) struct Shared {
    id: NodeId,
    cfg: Config,
    incarnation: u64,
    tx: Sender<Input>,
    apply_tx: Sender<ApplyTask>,
    inbox: AtomicUsize,
    /// Allocating a seq and queueing the proposal happen under this lock, so
    /// the core sees seqs in order (its lowest-outstanding seq relies on it).
    seq: Mutex<u64>,
    next_read: AtomicU64,
    waiters: Waiters,
    state: AtomicU8,
    killed: AtomicBool,
    fatal: Mutex<Option<Error>>,
    status: Mutex<CoreStatus>,
    applied: AtomicU64,
    /// Term of the last entry applied (0 until one is, after a start).
    applied_term: AtomicU64,
    commit: AtomicU64,
    /// The read lease the raft thread published after its last turn (see
    /// `core::LeaseGrant` for when it is published).
    lease: Mutex<Option<LeaseGrant>>,
    /// Set when a lease read was answered from `lease`; the raft thread
    /// takes it each turn so the core keeps renewing the lease.
    lease_used: AtomicBool,
    leader_tx: tokio::sync::watch::Sender<LeaderInfo>,
    membership_tx: tokio::sync::watch::Sender<crate::membership::Membership>,
    metrics: Metrics,
    transport: Arc<dyn Transport>,
    snapshots: Arc<Snapshots>,
    /// Applied index the state store holds durably (synced); the log is
    /// never compacted past it.
    durable_applied: AtomicU64,
    faults: CrashSwitch,
    /// The application's call handler and its concurrency bound.
    calls: Calls,
}

impl Shared {
    fn record_tick_lag(&self, lag: Duration) {
        let us = lag.as_micros() as u64;
        self.metrics.tick_lag_us.store(us, Ordering::Relaxed);
        self.metrics
            .max_tick_lag_us
            .fetch_max(us, Ordering::Relaxed);
    }

    /// The commit index to answer a lease read at, if the published lease
    /// holds at `now`; notes the use so the raft thread keeps renewing.
    fn lease_hit(&self, now: std::time::Instant) -> Option<u64> {
        let grant = (*self.lease.lock())?;
        if now >= grant.until {
            return None;
        }
        if !self.lease_used.load(Ordering::Relaxed) {
            self.lease_used.store(true, Ordering::Relaxed);
        }
        Some(grant.commit)
    }

    fn publish_status(&self, s: CoreStatus) {
        *self.status.lock() = s;
    }

    fn leader_changed(&self, l: LeaderInfo) {
        let previous = *self.leader_tx.borrow();
        if l.leader.is_some() && l.leader != previous.leader {
            self.metrics.leader_changes.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut s = self.status.lock();
            s.term = l.term;
            s.leader = l.leader;
        }
        self.leader_tx.send_replace(l);
    }

    fn set_fatal(&self, e: Error) {
        let mut f = self.fatal.lock();
        if f.is_none() {
            *f = Some(e);
        }
        self.state.store(STOPPED, Ordering::SeqCst);
    }

    /// The error for a call on a member that is not running.
    fn stopped_error(&self) -> Error {
        match &*self.fatal.lock() {
            Some(e) => e.clone(),
            None => Error::Shutdown,
        }
    }

    fn check_running(&self) -> Result<(), Error> {
        if self.state.load(Ordering::SeqCst) == RUNNING {
            Ok(())
        } else {
            Err(self.stopped_error())
        }
    }
}

/// What the transport delivers into.
pub(crate) struct NodeSink {
    shared: Arc<Shared>,
}

impl MessageSink for NodeSink {
    fn deliver(&self, msg: Message) {
        if self.shared.inbox.load(Ordering::Relaxed) >= MAX_INBOX {
            return;
        }
        self.shared.inbox.fetch_add(1, Ordering::Relaxed);
        if self.shared.tx.send(Input::Peer(msg)).is_err() {
            self.shared.inbox.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn open_snapshot(&self, msg: &Message) -> Result<Box<dyn SnapshotReader>, StorageError> {
        self.shared.snapshots.open_outgoing(msg)
    }

    fn receive_snapshot(&self, msg: Message) -> Result<Box<dyn SnapshotWriter>, StorageError> {
        let tx = self.shared.tx.clone();
        self.shared.snapshots.stage_incoming(
            msg,
            Box::new(move |m| {
                let _ = tx.send(Input::StagedSnapshot(m));
            }),
        )
    }

    fn report_unreachable(&self, peer: NodeId) {
        let _ = self.shared.tx.send(Input::Unreachable(peer));
    }

    fn report_snapshot(&self, peer: NodeId, outcome: SnapshotOutcome) {
        let _ = self.shared.tx.send(Input::Snapshot(peer, outcome));
    }

    fn handle_call(&self, from: NodeId, request: Bytes, reply: CallReply) {
        if self.shared.state.load(Ordering::SeqCst) != RUNNING {
            reply(Err(Error::Shutdown));
            return;
        }
        self.shared.calls.dispatch(from, request, reply);
    }
}
