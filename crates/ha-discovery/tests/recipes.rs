//! The recipes through a 3-member group in one process (memory stores,
//! memory network): sessions, the mutex (contention across members, FIFO,
//! cancellation, expiry, failover, the Jepsen fencing scenario), the
//! readers-writer lock, the semaphore, barriers, the sequence, election
//! with `observe()`, and `run_when_leader`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use ha_discovery::ha_core::{
    self, CompactResponse, DeleteResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAlive,
    LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse,
    PutResponse, RangeResponse, TxnResponse, WatchStream,
};
use ha_discovery::{
    Barrier, DoubleBarrier, Election, Fenced, FencingToken, KeyRange, KvClient, KvError, KvNode,
    KvOptions, LeaderTask, LeaseId, LostReason, Mutex, PutRequest, RangeRequest, RecipeError,
    RwLock, RwMode, Semaphore, Sequence, Session, SessionState, TxnOp, TxnRequest, WatchRequest,
};

const PATIENCE: Duration = Duration::from_secs(20);

mod common;
use common::Group;

impl Group {
    /// A session at the group's minimum TTL (quick expiry in tests).
    async fn session(&self, i: usize) -> Session {
        let ttl = self.node(i).min_lease_ttl();
        self.session_with(i, ttl).await
    }

    async fn session_with(&self, i: usize, ttl: Duration) -> Session {
        let kv = self.node(i).clone();
        Session::builder(kv)
            .ttl(ttl)
            .start()
            .await
            .expect("session")
    }
}

/// A client whose lease keep-alives can be frozen: the test double for a
/// process paused (GC, swap, SIGSTOP) — its renewals stop, everything
/// else it sends later still arrives.
#[derive(Clone)]
struct PausableClient {
    kv: KvNode,
    paused: Arc<AtomicBool>,
}

impl PausableClient {
    fn new(kv: KvNode) -> Self {
        PausableClient {
            kv,
            paused: Arc::new(AtomicBool::new(false)),
        }
    }
    fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }
    fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

#[async_trait]
impl KvClient for PausableClient {
    async fn put(&self, r: PutRequest, o: KvOptions) -> ha_core::Result<PutResponse> {
        self.kv.put(r, o).await
    }
    async fn range(&self, r: RangeRequest, o: KvOptions) -> ha_core::Result<RangeResponse> {
        self.kv.range(r, o).await
    }
    async fn delete(
        &self,
        r: ha_core::DeleteRequest,
        o: KvOptions,
    ) -> ha_core::Result<DeleteResponse> {
        self.kv.delete(r, o).await
    }
    async fn txn(&self, r: TxnRequest, o: KvOptions) -> ha_core::Result<TxnResponse> {
        self.kv.txn(r, o).await
    }
    async fn compact(&self, rev: i64, o: KvOptions) -> ha_core::Result<CompactResponse> {
        self.kv.compact(rev, o).await
    }
    async fn watch(&self, r: WatchRequest) -> ha_core::Result<WatchStream> {
        self.kv.watch(r).await
    }
    async fn lease_grant(
        &self,
        r: LeaseGrantRequest,
        o: KvOptions,
    ) -> ha_core::Result<LeaseGrantResponse> {
        self.kv.lease_grant(r, o).await
    }
    async fn lease_revoke(
        &self,
        id: LeaseId,
        o: KvOptions,
    ) -> ha_core::Result<LeaseRevokeResponse> {
        self.kv.lease_revoke(id, o).await
    }
    async fn lease_keep_alive_once(
        &self,
        id: LeaseId,
        o: KvOptions,
    ) -> ha_core::Result<LeaseKeepAliveResponse> {
        while self.paused.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.kv.lease_keep_alive_once(id, o).await
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> ha_core::Result<LeaseKeepAlive> {
        self.kv.lease_keep_alive(id).await
    }
    async fn lease_time_to_live(
        &self,
        id: LeaseId,
        keys: bool,
        o: KvOptions,
    ) -> ha_core::Result<LeaseTimeToLiveResponse> {
        self.kv.lease_time_to_live(id, keys, o).await
    }
    async fn leases(&self, o: KvOptions) -> ha_core::Result<LeaseLeasesResponse> {
        self.kv.leases(o).await
    }
}

async fn pausable_session(kv: &KvNode) -> (Session, PausableClient) {
    let client = PausableClient::new(kv.clone());
    let session = Session::builder(client.clone())
        .ttl(kv.min_lease_ttl())
        .start()
        .await
        .expect("session");
    (session, client)
}

fn o() -> KvOptions {
    KvOptions::default()
}

/// Keys under `prefix`, by create revision.
async fn queue(kv: &KvNode, prefix: &str) -> Vec<Vec<u8>> {
    kv.range(
        RangeRequest {
            sort_target: ha_core::SortTarget::CreateRevision,
            sort_order: ha_core::SortOrder::Ascend,
            ..RangeRequest::new(KeyRange::prefix(prefix))
        },
        o(),
    )
    .await
    .expect("range")
    .kvs
    .into_iter()
    .map(|kv| kv.key)
    .collect()
}

/// Waits until `cond` holds, or fails with `what`.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let deadline = Instant::now() + PATIENCE;
    while !cond().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the lease is gone on the group; returns when that was seen.
async fn lease_gone(kv: &KvNode, lease: LeaseId) -> Instant {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match kv.lease_time_to_live(lease, false, o()).await {
            Err(KvError::LeaseNotFound { .. }) => return Instant::now(),
            _ => {
                assert!(Instant::now() < deadline, "lease {lease:?} never expired");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_its_lease_alive_owns_its_keys_and_close_revokes_them() {
    let g = Group::start().await;
    let kv = g.node(1).clone();
    let session = g.session(1).await;
    assert_eq!(
        session.ttl(),
        kv.min_lease_ttl(),
        "the TTL granted, rounded up"
    );
    session.put("s/ephemeral", "x").await.expect("put");
    tokio::time::sleep(session.ttl() * 4).await;
    assert!(
        !session.is_lost(),
        "renewed for four TTLs: {:?}",
        session.state()
    );
    let left = kv
        .lease_time_to_live(session.lease(), true, o())
        .await
        .expect("the lease lives");
    assert_eq!(left.keys, vec![b"s/ephemeral".to_vec()]);
    let lost = session.lost();
    session.close().await.expect("close");
    assert_eq!(lost.await, LostReason::Closed);
    assert_eq!(
        kv.get(b"s/ephemeral".to_vec(), o()).await.expect("get"),
        None
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_keeps_its_lock_and_token_and_a_gone_lease_cannot_resume() {
    let g = Group::start().await;
    let kv = g.node(0).clone();
    let first = g.session(0).await;
    let lease = first.lease();
    let guard = Mutex::new(&first, "r/lock").lock().await.expect("lock");
    let token = guard.fencing_token();
    // "The process restarts": the guard is forgotten (not released), the
    // session's handles go away, a new process resumes the lease.
    std::mem::forget(guard);
    drop(first);
    let resumed = Session::builder(kv.clone())
        .resume(lease)
        .start()
        .await
        .expect("resume");
    assert_eq!(resumed.lease(), lease);
    let again = Mutex::new(&resumed, "r/lock")
        .try_lock()
        .await
        .expect("try_lock")
        .expect("the lock is still this lease's");
    assert_eq!(again.fencing_token(), token, "adopted with its token");
    again.unlock().await.expect("unlock");
    resumed.close().await.expect("close");
    let gone = Session::builder(kv.clone()).resume(lease).start().await;
    assert!(
        matches!(
            gone,
            Err(RecipeError::SessionLost {
                reason: LostReason::Expired,
                ..
            })
        ),
        "{gone:?}"
    );
    g.stop().await;
}

/// Many tasks on all three members increment a counter stored in the KV
/// with an unprotected read-modify-write, under the lock: no update may be
/// lost, no two may hold at once, tokens strictly increase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_across_members_loses_no_update_and_never_has_two_holders() {
    let g = Group::start().await;
    const TASKS: usize = 12;
    const ROUNDS: usize = 6;
    let holders = Arc::new(AtomicUsize::new(0));
    let last_token = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let kv = g.node(t % 3).clone();
        let session = g.session(t % 3).await;
        let (holders, last_token) = (holders.clone(), last_token.clone());
        tasks.push(tokio::spawn(async move {
            let mutex = Mutex::new(&session, "c/lock");
            for _ in 0..ROUNDS {
                let guard = mutex.lock().await.expect("lock");
                assert_eq!(
                    holders.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                let token = guard.fencing_token().0;
                let before = last_token.swap(token, Ordering::SeqCst);
                assert!(
                    token > before,
                    "token {token} after {before}: not increasing"
                );
                let n = match kv.get(b"c/counter".to_vec(), o()).await.expect("get") {
                    Some(kv) => String::from_utf8_lossy(&kv.value)
                        .parse::<u64>()
                        .expect("number"),
                    None => 0,
                };
                tokio::task::yield_now().await;
                kv.put(PutRequest::new("c/counter", (n + 1).to_string()), o())
                    .await
                    .expect("put");
                holders.fetch_sub(1, Ordering::SeqCst);
                guard.unlock().await.expect("unlock");
            }
            session.close().await.expect("close");
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let n = g
        .node(0)
        .get(b"c/counter".to_vec(), o())
        .await
        .expect("get")
        .expect("counter");
    assert_eq!(
        n.value,
        (TASKS * ROUNDS).to_string().into_bytes(),
        "lost updates"
    );
    assert!(
        queue(g.node(0), "c/lock/").await.is_empty(),
        "keys left behind"
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_acquire_in_fifo_order_each_watching_only_its_predecessor() {
    let g = Group::start().await;
    let holder_session = g.session(0).await;
    let held = Mutex::new(&holder_session, "f/lock")
        .lock()
        .await
        .expect("lock");
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..5usize {
        let session = g.session(w % 3).await;
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let guard = Mutex::new(&session, "f/lock").lock().await.expect("lock");
            order.lock().push(w);
            guard.unlock().await.expect("unlock");
        }));
        // The next waiter queues only after this one did.
        let kv = g.node(0).clone();
        eventually("the waiter queued", || {
            let kv = kv.clone();
            async move { queue(&kv, "f/lock/").await.len() == w + 2 }
        })
        .await;
    }
    // Each waiter watches one key: one watcher per waiter, no herd.
    let watchers = || {
        g.nodes
            .iter()
            .flatten()
            .map(|n| n.watchers())
            .sum::<usize>()
    };
    eventually("every waiter watches", || async { watchers() >= 5 }).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(watchers(), 5, "one watch per waiter");
    held.unlock().await.expect("unlock");
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(*order.lock(), vec![0, 1, 2, 3, 4], "not FIFO");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_lock_and_a_dropped_guard_leave_no_key_behind() {
    let g = Group::start().await;
    let kv = g.node(0).clone();
    let a = g.session(0).await;
    let b = g.session(1).await;
    let c = g.session(2).await;
    let held = Mutex::new(&a, "x/lock").lock().await.expect("lock");
    // A waiting lock() dropped by a timeout of the caller's...
    let waiting =
        tokio::time::timeout(Duration::from_millis(300), Mutex::new(&b, "x/lock").lock()).await;
    assert!(waiting.is_err(), "the lock was held");
    // ...and one given up by lock_with_timeout.
    let r = Mutex::new(&c, "x/lock")
        .lock_with_timeout(Duration::from_millis(300))
        .await;
    assert!(matches!(r, Err(RecipeError::Timeout { .. })), "{r:?}");
    eventually("the cancelled waiters' keys are deleted", || {
        let kv = kv.clone();
        async move { queue(&kv, "x/lock/").await.len() == 1 }
    })
    .await;
    // No orphan ahead: once released, a try_lock succeeds at once.
    held.unlock().await.expect("unlock");
    let guard = Mutex::new(&b, "x/lock")
        .try_lock()
        .await
        .expect("try_lock")
        .expect("free");
    assert!(
        Mutex::new(&c, "x/lock")
            .try_lock()
            .await
            .expect("try_lock")
            .is_none()
    );
    assert_eq!(
        queue(&kv, "x/lock/").await.len(),
        1,
        "a failed try_lock leaves its key"
    );
    drop(guard);
    eventually("the dropped guard's key is deleted", || {
        let kv = kv.clone();
        async move { queue(&kv, "x/lock/").await.is_empty() }
    })
    .await;
    // Concurrent lock() through ONE session queue locally, never sharing a key.
    let shared = Mutex::new(&a, "x/lock");
    let first = shared.lock().await.expect("lock");
    let second = tokio::spawn({
        let shared = shared.clone();
        async move { shared.lock().await.map(|g| g.fencing_token()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !second.is_finished(),
        "a second local lock() got in while the first holds"
    );
    let t1 = first.fencing_token();
    first.unlock().await.expect("unlock");
    let t2 = second.await.expect("task").expect("lock");
    assert!(t2 > t1);
    g.stop().await;
}

/// Jepsen's etcd-lock finding: a holder paused past its lease, a second
/// holder acquires; the first wakes and writes. Its write must be refused
/// at the resource (fencing token) and by the KV (the guard's compare).
/// And the paused holder's `lost()` fired by its own clock BEFORE the
/// second holder could acquire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_past_its_lease_is_fenced_off() {
    let g = Group::start().await;
    let kv = g.node(0).clone();
    let resource = Arc::new(Fenced::new(Vec::<&str>::new()));
    let (a, a_client) = pausable_session(g.node(0)).await;
    let a_guard = Mutex::new(&a, "j/lock").lock().await.expect("lock");
    let a_token = a_guard.fencing_token();
    resource
        .write(a_token, |log| log.push("a1"))
        .expect("a writes while holding");
    let a_lost = tokio::spawn({
        let lost = a_guard.lost();
        async move {
            let reason = lost.await;
            (reason, Instant::now())
        }
    });

    // A pauses; B waits on another member.
    a_client.pause();
    let paused_at = Instant::now();
    let b = g.session(1).await;
    let b_guard = Mutex::new(&b, "j/lock")
        .lock()
        .await
        .expect("B acquires after A's lease expired");
    let b_acquired = Instant::now();
    let b_token = b_guard.fencing_token();
    assert!(b_token > a_token);
    resource
        .write(b_token, |log| log.push("b1"))
        .expect("b writes");

    // A wakes up believing it holds the lock, and writes.
    a_client.resume();
    let stale = resource.write(a_token, |log| log.push("a2 STALE"));
    assert!(stale.is_err(), "the resource accepted a stale token");
    let fenced_txn = kv
        .txn(
            TxnRequest {
                compare: vec![a_guard.compare()],
                success: vec![TxnOp::Put(PutRequest::new("j/data", "from a"))],
                failure: vec![],
            },
            o(),
        )
        .await
        .expect("txn");
    assert!(
        !fenced_txn.succeeded,
        "the KV accepted A's write after it lost the lock"
    );
    assert_eq!(resource.read(|log| log.clone()), vec!["a1", "b1"]);

    let (reason, lost_at) = a_lost.await.expect("task");
    assert_eq!(reason, LostReason::Unrenewed);
    assert!(
        lost_at < b_acquired,
        "A learned it lost the lock only after B acquired it"
    );
    assert!(
        lost_at.duration_since(paused_at) < a.ttl(),
        "lost within a TTL of the pause"
    );
    assert!(matches!(
        a_guard.unlock().await,
        Err(RecipeError::NotHeld { .. })
    ));
    b_guard.unlock().await.expect("unlock");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_releases_locks_and_leadership_and_fires_lost_early() {
    let g = Group::start().await;
    let kv = g.node(2).clone();
    let (a, a_client) = pausable_session(g.node(2)).await;
    let guard = Mutex::new(&a, "e/lock").lock().await.expect("lock");
    let leadership = Election::new(&a, "e/election")
        .campaign("a")
        .await
        .expect("leader");
    let b = g.session(0).await;
    let b_lock = tokio::spawn({
        let b = b.clone();
        async move {
            Mutex::new(&b, "e/lock")
                .lock()
                .await
                .map(|g| (g, Instant::now()))
        }
    });
    let b_lead = tokio::spawn({
        let b = b.clone();
        async move {
            Election::new(&b, "e/election")
                .campaign("b")
                .await
                .map(|l| (l, Instant::now()))
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !b_lock.is_finished() && !b_lead.is_finished(),
        "B got in while A holds"
    );
    a_client.pause();
    leadership.lost().await;
    let lost_at = Instant::now();
    assert!(
        guard.is_lost() && leadership.is_lost() && leadership.cancellation_token().is_cancelled()
    );
    let expired_at = lease_gone(&kv, a.lease()).await;
    assert!(
        lost_at <= expired_at,
        "the local signal came after the group expired the lease"
    );
    let (b_guard, b_locked_at) = b_lock.await.expect("task").expect("B locks");
    let (b_leadership, b_led_at) = b_lead.await.expect("task").expect("B leads");
    assert!(lost_at < b_locked_at && lost_at < b_led_at);
    assert!(b_leadership.fencing_token() > leadership.fencing_token());
    assert_eq!(a.state(), SessionState::Lost(LostReason::Unrenewed));
    assert_eq!(
        Election::new(&b, "e/election")
            .leader()
            .await
            .expect("leader")
            .map(|l| l.value),
        Some(b"b".to_vec())
    );
    b_guard.unlock().await.expect("unlock");
    b_leadership.resign().await.expect("resign");
    g.stop().await;
}

/// The leader member is killed while clients on all members contend for a
/// lock and campaign: clients on the dead member fail with typed errors,
/// the others carry on; never two holders, no lost update, and the
/// election moves to a survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_member_in_the_middle_keeps_locks_and_election_safe() {
    let mut g = Group::start().await;
    let leader = g.leader().await;
    let survivor = (leader + 1) % 3;
    // Sessions longer than the minimum TTL: the failover's leaderless
    // window must not count as lost renewals for the survivors.
    let ttl = Duration::from_secs(2);
    // The election's first leader lives on the member to be killed.
    let doomed = g.session_with(leader, ttl).await;
    let first = Election::new(&doomed, "k/election")
        .campaign("doomed")
        .await
        .expect("leads");
    let next = g.session_with(survivor, ttl).await;
    let next_lead = tokio::spawn({
        let next = next.clone();
        async move { Election::new(&next, "k/election").campaign("next").await }
    });

    let holders = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..9 {
        let member = t % 3;
        let kv = g.node(member).clone();
        let session = g.session_with(member, ttl).await;
        let (holders, done, stop) = (holders.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mutex = Mutex::new(&session, "k/lock");
            while !stop.load(Ordering::SeqCst) {
                let guard = match mutex.lock_with_timeout(Duration::from_secs(5)).await {
                    Ok(g) => g,
                    Err(e) => return Err(e),
                };
                assert_eq!(
                    holders.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                let counted = async {
                    let n = match kv.get(b"k/counter".to_vec(), o()).await? {
                        Some(kv) => String::from_utf8_lossy(&kv.value)
                            .parse::<u64>()
                            .unwrap_or(0),
                        None => 0,
                    };
                    // Fenced: applies only while the lock is still ours.
                    let r = kv
                        .txn(
                            TxnRequest {
                                compare: vec![guard.compare()],
                                success: vec![TxnOp::Put(PutRequest::new(
                                    "k/counter",
                                    (n + 1).to_string(),
                                ))],
                                failure: vec![],
                            },
                            o(),
                        )
                        .await?;
                    Ok::<bool, KvError>(r.succeeded)
                }
                .await;
                holders.fetch_sub(1, Ordering::SeqCst);
                match counted {
                    Ok(true) => {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(false) => {}
                    // The write may or may not have applied: the count
                    // check below allows for it.
                    Err(e) => return Err(RecipeError::Kv(e)),
                }
                let _ = guard.unlock().await;
            }
            Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    g.kill(leader).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let mut failed = 0;
    for (t, task) in tasks.into_iter().enumerate() {
        match task.await.expect("task") {
            Ok(()) => assert_ne!(t % 3, leader, "a client of the dead member kept going"),
            Err(_) => failed += 1,
        }
    }
    assert!(failed >= 3, "the dead member's clients must fail");
    let kv = g.node(survivor).clone();
    let n: usize = kv
        .get(b"k/counter".to_vec(), o())
        .await
        .expect("get")
        .map(|kv| String::from_utf8_lossy(&kv.value).parse().unwrap_or(0))
        .unwrap_or(0);
    let acknowledged = done.load(Ordering::SeqCst);
    // Each acknowledged increment is there; at most one per failed client
    // applied without its acknowledgement (outcome unknown).
    assert!(
        n >= acknowledged && n <= acknowledged + failed,
        "counter {n}, acknowledged {acknowledged}"
    );
    assert!(
        acknowledged > 20,
        "the survivors made progress: {acknowledged}"
    );
    // The election moved.
    let next_leadership = tokio::time::timeout(PATIENCE, next_lead)
        .await
        .expect("the survivor campaigned in time")
        .expect("task")
        .expect("leads");
    assert!(first.is_lost());
    assert!(next_leadership.fencing_token() > first.fencing_token());
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rwlock_admits_many_readers_or_one_writer_in_order() {
    let g = Group::start().await;
    let s: Vec<Session> = futures::future::join_all((0..4).map(|i| g.session(i % 3))).await;
    let r1 = RwLock::new(&s[0], "rw").read().await.expect("read");
    let r2 = RwLock::new(&s[1], "rw")
        .read()
        .await
        .expect("a second reader shares");
    assert_eq!(r2.mode(), RwMode::Read);
    let writer = tokio::spawn({
        let s = s[2].clone();
        async move { RwLock::new(&s, "rw").write().await }
    });
    let kv = g.node(0).clone();
    eventually("the writer queued", || {
        let kv = kv.clone();
        async move { queue(&kv, "rw/").await.len() == 3 }
    })
    .await;
    // A reader behind a waiting writer waits too (no writer starvation).
    let late_reader = tokio::spawn({
        let s = s[3].clone();
        async move { RwLock::new(&s, "rw").read().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished() && !late_reader.is_finished());
    r1.unlock().await.expect("unlock");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!writer.is_finished(), "the writer got in beside a reader");
    r2.unlock().await.expect("unlock");
    let w = writer.await.expect("task").expect("write");
    assert_eq!(w.mode(), RwMode::Write);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !late_reader.is_finished(),
        "a reader got in beside the writer"
    );
    w.unlock().await.expect("unlock");
    late_reader
        .await
        .expect("task")
        .expect("read")
        .unlock()
        .await
        .expect("unlock");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_admits_n_holders_at_once() {
    let g = Group::start().await;
    const PERMITS: usize = 3;
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..9 {
        let session = g.session(t % 3).await;
        let (inside, most) = (inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let sem = Semaphore::new(&session, "sem", PERMITS).expect("semaphore");
            for _ in 0..2 {
                let permit = sem.acquire().await.expect("permit");
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(now <= PERMITS, "{now} holders of {PERMITS} permits");
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.release().await.expect("release");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        PERMITS,
        "the permits were never all used"
    );
    assert!(Semaphore::new(&g.session(0).await, "sem0", 0).is_err());
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barriers_hold_everyone_until_released_or_all_arrived() {
    let g = Group::start().await;
    let holder = g.session(0).await;
    let gate = Barrier::new(&holder, "b/gate");
    gate.hold().await.expect("hold");
    let passed = Arc::new(AtomicUsize::new(0));
    let mut waiters = Vec::new();
    for i in 0..3 {
        let s = g.session(i).await;
        let passed = passed.clone();
        waiters.push(tokio::spawn(async move {
            Barrier::new(&s, "b/gate").wait().await.expect("wait");
            passed.fetch_add(1, Ordering::SeqCst);
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(passed.load(Ordering::SeqCst), 0, "passed a held gate");
    gate.release().await.expect("release");
    for w in waiters {
        w.await.expect("task");
    }

    // Double barrier, 3 participants.
    let entered = Arc::new(AtomicUsize::new(0));
    let left = Arc::new(AtomicUsize::new(0));
    let (go_leave_tx, go_leave) = tokio::sync::watch::channel(0usize);
    let mut parts = Vec::new();
    for i in 0..3usize {
        let s = g.session(i).await;
        let (entered, left, mut go_leave) = (entered.clone(), left.clone(), go_leave.clone());
        parts.push(tokio::spawn(async move {
            let b = DoubleBarrier::new(&s, "b/double", 3).expect("barrier");
            if i == 2 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            b.enter().await.expect("enter");
            entered.fetch_add(1, Ordering::SeqCst);
            go_leave.wait_for(|n| *n > i).await.expect("signal");
            b.leave().await.expect("leave");
            left.fetch_add(1, Ordering::SeqCst);
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        entered.load(Ordering::SeqCst),
        0,
        "entered before all arrived"
    );
    eventually("all three entered", || {
        let entered = entered.clone();
        async move { entered.load(Ordering::SeqCst) == 3 }
    })
    .await;
    go_leave_tx.send_replace(2); // participants 0 and 1 leave
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(left.load(Ordering::SeqCst), 0, "left before all had left");
    go_leave_tx.send_replace(3);
    for p in parts {
        p.await.expect("task");
    }
    assert_eq!(left.load(Ordering::SeqCst), 3);
    assert!(queue(g.node(0), "b/double/").await.is_empty());
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_hands_out_each_number_once_increasing_across_members() {
    let g = Group::start().await;
    let mut tasks = Vec::new();
    for t in 0..6 {
        let seq = Sequence::new(Arc::new(g.node(t % 3).clone()), "seq/orders");
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..20 {
                mine.push(seq.next().await.expect("next"));
            }
            mine
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        let mine = t.await.expect("task");
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "not increasing: {mine:?}"
        );
        for n in mine {
            assert!(all.insert(n), "{n} handed out twice");
        }
    }
    assert_eq!(all, (1..=120).collect::<BTreeSet<u64>>());
    let seq = Sequence::new(Arc::new(g.node(1).clone()), "seq/orders");
    assert_eq!(seq.current().await.expect("current"), 120);
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_proclaim_resign_and_observe_every_change_in_order() {
    let g = Group::start().await;
    let a = g.session(0).await;
    let b = g.session(1).await;
    let watcher = g.session(2).await;
    let mut observed = Election::new(&watcher, "el").observe();
    let seen =
        |x: Option<ha_discovery::Leader>| x.map(|l| String::from_utf8_lossy(&l.value).into_owned());
    // The same without a session (a stream starts when first polled).
    let mut sessionless = Election::observe_on(Arc::new(g.node(1).clone()), "el");
    assert_eq!(
        seen(sessionless.next().await.expect("item").expect("ok")),
        None
    );
    assert_eq!(
        seen(observed.next().await.expect("item").expect("ok")),
        None,
        "nobody leads yet"
    );

    let ea = Election::new(&a, "el");
    let la = ea.campaign("a1").await.expect("a leads");
    la.proclaim("a2").await.expect("proclaim");
    let eb = Election::new(&b, "el");
    let b_campaign = tokio::spawn(async move { eb.campaign("b1").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!b_campaign.is_finished(), "two leaders");
    assert_eq!(
        ea.leader().await.expect("leader").map(|l| l.value),
        Some(b"a2".to_vec())
    );
    la.resign().await.expect("resign");
    assert!(la.is_lost() && la.proclaim("late").await.is_err());
    let lb = b_campaign.await.expect("task").expect("b leads");
    assert!(lb.fencing_token() > la.fencing_token());
    lb.proclaim("b2").await.expect("proclaim");
    lb.resign().await.expect("resign");

    let mut got = Vec::new();
    for _ in 0..5 {
        let item = tokio::time::timeout(PATIENCE, observed.next())
            .await
            .expect("an observed change")
            .expect("item")
            .expect("ok");
        got.push(seen(item));
    }
    let want: Vec<Option<String>> = vec![
        Some("a1".into()),
        Some("a2".into()),
        Some("b1".into()),
        Some("b2".into()),
        None,
    ];
    assert_eq!(got, want, "observe() missed or reordered a change");
    let mut other = Vec::new();
    for _ in 0..5 {
        let item = tokio::time::timeout(PATIENCE, sessionless.next())
            .await
            .expect("an observed change")
            .expect("item")
            .expect("ok");
        other.push(seen(item));
    }
    assert_eq!(other, want, "observe_on() differs from observe()");
    g.stop().await;
}

/// Three instances run the same singleton job through `LeaderTask`: it runs
/// on exactly one; when that one's session is lost (its renewals stop), the
/// job is cancelled there and starts on another — never on two at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_when_leader_moves_the_job_when_the_leaders_session_is_lost() {
    let g = Group::start().await;
    let running = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(parking_lot::Mutex::new(
        Vec::<(usize, &str, FencingToken)>::new(),
    ));
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let client = PausableClient::new(g.node(i).clone());
        clients.push(client.clone());
        let (running, log) = (running.clone(), log.clone());
        let ttl = g.node(i).min_lease_ttl();
        tasks.push(tokio::spawn(async move {
            LeaderTask::new(client, "lt/job")
                .value(format!("instance-{i}"))
                .ttl(ttl)
                .run(move |leadership| {
                    let (running, log) = (running.clone(), log.clone());
                    async move {
                        let token = leadership.fencing_token();
                        assert_eq!(
                            running.fetch_add(1, Ordering::SeqCst),
                            0,
                            "the job runs twice"
                        );
                        log.lock().push((i, "start", token));
                        leadership.cancellation_token().cancelled().await;
                        log.lock().push((i, "stop", token));
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                })
                .await
        }));
    }
    let first = loop {
        if let Some((i, _, _)) = log.lock().first().copied() {
            break i;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    clients[first].pause();
    eventually("the job moved", || {
        let log = log.clone();
        async move { log.lock().len() >= 3 }
    })
    .await;
    let entries = log.lock().clone();
    assert_eq!(entries[0].0, first);
    assert_eq!((entries[1].0, entries[1].1), (first, "stop"), "{entries:?}");
    assert_eq!(entries[2].1, "start");
    assert_ne!(entries[2].0, first, "{entries:?}");
    assert!(
        entries[2].2 > entries[0].2,
        "the new term's token is higher"
    );
    for t in &tasks {
        t.abort();
    }
    g.stop().await;
}
