//! Leases in the world: lease calls (keep-alive, time-to-live) answered by
//! the leader's production `LeaseManager`, a follower's forward to the
//! leader carried by the simulated network (delay, loss, slow links, cuts
//! in flight) as the keeper's peer call is; and the lease ends the members
//! applied, recorded in the history as `lease_end` records.

use std::collections::BTreeMap;
use std::time::Duration;

use ha_core::{EventKind, LeaseId};

use super::{Event, World};
use crate::kv::lease::Refusal;
use crate::sim::client::{RawResult, Request};
use crate::sim::executor::Nanos;
use crate::sim::history::{HistoryOp, Inputs, LeaseEnding, OpKind, Outcome, Outputs};
use crate::sim::kvload::{ALL_KEYS, KvRequest, REVISIONS_AGREE};

/// The client id of `lease_end` records.
pub(super) const LEASE_END_CLIENT: u64 = 3_000_000;

/// Which call of the leader's lease manager a lease request makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LeaseCall {
    KeepAlive,
    TimeToLive,
}

/// The leader's answer to a lease call.
#[derive(Clone, Copy, Debug)]
pub(super) struct LeaseAnswer {
    result: Result<Duration, Refusal>,
    /// The member that answered.
    leader: usize,
    term: u64,
}

/// A lease end as the first member to apply it saw it.
#[derive(Clone, Copy, Debug)]
pub(super) struct LeaseEndSeen {
    at: Nanos,
    member: usize,
    incarnation: u64,
    expired: bool,
    wrote: Option<i64>,
    revision: i64,
}

impl World {
    /// A lease call reaches member `m`: its lease manager answers if it
    /// leads; else `m` forwards the call to the leader it knows (as the
    /// keeper does, by a peer call), if that one runs and the link is up
    /// both ways. The forward and its answer each cross the network: they
    /// take its delay, and either can be lost (then the client hears
    /// nothing and its deadline fails the call).
    pub(super) fn lease_call(&mut self, id: u64, m: usize, call: LeaseCall, lease: i64) {
        let Some(l) = self.lease_target(m) else {
            let answer = LeaseAnswer {
                result: Err(Refusal::Follower),
                leader: m,
                term: 0,
            };
            return self.lease_answered(id, answer, "no leader reachable");
        };
        if l == m {
            let answer = self.lease_answer(l, call, lease);
            return self.lease_answered(id, answer, "");
        }
        let delays = self.net.deliveries(&mut self.lease_rng, m, l);
        let Some(&delay) = delays.first() else {
            self.counters.lease_calls_lost += 1;
            self.trace(|| format!("op {id}: lease call forward {} -> {} lost", m + 1, l + 1));
            return;
        };
        let event = Event::LeaseForward {
            id,
            from: m,
            from_life: self.members[m].life,
            to: l,
            to_life: self.members[l].life,
            call,
            lease,
        };
        self.after(delay, event);
    }

    /// A forwarded lease call arrives at the leader `to`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lease_forward_arrives(
        &mut self,
        id: u64,
        from: usize,
        from_life: u64,
        to: usize,
        to_life: u64,
        call: LeaseCall,
        lease: i64,
    ) {
        if !self.alive(to, to_life) || self.net.is_cut(from, to) {
            self.counters.lease_calls_lost += 1;
            self.trace(|| {
                format!(
                    "op {id}: lease call forward {} -> {} lost",
                    from + 1,
                    to + 1
                )
            });
            return;
        }
        let answer = self.lease_answer(to, call, lease);
        let delays = self.net.deliveries(&mut self.lease_rng, to, from);
        let Some(&delay) = delays.first() else {
            self.counters.lease_calls_lost += 1;
            self.trace(|| format!("op {id}: lease answer {} -> {} lost", to + 1, from + 1));
            return;
        };
        self.after(
            delay,
            Event::LeaseAnswer {
                id,
                from,
                from_life,
                to,
                answer,
            },
        );
    }

    /// The leader's answer arrives back at the member that forwarded it.
    pub(super) fn lease_answer_arrives(
        &mut self,
        id: u64,
        from: usize,
        from_life: u64,
        to: usize,
        answer: LeaseAnswer,
    ) {
        if !self.alive(from, from_life) || self.net.is_cut(to, from) {
            self.counters.lease_calls_lost += 1;
            self.trace(|| format!("op {id}: lease answer {} -> {} lost", to + 1, from + 1));
            return;
        }
        self.lease_answered(id, answer, "");
    }

    /// Member `l`'s lease manager answers, on its clock, following the
    /// engine's role first (as `KvNode::leader_call` does).
    fn lease_answer(&mut self, l: usize, call: LeaseCall, lease: i64) -> LeaseAnswer {
        let now = self.instant_of(l);
        let Some(p) = self.members[l].proc.as_mut() else {
            return LeaseAnswer {
                result: Err(Refusal::Follower),
                leader: l,
                term: 0,
            };
        };
        let term = p.core.leader().term;
        let leading = p.core.is_leader().then_some(term);
        p.leases.observe(leading, p.applied_term, now);
        let result = match call {
            LeaseCall::KeepAlive => p.leases.keep_alive(LeaseId(lease), now),
            LeaseCall::TimeToLive => p.leases.remaining(LeaseId(lease), now),
        };
        LeaseAnswer {
            result,
            leader: l,
            term,
        }
    }

    /// The client of lease call `id` hears `answer` (`why`: the error to
    /// record for a refusal, if not the refusal itself).
    fn lease_answered(&mut self, id: u64, answer: LeaseAnswer, why: &str) {
        let Some(request) = self.open.get(&id).map(|r| r.request) else {
            return;
        };
        let error = |r: Refusal| {
            if why.is_empty() {
                format!("{r:?}")
            } else {
                why.to_owned()
            }
        };
        match request {
            Request::Raw(kind) => {
                let keep_alive = matches!(kind, crate::sim::client::RawKind::KeepAlive { .. });
                match answer.result {
                    Ok(ttl) => {
                        self.counters.keep_alives += u64::from(keep_alive);
                        self.board.set_raw_result(
                            id,
                            RawResult::Lease {
                                ttl,
                                leader: answer.leader as u64 + 1,
                                term: answer.term,
                            },
                        );
                        self.complete(id, Outcome::Ok, Outputs::default());
                    }
                    Err(r) => {
                        self.board.set_raw_result(id, RawResult::Refused(r));
                        self.complete(id, Outcome::Fail, Outputs::error(error(r)));
                    }
                }
            }
            Request::Kv(KvRequest::KeepAlive { .. }) => match answer.result {
                Ok(ttl) => {
                    self.counters.keep_alives += 1;
                    let outputs = Outputs {
                        ttl_ms: Some(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
                        ..Outputs::default()
                    };
                    self.complete(id, Outcome::Ok, outputs);
                }
                Err(r) => self.complete(id, Outcome::Fail, Outputs::error(error(r))),
            },
            _ => {}
        }
    }

    /// A member applied a command that ended a lease (see
    /// `SimMachine::apply_mvcc`): the first member to apply it dates it;
    /// every later one must agree on how it ended and what it wrote.
    pub(super) fn lease_ended(
        &mut self,
        member: usize,
        id: LeaseId,
        expired: bool,
        wrote: Option<i64>,
        revision: i64,
    ) {
        let incarnation = self.members[member]
            .proc
            .as_ref()
            .map_or(0, |p| p.incarnation);
        match self.lease_ends.get(&id.0) {
            None => {
                self.lease_ends.insert(
                    id.0,
                    LeaseEndSeen {
                        at: self.now,
                        member,
                        incarnation,
                        expired,
                        wrote,
                        revision,
                    },
                );
                self.trace(|| {
                    format!(
                        "lease {} {} (first applied on member {}), wrote {wrote:?}",
                        id.0,
                        if expired { "expired" } else { "revoked" },
                        member + 1
                    )
                });
            }
            Some(first) if (first.expired, first.wrote) != (expired, wrote) => {
                let v = crate::sim::check::Violation::new(
                    REVISIONS_AGREE,
                    format!(
                        "member {} ended lease {} ({}, wrote {wrote:?}) otherwise than member {} \
                         did ({}, wrote {:?})",
                        member + 1,
                        id.0,
                        if expired { "expired" } else { "revoked" },
                        first.member + 1,
                        if first.expired { "expired" } else { "revoked" },
                        first.wrote
                    ),
                );
                self.fail(v);
            }
            Some(_) => {}
        }
    }

    /// Appends a `lease_end` record for every lease a member applied the
    /// end of (the keys it deleted: the delete events of the revision it
    /// wrote, as first applied), and counts the expiries.
    pub(super) fn record_lease_ends(&mut self) {
        let ends: Vec<(i64, LeaseEndSeen)> =
            self.lease_ends.iter().map(|(k, v)| (*k, *v)).collect();
        for (lease, seen) in ends {
            let keys: Vec<String> = match seen.wrote {
                Some(r) => self
                    .kv_truth
                    .events_between(r, r)
                    .flat_map(|(_, events)| events.iter())
                    .filter(|e| e.kind == EventKind::Delete)
                    .map(|e| String::from_utf8_lossy(&e.kv.key).into_owned())
                    .collect(),
                None => Vec::new(),
            };
            if seen.expired {
                self.counters.lease_expiries += 1;
            }
            let id = self.ops.len() as u64;
            self.ops.push(HistoryOp {
                id,
                client: LEASE_END_CLIENT,
                member: seen.member as u64 + 1,
                incarnation: seen.incarnation,
                op: OpKind::LeaseEnd,
                inputs: Inputs {
                    key: ALL_KEYS.to_owned(),
                    lease: Some(lease),
                    ..Inputs::default()
                },
                invoke_ns: seen.at,
                complete_ns: seen.at,
                outcome: Outcome::Ok,
                outputs: Outputs {
                    revision: Some(seen.wrote.unwrap_or(seen.revision)),
                    ended: Some(if seen.expired {
                        LeaseEnding::Expired
                    } else {
                        LeaseEnding::Revoked
                    }),
                    keys: Some(keys),
                    ..Outputs::default()
                },
            });
        }
    }

    /// The share of a TTL that a kept-alive lease must outlive in virtual
    /// time: a leader counts the TTL on its own clock, which runs fast by
    /// up to this seed's drift (a little margin for tick granularity).
    pub(super) fn lease_ttl_share(&self) -> f64 {
        1.0 - self.drift - 0.02
    }
}

/// Lease ends by lease id.
pub(super) type LeaseEnds = BTreeMap<i64, LeaseEndSeen>;
