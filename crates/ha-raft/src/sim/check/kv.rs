//! The check of a KV history (puts, deletes, compare-and-swap
//! transactions, reads now and at past revisions, ranges, compactions),
//! polynomial like the register check: revisions give the total order.
//!
//! Every successful write reports its revision, and values are unique, so
//! each value a read returns names its write and the revision it took
//! effect at (an unknown write that a read saw did happen, at that
//! revision). The write with revision r is the r-th mutation: replaying
//! the known mutations in revision order gives the model — each key's
//! value, create revision, mod revision and version after every revision —
//! and every read must return exactly the model's state at the revision it
//! was answered at (or at the past revision it asked for). Revisions no
//! known operation claims are gaps: each must be an unknown write nobody
//! saw, and a key such a write may have changed is only checked loosely
//! after the first gap (its value must be one put at its mod revision, with
//! no known later change).
//!
//! Real time: a write sits at `2·revision`, a linearizable (or lease) read
//! and every other operation that changed nothing at `2·R + 1` where R is
//! the revision it was answered at; one sweep finds an operation that
//! finished before another started yet sits after it. Serializable reads
//! are checked for their promise: within one member process R never goes
//! backwards, and never includes a write that started after the read
//! finished. Compaction: a read at a revision below a compaction that had
//! completed before the read started must fail with `Compacted`, and a
//! `Compacted` error must name a compaction somebody asked for.

use std::collections::{BTreeMap, BTreeSet};

use super::Violation;
use super::linear::{Interval, first_inversion};
use crate::sim::history::{Consistency, HistoryOp, LeaseEnding, OpKind, Outcome, SeenKv};
use crate::sim::kvload::{ALL_KEYS, KEY_PREFIX};

const LINEARIZABILITY: &str = "linearizability";
/// A lease's end deletes every key attached to it, all at one revision.
pub(crate) const LEASE_END: &str = "lease ends delete their keys in one revision";
const SERIALIZABLE: &str = "serializable reads monotonic";
const COMPACTION: &str = "compaction";
const WELL_FORMED: &str = "well-formed history";

/// What a mutation did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// Put a value, attached to a lease (0: none).
    Set(u64, i64),
    Delete,
    /// A lease ended: every key attached to it is deleted.
    EndLease(i64),
}

#[derive(Clone, Debug)]
struct Mutation {
    key: String,
    change: Change,
    /// The operation (position in the history slice).
    at: usize,
}

/// A key's state after some revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KeyState {
    value: u64,
    create: i64,
    modr: i64,
    version: i64,
    /// The lease the key is attached to (0: none).
    lease: i64,
}

impl KeyState {
    /// What a read saw (a read that did not record the lease is taken to
    /// have seen `lease`).
    fn seen(kv: &SeenKv, lease: i64) -> Option<KeyState> {
        Some(KeyState {
            value: kv.value?,
            create: kv.create_revision,
            modr: kv.mod_revision,
            version: kv.version,
            lease: kv.lease.unwrap_or(lease),
        })
    }

    fn of(kv: &SeenKv) -> Option<KeyState> {
        Self::seen(kv, 0)
    }
}

fn show(s: Option<KeyState>) -> String {
    match s {
        None => "absent".to_owned(),
        Some(s) => format!(
            "{} (create {}, mod {}, version {}{})",
            s.value,
            s.create,
            s.modr,
            s.version,
            if s.lease != 0 {
                format!(", lease {}", s.lease)
            } else {
                String::new()
            }
        ),
    }
}

/// The keys a read covers.
#[derive(Clone, Copy, Debug)]
enum Scope<'k> {
    Key(&'k str),
    /// Every key with this prefix.
    Prefix(&'k str),
}

/// Describes a KV operation for a violation message.
pub(crate) fn describe_kv(op: &HistoryOp) -> String {
    let i = &op.inputs;
    let c = match i.consistency {
        Some(Consistency::Serializable) => " serializable",
        Some(Consistency::Lease) => " lease",
        _ => "",
    };
    let at = i.revision.map(|r| format!(" at {r}")).unwrap_or_default();
    let what = match op.op {
        OpKind::Put => format!(
            "put {}={}{}",
            i.key,
            i.value.unwrap_or(0),
            i.lease.map(|l| format!(" lease {l}")).unwrap_or_default()
        ),
        OpKind::Delete => format!("delete {}", i.key),
        OpKind::Txn => format!(
            "txn if mod({})=={} then put {}={}",
            i.key,
            i.expect_mod.unwrap_or(0),
            i.key,
            i.value.unwrap_or(0)
        ),
        OpKind::Get => format!("get{c} {}{at}", i.key),
        OpKind::Range if i.key == ALL_KEYS => format!("range{c}{at}"),
        OpKind::Range => format!("range{c} {}{at}", i.key),
        OpKind::Compact => format!("compact{at}"),
        OpKind::LeaseGrant => format!(
            "grant lease {} ttl {}ms",
            i.lease.unwrap_or(0),
            i.ttl_ms.unwrap_or(0)
        ),
        OpKind::KeepAlive => format!("keep-alive lease {}", i.lease.unwrap_or(0)),
        OpKind::LeaseRevoke => format!("revoke lease {}", i.lease.unwrap_or(0)),
        OpKind::LeaseEnd => format!(
            "lease {} {} (applied), deleting [{}]",
            i.lease.unwrap_or(0),
            match op.outputs.ended {
                Some(LeaseEnding::Expired) => "expired",
                Some(LeaseEnding::Revoked) => "revoked",
                None => "ended",
            },
            op.outputs.keys.as_deref().unwrap_or(&[]).join(", ")
        ),
        OpKind::Write | OpKind::Read | OpKind::Opaque | OpKind::OpaqueWrite | OpKind::Watch => {
            format!("{:?}", op.op)
        }
    };
    let o = &op.outputs;
    let mut result = format!("{:?}", op.outcome);
    if let Some(r) = o.revision {
        result.push_str(&format!(" @{r}"));
    }
    if let Some(s) = o.succeeded {
        result.push_str(if s { " succeeded" } else { " compare failed" });
    }
    if let Some(d) = o.deleted {
        result.push_str(&format!(" deleted {d}"));
    }
    if let Some(kvs) = &o.kvs {
        let shown: Vec<String> = kvs
            .iter()
            .map(|kv| format!("{}={}", kv.key, show(KeyState::of(kv))))
            .collect();
        result.push_str(&format!(" [{}]", shown.join(", ")));
    }
    if let Some(t) = o.ttl_ms {
        result.push_str(&format!(" ttl {t}ms"));
    }
    if let Some(e) = &o.error {
        result.push_str(&format!(" ({e})"));
    }
    what + " -> " + &result
}

fn describe(op: &HistoryOp) -> String {
    super::describe(op)
}

struct Checker<'a> {
    ops: &'a [HistoryOp],
    violations: Vec<Violation>,
    /// Revision → the known mutation at it.
    mutations: BTreeMap<i64, Mutation>,
    /// Per key: (revision, state after it), in revision order.
    model: BTreeMap<String, Vec<(i64, Option<KeyState>)>>,
    /// Keys an unknown write nobody saw may have changed.
    candidates: BTreeSet<String>,
    /// The first revision no known operation claims.
    first_gap: Option<i64>,
    /// Every such revision.
    gaps: BTreeSet<i64>,
}

impl Checker<'_> {
    fn push(&mut self, property: &'static str, detail: String, ops: &[usize]) {
        let ids: Vec<u64> = ops.iter().map(|&at| self.ops[at].id).collect();
        self.violations
            .push(Violation::new(property, detail).with_ops(ids));
    }

    fn uncertain(&self, key: &str, revision: i64) -> bool {
        self.first_gap.is_some_and(|g| g <= revision) && self.candidates.contains(key)
    }

    fn state_at(&self, key: &str, revision: i64) -> Option<KeyState> {
        let list = self.model.get(key)?;
        let n = list.partition_point(|(r, _)| *r <= revision);
        n.checked_sub(1).and_then(|i| list[i].1)
    }

    /// The revision of the last known mutation of `key` at or before
    /// `revision`.
    fn last_change(&self, key: &str, revision: i64) -> Option<(i64, Option<KeyState>)> {
        let list = self.model.get(key)?;
        let n = list.partition_point(|(r, _)| *r <= revision);
        n.checked_sub(1).map(|i| list[i])
    }

    /// Checks what operation `at` saw of `key` at `revision`.
    fn check_key(&mut self, at: usize, key: &str, revision: i64, got: Option<&SeenKv>) {
        let expected = self.state_at(key, revision);
        let got_state = got.and_then(|kv| KeyState::seen(kv, expected.map_or(0, |e| e.lease)));
        if !self.uncertain(key, revision) {
            if got_state != expected {
                let d = format!(
                    "{} saw {key}={} at revision {revision}, but the writes up to it leave {}",
                    describe(&self.ops[at]),
                    show(got_state),
                    show(expected)
                );
                let mut ops = vec![at];
                if let Some((r, _)) = self.last_change(key, revision)
                    && let Some(m) = self.mutations.get(&r)
                {
                    ops.insert(0, m.at);
                }
                self.push(LINEARIZABILITY, d, &ops);
            }
            return;
        }
        // An unknown write nobody saw may have changed the key: what is
        // seen must still be a value put at its mod revision, with no
        // known change after it.
        let last = self.last_change(key, revision);
        let bad = match got_state {
            Some(s) => s.modr > revision || last.is_some_and(|(r, _)| r > s.modr),
            // Absent: fine if an unknown delete may have come after the
            // last known put.
            None => last.is_some_and(|(r, s)| {
                s.is_some() && (r >= revision || self.gaps.range(r + 1..=revision).next().is_none())
            }),
        };
        if bad {
            let d = format!(
                "{} saw {key}={} at revision {revision}, but the last known write of it \
                 up to then left {}",
                describe(&self.ops[at]),
                show(got_state),
                show(last.and_then(|l| l.1))
            );
            self.push(LINEARIZABILITY, d, &[at]);
        }
    }

    /// Checks a read of `keys` answered at `revision`.
    fn check_read(&mut self, at: usize, keys: Scope<'_>, revision: i64, kvs: &[SeenKv]) {
        let mut scope: BTreeSet<String> = kvs.iter().map(|kv| kv.key.clone()).collect();
        let outside = match keys {
            Scope::Key(k) => scope.iter().any(|s| s != k),
            Scope::Prefix(p) => scope.iter().any(|s| !s.starts_with(p)),
        };
        if outside {
            let d = format!("{} returned another key", describe(&self.ops[at]));
            self.push(LINEARIZABILITY, d, &[at]);
            return;
        }
        match keys {
            Scope::Key(k) => {
                scope.insert(k.to_owned());
            }
            Scope::Prefix(p) => {
                scope.extend(self.model.keys().filter(|k| k.starts_with(p)).cloned());
            }
        }
        // By key: a final range over every key would be quadratic.
        let mut by_key: BTreeMap<&str, &SeenKv> = BTreeMap::new();
        for kv in kvs {
            by_key.entry(kv.key.as_str()).or_insert(kv);
        }
        for key in scope {
            let got = by_key.get(key.as_str()).copied();
            self.check_key(at, &key, revision, got);
        }
    }
}

/// Checks the KV operations of a history (the others are ignored).
pub(crate) fn check_kv(ops: &[HistoryOp]) -> Vec<Violation> {
    let mut c = Checker {
        ops,
        violations: Vec::new(),
        mutations: BTreeMap::new(),
        model: BTreeMap::new(),
        candidates: BTreeSet::new(),
        first_gap: None,
        gaps: BTreeSet::new(),
    };
    if !ops.iter().any(|o| o.op.is_kv()) {
        return c.violations;
    }
    let ok = |o: &HistoryOp| o.outcome == Outcome::Ok;

    // Values name their writes.
    let mut writer: BTreeMap<u64, usize> = BTreeMap::new();
    for (at, op) in ops.iter().enumerate() {
        if !matches!(op.op, OpKind::Put | OpKind::Txn) {
            continue;
        }
        let Some(v) = op.inputs.value else {
            c.push(WELL_FORMED, format!("{} has no value", describe(op)), &[at]);
            continue;
        };
        if let Some(first) = writer.insert(v, at) {
            c.push(
                WELL_FORMED,
                format!("value {v} is written twice: the check needs unique values"),
                &[first, at],
            );
        }
        if ok(op) && op.outputs.revision.is_none() {
            c.push(
                WELL_FORMED,
                format!("{} completed without a revision", describe(op)),
                &[at],
            );
        }
    }

    // What reads saw: each value at one revision, written by a write that
    // did not fail, to the same key.
    let mut seen_at: BTreeMap<u64, i64> = BTreeMap::new();
    for (at, op) in ops.iter().enumerate() {
        if !op.op.is_kv() || !ok(op) {
            continue;
        }
        for kv in op.outputs.kvs.iter().flatten() {
            let Some(v) = kv.value else {
                c.push(
                    LINEARIZABILITY,
                    format!("{} saw a value nobody wrote", describe(op)),
                    &[at],
                );
                continue;
            };
            let Some(&w) = writer.get(&v) else {
                c.push(
                    LINEARIZABILITY,
                    format!("{} saw value {v}, which nobody wrote", describe(op)),
                    &[at],
                );
                continue;
            };
            let wop = &ops[w];
            let why = if wop.inputs.key != kv.key {
                Some("written to another key")
            } else if wop.outcome == Outcome::Fail {
                Some("reported as failed")
            } else if ok(wop) && wop.outputs.succeeded == Some(false) {
                Some("a transaction whose compare failed")
            } else if ok(wop) && wop.outputs.revision != Some(kv.mod_revision) {
                Some("acknowledged at another revision")
            } else {
                None
            };
            if let Some(why) = why {
                c.push(
                    LINEARIZABILITY,
                    format!(
                        "{} saw the value of {} ({why})",
                        describe(op),
                        describe(wop)
                    ),
                    &[w, at],
                );
                continue;
            }
            match seen_at.get(&v) {
                Some(&r) if r != kv.mod_revision => c.push(
                    LINEARIZABILITY,
                    format!(
                        "{} saw value {v} at revision {}, another read at {r}",
                        describe(op),
                        kv.mod_revision
                    ),
                    &[w, at],
                ),
                Some(_) => {}
                None => {
                    seen_at.insert(v, kv.mod_revision);
                }
            }
        }
    }

    // The mutations whose revision is known.
    let mut unplaced = 0usize;
    let mut max_rev = 1i64;
    for (at, op) in ops.iter().enumerate() {
        if !op.op.is_kv() {
            continue;
        }
        if ok(op)
            && let Some(r) = op.outputs.revision
        {
            max_rev = max_rev.max(r);
        }
        let placed = match (op.op, op.outcome) {
            (OpKind::LeaseEnd, Outcome::Ok) => {
                // A lease end that deleted keys wrote its revision.
                if let (Some(r), Some(lease), Some(keys)) =
                    (op.outputs.revision, op.inputs.lease, &op.outputs.keys)
                    && !keys.is_empty()
                {
                    claim(&mut c, r, ALL_KEYS.to_owned(), Change::EndLease(lease), at);
                }
                continue;
            }
            (OpKind::Put, Outcome::Ok) => op.outputs.revision.zip(op.inputs.value),
            (OpKind::Txn, Outcome::Ok) if op.outputs.succeeded == Some(true) => {
                op.outputs.revision.zip(op.inputs.value)
            }
            (OpKind::Put | OpKind::Txn, Outcome::Unknown) => {
                let v = op.inputs.value.unwrap_or(0);
                seen_at.get(&v).map(|&r| (r, v))
            }
            (OpKind::Delete, Outcome::Ok) if op.outputs.deleted.unwrap_or(0) > 0 => {
                if let Some(r) = op.outputs.revision {
                    claim(&mut c, r, op.inputs.key.clone(), Change::Delete, at);
                }
                continue;
            }
            (OpKind::Delete, Outcome::Unknown) => {
                c.candidates.insert(op.inputs.key.clone());
                unplaced += 1;
                continue;
            }
            _ => continue,
        };
        let lease = op.inputs.lease.unwrap_or(0);
        match placed {
            Some((r, v)) => claim(&mut c, r, op.inputs.key.clone(), Change::Set(v, lease), at),
            None => {
                c.candidates.insert(op.inputs.key.clone());
                unplaced += 1;
            }
        }
    }
    for &r in c.mutations.keys() {
        max_rev = max_rev.max(r);
    }
    // A lease's revocation or expiry deletes its keys at one revision: the
    // `lease_end` records claim those. A history without them (an older
    // file): each granted lease may explain one revision no put claims,
    // and keys attached to leases are checked loosely once one happened.
    let ends_recorded = ops.iter().any(|o| o.op == OpKind::LeaseEnd);
    let leases = ops
        .iter()
        .filter(|o| o.op == OpKind::LeaseGrant && o.outcome != Outcome::Fail)
        .count();
    // Code under test's proposals (see `OpKind::OpaqueWrite`): its own
    // revision, and (unless recorded) its lease's end.
    unplaced += if ends_recorded { 1 } else { 2 }
        * ops
            .iter()
            .filter(|o| o.op == OpKind::OpaqueWrite && o.outcome != Outcome::Fail)
            .count();
    if leases > 0 && !ends_recorded {
        unplaced += leases;
        for op in ops {
            if op.op == OpKind::Put && op.inputs.lease.is_some() {
                c.candidates.insert(op.inputs.key.clone());
            }
        }
    }
    let gaps: Vec<i64> = (2..=max_rev)
        .filter(|r| !c.mutations.contains_key(r))
        .collect();
    c.first_gap = gaps.first().copied();
    c.gaps = gaps.iter().copied().collect();
    if gaps.len() > unplaced {
        c.push(
            LINEARIZABILITY,
            format!(
                "{} revisions up to {max_rev} changed something that no operation explains \
                 (the first: {}; {unplaced} unknown writes nobody saw)",
                gaps.len(),
                gaps[0]
            ),
            &[],
        );
    }

    // The model: the known mutations replayed in revision order.
    let mut current: BTreeMap<String, KeyState> = BTreeMap::new();
    for (&r, m) in &c.mutations {
        let after = match m.change {
            Change::Set(v, lease) => {
                let prev = current.get(&m.key);
                Some(KeyState {
                    value: v,
                    create: prev.map_or(r, |p| p.create),
                    modr: r,
                    version: prev.map_or(1, |p| p.version + 1),
                    lease,
                })
            }
            Change::Delete => None,
            Change::EndLease(lease) => {
                let gone: Vec<String> = current
                    .iter()
                    .filter(|(_, s)| s.lease == lease)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in gone {
                    current.remove(&k);
                    c.model.entry(k).or_default().push((r, None));
                }
                continue;
            }
        };
        match after {
            Some(s) => current.insert(m.key.clone(), s),
            None => current.remove(&m.key),
        };
        c.model.entry(m.key.clone()).or_default().push((r, after));
    }

    c.check_lease_ends(&writer);

    // Each operation against the model, and the positions for real time.
    let mut intervals = Vec::new();
    for (&r, m) in &c.mutations {
        let op = &ops[m.at];
        intervals.push(Interval {
            inv: op.invoke_ns,
            comp: if ok(op) { op.complete_ns } else { u64::MAX },
            pos: 2 * r as u64,
            at: m.at,
        });
    }
    let mut serializable: BTreeMap<(u64, u64), Vec<Interval>> = BTreeMap::new();
    for (at, op) in ops.iter().enumerate() {
        if !op.op.is_kv() || op.op.is_lease() || !ok(op) {
            continue;
        }
        let Some(r) = op.outputs.revision else {
            c.push(
                WELL_FORMED,
                format!("{} completed without a revision", describe(op)),
                &[at],
            );
            continue;
        };
        let key = op.inputs.key.as_str();
        let kvs = op.outputs.kvs.as_deref().unwrap_or(&[]);
        let mutated = match op.op {
            OpKind::Put => true,
            OpKind::Txn if op.outputs.succeeded == Some(true) => {
                let expect = op.inputs.expect_mod.unwrap_or(0);
                let before = r - 1;
                if !c.uncertain(key, before) {
                    let had = c.state_at(key, before).map_or(0, |s| s.modr);
                    if had != expect {
                        c.push(
                            LINEARIZABILITY,
                            format!(
                                "{} succeeded, but {key}'s mod revision was {had} before it",
                                describe(op)
                            ),
                            &[at],
                        );
                    }
                }
                true
            }
            OpKind::Txn => {
                let expect = op.inputs.expect_mod.unwrap_or(0);
                if !c.uncertain(key, r) && c.state_at(key, r).map_or(0, |s| s.modr) == expect {
                    c.push(
                        LINEARIZABILITY,
                        format!(
                            "{} failed its compare, yet {key}'s mod revision was {expect}",
                            describe(op)
                        ),
                        &[at],
                    );
                }
                c.check_read(at, Scope::Key(key), r, kvs);
                false
            }
            OpKind::Delete if op.outputs.deleted.unwrap_or(0) > 0 => {
                if !c.uncertain(key, r - 1) && c.state_at(key, r - 1).is_none() {
                    c.push(
                        LINEARIZABILITY,
                        format!("{} deleted a key that was absent", describe(op)),
                        &[at],
                    );
                }
                true
            }
            OpKind::Delete => {
                c.check_read(at, Scope::Key(key), r, &[]);
                false
            }
            OpKind::Get | OpKind::Range => {
                let keys = match op.op {
                    OpKind::Get => Scope::Key(key),
                    // `*`: every client key (`k<n>`); `p*`: prefix p.
                    _ if key == ALL_KEYS => Scope::Prefix(KEY_PREFIX),
                    _ => Scope::Prefix(key.strip_suffix('*').unwrap_or(key)),
                };
                let read_at = op.inputs.revision.unwrap_or(r);
                if read_at > r {
                    c.push(
                        LINEARIZABILITY,
                        format!("{} answered at an earlier revision {r}", describe(op)),
                        &[at],
                    );
                } else {
                    c.check_read(at, keys, read_at, kvs);
                }
                false
            }
            _ => false,
        };
        if mutated {
            continue;
        }
        let item = Interval {
            inv: op.invoke_ns,
            comp: op.complete_ns,
            pos: 2 * r as u64 + 1,
            at,
        };
        if op.inputs.consistency == Some(Consistency::Serializable) {
            serializable
                .entry((op.member, op.incarnation))
                .or_default()
                .push(Interval {
                    pos: r as u64,
                    ..item
                });
        } else {
            intervals.push(item);
        }
    }
    if let Some((a, b)) = first_inversion(&intervals) {
        c.push(
            LINEARIZABILITY,
            format!(
                "{} finished before {} started, yet must be ordered after it",
                describe(&ops[a]),
                describe(&ops[b])
            ),
            &[a, b],
        );
    }

    // Serializable reads: monotonic per process, never from the future.
    let mut latest_invoke = Vec::with_capacity(c.mutations.len());
    let mut top = 0u64;
    for (&r, m) in &c.mutations {
        top = top.max(ops[m.at].invoke_ns);
        latest_invoke.push((r, top, m.at));
    }
    for reads in serializable.values() {
        if let Some((a, b)) = first_inversion(reads) {
            c.push(
                SERIALIZABLE,
                format!(
                    "on member {} (incarnation {}), {} saw a newer revision than {}, which \
                     started after it finished",
                    ops[a].member,
                    ops[a].incarnation,
                    describe(&ops[a]),
                    describe(&ops[b])
                ),
                &[a, b],
            );
        }
        for read in reads {
            let n = latest_invoke.partition_point(|(r, _, _)| *r as u64 <= read.pos);
            if let Some(&(_, inv, w)) = n.checked_sub(1).map(|i| &latest_invoke[i])
                && inv > read.comp
            {
                c.push(
                    SERIALIZABLE,
                    format!(
                        "{} saw revision {}, which includes a write that started after it \
                         finished",
                        describe(&ops[read.at]),
                        read.pos
                    ),
                    &[w, read.at],
                );
                break;
            }
        }
    }

    // Compaction.
    // (target, completed at, the store's revision when it applied, op)
    let compactions: Vec<(i64, u64, i64, usize)> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.op == OpKind::Compact && ok(o))
        .filter_map(|(at, o)| Some((o.inputs.revision?, o.complete_ns, o.outputs.revision?, at)))
        .collect();
    for (at, op) in ops.iter().enumerate() {
        if !matches!(op.op, OpKind::Get | OpKind::Range) {
            continue;
        }
        let Some(a) = op.inputs.revision else {
            continue;
        };
        if ok(op) {
            // A linearizable read after the compaction finished, or any
            // read of a state that includes a write after it, is below it.
            let stale_ok = op.inputs.consistency == Some(Consistency::Serializable);
            let state = op.outputs.revision.unwrap_or(0);
            if let Some(&(cr, _, _, cat)) = compactions.iter().find(|(cr, done, applied, _)| {
                *cr > a && ((!stale_ok && *done < op.invoke_ns) || state > *applied)
            }) {
                c.push(
                    COMPACTION,
                    format!(
                        "{} succeeded, though history was compacted to {cr} before it started",
                        describe(op)
                    ),
                    &[cat, at],
                );
            }
        } else if let Some(cr) = op.outputs.compacted {
            let asked = ops.iter().any(|o| {
                o.op == OpKind::Compact
                    && o.outcome != Outcome::Fail
                    && o.inputs.revision == Some(cr)
                    && o.invoke_ns <= op.complete_ns
            });
            if cr <= a || !asked {
                c.push(
                    COMPACTION,
                    format!(
                        "{} was refused as compacted to {cr}, which no compaction before it \
                         explains",
                        describe(op)
                    ),
                    &[at],
                );
            }
        }
    }
    c.violations
}

impl Checker<'_> {
    /// Every `lease_end` against the model: the keys it deleted (of those
    /// the workload writes) are exactly those attached to the lease just
    /// before its revision, so none is left attached and none is deleted
    /// at another revision; one that deleted nothing had none attached.
    fn check_lease_ends(&mut self, writer: &BTreeMap<u64, usize>) {
        let ops = self.ops;
        let universe: BTreeSet<&str> = writer
            .values()
            .map(|&w| ops[w].inputs.key.as_str())
            .collect();
        for (at, op) in ops.iter().enumerate() {
            if op.op != OpKind::LeaseEnd || op.outcome != Outcome::Ok {
                continue;
            }
            let (Some(lease), Some(r)) = (op.inputs.lease, op.outputs.revision) else {
                self.push(
                    WELL_FORMED,
                    format!("{} has no lease or revision", describe(op)),
                    &[at],
                );
                continue;
            };
            let recorded: BTreeSet<&str> = op
                .outputs
                .keys
                .iter()
                .flatten()
                .map(String::as_str)
                .filter(|k| universe.contains(k))
                .collect();
            let wrote = op.outputs.keys.as_ref().is_some_and(|k| !k.is_empty());
            let before = if wrote { r - 1 } else { r };
            let attached: BTreeSet<&str> = universe
                .iter()
                .copied()
                .filter(|k| self.state_at(k, before).is_some_and(|s| s.lease == lease))
                .collect();
            let mut found = Vec::new();
            for k in attached.difference(&recorded) {
                if !self.uncertain(k, before) {
                    let put = self
                        .last_change(k, before)
                        .and_then(|(w, _)| self.mutations.get(&w))
                        .map(|m| m.at);
                    found.push((
                        format!(
                            "{} left {k}, attached to the lease at revision {before}, \
                             in place",
                            describe(op)
                        ),
                        put,
                    ));
                }
            }
            for k in recorded.difference(&attached) {
                if !self.uncertain(k, before) {
                    found.push((
                        format!(
                            "{} deleted {k}, which was not attached to the lease at revision \
                             {before}",
                            describe(op)
                        ),
                        None,
                    ));
                }
            }
            for (d, put) in found {
                let ops: Vec<usize> = put.into_iter().chain([at]).collect();
                self.push(LEASE_END, d, &ops);
            }
        }
    }
}

fn claim(c: &mut Checker<'_>, r: i64, key: String, change: Change, at: usize) {
    if let Some(other) = c.mutations.get(&r) {
        let other = other.at;
        c.push(
            LINEARIZABILITY,
            format!(
                "{} and {} both claim revision {r}",
                describe(&c.ops[other]),
                describe(&c.ops[at])
            ),
            &[other, at],
        );
        return;
    }
    c.mutations.insert(r, Mutation { key, change, at });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::history::{Inputs, Outputs};

    fn op(id: u64, kind: OpKind, inv: u64, comp: u64, outcome: Outcome) -> HistoryOp {
        HistoryOp {
            id,
            client: id,
            member: 1,
            incarnation: 1,
            op: kind,
            inputs: Inputs {
                key: "k0".into(),
                ..Inputs::default()
            },
            invoke_ns: inv,
            complete_ns: comp,
            outcome,
            outputs: Outputs::default(),
        }
    }

    fn put(id: u64, value: u64, inv: u64, comp: u64, outcome: Outcome, rev: i64) -> HistoryOp {
        let mut o = op(id, OpKind::Put, inv, comp, outcome);
        o.inputs.value = Some(value);
        o.outputs.revision = (outcome == Outcome::Ok).then_some(rev);
        o
    }

    fn kv(value: u64, create: i64, modr: i64, version: i64) -> SeenKv {
        SeenKv {
            key: "k0".into(),
            value: Some(value),
            create_revision: create,
            mod_revision: modr,
            version,
            lease: None,
        }
    }

    fn get(id: u64, inv: u64, comp: u64, rev: i64, seen: Option<SeenKv>) -> HistoryOp {
        let mut o = op(id, OpKind::Get, inv, comp, Outcome::Ok);
        o.inputs.consistency = Some(Consistency::Linearizable);
        o.outputs.revision = Some(rev);
        o.outputs.kvs = Some(seen.into_iter().collect());
        o
    }

    #[test]
    fn a_linearizable_kv_history_passes() {
        let mut del = op(4, OpKind::Delete, 40, 50, Outcome::Ok);
        del.outputs.revision = Some(4);
        del.outputs.deleted = Some(1);
        let mut cas = op(6, OpKind::Txn, 70, 80, Outcome::Ok);
        cas.inputs.value = Some(12);
        cas.inputs.expect_mod = Some(0);
        cas.outputs.revision = Some(5);
        cas.outputs.succeeded = Some(true);
        let h = vec![
            put(1, 10, 0, 10, Outcome::Ok, 2),
            put(2, 11, 11, 20, Outcome::Ok, 3),
            get(3, 21, 30, 3, Some(kv(11, 2, 3, 2))),
            del,
            get(5, 51, 60, 4, None),
            cas,
            get(7, 81, 90, 5, Some(kv(12, 5, 5, 1))),
            // An unknown put nobody saw, then one somebody saw.
            put(8, 13, 91, 95, Outcome::Unknown, 0),
            put(9, 14, 96, 97, Outcome::Unknown, 0),
            get(10, 98, 99, 7, Some(kv(14, 5, 7, 3))),
        ];
        assert_eq!(check_kv(&h), vec![]);
    }

    #[test]
    fn a_stale_read_a_wrong_version_and_a_lost_write_are_caught() {
        let stale = vec![
            put(1, 10, 0, 10, Outcome::Ok, 2),
            put(2, 11, 11, 20, Outcome::Ok, 3),
            get(3, 21, 30, 2, Some(kv(10, 2, 2, 1))),
        ];
        let v = check_kv(&stale);
        assert_eq!(v[0].property, LINEARIZABILITY, "{v:?}");
        assert_eq!(v[0].ops, [2, 3]);
        let version = vec![
            put(1, 10, 0, 10, Outcome::Ok, 2),
            put(2, 11, 11, 20, Outcome::Ok, 3),
            get(3, 21, 30, 3, Some(kv(11, 2, 3, 1))),
        ];
        assert_eq!(check_kv(&version)[0].ops, [2, 3]);
        let lost = vec![put(1, 10, 0, 10, Outcome::Ok, 2), get(2, 21, 30, 2, None)];
        assert_eq!(check_kv(&lost)[0].ops, [1, 2]);
        let twice = vec![
            put(1, 10, 0, 10, Outcome::Ok, 2),
            put(2, 11, 0, 10, Outcome::Ok, 2),
        ];
        assert_eq!(check_kv(&twice)[0].ops, [1, 2]);
    }

    #[test]
    fn a_read_below_a_finished_compaction_is_caught() {
        let mut compact = op(2, OpKind::Compact, 11, 20, Outcome::Ok);
        compact.inputs.revision = Some(3);
        compact.outputs.revision = Some(3);
        let mut past = get(3, 21, 30, 3, Some(kv(10, 2, 2, 1)));
        past.inputs.revision = Some(2);
        let h = vec![
            put(1, 10, 0, 10, Outcome::Ok, 2),
            put(4, 11, 0, 10, Outcome::Ok, 3),
            compact,
            past,
        ];
        let v = check_kv(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].property, COMPACTION);
        assert_eq!(v[0].ops, [2, 3]);
    }

    fn on(key: &str, mut o: HistoryOp) -> HistoryOp {
        o.inputs.key = key.into();
        o
    }

    fn leased(key: &str, value: u64, create: i64, modr: i64, lease: i64) -> SeenKv {
        SeenKv {
            key: key.into(),
            value: Some(value),
            create_revision: create,
            mod_revision: modr,
            version: 1,
            lease: Some(lease),
        }
    }

    fn lease_put(id: u64, key: &str, value: u64, lease: i64, t: u64, rev: i64) -> HistoryOp {
        let mut o = on(key, put(id, value, t, t + 5, Outcome::Ok, rev));
        o.inputs.lease = Some(lease);
        o
    }

    fn lease_end(id: u64, lease: i64, t: u64, rev: i64, keys: &[&str]) -> HistoryOp {
        let mut o = on("*", op(id, OpKind::LeaseEnd, t, t, Outcome::Ok));
        o.inputs.lease = Some(lease);
        o.outputs.revision = Some(rev);
        o.outputs.ended = Some(LeaseEnding::Expired);
        o.outputs.keys = Some(keys.iter().map(|k| (*k).to_owned()).collect());
        o
    }

    /// Lease 7 holds l0 and l1, lease 8 holds l2; lease 7 ends at
    /// revision 5.
    fn leased_history(end_keys: &[&str], l1_after: Option<SeenKv>) -> Vec<HistoryOp> {
        let mut range = on("l*", get(6, 51, 60, 5, None));
        range.op = OpKind::Range;
        range.outputs.kvs = Some(vec![leased("l2", 12, 4, 4, 8)]);
        vec![
            lease_put(1, "l0", 10, 7, 0, 2),
            lease_put(2, "l1", 11, 7, 10, 3),
            lease_put(3, "l2", 12, 8, 20, 4),
            lease_end(4, 7, 40, 5, end_keys),
            on("l1", get(5, 41, 50, 5, l1_after)),
            range,
        ]
    }

    #[test]
    fn a_lease_end_deletes_its_keys_in_one_revision() {
        assert_eq!(check_kv(&leased_history(&["l0", "l1"], None)), vec![]);
        // The end left l1 in place (deleted at another revision, or never).
        let v = check_kv(&leased_history(&["l0"], None));
        assert!(v.iter().any(|v| v.property == LEASE_END), "{v:?}");
        // A read at the end's revision still sees l1.
        let v = check_kv(&leased_history(
            &["l0", "l1"],
            Some(leased("l1", 11, 3, 3, 7)),
        ));
        assert!(v.iter().any(|v| v.property == LINEARIZABILITY), "{v:?}");
        // A read that sees a key attached to another lease than its put.
        let mut h = leased_history(&["l0", "l1"], None);
        h[5].outputs.kvs = Some(vec![leased("l2", 12, 4, 4, 7)]);
        let v = check_kv(&h);
        assert!(v.iter().any(|v| v.property == LINEARIZABILITY), "{v:?}");
        // The end deleted a key of another lease.
        let v = check_kv(&leased_history(&["l0", "l1", "l2"], None));
        assert!(v.iter().any(|v| v.property == LEASE_END), "{v:?}");
    }

    #[test]
    fn a_revision_nobody_wrote_is_caught() {
        let h = vec![
            put(1, 10, 0, 10, Outcome::Ok, 2),
            put(2, 11, 11, 20, Outcome::Ok, 4),
        ];
        let v = check_kv(&h);
        assert_eq!(v[0].property, LINEARIZABILITY, "{v:?}");
    }
}
