//! The MVCC state machine, written once over [`StateStore`].
//!
//! Layout in the store (never under ha's reserved prefix):
//!
//! - `\x01kv/r/{main:8 BE}{sub:8 BE}` → a [`WRecord`]: the key's state
//!   written at revision (main, sub), or a tombstone. One per write, kept
//!   until compaction removes it.
//! - `\x01kv/m/rev` → the revision when history was last compacted, and
//!   `\x01kv/m/compact` → the compact revision. The current revision is
//!   not stored per write: it is the newest record's revision, or the one
//!   stored at compaction (which may have removed that record), whichever
//!   is greater.
//!
//! In memory, rebuilt from the store on open and after a snapshot:
//!
//! - one ordered map of keys, each with
//!   - its revisions in order (etcd's treeIndex), tombstones marking where
//!     one generation ends and the next begins, and
//!   - while the key is live, its current value, so that writes, compares
//!     and current reads never touch the store (apply cannot fail on I/O);
//!
//!   one map, so that a put finds its key once;
//! - the records of the current apply step, not yet committed (the engine
//!   commits the step's batch after the last command), for past-revision
//!   reads within the step.
//!
//! Reads at past revisions fetch records from the store.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ha_core::{
    ApplyContext, Compare, CompareOp, CompareTarget, DeleteRequest, Error, EventKind,
    InvalidRequest, KeyRange, KeyValue, LeaseId, PutRequest, RangeRequest, SortOrder, SortTarget,
    StateMachine, StateStore, StorageError, TxnOp, TxnRequest, WatchEvent, WriteBatch,
};
use prost::Message as _;

use super::observer::KvObserver;
use super::wire::{
    RangeReply, RecordRef, Reply, TxnReply, WCommand, WCommandOp, WLeaseRecord, WQuery, WQueryOp,
    WRecord, encode_reply,
};

pub(crate) const RECORD_PREFIX: &[u8] = b"\x01kv/r/";
pub(crate) const RECORD_END: &[u8] = b"\x01kv/r0";
const META_REVISION: &[u8] = b"\x01kv/m/rev";
const META_COMPACT: &[u8] = b"\x01kv/m/compact";
const LEASE_PREFIX: &[u8] = b"\x01kv/l/";
const LEASE_END: &[u8] = b"\x01kv/l0";

/// What a record costs against the space quota besides its key and value
/// (its revision key and metadata, roughly).
pub const RECORD_OVERHEAD: u64 = 32;

/// The longest lease TTL: about 292 years, so that deadlines never
/// overflow.
pub const MAX_TTL_MS: u64 = i64::MAX as u64 / 1_000_000;

fn record_key(main: i64, sub: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(RECORD_PREFIX.len() + 16);
    k.extend_from_slice(RECORD_PREFIX);
    k.extend_from_slice(&(main as u64).to_be_bytes());
    k.extend_from_slice(&(sub as u64).to_be_bytes());
    k
}

fn lease_key(id: LeaseId) -> Vec<u8> {
    let mut k = Vec::with_capacity(LEASE_PREFIX.len() + 8);
    k.extend_from_slice(LEASE_PREFIX);
    k.extend_from_slice(&(id.0 as u64).to_be_bytes());
    k
}

/// A lease as the machine keeps it: its TTL and the live keys attached.
#[derive(Clone, Debug, Default)]
struct Lease {
    ttl_ms: u64,
    keys: BTreeSet<Vec<u8>>,
}

/// A lease granted or revoked in the current apply step, for the observer.
#[derive(Clone, Copy, Debug)]
enum LeaseChange {
    Granted(LeaseId, u64),
    Revoked(LeaseId),
}

/// The (main, sub) revision of a record key, or `None` if it is not one.
fn parse_record_key(k: &[u8]) -> Option<(i64, i64)> {
    let rev = k.strip_prefix(RECORD_PREFIX)?;
    let main: [u8; 8] = rev.get(..8)?.try_into().ok()?;
    let sub: [u8; 8] = rev.get(8..16)?.try_into().ok()?;
    Some((
        u64::from_be_bytes(main) as i64,
        u64::from_be_bytes(sub) as i64,
    ))
}

fn decode_record(bytes: &[u8]) -> Result<WRecord, StorageError> {
    WRecord::decode(bytes).map_err(|e| StorageError::corrupt("kv record", e.to_string()))
}

/// The key-value a (non-tombstone) record stores, written at revision
/// `main`.
fn record_kv(rec: WRecord, main: i64) -> KeyValue {
    KeyValue {
        key: rec.key,
        create_revision: rec.create_revision,
        mod_revision: main,
        version: rec.version,
        value: rec.value,
        lease: LeaseId(rec.lease),
    }
}

fn malformed() -> Error {
    Error::InvalidRequest {
        reason: InvalidRequest::Malformed,
    }
}

/// One revision of a key in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rev {
    main: i64,
    sub: i64,
    cost: u64,
    tombstone: bool,
}

fn cost(key: &[u8], value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64 + RECORD_OVERHEAD
}

/// A key as the machine holds it in memory: its revisions until
/// compaction and, while it is live, its current value. An entry exists
/// while it has revisions; a live key always has at least one.
#[derive(Debug, Default)]
struct KeyEntry {
    revs: Vec<Rev>,
    live: Option<KeyValue>,
}

/// Writes one revision record: to the batch, the step's pending records
/// and the key's revisions. The revision itself is not stored per write:
/// on open it is the newest record's, or what compaction last wrote (see
/// `reload`), so a step of many writes costs no extra store key.
fn write_record(
    revs: &mut Vec<Rev>,
    pending: &mut BTreeMap<(i64, i64), Vec<u8>>,
    used_bytes: &mut u64,
    w: &mut Writer<'_>,
    rec: RecordRef<'_>,
) {
    let c = cost(rec.key, rec.value);
    let rev = Rev {
        main: w.main,
        sub: w.sub,
        cost: c,
        tombstone: rec.tombstone,
    };
    revs.push(rev);
    let bytes = rec.encode();
    w.batch.put(record_key(w.main, w.sub), bytes.clone());
    pending.insert((w.main, w.sub), bytes);
    *used_bytes += c;
    w.sub += 1;
}

/// etcd's rule for one transaction: a branch may not put a key twice nor
/// put a key it deletes (nested transactions included; the two branches of
/// a nested transaction never both run, so they may overlap each other).
///
/// # Errors
/// [`InvalidRequest::DuplicateKeyInTxn`] or
/// [`InvalidRequest::PutInDeletedRange`].
pub fn check_txn(txn: &TxnRequest) -> Result<(), Error> {
    branch_writes(&txn.success)?;
    branch_writes(&txn.failure)?;
    Ok(())
}

type Writes = (BTreeSet<Vec<u8>>, Vec<KeyRange>);

fn branch_writes(ops: &[TxnOp]) -> Result<Writes, Error> {
    let invalid = |reason| Err(Error::InvalidRequest { reason });
    let (mut puts, mut dels): Writes = Default::default();
    for op in ops {
        match op {
            TxnOp::Put(p) => {
                if dels.iter().any(|d| d.contains(&p.key)) {
                    return invalid(InvalidRequest::PutInDeletedRange);
                }
                if !puts.insert(p.key.clone()) {
                    return invalid(InvalidRequest::DuplicateKeyInTxn);
                }
            }
            TxnOp::Delete(d) => {
                if puts.iter().any(|k| d.range.contains(k)) {
                    return invalid(InvalidRequest::PutInDeletedRange);
                }
                dels.push(d.range.clone());
            }
            TxnOp::Range(_) => {}
            TxnOp::Txn(t) => {
                let (mut np, mut nd) = branch_writes(&t.success)?;
                let (fp, fd) = branch_writes(&t.failure)?;
                np.extend(fp);
                nd.extend(fd);
                for k in &np {
                    if puts.contains(k) {
                        return invalid(InvalidRequest::DuplicateKeyInTxn);
                    }
                    if dels.iter().any(|d| d.contains(k)) {
                        return invalid(InvalidRequest::PutInDeletedRange);
                    }
                }
                if puts.iter().any(|k| nd.iter().any(|d| d.contains(k))) {
                    return invalid(InvalidRequest::PutInDeletedRange);
                }
                puts.extend(np);
                dels.extend(nd);
            }
        }
    }
    Ok((puts, dels))
}

/// True when the transaction writes nothing in either branch (so it can be
/// served on the read path).
pub fn txn_is_read_only(txn: &TxnRequest) -> bool {
    txn.success.iter().chain(&txn.failure).all(|op| match op {
        TxnOp::Range(_) => true,
        TxnOp::Txn(t) => txn_is_read_only(t),
        TxnOp::Put(_) | TxnOp::Delete(_) => false,
    })
}

/// The revision one command writes at, and the next sub revision.
struct Writer<'a> {
    batch: &'a mut WriteBatch,
    main: i64,
    sub: i64,
}

/// The replicated KV with etcd v3 semantics, as a [`StateMachine`] over
/// any [`StateStore`]: global revision, per-key history until compaction,
/// transactions, and a space quota decided deterministically from the
/// quota each command carries.
///
/// Commands and queries are encoded by [`KvCommand`](super::KvCommand) and
/// [`KvQuery`](super::KvQuery); replies decoded by
/// [`decode_reply`](super::decode_reply). Bad bytes get an
/// [`InvalidRequest::Malformed`] reply, never a panic.
pub struct MvccMachine<S: StateStore + ?Sized> {
    store: Arc<S>,
    keys: BTreeMap<Vec<u8>, KeyEntry>,
    /// How many entries of `keys` are live.
    live_keys: usize,
    /// The current step's records, encoded as in the batch.
    pending: BTreeMap<(i64, i64), Vec<u8>>,
    revision: i64,
    compact_revision: i64,
    used_bytes: u64,
    leases: BTreeMap<LeaseId, Lease>,
    lease_changes: Vec<LeaseChange>,
    observer: Option<Box<dyn KvObserver>>,
    /// The changes of the current apply step, for the observer (collected
    /// only while there is one).
    step_events: Vec<WatchEvent>,
    /// The current apply step compacted.
    step_compacted: bool,
    /// Injected bug (the simulator's; off in production): a lease's end
    /// deletes its first key at one revision and the others at the next.
    split_lease_deletes: bool,
}

impl<S: StateStore + ?Sized> std::fmt::Debug for MvccMachine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MvccMachine")
            .field("revision", &self.revision)
            .field("compact_revision", &self.compact_revision)
            .field("keys", &self.live_keys)
            .field("used_bytes", &self.used_bytes)
            .finish()
    }
}

fn read_i64<S: StateStore + ?Sized>(
    store: &S,
    key: &[u8],
    what: &str,
) -> Result<Option<i64>, StorageError> {
    match store.get(key)? {
        None => Ok(None),
        Some(v) => {
            let b: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                StorageError::corrupt(what, format!("{} bytes, expected 8", v.len()))
            })?;
            Ok(Some(i64::from_be_bytes(b)))
        }
    }
}

impl<S: StateStore + ?Sized> MvccMachine<S> {
    /// Opens the machine over `store`, rebuilding its index from what the
    /// store holds (an empty store is a new KV at revision 1).
    ///
    /// # Errors
    /// A store that cannot be read, or records that do not decode.
    pub fn open(store: Arc<S>) -> Result<Self, StorageError> {
        let mut m = MvccMachine {
            store,
            keys: BTreeMap::new(),
            live_keys: 0,
            pending: BTreeMap::new(),
            revision: 1,
            compact_revision: 0,
            used_bytes: 0,
            leases: BTreeMap::new(),
            lease_changes: Vec::new(),
            observer: None,
            step_events: Vec::new(),
            step_compacted: false,
            split_lease_deletes: false,
        };
        m.reload()?;
        Ok(m)
    }

    fn reload(&mut self) -> Result<(), StorageError> {
        self.keys.clear();
        self.live_keys = 0;
        self.pending.clear();
        self.step_events.clear();
        self.step_compacted = false;
        self.used_bytes = 0;
        self.revision = read_i64(&*self.store, META_REVISION, "kv revision")?.unwrap_or(1);
        self.compact_revision =
            read_i64(&*self.store, META_COMPACT, "kv compact revision")?.unwrap_or(0);
        let mut err = None;
        let (keys, used) = (&mut self.keys, &mut self.used_bytes);
        // Writes do not store the revision (see `write_record`): it is the
        // newest record's, unless compaction removed that record, and
        // compaction stores the revision it ran at.
        let mut newest = 0;
        self.store
            .scan(RECORD_PREFIX, Some(RECORD_END), &mut |k, v| {
                let Some((main, sub)) = parse_record_key(k) else {
                    err = Some(StorageError::corrupt("kv record key", "not 16 bytes"));
                    return false;
                };
                newest = newest.max(main);
                let rec = match decode_record(v) {
                    Ok(r) => r,
                    Err(e) => {
                        err = Some(e);
                        return false;
                    }
                };
                let c = cost(&rec.key, &rec.value);
                *used += c;
                let entry = keys.entry(rec.key.clone()).or_default();
                entry.revs.push(Rev {
                    main,
                    sub,
                    cost: c,
                    tombstone: rec.tombstone,
                });
                entry.live = (!rec.tombstone).then(|| record_kv(rec, main));
                true
            })?;
        if let Some(e) = err {
            return Err(e);
        }
        self.live_keys = self.keys.values().filter(|e| e.live.is_some()).count();
        self.revision = self.revision.max(newest);
        self.reload_leases()
    }

    /// Reads the leases and attaches the live keys to theirs.
    fn reload_leases(&mut self) -> Result<(), StorageError> {
        self.leases.clear();
        self.lease_changes.clear();
        let mut err = None;
        let leases = &mut self.leases;
        self.store
            .scan(LEASE_PREFIX, Some(LEASE_END), &mut |k, v| {
                let id = k
                    .get(LEASE_PREFIX.len()..)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok());
                let (Some(id), Ok(rec)) = (id, WLeaseRecord::decode(v)) else {
                    err = Some(StorageError::corrupt(
                        "kv lease",
                        "undecodable lease record",
                    ));
                    return false;
                };
                leases.insert(
                    LeaseId(u64::from_be_bytes(id) as i64),
                    Lease {
                        ttl_ms: rec.ttl_ms,
                        keys: BTreeSet::new(),
                    },
                );
                true
            })?;
        if let Some(e) = err {
            return Err(e);
        }
        for kv in self.keys.values().filter_map(|e| e.live.as_ref()) {
            if let Some(lease) = self.leases.get_mut(&kv.lease) {
                lease.keys.insert(kv.key.clone());
            }
        }
        Ok(())
    }

    /// Every lease with its TTL, by id.
    pub fn leases(&self) -> Vec<(LeaseId, Duration)> {
        self.leases
            .iter()
            .map(|(id, l)| (*id, Duration::from_millis(l.ttl_ms)))
            .collect()
    }

    /// Switches on a known bug for the simulator (never in production):
    /// a lease's revocation or expiry deletes its first key at one
    /// revision and its other keys at the next, instead of all at one.
    #[doc(hidden)]
    pub fn inject_split_lease_deletes(&mut self, on: bool) {
        self.split_lease_deletes = on;
    }

    /// Sets who is told about applied changes (the watch hub and the
    /// lease manager, through the node); replaces any earlier observer.
    pub fn set_observer(&mut self, observer: Box<dyn KvObserver>) {
        self.observer = Some(observer);
    }

    /// The events of revisions `from..=to` (`to` capped at the current
    /// revision), oldest first, in write order within a revision, each
    /// with its `prev_kv` when the key existed before the change (found
    /// through the key index; history below the compact revision is gone,
    /// so an event right after a compaction may lack it). Whole revisions
    /// only: it stops after the revision that brings the count to
    /// `max_events` or beyond. Returns the events and the last revision
    /// they cover (every event up to it is included). Records of the
    /// apply step not yet committed are read from memory.
    ///
    /// # Errors
    /// [`Error::Compacted`] when `from` is at or below the compact
    /// revision (a delete at exactly the compact revision is no longer
    /// stored, so history from there would be incomplete); a storage error
    /// when a record cannot be read.
    pub fn history(
        &self,
        from: i64,
        to: i64,
        max_events: usize,
    ) -> Result<(Vec<WatchEvent>, i64), Error> {
        if self.compact_revision > 0 && from <= self.compact_revision {
            return Err(Error::Compacted {
                compact_revision: self.compact_revision,
            });
        }
        let from = from.max(1);
        let to = to.min(self.revision);
        if from > to {
            return Ok((Vec::new(), to));
        }
        let max_events = max_events.max(1);
        let mut records: BTreeMap<(i64, i64), WRecord> = BTreeMap::new();
        let mut covered = to;
        let mut last_main = 0;
        let mut err = None;
        self.store.scan(
            &record_key(from, 0),
            Some(&record_key(to + 1, 0)),
            &mut |k, v| {
                let Some((main, sub)) = parse_record_key(k) else {
                    err = Some(StorageError::corrupt("kv record key", "not 16 bytes"));
                    return false;
                };
                if records.len() >= max_events && main != last_main {
                    covered = last_main;
                    return false;
                }
                match WRecord::decode(v) {
                    Ok(r) => {
                        records.insert((main, sub), r);
                        last_main = main;
                        true
                    }
                    Err(e) => {
                        err = Some(StorageError::corrupt("kv record", e.to_string()));
                        false
                    }
                }
            },
        )?;
        if let Some(e) = err {
            return Err(e.into());
        }
        // The step not yet committed: its records are not in the store yet.
        if records.len() < max_events {
            for (&rev, bytes) in self.pending.range((from, 0)..(covered + 1, 0)) {
                if let std::collections::btree_map::Entry::Vacant(e) = records.entry(rev) {
                    e.insert(decode_record(bytes)?);
                }
            }
        }
        let mut events = Vec::with_capacity(records.len());
        for ((main, sub), rec) in records {
            events.push(self.history_event(main, sub, rec)?);
        }
        Ok((events, covered))
    }

    fn history_event(&self, main: i64, sub: i64, rec: WRecord) -> Result<WatchEvent, Error> {
        let prev = match self.keys.get(&rec.key).map(|e| &e.revs) {
            Some(revs) => {
                let n = revs.partition_point(|r| (r.main, r.sub) < (main, sub));
                match n.checked_sub(1).and_then(|i| revs.get(i)) {
                    Some(p) if !p.tombstone => Some(self.record(p.main, p.sub)?),
                    _ => None,
                }
            }
            None => None,
        };
        Ok(if rec.tombstone {
            WatchEvent {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: rec.key,
                    mod_revision: main,
                    ..KeyValue::default()
                },
                prev_kv: prev,
            }
        } else {
            WatchEvent {
                kind: EventKind::Put,
                kv: record_kv(rec, main),
                prev_kv: prev,
            }
        })
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The compact revision (0: never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Bytes the stored records use, history included (what the quota
    /// counts).
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.live_keys
    }

    /// True when no key is live.
    pub fn is_empty(&self) -> bool {
        self.live_keys == 0
    }

    fn execute(
        &mut self,
        ctx: &ApplyContext,
        cmd: WCommand,
        batch: &mut WriteBatch,
    ) -> Result<Reply, Error> {
        let quota = cmd.quota_bytes;
        match cmd.op.ok_or_else(malformed)? {
            WCommandOp::Put(p) => {
                let p: PutRequest = p.into();
                self.check_put(&p)?;
                self.check_quota(cost(&p.key, &p.value), quota)?;
                let mut w = self.writer(batch);
                Ok(self.put(p, &mut w))
            }
            WCommandOp::Delete(d) => {
                let d: DeleteRequest = d.try_into()?;
                let mut w = self.writer(batch);
                Ok(self.delete(&d, &mut w))
            }
            WCommandOp::Txn(t) => {
                let t: TxnRequest = t.try_into()?;
                check_txn(&t)?;
                let mut path = Vec::new();
                self.choose_path(&t, &mut path);
                let mut put_cost = 0;
                self.check_path(&t, &mut path.iter().copied(), &mut put_cost)?;
                self.check_quota(put_cost, quota)?;
                let mut w = self.writer(batch);
                let mut reply = self.txn(&t, &mut path.into_iter(), &mut Some(&mut w))?;
                set_revision(&mut reply, self.revision);
                Ok(Reply::Txn(reply))
            }
            WCommandOp::Compact(revision) => self.compact(revision, batch),
            WCommandOp::LeaseGrant(g) => self.lease_grant(LeaseId(g.id), g.ttl_ms, batch),
            WCommandOp::LeaseRevoke(id) => self.lease_revoke(LeaseId(id), batch),
            WCommandOp::LeaseExpire(e) => {
                if e.term != ctx.term {
                    return Err(Error::InvalidRequest {
                        reason: InvalidRequest::StaleLeaseExpiry,
                    });
                }
                self.lease_revoke(LeaseId(e.id), batch)
            }
        }
    }

    fn lease_grant(
        &mut self,
        id: LeaseId,
        ttl_ms: u64,
        batch: &mut WriteBatch,
    ) -> Result<Reply, Error> {
        let invalid = |reason| Err(Error::InvalidRequest { reason });
        if id.0 <= 0 {
            return invalid(InvalidRequest::InvalidLeaseId);
        }
        if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
            return invalid(InvalidRequest::InvalidTtl);
        }
        if self.leases.contains_key(&id) {
            return Err(Error::LeaseExists { lease: id.0 });
        }
        batch.put(lease_key(id), WLeaseRecord { ttl_ms }.encode_to_vec());
        self.leases.insert(
            id,
            Lease {
                ttl_ms,
                keys: BTreeSet::new(),
            },
        );
        self.lease_changes.push(LeaseChange::Granted(id, ttl_ms));
        Ok(Reply::Lease {
            revision: self.revision,
            id: id.0,
            ttl_ms,
            keys: Vec::new(),
        })
    }

    /// Removes a lease and deletes its keys, all at one revision.
    fn lease_revoke(&mut self, id: LeaseId, batch: &mut WriteBatch) -> Result<Reply, Error> {
        let Some(lease) = self.leases.get(&id) else {
            return Err(Error::LeaseNotFound { lease: id.0 });
        };
        let keys: Vec<Vec<u8>> = lease.keys.iter().cloned().collect();
        let mut w = self.writer(batch);
        for (i, key) in keys.into_iter().enumerate() {
            if i == 1 && self.split_lease_deletes {
                w = self.writer(batch);
            }
            self.delete(&DeleteRequest::new(KeyRange::Key(key)), &mut w);
        }
        self.leases.remove(&id);
        batch.delete(lease_key(id));
        self.lease_changes.push(LeaseChange::Revoked(id));
        Ok(Reply::LeaseRevoke {
            revision: self.revision,
        })
    }

    fn writer<'a>(&self, batch: &'a mut WriteBatch) -> Writer<'a> {
        Writer {
            batch,
            main: self.revision + 1,
            sub: 0,
        }
    }

    fn check_quota(&self, cost: u64, quota: u64) -> Result<(), Error> {
        if quota > 0 && cost > 0 && self.used_bytes + cost > quota {
            return Err(Error::NoSpace {
                used: self.used_bytes,
                quota,
            });
        }
        Ok(())
    }

    fn check_put(&self, p: &PutRequest) -> Result<(), Error> {
        let invalid = |reason| Err(Error::InvalidRequest { reason });
        if p.key.is_empty() {
            return invalid(InvalidRequest::EmptyKey);
        }
        if (p.ignore_value && !p.value.is_empty()) || (p.ignore_lease && p.lease != LeaseId::NONE) {
            return invalid(InvalidRequest::IgnoredFieldSet);
        }
        if (p.ignore_value || p.ignore_lease) && self.live(&p.key).is_none() {
            return invalid(InvalidRequest::KeyNotFound);
        }
        if p.lease != LeaseId::NONE && !self.leases.contains_key(&p.lease) {
            return Err(Error::LeaseNotFound { lease: p.lease.0 });
        }
        Ok(())
    }

    fn check_read_revision(&self, revision: i64) -> Result<i64, Error> {
        if revision < 0 {
            return Err(Error::InvalidRequest {
                reason: InvalidRequest::NegativeRevision,
            });
        }
        if revision > self.revision {
            return Err(Error::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        if revision > 0 && revision < self.compact_revision {
            return Err(Error::Compacted {
                compact_revision: self.compact_revision,
            });
        }
        Ok(if revision == 0 {
            self.revision
        } else {
            revision
        })
    }

    /// The live key-value at `key`.
    fn live(&self, key: &[u8]) -> Option<&KeyValue> {
        self.keys.get(key).and_then(|e| e.live.as_ref())
    }

    fn put(&mut self, p: PutRequest, w: &mut Writer<'_>) -> Reply {
        let PutRequest {
            key,
            value,
            lease,
            prev_kv: want_prev,
            ignore_value,
            ignore_lease,
            ..
        } = p;
        self.revision = w.main;
        let MvccMachine {
            keys,
            live_keys,
            pending,
            used_bytes,
            leases,
            observer,
            step_events,
            ..
        } = self;
        // One lookup for the key (a new key takes a second, to insert it).
        let entry = match keys.get_mut(&key) {
            Some(entry) => entry,
            None => keys.entry(key.clone()).or_default(),
        };
        // The live value is replaced in place; the old one moves out, not
        // copied (it is the reply's and the event's `prev_kv`).
        let next = match &entry.live {
            Some(cur) => KeyValue {
                key,
                create_revision: cur.create_revision,
                mod_revision: w.main,
                version: cur.version + 1,
                value: if ignore_value {
                    cur.value.clone()
                } else {
                    value
                },
                lease: if ignore_lease { cur.lease } else { lease },
            },
            None => {
                *live_keys += 1;
                KeyValue {
                    key,
                    create_revision: w.main,
                    mod_revision: w.main,
                    version: 1,
                    value,
                    lease,
                }
            }
        };
        let KeyEntry { revs, live } = entry;
        let prev = live.take();
        let cur = &*live.insert(next);
        write_record(
            revs,
            pending,
            used_bytes,
            w,
            RecordRef {
                key: &cur.key,
                value: &cur.value,
                create_revision: cur.create_revision,
                version: cur.version,
                lease: cur.lease.0,
                tombstone: false,
            },
        );
        let old_lease = prev.as_ref().map_or(LeaseId::NONE, |kv| kv.lease);
        if old_lease != cur.lease {
            if let Some(l) = leases.get_mut(&old_lease) {
                l.keys.remove(&cur.key);
            }
            if let Some(l) = leases.get_mut(&cur.lease) {
                l.keys.insert(cur.key.clone());
            }
        }
        let (event_prev, reply_prev) = match (observer.is_some(), want_prev) {
            (true, true) => (prev.clone(), prev),
            (true, false) => (prev, None),
            (false, true) => (None, prev),
            (false, false) => (None, None),
        };
        if observer.is_some() {
            step_events.push(WatchEvent {
                kind: EventKind::Put,
                kv: cur.clone(),
                prev_kv: event_prev,
            });
        }
        Reply::Put {
            revision: w.main,
            prev_kv: reply_prev,
        }
    }

    fn delete(&mut self, d: &DeleteRequest, w: &mut Writer<'_>) -> Reply {
        let keys: Vec<Vec<u8>> = self.live_range(&d.range).map(|kv| kv.key.clone()).collect();
        let mut prev_kvs = Vec::new();
        for key in &keys {
            // Listed by `live_range` just above, so always found.
            let Some(entry) = self.keys.get_mut(key) else {
                continue;
            };
            let prev = entry.live.take();
            self.revision = w.main;
            write_record(
                &mut entry.revs,
                &mut self.pending,
                &mut self.used_bytes,
                w,
                RecordRef {
                    key,
                    value: &[],
                    create_revision: 0,
                    version: 0,
                    lease: 0,
                    tombstone: true,
                },
            );
            if let Some(kv) = &prev {
                self.live_keys -= 1;
                self.detach(kv.lease, key);
            }
            if self.observer.is_some() {
                self.step_events.push(WatchEvent {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: key.clone(),
                        mod_revision: w.main,
                        ..KeyValue::default()
                    },
                    prev_kv: prev.clone(),
                });
            }
            if let (Some(kv), true) = (prev, d.prev_kv) {
                prev_kvs.push(kv);
            }
        }
        Reply::Delete {
            revision: if keys.is_empty() {
                self.revision
            } else {
                w.main
            },
            deleted: keys.len() as u64,
            prev_kvs,
        }
    }

    fn detach(&mut self, lease: LeaseId, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.remove(key);
        }
    }

    fn live_range<'a>(&'a self, range: &KeyRange) -> Box<dyn Iterator<Item = &'a KeyValue> + 'a> {
        if let KeyRange::Key(k) = range {
            return Box::new(self.live(k).into_iter());
        }
        let (start, end) = range.bounds();
        if end.as_ref().is_some_and(|e| *e <= start) {
            return Box::new(std::iter::empty());
        }
        let upper = match end {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        Box::new(
            self.keys
                .range((Bound::Included(start), upper))
                .filter_map(|(_, e)| e.live.as_ref()),
        )
    }

    /// Evaluates every compare of `t` and of the nested transactions on
    /// the branches taken, against the state before the transaction (as
    /// etcd does), in pre-order.
    fn choose_path(&self, t: &TxnRequest, path: &mut Vec<bool>) {
        let ok = t.compare.iter().all(|c| self.compare(c));
        path.push(ok);
        let branch = if ok { &t.success } else { &t.failure };
        for op in branch {
            if let TxnOp::Txn(nested) = op {
                self.choose_path(nested, path);
            }
        }
    }

    fn check_path(
        &self,
        t: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
        put_cost: &mut u64,
    ) -> Result<(), Error> {
        let branch = if path.next().unwrap_or(false) {
            &t.success
        } else {
            &t.failure
        };
        for op in branch {
            match op {
                TxnOp::Put(p) => {
                    self.check_put(p)?;
                    *put_cost += cost(&p.key, &p.value);
                }
                TxnOp::Range(r) => {
                    self.check_read_revision(r.revision)?;
                }
                TxnOp::Delete(_) => {}
                TxnOp::Txn(nested) => self.check_path(nested, path, put_cost)?,
            }
        }
        Ok(())
    }

    /// Runs a transaction along `path`; `w` is `None` on the read path
    /// (the transaction must then be read-only).
    fn txn(
        &mut self,
        t: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
        w: &mut Option<&mut Writer<'_>>,
    ) -> Result<TxnReply, Error> {
        let succeeded = path.next().unwrap_or(false);
        let branch = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            let r = match (op, w.as_deref_mut()) {
                (TxnOp::Put(p), Some(w)) => self.put(p.clone(), w),
                (TxnOp::Delete(d), Some(w)) => self.delete(d, w),
                (TxnOp::Put(_) | TxnOp::Delete(_), None) => return Err(malformed()),
                (TxnOp::Range(r), _) => Reply::Range(self.range(r)?),
                (TxnOp::Txn(nested), _) => Reply::Txn(self.txn(nested, path, w)?),
            };
            responses.push(r);
        }
        Ok(TxnReply {
            revision: self.revision,
            succeeded,
            responses,
        })
    }

    fn compare(&self, c: &Compare) -> bool {
        let mut any = false;
        for kv in self.live_range(&c.range) {
            any = true;
            if !compare_kv(c, kv) {
                return false;
            }
        }
        if any {
            return true;
        }
        // etcd: a value compare on a missing key always fails; the others
        // compare against the zero key-value.
        !matches!(c.target, CompareTarget::Value(_)) && compare_kv(c, &KeyValue::default())
    }

    fn range(&self, r: &RangeRequest) -> Result<RangeReply, Error> {
        let at = self.check_read_revision(r.revision)?;
        let mut kvs: Vec<KeyValue> = if at == self.revision {
            if r.count_only {
                return Ok(RangeReply {
                    revision: self.revision,
                    kvs: Vec::new(),
                    more: false,
                    count: self.live_range(&r.range).count() as u64,
                });
            }
            self.live_range(&r.range).cloned().collect()
        } else {
            let found = self.index_range(&r.range, at);
            if r.count_only {
                return Ok(RangeReply {
                    revision: self.revision,
                    kvs: Vec::new(),
                    more: false,
                    count: found.len() as u64,
                });
            }
            found
                .into_iter()
                .map(|(main, sub)| self.record(main, sub))
                .collect::<Result<_, _>>()?
        };
        let count = kvs.len() as u64;
        let order = match (r.sort_target, r.sort_order) {
            (SortTarget::Key, SortOrder::None | SortOrder::Ascend) => None,
            (_, SortOrder::None | SortOrder::Ascend) => Some(false),
            (_, SortOrder::Descend) => Some(true),
        };
        if let Some(descend) = order {
            kvs.sort_by(|a, b| {
                let o = match r.sort_target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::CreateRevision => a.create_revision.cmp(&b.create_revision),
                    SortTarget::ModRevision => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                };
                if descend { o.reverse() } else { o }
            });
        }
        let more = r.limit > 0 && count > r.limit;
        if more {
            kvs.truncate(r.limit as usize);
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeReply {
            revision: self.revision,
            kvs,
            more,
            count,
        })
    }

    /// The (main, sub) of each key in `range` live at revision `at`.
    fn index_range(&self, range: &KeyRange, at: i64) -> Vec<(i64, i64)> {
        let (start, end) = range.bounds();
        if end.as_ref().is_some_and(|e| *e <= start) {
            return Vec::new();
        }
        let upper = match end {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        self.keys
            .range((Bound::Included(start), upper))
            .filter_map(|(_, KeyEntry { revs, .. })| {
                let n = revs.partition_point(|r| r.main <= at);
                let r = revs.get(n.checked_sub(1)?)?;
                (!r.tombstone).then_some((r.main, r.sub))
            })
            .collect()
    }

    fn record(&self, main: i64, sub: i64) -> Result<KeyValue, Error> {
        let rec = match self.pending.get(&(main, sub)) {
            Some(bytes) => decode_record(bytes)?,
            None => {
                let bytes = self.store.get(&record_key(main, sub))?.ok_or_else(|| {
                    StorageError::corrupt(
                        "kv record",
                        format!("revision {main}.{sub} is indexed but not stored"),
                    )
                })?;
                decode_record(&bytes)?
            }
        };
        Ok(record_kv(rec, main))
    }

    fn compact(&mut self, revision: i64, batch: &mut WriteBatch) -> Result<Reply, Error> {
        if revision <= self.compact_revision {
            return Err(Error::Compacted {
                compact_revision: self.compact_revision,
            });
        }
        if revision > self.revision {
            return Err(Error::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        self.compact_revision = revision;
        self.step_compacted = true;
        batch.put(META_COMPACT.to_vec(), revision.to_be_bytes().to_vec());
        // The newest record may be a tombstone that this removes: the
        // revision must survive it (see `reload`).
        batch.put(META_REVISION.to_vec(), self.revision.to_be_bytes().to_vec());
        let mut freed = 0;
        let pending = &mut self.pending;
        self.keys.retain(|_, KeyEntry { revs, live }| {
            let n = revs.partition_point(|r| r.main <= revision);
            if n == 0 {
                return true;
            }
            // Keep the newest revision at or below the compaction point
            // unless it is a tombstone: reads at `revision` still see it.
            let keep_from = if revs[n - 1].tombstone { n } else { n - 1 };
            for r in revs.drain(..keep_from) {
                batch.delete(record_key(r.main, r.sub));
                pending.remove(&(r.main, r.sub));
                freed += r.cost;
            }
            // A live key keeps its newest revision, which is no tombstone.
            debug_assert!(live.is_none() || !revs.is_empty());
            !revs.is_empty()
        });
        self.used_bytes -= freed;
        Ok(Reply::Compact {
            revision: self.revision,
        })
    }

    fn query_inner(&self, query: &[u8]) -> Result<Reply, Error> {
        let q = WQuery::decode(query).map_err(|_| malformed())?;
        match q.op.ok_or_else(malformed)? {
            WQueryOp::Range(r) => Ok(Reply::Range(self.range(&r.try_into()?)?)),
            WQueryOp::Txn(t) => {
                let t: TxnRequest = t.try_into()?;
                if !txn_is_read_only(&t) {
                    return Err(malformed());
                }
                let mut path = Vec::new();
                self.choose_path(&t, &mut path);
                self.check_path(&t, &mut path.iter().copied(), &mut 0)?;
                // Read-only: `txn` takes `&mut self` for the write path only.
                let mut reply = self.read_only_txn(&t, &mut path.into_iter())?;
                set_revision(&mut reply, self.revision);
                Ok(Reply::Txn(reply))
            }
            WQueryOp::Lease(q) => {
                let id = LeaseId(q.id);
                let lease = self
                    .leases
                    .get(&id)
                    .ok_or(Error::LeaseNotFound { lease: id.0 })?;
                Ok(Reply::Lease {
                    revision: self.revision,
                    id: id.0,
                    ttl_ms: lease.ttl_ms,
                    keys: if q.keys {
                        lease.keys.iter().cloned().collect()
                    } else {
                        Vec::new()
                    },
                })
            }
            WQueryOp::Leases(_) => Ok(Reply::Leases {
                revision: self.revision,
                leases: self.leases.iter().map(|(id, l)| (id.0, l.ttl_ms)).collect(),
            }),
        }
    }

    fn read_only_txn(
        &self,
        t: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<TxnReply, Error> {
        let succeeded = path.next().unwrap_or(false);
        let branch = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            responses.push(match op {
                TxnOp::Range(r) => Reply::Range(self.range(r)?),
                TxnOp::Txn(nested) => Reply::Txn(self.read_only_txn(nested, path)?),
                TxnOp::Put(_) | TxnOp::Delete(_) => return Err(malformed()),
            });
        }
        Ok(TxnReply {
            revision: self.revision,
            succeeded,
            responses,
        })
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let o = match &c.target {
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Version(n) => kv.version.cmp(n),
        CompareTarget::CreateRevision(n) => kv.create_revision.cmp(n),
        CompareTarget::ModRevision(n) => kv.mod_revision.cmp(n),
        CompareTarget::Lease(l) => kv.lease.cmp(l),
    };
    match c.op {
        CompareOp::Equal => o.is_eq(),
        CompareOp::NotEqual => o.is_ne(),
        CompareOp::Less => o.is_lt(),
        CompareOp::Greater => o.is_gt(),
    }
}

/// Every response of a transaction carries the transaction's revision.
fn set_revision(t: &mut TxnReply, revision: i64) {
    t.revision = revision;
    for r in &mut t.responses {
        match r {
            Reply::Put { revision: r, .. }
            | Reply::Delete { revision: r, .. }
            | Reply::Compact { revision: r }
            | Reply::Lease { revision: r, .. }
            | Reply::Leases { revision: r, .. }
            | Reply::LeaseRevoke { revision: r } => *r = revision,
            Reply::Range(r) => r.revision = revision,
            Reply::Txn(t) => set_revision(t, revision),
        }
    }
}

impl<S: StateStore + ?Sized> StateMachine for MvccMachine<S> {
    fn apply(&mut self, ctx: &ApplyContext, command: &[u8], batch: &mut WriteBatch) -> Bytes {
        let result = match WCommand::decode(command) {
            Ok(cmd) => self.execute(ctx, cmd, batch),
            Err(_) => Err(malformed()),
        };
        Bytes::from(encode_reply(&result))
    }

    fn on_committed(&mut self, _applied_index: u64) {
        self.pending.clear();
        let events = std::mem::take(&mut self.step_events);
        let compacted = std::mem::take(&mut self.step_compacted);
        let changes = std::mem::take(&mut self.lease_changes);
        if let Some(observer) = self.observer.as_mut() {
            if !events.is_empty() {
                observer.events(&events, self.revision);
            }
            if compacted {
                observer.compacted(self.compact_revision);
            }
            for change in changes {
                match change {
                    LeaseChange::Granted(id, ttl_ms) => {
                        observer.lease_granted(id, Duration::from_millis(ttl_ms));
                    }
                    LeaseChange::Revoked(id) => observer.lease_revoked(id),
                }
            }
        }
        // Keep the allocation for the next step.
        self.step_events = events;
        self.step_events.clear();
    }

    fn restored(&mut self, _applied_index: u64) -> Result<(), StorageError> {
        self.reload()?;
        let leases = self.leases();
        if let Some(observer) = self.observer.as_mut() {
            observer.restored(self.revision, self.compact_revision, &leases);
        }
        Ok(())
    }

    fn query(&self, query: &[u8]) -> Bytes {
        Bytes::from(encode_reply(&self.query_inner(query)))
    }
}
