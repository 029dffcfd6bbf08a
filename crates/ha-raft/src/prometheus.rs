//! A member's metrics for Prometheus (feature `prometheus`): a
//! [`Collector`] that reads the member's status, engine counters, latency
//! distributions, watch count and peer links at each scrape, for an
//! application to register in the `prometheus_client` registry it serves.
//!
//! ```no_run
//! # fn f(kv: ha_raft::KvNode, transport: std::sync::Arc<ha_raft::TcpTransport>) {
//! use prometheus_client::registry::Registry;
//!
//! let mut registry = Registry::default();
//! registry.register_collector(Box::new(
//!     ha_raft::prometheus::MemberCollector::new(kv.node().clone())
//!         .with_kv(kv.clone())
//!         .with_tcp(transport),
//! ));
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
//! # }
//! ```
//!
//! | Metric | Type | What |
//! |---|---|---|
//! | `ha_role{role}` | gauge | 1 for the member's raft role, 0 for the others |
//! | `ha_term`, `ha_leader_id` | gauge | current term; the leader it knows (0: none) |
//! | `ha_commit_index`, `ha_applied_index`, `ha_apply_lag_entries` | gauge | log positions; committed but not applied |
//! | `ha_pending_proposals` | gauge | this member's proposals not answered yet |
//! | `ha_voters`, `ha_learners` | gauge | membership |
//! | `ha_tick_lag_seconds`, `ha_max_tick_lag_seconds` | gauge | the raft thread's lateness, last and worst |
//! | `ha_leader_changes_total` | counter | leaders this member saw |
//! | `ha_persist_batches_total`, `ha_syncs_total`, `ha_entries_persisted_total`, `ha_entries_applied_total` | counter | group commits, syncs, entries |
//! | `ha_entries_per_sync` | gauge | entries per durable write since start |
//! | `ha_proposal_duration_seconds` | histogram | proposals, call to answer |
//! | `ha_sync_duration_seconds` | histogram | synced log writes |
//! | `ha_read_duration_seconds{consistency}` | histogram | reads by consistency (`linearizable` = ReadIndex, `lease`, `serializable`) |
//! | `ha_snapshots_total{event}`, `ha_snapshot_sent_bytes_total` | counter | snapshots built, sent, received, installed |
//! | `ha_watchers` | gauge | watches served (with [`MemberCollector::with_kv`]) |
//! | `ha_peer_link_state{peer,state}` | gauge | 1 for the state of the connection to each peer (with [`MemberCollector::with_tcp`]) |
//! | `ha_peer_link_failures{peer}`, `ha_peer_queued_messages{peer}` | gauge | failed attempts in a row; queued messages |
//! | `ha_peer_connections{direction}` | gauge | open peer connections |
//! | `ha_peer_connections_rejected_total{reason}` | counter | peer connections closed for bad input |
//! | `ha_peer_messages_dropped_total` | counter | raft messages dropped on the way out |

use std::fmt::{self, Debug};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::latency::{LATENCY_BOUNDS_US, Latency};
use crate::transport::PeerLinkState;
use crate::{KvNode, Node, Role, TcpTransport};

/// Reads one member's metrics at each scrape. Register it with
/// `Registry::register_collector`.
#[derive(Clone)]
pub struct MemberCollector {
    node: Node,
    kv: Option<KvNode>,
    tcp: Option<Arc<TcpTransport>>,
}

impl Debug for MemberCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberCollector")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl MemberCollector {
    /// The engine's metrics of `node`.
    pub fn new(node: Node) -> Self {
        MemberCollector {
            node,
            kv: None,
            tcp: None,
        }
    }

    /// Adds the KV node's (watches served).
    pub fn with_kv(mut self, kv: KvNode) -> Self {
        self.kv = Some(kv);
        self
    }

    /// Adds the TCP transport's (peer links, connections, rejections,
    /// drops).
    pub fn with_tcp(mut self, tcp: Arc<TcpTransport>) -> Self {
        self.tcp = Some(tcp);
        self
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> fmt::Result {
    let m = ConstGauge::new(v);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

fn gauge_f(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> fmt::Result {
    let m = ConstGauge::new(v);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let m = ConstCounter::new(v);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

/// One metric with a value per label set.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut me = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, m) in values {
        m.encode(me.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram_buckets(l: &Latency) -> Vec<(f64, u64)> {
    l.buckets
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let bound = LATENCY_BOUNDS_US
                .get(i)
                .map_or(f64::MAX, |&us| us as f64 / 1e6);
            (bound, n)
        })
        .collect()
}

fn histogram(enc: &mut DescriptorEncoder, name: &str, help: &str, l: &Latency) -> fmt::Result {
    let mut me = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    me.encode_histogram::<NoLabelSet>(l.sum_us as f64 / 1e6, l.count, &histogram_buckets(l), None)
}

impl Collector for MemberCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let e = &mut enc;
        let st = self.node.status();
        let em = self.node.metrics();
        let roles = [
            ("follower", Role::Follower),
            ("pre_candidate", Role::PreCandidate),
            ("candidate", Role::Candidate),
            ("leader", Role::Leader),
        ];
        family(
            e,
            "ha_role",
            "1 for this member's raft role, 0 for the others",
            MetricType::Gauge,
            roles.map(|(name, role)| {
                (
                    [("role", name)],
                    ConstGauge::new(i64::from(st.role == role)),
                )
            }),
        )?;
        gauge(e, "ha_term", "The current raft term", clamp(st.term))?;
        gauge(
            e,
            "ha_leader_id",
            "The leader this member knows (0: none)",
            clamp(st.leader.map_or(0, |l| l.0)),
        )?;
        gauge(
            e,
            "ha_commit_index",
            "Highest log index known committed",
            clamp(st.commit),
        )?;
        gauge(
            e,
            "ha_applied_index",
            "Highest log index applied here",
            clamp(st.applied),
        )?;
        gauge(
            e,
            "ha_apply_lag_entries",
            "Committed entries not applied here yet",
            clamp(st.commit.saturating_sub(st.applied)),
        )?;
        gauge(
            e,
            "ha_pending_proposals",
            "Proposals of this member not answered yet",
            clamp(st.pending_proposals as u64),
        )?;
        gauge(
            e,
            "ha_voters",
            "Voting members",
            clamp(st.voters.len() as u64),
        )?;
        gauge(
            e,
            "ha_learners",
            "Non-voting members",
            clamp(st.learners.len() as u64),
        )?;
        gauge_f(
            e,
            "ha_tick_lag_seconds",
            "Lateness of the raft thread's last tick",
            st.tick_lag.as_secs_f64(),
        )?;
        gauge_f(
            e,
            "ha_max_tick_lag_seconds",
            "Worst tick lateness since start",
            em.max_tick_lag_us as f64 / 1e6,
        )?;
        counter(
            e,
            "ha_leader_changes",
            "Times this member saw a new leader",
            em.leader_changes,
        )?;
        counter(
            e,
            "ha_persist_batches",
            "Durable log writes (one per group commit)",
            em.persist_batches,
        )?;
        counter(e, "ha_syncs", "Synced log writes", em.syncs)?;
        counter(
            e,
            "ha_entries_persisted",
            "Log entries made durable",
            em.entries_persisted,
        )?;
        counter(
            e,
            "ha_entries_applied",
            "Log entries applied",
            em.entries_applied,
        )?;
        if em.persist_batches > 0 {
            gauge_f(
                e,
                "ha_entries_per_sync",
                "Entries made durable per log write, since start",
                em.entries_persisted as f64 / em.persist_batches as f64,
            )?;
        }
        histogram(
            e,
            "ha_proposal_duration_seconds",
            "Proposals through this member, from the call to the answer",
            &em.proposal_latency,
        )?;
        histogram(
            e,
            "ha_sync_duration_seconds",
            "Synced log writes (write and sync)",
            &em.sync_latency,
        )?;
        {
            let mut me = e.encode_descriptor(
                "ha_read_duration_seconds",
                "Reads through this member by consistency (linearizable: a ReadIndex round)",
                None,
                MetricType::Histogram,
            )?;
            for (consistency, l) in [
                ("linearizable", &em.read_index_latency),
                ("lease", &em.lease_read_latency),
                ("serializable", &em.serializable_read_latency),
            ] {
                let labels = [("consistency", consistency)];
                me.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    l.sum_us as f64 / 1e6,
                    l.count,
                    &histogram_buckets(l),
                    None,
                )?;
            }
        }
        family(
            e,
            "ha_snapshots",
            "Snapshot transfers by event (built, sent, received, installed)",
            MetricType::Counter,
            [
                ("built", em.snapshots_built),
                ("sent", em.snapshots_sent),
                ("received", em.snapshots_received),
                ("installed", em.snapshots_installed),
            ]
            .map(|(event, v)| ([("event", event)], ConstCounter::new(v))),
        )?;
        counter(
            e,
            "ha_snapshot_sent_bytes",
            "Snapshot bytes sent",
            em.snapshot_bytes_sent,
        )?;
        if let Some(kv) = &self.kv {
            gauge(
                e,
                "ha_watchers",
                "Watches this member serves",
                clamp(kv.watchers() as u64),
            )?;
        }
        if let Some(tcp) = &self.tcp {
            encode_tcp(e, tcp)?;
        }
        Ok(())
    }
}

const LINK_STATES: [PeerLinkState; 4] = [
    PeerLinkState::Idle,
    PeerLinkState::Connecting,
    PeerLinkState::Connected,
    PeerLinkState::Backoff,
];

fn encode_tcp(e: &mut DescriptorEncoder, tcp: &TcpTransport) -> fmt::Result {
    let peers = tcp.peers();
    let ids: Vec<String> = peers.iter().map(|p| p.id.0.to_string()).collect();
    family(
        e,
        "ha_peer_link_state",
        "1 for the state of this member's message connection to each peer",
        MetricType::Gauge,
        peers.iter().zip(&ids).flat_map(|(p, id)| {
            LINK_STATES.map(|s| {
                (
                    [("peer", id.as_str()), ("state", s.as_str())],
                    ConstGauge::new(i64::from(p.state == s)),
                )
            })
        }),
    )?;
    family(
        e,
        "ha_peer_link_failures",
        "Failed connection attempts in a row to each peer",
        MetricType::Gauge,
        peers.iter().zip(&ids).map(|(p, id)| {
            (
                [("peer", id.as_str())],
                ConstGauge::new(i64::from(p.failures)),
            )
        }),
    )?;
    family(
        e,
        "ha_peer_queued_messages",
        "Messages queued for each peer",
        MetricType::Gauge,
        peers.iter().zip(&ids).map(|(p, id)| {
            (
                [("peer", id.as_str())],
                ConstGauge::new(clamp(p.queued as u64)),
            )
        }),
    )?;
    let s = tcp.stats();
    family(
        e,
        "ha_peer_connections",
        "Open peer connections by direction",
        MetricType::Gauge,
        [("inbound", s.open_inbound), ("outbound", s.open_outbound)]
            .map(|(dir, v)| ([("direction", dir)], ConstGauge::new(clamp(v)))),
    )?;
    let r = s.rejected;
    family(
        e,
        "ha_peer_connections_rejected",
        "Peer connections closed for bad input, by reason",
        MetricType::Counter,
        [
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
            ("snapshot_busy", r.snapshot_busy),
            ("snapshot_refused", r.snapshot_refused),
            ("snapshot_idle", r.snapshot_idle),
            ("unknown_call_id", r.unknown_call_id),
            ("call_stalled", r.call_stalled),
            ("tls_handshake", r.tls_handshake),
            ("wrong_identity", r.wrong_identity),
            ("too_many_connections", r.too_many_connections),
        ]
        .map(|(reason, v)| ([("reason", reason)], ConstCounter::new(v))),
    )?;
    counter(
        e,
        "ha_peer_messages_dropped",
        "Raft messages dropped on the way out (full queue, unreachable, no address, too large)",
        s.dropped_queue_full + s.dropped_no_address + s.dropped_unreachable + s.dropped_too_large,
    )
}
