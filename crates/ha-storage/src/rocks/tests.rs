//! The RocksDB backends against real files: durability counters, the
//! readable tail under a concurrent writer, compaction, and damaged data
//! directories, each damaged the way a device or an operator would damage
//! it, which must make the open (or the read that meets the damage) fail
//! with a typed error.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use ha_core::eraftpb::{Entry, HardState};
use ha_core::{
    ClusterId, LogStore, LogWrite, MemberIdentity, NodeId, StateStore, StorageError, WriteBatch,
};
use tempfile::TempDir;

use super::codec::{FORMAT_VERSION, encode_format};
use super::log::{COMPACTED_KEY, FORMAT_KEY, HARD_STATE_KEY, IDENTITY_KEY, entry_key};
use super::state::{FORMAT_KEY as STATE_FORMAT_KEY, META_CF, RECORDS_CF};
use super::{RocksEnv, RocksLogStats, RocksLogStore, RocksStateStore, StorageConfig};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry {index} of term {term}").into_bytes(),
        ..Default::default()
    }
}

fn run(first: u64, last: u64, term: u64) -> Vec<Entry> {
    (first..=last).map(|i| entry(i, term)).collect()
}

fn write(entries: Vec<Entry>, sync: bool) -> LogWrite {
    LogWrite {
        snapshot: None,
        entries,
        hard_state: None,
        sync,
    }
}

fn all_entries(store: &impl LogStore) -> Result<Vec<Entry>, StorageError> {
    let (first, last) = (store.first_index()?, store.last_index()?);
    store.entries(first, last + 1, None)
}

fn identity() -> MemberIdentity {
    MemberIdentity {
        cluster_id: ClusterId::derive(&[NodeId(1), NodeId(2), NodeId(3)], "rocks"),
        node_id: NodeId(2),
        incarnation: 7,
    }
}

/// A member's data directory.
struct Member {
    dir: TempDir,
    config: StorageConfig,
}

impl Member {
    fn new() -> Self {
        Self::with_config(StorageConfig::default())
    }

    fn with_config(config: StorageConfig) -> Self {
        Member {
            dir: tempfile::tempdir().unwrap(),
            config,
        }
    }

    /// Opens the member as a new process would: with a new environment,
    /// whose block cache holds nothing read before.
    fn open(&self) -> Result<(RocksLogStore, RocksStateStore), StorageError> {
        RocksEnv::new(&self.config)?.open(self.dir.path(), &self.config)
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A log holding entries 1..=5 of term 1, a hard state and an
    /// identity, flushed to a table file, then closed.
    fn with_stored_log(self) -> Self {
        let (log, state) = self.open().unwrap();
        log.append_readable(&run(1, 5, 1)).unwrap();
        log.persist(&LogWrite {
            snapshot: None,
            entries: run(1, 5, 1),
            hard_state: Some(HardState {
                term: 1,
                vote: 2,
                commit: 5,
            }),
            sync: true,
        })
        .unwrap();
        log.set_identity(&identity()).unwrap();
        log.flush().unwrap();
        let mut batch = WriteBatch::new();
        for i in 0..100 {
            batch.put(format!("key {i:03}"), vec![b'v'; 100]);
        }
        state.write(batch, true).unwrap();
        state.flush().unwrap();
        self
    }
}

/// Changes a value with RocksDB directly, under ha's checksums: the
/// database stays valid for RocksDB, only ha can tell.
fn rewrite(
    path: &Path,
    cf: Option<&str>,
    key: &[u8],
    change: impl FnOnce(Option<Vec<u8>>) -> Option<Vec<u8>>,
) {
    // RocksDB opens a database only with every column family it has.
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), path).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), path, &cfs).unwrap();
    match cf.map(|cf| db.cf_handle(cf).unwrap()) {
        Some(handle) => match change(db.get_cf(handle, key).unwrap()) {
            Some(value) => db.put_cf(handle, key, value).unwrap(),
            None => db.delete_cf(handle, key).unwrap(),
        },
        None => match change(db.get(key).unwrap()) {
            Some(value) => db.put(key, value).unwrap(),
            None => db.delete(key).unwrap(),
        },
    }
    db.flush_wal(true).unwrap();
}

/// Flips one bit of the stored value at `key` in the log DB.
fn flip_log_value(member: &Member, key: &[u8]) {
    rewrite(&member.log_dir(), None, key, |value| {
        let mut value = value.expect("the record to damage exists");
        value[0] ^= 0x10;
        Some(value)
    });
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    found
}

fn manifest(dir: &Path) -> PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("MANIFEST-")
        })
        .expect("a MANIFEST file")
}

#[track_caller]
fn expect_corrupt<T: std::fmt::Debug>(result: Result<T, StorageError>, naming: &str) {
    match result {
        Err(StorageError::Corrupt { what, detail }) => assert!(
            what.contains(naming) || detail.contains(naming),
            "the corruption error does not name {naming:?}: what = {what:?}, detail = {detail:?}"
        ),
        other => panic!("expected Corrupt naming {naming:?}, got {other:?}"),
    }
}

/// The open fails, or else the first full read does, with a typed error
/// that is not a silent empty answer.
#[track_caller]
fn expect_open_or_read_fails(member: &Member) -> StorageError {
    let (log, state) = match member.open() {
        Err(e) => return e,
        Ok(stores) => stores,
    };
    if let Err(e) = all_entries(&log) {
        return e;
    }
    let scan = state.scan(b"", None, &mut |_, _| true);
    match scan {
        Err(e) => e,
        Ok(()) => panic!("the damaged directory opened and read without an error"),
    }
}

// ---------------------------------------------------------------------------
// Durability and batching
// ---------------------------------------------------------------------------

#[test]
fn only_synced_persists_sync_the_wal() {
    let member = Member::new();
    let (log, _) = member.open().unwrap();
    let before = log.wal_syncs();
    log.append_readable(&run(1, 10, 1)).unwrap();
    log.persist(&write(run(1, 5, 1), false)).unwrap();
    assert_eq!(
        log.wal_syncs(),
        before,
        "an unsynced persist synced the WAL"
    );
    log.persist(&write(run(6, 10, 1), true)).unwrap();
    assert_eq!(
        log.wal_syncs(),
        before + 1,
        "one synced persist, one WAL sync"
    );
    log.persist(&LogWrite {
        snapshot: None,
        entries: vec![],
        hard_state: Some(HardState {
            term: 1,
            vote: 1,
            commit: 10,
        }),
        sync: true,
    })
    .unwrap();
    assert_eq!(log.wal_syncs(), before + 2);
    // An empty synced write still makes the earlier writes durable.
    log.persist(&write(vec![], true)).unwrap();
    assert!(
        log.wal_syncs() >= before + 3,
        "an empty synced persist did not sync"
    );
    assert_eq!(
        log.stats(),
        RocksLogStats {
            persist_calls: 4,
            syncs: 3,
            entries_persisted: 10,
        }
    );
    let before = log.wal_syncs();
    log.set_identity(&identity()).unwrap();
    assert_eq!(log.wal_syncs(), before + 1, "set_identity must sync");
}

#[test]
fn hard_state_is_the_durable_one() {
    let member = Member::new();
    let (log, _) = member.open().unwrap();
    let synced = HardState {
        term: 2,
        vote: 1,
        commit: 0,
    };
    let unsynced = HardState {
        commit: 4,
        ..synced.clone()
    };
    log.persist(&LogWrite {
        snapshot: None,
        entries: vec![],
        hard_state: Some(synced.clone()),
        sync: true,
    })
    .unwrap();
    log.persist(&LogWrite {
        snapshot: None,
        entries: vec![],
        hard_state: Some(unsynced.clone()),
        sync: false,
    })
    .unwrap();
    assert_eq!(
        log.hard_state().unwrap(),
        synced,
        "an unsynced hard state is not durable yet"
    );
    log.persist(&write(vec![], true)).unwrap();
    assert_eq!(
        log.hard_state().unwrap(),
        unsynced,
        "a sync makes the earlier hard state durable"
    );
}

#[test]
fn unpersisted_entries_stay_readable_with_no_tail_budget() {
    let member = Member::with_config(StorageConfig {
        log_cache_bytes: 0,
        ..StorageConfig::default()
    });
    let (log, _) = member.open().unwrap();
    log.append_readable(&run(1, 10, 1)).unwrap();
    log.persist(&write(run(1, 4, 1), true)).unwrap();
    assert_eq!(all_entries(&log).unwrap(), run(1, 10, 1));
    // A new leader overwrites from 3 before the writer stored 5..=10.
    log.append_readable(&run(3, 6, 2)).unwrap();
    log.persist(&write(run(5, 10, 1), false)).unwrap();
    let expected = [run(1, 2, 1), run(3, 6, 2)].concat();
    assert_eq!(all_entries(&log).unwrap(), expected);
    log.persist(&write(run(3, 6, 2), true)).unwrap();
    assert_eq!(all_entries(&log).unwrap(), expected);
    drop(log);
    let (log, _) = member.open().unwrap();
    assert_eq!(
        all_entries(&log).unwrap(),
        expected,
        "the stored log after a reopen"
    );
}

#[test]
fn a_concurrent_writer_never_disturbs_the_readable_log() {
    // The raft thread appends (sometimes overwriting a suffix) and reads
    // while the log writer persists the same writes in order, as in the
    // engine.
    let member = Member::with_config(StorageConfig {
        log_cache_bytes: 512,
        ..StorageConfig::default()
    });
    let (log, _) = member.open().unwrap();
    let (tx, rx) = mpsc::channel::<LogWrite>();
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for w in rx {
                log.persist(&w).unwrap();
            }
        })
    };
    let mut model: Vec<Entry> = Vec::new();
    let mut seed = 0x1234_5678_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut term = 1;
    for _ in 0..2000 {
        let len = model.len() as u64;
        let first = if next() % 8 == 0 {
            term += 1;
            len.saturating_sub(next() % 4).max(1)
        } else {
            len + 1
        };
        let batch: Vec<Entry> = (first..first + 1 + next() % 4)
            .map(|i| entry(i, term))
            .collect();
        log.append_readable(&batch).unwrap();
        model.truncate(first as usize - 1);
        model.extend_from_slice(&batch);
        tx.send(write(batch, next() % 4 == 0)).unwrap();
        let last = model.len() as u64;
        let low = last.saturating_sub(next() % 40).max(1);
        assert_eq!(
            log.entries(low, last + 1, None).unwrap(),
            model[low as usize - 1..],
            "the readable log differs from the model while the writer runs"
        );
        assert_eq!(log.term(low).unwrap(), model[low as usize - 1].term);
    }
    drop(tx);
    writer.join().unwrap();
    log.persist(&write(vec![], true)).unwrap();
    assert_eq!(all_entries(&log).unwrap(), model);
    drop(log);
    let (log, _) = member.open().unwrap();
    assert_eq!(
        all_entries(&log).unwrap(),
        model,
        "the stored log after a reopen"
    );
}

#[test]
fn compaction_drops_entries_and_survives_reopen() {
    let member = Member::with_config(StorageConfig {
        log_cache_bytes: 0,
        ..StorageConfig::default()
    });
    let (log, _) = member.open().unwrap();
    log.append_readable(&[run(1, 5, 1), run(6, 10, 2)].concat())
        .unwrap();
    log.persist(&write([run(1, 5, 1), run(6, 8, 2)].concat(), true))
        .unwrap();
    // 9 and 10 are not persisted yet: they cannot be compacted.
    assert!(matches!(log.compact(9), Err(StorageError::Other(_))));
    log.compact(6).unwrap();
    log.compact(3).unwrap(); // below the compaction point: nothing to do
    let check = |log: &RocksLogStore, when: &str| {
        assert_eq!(log.first_index().unwrap(), 7, "{when}: first_index");
        assert_eq!(
            log.term(6).unwrap(),
            2,
            "{when}: the compaction point's term"
        );
        assert!(
            matches!(log.term(5), Err(StorageError::Compacted { first_index: 7 })),
            "{when}: term(5)"
        );
        assert!(
            matches!(
                log.entries(6, 8, None),
                Err(StorageError::Compacted { first_index: 7 })
            ),
            "{when}: entries(6, 8)"
        );
    };
    check(&log, "after compacting");
    assert_eq!(all_entries(&log).unwrap(), run(7, 10, 2));
    log.persist(&write(run(9, 10, 2), true)).unwrap();
    drop(log);
    let (log, _) = member.open().unwrap();
    check(&log, "after a reopen");
    assert_eq!(all_entries(&log).unwrap(), run(7, 10, 2));
    // Overwriting compacted entries is refused.
    assert!(matches!(
        log.append_readable(&run(5, 6, 3)),
        Err(StorageError::Other(_))
    ));
    assert!(matches!(
        log.persist(&write(run(5, 6, 3), true)),
        Err(StorageError::Other(_))
    ));
}

#[test]
fn misuse_is_refused_without_effect() {
    let member = Member::with_config(StorageConfig {
        log_cache_bytes: 0,
        ..StorageConfig::default()
    });
    let (log, _) = member.open().unwrap();
    log.append_readable(&run(1, 5, 1)).unwrap();
    log.persist(&write(run(1, 5, 1), true)).unwrap();
    let gap = log.append_readable(&run(7, 8, 1));
    assert!(matches!(gap, Err(StorageError::Other(_))), "{gap:?}");
    let gap = log.persist(&write(run(7, 8, 1), true));
    assert!(matches!(gap, Err(StorageError::Other(_))), "{gap:?}");
    let holes = log.append_readable(&[entry(6, 1), entry(8, 1)]);
    assert!(matches!(holes, Err(StorageError::Other(_))), "{holes:?}");
    // Writing 1 alone would delete 2..=5, which the readable log serves
    // from RocksDB.
    let truncation = log.persist(&write(run(1, 1, 1), true));
    assert!(
        matches!(truncation, Err(StorageError::Other(_))),
        "{truncation:?}"
    );
    assert_eq!(all_entries(&log).unwrap(), run(1, 5, 1));
    assert_eq!(
        log.stats().persist_calls,
        1,
        "a refused persist was counted"
    );
}

#[test]
fn members_share_one_environment() {
    let config = StorageConfig::default();
    let env = RocksEnv::new(&config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let members: Vec<_> = (1..=3)
        .map(|m| {
            env.open(&dir.path().join(format!("member-{m}")), &config)
                .unwrap()
        })
        .collect();
    let before = env.block_cache_usage();
    for (log, state) in &members {
        log.append_readable(&run(1, 3, 1)).unwrap();
        log.persist(&write(run(1, 3, 1), true)).unwrap();
        let mut batch = WriteBatch::new();
        batch.put("k", "v");
        state.write(batch, true).unwrap();
        state.flush().unwrap();
        assert_eq!(state.get(b"k").unwrap(), Some(b"v".to_vec()));
    }
    assert!(
        env.block_cache_usage() > before,
        "reads of every member's table files go through the shared cache"
    );
    // A data directory is open once at a time.
    let again = env.open(&dir.path().join("member-1"), &config);
    assert!(matches!(again, Err(StorageError::Io { .. })), "{again:?}");
}

#[test]
fn an_invalid_config_is_refused() {
    let config = StorageConfig {
        max_background_jobs: 0,
        ..StorageConfig::default()
    };
    assert!(matches!(
        RocksEnv::new(&config),
        Err(StorageError::Other(_))
    ));
    let member = Member::new();
    let env = RocksEnv::new(&member.config).unwrap();
    let opened = env.open(member.dir.path(), &config);
    assert!(matches!(opened, Err(StorageError::Other(_))), "{opened:?}");
}

#[test]
fn every_compression_is_built_in() {
    for compression in [
        super::Compression::None,
        super::Compression::Lz4,
        super::Compression::Zstd,
    ] {
        let member = Member::with_config(StorageConfig {
            compression,
            ..StorageConfig::default()
        })
        .with_stored_log();
        let (log, state) = member.open().unwrap();
        assert_eq!(all_entries(&log).unwrap(), run(1, 5, 1), "{compression:?}");
        assert_eq!(
            state.get(b"key 099").unwrap(),
            Some(vec![b'v'; 100]),
            "{compression:?}"
        );
    }
}

#[test]
fn an_empty_database_without_a_format_record_is_initialised() {
    // What a crash between RocksDB creating the database and ha writing
    // its format record leaves.
    let member = Member::new();
    for (dir, cfs) in [
        (member.log_dir(), vec![]),
        (member.state_dir(), vec![META_CF]),
    ] {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        drop(rocksdb::DB::open_cf(&options, dir, cfs).unwrap());
    }
    let (log, state) = member.open().unwrap();
    assert_eq!(log.last_index().unwrap(), 0);
    assert_eq!(state.get(b"a").unwrap(), None);
    drop((log, state));
    member.open().unwrap();
}

// ---------------------------------------------------------------------------
// Damaged data directories
// ---------------------------------------------------------------------------

#[test]
fn an_undamaged_directory_reopens_with_everything() {
    let member = Member::new().with_stored_log();
    let (log, state) = member.open().unwrap();
    assert_eq!(all_entries(&log).unwrap(), run(1, 5, 1));
    assert_eq!(log.identity().unwrap(), Some(identity()));
    assert_eq!(log.hard_state().unwrap().commit, 5);
    assert_eq!(state.get(b"key 042").unwrap(), Some(vec![b'v'; 100]));
}

#[test]
fn a_damaged_entry_fails_the_read_that_meets_it() {
    let member = Member::new().with_stored_log();
    flip_log_value(&member, &entry_key(3));
    // The first and last entries are sound, so the open succeeds...
    let (log, _) = member.open().unwrap();
    assert_eq!(log.last_index().unwrap(), 5);
    assert_eq!(log.entries(1, 3, None).unwrap(), run(1, 2, 1));
    // ...and every read of entry 3 fails.
    expect_corrupt(log.entries(1, 6, None), "log entry 3");
    expect_corrupt(log.term(3), "log entry 3");
}

#[test]
fn a_damaged_last_entry_fails_open() {
    let member = Member::new().with_stored_log();
    flip_log_value(&member, &entry_key(5));
    expect_corrupt(member.open(), "log entry 5");
}

#[test]
fn an_entry_under_another_key_is_corrupt() {
    let member = Member::new().with_stored_log();
    // Entry 2's bytes, intact, moved under entry 4's key.
    let mut moved = None;
    rewrite(&member.log_dir(), None, &entry_key(2), |value| {
        moved = value.clone();
        value
    });
    rewrite(&member.log_dir(), None, &entry_key(4), |_| moved);
    let (log, _) = member.open().unwrap();
    expect_corrupt(log.term(4), "log entry 4");
}

#[test]
fn a_missing_entry_is_corrupt_not_unavailable() {
    let member = Member::new().with_stored_log();
    rewrite(&member.log_dir(), None, &entry_key(3), |_| None);
    let (log, _) = member.open().unwrap();
    expect_corrupt(log.entries(1, 6, None), "log entry 3");
    expect_corrupt(log.term(3), "log entry 3");
}

#[test]
fn damaged_metadata_fails_open() {
    for (key, naming) in [
        (HARD_STATE_KEY, "hard state"),
        (IDENTITY_KEY, "member identity"),
        (FORMAT_KEY, "format record"),
    ] {
        let member = Member::new().with_stored_log();
        flip_log_value(&member, key);
        expect_corrupt(member.open(), naming);
    }
    let member = Member::new().with_stored_log();
    let (log, _) = member.open().unwrap();
    log.compact(2).unwrap();
    drop(log);
    flip_log_value(&member, COMPACTED_KEY);
    expect_corrupt(member.open(), "compaction point");
}

#[test]
fn a_newer_format_fails_open() {
    let member = Member::new().with_stored_log();
    rewrite(&member.log_dir(), None, FORMAT_KEY, |_| {
        Some(encode_format(FORMAT_KEY, FORMAT_VERSION + 1))
    });
    let opened = member.open();
    assert!(
        matches!(
            opened,
            Err(StorageError::UnknownFormat { found, supported: FORMAT_VERSION }) if found == FORMAT_VERSION + 1
        ),
        "log DB: {opened:?}"
    );

    let member = Member::new().with_stored_log();
    rewrite(&member.state_dir(), Some(META_CF), STATE_FORMAT_KEY, |_| {
        Some(encode_format(STATE_FORMAT_KEY, 9))
    });
    let opened = member.open();
    assert!(
        matches!(opened, Err(StorageError::UnknownFormat { found: 9, .. })),
        "state DB: {opened:?}"
    );
}

#[test]
fn a_missing_format_record_fails_open_when_data_exists() {
    let member = Member::new().with_stored_log();
    rewrite(&member.log_dir(), None, FORMAT_KEY, |_| None);
    expect_corrupt(member.open(), "format record");

    let member = Member::new().with_stored_log();
    rewrite(&member.state_dir(), Some(META_CF), STATE_FORMAT_KEY, |_| {
        None
    });
    expect_corrupt(member.open(), "format record");
}

#[test]
fn a_damaged_table_file_is_reported() {
    for dir in ["log", "state"] {
        let member = Member::with_config(StorageConfig {
            compression: super::Compression::None,
            ..StorageConfig::default()
        })
        .with_stored_log();
        let tables = files(&member.dir.path().join(dir), ".sst");
        assert!(!tables.is_empty(), "{dir}: the flush wrote no table file");
        for table in tables {
            let mut bytes = fs::read(&table).unwrap();
            // The first data block starts the file.
            for b in &mut bytes[16..48] {
                *b ^= 0x5a;
            }
            fs::write(&table, bytes).unwrap();
        }
        let error = expect_open_or_read_fails(&member);
        assert!(
            matches!(error, StorageError::Corrupt { .. }),
            "{dir}: expected Corrupt, got {error:?}"
        );
    }
}

#[test]
fn a_truncated_table_file_fails_open() {
    for dir in ["log", "state"] {
        let member = Member::new().with_stored_log();
        for table in files(&member.dir.path().join(dir), ".sst") {
            let len = fs::metadata(&table).unwrap().len();
            fs::OpenOptions::new()
                .write(true)
                .open(&table)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        }
        expect_corrupt(member.open(), ".sst");
    }
}

#[test]
fn a_removed_table_file_fails_open() {
    for dir in ["log", "state"] {
        let member = Member::new().with_stored_log();
        for table in files(&member.dir.path().join(dir), ".sst") {
            fs::remove_file(table).unwrap();
        }
        expect_corrupt(member.open(), ".sst");
    }
}

#[test]
fn a_removed_current_file_fails_open() {
    for dir in ["log", "state"] {
        let member = Member::new().with_stored_log();
        fs::remove_file(member.dir.path().join(dir).join("CURRENT")).unwrap();
        expect_corrupt(member.open(), "no CURRENT file");
    }
}

#[test]
fn a_removed_manifest_fails_open() {
    for dir in ["log", "state"] {
        let member = Member::new().with_stored_log();
        fs::remove_file(manifest(&member.dir.path().join(dir))).unwrap();
        expect_corrupt(member.open(), "MANIFEST");
    }
}

#[test]
fn a_wal_removed_after_a_clean_close_loses_nothing() {
    // Entries written after the last flush live only in the WAL until the
    // close flushes them.
    let member = Member::new().with_stored_log();
    let (log, _) = member.open().unwrap();
    log.append_readable(&run(6, 8, 1)).unwrap();
    log.persist(&write(run(6, 8, 1), true)).unwrap();
    drop(log);
    let wals = files(&member.log_dir(), ".log");
    assert!(!wals.is_empty(), "no WAL file");
    for wal in wals {
        fs::remove_file(wal).unwrap();
    }
    let (log, _) = member.open().unwrap();
    assert_eq!(
        all_entries(&log).unwrap(),
        run(1, 8, 1),
        "entries lost with the WAL"
    );
}

// ---------------------------------------------------------------------------
// The records' column family
// ---------------------------------------------------------------------------

/// Keys below, inside and above the MVCC machine's record range.
fn spanning_keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = vec![
        b"\x00ha/applied".to_vec(),
        b"\x01kv/l/lease".to_vec(),
        b"\x01kv/m/rev".to_vec(),
        b"\x01kv/r".to_vec(),
        b"\x01kv/r0".to_vec(),
        b"\x01kv/r0zz".to_vec(),
        b"\x01kv/s".to_vec(),
        b"user".to_vec(),
    ];
    for rev in [1u64, 2, 255, 256, 70_000] {
        let mut k = b"\x01kv/r/".to_vec();
        k.extend_from_slice(&rev.to_be_bytes());
        keys.push(k);
    }
    keys.sort();
    keys
}

/// The keys stored in one column family, read with RocksDB directly.
fn keys_in(path: &Path, cf: &str) -> Vec<Vec<u8>> {
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), path).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), path, &cfs).unwrap();
    let handle = db.cf_handle(cf).unwrap();
    db.iterator_cf(handle, rocksdb::IteratorMode::Start)
        .map(|kv| kv.unwrap().0.to_vec())
        .collect()
}

fn scanned(
    state: &RocksStateStore,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    state
        .scan(start, end, &mut |k, _| {
            out.push(k.to_vec());
            out.len() < limit
        })
        .unwrap();
    out
}

#[test]
fn records_live_in_their_own_family_and_scans_cross_it_in_key_order() {
    let member = Member::new();
    let (_, state) = member.open().unwrap();
    let keys = spanning_keys();
    let mut batch = WriteBatch::new();
    for k in &keys {
        batch.put(k.clone(), k.clone());
    }
    state.write(batch, true).unwrap();
    // Every range and every early stop agrees with a sorted list, as
    // through one family; the same through a consistent view.
    let mut bounds: Vec<Vec<u8>> = keys.clone();
    bounds.extend([b"".to_vec(), b"\x01kv/r/".to_vec(), b"\x01kv/r0".to_vec()]);
    for start in &bounds {
        for end in bounds.iter().map(Some).chain([None]) {
            for limit in [1, 3, usize::MAX] {
                let expected: Vec<Vec<u8>> = keys
                    .iter()
                    .filter(|k| k.as_slice() >= start.as_slice())
                    .filter(|k| end.is_none_or(|e| k.as_slice() < e.as_slice()))
                    .take(limit)
                    .cloned()
                    .collect();
                let end = end.map(Vec::as_slice);
                assert_eq!(
                    scanned(&state, start, end, limit),
                    expected,
                    "{start:?}..{end:?} limit {limit}"
                );
                let mut seen = Vec::new();
                state
                    .read_consistent(&mut |view| {
                        view.scan(start, end, &mut |k, _| {
                            seen.push(k.to_vec());
                            seen.len() < limit
                        })
                    })
                    .unwrap();
                assert_eq!(seen, expected, "view {start:?}..{end:?} limit {limit}");
            }
        }
    }
    for k in &keys {
        assert_eq!(state.get(k).unwrap().as_deref(), Some(k.as_slice()));
    }
    drop(state);
    let in_records = keys_in(&member.state_dir(), RECORDS_CF);
    let expected: Vec<Vec<u8>> = keys
        .iter()
        .filter(|k| k.starts_with(b"\x01kv/r/"))
        .cloned()
        .collect();
    assert_eq!(
        in_records, expected,
        "exactly the records are in their family"
    );
    let in_default = keys_in(&member.state_dir(), "default");
    assert!(in_default.iter().all(|k| !k.starts_with(b"\x01kv/r/")));
    assert_eq!(in_default.len() + in_records.len(), keys.len());
}

/// A state DB from before the records' family kept them in the default
/// one: the next open moves them, and reads see them all along.
#[test]
fn records_written_before_their_family_existed_move_there_on_open() {
    let member = Member::new();
    let (_, state) = member.open().unwrap();
    let mut batch = WriteBatch::new();
    batch.put(b"\x00ha/applied".to_vec(), b"7".to_vec());
    state.write(batch, true).unwrap();
    drop(state);
    let keys = spanning_keys();
    // Large records too, so that the move takes several batches.
    let big: Vec<Vec<u8>> = (1_000u64..1_040)
        .map(|rev| {
            let mut k = b"\x01kv/r/".to_vec();
            k.extend_from_slice(&rev.to_be_bytes());
            k
        })
        .collect();
    let big_value = vec![7u8; 256 << 10];
    {
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), member.state_dir()).unwrap();
        let db =
            rocksdb::DB::open_cf(&rocksdb::Options::default(), member.state_dir(), &cfs).unwrap();
        for k in &keys {
            db.put(k, k).unwrap();
        }
        for k in &big {
            db.put(k, &big_value).unwrap();
        }
        db.flush().unwrap();
    }
    let (_, state) = member.open().unwrap();
    assert_eq!(
        scanned(&state, b"", None, usize::MAX).len(),
        keys.len() + big.len()
    );
    for k in &big {
        assert_eq!(state.get(k).unwrap().as_deref(), Some(big_value.as_slice()));
    }
    for k in &keys {
        assert_eq!(
            state.get(k).unwrap().as_deref(),
            Some(k.as_slice()),
            "{k:?}"
        );
    }
    drop(state);
    let in_default = keys_in(&member.state_dir(), "default");
    assert!(
        in_default.iter().all(|k| !k.starts_with(b"\x01kv/r/")),
        "records left in the default family: {in_default:?}"
    );
    assert_eq!(
        keys_in(&member.state_dir(), RECORDS_CF).len(),
        5 + big.len()
    );
}
