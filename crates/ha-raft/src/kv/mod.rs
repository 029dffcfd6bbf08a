//! The replicated KV in-process: [`KvNode`] (a member running the MVCC
//! machine, implementing [`KvClient`](ha_core::KvClient), watches
//! included) and its [`KvConfig`].

mod config;
mod keeper;
mod lease;
mod node;
mod watch;

pub use config::{AutoCompaction, KvConfig};
pub use node::KvNode;
