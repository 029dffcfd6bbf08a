//! A 3-member group in one process (memory stores, memory network), shared
//! by the recipe, discovery and config center tests. Each test file adds
//! its own helpers in an `impl Group` of its own.
#![allow(dead_code)] // each test crate uses a different part

use std::sync::Arc;
use std::time::{Duration, Instant};

use ha_discovery::{Config, KvConfig, KvNode, MemLogStore, MemNetwork, MemStateStore, NodeId};

/// How long the group may take to elect or agree on a leader.
pub(crate) const GROUP_PATIENCE: Duration = Duration::from_secs(20);

pub(crate) struct Group {
    _net: MemNetwork,
    pub(crate) members: Vec<NodeId>,
    pub(crate) nodes: Vec<Option<KvNode>>,
}

impl Group {
    /// Starts three members and waits for a leader.
    pub(crate) async fn start() -> Group {
        let members: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let net = MemNetwork::new();
        let mut nodes = Vec::new();
        for &id in &members {
            let config = Config {
                request_timeout: Duration::from_secs(5),
                ..Config::new(id, members.clone())
            };
            let node = KvNode::start(
                config,
                KvConfig::default(),
                Arc::new(MemLogStore::new()),
                Arc::new(MemStateStore::new()),
                net.transport(id),
            )
            .await
            .expect("member starts");
            nodes.push(Some(node));
        }
        let g = Group {
            _net: net,
            members,
            nodes,
        };
        g.node(0)
            .node()
            .wait_for_leader(GROUP_PATIENCE)
            .await
            .expect("a leader");
        g
    }

    pub(crate) fn node(&self, i: usize) -> &KvNode {
        self.nodes[i].as_ref().expect("member running")
    }

    /// Index of the leader all running members agree on.
    pub(crate) async fn leader(&self) -> usize {
        let deadline = Instant::now() + GROUP_PATIENCE;
        loop {
            let seen: Vec<_> = self
                .nodes
                .iter()
                .flatten()
                .map(|n| n.node().leader())
                .collect();
            if let Some(first) = seen.first().and_then(|l| l.leader)
                && seen.iter().all(|l| l.leader == Some(first))
                && let Some(i) = self.members.iter().position(|m| *m == first)
                && self.nodes[i].is_some()
            {
                return i;
            }
            assert!(Instant::now() < deadline, "no agreed leader: {seen:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills member `i` (as if its process died).
    pub(crate) async fn kill(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("member running");
        node.kill().await;
    }

    /// Shuts every running member down.
    pub(crate) async fn stop(&self) {
        for n in self.nodes.iter().flatten() {
            let _ = n.shutdown().await;
        }
    }
}
