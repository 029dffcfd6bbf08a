//! ha-bench: every ha benchmark, as subcommands. Each prints figures for a
//! person and, as its last line, one JSON object for machines. The
//! benchmarks themselves live in `ha_examples::bench`, one module each;
//! this file only parses the command line and dispatches.
//!
//! ```text
//! cargo run --release --bin ha-bench -- engine --members 3 --clients 64 --seconds 10
//! ```

use clap::{Parser, Subcommand};
use ha_examples::bench::{self, BenchResult};

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
    Engine(bench::engine::Args),
    /// Membership changes under load: every few seconds one cycle (add a
    /// learner, promote it, remove another voter); reports each change's
    /// stall, the longest gap between write completions while it ran.
    Membership(bench::membership::Args),
    /// The group on RocksDB with real fsync: throughput (whole run and
    /// second half), latency, WAL syncs, entries per sync, write
    /// amplification, leader changes.
    Storage(bench::storage::Args),
    /// Restart time of a member holding many keys (RocksDB).
    Restart(bench::restart::Args),
    /// The raw append + fdatasync rate of the disk under a directory.
    Fsync(bench::fsync::Args),
    /// The replicated KV on RocksDB with fsync (see `ha_examples::bench_kv`).
    Kv(ha_examples::bench_kv::KvArgs),
    /// Leases: grant throughput, keep-alive throughput through every
    /// member (followers forward to the leader), and expiry time.
    Lease(bench::lease::Args),
    /// The distributed mutex (ha-discovery): uncontended lock+unlock,
    /// acquisitions/s under contention, and hand-off latency between
    /// members.
    Lock(bench::lock::Args),
    /// Service discovery (ha-discovery): registration rate, register →
    /// seen on another member, instance death → removal everywhere.
    Discovery(bench::discovery::Args),
    /// Failover of ha-node processes: kills the leader each round
    /// (SIGKILL) under continuous writes and restarts it; reports the time
    /// from the kill to the first write committed afterwards.
    Failover(bench::failover::Args),
    /// ha-node processes under a seeded schedule of faults (kills,
    /// pauses, partitions; one every 10–15 s, a third on the leader):
    /// availability, recovery time per fault kind, acknowledged writes
    /// lost, and the client history checked for linearizability.
    Chaos(bench::chaos::Args),
    /// What idle members cost: resident memory, CPU and threads per
    /// member, as processes and inside one process, before and after
    /// writing 100,000 keys.
    Footprint(bench::footprint::Args),

    /// The config center (ha-discovery): per publish, the time until the
    /// LAST of many version watchers (spread over the members) has it.
    Config(bench::config::Args),
}

fn main() -> BenchResult<()> {
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
    rt.block_on(async {
        match cli.bench {
            Bench::Engine(args) => bench::engine::run(args).await,
            Bench::Membership(args) => bench::membership::run(args).await,
            Bench::Storage(args) => bench::storage::run(args).await,
            Bench::Restart(args) => bench::restart::run(args).await,
            Bench::Fsync(args) => bench::fsync::run(args).await,
            Bench::Lease(args) => bench::lease::run(args).await,
            Bench::Lock(args) => bench::lock::run(args).await,
            Bench::Discovery(args) => bench::discovery::run(args).await,

            Bench::Config(args) => bench::config::run(args).await,
            Bench::Kv(args) => ha_examples::bench_kv::run(args).await,
            Bench::Failover(args) => bench::failover::run(args).await,
            Bench::Chaos(args) => bench::chaos::run(args).await,
            Bench::Footprint(args) => bench::footprint::run(args).await,
        }
    })
}
