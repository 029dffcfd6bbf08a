//! The bytes on a peer connection: the hello, frames, and the message batch.
//! Pure functions over byte slices, so they can be tested (and fuzzed)
//! without sockets. The format is documented on the parent module.

use std::sync::Arc;

use bytes::Bytes;
use ha_core::eraftpb::{Message, MessageType};
use ha_core::{ClusterId, Error, NodeId, OverloadReason};

/// First bytes of every peer connection: "ha raft peer".
pub(crate) const MAGIC: [u8; 4] = *b"HARP";
/// The newest protocol version this build speaks. Version 2 adds a
/// connection kind to the hello; version 1 (no kind: a message connection)
/// is still accepted and still sent on message connections, so members can
/// be upgraded one by one.
pub(crate) const PROTOCOL_VERSION: u16 = 2;
/// The version message connections announce.
const MESSAGES_VERSION: u16 = 1;
/// Magic and version: what a receiver reads before it knows the layout of
/// the rest of the hello.
pub(crate) const PREAMBLE_LEN: usize = 6;
/// The rest of a version-1 hello: cluster id, sender, receiver. A
/// version-2 hello adds one byte: the connection kind.
pub(crate) const HELLO_BODY_LEN: usize = 32 + 8 + 8;
/// The frame length prefix.
pub(crate) const LEN_PREFIX: usize = 4;

/// Snapshot-stream frame tags: the first payload byte of every frame on a
/// snapshot connection.
pub(crate) mod tag {
    /// The `MsgSnapshot` (protobuf `eraftpb.Message`); first, once.
    pub(crate) const HEADER: u8 = 1;
    /// Snapshot bytes.
    pub(crate) const CHUNK: u8 = 2;
    /// The last frame from the sender; empty.
    pub(crate) const END: u8 = 3;
    /// From the receiver: verified and staged.
    pub(crate) const ACK_OK: u8 = 4;
    /// From the receiver: refused; the rest is a UTF-8 reason.
    pub(crate) const ACK_ERR: u8 = 5;
}

/// What a connection carries, announced in a version-2 hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnKind {
    /// Message batches, one way, for as long as it lives.
    Messages,
    /// One snapshot stream, then the receiver's ack.
    Snapshot,
    /// Peer calls, multiplexed: requests from the dialer, replies from the
    /// listener.
    Calls,
}

impl ConnKind {
    fn byte(self) -> u8 {
        match self {
            ConnKind::Messages => 0,
            ConnKind::Snapshot => 1,
            ConnKind::Calls => 2,
        }
    }

    fn from_byte(b: u8) -> Result<Self, Reject> {
        match b {
            0 => Ok(ConnKind::Messages),
            1 => Ok(ConnKind::Snapshot),
            2 => Ok(ConnKind::Calls),
            other => Err(Reject::UnknownKind(other)),
        }
    }
}

/// What a frame carries: raft messages for one peer, in send order.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MessageBatch {
    #[prost(message, repeated, tag = "1")]
    pub(crate) messages: Vec<Message>,
}

/// A connection's declared identity, checked before any frame is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) cluster_id: ClusterId,
    pub(crate) from: NodeId,
    pub(crate) to: NodeId,
    pub(crate) kind: ConnKind,
}

/// Why a receiver closed a connection. Each has a counter in the stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    /// The first bytes are not [`MAGIC`]: not an ha peer at all.
    BadMagic,
    /// A protocol version this build does not speak.
    UnknownVersion(u16),
    /// A version-2 hello with a connection kind this build does not know.
    UnknownKind(u8),
    /// A peer of another group (or a member started with another token).
    OtherCluster(ClusterId),
    /// The hello names another member as the receiver: a stale address book.
    WrongReceiver(NodeId),
    /// The hello names sender 0 or this member itself.
    InvalidSender(NodeId),
    /// No complete hello within the handshake timeout.
    HandshakeTimeout,
    /// The connection ended inside the hello or a frame.
    Truncated,
    /// A frame longer than the configured maximum.
    FrameTooLarge(u32),
    /// A frame that prost cannot decode, or that holds a message raft-rs
    /// would panic on; on a snapshot connection also a frame out of place.
    Malformed(&'static str),
    /// A snapshot stream while the same sender has another one open.
    SnapshotBusy,
    /// A snapshot stream the engine refused: not for this member, bytes
    /// that do not match the announced size or CRC, or staging failed.
    SnapshotRefused,
    /// A snapshot stream that made no progress within the idle timeout.
    SnapshotIdle,
    /// A call reply for a call id this member never issued.
    UnknownCallId(u64),
    /// A call frame begun but not completed within the stall timeout.
    CallStalled,
    /// The TLS handshake failed (no or an untrusted or expired certificate,
    /// or not TLS at all).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    TlsHandshake,
    /// The hello names a sender the TLS certificate does not name.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    WrongIdentity(NodeId),
    /// A connection limit was reached.
    TooManyConnections,
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::BadMagic => write!(f, "not an ha peer (bad magic)"),
            Reject::UnknownVersion(v) => {
                write!(
                    f,
                    "unknown protocol version {v} (this build speaks {PROTOCOL_VERSION})"
                )
            }
            Reject::OtherCluster(c) => write!(f, "peer of another cluster {c}"),
            Reject::WrongReceiver(n) => write!(f, "addressed to member {n}, not this one"),
            Reject::InvalidSender(n) => write!(f, "invalid sender id {n}"),
            Reject::HandshakeTimeout => write!(f, "no hello within the handshake timeout"),
            Reject::Truncated => write!(f, "connection ended inside a hello or frame"),
            Reject::FrameTooLarge(n) => write!(f, "frame of {n} bytes exceeds the maximum"),
            Reject::Malformed(why) => write!(f, "malformed frame: {why}"),
            Reject::UnknownKind(k) => write!(f, "unknown connection kind {k}"),
            Reject::SnapshotBusy => {
                write!(f, "a snapshot stream from this sender is already open")
            }
            Reject::SnapshotRefused => write!(f, "snapshot stream refused by the engine"),
            Reject::SnapshotIdle => {
                write!(f, "snapshot stream idle longer than the idle timeout")
            }
            Reject::UnknownCallId(id) => write!(f, "reply to call {id}, which was never made"),
            Reject::CallStalled => write!(f, "call frame not completed within the stall timeout"),
            Reject::TlsHandshake => write!(f, "TLS handshake failed"),
            Reject::WrongIdentity(n) => {
                write!(
                    f,
                    "hello claims member {n}, which its certificate does not name"
                )
            }
            Reject::TooManyConnections => write!(f, "connection limit reached"),
        }
    }
}

/// Encodes a hello: version 1 for a message connection (what every
/// version still accepts), version 2 with the kind byte otherwise.
pub(crate) fn encode_hello(h: &Hello) -> Vec<u8> {
    let version = match h.kind {
        ConnKind::Messages => MESSAGES_VERSION,
        ConnKind::Snapshot | ConnKind::Calls => PROTOCOL_VERSION,
    };
    let mut b = Vec::with_capacity(PREAMBLE_LEN + HELLO_BODY_LEN + 1);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&version.to_be_bytes());
    b.extend_from_slice(&h.cluster_id.0);
    b.extend_from_slice(&h.from.0.to_be_bytes());
    b.extend_from_slice(&h.to.0.to_be_bytes());
    if version >= 2 {
        b.push(h.kind.byte());
    }
    b
}

/// Checks magic and version; returns the version.
pub(crate) fn check_preamble(b: &[u8; PREAMBLE_LEN]) -> Result<u16, Reject> {
    if b[..4] != MAGIC {
        return Err(Reject::BadMagic);
    }
    let version = u16::from_be_bytes([b[4], b[5]]);
    if version != MESSAGES_VERSION && version != PROTOCOL_VERSION {
        return Err(Reject::UnknownVersion(version));
    }
    Ok(version)
}

/// Bytes of the hello that follow the body: the kind byte from version 2.
pub(crate) fn hello_tail_len(version: u16) -> usize {
    usize::from(version >= 2)
}

/// The connection kind from the hello's tail ([`hello_tail_len`] bytes).
pub(crate) fn decode_kind(tail: &[u8]) -> Result<ConnKind, Reject> {
    match tail.first() {
        None => Ok(ConnKind::Messages),
        Some(&b) => ConnKind::from_byte(b),
    }
}

/// Decodes the body of a hello (without its kind) and checks it is meant
/// for member `local` of cluster `cluster`.
pub(crate) fn check_hello_body(
    b: &[u8; HELLO_BODY_LEN],
    kind: ConnKind,
    cluster: &ClusterId,
    local: NodeId,
) -> Result<Hello, Reject> {
    let mut id = [0u8; 32];
    id.copy_from_slice(&b[..32]);
    let mut from = [0u8; 8];
    from.copy_from_slice(&b[32..40]);
    let mut to = [0u8; 8];
    to.copy_from_slice(&b[40..48]);
    let hello = Hello {
        cluster_id: ClusterId(id),
        from: NodeId(u64::from_be_bytes(from)),
        to: NodeId(u64::from_be_bytes(to)),
        kind,
    };
    if hello.cluster_id != *cluster {
        return Err(Reject::OtherCluster(hello.cluster_id));
    }
    if hello.to != local {
        return Err(Reject::WrongReceiver(hello.to));
    }
    if hello.from.0 == 0 || hello.from == local {
        return Err(Reject::InvalidSender(hello.from));
    }
    Ok(hello)
}

/// Checks a whole hello (preamble and body); for tests and fuzzing.
#[cfg(test)]
pub(crate) fn check_hello(b: &[u8], cluster: &ClusterId, local: NodeId) -> Result<Hello, Reject> {
    let pre: &[u8; PREAMBLE_LEN] = b
        .get(..PREAMBLE_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(Reject::Truncated)?;
    let version = check_preamble(pre)?;
    let end = PREAMBLE_LEN + HELLO_BODY_LEN;
    let body: &[u8; HELLO_BODY_LEN] = b
        .get(PREAMBLE_LEN..end)
        .and_then(|s| s.try_into().ok())
        .ok_or(Reject::Truncated)?;
    let tail = b
        .get(end..end + hello_tail_len(version))
        .ok_or(Reject::Truncated)?;
    check_hello_body(body, decode_kind(tail)?, cluster, local)
}

/// Checks a frame's length prefix against the maximum.
pub(crate) fn check_len(prefix: [u8; LEN_PREFIX], max_frame_bytes: u32) -> Result<usize, Reject> {
    let len = u32::from_be_bytes(prefix);
    if len > max_frame_bytes {
        return Err(Reject::FrameTooLarge(len));
    }
    Ok(len as usize)
}

/// What one message adds to an encoded [`MessageBatch`].
pub(crate) fn batch_cost(msg: &Message) -> usize {
    let len = prost::Message::encoded_len(msg);
    1 + prost::length_delimiter_len(len) + len
}

/// Appends one frame (length prefix and batch) to `out`. The caller keeps
/// the batch within the maximum frame size (see [`batch_cost`]).
///
/// # Errors
/// Only if `out` cannot grow, which a `Vec` always can.
pub(crate) fn encode_frame(
    batch: &MessageBatch,
    out: &mut Vec<u8>,
) -> Result<(), prost::EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    if let Err(e) = prost::Message::encode(batch, out) {
        out.truncate(start);
        return Err(e);
    }
    let len = (out.len() - start - LEN_PREFIX) as u32;
    out[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Decodes a frame's payload, through prost only (rust-protobuf 2.x panics
/// on malformed input), and refuses messages that raft-rs would panic on:
/// its generated getters (`get_msg_type`, `get_entry_type`) panic on an
/// enum value they do not know, and prost keeps unknown values as plain
/// integers.
pub(crate) fn decode_batch(payload: &[u8]) -> Result<Vec<Message>, Reject> {
    let batch = <MessageBatch as prost::Message>::decode(payload)
        .map_err(|_| Reject::Malformed("not a protobuf message batch"))?;
    for m in &batch.messages {
        check_message(m)?;
    }
    Ok(batch.messages)
}

/// The head of a snapshot-stream frame: length prefix (covering the tag and
/// `payload_len` bytes) and tag. The payload follows it on the wire.
pub(crate) fn snapshot_frame_head(tag: u8, payload_len: usize) -> [u8; LEN_PREFIX + 1] {
    let mut b = [0u8; LEN_PREFIX + 1];
    b[..LEN_PREFIX].copy_from_slice(&((payload_len + 1) as u32).to_be_bytes());
    b[LEN_PREFIX] = tag;
    b
}

/// Splits a snapshot-stream frame payload into its tag and the rest.
pub(crate) fn split_tag(payload: &[u8]) -> Result<(u8, &[u8]), Reject> {
    match payload.split_first() {
        Some((&t, rest)) => Ok((t, rest)),
        None => Err(Reject::Malformed("empty snapshot-stream frame")),
    }
}

/// Decodes the `MsgSnapshot` that opens a snapshot stream (prost only),
/// refusing anything raft-rs would panic on and anything but a snapshot.
pub(crate) fn decode_snapshot_header(body: &[u8]) -> Result<Message, Reject> {
    let m = <Message as prost::Message>::decode(body)
        .map_err(|_| Reject::Malformed("snapshot header is not a raft message"))?;
    check_message(&m)?;
    if m.msg_type != MessageType::MsgSnapshot as i32 || m.snapshot.is_none() {
        return Err(Reject::Malformed(
            "snapshot stream not opened by a MsgSnapshot",
        ));
    }
    Ok(m)
}

fn check_message(m: &Message) -> Result<(), Reject> {
    // The same rule the core applies to every peer message.
    if crate::core::valid_peer_message(m) {
        Ok(())
    } else {
        Err(Reject::Malformed(
            "unknown or local raft message type, or unknown entry type",
        ))
    }
}

// ---------------------------------------------------------------------------
// Call connections.

/// Bytes of a call request frame before its payload: the call id.
pub(crate) const CALL_REQUEST_HEAD: usize = 8;
/// Bytes of a call reply frame before its body: call id and status.
pub(crate) const CALL_REPLY_HEAD: usize = 9;

/// Status byte of a call reply frame.
pub(crate) mod status {
    /// The handler's reply; the body is its bytes.
    pub(crate) const OK: u8 = 0;
    /// No call handler set; empty body.
    pub(crate) const NO_HANDLER: u8 = 1;
    /// Over the concurrency bound; body: one reason byte.
    pub(crate) const OVERLOADED: u8 = 2;
    /// The handler answered `NotLeader`; body: the hint (u64, 0 = none).
    pub(crate) const NOT_LEADER: u8 = 3;
    /// The handler failed; body: UTF-8 reason.
    pub(crate) const FAILED: u8 = 4;
    /// The member is stopping; empty body.
    pub(crate) const STOPPING: u8 = 5;
}

/// Appends a call request frame to `out`.
pub(crate) fn encode_call_request(id: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = (CALL_REQUEST_HEAD + payload.len()) as u32;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Splits a call request frame's payload into the call id and the request.
pub(crate) fn split_call_request(frame: &[u8]) -> Result<(u64, &[u8]), Reject> {
    let Some((id, rest)) = frame.split_first_chunk::<CALL_REQUEST_HEAD>() else {
        return Err(Reject::Malformed("call request shorter than its id"));
    };
    Ok((u64::from_be_bytes(*id), rest))
}

fn overload_byte(r: OverloadReason) -> u8 {
    match r {
        OverloadReason::ApplyLag => 1,
        OverloadReason::TooManyPending => 2,
        OverloadReason::QueueFull => 3,
        OverloadReason::Uncommitted => 4,
        _ => 0,
    }
}

fn overload_from_byte(b: u8) -> OverloadReason {
    match b {
        1 => OverloadReason::ApplyLag,
        2 => OverloadReason::TooManyPending,
        3 => OverloadReason::QueueFull,
        4 => OverloadReason::Uncommitted,
        _ => OverloadReason::TooManyCalls,
    }
}

/// Appends a call reply frame to `out`. A reply body that would make the
/// frame longer than `max_frame` is replaced by a `FAILED` status saying so;
/// a failure reason that long is cut.
pub(crate) fn encode_call_reply(
    id: u64,
    result: &Result<Bytes, Error>,
    max_frame: u32,
    out: &mut Vec<u8>,
) {
    let room = (max_frame as usize).saturating_sub(CALL_REPLY_HEAD);
    let failed = |reason: &str| {
        let mut end = reason.len().min(room);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        (status::FAILED, reason.as_bytes()[..end].to_vec())
    };
    let (st, body) = match result {
        Ok(b) if b.len() <= room => {
            frame_head(out, id, status::OK, b.len());
            out.extend_from_slice(b);
            return;
        }
        Ok(b) => failed(&format!(
            "reply of {} bytes exceeds the transport's max_call_bytes",
            b.len()
        )),
        Err(Error::NoCallHandler { .. }) => (status::NO_HANDLER, Vec::new()),
        Err(Error::Overloaded { reason }) => (status::OVERLOADED, vec![overload_byte(*reason)]),
        Err(Error::NotLeader { leader_hint }) => (
            status::NOT_LEADER,
            leader_hint.map_or(0, |n| n.0).to_be_bytes().to_vec(),
        ),
        Err(Error::Shutdown) => (status::STOPPING, Vec::new()),
        Err(Error::CallFailed { reason, .. }) => failed(reason),
        Err(other) => failed(&other.to_string()),
    };
    frame_head(out, id, st, body.len());
    out.extend_from_slice(&body);
}

fn frame_head(out: &mut Vec<u8>, id: u64, st: u8, body_len: usize) {
    out.extend_from_slice(&((CALL_REPLY_HEAD + body_len) as u32).to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.push(st);
}

/// Decodes a call reply frame's payload into the call id and what the
/// caller is told. `peer` is the member called.
pub(crate) fn decode_call_reply(
    peer: NodeId,
    frame: &[u8],
) -> Result<(u64, Result<Bytes, Error>), Reject> {
    let Some((head, body)) = frame.split_first_chunk::<CALL_REPLY_HEAD>() else {
        return Err(Reject::Malformed("call reply shorter than its head"));
    };
    let mut id = [0u8; 8];
    id.copy_from_slice(&head[..8]);
    let id = u64::from_be_bytes(id);
    let result = match head[8] {
        status::OK => Ok(Bytes::copy_from_slice(body)),
        status::NO_HANDLER if body.is_empty() => Err(Error::NoCallHandler { peer }),
        status::OVERLOADED if body.len() == 1 => Err(Error::Overloaded {
            reason: overload_from_byte(body[0]),
        }),
        status::NOT_LEADER => {
            let hint = body
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| Reject::Malformed("NotLeader reply without an 8-byte hint"))?;
            Err(Error::NotLeader {
                leader_hint: (hint != 0).then_some(NodeId(hint)),
            })
        }
        status::FAILED => Err(Error::CallFailed {
            peer,
            reason: Arc::from(String::from_utf8_lossy(body).as_ref()),
        }),
        status::STOPPING if body.is_empty() => Err(Error::PeerUnreachable { peer }),
        _ => return Err(Reject::Malformed("unknown call reply status or body")),
    };
    Ok((id, result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::eraftpb::{Entry, Snapshot};
    use rand::{Rng, SeedableRng};

    fn cluster() -> ClusterId {
        ClusterId::derive(&[NodeId(1), NodeId(2), NodeId(3)], "t")
    }

    fn hello() -> Hello {
        Hello {
            cluster_id: cluster(),
            from: NodeId(2),
            to: NodeId(1),
            kind: ConnKind::Messages,
        }
    }

    fn msg(to: u64, t: MessageType) -> Message {
        Message {
            msg_type: t as i32,
            to,
            from: 2,
            term: 7,
            entries: vec![Entry {
                data: b"payload".to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn hello_round_trips_and_each_field_is_checked() {
        let b = encode_hello(&hello());
        assert_eq!(check_hello(&b, &cluster(), NodeId(1)), Ok(hello()));

        let mut bad = b.clone();
        bad[0] = b'X';
        assert_eq!(
            check_hello(&bad, &cluster(), NodeId(1)),
            Err(Reject::BadMagic)
        );
        let mut bad = b.clone();
        bad[4..6].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(
            check_hello(&bad, &cluster(), NodeId(1)),
            Err(Reject::UnknownVersion(9))
        );
        let other = ClusterId::derive(&[NodeId(1), NodeId(2), NodeId(3)], "u");
        assert_eq!(
            check_hello(&b, &other, NodeId(1)),
            Err(Reject::OtherCluster(cluster()))
        );
        assert_eq!(
            check_hello(&b, &cluster(), NodeId(3)),
            Err(Reject::WrongReceiver(NodeId(1)))
        );
        let own = encode_hello(&Hello {
            from: NodeId(1),
            ..hello()
        });
        assert_eq!(
            check_hello(&own, &cluster(), NodeId(1)),
            Err(Reject::InvalidSender(NodeId(1)))
        );
        assert_eq!(
            check_hello(&b[..20], &cluster(), NodeId(1)),
            Err(Reject::Truncated)
        );
    }

    #[test]
    fn message_hellos_stay_version_1_and_snapshot_hellos_carry_their_kind() {
        let b = encode_hello(&hello());
        assert_eq!(b.len(), 54, "the version-1 hello changed size");
        assert_eq!(&b[4..6], &1u16.to_be_bytes());
        let snap = Hello {
            kind: ConnKind::Snapshot,
            ..hello()
        };
        let s = encode_hello(&snap);
        assert_eq!(s.len(), 55);
        assert_eq!(&s[4..6], &2u16.to_be_bytes());
        assert_eq!(check_hello(&s, &cluster(), NodeId(1)), Ok(snap));
        // Version 2 with the messages kind is a message connection.
        let mut v2 = s.clone();
        v2[54] = 0;
        assert_eq!(check_hello(&v2, &cluster(), NodeId(1)), Ok(hello()));
        let mut bad = s.clone();
        bad[54] = 9;
        assert_eq!(
            check_hello(&bad, &cluster(), NodeId(1)),
            Err(Reject::UnknownKind(9))
        );
        assert_eq!(
            check_hello(&s[..54], &cluster(), NodeId(1)),
            Err(Reject::Truncated)
        );
    }

    #[test]
    fn snapshot_headers_must_be_snapshot_messages() {
        let good = Message {
            snapshot: Some(Snapshot::default()),
            ..msg(1, MessageType::MsgSnapshot)
        };
        let enc = |m: &Message| prost::Message::encode_to_vec(m);
        assert_eq!(decode_snapshot_header(&enc(&good)), Ok(good.clone()));
        for bad in [
            msg(1, MessageType::MsgAppend),
            msg(1, MessageType::MsgSnapshot),
            Message {
                msg_type: 99,
                ..good.clone()
            },
        ] {
            assert!(matches!(
                decode_snapshot_header(&enc(&bad)),
                Err(Reject::Malformed(_))
            ));
        }
        assert!(decode_snapshot_header(&[0xff; 9]).is_err());
        assert_eq!(
            split_tag(&[]),
            Err(Reject::Malformed("empty snapshot-stream frame"))
        );
        let head = snapshot_frame_head(tag::CHUNK, 10);
        assert_eq!(check_len(head[..4].try_into().unwrap(), 1 << 20), Ok(11));
        assert_eq!(head[4], tag::CHUNK);
    }

    #[test]
    fn frames_round_trip_and_cost_is_exact() {
        let batch = MessageBatch {
            messages: vec![
                msg(1, MessageType::MsgAppend),
                msg(1, MessageType::MsgHeartbeat),
            ],
        };
        let mut out = Vec::new();
        encode_frame(&batch, &mut out).unwrap();
        let cost: usize = batch.messages.iter().map(batch_cost).sum();
        assert_eq!(out.len(), LEN_PREFIX + cost);
        let len = check_len(out[..4].try_into().unwrap(), 1 << 20).unwrap();
        assert_eq!(len, cost);
        assert_eq!(decode_batch(&out[4..]).unwrap(), batch.messages);
        assert_eq!(
            check_len((2u32 << 20).to_be_bytes(), 1 << 20),
            Err(Reject::FrameTooLarge(2 << 20))
        );
    }

    #[test]
    fn messages_raft_would_panic_on_are_refused() {
        for bad in [
            Message {
                msg_type: 99,
                ..msg(1, MessageType::MsgAppend)
            },
            msg(1, MessageType::MsgHup),
            msg(1, MessageType::MsgSnapStatus),
            Message {
                entries: vec![Entry {
                    entry_type: 42,
                    ..Default::default()
                }],
                ..msg(1, MessageType::MsgAppend)
            },
        ] {
            let mut out = Vec::new();
            encode_frame(
                &MessageBatch {
                    messages: vec![bad],
                },
                &mut out,
            )
            .unwrap();
            assert!(
                matches!(decode_batch(&out[4..]), Err(Reject::Malformed(_))),
                "a message raft-rs panics on was accepted"
            );
        }
    }

    #[test]
    fn call_frames_round_trip_with_every_status() {
        let peer = NodeId(2);
        let mut out = Vec::new();
        encode_call_request(7, b"renew", &mut out);
        let len = check_len(out[..4].try_into().unwrap(), 1 << 20).unwrap();
        assert_eq!(len, out.len() - 4);
        assert_eq!(split_call_request(&out[4..]), Ok((7, &b"renew"[..])));
        assert!(split_call_request(&[1, 2, 3]).is_err());

        let reasons = [
            OverloadReason::ApplyLag,
            OverloadReason::TooManyPending,
            OverloadReason::QueueFull,
            OverloadReason::Uncommitted,
            OverloadReason::TooManyCalls,
        ];
        let mut cases: Vec<(Result<Bytes, Error>, Result<Bytes, Error>)> = vec![
            (Ok(Bytes::from_static(b"ok")), Ok(Bytes::from_static(b"ok"))),
            (Ok(Bytes::new()), Ok(Bytes::new())),
            (
                Err(Error::NoCallHandler { peer: NodeId(5) }),
                Err(Error::NoCallHandler { peer }),
            ),
            (
                Err(Error::NotLeader {
                    leader_hint: Some(NodeId(3)),
                }),
                Err(Error::NotLeader {
                    leader_hint: Some(NodeId(3)),
                }),
            ),
            (
                Err(Error::NotLeader { leader_hint: None }),
                Err(Error::NotLeader { leader_hint: None }),
            ),
            (Err(Error::Shutdown), Err(Error::PeerUnreachable { peer })),
        ];
        for r in reasons {
            cases.push((
                Err(Error::Overloaded { reason: r }),
                Err(Error::Overloaded { reason: r }),
            ));
        }
        for (i, (sent, want)) in cases.into_iter().enumerate() {
            let mut out = Vec::new();
            encode_call_reply(i as u64, &sent, 1 << 20, &mut out);
            let (id, got) = decode_call_reply(peer, &out[4..]).unwrap();
            assert_eq!(id, i as u64);
            assert_eq!(
                format!("{got:?}"),
                format!("{want:?}"),
                "status of {sent:?}"
            );
        }
        // Handler failures travel as text; a body too large for the frame
        // becomes a failure that says so, cut to fit.
        let mut out = Vec::new();
        let e = Err(Error::LeaseNotFound { lease: 7 });
        encode_call_reply(1, &e, 1 << 20, &mut out);
        match decode_call_reply(peer, &out[4..]) {
            Ok((1, Err(Error::CallFailed { peer: p, reason }))) => {
                assert_eq!(p, peer);
                assert!(reason.contains("lease 7"));
            }
            other => panic!("{other:?}"),
        }
        let mut out = Vec::new();
        encode_call_reply(2, &Ok(Bytes::from(vec![0u8; 100])), 40, &mut out);
        assert_eq!(out.len(), 4 + 40, "the reply frame exceeds its maximum");
        assert!(matches!(
            decode_call_reply(peer, &out[4..]),
            Ok((2, Err(Error::CallFailed { .. })))
        ));
        // Unknown statuses and bodies that do not fit theirs are refused.
        for bad in [
            vec![0, 0, 0, 0, 0, 0, 0, 1, 99],
            vec![0, 0, 0, 0, 0, 0, 0, 1, status::NOT_LEADER, 1],
            vec![0, 0, 0, 0, 0, 0, 0, 1, status::OVERLOADED],
            vec![0, 0, 0, 0, 0, 0, 0, 1, status::NO_HANDLER, 1],
            vec![0, 0, 0, 1],
        ] {
            assert!(decode_call_reply(peer, &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn random_and_mutated_bytes_never_panic() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut good = Vec::new();
        encode_frame(
            &MessageBatch {
                messages: vec![msg(1, MessageType::MsgAppend); 3],
            },
            &mut good,
        )
        .unwrap();
        let good = good[4..].to_vec();
        for _ in 0..20_000 {
            let bytes: Vec<u8> = if rng.gen_bool(0.5) {
                let n = rng.gen_range(0..256);
                (0..n).map(|_| rng.r#gen()).collect()
            } else {
                let mut b = good.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(0..b.len());
                    b[i] = rng.r#gen();
                }
                b.truncate(rng.gen_range(0..=b.len()));
                b
            };
            let _ = decode_batch(&bytes);
            let _ = decode_snapshot_header(&bytes);
            let _ = decode_call_reply(NodeId(2), &bytes);
            let _ = split_call_request(&bytes);
            let _ = check_hello(&bytes, &cluster(), NodeId(1));
        }
    }
}
