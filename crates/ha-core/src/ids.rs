//! Identifiers: members, clusters and requests.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The identity of one member of a group. Never zero; never reused after the
/// member that held it has been removed.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The raw id used on the wire and by raft-rs.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u64> for NodeId {
    fn from(v: u64) -> Self {
        NodeId(v)
    }
}

/// The identity of a group, derived once at bootstrap from the sorted initial
/// members and the cluster token, stored in every member's data directory and
/// checked on open and on every connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub [u8; 32]);

impl ClusterId {
    /// Derives the id with SHA-256 — stable across builds and platforms, unlike
    /// `DefaultHasher`.
    pub fn derive(initial_members: &[NodeId], cluster_token: &str) -> Self {
        let mut members: Vec<u64> = initial_members.iter().map(|m| m.0).collect();
        members.sort_unstable();
        members.dedup();
        let mut h = Sha256::new();
        h.update(b"ha-cluster-id/v1\0");
        h.update((cluster_token.len() as u64).to_be_bytes());
        h.update(cluster_token.as_bytes());
        h.update((members.len() as u64).to_be_bytes());
        for m in members {
            h.update(m.to_be_bytes());
        }
        ClusterId(h.finalize().into())
    }

    /// A short form for logs and the wire header (the first 8 bytes).
    pub fn short(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({self})")
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The identity of one proposal, unique forever: the proposing member, its
/// incarnation (bumped and stored at every start) and a sequence number within
/// that incarnation. The state machine's dedup table is keyed by it, so a
/// proposal retried after a leader change is applied at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// The member that proposed.
    pub member: NodeId,
    /// The proposing member's incarnation.
    pub incarnation: u64,
    /// Sequence number within the incarnation, starting at 1.
    pub seq: u64,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.member, self.incarnation, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_ignores_member_order_and_depends_on_token() {
        let a = ClusterId::derive(&[NodeId(3), NodeId(1), NodeId(2)], "t");
        let b = ClusterId::derive(&[NodeId(1), NodeId(2), NodeId(3)], "t");
        let c = ClusterId::derive(&[NodeId(1), NodeId(2), NodeId(3)], "u");
        let d = ClusterId::derive(&[NodeId(1), NodeId(2)], "t");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
