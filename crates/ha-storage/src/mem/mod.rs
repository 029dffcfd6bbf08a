//! In-memory backends: test doubles for tests and the deterministic
//! simulator, with an explicit durable layer so that a simulated power
//! failure ([`MemLogStore::crash`], [`MemStateStore::crash`]) loses exactly
//! what a real device could lose.

mod log;
mod state;

pub use log::{MemLogStats, MemLogStore};
pub use state::MemStateStore;

use std::sync::Arc;

use ha_core::StorageError;

/// A caller broke a storage contract (a gap in the log, a non-contiguous
/// write, an inverted range). A real backend would corrupt itself; the test
/// doubles refuse, so the bug surfaces in tests instead of as lost data.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Misuse {
    #[error("entries are not contiguous: index {found} follows {previous}")]
    NotContiguous { previous: u64, found: u64 },
    #[error("entries starting at {first} leave a gap after the last index {last}")]
    Gap { first: u64, last: u64 },
    #[error(
        "entries starting at {first} would overwrite compacted entries (first index {first_index})"
    )]
    OverwritesCompacted { first: u64, first_index: u64 },
    #[error("invalid entry range [{low}, {high})")]
    InvertedRange { low: u64, high: u64 },
    #[error("cannot compact through {through}: {reason}")]
    CannotCompact { through: u64, reason: &'static str },
}

impl From<Misuse> for StorageError {
    fn from(m: Misuse) -> Self {
        StorageError::Other(Arc::new(m))
    }
}

/// The error every write returns while fault injection is on.
fn injected_write_failure(op: &'static str) -> StorageError {
    StorageError::io(op, std::io::Error::other("injected write failure"))
}
