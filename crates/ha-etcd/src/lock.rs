//! `v3lockpb.Lock`: etcd's lock service, on etcd's key layout — the
//! holder's key is `<name>/<lease hex>`, owned by the caller's lease, and
//! the lock is held by the key with the lowest create revision — so ha
//! locks and etcd `concurrency` clients of the same group exclude each
//! other.

use std::sync::Arc;

use futures::StreamExt;
use ha_core::{
    Compare, CompareOp, CompareTarget, DeleteRequest, EventKind, KeyRange, KvClient, KvOptions,
    LeaseId, PutRequest, RangeRequest, SortOrder, SortTarget, TxnOp, TxnOpResponse, TxnRequest,
    WatchRequest,
};
use tonic::{Request, Response, Status};

use crate::pb::v3lockpb::{self as pb, lock_server::Lock};
use crate::status::to_status;
use crate::{Inner, call_options, convert};

pub(crate) struct LockService(pub(crate) Arc<Inner>);

/// `<prefix><lease hex>`, etcd's key of a lease's place in a queue.
pub(crate) fn queue_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// Puts `key` (owned by `lease`, holding `value`) unless it exists, and
/// returns its create revision and current value.
pub(crate) async fn enqueue(
    kv: &dyn KvClient,
    key: &[u8],
    value: &[u8],
    lease: i64,
    options: KvOptions,
) -> Result<(i64, Vec<u8>), Status> {
    let mut put = PutRequest::new(key.to_vec(), value.to_vec());
    put.lease = LeaseId(lease);
    let txn = TxnRequest {
        compare: vec![Compare::key(
            key.to_vec(),
            CompareOp::Equal,
            CompareTarget::CreateRevision(0),
        )],
        success: vec![TxnOp::Put(put)],
        failure: vec![TxnOp::Range(RangeRequest::new(KeyRange::key(key.to_vec())))],
    };
    let resp = kv.txn(txn, options).await.map_err(|e| to_status(&e))?;
    if resp.succeeded {
        return Ok((resp.header.revision, value.to_vec()));
    }
    match resp.responses.into_iter().next() {
        Some(TxnOpResponse::Range(r)) => match r.kvs.into_iter().next() {
            Some(kv) => Ok((kv.create_revision, kv.value)),
            // Deleted between the compare and the read: cannot happen in
            // one txn, but answer rather than panic.
            None => Err(Status::aborted("ha: queue key vanished; retry")),
        },
        _ => Err(Status::internal("ha: unexpected txn response")),
    }
}

/// Waits until no key under `prefix` was created before `revision`:
/// each time, it watches the newest such key for its deletion.
pub(crate) async fn wait_deletes(
    kv: &dyn KvClient,
    prefix: &[u8],
    revision: i64,
) -> Result<(), Status> {
    loop {
        let mut range = RangeRequest::new(KeyRange::prefix(prefix.to_vec()));
        range.keys_only = true;
        range.sort_target = SortTarget::CreateRevision;
        range.sort_order = SortOrder::Ascend;
        let resp = kv
            .range(range, KvOptions::default())
            .await
            .map_err(|e| to_status(&e))?;
        let Some(ahead) = resp.kvs.iter().rfind(|k| k.create_revision < revision) else {
            return Ok(());
        };
        let watch = WatchRequest::key(ahead.key.clone())
            .from_revision(resp.header.revision + 1)
            .no_put();
        let mut stream = kv.watch(watch).await.map_err(|e| to_status(&e))?;
        loop {
            match stream.next().await {
                Some(Ok(r)) if r.events.iter().any(|e| e.kind == EventKind::Delete) => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(to_status(&e)),
                None => return Err(Status::unavailable("etcdserver: watch ended")),
            }
        }
    }
}

/// Deletes a queue key unless disarmed: a caller that gives up (its RPC
/// was cancelled, or waiting failed) leaves no key behind to block others.
pub(crate) struct Withdraw {
    kv: Option<Arc<dyn KvClient>>,
    key: Vec<u8>,
}

impl Withdraw {
    pub(crate) fn new(kv: Arc<dyn KvClient>, key: Vec<u8>) -> Self {
        Withdraw { kv: Some(kv), key }
    }
    pub(crate) fn disarm(mut self) {
        self.kv = None;
    }
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if let Some(kv) = self.kv.take() {
            let key = std::mem::take(&mut self.key);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = kv
                        .delete(DeleteRequest::new(KeyRange::Key(key)), KvOptions::default())
                        .await;
                });
            }
        }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        request: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        let options = call_options(&request);
        let r = request.into_inner();
        if r.lease <= 0 {
            return Err(Status::invalid_argument(
                "ha: Lock needs the caller's lease (lease > 0)",
            ));
        }
        let mut prefix = r.name;
        prefix.push(b'/');
        let key = queue_key(&prefix, r.lease);
        let kv = self.0.kv.as_ref();
        let (revision, _) = enqueue(kv, &key, b"", r.lease, options).await?;
        let withdraw = Withdraw::new(self.0.kv.clone(), key.clone());
        wait_deletes(kv, &prefix, revision).await?;
        withdraw.disarm();
        Ok(Response::new(pb::LockResponse {
            header: Some(self.0.header(options).await?),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let options = call_options(&request);
        let key = request.into_inner().key;
        let resp = self
            .0
            .kv
            .delete(DeleteRequest::new(KeyRange::Key(key)), options)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::UnlockResponse {
            header: Some(convert::header(&resp.header)),
        }))
    }
}
