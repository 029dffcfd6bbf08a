//! The end of a run: the group commits again, every member answers,
//! every member holds the same state, and the history is checked.

use ha_core::LogStore;

use super::{CONVERGENCE, DURABILITY, GRACE, LIVENESS, LIVENESS_VALUE, UNKNOWN, World};
use crate::membership::Membership;
use crate::sim::Workload;
use crate::sim::check::{RaftChecks, Violation, check_history_with, describe};
use crate::sim::client::Request;
use crate::sim::executor::SECONDS;
use crate::sim::history::{Consistency, OpKind, Outcome};
use crate::sim::kv;
use crate::sim::kvload::KvRequest;
use crate::sim::member::Process;

impl World {
    /// The final checks. Each stage needs the one before it, except the
    /// checks of the history, which always run.
    pub(super) fn final_checks(&mut self) {
        if self.group_commits_again() {
            self.settle_group();
            if self.every_member_answers() {
                self.members_converge();
                self.watches_catch_up();
            }
        }
        if !self.halted {
            self.check_writes_and_history();
        }
    }

    /// Liveness: a write commits once the faults healed.
    fn group_commits_again(&mut self) -> bool {
        let group = self.in_group();
        for attempt in 0..3u64 {
            let m = self
                .leader()
                .unwrap_or(group[attempt as usize % group.len()]);
            let value = LIVENESS_VALUE + attempt;
            let request = match self.cfg.workload {
                Workload::Registers => Request::Write { key: 0, value },
                Workload::Kv => Request::Kv(KvRequest::Put { key: 0, value }),
            };
            let id = self.invoke_final(m, request);
            let limit = self.now + self.request_timeout + GRACE + SECONDS;
            self.run_until(limit, |w| !w.open.contains_key(&id));
            if self.halted {
                return false;
            }
            if self.ops[id as usize].outcome == Outcome::Ok {
                return true;
            }
        }
        self.fail(Violation::new(
            LIVENESS,
            "no write committed after the faults healed (3 attempts)",
        ));
        false
    }

    /// The final members are those of the leader's configuration; a
    /// process outside it (a new member whose addition the operator gave
    /// up on) is stopped, as its operator would.
    fn settle_group(&mut self) {
        let Some(l) = self.leader() else {
            return;
        };
        let Some(ms) = self.members[l].proc.as_ref().map(|p| p.core.membership()) else {
            return;
        };
        for m in self.in_group() {
            if ms.get(ha_core::NodeId(m as u64 + 1)).is_none() {
                self.retire(m, "not in the final configuration");
            }
        }
    }

    /// Every member answers a linearizable read of every register.
    fn every_member_answers(&mut self) -> bool {
        let mut ids = Vec::new();
        for m in self.in_group() {
            if self.cfg.workload == Workload::Kv {
                let all = KvRequest::Range {
                    consistency: Consistency::Linearizable,
                };
                ids.push(self.invoke_final(m, Request::Kv(all)));
                continue;
            }
            for key in 0..self.cfg.keys.max(1) as u8 {
                ids.push(self.invoke_final(
                    m,
                    Request::Read {
                        key,
                        consistency: Consistency::Linearizable,
                    },
                ));
            }
        }
        let limit = self.now + self.request_timeout + GRACE + SECONDS;
        self.run_until(limit, |w| ids.iter().all(|id| !w.open.contains_key(id)));
        if self.halted {
            return false;
        }
        let Some(&id) = ids
            .iter()
            .find(|&&id| self.ops[id as usize].outcome != Outcome::Ok)
        else {
            return true;
        };
        let v = Violation::new(
            LIVENESS,
            format!(
                "a final linearizable read failed after healing: {}",
                describe(&self.ops[id as usize])
            ),
        )
        .with_ops([id]);
        self.fail(v);
        false
    }

    /// Every member catches up and holds the same state; logs match.
    fn members_converge(&mut self) {
        let limit = self.now + 10 * SECONDS;
        let group = self.in_group();
        let caught_up = |w: &World| {
            let procs: Vec<&Process> = group
                .iter()
                .filter_map(|&m| w.members[m].proc.as_ref())
                .collect();
            let top = procs.iter().map(|p| p.core.commit()).max().unwrap_or(0);
            procs.len() == group.len() && procs.iter().all(|p| p.applier.applied() == top)
        };
        if !self.run_until(limit, caught_up) {
            if !self.halted {
                self.fail(Violation::new(
                    CONVERGENCE,
                    "members did not all apply the same index within 10s of quiet",
                ));
            }
            return;
        }
        let digests: Vec<Vec<u8>> = group
            .iter()
            .filter_map(|&m| self.members[m].proc.as_ref())
            .map(|p| p.applier.query(&kv::digest_query()).to_vec())
            .collect();
        if digests.windows(2).any(|w| w[0] != w[1]) {
            let shown: Vec<String> = digests
                .iter()
                .zip(&group)
                .map(|(d, m)| format!("member {}: {:02x?}", m + 1, d))
                .collect();
            self.fail(Violation::new(
                CONVERGENCE,
                format!("state digests differ: {}", shown.join(", ")),
            ));
        }
        let memberships: Vec<Membership> = group
            .iter()
            .filter_map(|&m| self.members[m].proc.as_ref())
            .map(|p| p.core.membership())
            .collect();
        if memberships.windows(2).any(|w| w[0] != w[1]) {
            let shown: Vec<String> = memberships
                .iter()
                .zip(&group)
                .map(|(ms, m)| format!("member {}: {:?}", m + 1, ms.members))
                .collect();
            self.fail(Violation::new(
                CONVERGENCE,
                format!("memberships differ: {}", shown.join(", ")),
            ));
        }
        let mut logs = Vec::new();
        for &m in &group {
            let log = &self.members[m].log;
            let first = log.first_index().unwrap_or(1);
            let last = log.last_index().unwrap_or(0);
            let terms = log
                .entries(first, last + 1, None)
                .map(|es| es.iter().map(|e| e.term).collect())
                .unwrap_or_default();
            logs.push((m, first, terms));
        }
        if let Err(v) = RaftChecks::log_matching(&logs) {
            self.fail(v);
        }
    }

    /// Acknowledged writes applied at the index they reported, failed ones
    /// nowhere; the history is linearizable; few outcomes are unknown.
    fn check_writes_and_history(&mut self) {
        let mut found = Vec::new();
        for op in &self.ops {
            if matches!(op.op, OpKind::Put | OpKind::Txn) {
                // Values are unique: the observers saw each put once.
                let applied_at = op.inputs.value.and_then(|v| self.kv_truth.put_revision(v));
                let put = op.op == OpKind::Put || op.outputs.succeeded == Some(true);
                let broken = match op.outcome {
                    Outcome::Ok if put && applied_at.is_none() => {
                        Some("was acknowledged but no member ever applied it")
                    }
                    Outcome::Ok if put && applied_at != op.outputs.revision => {
                        Some("was acknowledged at another revision than the one it applied at")
                    }
                    Outcome::Ok if !put && applied_at.is_some() => {
                        Some("failed its compare but its value was put")
                    }
                    Outcome::Fail if applied_at.is_some() => {
                        Some("was reported failed but applied")
                    }
                    _ => None,
                };
                if let Some(why) = broken {
                    found.push(
                        Violation::new(DURABILITY, format!("{} {why}", describe(op)))
                            .with_ops([op.id]),
                    );
                }
                continue;
            }
            if op.op != OpKind::Write {
                continue;
            }
            let applied_at = op.inputs.value.and_then(|v| self.checks.index_of(v));
            let broken = match op.outcome {
                Outcome::Ok if applied_at.is_none() => {
                    Some("was acknowledged but no member ever applied it")
                }
                Outcome::Ok if applied_at != op.outputs.index => {
                    Some("was acknowledged at another index than the one it applied at")
                }
                Outcome::Fail if applied_at.is_some() => Some("was reported failed but applied"),
                _ => None,
            };
            if let Some(why) = broken {
                found.push(
                    Violation::new(DURABILITY, format!("{} {why}", describe(op))).with_ops([op.id]),
                );
            }
        }
        found.extend(self.check_watches());
        self.record_watches();
        self.record_lease_ends();
        found.extend(check_history_with(&self.ops, self.lease_ttl_share()));
        for v in found {
            self.record(v);
        }
        if self.counters.unknown * 100 > self.counters.ops {
            self.record(Violation::new(
                UNKNOWN,
                format!(
                    "{} of {} operations ended unknown ({:.2}%)",
                    self.counters.unknown,
                    self.counters.ops,
                    self.counters.unknown_pct()
                ),
            ));
        }
    }
}
