//! The bytes ha stores in RocksDB: keys, and values sealed with a checksum.
//!
//! RocksDB checksums its own blocks, which catches a damaged file. The
//! checksum here also catches a value that RocksDB returns intact but that
//! is not what ha wrote under that key (a bug, a tool writing into the
//! database, a record moved between keys): it covers the key as well as
//! the payload.

use ha_core::eraftpb::Entry;
use ha_core::{ClusterId, MemberIdentity, NodeId, StorageError};
use prost::Message;

/// The format this build writes and the newest it reads, for both
/// databases. Bump it, with a migration, whenever the layout changes.
pub(crate) const FORMAT_VERSION: u32 = 1;

const CHECKSUM_LEN: usize = 4;

/// Appends the checksum of `key` and `payload` to `payload`.
pub(crate) fn seal(key: &[u8], mut payload: Vec<u8>) -> Vec<u8> {
    let sum = checksum(key, &payload);
    payload.extend_from_slice(&sum.to_le_bytes());
    payload
}

/// The payload of a value written by [`seal`] under `key`.
///
/// # Errors
///
/// [`StorageError::Corrupt`] naming `what` when the value is too short or
/// its checksum does not match.
pub(crate) fn unseal<'v>(
    key: &[u8],
    value: &'v [u8],
    what: &dyn Fn() -> String,
) -> Result<&'v [u8], StorageError> {
    let Some(split) = value.len().checked_sub(CHECKSUM_LEN) else {
        return Err(StorageError::corrupt(
            what(),
            format!(
                "{} bytes is too short for a checksummed record",
                value.len()
            ),
        ));
    };
    let (payload, stored) = value.split_at(split);
    let mut sum = [0; CHECKSUM_LEN];
    sum.copy_from_slice(stored);
    let (stored, computed) = (u32::from_le_bytes(sum), checksum(key, payload));
    if stored != computed {
        return Err(StorageError::corrupt(
            what(),
            format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    Ok(payload)
}

fn checksum(key: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(payload);
    hasher.finalize()
}

/// A sealed format-version record.
pub(crate) fn encode_format(key: &[u8], version: u32) -> Vec<u8> {
    seal(key, version.to_le_bytes().to_vec())
}

/// Checks a format-version record: this build reads versions 1 through
/// [`FORMAT_VERSION`].
///
/// # Errors
///
/// [`StorageError::UnknownFormat`] for a newer version,
/// [`StorageError::Corrupt`] for a damaged record or version 0.
pub(crate) fn check_format(
    key: &[u8],
    value: &[u8],
    what: &dyn Fn() -> String,
) -> Result<u32, StorageError> {
    let payload = unseal(key, value, what)?;
    let bytes: [u8; 4] = payload.try_into().map_err(|_| {
        StorageError::corrupt(
            what(),
            format!("a format version is 4 bytes, found {}", payload.len()),
        )
    })?;
    match u32::from_le_bytes(bytes) {
        0 => Err(StorageError::corrupt(
            what(),
            "format version 0 was never written",
        )),
        found if found > FORMAT_VERSION => Err(StorageError::UnknownFormat {
            found,
            supported: FORMAT_VERSION,
        }),
        found => Ok(found),
    }
}

/// Decodes a prost message from a sealed value.
pub(crate) fn decode_message<M: Message + Default>(
    key: &[u8],
    value: &[u8],
    what: &dyn Fn() -> String,
) -> Result<M, StorageError> {
    let payload = unseal(key, value, what)?;
    M::decode(payload).map_err(|e| StorageError::corrupt(what(), format!("undecodable: {e}")))
}

/// Decodes a log entry and checks that it is the one its key names.
pub(crate) fn decode_entry(
    key: &[u8],
    index: u64,
    value: &[u8],
    what: &dyn Fn() -> String,
) -> Result<Entry, StorageError> {
    let entry: Entry = decode_message(key, value, what)?;
    if entry.index != index {
        return Err(StorageError::corrupt(
            what(),
            format!("holds entry {} instead", entry.index),
        ));
    }
    Ok(entry)
}

const IDENTITY_LEN: usize = 32 + 8 + 8;

/// A sealed [`MemberIdentity`]: cluster id, node id, incarnation.
pub(crate) fn encode_identity(key: &[u8], identity: &MemberIdentity) -> Vec<u8> {
    let mut payload = Vec::with_capacity(IDENTITY_LEN + CHECKSUM_LEN);
    payload.extend_from_slice(&identity.cluster_id.0);
    payload.extend_from_slice(&identity.node_id.0.to_be_bytes());
    payload.extend_from_slice(&identity.incarnation.to_be_bytes());
    seal(key, payload)
}

/// Decodes a record written by [`encode_identity`].
pub(crate) fn decode_identity(
    key: &[u8],
    value: &[u8],
    what: &dyn Fn() -> String,
) -> Result<MemberIdentity, StorageError> {
    let payload = unseal(key, value, what)?;
    if payload.len() != IDENTITY_LEN {
        return Err(StorageError::corrupt(
            what(),
            format!(
                "an identity is {IDENTITY_LEN} bytes, found {}",
                payload.len()
            ),
        ));
    }
    let (cluster, rest) = payload.split_at(32);
    let (node, incarnation) = rest.split_at(8);
    let mut cluster_id = [0; 32];
    cluster_id.copy_from_slice(cluster);
    Ok(MemberIdentity {
        cluster_id: ClusterId(cluster_id),
        node_id: NodeId(be_u64(node)),
        incarnation: be_u64(incarnation),
    })
}

/// A sealed pair of numbers (the compaction point: index and term).
pub(crate) fn encode_pair(key: &[u8], (a, b): (u64, u64)) -> Vec<u8> {
    let mut payload = Vec::with_capacity(16 + CHECKSUM_LEN);
    payload.extend_from_slice(&a.to_be_bytes());
    payload.extend_from_slice(&b.to_be_bytes());
    seal(key, payload)
}

/// Decodes a record written by [`encode_pair`].
pub(crate) fn decode_pair(
    key: &[u8],
    value: &[u8],
    what: &dyn Fn() -> String,
) -> Result<(u64, u64), StorageError> {
    let payload = unseal(key, value, what)?;
    if payload.len() != 16 {
        return Err(StorageError::corrupt(
            what(),
            format!("expected 16 bytes, found {}", payload.len()),
        ));
    }
    let (a, b) = payload.split_at(8);
    Ok((be_u64(a), be_u64(b)))
}

/// An 8-byte big-endian number; the callers have checked the length.
fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0; 8];
    buf.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn what() -> String {
        "test record".to_string()
    }

    #[test]
    fn sealed_values_round_trip_and_detect_damage() {
        let sealed = seal(b"k", b"payload".to_vec());
        assert_eq!(unseal(b"k", &sealed, &what).unwrap(), b"payload");
        let mut flipped = sealed.clone();
        flipped[2] ^= 1;
        assert!(matches!(
            unseal(b"k", &flipped, &what),
            Err(StorageError::Corrupt { .. })
        ));
        // The same bytes under another key are not valid there.
        assert!(matches!(
            unseal(b"j", &sealed, &what),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(matches!(
            unseal(b"k", b"abc", &what),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn format_versions() {
        assert_eq!(
            check_format(b"f", &encode_format(b"f", FORMAT_VERSION), &what).unwrap(),
            FORMAT_VERSION
        );
        assert!(matches!(
            check_format(b"f", &encode_format(b"f", FORMAT_VERSION + 1), &what),
            Err(StorageError::UnknownFormat { found, supported: FORMAT_VERSION }) if found == FORMAT_VERSION + 1
        ));
        assert!(matches!(
            check_format(b"f", &encode_format(b"f", 0), &what),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(matches!(
            check_format(b"f", &seal(b"f", vec![1]), &what),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn identity_round_trips() {
        let identity = MemberIdentity {
            cluster_id: ClusterId::derive(&[NodeId(1), NodeId(2)], "codec"),
            node_id: NodeId(2),
            incarnation: u64::MAX - 1,
        };
        let sealed = encode_identity(b"i", &identity);
        assert_eq!(decode_identity(b"i", &sealed, &what).unwrap(), identity);
        assert!(matches!(
            decode_identity(b"i", &seal(b"i", vec![0; 47]), &what),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn entries_must_match_their_key() {
        let entry = Entry {
            index: 7,
            term: 2,
            data: b"x".to_vec(),
            ..Default::default()
        };
        let sealed = seal(b"e7", entry.encode_to_vec());
        assert_eq!(decode_entry(b"e7", 7, &sealed, &what).unwrap(), entry);
        assert!(matches!(
            decode_entry(b"e7", 8, &sealed, &what),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
