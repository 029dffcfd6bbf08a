//! The world's side of [`crate::sim::SimKv`]: raw calls (encoded commands
//! and queries, lease calls, watches) from code under test, served through
//! the same paths as the built-in workload's requests.
//!
//! Watches: a raw watcher's sink only logs what its hub hands it; the log
//! is flushed into the watch streams in watch order after every hub step
//! (the hub offers in map order), so a seed replays the same wake-ups.

use std::sync::Arc;

use ha_core::{
    ClusterId, Error, NodeId, ResponseHeader, WatchCancelReason, WatchId, WatchResponse,
};
use parking_lot::Mutex;

use super::World;
use super::leases::LeaseCall;
use crate::kv::watch::{Delivery, Offer, WatchSink};
use crate::sim::client::{RawKind, RawPayload, RawResult};
use crate::sim::history::{Outcome, Outputs};
use crate::sim::kvclient::{WatchControls, WatchOp, WatchSender};

/// What raw watchers' sinks were handed, by watch key.
pub(crate) type RawWatchLog = Arc<Mutex<Vec<(u64, Result<Delivery, Error>)>>>;

/// A watch of code under test, open on a member's hub.
pub(crate) struct RawWatch {
    member: usize,
    life: u64,
    id: WatchId,
    tx: WatchSender,
    controls: WatchControls,
    /// The first revision not sent yet (for the cancel on a member's loss).
    next: i64,
}

struct RawSink {
    key: u64,
    log: RawWatchLog,
}

impl WatchSink for RawSink {
    fn offer(&mut self, delivery: Delivery) -> Offer {
        self.log.lock().push((self.key, Ok(delivery)));
        Offer::Sent
    }

    fn has_room(&self) -> bool {
        true
    }

    fn close(&mut self, error: Error) {
        self.log.lock().push((self.key, Err(error)));
    }
}

impl World {
    /// A raw lease call or watch reaches member `m` (proposals and reads
    /// take the workload's own paths in `World::request`).
    pub(super) fn raw_call(&mut self, id: u64, m: usize, kind: RawKind) {
        match kind {
            RawKind::KeepAlive { lease, .. } => self.lease_call(id, m, LeaseCall::KeepAlive, lease),
            RawKind::TimeToLive { lease, .. } => {
                self.lease_call(id, m, LeaseCall::TimeToLive, lease);
            }
            RawKind::Watch => match self.board.take_payload(id) {
                Some(RawPayload::Watch(request, feed)) => {
                    self.raw_watch_open(id, m, request, feed);
                }
                _ => self.complete(id, Outcome::Fail, Outputs::error("no watch request")),
            },
            RawKind::Propose | RawKind::Read(_) => {
                debug_assert!(false, "raw proposals and reads go through World::request");
            }
        }
    }

    /// The encoded command or query of raw call `id`.
    pub(super) fn raw_bytes(&mut self, id: u64) -> Option<Vec<u8>> {
        match self.board.take_payload(id) {
            Some(RawPayload::Bytes(bytes)) => Some(bytes),
            _ => None,
        }
    }

    fn raw_watch_open(
        &mut self,
        id: u64,
        m: usize,
        request: ha_core::WatchRequest,
        feed: crate::sim::kvclient::WatchFeed,
    ) {
        let now = self.instant_of(m);
        let life = self.members[m].life;
        let Some(p) = self.members[m].proc.as_mut() else {
            return;
        };
        let current = crate::sim::kvload::current_revision(|q| p.applier.query(q));
        let Some(hub) = p.hub.as_mut() else {
            // No hub yet (the machine has not reported its revision): the
            // client tries again elsewhere or later.
            self.board
                .set_raw_result(id, RawResult::Error(Error::NotLeader { leader_hint: None }));
            return self.complete(id, Outcome::Fail, Outputs::error("no watch hub yet"));
        };
        let start = request.start_revision;
        let sink = Box::new(RawSink {
            key: feed.key,
            log: self.raw_watch_log.clone(),
        });
        match hub.add(request, sink, now) {
            Ok(watch) => {
                let next = if start > 0 { start } else { current + 1 };
                self.raw_watches.insert(
                    feed.key,
                    RawWatch {
                        member: m,
                        life,
                        id: watch,
                        tx: feed.tx,
                        controls: feed.control,
                        next,
                    },
                );
                self.board.set_raw_result(id, RawResult::Watching(watch));
                self.complete(id, Outcome::Ok, Outputs::default());
                self.catch_up(m);
            }
            Err(e) => {
                self.board.set_raw_result(id, RawResult::Error(e.clone()));
                self.complete(id, Outcome::Fail, Outputs::error(e.to_string()));
            }
        }
    }

    /// Hands what the hubs sent raw watchers to their streams (in watch
    /// order), and applies what the streams asked (progress, cancel).
    pub(super) fn flush_raw_watches(&mut self) {
        let mut log: Vec<(u64, Result<Delivery, Error>)> =
            std::mem::take(&mut *self.raw_watch_log.lock());
        log.sort_by_key(|(key, _)| *key);
        for (key, item) in log {
            let Some(w) = self.raw_watches.get_mut(&key) else {
                continue;
            };
            let term = self.members[w.member]
                .proc
                .as_ref()
                .map_or(0, |p| p.core.leader().term);
            match item {
                Ok(d) => {
                    w.next = w.next.max(d.revision + 1);
                    let response = WatchResponse {
                        header: ResponseHeader {
                            cluster_id: ClusterId([0; 32]),
                            member_id: NodeId(w.member as u64 + 1),
                            revision: d.revision,
                            raft_term: term,
                        },
                        events: d.events,
                    };
                    let _ = w.tx.send(Ok(response));
                }
                Err(e) => {
                    let _ = w.tx.send(Err(e));
                    self.raw_watches.remove(&key);
                }
            }
        }
        // Dropped streams and control requests.
        let mut ops = Vec::new();
        for (&key, w) in &self.raw_watches {
            if w.tx.is_closed() {
                ops.push((key, WatchOp::Cancel));
            }
            ops.extend(std::mem::take(&mut *w.controls.lock()));
        }
        if ops.is_empty() {
            return;
        }
        for (key, op) in ops {
            let Some(w) = self.raw_watches.get(&key) else {
                continue;
            };
            let (m, life, watch) = (w.member, w.life, w.id);
            let now = self.instant_of(m);
            let alive = self.alive(m, life);
            let hub = self.members[m]
                .proc
                .as_mut()
                .and_then(|p| p.hub.as_mut())
                .filter(|_| alive);
            match (op, hub) {
                (WatchOp::Progress, Some(hub)) => hub.request_progress(watch, now),
                (WatchOp::Cancel, hub) => {
                    if let Some(hub) = hub {
                        hub.cancel(watch);
                    }
                    self.raw_watches.remove(&key);
                }
                (WatchOp::Progress, None) => {}
            }
        }
        // Progress answers go through the log again.
        if !self.raw_watch_log.lock().is_empty() {
            self.flush_raw_watches();
        }
    }

    /// Member `m`'s process is gone: its raw watches end as a stopped
    /// member's do, resumable from what they were sent.
    pub(super) fn raw_watches_lost(&mut self, m: usize) {
        // What the hub handed them before it went.
        self.flush_raw_watches();
        let lost: Vec<u64> = self
            .raw_watches
            .iter()
            .filter(|(_, w)| w.member == m)
            .map(|(&k, _)| k)
            .collect();
        for key in lost {
            if let Some(w) = self.raw_watches.remove(&key) {
                let _ = w.tx.send(Err(Error::WatchCancelled {
                    resume_revision: w.next,
                    reason: WatchCancelReason::MemberStopped,
                }));
            }
        }
    }

    /// A raw read is answered from member `m`'s machine.
    pub(super) fn answer_raw_read(&mut self, m: usize, id: u64) {
        let Some(bytes) = self.raw_queries.remove(&id) else {
            return;
        };
        let Some(p) = self.members[m].proc.as_ref() else {
            return;
        };
        let reply = p.applier.query(&bytes);
        self.board.set_raw_result(id, RawResult::Bytes(reply));
        self.complete(id, Outcome::Ok, Outputs::default());
    }

    /// A raw proposal applied: its reply goes to the caller.
    pub(super) fn raw_applied(&mut self, id: u64, reply: bytes::Bytes) {
        let outcome = if ha_storage::kv::decode_reply(&reply, &raw_stamp()).is_ok() {
            Outcome::Ok
        } else {
            Outcome::Fail
        };
        self.board.set_raw_result(id, RawResult::Bytes(reply));
        self.complete(id, outcome, Outputs::default());
    }
}

fn raw_stamp() -> ha_storage::kv::HeaderStamp {
    ha_storage::kv::HeaderStamp {
        cluster_id: ClusterId([0; 32]),
        member_id: NodeId(0),
        raft_term: 0,
    }
}
