//! Time, as something the simulator can replace.

use std::time::{Duration, Instant};

/// A source of time. The production clock reads the system's monotonic
/// clock and sleeps on tokio's timer; the simulator's is virtual.
#[async_trait::async_trait]
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Instant;
    /// Waits for `duration`.
    async fn sleep(&self, duration: Duration);
}
