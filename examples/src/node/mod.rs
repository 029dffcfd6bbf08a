//! ha-node: one member of an ha group as a process — a [`KvNode`] on
//! RocksDB in its data directory, over [`TcpTransport`], serving the
//! HTTP/JSON client API of [`api`]. The binary (`src/bin/ha-node.rs`) only
//! parses flags and waits for SIGTERM/SIGINT; everything else is here so
//! tests can reuse it.

pub mod api;
pub mod config;
pub mod error;
pub mod failpoints;
pub mod http;
pub mod identity;
pub mod join;
pub mod json;
pub mod metrics;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use ha_core::{ClusterId, NodeId};
use ha_raft::tls::{ClientAuth, PeerTls};
use ha_raft::{KvConfig, KvNode, Membership, PeerSecurity, TcpConfig, TcpTransport};
use ha_storage::{RocksEnv, StorageConfig};
use serde_json::{Value, json};

pub use config::{Flags, Settings, SettingsError};
pub use identity::{StartModeError, StartPlan, StoredIdentity};
pub use join::JoinError;

/// How long a stopping member lets open HTTP requests (and watch streams,
/// which end once the member stopped) finish.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// What the HTTP handlers share.
pub struct App {
    /// The member.
    pub kv: KvNode,
    /// Its peer transport (the address book).
    pub transport: Arc<TcpTransport>,
    /// Its settings.
    pub settings: Settings,
    /// This member's id.
    pub id: NodeId,
    /// The peer address other members dial.
    pub advertise: SocketAddr,
    /// Who this member is (as in `ha-node.json`).
    pub identity: StoredIdentity,
    /// The group's id.
    pub cluster_id: ClusterId,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// `/metrics`.
    pub metrics: metrics::Metrics,
    /// The member's state store, for `GET /v1/digest`.
    pub state: Arc<dyn ha_core::StateStore>,
    /// The slow-disk failpoint, when `--enable-failpoints` is on.
    pub disk_delay: Option<failpoints::DiskDelay>,
    /// Set once a signal asked the member to stop.
    stopping: AtomicBool,
}

impl App {
    /// Whether a signal asked the member to stop.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Whether `/health` answers 200, and its body: the member knows a
    /// leader, is not stopping, removed or failed, and applies within
    /// `health-max-apply-lag` entries of what it knows committed.
    pub fn health(&self) -> (bool, Value) {
        let st = self.kv.node().status();
        let lag = st.commit.saturating_sub(st.applied);
        let reason = if self.stopping.load(Ordering::Relaxed) {
            Some("stopping")
        } else if st.fatal.is_some() {
            Some("fatal")
        } else if st.removed {
            Some("removed")
        } else if st.leader.is_none() {
            Some("no_leader")
        } else if lag > self.settings.health_max_apply_lag {
            Some("apply_lag")
        } else {
            None
        };
        (
            reason.is_none(),
            json!({
                "healthy": reason.is_none(),
                "reason": reason,
                "leader": st.leader.map(|l| l.0),
                "commit": st.commit,
                "applied": st.applied,
                "apply_lag": lag,
            }),
        )
    }
}

/// Why ha-node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory or a listener.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// Storage, configuration or the engine.
    #[error("{0}")]
    Ha(#[from] ha_core::Error),
    /// RocksDB.
    #[error("storage: {0}")]
    Storage(#[from] ha_core::StorageError),
    /// The transport's configuration.
    #[error("transport config: {0}")]
    Config(#[from] ha_core::ConfigError),
    /// The TLS files.
    #[error("TLS: {0}")]
    Tls(#[from] ha_raft::tls::TlsError),
    /// The start mode does not fit the data directory.
    #[error("{0}")]
    Mode(#[from] StartModeError),
    /// Joining the group failed.
    #[error("join: {0}")]
    Join(#[from] JoinError),
    /// A setting this start needs.
    #[error("{0}")]
    Settings(#[from] SettingsError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// Keeps the transport's address book in step with the replicated
/// membership: a member with an `IP:port` address gets `set_peer`, a
/// removed one `remove_peer`. Initial members keep the addresses from
/// `--members` (the bootstrap configuration carries none); a member with
/// a local route (`--peer-routes`) keeps its route.
async fn follow_membership(
    changes: impl futures::Stream<Item = Membership>,
    transport: Arc<TcpTransport>,
    local: NodeId,
    routes: BTreeMap<NodeId, SocketAddr>,
) {
    futures::pin_mut!(changes);
    while let Some(m) = changes.next().await {
        for member in &m.members {
            if member.id == local || member.address.is_empty() {
                continue;
            }
            if let Some(&route) = routes.get(&member.id) {
                if transport.peer_addr(member.id) != Some(route) {
                    tracing::info!(peer = %member.id, %route, "address book: member dialled through its local route");
                    transport.set_peer(member.id, route);
                }
                continue;
            }
            let parsed = std::str::from_utf8(&member.address)
                .ok()
                .and_then(|a| a.parse::<SocketAddr>().ok());
            match parsed {
                Some(addr) if transport.peer_addr(member.id) != Some(addr) => {
                    tracing::info!(peer = %member.id, %addr, "address book: member address from membership");
                    transport.set_peer(member.id, addr);
                }
                Some(_) => {}
                None => {
                    tracing::warn!(peer = %member.id, address = %String::from_utf8_lossy(&member.address), "member address is not IP:port; not dialling it")
                }
            }
        }
        for id in &m.removed {
            if transport.peer_addr(*id).is_some() {
                tracing::info!(peer = %id, "address book: member removed");
                transport.remove_peer(*id);
            }
        }
    }
}

/// Starts the member and serves the API until `stop` resolves, then shuts
/// down in order: `/health` turns 503, the member stops (a leader hands
/// leadership over first), open HTTP requests get up to a few seconds.
///
/// # Errors
/// When the data directory, storage, a listener or the member cannot
/// start, or the member stopped on a fatal error.
pub async fn run(settings: Settings, stop: impl Future<Output = ()>) -> Result<(), StartError> {
    let data_dir = settings.data_dir.clone();
    let plan = identity::decide(
        &data_dir,
        StoredIdentity::load(&data_dir)?,
        identity::has_data(&data_dir),
        &settings.mode_flags(),
    )?;
    // Listeners first: a port in use fails before anything is opened (or
    // the group is asked to add this member).
    let http = tokio::net::TcpListener::bind(settings.http)
        .await
        .map_err(io(format!("binding the HTTP listener {}", settings.http)))?;
    let http_addr = http.local_addr().map_err(io("reading the HTTP address"))?;
    let etcd = match settings.etcd_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(io(format!("binding the etcd gateway listener {addr}")))?,
        ),
        None => None,
    };
    // TLS material is loaded (and checked) before anything binds.
    let (security, http_tls) = match &settings.tls {
        Some(files) => {
            let http_auth = if settings.http_require_client_cert {
                ClientAuth::Required
            } else {
                ClientAuth::Optional
            };
            (
                PeerSecurity::Tls(PeerTls::load(files.clone(), ClientAuth::Required)?),
                Some(PeerTls::load(files.clone(), http_auth)?),
            )
        }
        None => {
            tracing::warn!(
                "--insecure-plaintext: peer and client connections are NOT authenticated or encrypted; anyone who reaches these ports can act as a member or client"
            );
            (PeerSecurity::InsecurePlaintext, None)
        }
    };
    let (identity, peers, first_start) = match plan {
        StartPlan::Bootstrap { id, members } => {
            let initial: Vec<NodeId> = members.keys().copied().collect();
            let token = settings.cluster_token.clone().unwrap_or_default();
            let identity = StoredIdentity {
                member_id: id.0,
                cluster_id: identity::hex(&ClusterId::derive(&initial, &token)),
                initial_members: initial.iter().map(|i| i.0).collect(),
                cluster_token: token,
                peers: members.iter().map(|(i, a)| (i.0, *a)).collect(),
            };
            (identity, members, true)
        }
        StartPlan::Restart { stored, peers } => (stored, peers, false),
        StartPlan::Join { address, id } => {
            let advertise = advertised(&settings, None)?;
            if settings.tls.is_some() && id.is_none() {
                return Err(SettingsError::Invalid {
                    setting: "id",
                    reason: "required with --join under TLS: the member certificate names it (member-<id>)".into(),
                }
                .into());
            }
            // The peer port must be free before the group is told to dial it.
            let listen = settings.listen.ok_or(SettingsError::Missing("listen"))?;
            drop(
                tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(io(format!("binding the peer listener {listen}")))?,
            );
            let body = join::JoinBody {
                id: id.map(|i| i.0),
                address: advertise.to_string(),
                promote_when_caught_up: settings.promote,
            };
            tracing::info!(%address, id = ?body.id, %advertise, "asking the group to add this member");
            let reply = join::join_group(
                &address,
                &body,
                settings.tls.as_ref(),
                settings.cluster_token.as_deref(),
                settings.join_timeout,
            )
            .await?;
            tracing::info!(member = reply.member_id, leader = reply.leader, cluster = %reply.cluster_id, "added to the group as a learner");
            let identity = reply.identity();
            // Stored before the engine starts: the id is taken now, and a
            // restart must not ask again.
            identity.save(&data_dir).map_err(io(format!(
                "writing {}",
                data_dir.join(identity::IDENTITY_FILE).display()
            )))?;
            let peers = reply
                .members
                .iter()
                .map(|(i, a)| (NodeId(*i), *a))
                .collect();
            (identity, peers, false)
        }
    };
    let id = NodeId(identity.member_id);
    let initial: Vec<NodeId> = identity
        .initial_members
        .iter()
        .map(|&i| NodeId(i))
        .collect();
    let config = settings.raft_config(id, initial, identity.cluster_token.clone());
    let cluster_id = identity.derived_cluster_id();
    let listen = settings
        .listen
        .or_else(|| peers.get(&id).copied())
        .ok_or(SettingsError::Missing("listen"))?;
    let advertise = advertised(&settings, peers.get(&id).copied())?;
    // The address the others were first given for this member: a restart
    // on another port announces the new one.
    let first_address = identity.peers.get(&id.0).copied();
    let snapshots = settings.data_dir.join("snapshots");
    std::fs::create_dir_all(&snapshots).map_err(io(format!("creating {}", snapshots.display())))?;
    let tcp = TcpConfig {
        max_inbound_connections: settings.peer_max_connections,
        ..TcpConfig::default()
    }
    .validate_for(&config)?;
    let transport = TcpTransport::bind_with(listen, cluster_id, id, tcp, security)
        .await
        .map_err(io(format!("binding the peer listener {listen}")))?;
    for (&peer, &addr) in &peers {
        if peer != id {
            transport.set_peer(peer, *settings.peer_routes.get(&peer).unwrap_or(&addr));
        }
    }
    let storage = StorageConfig::default();
    let env = RocksEnv::new(&storage)?;
    let dir = settings.data_dir.clone();
    let (log, state) = tokio::task::spawn_blocking(move || env.open(&dir, &storage))
        .await
        .map_err(|e| StartError::Io {
            what: "opening RocksDB".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
    let (log, state) = (Arc::new(log), Arc::new(state));
    // The slow-disk failpoint is always in the log's path (one atomic load
    // per durable write); only `--enable-failpoints` serves the route that
    // sets it.
    let disk_delay = failpoints::DiskDelay::default();
    let failpoints = settings.enable_failpoints;
    if failpoints {
        tracing::warn!(
            "--enable-failpoints: POST /v1/debug/disk-delay can slow this member's log writes; for tests only"
        );
    }
    let kv = KvNode::start(
        config,
        KvConfig::default(),
        Arc::new(failpoints::SlowLog::new(log.clone(), disk_delay.clone())),
        state.clone(),
        transport.clone(),
    )
    .await?;
    if first_start {
        // After the engine accepted the data directory (a directory from
        // before ha-node.json existed is checked against RocksDB's ids).
        identity.save(&data_dir).map_err(io(format!(
            "writing {}",
            data_dir.join(identity::IDENTITY_FILE).display()
        )))?;
    }
    let membership = tokio::spawn(follow_membership(
        kv.node().membership_changes(),
        transport.clone(),
        id,
        settings.peer_routes.clone(),
    ));
    tracing::info!(
        id = %id, cluster = %cluster_id, peer = %transport.local_addr(), %advertise, http = %http_addr,
        data_dir = %settings.data_dir.display(), "ha-node started"
    );
    let max_body = settings.max_body_bytes;
    let http_limits = http::HttpLimits {
        max_connections: settings.http_max_connections,
        ..http::HttpLimits::default()
    };
    let app = Arc::new(App {
        kv: kv.clone(),
        transport: transport.clone(),
        settings,
        id,
        advertise,
        identity,
        cluster_id,
        http_addr,
        metrics: metrics::Metrics::new(&kv, transport.clone()),
        state: state.clone(),
        disk_delay: failpoints.then_some(disk_delay),
        stopping: AtomicBool::new(false),
    });
    kv.set_app_call_handler(Arc::new(join::LeaderCalls {
        app: Arc::downgrade(&app),
    }));
    let announce = tokio::spawn(join::announce_address(app.clone(), first_address));
    let router = api::router(app.clone()).layer(axum::extract::DefaultBodyLimit::max(max_body));
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let http_counters = app.metrics.http.clone();
    // The etcd gateway: same TLS and connection limits as the client API;
    // it stops with it.
    let (etcd_drain_tx, etcd_drain_rx) = tokio::sync::oneshot::channel::<()>();
    let etcd_server = match etcd {
        Some(listener) => {
            let addr = listener
                .local_addr()
                .map_err(io("reading the etcd gateway address"))?;
            let scheme = if http_tls.is_some() { "https" } else { "http" };
            let mut client_urls: BTreeMap<u64, Vec<String>> = app
                .settings
                .etcd_client_urls
                .iter()
                .map(|(id, urls)| (id.0, urls.clone()))
                .collect();
            client_urls
                .entry(id.0)
                .or_insert_with(|| vec![format!("{scheme}://{addr}")]);
            let mut options = ha_etcd::GatewayOptions::default();
            options.max_request_bytes = max_body;
            options.client_urls = client_urls;
            options.peer_urls = app
                .identity
                .peers
                .iter()
                .map(|(id, addr)| (*id, vec![addr.to_string()]))
                .collect();
            let gateway = ha_etcd::Gateway::new(Arc::new(kv.clone()))
                .with_cluster(Arc::new(join::GatewayCluster { app: app.clone() }))
                .with_options(options);
            tracing::info!(etcd = %addr, "etcd v3 gateway listening");
            Some(tokio::spawn(http::serve(
                listener,
                gateway.routes().into_axum_router(),
                http::Protocol::Http2,
                http::HttpLimits {
                    max_in_flight_per_connection: app.settings.etcd_max_streams as usize,
                    ..http_limits
                },
                http_tls.clone(),
                app.metrics.http.clone(),
                async {
                    let _ = etcd_drain_rx.await;
                },
                HTTP_DRAIN,
            )))
        }
        None => None,
    };
    let server = tokio::spawn(http::serve(
        http,
        router,
        http::Protocol::Http1,
        http_limits,
        http_tls,
        http_counters,
        async {
            let _ = drain_rx.await;
        },
        HTTP_DRAIN,
    ));
    stop.await;
    tracing::info!("stopping: handing leadership over if leader, then shutting down");
    app.stopping.store(true, Ordering::Relaxed);
    announce.abort();
    let _ = announce.await;
    let result = kv.shutdown().await;
    membership.abort();
    let _ = drain_tx.send(());
    let _ = etcd_drain_tx.send(());
    if let Some(etcd_server) = etcd_server
        && let Err(e) = etcd_server.await
    {
        tracing::warn!(error = %e, "etcd gateway task failed");
    }
    // `serve` bounds its own drain; this only reports a failed task.
    if let Err(e) = server.await {
        tracing::warn!(error = %e, "HTTP server task failed");
    }
    if tokio::time::timeout(HTTP_DRAIN, transport.closed())
        .await
        .is_err()
    {
        tracing::warn!("peer connections still open after {HTTP_DRAIN:?}; stopping anyway");
    }
    drop((app, kv));
    close_storage(log, state).await;
    tracing::info!("ha-node stopped");
    result.map_err(StartError::from)
}

/// The peer address others dial: `--advertise`, else `--listen` unless
/// its IP is unspecified, else `known` (the address the group has for
/// this member).
fn advertised(settings: &Settings, known: Option<SocketAddr>) -> Result<SocketAddr, SettingsError> {
    if let Some(a) = settings.advertise {
        return Ok(a);
    }
    match (settings.listen, known) {
        (Some(l), _) if !l.ip().is_unspecified() => Ok(l),
        (_, Some(k)) => Ok(k),
        (Some(l), None) => Err(SettingsError::Invalid {
            setting: "advertise",
            reason: format!(
                "--listen {l} cannot be dialled by other members: give --advertise IP:port"
            ),
        }),
        (None, None) => Err(SettingsError::Missing("listen")),
    }
}

/// Waits until the member's tasks have let go of its RocksDB stores, then
/// closes them (`KvNode::shutdown` has already joined its threads; an HTTP
/// or gateway task still finishing may hold a handle). A process that exits
/// with a database still open runs RocksDB's static destructors under its
/// background threads, which aborts ("pthread lock: Invalid argument")
/// instead of exiting cleanly.
async fn close_storage<L: Send + Sync + 'static, S: Send + Sync + 'static>(
    log: Arc<L>,
    state: Arc<S>,
) {
    let deadline = tokio::time::Instant::now() + HTTP_DRAIN;
    while Arc::strong_count(&log) > 1 || Arc::strong_count(&state) > 1 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("storage still in use after {HTTP_DRAIN:?}; exiting with it open");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Closing waits for RocksDB's background work: off the runtime.
    let closed = tokio::task::spawn_blocking(move || drop((log, state))).await;
    if let Err(e) = closed {
        tracing::warn!(error = %e, "closing storage failed");
    }
}
