//! Transports between members.

mod mem;

pub use mem::{MemNetwork, MemTransport};
