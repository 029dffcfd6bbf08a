//! Code under test as clients of a simulated group (`run_seed_with`,
//! `SimKv`): compare-and-swap increments, a watch that must see every one
//! of them in order across member crashes, and a leased key kept alive,
//! then revoked — under the simulator's faults, beside its own workload.
//!
//! `HA_SIM_CLIENT_SEEDS=N` runs N seeds per group size (default 12).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ha_core::{
    Compare, CompareOp, CompareTarget, Error, KeyRange, KvClient, KvOptions, LeaseGrantRequest,
    PutRequest, RangeRequest, TxnOp, TxnRequest, WatchRequest,
};
use ha_raft::sim::{SeedReport, SimConfig, SimContext, SimKv, run_seed_with};
use parking_lot::Mutex;

const COUNTER: &str = "/counter";
const INCREMENTS: u64 = 60;

fn seeds() -> u64 {
    std::env::var("HA_SIM_CLIENT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
}

#[derive(Default)]
struct Seen {
    /// (value, revision) of every increment acknowledged to a client.
    acked: Vec<(u64, i64)>,
    /// (value, revision) of every change the watch delivered, in order.
    watched: Vec<(u64, i64)>,
    /// Watches re-opened after a cancellation.
    resumed: u64,
    /// Progress notifications: (revision, how many changes the watch had
    /// delivered when it came). Every change at or below the revision must
    /// be among those (bookmarkable).
    progress: Vec<(i64, usize)>,
    /// The leased key: present while kept alive, gone after the revoke.
    lease_checks: Vec<String>,
}

fn value_of(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Reads the counter and adds one if nobody changed it meanwhile, until it
/// reaches `INCREMENTS`.
async fn incrementer(kv: SimKv, clock: Arc<dyn ha_core::Clock>, seen: Arc<Mutex<Seen>>) {
    loop {
        // Spread over the fault window.
        clock.sleep(Duration::from_millis(180)).await;
        let got = kv
            .range(
                RangeRequest::new(KeyRange::key(COUNTER)),
                KvOptions::default(),
            )
            .await;
        let (value, mod_revision) = match got {
            Ok(r) => r
                .kvs
                .first()
                .map_or((0, 0), |kv| (value_of(&kv.value), kv.mod_revision)),
            Err(_) => {
                clock.sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if value >= INCREMENTS {
            return;
        }
        let next = value + 1;
        let txn = TxnRequest {
            compare: vec![Compare::key(
                COUNTER,
                CompareOp::Equal,
                CompareTarget::ModRevision(mod_revision),
            )],
            success: vec![TxnOp::Put(PutRequest::new(COUNTER, next.to_string()))],
            failure: vec![],
        };
        match kv.txn(txn, KvOptions::default()).await {
            Ok(r) if r.succeeded => seen.lock().acked.push((next, r.header.revision)),
            Ok(_) => {}
            Err(_) => clock.sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Watches the counter from revision 1 until it saw the last increment;
/// a cancelled watch resumes from where it stopped.
async fn watcher(kv: SimKv, clock: Arc<dyn ha_core::Clock>, seen: Arc<Mutex<Seen>>) {
    let mut from = 1;
    loop {
        let mut request = WatchRequest::new(KeyRange::key(COUNTER)).with_progress_notify();
        request.start_revision = from;
        let mut stream = match kv.watch(request).await {
            Ok(s) => s,
            Err(_) => {
                clock.sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut responses = 0u64;
        while let Some(item) = stream.next().await {
            responses += 1;
            if responses % 5 == 0 {
                stream.request_progress();
            }
            match item {
                Ok(response) if response.events.is_empty() => {
                    let mut s = seen.lock();
                    let delivered = s.watched.len();
                    s.progress.push((response.header.revision, delivered));
                    from = from.max(response.header.revision + 1);
                }
                Ok(response) => {
                    for e in &response.events {
                        let v = value_of(&e.kv.value);
                        seen.lock().watched.push((v, e.kv.mod_revision));
                        if v >= INCREMENTS {
                            return;
                        }
                    }
                    from = from.max(response.header.revision + 1);
                }
                Err(Error::WatchCancelled {
                    resume_revision, ..
                }) => {
                    from = from.max(resume_revision);
                    seen.lock().resumed += 1;
                    break;
                }
                Err(e) => panic!("watch ended with {e}"),
            }
        }
        clock.sleep(Duration::from_millis(10)).await;
    }
}

/// Grants a lease, attaches a key, renews it for a while, revokes it; the
/// key must be there before and gone after.
async fn leaser(kv: SimKv, clock: Arc<dyn ha_core::Clock>, seen: Arc<Mutex<Seen>>) {
    let lease = loop {
        match kv
            .lease_grant(
                LeaseGrantRequest::new(Duration::from_secs(3)),
                KvOptions::default(),
            )
            .await
        {
            Ok(l) => break l.id,
            Err(_) => clock.sleep(Duration::from_millis(50)).await,
        }
    };
    let mut put = PutRequest::new("/leased", "x");
    put.lease = lease;
    while kv.put(put.clone(), KvOptions::default()).await.is_err() {
        clock.sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..8 {
        clock.sleep(Duration::from_millis(400)).await;
        if let Err(e) = kv.lease_keep_alive_once(lease, KvOptions::default()).await {
            seen.lock()
                .lease_checks
                .push(format!("renewal failed: {e}"));
        }
    }
    loop {
        match kv.lease_revoke(lease, KvOptions::default()).await {
            Ok(_) | Err(Error::LeaseNotFound { .. }) => break,
            Err(_) => clock.sleep(Duration::from_millis(50)).await,
        }
    }
    loop {
        match kv
            .range(
                RangeRequest::new(KeyRange::key("/leased")),
                KvOptions::default(),
            )
            .await
        {
            Ok(r) => {
                if !r.kvs.is_empty() {
                    seen.lock()
                        .lease_checks
                        .push("the leased key outlived its revoked lease".to_owned());
                }
                return;
            }
            Err(_) => clock.sleep(Duration::from_millis(50)).await,
        }
    }
}

fn setup(seen: &Arc<Mutex<Seen>>) -> impl FnMut(&SimContext) + '_ {
    move |ctx: &SimContext| {
        let n = ctx.members();
        for c in 0..3 {
            ctx.run_client(incrementer(ctx.client(c % n), ctx.clock(), seen.clone()));
        }
        ctx.run_client(watcher(ctx.client(n - 1), ctx.clock(), seen.clone()));
        ctx.run_client(leaser(ctx.client(1 % n), ctx.clock(), seen.clone()));
    }
}

fn check(report: &SeedReport, seen: &Seen) {
    let seed = report.seed;
    assert!(report.passed(), "seed {seed}: {}", report.failure_report());
    // The watch saw 1, 2, ..., INCREMENTS, at increasing revisions.
    let values: Vec<u64> = seen.watched.iter().map(|(v, _)| *v).collect();
    let expected: Vec<u64> = (1..=INCREMENTS).collect();
    assert_eq!(values, expected, "seed {seed}: the watch's values");
    assert!(
        seen.watched.windows(2).all(|w| w[0].1 < w[1].1),
        "seed {seed}: watch revisions not increasing: {:?}",
        seen.watched
    );
    // Every acknowledged increment is the change the watch saw at its
    // revision: none lost, none applied twice.
    for (v, rev) in &seen.acked {
        assert!(
            seen.watched.contains(&(*v, *rev)),
            "seed {seed}: increment to {v} acknowledged at revision {rev}, not watched there"
        );
    }
    // Bookmarkable: a progress notification at R came after every change
    // at or below R.
    for &(r, delivered) in &seen.progress {
        for (v, rev) in &seen.acked {
            if *rev <= r {
                assert!(
                    seen.watched[..delivered].contains(&(*v, *rev)),
                    "seed {seed}: progress at {r} came before the change to {v} at {rev}"
                );
            }
        }
    }
    let mut acked: Vec<u64> = seen.acked.iter().map(|(v, _)| *v).collect();
    acked.sort_unstable();
    acked.dedup();
    assert_eq!(
        acked.len(),
        seen.acked.len(),
        "seed {seed}: a value acked twice"
    );
    assert!(
        seen.lease_checks
            .iter()
            .all(|c| c.starts_with("renewal failed")),
        "seed {seed}: {:?}",
        seen.lease_checks
    );
}

fn run(members: usize, seed: u64) -> (SeedReport, Seen) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut cfg = SimConfig::kv(members);
    cfg.clients = 4;
    cfg.ops_per_client = 80;
    let report = run_seed_with(&cfg, seed, setup(&seen));
    let seen = std::mem::take(&mut *seen.lock());
    (report, seen)
}

#[test]
fn code_under_test_runs_as_clients_under_faults_and_loses_nothing() {
    let mut resumed = 0;
    let mut acked = 0;
    let mut progress = 0;
    for members in [3, 5] {
        for seed in 0..seeds() {
            let (report, seen) = run(members, seed);
            check(&report, &seen);
            resumed += seen.resumed;
            acked += seen.acked.len();
            progress += seen.progress.len();
        }
    }
    eprintln!(
        "acked increments {acked}, watch resumes {resumed}, progress notifications {progress}"
    );
    // The faults reached the clients: some watch was cut by a crash.
    assert!(resumed > 0, "no watch was ever resumed");
    assert!(progress > 0, "no progress notification");
}

#[test]
fn a_run_with_clients_replays_from_its_seed() {
    let (a, sa) = run(3, 5);
    let (b, sb) = run(3, 5);
    assert_eq!(a.counters, b.counters);
    assert_eq!(a.history, b.history);
    assert_eq!(sa.acked, sb.acked);
    assert_eq!(sa.watched, sb.watched);
}
