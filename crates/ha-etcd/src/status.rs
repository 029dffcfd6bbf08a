//! ha's errors as the gRPC statuses etcd clients expect: the same codes
//! and the same `etcdserver: ...` messages, so their retry logic and
//! error matching work unchanged.

use ha_core::{Error, InvalidRequest, KvLimit, UnknownCause};
use tonic::{Code, Status};

/// The status etcd would answer for `error`.
pub(crate) fn to_status(error: &Error) -> Status {
    let (code, message): (Code, String) = match error {
        Error::Compacted { .. } => (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into(),
        ),
        Error::FutureRevision { .. } => (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".into(),
        ),
        Error::LeaseNotFound { .. } => (
            Code::NotFound,
            "etcdserver: requested lease not found".into(),
        ),
        Error::LeaseExists { .. } => (
            Code::FailedPrecondition,
            "etcdserver: lease already exists".into(),
        ),
        Error::NotLeader { leader_hint: None }
        | Error::ProposalDropped {
            reason: ha_core::DropReason::NoLeader,
        } => (Code::Unavailable, "etcdserver: no leader".into()),
        Error::NotLeader { .. } => (Code::Unavailable, "etcdserver: not leader".into()),
        Error::ProposalDropped { reason } => (
            Code::Unavailable,
            format!("etcdserver: request dropped ({reason:?}); retry"),
        ),
        Error::Timeout { .. } => (Code::Unavailable, "etcdserver: request timed out".into()),
        Error::OutcomeUnknown { cause } => match cause {
            UnknownCause::ConnectionLost => (
                Code::Unavailable,
                "etcdserver: request timed out, possibly due to connection lost".into(),
            ),
            _ => (
                Code::Unavailable,
                "etcdserver: request timed out, possibly due to previous leader failure".into(),
            ),
        },
        Error::Overloaded { .. } => (
            Code::ResourceExhausted,
            "etcdserver: too many requests".into(),
        ),
        Error::TooLarge { .. } => (
            Code::InvalidArgument,
            "etcdserver: request is too large".into(),
        ),
        Error::NoSpace { .. } => (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded".into(),
        ),
        Error::LimitExceeded { limit, .. } => match limit {
            KvLimit::TxnOps => (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request".into(),
            ),
            _ => (
                Code::InvalidArgument,
                "etcdserver: request is too large".into(),
            ),
        },
        Error::InvalidRequest { reason } => (Code::InvalidArgument, invalid_message(*reason)),
        Error::Shutdown | Error::Fatal { .. } | Error::Removed { .. } => {
            (Code::Unavailable, "etcdserver: server stopped".into())
        }
        Error::MembershipChangeInProgress => (
            Code::FailedPrecondition,
            "etcdserver: unhealthy cluster (a membership change is in progress)".into(),
        ),
        Error::UnsafeMembershipChange { .. } => {
            (Code::Unavailable, "etcdserver: unhealthy cluster".into())
        }
        Error::MemberIdReused { .. } => (Code::FailedPrecondition, "etcdserver: ID removed".into()),
        Error::InvalidMembershipChange { reason, .. } => {
            (Code::FailedPrecondition, format!("etcdserver: {reason}"))
        }
        other => (Code::Unavailable, format!("etcdserver: {other}")),
    };
    Status::new(code, message)
}

/// etcd's messages for the request errors ha shares with it.
fn invalid_message(reason: InvalidRequest) -> String {
    match reason {
        InvalidRequest::EmptyKey => "etcdserver: key is not provided".into(),
        InvalidRequest::DuplicateKeyInTxn | InvalidRequest::PutInDeletedRange => {
            "etcdserver: duplicate key given in txn request".into()
        }
        InvalidRequest::KeyNotFound => "etcdserver: key not found".into(),
        InvalidRequest::IgnoredFieldSet => {
            "etcdserver: value or lease is provided together with ignore_value or ignore_lease"
                .into()
        }
        other => format!("etcdserver: invalid request ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_etcds_codes_and_messages() {
        let s = to_status(&Error::Compacted {
            compact_revision: 5,
        });
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = to_status(&Error::LeaseNotFound { lease: 7 });
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "etcdserver: requested lease not found");
        let s = to_status(&Error::NotLeader { leader_hint: None });
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unavailable, "etcdserver: no leader")
        );
        let s = to_status(&Error::TooLarge { size: 10, max: 1 });
        assert_eq!(s.code(), Code::InvalidArgument);
        let s = to_status(&Error::FutureRevision {
            requested: 9,
            current: 3,
        });
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision is a future revision"
        );
    }
}
