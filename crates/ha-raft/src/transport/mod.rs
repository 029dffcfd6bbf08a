//! Transports between members.

mod mem;
pub(crate) mod tcp;

pub use mem::{MemNetwork, MemTransport};
#[cfg(feature = "tls")]
pub use tcp::{ClientAuth, PeerTls, TlsError, TlsFiles, member_name};
pub use tcp::{
    PeerLink, PeerLinkState, PeerSecurity, TcpConfig, TcpRejections, TcpStats, TcpTransport,
};
