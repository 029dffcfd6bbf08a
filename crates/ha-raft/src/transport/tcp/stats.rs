//! Counters of the TCP transport, and their public snapshot [`TcpStats`].

use std::sync::atomic::{AtomicU64, Ordering};

use super::wire::Reject;

/// Live counters, updated with relaxed atomics.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) frames_sent: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) frames_received: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_no_address: AtomicU64,
    pub(crate) dropped_unreachable: AtomicU64,
    pub(crate) dropped_too_large: AtomicU64,
    pub(crate) dropped_stopped: AtomicU64,
    pub(crate) messages_misaddressed: AtomicU64,
    pub(crate) connect_attempts: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) connections_lost: AtomicU64,
    pub(crate) unreachable_reports: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_superseded: AtomicU64,
    pub(crate) open_inbound: AtomicU64,
    pub(crate) open_outbound: AtomicU64,
    pub(crate) snapshots_sent: AtomicU64,
    pub(crate) snapshots_send_failed: AtomicU64,
    pub(crate) snapshot_bytes_sent: AtomicU64,
    pub(crate) snapshots_received: AtomicU64,
    pub(crate) snapshot_bytes_received: AtomicU64,
    pub(crate) open_snapshot_streams: AtomicU64,
    pub(crate) calls_sent: AtomicU64,
    pub(crate) calls_received: AtomicU64,
    pub(crate) call_replies_late: AtomicU64,
    pub(crate) open_call_connections: AtomicU64,
    bad_magic: AtomicU64,
    unknown_version: AtomicU64,
    other_cluster: AtomicU64,
    wrong_receiver: AtomicU64,
    invalid_sender: AtomicU64,
    handshake_timeout: AtomicU64,
    truncated: AtomicU64,
    frame_too_large: AtomicU64,
    malformed_frame: AtomicU64,
    unknown_kind: AtomicU64,
    snapshot_busy: AtomicU64,
    snapshot_refused: AtomicU64,
    snapshot_idle: AtomicU64,
    unknown_call_id: AtomicU64,
    call_stalled: AtomicU64,
    tls_handshake: AtomicU64,
    wrong_identity: AtomicU64,
    too_many_connections: AtomicU64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Counters {
    pub(crate) fn rejected(&self, r: &Reject) {
        let c = match r {
            Reject::BadMagic => &self.bad_magic,
            Reject::UnknownVersion(_) => &self.unknown_version,
            Reject::OtherCluster(_) => &self.other_cluster,
            Reject::WrongReceiver(_) => &self.wrong_receiver,
            Reject::InvalidSender(_) => &self.invalid_sender,
            Reject::HandshakeTimeout => &self.handshake_timeout,
            Reject::Truncated => &self.truncated,
            Reject::FrameTooLarge(_) => &self.frame_too_large,
            Reject::Malformed(_) => &self.malformed_frame,
            Reject::UnknownKind(_) => &self.unknown_kind,
            Reject::SnapshotBusy => &self.snapshot_busy,
            Reject::SnapshotRefused => &self.snapshot_refused,
            Reject::SnapshotIdle => &self.snapshot_idle,
            Reject::UnknownCallId(_) => &self.unknown_call_id,
            Reject::CallStalled => &self.call_stalled,
            Reject::TlsHandshake => &self.tls_handshake,
            Reject::WrongIdentity(_) => &self.wrong_identity,
            Reject::TooManyConnections => &self.too_many_connections,
        };
        add(c, 1);
    }

    pub(crate) fn snapshot(&self, queued_messages: u64) -> TcpStats {
        TcpStats {
            frames_sent: get(&self.frames_sent),
            messages_sent: get(&self.messages_sent),
            bytes_sent: get(&self.bytes_sent),
            frames_received: get(&self.frames_received),
            messages_received: get(&self.messages_received),
            bytes_received: get(&self.bytes_received),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_no_address: get(&self.dropped_no_address),
            dropped_unreachable: get(&self.dropped_unreachable),
            dropped_too_large: get(&self.dropped_too_large),
            dropped_stopped: get(&self.dropped_stopped),
            messages_misaddressed: get(&self.messages_misaddressed),
            connect_attempts: get(&self.connect_attempts),
            connect_failures: get(&self.connect_failures),
            connections_lost: get(&self.connections_lost),
            unreachable_reports: get(&self.unreachable_reports),
            connections_accepted: get(&self.connections_accepted),
            connections_superseded: get(&self.connections_superseded),
            open_inbound: get(&self.open_inbound),
            open_outbound: get(&self.open_outbound),
            snapshots_sent: get(&self.snapshots_sent),
            snapshots_send_failed: get(&self.snapshots_send_failed),
            snapshot_bytes_sent: get(&self.snapshot_bytes_sent),
            snapshots_received: get(&self.snapshots_received),
            snapshot_bytes_received: get(&self.snapshot_bytes_received),
            open_snapshot_streams: get(&self.open_snapshot_streams),
            calls_sent: get(&self.calls_sent),
            calls_received: get(&self.calls_received),
            call_replies_late: get(&self.call_replies_late),
            open_call_connections: get(&self.open_call_connections),
            queued_messages,
            rejected: TcpRejections {
                bad_magic: get(&self.bad_magic),
                unknown_version: get(&self.unknown_version),
                other_cluster: get(&self.other_cluster),
                wrong_receiver: get(&self.wrong_receiver),
                invalid_sender: get(&self.invalid_sender),
                handshake_timeout: get(&self.handshake_timeout),
                truncated: get(&self.truncated),
                frame_too_large: get(&self.frame_too_large),
                malformed_frame: get(&self.malformed_frame),
                unknown_kind: get(&self.unknown_kind),
                snapshot_busy: get(&self.snapshot_busy),
                snapshot_refused: get(&self.snapshot_refused),
                snapshot_idle: get(&self.snapshot_idle),
                unknown_call_id: get(&self.unknown_call_id),
                call_stalled: get(&self.call_stalled),
                tls_handshake: get(&self.tls_handshake),
                wrong_identity: get(&self.wrong_identity),
                too_many_connections: get(&self.too_many_connections),
            },
        }
    }
}

/// A snapshot of a [`TcpTransport`](super::TcpTransport)'s counters.
/// Counters only grow; `open_*` and `queued_messages` are current values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpStats {
    /// Frames written to peers (each carries one batch of messages).
    pub frames_sent: u64,
    /// Messages written to peers.
    pub messages_sent: u64,
    /// Bytes written to peers, hellos and length prefixes included.
    pub bytes_sent: u64,
    /// Frames read from peers.
    pub frames_received: u64,
    /// Messages delivered to the engine.
    pub messages_received: u64,
    /// Bytes read from peers, hellos and length prefixes included.
    pub bytes_received: u64,
    /// Messages dropped by `send` because the peer's queue was full.
    pub dropped_queue_full: u64,
    /// Messages dropped because their receiver had no known address.
    pub dropped_no_address: u64,
    /// Messages discarded because their peer could not be reached (queued
    /// when a connection attempt failed or a connection broke).
    pub dropped_unreachable: u64,
    /// Messages dropped because alone they exceed `max_frame_bytes`.
    pub dropped_too_large: u64,
    /// Messages handed to `send` after `stop`.
    pub dropped_stopped: u64,
    /// Inbound messages, in valid frames, not from the connection's
    /// declared sender or not to this member; dropped.
    pub messages_misaddressed: u64,
    /// Outbound connection attempts.
    pub connect_attempts: u64,
    /// Outbound connection attempts that failed or timed out.
    pub connect_failures: u64,
    /// Established outbound connections that broke (write error or timeout,
    /// or the peer closed them).
    pub connections_lost: u64,
    /// `report_unreachable` calls made to the engine.
    pub unreachable_reports: u64,
    /// Inbound connections accepted (before their hello was checked).
    pub connections_accepted: u64,
    /// Inbound connections closed because the same peer connected again.
    pub connections_superseded: u64,
    /// Inbound connections open now.
    pub open_inbound: u64,
    /// Outbound connections established now.
    pub open_outbound: u64,
    /// Snapshot streams the receiving peer acknowledged as verified and
    /// staged (reported `Finished` to the engine).
    pub snapshots_sent: u64,
    /// Snapshot streams that failed on the sending side (reported `Failed`
    /// to the engine): the engine refused to open one (another in flight),
    /// no connection, a write error, the idle timeout, or the peer refused
    /// or dropped the stream.
    pub snapshots_send_failed: u64,
    /// Snapshot bytes written to peers (chunk payloads only).
    pub snapshot_bytes_sent: u64,
    /// Snapshot streams received, verified and handed to the engine.
    pub snapshots_received: u64,
    /// Snapshot bytes read from peers (chunk payloads only).
    pub snapshot_bytes_received: u64,
    /// Snapshot streams open now, either direction. Snapshot connections
    /// are not counted in `open_inbound`/`open_outbound` or the connect
    /// counters, which describe the message connections.
    pub open_snapshot_streams: u64,
    /// Peer-call requests written to peers.
    pub calls_sent: u64,
    /// Peer-call requests read from peers and handed to the engine.
    pub calls_received: u64,
    /// Call replies that arrived after their call's deadline; discarded.
    pub call_replies_late: u64,
    /// Call connections open now, either direction (not counted in
    /// `open_inbound`/`open_outbound`).
    pub open_call_connections: u64,
    /// Messages waiting in the per-peer send queues now.
    pub queued_messages: u64,
    /// Inbound connections closed for a protocol violation, by reason.
    pub rejected: TcpRejections,
}

impl TcpStats {
    /// Every message dropped on the sending side, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_no_address
            + self.dropped_unreachable
            + self.dropped_too_large
            + self.dropped_stopped
    }
}

/// Connections closed for a protocol violation, by reason: inbound ones,
/// and call connections this member dialled whose replies broke the
/// protocol. Each closes only that connection, with a logged reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpRejections {
    /// Did not start with the ha magic: not an ha peer.
    pub bad_magic: u64,
    /// Spoke a protocol version this build does not know.
    pub unknown_version: u64,
    /// Carried another cluster's id.
    pub other_cluster: u64,
    /// Was addressed to another member (a stale address book).
    pub wrong_receiver: u64,
    /// Named member 0 or this member itself as the sender.
    pub invalid_sender: u64,
    /// Sent no complete hello within `handshake_timeout`.
    pub handshake_timeout: u64,
    /// Ended inside a hello or a frame.
    pub truncated: u64,
    /// Announced a frame above `max_frame_bytes`.
    pub frame_too_large: u64,
    /// Sent a frame that does not decode, or holds a message raft-rs would
    /// panic on (an unknown message or entry type, a local message type).
    pub malformed_frame: u64,
    /// Sent a version-2 hello with an unknown connection kind.
    pub unknown_kind: u64,
    /// Opened a snapshot stream while its sender had another one open.
    pub snapshot_busy: u64,
    /// Sent a snapshot stream the engine refused (not for this member,
    /// wrong size or CRC, or staging failed); nothing reached raft.
    pub snapshot_refused: u64,
    /// Let a snapshot stream idle past `snapshot_idle_timeout`.
    pub snapshot_idle: u64,
    /// Answered a call this member never made (on a call connection it
    /// dialled).
    pub unknown_call_id: u64,
    /// Left a call frame unfinished past `call_stall_timeout`.
    pub call_stalled: u64,
    /// Failed the TLS handshake: no certificate, one the CA did not sign,
    /// an expired one, or not TLS at all (a plaintext peer).
    pub tls_handshake: u64,
    /// Claimed in its hello to be a member its TLS certificate does not
    /// name.
    pub wrong_identity: u64,
    /// Came while `max_inbound_connections`, `max_inbound_per_ip` or
    /// `max_connections_per_peer` was reached; closed unread.
    pub too_many_connections: u64,
}

impl TcpRejections {
    /// All rejected connections.
    pub fn total(&self) -> u64 {
        self.bad_magic
            + self.unknown_version
            + self.other_cluster
            + self.wrong_receiver
            + self.invalid_sender
            + self.handshake_timeout
            + self.truncated
            + self.frame_too_large
            + self.malformed_frame
            + self.unknown_kind
            + self.snapshot_busy
            + self.snapshot_refused
            + self.snapshot_idle
            + self.unknown_call_id
            + self.call_stalled
            + self.tls_handshake
            + self.wrong_identity
            + self.too_many_connections
    }
}
