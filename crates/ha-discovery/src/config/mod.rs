//! The config center (Nacos's config service, held by the group itself):
//! versioned configs addressed by namespace / group / data id, with
//! history and rollback, validation, secrets, watches, typed hot reload
//! with a local cache, and grey release.
//!
//! Like the recipes, it is a client of the public KV API only, with time
//! and background work from a [`crate::RecipeEnv`].
//!
//! | part | file |
//! |---|---|
//! | ids, formats, metadata, the stored record, the key layout | `model.rs` |
//! | publish / get / delete / list / history / rollback / diff / grey | `center.rs` |
//! | format checks and deserialization | `format.rs` |
//! | AES-GCM for secrets | `secret.rs` |
//! | the version stream | `watch.rs` |
//! | typed hot reload | `typed.rs`, with its disk cache in `cache.rs` |
//! | grey rules, instance reports | `grey.rs` |

mod cache;
mod center;
mod error;
mod format;
mod grey;
mod model;
mod secret;
mod typed;
mod watch;

pub use center::{
    ConfigCenter, ConfigCenterBuilder, ConfigPage, ConfigValidator, DEFAULT_ROOT, HistoryLimit,
    Publish,
};
pub use error::{ConfigCenterError, ConfigResult};
pub use grey::{ConfigInstance, GreyRule, InstanceReport, Rollout};
pub use model::{ConfigEntry, ConfigFormat, ConfigId, ConfigMeta, MAX_ID_PART};
pub use secret::SecretKey;
pub use typed::{ConfigSource, ConfigStatus, TypedConfig, TypedConfigBuilder};
pub use watch::{ConfigEvent, ConfigWatch};
