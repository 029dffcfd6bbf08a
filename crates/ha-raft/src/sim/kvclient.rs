//! Code under test as clients of a simulated group: [`SimKv`] implements
//! [`KvClient`] over the simulator's request board, so code written
//! against that trait, a [`Clock`] and a spawner (ha-discovery's recipes)
//! runs unchanged on the deterministic executor, in virtual time, while
//! the faults go on. See [`super::run_seed_with`].
//!
//! A `SimKv` behaves like a remote client with every member's address: it
//! talks to one member and moves to the next when that one is lost (down,
//! crashed meanwhile), retrying there what certainly had no effect. Its
//! writes are proposed, its reads served at the consistency asked for,
//! its lease calls answered by the leader's production `LeaseManager`
//! (followers forward), and its watches served by the member's production
//! `WatchHub` — the same code paths as the simulator's own workload.
//! Request deadlines are the simulator's (`KvOptions::timeout` is not
//! used), except for lease calls, which give up after their timeout (the
//! renewal stream's attempts after a third of the TTL, as `KvNode`'s).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use ha_core::{
    Clock, ClusterId, CompactResponse, Consistency as KvConsistency, DeleteRequest, DeleteResponse,
    DropReason, Error, InvalidRequest, KvClient, KvOptions, LeaseGrantRequest, LeaseGrantResponse,
    LeaseId, LeaseKeepAlive, LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseRevokeResponse,
    LeaseTimeToLiveResponse, NodeId, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader, Result, TxnRequest, TxnResponse, UnknownCause, WatchControl, WatchRequest,
    WatchResponse, WatchStream,
};
use ha_storage::kv::{
    HeaderStamp, KvCommand, KvQuery, KvReply, check_txn, decode_reply, txn_is_read_only,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::client::{Board, RawKind, RawPayload, RawResult};
use super::executor::SimClock;
use super::history::{Consistency, Outcome};
use crate::kv::lease::Refusal;

/// A client task or a background task of code under test.
pub type SimTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Tasks spawned by code under test, for the world to put on its executor.
pub(crate) type SpawnQueue = Arc<Mutex<Vec<SimTask>>>;

/// First history client id of `SimKv` clients (the built-in workload's
/// clients count from 1, the final checks use 1,000,000).
const FIRST_CLIENT: u64 = 2_000_000;

/// What a custom run's setup gets: clients of the group, the virtual
/// clock, a spawner for background tasks, and a way to start client tasks
/// (the run lasts until every one of them has finished).
pub struct SimContext {
    pub(crate) board: Board,
    pub(crate) clock: SimClock,
    pub(crate) members: usize,
    pub(crate) seed: u64,
    pub(crate) spawned: SpawnQueue,
    /// Client tasks not finished yet.
    pub(crate) live: Arc<AtomicUsize>,
    pub(crate) next_client: AtomicU64,
    pub(crate) next_watch: Arc<AtomicU64>,
    pub(crate) min_ttl: Duration,
    pub(crate) request_timeout: Duration,
}

impl std::fmt::Debug for SimContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimContext")
            .field("members", &self.members)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl SimContext {
    /// Members the group starts with.
    pub fn members(&self) -> usize {
        self.members
    }

    /// The run's seed (for the code under test to draw its own choices
    /// from, so that the seed replays them too).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The virtual clock: `now` and `sleep` in simulated time.
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(self.clock.clone())
    }

    /// Starts background tasks on the simulator's executor (ha-discovery's
    /// `Spawn` is implemented for such a closure). The run does not wait
    /// for them.
    pub fn spawner(&self) -> impl Fn(SimTask) + Clone + Send + Sync + 'static {
        let queue = self.spawned.clone();
        move |task| queue.lock().push(task)
    }

    /// Starts a client task: the run's final checks wait until every
    /// client task has finished (a run whose clients never finish fails
    /// for liveness).
    pub fn run_client(&self, task: impl Future<Output = ()> + Send + 'static) {
        struct Done(Arc<AtomicUsize>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.live.fetch_add(1, Ordering::SeqCst);
        let done = Done(self.live.clone());
        self.spawned.lock().push(Box::pin(async move {
            let _done = done;
            task.await;
        }));
    }

    /// A new client that starts on member `member` (0-based) and moves to
    /// the next member when that one is lost. Each client has its own id
    /// in the history.
    pub fn client(&self, member: usize) -> SimKv {
        let client = FIRST_CLIENT + self.next_client.fetch_add(1, Ordering::SeqCst);
        SimKv {
            inner: Arc::new(Inner {
                board: self.board.clone(),
                clock: self.clock.clone(),
                client,
                members: self.members.max(1),
                current: AtomicUsize::new(member % self.members.max(1)),
                next_watch: self.next_watch.clone(),
                next_lease: AtomicI64::new(0),
                paused_until: AtomicU64::new(0),
                min_ttl: self.min_ttl,
                request_timeout: self.request_timeout,
            }),
        }
    }
}

struct Inner {
    board: Board,
    clock: SimClock,
    client: u64,
    members: usize,
    current: AtomicUsize,
    next_watch: Arc<AtomicU64>,
    next_lease: AtomicI64,
    /// Virtual time until which the client's process is paused.
    paused_until: AtomicU64,
    min_ttl: Duration,
    request_timeout: Duration,
}

/// A [`KvClient`] of a simulated group (see the module docs).
#[derive(Clone)]
pub struct SimKv {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SimKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimKv")
            .field("client", &self.inner.client)
            .field("member", &self.inner.current.load(Ordering::SeqCst))
            .finish()
    }
}

/// Where the world sends a raw watch's responses.
#[derive(Clone)]
pub(crate) struct WatchFeed {
    /// Orders deliveries across watches (the hub offers in map order).
    pub(crate) key: u64,
    pub(crate) tx: WatchSender,
    /// Control requests of the stream (progress, cancel), by `key`.
    pub(crate) control: WatchControls,
}

/// What watch streams asked of their hubs since the world last looked.
pub(crate) type WatchControls = Arc<Mutex<Vec<(u64, WatchOp)>>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WatchOp {
    Progress,
    Cancel,
}

struct SimWatchControl {
    key: u64,
    controls: WatchControls,
}

impl WatchControl for SimWatchControl {
    fn request_progress(&self) {
        self.controls.lock().push((self.key, WatchOp::Progress));
    }

    fn cancel(&self) {
        self.controls.lock().push((self.key, WatchOp::Cancel));
    }
}

fn stamp(member: u64) -> HeaderStamp {
    HeaderStamp {
        cluster_id: ClusterId([0; 32]),
        member_id: NodeId(member),
        raft_term: 0,
    }
}

fn unexpected() -> Error {
    Error::InvalidRequest {
        reason: InvalidRequest::Malformed,
    }
}

fn consistency(options: &KvOptions) -> Consistency {
    match options.consistency {
        KvConsistency::Serializable => Consistency::Serializable,
        KvConsistency::Lease => Consistency::Lease,
        _ => Consistency::Linearizable,
    }
}

impl SimKv {
    /// Pauses this client's process for `d` from now (a GC pause, a
    /// stopped VM): until then no call of it (or of a clone) leaves, and no
    /// reply reaches it (watch responses still queue in their streams).
    /// Its tasks' timers still fire; a paused holder is modelled by also
    /// sleeping for `d` in its task.
    pub fn pause(&self, d: Duration) {
        let until = self
            .inner
            .clock
            .now_ns()
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.inner.paused_until.fetch_max(until, Ordering::SeqCst);
    }

    /// Waits out a pause of the client's process.
    async fn unpaused(&self) {
        loop {
            let until = self.inner.paused_until.load(Ordering::SeqCst);
            let now = self.inner.clock.now_ns();
            if now >= until {
                return;
            }
            self.inner.clock.sleep_ns(until - now).await;
        }
    }

    /// Sends a raw call to the current member; on to the next one while
    /// members are lost before the call took any effect.
    async fn call(&self, kind: RawKind, payload: impl Fn() -> RawPayload) -> Result<RawResult> {
        let inner = &self.inner;
        for _ in 0..inner.members {
            self.unpaused().await;
            let member = inner.current.load(Ordering::SeqCst);
            let future = inner.board.call_raw(inner.client, member, kind, payload());
            let id = future.id;
            let reply = future.await;
            self.unpaused().await;
            let raw = inner.board.take_raw_result(id);
            if reply.member_lost {
                let _ = inner.current.compare_exchange(
                    member,
                    (member + 1) % inner.members,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            }
            match raw {
                Some(RawResult::Error(e)) => return Err(e),
                Some(r) => return Ok(r),
                None if reply.member_lost && reply.outcome == Outcome::Fail => continue,
                None if reply.outcome == Outcome::Unknown => {
                    return Err(Error::OutcomeUnknown {
                        cause: if reply.member_lost {
                            UnknownCause::ConnectionLost
                        } else {
                            UnknownCause::DeadlineExceeded
                        },
                    });
                }
                None => {
                    return Err(Error::Timeout {
                        after: inner.request_timeout,
                    });
                }
            }
        }
        Err(match kind {
            RawKind::Propose => Error::ProposalDropped {
                reason: DropReason::NoLeader,
            },
            _ => Error::Timeout {
                after: inner.request_timeout,
            },
        })
    }

    async fn machine(&self, kind: RawKind, bytes: Vec<u8>) -> Result<KvReply> {
        let member = self.inner.current.load(Ordering::SeqCst) as u64 + 1;
        match self.call(kind, || RawPayload::Bytes(bytes.clone())).await? {
            RawResult::Bytes(b) => decode_reply(&b, &stamp(member)),
            _ => Err(unexpected()),
        }
    }

    async fn propose(&self, command: KvCommand) -> Result<KvReply> {
        self.machine(RawKind::Propose, command.encode(0)).await
    }

    async fn query(&self, query: KvQuery, options: &KvOptions) -> Result<KvReply> {
        self.machine(RawKind::Read(consistency(options)), query.encode())
            .await
    }

    /// A lease call to the leader, as `KvNode::leader_call` repeats it:
    /// while the new leader has not applied its first entry, and once
    /// after a linearizable read when the lease is not known there yet;
    /// each attempt and all of them within `timeout` (a forward to the
    /// leader, or its answer, can be lost: the attempt then times out).
    async fn lease_call(
        &self,
        time_to_live: bool,
        id: LeaseId,
        timeout: Duration,
    ) -> Result<(Duration, u64, u64)> {
        let inner = &self.inner;
        let deadline = inner.clock.now_ns() + u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let mut waited_for_apply = false;
        loop {
            let timeout_ms = (deadline.saturating_sub(inner.clock.now_ns()) / 1_000_000).max(1);
            let kind = if time_to_live {
                RawKind::TimeToLive {
                    lease: id.0,
                    timeout_ms,
                }
            } else {
                RawKind::KeepAlive {
                    lease: id.0,
                    timeout_ms,
                }
            };
            match self.call(kind, || RawPayload::Bytes(Vec::new())).await? {
                RawResult::Lease { ttl, leader, term } => return Ok((ttl, leader, term)),
                RawResult::Refused(Refusal::Gone) if !waited_for_apply => {
                    waited_for_apply = true;
                    self.query(KvQuery::Lease { id, keys: false }, &KvOptions::default())
                        .await?;
                }
                RawResult::Refused(Refusal::Gone) => {
                    return Err(Error::LeaseNotFound { lease: id.0 });
                }
                RawResult::Refused(r) => {
                    if inner.clock.now_ns() >= deadline {
                        return Err(match r {
                            Refusal::Follower => Error::NotLeader { leader_hint: None },
                            _ => Error::Timeout { after: timeout },
                        });
                    }
                    inner.clock.sleep_ns(5 * super::executor::MILLIS).await;
                }
                _ => return Err(unexpected()),
            }
        }
    }
}

#[async_trait]
impl KvClient for SimKv {
    async fn put(&self, request: PutRequest, _options: KvOptions) -> Result<PutResponse> {
        match self.propose(KvCommand::Put(request)).await? {
            KvReply::Put(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn range(&self, request: RangeRequest, options: KvOptions) -> Result<RangeResponse> {
        match self.query(KvQuery::Range(request), &options).await? {
            KvReply::Range(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn delete(&self, request: DeleteRequest, _options: KvOptions) -> Result<DeleteResponse> {
        match self.propose(KvCommand::Delete(request)).await? {
            KvReply::Delete(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn txn(&self, request: TxnRequest, options: KvOptions) -> Result<TxnResponse> {
        check_txn(&request)?;
        let reply = if txn_is_read_only(&request) {
            self.query(KvQuery::Txn(request), &options).await?
        } else {
            self.propose(KvCommand::Txn(request)).await?
        };
        match reply {
            KvReply::Txn(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn compact(&self, revision: i64, _options: KvOptions) -> Result<CompactResponse> {
        match self.propose(KvCommand::Compact(revision)).await? {
            KvReply::Compact(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn watch(&self, request: WatchRequest) -> Result<WatchStream> {
        let inner = &self.inner;
        let key = inner.next_watch.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::unbounded_channel();
        let controls = WatchControls::default();
        let feed = WatchFeed {
            key,
            tx,
            control: controls.clone(),
        };
        let id = match self
            .call(RawKind::Watch, || {
                RawPayload::Watch(request.clone(), feed.clone())
            })
            .await?
        {
            RawResult::Watching(id) => id,
            _ => return Err(unexpected()),
        };
        drop(feed);
        Ok(WatchStream::new(
            id,
            Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)),
            Box::new(SimWatchControl { key, controls }),
        ))
    }

    async fn lease_grant(
        &self,
        request: LeaseGrantRequest,
        _options: KvOptions,
    ) -> Result<LeaseGrantResponse> {
        let ttl = crate::kv::node::granted_ttl(&request, self.inner.min_ttl)?;
        // Chosen ids: unique per client, the same in every replay.
        let id = if request.id == LeaseId::NONE {
            let n = self.inner.next_lease.fetch_add(1, Ordering::SeqCst) + 1;
            LeaseId(((self.inner.client as i64) << 24) + n)
        } else {
            request.id
        };
        match self.propose(KvCommand::LeaseGrant { id, ttl }).await? {
            KvReply::Lease(info) => Ok(LeaseGrantResponse {
                header: info.header,
                id: info.id,
                ttl: info.ttl,
                requested_ttl: request.ttl,
            }),
            _ => Err(unexpected()),
        }
    }

    async fn lease_revoke(&self, id: LeaseId, _options: KvOptions) -> Result<LeaseRevokeResponse> {
        match self.propose(KvCommand::LeaseRevoke(id)).await? {
            KvReply::LeaseRevoke(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn lease_keep_alive_once(
        &self,
        id: LeaseId,
        options: KvOptions,
    ) -> Result<LeaseKeepAliveResponse> {
        let timeout = options.timeout.unwrap_or(self.inner.request_timeout);
        let (ttl, leader, term) = self.lease_call(false, id, timeout).await?;
        Ok(LeaseKeepAliveResponse {
            header: ResponseHeader {
                cluster_id: ClusterId([0; 32]),
                member_id: NodeId(leader),
                revision: 0,
                raft_term: term,
            },
            id,
            ttl,
        })
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseKeepAlive> {
        let first = self.lease_keep_alive_once(id, KvOptions::default()).await?;
        let kv = self.clone();
        // Renews every third of the TTL (sooner after a failure) until
        // dropped or the lease is gone, as `KvNode`'s loop does.
        let state = (kv, Some(Ok(first.clone())), first.ttl, false);
        let renewals =
            futures::stream::unfold(state, move |(kv, pending, mut ttl, done)| async move {
                if let Some(item) = pending {
                    return Some((item, (kv, None, ttl, done)));
                }
                if done {
                    return None;
                }
                let mut wait = ttl / 3;
                loop {
                    kv.inner
                        .clock
                        .sleep_ns(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX))
                        .await;
                    // Each attempt within a third of the TTL, as `KvNode`'s
                    // loop: a lost forward leaves time for another.
                    let attempt =
                        KvOptions::default().with_timeout((ttl / 3).max(Duration::from_millis(50)));
                    match kv.lease_keep_alive_once(id, attempt).await {
                        Ok(r) => {
                            ttl = r.ttl;
                            return Some((Ok(r), (kv, None, ttl, false)));
                        }
                        Err(e @ Error::LeaseNotFound { .. }) => {
                            return Some((Err(e), (kv, None, ttl, true)));
                        }
                        Err(_) => wait = (ttl / 10).min(Duration::from_millis(100)),
                    }
                }
            });
        Ok(LeaseKeepAlive::new(id, renewals.boxed()))
    }

    async fn lease_time_to_live(
        &self,
        id: LeaseId,
        keys: bool,
        options: KvOptions,
    ) -> Result<LeaseTimeToLiveResponse> {
        let info = match self.query(KvQuery::Lease { id, keys }, &options).await? {
            KvReply::Lease(info) => info,
            _ => return Err(unexpected()),
        };
        let timeout = options.timeout.unwrap_or(self.inner.request_timeout);
        let (ttl, leader, term) = self.lease_call(true, id, timeout).await?;
        Ok(LeaseTimeToLiveResponse {
            header: ResponseHeader {
                member_id: NodeId(leader),
                raft_term: term,
                ..info.header
            },
            id,
            ttl: ttl.min(info.ttl),
            granted_ttl: info.ttl,
            keys: info.keys,
        })
    }

    async fn leases(&self, options: KvOptions) -> Result<LeaseLeasesResponse> {
        match self.query(KvQuery::Leases, &options).await? {
            KvReply::Leases(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }
}

/// The sending side of a watch stream.
pub(crate) type WatchSender = mpsc::UnboundedSender<Result<WatchResponse>>;
