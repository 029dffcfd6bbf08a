//! [`TcpTransport`]: the production network between members, on the
//! application's tokio runtime.
//!
//! The wire format is documented on [`TcpTransport`] (this module is
//! private).

mod call;
mod config;
mod inbound;
mod outbound;
mod snapshot;
mod stats;
mod stream;
#[cfg(feature = "tls")]
mod tls;
pub(crate) mod wire;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use ha_core::eraftpb::{Message, MessageType};
use ha_core::{CallReply, ClusterId, Error, MessageSink, NodeId, SnapshotOutcome, Transport};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc::error::TrySendError, watch};
use tokio::task::AbortHandle;

pub use config::TcpConfig;
pub use stats::{TcpRejections, TcpStats};
pub use stream::PeerSecurity;
#[cfg(feature = "tls")]
pub use tls::{ClientAuth, PeerTls, TlsError, TlsFiles, member_name};

use call::CallConn;
use outbound::Link;
pub use outbound::PeerLinkState;
use stats::{Counters, add};

/// One peer as [`TcpTransport::peers`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLink {
    /// The peer.
    pub id: NodeId,
    /// Where it is known to listen.
    pub addr: SocketAddr,
    /// This member's message connection to it.
    pub state: PeerLinkState,
    /// Consecutive failed attempts (0 once a connection holds).
    pub failures: u32,
    /// Messages queued for it.
    pub queued: usize,
}

/// The TCP transport of one member: the default production [`Transport`],
/// on the application's tokio runtime (it never starts a runtime of its
/// own).
///
/// Create it with [`TcpTransport::bind`], fill its address book with
/// [`set_peer`](Self::set_peer), and hand it to
/// [`Node::start`](crate::Node::start), which calls
/// [`Transport::start`]. [`Transport::stop`] ends it for good; a member that
/// restarts binds a new one.
///
/// ```
/// use ha_core::{ClusterId, Config, NodeId};
/// use ha_raft::{TcpConfig, TcpTransport};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let config = Config::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)]);
/// let cluster = ClusterId::derive(&config.initial_members, &config.cluster_token);
/// let tcp = TcpConfig::default()
///     .validate_for(&config)
///     .expect("frames fit raft's largest message");
/// let transport =
///     TcpTransport::bind("127.0.0.1:0".parse().unwrap(), cluster, NodeId(1), tcp).await?;
/// // Where the others listen (from the application's config or membership).
/// transport.set_peer(NodeId(2), "127.0.0.1:7002".parse().unwrap());
/// transport.set_peer(NodeId(3), "127.0.0.1:7003".parse().unwrap());
/// assert_ne!(transport.local_addr().port(), 0);
/// // Then: Node::start(config, log_store, state_store, state_machine, transport).
/// # Ok(())
/// # }
/// ```
///
/// # Wire format, version 2
///
/// A connection carries raft messages, one snapshot stream, or peer calls,
/// as its hello says. A message connection carries messages one way: the dialer
/// writes, the listener only reads (it never writes a byte; the dialer
/// takes any byte or end-of-stream from the listener as "connection
/// closed"). Each member dials each peer it sends to, so a pair of members
/// uses two message connections, one per direction, plus one short-lived
/// connection per snapshot transfer. All integers are big-endian.
///
/// ```text
/// hello (once, first):
///   magic        4 bytes   "HARP"
///   version      u16       1 or 2
///   cluster id   32 bytes  the full ClusterId (SHA-256 of members + token)
///   sender       u64       the dialer's member id (never 0)
///   receiver     u64       the member the dialer means to reach
///   kind         u8        version 2 only: 0 messages, 1 snapshot stream,
///                          2 peer calls (a version-1 hello is a message
///                          connection)
/// message connection, then frames until either side closes:
///   length       u32       payload bytes, at most TcpConfig::max_frame_bytes
///   payload      protobuf  MessageBatch { repeated eraftpb.Message messages = 1; }
/// snapshot stream, then frames of `length u32, tag u8, body` (length
/// counts tag and body, at most max_frame_bytes):
///   dialer:   tag 1  body: the eraftpb.Message (MsgSnapshot; its
///                    snapshot.data is the engine's small descriptor)
///             tag 2  body: snapshot bytes (a chunk), any number of them
///             tag 3  empty: the end
///   listener: tag 4  empty: verified (size, CRC), durable, handed to raft
///             tag 5  body: UTF-8 reason: refused, nothing reached raft
/// call connection, then frames of `length u32, body` (length counts the
/// body, at most TcpConfig::max_call_bytes):
///   dialer:   request  call id u64 (1, 2, ... per connection), payload
///   listener: reply    call id u64, status u8, body:
///                      0 ok: the handler's reply bytes
///                      1 no call handler (empty)
///                      2 overloaded: one reason byte
///                      3 not leader: leader hint u64 (0 = none)
///                      4 the handler failed: UTF-8 reason
///                      5 the member is stopping (empty)
/// ```
///
/// Replies come in any order. The dialer refuses (closes, counts) a reply
/// to an id it never issued or with an unknown status; a reply to a call
/// whose deadline passed is dropped and counted
/// ([`TcpStats::call_replies_late`]). Either side closes a call connection
/// on an oversized, truncated or garbled frame, and on a frame begun but
/// not finished within `call_stall_timeout`.
///
/// This build sends the version-1 hello on message connections, so it
/// talks to version-1 members; they refuse snapshot streams and call
/// connections (unknown version): snapshots to them fail, and calls to them
/// end `CallOutcomeUnknown { ConnectionLost }`, until they are upgraded.
///
/// A receiver reads magic and version first, so a later version may change
/// the rest of the hello. It closes the connection, logs the reason and
/// counts it ([`TcpStats::rejected`]) when: the magic is wrong, the version
/// is not 1 or 2, the kind is unknown, the cluster id is not its own, the
/// receiver is not itself, the sender is 0 or itself, the hello does not
/// arrive within `handshake_timeout`, a frame is longer than
/// `max_frame_bytes`, a payload does not decode, or a message in it carries
/// a raft message or entry type that raft-rs does not know (its generated
/// getters would panic) or a local-only type. Nothing else happens to the
/// member. Messages in a good frame are delivered only when their `to` is
/// this member and their `from` is the connection's sender; others are
/// dropped and counted.
///
/// A snapshot stream is refused the same way when it does not open with a
/// `MsgSnapshot` from the hello's sender to this member, has a frame out of
/// place or an unknown tag, ends before its end marker, stays idle for
/// `snapshot_idle_timeout`, comes while the same sender has another stream
/// open, or when the engine refuses it (a size or CRC that does not match
/// the descriptor, or staging failed; the receiver then answers tag 5). The
/// engine discards what it staged: nothing reaches raft.
///
/// Payloads are decoded only with `prost::Message::decode`, never with
/// rust-protobuf (which panics on malformed input; `clippy.toml` bans it).
///
/// # Sending
///
/// `send` never blocks: each peer has a bounded queue and a writer task,
/// started on the first message for that peer (no eager connection). The
/// writer drains everything queued into one frame per write, reconnects
/// with jittered exponential backoff, reports the peer unreachable to the
/// engine once per failed connection attempt or broken connection, and
/// discards what was queued for a peer it cannot reach (raft retries).
///
/// A `MsgSnapshot` never enters that queue: `send` starts a snapshot
/// stream on a new connection, so appends and heartbeats never wait behind
/// snapshot bytes. The engine's blocking snapshot reader (and, on the
/// receiving member, its writer) runs on tokio's blocking pool. The sender
/// reports [`SnapshotOutcome::Finished`] to the engine only after the
/// receiver's ok ack, and [`SnapshotOutcome::Failed`] when the engine
/// refuses to open the snapshot (one in flight to that peer already), the
/// peer cannot be reached, refuses the stream or drops it, or the stream
/// makes no progress for `snapshot_idle_timeout`; raft then retries.
///
/// # Peer calls
///
/// [`Transport::call`] uses one call connection per peer, dialled by the
/// first call (no eager connection) and again by the first call after it
/// closed; every call in flight to that peer shares it (at most
/// `max_calls_in_flight`; one more is answered `Overloaded`). Deadlines are
/// kept here, on the calling side. A connection that cannot be made
/// answers its calls `PeerUnreachable`; one that breaks answers every call
/// pending on it `CallOutcomeUnknown { ConnectionLost }` at once; `stop`
/// answers them `Shutdown`. On the called side requests go to the engine
/// ([`MessageSink::handle_call`]), which bounds how many handlers run.
pub struct TcpTransport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    listener: Mutex<Option<TcpListener>>,
    peers: Mutex<Peers>,
}

#[derive(Default)]
struct Peers {
    stopped: bool,
    book: HashMap<NodeId, PeerEntry>,
}

struct PeerEntry {
    addr: SocketAddr,
    /// The writer, started by the first message for this peer.
    link: Option<Link>,
    /// The call connection, made by the first call (and the first after it
    /// closed).
    calls: Option<Arc<CallConn>>,
}

/// What the transport's tasks share.
pub(crate) struct Shared {
    pub(crate) cluster_id: ClusterId,
    pub(crate) local: NodeId,
    pub(crate) config: TcpConfig,
    pub(crate) counters: Counters,
    runtime: Handle,
    shutdown: watch::Sender<bool>,
    live_tasks: watch::Sender<usize>,
    sink: OnceLock<Arc<dyn MessageSink>>,
    /// The open inbound connection of each sender, to close it when the
    /// same sender connects again (its dialer has given up on the old one).
    inbound: Mutex<HashMap<NodeId, (u64, Arc<Notify>)>>,
    next_conn: AtomicU64,
    /// Senders with a snapshot stream open to this member now.
    inbound_snapshots: Mutex<HashSet<NodeId>>,
    /// Plain TCP or mutual TLS.
    pub(crate) security: PeerSecurity,
    /// Inbound connections open now: in all, per IP, per sender.
    open: Mutex<OpenConns>,
}

#[derive(Default)]
struct OpenConns {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_peer: HashMap<NodeId, usize>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("local", &self.shared.local)
            .field("cluster", &self.shared.cluster_id)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl TcpTransport {
    /// The newest protocol version this build speaks. It also accepts (and
    /// sends, on message connections) version 1.
    pub const PROTOCOL_VERSION: u16 = wire::PROTOCOL_VERSION;

    /// Validates `config` and binds the listener at once (so `listen` may
    /// use port 0; read the port from [`local_addr`](Self::local_addr)).
    /// Nothing is accepted until the engine calls [`Transport::start`] and
    /// nothing is dialled until a message is sent. The transport's tasks
    /// run on the runtime this is called on.
    ///
    /// # Errors
    /// `InvalidInput` for an invalid config or a local id of 0; the bind
    /// error otherwise.
    ///
    /// Peer connections are plain TCP: [`PeerSecurity::InsecurePlaintext`]
    /// (tests, demos, fully trusted networks); a warning is logged. See
    /// [`bind_with`](Self::bind_with) for mutual TLS.
    pub async fn bind(
        listen: SocketAddr,
        cluster_id: ClusterId,
        local: NodeId,
        config: TcpConfig,
    ) -> io::Result<Arc<TcpTransport>> {
        Self::bind_with(
            listen,
            cluster_id,
            local,
            config,
            PeerSecurity::InsecurePlaintext,
        )
        .await
    }

    /// [`bind`](Self::bind) with the peer connections' protection: mutual
    /// TLS (`PeerSecurity::Tls`, feature `tls`) or, explicitly,
    /// [`PeerSecurity::InsecurePlaintext`] (logged as a warning).
    ///
    /// # Errors
    /// As [`bind`](Self::bind).
    pub async fn bind_with(
        listen: SocketAddr,
        cluster_id: ClusterId,
        local: NodeId,
        config: TcpConfig,
        security: PeerSecurity,
    ) -> io::Result<Arc<TcpTransport>> {
        let config = config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if local.0 == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "member id 0 is reserved",
            ));
        }
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        tracing::info!(node = %local, cluster = %cluster_id, addr = %local_addr, tls = !security.is_plaintext(), "peer listener bound");
        if security.is_plaintext() {
            tracing::warn!(node = %local, addr = %local_addr, "peer connections are INSECURE PLAINTEXT: anyone who reaches this port can act as a member; use mutual TLS outside tests");
        }
        Ok(Arc::new(TcpTransport {
            shared: Arc::new(Shared {
                cluster_id,
                local,
                config,
                counters: Counters::default(),
                runtime: Handle::current(),
                shutdown: watch::Sender::new(false),
                live_tasks: watch::Sender::new(0),
                sink: OnceLock::new(),
                inbound: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(0),
                inbound_snapshots: Mutex::new(HashSet::new()),
                security,
                open: Mutex::new(OpenConns::default()),
            }),
            local_addr,
            listener: Mutex::new(Some(listener)),
            peers: Mutex::new(Peers::default()),
        }))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This member's id.
    pub fn local_id(&self) -> NodeId {
        self.shared.local
    }

    /// Sets (or changes) where member `id` listens. A changed address
    /// closes the current connection to `id`; the next one goes to the new
    /// address, without backoff. This member's own id is ignored.
    pub fn set_peer(&self, id: NodeId, addr: SocketAddr) {
        if id == self.shared.local {
            return;
        }
        let mut peers = self.peers.lock();
        match peers.book.entry(id) {
            Entry::Occupied(mut e) => {
                let entry = e.get_mut();
                if entry.addr != addr {
                    tracing::info!(node = %self.shared.local, peer = %id, old = %entry.addr, new = %addr, "peer address changed");
                    entry.addr = addr;
                    if let Some(link) = &entry.link {
                        link.set_addr(addr);
                    }
                    if let Some(calls) = entry.calls.take() {
                        calls.close();
                    }
                }
            }
            Entry::Vacant(v) => {
                v.insert(PeerEntry {
                    addr,
                    link: None,
                    calls: None,
                });
            }
        }
    }

    /// Forgets member `id`: closes the connection to it and drops what is
    /// queued for it. Later messages to it are dropped and it is reported
    /// unreachable. (Its own connection to this member, if any, stays open
    /// until it closes it; the engine ignores members not in the group.)
    pub fn remove_peer(&self, id: NodeId) {
        let removed = self.peers.lock().book.remove(&id);
        if let Some(calls) = removed.as_ref().and_then(|e| e.calls.as_ref()) {
            calls.close();
        }
        drop(removed);
    }

    /// Where member `id` is known to listen.
    pub fn peer_addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.peers.lock().book.get(&id).map(|e| e.addr)
    }

    /// Every known peer with the state of this member's message
    /// connection to it, in id order.
    pub fn peers(&self) -> Vec<PeerLink> {
        let peers = self.peers.lock();
        let mut out: Vec<PeerLink> = peers
            .book
            .iter()
            .map(|(&id, e)| PeerLink {
                id,
                addr: e.addr,
                state: e
                    .link
                    .as_ref()
                    .map_or(PeerLinkState::Idle, |l| l.status().state()),
                failures: e.link.as_ref().map_or(0, |l| l.status().failures()),
                queued: e.link.as_ref().map_or(0, Link::queued),
            })
            .collect();
        out.sort_by_key(|p| p.id);
        out
    }

    /// The transport's counters now.
    pub fn stats(&self) -> TcpStats {
        let queued: u64 = self
            .peers
            .lock()
            .book
            .values()
            .filter_map(|e| e.link.as_ref())
            .map(|l| l.queued() as u64)
            .sum();
        self.shared.counters.snapshot(queued)
    }

    /// Waits until every task of this transport has ended: after
    /// [`Transport::stop`] that is prompt, and then the listening port is
    /// free again. Returns at once when no task runs.
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes.
    pub async fn closed(&self) {
        let mut live = self.shared.live_tasks.subscribe();
        let _ = live.wait_for(|n| *n == 0).await;
    }
}

impl Transport for TcpTransport {
    fn start(&self, local: NodeId, sink: Arc<dyn MessageSink>) {
        if local != self.shared.local {
            tracing::error!(bound = %self.shared.local, started = %local, "transport started for another member than it was bound for; not starting");
            return;
        }
        if self.shared.sink.set(sink).is_err() {
            tracing::warn!(node = %local, "transport started twice; ignored");
            return;
        }
        // None after `stop`: a stopped transport stays stopped.
        if let Some(listener) = self.listener.lock().take() {
            self.shared
                .spawn(inbound::accept_loop(self.shared.clone(), listener));
        }
    }

    fn send(&self, msg: Message) {
        let to = NodeId(msg.to);
        let c = &self.shared.counters;
        let mut peers = self.peers.lock();
        if peers.stopped {
            drop(peers);
            self.shared.discard(&msg, &c.dropped_stopped);
            return;
        }
        let Some(entry) = peers.book.get_mut(&to) else {
            drop(peers);
            tracing::debug!(node = %self.shared.local, peer = %to, "no address for peer; message dropped");
            self.shared.discard(&msg, &c.dropped_no_address);
            self.shared.report_unreachable(to);
            return;
        };
        let addr = entry.addr;
        if msg.msg_type == MessageType::MsgSnapshot as i32 {
            // On a connection of its own, never in the message queue.
            drop(peers);
            self.shared
                .spawn(snapshot::send(self.shared.clone(), to, addr, msg));
            return;
        }
        let link = entry
            .link
            .get_or_insert_with(|| Link::spawn(&self.shared, to, addr));
        match link.queue().try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(msg)) => {
                drop(peers);
                self.shared.discard(&msg, &c.dropped_queue_full);
            }
            Err(TrySendError::Closed(msg)) => {
                // The writer ended on its own (it only does so on shutdown,
                // or by a bug); start afresh on the next message.
                entry.link = None;
                drop(peers);
                self.shared.discard(&msg, &c.dropped_unreachable);
            }
        }
    }

    fn stop(&self) {
        let links: Vec<Link> = {
            let mut peers = self.peers.lock();
            if peers.stopped {
                return;
            }
            peers.stopped = true;
            peers
                .book
                .values_mut()
                .filter_map(|e| e.link.take())
                .collect()
        };
        drop(self.listener.lock().take());
        self.shared.shutdown.send_replace(true);
        // Dropping a link aborts its writer.
        drop(links);
        tracing::info!(node = %self.shared.local, "transport stopped");
    }

    fn call(&self, to: NodeId, request: Bytes, timeout: Duration, reply: CallReply) {
        let max = self.shared.config.max_call_bytes as usize - wire::CALL_REQUEST_HEAD;
        if request.len() > max {
            reply(Err(Error::TooLarge {
                size: request.len(),
                max,
            }));
            return;
        }
        let mut reply = reply;
        // A connection that closed just now gives the call back: one more
        // try on a fresh connection.
        for _ in 0..2 {
            let conn = {
                let mut peers = self.peers.lock();
                if peers.stopped {
                    drop(peers);
                    reply(Err(Error::Shutdown));
                    return;
                }
                let Some(entry) = peers.book.get_mut(&to) else {
                    drop(peers);
                    tracing::debug!(node = %self.shared.local, peer = %to, "no address for peer; call refused");
                    reply(Err(Error::PeerUnreachable { peer: to }));
                    return;
                };
                match &entry.calls {
                    Some(c) if !c.is_closed() => c.clone(),
                    _ => {
                        let c = CallConn::spawn(&self.shared, to, entry.addr);
                        entry.calls = Some(c.clone());
                        c
                    }
                }
            };
            match conn.submit(&self.shared, request.clone(), timeout, reply) {
                Ok(()) => return,
                Err(r) => reply = r,
            }
        }
        reply(Err(Error::PeerUnreachable { peer: to }));
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    /// Spawns a task on the application's runtime, counted in `live_tasks`.
    fn spawn<F>(self: &Arc<Self>, task: F) -> AbortHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.live_tasks.send_modify(|n| *n += 1);
        let guard = LiveTask(self.clone());
        self.runtime
            .spawn(async move {
                let _guard = guard;
                task.await;
            })
            .abort_handle()
    }

    fn report_unreachable(&self, peer: NodeId) {
        if let Some(sink) = self.sink.get() {
            add(&self.counters.unreachable_reports, 1);
            sink.report_unreachable(peer);
        }
    }

    /// Counts a message that will not be sent; a snapshot's sender is told.
    fn discard(&self, msg: &Message, counter: &AtomicU64) {
        add(counter, 1);
        if msg.msg_type == MessageType::MsgSnapshot as i32
            && let Some(sink) = self.sink.get()
        {
            sink.report_snapshot(NodeId(msg.to), SnapshotOutcome::Failed);
        }
    }

    /// Counts an accepted connection from `ip` against the total and
    /// per-IP limits; `None` when one is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut open = self.open.lock();
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        if open.total >= self.config.max_inbound_connections
            || from_ip >= self.config.max_inbound_per_ip
        {
            return None;
        }
        open.total += 1;
        *open.per_ip.entry(ip).or_default() += 1;
        Some(Admitted {
            shared: self.clone(),
            ip,
            peer: None,
        })
    }

    /// Resolves when the transport stops.
    async fn stopped(rx: &mut watch::Receiver<bool>) {
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Records `from`'s new inbound connection; closes its previous one.
    fn register_inbound(&self, from: NodeId) -> (u64, Arc<Notify>) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let superseded = Arc::new(Notify::new());
        let old = self.inbound.lock().insert(from, (id, superseded.clone()));
        if let Some((_, old)) = old {
            old.notify_one();
        }
        (id, superseded)
    }

    fn unregister_inbound(&self, from: NodeId, id: u64) {
        let mut inbound = self.inbound.lock();
        if inbound.get(&from).is_some_and(|(i, _)| *i == id) {
            inbound.remove(&from);
        }
    }
}

/// An admitted inbound connection: counted in the limits until dropped.
pub(crate) struct Admitted {
    shared: Arc<Shared>,
    ip: IpAddr,
    peer: Option<NodeId>,
}

impl Admitted {
    /// Counts the connection against its sender's limit once the hello
    /// (and TLS identity) named it; `false` when that limit is reached.
    pub(crate) fn identify(&mut self, peer: NodeId) -> bool {
        let mut open = self.shared.open.lock();
        let n = open.per_peer.entry(peer).or_default();
        if *n >= self.shared.config.max_connections_per_peer {
            return false;
        }
        *n += 1;
        self.peer = Some(peer);
        true
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.shared.open.lock();
        open.total = open.total.saturating_sub(1);
        if let Entry::Occupied(mut e) = open.per_ip.entry(self.ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
        if let Some(peer) = self.peer
            && let Entry::Occupied(mut e) = open.per_peer.entry(peer)
        {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Counts a live task; decrements when the task ends or is aborted.
struct LiveTask(Arc<Shared>);

impl Drop for LiveTask {
    fn drop(&mut self) {
        self.0.live_tasks.send_modify(|n| *n -= 1);
    }
}

/// Counts an open connection while it lives.
struct OpenGauge<'a>(&'a AtomicU64);

impl<'a> OpenGauge<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        OpenGauge(gauge)
    }
}

impl Drop for OpenGauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
