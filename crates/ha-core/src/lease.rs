//! Lease vocabulary: TTLs that keep keys alive while their owner is.
//!
//! A lease is granted with a TTL; keys put with it are deleted, in one
//! revision, when it is revoked or when its TTL passes without a
//! keep-alive. Keep-alives are answered by the leader (other members
//! forward them); expiry is a proposal of the leader. A new leader gives
//! every lease its full TTL plus an election timeout before anything can
//! expire, so a failover never expires a lease that was kept alive.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;

use crate::error::Result;
use crate::kv::{LeaseId, ResponseHeader};

/// Grant a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseGrantRequest {
    /// Time to live. Below the group's minimum (1.5 × the election
    /// timeout) it is rounded up; the response says so.
    pub ttl: Duration,
    /// The id to use; [`LeaseId::NONE`] lets the member choose one.
    pub id: LeaseId,
}

impl LeaseGrantRequest {
    /// A lease with `ttl` and an id chosen by the member.
    pub fn new(ttl: Duration) -> Self {
        LeaseGrantRequest {
            ttl,
            id: LeaseId::NONE,
        }
    }

    /// With an id of the caller's choosing (positive).
    pub fn with_id(mut self, id: LeaseId) -> Self {
        self.id = id;
        self
    }
}

/// A granted lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseGrantResponse {
    /// Answering member and revision (a grant does not change the
    /// revision).
    pub header: ResponseHeader,
    /// The lease.
    pub id: LeaseId,
    /// The TTL granted: the one requested, or the minimum when that was
    /// smaller.
    pub ttl: Duration,
    /// The TTL requested.
    pub requested_ttl: Duration,
}

impl LeaseGrantResponse {
    /// True when the requested TTL was below the minimum and rounded up.
    pub fn rounded_up(&self) -> bool {
        self.ttl > self.requested_ttl
    }
}

/// A revoked lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRevokeResponse {
    /// Answering member; the revision of the deletion of the lease's keys
    /// (unchanged when it had none).
    pub header: ResponseHeader,
}

/// A renewed lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseKeepAliveResponse {
    /// The leader that renewed it.
    pub header: ResponseHeader,
    /// The lease.
    pub id: LeaseId,
    /// Its TTL, counted from the renewal.
    pub ttl: Duration,
}

/// What a lease has left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseTimeToLiveResponse {
    /// The leader that answered.
    pub header: ResponseHeader,
    /// The lease.
    pub id: LeaseId,
    /// Time left before it expires, as the leader sees it.
    pub ttl: Duration,
    /// The TTL it was granted.
    pub granted_ttl: Duration,
    /// The keys attached to it, sorted (when asked for).
    pub keys: Vec<Vec<u8>>,
}

/// One lease in [`LeaseLeasesResponse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    /// The lease.
    pub id: LeaseId,
    /// The TTL it was granted.
    pub granted_ttl: Duration,
}

/// Every lease of the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseLeasesResponse {
    /// Answering member and revision.
    pub header: ResponseHeader,
    /// The leases, by id.
    pub leases: Vec<LeaseStatus>,
}

/// Keeps a lease alive in the background until dropped, and reports each
/// renewal as a stream.
///
/// The renewals run whether or not the stream is polled (a response that
/// finds the stream's buffer full is skipped, like etcd's client). The
/// stream yields an error and ends when the lease is gone
/// ([`crate::Error::LeaseNotFound`]: revoked, or expired because renewals
/// could not reach a leader in time), and ends when the member stops.
pub struct LeaseKeepAlive {
    id: LeaseId,
    stream: Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse>> + Send>>,
}

impl LeaseKeepAlive {
    /// Wraps an implementation's stream of renewals; dropping the stream
    /// must stop the renewals.
    pub fn new(
        id: LeaseId,
        stream: impl Stream<Item = Result<LeaseKeepAliveResponse>> + Send + 'static,
    ) -> Self {
        LeaseKeepAlive {
            id,
            stream: Box::pin(stream),
        }
    }

    /// The lease kept alive.
    pub fn id(&self) -> LeaseId {
        self.id
    }
}

impl fmt::Debug for LeaseKeepAlive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseKeepAlive")
            .field("id", &self.id)
            .finish()
    }
}

impl Stream for LeaseKeepAlive {
    type Item = Result<LeaseKeepAliveResponse>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}
