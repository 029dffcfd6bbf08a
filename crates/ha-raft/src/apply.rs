//! Applying committed entries: the dedup table, the user's state machine,
//! and the engine's metadata, all in one batch per step.
//!
//! Like the core, this is plain synchronous code: the shell runs it on its
//! apply thread and the simulator calls it directly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use ha_core::eraftpb::{ConfState, Entry, EntryType};
use ha_core::{
    ApplyContext, BatchOp, Error, NodeId, RESERVED_PREFIX, StateMachine, StateStore, StateView,
    StorageError, WriteBatch,
};
use prost::Message as _;

use crate::bugs::Bugs;
use crate::codec::{CachedResponse, DedupRecord, Envelope};
use crate::membership::MemberSet;

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = RESERVED_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

fn dedup_key(member: u64) -> Vec<u8> {
    let mut k = meta_key("dedup/");
    k.extend_from_slice(&member.to_be_bytes());
    k
}

/// What the engine keeps in the state store besides the user's data.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct EngineMeta {
    pub(crate) applied: u64,
    pub(crate) conf_state: Option<ConfState>,
    pub(crate) members: MemberSet,
}

/// Reads the engine's metadata from a state store.
pub(crate) fn load_meta<S: StateStore + ?Sized>(store: &S) -> Result<EngineMeta, StorageError> {
    let applied = match store.get(&meta_key("applied"))? {
        None => 0,
        Some(v) => {
            let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                StorageError::corrupt("applied index", format!("{} bytes, expected 8", v.len()))
            })?;
            u64::from_be_bytes(bytes)
        }
    };
    let conf_state = match store.get(&meta_key("conf_state"))? {
        None => None,
        Some(v) => Some(
            ConfState::decode(v.as_slice())
                .map_err(|e| StorageError::corrupt("conf state", e.to_string()))?,
        ),
    };
    let members = match store.get(&meta_key("members"))? {
        None => MemberSet::default(),
        Some(v) => MemberSet::decode(&v)
            .map_err(|e| StorageError::corrupt("member metadata", e.to_string()))?,
    };
    Ok(EngineMeta {
        applied,
        conf_state,
        members,
    })
}

fn decode_u64(what: &'static str, v: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = v
        .try_into()
        .map_err(|_| StorageError::corrupt(what, format!("{} bytes, expected 8", v.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The point a consistent view of the state store stands at: applied index,
/// its term, and the membership — what a snapshot of that view is. `None`
/// before anything was applied.
pub(crate) fn snapshot_point(
    view: &dyn StateView,
) -> Result<Option<(u64, u64, ConfState)>, StorageError> {
    let applied = match view.get(&meta_key("applied"))? {
        None => return Ok(None),
        Some(v) => decode_u64("applied index", &v)?,
    };
    if applied == 0 {
        return Ok(None);
    }
    let term = match view.get(&meta_key("applied_term"))? {
        None => return Ok(None),
        Some(v) => decode_u64("applied term", &v)?,
    };
    let conf_state = match view.get(&meta_key("conf_state"))? {
        None => return Ok(None),
        Some(v) => ConfState::decode(v.as_slice())
            .map_err(|e| StorageError::corrupt("conf state", e.to_string()))?,
    };
    Ok(Some((applied, term, conf_state)))
}

/// Writes the initial membership of a new group.
pub(crate) fn bootstrap_meta<S: StateStore + ?Sized>(
    store: &S,
    conf_state: &ConfState,
    members: &MemberSet,
) -> Result<(), StorageError> {
    let mut batch = WriteBatch::new();
    batch.put(meta_key("applied"), 0u64.to_be_bytes().to_vec());
    batch.put(meta_key("conf_state"), conf_state.encode_to_vec());
    batch.put(meta_key("members"), members.encode());
    store.write(batch, true)
}

#[derive(Clone, Debug, Default)]
struct DedupRow {
    incarnation: u64,
    lowest_outstanding: u64,
    responses: BTreeMap<u64, Bytes>,
}

enum Decision {
    Apply,
    Duplicate(Bytes),
    Reject,
}

/// The exactly-once table: per member, its newest applied incarnation, the
/// lowest seq it may still retry, and the responses of the seqs at or
/// above it. State-machine state: replicated, persisted with the applied
/// index, pruned deterministically from what the entries carry.
#[derive(Debug, Default)]
pub(crate) struct DedupTable {
    rows: HashMap<u64, DedupRow>,
}

impl DedupTable {
    fn load<S: StateStore + ?Sized>(store: &S) -> Result<Self, StorageError> {
        let start = dedup_key(0);
        let mut end = meta_key("dedup/");
        end.push(0xff);
        let mut rows = HashMap::new();
        let mut err = None;
        store.scan(&start, Some(&end), &mut |k, v| {
            let Some(member) = k
                .len()
                .checked_sub(8)
                .and_then(|at| k[at..].try_into().ok())
            else {
                err = Some(StorageError::corrupt("dedup table", "short key"));
                return false;
            };
            match DedupRecord::decode(v) {
                Ok(r) => {
                    rows.insert(
                        u64::from_be_bytes(member),
                        DedupRow {
                            incarnation: r.incarnation,
                            lowest_outstanding: r.lowest_outstanding,
                            responses: r
                                .responses
                                .into_iter()
                                .map(|c| (c.seq, c.response))
                                .collect(),
                        },
                    );
                    true
                }
                Err(e) => {
                    err = Some(StorageError::corrupt("dedup table", e.to_string()));
                    false
                }
            }
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok(DedupTable { rows }),
        }
    }

    fn decide(&mut self, env: &Envelope) -> Decision {
        let row = self.rows.entry(env.member).or_default();
        if env.incarnation < row.incarnation {
            // An old incarnation's late entry: the member restarted and
            // gave up on everything it had outstanding.
            return Decision::Reject;
        }
        if env.incarnation > row.incarnation {
            *row = DedupRow {
                incarnation: env.incarnation,
                ..DedupRow::default()
            };
        }
        if env.seq < row.lowest_outstanding {
            return Decision::Reject;
        }
        match row.responses.get(&env.seq) {
            Some(r) => Decision::Duplicate(r.clone()),
            None => Decision::Apply,
        }
    }

    fn record(&mut self, env: &Envelope, response: Option<Bytes>) {
        let row = self.rows.entry(env.member).or_default();
        if let Some(r) = response {
            row.responses.insert(env.seq, r);
        }
        if env.lowest_outstanding > row.lowest_outstanding {
            row.lowest_outstanding = env.lowest_outstanding;
            // Usually one or two entries go: no new map as `split_off` makes.
            while let Some(first) = row.responses.first_entry() {
                if *first.key() >= env.lowest_outstanding {
                    break;
                }
                first.remove();
            }
        }
    }

    fn write_row(&self, member: u64, batch: &mut WriteBatch) {
        if let Some(row) = self.rows.get(&member) {
            let rec = DedupRecord {
                incarnation: row.incarnation,
                lowest_outstanding: row.lowest_outstanding,
                responses: row
                    .responses
                    .iter()
                    .map(|(s, r)| CachedResponse {
                        seq: *s,
                        response: r.clone(),
                    })
                    .collect(),
            };
            batch.put(dedup_key(member), rec.encode_to_vec());
        }
    }
}

/// Applies a committed membership change on the raft thread and returns the
/// new configuration and member metadata, to be persisted with the step.
pub(crate) type ConfChangeFn<'a> = dyn FnMut(&Entry) -> Result<(ConfState, MemberSet), Error> + 'a;

/// The outcome of one apply step.
#[derive(Debug, Default)]
pub(crate) struct ApplyStep {
    pub(crate) applied: u64,
    /// This member's proposals (current incarnation) that have an answer.
    pub(crate) completed: Vec<(u64, Bytes)>,
}

/// Applies committed entries to a state machine over a state store.
pub(crate) struct Applier<S: StateStore + ?Sized, M: StateMachine> {
    store: Arc<S>,
    sm: M,
    me: NodeId,
    incarnation: u64,
    applied: u64,
    dedup: DedupTable,
    bugs: Bugs,
}

impl<S: StateStore + ?Sized, M: StateMachine> Applier<S, M> {
    pub(crate) fn open(
        store: Arc<S>,
        sm: M,
        me: NodeId,
        incarnation: u64,
        bugs: Bugs,
    ) -> Result<Self, StorageError> {
        let meta = load_meta(&*store)?;
        let dedup = DedupTable::load(&*store)?;
        Ok(Applier {
            store,
            sm,
            me,
            incarnation,
            applied: meta.applied,
            dedup,
            bugs,
        })
    }

    pub(crate) fn applied(&self) -> u64 {
        self.applied
    }

    /// Applies `entries` in order; membership changes go through
    /// `conf_change`, which returns the resulting `ConfState`. With `sync`
    /// the step's batch is made durable (the driver syncs now and then, so
    /// that a crash replays a bounded tail of the log).
    pub(crate) fn apply(
        &mut self,
        entries: &[Entry],
        sync: bool,
        conf_change: &mut ConfChangeFn<'_>,
    ) -> Result<ApplyStep, Error> {
        let mut batch = WriteBatch::new();
        let mut step = ApplyStep {
            applied: self.applied,
            completed: Vec::new(),
        };
        let mut touched: Vec<u64> = Vec::new();
        for entry in entries {
            let replay = entry.index <= self.applied;
            if replay && !self.bugs.reapply_after_restart {
                continue;
            }
            match entry.entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {}
                EntryType::EntryNormal => {
                    self.apply_command(entry, replay, &mut batch, &mut step, &mut touched)?;
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let (cs, members) = conf_change(entry)?;
                    batch.put(meta_key("conf_state"), cs.encode_to_vec());
                    batch.put(meta_key("members"), members.encode());
                }
            }
            self.applied = self.applied.max(entry.index);
        }
        if self.applied == step.applied {
            return Ok(step);
        }
        if let Some(last) = entries.iter().rev().find(|e| e.index == self.applied) {
            batch.put(meta_key("applied_term"), last.term.to_be_bytes().to_vec());
        }
        touched.sort_unstable();
        touched.dedup();
        for m in touched {
            self.dedup.write_row(m, &mut batch);
        }
        batch.put(meta_key("applied"), self.applied.to_be_bytes().to_vec());
        self.store.write(batch, sync)?;
        self.sm.on_committed(self.applied);
        step.applied = self.applied;
        Ok(step)
    }

    fn apply_command(
        &mut self,
        entry: &Entry,
        replay: bool,
        batch: &mut WriteBatch,
        step: &mut ApplyStep,
        touched: &mut Vec<u64>,
    ) -> Result<(), Error> {
        let env = match Envelope::decode(entry.data.as_slice()) {
            Ok(env) => env,
            Err(e) => {
                // Every member decodes the same bytes the same way, so
                // skipping is deterministic; nobody can be waiting for it.
                tracing::warn!(index = entry.index, error = %e, "skipping undecodable entry");
                return Ok(());
            }
        };
        let decision = if self.bugs.no_dedup || replay {
            // Only reachable with an injected bug (see `Bugs`).
            let _ = self.dedup.decide(&env);
            Decision::Apply
        } else {
            self.dedup.decide(&env)
        };
        let response = match decision {
            Decision::Reject => return Ok(()),
            Decision::Duplicate(r) => {
                self.dedup.record(&env, None);
                r
            }
            Decision::Apply => {
                let before = batch.len();
                let ctx = ApplyContext {
                    index: entry.index,
                    term: entry.term,
                    request: env.request_id(),
                };
                let r = self.sm.apply(&ctx, &env.command, batch);
                if batch.ops()[before..].iter().any(|op| match op {
                    BatchOp::Put { key, .. } | BatchOp::Delete { key } => {
                        key.starts_with(RESERVED_PREFIX)
                    }
                }) {
                    return Err(Error::fatal(
                        "the state machine wrote a key under ha's reserved prefix",
                    ));
                }
                self.dedup.record(&env, Some(r.clone()));
                r
            }
        };
        touched.push(env.member);
        if env.member == self.me.0 && env.incarnation == self.incarnation {
            step.completed.push((env.seq, response));
        }
        Ok(())
    }

    /// Makes every write so far durable.
    pub(crate) fn sync(&self) -> Result<(), StorageError> {
        self.store.write(WriteBatch::new(), true)
    }

    /// Replaces the whole state with a snapshot's `pairs` taken at
    /// `index`, then reloads the engine's metadata and lets the state
    /// machine reload. Returns the snapshot's member metadata.
    pub(crate) fn install(
        &mut self,
        pairs: &mut dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>>,
        index: u64,
    ) -> Result<MemberSet, Error> {
        self.store.restore(pairs)?;
        self.reload(index)
    }

    /// Reloads after the store was restored from a snapshot at `index`.
    pub(crate) fn reload(&mut self, index: u64) -> Result<MemberSet, Error> {
        let meta = load_meta(&*self.store)?;
        if meta.applied != index {
            return Err(StorageError::corrupt(
                "installed snapshot",
                format!("applied index {} where {index} was expected", meta.applied),
            )
            .into());
        }
        self.applied = meta.applied;
        self.dedup = DedupTable::load(&*self.store)?;
        self.sm.restored(index)?;
        Ok(meta.members)
    }

    /// Answers a read from the applied state.
    pub(crate) fn query(&self, query: &[u8]) -> Bytes {
        self.sm.query(query)
    }

    /// The state machine (the simulator reads watch history from it, as
    /// the shell's watch driver reads it from the shared machine).
    pub(crate) fn machine(&self) -> &M {
        &self.sm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(member: u64, inc: u64, seq: u64, lowest: u64) -> Envelope {
        Envelope {
            member,
            incarnation: inc,
            seq,
            lowest_outstanding: lowest,
            command: vec![],
        }
    }

    #[test]
    fn duplicates_get_the_cached_response_and_are_not_applied_again() {
        let mut t = DedupTable::default();
        assert!(matches!(t.decide(&env(1, 1, 5, 5)), Decision::Apply));
        t.record(&env(1, 1, 5, 5), Some(Bytes::from_static(b"r5")));
        match t.decide(&env(1, 1, 5, 5)) {
            Decision::Duplicate(r) => assert_eq!(&r[..], b"r5"),
            _ => panic!("a retried request was not recognised as a duplicate"),
        }
    }

    #[test]
    fn pruned_and_old_incarnation_entries_are_rejected_forever() {
        let mut t = DedupTable::default();
        t.record(&env(1, 1, 5, 5), Some(Bytes::new()));
        assert!(matches!(t.decide(&env(1, 1, 6, 6)), Decision::Apply));
        t.record(&env(1, 1, 6, 6), Some(Bytes::new()));
        // seq 5 is below the lowest outstanding now: its cached response is
        // gone, so a late duplicate must be refused, not applied again.
        assert!(matches!(t.decide(&env(1, 1, 5, 5)), Decision::Reject));
        // A restart bumps the incarnation; the old incarnation is dead.
        assert!(matches!(t.decide(&env(1, 2, 1, 1)), Decision::Apply));
        t.record(&env(1, 2, 1, 1), Some(Bytes::new()));
        assert!(matches!(t.decide(&env(1, 1, 7, 7)), Decision::Reject));
        // Another member is independent.
        assert!(matches!(t.decide(&env(2, 1, 1, 1)), Decision::Apply));
    }
}
