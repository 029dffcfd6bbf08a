//! Linearizability of a register history, in O(n log n).
//!
//! Every write carries a unique value and reports the log index it applied
//! at, and every read reports the value and index it saw, so the order of
//! writes is known and each read names its write (etcd's robustness tests
//! use the same trick). What is left is a question about intervals: give
//! each write the position `2·index` and each read `2·seen + 1` (just after
//! the write it saw). A history is linearizable exactly when no operation
//! that finished before another started has a larger position: then the
//! positions, ties between reads broken by real time, are a linear
//! extension of real-time order, and every linear extension of an interval
//! order can be realised by points inside the intervals. One sweep over
//! the operations sorted by start, with the largest position among those
//! already finished, finds the first pair that breaks it.
//!
//! Unknown writes never finished (they may or may not have happened): they
//! take part only if some read saw them, which gives their index.
//! Serializable reads promise less: on one member process they never go
//! backwards, and they never see a write that had not started.

use std::collections::BTreeMap;

use super::Violation;
use crate::sim::history::{Consistency, HistoryOp, OpKind, Outcome};

const LINEARIZABILITY: &str = "linearizability";
const SERIALIZABLE: &str = "serializable reads monotonic";
const WELL_FORMED: &str = "well-formed history";

#[derive(Clone, Copy, Debug)]
pub(super) struct Interval {
    pub(super) inv: u64,
    pub(super) comp: u64,
    pub(super) pos: u64,
    /// Position in the history slice.
    pub(super) at: usize,
}

/// The first `(a, b)` with `a` finished before `b` started but placed after
/// it, in order of `b`'s start.
pub(super) fn first_inversion(items: &[Interval]) -> Option<(usize, usize)> {
    let mut by_comp: Vec<&Interval> = items.iter().collect();
    by_comp.sort_by_key(|i| (i.comp, i.at));
    let mut by_inv: Vec<&Interval> = items.iter().collect();
    by_inv.sort_by_key(|i| (i.inv, i.at));
    let mut best: Option<&Interval> = None;
    let mut j = 0;
    for b in by_inv {
        while j < by_comp.len() && by_comp[j].comp < b.inv {
            if best.is_none_or(|x| by_comp[j].pos > x.pos) {
                best = Some(by_comp[j]);
            }
            j += 1;
        }
        if let Some(a) = best.filter(|a| a.pos > b.pos) {
            return Some((a.at, b.at));
        }
    }
    None
}

struct WriteInfo {
    at: usize,
    index: Option<u64>,
}

/// Describes an operation for a violation message.
pub(crate) fn describe(op: &HistoryOp) -> String {
    let window = if op.outcome == Outcome::Unknown {
        format!("[{}, ?)", crate::sim::fmt_ns(op.invoke_ns))
    } else {
        format!(
            "[{}, {}]",
            crate::sim::fmt_ns(op.invoke_ns),
            crate::sim::fmt_ns(op.complete_ns)
        )
    };
    let what = match op.op {
        k if k.is_kv() => super::kv::describe_kv(op),
        OpKind::Watch => format!(
            "watch {} from {}{}",
            op.inputs.key,
            op.inputs.revision.unwrap_or(0),
            op.inputs
                .filter
                .map(|f| format!(" {f:?}"))
                .unwrap_or_default()
        ),
        OpKind::Opaque | OpKind::OpaqueWrite => format!(
            "{} call -> {:?}{}",
            if op.op == OpKind::Opaque {
                "read"
            } else {
                "write"
            },
            op.outcome,
            op.outputs
                .error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ),
        OpKind::Write => format!(
            "write {}={} -> {:?}{}",
            op.inputs.key,
            op.inputs.value.unwrap_or(0),
            op.outcome,
            op.outputs
                .index
                .map(|i| format!(" @{i}"))
                .unwrap_or_default()
        ),
        _ => {
            let c = match op.inputs.consistency {
                Some(Consistency::Serializable) => "serializable ",
                Some(Consistency::Lease) => "lease ",
                _ => "",
            };
            match op.outcome {
                Outcome::Ok => format!(
                    "{c}read {} -> {} @{}",
                    op.inputs.key,
                    op.outputs
                        .value
                        .map_or_else(|| "empty".to_owned(), |v| v.to_string()),
                    op.outputs.index.unwrap_or(0)
                ),
                o => format!("{c}read {} -> {o:?}", op.inputs.key),
            }
        }
    };
    format!(
        "op {} (client {}, member {}) {what} {window}",
        op.id, op.client, op.member
    )
}

/// Checks a history: linearizability of writes and linearizable reads,
/// what serializable reads promise, and that every read saw a value that
/// some write (not a failed one) wrote — per register for the register
/// workload, over the revision order for the KV workload (see
/// `docs/SIM.md`); the KV workload's lease ends (each lease's keys gone at
/// its revision, no expiry before a kept-alive TTL ran out, with a leader
/// clock up to 25% fast) and watch records. Returns every violation found,
/// the first one first.
pub fn check_history(ops: &[HistoryOp]) -> Vec<Violation> {
    check_history_with(ops, super::lease::FILE_TTL_SHARE)
}

/// [`check_history`], with lease safety checked for the share of a TTL a
/// kept-alive lease must outlive (the simulator knows how far its clocks
/// drift; a file does not).
pub(crate) fn check_history_with(ops: &[HistoryOp], ttl_share: f64) -> Vec<Violation> {
    let mut violations = check_registers(ops);
    violations.extend(super::kv::check_kv(ops));
    violations.extend(super::lease::check_lease_safety(ops, ttl_share));
    violations.extend(super::watch::check_watch_records(ops));
    violations
}

fn check_registers(ops: &[HistoryOp]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut writes: BTreeMap<u64, WriteInfo> = BTreeMap::new();
    for (at, op) in ops.iter().enumerate() {
        if op.op != OpKind::Write {
            continue;
        }
        let Some(value) = op.inputs.value else {
            violations.push(
                Violation::new(WELL_FORMED, format!("{} has no value", describe(op)))
                    .with_ops([op.id]),
            );
            continue;
        };
        let index = match op.outcome {
            Outcome::Ok => match op.outputs.index {
                Some(i) => Some(i),
                None => {
                    violations.push(
                        Violation::new(
                            WELL_FORMED,
                            format!("{} completed without an index", describe(op)),
                        )
                        .with_ops([op.id]),
                    );
                    continue;
                }
            },
            _ => None,
        };
        if let Some(first) = writes.insert(value, WriteInfo { at, index }) {
            violations.push(
                Violation::new(
                    WELL_FORMED,
                    format!("value {value} is written twice: the check needs unique values"),
                )
                .with_ops([ops[first.at].id, op.id]),
            );
        }
    }

    // What each successful read saw, as a log index; unknown writes learn
    // their index here.
    let mut seen: Vec<Option<u64>> = vec![None; ops.len()];
    for (at, op) in ops.iter().enumerate() {
        if op.op != OpKind::Read || op.outcome != Outcome::Ok {
            continue;
        }
        let Some(value) = op.outputs.value else {
            seen[at] = Some(0);
            continue;
        };
        let Some(w) = writes.get_mut(&value) else {
            violations.push(
                Violation::new(
                    LINEARIZABILITY,
                    format!("{} saw a value nobody wrote", describe(op)),
                )
                .with_ops([op.id]),
            );
            continue;
        };
        let wop = &ops[w.at];
        if wop.inputs.key != op.inputs.key {
            violations.push(
                Violation::new(
                    LINEARIZABILITY,
                    format!(
                        "{} saw the value written to another register by {}",
                        describe(op),
                        describe(wop)
                    ),
                )
                .with_ops([wop.id, op.id]),
            );
            continue;
        }
        if wop.outcome == Outcome::Fail {
            violations.push(
                Violation::new(
                    LINEARIZABILITY,
                    format!(
                        "{} saw the value of {}, which was reported as failed",
                        describe(op),
                        describe(wop)
                    ),
                )
                .with_ops([wop.id, op.id]),
            );
            continue;
        }
        let Some(index) = op.outputs.index.filter(|&i| i > 0) else {
            violations.push(
                Violation::new(
                    WELL_FORMED,
                    format!("{} saw a value but no index", describe(op)),
                )
                .with_ops([op.id]),
            );
            continue;
        };
        match w.index {
            Some(i) if i != index => {
                violations.push(
                    Violation::new(
                        LINEARIZABILITY,
                        format!(
                            "{} saw the value of {} at index {index}: the write took effect \
                             at two places in the log",
                            describe(op),
                            describe(wop)
                        ),
                    )
                    .with_ops([wop.id, op.id]),
                );
                continue;
            }
            _ => w.index = Some(index),
        }
        seen[at] = Some(index);
    }

    // Linearizable operations, per register.
    let mut per_key: BTreeMap<&str, Vec<Interval>> = BTreeMap::new();
    let mut index_owner: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    for w in writes.values() {
        let op = &ops[w.at];
        let Some(index) = w.index else { continue };
        if let Some(&other) = index_owner.get(&(op.inputs.key.as_str(), index)) {
            violations.push(
                Violation::new(
                    LINEARIZABILITY,
                    format!(
                        "{} and {} both claim index {index}",
                        describe(&ops[other]),
                        describe(op)
                    ),
                )
                .with_ops([ops[other].id, op.id]),
            );
            continue;
        }
        index_owner.insert((op.inputs.key.as_str(), index), w.at);
        let comp = if op.outcome == Outcome::Ok {
            op.complete_ns
        } else {
            u64::MAX
        };
        per_key
            .entry(op.inputs.key.as_str())
            .or_default()
            .push(Interval {
                inv: op.invoke_ns,
                comp,
                pos: 2 * index,
                at: w.at,
            });
    }
    for (at, op) in ops.iter().enumerate() {
        if op.op == OpKind::Read
            && op.inputs.consistency != Some(Consistency::Serializable)
            && let Some(index) = seen[at]
        {
            per_key
                .entry(op.inputs.key.as_str())
                .or_default()
                .push(Interval {
                    inv: op.invoke_ns,
                    comp: op.complete_ns,
                    pos: 2 * index + 1,
                    at,
                });
        }
    }
    for items in per_key.values() {
        if let Some((a, b)) = first_inversion(items) {
            let (a, b) = (&ops[a], &ops[b]);
            violations.push(
                Violation::new(
                    LINEARIZABILITY,
                    format!(
                        "{} finished before {} started, yet must be ordered after it",
                        describe(a),
                        describe(b)
                    ),
                )
                .with_ops([a.id, b.id]),
            );
        }
    }

    // Serializable reads: monotonic per member process, never from the
    // future.
    let mut per_process: BTreeMap<(u64, u64), Vec<usize>> = BTreeMap::new();
    for (at, op) in ops.iter().enumerate() {
        if op.op == OpKind::Read
            && op.inputs.consistency == Some(Consistency::Serializable)
            && let Some(index) = seen[at]
        {
            if let Some(w) = op.outputs.value.and_then(|v| writes.get(&v))
                && ops[w.at].invoke_ns > op.complete_ns
            {
                violations.push(
                    Violation::new(
                        SERIALIZABLE,
                        format!(
                            "{} saw {}, which started after the read finished",
                            describe(op),
                            describe(&ops[w.at])
                        ),
                    )
                    .with_ops([ops[w.at].id, op.id]),
                );
            }
            let _ = index;
            per_process
                .entry((op.member, op.incarnation))
                .or_default()
                .push(at);
        }
    }
    for reads in per_process.values() {
        let applied: Vec<Interval> = reads
            .iter()
            .filter_map(|&at| {
                ops[at].outputs.applied.map(|a| Interval {
                    inv: ops[at].invoke_ns,
                    comp: ops[at].complete_ns,
                    pos: a,
                    at,
                })
            })
            .collect();
        let mut found = first_inversion(&applied);
        if found.is_none() {
            let mut by_key: BTreeMap<&str, Vec<Interval>> = BTreeMap::new();
            for &at in reads {
                by_key
                    .entry(ops[at].inputs.key.as_str())
                    .or_default()
                    .push(Interval {
                        inv: ops[at].invoke_ns,
                        comp: ops[at].complete_ns,
                        pos: seen[at].unwrap_or(0),
                        at,
                    });
            }
            found = by_key.values().find_map(|items| first_inversion(items));
        }
        if let Some((a, b)) = found {
            let (a, b) = (&ops[a], &ops[b]);
            violations.push(
                Violation::new(
                    SERIALIZABLE,
                    format!(
                        "on member {} (incarnation {}), {} saw newer state than {} which started after it finished",
                        a.member,
                        a.incarnation,
                        describe(a),
                        describe(b)
                    ),
                )
                .with_ops([a.id, b.id]),
            );
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::history::{Inputs, Outputs};

    fn write(id: u64, value: u64, inv: u64, comp: u64, outcome: Outcome, index: u64) -> HistoryOp {
        HistoryOp {
            id,
            client: id,
            member: 1,
            incarnation: 1,
            op: OpKind::Write,
            inputs: Inputs {
                key: "k".into(),
                value: Some(value),
                ..Inputs::default()
            },
            invoke_ns: inv,
            complete_ns: comp,
            outcome,
            outputs: Outputs {
                index: (outcome == Outcome::Ok).then_some(index),
                ..Outputs::default()
            },
        }
    }

    fn read(id: u64, seen: Option<(u64, u64)>, inv: u64, comp: u64, c: Consistency) -> HistoryOp {
        HistoryOp {
            id,
            client: id,
            member: 1,
            incarnation: 1,
            op: OpKind::Read,
            inputs: Inputs {
                key: "k".into(),
                consistency: Some(c),
                ..Inputs::default()
            },
            invoke_ns: inv,
            complete_ns: comp,
            outcome: Outcome::Ok,
            outputs: Outputs {
                value: seen.map(|s| s.0),
                index: Some(seen.map_or(0, |s| s.1)),
                applied: Some(seen.map_or(0, |s| s.1)),
                ..Outputs::default()
            },
        }
    }

    const LIN: Consistency = Consistency::Linearizable;
    const SER: Consistency = Consistency::Serializable;

    #[test]
    fn a_linearizable_history_passes() {
        let h = vec![
            write(1, 10, 0, 10, Outcome::Ok, 5),
            read(2, Some((10, 5)), 11, 20, LIN),
            write(3, 11, 15, 30, Outcome::Ok, 7),
            // Concurrent with write 3: may see either.
            read(4, Some((10, 5)), 16, 25, LIN),
            read(5, Some((11, 7)), 26, 40, LIN),
            // An unknown write that nobody saw does not matter.
            write(6, 12, 41, 50, Outcome::Unknown, 0),
            read(7, Some((11, 7)), 51, 60, LIN),
            // An unknown write that somebody saw did happen.
            write(8, 13, 61, 70, Outcome::Unknown, 0),
            read(9, Some((13, 9)), 71, 80, LIN),
            // A failed write before anything else.
            write(10, 14, 81, 90, Outcome::Fail, 0),
            read(11, Some((13, 9)), 91, 95, LIN),
        ];
        assert_eq!(check_history(&h), vec![]);
    }

    #[test]
    fn a_stale_read_is_caught() {
        let h = vec![
            write(1, 10, 0, 10, Outcome::Ok, 5),
            write(2, 11, 11, 20, Outcome::Ok, 7),
            read(3, Some((10, 5)), 21, 30, LIN),
        ];
        let v = check_history(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].property, LINEARIZABILITY);
        assert_eq!(v[0].ops, [2, 3]);
    }

    #[test]
    fn reads_going_backwards_are_caught() {
        let h = vec![
            write(1, 10, 0, 100, Outcome::Ok, 5),
            read(2, Some((10, 5)), 1, 10, LIN),
            read(3, None, 11, 20, LIN),
        ];
        assert_eq!(check_history(&h)[0].ops, [2, 3]);
    }

    #[test]
    fn reading_the_future_a_failed_write_or_nothing_written_is_caught() {
        let future = vec![
            read(1, Some((10, 5)), 0, 10, LIN),
            write(2, 10, 11, 20, Outcome::Ok, 5),
        ];
        assert_eq!(check_history(&future)[0].ops, [1, 2]);
        let failed = vec![
            write(1, 10, 0, 10, Outcome::Fail, 0),
            read(2, Some((10, 5)), 11, 20, LIN),
        ];
        assert_eq!(check_history(&failed)[0].ops, [1, 2]);
        let nobody = vec![read(1, Some((99, 5)), 0, 10, LIN)];
        assert_eq!(check_history(&nobody)[0].ops, [1]);
    }

    #[test]
    fn a_write_seen_at_two_indexes_is_caught() {
        let h = vec![
            write(1, 10, 0, 10, Outcome::Ok, 5),
            read(2, Some((10, 9)), 11, 20, LIN),
        ];
        assert_eq!(check_history(&h)[0].ops, [1, 2]);
    }

    #[test]
    fn serializable_reads_may_be_stale_but_not_go_backwards() {
        let stale = vec![
            write(1, 10, 0, 10, Outcome::Ok, 5),
            read(2, None, 11, 20, SER),
        ];
        assert_eq!(check_history(&stale), vec![]);
        let backwards = vec![
            write(1, 10, 0, 10, Outcome::Ok, 5),
            read(2, Some((10, 5)), 11, 20, SER),
            read(3, None, 21, 30, SER),
        ];
        let v = check_history(&backwards);
        assert_eq!(v[0].property, SERIALIZABLE);
        assert_eq!(v[0].ops, [2, 3]);
    }
}
