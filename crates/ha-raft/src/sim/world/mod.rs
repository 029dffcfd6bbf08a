//! One simulated run: the event loop that drives every member's core, disk,
//! apply step and network, the clients and the faults, and runs the checks.
//!
//! The loop pops the earliest event (ties in the order they were
//! scheduled), or fires the earliest client timer, and handles it to the
//! end before the next one: a single thread, virtual time, and every random
//! choice from the one [`SimRng`], so a seed replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use ha_core::eraftpb::{Message, MessageType};
use ha_core::{Config, NodeId};

use super::check::{RaftChecks, Violation};
use super::client::{Board, ClientPlan, Request, plan_workload, run_client};
use super::executor::{Executor, MICROS, MILLIS, Nanos, SECONDS, SimClock};
use super::faults::{self, PlannedFault};
use super::history::{HistoryOp, Outcome, Outputs};
use super::kv::ApplySink;
use super::kvclient::{SimContext, SpawnQueue};
use super::kvload::{KvTruth, RevisionSink};
use super::member::Member;
use super::net::{NetParams, Network};
use super::rng::SimRng;
use super::{Counters, SeedReport, SimConfig, fmt_ns};
use crate::bugs::Bugs;
use crate::codec::ReadContext;

mod chaos;
mod clients;
mod finish;
mod leases;
mod membership;
mod process;
mod raw;
mod snapshots;
mod watches;

/// How long past its deadline a client waits for the engine's own verdict
/// (the shell's `GRACE`).
const GRACE: Nanos = 500 * MILLIS;
/// When the first fault may start.
const CHAOS_START: Nanos = 300 * MILLIS;
/// The client id of the final checks' operations.
const FINAL_CLIENT: u64 = 1_000_000;
/// Values of the liveness writes (clients use small ones).
const LIVENESS_VALUE: u64 = 1 << 40;
/// The clock-drift bound of the lease-focused runs, whose clocks drift up
/// to 20% (which needs 80 ms).
const LEASE_FOCUS_DRIFT_BOUND: std::time::Duration = std::time::Duration::from_millis(90);
/// Seeds the lease stream (see `World::lease_rng`).
const LEASE_STREAM: u64 = 0x1ea5_e5c0_ffee_0000;
/// A run that has not finished by then is stuck.
const GIVE_UP_AFTER: Nanos = 60 * SECONDS;

const LIVENESS: &str = "liveness";
const CONVERGENCE: &str = "equal state on all members";
const DURABILITY: &str = "acknowledged writes survive";
const UNKNOWN: &str = "unknown outcomes at most 1%";
const ENGINE: &str = "no fatal error";
/// Violations kept per property and run (the first one matters most).
const MAX_VIOLATIONS: usize = 20;
const READ_INDEX: &str = "read index covers every earlier commit";

#[derive(Debug)]
enum Event {
    Tick {
        m: usize,
        life: u64,
    },
    /// Boxed: a raft message is large, and events move in the heap.
    Deliver {
        msg: Box<Message>,
    },
    DiskDone {
        m: usize,
        life: u64,
    },
    Apply {
        m: usize,
        life: u64,
    },
    Request {
        id: u64,
    },
    Deadline {
        id: u64,
    },
    FaultStart {
        f: usize,
    },
    FaultEnd {
        f: usize,
    },
    Crash {
        m: usize,
    },
    /// Fault `f`, if still on, also cuts `from → to`.
    CutLink {
        f: usize,
        from: usize,
        to: usize,
    },
    Restart {
        m: usize,
    },
    /// Fault `f` (an `IsolateAfterLeaseRound`) arms: the leader is cut off
    /// once a quorum acknowledges its next lease round.
    ArmIsolation {
        f: usize,
    },
    /// Member `m`'s disk latency multiplier becomes `factor`.
    SetDisk {
        m: usize,
        factor: u64,
    },
    Heal,
    /// The operator's membership change `op` takes its next step.
    MemberOp {
        op: usize,
    },
    /// Member `m`'s builder thread builds the snapshot raft asked for.
    Build {
        m: usize,
        life: u64,
    },
    /// Snapshot transfer `id` has streamed its last chunk.
    SnapshotArrive {
        id: u64,
    },
    /// The apply thread restores member `m`'s state store from the staged
    /// snapshot (step 2 of an install).
    InstallRestore {
        m: usize,
        life: u64,
    },
    /// Watch session `w` opens (or resumes).
    WatchOpen {
        w: usize,
    },
    /// Watch session `w`'s reader reads.
    WatchRead {
        w: usize,
    },
    /// Lease call `id`, forwarded by member `from`, reaches the leader
    /// `to`.
    LeaseForward {
        id: u64,
        from: usize,
        from_life: u64,
        to: usize,
        to_life: u64,
        call: leases::LeaseCall,
        lease: i64,
    },
    /// The leader `to`'s answer to lease call `id` reaches `from`.
    LeaseAnswer {
        id: u64,
        from: usize,
        from_life: u64,
        to: usize,
        answer: leases::LeaseAnswer,
    },
    /// Watch session `w` cancels its own watch (and watches again later).
    WatchCancel {
        w: usize,
    },
}

struct Scheduled {
    at: Nanos,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Clone, Copy)]
struct OpenRequest {
    member: usize,
    request: Request,
    /// The highest index any member had seen committed at invocation: a
    /// linearizable read must be answered at an index at least as high.
    committed_at_invoke: u64,
}

/// An `IsolateAfterLeaseRound` fault waiting for the leader's next lease
/// round to be acknowledged.
#[derive(Clone, Copy, Debug)]
struct ArmedIsolation {
    f: usize,
    leader: usize,
    /// The leader's lease expiry when armed: a later one means a quorum
    /// acknowledged a newer round.
    lease_until: Option<Instant>,
    /// Disarmed, if still waiting, after this time.
    give_up: Nanos,
}

/// What a started fault needs undone at its end.
enum Undo {
    Network,
    Disk(usize),
}

struct World {
    cfg: SimConfig,
    seed: u64,
    bugs: Bugs,
    rng: SimRng,
    now: Nanos,
    clock: SimClock,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    members: Vec<Member>,
    net: Network,
    logger: slog::Logger,
    exec: Executor,
    board: Board,
    ops: Vec<HistoryOp>,
    open: BTreeMap<u64, OpenRequest>,
    checks: RaftChecks,
    sink: ApplySink,
    /// KV workload: what the machines applied, revision by revision.
    revisions: RevisionSink,
    kv_truth: KvTruth,
    /// KV workload: lease → its end, as the first member to apply it saw
    /// it.
    lease_ends: leases::LeaseEnds,
    /// KV workload: the lease clients' and lease calls' own random stream
    /// (plans, TTLs, forwards through the network), so that the register
    /// workload's seeds replay as before.
    lease_rng: SimRng,
    /// KV workload: the range lease TTLs are drawn from this seed, in ms.
    lease_ttls: (u64, u64),
    /// KV workload: the watch sessions.
    watches: Vec<watches::Session>,
    /// The watch sessions' own random stream.
    watch_rng: SimRng,
    /// The end of the run: sessions ask for progress until caught up.
    watch_final: bool,
    /// The revision every session had to catch up to (once the final
    /// stage ran).
    watch_final_revision: Option<i64>,
    faults: Vec<PlannedFault>,
    undo: BTreeMap<usize, Undo>,
    armed_isolation: Option<ArmedIsolation>,
    healed: bool,
    halted: bool,
    counters: Counters,
    violations: Vec<Violation>,
    violations_kept: BTreeMap<&'static str, usize>,
    schedule: Vec<String>,
    trace: Option<Vec<String>>,
    disk_latency: (Nanos, Nanos),
    apply_delay: (Nanos, Nanos),
    state_sync_every: Nanos,
    tick_jitter: Nanos,
    request_timeout: Nanos,
    /// How members' clocks drift (a new member draws its skew from it).
    drift: f64,
    /// The log compaction settings of this seed: threshold, retain.
    compaction: (u64, u64),
    /// The operator's membership changes.
    member_ops: Vec<membership::MemberOp>,
    /// Membership request token → operator change.
    conf_tokens: BTreeMap<u64, usize>,
    next_conf_token: u64,
    /// Snapshot transfers in flight.
    transfers: BTreeMap<u64, snapshots::Transfer>,
    next_transfer: u64,
    /// When the chaos window ends.
    heal_at: Nanos,
    /// Crashes right after an install restored the state store (before
    /// the log restarts): drawn from a stream of their own, so that seeds
    /// without installs replay as before.
    install_rng: SimRng,
    /// The chance of such a crash per install, this seed.
    install_crash: f64,
    /// Raw reads (of `SimKv`s) waiting for their answer: their queries.
    raw_queries: BTreeMap<u64, Vec<u8>>,
    /// Watches of `SimKv`s, by watch key.
    raw_watches: BTreeMap<u64, raw::RawWatch>,
    raw_watch_log: raw::RawWatchLog,
    next_watch: Arc<AtomicU64>,
    /// Tasks spawned by code under test, not on the executor yet.
    spawned: SpawnQueue,
    /// Client tasks (the workload's and the code under test's) not
    /// finished yet: the run ends when none is left.
    client_tasks: Arc<AtomicUsize>,
}

/// Runs one seed to the end and reports; `setup` starts the code under
/// test's clients (see [`super::run_seed_with`]).
pub(crate) fn run(cfg: &SimConfig, seed: u64, setup: &mut dyn FnMut(&SimContext)) -> SeedReport {
    let mut world = World::new(cfg, seed);
    let outcome = catch_unwind(AssertUnwindSafe(|| world.run(setup)));
    if let Err(p) = outcome {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        world.fail(Violation::new(
            ENGINE,
            format!("the run panicked (a raft-rs `fatal!`, or a simulator bug): {msg}"),
        ));
    }
    world.report()
}

fn nanos(d: std::time::Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn key_name(key: u8) -> String {
    format!("k{key}")
}

fn msg_summary(m: &Message) -> String {
    let t = format!("{:?}", m.msg_type());
    let mut s = format!(
        "{} {}->{} term={}",
        t.trim_start_matches("Msg"),
        m.from,
        m.to,
        m.term
    );
    match m.msg_type() {
        MessageType::MsgAppend => s.push_str(&format!(
            " index={} log_term={} entries={} commit={}",
            m.index,
            m.log_term,
            m.entries.len(),
            m.commit
        )),
        MessageType::MsgAppendResponse => s.push_str(&format!(
            " index={} reject={} hint={}",
            m.index, m.reject, m.reject_hint
        )),
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote => {
            s.push_str(&format!(" index={} log_term={}", m.index, m.log_term))
        }
        MessageType::MsgRequestVoteResponse | MessageType::MsgRequestPreVoteResponse => {
            s.push_str(&format!(" reject={}", m.reject))
        }
        MessageType::MsgHeartbeat => s.push_str(&format!(" commit={}", m.commit)),
        MessageType::MsgReadIndexResp => s.push_str(&format!(" index={}", m.index)),
        MessageType::MsgPropose => s.push_str(&format!(" entries={}", m.entries.len())),
        _ => {}
    }
    // The ReadIndex round a message belongs to (member/incarnation/counter).
    let ctx = match m.msg_type() {
        MessageType::MsgReadIndex | MessageType::MsgReadIndexResp => {
            m.entries.first().map(|e| e.data.as_slice())
        }
        MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse => Some(&m.context[..]),
        _ => None,
    };
    if let Some(c) = ctx.and_then(ReadContext::decode) {
        s.push_str(&format!(
            " ctx={}/{}/{}",
            c.member, c.incarnation, c.counter
        ));
    }
    s
}

/// A member's configuration: `initial` members bootstrap the group, later
/// ones join it.
fn member_config(cfg: &SimConfig, initial: usize, id: NodeId, compaction: (u64, u64)) -> Config {
    let ids: Vec<NodeId> = (1..=initial as u64).map(NodeId).collect();
    let mut c = Config::new(id, ids);
    if id.0 > initial as u64 {
        c.start_mode = ha_core::StartMode::Join;
    }
    if cfg.lease_focus {
        // Far more drift than the default allows for, and a bound
        // that allows for it: a lease that ignored it would show.
        c.max_clock_drift = LEASE_FOCUS_DRIFT_BOUND;
    }
    (c.compaction_threshold, c.compaction_retain) = compaction;
    // Snapshots stream in virtual time; the shell's rate limit reads the
    // wall clock and sleeps.
    c.snapshot_rate_limit = 0;
    c
}

impl World {
    fn new(cfg: &SimConfig, seed: u64) -> Self {
        let mut rng = SimRng::new(seed);
        let ids: Vec<NodeId> = (1..=cfg.members as u64).map(NodeId).collect();
        // Log compaction as production does it, with thresholds small
        // enough that lagging, restarted and new members need snapshots
        // (the default keeps 20,000 entries; a run writes about 1,000).
        let compaction = if cfg.lease_focus {
            (
                Config::new(NodeId(1), ids.clone()).compaction_threshold,
                5_000,
            )
        } else {
            (rng.pick(&[40, 100, 300, 20_000]), rng.pick(&[0, 10, 50]))
        };
        let config = |id| member_config(cfg, ids.len(), id, compaction);
        let base = config(NodeId(1));
        let tick = nanos(base.tick_interval);
        // Clock drift: each member's clock (and so its ticks) is off by up
        // to this fraction, within what `max_clock_drift` allows for (a
        // leader's clock slow by d and a follower's fast by d need a
        // bound of at least (1 - (1 - d) / (1 + d)) · (election_tick - 1)
        // ticks: 23 ms for 5%, 80 ms for 20%).
        let drift = if cfg.lease_focus {
            rng.pick(&[0.1, 0.15, 0.2])
        } else {
            rng.pick(&[0.0, 0.01, 0.03, 0.05])
        };
        // Lease runs, sometimes: one member's clock runs slow and every other
        // one's fast, both at the extreme — the layout in which a lease
        // that ignored the drift would outlast the followers' election
        // timeouts once the slow one leads (`IsolateAfterLeaseRound` moves
        // leadership there).
        let slow_one = (cfg.lease_focus && rng.chance(0.4)).then(|| rng.below(ids.len()));
        let members = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let skew = match slow_one {
                    Some(s) if s == i => drift,
                    Some(_) => -drift,
                    // Mostly at the extremes, where a lease is most at risk.
                    None if cfg.lease_focus && rng.chance(0.7) => {
                        if rng.chance(0.5) {
                            -drift
                        } else {
                            drift
                        }
                    }
                    None => rng.float(-drift, drift),
                };
                let tick_ns = (tick as f64 * (1.0 + skew)) as Nanos;
                Member::new(config(id), tick_ns)
            })
            .collect();
        let net = Network::new(NetParams::random(&mut rng));
        let disk_lo = rng.between(20 * MICROS, 300 * MICROS);
        let disk_latency = (disk_lo, disk_lo + rng.between(50 * MICROS, 3 * MILLIS));
        let apply_delay = (0, rng.between(10 * MICROS, 2 * MILLIS));
        let state_sync_every = rng.pick(&[20 * MILLIS, 200 * MILLIS, SECONDS]);
        let tick_jitter = rng.between(0, MILLIS);
        let mut lease_rng = SimRng::new(seed ^ LEASE_STREAM);
        let lease_ttls = super::kvload::plan_ttl_range(&mut lease_rng);
        let mut install_rng = SimRng::new(seed ^ 0x1a57_a11c_7a54_0000);
        let install_crash = install_rng.pick(&[0.0, 0.0, 0.3, 0.6]);
        World {
            cfg: cfg.clone(),
            seed,
            bugs: Bugs::with(cfg.bug),
            rng,
            now: 0,
            clock: SimClock::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            members,
            net,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            exec: Executor::default(),
            board: Board::default(),
            ops: Vec::new(),
            open: BTreeMap::new(),
            checks: RaftChecks::new(cfg.members),
            sink: ApplySink::default(),
            revisions: RevisionSink::default(),
            kv_truth: KvTruth::default(),
            lease_ends: leases::LeaseEnds::new(),
            lease_rng,
            lease_ttls,
            watches: Vec::new(),
            watch_rng: SimRng::new(seed ^ watches::WATCH_STREAM),
            watch_final: false,
            watch_final_revision: None,
            faults: Vec::new(),
            undo: BTreeMap::new(),
            armed_isolation: None,
            healed: false,
            halted: false,
            counters: Counters::default(),
            violations: Vec::new(),
            violations_kept: BTreeMap::new(),
            schedule: Vec::new(),
            trace: cfg.trace.then(Vec::new),
            disk_latency,
            apply_delay,
            state_sync_every,
            tick_jitter,
            request_timeout: nanos(base.request_timeout),
            drift,
            compaction,
            member_ops: Vec::new(),
            conf_tokens: BTreeMap::new(),
            next_conf_token: 0,
            transfers: BTreeMap::new(),
            next_transfer: 0,
            heal_at: CHAOS_START + nanos(cfg.chaos),
            install_rng,
            install_crash,
            raw_queries: BTreeMap::new(),
            raw_watches: BTreeMap::new(),
            raw_watch_log: raw::RawWatchLog::default(),
            next_watch: Arc::default(),
            spawned: SpawnQueue::default(),
            client_tasks: Arc::default(),
        }
    }

    fn report(mut self) -> SeedReport {
        for op in &mut self.ops {
            if self.open.contains_key(&op.id) {
                op.complete_ns = self.now;
                op.outcome = if op.op.is_write() {
                    Outcome::Unknown
                } else {
                    Outcome::Fail
                };
            }
        }
        self.counters.leader_changes = self.checks.leaderships().saturating_sub(1) as u64;
        SeedReport {
            seed: self.seed,
            members: self.cfg.members,
            bug: self.cfg.bug,
            workload: self.cfg.workload,
            violations: self.violations,
            counters: self.counters,
            schedule: self.schedule,
            history: self.ops,
            trace: self.trace.unwrap_or_default(),
            end_ns: self.now,
        }
    }

    /// Member `m`'s clock now (it runs at the rate of its ticks).
    fn instant_of(&self, m: usize) -> Instant {
        self.clock.instant(self.members[m].local_ns(self.now))
    }

    fn at(&mut self, at: Nanos, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    fn after(&mut self, delay: Nanos, event: Event) {
        self.at(self.now.saturating_add(delay), event);
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(format!("{} {}", fmt_ns(self.now), line()));
        }
    }

    fn log_fault(&mut self, what: String) {
        self.trace(|| format!("FAULT {what}"));
        self.schedule.push(format!("{} {what}", fmt_ns(self.now)));
    }

    /// Records a violation; the run goes on, so that later checks (the
    /// history's linearizability above all) report too.
    fn fail(&mut self, v: Violation) {
        let v = if v.at_ns.is_none() { v.at(self.now) } else { v };
        self.record(v);
    }

    /// Records a violation of the history as a whole (no time of its own).
    fn record(&mut self, v: Violation) {
        self.trace(|| format!("VIOLATION {v}"));
        let kept = self.violations_kept.entry(v.property).or_default();
        if *kept < MAX_VIOLATIONS {
            *kept += 1;
            self.violations.push(v);
        }
    }

    /// Records a violation after which the run cannot go on (a member's
    /// engine stopped).
    fn halt(&mut self, v: Violation) {
        self.fail(v);
        self.halted = true;
    }

    fn clients_live(&self) -> usize {
        self.client_tasks.load(Ordering::SeqCst)
    }

    fn up(&self, m: usize) -> bool {
        self.members[m].proc.is_some()
    }

    fn alive(&self, m: usize, life: u64) -> bool {
        self.members[m].life == life && self.up(m)
    }

    /// The member that leads the newest term among running members.
    fn leader(&self) -> Option<usize> {
        (0..self.members.len())
            .filter_map(|m| {
                let p = self.members[m].proc.as_ref()?;
                p.core.is_leader().then(|| (p.core.leader().term, m))
            })
            .max()
            .map(|(_, m)| m)
    }

    /// Handles events until `done` holds (true), the run halts, or virtual
    /// time would pass `limit` (false).
    fn run_until(&mut self, limit: Nanos, done: impl Fn(&World) -> bool) -> bool {
        loop {
            self.run_tasks();
            self.take_requests();
            if self.halted {
                return false;
            }
            if done(self) {
                return true;
            }
            let event_at = self.queue.peek().map(|Reverse(s)| s.at);
            let timer_at = self.clock.next_deadline();
            let next = match (event_at, timer_at) {
                (Some(e), Some(t)) => e.min(t),
                (Some(e), None) => e,
                (None, Some(t)) => t,
                (None, None) => return false,
            };
            if next > limit {
                return false;
            }
            self.now = next;
            self.clock.set_now(next);
            if timer_at == Some(next) && event_at.is_none_or(|e| e > next) {
                self.clock.fire_due();
                continue;
            }
            let Some(Reverse(s)) = self.queue.pop() else {
                continue;
            };
            self.handle(s.event);
        }
    }

    fn paused_target(&self, event: &Event) -> Option<usize> {
        let m = match event {
            Event::Tick { m, .. }
            | Event::DiskDone { m, .. }
            | Event::Apply { m, .. }
            | Event::Build { m, .. }
            | Event::InstallRestore { m, .. } => *m,
            Event::Deliver { msg } => (msg.to as usize).checked_sub(1)?,
            Event::SnapshotArrive { id } => self.transfers.get(id)?.to,
            Event::Request { id } => self.open.get(id)?.member,
            Event::LeaseForward { to, .. } => *to,
            Event::LeaseAnswer { from, .. } => *from,
            _ => return None,
        };
        (m < self.members.len() && self.members[m].paused_until > self.now).then_some(m)
    }

    fn handle(&mut self, event: Event) {
        if let Some(m) = self.paused_target(&event) {
            let until = self.members[m].paused_until;
            self.at(until, event);
            return;
        }
        match event {
            Event::Tick { m, life } => {
                if self.alive(m, life) {
                    self.tick(m, life);
                }
            }
            Event::Deliver { msg } => self.deliver(*msg),
            Event::DiskDone { m, life } => {
                if self.alive(m, life) {
                    self.disk_done(m);
                }
            }
            Event::Apply { m, life } => {
                if self.alive(m, life) {
                    self.apply(m);
                }
            }
            Event::Request { id } => self.request(id),
            Event::Deadline { id } => {
                if let Some(r) = self.open.get(&id) {
                    let outcome = if r.request.is_write() {
                        Outcome::Unknown
                    } else {
                        Outcome::Fail
                    };
                    self.complete(id, outcome, Outputs::error("client deadline passed"));
                }
            }
            Event::FaultStart { f } => self.fault_start(f),
            Event::FaultEnd { f } => self.fault_end(f),
            Event::Crash { m } => {
                if !self.healed && self.up(m) {
                    self.log_fault(format!("crash member {} (scheduled)", m + 1));
                    self.crash(m);
                }
            }
            Event::CutLink { f, from, to } => {
                if !self.healed && self.undo.contains_key(&f) {
                    self.log_fault(format!("cut {} -> {} (fault {f})", from + 1, to + 1));
                    self.net.add_cut(f, (from, to));
                }
            }
            Event::Restart { m } => {
                if !self.up(m) {
                    self.start(m);
                }
            }
            Event::ArmIsolation { f } => self.arm_isolation(f),
            Event::SetDisk { m, factor } => {
                if !self.healed {
                    self.members[m].disk_factor = factor;
                }
            }
            Event::Heal => self.heal(),
            Event::MemberOp { op } => self.member_op_step(op),
            Event::Build { m, life } => {
                if self.alive(m, life) {
                    self.build_snapshot(m);
                }
            }
            Event::SnapshotArrive { id } => self.snapshot_arrives(id),
            Event::InstallRestore { m, life } => {
                if self.alive(m, life) {
                    self.install_restore(m);
                }
            }
            Event::WatchOpen { w } => self.watch_open(w),
            Event::WatchRead { w } => self.watch_read(w),
            Event::LeaseForward {
                id,
                from,
                from_life,
                to,
                to_life,
                call,
                lease,
            } => self.lease_forward_arrives(id, from, from_life, to, to_life, call, lease),
            Event::LeaseAnswer {
                id,
                from,
                from_life,
                to,
                answer,
            } => self.lease_answer_arrives(id, from, from_life, to, answer),
            Event::WatchCancel { w } => self.watch_cancel(w),
        }
    }

    /// Runs the clients (and what they spawned) until none is ready.
    fn run_tasks(&mut self) {
        loop {
            let spawned = std::mem::take(&mut *self.spawned.lock());
            if spawned.is_empty() {
                self.exec.run_until_stalled();
                if self.spawned.lock().is_empty() {
                    return;
                }
                continue;
            }
            for task in spawned {
                self.exec.spawn(task);
            }
        }
    }

    fn run(&mut self, setup: &mut dyn FnMut(&SimContext)) {
        let n = self.members.len();
        for m in 0..n {
            self.start(m);
        }
        let chaos = nanos(self.cfg.chaos);
        let quiet = nanos(self.cfg.quiet);
        let plans: Vec<ClientPlan> = plan_workload(
            &mut self.rng,
            &mut self.lease_rng,
            self.lease_ttls,
            self.cfg.clients,
            self.cfg.readers_per_member,
            self.cfg.ops_per_client,
            n,
            self.cfg.keys,
            chaos,
            self.cfg.lease_focus,
            self.cfg.workload == super::Workload::Kv,
        );
        for (c, plan) in plans.into_iter().enumerate() {
            let client = run_client(
                self.board.clone(),
                self.clock.clone(),
                c as u64 + 1,
                n,
                plan,
            );
            let done = TaskDone::new(&self.client_tasks);
            self.exec.spawn(async move {
                client.await;
                drop(done);
            });
        }
        let base = &self.members[0].cfg;
        let context = SimContext {
            board: self.board.clone(),
            clock: self.clock.clone(),
            members: n,
            seed: self.seed,
            spawned: self.spawned.clone(),
            live: self.client_tasks.clone(),
            next_client: AtomicU64::new(0),
            next_watch: self.next_watch.clone(),
            min_ttl: base.tick_interval * base.max_election_tick as u32 * 3 / 2,
            request_timeout: base.request_timeout,
        };
        setup(&context);
        let heal_at = CHAOS_START + chaos;
        if self.cfg.workload == super::Workload::Kv {
            self.plan_watches(CHAOS_START, chaos);
        }
        if self.cfg.faults {
            self.faults = faults::plan(&mut self.rng, CHAOS_START, heal_at, self.cfg.lease_focus);
            for f in 0..self.faults.len() {
                self.at(self.faults[f].start, Event::FaultStart { f });
            }
        }
        self.at(heal_at, Event::Heal);
        let settled = heal_at + quiet;
        if !self.run_until(GIVE_UP_AFTER, |w| {
            w.healed && w.clients_live() == 0 && w.now >= settled && w.member_ops_done()
        }) {
            if !self.halted {
                self.fail(Violation::new(
                    LIVENESS,
                    format!(
                        "the clients did not finish ({} still running, {} tasks in all)",
                        self.clients_live(),
                        self.exec.live()
                    ),
                ));
            }
            return;
        }
        self.final_checks();
    }
}

/// Counts a client task down when it ends.
struct TaskDone(Arc<AtomicUsize>);

impl TaskDone {
    fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        TaskDone(live.clone())
    }
}

impl Drop for TaskDone {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
