//! The recipes' error type.
//!
//! | error | what to do |
//! |---|---|
//! | [`RecipeError::Kv`] | as [`ha_core::Error`]'s table says (`is_not_applied()`: safe to retry) |
//! | [`RecipeError::SessionLost`] | the lease is gone (or may be, by the local clock): everything held through the session is lost; start a new session |
//! | [`RecipeError::Timeout`] | nothing is held; retry, maybe with a longer wait |
//! | [`RecipeError::NotHeld`] | the lock or leadership is gone (its key was deleted): stop acting on it |
//! | [`RecipeError::NoRuntime`] | call from inside a tokio runtime, or pass a [`crate::RecipeEnv`] |
//! | [`RecipeError::InvalidArgument`] | fix the argument |

use std::time::Duration;

use ha_core::LeaseId;

/// Result with [`RecipeError`].
pub type Result<T, E = RecipeError> = std::result::Result<T, E>;

/// Why a session counts as lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LostReason {
    /// No keep-alive succeeded for a TTL (minus the safety margin) since
    /// the last successful one was sent: the group may already have
    /// expired the lease. Decided by the local clock, before the group
    /// says so.
    Unrenewed,
    /// The group answered that the lease does not exist: expired or
    /// revoked by someone else.
    Expired,
    /// [`crate::Session::close`] revoked it.
    Closed,
    /// The member the session talks to stopped for good (shut down,
    /// removed, fatal error).
    ClientStopped,
}

/// The error type of every recipe.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecipeError {
    /// The KV call underneath failed.
    #[error(transparent)]
    Kv(#[from] ha_core::Error),
    /// The session's lease is gone, or may be by the local clock.
    #[error("session (lease {lease:?}) lost: {reason:?}")]
    SessionLost {
        /// The session's lease.
        lease: LeaseId,
        /// Why.
        reason: LostReason,
    },
    /// The wait's deadline passed; nothing is held.
    #[error("gave up waiting after {after:?}; nothing is held")]
    Timeout {
        /// The deadline.
        after: Duration,
    },
    /// The lock or leadership this call needs is not held any more (its
    /// key is gone).
    #[error("not held: the key {key:?} is gone")]
    NotHeld {
        /// The recipe's key.
        key: String,
    },
    /// No tokio runtime to spawn background work on, and no
    /// [`crate::RecipeEnv`] given.
    #[error("no tokio runtime is current; pass a RecipeEnv")]
    NoRuntime,
    /// An argument that makes no sense (zero permits, zero participants,
    /// a TTL not above the safety margin).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: &'static str,
    },
}

impl RecipeError {
    /// True when the session is lost (retrying on it is pointless).
    pub fn is_session_lost(&self) -> bool {
        matches!(self, RecipeError::SessionLost { .. })
    }
}
