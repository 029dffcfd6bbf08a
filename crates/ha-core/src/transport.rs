//! The network between members.

use std::sync::Arc;

use raft_proto::eraftpb::Message;

use crate::ids::NodeId;

/// Whether a snapshot reached a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// The peer received the whole snapshot.
    Finished,
    /// Sending failed; raft will retry.
    Failed,
}

/// Where a transport delivers what arrives for its member. Implemented by
/// the engine; every method is non-blocking.
pub trait MessageSink: Send + Sync + 'static {
    /// A raft message from a peer.
    fn deliver(&self, msg: Message);
    /// A peer could not be reached; raft moves it to probing.
    fn report_unreachable(&self, peer: NodeId);
    /// The outcome of sending a snapshot to `peer`.
    fn report_snapshot(&self, peer: NodeId, outcome: SnapshotOutcome);
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
    /// Stops delivering and sending; idempotent.
    fn stop(&self);
}
