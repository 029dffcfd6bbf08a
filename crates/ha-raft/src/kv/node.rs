//! [`KvNode`]: a member of the group serving the replicated KV in-process.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ha_core::{
    ClusterId, CompactResponse, Config, Consistency, DeleteRequest, DeleteResponse, Error,
    InvalidRequest, KeyRange, KvClient, KvLimit, KvOptions, LeaseGrantRequest, LeaseGrantResponse,
    LeaseId, LeaseKeepAlive, LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseRevokeResponse,
    LeaseTimeToLiveResponse, LogStore, NodeId, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ResponseHeader, Result, StateStore, Transport, TxnOp, TxnRequest, TxnResponse,
    WatchCancelReason, WatchEvent, WatchRequest, WatchStream,
};
use ha_storage::kv::{
    HeaderStamp, KvCommand, KvObserver, KvQuery, KvReply, MAX_TTL_MS, MvccMachine, check_txn,
    decode_reply, txn_is_read_only,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::config::{AutoCompaction, KvConfig};
use super::keeper::{
    LeaseCall, LeaseCallReply, Leases, decode_call, decode_call_reply, encode_call,
    encode_call_reply, refusal_error, run_expiry,
};
use super::lease::Refusal;
use super::watch::{
    Driver, DriverConfig, HubConfig, HubObserver, SharedMachine, WatchHub, wake_channel, wake_of,
};
use crate::call::CallHandler;
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
    request_timeout: Duration,
    leases: Arc<Leases>,
    /// Dropped (or sent to) to stop the background tasks (auto-compaction,
    /// lease expiry, keep-alives).
    stop: watch::Sender<bool>,
    hub: Arc<Mutex<WatchHub>>,
    watch_driver: Driver,
    /// The application's own peer calls ([`KvNode::set_app_call_handler`]).
    app_calls: parking_lot::RwLock<Option<Arc<dyn CallHandler>>>,
}

/// The first byte of an application call. A lease call is a protobuf
/// message, whose first byte is a field key and never 0 (field number 0
/// does not exist), so the two cannot be confused.
const APP_CALL_TAG: u8 = 0;

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: nobody can shut the member down in
        // order any more, so end the watches (their streams would wait
        // forever otherwise) and let the driver go.
        self.hub.lock().cancel_all(WatchCancelReason::MemberStopped);
        self.watch_driver.stop_soon();
    }
}

/// Follows what the machine applies, on the apply thread: lease grants and
/// revocations for the lease manager, and the revision for headers.
struct LeaseObserver {
    leases: Arc<Leases>,
}

/// The machine's one observer: the watch hub, then the leases.
struct Observers {
    hub: HubObserver,
    leases: LeaseObserver,
}

impl KvObserver for Observers {
    fn events(&mut self, events: &[WatchEvent], revision: i64) {
        self.hub.events(events, revision);
        self.leases.events(events, revision);
    }

    fn compacted(&mut self, compact_revision: i64) {
        self.hub.compacted(compact_revision);
    }

    fn lease_granted(&mut self, id: LeaseId, ttl: Duration) {
        self.leases.lease_granted(id, ttl);
    }

    fn lease_revoked(&mut self, id: LeaseId) {
        self.leases.lease_revoked(id);
    }

    fn restored(&mut self, revision: i64, compact_revision: i64, leases: &[(LeaseId, Duration)]) {
        self.hub.restored(revision, compact_revision, leases);
        self.leases.restored(revision, compact_revision, leases);
    }
}

impl KvObserver for LeaseObserver {
    fn events(&mut self, _events: &[WatchEvent], revision: i64) {
        self.leases.revision.store(revision, Ordering::Relaxed);
    }

    fn lease_granted(&mut self, id: LeaseId, ttl: Duration) {
        self.leases.manager.lock().granted(id, ttl, Instant::now());
    }

    fn lease_revoked(&mut self, id: LeaseId) {
        self.leases.manager.lock().revoked(id);
    }

    fn restored(&mut self, revision: i64, _compact_revision: i64, leases: &[(LeaseId, Duration)]) {
        self.leases.revision.store(revision, Ordering::Relaxed);
        self.leases.manager.lock().restored(leases, Instant::now());
    }
}

/// Answers lease calls other members forward to this one (as leader).
struct ForwardedCalls {
    kv: Weak<Inner>,
}

#[async_trait]
impl CallHandler for ForwardedCalls {
    async fn handle(&self, from: NodeId, request: Bytes) -> Result<Bytes> {
        let Some(inner) = self.kv.upgrade() else {
            return Err(Error::Shutdown);
        };
        if request.first() == Some(&APP_CALL_TAG) {
            let handler = inner.app_calls.read().clone();
            return match handler {
                Some(h) => h.handle(from, request.slice(1..)).await,
                None => Err(Error::NoCallHandler {
                    peer: inner.node.id(),
                }),
            };
        }
        let kv = KvNode { inner };
        let reply = match decode_call(&request) {
            Ok((call, timeout)) => {
                let deadline = Instant::now() + timeout.min(kv.inner.request_timeout);
                kv.leader_call(call, deadline).await
            }
            Err(e) => Err(e),
        };
        Ok(encode_call_reply(&reply))
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
        let leases = Leases::new(&config);
        let request_timeout = config.request_timeout;
        let store = state.clone();
        let mut machine = tokio::task::spawn_blocking(move || MvccMachine::open(store))
            .await
            .map_err(|e| Error::fatal(format!("opening the KV failed: {e}")))??;
        leases.revision.store(machine.revision(), Ordering::Relaxed);
        for (id, ttl) in machine.leases() {
            leases.manager.lock().granted(id, ttl, Instant::now());
        }
        let hub = Arc::new(Mutex::new(WatchHub::new(
            machine.revision(),
            machine.compact_revision(),
            HubConfig {
                progress_interval: kv.watch_progress_interval,
            },
        )));
        let wake = wake_channel();
        machine.set_observer(Box::new(Observers {
            hub: HubObserver {
                hub: hub.clone(),
                wake: wake_of(&wake.0),
            },
            leases: LeaseObserver {
                leases: leases.clone(),
            },
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
        tokio::spawn(run_expiry(node.clone(), leases.clone(), stop_rx.clone()));
        if kv.auto_compaction != AutoCompaction::Off {
            tokio::spawn(auto_compact(
                node.clone(),
                cluster_id,
                kv.auto_compaction,
                stop_rx,
            ));
        }
        let inner = Arc::new(Inner {
            node,
            config: kv,
            cluster_id,
            request_timeout,
            leases,
            stop,
            hub,
            watch_driver,
            app_calls: parking_lot::RwLock::new(None),
        });
        inner.node.set_call_handler(Arc::new(ForwardedCalls {
            kv: Arc::downgrade(&inner),
        }));
        Ok(KvNode { inner })
    }

    /// The engine underneath (status, leadership, membership).
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// Sets the handler of the application's own peer calls
    /// ([`KvNode::call_app`], [`KvNode::call_leader_app`]) on this member.
    /// The KV keeps the engine's call slot ([`Node::set_call_handler`]) for
    /// its forwarded lease calls; application calls share it, told apart
    /// by a tag byte. Until a handler is set, application calls to this
    /// member fail with [`Error::NoCallHandler`].
    pub fn set_app_call_handler(&self, handler: Arc<dyn CallHandler>) {
        *self.inner.app_calls.write() = Some(handler);
    }

    /// Calls the application handler of member `to` (this member's own
    /// when `to` is this member), as [`Node::call`] does.
    ///
    /// # Errors
    /// As [`Node::call`].
    pub async fn call_app(&self, to: NodeId, request: &[u8], timeout: Duration) -> Result<Bytes> {
        self.inner
            .node
            .call(to, tag_app_call(request), timeout)
            .await
    }

    /// Calls the application handler of the current leader (waiting up to
    /// `timeout` for one), as [`Node::call_leader`] does.
    ///
    /// # Errors
    /// As [`Node::call_leader`].
    pub async fn call_leader_app(&self, request: &[u8], timeout: Duration) -> Result<Bytes> {
        self.inner
            .node
            .call_leader(tag_app_call(request), timeout)
            .await
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
        self.inner.watch_driver.stop().await;
        result
    }

    /// Number of watches this member serves.
    pub fn watchers(&self) -> usize {
        self.inner.hub.lock().len()
    }

    /// Stops this member at once, as if its process died: no leadership
    /// transfer, unsynced writes lost (a test double for crashes; see
    /// [`Node::kill`]). Background tasks stop too.
    pub async fn kill(&self) {
        let _ = self.inner.stop.send(true);
        self.inner.node.kill().await;
    }

    fn stamp(&self) -> HeaderStamp {
        stamp(&self.inner.node, self.inner.cluster_id)
    }

    /// The smallest lease TTL this group grants: 1.5 × the longest
    /// election timeout. Smaller requests are rounded up to it.
    pub fn min_lease_ttl(&self) -> Duration {
        self.inner.leases.min_ttl
    }

    fn deadline(&self, options: &KvOptions) -> (Instant, Duration) {
        let after = options.timeout.unwrap_or(self.inner.request_timeout);
        (Instant::now() + after, after)
    }

    fn is_leader(&self) -> bool {
        self.inner.node.leader().leader == Some(self.inner.node.id())
    }

    /// A lease call on this member as the leader (its own, or forwarded).
    async fn leader_call(&self, call: LeaseCall, deadline: Instant) -> Result<LeaseCallReply> {
        let node = &self.inner.node;
        let leases = &self.inner.leases;
        let after = deadline.saturating_duration_since(Instant::now());
        let (id, keys) = match call {
            LeaseCall::KeepAlive(id) => (id, None),
            LeaseCall::TimeToLive { id, keys } => (id, Some(keys)),
        };
        // For a time-to-live, read the lease linearizably first (which also
        // makes this leader apply everything committed before the call).
        let info = match keys {
            Some(keys) => {
                let reply = self
                    .query(
                        KvQuery::Lease { id, keys },
                        KvOptions::default().with_timeout(after),
                    )
                    .await?;
                match reply {
                    KvReply::Lease(info) => Some(info),
                    _ => return Err(unexpected()),
                }
            }
            None => None,
        };
        let mut waited_for_apply = info.is_some();
        loop {
            let outcome = match &info {
                None => leases.keep_alive(node, id),
                Some(_) => leases.remaining(node, id),
            };
            match outcome {
                Ok(ttl) => {
                    let (granted_ttl, keys) = match info {
                        Some(info) => (info.ttl, info.keys),
                        None => (ttl, Vec::new()),
                    };
                    return Ok(LeaseCallReply {
                        member_id: node.id(),
                        raft_term: node.leader().term,
                        revision: leases.revision.load(Ordering::Relaxed),
                        ttl,
                        granted_ttl,
                        keys,
                    });
                }
                // Just elected: its first entry is about to apply.
                Err(Refusal::TermNotApplied)
                    if Instant::now() + Duration::from_millis(5) < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // A grant acknowledged elsewhere may not be applied here
                // yet: a linearizable read waits until it is, then look
                // again.
                Err(Refusal::Gone) if !waited_for_apply => {
                    waited_for_apply = true;
                    self.query(
                        KvQuery::Lease { id, keys: false },
                        KvOptions::default().with_timeout(after),
                    )
                    .await?;
                }
                Err(r) => return Err(refusal_error(r, id, node, after)),
            }
        }
    }

    /// A lease call: on this member if it leads, else forwarded to the
    /// leader; repeated while no leader is reachable, until the deadline.
    async fn lease_call(&self, call: LeaseCall, options: &KvOptions) -> Result<LeaseCallReply> {
        let (deadline, after) = self.deadline(options);
        // On the leader a renewal is answered from memory without waiting
        // on anything: give the runtime its turn, so that a caller renewing
        // in a tight loop cannot starve its other tasks and timers.
        tokio::task::consume_budget().await;
        loop {
            let now = Instant::now();
            let result = if self.is_leader() {
                self.leader_call(call, deadline).await
            } else {
                let left = deadline.saturating_duration_since(now);
                match self
                    .inner
                    .node
                    .call_leader(encode_call(call, left), left)
                    .await
                {
                    Ok(bytes) => decode_call_reply(&bytes),
                    Err(e) => Err(e),
                }
            };
            match result {
                Err(e) if retry_lease_call(&e) && Instant::now() + LEASE_CALL_RETRY < deadline => {
                    tokio::time::sleep(LEASE_CALL_RETRY).await;
                }
                Err(e) if retry_lease_call(&e) => return Err(Error::Timeout { after }),
                other => return other,
            }
        }
    }

    fn header(&self, member_id: NodeId, raft_term: u64, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.inner.cluster_id,
            member_id,
            revision,
            raft_term,
        }
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
            Consistency::Lease => ReadConsistency::Lease,
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

/// The TTL a grant request gets: whole milliseconds (what is stored,
/// rounded up), at least `min`.
///
/// # Errors
/// [`InvalidRequest::InvalidTtl`] for a zero or too long TTL,
/// [`InvalidRequest::InvalidLeaseId`] for a negative id.
pub(crate) fn granted_ttl(request: &LeaseGrantRequest, min: Duration) -> Result<Duration> {
    if request.ttl.is_zero() || request.ttl > Duration::from_millis(MAX_TTL_MS) {
        return Err(Error::InvalidRequest {
            reason: InvalidRequest::InvalidTtl,
        });
    }
    if request.id.0 < 0 {
        return Err(Error::InvalidRequest {
            reason: InvalidRequest::InvalidLeaseId,
        });
    }
    let ms = u64::try_from(request.ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(MAX_TTL_MS);
    Ok(Duration::from_millis(ms).max(min))
}

/// Pause between attempts of a lease call that found no leader.
const LEASE_CALL_RETRY: Duration = Duration::from_millis(10);

/// Errors after which a lease call is worth repeating: a leader change,
/// a leader not reachable or not ready yet. (Keep-alives and time-to-live
/// are idempotent, so a call whose outcome is unknown may repeat.)
fn retry_lease_call(e: &Error) -> bool {
    matches!(
        e,
        Error::NotLeader { .. }
            | Error::ProposalDropped { .. }
            | Error::PeerUnreachable { .. }
            | Error::NoCallHandler { .. }
            | Error::CallOutcomeUnknown { .. }
            | Error::Overloaded { .. }
    )
}

/// Renews `id` every third of its TTL (sooner after a failure) until the
/// receiver is dropped, the member stops, or the lease is gone.
async fn keep_alive_loop(
    kv: KvNode,
    id: LeaseId,
    first: LeaseKeepAliveResponse,
    tx: mpsc::Sender<Result<LeaseKeepAliveResponse>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ttl = first.ttl;
    let mut next = Instant::now() + ttl / 3;
    let _ = tx.try_send(Ok(first));
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
        }
        // Each attempt may take at most a third of the TTL, so that a lost
        // leader leaves time for another attempt before the lease runs out.
        let attempt = KvOptions::default().with_timeout((ttl / 3).max(Duration::from_millis(50)));
        match kv.lease_keep_alive_once(id, attempt).await {
            Ok(r) => {
                ttl = r.ttl;
                next = Instant::now() + ttl / 3;
                // A full buffer skips the report, never the renewal.
                let _ = tx.try_send(Ok(r));
            }
            Err(
                e @ (Error::LeaseNotFound { .. }
                | Error::Shutdown
                | Error::Removed { .. }
                | Error::Fatal { .. }),
            ) => {
                tokio::select! {
                    _ = tx.send(Err(e)) => {}
                    _ = stop.changed() => {}
                }
                return;
            }
            Err(e) => {
                tracing::debug!(lease = id.0, error = %e, "lease renewal failed; retrying");
                next = Instant::now() + (ttl / 10).min(Duration::from_millis(100));
            }
        }
    }
}

fn tag_app_call(request: &[u8]) -> Bytes {
    let mut tagged = Vec::with_capacity(request.len() + 1);
    tagged.push(APP_CALL_TAG);
    tagged.extend_from_slice(request);
    Bytes::from(tagged)
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

    async fn lease_grant(
        &self,
        request: LeaseGrantRequest,
        options: KvOptions,
    ) -> Result<LeaseGrantResponse> {
        let min = self.inner.leases.min_ttl;
        let ttl = granted_ttl(&request, min)?;
        if min > request.ttl {
            tracing::info!(
                requested = ?request.ttl, granted = ?ttl,
                "lease TTL rounded up to the minimum (1.5 x the election timeout)"
            );
        }
        let chosen = request.id == LeaseId::NONE;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let id = if chosen {
                LeaseId((rand::random::<u64>() >> 1).max(1) as i64)
            } else {
                request.id
            };
            match self
                .propose(KvCommand::LeaseGrant { id, ttl }, options)
                .await
            {
                Ok(KvReply::Lease(info)) => {
                    return Ok(LeaseGrantResponse {
                        header: info.header,
                        id: info.id,
                        ttl: info.ttl,
                        requested_ttl: request.ttl,
                    });
                }
                Ok(_) => return Err(unexpected()),
                // A chosen id that happens to be taken: choose again.
                Err(Error::LeaseExists { .. }) if chosen && attempts < 5 => {}
                Err(e) => return Err(e),
            }
        }
    }

    async fn lease_revoke(&self, id: LeaseId, options: KvOptions) -> Result<LeaseRevokeResponse> {
        match self.propose(KvCommand::LeaseRevoke(id), options).await? {
            KvReply::LeaseRevoke(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn lease_keep_alive_once(
        &self,
        id: LeaseId,
        options: KvOptions,
    ) -> Result<LeaseKeepAliveResponse> {
        let r = self.lease_call(LeaseCall::KeepAlive(id), &options).await?;
        Ok(LeaseKeepAliveResponse {
            header: self.header(r.member_id, r.raft_term, r.revision),
            id,
            ttl: r.ttl,
        })
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseKeepAlive> {
        let first = self.lease_keep_alive_once(id, KvOptions::default()).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(keep_alive_loop(
            self.clone(),
            id,
            first,
            tx,
            self.inner.stop.subscribe(),
        ));
        Ok(LeaseKeepAlive::new(
            id,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }

    async fn lease_time_to_live(
        &self,
        id: LeaseId,
        keys: bool,
        options: KvOptions,
    ) -> Result<LeaseTimeToLiveResponse> {
        let r = self
            .lease_call(LeaseCall::TimeToLive { id, keys }, &options)
            .await?;
        Ok(LeaseTimeToLiveResponse {
            header: self.header(r.member_id, r.raft_term, r.revision),
            id,
            ttl: r.ttl,
            granted_ttl: r.granted_ttl,
            keys: r.keys,
        })
    }

    async fn leases(&self, options: KvOptions) -> Result<LeaseLeasesResponse> {
        match self.query(KvQuery::Leases, options).await? {
            KvReply::Leases(r) => Ok(r),
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
