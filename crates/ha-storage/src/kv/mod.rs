//! The replicated KV's MVCC state machine ([`MvccMachine`]) with etcd v3
//! semantics, written once over the ordered [`StateStore`](ha_core::StateStore)
//! trait, so that it runs on every backend (memory, RocksDB) alike; and the
//! encoding of its commands, queries and replies.
//!
//! ```
//! use std::sync::Arc;
//! use ha_core::{ApplyContext, KeyRange, NodeId, ClusterId, PutRequest, RangeRequest, RequestId,
//!     StateMachine, StateStore, WriteBatch};
//! use ha_storage::MemStateStore;
//! use ha_storage::kv::{HeaderStamp, KvCommand, KvQuery, KvReply, MvccMachine, decode_reply};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(MemStateStore::new());
//! let mut machine = MvccMachine::open(store.clone())?;
//! let ctx = ApplyContext { index: 1, term: 1, request: RequestId { member: NodeId(1), incarnation: 1, seq: 1 } };
//! let mut batch = WriteBatch::new();
//! let put = KvCommand::Put(PutRequest::new("k", "v")).encode(0);
//! let reply = machine.apply(&ctx, &put, &mut batch);
//! store.write(batch, false)?; // the engine commits the step's batch...
//! machine.on_committed(1); // ...and tells the machine
//!
//! let stamp = HeaderStamp { cluster_id: ClusterId([0; 32]), member_id: NodeId(1), raft_term: 1 };
//! let KvReply::Put(put) = decode_reply(&reply, &stamp)? else { unreachable!() };
//! assert_eq!(put.header.revision, 2); // an empty store is at revision 1, as in etcd
//!
//! let query = KvQuery::Range(RangeRequest::new(KeyRange::key("k"))).encode();
//! let KvReply::Range(got) = decode_reply(&machine.query(&query), &stamp)? else { unreachable!() };
//! assert_eq!(got.kvs[0].value, b"v");
//! # Ok(())
//! # }
//! ```

mod machine;
#[cfg(feature = "rocksdb")]
pub(crate) use machine::{RECORD_END, RECORD_PREFIX};
mod observer;
mod wire;

use std::time::Duration;

use ha_core::{DeleteRequest, LeaseId, PutRequest, RangeRequest, TxnRequest};
use prost::Message as _;

pub use machine::{MAX_TTL_MS, MvccMachine, RECORD_OVERHEAD, check_txn, txn_is_read_only};
pub use observer::KvObserver;
pub use wire::{
    HeaderStamp, KvReply, LeaseInfo, decode_error_bytes, decode_reply, encode_error_bytes,
};

/// A write of the KV, as proposed to the group.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvCommand {
    /// Set a key.
    Put(PutRequest),
    /// Delete keys.
    Delete(DeleteRequest),
    /// A transaction.
    Txn(TxnRequest),
    /// Compact history up to this revision.
    Compact(i64),
    /// Grant a lease (the id is chosen before proposing: apply is
    /// deterministic).
    LeaseGrant {
        /// Positive.
        id: LeaseId,
        /// At least 1 ms.
        ttl: Duration,
    },
    /// Revoke a lease, deleting its keys in one revision.
    LeaseRevoke(LeaseId),
    /// A leader's expiry of a lease, applied only if the entry carrying it
    /// is of `term` (a deposed leader's expiry that a newer leader
    /// committed does nothing).
    LeaseExpire {
        /// The lease.
        id: LeaseId,
        /// The term the leader decided in.
        term: u64,
    },
}

impl KvCommand {
    /// Encodes the command with the proposer's space quota (0: none). The
    /// quota travels in the command so that every member refuses a write
    /// with `NoSpace` alike, whatever its own configuration says.
    pub fn encode(&self, quota_bytes: u64) -> Vec<u8> {
        let op = match self {
            KvCommand::Put(p) => wire::WCommandOp::Put(p.into()),
            KvCommand::Delete(d) => wire::WCommandOp::Delete(d.into()),
            KvCommand::Txn(t) => wire::WCommandOp::Txn(t.into()),
            KvCommand::Compact(r) => wire::WCommandOp::Compact(*r),
            KvCommand::LeaseGrant { id, ttl } => wire::WCommandOp::LeaseGrant(wire::WLeaseGrant {
                id: id.0,
                ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            }),
            KvCommand::LeaseRevoke(id) => wire::WCommandOp::LeaseRevoke(id.0),
            KvCommand::LeaseExpire { id, term } => {
                wire::WCommandOp::LeaseExpire(wire::WLeaseExpire {
                    id: id.0,
                    term: *term,
                })
            }
        };
        wire::WCommand {
            quota_bytes,
            op: Some(op),
        }
        .encode_to_vec()
    }
}

/// A read of the KV, answered by `query` on the apply thread.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvQuery {
    /// Read keys.
    Range(RangeRequest),
    /// A transaction without writes (see [`txn_is_read_only`]).
    Txn(TxnRequest),
    /// One lease's TTL, and with `keys` its keys.
    Lease {
        /// The lease.
        id: LeaseId,
        /// Include the attached keys.
        keys: bool,
    },
    /// Every lease.
    Leases,
}

impl KvQuery {
    /// Encodes the query.
    pub fn encode(&self) -> Vec<u8> {
        let op = match self {
            KvQuery::Range(r) => wire::WQueryOp::Range(r.into()),
            KvQuery::Txn(t) => wire::WQueryOp::Txn(t.into()),
            KvQuery::Lease { id, keys } => wire::WQueryOp::Lease(wire::WLeaseQuery {
                id: id.0,
                keys: *keys,
            }),
            KvQuery::Leases => wire::WQueryOp::Leases(true),
        };
        wire::WQuery { op: Some(op) }.encode_to_vec()
    }
}

#[cfg(test)]
mod tests;
