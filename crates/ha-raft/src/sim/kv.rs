//! The simulator's state machine: a handful of registers.
//!
//! A command writes one register with a value that is unique in the run;
//! the register remembers the log index of the write that produced its
//! value, so every read names the write it observed and the checker knows
//! the write order without searching (the polynomial check).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use ha_core::{ApplyContext, StateMachine, StateStore, StorageError, WriteBatch};
use ha_storage::MemStateStore;
use parking_lot::Mutex;

/// Prefix of the registers in the state store.
const PREFIX: &[u8] = b"kv/";

/// A write as one member's state machine applied it, for the checkers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AppliedWrite {
    pub(crate) member: usize,
    pub(crate) index: u64,
    pub(crate) key: u8,
    pub(crate) value: u64,
}

/// Where state machines report what they apply (shared by all members).
pub(crate) type ApplySink = Arc<Mutex<Vec<AppliedWrite>>>;

/// Encodes "set register `key` to `value`".
pub(crate) fn write_command(key: u8, value: u64) -> Vec<u8> {
    let mut c = Vec::with_capacity(9);
    c.push(key);
    c.extend_from_slice(&value.to_be_bytes());
    c
}

/// Encodes "what is in register `key`".
pub(crate) fn read_query(key: u8) -> Vec<u8> {
    vec![0, key]
}

/// Encodes "a digest of every register".
pub(crate) fn digest_query() -> Vec<u8> {
    vec![1]
}

fn word(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .and_then(|w| w.try_into().ok())
        .map(u64::from_be_bytes)
}

/// Decodes a read answer: `None` for an empty register, else the value and
/// the index of the write that produced it.
pub(crate) fn decode_read(answer: &[u8]) -> Option<(u64, u64)> {
    Some((word(answer, 0)?, word(answer, 8)?))
}

/// Decodes a write response: the index at which the write applied.
pub(crate) fn decode_write(response: &[u8]) -> Option<u64> {
    word(response, 0)
}

/// 64-bit FNV-1a: a stable hash (never `DefaultHasher`, whose output may
/// change between Rust releases).
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The registers of one member.
pub(crate) struct KvRegister {
    member: usize,
    map: BTreeMap<u8, (u64, u64)>,
    sink: ApplySink,
    /// The member's state store, to reload from after a snapshot install.
    store: MemStateStore,
}

impl KvRegister {
    /// Rebuilds the registers from a member's state store (after a restart
    /// the store holds what was durable).
    pub(crate) fn open(
        store: &MemStateStore,
        member: usize,
        sink: ApplySink,
    ) -> Result<Self, StorageError> {
        Ok(KvRegister {
            member,
            map: Self::load(store)?,
            sink,
            store: store.clone(),
        })
    }

    fn load<S: StateStore + ?Sized>(store: &S) -> Result<BTreeMap<u8, (u64, u64)>, StorageError> {
        let mut map = BTreeMap::new();
        let mut end = PREFIX.to_vec();
        end.push(0xff);
        let mut bad = false;
        store.scan(PREFIX, Some(&end), &mut |k, v| {
            match (k.get(PREFIX.len()), word(v, 0), word(v, 8)) {
                (Some(&key), Some(value), Some(index)) => {
                    map.insert(key, (value, index));
                }
                _ => bad = true,
            }
            !bad
        })?;
        if bad {
            return Err(StorageError::corrupt("simulated registers", "bad row"));
        }
        Ok(map)
    }

    fn digest(&self) -> u64 {
        let mut bytes = Vec::with_capacity(self.map.len() * 17);
        for (k, (v, i)) in &self.map {
            bytes.push(*k);
            bytes.extend_from_slice(&v.to_be_bytes());
            bytes.extend_from_slice(&i.to_be_bytes());
        }
        fnv(&bytes)
    }
}

impl StateMachine for KvRegister {
    fn apply(&mut self, ctx: &ApplyContext, command: &[u8], batch: &mut WriteBatch) -> Bytes {
        let (Some(&key), Some(value)) = (command.first(), word(command, 1)) else {
            return Bytes::new();
        };
        self.map.insert(key, (value, ctx.index));
        let mut row = PREFIX.to_vec();
        row.push(key);
        let mut stored = value.to_be_bytes().to_vec();
        stored.extend_from_slice(&ctx.index.to_be_bytes());
        batch.put(row, stored);
        self.sink.lock().push(AppliedWrite {
            member: self.member,
            index: ctx.index,
            key,
            value,
        });
        Bytes::copy_from_slice(&ctx.index.to_be_bytes())
    }

    fn restored(&mut self, _applied_index: u64) -> Result<(), StorageError> {
        self.map = Self::load(&self.store)?;
        Ok(())
    }

    fn query(&self, query: &[u8]) -> Bytes {
        match query {
            [0, key] => match self.map.get(key) {
                None => Bytes::new(),
                Some((v, i)) => {
                    let mut b = v.to_be_bytes().to_vec();
                    b.extend_from_slice(&i.to_be_bytes());
                    Bytes::from(b)
                }
            },
            [1] => Bytes::copy_from_slice(&self.digest().to_be_bytes()),
            _ => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::{NodeId, RequestId};

    #[test]
    fn registers_survive_a_reopen_and_answer_with_the_write_index() {
        let store = MemStateStore::new();
        let sink = ApplySink::default();
        let mut kv = KvRegister::open(&store, 0, sink.clone()).unwrap();
        let ctx = ApplyContext {
            index: 7,
            term: 1,
            request: RequestId {
                member: NodeId(1),
                incarnation: 1,
                seq: 1,
            },
        };
        let mut batch = WriteBatch::new();
        let r = kv.apply(&ctx, &write_command(2, 42), &mut batch);
        assert_eq!(decode_write(&r), Some(7));
        store.write(batch, true).unwrap();
        assert_eq!(decode_read(&kv.query(&read_query(2))), Some((42, 7)));
        assert_eq!(decode_read(&kv.query(&read_query(3))), None);
        let again = KvRegister::open(&store, 0, sink.clone()).unwrap();
        assert_eq!(again.query(&digest_query()), kv.query(&digest_query()));
        assert_eq!(sink.lock().len(), 1);
    }
}
