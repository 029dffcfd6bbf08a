//! The MVCC machine against every backend: a table of semantic cases per
//! operation (errors included), and random histories compared with an
//! independent reference model, with reopens in the middle.

use std::collections::BTreeMap;
use std::sync::Arc;

use ha_core::{
    ApplyContext, ClusterId, Compare, CompareOp, CompareTarget, DeleteRequest, Error,
    InvalidRequest, KeyRange, KeyValue, LeaseId, NodeId, PutRequest, RangeRequest, RequestId,
    SortOrder, SortTarget, StateMachine, StateStore, TxnOp, TxnOpResponse, TxnRequest, WriteBatch,
};
use ha_core::{EventKind, WatchEvent};
use proptest::prelude::*;
use std::time::Duration;

use super::{HeaderStamp, KvCommand, KvObserver, KvQuery, KvReply, MvccMachine, decode_reply};
use crate::MemStateStore;

const STAMP: HeaderStamp = HeaderStamp {
    cluster_id: ClusterId([7; 32]),
    member_id: NodeId(1),
    raft_term: 1,
};

/// A store the harness can reopen: the same memory store, or a RocksDB
/// directory closed and opened again.
trait Backend {
    type Store: StateStore;
    fn store(&mut self) -> Arc<Self::Store>;
    /// Closes and reopens the store (what a restarted member sees).
    fn reopen(&mut self) -> Arc<Self::Store>;
}

struct Mem(Arc<MemStateStore>);

impl Backend for Mem {
    type Store = MemStateStore;
    fn store(&mut self) -> Arc<MemStateStore> {
        self.0.clone()
    }
    fn reopen(&mut self) -> Arc<MemStateStore> {
        self.0.clone()
    }
}

#[cfg(feature = "rocksdb")]
struct Rocks {
    dir: tempfile::TempDir,
    env: crate::RocksEnv,
    store: Option<Arc<crate::RocksStateStore>>,
}

#[cfg(feature = "rocksdb")]
impl Rocks {
    fn new() -> Self {
        let config = crate::StorageConfig::default();
        let env = crate::RocksEnv::new(&config).expect("rocks env");
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::RocksStateStore::open(dir.path(), &config, &env).expect("open");
        Rocks {
            dir,
            env,
            store: Some(Arc::new(store)),
        }
    }
}

#[cfg(feature = "rocksdb")]
impl Backend for Rocks {
    type Store = crate::RocksStateStore;
    fn store(&mut self) -> Arc<crate::RocksStateStore> {
        self.store.clone().expect("open store")
    }
    fn reopen(&mut self) -> Arc<crate::RocksStateStore> {
        self.store = None;
        let config = crate::StorageConfig::default();
        let store =
            crate::RocksStateStore::open(self.dir.path(), &config, &self.env).expect("reopen");
        self.store = Some(Arc::new(store));
        self.store()
    }
}

/// Drives a machine as the engine does: commands applied in steps into one
/// batch, the batch committed, then `on_committed`; queries between steps.
struct Harness<B: Backend> {
    backend: B,
    machine: Option<MvccMachine<B::Store>>,
    index: u64,
    quota: u64,
    term: u64,
}

impl<B: Backend> Harness<B> {
    fn new(mut backend: B) -> Self {
        let store = backend.store();
        let machine = Some(MvccMachine::open(store.clone()).expect("open machine"));
        Harness {
            backend,
            machine,
            index: 0,
            quota: 0,
            term: 1,
        }
    }

    fn m(&self) -> &MvccMachine<B::Store> {
        self.machine.as_ref().expect("machine open")
    }

    fn m_mut(&mut self) -> &mut MvccMachine<B::Store> {
        self.machine.as_mut().expect("machine open")
    }

    fn step(&mut self, commands: &[KvCommand]) -> Vec<Result<KvReply, Error>> {
        let mut batch = WriteBatch::new();
        let mut out = Vec::new();
        for c in commands {
            self.index += 1;
            let ctx = ApplyContext {
                index: self.index,
                term: self.term,
                request: RequestId {
                    member: NodeId(1),
                    incarnation: 1,
                    seq: self.index,
                },
            };
            let machine = self.machine.as_mut().expect("machine open");
            let reply = machine.apply(&ctx, &c.encode(self.quota), &mut batch);
            out.push(decode_reply(&reply, &STAMP));
        }
        self.backend
            .store()
            .write(batch, false)
            .expect("commit batch");
        self.machine
            .as_mut()
            .expect("machine open")
            .on_committed(self.index);
        out
    }

    fn write(&mut self, c: KvCommand) -> Result<KvReply, Error> {
        self.step(&[c]).remove(0)
    }

    fn put(&mut self, k: &str, v: &str) -> i64 {
        match self.write(KvCommand::Put(PutRequest::new(k, v))) {
            Ok(KvReply::Put(p)) => p.header.revision,
            other => panic!("put {k}={v} failed: {other:?}"),
        }
    }

    fn query(&self, q: KvQuery) -> Result<KvReply, Error> {
        decode_reply(&self.m().query(&q.encode()), &STAMP)
    }

    fn range(&self, r: RangeRequest) -> Result<ha_core::RangeResponse, Error> {
        match self.query(KvQuery::Range(r))? {
            KvReply::Range(r) => Ok(r),
            other => panic!("a range answered {other:?}"),
        }
    }

    fn get(&self, k: &str) -> Option<KeyValue> {
        self.range(RangeRequest::new(KeyRange::key(k)))
            .expect("get")
            .kvs
            .into_iter()
            .next()
    }

    fn reopen(&mut self) {
        // The old machine holds the store: drop both before reopening.
        self.machine = None;
        let store = self.backend.reopen();
        self.machine = Some(MvccMachine::open(store).expect("reopen machine"));
    }
}

fn keys(r: &ha_core::RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

fn range_at(range: KeyRange, revision: i64) -> RangeRequest {
    RangeRequest {
        revision,
        ..RangeRequest::new(range)
    }
}

macro_rules! backend_cases {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            #[test]
            fn put_sets_revisions_and_versions() {
                super::put_sets_revisions_and_versions(Harness::new($make));
            }
            #[test]
            fn put_options() {
                super::put_options(Harness::new($make));
            }
            #[test]
            fn range_kinds_limits_and_sorting() {
                super::range_kinds_limits_and_sorting(Harness::new($make));
            }
            #[test]
            fn past_revisions_future_and_compacted() {
                super::past_revisions_future_and_compacted(Harness::new($make));
            }
            #[test]
            fn delete_single_prefix_range() {
                super::delete_single_prefix_range(Harness::new($make));
            }
            #[test]
            fn txn_compares_branches_and_nesting() {
                super::txn_compares_branches_and_nesting(Harness::new($make));
            }
            #[test]
            fn txn_invalid_requests() {
                super::txn_invalid_requests(Harness::new($make));
            }
            #[test]
            fn quota_refuses_writes_but_not_deletes_reads_compaction() {
                super::quota_refuses_writes_but_not_deletes_reads_compaction(Harness::new($make));
            }
            #[test]
            fn revision_survives_reopen_after_compaction_removed_its_record() {
                super::revision_survives_reopen_after_compaction_removed_its_record(Harness::new(
                    $make,
                ));
            }
            #[test]
            fn one_step_many_commands_and_reopen() {
                super::one_step_many_commands_and_reopen(Harness::new($make));
            }
            #[test]
            fn leases_attach_revoke_expire_and_survive_reopen() {
                super::leases_attach_revoke_expire_and_survive_reopen(Harness::new($make));
            }
            #[test]
            fn events_reach_the_observer_and_history_repeats_them() {
                super::events_reach_the_observer_and_history_repeats_them(Harness::new($make));
            }
            #[test]
            fn malformed_bytes_get_an_error_reply() {
                super::malformed_bytes_get_an_error_reply(Harness::new($make));
            }

            proptest! {
                #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
                #[test]
                fn random_histories_match_the_model(ops in history()) {
                    super::check_against_model(Harness::new($make), ops)?;
                }
            }
        }
    };
}

backend_cases!(mem, Mem(Arc::new(MemStateStore::new())));
#[cfg(feature = "rocksdb")]
backend_cases!(rocks, Rocks::new());

/// What an observer was told.
#[derive(Default)]
struct Seen {
    steps: Vec<(Vec<WatchEvent>, i64)>,
    compacted: Vec<i64>,
    restored: Vec<(i64, i64)>,
}

struct Recorder(Arc<std::sync::Mutex<Seen>>);

impl KvObserver for Recorder {
    fn events(&mut self, events: &[WatchEvent], revision: i64) {
        self.0
            .lock()
            .expect("recorder")
            .steps
            .push((events.to_vec(), revision));
    }
    fn compacted(&mut self, compact_revision: i64) {
        self.0
            .lock()
            .expect("recorder")
            .compacted
            .push(compact_revision);
    }
    fn restored(&mut self, revision: i64, compact_revision: i64, _: &[(LeaseId, Duration)]) {
        self.0
            .lock()
            .expect("recorder")
            .restored
            .push((revision, compact_revision));
    }
}

/// (kind, key, revision, value, prev value) of each event.
type Brief = (EventKind, String, i64, String, Option<String>);

fn brief(events: &[WatchEvent]) -> Vec<Brief> {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    events
        .iter()
        .map(|e| {
            (
                e.kind,
                s(&e.kv.key),
                e.kv.mod_revision,
                s(&e.kv.value),
                e.prev_kv.as_ref().map(|p| s(&p.value)),
            )
        })
        .collect()
}

fn events_reach_the_observer_and_history_repeats_them<B: Backend>(mut h: Harness<B>) {
    use EventKind::{Delete, Put};
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    h.m_mut().set_observer(Box::new(Recorder(seen.clone())));
    let o = |s: &str| Some(s.to_string());
    let ev = |k: EventKind, key: &str, rev: i64, v: &str, prev: Option<String>| -> Brief {
        (k, key.to_string(), rev, v.to_string(), prev)
    };
    // One step of three commands: the observer hears once, in write order.
    h.step(&[
        KvCommand::Put(PutRequest::new("a/1", "x")),
        KvCommand::Put(PutRequest::new("a/1", "y")),
        KvCommand::Put(PutRequest::new("b", "z")),
    ]);
    // A transaction writes several keys at one revision; a failed put
    // (ignore_value on a missing key) writes nothing and says nothing.
    h.step(&[
        KvCommand::Txn(TxnRequest {
            compare: vec![],
            success: vec![
                TxnOp::Put(PutRequest::new("a/2", "t")),
                TxnOp::Delete(DeleteRequest::new(KeyRange::key("b"))),
                TxnOp::Put(PutRequest::new("a/1", "w")),
            ],
            failure: vec![],
        }),
        KvCommand::Put(PutRequest {
            ignore_value: true,
            ..PutRequest::new("missing", "")
        }),
    ]);
    h.write(KvCommand::Delete(DeleteRequest::new(KeyRange::prefix(
        "a/",
    ))))
    .expect("delete prefix");
    let all = vec![
        ev(Put, "a/1", 2, "x", None),
        ev(Put, "a/1", 3, "y", o("x")),
        ev(Put, "b", 4, "z", None),
        ev(Put, "a/2", 5, "t", None),
        ev(Delete, "b", 5, "", o("z")),
        ev(Put, "a/1", 5, "w", o("y")),
        ev(Delete, "a/1", 6, "", o("w")),
        ev(Delete, "a/2", 6, "", o("t")),
    ];
    {
        let seen = seen.lock().expect("recorder");
        let revisions: Vec<i64> = seen.steps.iter().map(|(_, r)| *r).collect();
        assert_eq!(
            revisions,
            vec![4, 5, 6],
            "one call per step with the revision after it"
        );
        let told: Vec<WatchEvent> = seen
            .steps
            .iter()
            .flat_map(|(e, _)| e.iter().cloned())
            .collect();
        assert_eq!(brief(&told), all, "the observer's events");
    }
    // History repeats exactly what the observer heard, prev_kv included,
    // and is cut at revision boundaries only.
    let (events, covered) = h.m().history(2, 6, 100).expect("history");
    assert_eq!((brief(&events), covered), (all.clone(), 6));
    let (events, covered) = h.m().history(3, 6, 2).expect("history");
    assert_eq!(
        (brief(&events), covered),
        (all[1..3].to_vec(), 4),
        "two events: revisions 3 and 4"
    );
    let (events, covered) = h.m().history(5, 6, 1).expect("history");
    assert_eq!(
        (brief(&events), covered),
        (all[3..6].to_vec(), 5),
        "a revision is never split, whatever the bound"
    );
    let (events, covered) = h.m().history(7, 100, 10).expect("history");
    assert_eq!((events.len(), covered), (0, 6), "nothing beyond the head");
    // After a reopen the key index gives the same prev_kvs.
    h.reopen();
    let (events, _) = h.m().history(2, 6, 100).expect("history after reopen");
    assert_eq!(brief(&events), all);
    h.m_mut().set_observer(Box::new(Recorder(seen.clone())));
    h.write(KvCommand::Compact(5)).expect("compact");
    assert_eq!(seen.lock().expect("recorder").compacted, vec![5]);
    for from in [2, 5] {
        assert!(
            matches!(
                h.m().history(from, 6, 100),
                Err(Error::Compacted {
                    compact_revision: 5
                })
            ),
            "history from {from} after compacting at 5"
        );
    }
    let (events, _) = h.m().history(6, 6, 100).expect("history after compaction");
    assert_eq!(
        brief(&events),
        all[6..].to_vec(),
        "prev_kv kept at the compaction point"
    );
    // A snapshot install (here: a reload) tells the observer where the
    // machine now stands.
    h.m_mut().restored(0).expect("reload");
    assert_eq!(seen.lock().expect("recorder").restored, vec![(6, 5)]);
}

fn put_sets_revisions_and_versions<B: Backend>(mut h: Harness<B>) {
    assert_eq!(h.m().revision(), 1, "an empty store is at revision 1");
    assert_eq!(h.put("a", "1"), 2);
    assert_eq!(h.put("a", "2"), 3);
    assert_eq!(h.put("b", "x"), 4);
    let a = h.get("a").expect("a exists");
    assert_eq!(
        (
            a.create_revision,
            a.mod_revision,
            a.version,
            a.value.as_slice()
        ),
        (2, 3, 2, &b"2"[..])
    );
    h.write(KvCommand::Delete(DeleteRequest::new(KeyRange::key("a"))))
        .expect("delete");
    assert_eq!(h.put("a", "3"), 6);
    let a = h.get("a").expect("a recreated");
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version),
        (6, 6, 1),
        "a key recreated after a delete starts a new generation"
    );
}

fn put_options<B: Backend>(mut h: Harness<B>) {
    h.put("k", "v1");
    let r = h.write(KvCommand::Put(PutRequest {
        prev_kv: true,
        ..PutRequest::new("k", "v2")
    }));
    let Ok(KvReply::Put(p)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(p.prev_kv.expect("prev kv").value, b"v1");
    // ignore_value keeps the value, bumps the version.
    let r = h.write(KvCommand::Put(PutRequest {
        ignore_value: true,
        ..PutRequest::new("k", "")
    }));
    assert!(r.is_ok(), "{r:?}");
    let k = h.get("k").expect("k");
    assert_eq!((k.value.as_slice(), k.version), (&b"v2"[..], 3));
    let r = h.write(KvCommand::Put(PutRequest {
        ignore_lease: true,
        ..PutRequest::new("k", "v4")
    }));
    assert!(r.is_ok(), "{r:?}");
    // Error cases.
    let cases: Vec<(PutRequest, &str)> = vec![
        (PutRequest::new("", "v"), "EmptyKey"),
        (
            PutRequest {
                ignore_value: true,
                ..PutRequest::new("missing", "")
            },
            "KeyNotFound",
        ),
        (
            PutRequest {
                ignore_value: true,
                ..PutRequest::new("k", "given")
            },
            "IgnoredFieldSet",
        ),
        (
            PutRequest {
                lease: LeaseId(5),
                ..PutRequest::new("k", "v")
            },
            "LeaseNotFound",
        ),
    ];
    let before = h.m().revision();
    for (req, want) in cases {
        let r = h.write(KvCommand::Put(req.clone()));
        assert!(
            format!("{r:?}").contains(want),
            "{req:?} should fail with {want}, got {r:?}"
        );
    }
    assert_eq!(h.m().revision(), before, "a refused put changed nothing");
}

fn range_kinds_limits_and_sorting<B: Backend>(mut h: Harness<B>) {
    for (k, v) in [
        ("a", "3"),
        ("ab", "1"),
        ("abc", "2"),
        ("b", "5"),
        ("c", "4"),
    ] {
        h.put(k, v);
    }
    h.put("ab", "9"); // ab: version 2, newest mod revision
    let r = h
        .range(RangeRequest::new(KeyRange::prefix("a")))
        .expect("prefix");
    assert_eq!(keys(&r), ["a", "ab", "abc"]);
    let r = h
        .range(RangeRequest::new(KeyRange::range("ab", "b\0")))
        .expect("range");
    assert_eq!(keys(&r), ["ab", "abc", "b"]);
    let r = h
        .range(RangeRequest::new(KeyRange::From(b"b".to_vec())))
        .expect("from");
    assert_eq!(keys(&r), ["b", "c"]);
    let r = h
        .range(RangeRequest::new(KeyRange::range("c", "a")))
        .expect("inverted");
    assert_eq!((r.count, r.kvs.len()), (0, 0));
    let r = h
        .range(RangeRequest {
            limit: 2,
            ..RangeRequest::new(KeyRange::prefix(""))
        })
        .expect("limit");
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["a".into(), "ab".into()], true, 5)
    );
    let r = h
        .range(RangeRequest {
            count_only: true,
            ..RangeRequest::new(KeyRange::prefix(""))
        })
        .expect("count only");
    assert_eq!((r.count, r.kvs.len()), (5, 0));
    let r = h
        .range(RangeRequest {
            keys_only: true,
            ..RangeRequest::new(KeyRange::key("a"))
        })
        .expect("keys only");
    assert!(r.kvs[0].value.is_empty() && r.kvs[0].key == b"a");
    let sorted = |target, order, limit| {
        keys(
            &h.range(RangeRequest {
                sort_target: target,
                sort_order: order,
                limit,
                ..RangeRequest::new(KeyRange::prefix(""))
            })
            .expect("sorted"),
        )
    };
    assert_eq!(
        sorted(SortTarget::Value, SortOrder::Descend, 0),
        ["ab", "b", "c", "a", "abc"]
    );
    assert_eq!(sorted(SortTarget::Value, SortOrder::None, 2), ["abc", "a"]);
    assert_eq!(sorted(SortTarget::Key, SortOrder::Descend, 2), ["c", "b"]);
    assert_eq!(
        sorted(SortTarget::ModRevision, SortOrder::Descend, 1),
        ["ab"]
    );
    assert_eq!(
        sorted(SortTarget::CreateRevision, SortOrder::Ascend, 0),
        ["a", "ab", "abc", "b", "c"]
    );
    assert_eq!(sorted(SortTarget::Version, SortOrder::Descend, 1), ["ab"]);
}

fn past_revisions_future_and_compacted<B: Backend>(mut h: Harness<B>) {
    let r1 = h.put("k", "one");
    let r2 = h.put("k", "two");
    h.write(KvCommand::Delete(DeleteRequest::new(KeyRange::key("k"))))
        .expect("delete");
    let r4 = h.put("k", "four");
    let at = |h: &Harness<B>, rev| {
        h.range(range_at(KeyRange::key("k"), rev)).map(|r| {
            r.kvs
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        })
    };
    assert_eq!(at(&h, r1).expect("r1").as_deref(), Some("one"));
    assert_eq!(at(&h, r2).expect("r2").as_deref(), Some("two"));
    assert_eq!(at(&h, r2 + 1).expect("deleted"), None);
    assert_eq!(at(&h, r4).expect("r4").as_deref(), Some("four"));
    match at(&h, r4 + 1) {
        Err(Error::FutureRevision { requested, current }) => {
            assert_eq!((requested, current), (r4 + 1, r4))
        }
        other => panic!("a future revision read answered {other:?}"),
    }
    match h.write(KvCommand::Compact(r4 + 1)) {
        Err(Error::FutureRevision { .. }) => {}
        other => panic!("compacting the future answered {other:?}"),
    }
    h.write(KvCommand::Compact(r2)).expect("compact");
    match at(&h, r1) {
        Err(Error::Compacted { compact_revision }) => assert_eq!(compact_revision, r2),
        other => panic!("a compacted read answered {other:?}"),
    }
    assert_eq!(
        at(&h, r2).expect("at the compact revision").as_deref(),
        Some("two")
    );
    match h.write(KvCommand::Compact(r2)) {
        Err(Error::Compacted { compact_revision }) => assert_eq!(compact_revision, r2),
        other => panic!("compacting twice answered {other:?}"),
    }
    let used = h.m().used_bytes();
    h.write(KvCommand::Compact(r4)).expect("compact to current");
    assert!(h.m().used_bytes() < used, "compaction freed nothing");
    assert_eq!(at(&h, r4).expect("r4").as_deref(), Some("four"));
    h.reopen();
    assert_eq!(
        h.m().compact_revision(),
        r4,
        "compact revision survives reopen"
    );
    assert_eq!(
        at(&h, r4).expect("r4 after reopen").as_deref(),
        Some("four")
    );
    assert!(matches!(at(&h, r2), Err(Error::Compacted { .. })));
}

/// Writes do not store the revision: a reopened machine takes it from the
/// newest record, or from what compaction stored when it removed that one.
/// Revisions must never go back, or a watcher's resume point and every
/// `mod_revision` compare would be wrong.
fn revision_survives_reopen_after_compaction_removed_its_record<B: Backend>(mut h: Harness<B>) {
    h.put("a", "1");
    let r = h.put("k", "v");
    h.reopen();
    assert_eq!(h.m().revision(), r, "the newest record's revision");
    h.write(KvCommand::Delete(DeleteRequest::new(KeyRange::prefix(""))))
        .expect("delete all");
    let deleted = h.m().revision();
    assert_eq!(deleted, r + 1);
    // Compacting at the delete removes every record: only tombstones were
    // newest, and compaction drops them.
    h.write(KvCommand::Compact(deleted)).expect("compact");
    h.reopen();
    assert_eq!(
        h.m().revision(),
        deleted,
        "revision after compaction and reopen"
    );
    assert_eq!(h.m().compact_revision(), deleted);
    assert_eq!(
        h.put("k", "again"),
        deleted + 1,
        "the next write's revision"
    );
    // A range at the current revision is not a future read.
    let got = h
        .range(range_at(KeyRange::key("k"), deleted + 1))
        .expect("range");
    assert_eq!(keys(&got), vec!["k".to_owned()]);
}

#[test]
fn records_encode_as_prost_would() {
    use super::wire::{RecordRef, WRecord};
    use prost::Message as _;
    let cases = [
        WRecord {
            key: b"k".to_vec(),
            value: vec![7; 300],
            create_revision: 5,
            version: 2,
            lease: 99,
            tombstone: false,
        },
        WRecord {
            key: b"gone".to_vec(),
            tombstone: true,
            ..WRecord::default()
        },
        WRecord {
            key: vec![0xff; 200],
            value: Vec::new(),
            create_revision: i64::MAX,
            version: 1,
            lease: -1,
            tombstone: false,
        },
    ];
    for rec in cases {
        let by_ref = RecordRef {
            key: &rec.key,
            value: &rec.value,
            create_revision: rec.create_revision,
            version: rec.version,
            lease: rec.lease,
            tombstone: rec.tombstone,
        }
        .encode();
        assert_eq!(by_ref, rec.encode_to_vec(), "{rec:?}");
    }
}

fn delete_single_prefix_range<B: Backend>(mut h: Harness<B>) {
    for k in ["a", "ab", "b", "c", "d"] {
        h.put(k, k);
    }
    let del = |h: &mut Harness<B>, range, prev_kv| match h
        .write(KvCommand::Delete(DeleteRequest { range, prev_kv }))
    {
        Ok(KvReply::Delete(d)) => d,
        other => panic!("delete answered {other:?}"),
    };
    let d = del(&mut h, KeyRange::key("zz"), false);
    assert_eq!(
        (d.deleted, d.header.revision),
        (0, 6),
        "deleting nothing makes no revision"
    );
    let d = del(&mut h, KeyRange::prefix("a"), true);
    assert_eq!(d.deleted, 2);
    assert_eq!(d.header.revision, 7);
    assert_eq!(
        d.prev_kvs
            .iter()
            .map(|kv| kv.key.clone())
            .collect::<Vec<_>>(),
        [b"a".to_vec(), b"ab".to_vec()]
    );
    let d = del(&mut h, KeyRange::range("b", "d"), false);
    assert_eq!((d.deleted, d.header.revision), (2, 8));
    let r = h
        .range(RangeRequest::new(KeyRange::prefix("")))
        .expect("all");
    assert_eq!(keys(&r), ["d"]);
}

fn txn_compares_branches_and_nesting<B: Backend>(mut h: Harness<B>) {
    let rev = h.put("k", "v");
    let txn = |cmp: Compare| TxnRequest {
        compare: vec![cmp],
        success: vec![TxnOp::Put(PutRequest::new("r", "yes"))],
        failure: vec![TxnOp::Put(PutRequest::new("r", "no"))],
    };
    let cases = [
        (
            Compare::key("k", CompareOp::Equal, CompareTarget::Value(b"v".to_vec())),
            true,
        ),
        (
            Compare::key(
                "k",
                CompareOp::NotEqual,
                CompareTarget::Value(b"v".to_vec()),
            ),
            false,
        ),
        (
            Compare::key("k", CompareOp::Greater, CompareTarget::Value(b"u".to_vec())),
            true,
        ),
        (
            Compare::key("k", CompareOp::Less, CompareTarget::Value(b"u".to_vec())),
            false,
        ),
        (
            Compare::key("k", CompareOp::Equal, CompareTarget::Version(1)),
            true,
        ),
        (
            Compare::key("k", CompareOp::Equal, CompareTarget::CreateRevision(rev)),
            true,
        ),
        (
            Compare::key("k", CompareOp::Less, CompareTarget::ModRevision(rev)),
            false,
        ),
        (
            Compare::key("k", CompareOp::Equal, CompareTarget::Lease(LeaseId::NONE)),
            true,
        ),
        // A missing key: version 0, and every value compare fails.
        (
            Compare::key("nope", CompareOp::Equal, CompareTarget::Version(0)),
            true,
        ),
        (
            Compare::key(
                "nope",
                CompareOp::NotEqual,
                CompareTarget::Value(b"x".to_vec()),
            ),
            false,
        ),
        // A range compare: every key must hold.
        (
            Compare {
                range: KeyRange::prefix(""),
                op: CompareOp::Greater,
                target: CompareTarget::ModRevision(0),
            },
            true,
        ),
    ];
    for (cmp, want) in cases {
        let r = h.write(KvCommand::Txn(txn(cmp.clone())));
        let Ok(KvReply::Txn(t)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(t.succeeded, want, "compare {cmp:?}");
        let got = h.get("r").expect("r written");
        assert_eq!(
            got.value,
            if want {
                b"yes".to_vec()
            } else {
                b"no".to_vec()
            }
        );
        assert_eq!(got.mod_revision, t.header.revision);
    }
    // One revision for the whole transaction; reads see earlier writes.
    let before = h.m().revision();
    let r = h.write(KvCommand::Txn(TxnRequest {
        compare: vec![],
        success: vec![
            TxnOp::Put(PutRequest::new("x", "1")),
            TxnOp::Put(PutRequest::new("y", "2")),
            TxnOp::Range(RangeRequest::new(KeyRange::prefix("x"))),
            TxnOp::Delete(DeleteRequest::new(KeyRange::key("k"))),
            TxnOp::Txn(TxnRequest {
                compare: vec![Compare::key(
                    "k",
                    CompareOp::Equal,
                    CompareTarget::Version(1),
                )],
                success: vec![TxnOp::Range(range_at(KeyRange::key("k"), before))],
                failure: vec![],
            }),
        ],
        failure: vec![],
    }));
    let Ok(KvReply::Txn(t)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        t.header.revision,
        before + 1,
        "one revision per transaction"
    );
    let x = h.get("x").expect("x");
    let y = h.get("y").expect("y");
    assert_eq!((x.mod_revision, y.mod_revision), (before + 1, before + 1));
    assert!(h.get("k").is_none());
    match &t.responses[2] {
        TxnOpResponse::Range(r) => assert_eq!(keys(r), ["x"], "a txn read sees the txn's writes"),
        other => panic!("{other:?}"),
    }
    match &t.responses[4] {
        // The nested compare saw the state before the transaction (etcd).
        TxnOpResponse::Txn(n) => {
            assert!(n.succeeded);
            match &n.responses[0] {
                TxnOpResponse::Range(r) => assert_eq!(keys(r), ["k"]),
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    // A read-only transaction on the query path; no revision.
    let q = h
        .query(KvQuery::Txn(TxnRequest {
            compare: vec![Compare::key(
                "x",
                CompareOp::Equal,
                CompareTarget::Value(b"1".to_vec()),
            )],
            success: vec![TxnOp::Range(RangeRequest::new(KeyRange::key("y")))],
            failure: vec![],
        }))
        .expect("read-only txn");
    let KvReply::Txn(q) = q else { panic!("{q:?}") };
    assert!(q.succeeded);
    assert_eq!(q.header.revision, before + 1);
}

fn txn_invalid_requests<B: Backend>(mut h: Harness<B>) {
    h.put("a", "1");
    let before = h.m().revision();
    let put = |k: &str| TxnOp::Put(PutRequest::new(k, "v"));
    let cases: Vec<(TxnRequest, Error)> = vec![
        (
            TxnRequest {
                success: vec![put("x"), put("x")],
                ..Default::default()
            },
            Error::InvalidRequest {
                reason: InvalidRequest::DuplicateKeyInTxn,
            },
        ),
        (
            TxnRequest {
                success: vec![
                    TxnOp::Delete(DeleteRequest::new(KeyRange::prefix("x"))),
                    put("xy"),
                ],
                ..Default::default()
            },
            Error::InvalidRequest {
                reason: InvalidRequest::PutInDeletedRange,
            },
        ),
        (
            TxnRequest {
                success: vec![
                    put("x"),
                    TxnOp::Txn(TxnRequest {
                        failure: vec![put("x")],
                        ..Default::default()
                    }),
                ],
                ..Default::default()
            },
            Error::InvalidRequest {
                reason: InvalidRequest::DuplicateKeyInTxn,
            },
        ),
        (
            TxnRequest {
                success: vec![
                    put("x"),
                    TxnOp::Range(range_at(KeyRange::key("a"), before + 5)),
                ],
                ..Default::default()
            },
            Error::FutureRevision {
                requested: before + 5,
                current: before,
            },
        ),
        (
            TxnRequest {
                success: vec![put("")],
                ..Default::default()
            },
            Error::InvalidRequest {
                reason: InvalidRequest::EmptyKey,
            },
        ),
    ];
    for (txn, want) in cases {
        let r = h.write(KvCommand::Txn(txn.clone()));
        assert_eq!(
            format!("{r:?}"),
            format!("{:?}", Err::<KvReply, _>(want)),
            "{txn:?}"
        );
    }
    // Puts on both branches of a nested transaction are fine.
    let ok = TxnRequest {
        success: vec![TxnOp::Txn(TxnRequest {
            success: vec![put("x")],
            failure: vec![put("x")],
            ..Default::default()
        })],
        ..Default::default()
    };
    assert!(h.write(KvCommand::Txn(ok)).is_ok());
    assert_eq!(
        h.m().revision(),
        before + 1,
        "refused transactions changed nothing"
    );
    assert!(h.get("x").is_some());
}

fn quota_refuses_writes_but_not_deletes_reads_compaction<B: Backend>(mut h: Harness<B>) {
    h.quota = 400;
    let mut last = 0;
    let mut refused = None;
    for i in 0..20 {
        match h.write(KvCommand::Put(PutRequest::new(
            format!("k{i}"),
            vec![b'x'; 40],
        ))) {
            Ok(KvReply::Put(p)) => last = p.header.revision,
            Err(e) => {
                refused = Some(e);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    match refused {
        Some(Error::NoSpace { used, quota }) => {
            assert_eq!(quota, 400);
            assert!(used <= 400 && used + 40 + 2 + 32 > 400, "used {used}");
        }
        other => panic!("the quota never refused a put: {other:?}"),
    }
    let txn_put = TxnRequest {
        success: vec![TxnOp::Put(PutRequest::new("t", "v"))],
        ..Default::default()
    };
    assert!(matches!(
        h.write(KvCommand::Txn(txn_put.clone())),
        Err(Error::NoSpace { .. })
    ));
    // Reads, deletes and compaction still work.
    assert!(h.get("k0").is_some());
    h.write(KvCommand::Delete(DeleteRequest::new(KeyRange::prefix("k"))))
        .expect("delete over quota");
    assert!(
        matches!(
            h.write(KvCommand::Txn(txn_put.clone())),
            Err(Error::NoSpace { .. })
        ),
        "history still counts until compacted"
    );
    h.write(KvCommand::Compact(last + 1))
        .expect("compact over quota");
    assert!(
        h.write(KvCommand::Txn(txn_put)).is_ok(),
        "compaction freed space"
    );
}

fn one_step_many_commands_and_reopen<B: Backend>(mut h: Harness<B>) {
    h.put("a", "0");
    // Several commands in one engine step: the later ones must see the
    // earlier ones although the batch is not committed yet.
    let out = h.step(&[
        KvCommand::Put(PutRequest::new("a", "1")),
        KvCommand::Put(PutRequest {
            prev_kv: true,
            ..PutRequest::new("a", "2")
        }),
        KvCommand::Txn(TxnRequest {
            compare: vec![Compare::key(
                "a",
                CompareOp::Equal,
                CompareTarget::Version(3),
            )],
            success: vec![TxnOp::Range(range_at(KeyRange::key("a"), 3))],
            failure: vec![],
        }),
        KvCommand::Compact(3),
        KvCommand::Delete(DeleteRequest::new(KeyRange::key("a"))),
    ]);
    match &out[1] {
        Ok(KvReply::Put(p)) => assert_eq!(
            p.prev_kv.as_ref().map(|kv| kv.value.clone()),
            Some(b"1".to_vec())
        ),
        other => panic!("{other:?}"),
    }
    match &out[2] {
        Ok(KvReply::Txn(t)) => {
            assert!(t.succeeded, "the compare saw the step's earlier puts");
            match &t.responses[0] {
                TxnOpResponse::Range(r) => {
                    assert_eq!(r.kvs[0].value, b"1", "a past read within the step")
                }
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    assert!(out[3].is_ok() && out[4].is_ok(), "{out:?}");
    let (rev, used) = (h.m().revision(), h.m().used_bytes());
    h.reopen();
    assert_eq!(
        (h.m().revision(), h.m().used_bytes()),
        (rev, used),
        "reopen rebuilds the same state"
    );
    assert!(h.get("a").is_none());
    assert_eq!(
        h.range(range_at(KeyRange::key("a"), 4)).expect("rev 4").kvs[0].value,
        b"2"
    );
}

fn malformed_bytes_get_an_error_reply<B: Backend>(mut h: Harness<B>) {
    let mut batch = WriteBatch::new();
    let ctx = ApplyContext {
        index: 1,
        term: 1,
        request: RequestId {
            member: NodeId(1),
            incarnation: 1,
            seq: 1,
        },
    };
    for bad in [&b"\xff\xff\xff"[..], b"", b"\x2a\x03\x08\x09\x10"] {
        let r = decode_reply(
            &h.machine
                .as_mut()
                .expect("open")
                .apply(&ctx, bad, &mut batch),
            &STAMP,
        );
        assert!(
            matches!(
                r,
                Err(Error::InvalidRequest {
                    reason: InvalidRequest::Malformed
                })
            ),
            "{bad:?}: {r:?}"
        );
        let r = decode_reply(&h.m().query(bad), &STAMP);
        assert!(
            matches!(
                r,
                Err(Error::InvalidRequest {
                    reason: InvalidRequest::Malformed
                })
            ),
            "{bad:?}: {r:?}"
        );
    }
    assert!(batch.is_empty(), "malformed commands wrote something");
    assert!(h.step(&[]).is_empty());
}

// ---------------------------------------------------------------------
// Random histories against a reference model.

/// One step of a random history.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// Apply these commands in one engine step.
    Step(Vec<KvCommand>),
    /// A range query after the step.
    Range(RangeRequest),
    /// Reopen the machine from its store.
    Reopen,
}

const KEYS: &[&str] = &["a", "ab", "b", "ba", "c"];

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(KEYS).prop_map(|k| k.as_bytes().to_vec())
}

fn key_range() -> impl Strategy<Value = KeyRange> {
    prop_oneof![
        3 => key().prop_map(KeyRange::Key),
        1 => key().prop_map(|k| KeyRange::Prefix(k[..1].to_vec())),
        1 => (key(), key()).prop_map(|(a, b)| KeyRange::Range { start: a, end: b }),
        1 => key().prop_map(KeyRange::From),
    ]
}

fn put() -> impl Strategy<Value = PutRequest> {
    (key(), 0u8..4, any::<bool>()).prop_map(|(k, v, prev_kv)| PutRequest {
        prev_kv,
        ..PutRequest::new(k, vec![b'0' + v])
    })
}

fn range(max_rev: i64) -> impl Strategy<Value = RangeRequest> {
    (
        key_range(),
        0u64..3,
        0..max_rev,
        any::<bool>(),
        prop::sample::select(vec![
            SortTarget::Key,
            SortTarget::Value,
            SortTarget::ModRevision,
            SortTarget::Version,
        ]),
        prop::sample::select(vec![SortOrder::None, SortOrder::Ascend, SortOrder::Descend]),
    )
        .prop_map(
            |(range, limit, revision, keys_only, sort_target, sort_order)| RangeRequest {
                range,
                limit,
                revision,
                keys_only,
                count_only: false,
                sort_target,
                sort_order,
            },
        )
}

fn compare() -> impl Strategy<Value = Compare> {
    (
        key(),
        prop::sample::select(vec![
            CompareOp::Equal,
            CompareOp::NotEqual,
            CompareOp::Less,
            CompareOp::Greater,
        ]),
        prop_oneof![
            (0u8..4).prop_map(|v| CompareTarget::Value(vec![b'0' + v])),
            (0i64..4).prop_map(CompareTarget::Version),
            (0i64..30).prop_map(CompareTarget::ModRevision),
            (0i64..30).prop_map(CompareTarget::CreateRevision),
        ],
    )
        .prop_map(|(k, op, target)| Compare::key(k, op, target))
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        3 => put().prop_map(TxnOp::Put),
        1 => key_range().prop_map(|r| TxnOp::Delete(DeleteRequest { range: r, prev_kv: true })),
        2 => range(30).prop_map(TxnOp::Range),
    ]
}

fn command() -> impl Strategy<Value = KvCommand> {
    prop_oneof![
        5 => put().prop_map(KvCommand::Put),
        2 => key_range().prop_map(|r| KvCommand::Delete(DeleteRequest { range: r, prev_kv: true })),
        3 => (prop::collection::vec(compare(), 0..3), prop::collection::vec(txn_op(), 0..4), prop::collection::vec(txn_op(), 0..3))
            .prop_map(|(compare, success, failure)| KvCommand::Txn(TxnRequest { compare, success, failure })),
        1 => (0i64..30).prop_map(KvCommand::Compact),
    ]
}

pub(crate) fn history() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            8 => prop::collection::vec(command(), 1..4).prop_map(Op::Step),
            4 => range(30).prop_map(Op::Range),
            1 => Just(Op::Reopen),
        ],
        1..40,
    )
}

/// An independent model: the whole map after every revision.
#[derive(Debug)]
pub(crate) struct Model {
    /// `states[r]` is the map at revision `r` (index 0 unused).
    states: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compacted: i64,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            states: vec![BTreeMap::new(), BTreeMap::new()],
            compacted: 0,
        }
    }
}

impl Model {
    fn rev(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    fn header(&self, revision: i64) -> ha_core::ResponseHeader {
        ha_core::ResponseHeader {
            cluster_id: STAMP.cluster_id,
            member_id: STAMP.member_id,
            revision,
            raft_term: STAMP.raft_term,
        }
    }

    fn read(
        &self,
        r: &RangeRequest,
        map: &BTreeMap<Vec<u8>, KeyValue>,
        header_rev: i64,
    ) -> Result<ha_core::RangeResponse, Error> {
        if r.revision > self.rev() {
            return Err(Error::FutureRevision {
                requested: r.revision,
                current: self.rev(),
            });
        }
        if r.revision > 0 && r.revision < self.compacted {
            return Err(Error::Compacted {
                compact_revision: self.compacted,
            });
        }
        let source = if r.revision == 0 {
            map
        } else {
            &self.states[r.revision as usize]
        };
        let mut kvs: Vec<KeyValue> = source
            .values()
            .filter(|kv| r.range.contains(&kv.key))
            .cloned()
            .collect();
        let count = kvs.len() as u64;
        let key_order = r.sort_target == SortTarget::Key && r.sort_order != SortOrder::Descend;
        if !key_order {
            let field = |kv: &KeyValue| -> Vec<u8> {
                match r.sort_target {
                    SortTarget::Key => kv.key.clone(),
                    SortTarget::Value => kv.value.clone(),
                    SortTarget::Version => kv.version.to_be_bytes().to_vec(),
                    SortTarget::ModRevision => kv.mod_revision.to_be_bytes().to_vec(),
                    SortTarget::CreateRevision => kv.create_revision.to_be_bytes().to_vec(),
                }
            };
            kvs.sort_by_key(field);
            if r.sort_order == SortOrder::Descend {
                // Ties keep key order: reverse within the sort, not after.
                kvs.sort_by_key(|kv| std::cmp::Reverse(field(kv)));
            }
        }
        let more = r.limit > 0 && count > r.limit;
        if more {
            kvs.truncate(r.limit as usize);
        }
        if r.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        Ok(ha_core::RangeResponse {
            header: self.header(header_rev),
            kvs,
            more,
            count,
        })
    }

    fn compare(map: &BTreeMap<Vec<u8>, KeyValue>, c: &Compare) -> bool {
        let KeyRange::Key(k) = &c.range else {
            unreachable!("the model compares single keys")
        };
        let zero = KeyValue::default();
        let kv = match (map.get(k), &c.target) {
            (None, CompareTarget::Value(_)) => return false,
            (None, _) => &zero,
            (Some(kv), _) => kv,
        };
        let o = match &c.target {
            CompareTarget::Value(v) => kv.value.cmp(v),
            CompareTarget::Version(n) => kv.version.cmp(n),
            CompareTarget::ModRevision(n) => kv.mod_revision.cmp(n),
            CompareTarget::CreateRevision(n) => kv.create_revision.cmp(n),
            CompareTarget::Lease(l) => kv.lease.cmp(l),
        };
        match c.op {
            CompareOp::Equal => o.is_eq(),
            CompareOp::NotEqual => o.is_ne(),
            CompareOp::Less => o.is_lt(),
            CompareOp::Greater => o.is_gt(),
        }
    }

    /// Applies a command; returns the expected reply.
    pub(crate) fn apply(&mut self, c: &KvCommand) -> Result<KvReply, Error> {
        let next = self.rev() + 1;
        let mut map = self.states[self.rev() as usize].clone();
        let mut wrote = false;
        let reply = match c {
            KvCommand::Put(p) => {
                let prev = Self::put(&mut map, p, next);
                wrote = true;
                KvReply::Put(ha_core::PutResponse {
                    header: self.header(next),
                    prev_kv: prev,
                })
            }
            KvCommand::Delete(d) => {
                let prev_kvs = Self::delete(&mut map, d);
                wrote = !prev_kvs.is_empty();
                let rev = if wrote { next } else { self.rev() };
                KvReply::Delete(ha_core::DeleteResponse {
                    header: self.header(rev),
                    deleted: prev_kvs.len() as u64,
                    prev_kvs: if d.prev_kv { prev_kvs } else { Vec::new() },
                })
            }
            KvCommand::Txn(t) => {
                super::check_txn(t)?;
                let ok = t.compare.iter().all(|c| Self::compare(&map, c));
                let branch = if ok { &t.success } else { &t.failure };
                for op in branch {
                    match op {
                        TxnOp::Put(_) | TxnOp::Delete(_) => {}
                        TxnOp::Range(r) => {
                            self.read(r, &map, 0)?;
                        }
                        TxnOp::Txn(_) => unreachable!("the model has no nested transactions"),
                    }
                }
                let mut responses = Vec::new();
                for op in branch {
                    let will_write = matches!(op, TxnOp::Put(_))
                        || matches!(op, TxnOp::Delete(d) if map.keys().any(|k| d.range.contains(k)));
                    wrote |= will_write;
                    responses.push(match op {
                        TxnOp::Put(p) => TxnOpResponse::Put(ha_core::PutResponse {
                            header: self.header(0),
                            prev_kv: Self::put(&mut map, p, next),
                        }),
                        TxnOp::Delete(d) => {
                            let prev_kvs = Self::delete(&mut map, d);
                            TxnOpResponse::Delete(ha_core::DeleteResponse {
                                header: self.header(0),
                                deleted: prev_kvs.len() as u64,
                                prev_kvs,
                            })
                        }
                        // Revision 0 sees the transaction's own writes; an
                        // explicit one reads committed history.
                        TxnOp::Range(r) => TxnOpResponse::Range(self.read(r, &map, 0)?),
                        TxnOp::Txn(_) => unreachable!(),
                    });
                }
                let rev = if wrote { next } else { self.rev() };
                for r in &mut responses {
                    match r {
                        TxnOpResponse::Put(p) => p.header.revision = rev,
                        TxnOpResponse::Delete(d) => d.header.revision = rev,
                        TxnOpResponse::Range(g) => g.header.revision = rev,
                        TxnOpResponse::Txn(t) => t.header.revision = rev,
                    }
                }
                KvReply::Txn(ha_core::TxnResponse {
                    header: self.header(rev),
                    succeeded: ok,
                    responses,
                })
            }
            KvCommand::Compact(r) => {
                if *r <= self.compacted {
                    return Err(Error::Compacted {
                        compact_revision: self.compacted,
                    });
                }
                if *r > self.rev() {
                    return Err(Error::FutureRevision {
                        requested: *r,
                        current: self.rev(),
                    });
                }
                self.compacted = *r;
                KvReply::Compact(ha_core::CompactResponse {
                    header: self.header(self.rev()),
                })
            }
            // Leases have their own table of cases; histories do not
            // generate them.
            other => panic!("the reference model has no leases: {other:?}"),
        };
        if wrote {
            self.states.push(map);
        }
        Ok(reply)
    }

    fn put(map: &mut BTreeMap<Vec<u8>, KeyValue>, p: &PutRequest, rev: i64) -> Option<KeyValue> {
        let prev = map.get(&p.key).cloned();
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(rev, |kv| kv.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(0, |kv| kv.version) + 1,
            value: p.value.clone(),
            lease: LeaseId::NONE,
        };
        map.insert(p.key.clone(), kv);
        if p.prev_kv { prev } else { None }
    }

    fn delete(map: &mut BTreeMap<Vec<u8>, KeyValue>, d: &DeleteRequest) -> Vec<KeyValue> {
        let keys: Vec<Vec<u8>> = map
            .keys()
            .filter(|k| d.range.contains(k))
            .cloned()
            .collect();
        keys.iter().filter_map(|k| map.remove(k)).collect()
    }

    pub(crate) fn range(&self, r: &RangeRequest) -> Result<KvReply, Error> {
        let map = &self.states[self.rev() as usize];
        self.read(r, map, self.rev()).map(KvReply::Range)
    }
}

fn same(
    what: &str,
    got: &Result<KvReply, Error>,
    want: &Result<KvReply, Error>,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        format!("{got:?}"),
        format!("{want:?}"),
        "{} diverged from the model",
        what
    );
    Ok(())
}

fn check_against_model<B: Backend>(mut h: Harness<B>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Step(cmds) => {
                let got = h.step(&cmds);
                for (c, got) in cmds.iter().zip(&got) {
                    same(&format!("{c:?}"), got, &model.apply(c))?;
                }
            }
            Op::Range(r) => same(
                &format!("{r:?}"),
                &h.query(KvQuery::Range(r.clone())),
                &model.range(&r),
            )?,
            Op::Reopen => h.reopen(),
        }
        prop_assert_eq!(h.m().revision(), model.rev());
        let live = model.states[model.rev() as usize].len();
        prop_assert_eq!(h.m().len(), live, "live keys");
        prop_assert_eq!(h.m().is_empty(), live == 0);
    }
    // Finally every key at every readable revision.
    for rev in model.compacted.max(1)..=model.rev() {
        let r = range_at(KeyRange::prefix(""), rev);
        same(
            &format!("all at {rev}"),
            &h.query(KvQuery::Range(r.clone())),
            &model.range(&r),
        )?;
    }
    Ok(())
}

fn lease_of<B: Backend>(h: &Harness<B>, id: i64) -> Result<super::LeaseInfo, Error> {
    match h.query(KvQuery::Lease {
        id: LeaseId(id),
        keys: true,
    })? {
        KvReply::Lease(l) => Ok(l),
        other => panic!("a lease query answered {other:?}"),
    }
}

fn grant<B: Backend>(h: &mut Harness<B>, id: i64, ttl_ms: u64) -> Result<KvReply, Error> {
    h.write(KvCommand::LeaseGrant {
        id: LeaseId(id),
        ttl: std::time::Duration::from_millis(ttl_ms),
    })
}

fn put_leased<B: Backend>(h: &mut Harness<B>, k: &str, lease: i64) -> Result<KvReply, Error> {
    h.write(KvCommand::Put(PutRequest {
        lease: LeaseId(lease),
        ..PutRequest::new(k, "v")
    }))
}

fn leases_attach_revoke_expire_and_survive_reopen<B: Backend>(mut h: Harness<B>) {
    use std::time::Duration;
    // A put naming an unknown lease fails, alone or in a transaction.
    assert!(matches!(
        put_leased(&mut h, "a", 7),
        Err(Error::LeaseNotFound { lease: 7 })
    ));
    let before = h.m().revision();
    let r = grant(&mut h, 7, 5_000);
    let Ok(KvReply::Lease(l)) = r else {
        panic!("{r:?}")
    };
    assert_eq!((l.id, l.ttl), (LeaseId(7), Duration::from_secs(5)));
    assert_eq!(
        h.m().revision(),
        before,
        "a grant does not change the revision"
    );
    // Bad grants.
    assert!(matches!(
        grant(&mut h, 7, 1_000),
        Err(Error::LeaseExists { lease: 7 })
    ));
    for (id, ttl) in [(0, 1_000), (-3, 1_000)] {
        let r = grant(&mut h, id, ttl);
        assert!(
            matches!(
                r,
                Err(Error::InvalidRequest {
                    reason: InvalidRequest::InvalidLeaseId
                })
            ),
            "{r:?}"
        );
    }
    for ttl in [0, super::MAX_TTL_MS + 1] {
        let r = grant(&mut h, 9, ttl);
        assert!(
            matches!(
                r,
                Err(Error::InvalidRequest {
                    reason: InvalidRequest::InvalidTtl
                })
            ),
            "{r:?}"
        );
    }
    assert!(grant(&mut h, 8, 2_000).is_ok());

    // Keys attach; a put with another lease moves the key; ignore_lease
    // keeps it; a delete detaches it.
    for k in ["a", "b", "c", "d"] {
        assert!(put_leased(&mut h, k, 7).is_ok());
    }
    assert!(put_leased(&mut h, "d", 8).is_ok());
    let r = h.write(KvCommand::Put(PutRequest {
        ignore_lease: true,
        ..PutRequest::new("c", "v2")
    }));
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(h.get("c").expect("c").lease, LeaseId(7));
    h.write(KvCommand::Delete(DeleteRequest::new(KeyRange::key("b"))))
        .expect("delete b");
    let txn = TxnRequest {
        compare: vec![],
        success: vec![TxnOp::Put(PutRequest {
            lease: LeaseId(99),
            ..PutRequest::new("z", "v")
        })],
        failure: vec![],
    };
    assert!(matches!(
        h.write(KvCommand::Txn(txn)),
        Err(Error::LeaseNotFound { lease: 99 })
    ));
    assert_eq!(
        lease_of(&h, 7).expect("7").keys,
        vec![b"a".to_vec(), b"c".to_vec()]
    );
    assert_eq!(lease_of(&h, 8).expect("8").keys, vec![b"d".to_vec()]);

    // Everything survives a reopen.
    h.reopen();
    assert_eq!(
        lease_of(&h, 7).expect("7").keys,
        vec![b"a".to_vec(), b"c".to_vec()]
    );
    let r = h.query(KvQuery::Leases).expect("leases");
    let KvReply::Leases(all) = r else {
        panic!("{r:?}")
    };
    let ids: Vec<(i64, u64)> = all
        .leases
        .iter()
        .map(|l| (l.id.0, l.granted_ttl.as_millis() as u64))
        .collect();
    assert_eq!(ids, vec![(7, 5_000), (8, 2_000)]);

    // Revoking deletes the lease's keys at ONE new revision.
    let before = h.m().revision();
    let r = h.write(KvCommand::LeaseRevoke(LeaseId(7)));
    let Ok(KvReply::LeaseRevoke(rv)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(rv.header.revision, before + 1);
    assert!(h.get("a").is_none() && h.get("c").is_none());
    assert!(h.get("d").is_some());
    let at = h
        .range(range_at(KeyRange::prefix(""), before))
        .expect("history");
    assert_eq!(
        keys(&at),
        vec!["a", "c", "d"],
        "history keeps what the revoke deleted"
    );
    assert!(matches!(
        lease_of(&h, 7),
        Err(Error::LeaseNotFound { lease: 7 })
    ));
    assert!(matches!(
        h.write(KvCommand::LeaseRevoke(LeaseId(7))),
        Err(Error::LeaseNotFound { lease: 7 })
    ));
    // A revoke of a lease without keys leaves the revision alone.
    assert!(grant(&mut h, 10, 1_000).is_ok());
    let before = h.m().revision();
    assert!(h.write(KvCommand::LeaseRevoke(LeaseId(10))).is_ok());
    assert_eq!(h.m().revision(), before);

    // An expiry decided in an earlier term does nothing; one of the
    // entry's own term revokes.
    h.term = 3;
    let r = h.write(KvCommand::LeaseExpire {
        id: LeaseId(8),
        term: 2,
    });
    assert!(
        matches!(
            r,
            Err(Error::InvalidRequest {
                reason: InvalidRequest::StaleLeaseExpiry
            })
        ),
        "{r:?}"
    );
    assert!(h.get("d").is_some());
    let r = h.write(KvCommand::LeaseExpire {
        id: LeaseId(8),
        term: 3,
    });
    assert!(matches!(r, Ok(KvReply::LeaseRevoke(_))), "{r:?}");
    assert!(h.get("d").is_none());
    h.reopen();
    let r = h.query(KvQuery::Leases).expect("leases");
    let KvReply::Leases(all) = r else {
        panic!("{r:?}")
    };
    assert!(all.leases.is_empty(), "{all:?}");
}
