//! The replicated KV's data model and API vocabulary, with etcd v3
//! semantics: a global revision that every write transaction increments;
//! per key its create revision, mod revision, version and lease; history
//! kept until compacted.
//!
//! [`KvClient`] is what applications, recipes and tools use; the
//! in-process handle (`ha_raft::KvNode`) implements it, and a remote
//! client will too. It covers the KV operations and watches
//! ([`KvClient::watch`], vocabulary in [`crate::WatchRequest`]); leases
//! join it as methods of their own.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::ids::{ClusterId, NodeId};
use crate::lease::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAlive, LeaseKeepAliveResponse,
    LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse,
};
use crate::watch::{WatchRequest, WatchStream};

/// A lease's id; [`LeaseId::NONE`] (0) means "no lease".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub i64);

impl LeaseId {
    /// No lease.
    pub const NONE: LeaseId = LeaseId(0);
}

/// A key with its value and metadata, as of some revision.
///
/// Revisions are `i64`, as in etcd: the store's revision starts at 1 (the
/// empty store) and each write transaction adds one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// Revision of the write that created the key (since its last delete).
    pub create_revision: i64,
    /// Revision of the last write to the key.
    pub mod_revision: i64,
    /// Number of writes since the key was created: 1 after its creation.
    pub version: i64,
    /// The value (empty with `keys_only`).
    pub value: Vec<u8>,
    /// The lease the key is attached to, or [`LeaseId::NONE`].
    pub lease: LeaseId,
}

/// Which keys an operation touches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly this key.
    Key(Vec<u8>),
    /// Every key starting with this prefix (all keys for an empty prefix).
    Prefix(Vec<u8>),
    /// Keys in `[start, end)`.
    Range {
        /// First key, included.
        start: Vec<u8>,
        /// End, excluded.
        end: Vec<u8>,
    },
    /// Every key at or after this one.
    From(Vec<u8>),
}

impl KeyRange {
    /// One key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        KeyRange::Key(key.into())
    }
    /// Every key with this prefix.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        KeyRange::Prefix(prefix.into())
    }
    /// Keys in `[start, end)`.
    pub fn range(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        KeyRange::Range {
            start: start.into(),
            end: end.into(),
        }
    }

    /// The range as `[start, end)`, `end` `None` meaning unbounded.
    pub fn bounds(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            KeyRange::Key(k) => {
                let mut end = k.clone();
                end.push(0);
                (k.clone(), Some(end))
            }
            KeyRange::Prefix(p) => (p.clone(), prefix_end(p)),
            KeyRange::Range { start, end } => (start.clone(), Some(end.clone())),
            KeyRange::From(start) => (start.clone(), None),
        }
    }

    /// True when `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => k == key,
            KeyRange::Prefix(p) => key.starts_with(p),
            KeyRange::Range { start, end } => key >= start.as_slice() && key < end.as_slice(),
            KeyRange::From(start) => key >= start.as_slice(),
        }
    }

    /// The bytes the range names, for size limits.
    pub fn size_bytes(&self) -> usize {
        match self {
            KeyRange::Key(k) | KeyRange::Prefix(k) | KeyRange::From(k) => k.len(),
            KeyRange::Range { start, end } => start.len() + end.len(),
        }
    }
}

/// The first key after every key with `prefix`, or `None` when no such
/// key exists (an empty prefix or one of only `0xff` bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// What every response carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The group.
    pub cluster_id: ClusterId,
    /// The member that answered.
    pub member_id: NodeId,
    /// The store's revision when the operation was answered (for a write,
    /// the revision it created or, if it changed nothing, the current one).
    pub revision: i64,
    /// The raft term the answering member was in.
    pub raft_term: u64,
}

/// Sets a key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    /// The key (not empty).
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Attach the key to this lease ([`LeaseId::NONE`]: none).
    pub lease: LeaseId,
    /// Return the previous key-value, if any.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

impl PutRequest {
    /// A plain put.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        }
    }
}

/// The answer to a [`PutRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutResponse {
    /// The header; `revision` is the put's revision.
    pub header: ResponseHeader,
    /// The previous key-value, when asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// What to sort a range by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    CreateRevision,
    /// The mod revision.
    ModRevision,
    /// The value.
    Value,
}

/// Sort direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Key order (ascending by target when the target is not the key).
    #[default]
    None,
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// Reads keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRequest {
    /// The keys.
    pub range: KeyRange,
    /// At most this many key-values (0: no limit).
    pub limit: u64,
    /// Read as of this revision (0: the current one).
    pub revision: i64,
    /// Leave values out.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Sort target; ties keep key order.
    pub sort_target: SortTarget,
    /// Sort order.
    pub sort_order: SortOrder,
}

impl RangeRequest {
    /// A read of `range` at the current revision, no limit, key order.
    pub fn new(range: KeyRange) -> Self {
        RangeRequest {
            range,
            limit: 0,
            revision: 0,
            keys_only: false,
            count_only: false,
            sort_target: SortTarget::Key,
            sort_order: SortOrder::None,
        }
    }
}

/// The answer to a [`RangeRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    /// The header; `revision` is the store's current revision (also for a
    /// read at a past revision, as in etcd).
    pub header: ResponseHeader,
    /// The key-values (empty with `count_only`).
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` returned.
    pub more: bool,
    /// How many keys matched, regardless of `limit`.
    pub count: u64,
}

/// Deletes keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRequest {
    /// The keys.
    pub range: KeyRange,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

impl DeleteRequest {
    /// Deletes `range`.
    pub fn new(range: KeyRange) -> Self {
        DeleteRequest {
            range,
            prev_kv: false,
        }
    }
}

/// The answer to a [`DeleteRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteResponse {
    /// The header; `revision` is the delete's revision when it deleted
    /// anything (deleting nothing creates no revision).
    pub header: ResponseHeader,
    /// How many keys were deleted.
    pub deleted: u64,
    /// The deleted key-values, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// How a [`Compare`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `<`
    Less,
    /// `>`
    Greater,
}

/// What a [`Compare`] compares a key's state with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The value (a missing key fails every value compare, as in etcd).
    Value(Vec<u8>),
    /// The version (0 for a missing key).
    Version(i64),
    /// The create revision (0 for a missing key).
    CreateRevision(i64),
    /// The mod revision (0 for a missing key).
    ModRevision(i64),
    /// The lease ([`LeaseId::NONE`] for a missing key).
    Lease(LeaseId),
}

/// A condition of a transaction: holds when every key in `range` (or the
/// zero key-value when there is none) satisfies `key_state op target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The keys compared.
    pub range: KeyRange,
    /// The comparison.
    pub op: CompareOp,
    /// The other side.
    pub target: CompareTarget,
}

impl Compare {
    /// `key`'s state `op` `target`.
    pub fn key(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Self {
        Compare {
            range: KeyRange::Key(key.into()),
            op,
            target,
        }
    }
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// A put.
    Put(PutRequest),
    /// A read (seeing the branch's earlier writes).
    Range(RangeRequest),
    /// A delete.
    Delete(DeleteRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// The answer to one [`TxnOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOpResponse {
    /// Of a put.
    Put(PutResponse),
    /// Of a read.
    Range(RangeResponse),
    /// Of a delete.
    Delete(DeleteResponse),
    /// Of a nested transaction.
    Txn(TxnResponse),
}

/// If every compare holds, run `success`, else `failure` — atomically, at
/// one revision. A branch may not put one key twice, nor put a key it
/// also deletes (etcd's rule); it holds at most `max_txn_ops` operations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    /// The conditions (all must hold).
    pub compare: Vec<Compare>,
    /// Run when they hold.
    pub success: Vec<TxnOp>,
    /// Run otherwise.
    pub failure: Vec<TxnOp>,
}

/// The answer to a [`TxnRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// The header; `revision` is the transaction's revision if it wrote.
    pub header: ResponseHeader,
    /// The compares held (`success` ran).
    pub succeeded: bool,
    /// One answer per operation of the branch that ran.
    pub responses: Vec<TxnOpResponse>,
}

/// The answer to a compaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactResponse {
    /// The header.
    pub header: ResponseHeader,
}

/// How a KV read sees the group's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Consistency {
    /// Reflects every write acknowledged before the call (ReadIndex).
    #[default]
    Linearizable,
    /// The answering member's state, at once; may be stale.
    Serializable,
    /// Linearizable like [`Consistency::Linearizable`], without a quorum
    /// round while the leader holds its read lease: the leader answers from
    /// its own state. Assumes clocks drift apart by at most
    /// `Config::max_clock_drift` per election timeout. Falls back to a
    /// ReadIndex round on a follower, or on a leader without a lease (just
    /// elected, after a leader transfer started, after a membership change).
    Lease,
}

/// Per-call options of a [`KvClient`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KvOptions {
    /// Read consistency (reads and read-only transactions on a read path;
    /// writes are always linearizable).
    pub consistency: Consistency,
    /// Deadline override; `None` uses the member's default.
    pub timeout: Option<Duration>,
}

impl KvOptions {
    /// Serializable reads.
    pub fn serializable() -> Self {
        KvOptions {
            consistency: Consistency::Serializable,
            timeout: None,
        }
    }
    /// With a deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// With a consistency.
    pub fn with_consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }
}

/// The KV API with etcd v3 semantics, in-process or remote.
///
/// Every call takes [`KvOptions`] (`KvOptions::default()`: linearizable,
/// the member's default deadline). Errors follow [`crate::Error`]'s table; the KV adds
/// [`crate::Error::Compacted`], [`crate::Error::FutureRevision`],
/// [`crate::Error::NoSpace`], [`crate::Error::LimitExceeded`],
/// [`crate::Error::InvalidRequest`] and [`crate::Error::LeaseNotFound`];
/// watches end with [`crate::Error::WatchCancelled`] or
/// [`crate::Error::Compacted`].
#[async_trait]
pub trait KvClient: Send + Sync + 'static {
    /// Sets a key.
    async fn put(&self, request: PutRequest, options: KvOptions) -> Result<PutResponse>;
    /// Reads keys.
    async fn range(&self, request: RangeRequest, options: KvOptions) -> Result<RangeResponse>;
    /// Deletes keys.
    async fn delete(&self, request: DeleteRequest, options: KvOptions) -> Result<DeleteResponse>;
    /// Runs a transaction. One without writes is served on the read path
    /// (so `options.consistency` applies); one with writes is proposed.
    async fn txn(&self, request: TxnRequest, options: KvOptions) -> Result<TxnResponse>;
    /// Compacts history up to `revision`: reads below it fail with
    /// [`crate::Error::Compacted`] afterwards.
    async fn compact(&self, revision: i64, options: KvOptions) -> Result<CompactResponse>;
    /// Watches keys for changes, from `request.start_revision` (0: the
    /// answering member's next revision), with etcd's guarantees (see
    /// [`crate::WatchStream`]). Works on every member; a watch on a member
    /// that lags sees the changes when that member applies them.
    ///
    /// # Errors
    /// [`crate::Error::Compacted`] when `start_revision` is at or below the
    /// compact revision; [`crate::Error::InvalidRequest`] for a negative
    /// revision; [`crate::Error::LimitExceeded`] for an oversized range;
    /// [`crate::Error::Shutdown`] when the member stopped.
    async fn watch(&self, request: WatchRequest) -> Result<WatchStream>;

    /// Grants a lease. Its TTL is at least the group's minimum (1.5 × the
    /// election timeout); a smaller request is rounded up, as the response
    /// says.
    async fn lease_grant(
        &self,
        request: LeaseGrantRequest,
        options: KvOptions,
    ) -> Result<LeaseGrantResponse>;
    /// Revokes a lease: its keys are deleted in one revision.
    async fn lease_revoke(&self, id: LeaseId, options: KvOptions) -> Result<LeaseRevokeResponse>;
    /// Renews a lease once (on the leader; other members forward).
    async fn lease_keep_alive_once(
        &self,
        id: LeaseId,
        options: KvOptions,
    ) -> Result<LeaseKeepAliveResponse>;
    /// Keeps a lease alive in the background, renewing it every third of
    /// its TTL (sooner after a failed renewal), until the returned handle
    /// is dropped. The handle is a stream of the renewals.
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseKeepAlive>;
    /// What a lease has left, and with `keys` the keys attached to it.
    async fn lease_time_to_live(
        &self,
        id: LeaseId,
        keys: bool,
        options: KvOptions,
    ) -> Result<LeaseTimeToLiveResponse>;
    /// Every lease of the group.
    async fn leases(&self, options: KvOptions) -> Result<LeaseLeasesResponse>;

    /// Reads one key at the current revision.
    async fn get(&self, key: Vec<u8>, options: KvOptions) -> Result<Option<KeyValue>> {
        let r = self
            .range(RangeRequest::new(KeyRange::Key(key)), options)
            .await?;
        Ok(r.kvs.into_iter().next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_skips_trailing_ff() {
        assert_eq!(prefix_end(b"a"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn ranges_contain_what_their_bounds_say() {
        for r in [
            KeyRange::key("b"),
            KeyRange::prefix("b"),
            KeyRange::range("b", "c\x01"),
            KeyRange::From(b"b".to_vec()),
        ] {
            let (start, end) = r.bounds();
            for k in [
                &b"a"[..],
                b"b",
                b"b\x00",
                b"bz",
                b"c",
                b"c\x00",
                b"c\x01",
                b"d",
            ] {
                let inside = k >= start.as_slice() && end.as_ref().is_none_or(|e| k < e.as_slice());
                assert_eq!(r.contains(k), inside, "{r:?} and key {k:?}");
            }
        }
    }
}
