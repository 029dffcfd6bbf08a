//! The JSON shapes of the client API. Those the remote client shares
//! (every KV, watch and lease body and answer) are defined once, in
//! [`ha_client::wire`], and re-exported here; the membership routes'
//! bodies, which only this server reads, stay here.
//!
//! Keys and values are base64 (standard alphabet, padded) by default, as
//! in etcd's JSON gateway; with `?encoding=utf8` on any route they are
//! plain UTF-8 strings both ways (a stored key or value that is not UTF-8
//! then answers `422 not_utf8`).

pub use ha_client::wire::{
    CompactBody, DeleteBody, DeleteJson, Encoding, GetBody, GetJson, GrantBody, GrantJson,
    HeaderJson, HeaderOnlyJson, KeepAliveJson, LeaseBody, LeasesJson, PutBody, PutJson, RangeBody,
    RangeJson, TtlJson, TxnBody, TxnJson, WatchBody, WatchCreatedJson, WatchJson, consistency, ms,
};
use serde::Deserialize;

/// `POST /v1/members/add`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemberBody {
    /// The new member's id (never used before).
    pub id: u64,
    /// Its peer address, `IP:port`.
    pub address: String,
    /// Make it a voter once caught up (default true).
    #[serde(default = "yes")]
    pub promote_when_caught_up: bool,
}

fn yes() -> bool {
    true
}

/// A body naming one member.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    /// The member.
    pub id: u64,
}

/// `POST /v1/debug/disk-delay` (with `--enable-failpoints`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskDelayBody {
    /// Milliseconds every durable log write waits first; 0 clears it.
    pub ms: u64,
}

/// `POST /v1/leader/transfer`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransferBody {
    /// The voter to hand leadership to (absent: another voter this member
    /// chooses).
    pub to: Option<u64>,
}
