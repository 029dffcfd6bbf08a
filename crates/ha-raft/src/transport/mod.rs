//! Transports between members.

mod mem;
pub(crate) mod tcp;

pub use mem::{MemNetwork, MemTransport};
pub use tcp::{PeerLink, PeerLinkState, TcpConfig, TcpRejections, TcpStats, TcpTransport};
