//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use ha_core::Consistency;
use tonic::{Request, Response, Status};

use crate::pb::etcdserverpb::{self as pb, kv_server::Kv};
use crate::status::to_status;
use crate::{Inner, call_options, convert};

pub(crate) struct KvService(pub(crate) Arc<Inner>);

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let mut options = call_options(&request);
        let range = convert::range_request(request.into_inner())?;
        if range.serializable {
            options = options.with_consistency(Consistency::Serializable);
        }
        let resp = self
            .0
            .kv
            .range(range.request.clone(), options)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(convert::range_response(&range, resp)))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let options = call_options(&request);
        let resp = self
            .0
            .kv
            .put(convert::put_request(request.into_inner()), options)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(convert::put_response(resp)))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let options = call_options(&request);
        let resp = self
            .0
            .kv
            .delete(convert::delete_request(request.into_inner()), options)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(convert::delete_response(resp)))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let mut options = call_options(&request);
        let request = request.into_inner();
        // As etcd: a txn that only reads, every read serializable, is
        // served locally.
        if convert::txn_is_serializable(&request) {
            options = options.with_consistency(Consistency::Serializable);
        }
        let txn = convert::txn_request(request)?;
        let resp = self
            .0
            .kv
            .txn(txn, options)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(convert::txn_response(resp)))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let options = call_options(&request);
        // `physical` (wait until the compaction is on disk) needs nothing
        // extra: ha's compaction is applied when the call returns.
        let revision = request.into_inner().revision;
        let resp = self
            .0
            .kv
            .compact(revision, options)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::CompactionResponse {
            header: Some(convert::header(&resp.header)),
        }))
    }
}
