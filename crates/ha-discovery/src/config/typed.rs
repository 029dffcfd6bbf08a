//! [`TypedConfig`]: a config deserialized into the application's type,
//! reloaded on every change, with grey selection, version reports and a
//! local cache.

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::{FutureExt, StreamExt};
use ha_core::{Error, EventKind, KeyRange, KvOptions, WatchRequest};
use parking_lot::Mutex as SyncMutex;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::cache::DiskCache;
use crate::config::center::{ConfigCenter, Snapshot};
use crate::config::error::{ConfigCenterError, ConfigResult};
use crate::config::format;
use crate::config::grey::{ConfigInstance, InstanceReport};
use crate::config::model::{ConfigId, Record, check_part};
use crate::session::Session;

/// The default deadline of the first read at start.
const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between reconnection attempts.
const MAX_RETRY: Duration = Duration::from_secs(1);

/// Where the running value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// Read from the group.
    Group,
    /// Read from the local cache: the group was unreachable at start (or
    /// its version did not deserialize), and has not answered since.
    Cache,
}

/// What a [`TypedConfig`] runs, and how its last reload went.
#[derive(Clone, Debug)]
pub struct ConfigStatus {
    /// The version running.
    pub version: u64,
    /// True when that is a grey candidate.
    pub grey: bool,
    /// Its content hash.
    pub content_hash: String,
    /// Where it came from.
    pub source: ConfigSource,
    /// The newest version that failed to load (did not deserialize or
    /// decrypt), while the last good value stays in use.
    pub failed_version: Option<u64>,
    /// Why it failed, or why the group cannot be followed now (the config
    /// was deleted: `NotFound`; the client stopped: `Kv(Shutdown)`).
    pub last_error: Option<ConfigCenterError>,
}

type Callback<T> = Arc<dyn Fn(&Arc<T>, &ConfigStatus) + Send + Sync>;

/// Configures and starts a [`TypedConfig`].
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct TypedConfigBuilder<T> {
    center: ConfigCenter,
    id: ConfigId,
    instance: Option<ConfigInstance>,
    session: Option<Session>,
    cache_dir: Option<PathBuf>,
    startup_timeout: Duration,
    _value: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for TypedConfigBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedConfigBuilder")
            .field("id", &self.id)
            .field("instance", &self.instance)
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> TypedConfigBuilder<T> {
    /// This instance's identity: grey rules select by it. Without one the
    /// config always runs the stable version.
    pub fn instance(mut self, instance: ConfigInstance) -> Self {
        self.instance = Some(instance);
        self
    }

    /// Reports the version running under this session's lease (needs an
    /// [`TypedConfigBuilder::instance`]); [`ConfigCenter::rollout`] lists
    /// the reports, which vanish with the session.
    pub fn report_through(mut self, session: Session) -> Self {
        self.session = Some(session);
        self
    }

    /// Keeps the last version run in this directory, and starts from it
    /// when the group is unreachable.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// The deadline of the first read from the group (default 5 s); past
    /// it, the cache is used.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Reads the config (from the group, or the cache if the group does
    /// not answer in time), deserializes it, and starts following it.
    ///
    /// # Errors
    /// [`ConfigCenterError::NotFound`] when the group has no such config;
    /// [`ConfigCenterError::Deserialize`] / [`ConfigCenterError::Decrypt`] /
    /// [`ConfigCenterError::SecretKeyMissing`] when its version does not
    /// load and no cached one does; [`ConfigCenterError::Kv`] when the
    /// group is unreachable and there is no usable cache.
    pub async fn start(self) -> ConfigResult<TypedConfig<T>> {
        if let Some(i) = &self.instance {
            check_part("instance id", &i.id)?;
        }
        let cache = self
            .cache_dir
            .as_ref()
            .map(|d| DiskCache::new(d, &self.center.inner.keys.root, &self.id));
        let follower = Follower::<T> {
            center: self.center.clone(),
            id: self.id.clone(),
            instance: self.instance,
            session: self.session,
            cache,
            current: None,
            grey: None,
            revision: 0,
            _value: PhantomData,
        };
        let options = KvOptions::default().with_timeout(self.startup_timeout);
        let (value, status, snapshot) = match self.center.snapshot_with(&self.id, options).await {
            Ok(snap) => {
                let Some(record) = follower.effective(&snap.current, &snap.grey) else {
                    return Err(ConfigCenterError::NotFound { id: self.id });
                };
                match follower.load(record) {
                    Ok(value) => {
                        let status = status_of(record, ConfigSource::Group);
                        follower.store_cache(record);
                        (value, status, Some(snap))
                    }
                    Err(e) => {
                        let failed = record.meta.version;
                        let (value, mut status) = follower.cached_value().ok_or(e.clone())?;
                        tracing::warn!(id = %self.id, version = failed, error = %e,
                            "config version does not load; running on the cached one");
                        status.failed_version = Some(failed);
                        status.last_error = Some(e);
                        (value, status, Some(snap))
                    }
                }
            }
            Err(ConfigCenterError::Kv(e)) => {
                let (value, mut status) = follower
                    .cached_value()
                    .ok_or(ConfigCenterError::Kv(e.clone()))?;
                tracing::warn!(id = %self.id, error = %e,
                    "group unreachable; running on cached config version {}", status.version);
                status.last_error = Some(ConfigCenterError::Kv(e));
                (value, status, None)
            }
            Err(e) => return Err(e),
        };
        let (status_tx, _) = watch::channel(status);
        let shared = Arc::new(Shared {
            value: ArcSwap::from_pointee(value),
            status: status_tx,
            callbacks: SyncMutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        let env = self.center.inner.env.clone();
        env.spawn(follower.run(shared.clone(), snapshot, stop.clone()));
        Ok(TypedConfig {
            id: self.id,
            shared,
            clock: env.clock().clone(),
            _stop: Arc::new(stop.drop_guard()),
        })
    }
}

/// A config deserialized into `T`, kept current.
///
/// Reads are cheap ([`TypedConfig::get`] is an `Arc` load from an
/// `arc-swap`). In the background it follows the config (one KV watch on
/// its current and grey keys): each new version is decrypted if secret,
/// deserialized, and swapped in; the change callbacks run; the version is
/// written to the local cache and reported. A version that does not
/// deserialize leaves the last good value in place and is reported in
/// [`ConfigStatus::failed_version`] / `last_error`. With an
/// [`TypedConfigBuilder::instance`], a grey candidate whose rule selects
/// the instance is run instead of the stable version.
///
/// Clones share the value; when the last clone is dropped, following
/// stops.
pub struct TypedConfig<T> {
    id: ConfigId,
    shared: Arc<Shared<T>>,
    clock: Arc<dyn ha_core::Clock>,
    _stop: Arc<tokio_util::sync::DropGuard>,
}

impl<T> Clone for TypedConfig<T> {
    fn clone(&self) -> Self {
        TypedConfig {
            id: self.id.clone(),
            shared: self.shared.clone(),
            clock: self.clock.clone(),
            _stop: self._stop.clone(),
        }
    }
}

impl<T> fmt::Debug for TypedConfig<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedConfig")
            .field("id", &self.id)
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

struct Shared<T> {
    value: ArcSwap<T>,
    status: watch::Sender<ConfigStatus>,
    callbacks: SyncMutex<Vec<Callback<T>>>,
}

impl<T: DeserializeOwned + Send + Sync + 'static> TypedConfig<T> {
    /// Configures a typed config for `id` on `center`.
    pub fn builder(center: &ConfigCenter, id: ConfigId) -> TypedConfigBuilder<T> {
        TypedConfigBuilder {
            center: center.clone(),
            id,
            instance: None,
            session: None,
            cache_dir: None,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            _value: PhantomData,
        }
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.shared.value.load_full()
    }

    /// What runs now and how the last reload went.
    pub fn status(&self) -> ConfigStatus {
        self.shared.status.borrow().clone()
    }

    /// True while running on the local cache.
    pub fn is_cached(&self) -> bool {
        self.shared.status.borrow().source == ConfigSource::Cache
    }

    /// Status changes, as a `watch` receiver.
    pub fn subscribe(&self) -> watch::Receiver<ConfigStatus> {
        self.shared.status.subscribe()
    }

    /// Runs `callback` after each successful reload, with the new value
    /// and status, before [`TypedConfig::status`] shows the new version
    /// (on the background task: keep it short).
    pub fn on_change(&self, callback: impl Fn(&Arc<T>, &ConfigStatus) + Send + Sync + 'static) {
        self.shared.callbacks.lock().push(Arc::new(callback));
    }

    /// Waits until the status satisfies `pred`, for at most `timeout` on
    /// the center's clock; returns that status.
    ///
    /// # Errors
    /// [`ConfigCenterError::Recipe`] (`Timeout`) when it did not.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&ConfigStatus) -> bool,
    ) -> ConfigResult<ConfigStatus> {
        let mut rx = self.subscribe();
        let wait = async move {
            loop {
                {
                    let s = rx.borrow_and_update();
                    if pred(&s) {
                        return s.clone();
                    }
                }
                if rx.changed().await.is_err() {
                    // The sender lives in `Shared`, which `self` holds:
                    // never closed while we wait.
                    futures::future::pending::<()>().await;
                }
            }
        };
        let clock = self.clock.clone();
        futures::select_biased! {
            s = wait.fuse() => Ok(s),
            () = clock.sleep(timeout).fuse() => Err(crate::RecipeError::Timeout { after: timeout }.into()),
        }
    }
}

fn status_of(record: &Record, source: ConfigSource) -> ConfigStatus {
    ConfigStatus {
        version: record.meta.version,
        grey: record.meta.grey.is_some(),
        content_hash: record.meta.hash.clone(),
        source,
        failed_version: None,
        last_error: None,
    }
}

/// The background side of a [`TypedConfig`].
struct Follower<T> {
    center: ConfigCenter,
    id: ConfigId,
    instance: Option<ConfigInstance>,
    session: Option<Session>,
    cache: Option<DiskCache>,
    /// The stable and grey records as of `revision`.
    current: Option<Record>,
    grey: Option<Record>,
    revision: i64,
    _value: PhantomData<fn() -> T>,
}

fn is_terminal(e: &ConfigCenterError) -> bool {
    matches!(
        e,
        ConfigCenterError::Kv(Error::Shutdown | Error::Fatal { .. } | Error::Removed { .. })
    )
}

/// Why following stopped for a while.
enum Next {
    Rewatch,
    Resnapshot,
    Stop,
}

impl<T: DeserializeOwned + Send + Sync + 'static> Follower<T> {
    /// The record this instance runs: the grey candidate if its rule
    /// selects the instance, else the stable version.
    fn effective<'a>(
        &self,
        current: &'a Option<Record>,
        grey: &'a Option<Record>,
    ) -> Option<&'a Record> {
        let selected = |g: &&Record| {
            let rule = g.meta.grey.as_ref();
            match (rule, &self.instance) {
                (Some(rule), Some(instance)) => rule.selects(&self.id, instance),
                _ => false,
            }
        };
        grey.as_ref().filter(selected).or(current.as_ref())
    }

    fn load(&self, record: &Record) -> ConfigResult<T> {
        let content = self.center.inner.plaintext(&self.id, record)?;
        format::deserialize(record.meta.format, &content).map_err(|reason| {
            ConfigCenterError::Deserialize {
                id: self.id.clone(),
                version: record.meta.version,
                reason,
            }
        })
    }

    /// The cached value, if there is a cache that loads.
    fn cached_value(&self) -> Option<(T, ConfigStatus)> {
        let cache = self.cache.as_ref()?;
        let record = match cache.load() {
            Ok(r) => r?,
            Err(e) => {
                tracing::warn!(id = %self.id, error = %e, "config cache unusable");
                return None;
            }
        };
        match self.load(&record) {
            Ok(value) => Some((value, status_of(&record, ConfigSource::Cache))),
            Err(e) => {
                tracing::warn!(id = %self.id, error = %e, "cached config does not load");
                None
            }
        }
    }

    fn store_cache(&self, record: &Record) {
        if let Some(cache) = &self.cache {
            if let Err(e) = cache.store(record) {
                tracing::warn!(id = %self.id, error = %e, "config cache not written");
            }
        }
    }

    /// Writes this instance's report (session-bound), if it has one.
    async fn report(&self, shared: &Shared<T>) {
        let (Some(session), Some(instance)) = (&self.session, &self.instance) else {
            return;
        };
        let report = {
            let s = shared.status.borrow();
            InstanceReport {
                instance: instance.id.clone(),
                version: s.version,
                grey: s.grey,
                content_hash: s.content_hash.clone(),
                cached: s.source == ConfigSource::Cache,
                failed_version: s.failed_version,
            }
        };
        let key = self.center.inner.keys.report(&self.id, &instance.id);
        let value = serde_json::to_vec(&report).unwrap_or_default();
        let request = ha_core::PutRequest {
            lease: session.lease(),
            ..ha_core::PutRequest::new(key, value)
        };
        // A short deadline: a report must not hold up reloads when the
        // group is slow; the next change reports again.
        let options = KvOptions::default().with_timeout(Duration::from_secs(2));
        if let Err(e) = self.center.inner.client.put(request, options).await {
            tracing::debug!(id = %self.id, error = %e, "config version report failed");
        }
    }

    /// Runs what the current records select, if it is not running yet.
    async fn apply(&self, shared: &Shared<T>) {
        let Some(record) = self.effective(&self.current, &self.grey) else {
            shared.status.send_modify(|s| {
                s.last_error = Some(ConfigCenterError::NotFound {
                    id: self.id.clone(),
                });
            });
            return;
        };
        let (running, source) = {
            let s = shared.status.borrow();
            ((s.version, s.grey, s.content_hash.clone()), s.source)
        };
        let wanted = (
            record.meta.version,
            record.meta.grey.is_some(),
            record.meta.hash.clone(),
        );
        if running == wanted {
            if source == ConfigSource::Cache {
                shared.status.send_modify(|s| {
                    s.source = ConfigSource::Group;
                    s.last_error = None;
                });
                self.report(shared).await;
            }
            return;
        }
        match self.load(record) {
            Ok(value) => {
                let value = Arc::new(value);
                shared.value.store(value.clone());
                let status = status_of(record, ConfigSource::Group);
                self.store_cache(record);
                // Callbacks first, then the status: whoever waits on the
                // status sees the callbacks done.
                let callbacks = shared.callbacks.lock().clone();
                for callback in callbacks {
                    callback(&value, &status);
                }
                shared.status.send_replace(status);
            }
            Err(e) => {
                tracing::warn!(id = %self.id, version = record.meta.version, error = %e,
                    "config version does not load; keeping the last good value");
                shared.status.send_modify(|s| {
                    s.failed_version = Some(record.meta.version);
                    s.last_error = Some(e);
                });
            }
        }
        self.report(shared).await;
    }

    fn fail(&self, shared: &Shared<T>, e: ConfigCenterError) {
        tracing::warn!(id = %self.id, error = %e, "config no longer followed");
        shared.status.send_modify(|s| s.last_error = Some(e));
    }

    async fn run(
        mut self,
        shared: Arc<Shared<T>>,
        snapshot: Option<Snapshot>,
        stop: CancellationToken,
    ) {
        let clock = self.center.inner.env.clock().clone();
        let mut backoff = Duration::from_millis(50);
        let mut need_snapshot = true;
        if let Some(s) = snapshot {
            self.current = s.current;
            self.grey = s.grey;
            self.revision = s.revision;
            need_snapshot = false;
        }
        self.report(&shared).await;
        loop {
            let next = if need_snapshot {
                let read = futures::select_biased! {
                    () = stop.cancelled().fuse() => return,
                    r = self.center.snapshot(&self.id).fuse() => r,
                };
                match read {
                    Ok(s) => {
                        self.current = s.current;
                        self.grey = s.grey;
                        self.revision = s.revision;
                        need_snapshot = false;
                        backoff = Duration::from_millis(50);
                        self.apply(&shared).await;
                        continue;
                    }
                    Err(e) if is_terminal(&e) => Next::Stop,
                    Err(e) => {
                        tracing::debug!(id = %self.id, error = %e, "config read failed; retrying");
                        Next::Resnapshot
                    }
                }
            } else {
                let request =
                    WatchRequest::new(KeyRange::prefix(self.center.inner.keys.dir(&self.id)))
                        .from_revision(self.revision + 1);
                let watch = futures::select_biased! {
                    () = stop.cancelled().fuse() => return,
                    w = self.center.inner.client.watch(request).fuse() => w,
                };
                match watch {
                    Ok(stream) => {
                        backoff = Duration::from_millis(50);
                        self.follow(&shared, stream, &stop).await
                    }
                    Err(Error::Compacted { .. }) => Next::Resnapshot,
                    Err(e) => {
                        let e = ConfigCenterError::Kv(e);
                        if is_terminal(&e) {
                            self.fail(&shared, e);
                            return;
                        }
                        Next::Rewatch
                    }
                }
            };
            match next {
                Next::Stop => return,
                Next::Resnapshot => need_snapshot = true,
                Next::Rewatch => {}
            }
            futures::select_biased! {
                () = stop.cancelled().fuse() => return,
                () = clock.sleep(backoff).fuse() => {}
            }
            backoff = (backoff * 2).min(MAX_RETRY);
        }
    }

    async fn follow(
        &mut self,
        shared: &Shared<T>,
        mut stream: ha_core::WatchStream,
        stop: &CancellationToken,
    ) -> Next {
        let (current_key, grey_key) = (
            self.center.inner.keys.current(&self.id),
            self.center.inner.keys.grey(&self.id),
        );
        loop {
            let item = futures::select_biased! {
                () = stop.cancelled().fuse() => return Next::Stop,
                item = stream.next().fuse() => item,
            };
            match item {
                Some(Ok(response)) => {
                    for event in &response.events {
                        let record = match event.kind {
                            EventKind::Delete => None,
                            EventKind::Put => match Record::decode(
                                &event.kv.key,
                                &event.kv.value,
                                event.kv.mod_revision,
                            ) {
                                Ok(r) => Some(r),
                                Err(e) => {
                                    self.fail(shared, e);
                                    continue;
                                }
                            },
                        };
                        if event.kv.key == current_key.as_bytes() {
                            self.current = record;
                        } else if event.kv.key == grey_key.as_bytes() {
                            self.grey = record;
                        }
                    }
                    self.revision = self.revision.max(response.header.revision);
                    if !response.events.is_empty() {
                        self.apply(shared).await;
                    }
                }
                Some(Err(Error::WatchCancelled {
                    resume_revision, ..
                })) => {
                    self.revision = self.revision.max(resume_revision - 1);
                    return Next::Rewatch;
                }
                Some(Err(Error::Compacted { .. })) => return Next::Resnapshot,
                Some(Err(e)) => {
                    let e = ConfigCenterError::Kv(e);
                    if is_terminal(&e) {
                        self.fail(shared, e);
                        return Next::Stop;
                    }
                    return Next::Rewatch;
                }
                None => return Next::Rewatch,
            }
        }
    }
}
