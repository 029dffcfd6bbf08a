//! The `etcd-grpc://` target of `ha-bench kv` (`etcd://` is accepted too): the same load against an etcd
//! cluster — or anything speaking etcd's v3 gRPC API, such as an
//! etcd-compatible gateway in front of ha — through the `etcd-client`
//! crate, the like-for-like client for both.
//!
//! ```text
//! ha-bench kv --workload put --clients 64 --target etcd-grpc://127.0.0.1:2379,etcd-grpc://127.0.0.1:22379
//! ```

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use futures::future::BoxFuture;
use ha_core::Consistency;

use super::common::BenchResult;
use crate::bench_kv::LoadClient;

/// The scheme of an etcd target.
pub const SCHEME: &str = "etcd-grpc://";
/// The older spelling of [`SCHEME`], still accepted.
pub const SCHEME_ALIAS: &str = "etcd://";

/// Whether `target` names an etcd v3 gRPC endpoint.
pub fn is_etcd_target(target: &str) -> bool {
    target.starts_with(SCHEME) || target.starts_with(SCHEME_ALIAS)
}

/// A client of an etcd cluster for the load loop. Cheap to clone: clones
/// share the gRPC channel (balanced over the endpoints).
#[derive(Clone)]
pub struct EtcdKv {
    client: Client,
    timeout: Duration,
}

impl EtcdKv {
    /// Connects to `targets` (`etcd-grpc://host:port,...` items, or plain
    /// `host:port`), each call bounded by `timeout`.
    ///
    /// # Errors
    /// No endpoint given, or the connection fails.
    pub async fn connect(targets: &[String], timeout: Duration) -> BenchResult<EtcdKv> {
        let endpoints: Vec<String> = targets
            .iter()
            .map(|t| {
                let bare = t
                    .strip_prefix(SCHEME)
                    .or_else(|| t.strip_prefix(SCHEME_ALIAS))
                    .unwrap_or(t);
                format!("http://{bare}")
            })
            .collect();
        if endpoints.is_empty() {
            return Err("no etcd endpoint given".into());
        }
        let options = ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(Duration::from_secs(5));
        let client = Client::connect(&endpoints, Some(options)).await?;
        Ok(EtcdKv { client, timeout })
    }

    /// The raft term the member answering a status call reports (0 when
    /// none answers): every leader change takes a new term.
    pub async fn raft_term(&self) -> u64 {
        let mut c = self.client.clone();
        match tokio::time::timeout(self.timeout, c.status()).await {
            Ok(Ok(s)) => s.raft_term(),
            _ => 0,
        }
    }
}

impl LoadClient for EtcdKv {
    fn load_put(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, bool> {
        let mut c = self.client.clone();
        Box::pin(async move {
            matches!(
                tokio::time::timeout(self.timeout, c.put(key, value, None)).await,
                Ok(Ok(_))
            )
        })
    }

    fn load_get(&self, key: Vec<u8>, consistency: Consistency) -> BoxFuture<'_, bool> {
        let mut c = self.client.clone();
        Box::pin(async move {
            let options = match consistency {
                Consistency::Serializable => Some(GetOptions::new().with_serializable()),
                // etcd has no lease read: its linearizable read is the
                // nearest thing.
                _ => None,
            };
            matches!(
                tokio::time::timeout(self.timeout, c.get(key, options)).await,
                Ok(Ok(_))
            )
        })
    }

    fn load_cas(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, bool> {
        let mut c = self.client.clone();
        Box::pin(async move {
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Greater, 0)])
                .and_then([TxnOp::put(key.clone(), value, None)])
                .or_else([TxnOp::get(key, None)]);
            matches!(
                tokio::time::timeout(self.timeout, c.txn(txn)).await,
                Ok(Ok(_))
            )
        })
    }
}
