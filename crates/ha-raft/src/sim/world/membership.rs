//! The operator: membership changes made through the leader's core with
//! the calls `Node::change_membership` makes (`Core::propose_membership`,
//! and a leader transfer first when the leader itself is to go), retried
//! the way an operator retries: on every refusal, and after an unknown
//! outcome once the applied membership shows whether it took effect.
//!
//! New members get new ids (never reused), start empty (`StartMode::Join`)
//! and catch up from the log or a snapshot; a removed member's process is
//! stopped once its removal is applied.

use std::collections::VecDeque;

use bytes::Bytes;
use ha_core::{Error, NodeId};

use super::{Event, World};
use crate::core::Outbox;
use crate::membership::{MemberChange, MemberRole, Membership};
use crate::sim::executor::{MILLIS, Nanos, SECONDS};
use crate::sim::faults::{MembershipKind, Promotion, Target};
use crate::sim::member::Member;

/// Group sizes the operator keeps to: at least three voters, at most five,
/// and at most six members with learners.
const MIN_VOTERS: usize = 3;
const MAX_VOTERS: usize = 5;
const MAX_MEMBERS: usize = 6;
/// The deadline the operator gives each request.
const REQUEST_DEADLINE: Nanos = 1500 * MILLIS;

#[derive(Clone, Debug)]
enum Step {
    Change(Vec<MemberChange>),
    /// Wait until the leader has promoted this learner by itself.
    AwaitVoter(NodeId),
}

/// One operator change in progress.
pub(crate) struct MemberOp {
    what: String,
    steps: VecDeque<Step>,
    /// The operator gives up then.
    deadline: Nanos,
    /// The request waiting for its answer.
    pending: Option<u64>,
    done: bool,
}

fn id_of(m: usize) -> NodeId {
    NodeId(m as u64 + 1)
}

fn address(id: NodeId) -> Bytes {
    Bytes::from(format!("sim-member-{}", id.0))
}

/// Whether every change of a step shows in the applied membership.
fn in_effect(changes: &[MemberChange], ms: &Membership) -> bool {
    let role = |id: NodeId| ms.get(id).map(|m| m.role);
    changes.iter().all(|c| match c {
        MemberChange::AddLearner { id, .. } => role(*id).is_some(),
        MemberChange::AddVoter { id, .. } | MemberChange::Promote(id) => {
            role(*id) == Some(MemberRole::Voter)
        }
        MemberChange::Remove(id) => ms.removed.contains(id) && role(*id).is_none(),
    })
}

impl World {
    /// The leader's applied membership.
    fn leader_membership(&self) -> Option<(usize, Membership)> {
        let l = self.leader()?;
        let p = self.members[l].proc.as_ref()?;
        Some((l, p.core.membership()))
    }

    /// Every membership change of the plan has finished or was given up.
    pub(super) fn member_ops_done(&self) -> bool {
        self.member_ops.iter().all(|o| o.done)
    }

    /// A new member slot with the next id; its process starts empty.
    fn new_member(&mut self) -> usize {
        let m = self.members.len();
        let id = id_of(m);
        let cfg = super::member_config(&self.cfg, self.cfg.members, id, self.compaction);
        let tick = u64::try_from(cfg.tick_interval.as_nanos()).unwrap_or(u64::MAX);
        let skew = self.rng.float(-self.drift, self.drift);
        let tick_ns = (tick as f64 * (1.0 + skew)) as Nanos;
        self.members.push(Member::new(cfg, tick_ns));
        self.checks.add_member();
        self.start(m);
        m
    }

    /// A voter to remove, as `target` says.
    fn pick_voter(&mut self, target: Target, leader: usize, ms: &Membership) -> Option<usize> {
        let voters: Vec<usize> = ms
            .members
            .iter()
            .filter(|x| x.role == MemberRole::Voter)
            .map(|x| (x.id.0 - 1) as usize)
            .collect();
        let followers: Vec<usize> = voters.iter().copied().filter(|&v| v != leader).collect();
        match target {
            Target::Leader => Some(leader),
            Target::Follower if followers.is_empty() => None,
            Target::Follower => Some(self.rng.pick(&followers)),
            Target::Any => Some(self.rng.pick(&voters)),
        }
    }

    /// A planned membership change starts: it becomes steps that fit the
    /// group as it is now.
    pub(super) fn membership_start(&mut self, kind: MembershipKind, duration: Nanos) {
        let Some((leader, ms)) = self.leader_membership() else {
            self.log_fault(format!("membership change {kind:?} skipped: no leader"));
            return;
        };
        let voters = ms.voters().len();
        let kind = match kind {
            MembershipKind::Grow(_) if voters >= MAX_VOTERS || ms.members.len() >= MAX_MEMBERS => {
                MembershipKind::Replace(Target::Any)
            }
            MembershipKind::Shrink(t) if voters <= MIN_VOTERS => MembershipKind::Replace(t),
            k => k,
        };
        let learner = |id| MemberChange::AddLearner {
            id,
            address: address(id),
            promote_when_caught_up: false,
        };
        let (what, steps) = match kind {
            MembershipKind::Grow(promotion) => {
                let id = id_of(self.new_member());
                let steps = match promotion {
                    Promotion::Explicit => {
                        vec![
                            Step::Change(vec![learner(id)]),
                            Step::Change(vec![MemberChange::Promote(id)]),
                        ]
                    }
                    Promotion::Auto => vec![
                        Step::Change(vec![MemberChange::AddLearner {
                            id,
                            address: address(id),
                            promote_when_caught_up: true,
                        }]),
                        Step::AwaitVoter(id),
                    ],
                    Promotion::Never => vec![Step::Change(vec![learner(id)])],
                };
                (
                    format!("add member {} ({promotion:?} promotion)", id.0),
                    steps,
                )
            }
            MembershipKind::Shrink(target) => {
                let Some(v) = self.pick_voter(target, leader, &ms) else {
                    return;
                };
                (
                    format!("remove voter {}", v + 1),
                    vec![Step::Change(vec![MemberChange::Remove(id_of(v))])],
                )
            }
            MembershipKind::Replace(target) => {
                let Some(v) = self.pick_voter(target, leader, &ms) else {
                    return;
                };
                let id = id_of(self.new_member());
                (
                    format!("replace voter {} by {}", v + 1, id.0),
                    vec![
                        Step::Change(vec![learner(id)]),
                        Step::Change(vec![MemberChange::Promote(id)]),
                        Step::Change(vec![MemberChange::Remove(id_of(v))]),
                    ],
                )
            }
            MembershipKind::JointReplace(target) => {
                let Some(v) = self.pick_voter(target, leader, &ms) else {
                    return;
                };
                let id = id_of(self.new_member());
                let old = MemberChange::Remove(id_of(v));
                if self.rng.chance(0.5) {
                    (
                        format!("replace voter {} by {} in one joint change", v + 1, id.0),
                        vec![Step::Change(vec![
                            MemberChange::AddVoter {
                                id,
                                address: address(id),
                            },
                            old,
                        ])],
                    )
                } else {
                    (
                        format!(
                            "replace voter {} by learner {} promoted in one joint change",
                            v + 1,
                            id.0
                        ),
                        vec![
                            Step::Change(vec![learner(id)]),
                            Step::Change(vec![MemberChange::Promote(id), old]),
                        ],
                    )
                }
            }
        };
        self.log_fault(format!("membership: {what}"));
        let deadline = (self.now + duration).min(self.heal_at + SECONDS);
        let op = self.member_ops.len();
        self.member_ops.push(MemberOp {
            what,
            steps: steps.into(),
            deadline,
            pending: None,
            done: false,
        });
        self.after(0, Event::MemberOp { op });
    }

    fn member_op_retry(&mut self, op: usize) {
        let d = self.rng.between(50 * MILLIS, 300 * MILLIS);
        self.after(d, Event::MemberOp { op });
    }

    /// The next step of operator change `op`.
    pub(super) fn member_op_step(&mut self, op: usize) {
        let o = &self.member_ops[op];
        if o.done || o.pending.is_some() {
            return;
        }
        if self.now >= o.deadline {
            let what = o.what.clone();
            self.member_ops[op].done = true;
            self.log_fault(format!("membership: gave up on {what}"));
            return;
        }
        let Some(step) = o.steps.front().cloned() else {
            let what = o.what.clone();
            self.member_ops[op].done = true;
            self.log_fault(format!("membership: done: {what}"));
            return;
        };
        let Some((l, ms)) = self.leader_membership() else {
            return self.member_op_retry(op);
        };
        let changes = match step {
            Step::AwaitVoter(id) => {
                if ms.get(id).is_some_and(|x| x.role == MemberRole::Voter) {
                    self.member_step_done(op);
                } else {
                    self.member_op_retry(op);
                }
                return;
            }
            Step::Change(changes) => changes,
        };
        if ms.joint {
            // A joint configuration is left automatically; wait for it.
            return self.member_op_retry(op);
        }
        if in_effect(&changes, &ms) {
            // An earlier attempt whose outcome was unknown took effect.
            return self.member_step_done(op);
        }
        let removes_leader = changes
            .iter()
            .any(|c| matches!(c, MemberChange::Remove(id) if *id == id_of(l)));
        let instant = self.instant_of(l);
        let mut out = Outbox::default();
        let Some(p) = self.members[l].proc.as_mut() else {
            return self.member_op_retry(op);
        };
        if removes_leader {
            // As `Node::change_membership`: the leader hands over first and
            // the request goes to the new leader.
            if let Some(to) = p.core.best_transferee() {
                let _ = p.core.transfer_leader(to);
                self.counters.transfers += 1;
                self.trace(|| format!("membership: leader {} hands over to {} first", l + 1, to.0));
            }
            self.drive(l, out);
            return self.member_op_retry(op);
        }
        self.next_conf_token += 1;
        let token = self.next_conf_token;
        self.conf_tokens.insert(token, op);
        self.member_ops[op].pending = Some(token);
        let deadline = instant + std::time::Duration::from_nanos(REQUEST_DEADLINE);
        self.trace(|| {
            format!(
                "membership: member {} proposes {changes:?} (token {token})",
                l + 1
            )
        });
        if let Some(p) = self.members[l].proc.as_mut() {
            p.core
                .propose_membership(token, changes, false, deadline, &mut out);
        }
        self.drive(l, out);
    }

    /// The current step of `op` took effect: act on it and go on.
    fn member_step_done(&mut self, op: usize) {
        let Some(step) = self.member_ops[op].steps.pop_front() else {
            return;
        };
        if let Step::Change(changes) = step {
            for c in changes {
                if let MemberChange::Remove(id) = c {
                    // The operator stops the removed member's process.
                    self.retire((id.0 - 1) as usize, "removed from the group");
                }
            }
        }
        let d = self.rng.between(10 * MILLIS, 300 * MILLIS);
        self.after(d, Event::MemberOp { op });
    }

    /// A membership request answered (from the core's outbox).
    pub(super) fn membership_answered(&mut self, token: u64, result: Result<(), Error>) {
        let Some(op) = self.conf_tokens.remove(&token) else {
            return;
        };
        self.member_ops[op].pending = None;
        self.trace(|| format!("membership: token {token} answered {result:?}"));
        match result {
            Ok(()) => self.member_step_done(op),
            // Refused, dropped or unknown: the next attempt looks at the
            // applied membership first.
            Err(_) => self.member_op_retry(op),
        }
    }

    /// Stops member `m` for good: removed from the group, or never added.
    pub(super) fn retire(&mut self, m: usize, why: &str) {
        if m >= self.members.len() || self.members[m].removed {
            return;
        }
        self.members[m].removed = true;
        self.log_fault(format!("member {} stops: {why}", m + 1));
        // A graceful stop (`KvNode::shutdown`): the watches end first.
        self.watches_stop(m);
        self.take_down(m, "member removed");
        self.members[m].held.clear();
    }
}
