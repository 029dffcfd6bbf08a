//! `/metrics`: the member's state in Prometheus text format, read from
//! `Node::status()`, `Node::metrics()`, `KvNode::watchers()` and the TCP
//! transport's counters at each scrape, plus what the HTTP layer counts.
//!
//! The library does not expose a registry of its own yet (issue 10 asks
//! for one behind a feature); until then ha-node mirrors its counters into
//! a prometheus-client registry here.

use std::sync::atomic::AtomicU64;

use ha_raft::{KvNode, Role, TcpTransport};
use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The registry and its metrics.
pub struct Metrics {
    registry: Registry,
    /// Serialises scrapes: counters are advanced to absolute values read
    /// from the library, which two scrapes at once would add twice.
    scrape: Mutex<()>,
    role: Family<Labels, Gauge>,
    term: Gauge,
    leader: Gauge,
    commit: Gauge,
    applied: Gauge,
    apply_lag: Gauge,
    pending_proposals: Gauge,
    voters: Gauge,
    learners: Gauge,
    tick_lag: Gauge<f64, AtomicU64>,
    max_tick_lag: Gauge<f64, AtomicU64>,
    leader_changes: Counter,
    persist_batches: Counter,
    syncs: Counter,
    entries_persisted: Counter,
    entries_applied: Counter,
    entries_per_sync: Gauge<f64, AtomicU64>,
    snapshots: Family<Labels, Counter>,
    snapshot_bytes_sent: Counter,
    watchers: Gauge,
    peer_connections: Family<Labels, Gauge>,
    peer_rejected: Family<Labels, Counter>,
    peer_messages_dropped: Counter,
    healthy: Gauge,
    proposals: Family<Labels, Counter>,
    http_requests: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn advance(counter: &Counter, to: u64) {
    counter.inc_by(to.saturating_sub(counter.get()));
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            scrape: Mutex::new(()),
            role: Family::default(),
            term: Gauge::default(),
            leader: Gauge::default(),
            commit: Gauge::default(),
            applied: Gauge::default(),
            apply_lag: Gauge::default(),
            pending_proposals: Gauge::default(),
            voters: Gauge::default(),
            learners: Gauge::default(),
            tick_lag: Gauge::default(),
            max_tick_lag: Gauge::default(),
            leader_changes: Counter::default(),
            persist_batches: Counter::default(),
            syncs: Counter::default(),
            entries_persisted: Counter::default(),
            entries_applied: Counter::default(),
            entries_per_sync: Gauge::default(),
            snapshots: Family::default(),
            snapshot_bytes_sent: Counter::default(),
            watchers: Gauge::default(),
            peer_connections: Family::default(),
            peer_rejected: Family::default(),
            peer_messages_dropped: Counter::default(),
            healthy: Gauge::default(),
            proposals: Family::default(),
            http_requests: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "ha_role",
            "1 for this member's raft role, 0 for the others",
            m.role.clone(),
        );
        r.register("ha_term", "The current raft term", m.term.clone());
        r.register(
            "ha_leader_id",
            "The leader this member knows (0: none)",
            m.leader.clone(),
        );
        r.register(
            "ha_commit_index",
            "Highest log index known committed",
            m.commit.clone(),
        );
        r.register(
            "ha_applied_index",
            "Highest log index applied here",
            m.applied.clone(),
        );
        r.register(
            "ha_apply_lag_entries",
            "Committed entries not applied here yet",
            m.apply_lag.clone(),
        );
        r.register(
            "ha_pending_proposals",
            "Proposals of this member not answered yet",
            m.pending_proposals.clone(),
        );
        r.register("ha_voters", "Voting members", m.voters.clone());
        r.register("ha_learners", "Non-voting members", m.learners.clone());
        r.register(
            "ha_tick_lag_seconds",
            "Lateness of the raft thread's last tick",
            m.tick_lag.clone(),
        );
        r.register(
            "ha_max_tick_lag_seconds",
            "Worst tick lateness since start",
            m.max_tick_lag.clone(),
        );
        r.register(
            "ha_leader_changes",
            "Times this member saw a new leader",
            m.leader_changes.clone(),
        );
        r.register(
            "ha_persist_batches",
            "Durable log writes (one per group commit)",
            m.persist_batches.clone(),
        );
        r.register("ha_syncs", "Synced log writes", m.syncs.clone());
        r.register(
            "ha_entries_persisted",
            "Log entries made durable",
            m.entries_persisted.clone(),
        );
        r.register(
            "ha_entries_applied",
            "Log entries applied",
            m.entries_applied.clone(),
        );
        r.register(
            "ha_entries_per_sync",
            "Entries made durable per log write, since start",
            m.entries_per_sync.clone(),
        );
        r.register(
            "ha_snapshots",
            "Snapshot transfers by event (built, sent, received, installed)",
            m.snapshots.clone(),
        );
        r.register(
            "ha_snapshot_sent_bytes",
            "Snapshot bytes sent",
            m.snapshot_bytes_sent.clone(),
        );
        r.register(
            "ha_watchers",
            "Watches this member serves",
            m.watchers.clone(),
        );
        r.register(
            "ha_peer_connections",
            "Open peer connections by direction",
            m.peer_connections.clone(),
        );
        r.register(
            "ha_peer_connections_rejected",
            "Peer connections closed for bad input, by reason",
            m.peer_rejected.clone(),
        );
        r.register(
            "ha_peer_messages_dropped",
            "Raft messages dropped on the way out (full queue, unreachable, no address)",
            m.peer_messages_dropped.clone(),
        );
        r.register(
            "ha_healthy",
            "1 when /health answers 200",
            m.healthy.clone(),
        );
        r.register(
            "ha_node_proposals",
            "Writes proposed through this member's client API, by operation",
            m.proposals.clone(),
        );
        r.register(
            "ha_node_http_requests",
            "Client API requests by route and status",
            m.http_requests.clone(),
        );
        m
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

    /// Reads the member's state and renders the registry.
    pub fn render(&self, kv: &KvNode, transport: &TcpTransport, healthy: bool) -> String {
        let _scrape = self.scrape.lock();
        let node = kv.node();
        let st = node.status();
        let em = node.metrics();
        for (name, role) in [
            ("follower", Role::Follower),
            ("pre_candidate", Role::PreCandidate),
            ("candidate", Role::Candidate),
            ("leader", Role::Leader),
        ] {
            self.role
                .get_or_create(&vec![("role", name.to_string())])
                .set(i64::from(st.role == role));
        }
        self.term.set(gauge(st.term));
        self.leader.set(gauge(st.leader.map_or(0, |l| l.0)));
        self.commit.set(gauge(st.commit));
        self.applied.set(gauge(st.applied));
        self.apply_lag
            .set(gauge(st.commit.saturating_sub(st.applied)));
        self.pending_proposals
            .set(gauge(st.pending_proposals as u64));
        self.voters.set(gauge(st.voters.len() as u64));
        self.learners.set(gauge(st.learners.len() as u64));
        self.tick_lag.set(st.tick_lag.as_secs_f64());
        self.max_tick_lag.set(em.max_tick_lag_us as f64 / 1e6);
        advance(&self.leader_changes, em.leader_changes);
        advance(&self.persist_batches, em.persist_batches);
        advance(&self.syncs, em.syncs);
        advance(&self.entries_persisted, em.entries_persisted);
        advance(&self.entries_applied, em.entries_applied);
        if em.persist_batches > 0 {
            self.entries_per_sync
                .set(em.entries_persisted as f64 / em.persist_batches as f64);
        }
        for (event, v) in [
            ("built", em.snapshots_built),
            ("sent", em.snapshots_sent),
            ("received", em.snapshots_received),
            ("installed", em.snapshots_installed),
        ] {
            advance(
                &self
                    .snapshots
                    .get_or_create(&vec![("event", event.to_string())]),
                v,
            );
        }
        advance(&self.snapshot_bytes_sent, em.snapshot_bytes_sent);
        self.watchers.set(gauge(kv.watchers() as u64));
        let tcp = transport.stats();
        for (dir, v) in [
            ("inbound", tcp.open_inbound),
            ("outbound", tcp.open_outbound),
        ] {
            self.peer_connections
                .get_or_create(&vec![("direction", dir.to_string())])
                .set(gauge(v));
        }
        let r = tcp.rejected;
        for (reason, v) in [
            ("bad_magic", r.bad_magic),
            ("unknown_version", r.unknown_version),
            ("other_cluster", r.other_cluster),
            ("wrong_receiver", r.wrong_receiver),
            ("invalid_sender", r.invalid_sender),
            ("handshake_timeout", r.handshake_timeout),
            ("truncated", r.truncated),
            ("frame_too_large", r.frame_too_large),
            ("malformed_frame", r.malformed_frame),
            ("unknown_kind", r.unknown_kind),
            ("snapshot_refused", r.snapshot_refused),
        ] {
            advance(
                &self
                    .peer_rejected
                    .get_or_create(&vec![("reason", reason.to_string())]),
                v,
            );
        }
        advance(
            &self.peer_messages_dropped,
            tcp.dropped_queue_full
                + tcp.dropped_no_address
                + tcp.dropped_unreachable
                + tcp.dropped_too_large,
        );
        self.healthy.set(i64::from(healthy));
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}
