//! The simulated network: per-message delay, loss, duplication and
//! reordering, plus the cuts and slow links that faults add. Deciding is
//! all it does; the world schedules the deliveries.

use std::collections::{BTreeMap, BTreeSet};

use super::executor::{MICROS, MILLIS, Nanos};
use super::rng::SimRng;

/// The background quality of the network, chosen per seed.
#[derive(Clone, Debug)]
pub(crate) struct NetParams {
    /// Probability that a message is lost.
    pub(crate) loss: f64,
    /// Probability that a message is delivered twice.
    pub(crate) dup: f64,
    /// Delay range of a message.
    pub(crate) delay: (Nanos, Nanos),
    /// Probability that a message takes an extra detour (reordering).
    pub(crate) reorder: f64,
    /// Longest detour.
    pub(crate) reorder_max: Nanos,
    /// Probability that a message for a crashed member waits in the
    /// sender's reconnect queue and arrives after the restart (a transport
    /// that buffers while it reconnects), instead of being lost.
    pub(crate) hold: f64,
}

impl NetParams {
    pub(crate) fn random(rng: &mut SimRng) -> Self {
        let lo = rng.between(100 * MICROS, MILLIS);
        NetParams {
            loss: rng.pick(&[0.0, 0.01, 0.03, 0.08]),
            dup: rng.pick(&[0.0, 0.01, 0.05]),
            delay: (lo, lo + rng.between(200 * MICROS, 5 * MILLIS)),
            reorder: rng.pick(&[0.0, 0.02, 0.1]),
            reorder_max: rng.between(5 * MILLIS, 80 * MILLIS),
            hold: rng.pick(&[0.0, 0.5, 1.0]),
        }
    }

    fn clean(&self) -> Self {
        NetParams {
            loss: 0.0,
            dup: 0.0,
            reorder: 0.0,
            hold: 0.0,
            ..self.clone()
        }
    }
}

/// Links a fault slowed down, with the extra delay range.
#[derive(Clone, Debug)]
pub(crate) struct SlowLinks {
    pub(crate) links: BTreeSet<(usize, usize)>,
    pub(crate) extra: (Nanos, Nanos),
}

/// See the module docs. Members are numbered from 0.
pub(crate) struct Network {
    params: NetParams,
    /// Directed cuts (from, to), by the fault that made them.
    cuts: BTreeMap<usize, BTreeSet<(usize, usize)>>,
    slow: BTreeMap<usize, SlowLinks>,
}

impl Network {
    pub(crate) fn new(params: NetParams) -> Self {
        Network {
            params,
            cuts: BTreeMap::new(),
            slow: BTreeMap::new(),
        }
    }

    pub(crate) fn params(&self) -> &NetParams {
        &self.params
    }

    pub(crate) fn cut(&mut self, fault: usize, links: BTreeSet<(usize, usize)>) {
        self.cuts.insert(fault, links);
    }

    /// Adds a cut link to fault `fault`'s cuts.
    pub(crate) fn add_cut(&mut self, fault: usize, link: (usize, usize)) {
        self.cuts.entry(fault).or_default().insert(link);
    }

    pub(crate) fn slow_down(&mut self, fault: usize, links: SlowLinks) {
        self.slow.insert(fault, links);
    }

    pub(crate) fn restore(&mut self, fault: usize) {
        self.cuts.remove(&fault);
        self.slow.remove(&fault);
    }

    /// Ends every fault and background misbehaviour.
    pub(crate) fn heal(&mut self) {
        self.cuts.clear();
        self.slow.clear();
        self.params = self.params.clean();
    }

    pub(crate) fn is_cut(&self, from: usize, to: usize) -> bool {
        self.cuts.values().any(|c| c.contains(&(from, to)))
    }

    /// The delays after which copies of one message arrive: none (lost),
    /// one, or two (duplicated).
    pub(crate) fn deliveries(&self, rng: &mut SimRng, from: usize, to: usize) -> Vec<Nanos> {
        let p = &self.params;
        if rng.chance(p.loss) {
            return Vec::new();
        }
        let copies = if rng.chance(p.dup) { 2 } else { 1 };
        (0..copies)
            .map(|_| {
                let mut d = rng.between(p.delay.0, p.delay.1);
                if rng.chance(p.reorder) {
                    d += rng.between(0, p.reorder_max);
                }
                for s in self.slow.values() {
                    if s.links.contains(&(from, to)) {
                        d += rng.between(s.extra.0, s.extra.1);
                    }
                }
                d
            })
            .collect()
    }
}
