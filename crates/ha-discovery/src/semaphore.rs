//! A distributed counting semaphore: N permits, FIFO.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use ha_core::{Compare, KeyValue};

use crate::error::{LostReason, RecipeError, Result};
use crate::queue::{self, Blocker, Held};
use crate::session::Session;

/// `permits` holders at once: the first `permits` keys by create revision
/// hold one each, the others wait. A waiter with `k >= permits` keys
/// ahead needs `k - permits + 1` of them gone, and any of them may go
/// first, so it watches deletions among the keys ahead of it: a release
/// wakes the waiters behind it (not one, as for a mutex — a semaphore's
/// waiters re-check on each release). One session holds one permit of a
/// given semaphore at a time.
///
/// Every user of a semaphore must agree on `permits`.
#[derive(Clone)]
pub struct Semaphore {
    session: Session,
    prefix: Vec<u8>,
    permits: usize,
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("permits", &self.permits)
            .finish()
    }
}

impl Semaphore {
    /// The semaphore called `name` with `permits` permits.
    ///
    /// # Errors
    /// [`RecipeError::InvalidArgument`] for zero permits.
    pub fn new(session: &Session, name: &str, permits: usize) -> Result<Semaphore> {
        if permits == 0 {
            return Err(RecipeError::InvalidArgument {
                reason: "a semaphore needs at least one permit",
            });
        }
        Ok(Semaphore {
            session: session.clone(),
            prefix: format!("{name}/").into_bytes(),
            permits,
        })
    }

    /// Waits for a permit.
    ///
    /// # Errors
    /// As [`crate::Mutex::lock`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`crate::Mutex::lock`].
    pub async fn acquire(&self) -> Result<Permit> {
        let mut ticket = queue::enqueue(&self.session, &self.prefix, b"").await?;
        let permits = self.permits;
        queue::wait_turn(&mut ticket, &self.prefix, |ahead: &[KeyValue]| {
            (ahead.len() >= permits)
                .then(|| Blocker::AnyOf(ahead.iter().map(|kv| kv.key.clone()).collect()))
        })
        .await?;
        Ok(Permit {
            held: Held::new(ticket),
        })
    }

    /// Waits for a permit for at most `after`.
    ///
    /// # Errors
    /// [`RecipeError::Timeout`] when `after` passed; otherwise as
    /// [`Semaphore::acquire`].
    pub async fn acquire_with_timeout(&self, after: Duration) -> Result<Permit> {
        self.session.env().timeout(after, self.acquire()).await
    }

    /// The number of permits.
    pub fn permits(&self) -> usize {
        self.permits
    }
}

/// A held permit; released by [`Permit::release`] or, in the background,
/// when dropped.
pub struct Permit {
    held: Held,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("revision", &self.held.revision)
            .finish()
    }
}

impl Permit {
    /// A compare: "this permit is still held".
    pub fn compare(&self) -> Compare {
        self.held.compare()
    }

    /// Resolves when the session is lost.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.held.slot.session.lost()
    }

    /// Gives the permit back.
    ///
    /// # Errors
    /// As [`crate::MutexGuard::unlock`].
    pub async fn release(self) -> Result<()> {
        self.held.release().await
    }
}
