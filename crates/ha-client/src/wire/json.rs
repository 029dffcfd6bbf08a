//! The JSON shapes of the client API, both ways: a request body from the
//! library's request (client) and back (server); an answer from the
//! library's response (server) and back (client).
//!
//! Keys and values are base64 (standard alphabet, padded) by default, as
//! in etcd's JSON gateway; with `?encoding=utf8` on any route they are
//! plain UTF-8 strings both ways (a stored key or value that is not UTF-8
//! then answers `422 not_utf8`). [`crate::RemoteKv`] always uses base64.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ha_core::{
    ClusterId, Compare, CompareOp, CompareTarget, Consistency, DeleteRequest, DeleteResponse,
    EventKind, KeyRange, KeyValue, LeaseGrantResponse, LeaseId, LeaseKeepAliveResponse,
    LeaseLeasesResponse, LeaseStatus, LeaseTimeToLiveResponse, NodeId, PutRequest, PutResponse,
    RangeRequest, RangeResponse, ResponseHeader, SortOrder, SortTarget, TxnOp, TxnOpResponse,
    TxnRequest, TxnResponse, WatchEvent, WatchRequest, WatchResponse,
};
use serde::{Deserialize, Serialize};

use super::error::WireError;

type Result<T> = std::result::Result<T, WireError>;

/// How keys and values are written in JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Standard base64 (the default).
    #[default]
    Base64,
    /// UTF-8 text.
    Utf8,
}

impl Encoding {
    /// Decodes a key or value.
    ///
    /// # Errors
    /// `bad_encoding` naming `field`.
    pub fn decode(self, field: &str, text: &str) -> Result<Vec<u8>> {
        match self {
            Encoding::Base64 => STANDARD.decode(text).map_err(|e| {
                WireError::bad_encoding(
                    field,
                    format!("not base64 ({e}); or ask with ?encoding=utf8"),
                )
            }),
            Encoding::Utf8 => Ok(text.as_bytes().to_vec()),
        }
    }

    /// Encodes a key or value.
    ///
    /// # Errors
    /// `not_utf8` when asked for UTF-8 and the bytes are not.
    pub fn encode(self, field: &str, bytes: &[u8]) -> Result<String> {
        match self {
            Encoding::Base64 => Ok(STANDARD.encode(bytes)),
            Encoding::Utf8 => {
                String::from_utf8(bytes.to_vec()).map_err(|_| WireError::not_utf8(field))
            }
        }
    }
}

/// Milliseconds of a duration, for JSON.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str, out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 || !text.is_ascii() {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(())
}

/// What every response carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderJson {
    /// The group (hex, first 8 bytes).
    pub cluster_id: String,
    /// The group's whole id (hex, 32 bytes); absent from older members.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_id_full: String,
    /// The member that answered.
    pub member_id: u64,
    /// The store's revision.
    pub revision: i64,
    /// The raft term.
    pub raft_term: u64,
}

impl From<&ResponseHeader> for HeaderJson {
    fn from(h: &ResponseHeader) -> Self {
        HeaderJson {
            cluster_id: h.cluster_id.to_string(),
            cluster_id_full: hex(&h.cluster_id.0),
            member_id: h.member_id.0,
            revision: h.revision,
            raft_term: h.raft_term,
        }
    }
}

impl HeaderJson {
    /// The library's header. Without `cluster_id_full`, the cluster id
    /// holds the short form's 8 bytes and zeros.
    ///
    /// # Errors
    /// `bad_answer` for a cluster id that is not hex.
    pub fn to_header(&self) -> Result<ResponseHeader> {
        let mut id = [0u8; 32];
        let parsed = if self.cluster_id_full.is_empty() {
            unhex(&self.cluster_id, &mut id[..8])
        } else {
            unhex(&self.cluster_id_full, &mut id)
        };
        parsed.ok_or_else(|| {
            WireError::bad_answer(format!("cluster id `{}` is not hex", self.cluster_id))
        })?;
        Ok(ResponseHeader {
            cluster_id: ClusterId(id),
            member_id: NodeId(self.member_id),
            revision: self.revision,
            raft_term: self.raft_term,
        })
    }
}

/// A key-value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvJson {
    /// The key.
    pub key: String,
    /// Revision of its creation.
    pub create_revision: i64,
    /// Revision of its last write.
    pub mod_revision: i64,
    /// Writes since its creation.
    pub version: i64,
    /// The value.
    pub value: String,
    /// Its lease (0: none).
    pub lease: i64,
}

impl KvJson {
    /// From the library's key-value.
    ///
    /// # Errors
    /// `not_utf8`.
    pub fn new(enc: Encoding, kv: &KeyValue) -> Result<KvJson> {
        Ok(KvJson {
            key: enc.encode("key", &kv.key)?,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: enc.encode("value", &kv.value)?,
            lease: kv.lease.0,
        })
    }

    /// The library's key-value.
    ///
    /// # Errors
    /// `bad_encoding`.
    pub fn to_kv(&self, enc: Encoding) -> Result<KeyValue> {
        Ok(KeyValue {
            key: enc.decode("key", &self.key)?,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: enc.decode("value", &self.value)?,
            lease: LeaseId(self.lease),
        })
    }
}

fn kvs_json(enc: Encoding, kvs: &[KeyValue]) -> Result<Vec<KvJson>> {
    kvs.iter().map(|kv| KvJson::new(enc, kv)).collect()
}

fn kvs(enc: Encoding, kvs: &[KvJson]) -> Result<Vec<KeyValue>> {
    kvs.iter().map(|kv| kv.to_kv(enc)).collect()
}

/// Which keys, as four fields: `key` alone is one key; with `prefix`
/// every key starting with it; with `range_end` `[key, range_end)`; with
/// `from_key` every key at or after it. At most one of the three.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// The key (or prefix, or range start).
    pub key: String,
    /// Exclusive end.
    pub range_end: Option<String>,
    /// `key` is a prefix.
    pub prefix: bool,
    /// From `key` on.
    pub from_key: bool,
}

impl Selector {
    /// From the library's range.
    ///
    /// # Errors
    /// `not_utf8`.
    pub fn new(enc: Encoding, range: &KeyRange) -> Result<Selector> {
        Ok(match range {
            KeyRange::Key(k) => Selector {
                key: enc.encode("key", k)?,
                ..Selector::default()
            },
            KeyRange::Prefix(p) => Selector {
                key: enc.encode("key", p)?,
                prefix: true,
                ..Selector::default()
            },
            KeyRange::Range { start, end } => Selector {
                key: enc.encode("key", start)?,
                range_end: Some(enc.encode("range_end", end)?),
                ..Selector::default()
            },
            KeyRange::From(k) => Selector {
                key: enc.encode("key", k)?,
                from_key: true,
                ..Selector::default()
            },
        })
    }
}

fn key_range(
    enc: Encoding,
    key: &str,
    range_end: Option<&str>,
    prefix: bool,
    from_key: bool,
) -> Result<KeyRange> {
    let key = enc.decode("key", key)?;
    match (range_end, prefix, from_key) {
        (None, false, false) => Ok(KeyRange::Key(key)),
        (None, true, false) => Ok(KeyRange::Prefix(key)),
        (None, false, true) => Ok(KeyRange::From(key)),
        (Some(end), false, false) => Ok(KeyRange::Range {
            start: key,
            end: enc.decode("range_end", end)?,
        }),
        _ => Err(WireError::bad_request(
            "give at most one of range_end, prefix and from_key",
        )),
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// A read's consistency, when not given by `serializable` alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyJson {
    /// ReadIndex.
    Linearizable,
    /// The member's state, at once.
    Serializable,
    /// The leader's read lease (a ReadIndex round without it).
    Lease,
}

/// The consistency of a read body: `consistency` when given, else
/// `serializable`.
///
/// # Errors
/// `bad_request` when both are given and disagree.
pub fn consistency(serializable: bool, given: Option<ConsistencyJson>) -> Result<Consistency> {
    match (given, serializable) {
        (None, false) => Ok(Consistency::Linearizable),
        (None, true) | (Some(ConsistencyJson::Serializable), _) => Ok(Consistency::Serializable),
        (Some(_), true) => Err(WireError::bad_request(
            "serializable: true contradicts the consistency given",
        )),
        (Some(ConsistencyJson::Linearizable), false) => Ok(Consistency::Linearizable),
        (Some(ConsistencyJson::Lease), false) => Ok(Consistency::Lease),
    }
}

/// The body fields for `c`: (`serializable`, `consistency`).
pub fn consistency_fields(c: Consistency) -> (bool, Option<ConsistencyJson>) {
    match c {
        Consistency::Serializable => (true, None),
        Consistency::Lease => (false, Some(ConsistencyJson::Lease)),
        _ => (false, None),
    }
}

/// `POST /v1/kv/put`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PutBody {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// A lease to attach the key to (0: none).
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub lease: i64,
    /// Return the previous key-value.
    #[serde(skip_serializing_if = "is_false")]
    pub prev_kv: bool,
    /// Keep the current value.
    #[serde(skip_serializing_if = "is_false")]
    pub ignore_value: bool,
    /// Keep the current lease.
    #[serde(skip_serializing_if = "is_false")]
    pub ignore_lease: bool,
}

impl PutBody {
    /// From the library's request.
    ///
    /// # Errors
    /// `not_utf8`.
    pub fn new(enc: Encoding, r: &PutRequest) -> Result<PutBody> {
        Ok(PutBody {
            key: enc.encode("key", &r.key)?,
            value: enc.encode("value", &r.value)?,
            lease: r.lease.0,
            prev_kv: r.prev_kv,
            ignore_value: r.ignore_value,
            ignore_lease: r.ignore_lease,
        })
    }

    /// The library's request.
    ///
    /// # Errors
    /// A key or value that does not decode.
    pub fn into_request(self, enc: Encoding) -> Result<PutRequest> {
        Ok(PutRequest {
            key: enc.decode("key", &self.key)?,
            value: enc.decode("value", &self.value)?,
            lease: LeaseId(self.lease),
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        })
    }
}

/// The answer to a put.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PutJson {
    /// Header.
    pub header: HeaderJson,
    /// The previous key-value, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KvJson>,
}

impl PutJson {
    /// From the library's response.
    ///
    /// # Errors
    /// `not_utf8`.
    pub fn new(enc: Encoding, r: &PutResponse) -> Result<PutJson> {
        Ok(PutJson {
            header: (&r.header).into(),
            prev_kv: r
                .prev_kv
                .as_ref()
                .map(|kv| KvJson::new(enc, kv))
                .transpose()?,
        })
    }

    /// The library's response.
    ///
    /// # Errors
    /// `bad_encoding`, `bad_answer`.
    pub fn to_response(&self, enc: Encoding) -> Result<PutResponse> {
        Ok(PutResponse {
            header: self.header.to_header()?,
            prev_kv: self.prev_kv.as_ref().map(|kv| kv.to_kv(enc)).transpose()?,
        })
    }
}

/// Sort target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortTargetJson {
    /// Key.
    #[default]
    Key,
    /// Version.
    Version,
    /// Create revision.
    CreateRevision,
    /// Mod revision.
    ModRevision,
    /// Value.
    Value,
}

/// Sort order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortOrderJson {
    /// Key order.
    #[default]
    None,
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

const SORT_TARGETS: &[(SortTarget, SortTargetJson)] = &[
    (SortTarget::Key, SortTargetJson::Key),
    (SortTarget::Version, SortTargetJson::Version),
    (SortTarget::CreateRevision, SortTargetJson::CreateRevision),
    (SortTarget::ModRevision, SortTargetJson::ModRevision),
    (SortTarget::Value, SortTargetJson::Value),
];

const SORT_ORDERS: &[(SortOrder, SortOrderJson)] = &[
    (SortOrder::None, SortOrderJson::None),
    (SortOrder::Ascend, SortOrderJson::Ascend),
    (SortOrder::Descend, SortOrderJson::Descend),
];

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// `POST /v1/kv/range` (and a range inside a transaction).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RangeBody {
    /// The key, prefix or range start.
    pub key: String,
    /// Exclusive end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    /// `key` is a prefix.
    #[serde(skip_serializing_if = "is_false")]
    pub prefix: bool,
    /// From `key` on.
    #[serde(skip_serializing_if = "is_false")]
    pub from_key: bool,
    /// At most this many (0: all).
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub limit: u64,
    /// At this revision (0: current).
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub revision: i64,
    /// No values.
    #[serde(skip_serializing_if = "is_false")]
    pub keys_only: bool,
    /// Only the count.
    #[serde(skip_serializing_if = "is_false")]
    pub count_only: bool,
    /// Sort by.
    #[serde(skip_serializing_if = "is_default")]
    pub sort_target: SortTargetJson,
    /// Sort direction.
    #[serde(skip_serializing_if = "is_default")]
    pub sort_order: SortOrderJson,
    /// Read this member's state at once (may be stale) instead of a
    /// linearizable read.
    #[serde(skip_serializing_if = "is_false")]
    pub serializable: bool,
    /// The read's consistency (`linearizable`, `serializable`, `lease`);
    /// overrides `serializable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencyJson>,
}

impl RangeBody {
    /// From the library's request, read with `c` (inside a transaction the
    /// transaction's consistency applies: pass the default).
    ///
    /// # Errors
    /// `not_utf8`.
    pub fn new(enc: Encoding, r: &RangeRequest, c: Consistency) -> Result<RangeBody> {
        let s = Selector::new(enc, &r.range)?;
        let (serializable, consistency) = consistency_fields(c);
        Ok(RangeBody {
            key: s.key,
            range_end: s.range_end,
            prefix: s.prefix,
            from_key: s.from_key,
            limit: r.limit,
            revision: r.revision,
            keys_only: r.keys_only,
            count_only: r.count_only,
            sort_target: SORT_TARGETS
                .iter()
                .find(|(t, _)| *t == r.sort_target)
                .map_or(SortTargetJson::Key, |(_, j)| *j),
            sort_order: SORT_ORDERS
                .iter()
                .find(|(o, _)| *o == r.sort_order)
                .map_or(SortOrderJson::None, |(_, j)| *j),
            serializable,
            consistency,
        })
    }

    /// The read's consistency.
    ///
    /// # Errors
    /// `bad_request` for contradicting fields.
    pub fn consistency(&self) -> Result<Consistency> {
        consistency(self.serializable, self.consistency)
    }

    /// The library's request.
    ///
    /// # Errors
    /// Bad keys, or more than one range form.
    pub fn into_request(self, enc: Encoding) -> Result<RangeRequest> {
        Ok(RangeRequest {
            range: key_range(
                enc,
                &self.key,
                self.range_end.as_deref(),
                self.prefix,
                self.from_key,
            )?,
            limit: self.limit,
            revision: self.revision,
            keys_only: self.keys_only,
            count_only: self.count_only,
            sort_target: SORT_TARGETS
                .iter()
                .find(|(_, j)| *j == self.sort_target)
                .map_or(SortTarget::Key, |(t, _)| *t),
            sort_order: SORT_ORDERS
                .iter()
                .find(|(_, j)| *j == self.sort_order)
                .map_or(SortOrder::None, |(o, _)| *o),
        })
    }
}

/// The answer to a range.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RangeJson {
    /// Header.
    pub header: HeaderJson,
    /// The key-values.
    #[serde(default)]
    pub kvs: Vec<KvJson>,
    /// More matched than `limit`.
    #[serde(default)]
    pub more: bool,
    /// How many matched.
    #[serde(default)]
    pub count: u64,
}

impl RangeJson {
    /// From the library's response.
    ///
    /// # Errors
    /// `not_utf8`.
    pub fn new(enc: Encoding, r: &RangeResponse) -> Result<RangeJson> {
        Ok(RangeJson {
            header: (&r.header).into(),
            kvs: kvs_json(enc, &r.kvs)?,
            more: r.more,
            count: r.count,
        })
    }

    /// The library's response.
    ///
    /// # Errors
    /// `bad_encoding`, `bad_answer`.
    pub fn to_response(&self, enc: Encoding) -> Result<RangeResponse> {
        Ok(RangeResponse {
            header: self.header.to_header()?,
            kvs: kvs(enc, &self.kvs)?,
            more: self.more,
            count: self.count,
        })
    }
}

/// `POST /v1/kv/get`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GetBody {
    /// The key.
    pub key: String,
    /// At this revision (0: current).
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub revision: i64,
    /// A local read.
    #[serde(skip_serializing_if = "is_false")]
    pub serializable: bool,
    /// The read's consistency; overrides `serializable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencyJson>,
}

/// The answer to a get.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GetJson {
    /// Header.
    pub header: HeaderJson,
    /// The key-value, or null.
    pub kv: Option<KvJson>,
}

/// `POST /v1/kv/delete`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeleteBody {
    /// The key, prefix or range start.
    pub key: String,
    /// Exclusive end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    /// `key` is a prefix.
    #[serde(skip_serializing_if = "is_false")]
    pub prefix: bool,
    /// From `key` on.
    #[serde(skip_serializing_if = "is_false")]
    pub from_key: bool,
    /// Return the deleted key-values.
    #[serde(skip_serializing_if = "is_false")]
    pub prev_kv: bool,
}

impl DeleteBody {
    /// From the library's request.
    ///
    /// # Errors
    /// `not_utf8`.
    pub fn new(enc: Encoding, r: &DeleteRequest) -> Result<DeleteBody> {
        let s = Selector::new(enc, &r.range)?;
        Ok(DeleteBody {
            key: s.key,
            range_end: s.range_end,
            prefix: s.prefix,
            from_key: s.from_key,
            prev_kv: r.prev_kv,
        })
    }

    /// The library's request.
    ///
    /// # Errors
    /// Bad keys, or more than one range form.
    pub fn into_request(self, enc: Encoding) -> Result<DeleteRequest> {
        Ok(DeleteRequest {
            range: key_range(
                enc,
                &self.key,
                self.range_end.as_deref(),
                self.prefix,
                self.from_key,
            )?,
            prev_kv: self.prev_kv,
        })
    }
}

/// The answer to a delete.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeleteJson {
    /// Header.
    pub header: HeaderJson,
    /// How many were deleted.
    pub deleted: u64,
    /// The deleted key-values, when asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prev_kvs: Vec<KvJson>,
}

impl DeleteJson {
    /// From the library's response.
    ///
    /// # Errors
    /// `not_utf8`.
    pub fn new(enc: Encoding, r: &DeleteResponse) -> Result<DeleteJson> {
        Ok(DeleteJson {
            header: (&r.header).into(),
            deleted: r.deleted,
            prev_kvs: kvs_json(enc, &r.prev_kvs)?,
        })
    }

    /// The library's response.
    ///
    /// # Errors
    /// `bad_encoding`, `bad_answer`.
    pub fn to_response(&self, enc: Encoding) -> Result<DeleteResponse> {
        Ok(DeleteResponse {
            header: self.header.to_header()?,
            deleted: self.deleted,
            prev_kvs: kvs(enc, &self.prev_kvs)?,
        })
    }
}

/// Comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpJson {
    /// `=`
    #[serde(rename = "=", alias = "equal")]
    Equal,
    /// `!=`
    #[serde(rename = "!=", alias = "not_equal")]
    NotEqual,
    /// `<`
    #[serde(rename = "<", alias = "less")]
    Less,
    /// `>`
    #[serde(rename = ">", alias = "greater")]
    Greater,
}

/// A transaction's condition: the selector, an operator, and exactly one
/// of `value`, `version`, `create_revision`, `mod_revision`, `lease`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareBody {
    /// The key (or prefix, or range start).
    pub key: String,
    /// Exclusive end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    /// `key` is a prefix.
    #[serde(default, skip_serializing_if = "is_false")]
    pub prefix: bool,
    /// From `key` on.
    #[serde(default, skip_serializing_if = "is_false")]
    pub from_key: bool,
    /// `=`, `!=`, `<`, `>`.
    pub op: OpJson,
    /// Compare the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Compare the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Compare the create revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_revision: Option<i64>,
    /// Compare the mod revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<i64>,
    /// Compare the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
}

impl CompareBody {
    /// From the library's compare.
    ///
    /// # Errors
    /// `not_utf8`.
    pub fn new(enc: Encoding, c: &Compare) -> Result<CompareBody> {
        let s = Selector::new(enc, &c.range)?;
        let mut body = CompareBody {
            key: s.key,
            range_end: s.range_end,
            prefix: s.prefix,
            from_key: s.from_key,
            op: match c.op {
                CompareOp::Equal => OpJson::Equal,
                CompareOp::NotEqual => OpJson::NotEqual,
                CompareOp::Less => OpJson::Less,
                CompareOp::Greater => OpJson::Greater,
            },
            value: None,
            version: None,
            create_revision: None,
            mod_revision: None,
            lease: None,
        };
        match &c.target {
            CompareTarget::Value(v) => body.value = Some(enc.encode("value", v)?),
            CompareTarget::Version(v) => body.version = Some(*v),
            CompareTarget::CreateRevision(v) => body.create_revision = Some(*v),
            CompareTarget::ModRevision(v) => body.mod_revision = Some(*v),
            CompareTarget::Lease(l) => body.lease = Some(l.0),
        }
        Ok(body)
    }

    fn into_compare(self, enc: Encoding) -> Result<Compare> {
        let mut targets = Vec::new();
        if let Some(v) = &self.value {
            targets.push(CompareTarget::Value(enc.decode("value", v)?));
        }
        if let Some(v) = self.version {
            targets.push(CompareTarget::Version(v));
        }
        if let Some(v) = self.create_revision {
            targets.push(CompareTarget::CreateRevision(v));
        }
        if let Some(v) = self.mod_revision {
            targets.push(CompareTarget::ModRevision(v));
        }
        if let Some(v) = self.lease {
            targets.push(CompareTarget::Lease(LeaseId(v)));
        }
        let (Some(target), 1) = (targets.pop(), targets.len() + 1) else {
            return Err(WireError::bad_request(
                "a compare needs exactly one of value, version, create_revision, mod_revision, lease",
            ));
        };
        Ok(Compare {
            range: key_range(
                enc,
                &self.key,
                self.range_end.as_deref(),
                self.prefix,
                self.from_key,
            )?,
            op: match self.op {
                OpJson::Equal => CompareOp::Equal,
                OpJson::NotEqual => CompareOp::NotEqual,
                OpJson::Less => CompareOp::Less,
                OpJson::Greater => CompareOp::Greater,
            },
            target,
        })
    }
}

/// One operation of a transaction branch: `{"put": {...}}`,
/// `{"range": {...}}`, `{"delete": {...}}` or `{"txn": {...}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TxnOpBody {
    /// A put.
    Put(PutBody),
    /// A read.
    Range(RangeBody),
    /// A delete.
    Delete(DeleteBody),
    /// A nested transaction.
    Txn(TxnBody),
}

/// `POST /v1/kv/txn`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TxnBody {
    /// Conditions, all of which must hold.
    pub compare: Vec<CompareBody>,
    /// Run when they hold.
    pub success: Vec<TxnOpBody>,
    /// Run otherwise.
    pub failure: Vec<TxnOpBody>,
    /// A read-only transaction may read locally.
    #[serde(skip_serializing_if = "is_false")]
    pub serializable: bool,
    /// A read-only transaction's consistency; overrides `serializable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencyJson>,
}

/// Nesting deeper than this is refused before it is converted (serde_json
/// already stops at 128 levels of JSON).
pub const MAX_TXN_DEPTH: usize = 16;

impl TxnBody {
    /// From the library's request, read with `c` when it has no writes.
    ///
    /// # Errors
    /// `not_utf8`.
    pub fn new(enc: Encoding, r: &TxnRequest, c: Consistency) -> Result<TxnBody> {
        let ops = |ops: &[TxnOp]| -> Result<Vec<TxnOpBody>> {
            ops.iter()
                .map(|op| {
                    Ok(match op {
                        TxnOp::Put(p) => TxnOpBody::Put(PutBody::new(enc, p)?),
                        TxnOp::Range(r) => {
                            TxnOpBody::Range(RangeBody::new(enc, r, Consistency::default())?)
                        }
                        TxnOp::Delete(d) => TxnOpBody::Delete(DeleteBody::new(enc, d)?),
                        TxnOp::Txn(t) => {
                            TxnOpBody::Txn(TxnBody::new(enc, t, Consistency::default())?)
                        }
                    })
                })
                .collect()
        };
        let (serializable, consistency) = consistency_fields(c);
        Ok(TxnBody {
            compare: r
                .compare
                .iter()
                .map(|c| CompareBody::new(enc, c))
                .collect::<Result<_>>()?,
            success: ops(&r.success)?,
            failure: ops(&r.failure)?,
            serializable,
            consistency,
        })
    }

    /// The read consistency of a read-only transaction.
    ///
    /// # Errors
    /// `bad_request` for contradicting fields.
    pub fn consistency(&self) -> Result<Consistency> {
        consistency(self.serializable, self.consistency)
    }

    /// The library's request.
    ///
    /// # Errors
    /// Bad keys, compares or too deep nesting.
    pub fn into_request(self, enc: Encoding) -> Result<TxnRequest> {
        self.convert(enc, 0)
    }

    fn convert(self, enc: Encoding, depth: usize) -> Result<TxnRequest> {
        if depth > MAX_TXN_DEPTH {
            return Err(WireError::bad_request(format!(
                "transactions nest at most {MAX_TXN_DEPTH} deep"
            )));
        }
        let ops = |ops: Vec<TxnOpBody>| -> Result<Vec<TxnOp>> {
            ops.into_iter()
                .map(|op| {
                    Ok(match op {
                        TxnOpBody::Put(p) => TxnOp::Put(p.into_request(enc)?),
                        TxnOpBody::Range(r) => TxnOp::Range(r.into_request(enc)?),
                        TxnOpBody::Delete(d) => TxnOp::Delete(d.into_request(enc)?),
                        TxnOpBody::Txn(t) => TxnOp::Txn(t.convert(enc, depth + 1)?),
                    })
                })
                .collect()
        };
        Ok(TxnRequest {
            compare: self
                .compare
                .into_iter()
                .map(|c| c.into_compare(enc))
                .collect::<Result<_>>()?,
            success: ops(self.success)?,
            failure: ops(self.failure)?,
        })
    }
}

/// The answer to one operation of a transaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnOpJson {
    /// Of a put.
    Put(PutJson),
    /// Of a read.
    Range(RangeJson),
    /// Of a delete.
    Delete(DeleteJson),
    /// Of a nested transaction.
    Txn(TxnJson),
}

/// The answer to a transaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TxnJson {
    /// Header.
    pub header: HeaderJson,
    /// The compares held.
    pub succeeded: bool,
    /// One answer per operation of the branch that ran.
    #[serde(default)]
    pub responses: Vec<TxnOpJson>,
}

impl TxnJson {
    /// From the library's response.
    ///
    /// # Errors
    /// `not_utf8`.
    pub fn new(enc: Encoding, r: &TxnResponse) -> Result<TxnJson> {
        Ok(TxnJson {
            header: (&r.header).into(),
            succeeded: r.succeeded,
            responses: r
                .responses
                .iter()
                .map(|op| {
                    Ok(match op {
                        TxnOpResponse::Put(p) => TxnOpJson::Put(PutJson::new(enc, p)?),
                        TxnOpResponse::Range(p) => TxnOpJson::Range(RangeJson::new(enc, p)?),
                        TxnOpResponse::Delete(p) => TxnOpJson::Delete(DeleteJson::new(enc, p)?),
                        TxnOpResponse::Txn(p) => TxnOpJson::Txn(TxnJson::new(enc, p)?),
                    })
                })
                .collect::<Result<_>>()?,
        })
    }

    /// The library's response.
    ///
    /// # Errors
    /// `bad_encoding`, `bad_answer`.
    pub fn to_response(&self, enc: Encoding) -> Result<TxnResponse> {
        Ok(TxnResponse {
            header: self.header.to_header()?,
            succeeded: self.succeeded,
            responses: self
                .responses
                .iter()
                .map(|op| {
                    Ok(match op {
                        TxnOpJson::Put(p) => TxnOpResponse::Put(p.to_response(enc)?),
                        TxnOpJson::Range(p) => TxnOpResponse::Range(p.to_response(enc)?),
                        TxnOpJson::Delete(p) => TxnOpResponse::Delete(p.to_response(enc)?),
                        TxnOpJson::Txn(p) => TxnOpResponse::Txn(p.to_response(enc)?),
                    })
                })
                .collect::<Result<_>>()?,
        })
    }
}

/// `POST /v1/kv/compact`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactBody {
    /// Compact history below this revision.
    pub revision: i64,
}

/// An answer that is only a header (compact, lease revoke).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeaderOnlyJson {
    /// Header.
    pub header: HeaderJson,
}

/// `POST /v1/watch`: an SSE stream.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchBody {
    /// The key, prefix or range start.
    pub key: String,
    /// Exclusive end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    /// `key` is a prefix.
    #[serde(skip_serializing_if = "is_false")]
    pub prefix: bool,
    /// From `key` on.
    #[serde(skip_serializing_if = "is_false")]
    pub from_key: bool,
    /// First revision wanted (0: this member's next). To resume a
    /// cancelled watch, its `resume_revision`.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub start_revision: i64,
    /// Leave puts out.
    #[serde(skip_serializing_if = "is_false")]
    pub no_put: bool,
    /// Leave deletes out.
    #[serde(skip_serializing_if = "is_false")]
    pub no_delete: bool,
    /// With each event's previous key-value.
    #[serde(skip_serializing_if = "is_false")]
    pub prev_kv: bool,
    /// Progress notifications when idle.
    #[serde(skip_serializing_if = "is_false")]
    pub progress_notify: bool,
}

impl WatchBody {
    /// From the library's request.
    ///
    /// # Errors
    /// `not_utf8`.
    pub fn new(enc: Encoding, r: &WatchRequest) -> Result<WatchBody> {
        let s = Selector::new(enc, &r.range)?;
        Ok(WatchBody {
            key: s.key,
            range_end: s.range_end,
            prefix: s.prefix,
            from_key: s.from_key,
            start_revision: r.start_revision,
            no_put: r.no_put,
            no_delete: r.no_delete,
            prev_kv: r.prev_kv,
            progress_notify: r.progress_notify,
        })
    }

    /// The library's request.
    ///
    /// # Errors
    /// Bad keys, or more than one range form.
    pub fn into_request(self, enc: Encoding) -> Result<WatchRequest> {
        Ok(WatchRequest {
            range: key_range(
                enc,
                &self.key,
                self.range_end.as_deref(),
                self.prefix,
                self.from_key,
            )?,
            start_revision: self.start_revision,
            no_put: self.no_put,
            no_delete: self.no_delete,
            prev_kv: self.prev_kv,
            progress_notify: self.progress_notify,
        })
    }
}

/// The data of a watch's first SSE event, `created`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatchCreatedJson {
    /// The watch's id on the member.
    pub watch_id: u64,
    /// The member serving it.
    pub member_id: u64,
    /// The start revision asked for.
    pub start_revision: i64,
}

/// One event of a watch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventJson {
    /// `put` or `delete`.
    #[serde(rename = "type")]
    pub kind: EventKindJson,
    /// The key after the change.
    pub kv: KvJson,
    /// Before, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KvJson>,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKindJson {
    /// Created or updated.
    Put,
    /// Deleted.
    Delete,
}

/// One SSE `watch` event's data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatchJson {
    /// Header; `revision` is a bookmark: every matching event at or below
    /// it has been sent.
    pub header: HeaderJson,
    /// The events (none: a progress notification).
    #[serde(default)]
    pub events: Vec<EventJson>,
}

impl WatchJson {
    /// From the library's response.
    ///
    /// # Errors
    /// `not_utf8`.
    pub fn new(enc: Encoding, r: &WatchResponse) -> Result<WatchJson> {
        Ok(WatchJson {
            header: (&r.header).into(),
            events: r
                .events
                .iter()
                .map(|e| {
                    Ok(EventJson {
                        kind: match e.kind {
                            EventKind::Put => EventKindJson::Put,
                            EventKind::Delete => EventKindJson::Delete,
                        },
                        kv: KvJson::new(enc, &e.kv)?,
                        prev_kv: e
                            .prev_kv
                            .as_ref()
                            .map(|kv| KvJson::new(enc, kv))
                            .transpose()?,
                    })
                })
                .collect::<Result<_>>()?,
        })
    }

    /// The library's response.
    ///
    /// # Errors
    /// `bad_encoding`, `bad_answer`.
    pub fn to_response(&self, enc: Encoding) -> Result<WatchResponse> {
        Ok(WatchResponse {
            header: self.header.to_header()?,
            events: self
                .events
                .iter()
                .map(|e| {
                    Ok(WatchEvent {
                        kind: match e.kind {
                            EventKindJson::Put => EventKind::Put,
                            EventKindJson::Delete => EventKind::Delete,
                        },
                        kv: e.kv.to_kv(enc)?,
                        prev_kv: e.prev_kv.as_ref().map(|kv| kv.to_kv(enc)).transpose()?,
                    })
                })
                .collect::<Result<_>>()?,
        })
    }
}

/// `POST /v1/lease/grant`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// Time to live, milliseconds.
    pub ttl_ms: u64,
    /// An id of the caller's choosing (0 or absent: the member chooses).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub id: i64,
}

/// A body naming one lease.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    /// The lease.
    pub id: i64,
    /// For time-to-live: list the attached keys.
    #[serde(default, skip_serializing_if = "is_false")]
    pub keys: bool,
}

/// The answer to a lease grant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GrantJson {
    /// Header.
    pub header: HeaderJson,
    /// The lease.
    pub id: i64,
    /// The TTL granted, milliseconds.
    pub ttl_ms: u64,
    /// The TTL asked for, milliseconds.
    pub requested_ttl_ms: u64,
    /// The TTL asked for was below the minimum.
    pub rounded_up: bool,
}

impl GrantJson {
    /// From the library's response.
    pub fn new(r: &LeaseGrantResponse) -> GrantJson {
        GrantJson {
            header: (&r.header).into(),
            id: r.id.0,
            ttl_ms: ms(r.ttl),
            requested_ttl_ms: ms(r.requested_ttl),
            rounded_up: r.rounded_up(),
        }
    }

    /// The library's response.
    ///
    /// # Errors
    /// `bad_answer`.
    pub fn to_response(&self) -> Result<LeaseGrantResponse> {
        Ok(LeaseGrantResponse {
            header: self.header.to_header()?,
            id: LeaseId(self.id),
            ttl: Duration::from_millis(self.ttl_ms),
            requested_ttl: Duration::from_millis(self.requested_ttl_ms),
        })
    }
}

/// The answer to one lease renewal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeepAliveJson {
    /// Header.
    pub header: HeaderJson,
    /// The lease.
    pub id: i64,
    /// Its TTL from the renewal, milliseconds.
    pub ttl_ms: u64,
}

impl KeepAliveJson {
    /// From the library's response.
    pub fn new(r: &LeaseKeepAliveResponse) -> KeepAliveJson {
        KeepAliveJson {
            header: (&r.header).into(),
            id: r.id.0,
            ttl_ms: ms(r.ttl),
        }
    }

    /// The library's response.
    ///
    /// # Errors
    /// `bad_answer`.
    pub fn to_response(&self) -> Result<LeaseKeepAliveResponse> {
        Ok(LeaseKeepAliveResponse {
            header: self.header.to_header()?,
            id: LeaseId(self.id),
            ttl: Duration::from_millis(self.ttl_ms),
        })
    }
}

/// The answer to a lease's time-to-live.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TtlJson {
    /// Header.
    pub header: HeaderJson,
    /// The lease.
    pub id: i64,
    /// Time left, milliseconds.
    pub ttl_ms: u64,
    /// The TTL granted, milliseconds.
    pub granted_ttl_ms: u64,
    /// Its keys, when asked for.
    #[serde(default)]
    pub keys: Vec<String>,
}

impl TtlJson {
    /// From the library's response.
    ///
    /// # Errors
    /// `not_utf8`.
    pub fn new(enc: Encoding, r: &LeaseTimeToLiveResponse) -> Result<TtlJson> {
        Ok(TtlJson {
            header: (&r.header).into(),
            id: r.id.0,
            ttl_ms: ms(r.ttl),
            granted_ttl_ms: ms(r.granted_ttl),
            keys: r
                .keys
                .iter()
                .map(|k| enc.encode("key", k))
                .collect::<Result<_>>()?,
        })
    }

    /// The library's response.
    ///
    /// # Errors
    /// `bad_encoding`, `bad_answer`.
    pub fn to_response(&self, enc: Encoding) -> Result<LeaseTimeToLiveResponse> {
        Ok(LeaseTimeToLiveResponse {
            header: self.header.to_header()?,
            id: LeaseId(self.id),
            ttl: Duration::from_millis(self.ttl_ms),
            granted_ttl: Duration::from_millis(self.granted_ttl_ms),
            keys: self
                .keys
                .iter()
                .map(|k| enc.decode("key", k))
                .collect::<Result<_>>()?,
        })
    }
}

/// One lease in [`LeasesJson`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseStatusJson {
    /// The lease.
    pub id: i64,
    /// The TTL granted, milliseconds.
    pub granted_ttl_ms: u64,
}

/// The answer to a lease list.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeasesJson {
    /// Header.
    pub header: HeaderJson,
    /// The leases, by id.
    #[serde(default)]
    pub leases: Vec<LeaseStatusJson>,
}

impl LeasesJson {
    /// From the library's response.
    pub fn new(r: &LeaseLeasesResponse) -> LeasesJson {
        LeasesJson {
            header: (&r.header).into(),
            leases: r
                .leases
                .iter()
                .map(|l| LeaseStatusJson {
                    id: l.id.0,
                    granted_ttl_ms: ms(l.granted_ttl),
                })
                .collect(),
        }
    }

    /// The library's response.
    ///
    /// # Errors
    /// `bad_answer`.
    pub fn to_response(&self) -> Result<LeaseLeasesResponse> {
        Ok(LeaseLeasesResponse {
            header: self.header.to_header()?,
            leases: self
                .leases
                .iter()
                .map(|l| LeaseStatus {
                    id: LeaseId(l.id),
                    granted_ttl: Duration::from_millis(l.granted_ttl_ms),
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ResponseHeader {
        ResponseHeader {
            cluster_id: ClusterId::derive(&[NodeId(1), NodeId(2)], "t"),
            member_id: NodeId(2),
            revision: 42,
            raft_term: 3,
        }
    }

    fn kv(key: &[u8], value: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: 4,
            mod_revision: 5,
            version: 2,
            value: value.to_vec(),
            lease: LeaseId(9),
        }
    }

    /// Through JSON text, as the other side reads it.
    fn via_text<T: Serialize + serde::de::DeserializeOwned>(v: &T) -> T {
        serde_json::from_str(&serde_json::to_string(v).expect("encodes")).expect("decodes")
    }

    #[test]
    fn keys_decode_in_both_encodings_and_ranges_are_exclusive_forms() {
        let p: PutBody = serde_json::from_str(r#"{"key":"YQ==","value":"Yg=="}"#).expect("json");
        let r = p.into_request(Encoding::Base64).expect("base64");
        assert_eq!(
            (r.key.as_slice(), r.value.as_slice()),
            (&b"a"[..], &b"b"[..])
        );
        let p: PutBody = serde_json::from_str(r#"{"key":"a","value":"b"}"#).expect("json");
        assert!(
            p.into_request(Encoding::Base64).is_err(),
            "`a` is not base64"
        );
        let r: RangeBody =
            serde_json::from_str(r#"{"key":"app/","prefix":true,"range_end":"z"}"#).expect("json");
        assert!(
            r.into_request(Encoding::Utf8).is_err(),
            "prefix and range_end together"
        );
        assert!(
            serde_json::from_str::<PutBody>(r#"{"key":"a","nope":1}"#).is_err(),
            "unknown fields"
        );
        assert!(matches!(Encoding::Utf8.encode("value", &[0xff]), Err(e) if e.code == "not_utf8"));
    }

    #[test]
    fn a_transaction_converts_with_every_op_and_compare_form() {
        let t: TxnBody = serde_json::from_str(
            r#"{"compare":[{"key":"k","op":"=","value":"v"},{"key":"k","op":">","mod_revision":3}],
                "success":[{"put":{"key":"k","value":"w"}},{"range":{"key":"k"}},
                           {"txn":{"success":[{"delete":{"key":"a","prefix":true}}]}}],
                "failure":[]}"#,
        )
        .expect("json");
        let t = t.into_request(Encoding::Utf8).expect("valid");
        assert_eq!(t.compare.len(), 2);
        assert_eq!(t.success.len(), 3);
        let bad: TxnBody =
            serde_json::from_str(r#"{"compare":[{"key":"k","op":"=","value":"v","version":1}]}"#)
                .expect("json");
        assert!(
            bad.into_request(Encoding::Utf8).is_err(),
            "two compare targets"
        );
    }

    #[test]
    fn every_request_survives_client_to_server() {
        let ranges = [
            KeyRange::key(&b"k\xff\x00"[..]),
            KeyRange::prefix(""),
            KeyRange::range("a", "b"),
            KeyRange::From(b"m".to_vec()),
        ];
        for range in ranges {
            let r = RangeRequest {
                limit: 3,
                revision: 7,
                keys_only: true,
                count_only: false,
                sort_target: SortTarget::ModRevision,
                sort_order: SortOrder::Descend,
                ..RangeRequest::new(range.clone())
            };
            for c in [
                Consistency::Linearizable,
                Consistency::Serializable,
                Consistency::Lease,
            ] {
                let body = via_text(&RangeBody::new(Encoding::Base64, &r, c).expect("encodes"));
                assert_eq!(body.consistency().expect("consistent"), c);
                assert_eq!(body.into_request(Encoding::Base64).expect("decodes"), r);
            }
            let d = DeleteRequest {
                range: range.clone(),
                prev_kv: true,
            };
            let body = via_text(&DeleteBody::new(Encoding::Base64, &d).expect("encodes"));
            assert_eq!(body.into_request(Encoding::Base64).expect("decodes"), d);
            let w = WatchRequest::new(range)
                .from_revision(5)
                .with_prev_kv()
                .no_delete()
                .with_progress_notify();
            let body = via_text(&WatchBody::new(Encoding::Base64, &w).expect("encodes"));
            assert_eq!(body.into_request(Encoding::Base64).expect("decodes"), w);
        }
        let put = PutRequest {
            lease: LeaseId(5),
            prev_kv: true,
            ignore_value: true,
            ignore_lease: false,
            ..PutRequest::new(&b"\x00k"[..], &b"\xffv"[..])
        };
        let body = via_text(&PutBody::new(Encoding::Base64, &put).expect("encodes"));
        assert_eq!(body.into_request(Encoding::Base64).expect("decodes"), put);
        let targets = [
            CompareTarget::Value(b"v".to_vec()),
            CompareTarget::Version(1),
            CompareTarget::CreateRevision(2),
            CompareTarget::ModRevision(3),
            CompareTarget::Lease(LeaseId(4)),
        ];
        let txn = TxnRequest {
            compare: targets
                .iter()
                .zip([
                    CompareOp::Equal,
                    CompareOp::NotEqual,
                    CompareOp::Less,
                    CompareOp::Greater,
                    CompareOp::Equal,
                ])
                .map(|(t, op)| Compare {
                    range: KeyRange::prefix("p"),
                    op,
                    target: t.clone(),
                })
                .collect(),
            success: vec![
                TxnOp::Put(put.clone()),
                TxnOp::Range(RangeRequest::new(KeyRange::key("k"))),
                TxnOp::Delete(DeleteRequest::new(KeyRange::range("a", "c"))),
            ],
            failure: vec![TxnOp::Txn(TxnRequest {
                compare: vec![],
                success: vec![TxnOp::Put(PutRequest::new("x", "y"))],
                failure: vec![],
            })],
        };
        let body = via_text(
            &TxnBody::new(Encoding::Base64, &txn, Consistency::Serializable).expect("encodes"),
        );
        assert_eq!(
            body.consistency().expect("consistent"),
            Consistency::Serializable
        );
        assert_eq!(body.into_request(Encoding::Base64).expect("decodes"), txn);
    }

    #[test]
    fn every_response_survives_server_to_client() {
        let h = header();
        let put = PutResponse {
            header: h.clone(),
            prev_kv: Some(kv(b"k", b"\xff")),
        };
        let range = RangeResponse {
            header: h.clone(),
            kvs: vec![kv(b"a", b"1"), kv(b"b", b"")],
            more: true,
            count: 5,
        };
        let delete = DeleteResponse {
            header: h.clone(),
            deleted: 1,
            prev_kvs: vec![kv(b"a", b"1")],
        };
        let txn = TxnResponse {
            header: h.clone(),
            succeeded: true,
            responses: vec![
                TxnOpResponse::Put(put.clone()),
                TxnOpResponse::Range(range.clone()),
                TxnOpResponse::Delete(delete.clone()),
                TxnOpResponse::Txn(TxnResponse {
                    header: h.clone(),
                    succeeded: false,
                    responses: vec![],
                }),
            ],
        };
        let e = Encoding::Base64;
        let j = via_text(&PutJson::new(e, &put).expect("encodes"));
        assert_eq!(j.to_response(e).expect("decodes"), put);
        let j = via_text(&RangeJson::new(e, &range).expect("encodes"));
        assert_eq!(j.to_response(e).expect("decodes"), range);
        let j = via_text(&DeleteJson::new(e, &delete).expect("encodes"));
        assert_eq!(j.to_response(e).expect("decodes"), delete);
        let j = via_text(&TxnJson::new(e, &txn).expect("encodes"));
        assert_eq!(j.to_response(e).expect("decodes"), txn);
        let watch = WatchResponse {
            header: h.clone(),
            events: vec![
                WatchEvent {
                    kind: EventKind::Put,
                    kv: kv(b"a", b"2"),
                    prev_kv: Some(kv(b"a", b"1")),
                },
                WatchEvent {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: b"b".to_vec(),
                        mod_revision: 5,
                        ..KeyValue::default()
                    },
                    prev_kv: None,
                },
            ],
        };
        let j = via_text(&WatchJson::new(e, &watch).expect("encodes"));
        assert_eq!(j.to_response(e).expect("decodes"), watch);
        let grant = LeaseGrantResponse {
            header: h.clone(),
            id: LeaseId(7),
            ttl: Duration::from_millis(1500),
            requested_ttl: Duration::from_millis(100),
        };
        assert_eq!(
            via_text(&GrantJson::new(&grant)).to_response().expect("ok"),
            grant
        );
        let ka = LeaseKeepAliveResponse {
            header: h.clone(),
            id: LeaseId(7),
            ttl: Duration::from_secs(3),
        };
        assert_eq!(
            via_text(&KeepAliveJson::new(&ka))
                .to_response()
                .expect("ok"),
            ka
        );
        let ttl = LeaseTimeToLiveResponse {
            header: h.clone(),
            id: LeaseId(7),
            ttl: Duration::from_millis(2900),
            granted_ttl: Duration::from_secs(3),
            keys: vec![b"a".to_vec(), b"\xff".to_vec()],
        };
        let j = via_text(&TtlJson::new(e, &ttl).expect("encodes"));
        assert_eq!(j.to_response(e).expect("decodes"), ttl);
        let leases = LeaseLeasesResponse {
            header: h,
            leases: vec![LeaseStatus {
                id: LeaseId(7),
                granted_ttl: Duration::from_secs(3),
            }],
        };
        assert_eq!(
            via_text(&LeasesJson::new(&leases))
                .to_response()
                .expect("ok"),
            leases
        );
    }

    #[test]
    fn a_header_without_the_full_cluster_id_keeps_its_short_form() {
        let mut j = HeaderJson::from(&header());
        j.cluster_id_full.clear();
        let h = j.to_header().expect("short hex");
        assert_eq!(h.cluster_id.short(), header().cluster_id.short());
        j.cluster_id = "zz".into();
        assert_eq!(
            j.to_header().map_err(|e| e.code).err().as_deref(),
            Some("bad_answer")
        );
    }
}
