//! A distributed mutex with fencing tokens (etcd's `concurrency.Mutex`).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use ha_core::{Compare, KeyValue};

use crate::error::{LostReason, Result};
use crate::fence::FencingToken;
use crate::queue::{self, Blocker, Held};
use crate::session::Session;

/// A mutex shared by every session that names it: FIFO among waiters,
/// each waiter watching only the key just ahead of it.
///
/// The holder's key is `<name>/<lease-hex>`, owned by the session's lease:
/// if the holder's process dies, the lock is released when its lease
/// expires. One session holds or waits for a given mutex once at a time;
/// concurrent `lock()` calls through one session queue locally.
///
/// ```no_run
/// # async fn f(kv: ha_discovery::KvNode) -> ha_discovery::Result<()> {
/// use ha_discovery::{Mutex, Session};
/// let session = Session::new(kv).await?;
/// let mutex = Mutex::new(&session, "jobs/compaction");
/// let guard = mutex.lock().await?;
/// // Pass the token to what the lock protects; it refuses older ones.
/// let token = guard.fencing_token();
/// # let _ = token;
/// guard.unlock().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Mutex {
    session: Session,
    prefix: Vec<u8>,
}

impl fmt::Debug for Mutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("lease", &self.session.lease())
            .finish()
    }
}

/// The key just ahead, if any: the one to wait for.
fn last_ahead(ahead: &[KeyValue]) -> Option<Blocker> {
    ahead.last().map(|kv| Blocker::Key(kv.key.clone()))
}

impl Mutex {
    /// The mutex called `name`, used through `session`.
    pub fn new(session: &Session, name: &str) -> Mutex {
        Mutex {
            session: session.clone(),
            prefix: format!("{name}/").into_bytes(),
        }
    }

    /// Waits for the lock.
    ///
    /// # Errors
    /// [`crate::RecipeError::SessionLost`] when the session is lost before
    /// or while waiting; [`crate::RecipeError::Kv`] when the group cannot
    /// be reached (nothing is held; the key is removed in the background).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future while it waits removes this
    /// session's key from the queue in the background.
    pub async fn lock(&self) -> Result<MutexGuard> {
        let mut ticket = queue::enqueue(&self.session, &self.prefix, b"").await?;
        queue::wait_turn(&mut ticket, &self.prefix, last_ahead).await?;
        Ok(MutexGuard {
            held: Held::new(ticket),
        })
    }

    /// Takes the lock if it is free now; `None` if someone holds it or
    /// waits for it ahead of this session.
    ///
    /// # Errors
    /// As [`Mutex::lock`].
    pub async fn try_lock(&self) -> Result<Option<MutexGuard>> {
        let ticket = queue::enqueue(&self.session, &self.prefix, b"").await?;
        if !ticket.first_ahead().is_empty() {
            // Leave the queue now (a background delete would race the
            // caller's next attempt only locally, but be prompt anyway).
            let _ = ticket.slot.release(ticket.revision).await;
            return Ok(None);
        }
        Ok(Some(MutexGuard {
            held: Held::new(ticket),
        }))
    }

    /// Waits for the lock for at most `after` (on the session's clock).
    ///
    /// # Errors
    /// [`crate::RecipeError::Timeout`] when `after` passed (nothing is
    /// held); otherwise as [`Mutex::lock`].
    pub async fn lock_with_timeout(&self, after: Duration) -> Result<MutexGuard> {
        self.session.env().timeout(after, self.lock()).await
    }

    /// The session.
    pub fn session(&self) -> &Session {
        &self.session
    }
}

/// A held [`Mutex`]. [`MutexGuard::unlock`] releases it; dropping the
/// guard releases it in the background.
pub struct MutexGuard {
    held: Held,
}

impl fmt::Debug for MutexGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexGuard")
            .field("key", &String::from_utf8_lossy(&self.held.slot.key))
            .field("token", &self.held.revision)
            .finish()
    }
}

impl MutexGuard {
    /// The fencing token: the key's create revision, strictly higher for
    /// every later holder. Pass it to what the lock protects and have it
    /// refuse lower ones ([`crate::Fence`]).
    pub fn fencing_token(&self) -> FencingToken {
        FencingToken(self.held.revision)
    }

    /// The holder's key.
    pub fn key(&self) -> &[u8] {
        &self.held.slot.key
    }

    /// A compare to add to your own transactions: they then apply only
    /// while this guard still holds the lock.
    pub fn compare(&self) -> Compare {
        self.held.compare()
    }

    /// Resolves when the session is lost (by the local clock, early): stop
    /// acting as the holder.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.held.slot.session.lost()
    }

    /// True once the session is lost.
    pub fn is_lost(&self) -> bool {
        self.held.slot.session.is_lost()
    }

    /// Releases the lock.
    ///
    /// # Errors
    /// [`crate::RecipeError::NotHeld`] when the lock was already lost (the
    /// lease expired); [`crate::RecipeError::Kv`] when the release failed
    /// (it is retried in the background; the lease bounds it anyway).
    pub async fn unlock(self) -> Result<()> {
        self.held.release().await
    }
}
