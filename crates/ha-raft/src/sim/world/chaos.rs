//! Faults as they happen: who is hit, what is cut, slowed, paused or
//! crashed, and healing everything at the end of the chaos window.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use ha_core::NodeId;

use super::{ArmedIsolation, CHAOS_START, Event, Undo, World, nanos};
use crate::core::Outbox;
use crate::sim::executor::{MILLIS, Nanos, SECONDS};
use crate::sim::faults::{FaultKind, PartitionKind, PlannedFault, Target};
use crate::sim::fmt_ns;
use crate::sim::net::SlowLinks;
use crate::sim::rng::SimRng;

/// Shuffles in place with the run's RNG (Fisher–Yates).
fn shuffle(rng: &mut SimRng, items: &mut [usize]) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i + 1);
        items.swap(i, j);
    }
}

fn both_ways(a: &[usize], b: &[usize]) -> BTreeSet<(usize, usize)> {
    let mut links = BTreeSet::new();
    for &x in a {
        for &y in b {
            links.insert((x, y));
            links.insert((y, x));
        }
    }
    links
}

/// How long an `IsolateAfterLeaseRound` lets a transfer to the slowest
/// clock settle (the new leader's first commit, lease reads renewing its
/// lease) before it arms.
const ISOLATION_ARM_DELAY: Nanos = 500 * MILLIS;

/// The disk latency multiplier of a stalled disk (a `StallRestartWhileCut`):
/// at least a second per group commit, so nothing it was writing becomes
/// durable before the member crashes.
const DISK_STALL: u64 = 50_000;

fn names(ms: &[usize]) -> String {
    let v: Vec<String> = ms.iter().map(|m| (m + 1).to_string()).collect();
    format!("{{{}}}", v.join(","))
}

impl World {
    pub(super) fn pick_member(&mut self, target: Target) -> Option<usize> {
        let up: Vec<usize> = (0..self.members.len()).filter(|&m| self.up(m)).collect();
        if up.is_empty() {
            return None;
        }
        let leader = self.leader();
        match target {
            Target::Leader => Some(leader.unwrap_or_else(|| self.rng.pick(&up))),
            Target::Follower => {
                let followers: Vec<usize> =
                    up.iter().copied().filter(|&m| Some(m) != leader).collect();
                if followers.is_empty() {
                    None
                } else {
                    Some(self.rng.pick(&followers))
                }
            }
            Target::Any => Some(self.rng.pick(&up)),
        }
    }

    /// The leader and two distinct running followers drawn from the seed
    /// (the first from all, the second from the rest), for the lease
    /// scenarios; None without a leader or with fewer than two followers up.
    fn leader_and_two_followers(&mut self) -> Option<(usize, usize, usize)> {
        let l = self.leader()?;
        let followers: Vec<usize> = (0..self.members.len())
            .filter(|&m| m != l && self.up(m))
            .collect();
        if followers.len() < 2 {
            return None;
        }
        let first = self.rng.pick(&followers);
        let others: Vec<usize> = followers.into_iter().filter(|&m| m != first).collect();
        let second = self.rng.pick(&others);
        Some((l, first, second))
    }

    /// The member slots not removed from the group.
    pub(super) fn in_group(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&m| !self.members[m].removed)
            .collect()
    }

    pub(super) fn partition(&mut self, kind: PartitionKind) -> (BTreeSet<(usize, usize)>, String) {
        let mut all: Vec<usize> = self.in_group();
        let n = all.len();
        match kind {
            PartitionKind::Split => {
                shuffle(&mut self.rng, &mut all);
                let k = self.rng.between(1, ((n - 1) / 2) as u64) as usize;
                let (a, b) = all.split_at(k);
                (
                    both_ways(a, b),
                    format!("split {} | {}", names(a), names(b)),
                )
            }
            PartitionKind::IsolateLeader => {
                let l = self.leader().unwrap_or_else(|| all[self.rng.below(n)]);
                let rest: Vec<usize> = all.iter().copied().filter(|&m| m != l).collect();
                (
                    both_ways(&[l], &rest),
                    format!("isolate leader {} | {}", l + 1, names(&rest)),
                )
            }
            PartitionKind::LeaderMinority => {
                let l = self.leader().unwrap_or_else(|| all[self.rng.below(n)]);
                let mut rest: Vec<usize> = all.iter().copied().filter(|&m| m != l).collect();
                // With three members that is the leader alone (and no draw,
                // so three-member runs are those of `IsolateLeader`).
                let with = (n - 1) / 2 - 1;
                if with > 0 {
                    shuffle(&mut self.rng, &mut rest);
                }
                let mut side = vec![l];
                side.extend(rest.drain(..with));
                (
                    both_ways(&side, &rest),
                    format!("leader with a minority {} | {}", names(&side), names(&rest)),
                )
            }
            PartitionKind::OneWay => {
                let x = all[self.rng.below(n)];
                let inbound = self.rng.chance(0.5);
                let links: BTreeSet<(usize, usize)> = all
                    .iter()
                    .filter(|&&y| y != x)
                    .map(|&y| if inbound { (y, x) } else { (x, y) })
                    .collect();
                let what = if inbound {
                    format!("one-way: nobody reaches member {}", x + 1)
                } else {
                    format!("one-way: member {} reaches nobody", x + 1)
                };
                (links, what)
            }
            PartitionKind::Bridge => {
                shuffle(&mut self.rng, &mut all);
                let bridge = all[0];
                let rest = &all[1..];
                let (a, b) = rest.split_at(rest.len() / 2);
                (
                    both_ways(a, b),
                    format!(
                        "bridge {} between {} and {}",
                        bridge + 1,
                        names(a),
                        names(b)
                    ),
                )
            }
        }
    }

    pub(super) fn fault_start(&mut self, f: usize) {
        if self.healed {
            return;
        }
        let PlannedFault { duration, kind, .. } = self.faults[f].clone();
        let dur = fmt_ns(duration);
        match kind {
            FaultKind::Partition(kind) => {
                let (links, what) = self.partition(kind);
                self.net.cut(f, links);
                self.undo.insert(f, Undo::Network);
                self.counters.partitions += 1;
                self.log_fault(format!("partition {what} for {dur}"));
                self.after(duration, Event::FaultEnd { f });
            }
            FaultKind::Crash(target) => {
                if let Some(m) = self.pick_member(target) {
                    self.log_fault(format!("crash member {} ({target:?}), down {dur}", m + 1));
                    self.crash(m);
                    self.after(duration, Event::Restart { m });
                }
            }
            FaultKind::CrashLoop {
                target,
                cycles,
                slow_links,
            } => {
                if let Some(m) = self.pick_member(target) {
                    let slow = slow_links
                        .map(|x| format!(", links up to +{} slower", fmt_ns(x)))
                        .unwrap_or_default();
                    self.log_fault(format!(
                        "crash loop of member {} ({target:?}), {cycles} cycles{slow}",
                        m + 1
                    ));
                    let mut t = 0;
                    for _ in 0..cycles {
                        let down = self.rng.between(10 * MILLIS, 200 * MILLIS);
                        self.after(t, Event::Crash { m });
                        self.after(t + down, Event::Restart { m });
                        t += down + self.rng.between(50 * MILLIS, 500 * MILLIS);
                    }
                    if let Some(extra_max) = slow_links {
                        self.slow_links(f, m, extra_max);
                        self.after(t, Event::FaultEnd { f });
                    }
                }
            }
            FaultKind::PowerFailure => {
                self.log_fault(format!("power failure of every member, down up to {dur}"));
                for m in 0..self.members.len() {
                    if self.up(m) {
                        self.crash(m);
                        let down = self.rng.between(duration / 2, duration);
                        self.after(down, Event::Restart { m });
                    }
                }
            }
            FaultKind::Pause(target) => {
                if let Some(m) = self.pick_member(target) {
                    self.log_fault(format!("pause member {} ({target:?}) for {dur}", m + 1));
                    self.members[m].paused_until = self.now + duration;
                    self.counters.pauses += 1;
                }
            }
            FaultKind::SlowDisk { target, factor } => {
                if let Some(m) = self.pick_member(target) {
                    self.log_fault(format!(
                        "slow disk on member {} ({target:?}): x{factor} for {dur}",
                        m + 1
                    ));
                    self.members[m].disk_factor = factor;
                    self.undo.insert(f, Undo::Disk(m));
                    self.after(duration, Event::FaultEnd { f });
                }
            }
            FaultKind::SlowLinks { target, extra_max } => {
                if let Some(m) = self.pick_member(target) {
                    self.log_fault(format!(
                        "slow links of member {} ({target:?}): up to +{} for {dur}",
                        m + 1,
                        fmt_ns(extra_max)
                    ));
                    self.slow_links(f, m, extra_max);
                    self.after(duration, Event::FaultEnd { f });
                }
            }
            FaultKind::RestartWhileCut { down } => {
                let Some((l, cut, restart)) = self.leader_and_two_followers() else {
                    return;
                };
                self.net.cut(f, both_ways(&[l], &[cut]));
                self.undo.insert(f, Undo::Network);
                self.counters.partitions += 1;
                self.log_fault(format!(
                    "cut member {} from leader {} for {dur}; member {} restarts meanwhile",
                    cut + 1,
                    l + 1,
                    restart + 1
                ));
                // The cut follower's campaign comes due while the leader
                // still holds a lease confirmed by the restarting one, who
                // hears nothing from the leader after its restart.
                let crash_at = self.rng.between(100 * MILLIS, 250 * MILLIS);
                self.after(
                    crash_at,
                    Event::CutLink {
                        f,
                        from: l,
                        to: restart,
                    },
                );
                self.after(crash_at, Event::Crash { m: restart });
                self.after(crash_at + down, Event::Restart { m: restart });
                self.after(duration, Event::FaultEnd { f });
            }
            FaultKind::Membership(kind) => self.membership_start(kind, duration),
            FaultKind::StallRestartWhileCut {
                cut_after,
                crash_after,
                down,
            } => {
                let Some((l, stalled, cut)) = self.leader_and_two_followers() else {
                    return;
                };
                // The cut one's campaign comes due about `election_tick`
                // ticks of its clock after the cut: the stalled one crashes
                // a few ticks before, so that it has restarted by then while
                // the lease it kept fresh still holds.
                let crash_at = cut_after + crash_after * self.members[cut].tick_ns;
                if self.now + crash_at + down >= CHAOS_START + nanos(self.cfg.chaos) {
                    // Healing comes first: it would skip the crash, and the
                    // write on the stalled disk would hold the member's log
                    // for up to a minute.
                    self.log_fault(format!(
                        "stalled-disk restart skipped: member {} would crash after the heal",
                        stalled + 1
                    ));
                    return;
                }
                self.members[stalled].disk_factor = DISK_STALL;
                self.net.cut(f, BTreeSet::new());
                self.undo.insert(f, Undo::Network);
                self.counters.partitions += 1;
                self.log_fault(format!(
                    "disk of member {} stalls; member {} is cut from leader {} in {} for {dur}; \
                     member {} crashes {} after the cut and restarts {} later",
                    stalled + 1,
                    cut + 1,
                    l + 1,
                    fmt_ns(cut_after),
                    stalled + 1,
                    fmt_ns(crash_at - cut_after),
                    fmt_ns(down)
                ));
                for (from, to) in [(l, cut), (cut, l)] {
                    self.after(cut_after, Event::CutLink { f, from, to });
                }
                // It hears nothing from the leader after its restart.
                self.after(
                    crash_at,
                    Event::CutLink {
                        f,
                        from: l,
                        to: stalled,
                    },
                );
                self.after(crash_at, Event::Crash { m: stalled });
                self.after(
                    crash_at,
                    Event::SetDisk {
                        m: stalled,
                        factor: 1,
                    },
                );
                self.after(crash_at + down, Event::Restart { m: stalled });
                self.after(cut_after + duration, Event::FaultEnd { f });
            }
            FaultKind::IsolateAfterLeaseRound => {
                let Some(l) = self.leader() else {
                    self.log_fault("isolation after a lease round skipped: no leader".to_owned());
                    return;
                };
                // The member whose clock runs slowest (the lowest among equals).
                let slowest = (0..self.members.len())
                    .filter(|&m| self.up(m))
                    .max_by_key(|&m| (self.members[m].tick_ns, Reverse(m)));
                match slowest {
                    Some(s) if self.members[s].tick_ns > self.members[l].tick_ns => {
                        self.log_fault(format!(
                            "transfer leadership {} -> {} (the slowest clock), to isolate it \
                             after a lease round",
                            l + 1,
                            s + 1
                        ));
                        if let Some(p) = self.members[l].proc.as_mut() {
                            let _ = p.core.transfer_leader(NodeId(s as u64 + 1));
                        }
                        self.counters.transfers += 1;
                        self.drive(l, Outbox::default());
                        self.after(ISOLATION_ARM_DELAY, Event::ArmIsolation { f });
                    }
                    _ => self.arm_isolation(f),
                }
            }
            FaultKind::TransferLeader { slow_links } => {
                let Some(l) = self.leader() else {
                    self.log_fault("leader transfer skipped: no leader".to_owned());
                    return;
                };
                let others: Vec<usize> = (0..self.members.len())
                    .filter(|&m| m != l && self.up(m))
                    .collect();
                if others.is_empty() {
                    return;
                }
                let to = self.rng.pick(&others);
                self.log_fault(format!("transfer leadership {} -> {}", l + 1, to + 1));
                if let Some(extra_max) = slow_links {
                    self.log_fault(format!(
                        "slow links of member {}: up to +{} for {dur}",
                        l + 1,
                        fmt_ns(extra_max)
                    ));
                    self.slow_links(f, l, extra_max);
                    self.after(duration, Event::FaultEnd { f });
                }
                if let Some(p) = self.members[l].proc.as_mut() {
                    let _ = p.core.transfer_leader(NodeId(to as u64 + 1));
                }
                self.counters.transfers += 1;
                self.drive(l, Outbox::default());
            }
        }
    }

    /// Arms fault `f` (an `IsolateAfterLeaseRound`) on the current leader.
    pub(super) fn arm_isolation(&mut self, f: usize) {
        if self.healed {
            return;
        }
        let Some(l) = self.leader() else {
            self.log_fault("isolation after a lease round skipped: no leader".to_owned());
            return;
        };
        let lease_until = self.members[l]
            .proc
            .as_ref()
            .and_then(|p| p.core.lease_until());
        self.log_fault(format!(
            "isolate leader {} once a quorum acknowledges its next lease round",
            l + 1
        ));
        self.armed_isolation = Some(ArmedIsolation {
            f,
            leader: l,
            lease_until,
            give_up: self.now + SECONDS,
        });
    }

    /// After every turn of member `m`: cuts the armed leader off from
    /// everyone the moment its lease was extended (a quorum acknowledged a
    /// newer round), before it sends anything else. What it already sent
    /// and is still in flight is lost on arrival.
    pub(super) fn isolate_if_confirmed(&mut self, m: usize) {
        let Some(a) = self.armed_isolation else {
            return;
        };
        if a.leader != m {
            return;
        }
        if self.healed || self.now > a.give_up {
            self.armed_isolation = None;
            self.log_fault(format!(
                "isolation of member {} given up: no lease round acknowledged",
                m + 1
            ));
            return;
        }
        let until = self.members[m]
            .proc
            .as_ref()
            .and_then(|p| p.core.lease_until());
        if until.is_none() || until <= a.lease_until {
            return;
        }
        self.armed_isolation = None;
        let rest: Vec<usize> = (0..self.members.len()).filter(|&x| x != m).collect();
        self.net.cut(a.f, both_ways(&[m], &rest));
        self.undo.insert(a.f, Undo::Network);
        self.counters.partitions += 1;
        let duration = self.faults[a.f].duration;
        self.log_fault(format!(
            "isolate leader {} | {} for {}: a lease round was just acknowledged",
            m + 1,
            names(&rest),
            fmt_ns(duration)
        ));
        self.after(duration, Event::FaultEnd { f: a.f });
    }

    /// Slows every link in and out of `m` until fault `f` ends.
    pub(super) fn slow_links(&mut self, f: usize, m: usize, extra_max: Nanos) {
        let links: BTreeSet<(usize, usize)> = (0..self.members.len())
            .filter(|&x| x != m)
            .flat_map(|x| [(x, m), (m, x)])
            .collect();
        self.net.slow_down(
            f,
            SlowLinks {
                links,
                extra: (extra_max / 4, extra_max),
            },
        );
        self.undo.insert(f, Undo::Network);
    }

    pub(super) fn fault_end(&mut self, f: usize) {
        match self.undo.remove(&f) {
            None => {}
            Some(Undo::Network) => {
                self.net.restore(f);
                self.log_fault(format!("fault {f} ends (network)"));
            }
            Some(Undo::Disk(m)) => {
                self.members[m].disk_factor = 1;
                self.log_fault(format!("fault {f} ends (disk of member {})", m + 1));
            }
        }
    }

    pub(super) fn heal(&mut self) {
        self.healed = true;
        self.net.heal();
        self.undo.clear();
        self.log_fault("heal: network clean, every member running".to_owned());
        for m in 0..self.members.len() {
            self.members[m].disk_factor = 1;
            self.members[m].paused_until = self.members[m].paused_until.min(self.now);
            if !self.up(m) {
                self.start(m);
            }
        }
    }
}
