//! The conformance suites pass against the in-memory backends, and fail —
//! naming the broken case — against deliberately broken ones, which shows
//! they can catch a bug at all.

use std::panic::{self, AssertUnwindSafe};

use ha_core::eraftpb::{Entry, HardState};
use ha_core::{LogStore, LogWrite, MemberIdentity, StateStore, StorageError, WriteBatch};
use ha_storage::testing::{log_store_suite, state_store_suite};
use ha_storage::{MemLogStore, MemStateStore};

#[test]
fn mem_log_store_passes() {
    log_store_suite(MemLogStore::new);
}

#[test]
fn mem_state_store_passes() {
    state_store_suite(MemStateStore::new);
}

/// Runs `suite` and returns its panic message, failing the test if it passed.
fn suite_failure(suite: impl FnOnce()) -> String {
    let payload = match panic::catch_unwind(AssertUnwindSafe(suite)) {
        Ok(()) => panic!("the suite passed a broken backend"),
        Err(payload) => payload,
    };
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// A log whose `append_readable` never truncates: entries at or below the
/// last index are ignored instead of replacing a conflicting suffix.
struct NoTruncateLog(MemLogStore);

impl LogStore for NoTruncateLog {
    fn identity(&self) -> Result<Option<MemberIdentity>, StorageError> {
        self.0.identity()
    }
    fn set_identity(&self, identity: &MemberIdentity) -> Result<(), StorageError> {
        self.0.set_identity(identity)
    }
    fn hard_state(&self) -> Result<HardState, StorageError> {
        self.0.hard_state()
    }
    fn first_index(&self) -> Result<u64, StorageError> {
        self.0.first_index()
    }
    fn last_index(&self) -> Result<u64, StorageError> {
        self.0.last_index()
    }
    fn term(&self, index: u64) -> Result<u64, StorageError> {
        self.0.term(index)
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        self.0.entries(low, high, max_size)
    }
    fn append_readable(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let last = self.0.last_index()?;
        let new: Vec<Entry> = entries.iter().filter(|e| e.index > last).cloned().collect();
        self.0.append_readable(&new)
    }
    fn persist(&self, write: &LogWrite) -> Result<(), StorageError> {
        self.0.persist(write)
    }
}

/// A state store whose `scan` ignores the end bound.
struct UnboundedScanState(MemStateStore);

impl StateStore for UnboundedScanState {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.0.get(key)
    }
    fn scan(
        &self,
        start: &[u8],
        _end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        self.0.scan(start, None, visit)
    }
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        self.0.write(batch, sync)
    }
}

#[test]
fn log_suite_catches_a_missing_truncation() {
    let message = suite_failure(|| log_store_suite(|| NoTruncateLog(MemLogStore::new())));
    assert!(
        message.contains("case `conflicting_append_truncates_suffix`"),
        "the suite failed, but not on the truncation case:\n{message}"
    );
}

#[test]
fn state_suite_catches_an_ignored_end_bound() {
    let message = suite_failure(|| state_store_suite(|| UnboundedScanState(MemStateStore::new())));
    assert!(
        message.contains("case `scan_is_ascending_within_bounds`"),
        "the suite failed, but not on the scan-bounds case:\n{message}"
    );
}

/// A state store that panics on `get`: the suite must still name the case.
struct PanickingGet(MemStateStore);

impl StateStore for PanickingGet {
    fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        panic!("get is broken")
    }
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        self.0.scan(start, end, visit)
    }
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        self.0.write(batch, sync)
    }
}

#[test]
fn state_suite_names_the_case_a_store_panics_in() {
    let message = suite_failure(|| state_store_suite(|| PanickingGet(MemStateStore::new())));
    assert!(
        message.contains("case `put_get_delete`: the store panicked: get is broken"),
        "the panic was not attributed to its case:\n{message}"
    );
}
