//! [`ConfigCenter`]: publish, read, list, history and rollback, grey
//! release — every operation a client of the public KV API.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ha_core::{
    Compare, CompareOp, CompareTarget, DeleteRequest, KeyRange, KvClient, KvOptions, PutRequest,
    RangeRequest, TxnOp, TxnOpResponse, TxnRequest, prefix_end,
};

use crate::config::error::{ConfigCenterError, ConfigResult};
use crate::config::format;
use crate::config::grey::{GreyRule, InstanceReport, Rollout};
use crate::config::model::{
    ConfigEntry, ConfigFormat, ConfigId, ConfigMeta, Keys, Record, RecordMeta, check_part,
    sha256_hex,
};
use crate::config::secret::SecretKey;
use crate::env::RecipeEnv;

/// The default root of the center's keys.
pub const DEFAULT_ROOT: &str = "_config";

/// How many publish attempts lose a race to other publishers before
/// [`ConfigCenterError::Contention`] (default).
const DEFAULT_ATTEMPTS: u32 = 16;

/// How much history each config keeps. A version is dropped when it is
/// older than the newest `max_versions`, or (with `max_age`) when it was
/// published more than `max_age` before the newest; the current version
/// is always kept. Trimming happens in the publish transaction itself, by
/// version number, so every member drops exactly the same keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimit {
    /// Keep at most this many versions (≥ 1; `None`: no count limit).
    pub max_versions: Option<u64>,
    /// Drop versions published longer than this before the newest.
    pub max_age: Option<Duration>,
}

impl Default for HistoryLimit {
    fn default() -> Self {
        HistoryLimit {
            max_versions: Some(100),
            max_age: None,
        }
    }
}

/// Checks content before it is published, after the format check; an
/// error's text is the reason the publish reports. Any
/// `Fn(&ConfigId, ConfigFormat, &[u8]) -> Result<(), String>` is one.
pub trait ConfigValidator: Send + Sync + 'static {
    /// `Ok` to accept `content` for `id`, `Err(reason)` to reject it.
    ///
    /// # Errors
    /// The reason for rejecting.
    fn validate(&self, id: &ConfigId, format: ConfigFormat, content: &[u8]) -> Result<(), String>;
}

impl<F> ConfigValidator for F
where
    F: Fn(&ConfigId, ConfigFormat, &[u8]) -> Result<(), String> + Send + Sync + 'static,
{
    fn validate(&self, id: &ConfigId, format: ConfigFormat, content: &[u8]) -> Result<(), String> {
        self(id, format, content)
    }
}

/// One publish: content in a declared format, a change message, and
/// options.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Publish {
    format: ConfigFormat,
    content: Vec<u8>,
    message: String,
    secret: bool,
    expected_version: Option<u64>,
}

impl Publish {
    /// `content` in `format`.
    pub fn new(format: ConfigFormat, content: impl Into<Vec<u8>>) -> Publish {
        Publish {
            format,
            content: content.into(),
            message: String::new(),
            secret: false,
            expected_version: None,
        }
    }

    /// The change message.
    pub fn message(mut self, message: impl Into<String>) -> Publish {
        self.message = message.into();
        self
    }

    /// Encrypts the content with the center's [`SecretKey`] before it is
    /// proposed.
    pub fn secret(mut self) -> Publish {
        self.secret = true;
        self
    }

    /// Publishes only if the current version is `version` (0: only if the
    /// config does not exist yet) — compare-and-set.
    pub fn expect_version(mut self, version: u64) -> Publish {
        self.expected_version = Some(version);
        self
    }
}

/// A page of [`ConfigCenter::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigPage {
    /// The configs, in id order.
    pub items: Vec<ConfigMeta>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<ConfigId>,
}

/// Configures a [`ConfigCenter`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct ConfigCenterBuilder {
    client: Arc<dyn KvClient>,
    root: String,
    author: String,
    history: HistoryLimit,
    validators: Vec<Arc<dyn ConfigValidator>>,
    secret_key: Option<SecretKey>,
    env: Option<RecipeEnv>,
    wall_clock: Option<SystemTime>,
    attempts: u32,
}

impl fmt::Debug for ConfigCenterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigCenterBuilder")
            .field("root", &self.root)
            .field("author", &self.author)
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

impl ConfigCenterBuilder {
    /// The prefix of every key the center writes (default
    /// [`DEFAULT_ROOT`]); centers with different roots are independent.
    pub fn root(mut self, root: impl Into<String>) -> Self {
        self.root = root.into();
        self
    }

    /// Who publishes through this center (recorded in each version).
    pub fn author(mut self, author: impl Into<String>) -> Self {
        self.author = author.into();
        self
    }

    /// How much history to keep (default: the last 100 versions).
    pub fn history(mut self, history: HistoryLimit) -> Self {
        self.history = history;
        self
    }

    /// Adds a validator run on every publish (after the format check).
    pub fn validator(mut self, validator: impl ConfigValidator) -> Self {
        self.validators.push(Arc::new(validator));
        self
    }

    /// The key for secret configs.
    pub fn secret_key(mut self, key: SecretKey) -> Self {
        self.secret_key = Some(key);
        self
    }

    /// The clock and spawner (default [`RecipeEnv::tokio`]).
    pub fn env(mut self, env: RecipeEnv) -> Self {
        self.env = Some(env);
        self
    }

    /// The wall-clock time that the env's clock reads now (default
    /// `SystemTime::now()`): version timestamps are this plus the env
    /// clock's progress, so a simulator's virtual time gives
    /// deterministic timestamps.
    pub fn wall_clock(mut self, now: SystemTime) -> Self {
        self.wall_clock = Some(now);
        self
    }

    /// Publish attempts lost to concurrent publishers before giving up
    /// (default 16).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// The center.
    ///
    /// # Errors
    /// [`ConfigCenterError::InvalidArgument`] for an empty root, one
    /// ending in `/`, zero `max_versions` or zero attempts;
    /// [`ConfigCenterError::Recipe`] (`NoRuntime`) without an env outside
    /// tokio.
    pub fn build(self) -> ConfigResult<ConfigCenter> {
        if self.root.is_empty() || self.root.ends_with('/') {
            return Err(ConfigCenterError::InvalidArgument {
                reason: format!(
                    "root {:?} must be non-empty, without a trailing '/'",
                    self.root
                ),
            });
        }
        if self.history.max_versions == Some(0) || self.attempts == 0 {
            return Err(ConfigCenterError::InvalidArgument {
                reason: "max_versions and attempts must be at least 1".into(),
            });
        }
        let env = match self.env {
            Some(env) => env,
            None => RecipeEnv::tokio().map_err(ConfigCenterError::from)?,
        };
        let at = env.clock().now();
        Ok(ConfigCenter {
            inner: Arc::new(Inner {
                client: self.client,
                keys: Keys { root: self.root },
                author: self.author,
                history: self.history,
                validators: self.validators,
                secret_key: self.secret_key,
                wall: (self.wall_clock.unwrap_or_else(SystemTime::now), at),
                env,
                attempts: self.attempts,
            }),
        })
    }
}

/// The config center: versioned configs kept in the group's KV.
///
/// Every version is stored twice in one transaction: as the config's
/// current value and as its own history key (so KV compaction never
/// erases history). Content is checked in its declared format and by the
/// validators before anything is written; secrets are encrypted here,
/// before the proposal. Clones share the center.
///
/// Instances read configs through [`crate::TypedConfig`] (hot reload,
/// grey selection, a local cache) or [`ConfigCenter::watch`].
#[derive(Clone)]
pub struct ConfigCenter {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Arc<dyn KvClient>,
    pub(crate) keys: Keys,
    author: String,
    history: HistoryLimit,
    validators: Vec<Arc<dyn ConfigValidator>>,
    pub(crate) secret_key: Option<SecretKey>,
    wall: (SystemTime, Instant),
    pub(crate) env: RecipeEnv,
    attempts: u32,
}

impl fmt::Debug for ConfigCenter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigCenter")
            .field("root", &self.inner.keys.root)
            .field("author", &self.inner.author)
            .field("history", &self.inner.history)
            .field("secret_key", &self.inner.secret_key.is_some())
            .finish_non_exhaustive()
    }
}

/// A config's current and grey records, read together at one revision.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) revision: i64,
    pub(crate) current: Option<Record>,
    pub(crate) grey: Option<Record>,
}

/// Content ready to store: the same for every attempt (a secret's
/// ciphertext is not bound to the version).
struct Draft {
    format: ConfigFormat,
    body: Vec<u8>,
    nonce: Option<String>,
    message: String,
}

/// What a publish takes its content from.
enum Source {
    Draft(Draft),
    /// The grey candidate (promote).
    Grey,
}

impl ConfigCenter {
    /// A center on `client` with the defaults.
    pub fn builder(client: impl KvClient) -> ConfigCenterBuilder {
        ConfigCenter::builder_shared(Arc::new(client))
    }

    /// A center on a shared client.
    pub fn builder_shared(client: Arc<dyn KvClient>) -> ConfigCenterBuilder {
        ConfigCenterBuilder {
            client,
            root: DEFAULT_ROOT.into(),
            author: "unknown".into(),
            history: HistoryLimit::default(),
            validators: Vec::new(),
            secret_key: None,
            env: None,
            wall_clock: None,
            attempts: DEFAULT_ATTEMPTS,
        }
    }

    /// The client underneath.
    pub fn client(&self) -> &Arc<dyn KvClient> {
        &self.inner.client
    }

    /// The clock and spawner.
    pub fn env(&self) -> &RecipeEnv {
        &self.inner.env
    }

    /// Publishes a new version: the content is checked (format, then
    /// validators), encrypted if secret, then written as the current
    /// version and as a history key in one transaction, which also trims
    /// the history.
    ///
    /// # Errors
    /// [`ConfigCenterError::Invalid`] / [`ConfigCenterError::Rejected`]
    /// (nothing written); [`ConfigCenterError::Conflict`] when
    /// [`Publish::expect_version`] does not match;
    /// [`ConfigCenterError::SecretKeyMissing`] for a secret without a key;
    /// [`ConfigCenterError::Contention`]; [`ConfigCenterError::Kv`].
    pub async fn publish(&self, id: &ConfigId, publish: Publish) -> ConfigResult<ConfigMeta> {
        let expected = publish.expected_version;
        let draft = self.draft(id, publish)?;
        self.commit(id, Source::Draft(draft), expected).await
    }

    /// The current version, `None` if the config does not exist.
    ///
    /// # Errors
    /// [`ConfigCenterError::SecretKeyMissing`] / [`ConfigCenterError::Decrypt`]
    /// for a secret; [`ConfigCenterError::Kv`]; [`ConfigCenterError::Corrupt`].
    pub async fn get(&self, id: &ConfigId) -> ConfigResult<Option<ConfigEntry>> {
        let key = self.inner.keys.current(id);
        match self.read_record(&key).await? {
            Some(r) => Ok(Some(self.inner.open(id, &r)?)),
            None => Ok(None),
        }
    }

    /// Version `version` from the history, `None` if never published or
    /// trimmed.
    ///
    /// # Errors
    /// As [`ConfigCenter::get`].
    pub async fn get_version(
        &self,
        id: &ConfigId,
        version: u64,
    ) -> ConfigResult<Option<ConfigEntry>> {
        let key = self.inner.keys.history(id, version);
        match self.read_record(&key).await? {
            Some(r) => Ok(Some(self.inner.open(id, &r)?)),
            None => Ok(None),
        }
    }

    /// Every kept version's metadata, oldest first.
    ///
    /// # Errors
    /// [`ConfigCenterError::Kv`]; [`ConfigCenterError::Corrupt`].
    pub async fn history(&self, id: &ConfigId) -> ConfigResult<Vec<ConfigMeta>> {
        let r = self
            .inner
            .client
            .range(
                RangeRequest::new(KeyRange::prefix(self.inner.keys.history_dir(id))),
                KvOptions::default(),
            )
            .await?;
        r.kvs
            .iter()
            .map(|kv| Record::decode(&kv.key, &kv.value, kv.mod_revision).map(|r| r.to_meta(id)))
            .collect()
    }

    /// Publishes version `version`'s content again, as a new version
    /// ("rollback to vN").
    ///
    /// # Errors
    /// [`ConfigCenterError::VersionNotFound`]; otherwise as
    /// [`ConfigCenter::publish`] (a secret needs the key).
    pub async fn rollback(&self, id: &ConfigId, version: u64) -> ConfigResult<ConfigMeta> {
        let old = self.get_version(id, version).await?.ok_or_else(|| {
            ConfigCenterError::VersionNotFound {
                id: id.clone(),
                version,
            }
        })?;
        let mut publish = Publish::new(old.meta.format, old.content)
            .message(format!("rollback to version {version}"));
        publish.secret = old.meta.secret;
        self.publish(id, publish).await
    }

    /// A unified text diff from version `from` to version `to`.
    ///
    /// # Errors
    /// [`ConfigCenterError::VersionNotFound`]; otherwise as
    /// [`ConfigCenter::get_version`].
    pub async fn diff(&self, id: &ConfigId, from: u64, to: u64) -> ConfigResult<String> {
        let load = |version| async move {
            self.get_version(id, version)
                .await?
                .ok_or_else(|| ConfigCenterError::VersionNotFound {
                    id: id.clone(),
                    version,
                })
        };
        let (a, b) = (load(from).await?, load(to).await?);
        let (a, b) = (a.content_str(), b.content_str());
        Ok(similar::TextDiff::from_lines(a.as_ref(), b.as_ref())
            .unified_diff()
            .header(&format!("{id}@{from}"), &format!("{id}@{to}"))
            .to_string())
    }

    /// Deletes the config: its current version, grey candidate and
    /// history, in one transaction. Returns whether it existed.
    ///
    /// # Errors
    /// [`ConfigCenterError::Kv`].
    pub async fn delete(&self, id: &ConfigId) -> ConfigResult<bool> {
        let keys = &self.inner.keys;
        let r = self
            .inner
            .client
            .txn(
                TxnRequest {
                    compare: vec![],
                    success: vec![
                        TxnOp::Delete(DeleteRequest::new(KeyRange::key(keys.current(id)))),
                        TxnOp::Delete(DeleteRequest::new(KeyRange::key(keys.grey(id)))),
                        TxnOp::Delete(DeleteRequest::new(KeyRange::prefix(keys.history_dir(id)))),
                    ],
                    failure: vec![],
                },
                KvOptions::default(),
            )
            .await?;
        Ok(matches!(r.responses.first(), Some(TxnOpResponse::Delete(d)) if d.deleted > 0))
    }

    /// The configs of `namespace` (of one `group` in it, if given), in id
    /// order, at most `limit` (≥ 1) per page, starting after `after`.
    ///
    /// # Errors
    /// [`ConfigCenterError::InvalidArgument`]; [`ConfigCenterError::Kv`];
    /// [`ConfigCenterError::Corrupt`].
    pub async fn list(
        &self,
        namespace: &str,
        group: Option<&str>,
        after: Option<&ConfigId>,
        limit: usize,
    ) -> ConfigResult<ConfigPage> {
        check_part("namespace", namespace)?;
        if let Some(g) = group {
            check_part("group", g)?;
        }
        if limit == 0 {
            return Err(ConfigCenterError::InvalidArgument {
                reason: "a page holds at least one config".into(),
            });
        }
        let keys = &self.inner.keys;
        let prefix = keys.list_dir(namespace, group).into_bytes();
        let start = match after {
            // Past every key of `after` (its `cur` and `grey`).
            Some(a) => {
                let mut s = keys.dir(a).into_bytes();
                s.push(0xff);
                s.max(prefix.clone())
            }
            None => prefix.clone(),
        };
        let range = match prefix_end(&prefix) {
            Some(end) => KeyRange::range(start, end),
            None => KeyRange::From(start),
        };
        let mut request = RangeRequest::new(range);
        // Two keys per config at most (current, grey), plus one to see
        // whether another page follows.
        request.limit =
            u64::try_from(limit.saturating_mul(2).saturating_add(1)).unwrap_or(u64::MAX);
        let r = self
            .inner
            .client
            .range(request, KvOptions::default())
            .await?;
        let mut items = Vec::new();
        for kv in &r.kvs {
            if let Some(id) = keys.id_of_current(&kv.key) {
                items.push(Record::decode(&kv.key, &kv.value, kv.mod_revision)?.to_meta(&id));
            }
        }
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|m| m.id.clone())
        } else if r.more {
            items.last().map(|m| m.id.clone())
        } else {
            None
        };
        Ok(ConfigPage { items, next })
    }

    /// Publishes a grey candidate: instances `rule` selects run it, the
    /// others keep the stable version, until [`ConfigCenter::promote`] or
    /// [`ConfigCenter::abort`]. Replaces a candidate in progress. The
    /// content is checked as for [`ConfigCenter::publish`]; with
    /// [`Publish::expect_version`], the STABLE version must match.
    ///
    /// # Errors
    /// [`ConfigCenterError::NotFound`] without a stable version; otherwise
    /// as [`ConfigCenter::publish`].
    pub async fn publish_grey(
        &self,
        id: &ConfigId,
        publish: Publish,
        rule: GreyRule,
    ) -> ConfigResult<ConfigMeta> {
        let expected = publish.expected_version;
        let draft = self.draft(id, publish)?;
        for _ in 0..self.inner.attempts {
            let snap = self.snapshot(id).await?;
            let Some(current) = &snap.current else {
                return Err(ConfigCenterError::NotFound { id: id.clone() });
            };
            if let Some(e) = expected {
                if e != current.meta.version {
                    return Err(ConfigCenterError::Conflict {
                        id: id.clone(),
                        expected: e,
                        current: current.meta.version,
                    });
                }
            }
            let record = Record {
                meta: RecordMeta {
                    version: current.meta.version + 1,
                    format: draft.format,
                    hash: sha256_hex(&draft.body),
                    author: self.inner.author.clone(),
                    timestamp_ms: self.inner.now_ms(),
                    message: draft.message.clone(),
                    nonce: draft.nonce.clone(),
                    grey: Some(rule.clone()),
                },
                body: draft.body.clone(),
                revision: 0,
            };
            let key = self.inner.keys.current(id);
            let r = self
                .inner
                .client
                .txn(
                    TxnRequest {
                        compare: vec![Compare::key(
                            key,
                            CompareOp::Equal,
                            CompareTarget::ModRevision(current.revision),
                        )],
                        success: vec![TxnOp::Put(PutRequest::new(
                            self.inner.keys.grey(id),
                            record.encode(),
                        ))],
                        failure: vec![],
                    },
                    KvOptions::default(),
                )
                .await?;
            if r.succeeded {
                return Ok(Record {
                    revision: r.header.revision,
                    ..record
                }
                .to_meta(id));
            }
        }
        Err(ConfigCenterError::Contention {
            id: id.clone(),
            attempts: self.inner.attempts,
        })
    }

    /// Makes the grey candidate the stable version for everyone: a new
    /// version with the candidate's content, and the candidate removed,
    /// in one transaction. Needs no key for a secret (the ciphertext is
    /// carried over).
    ///
    /// # Errors
    /// [`ConfigCenterError::NoGrey`]; [`ConfigCenterError::Contention`];
    /// [`ConfigCenterError::Kv`].
    pub async fn promote(&self, id: &ConfigId) -> ConfigResult<ConfigMeta> {
        self.commit(id, Source::Grey, None).await
    }

    /// Ends a grey release: every instance returns to the stable version.
    ///
    /// # Errors
    /// [`ConfigCenterError::NoGrey`]; [`ConfigCenterError::Kv`].
    pub async fn abort(&self, id: &ConfigId) -> ConfigResult<()> {
        let r = self
            .inner
            .client
            .delete(
                DeleteRequest::new(KeyRange::key(self.inner.keys.grey(id))),
                KvOptions::default(),
            )
            .await?;
        if r.deleted == 0 {
            return Err(ConfigCenterError::NoGrey { id: id.clone() });
        }
        Ok(())
    }

    /// The rollout of a config: stable version, grey candidate, and the
    /// version every live instance reports it runs — read at one revision.
    ///
    /// # Errors
    /// [`ConfigCenterError::Kv`]; [`ConfigCenterError::Corrupt`].
    pub async fn rollout(&self, id: &ConfigId) -> ConfigResult<Rollout> {
        let keys = &self.inner.keys;
        let r = self
            .inner
            .client
            .txn(
                TxnRequest {
                    compare: vec![],
                    success: vec![
                        TxnOp::Range(RangeRequest::new(KeyRange::prefix(keys.dir(id)))),
                        TxnOp::Range(RangeRequest::new(KeyRange::prefix(keys.report_dir(id)))),
                    ],
                    failure: vec![],
                },
                KvOptions::default(),
            )
            .await?;
        let mut ranges = r.responses.into_iter().filter_map(|op| match op {
            TxnOpResponse::Range(r) => Some(r),
            _ => None,
        });
        let (Some(configs), Some(reports)) = (ranges.next(), ranges.next()) else {
            return Err(ConfigCenterError::Corrupt {
                key: keys.dir(id),
                reason: "the rollout read returned fewer ranges than asked".into(),
            });
        };
        let snap = self
            .inner
            .snapshot_of(id, r.header.revision, &configs.kvs)?;
        let mut instances = Vec::new();
        for kv in &reports.kvs {
            let report: InstanceReport =
                serde_json::from_slice(&kv.value).map_err(|e| ConfigCenterError::Corrupt {
                    key: String::from_utf8_lossy(&kv.key).into_owned(),
                    reason: e.to_string(),
                })?;
            instances.push(report);
        }
        Ok(Rollout {
            stable: snap.current.as_ref().map(|r| r.to_meta(id)),
            candidate: snap
                .grey
                .as_ref()
                .map(|r| (r.to_meta(id), r.meta.grey.clone().unwrap_or_default())),
            instances,
        })
    }

    /// The current and grey records of `id`, read at one revision.
    pub(crate) async fn snapshot(&self, id: &ConfigId) -> ConfigResult<Snapshot> {
        self.snapshot_with(id, KvOptions::default()).await
    }

    pub(crate) async fn snapshot_with(
        &self,
        id: &ConfigId,
        options: KvOptions,
    ) -> ConfigResult<Snapshot> {
        let r = self
            .inner
            .client
            .range(
                RangeRequest::new(KeyRange::prefix(self.inner.keys.dir(id))),
                options,
            )
            .await?;
        self.inner.snapshot_of(id, r.header.revision, &r.kvs)
    }

    async fn read_record(&self, key: &str) -> ConfigResult<Option<Record>> {
        let kv = self
            .inner
            .client
            .get(key.as_bytes().to_vec(), KvOptions::default())
            .await?;
        kv.map(|kv| Record::decode(&kv.key, &kv.value, kv.mod_revision))
            .transpose()
    }

    /// Checks and (for a secret) encrypts the content.
    fn draft(&self, id: &ConfigId, publish: Publish) -> ConfigResult<Draft> {
        format::validate(publish.format, &publish.content).map_err(|reason| {
            ConfigCenterError::Invalid {
                id: id.clone(),
                format: publish.format,
                reason,
            }
        })?;
        for v in &self.inner.validators {
            v.validate(id, publish.format, &publish.content)
                .map_err(|reason| ConfigCenterError::Rejected {
                    id: id.clone(),
                    reason,
                })?;
        }
        let (body, nonce) = if publish.secret {
            let key = self
                .inner
                .secret_key
                .as_ref()
                .ok_or_else(|| ConfigCenterError::SecretKeyMissing { id: id.clone() })?;
            let (nonce, ciphertext) = key.encrypt(id, &publish.content).ok_or_else(|| {
                ConfigCenterError::InvalidArgument {
                    reason: "content too large to encrypt".into(),
                }
            })?;
            (ciphertext, Some(nonce))
        } else {
            (publish.content, None)
        };
        Ok(Draft {
            format: publish.format,
            body,
            nonce,
            message: publish.message,
        })
    }

    /// Writes the next version: compare-and-set on the current key (and
    /// the grey key when promoting), retried when another publisher won
    /// and no version was expected.
    async fn commit(
        &self,
        id: &ConfigId,
        source: Source,
        expected: Option<u64>,
    ) -> ConfigResult<ConfigMeta> {
        let keys = &self.inner.keys;
        for _ in 0..self.inner.attempts {
            let snap = self.snapshot(id).await?;
            let current = snap.current.as_ref().map_or(0, |r| r.meta.version);
            if let Some(e) = expected {
                if e != current {
                    return Err(ConfigCenterError::Conflict {
                        id: id.clone(),
                        expected: e,
                        current,
                    });
                }
            }
            let mut compare = vec![Compare::key(
                keys.current(id),
                CompareOp::Equal,
                CompareTarget::ModRevision(snap.current.as_ref().map_or(0, |r| r.revision)),
            )];
            let mut success = Vec::new();
            let (format, body, nonce, message) = match &source {
                Source::Draft(d) => (d.format, d.body.clone(), d.nonce.clone(), d.message.clone()),
                Source::Grey => {
                    let grey = snap
                        .grey
                        .as_ref()
                        .ok_or_else(|| ConfigCenterError::NoGrey { id: id.clone() })?;
                    compare.push(Compare::key(
                        keys.grey(id),
                        CompareOp::Equal,
                        CompareTarget::ModRevision(grey.revision),
                    ));
                    success.push(TxnOp::Delete(DeleteRequest::new(KeyRange::key(
                        keys.grey(id),
                    ))));
                    (
                        grey.meta.format,
                        grey.body.clone(),
                        grey.meta.nonce.clone(),
                        grey.meta.message.clone(),
                    )
                }
            };
            let version = current + 1;
            let now_ms = self.inner.now_ms();
            let record = Record {
                meta: RecordMeta {
                    version,
                    format,
                    hash: sha256_hex(&body),
                    author: self.inner.author.clone(),
                    timestamp_ms: now_ms,
                    message,
                    nonce,
                    grey: None,
                },
                body,
                revision: 0,
            };
            let floor = self.trim_floor(id, version, now_ms).await?;
            let value = record.encode();
            success.push(TxnOp::Put(PutRequest::new(keys.current(id), value.clone())));
            success.push(TxnOp::Put(PutRequest::new(
                keys.history(id, version),
                value,
            )));
            if floor > 1 {
                success.push(TxnOp::Delete(DeleteRequest::new(KeyRange::range(
                    keys.history_dir(id),
                    keys.history(id, floor),
                ))));
            }
            let r = self
                .inner
                .client
                .txn(
                    TxnRequest {
                        compare,
                        success,
                        failure: vec![],
                    },
                    KvOptions::default(),
                )
                .await?;
            if r.succeeded {
                return Ok(Record {
                    revision: r.header.revision,
                    ..record
                }
                .to_meta(id));
            }
            if let Some(e) = expected {
                let now = self.snapshot(id).await?;
                return Err(ConfigCenterError::Conflict {
                    id: id.clone(),
                    expected: e,
                    current: now.current.map_or(0, |r| r.meta.version),
                });
            }
        }
        Err(ConfigCenterError::Contention {
            id: id.clone(),
            attempts: self.inner.attempts,
        })
    }

    /// The lowest version to keep once `version` is published at
    /// `now_ms`.
    async fn trim_floor(&self, id: &ConfigId, version: u64, now_ms: u64) -> ConfigResult<u64> {
        let limit = self.inner.history;
        let mut floor = match limit.max_versions {
            Some(n) => version.saturating_sub(n - 1).max(1),
            None => 1,
        };
        if let Some(max_age) = limit.max_age {
            let keys = &self.inner.keys;
            let r = self
                .inner
                .client
                .range(
                    RangeRequest::new(KeyRange::range(
                        keys.history(id, floor),
                        keys.history(id, version),
                    )),
                    KvOptions::default(),
                )
                .await?;
            let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
            for kv in &r.kvs {
                let old = Record::decode(&kv.key, &kv.value, kv.mod_revision)?;
                if old.meta.timestamp_ms.saturating_add(max_age_ms) >= now_ms {
                    break;
                }
                floor = old.meta.version + 1;
            }
        }
        Ok(floor.min(version))
    }
}

impl Inner {
    /// Milliseconds since the Unix epoch by the env's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        let (base, at) = self.wall;
        let now = base + self.env.clock().now().saturating_duration_since(at);
        now.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// The content of `record`, decrypted if secret.
    pub(crate) fn open(&self, id: &ConfigId, record: &Record) -> ConfigResult<ConfigEntry> {
        let content = self.plaintext(id, record)?;
        Ok(ConfigEntry {
            meta: record.to_meta(id),
            content,
        })
    }

    pub(crate) fn plaintext(&self, id: &ConfigId, record: &Record) -> ConfigResult<Vec<u8>> {
        match &record.meta.nonce {
            None => Ok(record.body.clone()),
            Some(nonce) => {
                let key = self
                    .secret_key
                    .as_ref()
                    .ok_or_else(|| ConfigCenterError::SecretKeyMissing { id: id.clone() })?;
                key.decrypt(id, nonce, &record.body)
                    .ok_or_else(|| ConfigCenterError::Decrypt {
                        id: id.clone(),
                        version: record.meta.version,
                    })
            }
        }
    }

    pub(crate) fn snapshot_of(
        &self,
        id: &ConfigId,
        revision: i64,
        kvs: &[ha_core::KeyValue],
    ) -> ConfigResult<Snapshot> {
        let (current, grey) = (self.keys.current(id), self.keys.grey(id));
        let mut snap = Snapshot {
            revision,
            ..Snapshot::default()
        };
        for kv in kvs {
            if kv.key == current.as_bytes() {
                snap.current = Some(Record::decode(&kv.key, &kv.value, kv.mod_revision)?);
            } else if kv.key == grey.as_bytes() {
                snap.grey = Some(Record::decode(&kv.key, &kv.value, kv.mod_revision)?);
            }
        }
        Ok(snap)
    }
}
