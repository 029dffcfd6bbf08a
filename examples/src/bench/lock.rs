//! `ha-bench lock`: the distributed mutex (`ha_discovery::Mutex`) on the
//! replicated KV (RocksDB, fsync on) — uncontended lock+unlock latency,
//! then `clients` closed-loop clients spread over every member contending
//! for one mutex: acquisitions per second, and the hand-off latency from
//! a holder's `unlock()` call to the next holder's `lock()` returning,
//! counted only when the two are on DIFFERENT members.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ha_discovery::{Mutex, Session};

use super::common::{BenchResult, LeaderChanges, histogram, print_json};

/// Arguments of `ha-bench lock`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Members in the group.
    #[arg(long, default_value_t = 3)]
    pub members: u64,
    /// Contending clients (each with its own session), spread over the
    /// members.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Measured seconds of contention (after a one-second warm-up).
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Uncontended lock+unlock cycles measured first.
    #[arg(long, default_value_t = 500)]
    pub uncontended: u64,
    /// Session TTL, seconds.
    #[arg(long, default_value_t = 10)]
    pub ttl: u64,
    /// Where the members' data directories go (a temporary directory
    /// inside it, removed afterwards).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
}

/// The last unlock: when it was called, and on which member.
type LastUnlock = Arc<parking_lot::Mutex<Option<(Instant, usize)>>>;

/// Runs the benchmark and prints its figures; the last line is JSON.
///
/// # Errors
/// When the storage or the group cannot be set up.
pub async fn run(args: Args) -> BenchResult<()> {
    let group = crate::bench_kv::start_group(args.members, &args.dir).await?;
    let nodes = &group.nodes;
    let leader = nodes[0]
        .node()
        .wait_for_leader(Duration::from_secs(10))
        .await?
        .leader
        .ok_or("no leader")?;
    let changes = LeaderChanges::watch(nodes[0].node()).await;
    let ttl = Duration::from_secs(args.ttl);

    // Uncontended: one client on a follower, lock then unlock.
    let follower = nodes
        .iter()
        .position(|n| n.node().id() != leader)
        .unwrap_or(0);
    let session = Session::builder(nodes[follower].clone())
        .ttl(ttl)
        .start()
        .await?;
    let mutex = Mutex::new(&session, "bench/uncontended");
    let mut alone = histogram();
    for _ in 0..args.uncontended {
        let t = Instant::now();
        mutex.lock().await?.unlock().await?;
        let _ = alone.record((t.elapsed().as_micros() as u64).max(1));
    }
    session.close().await?;

    // Contended.
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let acquired = Arc::new(AtomicU64::new(0));
    let last_unlock: LastUnlock = Arc::new(parking_lot::Mutex::new(None));
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let member = c % nodes.len();
        let session = Session::builder(nodes[member].clone())
            .ttl(ttl)
            .start()
            .await?;
        let (stop, measuring, acquired, last_unlock) = (
            stop.clone(),
            measuring.clone(),
            acquired.clone(),
            last_unlock.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mutex = Mutex::new(&session, "bench/contended");
            let mut handoffs = histogram();
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let guard = match mutex.lock().await {
                    Ok(g) => g,
                    Err(e) => {
                        errors += 1;
                        tracing::warn!(error = %e, "lock failed");
                        continue;
                    }
                };
                let now = Instant::now();
                let from = last_unlock.lock().take();
                if measuring.load(Ordering::Relaxed) {
                    acquired.fetch_add(1, Ordering::Relaxed);
                    if let Some((at, holder)) = from
                        && holder != member
                    {
                        let _ = handoffs.record((now.duration_since(at).as_micros() as u64).max(1));
                    }
                }
                *last_unlock.lock() = Some((Instant::now(), member));
                if guard.unlock().await.is_err() {
                    errors += 1;
                }
            }
            let _ = session.close().await;
            (handoffs, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let acquisitions = acquired.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut handoffs = histogram();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        handoffs.add(&h)?;
        errors += e;
    }
    let rate = acquisitions as f64 / elapsed.as_secs_f64();
    let leader_changes = changes.finish();
    for n in nodes {
        n.shutdown().await?;
    }

    println!(
        "lock: {} members, {} clients (own sessions, spread over the members), RocksDB with fsync",
        args.members, args.clients
    );
    println!(
        "  uncontended   lock+unlock on a follower, {} cycles: p50 {} us, p99 {} us",
        args.uncontended,
        alone.value_at_quantile(0.5),
        alone.value_at_quantile(0.99)
    );
    println!(
        "  contended     {acquisitions} acquisitions in {:.1}s: {rate:.0}/s ({errors} errors)",
        elapsed.as_secs_f64()
    );
    println!(
        "  hand-off      unlock() -> next lock() returns, other member: {} hand-offs, p50 {} us, p99 {} us, max {} us",
        handoffs.len(),
        handoffs.value_at_quantile(0.5),
        handoffs.value_at_quantile(0.99),
        handoffs.max()
    );
    println!("  leader changes {leader_changes}");
    print_json(&[
        ("bench", "lock".into()),
        ("clients", args.clients.into()),
        ("handoffs", handoffs.len().into()),
        ("acquires_per_sec", (rate.round() as u64).into()),
        ("handoff_p50_us", handoffs.value_at_quantile(0.5).into()),
        ("handoff_p99_us", handoffs.value_at_quantile(0.99).into()),
        ("members", args.members.into()),
        ("uncontended_p50_us", alone.value_at_quantile(0.5).into()),
        ("uncontended_p99_us", alone.value_at_quantile(0.99).into()),
        ("errors", errors.into()),
        ("leader_changes", leader_changes.into()),
    ]);
    Ok(())
}
