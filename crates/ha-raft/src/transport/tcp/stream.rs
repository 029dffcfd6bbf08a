//! A peer connection's byte stream: plain TCP (only when configured as
//! [`PeerSecurity::InsecurePlaintext`]) or mutual TLS over TCP.
//!
//! TLS buffers what is written: every write on a [`PeerStream`] is followed
//! by a flush (a no-op on plain TCP).

use std::io;
use std::pin::Pin;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[cfg(feature = "tls")]
use super::tls::PeerTls;

/// How a member's peer connections are protected.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum PeerSecurity {
    /// Plain TCP: anyone who can reach the port can claim to be a member.
    /// Only for tests, demos and networks where every host is trusted; a
    /// warning is logged when a transport binds with it.
    InsecurePlaintext,
    /// Mutual TLS (feature `tls`): see [`PeerTls`].
    #[cfg(feature = "tls")]
    Tls(Arc<PeerTls>),
}

impl PeerSecurity {
    /// Whether peer connections are plaintext.
    pub fn is_plaintext(&self) -> bool {
        matches!(self, PeerSecurity::InsecurePlaintext)
    }
}

/// One peer connection's bytes.
pub(crate) enum PeerStream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl PeerStream {
    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            PeerStream::Plain(s) => s,
            #[cfg(feature = "tls")]
            PeerStream::Tls(s) => s.get_ref().0,
        }
    }

    /// The peer's leaf certificate (TLS; verified against the CA by the
    /// handshake). `None` on plain TCP.
    #[cfg(feature = "tls")]
    pub(crate) fn peer_cert(&self) -> Option<&rustls_pki_types::CertificateDer<'static>> {
        match self {
            PeerStream::Plain(_) => None,
            PeerStream::Tls(s) => s.get_ref().1.peer_certificates()?.first(),
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "tls")]
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PeerStream::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            PeerStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
