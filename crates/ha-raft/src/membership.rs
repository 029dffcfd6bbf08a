//! Membership: who the members are, their roles and addresses, and the
//! changes that move between configurations.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use ha_core::NodeId;
use ha_core::eraftpb::ConfState;
use prost::Message as _;

use crate::codec::{MemberRecord, MemberSetRecord};

/// A member's role in the current configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberRole {
    /// Votes in elections and counts for commit.
    Voter,
    /// Votes only in the outgoing half of a joint configuration: it keeps
    /// serving until the change that removes it commits.
    OutgoingVoter,
    /// A full, non-voting replica.
    Learner,
}

/// One member as the group knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its id.
    pub id: NodeId,
    /// Its role.
    pub role: MemberRole,
    /// Its address, opaque bytes for transports.
    pub address: Bytes,
    /// A learner the leader will promote once it has caught up.
    pub promote_when_caught_up: bool,
}

/// The group's membership as applied on this member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Every member, by id.
    pub members: Vec<MemberInfo>,
    /// True while a joint configuration is in force.
    pub joint: bool,
    /// Ids removed from the group, never to be used again.
    pub removed: Vec<NodeId>,
}

impl Membership {
    /// The voters (incoming and outgoing).
    pub fn voters(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|m| m.role != MemberRole::Learner)
            .map(|m| m.id)
            .collect()
    }

    /// The learners.
    pub fn learners(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|m| m.role == MemberRole::Learner)
            .map(|m| m.id)
            .collect()
    }

    /// The member with this id.
    pub fn get(&self, id: NodeId) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.id == id)
    }
    /// An id above every member and every removed member: never used in
    /// this group as far as its membership knows (a concurrent change that
    /// picked the same id fails as a duplicate).
    pub fn unused_id(&self) -> NodeId {
        let highest = self
            .members
            .iter()
            .map(|m| m.id.0)
            .chain(self.removed.iter().map(|id| id.0))
            .max()
            .unwrap_or(0);
        NodeId(highest + 1)
    }
}

/// One change of membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Add a voter.
    AddVoter {
        /// The new member's id (never used before).
        id: NodeId,
        /// Its address.
        address: Bytes,
    },
    /// Add a learner.
    AddLearner {
        /// The new member's id (never used before).
        id: NodeId,
        /// Its address.
        address: Bytes,
        /// Promote it to voter automatically once its log is within
        /// `Config::promote_within_entries` of the leader's.
        promote_when_caught_up: bool,
    },
    /// Make a learner a voter.
    Promote(NodeId),
    /// Remove a member.
    Remove(NodeId),
}

impl MemberChange {
    pub(crate) fn id(&self) -> NodeId {
        match self {
            MemberChange::AddVoter { id, .. } | MemberChange::AddLearner { id, .. } => *id,
            MemberChange::Promote(id) | MemberChange::Remove(id) => *id,
        }
    }
}

/// Replicated member metadata that raft itself does not keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemberSet {
    pub(crate) info: BTreeMap<u64, (Bytes, bool)>,
    pub(crate) removed: BTreeSet<u64>,
}

impl MemberSet {
    pub(crate) fn encode(&self) -> Vec<u8> {
        MemberSetRecord {
            members: self
                .info
                .iter()
                .map(|(id, (a, p))| MemberRecord {
                    id: *id,
                    address: a.to_vec(),
                    auto_promote: *p,
                })
                .collect(),
            removed: self.removed.iter().copied().collect(),
        }
        .encode_to_vec()
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, prost::DecodeError> {
        let r = MemberSetRecord::decode(b)?;
        Ok(MemberSet {
            info: r
                .members
                .into_iter()
                .map(|m| (m.id, (Bytes::from(m.address), m.auto_promote)))
                .collect(),
            removed: r.removed.into_iter().collect(),
        })
    }

    /// The public view, combining raft's configuration with the metadata.
    pub(crate) fn view(&self, cs: &ConfState) -> Membership {
        let mut roles: BTreeMap<u64, MemberRole> = BTreeMap::new();
        for &v in &cs.voters_outgoing {
            roles.insert(v, MemberRole::OutgoingVoter);
        }
        for &v in &cs.voters {
            roles.insert(v, MemberRole::Voter);
        }
        for &l in cs.learners.iter().chain(cs.learners_next.iter()) {
            roles.entry(l).or_insert(MemberRole::Learner);
        }
        Membership {
            members: roles
                .into_iter()
                .map(|(id, role)| {
                    let (address, promote) = self.info.get(&id).cloned().unwrap_or_default();
                    MemberInfo {
                        id: NodeId(id),
                        role,
                        address,
                        promote_when_caught_up: promote && role == MemberRole::Learner,
                    }
                })
                .collect(),
            joint: !cs.voters_outgoing.is_empty(),
            removed: self.removed.iter().map(|&r| NodeId(r)).collect(),
        }
    }
}
