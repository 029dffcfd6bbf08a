//! A member's process as the shell runs it: ticks, raft's Ready, the
//! log writer (disk), the apply step, and the network between members.

use std::sync::Arc;

use ha_core::eraftpb::{ConfChangeV2, Entry, EntryType, Message};
use ha_core::{Error, LogStore, LogWrite, NodeId};
use prost::Message as _;

use super::{ENGINE, Event, READ_INDEX, World, msg_summary};
use crate::core::{Failure, Outbox, compact_log};
use crate::kv::lease::LeaseManager;
use crate::shell::open_engine;
use crate::sim::Workload;
use crate::sim::check::Violation;
use crate::sim::client::Request;
use crate::sim::executor::MILLIS;
use crate::sim::history::{Outcome, Outputs};
use crate::sim::kv::{self, KvRegister};
use crate::sim::kvload::{self, SimMachine};
use crate::sim::member::Process;
use crate::snapshot::Snapshots;

fn is_conf_change(e: &Entry) -> bool {
    matches!(
        e.entry_type(),
        EntryType::EntryConfChange | EntryType::EntryConfChangeV2
    )
}

/// A membership change an operator asked for (not the empty entry that
/// leaves a joint configuration).
fn is_requested_change(e: &Entry) -> bool {
    match e.entry_type() {
        EntryType::EntryConfChange => true,
        EntryType::EntryConfChangeV2 => {
            ConfChangeV2::decode(e.data.as_slice()).is_ok_and(|cc| !cc.changes.is_empty())
        }
        EntryType::EntryNormal => false,
    }
}

impl World {
    pub(super) fn start(&mut self, m: usize) {
        if self.members[m].removed {
            return;
        }
        // Reports of an earlier life of this member go nowhere.
        self.take_observed();
        let now = self.now;
        let first_id = self.rng.next_u64() >> 16;
        let member = &self.members[m];
        let snapshots = Snapshots::with_first_id(&member.cfg, member.files.clone(), first_id);
        let (build_tx, build_rx) = crossbeam_channel::bounded(1);
        snapshots.set_builder(build_tx);
        let machine = match self.cfg.workload {
            Workload::Registers => {
                KvRegister::open(&member.state, m, self.sink.clone()).map(SimMachine::Registers)
            }
            Workload::Kv => SimMachine::mvcc(&member.state, m, self.revisions.clone(), self.bugs),
        };
        let started = machine.map_err(Error::from).and_then(|sm| {
            open_engine(
                &member.cfg,
                Arc::new(member.log.clone()),
                Arc::new(member.state.clone()),
                sm,
                &self.logger,
                self.rng.next_u64(),
                self.bugs,
                snapshots.clone(),
            )
        });
        let (opened, core, applier) = match started {
            Ok(x) => x,
            Err(e) => {
                self.halt(Violation::new(
                    ENGINE,
                    format!("member {} cannot start: {e}", m + 1),
                ));
                return;
            }
        };
        let incarnation = opened.incarnation;
        // Whatever the store holds at open is durable: it is what a crash
        // left, or what the bootstrap wrote with sync.
        let log = &self.members[m].log;
        let first = log.first_index().unwrap_or(1);
        let last = log.last_index().unwrap_or(0);
        let durable = log
            .entries(first, last + 1, None)
            .map(|es| es.iter().map(|e| e.term).collect())
            .unwrap_or_default();
        if let Some(index) = opened.installed {
            // A crash interrupted an install; open finished it.
            self.counters.snapshots += 1;
            let term = log.term(index).unwrap_or(0);
            if let Err(v) = self.checks.installed(m, index, term) {
                self.fail(v);
            }
        }
        self.checks.started(m, applier.applied(), first, durable);
        let applied = applier.applied();
        let member = &mut self.members[m];
        member.life += 1;
        member.paused_until = 0;
        member.proc = Some(Process::new(
            core,
            applier,
            incarnation,
            now,
            snapshots,
            build_rx,
        ));
        if let Some(p) = member.proc.as_mut() {
            // As `Leases::new` configures it: a new leader adds an election
            // timeout, an expiry in flight is proposed again after a
            // request timeout.
            let election = member.cfg.tick_interval * member.cfg.max_election_tick as u32;
            p.leases = LeaseManager::new(election, member.cfg.request_timeout);
            p.leases.set_bugs(self.bugs);
        }
        let life = member.life;
        let tick_ns = member.tick_ns;
        let held = std::mem::take(&mut member.held);
        self.trace(|| {
            format!(
                "member {} starts: incarnation {incarnation}, applied {applied}, {} held messages",
                m + 1,
                held.len()
            )
        });
        let first_tick = self.rng.between(1, tick_ns);
        self.after(first_tick, Event::Tick { m, life });
        for msg in held {
            let d = self.rng.between(MILLIS, 30 * MILLIS);
            self.after(d, Event::Deliver { msg: Box::new(msg) });
        }
        self.drive(m, Outbox::default());
        self.take_observed();
    }

    /// What the members' MVCC machines reported (KV workload): revisions
    /// to check, and lease changes for their lease managers, which follow
    /// them on the apply thread in production.
    pub(super) fn take_observed(&mut self) {
        let observed: Vec<kvload::Observed> = std::mem::take(&mut *self.revisions.lock());
        let mut touched = std::collections::BTreeSet::new();
        for o in observed {
            let member = match &o {
                kvload::Observed::Revision(r) => {
                    if let Err(v) = self.kv_truth.applied(r) {
                        self.fail(v);
                    }
                    continue;
                }
                &kvload::Observed::LeaseEnded {
                    member,
                    id,
                    expired,
                    wrote,
                    revision,
                } => {
                    self.lease_ended(member, id, expired, wrote, revision);
                    continue;
                }
                kvload::Observed::Granted { member, .. }
                | kvload::Observed::Revoked { member, .. }
                | kvload::Observed::Restored { member, .. }
                | kvload::Observed::Events { member, .. }
                | kvload::Observed::Compacted { member, .. } => *member,
            };
            touched.insert(member);
            let fresh = match &o {
                kvload::Observed::Restored {
                    revision,
                    compact_revision,
                    ..
                } => Some(self.new_hub(*revision, *compact_revision)),
                _ => None,
            };
            let instant = self.instant_of(member);
            let Some(p) = self.members[member].proc.as_mut() else {
                continue;
            };
            match o {
                kvload::Observed::Granted { id, ttl, .. } => p.leases.granted(id, ttl, instant),
                kvload::Observed::Revoked { id, .. } => p.leases.revoked(id),
                kvload::Observed::Restored {
                    leases,
                    revision,
                    compact_revision,
                    ..
                } => {
                    p.leases.restored(&leases, instant);
                    match p.hub.as_mut() {
                        Some(h) => h.on_restored(revision, compact_revision),
                        None => p.hub = fresh,
                    }
                }
                kvload::Observed::Events {
                    events, revision, ..
                } => {
                    if let Some(h) = p.hub.as_mut() {
                        h.on_events(&events, revision, instant);
                    }
                }
                kvload::Observed::Compacted {
                    compact_revision, ..
                } => {
                    if let Some(h) = p.hub.as_mut() {
                        h.on_compacted(compact_revision);
                    }
                }
                kvload::Observed::Revision(_) | kvload::Observed::LeaseEnded { .. } => {}
            }
        }
        for m in touched {
            self.catch_up(m);
        }
        self.take_watch_log();
    }

    /// The leader's expiry pass (the shell's `run_expiry`): follow the
    /// engine's role, propose the expiry of every lease past its deadline.
    fn expire_leases(&mut self, m: usize, out: &mut Outbox) {
        let now = self.instant_of(m);
        let Some(p) = self.members[m].proc.as_mut() else {
            return;
        };
        let leading = p.core.is_leader().then(|| p.core.leader().term);
        p.leases.observe(leading, p.applied_term, now);
        let deadline = now + std::time::Duration::from_nanos(self.request_timeout);
        for (id, term) in p.leases.due(now, 1_000) {
            p.next_seq += 1;
            let command = ha_storage::kv::KvCommand::LeaseExpire { id, term }.encode(0);
            p.core.propose(p.next_seq, command, deadline, now, out);
            self.counters.expiry_proposals += 1;
        }
    }

    /// Power failure: the process is gone and so is every unsynced write.
    pub(super) fn crash(&mut self, m: usize) {
        if !self.take_down(m, "member crashed") {
            return;
        }
        let member = &mut self.members[m];
        member.log = member.log.crash();
        member.state = member.state.crash();
        self.checks.crashed(m);
        self.counters.crashes += 1;
        self.trace(|| format!("member {} crashes", m + 1));
    }

    /// The process is gone: its callers hear so. False if it was not
    /// running.
    pub(super) fn take_down(&mut self, m: usize, why: &str) -> bool {
        let Some(mut p) = self.members[m].proc.take() else {
            return false;
        };
        let mut out = Outbox::default();
        p.core.fail_all(None, &mut out);
        for (token, result) in out.membership_done.drain(..) {
            self.membership_answered(token, result);
        }
        for f in out.failures.drain(..) {
            match f {
                Failure::Proposal { seq, error } => {
                    if let Some(id) = p.proposals.remove(&seq) {
                        self.fail_call(id, &error);
                    }
                }
                Failure::Read { token, error } => {
                    if let Some(id) = p.reads.remove(&token) {
                        self.fail_call(id, &error);
                    }
                }
            }
        }
        for (_, id) in std::mem::take(&mut p.reads) {
            self.complete(id, Outcome::Fail, Outputs::error(why));
        }
        for (_, id) in std::mem::take(&mut p.proposals) {
            self.complete(id, Outcome::Unknown, Outputs::error(why));
        }
        drop(p);
        self.watches_lost(m);
        self.raw_watches_lost(m);
        let member = &mut self.members[m];
        member.life += 1;
        member.paused_until = 0;
        true
    }

    pub(super) fn tick(&mut self, m: usize, life: u64) {
        let now = self.instant_of(m);
        let mut out = Outbox::default();
        let mut removed = false;
        if let Some(p) = self.members[m].proc.as_mut() {
            p.core.tick(now, &mut out);
            // The apply thread syncs the state store when idle, and the
            // raft thread compacts the log up to what it holds durably.
            let applied = p.applier.applied();
            if self.now.saturating_sub(p.last_sync) >= self.state_sync_every
                && applied > p.durable_applied
                && p.applier.sync().is_ok()
            {
                p.durable_applied = applied;
                p.last_sync = self.now;
            }
            if let Some(through) = p.core.compaction_due(p.durable_applied) {
                compact_log(&self.members[m].log, NodeId(m as u64 + 1), through);
            }
            if self.cfg.workload == Workload::Kv {
                self.expire_leases(m, &mut out);
            }
            let Some(p) = self.members[m].proc.as_mut() else {
                return;
            };
            // The watch driver's tick: owed and periodic progress.
            if let Some(hub) = p.hub.as_mut() {
                hub.tick(now);
                if !self.watches.is_empty() || !self.raw_watches.is_empty() {
                    self.take_watch_log();
                }
            }
            let Some(p) = self.members[m].proc.as_mut() else {
                return;
            };
            // A member told it was removed (or that applied its removal)
            // is stopped by its operator.
            removed = p.core.status().removed && !p.core.membership().joint;
        }
        self.trace(|| format!("member {} tick", m + 1));
        self.drive(m, out);
        if removed {
            self.retire(m, "it learned it was removed");
            return;
        }
        let next = self.members[m].tick_ns + self.rng.between(0, self.tick_jitter);
        self.after(next, Event::Tick { m, life });
    }

    /// After any input: start read rounds, take raft's Ready, and act on
    /// everything the core asked for.
    pub(super) fn drive(&mut self, m: usize, mut out: Outbox) {
        let now = self.instant_of(m);
        let Some(p) = self.members[m].proc.as_mut() else {
            return;
        };
        if std::mem::take(&mut p.lease_used) {
            p.core.note_lease_wanted(now);
        }
        p.core.issue_reads(now, &mut out);
        if let Err(e) = p.core.handle_ready(now, &mut out) {
            self.halt(Violation::new(
                ENGINE,
                format!("member {} stopped: {e}", m + 1),
            ));
            return;
        }
        // Published where the shell's raft thread publishes it: before
        // `dispatch` sends the messages and hands over committed entries.
        p.lease = p.core.lease_grant();
        let leads = p.core.is_leader().then(|| p.core.leader().term);
        self.dispatch(m, out);
        self.poll_builder(m);
        if let Some(term) = leads {
            match self.checks.leader(m, term) {
                Ok(true) => self.trace(|| format!("member {} leads term {term}", m + 1)),
                Ok(false) => {}
                Err(v) => self.fail(v),
            }
        }
        self.isolate_if_confirmed(m);
    }

    pub(super) fn dispatch(&mut self, m: usize, mut out: Outbox) {
        for msg in std::mem::take(&mut out.messages) {
            self.send(m, msg);
        }
        for e in &out.committed {
            match self.checks.committed(m, e) {
                Ok(true) if e.index > self.cfg.members as u64 && is_requested_change(e) => {
                    self.counters.conf_changes += 1;
                    self.trace(|| format!("membership change committed at {}", e.index));
                }
                Ok(_) => {}
                Err(v) => self.fail(v),
            }
        }
        for (token, result) in std::mem::take(&mut out.membership_done) {
            self.membership_answered(token, result);
        }
        let Some(p) = self.members[m].proc.as_mut() else {
            return;
        };
        let persist = !out.persist.is_empty();
        p.disk_queue.extend(out.persist.drain(..));
        let mut apply = !out.committed.is_empty() || !out.reads.is_empty();
        p.apply_queue.append(&mut out.committed);
        let mut stale = None;
        for r in out.reads.drain(..) {
            for t in &r.tokens {
                let Some(id) = p.reads.get(t) else { continue };
                if let Some(o) = self.open.get(id)
                    && r.index < o.committed_at_invoke
                    && stale.is_none()
                {
                    stale = Some((*id, r.index, o.committed_at_invoke));
                }
            }
            p.lin_reads.entry(r.index).or_default().extend(r.tokens);
            apply = true;
        }
        if let Some((id, index, committed)) = stale {
            let v = Violation::new(
                READ_INDEX,
                format!(
                    "member {} was told to answer op {id} at index {index}, but index \
                     {committed} was already committed when the read was invoked",
                    m + 1
                ),
            )
            .with_ops([id]);
            self.fail(v);
        }
        let Some(p) = self.members[m].proc.as_mut() else {
            return;
        };
        let mut failed = Vec::new();
        for f in out.failures.drain(..) {
            match f {
                Failure::Proposal { seq, error } => {
                    if let Some(id) = p.proposals.remove(&seq) {
                        failed.push((id, error));
                    }
                }
                Failure::Read { token, error } => {
                    if let Some(id) = p.reads.remove(&token) {
                        failed.push((id, error));
                    }
                }
            }
        }
        for (id, error) in failed {
            self.fail_call(id, &error);
        }
        if let Some(l) = out.leader_changed {
            self.trace(|| {
                format!(
                    "member {} sees leader {:?} in term {}",
                    m + 1,
                    l.leader.map(|n| n.0),
                    l.term
                )
            });
        }
        if persist {
            self.kick_disk(m);
        }
        if apply {
            self.schedule_apply(m);
        }
    }

    // ---- network ----

    pub(super) fn send(&mut self, from: usize, msg: Message) {
        self.counters.messages += 1;
        if super::snapshots::is_snapshot(&msg) {
            return self.send_snapshot(from, msg);
        }
        let to = match (msg.to as usize).checked_sub(1) {
            Some(to) if to < self.members.len() => to,
            _ => {
                self.counters.dropped += 1;
                return;
            }
        };
        if self.net.is_cut(from, to) {
            self.counters.dropped += 1;
            self.trace(|| format!("cut: {}", msg_summary(&msg)));
            if let Some(p) = self.members[from].proc.as_mut() {
                p.core.report_unreachable(NodeId(to as u64 + 1));
            }
            return;
        }
        let delays = self.net.deliveries(&mut self.rng, from, to);
        if delays.is_empty() {
            self.counters.dropped += 1;
            self.trace(|| format!("lost: {}", msg_summary(&msg)));
            return;
        }
        let Some((&last, earlier)) = delays.split_last() else {
            return;
        };
        for &d in earlier {
            self.after(
                d,
                Event::Deliver {
                    msg: Box::new(msg.clone()),
                },
            );
        }
        self.after(last, Event::Deliver { msg: Box::new(msg) });
    }

    pub(super) fn deliver(&mut self, msg: Message) {
        let (Some(from), Some(to)) = (
            (msg.from as usize).checked_sub(1),
            (msg.to as usize).checked_sub(1),
        ) else {
            return;
        };
        if to >= self.members.len() {
            return;
        }
        if self.net.is_cut(from, to) {
            self.counters.dropped += 1;
            self.trace(|| format!("cut in flight: {}", msg_summary(&msg)));
            return;
        }
        if !self.up(to) {
            let hold = self.net.params().hold;
            if self.members[to].held.len() < 4096 && self.rng.chance(hold) {
                self.trace(|| format!("held for restart: {}", msg_summary(&msg)));
                self.members[to].held.push(msg);
            } else {
                self.counters.dropped += 1;
                self.trace(|| format!("receiver down: {}", msg_summary(&msg)));
            }
            return;
        }
        self.trace(|| format!("deliver {}", msg_summary(&msg)));
        let instant = self.instant_of(to);
        if let Some(p) = self.members[to].proc.as_mut() {
            p.core.step(msg, instant);
        }
        self.drive(to, Outbox::default());
    }

    // ---- disk ----

    pub(super) fn kick_disk(&mut self, m: usize) {
        let life = self.members[m].life;
        let factor = self.members[m].disk_factor;
        let Some(p) = self.members[m].proc.as_mut() else {
            return;
        };
        if p.disk_busy || p.disk_queue.is_empty() {
            return;
        }
        // A task that installs a snapshot is written on its own, after the
        // tasks before it and before the ones after it (the log writer's
        // rule).
        let n = match p.disk_queue.iter().position(|t| t.install.is_some()) {
            Some(0) => 1,
            Some(i) => i,
            None => p.disk_queue.len(),
        };
        p.disk_batch = p.disk_queue.drain(..n).collect();
        p.disk_busy = true;
        let latency = self
            .rng
            .between(self.disk_latency.0, self.disk_latency.1)
            .saturating_mul(factor);
        self.after(latency, Event::DiskDone { m, life });
    }

    /// The disk finished a group commit: make it durable, send what waited
    /// for it, tell the core.
    pub(super) fn disk_done(&mut self, m: usize) {
        let Some(p) = self.members[m].proc.as_mut() else {
            return;
        };
        if p.disk_batch.first().is_some_and(|t| t.install.is_some()) {
            return self.install_marker(m);
        }
        let installing = p.install.take();
        let mut batch = std::mem::take(&mut p.disk_batch);
        p.disk_busy = false;
        let mut write = LogWrite::default();
        for t in &mut batch {
            write.merge(std::mem::take(&mut t.write));
        }
        if write.snapshot.is_some() || !write.entries.is_empty() || write.hard_state.is_some() {
            if let Err(e) = self.members[m].log.persist(&write) {
                self.halt(Violation::new(
                    ENGINE,
                    format!("member {} log write failed: {e}", m + 1),
                ));
                return;
            }
            self.checks.persisted(m, &write);
        }
        let (Some(number), tasks) = (batch.last().map(|t| t.number), batch.len()) else {
            return;
        };
        self.trace(|| {
            format!(
                "member {} disk: {} entries, sync={}, up to ready {number}",
                m + 1,
                write.entries.len(),
                write.sync
            )
        });
        for t in batch {
            for msg in t.messages {
                self.send(m, msg);
            }
        }
        let mut installed = None;
        if let Some(i) = installing {
            // Step 3 done: the log restarts after the snapshot and the
            // marker is gone; the staging is not needed any more.
            if let Some(p) = self.members[m].proc.as_ref() {
                p.snapshots.discard_staged(&i.descriptor);
            }
            self.counters.snapshots += 1;
            self.trace(|| {
                format!(
                    "member {} installed the snapshot at {}",
                    m + 1,
                    i.descriptor.index
                )
            });
            installed = i.restored.map(|ms| (i.descriptor.index, ms));
        }
        let mut out = Outbox::default();
        if let Some(p) = self.members[m].proc.as_mut() {
            p.core.on_persisted(number, tasks, installed, &mut out);
        }
        self.kick_disk(m);
        self.drive(m, out);
        self.schedule_apply(m);
    }

    // ---- apply ----

    pub(super) fn schedule_apply(&mut self, m: usize) {
        let life = self.members[m].life;
        let Some(p) = self.members[m].proc.as_mut() else {
            return;
        };
        if p.apply_scheduled {
            return;
        }
        p.apply_scheduled = true;
        let d = self.rng.between(self.apply_delay.0, self.apply_delay.1);
        self.after(d, Event::Apply { m, life });
    }

    /// The apply thread's turn: apply committed entries, answer proposals,
    /// answer the reads whose index is applied.
    pub(super) fn apply(&mut self, m: usize) {
        let now = self.now;
        let instant = self.instant_of(m);
        let sync_every = self.state_sync_every;
        let Some(p) = self.members[m].proc.as_mut() else {
            return;
        };
        p.apply_scheduled = false;
        let entries = std::mem::take(&mut p.apply_queue);
        let mut completed = Vec::new();
        let mut conf_out = Outbox::default();
        let mut found = Vec::new();
        if !entries.is_empty() {
            let sync = now.saturating_sub(p.last_sync) >= sync_every;
            if sync {
                p.last_sync = now;
            }
            // One piece per membership change, so that the checker knows
            // the configuration each entry was committed under before it
            // checks the entries after the change.
            let mut rest: &[Entry] = &entries;
            while !rest.is_empty() {
                let cut = rest
                    .iter()
                    .position(is_conf_change)
                    .map_or(rest.len(), |i| i + 1);
                let (piece, tail) = rest.split_at(cut);
                rest = tail;
                let Some(p) = self.members[m].proc.as_mut() else {
                    return;
                };
                let before = p.applier.applied();
                for e in piece.iter().filter(|e| e.index > before) {
                    if let Err(v) = self.checks.applying(m, e) {
                        found.push(v);
                    }
                }
                // Committed membership changes go to the core, as the
                // shell's apply thread sends them to the raft thread.
                let Process { core, applier, .. } = p;
                let mut configs = Vec::new();
                let applied = applier.apply(piece, sync, &mut |e| {
                    let r = core.apply_conf_change(e, &mut conf_out);
                    if let Ok((cs, _)) = &r {
                        configs.push((e.index, cs.clone()));
                    }
                    r
                });
                for (index, cs) in &configs {
                    self.checks.config_applied(*index, cs);
                }
                let step = match applied {
                    Ok(step) => step,
                    Err(e) => {
                        self.halt(Violation::new(
                            ENGINE,
                            format!("member {} apply failed: {e}", m + 1),
                        ));
                        return;
                    }
                };
                if sync {
                    p.durable_applied = step.applied;
                }
                if let Some(last) = piece.last().filter(|e| e.index <= step.applied) {
                    p.applied_term = p.applied_term.max(last.term);
                }
                let seqs: Vec<u64> = step.completed.iter().map(|(s, _)| *s).collect();
                p.core.on_applied(step.applied, &seqs, instant);
                for (seq, response) in step.completed {
                    if let Some(id) = p.proposals.remove(&seq) {
                        completed.push((id, response));
                    }
                }
            }
            let (first, last) = (entries[0].index, entries[entries.len() - 1].index);
            let applied = self.members[m]
                .proc
                .as_ref()
                .map_or(0, |p| p.applier.applied());
            self.trace(|| {
                format!(
                    "member {} applies {first}..={last} (applied {applied}, sync={sync})",
                    m + 1,
                )
            });
        }
        let applied_writes: Vec<kv::AppliedWrite> = std::mem::take(&mut *self.sink.lock());
        for w in &applied_writes {
            if let Err(v) = self.checks.applied_write(w) {
                found.push(v);
            }
        }
        for v in found {
            self.fail(v);
        }
        self.take_observed();
        for (id, response) in completed {
            let (outcome, outputs) = match self.open.get(&id).map(|r| r.request) {
                Some(Request::Raw(_)) => {
                    self.raw_applied(id, response);
                    continue;
                }
                Some(Request::Kv(_)) => kvload::outputs_of(&response),
                _ => (
                    Outcome::Ok,
                    Outputs {
                        index: kv::decode_write(&response),
                        ..Outputs::default()
                    },
                ),
            };
            self.complete(id, outcome, outputs);
        }
        // Reads whose index is applied, then serializable ones.
        let Some(p) = self.members[m].proc.as_mut() else {
            return;
        };
        let applied = p.applier.applied();
        let mut tokens = Vec::new();
        while let Some(entry) = p.lin_reads.first_entry() {
            if *entry.key() > applied {
                break;
            }
            tokens.extend(entry.remove());
        }
        tokens.append(&mut p.ser_reads);
        for token in tokens {
            self.answer_read(m, token);
        }
        self.drive(m, conf_out);
    }

    pub(super) fn answer_read(&mut self, m: usize, token: u64) {
        let Some(p) = self.members[m].proc.as_mut() else {
            return;
        };
        let Some(id) = p.reads.remove(&token) else {
            return;
        };
        let key = match self.open.get(&id).map(|r| r.request) {
            Some(Request::Raw(_)) => return self.answer_raw_read(m, id),
            Some(Request::Read { key, .. }) => key,
            Some(Request::Kv(r)) => {
                let at = self.ops[id as usize].inputs.revision.unwrap_or(0);
                let (outcome, outputs) = kvload::outputs_of(&p.applier.query(&r.query(at)));
                self.complete(id, outcome, outputs);
                return;
            }
            _ => return,
        };
        let answer = p.applier.query(&kv::read_query(key));
        let applied = p.applier.applied();
        let seen = kv::decode_read(&answer);
        let outputs = Outputs {
            value: seen.map(|s| s.0),
            index: Some(seen.map_or(0, |s| s.1)),
            applied: Some(applied),
            ..Outputs::default()
        };
        self.complete(id, Outcome::Ok, outputs);
    }
}
