//! Member configuration: one source of defaults, presets, and `validate()`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::ids::NodeId;

/// How a member starts on empty storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartMode {
    /// One of the `initial_members` of a new group.
    #[default]
    Bootstrap,
    /// A new member of an existing group (`initial_members` is that group's
    /// bootstrap list, which its cluster id derives from).
    Join,
}

/// Configuration of one member. Build it with [`Config::new`] (the LAN
/// preset) or [`Config::conservative`], adjust fields, then call
/// [`Config::validate`]; the engine validates again on start.
///
/// Durations are written in human form in config files (`"10ms"`, `"5s"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This member's id. Never 0.
    pub node_id: NodeId,
    /// The voters of a new group (bootstrap). Every member of a new group
    /// must be started with the same list and the same `cluster_token`.
    pub initial_members: Vec<NodeId>,
    /// Mixed into the cluster id, so that two groups with the same member ids
    /// never talk to each other by mistake.
    pub cluster_token: String,
    /// How this member starts on empty storage: as one of the
    /// `initial_members` of a new group, or as a new member joining an
    /// existing group (which must then add it, as a learner or voter). On
    /// storage that already holds data, both simply restart.
    pub start_mode: StartMode,
    /// A learner added with "promote when caught up" is promoted by the
    /// leader once its log is within this many entries of the leader's.
    pub promote_within_entries: u64,

    /// Length of one raft tick.
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
    /// Ticks between leader heartbeats.
    pub heartbeat_tick: usize,
    /// Minimum election timeout in ticks (raft-rs randomises each timeout in
    /// `[election_tick, max_election_tick)`).
    pub election_tick: usize,
    /// Upper bound (exclusive) of the randomised election timeout, in ticks.
    pub max_election_tick: usize,
    /// How far clocks may run apart over one election timeout, which lease
    /// reads allow for: a leader's clock running slow and a follower's
    /// ticks running fast, together. A leader's read lease lasts
    /// `(election_tick - 1) * tick_interval - max_clock_drift` from the send
    /// time of the quorum round that confirmed it (see
    /// [`Config::lease_duration`]). The LAN preset's 25 ms allows each clock
    /// to be 5% off; raise it for hosts whose clocks may drift more.
    #[serde(with = "humantime_serde")]
    pub max_clock_drift: Duration,
    /// Pre-vote (Raft thesis 9.6): a partitioned member that comes back does
    /// not disrupt the group.
    pub pre_vote: bool,
    /// The leader steps down when it has not heard from a quorum for an
    /// election timeout.
    pub check_quorum: bool,

    /// Largest append message raft sends (bytes). Not 0, which in raft-rs
    /// means one entry per message.
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// Bytes of proposed but uncommitted entries the leader accepts before it
    /// sheds load.
    pub max_uncommitted_size: u64,
    /// Largest committed-entry batch handed to the state machine at once.
    pub max_committed_size_per_ready: u64,
    /// Largest command accepted by `propose` (bytes).
    pub max_command_size: usize,

    /// Deadline of a call that gives none.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How often a member re-proposes its proposals that have not applied
    /// (a leader may drop a forwarded proposal without telling anyone).
    #[serde(with = "humantime_serde")]
    pub proposal_retry_interval: Duration,
    /// How long a batch of linearizable reads waits for its ReadIndex round
    /// before it is issued again with a new context.
    #[serde(with = "humantime_serde")]
    pub read_retry_interval: Duration,
    /// Committed-but-unapplied entries above which new proposals wait.
    pub max_apply_lag: u64,
    /// Proposals outstanding on this member above which new ones wait.
    pub max_pending_proposals: usize,
    /// How long a leader that shuts down tries to hand leadership over first.
    #[serde(with = "humantime_serde")]
    pub shutdown_transfer_timeout: Duration,
    /// Tick lag above which a warning is logged (the raft thread could not
    /// keep time; elections may follow).
    #[serde(with = "humantime_serde")]
    pub tick_lag_warn: Duration,

    /// Where snapshots are built and staged (a directory of this member's
    /// own, on the same filesystem as its data). `None` keeps them in
    /// memory, which suits tests and small states; a snapshot staged in
    /// memory does not survive a crash in the middle of its install.
    pub snapshot_dir: Option<PathBuf>,
    /// The log is compacted once it holds this many applied entries (that
    /// the state store has durably applied).
    pub compaction_threshold: u64,
    /// Applied entries kept after a compaction, so that a follower a little
    /// behind catches up from the log rather than by snapshot.
    pub compaction_retain: u64,
    /// Bytes per chunk when a snapshot is streamed to a peer.
    pub snapshot_chunk_size: usize,
    /// Bytes per second a member sends snapshots at, over all peers
    /// (0: unlimited).
    pub snapshot_rate_limit: u64,
    /// Peer calls this member's call handler runs at once (calls from peers
    /// and its own `call_leader` while it leads). One more is answered
    /// `Overloaded { reason: TooManyCalls }` at once rather than queued.
    pub max_concurrent_calls: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config::new(NodeId(1), vec![NodeId(1)])
    }
}

impl Config {
    /// The LAN preset: 10 ms ticks, heartbeats every 50 ms, election
    /// timeouts spread over 250–300 ms, so failover stays well under a second.
    pub fn new(node_id: NodeId, initial_members: Vec<NodeId>) -> Self {
        Config {
            node_id,
            initial_members,
            cluster_token: "ha".to_owned(),
            start_mode: StartMode::Bootstrap,
            promote_within_entries: 1_000,
            tick_interval: Duration::from_millis(10),
            heartbeat_tick: 5,
            election_tick: 25,
            max_election_tick: 30,
            max_clock_drift: Duration::from_millis(25),
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            max_uncommitted_size: 64 * 1024 * 1024,
            max_committed_size_per_ready: 16 * 1024 * 1024,
            max_command_size: 1536 * 1024,
            request_timeout: Duration::from_secs(5),
            proposal_retry_interval: Duration::from_secs(1),
            read_retry_interval: Duration::from_millis(500),
            max_apply_lag: 20_000,
            max_pending_proposals: 100_000,
            shutdown_transfer_timeout: Duration::from_secs(1),
            tick_lag_warn: Duration::from_millis(100),
            snapshot_dir: None,
            compaction_threshold: 20_000,
            compaction_retain: 5_000,
            snapshot_chunk_size: 1024 * 1024,
            snapshot_rate_limit: 512 * 1024 * 1024,
            max_concurrent_calls: 256,
        }
    }

    /// The conservative preset for hosts whose threads can stall (busy VMs,
    /// noisy neighbours): 100 ms heartbeats and election timeouts of 1–1.2 s,
    /// like etcd's defaults.
    pub fn conservative(node_id: NodeId, initial_members: Vec<NodeId>) -> Self {
        Config {
            tick_interval: Duration::from_millis(100),
            heartbeat_tick: 1,
            election_tick: 10,
            max_election_tick: 12,
            max_clock_drift: Duration::from_millis(100),
            proposal_retry_interval: Duration::from_secs(3),
            read_retry_interval: Duration::from_secs(2),
            shutdown_transfer_timeout: Duration::from_secs(3),
            tick_lag_warn: Duration::from_millis(500),
            ..Config::new(node_id, initial_members)
        }
    }

    /// The shortest election timeout as a duration.
    pub fn election_timeout(&self) -> Duration {
        self.tick_interval * self.election_tick as u32
    }

    /// How long a read lease lasts from the send time of the quorum round
    /// that confirmed it: `(election_tick - 1)` ticks (a follower that heard
    /// from the leader grants no vote for at least that long, and a member
    /// that just started none for `election_tick` ticks) minus
    /// `max_clock_drift`. Zero when the drift bound leaves no lease.
    pub fn lease_duration(&self) -> Duration {
        self.lease_window().saturating_sub(self.max_clock_drift)
    }

    /// `(election_tick - 1)` ticks: the lease before the drift allowance.
    fn lease_window(&self) -> Duration {
        self.tick_interval
            .saturating_mul(u32::try_from(self.election_tick.saturating_sub(1)).unwrap_or(u32::MAX))
    }

    /// Checks every field; returns the config unchanged when it is valid.
    ///
    /// # Errors
    /// The first problem found, as a [`ConfigError`].
    pub fn validate(self) -> Result<Self, ConfigError> {
        if self.node_id.0 == 0 {
            return Err(ConfigError::ZeroNodeId);
        }
        if self.initial_members.is_empty() {
            return Err(ConfigError::NoMembers);
        }
        let mut seen = HashSet::new();
        for m in &self.initial_members {
            if m.0 == 0 {
                return Err(ConfigError::ZeroMemberId);
            }
            if !seen.insert(*m) {
                return Err(ConfigError::DuplicateMember(*m));
            }
        }
        match self.start_mode {
            StartMode::Bootstrap if !seen.contains(&self.node_id) => {
                return Err(ConfigError::NotAMember(self.node_id));
            }
            StartMode::Join if seen.contains(&self.node_id) => {
                return Err(ConfigError::JoinAsInitialMember(self.node_id));
            }
            _ => {}
        }
        if self.tick_interval.is_zero() {
            return Err(ConfigError::Zero {
                field: "tick_interval",
            });
        }
        if self.heartbeat_tick == 0 {
            return Err(ConfigError::Zero {
                field: "heartbeat_tick",
            });
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(ConfigError::ElectionTickTooSmall {
                election_tick: self.election_tick,
                heartbeat_tick: self.heartbeat_tick,
            });
        }
        if self.max_election_tick <= self.election_tick {
            return Err(ConfigError::ElectionRange {
                min: self.election_tick,
                max: self.max_election_tick,
            });
        }
        if self.max_clock_drift >= self.lease_window() {
            return Err(ConfigError::ClockDriftTooLarge {
                max_clock_drift: self.max_clock_drift,
                lease_window: self.lease_window(),
            });
        }
        if self.max_size_per_msg == 0 {
            return Err(ConfigError::Zero {
                field: "max_size_per_msg",
            });
        }
        for (field, v) in [
            ("max_inflight_msgs", self.max_inflight_msgs as u64),
            ("max_uncommitted_size", self.max_uncommitted_size),
            (
                "max_committed_size_per_ready",
                self.max_committed_size_per_ready,
            ),
            ("max_command_size", self.max_command_size as u64),
            ("compaction_threshold", self.compaction_threshold),
            ("snapshot_chunk_size", self.snapshot_chunk_size as u64),
            ("max_apply_lag", self.max_apply_lag),
            ("max_pending_proposals", self.max_pending_proposals as u64),
            ("max_concurrent_calls", self.max_concurrent_calls as u64),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.max_command_size as u64 > self.max_uncommitted_size {
            return Err(ConfigError::OutOfRange {
                field: "max_command_size",
                value: self.max_command_size as u64,
                expected: "at most max_uncommitted_size",
            });
        }
        for (field, d) in [
            ("request_timeout", self.request_timeout),
            ("proposal_retry_interval", self.proposal_retry_interval),
            ("read_retry_interval", self.read_retry_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Zero { field });
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Vec<NodeId> {
        vec![NodeId(1), NodeId(2), NodeId(3)]
    }

    #[test]
    fn presets_are_valid_and_lan_spans_250_to_300ms() {
        let c = Config::new(NodeId(1), three()).validate().unwrap();
        assert_eq!(c.election_timeout(), Duration::from_millis(250));
        assert_eq!(
            c.tick_interval * c.max_election_tick as u32,
            Duration::from_millis(300)
        );
        let c = Config::conservative(NodeId(2), three()).validate().unwrap();
        assert_eq!(c.election_timeout(), Duration::from_secs(1));
    }

    #[test]
    fn the_read_lease_is_election_tick_minus_one_ticks_minus_the_drift_bound() {
        let c = Config::new(NodeId(1), three());
        assert_eq!(c.lease_duration(), Duration::from_millis(240 - 25));
        let c = Config::conservative(NodeId(1), three());
        assert_eq!(c.lease_duration(), Duration::from_millis(900 - 100));
        let c = Config {
            max_clock_drift: Duration::from_secs(1),
            ..Config::new(NodeId(1), three())
        };
        assert_eq!(c.lease_duration(), Duration::ZERO);
    }

    #[test]
    fn invalid_configs_are_rejected_with_the_reason() {
        let ok = Config::new(NodeId(1), three());
        let cases: Vec<(Config, ConfigError)> = vec![
            (
                Config {
                    node_id: NodeId(0),
                    ..ok.clone()
                },
                ConfigError::ZeroNodeId,
            ),
            (
                Config {
                    initial_members: vec![],
                    ..ok.clone()
                },
                ConfigError::NoMembers,
            ),
            (
                Config {
                    initial_members: vec![NodeId(1), NodeId(1)],
                    ..ok.clone()
                },
                ConfigError::DuplicateMember(NodeId(1)),
            ),
            (
                Config {
                    initial_members: vec![NodeId(1), NodeId(0)],
                    ..ok.clone()
                },
                ConfigError::ZeroMemberId,
            ),
            (
                Config {
                    node_id: NodeId(9),
                    ..ok.clone()
                },
                ConfigError::NotAMember(NodeId(9)),
            ),
            (
                Config {
                    election_tick: 5,
                    heartbeat_tick: 5,
                    ..ok.clone()
                },
                ConfigError::ElectionTickTooSmall {
                    election_tick: 5,
                    heartbeat_tick: 5,
                },
            ),
            (
                Config {
                    max_election_tick: 25,
                    ..ok.clone()
                },
                ConfigError::ElectionRange { min: 25, max: 25 },
            ),
            (
                Config {
                    max_clock_drift: Duration::from_millis(240),
                    ..ok.clone()
                },
                ConfigError::ClockDriftTooLarge {
                    max_clock_drift: Duration::from_millis(240),
                    lease_window: Duration::from_millis(240),
                },
            ),
            (
                Config {
                    max_size_per_msg: 0,
                    ..ok.clone()
                },
                ConfigError::Zero {
                    field: "max_size_per_msg",
                },
            ),
        ];
        for (cfg, want) in cases {
            assert_eq!(cfg.validate().unwrap_err(), want);
        }
    }

    #[test]
    fn config_round_trips_through_serde_with_human_durations() {
        let json = r#"{"node_id":2,"initial_members":[1,2,3],"tick_interval":"20ms"}"#;
        let c: Config = serde_json::from_str(json).unwrap();
        assert_eq!(c.tick_interval, Duration::from_millis(20));
        assert_eq!(c.election_tick, Config::default().election_tick);
        let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<Config>(r#"{"nope":1}"#).is_err());
    }
}
