//! Lease safety against a history: a lease that a client kept alive (a
//! grant or keep-alive answered with TTL d, invoked at t) is not expired
//! by the group before `t + share·d`, and a lease that a client granted is
//! revoked only if a client asked for it. `share` allows for the leader's
//! clock running fast (it counts the TTL on its own clock).
//!
//! Lease ends are the history's `lease_end` records (what the members
//! applied, with the time a member first applied it); a call that got no
//! answer (failed or lost on the way) kept nothing alive.

use std::collections::BTreeMap;

use super::Violation;
use super::linear::describe;
use crate::sim::history::{HistoryOp, LeaseEnding, OpKind, Outcome};

/// A lease kept alive is never expired before its TTL ran out.
pub(crate) const LEASE_SAFETY: &str = "lease safety";

/// The share of a TTL checked on a history file, which does not say how
/// far the clocks drifted: 0.75 allows a leader's clock fast by 25% (the
/// lease-focused runs drift up to 20%).
pub(crate) const FILE_TTL_SHARE: f64 = 0.75;

/// Checks the lease ends of `ops` (see the module docs).
pub(crate) fn check_lease_safety(ops: &[HistoryOp], share: f64) -> Vec<Violation> {
    // Lease → (invoked, TTL in ns, op), for every answered grant or
    // keep-alive; and when a revoke was first asked for.
    let mut kept: BTreeMap<i64, Vec<(u64, u64, &HistoryOp)>> = BTreeMap::new();
    let mut granted: BTreeMap<i64, &HistoryOp> = BTreeMap::new();
    let mut revoke_asked: BTreeMap<i64, u64> = BTreeMap::new();
    for op in ops {
        let Some(lease) = op.inputs.lease else {
            continue;
        };
        let ttl_ms = match (op.op, op.outcome) {
            (OpKind::LeaseGrant, outcome) => {
                granted.entry(lease).or_insert(op);
                if outcome != Outcome::Ok {
                    continue;
                }
                op.inputs.ttl_ms
            }
            (OpKind::KeepAlive, Outcome::Ok) => op.outputs.ttl_ms,
            (OpKind::LeaseRevoke, _) => {
                let t = revoke_asked.entry(lease).or_insert(op.invoke_ns);
                *t = (*t).min(op.invoke_ns);
                continue;
            }
            _ => continue,
        };
        let ttl = ttl_ms.unwrap_or(0).saturating_mul(1_000_000);
        kept.entry(lease).or_default().push((op.invoke_ns, ttl, op));
    }
    let mut found = Vec::new();
    for end in ops.iter().filter(|o| o.op == OpKind::LeaseEnd) {
        let Some(lease) = end.inputs.lease else {
            continue;
        };
        let gone = end.invoke_ns;
        match end.outputs.ended {
            Some(LeaseEnding::Expired) => {
                let early = kept
                    .get(&lease)
                    .into_iter()
                    .flatten()
                    .find(|(t, ttl, _)| gone < t.saturating_add((*ttl as f64 * share) as u64));
                if let Some(&(t, ttl, op)) = early {
                    found.push(
                        Violation::new(
                            LEASE_SAFETY,
                            format!(
                                "lease {lease} expired at {} (first applied on member {}), \
                                 but {} kept it alive from {} for {}",
                                crate::sim::fmt_ns(gone),
                                end.member,
                                describe(op),
                                crate::sim::fmt_ns(t),
                                crate::sim::fmt_ns(ttl)
                            ),
                        )
                        .with_ops([op.id, end.id]),
                    );
                }
            }
            Some(LeaseEnding::Revoked) => {
                // Leases of code under test are granted by opaque calls.
                if let Some(grant) = granted.get(&lease)
                    && revoke_asked.get(&lease).is_none_or(|&t| t > gone)
                {
                    found.push(
                        Violation::new(
                            LEASE_SAFETY,
                            format!(
                                "lease {lease} was revoked at {} (first applied on member {}), \
                                 but no client had asked for it",
                                crate::sim::fmt_ns(gone),
                                end.member
                            ),
                        )
                        .with_ops([grant.id, end.id]),
                    );
                }
            }
            None => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::history::{Inputs, Outputs};

    const MS: u64 = 1_000_000;

    fn op(id: u64, kind: OpKind, at: u64, outcome: Outcome) -> HistoryOp {
        HistoryOp {
            id,
            client: 1,
            member: 1,
            incarnation: 1,
            op: kind,
            inputs: Inputs {
                key: "*".into(),
                lease: Some(7),
                ..Inputs::default()
            },
            invoke_ns: at,
            complete_ns: at + MS,
            outcome,
            outputs: Outputs::default(),
        }
    }

    fn history(end_at: u64, ended: LeaseEnding, keep_alive: Outcome) -> Vec<HistoryOp> {
        let mut grant = op(0, OpKind::LeaseGrant, 0, Outcome::Ok);
        grant.inputs.ttl_ms = Some(1_000);
        let mut ka = op(1, OpKind::KeepAlive, 500 * MS, keep_alive);
        if keep_alive == Outcome::Ok {
            ka.outputs.ttl_ms = Some(1_000);
        }
        let mut end = op(2, OpKind::LeaseEnd, end_at, Outcome::Ok);
        end.complete_ns = end_at;
        end.outputs.ended = Some(ended);
        end.outputs.revision = Some(1);
        vec![grant, ka, end]
    }

    #[test]
    fn an_expiry_before_a_kept_alive_ttl_ran_out_is_caught() {
        let early = history(1_200 * MS, LeaseEnding::Expired, Outcome::Ok);
        let v = check_lease_safety(&early, 0.75);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].property, LEASE_SAFETY);
        assert_eq!(v[0].ops, [1, 2]);
        // Late enough, or the keep-alive was never answered.
        assert_eq!(
            check_lease_safety(
                &history(1_300 * MS, LeaseEnding::Expired, Outcome::Ok),
                0.75
            ),
            vec![]
        );
        assert_eq!(
            check_lease_safety(
                &history(1_200 * MS, LeaseEnding::Expired, Outcome::Fail),
                0.75
            ),
            vec![]
        );
    }

    #[test]
    fn a_revocation_nobody_asked_for_is_caught() {
        let h = history(300 * MS, LeaseEnding::Revoked, Outcome::Fail);
        assert_eq!(check_lease_safety(&h, 0.75)[0].property, LEASE_SAFETY);
        let mut asked = h.clone();
        asked.insert(2, op(3, OpKind::LeaseRevoke, 200 * MS, Outcome::Unknown));
        assert_eq!(check_lease_safety(&asked, 0.75), vec![]);
    }
}
