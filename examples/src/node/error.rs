//! Errors as HTTP answers: a stable code per `ha_core::Error` variant, the
//! right status, and the variant's fields, in one JSON body:
//!
//! ```json
//! {"error":"not_leader","message":"...","not_applied":true,"leader_hint":2}
//! ```
//!
//! `not_applied` is `Error::is_not_applied()`: true when the request
//! certainly took no effect, so retrying cannot apply it twice.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ha_core::{
    DropReason, Error, InvalidRequest, KvLimit, OverloadReason, UnknownCause, WatchCancelReason,
};
use serde_json::{Map, Value};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// Whether the request certainly took no effect.
    pub not_applied: bool,
    /// The variant's fields.
    pub details: Map<String, Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            not_applied: true,
            details: Map::new(),
        }
    }

    fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// A request body that is not the JSON the route takes.
    pub fn bad_json(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_json", reason)
    }

    /// A request whose fields make no sense together, or a bad query.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    /// A key or value that does not decode in the request's encoding.
    pub fn bad_encoding(field: &str, reason: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_encoding",
            format!("{field}: {reason}"),
        )
        .with("field", field)
    }

    /// A stored key or value that cannot be shown as UTF-8.
    pub fn not_utf8(field: &str) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_utf8",
            format!("{field} is not valid UTF-8; ask without ?encoding=utf8 (base64)"),
        )
        .with("field", field)
    }

    /// A body over the size limit.
    pub fn body_too_large(max: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds {max} bytes"),
        )
        .with("max", max)
    }

    /// The whole request ran past its deadline here (not in the library):
    /// a write may or may not have been applied.
    pub fn deadline_exceeded(after: std::time::Duration) -> Self {
        let mut e = ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            format!("no answer within {after:?}; a write may or may not have been applied"),
        )
        .with("after_ms", after.as_millis() as u64);
        e.not_applied = false;
        e
    }

    /// A route that does not exist.
    pub fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "no_such_route", "no such route")
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("error".into(), self.code.into());
        body.insert("message".into(), self.message.clone().into());
        body.insert("not_applied".into(), self.not_applied.into());
        for (k, v) in &self.details {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

fn drop_reason(r: DropReason) -> &'static str {
    match r {
        DropReason::NoLeader => "no_leader",
        DropReason::LeaderTransfer => "leader_transfer",
        DropReason::MembershipChangeInProgress => "membership_change_in_progress",
        DropReason::Rejected => "rejected",
        _ => "other",
    }
}

fn unknown_cause(c: UnknownCause) -> &'static str {
    match c {
        UnknownCause::DeadlineExceeded => "deadline_exceeded",
        UnknownCause::Shutdown => "shutdown",
        UnknownCause::ConnectionLost => "connection_lost",
        _ => "other",
    }
}

fn overload_reason(r: OverloadReason) -> &'static str {
    match r {
        OverloadReason::ApplyLag => "apply_lag",
        OverloadReason::TooManyPending => "too_many_pending",
        OverloadReason::QueueFull => "queue_full",
        OverloadReason::Uncommitted => "uncommitted",
        OverloadReason::TooManyCalls => "too_many_calls",
        _ => "other",
    }
}

fn kv_limit(l: KvLimit) -> &'static str {
    match l {
        KvLimit::KeySize => "key_size",
        KvLimit::ValueSize => "value_size",
        KvLimit::TxnOps => "txn_ops",
        KvLimit::RequestSize => "request_size",
        _ => "other",
    }
}

fn invalid_reason(r: InvalidRequest) -> &'static str {
    match r {
        InvalidRequest::EmptyKey => "empty_key",
        InvalidRequest::DuplicateKeyInTxn => "duplicate_key_in_txn",
        InvalidRequest::PutInDeletedRange => "put_in_deleted_range",
        InvalidRequest::KeyNotFound => "key_not_found",
        InvalidRequest::IgnoredFieldSet => "ignored_field_set",
        InvalidRequest::NegativeRevision => "negative_revision",
        InvalidRequest::Malformed => "malformed",
        InvalidRequest::InvalidTtl => "invalid_ttl",
        InvalidRequest::InvalidLeaseId => "invalid_lease_id",
        InvalidRequest::StaleLeaseExpiry => "stale_lease_expiry",
        _ => "other",
    }
}

/// The code of a watch's cancel reason.
pub fn cancel_reason(r: WatchCancelReason) -> &'static str {
    match r {
        WatchCancelReason::SlowConsumer => "slow_consumer",
        WatchCancelReason::MemberStopped => "member_stopped",
        _ => "other",
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        let message = e.to_string();
        let not_applied = e.is_not_applied();
        let new = |status, code| ApiError::new(status, code, message.clone());
        let mut api = match &e {
            Error::NotLeader { leader_hint } => new(S::SERVICE_UNAVAILABLE, "not_leader")
                .with("leader_hint", leader_hint.map(|l| l.0)),
            Error::Timeout { after } => {
                new(S::GATEWAY_TIMEOUT, "timeout").with("after_ms", after.as_millis() as u64)
            }
            Error::ProposalDropped { reason } => {
                new(S::SERVICE_UNAVAILABLE, "proposal_dropped").with("reason", drop_reason(*reason))
            }
            Error::OutcomeUnknown { cause } => {
                new(S::GATEWAY_TIMEOUT, "outcome_unknown").with("cause", unknown_cause(*cause))
            }
            Error::Overloaded { reason } => {
                new(S::TOO_MANY_REQUESTS, "overloaded").with("reason", overload_reason(*reason))
            }
            Error::TooLarge { size, max } => new(S::PAYLOAD_TOO_LARGE, "too_large")
                .with("size", *size)
                .with("max", *max),
            Error::Shutdown => new(S::SERVICE_UNAVAILABLE, "shutdown"),
            Error::Fatal { .. } => new(S::INTERNAL_SERVER_ERROR, "fatal"),
            Error::MembershipChangeInProgress => new(S::CONFLICT, "membership_change_in_progress"),
            Error::MemberIdReused { member } => {
                new(S::CONFLICT, "member_id_reused").with("member", member.0)
            }
            Error::UnsafeMembershipChange { healthy, required } => {
                new(S::CONFLICT, "unsafe_membership_change")
                    .with("healthy", *healthy)
                    .with("required", *required)
            }
            Error::InvalidMembershipChange { member, .. } => {
                new(S::BAD_REQUEST, "invalid_membership_change").with("member", member.0)
            }
            Error::Removed { member } => {
                new(S::SERVICE_UNAVAILABLE, "removed").with("member", member.0)
            }
            Error::Compacted { compact_revision } => {
                new(S::GONE, "compacted").with("compact_revision", *compact_revision)
            }
            Error::FutureRevision { requested, current } => new(S::BAD_REQUEST, "future_revision")
                .with("requested", *requested)
                .with("current", *current),
            Error::NoSpace { used, quota } => new(S::INSUFFICIENT_STORAGE, "no_space")
                .with("used", *used)
                .with("quota", *quota),
            Error::LimitExceeded { limit, size, max } => {
                new(S::PAYLOAD_TOO_LARGE, "limit_exceeded")
                    .with("limit", kv_limit(*limit))
                    .with("size", *size)
                    .with("max", *max)
            }
            Error::InvalidRequest { reason } => {
                new(S::BAD_REQUEST, "invalid_request").with("reason", invalid_reason(*reason))
            }
            Error::LeaseNotFound { lease } => {
                new(S::NOT_FOUND, "lease_not_found").with("lease", *lease)
            }
            Error::LeaseExists { lease } => new(S::CONFLICT, "lease_exists").with("lease", *lease),
            Error::PeerUnreachable { peer } => {
                new(S::BAD_GATEWAY, "peer_unreachable").with("peer", peer.0)
            }
            Error::NoCallHandler { peer } => {
                new(S::BAD_GATEWAY, "no_call_handler").with("peer", peer.0)
            }
            Error::CallOutcomeUnknown { peer, cause } => {
                new(S::GATEWAY_TIMEOUT, "call_outcome_unknown")
                    .with("peer", peer.0)
                    .with("cause", unknown_cause(*cause))
            }
            Error::CallFailed { peer, .. } => {
                new(S::BAD_GATEWAY, "call_failed").with("peer", peer.0)
            }
            Error::WatchCancelled {
                resume_revision,
                reason,
            } => new(S::SERVICE_UNAVAILABLE, "watch_cancelled")
                .with("resume_revision", *resume_revision)
                .with("reason", cancel_reason(*reason)),
            Error::Config(_) => new(S::INTERNAL_SERVER_ERROR, "config"),
            Error::Storage(_) => new(S::INTERNAL_SERVER_ERROR, "storage"),
            _ => new(S::INTERNAL_SERVER_ERROR, "internal"),
        };
        api.not_applied = not_applied;
        api
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::NodeId;
    use serde_json::json;

    #[test]
    fn errors_keep_their_code_status_and_fields() {
        let e = ApiError::from(Error::NotLeader {
            leader_hint: Some(NodeId(2)),
        });
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "not_leader")
        );
        assert_eq!(e.body()["leader_hint"], json!(2));
        assert_eq!(e.body()["not_applied"], json!(true));
        let e = ApiError::from(Error::Compacted {
            compact_revision: 7,
        });
        assert_eq!((e.status, e.code), (StatusCode::GONE, "compacted"));
        assert_eq!(e.body()["compact_revision"], json!(7));
        let e = ApiError::from(Error::OutcomeUnknown {
            cause: UnknownCause::DeadlineExceeded,
        });
        assert_eq!(
            e.body()["not_applied"],
            json!(false),
            "a maybe-applied write must say so"
        );
        let e = ApiError::from(Error::LimitExceeded {
            limit: KvLimit::ValueSize,
            size: 10,
            max: 5,
        });
        assert_eq!(
            (e.status, e.body()["limit"].clone()),
            (StatusCode::PAYLOAD_TOO_LARGE, json!("value_size"))
        );
        assert_eq!(
            ApiError::from(Error::LeaseNotFound { lease: 3 }).status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::from(Error::Timeout {
                after: std::time::Duration::from_secs(1)
            })
            .status,
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}
