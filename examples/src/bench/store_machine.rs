//! [`StoreMachine`]: a state machine that keeps its data only in the state
//! store — what the storage benchmarks need, so that every write reaches
//! RocksDB through the engine's batch and a restart reads nothing back
//! into memory.

use bytes::Bytes;
use ha_core::{ApplyContext, StateMachine, StateStore, WriteBatch};

/// Where the machine's keys live in the state store.
const PREFIX: &[u8] = b"b/";

/// Puts key/value pairs into the engine's batch; a query is a key and
/// answers its value from the state store (empty when absent).
///
/// A command is one or more pairs, each `key length (u16, big endian) ++
/// key ++ value length (u32, big endian) ++ value`; see
/// [`StoreMachine::command`].
pub struct StoreMachine<S> {
    store: S,
}

impl<S: StateStore + Clone> StoreMachine<S> {
    /// A machine over `store`, the same store the engine writes.
    pub fn new(store: S) -> Self {
        StoreMachine { store }
    }

    /// Encodes pairs into one command.
    ///
    /// # Panics
    /// When a key is longer than 65,535 bytes or a value longer than
    /// 4 GiB (a caller bug: the benchmarks choose their sizes).
    pub fn command<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Bytes {
        let mut out = Vec::new();
        for (key, value) in pairs {
            let key_len = u16::try_from(key.len()).expect("key of at most 65,535 bytes");
            let value_len = u32::try_from(value.len()).expect("value of at most 4 GiB");
            out.extend_from_slice(&key_len.to_be_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&value_len.to_be_bytes());
            out.extend_from_slice(value);
        }
        Bytes::from(out)
    }

    /// Where the machine keeps `key` in the state store.
    pub fn stored_key(key: &[u8]) -> Vec<u8> {
        let mut stored = PREFIX.to_vec();
        stored.extend_from_slice(key);
        stored
    }

    /// How many keys the store holds.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn count_keys(store: &S) -> Result<u64, ha_core::StorageError> {
        let mut n = 0;
        store.scan(PREFIX, Some(b"b0"), &mut |_, _| {
            n += 1;
            true
        })?;
        Ok(n)
    }
}

/// Splits a command into its pairs; `None` when it is malformed.
fn decode(mut command: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut pairs = Vec::new();
    while !command.is_empty() {
        let (len, rest) = command.split_at_checked(2)?;
        let key_len = usize::from(u16::from_be_bytes(len.try_into().ok()?));
        let (key, rest) = rest.split_at_checked(key_len)?;
        let (len, rest) = rest.split_at_checked(4)?;
        let value_len = usize::try_from(u32::from_be_bytes(len.try_into().ok()?)).ok()?;
        let (value, rest) = rest.split_at_checked(value_len)?;
        pairs.push((key, value));
        command = rest;
    }
    Some(pairs)
}

impl<S: StateStore + Clone> StateMachine for StoreMachine<S> {
    fn apply(&mut self, _ctx: &ApplyContext, command: &[u8], batch: &mut WriteBatch) -> Bytes {
        let Some(pairs) = decode(command) else {
            return Bytes::from_static(b"ERR malformed command");
        };
        for (key, value) in pairs {
            batch.put(Self::stored_key(key), value.to_vec());
        }
        Bytes::from_static(b"OK")
    }

    fn query(&self, key: &[u8]) -> Bytes {
        match self.store.get(&Self::stored_key(key)) {
            Ok(Some(value)) => Bytes::from(value),
            Ok(None) => Bytes::new(),
            // The query answer has no error channel; a failing store shows
            // as a missing value, which the benchmarks report as a mismatch.
            Err(e) => {
                tracing::error!(error = %e, "state store read failed");
                Bytes::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_storage::MemStateStore;

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        let c = StoreMachine::<MemStateStore>::command([
            (&b"a"[..], &b"1"[..]),
            (&b"bb"[..], &b""[..]),
        ]);
        assert_eq!(
            decode(&c),
            Some(vec![(&b"a"[..], &b"1"[..]), (&b"bb"[..], &b""[..])])
        );
        assert_eq!(decode(&c[..c.len() - 1]), None, "a truncated command");
        assert_eq!(decode(&[0, 5, b'x']), None, "a key longer than the command");
    }
}
