//! `ha-bench fsync`: the raw rate of the disk under a directory — append
//! 4 KiB and `fdatasync`, in a loop — for reference next to the `storage`
//! figures (a WAL append + sync is what bounds a synced log write).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::common::{BenchResult, histogram, print_json, round1};

/// Arguments of `ha-bench fsync`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Bytes appended before each sync.
    #[arg(long, default_value_t = 4096)]
    pub block_size: usize,
    /// Directory on the disk to measure (a temporary file is created and
    /// removed there). Default: the system's temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs the benchmark.
///
/// # Errors
/// When the file cannot be created, written or synced.
pub async fn run(args: Args) -> BenchResult<()> {
    tokio::task::spawn_blocking(move || measure(args)).await?
}

fn measure(args: Args) -> BenchResult<()> {
    let dir = args.dir.unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::tempdir_in(&dir)?;
    let path = scratch.path().join("fsync-probe");
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    let block = vec![0xa5u8; args.block_size];
    let mut hist = histogram();
    eprintln!(
        "fsync: append {} bytes + fdatasync for {} s under {}",
        args.block_size,
        args.seconds,
        dir.display()
    );
    let run_for = Duration::from_secs(args.seconds);
    let start = Instant::now();
    let mut syncs = 0u64;
    while start.elapsed() < run_for {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
        syncs += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let per_sec = syncs as f64 / elapsed;
    let (p50, p99) = (hist.value_at_quantile(0.5), hist.value_at_quantile(0.99));
    println!("fdatasync rate    {per_sec:>12.0} /s ({syncs} syncs)");
    println!("latency p50       {p50:>12} us");
    println!("latency p99       {p99:>12} us");
    print_json(&[
        ("bench", "fsync".into()),
        ("seconds", args.seconds.into()),
        ("block_size", args.block_size.into()),
        ("syncs_per_sec", round1(per_sec).into()),
        ("p50_us", p50.into()),
        ("p99_us", p99.into()),
    ]);
    Ok(())
}
