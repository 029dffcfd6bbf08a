//! `ha-bench membership`: membership changes under load. Every few seconds
//! one cycle (add a learner, promote it, remove another voter); reports
//! each change's stall, the longest gap between write completions while
//! it ran.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ha_core::{Config, NodeId, StartMode};
use ha_raft::{MemNetwork, MemberChange, Node};
use ha_storage::{MemLogStore, MemStateStore};

use super::common::{BenchResult, print_json, round2};
use crate::{NoopMachine, start_mem_member};

/// Arguments of `ha-bench membership`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Voters in the group.
    #[arg(long, default_value_t = 3)]
    pub members: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Seconds between change cycles.
    #[arg(long, default_value_t = 3)]
    pub every: u64,
}

/// Runs the benchmark.
///
/// # Errors
/// When the group cannot start or a membership change fails for good.
pub async fn run(args: Args) -> BenchResult<()> {
    let Args {
        members,
        clients,
        seconds,
        every,
    } = args;
    let initial: Vec<NodeId> = (1..=members).map(NodeId).collect();
    let network = MemNetwork::new();
    let mut nodes: BTreeMap<NodeId, Node> = Default::default();
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

    let completions = Arc::new(Completions::default());
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
    print_json(&[
        ("bench", serde_json::json!("membership")),
        ("changes", serde_json::json!(windows.len())),
        ("clients", serde_json::json!(clients)),
        ("members", serde_json::json!(members)),
        ("seconds", serde_json::json!(seconds)),
        ("stall_max_ms", serde_json::json!(round2(max))),
        ("stall_p99_ms", serde_json::json!(round2(p99))),
        ("writes_per_sec", serde_json::json!(ops.round() as u64)),
    ]);
    Ok(())
}

/// Runs a membership change on the current leader, following leadership.
async fn on_leader(
    nodes: &BTreeMap<NodeId, Node>,
    writer: &Node,
    changes: Vec<MemberChange>,
) -> BenchResult<()> {
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

/// Completion times of all clients.
#[derive(Default)]
struct Completions(Mutex<Vec<Instant>>);

impl Completions {
    fn record(&self, t: Instant) {
        if let Ok(mut v) = self.0.lock() {
            v.push(t);
        }
    }

    fn sorted(&self) -> Vec<Instant> {
        let mut v = self.0.lock().map(|v| v.clone()).unwrap_or_default();
        v.sort();
        v
    }
}
