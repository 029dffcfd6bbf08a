//! Service discovery through a 3-member group in one process (memory
//! stores, memory network): ephemeral instances leave with their session,
//! HTTP and TTL health checks flip status for every member, checks move
//! when the member running them dies, watches on every member agree, the
//! cache answers without quorum and survives a restart, protect threshold;
//! HTTPS checks (module `https`) and, with the `dns` feature, the DNS
//! interface (module `dns`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use ha_discovery::ha_core::{
    self, CompactResponse, DeleteResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAlive,
    LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse,
    PutResponse, RangeResponse, TxnResponse, WatchControl, WatchId, WatchStream,
};
use ha_discovery::{
    CheckFuture, Discovery, DiscoveryConfig, DiscoveryError, HealthCheck, HealthChecker,
    HealthStatus, InstanceFilter, KvClient, KvError, KvNode, KvOptions, LeaseId, PutRequest,
    RangeRequest, RecipeEnv, Registry, ServiceChange, ServiceInstance, Session, Source, TxnRequest,
    WatchRequest,
};

const PATIENCE: Duration = Duration::from_secs(30);

mod common;
use common::Group;

#[cfg(feature = "dns")]
mod dns;
mod https;

impl Group {
    fn registry(&self, i: usize) -> Registry {
        Registry::new(Arc::new(self.node(i).clone()))
            .namespace("test")
            .expect("valid namespace")
    }

    /// A session at the group's minimum TTL (quick expiry in tests).
    async fn session(&self, i: usize) -> Session {
        let ttl = self.node(i).min_lease_ttl();
        Session::builder(self.node(i).clone())
            .ttl(ttl)
            .start()
            .await
            .expect("session")
    }
}

/// Waits until `f` holds, failing with `what` after [`PATIENCE`].
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> Duration {
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < PATIENCE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ids `registry` (one member's view, read locally) returns.
async fn local_ids(registry: &Registry, service: &str, filter: &InstanceFilter) -> Vec<String> {
    match registry.snapshot(service, KvOptions::serializable()).await {
        Ok((_, all)) => filter.apply(&all).into_iter().map(|i| i.id).collect(),
        Err(_) => vec!["<unreadable>".into()],
    }
}

async fn health_everywhere(g: &Group, service: &str, id: &str) -> Vec<Option<HealthStatus>> {
    let mut seen = Vec::new();
    for i in 0..3 {
        if g.nodes[i].is_none() {
            continue;
        }
        let (_, all) = g
            .registry(i)
            .snapshot(service, KvOptions::serializable())
            .await
            .expect("local read");
        seen.push(all.iter().find(|x| x.id == id).map(|x| x.health));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_instances_leave_with_their_session_and_persistent_ones_stay() {
    let g = Group::start().await;
    let registry = g.registry(0);
    let session = g.session(0).await;
    let ttl = session.ttl();
    registry
        .register_ephemeral(
            &session,
            &ServiceInstance::new("orders", "eph", "127.0.0.1", 9001)
                .tag("v2")
                .zone("z1"),
        )
        .await
        .expect("register");
    registry
        .register_persistent(&ServiceInstance::new("orders", "per", "127.0.0.1", 9002))
        .await
        .expect("register");
    let all = g
        .registry(2)
        .instances("orders", &InstanceFilter::new())
        .await
        .expect("read");
    assert_eq!(
        all.iter()
            .map(|i| (&*i.id, i.ephemeral))
            .collect::<Vec<_>>(),
        [("eph", true), ("per", false)]
    );
    let v2 = registry
        .instances("orders", &InstanceFilter::new().tag("v2").zone("z1"))
        .await
        .expect("read");
    assert_eq!(v2.len(), 1);

    // Update keeps the lease; a disabled instance is not returned.
    registry
        .set_weight("orders", "eph", 7)
        .await
        .expect("update");
    registry
        .set_metadata("orders", "eph", "build", "42")
        .await
        .expect("update");
    registry
        .set_enabled("orders", "per", false)
        .await
        .expect("update");
    let eph = registry
        .get("orders", "eph")
        .await
        .expect("read")
        .expect("registered");
    assert_eq!(
        (
            eph.weight,
            eph.ephemeral,
            eph.metadata.get("build").map(|s| &**s)
        ),
        (7, true, Some("42"))
    );
    assert_eq!(
        local_ids(&registry, "orders", &InstanceFilter::new()).await,
        ["eph"]
    );
    assert!(matches!(
        registry.set_weight("orders", "nope", 1).await,
        Err(DiscoveryError::NotFound { .. })
    ));
    assert!(matches!(
        registry
            .register_persistent(&ServiceInstance::new("a/b", "x", "h", 1))
            .await,
        Err(DiscoveryError::InvalidName { .. })
    ));

    // The process "dies": its session stops renewing.
    let died = Instant::now();
    drop(session);
    let after = eventually("the ephemeral instance is removed everywhere", || async {
        let mut gone = true;
        for i in 0..3 {
            gone &= !local_ids(&g.registry(i), "orders", &InstanceFilter::all())
                .await
                .contains(&"eph".to_owned());
        }
        gone
    })
    .await;
    println!(
        "ephemeral instance removed from every member {:?} after its session died (TTL {ttl:?})",
        died.elapsed().max(after)
    );
    assert_eq!(
        local_ids(&registry, "orders", &InstanceFilter::all()).await,
        ["per"],
        "the persistent instance stays"
    );
    assert!(registry.deregister("orders", "per").await.expect("delete"));
    assert!(!registry.deregister("orders", "per").await.expect("delete"));
    assert!(
        registry
            .instances("orders", &InstanceFilter::all())
            .await
            .expect("read")
            .is_empty()
    );
    g.stop().await;
}

/// A local HTTP endpoint whose `/health` answers 200 or 503 at the test's
/// command.
struct Endpoint {
    port: u16,
    healthy: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        Endpoint::serving(port, |app| async move {
            let _ = axum::serve(listener, app).await;
        })
    }

    /// The `/health` app on `port`, served by `serve` (plain HTTP above; the
    /// HTTPS tests serve it over TLS).
    fn serving<F>(port: u16, serve: impl FnOnce(axum::Router) -> F) -> Endpoint
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = healthy.clone();
        let app = axum::Router::new().route(
            "/health",
            axum::routing::get(move || {
                let flag = flag.clone();
                async move {
                    if flag.load(Ordering::SeqCst) {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        );
        Endpoint {
            port,
            healthy,
            task: tokio::spawn(serve(app)),
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_http_endpoint_goes_unhealthy_then_healthy_on_every_member() {
    let g = Group::start().await;
    let endpoint = Endpoint::start().await;
    let mut checkers = Vec::new();
    for i in 0..3 {
        let session = g.session(i).await;
        checkers.push(
            HealthChecker::builder(&session, format!("member-{i}"))
                .scan_interval(Duration::from_millis(50))
                .start()
                .await
                .expect("checker starts"),
        );
    }
    let registry = g.registry(1);
    let check = HealthCheck::http("/health", 200)
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_millis(500))
        .thresholds(2, 2);
    registry
        .register_persistent(
            &ServiceInstance::new("web", "w1", "127.0.0.1", endpoint.port).check(check.clone()),
        )
        .await
        .expect("register");
    // A TTL-checked instance on the same checkers.
    registry
        .register_persistent(
            &ServiceInstance::new("web", "hb", "127.0.0.1", 1).check(
                HealthCheck::ttl(Duration::from_millis(400))
                    .interval(Duration::from_millis(50))
                    .thresholds(1, 1),
            ),
        )
        .await
        .expect("register");

    eventually("exactly one checker owns each instance", || async {
        let owned: Vec<usize> = checkers.iter().map(|c| c.assigned().len()).collect();
        owned.iter().sum::<usize>() == 2
    })
    .await;

    endpoint.healthy.store(false, Ordering::SeqCst);
    let t = eventually("w1 is unhealthy on every member", || async {
        health_everywhere(&g, "web", "w1").await == [Some(HealthStatus::Unhealthy); 3]
    })
    .await;
    println!("failing endpoint seen unhealthy everywhere after {t:?}");
    assert!(
        !local_ids(&registry, "web", &InstanceFilter::new())
            .await
            .contains(&"w1".to_owned()),
        "an unhealthy instance is not returned by default"
    );
    endpoint.healthy.store(true, Ordering::SeqCst);
    let t = eventually("w1 is healthy again on every member", || async {
        health_everywhere(&g, "web", "w1").await == [Some(HealthStatus::Healthy); 3]
    })
    .await;
    println!("recovered endpoint seen healthy everywhere after {t:?}");
    let w1 = registry
        .get("web", "w1")
        .await
        .expect("read")
        .expect("registered");
    assert!(w1.checked_by.is_some_and(|c| c.starts_with("member-")));

    // TTL check: no heartbeat → unhealthy; heartbeats → healthy.
    eventually("hb without heartbeats turns unhealthy", || async {
        health_everywhere(&g, "web", "hb").await == [Some(HealthStatus::Unhealthy); 3]
    })
    .await;
    let beating = Arc::new(AtomicBool::new(true));
    let beat = {
        let (registry, beating) = (registry.clone(), beating.clone());
        tokio::spawn(async move {
            while beating.load(Ordering::SeqCst) {
                let _ = registry.heartbeat("web", "hb").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    eventually("hb with heartbeats turns healthy", || async {
        health_everywhere(&g, "web", "hb").await == [Some(HealthStatus::Healthy); 3]
    })
    .await;
    beating.store(false, Ordering::SeqCst);
    beat.await.expect("heartbeat task");
    eventually("hb turns unhealthy once heartbeats stop", || async {
        health_everywhere(&g, "web", "hb").await == [Some(HealthStatus::Unhealthy); 3]
    })
    .await;
    assert!(matches!(
        registry.heartbeat("web", "nope").await,
        Err(DiscoveryError::NotFound { .. })
    ));
    for c in &checkers {
        c.stop().await.expect("checker stops");
    }
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_member_running_a_check_dies_the_check_continues_on_another() {
    let mut g = Group::start().await;
    let failing = Arc::new(AtomicBool::new(false));
    let mut checkers = Vec::new();
    for i in 0..3 {
        let session = g.session(i).await;
        let failing = failing.clone();
        let check = move |_: ServiceInstance| -> CheckFuture {
            let failing = failing.clone();
            Box::pin(async move {
                if failing.load(Ordering::SeqCst) {
                    Err("told to fail".to_owned())
                } else {
                    Ok(())
                }
            })
        };
        checkers.push(
            HealthChecker::builder(&session, format!("member-{i}"))
                .scan_interval(Duration::from_millis(50))
                .custom_check("app", check)
                .start()
                .await
                .expect("checker starts"),
        );
    }
    let registry = g.registry(0);
    let check = HealthCheck::custom("app")
        .interval(Duration::from_millis(50))
        .thresholds(1, 1);
    for n in 0..12 {
        registry
            .register_persistent(
                &ServiceInstance::new("jobs", format!("j{n:02}"), "127.0.0.1", 1)
                    .check(check.clone()),
            )
            .await
            .expect("register");
    }
    eventually("all 12 instances are assigned, each once", || async {
        let mut ids: Vec<String> = checkers
            .iter()
            .flat_map(|c| c.assigned().into_iter().map(|i| i.id))
            .collect();
        ids.sort();
        ids.dedup();
        ids.len() == 12 && checkers.iter().map(|c| c.assigned().len()).sum::<usize>() == 12
    })
    .await;
    // Kill a member that runs at least one check (not member 0: the test
    // reads through it).
    let victim = (1..3)
        .find(|&i| !checkers[i].assigned().is_empty())
        .unwrap_or(1);
    let moved: BTreeSet<String> = checkers[victim]
        .assigned()
        .into_iter()
        .map(|i| i.id)
        .collect();
    g.kill(victim).await;
    let killed = Instant::now();
    failing.store(true, Ordering::SeqCst);
    let t = eventually(
        "every instance, including the dead checker's, turns unhealthy",
        || async {
            let (_, all) = match registry.snapshot("jobs", KvOptions::default()).await {
                Ok(x) => x,
                Err(_) => return false,
            };
            all.len() == 12 && all.iter().all(|i| i.health == HealthStatus::Unhealthy)
        },
    )
    .await;
    let (_, all) = registry
        .snapshot("jobs", KvOptions::default())
        .await
        .expect("read");
    for i in all.iter().filter(|i| moved.contains(&i.id)) {
        assert_ne!(
            i.checked_by.as_deref(),
            Some(format!("member-{victim}").as_str()),
            "{} was recorded by the dead checker",
            i.id
        );
    }
    println!(
        "{} checks of the killed member continued elsewhere; all unhealthy {t:?} after the kill ({:?} ago)",
        moved.len(),
        killed.elapsed()
    );
    failing.store(false, Ordering::SeqCst);
    eventually("and back to healthy", || async {
        registry
            .instances("jobs", &InstanceFilter::new())
            .await
            .map(|v| v.len() == 12)
            .unwrap_or(false)
    })
    .await;
    g.stop().await;
}

/// A client whose watches are cancelled after every response (as a slow
/// consumer's would be): the service watch must resume without a gap.
#[derive(Clone)]
struct FlakyWatches(KvNode);

struct NoControl;
impl WatchControl for NoControl {
    fn request_progress(&self) {}
    fn cancel(&self) {}
}

#[async_trait]
impl KvClient for FlakyWatches {
    async fn put(&self, r: PutRequest, o: KvOptions) -> ha_core::Result<PutResponse> {
        self.0.put(r, o).await
    }
    async fn range(&self, r: RangeRequest, o: KvOptions) -> ha_core::Result<RangeResponse> {
        self.0.range(r, o).await
    }
    async fn delete(
        &self,
        r: ha_discovery::DeleteRequest,
        o: KvOptions,
    ) -> ha_core::Result<DeleteResponse> {
        self.0.delete(r, o).await
    }
    async fn txn(&self, r: TxnRequest, o: KvOptions) -> ha_core::Result<TxnResponse> {
        self.0.txn(r, o).await
    }
    async fn compact(&self, rev: i64, o: KvOptions) -> ha_core::Result<CompactResponse> {
        self.0.compact(rev, o).await
    }
    async fn watch(&self, r: WatchRequest) -> ha_core::Result<WatchStream> {
        let mut inner = self.0.watch(r).await?;
        let stream = async_stream_once(async move {
            match inner.next().await {
                Some(Ok(resp)) => {
                    let resume = resp.header.revision + 1;
                    vec![
                        Ok(resp),
                        Err(KvError::WatchCancelled {
                            resume_revision: resume,
                            reason: ha_core::WatchCancelReason::SlowConsumer,
                        }),
                    ]
                }
                Some(Err(e)) => vec![Err(e)],
                None => vec![],
            }
        });
        Ok(WatchStream::new(WatchId(0), stream, Box::new(NoControl)))
    }
    async fn lease_grant(
        &self,
        r: LeaseGrantRequest,
        o: KvOptions,
    ) -> ha_core::Result<LeaseGrantResponse> {
        self.0.lease_grant(r, o).await
    }
    async fn lease_revoke(
        &self,
        id: LeaseId,
        o: KvOptions,
    ) -> ha_core::Result<LeaseRevokeResponse> {
        self.0.lease_revoke(id, o).await
    }
    async fn lease_keep_alive_once(
        &self,
        id: LeaseId,
        o: KvOptions,
    ) -> ha_core::Result<LeaseKeepAliveResponse> {
        self.0.lease_keep_alive_once(id, o).await
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> ha_core::Result<LeaseKeepAlive> {
        self.0.lease_keep_alive(id).await
    }
    async fn lease_time_to_live(
        &self,
        id: LeaseId,
        keys: bool,
        o: KvOptions,
    ) -> ha_core::Result<LeaseTimeToLiveResponse> {
        self.0.lease_time_to_live(id, keys, o).await
    }
    async fn leases(&self, o: KvOptions) -> ha_core::Result<LeaseLeasesResponse> {
        self.0.leases(o).await
    }
}

type Items = Vec<ha_core::Result<ha_core::WatchResponse>>;

/// The items one future produces, as a stream.
fn async_stream_once(
    f: impl std::future::Future<Output = Items> + Send + 'static,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = ha_core::Result<ha_core::WatchResponse>> + Send>>
{
    Box::pin(
        futures::stream::once(f)
            .map(futures::stream::iter)
            .flatten(),
    )
}

/// What a change says, for comparing sequences across members.
fn describe(c: &ServiceChange) -> String {
    match c {
        ServiceChange::Snapshot {
            revision,
            instances,
        } => format!(
            "{revision} snapshot {:?}",
            instances.iter().map(|i| &i.id).collect::<Vec<_>>()
        ),
        ServiceChange::Put { revision, instance } => format!(
            "{revision} put {} w{} {:?} {}",
            instance.id, instance.weight, instance.health, instance.enabled
        ),
        ServiceChange::Delete { revision, id } => format!("{revision} delete {id}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_on_every_member_see_the_same_sequence() {
    let g = Group::start().await;
    let mut streams = Vec::new();
    for i in 0..3 {
        let mut s = g.registry(i).watch("pay");
        // Start every watch (its snapshot) before the writes.
        let first = s.next().await.expect("a snapshot").expect("snapshot");
        assert!(
            matches!(&first, ServiceChange::Snapshot { instances, .. } if instances.is_empty())
        );
        streams.push(s);
    }
    // And one whose watches are cancelled after every response.
    let flaky = Registry::new(Arc::new(FlakyWatches(g.node(2).clone())))
        .namespace("test")
        .expect("valid namespace");
    let mut s = flaky.watch("pay");
    s.next().await.expect("a snapshot").expect("snapshot");
    streams.push(s);

    // Collect concurrently with the writes, so that each watch (and each
    // resumption of the flaky one) sees the changes as they happen.
    let collectors: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut seq = Vec::new();
                let mut live = BTreeSet::new();
                loop {
                    let change = tokio::time::timeout(PATIENCE, s.next())
                        .await
                        .expect("changes keep coming")
                        .expect("the stream goes on")
                        .expect("no error");
                    match &change {
                        ServiceChange::Put { instance, .. } => {
                            live.insert(instance.id.clone());
                        }
                        ServiceChange::Delete { id, .. } => {
                            live.remove(id);
                        }
                        ServiceChange::Snapshot { .. } => panic!("an unexpected new snapshot"),
                    }
                    seq.push(describe(&change));
                    if live.is_empty() && seq.len() > 6 {
                        return seq;
                    }
                }
            })
        })
        .collect();
    let registry = g.registry(0);
    let session = g.session(1).await;
    for n in 0..5 {
        registry
            .register_ephemeral(
                &session,
                &ServiceInstance::new("pay", format!("p{n}"), "127.0.0.1", 1),
            )
            .await
            .expect("register");
    }
    registry
        .register_persistent(&ServiceInstance::new("pay", "fixed", "127.0.0.1", 2))
        .await
        .expect("register");
    registry.set_weight("pay", "p1", 5).await.expect("update");
    registry
        .update("pay", "p2", |i| i.health = HealthStatus::Unhealthy)
        .await
        .expect("update");
    registry.deregister("pay", "p3").await.expect("delete");
    // Another service's changes are not in this watch.
    registry
        .register_persistent(&ServiceInstance::new("payroll", "x", "127.0.0.1", 3))
        .await
        .expect("register");
    session.close().await.expect("close");
    registry.deregister("pay", "fixed").await.expect("delete");

    let mut sequences = Vec::new();
    for c in collectors {
        sequences.push(c.await.expect("collector"));
    }
    // 5 + 1 registrations, 2 updates, 1 + 4 + 1 removals.
    assert_eq!(sequences[0].len(), 14, "{:#?}", sequences[0]);
    for (n, s) in sequences.iter().enumerate().skip(1) {
        assert_eq!(s, &sequences[0], "watch {n} saw a different sequence");
    }
    // The session's removals come in one revision.
    let close_revs: BTreeSet<&str> = sequences[0][9..13]
        .iter()
        .map(|l| l.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(close_revs.len(), 1, "{:#?}", sequences[0]);
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protect_threshold_returns_everything_when_too_few_are_healthy() {
    let g = Group::start().await;
    let registry = g.registry(0);
    for n in 0..4 {
        registry
            .register_persistent(&ServiceInstance::new("db", format!("d{n}"), "127.0.0.1", 1))
            .await
            .expect("register");
    }
    // Garbage under the service's prefix is skipped, not fatal.
    g.node(0)
        .put(
            PutRequest::new(
                format!("{}svc/test/db/zz", ha_discovery::REGISTRY_ROOT),
                "not json",
            ),
            KvOptions::default(),
        )
        .await
        .expect("put");
    assert!(matches!(
        registry.get("db", "zz").await,
        Err(DiscoveryError::Decode { .. })
    ));
    for n in 1..4 {
        registry
            .update("db", &format!("d{n}"), |i| {
                i.health = HealthStatus::Unhealthy
            })
            .await
            .expect("update");
    }
    let healthy = registry
        .instances("db", &InstanceFilter::new())
        .await
        .expect("read");
    assert_eq!(healthy.len(), 1, "only d0 is healthy");
    let protected = registry
        .instances("db", &InstanceFilter::new().protect_threshold(0.5))
        .await
        .expect("read");
    assert_eq!(
        protected.len(),
        4,
        "25% healthy < 50%: every instance is returned"
    );
    let relaxed = registry
        .instances("db", &InstanceFilter::new().protect_threshold(0.25))
        .await
        .expect("read");
    assert_eq!(relaxed.len(), 1, "at the threshold, only the healthy one");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_answers_without_quorum_and_is_loaded_after_a_restart() {
    let mut g = Group::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("discovery-cache.json");
    let config = DiscoveryConfig {
        query_timeout: Duration::from_millis(300),
        cache_file: Some(file.clone()),
        persist_interval: Duration::from_millis(50),
        ..DiscoveryConfig::default()
    };
    let env = RecipeEnv::tokio().expect("runtime");
    let discovery = Discovery::new(g.registry(0), env.clone(), config.clone()).expect("discovery");
    discovery.subscribe("api").expect("subscribe");
    let registry = g.registry(1);
    for n in 0..3 {
        registry
            .register_persistent(&ServiceInstance::new(
                "api",
                format!("a{n}"),
                "127.0.0.1",
                1,
            ))
            .await
            .expect("register");
    }
    eventually("the subscription caches all three", || async {
        discovery
            .cached("api", &InstanceFilter::new())
            .is_some_and(|v| v.len() == 3)
    })
    .await;
    let (found, source) = discovery
        .lookup("api", &InstanceFilter::new())
        .await
        .expect("lookup");
    assert_eq!((found.len(), source), (3, Source::Group));
    assert!(matches!(
        discovery.lookup("never-seen", &InstanceFilter::new()).await,
        Ok((v, Source::Group)) if v.is_empty()
    ));
    eventually("the cache file is written", || async { file.exists() }).await;

    // Quorum lost: two of three members die.
    g.kill(1).await;
    g.kill(2).await;
    let (found, source) = discovery
        .lookup("api", &InstanceFilter::new())
        .await
        .expect("the cache answers");
    assert_eq!(source, Source::Cache);
    assert_eq!(
        found.iter().map(|i| &*i.id).collect::<Vec<_>>(),
        ["a0", "a1", "a2"]
    );
    assert!(matches!(
        discovery.lookup("unknown", &InstanceFilter::new()).await,
        Err(DiscoveryError::Unavailable { .. })
    ));
    discovery.persist().expect("persist");
    drop(discovery);

    // "Restart": a new Discovery loads the file before any group read.
    let restarted = Discovery::new(g.registry(0), env.clone(), config.clone()).expect("loads");
    let cached = restarted
        .cached("api", &InstanceFilter::new())
        .expect("loaded from the file");
    assert_eq!(cached.len(), 3);
    assert!(
        cached
            .iter()
            .all(|i| i.namespace == "test" && i.mod_revision > 0)
    );
    drop(restarted);

    // A damaged file is a typed error, not a panic.
    std::fs::write(&file, b"{garbage").expect("write");
    assert!(matches!(
        Discovery::new(g.registry(0), env, config),
        Err(DiscoveryError::Cache { .. })
    ));
    g.stop().await;
}
