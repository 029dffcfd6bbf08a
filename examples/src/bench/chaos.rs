//! `ha-bench chaos`: availability, recovery time and safety of a group of
//! ha-node processes under a seeded schedule of faults.
//!
//! `--members` ha-node processes on loopback ([`crate::procs`]), every
//! member dialling every other through its own fault proxy
//! ([`crate::proxy`]). Writers put unique keys (each value is unique in
//! the run too) and readers read recently acknowledged keys
//! linearizably, all through [`RemoteKv`] with failover between the
//! members. Every `--interval-min-ms`..`--interval-max-ms` one fault hits
//! one member — at least a third of them the current leader — and is
//! healed before the next (so at most one member, a minority, is faulty
//! at any moment): SIGKILL and a restart, a SIGSTOP pause ended by
//! SIGCONT, or a partition that cuts the member off both ways.
//!
//! From the client history it reports availability (the fraction of
//! 100 ms windows in which at least one write was acknowledged), per fault
//! kind the recovery time (fault → first write sent after it and
//! acknowledged) and the longest gap between acknowledgements, the
//! acknowledged writes the final linearizable read does not return, and
//! the violations the simulator's linearizability checker
//! ([`ha_raft::sim::check_history`]) finds in the history, which is
//! written in the simulator's `--history-out` format (`ha-sim check FILE`
//! checks it again).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ha_client::RemoteKv;
use ha_core::{KeyRange, KvClient, KvOptions, PutRequest, RangeRequest};
use ha_raft::sim::{
    Consistency, HistoryOp, Inputs, OpKind, Outcome, Outputs, SeenKv, check_history, write_history,
};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::common::{BenchResult, json_line};
use crate::bench_kv::Rng;
use crate::procs::{Cluster, node_binary};
use crate::proxy::LinkMode;

/// Arguments of `ha-bench chaos`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Length of the run under faults, in minutes (fractions allowed:
    /// `0.5`).
    #[arg(long, default_value_t = 5.0)]
    pub minutes: f64,
    /// Members (ha-node processes).
    #[arg(long, default_value_t = 3)]
    pub members: u64,
    /// Concurrent writers (closed loop, unique keys).
    #[arg(long, default_value_t = 8)]
    pub writers: u64,
    /// Concurrent linearizable readers of acknowledged keys.
    #[arg(long, default_value_t = 4)]
    pub readers: u64,
    /// Seed of the fault schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Shortest time between two faults, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub interval_min_ms: u64,
    /// Longest time between two faults, milliseconds.
    #[arg(long, default_value_t = 15_000)]
    pub interval_max_ms: u64,
    /// Deadline of each client call, milliseconds (a write past it is
    /// recorded as of unknown outcome).
    #[arg(long, default_value_t = 2_000)]
    pub op_timeout_ms: u64,
    /// Where the client history goes (JSON lines, the simulator's
    /// format); default: `ha-chaos-<seed>.history.jsonl` in the temporary
    /// directory.
    #[arg(long)]
    pub history_out: Option<PathBuf>,
    /// The ha-node binary; default [`node_binary`] (next to this one, or
    /// `$HA_NODE_BIN`).
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
    /// Most member replacements in the run (each joins a new member, then
    /// removes the old one); default: a quarter of the faults the run can
    /// hold, plus two, at most 8. 0 leaves replacement out.
    #[arg(long)]
    pub max_replaces: Option<u64>,
    /// The kinds of fault to draw from (comma-separated); every kind
    /// comes up once in each round of that many faults, in a seeded
    /// order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = FaultKind::ALL)]
    pub faults: Vec<FaultKind>,
}

/// The kinds of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum FaultKind {
    /// SIGKILL, then the member is restarted on its data.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// Every link to and from the member drops everything, then passes
    /// again.
    Partition,
    /// A new member joins (and is promoted once caught up), then the
    /// member is removed from the group and stopped: how an operator
    /// replaces a machine.
    Replace,
    /// Every durable write of the member's raft log waits 100–400 ms
    /// first (a disk whose syncs stall), through ha-node's
    /// `--enable-failpoints`.
    SlowDisk,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Replace,
        FaultKind::SlowDisk,
    ];

    fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill+restart",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Replace => "replace",
            FaultKind::SlowDisk => "slow-disk",
        }
    }
}

/// One injected fault.
#[derive(Clone, Debug)]
pub struct Fault {
    /// What.
    pub kind: FaultKind,
    /// The member hit.
    pub member: u64,
    /// Whether it was the leader when hit.
    pub on_leader: bool,
    /// When it started, since the start of the run.
    pub at: Duration,
    /// When it was healed (restart, SIGCONT, links pass again).
    pub healed: Duration,
    /// Fault → the first write sent after it and acknowledged; `None`
    /// when none was.
    pub recovery: Option<Duration>,
    /// The longest time without an acknowledged write from the fault
    /// until the next fault (or the end of the load).
    pub stall: Duration,
}

/// What a chaos run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// The faults, in order.
    pub faults: Vec<Fault>,
    /// Length of the measured load.
    pub measured: Duration,
    /// Fraction of 100 ms windows with at least one acknowledged write.
    pub availability: f64,
    /// 100 ms × the windows without one.
    pub unavailable_ms: u64,
    /// The longest time without an acknowledged write.
    pub longest_stall: Duration,
    /// Writes acknowledged / failed (certainly not applied) / unknown.
    pub writes: (u64, u64, u64),
    /// Reads answered / failed.
    pub reads: (u64, u64),
    /// Acknowledged writes the final linearizable read did not return
    /// with their value.
    pub acked_lost: u64,
    /// What the linearizability checker found.
    pub violations: Vec<String>,
    /// Whether every member ended at one applied index with one state
    /// hash.
    pub replicas_agree: bool,
    /// Where the history was written.
    pub history: PathBuf,
}

impl Report {
    /// Faults that hit the leader.
    pub fn leader_faults(&self) -> usize {
        self.faults.iter().filter(|f| f.on_leader).count()
    }
}

/// What the clients share.
struct Shared {
    start: Instant,
    stop: AtomicBool,
    next_id: AtomicU64,
    ops: Mutex<Vec<HistoryOp>>,
    /// Acknowledged keys, for the readers.
    acked: Mutex<Vec<String>>,
    /// When the last write was acknowledged (`now_ns`).
    last_ack_ns: AtomicU64,
    op_timeout: Duration,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

fn outcome_of(e: &ha_core::Error) -> Outcome {
    if e.is_not_applied() {
        Outcome::Fail
    } else {
        Outcome::Unknown
    }
}

async fn writer(kv: RemoteKv, client: u64, s: Arc<Shared>) {
    let mut seq = 0u64;
    while !s.stop.load(Ordering::Relaxed) {
        seq += 1;
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        // Keys start with the checker's client-key prefix `k`.
        let key = format!("k{client:03}/{seq:08}");
        let invoke_ns = s.now_ns();
        let r = kv
            .put(
                PutRequest::new(key.clone().into_bytes(), id.to_string().into_bytes()),
                KvOptions::default().with_timeout(s.op_timeout),
            )
            .await;
        let complete_ns = s.now_ns();
        let (member, outcome, outputs) = match &r {
            Ok(p) => {
                s.acked.lock().push(key.clone());
                s.last_ack_ns.fetch_max(complete_ns, Ordering::Relaxed);
                let outputs = Outputs {
                    revision: Some(p.header.revision),
                    ..Outputs::default()
                };
                (p.header.member_id.0, Outcome::Ok, outputs)
            }
            Err(e) => {
                let outputs = Outputs {
                    error: Some(e.to_string()),
                    ..Outputs::default()
                };
                (0, outcome_of(e), outputs)
            }
        };
        s.ops.lock().push(HistoryOp {
            id,
            client,
            member,
            incarnation: 0,
            op: OpKind::Put,
            inputs: Inputs {
                key,
                value: Some(id),
                ..Inputs::default()
            },
            invoke_ns,
            complete_ns,
            outcome,
            outputs,
        });
        if r.is_err() {
            // Every member may be refusing at once: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn reader(kv: RemoteKv, client: u64, seed: u64, s: Arc<Shared>) {
    let mut rng = Rng(seed | 1);
    while !s.stop.load(Ordering::Relaxed) {
        let key = {
            let acked = s.acked.lock();
            if acked.is_empty() {
                None
            } else {
                // Recently acknowledged keys: the ones a lost or stale
                // write would show in.
                let recent = acked.len().min(512);
                Some(acked[acked.len() - 1 - (rng.next() as usize % recent)].clone())
            }
        };
        let Some(key) = key else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let invoke_ns = s.now_ns();
        let r = kv
            .range(
                RangeRequest::new(KeyRange::key(key.clone().into_bytes())),
                KvOptions::default().with_timeout(s.op_timeout),
            )
            .await;
        let complete_ns = s.now_ns();
        let (member, outcome, outputs) = match &r {
            Ok(g) => (
                g.header.member_id.0,
                Outcome::Ok,
                Outputs {
                    revision: Some(g.header.revision),
                    kvs: Some(g.kvs.iter().map(SeenKv::from).collect()),
                    ..Outputs::default()
                },
            ),
            Err(e) => (
                0,
                Outcome::Fail,
                Outputs {
                    error: Some(e.to_string()),
                    ..Outputs::default()
                },
            ),
        };
        s.ops.lock().push(HistoryOp {
            id,
            client,
            member,
            incarnation: 0,
            op: OpKind::Get,
            inputs: Inputs {
                key,
                consistency: Some(Consistency::Linearizable),
                ..Inputs::default()
            },
            invoke_ns,
            complete_ns,
            outcome,
            outputs,
        });
        if r.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A stall this long (no write acknowledged) gets the members' view
/// printed.
const STALL_REPORT_AFTER: Duration = Duration::from_secs(1);

/// Prints what every running member says (role, term, commit, and the
/// leader's replication progress of each peer) when writes stall, at
/// most three times a stall: what to read when availability is missed.
async fn watch_stalls(http: reqwest::Client, urls: Vec<(u64, String)>, s: Arc<Shared>) {
    let mut reported = 0u32;
    while !s.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let last = s.last_ack_ns.load(Ordering::Relaxed);
        let since = Duration::from_nanos(s.now_ns().saturating_sub(last));
        if last == 0 || since < STALL_REPORT_AFTER {
            reported = 0;
            continue;
        }
        if reported >= 3 || since < STALL_REPORT_AFTER * (reported + 1) {
            continue;
        }
        reported += 1;
        let answers = futures::future::join_all(
            urls.iter()
                .map(|(id, url)| async { (*id, status_at(&http, url).await) }),
        )
        .await;
        let mut lines = vec![format!(
            "{:>7.1}s  no write acknowledged for {} ms:",
            s.start.elapsed().as_secs_f64(),
            since.as_millis()
        )];
        for (id, v) in answers {
            if let Some(v) = v {
                lines.push(describe_member(id, &v));
            }
        }
        eprintln!("{}", lines.join("\n"));
    }
}

/// One member's status on a line, and the leader's progress of each peer.
fn describe_member(id: u64, v: &Value) -> String {
    let mut line = format!(
        "           member {id}: {} term {} leader {} commit {} applied {} pending {}",
        v["role"].as_str().unwrap_or("?"),
        v["term"],
        v["leader"],
        v["commit"],
        v["applied"],
        v["pending_proposals"],
    );
    for p in v["peers"].as_array().into_iter().flatten() {
        line.push_str(&format!(
            "\n             peer {}{}: {} matched {} next {}{}{}{}{}",
            p["id"],
            if p["voter"] == true { "" } else { " (learner)" },
            p["state"].as_str().unwrap_or("?"),
            p["matched"],
            p["next_index"],
            if p["paused"] == true { " paused" } else { "" },
            if p["recent_active"] == true {
                ""
            } else {
                " inactive"
            },
            if p["inflight_full"] == true {
                " inflight-full"
            } else {
                ""
            },
            match p["pending_snapshot"].as_u64() {
                Some(i) if i > 0 => format!(" snapshot {i}"),
                _ => String::new(),
            },
        ));
    }
    line
}

/// Member status answers, short deadline: a paused member must not hold
/// the scheduler up.
async fn status(http: &reqwest::Client, c: &Cluster, id: u64) -> Option<Value> {
    status_at(http, &c.url(id, "/v1/status")).await
}

/// `GET url` as JSON, if it answers.
async fn status_at(http: &reqwest::Client, url: &str) -> Option<Value> {
    let r = http.get(url).send().await.ok()?;
    r.json::<Value>().await.ok()
}

/// The leader every running member agrees on, if they do and it runs.
async fn agreed_leader(http: &reqwest::Client, c: &Cluster) -> Option<u64> {
    let mut leader = None;
    for &id in c.procs.keys() {
        let l = status(http, c, id).await?["leader"].as_u64()?;
        if leader.is_some_and(|x| x != l) {
            return None;
        }
        leader = Some(l);
    }
    leader.filter(|l| c.procs.contains_key(l))
}

/// Waits (up to `within`) until every running member agrees on a running
/// leader.
pub(crate) async fn settled(
    http: &reqwest::Client,
    c: &Cluster,
    within: Duration,
) -> BenchResult<u64> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(l) = agreed_leader(http, c).await {
            return Ok(l);
        }
        if Instant::now() > deadline {
            return Err(format!("members did not agree on a leader within {within:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn between(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    lo + rng.next() % (hi.saturating_sub(lo) + 1)
}

/// Injects one fault on `member` and heals it after a seeded duration.
async fn inject(c: &mut Cluster, kind: FaultKind, member: u64, rng: &mut Rng) -> BenchResult<()> {
    match kind {
        FaultKind::Kill => {
            c.kill(member);
            tokio::time::sleep(Duration::from_millis(between(rng, 1_000, 3_000))).await;
            c.spawn(member);
        }
        FaultKind::Pause => {
            c.signal(member, "-STOP")?;
            tokio::time::sleep(Duration::from_millis(between(rng, 1_000, 4_000))).await;
            c.signal(member, "-CONT")?;
        }
        FaultKind::Partition => {
            c.isolate(member, LinkMode::Blackhole);
            tokio::time::sleep(Duration::from_millis(between(rng, 2_000, 5_000))).await;
            c.heal();
        }
        FaultKind::Replace => {
            let new = c
                .peer
                .keys()
                .copied()
                .find(|id| !c.procs.contains_key(id) && !c.data_dir(*id).exists())
                .ok_or("no spare member left to replace with")?;
            replace(c, member, new).await?;
        }
        FaultKind::SlowDisk => {
            let delay = Duration::from_millis(between(rng, 100, 400));
            c.set_disk_delay(member, delay).await?;
            tokio::time::sleep(Duration::from_millis(between(rng, 2_000, 5_000))).await;
            c.set_disk_delay(member, Duration::ZERO).await?;
        }
    }
    Ok(())
}

/// How long a member replacement may take at most.
const REPLACE_WITHIN: Duration = Duration::from_secs(60);

/// Joins member `new` (through a running member other than `old`), waits
/// until every running member lists it as a voter, then removes `old`
/// through whichever member leads and stops it.
async fn replace(c: &mut Cluster, old: u64, new: u64) -> BenchResult<()> {
    let deadline = Instant::now() + REPLACE_WITHIN;
    let via = c.procs.keys().copied().find(|&m| m != old);
    c.spawn_joining(new, via);
    loop {
        let mut voter = true;
        for &id in c.procs.keys() {
            voter &= c
                .listed(id, new)
                .await
                .is_some_and(|m| m["role"] == "voter");
        }
        if voter {
            break;
        }
        if Instant::now() > deadline {
            // What each member says, for the report: the roles it lists
            // for the new member, and the leader's replication to it.
            let mut views = Vec::new();
            for &id in c.procs.keys() {
                let role = c.listed(id, new).await.map(|m| m["role"].clone());
                let view = match c.get(id, "/v1/status").await {
                    Ok((_, v)) => describe_member(id, &v),
                    Err(e) => format!("member {id}: no status: {e}"),
                };
                views.push(format!("{view}\n             lists {new} as {role:?}"));
            }
            return Err(format!(
                "member {new} did not become a voter within {REPLACE_WITHIN:?}:\n{}",
                views.join("\n")
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    c.remove_member(old, left).await?;
    c.kill(old);
    Ok(())
}

/// Nearest-rank quantile of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The longest gap between consecutive instants of sorted `acks` within
/// `[from, to]`, counting from `from` and up to `to`.
fn longest_gap(acks: &[u64], from: u64, to: u64) -> Duration {
    let mut last = from;
    let mut gap = 0;
    for &a in acks.iter().filter(|&&a| a >= from && a <= to) {
        gap = gap.max(a - last);
        last = a;
    }
    Duration::from_nanos(gap.max(to.saturating_sub(last)))
}

/// Runs a chaos run and returns what it measured (the caller prints).
///
/// # Errors
/// Bad arguments, a process that cannot be signalled, members that do not
/// settle on a leader within 30 s of a fault being healed, or a final read
/// that does not succeed within a minute.
pub async fn chaos(args: &Args) -> BenchResult<Report> {
    if args.members < 3 {
        return Err("--members must be at least 3 (a fault needs a majority left)".into());
    }
    if args.minutes.is_nan() || args.minutes <= 0.0 || args.writers == 0 {
        return Err("--minutes must be positive and --writers at least 1".into());
    }
    if args.interval_min_ms == 0 || args.interval_max_ms < args.interval_min_ms {
        return Err("need 0 < --interval-min-ms <= --interval-max-ms".into());
    }
    let settle = Duration::from_secs(30);
    let binary = args.node_bin.clone().unwrap_or_else(node_binary);
    let length = Duration::from_secs_f64(args.minutes * 60.0);
    // A quarter of the faults are drawn as replacements, on average; a
    // replacement drawn when no spare is left becomes another kind. Each
    // spare costs a proxy per link, so they are capped.
    let faults_at_most = (length.as_millis() as u64 / args.interval_min_ms) + 1;
    let spares = args
        .max_replaces
        .unwrap_or((faults_at_most / 4 + 2).min(8))
        .min(faults_at_most);
    let mut c = Cluster::start_linked_with_spares(binary, args.members, spares).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .pool_max_idle_per_host(0)
        .build()?;
    settled(&http, &c, settle).await?;
    // Spares too: a member that is not running refuses the connection at
    // once, and a joined one serves clients like the rest.
    let order: Vec<u64> = c.http.keys().copied().collect();
    let endpoints = c.endpoints(&order);
    let client_for = |first: u64| -> BenchResult<RemoteKv> {
        let mut e = endpoints.clone();
        e.rotate_left((first % endpoints.len() as u64) as usize);
        Ok(RemoteKv::builder(e)
            .timeout(Duration::from_millis(args.op_timeout_ms))
            .connect_timeout(Duration::from_millis(200))
            .build()?)
    };
    let s = Arc::new(Shared {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        next_id: AtomicU64::new(1),
        ops: Mutex::new(Vec::new()),
        acked: Mutex::new(Vec::new()),
        last_ack_ns: AtomicU64::new(0),
        op_timeout: Duration::from_millis(args.op_timeout_ms),
    });
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        tasks.push(tokio::spawn(writer(client_for(w)?, w + 1, s.clone())));
    }
    for r in 0..args.readers {
        let client = args.writers + r + 1;
        tasks.push(tokio::spawn(reader(
            client_for(r)?,
            client,
            args.seed.wrapping_mul(1000) + client,
            s.clone(),
        )));
    }
    let urls: Vec<(u64, String)> = order
        .iter()
        .map(|&id| (id, c.url(id, "/v1/status")))
        .collect();
    let watch = tokio::spawn(watch_stalls(http.clone(), urls, s.clone()));

    let mut rng = Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut faults: Vec<Fault> = Vec::new();
    let mut kinds = args.faults.clone();
    kinds.sort();
    kinds.dedup();
    if spares == 0 {
        kinds.retain(|k| *k != FaultKind::Replace);
    }
    if kinds.is_empty() {
        return Err("--faults: no kind of fault left to inject".into());
    }
    let mut bag: Vec<FaultKind> = Vec::new();
    // The longest a fault lasts, plus time to settle: no fault starts
    // so late that it would still run when the load stops.
    let longest_fault = Duration::from_secs(6);
    let mut next = s.start.elapsed()
        + Duration::from_millis(between(
            &mut rng,
            args.interval_min_ms,
            args.interval_max_ms,
        ));
    loop {
        let now = s.start.elapsed();
        if next + longest_fault > length {
            break;
        }
        if now < next {
            tokio::time::sleep(next - now).await;
        }
        let leader = settled(&http, &c, settle).await?;
        let n = faults.len();
        let leaders = faults.iter().filter(|f| f.on_leader).count();
        // At least a third on the leader: forced when behind, else a coin.
        let on_leader = leaders * 3 < n + 1 || rng.next() & 1 == 0;
        let member = if on_leader {
            leader
        } else {
            let others: Vec<u64> = c.procs.keys().copied().filter(|&m| m != leader).collect();
            others[rng.next() as usize % others.len()]
        };
        let replaced = faults
            .iter()
            .filter(|f| f.kind == FaultKind::Replace)
            .count() as u64;
        let kind = loop {
            if bag.is_empty() {
                bag = kinds.clone();
                // Fisher-Yates, seeded.
                for i in (1..bag.len()).rev() {
                    bag.swap(i, rng.next() as usize % (i + 1));
                }
            }
            match bag.pop() {
                Some(FaultKind::Replace) if replaced >= spares => {}
                Some(kind) => break kind,
                None => return Err("no kind of fault to inject".into()),
            }
        };
        let at = s.start.elapsed();
        eprintln!(
            "{:>7.1}s  {} of member {member}{}",
            at.as_secs_f64(),
            kind.name(),
            if on_leader { " (leader)" } else { "" }
        );
        inject(&mut c, kind, member, &mut rng).await?;
        let healed = s.start.elapsed();
        // The heal line completes the schedule `scripts/charts` draws.
        eprintln!("{:>7.1}s  healed", healed.as_secs_f64());
        faults.push(Fault {
            kind,
            member,
            on_leader,
            at,
            healed,
            recovery: None,
            stall: Duration::ZERO,
        });
        // Healthy again before the next fault: at most one faulty member.
        settled(&http, &c, settle).await?;
        next = s.start.elapsed()
            + Duration::from_millis(between(
                &mut rng,
                args.interval_min_ms,
                args.interval_max_ms,
            ));
    }
    let now = s.start.elapsed();
    if now < length {
        tokio::time::sleep(length - now).await;
    }
    s.stop.store(true, Ordering::Relaxed);
    let load_end = s.now_ns();
    for t in tasks {
        t.await?;
    }
    watch.await?;

    // The final read: every acknowledged key, one linearizable range.
    settled(&http, &c, settle).await?;
    let kv = client_for(0)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (final_op, finals) = loop {
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let invoke_ns = s.now_ns();
        match kv
            .range(
                RangeRequest::new(KeyRange::prefix(b"k".to_vec())),
                KvOptions::default().with_timeout(Duration::from_secs(10)),
            )
            .await
        {
            Ok(r) => {
                let kvs: Vec<SeenKv> = r.kvs.iter().map(SeenKv::from).collect();
                let finals: BTreeMap<String, Option<u64>> =
                    kvs.iter().map(|k| (k.key.clone(), k.value)).collect();
                let op = HistoryOp {
                    id,
                    client: 0,
                    member: r.header.member_id.0,
                    incarnation: 0,
                    op: OpKind::Range,
                    inputs: Inputs {
                        key: "*".into(),
                        consistency: Some(Consistency::Linearizable),
                        ..Inputs::default()
                    },
                    invoke_ns,
                    complete_ns: s.now_ns(),
                    outcome: Outcome::Ok,
                    outputs: Outputs {
                        revision: Some(r.header.revision),
                        kvs: Some(kvs),
                        ..Outputs::default()
                    },
                };
                break (op, finals);
            }
            Err(e) if Instant::now() > deadline => {
                return Err(format!("the final read failed for a minute: {e}").into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let converged = c.digests().await;
    let replicas_agree = {
        let mut hashes = converged.sha256.values();
        let first = hashes.next();
        hashes.all(|h| Some(h) == first)
    };
    drop(c);

    let mut ops = std::mem::take(&mut *s.ops.lock());
    ops.push(final_op);
    ops.sort_by_key(|o| o.id);
    let acked_lost = ops
        .iter()
        .filter(|o| o.op == OpKind::Put && o.outcome == Outcome::Ok)
        .filter(|o| finals.get(&o.inputs.key).copied().flatten() != o.inputs.value)
        .count() as u64;
    let violations: Vec<String> = check_history(&ops)
        .iter()
        .map(ToString::to_string)
        .collect();
    let history = args.history_out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("ha-chaos-{}.history.jsonl", args.seed))
    });
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&history)?);
        write_history(&ops, &mut w)?;
    }

    // Acknowledgement instants of writes, sorted.
    let mut acks: Vec<u64> = ops
        .iter()
        .filter(|o| o.op == OpKind::Put && o.outcome == Outcome::Ok)
        .map(|o| o.complete_ns)
        .collect();
    acks.sort_unstable();
    let count =
        |k: OpKind, o: Outcome| ops.iter().filter(|x| x.op == k && x.outcome == o).count() as u64;
    // Availability over the load after the first acknowledgement (the
    // group is up before the clients start, but their connections are
    // not).
    let first = acks.first().copied().unwrap_or(0);
    const WINDOW: u64 = 100_000_000;
    let windows = (load_end.saturating_sub(first) / WINDOW).max(1);
    let mut busy = vec![false; windows as usize];
    for &a in &acks {
        if let Some(b) = busy.get_mut(((a - first) / WINDOW) as usize) {
            *b = true;
        }
    }
    let idle = busy.iter().filter(|b| !**b).count() as u64;
    for i in 0..faults.len() {
        let from = faults[i].at.as_nanos() as u64;
        let to = faults
            .get(i + 1)
            .map_or(load_end, |f| f.at.as_nanos() as u64);
        faults[i].recovery = ops
            .iter()
            .filter(|o| o.op == OpKind::Put && o.outcome == Outcome::Ok && o.invoke_ns >= from)
            .map(|o| o.complete_ns)
            .min()
            .map(|a| Duration::from_nanos(a - from));
        faults[i].stall = longest_gap(&acks, from, to);
    }
    Ok(Report {
        measured: Duration::from_nanos(load_end - first),
        availability: (windows - idle) as f64 / windows as f64,
        unavailable_ms: idle * 100,
        longest_stall: longest_gap(&acks, first, load_end),
        writes: (
            count(OpKind::Put, Outcome::Ok),
            count(OpKind::Put, Outcome::Fail),
            count(OpKind::Put, Outcome::Unknown),
        ),
        reads: (
            count(OpKind::Get, Outcome::Ok),
            count(OpKind::Get, Outcome::Fail),
        ),
        faults,
        acked_lost,
        violations,
        replicas_agree,
        history,
    })
}

/// Runs the benchmark and prints its figures; the last line is JSON.
///
/// # Errors
/// As [`chaos`].
pub async fn run(args: Args) -> BenchResult<()> {
    eprintln!(
        "chaos: {} members, {} writers, {} readers, {} min, seed {}, one fault every {}–{} ms",
        args.members,
        args.writers,
        args.readers,
        args.minutes,
        args.seed,
        args.interval_min_ms,
        args.interval_max_ms
    );
    let r = chaos(&args).await?;
    println!(
        "chaos over {:.1} s: {} faults ({} on the leader)",
        r.measured.as_secs_f64(),
        r.faults.len(),
        r.leader_faults()
    );
    println!(
        "  {:<13} {:>6} {:>9} {:>9} {:>9} {:>12}",
        "fault", "count", "on leader", "RTO p50", "RTO p99", "longest stall"
    );
    let mut all_rto = Vec::new();
    for kind in FaultKind::ALL {
        let of: Vec<&Fault> = r.faults.iter().filter(|f| f.kind == kind).collect();
        if of.is_empty() {
            continue;
        }
        let mut rto: Vec<Duration> = of.iter().filter_map(|f| f.recovery).collect();
        rto.sort_unstable();
        all_rto.extend(rto.iter().copied());
        let stall = of.iter().map(|f| f.stall).max().unwrap_or_default();
        println!(
            "  {:<13} {:>6} {:>9} {:>7} ms {:>6} ms {:>9} ms",
            kind.name(),
            of.len(),
            of.iter().filter(|f| f.on_leader).count(),
            ms(quantile(&rto, 0.5)),
            ms(quantile(&rto, 0.99)),
            ms(stall)
        );
    }
    for (on_leader, what) in [(true, "on the leader"), (false, "elsewhere")] {
        let mut rto: Vec<Duration> = r
            .faults
            .iter()
            .filter(|f| f.on_leader == on_leader)
            .filter_map(|f| f.recovery)
            .collect();
        rto.sort_unstable();
        if !rto.is_empty() {
            println!(
                "  faults {what}: RTO p50 {} ms, p99 {} ms",
                ms(quantile(&rto, 0.5)),
                ms(quantile(&rto, 0.99))
            );
        }
    }
    let unrecovered = r.faults.iter().filter(|f| f.recovery.is_none()).count();
    all_rto.sort_unstable();
    let rto_p99 = ms(quantile(&all_rto, 0.99));
    println!(
        "  availability  {:.4} ({} ms without an acknowledged write; target <= {} ms)",
        r.availability,
        r.unavailable_ms,
        r.leader_faults() as u64 * 600 + 500
    );
    println!(
        "  longest stall {} ms; RTO p99 {} ms (target <= 600 ms){}",
        ms(r.longest_stall),
        rto_p99,
        if unrecovered > 0 {
            format!("; {unrecovered} faults without a recovered write")
        } else {
            String::new()
        }
    );
    println!(
        "  writes        {} acknowledged, {} failed, {} unknown; reads {} answered, {} failed",
        r.writes.0, r.writes.1, r.writes.2, r.reads.0, r.reads.1
    );
    println!(
        "  acked lost    {}; replicas agree: {}; history {} ({} violations)",
        r.acked_lost,
        r.replicas_agree,
        r.history.display(),
        r.violations.len()
    );
    for v in r.violations.iter().take(5) {
        println!("  VIOLATION {v}");
    }
    let minutes = if args.minutes.fract() == 0.0 {
        json!(args.minutes as u64)
    } else {
        json!(args.minutes)
    };
    println!(
        "{}",
        json_line(&[
            ("bench", json!("chaos")),
            ("minutes", minutes),
            ("faults", json!(r.faults.len())),
            ("leader_faults", json!(r.leader_faults())),
            ("availability", json!((r.availability * 1e4).round() / 1e4)),
            ("unavailable_ms", json!(r.unavailable_ms)),
            ("rto_p99_ms", json!(rto_p99)),
            ("longest_stall_ms", json!(ms(r.longest_stall))),
            ("acked_lost", json!(r.acked_lost)),
            ("violations", json!(r.violations.len())),
        ])
    );
    Ok(())
}
