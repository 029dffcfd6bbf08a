//! The inbound side: the accept loop and one reader task per connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ha_core::NodeId;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::stats::add;
use super::stream::{PeerSecurity, PeerStream};
use super::wire::{self, ConnKind, HELLO_BODY_LEN, Hello, LEN_PREFIX, PREAMBLE_LEN, Reject};
use super::{Admitted, OpenGauge, Shared, call, snapshot};

/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Read buffers above this are released after use rather than kept.
const KEEP_BUFFER: usize = 1024 * 1024;

/// Why reading from a connection stopped.
pub(crate) enum Failure {
    /// A protocol violation: counted and logged.
    Reject(Reject),
    /// The socket failed (reset, ...): logged at debug.
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Failure::Reject(Reject::Truncated)
        } else {
            Failure::Io(e)
        }
    }
}

impl From<Reject> for Failure {
    fn from(r: Reject) -> Self {
        Failure::Reject(r)
    }
}

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = Shared::stopped(&mut shutdown) => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, remote)) => {
                add(&shared.counters.connections_accepted, 1);
                // Over a limit: closed at once, unread, before any
                // handshake work or buffer.
                match shared.admit(remote.ip()) {
                    Some(admitted) => {
                        shared.spawn(serve(shared.clone(), stream, remote, admitted));
                    }
                    None => {
                        drop(stream);
                        shared.counters.rejected(&Reject::TooManyConnections);
                        tracing::debug!(node = %shared.local, %remote, "inbound connection limit reached; connection closed");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(node = %shared.local, error = %e, "accepting a peer connection failed");
                tokio::select! {
                    _ = Shared::stopped(&mut shutdown) => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

/// The TLS handshake (if configured), the hello, and the check that the
/// certificate names the sender the hello claims.
async fn handshake(
    shared: &Shared,
    stream: TcpStream,
) -> Result<(BufReader<PeerStream>, Hello), Failure> {
    let stream = match &shared.security {
        PeerSecurity::InsecurePlaintext => PeerStream::Plain(stream),
        #[cfg(feature = "tls")]
        PeerSecurity::Tls(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            match acceptor.accept(stream).await {
                Ok(s) => PeerStream::Tls(Box::new(s.into())),
                Err(e) => {
                    tracing::warn!(node = %shared.local, error = %e, "peer TLS handshake failed");
                    return Err(Reject::TlsHandshake.into());
                }
            }
        }
    };
    let mut rd = BufReader::with_capacity(64 * 1024, stream);
    let hello = read_hello(shared, &mut rd).await?;
    #[cfg(feature = "tls")]
    if let PeerStream::Tls(_) = rd.get_ref() {
        let named = rd
            .get_ref()
            .peer_cert()
            .is_some_and(|cert| super::tls::names_member(cert, hello.from));
        if !named {
            return Err(Reject::WrongIdentity(hello.from).into());
        }
    }
    Ok((rd, hello))
}

/// Reads one inbound connection until it ends or is refused.
async fn serve(shared: Arc<Shared>, stream: TcpStream, remote: SocketAddr, mut admitted: Admitted) {
    let open = OpenGauge::new(&shared.counters.open_inbound);
    let mut shutdown = shared.shutdown.subscribe();
    let shook = tokio::select! {
        _ = Shared::stopped(&mut shutdown) => return,
        r = tokio::time::timeout(shared.config.handshake_timeout, handshake(&shared, stream)) => {
            match r {
                Ok(r) => r,
                Err(_) => Err(Failure::Reject(Reject::HandshakeTimeout)),
            }
        }
    };
    let (mut rd, hello) = match shook {
        Ok(h) => h,
        Err(f) => return refused(&shared, remote, None, f),
    };
    if !admitted.identify(hello.from) {
        return refused(
            &shared,
            remote,
            Some(hello.from),
            Reject::TooManyConnections.into(),
        );
    }
    if hello.kind == ConnKind::Snapshot {
        // Counted as a snapshot stream, not as a message connection.
        drop(open);
        tracing::debug!(node = %shared.local, peer = %hello.from, %remote, "snapshot stream opened");
        let end = tokio::select! {
            _ = Shared::stopped(&mut shutdown) => Ok(()),
            r = snapshot::receive(&shared, &mut rd, hello) => r,
        };
        if let Err(f) = end {
            refused(&shared, remote, Some(hello.from), f);
        }
        return;
    }
    if hello.kind == ConnKind::Calls {
        // Counted as a call connection, not as a message connection.
        drop(open);
        tracing::debug!(node = %shared.local, peer = %hello.from, %remote, "call connection opened");
        let end = tokio::select! {
            _ = Shared::stopped(&mut shutdown) => Ok(()),
            r = call::serve(&shared, rd, hello.from) => r,
        };
        if let Err(f) = end {
            refused(&shared, remote, Some(hello.from), f);
        }
        return;
    }
    tracing::debug!(node = %shared.local, peer = %hello.from, %remote, "peer connected");
    let (conn, superseded) = shared.register_inbound(hello.from);
    let end = tokio::select! {
        _ = Shared::stopped(&mut shutdown) => Ok(()),
        _ = superseded.notified() => {
            add(&shared.counters.connections_superseded, 1);
            tracing::debug!(node = %shared.local, peer = %hello.from, %remote, "peer connected again; older connection closed");
            Ok(())
        }
        r = read_frames(&shared, &mut rd, hello.from) => r,
    };
    shared.unregister_inbound(hello.from, conn);
    if let Err(f) = end {
        refused(&shared, remote, Some(hello.from), f);
    }
}

fn refused(shared: &Shared, remote: SocketAddr, peer: Option<NodeId>, f: Failure) {
    match f {
        Failure::Reject(r) => {
            shared.counters.rejected(&r);
            tracing::warn!(node = %shared.local, ?peer, %remote, reason = %r, "peer connection closed");
        }
        Failure::Io(e) => {
            tracing::debug!(node = %shared.local, ?peer, %remote, error = %e, "peer connection failed");
        }
    }
}

async fn read_hello(shared: &Shared, rd: &mut BufReader<PeerStream>) -> Result<Hello, Failure> {
    let mut preamble = [0u8; PREAMBLE_LEN];
    rd.read_exact(&mut preamble).await?;
    let version = wire::check_preamble(&preamble)?;
    let mut body = [0u8; HELLO_BODY_LEN];
    rd.read_exact(&mut body).await?;
    let mut tail = [0u8; 1];
    let tail = &mut tail[..wire::hello_tail_len(version)];
    rd.read_exact(tail).await?;
    add(
        &shared.counters.bytes_received,
        (PREAMBLE_LEN + HELLO_BODY_LEN + tail.len()) as u64,
    );
    let kind = wire::decode_kind(tail)?;
    Ok(wire::check_hello_body(
        &body,
        kind,
        &shared.cluster_id,
        shared.local,
    )?)
}

/// Reads frames and delivers their messages. `Ok` on a clean close at a
/// frame boundary.
async fn read_frames(
    shared: &Shared,
    rd: &mut BufReader<PeerStream>,
    sender: NodeId,
) -> Result<(), Failure> {
    let c = &shared.counters;
    let max = shared.config.max_frame_bytes;
    let mut payload = Vec::new();
    loop {
        let mut prefix = [0u8; LEN_PREFIX];
        if rd.read(&mut prefix[..1]).await? == 0 {
            tracing::debug!(node = %shared.local, peer = %sender, "peer closed its connection");
            return Ok(());
        }
        rd.read_exact(&mut prefix[1..]).await?;
        let len = wire::check_len(prefix, max)?;
        payload.clear();
        // Grows with what actually arrives: a length prefix alone does not
        // make this member allocate up to the maximum.
        let got = (&mut *rd)
            .take(len as u64)
            .read_to_end(&mut payload)
            .await?;
        if got < len {
            return Err(Reject::Truncated.into());
        }
        add(&c.frames_received, 1);
        add(&c.bytes_received, (LEN_PREFIX + len) as u64);
        let messages = wire::decode_batch(&payload)?;
        let Some(sink) = shared.sink.get() else {
            continue;
        };
        for m in messages {
            if m.to == shared.local.0 && m.from == sender.0 {
                add(&c.messages_received, 1);
                sink.deliver(m);
            } else {
                add(&c.messages_misaddressed, 1);
                tracing::debug!(node = %shared.local, peer = %sender, from = m.from, to = m.to, "misaddressed message dropped");
            }
        }
        if payload.capacity() > KEEP_BUFFER {
            payload = Vec::new();
        }
    }
}
