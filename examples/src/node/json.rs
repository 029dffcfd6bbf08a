//! The JSON shapes of the client API and their conversion to and from
//! ha's types.
//!
//! Keys and values are base64 (standard alphabet, padded) by default, as
//! in etcd's JSON gateway; with `?encoding=utf8` on any route they are
//! plain UTF-8 strings both ways (a stored key or value that is not UTF-8
//! then answers `422 not_utf8`).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ha_core::{
    Compare, CompareOp, CompareTarget, DeleteRequest, DeleteResponse, EventKind, KeyRange,
    KeyValue, LeaseId, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader,
    SortOrder, SortTarget, TxnOp, TxnOpResponse, TxnRequest, TxnResponse, WatchRequest,
    WatchResponse,
};
use serde::{Deserialize, Serialize};

use super::error::ApiError;

/// How keys and values are written in JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Standard base64 (the default).
    #[default]
    Base64,
    /// UTF-8 text.
    Utf8,
}

impl Encoding {
    /// Decodes a key or value from a request.
    ///
    /// # Errors
    /// `bad_encoding` naming `field`.
    pub fn decode(self, field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
        match self {
            Encoding::Base64 => STANDARD.decode(text).map_err(|e| {
                ApiError::bad_encoding(
                    field,
                    format!("not base64 ({e}); or ask with ?encoding=utf8"),
                )
            }),
            Encoding::Utf8 => Ok(text.as_bytes().to_vec()),
        }
    }

    /// Encodes a key or value for a response.
    ///
    /// # Errors
    /// `not_utf8` when asked for UTF-8 and the bytes are not.
    pub fn encode(self, field: &str, bytes: &[u8]) -> Result<String, ApiError> {
        match self {
            Encoding::Base64 => Ok(STANDARD.encode(bytes)),
            Encoding::Utf8 => {
                String::from_utf8(bytes.to_vec()).map_err(|_| ApiError::not_utf8(field))
            }
        }
    }
}

/// What every response carries.
#[derive(Debug, Serialize)]
pub struct HeaderJson {
    /// The group (hex, first 8 bytes).
    pub cluster_id: String,
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
            member_id: h.member_id.0,
            revision: h.revision,
            raft_term: h.raft_term,
        }
    }
}

/// A key-value.
#[derive(Debug, Serialize)]
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

fn kv_json(enc: Encoding, kv: &KeyValue) -> Result<KvJson, ApiError> {
    Ok(KvJson {
        key: enc.encode("key", &kv.key)?,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: enc.encode("value", &kv.value)?,
        lease: kv.lease.0,
    })
}

fn kvs_json(enc: Encoding, kvs: &[KeyValue]) -> Result<Vec<KvJson>, ApiError> {
    kvs.iter().map(|kv| kv_json(enc, kv)).collect()
}

/// Which keys: `key` alone is one key; with `prefix` every key starting
/// with it; with `range_end` `[key, range_end)`; with `from_key` every key
/// at or after it. At most one of the three.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

fn key_range(
    enc: Encoding,
    key: &str,
    range_end: Option<&str>,
    prefix: bool,
    from_key: bool,
) -> Result<KeyRange, ApiError> {
    let key = enc.decode("key", key)?;
    match (range_end, prefix, from_key) {
        (None, false, false) => Ok(KeyRange::Key(key)),
        (None, true, false) => Ok(KeyRange::Prefix(key)),
        (None, false, true) => Ok(KeyRange::From(key)),
        (Some(end), false, false) => Ok(KeyRange::Range {
            start: key,
            end: enc.decode("range_end", end)?,
        }),
        _ => Err(ApiError::bad_request(
            "give at most one of range_end, prefix and from_key",
        )),
    }
}

/// `POST /v1/kv/put`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PutBody {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// A lease to attach the key to (0: none).
    pub lease: i64,
    /// Return the previous key-value.
    pub prev_kv: bool,
    /// Keep the current value.
    pub ignore_value: bool,
    /// Keep the current lease.
    pub ignore_lease: bool,
}

impl PutBody {
    /// The library's request.
    ///
    /// # Errors
    /// A key or value that does not decode.
    pub fn into_request(self, enc: Encoding) -> Result<PutRequest, ApiError> {
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
#[derive(Debug, Serialize)]
pub struct PutJson {
    /// Header.
    pub header: HeaderJson,
    /// The previous key-value, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KvJson>,
}

/// Converts a put response.
///
/// # Errors
/// `not_utf8`.
pub fn put_json(enc: Encoding, r: &PutResponse) -> Result<PutJson, ApiError> {
    Ok(PutJson {
        header: (&r.header).into(),
        prev_kv: r.prev_kv.as_ref().map(|kv| kv_json(enc, kv)).transpose()?,
    })
}

/// Sort target.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
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
#[derive(Clone, Copy, Debug, Default, Deserialize)]
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

/// `POST /v1/kv/range` (and a range inside a transaction).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RangeBody {
    /// The key, prefix or range start.
    pub key: String,
    /// Exclusive end.
    pub range_end: Option<String>,
    /// `key` is a prefix.
    pub prefix: bool,
    /// From `key` on.
    pub from_key: bool,
    /// At most this many (0: all).
    pub limit: u64,
    /// At this revision (0: current).
    pub revision: i64,
    /// No values.
    pub keys_only: bool,
    /// Only the count.
    pub count_only: bool,
    /// Sort by.
    pub sort_target: SortTargetJson,
    /// Sort direction.
    pub sort_order: SortOrderJson,
    /// Read this member's state at once (may be stale) instead of a
    /// linearizable read.
    pub serializable: bool,
}

impl RangeBody {
    /// The library's request.
    ///
    /// # Errors
    /// Bad keys, or more than one range form.
    pub fn into_request(self, enc: Encoding) -> Result<RangeRequest, ApiError> {
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
            sort_target: match self.sort_target {
                SortTargetJson::Key => SortTarget::Key,
                SortTargetJson::Version => SortTarget::Version,
                SortTargetJson::CreateRevision => SortTarget::CreateRevision,
                SortTargetJson::ModRevision => SortTarget::ModRevision,
                SortTargetJson::Value => SortTarget::Value,
            },
            sort_order: match self.sort_order {
                SortOrderJson::None => SortOrder::None,
                SortOrderJson::Ascend => SortOrder::Ascend,
                SortOrderJson::Descend => SortOrder::Descend,
            },
        })
    }
}

/// The answer to a range.
#[derive(Debug, Serialize)]
pub struct RangeJson {
    /// Header.
    pub header: HeaderJson,
    /// The key-values.
    pub kvs: Vec<KvJson>,
    /// More matched than `limit`.
    pub more: bool,
    /// How many matched.
    pub count: u64,
}

/// Converts a range response.
///
/// # Errors
/// `not_utf8`.
pub fn range_json(enc: Encoding, r: &RangeResponse) -> Result<RangeJson, ApiError> {
    Ok(RangeJson {
        header: (&r.header).into(),
        kvs: kvs_json(enc, &r.kvs)?,
        more: r.more,
        count: r.count,
    })
}

/// `POST /v1/kv/get`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GetBody {
    /// The key.
    pub key: String,
    /// At this revision (0: current).
    pub revision: i64,
    /// A local read.
    pub serializable: bool,
}

/// The answer to a get.
#[derive(Debug, Serialize)]
pub struct GetJson {
    /// Header.
    pub header: HeaderJson,
    /// The key-value, or null.
    pub kv: Option<KvJson>,
}

/// `POST /v1/kv/delete`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeleteBody {
    /// The key, prefix or range start.
    pub key: String,
    /// Exclusive end.
    pub range_end: Option<String>,
    /// `key` is a prefix.
    pub prefix: bool,
    /// From `key` on.
    pub from_key: bool,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

impl DeleteBody {
    /// The library's request.
    ///
    /// # Errors
    /// Bad keys, or more than one range form.
    pub fn into_request(self, enc: Encoding) -> Result<DeleteRequest, ApiError> {
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
#[derive(Debug, Serialize)]
pub struct DeleteJson {
    /// Header.
    pub header: HeaderJson,
    /// How many were deleted.
    pub deleted: u64,
    /// The deleted key-values, when asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prev_kvs: Vec<KvJson>,
}

/// Converts a delete response.
///
/// # Errors
/// `not_utf8`.
pub fn delete_json(enc: Encoding, r: &DeleteResponse) -> Result<DeleteJson, ApiError> {
    Ok(DeleteJson {
        header: (&r.header).into(),
        deleted: r.deleted,
        prev_kvs: kvs_json(enc, &r.prev_kvs)?,
    })
}

/// Comparison operator.
#[derive(Clone, Copy, Debug, Deserialize)]
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareBody {
    /// The key (or prefix, or range start).
    pub key: String,
    /// Exclusive end.
    #[serde(default)]
    pub range_end: Option<String>,
    /// `key` is a prefix.
    #[serde(default)]
    pub prefix: bool,
    /// From `key` on.
    #[serde(default)]
    pub from_key: bool,
    /// `=`, `!=`, `<`, `>`.
    pub op: OpJson,
    /// Compare the value.
    #[serde(default)]
    pub value: Option<String>,
    /// Compare the version.
    #[serde(default)]
    pub version: Option<i64>,
    /// Compare the create revision.
    #[serde(default)]
    pub create_revision: Option<i64>,
    /// Compare the mod revision.
    #[serde(default)]
    pub mod_revision: Option<i64>,
    /// Compare the lease.
    #[serde(default)]
    pub lease: Option<i64>,
}

impl CompareBody {
    fn into_compare(self, enc: Encoding) -> Result<Compare, ApiError> {
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
        if targets.len() != 1 {
            return Err(ApiError::bad_request(
                "a compare needs exactly one of value, version, create_revision, mod_revision, lease",
            ));
        }
        let target = targets.remove(0);
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
#[derive(Debug, Deserialize)]
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
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TxnBody {
    /// Conditions, all of which must hold.
    pub compare: Vec<CompareBody>,
    /// Run when they hold.
    pub success: Vec<TxnOpBody>,
    /// Run otherwise.
    pub failure: Vec<TxnOpBody>,
    /// A read-only transaction may read locally.
    pub serializable: bool,
}

/// Nesting deeper than this is refused before it is converted (serde_json
/// already stops at 128 levels of JSON).
const MAX_TXN_DEPTH: usize = 16;

impl TxnBody {
    /// The library's request.
    ///
    /// # Errors
    /// Bad keys, compares or too deep nesting.
    pub fn into_request(self, enc: Encoding) -> Result<TxnRequest, ApiError> {
        self.convert(enc, 0)
    }

    fn convert(self, enc: Encoding, depth: usize) -> Result<TxnRequest, ApiError> {
        if depth > MAX_TXN_DEPTH {
            return Err(ApiError::bad_request(format!(
                "transactions nest at most {MAX_TXN_DEPTH} deep"
            )));
        }
        let ops = |ops: Vec<TxnOpBody>| -> Result<Vec<TxnOp>, ApiError> {
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
                .collect::<Result<_, _>>()?,
            success: ops(self.success)?,
            failure: ops(self.failure)?,
        })
    }
}

/// The answer to one operation of a transaction.
#[derive(Debug, Serialize)]
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
#[derive(Debug, Serialize)]
pub struct TxnJson {
    /// Header.
    pub header: HeaderJson,
    /// The compares held.
    pub succeeded: bool,
    /// One answer per operation of the branch that ran.
    pub responses: Vec<TxnOpJson>,
}

/// Converts a transaction response.
///
/// # Errors
/// `not_utf8`.
pub fn txn_json(enc: Encoding, r: &TxnResponse) -> Result<TxnJson, ApiError> {
    Ok(TxnJson {
        header: (&r.header).into(),
        succeeded: r.succeeded,
        responses: r
            .responses
            .iter()
            .map(|op| {
                Ok(match op {
                    TxnOpResponse::Put(p) => TxnOpJson::Put(put_json(enc, p)?),
                    TxnOpResponse::Range(p) => TxnOpJson::Range(range_json(enc, p)?),
                    TxnOpResponse::Delete(p) => TxnOpJson::Delete(delete_json(enc, p)?),
                    TxnOpResponse::Txn(p) => TxnOpJson::Txn(txn_json(enc, p)?),
                })
            })
            .collect::<Result<_, ApiError>>()?,
    })
}

/// `POST /v1/kv/compact`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactBody {
    /// Compact history below this revision.
    pub revision: i64,
}

/// `POST /v1/watch`: an SSE stream.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchBody {
    /// The key, prefix or range start.
    pub key: String,
    /// Exclusive end.
    pub range_end: Option<String>,
    /// `key` is a prefix.
    pub prefix: bool,
    /// From `key` on.
    pub from_key: bool,
    /// First revision wanted (0: this member's next). To resume a
    /// cancelled watch, its `resume_revision`.
    pub start_revision: i64,
    /// Leave puts out.
    pub no_put: bool,
    /// Leave deletes out.
    pub no_delete: bool,
    /// With each event's previous key-value.
    pub prev_kv: bool,
    /// Progress notifications when idle.
    pub progress_notify: bool,
}

impl WatchBody {
    /// The library's request.
    ///
    /// # Errors
    /// Bad keys, or more than one range form.
    pub fn into_request(self, enc: Encoding) -> Result<WatchRequest, ApiError> {
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

/// One event of a watch.
#[derive(Debug, Serialize)]
pub struct EventJson {
    /// `put` or `delete`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The key after the change.
    pub kv: KvJson,
    /// Before, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KvJson>,
}

/// One SSE `watch` event's data.
#[derive(Debug, Serialize)]
pub struct WatchJson {
    /// Header; `revision` is a bookmark: every matching event at or below
    /// it has been sent.
    pub header: HeaderJson,
    /// The events (none: a progress notification).
    pub events: Vec<EventJson>,
}

/// Converts a watch response.
///
/// # Errors
/// `not_utf8`.
pub fn watch_json(enc: Encoding, r: &WatchResponse) -> Result<WatchJson, ApiError> {
    Ok(WatchJson {
        header: (&r.header).into(),
        events: r
            .events
            .iter()
            .map(|e| {
                Ok(EventJson {
                    kind: match e.kind {
                        EventKind::Put => "put",
                        EventKind::Delete => "delete",
                    },
                    kv: kv_json(enc, &e.kv)?,
                    prev_kv: e.prev_kv.as_ref().map(|kv| kv_json(enc, kv)).transpose()?,
                })
            })
            .collect::<Result<_, ApiError>>()?,
    })
}

/// `POST /v1/lease/grant`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// Time to live, milliseconds.
    pub ttl_ms: u64,
    /// An id of the caller's choosing (0 or absent: the member chooses).
    #[serde(default)]
    pub id: i64,
}

/// A body naming one lease.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    /// The lease.
    pub id: i64,
    /// For time-to-live: list the attached keys.
    #[serde(default)]
    pub keys: bool,
}

/// Milliseconds of a duration, for JSON.
pub fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// `POST /v1/members/add`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemberBody {
    /// The new member's id (never used before).
    pub id: u64,
    /// Its peer address, `IP:port`.
    pub address: String,
    /// Make it a voter once caught up (default true).
    #[serde(default = "yes")]
    pub promote_when_caught_up: bool,
}

fn yes() -> bool {
    true
}

/// A body naming one member.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    /// The member.
    pub id: u64,
}

/// `POST /v1/leader/transfer`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransferBody {
    /// The voter to hand leadership to (absent: another voter this member
    /// chooses).
    pub to: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
