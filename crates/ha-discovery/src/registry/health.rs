//! Health checks run by the members themselves.
//!
//! Each member that runs a [`HealthChecker`] registers itself under
//! `checkers/` with its session (so it disappears when the member dies).
//! Every instance with a [`HealthCheck`] is assigned to one live checker
//! by rendezvous hashing over the checker set read from the group: when a
//! checker dies, only its instances move, each to the checker that scores
//! next. The checker records a status change with a transaction guarded
//! by the instance's mod revision and by its own registration, so a
//! checker that has not yet noticed a newer assignment (or that is
//! itself gone) cannot overwrite a newer result.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use ha_core::{
    Compare, CompareOp, CompareTarget, KeyRange, KvClient, KvOptions, PutRequest, RangeRequest,
    TxnOp, TxnRequest,
};
use parking_lot::Mutex as SyncMutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::client::decode_all;
use super::error::{DiscoveryError, DiscoveryResult};
use super::instance::{
    CheckKind, HealthStatus, ServiceInstance, all_instances_prefix, check_name, checkers_prefix,
    heartbeat_key, instance_key,
};
use crate::env::RecipeEnv;
use crate::session::Session;

/// A check the application supplies ([`CheckKind::Custom`]). Return
/// `Ok(())` when the instance is healthy.
#[async_trait]
pub trait CustomCheck: Send + Sync + 'static {
    /// Checks `instance`.
    async fn check(&self, instance: &ServiceInstance) -> Result<(), String>;
}

/// A boxed future returned by a closure check.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

#[async_trait]
impl<F> CustomCheck for F
where
    F: Fn(ServiceInstance) -> CheckFuture + Send + Sync + 'static,
{
    async fn check(&self, instance: &ServiceInstance) -> Result<(), String> {
        self(instance.clone()).await
    }
}

/// What a checker publishes about itself.
#[derive(Serialize, Deserialize)]
struct CheckerRecord {
    v: u32,
    /// The custom checks it can run.
    custom: BTreeSet<String>,
    /// It runs HTTPS checks (checkers of older versions, which would run
    /// them as plain HTTP, have no such field and are not assigned them).
    #[serde(default)]
    https: bool,
}

/// What a live checker can run.
struct Capabilities {
    custom: BTreeSet<String>,
    https: bool,
}

impl Capabilities {
    fn can_run(&self, kind: &CheckKind) -> bool {
        match kind {
            CheckKind::Custom { name } => self.custom.contains(name),
            CheckKind::Http { tls: true, .. } => self.https,
            _ => true,
        }
    }
}

/// Configures and starts a [`HealthChecker`].
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct HealthCheckerBuilder {
    session: Session,
    id: String,
    scan_interval: Duration,
    custom: HashMap<String, Arc<dyn CustomCheck>>,
}

impl fmt::Debug for HealthCheckerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheckerBuilder")
            .field("id", &self.id)
            .field("scan_interval", &self.scan_interval)
            .finish_non_exhaustive()
    }
}

impl HealthCheckerBuilder {
    /// How often the checker re-reads the checker set and the instances
    /// and runs the checks that are due (default 500 ms). A check runs at
    /// most once per scan, so its effective interval is its own rounded
    /// up to a multiple of this.
    pub fn scan_interval(mut self, interval: Duration) -> Self {
        self.scan_interval = interval;
        self
    }

    /// Makes `check` available to instances with
    /// `CheckKind::Custom { name }`; only checkers that have it are
    /// assigned those instances.
    pub fn custom_check(mut self, name: impl Into<String>, check: impl CustomCheck) -> Self {
        self.custom.insert(name.into(), Arc::new(check));
        self
    }

    /// Registers the checker (session-bound) and starts checking in the
    /// background on the session's spawner.
    ///
    /// # Errors
    /// [`DiscoveryError::InvalidName`] for a bad id;
    /// [`DiscoveryError::InvalidConfig`] for a zero scan interval;
    /// [`DiscoveryError::Recipe`] when the session is lost;
    /// [`DiscoveryError::Kv`] from the registration.
    pub async fn start(self) -> DiscoveryResult<HealthChecker> {
        check_name("checker id", &self.id)?;
        if self.scan_interval.is_zero() {
            return Err(DiscoveryError::InvalidConfig {
                reason: "the scan interval must be positive",
            });
        }
        self.session.check_alive()?;
        let mut key = checkers_prefix();
        key.extend_from_slice(self.id.as_bytes());
        let record = CheckerRecord {
            v: 1,
            custom: self.custom.keys().cloned().collect(),
            https: true,
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        let r = self.session.put(key.clone(), value).await?;
        let stop = CancellationToken::new();
        let shared = Arc::new(SyncMutex::new(Vec::new()));
        let http = HttpClients::new()?;
        let worker = Worker {
            client: self.session.client().clone(),
            env: self.session.env().clone(),
            session: self.session.clone(),
            id: self.id.clone(),
            key,
            key_revision: r.header.revision,
            scan_interval: self.scan_interval,
            custom: self.custom,
            http,
            states: HashMap::new(),
            assigned: shared.clone(),
        };
        self.session.env().spawn(worker.run(stop.clone()));
        Ok(HealthChecker {
            inner: Arc::new(CheckerInner {
                id: self.id,
                session: self.session,
                assigned: shared,
                stop,
            }),
        })
    }
}

struct CheckerInner {
    id: String,
    session: Session,
    assigned: Arc<SyncMutex<Vec<ServiceInstance>>>,
    stop: CancellationToken,
}

impl Drop for CheckerInner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Runs the health checks assigned to this member (see the module docs).
/// Checking stops when the session is lost, on [`HealthChecker::stop`], or
/// when the last clone is dropped.
#[derive(Clone)]
pub struct HealthChecker {
    inner: Arc<CheckerInner>,
}

impl fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthChecker")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl HealthChecker {
    /// A checker called `id` (unique among checkers), registered through
    /// `session`.
    pub fn builder(session: &Session, id: impl Into<String>) -> HealthCheckerBuilder {
        HealthCheckerBuilder {
            session: session.clone(),
            id: id.into(),
            scan_interval: Duration::from_millis(500),
            custom: HashMap::new(),
        }
    }

    /// The checker's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The instances assigned to this checker at its last scan.
    pub fn assigned(&self) -> Vec<ServiceInstance> {
        self.inner.assigned.lock().clone()
    }

    /// Stops checking and removes the checker's registration (its
    /// instances move to the other checkers at their next scan).
    ///
    /// # Errors
    /// [`DiscoveryError::Kv`] when the delete failed (the registration
    /// then goes with the session).
    pub async fn stop(&self) -> DiscoveryResult<()> {
        self.inner.stop.cancel();
        let mut key = checkers_prefix();
        key.extend_from_slice(self.inner.id.as_bytes());
        self.inner
            .session
            .client()
            .delete(
                ha_core::DeleteRequest::new(KeyRange::key(key)),
                KvOptions::default(),
            )
            .await?;
        Ok(())
    }
}

/// A stable 64-bit hash (FNV-1a, then a SplitMix64 finaliser): every
/// member computes the same assignment whatever its build.
pub(crate) fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The checker (of `checkers`) that checks the instance at `key`: the one
/// with the highest rendezvous score.
pub(crate) fn owner<'a>(checkers: impl Iterator<Item = &'a str>, key: &[u8]) -> Option<&'a str> {
    checkers.max_by_key(|c| (stable_hash(&[c.as_bytes(), key]), *c))
}

/// The HTTP(S) clients of a checker: one verifying server certificates,
/// one that does not (`tls_skip_verify`).
struct HttpClients {
    verified: reqwest::Client,
    unverified: reqwest::Client,
}

impl HttpClients {
    fn new() -> DiscoveryResult<HttpClients> {
        let failed = |_| DiscoveryError::InvalidConfig {
            reason: "the HTTP client cannot be built",
        };
        Ok(HttpClients {
            verified: reqwest::Client::builder().build().map_err(failed)?,
            unverified: reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .build()
                .map_err(failed)?,
        })
    }
}

/// One instance's check state on its checker.
struct CheckState {
    create_revision: i64,
    next_due: Instant,
    successes: u32,
    failures: u32,
    /// TTL checks: the heartbeat's mod revision last seen and when (local
    /// clock) it was first seen.
    heartbeat: Option<(i64, Instant)>,
}

struct Worker {
    client: Arc<dyn KvClient>,
    env: RecipeEnv,
    session: Session,
    id: String,
    key: Vec<u8>,
    key_revision: i64,
    scan_interval: Duration,
    custom: HashMap<String, Arc<dyn CustomCheck>>,
    http: HttpClients,
    states: HashMap<Vec<u8>, CheckState>,
    assigned: Arc<SyncMutex<Vec<ServiceInstance>>>,
}

impl Worker {
    async fn run(mut self, stop: CancellationToken) {
        let lost = self.session.lost().fuse();
        futures::pin_mut!(lost);
        loop {
            if let Err(e) = self.scan().await {
                tracing::debug!(checker = %self.id, error = %e, "health scan failed; retrying");
            }
            let clock = self.env.clock().clone();
            futures::select_biased! {
                () = stop.cancelled().fuse() => return,
                _ = lost => return,
                () = clock.sleep(self.scan_interval).fuse() => {}
            }
        }
    }

    /// Reads the checkers and the instances, runs the due checks of the
    /// instances this checker owns, records status changes.
    async fn scan(&mut self) -> DiscoveryResult<()> {
        let checkers = self
            .client
            .range(
                RangeRequest::new(KeyRange::prefix(checkers_prefix())),
                KvOptions::default(),
            )
            .await?;
        let prefix = checkers_prefix();
        // (id, what it runs); undecodable records run only the built-in
        // plain checks.
        let live: Vec<(String, Capabilities)> = checkers
            .kvs
            .iter()
            .filter_map(|kv| {
                let id = std::str::from_utf8(kv.key.strip_prefix(prefix.as_slice())?).ok()?;
                let caps = serde_json::from_slice::<CheckerRecord>(&kv.value)
                    .map(|r| Capabilities {
                        custom: r.custom,
                        https: r.https,
                    })
                    .unwrap_or(Capabilities {
                        custom: BTreeSet::new(),
                        https: false,
                    });
                Some((id.to_owned(), caps))
            })
            .collect();
        if !live.iter().any(|(id, _)| *id == self.id) {
            // Our registration is gone (session expired meanwhile).
            self.assigned.lock().clear();
            return Ok(());
        }
        let all = self
            .client
            .range(
                RangeRequest::new(KeyRange::prefix(all_instances_prefix())),
                KvOptions::default(),
            )
            .await?;
        let instances = decode_all(&all.kvs);
        let mine: Vec<ServiceInstance> = instances
            .into_iter()
            .filter(|i| {
                let Some(check) = &i.check else { return false };
                let key = instance_key(&i.namespace, &i.service, &i.id);
                let able = live.iter().filter(|(_, caps)| caps.can_run(&check.kind));
                owner(able.map(|(id, _)| id.as_str()), &key) == Some(self.id.as_str())
            })
            .collect();
        let now = self.env.clock().now();
        let keys: BTreeSet<Vec<u8>> = mine
            .iter()
            .map(|i| instance_key(&i.namespace, &i.service, &i.id))
            .collect();
        self.states.retain(|k, _| keys.contains(k));
        let mut due = Vec::new();
        for i in &mine {
            let key = instance_key(&i.namespace, &i.service, &i.id);
            let state = self.states.entry(key.clone()).or_insert(CheckState {
                create_revision: i.create_revision,
                next_due: now,
                successes: 0,
                failures: 0,
                heartbeat: None,
            });
            if state.create_revision != i.create_revision {
                // Re-registered: a new instance as far as checks go.
                *state = CheckState {
                    create_revision: i.create_revision,
                    next_due: now,
                    successes: 0,
                    failures: 0,
                    heartbeat: None,
                };
            }
            if state.next_due <= now {
                due.push(i.clone());
            }
        }
        *self.assigned.lock() = mine;
        let results = futures::future::join_all(due.iter().map(|i| self.run_check(i))).await;
        for (instance, outcome) in due.iter().zip(results) {
            self.record(instance, outcome, now).await;
        }
        Ok(())
    }

    /// Runs one check within its deadline.
    async fn run_check(&self, i: &ServiceInstance) -> CheckOutcome {
        let Some(check) = &i.check else {
            return CheckOutcome::Fail("no check".into());
        };
        let timeout = Duration::from_millis(check.timeout_ms);
        let run = async {
            match &check.kind {
                CheckKind::Tcp => tokio::net::TcpStream::connect(i.endpoint())
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
                    .into(),
                CheckKind::Http {
                    path,
                    expect_status,
                    tls,
                    tls_skip_verify,
                } => {
                    let (scheme, client) = match (tls, tls_skip_verify) {
                        (false, _) => ("http", &self.http.verified),
                        (true, false) => ("https", &self.http.verified),
                        (true, true) => ("https", &self.http.unverified),
                    };
                    let url = format!("{scheme}://{}{}", i.endpoint(), path);
                    match client.get(&url).send().await {
                        Ok(r) if r.status().as_u16() == *expect_status => CheckOutcome::Pass,
                        Ok(r) => CheckOutcome::Fail(format!("status {}", r.status().as_u16())),
                        Err(e) => CheckOutcome::Fail(error_chain(&e)),
                    }
                }
                CheckKind::Custom { name } => match self.custom.get(name) {
                    Some(c) => c.check(i).await.into(),
                    None => CheckOutcome::Fail(format!("custom check {name:?} not here")),
                },
                CheckKind::Ttl { .. } => {
                    let key = heartbeat_key(&i.namespace, &i.service, &i.id);
                    match self.client.get(key, KvOptions::default()).await {
                        Ok(kv) => CheckOutcome::Heartbeat(kv.map(|kv| kv.mod_revision)),
                        Err(e) => CheckOutcome::Skip(e.to_string()),
                    }
                }
            }
        };
        match self.env.timeout_any(timeout, run).await {
            Some(outcome) => outcome,
            None => match check.kind {
                // Not the instance's fault: we could not read the group.
                CheckKind::Ttl { .. } => CheckOutcome::Skip("heartbeat read timed out".into()),
                _ => CheckOutcome::Fail(format!("no answer within {timeout:?}")),
            },
        }
    }

    /// Counts an outcome; writes a status change when a threshold is
    /// crossed.
    async fn record(&mut self, i: &ServiceInstance, outcome: CheckOutcome, now: Instant) {
        let Some(check) = &i.check else { return };
        let key = instance_key(&i.namespace, &i.service, &i.id);
        let Some(state) = self.states.get_mut(&key) else {
            return;
        };
        state.next_due = now + Duration::from_millis(check.interval_ms);
        let passed = match outcome {
            CheckOutcome::Pass => true,
            CheckOutcome::Fail(why) => {
                tracing::debug!(instance = %i.id, why, "health check failed");
                false
            }
            CheckOutcome::Skip(why) => {
                tracing::debug!(instance = %i.id, why, "health check skipped");
                return;
            }
            CheckOutcome::Heartbeat(revision) => {
                let CheckKind::Ttl { ttl_ms } = check.kind else {
                    return;
                };
                let ttl = Duration::from_millis(ttl_ms);
                match (state.heartbeat, revision) {
                    (Some((seen, _)), Some(r)) if seen == r => {}
                    (_, Some(r)) => {
                        state.heartbeat = Some((r, now));
                        // A new heartbeat since the last look: alive.
                    }
                    (_, None) => {}
                }
                // Without any heartbeat yet, the clock starts at the first
                // look (registration grace of one TTL).
                let since = match state.heartbeat {
                    Some((_, at)) => at,
                    None => {
                        state.heartbeat = Some((0, now));
                        now
                    }
                };
                now.saturating_duration_since(since) < ttl
            }
        };
        if passed {
            state.successes = state.successes.saturating_add(1);
            state.failures = 0;
        } else {
            state.failures = state.failures.saturating_add(1);
            state.successes = 0;
        }
        let target = if i.health == HealthStatus::Healthy
            && state.failures >= check.failures_before_unhealthy
        {
            HealthStatus::Unhealthy
        } else if i.health == HealthStatus::Unhealthy
            && state.successes >= check.successes_before_healthy
        {
            HealthStatus::Healthy
        } else {
            return;
        };
        match self.write_status(i, target).await {
            Ok(true) => {
                tracing::info!(service = %i.service, instance = %i.id, status = ?target, checker = %self.id, "health changed");
            }
            Ok(false) => {
                tracing::debug!(instance = %i.id, "health write lost a race; re-reading next scan");
            }
            Err(e) => tracing::debug!(instance = %i.id, error = %e, "health write failed"),
        }
    }

    /// Writes `status` only if the instance is unchanged since this scan
    /// read it and this checker is still registered.
    async fn write_status(
        &self,
        i: &ServiceInstance,
        status: HealthStatus,
    ) -> DiscoveryResult<bool> {
        let key = instance_key(&i.namespace, &i.service, &i.id);
        let mut updated = i.clone();
        updated.health = status;
        updated.checked_by = Some(self.id.clone());
        let request = TxnRequest {
            compare: vec![
                Compare::key(
                    key.clone(),
                    CompareOp::Equal,
                    CompareTarget::ModRevision(i.mod_revision),
                ),
                Compare::key(
                    self.key.clone(),
                    CompareOp::Equal,
                    CompareTarget::CreateRevision(self.key_revision),
                ),
            ],
            success: vec![TxnOp::Put(PutRequest {
                ignore_lease: true,
                ..PutRequest::new(key, updated.encode())
            })],
            failure: vec![],
        };
        let r = self.client.txn(request, KvOptions::default()).await?;
        Ok(r.succeeded)
    }
}

/// An error and its causes on one line (reqwest's own message hides the
/// TLS or connection failure in its sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

enum CheckOutcome {
    Pass,
    Fail(String),
    /// No verdict (the group could not be read).
    Skip(String),
    /// A TTL check's heartbeat revision (`None`: none yet).
    Heartbeat(Option<i64>),
}

impl From<Result<(), String>> for CheckOutcome {
    fn from(r: Result<(), String>) -> Self {
        match r {
            Ok(()) => CheckOutcome::Pass,
            Err(e) => CheckOutcome::Fail(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_dead_checkers_instances_and_spreads_them() {
        let checkers = ["a", "b", "c"];
        let keys: Vec<Vec<u8>> = (0..3000).map(|n| format!("k{n}").into_bytes()).collect();
        let before: Vec<&str> = keys
            .iter()
            .map(|k| owner(checkers.iter().copied(), k).expect("an owner"))
            .collect();
        for c in checkers {
            let n = before.iter().filter(|o| **o == c).count();
            assert!((800..1200).contains(&n), "{c} owns {n} of 3000");
        }
        let after: Vec<&str> = keys
            .iter()
            .map(|k| owner(["a", "c"].into_iter(), k).expect("an owner"))
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != "b" {
                assert_eq!(b, a, "an instance of a live checker moved");
            }
        }
        let to_a = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b == "b" && **a == "a")
            .count();
        let moved = before.iter().filter(|b| **b == "b").count();
        assert!(
            to_a > moved / 3 && to_a < 2 * moved / 3,
            "{to_a} of {moved} went to a"
        );
        assert_eq!(owner(std::iter::empty(), b"k"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_or_replaced_checker_cannot_overwrite_a_newer_result() {
        use crate::registry::client::Registry;
        use ha_raft::{KvConfig, KvNode, MemNetwork};
        use ha_storage::{MemLogStore, MemStateStore};
        let id = ha_core::NodeId(1);
        let net = MemNetwork::new();
        let kv = KvNode::start(
            ha_core::Config::new(id, vec![id]),
            KvConfig::default(),
            Arc::new(MemLogStore::new()),
            Arc::new(MemStateStore::new()),
            net.transport(id),
        )
        .await
        .expect("member starts");
        let session = Session::new(kv.clone()).await.expect("session");
        let registry = Registry::new(Arc::new(kv.clone()));
        registry
            .register_persistent(
                &ServiceInstance::new("s", "i", "127.0.0.1", 1)
                    .check(super::super::instance::HealthCheck::tcp()),
            )
            .await
            .expect("register");
        let mut key = checkers_prefix();
        key.extend_from_slice(b"c1");
        let r = session.put(key.clone(), Vec::new()).await.expect("put");
        let worker = |key_revision| Worker {
            client: session.client().clone(),
            env: session.env().clone(),
            session: session.clone(),
            id: "c1".into(),
            key: key.clone(),
            key_revision,
            scan_interval: Duration::from_secs(3600),
            custom: HashMap::new(),
            http: HttpClients::new().expect("HTTP clients"),
            states: HashMap::new(),
            assigned: Arc::new(SyncMutex::new(Vec::new())),
        };
        let current = worker(r.header.revision);
        let get = || async {
            registry
                .get("s", "i")
                .await
                .expect("read")
                .expect("registered")
        };
        let stale = get().await;
        // A newer write (another checker's result, an owner's update).
        registry.set_weight("s", "i", 2).await.expect("update");
        assert!(
            !current
                .write_status(&stale, HealthStatus::Unhealthy)
                .await
                .expect("txn"),
            "a result based on a stale read was written"
        );
        assert_eq!(get().await.health, HealthStatus::Healthy);
        // A checker whose registration is not the current one.
        let replaced = worker(r.header.revision - 1);
        assert!(
            !replaced
                .write_status(&get().await, HealthStatus::Unhealthy)
                .await
                .expect("txn"),
            "a checker that is not registered wrote"
        );
        assert_eq!(get().await.health, HealthStatus::Healthy);
        assert!(
            current
                .write_status(&get().await, HealthStatus::Unhealthy)
                .await
                .expect("txn")
        );
        let after = get().await;
        assert_eq!(
            (after.health, after.checked_by.as_deref(), after.weight),
            (HealthStatus::Unhealthy, Some("c1"), 2)
        );
        session.close().await.expect("close");
        kv.shutdown().await.expect("shutdown");
    }

    #[test]
    fn the_hash_is_stable_across_builds() {
        // A fixed value: a change here would split a mixed-version group's
        // assignment.
        // (Computed independently from the FNV-1a + SplitMix64 definition.)
        assert_eq!(stable_hash(&[b"checker-1", b"key"]), 0x74b8_5217_b7f5_40d4);
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
    }
}
