//! The config center's error type.
//!
//! | error | what to do |
//! |---|---|
//! | [`ConfigCenterError::Kv`] | as [`ha_core::Error`]'s table says (`is_not_applied()`: safe to retry) |
//! | [`ConfigCenterError::Invalid`], [`ConfigCenterError::Rejected`] | fix the content; nothing was written |
//! | [`ConfigCenterError::Conflict`] | someone published first: read the current version, merge, publish again |
//! | [`ConfigCenterError::Contention`] | many publishers at once: retry later |
//! | [`ConfigCenterError::NotFound`], [`ConfigCenterError::VersionNotFound`], [`ConfigCenterError::NoGrey`] | nothing to act on |
//! | [`ConfigCenterError::SecretKeyMissing`], [`ConfigCenterError::Decrypt`] | configure the right key |
//! | [`ConfigCenterError::Deserialize`] | the content does not fit the application's type |
//! | [`ConfigCenterError::Corrupt`] | a key under the center's root was written by something else |
//! | [`ConfigCenterError::Cache`] | the cache directory needs attention |
//! | [`ConfigCenterError::InvalidArgument`] | fix the argument |

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::model::{ConfigFormat, ConfigId};
use crate::error::RecipeError;

/// Result with [`ConfigCenterError`].
pub type ConfigResult<T> = std::result::Result<T, ConfigCenterError>;

/// The error type of the config center.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigCenterError {
    /// The KV call underneath failed.
    #[error(transparent)]
    Kv(#[from] ha_core::Error),
    /// A recipe underneath (the session of a version report) failed.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// The content does not parse in its declared format; nothing was
    /// written.
    #[error("{id}: content is not valid {format}: {reason}")]
    Invalid {
        /// The config.
        id: ConfigId,
        /// The declared format.
        format: ConfigFormat,
        /// The parser's message.
        reason: String,
    },
    /// A validator refused the content; nothing was written.
    #[error("{id}: rejected by validator: {reason}")]
    Rejected {
        /// The config.
        id: ConfigId,
        /// The validator's reason.
        reason: String,
    },
    /// A compare-and-set publish expected another current version.
    #[error("{id}: expected version {expected}, current is {current}")]
    Conflict {
        /// The config.
        id: ConfigId,
        /// The version the publish expected (0: none).
        expected: u64,
        /// The version found (0: none).
        current: u64,
    },
    /// Other publishers kept winning the race; nothing was written by
    /// this call.
    #[error("{id}: gave up after {attempts} attempts lost to concurrent publishers")]
    Contention {
        /// The config.
        id: ConfigId,
        /// Attempts made.
        attempts: u32,
    },
    /// No such config.
    #[error("{id}: no such config")]
    NotFound {
        /// The config.
        id: ConfigId,
    },
    /// No such version in the history (never published, or trimmed).
    #[error("{id}: no version {version} in the history")]
    VersionNotFound {
        /// The config.
        id: ConfigId,
        /// The version asked for.
        version: u64,
    },
    /// No grey release in progress.
    #[error("{id}: no grey release in progress")]
    NoGrey {
        /// The config.
        id: ConfigId,
    },
    /// The config is secret and this center has no key.
    #[error("{id}: the config is secret and no key is configured")]
    SecretKeyMissing {
        /// The config.
        id: ConfigId,
    },
    /// The secret could not be decrypted: a different key, or damaged
    /// bytes.
    #[error("{id}: version {version} cannot be decrypted with this key")]
    Decrypt {
        /// The config.
        id: ConfigId,
        /// The version.
        version: u64,
    },
    /// The content does not deserialize into the application's type.
    #[error("{id}: version {version} does not deserialize: {reason}")]
    Deserialize {
        /// The config.
        id: ConfigId,
        /// The version.
        version: u64,
        /// The deserializer's message.
        reason: String,
    },
    /// A stored record is not one the center wrote.
    #[error("corrupt config record at {key:?}: {reason}")]
    Corrupt {
        /// The KV key (or cache file).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the local cache failed.
    #[error("config cache {path:?}: {source}")]
    Cache {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// An argument that makes no sense (an id with a `/`, zero history).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
}
