//! ha-demo: a three-member group in one process doing real work, each
//! member on its own embedded RocksDB (in a temporary directory).
//!
//! Writes go through every member, the leader is killed as if its process
//! died, a new leader takes over, writing resumes, the dead member reopens
//! its RocksDB, comes back and catches up — and every acknowledged write is
//! read back, linearizably, from every member. Then the replicated KV: a
//! past revision, a compare-and-swap, compaction, and a watch that sees a
//! service registration vanish when its lease's keeper stops. Then the
//! recipes: a lock hand-off between members with fencing tokens, and an
//! election that moves when its leader's member is killed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use ha_core::{
    Compare, CompareOp, CompareTarget, Config, DeleteRequest, EventKind, KeyRange, KvClient,
    KvOptions, LeaseGrantRequest, NodeId, PutRequest, RangeRequest, TxnOp, TxnRequest,
    WatchRequest,
};
use ha_discovery::{Election, Fenced, Mutex, Session};
use ha_examples::KvMachine;
use ha_raft::{KvConfig, KvNode, MemNetwork, Node, ReadConsistency};
use ha_storage::{RocksEnv, StorageConfig};

type DemoResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Member {
    node: Option<Node>,
    dir: PathBuf,
}

/// Opens (or reopens) a member's RocksDB and starts it.
async fn start(
    id: NodeId,
    members: &[NodeId],
    network: &MemNetwork,
    env: &RocksEnv,
    dir: &Path,
) -> DemoResult<Node> {
    let (log, state) = env.open(dir, &StorageConfig::default())?;
    // The map is rebuilt from what RocksDB holds; the log replays the rest.
    let machine = KvMachine::open(&state)?;
    let mut config = Config::new(id, members.to_vec());
    config.snapshot_dir = Some(dir.join("snapshots"));
    Ok(Node::start(
        config,
        Arc::new(log),
        Arc::new(state),
        machine,
        network.transport(id),
    )
    .await?)
}

/// The replicated KV (etcd v3 semantics) on a second group: revisions,
/// reads in the past, a compare-and-swap transaction, compaction.
async fn kv_demo(env: &RocksEnv, root: &Path) -> DemoResult<()> {
    let ids = vec![NodeId(11), NodeId(12), NodeId(13)];
    let network = MemNetwork::new();
    let mut kvs = Vec::new();
    for &id in &ids {
        let dir = root.join(format!("kv-{id}"));
        let (log, state) = env.open(&dir, &StorageConfig::default())?;
        let mut config = Config::new(id, ids.clone());
        config.snapshot_dir = Some(dir.join("snapshots"));
        kvs.push(
            KvNode::start(
                config,
                KvConfig::default(),
                Arc::new(log),
                Arc::new(state),
                network.transport(id),
            )
            .await?,
        );
    }
    let o = KvOptions::default;
    let r1 = kvs[0]
        .put(PutRequest::new("config/mode", "blue"), o())
        .await?
        .header
        .revision;
    let r2 = kvs[1]
        .put(PutRequest::new("config/mode", "green"), o())
        .await?
        .header
        .revision;
    let past = kvs[2]
        .range(
            RangeRequest {
                revision: r1,
                ..RangeRequest::new(KeyRange::key("config/mode"))
            },
            o(),
        )
        .await?;
    println!(
        "kv: put config/mode=blue at revision {r1}, =green at {r2}; member 13 reads revision {r1}: {}",
        String::from_utf8_lossy(&past.kvs[0].value)
    );
    let cas = |expect: i64, value: &str| TxnRequest {
        compare: vec![Compare::key(
            "config/mode",
            CompareOp::Equal,
            CompareTarget::ModRevision(expect),
        )],
        success: vec![TxnOp::Put(PutRequest::new("config/mode", value))],
        failure: vec![],
    };
    let won = kvs[2].txn(cas(r2, "red"), o()).await?;
    let lost = kvs[0].txn(cas(r2, "yellow"), o()).await?;
    println!(
        "kv: txn CAS on mod_revision={r2}: first succeeded={} (revision {}), second succeeded={}",
        won.succeeded, won.header.revision, lost.succeeded
    );
    if !won.succeeded || lost.succeeded {
        return Err("a compare-and-swap transaction went wrong".into());
    }
    lease_demo(&kvs).await?;
    let deleted = kvs[1]
        .delete(
            DeleteRequest {
                range: KeyRange::prefix("config/"),
                prev_kv: true,
            },
            o(),
        )
        .await?;
    kvs[0].compact(deleted.header.revision, o()).await?;
    match kvs[1]
        .range(
            RangeRequest {
                revision: r1,
                ..RangeRequest::new(KeyRange::key("config/mode"))
            },
            o(),
        )
        .await
    {
        Err(ha_core::Error::Compacted { compact_revision }) => println!(
            "kv: deleted {} key(s) at revision {}, compacted there; reading revision {r1} now fails: Compacted {{ compact_revision: {compact_revision} }}",
            deleted.deleted, deleted.header.revision
        ),
        other => return Err(format!("a read below the compaction answered {other:?}").into()),
    }
    discovery_demo(&kvs).await?;

    config_demo(&kvs).await?;
    let killed = recipes_demo(&kvs).await?;
    for (i, kv) in kvs.iter().enumerate() {
        if i != killed {
            kv.shutdown().await?;
        }
    }
    Ok(())
}

/// Service discovery (ha-discovery): two instances register through
/// member 12, member 13's service watch sees them, a client balances by
/// weight, and when one instance's session ends member 11's view drops it.
async fn discovery_demo(kvs: &[KvNode]) -> DemoResult<()> {
    use ha_discovery::{
        InstanceFilter, LoadBalancer, Registry, ServiceChange, ServiceInstance,
        SmoothWeightedRoundRobin,
    };
    let registry = |i: usize| Registry::new(Arc::new(kvs[i].clone()));
    let mut watch = registry(2).watch("orders");
    watch.next().await.ok_or("no snapshot")??;
    let session = Session::builder(kvs[1].clone())
        .ttl(kvs[1].min_lease_ttl())
        .start()
        .await?;
    let registered = Instant::now();
    for (id, weight) in [("orders-1", 1), ("orders-2", 3)] {
        let instance = ServiceInstance::new("orders", id, "127.0.0.1", 8080).weight(weight);
        if id == "orders-1" {
            registry(1).register_persistent(&instance).await?;
        } else {
            registry(1).register_ephemeral(&session, &instance).await?;
        }
    }
    for _ in 0..2 {
        match watch.next().await.ok_or("watch ended")?? {
            ServiceChange::Put { .. } => {}
            other => return Err(format!("unexpected change {other:?}").into()),
        }
    }
    println!(
        "discovery: orders-1 (weight 1, persistent) and orders-2 (weight 3, ephemeral) registered through member 12; member 13's watch saw both {} us later",
        registered.elapsed().as_micros()
    );
    let instances = registry(0)
        .instances("orders", &InstanceFilter::new())
        .await?;
    let lb = LoadBalancer::new(
        SmoothWeightedRoundRobin::new(),
        ha_discovery::BalancerConfig::default(),
        Arc::new(ha_raft::SystemClock),
    )?;
    let mut picks = BTreeMap::new();
    for _ in 0..400 {
        let call = lb.pick(&instances, None).ok_or("nothing to pick")?;
        *picks.entry(call.instance().id.clone()).or_insert(0) += 1;
        call.success();
    }
    println!("discovery: 400 calls balanced by smooth weighted round-robin: {picks:?}");
    let ended = Instant::now();
    session.close().await?;
    loop {
        let left = registry(0)
            .instances("orders", &InstanceFilter::all())
            .await?;
        if left.iter().all(|i| i.id != "orders-2") {
            break;
        }
        if ended.elapsed() > Duration::from_secs(10) {
            return Err("orders-2 outlived its session".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "discovery: orders-2's session ended; member 11 stopped returning it {} us later",
        ended.elapsed().as_micros()
    );
    registry(1).deregister("orders", "orders-1").await?;
    Ok(())
}

/// The recipes (ha-discovery) on the KV group: a lock handed from member 11
/// to a waiter on member 12 with a higher fencing token, the old token
/// refused at the resource; then an election whose leader's member (13) is
/// killed, and leadership moving to member 11. Returns the killed member's
/// index.
async fn recipes_demo(kvs: &[KvNode]) -> DemoResult<usize> {
    let ttl = Duration::from_secs(1);
    let session = |i: usize| Session::builder(kvs[i].clone()).ttl(ttl).start();
    let (a, b) = (session(0).await?, session(1).await?);
    let resource = Fenced::new(Vec::<&str>::new());
    let held = Mutex::new(&a, "locks/report").lock().await?;
    let first = held.fencing_token();
    resource.write(first, |log| log.push("written by member 11"))?;
    let waiter = tokio::spawn(async move {
        let guard = Mutex::new(&b, "locks/report").lock().await;
        (guard, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let unlocked = Instant::now();
    held.unlock().await?;
    let (guard, acquired) = waiter.await?;
    let guard = guard?;
    let second = guard.fencing_token();
    resource.write(second, |log| log.push("written by member 12"))?;
    println!(
        "recipes: lock locks/report held on member 11 with fencing token {first}; unlocked, the waiter on member 12 got it {} us later with token {second}",
        acquired.duration_since(unlocked).as_micros()
    );
    match resource.write(first, |log| log.push("stale")) {
        Err(stale) => {
            println!("recipes: a late write with token {first} is refused by the resource: {stale}")
        }
        Ok(()) => return Err("the resource accepted a stale fencing token".into()),
    }
    guard.unlock().await?;

    let doomed = 2;
    let c = session(doomed).await?;
    let d = session(0).await?;
    let leader = Election::new(&c, "elections/scheduler")
        .campaign("member 13")
        .await?;
    let next = tokio::spawn(async move {
        let l = Election::new(&d, "elections/scheduler")
            .campaign("member 11")
            .await;
        (l, Instant::now(), d)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed = Instant::now();
    kvs[doomed].kill().await;
    let (leadership, took_over, _d) = next.await?;
    let leadership = leadership?;
    if !leader.is_lost() || leadership.fencing_token() <= leader.fencing_token() {
        return Err("the election did not move safely".into());
    }
    println!(
        "recipes: election leader \"member 13\" (token {}) killed with its member; \"member 11\" leads {} ms later with token {}",
        leader.fencing_token(),
        took_over.duration_since(killed).as_millis(),
        leadership.fencing_token()
    );
    leadership.resign().await?;
    a.close().await?;
    Ok(doomed)
}

/// A service registers under a lease kept alive by member 12 while member
/// 13 watches; the keeper stops, the lease expires, the watch sees the
/// registration go.
async fn lease_demo(kvs: &[KvNode]) -> DemoResult<()> {
    let o = KvOptions::default;
    let mut watch = kvs[2]
        .watch(WatchRequest::prefix("services/").with_prev_kv())
        .await?;
    let ttl = kvs[1].min_lease_ttl();
    let lease = kvs[1]
        .lease_grant(LeaseGrantRequest::new(ttl), o())
        .await?
        .id;
    kvs[1]
        .put(
            PutRequest {
                lease,
                ..PutRequest::new("services/api/1", "10.0.0.7:8080")
            },
            o(),
        )
        .await?;
    let keeper = kvs[1].lease_keep_alive(lease).await?;
    tokio::time::sleep(ttl * 3).await;
    let alive = kvs[0].lease_time_to_live(lease, true, o()).await?;
    drop(keeper);
    let stopped = Instant::now();
    let (mut put_at, mut deleted_at) = (None, None);
    while deleted_at.is_none() {
        let response = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .map_err(|_| "the watch saw no expiry within 10 s")?
            .ok_or("the watch ended")??;
        for e in response.events {
            match e.kind {
                EventKind::Put => put_at = Some(e.kv.mod_revision),
                EventKind::Delete => deleted_at = Some((e.kv.mod_revision, stopped.elapsed())),
            }
        }
    }
    let (Some(put_at), Some((deleted_at, after))) = (put_at, deleted_at) else {
        return Err("the watch missed the registration".into());
    };
    println!(
        "kv: member 13 watched services/: put at revision {put_at} under lease {} (TTL {} ms, kept alive by member 12 for {} ms, {} key attached)",
        lease.0,
        ttl.as_millis(),
        (ttl * 3).as_millis(),
        alive.keys.len()
    );
    println!(
        "kv: keeper stopped; the leader expired the lease and the watch saw the delete at revision {deleted_at}, {} ms later",
        after.as_millis()
    );
    Ok(())
}

async fn wait_leader(members: &BTreeMap<NodeId, Member>) -> DemoResult<NodeId> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for m in members.values() {
            if let Some(node) = &m.node
                && let Some(l) = node.leader().leader
                && members.get(&l).is_some_and(|m| m.node.is_some())
            {
                return Ok(l);
            }
        }
        if Instant::now() > deadline {
            return Err("no leader within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> DemoResult<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let ids = vec![NodeId(1), NodeId(2), NodeId(3)];
    let network = MemNetwork::new();
    // One block cache and thread pool for the RocksDB instances of all members.
    let env = RocksEnv::new(&StorageConfig::default())?;
    let root = tempfile::tempdir()?;
    let mut members = BTreeMap::new();
    for &id in &ids {
        let dir = root.path().join(format!("member-{id}"));
        let node = start(id, &ids, &network, &env, &dir).await?;
        members.insert(
            id,
            Member {
                node: Some(node),
                dir,
            },
        );
    }
    println!("data directories under {}", root.path().display());
    let t0 = Instant::now();
    let first = wait_leader(&members).await?;
    println!(
        "3 members up; member {first} was elected leader in {:?}",
        t0.elapsed()
    );

    // Writes through each member: followers forward to the leader.
    let mut acked: Vec<(String, String)> = Vec::new();
    for round in 0..10 {
        for (&id, m) in &members {
            let (k, v) = (format!("key-{round}-{id}"), format!("written via {id}"));
            if let Some(node) = &m.node {
                node.propose(KvMachine::put(&k, &v)).await?;
                acked.push((k, v));
            }
        }
    }
    println!("{} writes acknowledged, through every member", acked.len());

    // Kill the leader as if its process died: no handover, queued log
    // writes abandoned, RocksDB closed.
    let dead = wait_leader(&members).await?;
    let t_kill = Instant::now();
    if let Some(m) = members.get_mut(&dead)
        && let Some(node) = m.node.take()
    {
        node.kill().await;
    }
    println!("killed the leader, member {dead}");
    let new_leader = wait_leader(&members).await?;
    println!("member {new_leader} took over in {:?}", t_kill.elapsed());

    for i in 0..20 {
        let (k, v) = (format!("after-failover-{i}"), format!("value {i}"));
        let via = members
            .values()
            .filter_map(|m| m.node.as_ref())
            .nth(i % 2)
            .ok_or("no running member")?;
        via.propose(KvMachine::put(&k, &v)).await?;
        acked.push((k, v));
    }
    println!(
        "writing resumed: {} writes acknowledged in all",
        acked.len()
    );

    // The dead member reopens its RocksDB and catches up.
    if let Some(m) = members.get_mut(&dead) {
        let node = start(dead, &ids, &network, &env, &m.dir).await?;
        m.node = Some(node);
    }
    println!("member {dead} restarted from its RocksDB and caught up");

    let mut checked = 0;
    for m in members.values() {
        let Some(node) = &m.node else { continue };
        for (k, v) in &acked {
            let got = node
                .read(
                    Bytes::from(k.clone().into_bytes()),
                    ReadConsistency::Linearizable,
                )
                .await?;
            if got.as_ref() != v.as_bytes() {
                return Err(format!(
                    "member {} lost acknowledged write {k}: read {:?}",
                    node.id(),
                    String::from_utf8_lossy(&got)
                )
                .into());
            }
            checked += 1;
        }
    }
    println!(
        "all {} writes read back linearizably from all 3 members ({checked} reads)",
        acked.len()
    );

    let mut leader_changes = 0;
    for m in members.values() {
        if let Some(node) = &m.node {
            leader_changes = leader_changes.max(node.metrics().leader_changes);
        }
    }
    for m in members.values() {
        if let Some(node) = &m.node {
            node.shutdown().await?;
        }
    }
    kv_demo(&env, root.path()).await?;
    println!(
        "demo ok: leader_changes={leader_changes} writes={}",
        acked.len()
    );
    Ok(())
}

/// The config center (ha-discovery): instances on members 12 and 13 hold
/// a typed config; a version published on member 11 reaches both; a grey
/// candidate reaches only the selected instance; a rollback reaches both.
async fn config_demo(kvs: &[KvNode]) -> DemoResult<()> {
    use ha_discovery::{
        ConfigCenter, ConfigFormat, ConfigId, ConfigInstance, GreyRule, Publish, TypedConfig,
    };
    /// The settings the instances read.
    #[derive(serde::Deserialize)]
    struct Settings {
        pool: u32,
    }
    let wait = Duration::from_secs(10);
    let admin = ConfigCenter::builder(kvs[0].clone())
        .author("demo")
        .build()?;
    let id = ConfigId::new("demo", "web", "settings.json")?;
    let v1 = admin
        .publish(&id, Publish::new(ConfigFormat::Json, r#"{"pool": 8}"#))
        .await?;
    let mut instances = Vec::new();
    for (i, kv) in kvs.iter().enumerate().skip(1) {
        let center = ConfigCenter::builder(kv.clone()).build()?;
        let instance = ConfigInstance::new(format!("web-{}", 11 + i));
        instances.push(
            TypedConfig::<Settings>::builder(&center, id.clone())
                .instance(instance)
                .start()
                .await?,
        );
    }
    let t = Instant::now();
    let v2 = admin
        .publish(&id, Publish::new(ConfigFormat::Json, r#"{"pool": 32}"#))
        .await?;
    for c in &instances {
        c.wait_until(wait, |s| s.version == v2.version).await?;
    }
    println!(
        "config: {id} v{} published on member 11; instances on members 12 and 13 run it (pool={}) {} ms later",
        v2.version,
        instances[1].get().pool,
        t.elapsed().as_millis()
    );
    let grey = admin
        .publish_grey(
            &id,
            Publish::new(ConfigFormat::Json, r#"{"pool": 64}"#),
            GreyRule::instances(["web-13"]),
        )
        .await?;
    instances[1]
        .wait_until(wait, |s| s.grey && s.version == grey.version)
        .await?;
    if instances[0].status().grey || instances[0].get().pool != 32 {
        return Err("a grey candidate reached an instance it did not select".into());
    }
    println!(
        "config: grey v{} to web-13 only: web-13 pool={}, web-12 pool={} (stable v{})",
        grey.version,
        instances[1].get().pool,
        instances[0].get().pool,
        v2.version
    );
    admin.abort(&id).await?;
    let back = admin.rollback(&id, v1.version).await?;
    for c in &instances {
        c.wait_until(wait, |s| s.version == back.version && !s.grey)
            .await?;
    }
    println!(
        "config: grey aborted, rolled back to v{} as v{}: both instances run pool={}",
        v1.version,
        back.version,
        instances[0].get().pool
    );
    Ok(())
}
