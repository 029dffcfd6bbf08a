//! `ha-bench kv --workload watch`: what idle watchers cost the writes, and
//! how fast a change reaches a watcher.
//!
//! Closed-loop clients put random keys (RocksDB, fsync on) through three
//! phases of equal total length: a quarter with no watcher at all, half
//! with `--watchers` idle watchers on the leader (half on keys, half on
//! prefixes, none written by the load) plus 100 watchers on written keys
//! spread over the members, and a last quarter with no watcher again. The
//! two watcher-free quarters give `put_ops_per_sec_0` (so slow drift of
//! the disk counts against neither side). Each value carries its put's
//! send time; a latency watcher records put → event received.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ha_core::{Error, KvClient, KvOptions, PutRequest, WatchRequest, WatchStream};
use hdrhistogram::Histogram;
use std::sync::Mutex;

use crate::bench_kv::{KvArgs, Rng, key, start_group};

/// Keys the latency watchers watch: the first of the load's keys.
const LATENCY_WATCHERS: u64 = 100;

fn stamped_value(base: Instant, size: usize) -> Vec<u8> {
    let mut v = format!("{:020}", base.elapsed().as_nanos()).into_bytes();
    v.resize(size.max(20), b'v');
    v
}

fn sent_at(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value.get(..20)?).ok()?.parse().ok()
}

/// Runs the benchmark and prints its figures; the last line is JSON.
///
/// # Errors
/// When the storage or the group cannot be set up, or a watch cannot be
/// opened.
pub async fn run(args: &KvArgs) -> crate::bench::BenchResult<()> {
    let group = start_group(args.members, &args.dir).await?;
    let nodes = &group.nodes;
    let keys = args.keys.max(LATENCY_WATCHERS);
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..args.clients {
        let kv = nodes[c % nodes.len()].clone();
        let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
        let size = args.value_size;
        clients.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
            while !stop.load(Ordering::Relaxed) {
                let k = key(rng.next() % keys);
                let put = PutRequest::new(k, stamped_value(base, size));
                match kv.put(put, KvOptions::default()).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // warm-up
    let phase = Duration::from_secs(args.seconds.max(4)) / 4;
    let measure = |d: Duration| {
        let done = done.clone();
        async move {
            let (n0, t0) = (done.load(Ordering::Relaxed), Instant::now());
            tokio::time::sleep(d).await;
            (done.load(Ordering::Relaxed) - n0, t0.elapsed())
        }
    };

    let (ops_a, time_a) = measure(phase).await;

    // Idle watchers, all on the leader (where they cost the most).
    let leader = nodes
        .iter()
        .position(|n| n.node().leader().leader == Some(n.node().id()))
        .unwrap_or(0);
    let setup = Instant::now();
    let mut idle: Vec<WatchStream> = Vec::with_capacity(args.watchers);
    for i in 0..args.watchers {
        let request = if i % 2 == 0 {
            WatchRequest::key(format!("idle/key/{i}"))
        } else {
            WatchRequest::prefix(format!("idle/dir/{i}/"))
        };
        idle.push(nodes[leader].watch(request).await?);
    }
    let setup = setup.elapsed();
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let recording = Arc::new(AtomicBool::new(true));
    let cancelled = Arc::new(AtomicU64::new(0));
    let mut watchers = Vec::new();
    for i in 0..LATENCY_WATCHERS {
        let kv = nodes[i as usize % nodes.len()].clone();
        let (latency, recording, cancelled) =
            (latency.clone(), recording.clone(), cancelled.clone());
        let mut w = kv.watch(WatchRequest::key(key(i))).await?;
        watchers.push(tokio::spawn(async move {
            while recording.load(Ordering::Relaxed) {
                let item = tokio::time::timeout(Duration::from_millis(200), w.next()).await;
                match item {
                    Err(_) => continue,
                    Ok(None) => return,
                    Ok(Some(Ok(r))) => {
                        let now = base.elapsed().as_nanos() as u64;
                        let mut h = latency.lock().unwrap_or_else(|e| e.into_inner());
                        for e in &r.events {
                            if let Some(sent) = sent_at(&e.kv.value) {
                                let _ = h.record((now.saturating_sub(sent) / 1000).max(1));
                            }
                        }
                    }
                    Ok(Some(Err(Error::WatchCancelled {
                        resume_revision, ..
                    }))) => {
                        cancelled.fetch_add(1, Ordering::Relaxed);
                        let again = WatchRequest::key(key(i)).from_revision(resume_revision);
                        match kv.watch(again).await {
                            Ok(n) => w = n,
                            Err(_) => return,
                        }
                    }
                    Ok(Some(Err(_))) => return,
                }
            }
        }));
    }
    let hosted = nodes[leader].watchers();
    let (ops_b, time_b) = measure(2 * phase).await;
    recording.store(false, Ordering::Relaxed);
    for w in watchers {
        w.await?;
    }
    drop(idle);

    let (ops_c, time_c) = measure(phase).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    for n in nodes {
        n.shutdown().await?;
    }

    let rate_0 = (ops_a + ops_c) as f64 / (time_a + time_c).as_secs_f64();
    let rate_w = ops_b as f64 / time_b.as_secs_f64();
    let cost = (1.0 - rate_w / rate_0) * 100.0;
    let h = latency.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "kv watch: {} members, {} clients, {}-byte values, {} keys, RocksDB with fsync",
        args.members, args.clients, args.value_size, keys
    );
    println!(
        "  puts, no watchers      {rate_0:.0}/s ({} ops in {:.1}s, before and after)",
        ops_a + ops_c,
        (time_a + time_c).as_secs_f64()
    );
    println!(
        "  puts, {} idle + {LATENCY_WATCHERS}   {rate_w:.0}/s ({ops_b} ops in {:.1}s; {hosted} watchers on the leader, set up in {} ms)",
        args.watchers,
        time_b.as_secs_f64(),
        setup.as_millis()
    );
    println!("  cost of the watchers   {cost:.1}% of put throughput");
    println!(
        "  delivery latency       p50 {} us, p99 {} us, max {} us ({} events, {} slow-consumer cancels)",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        h.len(),
        cancelled.load(Ordering::Relaxed)
    );
    println!(
        "  errors                 {}",
        errors.load(Ordering::Relaxed)
    );
    println!(
        "{{\"bench\":\"watch\",\"watchers\":{},\"delivery_p99_us\":{},\"put_ops_per_sec_0\":{},\"put_ops_per_sec_10k\":{}}}",
        args.watchers,
        h.value_at_quantile(0.99),
        rate_0.round() as u64,
        rate_w.round() as u64,
    );
    Ok(())
}
