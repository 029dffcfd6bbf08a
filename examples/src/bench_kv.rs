//! `ha-bench kv`: the replicated KV end to end — a group of members in
//! this process on RocksDB (fsync on), closed-loop clients calling
//! [`KvClient`] on every member in turn.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ha_core::{
    Compare, CompareOp, CompareTarget, Config, KeyRange, KvClient, KvOptions, NodeId, PutRequest,
    RangeRequest, TxnOp, TxnRequest,
};
use ha_raft::{KvConfig, KvNode, MemNetwork};
use ha_storage::{RocksEnv, StorageConfig};
use hdrhistogram::Histogram;

/// What the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Puts of random keys.
    Put,
    /// Linearizable gets of random (preloaded) keys.
    Get,
    /// Serializable gets (local reads).
    GetSerializable,
    /// Lease gets: linearizable, local on the leader while it holds its
    /// read lease (a ReadIndex round on followers).
    GetLease,
    /// Compare-and-put transactions (compare the key's mod revision, put).
    Txn,
    /// 80% linearizable gets, 20% puts.
    Mixed,
    /// Puts with 0 and then `--watchers` idle watchers on one member, plus
    /// 100 watchers on written keys for delivery latency (see
    /// [`crate::bench::kv_watch`]).
    Watch,
}

/// Arguments of `ha-bench kv`.
#[derive(Clone, Debug, clap::Args)]
pub struct KvArgs {
    /// The workload.
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    pub workload: Workload,
    /// Members in the group.
    #[arg(long, default_value_t = 3)]
    pub members: u64,
    /// Concurrent clients, each with one call in flight.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Measured seconds (after a one-second warm-up).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Distinct keys (preloaded for reads).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Where the members' data directories go (a temporary directory
    /// inside it, removed afterwards).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
    /// Idle watchers for `--workload watch` (half on keys, half on
    /// prefixes, none of them written).
    #[arg(long, default_value_t = 10_000)]
    pub watchers: usize,
    /// Every client calls the leader (as it is after the preload) instead
    /// of the members in turn: lease reads are local only there.
    #[arg(long)]
    pub via_leader: bool,
}

pub(crate) fn key(i: u64) -> Vec<u8> {
    format!("bench/{i:08}").into_bytes()
}

/// A cheap deterministic generator per client (xorshift).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn one_call(kv: &KvNode, w: Workload, rng: &mut Rng, keys: u64, value: &[u8]) -> bool {
    let k = key(rng.next() % keys);
    let w = match w {
        Workload::Mixed if rng.next() % 10 < 2 => Workload::Put,
        Workload::Mixed => Workload::Get,
        w => w,
    };
    match w {
        Workload::Put | Workload::Mixed | Workload::Watch => kv
            .put(PutRequest::new(k, value.to_vec()), KvOptions::default())
            .await
            .is_ok(),
        Workload::Get => kv.get(k, KvOptions::default()).await.is_ok(),
        Workload::GetSerializable => kv.get(k, KvOptions::serializable()).await.is_ok(),
        Workload::GetLease => kv
            .get(
                k,
                KvOptions::default().with_consistency(ha_core::Consistency::Lease),
            )
            .await
            .is_ok(),
        Workload::Txn => kv
            .txn(
                TxnRequest {
                    compare: vec![Compare::key(
                        k.clone(),
                        CompareOp::Greater,
                        CompareTarget::ModRevision(0),
                    )],
                    success: vec![TxnOp::Put(PutRequest::new(k.clone(), value.to_vec()))],
                    failure: vec![TxnOp::Range(RangeRequest::new(KeyRange::Key(k)))],
                },
                KvOptions::default(),
            )
            .await
            .is_ok(),
    }
}

/// A group of members on RocksDB (fsync on) in this process, on the
/// in-memory network.
pub(crate) struct BenchGroup {
    /// The members.
    pub(crate) nodes: Vec<KvNode>,
    // Kept for the members' lifetime; the directory goes when dropped.
    _env: RocksEnv,
    _dir: tempfile::TempDir,
}

/// Starts `members` members in a temporary directory under `dir` and waits
/// for a leader.
pub(crate) async fn start_group(
    members: u64,
    dir: &std::path::Path,
) -> crate::bench::BenchResult<BenchGroup> {
    let storage = StorageConfig::default().validate()?;
    let env = RocksEnv::new(&storage)?;
    let dir = tempfile::tempdir_in(dir)?;
    let net = MemNetwork::new();
    let members: Vec<NodeId> = (1..=members).map(NodeId).collect();
    let mut nodes = Vec::new();
    for &id in &members {
        let (log, state) = env.open(&dir.path().join(format!("member-{id}")), &storage)?;
        let config = Config {
            request_timeout: Duration::from_secs(10),
            ..Config::new(id, members.clone())
        };
        nodes.push(
            KvNode::start(
                config,
                KvConfig::default(),
                Arc::new(log),
                Arc::new(state),
                net.transport(id),
            )
            .await?,
        );
    }
    nodes[0]
        .node()
        .wait_for_leader(Duration::from_secs(10))
        .await?;
    Ok(BenchGroup {
        nodes,
        _env: env,
        _dir: dir,
    })
}

/// Runs the benchmark and prints its figures; the last line is JSON.
///
/// # Errors
/// When the storage or the group cannot be set up.
pub async fn run(args: KvArgs) -> crate::bench::BenchResult<()> {
    if args.workload == Workload::Watch {
        return crate::bench::kv_watch::run(&args).await;
    }
    let group = start_group(args.members, &args.dir).await?;
    let nodes = &group.nodes;
    let value = vec![b'v'; args.value_size];
    if matches!(
        args.workload,
        Workload::Get
            | Workload::GetSerializable
            | Workload::GetLease
            | Workload::Mixed
            | Workload::Txn
    ) {
        // Preload every key, 64 puts in flight.
        let next = Arc::new(AtomicU64::new(0));
        let mut loaders = Vec::new();
        for c in 0..64 {
            let (kv, next, value, keys) = (
                nodes[c % nodes.len()].clone(),
                next.clone(),
                value.clone(),
                args.keys,
            );
            loaders.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= keys {
                        break;
                    }
                    let _ = kv
                        .put(PutRequest::new(key(i), value.clone()), KvOptions::default())
                        .await;
                }
            }));
        }
        for l in loaders {
            l.await?;
        }
    }
    let targets: Vec<KvNode> = if args.via_leader {
        let lead = nodes[0].node().leader().leader;
        let leader = nodes
            .iter()
            .find(|n| Some(n.node().id()) == lead)
            .ok_or("no leader after the preload")?;
        vec![leader.clone()]
    } else {
        nodes.clone()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let kv = targets[c % targets.len()].clone();
        let (stop, measuring, done, value) =
            (stop.clone(), measuring.clone(), done.clone(), value.clone());
        let (w, keys) = (args.workload, args.keys);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds");
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = one_call(&kv, w, &mut rng, keys, &value).await;
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
    let changes_before: u64 = nodes
        .iter()
        .map(|n| n.node().metrics().leader_changes)
        .sum();
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let half = Duration::from_secs(args.seconds) / 2;
    tokio::time::sleep(half).await;
    let (at_half, half_time) = (done.load(Ordering::Relaxed), start.elapsed());
    tokio::time::sleep(Duration::from_secs(args.seconds) - half).await;
    measuring.store(false, Ordering::Relaxed);
    let (total, elapsed) = (done.load(Ordering::Relaxed), start.elapsed());
    stop.store(true, Ordering::Relaxed);
    let leader_changes = nodes
        .iter()
        .map(|n| n.node().metrics().leader_changes)
        .sum::<u64>()
        - changes_before;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let (e, h) = t.await?;
        errors += e;
        hist.add(&h)?;
    }
    for n in nodes {
        n.shutdown().await?;
    }
    let rate = total as f64 / elapsed.as_secs_f64();
    let rate2 = (total - at_half) as f64 / (elapsed - half_time).as_secs_f64();
    let name = format!("{:?}", args.workload).to_lowercase();
    let name = match name.as_str() {
        "getserializable" => "get-serializable".to_string(),
        "getlease" => "get-lease".to_string(),
        _ => name,
    };
    let via = if args.via_leader { "leader" } else { "all" };
    println!(
        "kv {name}: {} members, {} clients via {via}, {}-byte values, {} keys, RocksDB with fsync",
        args.members, args.clients, args.value_size, args.keys
    );
    println!(
        "  ops           {total} in {:.1}s ({errors} errors)",
        elapsed.as_secs_f64()
    );
    println!("  throughput    {rate:.0}/s whole run, {rate2:.0}/s second half");
    println!(
        "  latency       p50 {} us, p99 {} us, max {} us",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max()
    );
    println!("  leader changes {leader_changes}");
    // Field order as the issue gives it (serde_json would sort the keys).
    println!(
        "{{\"bench\":\"kv\",\"workload\":{},\"members\":{},\"clients\":{},\"ops_per_sec\":{},\"ops_per_sec_2nd_half\":{},\"p50_us\":{},\"p99_us\":{},\"leader_changes\":{},\"via\":{}}}",
        serde_json::Value::from(name),
        args.members,
        args.clients,
        rate.round() as u64,
        rate2.round() as u64,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        leader_changes,
        serde_json::Value::from(via),
    );
    Ok(())
}
