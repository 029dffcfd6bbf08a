//! Grey (beta) release: who gets a candidate version, and what each
//! instance reports it runs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::model::{ConfigId, ConfigMeta};

/// The identity of an application instance reading configs: its id (unique
/// in the group of instances, stable across restarts) and labels. Grey
/// rules select instances by these; version reports are keyed by the id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigInstance {
    /// The instance id.
    pub id: String,
    /// Labels, e.g. `zone = eu`.
    pub labels: BTreeMap<String, String>,
}

impl ConfigInstance {
    /// An instance without labels.
    pub fn new(id: impl Into<String>) -> ConfigInstance {
        ConfigInstance {
            id: id.into(),
            labels: BTreeMap::new(),
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> ConfigInstance {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// Which instances get a grey candidate: an instance is selected when ANY
/// of the three parts selects it (an empty part selects nobody).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GreyRule {
    /// These instance ids.
    #[serde(default)]
    pub instances: BTreeSet<String>,
    /// Instances carrying ALL these labels (when not empty).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// This percentage (0–100) of instances, by a stable hash of the
    /// config id and the instance id: the same instances stay selected
    /// when the percentage grows.
    #[serde(default)]
    pub percent: Option<u8>,
}

impl GreyRule {
    /// Selects these instance ids.
    pub fn instances<I: IntoIterator<Item = S>, S: Into<String>>(ids: I) -> GreyRule {
        GreyRule {
            instances: ids.into_iter().map(Into::into).collect(),
            ..GreyRule::default()
        }
    }

    /// Selects instances with this label.
    pub fn label(key: impl Into<String>, value: impl Into<String>) -> GreyRule {
        GreyRule {
            labels: [(key.into(), value.into())].into(),
            ..GreyRule::default()
        }
    }

    /// Selects `percent` % of instances by stable hash.
    pub fn percent(percent: u8) -> GreyRule {
        GreyRule {
            percent: Some(percent),
            ..GreyRule::default()
        }
    }

    /// True when `instance` gets the candidate of config `id`.
    pub fn selects(&self, id: &ConfigId, instance: &ConfigInstance) -> bool {
        self.instances.contains(&instance.id)
            || (!self.labels.is_empty()
                && self
                    .labels
                    .iter()
                    .all(|(k, v)| instance.labels.get(k) == Some(v)))
            || self
                .percent
                .is_some_and(|p| bucket(id, &instance.id) < u64::from(p))
    }
}

/// 0..100, stable for a config and an instance id.
pub(crate) fn bucket(id: &ConfigId, instance: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(id.to_string().as_bytes());
    h.update([0]);
    h.update(instance.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first) % 100
}

/// What an instance reports it runs (JSON in its session-bound report key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    /// The instance id.
    pub instance: String,
    /// The version it runs (of the stable line, or the grey candidate's).
    pub version: u64,
    /// True when that is a grey candidate.
    pub grey: bool,
    /// The content hash it runs.
    pub content_hash: String,
    /// True while it runs on its local cache (the group was unreachable at
    /// start).
    #[serde(default)]
    pub cached: bool,
    /// A newer version it could not load (did not deserialize), if any.
    #[serde(default)]
    pub failed_version: Option<u64>,
}

/// A config's rollout: the stable version, a grey candidate if any, and
/// what every reporting instance runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollout {
    /// The stable version.
    pub stable: Option<ConfigMeta>,
    /// The grey candidate and its rule.
    pub candidate: Option<(ConfigMeta, GreyRule)>,
    /// Every live instance's report, by instance id.
    pub instances: Vec<InstanceReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_select_by_id_label_and_stable_percentage() {
        let id = ConfigId::new("ns", "g", "app").expect("id");
        let eu = ConfigInstance::new("a").label("zone", "eu");
        let us = ConfigInstance::new("b").label("zone", "us");
        assert!(GreyRule::instances(["a"]).selects(&id, &eu));
        assert!(!GreyRule::instances(["a"]).selects(&id, &us));
        assert!(GreyRule::label("zone", "eu").selects(&id, &eu));
        assert!(!GreyRule::label("zone", "eu").selects(&id, &us));
        assert!(!GreyRule::default().selects(&id, &eu));
        assert!(GreyRule::percent(100).selects(&id, &us));
        assert!(!GreyRule::percent(0).selects(&id, &us));
        // Growing the percentage keeps everyone already selected, and
        // roughly the given share is selected.
        let ids: Vec<_> = (0..1000)
            .map(|i| ConfigInstance::new(format!("i{i}")))
            .collect();
        let at = |p| {
            ids.iter()
                .filter(|i| GreyRule::percent(p).selects(&id, i))
                .map(|i| i.id.clone())
                .collect::<BTreeSet<_>>()
        };
        let (ten, thirty) = (at(10), at(30));
        assert!(ten.is_subset(&thirty));
        assert!((50..150).contains(&ten.len()), "10% selected {}", ten.len());
    }
}
