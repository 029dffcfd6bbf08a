//! The replicated KV through a 3-member group in one process (memory
//! stores): the semantics table, limits and errors, random histories
//! against a reference model, and persistence across restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ha_core::{
    Compare, CompareOp, CompareTarget, Config, DeleteRequest, Error, InvalidRequest, KeyRange,
    KvClient, KvLimit, KvOptions, NodeId, PutRequest, RangeRequest, TxnOp, TxnOpResponse,
    TxnRequest, WatchRequest,
};
use ha_raft::{AutoCompaction, KvConfig, KvNode, MemNetwork};
use ha_storage::{MemLogStore, MemStateStore};
use proptest::prelude::*;

const PATIENCE: Duration = Duration::from_secs(20);

struct Group {
    net: MemNetwork,
    kv: KvConfig,
    /// Compact the raft log early (snapshot tests).
    small_log: bool,
    members: Vec<NodeId>,
    stores: Vec<(MemLogStore, MemStateStore)>,
    nodes: Vec<KvNode>,
}

impl Group {
    async fn start(kv: KvConfig) -> Group {
        Group::start_with(kv, false).await
    }

    async fn start_with(kv: KvConfig, small_log: bool) -> Group {
        let members: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let mut g = Group {
            net: MemNetwork::new(),
            kv,
            small_log,
            members: members.clone(),
            stores: members
                .iter()
                .map(|_| (MemLogStore::new(), MemStateStore::new()))
                .collect(),
            nodes: Vec::new(),
        };
        for i in 0..members.len() {
            let node = g.boot(i).await;
            g.nodes.push(node);
        }
        g.nodes[0]
            .node()
            .wait_for_leader(PATIENCE)
            .await
            .expect("a leader");
        g
    }

    async fn boot(&self, i: usize) -> KvNode {
        let id = self.members[i];
        let mut config = Config {
            request_timeout: Duration::from_secs(10),
            ..Config::new(id, self.members.clone())
        };
        if self.small_log {
            config.compaction_threshold = 100;
            config.compaction_retain = 20;
            config.snapshot_chunk_size = 4096;
        }
        let (log, state) = &self.stores[i];
        KvNode::start(
            config,
            self.kv.clone(),
            Arc::new(log.clone()),
            Arc::new(state.clone()),
            self.net.transport(id),
        )
        .await
        .expect("member starts")
    }

    async fn restart(&mut self, i: usize) {
        self.nodes[i].shutdown().await.expect("shutdown");
        self.nodes[i] = self.boot(i).await;
    }

    async fn stop(&self) {
        for n in &self.nodes {
            let _ = n.shutdown().await;
        }
    }
}

fn o() -> KvOptions {
    KvOptions::default()
}

async fn put(kv: &KvNode, k: &str, v: &str) -> i64 {
    kv.put(PutRequest::new(k, v), o())
        .await
        .expect("put")
        .header
        .revision
}

async fn value_at(kv: &KvNode, k: &str, revision: i64) -> Result<Option<Vec<u8>>, Error> {
    let r = kv
        .range(
            RangeRequest {
                revision,
                ..RangeRequest::new(KeyRange::key(k))
            },
            o(),
        )
        .await?;
    Ok(r.kvs.into_iter().next().map(|kv| kv.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantics_and_errors_through_a_group() {
    let g = Group::start(KvConfig {
        quota_bytes: 64 * 1024,
        max_txn_ops: 4,
        max_key_bytes: 64,
        max_value_bytes: 16 * 1024,
        ..KvConfig::default()
    })
    .await;
    let (a, b, c) = (&g.nodes[0], &g.nodes[1], &g.nodes[2]);

    // Writes on any member; linearizable reads everywhere see them.
    let r1 = put(a, "k", "one").await;
    assert_eq!(
        r1, 2,
        "the first write of a new KV is revision 2, as in etcd"
    );
    let r2 = put(b, "k", "two").await;
    assert_eq!(r2, 3);
    for n in &g.nodes {
        assert_eq!(
            value_at(n, "k", 0).await.expect("read"),
            Some(b"two".to_vec())
        );
    }
    let got = c
        .range(RangeRequest::new(KeyRange::key("k")), o())
        .await
        .expect("range");
    assert_eq!(got.header.member_id, NodeId(3));
    assert_eq!(
        got.header.cluster_id,
        a.range(RangeRequest::new(KeyRange::key("k")), o())
            .await
            .expect("r")
            .header
            .cluster_id
    );
    assert!(got.header.raft_term >= 1);
    assert_eq!(got.header.revision, r2);
    let kv = &got.kvs[0];
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r2, 2)
    );
    // Past revisions, on a follower too.
    assert_eq!(
        value_at(c, "k", r1).await.expect("past"),
        Some(b"one".to_vec())
    );
    // Serializable: local, eventually current.
    let ser = c
        .get(b"k".to_vec(), KvOptions::serializable())
        .await
        .expect("serializable");
    assert!(ser.is_some());

    // Txn CAS.
    let cas = |expect: i64, value: &str| TxnRequest {
        compare: vec![Compare::key(
            "k",
            CompareOp::Equal,
            CompareTarget::ModRevision(expect),
        )],
        success: vec![TxnOp::Put(PutRequest::new("k", value))],
        failure: vec![TxnOp::Range(RangeRequest::new(KeyRange::key("k")))],
    };
    let t = c.txn(cas(r2, "three"), o()).await.expect("cas");
    assert!(t.succeeded);
    let r3 = t.header.revision;
    let t = a.txn(cas(r2, "lost"), o()).await.expect("stale cas");
    assert!(!t.succeeded, "a CAS on a stale mod revision must fail");
    match &t.responses[0] {
        TxnOpResponse::Range(r) => assert_eq!(r.kvs[0].value, b"three"),
        other => panic!("{other:?}"),
    }
    // Delete with prev_kv and count.
    put(a, "p/1", "x").await;
    put(a, "p/2", "y").await;
    let d = b
        .delete(
            DeleteRequest {
                range: KeyRange::prefix("p/"),
                prev_kv: true,
            },
            o(),
        )
        .await
        .expect("delete");
    assert_eq!((d.deleted, d.prev_kvs.len()), (2, 2));

    // Compaction and the read errors.
    let now = d.header.revision;
    a.compact(r3, o()).await.expect("compact");
    match value_at(b, "k", r1).await {
        Err(Error::Compacted { compact_revision }) => assert_eq!(compact_revision, r3),
        other => panic!("a read below the compact revision answered {other:?}"),
    }
    assert!(matches!(
        a.compact(r3, o()).await,
        Err(Error::Compacted { .. })
    ));
    match value_at(c, "k", now + 100).await {
        Err(Error::FutureRevision { requested, current }) => {
            assert_eq!(requested, now + 100);
            assert!(current >= now);
        }
        other => panic!("a future read answered {other:?}"),
    }

    // Limits, checked before proposing (the revision does not move).
    let before = a
        .range(RangeRequest::new(KeyRange::key("k")), o())
        .await
        .expect("r")
        .header
        .revision;
    let too_long_key = "k".repeat(65);
    let cases: Vec<(Result<(), Error>, KvLimit)> = vec![
        (
            a.put(PutRequest::new(too_long_key.clone(), "v"), o())
                .await
                .map(|_| ()),
            KvLimit::KeySize,
        ),
        (
            a.put(PutRequest::new("k", vec![0u8; 16 * 1024 + 1]), o())
                .await
                .map(|_| ()),
            KvLimit::ValueSize,
        ),
        (
            a.txn(
                TxnRequest {
                    success: (0..5)
                        .map(|i| TxnOp::Put(PutRequest::new(format!("t{i}"), "v")))
                        .collect(),
                    ..Default::default()
                },
                o(),
            )
            .await
            .map(|_| ()),
            KvLimit::TxnOps,
        ),
        (
            a.range(RangeRequest::new(KeyRange::key(too_long_key)), o())
                .await
                .map(|_| ()),
            KvLimit::KeySize,
        ),
    ];
    for (r, want) in cases {
        match r {
            Err(Error::LimitExceeded { limit, .. }) => assert_eq!(limit, want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
    }
    let small = KvConfig {
        max_request_bytes: 100,
        max_key_bytes: 50,
        max_value_bytes: 100,
        ..KvConfig::default()
    };
    assert!(small.validate().is_ok());
    // Invalid transactions.
    let dup = TxnRequest {
        success: vec![
            TxnOp::Put(PutRequest::new("d", "1")),
            TxnOp::Put(PutRequest::new("d", "2")),
        ],
        ..Default::default()
    };
    assert!(matches!(
        a.txn(dup, o()).await,
        Err(Error::InvalidRequest {
            reason: InvalidRequest::DuplicateKeyInTxn
        })
    ));
    assert!(matches!(
        a.put(PutRequest::new("", "v"), o()).await,
        Err(Error::InvalidRequest {
            reason: InvalidRequest::EmptyKey
        })
    ));
    let after = a
        .range(RangeRequest::new(KeyRange::key("k")), o())
        .await
        .expect("r")
        .header
        .revision;
    assert_eq!(before, after, "refused requests created a revision");

    // The quota: writes fail alike on every member, deletes and reads work.
    let mut refused = None;
    for i in 0..100 {
        match g.nodes[i % 3]
            .put(PutRequest::new(format!("q{i}"), vec![b'x'; 4096]), o())
            .await
        {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert!(
        matches!(refused, Some(Error::NoSpace { quota: 65536, .. })),
        "{refused:?}"
    );
    assert!(matches!(
        b.put(PutRequest::new("q-more", vec![b'x'; 4096]), o())
            .await,
        Err(Error::NoSpace { .. })
    ));
    assert!(
        value_at(c, "q0", 0)
            .await
            .expect("read over quota")
            .is_some()
    );
    let d = c
        .delete(DeleteRequest::new(KeyRange::prefix("q")), o())
        .await
        .expect("delete over quota");
    assert!(d.deleted > 0);
    c.compact(d.header.revision, o())
        .await
        .expect("compact over quota");
    put(b, "after-compaction", "fits").await;
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_history_survive_member_restarts() {
    let mut g = Group::start(KvConfig::default()).await;
    let r1 = put(&g.nodes[0], "a", "1").await;
    let r2 = put(&g.nodes[1], "a", "2").await;
    g.nodes[2].compact(r1, o()).await.expect("compact");
    put(&g.nodes[2], "b", "x").await;
    for i in 0..3 {
        g.restart(i).await;
    }
    g.nodes[0]
        .node()
        .wait_for_leader(PATIENCE)
        .await
        .expect("a leader after restarts");
    for n in &g.nodes {
        assert_eq!(
            value_at(n, "a", r1).await.expect("history"),
            Some(b"1".to_vec())
        );
        assert_eq!(
            value_at(n, "a", r2).await.expect("current"),
            Some(b"2".to_vec())
        );
        assert!(matches!(
            value_at(n, "a", r1 - 1).await,
            Err(Error::Compacted { .. })
        ));
    }
    // The revision continues where it was.
    let r = put(&g.nodes[1], "c", "y").await;
    assert_eq!(r, r2 + 2);
    g.stop().await;
}

/// Everything a member holds, read locally.
async fn everything(kv: &KvNode, revision: i64) -> Vec<(Vec<u8>, Vec<u8>, i64, i64, i64)> {
    let r = kv
        .range(
            RangeRequest {
                revision,
                ..RangeRequest::new(KeyRange::prefix(""))
            },
            KvOptions::serializable(),
        )
        .await
        .expect("local range");
    r.kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_history_and_revisions_travel_in_snapshots() {
    let mut g = Group::start_with(KvConfig::default(), true).await;
    for i in 0..30 {
        put(&g.nodes[i % 2], &format!("k{i:03}"), "early").await;
    }
    let early = put(&g.nodes[0], "k000", "rewritten").await;
    g.nodes[1].compact(early - 5, o()).await.expect("compact");
    g.nodes[2].node().kill().await;
    let mut last = 0;
    for i in 0..400 {
        last = put(
            &g.nodes[i % 2],
            &format!("k{:03}", i % 50),
            &format!("v{i}"),
        )
        .await;
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    let leader = g.nodes[0].node().leader().leader.expect("a leader");
    let leader_log = &g.stores[(leader.0 - 1) as usize].0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while ha_core::LogStore::first_index(leader_log).expect("memory log") < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log was not compacted: leader {leader}, first indexes {:?}, last put at revision {last}, status {:?}",
            g.stores
                .iter()
                .map(|(l, _)| ha_core::LogStore::first_index(l))
                .collect::<Vec<_>>(),
            g.nodes[0].node().status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    g.nodes[2] = g.boot(2).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while everything(&g.nodes[2], 0).await != everything(&g.nodes[0], 0).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted member did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        g.nodes[2].node().metrics().snapshots_installed >= 1,
        "caught up without a snapshot although the log was compacted"
    );
    // History down to the compacted revision came along.
    assert_eq!(
        everything(&g.nodes[2], early).await,
        everything(&g.nodes[0], early).await,
        "the state at a past revision differs after the snapshot"
    );
    assert!(matches!(
        value_at(&g.nodes[2], "k000", early - 6).await,
        Err(Error::Compacted { .. })
    ));
    // The revision goes on from where the group is.
    let next = put(&g.nodes[2], "after", "snapshot").await;
    assert_eq!(next, last + 1);
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_compacts_by_revision_count() {
    let g = Group::start(KvConfig {
        auto_compaction: AutoCompaction::Revision {
            retention: 5,
            interval: Duration::from_millis(50),
        },
        ..KvConfig::default()
    })
    .await;
    let mut last = 0;
    for i in 0..20 {
        last = put(&g.nodes[i % 3], "k", &i.to_string()).await;
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match value_at(&g.nodes[1], "k", last - 6).await {
            Err(Error::Compacted { compact_revision }) => {
                assert!(compact_revision <= last - 5 && compact_revision > 1);
                break;
            }
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("auto-compaction never happened: {other:?}"),
        }
    }
    assert_eq!(
        value_at(&g.nodes[2], "k", last - 5).await.expect("kept"),
        Some(b"14".to_vec())
    );
    g.stop().await;
}

// ---------------------------------------------------------------------
// Random histories through the group against an independent model.

#[derive(Clone, Debug)]
enum Op {
    Put(usize, u8),
    Delete(usize, bool),
    /// If key's version equals n, put v; else delete the key.
    Cas(usize, i64, u8),
    Compact(i64),
    Get(usize, i64),
    Restart(usize),
}

const KEYS: &[&str] = &["a", "ab", "b", "c"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..KEYS.len(), 0u8..4).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0..KEYS.len(), any::<bool>()).prop_map(|(k, p)| Op::Delete(k, p)),
        3 => (0..KEYS.len(), 0i64..3, 0u8..4).prop_map(|(k, n, v)| Op::Cas(k, n, v)),
        1 => (0i64..25).prop_map(Op::Compact),
        4 => (0..KEYS.len(), 0i64..25).prop_map(|(k, r)| Op::Get(k, r)),
        1 => (0usize..3).prop_map(Op::Restart),
    ]
}

/// The whole map (key → (value, version, create, mod)) after every revision.
struct Model {
    states: Vec<BTreeMap<String, (u8, i64, i64, i64)>>,
    compacted: i64,
}

impl Model {
    fn rev(&self) -> i64 {
        self.states.len() as i64 - 1
    }
    fn put(&self, map: &mut BTreeMap<String, (u8, i64, i64, i64)>, k: &str, v: u8) {
        let next = self.rev() + 1;
        let (version, create) = map.get(k).map_or((1, next), |e| (e.1 + 1, e.2));
        map.insert(k.to_string(), (v, version, create, next));
    }
}

async fn run_history(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut g = Group::start(KvConfig::default()).await;
    let mut m = Model {
        states: vec![BTreeMap::new(), BTreeMap::new()],
        compacted: 0,
    };
    for (i, op) in ops.into_iter().enumerate() {
        let n = &g.nodes[i % 3];
        match op {
            Op::Put(k, v) => {
                let r = n
                    .put(PutRequest::new(KEYS[k], vec![v]), o())
                    .await
                    .expect("put");
                let mut map = m.states[m.rev() as usize].clone();
                m.put(&mut map, KEYS[k], v);
                m.states.push(map);
                prop_assert_eq!(r.header.revision, m.rev());
            }
            Op::Delete(k, prefix) => {
                let range = if prefix {
                    KeyRange::prefix(KEYS[k])
                } else {
                    KeyRange::key(KEYS[k])
                };
                let r = n
                    .delete(DeleteRequest::new(range), o())
                    .await
                    .expect("delete");
                let mut map = m.states[m.rev() as usize].clone();
                let gone: Vec<String> = map
                    .keys()
                    .filter(|x| {
                        if prefix {
                            x.starts_with(KEYS[k])
                        } else {
                            *x == KEYS[k]
                        }
                    })
                    .cloned()
                    .collect();
                for x in &gone {
                    map.remove(x);
                }
                if !gone.is_empty() {
                    m.states.push(map);
                }
                prop_assert_eq!((r.deleted, r.header.revision), (gone.len() as u64, m.rev()));
            }
            Op::Cas(k, version, v) => {
                let t = TxnRequest {
                    compare: vec![Compare::key(
                        KEYS[k],
                        CompareOp::Equal,
                        CompareTarget::Version(version),
                    )],
                    success: vec![TxnOp::Put(PutRequest::new(KEYS[k], vec![v]))],
                    failure: vec![TxnOp::Delete(DeleteRequest::new(KeyRange::key(KEYS[k])))],
                };
                let r = n.txn(t, o()).await.expect("txn");
                let mut map = m.states[m.rev() as usize].clone();
                let holds = map.get(KEYS[k]).map_or(0, |e| e.1) == version;
                if holds {
                    m.put(&mut map, KEYS[k], v);
                    m.states.push(map);
                } else if map.remove(KEYS[k]).is_some() {
                    m.states.push(map);
                }
                prop_assert_eq!((r.succeeded, r.header.revision), (holds, m.rev()));
            }
            Op::Compact(rev) => {
                let r = n.compact(rev, o()).await;
                if rev <= m.compacted {
                    prop_assert!(
                        matches!(r, Err(Error::Compacted { compact_revision }) if compact_revision == m.compacted),
                        "{:?}",
                        r
                    );
                } else if rev > m.rev() {
                    prop_assert!(matches!(r, Err(Error::FutureRevision { .. })), "{:?}", r);
                } else {
                    prop_assert!(r.is_ok(), "{:?}", r);
                    m.compacted = rev;
                }
            }
            Op::Get(k, rev) => {
                let r = n
                    .range(
                        RangeRequest {
                            revision: rev,
                            ..RangeRequest::new(KeyRange::key(KEYS[k]))
                        },
                        o(),
                    )
                    .await;
                if rev > m.rev() {
                    prop_assert!(matches!(r, Err(Error::FutureRevision { .. })), "{:?}", r);
                } else if rev > 0 && rev < m.compacted {
                    prop_assert!(matches!(r, Err(Error::Compacted { .. })), "{:?}", r);
                } else {
                    let at = if rev == 0 { m.rev() } else { rev };
                    let want = m.states[at as usize].get(KEYS[k]).copied();
                    let got =
                        r.expect("get").kvs.first().map(|kv| {
                            (kv.value[0], kv.version, kv.create_revision, kv.mod_revision)
                        });
                    prop_assert_eq!(got, want, "{} at {}", KEYS[k], rev);
                }
            }
            Op::Restart(i) => g.restart(i).await,
        }
    }
    g.stop().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn random_histories_through_a_group_match_the_model(ops in prop::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(run_history(ops))?;
    }
}

/// An application that shuts a member down and then exits must find its
/// stores free: a RocksDB database still open when the process exits aborts
/// in RocksDB's static destructors. So no thread of the member, the watch
/// thread included, may hold the state store once `shutdown` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_after_every_thread_let_go_of_the_stores() {
    for round in 0..20 {
        let net = MemNetwork::new();
        let id = NodeId(1);
        let log = Arc::new(MemLogStore::new());
        let state = Arc::new(MemStateStore::new());
        let kv = KvNode::start(
            Config::new(id, vec![id]),
            KvConfig::default(),
            log.clone(),
            state.clone(),
            net.transport(id),
        )
        .await
        .expect("member starts");
        kv.node().wait_for_leader(PATIENCE).await.expect("a leader");
        let _watch = kv
            .watch(WatchRequest::new(KeyRange::prefix("k")))
            .await
            .expect("watch");
        put(&kv, "k1", "v").await;
        kv.shutdown().await.expect("shutdown");
        drop(kv);
        assert_eq!(
            (Arc::strong_count(&log), Arc::strong_count(&state)),
            (1, 1),
            "round {round}: a thread still holds the stores after shutdown"
        );
    }
}
