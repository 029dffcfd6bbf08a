//! `etcdserverpb.Lease`: Grant, Revoke, KeepAlive (a stream), TimeToLive,
//! Leases. TTLs are whole seconds on the wire, as in etcd.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use ha_core::{Error, LeaseGrantRequest, LeaseId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::pb::etcdserverpb::{self as pb, lease_server::Lease};
use crate::status::to_status;
use crate::{Inner, call_options, convert};

pub(crate) struct LeaseService(pub(crate) Arc<Inner>);

/// A TTL in whole seconds, rounded up (a lease never looks shorter than
/// it is granted).
fn ceil_secs(d: Duration) -> i64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let options = call_options(&request);
        let r = request.into_inner();
        if r.ttl < 0 {
            return Err(Status::invalid_argument("etcdserver: negative lease TTL"));
        }
        if r.id < 0 {
            return Err(Status::invalid_argument("etcdserver: negative lease ID"));
        }
        // etcd rounds a TTL below its minimum up; so does ha, whose minimum
        // is 1.5 x the election timeout (under a second).
        let ttl = Duration::from_secs(r.ttl.max(1) as u64);
        let grant = LeaseGrantRequest::new(ttl).with_id(LeaseId(r.id));
        let resp = self
            .0
            .kv
            .lease_grant(grant, options)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::LeaseGrantResponse {
            header: Some(convert::header(&resp.header)),
            id: resp.id.0,
            ttl: ceil_secs(resp.ttl),
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let options = call_options(&request);
        let id = LeaseId(request.into_inner().id);
        let resp = self
            .0
            .kv
            .lease_revoke(id, options)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: Some(convert::header(&resp.header)),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut requests = request.into_inner();
        let inner = self.0.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(next) = requests.next().await {
                let reply = match next {
                    Ok(r) => keep_alive_once(&inner, LeaseId(r.id)).await,
                    // The client went away or sent garbage: stop.
                    Err(_) => break,
                };
                let stop = reply.is_err();
                if tx.send(reply).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let options = call_options(&request);
        let r = request.into_inner();
        match self
            .0
            .kv
            .lease_time_to_live(LeaseId(r.id), r.keys, options)
            .await
        {
            Ok(resp) => Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: Some(convert::header(&resp.header)),
                id: resp.id.0,
                // etcd truncates the remaining time to whole seconds.
                ttl: i64::try_from(resp.ttl.as_secs()).unwrap_or(i64::MAX),
                granted_ttl: ceil_secs(resp.granted_ttl),
                keys: resp.keys,
            })),
            // etcd answers a missing lease with TTL -1, not an error.
            Err(Error::LeaseNotFound { .. }) => Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: Some(self.0.header(options).await?),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            })),
            Err(e) => Err(to_status(&e)),
        }
    }

    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let options = call_options(&request);
        let resp = self.0.kv.leases(options).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(convert::header(&resp.header)),
            leases: resp
                .leases
                .into_iter()
                .map(|l| pb::LeaseStatus { id: l.id.0 })
                .collect(),
        }))
    }
}

/// One renewal as etcd answers it: a lease that is gone gets TTL 0 (the
/// client's keep-alive loop then reports it expired), not an error.
async fn keep_alive_once(inner: &Inner, id: LeaseId) -> Result<pb::LeaseKeepAliveResponse, Status> {
    let options = ha_core::KvOptions::default();
    match inner.kv.lease_keep_alive_once(id, options).await {
        Ok(resp) => Ok(pb::LeaseKeepAliveResponse {
            header: Some(convert::header(&resp.header)),
            id: resp.id.0,
            ttl: ceil_secs(resp.ttl),
        }),
        Err(Error::LeaseNotFound { .. }) => Ok(pb::LeaseKeepAliveResponse {
            header: Some(inner.header(options).await?),
            id: id.0,
            ttl: 0,
        }),
        Err(e) => Err(to_status(&e)),
    }
}
