//! Durability, proven.
//!
//! SIGKILL keeps the page cache, so a store that never syncs passes crash
//! tests. The first tests therefore check, from RocksDB's own statistics
//! (its `rocksdb.wal.synced` ticker), that every log write raft asked to
//! sync (`must_sync()`) really was synced, and that no acknowledgement
//! which promises durability — a follower's `MsgAppendResponse`, a granted
//! vote — left a member before the write it acknowledges was synced. Two
//! more tests show the check failing: one switches on a known engine bug
//! (acknowledging before the sync), one a backend that never syncs.
//!
//! The last test crashes members of a group on the memory stores — whose
//! `crash()` keeps only synced writes — under load, one at a time and all
//! at once, and checks that no acknowledged write is lost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ha_core::eraftpb::{Entry, HardState, Message, MessageType};
use ha_core::{
    CallReply, Config, LogStore, LogWrite, MemberIdentity, MessageSink, NodeId, StateStore,
    StorageError, Transport,
};
use ha_examples::bench::store_machine::StoreMachine;
use ha_raft::{InjectedBug, MemNetwork, Node, ReadConsistency};
use ha_storage::{
    MemLogStore, MemStateStore, RocksEnv, RocksLogStore, RocksStateStore, StorageConfig,
};

const PATIENCE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------ the checker

/// What one member has written and made durable, as its log writer saw it.
#[derive(Default)]
struct MemberLog {
    /// Last index of the log after the latest write (durable or not).
    written_last: u64,
    /// Last index of the log as of the latest synced write.
    durable_last: u64,
    written_hard_state: HardState,
    durable_hard_state: HardState,
}

/// Shared by the wrappers of every member: the durable state of each
/// member's log, and what broke.
#[derive(Default)]
struct Checker {
    members: Mutex<BTreeMap<NodeId, MemberLog>>,
    violations: Mutex<Vec<String>>,
    synced_writes: AtomicU64,
    append_acks_checked: AtomicU64,
    votes_checked: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread poisons nothing we cannot still read.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Checker {
    fn violation(&self, what: String) {
        let mut v = lock(&self.violations);
        if v.len() < 1000 {
            v.push(what);
        }
    }

    fn violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }

    /// A member (re)opened its log: what it holds now is the baseline.
    fn opened(&self, member: NodeId, last: u64, hard_state: HardState) {
        lock(&self.members).insert(
            member,
            MemberLog {
                written_last: last,
                durable_last: last,
                written_hard_state: hard_state.clone(),
                durable_hard_state: hard_state,
            },
        );
    }

    /// A `persist` returned; `syncs_before`/`syncs_after` are RocksDB's
    /// WAL-synced counter around it.
    fn persisted(&self, member: NodeId, write: &LogWrite, syncs_before: u64, syncs_after: u64) {
        let mut members = lock(&self.members);
        let log = members.entry(member).or_default();
        if let Some(last) = write.entries.last() {
            // Entries replace the log from the first one's index on.
            log.written_last = last.index;
        }
        if let Some(hs) = &write.hard_state {
            log.written_hard_state = hs.clone();
        }
        if write.sync {
            self.synced_writes.fetch_add(1, Ordering::Relaxed);
            if syncs_after <= syncs_before {
                let range = match (write.entries.first(), write.entries.last()) {
                    (Some(a), Some(b)) => format!("entries {}..={}", a.index, b.index),
                    _ => "no entries".to_owned(),
                };
                self.violation(format!(
                    "member {member}: persist(sync = true, {range}) returned, but RocksDB's \
                     rocksdb.wal.synced counter stayed at {syncs_before}: the write was not synced"
                ));
            }
            log.durable_last = log.written_last;
            log.durable_hard_state = log.written_hard_state.clone();
        }
    }

    /// `msg` is about to leave `member`: an acknowledgement must not
    /// promise more than the member has synced.
    fn sending(&self, member: NodeId, msg: &Message) {
        let members = lock(&self.members);
        let Some(log) = members.get(&member) else {
            return;
        };
        match msg.msg_type() {
            MessageType::MsgAppendResponse if !msg.reject => {
                self.append_acks_checked.fetch_add(1, Ordering::Relaxed);
                if log.durable_last < msg.index {
                    let durable = log.durable_last;
                    drop(members);
                    self.violation(format!(
                        "member {member} acknowledged its log up to index {} to member {} \
                         (MsgAppendResponse, term {}), but had synced only up to index {durable}",
                        msg.index, msg.to, msg.term
                    ));
                }
            }
            MessageType::MsgRequestVoteResponse if !msg.reject => {
                self.votes_checked.fetch_add(1, Ordering::Relaxed);
                let hs = &log.durable_hard_state;
                let recorded = hs.term > msg.term || (hs.term == msg.term && hs.vote == msg.to);
                if !recorded {
                    let (term, vote) = (hs.term, hs.vote);
                    drop(members);
                    self.violation(format!(
                        "member {member} granted its vote to member {} in term {} \
                         (MsgRequestVoteResponse), but its synced hard state says term {term}, \
                         vote {vote}",
                        msg.to, msg.term
                    ));
                }
            }
            _ => {}
        }
    }
}

/// A [`RocksLogStore`] that tells the checker what each `persist` made
/// durable, reading RocksDB's WAL-synced counter around every write.
struct CheckedLog {
    inner: RocksLogStore,
    member: NodeId,
    checker: Arc<Checker>,
    /// A deliberately broken backend: writes without syncing even when
    /// asked to (what a store that never syncs does).
    never_sync: bool,
}

impl CheckedLog {
    fn new(
        inner: RocksLogStore,
        member: NodeId,
        checker: Arc<Checker>,
        never_sync: bool,
    ) -> Result<Self, StorageError> {
        checker.opened(member, inner.last_index()?, inner.hard_state()?);
        Ok(CheckedLog {
            inner,
            member,
            checker,
            never_sync,
        })
    }
}

impl LogStore for CheckedLog {
    fn identity(&self) -> Result<Option<MemberIdentity>, StorageError> {
        self.inner.identity()
    }
    fn set_identity(&self, identity: &MemberIdentity) -> Result<(), StorageError> {
        self.inner.set_identity(identity)
    }
    fn hard_state(&self) -> Result<HardState, StorageError> {
        self.inner.hard_state()
    }
    fn first_index(&self) -> Result<u64, StorageError> {
        self.inner.first_index()
    }
    fn last_index(&self) -> Result<u64, StorageError> {
        self.inner.last_index()
    }
    fn term(&self, index: u64) -> Result<u64, StorageError> {
        self.inner.term(index)
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(low, high, max_size)
    }
    fn append_readable(&self, entries: &[Entry]) -> Result<(), StorageError> {
        self.inner.append_readable(entries)
    }
    fn persist(&self, write: &LogWrite) -> Result<(), StorageError> {
        let before = self.inner.wal_syncs();
        if self.never_sync && write.sync {
            let unsynced = LogWrite {
                sync: false,
                ..write.clone()
            };
            self.inner.persist(&unsynced)?;
        } else {
            self.inner.persist(write)?;
        }
        let after = self.inner.wal_syncs();
        self.checker.persisted(self.member, write, before, after);
        Ok(())
    }
    fn restart_readable(&self, point: ha_core::LogPoint) -> Result<(), StorageError> {
        self.inner.restart_readable(point)
    }
    fn compact(&self, through: u64) -> Result<(), StorageError> {
        LogStore::compact(&self.inner, through)
    }
    fn pending_install(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.pending_install()
    }
    fn set_pending_install(&self, marker: &[u8]) -> Result<(), StorageError> {
        self.inner.set_pending_install(marker)
    }
}

/// A transport that shows the checker every message before sending it.
struct CheckedTransport {
    inner: Arc<dyn Transport>,
    member: NodeId,
    checker: Arc<Checker>,
}

impl Transport for CheckedTransport {
    fn start(&self, local: NodeId, sink: Arc<dyn MessageSink>) {
        self.inner.start(local, sink);
    }
    fn send(&self, msg: Message) {
        self.checker.sending(self.member, &msg);
        self.inner.send(msg);
    }
    fn stop(&self) {
        self.inner.stop();
    }
    fn call(&self, to: NodeId, request: Bytes, timeout: Duration, reply: CallReply) {
        self.inner.call(to, request, timeout, reply);
    }
}

// ------------------------------------------------- a group on RocksDB

struct RocksGroup {
    root: tempfile::TempDir,
    env: RocksEnv,
    network: MemNetwork,
    ids: Vec<NodeId>,
    nodes: BTreeMap<NodeId, Node>,
    states: BTreeMap<NodeId, RocksStateStore>,
    checker: Arc<Checker>,
    bug: Option<InjectedBug>,
    never_sync: bool,
}

impl RocksGroup {
    async fn start(bug: Option<InjectedBug>, never_sync: bool) -> RocksGroup {
        let mut g = RocksGroup {
            root: tempfile::tempdir().expect("temporary directory"),
            env: RocksEnv::new(&StorageConfig::default()).expect("RocksDB environment"),
            network: MemNetwork::new(),
            ids: vec![NodeId(1), NodeId(2), NodeId(3)],
            nodes: BTreeMap::new(),
            states: BTreeMap::new(),
            checker: Arc::new(Checker::default()),
            bug,
            never_sync,
        };
        for id in g.ids.clone() {
            g.boot(id).await;
        }
        g
    }

    async fn boot(&mut self, id: NodeId) {
        let (log, state) = self
            .env
            .open(
                &self.root.path().join(format!("member-{id}")),
                &StorageConfig::default(),
            )
            .expect("member storage opens");
        let log =
            CheckedLog::new(log, id, self.checker.clone(), self.never_sync).expect("log readable");
        let transport = Arc::new(CheckedTransport {
            inner: self.network.transport(id),
            member: id,
            checker: self.checker.clone(),
        });
        let (config, machine) = (
            Config::new(id, self.ids.clone()),
            StoreMachine::new(state.clone()),
        );
        let node = match self.bug {
            None => {
                Node::start(
                    config,
                    Arc::new(log),
                    Arc::new(state.clone()),
                    machine,
                    transport,
                )
                .await
            }
            Some(bug) => {
                Node::start_with_injected_bug(
                    config,
                    Arc::new(log),
                    Arc::new(state.clone()),
                    machine,
                    transport,
                    bug,
                )
                .await
            }
        }
        .expect("member starts");
        self.nodes.insert(id, node);
        self.states.insert(id, state);
    }

    async fn kill(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.remove(&id) {
            node.kill().await;
        }
        self.states.remove(&id);
    }

    /// The leader all running members agree on.
    async fn leader(&self) -> NodeId {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let views: Vec<Option<NodeId>> =
                self.nodes.values().map(|n| n.leader().leader).collect();
            if let Some(Some(l)) = views.first()
                && views.iter().all(|v| v == &Some(*l))
                && self.nodes.contains_key(l)
            {
                return *l;
            }
            assert!(Instant::now() < deadline, "no agreed leader: {views:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn shutdown(self) {
        for n in self.nodes.values() {
            n.shutdown().await.expect("clean shutdown");
        }
    }
}

fn running(g: &RocksGroup) -> Vec<Node> {
    g.nodes.values().cloned().collect()
}

fn key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

/// Writes keys `range` through the running members, `writers` at a time,
/// retrying each until it is acknowledged (a put is idempotent).
async fn write_all(nodes: Vec<Node>, range: std::ops::Range<u64>, writers: u64) {
    let next = Arc::new(AtomicU64::new(range.start));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (next, nodes) = (next.clone(), nodes.clone());
        let end = range.end;
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + PATIENCE;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return;
                }
                let cmd = StoreMachine::<RocksStateStore>::command([(&key(i)[..], &b"v"[..])]);
                let mut attempt = w as usize;
                loop {
                    let node = &nodes[attempt % nodes.len()];
                    match node.propose(cmd.clone()).await {
                        Ok(_) => break,
                        Err(e) => {
                            assert!(
                                Instant::now() < deadline,
                                "write {i} still failing after {PATIENCE:?}: {e}"
                            );
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
}

/// Waits until member `id`'s state store holds `expected` keys.
async fn wait_for_keys(g: &RocksGroup, id: NodeId, expected: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let n = StoreMachine::count_keys(&g.states[&id]).expect("state store readable");
        if n == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "member {id} holds {n} keys, {expected} were acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_synced_write_reaches_rocksdb_before_its_acknowledgement_leaves() {
    let mut g = RocksGroup::start(None, false).await;
    let first = g.leader().await;

    // Thousands of proposals through every member...
    write_all(running(&g), 0..2000, 32).await;

    // ...a leader transfer while writes run...
    let target = *g.ids.iter().find(|&&i| i != first).expect("a follower");
    let load = tokio::spawn(write_all(running(&g), 2000..4000, 32));
    tokio::time::sleep(Duration::from_millis(100)).await;
    g.nodes[&first]
        .transfer_leader(target)
        .await
        .expect("leadership moves");
    load.await.expect("writers");

    // ...the leader killed, writes on the survivors, and its restart.
    let second = g.leader().await;
    assert_ne!(second, first, "the transfer changed the leader");
    g.kill(second).await;
    g.leader().await;
    write_all(running(&g), 4000..5000, 32).await;
    g.boot(second).await;
    write_all(running(&g), 5000..5500, 32).await;
    for id in g.ids.clone() {
        wait_for_keys(&g, id, 5500).await;
    }
    let probe = g.nodes[&second]
        .read(
            Bytes::copy_from_slice(&key(5499)),
            ReadConsistency::Linearizable,
        )
        .await
        .expect("the restarted member serves reads");
    assert_eq!(probe.as_ref(), b"v");

    let checker = g.checker.clone();
    g.shutdown().await;
    let violations = checker.violations();
    assert!(
        violations.is_empty(),
        "{} durability violations, the first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    // The checks ran on real traffic.
    let synced = checker.synced_writes.load(Ordering::Relaxed);
    let acks = checker.append_acks_checked.load(Ordering::Relaxed);
    let votes = checker.votes_checked.load(Ordering::Relaxed);
    assert!(synced >= 100, "only {synced} synced writes checked");
    assert!(acks >= 500, "only {acks} append acknowledgements checked");
    assert!(votes >= 2, "only {votes} granted votes checked");
    eprintln!("checked {synced} synced writes, {acks} append acks, {votes} votes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durability_check_catches_acknowledgements_sent_before_the_sync() {
    let g = RocksGroup::start(Some(InjectedBug::AckBeforeSync), false).await;
    g.leader().await;
    write_all(g.nodes.values().cloned().collect(), 0..1000, 32).await;
    let checker = g.checker.clone();
    g.shutdown().await;
    let violations = checker.violations();
    assert!(
        violations.iter().any(|v| v.contains("MsgAppendResponse")),
        "acknowledging before the sync went unnoticed ({} violations: {:?})",
        violations.len(),
        &violations[..violations.len().min(3)]
    );
    eprintln!(
        "{} violations with the bug on, e.g. {}",
        violations.len(),
        violations[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_counter_catches_a_store_that_never_syncs() {
    let g = RocksGroup::start(None, true).await;
    g.leader().await;
    write_all(g.nodes.values().cloned().collect(), 0..200, 8).await;
    let checker = g.checker.clone();
    g.shutdown().await;
    let violations = checker.violations();
    assert!(
        violations.iter().any(|v| v.contains("rocksdb.wal.synced")),
        "a store that never syncs went unnoticed ({} violations: {:?})",
        violations.len(),
        &violations[..violations.len().min(3)]
    );
}

// ------------------------------------------- crashes on the memory stores

/// A group on memory stores whose members can crash (unsynced writes lost)
/// and restart.
struct MemGroup {
    network: MemNetwork,
    ids: Vec<NodeId>,
    nodes: Arc<Mutex<BTreeMap<NodeId, Node>>>,
    logs: BTreeMap<NodeId, MemLogStore>,
    states: BTreeMap<NodeId, MemStateStore>,
}

impl MemGroup {
    async fn boot(&mut self, id: NodeId) {
        let log = self.logs.entry(id).or_default().clone();
        let state = self.states.entry(id).or_default().clone();
        let node = Node::start(
            Config::new(id, self.ids.clone()),
            Arc::new(log),
            Arc::new(state.clone()),
            StoreMachine::new(state),
            self.network.transport(id),
        )
        .await
        .expect("member starts");
        lock(&self.nodes).insert(id, node);
    }

    /// Crashes `id`: no handover, queued writes abandoned, and its stores
    /// keep only what was synced.
    async fn crash(&mut self, id: NodeId) {
        let node = lock(&self.nodes).remove(&id);
        if let Some(node) = node {
            node.kill().await;
        }
        if let Some(log) = self.logs.get(&id) {
            let crashed = log.crash();
            self.logs.insert(id, crashed);
        }
        if let Some(state) = self.states.get(&id) {
            let crashed = state.crash();
            self.states.insert(id, crashed);
        }
    }

    fn running(&self) -> Vec<Node> {
        lock(&self.nodes).values().cloned().collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_crashed_under_load_lose_no_acknowledged_write() {
    let ids = vec![NodeId(1), NodeId(2), NodeId(3)];
    let mut g = MemGroup {
        network: MemNetwork::new(),
        ids: ids.clone(),
        nodes: Arc::new(Mutex::new(BTreeMap::new())),
        logs: BTreeMap::new(),
        states: BTreeMap::new(),
    };
    for &id in &ids {
        g.boot(id).await;
    }

    // Writers bound to each member, across its crashes and restarts.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..12u64 {
        let (nodes, stop) = (g.nodes.clone(), stop.clone());
        let member = ids[(w % 3) as usize];
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let node = lock(&nodes).get(&member).cloned();
                let Some(node) = node else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                seq += 1;
                let k = (w << 32) | seq;
                let cmd = StoreMachine::<MemStateStore>::command([(&key(k)[..], &b"v"[..])]);
                let opts = ha_raft::CallOptions {
                    timeout: Some(Duration::from_secs(2)),
                };
                // Any error is "not acknowledged": only successes count.
                if node.propose_with(cmd, opts).await.is_ok() {
                    acked.push(k);
                }
            }
            acked
        }));
    }

    let leader = |g: &MemGroup| {
        let nodes = g.running();
        async move {
            let deadline = Instant::now() + PATIENCE;
            loop {
                if let Some(l) = nodes.iter().find_map(|n| n.leader().leader)
                    && nodes.iter().any(|n| n.id() == l)
                {
                    return l;
                }
                assert!(Instant::now() < deadline, "no leader among the running");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // A follower, the leader, everyone at once (a power cut of the whole
    // group), the leader again, a follower again.
    enum Victim {
        Follower,
        Leader,
        All,
    }
    for victim in [
        Victim::Follower,
        Victim::Leader,
        Victim::All,
        Victim::Leader,
        Victim::Follower,
    ] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let l = leader(&g).await;
        let victims: Vec<NodeId> = match victim {
            Victim::Leader => vec![l],
            Victim::Follower => ids.iter().copied().filter(|&i| i != l).take(1).collect(),
            Victim::All => ids.clone(),
        };
        for &v in &victims {
            g.crash(v).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        for &v in &victims {
            g.boot(v).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer task"));
    }
    assert!(
        acked.len() >= 100,
        "only {} writes acknowledged: the load did not run",
        acked.len()
    );

    // Every member ends up with every acknowledged write.
    let last = *acked.iter().max().expect("writes");
    let probe = g.running()[0]
        .read(
            Bytes::copy_from_slice(&key(last)),
            ReadConsistency::Linearizable,
        )
        .await
        .expect("the group serves reads after the crashes");
    assert_eq!(probe.as_ref(), b"v", "acknowledged write {last:#x} lost");
    let deadline = Instant::now() + PATIENCE;
    for &id in &ids {
        loop {
            let missing: Vec<u64> = acked
                .iter()
                .copied()
                .filter(|k| {
                    !matches!(
                        g.states[&id].get(&StoreMachine::<MemStateStore>::stored_key(&key(*k))),
                        Ok(Some(_))
                    )
                })
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {id} lost {} acknowledged writes, e.g. {:#x}",
                missing.len(),
                missing[0]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for n in g.running() {
        n.shutdown().await.expect("clean shutdown");
    }
    eprintln!(
        "{} acknowledged writes survived 7 member crashes",
        acked.len()
    );
}
