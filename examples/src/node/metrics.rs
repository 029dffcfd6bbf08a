//! `/metrics`: the library's metrics of this member
//! ([`ha_raft::prometheus::MemberCollector`]: engine, latencies, watches,
//! peer links) plus what the HTTP layer counts, in Prometheus text format.

use std::sync::Arc;

use ha_raft::prometheus::MemberCollector;
use ha_raft::{KvNode, TcpTransport};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The registry and ha-node's own metrics.
pub struct Metrics {
    registry: Registry,
    healthy: Gauge,
    proposals: Family<Labels, Counter>,
    http_requests: Family<Labels, Counter>,
    /// The client API listener's connection counters.
    pub http: Arc<super::http::HttpCounters>,
}

impl Metrics {
    /// A registry with the member's collector and ha-node's metrics.
    pub fn new(kv: &KvNode, transport: Arc<TcpTransport>) -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            healthy: Gauge::default(),
            proposals: Family::default(),
            http_requests: Family::default(),
            http: Arc::default(),
        };
        let mut registry = m.registry;
        registry.register_collector(Box::new(
            MemberCollector::new(kv.node().clone())
                .with_kv(kv.clone())
                .with_tcp(transport),
        ));
        registry.register(
            "ha_healthy",
            "1 when /health answers 200",
            m.healthy.clone(),
        );
        registry.register(
            "ha_node_proposals",
            "Writes proposed through this member's client API, by operation",
            m.proposals.clone(),
        );
        registry.register(
            "ha_node_http_requests",
            "Client API requests by route and status",
            m.http_requests.clone(),
        );
        registry.register(
            "ha_node_http_connections_accepted",
            "Client API connections accepted",
            m.http.accepted.clone(),
        );
        registry.register(
            "ha_node_http_connections_over_limit",
            "Client API connections closed at once: a connection limit was reached",
            m.http.over_limit.clone(),
        );
        registry.register(
            "ha_node_http_tls_handshakes_failed",
            "Client API TLS handshakes that failed or timed out",
            m.http.tls_failed.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts a write proposed through the API.
    pub fn proposal(&self, op: &'static str) {
        self.proposals
            .get_or_create(&vec![("op", op.to_string())])
            .inc();
    }

    /// Counts an answered request.
    pub fn request(&self, route: &str, status: u16) {
        self.http_requests
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    /// Renders the registry (the collector reads the member now).
    pub fn render(&self, healthy: bool) -> String {
        self.healthy.set(i64::from(healthy));
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}
