//! Partitions with real processes: three ha-node members that dial each
//! other through fault-injecting proxies (`ha_examples::proxy`, one per
//! directed link). An isolated minority member stalls with typed errors
//! and serves no stale linearizable read while the majority commits; an
//! isolated leader is replaced and stops serving linearizable reads; a
//! one-way partition (each direction) and slow links lose nothing; after
//! every heal all members converge: every acknowledged write on every
//! member and equal state hashes at one applied index.
//!
//! The proxy itself is checked first, against an echo server. Last, a
//! 20-second `ha-bench chaos` run (kills, pauses, partitions) must lose no
//! acknowledged write and leave a history the simulator's checker accepts.
//!
//! Bounds are generous and nothing is timed: only safety and eventual
//! outcomes are asserted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use ha_examples::bench::chaos::FaultKind;
use ha_examples::procs::{Cluster, PATIENCE, one_at_a_time};
use ha_examples::proxy::{LinkMode, LinkProxy};

async fn start() -> Cluster {
    Cluster::start_linked(env!("CARGO_BIN_EXE_ha-node").into(), 3).await
}

/// Errors a member may answer for a write it could not get committed: all
/// typed, none a success.
const STALLED_WRITE: &[&str] = &[
    "timeout",
    "outcome_unknown",
    "proposal_dropped",
    "not_leader",
    "deadline_exceeded",
];

/// A write through a member cut off from the majority fails with a typed
/// error (and is not recorded as acknowledged).
async fn expect_stalled_write(c: &Cluster, id: u64, key: &str) {
    match c.try_put(id, key, "from-the-minority", 1_000).await {
        Ok(()) => panic!("a write through isolated member {id} was acknowledged"),
        Err((Some(status), v)) => {
            let code = v["error"].as_str().unwrap_or_default();
            assert!(
                STALLED_WRITE.contains(&code),
                "write through isolated member {id}: unexpected answer {status} {v}"
            );
        }
        Err((None, e)) => panic!("write through isolated member {id}: no answer: {e}"),
    }
}

/// A linearizable read of `key` through `id` either fails or returns the
/// newest value: never `stale`.
async fn expect_no_stale_read(c: &Cluster, id: u64, key: &str, stale: &str) {
    match c.range_prefix(id, key, true, 1_000).await {
        Ok(kvs) => assert_ne!(
            kvs.get(key).map(String::as_str),
            Some(stale),
            "member {id} served a stale linearizable read of {key}"
        ),
        Err((Some(_), v)) => assert!(
            v["error"].is_string(),
            "a failed read answers a typed error: {v}"
        ),
        Err((None, e)) => panic!("read through member {id}: no answer: {e}"),
    }
}

/// A serializable (local) read of `key` on `id`.
async fn local_value(c: &Cluster, id: u64, key: &str) -> Option<String> {
    c.range_prefix(id, key, false, 5_000)
        .await
        .unwrap_or_else(|e| panic!("serializable read on member {id}: {e:?}"))
        .get(key)
        .cloned()
}

/// Puts through `id` (retried until acknowledged) and records them.
async fn write_through(
    c: &Cluster,
    acked: &mut BTreeMap<String, String>,
    id: u64,
    prefix: &str,
    n: u64,
) {
    for i in 0..n {
        let (k, v) = (format!("p/{prefix}/{id}/{i}"), format!("{prefix}-{id}-{i}"));
        c.put(id, &k, &v).await;
        acked.insert(k, v);
    }
}

/// After a heal: one leader, every acknowledged write everywhere, equal
/// state hashes.
async fn converged(c: &Cluster, acked: &BTreeMap<String, String>) {
    c.healthy().await;
    c.check_prefix("p/", acked).await;
    c.assert_same_state().await;
}

/// Waits until member `id` reports a role other than leader.
async fn stepped_down(c: &Cluster, id: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok((StatusCode::OK, v)) = c.get(id, "/v1/status").await
            && v["role"] != "leader"
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "isolated leader {id} still leads after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every member in `ids` names the same leader, one of `ids`.
async fn leader_among(c: &Cluster, ids: &[u64]) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut seen = Vec::new();
        for &id in ids {
            seen.push(match c.get(id, "/v1/status").await {
                Ok((StatusCode::OK, v)) => v["leader"].as_u64(),
                _ => None,
            });
        }
        if let Some(Some(l)) = seen.first().copied()
            && seen.iter().all(|x| *x == Some(l))
            && ids.contains(&l)
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no leader among {ids:?} within {PATIENCE:?}: {seen:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_minority_member_stalls_while_the_majority_commits_and_heals() {
    one_at_a_time(async {
        let c = start().await;
        let leader = c.healthy().await;
        let cut = (1..=3).find(|&id| id != leader).expect("a follower");
        let other = (1..=3)
            .find(|&id| id != leader && id != cut)
            .expect("the other follower");
        let mut acked = BTreeMap::new();
        for id in 1..=3 {
            write_through(&c, &mut acked, id, "before", 5).await;
        }
        c.put(leader, "p/x", "old").await;
        acked.insert("p/x".into(), "old".into());
        // Every member has "old" before the cut.
        c.check_prefix("p/", &acked).await;

        c.isolate(cut, LinkMode::Blackhole);
        for id in [leader, other] {
            write_through(&c, &mut acked, id, "during", 10).await;
        }
        c.put(other, "p/x", "new").await;
        acked.insert("p/x".into(), "new".into());

        expect_stalled_write(&c, cut, "p/minority/1").await;
        expect_no_stale_read(&c, cut, "p/x", "old").await;
        // The partition is real: the cut member's own state is behind.
        assert_eq!(
            local_value(&c, cut, "p/x").await.as_deref(),
            Some("old"),
            "the isolated member cannot have learned the new value"
        );
        // Still stalled after an election timeout or more.
        tokio::time::sleep(Duration::from_millis(500)).await;
        expect_stalled_write(&c, cut, "p/minority/2").await;
        expect_no_stale_read(&c, cut, "p/x", "old").await;
        write_through(&c, &mut acked, other, "later", 5).await;

        c.heal();
        converged(&c, &acked).await;
        write_through(&c, &mut acked, cut, "healed", 5).await;
        converged(&c, &acked).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_and_stops_serving_linearizable_reads() {
    one_at_a_time(async {
        let c = start().await;
        let old = c.healthy().await;
        let rest: Vec<u64> = (1..=3).filter(|&id| id != old).collect();
        let mut acked = BTreeMap::new();
        write_through(&c, &mut acked, old, "before", 5).await;
        c.put(old, "p/x", "old").await;
        acked.insert("p/x".into(), "old".into());
        c.check_prefix("p/", &acked).await;

        // Connections reset rather than silence, this time.
        c.isolate(old, LinkMode::Refuse);
        let new = leader_among(&c, &rest).await;
        assert_ne!(new, old);
        c.put(new, "p/x", "new").await;
        acked.insert("p/x".into(), "new".into());
        for &id in &rest {
            write_through(&c, &mut acked, id, "during", 10).await;
        }
        // Never a stale read, before and after it notices.
        expect_no_stale_read(&c, old, "p/x", "old").await;
        stepped_down(&c, old).await;
        expect_no_stale_read(&c, old, "p/x", "old").await;
        expect_stalled_write(&c, old, "p/old-leader/1").await;

        c.heal();
        converged(&c, &acked).await;
        write_through(&c, &mut acked, old, "healed", 5).await;
        converged(&c, &acked).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_partitions_and_slow_links_lose_nothing_and_heal() {
    one_at_a_time(async {
        let c = start().await;
        let leader = c.healthy().await;
        let f = (1..=3).find(|&id| id != leader).expect("a follower");
        let g = (1..=3)
            .find(|&id| id != leader && id != f)
            .expect("the other follower");
        let mut acked = BTreeMap::new();
        for id in 1..=3 {
            write_through(&c, &mut acked, id, "before", 5).await;
        }

        c.put(leader, "p/x", "0").await;
        acked.insert("p/x".into(), "0".into());
        c.check_prefix("p/", &acked).await;

        // 1. The leader no longer reaches f; f still reaches the leader.
        c.set_link(leader, f, LinkMode::Blackhole);
        let l1 = leader_among(&c, &[leader, g]).await;
        write_through(&c, &mut acked, l1, "one-way-a", 10).await;
        write_through(&c, &mut acked, g, "one-way-a", 10).await;
        c.put(l1, "p/x", "a").await;
        acked.insert("p/x".into(), "a".into());
        if l1 == leader {
            assert_eq!(
                local_value(&c, f, "p/x").await.as_deref(),
                Some("0"),
                "f hears nothing from the leader: its state is behind"
            );
        }
        expect_no_stale_read(&c, f, "p/x", "0").await;
        c.heal();
        converged(&c, &acked).await;

        // 2. f no longer reaches the leader; the leader still reaches f.
        let leader = c.healthy().await;
        let f = (1..=3).find(|&id| id != leader).expect("a follower");
        let g = (1..=3)
            .find(|&id| id != leader && id != f)
            .expect("the other follower");
        c.set_link(f, leader, LinkMode::Blackhole);
        let l2 = leader_among(&c, &[leader, g]).await;
        write_through(&c, &mut acked, l2, "one-way-b", 10).await;
        write_through(&c, &mut acked, g, "one-way-b", 10).await;
        c.put(l2, "p/x", "b").await;
        acked.insert("p/x".into(), "b".into());
        expect_no_stale_read(&c, f, "p/x", "a").await;
        c.heal();
        converged(&c, &acked).await;

        // 3. Every link slow: writes through every member still commit.
        for link in c.links.values() {
            link.set(LinkMode::Delay(Duration::from_millis(30)));
        }
        for id in 1..=3 {
            write_through(&c, &mut acked, id, "slow", 5).await;
        }
        c.heal();
        converged(&c, &acked).await;
    })
    .await;
}

// The proxy on its own.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    s.write_all(msg).await.ok()?;
    let mut got = vec![0u8; msg.len()];
    match tokio::time::timeout(wait, s.read_exact(&mut got)).await {
        Ok(Ok(_)) => Some(got),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_proxy_passes_blackholes_refuses_and_delays() {
    let link = LinkProxy::start(echo_server().await).await.expect("proxy");
    let mut s = TcpStream::connect(link.addr()).await.expect("connect");
    let long = Duration::from_secs(10);
    assert_eq!(
        roundtrip(&mut s, b"one", long).await.as_deref(),
        Some(&b"one"[..])
    );

    // Blackhole: the connection stays, nothing comes back.
    link.set(LinkMode::Blackhole);
    assert_eq!(
        roundtrip(&mut s, b"lost", Duration::from_millis(300)).await,
        None
    );
    // Pass again: later bytes flow, the lost ones stay lost.
    link.set(LinkMode::Pass);
    assert_eq!(
        roundtrip(&mut s, b"two", long).await.as_deref(),
        Some(&b"two"[..])
    );

    // Delay: still delivered, in order.
    link.set(LinkMode::Delay(Duration::from_millis(50)));
    s.write_all(b"a").await.expect("write");
    s.write_all(b"b").await.expect("write");
    let mut got = [0u8; 2];
    tokio::time::timeout(long, s.read_exact(&mut got))
        .await
        .expect("delayed bytes arrive")
        .expect("read");
    assert_eq!(&got, b"ab");

    // Refuse: the open connection closes, new ones are closed at once.
    link.set(LinkMode::Refuse);
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(long, s.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection was closed");
    let mut t = TcpStream::connect(link.addr()).await.expect("accepted");
    let n = tokio::time::timeout(long, t.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "a new connection is closed");

    link.set(LinkMode::Pass);
    let mut u = TcpStream::connect(link.addr()).await.expect("connect");
    assert_eq!(
        roundtrip(&mut u, b"back", long).await.as_deref(),
        Some(&b"back"[..])
    );
}

/// `ha-bench chaos` arguments for a short test run: 3 members, 4 writers
/// and 2 readers, the test's own ha-node, the history in `dir`.
fn chaos_args(
    dir: &tempfile::TempDir,
    seconds: u32,
    seed: u64,
    (interval_min_ms, interval_max_ms): (u64, u64),
    max_replaces: Option<u64>,
    faults: Vec<FaultKind>,
) -> ha_examples::bench::chaos::Args {
    ha_examples::bench::chaos::Args {
        minutes: f64::from(seconds) / 60.0,
        members: 3,
        writers: 4,
        readers: 2,
        seed,
        interval_min_ms,
        interval_max_ms,
        op_timeout_ms: 2_000,
        history_out: Some(dir.path().join("chaos.history.jsonl")),
        node_bin: Some(env!("CARGO_BIN_EXE_ha-node").into()),
        max_replaces,
        faults,
    }
}

/// `ha-bench chaos` for 20 seconds, faults every 4–6 s: it completes with
/// no acknowledged write lost, a history the simulator's checker finds
/// linearizable, and equal replicas. A smoke test of the benchmark's
/// machinery and of safety; its timing figures are not asserted (they
/// belong to the benchmark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_run_loses_no_acknowledged_write_and_stays_linearizable() {
    one_at_a_time(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let args = chaos_args(&dir, 20, 7, (4_000, 6_000), None, FaultKind::ALL.to_vec());
        let r = ha_examples::bench::chaos::chaos(&args)
            .await
            .expect("chaos run");
        assert!(!r.faults.is_empty(), "no fault was injected");
        assert!(
            r.leader_faults() >= 1,
            "no fault hit the leader: {:?}",
            r.faults
        );
        assert!(r.writes.0 > 0, "no write was acknowledged");
        assert_eq!(r.acked_lost, 0, "acknowledged writes lost");
        assert!(
            r.violations.is_empty(),
            "history violations: {:#?}",
            r.violations
        );
        assert!(r.replicas_agree, "replicas differ at one applied index");
        // The history on disk is the one checked: read back, it is the
        // same operations.
        let f = std::fs::File::open(&r.history).expect("history file");
        let ops = ha_raft::sim::read_history(&mut std::io::BufReader::new(f)).expect("history");
        assert_eq!(
            ops.iter()
                .filter(|o| o.op == ha_raft::sim::OpKind::Put)
                .count() as u64,
            r.writes.0 + r.writes.1 + r.writes.2
        );
    })
    .await;
}

/// `ha-bench chaos` with member replacement and slow disks only: new
/// members join through their own link proxies (`--peer-routes`), are
/// promoted, and the old ones are removed — the leader among them when the
/// schedule says so; a member's log writes are slowed through
/// `--enable-failpoints` — under the same writes and reads. Nothing
/// acknowledged is lost, the history is linearizable, the replicas agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_run_replacing_members_and_slowing_disks_loses_nothing() {
    one_at_a_time(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let args = chaos_args(
            &dir,
            22,
            3,
            (3_000, 4_000),
            Some(3),
            vec![FaultKind::Replace, FaultKind::SlowDisk],
        );
        let r = ha_examples::bench::chaos::chaos(&args)
            .await
            .expect("chaos run");
        let replaced: Vec<u64> = r
            .faults
            .iter()
            .filter(|f| f.kind == FaultKind::Replace)
            .map(|f| f.member)
            .collect();
        assert!(!replaced.is_empty(), "no replacement: {:?}", r.faults);
        assert!(
            r.faults.iter().any(|f| f.kind == FaultKind::SlowDisk),
            "no slow disk: {:?}",
            r.faults
        );
        assert!(r.writes.0 > 0, "no write was acknowledged");
        assert_eq!(r.acked_lost, 0, "acknowledged writes lost");
        assert!(
            r.violations.is_empty(),
            "history violations: {:#?}",
            r.violations
        );
        assert!(r.replicas_agree, "replicas differ at one applied index");
        // Writes were acknowledged after the last fault too.
        let last = r.faults.last().expect("a fault").healed.as_nanos() as u64;
        let f = std::fs::File::open(&r.history).expect("history file");
        let ops = ha_raft::sim::read_history(&mut std::io::BufReader::new(f)).expect("history");
        assert!(
            ops.iter().any(|o| o.op == ha_raft::sim::OpKind::Put
                && o.outcome == ha_raft::sim::Outcome::Ok
                && o.invoke_ns > last),
            "no write acknowledged after the last fault"
        );
    })
    .await;
}
