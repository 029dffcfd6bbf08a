//! Discovery with a member-local cache: the last known good list of each
//! service, kept fresh by a background watch, served when the group does
//! not answer (no quorum), optionally persisted to a file and loaded at
//! start (Nacos's failover snapshot).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use ha_core::KvOptions;
use parking_lot::Mutex as SyncMutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::client::Registry;
use super::error::{DiscoveryError, DiscoveryResult};
use super::filter::InstanceFilter;
use super::instance::{ServiceInstance, check_name};
use super::watch::ServiceChange;
use crate::env::RecipeEnv;

/// How [`Discovery`] behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscoveryConfig {
    /// Deadline of a read from the group before the cache answers
    /// instead (default 1 s).
    pub query_timeout: Duration,
    /// A file the cache is written to (atomically, at most every
    /// `persist_interval`) and loaded from at start. `None`: memory only.
    pub cache_file: Option<PathBuf>,
    /// Least time between two writes of the cache file (default 1 s).
    pub persist_interval: Duration,
    /// Wait before re-subscribing after a watch failed (default 500 ms).
    pub retry_interval: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            query_timeout: Duration::from_secs(1),
            cache_file: None,
            persist_interval: Duration::from_secs(1),
            retry_interval: Duration::from_millis(500),
        }
    }
}

/// Where an answer of [`Discovery::lookup`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A linearizable read from the group.
    Group,
    /// The local cache: the group did not answer in time.
    Cache,
}

/// One service in the cache (and in the file).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CachedService {
    revision: i64,
    instances: Vec<CachedInstance>,
}

/// An instance with the read-time fields the record encoding leaves out.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CachedInstance {
    #[serde(flatten)]
    instance: ServiceInstance,
    ephemeral: bool,
    create_revision: i64,
    mod_revision: i64,
}

impl CachedInstance {
    fn of(i: &ServiceInstance) -> Self {
        CachedInstance {
            instance: i.clone(),
            ephemeral: i.ephemeral,
            create_revision: i.create_revision,
            mod_revision: i.mod_revision,
        }
    }
    fn to_instance(&self, namespace: &str) -> ServiceInstance {
        let mut i = self.instance.clone();
        i.namespace = namespace.to_owned();
        i.ephemeral = self.ephemeral;
        i.create_revision = self.create_revision;
        i.mod_revision = self.mod_revision;
        i
    }
}

/// The cache file's format.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    v: u32,
    namespace: String,
    services: BTreeMap<String, CachedService>,
}

struct Inner {
    registry: Registry,
    env: RecipeEnv,
    config: DiscoveryConfig,
    services: SyncMutex<HashMap<String, CachedService>>,
    subscribed: SyncMutex<HashSet<String>>,
    dirty: std::sync::atomic::AtomicBool,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Finds instances through the group, falling back to a member-local
/// cache of the last known good lists when the group does not answer.
///
/// [`Discovery::subscribe`] keeps a service's cached list fresh through a
/// background watch; [`Discovery::cached`] reads it without going to the
/// group (what a load balancer calls per request). Clones share the
/// cache; background work stops when the last clone is dropped.
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("registry", &self.inner.registry)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Discovery through `registry`, with background work on `env`. Loads
    /// the cache file, if configured and present.
    ///
    /// # Errors
    /// [`DiscoveryError::Cache`] when the file exists but cannot be read
    /// or is not a cache file of this namespace;
    /// [`DiscoveryError::InvalidConfig`] for zero intervals.
    pub fn new(
        registry: Registry,
        env: RecipeEnv,
        config: DiscoveryConfig,
    ) -> DiscoveryResult<Discovery> {
        if config.query_timeout.is_zero()
            || config.persist_interval.is_zero()
            || config.retry_interval.is_zero()
        {
            return Err(DiscoveryError::InvalidConfig {
                reason: "discovery intervals and timeouts must be positive",
            });
        }
        let services = match &config.cache_file {
            Some(path) => load(path, registry.namespace_name())?,
            None => HashMap::new(),
        };
        let inner = Arc::new(Inner {
            registry,
            env,
            config,
            services: SyncMutex::new(services),
            subscribed: SyncMutex::new(HashSet::new()),
            dirty: std::sync::atomic::AtomicBool::new(false),
            stop: CancellationToken::new(),
        });
        if inner.config.cache_file.is_some() {
            inner
                .env
                .spawn(flusher(Arc::downgrade(&inner), inner.stop.clone()));
        }
        Ok(Discovery { inner })
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The instances of `service` that `filter` lets through: from the
    /// group (linearizable) when it answers within the query timeout,
    /// else the last known good list.
    ///
    /// # Errors
    /// [`DiscoveryError::Unavailable`] when the group did not answer and
    /// nothing is cached for the service; [`DiscoveryError::InvalidName`].
    pub async fn instances(
        &self,
        service: &str,
        filter: &InstanceFilter,
    ) -> DiscoveryResult<Vec<ServiceInstance>> {
        self.lookup(service, filter).await.map(|(i, _)| i)
    }

    /// [`Discovery::instances`], saying where the answer came from.
    ///
    /// # Errors
    /// As [`Discovery::instances`].
    pub async fn lookup(
        &self,
        service: &str,
        filter: &InstanceFilter,
    ) -> DiscoveryResult<(Vec<ServiceInstance>, Source)> {
        check_name("service", service)?;
        let options = KvOptions::default().with_timeout(self.inner.config.query_timeout);
        let read = self.inner.registry.snapshot(service, options);
        // The member's own deadline may be longer than ours on some paths
        // (a forward to a dead leader): bound the whole call on our clock.
        let read = self
            .inner
            .env
            .timeout_any(self.inner.config.query_timeout, read);
        match read.await {
            Some(Ok((revision, instances))) => {
                self.store(service, revision, &instances);
                Ok((filter.apply(&instances), Source::Group))
            }
            outcome => {
                let error = match outcome {
                    Some(Err(e)) => e,
                    _ => DiscoveryError::Kv(ha_core::Error::Timeout {
                        after: self.inner.config.query_timeout,
                    }),
                };
                tracing::debug!(service, error = %error, "group read failed; serving the cache");
                match self.cached(service, filter) {
                    Some(instances) => Ok((instances, Source::Cache)),
                    None => Err(DiscoveryError::Unavailable {
                        service: service.to_owned(),
                        source: Box::new(error),
                    }),
                }
            }
        }
    }

    /// The cached instances of `service` that `filter` lets through, or
    /// `None` when nothing is cached for it. Never waits on the group.
    pub fn cached(&self, service: &str, filter: &InstanceFilter) -> Option<Vec<ServiceInstance>> {
        let services = self.inner.services.lock();
        let cached = services.get(service)?;
        let ns = self.inner.registry.namespace_name();
        let all: Vec<ServiceInstance> =
            cached.instances.iter().map(|c| c.to_instance(ns)).collect();
        Some(filter.apply(&all))
    }

    /// The revision the cached list of `service` is as of.
    pub fn cached_revision(&self, service: &str) -> Option<i64> {
        self.inner.services.lock().get(service).map(|c| c.revision)
    }

    /// Keeps the cached list of `service` fresh through a background
    /// watch (re-subscribing after failures) until this `Discovery` is
    /// dropped. Subscribing twice does nothing.
    ///
    /// # Errors
    /// [`DiscoveryError::InvalidName`].
    pub fn subscribe(&self, service: &str) -> DiscoveryResult<()> {
        check_name("service", service)?;
        if !self.inner.subscribed.lock().insert(service.to_owned()) {
            return Ok(());
        }
        self.inner.env.spawn(follow(
            Arc::downgrade(&self.inner),
            self.inner.registry.clone(),
            self.inner.env.clone(),
            self.inner.config.retry_interval,
            service.to_owned(),
            self.inner.stop.clone(),
        ));
        Ok(())
    }

    /// Whether [`Discovery::subscribe`] was called for `service` (its
    /// cached list is kept fresh by a watch, once the watch's first
    /// snapshot arrived).
    pub fn is_subscribed(&self, service: &str) -> bool {
        self.inner.subscribed.lock().contains(service)
    }

    /// Writes the cache file now (it is also written in the background
    /// after changes).
    ///
    /// # Errors
    /// [`DiscoveryError::Cache`] when the write fails.
    pub fn persist(&self) -> DiscoveryResult<()> {
        persist(&self.inner)
    }

    fn store(&self, service: &str, revision: i64, instances: &[ServiceInstance]) {
        let mut services = self.inner.services.lock();
        let entry = services.entry(service.to_owned()).or_default();
        // A read can race with the watch; never go back in time.
        if revision >= entry.revision {
            entry.revision = revision;
            entry.instances = instances.iter().map(CachedInstance::of).collect();
            self.inner
                .dirty
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

impl RecipeEnv {
    /// `fut` for at most `after` on this clock; `None` when time ran out.
    pub(crate) async fn timeout_any<T>(
        &self,
        after: Duration,
        fut: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let sleep = self.clock().sleep(after).fuse();
        let fut = fut.fuse();
        futures::pin_mut!(sleep, fut);
        futures::select_biased! {
            r = fut => Some(r),
            () = sleep => None,
        }
    }
}

/// Applies a service's changes to the cache until stopped.
async fn follow(
    inner: std::sync::Weak<Inner>,
    registry: Registry,
    env: RecipeEnv,
    retry: Duration,
    service: String,
    stop: CancellationToken,
) {
    loop {
        let mut changes = registry.watch(&service);
        loop {
            let next = futures::select_biased! {
                () = stop.cancelled().fuse() => return,
                n = changes.next().fuse() => n,
            };
            let change = match next {
                Some(Ok(change)) => change,
                Some(Err(e)) => {
                    tracing::debug!(service, error = %e, "service watch failed; re-subscribing");
                    break;
                }
                None => break,
            };
            let Some(inner) = inner.upgrade() else { return };
            let mut services = inner.services.lock();
            let entry = services.entry(service.clone()).or_default();
            let revision = change.revision();
            // A snapshot always replaces; a change older than what a
            // concurrent read stored is already in it.
            let is_snapshot = matches!(change, ServiceChange::Snapshot { .. });
            if is_snapshot || revision > entry.revision {
                let ns = registry.namespace_name();
                let mut list: Vec<ServiceInstance> =
                    entry.instances.iter().map(|c| c.to_instance(ns)).collect();
                list.sort_by(|a, b| a.id.cmp(&b.id));
                change.apply_to(&mut list);
                entry.instances = list.iter().map(CachedInstance::of).collect();
                entry.revision = revision;
                inner
                    .dirty
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
        futures::select_biased! {
            () = stop.cancelled().fuse() => return,
            () = env.clock().sleep(retry).fuse() => {}
        }
    }
}

/// Writes the cache file when it changed, at most every persist interval.
async fn flusher(inner: std::sync::Weak<Inner>, stop: CancellationToken) {
    loop {
        let (env, interval) = match inner.upgrade() {
            Some(i) => (i.env.clone(), i.config.persist_interval),
            None => return,
        };
        futures::select_biased! {
            () = stop.cancelled().fuse() => return,
            () = env.clock().sleep(interval).fuse() => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        if inner.dirty.swap(false, std::sync::atomic::Ordering::AcqRel) {
            if let Err(e) = persist(&inner) {
                inner
                    .dirty
                    .store(true, std::sync::atomic::Ordering::Release);
                tracing::warn!(error = %e, "cannot write the discovery cache file");
            }
        }
    }
}

fn cache_error(path: &Path, e: std::io::Error) -> DiscoveryError {
    DiscoveryError::Cache {
        path: path.to_owned(),
        source: Arc::new(e),
    }
}

fn persist(inner: &Inner) -> DiscoveryResult<()> {
    let Some(path) = &inner.config.cache_file else {
        return Ok(());
    };
    let file = CacheFile {
        v: 1,
        namespace: inner.registry.namespace_name().to_owned(),
        services: inner
            .services
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| cache_error(path, e.into()))?;
    write_atomically(path, &bytes).map_err(|e| cache_error(path, e))
}

/// Writes `bytes` to a temporary file next to `path`, syncs it and renames
/// it over `path`: a reader (or a crash) sees the old file or the new one,
/// never a mix.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename itself is durable once the directory is synced;
        // some platforms cannot open a directory, so this is best effort.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn load(path: &Path, namespace: &str) -> DiscoveryResult<HashMap<String, CachedService>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(cache_error(path, e)),
    };
    let file: CacheFile =
        serde_json::from_slice(&bytes).map_err(|e| cache_error(path, e.into()))?;
    if file.v != 1 {
        return Err(cache_error(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unsupported cache file version {}", file.v),
            ),
        ));
    }
    if file.namespace != namespace {
        return Err(cache_error(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the cache file is of namespace {:?}, not {namespace:?}",
                    file.namespace
                ),
            ),
        ));
    }
    Ok(file.services.into_iter().collect())
}
