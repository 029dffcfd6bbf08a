//! An in-process network for tests, examples and benchmarks: a test double,
//! with switches to partition, isolate and cut links between members.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ha_core::eraftpb::{Message, MessageType};
use ha_core::{
    CallReply, Error, MessageSink, NodeId, SnapshotOutcome, StorageError, Transport, UnknownCause,
};
use parking_lot::{Mutex, RwLock};

#[derive(Default)]
struct Net {
    sinks: HashMap<NodeId, Arc<dyn MessageSink>>,
    /// Directed links that drop everything.
    cut: HashSet<(NodeId, NodeId)>,
}

/// A network of in-process members. Cloning shares the network.
#[derive(Clone, Default)]
pub struct MemNetwork {
    net: Arc<RwLock<Net>>,
    delivered: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    snapshots: Arc<SnapshotLog>,
    calls: Arc<CallLog>,
}

/// Peer calls, for tests.
#[derive(Default)]
struct CallLog {
    /// Requests handed to the called member's sink.
    delivered: AtomicU64,
    /// Calls refused at once: link cut, or the member is not on the network.
    unreachable: AtomicU64,
    /// Replies lost on a link cut (or to a caller gone) meanwhile.
    replies_lost: AtomicU64,
}

/// One call's reply, answered once: by the callee's reply or the deadline.
type ReplySlot = Arc<Mutex<Option<CallReply>>>;

fn answer(slot: &ReplySlot, result: Result<Bytes, Error>) {
    let reply = slot.lock().take();
    if let Some(reply) = reply {
        reply(result);
    }
}

/// Snapshot transfers, for tests.
#[derive(Default)]
struct SnapshotLog {
    finished: AtomicU64,
    failed: AtomicU64,
    record: std::sync::atomic::AtomicBool,
    /// The last snapshot each member received: its message and bytes.
    last: Mutex<HashMap<NodeId, (Message, Vec<Bytes>)>>,
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemNetwork")
            .field("delivered", &self.delivered.load(Ordering::Relaxed))
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish()
    }
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// The transport of member `id` on this network.
    pub fn transport(&self, id: NodeId) -> Arc<MemTransport> {
        Arc::new(MemTransport {
            id,
            network: self.clone(),
        })
    }

    /// Splits the members into groups that cannot reach each other;
    /// members in no group can reach nobody.
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let mut net = self.net.write();
        let all: Vec<NodeId> = net
            .sinks
            .keys()
            .copied()
            .chain(groups.iter().flat_map(|g| g.iter().copied()))
            .collect();
        net.cut.clear();
        let group_of = |n: NodeId| groups.iter().position(|g| g.contains(&n));
        for &a in &all {
            for &b in &all {
                if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                    net.cut.insert((a, b));
                }
            }
        }
    }

    /// Cuts `id` off from every other member, both directions.
    pub fn isolate(&self, id: NodeId) {
        let mut net = self.net.write();
        let others: Vec<NodeId> = net.sinks.keys().copied().filter(|&n| n != id).collect();
        for o in others {
            net.cut.insert((id, o));
            net.cut.insert((o, id));
        }
    }

    /// Cuts the directed link `from → to`.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.net.write().cut.insert((from, to));
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.net.write().cut.clear();
    }

    /// Messages delivered and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.delivered.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    /// Snapshot transfers so far: (finished, failed).
    pub fn snapshot_counts(&self) -> (u64, u64) {
        (
            self.snapshots.finished.load(Ordering::Relaxed),
            self.snapshots.failed.load(Ordering::Relaxed),
        )
    }

    /// Peer calls so far: (delivered to the called member, refused at once
    /// as unreachable, replies lost on a cut link).
    pub fn call_counts(&self) -> (u64, u64, u64) {
        (
            self.calls.delivered.load(Ordering::Relaxed),
            self.calls.unreachable.load(Ordering::Relaxed),
            self.calls.replies_lost.load(Ordering::Relaxed),
        )
    }

    /// Keeps a copy of the last snapshot each member receives, so that a
    /// test can deliver it again ([`MemNetwork::redeliver_snapshot`]).
    pub fn record_snapshots(&self, on: bool) {
        self.snapshots.record.store(on, Ordering::Relaxed);
    }

    /// Streams the last recorded snapshot for `to` to it once more, as a
    /// duplicated or delayed transfer would. Returns false when none was
    /// recorded or the member refused it.
    pub fn redeliver_snapshot(&self, to: NodeId) -> bool {
        let Some((msg, chunks)) = self.snapshots.last.lock().get(&to).cloned() else {
            return false;
        };
        let Some(sink) = self.net.read().sinks.get(&to).cloned() else {
            return false;
        };
        let result = sink.receive_snapshot(msg).and_then(|mut w| {
            for c in &chunks {
                w.write_chunk(c)?;
            }
            w.finish()
        });
        result.is_ok()
    }

    /// Streams a snapshot on a thread of its own, chunk by chunk, as a
    /// real transport does on its own connection; a cut link fails it.
    fn send_snapshot(&self, from: NodeId, msg: Message) {
        let to = NodeId(msg.to);
        let (src, dst) = {
            let net = self.net.read();
            let dst = if net.cut.contains(&(from, to)) {
                None
            } else {
                net.sinks.get(&to).cloned()
            };
            (net.sinks.get(&from).cloned(), dst)
        };
        let Some(src) = src else {
            return;
        };
        let network = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("ha-mem-snap-{from}-{to}"))
            .spawn(move || {
                let result = match dst {
                    None => Err(StorageError::io(
                        "send a snapshot",
                        std::io::Error::other("link cut"),
                    )),
                    Some(dst) => network.stream(from, &*src, &*dst, msg),
                };
                let outcome = match result {
                    Ok(()) => {
                        network.snapshots.finished.fetch_add(1, Ordering::Relaxed);
                        SnapshotOutcome::Finished
                    }
                    Err(e) => {
                        tracing::debug!(%from, %to, error = %e, "snapshot transfer failed");
                        network.snapshots.failed.fetch_add(1, Ordering::Relaxed);
                        SnapshotOutcome::Failed
                    }
                };
                src.report_snapshot(to, outcome);
            });
        if spawned.is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn stream(
        &self,
        from: NodeId,
        src: &dyn MessageSink,
        dst: &dyn MessageSink,
        msg: Message,
    ) -> Result<(), StorageError> {
        let to = NodeId(msg.to);
        let record = self.snapshots.record.load(Ordering::Relaxed);
        let copy = record.then(|| msg.clone());
        let mut reader = src.open_snapshot(&msg)?;
        let mut writer = dst.receive_snapshot(msg)?;
        let mut chunks = Vec::new();
        while let Some(chunk) = reader.next_chunk()? {
            if self.net.read().cut.contains(&(from, to)) {
                return Err(StorageError::io(
                    "send a snapshot",
                    std::io::Error::other("link cut during the transfer"),
                ));
            }
            writer.write_chunk(&chunk)?;
            if record {
                chunks.push(chunk);
            }
        }
        writer.finish()?;
        if let Some(m) = copy {
            self.snapshots.last.lock().insert(to, (m, chunks));
        }
        Ok(())
    }

    /// A peer call over the simulated link `from → to`, its reply over
    /// `to → from`: a cut link refuses the request at once and loses a
    /// reply (the caller's deadline then answers).
    fn call(&self, from: NodeId, to: NodeId, request: Bytes, timeout: Duration, reply: CallReply) {
        let (caller_on, dst) = {
            let net = self.net.read();
            let dst = if net.cut.contains(&(from, to)) {
                None
            } else {
                net.sinks.get(&to).cloned()
            };
            (net.sinks.contains_key(&from), dst)
        };
        if !caller_on {
            reply(Err(Error::Shutdown));
            return;
        }
        let Some(dst) = dst else {
            self.calls.unreachable.fetch_add(1, Ordering::Relaxed);
            reply(Err(Error::PeerUnreachable { peer: to }));
            return;
        };
        let slot: ReplySlot = Arc::new(Mutex::new(Some(reply)));
        arm_deadline(slot.clone(), to, timeout);
        self.calls.delivered.fetch_add(1, Ordering::Relaxed);
        let network = self.clone();
        dst.handle_call(
            from,
            request,
            Box::new(move |result| {
                let lost = {
                    let net = network.net.read();
                    net.cut.contains(&(to, from)) || !net.sinks.contains_key(&from)
                };
                if lost {
                    network.calls.replies_lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // A member that is stopping did not run the handler.
                let result = result.map_err(|e| match e {
                    Error::Shutdown => Error::PeerUnreachable { peer: to },
                    e => e,
                });
                answer(&slot, result);
            }),
        );
    }

    fn send(&self, from: NodeId, msg: Message) {
        if msg.msg_type() == MessageType::MsgSnapshot {
            self.send_snapshot(from, msg);
            return;
        }
        let to = NodeId(msg.to);
        let net = self.net.read();
        let sink = if net.cut.contains(&(from, to)) {
            None
        } else {
            net.sinks.get(&to).cloned()
        };
        // Only a dropped append needs the sender's own sink (to report the
        // peer unreachable); a delivered message does not pay for it.
        let own = match sink {
            Some(_) => None,
            None if msg.msg_type() == MessageType::MsgAppend => net.sinks.get(&from).cloned(),
            None => None,
        };
        drop(net);
        match sink {
            Some(s) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                s.deliver(msg);
            }
            None => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(own) = own {
                    own.report_unreachable(to);
                }
            }
        }
    }
}

/// One member's end of a [`MemNetwork`].
pub struct MemTransport {
    id: NodeId,
    network: MemNetwork,
}

impl Transport for MemTransport {
    fn start(&self, local: NodeId, sink: Arc<dyn MessageSink>) {
        debug_assert_eq!(local, self.id);
        self.network.net.write().sinks.insert(self.id, sink);
    }

    fn send(&self, msg: Message) {
        self.network.send(self.id, msg);
    }

    fn stop(&self) {
        self.network.net.write().sinks.remove(&self.id);
    }

    fn call(&self, to: NodeId, request: Bytes, timeout: Duration, reply: CallReply) {
        self.network.call(self.id, to, request, timeout, reply);
    }
}

/// Answers the call in `slot` with `CallOutcomeUnknown` once `timeout`
/// passed, unless its reply came first: on the tokio runtime when there is
/// one, else on a thread of its own.
fn arm_deadline(slot: ReplySlot, peer: NodeId, timeout: Duration) {
    let expire = move || {
        answer(
            &slot,
            Err(Error::CallOutcomeUnknown {
                peer,
                cause: UnknownCause::DeadlineExceeded,
            }),
        )
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move {
                tokio::time::sleep(timeout).await;
                expire();
            });
        }
        Err(_) => {
            let spawned = std::thread::Builder::new()
                .name("ha-mem-call-deadline".to_owned())
                .spawn(move || {
                    std::thread::sleep(timeout);
                    expire();
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no thread for a call deadline; the call may wait for its reply");
            }
        }
    }
}
