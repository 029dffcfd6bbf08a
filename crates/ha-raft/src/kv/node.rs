//! [`KvNode`]: a member of the group serving the replicated KV in-process.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ha_core::{
    ClusterId, CompactResponse, Config, Consistency, DeleteRequest, DeleteResponse, Error,
    InvalidRequest, KeyRange, KvClient, KvLimit, KvOptions, LogStore, PutRequest, PutResponse,
    RangeRequest, RangeResponse, Result, StateStore, Transport, TxnOp, TxnRequest, TxnResponse,
    WatchCancelReason, WatchRequest, WatchStream,
};
use ha_storage::kv::{
    HeaderStamp, KvCommand, KvQuery, KvReply, MvccMachine, check_txn, decode_reply,
    txn_is_read_only,
};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::config::{AutoCompaction, KvConfig};
use super::watch::{
    Driver, DriverConfig, HubConfig, HubObserver, SharedMachine, WatchHub, wake_channel, wake_of,
};
use crate::shell::{CallOptions, Node, ReadConsistency, ReadOptions};

/// One member of an ha group serving the replicated KV (etcd v3
/// semantics) in-process: a [`Node`] running the MVCC state machine
/// ([`MvccMachine`]), and the [`KvClient`] API on top.
///
/// Limits are checked before anything is proposed. Writes are proposals
/// (exactly once, on any member); linearizable reads use the engine's
/// batched ReadIndex, serializable ones read this member's state at once.
/// Watches are served by every member from what it applies (see
/// [`KvClient::watch`]). Cheap to clone.
#[derive(Clone)]
pub struct KvNode {
    inner: Arc<Inner>,
}

struct Inner {
    node: Node,
    config: KvConfig,
    cluster_id: ClusterId,
    /// Dropped (or sent to) to stop the auto-compaction task.
    stop: watch::Sender<bool>,
    hub: Arc<Mutex<WatchHub>>,
    watch_driver: Driver,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: nobody can shut the member down in
        // order any more, so end the watches (their streams would wait
        // forever otherwise) and let the driver go.
        self.hub.lock().cancel_all(WatchCancelReason::MemberStopped);
        self.watch_driver.stop_soon();
    }
}

impl std::fmt::Debug for KvNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvNode")
            .field("id", &self.inner.node.id())
            .finish()
    }
}

impl KvNode {
    /// Opens the KV over `state` (rebuilding its index from what the store
    /// holds) and starts the member, as [`Node::start`] does.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid `config` or `kv`; [`Error::Storage`]
    /// for storage that cannot be read or belongs to another member.
    pub async fn start<L, S>(
        config: Config,
        kv: KvConfig,
        log: Arc<L>,
        state: Arc<S>,
        transport: Arc<dyn Transport>,
    ) -> Result<KvNode>
    where
        L: LogStore,
        S: StateStore,
    {
        let kv = kv.validate()?;
        let cluster_id = ClusterId::derive(&config.initial_members, &config.cluster_token);
        let store = state.clone();
        let mut machine = tokio::task::spawn_blocking(move || MvccMachine::open(store))
            .await
            .map_err(|e| Error::fatal(format!("opening the KV failed: {e}")))??;
        let hub = Arc::new(Mutex::new(WatchHub::new(
            machine.revision(),
            machine.compact_revision(),
            HubConfig {
                progress_interval: kv.watch_progress_interval,
            },
        )));
        let wake = wake_channel();
        machine.set_observer(Box::new(HubObserver {
            hub: hub.clone(),
            wake: wake_of(&wake.0),
        }));
        let machine = Arc::new(Mutex::new(machine));
        let node = Node::start(
            config,
            log,
            state,
            SharedMachine(machine.clone()),
            transport,
        )
        .await?;
        let watch_driver = Driver::start(
            machine,
            hub.clone(),
            node.clone(),
            DriverConfig {
                chunk_events: kv.watch_catch_up_chunk,
                tick: (kv.watch_progress_interval / 2).min(Duration::from_millis(100)),
            },
            wake,
        )
        .map_err(|e| Error::fatal(format!("starting the watch thread failed: {e}")))?;
        let (stop, stop_rx) = watch::channel(false);
        if kv.auto_compaction != AutoCompaction::Off {
            tokio::spawn(auto_compact(
                node.clone(),
                cluster_id,
                kv.auto_compaction,
                stop_rx,
            ));
        }
        Ok(KvNode {
            inner: Arc::new(Inner {
                node,
                config: kv,
                cluster_id,
                stop,
                hub,
                watch_driver,
            }),
        })
    }

    /// The engine underneath (status, leadership, membership).
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// The KV configuration in force.
    pub fn config(&self) -> &KvConfig {
        &self.inner.config
    }

    /// Stops automatic compaction and shuts the member down (a leader
    /// hands over first).
    ///
    /// # Errors
    /// As [`Node::shutdown`].
    pub async fn shutdown(&self) -> Result<()> {
        let _ = self.inner.stop.send(true);
        let result = self.inner.node.shutdown().await;
        // Everything applied was delivered; each watch learns where to
        // resume (on another member).
        self.inner
            .hub
            .lock()
            .cancel_all(WatchCancelReason::MemberStopped);
        self.inner.watch_driver.stop_soon();
        result
    }

    /// Number of watches this member serves.
    pub fn watchers(&self) -> usize {
        self.inner.hub.lock().len()
    }

    fn stamp(&self) -> HeaderStamp {
        stamp(&self.inner.node, self.inner.cluster_id)
    }

    fn check_put(&self, p: &PutRequest) -> Result<()> {
        let c = &self.inner.config;
        limit(KvLimit::KeySize, p.key.len(), c.max_key_bytes)?;
        limit(KvLimit::ValueSize, p.value.len(), c.max_value_bytes)?;
        if p.key.is_empty() {
            return Err(Error::InvalidRequest {
                reason: InvalidRequest::EmptyKey,
            });
        }
        Ok(())
    }

    fn check_range(&self, r: &KeyRange) -> Result<()> {
        limit(
            KvLimit::KeySize,
            r.size_bytes(),
            self.inner.config.max_key_bytes,
        )
    }

    fn check_txn_limits(&self, t: &TxnRequest) -> Result<()> {
        let max = self.inner.config.max_txn_ops;
        limit(KvLimit::TxnOps, t.compare.len(), max)?;
        limit(KvLimit::TxnOps, t.success.len(), max)?;
        limit(KvLimit::TxnOps, t.failure.len(), max)?;
        for c in &t.compare {
            self.check_range(&c.range)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match op {
                TxnOp::Put(p) => self.check_put(p)?,
                TxnOp::Range(r) => self.check_range(&r.range)?,
                TxnOp::Delete(d) => self.check_range(&d.range)?,
                TxnOp::Txn(nested) => self.check_txn_limits(nested)?,
            }
        }
        Ok(())
    }

    async fn propose(&self, command: KvCommand, options: KvOptions) -> Result<KvReply> {
        let bytes = command.encode(self.inner.config.quota_bytes);
        limit(
            KvLimit::RequestSize,
            bytes.len(),
            self.inner.config.max_request_bytes,
        )?;
        let reply = self
            .inner
            .node
            .propose_with(
                Bytes::from(bytes),
                CallOptions {
                    timeout: options.timeout,
                },
            )
            .await?;
        decode_reply(&reply, &self.stamp())
    }

    async fn query(&self, query: KvQuery, options: KvOptions) -> Result<KvReply> {
        let bytes = query.encode();
        limit(
            KvLimit::RequestSize,
            bytes.len(),
            self.inner.config.max_request_bytes,
        )?;
        let consistency = match options.consistency {
            Consistency::Serializable => ReadConsistency::Serializable,
            _ => ReadConsistency::Linearizable,
        };
        let reply = self
            .inner
            .node
            .read_with(
                Bytes::from(bytes),
                ReadOptions {
                    consistency,
                    timeout: options.timeout,
                },
            )
            .await?;
        decode_reply(&reply, &self.stamp())
    }
}

fn stamp(node: &Node, cluster_id: ClusterId) -> HeaderStamp {
    HeaderStamp {
        cluster_id,
        member_id: node.id(),
        raft_term: node.leader().term,
    }
}

fn limit(which: KvLimit, size: usize, max: usize) -> Result<()> {
    if size > max {
        return Err(Error::LimitExceeded {
            limit: which,
            size,
            max,
        });
    }
    Ok(())
}

fn unexpected() -> Error {
    // The machine answered a request with a reply of another kind: only a
    // machine of another version could; treat it as a bad reply.
    Error::InvalidRequest {
        reason: InvalidRequest::Malformed,
    }
}

#[async_trait]
impl KvClient for KvNode {
    async fn put(&self, request: PutRequest, options: KvOptions) -> Result<PutResponse> {
        self.check_put(&request)?;
        match self.propose(KvCommand::Put(request), options).await? {
            KvReply::Put(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn range(&self, request: RangeRequest, options: KvOptions) -> Result<RangeResponse> {
        self.check_range(&request.range)?;
        match self.query(KvQuery::Range(request), options).await? {
            KvReply::Range(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn delete(&self, request: DeleteRequest, options: KvOptions) -> Result<DeleteResponse> {
        self.check_range(&request.range)?;
        match self.propose(KvCommand::Delete(request), options).await? {
            KvReply::Delete(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn txn(&self, request: TxnRequest, options: KvOptions) -> Result<TxnResponse> {
        self.check_txn_limits(&request)?;
        check_txn(&request)?;
        let reply = if txn_is_read_only(&request) {
            self.query(KvQuery::Txn(request), options).await?
        } else {
            self.propose(KvCommand::Txn(request), options).await?
        };
        match reply {
            KvReply::Txn(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn compact(&self, revision: i64, options: KvOptions) -> Result<CompactResponse> {
        match self.propose(KvCommand::Compact(revision), options).await? {
            KvReply::Compact(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    /// Watches on this member, from what it applies: a follower's watch
    /// sees a change when the follower applies it, and goes on across
    /// leader changes. Never blocks on the group.
    async fn watch(&self, request: WatchRequest) -> Result<WatchStream> {
        self.check_range(&request.range)?;
        self.inner.node.check_running()?;
        super::watch::open(
            &self.inner.hub,
            &self.inner.watch_driver.wake,
            &self.inner.node,
            self.inner.cluster_id,
            request,
            self.inner.config.watch_buffer,
        )
    }
}

/// The current revision as this member sees it.
async fn current_revision(node: &Node, cluster_id: ClusterId) -> Result<i64> {
    let query = KvQuery::Range(RangeRequest {
        count_only: true,
        ..RangeRequest::new(KeyRange::key(Vec::from(&b"\0"[..])))
    })
    .encode();
    let reply = node
        .read(Bytes::from(query), ReadConsistency::Serializable)
        .await?;
    match decode_reply(&reply, &stamp(node, cluster_id))? {
        KvReply::Range(r) => Ok(r.header.revision),
        _ => Err(unexpected()),
    }
}

/// The leader's automatic compaction. Runs until `stop` says so or its
/// sender is dropped, or the member stops.
async fn auto_compact(
    node: Node,
    cluster_id: ClusterId,
    mode: AutoCompaction,
    mut stop: watch::Receiver<bool>,
) {
    let every = match mode {
        AutoCompaction::Off => return,
        AutoCompaction::Periodic { retention } => retention / 10,
        AutoCompaction::Revision { interval, .. } => interval,
    };
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (when noted, revision) while this member leads.
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    let mut compacted = 0;
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
            _ = ticker.tick() => {}
        }
        if node.leader().leader != Some(node.id()) {
            samples.clear();
            continue;
        }
        let revision = match current_revision(&node, cluster_id).await {
            Ok(r) => r,
            Err(Error::Shutdown | Error::Fatal { .. } | Error::Removed { .. }) => return,
            Err(_) => continue,
        };
        let target = match mode {
            AutoCompaction::Off => return,
            AutoCompaction::Periodic { retention } => {
                let now = Instant::now();
                samples.push_back((now, revision));
                let mut target = None;
                while let Some(&(at, rev)) = samples.front() {
                    if now.duration_since(at) + Duration::from_millis(1) < retention {
                        break;
                    }
                    target = Some(rev);
                    samples.pop_front();
                }
                match target {
                    Some(t) => t,
                    None => continue,
                }
            }
            AutoCompaction::Revision { retention, .. } => {
                revision - i64::try_from(retention).unwrap_or(i64::MAX)
            }
        };
        if target <= compacted || target < 1 {
            continue;
        }
        let command = KvCommand::Compact(target).encode(0);
        match node.propose(Bytes::from(command)).await {
            Ok(reply) => match decode_reply(&reply, &stamp(&node, cluster_id)) {
                Ok(_) | Err(Error::Compacted { .. }) => {
                    tracing::debug!(node = %node.id(), revision = target, "auto-compacted");
                    compacted = target;
                }
                Err(e) => tracing::warn!(node = %node.id(), error = %e, "auto-compaction failed"),
            },
            Err(Error::Shutdown | Error::Fatal { .. } | Error::Removed { .. }) => return,
            Err(e) => tracing::warn!(node = %node.id(), error = %e, "auto-compaction failed"),
        }
    }
}
