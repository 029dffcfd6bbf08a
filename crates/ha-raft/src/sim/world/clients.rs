//! Client requests: from the board to a member's core and back, with
//! every invocation and completion recorded in the history.

use ha_core::Error;

use super::leases::LeaseCall;
use super::{Event, FINAL_CLIENT, GRACE, OpenRequest, World, key_name};
use crate::core::{Outbox, ReadReady};
use crate::sim::check::describe;
use crate::sim::client::{RawKind, Reply, Request};
use crate::sim::executor::MILLIS;
use crate::sim::history::{Consistency, HistoryOp, Inputs, OpKind, Outcome, Outputs};
use crate::sim::kv;
use crate::sim::kvload::{self, KvRequest};

impl World {
    pub(super) fn take_requests(&mut self) {
        for s in self.board.take_submitted() {
            self.invoke(s.id, s.client, s.member, s.request);
        }
    }

    /// Records an invocation and hands it to the member (as an event, so
    /// that a paused member takes it only when it resumes).
    pub(super) fn invoke(&mut self, id: u64, client: u64, member: usize, request: Request) {
        let (op, inputs) = match request {
            Request::Write { key, value } => (
                OpKind::Write,
                Inputs {
                    key: key_name(key),
                    value: Some(value),
                    ..Inputs::default()
                },
            ),
            Request::Read { key, consistency } => (
                OpKind::Read,
                Inputs {
                    key: key_name(key),
                    consistency: Some(consistency),
                    ..Inputs::default()
                },
            ),
            Request::Kv(r) => r.describe(),
            Request::Raw(kind) => (
                if kind == crate::sim::client::RawKind::Propose {
                    OpKind::OpaqueWrite
                } else {
                    OpKind::Opaque
                },
                Inputs {
                    key: "*".to_owned(),
                    ..Inputs::default()
                },
            ),
        };
        debug_assert_eq!(id, self.ops.len() as u64, "request ids are dense");
        self.ops.push(HistoryOp {
            id,
            client,
            member: member as u64 + 1,
            incarnation: 0,
            op,
            inputs,
            invoke_ns: self.now,
            complete_ns: self.now,
            outcome: Outcome::Unknown,
            outputs: Outputs::default(),
        });
        self.counters.ops += 1;
        let committed_at_invoke = self.checks.max_committed();
        self.open.insert(
            id,
            OpenRequest {
                member,
                request,
                committed_at_invoke,
            },
        );
        self.trace(|| {
            format!(
                "client {client} invokes op {id} on member {}: {request:?}",
                member + 1
            )
        });
        self.after(0, Event::Request { id });
        // Lease calls give up at their own deadline (a forward or its
        // answer may be lost); the rest at the request timeout.
        let deadline = match request {
            Request::Kv(KvRequest::KeepAlive { timeout_ms, .. })
            | Request::Raw(
                RawKind::KeepAlive { timeout_ms, .. } | RawKind::TimeToLive { timeout_ms, .. },
            ) => (timeout_ms * MILLIS).min(self.request_timeout + GRACE),
            _ => self.request_timeout + GRACE,
        };
        self.after(deadline, Event::Deadline { id });
    }

    /// A request reaches its member.
    pub(super) fn request(&mut self, id: u64) {
        let Some(r) = self.open.get(&id).copied() else {
            return;
        };
        let m = r.member;
        let instant = self.instant_of(m);
        let deadline = instant + std::time::Duration::from_nanos(self.request_timeout);
        let Some(p) = self.members[m].proc.as_mut() else {
            self.complete(id, Outcome::Fail, Outputs::error("member is down"));
            return;
        };
        self.ops[id as usize].incarnation = p.incarnation;
        let mut out = Outbox::default();
        let mut lease_hit = None;
        let mut published_hit = false;
        let serializable = match r.request {
            Request::Kv(KvRequest::KeepAlive { lease, .. }) => {
                return self.lease_call(id, m, LeaseCall::KeepAlive, lease);
            }
            Request::Raw(
                kind @ (RawKind::KeepAlive { .. } | RawKind::TimeToLive { .. } | RawKind::Watch),
            ) => {
                return self.raw_call(id, m, kind);
            }
            Request::Write { .. } | Request::Raw(RawKind::Propose) => {
                let command = match r.request {
                    Request::Write { key, value } => kv::write_command(key, value),
                    _ => match self.raw_bytes(id) {
                        Some(bytes) => bytes,
                        None => {
                            return self.complete(id, Outcome::Fail, Outputs::error("no command"));
                        }
                    },
                };
                let Some(p) = self.members[m].proc.as_mut() else {
                    return;
                };
                p.next_seq += 1;
                p.proposals.insert(p.next_seq, id);
                p.core
                    .propose(p.next_seq, command, deadline, instant, &mut out);
                false
            }
            Request::Kv(
                r @ (KvRequest::Put { .. }
                | KvRequest::Delete { .. }
                | KvRequest::Cas { .. }
                | KvRequest::Compact { .. }
                | KvRequest::LeaseGrant { .. }
                | KvRequest::LeasePut { .. }
                | KvRequest::LeaseRevoke { .. }),
            ) => {
                let mut revision = 0;
                if let KvRequest::Compact { back } = r {
                    revision = (kvload::current_revision(|q| p.applier.query(q)) - back).max(1);
                    self.ops[id as usize].inputs.revision = Some(revision);
                }
                p.next_seq += 1;
                p.proposals.insert(p.next_seq, id);
                p.core
                    .propose(p.next_seq, r.command(revision), deadline, instant, &mut out);
                false
            }
            Request::Read { consistency, .. }
            | Request::Raw(RawKind::Read(consistency))
            | Request::Kv(
                KvRequest::Get { consistency, .. }
                | KvRequest::Range { consistency }
                | KvRequest::LeaseGet { consistency, .. }
                | KvRequest::LeaseRange { consistency },
            ) => {
                if let Request::Raw(_) = r.request {
                    match self.raw_bytes(id) {
                        Some(query) => self.raw_queries.insert(id, query),
                        None => {
                            return self.complete(id, Outcome::Fail, Outputs::error("no query"));
                        }
                    };
                }
                let Some(p) = self.members[m].proc.as_mut() else {
                    return;
                };
                if let Request::Kv(KvRequest::Get { back, .. }) = r.request
                    && back > 0
                {
                    let at = (kvload::current_revision(|q| p.applier.query(q)) - back).max(1);
                    self.ops[id as usize].inputs.revision = Some(at);
                }
                p.next_token += 1;
                p.reads.insert(p.next_token, id);
                match consistency {
                    Consistency::Serializable => {
                        p.ser_reads.push(p.next_token);
                        true
                    }
                    Consistency::Lease => {
                        let token = p.next_token;
                        // As `Node::read_with`: the published grant first,
                        // answered without the core; the core otherwise.
                        if let Some(grant) = p.lease.filter(|g| instant < g.until) {
                            p.lease_used = true;
                            out.reads.push(ReadReady {
                                index: grant.commit,
                                tokens: vec![token],
                            });
                            published_hit = true;
                        } else {
                            p.core.lease_read(token, deadline, instant, &mut out);
                        }
                        lease_hit = Some(out.reads.iter().any(|r| r.tokens.contains(&token)));
                        false
                    }
                    Consistency::Linearizable => {
                        p.core.read(p.next_token, deadline);
                        false
                    }
                }
            }
        };
        if let Some(hit) = lease_hit {
            self.counters.lease_reads += 1;
            self.counters.lease_hits += u64::from(hit);
        }
        if serializable {
            self.schedule_apply(m);
        }
        if published_hit {
            // The raft thread never sees such a read.
            self.dispatch(m, out);
        } else {
            self.drive(m, out);
        }
    }

    /// Where member `m` sends a lease call: itself if it leads, else the
    /// leader it knows, if that one runs and the link between them is up
    /// both ways.
    pub(super) fn lease_target(&self, m: usize) -> Option<usize> {
        let p = self.members[m].proc.as_ref()?;
        let target = if p.core.is_leader() {
            Some(m)
        } else {
            p.core
                .leader()
                .leader
                .and_then(|n| (n.0 as usize).checked_sub(1))
                .filter(|&l| l < self.members.len())
        };
        target.filter(|&l| {
            self.up(l) && (l == m || !(self.net.is_cut(m, l) || self.net.is_cut(l, m)))
        })
    }

    pub(super) fn fail_call(&mut self, id: u64, error: &Error) {
        if let Some(Request::Raw(_)) = self.open.get(&id).map(|r| r.request) {
            self.raw_queries.remove(&id);
            self.board
                .set_raw_result(id, crate::sim::client::RawResult::Error(error.clone()));
        }
        // A proposal that never left a process that then died cannot apply.
        let outcome = if error.is_not_applied() || matches!(error, Error::Shutdown) {
            Outcome::Fail
        } else {
            Outcome::Unknown
        };
        let outcome = match self.open.get(&id).map(|r| r.request) {
            Some(Request::Read { .. }) => Outcome::Fail,
            Some(r) if !r.is_write() => Outcome::Fail,
            _ => outcome,
        };
        self.complete(id, outcome, Outputs::error(error.to_string()));
    }

    pub(super) fn complete(&mut self, id: u64, outcome: Outcome, outputs: Outputs) {
        if self.open.remove(&id).is_none() {
            return;
        }
        let op = &mut self.ops[id as usize];
        op.complete_ns = self.now;
        op.outcome = outcome;
        op.outputs = outputs;
        let mut mod_revision = None;
        match outcome {
            Outcome::Ok => match op.op {
                OpKind::Txn => self.counters.txns += 1,
                OpKind::Compact => self.counters.compactions += 1,
                OpKind::Get => {
                    mod_revision = op
                        .outputs
                        .kvs
                        .as_ref()
                        .map(|kvs| kvs.first().map_or(0, |kv| kv.mod_revision));
                }
                _ => {}
            },
            Outcome::Fail => self.counters.failed += 1,
            Outcome::Unknown => self.counters.unknown += 1,
        }
        let member = (op.member - 1) as usize;
        let reply = Reply {
            outcome,
            member_lost: !self.up(member),
            mod_revision,
        };
        let line = self
            .trace
            .is_some()
            .then(|| describe(&self.ops[id as usize]));
        if let Some(line) = line {
            self.trace(|| format!("complete {line}"));
        }
        self.board.reply(id, reply);
    }

    /// Submits a request from the final checks and returns its id.
    pub(super) fn invoke_final(&mut self, member: usize, request: Request) -> u64 {
        let id = self.ops.len() as u64;
        self.invoke(id, FINAL_CLIENT, member, request);
        id
    }
}

impl Outputs {
    pub(super) fn error(why: impl Into<String>) -> Self {
        Outputs {
            error: Some(why.into()),
            ..Outputs::default()
        }
    }
}
