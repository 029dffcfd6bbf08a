//! Raft invariants, checked as the run goes.
//!
//! - Election safety: at most one leader per term (across every member and
//!   every restart).
//! - A committed entry never changes: the first time any member hands out
//!   index `i` as committed, its (term, data hash) is recorded; every later
//!   report of `i`, by any member, must match. So every member applies the
//!   same entries in the same order.
//! - Applied order: each state machine applies the indexes one after the
//!   other; only an installed snapshot skips a prefix, and a snapshot is
//!   taken at a committed index with its committed term.
//! - Nothing is applied before it is durable on a quorum of the
//!   configuration in force: the checker keeps a shadow of each member's
//!   durable log (what its `LogStore::persist` made durable, as a power
//!   failure would leave it) and the configuration after every committed
//!   membership change. raft-rs switches configuration when the leader
//!   APPLIES a change, so an entry after change `k` may have been committed
//!   under configuration `k` or `k - 1`; a quorum of either will do.
//! - Exactly-once: a state machine never sees an index twice in one
//!   lifetime (no re-apply after a restart), and a client write (a unique
//!   value) applies at one index only.
//! - Log matching, at the end: two logs that agree on an entry's term agree
//!   on everything before it (compacted prefixes are not compared).

use std::collections::BTreeMap;

use ha_core::LogWrite;
use ha_core::eraftpb::{ConfState, Entry};

use super::Violation;
use crate::sim::kv::{AppliedWrite, fnv};

const ELECTION_SAFETY: &str = "election safety";
const COMMITTED_STABLE: &str = "committed entries never change";
const DURABLE_QUORUM: &str = "applied only when durable on a quorum";
const EXACTLY_ONCE: &str = "exactly-once apply";
const LOG_MATCHING: &str = "log matching";
const APPLIED_ORDER: &str = "applied order identical on all members";

/// The voters of a configuration, by member id: incoming, and outgoing
/// while joint (a quorum needs a majority of each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Voters {
    incoming: Vec<u64>,
    outgoing: Vec<u64>,
}

impl Voters {
    pub(crate) fn of(cs: &ConfState) -> Self {
        Voters {
            incoming: cs.voters.clone(),
            outgoing: cs.voters_outgoing.clone(),
        }
    }

    fn quorum_holds(&self, holds: impl Fn(u64) -> bool) -> bool {
        let majority = |set: &[u64]| {
            set.is_empty() || set.iter().filter(|&&v| holds(v)).count() > set.len() / 2
        };
        !self.incoming.is_empty() && majority(&self.incoming) && majority(&self.outgoing)
    }

    fn describe(&self) -> String {
        if self.outgoing.is_empty() {
            format!("{:?}", self.incoming)
        } else {
            format!("{:?} and {:?} (joint)", self.incoming, self.outgoing)
        }
    }
}

/// A log written but not synced: a snapshot it restarts at, then entries.
struct Unsynced {
    snapshot: Option<u64>,
    first: Option<u64>,
    terms: Vec<u64>,
}

#[derive(Default)]
struct Shadow {
    /// Term of each durable entry, index 1 first (a compacted or
    /// snapshot-covered prefix holds the committed terms).
    durable: Vec<u64>,
    /// Written but not synced, oldest first.
    unsynced: Vec<Unsynced>,
}

impl Shadow {
    fn put(log: &mut Vec<u64>, first: u64, terms: &[u64]) {
        let keep = usize::try_from(first.saturating_sub(1)).unwrap_or(usize::MAX);
        // A gap (never written) holds no term.
        log.resize(keep, 0);
        log.extend_from_slice(terms);
    }
}

/// See the module docs.
pub(crate) struct RaftChecks {
    /// The bootstrap configuration.
    initial: Voters,
    /// The configuration after each committed membership change, by index.
    configs: BTreeMap<u64, Voters>,
    leaders: BTreeMap<u64, usize>,
    committed: BTreeMap<u64, (u64, u64)>,
    shadows: Vec<Shadow>,
    /// Per member: the last index its current state machine applied a
    /// client write at.
    sm_applied: Vec<u64>,
    /// Per member: the last index its state machine applied (any entry).
    last_applied: Vec<u64>,
    /// Client value → the index it applied at.
    value_index: BTreeMap<u64, u64>,
}

impl RaftChecks {
    pub(crate) fn new(members: usize) -> Self {
        RaftChecks {
            initial: Voters {
                incoming: (1..=members as u64).collect(),
                outgoing: Vec::new(),
            },
            configs: BTreeMap::new(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            shadows: (0..members).map(|_| Shadow::default()).collect(),
            sm_applied: vec![0; members],
            last_applied: vec![0; members],
            value_index: BTreeMap::new(),
        }
    }

    /// A member slot was added (a new member id joins).
    pub(crate) fn add_member(&mut self) {
        self.shadows.push(Shadow::default());
        self.sm_applied.push(0);
        self.last_applied.push(0);
    }

    /// Member `m` leads `term`. Returns true the first time anyone leads it.
    pub(crate) fn leader(&mut self, m: usize, term: u64) -> Result<bool, Violation> {
        match self.leaders.get(&term) {
            None => {
                self.leaders.insert(term, m);
                Ok(true)
            }
            Some(&other) if other == m => Ok(false),
            Some(&other) => Err(Violation::new(
                ELECTION_SAFETY,
                format!("members {} and {} both lead term {term}", other + 1, m + 1),
            )),
        }
    }

    /// Distinct leaderships seen.
    pub(crate) fn leaderships(&self) -> usize {
        self.leaders.len()
    }

    /// Member `m` handed out `entry` as committed. `Ok(true)` the first
    /// time any member did.
    pub(crate) fn committed(&mut self, m: usize, entry: &Entry) -> Result<bool, Violation> {
        let this = (entry.term, fnv(&entry.data));
        match self.committed.get(&entry.index) {
            None => {
                self.committed.insert(entry.index, this);
                Ok(true)
            }
            Some(&seen) if seen == this => Ok(false),
            Some(&(term, _)) => Err(Violation::new(
                COMMITTED_STABLE,
                format!(
                    "member {} committed index {} with term {} and data hash {:016x}, \
                     but index {} was committed before with term {term} and other data",
                    m + 1,
                    entry.index,
                    entry.term,
                    this.1,
                    entry.index
                ),
            )),
        }
    }

    /// The configuration after the membership change at `index` (the first
    /// member to apply it tells).
    pub(crate) fn config_applied(&mut self, index: u64, cs: &ConfState) {
        self.configs.entry(index).or_insert_with(|| Voters::of(cs));
    }

    /// Committed terms of indexes 1..=upto (0 where none was seen).
    fn committed_prefix(&self, upto: u64) -> Vec<u64> {
        (1..=upto)
            .map(|i| self.committed.get(&i).map_or(0, |c| c.0))
            .collect()
    }

    fn restart_at(&self, log: &mut Vec<u64>, point: u64) {
        *log = self.committed_prefix(point);
    }

    /// Member `m`'s log writer made `write` durable (if synced) or wrote it
    /// without sync.
    pub(crate) fn persisted(&mut self, m: usize, write: &LogWrite) {
        let this = Unsynced {
            snapshot: write.snapshot.map(|p| p.index),
            first: write.entries.first().map(|e| e.index),
            terms: write.entries.iter().map(|e| e.term).collect(),
        };
        if !write.sync {
            self.shadows[m].unsynced.push(this);
            return;
        }
        let mut pending = std::mem::take(&mut self.shadows[m].unsynced);
        pending.push(this);
        let mut durable = std::mem::take(&mut self.shadows[m].durable);
        for w in pending {
            if let Some(point) = w.snapshot {
                self.restart_at(&mut durable, point);
            }
            if let Some(first) = w.first {
                Shadow::put(&mut durable, first, &w.terms);
            }
        }
        self.shadows[m].durable = durable;
    }

    /// Member `m` lost power: its unsynced writes are gone.
    pub(crate) fn crashed(&mut self, m: usize) {
        self.shadows[m].unsynced.clear();
    }

    /// Member `m` starts with a state machine that has applied `applied`,
    /// over a log whose entries (terms from index `first`) are all durable;
    /// the prefix before `first` was compacted (durable and committed).
    pub(crate) fn started(&mut self, m: usize, applied: u64, first: u64, terms: Vec<u64>) {
        self.sm_applied[m] = applied;
        self.last_applied[m] = applied;
        let mut durable = self.committed_prefix(first.saturating_sub(1));
        durable.extend(terms);
        self.shadows[m] = Shadow {
            durable,
            unsynced: Vec::new(),
        };
    }

    /// Member `m` installed a snapshot taken at `index` in `term`: its
    /// state machine now stands there.
    pub(crate) fn installed(&mut self, m: usize, index: u64, term: u64) -> Result<(), Violation> {
        self.sm_applied[m] = index;
        self.last_applied[m] = index;
        match self.committed.get(&index) {
            Some(&(t, _)) if t == term => Ok(()),
            Some(&(t, _)) => Err(Violation::new(
                COMMITTED_STABLE,
                format!(
                    "member {} installed a snapshot at index {index} term {term}, but that \
                     index was committed with term {t}",
                    m + 1
                ),
            )),
            None => Err(Violation::new(
                COMMITTED_STABLE,
                format!(
                    "member {} installed a snapshot at index {index}, which nobody had \
                     committed",
                    m + 1
                ),
            )),
        }
    }

    /// The configurations `entry` may have been committed under: the one
    /// after the last membership change before it, and the one before that.
    fn configs_for(&self, index: u64) -> Vec<&Voters> {
        let mut out: Vec<&Voters> = self
            .configs
            .range(..index)
            .rev()
            .take(2)
            .map(|(_, v)| v)
            .collect();
        if out.len() < 2 {
            out.push(&self.initial);
        }
        out
    }

    /// Member `m` is about to apply `entry`: it must follow the last index
    /// it applied, and be durable on a quorum.
    pub(crate) fn applying(&mut self, m: usize, entry: &Entry) -> Result<(), Violation> {
        let last = self.last_applied[m];
        self.last_applied[m] = entry.index;
        if entry.index != last + 1 {
            return Err(Violation::new(
                APPLIED_ORDER,
                format!(
                    "member {} applies index {} right after index {last}",
                    m + 1,
                    entry.index
                ),
            ));
        }
        let at = usize::try_from(entry.index.saturating_sub(1)).unwrap_or(usize::MAX);
        let holds = |id: u64| {
            usize::try_from(id.saturating_sub(1))
                .ok()
                .and_then(|s| self.shadows.get(s))
                .is_some_and(|s| s.durable.get(at) == Some(&entry.term))
        };
        let configs = self.configs_for(entry.index);
        if configs.iter().any(|c| c.quorum_holds(holds)) {
            return Ok(());
        }
        let holders: Vec<u64> = (1..=self.shadows.len() as u64)
            .filter(|&id| holds(id))
            .collect();
        let wanted: Vec<String> = configs.iter().map(|c| c.describe()).collect();
        Err(Violation::new(
            DURABLE_QUORUM,
            format!(
                "member {} applies index {} (term {}), which is durable on members \
                 {holders:?}; not a quorum of {}",
                m + 1,
                entry.index,
                entry.term,
                wanted.join(" nor ")
            ),
        ))
    }
    /// A state machine applied a client write.
    pub(crate) fn applied_write(&mut self, w: &AppliedWrite) -> Result<(), Violation> {
        let last = &mut self.sm_applied[w.member];
        if w.index <= *last {
            return Err(Violation::new(
                EXACTLY_ONCE,
                format!(
                    "member {} applied index {} again (its state machine was already at {})",
                    w.member + 1,
                    w.index,
                    *last
                ),
            ));
        }
        *last = w.index;
        match self.value_index.get(&w.value) {
            None => {
                self.value_index.insert(w.value, w.index);
                Ok(())
            }
            Some(&i) if i == w.index => Ok(()),
            Some(&i) => Err(Violation::new(
                EXACTLY_ONCE,
                format!(
                    "write of value {} applied at index {i} and again at index {} (member {})",
                    w.value,
                    w.index,
                    w.member + 1
                ),
            )),
        }
    }

    /// The index a client value applied at, if it did.
    pub(crate) fn index_of(&self, value: u64) -> Option<u64> {
        self.value_index.get(&value).copied()
    }

    /// Highest index seen committed by any member.
    pub(crate) fn max_committed(&self) -> u64 {
        self.committed.keys().next_back().copied().unwrap_or(0)
    }

    /// Log matching over members' readable logs: per member its slot,
    /// the first index it holds, and the terms from there. Only indexes
    /// both logs hold are compared.
    pub(crate) fn log_matching(logs: &[(usize, u64, Vec<u64>)]) -> Result<(), Violation> {
        let term = |first: u64, terms: &[u64], i: u64| -> Option<u64> {
            let at = usize::try_from(i.checked_sub(first)?).ok()?;
            terms.get(at).copied()
        };
        for (k, (a, fa, la)) in logs.iter().enumerate() {
            for (b, fb, lb) in logs.iter().skip(k + 1) {
                let lo = (*fa).max(*fb);
                let hi = (fa + la.len() as u64).min(fb + lb.len() as u64);
                // The highest index where both have the same term: every
                // entry below it must match too.
                let Some(top) = (lo..hi)
                    .rev()
                    .find(|&i| term(*fa, la, i) == term(*fb, lb, i))
                else {
                    continue;
                };
                if let Some(i) = (lo..top).find(|&i| term(*fa, la, i) != term(*fb, lb, i)) {
                    return Err(Violation::new(
                        LOG_MATCHING,
                        format!(
                            "members {} and {} agree on index {top} (term {:?}) but differ at \
                             index {i} (terms {:?} and {:?})",
                            a + 1,
                            b + 1,
                            term(*fa, la, top),
                            term(*fa, la, i),
                            term(*fb, lb, i)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn write(first: u64, terms: &[u64], sync: bool) -> LogWrite {
        LogWrite {
            snapshot: None,
            entries: terms
                .iter()
                .enumerate()
                .map(|(i, &t)| entry(first + i as u64, t))
                .collect(),
            hard_state: None,
            sync,
        }
    }

    #[test]
    fn two_leaders_in_a_term_are_caught() {
        let mut c = RaftChecks::new(3);
        assert_eq!(c.leader(0, 1), Ok(true));
        assert_eq!(c.leader(0, 1), Ok(false));
        assert_eq!(c.leader(1, 2), Ok(true));
        assert!(c.leader(2, 2).is_err());
    }

    #[test]
    fn an_entry_applied_before_a_quorum_made_it_durable_is_caught() {
        let mut c = RaftChecks::new(3);
        c.persisted(0, &write(1, &[1, 1], true));
        c.persisted(1, &write(1, &[1], true));
        c.persisted(1, &write(2, &[1], false));
        assert!(c.applying(0, &entry(1, 1)).is_ok());
        assert!(c.applying(0, &entry(2, 1)).is_err(), "unsynced counted");
        c.crashed(1);
        c.persisted(1, &write(2, &[1], true));
        assert!(c.applying(2, &entry(1, 1)).is_ok());
        assert!(c.applying(2, &entry(2, 1)).is_ok());
        // Overwritten by another term on member 1: no longer a quorum.
        c.persisted(1, &write(2, &[2], true));
        assert!(c.applying(1, &entry(1, 1)).is_ok());
        assert!(c.applying(1, &entry(2, 1)).is_err());
    }

    #[test]
    fn a_changed_committed_entry_and_a_double_apply_are_caught() {
        let mut c = RaftChecks::new(3);
        assert_eq!(c.committed(0, &entry(1, 1)), Ok(true));
        assert_eq!(c.committed(1, &entry(1, 1)), Ok(false));
        assert!(c.committed(1, &entry(1, 2)).is_err());
        let w = |member, index, value| AppliedWrite {
            member,
            index,
            key: 0,
            value,
        };
        assert!(c.applied_write(&w(0, 3, 7)).is_ok());
        assert!(c.applied_write(&w(1, 3, 7)).is_ok());
        assert!(c.applied_write(&w(0, 3, 7)).is_err(), "same index twice");
        c.started(2, 0, 1, Vec::new());
        assert!(c.applied_write(&w(2, 3, 7)).is_ok());
        assert!(
            c.applied_write(&w(2, 5, 7)).is_err(),
            "value at two indexes"
        );
    }

    #[test]
    fn diverging_logs_are_caught() {
        let log = |m: usize, first: u64, terms: &[u64]| (m, first, terms.to_vec());
        assert!(
            RaftChecks::log_matching(&[
                log(0, 1, &[1, 1, 2]),
                log(1, 1, &[1, 1, 3]),
                log(2, 1, &[1])
            ])
            .is_ok()
        );
        assert!(RaftChecks::log_matching(&[log(0, 1, &[1, 2, 3]), log(1, 1, &[1, 1, 3])]).is_err());
        // A compacted prefix is not compared; the rest is.
        assert!(RaftChecks::log_matching(&[log(0, 3, &[3, 4]), log(1, 1, &[1, 2, 3, 4])]).is_ok());
        assert!(
            RaftChecks::log_matching(&[log(0, 2, &[1, 3, 4]), log(1, 1, &[1, 2, 3, 4])]).is_err()
        );
    }

    #[test]
    fn durability_counts_the_configuration_in_force_and_applied_order_is_checked() {
        let mut c = RaftChecks::new(3);
        c.add_member();
        c.add_member();
        // Voters 1..=5 after a change at index 1, then {3, 4, 5} at index 2.
        c.config_applied(1, &ConfState::from((vec![1, 2, 3, 4, 5], vec![])));
        c.config_applied(2, &ConfState::from((vec![3, 4, 5], vec![])));
        for m in [0, 1] {
            c.persisted(m, &write(1, &[1, 1, 1, 1], true));
        }
        c.persisted(2, &write(1, &[1, 1, 1], true));
        // Index 3 is on 1, 2, 3: a quorum of {1..=5} (the configuration
        // before the last change) will do.
        for i in 1..=3 {
            assert!(c.applying(0, &entry(i, 1)).is_ok(), "index {i}");
        }
        // Index 4 is on 1 and 2 only: a quorum of neither.
        assert!(c.applying(0, &entry(4, 1)).is_err());
        // A gap without a snapshot is caught; a snapshot moves the start.
        assert!(c.applying(1, &entry(2, 1)).is_err());
        c.committed(0, &entry(3, 1)).unwrap();
        assert!(c.installed(3, 3, 1).is_ok());
        assert!(c.installed(4, 3, 2).is_err(), "snapshot term differs");
        assert!(
            c.applying(3, &entry(4, 1)).is_err(),
            "durable on 1 and 2 only"
        );
        let mut after_snapshot = |m| {
            let mut w = write(4, &[1], true);
            w.snapshot = Some(ha_core::LogPoint { index: 3, term: 1 });
            c.persisted(m, &w)
        };
        after_snapshot(3);
        after_snapshot(4);
        c.installed(4, 3, 1).unwrap();
        assert!(c.applying(4, &entry(4, 1)).is_ok());
        // A joint configuration needs both halves.
        c.config_applied(
            10,
            &ConfState {
                voters: vec![1, 2, 3],
                voters_outgoing: vec![3, 4, 5],
                ..Default::default()
            },
        );
        let joint = c.configs[&10].clone();
        assert!(!joint.quorum_holds(|id| id <= 2));
        assert!(joint.quorum_holds(|id| id <= 4));
    }
}
