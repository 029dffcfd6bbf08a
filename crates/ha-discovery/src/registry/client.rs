//! The registry: register, update and deregister instances, read them
//! back, watch a service.

use std::fmt;
use std::sync::Arc;

use futures::stream::BoxStream;
use ha_core::{
    Compare, CompareOp, CompareTarget, DeleteRequest, KeyRange, KvClient, KvOptions, LeaseId,
    PutRequest, RangeRequest, TxnOp, TxnRequest,
};

use super::error::{DiscoveryError, DiscoveryResult};
use super::filter::InstanceFilter;
use super::instance::{
    DEFAULT_NAMESPACE, ServiceInstance, check_name, heartbeat_key, instance_key, service_prefix,
};
use super::watch::{ServiceChange, ServiceWatcher};
use crate::session::Session;

/// How many times a read-modify-write is retried when the instance keeps
/// changing under it.
const UPDATE_ATTEMPTS: usize = 16;

/// The service registry of one namespace, on a [`KvClient`].
///
/// Ephemeral instances ([`Registry::register_ephemeral`]) are bound to a
/// [`Session`]: they disappear when its lease ends (the process died or was
/// cut off past the TTL) or on [`Session::close`]. Persistent instances
/// ([`Registry::register_persistent`]) stay until
/// [`Registry::deregister`], and are meant to carry an active
/// [`crate::HealthCheck`].
///
/// ```
/// # use std::sync::Arc;
/// # use ha_discovery::*;
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let id = NodeId(1);
/// # let network = MemNetwork::new();
/// # let kv = KvNode::start(Config::new(id, vec![id]), KvConfig::default(),
/// #     Arc::new(MemLogStore::new()), Arc::new(MemStateStore::new()),
/// #     network.transport(id)).await?;
/// let registry = Registry::new(Arc::new(kv.clone())).namespace("prod")?;
/// let session = Session::new(kv.clone()).await?;
/// registry
///     .register_ephemeral(&session, &ServiceInstance::new("orders", "o-1", "10.0.0.1", 8080))
///     .await?;
/// let found = registry.instances("orders", &InstanceFilter::new()).await?;
/// assert_eq!(found[0].endpoint(), "10.0.0.1:8080");
/// session.close().await?; // the instance goes with the session
/// assert!(registry.instances("orders", &InstanceFilter::new()).await?.is_empty());
/// # kv.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Registry {
    client: Arc<dyn KvClient>,
    namespace: String,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// The registry of the default namespace ([`DEFAULT_NAMESPACE`]).
    pub fn new(client: Arc<dyn KvClient>) -> Registry {
        Registry {
            client,
            namespace: DEFAULT_NAMESPACE.to_owned(),
        }
    }

    /// The same registry in `namespace` (environments are separate
    /// namespaces).
    ///
    /// # Errors
    /// [`DiscoveryError::InvalidName`] for an empty name or one with `/`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> DiscoveryResult<Registry> {
        let namespace = namespace.into();
        check_name("namespace", &namespace)?;
        self.namespace = namespace;
        Ok(self)
    }

    /// The namespace.
    pub fn namespace_name(&self) -> &str {
        &self.namespace
    }

    /// The client.
    pub fn client(&self) -> &Arc<dyn KvClient> {
        &self.client
    }

    fn validate(&self, instance: &ServiceInstance) -> DiscoveryResult<Vec<u8>> {
        check_name("service", &instance.service)?;
        check_name("instance id", &instance.id)?;
        if let Some(check) = &instance.check {
            check.validate()?;
        }
        Ok(instance_key(
            &self.namespace,
            &instance.service,
            &instance.id,
        ))
    }

    async fn put(&self, instance: &ServiceInstance, lease: LeaseId) -> DiscoveryResult<i64> {
        let key = self.validate(instance)?;
        let request = PutRequest {
            lease,
            ..PutRequest::new(key, instance.encode())
        };
        let r = self.client.put(request, KvOptions::default()).await?;
        Ok(r.header.revision)
    }

    /// Registers (or replaces) `instance`, bound to `session`: it is
    /// removed when the session's lease ends. Returns the revision.
    ///
    /// # Errors
    /// [`DiscoveryError::InvalidName`]/[`DiscoveryError::InvalidConfig`]
    /// for a bad instance; [`DiscoveryError::Recipe`] (`SessionLost`) when
    /// the session is lost; [`DiscoveryError::Kv`] from the put.
    pub async fn register_ephemeral(
        &self,
        session: &Session,
        instance: &ServiceInstance,
    ) -> DiscoveryResult<i64> {
        session.check_alive()?;
        self.put(instance, session.lease()).await
    }

    /// Registers (or replaces) `instance` until it is deregistered.
    /// Returns the revision.
    ///
    /// # Errors
    /// As [`Registry::register_ephemeral`], without the session.
    pub async fn register_persistent(&self, instance: &ServiceInstance) -> DiscoveryResult<i64> {
        self.put(instance, LeaseId::NONE).await
    }

    /// Changes a registered instance with `change` (weight, metadata,
    /// enabled, tags...), keeping its lease: a compare-and-swap on the
    /// instance's mod revision, retried when it changed meanwhile (a
    /// checker recorded its health, say). Returns the instance as written.
    ///
    /// # Errors
    /// [`DiscoveryError::NotFound`] when it is not registered;
    /// [`DiscoveryError::Conflict`] after losing every retry;
    /// [`DiscoveryError::Kv`] from the reads and writes.
    pub async fn update(
        &self,
        service: &str,
        id: &str,
        mut change: impl FnMut(&mut ServiceInstance) + Send,
    ) -> DiscoveryResult<ServiceInstance> {
        check_name("service", service)?;
        check_name("instance id", id)?;
        let key = instance_key(&self.namespace, service, id);
        for _ in 0..UPDATE_ATTEMPTS {
            let Some(kv) = self.client.get(key.clone(), KvOptions::default()).await? else {
                return Err(DiscoveryError::NotFound {
                    service: service.to_owned(),
                    id: id.to_owned(),
                });
            };
            let mut instance = ServiceInstance::from_kv(&kv)?;
            change(&mut instance);
            // The key names the instance; a change cannot move it.
            instance.service = service.to_owned();
            instance.id = id.to_owned();
            if let Some(check) = &instance.check {
                check.validate()?;
            }
            let request = TxnRequest {
                compare: vec![Compare::key(
                    key.clone(),
                    CompareOp::Equal,
                    CompareTarget::ModRevision(kv.mod_revision),
                )],
                success: vec![TxnOp::Put(PutRequest {
                    ignore_lease: true,
                    ..PutRequest::new(key.clone(), instance.encode())
                })],
                failure: vec![],
            };
            let r = self.client.txn(request, KvOptions::default()).await?;
            if r.succeeded {
                instance.mod_revision = r.header.revision;
                return Ok(instance);
            }
        }
        Err(DiscoveryError::Conflict {
            service: service.to_owned(),
            id: id.to_owned(),
        })
    }

    /// Sets an instance's weight.
    ///
    /// # Errors
    /// As [`Registry::update`].
    pub async fn set_weight(&self, service: &str, id: &str, weight: u32) -> DiscoveryResult<()> {
        self.update(service, id, |i| i.weight = weight)
            .await
            .map(drop)
    }

    /// Enables or disables an instance (a disabled one is not returned by
    /// default: take it out of rotation without deregistering it).
    ///
    /// # Errors
    /// As [`Registry::update`].
    pub async fn set_enabled(&self, service: &str, id: &str, enabled: bool) -> DiscoveryResult<()> {
        self.update(service, id, |i| i.enabled = enabled)
            .await
            .map(drop)
    }

    /// Sets one metadata entry of an instance.
    ///
    /// # Errors
    /// As [`Registry::update`].
    pub async fn set_metadata(
        &self,
        service: &str,
        id: &str,
        key: &str,
        value: &str,
    ) -> DiscoveryResult<()> {
        self.update(service, id, |i| {
            i.metadata.insert(key.to_owned(), value.to_owned());
        })
        .await
        .map(drop)
    }

    /// Removes an instance (and its heartbeat). True when it was
    /// registered.
    ///
    /// # Errors
    /// [`DiscoveryError::Kv`] from the delete.
    pub async fn deregister(&self, service: &str, id: &str) -> DiscoveryResult<bool> {
        check_name("service", service)?;
        check_name("instance id", id)?;
        let request = TxnRequest {
            compare: vec![],
            success: vec![
                TxnOp::Delete(DeleteRequest::new(KeyRange::key(instance_key(
                    &self.namespace,
                    service,
                    id,
                )))),
                TxnOp::Delete(DeleteRequest::new(KeyRange::key(heartbeat_key(
                    &self.namespace,
                    service,
                    id,
                )))),
            ],
            failure: vec![],
        };
        let r = self.client.txn(request, KvOptions::default()).await?;
        Ok(matches!(
            r.responses.first(),
            Some(ha_core::TxnOpResponse::Delete(d)) if d.deleted > 0
        ))
    }

    /// Records a heartbeat of an instance with a [`crate::CheckKind::Ttl`]
    /// check. Bound to the instance's lease, if it has one.
    ///
    /// # Errors
    /// [`DiscoveryError::NotFound`] when it is not registered;
    /// [`DiscoveryError::Kv`] from the write.
    pub async fn heartbeat(&self, service: &str, id: &str) -> DiscoveryResult<()> {
        check_name("service", service)?;
        check_name("instance id", id)?;
        let key = instance_key(&self.namespace, service, id);
        let Some(kv) = self.client.get(key.clone(), KvOptions::default()).await? else {
            return Err(DiscoveryError::NotFound {
                service: service.to_owned(),
                id: id.to_owned(),
            });
        };
        let hb = PutRequest {
            lease: kv.lease,
            ..PutRequest::new(heartbeat_key(&self.namespace, service, id), Vec::new())
        };
        let request = TxnRequest {
            compare: vec![Compare::key(
                key,
                CompareOp::Equal,
                CompareTarget::CreateRevision(kv.create_revision),
            )],
            success: vec![TxnOp::Put(hb)],
            failure: vec![],
        };
        let r = self.client.txn(request, KvOptions::default()).await?;
        if !r.succeeded {
            return Err(DiscoveryError::NotFound {
                service: service.to_owned(),
                id: id.to_owned(),
            });
        }
        Ok(())
    }

    /// One instance, if registered (linearizable).
    ///
    /// # Errors
    /// [`DiscoveryError::Kv`] from the read; [`DiscoveryError::Decode`]
    /// when its record cannot be decoded.
    pub async fn get(&self, service: &str, id: &str) -> DiscoveryResult<Option<ServiceInstance>> {
        check_name("service", service)?;
        check_name("instance id", id)?;
        let key = instance_key(&self.namespace, service, id);
        match self.client.get(key, KvOptions::default()).await? {
            Some(kv) => Ok(Some(ServiceInstance::from_kv(&kv)?)),
            None => Ok(None),
        }
    }

    /// Every instance of `service` and the revision they are as of
    /// (records that cannot be decoded are skipped and logged).
    ///
    /// # Errors
    /// [`DiscoveryError::Kv`] from the read.
    pub async fn snapshot(
        &self,
        service: &str,
        options: KvOptions,
    ) -> DiscoveryResult<(i64, Vec<ServiceInstance>)> {
        check_name("service", service)?;
        let prefix = service_prefix(&self.namespace, service);
        let r = self
            .client
            .range(RangeRequest::new(KeyRange::prefix(prefix)), options)
            .await?;
        Ok((r.header.revision, decode_all(&r.kvs)))
    }

    /// The instances of `service` that `filter` lets through
    /// (linearizable: reflects every registration acknowledged before).
    ///
    /// # Errors
    /// [`DiscoveryError::Kv`] from the read.
    pub async fn instances(
        &self,
        service: &str,
        filter: &InstanceFilter,
    ) -> DiscoveryResult<Vec<ServiceInstance>> {
        let (_, all) = self.snapshot(service, KvOptions::default()).await?;
        Ok(filter.apply(&all))
    }

    /// Every change to `service`: first a [`ServiceChange::Snapshot`] of
    /// its instances, then each registration, update and removal in
    /// revision order. After the watch is cancelled it resumes from the
    /// revision it stopped at; after the revisions it needed were
    /// compacted it re-reads and sends a fresh snapshot (replace, do not
    /// merge). The stream ends after an error it cannot recover from
    /// (the member stopped). It starts when first polled.
    pub fn watch(&self, service: &str) -> BoxStream<'static, DiscoveryResult<ServiceChange>> {
        ServiceWatcher::stream(self.clone(), service.to_owned())
    }
}

/// Decodes the instances among `kvs`, skipping (and logging) the rest.
pub(crate) fn decode_all(kvs: &[ha_core::KeyValue]) -> Vec<ServiceInstance> {
    kvs.iter()
        .filter_map(|kv| match ServiceInstance::from_kv(kv) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(error = %e, "skipping an undecodable registry record");
                None
            }
        })
        .collect()
}
