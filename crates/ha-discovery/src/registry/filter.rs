//! Which instances discovery returns: healthy and enabled by default,
//! narrowed by tags, metadata, zone and cluster, with Nacos's protect
//! threshold.

use std::collections::{BTreeMap, BTreeSet};

use super::instance::ServiceInstance;

/// Narrows a service's instances.
///
/// ```
/// use ha_discovery::InstanceFilter;
/// let f = InstanceFilter::new().tag("v2").zone("eu-1").protect_threshold(0.5);
/// assert!(f.healthy_only);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceFilter {
    /// Only healthy instances (default true).
    pub healthy_only: bool,
    /// Only enabled instances (default true).
    pub enabled_only: bool,
    /// Every one of these tags.
    pub tags: BTreeSet<String>,
    /// Every one of these metadata entries.
    pub metadata: BTreeMap<String, String>,
    /// This zone.
    pub zone: Option<String>,
    /// This cluster.
    pub cluster: Option<String>,
    /// When the healthy share of the matching (enabled) instances is below
    /// this fraction, return them all, healthy or not, rather than send
    /// all the load to the few healthy ones (Nacos's protect threshold).
    /// 0 (the default) never does.
    pub protect_threshold: f64,
}

impl Default for InstanceFilter {
    fn default() -> Self {
        InstanceFilter {
            healthy_only: true,
            enabled_only: true,
            tags: BTreeSet::new(),
            metadata: BTreeMap::new(),
            zone: None,
            cluster: None,
            protect_threshold: 0.0,
        }
    }
}

impl InstanceFilter {
    /// Healthy and enabled instances, no other condition.
    pub fn new() -> Self {
        InstanceFilter::default()
    }

    /// Every registered instance, healthy or not, enabled or not.
    pub fn all() -> Self {
        InstanceFilter {
            healthy_only: false,
            enabled_only: false,
            ..InstanceFilter::default()
        }
    }

    /// Requires `tag`.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.insert(tag.into());
        self
    }

    /// Requires metadata `key` = `value`.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Requires `zone`.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Requires `cluster`.
    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = Some(cluster.into());
        self
    }

    /// Sets the protect threshold (a fraction in `[0, 1]`).
    pub fn protect_threshold(mut self, threshold: f64) -> Self {
        self.protect_threshold = threshold;
        self
    }

    /// True when `i` passes every condition except health.
    fn matches_static(&self, i: &ServiceInstance) -> bool {
        (!self.enabled_only || i.enabled)
            && self.tags.iter().all(|t| i.tags.contains(t))
            && self
                .metadata
                .iter()
                .all(|(k, v)| i.metadata.get(k) == Some(v))
            && self
                .zone
                .as_ref()
                .is_none_or(|z| i.zone.as_ref() == Some(z))
            && self
                .cluster
                .as_ref()
                .is_none_or(|c| i.cluster.as_ref() == Some(c))
    }

    /// The instances of `instances` this filter returns.
    pub fn apply(&self, instances: &[ServiceInstance]) -> Vec<ServiceInstance> {
        let matching: Vec<&ServiceInstance> = instances
            .iter()
            .filter(|i| self.matches_static(i))
            .collect();
        if !self.healthy_only {
            return matching.into_iter().cloned().collect();
        }
        let healthy: Vec<&ServiceInstance> = matching
            .iter()
            .copied()
            .filter(|i| i.health == super::instance::HealthStatus::Healthy)
            .collect();
        if !matching.is_empty()
            && (healthy.len() as f64) < self.protect_threshold * matching.len() as f64
        {
            tracing::debug!(
                healthy = healthy.len(),
                total = matching.len(),
                threshold = self.protect_threshold,
                "protect threshold: returning unhealthy instances too"
            );
            return matching.into_iter().cloned().collect();
        }
        healthy.into_iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::instance::HealthStatus;

    fn fleet(healthy: usize, unhealthy: usize) -> Vec<ServiceInstance> {
        (0..healthy + unhealthy)
            .map(|n| {
                let mut i =
                    ServiceInstance::new("s", format!("i{n}"), "127.0.0.1", 1000 + n as u16);
                if n >= healthy {
                    i.health = HealthStatus::Unhealthy;
                }
                i
            })
            .collect()
    }

    #[test]
    fn healthy_and_enabled_by_default() {
        let mut f = fleet(3, 2);
        f[0].enabled = false;
        let ids: Vec<_> = InstanceFilter::new()
            .apply(&f)
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, ["i1", "i2"]);
        assert_eq!(InstanceFilter::all().apply(&f).len(), 5);
    }

    #[test]
    fn protect_threshold_returns_everything_below_the_healthy_fraction() {
        let f = fleet(2, 8); // 20% healthy
        assert_eq!(InstanceFilter::new().apply(&f).len(), 2);
        assert_eq!(
            InstanceFilter::new().protect_threshold(0.2).apply(&f).len(),
            2,
            "at the threshold the healthy ones suffice"
        );
        assert_eq!(
            InstanceFilter::new().protect_threshold(0.5).apply(&f).len(),
            10,
            "below it every instance is returned"
        );
        // Disabled instances never come back, even under protection.
        let mut f = fleet(1, 3);
        f[3].enabled = false;
        assert_eq!(
            InstanceFilter::new().protect_threshold(0.9).apply(&f).len(),
            3
        );
    }

    #[test]
    fn tags_metadata_zone_and_cluster_narrow() {
        let f = vec![
            ServiceInstance::new("s", "a", "h", 1)
                .tag("v2")
                .zone("z1")
                .meta("k", "1"),
            ServiceInstance::new("s", "b", "h", 2).tag("v2").zone("z2"),
            ServiceInstance::new("s", "c", "h", 3)
                .zone("z1")
                .cluster("c1"),
        ];
        let ids = |flt: InstanceFilter| -> Vec<String> {
            flt.apply(&f).into_iter().map(|i| i.id).collect()
        };
        assert_eq!(ids(InstanceFilter::new().tag("v2")), ["a", "b"]);
        assert_eq!(ids(InstanceFilter::new().zone("z1")), ["a", "c"]);
        assert_eq!(ids(InstanceFilter::new().tag("v2").zone("z1")), ["a"]);
        assert_eq!(ids(InstanceFilter::new().meta("k", "1")), ["a"]);
        assert_eq!(ids(InstanceFilter::new().cluster("c1")), ["c"]);
    }
}
