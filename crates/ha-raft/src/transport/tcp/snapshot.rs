//! Snapshot streams: every snapshot travels on a connection of its own, so
//! heartbeats and appends never wait behind its bytes. The engine's
//! blocking reader and writer run on tokio's blocking pool, joined to the
//! connection by a small channel.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ha_core::eraftpb::Message;
use ha_core::{MessageSink, NodeId, SnapshotOutcome, StorageError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::inbound::Failure;
use super::outbound::connect;
use super::stats::add;
use super::stream::PeerStream;
use super::wire::{self, ConnKind, Hello, LEN_PREFIX, Reject, tag};
use super::{OpenGauge, Shared};

/// Chunks buffered between the engine's blocking reader or writer and the
/// connection: enough to overlap disk and network, little memory.
const PIPE: usize = 2;
/// Largest ack frame a sender accepts (a receiver cuts its reason to fit).
const MAX_ACK: u32 = 1024;

/// From the blocking reader to the connection.
enum Out {
    Opened,
    Chunk(Bytes),
    Done,
    Error(String),
}

/// From the connection to the blocking writer.
enum In {
    Chunk(Vec<u8>),
    End,
}

// ---------------------------------------------------------------------------
// Sending.

/// Streams the snapshot `msg` announces to `peer` on a new connection, then
/// reports the outcome to the engine: `Finished` only once the peer
/// acknowledged it verified and staged, `Failed` otherwise.
pub(crate) async fn send(shared: Arc<Shared>, peer: NodeId, addr: SocketAddr, msg: Message) {
    let Some(sink) = shared.sink.get().cloned() else {
        return;
    };
    let _open = OpenGauge::new(&shared.counters.open_snapshot_streams);
    let (tx, rx) = mpsc::channel(PIPE);
    let piece = shared.config.max_frame_bytes as usize - 1;
    let header = prost::Message::encode_to_vec(&msg);
    let reader_sink = sink.clone();
    let reader = shared
        .runtime
        .spawn_blocking(move || read_chunks(&*reader_sink, &msg, piece, tx));
    let mut shutdown = shared.shutdown.subscribe();
    let result = tokio::select! {
        _ = Shared::stopped(&mut shutdown) => Err("the transport stopped".to_owned()),
        r = stream_out(&shared, peer, addr, header, rx) => r,
    };
    // The reader (and with it the engine's "in flight" mark for this peer)
    // is gone before the outcome is reported, so raft's retry can open the
    // snapshot again at once.
    let _ = reader.await;
    let c = &shared.counters;
    let outcome = match result {
        Ok(bytes) => {
            add(&c.snapshots_sent, 1);
            tracing::info!(node = %shared.local, %peer, bytes, "snapshot sent and acknowledged");
            SnapshotOutcome::Finished
        }
        Err(why) => {
            add(&c.snapshots_send_failed, 1);
            tracing::info!(node = %shared.local, %peer, reason = %why, "snapshot stream failed");
            SnapshotOutcome::Failed
        }
    };
    sink.report_snapshot(peer, outcome);
}

/// The blocking half of sending: opens the snapshot and reads its chunks,
/// cut to fit in frames. Ends when the connection side goes away.
fn read_chunks(sink: &dyn MessageSink, msg: &Message, piece: usize, tx: mpsc::Sender<Out>) {
    let mut reader = match sink.open_snapshot(msg) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.blocking_send(Out::Error(format!("opening the snapshot: {e}")));
            return;
        }
    };
    if tx.blocking_send(Out::Opened).is_err() {
        return;
    }
    loop {
        match reader.next_chunk() {
            Ok(Some(mut chunk)) => {
                while !chunk.is_empty() {
                    let part = chunk.split_to(chunk.len().min(piece));
                    if tx.blocking_send(Out::Chunk(part)).is_err() {
                        return;
                    }
                }
            }
            Ok(None) => {
                let _ = tx.blocking_send(Out::Done);
                return;
            }
            Err(e) => {
                let _ = tx.blocking_send(Out::Error(format!("reading the snapshot: {e}")));
                return;
            }
        }
    }
}

/// The connection half of sending. Returns the snapshot bytes sent.
async fn stream_out(
    shared: &Shared,
    peer: NodeId,
    addr: SocketAddr,
    header: Vec<u8>,
    mut rx: mpsc::Receiver<Out>,
) -> Result<u64, String> {
    let idle = shared.config.snapshot_idle_timeout;
    // Refused (another snapshot to this peer in flight) before any
    // connection is opened.
    match next(&mut rx, idle).await? {
        Some(Out::Opened) => {}
        Some(Out::Error(e)) => return Err(e),
        _ => return Err("the snapshot reader ended before opening".to_owned()),
    }
    if header.len() + 1 > shared.config.max_frame_bytes as usize {
        return Err(format!(
            "the snapshot message ({} bytes) exceeds max_frame_bytes",
            header.len()
        ));
    }
    let mut stream = connect(shared, peer, addr, ConnKind::Snapshot)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    write_frame(&mut stream, tag::HEADER, &header, idle).await?;
    let mut sent = 0u64;
    loop {
        match next(&mut rx, idle).await? {
            Some(Out::Chunk(chunk)) => {
                write_frame(&mut stream, tag::CHUNK, &chunk, idle).await?;
                sent += chunk.len() as u64;
                add(&shared.counters.snapshot_bytes_sent, chunk.len() as u64);
            }
            Some(Out::Done) => break,
            Some(Out::Error(e)) => return Err(e),
            Some(Out::Opened) | None => {
                return Err("the snapshot reader ended early".to_owned());
            }
        }
    }
    write_frame(&mut stream, tag::END, &[], idle).await?;
    read_ack(&mut stream, idle).await?;
    Ok(sent)
}

/// The next item from the blocking reader, within `idle`.
async fn next(rx: &mut mpsc::Receiver<Out>, idle: Duration) -> Result<Option<Out>, String> {
    tokio::time::timeout(idle, rx.recv())
        .await
        .map_err(|_| format!("no snapshot chunk read within {idle:?}"))
}

/// Writes one snapshot-stream frame within `limit`.
async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    t: u8,
    payload: &[u8],
    limit: Duration,
) -> Result<(), String> {
    let head = wire::snapshot_frame_head(t, payload.len());
    let write = async {
        w.write_all(&head).await?;
        w.write_all(payload).await?;
        w.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err(format!("write did not complete within {limit:?}")),
    }
}

/// Waits for the receiver's answer after the end marker.
async fn read_ack(stream: &mut PeerStream, idle: Duration) -> Result<(), String> {
    let read = async {
        let mut prefix = [0u8; LEN_PREFIX];
        stream.read_exact(&mut prefix).await?;
        let len = wire::check_len(prefix, MAX_ACK)
            .map_err(|r| io::Error::new(io::ErrorKind::InvalidData, r.to_string()))?;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await?;
        Ok::<_, io::Error>(payload)
    };
    let payload = match tokio::time::timeout(idle, read).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Err(format!("no acknowledgement: {e}")),
        Err(_) => return Err(format!("no acknowledgement within {idle:?}")),
    };
    match wire::split_tag(&payload) {
        Ok((tag::ACK_OK, _)) => Ok(()),
        Ok((tag::ACK_ERR, reason)) => Err(format!(
            "the peer refused the snapshot: {}",
            String::from_utf8_lossy(reason)
        )),
        _ => Err("the peer answered with something other than an ack".to_owned()),
    }
}

// ---------------------------------------------------------------------------
// Receiving.

/// Marks a sender as having a snapshot stream open; one at a time per
/// sender (a sender streams one at a time, so a second is not genuine, or
/// comes from a sender that gave up on the first: it retries after the
/// first ends or idles out).
struct Slot<'a> {
    shared: &'a Shared,
    from: NodeId,
}

impl<'a> Slot<'a> {
    fn take(shared: &'a Shared, from: NodeId) -> Option<Self> {
        shared
            .inbound_snapshots
            .lock()
            .insert(from)
            .then_some(Slot { shared, from })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.shared.inbound_snapshots.lock().remove(&self.from);
    }
}

/// Serves one inbound snapshot connection after its hello: stages the
/// stream through the engine and answers with an ack. Nothing reaches raft
/// unless the engine verified the whole snapshot.
pub(crate) async fn receive(
    shared: &Shared,
    rd: &mut BufReader<PeerStream>,
    hello: Hello,
) -> Result<(), Failure> {
    let _open = OpenGauge::new(&shared.counters.open_snapshot_streams);
    let Some(_slot) = Slot::take(shared, hello.from) else {
        return Err(Reject::SnapshotBusy.into());
    };
    let Some(sink) = shared.sink.get().cloned() else {
        return Ok(());
    };
    let idle = shared.config.snapshot_idle_timeout;
    let mut buf = Vec::new();
    if read_frame(shared, rd, &mut buf, idle).await? != tag::HEADER {
        return Err(Reject::Malformed("a snapshot stream must open with its header").into());
    }
    let msg = wire::decode_snapshot_header(&buf[1..])?;
    if msg.to != shared.local.0 || msg.from != hello.from.0 {
        return Err(Reject::Malformed("snapshot header not from the sender to this member").into());
    }
    let (tx, rx) = mpsc::channel(PIPE);
    let writer = shared
        .runtime
        .spawn_blocking(move || write_chunks(&*sink, msg, rx));
    let streamed = stream_in(shared, rd, tx, buf, idle).await;
    // Always wait for the writer: its staging is discarded (or finished)
    // before the slot frees for the sender's next attempt.
    let staged = writer.await;
    streamed?;
    let refused = match staged {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(format!("the snapshot writer failed: {e}")),
    };
    let Some(why) = refused else {
        add(&shared.counters.snapshots_received, 1);
        tracing::info!(node = %shared.local, peer = %hello.from, "snapshot received and staged");
        // If the ack is lost the sender reports Failed and raft sends
        // again; the engine ignores a snapshot it already has.
        let _ = write_frame(rd.get_mut(), tag::ACK_OK, &[], shared.config.write_timeout).await;
        return Ok(());
    };
    tracing::warn!(node = %shared.local, peer = %hello.from, reason = %why, "incoming snapshot refused");
    let mut reason = why.into_bytes();
    reason.truncate(MAX_ACK as usize - 1);
    let _ = write_frame(
        rd.get_mut(),
        tag::ACK_ERR,
        &reason,
        shared.config.write_timeout,
    )
    .await;
    Err(Reject::SnapshotRefused.into())
}

/// Reads chunks into the writer until the end marker. `Ok` also when the
/// writer stopped early (it refused a chunk): its result says why.
async fn stream_in<R: AsyncRead + Unpin>(
    shared: &Shared,
    rd: &mut R,
    tx: mpsc::Sender<In>,
    mut buf: Vec<u8>,
    idle: Duration,
) -> Result<(), Failure> {
    loop {
        let item = match read_frame(shared, rd, &mut buf, idle).await? {
            tag::CHUNK => {
                let chunk = buf[1..].to_vec();
                add(&shared.counters.snapshot_bytes_received, chunk.len() as u64);
                In::Chunk(chunk)
            }
            tag::END => In::End,
            _ => return Err(Reject::Malformed("unexpected frame in a snapshot stream").into()),
        };
        let end = matches!(item, In::End);
        if tx.send(item).await.is_err() || end {
            return Ok(());
        }
    }
}

/// Reads one snapshot-stream frame into `buf` (tag first) within `idle`;
/// returns its tag.
async fn read_frame<R: AsyncRead + Unpin>(
    shared: &Shared,
    rd: &mut R,
    buf: &mut Vec<u8>,
    idle: Duration,
) -> Result<u8, Failure> {
    let max = shared.config.max_frame_bytes;
    let read = async {
        let mut prefix = [0u8; LEN_PREFIX];
        rd.read_exact(&mut prefix).await?;
        let len = wire::check_len(prefix, max)?;
        buf.clear();
        // Grows with what arrives, not with what the prefix claims.
        let got = (&mut *rd).take(len as u64).read_to_end(buf).await?;
        if got < len {
            return Err(Failure::Reject(Reject::Truncated));
        }
        Ok::<_, Failure>(())
    };
    match tokio::time::timeout(idle, read).await {
        Ok(r) => r?,
        Err(_) => return Err(Reject::SnapshotIdle.into()),
    }
    Ok(wire::split_tag(buf)?.0)
}

/// The blocking half of receiving: stages the chunks through the engine
/// and finishes (verifies, makes durable, hands to raft) at the end
/// marker. Without the end marker the writer is dropped: nothing staged
/// survives and nothing reaches raft.
fn write_chunks(
    sink: &dyn MessageSink,
    msg: Message,
    mut rx: mpsc::Receiver<In>,
) -> Result<(), StorageError> {
    let mut writer = sink.receive_snapshot(msg)?;
    while let Some(item) = rx.blocking_recv() {
        match item {
            In::Chunk(c) => writer.write_chunk(&c)?,
            In::End => return writer.finish(),
        }
    }
    Err(StorageError::io(
        "receive a snapshot",
        io::Error::other("the stream ended without its end marker"),
    ))
}
