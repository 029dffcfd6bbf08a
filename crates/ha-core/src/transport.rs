//! The network between members.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft_proto::eraftpb::Message;

use crate::error::{Error, StorageError};
use crate::ids::NodeId;

/// How a peer call is answered; called exactly once.
///
/// `Err` is only for what the call machinery itself failed at (see
/// [`Transport::call`]); what the application has to say, failures
/// included, travels inside the reply bytes.
pub type CallReply = Box<dyn FnOnce(Result<Bytes, Error>) + Send>;

/// Whether a snapshot reached a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// The peer received the whole snapshot.
    Finished,
    /// Sending failed; raft will retry.
    Failed,
}

/// The bytes of an outgoing snapshot, read chunk by chunk by the transport
/// that streams them. Reading may block on disk and on the snapshot rate
/// limit: call it from a task or thread of its own.
pub trait SnapshotReader: Send {
    /// Total size in bytes.
    fn size(&self) -> u64;
    /// The next chunk (at most a few MiB), or `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<Bytes>, StorageError>;
}

/// Where a transport writes an incoming snapshot (staging). May block on
/// disk: call it from a task or thread of its own.
pub trait SnapshotWriter: Send {
    /// Appends the next chunk.
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StorageError>;
    /// Verifies size and checksum, makes the staged snapshot durable, and
    /// hands the snapshot message to raft. On error the staging is
    /// discarded and nothing reaches raft. Dropping a writer without
    /// finishing discards the staging too.
    fn finish(self: Box<Self>) -> Result<(), StorageError>;
}

/// Where a transport delivers what arrives for its member. Implemented by
/// the engine; every method is non-blocking unless it says otherwise.
///
/// Snapshots do not travel inside their `MsgSnapshot`: its `snapshot.data`
/// is a small descriptor. A transport that is asked to `send` a
/// `MsgSnapshot` streams the snapshot on the side, never delaying other
/// messages behind it: [`MessageSink::open_snapshot`] on the sending
/// member, [`MessageSink::receive_snapshot`] and the writer's chunks and
/// `finish` on the receiving one, then [`MessageSink::report_snapshot`] on
/// the sending member with the outcome. A `MsgSnapshot` passed to
/// [`MessageSink::deliver`] is dropped.
pub trait MessageSink: Send + Sync + 'static {
    /// A raft message from a peer.
    fn deliver(&self, msg: Message);
    /// Sending side: the bytes of the snapshot `msg` carries the descriptor
    /// of. Refused while another snapshot to the same peer is in flight.
    fn open_snapshot(&self, msg: &Message) -> Result<Box<dyn SnapshotReader>, StorageError>;
    /// Receiving side: stages the snapshot `msg` announces; raft sees `msg`
    /// only once the writer finished and verified it.
    fn receive_snapshot(&self, msg: Message) -> Result<Box<dyn SnapshotWriter>, StorageError>;
    /// A peer could not be reached; raft moves it to probing.
    fn report_unreachable(&self, peer: NodeId);
    /// The outcome of sending a snapshot to `peer`.
    fn report_snapshot(&self, peer: NodeId, outcome: SnapshotOutcome);
    /// A peer call from `from` ([`Transport::call`] on that member). The
    /// sink answers through `reply`, exactly once, from any thread, and
    /// returns at once (the engine runs its handler on a task).
    ///
    /// The engine answers `Err(NoCallHandler)` while no handler is set,
    /// `Err(Overloaded { reason: TooManyCalls })` beyond its concurrency
    /// bound, and `Err(Shutdown)` while it stops (the transport tells the
    /// caller `PeerUnreachable`).
    fn handle_call(&self, from: NodeId, request: Bytes, reply: CallReply);
}

/// Carries raft messages between members.
///
/// `send` never blocks: it queues the message or drops it (raft retries),
/// reporting an unreachable peer to the sink. A transport does not connect
/// eagerly.
pub trait Transport: Send + Sync + 'static {
    /// Starts delivering inbound messages for this member into `sink`.
    fn start(&self, local: NodeId, sink: Arc<dyn MessageSink>);
    /// Queues `msg` for `msg.to`.
    fn send(&self, msg: Message);
    /// Stops delivering and sending; idempotent. Peer calls still waiting
    /// for a reply are answered `Err(Shutdown)` at once, or by their
    /// deadline.
    fn stop(&self);
    /// A peer call: delivers `request` to member `to`'s sink
    /// ([`MessageSink::handle_call`]) and hands its reply to `reply`,
    /// exactly once. Never blocks; `reply` may run on any thread, possibly
    /// before `call` returns.
    ///
    /// `Err` only for the call machinery: [`Error::PeerUnreachable`] (no
    /// address, cannot connect, link cut, the peer is stopping — the
    /// handler did not run), [`Error::CallOutcomeUnknown`] (the request
    /// left but no reply came by `timeout` or the connection broke),
    /// [`Error::Overloaded`] (too many calls in flight to `to`),
    /// [`Error::Shutdown`] (this transport stopped), and what the peer's
    /// engine answered ([`Error::NoCallHandler`], [`Error::Overloaded`],
    /// [`Error::NotLeader`], [`Error::CallFailed`]).
    ///
    /// The default answers `PeerUnreachable` at once: a transport that
    /// predates peer calls keeps compiling and carries none.
    fn call(&self, to: NodeId, request: Bytes, timeout: Duration, reply: CallReply) {
        let _ = (request, timeout);
        reply(Err(Error::PeerUnreachable { peer: to }));
    }
}
