//! ha-sim: the deterministic simulator. Runs whole groups under faults in
//! virtual time, one seed at a time, and checks them; or checks a history
//! file written by anything else.
//!
//! ```text
//! cargo run --release --bin ha-sim -- --seeds 1000        # the KV workload
//! cargo run --release --bin ha-sim -- --seed 42 --members 5 --trace
//! cargo run --release --bin ha-sim -- --seeds 1000 --workload registers
//! cargo run --release --bin ha-sim -- --seed 42 --history-out /tmp/h.jsonl
//! cargo run --release --bin ha-sim -- check /tmp/h.jsonl
//! ```
//!
//! The last line is always the summary (`sim seeds=... violations=...`);
//! the exit status is non-zero when any seed violated a property. A failing
//! seed is printed with its fault schedule, the first violation and the
//! history around it, and its full trace and history are written to
//! `--out` (a temporary directory by default).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use clap::{Parser, Subcommand};
use ha_raft::sim::{
    self, Counters, SeedReport, SimConfig, bug_by_name, bug_name, check_history, read_history,
    run_seed, summary_line, write_history,
};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "ha-sim",
    about = "deterministic simulation of ha groups under faults"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Run seeds START..START+N.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// Run this one seed (overrides --seeds/--start).
    #[arg(long)]
    seed: Option<u64>,
    /// First seed of the range.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Members in the group (3 or 5; up to 7 works).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=7))]
    members: u64,
    /// Switch on a known bug in every member: local-reads, ack-before-sync,
    /// reapply-after-restart, no-dedup, reuse-read-context.
    #[arg(long)]
    bug: Option<String>,
    /// Print every event of the run (one seed at a time, in seed order).
    #[arg(long)]
    trace: bool,
    /// Write the client history of the (single) seed as JSON lines.
    #[arg(long)]
    history_out: Option<PathBuf>,
    /// Where the trace and history of failing seeds are written.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Operations per client.
    #[arg(long)]
    ops: Option<usize>,
    /// Concurrent clients.
    #[arg(long)]
    clients: Option<usize>,
    /// Stop at the first failing seed.
    #[arg(long)]
    fail_fast: bool,
    /// What the clients do: `kv` (the production MVCC state machine, lease
    /// manager and watch hub: puts, deletes, transactions, reads at past
    /// revisions, ranges, compactions, leases, watches) or `registers` (the
    /// engine alone, a few registers).
    #[arg(long, default_value = "kv")]
    workload: String,
    /// Worker threads (seeds run in parallel; each run is single-threaded).
    #[arg(long)]
    jobs: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Check a JSON-lines history file (see docs/SIM.md) for
    /// linearizability.
    Check {
        /// The history file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Check { file }) => check_file(file),
        None => simulate(&cli),
    }
}

fn check_file(file: &Path) -> ExitCode {
    let ops = match std::fs::File::open(file)
        .and_then(|f| read_history(&mut std::io::BufReader::new(f)))
    {
        Ok(ops) => ops,
        Err(e) => {
            eprintln!("ha-sim check: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let violations = check_history(&ops);
    for v in &violations {
        println!("{v}");
    }
    let unknown = ops
        .iter()
        .filter(|o| o.outcome == sim::Outcome::Unknown)
        .count();
    let pct = if ops.is_empty() {
        0.0
    } else {
        100.0 * unknown as f64 / ops.len() as f64
    };
    println!(
        "check ops={} violations={} unknown_pct={pct:.2}",
        ops.len(),
        violations.len()
    );
    if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn simulate(cli: &Cli) -> ExitCode {
    let mut cfg = SimConfig::new(cli.members as usize);
    cfg.workload = match cli.workload.as_str() {
        "registers" => sim::Workload::Registers,
        "kv" => sim::Workload::Kv,
        other => {
            eprintln!("unknown workload {other:?}; one of: registers, kv");
            return ExitCode::from(2);
        }
    };
    if let Some(name) = &cli.bug {
        match bug_by_name(name) {
            Some(b) => cfg.bug = Some(b),
            None => {
                let names: Vec<&str> = sim::ALL_BUGS.iter().map(|b| bug_name(*b)).collect();
                eprintln!("unknown bug {name:?}; one of: {}", names.join(", "));
                return ExitCode::from(2);
            }
        }
    }
    if let Some(ops) = cli.ops {
        cfg.ops_per_client = ops;
    }
    if let Some(clients) = cli.clients {
        cfg.clients = clients;
    }
    let seeds: Vec<u64> = match cli.seed {
        Some(s) => vec![s],
        None => (cli.start..cli.start.saturating_add(cli.seeds)).collect(),
    };
    if cli.history_out.is_some() && seeds.len() != 1 {
        eprintln!("--history-out needs exactly one seed (--seed N)");
        return ExitCode::from(2);
    }
    let out_dir = cli
        .out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("ha-sim"));

    if cli.trace {
        // Tracing runs go one by one so that the output is in seed order.
        cfg.trace = true;
    }
    let jobs = if cli.trace {
        1
    } else {
        cli.jobs
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1)
            .max(1)
    };
    let bar = if std::io::stderr().is_terminal() && seeds.len() > 1 {
        let bar = ProgressBar::new(seeds.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} seeds, {msg} [{elapsed} < {eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };

    let started = Instant::now();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failing = AtomicU64::new(0);
    let reports: Mutex<Vec<SeedReport>> = Mutex::new(Vec::new());
    let totals: Mutex<Counters> = Mutex::new(Counters::default());
    let ran = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs.min(seeds.len()).max(1) {
            s.spawn(|| {
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&seed) = seeds.get(i) else { return };
                    let report = run_seed(&cfg, seed);
                    ran.fetch_add(1, Ordering::Relaxed);
                    if cli.trace {
                        let mut stdout = std::io::stdout().lock();
                        for line in &report.trace {
                            let _ = writeln!(stdout, "{line}");
                        }
                    }
                    if let Ok(mut t) = totals.lock() {
                        t.add(&report.counters);
                    }
                    if !report.passed() {
                        let n = failing.fetch_add(1, Ordering::Relaxed) + 1;
                        if cli.fail_fast {
                            stop.store(true, Ordering::Relaxed);
                        }
                        if let Some(bar) = &bar {
                            bar.set_message(format!("{n} failing"));
                        }
                    }
                    if let Some(bar) = &bar {
                        bar.inc(1);
                    }
                    if (!report.passed() || cli.history_out.is_some())
                        && let Ok(mut r) = reports.lock()
                    {
                        r.push(report);
                    }
                }
            });
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut reports = reports.into_inner().unwrap_or_default();
    reports.sort_by_key(|r| r.seed);
    let totals = totals.into_inner().unwrap_or_default();
    let ran = ran.load(Ordering::Relaxed);

    if let Some(path) = &cli.history_out
        && let Some(r) = reports.first()
    {
        let written = std::fs::File::create(path).and_then(|f| {
            let mut w = std::io::BufWriter::new(f);
            write_history(&r.history, &mut w)?;
            w.flush()
        });
        if let Err(e) = written {
            eprintln!("cannot write {}: {e}", path.display());
        }
    }
    let mut violations = 0;
    for r in reports.iter().filter(|r| !r.passed()) {
        violations += 1;
        print!("{}", r.failure_report());
        match save_failure(&cfg, r, &out_dir) {
            Ok((trace, history)) => println!(
                "full trace: {}\nfull history: {}\n",
                trace.display(),
                history.display()
            ),
            Err(e) => println!("could not write the trace and history: {e}\n"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{ran} seeds in {secs:.1}s ({:.2}s per 100 seeds, {jobs} jobs); per seed: crashes {:.2}, \
         partitions {:.2}, leader changes {:.2}, pauses {:.2}, transfers {:.2}",
        if ran == 0 {
            0.0
        } else {
            100.0 * secs / ran as f64
        },
        totals.crashes as f64 / ran.max(1) as f64,
        totals.partitions as f64 / ran.max(1) as f64,
        totals.leader_changes as f64 / ran.max(1) as f64,
        totals.pauses as f64 / ran.max(1) as f64,
        totals.transfers as f64 / ran.max(1) as f64,
    );
    println!("{}", summary_line(ran, violations, &totals));
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Replays a failing seed with tracing on and writes its trace and history.
fn save_failure(
    cfg: &SimConfig,
    report: &SeedReport,
    dir: &Path,
) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let stem = format!(
        "seed-{}-m{}{}",
        report.seed,
        report.members,
        report
            .bug
            .map(|b| format!("-{}", bug_name(b)))
            .unwrap_or_default()
    );
    let traced = if report.trace.is_empty() {
        let mut cfg = cfg.clone();
        cfg.trace = true;
        run_seed(&cfg, report.seed)
    } else {
        report.clone()
    };
    let trace_path = dir.join(format!("{stem}.trace"));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&trace_path)?);
    for line in &traced.trace {
        writeln!(w, "{line}")?;
    }
    w.flush()?;
    let history_path = dir.join(format!("{stem}.history.jsonl"));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&history_path)?);
    write_history(&traced.history, &mut w)?;
    w.flush()?;
    Ok((trace_path, history_path))
}
