//! The three threads of a member: raft (owns the core), log writer (makes
//! the log durable, group commit), apply (runs the state machine).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use ha_core::eraftpb::{ConfState, Entry, Message};
use ha_core::{Error, LogStore, LogWrite, NodeId, SnapshotOutcome, StateMachine, StateStore};

use super::Shared;
use crate::apply::Applier;
use crate::bugs::InstallCrashPoint;
use crate::core::{Core, Failure, Outbox, PersistTask, compact_log};
use crate::membership::{MemberChange, MemberSet};
use crate::snapshot::{InstallMarker, SnapshotDescriptor};

/// A membership request for the raft thread.
pub(crate) enum MembershipRequest {
    Change {
        changes: Vec<MemberChange>,
        force: bool,
    },
    Address {
        id: NodeId,
        address: bytes::Bytes,
    },
}

/// Everything that reaches the raft thread.
pub(crate) enum Input {
    Propose {
        seq: u64,
        command: Vec<u8>,
        deadline: Instant,
    },
    Read {
        token: u64,
        deadline: Instant,
    },
    LeaseRead {
        token: u64,
        deadline: Instant,
    },
    Peer(Message),
    /// A `MsgSnapshot` whose snapshot is staged and verified.
    StagedSnapshot(Message),
    Unreachable(NodeId),
    Snapshot(NodeId, SnapshotOutcome),
    Persisted {
        number: u64,
        tasks: usize,
        /// A snapshot installed with these writes: its index and members.
        installed: Option<(u64, MemberSet)>,
    },
    Applied {
        index: u64,
        completed: Vec<u64>,
    },
    ConfChange {
        entry: Entry,
        reply: Sender<Result<(ConfState, MemberSet), Error>>,
    },
    Membership {
        token: u64,
        request: MembershipRequest,
        deadline: Instant,
    },
    Transfer {
        target: Option<NodeId>,
        /// Asked again after raft gave an earlier ask up: only sent on to
        /// raft for a transferee heard from lately (raft drops proposals
        /// while a transfer is under way).
        again: bool,
        reply: tokio::sync::oneshot::Sender<Result<NodeId, Error>>,
    },
    Campaign,
    Fatal(Error),
    Shutdown,
}

/// Work for the apply thread.
pub(crate) enum ApplyTask {
    Entries(Vec<Entry>),
    Reads {
        index: u64,
        tokens: Vec<u64>,
    },
    Serializable {
        token: u64,
    },
    /// Replace the state with a staged snapshot (from the log writer,
    /// which waits for the answer before it restarts the log).
    Install {
        descriptor: SnapshotDescriptor,
        reply: Sender<Result<MemberSet, Error>>,
    },
    Stop,
}

/// Inputs taken per loop turn before raft's Ready is handled: large enough
/// to batch proposals and acks, small enough that ticks stay on time.
const MAX_INPUTS_PER_TURN: usize = 4096;

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

pub(crate) struct RaftThread<L: LogStore> {
    pub(crate) core: Core<L>,
    pub(crate) rx: Receiver<Input>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) log_tx: Sender<LogTask>,
    pub(crate) apply_tx: Sender<ApplyTask>,
}

impl<L: LogStore> RaftThread<L> {
    pub(crate) fn run(mut self) {
        let interval = self.shared.cfg.tick_interval;
        let warn_lag = self.shared.cfg.tick_lag_warn;
        let mut next_tick = Instant::now() + interval;
        // Ticks the coming sleep may pass through (`Core::quiet_ticks`).
        let mut quiet = 0usize;
        let mut out = Outbox::default();
        let mut exit_error: Option<Error> = None;
        loop {
            let wake_at = next_tick + interval * u32::try_from(quiet).unwrap_or(u32::MAX);
            let wait = wake_at.saturating_duration_since(Instant::now());
            let first = match self.rx.recv_timeout(wait) {
                Ok(i) => Some(i),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let turn = catch_unwind(AssertUnwindSafe(|| -> Result<bool, Error> {
                let now = Instant::now();
                let mut stop = false;
                // The quiet ticks that fell due while this thread slept come
                // first, before whatever woke it: raft sees the same ticks,
                // in the same order with its messages, as if it had woken
                // for each. Never more than were planned, so a thread that
                // could not keep time still gets one late tick, not a burst.
                let mut ticked = false;
                while quiet > 0 && now >= next_tick {
                    self.core.tick(now, &mut out);
                    next_tick += interval;
                    quiet -= 1;
                    ticked = true;
                }
                if let Some(input) = first {
                    stop |= self.handle(input, now, &mut out)?;
                }
                for _ in 0..MAX_INPUTS_PER_TURN {
                    match self.rx.try_recv() {
                        Ok(input) => stop |= self.handle(input, now, &mut out)?,
                        Err(_) => break,
                    }
                }
                let now = Instant::now();
                if now >= next_tick {
                    // Delay semantics: a late tick is one tick, never a burst.
                    let lag = now - next_tick;
                    self.shared.record_tick_lag(lag);
                    if lag > warn_lag {
                        tracing::warn!(
                            lag_ms = lag.as_millis() as u64,
                            "raft tick late: this member's thread could not keep time; \
                             expect elections if it persists"
                        );
                    }
                    self.core.tick(now, &mut out);
                    if let Some(through) = self
                        .core
                        .compaction_due(self.shared.durable_applied.load(Ordering::Relaxed))
                    {
                        let _ = self.log_tx.send(LogTask::Compact(through));
                    }
                    next_tick = now + interval;
                    ticked = true;
                }
                if self.shared.lease_used.swap(false, Ordering::Relaxed) {
                    self.core.note_lease_wanted(now);
                }
                self.core.issue_reads(now, &mut out);
                self.core.handle_ready(now, &mut out)?;
                self.shared
                    .commit
                    .store(self.core.commit(), Ordering::Relaxed);
                // Before this turn's messages leave and its committed
                // entries reach the apply thread (`dispatch`): see LeaseGrant.
                *self.shared.lease.lock() = self.core.lease_grant();
                if ticked || out.leader_changed.is_some() {
                    self.shared.publish_status(self.core.status());
                }
                quiet = self.core.quiet_ticks(now);
                Ok(stop)
            }));
            match turn {
                Ok(Ok(stop)) => {
                    self.dispatch(&mut out);
                    if stop {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    exit_error = Some(e);
                    break;
                }
                Err(p) => {
                    exit_error = Some(Error::fatal(format!(
                        "raft invariant violated (panic): {}",
                        panic_message(p.as_ref())
                    )));
                    break;
                }
            }
        }
        *self.shared.lease.lock() = None;
        if let Some(e) = &exit_error {
            tracing::error!(node = %self.core.id(), error = %e, "member stopped");
            self.shared.set_fatal(e.clone());
        }
        // Whatever is still outstanding gets an answer; after a panic the
        // core may be inconsistent, so the waiters are failed directly.
        let tidy = catch_unwind(AssertUnwindSafe(|| {
            self.core.fail_all(exit_error.as_ref(), &mut out);
        }));
        if tidy.is_ok() {
            out.messages.clear();
            out.persist.clear();
            out.committed.clear();
            out.reads.clear();
            self.dispatch(&mut out);
        }
        let last = exit_error.unwrap_or(Error::Shutdown);
        self.shared.waiters.fail_everything(&last);
        let _ = self.apply_tx.send(ApplyTask::Stop);
        self.shared.snapshots.detach_builder();
    }

    /// Returns true when the thread should stop.
    fn handle(&mut self, input: Input, now: Instant, out: &mut Outbox) -> Result<bool, Error> {
        match input {
            Input::Propose {
                seq,
                command,
                deadline,
            } => {
                self.shared.inbox.fetch_sub(1, Ordering::Relaxed);
                self.core.propose(seq, command, deadline, now, out);
            }
            Input::Read { token, deadline } => self.core.read(token, deadline),
            // The lease is checked against the clock as it is now, not at
            // the start of this turn.
            Input::LeaseRead { token, deadline } => {
                self.core.lease_read(token, deadline, Instant::now(), out)
            }
            Input::Peer(m) => {
                self.shared.inbox.fetch_sub(1, Ordering::Relaxed);
                // A follower's lease round is answered against the clock
                // as it is now.
                self.core.step(m, Instant::now());
            }
            Input::StagedSnapshot(m) => {
                let descriptor = m
                    .snapshot
                    .as_ref()
                    .and_then(|s| crate::snapshot::decode_descriptor(&s.data).ok());
                if !self.core.step_staged_snapshot(m) {
                    // Stale, already covered by the log, or from a member
                    // raft does not follow: nothing is installed. A copy of
                    // the snapshot being installed shares its staging file,
                    // which stays.
                    if let Some(d) = descriptor.filter(|d| !self.core.needs_staged(d)) {
                        tracing::info!(
                            index = d.index,
                            "raft declined a snapshot; staging discarded"
                        );
                        self.shared.snapshots.discard_staged(&d);
                    }
                }
            }
            Input::Unreachable(p) => self.core.report_unreachable(p),
            Input::Snapshot(p, o) => self.core.report_snapshot(p, o),
            Input::Persisted {
                number,
                tasks,
                installed,
            } => self.core.on_persisted(number, tasks, installed, out),
            Input::Applied { index, completed } => {
                self.shared.applied.store(index, Ordering::Relaxed);
                self.core.on_applied(index, &completed, now);
            }
            Input::ConfChange { entry, reply } => {
                let _ = reply.send(self.core.apply_conf_change(&entry, out));
            }
            Input::Membership {
                token,
                request,
                deadline,
            } => match request {
                MembershipRequest::Change { changes, force } => {
                    self.core
                        .propose_membership(token, changes, force, deadline, out);
                }
                MembershipRequest::Address { id, address } => {
                    self.core
                        .propose_address_update(token, id, address, deadline, out);
                }
            },
            Input::Transfer {
                target,
                again,
                reply,
            } => {
                let result = match target.or_else(|| self.core.best_transferee()) {
                    None => Err(Error::NotLeader {
                        leader_hint: self.core.leader().leader,
                    }),
                    // Writes keep flowing while the caller waits for it.
                    Some(t) if again && !self.core.recently_active(t) => Ok(t),
                    Some(t) => self.core.transfer_leader(t).map(|()| t),
                };
                let _ = reply.send(result);
            }
            Input::Campaign => self.core.campaign()?,
            Input::Fatal(e) => return Err(e),
            Input::Shutdown => return Ok(true),
        }
        Ok(false)
    }

    fn dispatch(&mut self, out: &mut Outbox) {
        if out.is_empty() {
            return;
        }
        for m in out.messages.drain(..) {
            self.shared.transport.send(m);
        }
        for t in out.persist.drain(..) {
            let _ = self.log_tx.send(LogTask::Persist(t));
        }
        if !out.committed.is_empty() {
            let _ = self
                .apply_tx
                .send(ApplyTask::Entries(std::mem::take(&mut out.committed)));
        }
        for r in out.reads.drain(..) {
            let _ = self.apply_tx.send(ApplyTask::Reads {
                index: r.index,
                tokens: r.tokens,
            });
        }
        if !out.failures.is_empty() {
            let mut proposals = Vec::new();
            for f in out.failures.drain(..) {
                match f {
                    Failure::Proposal { seq, error } => proposals.push((seq, Err(error))),
                    Failure::Read { token, error } => self.shared.waiters.fail_read(token, error),
                }
            }
            self.shared.waiters.complete_proposals(proposals);
        }
        if let Some(l) = out.leader_changed.take() {
            self.shared.leader_changed(l);
        }
        if !out.membership_done.is_empty() {
            self.shared
                .waiters
                .complete_membership(out.membership_done.drain(..));
        }
        if let Some(m) = out.membership_changed.take() {
            self.shared.membership_tx.send_replace(m);
        }
    }
}

/// Work for the log thread, which owns the log's writes.
pub(crate) enum LogTask {
    /// A Ready's writes.
    Persist(PersistTask),
    /// Compact the log through this index ([`Core::compaction_due`]). Done
    /// here rather than on the raft thread: it waits for the log's writer,
    /// which may be in a sync that takes seconds on a busy disk, and a raft
    /// thread that waits misses its heartbeats.
    Compact(u64),
}

pub(crate) fn run_log_writer<L: LogStore>(
    log: Arc<L>,
    rx: Receiver<LogTask>,
    raft_tx: Sender<Input>,
    shared: Arc<Shared>,
) {
    while let Ok(first) = rx.recv() {
        let mut tasks = Vec::new();
        let mut compact = None;
        for t in std::iter::once(first).chain(rx.try_iter().take(MAX_INPUTS_PER_TURN)) {
            match t {
                LogTask::Persist(p) => tasks.push(p),
                LogTask::Compact(through) => compact = compact.max(Some(through)),
            }
        }
        if shared.killed.load(Ordering::Relaxed) {
            return;
        }
        // A task that installs a snapshot is handled on its own, after the
        // tasks before it and before the ones after it.
        while !tasks.is_empty() {
            let cut = tasks
                .iter()
                .position(|t| t.install.is_some())
                .unwrap_or(tasks.len());
            let rest = tasks.split_off(cut.max(1));
            let group = std::mem::replace(&mut tasks, rest);
            if let Err(e) = persist_group(&*log, group, &raft_tx, &shared) {
                // Never retry a failed write or sync and then acknowledge:
                // the member stops.
                let _ = raft_tx.send(Input::Fatal(e));
                return;
            }
        }
        // After the writes queued before it: the entries it drops were
        // durable before the raft thread asked.
        if let Some(through) = compact {
            compact_log(&*log, shared.id, through);
        }
    }
}

fn persist_group<L: LogStore>(
    log: &L,
    mut tasks: Vec<PersistTask>,
    raft_tx: &Sender<Input>,
    shared: &Shared,
) -> Result<(), Error> {
    let mut installed = None;
    let mut staged = None;
    if let Some(descriptor) = tasks.first_mut().and_then(|t| t.install.take()) {
        installed = Some(install_snapshot(log, &descriptor, shared)?);
        staged = Some(descriptor);
    }
    let mut write = LogWrite::default();
    for t in &mut tasks {
        write.merge(std::mem::take(&mut t.write));
    }
    if write.snapshot.is_some() || !write.entries.is_empty() || write.hard_state.is_some() {
        let entries = write.entries.len() as u64;
        let started = std::time::Instant::now();
        log.persist(&write)
            .map_err(|e| Error::fatal(format!("log write failed: {e}")))?;
        shared
            .metrics
            .record_persist(entries, write.sync, started.elapsed());
    }
    if let Some(descriptor) = staged {
        // The marker is gone with that write; the staging is not needed.
        shared.snapshots.discard_staged(&descriptor);
    }
    let Some(number) = tasks.last().map(|t| t.number) else {
        return Ok(());
    };
    if shared.killed.load(Ordering::Relaxed) {
        return Ok(());
    }
    for t in &mut tasks {
        for m in t.messages.drain(..) {
            shared.transport.send(m);
        }
    }
    let _ = raft_tx.send(Input::Persisted {
        number,
        tasks: tasks.len(),
        installed,
    });
    Ok(())
}

/// Steps 1 and 2 of an install: the pending-install marker (durable), then
/// the state store restored from the staged file by the apply thread. Step
/// 3, the log write that restarts the log and clears the marker, follows
/// in the caller.
fn install_snapshot<L: LogStore>(
    log: &L,
    descriptor: &SnapshotDescriptor,
    shared: &Shared,
) -> Result<(u64, MemberSet), Error> {
    let index = descriptor.index;
    let marker = InstallMarker {
        file: descriptor.file_name("staged"),
        descriptor: Some(descriptor.clone()),
    };
    log.set_pending_install(&prost::Message::encode_to_vec(&marker))
        .map_err(|e| Error::fatal(format!("storing the pending-install marker failed: {e}")))?;
    shared.faults.hit(InstallCrashPoint::AfterMarker)?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    shared
        .apply_tx
        .send(ApplyTask::Install {
            descriptor: descriptor.clone(),
            reply: tx,
        })
        .map_err(|_| Error::Shutdown)?;
    let members = rx.recv().map_err(|_| Error::Shutdown)??;
    shared.faults.hit(InstallCrashPoint::AfterRestore)?;
    shared
        .snapshots
        .stats
        .installed
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(node = %shared.id, index, "installed a snapshot");
    Ok((index, members))
}

pub(crate) fn run_apply<S: StateStore + ?Sized, M: StateMachine>(
    mut applier: Applier<S, M>,
    rx: Receiver<ApplyTask>,
    raft_tx: Sender<Input>,
    shared: Arc<Shared>,
) {
    let mut waiting_reads: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    // The state store is written without sync (the log is the durable
    // record); syncing it now and then bounds what a crash must replay,
    // and lets the log be compacted up to what is durably applied.
    let sync_every = Duration::from_secs(1);
    let mut last_sync = Instant::now();
    loop {
        let first = match rx.recv_timeout(sync_every) {
            Ok(task) => task,
            Err(RecvTimeoutError::Timeout) => {
                // Idle: make what was applied durable, so that the log can
                // be compacted up to it without waiting for more writes.
                if shared.killed.load(Ordering::Relaxed) {
                    return;
                }
                let applied = applier.applied();
                if applied > shared.durable_applied.load(Ordering::Relaxed) {
                    if let Err(e) = applier.sync() {
                        let _ = raft_tx.send(Input::Fatal(Error::fatal(format!(
                            "syncing the state store failed: {e}"
                        ))));
                        return;
                    }
                    shared.durable_applied.store(applied, Ordering::Relaxed);
                    last_sync = Instant::now();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut tasks = vec![first];
        tasks.extend(rx.try_iter().take(MAX_INPUTS_PER_TURN));
        let mut entries: Vec<Entry> = Vec::new();
        let mut stop = false;
        let mut serializable = Vec::new();
        for t in tasks {
            match t {
                ApplyTask::Entries(e) => {
                    if entries.is_empty() {
                        entries = e;
                    } else {
                        entries.extend(e);
                    }
                }
                ApplyTask::Reads { index, tokens } => {
                    waiting_reads.entry(index).or_default().extend(tokens);
                }
                ApplyTask::Serializable { token } => serializable.push(token),
                ApplyTask::Install { descriptor, reply } => {
                    // Entries queued before the snapshot come first (they are
                    // all below it and about to be replaced).
                    let step = std::mem::take(&mut entries);
                    if !apply_entries(
                        &mut applier,
                        step,
                        &mut last_sync,
                        sync_every,
                        &raft_tx,
                        &shared,
                    ) {
                        return;
                    }
                    if shared.killed.load(Ordering::Relaxed) {
                        return;
                    }
                    let result = install(&mut applier, &descriptor, &shared);
                    if result.is_ok() {
                        shared
                            .durable_applied
                            .store(applier.applied(), Ordering::Relaxed);
                        shared.applied.store(applier.applied(), Ordering::Relaxed);
                        last_sync = Instant::now();
                    }
                    let _ = reply.send(result);
                }
                ApplyTask::Stop => stop = true,
            }
        }
        if shared.killed.load(Ordering::Relaxed) {
            return;
        }
        if !apply_entries(
            &mut applier,
            entries,
            &mut last_sync,
            sync_every,
            &raft_tx,
            &shared,
        ) {
            return;
        }
        for token in serializable {
            answer_read(&applier, &shared, token);
        }
        let applied = applier.applied();
        while let Some(entry) = waiting_reads.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for token in entry.remove() {
                answer_read(&applier, &shared, token);
            }
        }
        if stop {
            return;
        }
    }
}

/// Restores the state from a staged snapshot.
fn install<S: StateStore + ?Sized, M: StateMachine>(
    applier: &mut Applier<S, M>,
    descriptor: &SnapshotDescriptor,
    shared: &Shared,
) -> Result<MemberSet, Error> {
    let mut pairs = shared.snapshots.staged_pairs(descriptor)?;
    if shared.faults.armed(InstallCrashPoint::MidRestore) {
        // Stop half-way, as a crash would: the store keeps what was written.
        let half = descriptor.size / 2;
        let mut seen = 0u64;
        let mut partial = std::iter::from_fn(|| {
            let next = pairs.next()?;
            if let Ok((k, v)) = &next {
                seen += (k.len() + v.len() + 8) as u64;
                if seen > half {
                    return Some(Err(ha_core::StorageError::io(
                        "restore",
                        std::io::Error::other("injected crash half-way through a restore"),
                    )));
                }
            }
            Some(next)
        });
        let _ = applier.install(&mut partial, descriptor.index);
        return Err(Error::fatal(
            "injected crash during a snapshot install: MidRestore",
        ));
    }
    applier.install(&mut pairs, descriptor.index)
}

/// Applies one step of entries; false when the member must stop.
fn apply_entries<S: StateStore + ?Sized, M: StateMachine>(
    applier: &mut Applier<S, M>,
    entries: Vec<Entry>,
    last_sync: &mut Instant,
    sync_every: Duration,
    raft_tx: &Sender<Input>,
    shared: &Shared,
) -> bool {
    if entries.is_empty() {
        return true;
    }
    let conf_timeout = Duration::from_secs(30);
    let mut conf_change = |entry: &Entry| -> Result<(ConfState, MemberSet), Error> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        raft_tx
            .send(Input::ConfChange {
                entry: entry.clone(),
                reply: tx,
            })
            .map_err(|_| Error::Shutdown)?;
        rx.recv_timeout(conf_timeout).map_err(|_| Error::Shutdown)?
    };
    let sync = last_sync.elapsed() >= sync_every;
    if sync {
        *last_sync = Instant::now();
    }
    // A panicking state machine stops the member with Fatal, like a raft-rs
    // panic on the raft thread, instead of silently ending this thread.
    let applied = catch_unwind(AssertUnwindSafe(|| {
        applier.apply(&entries, sync, &mut conf_change)
    }))
    .unwrap_or_else(|p| {
        Err(Error::fatal(format!(
            "the state machine panicked while applying: {}",
            panic_message(p.as_ref())
        )))
    });
    match applied {
        Ok(step) => {
            if let Some(last) = entries.iter().rev().find(|e| e.index == step.applied) {
                shared.applied_term.store(last.term, Ordering::Relaxed);
            }
            if sync {
                shared
                    .durable_applied
                    .store(step.applied, Ordering::Relaxed);
            }
            let seqs: Vec<u64> = step.completed.iter().map(|(s, _)| *s).collect();
            shared.metrics.record_applied(entries.len() as u64);
            shared
                .waiters
                .complete_proposals(step.completed.into_iter().map(|(s, r)| (s, Ok(r))));
            let _ = raft_tx.send(Input::Applied {
                index: step.applied,
                completed: seqs,
            });
            true
        }
        Err(e) => {
            let e = match e {
                Error::Fatal { .. } | Error::Shutdown => e,
                other => Error::fatal(format!("apply failed: {other}")),
            };
            let _ = raft_tx.send(Input::Fatal(e));
            false
        }
    }
}

fn answer_read<S: StateStore + ?Sized, M: StateMachine>(
    applier: &Applier<S, M>,
    shared: &Shared,
    token: u64,
) {
    if let Some((query, tx)) = shared.waiters.take_read(token) {
        let answer = catch_unwind(AssertUnwindSafe(|| applier.query(&query))).map_err(|p| {
            let reason = panic_message(p.as_ref());
            tracing::error!(node = %shared.id, %reason, "the state machine panicked answering a query");
            Error::fatal(format!("the state machine panicked answering a query: {reason}"))
        });
        let _: Result<(), _> = tx.send(answer.map(|a: Bytes| a));
    }
}

/// Builds snapshots when raft asks for one (through `Snapshots::for_raft`).
pub(crate) fn run_builder<S: StateStore + ?Sized>(
    state: Arc<S>,
    rx: Receiver<()>,
    shared: Arc<Shared>,
) {
    // Blocks until asked: the raft thread drops the sender when it stops
    // (`Snapshots::detach_builder`), which ends this loop.
    while rx.recv().is_ok() {
        if let Err(e) = shared.snapshots.build(&*state) {
            tracing::warn!(node = %shared.id, error = %e, "building a snapshot failed; raft will ask again");
        }
        if shared.killed.load(Ordering::Relaxed)
            || shared.state.load(Ordering::SeqCst) != super::RUNNING
        {
            return;
        }
    }
}
