//! Latency distributions the engine records (proposals, syncs, reads):
//! fixed buckets of atomic counters, cheap enough for every request, read
//! as a [`Latency`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Number of buckets of a [`Latency`], the last one unbounded.
pub const LATENCY_BUCKETS: usize = 16;

/// Upper bounds (inclusive, microseconds) of the first
/// `LATENCY_BUCKETS - 1` buckets; the last bucket holds the rest.
pub const LATENCY_BOUNDS_US: [u64; LATENCY_BUCKETS - 1] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// A latency distribution: how many observations fell in each bucket
/// ([`LATENCY_BOUNDS_US`]), how many there were and their sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// Observations per bucket (not cumulative).
    pub buckets: [u64; LATENCY_BUCKETS],
    /// All observations.
    pub count: u64,
    /// Sum of all observations, microseconds.
    pub sum_us: u64,
}

impl Latency {
    /// The mean, if anything was observed.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_micros(self.sum_us / self.count))
    }

    /// An upper bound of quantile `q` (0.0–1.0): the bound of the bucket
    /// holding it. `None` when nothing was observed, or when it lies in the
    /// last (unbounded) bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return LATENCY_BOUNDS_US
                    .get(i)
                    .map(|&us| Duration::from_micros(us));
            }
        }
        None
    }
}

/// Records a [`Latency`] from any thread.
#[derive(Debug, Default)]
pub(crate) struct LatencyRecorder {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    sum_us: AtomicU64,
}

impl LatencyRecorder {
    pub(crate) fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Latency {
        let mut l = Latency {
            sum_us: self.sum_us.load(Ordering::Relaxed),
            ..Latency::default()
        };
        for (out, b) in l.buckets.iter_mut().zip(&self.buckets) {
            *out = b.load(Ordering::Relaxed);
        }
        l.count = l.buckets.iter().sum();
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_bucket_of_their_bound() {
        let r = LatencyRecorder::default();
        r.record(Duration::from_micros(100)); // ≤ 100: bucket 0
        r.record(Duration::from_micros(101)); // bucket 1
        r.record(Duration::from_millis(1)); // ≤ 1,000: bucket 3
        r.record(Duration::from_secs(60)); // unbounded
        let l = r.snapshot();
        assert_eq!(l.buckets[0], 1);
        assert_eq!(l.buckets[1], 1);
        assert_eq!(l.buckets[3], 1);
        assert_eq!(l.buckets[LATENCY_BUCKETS - 1], 1);
        assert_eq!(l.count, 4);
        assert_eq!(l.sum_us, 100 + 101 + 1_000 + 60_000_000);
    }

    #[test]
    fn quantiles_are_bucket_bounds() {
        let r = LatencyRecorder::default();
        assert_eq!(r.snapshot().quantile_bound(0.5), None);
        for _ in 0..99 {
            r.record(Duration::from_micros(300));
        }
        r.record(Duration::from_millis(40));
        let l = r.snapshot();
        assert_eq!(l.quantile_bound(0.5), Some(Duration::from_micros(500)));
        assert_eq!(l.quantile_bound(0.99), Some(Duration::from_micros(500)));
        assert_eq!(l.quantile_bound(1.0), Some(Duration::from_millis(50)));
        r.record(Duration::from_secs(10));
        assert_eq!(r.snapshot().quantile_bound(1.0), None);
        assert!(l.mean().is_some());
    }
}
