//! What the registry stores: service instances, their health and health
//! checks, the key layout and the versioned record encoding.
//!
//! Keys (all under [`ROOT`]):
//! - `svc/<namespace>/<service>/<instance id>`: the instance record, so
//!   one prefix watch on `svc/<namespace>/<service>/` sees everything about
//!   a service (registration, updates, health, removal);
//! - `hb/<namespace>/<service>/<instance id>`: the instance's TTL
//!   heartbeat (only for [`CheckKind::Ttl`]), kept apart so heartbeats do
//!   not wake service watchers;
//! - `checkers/<checker id>`: a live health checker (session-bound).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ha_core::{KeyValue, LeaseId};
use serde::{Deserialize, Serialize};

use super::error::{DecodeReason, DiscoveryError, DiscoveryResult};

/// Where the registry keeps its keys.
pub const ROOT: &str = "_ha/sd/";

/// The namespace used when none is given (Nacos's `public`).
pub const DEFAULT_NAMESPACE: &str = "public";

/// The format version written into every record.
const FORMAT_VERSION: u32 = 1;

/// An instance's health, as the group records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Passing (or not checked: an instance without a check is healthy
    /// while registered).
    #[default]
    Healthy,
    /// Failing its check.
    Unhealthy,
}

/// How an instance is checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CheckKind {
    /// The instance calls [`crate::Registry::heartbeat`] at least every
    /// `ttl`; a checker that sees no heartbeat for `ttl` (by its own
    /// clock) counts a failure.
    Ttl {
        /// Longest gap between heartbeats, in milliseconds.
        ttl_ms: u64,
    },
    /// A TCP connect to the instance's address and port.
    Tcp,
    /// An HTTP GET of `http://<address>:<port><path>` (`https://` with
    /// `tls`) expecting `status`.
    Http {
        /// The path (with a leading `/`).
        path: String,
        /// The expected status code.
        expect_status: u16,
        /// HTTPS (rustls). The server's certificate must be valid for the
        /// instance's address (an IP address needs an IP subject
        /// alternative name) and chain to the Mozilla roots or to the
        /// checking member's system store, unless `tls_skip_verify`.
        /// Only checkers built with HTTPS support (this version on) are
        /// assigned such a check.
        #[serde(default)]
        tls: bool,
        /// With `tls`: accept any certificate (self-signed endpoints). The
        /// traffic is still encrypted but the endpoint is NOT
        /// authenticated: anyone on the path can answer for it.
        #[serde(default)]
        tls_skip_verify: bool,
    },
    /// A check the application supplies by name
    /// ([`crate::HealthCheckerBuilder::custom_check`]); only checkers that
    /// registered the name run it.
    Custom {
        /// The check's name.
        name: String,
    },
}

/// An active health check and its schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What is checked.
    #[serde(flatten)]
    pub kind: CheckKind,
    /// Time between checks, in milliseconds.
    pub interval_ms: u64,
    /// Deadline of one check, in milliseconds.
    pub timeout_ms: u64,
    /// Consecutive failures that turn a healthy instance unhealthy.
    pub failures_before_unhealthy: u32,
    /// Consecutive successes that turn an unhealthy instance healthy.
    pub successes_before_healthy: u32,
}

impl HealthCheck {
    /// A check of `kind` every second, 1 s deadline, 3 failures → unhealthy,
    /// 2 successes → healthy.
    pub fn new(kind: CheckKind) -> Self {
        HealthCheck {
            kind,
            interval_ms: 1000,
            timeout_ms: 1000,
            failures_before_unhealthy: 3,
            successes_before_healthy: 2,
        }
    }

    /// An HTTP GET of `path` expecting `status`.
    pub fn http(path: impl Into<String>, status: u16) -> Self {
        HealthCheck::new(CheckKind::Http {
            path: path.into(),
            expect_status: status,
            tls: false,
            tls_skip_verify: false,
        })
    }

    /// An HTTPS GET of `path` expecting `status`, verifying the server's
    /// certificate (see [`CheckKind::Http`]; [`HealthCheck::tls_skip_verify`]
    /// for self-signed endpoints).
    pub fn https(path: impl Into<String>, status: u16) -> Self {
        HealthCheck::new(CheckKind::Http {
            path: path.into(),
            expect_status: status,
            tls: true,
            tls_skip_verify: false,
        })
    }

    /// For an HTTPS check: accept any server certificate (self-signed
    /// endpoints; encrypted but NOT authenticated). No effect on other
    /// kinds of check, including plain HTTP.
    pub fn tls_skip_verify(mut self, skip: bool) -> Self {
        if let CheckKind::Http {
            tls: true,
            tls_skip_verify,
            ..
        } = &mut self.kind
        {
            *tls_skip_verify = skip;
        }
        self
    }

    /// A TCP connect.
    pub fn tcp() -> Self {
        HealthCheck::new(CheckKind::Tcp)
    }

    /// A heartbeat expected every `ttl`.
    pub fn ttl(ttl: Duration) -> Self {
        HealthCheck::new(CheckKind::Ttl {
            ttl_ms: ttl.as_millis() as u64,
        })
    }

    /// A named application check.
    pub fn custom(name: impl Into<String>) -> Self {
        HealthCheck::new(CheckKind::Custom { name: name.into() })
    }

    /// With this interval.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval_ms = interval.as_millis() as u64;
        self
    }

    /// With this per-check deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = timeout.as_millis() as u64;
        self
    }

    /// With these thresholds.
    pub fn thresholds(mut self, failures: u32, successes: u32) -> Self {
        self.failures_before_unhealthy = failures;
        self.successes_before_healthy = successes;
        self
    }

    pub(crate) fn validate(&self) -> DiscoveryResult<()> {
        let bad = |reason| Err(DiscoveryError::InvalidConfig { reason });
        if self.interval_ms == 0 {
            return bad("a health check's interval must be positive");
        }
        if self.timeout_ms == 0 {
            return bad("a health check's timeout must be positive");
        }
        if self.failures_before_unhealthy == 0 || self.successes_before_healthy == 0 {
            return bad("health check thresholds must be at least 1");
        }
        if let CheckKind::Ttl { ttl_ms: 0 } = self.kind {
            return bad("a TTL check's ttl must be positive");
        }
        Ok(())
    }
}

/// One instance of a service.
///
/// The fields up to `check` are what the registrant says; `namespace`,
/// `ephemeral`, `create_revision` and `mod_revision` are filled in when
/// the instance is read from the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInstance {
    /// The service's name.
    pub service: String,
    /// The instance's id, unique within the service.
    pub id: String,
    /// Host name or IP address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Relative share of the load (0: never picked by weighted pickers).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeSet<String>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Zone (availability zone, rack).
    #[serde(default)]
    pub zone: Option<String>,
    /// Cluster (Nacos's cluster: a group of instances of one service).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Takes traffic; a disabled instance is registered but not returned
    /// by default.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Health as last recorded by a checker.
    #[serde(default)]
    pub health: HealthStatus,
    /// The active check, if any.
    #[serde(default)]
    pub check: Option<HealthCheck>,
    /// The checker that last wrote `health`.
    #[serde(default)]
    pub checked_by: Option<String>,
    /// The namespace (from the key).
    #[serde(skip)]
    pub namespace: String,
    /// Bound to a session's lease (from the key's lease).
    #[serde(skip)]
    pub ephemeral: bool,
    /// Revision of the registration (from the key).
    #[serde(skip)]
    pub create_revision: i64,
    /// Revision of the last change (from the key).
    #[serde(skip)]
    pub mod_revision: i64,
}

fn default_weight() -> u32 {
    1
}

fn default_true() -> bool {
    true
}

/// The stored form: the instance plus the format version.
#[derive(Serialize)]
struct RecordRef<'a> {
    v: u32,
    #[serde(flatten)]
    instance: &'a ServiceInstance,
}

#[derive(Deserialize)]
struct Record {
    v: u32,
    #[serde(flatten)]
    instance: ServiceInstance,
}

impl ServiceInstance {
    /// An enabled, healthy, unchecked instance of weight 1.
    pub fn new(
        service: impl Into<String>,
        id: impl Into<String>,
        address: impl Into<String>,
        port: u16,
    ) -> Self {
        ServiceInstance {
            service: service.into(),
            id: id.into(),
            address: address.into(),
            port,
            weight: 1,
            tags: BTreeSet::new(),
            metadata: BTreeMap::new(),
            zone: None,
            cluster: None,
            enabled: true,
            health: HealthStatus::Healthy,
            check: None,
            checked_by: None,
            namespace: String::new(),
            ephemeral: false,
            create_revision: 0,
            mod_revision: 0,
        }
    }

    /// With this weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// With this tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.insert(tag.into());
        self
    }

    /// With this metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// In this zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// In this cluster.
    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = Some(cluster.into());
        self
    }

    /// Checked by `check`.
    pub fn check(mut self, check: HealthCheck) -> Self {
        self.check = Some(check);
        self
    }

    /// `address:port`.
    pub fn endpoint(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }

    /// Healthy and enabled: what discovery returns by default.
    pub fn is_available(&self) -> bool {
        self.enabled && self.health == HealthStatus::Healthy
    }

    /// The stored bytes (versioned JSON).
    pub fn encode(&self) -> Vec<u8> {
        let record = RecordRef {
            v: FORMAT_VERSION,
            instance: self,
        };
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(&record).unwrap_or_default()
    }

    /// Decodes a stored record (`key` only names it in errors).
    ///
    /// # Errors
    /// [`DiscoveryError::Decode`] for bytes that are not a record of a
    /// known version.
    pub fn decode(key: &[u8], bytes: &[u8]) -> DiscoveryResult<ServiceInstance> {
        let err = |reason| DiscoveryError::Decode {
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
        };
        let record: Record =
            serde_json::from_slice(bytes).map_err(|e| err(DecodeReason::Json(Arc::new(e))))?;
        if record.v != FORMAT_VERSION {
            return Err(err(DecodeReason::Version(record.v)));
        }
        Ok(record.instance)
    }

    /// Decodes a key-value read from the group: the record, with the
    /// namespace, service and id taken from the key and the revisions and
    /// lease from the key-value.
    ///
    /// # Errors
    /// [`DiscoveryError::Decode`] for a key or value not laid out by the
    /// registry.
    pub fn from_kv(kv: &KeyValue) -> DiscoveryResult<ServiceInstance> {
        let Some((namespace, service, id)) = parse_instance_key(&kv.key) else {
            return Err(DiscoveryError::Decode {
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                reason: DecodeReason::BadKey,
            });
        };
        let mut instance = ServiceInstance::decode(&kv.key, &kv.value)?;
        instance.namespace = namespace;
        instance.service = service;
        instance.id = id;
        instance.ephemeral = kv.lease != LeaseId::NONE;
        instance.create_revision = kv.create_revision;
        instance.mod_revision = kv.mod_revision;
        Ok(instance)
    }
}

/// Checks a name used as one key segment.
pub(crate) fn check_name(what: &'static str, name: &str) -> DiscoveryResult<()> {
    if name.is_empty() || name.contains('/') {
        return Err(DiscoveryError::InvalidName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// `<ROOT>svc/` — every instance of every namespace.
pub(crate) fn all_instances_prefix() -> Vec<u8> {
    format!("{ROOT}svc/").into_bytes()
}

/// `<ROOT>svc/<ns>/<service>/`.
pub(crate) fn service_prefix(namespace: &str, service: &str) -> Vec<u8> {
    format!("{ROOT}svc/{namespace}/{service}/").into_bytes()
}

/// `<ROOT>svc/<ns>/<service>/<id>`.
pub(crate) fn instance_key(namespace: &str, service: &str, id: &str) -> Vec<u8> {
    format!("{ROOT}svc/{namespace}/{service}/{id}").into_bytes()
}

/// `<ROOT>hb/<ns>/<service>/<id>`.
pub(crate) fn heartbeat_key(namespace: &str, service: &str, id: &str) -> Vec<u8> {
    format!("{ROOT}hb/{namespace}/{service}/{id}").into_bytes()
}

/// `<ROOT>checkers/`.
pub(crate) fn checkers_prefix() -> Vec<u8> {
    format!("{ROOT}checkers/").into_bytes()
}

/// (namespace, service, id) of an instance key.
fn parse_instance_key(key: &[u8]) -> Option<(String, String, String)> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(ROOT)?.strip_prefix("svc/")?;
    let mut parts = rest.split('/');
    let (ns, service, id) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || ns.is_empty() || service.is_empty() || id.is_empty() {
        return None;
    }
    Some((ns.to_owned(), service.to_owned(), id.to_owned()))
}

/// The instance id in a key under `prefix` (for deletes, which carry only
/// the key).
pub(crate) fn id_in(prefix: &[u8], key: &[u8]) -> Option<String> {
    let id = key.strip_prefix(prefix)?;
    let id = std::str::from_utf8(id).ok()?;
    (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_keeps_its_read_time_fields_out_of_the_bytes() {
        let i = ServiceInstance::new("orders", "o-1", "10.0.0.1", 8080)
            .weight(3)
            .tag("v2")
            .meta("build", "42")
            .zone("eu-1")
            .check(HealthCheck::http("/health", 200).interval(Duration::from_millis(200)));
        let bytes = i.encode();
        let text = String::from_utf8(bytes.clone()).expect("json is utf-8");
        assert!(text.contains("\"v\":1"), "{text}");
        assert!(!text.contains("mod_revision"), "{text}");
        let kv = KeyValue {
            key: instance_key("prod", "orders", "o-1"),
            value: bytes,
            create_revision: 5,
            mod_revision: 7,
            version: 2,
            lease: LeaseId(9),
        };
        let back = ServiceInstance::from_kv(&kv).expect("decodes");
        assert_eq!(back.namespace, "prod");
        assert!(back.ephemeral);
        assert_eq!((back.create_revision, back.mod_revision), (5, 7));
        let mut expected = i.clone();
        expected.namespace = "prod".into();
        expected.ephemeral = true;
        expected.create_revision = 5;
        expected.mod_revision = 7;
        assert_eq!(back, expected);
    }

    #[test]
    fn garbage_and_unknown_versions_are_typed_errors() {
        for bytes in [&b"garbage"[..], b"{}", b"{\"v\":1}", b"\xff\xfe", b""] {
            match ServiceInstance::decode(b"k", bytes) {
                Err(DiscoveryError::Decode {
                    reason: DecodeReason::Json(_),
                    ..
                }) => {}
                other => panic!("{bytes:?} decoded as {other:?}"),
            }
        }
        let mut v2 = String::from_utf8(ServiceInstance::new("s", "i", "a", 1).encode())
            .expect("json is utf-8");
        v2 = v2.replace("\"v\":1", "\"v\":2");
        assert!(matches!(
            ServiceInstance::decode(b"k", v2.as_bytes()),
            Err(DiscoveryError::Decode {
                reason: DecodeReason::Version(2),
                ..
            })
        ));
        let kv = KeyValue {
            key: b"_ha/sd/svc/onlyns".to_vec(),
            value: ServiceInstance::new("s", "i", "a", 1).encode(),
            ..KeyValue::default()
        };
        assert!(matches!(
            ServiceInstance::from_kv(&kv),
            Err(DiscoveryError::Decode {
                reason: DecodeReason::BadKey,
                ..
            })
        ));
    }

    #[test]
    fn a_record_from_an_older_writer_gets_the_defaults() {
        let old = br#"{"v":1,"service":"s","id":"i","address":"a","port":1}"#;
        let i = ServiceInstance::decode(b"k", old).expect("decodes");
        assert_eq!(i.weight, 1);
        assert!(i.enabled);
        assert_eq!(i.health, HealthStatus::Healthy);
    }
}
