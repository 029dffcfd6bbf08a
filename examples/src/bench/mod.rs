//! The `ha-bench` subcommands, one module each. Every subcommand takes its
//! clap arguments and prints figures for a person and, as its last line,
//! one JSON object for machines. `ha-bench`'s `main` only parses the
//! command line and calls the subcommand's `run`.
//!
//! The load generator, histograms, progress lines, leader-change counting
//! and the JSON line live in [`common`]; members on RocksDB in [`rocks`],
//! running a [`store_machine::StoreMachine`].

pub mod chaos;
pub mod common;
pub mod discovery;

pub mod config;
pub mod engine;
#[cfg(feature = "etcd")]
pub mod etcd_kv;
pub mod failover;
pub mod footprint;
pub mod fsync;
pub mod kv_watch;
pub mod lease;
pub mod lock;
pub mod membership;
pub mod restart;
pub mod rocks;
pub mod storage;
pub mod store_machine;

pub use common::BenchResult;
