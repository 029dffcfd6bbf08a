//! Crash cycles with real processes: three ha-node members under
//! continuous writes (one writer through each member, every acknowledged
//! write recorded); each cycle SIGKILLs a member chosen by a seeded RNG
//! (the leader in about half of the cycles) and restarts it. After each
//! cycle, once the restarted member is healthy: every acknowledged write
//! is on every member (a linearizable prefix read through each), and all
//! members hold the same state hash at the same applied index
//! (`GET /v1/digest`).
//!
//! 50 cycles by default; `HA_CRASH_CYCLES=500` for more, `HA_CRASH_SEED=N`
//! to replay a run (the seed is printed first).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;

use ha_examples::procs::{Cluster, PATIENCE};

/// Members of the group.
const MEMBERS: u64 = 3;
/// A writer's deadline per write (the member answers `timeout` or
/// `outcome_unknown` after it).
const WRITE_TIMEOUT_MS: u64 = 2_000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// What the writers share with the test.
struct Writes {
    /// Every acknowledged write: key → value.
    acked: Mutex<BTreeMap<String, String>>,
    /// Held for reading around each write; the test takes it for writing
    /// to stop writes while it compares the members.
    gate: tokio::sync::RwLock<()>,
    stop: AtomicBool,
    /// Writes answered with an error or not answered.
    failed: AtomicU64,
}

/// Writes `c/<writer>/<seq>` through member `member` until stopped; a new
/// key per attempt, so a write whose outcome is unknown never shadows an
/// acknowledged one.
async fn writer(writes: Arc<Writes>, client: reqwest::Client, port: u16, writer: u64, seed: u64) {
    let url =
        format!("http://127.0.0.1:{port}/v1/kv/put?encoding=utf8&timeout_ms={WRITE_TIMEOUT_MS}");
    let mut seq = 0u64;
    while !writes.stop.load(Ordering::Relaxed) {
        seq += 1;
        let key = format!("c/{writer}/{seq:07}");
        let value = format!("{seed}-{writer}-{seq}");
        let ok = {
            let _open = writes.gate.read().await;
            let r = client
                .post(&url)
                .json(&json!({ "key": key, "value": value }))
                .send()
                .await;
            matches!(r, Ok(r) if r.status() == StatusCode::OK)
        };
        if ok {
            writes.acked.lock().insert(key, value);
            // Pace the writers: the check reads every key each cycle.
            tokio::time::sleep(Duration::from_millis(10)).await;
        } else {
            writes.failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The current leader as member `id` sees it.
async fn leader_seen_by(c: &Cluster, id: u64) -> Option<u64> {
    match c.get(id, "/v1/status").await {
        Ok((StatusCode::OK, v)) => v["leader"].as_u64(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_cycles_lose_no_acknowledged_write_and_members_converge() {
    let cycles = env_u64("HA_CRASH_CYCLES").unwrap_or(50);
    let seed = env_u64("HA_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("crash cycles: {cycles}, seed {seed} (replay with HA_CRASH_SEED={seed})");
    // Generous: a cycle takes a few seconds on a loaded two-core machine.
    let bound = Duration::from_secs(120 + cycles * 20);
    tokio::time::timeout(bound, crash_cycles(cycles, seed))
        .await
        .unwrap_or_else(|_| panic!("crash cycles (seed {seed}) exceeded {bound:?}"));
}

async fn crash_cycles(cycles: u64, seed: u64) {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = Cluster::start_with(env!("CARGO_BIN_EXE_ha-node").into(), MEMBERS).await;
    c.healthy().await;
    let writes = Arc::new(Writes {
        acked: Mutex::new(BTreeMap::new()),
        gate: tokio::sync::RwLock::new(()),
        stop: AtomicBool::new(false),
        failed: AtomicU64::new(0),
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(WRITE_TIMEOUT_MS + 3_000))
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");
    let writers: Vec<_> = (1..=MEMBERS)
        .map(|id| {
            tokio::spawn(writer(
                writes.clone(),
                client.clone(),
                c.http[&id],
                id,
                seed,
            ))
        })
        .collect();

    let mut leader_kills = 0;
    for cycle in 1..=cycles {
        // Writes flow through a healthy group first: at least one new
        // acknowledgement (writes continue after every restart).
        let before = writes.acked.lock().len();
        let deadline = Instant::now() + PATIENCE;
        while writes.acked.lock().len() == before {
            assert!(
                Instant::now() < deadline,
                "cycle {cycle} (seed {seed}): no write acknowledged within {PATIENCE:?}\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..300))).await;

        // The leader about half of the time, else any member (the leader
        // included).
        let leader = leader_seen_by(&c, rng.gen_range(1..=MEMBERS)).await;
        let victim = match leader {
            Some(l) if rng.gen_bool(0.5) => l,
            _ => rng.gen_range(1..=MEMBERS),
        };
        if Some(victim) == leader {
            leader_kills += 1;
        }
        c.kill(victim);
        // The others keep taking writes meanwhile.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..600))).await;
        c.spawn(victim);
        c.healthy().await;

        // Quiesce: no write in flight while the members are compared.
        let pause = writes.gate.write().await;
        let acked = writes.acked.lock().clone();
        c.check_prefix("c/", &acked).await;
        let applied = c.assert_same_state().await;
        drop(pause);
        println!(
            "cycle {cycle}/{cycles}: killed {victim}{} -> {} acknowledged writes on every member, same state at applied index {applied} ({:.0?})",
            if Some(victim) == leader {
                " (leader)"
            } else {
                ""
            },
            acked.len(),
            started.elapsed()
        );
    }

    writes.stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer task");
    }
    let acked = writes.acked.lock().clone();
    c.check_prefix("c/", &acked).await;
    c.assert_same_state().await;
    println!(
        "{cycles} cycles ({leader_kills} leader kills), {} acknowledged writes, {} failed or unknown, in {:.1?}",
        acked.len(),
        writes.failed.load(Ordering::Relaxed),
        started.elapsed()
    );
    assert!(
        cycles < 4 || leader_kills > 0,
        "seed {seed}: the leader was never killed in {cycles} cycles"
    );
}
