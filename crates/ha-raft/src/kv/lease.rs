//! The lease manager: which lease expires when, on the leader. Sans-IO:
//! time is an argument, nothing here reads a clock, sleeps or sends, so
//! the simulator can drive it as the shell does.
//!
//! What is replicated (a lease's id, TTL and keys) lives in the MVCC
//! machine; deadlines are the leader's alone and are never replicated, as
//! in etcd. The rules that keep a failover from expiring a lease that was
//! kept alive (DESIGN.md, "Leases"):
//!
//! - only a leader tracks deadlines; on promotion every lease gets
//!   `now + TTL + extension` (the extension is an election timeout: the
//!   old leader may have renewed a lease up to then without the new one
//!   knowing);
//! - a leader renews and expires only once it has applied the first entry
//!   of its term, so every expiry an earlier leader committed is applied
//!   before it answers anything;
//! - an expiry names the term it was decided in, and the machine ignores
//!   it when committed in another term (a deposed leader's expiry
//!   forwarded to the new one does nothing);
//! - a lease past its deadline is never renewed, even before its expiry
//!   is proposed; one whose expiry is in flight is not renewed either.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ha_core::LeaseId;

/// Why a keep-alive (or a time-to-live) was not answered here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// This member does not lead.
    Follower,
    /// It leads but has not applied the first entry of its term yet.
    TermNotApplied,
    /// No such lease, or it is past its deadline or being expired.
    Gone,
}

#[derive(Clone, Copy, Debug)]
struct Tracked {
    ttl: Duration,
    /// Only while leading.
    deadline: Option<Instant>,
    /// When its expiry was last proposed (not renewed meanwhile).
    expiring_since: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Follower,
    Leader { term: u64, ready: bool },
}

/// Deadlines of every lease, kept by the leader.
#[derive(Debug)]
pub(crate) struct LeaseManager {
    leases: HashMap<LeaseId, Tracked>,
    role: Role,
    extension: Duration,
    retry_expiry: Duration,
    /// Injected bug (f): deadlines kept by followers and across promotion.
    no_promotion_reset: bool,
}

impl LeaseManager {
    /// `extension`: what a new leader adds to every TTL (an election
    /// timeout); `retry_expiry`: how long an expiry may be in flight before
    /// it is proposed again.
    pub(crate) fn new(extension: Duration, retry_expiry: Duration) -> Self {
        LeaseManager {
            leases: HashMap::new(),
            role: Role::Follower,
            extension,
            retry_expiry,
            no_promotion_reset: false,
        }
    }

    /// Switches injected bugs on (the simulator's; off in production).
    pub(crate) fn set_bugs(&mut self, bugs: crate::bugs::Bugs) {
        self.no_promotion_reset = bugs.lease_no_promotion_reset;
    }

    /// Number of leases known.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.leases.len()
    }

    /// The term this member leads in, if it does.
    pub(crate) fn leader_term(&self) -> Option<u64> {
        match self.role {
            Role::Leader { term, .. } => Some(term),
            Role::Follower => None,
        }
    }

    /// A lease was granted (applied).
    pub(crate) fn granted(&mut self, id: LeaseId, ttl: Duration, now: Instant) {
        let deadline = match self.role {
            Role::Leader { .. } => Some(now + ttl),
            Role::Follower if self.no_promotion_reset => Some(now + ttl),
            Role::Follower => None,
        };
        self.leases.insert(
            id,
            Tracked {
                ttl,
                deadline,
                expiring_since: None,
            },
        );
    }

    /// A lease was revoked or expired (applied).
    pub(crate) fn revoked(&mut self, id: LeaseId) {
        self.leases.remove(&id);
    }

    /// The machine was reloaded from a snapshot: `leases` is the whole set.
    /// Leases known before keep their deadline; new ones get a full TTL
    /// plus the extension, as at a promotion.
    pub(crate) fn restored(&mut self, leases: &[(LeaseId, Duration)], now: Instant) {
        let leading = matches!(self.role, Role::Leader { .. });
        let old = std::mem::take(&mut self.leases);
        for &(id, ttl) in leases {
            let deadline = match old.get(&id) {
                Some(t) => t.deadline,
                None if leading => Some(now + ttl + self.extension),
                None => None,
            };
            self.leases.insert(
                id,
                Tracked {
                    ttl,
                    deadline,
                    expiring_since: None,
                },
            );
        }
    }

    /// Follows the engine: `leading_term` is `Some(term)` while this member
    /// leads in `term`; `applied_term` the term of its last applied entry.
    /// Returns true when this made it a new leader.
    pub(crate) fn observe(
        &mut self,
        leading_term: Option<u64>,
        applied_term: u64,
        now: Instant,
    ) -> bool {
        let Some(term) = leading_term else {
            if self.role != Role::Follower && self.no_promotion_reset {
                self.role = Role::Follower;
            } else if self.role != Role::Follower {
                self.role = Role::Follower;
                for t in self.leases.values_mut() {
                    t.deadline = None;
                    t.expiring_since = None;
                }
            }
            return false;
        };
        let promoted = self.leader_term() != Some(term);
        if promoted {
            for t in self.leases.values_mut() {
                if self.no_promotion_reset && t.deadline.is_some() {
                    continue;
                }
                t.deadline = Some(now + t.ttl + self.extension);
                t.expiring_since = None;
            }
            self.role = Role::Leader { term, ready: false };
        }
        if applied_term >= term {
            self.role = Role::Leader { term, ready: true };
        }
        promoted
    }

    fn check_ready(&self) -> Result<(), Refusal> {
        match self.role {
            Role::Follower => Err(Refusal::Follower),
            Role::Leader { ready: false, .. } => Err(Refusal::TermNotApplied),
            Role::Leader { ready: true, .. } => Ok(()),
        }
    }

    /// Renews a lease: its deadline becomes `now + ttl`. Returns the TTL.
    pub(crate) fn keep_alive(&mut self, id: LeaseId, now: Instant) -> Result<Duration, Refusal> {
        self.check_ready()?;
        let t = self.leases.get_mut(&id).ok_or(Refusal::Gone)?;
        if t.expiring_since.is_some() || t.deadline.is_some_and(|d| d <= now) {
            return Err(Refusal::Gone);
        }
        t.deadline = Some(now + t.ttl);
        Ok(t.ttl)
    }

    /// Time a lease has left, never more than its granted TTL: the grace a
    /// new leader adds on promotion is this member's safety margin, not time
    /// the holder was promised (etcd callers rely on `ttl <= granted_ttl`).
    pub(crate) fn remaining(&self, id: LeaseId, now: Instant) -> Result<Duration, Refusal> {
        self.check_ready()?;
        let t = self.leases.get(&id).ok_or(Refusal::Gone)?;
        if t.expiring_since.is_some() {
            return Ok(Duration::ZERO);
        }
        Ok(t.deadline
            .map_or(t.ttl, |d| d.saturating_duration_since(now))
            .min(t.ttl))
    }

    /// Up to `max` leases whose deadline passed, with the term to expire
    /// them in; each is marked as expiring (renewals refused) and not
    /// returned again for `retry_expiry`. Nothing unless this member leads
    /// and is ready.
    pub(crate) fn due(&mut self, now: Instant, max: usize) -> Vec<(LeaseId, u64)> {
        let Role::Leader { term, ready: true } = self.role else {
            return Vec::new();
        };
        let retry = self.retry_expiry;
        let mut due: Vec<(LeaseId, Instant)> = self
            .leases
            .iter()
            .filter(|(_, t)| {
                t.deadline.is_some_and(|d| d <= now)
                    && t.expiring_since.is_none_or(|since| since + retry <= now)
            })
            .filter_map(|(id, t)| Some((*id, t.deadline?)))
            .collect();
        due.sort_by_key(|&(id, deadline)| (deadline, id));
        due.truncate(max);
        due.into_iter()
            .map(|(id, _)| {
                if let Some(t) = self.leases.get_mut(&id) {
                    t.expiring_since = Some(now);
                }
                (id, term)
            })
            .collect()
    }

    /// The earliest deadline or expiry retry, for the shell's timer.
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        self.leases
            .values()
            .filter_map(|t| match t.expiring_since {
                Some(since) => Some(since + self.retry_expiry),
                None => t.deadline,
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_millis(500);
    const EXT: Duration = Duration::from_millis(300);
    const RETRY: Duration = Duration::from_millis(200);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn leader(now: Instant) -> LeaseManager {
        let mut m = LeaseManager::new(EXT, RETRY);
        m.observe(Some(2), 2, now);
        m
    }

    #[test]
    fn a_follower_answers_nothing_and_expires_nothing() {
        let t0 = Instant::now();
        let mut m = LeaseManager::new(EXT, RETRY);
        m.granted(LeaseId(1), TTL, t0);
        assert_eq!(m.keep_alive(LeaseId(1), t0), Err(Refusal::Follower));
        assert_eq!(m.remaining(LeaseId(1), t0), Err(Refusal::Follower));
        assert!(m.due(t0 + ms(10_000), 10).is_empty());
        assert_eq!(m.next_wakeup(), None);
    }

    #[test]
    fn a_new_leader_gives_every_lease_ttl_plus_extension_and_waits_for_its_term() {
        let t0 = Instant::now();
        let mut m = LeaseManager::new(EXT, RETRY);
        m.granted(LeaseId(1), TTL, t0);
        // Promoted at t0 + 1 s; its first entry is not applied yet.
        let t1 = t0 + ms(1_000);
        assert!(m.observe(Some(5), 4, t1));
        assert_eq!(m.keep_alive(LeaseId(1), t1), Err(Refusal::TermNotApplied));
        assert!(
            m.due(t1 + ms(10_000), 10).is_empty(),
            "not ready: no expiry"
        );
        // Ready: nothing expires before t1 + TTL + extension.
        assert!(!m.observe(Some(5), 5, t1 + ms(1)));
        assert!(m.due(t1 + TTL + EXT - ms(1), 10).is_empty());
        // The extension is not reported as time the holder has.
        assert_eq!(m.remaining(LeaseId(1), t1 + ms(1)), Ok(TTL));
        assert_eq!(
            m.remaining(LeaseId(1), t1 + EXT + ms(100)),
            Ok(TTL - ms(100))
        );
        assert_eq!(m.due(t1 + TTL + EXT, 10), vec![(LeaseId(1), 5)]);
    }

    #[test]
    fn renewals_push_the_deadline_and_an_expired_lease_is_never_renewed() {
        let t0 = Instant::now();
        let mut m = leader(t0);
        m.granted(LeaseId(1), TTL, t0);
        assert_eq!(m.keep_alive(LeaseId(1), t0 + ms(400)), Ok(TTL));
        assert_eq!(m.remaining(LeaseId(1), t0 + ms(500)), Ok(ms(400)));
        assert!(m.due(t0 + ms(899), 10).is_empty());
        // Past its deadline but its expiry not yet proposed: still refused.
        assert_eq!(m.keep_alive(LeaseId(1), t0 + ms(900)), Err(Refusal::Gone));
        assert_eq!(m.due(t0 + ms(900), 10), vec![(LeaseId(1), 2)]);
        assert_eq!(m.keep_alive(LeaseId(1), t0 + ms(901)), Err(Refusal::Gone));
        assert_eq!(m.keep_alive(LeaseId(7), t0), Err(Refusal::Gone));
    }

    #[test]
    fn an_expiry_in_flight_is_retried_after_a_while_and_ends_with_the_revoke() {
        let t0 = Instant::now();
        let mut m = leader(t0);
        m.granted(LeaseId(1), TTL, t0);
        assert_eq!(m.due(t0 + TTL, 10).len(), 1);
        assert!(m.due(t0 + TTL + RETRY - ms(1), 10).is_empty());
        assert_eq!(m.next_wakeup(), Some(t0 + TTL + RETRY));
        assert_eq!(m.due(t0 + TTL + RETRY, 10).len(), 1);
        m.revoked(LeaseId(1));
        assert!(m.due(t0 + ms(10_000), 10).is_empty());
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn due_leases_come_earliest_first_and_bounded() {
        let t0 = Instant::now();
        let mut m = leader(t0);
        for i in 1..=5 {
            m.granted(LeaseId(i), ms(100 * (6 - i as u64)), t0);
        }
        let due = m.due(t0 + ms(1_000), 2);
        assert_eq!(due, vec![(LeaseId(5), 2), (LeaseId(4), 2)]);
        assert_eq!(m.due(t0 + ms(1_000), 10).len(), 3);
    }

    #[test]
    fn stepping_down_forgets_deadlines_and_a_later_term_starts_afresh() {
        let t0 = Instant::now();
        let mut m = leader(t0);
        m.granted(LeaseId(1), TTL, t0);
        assert_eq!(m.due(t0 + TTL, 10).len(), 1);
        m.observe(None, 2, t0 + TTL);
        assert_eq!(m.keep_alive(LeaseId(1), t0 + TTL), Err(Refusal::Follower));
        assert_eq!(m.next_wakeup(), None);
        let t1 = t0 + ms(2_000);
        assert!(m.observe(Some(7), 7, t1));
        assert_eq!(m.next_wakeup(), Some(t1 + TTL + EXT));
        assert_eq!(m.remaining(LeaseId(1), t1), Ok(TTL));
        assert_eq!(m.keep_alive(LeaseId(1), t1), Ok(TTL));
    }

    #[test]
    fn a_restore_keeps_known_deadlines_and_extends_new_leases() {
        let t0 = Instant::now();
        let mut m = leader(t0);
        m.granted(LeaseId(1), TTL, t0);
        m.granted(LeaseId(2), TTL, t0);
        let t1 = t0 + ms(100);
        m.restored(&[(LeaseId(1), TTL), (LeaseId(3), TTL)], t1);
        assert_eq!(m.remaining(LeaseId(1), t1), Ok(TTL - ms(100)));
        assert_eq!(m.remaining(LeaseId(2), t1), Err(Refusal::Gone));
        assert_eq!(m.remaining(LeaseId(3), t1), Ok(TTL));
        assert_eq!(m.remaining(LeaseId(3), t1 + EXT), Ok(TTL));
        assert_eq!(m.remaining(LeaseId(3), t1 + EXT + ms(1)), Ok(TTL - ms(1)));
    }
}
