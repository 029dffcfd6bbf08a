//! The TCP transport on loopback: whole groups over real sockets, restarts,
//! hostile connections, and a dead peer.
//!
//! Every test runs under a hard time bound and stops what it started. The
//! bounds are generous on purpose: they catch hangs, not slowness.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ha_core::eraftpb::{Entry, Message, MessageType, Snapshot, SnapshotMetadata};
use ha_core::{
    ApplyContext, CallReply, ClusterId, Config, Error, LogStore, MessageSink, NodeId,
    OverloadReason, SnapshotOutcome, SnapshotReader, SnapshotWriter, StateMachine, StateStore,
    StorageError, Transport, UnknownCause, WriteBatch,
};
use ha_raft::{Node, ReadConsistency, Role, TcpConfig, TcpTransport};
use ha_storage::{MemLogStore, MemStateStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a condition may take to become true.
const PATIENCE: Duration = Duration::from_secs(20);
/// Hard bound of a whole test.
const TEST_BOUND: Duration = Duration::from_secs(120);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn bounded<F: Future<Output = ()>>(test: F) {
    init_tracing();
    tokio::time::timeout(TEST_BOUND, test)
        .await
        .expect("test exceeded its time bound");
}

/// Polls `cond` until it holds; fails with `what` after [`PATIENCE`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

// ---------------------------------------------------------------------------
// A tiny state machine: counts commands and chains them into a digest, both
// kept in the engine's batch so a restarted member rebuilds them.

struct Chain {
    count: u64,
    digest: u64,
    /// Where it reloads from after a snapshot replaced the state.
    store: MemStateStore,
}

const CHAIN_KEY: &[u8] = b"chain";

impl Chain {
    fn open(state: &MemStateStore) -> Chain {
        match state.get(CHAIN_KEY).expect("state store readable") {
            Some(v) if v.len() == 16 => Chain {
                count: u64::from_be_bytes(v[..8].try_into().unwrap()),
                digest: u64::from_be_bytes(v[8..].try_into().unwrap()),
                store: state.clone(),
            },
            _ => Chain {
                count: 0,
                digest: 0,
                store: state.clone(),
            },
        }
    }

    fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.count.to_be_bytes());
        b[8..].copy_from_slice(&self.digest.to_be_bytes());
        b
    }
}

impl StateMachine for Chain {
    fn restored(&mut self, _applied_index: u64) -> Result<(), StorageError> {
        *self = Chain::open(&self.store);
        Ok(())
    }

    fn apply(&mut self, _ctx: &ApplyContext, command: &[u8], batch: &mut WriteBatch) -> Bytes {
        self.count += 1;
        // FNV-1a over the previous digest and the command: order-sensitive.
        let mut h = self.digest ^ 0xcbf2_9ce4_8422_2325;
        for &b in command {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.digest = h;
        batch.put(CHAIN_KEY.to_vec(), self.encode().to_vec());
        // Each command under its own key too: the state (and a snapshot of
        // it) grows with the log.
        batch.put(
            format!("cmd/{:08}", self.count).into_bytes(),
            command.to_vec(),
        );
        Bytes::copy_from_slice(&self.count.to_be_bytes())
    }

    fn query(&self, _query: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&self.encode())
    }
}

// ---------------------------------------------------------------------------
// A group of members over TCP.

struct Member {
    node: Option<Node>,
    transport: Arc<TcpTransport>,
    log: MemLogStore,
    state: MemStateStore,
}

struct Group {
    ids: Vec<NodeId>,
    tcp: TcpConfig,
    /// Each member's peer security (plaintext when absent).
    security: BTreeMap<NodeId, ha_raft::PeerSecurity>,
    /// Adjusts every member's raft config.
    tune: fn(&mut Config),
    members: BTreeMap<NodeId, Member>,
    next_cmd: u64,
}

impl Group {
    async fn start(n: u64, tcp: TcpConfig) -> Group {
        Group::start_with(n, tcp, |_| {}).await
    }

    async fn start_with(n: u64, tcp: TcpConfig, tune: fn(&mut Config)) -> Group {
        Group::start_secure(n, tcp, tune, BTreeMap::new()).await
    }

    async fn start_secure(
        n: u64,
        tcp: TcpConfig,
        tune: fn(&mut Config),
        security: BTreeMap<NodeId, ha_raft::PeerSecurity>,
    ) -> Group {
        let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let mut g = Group {
            ids: ids.clone(),
            tcp,
            security,
            tune,
            members: BTreeMap::new(),
            next_cmd: 0,
        };
        for &id in &ids {
            let transport = g.bind(id, loopback()).await;
            g.members.insert(
                id,
                Member {
                    node: None,
                    transport,
                    log: MemLogStore::new(),
                    state: MemStateStore::new(),
                },
            );
        }
        for &id in &ids {
            g.fill_address_book(id);
        }
        for &id in &ids {
            g.boot(id).await;
        }
        g
    }

    fn config(&self, id: NodeId) -> Config {
        let mut cfg = Config {
            request_timeout: Duration::from_secs(10),
            ..Config::new(id, self.ids.clone())
        };
        (self.tune)(&mut cfg);
        cfg
    }

    fn cluster_id(&self) -> ClusterId {
        let cfg = self.config(self.ids[0]);
        ClusterId::derive(&cfg.initial_members, &cfg.cluster_token)
    }

    async fn bind(&self, id: NodeId, addr: SocketAddr) -> Arc<TcpTransport> {
        // A port just released can take a moment to be free again.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let security = self
                .security
                .get(&id)
                .cloned()
                .unwrap_or(ha_raft::PeerSecurity::InsecurePlaintext);
            match TcpTransport::bind_with(addr, self.cluster_id(), id, self.tcp.clone(), security)
                .await
            {
                Ok(t) => return t,
                Err(e) if Instant::now() < deadline => {
                    tracing::info!(%addr, error = %e, "bind failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("member {id} cannot bind {addr}: {e}"),
            }
        }
    }

    fn addr(&self, id: NodeId) -> SocketAddr {
        self.members[&id].transport.local_addr()
    }

    fn transport(&self, id: NodeId) -> &TcpTransport {
        &self.members[&id].transport
    }

    fn fill_address_book(&self, id: NodeId) {
        for &peer in &self.ids {
            if peer != id {
                self.transport(id).set_peer(peer, self.addr(peer));
            }
        }
    }

    async fn boot(&mut self, id: NodeId) {
        let cfg = self.config(id);
        let m = self.members.get_mut(&id).unwrap();
        let node = Node::start(
            cfg,
            Arc::new(m.log.clone()),
            Arc::new(m.state.clone()),
            Chain::open(&m.state),
            m.transport.clone(),
        )
        .await
        .expect("member starts");
        m.node = Some(node);
    }

    fn node(&self, id: NodeId) -> &Node {
        self.members[&id].node.as_ref().expect("member running")
    }

    fn running(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(_, m)| m.node.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Waits until the running members agree on a leader among them.
    async fn leader(&self) -> NodeId {
        let running = self.running();
        let mut agreed = None;
        eventually("an agreed leader", || {
            let views: Vec<Option<NodeId>> = running
                .iter()
                .map(|&id| self.node(id).leader().leader)
                .collect();
            agreed = match views[0] {
                Some(l)
                    if views.iter().all(|v| *v == Some(l))
                        && running.contains(&l)
                        && self.node(l).status().role == Role::Leader =>
                {
                    Some(l)
                }
                _ => None,
            };
            agreed.is_some()
        })
        .await;
        agreed.unwrap()
    }

    /// Proposes one command through member `via`; it must apply.
    async fn propose(&mut self, via: NodeId) {
        self.next_cmd += 1;
        let cmd = format!("cmd-{}", self.next_cmd);
        self.node(via)
            .propose(Bytes::from(cmd))
            .await
            .unwrap_or_else(|e| panic!("proposal {} via member {via} failed: {e}", self.next_cmd));
    }

    /// Waits until every running member applied all `next_cmd` commands,
    /// in the same order.
    async fn converged(&self) {
        let want = self.next_cmd;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut states = Vec::new();
            for id in self.running() {
                let s = self
                    .node(id)
                    .read(Bytes::new(), ReadConsistency::Serializable)
                    .await
                    .expect("serializable read");
                states.push((id, s));
            }
            let done = states.iter().all(|(_, s)| {
                s == &states[0].1 && u64::from_be_bytes(s[..8].try_into().unwrap()) == want
            });
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members did not all apply the same {want} commands: {:?}",
                states
                    .iter()
                    .map(|(id, s)| (id.0, u64::from_be_bytes(s[..8].try_into().unwrap())))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shuts a member down cleanly and waits for its transport to end.
    async fn stop(&mut self, id: NodeId) {
        let m = self.members.get_mut(&id).unwrap();
        if let Some(node) = m.node.take() {
            node.shutdown().await.expect("clean shutdown");
        }
        m.transport.stop();
        m.transport.closed().await;
        let s = m.transport.stats();
        assert_eq!(
            (s.open_inbound, s.open_outbound, s.open_snapshot_streams),
            (0, 0, 0),
            "a stopped transport left connections open"
        );
    }

    /// Restarts a stopped member on `addr` with a new transport.
    async fn restart_on(&mut self, id: NodeId, addr: SocketAddr) {
        let transport = self.bind(id, addr).await;
        self.members.get_mut(&id).unwrap().transport = transport;
        self.fill_address_book(id);
        self.boot(id).await;
    }

    fn assert_no_fatal(&self) {
        for id in self.running() {
            let s = self.node(id).status();
            assert!(s.fatal.is_none(), "member {id} failed: {:?}", s.fatal);
        }
    }

    async fn shutdown(mut self) {
        for id in self.running() {
            self.stop(id).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_over_tcp_elect_and_commit_on_every_member() {
    bounded(async {
        let mut g = Group::start(3, TcpConfig::default()).await;
        let leader = g.leader().await;
        for round in 0..10 {
            for id in g.ids.clone() {
                g.propose(id).await;
                if round == 0 {
                    g.assert_no_fatal();
                }
            }
        }
        g.converged().await;
        g.assert_no_fatal();
        for &id in &g.ids {
            let s = g.transport(id).stats();
            assert!(
                s.messages_sent > 0 && s.messages_received > 0,
                "member {id} exchanged nothing: {s:?}"
            );
            assert!(s.messages_sent >= s.frames_sent, "{s:?}");
            assert_eq!(
                s.rejected.total(),
                0,
                "member {id} refused a genuine peer: {s:?}"
            );
            assert_eq!(s.messages_misaddressed, 0, "{s:?}");
            assert_eq!(s.dropped_no_address, 0, "{s:?}");
        }
        assert!(g.ids.contains(&leader));
        g.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_member_is_reconnected_to_and_catches_up() {
    bounded(async {
        let mut g = Group::start(3, TcpConfig::default()).await;
        let leader = g.leader().await;
        for _ in 0..5 {
            g.propose(leader).await;
        }
        g.converged().await;
        let follower = *g.ids.iter().find(|&&id| id != leader).unwrap();
        let others: Vec<NodeId> = g.ids.iter().copied().filter(|&id| id != follower).collect();

        // 1. Down, writes go on without it, back on the SAME port.
        let old_addr = g.addr(follower);
        g.stop(follower).await;
        for &id in others.iter().cycle().take(10) {
            g.propose(id).await;
        }
        g.converged().await;
        g.restart_on(follower, old_addr).await;
        g.converged().await;
        g.propose(follower).await;
        g.converged().await;
        let noticed: u64 = others
            .iter()
            .map(|&id| {
                let s = g.transport(id).stats();
                s.connect_failures + s.connections_lost
            })
            .sum();
        assert!(noticed > 0, "nobody noticed member {follower} went away");

        // 2. Down again, back on a NEW port that the others learn from
        // `set_peer` (an address update).
        g.stop(follower).await;
        for &id in others.iter().cycle().take(6) {
            g.propose(id).await;
        }
        g.restart_on(follower, loopback()).await;
        let new_addr = g.addr(follower);
        assert_ne!(new_addr, old_addr);
        for &id in &others {
            g.transport(id).set_peer(follower, new_addr);
            assert_eq!(g.transport(id).peer_addr(follower), Some(new_addr));
        }
        g.converged().await;
        g.propose(follower).await;
        g.converged().await;
        g.assert_no_fatal();
        g.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_links_and_latencies_are_reported() {
    bounded(async {
        let mut g = Group::start(3, TcpConfig::default()).await;
        let leader = g.leader().await;
        for _ in 0..20 {
            g.propose(leader).await;
        }
        for c in [
            ReadConsistency::Linearizable,
            ReadConsistency::Lease,
            ReadConsistency::Serializable,
        ] {
            g.node(leader)
                .read(Bytes::new(), c)
                .await
                .unwrap_or_else(|e| panic!("{c:?} read: {e}"));
        }
        let m = g.node(leader).metrics();
        assert_eq!(m.proposal_latency.count, 20, "{m:?}");
        assert!(m.proposal_latency.mean().is_some());
        assert_eq!(m.read_index_latency.count, 1, "{m:?}");
        assert_eq!(m.lease_read_latency.count, 1, "{m:?}");
        assert_eq!(m.serializable_read_latency.count, 1, "{m:?}");
        assert!(
            m.sync_latency.count > 0 && m.sync_latency.count <= m.syncs,
            "every synced write is timed: {m:?}"
        );

        let follower = *g.ids.iter().find(|&&id| id != leader).unwrap();
        eventually("the leader's links to both followers connected", || {
            let peers = g.transport(leader).peers();
            peers.len() == 2
                && peers
                    .iter()
                    .all(|p| p.state == ha_raft::PeerLinkState::Connected && p.failures == 0)
        })
        .await;

        #[cfg(feature = "prometheus")]
        let collector = ha_raft::prometheus::MemberCollector::new(g.node(leader).clone())
            .with_tcp(g.members[&leader].transport.clone());
        #[cfg(feature = "prometheus")]
        {
            let text = scrape(&collector);
            for line in [
                "ha_role{role=\"leader\"} 1".to_string(),
                "ha_proposal_duration_seconds_count 20".to_string(),
                "ha_read_duration_seconds_count{consistency=\"lease\"} 1".to_string(),
                format!(
                    "ha_peer_link_state{{peer=\"{}\",state=\"connected\"}} 1",
                    follower.0
                ),
                "ha_peer_connections_rejected_total{reason=\"bad_magic\"} 0".to_string(),
            ] {
                assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
            }
        }

        // A peer that goes away shows as failing, not connected.
        g.stop(follower).await;
        eventually(
            "the leader sees its link to the stopped member fail",
            || {
                g.transport(leader).peers().iter().any(|p| {
                    p.id == follower
                        && p.state != ha_raft::PeerLinkState::Connected
                        && p.failures > 0
                })
            },
        )
        .await;
        #[cfg(feature = "prometheus")]
        {
            let text = scrape(&collector);
            let line = format!(
                "ha_peer_link_state{{peer=\"{}\",state=\"connected\"}} 0",
                follower.0
            );
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        g.shutdown().await;
    })
    .await;
}

#[cfg(feature = "prometheus")]
fn scrape(collector: &ha_raft::prometheus::MemberCollector) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(collector.clone()));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    text
}

// ---------------------------------------------------------------------------
// Hostile and broken connections.

/// A hello as the wire format documents it.
fn hello(magic: &[u8; 4], version: u16, cluster: &ClusterId, from: u64, to: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(magic);
    b.extend_from_slice(&version.to_be_bytes());
    b.extend_from_slice(&cluster.0);
    b.extend_from_slice(&from.to_be_bytes());
    b.extend_from_slice(&to.to_be_bytes());
    b
}

/// The frame payload type, as the wire format documents it.
#[derive(Clone, PartialEq, prost::Message)]
struct Batch {
    #[prost(message, repeated, tag = "1")]
    messages: Vec<Message>,
}

fn frame(messages: Vec<Message>) -> Vec<u8> {
    let payload = prost::Message::encode_to_vec(&Batch { messages });
    let mut b = (payload.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(&payload);
    b
}

/// Sends `bytes` to `addr` (then ends its side unless it is `silent`) and
/// expects the receiver to close the connection (it never writes, so a
/// read sees the end or a reset).
async fn expect_closed(addr: SocketAddr, bytes: &[u8], silent: bool, case: &str) {
    let mut s = TcpStream::connect(addr).await.expect("connect to member");
    // The receiver may close before all is written; that is the point.
    let _ = s.write_all(bytes).await;
    if !silent {
        let _ = s.shutdown().await;
    }
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(PATIENCE, s.read(&mut buf)).await;
    match r {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("{case}: the member wrote {n} bytes on a peer connection"),
        Err(_) => panic!("{case}: connection not closed within {PATIENCE:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_connections_close_alone_and_the_group_keeps_committing() {
    bounded(async {
        let tcp = TcpConfig {
            handshake_timeout: Duration::from_millis(300),
            ..TcpConfig::default()
        };
        let mut g = Group::start(3, tcp).await;
        g.leader().await;
        g.propose(NodeId(1)).await;
        let target = NodeId(1);
        let addr = g.addr(target);
        let cluster = g.cluster_id();
        let other = ClusterId::derive(&g.ids, "another group");
        let good = |from: u64| hello(b"HARP", 1, &cluster, from, 1);
        let msg = |t: i32| Message {
            msg_type: t,
            from: 2,
            to: 1,
            term: 1_000,
            ..Default::default()
        };
        let with = |mut h: Vec<u8>, tail: &[u8]| {
            h.extend_from_slice(tail);
            h
        };

        type Counter = fn(&ha_raft::TcpRejections) -> u64;
        let cases: Vec<(&str, Vec<u8>, Counter)> = vec![
            (
                "garbage bytes",
                b"GET / HTTP/1.1\r\nHost: ha\r\n\r\n".to_vec(),
                |r| r.bad_magic,
            ),
            (
                "oversized length prefix",
                with(good(99), &u32::MAX.to_be_bytes()),
                |r| r.frame_too_large,
            ),
            (
                "another cluster's hello",
                hello(b"HARP", 1, &other, 2, 1),
                |r| r.other_cluster,
            ),
            (
                "unknown protocol version",
                hello(b"HARP", 3, &cluster, 2, 1),
                |r| r.unknown_version,
            ),
            (
                "hello for another member",
                hello(b"HARP", 1, &cluster, 3, 2),
                |r| r.wrong_receiver,
            ),
            (
                "hello claiming to be the receiver",
                hello(b"HARP", 1, &cluster, 1, 1),
                |r| r.invalid_sender,
            ),
            (
                "undecodable payload",
                with(
                    good(99),
                    &[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                ),
                |r| r.malformed_frame,
            ),
            (
                // raft-rs's getters panic on an unknown message type: this
                // member would die if it reached raft. Sent as member 2.
                "unknown raft message type",
                with(good(2), &frame(vec![msg(99)])),
                |r| r.malformed_frame,
            ),
            (
                "unknown raft entry type",
                with(
                    good(2),
                    &frame(vec![Message {
                        entries: vec![Entry {
                            entry_type: 42,
                            index: 1_000,
                            term: 1_000,
                            ..Default::default()
                        }],
                        ..msg(MessageType::MsgAppend as i32)
                    }]),
                ),
                |r| r.malformed_frame,
            ),
            (
                "local-only raft message",
                with(good(2), &frame(vec![msg(MessageType::MsgHup as i32)])),
                |r| r.malformed_frame,
            ),
            (
                "frame cut short",
                with(good(99), &[0, 0, 1, 0, 1, 2, 3]),
                |r| r.truncated,
            ),
            ("silence (no hello)", Vec::new(), |r| r.handshake_timeout),
        ];
        for (case, bytes, counter) in cases {
            let before = g.transport(target).stats().rejected;
            expect_closed(addr, &bytes, bytes.is_empty(), case).await;
            eventually(&format!("{case}: counted"), || {
                counter(&g.transport(target).stats().rejected) == counter(&before) + 1
            })
            .await;
            // Only that connection closed: the group still commits, also
            // through the member that was attacked.
            g.propose(target).await;
            g.assert_no_fatal();
        }
        let s = g.transport(target).stats();
        assert_eq!(s.rejected.total(), 12, "{s:?}");
        g.converged().await;
        // The frames that carried poison delivered nothing.
        for id in g.running() {
            assert!(
                g.node(id).status().term < 1_000,
                "a poisoned message reached raft"
            );
        }
        g.assert_no_fatal();
        g.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Bare transports with a recording sink.

#[derive(Default)]
struct Recorder {
    delivered: Mutex<Vec<Message>>,
    unreachable: Mutex<BTreeMap<NodeId, u64>>,
    snapshots: Mutex<Vec<(NodeId, SnapshotOutcome)>>,
}

impl MessageSink for Recorder {
    fn deliver(&self, msg: Message) {
        self.delivered.lock().unwrap().push(msg);
    }
    fn report_unreachable(&self, peer: NodeId) {
        *self.unreachable.lock().unwrap().entry(peer).or_default() += 1;
    }
    fn report_snapshot(&self, peer: NodeId, outcome: SnapshotOutcome) {
        self.snapshots.lock().unwrap().push((peer, outcome));
    }
    fn open_snapshot(&self, _msg: &Message) -> Result<Box<dyn SnapshotReader>, StorageError> {
        Err(StorageError::corrupt("recorder", "holds no snapshots"))
    }
    fn receive_snapshot(&self, _msg: Message) -> Result<Box<dyn SnapshotWriter>, StorageError> {
        Err(StorageError::corrupt("recorder", "stages no snapshots"))
    }
    /// Echoes every call, prefixed with the caller's id.
    fn handle_call(&self, from: NodeId, request: Bytes, reply: CallReply) {
        let mut r = from.0.to_be_bytes().to_vec();
        r.extend_from_slice(&request);
        reply(Ok(Bytes::from(r)));
    }
}

impl Recorder {
    fn delivered(&self) -> usize {
        self.delivered.lock().unwrap().len()
    }
    fn unreachable(&self, peer: NodeId) -> u64 {
        self.unreachable
            .lock()
            .unwrap()
            .get(&peer)
            .copied()
            .unwrap_or(0)
    }
    fn snapshots(&self) -> Vec<(NodeId, SnapshotOutcome)> {
        self.snapshots.lock().unwrap().clone()
    }
}

fn bare_cluster() -> ClusterId {
    ClusterId::derive(&[NodeId(1), NodeId(2)], "bare")
}

async fn bare(id: u64, tcp: TcpConfig) -> (Arc<TcpTransport>, Arc<Recorder>) {
    let t = TcpTransport::bind(loopback(), bare_cluster(), NodeId(id), tcp)
        .await
        .expect("bind");
    let r = Arc::new(Recorder::default());
    t.start(NodeId(id), r.clone());
    (t, r)
}

fn heartbeat(from: u64, to: u64, seq: u64) -> Message {
    Message {
        msg_type: MessageType::MsgHeartbeat as i32,
        from,
        to,
        commit: seq,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_arrive_in_order_batched_and_only_as_addressed() {
    bounded(async {
        let tcp = TcpConfig {
            send_queue_len: 20_000,
            ..TcpConfig::default()
        };
        let (a, ra) = bare(1, tcp.clone()).await;
        let (b, rb) = bare(2, tcp).await;
        a.set_peer(NodeId(2), b.local_addr());

        // A burst from a plain thread, as the raft thread sends.
        const N: u64 = 10_000;
        let sender = a.clone();
        std::thread::spawn(move || {
            for seq in 1..=N {
                sender.send(heartbeat(1, 2, seq));
            }
        })
        .join()
        .unwrap();
        eventually("all messages delivered", || rb.delivered() == N as usize).await;
        let seqs: Vec<u64> = rb
            .delivered
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.commit)
            .collect();
        assert_eq!(
            seqs,
            (1..=N).collect::<Vec<_>>(),
            "messages reordered or lost"
        );
        let s = a.stats();
        assert_eq!(s.messages_sent, N);
        assert_eq!(s.dropped(), 0, "{s:?}");
        assert!(
            s.frames_sent < N,
            "no batching: {} frames for {N} messages",
            s.frames_sent
        );
        assert_eq!(s.connect_attempts, 1, "one connection per peer: {s:?}");
        assert_eq!(b.stats().frames_received, s.frames_sent);

        // A message whose `from` is not the connection's sender is dropped.
        a.send(heartbeat(7, 2, 0));
        a.send(heartbeat(1, 2, N + 1));
        eventually("the genuine message after it", || {
            rb.delivered() == N as usize + 1
        })
        .await;
        assert_eq!(b.stats().messages_misaddressed, 1);
        assert_eq!(rb.delivered.lock().unwrap().last().unwrap().commit, N + 1);

        // No address: dropped and reported unreachable.
        a.send(heartbeat(1, 3, 0));
        assert_eq!(a.stats().dropped_no_address, 1);
        assert_eq!(ra.unreachable(NodeId(3)), 1);

        // A snapshot message reports its outcome: failed here, as the
        // recorder has no snapshot to open (and 3 has no address). Neither
        // goes out on the message connection.
        let snap = |to| Message {
            msg_type: MessageType::MsgSnapshot as i32,
            from: 1,
            to,
            ..Default::default()
        };
        let frames = a.stats().frames_sent;
        a.send(snap(2));
        a.send(snap(3));
        eventually("snapshot outcomes reported", || ra.snapshots().len() == 2).await;
        let outcomes = ra.snapshots();
        assert!(outcomes.contains(&(NodeId(2), SnapshotOutcome::Failed)));
        assert!(outcomes.contains(&(NodeId(3), SnapshotOutcome::Failed)));
        let s = a.stats();
        assert_eq!(s.snapshots_send_failed, 1, "{s:?}");
        assert_eq!(s.snapshots_sent, 0, "{s:?}");
        assert_eq!(s.frames_sent, frames, "a snapshot went inline: {s:?}");

        a.stop();
        b.stop();
        a.closed().await;
        b.closed().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_down_peer_never_blocks_send_and_its_queue_stays_capped() {
    bounded(async {
        const CAP: usize = 64;
        let tcp = TcpConfig {
            send_queue_len: CAP,
            // Keep the stalled writer stalled for the whole test.
            write_timeout: Duration::from_secs(600),
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_millis(200),
            ..TcpConfig::default()
        };
        let (a, ra) = bare(1, tcp).await;
        // Peer 2: nobody listens (connection refused).
        let refused = {
            let l = std::net::TcpListener::bind(loopback()).unwrap();
            l.local_addr().unwrap()
        };
        a.set_peer(NodeId(2), refused);
        // Peer 3: accepts but never reads, so writes stall once the socket
        // buffers are full.
        let sink_hole = tokio::net::TcpListener::bind(loopback()).await.unwrap();
        a.set_peer(NodeId(3), sink_hole.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = sink_hole.accept().await {
                held.push(s);
            }
        });

        const N: u64 = 20_000;
        let sender = a.clone();
        let worst = std::thread::spawn(move || {
            let payload = vec![7u8; 4096];
            let mut worst = Duration::ZERO;
            let mut max_queued = 0;
            for i in 0..N {
                let to = 2 + i % 2;
                let m = Message {
                    msg_type: MessageType::MsgAppend as i32,
                    from: 1,
                    to,
                    entries: vec![Entry {
                        data: payload.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                let t = Instant::now();
                sender.send(m);
                worst = worst.max(t.elapsed());
                if i % 1000 == 0 {
                    max_queued = max_queued.max(sender.stats().queued_messages);
                }
            }
            (worst, max_queued)
        })
        .join()
        .unwrap();
        let (worst_send, max_queued) = worst;
        assert!(
            worst_send < Duration::from_millis(200),
            "send blocked for {worst_send:?}"
        );
        assert!(
            max_queued <= 2 * CAP as u64,
            "queues grew past their cap: {max_queued}"
        );
        let s = a.stats();
        assert!(s.queued_messages <= 2 * CAP as u64, "{s:?}");
        assert!(
            s.dropped_queue_full > 0,
            "the stalled peer's queue never filled: {s:?}"
        );
        // Unreachable is reported per failed connection attempt, not per
        // message.
        let reports = ra.unreachable(NodeId(2));
        assert!(reports >= 1, "the refused peer was never reported");
        assert!(
            reports <= s.connect_failures + s.connections_lost,
            "more reports ({reports}) than failed attempts: {s:?}"
        );
        assert!(reports < N / 4, "reported per message: {reports}");
        // Nothing is counted twice (a stalled write holds the rest).
        assert!(
            s.messages_sent + s.dropped() + s.queued_messages <= N,
            "more messages accounted for than sent: {s:?}"
        );

        a.stop();
        a.stop();
        tokio::time::timeout(PATIENCE, a.closed())
            .await
            .expect("a stalled writer ends at stop");
        held.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_is_idempotent_ends_every_task_and_frees_the_port() {
    bounded(async {
        let (a, _ra) = bare(1, TcpConfig::default()).await;
        let (b, rb) = bare(2, TcpConfig::default()).await;
        a.set_peer(NodeId(2), b.local_addr());
        b.set_peer(NodeId(1), a.local_addr());
        a.send(heartbeat(1, 2, 1));
        b.send(heartbeat(2, 1, 1));
        eventually("connected both ways", || {
            let (sa, sb) = (a.stats(), b.stats());
            rb.delivered() == 1
                && sa.open_inbound == 1
                && sa.open_outbound == 1
                && sb.open_inbound == 1
        })
        .await;
        let b_addr = b.local_addr();
        b.stop();
        b.stop();
        tokio::time::timeout(PATIENCE, b.closed())
            .await
            .expect("every task ends after stop");
        let s = b.stats();
        assert_eq!((s.open_inbound, s.open_outbound), (0, 0), "{s:?}");
        b.send(heartbeat(2, 1, 2));
        assert_eq!(b.stats().dropped_stopped, 1);
        // The other side notices its peer went away.
        eventually("a's connections to b closed", || {
            let s = a.stats();
            s.open_inbound == 0 && s.open_outbound == 0
        })
        .await;
        // The port is free again at once.
        let again = TcpTransport::bind(b_addr, bare_cluster(), NodeId(2), TcpConfig::default())
            .await
            .expect("the port of a stopped transport can be bound again");
        drop(again);
        a.stop();
        a.closed().await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Snapshots over TCP.

/// A log that compacts early, and snapshots cut into many small chunks sent
/// slowly enough that a transfer lasts well over an election timeout.
fn small_log(cfg: &mut Config) {
    cfg.compaction_threshold = 100;
    cfg.compaction_retain = 20;
    cfg.snapshot_chunk_size = 256;
    cfg.snapshot_rate_limit = 4 * 1024;
}

/// [`small_log`], slower still: a transfer takes several seconds, so a test
/// can cut it half-way.
fn slow_snapshots(cfg: &mut Config) {
    small_log(cfg);
    cfg.snapshot_rate_limit = 3 * 1024;
}

impl Group {
    /// Proposes `count` commands through `via`, spread over more than a
    /// second so that the state store syncs (the log is compacted only up
    /// to what the state store holds durably).
    async fn write_spread(&mut self, via: NodeId, count: u64) {
        for i in 0..count {
            self.propose(via).await;
            if i % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    }

    /// Waits until `id`'s log no longer holds `index`.
    async fn wait_compacted(&self, id: NodeId, index: u64) {
        let log = &self.members[&id].log;
        eventually(
            &format!("member {id} compacts its log past {index}"),
            || log.first_index().expect("memory log") > index,
        )
        .await;
    }

    /// Stops a follower, writes until the leader compacted the log past
    /// what the follower holds, and restarts it on a new port (the others
    /// learn the address). Returns (leader, follower).
    async fn leave_one_behind_the_compacted_log(&mut self) -> (NodeId, NodeId) {
        let leader = self.leader().await;
        let late = *self.ids.iter().find(|&&id| id != leader).unwrap();
        self.write_spread(leader, 30).await;
        self.converged().await;
        let held = self.node(late).status().applied;
        self.stop(late).await;
        self.write_spread(leader, 400).await;
        // The log is compacted only up to what the state store synced; the
        // late member needs entries well before that point.
        self.wait_compacted(leader, held + 50).await;
        self.restart_and_announce(late).await;
        (leader, late)
    }

    /// Restarts a stopped member on a new port and tells the others.
    async fn restart_and_announce(&mut self, id: NodeId) {
        self.restart_on(id, loopback()).await;
        let addr = self.addr(id);
        for peer in self.ids.clone() {
            if peer != id {
                self.transport(peer).set_peer(id, addr);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_behind_the_compacted_log_catches_up_by_snapshot_over_tcp() {
    bounded(async {
        let mut g = Group::start_with(3, TcpConfig::default(), small_log).await;
        let (leader, late) = g.leave_one_behind_the_compacted_log().await;
        let term = g.node(leader).status().term;

        // Until it installed the snapshot, the late member must keep its
        // leader: the leader's heartbeats reach it on the message connection
        // while the snapshot streams on its own (a follower that misses them
        // for an election timeout turns pre-candidate and forgets the
        // leader).
        let mut knew_leader = false;
        let mut streaming_since = None;
        let deadline = Instant::now() + PATIENCE;
        while g.node(late).metrics().snapshots_installed == 0 {
            let st = g.node(late).status();
            if st.leader == Some(leader) {
                knew_leader = true;
            } else {
                assert!(
                    !knew_leader,
                    "member {late} lost its leader while catching up: {st:?}"
                );
            }
            if streaming_since.is_none() && g.transport(late).stats().open_snapshot_streams > 0 {
                streaming_since = Some(Instant::now());
            }
            assert!(
                Instant::now() < deadline,
                "member {late} installed no snapshot within {PATIENCE:?}: {:?}",
                g.transport(late).stats()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = streaming_since
            .map(|t| t.elapsed())
            .expect("the snapshot stream was never seen open");
        tracing::info!(?took, "snapshot streamed and installed");
        // Long enough that missed heartbeats would have shown above.
        assert!(
            took > Duration::from_millis(600),
            "the transfer took only {took:?}: too short to show heartbeats flowing"
        );
        g.converged().await;
        assert_eq!(g.leader().await, leader, "the leader changed");
        assert_eq!(
            g.node(leader).status().term,
            term,
            "an election ran during the transfer"
        );

        let (sent, got) = (g.transport(leader).stats(), g.transport(late).stats());
        assert!(sent.snapshots_sent >= 1, "{sent:?}");
        assert!(got.snapshots_received >= 1, "{got:?}");
        assert!(
            got.snapshot_bytes_received >= 10 * 256,
            "the snapshot was not streamed in many chunks: {got:?}"
        );
        assert_eq!(got.rejected.total(), 0, "{got:?}");
        assert_eq!(sent.open_snapshot_streams + got.open_snapshot_streams, 0);

        // It is a full member again: writes through it commit everywhere.
        for _ in 0..5 {
            g.propose(late).await;
        }
        g.converged().await;
        g.assert_no_fatal();
        g.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_transfer_cut_half_way_fails_and_the_retry_succeeds() {
    bounded(async {
        let mut g = Group::start_with(3, TcpConfig::default(), slow_snapshots).await;
        let (leader, late) = g.leave_one_behind_the_compacted_log().await;

        eventually("the snapshot starts streaming", || {
            g.transport(late).stats().snapshot_bytes_received > 0
        })
        .await;
        let s = g.transport(late).stats();
        assert_eq!(s.snapshots_received, 0, "the transfer was not slow: {s:?}");
        // Cut: the receiver goes away mid-stream.
        g.stop(late).await;
        eventually("the sender reports the cut transfer failed", || {
            g.transport(leader).stats().snapshots_send_failed >= 1
        })
        .await;
        let s = g.transport(leader).stats();
        assert_eq!(s.snapshots_sent, 0, "a cut transfer counted as sent: {s:?}");
        g.propose(leader).await;

        // Back, and raft's retry streams it again, to the end this time.
        g.restart_and_announce(late).await;
        g.converged().await;
        let m = g.node(late).metrics();
        assert!(m.snapshots_installed >= 1, "{m:?}");
        let s = g.transport(leader).stats();
        assert!(s.snapshots_sent >= 1, "the retry did not succeed: {s:?}");
        g.propose(late).await;
        g.converged().await;
        g.assert_no_fatal();
        g.shutdown().await;
    })
    .await;
}

/// The descriptor the engine puts in `Snapshot.data` (its size and CRC are
/// what the receiver checks); a test copy, to forge one.
#[derive(Clone, PartialEq, prost::Message)]
struct Descriptor {
    #[prost(uint64, tag = "1")]
    index: u64,
    #[prost(uint64, tag = "2")]
    term: u64,
    #[prost(uint64, tag = "3")]
    size: u64,
    #[prost(uint32, tag = "4")]
    crc32: u32,
    #[prost(uint64, tag = "5")]
    id: u64,
    #[prost(uint64, tag = "6")]
    builder: u64,
}

/// A `MsgSnapshot` from 2 to 1 at a far-future index and term: if it ever
/// reached raft, member 1's term would jump to 1000.
fn forged_snapshot(from: u64, size: u64, crc32: u32) -> Message {
    let descriptor = Descriptor {
        index: 1_000_000,
        term: 1_000,
        size,
        crc32,
        id: 1,
        builder: from,
    };
    Message {
        msg_type: MessageType::MsgSnapshot as i32,
        from,
        to: 1,
        term: 1_000,
        snapshot: Some(Snapshot {
            data: prost::Message::encode_to_vec(&descriptor),
            metadata: Some(SnapshotMetadata {
                index: 1_000_000,
                term: 1_000,
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// A snapshot-stream frame as the wire format documents it.
fn snap_frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    b.push(tag);
    b.extend_from_slice(payload);
    b
}

/// Sends a snapshot stream and expects the receiver to close the
/// connection without acknowledging it: it may answer an error ack (tag 5),
/// never an ok (tag 4).
async fn expect_snapshot_refused(addr: SocketAddr, bytes: &[u8], silent: bool, case: &str) {
    let mut s = TcpStream::connect(addr).await.expect("connect to member");
    let _ = s.write_all(bytes).await;
    if !silent {
        let _ = s.shutdown().await;
    }
    let mut answer = Vec::new();
    let r = tokio::time::timeout(PATIENCE, s.read_to_end(&mut answer)).await;
    assert!(
        r.is_ok(),
        "{case}: connection not closed within {PATIENCE:?}"
    );
    if !answer.is_empty() {
        assert!(
            answer.len() >= 5 && answer[4] == 5,
            "{case}: the member answered something other than an error ack: {answer:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_snapshot_streams_close_alone_and_reach_nothing() {
    bounded(async {
        let tcp = TcpConfig {
            snapshot_idle_timeout: Duration::from_millis(500),
            ..TcpConfig::default()
        };
        let mut g = Group::start(3, tcp).await;
        g.leader().await;
        g.propose(NodeId(1)).await;
        let target = NodeId(1);
        let addr = g.addr(target);
        let cluster = g.cluster_id();
        let open = |from: u64, kind: u8| {
            let mut h = hello(b"HARP", 2, &cluster, from, 1);
            h.push(kind);
            h
        };
        let stream = |parts: &[Vec<u8>]| {
            let mut b = open(2, 1);
            for p in parts {
                b.extend_from_slice(p);
            }
            b
        };
        let header = |m: &Message| snap_frame(1, &prost::Message::encode_to_vec(m));
        let chunk = |n: usize| snap_frame(2, &vec![0xa5; n]);
        let end = snap_frame(3, &[]);
        let crc_of_1000 = crc32fast::hash(&[0xa5; 1000]);

        type Counter = fn(&ha_raft::TcpRejections) -> u64;
        let cases: Vec<(&str, Vec<u8>, bool, Counter)> = vec![
            ("unknown connection kind", open(2, 7), false, |r| {
                r.unknown_kind
            }),
            (
                "a chunk before the header",
                stream(&[chunk(10)]),
                false,
                |r| r.malformed_frame,
            ),
            (
                "a header that is not a snapshot",
                stream(&[header(&Message {
                    msg_type: MessageType::MsgAppend as i32,
                    from: 2,
                    to: 1,
                    term: 1_000,
                    ..Default::default()
                })]),
                false,
                |r| r.malformed_frame,
            ),
            (
                "an undecodable header",
                stream(&[snap_frame(1, &[0xff; 9])]),
                false,
                |r| r.malformed_frame,
            ),
            (
                "a header from another sender than the hello's",
                stream(&[header(&forged_snapshot(3, 1000, crc_of_1000))]),
                false,
                |r| r.malformed_frame,
            ),
            (
                "an oversized frame",
                stream(&[u32::MAX.to_be_bytes().to_vec()]),
                false,
                |r| r.frame_too_large,
            ),
            (
                "an unknown frame tag",
                stream(&[
                    header(&forged_snapshot(2, 1000, crc_of_1000)),
                    snap_frame(9, b"?"),
                ]),
                false,
                |r| r.malformed_frame,
            ),
            (
                "a wrong CRC",
                stream(&[
                    header(&forged_snapshot(2, 1000, crc_of_1000 ^ 1)),
                    chunk(400),
                    chunk(600),
                    end.clone(),
                ]),
                false,
                |r| r.snapshot_refused,
            ),
            (
                "more bytes than announced",
                stream(&[
                    header(&forged_snapshot(2, 1000, crc_of_1000)),
                    chunk(600),
                    chunk(600),
                    end.clone(),
                ]),
                false,
                |r| r.snapshot_refused,
            ),
            (
                "fewer bytes than announced",
                stream(&[
                    header(&forged_snapshot(2, 1000, crc_of_1000)),
                    chunk(500),
                    end.clone(),
                ]),
                false,
                |r| r.snapshot_refused,
            ),
            (
                "cut before the end marker",
                stream(&[header(&forged_snapshot(2, 1000, crc_of_1000)), chunk(1000)]),
                false,
                |r| r.truncated,
            ),
            (
                "a stream that stalls",
                stream(&[header(&forged_snapshot(2, 1000, crc_of_1000)), chunk(10)]),
                true,
                |r| r.snapshot_idle,
            ),
        ];
        let n = cases.len() as u64;
        for (case, bytes, silent, counter) in cases {
            let before = g.transport(target).stats().rejected;
            expect_snapshot_refused(addr, &bytes, silent, case).await;
            eventually(&format!("{case}: counted"), || {
                counter(&g.transport(target).stats().rejected) == counter(&before) + 1
            })
            .await;
            g.propose(target).await;
            g.assert_no_fatal();
        }
        let s = g.transport(target).stats();
        assert_eq!(s.rejected.total(), n, "{s:?}");
        assert_eq!(s.snapshots_received, 0, "{s:?}");
        assert_eq!(s.open_snapshot_streams, 0, "{s:?}");
        g.converged().await;
        let m = g.node(target).metrics();
        assert_eq!(
            (m.snapshots_received, m.snapshots_installed),
            (0, 0),
            "a forged snapshot reached the engine: {m:?}"
        );
        for id in g.running() {
            assert!(
                g.node(id).status().term < 1_000,
                "a forged snapshot reached raft"
            );
        }
        g.assert_no_fatal();
        g.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Peer calls over TCP.

/// A call handler for tests: `fail` (a handler error), `not-leader`,
/// `hang` (never answers), `slow` (answers after 500 ms), `delay:<ms>:<x>`
/// (answers after that long, so replies come back out of order); anything
/// else is echoed as `callee<-caller:request`.
struct Echo(NodeId);

#[async_trait::async_trait]
impl ha_raft::CallHandler for Echo {
    async fn handle(&self, from: NodeId, request: Bytes) -> ha_core::Result<Bytes> {
        let text = String::from_utf8_lossy(&request).into_owned();
        match text.as_str() {
            "fail" => return Err(Error::LeaseNotFound { lease: 7 }),
            "not-leader" => {
                return Err(Error::NotLeader {
                    leader_hint: Some(NodeId(3)),
                });
            }
            "hang" => return futures::future::pending().await,
            "slow" => tokio::time::sleep(Duration::from_millis(500)).await,
            t if t.starts_with("delay:") => {
                let ms: u64 = t
                    .split(':')
                    .nth(1)
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            _ => {}
        }
        Ok(Bytes::from(format!("{}<-{}:{}", self.0, from, text)))
    }
}

fn echoed(callee: NodeId, caller: NodeId, request: &str) -> Bytes {
    Bytes::from(format!("{callee}<-{caller}:{request}"))
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_calls_over_tcp_round_trip_and_call_leader_reaches_the_leader() {
    bounded(async {
        let g = Group::start(3, TcpConfig::default()).await;
        let leader = g.leader().await;
        for &id in &g.ids {
            g.node(id).set_call_handler(Arc::new(Echo(id)));
        }
        for &from in &g.ids {
            for &to in &g.ids {
                let req = format!("ping {from}->{to}");
                let r = g
                    .node(from)
                    .call(to, Bytes::from(req.clone()), CALL_TIMEOUT)
                    .await
                    .unwrap_or_else(|e| panic!("call {from} -> {to} failed: {e}"));
                assert_eq!(r, echoed(to, from, &req), "reply of the wrong handler");
            }
        }
        // Each member dialled each peer once, and served each peer once.
        for &id in &g.ids {
            let s = g.transport(id).stats();
            assert_eq!(
                (s.calls_sent, s.calls_received),
                (2, 2),
                "member {id}: {s:?}"
            );
            assert_eq!(s.open_call_connections, 4, "member {id}: {s:?}");
        }
        let follower = *g.ids.iter().find(|&&m| m != leader).unwrap();
        let r = g
            .node(follower)
            .call_leader(Bytes::from_static(b"renew"), CALL_TIMEOUT)
            .await
            .expect("call_leader from a follower");
        assert_eq!(r, echoed(leader, follower, "renew"));
        let before = g.transport(leader).stats().calls_sent;
        let r = g
            .node(leader)
            .call_leader(Bytes::from_static(b"renew"), CALL_TIMEOUT)
            .await
            .expect("call_leader on the leader");
        assert_eq!(r, echoed(leader, leader, "renew"));
        assert_eq!(
            g.transport(leader).stats().calls_sent,
            before,
            "the leader called itself over the network"
        );
        g.assert_no_fatal();
        g.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundreds_of_concurrent_calls_share_one_connection_and_each_gets_its_reply() {
    bounded(async {
        let g =
            Group::start_with(2, TcpConfig::default(), |c| c.max_concurrent_calls = 1_000).await;
        g.leader().await;
        g.node(NodeId(2))
            .set_call_handler(Arc::new(Echo(NodeId(2))));
        let caller = g.node(NodeId(1)).clone();
        // Later requests answer sooner: replies come back out of order.
        let calls = (0..500u64).map(|i| {
            let n = caller.clone();
            async move {
                let req = format!("delay:{}:{i}", (500 - i) % 50);
                let r = n
                    .call(NodeId(2), Bytes::from(req.clone()), CALL_TIMEOUT)
                    .await;
                (req, r)
            }
        });
        for (req, r) in futures::future::join_all(calls).await {
            let r = r.unwrap_or_else(|e| panic!("{req} failed: {e}"));
            assert_eq!(
                r,
                echoed(NodeId(2), NodeId(1), &req),
                "a reply went to the wrong call"
            );
        }
        let s = g.transport(NodeId(1)).stats();
        assert_eq!(s.calls_sent, 500, "{s:?}");
        assert_eq!(
            s.open_call_connections, 1,
            "one call connection per peer: {s:?}"
        );
        assert_eq!(s.rejected.total(), 0, "{s:?}");
        g.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn call_failures_over_tcp_are_typed_and_late_replies_are_discarded() {
    bounded(async {
        let tcp = TcpConfig {
            max_calls_in_flight: 4,
            max_call_bytes: 64 * 1024,
            ..TcpConfig::default()
        };
        let mut g = Group::start(3, tcp).await;
        g.leader().await;
        let (a, b, n3) = (NodeId(1), NodeId(2), NodeId(3));
        g.node(b).set_call_handler(Arc::new(Echo(b)));
        let caller = g.node(a).clone();
        let call = |to: NodeId, req: &'static str, t: Duration| {
            caller.call(to, Bytes::from_static(req.as_bytes()), t)
        };

        match call(n3, "x", CALL_TIMEOUT).await {
            Err(Error::NoCallHandler { peer }) => assert_eq!(peer, n3),
            other => panic!("a member without a handler must say so: {other:?}"),
        }
        match call(b, "fail", CALL_TIMEOUT).await {
            Err(Error::CallFailed { peer, reason }) => {
                assert_eq!(peer, b);
                assert!(reason.contains("lease 7"), "{reason}");
            }
            other => panic!("a handler error must be CallFailed: {other:?}"),
        }
        match call(b, "not-leader", CALL_TIMEOUT).await {
            Err(Error::NotLeader { leader_hint }) => assert_eq!(leader_hint, Some(n3)),
            other => panic!("NotLeader must arrive as itself: {other:?}"),
        }
        match g
            .node(a)
            .call(b, Bytes::from(vec![7u8; 64 * 1024]), CALL_TIMEOUT)
            .await
        {
            Err(Error::TooLarge { .. }) => {}
            other => panic!("a request over max_call_bytes must be TooLarge: {other:?}"),
        }

        // The deadline: the reply that comes later is discarded, and the
        // connection goes on serving.
        let started = Instant::now();
        match call(b, "slow", Duration::from_millis(100)).await {
            Err(Error::CallOutcomeUnknown { peer, cause }) => {
                assert_eq!((peer, cause), (b, UnknownCause::DeadlineExceeded))
            }
            other => panic!("a call without a reply in time must be CallOutcomeUnknown: {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        eventually("the late reply arrives and is discarded", || {
            g.transport(a).stats().call_replies_late == 1
        })
        .await;
        assert_eq!(
            call(b, "y", CALL_TIMEOUT).await.ok(),
            Some(echoed(b, a, "y"))
        );

        // At most 4 calls in flight to one peer: a fifth is refused at once.
        let hung: Vec<_> = (0..4)
            .map(|_| {
                let n = g.node(a).clone();
                tokio::spawn(async move {
                    n.call(b, Bytes::from_static(b"hang"), Duration::from_secs(2))
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        match call(b, "x", CALL_TIMEOUT).await {
            Err(Error::Overloaded {
                reason: OverloadReason::TooManyCalls,
            }) => {}
            other => panic!("a fifth call in flight must be Overloaded: {other:?}"),
        }
        for h in hung {
            assert!(matches!(
                h.await.expect("calling task"),
                Err(Error::CallOutcomeUnknown { .. })
            ));
        }
        assert_eq!(
            call(b, "z", CALL_TIMEOUT).await.ok(),
            Some(echoed(b, a, "z"))
        );

        // A peer with no known address, and a peer that is down.
        match call(NodeId(9), "x", CALL_TIMEOUT).await {
            Err(Error::PeerUnreachable { peer }) => assert_eq!(peer, NodeId(9)),
            other => panic!("a peer without an address must be PeerUnreachable: {other:?}"),
        }
        g.stop(n3).await;
        // Member 1 has seen its call connection to member 3 close (only the
        // one to member 2 is left), so the next call dials afresh.
        eventually("the call connection to the stopped member closed", || {
            g.transport(a).stats().open_call_connections == 1
        })
        .await;
        let started = Instant::now();
        match call(n3, "x", CALL_TIMEOUT).await {
            Err(Error::PeerUnreachable { peer }) => assert_eq!(peer, n3),
            other => panic!("a peer that is down must be PeerUnreachable: {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no fast failure"
        );
        g.assert_no_fatal();
        g.shutdown().await;
    })
    .await;
}

/// A v2 hello with a connection kind.
fn hello_kind(cluster: &ClusterId, from: u64, to: u64, kind: u8) -> Vec<u8> {
    let mut h = hello(b"HARP", 2, cluster, from, to);
    h.push(kind);
    h
}

/// A call request frame as the wire format documents it.
fn call_request(id: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = ((8 + payload.len()) as u32).to_be_bytes().to_vec();
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// A call reply frame as the wire format documents it.
fn call_reply(id: u64, status: u8, body: &[u8]) -> Vec<u8> {
    let mut b = ((9 + body.len()) as u32).to_be_bytes().to_vec();
    b.extend_from_slice(&id.to_be_bytes());
    b.push(status);
    b.extend_from_slice(body);
    b
}

/// Accepts one connection and reads its hello (55 bytes) and `requests`
/// request frames; returns the stream and the request ids.
async fn accept_calls(
    listener: &tokio::net::TcpListener,
    requests: usize,
) -> (TcpStream, Vec<u64>) {
    let (mut s, _) = listener.accept().await.expect("accept");
    let mut hello = [0u8; 55];
    s.read_exact(&mut hello).await.expect("hello");
    assert_eq!(&hello[..6], b"HARP\0\x02", "not a version-2 hello");
    assert_eq!(hello[54], 2, "not a call connection");
    let mut ids = Vec::new();
    for _ in 0..requests {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.expect("request length");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.expect("request body");
        ids.push(u64::from_be_bytes(body[..8].try_into().unwrap()));
    }
    (s, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_call_connection_fails_pending_calls_and_the_next_call_reconnects() {
    bounded(async {
        let (caller, _r) = bare(1, TcpConfig::default()).await;
        // A fake peer that speaks the documented wire format.
        let fake = tokio::net::TcpListener::bind(loopback()).await.unwrap();
        caller.set_peer(NodeId(2), fake.local_addr().unwrap());
        let pending: Vec<_> = (0..3)
            .map(|i| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                caller.call(
                    NodeId(2),
                    Bytes::from(format!("p{i}")),
                    Duration::from_secs(30),
                    Box::new(move |r| {
                        let _ = tx.send(r);
                    }),
                );
                rx
            })
            .collect();
        let (s, ids) = accept_calls(&fake, 3).await;
        assert_eq!(ids, vec![1, 2, 3]);
        let started = Instant::now();
        drop(s);
        for rx in pending {
            match rx.await.expect("answered") {
                Err(Error::CallOutcomeUnknown { peer, cause }) => {
                    assert_eq!((peer, cause), (NodeId(2), UnknownCause::ConnectionLost))
                }
                other => panic!("a call pending on a lost connection: {other:?}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "pending calls waited for their deadline"
        );

        // The next call dials again; the fake answers it by its id.
        let (tx, rx) = tokio::sync::oneshot::channel();
        caller.call(
            NodeId(2),
            Bytes::from_static(b"again"),
            Duration::from_secs(30),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let (mut s, ids) = accept_calls(&fake, 1).await;
        s.write_all(&call_reply(ids[0], 0, b"pong")).await.unwrap();
        assert_eq!(
            rx.await.expect("answered").ok(),
            Some(Bytes::from_static(b"pong"))
        );

        // A reply to a call never made closes the connection, counted, and
        // fails what was pending on it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        caller.call(
            NodeId(2),
            Bytes::from_static(b"q"),
            Duration::from_secs(30),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let mut one = [0u8; 4 + 8 + 1];
        s.read_exact(&mut one)
            .await
            .expect("the request on the open connection");
        s.write_all(&call_reply(999, 0, b"forged")).await.unwrap();
        match rx.await.expect("answered") {
            Err(Error::CallOutcomeUnknown { cause, .. }) => {
                assert_eq!(cause, UnknownCause::ConnectionLost)
            }
            other => panic!("a call on a connection closed for a forged reply: {other:?}"),
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest)).await;
        let st = caller.stats();
        assert_eq!(st.rejected.unknown_call_id, 1, "{st:?}");
        assert_eq!(st.open_call_connections, 0, "{st:?}");

        // An unknown status byte is refused too.
        let (tx, rx) = tokio::sync::oneshot::channel();
        caller.call(
            NodeId(2),
            Bytes::from_static(b"r"),
            Duration::from_secs(30),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let (mut s, ids) = accept_calls(&fake, 1).await;
        s.write_all(&call_reply(ids[0], 77, b"")).await.unwrap();
        assert!(matches!(
            rx.await.expect("answered"),
            Err(Error::CallOutcomeUnknown { .. })
        ));
        assert_eq!(caller.stats().rejected.malformed_frame, 1);

        caller.stop();
        caller.closed().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_bytes_on_a_call_connection_close_it_alone() {
    bounded(async {
        let tcp = TcpConfig {
            call_stall_timeout: Duration::from_millis(300),
            max_call_bytes: 4096,
            ..TcpConfig::default()
        };
        let (t, _r) = bare(1, tcp).await;
        let addr = t.local_addr();
        let cluster = bare_cluster();
        let open = hello_kind(&cluster, 2, 1, 2);
        let with = |tail: &[u8]| {
            let mut b = open.clone();
            b.extend_from_slice(tail);
            b
        };

        // The documented format works on a raw socket: two requests, two
        // replies (the recorder echoes with the caller's id in front).
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut bytes = open.clone();
        bytes.extend_from_slice(&call_request(5, b"hi"));
        bytes.extend_from_slice(&call_request(6, b"there"));
        s.write_all(&bytes).await.unwrap();
        for (id, body) in [(5u64, &b"hi"[..]), (6, &b"there"[..])] {
            let mut want = 2u64.to_be_bytes().to_vec();
            want.extend_from_slice(body);
            let expected = call_reply(id, 0, &want);
            let mut got = vec![0u8; expected.len()];
            s.read_exact(&mut got).await.expect("a reply frame");
            assert_eq!(got, expected, "reply frame not as documented");
        }
        drop(s);

        type Counter = fn(&ha_raft::TcpRejections) -> u64;
        let cases: Vec<(&str, Vec<u8>, bool, Counter)> = vec![
            (
                "a frame shorter than its call id",
                with(&[0, 0, 0, 3, 1, 2, 3]),
                false,
                |r| r.malformed_frame,
            ),
            (
                "an oversized frame",
                with(&u32::MAX.to_be_bytes()),
                true,
                |r| r.frame_too_large,
            ),
            (
                "a frame just over max_call_bytes",
                with(&4097u32.to_be_bytes()),
                true,
                |r| r.frame_too_large,
            ),
            (
                "a frame that stalls half way",
                with(&[0, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 1, 9, 9]),
                true,
                |r| r.call_stalled,
            ),
            (
                "a frame cut short",
                with(&[0, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 1, 9, 9]),
                false,
                |r| r.truncated,
            ),
            (
                "random bytes after the hello",
                with(&[0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef]),
                true,
                |r| r.frame_too_large,
            ),
        ];
        for (case, bytes, silent, counter) in cases {
            let before = t.stats().rejected;
            // A rejected connection may still carry replies to complete
            // requests before the bad one; these carry none, so the member
            // writes nothing.
            expect_closed(addr, &bytes, silent, case).await;
            eventually(case, || {
                counter(&t.stats().rejected) == counter(&before) + 1
            })
            .await;
            assert_eq!(
                t.stats().rejected.total(),
                before.total() + 1,
                "{case}: counted as something else"
            );
        }
        eventually("every call connection closed", || {
            t.stats().open_call_connections == 0
        })
        .await;

        // The transport still serves calls.
        let (peer, _rp) = bare(2, TcpConfig::default()).await;
        peer.set_peer(NodeId(1), addr);
        let (tx, rx) = tokio::sync::oneshot::channel();
        peer.call(
            NodeId(1),
            Bytes::from_static(b"ok?"),
            Duration::from_secs(10),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let mut want = 2u64.to_be_bytes().to_vec();
        want.extend_from_slice(b"ok?");
        assert_eq!(rx.await.expect("answered").ok(), Some(Bytes::from(want)));
        for x in [&t, &peer] {
            x.stop();
            x.closed().await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// Mutual TLS (feature `tls`): `cargo test --features tls --test tcp tls`.

#[cfg(feature = "tls")]
mod tls {
    use std::path::Path;

    use super::*;
    use ha_raft::PeerSecurity;
    use ha_raft::tls::{ClientAuth, PeerTls, TlsFiles};
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    /// A test CA (rcgen).
    struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    /// A certificate and its key, PEM.
    struct Issued {
        cert: String,
        key: String,
    }

    impl Ca {
        fn new(name: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let issuer =
                CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            Ca { issuer }
        }

        fn pem(&self) -> String {
            self.issuer.pem()
        }

        /// A leaf for `names` (DNS names or IPs), for TLS server and client
        /// use; `expired` makes it valid only in 2000.
        fn issue(&self, names: &[&str], expired: bool) -> Issued {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            if expired {
                params.not_before = rcgen::date_time_ymd(2000, 1, 1);
                params.not_after = rcgen::date_time_ymd(2000, 12, 31);
            }
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Issued {
                cert: cert.pem(),
                key: key.serialize_pem(),
            }
        }
    }

    /// Writes `text` to `path` atomically (a rename), as a rotation would.
    fn put(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Writes a member's CA bundle, certificate and key under `dir`.
    fn write_member(dir: &Path, id: NodeId, ca_pem: &str, issued: &Issued) -> TlsFiles {
        let files = TlsFiles {
            ca: dir.join(format!("ca-{id}.pem")),
            cert: dir.join(format!("member-{id}.pem")),
            key: dir.join(format!("member-{id}.key")),
        };
        put(&files.ca, ca_pem);
        put(&files.cert, &issued.cert);
        put(&files.key, &issued.key);
        files
    }

    /// A group of `n` members with mutual TLS, certificates from `ca`.
    async fn tls_group(n: u64, dir: &Path, ca: &Ca, tcp: TcpConfig) -> Group {
        let mut security = BTreeMap::new();
        for id in (1..=n).map(NodeId) {
            let issued = ca.issue(&[&format!("member-{id}")], false);
            let files = write_member(dir, id, &ca.pem(), &issued);
            let tls = PeerTls::load(files, ClientAuth::Required).expect("TLS files load");
            security.insert(id, PeerSecurity::Tls(tls));
        }
        Group::start_secure(n, tcp, |_| {}, security).await
    }

    /// A raw TLS client's configuration: trusts `roots`, presents `identity`.
    fn client_config(roots: &[&str], identity: Option<&Issued>) -> Arc<rustls::ClientConfig> {
        let mut store = rustls::RootCertStore::empty();
        for pem in roots {
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                store.add(c.unwrap()).unwrap();
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store);
        let config = match identity {
            Some(i) => {
                let chain = CertificateDer::pem_slice_iter(i.cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_slice(i.key.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }

    /// Connects over TLS to `addr` expecting the server to be `server`.
    async fn tls_connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        server: NodeId,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(format!("member-{}", server.0)).unwrap();
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    }

    /// Sends `bytes` over TLS (if the handshake gets that far) and expects
    /// the member to close the connection.
    async fn expect_tls_closed(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        bytes: &[u8],
        case: &str,
    ) {
        // With TLS 1.3 the client's side of the handshake may complete
        // before the server has judged its certificate: the refusal then
        // shows as the connection ending.
        let Ok(mut s) = tls_connect(addr, config, NodeId(1)).await else {
            return;
        };
        let _ = s.write_all(bytes).await;
        let _ = s.flush().await;
        let mut buf = [0u8; 16];
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("{case}: the member wrote {n} bytes on a peer connection"),
            Err(_) => panic!("{case}: connection not closed within {PATIENCE:?}"),
        }
    }

    /// A plaintext hello to a TLS member: it answers with a TLS alert at
    /// most, then closes.
    async fn expect_plaintext_refused(addr: SocketAddr, bytes: &[u8], case: &str) {
        let mut s = TcpStream::connect(addr).await.expect("connect to member");
        let _ = s.write_all(bytes).await;
        let mut got = Vec::new();
        match tokio::time::timeout(PATIENCE, s.read_to_end(&mut got)).await {
            Ok(_) => assert!(
                got.first().is_none_or(|&b| b == 0x15),
                "{case}: the member answered something other than a TLS alert: {got:?}"
            ),
            Err(_) => panic!("{case}: connection not closed within {PATIENCE:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn tls_right_ca_and_id_accepted_impostors_rejected_group_keeps_working() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let ca = Ca::new("ha test CA");
            let mut g = tls_group(3, dir.path(), &ca, TcpConfig::default()).await;
            // Right CA and ids: the group elects and commits over TLS.
            let leader = g.leader().await;
            for _ in 0..5 {
                g.propose(leader).await;
            }
            g.converged().await;

            let target = NodeId(1);
            let addr = g.addr(target);
            let good_hello = hello(b"HARP", 1, &g.cluster_id(), 2, 1);
            let stranger = Ca::new("another CA");
            let ca_pem = ca.pem();
            type Counter = fn(&ha_raft::TcpRejections) -> u64;
            let cases: Vec<(&str, Option<Arc<rustls::ClientConfig>>, Counter)> = vec![
                ("plaintext client", None, |r| r.tls_handshake),
                (
                    "no client certificate",
                    Some(client_config(&[&ca_pem], None)),
                    |r| r.tls_handshake,
                ),
                (
                    "certificate from an unknown CA",
                    Some(client_config(
                        &[&ca_pem],
                        Some(&stranger.issue(&["member-2"], false)),
                    )),
                    |r| r.tls_handshake,
                ),
                (
                    "expired certificate",
                    Some(client_config(
                        &[&ca_pem],
                        Some(&ca.issue(&["member-2"], true)),
                    )),
                    |r| r.tls_handshake,
                ),
                (
                    // Member 3's genuine certificate, claiming to be 2.
                    "hello claiming another member's id",
                    Some(client_config(
                        &[&ca_pem],
                        Some(&ca.issue(&["member-3"], false)),
                    )),
                    |r| r.wrong_identity,
                ),
            ];
            for (case, config, counter) in cases {
                let before = g.transport(target).stats().rejected;
                match config {
                    None => expect_plaintext_refused(addr, &good_hello, case).await,
                    Some(c) => expect_tls_closed(addr, c, &good_hello, case).await,
                }
                eventually(&format!("{case}: counted"), || {
                    counter(&g.transport(target).stats().rejected) == counter(&before) + 1
                })
                .await;
                g.propose(target).await;
                g.assert_no_fatal();
            }
            let s = g.transport(target).stats();
            assert_eq!(s.rejected.total(), 5, "{s:?}");
            // The dialer's side: member 1 does not pass for member 2.
            let probe = client_config(&[&ca_pem], Some(&ca.issue(&["member-2"], false)));
            let tcp = TcpStream::connect(addr).await.unwrap();
            let as_two = tokio_rustls::TlsConnector::from(probe)
                .connect(ServerName::try_from("member-2").unwrap(), tcp)
                .await;
            assert!(
                as_two.is_err(),
                "a member's certificate passed for another member's"
            );
            // The probe's abort reaches member 1 as a failed handshake,
            // counted once it has read the alert (not before the probe
            // returns, hence eventually).
            eventually("the aborted handshake: counted", || {
                g.transport(target).stats().rejected.tls_handshake == s.rejected.tls_handshake + 1
            })
            .await;
            let s = g.transport(target).stats();
            assert_eq!(s.rejected.total(), 6, "{s:?}");
            g.converged().await;
            g.assert_no_fatal();
            g.shutdown().await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn tls_certificates_rotate_without_restart() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let old = Ca::new("old CA");
            let mut g = tls_group(3, dir.path(), &old, TcpConfig::default()).await;
            let leader = g.leader().await;
            g.propose(leader).await;
            let new = Ca::new("new CA");
            let new_only = client_config(&[&new.pem()], Some(&new.issue(&["member-2"], false)));
            assert!(
                tls_connect(g.addr(NodeId(1)), new_only.clone(), NodeId(1))
                    .await
                    .is_err(),
                "before the rotation member 1 presents a certificate of the new CA"
            );
            // Rotation: every member trusts both CAs (the bundle), then
            // gets a certificate of the new one. No member restarts.
            let bundle = format!("{}{}", old.pem(), new.pem());
            for id in g.ids.clone() {
                let issued = new.issue(&[&format!("member-{id}")], false);
                write_member(dir.path(), id, &bundle, &issued);
            }
            // The next handshake reads the new files.
            assert!(
                tls_connect(g.addr(NodeId(1)), new_only, NodeId(1))
                    .await
                    .is_ok(),
                "member 1 still presents its old certificate after the files changed"
            );
            // New connections between members use the new certificates:
            // restart one member's transport (same files) and commit
            // through it.
            let addr3 = g.addr(NodeId(3));
            g.stop(NodeId(3)).await;
            g.propose(g.leader().await).await;
            g.restart_on(NodeId(3), addr3).await;
            g.propose(NodeId(3)).await;
            g.converged().await;
            // The old CA leaves the bundle: a certificate it signed is now
            // refused, the group keeps working.
            for id in g.ids.clone() {
                put(&dir.path().join(format!("ca-{id}.pem")), &new.pem());
            }
            let before = g.transport(NodeId(1)).stats().rejected.tls_handshake;
            let stale = client_config(&[&new.pem()], Some(&old.issue(&["member-2"], false)));
            expect_tls_closed(
                g.addr(NodeId(1)),
                stale,
                &hello(b"HARP", 1, &g.cluster_id(), 2, 1),
                "a certificate of the retired CA",
            )
            .await;
            eventually("the retired CA's certificate refused", || {
                g.transport(NodeId(1)).stats().rejected.tls_handshake == before + 1
            })
            .await;
            g.propose(NodeId(1)).await;
            g.converged().await;
            g.assert_no_fatal();
            g.shutdown().await;
        })
        .await;
    }

    #[test]
    fn tls_material_that_does_not_load_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("ha test CA");
        let issued = ca.issue(&["member-1"], false);
        let files = write_member(dir.path(), NodeId(1), &ca.pem(), &issued);
        assert!(PeerTls::load(files.clone(), ClientAuth::Required).is_ok());
        let missing = TlsFiles {
            key: dir.path().join("absent.key"),
            ..files.clone()
        };
        assert!(matches!(
            PeerTls::load(missing, ClientAuth::Required),
            Err(ha_raft::tls::TlsError::Read { .. })
        ));
        // A key that is not the certificate's.
        let other = ca.issue(&["member-1"], false);
        put(&files.key, &other.key);
        assert!(PeerTls::load(files.clone(), ClientAuth::Required).is_err());
        put(&files.cert, "not a certificate");
        assert!(matches!(
            PeerTls::load(files, ClientAuth::Required),
            Err(ha_raft::tls::TlsError::Pem { .. })
        ));
    }
}
