//! Leases through a 3-member group in one process (memory stores): grant,
//! attach, keep-alive (on the leader and forwarded from followers),
//! time-to-live, revoke, expiry with the keys in one revision, and no
//! kept-alive lease lost across 20 leader failovers at the minimum TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ha_core::{
    Config, Error, EventKind, InvalidRequest, KeyRange, KvClient, KvOptions, LeaseGrantRequest,
    LeaseId, NodeId, PutRequest, RangeRequest, WatchRequest,
};
use ha_raft::{KvConfig, KvNode, MemNetwork};
use ha_storage::{MemLogStore, MemStateStore};

const PATIENCE: Duration = Duration::from_secs(20);

struct Group {
    net: MemNetwork,
    members: Vec<NodeId>,
    stores: Vec<(MemLogStore, MemStateStore)>,
    nodes: Vec<Option<KvNode>>,
}

impl Group {
    async fn start() -> Group {
        let members: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let mut g = Group {
            net: MemNetwork::new(),
            members: members.clone(),
            stores: members
                .iter()
                .map(|_| (MemLogStore::new(), MemStateStore::new()))
                .collect(),
            nodes: Vec::new(),
        };
        for i in 0..members.len() {
            let node = g.boot(i).await;
            g.nodes.push(Some(node));
        }
        g.node(0)
            .node()
            .wait_for_leader(PATIENCE)
            .await
            .expect("a leader");
        g
    }

    async fn boot(&self, i: usize) -> KvNode {
        let id = self.members[i];
        let config = Config {
            request_timeout: Duration::from_secs(5),
            ..Config::new(id, self.members.clone())
        };
        let (log, state) = &self.stores[i];
        KvNode::start(
            config,
            KvConfig::default(),
            Arc::new(log.clone()),
            Arc::new(state.clone()),
            self.net.transport(id),
        )
        .await
        .expect("member starts")
    }

    fn node(&self, i: usize) -> &KvNode {
        self.nodes[i].as_ref().expect("member running")
    }

    /// Index of the leader all running members agree on.
    async fn leader(&self) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut seen = Vec::new();
            for n in self.nodes.iter().flatten() {
                seen.push(n.node().leader());
            }
            if let Some(first) = seen.first().and_then(|l| l.leader) {
                if seen.iter().all(|l| l.leader == Some(first)) {
                    if let Some(i) = self.members.iter().position(|m| *m == first) {
                        if self.nodes[i].is_some() {
                            return i;
                        }
                    }
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {seen:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Crashes a member: no leadership transfer, unsynced writes lost.
    async fn crash(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("member running");
        node.kill().await;
        let (log, state) = &self.stores[i];
        self.stores[i] = (log.crash(), state.crash());
    }

    async fn revive(&mut self, i: usize) {
        let node = self.boot(i).await;
        self.nodes[i] = Some(node);
    }

    async fn stop(&self) {
        for n in self.nodes.iter().flatten() {
            let _ = n.shutdown().await;
        }
    }
}

fn o() -> KvOptions {
    KvOptions::default()
}

async fn grant(kv: &KvNode, ttl: Duration) -> LeaseId {
    kv.lease_grant(LeaseGrantRequest::new(ttl), o())
        .await
        .expect("grant")
        .id
}

async fn put_with(kv: &KvNode, k: &str, lease: LeaseId) -> i64 {
    kv.put(
        PutRequest {
            lease,
            ..PutRequest::new(k, "v")
        },
        o(),
    )
    .await
    .expect("put with lease")
    .header
    .revision
}

async fn keys_at(kv: &KvNode, prefix: &str, revision: i64) -> Vec<Vec<u8>> {
    kv.range(
        RangeRequest {
            revision,
            ..RangeRequest::new(KeyRange::prefix(prefix))
        },
        o(),
    )
    .await
    .expect("range")
    .kvs
    .into_iter()
    .map(|kv| kv.key)
    .collect()
}

fn follower_of(g: &Group, leader: usize) -> usize {
    (0..g.members.len())
        .find(|&i| i != leader && g.nodes[i].is_some())
        .expect("a running follower")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_attach_keep_alive_time_to_live_and_revoke() {
    let g = Group::start().await;
    let leader = g.leader().await;
    let (l, f) = (g.node(leader), g.node(follower_of(&g, leader)));
    let min = f.min_lease_ttl();
    assert!(
        min >= Config::new(NodeId(1), vec![NodeId(1)]).election_timeout() * 3 / 2,
        "{min:?}"
    );

    // A TTL below the minimum is rounded up, and the response says so.
    let r = f
        .lease_grant(LeaseGrantRequest::new(Duration::from_millis(10)), o())
        .await
        .expect("grant on a follower");
    assert!(r.rounded_up() && r.ttl == min, "{r:?}");
    let short = r.id;
    assert!(short.0 > 0);
    // An id of the caller's choosing, once.
    let r = l
        .lease_grant(
            LeaseGrantRequest::new(Duration::from_secs(30)).with_id(LeaseId(77)),
            o(),
        )
        .await
        .expect("grant with an id");
    assert_eq!(
        (r.id, r.ttl, r.rounded_up()),
        (LeaseId(77), Duration::from_secs(30), false)
    );
    let again = f
        .lease_grant(
            LeaseGrantRequest::new(Duration::from_secs(30)).with_id(LeaseId(77)),
            o(),
        )
        .await;
    assert!(
        matches!(again, Err(Error::LeaseExists { lease: 77 })),
        "{again:?}"
    );
    for bad in [Duration::ZERO, Duration::from_secs(u64::MAX / 2)] {
        let r = f.lease_grant(LeaseGrantRequest::new(bad), o()).await;
        assert!(
            matches!(
                r,
                Err(Error::InvalidRequest {
                    reason: InvalidRequest::InvalidTtl
                })
            ),
            "{bad:?}: {r:?}"
        );
    }

    // Keys attach from any member; an unknown lease is refused.
    put_with(f, "l/a", LeaseId(77)).await;
    put_with(l, "l/b", LeaseId(77)).await;
    let unknown = f
        .put(
            PutRequest {
                lease: LeaseId(12345),
                ..PutRequest::new("l/c", "v")
            },
            o(),
        )
        .await;
    assert!(
        matches!(unknown, Err(Error::LeaseNotFound { lease: 12345 })),
        "{unknown:?}"
    );

    // Keep-alives and time-to-live on the leader and forwarded from a
    // follower; both answered by the leader.
    for kv in [l, f] {
        let k = kv
            .lease_keep_alive_once(LeaseId(77), o())
            .await
            .expect("keep-alive");
        assert_eq!((k.id, k.ttl), (LeaseId(77), Duration::from_secs(30)));
        assert_eq!(
            k.header.member_id, g.members[leader],
            "answered by the leader"
        );
        assert!(k.header.revision >= 3, "{k:?}");
        let t = kv
            .lease_time_to_live(LeaseId(77), true, o())
            .await
            .expect("time to live");
        assert_eq!(t.granted_ttl, Duration::from_secs(30));
        assert!(
            t.ttl <= t.granted_ttl && t.ttl > Duration::from_secs(25),
            "{t:?}"
        );
        assert_eq!(t.keys, vec![b"l/a".to_vec(), b"l/b".to_vec()]);
    }
    let all = f.leases(o()).await.expect("leases");
    let mut ids: Vec<LeaseId> = all.leases.iter().map(|s| s.id).collect();
    ids.sort();
    let mut want = vec![short, LeaseId(77)];
    want.sort();
    assert_eq!(ids, want);

    // Revoking deletes the keys in one revision.
    let rv = f.lease_revoke(LeaseId(77), o()).await.expect("revoke");
    let at = rv.header.revision;
    assert_eq!(keys_at(l, "l/", at - 1).await.len(), 2);
    assert!(keys_at(l, "l/", at).await.is_empty());
    for kv in [l, f] {
        let r = kv.lease_keep_alive_once(LeaseId(77), o()).await;
        assert!(
            matches!(r, Err(Error::LeaseNotFound { lease: 77 })),
            "{r:?}"
        );
        let r = kv.lease_time_to_live(LeaseId(77), false, o()).await;
        assert!(
            matches!(r, Err(Error::LeaseNotFound { lease: 77 })),
            "{r:?}"
        );
    }
    let r = l.lease_revoke(LeaseId(77), o()).await;
    assert!(
        matches!(r, Err(Error::LeaseNotFound { lease: 77 })),
        "{r:?}"
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_keeper_stops_expires_with_its_keys_in_one_revision() {
    let g = Group::start().await;
    let leader = g.leader().await;
    let f = g.node(follower_of(&g, leader));
    let ttl = f.min_lease_ttl();
    let id = grant(f, ttl).await;
    for k in ["e/1", "e/2", "e/3"] {
        put_with(f, k, id).await;
    }
    // Kept alive (forwarded from a follower) for several TTLs: it lives.
    let mut keeper = f.lease_keep_alive(id).await.expect("keeper");
    let kept = Instant::now();
    let mut renewals = 0;
    while kept.elapsed() < ttl * 4 {
        match tokio::time::timeout(ttl, keeper.next()).await {
            Ok(Some(Ok(r))) => {
                assert_eq!(r.id, id);
                renewals += 1;
            }
            other => panic!("the keeper stopped renewing: {other:?}"),
        }
    }
    assert!(renewals >= 8, "renewed every third of the TTL: {renewals}");
    assert_eq!(keys_at(f, "e/", 0).await.len(), 3);
    // A watcher on another member (the leader) sees the expiry.
    let mut watch = g
        .node(leader)
        .watch(WatchRequest::prefix("e/").with_prev_kv())
        .await
        .expect("watch");

    // The keeper stops: the lease expires after its TTL, not before, and
    // within TTL + an election timeout (+ slack for a busy machine).
    drop(keeper);
    let stopped = Instant::now();
    let revision = loop {
        let r = f
            .range(RangeRequest::new(KeyRange::prefix("e/")), o())
            .await
            .expect("range");
        if r.kvs.is_empty() {
            break r.header.revision;
        }
        assert!(
            stopped.elapsed() < ttl * 2 + Duration::from_secs(3),
            "the lease outlived its TTL by far"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = stopped.elapsed();
    // The last renewal was at most a third of the TTL before the stop.
    assert!(
        took >= ttl * 2 / 3 - Duration::from_millis(20),
        "expired after {took:?}"
    );
    // One revision deleted all three keys.
    assert_eq!(keys_at(f, "e/", revision - 1).await.len(), 3);
    // ...and the watcher got the three deletions together, at that
    // revision, with the lease in their previous values.
    let got = tokio::time::timeout(PATIENCE, watch.next())
        .await
        .expect("the expiry reached the watcher")
        .expect("watch open")
        .expect("events");
    assert_eq!(got.events.len(), 3, "{got:?}");
    for e in &got.events {
        assert_eq!((e.kind, e.kv.mod_revision), (EventKind::Delete, revision));
        assert_eq!(e.prev_kv.as_ref().map(|p| p.lease), Some(id));
    }
    let r = f.lease_time_to_live(id, false, o()).await;
    assert!(matches!(r, Err(Error::LeaseNotFound { .. })), "{r:?}");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keeper_reports_a_revoked_lease_and_ends() {
    let g = Group::start().await;
    let leader = g.leader().await;
    let f = g.node(follower_of(&g, leader));
    let id = grant(f, Duration::from_secs(3)).await;
    let mut keeper = f.lease_keep_alive(id).await.expect("keeper");
    assert!(matches!(keeper.next().await, Some(Ok(_))));
    g.node(leader).lease_revoke(id, o()).await.expect("revoke");
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match keeper.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the keeper noticed within a renewal period");
    assert!(
        matches!(end, Some(Err(Error::LeaseNotFound { .. }))),
        "{end:?}"
    );
    assert!(
        keeper.next().await.is_none(),
        "the stream ends after the error"
    );
    let unknown = f.lease_keep_alive(LeaseId(999)).await;
    assert!(
        matches!(unknown, Err(Error::LeaseNotFound { lease: 999 })),
        "{unknown:?}"
    );
    g.stop().await;
}

/// The failure etcd users know best: a lease expiring during a failover.
/// Leases at the MINIMUM TTL are kept alive from one member while the
/// leader is killed or cut off 20 times; none may expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_leases_survive_20_leader_failovers_at_the_minimum_ttl() {
    let mut g = Group::start().await;
    let keeper_at = 0;
    let kv = g.node(keeper_at).clone();
    let ttl = kv.min_lease_ttl();
    let mut leases = Vec::new();
    for i in 0..4 {
        let id = grant(&kv, ttl).await;
        let key = format!("f/{i}");
        let created = put_with(&kv, &key, id).await;
        let keeper = kv.lease_keep_alive(id).await.expect("keeper");
        leases.push((id, key, created, keeper));
    }
    let mut failovers = 0;
    for round in 0..20 {
        let mut leader = g.leader().await;
        if leader == keeper_at {
            // Keep the keepers' member: move leadership off it first.
            let to = g.members[follower_of(&g, leader)];
            g.node(leader)
                .node()
                .transfer_leader(to)
                .await
                .expect("transfer");
            leader = g.leader().await;
        }
        let old = g.members[leader];
        if round % 2 == 0 {
            g.crash(leader).await;
        } else {
            g.net.isolate(old);
        }
        // A new leader among the others.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let l = g.node(keeper_at).node().leader();
            if l.leader.is_some() && l.leader != Some(old) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no new leader after round {round}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        failovers += 1;
        // Let the keepers find it and run a few TTLs under it.
        tokio::time::sleep(ttl * 2).await;
        if round % 2 == 0 {
            g.revive(leader).await;
        } else {
            g.net.heal();
        }
        tokio::time::sleep(ttl).await;
    }
    assert_eq!(failovers, 20);
    // Every lease lives, with its key as created, and no keeper ever saw
    // an error.
    for (id, key, created, keeper) in &mut leases {
        let t = kv
            .lease_time_to_live(*id, true, o())
            .await
            .expect("the lease is alive");
        assert_eq!(t.keys, vec![key.as_bytes().to_vec()]);
        let got = kv
            .get(key.as_bytes().to_vec(), o())
            .await
            .expect("get")
            .expect("the key is alive");
        assert_eq!(got.create_revision, *created);
        while let Some(Some(r)) = futures::FutureExt::now_or_never(keeper.next()) {
            assert!(r.is_ok(), "lease {id:?}: {r:?}");
        }
    }
    g.stop().await;
}
