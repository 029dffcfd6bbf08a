//! A session: a lease kept alive in the background, whose loss every
//! recipe built on it reacts to.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use ha_core::{Error, KvClient, KvOptions, LeaseGrantRequest, LeaseId, PutRequest, PutResponse};
use parking_lot::Mutex as SyncMutex;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, watch};
use tokio_util::sync::CancellationToken;

use crate::env::RecipeEnv;
use crate::error::{LostReason, RecipeError, Result};

/// The default session TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// Where a session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Trusted until `deadline` on the local clock: the send time of the
    /// last successful keep-alive, plus the TTL, minus the safety margin.
    Alive {
        /// When the session counts as lost unless a keep-alive succeeds.
        deadline: Instant,
    },
    /// Lost for good; a new session is needed.
    Lost(LostReason),
}

/// Configures and starts a [`Session`].
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct SessionBuilder {
    client: Arc<dyn KvClient>,
    ttl: Duration,
    margin: Option<Duration>,
    env: Option<RecipeEnv>,
    resume: Option<LeaseId>,
}

impl fmt::Debug for SessionBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionBuilder")
            .field("ttl", &self.ttl)
            .field("margin", &self.margin)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

impl SessionBuilder {
    /// The lease's TTL (default 10 s). The group rounds a TTL below its
    /// minimum (1.5 × the election timeout) up; [`Session::ttl`] is the
    /// one granted.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How much earlier than the TTL the session counts itself lost
    /// (default a tenth of the granted TTL, at most half of it): room for
    /// the local clock running slower than the leader's, and for the
    /// holder to stop acting.
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.margin = Some(margin);
        self
    }

    /// The clock and spawner (default [`RecipeEnv::tokio`]).
    pub fn env(mut self, env: RecipeEnv) -> Self {
        self.env = Some(env);
        self
    }

    /// Resumes an existing lease (say, after a process restart) instead of
    /// granting a new one. Keys the lease owns stay owned: a `Mutex::lock`
    /// on the same name adopts a lock held before the restart, with its
    /// fencing token unchanged.
    pub fn resume(mut self, lease: LeaseId) -> Self {
        self.resume = Some(lease);
        self
    }

    /// Grants (or renews, when resuming) the lease and starts renewing it
    /// every third of its TTL in the background.
    ///
    /// # Errors
    /// [`RecipeError::Kv`] when the grant fails; [`RecipeError::SessionLost`]
    /// (`Expired`) when the lease to resume is gone;
    /// [`RecipeError::NoRuntime`] without an env outside tokio;
    /// [`RecipeError::InvalidArgument`] for a margin not below half the TTL.
    pub async fn start(self) -> Result<Session> {
        let env = match self.env {
            Some(env) => env,
            None => RecipeEnv::tokio()?,
        };
        let clock = env.clock().clone();
        let sent = clock.now();
        let (lease, ttl) = match self.resume {
            None => {
                let r = self
                    .client
                    .lease_grant(LeaseGrantRequest::new(self.ttl), KvOptions::default())
                    .await?;
                (r.id, r.ttl)
            }
            Some(id) => match self
                .client
                .lease_keep_alive_once(id, KvOptions::default())
                .await
            {
                Ok(r) => (id, r.ttl),
                Err(Error::LeaseNotFound { .. }) => {
                    return Err(RecipeError::SessionLost {
                        lease: id,
                        reason: LostReason::Expired,
                    });
                }
                Err(e) => return Err(e.into()),
            },
        };
        let margin = self.margin.unwrap_or(ttl / 10);
        if margin > ttl / 2 {
            return Err(RecipeError::InvalidArgument {
                reason: "the safety margin must be at most half the granted TTL",
            });
        }
        let deadline = sent + ttl - margin;
        let (state, _) = watch::channel(SessionState::Alive { deadline });
        let state = Arc::new(state);
        let stop = CancellationToken::new();
        env.spawn(keep_alive(
            self.client.clone(),
            env.clone(),
            lease,
            ttl,
            margin,
            deadline,
            state.clone(),
            stop.clone(),
        ));
        Ok(Session {
            inner: Arc::new(SessionInner {
                client: self.client,
                env,
                lease,
                ttl,
                margin,
                state,
                stop,
                local: SyncMutex::new(HashMap::new()),
            }),
        })
    }
}

/// A lease kept alive in the background: the owner of every lock,
/// leadership and ephemeral key taken through it.
///
/// Renewals run every third of the TTL (sooner after a failure) on the
/// [`RecipeEnv`]'s spawner. The session counts itself **lost early, by
/// the local clock**: once a TTL minus the safety margin has passed since
/// the last successful keep-alive was *sent*, [`Session::lost`] fires —
/// before the group can have expired the lease and let someone else take
/// what this session holds. It also fires when the group says the lease
/// is gone, on [`Session::close`], and when the member stops.
///
/// Clones share the session. When every clone (and every guard, which
/// holds one) is dropped, renewals stop and the lease expires after its
/// TTL; [`Session::close`] revokes it at once.
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

struct SessionInner {
    client: Arc<dyn KvClient>,
    env: RecipeEnv,
    lease: LeaseId,
    ttl: Duration,
    margin: Duration,
    state: Arc<watch::Sender<SessionState>>,
    stop: CancellationToken,
    /// One async mutex per recipe key, so that concurrent acquisitions
    /// through one session (whose keys are named by the lease) queue here
    /// instead of sharing a key.
    local: SyncMutex<HashMap<Vec<u8>, Arc<AsyncMutex<()>>>>,
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("lease", &self.inner.lease)
            .field("ttl", &self.inner.ttl)
            .field("state", &self.state())
            .finish()
    }
}

impl Session {
    /// A session on `client` with the defaults (10 s TTL, tokio).
    ///
    /// # Errors
    /// As [`SessionBuilder::start`].
    pub async fn new(client: impl KvClient) -> Result<Session> {
        Session::builder(client).start().await
    }

    /// Configures a session on `client`.
    pub fn builder(client: impl KvClient) -> SessionBuilder {
        Session::builder_shared(Arc::new(client))
    }

    /// Configures a session on a shared client.
    pub fn builder_shared(client: Arc<dyn KvClient>) -> SessionBuilder {
        SessionBuilder {
            client,
            ttl: DEFAULT_TTL,
            margin: None,
            env: None,
            resume: None,
        }
    }

    /// The session's lease.
    pub fn lease(&self) -> LeaseId {
        self.inner.lease
    }

    /// The TTL the group granted.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The safety margin in force.
    pub fn safety_margin(&self) -> Duration {
        self.inner.margin
    }

    /// The client the session talks through.
    pub fn client(&self) -> &Arc<dyn KvClient> {
        &self.inner.client
    }

    /// The clock and spawner.
    pub fn env(&self) -> &RecipeEnv {
        &self.inner.env
    }

    /// Where the session stands now.
    pub fn state(&self) -> SessionState {
        *self.inner.state.borrow()
    }

    /// True once the session is lost.
    ///
    /// Checks the local clock too, so it turns true at the deadline even
    /// if the renewal task has not run yet.
    pub fn is_lost(&self) -> bool {
        match self.state() {
            SessionState::Lost(_) => true,
            SessionState::Alive { deadline } => self.inner.env.clock().now() >= deadline,
        }
    }

    /// Resolves when the session is lost, with the reason. Owns what it
    /// needs: it can be moved into a task or a `select!`.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        let mut rx = self.inner.state.subscribe();
        async move {
            loop {
                let state = *rx.borrow_and_update();
                if let SessionState::Lost(reason) = state {
                    return reason;
                }
                if rx.changed().await.is_err() {
                    // The renewal task ended without a verdict: every
                    // handle was dropped, renewals stopped.
                    return LostReason::Unrenewed;
                }
            }
        }
    }

    /// The error recipes return for this session's loss.
    pub(crate) fn lost_error(&self, reason: LostReason) -> RecipeError {
        RecipeError::SessionLost {
            lease: self.inner.lease,
            reason,
        }
    }

    /// `Err(SessionLost)` if the session is lost already.
    pub(crate) fn check_alive(&self) -> Result<()> {
        match self.state() {
            SessionState::Lost(reason) => Err(self.lost_error(reason)),
            SessionState::Alive { deadline } if self.inner.env.clock().now() >= deadline => {
                Err(self.lost_error(LostReason::Unrenewed))
            }
            SessionState::Alive { .. } => Ok(()),
        }
    }

    /// Puts `key` with the session's lease: it disappears with the
    /// session.
    ///
    /// # Errors
    /// [`RecipeError::Kv`] from the put (`LeaseNotFound` once the lease is
    /// gone).
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<PutResponse> {
        let request = PutRequest {
            lease: self.inner.lease,
            ..PutRequest::new(key, value)
        };
        Ok(self.inner.client.put(request, KvOptions::default()).await?)
    }

    /// Stops renewing and revokes the lease: every key it owns is deleted
    /// in one revision, and [`Session::lost`] fires (`Closed`) first.
    ///
    /// # Errors
    /// [`RecipeError::Kv`] when the revoke failed (the lease then expires
    /// after its TTL).
    pub async fn close(&self) -> Result<()> {
        lose(&self.inner.state, LostReason::Closed);
        self.inner.stop.cancel();
        match self
            .inner
            .client
            .lease_revoke(self.inner.lease, KvOptions::default())
            .await
        {
            Ok(_) | Err(Error::LeaseNotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits for this session's turn at `key` among local users.
    pub(crate) async fn local_turn(&self, key: &[u8]) -> OwnedMutexGuard<()> {
        let lock = {
            let mut local = self.inner.local.lock();
            // Forget mutexes nobody uses, so the table stays small.
            local.retain(|_, m| Arc::strong_count(m) > 1);
            local.entry(key.to_vec()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Lease as a fixed-width hex string, for key names.
    pub(crate) fn lease_hex(&self) -> String {
        format!("{:016x}", self.inner.lease.0)
    }
}

/// Marks the session lost, once.
fn lose(state: &watch::Sender<SessionState>, reason: LostReason) {
    state.send_if_modified(|s| match s {
        SessionState::Alive { .. } => {
            *s = SessionState::Lost(reason);
            true
        }
        SessionState::Lost(_) => false,
    });
}

/// Renews the lease every third of its TTL until stopped or lost, and
/// declares it lost at the local deadline.
#[allow(clippy::too_many_arguments)]
async fn keep_alive(
    client: Arc<dyn KvClient>,
    env: RecipeEnv,
    lease: LeaseId,
    mut ttl: Duration,
    margin: Duration,
    mut deadline: Instant,
    state: Arc<watch::Sender<SessionState>>,
    stop: CancellationToken,
) {
    let clock = env.clock().clone();
    let mut next = clock.now() + ttl / 3;
    loop {
        let now = clock.now();
        if now >= deadline {
            lose(&state, LostReason::Unrenewed);
            return;
        }
        let wait = next.min(deadline).saturating_duration_since(now);
        futures::select_biased! {
            () = stop.cancelled().fuse() => return,
            () = clock.sleep(wait).fuse() => {}
        }
        let sent = clock.now();
        if sent >= deadline {
            lose(&state, LostReason::Unrenewed);
            return;
        }
        let left = deadline - sent;
        // An attempt may take a third of the TTL, never past the deadline,
        // so a lost leader leaves time for another attempt.
        let attempt =
            KvOptions::default().with_timeout((ttl / 3).max(Duration::from_millis(50)).min(left));
        let renewal = client.lease_keep_alive_once(lease, attempt).fuse();
        let expiry = clock.sleep(left).fuse();
        futures::pin_mut!(renewal, expiry);
        let outcome = futures::select_biased! {
            () = stop.cancelled().fuse() => return,
            r = renewal => r,
            () = expiry => {
                lose(&state, LostReason::Unrenewed);
                return;
            }
        };
        match outcome {
            Ok(r) => {
                ttl = r.ttl;
                // Counted from the SEND time: the leader's deadline starts
                // no earlier than that.
                deadline = sent + ttl.saturating_sub(margin);
                next = sent + ttl / 3;
                // Never revives a session declared lost meanwhile (closed).
                state.send_if_modified(|s| match s {
                    SessionState::Alive { .. } => {
                        *s = SessionState::Alive { deadline };
                        true
                    }
                    SessionState::Lost(_) => false,
                });
            }
            Err(Error::LeaseNotFound { .. }) => {
                lose(&state, LostReason::Expired);
                return;
            }
            Err(Error::Shutdown | Error::Fatal { .. } | Error::Removed { .. }) => {
                lose(&state, LostReason::ClientStopped);
                return;
            }
            Err(e) => {
                tracing::debug!(lease = lease.0, error = %e, "session renewal failed; retrying");
                next = clock.now() + (ttl / 10).min(Duration::from_millis(100));
            }
        }
    }
}
