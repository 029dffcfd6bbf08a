//! The ordered queue under Mutex, RwLock, Semaphore and Election — etcd's
//! `concurrency` algorithm: each contender creates `prefix<lease-hex>` with
//! the session's lease in a transaction (only if absent), its place is the
//! key's create revision, and it waits for the keys ahead of it that block
//! it to be deleted, watching one of them (or, for a semaphore, the ones
//! ahead) — never the whole prefix, so a release wakes one waiter.
//!
//! A contender's key is armed while it is not handed to a guard: dropping
//! it (a cancelled `lock()`, a dropped guard) deletes the key in the
//! background, so a cancelled wait leaves no orphan key queued ahead of
//! others.

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use ha_core::{
    Compare, CompareOp, CompareTarget, DeleteRequest, Error, EventKind, KeyRange, KeyValue,
    KvClient, KvOptions, PutRequest, RangeRequest, SortOrder, SortTarget, TxnOp, TxnOpResponse,
    TxnRequest, WatchRequest,
};
use tokio::sync::{OwnedMutexGuard, oneshot};

use crate::error::{RecipeError, Result};
use crate::session::Session;

/// A key a contender owns, deleted in the background when dropped armed.
pub(crate) struct Slot {
    pub(crate) session: Session,
    pub(crate) key: Vec<u8>,
    /// This session's local turn at the key; `Some` while armed.
    local: Option<OwnedMutexGuard<()>>,
}

impl Slot {
    /// Deletes the key now if it still has `token` as create revision
    /// (0: whatever it has), then lets the next local user in.
    ///
    /// # Errors
    /// [`RecipeError::NotHeld`] when the key was already gone (the lease
    /// expired); [`RecipeError::Kv`] when the delete failed (it is then
    /// retried in the background).
    pub(crate) async fn release(mut self, token: i64) -> Result<()> {
        let request = TxnRequest {
            compare: vec![Compare::key(
                self.key.clone(),
                CompareOp::Equal,
                CompareTarget::CreateRevision(token),
            )],
            success: vec![TxnOp::Delete(DeleteRequest::new(KeyRange::key(
                self.key.clone(),
            )))],
            failure: vec![],
        };
        let r = self
            .session
            .client()
            .txn(request, KvOptions::default())
            .await?;
        // Done: the key is gone either way.
        drop(self.local.take());
        if r.succeeded {
            Ok(())
        } else {
            Err(RecipeError::NotHeld {
                key: String::from_utf8_lossy(&self.key).into_owned(),
            })
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(local) = self.local.take() else {
            return;
        };
        let client = self.session.client().clone();
        let clock = self.session.env().clock().clone();
        let key = self.key.clone();
        let lease = self.session.lease();
        self.session.env().spawn(async move {
            for attempt in 0..10u32 {
                let request = DeleteRequest::new(KeyRange::key(key.clone()));
                match client.delete(request, KvOptions::default()).await {
                    Ok(_) => break,
                    Err(Error::Shutdown | Error::Fatal { .. } | Error::Removed { .. }) => break,
                    Err(e) => {
                        tracing::debug!(lease = lease.0, attempt, error = %e,
                            "releasing a recipe key failed; retrying (it also goes with the lease)");
                        clock.sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            // Only now may the next local user create the key again.
            drop(local);
        });
    }
}

/// A contender's place in a queue.
pub(crate) struct Ticket {
    pub(crate) slot: Slot,
    /// The key's create revision: its place, and the fencing token.
    pub(crate) revision: i64,
    /// The value the key had when adopted from before (a resumed session).
    pub(crate) adopted: Option<Vec<u8>>,
    /// The queue as the enqueueing transaction saw it: its revision and
    /// the keys by create revision.
    first: Option<(i64, Vec<KeyValue>)>,
}

impl Ticket {
    /// The keys ahead of this one as first seen.
    pub(crate) fn first_ahead(&self) -> Vec<KeyValue> {
        self.first
            .as_ref()
            .map(|(_, kvs)| {
                kvs.iter()
                    .filter(|kv| kv.create_revision < self.revision)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What a contender waits for.
pub(crate) enum Blocker {
    /// This key's deletion.
    Key(Vec<u8>),
    /// The deletion of any of these keys (under the prefix).
    AnyOf(Vec<Vec<u8>>),
}

fn by_create_revision(range: KeyRange) -> RangeRequest {
    RangeRequest {
        sort_target: SortTarget::CreateRevision,
        sort_order: SortOrder::Ascend,
        ..RangeRequest::new(range)
    }
}

/// Joins the queue under `prefix` with `value`, or finds this session's
/// key already there (adopted).
///
/// # Cancel safety
/// Cancel safe: the transaction runs on the spawner, and if this future is
/// gone when it completes, the key is deleted.
pub(crate) async fn enqueue(session: &Session, prefix: &[u8], value: &[u8]) -> Result<Ticket> {
    session.check_alive()?;
    let mut key = prefix.to_vec();
    key.extend_from_slice(session.lease_hex().as_bytes());
    let local = session.local_turn(&key).await;
    let slot = Slot {
        session: session.clone(),
        key: key.clone(),
        local: Some(local),
    };
    let request = TxnRequest {
        compare: vec![Compare::key(
            key.clone(),
            CompareOp::Equal,
            CompareTarget::CreateRevision(0),
        )],
        success: vec![
            TxnOp::Put(PutRequest {
                lease: session.lease(),
                ..PutRequest::new(key.clone(), value)
            }),
            TxnOp::Range(by_create_revision(KeyRange::prefix(prefix))),
        ],
        failure: vec![
            TxnOp::Range(RangeRequest::new(KeyRange::key(key.clone()))),
            TxnOp::Range(by_create_revision(KeyRange::prefix(prefix))),
        ],
    };
    let (tx, rx) = oneshot::channel();
    let client = session.client().clone();
    session.env().spawn(async move {
        let r = client.txn(request, KvOptions::default()).await;
        // If the caller is gone, the slot drops here and deletes the key.
        let _ = tx.send((r, slot));
    });
    let Ok((r, slot)) = rx.await else {
        // The spawner dropped the task: the executor is shutting down.
        return Err(Error::Shutdown.into());
    };
    let r = r?;
    let range = |i: usize| match r.responses.get(i) {
        Some(TxnOpResponse::Range(range)) => Some(range),
        _ => None,
    };
    let malformed = || {
        RecipeError::Kv(Error::InvalidRequest {
            reason: ha_core::InvalidRequest::Malformed,
        })
    };
    let queue = range(1).ok_or_else(malformed)?.kvs.clone();
    let (revision, adopted) = if r.succeeded {
        (r.header.revision, None)
    } else {
        let mine = range(0).and_then(|m| m.kvs.first()).ok_or_else(malformed)?;
        (mine.create_revision, Some(mine.value.clone()))
    };
    Ok(Ticket {
        slot,
        revision,
        adopted,
        first: Some((r.header.revision, queue)),
    })
}

/// Reads the queue at a revision at or after `min_revision`: a local
/// (serializable) read when the answering member has applied that far —
/// enough, because keys ahead of `min_revision` can only disappear —
/// else a linearizable one.
async fn read_queue(
    client: &dyn KvClient,
    prefix: &[u8],
    min_revision: i64,
) -> Result<(i64, Vec<KeyValue>)> {
    let request = by_create_revision(KeyRange::prefix(prefix));
    let r = client
        .range(request.clone(), KvOptions::serializable())
        .await?;
    if r.header.revision >= min_revision {
        return Ok((r.header.revision, r.kvs));
    }
    let r = client.range(request, KvOptions::default()).await?;
    Ok((r.header.revision, r.kvs))
}

/// Waits until `blocked_by` (given the keys ahead, by create revision)
/// finds nothing blocking this ticket.
///
/// # Errors
/// [`RecipeError::SessionLost`] when the session is lost meanwhile;
/// [`RecipeError::NotHeld`] when the ticket's key vanished;
/// [`RecipeError::Kv`] when a read or watch fails.
pub(crate) async fn wait_turn(
    ticket: &mut Ticket,
    prefix: &[u8],
    blocked_by: impl Fn(&[KeyValue]) -> Option<Blocker>,
) -> Result<()> {
    let session = ticket.slot.session.clone();
    let client = session.client().clone();
    let lost = session.lost().fuse();
    futures::pin_mut!(lost);
    let (mut revision, mut queue) = match ticket.first.take() {
        Some(first) => first,
        None => read_queue(&*client, prefix, ticket.revision).await?,
    };
    loop {
        let present = queue
            .iter()
            .any(|kv| kv.key == ticket.slot.key && kv.create_revision == ticket.revision);
        if !present {
            session.check_alive()?;
            return Err(RecipeError::NotHeld {
                key: String::from_utf8_lossy(&ticket.slot.key).into_owned(),
            });
        }
        queue.retain(|kv| kv.create_revision < ticket.revision);
        let Some(blocker) = blocked_by(&queue) else {
            return Ok(());
        };
        let wait = wait_deleted(&*client, prefix, blocker, revision + 1).fuse();
        futures::pin_mut!(wait);
        futures::select_biased! {
            reason = lost => return Err(session.lost_error(reason)),
            r = wait => r?,
        }
        (revision, queue) = read_queue(&*client, prefix, ticket.revision).await?;
    }
}

/// Returns once `blocker` saw a deletion at or after revision `from` (or
/// the watch can no longer say: compacted — the caller reads again).
async fn wait_deleted(
    client: &dyn KvClient,
    prefix: &[u8],
    blocker: Blocker,
    mut from: i64,
) -> Result<()> {
    loop {
        let request = match &blocker {
            Blocker::Key(key) => WatchRequest::key(key.clone()),
            Blocker::AnyOf(_) => WatchRequest::prefix(prefix.to_vec()),
        }
        .from_revision(from)
        .no_put();
        let mut watch = match client.watch(request).await {
            Ok(w) => w,
            Err(Error::Compacted { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        loop {
            match watch.next().await {
                Some(Ok(response)) => {
                    let hit = response.events.iter().any(|e| {
                        e.kind == EventKind::Delete
                            && match &blocker {
                                Blocker::Key(_) => true,
                                Blocker::AnyOf(keys) => keys.contains(&e.kv.key),
                            }
                    });
                    if hit {
                        return Ok(());
                    }
                }
                Some(Err(Error::WatchCancelled {
                    resume_revision, ..
                })) => {
                    from = resume_revision;
                    break;
                }
                Some(Err(Error::Compacted { .. })) | None => return Ok(()),
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }
}

/// A queue position that is held: the slot and its token.
pub(crate) struct Held {
    pub(crate) slot: Slot,
    pub(crate) revision: i64,
}

impl Held {
    pub(crate) fn new(ticket: Ticket) -> Held {
        Held {
            slot: ticket.slot,
            revision: ticket.revision,
        }
    }

    /// "The key is still this holder's": its create revision is the token.
    pub(crate) fn compare(&self) -> Compare {
        Compare::key(
            self.slot.key.clone(),
            CompareOp::Equal,
            CompareTarget::CreateRevision(self.revision),
        )
    }

    pub(crate) async fn release(self) -> Result<()> {
        self.slot.release(self.revision).await
    }
}
