//! [`RocksGroup`]: members in one process, each on its own RocksDB (two
//! instances in its own data directory, real fsync), sharing one
//! [`RocksEnv`], connected by the in-memory transport.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ha_core::{Config, NodeId};
use ha_raft::{MemNetwork, Node};
use ha_storage::{RocksEnv, RocksLogStore, RocksStateStore, StorageConfig};

use super::common::{BenchResult, leader_of};
use super::store_machine::StoreMachine;

/// A group of members on RocksDB running [`StoreMachine`]s. The data
/// directories live in a temporary directory removed on drop.
pub struct RocksGroup {
    root: tempfile::TempDir,
    env: RocksEnv,
    config: StorageConfig,
    network: MemNetwork,
    ids: Vec<NodeId>,
    preset: fn(NodeId, Vec<NodeId>) -> Config,
    /// Running members.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Their log stores (for RocksDB's counters).
    pub logs: BTreeMap<NodeId, RocksLogStore>,
    /// Their state stores.
    pub states: BTreeMap<NodeId, RocksStateStore>,
}

/// How long a member's start took.
#[derive(Clone, Copy, Debug)]
pub struct StartTimes {
    /// Opening its two RocksDB instances.
    pub open: Duration,
    /// `Node::start` (reads the stored state, starts the threads).
    pub start: Duration,
}

impl RocksGroup {
    /// Starts `members` members with data directories under `dir` (the
    /// system's temporary directory when `None`), configured by `preset`
    /// (`Config::new`, the LAN preset, or `Config::conservative`).
    ///
    /// # Errors
    /// When a directory or database cannot be created or a member cannot
    /// start.
    pub async fn start(
        members: u64,
        dir: Option<&Path>,
        preset: fn(NodeId, Vec<NodeId>) -> Config,
    ) -> BenchResult<Self> {
        let dir: PathBuf = dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let config = StorageConfig::default().validate()?;
        let mut group = RocksGroup {
            root: tempfile::Builder::new()
                .prefix("ha-bench-")
                .tempdir_in(dir)?,
            env: RocksEnv::new(&config)?,
            config,
            network: MemNetwork::new(),
            ids: (1..=members).map(NodeId).collect(),
            preset,
            nodes: BTreeMap::new(),
            logs: BTreeMap::new(),
            states: BTreeMap::new(),
        };
        for id in group.ids.clone() {
            group.start_member(id).await?;
        }
        Ok(group)
    }

    /// Where the data directories are.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// The member ids.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// Opens member `id`'s storage (creating it on first start) and starts
    /// it.
    ///
    /// # Errors
    /// When its storage cannot be opened or it cannot start.
    pub async fn start_member(&mut self, id: NodeId) -> BenchResult<StartTimes> {
        let mut cfg = (self.preset)(id, self.ids.clone());
        if !self.ids.contains(&id) {
            // Not one of the group's initial members: it joins.
            cfg.start_mode = ha_core::StartMode::Join;
        }
        let t = Instant::now();
        let dir = self.root.path().join(format!("member-{id}"));
        cfg.snapshot_dir = Some(dir.join("snapshots"));
        let (log, state) = {
            let (env, config) = (self.env.clone(), self.config.clone());
            // Blocking RocksDB work stays off the tokio workers.
            tokio::task::spawn_blocking(move || env.open(&dir, &config)).await??
        };
        let open = t.elapsed();
        let t = Instant::now();
        let node = Node::start(
            cfg,
            Arc::new(log.clone()),
            Arc::new(state.clone()),
            StoreMachine::new(state.clone()),
            self.network.transport(id),
        )
        .await?;
        let start = t.elapsed();
        self.nodes.insert(id, node);
        self.logs.insert(id, log);
        self.states.insert(id, state);
        Ok(StartTimes { open, start })
    }

    /// Stops member `id` as if its process died (queued log writes are
    /// abandoned) and closes its databases.
    pub async fn kill(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.remove(&id) {
            node.kill().await;
        }
        self.logs.remove(&id);
        self.states.remove(&id);
    }

    /// The leader, waiting up to 10 s for one.
    ///
    /// # Errors
    /// When no running member knows a leader among the running members.
    pub async fn leader(&self) -> BenchResult<Node> {
        let nodes: Vec<Node> = self.nodes.values().cloned().collect();
        leader_of(&nodes, Duration::from_secs(10)).await
    }

    /// Shuts every running member down.
    ///
    /// # Errors
    /// When a member fails to stop cleanly.
    pub async fn shutdown(mut self) -> BenchResult<()> {
        for node in self.nodes.values() {
            node.shutdown().await?;
        }
        self.nodes.clear();
        self.logs.clear();
        self.states.clear();
        Ok(())
    }
}
