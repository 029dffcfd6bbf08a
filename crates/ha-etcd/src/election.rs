//! `v3electionpb.Election`: etcd's election service on etcd's key layout
//! (`<name>/<lease hex>`, the leader being the key with the lowest create
//! revision), so ha and etcd `concurrency` clients share elections.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use ha_core::{
    Compare, CompareOp, CompareTarget, DeleteRequest, KeyRange, KeyValue, KvClient, KvOptions,
    LeaseId, PutRequest, RangeRequest, SortOrder, SortTarget, TxnOp, TxnRequest, WatchRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::lock::{Withdraw, enqueue, queue_key, wait_deletes};
use crate::pb::etcdserverpb::ResponseHeader;
use crate::pb::v3electionpb::{self as pb, election_server::Election};
use crate::status::to_status;
use crate::{Inner, call_options, convert};

pub(crate) struct ElectionService(pub(crate) Arc<Inner>);

fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// The current leader of the election under `prefix` (the oldest key),
/// with the header of the read.
async fn current_leader(
    kv: &dyn KvClient,
    prefix: &[u8],
    options: KvOptions,
) -> Result<(Option<KeyValue>, ResponseHeader), Status> {
    let mut range = RangeRequest::new(KeyRange::prefix(prefix.to_vec()));
    range.sort_target = SortTarget::CreateRevision;
    range.sort_order = SortOrder::Ascend;
    range.limit = 1;
    let resp = kv.range(range, options).await.map_err(|e| to_status(&e))?;
    let header = convert::header(&resp.header);
    Ok((resp.kvs.into_iter().next(), header))
}

/// Writes `value` to the leader key if it is still the one created at
/// `rev`.
async fn proclaim(
    kv: &dyn KvClient,
    leader: &pb::LeaderKey,
    value: Vec<u8>,
    options: KvOptions,
) -> Result<ResponseHeader, Status> {
    let mut put = PutRequest::new(leader.key.clone(), value);
    put.lease = LeaseId(leader.lease);
    let txn = TxnRequest {
        compare: vec![Compare::key(
            leader.key.clone(),
            CompareOp::Equal,
            CompareTarget::CreateRevision(leader.rev),
        )],
        success: vec![TxnOp::Put(put)],
        failure: vec![],
    };
    let resp = kv.txn(txn, options).await.map_err(|e| to_status(&e))?;
    if !resp.succeeded {
        return Err(Status::unknown("election: not leader"));
    }
    Ok(convert::header(&resp.header))
}

fn leader_key(leader: Option<pb::LeaderKey>) -> Result<pb::LeaderKey, Status> {
    leader.ok_or_else(|| Status::invalid_argument("\"leader\" field must be provided"))
}

type Observed = Pin<Box<dyn Stream<Item = Result<pb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let options = call_options(&request);
        let r = request.into_inner();
        if r.lease <= 0 {
            return Err(Status::invalid_argument(
                "ha: Campaign needs the caller's lease (lease > 0)",
            ));
        }
        let prefix = prefix_of(&r.name);
        let key = queue_key(&prefix, r.lease);
        let kv = self.0.kv.as_ref();
        let (rev, current) = enqueue(kv, &key, &r.value, r.lease, options).await?;
        let withdraw = Withdraw::new(self.0.kv.clone(), key.clone());
        let leader = pb::LeaderKey {
            name: r.name,
            key,
            rev,
            lease: r.lease,
        };
        // Campaigning again with a new value updates it, as in etcd.
        if current != r.value {
            proclaim(kv, &leader, r.value, options).await?;
        }
        wait_deletes(kv, &prefix, rev).await?;
        withdraw.disarm();
        Ok(Response::new(pb::CampaignResponse {
            header: Some(self.0.header(options).await?),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        let options = call_options(&request);
        let r = request.into_inner();
        let leader = leader_key(r.leader)?;
        let header = proclaim(self.0.kv.as_ref(), &leader, r.value, options).await?;
        Ok(Response::new(pb::ProclaimResponse {
            header: Some(header),
        }))
    }

    async fn leader(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        let options = call_options(&request);
        let prefix = prefix_of(&request.into_inner().name);
        match current_leader(self.0.kv.as_ref(), &prefix, options).await? {
            (Some(kv), header) => Ok(Response::new(pb::LeaderResponse {
                header: Some(header),
                kv: Some(convert::kv(kv)),
            })),
            (None, _) => Err(Status::unknown("election: no leader")),
        }
    }

    type ObserveStream = Observed;

    async fn observe(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let prefix = prefix_of(&request.into_inner().name);
        let kv = self.0.kv.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let result = observe(kv.as_ref(), &prefix, &tx).await;
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        request: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        let options = call_options(&request);
        let leader = leader_key(request.into_inner().leader)?;
        let txn = TxnRequest {
            compare: vec![Compare::key(
                leader.key.clone(),
                CompareOp::Equal,
                CompareTarget::CreateRevision(leader.rev),
            )],
            success: vec![TxnOp::Delete(DeleteRequest::new(KeyRange::Key(leader.key)))],
            failure: vec![],
        };
        let resp = self
            .0
            .kv
            .txn(txn, options)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::ResignResponse {
            header: Some(convert::header(&resp.header)),
        }))
    }
}

/// Sends the leader each time it (or its value) changes, until the client
/// goes away.
async fn observe(
    kv: &dyn KvClient,
    prefix: &[u8],
    tx: &mpsc::Sender<Result<pb::LeaderResponse, Status>>,
) -> Result<(), Status> {
    let (mut leader, header) = current_leader(kv, prefix, KvOptions::default()).await?;
    let watch = WatchRequest::prefix(prefix.to_vec()).from_revision(header.revision + 1);
    let mut changes = kv.watch(watch).await.map_err(|e| to_status(&e))?;
    let mut header = Some(header);
    let mut sent: Option<(Vec<u8>, i64)> = None;
    loop {
        if let (Some(l), Some(h)) = (&leader, &header) {
            let seen = (l.key.clone(), l.mod_revision);
            if sent.as_ref() != Some(&seen) {
                let reply = pb::LeaderResponse {
                    header: Some(*h),
                    kv: Some(convert::kv(l.clone())),
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return Ok(());
                }
                sent = Some(seen);
            }
        }
        tokio::select! {
            next = changes.next() => match next {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(to_status(&e)),
                None => return Err(Status::unavailable("etcdserver: watch ended")),
            },
            () = tx.closed() => return Ok(()),
        }
        let (l, h) = current_leader(kv, prefix, KvOptions::default()).await?;
        leader = l;
        header = Some(h);
    }
}
