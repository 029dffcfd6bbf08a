//! The watch check of a history file: each `watch` record (a session's
//! reads, `outputs.watch`) is checked on its own — ordered and unique, and
//! response revisions never going backwards within one stream — and
//! against the writes the history acknowledged: every event it read of a
//! value some client put names that put's key and (if acknowledged) its
//! revision; and every acknowledged write in its range and filter, from
//! its start revision on (outside compacted gaps), was read no later than
//! the first response covering its revision — reliable, atomic and
//! bookmarkable as far as the history can tell (writes with an unknown
//! outcome, lease expiries and code under test's writes are not known
//! here; the simulator checks those against what the machines applied).

use std::collections::{BTreeMap, BTreeSet};

use super::Violation;
use crate::sim::history::{EventSeen, HistoryOp, OpKind, Outcome, WatchFilter};

const WATCH_GUARANTEES: &str = "watch guarantees";

/// The range of a `watch` record's key: a key, `prefix*`, `*`, or
/// `[start,end)` (keys from `start` up to, not including, `end`).
fn in_range(range: &str, key: &str) -> bool {
    if let Some((start, end)) = range
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|r| r.split_once(','))
    {
        return start <= key && key < end;
    }
    match range.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => range == key,
    }
}

/// A write the history acknowledged: revision, key, put (or delete).
#[derive(Clone, Debug)]
struct Acked {
    revision: i64,
    key: String,
    put: bool,
    op: u64,
}

/// Checks every `watch` record of `ops`.
pub(crate) fn check_watch_records(ops: &[HistoryOp]) -> Vec<Violation> {
    let watches: Vec<&HistoryOp> = ops.iter().filter(|o| o.op == OpKind::Watch).collect();
    if watches.is_empty() {
        return Vec::new();
    }
    // value -> (key, acknowledged revision)
    let mut puts: BTreeMap<u64, (&str, Option<i64>)> = BTreeMap::new();
    let mut acked: Vec<Acked> = Vec::new();
    for op in ops {
        let ok = op.outcome == Outcome::Ok;
        let put = match op.op {
            OpKind::Put => true,
            OpKind::Txn => op.outputs.succeeded != Some(false),
            _ => false,
        };
        if put && let Some(v) = op.inputs.value {
            let at = if ok { op.outputs.revision } else { None };
            puts.insert(v, (op.inputs.key.as_str(), at));
        }
        let (Some(revision), true) = (op.outputs.revision, ok) else {
            continue;
        };
        let wrote = match op.op {
            OpKind::Put => Some(true),
            OpKind::Txn if op.outputs.succeeded == Some(true) => Some(true),
            OpKind::Delete if op.outputs.deleted.unwrap_or(0) > 0 => Some(false),
            _ => None,
        };
        if let Some(put) = wrote {
            acked.push(Acked {
                revision,
                key: op.inputs.key.clone(),
                put,
                op: op.id,
            });
        }
    }
    let keys: BTreeSet<&str> = puts.values().map(|&(k, _)| k).collect();
    let mut found = Vec::new();
    for w in watches {
        if let Err(detail) = check_one(w, &puts, &keys, &acked) {
            found.push(
                Violation::new(
                    WATCH_GUARANTEES,
                    format!(
                        "watch record {} ({} from revision {}): {detail}",
                        w.id,
                        w.inputs.key,
                        w.inputs.revision.unwrap_or(0)
                    ),
                )
                .with_ops([w.id]),
            );
        }
    }
    found
}

fn check_one(
    w: &HistoryOp,
    puts: &BTreeMap<u64, (&str, Option<i64>)>,
    keys: &BTreeSet<&str>,
    acked: &[Acked],
) -> Result<(), String> {
    let Some(log) = &w.outputs.watch else {
        return Err("no `outputs.watch`".to_owned());
    };
    let start = w.inputs.revision.unwrap_or(1);
    let range = w.inputs.key.as_str();
    let wants_put = w.inputs.filter != Some(WatchFilter::NoPut);
    let wants_delete = w.inputs.filter != Some(WatchFilter::NoDelete);
    let in_gap = |r: i64| log.gaps.iter().any(|&[a, b]| a <= r && r <= b);
    // (revision, key, put) -> index of the response that held it.
    let mut read_at: BTreeMap<(i64, &str, bool), usize> = BTreeMap::new();
    let mut covered = start - 1;
    let mut last: Option<(u32, i64)> = None;
    for (i, read) in log.reads.iter().enumerate() {
        let r = read.revision;
        if let Some((stream, before)) = last
            && stream == read.stream
            && r < before
        {
            return Err(format!(
                "response {i} at revision {r} came after one at {before} in the same stream"
            ));
        }
        last = Some((read.stream, r));
        let mut prev = covered;
        for e in &read.events {
            let er = e.mod_revision;
            if er <= covered || er < prev || er > r {
                return Err(format!(
                    "response {i} covering up to {r} holds an event of revision {er} after \
                     revision {prev} (everything up to {covered} was read before): not ordered \
                     or not unique, or a progress notification came ahead of it"
                ));
            }
            prev = er;
            check_event(e, range, wants_put, wants_delete, puts, keys)
                .map_err(|d| format!("response {i}: {d}"))?;
            if read_at.insert((er, &e.key, e.put), i).is_some() {
                return Err(format!(
                    "response {i}: {} {} at {er} read twice",
                    kind(e.put),
                    e.key
                ));
            }
        }
        covered = covered.max(r);
    }
    for a in acked {
        let wanted = if a.put { wants_put } else { wants_delete };
        if !wanted || a.revision < start || in_gap(a.revision) || !in_range(range, &a.key) {
            continue;
        }
        // The first response covering the write's revision.
        let Some(due) = log.reads.iter().position(|rd| rd.revision >= a.revision) else {
            continue;
        };
        match read_at.get(&(a.revision, a.key.as_str(), a.put)) {
            Some(&at) if at <= due => {}
            Some(&at) => {
                return Err(format!(
                    "{} {} at {} (op {}) came in response {at}, after response {due} covering \
                     its revision: not atomic or not bookmarkable",
                    kind(a.put),
                    a.key,
                    a.revision,
                    a.op
                ));
            }
            None => {
                return Err(format!(
                    "{} {} at {} (op {}, acknowledged) was never read though response {due} \
                     covers its revision: not reliable",
                    kind(a.put),
                    a.key,
                    a.revision,
                    a.op
                ));
            }
        }
    }
    Ok(())
}

fn kind(put: bool) -> &'static str {
    if put { "put" } else { "delete" }
}

/// One event on its own: in the range and filter, and a put's value
/// names a put of that key at that revision.
fn check_event(
    e: &EventSeen,
    range: &str,
    wants_put: bool,
    wants_delete: bool,
    puts: &BTreeMap<u64, (&str, Option<i64>)>,
    keys: &BTreeSet<&str>,
) -> Result<(), String> {
    let at = e.mod_revision;
    if !in_range(range, &e.key) {
        return Err(format!(
            "{} {} at {at} is outside the range",
            kind(e.put),
            e.key
        ));
    }
    if (e.put && !wants_put) || (!e.put && !wants_delete) {
        return Err(format!(
            "{} {} at {at} was filtered out",
            kind(e.put),
            e.key
        ));
    }
    // Only values of the workload's puts are known (code under test
    // writes keys of its own, with values of its own).
    let Some(v) = e.value.filter(|_| e.put) else {
        return Ok(());
    };
    match puts.get(&v).filter(|_| keys.contains(e.key.as_str())) {
        Some(&(key, _)) if key != e.key => Err(format!(
            "put {}={v} at {at}, but value {v} was put on {key}",
            e.key
        )),
        Some(&(_, Some(r))) if r != at => Err(format!(
            "put {}={v} at {at}, but that put was acknowledged at {r}",
            e.key
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::history::{Inputs, Outputs, WatchLog, WatchRead};

    fn op(id: u64, kind: OpKind, key: &str, value: Option<u64>, revision: i64) -> HistoryOp {
        HistoryOp {
            id,
            client: 1,
            member: 1,
            incarnation: 0,
            op: kind,
            inputs: Inputs {
                key: key.into(),
                value,
                ..Inputs::default()
            },
            invoke_ns: id * 10,
            complete_ns: id * 10 + 5,
            outcome: Outcome::Ok,
            outputs: Outputs {
                revision: Some(revision),
                deleted: (kind == OpKind::Delete).then_some(1),
                ..Outputs::default()
            },
        }
    }

    fn ev(put: bool, key: &str, value: Option<u64>, rev: i64) -> EventSeen {
        EventSeen {
            put,
            key: key.into(),
            value,
            mod_revision: rev,
        }
    }

    fn watch(id: u64, range: &str, start: i64, reads: Vec<(i64, Vec<EventSeen>)>) -> HistoryOp {
        let mut w = op(id, OpKind::Watch, range, None, 0);
        w.inputs.revision = Some(start);
        w.outputs = Outputs {
            watch: Some(WatchLog {
                reads: reads
                    .into_iter()
                    .map(|(revision, events)| WatchRead {
                        stream: 1,
                        revision,
                        events,
                    })
                    .collect(),
                gaps: Vec::new(),
            }),
            ..Outputs::default()
        };
        w
    }

    #[test]
    fn watch_records_are_checked_against_acknowledged_writes() {
        let writes = vec![
            op(0, OpKind::Put, "k0", Some(7), 2),
            op(1, OpKind::Put, "k1", Some(8), 3),
            op(2, OpKind::Delete, "k0", None, 4),
        ];
        let all = vec![
            ev(true, "k0", Some(7), 2),
            ev(true, "k1", Some(8), 3),
            ev(false, "k0", None, 4),
        ];
        let run = |w: HistoryOp| {
            let mut ops = writes.clone();
            ops.push(w);
            check_watch_records(&ops)
                .first()
                .map(|v| v.detail.clone())
                .unwrap_or_default()
        };
        assert_eq!(run(watch(9, "k*", 2, vec![(4, all.clone())])), "");
        assert_eq!(
            run(watch(
                9,
                "k0",
                2,
                vec![(2, vec![all[0].clone()]), (4, vec![all[2].clone()])]
            )),
            ""
        );
        assert!(run(watch(9, "k*", 2, vec![(4, all[1..].to_vec())])).contains("not reliable"));
        assert!(
            run(watch(9, "k*", 2, vec![(3, vec![]), (4, all.clone())]))
                .contains("a progress notification")
        );
        assert!(
            run(watch(
                9,
                "k*",
                2,
                vec![(3, all[..2].to_vec()), (4, all[1..].to_vec())]
            ))
            .contains("not ordered or not unique")
        );
        assert!(
            run(watch(
                9,
                "k*",
                2,
                vec![(4, vec![ev(true, "k0", Some(7), 3)])]
            ))
            .contains("acknowledged at 2")
        );
        assert!(run(watch(9, "k1", 2, vec![(4, all.clone())])).contains("outside the range"));
        // A `[start,end)` range: `end` is not in it.
        assert_eq!(
            run(watch(
                9,
                "[k0,k1)",
                2,
                vec![(2, vec![all[0].clone()]), (4, vec![all[2].clone()])]
            )),
            ""
        );
        assert!(run(watch(9, "[k0,k1)", 2, vec![(4, all.clone())])).contains("k1 at 3 is outside"));
        assert!(
            run(watch(
                9,
                "[k0,k2)",
                2,
                vec![(4, vec![all[0].clone(), all[2].clone()])]
            ))
            .contains("put k1 at 3 (op 1, acknowledged) was never read")
        );
        let mut no_put = watch(9, "k*", 2, vec![(4, all.clone())]);
        no_put.inputs.filter = Some(WatchFilter::NoPut);
        assert!(run(no_put).contains("filtered out"));
        let mut no_put = watch(9, "k*", 2, vec![(4, vec![all[2].clone()])]);
        no_put.inputs.filter = Some(WatchFilter::NoPut);
        assert_eq!(run(no_put), "");
    }
}
