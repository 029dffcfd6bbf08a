//! The conformance suites pass against the in-memory backends and the
//! RocksDB ones, and fail — naming the broken case — against deliberately
//! broken ones, which shows they can catch a bug at all.

use std::panic::{self, AssertUnwindSafe};

use ha_core::eraftpb::{Entry, HardState};
use ha_core::{
    LogPoint, LogStore, LogWrite, MemberIdentity, StateStore, StateView, StorageError, WriteBatch,
};
use ha_storage::testing::{
    durable_log_store_suite, durable_state_store_suite, log_store_suite, state_store_suite,
};
use ha_storage::{MemLogStore, MemStateStore};

#[test]
fn mem_log_store_passes() {
    log_store_suite(MemLogStore::new);
}

#[test]
fn mem_state_store_passes() {
    state_store_suite(MemStateStore::new);
}

#[test]
fn mem_stores_pass_the_durable_suites_with_a_crash_as_reopen() {
    durable_log_store_suite(|| (MemLogStore::new(), ()), |store, _| Ok(store.crash()));
    durable_state_store_suite(|| (MemStateStore::new(), ()), |store, _| Ok(store.crash()));
}

#[cfg(feature = "rocksdb")]
mod rocks {
    use ha_storage::testing::{durable_log_store_suite, durable_state_store_suite};
    use ha_storage::{RocksEnv, RocksLogStore, RocksStateStore, StorageConfig};
    use tempfile::TempDir;

    fn log_suite(config: StorageConfig) {
        let env = RocksEnv::new(&config).unwrap();
        durable_log_store_suite(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = RocksLogStore::open(dir.path(), &config, &env).unwrap();
                (store, dir)
            },
            |store, dir: &TempDir| {
                drop(store);
                RocksLogStore::open(dir.path(), &config, &env)
            },
        );
    }

    #[test]
    fn rocks_log_store_passes() {
        log_suite(StorageConfig::default());
    }

    /// Every persisted entry is read back from RocksDB rather than from
    /// the in-memory tail.
    #[test]
    fn rocks_log_store_passes_without_a_tail_cache() {
        log_suite(StorageConfig {
            log_cache_bytes: 0,
            ..StorageConfig::default()
        });
    }

    #[test]
    fn rocks_state_store_passes() {
        let config = StorageConfig::default();
        let env = RocksEnv::new(&config).unwrap();
        durable_state_store_suite(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = RocksStateStore::open(dir.path(), &config, &env).unwrap();
                (store, dir)
            },
            |store, dir: &TempDir| {
                drop(store);
                RocksStateStore::open(dir.path(), &config, &env)
            },
        );
    }
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
    fn restart_readable(&self, point: LogPoint) -> Result<(), StorageError> {
        self.0.restart_readable(point)
    }
    fn compact(&self, through: u64) -> Result<(), StorageError> {
        LogStore::compact(&self.0, through)
    }
    fn pending_install(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.0.pending_install()
    }
    fn set_pending_install(&self, marker: &[u8]) -> Result<(), StorageError> {
        self.0.set_pending_install(marker)
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
    fn read_consistent(
        &self,
        read: &mut dyn FnMut(&dyn StateView) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        self.0.read_consistent(read)
    }
    fn restore(
        &self,
        pairs: &mut dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>>,
    ) -> Result<(), StorageError> {
        self.0.restore(pairs)
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
    fn read_consistent(
        &self,
        read: &mut dyn FnMut(&dyn StateView) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        self.0.read_consistent(read)
    }
    fn restore(
        &self,
        pairs: &mut dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>>,
    ) -> Result<(), StorageError> {
        self.0.restore(pairs)
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

/// A "reopen" that keeps the entries and the identity but forgets the hard
/// state, as a backend that never wrote it to disk would.
fn reopen_forgetting_the_hard_state(store: MemLogStore) -> MemLogStore {
    let survivor = store.crash();
    let reopened = MemLogStore::new();
    let (first, last) = (
        survivor.first_index().unwrap(),
        survivor.last_index().unwrap(),
    );
    let entries = survivor.entries(first, last + 1, None).unwrap();
    reopened.append_readable(&entries).unwrap();
    reopened
        .persist(&LogWrite {
            snapshot: None,
            entries,
            hard_state: None,
            sync: true,
        })
        .unwrap();
    if let Some(identity) = survivor.identity().unwrap() {
        reopened.set_identity(&identity).unwrap();
    }
    reopened
}

#[test]
fn durable_log_suite_catches_a_forgotten_hard_state() {
    let message = suite_failure(|| {
        durable_log_store_suite(
            || (MemLogStore::new(), ()),
            |store, _| Ok(reopen_forgetting_the_hard_state(store)),
        )
    });
    assert!(
        message.contains("case `hard_state_survives_reopen`: hard_state after a reopen"),
        "the suite failed, but not on the hard-state reopen case:\n{message}"
    );
    assert!(
        !message.contains("case `entries_survive_reopen`"),
        "the suite blamed entries that the broken reopen keeps:\n{message}"
    );
}

/// A state store whose reopen loses every write since the last reopen,
/// synced or not.
#[test]
fn durable_state_suite_catches_lost_synced_writes() {
    let message = suite_failure(|| {
        durable_state_store_suite(
            || (MemStateStore::new(), ()),
            |_, _| Ok(MemStateStore::new()),
        )
    });
    assert!(
        message.contains("case `synced_batches_survive_reopen`"),
        "the suite failed, but not on the state reopen case:\n{message}"
    );
}
