//! The consensus engine of **ha**, around tikv's `raft` crate.
//!
//! A [`Node`] is one member of a group. Inside it, a synchronous core is
//! the only owner of `raft::RawNode`; three threads drive it (raft, log
//! writer, apply) and the async API runs on the application's tokio runtime.
//!
//! 1. Implement [`StateMachine`](ha_core::StateMachine) (deterministic apply into an
//!    engine-owned batch, and `query` for reads).
//! 2. Start a member on a log store, a state store and a transport.
//! 3. `propose` commands and `read` on any member.
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use ha_core::{ApplyContext, Config, NodeId, StateMachine, WriteBatch};
//! use ha_raft::{MemNetwork, Node, ReadConsistency};
//! use ha_storage::{MemLogStore, MemStateStore};
//!
//! /// Counts commands; a read returns the count.
//! #[derive(Default)]
//! struct Counter(u64);
//!
//! impl StateMachine for Counter {
//!     fn apply(&mut self, _: &ApplyContext, _: &[u8], batch: &mut WriteBatch) -> Bytes {
//!         self.0 += 1;
//!         batch.put(b"count".to_vec(), self.0.to_be_bytes().to_vec());
//!         Bytes::copy_from_slice(&self.0.to_be_bytes())
//!     }
//!     fn query(&self, _: &[u8]) -> Bytes {
//!         Bytes::copy_from_slice(&self.0.to_be_bytes())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> ha_core::Result<()> {
//! let members = vec![NodeId(1), NodeId(2), NodeId(3)];
//! let network = MemNetwork::new();
//! let mut nodes = Vec::new();
//! for &id in &members {
//!     let config = Config::new(id, members.clone());
//!     nodes.push(
//!         Node::start(
//!             config,
//!             Arc::new(MemLogStore::new()),
//!             Arc::new(MemStateStore::new()),
//!             Counter::default(),
//!             network.transport(id),
//!         )
//!         .await?,
//!     );
//! }
//! // Any member accepts proposals; followers forward them to the leader.
//! nodes[2].propose(Bytes::from_static(b"+1")).await?;
//! let count = nodes[0].read(Bytes::new(), ReadConsistency::Linearizable).await?;
//! assert_eq!(count.as_ref(), &1u64.to_be_bytes());
//! for n in &nodes {
//!     n.shutdown().await?;
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod apply;
mod bugs;
mod call;
mod clock;
mod codec;
mod core;
mod digest;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod kv;
mod latency;
mod logging;
mod membership;
#[cfg(feature = "prometheus")]
pub mod prometheus;
mod raft_storage;
mod shell;
pub mod sim;
mod snapshot;
mod transport;

pub use crate::bugs::{InjectedBug, InstallCrashPoint};
pub use crate::call::CallHandler;
pub use crate::clock::SystemClock;
pub use crate::core::{LeaderInfo, PeerProgress, Replication, Role};
pub use crate::digest::{StateDigest, state_digest};
pub use crate::kv::{AutoCompaction, KvConfig, KvNode};
pub use crate::latency::{LATENCY_BOUNDS_US, LATENCY_BUCKETS, Latency};
pub use crate::membership::{MemberChange, MemberInfo, MemberRole, Membership};
pub use crate::shell::{CallOptions, EngineMetrics, Node, ReadConsistency, ReadOptions, Status};
pub use crate::transport::{
    MemNetwork, MemTransport, PeerLink, PeerLinkState, PeerSecurity, TcpConfig, TcpRejections,
    TcpStats, TcpTransport,
};
/// Mutual TLS between members (feature `tls`).
#[cfg(feature = "tls")]
pub mod tls {
    pub use crate::transport::{ClientAuth, PeerTls, TlsError, TlsFiles, member_name};
}
