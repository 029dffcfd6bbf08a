//! ha-node's settings: command-line flags, an optional TOML file
//! (`--config`, kebab-case keys), flags overriding the file, one place for
//! defaults, and a `validate` that says what is wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use ha_core::NodeId;
use serde::Deserialize;

/// Default deadline of a request that names none.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default largest request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
/// Default largest `commit - applied` at which `/health` still answers 200.
pub const DEFAULT_HEALTH_MAX_APPLY_LAG: u64 = 1_000;

/// The command line (every setting may also come from `--config`).
#[derive(Debug, Default, Parser)]
#[command(
    name = "ha-node",
    about = "One member of an ha group as a process, with an HTTP/JSON client API."
)]
pub struct Flags {
    /// A TOML file with the same settings, kebab-case (`data-dir = "..."`);
    /// flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This member's id (not 0).
    #[arg(long)]
    pub id: Option<u64>,
    /// Where this member listens for its peers (`IP:port`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The member's data directory (two RocksDB instances and snapshots).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Bootstrap a new group: its initial members with their peer
    /// addresses, `1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001`. Their
    /// ids (with the cluster token) make the cluster id. Not needed to
    /// restart a member (its data directory says who it is).
    #[arg(long)]
    pub members: Option<String>,
    /// Where the HTTP/JSON client API listens (`IP:port`).
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Join a running group: the client API address (`IP:port`, or an
    /// `http(s)://` URL) of any member, which has the leader add this one
    /// as a learner. Only with an empty data directory; `--id` is optional
    /// (the leader picks a fresh one) except under TLS, where the
    /// certificate names it.
    #[arg(long, value_name = "ADDRESS")]
    pub join: Option<String>,
    /// With --join: stay a learner (promote later with
    /// `POST /v1/members/promote`) instead of becoming a voter once caught
    /// up.
    #[arg(long)]
    pub no_promote: bool,
    /// With --join: how long to keep asking (a group without a leader yet,
    /// a membership change in progress), milliseconds (default 30000).
    #[arg(long)]
    pub join_timeout_ms: Option<u64>,
    /// The peer address other members dial (default: --listen, unless it
    /// is an unspecified IP such as 0.0.0.0). A restarted member whose
    /// address changed announces it to the group.
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// A token mixed into the cluster id, so two groups with the same ids
    /// never talk to each other.
    #[arg(long)]
    pub cluster_token: Option<String>,
    /// Raft timing: `lan` (default: 10 ms ticks, elections in 250-300 ms)
    /// or `conservative` (etcd-like, about 1 s).
    #[arg(long)]
    pub preset: Option<Preset>,
    /// Deadline of a request that names none (`timeout_ms`), milliseconds.
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// Largest request body, bytes.
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// `/health` answers 503 when more committed entries than this wait to
    /// be applied.
    #[arg(long)]
    pub health_max_apply_lag: Option<u64>,
    /// Stop (cleanly, as on SIGTERM) when standard input closes: a
    /// supervisor or test that dies takes its members with it.
    #[arg(long)]
    pub exit_on_stdin_close: bool,
    /// The group's CA certificate (PEM): peers, and client certificates on
    /// the client API, are verified against it. With --tls-cert and
    /// --tls-key, turns on mutual TLS between members and TLS on the client
    /// API.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// This member's certificate chain (PEM); it must name `member-<id>`
    /// (a DNS subject alternative name) and allow server and client use.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// This member's private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Clients of the HTTP API must present a certificate signed by the CA
    /// (otherwise one is optional, and checked when presented).
    #[arg(long)]
    pub http_require_client_cert: bool,
    /// Run WITHOUT TLS, peers and clients alike: anyone who reaches the
    /// ports can act as a member. For tests, demos and fully trusted
    /// networks only; a warning is logged at start.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Client API connections open at once (default 1024).
    #[arg(long)]
    pub http_max_connections: Option<usize>,
    /// Peer connections accepted at once (default 256).
    #[arg(long)]
    pub peer_max_connections: Option<usize>,
    /// Where the etcd v3-compatible gRPC gateway listens (`IP:port`); off
    /// when absent. It uses the client API's TLS settings and connection
    /// limits.
    #[arg(long)]
    pub etcd_listen: Option<SocketAddr>,
    /// The members' etcd client URLs, for `etcdctl member list`:
    /// `1=http://10.0.0.1:2379,2=http://10.0.0.2:2379`. This member's own
    /// defaults to its --etcd-listen address.
    #[arg(long)]
    pub etcd_client_urls: Option<String>,
    /// Requests in flight on one etcd gateway connection (HTTP/2 streams;
    /// default 1024). etcd clients multiplex every call of a process over
    /// one connection per endpoint, so this bounds a client's concurrency.
    #[arg(long)]
    pub etcd_max_streams: Option<u32>,
    /// Dial these members at these addresses instead of the ones the
    /// membership records for them, `4=10.0.0.9:7001,5=...`: a local route
    /// (NAT, a proxy, a tunnel) that the rest of the group does not use.
    /// Ids not in the group yet are kept for when they join.
    #[arg(long)]
    pub peer_routes: Option<String>,
    /// Fault injection for tests (as etcd's failpoints): serves
    /// `POST /v1/debug/disk-delay {"ms":N}`, which makes every durable
    /// write of this member's raft log wait N ms first (a slow disk).
    /// Never in production; a warning is logged at start.
    #[arg(long)]
    pub enable_failpoints: bool,
}

/// Raft timing presets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// `ha_core::Config::new`: tuned for a LAN.
    #[default]
    Lan,
    /// `ha_core::Config::conservative`: for hosts whose threads can stall.
    Conservative,
}

/// The TOML file: the flags' names, kebab-case.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    /// `--id`.
    pub id: Option<u64>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--members`.
    pub members: Option<String>,
    /// `--http`.
    pub http: Option<SocketAddr>,
    /// `--join`.
    pub join: Option<String>,
    /// `--no-promote`.
    pub no_promote: Option<bool>,
    /// `--join-timeout-ms`.
    pub join_timeout_ms: Option<u64>,
    /// `--advertise`.
    pub advertise: Option<SocketAddr>,
    /// `--cluster-token`.
    pub cluster_token: Option<String>,
    /// `--preset`.
    pub preset: Option<Preset>,
    /// `--request-timeout-ms`.
    pub request_timeout_ms: Option<u64>,
    /// `--max-body-bytes`.
    pub max_body_bytes: Option<usize>,
    /// `--health-max-apply-lag`.
    pub health_max_apply_lag: Option<u64>,
    /// `--tls-ca`.
    pub tls_ca: Option<PathBuf>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--http-require-client-cert`.
    pub http_require_client_cert: Option<bool>,
    /// `--insecure-plaintext`.
    pub insecure_plaintext: Option<bool>,
    /// `--http-max-connections`.
    pub http_max_connections: Option<usize>,
    /// `--peer-max-connections`.
    pub peer_max_connections: Option<usize>,
    /// `--etcd-listen`.
    pub etcd_listen: Option<SocketAddr>,
    /// `--etcd-client-urls`.
    pub etcd_client_urls: Option<String>,
    /// `--etcd-max-streams`.
    pub etcd_max_streams: Option<u32>,
    /// `--peer-routes`.
    pub peer_routes: Option<String>,
    /// `--enable-failpoints`.
    pub enable_failpoints: Option<bool>,
}

/// Everything ha-node needs, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This member (optional on restart and join).
    pub id: Option<NodeId>,
    /// Peer listener (default: this member's `--members` address, or the
    /// one its data directory recorded).
    pub listen: Option<SocketAddr>,
    /// The peer address others dial (default: `listen`).
    pub advertise: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Bootstrap: initial members and their peer addresses.
    pub members: Option<BTreeMap<NodeId, SocketAddr>>,
    /// HTTP listener.
    pub http: SocketAddr,
    /// Join: the client API address of a member to ask.
    pub join: Option<String>,
    /// Join: become a voter once caught up.
    pub promote: bool,
    /// Join: how long to keep asking.
    pub join_timeout: Duration,
    /// Mixed into the cluster id (`None`: not given; bootstrap uses "",
    /// a joining member takes the group's).
    pub cluster_token: Option<String>,
    /// Raft timing.
    pub preset: Preset,
    /// Default request deadline.
    pub request_timeout: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// `/health`'s apply-lag bound.
    pub health_max_apply_lag: u64,
    /// TLS material, or `None` when `insecure-plaintext` is set.
    pub tls: Option<ha_raft::tls::TlsFiles>,
    /// The client API requires client certificates.
    pub http_require_client_cert: bool,
    /// Client API connections open at once.
    pub http_max_connections: usize,
    /// Peer connections accepted at once.
    pub peer_max_connections: usize,
    /// The etcd gateway's listener, if on.
    pub etcd_listen: Option<SocketAddr>,
    /// Members' etcd client URLs (for `MemberList`).
    pub etcd_client_urls: BTreeMap<NodeId, Vec<String>>,
    /// Requests in flight on one etcd gateway connection.
    pub etcd_max_streams: u32,
    /// Local routes: members dialled at these addresses whatever the
    /// membership records.
    pub peer_routes: BTreeMap<NodeId, SocketAddr>,
    /// Fault injection (`/v1/debug/...`) is served.
    pub enable_failpoints: bool,
}

/// Default `join-timeout-ms`.
pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Default `http-max-connections`.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 1024;

/// Default for `--etcd-max-streams`. etcd itself sets no bound; 16 (the
/// client API's bound, where HTTP/1.1 carries one request per connection)
/// held back a single etcd client's 64 concurrent calls.
pub const DEFAULT_ETCD_MAX_STREAMS: u32 = 1024;

/// TLS files from flags and file, or plaintext when explicitly asked for;
/// anything else (neither, both, a partial set) is an error.
fn resolve_tls(
    flags: &Flags,
    file: &FileConfig,
) -> Result<Option<ha_raft::tls::TlsFiles>, SettingsError> {
    let ca = flags.tls_ca.clone().or(file.tls_ca.clone());
    let cert = flags.tls_cert.clone().or(file.tls_cert.clone());
    let key = flags.tls_key.clone().or(file.tls_key.clone());
    let plaintext = flags.insecure_plaintext || file.insecure_plaintext.unwrap_or(false);
    let any = ca.is_some() || cert.is_some() || key.is_some();
    match (plaintext, ca, cert, key) {
        (true, ..) if any => Err(SettingsError::Invalid {
            setting: "insecure-plaintext",
            reason: "given together with TLS files; choose one".into(),
        }),
        (true, ..) => Ok(None),
        (false, Some(ca), Some(cert), Some(key)) => {
            Ok(Some(ha_raft::tls::TlsFiles { ca, cert, key }))
        }
        (false, ..) if any => Err(SettingsError::Invalid {
            setting: "tls",
            reason: "--tls-ca, --tls-cert and --tls-key go together".into(),
        }),
        (false, ..) => Err(SettingsError::Invalid {
            setting: "tls",
            reason: "no TLS configured: give --tls-ca, --tls-cert and --tls-key (see scripts/gen-certs), or run without protection with --insecure-plaintext".into(),
        }),
    }
}

/// A setting that is missing or wrong.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys.
    #[error("config file {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message.
        reason: String,
    },
    /// A required setting is absent.
    #[error("missing setting `{0}` (flag --{0} or key `{0}` in the config file)")]
    Missing(&'static str),
    /// A setting has a bad value.
    #[error("bad value for `{setting}`: {reason}")]
    Invalid {
        /// Which setting.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl FileConfig {
    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// When it cannot be read or parsed.
    pub fn load(path: &Path) -> Result<FileConfig, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        FileConfig::parse(&text).map_err(|reason| SettingsError::Parse {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses TOML text.
    ///
    /// # Errors
    /// The parser's message.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// Parses `1=127.0.0.1:7001,2=127.0.0.1:7002`.
///
/// # Errors
/// When an item is not `id=IP:port`, an id is 0 or repeated.
pub fn parse_members(text: &str) -> Result<BTreeMap<NodeId, SocketAddr>, SettingsError> {
    parse_addresses("members", text)
}

/// Parses `id=IP:port` items for `setting`; at least one.
fn parse_addresses(
    setting: &'static str,
    text: &str,
) -> Result<BTreeMap<NodeId, SocketAddr>, SettingsError> {
    let bad = |reason: String| SettingsError::Invalid { setting, reason };
    let mut members = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| bad(format!("`{item}` is not id=IP:port")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|e| bad(format!("`{id}` is not a member id: {e}")))?;
        if id == 0 {
            return Err(bad("member id 0 is reserved".into()));
        }
        let addr: SocketAddr = addr
            .trim()
            .parse()
            .map_err(|e| bad(format!("`{addr}` is not IP:port: {e}")))?;
        if members.insert(NodeId(id), addr).is_some() {
            return Err(bad(format!("member {id} is listed twice")));
        }
    }
    if members.is_empty() {
        return Err(bad("no members".into()));
    }
    Ok(members)
}

/// Parses `1=http://127.0.0.1:2379,2=http://127.0.0.1:2479` (a member may
/// be named more than once for several URLs).
///
/// # Errors
/// When an item is not `id=URL` or an id is not a member id.
pub fn parse_client_urls(text: &str) -> Result<BTreeMap<NodeId, Vec<String>>, SettingsError> {
    let bad = |reason: String| SettingsError::Invalid {
        setting: "etcd-client-urls",
        reason,
    };
    let mut urls: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, url) = item
            .split_once('=')
            .ok_or_else(|| bad(format!("`{item}` is not id=URL")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|e| bad(format!("`{id}` is not a member id: {e}")))?;
        let url = url.trim();
        if id == 0 || !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad(format!(
                "`{item}`: the id must not be 0 and the URL must start with http:// or https://"
            )));
        }
        urls.entry(NodeId(id)).or_default().push(url.to_owned());
    }
    Ok(urls)
}

impl Settings {
    /// Flags over the file over defaults, validated.
    ///
    /// # Errors
    /// A missing or bad setting.
    pub fn resolve(flags: Flags, file: FileConfig) -> Result<Settings, SettingsError> {
        // Which of bootstrap, join and restart applies depends on the data
        // directory too: `identity::decide` checks the combination.
        let id = flags.id.or(file.id);
        if id == Some(0) {
            return Err(SettingsError::Invalid {
                setting: "id",
                reason: "0 is reserved".into(),
            });
        }
        let id = id.map(NodeId);
        let tls_files = resolve_tls(&flags, &file);
        let members = match flags.members.or(file.members) {
            Some(text) => Some(parse_members(&text)?),
            None => None,
        };
        let join = flags.join.or(file.join);
        if join.as_deref().is_some_and(|j| j.trim().is_empty()) {
            return Err(SettingsError::Invalid {
                setting: "join",
                reason: "empty; give the client API address of a member".into(),
            });
        }
        let listen = flags.listen.or(file.listen).or_else(|| {
            let (members, id) = (members.as_ref()?, id?);
            members.get(&id).copied()
        });
        let join_timeout_ms = flags
            .join_timeout_ms
            .or(file.join_timeout_ms)
            .unwrap_or(DEFAULT_JOIN_TIMEOUT.as_millis() as u64);
        if join_timeout_ms == 0 {
            return Err(SettingsError::Invalid {
                setting: "join-timeout-ms",
                reason: "must be greater than 0".into(),
            });
        }
        let request_timeout_ms = flags
            .request_timeout_ms
            .or(file.request_timeout_ms)
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT.as_millis() as u64);
        if request_timeout_ms == 0 {
            return Err(SettingsError::Invalid {
                setting: "request-timeout-ms",
                reason: "must be greater than 0".into(),
            });
        }
        let tls = tls_files?;
        let http_require_client_cert =
            flags.http_require_client_cert || file.http_require_client_cert.unwrap_or(false);
        if http_require_client_cert && tls.is_none() {
            return Err(SettingsError::Invalid {
                setting: "http-require-client-cert",
                reason: "needs TLS".into(),
            });
        }
        let http_max_connections = flags
            .http_max_connections
            .or(file.http_max_connections)
            .unwrap_or(DEFAULT_HTTP_MAX_CONNECTIONS);
        let peer_max_connections = flags
            .peer_max_connections
            .or(file.peer_max_connections)
            .unwrap_or(ha_raft::TcpConfig::default().max_inbound_connections);
        let etcd_max_streams = flags
            .etcd_max_streams
            .or(file.etcd_max_streams)
            .unwrap_or(DEFAULT_ETCD_MAX_STREAMS);
        for (setting, n) in [
            ("http-max-connections", http_max_connections),
            ("peer-max-connections", peer_max_connections),
            ("etcd-max-streams", etcd_max_streams as usize),
        ] {
            if n == 0 {
                return Err(SettingsError::Invalid {
                    setting,
                    reason: "must be greater than 0".into(),
                });
            }
        }
        let max_body_bytes = flags
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes < 1024 {
            return Err(SettingsError::Invalid {
                setting: "max-body-bytes",
                reason: "must be at least 1024".into(),
            });
        }
        Ok(Settings {
            id,
            listen,
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .ok_or(SettingsError::Missing("data-dir"))?,
            members,
            advertise: flags.advertise.or(file.advertise),
            http: flags
                .http
                .or(file.http)
                .ok_or(SettingsError::Missing("http"))?,
            join,
            promote: !(flags.no_promote || file.no_promote.unwrap_or(false)),
            join_timeout: Duration::from_millis(join_timeout_ms),
            cluster_token: flags.cluster_token.or(file.cluster_token),
            preset: flags.preset.or(file.preset).unwrap_or_default(),
            request_timeout: Duration::from_millis(request_timeout_ms),
            max_body_bytes,
            health_max_apply_lag: flags
                .health_max_apply_lag
                .or(file.health_max_apply_lag)
                .unwrap_or(DEFAULT_HEALTH_MAX_APPLY_LAG),
            tls,
            http_require_client_cert,
            http_max_connections,
            peer_max_connections,
            etcd_listen: flags.etcd_listen.or(file.etcd_listen),
            etcd_max_streams,
            etcd_client_urls: match flags.etcd_client_urls.or(file.etcd_client_urls) {
                Some(text) => parse_client_urls(&text)?,
                None => BTreeMap::new(),
            },
            peer_routes: match flags.peer_routes.or(file.peer_routes) {
                Some(text) => parse_addresses("peer-routes", &text)?,
                None => BTreeMap::new(),
            },
            enable_failpoints: flags.enable_failpoints || file.enable_failpoints.unwrap_or(false),
        })
    }

    /// Parses the command line and the file it names.
    ///
    /// # Errors
    /// A missing or bad setting, or an unreadable file.
    pub fn from_flags(flags: Flags) -> Result<Settings, SettingsError> {
        let file = match &flags.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Settings::resolve(flags, file)
    }

    /// What decides the start mode ([`identity::decide`](super::identity::decide)).
    pub fn mode_flags(&self) -> super::identity::ModeFlags {
        super::identity::ModeFlags {
            id: self.id,
            members: self.members.clone(),
            join: self.join.clone(),
            cluster_token: self.cluster_token.clone().unwrap_or_default(),
        }
    }

    /// The engine's configuration for member `id` of the group bootstrapped
    /// from `initial` with `cluster_token`: bootstrap mode if `id` is one of
    /// `initial`, join mode otherwise (on a data directory that holds data,
    /// both simply restart).
    pub fn raft_config(
        &self,
        id: NodeId,
        initial: Vec<NodeId>,
        cluster_token: String,
    ) -> ha_core::Config {
        let joined = !initial.contains(&id);
        let mut config = match self.preset {
            Preset::Lan => ha_core::Config::new(id, initial),
            Preset::Conservative => ha_core::Config::conservative(id, initial),
        };
        config.cluster_token = cluster_token;
        config.request_timeout = self.request_timeout;
        config.snapshot_dir = Some(self.data_dir.join("snapshots"));
        if joined {
            config.start_mode = ha_core::StartMode::Join;
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file = FileConfig::parse(
            r#"
            id = 2
            members = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
            data-dir = "/tmp/ha/2"
            http = "127.0.0.1:8002"
            request-timeout-ms = 3000
            insecure-plaintext = true
            "#,
        )
        .expect("valid toml");
        let flags = Flags {
            http: Some("127.0.0.1:9002".parse().expect("addr")),
            ..Flags::default()
        };
        let s = Settings::resolve(flags, file).expect("valid settings");
        assert_eq!(s.id, Some(NodeId(2)));
        assert_eq!(
            s.listen,
            Some("127.0.0.1:7002".parse().expect("addr")),
            "listen defaults to the member's own address"
        );
        assert_eq!(
            s.http,
            "127.0.0.1:9002".parse().expect("addr"),
            "the flag wins over the file"
        );
        assert_eq!(s.request_timeout, Duration::from_secs(3));
        assert_eq!(s.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(s.members.map(|m| m.len()), Some(3));
        assert!(s.promote, "a joining member is promoted by default");
    }

    #[test]
    fn etcd_client_urls_parse_and_bad_ones_are_named() {
        let urls = parse_client_urls("1=http://127.0.0.1:2379, 2=https://h:2379,1=http://b:1")
            .expect("valid");
        assert_eq!(
            urls[&NodeId(1)],
            [
                "http://127.0.0.1:2379".to_string(),
                "http://b:1".to_string()
            ]
        );
        assert_eq!(urls[&NodeId(2)], ["https://h:2379".to_string()]);
        for bad in [
            "1=127.0.0.1:2379",
            "0=http://a:1",
            "x=http://a:1",
            "http://a:1",
        ] {
            assert!(
                matches!(
                    parse_client_urls(bad),
                    Err(SettingsError::Invalid {
                        setting: "etcd-client-urls",
                        ..
                    })
                ),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn bad_settings_are_named() {
        assert!(
            FileConfig::parse("nope = 1").is_err(),
            "unknown keys are refused"
        );
        assert!(matches!(
            parse_members("1=x"),
            Err(SettingsError::Invalid {
                setting: "members",
                ..
            })
        ));
        assert!(parse_members("0=127.0.0.1:1").is_err());
        assert!(parse_members("1=127.0.0.1:1,1=127.0.0.1:2").is_err());
        let routed = |text: &str| {
            Settings::resolve(
                Flags {
                    join: Some("127.0.0.1:9".into()),
                    data_dir: Some("/tmp/x".into()),
                    http: Some("127.0.0.1:1".parse().expect("addr")),
                    peer_routes: Some(text.into()),
                    insecure_plaintext: true,
                    ..Flags::default()
                },
                FileConfig::default(),
            )
        };
        assert_eq!(
            routed("4=127.0.0.1:7004, 5=127.0.0.1:7005")
                .expect("routes")
                .peer_routes
                .get(&NodeId(5)),
            Some(&"127.0.0.1:7005".parse().expect("addr"))
        );
        assert!(matches!(
            routed("4=nowhere"),
            Err(SettingsError::Invalid {
                setting: "peer-routes",
                ..
            })
        ));
        let flags = Flags {
            id: Some(0),
            members: Some("1=127.0.0.1:7001".into()),
            data_dir: Some("/tmp/x".into()),
            http: Some("127.0.0.1:1".parse().expect("addr")),
            ..Flags::default()
        };
        assert!(matches!(
            Settings::resolve(flags, FileConfig::default()),
            Err(SettingsError::Invalid { setting: "id", .. })
        ));
        assert!(matches!(
            Settings::resolve(
                Flags {
                    join: Some(" ".into()),
                    ..Flags::default()
                },
                FileConfig::default()
            ),
            Err(SettingsError::Invalid {
                setting: "join",
                ..
            })
        ));
        assert!(matches!(
            Settings::resolve(
                Flags {
                    insecure_plaintext: true,
                    ..Flags::default()
                },
                FileConfig::default()
            ),
            Err(SettingsError::Missing("data-dir"))
        ));
    }

    #[test]
    fn etcd_max_streams_defaults_reads_the_file_and_refuses_zero() {
        let flags = |n: Option<u32>| Flags {
            id: Some(1),
            members: Some("1=127.0.0.1:7001".into()),
            data_dir: Some("/tmp/x".into()),
            http: Some("127.0.0.1:1".parse().expect("addr")),
            insecure_plaintext: true,
            etcd_max_streams: n,
            ..Flags::default()
        };
        let resolved = |f: Flags, file: FileConfig| Settings::resolve(f, file);
        assert_eq!(
            resolved(flags(None), FileConfig::default())
                .expect("defaults")
                .etcd_max_streams,
            DEFAULT_ETCD_MAX_STREAMS
        );
        let file = || FileConfig::parse("etcd-max-streams = 64").expect("file");
        assert_eq!(
            resolved(flags(None), file())
                .expect("file")
                .etcd_max_streams,
            64
        );
        assert_eq!(
            resolved(flags(Some(8)), file())
                .expect("flag wins")
                .etcd_max_streams,
            8
        );
        assert!(matches!(
            resolved(flags(Some(0)), FileConfig::default()),
            Err(SettingsError::Invalid {
                setting: "etcd-max-streams",
                ..
            })
        ));
    }

    #[test]
    fn tls_or_explicit_plaintext_is_required() {
        let base = || Flags {
            id: Some(1),
            members: Some("1=127.0.0.1:7001".into()),
            data_dir: Some("/tmp/x".into()),
            http: Some("127.0.0.1:1".parse().expect("addr")),
            ..Flags::default()
        };
        let invalid = |flags: Flags| match Settings::resolve(flags, FileConfig::default()) {
            Err(SettingsError::Invalid { setting, .. }) => setting,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(invalid(base()), "tls", "neither TLS nor plaintext");
        assert_eq!(
            invalid(Flags {
                tls_ca: Some("ca.pem".into()),
                ..base()
            }),
            "tls",
            "a partial TLS set"
        );
        assert_eq!(
            invalid(Flags {
                insecure_plaintext: true,
                tls_ca: Some("ca.pem".into()),
                tls_cert: Some("c.pem".into()),
                tls_key: Some("k.pem".into()),
                ..base()
            }),
            "insecure-plaintext",
            "both"
        );
        let plain = Settings::resolve(
            Flags {
                insecure_plaintext: true,
                ..base()
            },
            FileConfig::default(),
        )
        .expect("explicit plaintext");
        assert!(plain.tls.is_none());
        let tls = Settings::resolve(
            Flags {
                tls_ca: Some("ca.pem".into()),
                tls_cert: Some("c.pem".into()),
                tls_key: Some("k.pem".into()),
                ..base()
            },
            FileConfig::default(),
        )
        .expect("TLS files");
        assert_eq!(tls.tls.map(|f| f.cert), Some(PathBuf::from("c.pem")));
    }
}
