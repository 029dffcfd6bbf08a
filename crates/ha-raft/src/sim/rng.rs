//! The one random source of a simulated run.
//!
//! ChaCha8 rather than `StdRng`: its stream is specified and stable across
//! `rand` releases, so a seed replays the same run after a dependency
//! update.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Every random choice of a run comes from here, in the order the run makes
/// them.
pub(crate) struct SimRng(ChaCha8Rng);

impl SimRng {
    pub(crate) fn new(seed: u64) -> Self {
        SimRng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.0.gen_bool(p.min(1.0))
    }

    /// Uniform in `[lo, hi]` (inclusive; `lo` when the range is empty).
    pub(crate) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            self.0.gen_range(lo..=hi)
        }
    }

    /// Uniform in `[0, n)`; `n` must not be 0.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0.gen_range(0..n)
    }

    /// Uniform in `[lo, hi)` as a float.
    pub(crate) fn float(&mut self, lo: f64, hi: f64) -> f64 {
        if hi <= lo {
            lo
        } else {
            self.0.gen_range(lo..hi)
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.r#gen()
    }

    /// One element of a non-empty slice.
    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}
