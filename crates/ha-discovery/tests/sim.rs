//! The recipes' real code inside the deterministic simulator
//! (`ha_raft::sim::run_seed_with`): sessions, the mutex and the election
//! run on the simulator's executor in virtual time, as clients of a
//! simulated group under partitions, crashes, pauses, clock drift,
//! membership changes and leader transfers.
//!
//! What must hold, seed after seed:
//! - **a lock is never granted twice**: every action a holder takes while
//!   its guard says it still holds the lock (`!is_lost()`), recorded with
//!   the guard's fencing token at that virtual instant, comes in
//!   non-decreasing token order — an older holder never acts after a newer
//!   one did;
//! - **at most one leader at a time**, the same way for the election's
//!   leaderships;
//! - the lock-protected counter loses no update: each holder reads the
//!   counter and writes it back plus one, both as actions under the lock;
//! - holders paused past their session's TTL (a GC pause) find their
//!   guard lost, and a write with their stale fencing token is refused by
//!   the resource's `Fence` once a newer holder wrote.
//!
//! `HA_SIM_RECIPE_SEEDS=N` runs N seeds per group size (default 20).

use std::sync::Arc;
use std::time::Duration;

use ha_discovery::{
    Election, Fence, FencingToken, Mutex, RecipeEnv, Session, Spawn, ha_core::Clock,
};
use ha_raft::sim::{SeedReport, SimConfig, SimContext, SimKv, run_seed_with};
use parking_lot::Mutex as SyncMutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CLIENTS: usize = 5;
const ROUNDS: usize = 12;
const TTL: Duration = Duration::from_secs(1);

fn seeds() -> u64 {
    std::env::var("HA_SIM_RECIPE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

/// One action of a holder (lock or leadership), at a virtual instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Action {
    at_ns: u128,
    token: i64,
    client: usize,
}

#[derive(Default)]
struct Shared {
    /// Actions under the lock, in the order they happened.
    locked: Vec<Action>,
    /// Actions as leader, in the order they happened.
    leading: Vec<Action>,
    /// The lock-protected counter (a resource outside the group).
    counter: u64,
    /// Increments made (each read-then-write under the lock).
    increments: u64,
    /// Holders that found their guard lost after a pause.
    paused_and_lost: u64,
    /// Stale-token writes the fence refused.
    fenced_off: u64,
    /// Stale-token writes the fence accepted although a newer holder had
    /// written: must stay 0.
    stale_accepted: u64,
    acquisitions: u64,
    leaderships: u64,
}

struct Client {
    kv: SimKv,
    clock: Arc<dyn Clock>,
    spawner: Arc<dyn Spawn>,
    shared: Arc<SyncMutex<Shared>>,
    fence: Arc<Fence>,
    start: std::time::Instant,
    id: usize,
    rng: StdRng,
}

impl Client {
    fn now_ns(&self) -> u128 {
        self.clock.now().duration_since(self.start).as_nanos()
    }

    /// An action now, with `token`.
    fn action(&self, token: FencingToken) -> Action {
        Action {
            at_ns: self.now_ns(),
            token: token.0,
            client: self.id,
        }
    }

    async fn sleep_ms(&self, ms: u64) {
        self.clock.sleep(Duration::from_millis(ms)).await;
    }

    /// A session, retried until the group answers.
    async fn session(&self) -> Session {
        loop {
            let env = RecipeEnv::new(self.clock.clone(), self.spawner.clone());
            match Session::builder(self.kv.clone())
                .ttl(TTL)
                .env(env)
                .start()
                .await
            {
                Ok(s) => return s,
                Err(_) => self.sleep_ms(100).await,
            }
        }
    }

    /// Lock rounds: act under the lock (read the counter, write it plus
    /// one), sometimes pausing past the TTL in the middle.
    async fn lock_rounds(mut self) {
        let mut session = self.session().await;
        for _ in 0..ROUNDS {
            if session.is_lost() {
                let _ = session.close().await;
                session = self.session().await;
            }
            let mutex = Mutex::new(&session, "/locks/counter");
            let guard = match mutex.lock_with_timeout(Duration::from_secs(4)).await {
                Ok(g) => g,
                Err(_) => {
                    self.sleep_ms(50).await;
                    continue;
                }
            };
            let token = guard.fencing_token();
            self.shared.lock().acquisitions += 1;
            let think = self.rng.gen_range(0..40);
            self.sleep_ms(think).await;
            // Read under the lock.
            let read = if guard.is_lost() {
                None
            } else {
                let mut s = self.shared.lock();
                s.locked.push(self.action(token));
                Some(s.counter)
            };
            // Sometimes the whole client process pauses past the TTL while
            // holding (renewals stall too): the Jepsen scenario.
            let pause = self.rng.gen_bool(0.1);
            let wait = if pause {
                let d = 2 * TTL;
                self.kv.pause(d);
                d
            } else {
                Duration::from_millis(self.rng.gen_range(0..40))
            };
            self.clock.sleep(wait).await;
            if let Some(value) = read {
                if guard.is_lost() {
                    self.stale_write(token, pause);
                } else {
                    let mut s = self.shared.lock();
                    s.locked.push(self.action(token));
                    if self.fence.check(token).is_ok() {
                        s.counter = value + 1;
                        s.increments += 1;
                    }
                }
            }
            let _ = guard.unlock().await;
        }
        let _ = session.close().await;
    }

    /// A holder that lost its lock writes anyway, as a buggy client
    /// would: the fence must refuse it if a newer holder wrote.
    fn stale_write(&self, token: FencingToken, paused: bool) {
        let mut s = self.shared.lock();
        if paused {
            s.paused_and_lost += 1;
        }
        let newer_wrote = self.fence.highest() > token;
        match self.fence.check(token) {
            Ok(()) if newer_wrote => s.stale_accepted += 1,
            Ok(()) => {}
            Err(_) => s.fenced_off += 1,
        }
    }

    /// Campaign rounds: lead for a while, acting as leader, then resign.
    async fn election_rounds(mut self) {
        let mut session = self.session().await;
        for round in 0..ROUNDS / 2 {
            if session.is_lost() {
                let _ = session.close().await;
                session = self.session().await;
            }
            let election = Election::new(&session, "/elect/job");
            let value = format!("client-{}-{round}", self.id);
            let campaign = election.campaign(value);
            let leadership = match futures::future::select(
                Box::pin(campaign),
                Box::pin(self.clock.sleep(Duration::from_secs(4))),
            )
            .await
            {
                futures::future::Either::Left((Ok(l), _)) => l,
                _ => continue,
            };
            self.shared.lock().leaderships += 1;
            let token = leadership.fencing_token();
            for _ in 0..3 {
                let think = self.rng.gen_range(5..60);
                self.sleep_ms(think).await;
                if leadership.is_lost() {
                    break;
                }
                let action = self.action(token);
                self.shared.lock().leading.push(action);
            }
            let _ = leadership.resign().await;
        }
        let _ = session.close().await;
    }
}

fn setup(shared: &Arc<SyncMutex<Shared>>) -> impl FnMut(&SimContext) + '_ {
    move |ctx: &SimContext| {
        let clock = ctx.clock();
        let start = clock.now();
        let spawner: Arc<dyn Spawn> = Arc::new(ctx.spawner());
        let fence = Arc::new(Fence::new());
        for id in 0..CLIENTS + 3 {
            let client = Client {
                kv: ctx.client(id % ctx.members()),
                clock: clock.clone(),
                spawner: spawner.clone(),
                shared: shared.clone(),
                fence: fence.clone(),
                start,
                id,
                rng: StdRng::seed_from_u64(ctx.seed() * 1000 + id as u64),
            };
            if id < CLIENTS {
                ctx.run_client(client.lock_rounds());
            } else {
                ctx.run_client(client.election_rounds());
            }
        }
    }
}

/// Tokens never go back: an older holder never acts after a newer one.
fn check_order(what: &str, seed: u64, actions: &[Action]) {
    for w in actions.windows(2) {
        assert!(
            w[1].token >= w[0].token,
            "seed {seed}: {what} granted twice: client {} acted with token {} at {} ns \
             after client {} had acted with the newer token {} at {} ns",
            w[1].client,
            w[1].token,
            w[1].at_ns,
            w[0].client,
            w[0].token,
            w[0].at_ns,
        );
    }
}

fn run(members: usize, seed: u64) -> (SeedReport, Shared) {
    let shared = Arc::new(SyncMutex::new(Shared::default()));
    let mut cfg = SimConfig::kv(members);
    // A lighter built-in workload beside the recipes.
    cfg.clients = 3;
    cfg.ops_per_client = 60;
    cfg.chaos = Duration::from_secs(8);
    let report = run_seed_with(&cfg, seed, setup(&shared));
    let shared = std::mem::take(&mut *shared.lock());
    (report, shared)
}

#[test]
fn recipes_in_the_simulator_never_grant_a_lock_or_leadership_twice() {
    let mut totals = Shared::default();
    for members in [3, 5] {
        for seed in 0..seeds() {
            let (report, s) = run(members, seed);
            assert!(report.passed(), "seed {seed}: {}", report.failure_report());
            check_order("the lock", seed, &s.locked);
            check_order("leadership", seed, &s.leading);
            assert_eq!(
                s.counter, s.increments,
                "seed {seed}: the lock-protected counter lost an update"
            );
            assert_eq!(
                s.stale_accepted, 0,
                "seed {seed}: a stale token was accepted"
            );
            totals.acquisitions += s.acquisitions;
            totals.leaderships += s.leaderships;
            totals.increments += s.increments;
            totals.paused_and_lost += s.paused_and_lost;
            totals.fenced_off += s.fenced_off;
        }
    }
    eprintln!(
        "acquisitions {}, increments {}, leaderships {}, paused holders that lost the lock {}, \
         stale writes fenced off {}",
        totals.acquisitions,
        totals.increments,
        totals.leaderships,
        totals.paused_and_lost,
        totals.fenced_off
    );
    // The runs did what they claim: contention, leadership changes, and
    // holders paused past their TTL.
    assert!(totals.acquisitions > 100, "too few acquisitions");
    assert!(totals.leaderships > 20, "too few leaderships");
    assert!(totals.paused_and_lost > 0, "no paused holder lost its lock");
}

#[test]
fn a_recipe_run_replays_from_its_seed() {
    let (a, sa) = run(3, 3);
    let (b, sb) = run(3, 3);
    assert_eq!(a.history, b.history);
    assert_eq!(sa.locked, sb.locked);
    assert_eq!(sa.leading, sb.leading);
}
