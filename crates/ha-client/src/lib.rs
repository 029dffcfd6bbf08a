//! A remote client of an **ha** group: [`RemoteKv`] implements
//! [`ha_core::KvClient`] over the members' HTTP/JSON client API (the one
//! `ha-node` serves), so the recipes of `ha-discovery` — sessions, locks,
//! election — run unchanged in processes that are not members. A fleet of
//! 50 instances needs 3–5 voters, not 50.
//!
//! 1. Build a client with the members' client-API addresses.
//! 2. Use it like the in-process `KvNode`: the same calls, the same
//!    options, the same [`ha_core::Error`] variants.
//!
//! ```no_run
//! use std::time::Duration;
//! use ha_client::RemoteKv;
//! use ha_core::{KvClient, KvOptions, PutRequest};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kv = RemoteKv::builder(["http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003"])
//!     .timeout(Duration::from_secs(5))
//!     .build()?;
//! kv.put(PutRequest::new("app/config", "v1"), KvOptions::default()).await?;
//! let kv_now = kv.get(b"app/config".to_vec(), KvOptions::default()).await?;
//! assert_eq!(kv_now.map(|kv| kv.value), Some(b"v1".to_vec()));
//! # Ok(()) }
//! ```
//!
//! # Failover
//!
//! A call goes to the member that answered last (at first, the first one
//! configured), and moves on to another member only when its request
//! provably did not apply: the connection was refused, or the member
//! answered an error that says so (`NotLeader`, `Shutdown`,
//! `ProposalDropped`, `Removed`). A read may also move on after a lost
//! connection. A write whose outcome is unknown — the connection dropped
//! after the request was sent, or the deadline passed while it was out —
//! fails with [`ha_core::Error::OutcomeUnknown`] and is never sent again
//! blindly. Every call has a deadline: the builder's default, or
//! [`ha_core::KvOptions::timeout`]; retries happen within it.
//!
//! A member that lets a call's deadline pass (paused, cut off from the
//! group, or in a minority) is not tried first again: the next call starts
//! at another member. Each client tries the members after the first in an
//! order of its own (shuffled when it is built), so that the clients of a
//! member that fails spread over the others instead of all moving to the
//! same one.
//!
//! # Wire format
//!
//! [`wire`] is the one definition of the JSON shapes and error codes; the
//! `ha-node` server uses the same types.
#![deny(missing_docs)]

mod client;
mod config;
mod sse;
mod watch;
pub mod wire;

pub use client::RemoteKv;
pub use config::{ClientConfigError, RemoteKvBuilder};
