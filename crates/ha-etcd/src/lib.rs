//! An etcd v3-compatible gRPC gateway for an ha group: `etcdctl` and etcd
//! client libraries in any language use an ha group unchanged.
//!
//! The services answer etcd's wire protocol (package, message and field
//! names and numbers as etcd's published v3 API documents them; the
//! `.proto` files in `proto/` were written for ha from that reference) over
//! any [`KvClient`] — a member's in-process `KvNode`, or a remote client:
//!
//! - `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact;
//! - `etcdserverpb.Watch`: the bidirectional watch stream;
//! - `etcdserverpb.Lease`: Grant, Revoke, KeepAlive, TimeToLive, Leases;
//! - `etcdserverpb.Cluster` and `etcdserverpb.Maintenance` when the gateway
//!   has a [`ClusterInfo`] (a member's engine): MemberList, MemberRemove,
//!   MemberPromote, MemberAdd, MemberUpdate, Status, MoveLeader; the rest answer `Unimplemented`
//!   with the reason;
//! - `v3lockpb.Lock` and `v3electionpb.Election`, with etcd's key layout
//!   (`<name>/<lease hex>`), so they interoperate with etcd's own
//!   `concurrency` package clients.
//!
//! Responses carry ha's cluster id (its first 8 bytes), the answering
//! member's id, the store revision and the raft term; errors are the gRPC
//! statuses etcd answers (see the README's compatibility table).
//!
//! ```no_run
//! # async fn f(node: ha_raft::KvNode) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let gateway = ha_etcd::Gateway::new(Arc::new(node.clone()))
//!     .with_cluster(Arc::new(node));
//! tonic::transport::Server::builder()
//!     .add_routes(gateway.routes())
//!     .serve("127.0.0.1:2379".parse()?)
//!     .await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod cluster;
mod convert;
mod election;
mod kv;
mod lease;
mod lock;
pub mod pb;
mod status;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ha_core::{KeyRange, KvClient, KvOptions, RangeRequest};
use tonic::service::Routes;

pub use crate::cluster::{ClusterInfo, ClusterMember, MemberStatus};

/// The etcd API version the gateway answers as (`Status.version`): the
/// level of the v3 API it implements, not an etcd build.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// Default largest gRPC request the gateway decodes, bytes.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 << 20;

/// The gateway's settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GatewayOptions {
    /// Largest request message decoded; larger ones are refused before
    /// they reach the group.
    pub max_request_bytes: usize,
    /// Largest response message encoded.
    pub max_response_bytes: usize,
    /// Each member's etcd client URLs, for `MemberList` (ha knows only its
    /// peer addresses). A member not listed has none.
    pub client_urls: BTreeMap<u64, Vec<String>>,
    /// Members' peer addresses for `MemberList`, where the group's
    /// membership records none (initial members of a group whose
    /// addresses come from configuration).
    pub peer_urls: BTreeMap<u64, Vec<String>>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_response_bytes: usize::MAX,
            client_urls: BTreeMap::new(),
            peer_urls: BTreeMap::new(),
        }
    }
}

/// The etcd v3 services over one [`KvClient`], ready to mount in a tonic
/// server ([`Gateway::routes`]; `routes().into_axum_router()` for an axum or
/// hyper server).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("cluster", &self.inner.cluster.is_some())
            .field("options", &self.inner.options)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) kv: Arc<dyn KvClient>,
    pub(crate) cluster: Option<Arc<dyn ClusterInfo>>,
    pub(crate) options: GatewayOptions,
}

impl Gateway {
    /// The services over `kv`, without Cluster and Maintenance details
    /// (add them with [`Gateway::with_cluster`]).
    pub fn new(kv: Arc<dyn KvClient>) -> Gateway {
        Gateway {
            inner: Arc::new(Inner {
                kv,
                cluster: None,
                options: GatewayOptions::default(),
            }),
        }
    }

    /// Answers `Cluster` and `Maintenance.Status` from `cluster`.
    pub fn with_cluster(self, cluster: Arc<dyn ClusterInfo>) -> Gateway {
        let mut inner = self.into_inner();
        inner.cluster = Some(cluster);
        Gateway {
            inner: Arc::new(inner),
        }
    }

    /// With these settings.
    pub fn with_options(self, options: GatewayOptions) -> Gateway {
        let mut inner = self.into_inner();
        inner.options = options;
        Gateway {
            inner: Arc::new(inner),
        }
    }

    fn into_inner(self) -> Inner {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                kv: shared.kv.clone(),
                cluster: shared.cluster.clone(),
                options: shared.options.clone(),
            },
        }
    }

    /// Every service, as routes to add to a tonic server
    /// (`Server::builder().add_routes(gateway.routes())`).
    pub fn routes(&self) -> Routes {
        let o = &self.inner.options;
        let (max_in, max_out) = (o.max_request_bytes, o.max_response_bytes);
        macro_rules! limited {
            ($server:expr) => {
                $server
                    .max_decoding_message_size(max_in)
                    .max_encoding_message_size(max_out)
            };
        }
        use crate::pb::etcdserverpb::{
            cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
            maintenance_server::MaintenanceServer, watch_server::WatchServer,
        };
        use crate::pb::v3electionpb::election_server::ElectionServer;
        use crate::pb::v3lockpb::lock_server::LockServer;
        let svc = kv::KvService(self.inner.clone());
        Routes::new(limited!(KvServer::new(svc)))
            .add_service(limited!(WatchServer::new(watch::WatchService(
                self.inner.clone()
            ))))
            .add_service(limited!(LeaseServer::new(lease::LeaseService(
                self.inner.clone()
            ))))
            .add_service(limited!(ClusterServer::new(cluster::ClusterService(
                self.inner.clone()
            ))))
            .add_service(limited!(MaintenanceServer::new(
                cluster::MaintenanceService(self.inner.clone())
            )))
            .add_service(limited!(LockServer::new(lock::LockService(
                self.inner.clone()
            ))))
            .add_service(limited!(ElectionServer::new(election::ElectionService(
                self.inner.clone()
            ))))
    }
}

impl Inner {
    /// A header for answers that carry no KV response of their own: a
    /// local (serializable) read for the revision, the cluster id and the
    /// term.
    pub(crate) async fn header(
        &self,
        options: KvOptions,
    ) -> Result<pb::etcdserverpb::ResponseHeader, tonic::Status> {
        let mut probe = RangeRequest::new(KeyRange::key(vec![0]));
        probe.count_only = true;
        let resp = self
            .kv
            .range(
                probe,
                options.with_consistency(ha_core::Consistency::Serializable),
            )
            .await
            .map_err(|e| status::to_status(&e))?;
        Ok(convert::header(&resp.header))
    }
}

/// The deadline a gRPC client sent (`grpc-timeout`), as call options.
pub(crate) fn call_options<T>(request: &tonic::Request<T>) -> KvOptions {
    let options = KvOptions::default();
    match request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
    {
        Some(timeout) => options.with_timeout(timeout),
        None => options,
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let split = text.len().checked_sub(1)?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
