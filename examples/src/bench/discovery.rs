//! `ha-bench discovery`: service discovery (`ha_discovery::Registry`) on
//! the replicated KV (RocksDB, fsync on).
//!
//! 1. Registration: `instances` ephemeral instances of one service, bound
//!    to `sessions` sessions spread over the members, registered by 64
//!    concurrent callers through every member except the last —
//!    registrations per second.
//! 2. Propagation: a service watch on the LAST member (where no
//!    registration is sent) records when it sees each instance; the time
//!    from the register call to that (p50/p99).
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
}

fn watch_member(registry: Registry) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let mut changes = registry.watch(SERVICE);
        while let Some(change) = changes.next().await {
            let now = Instant::now();
            let mut s = s.lock();
            match change {
                Ok(ServiceChange::Put { instance, .. }) => {
                    s.put.entry(instance.id).or_insert(now);
                }
                Ok(ServiceChange::Delete { id, .. }) => {
                    s.deleted.entry(id).or_insert(now);
                }
                Ok(ServiceChange::Snapshot { instances, .. }) => {
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
    for r in &registries {
        watchers.push(watch_member(r.clone()));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

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
    let t0 = Instant::now();
    let results: Vec<Result<(), String>> = futures::stream::iter(0..args.instances)
        .map(|n| {
            let registry = registries[n % writers].clone();
            let session = sessions[n % sessions.len()].clone();
            let started = started.clone();
            async move {
                let id = format!("i{n:06}");
                let instance =
                    ServiceInstance::new(SERVICE, &id, "10.0.0.1", 8000 + (n % 1000) as u16);
                started.lock().insert(id, Instant::now());
                registry
                    .register_ephemeral(&session, &instance)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
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
    {
        let seen = watchers[watcher_member].0.lock();
        for (id, start) in started.lock().iter() {
            if let Some(at) = seen.put.get(id) {
                let us = at.saturating_duration_since(*start).as_micros() as u64;
                let _ = propagation.record(us.max(1));
            }
        }
    }
    let prop_p50 = propagation.value_at_quantile(0.5) as f64 / 1000.0;
    let prop_p99 = propagation.value_at_quantile(0.99) as f64 / 1000.0;
    println!(
        "register -> seen by a watcher on another member: p50 {prop_p50:.2} ms, p99 {prop_p99:.2} ms, max {:.2} ms ({} samples)",
        propagation.max() as f64 / 1000.0,
        propagation.len()
    );

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
