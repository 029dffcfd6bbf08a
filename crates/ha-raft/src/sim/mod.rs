//! Deterministic simulation of whole groups, replayable from a seed.
//!
//! A run puts N members (the same engine core, apply step and start-up
//! code as production, over the memory stores) in one thread with virtual
//! time and ONE seeded random source, then throws faults at them while
//! simulated clients write and read a few registers (see `docs/SIM.md`):
//!
//! - network: delay, loss, reordering, duplication; partitions (symmetric,
//!   one-way, the leader isolated, a bridge); slow links;
//! - members: crashes that lose every unsynced write (the memory stores'
//!   `crash()`), restarts with a new incarnation, crash loops, whole-group
//!   power failures, process pauses, clock drift (each member ticks on its
//!   own jittered schedule), slow disks (log writes complete after a random
//!   delay, their messages leave only after), leader transfers;
//! - membership: an operator adds learners, promotes them (or lets the
//!   leader do it), removes voters, replaces members (one step at a time or
//!   in one joint change), through the core's membership API, while the
//!   other faults go on; new members start empty under new ids;
//! - snapshots: the log is compacted as production does it, so lagging,
//!   restarted and new members catch up by a snapshot that is built,
//!   streamed, staged and installed through the production code (crashes
//!   can land between the steps of an install).
//!
//! Every run ends with the faults healed and a quiet period, then checks
//! that the group commits again and that all members hold the same state.
//! Checkers watch raft's invariants during the run and check the client
//! history for linearizability at the end (see [`check_history`]). The
//! known bugs of [`crate::InjectedBug`] are there to prove
//! that the checkers catch what they claim to.
//!
//! ```
//! use ha_raft::sim::{SimConfig, run_seed};
//!
//! let report = run_seed(&SimConfig::new(3), 7);
//! assert!(report.passed(), "{}", report.failure_report());
//! // The same seed replays the same run.
//! assert_eq!(run_seed(&SimConfig::new(3), 7).counters, report.counters);
//! ```

mod check;
mod client;
mod executor;
mod faults;
mod history;
mod kv;
mod kvclient;
mod kvload;
mod member;
mod net;
mod rng;
mod world;

use std::path::Path;
use std::time::Duration;

pub use check::{Violation, check_history};
pub use history::{
    Consistency, EventSeen, HistoryOp, Inputs, LeaseEnding, OpKind, Outcome, Outputs, SeenKv,
    WatchFilter, WatchLog, WatchRead, read_history, write_history,
};
pub use kvclient::{SimContext, SimKv, SimTask};

use crate::InjectedBug;

/// What the simulated clients do, and so which state machine the members
/// run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Workload {
    /// Writes and reads of a few registers (a state machine of the
    /// simulator's own): the engine alone is under test.
    #[default]
    Registers,
    /// The production MVCC KV state machine on every member: put, delete,
    /// compare-and-swap transactions, reads in every consistency (now and
    /// at past revisions), ranges and compactions of a few keys, checked
    /// against a model ordered by the revisions (see `docs/SIM.md`).
    Kv,
}

/// What one simulated run looks like. Everything else is drawn from the
/// seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Members in the group (3 or 5).
    pub members: usize,
    /// A known bug to switch on in every member.
    pub bug: Option<InjectedBug>,
    /// Concurrent simulated clients that write and read through any
    /// member (failing over when one is lost).
    pub clients: usize,
    /// Readers per member that live in its process: linearizable and
    /// serializable reads through that member only.
    pub readers_per_member: usize,
    /// Operations each client issues.
    pub ops_per_client: usize,
    /// Registers the clients use.
    pub keys: usize,
    /// How long faults are injected (virtual time).
    pub chaos: Duration,
    /// The quiet period after healing, before the final checks.
    pub quiet: Duration,
    /// Inject faults at all.
    pub faults: bool,
    /// Record every event (see [`SeedReport::trace`]).
    pub trace: bool,
    /// The lease workload ([`SimConfig::lease`]).
    pub lease_focus: bool,
    /// What the clients do ([`SimConfig::kv`]).
    pub workload: Workload,
}

impl SimConfig {
    /// The default workload and faults for a group of `members`.
    pub fn new(members: usize) -> Self {
        SimConfig {
            members,
            bug: None,
            clients: 10,
            readers_per_member: 1,
            ops_per_client: 200,
            keys: 3,
            chaos: Duration::from_secs(6),
            quiet: Duration::from_secs(2),
            faults: true,
            trace: false,
            lease_focus: false,
            workload: Workload::Registers,
        }
    }

    /// The KV workload ([`Workload::Kv`]) with the default faults.
    pub fn kv(members: usize) -> Self {
        SimConfig {
            workload: Workload::Kv,
            ..SimConfig::new(members)
        }
    }

    /// The lease workload: most reads are lease reads, two readers per
    /// member, clocks that drift up to 20%, mostly at the extremes (with
    /// `max_clock_drift` set to allow for it), and faults that threaten a lease: the leader paused,
    /// isolated or slowed, leader transfers (some while the old leader's
    /// links are slow), follower restarts.
    pub fn lease(members: usize) -> Self {
        SimConfig {
            readers_per_member: 2,
            lease_focus: true,
            ..SimConfig::new(members)
        }
    }

    /// The lease-focused faults and clocks of [`SimConfig::lease`] under
    /// the KV workload ([`Workload::Kv`]): KV leases (grants, attached
    /// keys, keep-alives forwarded through the network, revocations,
    /// expiries) and lease reads of the KV, while leaders are paused,
    /// isolated, slowed and moved and clocks drift up to 20%.
    pub fn lease_kv(members: usize) -> Self {
        SimConfig {
            workload: Workload::Kv,
            ..SimConfig::lease(members)
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig::new(3)
    }
}

/// Counters of one run (or, added up, of many): how much happened, so
/// that a passing run is known to have exercised the faults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Client operations (including the final checks' reads and writes).
    pub ops: u64,
    /// Of those, with an unknown outcome.
    pub unknown: u64,
    /// Of those, failed.
    pub failed: u64,
    /// New leaders after the first one.
    pub leader_changes: u64,
    /// Member crashes (power failures).
    pub crashes: u64,
    /// Partitions.
    pub partitions: u64,
    /// Process pauses.
    pub pauses: u64,
    /// Leader transfers requested.
    pub transfers: u64,
    /// Membership changes committed (each requested change once; the
    /// entry that leaves a joint configuration is not counted).
    pub conf_changes: u64,
    /// Snapshots installed (including installs a crash interrupted and the
    /// restart finished).
    pub snapshots: u64,
    /// Messages sent.
    pub messages: u64,
    /// Messages lost (loss, cuts, crashed receivers).
    pub dropped: u64,
    /// Lease reads that reached a running member.
    pub lease_reads: u64,
    /// Of those, answered at once by a leader holding its lease (the rest
    /// took a ReadIndex round).
    pub lease_hits: u64,
    /// KV workload: compactions that succeeded.
    pub compactions: u64,
    /// KV workload: transactions that completed (either branch).
    pub txns: u64,
    /// KV workload: lease expiries proposed by leaders.
    pub expiry_proposals: u64,
    /// KV workload: leases whose expiry the group committed (a
    /// `LeaseExpire` some member applied).
    pub lease_expiries: u64,
    /// KV workload: keep-alives answered.
    pub keep_alives: u64,
    /// KV workload: lease calls a follower forwarded to the leader that
    /// the network lost (the forward or its answer).
    pub lease_calls_lost: u64,
    /// KV workload: events the watch sessions received.
    pub watch_events: u64,
    /// KV workload: watches resumed (on another member, or after a
    /// cancellation) from the revision after the last one they were sent.
    pub watch_resumes: u64,
    /// KV workload: watches cancelled because their reader was too slow
    /// (their buffer was full when live events came).
    pub watch_slow: u64,
    /// KV workload: deliveries a watch's full buffer refused (a live
    /// watcher is then cancelled; a progress notification is owed).
    pub watch_full: u64,
    /// KV workload: times a hub found a watch's buffer full when planning
    /// catch-up (the catch-up paused for that watcher).
    pub watch_paused: u64,
    /// KV workload: progress notifications the watch sessions received.
    pub watch_progress: u64,
    /// KV workload: times a watch session skipped compacted revisions.
    pub watch_compacted: u64,
    /// KV workload: watches a session cancelled itself
    /// (`WatchControl::cancel`) before watching again.
    pub watch_cancels: u64,
    /// KV workload: watches ended by their member's graceful stop (the
    /// hub's `cancel_all`, read by the session as `WatchCancelled {
    /// MemberStopped }` after what was queued).
    pub watch_stopped: u64,
    /// KV workload: watches whose member crashed (the connection broke:
    /// what the session had not read is lost).
    pub watch_broken: u64,
}

impl Counters {
    /// Adds another run's counters.
    pub fn add(&mut self, o: &Counters) {
        self.ops += o.ops;
        self.unknown += o.unknown;
        self.failed += o.failed;
        self.leader_changes += o.leader_changes;
        self.crashes += o.crashes;
        self.partitions += o.partitions;
        self.pauses += o.pauses;
        self.transfers += o.transfers;
        self.conf_changes += o.conf_changes;
        self.snapshots += o.snapshots;
        self.messages += o.messages;
        self.dropped += o.dropped;
        self.lease_reads += o.lease_reads;
        self.lease_hits += o.lease_hits;
        self.compactions += o.compactions;
        self.txns += o.txns;
        self.expiry_proposals += o.expiry_proposals;
        self.lease_expiries += o.lease_expiries;
        self.keep_alives += o.keep_alives;
        self.lease_calls_lost += o.lease_calls_lost;
        self.watch_events += o.watch_events;
        self.watch_resumes += o.watch_resumes;
        self.watch_slow += o.watch_slow;
        self.watch_full += o.watch_full;
        self.watch_paused += o.watch_paused;
        self.watch_progress += o.watch_progress;
        self.watch_compacted += o.watch_compacted;
        self.watch_cancels += o.watch_cancels;
        self.watch_stopped += o.watch_stopped;
        self.watch_broken += o.watch_broken;
    }

    /// Unknown outcomes as a percentage of operations.
    pub fn unknown_pct(&self) -> f64 {
        if self.ops == 0 {
            0.0
        } else {
            100.0 * self.unknown as f64 / self.ops as f64
        }
    }
}

/// The outcome of one seed.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Members in the group.
    pub members: usize,
    /// The bug switched on, if any.
    pub bug: Option<InjectedBug>,
    /// The workload.
    pub workload: Workload,
    /// What broke, the first violation first; empty when the run passed.
    pub violations: Vec<Violation>,
    /// What happened.
    pub counters: Counters,
    /// The faults as they were applied, with their virtual times.
    pub schedule: Vec<String>,
    /// The client history.
    pub history: Vec<HistoryOp>,
    /// Every event, when [`SimConfig::trace`] was set.
    pub trace: Vec<String>,
    /// Virtual time at the end of the run, in nanoseconds.
    pub end_ns: u64,
}

impl SeedReport {
    /// True when no property was violated.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// A readable account of a failed run: seed, fault schedule, the first
    /// violated property and the slice of history around it.
    pub fn failure_report(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let bug = self.bug.map(bug_name).unwrap_or("none");
        let _ = writeln!(
            s,
            "seed {} ({} members, bug {bug}) FAILED after {}",
            self.seed,
            self.members,
            fmt_ns(self.end_ns)
        );
        let _ = writeln!(s, "fault schedule:");
        for f in &self.schedule {
            let _ = writeln!(s, "  {f}");
        }
        let Some(first) = self.violations.first() else {
            let _ = writeln!(s, "no violation");
            return s;
        };
        let _ = writeln!(s, "first violation: {first}");
        for v in self.violations.iter().skip(1).take(4) {
            let _ = writeln!(s, "also: {v}");
        }
        let slice = history_slice(&self.history, first);
        if !slice.is_empty() {
            let _ = writeln!(s, "history around it:");
            for op in slice {
                let _ = writeln!(s, "  {}", check::describe(op));
            }
        }
        let _ = writeln!(
            s,
            "replay: ha-sim --seed {} --members {}{}{} --trace",
            self.seed,
            self.members,
            self.bug
                .map(|b| format!(" --bug {}", bug_name(b)))
                .unwrap_or_default(),
            match self.workload {
                Workload::Registers => " --workload registers",
                Workload::Kv => "",
            }
        );
        s
    }
}

/// The operations a violation names, with the other operations on the same
/// registers that overlap them in time (at most a dozen).
fn history_slice<'a>(history: &'a [HistoryOp], v: &Violation) -> Vec<&'a HistoryOp> {
    let named: Vec<&HistoryOp> = history.iter().filter(|o| v.ops.contains(&o.id)).collect();
    let (Some(lo), Some(hi)) = (
        named.iter().map(|o| o.invoke_ns).min(),
        named.iter().map(|o| o.complete_ns).max(),
    ) else {
        return Vec::new();
    };
    let keys: Vec<&str> = named.iter().map(|o| o.inputs.key.as_str()).collect();
    let mut out: Vec<&HistoryOp> = history
        .iter()
        .filter(|o| {
            v.ops.contains(&o.id)
                || ((keys.contains(&o.inputs.key.as_str())
                    || keys.contains(&kvload::ALL_KEYS)
                    || o.inputs.key == kvload::ALL_KEYS)
                    && o.invoke_ns <= hi
                    && o.complete_ns >= lo
                    && o.outcome != Outcome::Fail)
        })
        .collect();
    out.sort_by_key(|o| (o.invoke_ns, o.id));
    if out.len() > 12 {
        // Keep the named ones and their closest neighbours.
        out.retain(|o| v.ops.contains(&o.id) || o.op.is_write());
        out.truncate(12);
    }
    out
}

/// Runs one seed.
pub fn run_seed(cfg: &SimConfig, seed: u64) -> SeedReport {
    world::run(cfg, seed, &mut |_| {})
}

/// Runs one seed with code under test as clients of the group: `setup`
/// is called once, before the faults start, with a [`SimContext`] that
/// makes [`SimKv`] clients (a `KvClient` of the simulated group), gives
/// the virtual clock and a spawner, and starts client tasks. The run goes
/// on as [`run_seed`]'s does — the built-in workload (if `cfg` has
/// clients), the faults, the checks — and ends once every client task
/// finished and the quiet period passed; a client task that never
/// finishes fails the run for liveness.
///
/// `cfg.workload` must be [`Workload::Kv`] (the members run the MVCC
/// machine). The built-in workload owns the keys `k<n>` and `l<n>`; code
/// under test should use others (e.g. starting with `/`). The same seed
/// replays the same run as long as the code under test draws its choices
/// from [`SimContext::seed`] and time from [`SimContext::clock`].
///
/// # Panics
/// If `cfg.workload` is not [`Workload::Kv`].
pub fn run_seed_with(cfg: &SimConfig, seed: u64, mut setup: impl FnMut(&SimContext)) -> SeedReport {
    assert_eq!(
        cfg.workload,
        Workload::Kv,
        "run_seed_with needs the KV workload (SimConfig::kv)"
    );
    world::run(cfg, seed, &mut setup)
}

/// Reads a JSON-lines history (see `docs/SIM.md`) and checks it.
///
/// # Errors
/// The file cannot be read or a line is not a valid record.
pub fn check_history_file(path: &Path) -> std::io::Result<Vec<Violation>> {
    let file = std::fs::File::open(path)?;
    let ops = read_history(&mut std::io::BufReader::new(file))?;
    Ok(check_history(&ops))
}

/// Every injectable bug.
pub const ALL_BUGS: [InjectedBug; 18] = [
    InjectedBug::LocalReads,
    InjectedBug::AckBeforeSync,
    InjectedBug::ReapplyAfterRestart,
    InjectedBug::NoDedup,
    InjectedBug::ReuseReadContext,
    InjectedBug::RaftLeaseBased,
    InjectedBug::NoVoteGuard,
    InjectedBug::LeaseAcrossTransfer,
    InjectedBug::LeaseFromHeartbeatCount,
    InjectedBug::LeaseIgnoresDrift,
    InjectedBug::FollowerLeaseUnchecked,
    InjectedBug::LeaseNoPromotionReset,
    InjectedBug::WatchResumeLate,
    InjectedBug::WatchProgressAhead,
    InjectedBug::WatchCancelIgnored,
    InjectedBug::CompactPastDurable,
    InjectedBug::NonAtomicInstall,
    InjectedBug::LeaseDeletesSplit,
];

/// The command-line name of a bug (`local-reads`, ...).
pub fn bug_name(bug: InjectedBug) -> &'static str {
    match bug {
        InjectedBug::LocalReads => "local-reads",
        InjectedBug::AckBeforeSync => "ack-before-sync",
        InjectedBug::ReapplyAfterRestart => "reapply-after-restart",
        InjectedBug::NoDedup => "no-dedup",
        InjectedBug::ReuseReadContext => "reuse-read-context",
        InjectedBug::RaftLeaseBased => "raft-lease-based",
        InjectedBug::NoVoteGuard => "no-vote-guard",
        InjectedBug::LeaseAcrossTransfer => "lease-across-transfer",
        InjectedBug::LeaseFromHeartbeatCount => "lease-from-heartbeat-count",
        InjectedBug::LeaseIgnoresDrift => "lease-ignores-drift",
        InjectedBug::FollowerLeaseUnchecked => "follower-lease-unchecked",
        InjectedBug::LeaseNoPromotionReset => "lease-no-promotion-reset",
        InjectedBug::WatchResumeLate => "watch-resume-late",
        InjectedBug::WatchProgressAhead => "watch-progress-ahead",
        InjectedBug::WatchCancelIgnored => "watch-cancel-ignored",
        InjectedBug::CompactPastDurable => "compact-past-durable",
        InjectedBug::NonAtomicInstall => "non-atomic-install",
        InjectedBug::LeaseDeletesSplit => "lease-deletes-split",
    }
}

/// The bug with a command-line name.
pub fn bug_by_name(name: &str) -> Option<InjectedBug> {
    ALL_BUGS.into_iter().find(|b| bug_name(*b) == name)
}

/// The summary line of a batch of seeds, as `ha-sim` prints it last.
pub fn summary_line(seeds: u64, violations: u64, c: &Counters) -> String {
    format!(
        "sim seeds={seeds} violations={violations} unknown_pct={:.2} ops={} leader_changes={} \
         crashes={} partitions={} conf_changes={} snapshots={} watch_events={} lease_expiries={} \
         compactions={} txns={}",
        c.unknown_pct(),
        c.ops,
        c.leader_changes,
        c.crashes,
        c.partitions,
        c.conf_changes,
        c.snapshots,
        c.watch_events,
        c.lease_expiries,
        c.compactions,
        c.txns
    )
}

/// Virtual time as seconds with microseconds, e.g. `3.141593s`.
pub(crate) fn fmt_ns(t: u64) -> String {
    format!("{}.{:06}s", t / 1_000_000_000, (t % 1_000_000_000) / 1_000)
}
