//! The KV workload: every member runs the production MVCC state machine
//! (`ha_storage::kv::MvccMachine`, over its memory state store) and the
//! clients put, delete, compare-and-swap, read (in every consistency, now
//! or at a past revision), range and compact a few keys.
//!
//! Requests are encoded with the production `KvCommand`/`KvQuery` and
//! replies decoded with `decode_reply`, as `KvNode` does. What the
//! machines apply is observed through the production `KvObserver` hook, so
//! the world can check that a revision means the same change on every
//! member and that acknowledged writes applied at the revision they
//! reported.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ha_core::{
    ApplyContext, ClusterId, Compare, CompareOp, CompareTarget, DeleteRequest, Error, EventKind,
    KeyRange, KeyValue, LeaseId, NodeId, PutRequest, RangeRequest, StateMachine, StorageError,
    TxnOp, TxnOpResponse, TxnRequest, WatchEvent, WriteBatch,
};
use ha_storage::MemStateStore;
use ha_storage::kv::{HeaderStamp, KvCommand, KvObserver, KvQuery, KvReply, MvccMachine};
use parking_lot::Mutex;

use super::check::Violation;
use super::executor::Nanos;
use super::history::{Consistency, Inputs, OpKind, Outcome, Outputs, SeenKv};
use super::kv::{self, KvRegister, fnv};
use super::rng::SimRng;

/// A request of the KV workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KvRequest {
    Put {
        key: u8,
        value: u64,
    },
    Delete {
        key: u8,
    },
    /// Put `value` if the key's mod_revision is `expect` (0: absent); the
    /// client fills `expect` in from the last read it saw of the key.
    Cas {
        key: u8,
        value: u64,
        expect: i64,
    },
    /// `back > 0`: read at the member's revision minus `back` (resolved
    /// when the member takes the request).
    Get {
        key: u8,
        consistency: Consistency,
        back: i64,
    },
    Range {
        consistency: Consistency,
    },
    /// Compact to the member's revision minus `back`.
    Compact {
        back: i64,
    },
    LeaseGrant {
        lease: i64,
        ttl_ms: u64,
    },
    /// Put `value` on leased key `l{key}`, attached to `lease`.
    LeasePut {
        key: u8,
        value: u64,
        lease: i64,
    },
    /// Answered by the leader's `LeaseManager` (a follower forwards it);
    /// the client gives up after `timeout_ms` (a third of the TTL, as the
    /// production keep-alive loop's attempts).
    KeepAlive {
        lease: i64,
        timeout_ms: u64,
    },
    LeaseRevoke {
        lease: i64,
    },
    /// Read leased key `l{key}`.
    LeaseGet {
        key: u8,
        consistency: Consistency,
    },
    /// Read every leased key (`l*`).
    LeaseRange {
        consistency: Consistency,
    },
}

impl KvRequest {
    /// Changes the KV (proposed through raft).
    pub(crate) fn is_write(&self) -> bool {
        matches!(
            self,
            KvRequest::Put { .. }
                | KvRequest::Delete { .. }
                | KvRequest::Cas { .. }
                | KvRequest::Compact { .. }
                | KvRequest::LeaseGrant { .. }
                | KvRequest::LeasePut { .. }
                | KvRequest::LeaseRevoke { .. }
        )
    }

    /// The history record's kind and inputs (`revision` filled in later
    /// for past reads and compactions).
    pub(crate) fn describe(&self) -> (OpKind, Inputs) {
        let mut i = Inputs::default();
        let kind = match *self {
            KvRequest::Put { key, value } => {
                i.key = key_name(key);
                i.value = Some(value);
                OpKind::Put
            }
            KvRequest::Delete { key } => {
                i.key = key_name(key);
                OpKind::Delete
            }
            KvRequest::Cas { key, value, expect } => {
                i.key = key_name(key);
                i.value = Some(value);
                i.expect_mod = Some(expect);
                OpKind::Txn
            }
            KvRequest::Get {
                key, consistency, ..
            } => {
                i.key = key_name(key);
                i.consistency = Some(consistency);
                OpKind::Get
            }
            KvRequest::Range { consistency } => {
                i.key = ALL_KEYS.to_owned();
                i.consistency = Some(consistency);
                OpKind::Range
            }
            KvRequest::Compact { .. } => {
                i.key = ALL_KEYS.to_owned();
                OpKind::Compact
            }
            KvRequest::LeaseGrant { lease, ttl_ms } => {
                i.key = ALL_KEYS.to_owned();
                i.lease = Some(lease);
                i.ttl_ms = Some(ttl_ms);
                OpKind::LeaseGrant
            }
            KvRequest::LeasePut { key, value, lease } => {
                i.key = leased_key_name(key);
                i.value = Some(value);
                i.lease = Some(lease);
                OpKind::Put
            }
            KvRequest::KeepAlive { lease, .. } => {
                i.key = ALL_KEYS.to_owned();
                i.lease = Some(lease);
                OpKind::KeepAlive
            }
            KvRequest::LeaseRevoke { lease } => {
                i.key = ALL_KEYS.to_owned();
                i.lease = Some(lease);
                OpKind::LeaseRevoke
            }
            KvRequest::LeaseGet { key, consistency } => {
                i.key = leased_key_name(key);
                i.consistency = Some(consistency);
                OpKind::Get
            }
            KvRequest::LeaseRange { consistency } => {
                i.key = format!("{LEASED_PREFIX}*");
                i.consistency = Some(consistency);
                OpKind::Range
            }
        };
        (kind, i)
    }

    /// The command to propose (writes), with `revision` the resolved
    /// compaction target.
    pub(crate) fn command(&self, revision: i64) -> Vec<u8> {
        let cmd = match *self {
            KvRequest::Put { key, value } => {
                KvCommand::Put(PutRequest::new(key_name(key), value.to_string()))
            }
            KvRequest::Delete { key } => {
                KvCommand::Delete(DeleteRequest::new(KeyRange::key(key_name(key))))
            }
            KvRequest::Cas { key, value, expect } => KvCommand::Txn(TxnRequest {
                compare: vec![Compare::key(
                    key_name(key),
                    CompareOp::Equal,
                    CompareTarget::ModRevision(expect),
                )],
                success: vec![TxnOp::Put(PutRequest::new(
                    key_name(key),
                    value.to_string(),
                ))],
                failure: vec![TxnOp::Range(RangeRequest::new(KeyRange::key(key_name(
                    key,
                ))))],
            }),
            KvRequest::Compact { .. } => KvCommand::Compact(revision),
            KvRequest::LeaseGrant { lease, ttl_ms } => KvCommand::LeaseGrant {
                id: LeaseId(lease),
                ttl: Duration::from_millis(ttl_ms),
            },
            KvRequest::LeasePut { key, value, lease } => {
                let mut p = PutRequest::new(leased_key_name(key), value.to_string());
                p.lease = LeaseId(lease);
                KvCommand::Put(p)
            }
            KvRequest::LeaseRevoke { lease } => KvCommand::LeaseRevoke(LeaseId(lease)),
            // Not proposed: reads and keep-alives (an empty compaction is
            // refused by every machine alike).
            KvRequest::Get { .. }
            | KvRequest::Range { .. }
            | KvRequest::LeaseGet { .. }
            | KvRequest::LeaseRange { .. }
            | KvRequest::KeepAlive { .. } => KvCommand::Compact(0),
        };
        cmd.encode(0)
    }

    /// The query to run (reads), at `revision` (0: the current one).
    pub(crate) fn query(&self, revision: i64) -> Vec<u8> {
        let range = match *self {
            KvRequest::Get { key, .. } => KeyRange::key(key_name(key)),
            KvRequest::LeaseGet { key, .. } => KeyRange::key(leased_key_name(key)),
            KvRequest::LeaseRange { .. } => KeyRange::prefix(LEASED_PREFIX),
            _ => KeyRange::prefix(KEY_PREFIX),
        };
        let mut r = RangeRequest::new(range);
        r.revision = revision;
        KvQuery::Range(r).encode()
    }
}

/// The keys are `k0`, `k1`, ...
pub(crate) const KEY_PREFIX: &str = "k";
/// The `key` of a history record that touches every key.
pub(crate) const ALL_KEYS: &str = "*";

pub(crate) fn key_name(key: u8) -> String {
    format!("{KEY_PREFIX}{key}")
}

/// Keys attached to leases are `l0`, `l1`, ... (lease expiries delete them
/// at revisions no client operation claims).
pub(crate) const LEASED_PREFIX: &str = "l";

pub(crate) fn leased_key_name(key: u8) -> String {
    format!("{LEASED_PREFIX}{key}")
}

/// A key of the built-in workload (`k<n>` or `l<n>`).
pub(crate) fn is_workload_key(key: &[u8]) -> bool {
    match key.split_first() {
        Some((b'k' | b'l', digits)) => !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

fn stamp() -> HeaderStamp {
    HeaderStamp {
        cluster_id: ClusterId([0; 32]),
        member_id: NodeId(0),
        raft_term: 0,
    }
}

fn seen(kvs: &[KeyValue]) -> Vec<SeenKv> {
    kvs.iter().map(SeenKv::from).collect()
}

/// What a reply of the machine (to a command or a query) means for the
/// history: an error the machine answered with means the operation had no
/// effect.
pub(crate) fn outputs_of(reply: &[u8]) -> (Outcome, Outputs) {
    let mut o = Outputs::default();
    match ha_storage::kv::decode_reply(reply, &stamp()) {
        Err(e) => {
            if let Error::Compacted { compact_revision } = e {
                o.compacted = Some(compact_revision);
            }
            o.error = Some(e.to_string());
            return (Outcome::Fail, o);
        }
        Ok(KvReply::Put(p)) => o.revision = Some(p.header.revision),
        Ok(KvReply::Delete(d)) => {
            o.revision = Some(d.header.revision);
            o.deleted = Some(d.deleted);
        }
        Ok(KvReply::Txn(t)) => {
            o.revision = Some(t.header.revision);
            o.succeeded = Some(t.succeeded);
            if let Some(TxnOpResponse::Range(r)) = t.responses.first() {
                o.kvs = Some(seen(&r.kvs));
            }
        }
        Ok(KvReply::Compact(c)) => o.revision = Some(c.header.revision),
        Ok(KvReply::Lease(l)) => o.revision = Some(l.header.revision),
        Ok(KvReply::LeaseRevoke(r)) => o.revision = Some(r.header.revision),
        Ok(KvReply::Range(r)) => {
            o.revision = Some(r.header.revision);
            o.kvs = Some(seen(&r.kvs));
        }
        Ok(_) => {
            o.error = Some("unexpected reply".to_owned());
            return (Outcome::Fail, o);
        }
    }
    (Outcome::Ok, o)
}

/// The member's current revision (from a count-only range).
pub(crate) fn current_revision(query: impl Fn(&[u8]) -> Bytes) -> i64 {
    let mut r = RangeRequest::new(KeyRange::key(KEY_PREFIX));
    r.count_only = true;
    match ha_storage::kv::decode_reply(&query(&KvQuery::Range(r).encode()), &stamp()) {
        Ok(KvReply::Range(r)) => r.header.revision,
        _ => 0,
    }
}

/// One revision as a member's machine applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AppliedRevision {
    pub(crate) member: usize,
    pub(crate) revision: i64,
    /// A hash of the revision's events (kind, key, value, create
    /// revision, version, lease, in order).
    pub(crate) fingerprint: u64,
    /// The values the revision put.
    pub(crate) puts: Vec<u64>,
    /// Its events (with `prev_kv`), in order.
    pub(crate) events: Vec<WatchEvent>,
}

/// What a member's machine reported through its observer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Observed {
    Revision(AppliedRevision),
    Granted {
        member: usize,
        id: LeaseId,
        ttl: Duration,
    },
    Revoked {
        member: usize,
        id: LeaseId,
    },
    /// The machine was (re)loaded: these are all its leases.
    Restored {
        member: usize,
        leases: Vec<(LeaseId, Duration)>,
        revision: i64,
        compact_revision: i64,
    },
    /// An apply step's events, for the member's watch hub.
    Events {
        member: usize,
        events: Vec<WatchEvent>,
        revision: i64,
    },
    Compacted {
        member: usize,
        compact_revision: i64,
    },
    /// A command ended a lease (seen around the machine's `apply`).
    LeaseEnded {
        member: usize,
        id: LeaseId,
        /// A leader's `LeaseExpire` (else a client's `LeaseRevoke`).
        expired: bool,
        /// The first revision it wrote, if it deleted any key.
        wrote: Option<i64>,
        /// The machine's revision after it.
        revision: i64,
    },
}

/// Where the members' observers report (shared by all members).
pub(crate) type RevisionSink = Arc<Mutex<Vec<Observed>>>;

/// The production observer hook, reporting into the sink.
struct SinkObserver {
    member: usize,
    sink: RevisionSink,
}

impl KvObserver for SinkObserver {
    fn events(&mut self, events: &[WatchEvent], revision: i64) {
        // Per revision: the fingerprinted bytes, the values put, the events.
        type PerRevision = (Vec<u8>, Vec<u64>, Vec<WatchEvent>);
        let mut by_rev: BTreeMap<i64, PerRevision> = BTreeMap::new();
        for e in events {
            let (bytes, puts, evs) = by_rev.entry(e.revision()).or_default();
            evs.push(e.clone());
            bytes.push(match e.kind {
                EventKind::Put => b'p',
                EventKind::Delete => b'd',
            });
            bytes.extend_from_slice(&(e.kv.key.len() as u64).to_be_bytes());
            bytes.extend_from_slice(&e.kv.key);
            bytes.extend_from_slice(&(e.kv.value.len() as u64).to_be_bytes());
            bytes.extend_from_slice(&e.kv.value);
            for n in [e.kv.create_revision, e.kv.version, e.kv.lease.0] {
                bytes.extend_from_slice(&n.to_be_bytes());
            }
            // Values are unique in the workload's keys only (code under
            // test puts what it likes elsewhere).
            if e.kind == EventKind::Put
                && is_workload_key(&e.kv.key)
                && let Some(v) = std::str::from_utf8(&e.kv.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
            {
                puts.push(v);
            }
        }
        let mut sink = self.sink.lock();
        for (rev, (bytes, puts, evs)) in by_rev {
            sink.push(Observed::Revision(AppliedRevision {
                member: self.member,
                revision: rev,
                fingerprint: fnv(&bytes),
                puts,
                events: evs,
            }));
        }
        sink.push(Observed::Events {
            member: self.member,
            events: events.to_vec(),
            revision,
        });
    }

    fn compacted(&mut self, compact_revision: i64) {
        self.sink.lock().push(Observed::Compacted {
            member: self.member,
            compact_revision,
        });
    }

    fn lease_granted(&mut self, id: LeaseId, ttl: Duration) {
        self.sink.lock().push(Observed::Granted {
            member: self.member,
            id,
            ttl,
        });
    }

    fn lease_revoked(&mut self, id: LeaseId) {
        self.sink.lock().push(Observed::Revoked {
            member: self.member,
            id,
        });
    }

    fn restored(&mut self, revision: i64, compact: i64, leases: &[(LeaseId, Duration)]) {
        self.sink.lock().push(Observed::Restored {
            member: self.member,
            leases: leases.to_vec(),
            revision,
            compact_revision: compact,
        });
    }
}

/// The state machine of a simulated member: the registers, or the
/// production MVCC machine (with where to report the leases its commands
/// end).
pub(crate) enum SimMachine {
    Registers(KvRegister),
    Mvcc {
        machine: Box<MvccMachine<MemStateStore>>,
        member: usize,
        sink: RevisionSink,
    },
}

impl SimMachine {
    /// Opens the production MVCC machine over the member's state store,
    /// reporting what it applies to `sink`.
    pub(crate) fn mvcc(
        store: &MemStateStore,
        member: usize,
        sink: RevisionSink,
        bugs: crate::bugs::Bugs,
    ) -> Result<Self, StorageError> {
        let mut m = MvccMachine::open(Arc::new(store.clone()))?;
        m.inject_split_lease_deletes(bugs.lease_deletes_split);
        // The leases it holds, as `KvNode` hands them to its manager at
        // start.
        sink.lock().push(Observed::Restored {
            member,
            leases: m.leases(),
            revision: m.revision(),
            compact_revision: m.compact_revision(),
        });
        m.set_observer(Box::new(SinkObserver {
            member,
            sink: sink.clone(),
        }));
        Ok(SimMachine::Mvcc {
            machine: Box::new(m),
            member,
            sink,
        })
    }

    /// Applies a command to the MVCC machine and reports a lease it ended:
    /// the lease that is gone after it, whether the command was the
    /// leader's expiry (the only command that can carry
    /// `LeaseExpire { id, term }` of the entry's own term and succeed),
    /// and the revisions it wrote.
    fn apply_mvcc(
        m: &mut MvccMachine<MemStateStore>,
        member: usize,
        sink: &RevisionSink,
        ctx: &ApplyContext,
        command: &[u8],
        batch: &mut WriteBatch,
    ) -> Bytes {
        let before = m.leases();
        let first = m.revision();
        let reply = m.apply(ctx, command, batch);
        if before.is_empty() {
            return reply;
        }
        let after = m.leases();
        if after.len() < before.len() {
            let revision = m.revision();
            for (id, _) in before {
                if after.iter().any(|(a, _)| *a == id) {
                    continue;
                }
                let expire = KvCommand::LeaseExpire { id, term: ctx.term }.encode(0);
                sink.lock().push(Observed::LeaseEnded {
                    member,
                    id,
                    expired: command == expire.as_slice(),
                    wrote: (revision > first).then_some(first + 1),
                    revision,
                });
            }
        }
        reply
    }

    /// History for a watch hub's catch-up (see `MvccMachine::history`).
    pub(crate) fn history(
        &self,
        from: i64,
        to: i64,
        max_events: usize,
    ) -> Result<(Vec<WatchEvent>, i64), Error> {
        match self {
            SimMachine::Mvcc { machine, .. } => machine.history(from, to, max_events),
            SimMachine::Registers(_) => Ok((Vec::new(), to)),
        }
    }

    /// A digest of the replicated KV state: revisions, leases and every
    /// live key with its metadata.
    fn mvcc_digest(m: &MvccMachine<MemStateStore>) -> Bytes {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&m.revision().to_be_bytes());
        bytes.extend_from_slice(&m.compact_revision().to_be_bytes());
        for (id, ttl) in m.leases() {
            bytes.extend_from_slice(&id.0.to_be_bytes());
            bytes.extend_from_slice(&(ttl.as_millis() as u64).to_be_bytes());
        }
        let all = KvQuery::Range(RangeRequest::new(KeyRange::prefix(""))).encode();
        if let Ok(KvReply::Range(r)) = ha_storage::kv::decode_reply(&m.query(&all), &stamp()) {
            for kv in r.kvs {
                bytes.extend_from_slice(&(kv.key.len() as u64).to_be_bytes());
                bytes.extend_from_slice(&kv.key);
                bytes.extend_from_slice(&(kv.value.len() as u64).to_be_bytes());
                bytes.extend_from_slice(&kv.value);
                for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease.0] {
                    bytes.extend_from_slice(&n.to_be_bytes());
                }
            }
        } else {
            bytes.extend_from_slice(b"unreadable");
        }
        Bytes::copy_from_slice(&fnv(&bytes).to_be_bytes())
    }
}

impl StateMachine for SimMachine {
    fn apply(&mut self, ctx: &ApplyContext, command: &[u8], batch: &mut WriteBatch) -> Bytes {
        match self {
            SimMachine::Registers(r) => r.apply(ctx, command, batch),
            SimMachine::Mvcc {
                machine,
                member,
                sink,
            } => Self::apply_mvcc(machine, *member, sink, ctx, command, batch),
        }
    }

    fn on_committed(&mut self, applied_index: u64) {
        match self {
            SimMachine::Registers(r) => r.on_committed(applied_index),
            SimMachine::Mvcc { machine, .. } => machine.on_committed(applied_index),
        }
    }

    fn restored(&mut self, applied_index: u64) -> Result<(), StorageError> {
        match self {
            SimMachine::Registers(r) => r.restored(applied_index),
            SimMachine::Mvcc { machine, .. } => machine.restored(applied_index),
        }
    }

    fn query(&self, query: &[u8]) -> Bytes {
        match self {
            SimMachine::Registers(r) => r.query(query),
            // `[1]` is no valid encoded query (field number 0).
            SimMachine::Mvcc { machine, .. } if query == kv::digest_query() => {
                Self::mvcc_digest(machine)
            }
            SimMachine::Mvcc { machine, .. } => machine.query(query),
        }
    }
}

/// Draws the operations of the KV workload's clients (see
/// [`super::client::plan_workload`] for the shape).
pub(crate) fn plan_ops(
    rng: &mut SimRng,
    ops: usize,
    keys: usize,
    pinned: bool,
    next_value: &mut u64,
) -> Vec<KvRequest> {
    let consistency = |rng: &mut SimRng| match rng.below(20) {
        0..=7 => Consistency::Linearizable,
        8..=14 => Consistency::Lease,
        _ => Consistency::Serializable,
    };
    (0..ops)
        .map(|_| {
            let key = rng.below(keys.max(1)) as u8;
            let roll = if pinned {
                57 + rng.below(43)
            } else {
                rng.below(100)
            };
            match roll {
                0..=29 => {
                    *next_value += 1;
                    KvRequest::Put {
                        key,
                        value: *next_value - 1,
                    }
                }
                30..=35 => KvRequest::Delete { key },
                36..=45 => {
                    *next_value += 1;
                    KvRequest::Cas {
                        key,
                        value: *next_value - 1,
                        expect: 0,
                    }
                }
                46 => KvRequest::Compact {
                    back: rng.between(2, 40) as i64,
                },
                47..=56 => KvRequest::Range {
                    consistency: consistency(rng),
                },
                _ => KvRequest::Get {
                    key,
                    consistency: consistency(rng),
                    back: if rng.chance(0.2) {
                        rng.between(1, 30) as i64
                    } else {
                        0
                    },
                },
            }
        })
        .collect()
}

/// The think time of a planned operation.
pub(crate) fn think(rng: &mut SimRng, mean: Nanos) -> Nanos {
    rng.between(0, 2 * mean)
}

/// What the members' machines applied, as their observers reported it:
/// each revision's change (the same on every member), and the revision
/// each value was put at.
#[derive(Default)]
pub(crate) struct KvTruth {
    /// Revision → fingerprint of its events, and the member that applied
    /// it first.
    revisions: BTreeMap<i64, (u64, usize)>,
    /// Value → the revision that put it.
    put_at: BTreeMap<u64, i64>,
    /// Revision → its events, as first applied.
    events: BTreeMap<i64, Vec<WatchEvent>>,
}

/// A revision names one change, the same on every member.
pub(crate) const REVISIONS_AGREE: &str = "a revision is the same change on every member";
const EXACTLY_ONCE: &str = "exactly-once";

impl KvTruth {
    /// Takes one applied revision; a violation if it contradicts what was
    /// applied before.
    pub(crate) fn applied(&mut self, r: &AppliedRevision) -> Result<(), Violation> {
        match self.revisions.get(&r.revision) {
            Some(&(f, first)) if f != r.fingerprint => {
                return Err(Violation::new(
                    REVISIONS_AGREE,
                    format!(
                        "member {} applied another change at revision {} than member {} did",
                        r.member + 1,
                        r.revision,
                        first + 1
                    ),
                ));
            }
            Some(_) => {}
            None => {
                self.revisions.insert(r.revision, (r.fingerprint, r.member));
                self.events.insert(r.revision, r.events.clone());
            }
        }
        for &v in &r.puts {
            match self.put_at.get(&v) {
                Some(&at) if at != r.revision => {
                    return Err(Violation::new(
                        EXACTLY_ONCE,
                        format!(
                            "value {v} was put at revision {at} and again at revision {} \
                             (member {})",
                            r.revision,
                            r.member + 1
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    self.put_at.insert(v, r.revision);
                }
            }
        }
        Ok(())
    }

    /// The events of every revision in `from..=to` that some member applied.
    pub(crate) fn events_between(
        &self,
        from: i64,
        to: i64,
    ) -> impl Iterator<Item = (&i64, &Vec<WatchEvent>)> {
        self.events
            .range(from..=to.max(from))
            .filter(move |(r, _)| **r <= to)
    }

    /// The highest revision some member applied (0: none).
    pub(crate) fn last_revision(&self) -> i64 {
        self.revisions.keys().next_back().copied().unwrap_or(0)
    }

    /// The revision at which some member applied the put of `value`.
    pub(crate) fn put_revision(&self, value: u64) -> Option<i64> {
        self.put_at.get(&value).copied()
    }
}

/// The TTLs of a seed's lease grants: a range drawn per seed (from the
/// lease stream), from about the shortest TTL a client may ask for (1.5
/// election timeouts) to a few seconds.
pub(crate) fn plan_ttl_range(rng: &mut SimRng) -> (u64, u64) {
    let lo = rng.pick(&[450u64, 600, 1_000]);
    (lo, lo + rng.pick(&[0u64, 400, 1_200]))
}

/// The script of a lease client over `span`: rounds of grant (TTL drawn
/// from `ttls`, in ms), one or two puts attached to the lease, 2–8
/// keep-alives a quarter TTL apart (sometimes a read of the leased keys in
/// between), then a revoke (half the rounds) or silence past the TTL, so
/// that the leader expires it; after either, sometimes a read of the
/// leased keys, which must be gone.
pub(crate) fn plan_lease_client(
    rng: &mut SimRng,
    client: usize,
    members: usize,
    span: Nanos,
    next_value: &mut u64,
    ttls: (u64, u64),
) -> Vec<super::client::PlannedOp> {
    use super::client::{PlannedOp, Request};
    use super::executor::MILLIS;
    let home = rng.below(members);
    let pick_member = |rng: &mut SimRng| {
        if rng.chance(0.6) {
            home
        } else {
            rng.below(members)
        }
    };
    let consistency = |rng: &mut SimRng| match rng.below(3) {
        0 => Consistency::Linearizable,
        1 => Consistency::Lease,
        _ => Consistency::Serializable,
    };
    let read = |rng: &mut SimRng| {
        let c = consistency(rng);
        if rng.chance(0.5) {
            KvRequest::LeaseRange { consistency: c }
        } else {
            KvRequest::LeaseGet {
                key: rng.below(3) as u8,
                consistency: c,
            }
        }
    };
    let mut ops = Vec::new();
    let mut t = 0;
    let mut round = 0i64;
    while t < span {
        round += 1;
        let lease = (client as i64 + 1) * 10_000 + round;
        let ttl_ms = rng.between(ttls.0, ttls.1);
        let mut push = |rng: &mut SimRng, think: Nanos, r: KvRequest, ops: &mut Vec<PlannedOp>| {
            t += think;
            ops.push(PlannedOp {
                think,
                member: pick_member(rng),
                request: Request::Kv(r),
            });
        };
        let think = rng.between(50 * MILLIS, 300 * MILLIS);
        push(
            rng,
            think,
            KvRequest::LeaseGrant { lease, ttl_ms },
            &mut ops,
        );
        for _ in 0..rng.between(1, 2) {
            *next_value += 1;
            let r = KvRequest::LeasePut {
                key: rng.below(3) as u8,
                value: *next_value - 1,
                lease,
            };
            let think = rng.between(5 * MILLIS, 20 * MILLIS);
            push(rng, think, r, &mut ops);
        }
        let quarter = ttl_ms * MILLIS / 4;
        let keep_alive = KvRequest::KeepAlive {
            lease,
            timeout_ms: (ttl_ms / 3).max(50),
        };
        for _ in 0..rng.between(2, 8) {
            if rng.chance(0.3) {
                let r = read(rng);
                let think = rng.between(0, quarter / 4);
                push(rng, think, r, &mut ops);
            }
            let think = rng.between(quarter / 2, quarter);
            push(rng, think, keep_alive, &mut ops);
        }
        if rng.chance(0.5) {
            let think = rng.between(5 * MILLIS, 50 * MILLIS);
            push(rng, think, KvRequest::LeaseRevoke { lease }, &mut ops);
        } else {
            // Silence: the next round starts after the lease ran out.
            let think = ttl_ms * MILLIS;
            push(rng, think, keep_alive, &mut ops);
        }
        if rng.chance(0.5) {
            let r = read(rng);
            let think = rng.between(MILLIS, 100 * MILLIS);
            push(rng, think, r, &mut ops);
        }
    }
    ops
}
