//! Where recipes get time and background tasks from: a [`Clock`] and a
//! [`Spawn`]. Recipe logic never calls `tokio::spawn`, `tokio::time` or
//! `Instant::now` itself, so the same code runs on the simulator's
//! deterministic single-threaded executor with virtual time.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ha_core::Clock;

use crate::error::{RecipeError, Result};

/// A boxed background task.
pub type BoxTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Runs background tasks: a session's renewals, the release of a lock
/// whose guard or `lock()` future was dropped.
///
/// Any `Fn(BoxTask)` closure is a `Spawn`; [`TokioSpawn`] is the default.
/// The simulator passes its own executor's spawner.
pub trait Spawn: Send + Sync + 'static {
    /// Starts `task`; it runs to completion on its own.
    fn spawn(&self, task: BoxTask);
}

impl<F> Spawn for F
where
    F: Fn(BoxTask) + Send + Sync + 'static,
{
    fn spawn(&self, task: BoxTask) {
        self(task)
    }
}

/// Spawns on a tokio runtime (the one current when it was created).
#[derive(Clone, Debug)]
pub struct TokioSpawn(tokio::runtime::Handle);

impl TokioSpawn {
    /// The runtime this is called from.
    ///
    /// # Errors
    /// [`RecipeError::NoRuntime`] outside a tokio runtime.
    pub fn current() -> Result<Self> {
        tokio::runtime::Handle::try_current()
            .map(TokioSpawn)
            .map_err(|_| RecipeError::NoRuntime)
    }

    /// A given runtime.
    pub fn on(handle: tokio::runtime::Handle) -> Self {
        TokioSpawn(handle)
    }
}

impl Spawn for TokioSpawn {
    fn spawn(&self, task: BoxTask) {
        drop(self.0.spawn(task));
    }
}

/// The clock and spawner a recipe uses. [`RecipeEnv::tokio`] is the
/// production pair: the system clock and the current tokio runtime.
#[derive(Clone)]
pub struct RecipeEnv {
    clock: Arc<dyn Clock>,
    spawner: Arc<dyn Spawn>,
}

impl fmt::Debug for RecipeEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecipeEnv").finish_non_exhaustive()
    }
}

impl RecipeEnv {
    /// A clock and a spawner of your own (the simulator's, a test's).
    pub fn new(clock: Arc<dyn Clock>, spawner: Arc<dyn Spawn>) -> Self {
        RecipeEnv { clock, spawner }
    }

    /// The system clock and the current tokio runtime.
    ///
    /// # Errors
    /// [`RecipeError::NoRuntime`] outside a tokio runtime.
    pub fn tokio() -> Result<Self> {
        Ok(RecipeEnv {
            clock: Arc::new(ha_raft::SystemClock),
            spawner: Arc::new(TokioSpawn::current()?),
        })
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Starts a background task.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.spawner.spawn(Box::pin(task));
    }

    /// Runs `fut` for at most `after` on this clock.
    ///
    /// # Errors
    /// [`RecipeError::Timeout`] when `after` passed first (`fut` is
    /// dropped).
    pub(crate) async fn timeout<T>(
        &self,
        after: Duration,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let sleep = self.clock.sleep(after).fuse();
        let fut = fut.fuse();
        futures::pin_mut!(sleep, fut);
        futures::select_biased! {
            r = fut => r,
            () = sleep => Err(RecipeError::Timeout { after }),
        }
    }
}
