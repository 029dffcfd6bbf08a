//! Snapshots as production moves them, in virtual time: raft asks the
//! storage adapter (`Snapshots::for_raft`), which requests a build from
//! the member's builder (an event here, a thread in the shell); the
//! transport streams the built file (`open_outgoing`) into the receiver's
//! staging (`stage_incoming`), which hands the `MsgSnapshot` to raft only
//! once the file is complete and verified (`Core::step_staged_snapshot`);
//! the sender hears the outcome (`Core::report_snapshot`). Raft hands an
//! accepted snapshot back in a Ready, and the install runs in the log
//! writer's three steps: the pending-install marker, the state store
//! restored (the apply thread's part), the log restarted after the
//! snapshot — with a crash possible between any two.

use std::sync::Arc;

use ha_core::eraftpb::{Message, MessageType};
use ha_core::{NodeId, SnapshotOutcome, SnapshotReader};
use parking_lot::Mutex;

use super::{ENGINE, Event, World};
use crate::core::Outbox;
use crate::sim::check::Violation;
use crate::sim::executor::{MILLIS, Nanos};
use crate::sim::member::Installing;
use crate::snapshot::{InstallMarker, decode_descriptor};

/// A snapshot on its way: the sender's open file and the message.
pub(crate) struct Transfer {
    from: usize,
    from_life: u64,
    pub(super) to: usize,
    msg: Message,
    reader: Box<dyn SnapshotReader>,
}

/// Streaming speed of a snapshot: 100 MB/s (10 ns per byte).
const NS_PER_BYTE: Nanos = 10;

impl World {
    /// After a drive: a build raft asked for starts on the builder.
    pub(super) fn poll_builder(&mut self, m: usize) {
        let life = self.members[m].life;
        let Some(p) = self.members[m].proc.as_ref() else {
            return;
        };
        if p.build_rx.try_recv().is_ok() {
            let d = self.rng.between(MILLIS, 20 * MILLIS);
            self.after(d, Event::Build { m, life });
        }
    }

    /// The builder thread's turn: build from one consistent view of the
    /// state store.
    pub(super) fn build_snapshot(&mut self, m: usize) {
        let state = self.members[m].state.clone();
        let Some(p) = self.members[m].proc.as_ref() else {
            return;
        };
        match p.snapshots.build(&state) {
            Ok(()) => self.trace(|| format!("member {} built a snapshot", m + 1)),
            Err(e) => self.trace(|| format!("member {} snapshot build failed: {e}", m + 1)),
        }
    }

    fn report_snapshot(&mut self, from: usize, to: usize, outcome: SnapshotOutcome) {
        if let Some(p) = self.members[from].proc.as_mut() {
            p.core.report_snapshot(NodeId(to as u64 + 1), outcome);
        }
        self.drive(from, Outbox::default());
    }

    /// The transport intercepts a `MsgSnapshot` and streams the file.
    pub(super) fn send_snapshot(&mut self, from: usize, msg: Message) {
        let Some(to) = (msg.to as usize)
            .checked_sub(1)
            .filter(|&t| t < self.members.len())
        else {
            return;
        };
        let opened = match self.members[from].proc.as_ref() {
            Some(p) => p.snapshots.open_outgoing(&msg),
            None => return,
        };
        let reader = match opened {
            Ok(r) => r,
            Err(e) => {
                self.trace(|| format!("member {} cannot send a snapshot: {e}", from + 1));
                return self.report_snapshot(from, to, SnapshotOutcome::Failed);
            }
        };
        if self.net.is_cut(from, to) {
            self.trace(|| format!("snapshot {} -> {} cut", from + 1, to + 1));
            return self.report_snapshot(from, to, SnapshotOutcome::Failed);
        }
        // A stream is reliable: a lost segment is retransmitted.
        let delays = self.net.deliveries(&mut self.rng, from, to);
        let link = delays.iter().copied().max().unwrap_or(200 * MILLIS);
        let delay = link + reader.size().saturating_mul(NS_PER_BYTE);
        self.next_transfer += 1;
        let id = self.next_transfer;
        let meta = msg
            .snapshot
            .as_ref()
            .and_then(|s| s.metadata.as_ref())
            .map(|m| (m.index, m.term))
            .unwrap_or_default();
        self.trace(|| {
            format!(
                "snapshot {} -> {} at index {} term {} ({} bytes) starts",
                from + 1,
                to + 1,
                meta.0,
                meta.1,
                reader.size()
            )
        });
        self.transfers.insert(
            id,
            Transfer {
                from,
                from_life: self.members[from].life,
                to,
                msg,
                reader,
            },
        );
        self.after(delay, Event::SnapshotArrive { id });
    }

    /// The last chunk arrived: stage, verify, and hand it to raft.
    pub(super) fn snapshot_arrives(&mut self, id: u64) {
        let Some(mut t) = self.transfers.remove(&id) else {
            return;
        };
        let (from, to) = (t.from, t.to);
        let sender_alive = self.alive(from, t.from_life);
        if !sender_alive {
            // The sender died: its stream broke off.
            self.trace(|| format!("snapshot {} -> {} broke off", from + 1, to + 1));
            return;
        }
        if self.net.is_cut(from, to) || !self.up(to) {
            self.trace(|| format!("snapshot {} -> {} failed", from + 1, to + 1));
            return self.report_snapshot(from, to, SnapshotOutcome::Failed);
        }
        let slot: Arc<Mutex<Option<Message>>> = Arc::default();
        let staged = {
            let Some(p) = self.members[to].proc.as_ref() else {
                return;
            };
            let deliver = slot.clone();
            p.snapshots
                .stage_incoming(t.msg.clone(), Box::new(move |m| *deliver.lock() = Some(m)))
                .and_then(|mut w| {
                    while let Some(chunk) = t.reader.next_chunk()? {
                        w.write_chunk(&chunk)?;
                    }
                    w.finish()
                })
        };
        drop(t.reader);
        let msg = slot.lock().take();
        let (Ok(()), Some(msg)) = (staged, msg) else {
            self.trace(|| format!("snapshot {} -> {} not staged", from + 1, to + 1));
            return self.report_snapshot(from, to, SnapshotOutcome::Failed);
        };
        let descriptor = msg
            .snapshot
            .as_ref()
            .and_then(|s| decode_descriptor(&s.data).ok());
        let Some(p) = self.members[to].proc.as_mut() else {
            return;
        };
        let taken = p.core.step_staged_snapshot(msg);
        if !taken && let Some(d) = descriptor.filter(|d| !p.core.needs_staged(d)) {
            p.snapshots.discard_staged(&d);
        }
        self.trace(|| {
            format!(
                "snapshot {} -> {} staged; raft {}",
                from + 1,
                to + 1,
                if taken { "takes it" } else { "declines it" }
            )
        });
        self.drive(to, Outbox::default());
        self.report_snapshot(from, to, SnapshotOutcome::Finished);
    }

    /// Step 1 of an install (the disk batch is the install task alone):
    /// the pending-install marker, durable.
    pub(super) fn install_marker(&mut self, m: usize) {
        let life = self.members[m].life;
        let Some(p) = self.members[m].proc.as_mut() else {
            return;
        };
        let Some(descriptor) = p.disk_batch.first_mut().and_then(|t| t.install.take()) else {
            return;
        };
        let marker = InstallMarker {
            file: descriptor.file_name("staged"),
            descriptor: Some(descriptor.clone()),
        };
        let index = descriptor.index;
        p.install = Some(Installing {
            descriptor,
            restored: None,
        });
        if let Err(e) = ha_core::LogStore::set_pending_install(
            &self.members[m].log,
            &prost::Message::encode_to_vec(&marker),
        ) {
            return self.halt(Violation::new(
                ENGINE,
                format!("member {} cannot store the install marker: {e}", m + 1),
            ));
        }
        self.trace(|| format!("member {} installs the snapshot at {index}: marker", m + 1));
        let d = self.rng.between(self.apply_delay.0, self.apply_delay.1) + MILLIS;
        self.after(d, Event::InstallRestore { m, life });
    }

    /// Step 2: the apply thread applies what was queued before the
    /// snapshot, then restores the state store from the staged file.
    pub(super) fn install_restore(&mut self, m: usize) {
        self.apply(m);
        if self.halted || !self.up(m) {
            return;
        }
        let life = self.members[m].life;
        let Some(p) = self.members[m].proc.as_mut() else {
            return;
        };
        let Some(install) = p.install.as_mut() else {
            return;
        };
        let d = install.descriptor.clone();
        let restored = p
            .snapshots
            .staged_pairs(&d)
            .map_err(ha_core::Error::from)
            .and_then(|mut pairs| p.applier.install(&mut pairs, d.index));
        let members = match restored {
            Ok(members) => members,
            Err(e) => {
                return self.halt(Violation::new(
                    ENGINE,
                    format!(
                        "member {} cannot restore the snapshot at {}: {e}",
                        m + 1,
                        d.index
                    ),
                ));
            }
        };
        install.restored = Some(members);
        // A restore is durable (the shell's apply thread records it so).
        p.durable_applied = p.applier.applied();
        let applied = p.applier.applied();
        if let Err(v) = self.checks.installed(m, d.index, d.term) {
            self.fail(v);
        }
        self.trace(|| format!("member {} restored its state at {applied}", m + 1));
        if self.cfg.faults && !self.healed && self.install_rng.chance(self.install_crash) {
            // A crash between the install's steps: the restart must finish
            // the install from the marker and the staged file.
            let down = self.install_rng.between(MILLIS, 100 * MILLIS);
            self.log_fault(format!(
                "crash member {} mid-install (state restored, log not restarted), down {}",
                m + 1,
                crate::sim::fmt_ns(down)
            ));
            self.crash(m);
            self.after(down, Event::Restart { m });
            return;
        }
        let latency = self.rng.between(self.disk_latency.0, self.disk_latency.1);
        self.after(latency, Event::DiskDone { m, life });
    }
}

/// Whether a message is a snapshot (the transport streams those).
pub(super) fn is_snapshot(msg: &Message) -> bool {
    msg.msg_type() == MessageType::MsgSnapshot
}
