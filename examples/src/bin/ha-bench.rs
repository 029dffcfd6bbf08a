//! ha-bench: every ha benchmark, as subcommands. Each prints figures for a
//! person and, as its last line, one JSON object for machines.
//!
//! ```text
//! cargo run --release --bin ha-bench -- engine --members 3 --clients 64 --seconds 10
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use ha_core::{Config, NodeId};
use ha_examples::{NoopMachine, start_mem_member};
use ha_raft::{MemNetwork, Node};
use ha_storage::{MemLogStore, MemStateStore};
use hdrhistogram::Histogram;

#[derive(Parser)]
#[command(name = "ha-bench", about = "ha benchmarks")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// The consensus engine alone: memory log and transport, a state
    /// machine that does nothing; closed-loop clients proposing through
    /// the leader.
    Engine {
        /// Members in the group.
        #[arg(long, default_value_t = 3)]
        members: u64,
        /// Concurrent clients, each with one proposal in flight.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Measured seconds (after a one-second warm-up).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Command size in bytes.
        #[arg(long, default_value_t = 128)]
        value_size: usize,
        /// Propose through every member (followers forward) instead of
        /// only the leader.
        #[arg(long)]
        via_all: bool,
    },
}

struct RunResult {
    ops: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    errors: u64,
}

async fn run_clients(
    targets: Vec<Node>,
    clients: usize,
    value_size: usize,
    warmup: Duration,
    measure: Duration,
) -> RunResult {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let node = targets[c % targets.len()].clone();
        let (stop, measuring) = (stop.clone(), measuring.clone());
        let payload = Bytes::from(vec![b'x'; value_size]);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds");
            let (mut ops, mut errors) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = node.propose(payload.clone()).await;
                let us = t.elapsed().as_micros() as u64;
                if measuring.load(Ordering::Relaxed) {
                    match r {
                        Ok(_) => {
                            ops += 1;
                            let _ = hist.record(us.max(1));
                        }
                        Err(_) => errors += 1,
                    }
                }
            }
            (ops, errors, hist)
        }));
    }
    tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(measure).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut total = RunResult {
        ops: 0,
        elapsed,
        hist: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
        errors: 0,
    };
    for t in tasks {
        if let Ok((ops, errors, hist)) = t.await {
            total.ops += ops;
            total.errors += errors;
            let _ = total.hist.add(&hist);
        }
    }
    total
}

async fn engine(
    members: u64,
    clients: usize,
    seconds: u64,
    value_size: usize,
    via_all: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let ids: Vec<NodeId> = (1..=members).map(NodeId).collect();
    let network = MemNetwork::new();
    let mut nodes = Vec::new();
    let mut logs = Vec::new();
    for &id in &ids {
        let log = MemLogStore::new();
        logs.push(log.clone());
        let config = Config::new(id, ids.clone());
        nodes.push(
            start_mem_member(
                config,
                &network,
                log,
                MemStateStore::new(),
                NoopMachine::default(),
            )
            .await?,
        );
    }
    let leader = nodes[0].wait_for_leader(Duration::from_secs(10)).await?;
    let leader_id = leader.leader.ok_or("no leader")?;
    let leader_node = nodes
        .iter()
        .find(|n| n.id() == leader_id)
        .cloned()
        .ok_or("leader not among members")?;

    // Count leader changes during the run from one member's stream.
    let mut changes = nodes[0].leader_changes();
    let _ = changes.next().await;
    let seen_changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = {
        let seen = seen_changes.clone();
        tokio::spawn(async move {
            let mut last = leader.leader;
            while let Some(l) = changes.next().await {
                if l.leader.is_some() && l.leader != last {
                    seen.fetch_add(1, Ordering::Relaxed);
                    last = l.leader;
                }
            }
        })
    };

    let targets = if via_all {
        nodes.clone()
    } else {
        vec![leader_node.clone()]
    };
    let before = leader_node.metrics();
    eprintln!(
        "engine: {members} members, {clients} clients, {value_size}-byte commands, {seconds}s (leader {leader_id})"
    );
    let main = run_clients(
        targets.clone(),
        clients,
        value_size,
        Duration::from_secs(1),
        Duration::from_secs(seconds),
    )
    .await;
    let after = leader_node.metrics();
    let single = run_clients(
        vec![leader_node.clone()],
        1,
        value_size,
        Duration::from_millis(200),
        Duration::from_secs(seconds.clamp(1, 3)),
    )
    .await;

    let ops_per_sec = main.ops as f64 / main.elapsed.as_secs_f64();
    let syncs = after.syncs.saturating_sub(before.syncs).max(1);
    let entries = after
        .entries_persisted
        .saturating_sub(before.entries_persisted);
    // The leader's log writes, including the warm-up's tail and the single
    // client run are excluded by taking the counters around the main run.
    let entries_per_sync = entries as f64 / syncs as f64;
    let p50 = main.hist.value_at_quantile(0.50);
    let p99 = main.hist.value_at_quantile(0.99);
    let single_p50 = single.hist.value_at_quantile(0.50);

    let leader_changes = seen_changes.load(Ordering::Relaxed);
    counter.abort();
    for n in &nodes {
        n.shutdown().await?;
    }

    println!(
        "throughput        {ops_per_sec:>12.0} proposals/s ({} ok, {} errors)",
        main.ops, main.errors
    );
    println!("latency p50       {p50:>12} us");
    println!("latency p99       {p99:>12} us");
    println!("single-client p50 {single_p50:>12} us");
    println!("entries per sync  {entries_per_sync:>12.1}");
    println!("leader changes    {leader_changes:>12}");
    println!(
        "{}",
        serde_json::json!({
            "bench": "engine",
            "members": members,
            "clients": clients,
            "value_size": value_size,
            "seconds": seconds,
            "ops_per_sec": ops_per_sec.round() as u64,
            "p50_us": p50,
            "p99_us": p99,
            "single_client_p50_us": single_p50,
            "entries_per_sync": (entries_per_sync * 10.0).round() / 10.0,
            "leader_changes": leader_changes,
            "errors": main.errors,
        })
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.bench {
        Bench::Engine {
            members,
            clients,
            seconds,
            value_size,
            via_all,
        } => rt.block_on(engine(members, clients, seconds, value_size, via_all)),
    }
}
