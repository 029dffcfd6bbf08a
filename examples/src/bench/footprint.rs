//! `ha-bench footprint`: what an idle member costs the process it lives
//! in — resident memory, CPU while idle (ticks, heartbeats, background
//! RocksDB work) and threads.
//!
//! Measured twice: a group of `--members` ha-node processes on loopback
//! (per member, from `/proc/<pid>`: the JSON figures), and the same group
//! as members inside this process (RocksDB with fsync on the in-memory
//! network; this process's growth over its own baseline, divided by the
//! members). Each is measured idle over `--seconds`, then again idle after
//! `--keys` keys of `--value-size` bytes were written.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ha_client::RemoteKv;
use ha_core::{KvClient, KvOptions, PutRequest};
use serde_json::json;

use super::common::{BenchResult, print_json, round1, round2};
use crate::procs::Cluster;

/// Arguments of `ha-bench footprint`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Members of the group.
    #[arg(long, default_value_t = 3)]
    pub members: u64,
    /// Length of each idle measurement, seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Keys written between the two measurements.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Value size of those keys, bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Where the in-process members' data goes (a temporary directory in
    /// it).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: std::path::PathBuf,
}

/// One look at a process in `/proc`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// Resident set, bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// User + system CPU time so far, clock ticks.
    pub cpu_ticks: u64,
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat` (`pid` may be
/// `self`); `None` when the process is gone or the files are not as
/// expected.
pub fn sample(pid: &str) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its `)`.
    let rest: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some(ProcSample {
        rss_bytes: field("VmRSS:")? * 1024,
        threads: field("Threads:")?,
        cpu_ticks: utime + stime,
    })
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if that fails).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A process's figures over an idle window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Idle {
    /// Resident memory at the end, MiB.
    pub rss_mb: f64,
    /// CPU over the window, percent of one core.
    pub cpu_pct: f64,
    /// Threads at the end.
    pub threads: u64,
}

/// Watches `pids` for `seconds`; their figures, in order.
async fn idle_window(pids: &[String], seconds: u64) -> BenchResult<Vec<Idle>> {
    let tck = clock_ticks();
    let before: Vec<ProcSample> = pids
        .iter()
        .map(|p| sample(p).ok_or_else(|| format!("process {p} is gone")))
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let secs = t.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(p, b)| {
            let a = sample(p).ok_or_else(|| format!("process {p} is gone"))?;
            Ok(Idle {
                rss_mb: a.rss_bytes as f64 / (1 << 20) as f64,
                cpu_pct: (a.cpu_ticks - b.cpu_ticks) as f64 / tck / secs * 100.0,
                threads: a.threads,
            })
        })
        .collect()
}

/// Writes `keys` keys through `kvs` (64 in flight, spread over them).
async fn write_keys<K: KvClient + Clone + 'static>(
    kvs: &[K],
    keys: u64,
    value_size: usize,
) -> BenchResult<Duration> {
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..64 {
        let (kv, next, failed) = (kvs[c % kvs.len()].clone(), next.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let value = vec![b'v'; value_size];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    break;
                }
                let key = format!("footprint/{i:08}").into_bytes();
                if kv
                    .put(
                        PutRequest::new(key, value.clone()),
                        KvOptions::default().with_timeout(Duration::from_secs(10)),
                    )
                    .await
                    .is_err()
                {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    match failed.load(Ordering::Relaxed) {
        0 => Ok(t.elapsed()),
        n => Err(format!("{n} of {keys} writes failed").into()),
    }
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn show(label: &str, figures: &[Idle]) {
    for (i, f) in figures.iter().enumerate() {
        println!(
            "  {label:<22} member {}: rss {:>6.1} MiB, cpu {:>5.2} %, threads {}",
            i + 1,
            f.rss_mb,
            f.cpu_pct,
            f.threads
        );
    }
}

/// Runs the benchmark and prints its figures; the last line is JSON.
///
/// # Errors
/// Bad arguments, a member process that goes away, failed writes, or an
/// in-process group that cannot start.
pub async fn run(args: Args) -> BenchResult<()> {
    if args.members == 0 || args.seconds == 0 {
        return Err("--members and --seconds must be at least 1".into());
    }
    let settle = Duration::from_secs(30);
    let warm_up = Duration::from_secs(3);

    // As processes.
    let c = Cluster::start(args.members).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()?;
    super::chaos::settled(&http, &c, settle).await?;
    tokio::time::sleep(warm_up).await;
    let pids: Vec<String> = c.procs.values().map(|p| p.child.id().to_string()).collect();
    eprintln!(
        "{} ha-node processes idle for {} s...",
        args.members, args.seconds
    );
    let procs_idle = idle_window(&pids, args.seconds).await?;
    let kv = RemoteKv::builder(c.endpoints(&c.initial))
        .timeout(Duration::from_secs(10))
        .build()?;
    eprintln!("writing {} keys...", args.keys);
    let took = write_keys(&[kv], args.keys, args.value_size).await?;
    eprintln!(
        "  {:.0} writes/s; idle for {} s...",
        args.keys as f64 / took.as_secs_f64(),
        args.seconds
    );
    tokio::time::sleep(warm_up).await;
    let procs_after = idle_window(&pids, args.seconds).await?;
    drop(c);

    // In this process: its growth over its own baseline.
    let base = sample("self").ok_or("cannot read /proc/self")?;
    let group = crate::bench_kv::start_group(args.members, &args.dir).await?;
    tokio::time::sleep(warm_up).await;
    eprintln!(
        "{} members in this process idle for {} s...",
        args.members, args.seconds
    );
    let me = ["self".to_string()];
    let in_idle = idle_window(&me, args.seconds).await?[0];
    eprintln!("writing {} keys...", args.keys);
    write_keys(&group.nodes, args.keys, args.value_size).await?;
    tokio::time::sleep(warm_up).await;
    let in_after = idle_window(&me, args.seconds).await?[0];
    for n in &group.nodes {
        n.shutdown().await?;
    }
    drop(group);
    let n = args.members as f64;
    let base_mb = base.rss_bytes as f64 / (1 << 20) as f64;
    let per = |i: Idle| Idle {
        rss_mb: (i.rss_mb - base_mb) / n,
        cpu_pct: i.cpu_pct / n,
        threads: i.threads.saturating_sub(base.threads) / args.members,
    };
    let (in_idle, in_after) = (per(in_idle), per(in_after));

    println!(
        "footprint: {} members, idle {} s, then {} keys of {} bytes",
        args.members, args.seconds, args.keys, args.value_size
    );
    show("processes, idle", &procs_idle);
    show("processes, after keys", &procs_after);
    let avg = |f: &[Idle]| Idle {
        rss_mb: mean(f.iter().map(|x| x.rss_mb)),
        cpu_pct: mean(f.iter().map(|x| x.cpu_pct)),
        threads: mean(f.iter().map(|x| x.threads as f64)).round() as u64,
    };
    let (p_idle, p_after) = (avg(&procs_idle), avg(&procs_after));
    println!(
        "  {:<24} {:>14} {:>14} {:>10}",
        "per member (mean)", "rss MiB", "cpu % of core", "threads"
    );
    for (label, f) in [
        ("process, idle", p_idle),
        ("process, after keys", p_after),
        ("in one process, idle", in_idle),
        ("in one process, after", in_after),
    ] {
        println!(
            "  {label:<24} {:>14.1} {:>14.2} {:>10}",
            f.rss_mb, f.cpu_pct, f.threads
        );
    }
    println!(
        "  (in one process: growth of this process over its baseline of {base_mb:.1} MiB and {} threads, divided by {} members; targets per idle member: <= 20 MB, <= 1 %)",
        base.threads, args.members
    );
    print_json(&[
        ("bench", json!("footprint")),
        ("idle_rss_mb_per_member", json!(round1(p_idle.rss_mb))),
        ("idle_cpu_pct_per_member", json!(round2(p_idle.cpu_pct))),
        ("threads_per_member", json!(p_idle.threads)),
    ]);
    Ok(())
}
