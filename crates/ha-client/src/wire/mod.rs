//! The client API's wire format, shared by the server (ha-node) and
//! [`crate::RemoteKv`]: one definition of every JSON shape and of the
//! error codes, used in both directions.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /v1/kv/put` | [`PutBody`] | [`PutJson`] |
//! | `POST /v1/kv/get` | [`GetBody`] | [`GetJson`] |
//! | `POST /v1/kv/range` | [`RangeBody`] | [`RangeJson`] |
//! | `POST /v1/kv/delete` | [`DeleteBody`] | [`DeleteJson`] |
//! | `POST /v1/kv/txn` | [`TxnBody`] | [`TxnJson`] |
//! | `POST /v1/kv/compact` | [`CompactBody`] | [`HeaderOnlyJson`] |
//! | `POST /v1/watch` | [`WatchBody`] | SSE: `created` ([`WatchCreatedJson`]), `watch` ([`WatchJson`]) …, `cancelled` (an error body with `resume_revision`) |
//! | `POST /v1/lease/grant` | [`GrantBody`] | [`GrantJson`] |
//! | `POST /v1/lease/keepalive` | [`LeaseBody`] | [`KeepAliveJson`] |
//! | `POST /v1/lease/revoke` | [`LeaseBody`] | [`HeaderOnlyJson`] |
//! | `POST /v1/lease/ttl` | [`LeaseBody`] | [`TtlJson`] |
//! | `GET /v1/lease/list` | — | [`LeasesJson`] |
//!
//! Every route takes `?timeout_ms=` (the deadline) and `?encoding=`; an
//! error answers its HTTP status with a [`WireError`] body.

mod error;
mod json;

pub use error::{RemoteStorageError, WireError, cancel_reason};
pub use json::{
    CompactBody, CompareBody, ConsistencyJson, DeleteBody, DeleteJson, Encoding, EventJson,
    EventKindJson, GetBody, GetJson, GrantBody, GrantJson, HeaderJson, HeaderOnlyJson,
    KeepAliveJson, KvJson, LeaseBody, LeaseStatusJson, LeasesJson, MAX_TXN_DEPTH, OpJson, PutBody,
    PutJson, RangeBody, RangeJson, Selector, SortOrderJson, SortTargetJson, TtlJson, TxnBody,
    TxnJson, TxnOpBody, TxnOpJson, WatchBody, WatchCreatedJson, WatchJson, consistency,
    consistency_fields, ms,
};
