//! `ha-bench kv`: the replicated KV end to end — closed-loop clients
//! calling [`KvClient`] on every member in turn: members in this process
//! on RocksDB (fsync on), or with `--target`/`--spawn` ha-node processes
//! through [`RemoteKv`] (their HTTP/JSON client API). One load loop,
//! generic over the client, serves both.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ha_client::RemoteKv;
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
    /// Run against a group of ha-node processes through their client API
    /// (`RemoteKv`) instead of members in this process: their `--http`
    /// addresses, comma-separated (`http://127.0.0.1:8001,...`); or an
    /// etcd cluster (or an etcd-compatible gateway) through `etcd-client`:
    /// `etcd-grpc://127.0.0.1:2379,etcd-grpc://127.0.0.1:22379` (the
    /// `etcd` feature; `etcd://` is accepted too).
    #[arg(long, value_delimiter = ',', conflicts_with = "spawn")]
    pub target: Vec<String>,
    /// Like `--target`, with this many ha-node processes started here on
    /// loopback (the `ha-node` binary next to this one) and stopped after.
    #[arg(long)]
    pub spawn: Option<u64>,
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

/// What the load loop needs of a client: the ha [`KvClient`]s (in-process
/// members, [`RemoteKv`]) and, with the `etcd` feature, an etcd cluster
/// through `etcd-client` (`crate::bench::etcd_kv::EtcdKv`). Each call
/// says whether it succeeded.
pub trait LoadClient: Clone + Send + Sync + 'static {
    /// Puts `value` at `key`.
    fn load_put(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, bool>;
    /// Reads `key` with `consistency`.
    fn load_get(&self, key: Vec<u8>, consistency: ha_core::Consistency) -> BoxFuture<'_, bool>;
    /// Compare-and-put: puts if the key exists (its mod revision is above
    /// 0), else reads it.
    fn load_cas(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, bool>;
}

impl<K: KvClient + Clone + 'static> LoadClient for K {
    fn load_put(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            self.put(PutRequest::new(key, value), KvOptions::default())
                .await
                .is_ok()
        })
    }

    fn load_get(&self, key: Vec<u8>, consistency: ha_core::Consistency) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            self.get(key, KvOptions::default().with_consistency(consistency))
                .await
                .is_ok()
        })
    }

    fn load_cas(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            self.txn(
                TxnRequest {
                    compare: vec![Compare::key(
                        key.clone(),
                        CompareOp::Greater,
                        CompareTarget::ModRevision(0),
                    )],
                    success: vec![TxnOp::Put(PutRequest::new(key.clone(), value))],
                    failure: vec![TxnOp::Range(RangeRequest::new(KeyRange::Key(key)))],
                },
                KvOptions::default(),
            )
            .await
            .is_ok()
        })
    }
}

async fn one_call<K: LoadClient>(
    kv: &K,
    w: Workload,
    rng: &mut Rng,
    keys: u64,
    value: &[u8],
) -> bool {
    let k = key(rng.next() % keys);
    let w = match w {
        Workload::Mixed if rng.next() % 10 < 2 => Workload::Put,
        Workload::Mixed => Workload::Get,
        w => w,
    };
    match w {
        Workload::Put | Workload::Mixed | Workload::Watch => kv.load_put(k, value.to_vec()).await,
        Workload::Get => kv.load_get(k, ha_core::Consistency::Linearizable).await,
        Workload::GetSerializable => kv.load_get(k, ha_core::Consistency::Serializable).await,
        Workload::GetLease => kv.load_get(k, ha_core::Consistency::Lease).await,
        Workload::Txn => kv.load_cas(k, value.to_vec()).await,
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
/// When the storage or the group cannot be set up, or `--target` names
/// no usable address.
pub async fn run(args: KvArgs) -> crate::bench::BenchResult<()> {
    if !args.target.is_empty() || args.spawn.is_some() {
        return run_remote(args).await;
    }
    if args.workload == Workload::Watch {
        return crate::bench::kv_watch::run(&args).await;
    }
    let group = start_group(args.members, &args.dir).await?;
    let nodes = group.nodes.clone();
    let counter = {
        let nodes = nodes.clone();
        move || -> BoxFuture<'static, u64> {
            let sum = nodes
                .iter()
                .map(|n| n.node().metrics().leader_changes)
                .sum();
            Box::pin(async move { sum })
        }
    };
    let via_leader = args.via_leader;
    let figures = load(&nodes, &args, counter, |nodes: &[KvNode]| {
        if !via_leader {
            return Ok(nodes.to_vec());
        }
        let lead = nodes[0].node().leader().leader;
        let leader = nodes
            .iter()
            .find(|n| Some(n.node().id()) == lead)
            .ok_or("no leader after the preload")?;
        Ok(vec![leader.clone()])
    })
    .await?;
    for n in &nodes {
        n.shutdown().await?;
    }
    report(
        &args,
        args.members,
        "RocksDB with fsync, in this process",
        None,
        &figures,
    );
    Ok(())
}

/// `--target` / `--spawn`: the same load through `RemoteKv`.
async fn run_remote(args: KvArgs) -> crate::bench::BenchResult<()> {
    if args.workload == Workload::Watch {
        return Err("--workload watch runs in this process only (no --target, --spawn)".into());
    }
    if args.via_leader {
        return Err("--via-leader runs in this process only (no --target, --spawn)".into());
    }
    if args
        .target
        .iter()
        .any(|t| t.starts_with("etcd-grpc://") || t.starts_with("etcd://"))
    {
        return run_etcd(args).await;
    }
    let cluster = match args.spawn {
        Some(n) => {
            let c = crate::procs::Cluster::start(n).await;
            c.healthy().await;
            Some(c)
        }
        None => None,
    };
    let targets = match &cluster {
        Some(c) => c.endpoints(&c.initial),
        None => args.target.clone(),
    };
    // Client c talks to member c % n first, as the in-process run spreads
    // its clients over the members.
    let mut clients = Vec::new();
    for first in 0..targets.len() {
        let mut order = targets.clone();
        order.rotate_left(first);
        clients.push(
            RemoteKv::builder(order)
                .timeout(Duration::from_secs(10))
                .build()?,
        );
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let counter = {
        let targets = targets.clone();
        move || -> BoxFuture<'static, u64> {
            let (http, targets) = (http.clone(), targets.clone());
            Box::pin(async move { highest_term(&http, &targets).await })
        }
    };
    let figures = load(&clients, &args, counter, |c: &[RemoteKv]| Ok(c.to_vec())).await?;
    let how = if cluster.is_some() {
        "ha-node processes started here, through RemoteKv"
    } else {
        "ha-node processes at --target, through RemoteKv"
    };
    report(&args, targets.len() as u64, how, Some(&targets), &figures);
    drop(cluster);
    Ok(())
}

/// `--target etcd-grpc://...` (or `etcd://...`): the same load through
/// `etcd-client`, against etcd or an ha group's etcd gateway.
#[cfg(feature = "etcd")]
async fn run_etcd(args: KvArgs) -> crate::bench::BenchResult<()> {
    use crate::bench::etcd_kv::{EtcdKv, SCHEME, is_etcd_target};
    if args.workload == Workload::GetLease {
        return Err("etcd has no lease reads: use --workload get".into());
    }
    if let Some(t) = args.target.iter().find(|t| !is_etcd_target(t)) {
        return Err(format!("mixed targets: {t} is not {SCHEME}...").into());
    }
    let kv = EtcdKv::connect(&args.target, Duration::from_secs(10)).await?;
    let counter = {
        let kv = kv.clone();
        move || -> BoxFuture<'static, u64> {
            let kv = kv.clone();
            Box::pin(async move { kv.raft_term().await })
        }
    };
    let figures = load(&[kv], &args, counter, |c: &[EtcdKv]| Ok(c.to_vec())).await?;
    report(
        &args,
        args.target.len() as u64,
        "etcd's v3 gRPC API (etcd, or ha's gateway) through etcd-client",
        Some(&args.target),
        &figures,
    );
    Ok(())
}

/// `--target etcd-grpc://...` needs the `etcd` feature.
#[cfg(not(feature = "etcd"))]
async fn run_etcd(_args: KvArgs) -> crate::bench::BenchResult<()> {
    Err("this ha-bench was built without the `etcd` feature (cargo build --release -p ha-examples --features etcd --bin ha-bench)".into())
}

/// The highest raft term the members report on `/v1/status` (members
/// that do not answer are skipped). Every leader change takes a new term,
/// so the difference over a run bounds the leader changes from above (an
/// election that elects nobody also takes a term).
async fn highest_term(http: &reqwest::Client, targets: &[String]) -> u64 {
    let mut term = 0;
    for t in targets {
        if let Ok(r) = http.get(format!("{t}/v1/status")).send().await
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            term = term.max(v["term"].as_u64().unwrap_or(0));
        }
    }
    term
}

/// What one load run measured.
struct Figures {
    total: u64,
    at_half: u64,
    half_time: Duration,
    elapsed: Duration,
    errors: u64,
    hist: Histogram<u64>,
    leader_changes: u64,
}

/// Preloads (for reads), runs `args.clients` closed-loop clients in turn
/// over what `narrow` keeps of `kvs` after the preload, for a warm-up
/// second and `args.seconds` measured, and counts leader changes with
/// `counter` (a running count, read before and after the measured part).
async fn load<K, C, N>(
    kvs: &[K],
    args: &KvArgs,
    mut counter: C,
    narrow: N,
) -> crate::bench::BenchResult<Figures>
where
    K: LoadClient,
    C: FnMut() -> BoxFuture<'static, u64>,
    N: FnOnce(&[K]) -> crate::bench::BenchResult<Vec<K>>,
{
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
                kvs[c % kvs.len()].clone(),
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
                    let _ = kv.load_put(key(i), value.clone()).await;
                }
            }));
        }
        for l in loaders {
            l.await?;
        }
    }
    let targets = narrow(kvs)?;
    if targets.is_empty() {
        return Err("no client to run the load through".into());
    }
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
    let changes_before = counter().await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let half = Duration::from_secs(args.seconds) / 2;
    tokio::time::sleep(half).await;
    let (at_half, half_time) = (done.load(Ordering::Relaxed), start.elapsed());
    tokio::time::sleep(Duration::from_secs(args.seconds) - half).await;
    measuring.store(false, Ordering::Relaxed);
    let (total, elapsed) = (done.load(Ordering::Relaxed), start.elapsed());
    let leader_changes = counter().await.saturating_sub(changes_before);
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let (e, h) = t.await?;
        errors += e;
        hist.add(&h)?;
    }
    Ok(Figures {
        total,
        at_half,
        half_time,
        elapsed,
        errors,
        hist,
        leader_changes,
    })
}

fn report(args: &KvArgs, members: u64, how: &str, targets: Option<&[String]>, f: &Figures) {
    let rate = f.total as f64 / f.elapsed.as_secs_f64();
    let rate2 = (f.total - f.at_half) as f64 / (f.elapsed - f.half_time).as_secs_f64();
    let name = format!("{:?}", args.workload).to_lowercase();
    let name = match name.as_str() {
        "getserializable" => "get-serializable".to_string(),
        "getlease" => "get-lease".to_string(),
        _ => name,
    };
    let via = if args.via_leader { "leader" } else { "all" };
    println!(
        "kv {name}: {members} members, {} clients via {via}, {}-byte values, {} keys, {how}",
        args.clients, args.value_size, args.keys
    );
    if let Some(t) = targets {
        println!("  members       {}", t.join(","));
    }
    println!(
        "  ops           {} in {:.1}s ({} errors)",
        f.total,
        f.elapsed.as_secs_f64(),
        f.errors
    );
    println!("  throughput    {rate:.0}/s whole run, {rate2:.0}/s second half");
    println!(
        "  latency       p50 {} us, p99 {} us, max {} us",
        f.hist.value_at_quantile(0.5),
        f.hist.value_at_quantile(0.99),
        f.hist.max()
    );
    println!("  leader changes {}", f.leader_changes);
    // Field order as the issue gives it (serde_json would sort the keys).
    let remote = match targets {
        Some(t)
            if t.iter()
                .any(|t| t.starts_with("etcd-grpc://") || t.starts_with("etcd://")) =>
        {
            ",\"client\":\"etcd\""
        }
        Some(_) => ",\"client\":\"remote\"",
        None => "",
    };
    println!(
        "{{\"bench\":\"kv\",\"workload\":{},\"members\":{},\"clients\":{},\"ops_per_sec\":{},\"ops_per_sec_2nd_half\":{},\"p50_us\":{},\"p99_us\":{},\"leader_changes\":{},\"errors\":{},\"via\":{}{remote}}}",
        serde_json::Value::from(name),
        members,
        args.clients,
        rate.round() as u64,
        rate2.round() as u64,
        f.hist.value_at_quantile(0.5),
        f.hist.value_at_quantile(0.99),
        f.leader_changes,
        f.errors,
        serde_json::Value::from(via),
    );
}
