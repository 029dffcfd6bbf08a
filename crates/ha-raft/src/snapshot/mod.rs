//! Snapshots and what moves them.
//!
//! - **Build** (leader, background thread): raft asks `Storage::snapshot`,
//!   which answers with the latest built snapshot if it is recent enough,
//!   and otherwise requests a build and answers
//!   `SnapshotTemporarilyUnavailable` (raft asks again later). A build
//!   reads one consistent view of the state store
//!   ([`ha_core::StateStore::read_consistent`]) into a file; `Snapshot.data`
//!   carries only its [`SnapshotDescriptor`].
//! - **Stream** (transport): [`Snapshots::open_outgoing`] reads the file in
//!   chunks at the configured rate, one snapshot per peer at a time;
//!   [`Snapshots::stage_incoming`] writes them to a staging file, checks
//!   size and CRC, and only then hands the `MsgSnapshot` to raft.
//! - **Install** (follower): raft may reject the snapshot (stale, not in
//!   the configuration); the staging is then discarded. When a `Ready`
//!   hands it back, the log writer stores a pending-install marker, the
//!   apply thread restores the state store from the staged file, and the
//!   log write that restarts the log after the snapshot clears the marker —
//!   all before `on_persist_ready`. A crash anywhere in between leaves the
//!   marker, and the next open repeats the restore from the staged file.

mod files;
mod format;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Sender;
use ha_core::eraftpb::{ConfState, Message, MessageType, Snapshot, SnapshotMetadata};
use ha_core::{Config, NodeId, SnapshotReader, SnapshotWriter, StateStore, StorageError};
use parking_lot::Mutex;
use prost::Message as _;

use files::NewFile;
pub(crate) use files::SnapshotFiles;
use format::PairWriter;
pub(crate) use format::{InstallMarker, PairReader, SnapshotDescriptor};

/// A snapshot this member built.
#[derive(Clone, Debug)]
pub(crate) struct Built {
    pub(crate) descriptor: SnapshotDescriptor,
    pub(crate) conf_state: ConfState,
}

/// Snapshot counters.
#[derive(Debug, Default)]
pub(crate) struct SnapshotStats {
    pub(crate) built: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) installed: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
}

/// A token bucket over all outgoing snapshot bytes.
struct RateLimit {
    bytes_per_sec: u64,
    available: f64,
    last: Instant,
}

impl RateLimit {
    /// How long to wait before sending `n` bytes.
    fn take(&mut self, n: u64) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let rate = self.bytes_per_sec as f64;
        self.available =
            (self.available + now.duration_since(self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
        self.available -= n as f64;
        if self.available >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.available / rate)
        }
    }
}

/// A member's snapshots: shared by raft's storage adapter, the builder
/// thread, the transport (through the member's sink), and the threads that
/// install.
pub(crate) struct Snapshots {
    me: NodeId,
    files: SnapshotFiles,
    chunk_size: usize,
    limit: Mutex<RateLimit>,
    latest: Mutex<Option<Built>>,
    builder: Mutex<Option<Sender<()>>>,
    sending: Mutex<HashSet<u64>>,
    next_id: AtomicU64,
    pub(crate) stats: SnapshotStats,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots")
            .field("files", &self.files)
            .field(
                "latest",
                &self.latest.lock().as_ref().map(|b| b.descriptor.index),
            )
            .finish_non_exhaustive()
    }
}

pub(crate) fn decode_descriptor(data: &[u8]) -> Result<SnapshotDescriptor, StorageError> {
    SnapshotDescriptor::decode(data)
        .map_err(|e| StorageError::corrupt("snapshot descriptor", e.to_string()))
}

impl Snapshots {
    pub(crate) fn new(cfg: &Config, files: SnapshotFiles) -> Arc<Self> {
        // Unique across restarts of this member without storing a counter:
        // builds of one run count up from the start time.
        let first_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Self::with_first_id(cfg, files, first_id)
    }

    /// [`Snapshots::new`] with the first build id given: the simulator
    /// draws it from its seed, so that a run replays byte for byte.
    pub(crate) fn with_first_id(cfg: &Config, files: SnapshotFiles, first_id: u64) -> Arc<Self> {
        Arc::new(Snapshots {
            me: cfg.node_id,
            files,
            chunk_size: cfg.snapshot_chunk_size.max(1),
            limit: Mutex::new(RateLimit {
                bytes_per_sec: cfg.snapshot_rate_limit,
                available: 0.0,
                last: Instant::now(),
            }),
            latest: Mutex::new(None),
            builder: Mutex::new(None),
            sending: Mutex::new(HashSet::new()),
            next_id: AtomicU64::new(first_id),
            stats: SnapshotStats::default(),
        })
    }

    pub(crate) fn files(&self) -> &SnapshotFiles {
        &self.files
    }

    /// Attaches the builder thread's request channel.
    pub(crate) fn set_builder(&self, tx: Sender<()>) {
        *self.builder.lock() = Some(tx);
    }

    /// Drops the builder thread's request channel: the thread sees it
    /// disconnected and ends (called when the raft thread stops).
    pub(crate) fn detach_builder(&self) {
        self.builder.lock().take();
    }

    /// For raft's `Storage::snapshot`: the latest built snapshot when it is
    /// at least `request_index` and the log still holds the entries after
    /// it (`first_index`); otherwise a build is requested and `None`
    /// answered (raft asks again later).
    pub(crate) fn for_raft(&self, request_index: u64, first_index: u64) -> Option<Snapshot> {
        let latest = self.latest.lock().clone();
        if let Some(b) = latest {
            let d = &b.descriptor;
            if d.index >= request_index && d.index + 1 >= first_index {
                return Some(Snapshot {
                    data: d.encode_to_vec(),
                    metadata: Some(SnapshotMetadata {
                        conf_state: Some(b.conf_state.clone()),
                        index: d.index,
                        term: d.term,
                    }),
                });
            }
        }
        if let Some(tx) = &*self.builder.lock() {
            let _ = tx.try_send(());
        }
        None
    }

    /// Builds a snapshot from one consistent view of `state` unless the
    /// latest one is already at the applied index. Runs on the builder
    /// thread.
    pub(crate) fn build<S: StateStore + ?Sized>(&self, state: &S) -> Result<(), StorageError> {
        let latest_index = self.latest.lock().as_ref().map(|b| b.descriptor.index);
        let mut built = None;
        state.read_consistent(&mut |view| {
            let Some((index, term, conf_state)) = crate::apply::snapshot_point(view)? else {
                return Ok(());
            };
            if Some(index) == latest_index {
                return Ok(());
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let mut descriptor = SnapshotDescriptor {
                index,
                term,
                size: 0,
                crc32: 0,
                id,
                builder: self.me.0,
            };
            let name = descriptor.file_name("built");
            let mut w = PairWriter::new(self.files.create(&name)?)?;
            let mut err = None;
            view.scan(&[], None, &mut |k, v| match w.pair(k, v) {
                Ok(()) => true,
                Err(e) => {
                    err = Some(e);
                    false
                }
            })?;
            if let Some(e) = err {
                return Err(e);
            }
            let (size, crc) = w.finish()?;
            descriptor.size = size;
            descriptor.crc32 = crc;
            built = Some(Built {
                descriptor,
                conf_state,
            });
            Ok(())
        })?;
        if let Some(b) = built {
            tracing::info!(
                node = %self.me,
                index = b.descriptor.index,
                bytes = b.descriptor.size,
                "built a snapshot"
            );
            self.stats.built.fetch_add(1, Ordering::Relaxed);
            let old = self.latest.lock().replace(b);
            if let Some(old) = old {
                // A transfer still reading it keeps its open file (or, in
                // memory, its bytes).
                self.files.remove(&old.descriptor.file_name("built"));
            }
        }
        Ok(())
    }

    /// Sending side: the chunks of the snapshot `msg` announces.
    pub(crate) fn open_outgoing(
        self: &Arc<Self>,
        msg: &Message,
    ) -> Result<Box<dyn SnapshotReader>, StorageError> {
        let snapshot = msg
            .snapshot
            .as_ref()
            .ok_or_else(|| StorageError::corrupt("snapshot message", "no snapshot"))?;
        let descriptor = decode_descriptor(&snapshot.data)?;
        let input = self.files.read(&descriptor.file_name("built"))?;
        if !self.sending.lock().insert(msg.to) {
            return Err(StorageError::io(
                "send a snapshot",
                std::io::Error::other(format!(
                    "a snapshot to member {} is already in flight",
                    msg.to
                )),
            ));
        }
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(Outgoing {
            snapshots: self.clone(),
            peer: msg.to,
            input,
            size: descriptor.size,
            read: 0,
        }))
    }

    /// Receiving side: stages the snapshot `msg` announces; `deliver` hands
    /// `msg` to raft once the staged file is complete, verified and durable.
    pub(crate) fn stage_incoming(
        self: &Arc<Self>,
        msg: Message,
        deliver: Box<dyn FnOnce(Message) + Send>,
    ) -> Result<Box<dyn SnapshotWriter>, StorageError> {
        if msg.msg_type() != MessageType::MsgSnapshot || msg.to != self.me.0 {
            return Err(StorageError::corrupt(
                "snapshot message",
                "not a snapshot for this member",
            ));
        }
        let snapshot = msg
            .snapshot
            .as_ref()
            .ok_or_else(|| StorageError::corrupt("snapshot message", "no snapshot"))?;
        let descriptor = decode_descriptor(&snapshot.data)?;
        let meta = snapshot.metadata.as_ref();
        if meta.map(|m| (m.index, m.term)) != Some((descriptor.index, descriptor.term)) {
            return Err(StorageError::corrupt(
                "snapshot message",
                "descriptor and metadata disagree",
            ));
        }
        let file = self.files.create(&descriptor.file_name("staged"))?;
        Ok(Box::new(Incoming {
            snapshots: self.clone(),
            file: Some(file),
            descriptor,
            msg: Some(msg),
            deliver: Some(deliver),
            size: 0,
            crc: crc32fast::Hasher::new(),
        }))
    }

    /// The pairs of a staged snapshot, checked against its descriptor.
    pub(crate) fn staged_pairs(
        &self,
        descriptor: &SnapshotDescriptor,
    ) -> Result<PairReader, StorageError> {
        let name = descriptor.file_name("staged");
        let input = self.files.read(&name)?;
        PairReader::new(input, descriptor, format!("staged snapshot {name}"))
    }

    pub(crate) fn discard_staged(&self, descriptor: &SnapshotDescriptor) {
        self.files.remove(&descriptor.file_name("staged"));
    }

    fn pace(&self, n: u64) {
        let wait = self.limit.lock().take(n);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

struct Outgoing {
    snapshots: Arc<Snapshots>,
    peer: u64,
    input: Box<dyn std::io::Read + Send>,
    size: u64,
    read: u64,
}

impl SnapshotReader for Outgoing {
    fn size(&self) -> u64 {
        self.size
    }

    fn next_chunk(&mut self) -> Result<Option<Bytes>, StorageError> {
        let left = self.size.saturating_sub(self.read);
        if left == 0 {
            return Ok(None);
        }
        let n = left.min(self.snapshots.chunk_size as u64) as usize;
        let mut buf = vec![0u8; n];
        self.input
            .read_exact(&mut buf)
            .map_err(|e| StorageError::io("read a snapshot file", e))?;
        self.read += n as u64;
        self.snapshots.pace(n as u64);
        self.snapshots
            .stats
            .bytes_sent
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(Some(Bytes::from(buf)))
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.snapshots.sending.lock().remove(&self.peer);
    }
}

struct Incoming {
    snapshots: Arc<Snapshots>,
    file: Option<NewFile>,
    descriptor: SnapshotDescriptor,
    msg: Option<Message>,
    deliver: Option<Box<dyn FnOnce(Message) + Send>>,
    size: u64,
    crc: crc32fast::Hasher,
}

impl SnapshotWriter for Incoming {
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.size += chunk.len() as u64;
        if self.size > self.descriptor.size {
            return Err(StorageError::corrupt(
                "incoming snapshot",
                format!("more than the announced {} bytes", self.descriptor.size),
            ));
        }
        self.crc.update(chunk);
        match &mut self.file {
            Some(f) => f.write_all(chunk),
            None => Err(StorageError::corrupt(
                "incoming snapshot",
                "already finished",
            )),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        let crc = std::mem::take(&mut self.crc).finalize();
        if (self.size, crc) != (self.descriptor.size, self.descriptor.crc32) {
            return Err(StorageError::corrupt(
                "incoming snapshot",
                format!(
                    "{} bytes with CRC {crc:#010x}, announced {} bytes with CRC {:#010x}",
                    self.size, self.descriptor.size, self.descriptor.crc32
                ),
            ));
        }
        let file = self
            .file
            .take()
            .ok_or_else(|| StorageError::corrupt("incoming snapshot", "already finished"))?;
        file.finish()?;
        self.snapshots
            .stats
            .received
            .fetch_add(1, Ordering::Relaxed);
        if let (Some(msg), Some(deliver)) = (self.msg.take(), self.deliver.take()) {
            deliver(msg);
        }
        Ok(())
    }
}
