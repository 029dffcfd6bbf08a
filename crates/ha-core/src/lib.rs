//! The vocabulary of **ha**: identifiers, errors, configuration, and the
//! traits that storage backends, transports and state machines implement.
//!
//! This crate has no RocksDB and no runtime. Applications normally depend on
//! `ha-discovery` (or `ha-raft`), which re-export what they need from here.
//!
//! ```
//! use ha_core::{Config, NodeId};
//!
//! let cfg = Config::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)])
//!     .validate()
//!     .expect("a valid configuration");
//! assert_eq!(cfg.election_timeout().as_millis(), 250);
//! ```
#![deny(missing_docs)]

mod clock;
mod config;
mod error;
mod ids;
mod kv;
mod lease;
mod state_machine;
mod storage;
mod transport;
mod watch;

pub use clock::Clock;
pub use config::{Config, StartMode};
pub use error::{
    ConfigError, DropReason, Error, InvalidRequest, KvLimit, OverloadReason, Result, StorageError,
    UnknownCause, WatchCancelReason,
};
pub use ids::{ClusterId, NodeId, RequestId};
pub use kv::{
    CompactResponse, Compare, CompareOp, CompareTarget, Consistency, DeleteRequest, DeleteResponse,
    KeyRange, KeyValue, KvClient, KvOptions, LeaseId, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ResponseHeader, SortOrder, SortTarget, TxnOp, TxnOpResponse, TxnRequest,
    TxnResponse, prefix_end,
};
pub use lease::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAlive, LeaseKeepAliveResponse,
    LeaseLeasesResponse, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveResponse,
};
pub use state_machine::{ApplyContext, StateMachine};
pub use storage::{
    BatchOp, LogPoint, LogStore, LogWrite, MemberIdentity, RESERVED_PREFIX, RecoveredState,
    StateStore, StateView, WriteBatch,
};
pub use transport::{
    CallReply, MessageSink, SnapshotOutcome, SnapshotReader, SnapshotWriter, Transport,
};
pub use watch::{
    EventKind, WatchControl, WatchEvent, WatchId, WatchRequest, WatchResponse, WatchStream,
};

/// raft-rs's wire types, for storage and transport implementors.
pub use raft_proto::eraftpb;
