//! Fault injection that an operator or a test turns on explicitly
//! (`--enable-failpoints`), as etcd's failpoints: a slow disk under the
//! raft log. Off by default: the log always goes through [`SlowLog`], but
//! only `--enable-failpoints` serves the route that sets its delay.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ha_core::eraftpb::{Entry, HardState};
use ha_core::{LogPoint, LogStore, LogWrite, MemberIdentity, StorageError};

/// The largest disk delay `POST /v1/debug/disk-delay` accepts.
pub const MAX_DISK_DELAY: Duration = Duration::from_secs(10);

/// A delay added to every durable write of the raft log, changeable while
/// the member runs.
#[derive(Clone, Debug, Default)]
pub struct DiskDelay(Arc<AtomicU64>);

impl DiskDelay {
    /// The delay now.
    pub fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }

    /// Sets the delay (`Duration::ZERO`: none), at most [`MAX_DISK_DELAY`].
    pub fn set(&self, delay: Duration) {
        let ms = delay.min(MAX_DISK_DELAY).as_millis() as u64;
        self.0.store(ms, Ordering::Relaxed);
    }
}

/// A [`LogStore`] whose [`persist`](LogStore::persist) first waits out a
/// [`DiskDelay`]: what a disk whose syncs take that long looks like to the
/// member (its log writer thread is the only caller of `persist`, so
/// later writes queue behind a slow one, as behind a slow fsync).
pub struct SlowLog<L> {
    inner: Arc<L>,
    delay: DiskDelay,
}

impl<L> SlowLog<L> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<L>, delay: DiskDelay) -> Self {
        SlowLog { inner, delay }
    }
}

impl<L: LogStore> LogStore for SlowLog<L> {
    fn identity(&self) -> Result<Option<MemberIdentity>, StorageError> {
        self.inner.identity()
    }
    fn set_identity(&self, identity: &MemberIdentity) -> Result<(), StorageError> {
        self.inner.set_identity(identity)
    }
    fn hard_state(&self) -> Result<HardState, StorageError> {
        self.inner.hard_state()
    }
    fn first_index(&self) -> Result<u64, StorageError> {
        self.inner.first_index()
    }
    fn last_index(&self) -> Result<u64, StorageError> {
        self.inner.last_index()
    }
    fn term(&self, index: u64) -> Result<u64, StorageError> {
        self.inner.term(index)
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(low, high, max_size)
    }
    fn append_readable(&self, entries: &[Entry]) -> Result<(), StorageError> {
        self.inner.append_readable(entries)
    }
    fn persist(&self, write: &LogWrite) -> Result<(), StorageError> {
        let delay = self.delay.get();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        self.inner.persist(write)
    }
    fn restart_readable(&self, point: LogPoint) -> Result<(), StorageError> {
        self.inner.restart_readable(point)
    }
    fn compact(&self, through: u64) -> Result<(), StorageError> {
        self.inner.compact(through)
    }
    fn pending_install(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.pending_install()
    }
    fn set_pending_install(&self, marker: &[u8]) -> Result<(), StorageError> {
        self.inner.set_pending_install(marker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_is_capped_and_cleared() {
        let d = DiskDelay::default();
        assert_eq!(d.get(), Duration::ZERO);
        d.set(Duration::from_millis(250));
        assert_eq!(d.get(), Duration::from_millis(250));
        d.set(Duration::from_secs(3600));
        assert_eq!(d.get(), MAX_DISK_DELAY);
        d.set(Duration::ZERO);
        assert_eq!(d.get(), Duration::ZERO);
    }
}
