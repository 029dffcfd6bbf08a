//! `ha-bench engine`: the consensus engine alone — memory log and
//! transport, a state machine that does nothing — under closed-loop
//! clients.

use std::time::Duration;

use ha_core::{Config, NodeId};
use ha_raft::MemNetwork;
use ha_storage::{MemLogStore, MemStateStore};

use super::common::{BenchResult, LeaderChanges, Load, leader_of, print_json, round1};
use crate::{NoopMachine, start_mem_member};

/// Arguments of `ha-bench engine`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Members in the group.
    #[arg(long, default_value_t = 3)]
    pub members: u64,
    /// Concurrent clients, each with one proposal in flight.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Measured seconds (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Command size in bytes.
    #[arg(long, default_value_t = 128)]
    pub value_size: usize,
    /// Propose through every member (followers forward) instead of
    /// only the leader.
    #[arg(long)]
    pub via_all: bool,
}

/// Runs the benchmark.
///
/// # Errors
/// When the group cannot start, elect a leader or shut down.
pub async fn run(args: Args) -> BenchResult<()> {
    let Args {
        members,
        clients,
        seconds,
        value_size,
        via_all,
    } = args;
    let ids: Vec<NodeId> = (1..=members).map(NodeId).collect();
    let network = MemNetwork::new();
    let mut nodes = Vec::new();
    for &id in &ids {
        let config = Config::new(id, ids.clone());
        nodes.push(
            start_mem_member(
                config,
                &network,
                MemLogStore::new(),
                MemStateStore::new(),
                NoopMachine::default(),
            )
            .await?,
        );
    }
    let leader_node = leader_of(&nodes, Duration::from_secs(10)).await?;
    let leader_id = leader_node.id();
    let changes = LeaderChanges::watch(&nodes[0]).await;

    let targets = if via_all {
        nodes.clone()
    } else {
        vec![leader_node.clone()]
    };
    // The leader's counters are read around the whole run, warm-up included.
    let before = leader_node.metrics();
    eprintln!(
        "engine: {members} members, {clients} clients, {value_size}-byte commands, {seconds}s (leader {leader_id})"
    );
    let main = Load {
        measure: Duration::from_secs(seconds),
        ..Load::fixed(targets, clients, value_size)
    }
    .run(&mut |_| {})
    .await;
    let after = leader_node.metrics();
    let single = Load {
        warmup: Duration::from_millis(200),
        measure: Duration::from_secs(seconds.clamp(1, 3)),
        ..Load::fixed(vec![leader_node.clone()], 1, value_size)
    }
    .run(&mut |_| {})
    .await;

    let ops_per_sec = main.ops_per_sec();
    let syncs = after.syncs.saturating_sub(before.syncs).max(1);
    let entries = after
        .entries_persisted
        .saturating_sub(before.entries_persisted);
    let entries_per_sync = entries as f64 / syncs as f64;
    let p50 = main.hist.value_at_quantile(0.50);
    let p99 = main.hist.value_at_quantile(0.99);
    let single_p50 = single.hist.value_at_quantile(0.50);

    let leader_changes = changes.finish();
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
    print_json(&[
        ("bench", serde_json::json!("engine")),
        ("clients", serde_json::json!(clients)),
        (
            "entries_per_sync",
            serde_json::json!(round1(entries_per_sync)),
        ),
        ("errors", serde_json::json!(main.errors)),
        ("leader_changes", serde_json::json!(leader_changes)),
        ("members", serde_json::json!(members)),
        ("ops_per_sec", serde_json::json!(ops_per_sec.round() as u64)),
        ("p50_us", serde_json::json!(p50)),
        ("p99_us", serde_json::json!(p99)),
        ("seconds", serde_json::json!(seconds)),
        ("single_client_p50_us", serde_json::json!(single_p50)),
        ("value_size", serde_json::json!(value_size)),
    ]);
    Ok(())
}
