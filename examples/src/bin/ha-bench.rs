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
use ha_raft::{MemNetwork, MemberChange, Node};
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
    /// Membership changes under load: every few seconds one cycle (add a
    /// learner, promote it, remove another voter); reports each change's
    /// stall, the longest gap between write completions while it ran.
    Membership {
        /// Voters in the group.
        #[arg(long, default_value_t = 3)]
        members: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Seconds between change cycles.
        #[arg(long, default_value_t = 3)]
        every: u64,
    },
    /// The replicated KV on RocksDB with fsync (see `ha_examples::bench_kv`).
    Kv(ha_examples::bench_kv::KvArgs),
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

async fn membership(
    members: u64,
    clients: usize,
    seconds: u64,
    every: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use ha_core::StartMode;
    let initial: Vec<NodeId> = (1..=members).map(NodeId).collect();
    let network = MemNetwork::new();
    let mut nodes: std::collections::BTreeMap<NodeId, Node> = Default::default();
    let start = |id: NodeId, initial: Vec<NodeId>, network: MemNetwork| async move {
        let config = Config {
            start_mode: if initial.contains(&id) {
                StartMode::Bootstrap
            } else {
                StartMode::Join
            },
            ..Config::new(id, initial)
        };
        start_mem_member(
            config,
            &network,
            MemLogStore::new(),
            MemStateStore::new(),
            NoopMachine::default(),
        )
        .await
    };
    for &id in &initial {
        nodes.insert(id, start(id, initial.clone(), network.clone()).await?);
    }
    nodes[&initial[0]]
        .wait_for_leader(Duration::from_secs(10))
        .await?;
    // Clients write through one member that is never removed; changes are
    // issued on whoever leads at the time.
    let writer_id = initial[0];
    let writer = nodes[&writer_id].clone();

    let completions = Arc::new(parking_lot_free::Completions::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (node, stop, completions) = (writer.clone(), stop.clone(), completions.clone());
        tasks.push(tokio::spawn(async move {
            let payload = Bytes::from_static(&[b'x'; 128]);
            while !stop.load(Ordering::Relaxed) {
                if node.propose(payload.clone()).await.is_ok() {
                    completions.record(Instant::now());
                }
            }
        }));
    }
    let t0 = Instant::now();
    let mut windows: Vec<(&'static str, Instant, Instant)> = Vec::new();
    let mut next_id = members + 1;
    eprintln!(
        "membership: {members} voters, {clients} clients, {seconds}s, a cycle every {every}s"
    );
    while t0.elapsed() + Duration::from_secs(every) <= Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(every)).await;
        let new = NodeId(next_id);
        next_id += 1;
        nodes.insert(new, start(new, initial.clone(), network.clone()).await?);
        let s = Instant::now();
        on_leader(
            &nodes,
            &writer,
            vec![MemberChange::AddLearner {
                id: new,
                address: Bytes::new(),
                promote_when_caught_up: false,
            }],
        )
        .await?;
        windows.push(("add-learner", s, Instant::now()));
        // Wait until the learner has caught up before promoting it.
        let caught_up = Instant::now();
        while nodes[&new].status().applied + 100 < writer.status().commit
            && caught_up.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let s = Instant::now();
        on_leader(&nodes, &writer, vec![MemberChange::Promote(new)]).await?;
        windows.push(("promote", s, Instant::now()));
        let current = writer.leader().leader;
        let victim = writer
            .membership()
            .voters()
            .into_iter()
            .find(|&v| v != writer_id && v != new && Some(v) != current)
            .ok_or("no voter to remove")?;
        let s = Instant::now();
        on_leader(&nodes, &writer, vec![MemberChange::Remove(victim)]).await?;
        windows.push(("remove", s, Instant::now()));
        if let Some(n) = nodes.remove(&victim) {
            n.shutdown().await?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let times = completions.sorted();
    let mut stalls_ms: Vec<f64> = Vec::new();
    for (kind, s, e) in &windows {
        // The longest gap between consecutive completions that overlaps the
        // change's window.
        let mut worst = Duration::ZERO;
        let from = times.partition_point(|t| t < s).saturating_sub(1);
        let to = (times.partition_point(|t| t <= e) + 1).min(times.len());
        for w in times[from..to].windows(2) {
            worst = worst.max(w[1] - w[0]);
        }
        let ms = worst.as_secs_f64() * 1000.0;
        println!(
            "{kind:<12} took {:>8.2} ms, stall {ms:>8.2} ms",
            (*e - *s).as_secs_f64() * 1000.0
        );
        stalls_ms.push(ms);
    }
    stalls_ms.sort_by(f64::total_cmp);
    let p99 = stalls_ms
        .get(((stalls_ms.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0.0);
    let max = stalls_ms.last().copied().unwrap_or(0.0);
    let ops = times.len() as f64 / t0.elapsed().as_secs_f64();
    for n in nodes.values() {
        n.shutdown().await?;
    }
    println!(
        "changes {}, stall p99 {p99:.2} ms, stall max {max:.2} ms, {ops:.0} writes/s",
        windows.len()
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "membership",
            "members": members,
            "clients": clients,
            "seconds": seconds,
            "changes": windows.len(),
            "stall_p99_ms": (p99 * 100.0).round() / 100.0,
            "stall_max_ms": (max * 100.0).round() / 100.0,
            "writes_per_sec": ops.round() as u64,
        })
    );
    Ok(())
}

/// Runs a membership change on the current leader, following leadership.
async fn on_leader(
    nodes: &std::collections::BTreeMap<NodeId, Node>,
    writer: &Node,
    changes: Vec<MemberChange>,
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = writer.leader().leader.and_then(|l| nodes.get(&l));
        let result = match leader {
            Some(l) => l.change_membership(changes.clone(), false).await,
            None => Err(ha_core::Error::NotLeader { leader_hint: None }),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(ha_core::Error::NotLeader { .. })
            | Err(ha_core::Error::MembershipChangeInProgress)
            | Err(ha_core::Error::UnsafeMembershipChange { .. })
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

mod parking_lot_free {
    use std::sync::Mutex;
    use std::time::Instant;

    /// Completion times of all clients.
    #[derive(Default)]
    pub(super) struct Completions(Mutex<Vec<Instant>>);

    impl Completions {
        pub(super) fn record(&self, t: Instant) {
            if let Ok(mut v) = self.0.lock() {
                v.push(t);
            }
        }

        pub(super) fn sorted(&self) -> Vec<Instant> {
            let mut v = self.0.lock().map(|v| v.clone()).unwrap_or_default();
            v.sort();
            v
        }
    }
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
        Bench::Membership {
            members,
            clients,
            seconds,
            every,
        } => rt.block_on(membership(members, clients, seconds, every)),
        Bench::Kv(args) => rt.block_on(ha_examples::bench_kv::run(args)),
    }
}
