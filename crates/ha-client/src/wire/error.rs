//! Errors on the wire: a stable code per [`ha_core::Error`] variant, its
//! HTTP status, and the variant's fields, in one JSON body:
//!
//! ```json
//! {"error":"not_leader","message":"...","not_applied":true,"leader_hint":2}
//! ```
//!
//! `not_applied` is `Error::is_not_applied()`: true when the request
//! certainly took no effect, so retrying cannot apply it twice.
//!
//! [`WireError::from`] is the server's direction (an `Error` becomes a
//! body); [`WireError::into_error`] the client's (a body becomes the same
//! `Error` an in-process caller would have got).

use std::sync::Arc;
use std::time::Duration;

use ha_core::{
    DropReason, Error, InvalidRequest, KvLimit, NodeId, OverloadReason, StorageError, UnknownCause,
    WatchCancelReason,
};
use serde_json::{Map, Value};

/// An error answer of the client API.
#[derive(Clone, Debug, PartialEq)]
pub struct WireError {
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code.
    pub code: String,
    /// For people.
    pub message: String,
    /// Whether the request certainly took no effect.
    pub not_applied: bool,
    /// The variant's fields.
    pub details: Map<String, Value>,
}

/// A storage error a remote member reported (its text).
#[derive(Debug, thiserror::Error)]
#[error("remote member: {0}")]
pub struct RemoteStorageError(pub String);

impl WireError {
    fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        WireError {
            status,
            code: code.to_string(),
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
        WireError::new(400, "bad_json", reason)
    }

    /// A request whose fields make no sense together, or a bad query.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        WireError::new(400, "bad_request", reason)
    }

    /// A key or value that does not decode in the request's encoding.
    pub fn bad_encoding(field: &str, reason: impl std::fmt::Display) -> Self {
        WireError::new(400, "bad_encoding", format!("{field}: {reason}")).with("field", field)
    }

    /// A stored key or value that cannot be shown as UTF-8.
    pub fn not_utf8(field: &str) -> Self {
        WireError::new(
            422,
            "not_utf8",
            format!("{field} is not valid UTF-8; ask without ?encoding=utf8 (base64)"),
        )
        .with("field", field)
    }

    /// A body over the size limit.
    pub fn body_too_large(max: usize) -> Self {
        WireError::new(
            413,
            "body_too_large",
            format!("the request body exceeds {max} bytes"),
        )
        .with("max", max)
    }

    /// The whole request ran past its deadline in the HTTP layer (not in
    /// the library): a write may or may not have been applied.
    pub fn deadline_exceeded(after: Duration) -> Self {
        let mut e = WireError::new(
            504,
            "deadline_exceeded",
            format!("no answer within {after:?}; a write may or may not have been applied"),
        )
        .with("after_ms", millis(after));
        e.not_applied = false;
        e
    }

    /// A route that does not exist.
    pub fn not_found() -> Self {
        WireError::new(404, "no_such_route", "no such route")
    }

    /// An answer this client cannot read (not JSON, or not the route's
    /// shape): a server of another version, or something that is not a
    /// member.
    pub fn bad_answer(reason: impl Into<String>) -> Self {
        let mut e = WireError::new(502, "bad_answer", reason);
        e.not_applied = false;
        e
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("error".into(), self.code.clone().into());
        body.insert("message".into(), self.message.clone().into());
        body.insert("not_applied".into(), self.not_applied.into());
        for (k, v) in &self.details {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }

    /// Reads an error answer: its status and JSON body. A body that is not
    /// an error object becomes [`WireError::bad_answer`].
    pub fn from_body(status: u16, body: &[u8]) -> Self {
        let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(body) else {
            return WireError::bad_answer(format!(
                "HTTP {status} with a body that is not a JSON error: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        };
        let Some(Value::String(code)) = map.remove("error") else {
            return WireError::bad_answer(format!("HTTP {status} without an error code"));
        };
        let message = match map.remove("message") {
            Some(Value::String(m)) => m,
            _ => String::new(),
        };
        let not_applied = matches!(map.remove("not_applied"), Some(Value::Bool(true)));
        WireError {
            status,
            code,
            message,
            not_applied,
            details: map,
        }
    }

    fn u64(&self, key: &str) -> u64 {
        self.details.get(key).and_then(Value::as_u64).unwrap_or(0)
    }

    fn i64(&self, key: &str) -> i64 {
        self.details.get(key).and_then(Value::as_i64).unwrap_or(0)
    }

    fn usize(&self, key: &str) -> usize {
        usize::try_from(self.u64(key)).unwrap_or(usize::MAX)
    }

    fn str(&self, key: &str) -> &str {
        self.details.get(key).and_then(Value::as_str).unwrap_or("")
    }

    /// The [`Error`] an in-process caller would have got.
    ///
    /// Codes of the HTTP layer map to the nearest variant:
    /// `deadline_exceeded` → [`Error::OutcomeUnknown`] (the caller turns it
    /// into [`Error::Timeout`] for a read); `body_too_large` →
    /// [`Error::TooLarge`] (`size` 0: the caller knows it);
    /// `storage` → [`Error::Storage`] with the member's text. Codes no
    /// variant stands for (`config`, `internal`, `bad_json`, `bad_request`,
    /// `bad_encoding`, `not_utf8`, `no_such_route`, `bad_answer`, codes of
    /// a newer server) → [`Error::CallFailed`] naming `member` (0 when not
    /// known) with `code: message`.
    pub fn into_error(self, member: Option<NodeId>) -> Error {
        let member = member.unwrap_or_default();
        match self.code.as_str() {
            "not_leader" => Error::NotLeader {
                leader_hint: self
                    .details
                    .get("leader_hint")
                    .and_then(Value::as_u64)
                    .map(NodeId),
            },
            "timeout" => Error::Timeout {
                after: Duration::from_millis(self.u64("after_ms")),
            },
            "proposal_dropped" => Error::ProposalDropped {
                reason: decode(DROP_REASONS, self.str("reason"), DropReason::Rejected),
            },
            "outcome_unknown" => Error::OutcomeUnknown {
                cause: decode(
                    UNKNOWN_CAUSES,
                    self.str("cause"),
                    UnknownCause::ConnectionLost,
                ),
            },
            "overloaded" => Error::Overloaded {
                reason: decode(
                    OVERLOAD_REASONS,
                    self.str("reason"),
                    OverloadReason::QueueFull,
                ),
            },
            "too_large" => Error::TooLarge {
                size: self.usize("size"),
                max: self.usize("max"),
            },
            "body_too_large" => Error::TooLarge {
                size: 0,
                max: self.usize("max"),
            },
            "shutdown" => Error::Shutdown,
            "fatal" => Error::Fatal {
                reason: Arc::from(match self.details.get("reason").and_then(Value::as_str) {
                    Some(r) => r.to_string(),
                    None => self.message,
                }),
            },
            "membership_change_in_progress" => Error::MembershipChangeInProgress,
            "member_id_reused" => Error::MemberIdReused {
                member: NodeId(self.u64("member")),
            },
            "unsafe_membership_change" => Error::UnsafeMembershipChange {
                healthy: self.usize("healthy"),
                required: self.usize("required"),
            },
            "invalid_membership_change" => Error::InvalidMembershipChange {
                member: NodeId(self.u64("member")),
                reason: MEMBERSHIP_REASONS
                    .iter()
                    .copied()
                    .find(|r| *r == self.str("reason"))
                    .unwrap_or("invalid membership change (see the member's message)"),
            },
            "removed" => Error::Removed {
                member: NodeId(self.u64("member")),
            },
            "compacted" => Error::Compacted {
                compact_revision: self.i64("compact_revision"),
            },
            "future_revision" => Error::FutureRevision {
                requested: self.i64("requested"),
                current: self.i64("current"),
            },
            "no_space" => Error::NoSpace {
                used: self.u64("used"),
                quota: self.u64("quota"),
            },
            "limit_exceeded" => Error::LimitExceeded {
                limit: decode(KV_LIMITS, self.str("limit"), KvLimit::RequestSize),
                size: self.usize("size"),
                max: self.usize("max"),
            },
            "invalid_request" => Error::InvalidRequest {
                reason: decode(
                    INVALID_REASONS,
                    self.str("reason"),
                    InvalidRequest::Malformed,
                ),
            },
            "lease_not_found" => Error::LeaseNotFound {
                lease: self.i64("lease"),
            },
            "lease_exists" => Error::LeaseExists {
                lease: self.i64("lease"),
            },
            "peer_unreachable" => Error::PeerUnreachable {
                peer: NodeId(self.u64("peer")),
            },
            "no_call_handler" => Error::NoCallHandler {
                peer: NodeId(self.u64("peer")),
            },
            "call_outcome_unknown" => Error::CallOutcomeUnknown {
                peer: NodeId(self.u64("peer")),
                cause: decode(
                    UNKNOWN_CAUSES,
                    self.str("cause"),
                    UnknownCause::ConnectionLost,
                ),
            },
            "call_failed" => Error::CallFailed {
                peer: NodeId(self.u64("peer")),
                reason: Arc::from(match self.details.get("reason").and_then(Value::as_str) {
                    Some(r) => r.to_string(),
                    None => self.message,
                }),
            },
            "watch_cancelled" => Error::WatchCancelled {
                resume_revision: self.i64("resume_revision"),
                reason: decode(
                    CANCEL_REASONS,
                    self.str("reason"),
                    WatchCancelReason::MemberStopped,
                ),
            },
            "deadline_exceeded" => Error::OutcomeUnknown {
                cause: UnknownCause::DeadlineExceeded,
            },
            "storage" => Error::Storage(StorageError::Other(Arc::new(RemoteStorageError(
                self.message,
            )))),
            _ => Error::CallFailed {
                peer: member,
                reason: Arc::from(format!("{}: {}", self.code, self.message)),
            },
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One table per reason enum, used both ways; a variant of a newer
/// ha-core that is missing here encodes as `other`.
const DROP_REASONS: &[(DropReason, &str)] = &[
    (DropReason::NoLeader, "no_leader"),
    (DropReason::LeaderTransfer, "leader_transfer"),
    (
        DropReason::MembershipChangeInProgress,
        "membership_change_in_progress",
    ),
    (DropReason::Rejected, "rejected"),
];

const UNKNOWN_CAUSES: &[(UnknownCause, &str)] = &[
    (UnknownCause::DeadlineExceeded, "deadline_exceeded"),
    (UnknownCause::Shutdown, "shutdown"),
    (UnknownCause::ConnectionLost, "connection_lost"),
];

const OVERLOAD_REASONS: &[(OverloadReason, &str)] = &[
    (OverloadReason::ApplyLag, "apply_lag"),
    (OverloadReason::TooManyPending, "too_many_pending"),
    (OverloadReason::QueueFull, "queue_full"),
    (OverloadReason::Uncommitted, "uncommitted"),
    (OverloadReason::TooManyCalls, "too_many_calls"),
];

const KV_LIMITS: &[(KvLimit, &str)] = &[
    (KvLimit::KeySize, "key_size"),
    (KvLimit::ValueSize, "value_size"),
    (KvLimit::TxnOps, "txn_ops"),
    (KvLimit::RequestSize, "request_size"),
];

const INVALID_REASONS: &[(InvalidRequest, &str)] = &[
    (InvalidRequest::EmptyKey, "empty_key"),
    (InvalidRequest::DuplicateKeyInTxn, "duplicate_key_in_txn"),
    (InvalidRequest::PutInDeletedRange, "put_in_deleted_range"),
    (InvalidRequest::KeyNotFound, "key_not_found"),
    (InvalidRequest::IgnoredFieldSet, "ignored_field_set"),
    (InvalidRequest::NegativeRevision, "negative_revision"),
    (InvalidRequest::Malformed, "malformed"),
    (InvalidRequest::InvalidTtl, "invalid_ttl"),
    (InvalidRequest::InvalidLeaseId, "invalid_lease_id"),
    (InvalidRequest::StaleLeaseExpiry, "stale_lease_expiry"),
];

const CANCEL_REASONS: &[(WatchCancelReason, &str)] = &[
    (WatchCancelReason::SlowConsumer, "slow_consumer"),
    (WatchCancelReason::MemberStopped, "member_stopped"),
];

/// The reasons ha-raft gives `Error::InvalidMembershipChange` (a
/// `&'static str`, so the client can only give back one it knows).
const MEMBERSHIP_REASONS: &[&str] = &[
    "already a member",
    "member id 0 is reserved",
    "no change requested",
    "not a member",
    "only a learner can be promoted",
    "raft refused the change",
    "the group would have no voter left",
    "the same member twice in one change",
];

fn encode<T: PartialEq + Copy>(table: &[(T, &'static str)], value: T) -> &'static str {
    table
        .iter()
        .find(|(v, _)| *v == value)
        .map_or("other", |(_, code)| code)
}

fn decode<T: Copy>(table: &[(T, &str)], code: &str, fallback: T) -> T {
    table
        .iter()
        .find(|(_, c)| *c == code)
        .map_or(fallback, |(v, _)| *v)
}

/// The code of a watch's cancel reason.
pub fn cancel_reason(r: WatchCancelReason) -> &'static str {
    encode(CANCEL_REASONS, r)
}

impl From<Error> for WireError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        let not_applied = e.is_not_applied();
        let new = |status, code| WireError::new(status, code, message.clone());
        let mut wire = match &e {
            Error::NotLeader { leader_hint } => {
                new(503, "not_leader").with("leader_hint", leader_hint.map(|l| l.0))
            }
            Error::Timeout { after } => new(504, "timeout").with("after_ms", millis(*after)),
            Error::ProposalDropped { reason } => {
                new(503, "proposal_dropped").with("reason", encode(DROP_REASONS, *reason))
            }
            Error::OutcomeUnknown { cause } => {
                new(504, "outcome_unknown").with("cause", encode(UNKNOWN_CAUSES, *cause))
            }
            Error::Overloaded { reason } => {
                new(429, "overloaded").with("reason", encode(OVERLOAD_REASONS, *reason))
            }
            Error::TooLarge { size, max } => {
                new(413, "too_large").with("size", *size).with("max", *max)
            }
            Error::Shutdown => new(503, "shutdown"),
            Error::Fatal { reason } => new(500, "fatal").with("reason", reason.to_string()),
            Error::MembershipChangeInProgress => new(409, "membership_change_in_progress"),
            Error::MemberIdReused { member } => {
                new(409, "member_id_reused").with("member", member.0)
            }
            Error::UnsafeMembershipChange { healthy, required } => {
                new(409, "unsafe_membership_change")
                    .with("healthy", *healthy)
                    .with("required", *required)
            }
            Error::InvalidMembershipChange { member, reason } => {
                new(400, "invalid_membership_change")
                    .with("member", member.0)
                    .with("reason", *reason)
            }
            Error::Removed { member } => new(503, "removed").with("member", member.0),
            Error::Compacted { compact_revision } => {
                new(410, "compacted").with("compact_revision", *compact_revision)
            }
            Error::FutureRevision { requested, current } => new(400, "future_revision")
                .with("requested", *requested)
                .with("current", *current),
            Error::NoSpace { used, quota } => new(507, "no_space")
                .with("used", *used)
                .with("quota", *quota),
            Error::LimitExceeded { limit, size, max } => new(413, "limit_exceeded")
                .with("limit", encode(KV_LIMITS, *limit))
                .with("size", *size)
                .with("max", *max),
            Error::InvalidRequest { reason } => {
                new(400, "invalid_request").with("reason", encode(INVALID_REASONS, *reason))
            }
            Error::LeaseNotFound { lease } => new(404, "lease_not_found").with("lease", *lease),
            Error::LeaseExists { lease } => new(409, "lease_exists").with("lease", *lease),
            Error::PeerUnreachable { peer } => new(502, "peer_unreachable").with("peer", peer.0),
            Error::NoCallHandler { peer } => new(502, "no_call_handler").with("peer", peer.0),
            Error::CallOutcomeUnknown { peer, cause } => new(504, "call_outcome_unknown")
                .with("peer", peer.0)
                .with("cause", encode(UNKNOWN_CAUSES, *cause)),
            Error::CallFailed { peer, reason } => new(502, "call_failed")
                .with("peer", peer.0)
                .with("reason", reason.to_string()),
            Error::WatchCancelled {
                resume_revision,
                reason,
            } => new(503, "watch_cancelled")
                .with("resume_revision", *resume_revision)
                .with("reason", cancel_reason(*reason)),
            Error::Config(_) => new(500, "config"),
            Error::Storage(_) => new(500, "storage"),
            _ => new(500, "internal"),
        };
        wire.not_applied = not_applied;
        wire
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error the library returns, with every reason of every reason
    /// enum.
    fn every_error() -> Vec<Error> {
        let mut all = vec![
            Error::NotLeader {
                leader_hint: Some(NodeId(2)),
            },
            Error::NotLeader { leader_hint: None },
            Error::Timeout {
                after: Duration::from_millis(1500),
            },
            Error::TooLarge { size: 10, max: 5 },
            Error::Shutdown,
            Error::fatal("disk on fire"),
            Error::MembershipChangeInProgress,
            Error::MemberIdReused { member: NodeId(4) },
            Error::UnsafeMembershipChange {
                healthy: 1,
                required: 2,
            },
            Error::Removed { member: NodeId(3) },
            Error::Compacted {
                compact_revision: 7,
            },
            Error::FutureRevision {
                requested: 9,
                current: 8,
            },
            Error::NoSpace {
                used: 11,
                quota: 10,
            },
            Error::LeaseNotFound { lease: 3 },
            Error::LeaseExists { lease: 4 },
            Error::PeerUnreachable { peer: NodeId(2) },
            Error::NoCallHandler { peer: NodeId(3) },
            Error::CallFailed {
                peer: NodeId(1),
                reason: Arc::from("handler said no"),
            },
        ];
        all.extend(
            DROP_REASONS
                .iter()
                .map(|(r, _)| Error::ProposalDropped { reason: *r }),
        );
        for (c, _) in UNKNOWN_CAUSES {
            all.push(Error::OutcomeUnknown { cause: *c });
            all.push(Error::CallOutcomeUnknown {
                peer: NodeId(2),
                cause: *c,
            });
        }
        all.extend(
            OVERLOAD_REASONS
                .iter()
                .map(|(r, _)| Error::Overloaded { reason: *r }),
        );
        all.extend(KV_LIMITS.iter().map(|(l, _)| Error::LimitExceeded {
            limit: *l,
            size: 100,
            max: 10,
        }));
        all.extend(
            INVALID_REASONS
                .iter()
                .map(|(r, _)| Error::InvalidRequest { reason: *r }),
        );
        all.extend(CANCEL_REASONS.iter().map(|(r, _)| Error::WatchCancelled {
            resume_revision: 12,
            reason: *r,
        }));
        all.extend(
            MEMBERSHIP_REASONS
                .iter()
                .map(|r| Error::InvalidMembershipChange {
                    member: NodeId(5),
                    reason: r,
                }),
        );
        all
    }

    /// Through the JSON text, as a client receives it.
    fn round_trip(e: &Error) -> (WireError, Error) {
        let wire = WireError::from(e.clone());
        let text = serde_json::to_vec(&wire.body()).expect("a body encodes");
        let back = WireError::from_body(wire.status, &text);
        assert_eq!(back, wire, "the body of {e:?} reads back as itself");
        (wire, back.into_error(None))
    }

    #[test]
    fn every_error_code_round_trips_to_the_same_variant_and_fields() {
        let mut codes = std::collections::BTreeSet::new();
        for e in every_error() {
            let (wire, back) = round_trip(&e);
            // Error has no PartialEq (it can box a backend error); its
            // Debug form shows the variant and every field.
            assert_eq!(format!("{back:?}"), format!("{e:?}"), "code {}", wire.code);
            assert_eq!(wire.not_applied, e.is_not_applied(), "{e:?}");
            assert!(
                (400..600).contains(&wire.status),
                "{e:?} answers status {}",
                wire.status
            );
            codes.insert(wire.code);
        }
        // One code per variant of the library's errors that a call can
        // return (Config and Storage only come from starting a member).
        assert_eq!(codes.len(), 25, "{codes:?}");
    }

    #[test]
    fn a_maybe_applied_write_says_so_and_fields_survive() {
        let (wire, _) = round_trip(&Error::OutcomeUnknown {
            cause: UnknownCause::DeadlineExceeded,
        });
        assert!(!wire.not_applied, "a maybe-applied write must say so");
        let (wire, _) = round_trip(&Error::NotLeader {
            leader_hint: Some(NodeId(2)),
        });
        assert_eq!(
            (wire.status, wire.body()["leader_hint"].clone()),
            (503, 2.into())
        );
    }

    #[test]
    fn codes_of_the_http_layer_map_to_the_nearest_variant() {
        let e = WireError::deadline_exceeded(Duration::from_secs(6)).into_error(None);
        assert!(matches!(
            e,
            Error::OutcomeUnknown {
                cause: UnknownCause::DeadlineExceeded
            }
        ));
        let e = WireError::body_too_large(64).into_error(None);
        assert!(matches!(e, Error::TooLarge { size: 0, max: 64 }), "{e:?}");
        let e = WireError::from(Error::Storage(StorageError::corrupt("log", "bad crc")));
        assert_eq!(e.code, "storage");
        assert!(matches!(
            e.into_error(None),
            Error::Storage(StorageError::Other(_))
        ));
        let e = WireError::bad_json("expected `}`").into_error(Some(NodeId(2)));
        assert!(
            matches!(&e, Error::CallFailed { peer: NodeId(2), reason } if reason.starts_with("bad_json:")),
            "{e:?}"
        );
    }

    #[test]
    fn an_answer_that_is_not_an_error_body_is_a_bad_answer() {
        for body in [&b"<html>"[..], b"[1]", b"{\"message\":\"no code\"}"] {
            let w = WireError::from_body(502, body);
            assert_eq!(w.code, "bad_answer", "{body:?}");
            assert!(!w.not_applied, "nothing is known about a write then");
        }
    }
}
