//! Client-side load balancing: pickers, zone preference and outlier
//! ejection (Envoy's consecutive-errors detector with a cap on the
//! ejected fraction).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ha_core::Clock;
use parking_lot::Mutex as SyncMutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::error::{DiscoveryError, DiscoveryResult};
use super::health::stable_hash;
use super::instance::ServiceInstance;

/// What a picker may use besides the candidates.
#[derive(Clone, Copy, Debug, Default)]
pub struct PickContext<'a> {
    /// The request's affinity key ([`ConsistentHash`] uses it).
    pub key: Option<&'a [u8]>,
}

/// Calls in flight per instance id, for [`LeastOutstanding`].
pub trait Outstanding {
    /// Calls in flight to the instance `id`.
    fn outstanding(&self, id: &str) -> usize;
}

/// Chooses one of the candidates (never empty when called).
pub trait Picker: Send + Sync + 'static {
    /// The index of the chosen candidate in `candidates`.
    fn pick(
        &self,
        candidates: &[ServiceInstance],
        ctx: &PickContext<'_>,
        outstanding: &dyn Outstanding,
    ) -> usize;
}

/// Each candidate in turn.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round-robin picker.
    pub fn new() -> Self {
        RoundRobin::default()
    }
}

impl Picker for RoundRobin {
    fn pick(&self, c: &[ServiceInstance], _: &PickContext<'_>, _: &dyn Outstanding) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % c.len()
    }
}

/// A candidate at random, in proportion to its weight (all at random
/// when every weight is 0).
#[derive(Debug)]
pub struct WeightedRandom {
    rng: SyncMutex<StdRng>,
}

impl WeightedRandom {
    /// Seeded from the OS.
    pub fn new() -> Self {
        WeightedRandom {
            rng: SyncMutex::new(StdRng::from_entropy()),
        }
    }
    /// Seeded: the same seed picks the same sequence (tests, simulation).
    pub fn seeded(seed: u64) -> Self {
        WeightedRandom {
            rng: SyncMutex::new(StdRng::seed_from_u64(seed)),
        }
    }
}

impl Default for WeightedRandom {
    fn default() -> Self {
        WeightedRandom::new()
    }
}

impl Picker for WeightedRandom {
    fn pick(&self, c: &[ServiceInstance], _: &PickContext<'_>, _: &dyn Outstanding) -> usize {
        let total: u64 = c.iter().map(|i| u64::from(i.weight)).sum();
        let mut rng = self.rng.lock();
        if total == 0 {
            return rng.gen_range(0..c.len());
        }
        let mut point = rng.gen_range(0..total);
        for (n, i) in c.iter().enumerate() {
            let w = u64::from(i.weight);
            if point < w {
                return n;
            }
            point -= w;
        }
        c.len() - 1
    }
}

/// nginx's smooth weighted round-robin: over any window of
/// `sum(weights)` picks each candidate is chosen exactly `weight` times,
/// interleaved rather than in bursts.
#[derive(Debug, Default)]
pub struct SmoothWeightedRoundRobin {
    current: SyncMutex<HashMap<String, i64>>,
}

impl SmoothWeightedRoundRobin {
    /// A smooth weighted round-robin picker.
    pub fn new() -> Self {
        SmoothWeightedRoundRobin::default()
    }
}

impl Picker for SmoothWeightedRoundRobin {
    fn pick(&self, c: &[ServiceInstance], _: &PickContext<'_>, _: &dyn Outstanding) -> usize {
        let mut current = self.current.lock();
        // Forget instances that left, so a returning one starts fresh.
        current.retain(|id, _| c.iter().any(|i| i.id == *id));
        let total: i64 = c.iter().map(|i| i64::from(i.weight)).sum();
        if total == 0 {
            return 0;
        }
        let mut best = 0;
        let mut best_weight = i64::MIN;
        for (n, i) in c.iter().enumerate() {
            let cw = current.entry(i.id.clone()).or_insert(0);
            *cw += i64::from(i.weight);
            if *cw > best_weight {
                best_weight = *cw;
                best = n;
            }
        }
        if let Some(cw) = current.get_mut(&c[best].id) {
            *cw -= total;
        }
        best
    }
}

/// Consistent hashing by the request's key: weighted rendezvous hashing
/// (the same key goes to the same instance; when an instance leaves, only
/// its keys move). Without a key, the first candidate.
#[derive(Debug, Default)]
pub struct ConsistentHash;

impl ConsistentHash {
    /// A consistent-hash picker.
    pub fn new() -> Self {
        ConsistentHash
    }
}

impl Picker for ConsistentHash {
    fn pick(&self, c: &[ServiceInstance], ctx: &PickContext<'_>, _: &dyn Outstanding) -> usize {
        let key = ctx.key.unwrap_or_default();
        let mut best = 0;
        let mut best_score = f64::NEG_INFINITY;
        for (n, i) in c.iter().enumerate() {
            if i.weight == 0 {
                continue;
            }
            // Weighted rendezvous: -w / ln(u), u uniform in (0, 1).
            let h = stable_hash(&[i.id.as_bytes(), key]);
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = -f64::from(i.weight) / u.ln();
            if score > best_score {
                best_score = score;
                best = n;
            }
        }
        best
    }
}

/// The candidate with the fewest calls in flight (ties: round-robin).
#[derive(Debug, Default)]
pub struct LeastOutstanding {
    next: AtomicUsize,
}

impl LeastOutstanding {
    /// A least-outstanding-requests picker.
    pub fn new() -> Self {
        LeastOutstanding::default()
    }
}

impl Picker for LeastOutstanding {
    fn pick(&self, c: &[ServiceInstance], _: &PickContext<'_>, o: &dyn Outstanding) -> usize {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..c.len())
            .map(|k| (start + k) % c.len())
            .min_by_key(|&n| o.outstanding(&c[n].id))
            .unwrap_or(0)
    }
}

/// Outlier ejection and zone preference.
#[derive(Clone, Debug, PartialEq)]
pub struct BalancerConfig {
    /// Prefer instances in this zone when any is available.
    pub local_zone: Option<String>,
    /// Consecutive errors that eject an instance (0: never eject).
    pub consecutive_errors: u32,
    /// First ejection's length; the n-th consecutive ejection lasts n
    /// times this, up to `max_ejection`.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// At most this fraction of the candidates is ejected at once (at
    /// least one instance can always be ejected when this is above 0).
    pub max_ejected_fraction: f64,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            local_zone: None,
            consecutive_errors: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_fraction: 0.5,
        }
    }
}

impl BalancerConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`DiscoveryError::InvalidConfig`] for a fraction outside `[0, 1]`
    /// or a base ejection longer than the maximum.
    pub fn validate(self) -> DiscoveryResult<Self> {
        if !(0.0..=1.0).contains(&self.max_ejected_fraction) {
            return Err(DiscoveryError::InvalidConfig {
                reason: "max_ejected_fraction must be within [0, 1]",
            });
        }
        if self.base_ejection > self.max_ejection {
            return Err(DiscoveryError::InvalidConfig {
                reason: "base_ejection must not exceed max_ejection",
            });
        }
        Ok(self)
    }
}

#[derive(Debug, Default)]
struct InstanceStats {
    outstanding: usize,
    consecutive_errors: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

#[derive(Default)]
struct Stats {
    by_id: HashMap<String, InstanceStats>,
    /// Candidates at the last pick: the base of the ejected fraction.
    candidates: usize,
}

impl Outstanding for Stats {
    fn outstanding(&self, id: &str) -> usize {
        self.by_id.get(id).map_or(0, |s| s.outstanding)
    }
}

/// A picker with zone preference and outlier ejection.
///
/// [`LoadBalancer::pick`] returns a [`Call`]; report its outcome with
/// [`Call::success`] or [`Call::failure`] (dropping it reports nothing
/// and just ends the call).
pub struct LoadBalancer {
    picker: Box<dyn Picker>,
    config: BalancerConfig,
    clock: Arc<dyn Clock>,
    stats: Arc<SyncMutex<Stats>>,
}

impl fmt::Debug for LoadBalancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadBalancer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LoadBalancer {
    /// A balancer using `picker`, timing ejections on `clock`.
    ///
    /// # Errors
    /// As [`BalancerConfig::validate`].
    pub fn new(
        picker: impl Picker,
        config: BalancerConfig,
        clock: Arc<dyn Clock>,
    ) -> DiscoveryResult<LoadBalancer> {
        Ok(LoadBalancer {
            picker: Box::new(picker),
            config: config.validate()?,
            clock,
            stats: Arc::new(SyncMutex::new(Stats::default())),
        })
    }

    /// Picks one of `instances` (those discovery returned): ejected ones
    /// are skipped, and local-zone ones preferred when any is left.
    /// `None` for an empty list.
    pub fn pick(&self, instances: &[ServiceInstance], key: Option<&[u8]>) -> Option<Call> {
        if instances.is_empty() {
            return None;
        }
        let now = self.clock.now();
        let mut stats = self.stats.lock();
        stats.candidates = instances.len();
        let mut eligible: Vec<ServiceInstance> = instances
            .iter()
            .filter(|i| {
                stats
                    .by_id
                    .get(&i.id)
                    .and_then(|s| s.ejected_until)
                    .is_none_or(|until| until <= now)
            })
            .cloned()
            .collect();
        if eligible.is_empty() {
            // Everything is ejected (a fraction of 1): better a suspect
            // instance than none.
            eligible = instances.to_vec();
        }
        if let Some(zone) = &self.config.local_zone {
            if eligible.iter().any(|i| i.zone.as_ref() == Some(zone)) {
                eligible.retain(|i| i.zone.as_ref() == Some(zone));
            }
        }
        let ctx = PickContext { key };
        let n = self.picker.pick(&eligible, &ctx, &*stats);
        let instance = eligible.swap_remove(n.min(eligible.len() - 1));
        stats
            .by_id
            .entry(instance.id.clone())
            .or_default()
            .outstanding += 1;
        Some(Call {
            instance,
            stats: self.stats.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
            done: false,
        })
    }

    /// The ids ejected now.
    pub fn ejected(&self) -> Vec<String> {
        let now = self.clock.now();
        let mut ids: Vec<String> = self
            .stats
            .lock()
            .by_id
            .iter()
            .filter(|(_, s)| s.ejected_until.is_some_and(|u| u > now))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}

/// One call to a picked instance. Report how it went.
pub struct Call {
    instance: ServiceInstance,
    stats: Arc<SyncMutex<Stats>>,
    clock: Arc<dyn Clock>,
    config: BalancerConfig,
    done: bool,
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("instance", &self.instance.id)
            .finish_non_exhaustive()
    }
}

impl Call {
    /// The instance to call.
    pub fn instance(&self) -> &ServiceInstance {
        &self.instance
    }

    /// The call succeeded: the instance's error streak ends.
    pub fn success(mut self) {
        self.finish(Some(true));
    }

    /// The call failed: after `consecutive_errors` in a row the instance
    /// is ejected (unless that would exceed the ejected fraction).
    pub fn failure(mut self) {
        self.finish(Some(false));
    }

    fn finish(&mut self, ok: Option<bool>) {
        if self.done {
            return;
        }
        self.done = true;
        let now = self.clock.now();
        let mut stats = self.stats.lock();
        let candidates = stats.candidates;
        let ejected_now = stats
            .by_id
            .values()
            .filter(|s| s.ejected_until.is_some_and(|u| u > now))
            .count();
        let Some(s) = stats.by_id.get_mut(&self.instance.id) else {
            return;
        };
        s.outstanding = s.outstanding.saturating_sub(1);
        match ok {
            None => {}
            Some(true) => {
                s.consecutive_errors = 0;
                if s.ejected_until.is_none_or(|u| u <= now) {
                    s.ejections = 0;
                    s.ejected_until = None;
                }
            }
            Some(false) => {
                s.consecutive_errors = s.consecutive_errors.saturating_add(1);
                let c = &self.config;
                let already = s.ejected_until.is_some_and(|u| u > now);
                let cap = ((c.max_ejected_fraction * candidates as f64).floor() as usize)
                    .max(usize::from(c.max_ejected_fraction > 0.0));
                if c.consecutive_errors > 0
                    && s.consecutive_errors >= c.consecutive_errors
                    && !already
                    && ejected_now < cap
                {
                    s.ejections = s.ejections.saturating_add(1);
                    let length = c
                        .base_ejection
                        .saturating_mul(s.ejections)
                        .min(c.max_ejection);
                    s.ejected_until = Some(now + length);
                    s.consecutive_errors = 0;
                    tracing::info!(instance = %self.instance.id, ?length, "instance ejected");
                }
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock the test moves by hand.
    struct ManualClock(SyncMutex<Instant>);
    #[async_trait::async_trait]
    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.0.lock()
        }
        async fn sleep(&self, d: Duration) {
            *self.0.lock() += d;
        }
    }

    fn fleet(weights: &[u32]) -> Vec<ServiceInstance> {
        weights
            .iter()
            .enumerate()
            .map(|(n, w)| ServiceInstance::new("s", format!("i{n}"), "127.0.0.1", 1).weight(*w))
            .collect()
    }

    fn counts(p: &dyn Picker, c: &[ServiceInstance], picks: usize) -> Vec<usize> {
        let stats = Stats::default();
        let mut n = vec![0; c.len()];
        for _ in 0..picks {
            n[p.pick(c, &PickContext::default(), &stats)] += 1;
        }
        n
    }

    /// Pearson's chi-square statistic of `observed` against `weights`.
    fn chi_square(observed: &[usize], weights: &[u32]) -> f64 {
        let total: usize = observed.iter().sum();
        let wsum: u32 = weights.iter().sum();
        observed
            .iter()
            .zip(weights)
            .map(|(&o, &w)| {
                let e = total as f64 * f64::from(w) / f64::from(wsum);
                (o as f64 - e).powi(2) / e
            })
            .sum()
    }

    #[test]
    fn weighted_random_honours_weights_within_chi_square_bounds() {
        let weights = [1, 2, 3, 4];
        let c = fleet(&weights);
        for seed in 0..5 {
            let n = counts(&WeightedRandom::seeded(seed), &c, 20_000);
            // 3 degrees of freedom: P(chi2 > 16.27) = 0.001.
            let x2 = chi_square(&n, &weights);
            assert!(x2 < 16.27, "seed {seed}: {n:?} gives chi2 {x2}");
        }
        // And it can fail: uniform picks are far off these weights.
        let uniform = counts(&RoundRobin::new(), &c, 20_000);
        assert!(chi_square(&uniform, &weights) > 16.27);
        // A zero weight is never picked.
        let n = counts(&WeightedRandom::seeded(1), &fleet(&[0, 1]), 1000);
        assert_eq!(n[0], 0);
    }

    #[test]
    fn smooth_weighted_round_robin_is_exact_per_cycle_and_interleaves() {
        let c = fleet(&[5, 1, 1]);
        let p = SmoothWeightedRoundRobin::new();
        let stats = Stats::default();
        let seq: Vec<usize> = (0..7)
            .map(|_| p.pick(&c, &PickContext::default(), &stats))
            .collect();
        // nginx's documented sequence for {a:5, b:1, c:1}.
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&p, &c, 7000), [5000, 1000, 1000]);
    }

    #[test]
    fn round_robin_cycles_and_consistent_hash_is_sticky_and_moves_little() {
        let c = fleet(&[1, 1, 1]);
        assert_eq!(counts(&RoundRobin::new(), &c, 300), [100, 100, 100]);
        let p = ConsistentHash::new();
        let stats = Stats::default();
        let pick = |c: &[ServiceInstance], k: u32| {
            let key = k.to_be_bytes();
            c[p.pick(
                c,
                &PickContext {
                    key: Some(&key[..]),
                },
                &stats,
            )]
            .id
            .clone()
        };
        let four = fleet(&[1, 1, 1, 1]);
        let three = &four[..3];
        let mut moved = 0;
        let mut per = HashMap::new();
        for k in 0..4000 {
            let a = pick(&four, k);
            assert_eq!(a, pick(&four, k), "same key, same instance");
            *per.entry(a.clone()).or_insert(0) += 1;
            let b = pick(three, k);
            if a != "i3" {
                assert_eq!(a, b, "a key of a remaining instance moved");
            } else {
                moved += 1;
            }
        }
        assert!((800..1200).contains(&moved), "{moved} keys were on i3");
        assert_eq!(per.len(), 4);
    }

    #[test]
    fn least_outstanding_prefers_the_idle_instance() {
        let c = fleet(&[1, 1, 1]);
        let clock = Arc::new(ManualClock(SyncMutex::new(Instant::now())));
        let lb = LoadBalancer::new(LeastOutstanding::new(), BalancerConfig::default(), clock)
            .expect("valid");
        let a = lb.pick(&c, None).expect("a pick");
        let b = lb.pick(&c, None).expect("a pick");
        let third = lb.pick(&c, None).expect("a pick");
        let ids = [&a, &b, &third].map(|p| p.instance().id.clone());
        assert_eq!(
            ids.iter().collect::<std::collections::BTreeSet<_>>().len(),
            3,
            "{ids:?}"
        );
        drop(b);
        let next = lb.pick(&c, None).expect("a pick");
        assert_eq!(next.instance().id, ids[1], "the only idle one");
    }

    #[test]
    fn ejection_after_consecutive_errors_caps_the_fraction_and_recovers() {
        let c = fleet(&[1, 1, 1, 1]);
        let clock = Arc::new(ManualClock(SyncMutex::new(Instant::now())));
        let config = BalancerConfig {
            consecutive_errors: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(100),
            max_ejected_fraction: 0.5,
            ..BalancerConfig::default()
        };
        let lb = LoadBalancer::new(RoundRobin::new(), config, clock.clone()).expect("valid");
        // Every call to i0, i1 and i2 fails; i3 works.
        let fail_until_ejected = |rounds: usize| {
            for _ in 0..rounds {
                let call = lb.pick(&c, None).expect("a pick");
                if call.instance().id == "i3" {
                    call.success();
                } else {
                    call.failure();
                }
            }
        };
        fail_until_ejected(40);
        let ejected = lb.ejected();
        assert_eq!(ejected.len(), 2, "at most half of 4 ejected: {ejected:?}");
        assert!(!ejected.contains(&"i3".to_owned()));
        // While ejected they are not picked.
        for _ in 0..20 {
            let call = lb.pick(&c, None).expect("a pick");
            assert!(!ejected.contains(&call.instance().id));
            drop(call);
        }
        // After the back-off they return.
        let later = clock.now() + Duration::from_secs(11);
        *clock.0.lock() = later;
        assert!(lb.ejected().len() <= 1, "{:?}", lb.ejected());
        let seen: std::collections::BTreeSet<String> = (0..8)
            .map(|_| {
                let call = lb.pick(&c, None).expect("a pick");
                let id = call.instance().id.clone();
                call.success();
                id
            })
            .collect();
        for id in &ejected {
            assert!(seen.contains(id), "{id} did not come back: {seen:?}");
        }
        assert!(lb.ejected().is_empty());
    }

    #[test]
    fn zone_preference_falls_back_when_the_zone_is_empty() {
        let mut c = fleet(&[1, 1, 1]);
        c[0].zone = Some("z1".into());
        c[1].zone = Some("z2".into());
        let clock = Arc::new(ManualClock(SyncMutex::new(Instant::now())));
        let config = BalancerConfig {
            local_zone: Some("z1".into()),
            ..BalancerConfig::default()
        };
        let lb = LoadBalancer::new(RoundRobin::new(), config, clock).expect("valid");
        for _ in 0..5 {
            assert_eq!(lb.pick(&c, None).expect("a pick").instance().id, "i0");
        }
        let others = &c[1..];
        assert!(lb.pick(others, None).is_some());
        assert!(
            BalancerConfig {
                max_ejected_fraction: 1.5,
                ..BalancerConfig::default()
            }
            .validate()
            .is_err()
        );
    }
}
