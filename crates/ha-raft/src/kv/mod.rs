//! The replicated KV in-process: [`KvNode`] (a member running the MVCC
//! machine, implementing [`KvClient`](ha_core::KvClient)) and its
//! [`KvConfig`].

mod config;
mod keeper;
mod lease;
mod node;

pub use config::{AutoCompaction, KvConfig};
pub use node::KvNode;
