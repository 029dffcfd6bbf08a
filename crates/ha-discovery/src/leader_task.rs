//! The singleton job: run a future only while this instance leads.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ha_core::{Error, KvClient};

use crate::election::{Election, Leadership};
use crate::env::RecipeEnv;
use crate::error::{RecipeError, Result};
use crate::session::{DEFAULT_TTL, Session};

/// Pause before campaigning again after a failure that may pass.
const RETRY: Duration = Duration::from_millis(100);

/// Runs a job only while this instance leads the election `name`; when
/// leadership is lost the job's [`Leadership::cancellation_token`] is
/// cancelled, the job gets a grace period to return (then it is dropped),
/// and the task campaigns again with a fresh session — the job moves to
/// whichever instance wins. See [`run_when_leader`] for the short form.
#[must_use = "a LeaderTask does nothing until `run` is awaited"]
pub struct LeaderTask {
    client: Arc<dyn KvClient>,
    name: String,
    value: Vec<u8>,
    ttl: Duration,
    margin: Option<Duration>,
    grace: Option<Duration>,
    env: Option<RecipeEnv>,
}

impl fmt::Debug for LeaderTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderTask")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Errors after which campaigning again cannot help.
fn permanent(e: &RecipeError) -> bool {
    matches!(
        e,
        RecipeError::Kv(Error::Shutdown | Error::Fatal { .. } | Error::Removed { .. })
            | RecipeError::NoRuntime
            | RecipeError::InvalidArgument { .. }
    )
}

impl LeaderTask {
    /// A task for the election `name` on `client`.
    pub fn new(client: impl KvClient, name: &str) -> LeaderTask {
        LeaderTask::shared(Arc::new(client), name)
    }

    /// The same, on a shared client.
    pub fn shared(client: Arc<dyn KvClient>, name: &str) -> LeaderTask {
        LeaderTask {
            client,
            name: name.to_string(),
            value: Vec::new(),
            ttl: DEFAULT_TTL,
            margin: None,
            grace: None,
            env: None,
        }
    }

    /// The value this instance proclaims when it leads (say, its address).
    pub fn value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = value.into();
        self
    }

    /// The sessions' TTL (default 10 s): how long a dead leader's job can
    /// stay unowned.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The sessions' safety margin (see [`crate::SessionBuilder::safety_margin`]).
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.margin = Some(margin);
        self
    }

    /// How long a job may take to return after its token is cancelled
    /// before it is dropped (default: the safety margin — the time left
    /// before another instance can lead).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// The clock and spawner (default [`RecipeEnv::tokio`]).
    pub fn env(mut self, env: RecipeEnv) -> Self {
        self.env = Some(env);
        self
    }

    /// Campaigns, runs `job` while leading, and campaigns again whenever
    /// leadership is lost. Returns the job's output when the job returns
    /// while still leading (then resigns).
    ///
    /// # Errors
    /// Only for good: the member stopped ([`RecipeError::Kv`] with
    /// `Shutdown`, `Fatal`, `Removed`), no runtime, an invalid TTL/margin.
    /// Transient failures are retried.
    ///
    /// # Cancel safety
    /// Dropping the future drops the job and resigns in the background.
    pub async fn run<F, Fut, T>(self, mut job: F) -> Result<T>
    where
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = T>,
    {
        let env = match self.env {
            Some(env) => env,
            None => RecipeEnv::tokio()?,
        };
        loop {
            let mut builder = Session::builder_shared(self.client.clone())
                .ttl(self.ttl)
                .env(env.clone());
            if let Some(margin) = self.margin {
                builder = builder.safety_margin(margin);
            }
            let session = match builder.start().await {
                Ok(s) => s,
                Err(e) if permanent(&e) => return Err(e),
                Err(e) => {
                    tracing::debug!(election = %self.name, error = %e, "session failed; retrying");
                    env.clock().sleep(RETRY).await;
                    continue;
                }
            };
            let election = Election::new(&session, &self.name);
            let leadership = match election.campaign(self.value.clone()).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = session.close().await;
                    if permanent(&e) {
                        return Err(e);
                    }
                    tracing::debug!(election = %self.name, error = %e, "campaign failed; retrying");
                    env.clock().sleep(RETRY).await;
                    continue;
                }
            };
            let lost = leadership.lost().fuse();
            let work = job(leadership.clone()).fuse();
            futures::pin_mut!(lost, work);
            futures::select_biased! {
                out = work => {
                    let _ = leadership.resign().await;
                    let _ = session.close().await;
                    return Ok(out);
                }
                () = lost => {}
            }
            // Lost: the job's token is cancelled; let it wind down.
            let grace = self.grace.unwrap_or_else(|| session.safety_margin());
            let wind_down = env.clock().sleep(grace).fuse();
            futures::pin_mut!(wind_down);
            futures::select_biased! {
                _ = work => {}
                () = wind_down => {
                    tracing::warn!(election = %self.name, ?grace,
                        "the job ignored its cancelled leadership for the grace period; dropped");
                }
            }
            drop(leadership);
            // Revoking frees the election at once (the lease may still be
            // alive if the loss was decided by the local clock).
            let _ = session.close().await;
        }
    }
}

/// Runs `job` whenever this instance leads the election `name`, with the
/// defaults (10 s sessions, tokio); see [`LeaderTask`].
///
/// ```no_run
/// # async fn f(kv: ha_discovery::KvNode) -> ha_discovery::Result<()> {
/// ha_discovery::run_when_leader(kv, "jobs/report", |leadership| async move {
///     let stop = leadership.cancellation_token();
///     while !stop.is_cancelled() {
///         // ... one unit of the singleton job, fenced with
///         // leadership.fencing_token() ...
///         tokio::select! {
///             _ = stop.cancelled() => break,
///             _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
///         }
///     }
/// })
/// .await
/// # }
/// ```
///
/// # Errors
/// As [`LeaderTask::run`].
pub async fn run_when_leader<F, Fut, T>(client: impl KvClient, name: &str, job: F) -> Result<T>
where
    F: FnMut(Leadership) -> Fut,
    Fut: Future<Output = T>,
{
    LeaderTask::new(client, name).run(job).await
}
