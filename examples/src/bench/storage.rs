//! `ha-bench storage`: the group on RocksDB with real fsync — members in
//! one process, each on its own data directory — under closed-loop clients
//! whose proposals carry values into a state machine that writes them into
//! the state store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::common::{
    BenchResult, LeaderChanges, Load, Phase, print_json, process_write_bytes, round1, round2,
};
use super::rocks::RocksGroup;
use super::store_machine::StoreMachine;
use ha_storage::RocksStateStore;

/// Arguments of `ha-bench storage`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Members in the group.
    #[arg(long, default_value_t = 3)]
    pub members: u64,
    /// Concurrent clients, each with one proposal in flight.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Measured seconds (after a one-second warm-up). Storage-bound runs
    /// need a minute or more to include RocksDB's flushes and compactions.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Value bytes per proposal (each under its own 12-byte key).
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Directory for the members' data directories (a temporary directory
    /// is created and removed there). Default: the system's temporary
    /// directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Use the conservative timing preset (1-1.2 s elections) instead of
    /// the LAN preset (250-300 ms).
    #[arg(long)]
    pub conservative: bool,
}

/// Counters read at the start and the end of the measured window.
#[derive(Clone, Copy, Default)]
struct Counters {
    leader_wal_syncs: u64,
    leader_entries: u64,
    all_wal_syncs: u64,
    disk_bytes: Option<u64>,
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
        dir,
        conservative,
    } = args;
    let preset = if conservative {
        ha_core::Config::conservative
    } else {
        ha_core::Config::new
    };
    let group = RocksGroup::start(members, dir.as_deref(), preset).await?;
    let leader = group.leader().await?;
    let leader_id = leader.id();
    let changes = LeaderChanges::watch(&leader).await;
    let start_term = leader.status().term;
    eprintln!(
        "storage: {members} members on RocksDB under {}, {clients} clients, {value_size}-byte values, {seconds}s (leader {leader_id})",
        group.dir().display()
    );

    // Every proposal writes a new key: client (4 bytes) ++ sequence (8).
    let value = vec![b'v'; value_size];
    let command = Arc::new(move |client: usize, seq: u64| {
        let mut key = [0u8; 12];
        key[..4].copy_from_slice(&(client as u32).to_be_bytes());
        key[4..].copy_from_slice(&seq.to_be_bytes());
        StoreMachine::<RocksStateStore>::command([(&key[..], &value[..])])
    });
    let leader_log = group
        .logs
        .get(&leader_id)
        .cloned()
        .ok_or("the leader's log store is missing")?;
    let logs: Vec<_> = group.logs.values().cloned().collect();
    let read = || Counters {
        leader_wal_syncs: leader_log.wal_syncs(),
        leader_entries: leader_log.stats().entries_persisted,
        all_wal_syncs: logs.iter().map(|l| l.wal_syncs()).sum(),
        disk_bytes: process_write_bytes(),
    };
    let (mut before, mut after) = (Counters::default(), Counters::default());
    let result = Load {
        targets: vec![leader.clone()],
        clients,
        command,
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs(seconds),
        progress_every: Some(Duration::from_secs(10)),
    }
    .run(&mut |phase| match phase {
        Phase::MeasureStart => before = read(),
        Phase::MeasureEnd => after = read(),
    })
    .await;

    let secs = result.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let ops_per_sec = result.ops_per_sec();
    let ops_2nd_half = result.ops_per_sec_second_half();
    let (p50, p99) = (
        result.hist.value_at_quantile(0.50),
        result.hist.value_at_quantile(0.99),
    );
    let leader_syncs = after
        .leader_wal_syncs
        .saturating_sub(before.leader_wal_syncs);
    let syncs_per_sec = leader_syncs as f64 / secs;
    let all_syncs_per_sec = after.all_wal_syncs.saturating_sub(before.all_wal_syncs) as f64 / secs;
    let entries = after.leader_entries.saturating_sub(before.leader_entries);
    let entries_per_sync = entries as f64 / leader_syncs.max(1) as f64;
    // Every member stores a copy: amplification per replica.
    let payload = result.ops as f64 * value_size as f64 * members as f64;
    let disk = match (before.disk_bytes, after.disk_bytes) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let write_amp = disk.map(|d| d as f64 / payload.max(1.0));
    let leader_changes = changes.finish();
    let term_changes = leader.status().term.saturating_sub(start_term);
    // A raft thread that could not keep time (a starved CPU) explains an
    // election.
    let max_tick_lag_ms = group
        .nodes
        .values()
        .map(|n| n.metrics().max_tick_lag_us)
        .max()
        .unwrap_or(0) as f64
        / 1000.0;
    group.shutdown().await?;

    println!(
        "throughput         {ops_per_sec:>12.0} proposals/s ({} ok, {} errors)",
        result.ops, result.errors
    );
    println!("  second half      {ops_2nd_half:>12.0} proposals/s");
    println!("latency p50        {p50:>12} us");
    println!("latency p99        {p99:>12} us");
    println!("leader WAL syncs   {syncs_per_sec:>12.0} /s (rocksdb.wal.synced)");
    println!("all members' syncs {all_syncs_per_sec:>12.0} /s");
    println!("entries per sync   {entries_per_sync:>12.1} (leader)");
    match (disk, write_amp) {
        (Some(d), Some(w)) => println!(
            "write amplification{w:>12.2} ({:.0} MB written by the process, /proc/self/io write_bytes, per {:.0} MB of values x {members} replicas)",
            d as f64 / 1e6,
            result.ops as f64 * value_size as f64 / 1e6
        ),
        _ => println!("write amplification   unknown (/proc/self/io is not available)"),
    }
    println!("leader changes     {leader_changes:>12} (term moved by {term_changes})");
    println!("worst tick lag     {max_tick_lag_ms:>12.1} ms (any member)");
    print_json(&[
        ("bench", serde_json::json!("storage")),
        ("members", serde_json::json!(members)),
        ("clients", serde_json::json!(clients)),
        ("seconds", serde_json::json!(seconds)),
        ("ops_per_sec", serde_json::json!(ops_per_sec.round() as u64)),
        (
            "ops_per_sec_2nd_half",
            serde_json::json!(ops_2nd_half.round() as u64),
        ),
        ("p50_us", serde_json::json!(p50)),
        ("p99_us", serde_json::json!(p99)),
        ("syncs_per_sec", serde_json::json!(round1(syncs_per_sec))),
        (
            "entries_per_sync",
            serde_json::json!(round1(entries_per_sync)),
        ),
        ("leader_changes", serde_json::json!(leader_changes)),
        ("value_size", serde_json::json!(value_size)),
        (
            "max_tick_lag_ms",
            serde_json::json!(round1(max_tick_lag_ms)),
        ),
        ("conservative", serde_json::json!(conservative)),
        ("write_amp", serde_json::json!(write_amp.map(round2))),
        (
            "disk_mb_written",
            serde_json::json!(disk.map(|d| round1(d as f64 / 1e6))),
        ),
        ("errors", serde_json::json!(result.errors)),
    ]);
    Ok(())
}
