//! The fault plan of a seed: what goes wrong, when, and for how long.
//!
//! The plan is drawn up front from the seed; who is hit ("the leader", "a
//! follower") is resolved when the fault starts, so that a fault aimed at
//! the leader hits whoever leads at that moment.
//!
//! Membership changes are planned here too ([`FaultKind::Membership`]);
//! what they become depends on the group when they start (a group of
//! five voters is not grown, one of three is not shrunk).

use super::executor::{MILLIS, Nanos, SECONDS};
use super::rng::SimRng;

/// Whom a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Leader,
    Follower,
    Any,
}

/// How a partition splits the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PartitionKind {
    /// A random minority against the rest, both ways.
    Split,
    /// The leader alone, both ways.
    IsolateLeader,
    /// The leader with the largest minority it can have (with 5 members,
    /// itself and one follower), both ways: that follower still asks the
    /// deposed leader while the majority elects another.
    LeaderMinority,
    /// One member hears nobody, or nobody hears it (one-way).
    OneWay,
    /// Two sides that cannot talk, and one member that talks to both.
    Bridge,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum FaultKind {
    Partition(PartitionKind),
    /// Power failure of one member (unsynced writes lost), restarted after
    /// the fault's duration.
    Crash(Target),
    /// A member that crashes again soon after each restart; on a sick
    /// host its links are slow meanwhile (messages from before a crash
    /// then arrive after the restart).
    CrashLoop {
        target: Target,
        cycles: u32,
        slow_links: Option<Nanos>,
    },
    /// Every member loses power at once.
    PowerFailure,
    /// The member's process stops (GC, swap, SIGSTOP): no ticks, no
    /// messages handled, for the duration.
    Pause(Target),
    /// The member's disk takes `factor` times longer.
    SlowDisk {
        target: Target,
        factor: u64,
    },
    /// Links in and out of a member get slow (congestion, retransmits).
    SlowLinks {
        target: Target,
        extra_max: Nanos,
    },
    /// The leader hands leadership to another member; on a sick host its
    /// links are slow meanwhile (so it may hear of the new term late).
    TransferLeader {
        slow_links: Option<Nanos>,
    },
    /// An operator changes the membership through the leader, as an
    /// application would with `Node::change_membership`.
    Membership(MembershipKind),
    /// A follower cut off from the leader (both ways) for the duration,
    /// while another follower restarts in the middle of it: the cut one
    /// campaigns, the restarted one has no leader.
    RestartWhileCut {
        down: Nanos,
    },
    /// The lease plan's sharpest partition: the leader — moved first to the
    /// member whose clock runs slowest, by a leader transfer, if another
    /// one's does — is cut off from everyone (both ways) the moment a
    /// quorum acknowledges its next lease round, so that round is the
    /// followers' last contact; cut for the duration.
    IsolateAfterLeaseRound,
    /// A follower's disk stalls (a sick host); `cut_after` later another
    /// follower is cut off from the leader (both ways) for the duration;
    /// `crash_after` ticks of the cut one's clock after that, the stalled
    /// one crashes, losing what it had not synced, and restarts `down`
    /// later with a healthy disk, hearing nothing from the leader. Its
    /// durable log is then no longer than the cut one's, whose campaign
    /// comes due while the leader's lease (kept fresh by the stalled one's
    /// heartbeat responses, which wait for no disk) still holds.
    StallRestartWhileCut {
        cut_after: Nanos,
        crash_after: u64,
        down: Nanos,
    },
}

/// What an operator does to the membership. Every new member has a new id
/// and starts empty; a removed member's process stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MembershipKind {
    /// Add a learner, then promote it: explicitly, or by the leader once
    /// it caught up (`promote_when_caught_up`), or never (it stays a
    /// learner).
    Grow(Promotion),
    /// Remove a voter (the leader itself hands over first).
    Shrink(Target),
    /// Replace a voter: add a new id as a learner, promote it, remove the
    /// old one.
    Replace(Target),
    /// Replace a voter in ONE joint change (add the new id as a voter and
    /// remove the old one), left automatically.
    JointReplace(Target),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Promotion {
    Explicit,
    Auto,
    Never,
}

#[derive(Clone, Debug)]
pub(crate) struct PlannedFault {
    pub(crate) start: Nanos,
    pub(crate) duration: Nanos,
    pub(crate) kind: FaultKind,
}

fn target(rng: &mut SimRng) -> Target {
    rng.pick(&[Target::Leader, Target::Follower, Target::Any])
}

/// Draws the faults of one seed, all starting inside `[from, to)`; with
/// `lease_focus`, the faults that threaten a read lease.
pub(crate) fn plan(
    rng: &mut SimRng,
    from: Nanos,
    to: Nanos,
    lease_focus: bool,
) -> Vec<PlannedFault> {
    if lease_focus {
        return plan_lease(rng, from, to);
    }
    let count = rng.between(3, 6);
    let mut faults: Vec<PlannedFault> = (0..count)
        .map(|_| {
            let start = rng.between(from, to.saturating_sub(1));
            let roll = rng.below(100);
            let (kind, duration) = match roll {
                0..=27 => {
                    let kind = rng.pick(&[
                        PartitionKind::Split,
                        PartitionKind::IsolateLeader,
                        PartitionKind::OneWay,
                        PartitionKind::Bridge,
                    ]);
                    (
                        FaultKind::Partition(kind),
                        rng.between(300 * MILLIS, 2500 * MILLIS),
                    )
                }
                28..=42 => (
                    FaultKind::Crash(target(rng)),
                    rng.between(20 * MILLIS, 1500 * MILLIS),
                ),
                43..=54 => {
                    let slow = rng.chance(0.8);
                    (
                        FaultKind::CrashLoop {
                            target: target(rng),
                            cycles: rng.between(2, 5) as u32,
                            slow_links: slow.then(|| rng.between(200 * MILLIS, 1500 * MILLIS)),
                        },
                        0,
                    )
                }
                55..=58 => (
                    FaultKind::PowerFailure,
                    rng.between(50 * MILLIS, 800 * MILLIS),
                ),
                59..=70 => (
                    FaultKind::Pause(target(rng)),
                    rng.between(50 * MILLIS, 1200 * MILLIS),
                ),
                71..=78 => (
                    FaultKind::SlowDisk {
                        target: target(rng),
                        factor: rng.between(10, 200),
                    },
                    rng.between(300 * MILLIS, 2 * SECONDS),
                ),
                79..=86 => (
                    FaultKind::SlowLinks {
                        target: target(rng),
                        extra_max: rng.between(20 * MILLIS, 600 * MILLIS),
                    },
                    rng.between(300 * MILLIS, 2 * SECONDS),
                ),
                _ => (FaultKind::TransferLeader { slow_links: None }, 0),
            };
            PlannedFault {
                start,
                duration,
                kind,
            }
        })
        .collect();
    faults.extend(plan_membership(rng, from, to));
    faults.sort_by_key(|f| f.start);
    faults
}

/// Membership changes of a seed: none in a quarter of the seeds, else one
/// or two, starting in the first two thirds of the window so that they
/// can finish while faults still run. The duration is how long the
/// operator keeps retrying.
fn plan_membership(rng: &mut SimRng, from: Nanos, to: Nanos) -> Vec<PlannedFault> {
    let count = rng.pick(&[0, 1, 1, 2]);
    let latest = from + (to - from) * 2 / 3;
    (0..count)
        .map(|_| {
            let kind = match rng.below(100) {
                0..=14 => MembershipKind::Grow(Promotion::Explicit),
                15..=29 => MembershipKind::Grow(Promotion::Auto),
                30..=37 => MembershipKind::Grow(Promotion::Never),
                38..=54 => MembershipKind::Shrink(target(rng)),
                55..=77 => MembershipKind::Replace(target(rng)),
                _ => MembershipKind::JointReplace(target(rng)),
            };
            PlannedFault {
                start: rng.between(from, latest),
                duration: rng.between(2 * SECONDS, 4 * SECONDS),
                kind: FaultKind::Membership(kind),
            }
        })
        .collect()
}

fn plan_lease(rng: &mut SimRng, from: Nanos, to: Nanos) -> Vec<PlannedFault> {
    let count = rng.between(4, 8);
    let mut faults: Vec<PlannedFault> = (0..count)
        .map(|_| {
            let start = rng.between(from, to.saturating_sub(1));
            let (kind, duration) = match rng.below(100) {
                0..=11 => {
                    let kind = rng.pick(&[
                        PartitionKind::IsolateLeader,
                        PartitionKind::IsolateLeader,
                        PartitionKind::LeaderMinority,
                        PartitionKind::OneWay,
                    ]);
                    (
                        FaultKind::Partition(kind),
                        rng.between(300 * MILLIS, 1500 * MILLIS),
                    )
                }
                12..=21 => (
                    FaultKind::RestartWhileCut {
                        down: rng.between(5 * MILLIS, 100 * MILLIS),
                    },
                    rng.between(500 * MILLIS, 1500 * MILLIS),
                ),
                22..=31 => (
                    FaultKind::StallRestartWhileCut {
                        cut_after: rng.between(10 * MILLIS, 40 * MILLIS),
                        crash_after: rng.between(19, 23),
                        down: rng.between(5 * MILLIS, 30 * MILLIS),
                    },
                    rng.between(500 * MILLIS, 1500 * MILLIS),
                ),
                32..=41 => (
                    FaultKind::IsolateAfterLeaseRound,
                    rng.between(400 * MILLIS, 1200 * MILLIS),
                ),
                42..=49 => (
                    FaultKind::Crash(Target::Follower),
                    rng.between(10 * MILLIS, 300 * MILLIS),
                ),
                50..=61 => (
                    FaultKind::Pause(Target::Leader),
                    rng.between(50 * MILLIS, 1000 * MILLIS),
                ),
                62..=73 => (
                    FaultKind::SlowLinks {
                        target: Target::Leader,
                        extra_max: rng.between(100 * MILLIS, 600 * MILLIS),
                    },
                    rng.between(300 * MILLIS, 1500 * MILLIS),
                ),
                74..=86 => (FaultKind::TransferLeader { slow_links: None }, 0),
                _ => (
                    FaultKind::TransferLeader {
                        slow_links: Some(rng.between(20 * MILLIS, 300 * MILLIS)),
                    },
                    rng.between(300 * MILLIS, 1000 * MILLIS),
                ),
            };
            PlannedFault {
                start,
                duration,
                kind,
            }
        })
        .collect();
    faults.sort_by_key(|f| f.start);
    faults
}
