//! Service discovery (Consul's catalog, Nacos's naming service) on the
//! KV/watch/lease API: a [`Registry`] of [`ServiceInstance`]s
//! (ephemeral ones bound to a session, persistent ones until
//! deregistered), [`Discovery`] with a member-local failover cache,
//! health checks run by the members themselves ([`HealthChecker`]), and
//! client-side load balancing ([`LoadBalancer`]); with the `dns` feature,
//! a DNS responder over the discovery cache (`DnsServer`).

mod balance;
mod cache;
mod client;
#[cfg(feature = "dns")]
mod dns;
mod error;
mod filter;
mod health;
mod instance;
mod watch;

pub use balance::{
    BalancerConfig, Call, ConsistentHash, LeastOutstanding, LoadBalancer, Outstanding, PickContext,
    Picker, RoundRobin, SmoothWeightedRoundRobin, WeightedRandom,
};
pub use cache::{Discovery, DiscoveryConfig, Source};
pub use client::Registry;
#[cfg(feature = "dns")]
pub use dns::{DnsConfig, DnsServer};
pub use error::{DecodeReason, DiscoveryError, DiscoveryResult};
pub use filter::InstanceFilter;
pub use health::{CheckFuture, CustomCheck, HealthChecker, HealthCheckerBuilder};
pub use instance::{
    CheckKind, DEFAULT_NAMESPACE, HealthCheck, HealthStatus, ROOT, ServiceInstance,
};
pub use watch::ServiceChange;
