//! Caller bugs that every backend refuses instead of corrupting its data.

use std::sync::Arc;

use ha_core::StorageError;
use ha_core::eraftpb::Entry;

/// A caller broke a storage contract (a gap in the log, a non-contiguous
/// write, an inverted range). A backend that trusted the caller would
/// corrupt itself; ours refuse, so the bug surfaces as an error instead of
/// as lost data.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Misuse {
    #[error("entries are not contiguous: index {found} follows {previous}")]
    NotContiguous { previous: u64, found: u64 },
    #[error("entries starting at {first} leave a gap after the last index {last}")]
    Gap { first: u64, last: u64 },
    #[error(
        "entries starting at {first} would overwrite compacted entries (first index {first_index})"
    )]
    OverwritesCompacted { first: u64, first_index: u64 },
    #[error(
        "a write ending at {last} would delete stored entries from {} that the readable log still holds",
        last + 1
    )]
    #[cfg_attr(not(feature = "rocksdb"), allow(dead_code))]
    TruncatesReadable { last: u64 },
    #[error("invalid entry range [{low}, {high})")]
    InvertedRange { low: u64, high: u64 },
    #[error("cannot compact through {through}: {reason}")]
    CannotCompact { through: u64, reason: &'static str },
    #[error("entries starting at {first} do not follow a snapshot at {snapshot}")]
    NotAfterSnapshot { first: u64, snapshot: u64 },
}

impl From<Misuse> for StorageError {
    fn from(m: Misuse) -> Self {
        StorageError::Other(Arc::new(m))
    }
}

/// Refuses a log restart whose entries do not start right after it.
pub(crate) fn check_after_snapshot(write: &ha_core::LogWrite) -> Result<(), Misuse> {
    if let (Some(point), Some(first)) = (write.snapshot, write.entries.first()) {
        if Some(first.index) != point.index.checked_add(1) {
            return Err(Misuse::NotAfterSnapshot {
                first: first.index,
                snapshot: point.index,
            });
        }
    }
    Ok(())
}

/// Refuses entries that are not contiguous and ascending.
pub(crate) fn check_contiguous(entries: &[Entry]) -> Result<(), Misuse> {
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index.wrapping_add(1) {
            return Err(Misuse::NotContiguous {
                previous: pair[0].index,
                found: pair[1].index,
            });
        }
    }
    Ok(())
}
