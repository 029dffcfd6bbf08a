//! In-memory backends: test doubles for tests and the deterministic
//! simulator, with an explicit durable layer so that a simulated power
//! failure ([`MemLogStore::crash`], [`MemStateStore::crash`]) loses exactly
//! what a real device could lose.

mod log;
mod state;

pub use log::{MemLogStats, MemLogStore};
pub use state::MemStateStore;

use ha_core::StorageError;

/// The error every write returns while fault injection is on.
fn injected_write_failure(op: &'static str) -> StorageError {
    StorageError::io(op, std::io::Error::other("injected write failure"))
}
