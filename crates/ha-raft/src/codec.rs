//! What ha itself puts on the wire and in the log: the proposal envelope,
//! read contexts, and the dedup records. All decoded through prost, which
//! returns an error (never panics) on malformed bytes.

use ha_core::{NodeId, RequestId};

/// A command as it sits in a raft entry.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Envelope {
    #[prost(uint64, tag = "1")]
    pub(crate) member: u64,
    #[prost(uint64, tag = "2")]
    pub(crate) incarnation: u64,
    #[prost(uint64, tag = "3")]
    pub(crate) seq: u64,
    /// The proposer's lowest outstanding seq when it proposed: every seq
    /// below it has finished (applied, or given up on), so the dedup table
    /// may forget them and must refuse them from now on.
    #[prost(uint64, tag = "4")]
    pub(crate) lowest_outstanding: u64,
    #[prost(bytes = "vec", tag = "5")]
    pub(crate) command: Vec<u8>,
}

impl Envelope {
    pub(crate) fn request_id(&self) -> RequestId {
        RequestId {
            member: NodeId(self.member),
            incarnation: self.incarnation,
            seq: self.seq,
        }
    }
}

/// One member's row of the dedup table.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DedupRecord {
    #[prost(uint64, tag = "1")]
    pub(crate) incarnation: u64,
    #[prost(uint64, tag = "2")]
    pub(crate) lowest_outstanding: u64,
    #[prost(message, repeated, tag = "3")]
    pub(crate) responses: Vec<CachedResponse>,
}

/// A response kept for a request that may still be retried.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CachedResponse {
    #[prost(uint64, tag = "1")]
    pub(crate) seq: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub(crate) response: bytes::Bytes,
}

/// What ha carries in a `ConfChangeV2.context`: who asked (to answer the
/// caller), and the replicated member metadata that raft does not keep.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ConfContext {
    #[prost(uint64, tag = "1")]
    pub(crate) member: u64,
    #[prost(uint64, tag = "2")]
    pub(crate) incarnation: u64,
    #[prost(uint64, tag = "3")]
    pub(crate) op: u64,
    /// Addresses (and auto-promotion wishes) of members added or updated.
    #[prost(message, repeated, tag = "4")]
    pub(crate) members: Vec<MemberRecord>,
    /// Only updates addresses; the raft-level change is a no-op.
    #[prost(bool, tag = "5")]
    pub(crate) address_update: bool,
}

/// One member's replicated metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberRecord {
    #[prost(uint64, tag = "1")]
    pub(crate) id: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) address: Vec<u8>,
    #[prost(bool, tag = "3")]
    pub(crate) auto_promote: bool,
}

/// The member metadata as stored with the applied index.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberSetRecord {
    #[prost(message, repeated, tag = "1")]
    pub(crate) members: Vec<MemberRecord>,
    #[prost(uint64, repeated, tag = "2")]
    pub(crate) removed: Vec<u64>,
}

/// The context of one ReadIndex round: unique across members, restarts
/// (incarnation) and rounds (counter), so a late answer to an old round is
/// never mistaken for a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ReadContext {
    pub(crate) member: u64,
    pub(crate) incarnation: u64,
    pub(crate) counter: u64,
    /// A follower's round of lease reads only: a leader holding its lease
    /// may answer it at once with its commit index.
    pub(crate) lease: bool,
}

impl ReadContext {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24);
        v.extend_from_slice(&self.member.to_be_bytes());
        v.extend_from_slice(&self.incarnation.to_be_bytes());
        v.extend_from_slice(&self.counter.to_be_bytes());
        if self.lease {
            v.push(1);
        }
        v
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let lease = match b.len() {
            24 => false,
            25 if b[24] == 1 => true,
            _ => return None,
        };
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_be_bytes(w)
        };
        Some(ReadContext {
            member: word(0),
            incarnation: word(1),
            counter: word(2),
            lease,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn envelope_round_trips_and_garbage_is_an_error_not_a_panic() {
        let e = Envelope {
            member: 3,
            incarnation: 7,
            seq: 42,
            lowest_outstanding: 40,
            command: b"hello".to_vec(),
        };
        let bytes = e.encode_to_vec();
        assert_eq!(Envelope::decode(bytes.as_slice()).unwrap(), e);
        for garbage in [
            &[0xff_u8, 0xff, 0xff][..],
            &[0x2a, 0x10, 1][..],
            &bytes[..bytes.len() - 2],
        ] {
            assert!(Envelope::decode(garbage).is_err(), "{garbage:?} decoded");
        }
    }

    #[test]
    fn read_context_round_trips_and_rejects_wrong_length() {
        let c = ReadContext {
            member: 1,
            incarnation: 2,
            counter: 3,
            lease: false,
        };
        assert_eq!(ReadContext::decode(&c.encode()), Some(c));
        let l = ReadContext { lease: true, ..c };
        assert_eq!(ReadContext::decode(&l.encode()), Some(l));
        assert_eq!(ReadContext::decode(b"short"), None);
        let mut bad_flag = l.encode();
        bad_flag[24] = 7;
        assert_eq!(ReadContext::decode(&bad_flag), None);
    }
}
