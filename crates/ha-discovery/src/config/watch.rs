//! [`ConfigCenter::watch`]: every new version of a config, in order.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use ha_core::{Error, EventKind, WatchRequest};
use tokio::sync::mpsc;

use crate::config::center::ConfigCenter;
use crate::config::error::{ConfigCenterError, ConfigResult};
use crate::config::model::{ConfigEntry, ConfigId, Record};

/// How long a watch waits before trying again after a failed KV call.
const RETRY: Duration = Duration::from_millis(100);

/// What a [`ConfigWatch`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigEvent {
    /// A new version (of the stable line; grey candidates are not
    /// versions yet).
    Published(Box<ConfigEntry>),
    /// The config was deleted; a later publish starts again at version 1.
    Deleted,
}

/// The stream of a config's new versions, from [`ConfigCenter::watch`].
///
/// Yields every version after the one current when the watch started, in
/// order, none skipped: a cancelled KV watch is resumed from the revision
/// it names; after a KV compaction (or a gap in versions) the missed
/// versions are read back from the config's history keys, which
/// compaction never removes (a version trimmed from history meanwhile is
/// the only one that can be missed). The watch runs on the center's
/// client, so it survives leader changes; it ends after an `Err` only
/// when that client stopped (`Kv(Shutdown)` and the like). Other `Err`s
/// (a secret without the key, a corrupt record) are reported and the
/// watch goes on.
///
/// Dropping the stream stops the watch.
pub struct ConfigWatch {
    id: ConfigId,
    start_version: u64,
    rx: mpsc::Receiver<ConfigResult<ConfigEvent>>,
}

impl fmt::Debug for ConfigWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigWatch")
            .field("id", &self.id)
            .field("start_version", &self.start_version)
            .finish_non_exhaustive()
    }
}

impl ConfigWatch {
    /// The version the watch started after (0: none).
    pub fn start_version(&self) -> u64 {
        self.start_version
    }
}

impl Stream for ConfigWatch {
    type Item = ConfigResult<ConfigEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl ConfigCenter {
    /// Watches `id` for new versions, starting after the current one.
    ///
    /// # Errors
    /// [`ConfigCenterError::Kv`] when the current version cannot be read.
    pub async fn watch(&self, id: &ConfigId) -> ConfigResult<ConfigWatch> {
        let snap = self.snapshot(id).await?;
        let last = snap.current.as_ref().map_or(0, |r| r.meta.version);
        Ok(self.spawn_watch(id, last, Some(snap.revision)))
    }

    /// Watches `id` for every version after `version`: those still in the
    /// history first, then new ones. Resumes a watch that was dropped
    /// (pass the last version it delivered).
    pub fn watch_from(&self, id: &ConfigId, version: u64) -> ConfigWatch {
        self.spawn_watch(id, version, None)
    }

    fn spawn_watch(&self, id: &ConfigId, last: u64, revision: Option<i64>) -> ConfigWatch {
        let (tx, rx) = mpsc::channel(256);
        let task = Follower {
            center: self.clone(),
            id: id.clone(),
            last,
            revision: revision.unwrap_or(0),
            tx,
        };
        self.inner.env.spawn(task.run(revision.is_none()));
        ConfigWatch {
            id: id.clone(),
            start_version: last,
            rx,
        }
    }
}

/// The background side of a [`ConfigWatch`].
struct Follower {
    center: ConfigCenter,
    id: ConfigId,
    /// The last version delivered (0: none, or deleted).
    last: u64,
    /// Every change at or below this revision has been delivered.
    revision: i64,
    tx: mpsc::Sender<ConfigResult<ConfigEvent>>,
}

/// Why the inner loop stopped.
enum Next {
    /// Watch again from `revision + 1`.
    Rewatch,
    /// Read the current state and the history first.
    CatchUp,
    /// The consumer is gone, or the client stopped for good.
    Stop,
}

fn is_terminal(e: &Error) -> bool {
    matches!(
        e,
        Error::Shutdown | Error::Fatal { .. } | Error::Removed { .. }
    )
}

impl Follower {
    async fn run(mut self, mut catch_up: bool) {
        let key = self.center.inner.keys.current(&self.id);
        loop {
            if catch_up {
                match self.catch_up().await {
                    Ok(true) => catch_up = false,
                    Ok(false) => return,
                    Err(e) => {
                        let terminal = matches!(&e, ConfigCenterError::Kv(k) if is_terminal(k));
                        if terminal {
                            let _ = self.tx.send(Err(e)).await;
                            return;
                        }
                        tracing::debug!(id = %self.id, error = %e, "config watch catch-up failed; retrying");
                        if !self.pause().await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let request = WatchRequest::key(key.clone()).from_revision(self.revision + 1);
            let stream = futures::select_biased! {
                () = self.tx.closed().fuse() => return,
                s = self.center.inner.client.watch(request).fuse() => s,
            };
            let next = match stream {
                Ok(stream) => self.follow(stream).await,
                Err(Error::Compacted { .. }) => Next::CatchUp,
                Err(e) if is_terminal(&e) => {
                    let _ = self.tx.send(Err(e.into())).await;
                    Next::Stop
                }
                Err(e) => {
                    tracing::debug!(id = %self.id, error = %e, "config watch failed; retrying");
                    if self.pause().await {
                        Next::Rewatch
                    } else {
                        Next::Stop
                    }
                }
            };
            match next {
                Next::Rewatch => {}
                Next::CatchUp => catch_up = true,
                Next::Stop => return,
            }
        }
    }

    /// Delivers a KV watch's events until it ends.
    async fn follow(&mut self, mut stream: ha_core::WatchStream) -> Next {
        loop {
            let item = futures::select_biased! {
                () = self.tx.closed().fuse() => return Next::Stop,
                item = stream.next().fuse() => item,
            };
            match item {
                Some(Ok(response)) => {
                    for event in &response.events {
                        let ok = match event.kind {
                            EventKind::Delete => self.deliver_delete().await,
                            EventKind::Put => {
                                match Record::decode(
                                    &event.kv.key,
                                    &event.kv.value,
                                    event.kv.mod_revision,
                                ) {
                                    Ok(record) => self.deliver(record).await,
                                    Err(e) => self.tx.send(Err(e)).await.is_ok(),
                                }
                            }
                        };
                        if !ok {
                            return Next::Stop;
                        }
                    }
                    self.revision = self.revision.max(response.header.revision);
                }
                Some(Err(Error::WatchCancelled {
                    resume_revision, ..
                })) => {
                    self.revision = self.revision.max(resume_revision - 1);
                    return Next::Rewatch;
                }
                Some(Err(Error::Compacted { .. })) => return Next::CatchUp,
                Some(Err(e)) if is_terminal(&e) => {
                    let _ = self.tx.send(Err(e.into())).await;
                    return Next::Stop;
                }
                Some(Err(e)) => {
                    tracing::debug!(id = %self.id, error = %e, "config watch ended; resuming");
                    return if self.pause().await {
                        Next::Rewatch
                    } else {
                        Next::Stop
                    };
                }
                None => return Next::Rewatch,
            }
        }
    }

    /// Delivers `record` and any versions between the last one and it
    /// (from the history). False when the consumer is gone.
    async fn deliver(&mut self, record: Record) -> bool {
        let version = record.meta.version;
        if version <= self.last {
            return true;
        }
        for missing in self.last + 1..version {
            let found = match self.center.get_version(&self.id, missing).await {
                Ok(Some(entry)) => Some(Ok(ConfigEvent::Published(Box::new(entry)))),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            };
            if let Some(item) = found {
                if self.tx.send(item).await.is_err() {
                    return false;
                }
            }
        }
        self.last = version;
        let item = self
            .center
            .inner
            .open(&self.id, &record)
            .map(|entry| ConfigEvent::Published(Box::new(entry)));
        self.tx.send(item).await.is_ok()
    }

    async fn deliver_delete(&mut self) -> bool {
        self.last = 0;
        self.tx.send(Ok(ConfigEvent::Deleted)).await.is_ok()
    }

    /// Reads the current version and delivers what was missed. Ok(false)
    /// when the consumer is gone.
    async fn catch_up(&mut self) -> ConfigResult<bool> {
        let snap = self.center.snapshot(&self.id).await?;
        let ok = match snap.current {
            None if self.last > 0 => self.deliver_delete().await,
            None => true,
            // Deleted and published again while this watch was not
            // looking: say so, then follow the new line from version 1.
            Some(record) if record.meta.version < self.last => {
                self.deliver_delete().await && self.deliver(record).await
            }
            Some(record) => self.deliver(record).await,
        };
        self.revision = self.revision.max(snap.revision);
        Ok(ok)
    }

    /// Waits before a retry; false when the consumer went away meanwhile.
    async fn pause(&self) -> bool {
        futures::select_biased! {
            () = self.tx.closed().fuse() => false,
            () = self.center.inner.env.clock().sleep(RETRY).fuse() => true,
        }
    }
}
