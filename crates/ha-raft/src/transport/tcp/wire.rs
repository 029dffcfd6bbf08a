//! The bytes on a peer connection: the hello, frames, and the message batch.
//! Pure functions over byte slices, so they can be tested (and fuzzed)
//! without sockets. The format is documented on the parent module.

use ha_core::eraftpb::Message;
use ha_core::{ClusterId, NodeId};

/// First bytes of every peer connection: "ha raft peer".
pub(crate) const MAGIC: [u8; 4] = *b"HARP";
/// The only protocol version this build speaks.
pub(crate) const PROTOCOL_VERSION: u16 = 1;
/// Magic and version: what a receiver reads before it knows the layout of
/// the rest of the hello.
pub(crate) const PREAMBLE_LEN: usize = 6;
/// The rest of a version-1 hello: cluster id, sender, receiver.
pub(crate) const HELLO_BODY_LEN: usize = 32 + 8 + 8;
/// A whole version-1 hello.
pub(crate) const HELLO_LEN: usize = PREAMBLE_LEN + HELLO_BODY_LEN;
/// The frame length prefix.
pub(crate) const LEN_PREFIX: usize = 4;

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
}

/// Why a receiver closed a connection. Each has a counter in the stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    /// The first bytes are not [`MAGIC`]: not an ha peer at all.
    BadMagic,
    /// A protocol version this build does not speak.
    UnknownVersion(u16),
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
    /// would panic on.
    Malformed(&'static str),
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
        }
    }
}

/// Encodes a version-1 hello.
pub(crate) fn encode_hello(h: &Hello) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[..4].copy_from_slice(&MAGIC);
    b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    b[6..38].copy_from_slice(&h.cluster_id.0);
    b[38..46].copy_from_slice(&h.from.0.to_be_bytes());
    b[46..54].copy_from_slice(&h.to.0.to_be_bytes());
    b
}

/// Checks magic and version.
pub(crate) fn check_preamble(b: &[u8; PREAMBLE_LEN]) -> Result<(), Reject> {
    if b[..4] != MAGIC {
        return Err(Reject::BadMagic);
    }
    let version = u16::from_be_bytes([b[4], b[5]]);
    if version != PROTOCOL_VERSION {
        return Err(Reject::UnknownVersion(version));
    }
    Ok(())
}

/// Decodes the body of a version-1 hello and checks it is meant for
/// member `local` of cluster `cluster`.
pub(crate) fn check_hello_body(
    b: &[u8; HELLO_BODY_LEN],
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
    check_preamble(pre)?;
    let body: &[u8; HELLO_BODY_LEN] = b
        .get(PREAMBLE_LEN..HELLO_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(Reject::Truncated)?;
    check_hello_body(body, cluster, local)
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

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::eraftpb::{Entry, MessageType};
    use rand::{Rng, SeedableRng};

    fn cluster() -> ClusterId {
        ClusterId::derive(&[NodeId(1), NodeId(2), NodeId(3)], "t")
    }

    fn hello() -> Hello {
        Hello {
            cluster_id: cluster(),
            from: NodeId(2),
            to: NodeId(1),
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

        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(
            check_hello(&bad, &cluster(), NodeId(1)),
            Err(Reject::BadMagic)
        );
        let mut bad = b;
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
            let _ = check_hello(&bytes, &cluster(), NodeId(1));
        }
    }
}
