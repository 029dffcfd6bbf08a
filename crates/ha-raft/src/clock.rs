//! The production clock.

use std::time::{Duration, Instant};

use ha_core::Clock;

/// The system's monotonic clock, sleeping on the application's tokio timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

#[async_trait::async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}
