//! A fault-injecting TCP proxy for one directed link between two members
//! (test tooling): member A dials B through the proxy of link A→B, which
//! forwards, drops or delays what flows over A's connections to B.
//!
//! ha's TCP transport carries raft messages one way per connection (each
//! member dials each peer it sends to), so one proxy per directed link
//! makes one-way partitions possible: blackhole A→B and pass B→A, and B
//! still reaches A while A no longer reaches B. Peer calls and snapshot
//! streams that A opens to B go through the same proxy, both directions of
//! their bytes.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use ha_examples::proxy::{LinkMode, LinkProxy};
//! let link = LinkProxy::start("127.0.0.1:7002".parse().unwrap()).await?;
//! // Give member 1 `2=<link.addr()>` in its --members list, then:
//! link.set(LinkMode::Blackhole);
//! link.set(LinkMode::Pass);
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What a link does to the bytes that cross it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    /// Forward at once.
    Pass,
    /// Keep connections open (and accept new ones) but discard every byte
    /// in both directions: a network that silently loses packets. The
    /// sender sees no error; only its peer's silence.
    Blackhole,
    /// Close every open connection and every new one at once: a host that
    /// answers with resets.
    Refuse,
    /// Forward each chunk this long after it arrived (order kept).
    Delay(Duration),
}

/// Chunks waiting to be delivered on one direction of one connection
/// (bounded: a full queue stops reading, so memory stays bounded).
const QUEUE_CHUNKS: usize = 256;
/// Largest read.
const CHUNK: usize = 64 * 1024;
/// How long a connection to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One directed link's proxy: listens on an ephemeral loopback port and
/// forwards to `target` as [`LinkMode`] says. Its tasks stop when it drops.
pub struct LinkProxy {
    addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<LinkMode>,
    accept: JoinHandle<()>,
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        // Connection tasks see the mode channel close and stop.
        self.accept.abort();
    }
}

impl std::fmt::Debug for LinkProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkProxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("mode", &*self.mode.borrow())
            .finish()
    }
}

impl LinkProxy {
    /// Starts a proxy to `target` in [`LinkMode::Pass`] on `127.0.0.1:0`.
    ///
    /// # Errors
    /// When the listener cannot be bound.
    pub async fn start(target: SocketAddr) -> io::Result<LinkProxy> {
        LinkProxy::bind("127.0.0.1:0".parse().map_err(io::Error::other)?, target).await
    }

    /// Starts a proxy to `target` in [`LinkMode::Pass`] listening on
    /// `listen` (a proxy restarted on the same port).
    ///
    /// # Errors
    /// When the listener cannot be bound.
    pub async fn bind(listen: SocketAddr, target: SocketAddr) -> io::Result<LinkProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(LinkMode::Pass);
        let accept = tokio::spawn(accept_loop(listener, target, mode.clone()));
        Ok(LinkProxy {
            addr,
            target,
            mode,
            accept,
        })
    }

    /// Where the proxy listens (what the dialling member is told its peer's
    /// address is).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Changes what the link does, for open connections too.
    pub fn set(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }

    /// What the link does now.
    pub fn mode(&self) -> LinkMode {
        *self.mode.borrow()
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, mode: watch::Sender<LinkMode>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors or similar: try again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if *mode.borrow() == LinkMode::Refuse {
            drop(client);
            continue;
        }
        tokio::spawn(connection(client, target, mode.subscribe()));
    }
}

async fn connection(client: TcpStream, target: SocketAddr, mode: watch::Receiver<LinkMode>) {
    let server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        // The target is down: close the client's connection, as a refused
        // dial would.
        _ => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Either direction ending (end of stream, an error, Refuse, the proxy
    // dropped) ends the connection: dropping all four halves closes both
    // sockets.
    tokio::select! {
        _ = pump(client_read, server_write, mode.clone()) => {}
        _ = pump(server_read, client_write, mode) => {}
    }
}

/// One direction of one connection: reads chunks and hands them, with the
/// time each may be delivered, to a writer (so a delay never blocks
/// reading, and order is kept). Returns when the connection should close.
async fn pump(mut from: OwnedReadHalf, to: OwnedWriteHalf, mut mode: watch::Receiver<LinkMode>) {
    let (tx, rx) = mpsc::channel::<(Instant, Bytes)>(QUEUE_CHUNKS);
    let writer = deliver(rx, to);
    tokio::pin!(writer);
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        buf.reserve(CHUNK);
        tokio::select! {
            // The writer failed (the other side closed).
            _ = &mut writer => return,
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow() == LinkMode::Refuse {
                    return;
                }
            }
            read = from.read_buf(&mut buf) => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let chunk = buf.split().freeze();
                let at = match *mode.borrow() {
                    LinkMode::Pass => Instant::now(),
                    LinkMode::Delay(d) => Instant::now() + d,
                    LinkMode::Blackhole | LinkMode::Refuse => continue,
                };
                // A full queue waits here (and stops reading): bounded.
                tokio::select! {
                    sent = tx.send((at, chunk)) => if sent.is_err() { return },
                    _ = &mut writer => return,
                }
            }
        }
    }
    // End of stream: deliver what is queued, then pass the end on.
    drop(tx);
    writer.await;
}

async fn deliver(mut rx: mpsc::Receiver<(Instant, Bytes)>, mut to: OwnedWriteHalf) {
    while let Some((at, chunk)) = rx.recv().await {
        tokio::time::sleep_until(at).await;
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}
