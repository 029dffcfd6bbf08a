//! Service discovery's error type.
//!
//! | error | what to do |
//! |---|---|
//! | [`DiscoveryError::Kv`] | as [`ha_core::Error`]'s table says (`is_not_applied()`: safe to retry) |
//! | [`DiscoveryError::Recipe`] | as [`RecipeError`]'s table says (a lost session: register again on a new one) |
//! | [`DiscoveryError::InvalidName`] | fix the name (non-empty, no `/`) |
//! | [`DiscoveryError::InvalidConfig`] | fix the configuration |
//! | [`DiscoveryError::Decode`] | a record under the registry's prefix is not one this version understands: written by something else, or by a newer version |
//! | [`DiscoveryError::NotFound`] | the instance is not registered (any more) |
//! | [`DiscoveryError::Conflict`] | the instance kept changing under a read-modify-write; retry |
//! | [`DiscoveryError::Unavailable`] | the group did not answer and nothing is cached for the service |
//! | [`DiscoveryError::Cache`] | the cache file could not be read or written |
//! | [`DiscoveryError::Bind`] | a listening socket (the DNS responder's) could not be bound: the port is taken or not allowed |

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::RecipeError;

/// Result with [`DiscoveryError`].
pub type DiscoveryResult<T> = std::result::Result<T, DiscoveryError>;

/// The error type of the registry, discovery, health checks and cache.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The KV call underneath failed.
    #[error(transparent)]
    Kv(#[from] ha_core::Error),
    /// A recipe underneath (the session) failed.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// A namespace, service or instance id that cannot be used in a key.
    #[error("invalid {what} {name:?}: must be non-empty and contain no '/'")]
    InvalidName {
        /// Which name ("namespace", "service", "instance id", ...).
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// A configuration value that makes no sense.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: &'static str,
    },
    /// A stored record could not be decoded.
    #[error("cannot decode the record at {key:?}: {reason}")]
    Decode {
        /// The key (lossy UTF-8).
        key: String,
        /// Why.
        reason: DecodeReason,
    },
    /// The instance is not registered.
    #[error("instance {service}/{id} is not registered")]
    NotFound {
        /// The service.
        service: String,
        /// The instance id.
        id: String,
    },
    /// A read-modify-write of an instance lost every race it tried.
    #[error("instance {service}/{id} kept changing during the update; retry")]
    Conflict {
        /// The service.
        service: String,
        /// The instance id.
        id: String,
    },
    /// The group did not answer and nothing is cached for the service.
    #[error("service {service:?}: the group did not answer ({source}) and nothing is cached")]
    Unavailable {
        /// The service.
        service: String,
        /// Why the group did not answer.
        source: Box<DiscoveryError>,
    },
    /// The cache file could not be read or written.
    #[error("cache file {path:?}: {source}")]
    Cache {
        /// The file.
        path: PathBuf,
        /// The I/O or format error.
        source: Arc<std::io::Error>,
    },
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: Arc<std::io::Error>,
    },
}

/// Why a record could not be decoded.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeReason {
    /// The key is not laid out as the registry lays keys out.
    #[error("the key is not <root>svc/<namespace>/<service>/<id>")]
    BadKey,
    /// Not the JSON of a record.
    #[error("not a record: {0}")]
    Json(Arc<serde_json::Error>),
    /// A format version this code does not know.
    #[error("unsupported format version {0}")]
    Version(u32),
}
