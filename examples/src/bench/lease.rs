//! `ha-bench lease`: leases on the replicated KV (RocksDB, fsync on) —
//! grant many leases, then closed-loop clients renew random ones through
//! every member in turn (followers forward to the leader), then the
//! renewals stop and the leader expires them all.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ha_core::{KvClient, KvOptions, LeaseGrantRequest, LeaseId};

use super::common::{BenchResult, LeaderChanges, histogram, print_json};

/// Arguments of `ha-bench lease`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Leases granted (and then renewed at random).
    #[arg(long, default_value_t = 10_000)]
    pub leases: u64,
    /// Members in the group.
    #[arg(long, default_value_t = 3)]
    pub members: u64,
    /// Concurrent clients, each with one call in flight.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Measured seconds of renewals (after a one-second warm-up).
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// TTL of every lease, seconds: long enough that none expires while
    /// the clients renew at random.
    #[arg(long, default_value_t = 600)]
    pub ttl: u64,
    /// Where the members' data directories go (a temporary directory
    /// inside it, removed afterwards).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
}

/// Runs the benchmark and prints its figures; the last line is JSON.
///
/// # Errors
/// When the storage or the group cannot be set up.
pub async fn run(args: Args) -> BenchResult<()> {
    let group = crate::bench_kv::start_group(args.members, &args.dir).await?;
    let nodes = &group.nodes;
    let changes = LeaderChanges::watch(nodes[0].node()).await;

    // Grant: `clients` grants in flight, through every member.
    let ttl = Duration::from_secs(args.ttl);
    let granted = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (kv, next, granted, n) = (
            nodes[c % nodes.len()].clone(),
            next.clone(),
            granted.clone(),
            args.leases,
        );
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                if let Ok(r) = kv
                    .lease_grant(LeaseGrantRequest::new(ttl), KvOptions::default())
                    .await
                {
                    granted.lock().await.push(r.id);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let grant_time = started.elapsed();
    let ids: Arc<Vec<LeaseId>> = Arc::new(std::mem::take(&mut *granted.lock().await));
    if ids.is_empty() {
        return Err("no lease was granted".into());
    }
    let grant_rate = ids.len() as f64 / grant_time.as_secs_f64();

    // Renew at random, closed loop.
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let kv = nodes[c % nodes.len()].clone();
        let (stop, measuring, done, ids) =
            (stop.clone(), measuring.clone(), done.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (c as u64 + 1);
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let id = ids[(x % ids.len() as u64) as usize];
                let t = Instant::now();
                let ok = kv
                    .lease_keep_alive_once(id, KvOptions::default())
                    .await
                    .is_ok();
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                        let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
                    } else {
                        errors += 1;
                    }
                }
            }
            (errors, hist)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let (renewed, elapsed) = (done.load(Ordering::Relaxed), start.elapsed());
    stop.store(true, Ordering::Relaxed);
    let mut hist = histogram();
    let mut errors = 0;
    for t in tasks {
        let (e, h) = t.await?;
        errors += e;
        hist.add(&h)?;
    }
    let rate = renewed as f64 / elapsed.as_secs_f64();

    // Expiry: a tenth as many leases at the minimum TTL, granted and left
    // alone; how long after the last one's TTL ran out the leader has
    // expired them all (the bound: an election timeout).
    let min = nodes[0].min_lease_ttl();
    let short_n = (args.leases / 10).max(1);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (kv, next) = (nodes[c % nodes.len()].clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut granted = 0u64;
            while next.fetch_add(1, Ordering::Relaxed) < short_n {
                if kv
                    .lease_grant(LeaseGrantRequest::new(min), KvOptions::default())
                    .await
                    .is_ok()
                {
                    granted += 1;
                }
            }
            granted
        }));
    }
    let mut short = 0;
    for t in tasks {
        short += t.await?;
    }
    let last_granted = Instant::now();
    let all_gone = loop {
        let left = nodes[0].leases(KvOptions::default()).await?.leases.len();
        if left <= ids.len() {
            break last_granted.elapsed();
        }
        if last_granted.elapsed() > Duration::from_secs(120) {
            return Err(
                format!("{} short leases still alive after 120 s", left - ids.len()).into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let late = all_gone.saturating_sub(min);
    let leader_changes = changes.finish();
    for n in nodes {
        n.shutdown().await?;
    }

    println!(
        "lease: {} members, {} clients, {} leases ({}s TTL), RocksDB with fsync",
        args.members,
        args.clients,
        ids.len(),
        args.ttl
    );
    println!(
        "  grants        {} in {:.1}s: {grant_rate:.0}/s",
        ids.len(),
        grant_time.as_secs_f64()
    );
    println!(
        "  keep-alives   {renewed} in {:.1}s: {rate:.0}/s ({errors} errors), {} of {} members forward",
        elapsed.as_secs_f64(),
        args.members - 1,
        args.members
    );
    println!(
        "  latency       p50 {} us, p99 {} us, max {} us",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max()
    );
    println!(
        "  expiry        {short} leases at the minimum TTL ({} ms): all gone {} ms after the last one's TTL ran out",
        min.as_millis(),
        late.as_millis()
    );
    println!("  leader changes {leader_changes}");
    print_json(&[
        ("bench", "lease".into()),
        ("leases", ids.len().into()),
        ("members", args.members.into()),
        ("clients", args.clients.into()),
        ("grant_ops_per_sec", (grant_rate.round() as u64).into()),
        ("keepalive_ops_per_sec", (rate.round() as u64).into()),
        ("p50_us", hist.value_at_quantile(0.5).into()),
        ("p99_us", hist.value_at_quantile(0.99).into()),
        ("expiry_late_ms", (late.as_millis() as u64).into()),
        ("leader_changes", leader_changes.into()),
    ]);
    Ok(())
}
