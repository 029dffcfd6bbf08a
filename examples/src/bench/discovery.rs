//! `ha-bench discovery`: service discovery (`ha_discovery::Registry`) on
//! the replicated KV (RocksDB, fsync on).
//!
//! 1. Registration: `instances` ephemeral instances of one service, bound
//!    to `sessions` sessions spread over the members, registered by 64
//!    concurrent callers through every member except the last —
//!    registrations per second.
//! 2. Propagation: a service watch on the LAST member (where no
//!    registration is sent) records when it sees each instance; the time
//!    from the register call to that (p50/p99) — the figure — and,
//!    to tell the write's own queueing and commit apart from the watch
//!    path, the register call's latency (start → acknowledged) and the
//!    time from the acknowledgement to seen (0 when the watcher saw it
//!    before the call returned).
//! 3. Removal: `deaths` more instances, each with a session of its own
//!    (TTL `ttl-ms`), die one every 100 ms (their sessions stop renewing,
//!    as when the process is killed); the time from the death to the
//!    instance's removal from EVERY member's view (a service watch on each
//!    member), p50/p99. The bound to compare with: TTL + one election
//!    timeout.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ha_core::{Config, NodeId};
use ha_discovery::{Registry, ServiceChange, ServiceInstance, Session};
use parking_lot::Mutex;

use super::common::{BenchResult, LeaderChanges, histogram, print_json, round1};

/// Arguments of `ha-bench discovery`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Instances registered (ephemeral, one service).
    #[arg(long, default_value_t = 10_000)]
    pub instances: usize,
    /// Members in the group.
    #[arg(long, default_value_t = 3)]
    pub members: u64,
    /// Session TTL, milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub ttl_ms: u64,
    /// Sessions the registered instances are bound to.
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,
    /// Instances that die (one session each) for the removal figure.
    #[arg(long, default_value_t = 50)]
    pub deaths: usize,
    /// Where the members' data directories go (a temporary directory
    /// inside it, removed afterwards).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
}

const SERVICE: &str = "bench-svc";

/// When each instance id was first seen registered / seen removed, per
/// watcher.
#[derive(Default)]
struct Seen {
    put: HashMap<String, Instant>,
    deleted: HashMap<String, Instant>,
    /// When each snapshot arrived (the first one starts the watch).
    snapshots: Vec<Instant>,
    /// Every item's arrival and the number of changes it carried, for
    /// the first seconds (how the changes arrive: steadily or in bursts).
    arrivals: Vec<(Instant, usize)>,
}

fn watch_member(registry: Registry) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let mut changes = registry.watch(SERVICE);
        while let Some(change) = changes.next().await {
            let now = Instant::now();
            let mut s = s.lock();
            if s.arrivals.len() < 100_000 {
                s.arrivals.push((now, 1));
            }
            match change {
                Ok(ServiceChange::Put { instance, .. }) => {
                    s.put.entry(instance.id).or_insert(now);
                }
                Ok(ServiceChange::Delete { id, .. }) => {
                    s.deleted.entry(id).or_insert(now);
                }
                Ok(ServiceChange::Snapshot { instances, .. }) => {
                    s.snapshots.push(now);
                    for i in instances {
                        s.put.entry(i.id).or_insert(now);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "bench watch ended");
                    return;
                }
            }
        }
    });
    (seen, task)
}

/// Runs the benchmark and prints its figures; the last line is JSON.
///
/// # Errors
/// When the storage or the group cannot be set up, or registrations fail.
pub async fn run(args: Args) -> BenchResult<()> {
    if args.members < 2 || args.sessions == 0 || args.deaths == 0 {
        return Err("needs at least 2 members, 1 session and 1 death".into());
    }
    let group = crate::bench_kv::start_group(args.members, &args.dir).await?;
    let nodes = &group.nodes;
    let changes = LeaderChanges::watch(nodes[0].node()).await;
    let ttl = Duration::from_millis(args.ttl_ms);
    let election_timeout = Config::new(NodeId(1), vec![NodeId(1)]).election_timeout();
    let registries: Vec<Registry> = nodes
        .iter()
        .map(|n| Registry::new(Arc::new(n.clone())))
        .collect();
    let watcher_member = nodes.len() - 1;
    let writers = nodes.len() - 1;

    // Every member watches the service (the last one's is the
    // propagation watcher); each starts with its snapshot.
    let mut watchers = Vec::new();
    let watch_start = Instant::now();
    for r in &registries {
        watchers.push(watch_member(r.clone()));
    }
    // Registrations start once every watch has its snapshot: an instance
    // registered before its watcher is established would be "seen" in the
    // snapshot, timing the watcher's start rather than propagation.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !watchers
        .iter()
        .all(|(seen, _)| !seen.lock().snapshots.is_empty())
    {
        if Instant::now() > deadline {
            return Err("a service watch got no snapshot within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "service watches established on all {} members in {:.0} ms",
        nodes.len(),
        watch_start.elapsed().as_secs_f64() * 1000.0
    );

    let mut sessions = Vec::new();
    for s in 0..args.sessions {
        sessions.push(
            Session::builder(nodes[s % writers].clone())
                .ttl(ttl)
                .start()
                .await?,
        );
    }

    // 1 + 2: registration rate and propagation.
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let acked: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let t0 = Instant::now();
    let results: Vec<Result<(), String>> = futures::stream::iter(0..args.instances)
        .map(|n| {
            let registry = registries[n % writers].clone();
            let session = sessions[n % sessions.len()].clone();
            let started = started.clone();
            let acked = acked.clone();
            async move {
                let id = format!("i{n:06}");
                let instance =
                    ServiceInstance::new(SERVICE, &id, "10.0.0.1", 8000 + (n % 1000) as u16);
                started.lock().insert(id.clone(), Instant::now());
                let r = registry.register_ephemeral(&session, &instance).await;
                if r.is_ok() {
                    acked.lock().insert(id, Instant::now());
                }
                r.map(drop).map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let register_elapsed = t0.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        println!("{failed} registrations failed; first: {e}");
    }
    let register_per_sec = (args.instances - failed) as f64 / register_elapsed.as_secs_f64();
    println!(
        "registered {} instances in {:.2} s: {:.0}/s (through {writers} members, 64 in flight, {} sessions)",
        args.instances - failed,
        register_elapsed.as_secs_f64(),
        register_per_sec,
        args.sessions
    );
    // Wait for the watcher to catch up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while watchers[watcher_member].0.lock().put.len() < args.instances - failed
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut propagation = histogram();
    let mut register_latency = histogram();
    let mut from_ack = histogram();
    let mut seen_before_ack = 0u64;
    // The acknowledged writes that took the watcher more than 50 ms:
    // how many, and over which stretch of the run they were seen (one
    // stall, or spread out).
    let slow_after = Duration::from_millis(50);
    let mut slow = 0u64;
    let mut slow_span: Option<(Instant, Instant)> = None;
    {
        let seen = watchers[watcher_member].0.lock();
        let acked = acked.lock();
        for (id, start) in started.lock().iter() {
            if let Some(at) = seen.put.get(id) {
                let us = at.saturating_duration_since(*start).as_micros() as u64;
                let _ = propagation.record(us.max(1));
            }
            if let Some(ack) = acked.get(id) {
                let us = ack.saturating_duration_since(*start).as_micros() as u64;
                let _ = register_latency.record(us.max(1));
                if let Some(at) = seen.put.get(id) {
                    if at < ack {
                        seen_before_ack += 1;
                    }
                    if at.saturating_duration_since(*ack) > slow_after {
                        slow += 1;
                        slow_span = Some(match slow_span {
                            Some((a, b)) => (a.min(*at), b.max(*at)),
                            None => (*at, *at),
                        });
                    }
                    let us = at.saturating_duration_since(*ack).as_micros() as u64;
                    let _ = from_ack.record(us.max(1));
                }
            }
        }
    }
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let prop_p50 = ms(&propagation, 0.5);
    let prop_p99 = ms(&propagation, 0.99);
    println!(
        "register call start -> seen by a watcher on another member: p50 {prop_p50:.2} ms, p99 {prop_p99:.2} ms, max {:.2} ms ({} samples)",
        propagation.max() as f64 / 1000.0,
        propagation.len()
    );
    println!(
        "  of which the register call itself (start -> acknowledged): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(&register_latency, 0.5),
        ms(&register_latency, 0.99),
        register_latency.max() as f64 / 1000.0
    );
    println!(
        "  acknowledged -> seen by that watcher: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({seen_before_ack} of {} seen before their call returned)",
        ms(&from_ack, 0.5),
        ms(&from_ack, 0.99),
        from_ack.max() as f64 / 1000.0,
        from_ack.len()
    );
    {
        let seen = watchers[watcher_member].0.lock();
        let rel = |at: Instant| {
            if at >= t0 {
                at.duration_since(t0).as_secs_f64() * 1000.0
            } else {
                -(t0.duration_since(at).as_secs_f64() * 1000.0)
            }
        };
        let snaps: Vec<String> = seen
            .snapshots
            .iter()
            .map(|at| format!("{:.0}", rel(*at)))
            .collect();
        // The largest gap between two consecutive changes during the
        // registrations.
        let during: Vec<Instant> = seen
            .arrivals
            .iter()
            .map(|(at, _)| *at)
            .filter(|at| *at >= t0 && *at <= t0 + register_elapsed)
            .collect();
        let gap = during
            .windows(2)
            .map(|w| (w[1].duration_since(w[0]), w[0]))
            .max_by_key(|(d, _)| *d);
        println!(
            "  that watcher: snapshots at {} ms from the start of the registrations; first change at {:.0} ms; longest silence {:.0} ms (from {:.0} ms)",
            snaps.join(", "),
            during.first().map_or(f64::NAN, |at| rel(*at)),
            gap.map_or(0.0, |(d, _)| d.as_secs_f64() * 1000.0),
            gap.map_or(f64::NAN, |(_, at)| rel(at))
        );
    }
    if let Some((first, last)) = slow_span {
        println!(
            "  {slow} seen more than {} ms after their acknowledgement, between {:.0} and {:.0} ms into the registrations",
            slow_after.as_millis(),
            first.saturating_duration_since(t0).as_secs_f64() * 1000.0,
            last.saturating_duration_since(t0).as_secs_f64() * 1000.0
        );
    }
    // Where the time can go on each member: its log syncs (an entry is
    // applied, and watchers see it, only once the member's own copy is
    // durable) and its raft thread's lateness.
    let leader = nodes[0].node().leader().leader;
    for n in nodes {
        let m = n.node().metrics();
        let bound = |q: f64| {
            m.sync_latency.quantile_bound(q).map_or_else(
                || "> 5 s".to_owned(),
                |d| format!("<= {} ms", d.as_secs_f64() * 1000.0),
            )
        };
        let worst = m
            .sync_latency
            .buckets
            .iter()
            .rposition(|&c| c > 0)
            .map_or_else(
                || "none".to_owned(),
                |b| match ha_raft::LATENCY_BOUNDS_US.get(b) {
                    Some(us) => format!("<= {} ms", *us as f64 / 1000.0),
                    None => "> 5 s".to_owned(),
                },
            );
        println!(
            "  member {}{}: {} synced log writes, sync p50 {}, p99 {}, slowest {}; worst tick lag {:.1} ms",
            n.node().id().0,
            if Some(n.node().id()) == leader {
                " (leader)"
            } else {
                ""
            },
            m.syncs,
            bound(0.5),
            bound(0.99),
            worst,
            m.max_tick_lag_us as f64 / 1000.0
        );
    }

    // 3: removal after death.
    let mut dying = Vec::new();
    for d in 0..args.deaths {
        let session = Session::builder(nodes[d % writers].clone())
            .ttl(ttl)
            .start()
            .await?;
        let id = format!("dead{d:04}");
        registries[d % writers]
            .register_ephemeral(
                &session,
                &ServiceInstance::new(SERVICE, &id, "10.0.0.2", 9000),
            )
            .await?;
        dying.push((id, session));
    }
    let granted_ttl = dying.first().map_or(ttl, |(_, s)| s.ttl());
    let mut died: HashMap<String, Instant> = HashMap::new();
    for (id, session) in dying {
        // Stops renewing: the lease expires after its TTL, as when the
        // process is killed.
        drop(session);
        died.insert(id, Instant::now());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + granted_ttl * 3 + Duration::from_secs(10);
    loop {
        let all_gone = watchers
            .iter()
            .all(|(seen, _)| died.keys().all(|id| seen.lock().deleted.contains_key(id)));
        if all_gone || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut removal = histogram();
    let mut missing = 0;
    for (id, at) in &died {
        let last = watchers
            .iter()
            .map(|(seen, _)| seen.lock().deleted.get(id).copied())
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().max());
        match last {
            Some(gone) => {
                let _ =
                    removal.record((gone.saturating_duration_since(*at).as_micros() as u64).max(1));
            }
            None => missing += 1,
        }
    }
    let rem_p50 = removal.value_at_quantile(0.5) as f64 / 1000.0;
    let rem_p99 = removal.value_at_quantile(0.99) as f64 / 1000.0;
    let bound = (granted_ttl + election_timeout).as_millis();
    println!(
        "death -> removed from every member's view: p50 {rem_p50:.0} ms, p99 {rem_p99:.0} ms, max {:.0} ms ({} deaths, {missing} never removed); TTL {} ms + election timeout {} ms = {bound} ms",
        removal.max() as f64 / 1000.0,
        removal.len(),
        granted_ttl.as_millis(),
        election_timeout.as_millis()
    );
    println!("leader changes during the run: {}", changes.finish());

    for s in &sessions {
        let _ = s.close().await;
    }
    for (_, task) in &watchers {
        task.abort();
    }
    for n in nodes {
        let _ = n.shutdown().await;
    }
    print_json(&[
        ("bench", "discovery".into()),
        ("instances", (args.instances as u64).into()),
        ("register_per_sec", round1(register_per_sec).into()),
        ("propagation_p50_ms", round1(prop_p50).into()),
        ("propagation_p99_ms", round1(prop_p99).into()),
        (
            "register_call_p99_ms",
            round1(ms(&register_latency, 0.99)).into(),
        ),
        ("ack_to_seen_p50_ms", round1(ms(&from_ack, 0.5)).into()),
        ("ack_to_seen_p99_ms", round1(ms(&from_ack, 0.99)).into()),
        ("removal_p50_ms", round1(rem_p50).into()),
        ("removal_p99_ms", round1(rem_p99).into()),
        ("ttl_ms", (granted_ttl.as_millis() as u64).into()),
        (
            "election_timeout_ms",
            (election_timeout.as_millis() as u64).into(),
        ),
    ]);
    Ok(())
}
