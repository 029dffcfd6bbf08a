//! The shell side of leases: the [`LeaseManager`] shared with the apply
//! thread (through the machine's observer), the leader's expiry loop, and
//! the encoding of lease calls forwarded from other members to the leader.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ha_core::{Config, Error, InvalidRequest, LeaseId, NodeId, Result};
use ha_storage::kv::{KvCommand, decode_error_bytes, encode_error_bytes};
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::watch;

use super::lease::{LeaseManager, Refusal};
use crate::shell::{CallOptions, Node};

/// Most expiries proposed per pass of the expiry loop.
const MAX_EXPIRIES_PER_PASS: usize = 1_000;

/// Leases of one member: the manager, and what it needs from the config.
pub(crate) struct Leases {
    pub(crate) manager: Mutex<LeaseManager>,
    /// Smallest TTL granted: 1.5 × the longest election timeout.
    pub(crate) min_ttl: Duration,
    /// How often the expiry loop looks when nothing is due sooner.
    pub(crate) check_every: Duration,
    /// The machine's revision after the last apply step (for headers).
    pub(crate) revision: AtomicI64,
}

impl Leases {
    pub(crate) fn new(config: &Config) -> Arc<Self> {
        let election = config.tick_interval * config.max_election_tick as u32;
        let check_every = (config.tick_interval * 5).max(Duration::from_millis(10));
        Arc::new(Leases {
            // A new leader adds an election timeout; an expiry in flight is
            // proposed again after a request timeout.
            manager: Mutex::new(LeaseManager::new(election, config.request_timeout)),
            min_ttl: election * 3 / 2,
            check_every,
            revision: AtomicI64::new(1),
        })
    }

    /// Brings the manager in line with the engine's role and applied term.
    pub(crate) fn sync(&self, node: &Node, now: Instant) {
        let (leading, applied_term) = node.leading_and_applied_term();
        let promoted = self.manager.lock().observe(leading, applied_term, now);
        if promoted {
            tracing::debug!(node = %node.id(), term = ?leading, "lease deadlines extended for a new term");
        }
    }

    /// Renews on this member if it leads and is ready.
    pub(crate) fn keep_alive(&self, node: &Node, id: LeaseId) -> Result<Duration, Refusal> {
        let now = Instant::now();
        self.sync(node, now);
        self.manager.lock().keep_alive(id, now)
    }

    /// Time left on this member if it leads and is ready.
    pub(crate) fn remaining(&self, node: &Node, id: LeaseId) -> Result<Duration, Refusal> {
        let now = Instant::now();
        self.sync(node, now);
        self.manager.lock().remaining(id, now)
    }
}

/// The error a refusal becomes for the caller.
pub(crate) fn refusal_error(r: Refusal, id: LeaseId, node: &Node, after: Duration) -> Error {
    match r {
        Refusal::Follower => Error::NotLeader {
            leader_hint: node.leader().leader,
        },
        Refusal::TermNotApplied => Error::Timeout { after },
        Refusal::Gone => Error::LeaseNotFound { lease: id.0 },
    }
}

/// The leader's expiry loop: proposes the expiry of every lease past its
/// deadline (tagged with the term it was decided in). Runs until `stop`
/// says so or the member stops.
pub(crate) async fn run_expiry(node: Node, leases: Arc<Leases>, mut stop: watch::Receiver<bool>) {
    loop {
        let now = Instant::now();
        let wake = leases
            .manager
            .lock()
            .next_wakeup()
            .map_or(now + leases.check_every, |w| {
                w.min(now + leases.check_every)
            });
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
        }
        let now = Instant::now();
        leases.sync(&node, now);
        let due = leases.manager.lock().due(now, MAX_EXPIRIES_PER_PASS);
        for (id, term) in due {
            let node = node.clone();
            tokio::spawn(async move {
                let command = KvCommand::LeaseExpire { id, term }.encode(0);
                match node
                    .propose_with(Bytes::from(command), CallOptions::default())
                    .await
                {
                    Ok(_) => {
                        tracing::debug!(node = %node.id(), lease = id.0, term, "lease expired")
                    }
                    Err(Error::Shutdown | Error::Removed { .. } | Error::Fatal { .. }) => {}
                    // Retried after a while if the lease is still due and
                    // this member still leads; a newer leader decides alone.
                    Err(e) => {
                        tracing::debug!(node = %node.id(), lease = id.0, error = %e, "lease expiry not proposed")
                    }
                }
            });
        }
    }
}

// ---- lease calls forwarded to the leader ----

/// A lease call a member forwards to the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LeaseCall {
    KeepAlive(LeaseId),
    TimeToLive { id: LeaseId, keys: bool },
}

#[derive(Clone, PartialEq, prost::Message)]
struct WCall {
    /// The caller's deadline, ms.
    #[prost(uint64, tag = "1")]
    timeout_ms: u64,
    #[prost(oneof = "WCallOp", tags = "2, 3")]
    op: Option<WCallOp>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum WCallOp {
    #[prost(int64, tag = "2")]
    KeepAlive(i64),
    #[prost(message, tag = "3")]
    TimeToLive(WTtlCall),
}

#[derive(Clone, PartialEq, prost::Message)]
struct WTtlCall {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(bool, tag = "2")]
    keys: bool,
}

/// What the leader answers: its identity and revision, and the outcome.
#[derive(Clone, PartialEq, prost::Message)]
struct WCallReply {
    #[prost(uint64, tag = "1")]
    member_id: u64,
    #[prost(uint64, tag = "2")]
    raft_term: u64,
    #[prost(int64, tag = "3")]
    revision: i64,
    #[prost(uint64, tag = "4")]
    ttl_ms: u64,
    #[prost(uint64, tag = "5")]
    granted_ttl_ms: u64,
    #[prost(bytes = "vec", repeated, tag = "6")]
    keys: Vec<Vec<u8>>,
    /// An encoded `ha_core::Error` when the call failed.
    #[prost(bytes = "vec", optional, tag = "7")]
    error: Option<Vec<u8>>,
}

/// The leader's answer to a forwarded lease call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaseCallReply {
    pub(crate) member_id: NodeId,
    pub(crate) raft_term: u64,
    pub(crate) revision: i64,
    pub(crate) ttl: Duration,
    pub(crate) granted_ttl: Duration,
    pub(crate) keys: Vec<Vec<u8>>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn encode_call(call: LeaseCall, timeout: Duration) -> Bytes {
    let op = match call {
        LeaseCall::KeepAlive(id) => WCallOp::KeepAlive(id.0),
        LeaseCall::TimeToLive { id, keys } => WCallOp::TimeToLive(WTtlCall { id: id.0, keys }),
    };
    Bytes::from(
        WCall {
            timeout_ms: millis(timeout),
            op: Some(op),
        }
        .encode_to_vec(),
    )
}

/// Decodes a forwarded call and its deadline.
pub(crate) fn decode_call(bytes: &[u8]) -> Result<(LeaseCall, Duration)> {
    let malformed = || Error::InvalidRequest {
        reason: InvalidRequest::Malformed,
    };
    let w = WCall::decode(bytes).map_err(|_| malformed())?;
    let call = match w.op.ok_or_else(malformed)? {
        WCallOp::KeepAlive(id) => LeaseCall::KeepAlive(LeaseId(id)),
        WCallOp::TimeToLive(t) => LeaseCall::TimeToLive {
            id: LeaseId(t.id),
            keys: t.keys,
        },
    };
    Ok((call, Duration::from_millis(w.timeout_ms)))
}

pub(crate) fn encode_call_reply(r: &Result<LeaseCallReply>) -> Bytes {
    let w = match r {
        Ok(r) => WCallReply {
            member_id: r.member_id.0,
            raft_term: r.raft_term,
            revision: r.revision,
            ttl_ms: millis(r.ttl),
            granted_ttl_ms: millis(r.granted_ttl),
            keys: r.keys.clone(),
            error: None,
        },
        Err(e) => WCallReply {
            error: Some(encode_error_bytes(e)),
            ..WCallReply::default()
        },
    };
    Bytes::from(w.encode_to_vec())
}

pub(crate) fn decode_call_reply(bytes: &[u8]) -> Result<LeaseCallReply> {
    let w = WCallReply::decode(bytes).map_err(|_| Error::InvalidRequest {
        reason: InvalidRequest::Malformed,
    })?;
    if let Some(e) = w.error {
        return Err(decode_error_bytes(&e));
    }
    Ok(LeaseCallReply {
        member_id: NodeId(w.member_id),
        raft_term: w.raft_term,
        revision: w.revision,
        ttl: Duration::from_millis(w.ttl_ms),
        granted_ttl: Duration::from_millis(w.granted_ttl_ms),
        keys: w.keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_replies_round_trip_and_garbage_is_an_error() {
        for call in [
            LeaseCall::KeepAlive(LeaseId(42)),
            LeaseCall::TimeToLive {
                id: LeaseId(7),
                keys: true,
            },
        ] {
            let bytes = encode_call(call, Duration::from_millis(1500));
            let (back, timeout) = decode_call(&bytes).expect("decodes");
            assert_eq!((back, timeout), (call, Duration::from_millis(1500)));
            // Application calls share the call slot behind a 0 tag byte
            // (`KvNode::call_app`): a lease call never starts with it.
            assert_ne!(bytes.first(), Some(&0), "a lease call starts with 0");
        }
        for default_timeout in [0, 1] {
            let empty = encode_call(
                LeaseCall::KeepAlive(LeaseId(default_timeout)),
                Duration::ZERO,
            );
            assert_ne!(empty.first(), Some(&0), "a lease call starts with 0");
        }
        let ok = LeaseCallReply {
            member_id: NodeId(3),
            raft_term: 9,
            revision: 120,
            ttl: Duration::from_millis(450),
            granted_ttl: Duration::from_secs(1),
            keys: vec![b"a".to_vec()],
        };
        let back = decode_call_reply(&encode_call_reply(&Ok(ok.clone()))).expect("ok");
        assert_eq!(back, ok);
        let err = decode_call_reply(&encode_call_reply(&Err(Error::NotLeader {
            leader_hint: Some(NodeId(2)),
        })));
        assert!(
            matches!(
                err,
                Err(Error::NotLeader {
                    leader_hint: Some(NodeId(2))
                })
            ),
            "{err:?}"
        );
        let err = decode_call_reply(&encode_call_reply(&Err(Error::LeaseNotFound { lease: 5 })));
        assert!(
            matches!(err, Err(Error::LeaseNotFound { lease: 5 })),
            "{err:?}"
        );
        assert!(decode_call(b"\xff\xff\xff").is_err());
        assert!(decode_call(b"").is_err(), "a call without an op");
        assert!(decode_call_reply(b"\xff\xff\xff").is_err());
    }
}
