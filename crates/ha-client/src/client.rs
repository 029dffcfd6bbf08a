//! [`RemoteKv`]: the calls, their deadlines, and failover between members.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ha_core::{
    CompactResponse, DeleteRequest, DeleteResponse, Error, KvClient, KvOptions, LeaseGrantRequest,
    LeaseGrantResponse, LeaseId, LeaseKeepAlive, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeResponse, LeaseTimeToLiveResponse, NodeId, PutRequest, PutResponse, RangeRequest,
    RangeResponse, Result, TxnRequest, TxnResponse, UnknownCause, WatchRequest, WatchStream,
};
use rand::seq::SliceRandom;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::RemoteKvBuilder;
use crate::wire::{
    CompactBody, DeleteBody, DeleteJson, Encoding, GrantBody, GrantJson, HeaderJson,
    HeaderOnlyJson, KeepAliveJson, LeaseBody, LeasesJson, PutBody, PutJson, RangeBody, RangeJson,
    TtlJson, TxnBody, TxnJson, WireError,
};

/// Keys and values always travel as base64: every byte string works.
pub(crate) const ENC: Encoding = Encoding::Base64;

/// A remote client of an ha group: [`KvClient`] over the members'
/// HTTP/JSON client API, with failover between them (see the crate docs).
///
/// Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct RemoteKv {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for RemoteKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKv")
            .field("members", &self.endpoints())
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

pub(crate) struct Inner {
    endpoints: Vec<Endpoint>,
    /// The order calls try the members in (indexes into `endpoints`): the
    /// first configured member first, the others shuffled once per client,
    /// so that clients leaving one member spread over the others rather
    /// than all moving to the next one listed. Positions in this order are
    /// what the rest of the client calls an endpoint.
    order: Vec<usize>,
    pub(crate) http: reqwest::Client,
    pub(crate) timeout: Duration,
    /// The member that answered last (a position in `order`): calls start
    /// there, until it fails to answer one in time.
    preferred: AtomicUsize,
}

struct Endpoint {
    base: String,
    /// The member id it answered with last (0: not known yet).
    member: AtomicU64,
}

/// Whether a request may be sent again after its outcome became unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Changes nothing (or nothing twice): sent again on another member
    /// after a lost connection.
    Read,
    /// Changes the store: never sent again once it may have arrived.
    Write,
}

/// An answer that names the member that gave it.
pub(crate) trait Answer: DeserializeOwned {
    fn header(&self) -> Option<&HeaderJson>;
}

macro_rules! answer {
    ($($t:ty),*) => {$(
        impl Answer for $t {
            fn header(&self) -> Option<&HeaderJson> {
                Some(&self.header)
            }
        }
    )*};
}
answer!(
    PutJson,
    RangeJson,
    DeleteJson,
    TxnJson,
    HeaderOnlyJson,
    GrantJson,
    KeepAliveJson,
    TtlJson,
    LeasesJson
);

/// How a failed attempt ends the call or moves it on.
enum Next {
    /// Try the next member (the request did not apply, or it is a read).
    Elsewhere(Option<Error>),
    /// Try the member that is `leader_hint`, if known.
    Leader(Option<NodeId>, Error),
    /// The call's answer.
    Fail(Error),
}

impl RemoteKv {
    /// A builder for a client of the members at `endpoints`
    /// (`http://host:port`, their `--http` addresses).
    pub fn builder<I, S>(endpoints: I) -> RemoteKvBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RemoteKvBuilder::new(endpoints.into_iter().map(Into::into).collect())
    }

    pub(crate) fn new(bases: Vec<String>, http: reqwest::Client, timeout: Duration) -> Self {
        let mut order: Vec<usize> = (0..bases.len()).collect();
        if let Some(rest) = order.get_mut(1..) {
            rest.shuffle(&mut rand::thread_rng());
        }
        RemoteKv {
            inner: Arc::new(Inner {
                endpoints: bases
                    .into_iter()
                    .map(|base| Endpoint {
                        base,
                        member: AtomicU64::new(0),
                    })
                    .collect(),
                order,
                http,
                timeout,
                preferred: AtomicUsize::new(0),
            }),
        }
    }

    /// The members' addresses, normalized.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .endpoints
            .iter()
            .map(|e| e.base.clone())
            .collect()
    }

    /// The default deadline of a call.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The endpoint at position `i` of this client's order.
    fn endpoint(&self, i: usize) -> &Endpoint {
        &self.inner.endpoints[self.inner.order[i]]
    }

    pub(crate) fn base(&self, i: usize) -> &str {
        &self.endpoint(i).base
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.endpoints.len()
    }

    pub(crate) fn preferred(&self) -> usize {
        self.inner.preferred.load(Ordering::Relaxed) % self.len()
    }

    pub(crate) fn answered(&self, i: usize, member: u64) {
        self.inner.preferred.store(i, Ordering::Relaxed);
        if member != 0 {
            self.endpoint(i).member.store(member, Ordering::Relaxed);
        }
    }

    /// The member at `i` did not answer a call in time (paused, cut off,
    /// or without a quorum): later calls start at the next one instead of
    /// waiting on it again. The failed call's own outcome is unchanged.
    pub(crate) fn avoid(&self, i: usize) {
        let _ = self.inner.preferred.compare_exchange(
            i,
            (i + 1) % self.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub(crate) fn member_of(&self, i: usize) -> Option<NodeId> {
        match self.endpoint(i).member.load(Ordering::Relaxed) {
            0 => None,
            m => Some(NodeId(m)),
        }
    }

    fn endpoint_of(&self, member: NodeId) -> Option<usize> {
        (0..self.len()).find(|&i| self.endpoint(i).member.load(Ordering::Relaxed) == member.0)
    }

    /// The pause after every member was tried once without an answer.
    pub(crate) fn backoff(round: usize) -> Duration {
        Duration::from_millis(25u64 << round.min(5)).min(Duration::from_millis(500))
    }

    /// One call: `path` with `body` (GET without), under `options`'
    /// deadline, with failover.
    pub(crate) async fn call<B: Serialize, R: Answer>(
        &self,
        path: &str,
        body: Option<&B>,
        kind: Kind,
        options: &KvOptions,
    ) -> Result<R> {
        let total = options.timeout.unwrap_or(self.inner.timeout);
        let deadline = Instant::now() + total;
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| Error::CallFailed {
                peer: NodeId(0),
                reason: Arc::from(format!("cannot encode the request: {e}")),
            })?),
            None => None,
        };
        let n = self.len();
        let mut i = self.preferred();
        let mut tried = 0usize;
        // The answer to give if the deadline passes before a member
        // answers: the last member's error when one said why, else a
        // timeout (nothing was applied: no member took the request).
        let mut last: Option<Error> = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(last.unwrap_or(Error::Timeout { after: total }));
            }
            let next = match self
                .attempt::<R>(i, path, body.as_deref(), kind, deadline - now, total)
                .await
            {
                Ok(r) => return Ok(r),
                Err(next) => next,
            };
            tried += 1;
            i = match next {
                Next::Fail(e) => {
                    if matches!(e, Error::Timeout { .. } | Error::OutcomeUnknown { .. }) {
                        self.avoid(i);
                    }
                    return Err(e);
                }
                Next::Elsewhere(e) => {
                    if e.is_some() {
                        last = e;
                    }
                    (i + 1) % n
                }
                Next::Leader(hint, e) => {
                    last = Some(e);
                    hint.and_then(|h| self.endpoint_of(h))
                        .filter(|&j| j != i)
                        .unwrap_or((i + 1) % n)
                }
            };
            if tried % n == 0 {
                let pause = Self::backoff(tried / n - 1);
                tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
            }
        }
    }

    async fn attempt<R: Answer>(
        &self,
        i: usize,
        path: &str,
        body: Option<&[u8]>,
        kind: Kind,
        remaining: Duration,
        total: Duration,
    ) -> std::result::Result<R, Next> {
        // The member answers at its own deadline, a little before ours, so
        // that its precise answer (`timeout` or `outcome_unknown`) arrives.
        let margin = (remaining / 5).min(Duration::from_millis(250));
        let server_ms = (remaining - margin).as_millis().max(1);
        let url = format!("{}{path}?timeout_ms={server_ms}", self.base(i));
        let request = match body {
            Some(b) => self
                .inner
                .http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_vec()),
            None => self.inner.http.get(url),
        };
        let lost = |e: reqwest::Error| -> Next {
            if e.is_connect() {
                // Nothing reached the member.
                return Next::Elsewhere(None);
            }
            match (kind, e.is_timeout()) {
                (Kind::Read, true) => Next::Fail(Error::Timeout { after: total }),
                (Kind::Read, false) => Next::Elsewhere(None),
                (Kind::Write, true) => Next::Fail(Error::OutcomeUnknown {
                    cause: UnknownCause::DeadlineExceeded,
                }),
                (Kind::Write, false) => Next::Fail(Error::OutcomeUnknown {
                    cause: UnknownCause::ConnectionLost,
                }),
            }
        };
        let response = request.timeout(remaining).send().await.map_err(lost)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(lost)?;
        if status.is_success() {
            return match serde_json::from_slice::<R>(&bytes) {
                Ok(r) => {
                    self.answered(i, r.header().map_or(0, |h| h.member_id));
                    Ok(r)
                }
                Err(e) => Err(Next::Fail(
                    WireError::bad_answer(format!("{path}: {e}")).into_error(self.member_of(i)),
                )),
            };
        }
        let wire = WireError::from_body(status.as_u16(), &bytes);
        let code = wire.code.clone();
        let mut error = wire.into_error(self.member_of(i));
        if let Error::TooLarge { size, .. } = &mut error
            && *size == 0
        {
            *size = body.map_or(0, <[u8]>::len);
        }
        Err(match (&error, kind) {
            (Error::NotLeader { leader_hint }, _) => Next::Leader(*leader_hint, error),
            (Error::Shutdown | Error::ProposalDropped { .. } | Error::Removed { .. }, _) => {
                Next::Elsewhere(Some(error))
            }
            (Error::OutcomeUnknown { .. }, Kind::Read) if code == "deadline_exceeded" => {
                Next::Fail(Error::Timeout { after: total })
            }
            // A member that failed, or an answer that was not the API's
            // (a proxy, another version): a read can go elsewhere.
            (Error::Fatal { .. } | Error::CallFailed { .. }, Kind::Read) => {
                Next::Elsewhere(Some(error))
            }
            _ => Next::Fail(error),
        })
    }
}

#[async_trait]
impl KvClient for RemoteKv {
    async fn put(&self, request: PutRequest, options: KvOptions) -> Result<PutResponse> {
        let body = PutBody::new(ENC, &request).map_err(|e| e.into_error(None))?;
        let r: PutJson = self
            .call("/v1/kv/put", Some(&body), Kind::Write, &options)
            .await?;
        r.to_response(ENC).map_err(|e| e.into_error(None))
    }

    async fn range(&self, request: RangeRequest, options: KvOptions) -> Result<RangeResponse> {
        let body =
            RangeBody::new(ENC, &request, options.consistency).map_err(|e| e.into_error(None))?;
        let r: RangeJson = self
            .call("/v1/kv/range", Some(&body), Kind::Read, &options)
            .await?;
        r.to_response(ENC).map_err(|e| e.into_error(None))
    }

    async fn delete(&self, request: DeleteRequest, options: KvOptions) -> Result<DeleteResponse> {
        let body = DeleteBody::new(ENC, &request).map_err(|e| e.into_error(None))?;
        let r: DeleteJson = self
            .call("/v1/kv/delete", Some(&body), Kind::Write, &options)
            .await?;
        r.to_response(ENC).map_err(|e| e.into_error(None))
    }

    async fn txn(&self, request: TxnRequest, options: KvOptions) -> Result<TxnResponse> {
        let kind = if has_writes(&request) {
            Kind::Write
        } else {
            Kind::Read
        };
        let body =
            TxnBody::new(ENC, &request, options.consistency).map_err(|e| e.into_error(None))?;
        let r: TxnJson = self.call("/v1/kv/txn", Some(&body), kind, &options).await?;
        r.to_response(ENC).map_err(|e| e.into_error(None))
    }

    async fn compact(&self, revision: i64, options: KvOptions) -> Result<CompactResponse> {
        let r: HeaderOnlyJson = self
            .call(
                "/v1/kv/compact",
                Some(&CompactBody { revision }),
                Kind::Write,
                &options,
            )
            .await?;
        Ok(CompactResponse {
            header: r.header.to_header().map_err(|e| e.into_error(None))?,
        })
    }

    async fn watch(&self, request: WatchRequest) -> Result<WatchStream> {
        crate::watch::open(self, request).await
    }

    async fn lease_grant(
        &self,
        request: LeaseGrantRequest,
        options: KvOptions,
    ) -> Result<LeaseGrantResponse> {
        let body = GrantBody {
            ttl_ms: crate::wire::ms(request.ttl),
            id: request.id.0,
        };
        let r: GrantJson = self
            .call("/v1/lease/grant", Some(&body), Kind::Write, &options)
            .await?;
        r.to_response().map_err(|e| e.into_error(None))
    }

    async fn lease_revoke(&self, id: LeaseId, options: KvOptions) -> Result<LeaseRevokeResponse> {
        let r: HeaderOnlyJson = self
            .call(
                "/v1/lease/revoke",
                Some(&LeaseBody {
                    id: id.0,
                    keys: false,
                }),
                Kind::Write,
                &options,
            )
            .await?;
        Ok(LeaseRevokeResponse {
            header: r.header.to_header().map_err(|e| e.into_error(None))?,
        })
    }

    async fn lease_keep_alive_once(
        &self,
        id: LeaseId,
        options: KvOptions,
    ) -> Result<LeaseKeepAliveResponse> {
        // A renewal sent twice renews twice: harmless, so it may go
        // elsewhere like a read.
        let r: KeepAliveJson = self
            .call(
                "/v1/lease/keepalive",
                Some(&LeaseBody {
                    id: id.0,
                    keys: false,
                }),
                Kind::Read,
                &options,
            )
            .await?;
        r.to_response().map_err(|e| e.into_error(None))
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseKeepAlive> {
        let first = self.lease_keep_alive_once(id, KvOptions::default()).await?;
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(keep_alive_loop(self.clone(), id, first, tx));
        Ok(LeaseKeepAlive::new(
            id,
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx)),
        ))
    }

    async fn lease_time_to_live(
        &self,
        id: LeaseId,
        keys: bool,
        options: KvOptions,
    ) -> Result<LeaseTimeToLiveResponse> {
        let r: TtlJson = self
            .call(
                "/v1/lease/ttl",
                Some(&LeaseBody { id: id.0, keys }),
                Kind::Read,
                &options,
            )
            .await?;
        r.to_response(ENC).map_err(|e| e.into_error(None))
    }

    async fn leases(&self, options: KvOptions) -> Result<LeaseLeasesResponse> {
        let r: LeasesJson = self
            .call::<(), _>("/v1/lease/list", None, Kind::Read, &options)
            .await?;
        r.to_response().map_err(|e| e.into_error(None))
    }
}

fn has_writes(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match op {
        ha_core::TxnOp::Range(_) => false,
        ha_core::TxnOp::Txn(t) => has_writes(t),
        _ => true,
    })
}

/// Renews `id` every third of its TTL (sooner after a failure) until the
/// receiver is dropped or the lease is gone — like the in-process
/// keep-alive, except that a stopped member is not the end: the next
/// renewal goes to another one.
async fn keep_alive_loop(
    kv: RemoteKv,
    id: LeaseId,
    first: LeaseKeepAliveResponse,
    tx: mpsc::Sender<Result<LeaseKeepAliveResponse>>,
) {
    let mut ttl = first.ttl;
    let mut next = Instant::now() + ttl / 3;
    let _ = tx.try_send(Ok(first));
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        // Each attempt may take at most a third of the TTL, so that a lost
        // member leaves time for another attempt before the lease runs out.
        let attempt = KvOptions::default().with_timeout((ttl / 3).max(Duration::from_millis(50)));
        match kv.lease_keep_alive_once(id, attempt).await {
            Ok(r) => {
                ttl = r.ttl;
                next = Instant::now() + ttl / 3;
                // A full buffer skips the report, never the renewal.
                let _ = tx.try_send(Ok(r));
            }
            Err(e @ Error::LeaseNotFound { .. }) => {
                tokio::select! {
                    _ = tx.send(Err(e)) => {}
                    _ = tx.closed() => {}
                }
                return;
            }
            Err(_) => {
                next = Instant::now() + (ttl / 10).min(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::{KeyRange, TxnOp};

    #[test]
    fn a_transaction_writes_if_any_branch_or_nested_one_does() {
        let read = TxnOp::Range(RangeRequest::new(KeyRange::key("k")));
        let nested_write = TxnOp::Txn(TxnRequest {
            compare: vec![],
            success: vec![],
            failure: vec![TxnOp::Put(PutRequest::new("k", "v"))],
        });
        let t = |ops: Vec<TxnOp>| TxnRequest {
            compare: vec![],
            success: ops,
            failure: vec![],
        };
        assert!(!has_writes(&t(vec![read.clone()])));
        assert!(has_writes(&t(vec![read, nested_write])));
        assert!(has_writes(&t(vec![TxnOp::Delete(DeleteRequest::new(
            KeyRange::prefix("a")
        ))])));
    }

    /// Nothing listens on these ports: every member refuses, so a write
    /// provably did not apply and ends as a timeout, not an unknown outcome.
    #[tokio::test]
    async fn refused_everywhere_is_a_timeout_within_the_deadline() {
        let ports: Vec<u16> = (0..2)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .expect("an ephemeral port")
            })
            .collect();
        let kv = RemoteKv::builder(ports.iter().map(|p| format!("http://127.0.0.1:{p}")))
            .timeout(Duration::from_millis(300))
            .build()
            .expect("valid config");
        let e = kv
            .put(PutRequest::new("k", "v"), KvOptions::default())
            .await
            .expect_err("nobody listens");
        assert!(
            matches!(e, Error::Timeout { after } if after == Duration::from_millis(300)),
            "{e:?}"
        );
    }

    fn client(n: usize) -> RemoteKv {
        RemoteKv::new(
            (0..n)
                .map(|i| format!("http://127.0.0.1:{}", 9000 + i))
                .collect(),
            reqwest::Client::new(),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn the_first_member_comes_first_and_each_client_orders_the_rest_its_own_way() {
        let mut orders = std::collections::BTreeSet::new();
        for _ in 0..64 {
            let kv = client(5);
            let mut order = kv.inner.order.clone();
            assert_eq!(order[0], 0, "the first configured member is tried first");
            order.sort_unstable();
            assert_eq!(order, vec![0, 1, 2, 3, 4], "every member, once");
            orders.insert(kv.inner.order.clone());
        }
        // 24 orders of the other four; 64 clients all drawing one of them
        // has probability 24^-63.
        assert!(
            orders.len() > 1,
            "every client failed over in the same order"
        );
    }

    #[test]
    fn a_member_that_let_a_deadline_pass_is_not_tried_first_again() {
        let kv = client(3);
        assert_eq!(kv.preferred(), 0);
        kv.avoid(0);
        assert_eq!(kv.preferred(), 1);
        // Another call already moved on: a late report does not move it back.
        kv.avoid(0);
        assert_eq!(kv.preferred(), 1);
        kv.answered(2, 7);
        kv.avoid(2);
        assert_eq!(kv.preferred(), 0, "wraps around");
        assert_eq!(kv.member_of(2), Some(NodeId(7)));
        assert_eq!(kv.endpoint_of(NodeId(7)), Some(2));
    }
}
