//! `etcdserverpb.Cluster` and `etcdserverpb.Maintenance`: what a member's
//! engine knows about the group ([`ClusterInfo`]), in etcd's terms.

use std::sync::Arc;

use async_trait::async_trait;
use ha_core::NodeId;
use tonic::{Request, Response, Status};

use crate::pb::etcdserverpb::{
    self as pb, cluster_server::Cluster, maintenance_server::Maintenance,
};
use crate::status::to_status;
use crate::{ETCD_API_VERSION, Inner, call_options};

/// One member as `MemberList` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMember {
    /// Its id.
    pub id: NodeId,
    /// Its peer address, as the group stores it (empty when the group
    /// records none).
    pub peer_address: String,
    /// A non-voting member.
    pub is_learner: bool,
}

/// The answering member's raft state, for `Maintenance.Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// This member.
    pub id: NodeId,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its term.
    pub term: u64,
    /// Highest log index known committed.
    pub commit: u64,
    /// Highest log index applied.
    pub applied: u64,
    /// It is a learner.
    pub is_learner: bool,
}

/// What the Cluster and Maintenance services ask a member's engine.
/// Implemented for `ha_raft::KvNode`, where the changes work on the
/// leader only (`NotLeader` elsewhere); an application that can reach its
/// leader (ha-node forwards over the peer connection) implements it to
/// make every member accept them, as etcd does.
#[async_trait]
pub trait ClusterInfo: Send + Sync + 'static {
    /// This member's raft state.
    fn status(&self) -> MemberStatus;
    /// The members, as applied on this member.
    fn members(&self) -> Vec<ClusterMember>;
    /// Adds a member at `peer_address` (`IP:port`) under an id never used
    /// before, which the group picks, as a learner; unless `learner`, the
    /// leader makes it a voter once it has caught up (ha never adds a
    /// voter that holds nothing: the group would count an empty member
    /// towards its quorum). Returns the new member.
    async fn add_member(
        &self,
        peer_address: String,
        learner: bool,
    ) -> ha_core::Result<ClusterMember>;
    /// Changes a member's peer address, keeping its id.
    async fn update_member(&self, id: NodeId, peer_address: String) -> ha_core::Result<()>;
    /// Removes a member (on the leader; `NotLeader` elsewhere).
    async fn remove_member(&self, id: NodeId) -> ha_core::Result<()>;
    /// Makes a learner a voter (on the leader).
    async fn promote_member(&self, id: NodeId) -> ha_core::Result<()>;
    /// Hands leadership to `id` (on the leader).
    async fn move_leader(&self, id: NodeId) -> ha_core::Result<()>;
}

#[async_trait]
impl ClusterInfo for ha_raft::KvNode {
    fn status(&self) -> MemberStatus {
        let s = self.node().status();
        MemberStatus {
            id: s.id,
            leader: s.leader,
            term: s.term,
            commit: s.commit,
            applied: s.applied,
            is_learner: s.learners.contains(&s.id),
        }
    }

    fn members(&self) -> Vec<ClusterMember> {
        self.node()
            .membership()
            .members
            .into_iter()
            .map(|m| ClusterMember {
                id: m.id,
                peer_address: String::from_utf8_lossy(&m.address).into_owned(),
                is_learner: m.role == ha_raft::MemberRole::Learner,
            })
            .collect()
    }

    async fn add_member(
        &self,
        peer_address: String,
        learner: bool,
    ) -> ha_core::Result<ClusterMember> {
        let node = self.node();
        let id = node.membership().unused_id();
        node.add_learner(id, peer_address.clone().into_bytes(), !learner)
            .await?;
        Ok(ClusterMember {
            id,
            peer_address,
            is_learner: true,
        })
    }

    async fn update_member(&self, id: NodeId, peer_address: String) -> ha_core::Result<()> {
        self.node()
            .update_address(id, peer_address.into_bytes())
            .await
    }

    async fn remove_member(&self, id: NodeId) -> ha_core::Result<()> {
        self.node().remove_member(id).await
    }

    async fn promote_member(&self, id: NodeId) -> ha_core::Result<()> {
        self.node().promote(id).await
    }

    async fn move_leader(&self, id: NodeId) -> ha_core::Result<()> {
        self.node().transfer_leader(id).await
    }
}

pub(crate) struct ClusterService(pub(crate) Arc<Inner>);
pub(crate) struct MaintenanceService(pub(crate) Arc<Inner>);

impl Inner {
    fn cluster(&self) -> Result<&Arc<dyn ClusterInfo>, Status> {
        self.cluster.as_ref().ok_or_else(|| {
            Status::unimplemented(
                "ha: this gateway serves a KV client without a member's engine; \
                 Cluster and Maintenance need one (Gateway::with_cluster)",
            )
        })
    }

    fn member_list(&self) -> Result<Vec<pb::Member>, Status> {
        let cluster = self.cluster()?;
        Ok(cluster
            .members()
            .into_iter()
            .map(|m| pb::Member {
                id: m.id.0,
                name: format!("member-{}", m.id.0),
                peer_ur_ls: if m.peer_address.is_empty() {
                    self.options
                        .peer_urls
                        .get(&m.id.0)
                        .cloned()
                        .unwrap_or_default()
                } else {
                    vec![m.peer_address]
                },
                client_ur_ls: self
                    .options
                    .client_urls
                    .get(&m.id.0)
                    .cloned()
                    .unwrap_or_default(),
                is_learner: m.is_learner,
            })
            .collect())
    }

    fn member_exists(&self, id: u64) -> Result<(), Status> {
        if self.member_list()?.iter().any(|m| m.id == id) {
            Ok(())
        } else {
            Err(Status::not_found("etcdserver: member not found"))
        }
    }
}

/// The one peer address of an ha member, from etcd's peer URLs
/// (`http://10.0.0.4:2380` or `10.0.0.4:2380`): `IP:port`.
fn peer_address(urls: &[String]) -> Result<String, Status> {
    let [url] = urls else {
        return Err(Status::invalid_argument(format!(
            "etcdserver: an ha member has exactly one peer address; got {} peer URLs",
            urls.len()
        )));
    };
    let bare = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url)
        .trim_end_matches('/');
    match bare.parse::<std::net::SocketAddr>() {
        Ok(addr) if !addr.ip().is_unspecified() && addr.port() != 0 => Ok(addr.to_string()),
        _ => Err(Status::invalid_argument(format!(
            "etcdserver: peer URL `{url}` is not IP:port that can be dialled (ha's peer \
             addresses are IP:port)"
        ))),
    }
}

fn unimplemented(what: &str, why: &str) -> Status {
    Status::unimplemented(format!("ha: {what} is not implemented: {why}"))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let options = call_options(&request);
        let r = request.into_inner();
        let address = peer_address(&r.peer_ur_ls)?;
        let added = self
            .0
            .cluster()?
            .add_member(address, r.is_learner)
            .await
            .map_err(|e| to_status(&e))?;
        let member = pb::Member {
            id: added.id.0,
            // etcd names a member once it has started; etcdctl prints the
            // start settings for the name it was given.
            name: String::new(),
            peer_ur_ls: r.peer_ur_ls,
            client_ur_ls: Vec::new(),
            is_learner: added.is_learner,
        };
        let mut members = self.0.member_list()?;
        if !members.iter().any(|m| m.id == member.id) {
            members.push(member.clone());
        }
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.0.header(options).await?),
            member: Some(member),
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let options = call_options(&request);
        let id = request.into_inner().id;
        self.0.member_exists(id)?;
        self.0
            .cluster()?
            .remove_member(NodeId(id))
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.0.header(options).await?),
            members: self.0.member_list()?,
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let options = call_options(&request);
        let r = request.into_inner();
        let address = peer_address(&r.peer_ur_ls)?;
        self.0.member_exists(r.id)?;
        self.0
            .cluster()?
            .update_member(NodeId(r.id), address)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: Some(self.0.header(options).await?),
            members: self.0.member_list()?,
        }))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let options = call_options(&request);
        let members = self.0.member_list()?;
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.0.header(options).await?),
            members,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let options = call_options(&request);
        let id = request.into_inner().id;
        self.0.member_exists(id)?;
        self.0
            .cluster()?
            .promote_member(NodeId(id))
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.0.header(options).await?),
            members: self.0.member_list()?,
        }))
    }
}

type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let options = call_options(&request);
        let r = request.into_inner();
        if r.action != pb::alarm_request::AlarmAction::Get as i32 {
            return Err(unimplemented(
                "Alarm ACTIVATE/DEACTIVATE",
                "ha raises no alarms (a full store answers NoSpace on writes)",
            ));
        }
        // ha keeps no alarms: the list is truthfully empty.
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.0.header(options).await?),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let options = call_options(&request);
        let s = self.0.cluster()?.status();
        let mut header = self.0.header(options).await?;
        header.raft_term = s.term;
        Ok(Response::new(pb::StatusResponse {
            header: Some(header),
            version: ETCD_API_VERSION.into(),
            // ha does not report its storage size through this interface.
            db_size: 0,
            leader: s.leader.map_or(0, |l| l.0),
            raft_index: s.commit,
            raft_term: s.term,
            raft_applied_index: s.applied,
            errors: Vec::new(),
            db_size_in_use: 0,
            is_learner: s.is_learner,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        Err(unimplemented(
            "Defragment",
            "ha's storage compacts itself (RocksDB)",
        ))
    }

    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        Err(unimplemented(
            "Hash",
            "ha's state digest is not etcd's bolt hash",
        ))
    }

    async fn hash_kv(
        &self,
        _request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        Err(unimplemented(
            "HashKV",
            "ha's state digest is not etcd's KV hash",
        ))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unimplemented(
            "Snapshot",
            "ha's snapshots are not etcd bolt databases; back up with ha's own tools",
        ))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let options = call_options(&request);
        let target = request.into_inner().target_id;
        self.0.member_exists(target)?;
        self.0
            .cluster()?
            .move_leader(NodeId(target))
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::MoveLeaderResponse {
            header: Some(self.0.header(options).await?),
        }))
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(unimplemented(
            "Downgrade",
            "there are no etcd versions to downgrade to",
        ))
    }
}
