//! Membership requests that any member answers by forwarding them to the
//! leader: join by address and address update.
//!
//! The member asked over HTTP (`POST /v1/members/join`,
//! `POST /v1/members/{id}/address`) sends the request to the leader as an
//! application peer call ([`KvNode::call_leader_app`](ha_raft::KvNode::call_leader_app),
//! over the authenticated peer connection); the leader makes the
//! membership change and answers with the HTTP status and JSON body the
//! asked member relays. No member needs to know another's HTTP address.
//!
//! The joining side ([`join_group`]) is ha-node started with
//! `--join <address>`: it asks, retries what certainly did not take
//! effect, and learns the cluster's identity and members from the answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ha_client::wire::WireError;
use ha_core::{ClusterId, Error, NodeId};
use ha_raft::CallHandler;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::App;
use super::error::ApiError;
use super::identity::{StoredIdentity, hex};

/// `POST /v1/members/join`: add the sender as a learner.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    /// The id asked for; absent: the leader picks one never used before.
    #[serde(default)]
    pub id: Option<u64>,
    /// The new member's peer address, `IP:port`.
    pub address: String,
    /// Make it a voter once caught up (default true).
    #[serde(default = "yes")]
    pub promote_when_caught_up: bool,
}

fn yes() -> bool {
    true
}

/// The answer to a join: who the new member is and what it needs to
/// start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReply {
    /// The new member's id.
    pub member_id: u64,
    /// The cluster id in full (hex).
    pub cluster_id: String,
    /// The ids the group was bootstrapped with (the cluster id derives
    /// from them and the token).
    pub initial_members: Vec<u64>,
    /// The group's cluster token.
    pub cluster_token: String,
    /// The members' peer addresses (the new one included).
    pub members: BTreeMap<u64, SocketAddr>,
    /// The leader that added it.
    pub leader: u64,
}

/// `POST /v1/members/{id}/address`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressBody {
    /// The member's new peer address, `IP:port`.
    pub address: String,
}

/// What one member asks the leader (JSON in an application call).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum LeaderRequest {
    Join(JoinBody),
    Address {
        id: u64,
        address: String,
    },
    /// Removes a member (etcd's MemberRemove through any member).
    Remove {
        id: u64,
    },
    /// Makes a learner a voter (etcd's MemberPromote).
    Promote {
        id: u64,
    },
    /// Hands leadership to `id` (etcd's MoveLeader).
    MoveLeader {
        id: u64,
    },
    /// For a member that knows no leader (one restarted on a new port,
    /// which the leader cannot reach yet): the member called passes
    /// `request` on to its leader.
    Relay {
        request: Box<LeaderRequest>,
    },
}

/// The leader's answer: an HTTP status and JSON body to relay.
#[derive(Debug, Serialize, Deserialize)]
struct LeaderAnswer {
    status: u16,
    body: Value,
}

impl LeaderAnswer {
    fn ok(body: Value) -> Self {
        LeaderAnswer { status: 200, body }
    }

    fn err(e: ApiError) -> Self {
        LeaderAnswer {
            status: e.0.status,
            body: e.body(),
        }
    }
}

/// A 409 for a member that exists already.
fn already_member(id: u64, address: &str) -> ApiError {
    ApiError(WireError {
        status: 409,
        code: "already_a_member".into(),
        message: format!(
            "member {id} is already a member (address {address}); a member that lost its data joins again under a new id (omit --id)"
        ),
        not_applied: true,
        details: [("id".to_string(), json!(id))].into_iter().collect(),
    })
}

/// Answers [`LeaderRequest`]s on the leader. Holds the app weakly: the
/// engine keeps the handler, the app keeps the engine.
pub(crate) struct LeaderCalls {
    pub(crate) app: Weak<App>,
}

#[async_trait]
impl CallHandler for LeaderCalls {
    async fn handle(&self, from: NodeId, request: Bytes) -> ha_core::Result<Bytes> {
        let Some(app) = self.app.upgrade() else {
            return Err(Error::Shutdown);
        };
        let answer = match serde_json::from_slice::<LeaderRequest>(&request) {
            Ok(LeaderRequest::Join(body)) => match join_here(&app, body).await {
                Ok(reply) => match serde_json::to_value(reply) {
                    Ok(v) => LeaderAnswer::ok(v),
                    Err(e) => LeaderAnswer::err(ApiError::bad_request(e.to_string())),
                },
                Err(e) => LeaderAnswer::err(e),
            },
            Ok(LeaderRequest::Address { id, address }) => {
                match address_here(&app, id, &address).await {
                    Ok(v) => LeaderAnswer::ok(v),
                    Err(e) => LeaderAnswer::err(e),
                }
            }
            Ok(LeaderRequest::Remove { id }) => {
                change_here(&app, "removed", id, app.kv.node().remove_member(NodeId(id))).await
            }
            Ok(LeaderRequest::Promote { id }) => {
                change_here(&app, "promoted", id, app.kv.node().promote(NodeId(id))).await
            }
            Ok(LeaderRequest::MoveLeader { id }) => {
                change_here(
                    &app,
                    "leader",
                    id,
                    app.kv.node().transfer_leader(NodeId(id)),
                )
                .await
            }
            Ok(LeaderRequest::Relay { request }) => {
                if matches!(*request, LeaderRequest::Relay { .. }) {
                    LeaderAnswer::err(ApiError::bad_request("a relay is relayed once"))
                } else {
                    match forward(&app, &request, None, app.settings.request_timeout).await {
                        Ok((status, body)) => LeaderAnswer { status, body },
                        Err(e) => LeaderAnswer::err(e),
                    }
                }
            }
            Err(e) => LeaderAnswer::err(ApiError::bad_json(format!(
                "membership call from member {from}: {e}"
            ))),
        };
        serde_json::to_vec(&answer)
            .map(Bytes::from)
            .map_err(|e| Error::fatal(format!("encoding a membership answer: {e}")))
    }
}

fn parse_addr(address: &str) -> Result<SocketAddr, ApiError> {
    let addr: SocketAddr = address
        .parse()
        .map_err(|e| ApiError::bad_request(format!("address `{address}` is not IP:port: {e}")))?;
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(ApiError::bad_request(format!(
            "address `{address}` cannot be dialled (unspecified IP or port 0)"
        )));
    }
    Ok(addr)
}

/// Every member's peer address as the leader knows it: the replicated one,
/// else its address book, else (itself) its advertised address.
fn peer_addresses(app: &App) -> BTreeMap<u64, SocketAddr> {
    let m = app.kv.node().membership();
    m.members
        .iter()
        .filter_map(|mi| {
            let replicated = std::str::from_utf8(&mi.address)
                .ok()
                .and_then(|a| a.parse::<SocketAddr>().ok());
            let addr = replicated.or_else(|| {
                if mi.id == app.id {
                    Some(app.advertise)
                } else {
                    app.transport.peer_addr(mi.id)
                }
            })?;
            Some((mi.id.0, addr))
        })
        .collect()
}

/// Adds the joining member (this member being the leader).
async fn join_here(app: &App, body: JoinBody) -> Result<JoinReply, ApiError> {
    let addr = parse_addr(&body.address)?;
    let node = app.kv.node();
    let m = node.membership();
    let id = match body.id {
        Some(0) => return Err(ApiError::bad_request("member id 0 is reserved")),
        Some(id) => id,
        // Never used before: above every member, removed member and
        // initial member. A concurrent join that picked the same id fails
        // as already a member and may ask again.
        None => {
            let initial = app
                .identity
                .initial_members
                .iter()
                .max()
                .map_or(0, |i| i + 1);
            m.unused_id().0.max(initial)
        }
    };
    // A learner added ahead of its start (etcd's MemberAdd, then the
    // member started with --join and that id) joins as what it is: a
    // learner holds no vote, so one that lost its data may start over
    // under its id. A voter may not: it could vote twice in a term.
    let pre_added = match m.members.iter().find(|x| x.id.0 == id) {
        Some(existing)
            if body.id.is_some()
                && existing.role == ha_raft::MemberRole::Learner
                && existing.address.as_ref() == addr.to_string().as_bytes() =>
        {
            true
        }
        Some(existing) => {
            return Err(already_member(
                id,
                &String::from_utf8_lossy(&existing.address),
            ));
        }
        None => false,
    };
    let timeout = app.settings.request_timeout;
    if pre_added {
        tracing::info!(member = id, %addr, "an added learner started and asked for the group's identity");
    } else {
        match tokio::time::timeout(
            timeout + Duration::from_secs(1),
            node.add_learner(
                NodeId(id),
                addr.to_string().into_bytes(),
                body.promote_when_caught_up,
            ),
        )
        .await
        {
            Ok(r) => r.map_err(ApiError::from)?,
            Err(_) => return Err(ApiError::deadline_exceeded(timeout)),
        }
        tracing::info!(member = id, %addr, promote = body.promote_when_caught_up, "member joined as a learner");
    }
    app.transport.set_peer(NodeId(id), addr);
    let mut members = peer_addresses(app);
    members.insert(id, addr);
    Ok(JoinReply {
        member_id: id,
        cluster_id: hex(&app.cluster_id),
        initial_members: app.identity.initial_members.clone(),
        cluster_token: app.identity.cluster_token.clone(),
        members,
        leader: app.id.0,
    })
}

/// A membership change of member `id` made here (this member being the
/// leader), answered as `{"<what>": id}`.
async fn change_here(
    app: &App,
    what: &str,
    id: u64,
    change: impl std::future::Future<Output = ha_core::Result<()>>,
) -> LeaderAnswer {
    let timeout = app.settings.request_timeout;
    match tokio::time::timeout(timeout + Duration::from_secs(1), change).await {
        Ok(Ok(())) => {
            tracing::info!(
                member = id,
                what,
                "membership change made for another member"
            );
            LeaderAnswer::ok(json!({ what: id }))
        }
        Ok(Err(e)) => LeaderAnswer::err(ApiError::from(e)),
        Err(_) => LeaderAnswer::err(ApiError::deadline_exceeded(timeout)),
    }
}

/// Changes member `id`'s replicated address (this member being the
/// leader).
async fn address_here(app: &App, id: u64, address: &str) -> Result<Value, ApiError> {
    let addr = parse_addr(address)?;
    let node = app.kv.node();
    if !node.membership().members.iter().any(|x| x.id.0 == id) {
        return Err(ApiError(WireError {
            status: 404,
            code: "no_such_member".into(),
            message: format!("member {id} is not a member"),
            not_applied: true,
            details: [("id".to_string(), json!(id))].into_iter().collect(),
        }));
    }
    let timeout = app.settings.request_timeout;
    match tokio::time::timeout(
        timeout + Duration::from_secs(1),
        node.update_address(NodeId(id), addr.to_string().into_bytes()),
    )
    .await
    {
        Ok(r) => r.map_err(ApiError::from)?,
        Err(_) => return Err(ApiError::deadline_exceeded(timeout)),
    }
    if id != app.id.0 {
        app.transport.set_peer(NodeId(id), addr);
    }
    tracing::info!(member = id, %addr, "member address updated");
    Ok(json!({ "id": id, "address": addr.to_string() }))
}

/// Sends `request` to the leader (this member's own handler if it leads),
/// or to member `to`, and relays its answer.
async fn forward(
    app: &App,
    request: &LeaderRequest,
    to: Option<NodeId>,
    deadline: Duration,
) -> Result<(u16, Value), ApiError> {
    let bytes = serde_json::to_vec(request)
        .map_err(|e| ApiError::bad_request(format!("cannot encode the request: {e}")))?;
    let call = async {
        match to {
            Some(to) => app.kv.call_app(to, &bytes, deadline).await,
            None => app.kv.call_leader_app(&bytes, deadline).await,
        }
    };
    let reply = match tokio::time::timeout(deadline + Duration::from_secs(1), call).await {
        Ok(r) => r.map_err(ApiError::from)?,
        Err(_) => return Err(ApiError::deadline_exceeded(deadline)),
    };
    let answer: LeaderAnswer = serde_json::from_slice(&reply).map_err(|e| {
        ApiError(WireError::bad_answer(format!(
            "the leader's membership answer: {e}"
        )))
    })?;
    Ok((answer.status, answer.body))
}

/// `POST /v1/members/join` on any member.
pub(crate) async fn join_route(
    app: &App,
    body: JoinBody,
    deadline: Duration,
) -> Result<(u16, Value), ApiError> {
    forward(app, &LeaderRequest::Join(body), None, deadline).await
}

/// `POST /v1/members/{id}/address` on any member.
pub(crate) async fn address_route(
    app: &App,
    id: u64,
    body: AddressBody,
    deadline: Duration,
) -> Result<(u16, Value), ApiError> {
    forward(
        app,
        &LeaderRequest::Address {
            id,
            address: body.address,
        },
        None,
        deadline,
    )
    .await
}

/// Keeps this member's replicated address equal to the address it
/// advertises: after a restart on a new peer port (same data directory)
/// it asks the leader for an address update, retrying until the change is
/// applied or the member stops. A member whose replicated address is
/// empty (an initial member) counts as having the address it was first
/// started with. While it knows no leader (the leader may still dial
/// its old address), it asks the other members in turn to relay.
pub(crate) async fn announce_address(app: Arc<App>, first_address: Option<SocketAddr>) {
    let mut pause = Duration::from_millis(200);
    let mut turn = 0usize;
    loop {
        if app.is_stopping() {
            return;
        }
        let m = app.kv.node().membership();
        if let Some(me) = m.members.iter().find(|x| x.id == app.id) {
            let replicated = std::str::from_utf8(&me.address)
                .ok()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .or(first_address);
            if replicated == Some(app.advertise)
                || (me.address.is_empty() && first_address.is_none())
            {
                return;
            }
            let request = LeaderRequest::Address {
                id: app.id.0,
                address: app.advertise.to_string(),
            };
            let others: Vec<NodeId> = m
                .members
                .iter()
                .map(|x| x.id)
                .filter(|&x| x != app.id)
                .collect();
            let timeout = app.settings.request_timeout;
            let sent = match (app.kv.node().leader().leader, others.is_empty()) {
                (None, false) => {
                    turn = turn.wrapping_add(1);
                    let via = others[turn % others.len()];
                    let relay = LeaderRequest::Relay {
                        request: Box::new(request),
                    };
                    forward(&app, &relay, Some(via), timeout).await
                }
                _ => forward(&app, &request, None, timeout).await,
            };
            match sent {
                Ok((200, _)) => {
                    tracing::info!(address = %app.advertise, "announced this member's new peer address");
                }
                Ok((status, body)) => {
                    tracing::info!(status, %body, "address update refused; retrying");
                }
                Err(e) => tracing::info!(error = %e.body(), "address update failed; retrying"),
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Why joining a group failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// No member answered at the address.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// Where.
        url: String,
        /// The last connection error.
        reason: String,
    },
    /// Something answered that is not a member of an ha group (or not one
    /// that can serve the request: a removed member, another program).
    #[error("{url} is not a member of a group: {reason}")]
    NotAMember {
        /// Where.
        url: String,
        /// What it answered.
        reason: String,
    },
    /// The group belongs to another cluster token than `--cluster-token`.
    #[error(
        "{url} is a member of another cluster (token `{found}`, not --cluster-token `{expected}`)"
    )]
    OtherCluster {
        /// Where.
        url: String,
        /// The token given.
        expected: String,
        /// The group's.
        found: String,
    },
    /// The id asked for is a member already.
    #[error(
        "member {id} is already a member; a member that lost its data joins again under a new id (omit --id)"
    )]
    AlreadyMember {
        /// The id.
        id: u64,
    },
    /// The id asked for was removed; ids are never reused.
    #[error(
        "member id {id} was removed from the group and is never reused: omit --id or pick a new one"
    )]
    IdReused {
        /// The id.
        id: u64,
    },
    /// The group refused (a bad address, a membership change in progress
    /// that did not end in time, ...).
    #[error("the group refused the join: HTTP {status} {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// No answer that settles it within the deadline. When the last
    /// attempt's outcome is unknown, the group may have added this member:
    /// see `GET /v1/members`.
    #[error(
        "no join within {after:?} (last: {last}); if the last attempt's outcome was unknown the group may hold a learner at this address: check GET /v1/members and remove it, or join with --id"
    )]
    Deadline {
        /// The deadline.
        after: Duration,
        /// The last error.
        last: String,
    },
    /// The HTTP client cannot be built (TLS files).
    #[error("join client: {0}")]
    Client(String),
}

/// The client API URL for `address` (`IP:port`, `host:port` or a URL).
pub fn join_url(address: &str, tls: bool) -> String {
    let base = if address.starts_with("http://") || address.starts_with("https://") {
        address.trim_end_matches('/').to_string()
    } else if tls {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    };
    format!("{base}/v1/members/join")
}

/// An HTTP(S) client for the join request: with TLS, it trusts only the
/// group's CA and presents this member's own certificate.
fn join_client(tls: Option<&ha_raft::tls::TlsFiles>) -> Result<reqwest::Client, JoinError> {
    let client = |e: &dyn std::fmt::Display| JoinError::Client(e.to_string());
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0);
    if let Some(files) = tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| JoinError::Client(format!("{}: {e}", p.display())))
        };
        let ca = reqwest::Certificate::from_pem(&read(&files.ca)?).map_err(|e| client(&e))?;
        let mut pem = read(&files.cert)?;
        pem.push(b'\n');
        pem.extend(read(&files.key)?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| client(&e))?;
        b = b
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(identity);
    }
    b.build().map_err(|e| client(&e))
}

/// Asks the member at `address` to add this one, until `deadline`:
/// retries while the answer says nothing was applied (no leader yet, a
/// leader change, a connection refused), and fails at once on a refusal.
/// Checks that the answer's cluster id derives from its members and token,
/// and that the token is `expected_token` when one is given.
///
/// # Errors
/// See [`JoinError`].
pub async fn join_group(
    address: &str,
    body: &JoinBody,
    tls: Option<&ha_raft::tls::TlsFiles>,
    expected_token: Option<&str>,
    deadline: Duration,
) -> Result<JoinReply, JoinError> {
    let url = join_url(address, tls.is_some());
    let client = join_client(tls)?;
    let start = Instant::now();
    let mut last: Option<JoinError> = None;
    let mut pause = Duration::from_millis(100);
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(match last {
                Some(e @ JoinError::Unreachable { .. }) => e,
                Some(e) => JoinError::Deadline {
                    after: deadline,
                    last: e.to_string(),
                },
                None => JoinError::Deadline {
                    after: deadline,
                    last: "nothing".into(),
                },
            });
        }
        let timeout_ms = left.as_millis().clamp(1, 30_000) as u64;
        let sent = client
            .post(format!("{url}?timeout_ms={timeout_ms}"))
            .timeout(left + Duration::from_secs(2))
            .json(body)
            .send()
            .await;
        let retry = match sent {
            Err(e) if e.is_connect() => JoinError::Unreachable {
                url: url.clone(),
                reason: format!("{e:#}"),
            },
            Err(e) => {
                // Sent, no answer: the outcome is unknown; asking again
                // with a fresh id could add a second learner.
                return Err(JoinError::Deadline {
                    after: start.elapsed(),
                    last: format!("{e:#}"),
                });
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let bytes = response.bytes().await.unwrap_or_default();
                if status == 200 {
                    let reply: JoinReply =
                        serde_json::from_slice(&bytes).map_err(|e| JoinError::NotAMember {
                            url: url.clone(),
                            reason: format!("answer is not a join reply: {e}"),
                        })?;
                    return check_reply(&url, reply, expected_token);
                }
                let w = WireError::from_body(status, &bytes);
                match (w.code.as_str(), w.not_applied) {
                    ("already_a_member", _) => {
                        return Err(JoinError::AlreadyMember {
                            id: body.id.unwrap_or_default(),
                        });
                    }
                    ("member_id_reused", _) => {
                        return Err(JoinError::IdReused {
                            id: body.id.unwrap_or_default(),
                        });
                    }
                    ("bad_answer" | "no_such_route", _) => {
                        return Err(JoinError::NotAMember {
                            url: url.clone(),
                            reason: format!("HTTP {status}: {}", w.message),
                        });
                    }
                    (_, true) if status >= 500 || status == 409 => JoinError::Refused {
                        status,
                        code: w.code,
                        message: w.message,
                    },
                    (_, true) => {
                        return Err(JoinError::Refused {
                            status,
                            code: w.code,
                            message: w.message,
                        });
                    }
                    (_, false) => {
                        return Err(JoinError::Deadline {
                            after: start.elapsed(),
                            last: format!("HTTP {status} {}: {}", w.code, w.message),
                        });
                    }
                }
            }
        };
        tracing::info!(error = %retry, "join: not yet; asking again");
        last = Some(retry);
        tokio::time::sleep(pause.min(deadline.saturating_sub(start.elapsed()))).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

fn check_reply(
    url: &str,
    reply: JoinReply,
    expected_token: Option<&str>,
) -> Result<JoinReply, JoinError> {
    if let Some(expected) = expected_token.filter(|t| *t != reply.cluster_token) {
        return Err(JoinError::OtherCluster {
            url: url.to_string(),
            expected: expected.to_string(),
            found: reply.cluster_token,
        });
    }
    let ids: Vec<NodeId> = reply.initial_members.iter().map(|&i| NodeId(i)).collect();
    if hex(&ClusterId::derive(&ids, &reply.cluster_token)) != reply.cluster_id
        || reply.member_id == 0
        || reply.initial_members.contains(&reply.member_id)
    {
        return Err(JoinError::NotAMember {
            url: url.to_string(),
            reason: "the join reply's cluster id, members and new id do not agree".into(),
        });
    }
    Ok(reply)
}

impl JoinReply {
    /// What the joined member stores in its data directory.
    pub fn identity(&self) -> StoredIdentity {
        StoredIdentity {
            member_id: self.member_id,
            cluster_id: self.cluster_id.clone(),
            initial_members: self.initial_members.clone(),
            cluster_token: self.cluster_token.clone(),
            peers: self.members.clone(),
        }
    }
}

/// The etcd gateway's view of the group: state answered by this member,
/// changes forwarded to the leader (as joins are), so that every member's
/// gateway accepts MemberAdd, MemberUpdate, MemberRemove, MemberPromote
/// and MoveLeader, as etcd's members do.
pub(crate) struct GatewayCluster {
    pub(crate) app: Arc<App>,
}

impl GatewayCluster {
    /// `request` answered by the leader, its error as the in-process one.
    async fn on_leader(&self, request: LeaderRequest) -> ha_core::Result<Value> {
        let app = &self.app;
        let leader = app.kv.node().leader().leader;
        match forward(app, &request, None, app.settings.request_timeout).await {
            Ok((200, body)) => Ok(body),
            Ok((status, body)) => {
                let bytes = serde_json::to_vec(&body).unwrap_or_default();
                Err(WireError::from_body(status, &bytes).into_error(leader))
            }
            Err(ApiError(e)) => Err(e.into_error(leader)),
        }
    }
}

#[async_trait]
impl ha_etcd::ClusterInfo for GatewayCluster {
    fn status(&self) -> ha_etcd::MemberStatus {
        ha_etcd::ClusterInfo::status(&self.app.kv)
    }

    fn members(&self) -> Vec<ha_etcd::ClusterMember> {
        ha_etcd::ClusterInfo::members(&self.app.kv)
    }

    async fn add_member(
        &self,
        peer_address: String,
        learner: bool,
    ) -> ha_core::Result<ha_etcd::ClusterMember> {
        let body = self
            .on_leader(LeaderRequest::Join(JoinBody {
                id: None,
                address: peer_address.clone(),
                promote_when_caught_up: !learner,
            }))
            .await?;
        let reply: JoinReply = serde_json::from_value(body).map_err(|e| Error::CallFailed {
            peer: self.app.kv.node().leader().leader.unwrap_or_default(),
            reason: format!("the leader's join answer: {e}").into(),
        })?;
        Ok(ha_etcd::ClusterMember {
            id: NodeId(reply.member_id),
            peer_address,
            is_learner: true,
        })
    }

    async fn update_member(&self, id: NodeId, peer_address: String) -> ha_core::Result<()> {
        self.on_leader(LeaderRequest::Address {
            id: id.0,
            address: peer_address,
        })
        .await
        .map(drop)
    }

    async fn remove_member(&self, id: NodeId) -> ha_core::Result<()> {
        // A leader asked to remove itself hands leadership over and answers
        // `NotLeader` naming the new leader (`Node::change_membership`):
        // ask again once this member knows it (etcd lets a leader remove
        // itself in one call). The new leader may refuse for a moment
        // ("unhealthy cluster") until it has heard from every member.
        let was_leader = self.app.kv.node().leader().leader == Some(id);
        let deadline = Instant::now() + self.app.settings.request_timeout;
        let mut handed_over = false;
        loop {
            match self.on_leader(LeaderRequest::Remove { id: id.0 }).await {
                Err(Error::NotLeader { .. }) if was_leader && Instant::now() < deadline => {
                    handed_over = true;
                }
                Err(Error::UnsafeMembershipChange { .. })
                    if handed_over && Instant::now() < deadline => {}
                other => return other.map(drop),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn promote_member(&self, id: NodeId) -> ha_core::Result<()> {
        self.on_leader(LeaderRequest::Promote { id: id.0 })
            .await
            .map(drop)
    }

    async fn move_leader(&self, id: NodeId) -> ha_core::Result<()> {
        self.on_leader(LeaderRequest::MoveLeader { id: id.0 })
            .await
            .map(drop)
    }
}
