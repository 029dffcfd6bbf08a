//! The deterministic simulator: every seed passes on a correct engine,
//! every injected bug is caught by the checker meant to catch it, a seed
//! replays byte for byte, and the faults really happen.
//!
//! `HA_SIM_SEEDS=N` runs N seeds per group size instead of the default
//! (600 with three members, 400 with five: 1,000 per CI run; the default
//! workload includes lease reads). `HA_SIM_LEASE_SEEDS=N` runs N seeds of
//! the lease workload per group size (default 150 with three members, 100
//! with five).

use std::ops::Range;

use ha_raft::InjectedBug;
use ha_raft::sim::{
    ALL_BUGS, Consistency, Counters, HistoryOp, Inputs, LeaseEnding, OpKind, Outcome, Outputs,
    SeedReport, SimConfig, bug_name, check_history, check_history_file, read_history, run_seed,
    summary_line, write_history,
};

fn seeds(default: u64) -> u64 {
    std::env::var("HA_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs `range` and returns the counters, failing with the first failing
/// seed's report.
fn all_pass(members: usize, range: Range<u64>) -> Counters {
    all_pass_with(&SimConfig::new(members), range)
}

fn all_pass_with(cfg: &SimConfig, range: Range<u64>) -> Counters {
    let members = cfg.members;
    let started = std::time::Instant::now();
    let mut totals = Counters::default();
    let mut failing: Vec<SeedReport> = Vec::new();
    let mut worst_unknown: f64 = 0.0;
    let n = range.end - range.start;
    for seed in range {
        let report = run_seed(cfg, seed);
        totals.add(&report.counters);
        worst_unknown = worst_unknown.max(report.counters.unknown_pct());
        if !report.passed() {
            failing.push(report);
        }
    }
    eprintln!(
        "{members} members: {} lease_reads={} lease_hits={} keep_alives={} watch_resumes={} watch_slow={} watch_full={} watch_paused={} watch_progress={} watch_compacted={} watch_cancels={} watch_stopped={} watch_broken={} ({:.2}s per 100 seeds, worst unknown {worst_unknown:.2}%)",
        summary_line(n, failing.len() as u64, &totals),
        totals.lease_reads,
        totals.lease_hits,
        totals.keep_alives,
        totals.watch_resumes,
        totals.watch_slow,
        totals.watch_full,
        totals.watch_paused,
        totals.watch_progress,
        totals.watch_compacted,
        totals.watch_cancels,
        totals.watch_stopped,
        totals.watch_broken,
        started.elapsed().as_secs_f64() * 100.0 / n.max(1) as f64,
    );
    if let Some(first) = failing.first() {
        let seeds: Vec<u64> = failing.iter().map(|r| r.seed).collect();
        panic!(
            "{} of {n} seeds violated a property on a correct engine (seeds {seeds:?}); \
             the first:\n{}",
            failing.len(),
            first.failure_report()
        );
    }
    totals
}

/// The faults really happened: per-seed averages of the coverage counters.
fn assert_coverage(members: usize, seeds: u64, c: &Counters) {
    let per_seed = |x: u64| x as f64 / seeds as f64;
    assert!(
        per_seed(c.crashes) >= 0.5,
        "{members} members: only {:.2} crashes per seed",
        per_seed(c.crashes)
    );
    assert!(
        per_seed(c.partitions) >= 0.5,
        "{members} members: only {:.2} partitions per seed",
        per_seed(c.partitions)
    );
    assert!(
        per_seed(c.leader_changes) >= 1.0,
        "{members} members: only {:.2} leader changes per seed",
        per_seed(c.leader_changes)
    );
    assert!(
        c.unknown_pct() <= 1.0,
        "{members} members: {:.2}% of operations ended unknown",
        c.unknown_pct()
    );
    assert!(
        per_seed(c.conf_changes) >= 0.25,
        "{members} members: only {:.2} membership changes per seed",
        per_seed(c.conf_changes)
    );
    assert!(
        c.snapshots > 0,
        "{members} members: no snapshot was installed"
    );
}

// The seeds are split over several tests so that the test harness spreads
// them over the machine's cores.

#[test]
fn every_seed_passes_with_three_members_part_1() {
    let n = seeds(600) / 2;
    let c = all_pass(3, 0..n);
    assert_coverage(3, n, &c);
}

#[test]
fn every_seed_passes_with_three_members_part_2() {
    let total = seeds(600);
    let n = total - total / 2;
    let c = all_pass(3, total / 2..total);
    assert_coverage(3, n, &c);
}

#[test]
fn every_seed_passes_with_five_members_part_1() {
    let n = seeds(400) / 2;
    let c = all_pass(5, 0..n);
    assert_coverage(5, n, &c);
}

#[test]
fn every_seed_passes_with_five_members_part_2() {
    let total = seeds(400);
    let n = total - total / 2;
    let c = all_pass(5, total / 2..total);
    assert_coverage(5, n, &c);
}

/// Runs seeds 0..200 with `bug` until one fails, and returns its report.
fn first_catch(bug: InjectedBug, members: usize) -> SeedReport {
    first_catch_with(SimConfig::new(members), bug)
}

fn first_catch_with(mut cfg: SimConfig, bug: InjectedBug) -> SeedReport {
    let members = cfg.members;
    cfg.bug = Some(bug);
    for seed in 0..200 {
        let report = run_seed(&cfg, seed);
        if !report.passed() {
            return report;
        }
    }
    panic!(
        "the bug {} went unnoticed for 200 seeds with {members} members",
        bug_name(bug)
    );
}

/// The bug is caught within 200 seeds, and by one of the checkers that
/// should catch it (not by chance, e.g. too many unknown outcomes).
fn caught_by(bug: InjectedBug, expected: &[&str]) -> SeedReport {
    check_caught(first_catch(bug, 3), bug, expected)
}

/// [`caught_by`] under the lease workload.
fn caught_in_lease_runs_by(bug: InjectedBug, expected: &[&str]) -> SeedReport {
    check_caught(first_catch_with(SimConfig::lease(3), bug), bug, expected)
}

fn check_caught(report: SeedReport, bug: InjectedBug, expected: &[&str]) -> SeedReport {
    let first = &report.violations[0];
    assert!(
        expected.contains(&first.property),
        "{} was caught by an unexpected property ({}); expected one of {expected:?}:\n{}",
        bug_name(bug),
        first.property,
        report.failure_report()
    );
    eprintln!(
        "{} caught at seed {}: {first}\nfault schedule:\n  {}",
        bug_name(bug),
        report.seed,
        report.schedule.join("\n  ")
    );
    report
}

#[test]
fn local_reads_are_caught_and_the_history_alone_shows_them() {
    caught_by(
        InjectedBug::LocalReads,
        &["read index covers every earlier commit", "linearizability"],
    );
    // The linearizability checker on its own catches it too (this is the
    // check that also runs on histories of real processes).
    let mut cfg = SimConfig::new(3);
    cfg.bug = Some(InjectedBug::LocalReads);
    let found = (0..200).find(|&seed| {
        let r = run_seed(&cfg, seed);
        !check_history(&r.history).is_empty()
    });
    assert!(
        found.is_some(),
        "the history checker never saw a stale local read in 200 seeds"
    );
}

#[test]
fn acknowledging_before_sync_is_caught() {
    caught_by(
        InjectedBug::AckBeforeSync,
        &[
            "applied only when durable on a quorum",
            "committed entries never change",
            "acknowledged writes survive",
            "linearizability",
        ],
    );
}

#[test]
fn applying_again_after_restart_is_caught() {
    caught_by(
        InjectedBug::ReapplyAfterRestart,
        &[
            "exactly-once apply",
            "linearizability",
            "serializable reads monotonic",
        ],
    );
}

#[test]
fn disabled_dedup_is_caught() {
    caught_by(
        InjectedBug::NoDedup,
        &["exactly-once apply", "linearizability"],
    );
}

#[test]
fn read_contexts_reused_across_restarts_are_caught() {
    caught_by(
        InjectedBug::ReuseReadContext,
        &["read index covers every earlier commit", "linearizability"],
    );
}

/// What a stale lease read trips: the engine told to answer below an index
/// already committed, or the history.
const STALE_READ: &[&str] = &["read index covers every earlier commit", "linearizability"];

#[test]
fn reads_through_raft_lease_based_option_are_caught() {
    caught_in_lease_runs_by(InjectedBug::RaftLeaseBased, STALE_READ);
}

#[test]
fn no_vote_guard_after_a_restart_is_caught() {
    caught_in_lease_runs_by(InjectedBug::NoVoteGuard, STALE_READ);
}

#[test]
fn a_lease_kept_across_a_leader_transfer_is_caught() {
    caught_in_lease_runs_by(InjectedBug::LeaseAcrossTransfer, STALE_READ);
}

#[test]
fn a_lease_renewed_from_counted_heartbeat_responses_is_caught() {
    caught_in_lease_runs_by(InjectedBug::LeaseFromHeartbeatCount, STALE_READ);
}

#[test]
fn a_lease_that_ignores_clock_drift_is_caught() {
    caught_in_lease_runs_by(InjectedBug::LeaseIgnoresDrift, STALE_READ);
}

/// Needs five members: with three, a follower that still asks a deposed
/// leader cannot exist (the new leader needed its vote, or the deposed
/// leader's), so the minority side of a 2/3 split is where it shows.
#[test]
fn a_follower_lease_round_answered_without_the_lease_is_caught() {
    let bug = InjectedBug::FollowerLeaseUnchecked;
    check_caught(first_catch_with(SimConfig::lease(5), bug), bug, STALE_READ);
}

fn lease_seeds(default: u64) -> u64 {
    std::env::var("HA_SIM_LEASE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Lease reads under the faults that threaten them: no violation, and the
/// lease reads really were answered (most by a leader holding its lease).
fn lease_runs_pass(members: usize, range: Range<u64>) {
    let n = range.end - range.start;
    let c = all_pass_with(&SimConfig::lease(members), range.clone());
    assert!(
        c.transfers as f64 / n as f64 >= 0.5 && c.pauses as f64 / n as f64 >= 0.3,
        "{members} members: too few transfers ({}) or pauses ({}) in {n} seeds",
        c.transfers,
        c.pauses
    );
    assert!(
        c.lease_hits as f64 / n as f64 >= 100.0,
        "{members} members: only {} of {} lease reads answered from a lease in {n} seeds",
        c.lease_hits,
        c.lease_reads
    );
    assert!(
        c.crashes as f64 / n as f64 >= 0.5,
        "{members} members: only {} restarts in {n} seeds",
        c.crashes
    );
}

#[test]
fn every_seed_passes_with_lease_reads_three_members() {
    lease_runs_pass(3, 0..lease_seeds(150));
}

#[test]
fn every_seed_passes_with_lease_reads_five_members() {
    lease_runs_pass(5, 0..lease_seeds(100));
}

/// (f) A new leader that expires leases without the promotion reset.
#[test]
fn a_new_leader_expiring_leases_without_the_promotion_reset_is_caught() {
    check_caught(
        first_catch_with(SimConfig::kv(3), InjectedBug::LeaseNoPromotionReset),
        InjectedBug::LeaseNoPromotionReset,
        &["lease safety"],
    );
}

/// (i) A watch that resumes one revision too late.
#[test]
fn a_watch_resuming_one_revision_too_late_is_caught() {
    check_caught(
        first_catch_with(SimConfig::kv(3), InjectedBug::WatchResumeLate),
        InjectedBug::WatchResumeLate,
        &["watch guarantees"],
    );
    // The history's watch records show it on their own (what `ha-sim
    // check` runs on a file).
    let mut cfg = SimConfig::kv(3);
    cfg.bug = Some(InjectedBug::WatchResumeLate);
    let found = (0..200).find(|&seed| {
        check_history(&run_seed(&cfg, seed).history)
            .iter()
            .any(|v| v.property == "watch guarantees")
    });
    assert!(
        found.is_some(),
        "the history's watch check never saw a late resume in 200 seeds"
    );
    eprintln!("the history's watch check alone caught watch-resume-late at seed {found:?}");
}

/// A progress notification ahead of events still to come from history
/// (not bookmarkable).
#[test]
fn a_progress_notification_ahead_of_pending_events_is_caught() {
    check_caught(
        first_catch_with(SimConfig::kv(3), InjectedBug::WatchProgressAhead),
        InjectedBug::WatchProgressAhead,
        &["watch guarantees"],
    );
}

/// A client's cancel that the hub ignores: the cancelled stream is still
/// offered responses.
#[test]
fn a_watch_cancel_the_hub_ignores_is_caught() {
    check_caught(
        first_catch_with(SimConfig::kv(3), InjectedBug::WatchCancelIgnored),
        InjectedBug::WatchCancelIgnored,
        &["watch guarantees"],
    );
}

/// (g) Compacting the log past what the state store holds durably: a
/// crash then restarts the state store below the log's first entry.
#[test]
fn log_compaction_past_the_durable_applied_index_is_caught() {
    caught_by(
        InjectedBug::CompactPastDurable,
        &["no fatal error", "equal state on all members"],
    );
}

/// (h) A restart that ignores the pending-install marker: a crash between
/// the install's steps leaves the state store and the log at different
/// points.
#[test]
fn a_snapshot_install_that_is_not_atomic_across_a_crash_is_caught() {
    caught_by(
        InjectedBug::NonAtomicInstall,
        &["no fatal error", "equal state on all members"],
    );
}

fn kv_seeds(default: u64) -> u64 {
    std::env::var("HA_SIM_KV_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The KV workload (the production MVCC machine on every member): no
/// violation, the faults happened, and transactions and compactions ran.
fn kv_runs_pass(members: usize, range: Range<u64>) {
    let n = range.end - range.start;
    let c = all_pass_with(&SimConfig::kv(members), range);
    assert_coverage(members, n, &c);
    assert!(
        c.txns as f64 / n as f64 >= 20.0 && c.compactions as f64 / n as f64 >= 1.0,
        "{members} members: only {} transactions and {} compactions in {n} seeds",
        c.txns,
        c.compactions
    );
    assert!(
        c.lease_expiries as f64 / n as f64 >= 1.0 && c.keep_alives as f64 / n as f64 >= 10.0,
        "{members} members: only {} lease expiries and {} keep-alives in {n} seeds",
        c.lease_expiries,
        c.keep_alives
    );
    assert!(
        c.watch_events as f64 / n as f64 >= 100.0 && c.watch_resumes as f64 / n as f64 >= 0.5,
        "{members} members: only {} watch events and {} resumes in {n} seeds",
        c.watch_events,
        c.watch_resumes
    );
    // Slow watchers were cancelled and resumed, catch-ups paused on full
    // buffers, progress notifications came, compacted history was skipped.
    assert!(
        c.watch_slow > 0 && c.watch_paused > 0 && c.watch_progress > 0 && c.watch_compacted > 0,
        "{members} members: {} slow-watcher cancels, {} paused catch-ups, {} progress \
         notifications, {} compacted skips in {n} seeds",
        c.watch_slow,
        c.watch_paused,
        c.watch_progress,
        c.watch_compacted
    );
    // Sessions cancelled their own watches and watched again; members'
    // graceful stops (removals) and crashes ended watches that resumed
    // elsewhere.
    assert!(
        c.watch_cancels > 0 && c.watch_stopped > 0 && c.watch_broken > 0,
        "{members} members: {} self-cancels, {} watches ended by a graceful stop, {} by a \
         crash in {n} seeds",
        c.watch_cancels,
        c.watch_stopped,
        c.watch_broken
    );
}

#[test]
fn every_seed_passes_with_the_kv_workload_three_members() {
    kv_runs_pass(3, 0..kv_seeds(100));
}

#[test]
fn every_seed_passes_with_the_kv_workload_five_members() {
    kv_runs_pass(5, 0..kv_seeds(60));
}

/// Under the KV workload, local "linearizable" reads are caught by the KV
/// history check on its own (the check `ha-sim check` runs on files), and
/// re-proposals applied twice by the revision-level checks.
#[test]
fn injected_bugs_are_caught_under_the_kv_workload() {
    let mut cfg = SimConfig::kv(3);
    cfg.bug = Some(InjectedBug::LocalReads);
    let found = (0..200).find(|&seed| {
        check_history(&run_seed(&cfg, seed).history)
            .iter()
            .any(|v| v.property == "linearizability")
    });
    assert!(
        found.is_some(),
        "the KV history check never saw a stale local read in 200 seeds"
    );
    check_caught(
        first_catch_with(SimConfig::kv(3), InjectedBug::NoDedup),
        InjectedBug::NoDedup,
        &["exactly-once", "linearizability"],
    );
}

/// What the lease-end check reports.
const LEASE_END: &str = "lease ends delete their keys in one revision";

/// A lease end that deletes the lease's keys over two revisions: caught
/// by the lease-end check, also on the history alone (what `ha-sim check`
/// runs on a file).
#[test]
fn a_lease_end_deleting_its_keys_over_two_revisions_is_caught() {
    let bug = InjectedBug::LeaseDeletesSplit;
    let report = check_caught(
        first_catch_with(SimConfig::kv(3), bug),
        bug,
        &[LEASE_END, "linearizability"],
    );
    assert!(
        report.violations.iter().any(|v| v.property == LEASE_END),
        "{}",
        report.failure_report()
    );
    assert!(
        check_history(&report.history)
            .iter()
            .any(|v| v.property == LEASE_END),
        "the history alone did not show the split"
    );
}

fn lease_kv_seeds(default: u64) -> u64 {
    std::env::var("HA_SIM_LEASE_KV_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The lease-focused faults and clocks (leaders paused, isolated, slowed,
/// moved; clocks off by up to 20%) under the KV workload: every seed
/// passes (lease safety, lease ends, the KV model), and leases really were
/// kept alive, expired, and had forwarded calls lost.
#[test]
fn every_seed_passes_with_the_kv_workload_under_lease_faults() {
    let n = lease_kv_seeds(60);
    let mut c = Counters::default();
    for (members, range) in [(3, 0..n * 2 / 3), (5, n * 2 / 3..n)] {
        c.add(&all_pass_with(&SimConfig::lease_kv(members), range));
    }
    let per_seed = |x: u64| x as f64 / n.max(1) as f64;
    assert!(
        per_seed(c.lease_expiries) >= 1.0
            && per_seed(c.keep_alives) >= 10.0
            && per_seed(c.leader_changes) >= 1.0
            && c.lease_calls_lost > 0
            && c.lease_hits > 0,
        "{n} seeds: {} lease expiries, {} keep-alives, {} leader changes, {} lost lease \
         calls, {} lease hits",
        c.lease_expiries,
        c.keep_alives,
        c.leader_changes,
        c.lease_calls_lost,
        c.lease_hits
    );
}

/// A KV history file holds `lease_end` records; the file check finds a
/// lease end that left a key in place and an expiry before a kept-alive
/// TTL ran out.
#[test]
fn lease_ends_in_a_kv_history_file_are_checked() {
    // The first seed with a lease end that deleted two keys and an expiry
    // of a lease that was kept alive.
    let kept_then_expired = |h: &[HistoryOp]| {
        h.iter().any(|e| {
            e.outputs.ended == Some(LeaseEnding::Expired)
                && h.iter().any(|o| {
                    o.op == OpKind::KeepAlive
                        && o.outcome == Outcome::Ok
                        && o.inputs.lease == e.inputs.lease
                })
        })
    };
    let two_keys = |h: &[HistoryOp]| {
        h.iter().any(|o| {
            o.op == OpKind::LeaseEnd && o.outputs.keys.as_ref().is_some_and(|k| k.len() >= 2)
        })
    };
    let report = (0..40)
        .map(|seed| run_seed(&SimConfig::kv(3), seed))
        .find(|r| two_keys(&r.history) && kept_then_expired(&r.history))
        .expect("a seed with both kinds of lease ends");
    assert!(report.passed(), "{}", report.failure_report());
    let mut bytes = Vec::new();
    write_history(&report.history, &mut bytes).unwrap();
    let back = read_history(&mut bytes.as_slice()).unwrap();
    assert_eq!(back, report.history);
    assert_eq!(check_history(&back), vec![]);

    // A lease end that deleted a key, but the record (as if the machine
    // had) leaves it attached.
    let mut broken = back.clone();
    let end = broken
        .iter_mut()
        .find(|o| o.op == OpKind::LeaseEnd && o.outputs.keys.as_ref().is_some_and(|k| k.len() >= 2))
        .expect("a lease end that deleted two keys");
    end.outputs.keys.as_mut().unwrap().pop();
    let found = check_history(&broken);
    assert!(
        found.iter().any(|v| v.property == LEASE_END),
        "a lease end that left a key passed: {found:?}"
    );

    // An expiry moved to just after a keep-alive answered for its lease.
    let mut broken = back.clone();
    let kept: Vec<(i64, u64)> = broken
        .iter()
        .filter(|o| o.op == OpKind::KeepAlive && o.outcome == Outcome::Ok)
        .filter_map(|o| Some((o.inputs.lease?, o.complete_ns)))
        .collect();
    let end = broken
        .iter_mut()
        .find(|o| {
            o.outputs.ended == Some(LeaseEnding::Expired)
                && kept.iter().any(|(l, _)| Some(*l) == o.inputs.lease)
        })
        .expect("an expired lease that was kept alive");
    let (_, t) = kept
        .iter()
        .find(|(l, _)| Some(*l) == end.inputs.lease)
        .copied()
        .unwrap();
    end.invoke_ns = t + 1;
    end.complete_ns = t + 1;
    let found = check_history(&broken);
    assert!(
        found.iter().any(|v| v.property == "lease safety"),
        "an early expiry passed: {found:?}"
    );
}

/// A KV seed (leases, watches) replays exactly: the same history and
/// counters twice.
#[test]
fn a_kv_seed_replays_exactly() {
    let cfg = SimConfig::kv(3);
    for seed in [4, 9] {
        let a = run_seed(&cfg, seed);
        let b = run_seed(&cfg, seed);
        assert!(a.passed(), "{}", a.failure_report());
        assert_eq!(a.counters, b.counters, "seed {seed}: counters differ");
        assert!(a.history == b.history, "seed {seed}: histories differ");
    }
}

#[test]
fn every_bug_has_a_test_above() {
    // A new bug switch needs its own catch test.
    assert_eq!(ALL_BUGS.len(), 18);
}

#[test]
fn the_same_seed_gives_byte_identical_traces() {
    for seed in 0..20u64 {
        let mut cfg = SimConfig::new(if seed % 2 == 0 { 3 } else { 5 });
        cfg.trace = true;
        let a = run_seed(&cfg, seed);
        let b = run_seed(&cfg, seed);
        assert!(!a.trace.is_empty(), "seed {seed}: tracing recorded nothing");
        assert!(
            a.trace == b.trace,
            "seed {seed}: two runs traced differently; first difference at line {}",
            a.trace
                .iter()
                .zip(&b.trace)
                .position(|(x, y)| x != y)
                .unwrap_or(a.trace.len().min(b.trace.len()))
        );
        assert_eq!(a.history, b.history, "seed {seed}: histories differ");
        assert_eq!(a.counters, b.counters, "seed {seed}: counters differ");
        // Tracing observes; it changes nothing.
        cfg.trace = false;
        let c = run_seed(&cfg, seed);
        assert_eq!(c.history, a.history, "seed {seed}: tracing changed the run");
    }
}

/// A KV history file holds each watch session's reads (`watch` records);
/// `check_history_file` rechecks them against the acknowledged writes: a
/// record that lost an acknowledged event fails.
#[test]
fn watch_records_in_a_kv_history_file_are_checked() {
    let report = run_seed(&SimConfig::kv(3), 2);
    assert!(report.passed(), "{}", report.failure_report());
    let watches = report
        .history
        .iter()
        .filter(|o| o.op == OpKind::Watch)
        .count();
    assert!(watches > 0, "no watch records in the history");
    let dir = std::env::temp_dir().join(format!("ha-sim-watch-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("history.jsonl");
    let mut bytes = Vec::new();
    write_history(&report.history, &mut bytes).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(read_history(&mut bytes.as_slice()).unwrap(), report.history);
    assert_eq!(check_history_file(&path).unwrap(), vec![]);

    // Break it: drop, from some watch record, an event of an acknowledged
    // put that a later response covers.
    let mut broken = report.history.clone();
    let acked: Vec<(i64, String)> = broken
        .iter()
        .filter(|o| o.op == OpKind::Put && o.outcome == Outcome::Ok)
        .filter_map(|o| o.outputs.revision.map(|r| (r, o.inputs.key.clone())))
        .collect();
    let dropped = broken.iter_mut().find_map(|o| {
        let log = o.outputs.watch.as_mut()?;
        let last = log.reads.last()?.revision;
        log.reads.iter_mut().find_map(|r| {
            let at = r.events.iter().position(|e| {
                e.put && e.mod_revision < last && acked.contains(&(e.mod_revision, e.key.clone()))
            })?;
            Some(r.events.remove(at))
        })
    });
    assert!(dropped.is_some(), "no watch read an acknowledged put");
    let mut bytes = Vec::new();
    write_history(&broken, &mut bytes).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let found = check_history_file(&path).unwrap();
    assert!(
        found.iter().any(|v| v.property == "watch guarantees"),
        "a watch record without {dropped:?} passed: {found:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_history_file_round_trips_and_is_checked() {
    let report = run_seed(&SimConfig::new(3), 3);
    assert!(report.passed(), "{}", report.failure_report());
    let dir = std::env::temp_dir().join(format!("ha-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("history.jsonl");
    let mut bytes = Vec::new();
    write_history(&report.history, &mut bytes).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let back = read_history(&mut bytes.as_slice()).unwrap();
    assert_eq!(back, report.history);
    assert_eq!(check_history_file(&path).unwrap(), vec![]);

    // Break it: a read after the last acknowledged write of its register
    // claims to see the register's first value.
    let mut broken = report.history.clone();
    let last_write = broken
        .iter()
        .filter(|o| o.op == OpKind::Write && o.outcome == Outcome::Ok)
        .max_by_key(|o| o.complete_ns)
        .cloned()
        .unwrap();
    let first_write = broken
        .iter()
        .filter(|o| {
            o.op == OpKind::Write
                && o.outcome == Outcome::Ok
                && o.inputs.key == last_write.inputs.key
                && o.id != last_write.id
        })
        .min_by_key(|o| o.outputs.index)
        .cloned()
        .unwrap();
    let id = broken.len() as u64;
    broken.push(HistoryOp {
        id,
        client: 99,
        member: 1,
        incarnation: 1,
        op: OpKind::Read,
        inputs: Inputs {
            key: last_write.inputs.key.clone(),
            consistency: Some(Consistency::Linearizable),
            ..Inputs::default()
        },
        invoke_ns: last_write.complete_ns + 1,
        complete_ns: last_write.complete_ns + 2,
        outcome: Outcome::Ok,
        outputs: Outputs {
            value: first_write.inputs.value,
            index: first_write.outputs.index,
            ..Outputs::default()
        },
    });
    let mut bytes = Vec::new();
    write_history(&broken, &mut bytes).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let found = check_history_file(&path).unwrap();
    assert!(
        found
            .iter()
            .any(|v| v.property == "linearizability" && v.ops.contains(&id)),
        "a stale read went unnoticed: {found:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failure_report_names_the_seed_the_schedule_and_the_history() {
    let mut cfg = SimConfig::new(3);
    cfg.bug = Some(InjectedBug::LocalReads);
    let report = (0..200)
        .map(|seed| run_seed(&cfg, seed))
        .find(|r| r.violations.iter().any(|v| v.property == "linearizability"))
        .expect("a seed with a stale read");
    let text = report.failure_report();
    assert!(text.contains(&format!("seed {} ", report.seed)), "{text}");
    assert!(text.contains("fault schedule:"), "{text}");
    assert!(text.contains("first violation:"), "{text}");
    assert!(text.contains("history around it:"), "{text}");
    assert!(text.contains("--bug local-reads"), "{text}");
    let line = summary_line(1, 1, &report.counters);
    assert!(
        line.starts_with("sim seeds=1 violations=1 unknown_pct=")
            && line.ends_with(&format!(
                " conf_changes={} snapshots={} watch_events=0 lease_expiries=0 compactions=0 txns=0",
                report.counters.conf_changes, report.counters.snapshots
            )),
        "{line}"
    );
}
