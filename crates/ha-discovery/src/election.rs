//! Leader election (etcd's `concurrency.Election`): campaign, proclaim,
//! resign, and observe the leader as a stream.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use ha_core::{
    Compare, CompareOp, CompareTarget, Error, EventKind, KeyRange, KeyValue, KvClient, KvOptions,
    PutRequest, RangeRequest, SortOrder, SortTarget, TxnOp, TxnRequest, WatchRequest, WatchStream,
};
use parking_lot::Mutex as SyncMutex;
use tokio_util::sync::CancellationToken;

use crate::error::{RecipeError, Result};
use crate::fence::FencingToken;
use crate::queue::{self, Blocker, Held};
use crate::session::Session;

/// A leader, as observers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The leader's key (`<name>/<lease-hex>`).
    pub key: Vec<u8>,
    /// What it proclaimed.
    pub value: Vec<u8>,
    /// Its term: the key's create revision, higher for every later
    /// leader — a fencing token.
    pub token: FencingToken,
    /// Revision of its last proclamation.
    pub mod_revision: i64,
}

impl Leader {
    fn of(kv: &KeyValue) -> Leader {
        Leader {
            key: kv.key.clone(),
            value: kv.value.clone(),
            token: FencingToken(kv.create_revision),
            mod_revision: kv.mod_revision,
        }
    }
}

/// An election called `name`: candidates queue as keys
/// `<name>/<lease-hex>` ordered by create revision; the first is leader.
/// A candidate waits for only the one ahead of it.
#[derive(Clone)]
pub struct Election {
    session: Session,
    prefix: Vec<u8>,
}

impl fmt::Debug for Election {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Election")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .finish()
    }
}

fn by_create_revision(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        sort_target: SortTarget::CreateRevision,
        sort_order: SortOrder::Ascend,
        ..RangeRequest::new(KeyRange::prefix(prefix.to_vec()))
    }
}

impl Election {
    /// The election `name`, campaigned for through `session`.
    pub fn new(session: &Session, name: &str) -> Election {
        Election {
            session: session.clone(),
            prefix: format!("{name}/").into_bytes(),
        }
    }

    /// Waits until this session leads, proclaiming `value`.
    ///
    /// # Errors
    /// [`RecipeError::SessionLost`] when the session is lost first;
    /// [`RecipeError::Kv`] when the group cannot be reached.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future withdraws the candidacy in the
    /// background.
    pub async fn campaign(&self, value: impl Into<Vec<u8>>) -> Result<Leadership> {
        let value = value.into();
        let mut ticket = queue::enqueue(&self.session, &self.prefix, &value).await?;
        if ticket.adopted.as_ref().is_some_and(|v| *v != value) {
            proclaim(&self.session, &ticket.slot.key, ticket.revision, &value).await?;
        }
        queue::wait_turn(&mut ticket, &self.prefix, |ahead| {
            ahead.last().map(|kv| Blocker::Key(kv.key.clone()))
        })
        .await?;
        let held = Held::new(ticket);
        let cancel = CancellationToken::new();
        self.session.env().spawn(monitor(
            self.session.clone(),
            held.slot.key.clone(),
            held.revision,
            cancel.clone(),
        ));
        Ok(Leadership {
            inner: Arc::new(LeadershipInner {
                session: self.session.clone(),
                key: held.slot.key.clone(),
                token: FencingToken(held.revision),
                value: SyncMutex::new(value),
                held: SyncMutex::new(Some(held)),
                cancel,
            }),
        })
    }

    /// The current leader, if any (linearizable).
    ///
    /// # Errors
    /// [`RecipeError::Kv`] from the read.
    pub async fn leader(&self) -> Result<Option<Leader>> {
        let request = RangeRequest {
            limit: 1,
            ..by_create_revision(&self.prefix)
        };
        let r = self
            .session
            .client()
            .range(request, KvOptions::default())
            .await?;
        Ok(r.kvs.first().map(Leader::of))
    }

    /// Every change of leader or of its proclaimed value, in order: first
    /// the current leader (`None`: nobody leads), then each change as of
    /// the revision that made it — none skipped, none repeated (a change
    /// and its undoing in one revision is no change). Watches resume on
    /// their own after a cancellation; the stream ends after an error it
    /// cannot recover from. The stream starts when first polled: "the
    /// current leader" is the one at that time.
    pub fn observe(&self) -> BoxStream<'static, Result<Option<Leader>>> {
        Election::observe_on(self.session.client().clone(), &self.prefix_name())
    }

    /// [`Election::observe`] without a session: for observers that never
    /// campaign (no lease needed).
    pub fn observe_on(
        client: Arc<dyn KvClient>,
        name: &str,
    ) -> BoxStream<'static, Result<Option<Leader>>> {
        let observer = Observer {
            client,
            prefix: format!("{name}/").into_bytes(),
            by_revision: BTreeMap::new(),
            by_key: HashMap::new(),
            emitted: None,
            watch: None,
            from: 0,
            queue: VecDeque::new(),
            done: false,
        };
        futures::stream::unfold(observer, |mut o| async move {
            let item = o.next().await?;
            Some((item, o))
        })
        .boxed()
    }

    /// The election's name (its prefix without the trailing `/`).
    fn prefix_name(&self) -> String {
        let name = &self.prefix[..self.prefix.len().saturating_sub(1)];
        String::from_utf8_lossy(name).into_owned()
    }
}

async fn proclaim(session: &Session, key: &[u8], revision: i64, value: &[u8]) -> Result<()> {
    let request = TxnRequest {
        compare: vec![Compare::key(
            key.to_vec(),
            CompareOp::Equal,
            CompareTarget::CreateRevision(revision),
        )],
        success: vec![TxnOp::Put(PutRequest {
            lease: session.lease(),
            ..PutRequest::new(key.to_vec(), value.to_vec())
        })],
        failure: vec![],
    };
    let r = session.client().txn(request, KvOptions::default()).await?;
    if !r.succeeded {
        return Err(RecipeError::NotHeld {
            key: String::from_utf8_lossy(key).into_owned(),
        });
    }
    Ok(())
}

/// Cancels `cancel` when the session is lost or the leader's key is gone.
async fn monitor(session: Session, key: Vec<u8>, revision: i64, cancel: CancellationToken) {
    let lost = session.lost().fuse();
    let gone = key_gone(session.client().clone(), key, revision).fuse();
    // Holds no handle that keeps the leadership alive: ends when it is
    // dropped (which cancels).
    drop(session);
    futures::pin_mut!(lost, gone);
    futures::select_biased! {
        () = cancel.cancelled().fuse() => {}
        _ = lost => cancel.cancel(),
        () = gone => cancel.cancel(),
    }
}

/// Returns when `key` no longer has create revision `revision` (or
/// watching fails for good — then leadership cannot be vouched for).
async fn key_gone(client: Arc<dyn KvClient>, key: Vec<u8>, revision: i64) {
    let mut from = revision + 1;
    loop {
        let request = WatchRequest::key(key.clone()).from_revision(from).no_put();
        let mut watch = match client.watch(request).await {
            Ok(w) => w,
            Err(Error::Compacted { .. }) => {
                match client.get(key.clone(), KvOptions::default()).await {
                    Ok(Some(kv)) if kv.create_revision == revision => {
                        // Still there: watch from now on.
                        match client
                            .range(
                                RangeRequest::new(KeyRange::key(key.clone())),
                                KvOptions::default(),
                            )
                            .await
                        {
                            Ok(r) => from = r.header.revision + 1,
                            Err(_) => return,
                        }
                        continue;
                    }
                    _ => return,
                }
            }
            Err(_) => return,
        };
        loop {
            match watch.next().await {
                Some(Ok(r)) => {
                    if r.events.iter().any(|e| e.kind == EventKind::Delete) {
                        return;
                    }
                    from = r.header.revision + 1;
                }
                Some(Err(Error::WatchCancelled {
                    resume_revision, ..
                })) => {
                    from = resume_revision;
                    break;
                }
                Some(Err(Error::Compacted { .. })) => break,
                Some(Err(_)) | None => return,
            }
        }
    }
}

/// This session leads an election. Clones share it; dropping the last
/// one resigns in the background.
///
/// Leadership ends when the session is lost (by the local clock, early:
/// before another candidate can win), when its key is deleted, or on
/// [`Leadership::resign`]; [`Leadership::cancellation_token`] is cancelled
/// then. Actions taken as leader should carry [`Leadership::fencing_token`]
/// or [`Leadership::compare`].
#[derive(Clone)]
pub struct Leadership {
    inner: Arc<LeadershipInner>,
}

struct LeadershipInner {
    session: Session,
    key: Vec<u8>,
    token: FencingToken,
    value: SyncMutex<Vec<u8>>,
    held: SyncMutex<Option<Held>>,
    cancel: CancellationToken,
}

impl Drop for LeadershipInner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("key", &String::from_utf8_lossy(&self.inner.key))
            .field("token", &self.inner.token)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Leadership {
    /// The term's fencing token (the key's create revision).
    pub fn fencing_token(&self) -> FencingToken {
        self.inner.token
    }

    /// The leader's key.
    pub fn key(&self) -> &[u8] {
        &self.inner.key
    }

    /// The value last proclaimed.
    pub fn value(&self) -> Vec<u8> {
        self.inner.value.lock().clone()
    }

    /// A compare to add to your transactions: "only while I lead".
    pub fn compare(&self) -> Compare {
        Compare::key(
            self.inner.key.clone(),
            CompareOp::Equal,
            CompareTarget::CreateRevision(self.inner.token.0),
        )
    }

    /// Cancelled when leadership ends (lost or resigned).
    pub fn cancellation_token(&self) -> CancellationToken {
        self.inner.cancel.clone()
    }

    /// Resolves when leadership ends.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.cancel.clone().cancelled_owned()
    }

    /// True once leadership ended (or the session's local deadline
    /// passed).
    pub fn is_lost(&self) -> bool {
        self.inner.cancel.is_cancelled() || self.inner.session.is_lost()
    }

    /// The session.
    pub fn session(&self) -> &Session {
        &self.inner.session
    }

    /// Changes the proclaimed value, only while still leading.
    ///
    /// # Errors
    /// [`RecipeError::NotHeld`] when leadership is gone;
    /// [`RecipeError::Kv`] from the transaction.
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<()> {
        let value = value.into();
        if self.inner.cancel.is_cancelled() {
            return Err(RecipeError::NotHeld {
                key: String::from_utf8_lossy(&self.inner.key).into_owned(),
            });
        }
        proclaim(
            &self.inner.session,
            &self.inner.key,
            self.inner.token.0,
            &value,
        )
        .await?;
        *self.inner.value.lock() = value;
        Ok(())
    }

    /// Steps down: deletes the key (only if still this term's) and
    /// cancels the token.
    ///
    /// # Errors
    /// [`RecipeError::NotHeld`] when leadership was already lost;
    /// [`RecipeError::Kv`] when the delete failed (retried in the
    /// background).
    pub async fn resign(&self) -> Result<()> {
        self.inner.cancel.cancel();
        let held = self.inner.held.lock().take();
        match held {
            Some(held) => held.release().await,
            None => Ok(()),
        }
    }
}

/// The state of [`Election::observe`].
struct Observer {
    client: Arc<dyn KvClient>,
    prefix: Vec<u8>,
    /// Candidates by create revision, and create revision by key.
    by_revision: BTreeMap<i64, KeyValue>,
    by_key: HashMap<Vec<u8>, i64>,
    /// The last leader emitted: (key, create, mod) — `Some(None)` for
    /// "nobody".
    emitted: Option<Option<(Vec<u8>, i64, i64)>>,
    watch: Option<WatchStream>,
    /// Next revision to watch from; 0: read the state first.
    from: i64,
    queue: VecDeque<Option<Leader>>,
    done: bool,
}

impl Observer {
    fn emit_if_changed(&mut self) {
        let leader = self.by_revision.values().next();
        let id = leader.map(|kv| (kv.key.clone(), kv.create_revision, kv.mod_revision));
        if self.emitted.as_ref() != Some(&id) {
            self.queue.push_back(leader.map(Leader::of));
            self.emitted = Some(id);
        }
    }

    fn apply(&mut self, event: &ha_core::WatchEvent) {
        match event.kind {
            EventKind::Put => {
                if let Some(old) = self
                    .by_key
                    .insert(event.kv.key.clone(), event.kv.create_revision)
                {
                    self.by_revision.remove(&old);
                }
                self.by_revision
                    .insert(event.kv.create_revision, event.kv.clone());
            }
            EventKind::Delete => {
                if let Some(old) = self.by_key.remove(&event.kv.key) {
                    self.by_revision.remove(&old);
                }
            }
        }
    }

    async fn next(&mut self) -> Option<Result<Option<Leader>>> {
        loop {
            if let Some(leader) = self.queue.pop_front() {
                return Some(Ok(leader));
            }
            if self.done {
                return None;
            }
            let Some(watch) = self.watch.as_mut() else {
                if self.from == 0 {
                    match self
                        .client
                        .range(by_create_revision(&self.prefix), KvOptions::default())
                        .await
                    {
                        Ok(r) => {
                            self.by_revision = r
                                .kvs
                                .iter()
                                .map(|kv| (kv.create_revision, kv.clone()))
                                .collect();
                            self.by_key = r
                                .kvs
                                .iter()
                                .map(|kv| (kv.key.clone(), kv.create_revision))
                                .collect();
                            self.from = r.header.revision + 1;
                            self.emit_if_changed();
                        }
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e.into()));
                        }
                    }
                    continue;
                }
                let request = WatchRequest::prefix(self.prefix.clone()).from_revision(self.from);
                match self.client.watch(request).await {
                    Ok(w) => self.watch = Some(w),
                    Err(Error::Compacted { .. }) => self.from = 0,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e.into()));
                    }
                }
                continue;
            };
            match watch.next().await {
                Some(Ok(r)) => {
                    let mut revision = None;
                    for event in &r.events {
                        if revision.is_some_and(|rev| rev != event.revision()) {
                            self.emit_if_changed();
                        }
                        revision = Some(event.revision());
                        self.apply(event);
                    }
                    self.emit_if_changed();
                    self.from = r.header.revision + 1;
                }
                Some(Err(Error::WatchCancelled {
                    resume_revision, ..
                })) => {
                    self.watch = None;
                    self.from = resume_revision;
                }
                Some(Err(Error::Compacted { .. })) => {
                    self.watch = None;
                    self.from = 0;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
                None => self.watch = None,
            }
        }
    }
}
