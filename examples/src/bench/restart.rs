//! `ha-bench restart`: how long a member holding many keys takes to come
//! back. The keys are written through the group (`--keys-per-proposal` of
//! them per proposal), one follower is killed, more keys are written
//! without it, and then it reopens its RocksDB and restarts; the clock runs
//! from opening its storage until it has served a linearizable read of the
//! last key written AND applied everything committed before it restarted.
//!
//! Then a new, empty member joins as a learner. The members compact their
//! logs early here (`--compaction-threshold`), so it can only catch up by
//! snapshot: the leader builds one from its state store and streams it;
//! `snapshot_mb_per_sec` is its size over the time from the leader having
//! built it until the learner has installed it (streamed, staged, verified,
//! restored); `snapshot_end_to_end_mb_per_sec` counts from the learner's
//! start, so it includes raft's probe and the build.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ha_raft::{Node, ReadConsistency};
use ha_storage::RocksStateStore;

use super::common::{BenchResult, print_json};
use super::rocks::RocksGroup;
use super::store_machine::StoreMachine;

/// Arguments of `ha-bench restart`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keys the restarting member holds in the end (the last
    /// `--keys-while-down` of them written while it is down).
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Value bytes per key.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Keys per proposal while loading (one proposal per key would take
    /// minutes at the group's proposal rate).
    #[arg(long, default_value_t = 100)]
    pub keys_per_proposal: u64,
    /// Concurrent proposals while loading.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Keys written while the member is down, which it must catch up on.
    #[arg(long, default_value_t = 10_000)]
    pub keys_while_down: u64,
    /// Directory for the members' data directories. Default: the system's
    /// temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The LAN preset with the log compacted early (so that the new member of
/// the snapshot phase cannot catch up from the log) and snapshots sent at
/// full speed.
fn compacting(id: ha_core::NodeId, members: Vec<ha_core::NodeId>) -> ha_core::Config {
    ha_core::Config {
        compaction_threshold: 2_000,
        compaction_retain: 200,
        snapshot_rate_limit: 0,
        ..ha_core::Config::new(id, members)
    }
}

fn key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

/// Writes keys `[from, to)` through `node`, `per_proposal` keys per
/// proposal, `clients` proposals at a time; a failed proposal is retried
/// (a put is idempotent).
async fn load(
    node: &Node,
    from: u64,
    to: u64,
    per_proposal: u64,
    clients: usize,
    value_size: usize,
) -> BenchResult<()> {
    let next = Arc::new(AtomicU64::new(from));
    let done = Arc::new(AtomicU64::new(0));
    let value = Arc::new(vec![b'r'; value_size]);
    let per_proposal = per_proposal.max(1);
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (node, next, done, value) = (node.clone(), next.clone(), done.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(per_proposal, Ordering::Relaxed);
                if first >= to {
                    return Ok::<(), ha_core::Error>(());
                }
                let last = (first + per_proposal).min(to);
                let keys: Vec<[u8; 8]> = (first..last).map(key).collect();
                let command = StoreMachine::<RocksStateStore>::command(
                    keys.iter().map(|k| (&k[..], &value[..])),
                );
                let mut attempts = 0;
                loop {
                    match node.propose(command.clone()).await {
                        Ok(_) => break,
                        Err(_) if attempts < 10 => {
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
                done.fetch_add(last - first, Ordering::Relaxed);
            }
        }));
    }
    let total = to - from;
    let start = Instant::now();
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let n = done.load(Ordering::Relaxed);
                eprintln!(
                    "  {:>5.0} s  {n:>10} of {total} keys written",
                    start.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut result = Ok(());
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e.into()),
            Err(e) => result = Err(e.into()),
        }
    }
    progress.abort();
    result
}

/// Runs the benchmark.
///
/// # Errors
/// When the group cannot start, the keys cannot be written, or the
/// restarted member does not serve the read within a minute.
pub async fn run(args: Args) -> BenchResult<()> {
    if args.keys == 0 {
        return Err("--keys must be at least 1".into());
    }
    let mut group = RocksGroup::start(3, args.dir.as_deref(), compacting).await?;
    let leader = group.leader().await?;
    eprintln!(
        "restart: writing {} keys of {} bytes, {} per proposal, under {}",
        args.keys,
        args.value_size,
        args.keys_per_proposal,
        group.dir().display()
    );
    // The last `keys_while_down` keys are written while the member is down.
    let before_kill = args.keys.saturating_sub(args.keys_while_down);
    let t = Instant::now();
    load(
        &leader,
        0,
        before_kill,
        args.keys_per_proposal,
        args.clients,
        args.value_size,
    )
    .await?;
    let load_secs = t.elapsed().as_secs_f64();
    println!(
        "loaded            {before_kill:>12} keys in {load_secs:.1} s ({:.0} keys/s)",
        before_kill as f64 / load_secs
    );

    // The member to restart: a follower that has applied everything.
    let victim = *group
        .ids()
        .iter()
        .find(|&&id| id != leader.id())
        .ok_or("no follower")?;
    let commit = leader.status().commit;
    let deadline = Instant::now() + Duration::from_secs(60);
    while group
        .nodes
        .get(&victim)
        .is_some_and(|n| n.status().applied < commit)
    {
        if Instant::now() > deadline {
            return Err(format!("member {victim} did not catch up before the restart").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    group.kill(victim).await;
    let total = args.keys;
    load(
        &leader,
        before_kill,
        total,
        args.keys_per_proposal,
        args.clients,
        args.value_size,
    )
    .await?;
    let target_commit = leader.status().commit;
    println!(
        "member {victim} killed; {} more keys written without it (commit {target_commit})",
        total - before_kill
    );

    // The restart, timed from opening its storage.
    let t0 = Instant::now();
    let times = group.start_member(victim).await?;
    let node = group
        .nodes
        .get(&victim)
        .cloned()
        .ok_or("restarted member missing")?;
    let last_key = Bytes::copy_from_slice(&key(total - 1));
    let expected = vec![b'r'; args.value_size];
    let deadline = t0 + Duration::from_secs(60);
    let (mut read_at, mut caught_up_at) = (None, None);
    while read_at.is_none() || caught_up_at.is_none() {
        if Instant::now() > deadline {
            return Err(format!("member {victim} did not serve a read within 60 s").into());
        }
        if caught_up_at.is_none() && node.status().applied >= target_commit {
            caught_up_at = Some(t0.elapsed());
        }
        if read_at.is_none() {
            let opts = ha_raft::ReadOptions {
                consistency: ReadConsistency::Linearizable,
                timeout: Some(Duration::from_millis(500)),
            };
            match node.read_with(last_key.clone(), opts).await {
                Ok(v) if v.as_ref() == expected.as_slice() => read_at = Some(t0.elapsed()),
                Ok(v) => {
                    return Err(format!(
                        "member {victim} read {} bytes for the last key, not the value written",
                        v.len()
                    )
                    .into());
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let (read_at, caught_up_at) = (
        read_at.unwrap_or_default(),
        caught_up_at.unwrap_or_default(),
    );
    let restart = read_at.max(caught_up_at);

    // Not timed: the restarted member holds every key.
    let state = group
        .states
        .get(&victim)
        .cloned()
        .ok_or("restarted member's state missing")?;
    let held = tokio::task::spawn_blocking(move || StoreMachine::count_keys(&state)).await??;
    if held != total || total == 0 {
        return Err(
            format!("member {victim} holds {held} keys after its restart, not {total}").into(),
        );
    }

    // The snapshot phase: a new, empty member joins.
    let leader = group.leader().await?;
    let newcomer = ha_core::NodeId(group.ids().len() as u64 + 1);
    leader.add_learner(newcomer, Bytes::new(), false).await?;
    let sent_before = leader.metrics().snapshot_bytes_sent;
    let built_before = leader.metrics().snapshots_built;
    let t0 = Instant::now();
    group.start_member(newcomer).await?;
    let joined = group
        .nodes
        .get(&newcomer)
        .cloned()
        .ok_or("new member missing")?;
    let deadline = t0 + Duration::from_secs(300);
    let mut built_at = None;
    while joined.metrics().snapshots_installed == 0 {
        if Instant::now() > deadline {
            return Err(format!("member {newcomer} installed no snapshot within 300 s").into());
        }
        if built_at.is_none() && leader.metrics().snapshots_built > built_before {
            built_at = Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let total_time = t0.elapsed();
    // The transfer proper: from the leader having the snapshot built to the
    // new member having streamed, staged, verified and installed it.
    let transfer = total_time - built_at.unwrap_or_default();
    let snapshot_bytes = leader.metrics().snapshot_bytes_sent - sent_before;
    let state = group
        .states
        .get(&newcomer)
        .cloned()
        .ok_or("new member's state missing")?;
    let installed_keys =
        tokio::task::spawn_blocking(move || StoreMachine::count_keys(&state)).await??;
    if installed_keys < before_kill {
        return Err(format!(
            "member {newcomer} holds {installed_keys} keys after the snapshot, fewer than {before_kill}"
        )
        .into());
    }
    let snapshot_mb = snapshot_bytes as f64 / (1024.0 * 1024.0);
    let mb_per_sec = snapshot_mb / transfer.as_secs_f64();
    let end_to_end_mb_per_sec = snapshot_mb / total_time.as_secs_f64();
    group.shutdown().await?;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("open RocksDB      {:>12.1} ms", ms(times.open));
    println!("Node::start       {:>12.1} ms", ms(times.start));
    println!("linearizable read {:>12.1} ms after the open", ms(read_at));
    println!(
        "caught up         {:>12.1} ms after the open",
        ms(caught_up_at)
    );
    println!(
        "restart           {:>12.1} ms ({held} keys held, checked)",
        ms(restart)
    );
    println!(
        "snapshot           {snapshot_mb:>11.1} MB to an empty member ({installed_keys} keys)"
    );
    println!(
        "  transfer         {:>12.1} ms: {mb_per_sec:.1} MB/s (stream, stage, verify, install)",
        ms(transfer)
    );
    println!(
        "  end to end       {:>12.1} ms: {end_to_end_mb_per_sec:.1} MB/s (from the member's start: probe, build, transfer)",
        ms(total_time)
    );
    print_json(&[
        ("bench", "restart".into()),
        ("keys", total.into()),
        ("restart_ms", (ms(restart).round() as u64).into()),
        (
            "snapshot_mb_per_sec",
            ((mb_per_sec * 10.0).round() / 10.0).into(),
        ),
        ("snapshot_mb", ((snapshot_mb * 10.0).round() / 10.0).into()),
        (
            "snapshot_end_to_end_mb_per_sec",
            ((end_to_end_mb_per_sec * 10.0).round() / 10.0).into(),
        ),
        ("open_ms", (ms(times.open).round() as u64).into()),
        ("start_ms", (ms(times.start).round() as u64).into()),
        ("read_ms", (ms(read_at).round() as u64).into()),
        ("caught_up_ms", (ms(caught_up_at).round() as u64).into()),
        ("value_size", args.value_size.into()),
    ]);
    Ok(())
}
