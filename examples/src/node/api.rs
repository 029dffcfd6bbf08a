//! The HTTP/JSON client API (axum). Every route answers JSON; errors are
//! [`ApiError`] bodies. Every request runs under a deadline (`?timeout_ms=`,
//! default `request-timeout-ms`), bodies are bounded (`max-body-bytes`),
//! and a body that is not the route's JSON answers 400 with the parser's
//! reason.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use ha_core::{
    Consistency, Error, KeyRange, KvClient, KvOptions, LeaseGrantRequest, LeaseId, NodeId,
    RangeRequest, WatchStream,
};
use ha_raft::{MemberRole, Role};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::App;
use super::error::{ApiError, cancel_reason};
use super::json::{
    AddMemberBody, CompactBody, DeleteBody, DeleteJson, DiskDelayBody, Encoding, GetBody, GetJson,
    GrantBody, GrantJson, HeaderOnlyJson, KeepAliveJson, LeaseBody, LeasesJson, MemberBody,
    PutBody, PutJson, RangeBody, RangeJson, TransferBody, TtlJson, TxnBody, TxnJson, WatchBody,
    WatchCreatedJson, WatchJson, consistency,
};

/// How much longer than the request's own deadline the HTTP layer waits
/// before it answers `deadline_exceeded` itself: the library's deadline,
/// with its precise answer (`timeout` or `outcome_unknown`), comes first.
const DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// The API's routes over `app`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/kv/put", post(put))
        .route("/v1/kv/get", post(get_key))
        .route("/v1/kv/range", post(range))
        .route("/v1/kv/delete", post(delete))
        .route("/v1/kv/txn", post(txn))
        .route("/v1/kv/compact", post(compact))
        .route("/v1/watch", post(watch))
        .route("/v1/lease/grant", post(lease_grant))
        .route("/v1/lease/keepalive", post(lease_keep_alive))
        .route("/v1/lease/revoke", post(lease_revoke))
        .route("/v1/lease/ttl", post(lease_ttl))
        .route("/v1/lease/list", get(lease_list))
        .route("/v1/members", get(members))
        .route("/v1/members/add", post(member_add))
        .route("/v1/members/join", post(member_join))
        .route("/v1/members/{id}/address", post(member_address))
        .route("/v1/members/promote", post(member_promote))
        .route("/v1/members/remove", post(member_remove))
        .route("/v1/leader/transfer", post(leader_transfer))
        .route("/v1/status", get(status))
        .route("/v1/digest", get(digest))
        .route("/v1/debug/disk-delay", post(disk_delay))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), count))
        .fallback(|| async { ApiError::not_found() })
        .with_state(app)
}

async fn count(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let response = next.run(request).await;
    app.metrics.request(&route, response.status().as_u16());
    response
}

/// Query parameters every route takes.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawParams {
    encoding: Encoding,
    timeout_ms: Option<u64>,
}

/// The request's encoding and deadline.
#[derive(Clone, Copy, Debug)]
struct Params {
    enc: Encoding,
    deadline: Duration,
}

impl Params {
    fn options(&self, consistency: Consistency) -> KvOptions {
        KvOptions::default()
            .with_timeout(self.deadline)
            .with_consistency(consistency)
    }

    fn write(&self) -> KvOptions {
        self.options(Consistency::Linearizable)
    }
}

impl FromRequestParts<Arc<App>> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let Query(raw) = Query::<RawParams>::from_request_parts(parts, app)
            .await
            .map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
        let deadline = match raw.timeout_ms {
            Some(0) => return Err(ApiError::bad_request("timeout_ms must be greater than 0")),
            Some(ms) => Duration::from_millis(ms.min(600_000)),
            None => app.settings.request_timeout,
        };
        Ok(Params {
            enc: raw.encoding,
            deadline,
        })
    }
}

/// A JSON body, bounded; an empty body counts as `{}`.
struct Body<T>(T);

impl<T: DeserializeOwned> FromRequest<Arc<App>> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, app).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::body_too_large(app.settings.max_body_bytes)
            } else {
                ApiError::bad_json(e.body_text())
            }
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map(Body)
            .map_err(|e| ApiError::bad_json(e.to_string()))
    }
}

/// Runs `f` under the request's deadline (plus slack).
async fn within<T>(
    deadline: Duration,
    f: impl Future<Output = Result<T, Error>>,
) -> Result<T, ApiError> {
    let bound = deadline + DEADLINE_SLACK;
    match tokio::time::timeout(bound, f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(_) => Err(ApiError::deadline_exceeded(bound)),
    }
}

type Answer = Result<axum::Json<Value>, ApiError>;

fn ok(v: impl serde::Serialize) -> Answer {
    serde_json::to_value(v)
        .map(axum::Json)
        .map_err(|e| ApiError::bad_request(format!("cannot encode the answer: {e}")))
}

async fn put(State(app): State<Arc<App>>, p: Params, Body(b): Body<PutBody>) -> Answer {
    let request = b.into_request(p.enc)?;
    app.metrics.proposal("put");
    let r = within(p.deadline, app.kv.put(request, p.write())).await?;
    ok(PutJson::new(p.enc, &r)?)
}

async fn get_key(State(app): State<Arc<App>>, p: Params, Body(b): Body<GetBody>) -> Answer {
    let request = RangeRequest {
        revision: b.revision,
        ..RangeRequest::new(KeyRange::Key(p.enc.decode("key", &b.key)?))
    };
    let c = consistency(b.serializable, b.consistency)?;
    let r = within(p.deadline, app.kv.range(request, p.options(c))).await?;
    let j = RangeJson::new(p.enc, &r)?;
    ok(GetJson {
        header: j.header,
        kv: j.kvs.into_iter().next(),
    })
}

async fn range(State(app): State<Arc<App>>, p: Params, Body(b): Body<RangeBody>) -> Answer {
    let c = b.consistency()?;
    let request = b.into_request(p.enc)?;
    let r = within(p.deadline, app.kv.range(request, p.options(c))).await?;
    ok(RangeJson::new(p.enc, &r)?)
}

async fn delete(State(app): State<Arc<App>>, p: Params, Body(b): Body<DeleteBody>) -> Answer {
    let request = b.into_request(p.enc)?;
    app.metrics.proposal("delete");
    let r = within(p.deadline, app.kv.delete(request, p.write())).await?;
    ok(DeleteJson::new(p.enc, &r)?)
}

async fn txn(State(app): State<Arc<App>>, p: Params, Body(b): Body<TxnBody>) -> Answer {
    let c = b.consistency()?;
    let request = b.into_request(p.enc)?;
    app.metrics.proposal("txn");
    let r = within(p.deadline, app.kv.txn(request, p.options(c))).await?;
    ok(TxnJson::new(p.enc, &r)?)
}

async fn compact(State(app): State<Arc<App>>, p: Params, Body(b): Body<CompactBody>) -> Answer {
    app.metrics.proposal("compact");
    let r = within(p.deadline, app.kv.compact(b.revision, p.write())).await?;
    ok(HeaderOnlyJson {
        header: (&r.header).into(),
    })
}

/// What a watch's SSE stream is doing.
struct WatchState {
    watch: WatchStream,
    enc: Encoding,
    /// The bookmark of the last response sent: every matching event at or
    /// below it was delivered.
    delivered: i64,
    done: bool,
}

impl WatchState {
    fn resume(&self) -> Value {
        if self.delivered > 0 {
            json!(self.delivered + 1)
        } else {
            Value::Null
        }
    }
}

fn sse(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

async fn watch(
    State(app): State<Arc<App>>,
    p: Params,
    Body(b): Body<WatchBody>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let start = b.start_revision;
    let request = b.into_request(p.enc)?;
    let watch = within(p.deadline, app.kv.watch(request)).await?;
    let created = serde_json::to_value(WatchCreatedJson {
        watch_id: watch.id().0,
        member_id: app.id.0,
        start_revision: start,
    })
    .unwrap_or(Value::Null);
    let state = WatchState {
        watch,
        enc: p.enc,
        delivered: start.saturating_sub(1).max(0),
        done: false,
    };
    let events = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let event = match st.watch.next().await {
            Some(Ok(response)) => match WatchJson::new(st.enc, &response) {
                Ok(j) => {
                    st.delivered = response.header.revision;
                    Event::default()
                        .event("watch")
                        .json_data(j)
                        .unwrap_or_else(|e| {
                            sse(
                                "error",
                                &json!({ "error": "internal", "message": e.to_string() }),
                            )
                        })
                }
                Err(e) => {
                    st.done = true;
                    let mut body = e.body();
                    body["resume_revision"] = st.resume();
                    sse("cancelled", &body)
                }
            },
            Some(Err(Error::WatchCancelled {
                resume_revision,
                reason,
            })) => {
                st.done = true;
                sse(
                    "cancelled",
                    &json!({ "error": "watch_cancelled", "reason": cancel_reason(reason), "resume_revision": resume_revision }),
                )
            }
            Some(Err(e)) => {
                st.done = true;
                let mut body = ApiError::from(e).body();
                body["resume_revision"] = st.resume();
                sse("cancelled", &body)
            }
            None => {
                st.done = true;
                sse(
                    "cancelled",
                    &json!({ "error": "watch_cancelled", "reason": "ended", "resume_revision": st.resume() }),
                )
            }
        };
        Some((Ok(event), st))
    });
    let stream = futures::stream::once(async move { Ok(sse("created", &created)) }).chain(events);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn lease_grant(State(app): State<Arc<App>>, p: Params, Body(b): Body<GrantBody>) -> Answer {
    let request = LeaseGrantRequest::new(Duration::from_millis(b.ttl_ms)).with_id(LeaseId(b.id));
    app.metrics.proposal("lease_grant");
    let r = within(p.deadline, app.kv.lease_grant(request, p.write())).await?;
    ok(GrantJson::new(&r))
}

async fn lease_keep_alive(
    State(app): State<Arc<App>>,
    p: Params,
    Body(b): Body<LeaseBody>,
) -> Answer {
    let r = within(
        p.deadline,
        app.kv.lease_keep_alive_once(LeaseId(b.id), p.write()),
    )
    .await?;
    ok(KeepAliveJson::new(&r))
}

async fn lease_revoke(State(app): State<Arc<App>>, p: Params, Body(b): Body<LeaseBody>) -> Answer {
    app.metrics.proposal("lease_revoke");
    let r = within(p.deadline, app.kv.lease_revoke(LeaseId(b.id), p.write())).await?;
    ok(HeaderOnlyJson {
        header: (&r.header).into(),
    })
}

async fn lease_ttl(State(app): State<Arc<App>>, p: Params, Body(b): Body<LeaseBody>) -> Answer {
    let r = within(
        p.deadline,
        app.kv.lease_time_to_live(LeaseId(b.id), b.keys, p.write()),
    )
    .await?;
    ok(TtlJson::new(p.enc, &r)?)
}

async fn lease_list(State(app): State<Arc<App>>, p: Params) -> Answer {
    let r = within(p.deadline, app.kv.leases(p.write())).await?;
    ok(LeasesJson::new(&r))
}

fn role_name(r: MemberRole) -> &'static str {
    match r {
        MemberRole::Voter => "voter",
        MemberRole::OutgoingVoter => "outgoing_voter",
        MemberRole::Learner => "learner",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

async fn members(State(app): State<Arc<App>>) -> Answer {
    let node = app.kv.node();
    let m = node.membership();
    let leader = node.leader();
    let list: Vec<Value> = m
        .members
        .iter()
        .map(|mi| {
            let peer = if mi.id == app.id {
                Some(app.transport.local_addr())
            } else {
                app.transport.peer_addr(mi.id)
            };
            json!({
                "id": mi.id.0,
                "role": role_name(mi.role),
                "address": String::from_utf8_lossy(&mi.address),
                "peer_address": peer.map(|a| a.to_string()),
                "promote_when_caught_up": mi.promote_when_caught_up,
                "is_leader": leader.leader == Some(mi.id),
            })
        })
        .collect();
    let removed: Vec<u64> = m.removed.iter().map(|n| n.0).collect();
    ok(json!({
        "member_id": app.id.0,
        "leader": leader.leader.map(|l| l.0),
        "term": leader.term,
        "joint": m.joint,
        "members": list,
        "removed": removed,
    }))
}

async fn member_add(
    State(app): State<Arc<App>>,
    p: Params,
    Body(b): Body<AddMemberBody>,
) -> Answer {
    let addr: SocketAddr = b.address.parse().map_err(|e| {
        ApiError::bad_request(format!("address `{}` is not IP:port: {e}", b.address))
    })?;
    if b.id == 0 {
        return Err(ApiError::bad_request("member id 0 is reserved"));
    }
    let id = NodeId(b.id);
    within(
        p.deadline,
        app.kv
            .node()
            .add_learner(id, addr.to_string().into_bytes(), b.promote_when_caught_up),
    )
    .await?;
    // The address book follows membership too; this saves the leader the
    // wait for that task.
    app.transport.set_peer(id, addr);
    ok(json!({ "added": b.id, "address": addr.to_string() }))
}

/// Any member: forwards to the leader, which adds the sender as a learner
/// and answers with the cluster's identity and members
/// ([`super::join::JoinReply`]).
async fn member_join(
    State(app): State<Arc<App>>,
    p: Params,
    Body(b): Body<super::join::JoinBody>,
) -> Result<Response, ApiError> {
    let (status, body) = super::join::join_route(&app, b, p.deadline).await?;
    Ok(relay(status, body))
}

/// Any member: forwards to the leader, which changes member `id`'s
/// replicated peer address (keeping its id).
async fn member_address(
    State(app): State<Arc<App>>,
    axum::extract::Path(id): axum::extract::Path<u64>,
    p: Params,
    Body(b): Body<super::join::AddressBody>,
) -> Result<Response, ApiError> {
    let (status, body) = super::join::address_route(&app, id, b, p.deadline).await?;
    Ok(relay(status, body))
}

/// The leader's answer, as it gave it.
fn relay(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, axum::Json(body)).into_response()
}

async fn member_promote(
    State(app): State<Arc<App>>,
    p: Params,
    Body(b): Body<MemberBody>,
) -> Answer {
    within(p.deadline, app.kv.node().promote(NodeId(b.id))).await?;
    ok(json!({ "promoted": b.id }))
}

async fn member_remove(
    State(app): State<Arc<App>>,
    p: Params,
    Body(b): Body<MemberBody>,
) -> Answer {
    within(p.deadline, app.kv.node().remove_member(NodeId(b.id))).await?;
    ok(json!({ "removed": b.id }))
}

/// The slow-disk failpoint: 404 unless `--enable-failpoints`.
async fn disk_delay(State(app): State<Arc<App>>, Body(b): Body<DiskDelayBody>) -> Answer {
    let delay = app.disk_delay.as_ref().ok_or_else(ApiError::not_found)?;
    let ms = Duration::from_millis(b.ms);
    if ms > super::failpoints::MAX_DISK_DELAY {
        return Err(ApiError::bad_request(format!(
            "ms: at most {} ms",
            super::failpoints::MAX_DISK_DELAY.as_millis()
        )));
    }
    delay.set(ms);
    tracing::warn!(ms = b.ms, "failpoint: disk delay set");
    ok(json!({ "disk_delay_ms": b.ms }))
}

async fn leader_transfer(
    State(app): State<Arc<App>>,
    p: Params,
    Body(b): Body<TransferBody>,
) -> Answer {
    let node = app.kv.node();
    let st = node.status();
    let target = match b.to {
        Some(0) => return Err(ApiError::bad_request("member id 0 is reserved")),
        Some(to) => NodeId(to),
        None => st
            .voters
            .iter()
            .copied()
            .find(|v| *v != st.id)
            .ok_or_else(|| ApiError::bad_request("no other voter to hand leadership to"))?,
    };
    within(p.deadline, node.transfer_leader(target)).await?;
    ok(json!({ "leader": target.0 }))
}

fn role(r: Role) -> &'static str {
    match r {
        Role::Follower => "follower",
        Role::PreCandidate => "pre_candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

async fn status(State(app): State<Arc<App>>) -> Answer {
    let st = app.kv.node().status();
    ok(json!({
        "id": st.id.0,
        "cluster_id": app.cluster_id.to_string(),
        "incarnation": st.incarnation,
        "role": role(st.role),
        "term": st.term,
        "leader": st.leader.map(|l| l.0),
        "commit": st.commit,
        "applied": st.applied,
        "applied_term": st.applied_term,
        "voters": st.voters.iter().map(|v| v.0).collect::<Vec<_>>(),
        "learners": st.learners.iter().map(|v| v.0).collect::<Vec<_>>(),
        "pending_proposals": st.pending_proposals,
        "tick_lag_us": st.tick_lag.as_micros() as u64,
        "fatal": st.fatal.map(|e| e.to_string()),
        "removed": st.removed,
        "peers": st.peers.iter().map(|p| json!({
            "id": p.id.0,
            "voter": p.voter,
            "state": p.state.as_str(),
            "matched": p.matched,
            "next_index": p.next_index,
            "paused": p.paused,
            "recent_active": p.recent_active,
            "pending_snapshot": p.pending_snapshot,
            "inflight_full": p.inflight_full,
        })).collect::<Vec<_>>(),
        "watchers": app.kv.watchers(),
        "listen": app.transport.local_addr().to_string(),
        "http": app.http_addr.to_string(),
    }))
}

/// A hash of the member's whole state at its applied index
/// ([`ha_raft::state_digest`]): members at the same `applied_index` must
/// answer the same `sha256`. Reads every key; for checks, not a hot path.
async fn digest(State(app): State<Arc<App>>) -> Answer {
    let state = app.state.clone();
    let d = tokio::task::spawn_blocking(move || ha_raft::state_digest(&*state))
        .await
        .map_err(|e| ApiError::from(Error::fatal(format!("the digest task failed: {e}"))))?
        .map_err(|e| ApiError::from(Error::from(e)))?;
    ok(match d {
        Some(d) => json!({
            "applied_index": d.applied_index,
            "applied_term": d.applied_term,
            "keys": d.keys,
            "sha256": d.hex(),
        }),
        None => json!({ "applied_index": 0, "applied_term": 0, "keys": 0, "sha256": null }),
    })
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let (healthy, body) = app.health();
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let (healthy, _) = app.health();
    let text = app.metrics.render(healthy);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
