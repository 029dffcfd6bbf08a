//! What the benchmarks share: closed-loop clients, latency histograms,
//! progress lines, leader-change counting and the closing JSON line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use ha_raft::Node;
use hdrhistogram::Histogram;

/// What a benchmark returns: its figures are printed, errors end it.
pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A latency histogram in microseconds, from 1 µs to 60 s.
pub fn histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Builds the command a client proposes: `(client, seq)` → bytes, where
/// `seq` counts that client's proposals from 0.
pub type CommandFn = Arc<dyn Fn(usize, u64) -> Bytes + Send + Sync>;

/// The measured part of a closed-loop run.
pub struct RunResult {
    /// Proposals acknowledged while measuring.
    pub ops: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Latency of the acknowledged proposals, microseconds.
    pub hist: Histogram<u64>,
    /// Proposals that failed while measuring.
    pub errors: u64,
    /// Acknowledged proposals per whole second of the measured window.
    pub per_second: Vec<u64>,
}

impl RunResult {
    /// Acknowledged proposals per second over the whole window.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Acknowledged proposals per second over the second half of the
    /// window (whole seconds only).
    pub fn ops_per_sec_second_half(&self) -> f64 {
        let half = &self.per_second[self.per_second.len() / 2..];
        if half.is_empty() {
            return self.ops_per_sec();
        }
        half.iter().sum::<u64>() as f64 / half.len() as f64
    }
}

/// Where a closed-loop run is: told to a [`Load`]'s observer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The warm-up is over; measuring starts now.
    MeasureStart,
    /// Measuring ends now (clients are still running).
    MeasureEnd,
}

/// A closed-loop load: `clients` tokio tasks, each with one proposal in
/// flight, spread over `targets`.
pub struct Load {
    /// Members to propose through (client `c` uses `targets[c % len]`).
    pub targets: Vec<Node>,
    /// Concurrent clients.
    pub clients: usize,
    /// What each proposal carries.
    pub command: CommandFn,
    /// Unmeasured time before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub measure: Duration,
    /// Print throughput to stderr this often while measuring.
    pub progress_every: Option<Duration>,
}

impl Load {
    /// Clients that all propose the same `value_size`-byte command.
    pub fn fixed(targets: Vec<Node>, clients: usize, value_size: usize) -> Self {
        let payload = Bytes::from(vec![b'x'; value_size]);
        Load {
            targets,
            clients,
            command: Arc::new(move |_, _| payload.clone()),
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(10),
            progress_every: None,
        }
    }

    /// Runs the load; `observe` is called at the start and the end of the
    /// measured window (to read counters exactly around it).
    pub async fn run(self, observe: &mut dyn FnMut(Phase)) -> RunResult {
        let stop = Arc::new(AtomicBool::new(false));
        // Zero until measuring starts: the measured window's start.
        let started: Arc<std::sync::OnceLock<Instant>> = Arc::new(std::sync::OnceLock::new());
        let measuring = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        if self.targets.is_empty() {
            return RunResult {
                ops: 0,
                elapsed: Duration::ZERO,
                hist: histogram(),
                errors: 0,
                per_second: Vec::new(),
            };
        }
        for c in 0..self.clients {
            let node = self.targets[c % self.targets.len()].clone();
            let (stop, measuring, started, acked) = (
                stop.clone(),
                measuring.clone(),
                started.clone(),
                acked.clone(),
            );
            let command = self.command.clone();
            tasks.push(tokio::spawn(async move {
                let mut hist = histogram();
                let (mut ops, mut errors) = (0u64, 0u64);
                let mut per_second: Vec<u64> = Vec::new();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let cmd = command(c, seq);
                    seq += 1;
                    let t = Instant::now();
                    let r = node.propose(cmd).await;
                    let us = t.elapsed().as_micros() as u64;
                    if measuring.load(Ordering::Relaxed) {
                        match r {
                            Ok(_) => {
                                ops += 1;
                                acked.fetch_add(1, Ordering::Relaxed);
                                let _ = hist.record(us.max(1));
                                if let Some(s) = started.get() {
                                    let second = s.elapsed().as_secs() as usize;
                                    if per_second.len() <= second {
                                        per_second.resize(second + 1, 0);
                                    }
                                    per_second[second] += 1;
                                }
                            }
                            Err(_) => errors += 1,
                        }
                    }
                }
                (ops, errors, hist, per_second)
            }));
        }
        tokio::time::sleep(self.warmup).await;
        let start = Instant::now();
        let _ = started.set(start);
        observe(Phase::MeasureStart);
        measuring.store(true, Ordering::Relaxed);
        let end = start + self.measure;
        if let Some(every) = self.progress_every {
            let mut last = (start, 0u64);
            while Instant::now() + every <= end {
                tokio::time::sleep(every).await;
                let (now, total) = (Instant::now(), acked.load(Ordering::Relaxed));
                eprintln!(
                    "  {:>5.0} s  {:>10.0} ops/s",
                    (now - start).as_secs_f64(),
                    (total - last.1) as f64 / (now - last.0).as_secs_f64()
                );
                last = (now, total);
            }
        }
        tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
        measuring.store(false, Ordering::Relaxed);
        let elapsed = start.elapsed();
        observe(Phase::MeasureEnd);
        stop.store(true, Ordering::Relaxed);
        let mut total = RunResult {
            ops: 0,
            elapsed,
            hist: histogram(),
            errors: 0,
            per_second: Vec::new(),
        };
        for t in tasks {
            if let Ok((ops, errors, hist, per_second)) = t.await {
                total.ops += ops;
                total.errors += errors;
                let _ = total.hist.add(&hist);
                if total.per_second.len() < per_second.len() {
                    total.per_second.resize(per_second.len(), 0);
                }
                for (sum, n) in total.per_second.iter_mut().zip(per_second) {
                    *sum += n;
                }
            }
        }
        // Only whole seconds of the window count per second.
        total
            .per_second
            .truncate(elapsed.as_secs().try_into().unwrap_or(usize::MAX));
        total
    }
}

/// The member that leads now, waiting up to `timeout` for one.
///
/// # Errors
/// When no leader is elected in time or the leader is not among `nodes`.
pub async fn leader_of(nodes: &[Node], timeout: Duration) -> BenchResult<Node> {
    let first = nodes.first().ok_or("no members")?;
    let info = first.wait_for_leader(timeout).await?;
    let id = info.leader.ok_or("no leader")?;
    nodes
        .iter()
        .find(|n| n.id() == id)
        .cloned()
        .ok_or_else(|| "leader not among members".into())
}

/// Counts leader changes seen by one member from now on.
pub struct LeaderChanges {
    seen: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaderChanges {
    /// Starts counting on `node`'s leadership stream.
    pub async fn watch(node: &Node) -> Self {
        let mut changes = node.leader_changes();
        // The stream starts with the current value.
        let first = changes.next().await;
        let seen = Arc::new(AtomicU64::new(0));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut last = first.and_then(|l| l.leader);
                while let Some(l) = changes.next().await {
                    if l.leader.is_some() && l.leader != last {
                        // A member may learn of the leader a moment after
                        // another member reported it: the first leader it
                        // sees is not a change.
                        if last.is_some() {
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                        last = l.leader;
                    }
                }
            })
        };
        LeaderChanges { seen, task }
    }

    /// Changes seen so far; stops counting.
    pub fn finish(self) -> u64 {
        self.task.abort();
        self.seen.load(Ordering::Relaxed)
    }
}

/// Rounds to one decimal, for JSON figures.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Rounds to two decimals, for JSON figures.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Prints the closing JSON line: one object with `fields` in the order
/// given (the order the specification lists them in).
pub fn print_json(fields: &[(&str, serde_json::Value)]) {
    println!("{}", json_line(fields));
}

/// One JSON object with `fields` in the order given.
pub fn json_line(fields: &[(&str, serde_json::Value)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("{}:{value}", serde_json::Value::from(*key)))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// Bytes this process caused to be written to storage so far
/// (`write_bytes` in `/proc/self/io`: every thread, RocksDB's background
/// flushes and compactions included, counted when the pages go to the
/// device). `None` where the kernel does not report it.
pub fn process_write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|n| n.trim().parse().ok())
}
