//! Fencing tokens, and what a protected resource does with them.
//!
//! A lock holder can be paused (GC, swap, a stopped VM) past its lease:
//! the group hands the lock to someone else while the old holder still
//! believes it holds it — Jepsen's finding about etcd locks. The cure is
//! at the resource: every write carries the holder's token, and the
//! resource refuses a token lower than the highest it has seen.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};

/// A lock holder's (or leader's) fencing token: the create revision of
/// its key. Tokens of successive holders of one lock strictly increase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub i64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A write refused because a later holder has written since.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stale fencing token {token}: the resource has seen {highest}")]
pub struct StaleToken {
    /// The token presented.
    pub token: FencingToken,
    /// The highest token the resource has accepted.
    pub highest: FencingToken,
}

/// The check a protected resource runs on every write: accept a token at
/// least as high as any accepted before, refuse a lower one.
///
/// Keep one `Fence` per lock, next to (or inside) the resource, and make
/// the check atomic with the write it guards: [`Fenced`] does that for
/// in-memory state; a database does it with
/// `UPDATE ... WHERE fence <= $token`; the replicated KV with the guard's
/// `compare()` in the write's transaction.
#[derive(Debug, Default)]
pub struct Fence {
    highest: AtomicI64,
}

impl Fence {
    /// A fence that has seen no token.
    pub fn new() -> Self {
        Fence::default()
    }

    /// Accepts `token` if no higher one was accepted before (and records
    /// it as the highest).
    ///
    /// # Errors
    /// [`StaleToken`] when a higher token was accepted.
    pub fn check(&self, token: FencingToken) -> Result<(), StaleToken> {
        let before = self.highest.fetch_max(token.0, Ordering::AcqRel);
        if token.0 < before {
            return Err(StaleToken {
                token,
                highest: FencingToken(before),
            });
        }
        Ok(())
    }

    /// The highest token accepted so far (0 for none).
    pub fn highest(&self) -> FencingToken {
        FencingToken(self.highest.load(Ordering::Acquire))
    }
}

/// A value guarded by a fence: [`Fenced::write`] checks the token and
/// changes the value atomically — the `FencedResource` pattern.
#[derive(Debug, Default)]
pub struct Fenced<T> {
    inner: std::sync::Mutex<(i64, T)>,
}

impl<T> Fenced<T> {
    /// Wraps `value`; no token seen yet.
    pub fn new(value: T) -> Self {
        Fenced {
            inner: std::sync::Mutex::new((0, value)),
        }
    }

    /// Runs `f` on the value if `token` is at least the highest seen.
    ///
    /// # Errors
    /// [`StaleToken`] (and `f` does not run) when a higher token wrote.
    pub fn write<R>(
        &self,
        token: FencingToken,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, StaleToken> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if token.0 < inner.0 {
            return Err(StaleToken {
                token,
                highest: FencingToken(inner.0),
            });
        }
        inner.0 = token.0;
        Ok(f(&mut inner.1))
    }

    /// Reads the value.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&inner.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_refuses_lower_tokens_and_accepts_equal_and_higher() {
        let f = Fence::new();
        assert!(f.check(FencingToken(5)).is_ok());
        assert!(
            f.check(FencingToken(5)).is_ok(),
            "the same holder writes again"
        );
        assert!(f.check(FencingToken(9)).is_ok());
        assert_eq!(
            f.check(FencingToken(5)),
            Err(StaleToken {
                token: FencingToken(5),
                highest: FencingToken(9)
            })
        );
        assert_eq!(f.highest(), FencingToken(9));
    }

    #[test]
    fn fenced_runs_nothing_for_a_stale_token() {
        let v = Fenced::new(0);
        assert_eq!(
            v.write(FencingToken(3), |x| {
                *x += 1;
                *x
            }),
            Ok(1)
        );
        assert!(v.write(FencingToken(2), |x| *x += 100).is_err());
        assert_eq!(v.read(|x| *x), 1);
    }
}
