//! The `etcd-client` crate (the etcd client most Rust users pick) against
//! a 3-member ha group in this process, through each member's gateway on
//! a loopback port: an oracle this project did not write.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, LeaseTimeToLiveOptions,
    LockOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use ha_core::{Config, KvClient, NodeId};
use ha_raft::{KvConfig, KvNode, MemNetwork};
use ha_storage::{MemLogStore, MemStateStore};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;

/// How long anything that waits on the group may take before the test
/// fails (never reached unless something is broken).
const PATIENCE: Duration = Duration::from_secs(20);

struct Member {
    node: Option<KvNode>,
    endpoint: String,
    stop: Option<oneshot::Sender<()>>,
}

struct Group {
    _net: MemNetwork,
    members: Vec<Member>,
}

impl Group {
    async fn start() -> Group {
        let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let net = MemNetwork::new();
        let mut members = Vec::new();
        for &id in &ids {
            let config = Config {
                request_timeout: Duration::from_secs(5),
                ..Config::new(id, ids.clone())
            };
            let node = KvNode::start(
                config,
                KvConfig::default(),
                Arc::new(MemLogStore::new()),
                Arc::new(MemStateStore::new()),
                net.transport(id),
            )
            .await
            .expect("member starts");
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
            let gateway = ha_etcd::Gateway::new(Arc::new(node.clone()) as Arc<dyn KvClient>)
                .with_cluster(Arc::new(node.clone()));
            let (stop, stopped) = oneshot::channel::<()>();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_routes(gateway.routes())
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                        let _ = stopped.await;
                    }),
            );
            members.push(Member {
                node: Some(node),
                endpoint,
                stop: Some(stop),
            });
        }
        let g = Group { _net: net, members };
        g.node(0)
            .node()
            .wait_for_leader(PATIENCE)
            .await
            .expect("a leader");
        g
    }

    fn node(&self, i: usize) -> &KvNode {
        self.members[i].node.as_ref().expect("member running")
    }

    async fn client(&self, i: usize) -> Client {
        Client::connect([self.members[i].endpoint.as_str()], None)
            .await
            .expect("etcd-client connects")
    }

    /// Index of the member that leads, as member `seen_by` sees it.
    fn leader(&self, seen_by: usize) -> usize {
        let id = self.node(seen_by).node().leader().leader.expect("a leader");
        (id.0 - 1) as usize
    }

    async fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(stop) = m.stop.take() {
            let _ = stop.send(());
        }
        if let Some(node) = m.node.take() {
            node.kill().await;
        }
    }

    async fn stop(mut self) {
        for i in 0..self.members.len() {
            if let Some(stop) = self.members[i].stop.take() {
                let _ = stop.send(());
            }
            if let Some(node) = self.members[i].node.take() {
                let _ = node.shutdown().await;
            }
        }
    }
}

fn grpc_status(e: etcd_client::Error) -> tonic::Status {
    match e {
        etcd_client::Error::GRpcStatus(s) => s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PATIENCE:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_put_get_delete_with_prefixes_revisions_and_errors() {
    let g = Group::start().await;
    // A follower's gateway: it must forward writes and read linearizably.
    let follower = (g.leader(0) + 1) % 3;
    let mut c = g.client(follower).await;

    let r1 = c.put("app/a", "1", None).await.expect("put");
    let h = r1.header().expect("header");
    assert_eq!(
        h.member_id(),
        follower as u64 + 1,
        "member id of the answering member"
    );
    assert_ne!(h.cluster_id(), 0, "cluster id set");
    assert!(h.raft_term() > 0, "raft term set");
    let rev_a1 = h.revision();
    c.put("app/b", "2", None).await.expect("put");
    c.put("other", "x", None).await.expect("put");
    let r = c
        .put("app/a", "3", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put");
    assert_eq!(
        r.prev_key().map(|kv| kv.value()),
        Some(&b"1"[..]),
        "prev_kv"
    );

    let got = c
        .get("app/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get prefix");
    let pairs: Vec<_> = got
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_owned(),
                kv.value_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [("app/a".into(), "3".into()), ("app/b".into(), "2".into())]
    );
    assert_eq!(got.kvs()[0].version(), 2);
    assert_eq!(got.kvs()[0].create_revision(), rev_a1);

    // A read at an old revision sees the old value.
    let old = c
        .get("app/a", Some(GetOptions::new().with_revision(rev_a1)))
        .await
        .expect("get at revision");
    assert_eq!(old.kvs()[0].value(), b"1");

    // count_only, limit and keys_only.
    let n = c
        .get(
            "app/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    assert_eq!((n.count(), n.kvs().len()), (2, 0));
    let lim = c
        .get("", Some(GetOptions::new().with_all_keys().with_limit(1)))
        .await
        .expect("limit");
    assert_eq!((lim.kvs().len(), lim.more(), lim.count()), (1, true, 3));
    // A revision filter, applied by the gateway.
    let newer = c
        .get(
            "app/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_min_mod_revision(rev_a1 + 1),
            ),
        )
        .await
        .expect("filtered");
    assert_eq!(
        newer.kvs().len(),
        2,
        "both app/ keys were written after rev_a1"
    );
    let created_first = c
        .get(
            "app/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_max_create_revision(rev_a1),
            ),
        )
        .await
        .expect("filtered");
    assert_eq!(created_first.kvs().len(), 1);
    assert_eq!(created_first.kvs()[0].key(), b"app/a");

    // A serializable read answers too.
    let s = c
        .get("other", Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable get");
    assert_eq!(s.kvs().len(), 1);

    let del = c
        .delete(
            "app/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete prefix");
    assert_eq!(del.deleted(), 2);
    assert_eq!(del.prev_kvs().len(), 2);
    let after = c
        .get("app/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert!(after.kvs().is_empty());

    // Errors as etcd answers them.
    let future = c
        .get("other", Some(GetOptions::new().with_revision(1_000_000)))
        .await
        .expect_err("a future revision");
    let s = grpc_status(future);
    assert_eq!(s.code(), tonic::Code::OutOfRange);
    assert_eq!(
        s.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    let now = c
        .get("other", None)
        .await
        .expect("get")
        .header()
        .unwrap()
        .revision();
    c.compact(now, None).await.expect("compact");
    let compacted = c
        .get("other", Some(GetOptions::new().with_revision(rev_a1)))
        .await
        .expect_err("a compacted revision");
    let s = grpc_status(compacted);
    assert_eq!(s.code(), tonic::Code::OutOfRange);
    assert_eq!(
        s.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let empty = grpc_status(c.put("", "v", None).await.expect_err("empty key"));
    assert_eq!(
        (empty.code(), empty.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: key is not provided"
        )
    );
    let no_lease = grpc_status(
        c.put("k", "v", Some(PutOptions::new().with_lease(0x1234)))
            .await
            .expect_err("an unknown lease"),
    );
    assert_eq!(
        (no_lease.code(), no_lease.message()),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found"
        )
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn txn_with_compares_branches_and_nested_txn() {
    let g = Group::start().await;
    let mut c = g.client(0).await;
    c.put("cfg/mode", "blue", None).await.expect("put");

    let txn = Txn::new()
        .when([Compare::value("cfg/mode", CompareOp::Equal, "blue")])
        .and_then([
            TxnOp::put("cfg/mode", "green", None),
            TxnOp::get("cfg/mode", None),
        ])
        .or_else([TxnOp::put("cfg/failed", "yes", None)]);
    let r = c.txn(txn).await.expect("txn");
    assert!(r.succeeded(), "the compare held");
    match &r.op_responses()[1] {
        TxnOpResponse::Get(get) => assert_eq!(get.kvs()[0].value(), b"green", "read sees the put"),
        other => panic!("expected a get response, got {other:?}"),
    }

    // The same compare fails now; the failure branch runs a nested txn.
    let nested = Txn::new()
        .when([Compare::version("cfg/mode", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("cfg/nested", "ran", None)]);
    let txn = Txn::new()
        .when([Compare::value("cfg/mode", CompareOp::Equal, "blue")])
        .and_then([TxnOp::put("cfg/wrong", "yes", None)])
        .or_else([TxnOp::txn(nested)]);
    let r = c.txn(txn).await.expect("txn");
    assert!(!r.succeeded());
    match &r.op_responses()[0] {
        TxnOpResponse::Txn(inner) => assert!(inner.succeeded(), "nested compare held"),
        other => panic!("expected a txn response, got {other:?}"),
    }
    let all = c
        .get("cfg/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    let keys: Vec<_> = all.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    assert_eq!(keys, [b"cfg/mode".to_vec(), b"cfg/nested".to_vec()]);

    // Two puts of one key in a branch: refused as etcd refuses it.
    let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    let s = grpc_status(c.txn(dup).await.expect_err("duplicate key"));
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        s.message(),
        "etcdserver: duplicate key given in txn request"
    );

    // A mod-revision compare over a prefix.
    let rev = c.get("cfg/mode", None).await.expect("get").kvs()[0].mod_revision();
    let txn = Txn::new()
        .when([Compare::mod_revision("cfg/", CompareOp::Less, rev + 100).with_prefix()])
        .and_then([TxnOp::delete(
            "cfg/",
            Some(DeleteOptions::new().with_prefix()),
        )]);
    assert!(c.txn(txn).await.expect("txn").succeeded());
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_from_a_start_revision_live_cancel_and_compacted() {
    let g = Group::start().await;
    let mut c = g.client(1).await;
    let first = c
        .put("w/k", "1", None)
        .await
        .expect("put")
        .header()
        .unwrap()
        .revision();
    c.put("w/k", "2", None).await.expect("put");
    c.delete("w/k", None).await.expect("delete");

    let mut stream = c
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(first)
                    .with_prev_key(),
            ),
        )
        .await
        .expect("watch");
    let created = within("created", stream.message())
        .await
        .expect("msg")
        .expect("some");
    assert!(created.created(), "first answer says created");
    let id = created.watch_id();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let r = within("history", stream.message())
            .await
            .expect("msg")
            .expect("some");
        assert_eq!(r.watch_id(), id);
        for e in r.events() {
            let kv = e.kv().expect("kv");
            seen.push((e.event_type(), kv.mod_revision(), kv.value().to_vec()));
        }
    }
    assert_eq!(
        seen,
        [
            (EventType::Put, first, b"1".to_vec()),
            (EventType::Put, first + 1, b"2".to_vec()),
            (EventType::Delete, first + 2, Vec::new()),
        ],
        "history from the start revision, in order"
    );

    // A live event, with its previous value.
    let live = c
        .put("w/k", "3", None)
        .await
        .expect("put")
        .header()
        .unwrap()
        .revision();
    let r = within("live event", stream.message())
        .await
        .expect("msg")
        .expect("some");
    let e = &r.events()[0];
    assert_eq!(e.kv().unwrap().mod_revision(), live);
    assert!(e.prev_kv().is_none(), "w/k did not exist before this put");

    // A second watch on the same stream, from now, sees only new writes.
    stream
        .watch("w/other", Some(WatchOptions::new().with_prev_key()))
        .await
        .expect("second watch");
    let created2 = within("created 2", stream.message())
        .await
        .expect("msg")
        .expect("some");
    assert!(created2.created());
    let id2 = created2.watch_id();
    assert_ne!(id, id2, "watch ids are distinct");
    let now = created2.header().expect("header").revision();
    assert_eq!(now, live, "created at the current revision");
    c.put("w/other", "x", None).await.expect("put");
    let mut got_other = false;
    while !got_other {
        let r = within("second watch event", stream.message())
            .await
            .expect("msg")
            .expect("some");
        if r.watch_id() == id2 {
            assert_eq!(r.events()[0].kv().unwrap().key(), b"w/other");
            got_other = true;
        }
    }
    stream.cancel(id).await.expect("cancel");
    loop {
        let r = within("cancel", stream.message())
            .await
            .expect("msg")
            .expect("some");
        if r.canceled() {
            assert_eq!(r.watch_id(), id);
            break;
        }
    }

    // A watch from a compacted revision: created, then canceled with the
    // compact revision.
    let head = c
        .put("w/k", "4", None)
        .await
        .expect("put")
        .header()
        .unwrap()
        .revision();
    c.compact(head, None).await.expect("compact");
    let mut old = c
        .watch("w/k", Some(WatchOptions::new().with_start_revision(first)))
        .await
        .expect("watch");
    let mut compact_revision = 0;
    while compact_revision == 0 {
        let r = within("compacted", old.message())
            .await
            .expect("msg")
            .expect("some");
        if r.canceled() {
            compact_revision = r.compact_revision();
            assert_eq!(
                r.cancel_reason(),
                "etcdserver: mvcc: required revision has been compacted"
            );
        }
    }
    assert_eq!(compact_revision, head);
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_resumes_on_another_member_after_the_leader_is_killed() {
    let mut g = Group::start().await;
    let leader = g.leader(0);
    let mut c = g.client(leader).await;
    let start = c
        .put("r/k", "0", None)
        .await
        .expect("put")
        .header()
        .unwrap()
        .revision();
    let mut w = c
        .watch(
            "r/",
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await
        .expect("watch");
    let mut last = 0;
    for i in 1..=3 {
        c.put("r/k", i.to_string(), None).await.expect("put");
    }
    while last < start + 3 {
        let r = within("events", w.message())
            .await
            .expect("msg")
            .expect("some");
        for e in r.events() {
            last = e.kv().unwrap().mod_revision();
        }
    }
    g.kill(leader).await;
    let other = (leader + 1) % 3;
    let mut c2 = g.client(other).await;
    // Writes after the kill, on the surviving members.
    let mut written = Vec::new();
    for i in 4..=6 {
        let rev = within("put after failover", async {
            loop {
                match c2.put("r/k", i.to_string(), None).await {
                    Ok(r) => break r.header().unwrap().revision(),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await;
        written.push(rev);
    }
    // Resume from the revision after the last one seen: nothing missed,
    // nothing repeated.
    let mut w2 = c2
        .watch(
            "r/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(last + 1),
            ),
        )
        .await
        .expect("resume");
    let mut revs = Vec::new();
    while revs.len() < written.len() {
        let r = within("resumed events", w2.message())
            .await
            .expect("msg")
            .expect("some");
        for e in r.events() {
            revs.push(e.kv().unwrap().mod_revision());
        }
    }
    assert_eq!(
        revs, written,
        "the resumed watch sees exactly the writes after {last}"
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_grant_keep_alive_time_to_live_and_revoke_with_keys() {
    let g = Group::start().await;
    let mut c = g.client(2).await;
    let grant = c.lease_grant(30, None).await.expect("grant");
    let id = grant.id();
    assert!(id > 0);
    assert_eq!(grant.ttl(), 30);
    c.put("l/a", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put with lease");
    c.put("l/b", "2", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put with lease");

    let (mut keeper, mut replies) = c.lease_keep_alive(id).await.expect("keep alive");
    keeper.keep_alive().await.expect("send keep-alive");
    let reply = within("keep-alive", replies.message())
        .await
        .expect("msg")
        .expect("some");
    assert_eq!((reply.id(), reply.ttl()), (id, 30));

    let ttl = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("time to live");
    assert_eq!(ttl.granted_ttl(), 30);
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 30, "remaining {}", ttl.ttl());
    let mut keys = ttl.keys().to_vec();
    keys.sort();
    assert_eq!(keys, [b"l/a".to_vec(), b"l/b".to_vec()]);
    let listed = c.leases().await.expect("leases");
    assert!(listed.leases().iter().any(|l| l.id() == id));

    c.lease_revoke(id).await.expect("revoke");
    let gone = c
        .get("l/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert!(gone.kvs().is_empty(), "revoking deleted the lease's keys");
    // etcd's answers for a lease that is gone: TTL -1, keep-alive TTL 0,
    // revoke NotFound.
    let ttl = c.lease_time_to_live(id, None).await.expect("time to live");
    assert_eq!(ttl.ttl(), -1);
    keeper.keep_alive().await.expect("send keep-alive");
    let reply = within("keep-alive", replies.message())
        .await
        .expect("msg")
        .expect("some");
    assert_eq!(reply.ttl(), 0);
    let s = grpc_status(c.lease_revoke(id).await.expect_err("revoke again"));
    assert_eq!(
        (s.code(), s.message()),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found"
        )
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_excludes_until_unlocked() {
    let g = Group::start().await;
    let mut a = g.client(0).await;
    let mut b = g.client(1).await;
    let lease_a = a.lease_grant(30, None).await.expect("grant").id();
    let lease_b = b.lease_grant(30, None).await.expect("grant").id();
    let held = a
        .lock("jobs", Some(LockOptions::new().with_lease(lease_a)))
        .await
        .expect("lock");
    let key_a = held.key().to_vec();
    assert_eq!(
        key_a,
        format!("jobs/{lease_a:x}").into_bytes(),
        "etcd's key layout"
    );

    let waiter = tokio::spawn(async move {
        b.lock("jobs", Some(LockOptions::new().with_lease(lease_b)))
            .await
            .map(|r| r.key().to_vec())
    });
    // While A holds the lock, B must not get it (a B that got it would be
    // a real exclusion failure, whatever the timing).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "B acquired the lock while A held it");
    a.unlock(key_a).await.expect("unlock");
    let key_b = within("B's lock", waiter)
        .await
        .expect("task")
        .expect("lock");
    assert_eq!(key_b, format!("jobs/{lease_b:x}").into_bytes());
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn election_campaign_proclaim_observe_resign() {
    let g = Group::start().await;
    let mut a = g.client(0).await;
    let mut b = g.client(2).await;
    let lease_a = a.lease_grant(30, None).await.expect("grant").id();
    let lease_b = b.lease_grant(30, None).await.expect("grant").id();
    let won = a.campaign("svc", "a1", lease_a).await.expect("campaign");
    let leader_key = won.leader().expect("leader key").clone();
    let now = a.leader("svc").await.expect("leader");
    assert_eq!(now.kv().unwrap().value(), b"a1");

    let mut observed = a.observe("svc").await.expect("observe");
    let first = within("observe", observed.message())
        .await
        .expect("msg")
        .expect("some");
    assert_eq!(first.kv().unwrap().value(), b"a1");

    a.proclaim(
        "a2",
        Some(etcd_client::ProclaimOptions::new().with_leader(leader_key.clone())),
    )
    .await
    .expect("proclaim");
    let second = within("observe", observed.message())
        .await
        .expect("msg")
        .expect("some");
    assert_eq!(second.kv().unwrap().value(), b"a2");

    let challenger = tokio::spawn(async move { b.campaign("svc", "b1", lease_b).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!challenger.is_finished(), "B won while A leads");
    a.resign(Some(
        etcd_client::ResignOptions::new().with_leader(leader_key),
    ))
    .await
    .expect("resign");
    within("B's campaign", challenger)
        .await
        .expect("task")
        .expect("campaign");
    let next = within("observe", observed.message())
        .await
        .expect("msg")
        .expect("some");
    assert_eq!(next.kv().unwrap().value(), b"b1");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_list_and_status() {
    let g = Group::start().await;
    let mut c = g.client(1).await;
    let list = c.member_list().await.expect("member list");
    let mut ids: Vec<u64> = list.members().iter().map(|m| m.id()).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3]);
    let status = c.status().await.expect("status");
    let leader = g.leader(1) as u64 + 1;
    assert_eq!(status.leader(), leader);
    assert_eq!(status.header().unwrap().member_id(), 2);
    assert!(status.raft_term() > 0);
    let s = grpc_status(c.defragment().await.expect_err("defragment"));
    assert_eq!(s.code(), tonic::Code::Unimplemented);
    g.stop().await;
}

/// MemberAdd and MemberUpdate on the leader's gateway (the in-process
/// `KvNode` makes changes on the leader; ha-node forwards from any member,
/// see examples/tests/etcdctl.rs): a learner under a new id at the URL's
/// address, the address changed, URLs that are not `IP:port` refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_add_and_update_on_the_leader() {
    let g = Group::start().await;
    let leader = g.leader(0);
    let mut c = g.client(leader).await;
    // Right after the start the leader has not heard from every member
    // yet: "unhealthy cluster" (Unavailable, not applied) until it has.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let added = loop {
        match c
            .member_add(
                ["http://127.0.0.1:7104"],
                Some(etcd_client::MemberAddOptions::new().with_is_learner()),
            )
            .await
        {
            Ok(added) => break added,
            Err(e) if std::time::Instant::now() < deadline => {
                assert_eq!(grpc_status(e).code(), tonic::Code::Unavailable);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("member add: {e}"),
        }
    };
    let member = added.member().expect("the new member");
    assert_eq!(member.id(), 4, "above every id in use");
    assert!(member.is_learner());
    assert_eq!(member.peer_urls(), ["http://127.0.0.1:7104"]);
    let stored = g
        .node(leader)
        .node()
        .membership()
        .members
        .into_iter()
        .find(|m| m.id.0 == 4)
        .expect("member 4 in the applied membership");
    assert_eq!(&stored.address[..], b"127.0.0.1:7104");
    assert_eq!(stored.role, ha_raft::MemberRole::Learner);
    assert!(!stored.promote_when_caught_up, "added as a learner");

    c.member_update(4, vec!["127.0.0.1:7204".to_string()])
        .await
        .expect("update");
    let list = c.member_list().await.expect("member list");
    let four = list.members().iter().find(|m| m.id() == 4).expect("listed");
    assert_eq!(four.peer_urls(), ["127.0.0.1:7204"]);

    for urls in [
        vec!["http://localhost:7104"],
        vec!["http://127.0.0.1:1", "http://127.0.0.1:2"],
        vec!["0.0.0.0:7104"],
    ] {
        let s = grpc_status(c.member_add(urls.clone(), None).await.expect_err("refused"));
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{urls:?}: {s:?}");
    }
    let s = grpc_status(
        c.member_update(99, vec!["127.0.0.1:7204".to_string()])
            .await
            .expect_err("no such"),
    );
    assert_eq!(s.code(), tonic::Code::NotFound);

    c.member_remove(4).await.expect("remove");
    // Not the old id again: removed ids are never reused.
    let again = c
        .member_add(
            ["127.0.0.1:7105"],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("member add");
    assert_eq!(again.member().expect("member").id(), 5);
    g.stop().await;
}
