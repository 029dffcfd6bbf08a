//! One peer's outbound side: a bounded queue and the writer task that
//! connects, batches and reconnects.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ha_core::NodeId;
use ha_core::eraftpb::Message;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::config::TcpConfig;
use super::stats::add;
use super::stream::{PeerSecurity, PeerStream};
use super::wire::{self, ConnKind, Hello, MessageBatch};
use super::{OpenGauge, Shared};

/// A connection that lived this long counts as a success: the backoff
/// starts over when it breaks.
const STABLE_AFTER: Duration = Duration::from_secs(1);
/// Write buffers above this are released after use rather than kept.
const KEEP_BUFFER: usize = 1024 * 1024;

/// The state of this member's message connection to one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerLinkState {
    /// Nothing to send yet: no connection was needed.
    Idle,
    /// Connecting (and sending the hello).
    Connecting,
    /// Connected; messages flow.
    Connected,
    /// The last attempt failed or the connection broke; waiting before the
    /// next attempt.
    Backoff,
}

impl PeerLinkState {
    /// A stable lowercase name (for labels and logs).
    pub fn as_str(self) -> &'static str {
        match self {
            PeerLinkState::Idle => "idle",
            PeerLinkState::Connecting => "connecting",
            PeerLinkState::Connected => "connected",
            PeerLinkState::Backoff => "backoff",
        }
    }

    fn from_u8(v: u8) -> PeerLinkState {
        match v {
            1 => PeerLinkState::Connecting,
            2 => PeerLinkState::Connected,
            3 => PeerLinkState::Backoff,
            _ => PeerLinkState::Idle,
        }
    }
}

/// What the writer task publishes about its connection.
#[derive(Default)]
pub(crate) struct LinkStatus {
    state: AtomicU8,
    failures: AtomicU32,
}

impl LinkStatus {
    fn set(&self, state: PeerLinkState, failures: u32) {
        self.state.store(state as u8, Ordering::Relaxed);
        self.failures.store(failures, Ordering::Relaxed);
    }

    pub(crate) fn state(&self) -> PeerLinkState {
        PeerLinkState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// The sending end of one peer's writer. Dropping it aborts the writer.
pub(crate) struct Link {
    queue: mpsc::Sender<Message>,
    addr: watch::Sender<SocketAddr>,
    task: AbortHandle,
    status: Arc<LinkStatus>,
}

impl Link {
    pub(crate) fn spawn(shared: &Arc<Shared>, peer: NodeId, addr: SocketAddr) -> Link {
        let (queue, rx) = mpsc::channel(shared.config.send_queue_len);
        let (addr, addr_rx) = watch::channel(addr);
        let status = Arc::new(LinkStatus::default());
        let task = shared.spawn(run(shared.clone(), peer, rx, addr_rx, status.clone()));
        Link {
            queue,
            addr,
            task,
            status,
        }
    }

    pub(crate) fn status(&self) -> &LinkStatus {
        &self.status
    }

    /// The peer's queue; `try_send` on it never blocks.
    pub(crate) fn queue(&self) -> &mpsc::Sender<Message> {
        &self.queue
    }

    pub(crate) fn set_addr(&self, addr: SocketAddr) {
        self.addr.send_replace(addr);
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a connection ended.
enum End {
    /// The transport stopped, or the link was dropped.
    Stop,
    /// The peer's address changed.
    Moved,
    /// Write error or timeout, or the peer closed the connection.
    Broken(String),
}

/// One jittered backoff after `failures` consecutive failures (≥ 1).
fn backoff(config: &TcpConfig, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = config
        .reconnect_backoff_min
        .saturating_mul(1 << doublings)
        .min(config.reconnect_backoff_max);
    let half = base / 2;
    half + rand::thread_rng().gen_range(Duration::ZERO..=half)
}

/// The writer of one peer. Connects when there is something to send.
async fn run(
    shared: Arc<Shared>,
    peer: NodeId,
    mut queue: mpsc::Receiver<Message>,
    mut addr: watch::Receiver<SocketAddr>,
    status: Arc<LinkStatus>,
) {
    let local = shared.local;
    let c = &shared.counters;
    let mut shutdown = shared.shutdown.subscribe();
    let mut carry: Option<Message> = None;
    let mut failures: u32 = 0;
    let mut buf = Vec::new();
    loop {
        if carry.is_none() {
            status.set(PeerLinkState::Idle, failures);
            tokio::select! {
                _ = Shared::stopped(&mut shutdown) => return,
                m = queue.recv() => match m {
                    Some(m) => carry = Some(m),
                    None => return,
                },
            }
        }
        let target = *addr.borrow_and_update();
        add(&c.connect_attempts, 1);
        status.set(PeerLinkState::Connecting, failures);
        let stream = tokio::select! {
            _ = Shared::stopped(&mut shutdown) => return,
            r = connect(&shared, peer, target, ConnKind::Messages) => r,
        };
        let why = match stream {
            Ok(stream) => {
                if failures > 0 {
                    tracing::info!(node = %local, %peer, addr = %target, "connected to peer");
                } else {
                    tracing::debug!(node = %local, %peer, addr = %target, "connected to peer");
                }
                status.set(PeerLinkState::Connected, 0);
                let opened = Instant::now();
                let end = pump(
                    &shared,
                    peer,
                    stream,
                    &mut queue,
                    &mut carry,
                    &mut addr,
                    &mut shutdown,
                    &mut buf,
                )
                .await;
                match end {
                    End::Stop => return,
                    End::Moved => {
                        failures = 0;
                        continue;
                    }
                    End::Broken(why) => {
                        add(&c.connections_lost, 1);
                        failures = if opened.elapsed() >= STABLE_AFTER {
                            1
                        } else {
                            failures + 1
                        };
                        tracing::info!(node = %local, %peer, addr = %target, reason = %why, "connection to peer lost");
                        why
                    }
                }
            }
            Err(e) => {
                add(&c.connect_failures, 1);
                failures += 1;
                if failures == 1 {
                    tracing::info!(node = %local, %peer, addr = %target, error = %e, "peer unreachable");
                } else {
                    tracing::debug!(node = %local, %peer, addr = %target, error = %e, failures, "peer still unreachable");
                }
                e.to_string()
            }
        };
        // Once per failed attempt or broken connection, not per message.
        shared.report_unreachable(peer);
        // What was queued is stale by the time the peer is back; raft
        // re-sends what still matters.
        let mut discarded = 0u64;
        if let Some(m) = carry.take() {
            shared.discard(&m, &c.dropped_unreachable);
            discarded += 1;
        }
        while let Ok(m) = queue.try_recv() {
            shared.discard(&m, &c.dropped_unreachable);
            discarded += 1;
        }
        if discarded > 0 {
            tracing::debug!(node = %local, %peer, discarded, reason = %why, "messages for an unreachable peer discarded");
        }
        let wait = backoff(&shared.config, failures);
        status.set(PeerLinkState::Backoff, failures);
        tokio::select! {
            _ = Shared::stopped(&mut shutdown) => return,
            _ = tokio::time::sleep(wait) => {}
            r = addr.changed() => {
                if r.is_err() {
                    return;
                }
                failures = 0;
            }
        }
    }
}

/// Connects (with TLS, checking the peer's certificate names `peer`) and
/// writes the hello, within the connect timeout.
pub(crate) async fn connect(
    shared: &Shared,
    peer: NodeId,
    addr: SocketAddr,
    kind: ConnKind,
) -> io::Result<PeerStream> {
    let hello = wire::encode_hello(&Hello {
        cluster_id: shared.cluster_id,
        from: shared.local,
        to: peer,
        kind,
    });
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(shared.config.nodelay)?;
        let mut stream = match &shared.security {
            PeerSecurity::InsecurePlaintext => PeerStream::Plain(tcp),
            #[cfg(feature = "tls")]
            PeerSecurity::Tls(tls) => {
                let name = super::tls::server_name(peer).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "no TLS name for the peer")
                })?;
                let connector = tokio_rustls::TlsConnector::from(tls.client_config());
                let s = connector.connect(name, tcp).await?;
                PeerStream::Tls(Box::new(s.into()))
            }
        };
        stream.write_all(&hello).await?;
        stream.flush().await?;
        Ok(stream)
    };
    match tokio::time::timeout(shared.config.connect_timeout, attempt).await {
        Ok(r) => {
            if r.is_ok() {
                add(&shared.counters.bytes_sent, hello.len() as u64);
            }
            r
        }
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no connection within {:?}", shared.config.connect_timeout),
        )),
    }
}

/// Writes frames to an established connection until it ends. Each write
/// carries everything queued at that moment (up to the frame limit).
#[allow(clippy::too_many_arguments)]
async fn pump(
    shared: &Shared,
    peer: NodeId,
    stream: PeerStream,
    queue: &mut mpsc::Receiver<Message>,
    carry: &mut Option<Message>,
    addr: &mut watch::Receiver<SocketAddr>,
    shutdown: &mut watch::Receiver<bool>,
    buf: &mut Vec<u8>,
) -> End {
    let c = &shared.counters;
    let _open = OpenGauge::new(&c.open_outbound);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let max = shared.config.max_frame_bytes as usize;
    let mut batch = MessageBatch::default();
    loop {
        let first = match carry.take() {
            Some(m) => m,
            None => tokio::select! {
                _ = Shared::stopped(shutdown) => return End::Stop,
                r = addr.changed() => match r {
                    Ok(()) => return End::Moved,
                    Err(_) => return End::Stop,
                },
                why = closed_by_peer(&mut rd) => return End::Broken(why),
                m = queue.recv() => match m {
                    Some(m) => m,
                    None => return End::Stop,
                },
            },
        };
        batch.messages.clear();
        let mut size = 0usize;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            let cost = wire::batch_cost(&m);
            if cost > max {
                tracing::warn!(node = %shared.local, %peer, bytes = cost, max, msg_type = ?m.msg_type(), "message larger than max_frame_bytes dropped");
                shared.discard(&m, &c.dropped_too_large);
            } else if size + cost > max {
                *carry = Some(m);
                break;
            } else {
                size += cost;
                batch.messages.push(m);
            }
            next = queue.try_recv().ok();
        }
        if batch.messages.is_empty() {
            continue;
        }
        buf.clear();
        if let Err(e) = wire::encode_frame(&batch, buf) {
            tracing::error!(node = %shared.local, %peer, error = %e, "frame encoding failed; batch dropped");
            for m in batch.messages.drain(..) {
                shared.discard(&m, &c.dropped_too_large);
            }
            continue;
        }
        let written = tokio::select! {
            _ = Shared::stopped(shutdown) => return End::Stop,
            r = tokio::time::timeout(shared.config.write_timeout, async {
                wr.write_all(buf).await?;
                wr.flush().await
            }) => r,
        };
        let failure = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("write failed: {e}")),
            Err(_) => Some(format!(
                "write did not complete within {:?}",
                shared.config.write_timeout
            )),
        };
        if let Some(why) = failure {
            for m in batch.messages.drain(..) {
                shared.discard(&m, &c.dropped_unreachable);
            }
            return End::Broken(why);
        }
        add(&c.frames_sent, 1);
        add(&c.messages_sent, batch.messages.len() as u64);
        add(&c.bytes_sent, buf.len() as u64);
        if buf.capacity() > KEEP_BUFFER {
            *buf = Vec::new();
        }
    }
}

/// Resolves when the listener closes the connection (it never writes, so
/// any byte is a protocol violation, and also ends the connection).
async fn closed_by_peer(rd: &mut ReadHalf<PeerStream>) -> String {
    let mut probe = [0u8; 64];
    match rd.read(&mut probe).await {
        Ok(0) => "closed by the peer".to_owned(),
        Ok(_) => "the peer wrote on a one-way connection".to_owned(),
        Err(e) => format!("read failed: {e}"),
    }
}
