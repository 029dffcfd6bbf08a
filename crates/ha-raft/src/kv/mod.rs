//! The replicated KV in-process: [`KvNode`] (a member running the MVCC
//! machine, implementing [`KvClient`](ha_core::KvClient), watches
//! included) and its [`KvConfig`].

mod config;
mod keeper;
pub(crate) mod lease;
pub(crate) mod node;
pub(crate) mod watch;

pub use config::{AutoCompaction, KvConfig};
pub use node::KvNode;

/// Runs the decoders of forwarded lease calls and their replies.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_lease_call(data: &[u8]) {
    let _ = keeper::decode_call(data);
    let _ = keeper::decode_call_reply(data);
}
