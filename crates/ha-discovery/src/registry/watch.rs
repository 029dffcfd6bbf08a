//! A service's changes as a stream: a snapshot, then every change, with
//! resume after a cancelled watch and a fresh snapshot after compaction.

use std::collections::VecDeque;

use futures::StreamExt;
use futures::stream::BoxStream;
use ha_core::{Error, EventKind, KvOptions, WatchRequest, WatchStream};

use super::client::Registry;
use super::error::{DiscoveryError, DiscoveryResult};
use super::instance::{ServiceInstance, check_name, id_in, service_prefix};

/// One item of [`Registry::watch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceChange {
    /// Every instance of the service as of `revision`: replaces whatever
    /// the receiver knew (sent first, and again after a compaction made
    /// the missed changes unavailable).
    Snapshot {
        /// The revision the snapshot is as of.
        revision: i64,
        /// The instances.
        instances: Vec<ServiceInstance>,
    },
    /// An instance was registered or changed (health too).
    Put {
        /// The revision of the change.
        revision: i64,
        /// The instance after it (boxed: a change is usually much
        /// smaller than a snapshot, and this keeps the enum small).
        instance: Box<ServiceInstance>,
    },
    /// An instance was removed (deregistered, or its session ended).
    Delete {
        /// The revision of the removal.
        revision: i64,
        /// The instance's id.
        id: String,
    },
}

impl ServiceChange {
    /// The revision of the change (of the snapshot).
    pub fn revision(&self) -> i64 {
        match self {
            ServiceChange::Snapshot { revision, .. }
            | ServiceChange::Put { revision, .. }
            | ServiceChange::Delete { revision, .. } => *revision,
        }
    }

    /// Applies the change to a list of instances kept in id order.
    pub fn apply_to(&self, instances: &mut Vec<ServiceInstance>) {
        match self {
            ServiceChange::Snapshot { instances: all, .. } => {
                *instances = all.clone();
                instances.sort_by(|a, b| a.id.cmp(&b.id));
            }
            ServiceChange::Put { instance, .. } => {
                match instances.binary_search_by(|i| i.id.cmp(&instance.id)) {
                    Ok(at) => instances[at] = (**instance).clone(),
                    Err(at) => instances.insert(at, (**instance).clone()),
                }
            }
            ServiceChange::Delete { id, .. } => {
                if let Ok(at) = instances.binary_search_by(|i| i.id.cmp(id)) {
                    instances.remove(at);
                }
            }
        }
    }
}

pub(crate) struct ServiceWatcher {
    registry: Registry,
    service: String,
    prefix: Vec<u8>,
    watch: Option<WatchStream>,
    /// Next revision to watch from; 0: read a snapshot first.
    from: i64,
    queue: VecDeque<ServiceChange>,
    done: bool,
}

impl ServiceWatcher {
    pub(crate) fn stream(
        registry: Registry,
        service: String,
    ) -> BoxStream<'static, DiscoveryResult<ServiceChange>> {
        if let Err(e) = check_name("service", &service) {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        let watcher = ServiceWatcher {
            prefix: service_prefix(registry.namespace_name(), &service),
            registry,
            service,
            watch: None,
            from: 0,
            queue: VecDeque::new(),
            done: false,
        };
        futures::stream::unfold(watcher, |mut w| async move {
            let item = w.next().await?;
            Some((item, w))
        })
        .boxed()
    }

    fn fail(&mut self, e: impl Into<DiscoveryError>) -> Option<DiscoveryResult<ServiceChange>> {
        self.done = true;
        Some(Err(e.into()))
    }

    async fn next(&mut self) -> Option<DiscoveryResult<ServiceChange>> {
        loop {
            if let Some(change) = self.queue.pop_front() {
                return Some(Ok(change));
            }
            if self.done {
                return None;
            }
            let Some(watch) = self.watch.as_mut() else {
                if self.from == 0 {
                    match self
                        .registry
                        .snapshot(&self.service, KvOptions::default())
                        .await
                    {
                        Ok((revision, instances)) => {
                            self.from = revision + 1;
                            self.queue.push_back(ServiceChange::Snapshot {
                                revision,
                                instances,
                            });
                        }
                        Err(e) => return self.fail(e),
                    }
                    continue;
                }
                let request = WatchRequest::prefix(self.prefix.clone()).from_revision(self.from);
                match self.registry.client().watch(request).await {
                    Ok(w) => self.watch = Some(w),
                    // The changes since the snapshot are gone: start over.
                    Err(Error::Compacted { .. }) => self.from = 0,
                    Err(e) => return self.fail(e),
                }
                continue;
            };
            match watch.next().await {
                Some(Ok(r)) => {
                    for event in &r.events {
                        let revision = event.revision();
                        match event.kind {
                            EventKind::Put => match ServiceInstance::from_kv(&event.kv) {
                                Ok(instance) => self.queue.push_back(ServiceChange::Put {
                                    revision,
                                    instance: Box::new(instance),
                                }),
                                Err(e) => {
                                    tracing::warn!(error = %e, "skipping an undecodable registry record");
                                }
                            },
                            EventKind::Delete => {
                                if let Some(id) = id_in(&self.prefix, &event.kv.key) {
                                    self.queue.push_back(ServiceChange::Delete { revision, id });
                                }
                            }
                        }
                    }
                    self.from = r.header.revision + 1;
                }
                Some(Err(Error::WatchCancelled {
                    resume_revision,
                    reason,
                })) => {
                    // Usually a slow consumer: the member cancelled the
                    // watch rather than wait; the resumed watch catches up
                    // from history.
                    tracing::debug!(service = %self.service, resume_revision, ?reason, "service watch cancelled; resuming");
                    self.watch = None;
                    self.from = resume_revision;
                }
                Some(Err(Error::Compacted { .. })) => {
                    self.watch = None;
                    self.from = 0;
                }
                Some(Err(e)) => return self.fail(e),
                None => self.watch = None,
            }
        }
    }
}
