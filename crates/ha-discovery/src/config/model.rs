//! What a config is: its address, format, metadata, and how a version is
//! stored in one KV value.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::error::{ConfigCenterError, ConfigResult};
use crate::config::grey::GreyRule;

/// Longest namespace, group or data id, in bytes.
pub const MAX_ID_PART: usize = 256;

/// A config's address: namespace / group / data id (Nacos's triple).
///
/// Each part is 1 to [`MAX_ID_PART`] bytes without `/` or control
/// characters (they are path segments of the KV keys).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigId {
    namespace: String,
    group: String,
    data_id: String,
}

impl ConfigId {
    /// The config `data_id` in `group` of `namespace`.
    ///
    /// # Errors
    /// [`ConfigCenterError::InvalidArgument`] for an empty or too long part,
    /// or one with `/` or a control character.
    pub fn new(
        namespace: impl Into<String>,
        group: impl Into<String>,
        data_id: impl Into<String>,
    ) -> ConfigResult<ConfigId> {
        let id = ConfigId {
            namespace: namespace.into(),
            group: group.into(),
            data_id: data_id.into(),
        };
        check_part("namespace", &id.namespace)?;
        check_part("group", &id.group)?;
        check_part("data id", &id.data_id)?;
        Ok(id)
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The data id.
    pub fn data_id(&self) -> &str {
        &self.data_id
    }

    /// `namespace/group/data_id`: the id's path under the center's roots.
    pub(crate) fn path(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.group, self.data_id)
    }
}

impl fmt::Display for ConfigId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.group, self.data_id)
    }
}

pub(crate) fn check_part(what: &str, part: &str) -> ConfigResult<()> {
    if part.is_empty() || part.len() > MAX_ID_PART {
        return Err(ConfigCenterError::InvalidArgument {
            reason: format!(
                "{what} must be 1 to {MAX_ID_PART} bytes, got {}",
                part.len()
            ),
        });
    }
    if part.chars().any(|c| c == '/' || c.is_control()) {
        return Err(ConfigCenterError::InvalidArgument {
            reason: format!("{what} {part:?} contains '/' or a control character"),
        });
    }
    Ok(())
}

/// The declared format of a config's content, checked on publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigFormat {
    /// JSON (`serde_json`).
    Json,
    /// YAML (`serde_yaml_ng`).
    Yaml,
    /// TOML (`toml`).
    Toml,
    /// Java `.properties` (`java-properties`).
    Properties,
    /// Any UTF-8 text.
    Text,
}

impl fmt::Display for ConfigFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigFormat::Json => "json",
            ConfigFormat::Yaml => "yaml",
            ConfigFormat::Toml => "toml",
            ConfigFormat::Properties => "properties",
            ConfigFormat::Text => "text",
        })
    }
}

/// One version's metadata (everything but the content).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigMeta {
    /// The config.
    pub id: ConfigId,
    /// The version: 1 for the first publish, one more for each after it
    /// (a rollback is a new version too). A grey candidate carries the
    /// version it will have if promoted without another publish between.
    pub version: u64,
    /// The content's format.
    pub format: ConfigFormat,
    /// SHA-256 of the content as stored, lowercase hex (for a secret, of
    /// its ciphertext, so the hash cannot confirm a guessed plaintext).
    pub content_hash: String,
    /// Who published it (the publishing center's author).
    pub author: String,
    /// When it was published, by the publisher's clock.
    pub timestamp: SystemTime,
    /// The change message.
    pub message: String,
    /// Encrypted with the application's key.
    pub secret: bool,
    /// The KV revision of the write that stored this version.
    pub revision: i64,
}

/// One version: metadata and the content (decrypted, for a secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    /// The metadata.
    pub meta: ConfigMeta,
    /// The content.
    pub content: Vec<u8>,
}

impl ConfigEntry {
    /// The content as text (lossy for non-UTF-8 bytes).
    pub fn content_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.content)
    }
}

/// The metadata as stored, before the content: `json \0 content`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RecordMeta {
    pub(crate) version: u64,
    pub(crate) format: ConfigFormat,
    pub(crate) hash: String,
    pub(crate) author: String,
    /// Milliseconds since the Unix epoch, by the publisher's clock.
    pub(crate) timestamp_ms: u64,
    pub(crate) message: String,
    /// The AES-GCM nonce (hex) of a secret's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) nonce: Option<String>,
    /// Set on a grey candidate: who gets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) grey: Option<GreyRule>,
}

/// One stored version: metadata and the content as stored (ciphertext
/// for a secret).
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub(crate) meta: RecordMeta,
    pub(crate) body: Vec<u8>,
    /// The KV revision that wrote it (0 when read from the cache).
    pub(crate) revision: i64,
}

impl Record {
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Serializing a struct of strings and numbers cannot fail.
        let mut out = serde_json::to_vec(&self.meta).unwrap_or_default();
        out.push(0);
        out.extend_from_slice(&self.body);
        out
    }

    pub(crate) fn decode(key: &[u8], value: &[u8], revision: i64) -> ConfigResult<Record> {
        let corrupt = |reason: String| ConfigCenterError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
        };
        let split = value
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| corrupt("no metadata separator".into()))?;
        let meta: RecordMeta = serde_json::from_slice(&value[..split])
            .map_err(|e| corrupt(format!("metadata: {e}")))?;
        Ok(Record {
            meta,
            body: value[split + 1..].to_vec(),
            revision,
        })
    }

    pub(crate) fn to_meta(&self, id: &ConfigId) -> ConfigMeta {
        ConfigMeta {
            id: id.clone(),
            version: self.meta.version,
            format: self.meta.format,
            content_hash: self.meta.hash.clone(),
            author: self.meta.author.clone(),
            timestamp: UNIX_EPOCH + Duration::from_millis(self.meta.timestamp_ms),
            message: self.meta.message.clone(),
            secret: self.meta.nonce.is_some(),
            revision: self.revision,
        }
    }
}

/// SHA-256, lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub(crate) fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Where the center keeps a config, under its root:
/// - `<root>/cfg/<ns>/<group>/<id>/cur`: the current (stable) version;
/// - `<root>/cfg/<ns>/<group>/<id>/grey`: a grey candidate and its rule;
/// - `<root>/hist/<ns>/<group>/<id>/<version, 20 digits>`: every kept version;
/// - `<root>/report/<ns>/<group>/<id>/<instance>`: what each instance runs
///   (bound to the instance's session).
///
/// `cur` and `grey` share a prefix so one watch sees both, atomically per
/// revision (a promote changes both in one).
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    pub(crate) root: String,
}

impl Keys {
    pub(crate) fn dir(&self, id: &ConfigId) -> String {
        format!("{}/cfg/{}/", self.root, id.path())
    }
    pub(crate) fn current(&self, id: &ConfigId) -> String {
        format!("{}cur", self.dir(id))
    }
    pub(crate) fn grey(&self, id: &ConfigId) -> String {
        format!("{}grey", self.dir(id))
    }
    pub(crate) fn history_dir(&self, id: &ConfigId) -> String {
        format!("{}/hist/{}/", self.root, id.path())
    }
    pub(crate) fn history(&self, id: &ConfigId, version: u64) -> String {
        format!("{}{version:020}", self.history_dir(id))
    }
    pub(crate) fn report_dir(&self, id: &ConfigId) -> String {
        format!("{}/report/{}/", self.root, id.path())
    }
    pub(crate) fn report(&self, id: &ConfigId, instance: &str) -> String {
        format!("{}{instance}", self.report_dir(id))
    }
    /// Every config of a namespace, or of one group in it.
    pub(crate) fn list_dir(&self, namespace: &str, group: Option<&str>) -> String {
        match group {
            Some(g) => format!("{}/cfg/{namespace}/{g}/", self.root),
            None => format!("{}/cfg/{namespace}/", self.root),
        }
    }
    /// The id a `cur` key belongs to, or `None` for any other key.
    pub(crate) fn id_of_current(&self, key: &[u8]) -> Option<ConfigId> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&format!("{}/cfg/", self.root))?;
        let rest = rest.strip_suffix("/cur")?;
        let mut parts = rest.split('/');
        let (ns, group, data_id) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        ConfigId::new(ns, group, data_id).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_slashes_and_empty_parts() {
        assert!(ConfigId::new("ns", "g", "app.yaml").is_ok());
        assert!(ConfigId::new("ns", "g/x", "a").is_err());
        assert!(ConfigId::new("", "g", "a").is_err());
        assert!(ConfigId::new("ns", "g", "a\n").is_err());
        assert!(ConfigId::new("ns", "g", "x".repeat(MAX_ID_PART + 1)).is_err());
    }

    #[test]
    fn records_round_trip_and_garbage_is_corrupt() {
        let r = Record {
            meta: RecordMeta {
                version: 7,
                format: ConfigFormat::Json,
                hash: sha256_hex(b"{}"),
                author: "a".into(),
                timestamp_ms: 42,
                message: "m".into(),
                nonce: None,
                grey: None,
            },
            body: b"{\"a\":\0}".to_vec(),
            revision: 0,
        };
        let back = Record::decode(b"k", &r.encode(), 9).expect("decodes");
        assert_eq!(
            (back.meta.version, back.body, back.revision),
            (7, r.body.clone(), 9)
        );
        assert!(matches!(
            Record::decode(b"k", b"no separator", 1),
            Err(ConfigCenterError::Corrupt { .. })
        ));
        assert!(matches!(
            Record::decode(b"k", b"{bad\0x", 1),
            Err(ConfigCenterError::Corrupt { .. })
        ));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            from_hex(&to_hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }

    #[test]
    fn current_keys_map_back_to_ids() {
        let keys = Keys {
            root: "_config".into(),
        };
        let id = ConfigId::new("prod", "web", "app.json").expect("id");
        assert_eq!(
            keys.id_of_current(keys.current(&id).as_bytes()),
            Some(id.clone())
        );
        assert_eq!(keys.id_of_current(keys.grey(&id).as_bytes()), None);
    }
}
