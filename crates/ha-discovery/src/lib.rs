//! The crate an application depends on: the coordination recipes of
//! **ha** — sessions, locks with fencing tokens, readers-writer locks,
//! semaphores, barriers, a sequence, leader election and the singleton
//! job — built like etcd's `concurrency` package and Apache Curator; a
//! config center ([`ConfigCenter`], [`TypedConfig`]: versioned configs
//! with history, rollback, validation, secrets, hot reload and grey
//! release); and the types needed to run a member.
//!
//! Every recipe is a client of the public [`KvClient`] API (KV, watches,
//! leases) and nothing else, so it works the same through an in-process
//! member ([`KvNode`]) or a remote client.
//!
//! 1. Start a member (or connect a client) — anything that implements
//!    [`KvClient`].
//! 2. Open a [`Session`]: a lease kept alive in the background. What a
//!    session holds disappears with it.
//! 3. Use the recipes through the session.
//!
//! ```
//! use std::sync::Arc;
//! use ha_discovery::{Config, Election, KvConfig, KvNode, MemLogStore, MemNetwork,
//!     MemStateStore, Mutex, NodeId, Sequence, Session};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A one-member group in memory (a test double; see ha-raft for more).
//! let id = NodeId(1);
//! let network = MemNetwork::new();
//! let kv = KvNode::start(Config::new(id, vec![id]), KvConfig::default(),
//!     Arc::new(MemLogStore::new()), Arc::new(MemStateStore::new()),
//!     network.transport(id)).await?;
//!
//! let session = Session::new(kv.clone()).await?;
//!
//! // A lock: the guard's fencing token goes with every protected write.
//! let guard = Mutex::new(&session, "locks/report").lock().await?;
//! let token = guard.fencing_token();
//! guard.unlock().await?;
//!
//! // Leader election.
//! let election = Election::new(&session, "elections/scheduler");
//! let leadership = election.campaign("10.0.0.7:8080").await?;
//! assert_eq!(election.leader().await?.map(|l| l.value), Some(b"10.0.0.7:8080".to_vec()));
//! assert!(leadership.fencing_token() > token);
//! leadership.resign().await?;
//!
//! // Unique, increasing numbers across the group.
//! let ids = Sequence::new(Arc::new(kv.clone()), "ids/orders");
//! assert_eq!((ids.next().await?, ids.next().await?), (1, 2));
//!
//! session.close().await?;
//! kv.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Safety of locks and leadership
//!
//! A holder can be paused (GC, swap, a stopped VM) past its lease while
//! the group gives the lock to another — Jepsen's finding about etcd.
//! Two defences, use both:
//! - **Fencing tokens.** [`MutexGuard::fencing_token`] and
//!   [`Leadership::fencing_token`] are the key's create revision, strictly
//!   increasing across holders. The protected resource refuses a token
//!   lower than the highest it has seen ([`Fence`], [`Fenced`]); in the
//!   replicated KV itself, add [`MutexGuard::compare`] to the write's
//!   transaction.
//! - **Early loss.** A session counts itself lost once a TTL minus a
//!   safety margin has passed since its last successful keep-alive was
//!   *sent* — by the local clock, before the group can expire the lease —
//!   and [`MutexGuard::lost`], [`Leadership::lost`] and the leadership's
//!   cancellation token fire then.
//!
//! # Runtimes and the simulator
//!
//! Recipe logic never calls `tokio::spawn`, `tokio::time` or
//! `Instant::now`: time comes from a [`Clock`] and background work (a
//! session's renewals, releasing a dropped guard's key) goes to a
//! [`Spawn`], both carried by a [`RecipeEnv`]. [`RecipeEnv::tokio`] (the
//! default) is the system clock on the current tokio runtime; the
//! simulator passes its virtual clock and its deterministic
//! single-threaded executor, and the same recipe code runs there. Only
//! runtime-agnostic primitives are used (`tokio::sync`, `tokio-util`'s
//! `CancellationToken`, `futures`).
//!
//! # Cancellation and deadlines
//!
//! Every wait is cancellable by dropping its future, and cancel safe:
//! a dropped `lock()`/`acquire()`/`campaign()` leaves no key behind (it
//! is deleted in the background); `*_with_timeout` variants take a
//! deadline on the session's clock; each KV call underneath carries the
//! member's default deadline.
#![deny(missing_docs)]

mod barrier;
mod config;
mod election;
mod env;
mod error;
mod fence;
mod leader_task;
mod mutex;
mod queue;
mod registry;
mod rwlock;
mod semaphore;
mod sequence;
mod session;

pub use crate::barrier::{Barrier, DoubleBarrier};
pub use crate::config::{
    ConfigCenter, ConfigCenterBuilder, ConfigCenterError, ConfigEntry, ConfigEvent, ConfigFormat,
    ConfigId, ConfigInstance, ConfigMeta, ConfigPage, ConfigResult, ConfigSource, ConfigStatus,
    ConfigValidator, ConfigWatch, DEFAULT_ROOT as CONFIG_DEFAULT_ROOT, GreyRule, HistoryLimit,
    InstanceReport, MAX_ID_PART, Publish, Rollout, SecretKey, TypedConfig, TypedConfigBuilder,
};
pub use crate::election::{Election, Leader, Leadership};
pub use crate::env::{BoxTask, RecipeEnv, Spawn, TokioSpawn};
pub use crate::error::{LostReason, RecipeError, Result};
pub use crate::fence::{Fence, Fenced, FencingToken, StaleToken};
pub use crate::leader_task::{LeaderTask, run_when_leader};
pub use crate::mutex::{Mutex, MutexGuard};
// Service discovery (issue 13): registry, discovery, health, balancing.
pub use crate::registry::{
    BalancerConfig, Call, CheckFuture, CheckKind, ConsistentHash, CustomCheck, DEFAULT_NAMESPACE,
    DecodeReason, Discovery, DiscoveryConfig, DiscoveryError, DiscoveryResult, HealthCheck,
    HealthChecker, HealthCheckerBuilder, HealthStatus, InstanceFilter, LeastOutstanding,
    LoadBalancer, Outstanding, PickContext, Picker, ROOT as REGISTRY_ROOT, Registry, RoundRobin,
    ServiceChange, ServiceInstance, SmoothWeightedRoundRobin, Source, WeightedRandom,
};
#[cfg(feature = "dns")]
pub use crate::registry::{DnsConfig, DnsServer};
pub use crate::rwlock::{RwLock, RwLockGuard, RwMode};
pub use crate::semaphore::{Permit, Semaphore};
pub use crate::sequence::Sequence;
pub use crate::session::{DEFAULT_TTL, Session, SessionBuilder, SessionState};

pub use tokio_util::sync::CancellationToken;

// What an application needs to run a member and talk to it.
pub use ha_core::{
    self, Clock, Compare, CompareOp, CompareTarget, Config, Consistency, DeleteRequest,
    Error as KvError, EventKind, KeyRange, KeyValue, KvClient, KvOptions, LeaseId, NodeId,
    PutRequest, RangeRequest, TxnOp, TxnRequest, WatchRequest,
};
pub use ha_raft::{KvConfig, KvNode, MemNetwork, SystemClock};
pub use ha_storage::{MemLogStore, MemStateStore};
#[cfg(feature = "rocksdb")]
pub use ha_storage::{RocksEnv, StorageConfig};

/// The recipes from a process that is not a member (feature `remote`):
/// [`remote::RemoteKv`] is a [`KvClient`] over the members' HTTP/JSON
/// client API with failover between them, so `Session::new(remote)` and
/// every recipe on it work as they do on an in-process [`KvNode`].
#[cfg(feature = "remote")]
pub mod remote {
    pub use ha_client::{ClientConfigError, RemoteKv, RemoteKvBuilder};
}

// The README's examples are compiled and run as doctests here, in the crate
// that can reach every other (the recipes' example needs ha-discovery).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
