//! The MVCC machine's wire format (prost): commands, queries, replies and
//! stored records, with conversions from and to ha-core's public types.
//! Decoding never panics: unknown enum values and missing fields become
//! [`InvalidRequest::Malformed`].

use bytes::Bytes;
use std::sync::Arc;

use ha_core::{
    CompactResponse, Compare, CompareOp, CompareTarget, DeleteRequest, DeleteResponse, Error,
    InvalidRequest, KeyRange, KeyValue, LeaseId, LeaseLeasesResponse, LeaseRevokeResponse,
    LeaseStatus, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader, SortOrder,
    SortTarget, StorageError, TxnOp, TxnOpResponse, TxnRequest, TxnResponse,
};

fn malformed() -> Error {
    Error::InvalidRequest {
        reason: InvalidRequest::Malformed,
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WKeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub(crate) create_revision: i64,
    #[prost(int64, tag = "3")]
    pub(crate) mod_revision: i64,
    #[prost(int64, tag = "4")]
    pub(crate) version: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub(crate) value: Vec<u8>,
    #[prost(int64, tag = "6")]
    pub(crate) lease: i64,
}

impl From<&KeyValue> for WKeyValue {
    fn from(kv: &KeyValue) -> Self {
        WKeyValue {
            key: kv.key.clone(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value.clone(),
            lease: kv.lease.0,
        }
    }
}

impl From<WKeyValue> for KeyValue {
    fn from(w: WKeyValue) -> Self {
        KeyValue {
            key: w.key,
            create_revision: w.create_revision,
            mod_revision: w.mod_revision,
            version: w.version,
            value: w.value,
            lease: LeaseId(w.lease),
        }
    }
}

/// A stored revision record: the key's state written at (main, sub), or its
/// deletion. The revision itself is the record's store key.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WRecord {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) value: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub(crate) create_revision: i64,
    #[prost(int64, tag = "4")]
    pub(crate) version: i64,
    #[prost(int64, tag = "5")]
    pub(crate) lease: i64,
    #[prost(bool, tag = "6")]
    pub(crate) tombstone: bool,
}

/// The fields of a [`WRecord`], borrowed: encoded without copying the key
/// and value into a `WRecord` first (the apply path writes one per put).
pub(crate) struct RecordRef<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) value: &'a [u8],
    pub(crate) create_revision: i64,
    pub(crate) version: i64,
    pub(crate) lease: i64,
    pub(crate) tombstone: bool,
}

impl RecordRef<'_> {
    /// The same bytes as `WRecord::encode_to_vec` of these fields (proto3:
    /// fields at their default are left out).
    pub(crate) fn encode(&self) -> Vec<u8> {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
        let bytes_len = |b: &[u8]| {
            if b.is_empty() {
                0
            } else {
                1 + encoded_len_varint(b.len() as u64) + b.len()
            }
        };
        let int_len = |v: i64| {
            if v == 0 {
                0
            } else {
                1 + encoded_len_varint(v as u64)
            }
        };
        let len = bytes_len(self.key)
            + bytes_len(self.value)
            + int_len(self.create_revision)
            + int_len(self.version)
            + int_len(self.lease)
            + if self.tombstone { 2 } else { 0 };
        let mut buf = Vec::with_capacity(len);
        for (tag, b) in [(1, self.key), (2, self.value)] {
            if !b.is_empty() {
                encode_key(tag, WireType::LengthDelimited, &mut buf);
                encode_varint(b.len() as u64, &mut buf);
                buf.extend_from_slice(b);
            }
        }
        for (tag, v) in [
            (3, self.create_revision),
            (4, self.version),
            (5, self.lease),
        ] {
            if v != 0 {
                encode_key(tag, WireType::Varint, &mut buf);
                encode_varint(v as u64, &mut buf);
            }
        }
        if self.tombstone {
            encode_key(6, WireType::Varint, &mut buf);
            encode_varint(1, &mut buf);
        }
        buf
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WKeyRange {
    /// 1 key, 2 prefix, 3 [start, end), 4 from.
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(bytes = "vec", tag = "2")]
    a: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    b: Vec<u8>,
}

impl From<&KeyRange> for WKeyRange {
    fn from(r: &KeyRange) -> Self {
        let (kind, a, b) = match r {
            KeyRange::Key(k) => (1, k.clone(), Vec::new()),
            KeyRange::Prefix(p) => (2, p.clone(), Vec::new()),
            KeyRange::Range { start, end } => (3, start.clone(), end.clone()),
            KeyRange::From(s) => (4, s.clone(), Vec::new()),
        };
        WKeyRange { kind, a, b }
    }
}

fn key_range(w: Option<WKeyRange>) -> Result<KeyRange, Error> {
    let w = w.ok_or_else(malformed)?;
    Ok(match w.kind {
        1 => KeyRange::Key(w.a),
        2 => KeyRange::Prefix(w.a),
        3 => KeyRange::Range {
            start: w.a,
            end: w.b,
        },
        4 => KeyRange::From(w.a),
        _ => return Err(malformed()),
    })
}

/// A put. Key and value decode as `Bytes`: prost decodes a `Vec<u8>`
/// field by copying into a `Bytes` and then again into the `Vec`, two
/// allocations per field on every member's apply path; a `Bytes` field is
/// one, and the `Vec` of the `PutRequest` then takes its buffer over
/// without copying (`From<WPut> for PutRequest`).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WPut {
    #[prost(bytes = "bytes", tag = "1")]
    key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
    #[prost(int64, tag = "3")]
    lease: i64,
    #[prost(bool, tag = "4")]
    prev_kv: bool,
    #[prost(bool, tag = "5")]
    ignore_value: bool,
    #[prost(bool, tag = "6")]
    ignore_lease: bool,
}

impl From<&PutRequest> for WPut {
    fn from(p: &PutRequest) -> Self {
        WPut {
            key: Bytes::copy_from_slice(&p.key),
            value: Bytes::copy_from_slice(&p.value),
            lease: p.lease.0,
            prev_kv: p.prev_kv,
            ignore_value: p.ignore_value,
            ignore_lease: p.ignore_lease,
        }
    }
}

impl From<WPut> for PutRequest {
    fn from(w: WPut) -> Self {
        PutRequest {
            key: w.key.into(),
            value: w.value.into(),
            lease: LeaseId(w.lease),
            prev_kv: w.prev_kv,
            ignore_value: w.ignore_value,
            ignore_lease: w.ignore_lease,
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WRange {
    #[prost(message, optional, tag = "1")]
    range: Option<WKeyRange>,
    #[prost(uint64, tag = "2")]
    limit: u64,
    #[prost(int64, tag = "3")]
    revision: i64,
    #[prost(bool, tag = "4")]
    keys_only: bool,
    #[prost(bool, tag = "5")]
    count_only: bool,
    #[prost(uint32, tag = "6")]
    sort_target: u32,
    #[prost(uint32, tag = "7")]
    sort_order: u32,
}

impl From<&RangeRequest> for WRange {
    fn from(r: &RangeRequest) -> Self {
        WRange {
            range: Some((&r.range).into()),
            limit: r.limit,
            revision: r.revision,
            keys_only: r.keys_only,
            count_only: r.count_only,
            sort_target: match r.sort_target {
                SortTarget::Key => 0,
                SortTarget::Version => 1,
                SortTarget::CreateRevision => 2,
                SortTarget::ModRevision => 3,
                SortTarget::Value => 4,
            },
            sort_order: match r.sort_order {
                SortOrder::None => 0,
                SortOrder::Ascend => 1,
                SortOrder::Descend => 2,
            },
        }
    }
}

impl TryFrom<WRange> for RangeRequest {
    type Error = Error;
    fn try_from(w: WRange) -> Result<Self, Error> {
        Ok(RangeRequest {
            range: key_range(w.range)?,
            limit: w.limit,
            revision: w.revision,
            keys_only: w.keys_only,
            count_only: w.count_only,
            sort_target: match w.sort_target {
                0 => SortTarget::Key,
                1 => SortTarget::Version,
                2 => SortTarget::CreateRevision,
                3 => SortTarget::ModRevision,
                4 => SortTarget::Value,
                _ => return Err(malformed()),
            },
            sort_order: match w.sort_order {
                0 => SortOrder::None,
                1 => SortOrder::Ascend,
                2 => SortOrder::Descend,
                _ => return Err(malformed()),
            },
        })
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WDelete {
    #[prost(message, optional, tag = "1")]
    range: Option<WKeyRange>,
    #[prost(bool, tag = "2")]
    prev_kv: bool,
}

impl From<&DeleteRequest> for WDelete {
    fn from(d: &DeleteRequest) -> Self {
        WDelete {
            range: Some((&d.range).into()),
            prev_kv: d.prev_kv,
        }
    }
}

impl TryFrom<WDelete> for DeleteRequest {
    type Error = Error;
    fn try_from(w: WDelete) -> Result<Self, Error> {
        Ok(DeleteRequest {
            range: key_range(w.range)?,
            prev_kv: w.prev_kv,
        })
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WCompare {
    #[prost(message, optional, tag = "1")]
    range: Option<WKeyRange>,
    /// 1 =, 2 !=, 3 <, 4 >.
    #[prost(uint32, tag = "2")]
    op: u32,
    /// 1 value, 2 version, 3 create, 4 mod, 5 lease.
    #[prost(uint32, tag = "3")]
    target: u32,
    #[prost(bytes = "vec", tag = "4")]
    value: Vec<u8>,
    #[prost(int64, tag = "5")]
    number: i64,
}

impl From<&Compare> for WCompare {
    fn from(c: &Compare) -> Self {
        let op = match c.op {
            CompareOp::Equal => 1,
            CompareOp::NotEqual => 2,
            CompareOp::Less => 3,
            CompareOp::Greater => 4,
        };
        let (target, value, number) = match &c.target {
            CompareTarget::Value(v) => (1, v.clone(), 0),
            CompareTarget::Version(n) => (2, Vec::new(), *n),
            CompareTarget::CreateRevision(n) => (3, Vec::new(), *n),
            CompareTarget::ModRevision(n) => (4, Vec::new(), *n),
            CompareTarget::Lease(l) => (5, Vec::new(), l.0),
        };
        WCompare {
            range: Some((&c.range).into()),
            op,
            target,
            value,
            number,
        }
    }
}

impl TryFrom<WCompare> for Compare {
    type Error = Error;
    fn try_from(w: WCompare) -> Result<Self, Error> {
        Ok(Compare {
            range: key_range(w.range)?,
            op: match w.op {
                1 => CompareOp::Equal,
                2 => CompareOp::NotEqual,
                3 => CompareOp::Less,
                4 => CompareOp::Greater,
                _ => return Err(malformed()),
            },
            target: match w.target {
                1 => CompareTarget::Value(w.value),
                2 => CompareTarget::Version(w.number),
                3 => CompareTarget::CreateRevision(w.number),
                4 => CompareTarget::ModRevision(w.number),
                5 => CompareTarget::Lease(LeaseId(w.number)),
                _ => return Err(malformed()),
            },
        })
    }
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum WOp {
    #[prost(message, tag = "1")]
    Put(WPut),
    #[prost(message, tag = "2")]
    Range(WRange),
    #[prost(message, tag = "3")]
    Delete(WDelete),
    #[prost(message, tag = "4")]
    Txn(WTxn),
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WTxnOp {
    #[prost(oneof = "WOp", tags = "1, 2, 3, 4")]
    op: Option<WOp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WTxn {
    #[prost(message, repeated, tag = "1")]
    compare: Vec<WCompare>,
    #[prost(message, repeated, tag = "2")]
    success: Vec<WTxnOp>,
    #[prost(message, repeated, tag = "3")]
    failure: Vec<WTxnOp>,
}

impl From<&TxnRequest> for WTxn {
    fn from(t: &TxnRequest) -> Self {
        let ops = |ops: &[TxnOp]| {
            ops.iter()
                .map(|op| WTxnOp {
                    op: Some(match op {
                        TxnOp::Put(p) => WOp::Put(p.into()),
                        TxnOp::Range(r) => WOp::Range(r.into()),
                        TxnOp::Delete(d) => WOp::Delete(d.into()),
                        TxnOp::Txn(t) => WOp::Txn(t.into()),
                    }),
                })
                .collect()
        };
        WTxn {
            compare: t.compare.iter().map(Into::into).collect(),
            success: ops(&t.success),
            failure: ops(&t.failure),
        }
    }
}

impl TryFrom<WTxn> for TxnRequest {
    type Error = Error;
    fn try_from(w: WTxn) -> Result<Self, Error> {
        fn ops(ops: Vec<WTxnOp>) -> Result<Vec<TxnOp>, Error> {
            ops.into_iter()
                .map(|op| {
                    Ok(match op.op.ok_or_else(malformed)? {
                        WOp::Put(p) => TxnOp::Put(p.into()),
                        WOp::Range(r) => TxnOp::Range(r.try_into()?),
                        WOp::Delete(d) => TxnOp::Delete(d.try_into()?),
                        WOp::Txn(t) => TxnOp::Txn(t.try_into()?),
                    })
                })
                .collect()
        }
        Ok(TxnRequest {
            compare: w
                .compare
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            success: ops(w.success)?,
            failure: ops(w.failure)?,
        })
    }
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum WCommandOp {
    #[prost(message, tag = "2")]
    Put(WPut),
    #[prost(message, tag = "3")]
    Delete(WDelete),
    #[prost(message, tag = "4")]
    Txn(WTxn),
    #[prost(int64, tag = "5")]
    Compact(i64),
    #[prost(message, tag = "6")]
    LeaseGrant(WLeaseGrant),
    #[prost(int64, tag = "7")]
    LeaseRevoke(i64),
    #[prost(message, tag = "8")]
    LeaseExpire(WLeaseExpire),
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WLeaseGrant {
    #[prost(int64, tag = "1")]
    pub(crate) id: i64,
    #[prost(uint64, tag = "2")]
    pub(crate) ttl_ms: u64,
}

/// A leader's expiry of a lease, valid only in the term it was decided in.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WLeaseExpire {
    #[prost(int64, tag = "1")]
    pub(crate) id: i64,
    #[prost(uint64, tag = "2")]
    pub(crate) term: u64,
}

/// A lease as stored (under its id): what survives restarts and travels
/// in snapshots. Deadlines are not replicated (the leader keeps them).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WLeaseRecord {
    #[prost(uint64, tag = "1")]
    pub(crate) ttl_ms: u64,
}

/// A write command. The space quota travels in the command (chosen by the
/// proposer), so every member decides `NoSpace` identically.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WCommand {
    #[prost(uint64, tag = "1")]
    pub(crate) quota_bytes: u64,
    #[prost(oneof = "WCommandOp", tags = "2, 3, 4, 5, 6, 7, 8")]
    pub(crate) op: Option<WCommandOp>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum WQueryOp {
    #[prost(message, tag = "1")]
    Range(WRange),
    #[prost(message, tag = "2")]
    Txn(WTxn),
    #[prost(message, tag = "3")]
    Lease(WLeaseQuery),
    #[prost(bool, tag = "4")]
    Leases(bool),
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WLeaseQuery {
    #[prost(int64, tag = "1")]
    pub(crate) id: i64,
    #[prost(bool, tag = "2")]
    pub(crate) keys: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WQuery {
    #[prost(oneof = "WQueryOp", tags = "1, 2, 3, 4")]
    pub(crate) op: Option<WQueryOp>,
}

// ---- replies ----

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WPutResp {
    #[prost(int64, tag = "1")]
    revision: i64,
    #[prost(message, optional, tag = "2")]
    prev_kv: Option<WKeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WRangeResp {
    #[prost(int64, tag = "1")]
    revision: i64,
    #[prost(message, repeated, tag = "2")]
    kvs: Vec<WKeyValue>,
    #[prost(bool, tag = "3")]
    more: bool,
    #[prost(uint64, tag = "4")]
    count: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WDeleteResp {
    #[prost(int64, tag = "1")]
    revision: i64,
    #[prost(uint64, tag = "2")]
    deleted: u64,
    #[prost(message, repeated, tag = "3")]
    prev_kvs: Vec<WKeyValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum WOpResp {
    #[prost(message, tag = "1")]
    Put(WPutResp),
    #[prost(message, tag = "2")]
    Range(WRangeResp),
    #[prost(message, tag = "3")]
    Delete(WDeleteResp),
    #[prost(message, tag = "4")]
    Txn(WTxnResp),
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WTxnOpResp {
    #[prost(oneof = "WOpResp", tags = "1, 2, 3, 4")]
    op: Option<WOpResp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WTxnResp {
    #[prost(int64, tag = "1")]
    revision: i64,
    #[prost(bool, tag = "2")]
    succeeded: bool,
    #[prost(message, repeated, tag = "3")]
    responses: Vec<WTxnOpResp>,
}

/// An error reply: `kind` names the [`Error`] variant, `a`/`b` its fields.
/// Limit errors never come from the machine (the proposer checks limits).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WError {
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(int64, tag = "2")]
    a: i64,
    #[prost(int64, tag = "3")]
    b: i64,
    #[prost(string, tag = "4")]
    detail: String,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum WReplyOp {
    #[prost(message, tag = "1")]
    Put(WPutResp),
    #[prost(message, tag = "2")]
    Range(WRangeResp),
    #[prost(message, tag = "3")]
    Delete(WDeleteResp),
    #[prost(message, tag = "4")]
    Txn(WTxnResp),
    #[prost(int64, tag = "5")]
    Compact(i64),
    #[prost(message, tag = "6")]
    Error(WError),
    #[prost(message, tag = "7")]
    Lease(WLeaseResp),
    #[prost(message, tag = "8")]
    Leases(WLeasesResp),
    #[prost(int64, tag = "9")]
    LeaseRevoke(i64),
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WLeaseResp {
    #[prost(int64, tag = "1")]
    revision: i64,
    #[prost(int64, tag = "2")]
    id: i64,
    #[prost(uint64, tag = "3")]
    ttl_ms: u64,
    #[prost(bytes = "vec", repeated, tag = "4")]
    keys: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WLeasesResp {
    #[prost(int64, tag = "1")]
    revision: i64,
    #[prost(int64, repeated, tag = "2")]
    ids: Vec<i64>,
    #[prost(uint64, repeated, tag = "3")]
    ttls_ms: Vec<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WReply {
    #[prost(oneof = "WReplyOp", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub(crate) op: Option<WReplyOp>,
}

/// A response without its header's member fields: what the machine knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Put {
        revision: i64,
        prev_kv: Option<KeyValue>,
    },
    Range(RangeReply),
    Delete {
        revision: i64,
        deleted: u64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn(TxnReply),
    Compact {
        revision: i64,
    },
    /// A lease (granted, or asked about): its TTL and attached keys.
    Lease {
        revision: i64,
        id: i64,
        ttl_ms: u64,
        keys: Vec<Vec<u8>>,
    },
    /// Every lease with its TTL.
    Leases {
        revision: i64,
        leases: Vec<(i64, u64)>,
    },
    LeaseRevoke {
        revision: i64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RangeReply {
    pub(crate) revision: i64,
    pub(crate) kvs: Vec<KeyValue>,
    pub(crate) more: bool,
    pub(crate) count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TxnReply {
    pub(crate) revision: i64,
    pub(crate) succeeded: bool,
    pub(crate) responses: Vec<Reply>,
}

fn kvs(v: &[KeyValue]) -> Vec<WKeyValue> {
    v.iter().map(Into::into).collect()
}

fn reply_to_op(r: &Reply) -> WOpResp {
    match r {
        Reply::Put { revision, prev_kv } => WOpResp::Put(WPutResp {
            revision: *revision,
            prev_kv: prev_kv.as_ref().map(Into::into),
        }),
        Reply::Range(r) => WOpResp::Range(range_resp(r)),
        Reply::Delete {
            revision,
            deleted,
            prev_kvs,
        } => WOpResp::Delete(WDeleteResp {
            revision: *revision,
            deleted: *deleted,
            prev_kvs: kvs(prev_kvs),
        }),
        Reply::Txn(t) => WOpResp::Txn(txn_resp(t)),
        // Neither a compaction nor a lease operation is ever inside a
        // transaction.
        Reply::Compact { revision }
        | Reply::Lease { revision, .. }
        | Reply::Leases { revision, .. }
        | Reply::LeaseRevoke { revision } => WOpResp::Range(WRangeResp {
            revision: *revision,
            ..WRangeResp::default()
        }),
    }
}

fn range_resp(r: &RangeReply) -> WRangeResp {
    WRangeResp {
        revision: r.revision,
        kvs: kvs(&r.kvs),
        more: r.more,
        count: r.count,
    }
}

fn txn_resp(t: &TxnReply) -> WTxnResp {
    WTxnResp {
        revision: t.revision,
        succeeded: t.succeeded,
        responses: t
            .responses
            .iter()
            .map(|r| WTxnOpResp {
                op: Some(reply_to_op(r)),
            })
            .collect(),
    }
}

/// Encodes a machine result as reply bytes.
pub(crate) fn encode_reply(result: &Result<Reply, Error>) -> Vec<u8> {
    use prost::Message as _;
    let op = match result {
        Ok(Reply::Put { revision, prev_kv }) => WReplyOp::Put(WPutResp {
            revision: *revision,
            prev_kv: prev_kv.as_ref().map(Into::into),
        }),
        Ok(Reply::Range(r)) => WReplyOp::Range(range_resp(r)),
        Ok(Reply::Delete {
            revision,
            deleted,
            prev_kvs,
        }) => WReplyOp::Delete(WDeleteResp {
            revision: *revision,
            deleted: *deleted,
            prev_kvs: kvs(prev_kvs),
        }),
        Ok(Reply::Txn(t)) => WReplyOp::Txn(txn_resp(t)),
        Ok(Reply::Compact { revision }) => WReplyOp::Compact(*revision),
        Ok(Reply::Lease {
            revision,
            id,
            ttl_ms,
            keys,
        }) => WReplyOp::Lease(WLeaseResp {
            revision: *revision,
            id: *id,
            ttl_ms: *ttl_ms,
            keys: keys.clone(),
        }),
        Ok(Reply::Leases { revision, leases }) => WReplyOp::Leases(WLeasesResp {
            revision: *revision,
            ids: leases.iter().map(|l| l.0).collect(),
            ttls_ms: leases.iter().map(|l| l.1).collect(),
        }),
        Ok(Reply::LeaseRevoke { revision }) => WReplyOp::LeaseRevoke(*revision),
        Err(e) => WReplyOp::Error(encode_error(e)),
    };
    WReply { op: Some(op) }.encode_to_vec()
}

fn encode_error(e: &Error) -> WError {
    let (kind, a, b) = match e {
        Error::Compacted { compact_revision } => (1, *compact_revision, 0),
        Error::FutureRevision { requested, current } => (2, *requested, *current),
        Error::NoSpace { used, quota } => (3, *used as i64, *quota as i64),
        Error::InvalidRequest { reason } => (
            4,
            match reason {
                InvalidRequest::EmptyKey => 1,
                InvalidRequest::DuplicateKeyInTxn => 3,
                InvalidRequest::PutInDeletedRange => 4,
                InvalidRequest::KeyNotFound => 5,
                InvalidRequest::IgnoredFieldSet => 6,
                InvalidRequest::NegativeRevision => 7,
                InvalidRequest::InvalidTtl => 9,
                InvalidRequest::InvalidLeaseId => 10,
                InvalidRequest::StaleLeaseExpiry => 11,
                _ => 8,
            },
            0,
        ),
        Error::LeaseNotFound { lease } => (5, *lease, 0),
        Error::LeaseExists { lease } => (6, *lease, 0),
        Error::NotLeader { leader_hint } => (8, leader_hint.map_or(0, |n| n.0 as i64), 0),
        Error::Timeout { after } => (9, after.as_millis().min(i64::MAX as u128) as i64, 0),
        Error::Shutdown => (10, 0, 0),
        _ => (7, 0, 0),
    };
    WError {
        kind,
        a,
        b,
        detail: if kind == 7 {
            e.to_string()
        } else {
            String::new()
        },
    }
}

fn decode_error(w: WError) -> Error {
    match w.kind {
        1 => Error::Compacted {
            compact_revision: w.a,
        },
        2 => Error::FutureRevision {
            requested: w.a,
            current: w.b,
        },
        3 => Error::NoSpace {
            used: w.a as u64,
            quota: w.b as u64,
        },
        4 => Error::InvalidRequest {
            reason: match w.a {
                1 => InvalidRequest::EmptyKey,
                3 => InvalidRequest::DuplicateKeyInTxn,
                4 => InvalidRequest::PutInDeletedRange,
                5 => InvalidRequest::KeyNotFound,
                6 => InvalidRequest::IgnoredFieldSet,
                7 => InvalidRequest::NegativeRevision,
                9 => InvalidRequest::InvalidTtl,
                10 => InvalidRequest::InvalidLeaseId,
                11 => InvalidRequest::StaleLeaseExpiry,
                _ => InvalidRequest::Malformed,
            },
        },
        5 => Error::LeaseNotFound { lease: w.a },
        6 => Error::LeaseExists { lease: w.a },
        8 => Error::NotLeader {
            leader_hint: (w.a > 0).then_some(ha_core::NodeId(w.a as u64)),
        },
        9 => Error::Timeout {
            after: std::time::Duration::from_millis(w.a.max(0) as u64),
        },
        10 => Error::Shutdown,
        _ => Error::Storage(StorageError::Other(Arc::new(std::io::Error::other(
            w.detail,
        )))),
    }
}

/// What stamps a reply's header: the answering member's identity and term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderStamp {
    /// The group.
    pub cluster_id: ha_core::ClusterId,
    /// The answering member.
    pub member_id: ha_core::NodeId,
    /// Its raft term.
    pub raft_term: u64,
}

impl HeaderStamp {
    fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft_term,
        }
    }
}

/// A decoded reply of the MVCC machine.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvReply {
    /// Of a put.
    Put(PutResponse),
    /// Of a range.
    Range(RangeResponse),
    /// Of a delete.
    Delete(DeleteResponse),
    /// Of a transaction.
    Txn(TxnResponse),
    /// Of a compaction.
    Compact(CompactResponse),
    /// Of a lease grant or a lease query.
    Lease(LeaseInfo),
    /// Of a query for every lease.
    Leases(LeaseLeasesResponse),
    /// Of a lease revocation or expiry.
    LeaseRevoke(LeaseRevokeResponse),
}

/// A lease as the machine knows it (the replicated part: no deadline).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Answering member and revision.
    pub header: ResponseHeader,
    /// The lease.
    pub id: LeaseId,
    /// The TTL it was granted.
    pub ttl: std::time::Duration,
    /// Its keys, sorted (when asked for).
    pub keys: Vec<Vec<u8>>,
}

fn wkvs(v: Vec<WKeyValue>) -> Vec<KeyValue> {
    v.into_iter().map(Into::into).collect()
}

fn op_resp(w: WOpResp, s: &HeaderStamp) -> TxnOpResponse {
    match w {
        WOpResp::Put(p) => TxnOpResponse::Put(put_response(p, s)),
        WOpResp::Range(r) => TxnOpResponse::Range(range_response(r, s)),
        WOpResp::Delete(d) => TxnOpResponse::Delete(delete_response(d, s)),
        WOpResp::Txn(t) => TxnOpResponse::Txn(txn_response(t, s)),
    }
}

fn put_response(p: WPutResp, s: &HeaderStamp) -> PutResponse {
    PutResponse {
        header: s.header(p.revision),
        prev_kv: p.prev_kv.map(Into::into),
    }
}

fn delete_response(d: WDeleteResp, s: &HeaderStamp) -> DeleteResponse {
    DeleteResponse {
        header: s.header(d.revision),
        deleted: d.deleted,
        prev_kvs: wkvs(d.prev_kvs),
    }
}

fn range_response(r: WRangeResp, s: &HeaderStamp) -> RangeResponse {
    RangeResponse {
        header: s.header(r.revision),
        kvs: wkvs(r.kvs),
        more: r.more,
        count: r.count,
    }
}

fn txn_response(t: WTxnResp, s: &HeaderStamp) -> TxnResponse {
    TxnResponse {
        header: s.header(t.revision),
        succeeded: t.succeeded,
        responses: t
            .responses
            .into_iter()
            .filter_map(|r| r.op.map(|op| op_resp(op, s)))
            .collect(),
    }
}

/// Decodes reply bytes of the MVCC machine (from `apply` or `query`).
///
/// # Errors
/// The error the machine answered with; [`InvalidRequest::Malformed`] for
/// bytes that are not a reply.
pub fn decode_reply(bytes: &[u8], stamp: &HeaderStamp) -> Result<KvReply, Error> {
    use prost::Message as _;
    let w = WReply::decode(bytes).map_err(|_| malformed())?;
    Ok(match w.op.ok_or_else(malformed)? {
        WReplyOp::Put(p) => KvReply::Put(put_response(p, stamp)),
        WReplyOp::Range(r) => KvReply::Range(range_response(r, stamp)),
        WReplyOp::Delete(d) => KvReply::Delete(delete_response(d, stamp)),
        WReplyOp::Txn(t) => KvReply::Txn(txn_response(t, stamp)),
        WReplyOp::Compact(revision) => KvReply::Compact(CompactResponse {
            header: stamp.header(revision),
        }),
        WReplyOp::Lease(l) => KvReply::Lease(LeaseInfo {
            header: stamp.header(l.revision),
            id: LeaseId(l.id),
            ttl: std::time::Duration::from_millis(l.ttl_ms),
            keys: l.keys,
        }),
        WReplyOp::Leases(l) => KvReply::Leases(LeaseLeasesResponse {
            header: stamp.header(l.revision),
            leases: l
                .ids
                .into_iter()
                .zip(l.ttls_ms)
                .map(|(id, ttl)| LeaseStatus {
                    id: LeaseId(id),
                    granted_ttl: std::time::Duration::from_millis(ttl),
                })
                .collect(),
        }),
        WReplyOp::LeaseRevoke(revision) => KvReply::LeaseRevoke(LeaseRevokeResponse {
            header: stamp.header(revision),
        }),
        WReplyOp::Error(e) => return Err(decode_error(e)),
    })
}

/// Encodes an error the way the machine's replies carry it, for other
/// channels that must carry KV errors between members (forwarded lease
/// calls). Errors without a code of their own arrive as a storage error
/// with their text.
pub fn encode_error_bytes(e: &Error) -> Vec<u8> {
    use prost::Message as _;
    encode_error(e).encode_to_vec()
}

/// Decodes [`encode_error_bytes`]' output; bytes that are not an error
/// decode as [`InvalidRequest::Malformed`].
pub fn decode_error_bytes(bytes: &[u8]) -> Error {
    use prost::Message as _;
    match WError::decode(bytes) {
        Ok(w) => decode_error(w),
        Err(_) => malformed(),
    }
}
