//! How ha-node starts, decided from its data directory and its flags —
//! etcd's `initial-cluster-state`, made explicit:
//!
//! | data directory            | `--members` (bootstrap)     | `--join ADDRESS`  | neither   |
//! |---------------------------|-----------------------------|-------------------|-----------|
//! | fresh                     | bootstrap a new group       | join by address   | error     |
//! | this member of cluster C  | restart (if they derive C)  | error             | restart   |
//!
//! A started member records who it is in `ha-node.json` in its data
//! directory ([`StoredIdentity`]): its id, the cluster's bootstrap member
//! ids and token (from which the cluster id derives), and the peer
//! addresses it knew at its first start. A restart needs no `--members`
//! and no `--join`; a joined member restarts from it alone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ha_core::{ClusterId, NodeId};
use serde::{Deserialize, Serialize};

/// The file in the data directory that says which member of which
/// cluster the directory holds.
pub const IDENTITY_FILE: &str = "ha-node.json";

/// What `ha-node.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredIdentity {
    /// This member's id.
    pub member_id: u64,
    /// The cluster id in full (hex), for people; it must equal what
    /// `initial_members` and `cluster_token` derive.
    pub cluster_id: String,
    /// The ids the group was bootstrapped with.
    pub initial_members: Vec<u64>,
    /// The group's cluster token.
    pub cluster_token: String,
    /// Peer addresses known at the first start (the bootstrap list, or the
    /// members a join reply named): the address book until the replicated
    /// membership says otherwise.
    pub peers: BTreeMap<u64, SocketAddr>,
}

impl StoredIdentity {
    /// The cluster id `initial_members` and `cluster_token` derive.
    pub fn derived_cluster_id(&self) -> ClusterId {
        let ids: Vec<NodeId> = self.initial_members.iter().map(|&i| NodeId(i)).collect();
        ClusterId::derive(&ids, &self.cluster_token)
    }

    /// Reads `ha-node.json` from `data_dir`; `None` when there is none.
    ///
    /// # Errors
    /// When it cannot be read, does not parse, or names a cluster id that
    /// its own members and token do not derive.
    pub fn load(data_dir: &Path) -> Result<Option<StoredIdentity>, StartModeError> {
        let path = data_dir.join(IDENTITY_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StartModeError::BadIdentityFile {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let stored: StoredIdentity =
            serde_json::from_slice(&text).map_err(|e| StartModeError::BadIdentityFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if hex(&stored.derived_cluster_id()) != stored.cluster_id || stored.member_id == 0 {
            return Err(StartModeError::BadIdentityFile {
                path,
                reason:
                    "its cluster id does not match its members and token, or its member id is 0"
                        .into(),
            });
        }
        Ok(Some(stored))
    }

    /// Writes `ha-node.json` into `data_dir` (a new file renamed into
    /// place, synced).
    ///
    /// # Errors
    /// The file system's.
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(data_dir)?;
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = data_dir.join(format!("{IDENTITY_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, data_dir.join(IDENTITY_FILE))?;
        std::fs::File::open(data_dir)?.sync_all()
    }
}

/// The full cluster id in hex.
pub fn hex(id: &ClusterId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// How this start goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPlan {
    /// A new group from `--members` (also a data directory that holds data
    /// but no `ha-node.json`, from before it existed: the engine checks
    /// the cluster and member ids stored in RocksDB).
    Bootstrap {
        /// This member.
        id: NodeId,
        /// The initial members and their peer addresses.
        members: BTreeMap<NodeId, SocketAddr>,
    },
    /// Ask the member at `address` (its client API) to add this one.
    Join {
        /// `IP:port` or a URL of any member's client API.
        address: String,
        /// The id asked for; `None`: the leader picks a fresh one.
        id: Option<NodeId>,
    },
    /// The data directory already holds this member.
    Restart {
        /// What it holds.
        stored: StoredIdentity,
        /// Peer addresses to start with: `--members` if given (they
        /// derive the same cluster id), else the stored ones.
        peers: BTreeMap<NodeId, SocketAddr>,
    },
}

/// The start mode does not fit the data directory.
#[derive(Debug, thiserror::Error)]
pub enum StartModeError {
    /// `--join` on a data directory that already holds a member.
    #[error(
        "data directory {data_dir} already holds {what}: restart it without --join (to join as a new member instead, give an empty --data-dir)"
    )]
    JoinOnInitialised {
        /// The data directory.
        data_dir: PathBuf,
        /// What it holds.
        what: String,
    },
    /// `--members` (and `--cluster-token`) describe another cluster than
    /// the one the data directory belongs to.
    #[error(
        "data directory {data_dir} belongs to cluster {stored} (bootstrapped from members {initial:?}), but --members/--cluster-token describe cluster {given}: restart it without --members, or give an empty --data-dir to bootstrap a new group"
    )]
    OtherCluster {
        /// The data directory.
        data_dir: PathBuf,
        /// Its cluster (short form).
        stored: String,
        /// Its bootstrap members.
        initial: Vec<u64>,
        /// The cluster the flags describe (short form).
        given: String,
    },
    /// `--id` names another member than the data directory holds.
    #[error(
        "data directory {data_dir} holds member {stored}, not --id {given}: drop --id or give that member's data directory"
    )]
    OtherMember {
        /// The data directory.
        data_dir: PathBuf,
        /// The member it holds.
        stored: u64,
        /// The `--id` given.
        given: u64,
    },
    /// A fresh data directory and no way to start.
    #[error(
        "data directory {data_dir} is empty: bootstrap a new group with --members (and --id), or join an existing one with --join <client API address of any member>"
    )]
    NoStartMode {
        /// The data directory.
        data_dir: PathBuf,
    },
    /// Data but no `ha-node.json`, and no `--members` to restart with.
    #[error(
        "data directory {data_dir} holds data but no {IDENTITY_FILE}: restart it with the --members and --cluster-token it was bootstrapped with"
    )]
    NoIdentityFile {
        /// The data directory.
        data_dir: PathBuf,
    },
    /// Both `--members` and `--join`.
    #[error(
        "--members and --join together: a new group starts with --members; a joining member learns the members from the group, so give only --join"
    )]
    BothModes,
    /// Bootstrap without `--id`, or with an id not in `--members`.
    #[error("bootstrap: {0}")]
    BadBootstrap(String),
    /// `ha-node.json` cannot be read.
    #[error("{path}: {reason}")]
    BadIdentityFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What the flags ask for, as far as the start mode goes.
#[derive(Clone, Debug, Default)]
pub struct ModeFlags {
    /// `--id`.
    pub id: Option<NodeId>,
    /// `--members`.
    pub members: Option<BTreeMap<NodeId, SocketAddr>>,
    /// `--join`.
    pub join: Option<String>,
    /// `--cluster-token`.
    pub cluster_token: String,
}

/// Whether `data_dir` holds RocksDB data (a member that ran, with or
/// without `ha-node.json`).
pub fn has_data(data_dir: &Path) -> bool {
    data_dir.join("log").exists() || data_dir.join("state").exists()
}

/// Decides how to start from what the data directory holds (`stored`,
/// `has_data`) and the flags.
///
/// # Errors
/// A [`StartModeError`] naming the flag to use instead.
pub fn decide(
    data_dir: &Path,
    stored: Option<StoredIdentity>,
    has_data: bool,
    flags: &ModeFlags,
) -> Result<StartPlan, StartModeError> {
    let data_dir = data_dir.to_path_buf();
    if flags.join.is_some() && flags.members.is_some() {
        return Err(StartModeError::BothModes);
    }
    if let Some(stored) = stored {
        let cluster = stored.derived_cluster_id();
        if flags.join.is_some() {
            return Err(StartModeError::JoinOnInitialised {
                data_dir,
                what: format!("member {} of cluster {cluster}", stored.member_id),
            });
        }
        if let Some(id) = flags.id.filter(|id| id.0 != stored.member_id) {
            return Err(StartModeError::OtherMember {
                data_dir,
                stored: stored.member_id,
                given: id.0,
            });
        }
        let peers = match &flags.members {
            Some(members) => {
                let ids: Vec<NodeId> = members.keys().copied().collect();
                let given = ClusterId::derive(&ids, &flags.cluster_token);
                if given != cluster {
                    return Err(StartModeError::OtherCluster {
                        data_dir,
                        stored: cluster.to_string(),
                        initial: stored.initial_members.clone(),
                        given: given.to_string(),
                    });
                }
                members.clone()
            }
            None => stored
                .peers
                .iter()
                .map(|(&id, &addr)| (NodeId(id), addr))
                .collect(),
        };
        return Ok(StartPlan::Restart { stored, peers });
    }
    match (&flags.join, &flags.members) {
        (Some(_), _) if has_data => Err(StartModeError::JoinOnInitialised {
            data_dir,
            what: "a member's data (no ha-node.json)".into(),
        }),
        (Some(address), _) => Ok(StartPlan::Join {
            address: address.clone(),
            id: flags.id,
        }),
        (None, Some(members)) => {
            let id = flags.id.ok_or_else(|| {
                StartModeError::BadBootstrap("--id is required (one of --members)".into())
            })?;
            if !members.contains_key(&id) {
                return Err(StartModeError::BadBootstrap(format!(
                    "member {id} is not in --members (a new member of a running group starts with --join)"
                )));
            }
            Ok(StartPlan::Bootstrap {
                id,
                members: members.clone(),
            })
        }
        (None, None) if has_data => Err(StartModeError::NoIdentityFile { data_dir }),
        (None, None) => Err(StartModeError::NoStartMode { data_dir }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[u64]) -> BTreeMap<NodeId, SocketAddr> {
        ids.iter()
            .map(|&i| {
                (
                    NodeId(i),
                    format!("127.0.0.1:{}", 7000 + i).parse().expect("addr"),
                )
            })
            .collect()
    }

    fn stored(id: u64, initial: &[u64], token: &str) -> StoredIdentity {
        let ids: Vec<NodeId> = initial.iter().map(|&i| NodeId(i)).collect();
        StoredIdentity {
            member_id: id,
            cluster_id: hex(&ClusterId::derive(&ids, token)),
            initial_members: initial.to_vec(),
            cluster_token: token.into(),
            peers: members(initial)
                .into_iter()
                .map(|(id, a)| (id.0, a))
                .collect(),
        }
    }

    fn flags(id: Option<u64>, m: Option<&[u64]>, join: Option<&str>, token: &str) -> ModeFlags {
        ModeFlags {
            id: id.map(NodeId),
            members: m.map(members),
            join: join.map(str::to_string),
            cluster_token: token.into(),
        }
    }

    #[test]
    fn a_fresh_data_dir_bootstraps_joins_or_says_which_flag_is_missing() {
        let dir = Path::new("/d");
        assert_eq!(
            decide(
                dir,
                None,
                false,
                &flags(Some(2), Some(&[1, 2, 3]), None, "t")
            )
            .expect("ok"),
            StartPlan::Bootstrap {
                id: NodeId(2),
                members: members(&[1, 2, 3])
            }
        );
        assert_eq!(
            decide(
                dir,
                None,
                false,
                &flags(None, None, Some("10.0.0.1:8001"), "")
            )
            .expect("ok"),
            StartPlan::Join {
                address: "10.0.0.1:8001".into(),
                id: None
            }
        );
        let e = decide(dir, None, false, &flags(Some(1), None, None, "")).expect_err("neither");
        assert!(matches!(e, StartModeError::NoStartMode { .. }), "{e}");
        assert!(e.to_string().contains("--join"), "{e}");
        assert!(matches!(
            decide(
                dir,
                None,
                false,
                &flags(Some(4), Some(&[1, 2, 3]), None, "")
            ),
            Err(StartModeError::BadBootstrap(_))
        ));
        assert!(matches!(
            decide(
                dir,
                None,
                false,
                &flags(Some(4), Some(&[1]), Some("a:1"), "")
            ),
            Err(StartModeError::BothModes)
        ));
    }

    #[test]
    fn an_initialised_data_dir_restarts_and_refuses_the_wrong_mode() {
        let dir = Path::new("/d");
        let s = stored(2, &[1, 2, 3], "t");
        // Restart with nothing but the data dir, or with the same flags.
        for f in [
            flags(None, None, None, ""),
            flags(Some(2), Some(&[1, 2, 3]), None, "t"),
        ] {
            assert!(
                matches!(
                    decide(dir, Some(s.clone()), true, &f),
                    Ok(StartPlan::Restart { .. })
                ),
                "{f:?}"
            );
        }
        let e = decide(
            dir,
            Some(s.clone()),
            true,
            &flags(None, None, Some("a:1"), ""),
        )
        .expect_err("join on an initialised dir");
        assert!(matches!(e, StartModeError::JoinOnInitialised { .. }), "{e}");
        assert!(e.to_string().contains("without --join"), "{e}");
        // Another token, or other ids: another cluster.
        for f in [
            flags(Some(2), Some(&[1, 2, 3]), None, "u"),
            flags(Some(2), Some(&[1, 2]), None, "t"),
        ] {
            let e = decide(dir, Some(s.clone()), true, &f).expect_err("other cluster");
            assert!(matches!(e, StartModeError::OtherCluster { .. }), "{e}");
            assert!(e.to_string().contains("without --members"), "{e}");
        }
        assert!(matches!(
            decide(dir, Some(s.clone()), true, &flags(Some(3), None, None, "")),
            Err(StartModeError::OtherMember {
                stored: 2,
                given: 3,
                ..
            })
        ));
        // Data without the file: bootstrap flags let the engine check the
        // ids RocksDB stores; --join or nothing is refused.
        assert!(matches!(
            decide(dir, None, true, &flags(Some(1), Some(&[1, 2]), None, "")),
            Ok(StartPlan::Bootstrap { .. })
        ));
        assert!(matches!(
            decide(dir, None, true, &flags(None, None, Some("a:1"), "")),
            Err(StartModeError::JoinOnInitialised { .. })
        ));
        assert!(matches!(
            decide(dir, None, true, &flags(None, None, None, "")),
            Err(StartModeError::NoIdentityFile { .. })
        ));
    }

    #[test]
    fn the_identity_file_round_trips_and_a_tampered_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(StoredIdentity::load(dir.path()).expect("none"), None);
        let s = stored(5, &[1, 2, 3], "t");
        s.save(dir.path()).expect("save");
        assert_eq!(
            StoredIdentity::load(dir.path()).expect("load"),
            Some(s.clone())
        );
        let bad = StoredIdentity {
            cluster_token: "other".into(),
            ..s
        };
        std::fs::write(
            dir.path().join(IDENTITY_FILE),
            serde_json::to_vec(&bad).expect("json"),
        )
        .expect("write");
        assert!(matches!(
            StoredIdentity::load(dir.path()),
            Err(StartModeError::BadIdentityFile { .. })
        ));
        std::fs::write(dir.path().join(IDENTITY_FILE), b"{").expect("write");
        assert!(StoredIdentity::load(dir.path()).is_err());
    }
}
