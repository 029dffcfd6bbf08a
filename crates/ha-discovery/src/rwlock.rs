//! A distributed readers-writer lock: many readers or one writer, FIFO.

use std::fmt;
use std::future::Future;

use ha_core::{Compare, KeyValue};

use crate::error::{LostReason, Result};
use crate::fence::FencingToken;
use crate::queue::{self, Blocker, Held};
use crate::session::Session;

const READ: &[u8] = b"read";
const WRITE: &[u8] = b"write";

/// How an [`RwLockGuard`] holds its lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RwMode {
    /// Shared with other readers.
    Read,
    /// Exclusive.
    Write,
}

/// A readers-writer lock: a reader waits for the writers queued ahead of
/// it, a writer for everyone ahead of it; each watches only the last key
/// that blocks it. Keys are `<name>/<lease-hex>` with the mode as value.
/// One session holds or waits for a given lock once at a time
/// (concurrent calls through one session queue locally).
#[derive(Clone)]
pub struct RwLock {
    session: Session,
    prefix: Vec<u8>,
}

impl fmt::Debug for RwLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .finish()
    }
}

fn last_writer(ahead: &[KeyValue]) -> Option<Blocker> {
    ahead
        .iter()
        .rev()
        .find(|kv| kv.value == WRITE)
        .map(|kv| Blocker::Key(kv.key.clone()))
}

fn last_any(ahead: &[KeyValue]) -> Option<Blocker> {
    ahead.last().map(|kv| Blocker::Key(kv.key.clone()))
}

impl RwLock {
    /// The lock called `name`, used through `session`.
    pub fn new(session: &Session, name: &str) -> RwLock {
        RwLock {
            session: session.clone(),
            prefix: format!("{name}/").into_bytes(),
        }
    }

    /// Waits for a shared hold.
    ///
    /// # Errors
    /// As [`crate::Mutex::lock`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`crate::Mutex::lock`].
    pub async fn read(&self) -> Result<RwLockGuard> {
        self.acquire(RwMode::Read).await
    }

    /// Waits for an exclusive hold.
    ///
    /// # Errors
    /// As [`crate::Mutex::lock`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`crate::Mutex::lock`].
    pub async fn write(&self) -> Result<RwLockGuard> {
        self.acquire(RwMode::Write).await
    }

    async fn acquire(&self, mode: RwMode) -> Result<RwLockGuard> {
        let value = match mode {
            RwMode::Read => READ,
            RwMode::Write => WRITE,
        };
        let mut ticket = loop {
            let ticket = queue::enqueue(&self.session, &self.prefix, value).await?;
            match &ticket.adopted {
                // A key from before a restart, in the other mode: leave
                // the queue and join again in this one.
                Some(v) if v != value => ticket.slot.release(ticket.revision).await?,
                _ => break ticket,
            }
        };
        match mode {
            RwMode::Read => queue::wait_turn(&mut ticket, &self.prefix, last_writer).await?,
            RwMode::Write => queue::wait_turn(&mut ticket, &self.prefix, last_any).await?,
        }
        Ok(RwLockGuard {
            held: Held::new(ticket),
            mode,
        })
    }
}

/// A held [`RwLock`]; released by [`RwLockGuard::unlock`] or, in the
/// background, when dropped.
pub struct RwLockGuard {
    held: Held,
    mode: RwMode,
}

impl fmt::Debug for RwLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLockGuard")
            .field("mode", &self.mode)
            .field("token", &self.held.revision)
            .finish()
    }
}

impl RwLockGuard {
    /// Read or write.
    pub fn mode(&self) -> RwMode {
        self.mode
    }

    /// The key's create revision. For writers it is a fencing token
    /// (increasing across writers); readers share the lock, so theirs only
    /// orders them against writers.
    pub fn fencing_token(&self) -> FencingToken {
        FencingToken(self.held.revision)
    }

    /// A compare: "this hold still exists".
    pub fn compare(&self) -> Compare {
        self.held.compare()
    }

    /// Resolves when the session is lost.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.held.slot.session.lost()
    }

    /// Releases the hold.
    ///
    /// # Errors
    /// As [`crate::MutexGuard::unlock`].
    pub async fn unlock(self) -> Result<()> {
        self.held.release().await
    }
}
