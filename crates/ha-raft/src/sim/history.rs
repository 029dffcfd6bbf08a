//! The client history of a run: one record per operation, written as JSON
//! lines (the format is documented in `docs/SIM.md`).

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// What an operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Set a register to a value unique in the history.
    Write,
    /// Read a register.
    Read,
    /// KV workload: put a value unique in the history.
    Put,
    /// KV workload: delete a key.
    Delete,
    /// KV workload: compare-and-swap — put `value` if the key's
    /// mod_revision is `expect_mod` (0: the key is absent), else read it.
    Txn,
    /// KV workload: read one key (now, or at a past `revision`).
    Get,
    /// KV workload: read every key.
    Range,
    /// KV workload: compact history up to `revision`.
    Compact,
    /// KV workload: grant lease `lease` with `ttl_ms`.
    LeaseGrant,
    /// KV workload: renew lease `lease` (answered by the leader, not a raft
    /// entry); `outputs.ttl_ms` is the TTL it was renewed for.
    KeepAlive,
    /// KV workload: revoke lease `lease`, deleting its keys.
    LeaseRevoke,
    /// A call of code under test through a `SimKv` that changes nothing
    /// (a read, a lease renewal, a watch): not checked by the history
    /// checks; its own test checks what the code promises.
    Opaque,
    /// A proposal of code under test through a `SimKv` (a recipe's put,
    /// delete, txn, lease grant or revocation): not checked either, but it
    /// may explain up to two revisions no workload operation claims (its
    /// own, and the expiry of a lease it granted).
    OpaqueWrite,
    /// KV workload: a lease ended as the group applied it (not a client
    /// operation): `inputs.lease` expired or was revoked
    /// (`outputs.ended`), deleting `outputs.keys` at `outputs.revision`
    /// (with no keys, `outputs.revision` is the store's revision then);
    /// `invoke_ns` = `complete_ns` = when a member first applied it.
    LeaseEnd,
    /// KV workload: one watch session, from `inputs.revision` on the range
    /// `inputs.key` (a key, `prefix*`, or `*`) with `inputs.filter`; what it
    /// read is `outputs.watch`. Checked by the watch check, not the KV
    /// model.
    Watch,
}

impl OpKind {
    /// An operation that may change the KV (its outcome may be unknown).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            OpKind::Write
                | OpKind::Put
                | OpKind::Delete
                | OpKind::Txn
                | OpKind::Compact
                | OpKind::LeaseGrant
                | OpKind::LeaseRevoke
                | OpKind::OpaqueWrite
        )
    }

    /// A lease operation (checked by the lease checks; a lease end also
    /// by the KV model, as the deletion of its keys).
    pub fn is_lease(self) -> bool {
        matches!(
            self,
            OpKind::LeaseGrant | OpKind::KeepAlive | OpKind::LeaseRevoke | OpKind::LeaseEnd
        )
    }

    /// An operation of the KV workload.
    pub fn is_kv(self) -> bool {
        !matches!(
            self,
            OpKind::Write | OpKind::Read | OpKind::Opaque | OpKind::OpaqueWrite | OpKind::Watch
        )
    }
}

/// How a read sees the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// ReadIndex: reflects every write completed before it started.
    Linearizable,
    /// The member's applied state: may be stale, never goes backwards on
    /// one member process.
    Serializable,
    /// A lease read: linearizable too, answered by a leader from its own
    /// state while it holds its read lease.
    Lease,
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Completed; `outputs` hold the result.
    Ok,
    /// Certainly had no effect.
    Fail,
    /// A write that may or may not have taken effect.
    Unknown,
}

/// The inputs of an operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    /// The register.
    pub key: String,
    /// The value written (writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// The consistency asked for (reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// KV workload: the past revision a `get` reads at, or the revision a
    /// `compact` compacts to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// KV workload: the mod_revision a `txn` compares with (0: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_mod: Option<i64>,
    /// KV workload: the lease of a lease operation, or of a `put`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
    /// KV workload: the TTL a `lease_grant` asks for, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// KV workload: the event kind a `watch` leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<WatchFilter>,
}

/// The event kind a watch leaves out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchFilter {
    /// Puts are left out.
    NoPut,
    /// Deletes are left out.
    NoDelete,
}

/// What a watch session read, response by response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchLog {
    /// The responses, in the order read (across resumes).
    pub reads: Vec<WatchRead>,
    /// Revisions `[from, to]` the session skipped because they had been
    /// compacted away (nothing is owed there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<[i64; 2]>,
}

/// One watch response as read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRead {
    /// Which watch (open) of the session it came on: 1, 2, ...
    pub stream: u32,
    /// The revision up to which the watch had been sent everything.
    pub revision: i64,
    /// Its events; none for a progress notification.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventSeen>,
}

/// A watch event as read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSeen {
    /// A put (else a delete).
    pub put: bool,
    /// The key.
    pub key: String,
    /// A put's value (a number unique in the history), if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// The event's revision.
    pub mod_revision: i64,
}

/// A key as a KV read returned it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenKv {
    /// The key.
    pub key: String,
    /// The value (a number unique in the history); absent if the stored
    /// bytes are not one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// Revision of the write that created the key.
    pub create_revision: i64,
    /// Revision of the key's last write.
    pub mod_revision: i64,
    /// Writes since the key was created.
    pub version: i64,
    /// The lease the key is attached to (0: none); absent in older files
    /// (then not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
}

impl From<&ha_core::KeyValue> for SeenKv {
    /// What a history records of a key a read returned.
    fn from(kv: &ha_core::KeyValue) -> Self {
        SeenKv {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: std::str::from_utf8(&kv.value)
                .ok()
                .and_then(|s| s.parse().ok()),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: Some(kv.lease.0),
        }
    }
}

/// The outputs of an operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs {
    /// Reads: the value seen (absent for an empty register).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// Writes: the log index the write applied at. Reads: the log index of
    /// the write whose value was seen (0 for an empty register).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// Reads: the answering member's applied index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<u64>,
    /// Failed and unknown operations: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// KV workload: the revision in the reply's header — a write's own
    /// revision when it changed something, else the store's revision when
    /// it was answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// KV workload: the keys a `get`, `range` or failed `txn` returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvs: Option<Vec<SeenKv>>,
    /// KV workload: whether a `txn`'s compare held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<bool>,
    /// KV workload: keys a `delete` removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
    /// KV workload: a read or compaction refused as compacted: the
    /// compact revision the member reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted: Option<i64>,
    /// KV workload: the TTL a `keep_alive` renewed the lease for, in
    /// milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// KV workload: what a `watch` read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchLog>,
    /// KV workload, `lease_end`: how the lease ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<LeaseEnding>,
    /// KV workload, `lease_end`: the keys it deleted (all at
    /// `revision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
}

/// How a lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseEnding {
    /// The leader expired it (`LeaseExpire` applied).
    Expired,
    /// A client revoked it (`LeaseRevoke` applied).
    Revoked,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryOp {
    /// Unique in the history, in invocation order.
    pub id: u64,
    /// The client that issued it.
    pub client: u64,
    /// The member it went through.
    pub member: u64,
    /// That member's incarnation (process lifetime) when it was invoked;
    /// serializable reads are monotonic within one.
    #[serde(default)]
    pub incarnation: u64,
    /// What it did.
    pub op: OpKind,
    /// Its inputs.
    pub inputs: Inputs,
    /// Virtual (or real) time of invocation, in nanoseconds.
    pub invoke_ns: u64,
    /// Time of completion, in nanoseconds; for `unknown` the time the
    /// client gave up (the checker treats it as never).
    pub complete_ns: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Its outputs.
    pub outputs: Outputs,
}

impl HistoryOp {
    /// One JSON line (no newline).
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Writes a history as JSON lines.
///
/// # Errors
/// Any I/O error of `out`.
pub fn write_history(ops: &[HistoryOp], out: &mut dyn Write) -> std::io::Result<()> {
    for op in ops {
        writeln!(out, "{}", op.to_json())?;
    }
    Ok(())
}

/// Reads a history written as JSON lines (blank lines are skipped).
///
/// # Errors
/// An I/O error, or a line that is not a valid record (with its number).
pub fn read_history(input: &mut dyn BufRead) -> std::io::Result<Vec<HistoryOp>> {
    let mut ops = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op: HistoryOp = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line {}: {e}", n + 1),
            )
        })?;
        ops.push(op);
    }
    Ok(ops)
}
