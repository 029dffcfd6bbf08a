//! [`TcpConfig`]: limits and timings of the TCP transport.

use std::time::Duration;

use ha_core::{Config, ConfigError};
use serde::{Deserialize, Serialize};

/// The smallest `max_frame_bytes` accepted: room for heartbeats, votes and
/// small appends.
const MIN_FRAME_BYTES: u32 = 64 * 1024;
/// The smallest `max_call_bytes` accepted: room for small requests and a
/// failure reason.
const MIN_CALL_BYTES: u32 = 1024;

/// Configuration of a [`TcpTransport`](super::TcpTransport). Build it with
/// `TcpConfig::default()`, adjust fields, then call [`TcpConfig::validate`]
/// (and [`TcpConfig::validate_for`] against the member's raft config);
/// `bind` validates again.
///
/// Durations are written in human form in config files (`"200ms"`, `"5s"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpConfig {
    /// Largest frame payload sent or accepted, in bytes (the 4-byte length
    /// prefix excluded). A peer announcing a larger frame is disconnected;
    /// a single message larger than this is dropped at the sender. Must
    /// exceed raft's `max_size_per_msg` plus one command
    /// ([`validate_for`](Self::validate_for)). Default 16 MiB.
    pub max_frame_bytes: u32,
    /// Messages queued per peer while its writer is busy or connecting.
    /// When the queue is full `send` drops the message (raft retries) and
    /// counts it. Raft itself bounds the appends in flight per follower
    /// (`max_inflight_msgs`), so what one peer can pin in memory is about
    /// `min(send_queue_len, max_inflight_msgs) × max_size_per_msg` plus
    /// small messages. Default 4096.
    pub send_queue_len: usize,
    /// Deadline of one connection attempt (TCP connect plus writing the
    /// hello; with TLS, the TLS handshake too). Default 1 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// An accepted connection that has not completed its TLS handshake (if
    /// any) and sent a complete hello within this time is closed. Default
    /// 5 s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A frame write that does not complete within this time closes the
    /// connection (a peer that stopped reading, or a dead host that sent no
    /// reset); the writer reconnects. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Backoff after the first failed connection attempt; it doubles per
    /// further failure, with jitter (each wait is uniform in
    /// `[backoff / 2, backoff]`). Default 50 ms.
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff_min: Duration,
    /// Upper bound of the reconnect backoff. A peer that comes back is
    /// reconnected to within about this long. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff_max: Duration,
    /// A snapshot stream that makes no progress for this long fails: on
    /// the sending member no chunk could be read or written, or no ack
    /// came after the last one; on the receiving member no frame arrived.
    /// The sender then reports the snapshot failed (raft retries) and the
    /// receiver discards what it staged, so a stalled peer cannot hold a
    /// stream. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub snapshot_idle_timeout: Duration,
    /// Largest peer-call frame sent or accepted, in bytes (the 4-byte
    /// length prefix excluded; the call id, and a reply's status byte, are
    /// inside). A request larger than this minus 8 bytes is refused with
    /// `TooLarge` before it is sent; a reply that does not fit reaches the
    /// caller as `CallFailed`; a peer announcing a larger frame is
    /// disconnected. Default 4 MiB.
    pub max_call_bytes: u32,
    /// Peer calls in flight on one call connection: this member's calls to
    /// one peer (one more is answered `Overloaded { reason: TooManyCalls }`
    /// at once), and replies to a peer not written yet (at the bound, its
    /// connection is not read from until some went out). How many
    /// handlers run at once is `Config::max_concurrent_calls`. Default 1024.
    pub max_calls_in_flight: usize,
    /// A call frame whose first byte arrived must be complete within this
    /// time, or the connection is closed (a stalled or hostile peer cannot
    /// hold a half-read frame). Idle time between frames is not limited.
    /// Default 5 s.
    #[serde(with = "humantime_serde")]
    pub call_stall_timeout: Duration,
    /// Sets `TCP_NODELAY` on every peer connection: raft messages are small
    /// and latency-bound, and the writer already batches. Default true.
    pub nodelay: bool,
    /// Inbound connections open at once, of every kind and from everyone;
    /// one more is closed at once, unread, and counted
    /// ([`TcpRejections::too_many_connections`](super::TcpRejections)). A
    /// member of a group of n keeps about 2 × (n − 1) open (messages and
    /// calls, plus a snapshot stream now and then). Default 256.
    #[serde(default = "default_max_inbound")]
    pub max_inbound_connections: usize,
    /// Inbound connections open at once from one IP address, counted before
    /// the handshake (so one flooding host cannot take them all). Default
    /// 64.
    #[serde(default = "default_max_inbound_per_ip")]
    pub max_inbound_per_ip: usize,
    /// Inbound connections open at once from one member (the sender its
    /// hello names; with TLS, the member its certificate names), of every
    /// kind. A member needs three: messages, calls and a snapshot stream.
    /// Default 8.
    #[serde(default = "default_max_per_peer")]
    pub max_connections_per_peer: usize,
}

fn default_max_inbound() -> usize {
    TcpConfig::default().max_inbound_connections
}

fn default_max_inbound_per_ip() -> usize {
    TcpConfig::default().max_inbound_per_ip
}

fn default_max_per_peer() -> usize {
    TcpConfig::default().max_connections_per_peer
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_frame_bytes: 16 * 1024 * 1024,
            send_queue_len: 4096,
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(1),
            snapshot_idle_timeout: Duration::from_secs(10),
            max_call_bytes: 4 * 1024 * 1024,
            max_calls_in_flight: 1024,
            call_stall_timeout: Duration::from_secs(5),
            nodelay: true,
            max_inbound_connections: 256,
            max_inbound_per_ip: 64,
            max_connections_per_peer: 8,
        }
    }
}

impl TcpConfig {
    /// Checks every field; returns the config unchanged when it is valid.
    ///
    /// # Errors
    /// The first problem found, as a [`ConfigError`].
    pub fn validate(self) -> Result<Self, ConfigError> {
        if self.max_frame_bytes < MIN_FRAME_BYTES {
            return Err(ConfigError::OutOfRange {
                field: "max_frame_bytes",
                value: u64::from(self.max_frame_bytes),
                expected: "at least 65536",
            });
        }
        if self.send_queue_len == 0 {
            return Err(ConfigError::Zero {
                field: "send_queue_len",
            });
        }
        if self.max_call_bytes < MIN_CALL_BYTES {
            return Err(ConfigError::OutOfRange {
                field: "max_call_bytes",
                value: u64::from(self.max_call_bytes),
                expected: "at least 1024",
            });
        }
        for (field, n) in [
            ("max_calls_in_flight", self.max_calls_in_flight),
            ("max_inbound_connections", self.max_inbound_connections),
            ("max_inbound_per_ip", self.max_inbound_per_ip),
        ] {
            if n == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.max_connections_per_peer < 3 {
            return Err(ConfigError::OutOfRange {
                field: "max_connections_per_peer",
                value: self.max_connections_per_peer as u64,
                expected: "at least 3 (messages, calls, a snapshot stream)",
            });
        }
        for (field, d) in [
            ("connect_timeout", self.connect_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("write_timeout", self.write_timeout),
            ("reconnect_backoff_min", self.reconnect_backoff_min),
            ("snapshot_idle_timeout", self.snapshot_idle_timeout),
            ("call_stall_timeout", self.call_stall_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.reconnect_backoff_max < self.reconnect_backoff_min {
            return Err(ConfigError::OutOfRange {
                field: "reconnect_backoff_max",
                value: self.reconnect_backoff_max.as_millis() as u64,
                expected: "at least reconnect_backoff_min",
            });
        }
        Ok(self)
    }

    /// [`validate`](Self::validate), and checks that the largest message
    /// the member's raft config can produce fits in one frame: an append of
    /// `max_size_per_msg` bytes, or one entry of `max_command_size` when it
    /// is larger (raft always sends at least one entry), with room for
    /// headers.
    ///
    /// # Errors
    /// The first problem found, as a [`ConfigError`].
    pub fn validate_for(self, raft: &Config) -> Result<Self, ConfigError> {
        let this = self.validate()?;
        let largest = raft
            .max_size_per_msg
            .saturating_add(raft.max_command_size as u64)
            .saturating_add(64 * 1024);
        if u64::from(this.max_frame_bytes) < largest {
            return Err(ConfigError::OutOfRange {
                field: "max_frame_bytes",
                value: u64::from(this.max_frame_bytes),
                expected: "greater than max_size_per_msg + max_command_size + 64 KiB",
            });
        }
        Ok(this)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::NodeId;

    #[test]
    fn defaults_are_valid_for_the_default_raft_config() {
        let raft = Config::new(NodeId(1), vec![NodeId(1)]);
        TcpConfig::default().validate_for(&raft).unwrap();
    }

    #[test]
    fn invalid_values_are_named() {
        let bad = |f: fn(&mut TcpConfig)| {
            let mut c = TcpConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(matches!(
            bad(|c| c.max_frame_bytes = 100),
            ConfigError::OutOfRange {
                field: "max_frame_bytes",
                ..
            }
        ));
        assert_eq!(
            bad(|c| c.send_queue_len = 0),
            ConfigError::Zero {
                field: "send_queue_len"
            }
        );
        assert_eq!(
            bad(|c| c.connect_timeout = Duration::ZERO),
            ConfigError::Zero {
                field: "connect_timeout"
            }
        );
        assert!(matches!(
            bad(|c| c.reconnect_backoff_max = Duration::from_millis(1)),
            ConfigError::OutOfRange {
                field: "reconnect_backoff_max",
                ..
            }
        ));
        let mut raft = Config::new(NodeId(1), vec![NodeId(1)]);
        raft.max_size_per_msg = 32 * 1024 * 1024;
        assert!(matches!(
            TcpConfig::default().validate_for(&raft),
            Err(ConfigError::OutOfRange {
                field: "max_frame_bytes",
                ..
            })
        ));
    }

    #[test]
    fn serde_uses_human_durations_and_defaults_missing_fields() {
        let c: TcpConfig =
            serde_json::from_str(r#"{"connect_timeout":"250ms","nodelay":false}"#).unwrap();
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert!(!c.nodelay);
        assert_eq!(c.max_frame_bytes, TcpConfig::default().max_frame_bytes);
    }
}
