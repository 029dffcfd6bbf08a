//! Transports between members.

mod mem;
pub(crate) mod tcp;

pub use mem::{MemNetwork, MemTransport};
pub use tcp::{TcpConfig, TcpRejections, TcpStats, TcpTransport};
