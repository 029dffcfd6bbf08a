//! Peer calls: one multiplexed call connection per peer, dialled on the
//! first call and again on the first call after it closed. Requests carry a
//! call id; replies come back with it, in any order. Deadlines are kept on
//! the calling side (a reply after its deadline is discarded); the losing
//! of a connection answers every call pending on it at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ha_core::{CallReply, Error, MessageSink, NodeId, OverloadReason, UnknownCause};
use parking_lot::Mutex;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;

use super::inbound::Failure;
use super::outbound::connect;
use super::stats::add;
use super::stream::PeerStream;
use super::wire::{self, ConnKind, LEN_PREFIX, Reject};
use super::{OpenGauge, Shared};

/// A write carries what is queued up to about this many bytes.
const WRITE_BATCH: usize = 256 * 1024;
/// Buffers above this are released after use rather than kept.
const KEEP_BUFFER: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// The calling side.

/// One call connection to a peer, as the caller holds it. Once closed it
/// takes no more calls; the next call makes a new one (a reconnect).
pub(crate) struct CallConn {
    peer: NodeId,
    state: Mutex<ConnState>,
    /// Requests for the writer. Holds at most twice the in-flight bound
    /// (requests of calls that timed out may still sit in it).
    queue: mpsc::Sender<(u64, Bytes)>,
    /// Closes the connection (the peer's address changed or it was removed).
    close: Notify,
}

struct ConnState {
    closed: bool,
    /// The last call id issued on this connection; ids start at 1.
    last_id: u64,
    pending: HashMap<u64, Pending>,
}

struct Pending {
    reply: CallReply,
    /// The call's deadline task.
    timer: AbortHandle,
}

/// Why a call connection ended.
enum End {
    /// The transport stopped.
    Stop,
    /// Closed on purpose (address changed, peer removed).
    Closed,
    /// The connection broke.
    Lost(String),
    /// The peer broke the protocol.
    Reject(Reject),
}

impl CallConn {
    /// A new connection to `peer` at `addr`; its task connects at once
    /// (there is a call to make).
    pub(crate) fn spawn(shared: &Arc<Shared>, peer: NodeId, addr: SocketAddr) -> Arc<CallConn> {
        let (queue, rx) = mpsc::channel(shared.config.max_calls_in_flight.saturating_mul(2));
        let conn = Arc::new(CallConn {
            peer,
            state: Mutex::new(ConnState {
                closed: false,
                last_id: 0,
                pending: HashMap::new(),
            }),
            queue,
            close: Notify::new(),
        });
        shared.spawn(run(shared.clone(), conn.clone(), addr, rx));
        conn
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Closes the connection; its pending calls are answered
    /// `CallOutcomeUnknown { ConnectionLost }` (or `PeerUnreachable` if it
    /// was not connected yet).
    pub(crate) fn close(&self) {
        self.close.notify_one();
    }

    /// Queues a call. `Err` gives the reply back when this connection is
    /// closed (the caller makes a new one); otherwise the call is answered,
    /// now or later, exactly once.
    pub(crate) fn submit(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        request: Bytes,
        timeout: Duration,
        reply: CallReply,
    ) -> Result<(), CallReply> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(reply);
        }
        let overloaded = Error::Overloaded {
            reason: OverloadReason::TooManyCalls,
        };
        if st.pending.len() >= shared.config.max_calls_in_flight {
            drop(st);
            reply(Err(overloaded));
            return Ok(());
        }
        st.last_id += 1;
        let id = st.last_id;
        // Queued and registered under one lock: the writer, which skips
        // requests no longer pending, cannot see it before it is.
        if let Err(e) = self.queue.try_send((id, request)) {
            drop(st);
            reply(Err(match e {
                TrySendError::Full(_) => overloaded,
                TrySendError::Closed(_) => Error::PeerUnreachable { peer: self.peer },
            }));
            return Ok(());
        }
        let timer = shared.spawn(expire(self.clone(), id, timeout));
        st.pending.insert(id, Pending { reply, timer });
        Ok(())
    }

    /// Closes this connection for new calls and answers every pending one.
    fn fail_all(&self, error: impl Fn() -> Error) {
        let pending: Vec<Pending> = {
            let mut st = self.state.lock();
            st.closed = true;
            st.pending.drain().map(|(_, p)| p).collect()
        };
        for p in pending {
            p.timer.abort();
            (p.reply)(Err(error()));
        }
    }
}

/// A call's deadline: answers it `CallOutcomeUnknown` unless its reply came.
async fn expire(conn: Arc<CallConn>, id: u64, timeout: Duration) {
    tokio::time::sleep(timeout).await;
    let pending = conn.state.lock().pending.remove(&id);
    if let Some(p) = pending {
        (p.reply)(Err(Error::CallOutcomeUnknown {
            peer: conn.peer,
            cause: UnknownCause::DeadlineExceeded,
        }));
    }
}

/// Connects, then writes requests and reads replies until the connection
/// ends; then answers whatever is still pending.
async fn run(
    shared: Arc<Shared>,
    conn: Arc<CallConn>,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<(u64, Bytes)>,
) {
    let peer = conn.peer;
    let local = shared.local;
    let mut shutdown = shared.shutdown.subscribe();
    let connected = tokio::select! {
        _ = Shared::stopped(&mut shutdown) => {
            conn.fail_all(|| Error::Shutdown);
            return;
        }
        _ = conn.close.notified() => {
            conn.fail_all(|| Error::PeerUnreachable { peer });
            return;
        }
        r = connect(&shared, peer, addr, ConnKind::Calls) => r,
    };
    let stream = match connected {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(node = %local, %peer, %addr, error = %e, "call connection failed");
            conn.fail_all(|| Error::PeerUnreachable { peer });
            return;
        }
    };
    tracing::debug!(node = %local, %peer, %addr, "call connection open");
    let open = OpenGauge::new(&shared.counters.open_call_connections);
    let (rd, wr) = tokio::io::split(stream);
    let end = tokio::select! {
        _ = Shared::stopped(&mut shutdown) => End::Stop,
        _ = conn.close.notified() => End::Closed,
        e = write_requests(&shared, &conn, wr, &mut queue) => e,
        e = read_replies(&shared, &conn, rd) => e,
    };
    // The socket is closed (its halves went with the select); so is the
    // connection before anyone is told.
    drop(open);
    match &end {
        End::Stop => {}
        End::Closed => tracing::debug!(node = %local, %peer, "call connection closed"),
        End::Lost(why) => {
            tracing::info!(node = %local, %peer, reason = %why, "call connection lost")
        }
        End::Reject(r) => {
            shared.counters.rejected(r);
            tracing::warn!(node = %local, %peer, reason = %r, "call connection closed");
        }
    }
    match end {
        End::Stop => conn.fail_all(|| Error::Shutdown),
        _ => conn.fail_all(|| Error::CallOutcomeUnknown {
            peer,
            cause: UnknownCause::ConnectionLost,
        }),
    }
}

async fn write_requests(
    shared: &Shared,
    conn: &CallConn,
    mut wr: WriteHalf<PeerStream>,
    queue: &mut mpsc::Receiver<(u64, Bytes)>,
) -> End {
    let c = &shared.counters;
    let mut buf = Vec::new();
    loop {
        let Some(first) = queue.recv().await else {
            return End::Stop;
        };
        buf.clear();
        let mut calls = 0u64;
        let mut next = Some(first);
        while let Some((id, request)) = next.take() {
            // A call whose deadline passed while it waited is not sent.
            let live = conn.state.lock().pending.contains_key(&id);
            if live {
                wire::encode_call_request(id, &request, &mut buf);
                calls += 1;
            }
            if buf.len() >= WRITE_BATCH {
                break;
            }
            next = queue.try_recv().ok();
        }
        if calls == 0 {
            continue;
        }
        match tokio::time::timeout(shared.config.write_timeout, async {
            wr.write_all(&buf).await?;
            wr.flush().await
        })
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return End::Lost(format!("write failed: {e}")),
            Err(_) => {
                return End::Lost(format!(
                    "write did not complete within {:?}",
                    shared.config.write_timeout
                ));
            }
        }
        add(&c.calls_sent, calls);
        add(&c.bytes_sent, buf.len() as u64);
        if buf.capacity() > KEEP_BUFFER {
            buf = Vec::new();
        }
    }
}

async fn read_replies(shared: &Shared, conn: &CallConn, rd: ReadHalf<PeerStream>) -> End {
    let c = &shared.counters;
    let mut rd = BufReader::new(rd);
    let mut frame = Vec::new();
    loop {
        let cfg = &shared.config;
        match read_frame(
            &mut rd,
            cfg.max_call_bytes,
            cfg.call_stall_timeout,
            &mut frame,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => return End::Lost("closed by the peer".to_owned()),
            Err(Failure::Reject(r)) => return End::Reject(r),
            Err(Failure::Io(e)) => return End::Lost(format!("read failed: {e}")),
        }
        add(&c.bytes_received, (LEN_PREFIX + frame.len()) as u64);
        let (id, result) = match wire::decode_call_reply(conn.peer, &frame) {
            Ok(r) => r,
            Err(r) => return End::Reject(r),
        };
        let found = {
            let mut st = conn.state.lock();
            if id == 0 || id > st.last_id {
                None
            } else {
                Some(st.pending.remove(&id))
            }
        };
        match found {
            None => return End::Reject(Reject::UnknownCallId(id)),
            // Its deadline passed: the caller was told already.
            Some(None) => add(&c.call_replies_late, 1),
            Some(Some(p)) => {
                p.timer.abort();
                (p.reply)(result);
            }
        }
        if frame.capacity() > KEEP_BUFFER {
            frame = Vec::new();
        }
    }
}

/// Reads one frame into `frame`: `Ok(false)` on a clean end between
/// frames. Once its first byte arrived, the whole frame must arrive within
/// `stall`.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    max: u32,
    stall: Duration,
    frame: &mut Vec<u8>,
) -> Result<bool, Failure> {
    let mut prefix = [0u8; LEN_PREFIX];
    if rd.read(&mut prefix[..1]).await? == 0 {
        return Ok(false);
    }
    let rest = async {
        rd.read_exact(&mut prefix[1..]).await?;
        let len = wire::check_len(prefix, max)?;
        frame.clear();
        // Grows with what actually arrives, not with the announced length.
        let got = (&mut *rd).take(len as u64).read_to_end(frame).await?;
        if got < len {
            return Err(Failure::Reject(Reject::Truncated));
        }
        Ok(())
    };
    match tokio::time::timeout(stall, rest).await {
        Ok(r) => r.map(|()| true),
        Err(_) => Err(Reject::CallStalled.into()),
    }
}

// ---------------------------------------------------------------------------
// The called side.

/// One reply on its way out.
type Outgoing = (u64, Result<Bytes, Error>);

/// Replies handed over by the engine and not written yet, on one inbound
/// call connection. At the bound the connection is not read from until
/// some went out, so a caller that sends without reading cannot grow them.
/// (How many handlers run at once is the engine's bound,
/// `Config::max_concurrent_calls`: over it, it answers `Overloaded` at
/// once.)
struct Unwritten {
    count: AtomicUsize,
    space: Notify,
}

/// Serves one inbound call connection from `from`: hands each request to
/// the engine and writes the replies as they come. `Ok` when the caller
/// closed it between frames.
pub(crate) async fn serve(
    shared: &Shared,
    stream: BufReader<PeerStream>,
    from: NodeId,
) -> Result<(), Failure> {
    let _open = OpenGauge::new(&shared.counters.open_call_connections);
    let Some(sink) = shared.sink.get().cloned() else {
        return Ok(());
    };
    stream.get_ref().tcp().set_nodelay(shared.config.nodelay)?;
    let (mut rd, wr) = tokio::io::split(stream);
    let unwritten = Arc::new(Unwritten {
        count: AtomicUsize::new(0),
        space: Notify::new(),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::select! {
        r = read_requests(shared, &mut rd, from, &*sink, &unwritten, tx) => r,
        r = write_replies(shared, wr, rx, &unwritten) => r,
    }
}

async fn read_requests<R: AsyncRead + Unpin>(
    shared: &Shared,
    rd: &mut R,
    from: NodeId,
    sink: &dyn MessageSink,
    unwritten: &Arc<Unwritten>,
    replies: mpsc::UnboundedSender<Outgoing>,
) -> Result<(), Failure> {
    let c = &shared.counters;
    let cfg = &shared.config;
    let mut frame = Vec::new();
    loop {
        while unwritten.count.load(Ordering::Acquire) >= cfg.max_calls_in_flight {
            unwritten.space.notified().await;
        }
        if !read_frame(rd, cfg.max_call_bytes, cfg.call_stall_timeout, &mut frame).await? {
            tracing::debug!(node = %shared.local, peer = %from, "peer closed its call connection");
            return Ok(());
        }
        add(&c.bytes_received, (LEN_PREFIX + frame.len()) as u64);
        let (id, request) = wire::split_call_request(&frame)?;
        add(&c.calls_received, 1);
        let replies = replies.clone();
        let unwritten = unwritten.clone();
        sink.handle_call(
            from,
            Bytes::copy_from_slice(request),
            Box::new(move |result| {
                // Counted before it is sent, so the writer never takes
                // off more than was added.
                unwritten.count.fetch_add(1, Ordering::AcqRel);
                // Fails only when the connection is gone: nobody to tell.
                let _ = replies.send((id, result));
            }),
        );
        if frame.capacity() > KEEP_BUFFER {
            frame = Vec::new();
        }
    }
}

async fn write_replies<W: AsyncWrite + Unpin>(
    shared: &Shared,
    mut wr: W,
    mut replies: mpsc::UnboundedReceiver<Outgoing>,
    unwritten: &Unwritten,
) -> Result<(), Failure> {
    let c = &shared.counters;
    let max = shared.config.max_call_bytes;
    let mut buf = Vec::new();
    loop {
        let Some(first) = replies.recv().await else {
            return Ok(());
        };
        buf.clear();
        let mut taken = 0usize;
        let mut next = Some(first);
        while let Some((id, result)) = next.take() {
            wire::encode_call_reply(id, &result, max, &mut buf);
            taken += 1;
            if buf.len() >= WRITE_BATCH {
                break;
            }
            next = replies.try_recv().ok();
        }
        match tokio::time::timeout(shared.config.write_timeout, async {
            wr.write_all(&buf).await?;
            wr.flush().await
        })
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Failure::Io(e)),
            Err(_) => {
                return Err(Failure::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "call replies not written within write_timeout",
                )));
            }
        }
        unwritten.count.fetch_sub(taken, Ordering::AcqRel);
        unwritten.space.notify_one();
        add(&c.bytes_sent, buf.len() as u64);
        if buf.capacity() > KEEP_BUFFER {
            buf = Vec::new();
        }
    }
}
