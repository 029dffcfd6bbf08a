//! `ha-bench config`: the config center (`ha_discovery::ConfigCenter`) on
//! the replicated KV (RocksDB, fsync on) — `watchers` version watches
//! spread over every member, and `publishes` versions published one after
//! another through the leader's member; per publish, the time from the
//! `publish()` call to the LAST watcher receiving the new version.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ha_discovery::{ConfigCenter, ConfigEvent, ConfigFormat, ConfigId, Publish};

use super::common::{BenchResult, LeaderChanges, histogram, print_json, round2};

/// Arguments of `ha-bench config`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Members in the group.
    #[arg(long, default_value_t = 3)]
    pub members: u64,
    /// Version watches (`ConfigCenter::watch`), spread over the members.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Versions published, one at a time.
    #[arg(long, default_value_t = 200)]
    pub publishes: usize,
    /// Size of each version's JSON content, bytes (about).
    #[arg(long, default_value_t = 512)]
    pub content_size: usize,
    /// Where the members' data directories go (a temporary directory
    /// inside it, removed afterwards).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
}

/// How long one version may take to reach every watcher before the run
/// is declared failed.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(30);

/// Runs the benchmark and prints its figures; the last line is JSON.
///
/// # Errors
/// When the storage or the group cannot be set up, a publish fails, or a
/// version does not reach every watcher within 30 s.
pub async fn run(args: Args) -> BenchResult<()> {
    if args.watchers == 0 || args.publishes == 0 {
        return Err("--watchers and --publishes must be at least 1".into());
    }
    let group = crate::bench_kv::start_group(args.members, &args.dir).await?;
    let nodes = &group.nodes;
    let leader = nodes[0]
        .node()
        .wait_for_leader(Duration::from_secs(10))
        .await?
        .leader
        .ok_or("no leader")?;
    let changes = LeaderChanges::watch(nodes[0].node()).await;
    let centers: Vec<ConfigCenter> = nodes
        .iter()
        .map(|n| ConfigCenter::builder(n.clone()).author("ha-bench").build())
        .collect::<Result<_, _>>()?;
    let publisher = nodes
        .iter()
        .position(|n| n.node().id() == leader)
        .unwrap_or(0);
    let id = ConfigId::new("bench", "bench", "settings.json")?;
    let content = |v: usize| {
        let pad = "x".repeat(args.content_size.saturating_sub(40));
        format!(r#"{{"version":{v},"pad":"{pad}"}}"#)
    };
    let first = centers[publisher]
        .publish(&id, Publish::new(ConfigFormat::Json, content(0)))
        .await?
        .version;

    // Per version, how many watchers have it; the watcher that completes a
    // version reports the moment.
    let last_version = first as usize + args.publishes;
    let received: Arc<Vec<AtomicUsize>> =
        Arc::new((0..=last_version).map(|_| AtomicUsize::new(0)).collect());
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let t_setup = Instant::now();
    let mut tasks = Vec::with_capacity(args.watchers);
    for w in 0..args.watchers {
        let mut watch = centers[w % centers.len()].watch(&id).await?;
        let (received, done_tx, watchers) = (received.clone(), done_tx.clone(), args.watchers);
        tasks.push(tokio::spawn(async move {
            while let Some(event) = watch.next().await {
                let Ok(ConfigEvent::Published(entry)) = event else {
                    continue;
                };
                let v = entry.meta.version;
                let Some(count) = usize::try_from(v).ok().and_then(|v| received.get(v)) else {
                    continue;
                };
                if count.fetch_add(1, Ordering::AcqRel) + 1 == watchers {
                    let _ = done_tx.send((v, Instant::now()));
                }
                if v as usize >= last_version {
                    break;
                }
            }
        }));
    }
    println!(
        "{} watchers on {} members set up in {:.2}s; publishing {} versions through member {}",
        args.watchers,
        nodes.len(),
        t_setup.elapsed().as_secs_f64(),
        args.publishes,
        nodes[publisher].node().id()
    );

    let mut propagation = histogram();
    let mut commit = histogram();
    let t_run = Instant::now();
    for n in 1..=args.publishes {
        let t = Instant::now();
        let meta = centers[publisher]
            .publish(&id, Publish::new(ConfigFormat::Json, content(n)))
            .await?;
        let _ = commit.record((t.elapsed().as_micros() as u64).max(1));
        let (version, at) = tokio::time::timeout(PROPAGATION_LIMIT, async {
            loop {
                match done_rx.recv().await {
                    Some((v, at)) if v == meta.version => return Ok((v, at)),
                    Some(_) => continue,
                    None => return Err("every watcher stopped"),
                }
            }
        })
        .await
        .map_err(|_| {
            format!(
                "version {} did not reach every watcher in 30 s",
                meta.version
            )
        })??;
        debug_assert_eq!(version, meta.version);
        let _ = propagation.record((at.duration_since(t).as_micros() as u64).max(1));
    }
    let elapsed = t_run.elapsed();
    for t in tasks {
        t.abort();
    }
    let ms = |us: u64| round2(us as f64 / 1000.0);
    println!(
        "publish (commit): p50 {} ms, p99 {} ms",
        ms(commit.value_at_quantile(0.5)),
        ms(commit.value_at_quantile(0.99))
    );
    println!(
        "propagation to the LAST of {} watchers: p50 {} ms, p99 {} ms, max {} ms ({} publishes in {:.1}s)",
        args.watchers,
        ms(propagation.value_at_quantile(0.5)),
        ms(propagation.value_at_quantile(0.99)),
        ms(propagation.max()),
        args.publishes,
        elapsed.as_secs_f64()
    );
    println!("leader changes during the run: {}", changes.finish());
    print_json(&[
        ("bench", "config".into()),
        ("watchers", args.watchers.into()),
        ("publishes", args.publishes.into()),
        (
            "propagation_p50_ms",
            ms(propagation.value_at_quantile(0.5)).into(),
        ),
        (
            "propagation_p99_ms",
            ms(propagation.value_at_quantile(0.99)).into(),
        ),
    ]);
    for n in nodes {
        let _ = n.shutdown().await;
    }
    Ok(())
}
