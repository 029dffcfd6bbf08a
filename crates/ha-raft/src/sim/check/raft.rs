//! Raft invariants, checked as the run goes.
//!
//! - Election safety: at most one leader per term (across every member and
//!   every restart).
//! - A committed entry never changes: the first time any member hands out
//!   index `i` as committed, its (term, data hash) is recorded; every later
//!   report of `i`, by any member, must match. So every member applies the
//!   same entries in the same order.
//! - Nothing is applied before it is durable on a quorum: the checker keeps
//!   a shadow of each member's durable log (what its `LogStore::persist`
//!   made durable, as a power failure would leave it).
//! - Exactly-once: a state machine never sees an index twice in one
//!   lifetime (no re-apply after a restart), and a client write (a unique
//!   value) applies at one index only.
//! - Log matching, at the end: two logs that agree on an entry's term agree
//!   on everything before it.

use std::collections::BTreeMap;

use ha_core::LogWrite;
use ha_core::eraftpb::Entry;

use super::Violation;
use crate::sim::kv::{AppliedWrite, fnv};

const ELECTION_SAFETY: &str = "election safety";
const COMMITTED_STABLE: &str = "committed entries never change";
const DURABLE_QUORUM: &str = "applied only when durable on a quorum";
const EXACTLY_ONCE: &str = "exactly-once apply";
const LOG_MATCHING: &str = "log matching";

#[derive(Default)]
struct Shadow {
    /// Term of each durable entry, index 1 first.
    durable: Vec<u64>,
    /// Written but not synced, oldest first: (first index, terms).
    unsynced: Vec<(u64, Vec<u64>)>,
}

impl Shadow {
    fn put(log: &mut Vec<u64>, first: u64, terms: &[u64]) {
        let keep = usize::try_from(first.saturating_sub(1)).unwrap_or(usize::MAX);
        log.truncate(keep);
        log.extend_from_slice(terms);
    }
}

/// See the module docs.
pub(crate) struct RaftChecks {
    quorum: usize,
    leaders: BTreeMap<u64, usize>,
    committed: BTreeMap<u64, (u64, u64)>,
    shadows: Vec<Shadow>,
    /// Per member: the last index its current state machine applied.
    sm_applied: Vec<u64>,
    /// Client value → the index it applied at.
    value_index: BTreeMap<u64, u64>,
}

impl RaftChecks {
    pub(crate) fn new(members: usize) -> Self {
        RaftChecks {
            quorum: members / 2 + 1,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            shadows: (0..members).map(|_| Shadow::default()).collect(),
            sm_applied: vec![0; members],
            value_index: BTreeMap::new(),
        }
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

    /// Member `m` handed out `entry` as committed.
    pub(crate) fn committed(&mut self, m: usize, entry: &Entry) -> Result<(), Violation> {
        let this = (entry.term, fnv(&entry.data));
        match self.committed.get(&entry.index) {
            None => {
                self.committed.insert(entry.index, this);
                Ok(())
            }
            Some(&seen) if seen == this => Ok(()),
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

    /// Member `m`'s log writer made `write` durable (if synced) or wrote it
    /// without sync.
    pub(crate) fn persisted(&mut self, m: usize, write: &LogWrite) {
        let shadow = &mut self.shadows[m];
        let terms: Vec<u64> = write.entries.iter().map(|e| e.term).collect();
        let first = write.entries.first().map(|e| e.index);
        if write.sync {
            for (first, terms) in std::mem::take(&mut shadow.unsynced) {
                Shadow::put(&mut shadow.durable, first, &terms);
            }
            if let Some(first) = first {
                Shadow::put(&mut shadow.durable, first, &terms);
            }
        } else if let Some(first) = first {
            shadow.unsynced.push((first, terms));
        }
    }

    /// Member `m` lost power: its unsynced writes are gone.
    pub(crate) fn crashed(&mut self, m: usize) {
        self.shadows[m].unsynced.clear();
    }

    /// Member `m` starts with a state machine that has applied `applied`,
    /// over a log whose entries (terms from index 1) are all durable.
    pub(crate) fn started(&mut self, m: usize, applied: u64, durable: Vec<u64>) {
        self.sm_applied[m] = applied;
        self.shadows[m] = Shadow {
            durable,
            unsynced: Vec::new(),
        };
    }

    /// Member `m` is about to apply `entry`: it must be durable on a quorum.
    pub(crate) fn applying(&self, m: usize, entry: &Entry) -> Result<(), Violation> {
        let at = usize::try_from(entry.index.saturating_sub(1)).unwrap_or(usize::MAX);
        let holders = self
            .shadows
            .iter()
            .filter(|s| s.durable.get(at) == Some(&entry.term))
            .count();
        if holders >= self.quorum {
            return Ok(());
        }
        Err(Violation::new(
            DURABLE_QUORUM,
            format!(
                "member {} applies index {} (term {}), which is durable on {holders} \
                 member(s); a quorum is {}",
                m + 1,
                entry.index,
                entry.term,
                self.quorum
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

    /// Log matching over every member's readable log (terms by index).
    pub(crate) fn log_matching(logs: &[Vec<u64>]) -> Result<(), Violation> {
        for (a, la) in logs.iter().enumerate() {
            for (b, lb) in logs.iter().enumerate().skip(a + 1) {
                let common = la.len().min(lb.len());
                // The highest index where both have the same term: every
                // entry below it must match too.
                let Some(top) = (0..common).rev().find(|&i| la[i] == lb[i]) else {
                    continue;
                };
                if let Some(i) = (0..top).find(|&i| la[i] != lb[i]) {
                    return Err(Violation::new(
                        LOG_MATCHING,
                        format!(
                            "members {} and {} agree on index {} (term {}) but differ at \
                             index {} (terms {} and {})",
                            a + 1,
                            b + 1,
                            top + 1,
                            la[top],
                            i + 1,
                            la[i],
                            lb[i]
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
        assert!(c.applying(0, &entry(2, 1)).is_ok());
        // Overwritten by another term on member 1: no longer a quorum.
        c.persisted(1, &write(2, &[2], true));
        assert!(c.applying(0, &entry(2, 1)).is_err());
    }

    #[test]
    fn a_changed_committed_entry_and_a_double_apply_are_caught() {
        let mut c = RaftChecks::new(3);
        assert!(c.committed(0, &entry(1, 1)).is_ok());
        assert!(c.committed(1, &entry(1, 1)).is_ok());
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
        c.started(2, 0, Vec::new());
        assert!(c.applied_write(&w(2, 3, 7)).is_ok());
        assert!(
            c.applied_write(&w(2, 5, 7)).is_err(),
            "value at two indexes"
        );
    }

    #[test]
    fn diverging_logs_are_caught() {
        assert!(RaftChecks::log_matching(&[vec![1, 1, 2], vec![1, 1, 3], vec![1]]).is_ok());
        assert!(RaftChecks::log_matching(&[vec![1, 2, 3], vec![1, 1, 3]]).is_err());
    }
}
