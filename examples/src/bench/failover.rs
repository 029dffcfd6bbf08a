//! `ha-bench failover`: how long writes stop when the leader dies.
//!
//! Starts `--members` ha-node processes on loopback ([`crate::procs`]; the
//! `ha-node` binary next to `ha-bench`, default settings, so default
//! election timing), keeps `--clients` closed-loop writers putting through
//! every member over HTTP, and each round SIGKILLs the leader. The
//! figure of a round is the time from the kill until the first write that
//! was SENT after the kill is acknowledged: a write acknowledged after the
//! kill but sent before it may have committed before it, so it does not
//! count. The killed member is then restarted, and the next round starts
//! once every member is healthy again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::json;

use super::common::{BenchResult, histogram, print_json};
use crate::procs::Cluster;

/// Arguments of `ha-bench failover`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Members (ha-node processes).
    #[arg(long, default_value_t = 3)]
    pub members: u64,
    /// Leader kills.
    #[arg(long, default_value_t = 20)]
    pub rounds: u64,
    /// Concurrent writers, spread over the members.
    #[arg(long, default_value_t = 12)]
    pub clients: u64,
    /// Per-write deadline (`timeout_ms`), milliseconds.
    #[arg(long, default_value_t = 3_000)]
    pub write_timeout_ms: u64,
    /// Quiet time after a restarted member is healthy, before the next
    /// kill, milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub settle_ms: u64,
}

/// Acknowledged writes: `(sent, acknowledged)` instants, in the order the
/// acknowledgements came.
type Acks = Arc<Mutex<Vec<(Instant, Instant)>>>;

async fn writer(
    client: reqwest::Client,
    url: String,
    client_id: u64,
    acks: Acks,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
) {
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let sent = Instant::now();
        let r = client
            .post(&url)
            .json(&json!({ "key": format!("failover/{client_id}"), "value": seq.to_string() }))
            .send()
            .await;
        if matches!(r, Ok(r) if r.status() == StatusCode::OK) {
            acks.lock().push((sent, Instant::now()));
        } else {
            failed.fetch_add(1, Ordering::Relaxed);
            // A dead member refuses at once: do not spin.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Runs the benchmark.
///
/// # Errors
/// Bad arguments, or a round in which no write was acknowledged.
pub async fn run(args: Args) -> BenchResult<()> {
    if args.members < 3 {
        return Err("--members must be at least 3 (a leader kill needs a majority left)".into());
    }
    if args.rounds == 0 || args.clients == 0 {
        return Err("--rounds and --clients must be at least 1".into());
    }
    let election_timeout = {
        let ids: Vec<ha_core::NodeId> = (1..=args.members).map(ha_core::NodeId).collect();
        ha_core::Config::new(ids[0], ids).election_timeout()
    };
    let mut c = Cluster::start(args.members).await;
    c.healthy().await;
    eprintln!(
        "{} members up (election timeout {election_timeout:?}); {} writers; {} rounds",
        args.members, args.clients, args.rounds
    );
    let acks: Acks = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.write_timeout_ms + 2_000))
        // Members restart on the same ports: no pooled connection to a
        // dead process.
        .pool_max_idle_per_host(0)
        .build()?;
    let ports: BTreeMap<u64, u16> = c.http.clone();
    let writers: Vec<_> = (0..args.clients)
        .map(|i| {
            let member = i % args.members + 1;
            let url = format!(
                "http://127.0.0.1:{}/v1/kv/put?encoding=utf8&timeout_ms={}",
                ports[&member], args.write_timeout_ms
            );
            tokio::spawn(writer(
                client.clone(),
                url,
                i,
                acks.clone(),
                stop.clone(),
                failed.clone(),
            ))
        })
        .collect();

    let mut hist = histogram();
    let mut figures = Vec::new();
    let mut acknowledged = 0;
    for round in 1..=args.rounds {
        c.healthy().await;
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
        // Asked again right before the kill: on a loaded machine the
        // leadership may have moved while settling.
        let leader = c.healthy().await;
        acknowledged += std::mem::take(&mut *acks.lock()).len();
        let killed = Instant::now();
        c.kill(leader);
        // The first write sent after the kill and acknowledged.
        let deadline = killed + Duration::from_secs(30);
        let took = loop {
            let first = acks
                .lock()
                .iter()
                .filter(|(sent, _)| *sent >= killed)
                .map(|(_, acked)| *acked)
                .min();
            if let Some(at) = first {
                break at - killed;
            }
            if Instant::now() > deadline {
                stop.store(true, Ordering::Relaxed);
                return Err(format!(
                    "round {round}: no write acknowledged within 30 s of killing leader {leader}"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let new_leader = c.healthy().await;
        println!(
            "round {round:>3}: killed leader {leader}, first write committed after {:>6.1} ms, new leader {new_leader}",
            took.as_secs_f64() * 1e3
        );
        hist.record(took.as_micros().max(1) as u64)?;
        figures.push(took);
        c.spawn(leader);
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    acknowledged += acks.lock().len();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    let max = figures.iter().max().copied().unwrap_or_default();
    println!(
        "failover over {} rounds: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (election timeout {} ms; {} writes acknowledged, {} failed)",
        args.rounds,
        ms(0.5),
        ms(0.99),
        max.as_secs_f64() * 1e3,
        election_timeout.as_millis(),
        acknowledged,
        failed.load(Ordering::Relaxed)
    );
    print_json(&[
        ("bench", json!("failover")),
        ("rounds", json!(args.rounds)),
        ("p50_ms", json!(ms(0.5).round() as u64)),
        ("p99_ms", json!(ms(0.99).round() as u64)),
        ("max_ms", json!((max.as_secs_f64() * 1e3).round() as u64)),
        (
            "election_timeout_ms",
            json!(election_timeout.as_millis() as u64),
        ),
    ]);
    Ok(())
}
