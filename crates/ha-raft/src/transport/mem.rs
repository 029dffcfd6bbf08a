//! An in-process network for tests, examples and benchmarks: a test double,
//! with switches to partition, isolate and cut links between members.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ha_core::eraftpb::{Message, MessageType};
use ha_core::{MessageSink, NodeId, Transport};
use parking_lot::RwLock;

#[derive(Default)]
struct Net {
    sinks: HashMap<NodeId, Arc<dyn MessageSink>>,
    /// Directed links that drop everything.
    cut: HashSet<(NodeId, NodeId)>,
}

/// A network of in-process members. Cloning shares the network.
#[derive(Clone, Default)]
pub struct MemNetwork {
    net: Arc<RwLock<Net>>,
    delivered: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemNetwork")
            .field("delivered", &self.delivered.load(Ordering::Relaxed))
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish()
    }
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// The transport of member `id` on this network.
    pub fn transport(&self, id: NodeId) -> Arc<MemTransport> {
        Arc::new(MemTransport {
            id,
            network: self.clone(),
        })
    }

    /// Splits the members into groups that cannot reach each other;
    /// members in no group can reach nobody.
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let mut net = self.net.write();
        let all: Vec<NodeId> = net
            .sinks
            .keys()
            .copied()
            .chain(groups.iter().flat_map(|g| g.iter().copied()))
            .collect();
        net.cut.clear();
        let group_of = |n: NodeId| groups.iter().position(|g| g.contains(&n));
        for &a in &all {
            for &b in &all {
                if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                    net.cut.insert((a, b));
                }
            }
        }
    }

    /// Cuts `id` off from every other member, both directions.
    pub fn isolate(&self, id: NodeId) {
        let mut net = self.net.write();
        let others: Vec<NodeId> = net.sinks.keys().copied().filter(|&n| n != id).collect();
        for o in others {
            net.cut.insert((id, o));
            net.cut.insert((o, id));
        }
    }

    /// Cuts the directed link `from → to`.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.net.write().cut.insert((from, to));
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.net.write().cut.clear();
    }

    /// Messages delivered and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.delivered.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    fn send(&self, from: NodeId, msg: Message) {
        let to = NodeId(msg.to);
        let net = self.net.read();
        let sink = if net.cut.contains(&(from, to)) {
            None
        } else {
            net.sinks.get(&to).cloned()
        };
        // Only a dropped append needs the sender's own sink (to report the
        // peer unreachable); a delivered message does not pay for it.
        let own = match sink {
            Some(_) => None,
            None if msg.msg_type() == MessageType::MsgAppend => net.sinks.get(&from).cloned(),
            None => None,
        };
        drop(net);
        match sink {
            Some(s) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                s.deliver(msg);
            }
            None => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(own) = own {
                    own.report_unreachable(to);
                }
            }
        }
    }
}

/// One member's end of a [`MemNetwork`].
pub struct MemTransport {
    id: NodeId,
    network: MemNetwork,
}

impl Transport for MemTransport {
    fn start(&self, local: NodeId, sink: Arc<dyn MessageSink>) {
        debug_assert_eq!(local, self.id);
        self.network.net.write().sinks.insert(self.id, sink);
    }

    fn send(&self, msg: Message) {
        self.network.send(self.id, msg);
    }

    fn stop(&self) {
        self.network.net.write().sinks.remove(&self.id);
    }
}
