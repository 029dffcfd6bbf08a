//! Conformance suites: run the same cases against every backend.
//!
//! A backend passes when the suites return. Each case gets a fresh store;
//! every case runs even when an earlier one fails, and the suite then
//! panics with one line per failed case naming the case and the property
//! it broke.
//!
//! - [`log_store_suite`] and [`state_store_suite`] take a function making
//!   fresh stores, and check what any backend must do through the
//!   [`LogStore`] and [`StateStore`] traits alone:
//!
//! ```
//! use ha_storage::testing::{log_store_suite, state_store_suite};
//! use ha_storage::{MemLogStore, MemStateStore};
//!
//! log_store_suite(MemLogStore::new);
//! state_store_suite(MemStateStore::new);
//! ```
//!
//! - [`durable_log_store_suite`] and [`durable_state_store_suite`] run the
//!   same cases plus *reopen* cases, which close a store and open it again
//!   and check that everything a synced write stored survived (entries,
//!   truncations, hard state, identity, state). `make` returns a store and
//!   a guard that must outlive it (a temporary directory, say); `reopen`
//!   takes the store, drops it, and opens the same data again. For the
//!   memory backends a simulated power failure is the reopen:
//!
//! ```
//! use ha_storage::testing::{durable_log_store_suite, durable_state_store_suite};
//! use ha_storage::{MemLogStore, MemStateStore};
//!
//! durable_log_store_suite(|| (MemLogStore::new(), ()), |store, _| Ok(store.crash()));
//! durable_state_store_suite(|| (MemStateStore::new(), ()), |store, _| Ok(store.crash()));
//! ```
//!
//! Losing *unsynced* writes on a crash is backend-specific (a clean close
//! of a RocksDB keeps them), so each backend tests that next to its code.
//!
//! # Panics
//!
//! The suites panic when a case fails, or when the store panics inside a
//! case (they catch the panic to name the case, so build with
//! `panic = "unwind"`).

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};

use ha_core::eraftpb::{Entry, EntryType, HardState};
use ha_core::{
    ClusterId, LogPoint, LogStore, LogWrite, MemberIdentity, NodeId, RESERVED_PREFIX, StateStore,
    StorageError, WriteBatch,
};
use prost::Message;

/// Runs every [`LogStore`] case, each against a fresh store from `make`.
///
/// # Panics
///
/// When a case fails, with a message naming every failed case and what it
/// found.
pub fn log_store_suite<S: LogStore>(make: impl Fn() -> S) {
    let make = || (make(), ());
    run_suite("log_store_suite", plain(log_cases::<S>(), &make));
}

/// Runs every [`StateStore`] case, each against a fresh store from `make`.
///
/// # Panics
///
/// When a case fails, with a message naming every failed case and what it
/// found.
pub fn state_store_suite<S: StateStore>(make: impl Fn() -> S) {
    let make = || (make(), ());
    run_suite("state_store_suite", plain(state_cases::<S>(), &make));
}

/// Runs every [`LogStore`] case and the reopen cases, each against a fresh
/// store from `make`, which returns the store and a guard kept alive until
/// the case ends. `reopen(store, &guard)` must drop `store` and open the
/// same data again.
///
/// # Panics
///
/// When a case fails, with a message naming every failed case and what it
/// found.
pub fn durable_log_store_suite<S: LogStore, G>(
    make: impl Fn() -> (S, G),
    reopen: impl Fn(S, &G) -> Result<S, StorageError>,
) {
    let mut cases = plain(log_cases::<S>(), &make);
    cases.extend(reopening(log_reopen_cases::<S>(), &make, &reopen));
    run_suite("durable_log_store_suite", cases);
}

/// Runs every [`StateStore`] case and the reopen cases; `make` and
/// `reopen` as for [`durable_log_store_suite`].
///
/// # Panics
///
/// When a case fails, with a message naming every failed case and what it
/// found.
pub fn durable_state_store_suite<S: StateStore, G>(
    make: impl Fn() -> (S, G),
    reopen: impl Fn(S, &G) -> Result<S, StorageError>,
) {
    let mut cases = plain(state_cases::<S>(), &make);
    cases.extend(reopening(state_reopen_cases::<S>(), &make, &reopen));
    run_suite("durable_state_store_suite", cases);
}

/// A case reports a broken property as `Err`, so the runner can name it.
type Outcome = Result<(), String>;
type Case<S> = (&'static str, fn(&S) -> Outcome);
/// Closes a store and opens its data again.
type Reopen<'a, S> = dyn Fn(S) -> Result<S, StorageError> + 'a;
type ReopenCase<S> = (&'static str, fn(S, &Reopen<'_, S>) -> Outcome);
/// A case bound to its store maker, ready to run.
type Runnable<'a> = (&'static str, Box<dyn Fn() -> Outcome + 'a>);

fn plain<'a, S: 'a, G: 'a>(cases: Vec<Case<S>>, make: &'a dyn Fn() -> (S, G)) -> Vec<Runnable<'a>> {
    cases
        .into_iter()
        .map(|(name, case)| -> Runnable<'a> {
            (
                name,
                Box::new(move || {
                    let (store, guard) = make();
                    let outcome = case(&store);
                    // The store before what it lives in.
                    drop(store);
                    drop(guard);
                    outcome
                }),
            )
        })
        .collect()
}

fn reopening<'a, S: 'a, G: 'a>(
    cases: Vec<ReopenCase<S>>,
    make: &'a dyn Fn() -> (S, G),
    reopen: &'a dyn Fn(S, &G) -> Result<S, StorageError>,
) -> Vec<Runnable<'a>> {
    cases
        .into_iter()
        .map(|(name, case)| -> Runnable<'a> {
            (
                name,
                Box::new(move || {
                    let (store, guard) = make();
                    let outcome = case(store, &|store| reopen(store, &guard));
                    drop(guard);
                    outcome
                }),
            )
        })
        .collect()
}

fn run_suite(suite: &str, cases: Vec<Runnable<'_>>) {
    let total = cases.len();
    let mut failures = Vec::new();
    for (name, case) in cases {
        // A store that panics is reported as a failure of this case rather
        // than aborting the suite without saying which case hit it.
        let outcome = panic::catch_unwind(AssertUnwindSafe(case));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(broken)) => failures.push(format!("case `{name}`: {broken}")),
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_string());
                failures.push(format!("case `{name}`: the store panicked: {message}"));
            }
        }
    }
    if !failures.is_empty() {
        panic!(
            "{suite}: {} of {total} cases failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
}

/// Fails the case with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Fails the case unless `found == expected`, showing both.
macro_rules! ensure_eq {
    ($found:expr, $expected:expr, $($msg:tt)+) => {{
        let (found, expected) = (&$found, &$expected);
        if found != expected {
            return Err(format!(
                "{}: expected {:?}, found {:?}",
                format!($($msg)+),
                expected,
                found
            ));
        }
    }};
}

/// Turns an unexpected storage error into a case failure.
fn call<T>(what: &str, result: Result<T, StorageError>) -> Result<T, String> {
    result.map_err(|e| format!("{what} failed unexpectedly: {e}"))
}

// ---------------------------------------------------------------------------
// LogStore
// ---------------------------------------------------------------------------

fn log_cases<S: LogStore>() -> Vec<Case<S>> {
    vec![
        ("fresh_log_is_empty", fresh_log_is_empty::<S>),
        ("append_then_read", append_then_read::<S>),
        ("appends_extend_the_log", appends_extend_the_log::<S>),
        ("entry_fields_round_trip", entry_fields_round_trip::<S>),
        (
            "empty_append_changes_nothing",
            empty_append_changes_nothing::<S>,
        ),
        (
            "conflicting_append_truncates_suffix",
            conflicting_append_truncates_suffix::<S>,
        ),
        (
            "conflicting_persist_truncates_suffix",
            conflicting_persist_truncates_suffix::<S>,
        ),
        ("persist_lags_readable", persist_lags_readable::<S>),
        ("entries_max_size", entries_max_size::<S>),
        ("out_of_range_reads_fail", out_of_range_reads_fail::<S>),
        ("hard_state_round_trip", hard_state_round_trip::<S>),
        (
            "hard_state_survives_entry_only_writes",
            hard_state_survives_entry_only_writes::<S>,
        ),
        ("identity_round_trip", identity_round_trip::<S>),
        (
            "random_appends_match_model",
            random_appends_match_model::<S>,
        ),
        (
            "compaction_keeps_the_compaction_point",
            compaction_keeps_the_compaction_point::<S>,
        ),
        ("restart_after_a_snapshot", restart_after_a_snapshot::<S>),
        (
            "pending_install_marker_round_trip",
            pending_install_marker_round_trip::<S>,
        ),
    ]
}

fn compaction_keeps_the_compaction_point<S: LogStore>(store: &S) -> Outcome {
    let log = entries_with_terms(1, &[1, 1, 2, 2, 3, 3, 3, 4]);
    call("append_readable", store.append_readable(&log))?;
    call("persist", store.persist(&synced(log.clone(), None)))?;
    call("compact(5)", store.compact(5))?;
    ensure_eq!(
        call("first_index", store.first_index())?,
        6,
        "first_index after compact(5)"
    );
    ensure_eq!(
        call("term(5)", store.term(5))?,
        3,
        "term of the compaction point"
    );
    let below = store.entries(4, 7, None);
    ensure!(
        matches!(below, Err(StorageError::Compacted { .. })),
        "entries below the first index must be Compacted, got {below:?}"
    );
    check_log(store, &log[5..], "after compact(5)")?;
    call("compact(3) (behind the point)", store.compact(3))?;
    ensure_eq!(
        call("first_index", store.first_index())?,
        6,
        "compacting backwards changes nothing"
    );
    Ok(())
}

fn restart_after_a_snapshot<S: LogStore>(store: &S) -> Outcome {
    let log = entries_with_terms(1, &[1, 1, 2, 2]);
    call("append_readable", store.append_readable(&log))?;
    call("persist", store.persist(&synced(log, None)))?;
    let point = LogPoint { index: 20, term: 3 };
    call("restart_readable", store.restart_readable(point))?;
    ensure_eq!(
        call("first_index", store.first_index())?,
        21,
        "first_index after the restart"
    );
    ensure_eq!(
        call("last_index", store.last_index())?,
        20,
        "last_index after the restart"
    );
    ensure_eq!(
        call("term(20)", store.term(20))?,
        3,
        "term of the snapshot point"
    );
    let after = entries_with_terms(21, &[3, 4]);
    call("append_readable", store.append_readable(&after))?;
    let hs = HardState {
        term: 4,
        vote: 2,
        commit: 20,
    };
    call(
        "persist",
        store.persist(&LogWrite {
            snapshot: Some(point),
            entries: after.clone(),
            hard_state: Some(hs.clone()),
            sync: true,
        }),
    )?;
    ensure_eq!(
        call("hard_state", store.hard_state())?,
        hs,
        "hard state written with the restart"
    );
    check_log(store, &after, "after the restart was persisted")
}

fn pending_install_marker_round_trip<S: LogStore>(store: &S) -> Outcome {
    ensure_eq!(
        call("pending_install", store.pending_install())?,
        None,
        "fresh store's marker"
    );
    call("set_pending_install", store.set_pending_install(b"marker"))?;
    ensure_eq!(
        call("pending_install", store.pending_install())?,
        Some(b"marker".to_vec()),
        "the marker just stored"
    );
    let point = LogPoint { index: 9, term: 2 };
    call("restart_readable", store.restart_readable(point))?;
    call(
        "persist",
        store.persist(&LogWrite {
            snapshot: Some(point),
            sync: true,
            ..LogWrite::default()
        }),
    )?;
    ensure_eq!(
        call("pending_install", store.pending_install())?,
        None,
        "the restart write must clear the marker"
    );
    Ok(())
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry {index} of term {term}").into_bytes(),
        ..Default::default()
    }
}

fn entries_with_terms(first: u64, terms: &[u64]) -> Vec<Entry> {
    (first..).zip(terms).map(|(i, &t)| entry(i, t)).collect()
}

fn synced(entries: Vec<Entry>, hard_state: Option<HardState>) -> LogWrite {
    LogWrite {
        snapshot: None,
        entries,
        hard_state,
        sync: true,
    }
}

/// Checks that the readable log is exactly `expected` (which starts at the
/// store's first index).
fn check_log<S: LogStore>(store: &S, expected: &[Entry], when: &str) -> Outcome {
    let first = call("first_index", store.first_index())?;
    let last = call("last_index", store.last_index())?;
    // Saturating: a broken store's answers must fail the case, not overflow.
    let expected_last = expected.last().map_or(first.saturating_sub(1), |e| e.index);
    ensure_eq!(last, expected_last, "{when}: last_index");
    let all = call(
        "entries",
        store.entries(first, last.saturating_add(1), None),
    )?;
    ensure_eq!(all, expected.to_vec(), "{when}: entries(first, last + 1)");
    for e in expected {
        let term = call("term", store.term(e.index))?;
        ensure_eq!(term, e.term, "{when}: term({})", e.index);
    }
    let beyond = store.term(last.saturating_add(1));
    ensure!(
        matches!(beyond, Err(StorageError::Unavailable { .. })),
        "{when}: term(last_index + 1 = {}) must be Unavailable, got {beyond:?}",
        last.saturating_add(1)
    );
    Ok(())
}

fn fresh_log_is_empty<S: LogStore>(store: &S) -> Outcome {
    ensure_eq!(call("first_index", store.first_index())?, 1, "first_index");
    ensure_eq!(call("last_index", store.last_index())?, 0, "last_index");
    ensure_eq!(call("term(0)", store.term(0))?, 0, "term(0)");
    ensure_eq!(
        call("hard_state", store.hard_state())?,
        HardState::default(),
        "hard_state"
    );
    ensure_eq!(call("identity", store.identity())?, None, "identity");
    ensure_eq!(
        call("entries(1, 1)", store.entries(1, 1, None))?,
        Vec::<Entry>::new(),
        "entries(1, 1)"
    );
    check_log(store, &[], "fresh store")
}

fn append_then_read<S: LogStore>(store: &S) -> Outcome {
    let log = entries_with_terms(1, &[1, 1, 2, 2, 3]);
    call("append_readable", store.append_readable(&log))?;
    check_log(store, &log, "after appending 1..=5")?;
    ensure_eq!(call("first_index", store.first_index())?, 1, "first_index");
    ensure_eq!(
        call("entries(2, 4)", store.entries(2, 4, None))?,
        log[1..3].to_vec(),
        "entries(2, 4)"
    );
    ensure_eq!(
        call("entries(3, 3)", store.entries(3, 3, None))?,
        Vec::<Entry>::new(),
        "an empty range"
    );
    ensure_eq!(
        call("entries(6, 6)", store.entries(6, 6, None))?,
        Vec::<Entry>::new(),
        "the empty range at last_index + 1"
    );
    Ok(())
}

fn appends_extend_the_log<S: LogStore>(store: &S) -> Outcome {
    let log = entries_with_terms(1, &[1, 1, 1, 2, 2, 2, 3]);
    call("append_readable", store.append_readable(&log[..3]))?;
    call("append_readable", store.append_readable(&log[3..4]))?;
    call("append_readable", store.append_readable(&log[4..]))?;
    check_log(store, &log, "after three contiguous appends")
}

fn entry_fields_round_trip<S: LogStore>(store: &S) -> Outcome {
    let log = vec![
        Entry {
            entry_type: EntryType::EntryNormal as i32,
            term: 1,
            index: 1,
            data: Vec::new(),
            context: Vec::new(),
            sync_log: false,
        },
        Entry {
            entry_type: EntryType::EntryConfChangeV2 as i32,
            term: 1,
            index: 2,
            data: vec![0, 255, 1, 254],
            context: b"context".to_vec(),
            sync_log: true,
        },
        Entry {
            entry_type: EntryType::EntryNormal as i32,
            term: 7,
            index: 3,
            data: vec![7; 4096],
            context: Vec::new(),
            sync_log: false,
        },
    ];
    call("append_readable", store.append_readable(&log))?;
    check_log(store, &log, "before persisting")?;
    call("persist", store.persist(&synced(log.clone(), None)))?;
    check_log(store, &log, "after persisting")
}

fn empty_append_changes_nothing<S: LogStore>(store: &S) -> Outcome {
    call("append_readable(&[])", store.append_readable(&[]))?;
    check_log(store, &[], "after an empty append to a fresh store")?;
    let log = entries_with_terms(1, &[1, 2]);
    call("append_readable", store.append_readable(&log))?;
    call("append_readable(&[])", store.append_readable(&[]))?;
    call("persist", store.persist(&synced(log.clone(), None)))?;
    call("persist(empty)", store.persist(&synced(Vec::new(), None)))?;
    check_log(store, &log, "after empty appends and persists")
}

fn conflicting_append_truncates_suffix<S: LogStore>(store: &S) -> Outcome {
    let log = entries_with_terms(1, &[1, 1, 1, 1, 1]);
    call("append_readable", store.append_readable(&log))?;
    // A new leader overwrites from index 3 with a shorter log.
    let conflict = entries_with_terms(3, &[2]);
    call("append_readable", store.append_readable(&conflict))?;
    let expected = [&log[..2], &conflict[..]].concat();
    check_log(store, &expected, "after a conflicting append at 3")?;
    // Overwriting with identical entries keeps the log as it is.
    call("append_readable", store.append_readable(&expected[1..]))?;
    check_log(store, &expected, "after re-appending the same entries")?;
    // Overwriting from the first index replaces everything.
    let replacement = entries_with_terms(1, &[3, 3, 3, 3]);
    call("append_readable", store.append_readable(&replacement))?;
    check_log(store, &replacement, "after a conflicting append at 1")
}

fn conflicting_persist_truncates_suffix<S: LogStore>(store: &S) -> Outcome {
    let log = entries_with_terms(1, &[1, 1, 1, 1, 1]);
    call("append_readable", store.append_readable(&log))?;
    call("persist", store.persist(&synced(log.clone(), None)))?;
    check_log(store, &log, "after persisting 1..=5")?;
    let conflict = entries_with_terms(3, &[2]);
    call("append_readable", store.append_readable(&conflict))?;
    call("persist", store.persist(&synced(conflict.clone(), None)))?;
    let expected = [&log[..2], &conflict[..]].concat();
    // A backend that serves reads from what it persisted must have dropped
    // the old 4 and 5 there too.
    check_log(
        store,
        &expected,
        "after persisting a conflicting write at 3",
    )?;
    let more = entries_with_terms(4, &[2, 2]);
    call("append_readable", store.append_readable(&more))?;
    call("persist", store.persist(&synced(more.clone(), None)))?;
    let expected = [&expected[..], &more[..]].concat();
    check_log(store, &expected, "after extending the truncated log")
}

fn persist_lags_readable<S: LogStore>(store: &S) -> Outcome {
    // The raft thread runs ahead of the log writer; reads must see the
    // readable view whatever the writer has done so far.
    let log = entries_with_terms(1, &[1, 1, 2, 2, 2, 3]);
    call("append_readable", store.append_readable(&log[..3]))?;
    call("append_readable", store.append_readable(&log[3..]))?;
    let first = LogWrite {
        snapshot: None,
        entries: log[..3].to_vec(),
        hard_state: None,
        sync: false,
    };
    call("persist", store.persist(&first))?;
    check_log(store, &log, "after persisting only the first write")?;
    call("persist", store.persist(&synced(log[3..].to_vec(), None)))?;
    check_log(store, &log, "after persisting both writes")
}

fn entries_max_size<S: LogStore>(store: &S) -> Outcome {
    let log = entries_with_terms(1, &[1, 1, 1, 1, 1]);
    call("append_readable", store.append_readable(&log))?;
    let size = |n: usize| -> u64 { log[..n].iter().map(|e| e.encoded_len() as u64).sum() };
    for (max, want) in [
        (Some(0), 1),
        (Some(1), 1),
        (Some(size(1)), 1),
        (Some(size(2) - 1), 1),
        (Some(size(2)), 2),
        (Some(size(4)), 4),
        (Some(size(5)), 5),
        (Some(u64::MAX), 5),
        (None, 5),
    ] {
        let got = call("entries", store.entries(1, 6, max))?;
        ensure_eq!(
            got,
            log[..want].to_vec(),
            "entries(1, 6, max_size = {max:?}) must hold the first entry, then entries while the encoded total stays within max_size"
        );
    }
    let one = call("entries", store.entries(3, 6, Some(0)))?;
    ensure_eq!(
        one,
        log[2..3].to_vec(),
        "entries(3, 6, Some(0)) must still return one entry"
    );
    Ok(())
}

fn out_of_range_reads_fail<S: LogStore>(store: &S) -> Outcome {
    let unavailable = store.entries(1, 2, None);
    ensure!(
        matches!(unavailable, Err(StorageError::Unavailable { .. })),
        "entries(1, 2) on an empty log must be Unavailable, got {unavailable:?}"
    );
    let log = entries_with_terms(1, &[1, 1, 2]);
    call("append_readable", store.append_readable(&log))?;
    let compacted = store.entries(0, 2, None);
    ensure!(
        matches!(compacted, Err(StorageError::Compacted { first_index: 1 })),
        "entries(0, 2) reaches before first_index 1 and must be Compacted {{ first_index: 1 }}, got {compacted:?}"
    );
    let past = store.entries(2, 5, None);
    ensure!(
        matches!(past, Err(StorageError::Unavailable { .. })),
        "entries(2, 5) reaches past last_index 3 and must be Unavailable, got {past:?}"
    );
    let far = store.entries(10, 12, None);
    ensure!(
        matches!(far, Err(StorageError::Unavailable { .. })),
        "entries(10, 12) must be Unavailable, got {far:?}"
    );
    for index in [4, 5, 1000, u64::MAX] {
        let term = store.term(index);
        ensure!(
            matches!(term, Err(StorageError::Unavailable { .. })),
            "term({index}) past last_index 3 must be Unavailable, got {term:?}"
        );
    }
    ensure_eq!(call("term(0)", store.term(0))?, 0, "term(0)");
    Ok(())
}

fn hard_state_round_trip<S: LogStore>(store: &S) -> Outcome {
    let first = HardState {
        term: 3,
        vote: 2,
        commit: 0,
    };
    call(
        "persist",
        store.persist(&synced(Vec::new(), Some(first.clone()))),
    )?;
    ensure_eq!(
        call("hard_state", store.hard_state())?,
        first,
        "hard_state after a synced persist"
    );
    let log = entries_with_terms(1, &[3, 3]);
    call("append_readable", store.append_readable(&log))?;
    let second = HardState {
        term: 4,
        vote: 0,
        commit: 2,
    };
    call("persist", store.persist(&synced(log, Some(second.clone()))))?;
    ensure_eq!(
        call("hard_state", store.hard_state())?,
        second,
        "hard_state after a synced persist with entries"
    );
    Ok(())
}

fn hard_state_survives_entry_only_writes<S: LogStore>(store: &S) -> Outcome {
    let hs = HardState {
        term: 5,
        vote: 1,
        commit: 0,
    };
    call(
        "persist",
        store.persist(&synced(Vec::new(), Some(hs.clone()))),
    )?;
    let log = entries_with_terms(1, &[5, 5, 5]);
    call("append_readable", store.append_readable(&log))?;
    call("persist", store.persist(&synced(log, None)))?;
    ensure_eq!(
        call("hard_state", store.hard_state())?,
        hs,
        "a write without a hard state must keep the previous one"
    );
    Ok(())
}

fn identity_round_trip<S: LogStore>(store: &S) -> Outcome {
    let members = [NodeId(1), NodeId(2), NodeId(3)];
    let first = MemberIdentity {
        cluster_id: ClusterId::derive(&members, "conformance"),
        node_id: NodeId(2),
        incarnation: 1,
    };
    call("set_identity", store.set_identity(&first))?;
    ensure_eq!(
        call("identity", store.identity())?,
        Some(first.clone()),
        "identity after set_identity"
    );
    let second = MemberIdentity {
        incarnation: 2,
        ..first
    };
    call("set_identity", store.set_identity(&second))?;
    ensure_eq!(
        call("identity", store.identity())?,
        Some(second),
        "identity after a second set_identity"
    );
    check_log(store, &[], "set_identity must not touch the log")
}

/// A deterministic pseudo-random sequence (SplitMix64), so a failure always
/// reproduces without a `rand` dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_appends_match_model<S: LogStore>(store: &S) -> Outcome {
    // Appends of random length, some overwriting a random suffix, persisted
    // by a writer that lags a random number of writes behind; the readable
    // log must always equal a plain vector.
    let mut rng = Rng(0x5EED);
    let mut model: Vec<Entry> = Vec::new();
    let mut pending: Vec<LogWrite> = Vec::new();
    let mut term = 1;
    for step in 0..300 {
        let next = model.len() as u64 + 1;
        let first = if rng.below(5) == 0 {
            term += 1;
            next.saturating_sub(rng.below(4)).max(1)
        } else {
            next
        };
        let len = rng.below(6);
        let batch: Vec<Entry> = (first..first + len).map(|i| entry(i, term)).collect();
        call("append_readable", store.append_readable(&batch))?;
        if let Some(e) = batch.first() {
            model.truncate(e.index as usize - 1);
            model.extend_from_slice(&batch);
        }
        pending.push(LogWrite {
            snapshot: None,
            entries: batch,
            hard_state: Some(HardState {
                term,
                vote: 1,
                commit: 0,
            }),
            sync: rng.below(3) == 0,
        });
        // The writer drains everything queued, sometimes.
        if rng.below(3) == 0 {
            for write in pending.drain(..) {
                call("persist", store.persist(&write))?;
            }
        }
        check_log(store, &model, &format!("step {step}"))?;
    }
    for write in pending.drain(..) {
        call("persist", store.persist(&write))?;
    }
    check_log(store, &model, "after draining the writer")?;
    // A final sync makes the last write's hard state durable whatever the
    // random sync flags were.
    call("persist", store.persist(&synced(Vec::new(), None)))?;
    ensure_eq!(
        call("hard_state", store.hard_state())?,
        HardState {
            term,
            vote: 1,
            commit: 0,
        },
        "hard_state after the final sync"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// LogStore across a reopen
// ---------------------------------------------------------------------------

fn log_reopen_cases<S: LogStore>() -> Vec<ReopenCase<S>> {
    vec![
        ("fresh_log_survives_reopen", fresh_log_survives_reopen::<S>),
        ("entries_survive_reopen", entries_survive_reopen::<S>),
        (
            "hard_state_survives_reopen",
            hard_state_survives_reopen::<S>,
        ),
        ("identity_survives_reopen", identity_survives_reopen::<S>),
        (
            "truncation_survives_reopen",
            truncation_survives_reopen::<S>,
        ),
        (
            "random_appends_survive_reopens",
            random_appends_survive_reopens::<S>,
        ),
        (
            "snapshot_restart_and_marker_survive_reopen",
            snapshot_restart_and_marker_survive_reopen::<S>,
        ),
    ]
}

fn snapshot_restart_and_marker_survive_reopen<S: LogStore>(
    store: S,
    reopen: &Reopen<'_, S>,
) -> Outcome {
    append_synced(&store, &entries_with_terms(1, &[1, 1, 2]), None)?;
    call(
        "set_pending_install",
        store.set_pending_install(b"installing"),
    )?;
    let store = call("reopen", reopen(store))?;
    ensure_eq!(
        call("pending_install", store.pending_install())?,
        Some(b"installing".to_vec()),
        "the marker after a reopen"
    );
    let point = LogPoint { index: 50, term: 5 };
    call("restart_readable", store.restart_readable(point))?;
    let after = entries_with_terms(51, &[5, 5]);
    call("append_readable", store.append_readable(&after))?;
    let hs = HardState {
        term: 5,
        vote: 1,
        commit: 51,
    };
    call(
        "persist",
        store.persist(&LogWrite {
            snapshot: Some(point),
            entries: after.clone(),
            hard_state: Some(hs.clone()),
            sync: true,
        }),
    )?;
    let store = call("reopen", reopen(store))?;
    ensure_eq!(
        call("pending_install", store.pending_install())?,
        None,
        "marker after the restart and a reopen"
    );
    ensure_eq!(
        call("first_index", store.first_index())?,
        51,
        "first_index after a reopen"
    );
    ensure_eq!(
        call("term(50)", store.term(50))?,
        5,
        "term of the snapshot point after a reopen"
    );
    ensure_eq!(
        call("hard_state", store.hard_state())?,
        hs,
        "hard state after a reopen"
    );
    check_log(&store, &after, "after a reopen")
}

/// Appends `entries` and persists them with a sync.
fn append_synced<S: LogStore>(
    store: &S,
    entries: &[Entry],
    hard_state: Option<HardState>,
) -> Outcome {
    call("append_readable", store.append_readable(entries))?;
    call(
        "persist",
        store.persist(&synced(entries.to_vec(), hard_state)),
    )
}

fn fresh_log_survives_reopen<S: LogStore>(store: S, reopen: &Reopen<'_, S>) -> Outcome {
    let store = call("reopen", reopen(store))?;
    fresh_log_is_empty(&store).map_err(|e| format!("after reopening a fresh store: {e}"))
}

fn entries_survive_reopen<S: LogStore>(store: S, reopen: &Reopen<'_, S>) -> Outcome {
    let mut log = vec![
        Entry {
            entry_type: EntryType::EntryConfChangeV2 as i32,
            term: 1,
            index: 1,
            data: vec![0, 255, 1, 254],
            context: b"context".to_vec(),
            sync_log: true,
        },
        Entry {
            term: 2,
            index: 2,
            data: vec![7; 4096],
            ..Default::default()
        },
    ];
    log.extend(entries_with_terms(3, &[2, 2, 3]));
    append_synced(&store, &log[..2], None)?;
    append_synced(&store, &log[2..], None)?;
    let store = call("reopen", reopen(store))?;
    check_log(&store, &log, "after a reopen")?;
    // The reopened store goes on from its last entry.
    let more = entries_with_terms(6, &[3, 4]);
    append_synced(&store, &more, None)?;
    let store = call("reopen", reopen(store))?;
    log.extend(more);
    check_log(&store, &log, "after appending and a second reopen")
}

fn hard_state_survives_reopen<S: LogStore>(store: S, reopen: &Reopen<'_, S>) -> Outcome {
    let first = HardState {
        term: 2,
        vote: 3,
        commit: 1,
    };
    append_synced(&store, &entries_with_terms(1, &[1, 2]), Some(first.clone()))?;
    // A later write without a hard state keeps it.
    append_synced(&store, &entries_with_terms(3, &[2]), None)?;
    let store = call("reopen", reopen(store))?;
    ensure_eq!(
        call("hard_state", store.hard_state())?,
        first,
        "hard_state after a reopen"
    );
    let second = HardState {
        term: 4,
        vote: 0,
        commit: 3,
    };
    call(
        "persist",
        store.persist(&synced(Vec::new(), Some(second.clone()))),
    )?;
    let store = call("reopen", reopen(store))?;
    ensure_eq!(
        call("hard_state", store.hard_state())?,
        second,
        "hard_state after a second reopen"
    );
    Ok(())
}

fn identity_survives_reopen<S: LogStore>(store: S, reopen: &Reopen<'_, S>) -> Outcome {
    let members = [NodeId(4), NodeId(5), NodeId(6)];
    let identity = MemberIdentity {
        cluster_id: ClusterId::derive(&members, "reopen"),
        node_id: NodeId(5),
        incarnation: 1,
    };
    call("set_identity", store.set_identity(&identity))?;
    let store = call("reopen", reopen(store))?;
    ensure_eq!(
        call("identity", store.identity())?,
        Some(identity.clone()),
        "identity after a reopen"
    );
    let next = MemberIdentity {
        incarnation: 2,
        ..identity
    };
    call("set_identity", store.set_identity(&next))?;
    let store = call("reopen", reopen(store))?;
    ensure_eq!(
        call("identity", store.identity())?,
        Some(next),
        "identity after a second reopen"
    );
    Ok(())
}

fn truncation_survives_reopen<S: LogStore>(store: S, reopen: &Reopen<'_, S>) -> Outcome {
    let log = entries_with_terms(1, &[1, 1, 1, 1, 1]);
    append_synced(&store, &log, None)?;
    let conflict = entries_with_terms(3, &[2]);
    append_synced(&store, &conflict, None)?;
    let store = call("reopen", reopen(store))?;
    let expected = [&log[..2], &conflict[..]].concat();
    check_log(
        &store,
        &expected,
        "after a synced conflicting write at 3 and a reopen",
    )?;
    let more = entries_with_terms(4, &[2]);
    append_synced(&store, &more, None)?;
    let store = call("reopen", reopen(store))?;
    let expected = [&expected[..], &more[..]].concat();
    check_log(
        &store,
        &expected,
        "after extending the truncated log and a reopen",
    )
}

fn random_appends_survive_reopens<S: LogStore>(mut store: S, reopen: &Reopen<'_, S>) -> Outcome {
    // As `random_appends_match_model`, but now and then the writer drains
    // with a final sync and the store is reopened: the stored log must
    // then be exactly the readable one.
    let mut rng = Rng(0x2E09E);
    let mut model: Vec<Entry> = Vec::new();
    let mut pending: Vec<LogWrite> = Vec::new();
    let mut term = 1;
    for step in 0..120 {
        let next = model.len() as u64 + 1;
        let first = if rng.below(4) == 0 {
            term += 1;
            next.saturating_sub(rng.below(5)).max(1)
        } else {
            next
        };
        let batch: Vec<Entry> = (first..first + rng.below(6))
            .map(|i| entry(i, term))
            .collect();
        call("append_readable", store.append_readable(&batch))?;
        if let Some(e) = batch.first() {
            model.truncate(e.index as usize - 1);
            model.extend_from_slice(&batch);
        }
        pending.push(LogWrite {
            snapshot: None,
            entries: batch,
            hard_state: None,
            sync: rng.below(2) == 0,
        });
        if rng.below(3) == 0 {
            for write in pending.drain(..) {
                call("persist", store.persist(&write))?;
            }
        }
        if rng.below(10) == 0 {
            for write in pending.drain(..) {
                call("persist", store.persist(&write))?;
            }
            call("persist", store.persist(&synced(Vec::new(), None)))?;
            store = call("reopen", reopen(store))?;
            check_log(&store, &model, &format!("step {step}, after a reopen"))?;
        }
        check_log(&store, &model, &format!("step {step}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// StateStore
// ---------------------------------------------------------------------------

fn state_cases<S: StateStore>() -> Vec<Case<S>> {
    vec![
        ("fresh_state_is_empty", fresh_state_is_empty::<S>),
        ("put_get_delete", put_get_delete::<S>),
        ("batch_applies_every_op", batch_applies_every_op::<S>),
        ("last_op_in_batch_wins", last_op_in_batch_wins::<S>),
        ("empty_value_is_not_absent", empty_value_is_not_absent::<S>),
        (
            "empty_batch_changes_nothing",
            empty_batch_changes_nothing::<S>,
        ),
        (
            "scan_is_ascending_within_bounds",
            scan_is_ascending_within_bounds::<S>,
        ),
        (
            "scan_stops_when_visit_says_so",
            scan_stops_when_visit_says_so::<S>,
        ),
        (
            "scan_of_empty_range_visits_nothing",
            scan_of_empty_range_visits_nothing::<S>,
        ),
        ("keys_order_bytewise", keys_order_bytewise::<S>),
        (
            "random_batches_match_model",
            random_batches_match_model::<S>,
        ),
        (
            "consistent_view_ignores_later_writes",
            consistent_view_ignores_later_writes::<S>,
        ),
        (
            "restore_replaces_everything",
            restore_replaces_everything::<S>,
        ),
    ]
}

fn consistent_view_ignores_later_writes<S: StateStore>(store: &S) -> Outcome {
    let mut batch = WriteBatch::new();
    batch.put(b"a".to_vec(), b"1".to_vec());
    batch.put(b"c".to_vec(), b"1".to_vec());
    call("write", store.write(batch, false))?;
    let mut seen = None;
    call(
        "read_consistent",
        store.read_consistent(&mut |view| {
            let mut later = WriteBatch::new();
            later.put(b"a".to_vec(), b"2".to_vec());
            later.put(b"b".to_vec(), b"2".to_vec());
            later.delete(b"c".to_vec());
            store.write(later, false)?;
            let mut pairs = Vec::new();
            view.scan(b"", None, &mut |k, v| {
                pairs.push((k.to_vec(), v.to_vec()));
                true
            })?;
            seen = Some((view.get(b"a")?, view.get(b"b")?, pairs));
            Ok(())
        }),
    )?;
    let expected: Pairs = vec![
        (b"a".to_vec(), b"1".to_vec()),
        (b"c".to_vec(), b"1".to_vec()),
    ];
    ensure_eq!(
        seen,
        Some((Some(b"1".to_vec()), None, expected)),
        "the view must show the store as it was when the view was taken"
    );
    ensure_eq!(
        call("get", store.get(b"a"))?,
        Some(b"2".to_vec()),
        "the store itself moved on"
    );
    Ok(())
}

fn restore_replaces_everything<S: StateStore>(store: &S) -> Outcome {
    let mut batch = WriteBatch::new();
    for k in [&b""[..], b"old", b"\x00ha/applied", b"\xff\xff\xff"] {
        batch.put(k.to_vec(), b"gone".to_vec());
    }
    call("write", store.write(batch, true))?;
    let pairs: Pairs = vec![
        (b"\x00ha/applied".to_vec(), b"new".to_vec()),
        (b"k1".to_vec(), b"v1".to_vec()),
        (b"k2".to_vec(), Vec::new()),
    ];
    let mut source = pairs.clone().into_iter().map(Ok);
    call("restore", store.restore(&mut source))?;
    ensure_eq!(
        scan_all(store, b"", None)?,
        pairs,
        "the store after a restore"
    );
    ensure_eq!(
        call("get", store.get(b"old"))?,
        None,
        "a key the snapshot does not have"
    );
    Ok(())
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn scan_all<S: StateStore>(store: &S, start: &[u8], end: Option<&[u8]>) -> Result<Pairs, String> {
    let mut out = Vec::new();
    call(
        "scan",
        store.scan(start, end, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        }),
    )?;
    Ok(out)
}

fn kv(pairs: &[(&str, &str)]) -> Pairs {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn write_puts<S: StateStore>(store: &S, pairs: &[(&str, &str)], sync: bool) -> Outcome {
    let mut batch = WriteBatch::new();
    for (k, v) in pairs {
        batch.put(k.as_bytes(), v.as_bytes());
    }
    call("write", store.write(batch, sync))
}

fn fresh_state_is_empty<S: StateStore>(store: &S) -> Outcome {
    ensure_eq!(call("get", store.get(b"a"))?, None, "get on a fresh store");
    ensure_eq!(call("get", store.get(b""))?, None, "get of the empty key");
    ensure_eq!(
        scan_all(store, b"", None)?,
        Pairs::new(),
        "scan of a fresh store"
    );
    Ok(())
}

fn put_get_delete<S: StateStore>(store: &S) -> Outcome {
    write_puts(store, &[("a", "1")], true)?;
    ensure_eq!(
        call("get", store.get(b"a"))?,
        Some(b"1".to_vec()),
        "get after put"
    );
    ensure_eq!(call("get", store.get(b"b"))?, None, "get of another key");
    write_puts(store, &[("a", "2")], false)?;
    ensure_eq!(
        call("get", store.get(b"a"))?,
        Some(b"2".to_vec()),
        "get after overwrite"
    );
    let mut batch = WriteBatch::new();
    batch.delete(b"a".to_vec());
    call("write", store.write(batch, true))?;
    ensure_eq!(call("get", store.get(b"a"))?, None, "get after delete");
    let mut batch = WriteBatch::new();
    batch.delete(b"never-written".to_vec());
    call("write(delete of a missing key)", store.write(batch, false))?;
    ensure_eq!(
        scan_all(store, b"", None)?,
        Pairs::new(),
        "scan after deleting everything"
    );
    Ok(())
}

fn batch_applies_every_op<S: StateStore>(store: &S) -> Outcome {
    write_puts(store, &[("gone", "x"), ("kept", "y")], true)?;
    let mut batch = WriteBatch::new();
    for i in 0..100 {
        batch.put(format!("k{i:03}"), format!("v{i}"));
    }
    batch.delete(b"gone".to_vec());
    call("write", store.write(batch, false))?;
    for i in 0..100 {
        let key = format!("k{i:03}");
        ensure_eq!(
            call("get", store.get(key.as_bytes()))?,
            Some(format!("v{i}").into_bytes()),
            "get({key}) after one batch of 100 puts"
        );
    }
    ensure_eq!(
        call("get", store.get(b"gone"))?,
        None,
        "the delete in the same batch"
    );
    ensure_eq!(
        call("get", store.get(b"kept"))?,
        Some(b"y".to_vec()),
        "a key the batch did not touch"
    );
    ensure_eq!(
        scan_all(store, b"", None)?.len(),
        101,
        "keys after the batch"
    );
    Ok(())
}

fn last_op_in_batch_wins<S: StateStore>(store: &S) -> Outcome {
    write_puts(
        store,
        &[("del-then-put", "old"), ("put-then-del", "old")],
        true,
    )?;
    let mut batch = WriteBatch::new();
    batch.put("twice", "first");
    batch.put("twice", "second");
    batch.delete("del-then-put");
    batch.put("del-then-put", "new");
    batch.put("put-then-del", "new");
    batch.delete("put-then-del");
    call("write", store.write(batch, true))?;
    ensure_eq!(
        call("get", store.get(b"twice"))?,
        Some(b"second".to_vec()),
        "put, put"
    );
    ensure_eq!(
        call("get", store.get(b"del-then-put"))?,
        Some(b"new".to_vec()),
        "delete, put"
    );
    ensure_eq!(
        call("get", store.get(b"put-then-del"))?,
        None,
        "put, delete"
    );
    ensure_eq!(
        scan_all(store, b"", None)?,
        kv(&[("del-then-put", "new"), ("twice", "second")]),
        "scan after the batch"
    );
    Ok(())
}

fn empty_value_is_not_absent<S: StateStore>(store: &S) -> Outcome {
    write_puts(store, &[("empty", ""), ("", "empty key")], false)?;
    ensure_eq!(
        call("get", store.get(b"empty"))?,
        Some(Vec::new()),
        "a key with an empty value"
    );
    ensure_eq!(
        call("get", store.get(b""))?,
        Some(b"empty key".to_vec()),
        "the empty key"
    );
    ensure_eq!(
        scan_all(store, b"", None)?,
        kv(&[("", "empty key"), ("empty", "")]),
        "scan with an empty key and an empty value"
    );
    Ok(())
}

fn empty_batch_changes_nothing<S: StateStore>(store: &S) -> Outcome {
    call("write(empty)", store.write(WriteBatch::new(), true))?;
    call("write(empty)", store.write(WriteBatch::new(), false))?;
    ensure_eq!(
        scan_all(store, b"", None)?,
        Pairs::new(),
        "scan after empty batches"
    );
    write_puts(store, &[("a", "1")], false)?;
    call("write(empty)", store.write(WriteBatch::new(), true))?;
    ensure_eq!(
        scan_all(store, b"", None)?,
        kv(&[("a", "1")]),
        "scan after an empty batch"
    );
    Ok(())
}

fn scan_is_ascending_within_bounds<S: StateStore>(store: &S) -> Outcome {
    // Written out of order, over several batches.
    write_puts(store, &[("d", "4"), ("b", "2")], false)?;
    write_puts(store, &[("e", "5"), ("a", "1"), ("c", "3")], true)?;
    let all = kv(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")]);
    ensure_eq!(scan_all(store, b"", None)?, all, "scan of everything");
    ensure_eq!(
        scan_all(store, b"b", None)?,
        all[1..].to_vec(),
        "scan from b (inclusive)"
    );
    ensure_eq!(
        scan_all(store, b"b", Some(b"d"))?,
        all[1..3].to_vec(),
        "scan of [b, d): start inclusive, end exclusive"
    );
    ensure_eq!(
        scan_all(store, b"bb", Some(b"dd"))?,
        all[2..4].to_vec(),
        "scan of [bb, dd) between keys"
    );
    ensure_eq!(
        scan_all(store, b"", Some(b"c"))?,
        all[..2].to_vec(),
        "scan up to c"
    );
    ensure_eq!(
        scan_all(store, b"a", Some(b"z"))?,
        all,
        "scan with an end past every key"
    );
    ensure_eq!(
        scan_all(store, b"f", None)?,
        Pairs::new(),
        "scan from past every key"
    );
    Ok(())
}

fn scan_stops_when_visit_says_so<S: StateStore>(store: &S) -> Outcome {
    write_puts(
        store,
        &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")],
        true,
    )?;
    let mut seen = Vec::new();
    call(
        "scan",
        store.scan(b"", None, &mut |k, _| {
            seen.push(k.to_vec());
            seen.len() < 2
        }),
    )?;
    ensure_eq!(
        seen,
        vec![b"a".to_vec(), b"b".to_vec()],
        "visit returned false on the second key; the scan must stop there"
    );
    let mut calls = 0;
    call(
        "scan",
        store.scan(b"c", Some(b"z"), &mut |_, _| {
            calls += 1;
            false
        }),
    )?;
    ensure_eq!(calls, 1, "visit returned false at once; calls");
    Ok(())
}

fn scan_of_empty_range_visits_nothing<S: StateStore>(store: &S) -> Outcome {
    write_puts(store, &[("a", "1"), ("b", "2"), ("c", "3")], true)?;
    ensure_eq!(
        scan_all(store, b"b", Some(b"b"))?,
        Pairs::new(),
        "scan of [b, b)"
    );
    ensure_eq!(
        scan_all(store, b"c", Some(b"a"))?,
        Pairs::new(),
        "scan of the inverted [c, a)"
    );
    ensure_eq!(
        scan_all(store, b"", Some(b""))?,
        Pairs::new(),
        "scan of [\"\", \"\")"
    );
    Ok(())
}

fn keys_order_bytewise<S: StateStore>(store: &S) -> Outcome {
    let keys: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        vec![0x00],
        RESERVED_PREFIX.to_vec(),
        [RESERVED_PREFIX, b"applied"].concat(),
        b"a".to_vec(),
        b"a\x00".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        vec![0x7f],
        vec![0x80],
        vec![0xff],
        vec![0xff, 0xff],
    ];
    let mut batch = WriteBatch::new();
    for (i, key) in keys.iter().enumerate().rev() {
        batch.put(key.clone(), i.to_string());
    }
    call("write", store.write(batch, true))?;
    let expected: Pairs = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), i.to_string().into_bytes()))
        .collect();
    ensure_eq!(
        scan_all(store, b"", None)?,
        expected,
        "scan must order keys as unsigned bytes"
    );
    let mut reserved_end = RESERVED_PREFIX.to_vec();
    if let Some(last) = reserved_end.last_mut() {
        *last += 1;
    }
    ensure_eq!(
        scan_all(store, RESERVED_PREFIX, Some(&reserved_end))?,
        expected[2..4].to_vec(),
        "scan of the reserved prefix"
    );
    Ok(())
}

fn random_batches_match_model<S: StateStore>(store: &S) -> Outcome {
    let mut rng = Rng(0xBA7C4);
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for step in 0..200 {
        let mut batch = WriteBatch::new();
        for _ in 0..rng.below(8) {
            let key = format!("k{:02}", rng.below(40)).into_bytes();
            if rng.below(4) == 0 {
                model.remove(&key);
                batch.delete(key);
            } else {
                let value = format!("v{step}.{}", rng.below(1000)).into_bytes();
                model.insert(key.clone(), value.clone());
                batch.put(key, value);
            }
        }
        call("write", store.write(batch, rng.below(4) == 0))?;
        let lo = format!("k{:02}", rng.below(45)).into_bytes();
        let hi = format!("k{:02}", rng.below(45)).into_bytes();
        let expected: Pairs = if lo < hi {
            model
                .range(lo.clone()..hi.clone())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            Pairs::new()
        };
        ensure_eq!(
            scan_all(store, &lo, Some(&hi))?,
            expected,
            "step {step}: scan of [{}, {})",
            String::from_utf8_lossy(&lo),
            String::from_utf8_lossy(&hi)
        );
    }
    let everything: Pairs = model.into_iter().collect();
    ensure_eq!(
        scan_all(store, b"", None)?,
        everything,
        "final scan of everything"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// StateStore across a reopen
// ---------------------------------------------------------------------------

fn state_reopen_cases<S: StateStore>() -> Vec<ReopenCase<S>> {
    vec![
        (
            "fresh_state_survives_reopen",
            fresh_state_survives_reopen::<S>,
        ),
        (
            "synced_batches_survive_reopen",
            synced_batches_survive_reopen::<S>,
        ),
        ("restore_survives_reopen", restore_survives_reopen::<S>),
    ]
}

fn restore_survives_reopen<S: StateStore>(store: S, reopen: &Reopen<'_, S>) -> Outcome {
    let mut batch = WriteBatch::new();
    batch.put(b"before".to_vec(), b"x".to_vec());
    call("write", store.write(batch, false))?;
    let pairs: Pairs = (0..100u32)
        .map(|i| (format!("key{i:03}").into_bytes(), vec![i as u8; 100]))
        .collect();
    let mut source = pairs.clone().into_iter().map(Ok);
    call("restore", store.restore(&mut source))?;
    let store = call("reopen", reopen(store))?;
    ensure_eq!(
        scan_all(&store, b"", None)?,
        pairs,
        "a restored store after a reopen"
    );
    Ok(())
}

fn fresh_state_survives_reopen<S: StateStore>(store: S, reopen: &Reopen<'_, S>) -> Outcome {
    let store = call("reopen", reopen(store))?;
    fresh_state_is_empty(&store).map_err(|e| format!("after reopening a fresh store: {e}"))
}

fn synced_batches_survive_reopen<S: StateStore>(mut store: S, reopen: &Reopen<'_, S>) -> Outcome {
    let mut rng = Rng(0x5747E);
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for round in 0..4 {
        for step in 0..20 {
            let mut batch = WriteBatch::new();
            for _ in 0..rng.below(6) {
                let key = [RESERVED_PREFIX, format!("k{:02}", rng.below(30)).as_bytes()].concat();
                let key = if rng.below(2) == 0 {
                    key[RESERVED_PREFIX.len()..].to_vec()
                } else {
                    key
                };
                if rng.below(4) == 0 {
                    model.remove(&key);
                    batch.delete(key);
                } else {
                    let value = format!("v{round}.{step}").into_bytes();
                    model.insert(key.clone(), value.clone());
                    batch.put(key, value);
                }
            }
            call("write", store.write(batch, false))?;
        }
        // The last write of each round is synced: everything before it
        // must survive the reopen.
        let mut last = WriteBatch::new();
        last.put(b"".to_vec(), format!("round {round}"));
        model.insert(Vec::new(), format!("round {round}").into_bytes());
        call("write", store.write(last, true))?;
        store = call("reopen", reopen(store))?;
        let everything: Pairs = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        ensure_eq!(
            scan_all(&store, b"", None)?,
            everything,
            "round {round}: scan of everything after a reopen"
        );
        for (key, value) in &model {
            ensure_eq!(
                call("get", store.get(key))?,
                Some(value.clone()),
                "round {round}: get({key:?}) after a reopen"
            );
        }
    }
    Ok(())
}
