//! The RocksDB backends: two RocksDB instances per member, like TiKV — the
//! *log DB* ([`RocksLogStore`]: entries, hard state, identity) and the
//! *state DB* ([`RocksStateStore`]: the state machine's data and the
//! engine's metadata) — sharing one block cache and one background thread
//! pool per process ([`RocksEnv`]).
//!
//! Both databases carry a format-version record, checked on every open;
//! everything ha encodes into the log DB carries a checksum.

mod codec;
mod config;
mod db;
mod env;
mod log;
mod state;
#[cfg(test)]
mod tests;

pub use config::{Compression, StorageConfig};
pub use env::RocksEnv;
pub use log::{RocksLogStats, RocksLogStore};
pub use state::RocksStateStore;
