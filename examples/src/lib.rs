//! Shared pieces of the ha examples: a tiny key-value state machine,
//! helpers to run a group in one process, and the benchmarks of `ha-bench`
//! ([`bench`]).

pub mod bench;

/// Every binary and test of this package allocates with mimalloc (feature
/// `mimalloc`, on by default).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod bench_kv;

pub mod certs;

pub mod node;

pub mod procs;

pub mod proxy;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use ha_core::{ApplyContext, Config, NodeId, StateMachine, StateStore, StorageError, WriteBatch};
use ha_raft::{MemNetwork, Node};
use ha_storage::{MemLogStore, MemStateStore};

/// A replicated map. A command is `key \0 value`; a query is a key and
/// answers its value (empty when absent). Values also go into the engine's
/// batch, so a restarted member can rebuild the map from its state store.
pub struct KvMachine {
    store: Arc<dyn StateStore>,
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn load_map(store: &dyn StateStore) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StorageError> {
    let mut map = BTreeMap::new();
    store.scan(b"kv/", Some(b"kv0"), &mut |k, v| {
        map.insert(k[3..].to_vec(), v.to_vec());
        true
    })?;
    Ok(map)
}

impl KvMachine {
    /// Rebuilds the map from what the engine committed to `store` (what a
    /// restarted member has); the log replays the rest. Keeps a handle on
    /// the store (clones share it) to reload after a snapshot.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn open<S: StateStore + Clone>(store: &S) -> Result<Self, StorageError> {
        let store: Arc<dyn StateStore> = Arc::new(store.clone());
        let map = load_map(&*store)?;
        Ok(KvMachine { store, map })
    }

    /// Encodes a put command.
    pub fn put(key: &str, value: &str) -> Bytes {
        let mut c = key.as_bytes().to_vec();
        c.push(0);
        c.extend_from_slice(value.as_bytes());
        Bytes::from(c)
    }
}

impl StateMachine for KvMachine {
    fn restored(&mut self, _applied_index: u64) -> Result<(), StorageError> {
        self.map = load_map(&*self.store)?;
        Ok(())
    }

    fn apply(&mut self, _ctx: &ApplyContext, command: &[u8], batch: &mut WriteBatch) -> Bytes {
        let Some(split) = command.iter().position(|&b| b == 0) else {
            return Bytes::from_static(b"ERR malformed command");
        };
        let (key, value) = (&command[..split], &command[split + 1..]);
        let mut stored = b"kv/".to_vec();
        stored.extend_from_slice(key);
        batch.put(stored, value.to_vec());
        self.map.insert(key.to_vec(), value.to_vec());
        Bytes::from_static(b"OK")
    }

    fn query(&self, key: &[u8]) -> Bytes {
        self.map
            .get(key)
            .map(|v| Bytes::from(v.clone()))
            .unwrap_or_default()
    }
}

/// Does nothing but count: the benchmark's state machine, so that the
/// figures measure the engine.
#[derive(Default)]
pub struct NoopMachine {
    applied: u64,
}

impl StateMachine for NoopMachine {
    fn apply(&mut self, _ctx: &ApplyContext, _command: &[u8], _batch: &mut WriteBatch) -> Bytes {
        self.applied += 1;
        Bytes::new()
    }

    fn query(&self, _query: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&self.applied.to_be_bytes())
    }
}

/// Starts `n` KV members in this process — memory storage, one memory
/// network — and waits until they have a leader: the group of the
/// teaching examples (`leader_job`, `service_mesh`, `config_center`). The
/// network must live as long as the members.
///
/// # Errors
/// When a member cannot start or no leader is elected within 10 s.
pub async fn start_mem_kv_group(n: u64) -> ha_core::Result<(MemNetwork, Vec<ha_raft::KvNode>)> {
    let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
    let network = MemNetwork::new();
    let mut members = Vec::new();
    for &id in &ids {
        members.push(
            ha_raft::KvNode::start(
                Config::new(id, ids.clone()),
                ha_raft::KvConfig::default(),
                Arc::new(MemLogStore::new()),
                Arc::new(MemStateStore::new()),
                network.transport(id),
            )
            .await?,
        );
    }
    members[0]
        .node()
        .wait_for_leader(std::time::Duration::from_secs(10))
        .await?;
    Ok((network, members))
}

/// Starts one member on memory storage.
pub async fn start_mem_member<M: StateMachine>(
    config: Config,
    network: &MemNetwork,
    log: MemLogStore,
    state: MemStateStore,
    machine: M,
) -> ha_core::Result<Node> {
    let id: NodeId = config.node_id;
    Node::start(
        config,
        Arc::new(log),
        Arc::new(state),
        machine,
        network.transport(id),
    )
    .await
}
