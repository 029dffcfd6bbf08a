//! Simulated clients: async tasks on the simulator's executor that call the
//! group through a request board, which the world serves.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::executor::SECONDS;
use super::executor::{Nanos, SimClock};
use super::history::{Consistency, Outcome};
use super::kvload::{self, KvRequest};
use super::rng::SimRng;

/// What a client asks a member to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    Write {
        key: u8,
        value: u64,
    },
    Read {
        key: u8,
        consistency: Consistency,
    },
    /// The KV workload.
    Kv(KvRequest),
    /// A call of a [`super::SimKv`] (code under test, such as a recipe):
    /// its bytes wait on the board (see [`Board::call_raw`]).
    Raw(RawKind),
}

/// What a [`super::SimKv`] call asks of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RawKind {
    /// Propose an encoded `KvCommand`.
    Propose,
    /// Answer an encoded `KvQuery` at this consistency.
    Read(Consistency),
    /// Renew a lease (the leader's lease manager; followers forward),
    /// giving up after `timeout_ms`.
    KeepAlive { lease: i64, timeout_ms: u64 },
    /// A lease's time left (the leader's lease manager), giving up after
    /// `timeout_ms`.
    TimeToLive { lease: i64, timeout_ms: u64 },
    /// Open a watch on the member's hub.
    Watch,
}

/// What a raw call carries besides its kind.
pub(crate) enum RawPayload {
    Bytes(Vec<u8>),
    Watch(ha_core::WatchRequest, super::kvclient::WatchFeed),
}

/// What a raw call got back, besides its [`Reply`].
#[derive(Debug)]
pub(crate) enum RawResult {
    /// The machine's encoded reply (to a command or a query).
    Bytes(bytes::Bytes),
    /// A lease call answered by the leader `leader` in `term`.
    Lease {
        ttl: std::time::Duration,
        leader: u64,
        term: u64,
    },
    /// The lease manager refused.
    Refused(crate::kv::lease::Refusal),
    /// The watch is open on the member under this id.
    Watching(ha_core::WatchId),
    /// The engine failed the call.
    Error(ha_core::Error),
}

impl Request {
    /// May change the state (an unknown outcome is possible).
    pub(crate) fn is_write(&self) -> bool {
        match self {
            Request::Write { .. } => true,
            Request::Read { .. } => false,
            Request::Kv(r) => r.is_write(),
            Request::Raw(k) => *k == RawKind::Propose,
        }
    }
}

/// What the client hears back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) outcome: Outcome,
    /// The member was down or crashed meanwhile (connection refused or
    /// reset): the client fails over to another member for a while.
    pub(crate) member_lost: bool,
    /// KV workload, a successful get: the key's mod_revision (0: absent).
    pub(crate) mod_revision: Option<i64>,
}

/// KV workload: clients that grant leases, attach keys, keep them alive
/// for a while, then revoke them or let them expire.
const LEASE_CLIENTS: usize = 3;

/// How long a client avoids a member that it lost.
const FAILOVER: Nanos = SECONDS;

/// A request the world has not picked up yet.
pub(crate) struct Submitted {
    pub(crate) id: u64,
    pub(crate) client: u64,
    pub(crate) member: usize,
    pub(crate) request: Request,
}

#[derive(Default)]
struct BoardInner {
    next_id: u64,
    submitted: Vec<Submitted>,
    replies: BTreeMap<u64, Reply>,
    wakers: BTreeMap<u64, Waker>,
    payloads: BTreeMap<u64, RawPayload>,
    raw_results: BTreeMap<u64, RawResult>,
}

/// Where clients leave requests and find replies.
#[derive(Clone, Default)]
pub(crate) struct Board(Arc<Mutex<BoardInner>>);

impl Board {
    /// Submits a request; the future resolves with the reply.
    pub(crate) fn call(&self, client: u64, member: usize, request: Request) -> ReplyFuture {
        let mut b = self.0.lock();
        let id = b.next_id;
        b.next_id += 1;
        b.submitted.push(Submitted {
            id,
            client,
            member,
            request,
        });
        ReplyFuture {
            board: self.clone(),
            id,
        }
    }

    /// Submits a raw call (see [`Request::Raw`]).
    pub(crate) fn call_raw(
        &self,
        client: u64,
        member: usize,
        kind: RawKind,
        payload: RawPayload,
    ) -> ReplyFuture {
        let mut b = self.0.lock();
        let id = b.next_id;
        b.payloads.insert(id, payload);
        drop(b);
        self.call(client, member, Request::Raw(kind))
    }

    /// The payload of raw call `id` (once).
    pub(crate) fn take_payload(&self, id: u64) -> Option<RawPayload> {
        self.0.lock().payloads.remove(&id)
    }

    /// Leaves what raw call `id` got, for its caller.
    pub(crate) fn set_raw_result(&self, id: u64, result: RawResult) {
        self.0.lock().raw_results.insert(id, result);
    }

    /// What raw call `id` got (once), after its reply.
    pub(crate) fn take_raw_result(&self, id: u64) -> Option<RawResult> {
        self.0.lock().raw_results.remove(&id)
    }

    /// The requests submitted since the last call, in order.
    pub(crate) fn take_submitted(&self) -> Vec<Submitted> {
        std::mem::take(&mut self.0.lock().submitted)
    }

    pub(crate) fn reply(&self, id: u64, reply: Reply) {
        let waker = {
            let mut b = self.0.lock();
            b.replies.insert(id, reply);
            b.wakers.remove(&id)
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The future of [`Board::call`].
pub(crate) struct ReplyFuture {
    board: Board,
    pub(crate) id: u64,
}

impl Future for ReplyFuture {
    type Output = Reply;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        let mut b = self.board.0.lock();
        match b.replies.remove(&self.id) {
            Some(r) => Poll::Ready(r),
            None => {
                b.wakers.insert(self.id, cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// One planned operation of a client.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlannedOp {
    pub(crate) think: Nanos,
    pub(crate) member: usize,
    pub(crate) request: Request,
}

/// The operations of one client.
pub(crate) struct ClientPlan {
    /// A reader that lives in a member's process: it reads through that
    /// member only (and restarts with it), never fails over.
    pub(crate) pinned: bool,
    pub(crate) ops: Vec<PlannedOp>,
}

/// Draws the operations of every client: `clients` that write and read
/// through any member, and `readers` per member pinned to it. Values are
/// unique in the run. KV workload: also the lease clients, drawn from
/// `lease_rng` (their TTLs from `ttls`, in ms).
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_workload(
    rng: &mut SimRng,
    lease_rng: &mut SimRng,
    ttls: (u64, u64),
    clients: usize,
    readers: usize,
    ops_per_client: usize,
    members: usize,
    keys: usize,
    span: Nanos,
    lease_focus: bool,
    kv_workload: bool,
) -> Vec<ClientPlan> {
    let mut next_value = 1u64;
    let mean_think = span / ops_per_client.max(1) as u64;
    if kv_workload {
        let mut plans = Vec::new();
        for c in 0..clients + members * readers {
            let pinned = c >= clients;
            let home = if pinned {
                (c - clients) / readers.max(1)
            } else {
                rng.below(members)
            };
            let requests = kvload::plan_ops(rng, ops_per_client, keys, pinned, &mut next_value);
            let ops = requests
                .into_iter()
                .map(|r| PlannedOp {
                    think: kvload::think(rng, mean_think),
                    member: if pinned || rng.chance(0.7) {
                        home
                    } else {
                        rng.below(members)
                    },
                    request: Request::Kv(r),
                })
                .collect();
            plans.push(ClientPlan { pinned, ops });
        }
        for c in 0..LEASE_CLIENTS {
            let ops = kvload::plan_lease_client(lease_rng, c, members, span, &mut next_value, ttls);
            plans.push(ClientPlan { pinned: false, ops });
        }
        return plans;
    }
    let mut plans: Vec<ClientPlan> = (0..clients)
        .map(|_| {
            // Each client favours one member (its process), sometimes
            // another.
            let home = rng.below(members);
            let ops = (0..ops_per_client)
                .map(|_| {
                    let key = rng.below(keys.max(1)) as u8;
                    let member = if rng.chance(0.7) {
                        home
                    } else {
                        rng.below(members)
                    };
                    let roll = rng.below(100);
                    let consistency = match (roll, lease_focus) {
                        (0..=44, _) => None,
                        (45..=59, false) | (45..=54, true) => Some(Consistency::Linearizable),
                        (60..=84, false) | (55..=94, true) => Some(Consistency::Lease),
                        _ => Some(Consistency::Serializable),
                    };
                    let request = match consistency {
                        None => {
                            next_value += 1;
                            Request::Write {
                                key,
                                value: next_value - 1,
                            }
                        }
                        Some(consistency) => Request::Read { key, consistency },
                    };
                    PlannedOp {
                        think: rng.between(0, 2 * mean_think),
                        member,
                        request,
                    }
                })
                .collect();
            ClientPlan { pinned: false, ops }
        })
        .collect();
    for member in 0..members {
        for _ in 0..readers {
            let ops = (0..ops_per_client)
                .map(|_| {
                    let key = rng.below(keys.max(1)) as u8;
                    let consistency = match (rng.below(10), lease_focus) {
                        (0..=3, false) | (0, true) => Consistency::Linearizable,
                        (4..=7, false) | (1..=8, true) => Consistency::Lease,
                        _ => Consistency::Serializable,
                    };
                    PlannedOp {
                        think: rng.between(0, 2 * mean_think),
                        member,
                        request: Request::Read { key, consistency },
                    }
                })
                .collect();
            plans.push(ClientPlan { pinned: true, ops });
        }
    }
    plans
}

/// A client: its operations one after the other, thinking in between.
/// An unpinned client fails over to the next member while the planned one
/// was lost lately.
pub(crate) async fn run_client(
    board: Board,
    clock: SimClock,
    client: u64,
    members: usize,
    plan: ClientPlan,
) {
    let mut avoid: BTreeMap<usize, Nanos> = BTreeMap::new();
    // KV workload: the mod_revision of each key as last read, for CAS.
    let mut last_mod: BTreeMap<u8, i64> = BTreeMap::new();
    for mut op in plan.ops {
        if let Request::Kv(KvRequest::Cas { key, expect, .. }) = &mut op.request {
            *expect = last_mod.get(key).copied().unwrap_or(0);
        }
        clock.sleep_ns(op.think).await;
        let now = clock.now_ns();
        let member = (0..members)
            .map(|k| (op.member + k) % members)
            .find(|m| plan.pinned || avoid.get(m).is_none_or(|&until| until <= now))
            .unwrap_or(op.member);
        let reply = board.call(client, member, op.request).await;
        if let (Request::Kv(KvRequest::Get { key, back: 0, .. }), Some(m)) =
            (op.request, reply.mod_revision)
        {
            last_mod.insert(key, m);
        }
        if reply.member_lost && !plan.pinned {
            avoid.insert(member, clock.now_ns() + FAILOVER);
        }
    }
}
