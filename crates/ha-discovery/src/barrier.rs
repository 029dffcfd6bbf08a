//! Barriers: a gate one party holds closed, and a double barrier that N
//! participants enter together and leave together.

use std::fmt;

use futures::StreamExt;
use ha_core::{
    DeleteRequest, Error, EventKind, KeyRange, KvClient, KvOptions, PutRequest, RangeRequest,
    TxnOp, TxnOpResponse, TxnRequest, WatchRequest,
};

use crate::error::{RecipeError, Result};
use crate::session::Session;

/// A gate: while someone [holds](Barrier::hold) it, [`Barrier::wait`]
/// blocks; [`Barrier::release`] (or the holder's session ending) opens it
/// for every waiter at once.
#[derive(Clone)]
pub struct Barrier {
    session: Session,
    key: Vec<u8>,
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("key", &String::from_utf8_lossy(&self.key))
            .finish()
    }
}

impl Barrier {
    /// The barrier called `name`.
    pub fn new(session: &Session, name: &str) -> Barrier {
        Barrier {
            session: session.clone(),
            key: name.as_bytes().to_vec(),
        }
    }

    /// Closes the gate (with this session's lease: it opens if the
    /// session ends).
    ///
    /// # Errors
    /// [`RecipeError::Kv`] from the put.
    pub async fn hold(&self) -> Result<()> {
        self.session.put(self.key.clone(), Vec::new()).await?;
        Ok(())
    }

    /// Opens the gate.
    ///
    /// # Errors
    /// [`RecipeError::Kv`] from the delete.
    pub async fn release(&self) -> Result<()> {
        self.session
            .client()
            .delete(
                DeleteRequest::new(KeyRange::key(self.key.clone())),
                KvOptions::default(),
            )
            .await?;
        Ok(())
    }

    /// Waits until the gate is open.
    ///
    /// # Errors
    /// [`RecipeError::Kv`] when a read or watch fails.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait(&self) -> Result<()> {
        let client = self.session.client();
        loop {
            let r = client
                .range(
                    RangeRequest::new(KeyRange::key(self.key.clone())),
                    KvOptions::default(),
                )
                .await?;
            if r.kvs.is_empty() {
                return Ok(());
            }
            let w = WatchRequest::key(self.key.clone())
                .from_revision(r.header.revision + 1)
                .no_put();
            first_event(&**client, w, |_| true).await?;
        }
    }
}

/// Waits for the first event `wanted` accepts on the watch (resuming a
/// cancelled watch); returns early when history was compacted (the caller
/// reads again).
async fn first_event(
    client: &dyn KvClient,
    mut request: WatchRequest,
    wanted: impl Fn(&ha_core::WatchEvent) -> bool,
) -> Result<()> {
    loop {
        let mut watch = match client.watch(request.clone()).await {
            Ok(w) => w,
            Err(Error::Compacted { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        loop {
            match watch.next().await {
                Some(Ok(r)) => {
                    if r.events.iter().any(&wanted) {
                        return Ok(());
                    }
                    request.start_revision = r.header.revision + 1;
                }
                Some(Err(Error::WatchCancelled {
                    resume_revision, ..
                })) => {
                    request.start_revision = resume_revision;
                    break;
                }
                Some(Err(Error::Compacted { .. })) | None => return Ok(()),
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }
}

/// N participants [enter](DoubleBarrier::enter) together — nobody gets
/// past `enter` until N have arrived — and [leave](DoubleBarrier::leave)
/// together — nobody gets past `leave` until all have left.
///
/// Participants are keys `<name>/waiters/<lease-hex>` with their
/// session's lease (a participant that dies counts as left); the last
/// arrival writes `<name>/ready`, and whoever sees everyone gone deletes
/// it. Use a name for one round at a time.
#[derive(Clone)]
pub struct DoubleBarrier {
    session: Session,
    waiters: Vec<u8>,
    ready: Vec<u8>,
    participants: usize,
}

impl fmt::Debug for DoubleBarrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoubleBarrier")
            .field("ready", &String::from_utf8_lossy(&self.ready))
            .field("participants", &self.participants)
            .finish()
    }
}

impl DoubleBarrier {
    /// The double barrier `name` for `participants` participants.
    ///
    /// # Errors
    /// [`RecipeError::InvalidArgument`] for zero participants.
    pub fn new(session: &Session, name: &str, participants: usize) -> Result<DoubleBarrier> {
        if participants == 0 {
            return Err(RecipeError::InvalidArgument {
                reason: "a double barrier needs at least one participant",
            });
        }
        Ok(DoubleBarrier {
            session: session.clone(),
            waiters: format!("{name}/waiters/").into_bytes(),
            ready: format!("{name}/ready").into_bytes(),
            participants,
        })
    }

    fn my_key(&self) -> Vec<u8> {
        let mut k = self.waiters.clone();
        k.extend_from_slice(self.session.lease_hex().as_bytes());
        k
    }

    /// How many participants are in, and whether `ready` exists, at one
    /// revision.
    async fn census(&self) -> Result<(i64, u64, bool)> {
        let request = TxnRequest {
            compare: vec![],
            success: vec![
                TxnOp::Range(RangeRequest {
                    count_only: true,
                    ..RangeRequest::new(KeyRange::prefix(self.waiters.clone()))
                }),
                TxnOp::Range(RangeRequest::new(KeyRange::key(self.ready.clone()))),
            ],
            failure: vec![],
        };
        let r = self
            .session
            .client()
            .txn(request, KvOptions::default())
            .await?;
        match (r.responses.first(), r.responses.get(1)) {
            (Some(TxnOpResponse::Range(count)), Some(TxnOpResponse::Range(ready))) => {
                Ok((r.header.revision, count.count, !ready.kvs.is_empty()))
            }
            _ => Err(RecipeError::Kv(Error::InvalidRequest {
                reason: ha_core::InvalidRequest::Malformed,
            })),
        }
    }

    /// Enters, and waits until every participant has.
    ///
    /// # Errors
    /// [`RecipeError::Kv`] when a write, read or watch fails.
    ///
    /// # Cancel safety
    /// Not cancel safe once entered: call [`DoubleBarrier::leave`] (or end
    /// the session) to leave.
    pub async fn enter(&self) -> Result<()> {
        self.session.put(self.my_key(), Vec::new()).await?;
        let (revision, count, ready) = self.census().await?;
        if ready {
            return Ok(());
        }
        if count >= self.participants as u64 {
            self.session
                .client()
                .put(
                    PutRequest::new(self.ready.clone(), Vec::new()),
                    KvOptions::default(),
                )
                .await?;
            return Ok(());
        }
        let w = WatchRequest::key(self.ready.clone())
            .from_revision(revision + 1)
            .no_delete();
        first_event(&**self.session.client(), w, |e| e.kind == EventKind::Put).await
    }

    /// Leaves, and waits until every participant has.
    ///
    /// # Errors
    /// [`RecipeError::Kv`] when a write, read or watch fails.
    ///
    /// # Cancel safety
    /// Cancel safe after this participant's key is deleted.
    pub async fn leave(&self) -> Result<()> {
        let client = self.session.client();
        client
            .delete(
                DeleteRequest::new(KeyRange::key(self.my_key())),
                KvOptions::default(),
            )
            .await?;
        loop {
            let (revision, count, _) = self.census().await?;
            if count == 0 {
                client
                    .delete(
                        DeleteRequest::new(KeyRange::key(self.ready.clone())),
                        KvOptions::default(),
                    )
                    .await?;
                return Ok(());
            }
            let w = WatchRequest::prefix(self.waiters.clone())
                .from_revision(revision + 1)
                .no_put();
            first_event(&**client, w, |_| true).await?;
        }
    }
}
