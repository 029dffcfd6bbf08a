//! [`state_digest`]: a hash of a member's whole replicated state at its
//! applied index, so that tests and operators can check that members which
//! applied the same log hold the same state.
//!
//! The state store holds only replicated state — the state machine's keys
//! and the engine's metadata (applied index and term, membership, dedup
//! table), which is exactly what a snapshot carries — so two members at the
//! same applied index must have equal digests.

use ha_core::{StateStore, StorageError};
use sha2::{Digest as _, Sha256};

/// A hash of a member's state store taken from one consistent view: equal
/// `applied_index` must mean equal `sha256`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateDigest {
    /// The index of the last entry applied in the view.
    pub applied_index: u64,
    /// That entry's term.
    pub applied_term: u64,
    /// Number of keys hashed.
    pub keys: u64,
    /// SHA-256 over every key and value in ascending key order, each
    /// length-prefixed (so no two different stores hash the same bytes).
    pub sha256: [u8; 32],
}

impl StateDigest {
    /// The hash as lowercase hex.
    pub fn hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Hashes the whole of `state` from one consistent view (writes landing
/// meanwhile are not seen). `None` before anything was applied (a member
/// that has not bootstrapped or joined yet).
///
/// Reads every key: O(state size), meant for tests and checks, not for a
/// hot path. Blocking: call it off async worker threads.
///
/// # Errors
/// When the store cannot be read or its engine metadata is damaged.
pub fn state_digest<S: StateStore + ?Sized>(
    state: &S,
) -> Result<Option<StateDigest>, StorageError> {
    let mut digest = None;
    state.read_consistent(&mut |view| {
        let Some((applied_index, applied_term, _)) = crate::apply::snapshot_point(view)? else {
            return Ok(());
        };
        let mut hasher = Sha256::new();
        let mut keys = 0u64;
        view.scan(&[], None, &mut |k, v| {
            hasher.update((k.len() as u64).to_be_bytes());
            hasher.update(k);
            hasher.update((v.len() as u64).to_be_bytes());
            hasher.update(v);
            keys += 1;
            true
        })?;
        digest = Some(StateDigest {
            applied_index,
            applied_term,
            keys,
            sha256: hasher.finalize().into(),
        });
        Ok(())
    })?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::WriteBatch;
    use ha_storage::MemStateStore;

    fn store(pairs: &[(&[u8], &[u8])]) -> MemStateStore {
        let s = MemStateStore::new();
        let mut b = WriteBatch::new();
        b.put(b"\x00ha/applied".to_vec(), 7u64.to_be_bytes().to_vec());
        b.put(b"\x00ha/applied_term".to_vec(), 2u64.to_be_bytes().to_vec());
        b.put(b"\x00ha/conf_state".to_vec(), Vec::new());
        for (k, v) in pairs {
            b.put(k.to_vec(), v.to_vec());
        }
        s.write(b, false).expect("write");
        s
    }

    #[test]
    fn equal_stores_hash_equal_and_any_difference_shows() {
        let a = state_digest(&store(&[(b"k", b"v"), (b"l", b"w")]))
            .expect("read")
            .expect("applied");
        let b = state_digest(&store(&[(b"k", b"v"), (b"l", b"w")]))
            .expect("read")
            .expect("applied");
        assert_eq!(a, b);
        assert_eq!((a.applied_index, a.applied_term, a.keys), (7, 2, 5));
        for other in [
            store(&[(b"k", b"v"), (b"l", b"x")]),
            store(&[(b"k", b"v")]),
            // Same concatenated bytes, split differently.
            store(&[(b"kv", b"lw")]),
        ] {
            let d = state_digest(&other).expect("read").expect("applied");
            assert_ne!(d.sha256, a.sha256, "a different store hashes differently");
        }
        assert_eq!(a.hex().len(), 64);
    }

    #[test]
    fn nothing_applied_has_no_digest() {
        assert_eq!(state_digest(&MemStateStore::new()).expect("read"), None);
    }
}
