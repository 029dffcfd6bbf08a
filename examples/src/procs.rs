//! A group of `ha-node` processes on loopback, for the process tests and
//! the benchmarks that need real processes (`ha-bench failover`, `ha-bench
//! kv --target`).
//!
//! This is test tooling: a failure to start a process or a condition that
//! does not become true within [`PATIENCE`] panics with the members' logs.
//! Every process is killed (SIGKILL) when its handle drops, and stops by
//! itself when this process dies (`--exit-on-stdin-close`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ha_core::{ClusterId, NodeId};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::proxy::{LinkMode, LinkProxy};

/// The `ha-node` binary next to the running executable (the test or
/// benchmark binary; tests run from `target/*/deps`, so its parent is
/// tried too), or `$HA_NODE_BIN`.
pub fn node_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HA_NODE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current executable");
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    for _ in 0..2 {
        let candidate = dir.join("ha-node");
        if candidate.exists() {
            return candidate;
        }
        dir.pop();
    }
    panic!(
        "no ha-node binary next to {} (build it, or set HA_NODE_BIN)",
        exe.display()
    )
}

/// How long a condition may take to become true.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// The members' body limit in these tests.
pub const MAX_BODY: usize = 64 << 10;
/// Hard bound of a whole test.
pub const TEST_BOUND: Duration = Duration::from_secs(150);

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `test` alone among the tests of this test binary that use it
/// (three RocksDB processes per test are enough for a two-core machine),
/// under [`TEST_BOUND`].
pub async fn one_at_a_time<F: std::future::Future<Output = ()>>(test: F) {
    let _one = ONE_AT_A_TIME.lock().await;
    tokio::time::timeout(TEST_BOUND, test)
        .await
        .expect("test exceeded its time bound");
}

/// A port nobody listens on now (the OS picked it for a socket that is
/// closed again at once), and that this process has not handed out before:
/// the OS may offer a port again as soon as its socket is closed, and two
/// members given the same port fail to start (seen in CI: one member's
/// peer port was another's HTTP port).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let l = StdListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        if given.insert(port) {
            return port;
        }
    }
}

/// One ha-node process; killed (SIGKILL) on drop. It also holds the
/// child's standard input: if this test process dies without dropping it,
/// the pipe closes and the member stops by itself
/// (`--exit-on-stdin-close`).
pub struct Proc {
    /// The process.
    pub child: Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`Cluster::digests`] found: every running member at one applied
/// index, and each member's state hash there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Converged {
    /// The applied index they all stand at.
    pub applied_index: u64,
    /// Each member's SHA-256 of its state (`GET /v1/digest`).
    pub sha256: BTreeMap<u64, String>,
}

/// A group of ha-node processes on loopback, with their data, config files
/// and logs in one temporary directory.
pub struct Cluster {
    /// Data directories, config files and logs.
    pub dir: tempfile::TempDir,
    /// The bootstrap members (they make the cluster id).
    pub initial: Vec<u64>,
    /// Peer ports by member id.
    pub peer: BTreeMap<u64, u16>,
    /// HTTP client API ports by member id.
    pub http: BTreeMap<u64, u16>,
    /// The running processes by member id.
    pub procs: BTreeMap<u64, Proc>,
    /// An HTTP client without pooled connections.
    pub client: reqwest::Client,
    binary: PathBuf,
    /// Fault-injecting proxies by directed link `(from, to)`: member `from`
    /// dials `to` through it ([`Cluster::start_linked`]); empty otherwise.
    pub links: BTreeMap<(u64, u64), LinkProxy>,
    /// With mutual TLS ([`Cluster::start_tls`]): the group's CA; members
    /// get certificates as they are spawned. `None`: `insecure-plaintext`.
    pub tls: Option<ClusterTls>,
    /// etcd gateway ports by member id ([`Cluster::start_etcd`]): members
    /// listed here start with `--etcd-listen`.
    pub etcd: BTreeMap<u64, u16>,
}

/// The certificates of a [`Cluster`] running with TLS.
pub struct ClusterTls {
    /// The CA.
    pub ca: crate::certs::Ca,
    /// A client certificate (`client`) the harness's own HTTP client
    /// presents.
    pub client: crate::certs::Issued,
}

impl ClusterTls {
    fn new() -> ClusterTls {
        let ca = crate::certs::Ca::new("ha test CA").expect("generate a CA");
        let client = ca
            .issue(&["client".to_string()], crate::certs::Validity::Default)
            .expect("issue a client certificate");
        ClusterTls { ca, client }
    }

    /// An HTTPS client trusting the CA and presenting the client
    /// certificate, without pooled connections.
    pub fn http_client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca.cert_pem().as_bytes()).expect("CA pem");
        let identity = reqwest::Identity::from_pem(
            format!("{}{}", self.client.cert, self.client.key).as_bytes(),
        )
        .expect("client identity pem");
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(identity)
            .timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(0)
            .build()
            .expect("https client")
    }
}

/// Fault injection and state checks: links through proxies, state
/// digests, prefix reads.
impl Cluster {
    /// Starts `n` members running `binary`, every member dialling every
    /// other through its own [`LinkProxy`] (one per directed link, in
    /// [`Cluster::links`], all passing at first), with
    /// `--enable-failpoints` ([`Cluster::set_disk_delay`]).
    pub async fn start_linked(binary: PathBuf, n: u64) -> Cluster {
        Cluster::start_linked_with_spares(binary, n, 0).await
    }

    /// As [`Cluster::start_linked`], with ports and link proxies also
    /// ready for `spares` members that may join later (ids `n + 1 ..=
    /// n + spares`): every member is given the proxies to them as
    /// `--peer-routes`, so a joined member's links can be cut one by one
    /// like the others'.
    pub async fn start_linked_with_spares(binary: PathBuf, n: u64, spares: u64) -> Cluster {
        let mut c = Cluster::start_with(binary.clone(), 0).await;
        c.initial = (1..=n).collect();
        let all = n + spares;
        for id in 1..=all {
            c.peer.insert(id, free_port());
            c.http.insert(id, free_port());
        }
        for from in 1..=all {
            for to in (1..=all).filter(|&to| to != from) {
                let target = format!("127.0.0.1:{}", c.peer[&to])
                    .parse()
                    .expect("loopback address");
                let link = LinkProxy::start(target).await.expect("start a link proxy");
                c.links.insert((from, to), link);
            }
        }
        for id in 1..=n {
            c.spawn(id);
        }
        c
    }

    /// The `--members` list member `id` is given: its own address, and its
    /// peers' addresses or, where a link proxy exists, the proxy's.
    pub fn members_for(&self, id: u64) -> String {
        self.initial
            .iter()
            .map(|&to| {
                let addr = match self.links.get(&(id, to)) {
                    Some(link) => link.addr().to_string(),
                    None => format!("127.0.0.1:{}", self.peer[&to]),
                };
                format!("{to}={addr}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Sets the link `from` → `to` (panics when there is no such proxy).
    pub fn set_link(&self, from: u64, to: u64, mode: LinkMode) {
        self.links
            .get(&(from, to))
            .unwrap_or_else(|| panic!("no link proxy {from}->{to}"))
            .set(mode);
    }

    /// `--peer-routes` for member `id`: the proxies of its links, if any.
    pub fn routes_for(&self, id: u64) -> Option<String> {
        let routes: Vec<String> = self
            .links
            .iter()
            .filter(|((from, _), _)| *from == id)
            .map(|((_, to), link)| format!("{to}={}", link.addr()))
            .collect();
        (!routes.is_empty()).then(|| routes.join(","))
    }

    /// Member `who` as member `from` lists it in `GET /v1/members`.
    pub async fn listed(&self, from: u64, who: u64) -> Option<Value> {
        let (_, v) = self.get(from, "/v1/members").await.ok()?;
        v["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == who)
            .cloned()
    }

    /// Removes member `who` through whichever member leads (the leader
    /// itself hands leadership over first and names its successor: asked
    /// again there), within `within`.
    ///
    /// # Errors
    /// Not removed in time; says the last answer.
    pub async fn remove_member(&self, who: u64, within: Duration) -> Result<(), String> {
        let deadline = std::time::Instant::now() + within;
        let mut ask = who;
        loop {
            let answer = self
                .post(ask, "/v1/members/remove", json!({ "id": who }))
                .await;
            if let Ok((status, _)) = &answer
                && status.is_success()
            {
                return Ok(());
            }
            let other = self.procs.keys().copied().find(|&id| id != who);
            if let Some(o) = other
                && let Ok((_, v)) = self.get(o, "/v1/members").await
            {
                if v["removed"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| *x == who))
                {
                    return Ok(());
                }
                if let Some(l) = v["leader"].as_u64().filter(|l| self.procs.contains_key(l)) {
                    ask = l;
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "member {who} not removed within {within:?}: last answer {answer:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes every durable log write of member `id` wait `delay` first (a
    /// slow disk; `Duration::ZERO` clears it). Only in a linked group,
    /// whose members run with `--enable-failpoints`.
    ///
    /// # Errors
    /// The member did not take it (not running, or no failpoints).
    pub async fn set_disk_delay(&self, id: u64, delay: Duration) -> Result<(), String> {
        let ms = delay.as_millis() as u64;
        match self
            .post(id, "/v1/debug/disk-delay", json!({ "ms": ms }))
            .await?
        {
            (status, _) if status.is_success() => Ok(()),
            (status, body) => Err(format!("member {id}: disk delay refused: {status} {body}")),
        }
    }

    /// Cuts `id` off from every other member, both ways.
    pub fn isolate(&self, id: u64, mode: LinkMode) {
        for (&(from, to), link) in &self.links {
            if from == id || to == id {
                link.set(mode);
            }
        }
    }

    /// Every link passes again.
    pub fn heal(&self) {
        for link in self.links.values() {
            link.set(LinkMode::Pass);
        }
    }

    /// Member `id`'s state digest: `(applied_index, sha256)`, or why not.
    pub async fn digest(&self, id: u64) -> Result<(u64, String), String> {
        let (status, v) = self.get(id, "/v1/digest").await?;
        match (status, v["applied_index"].as_u64(), v["sha256"].as_str()) {
            (StatusCode::OK, Some(i), Some(h)) => Ok((i, h.to_string())),
            _ => Err(format!("digest of member {id}: {status} {v}")),
        }
    }

    /// Waits until every running member reports the same applied index
    /// (so no write may be in flight) and returns their digests there.
    /// Panics when they do not settle within [`PATIENCE`].
    pub async fn digests(&self) -> Converged {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut seen = BTreeMap::new();
            for &id in self.procs.keys() {
                if let Ok(d) = self.digest(id).await {
                    seen.insert(id, d);
                }
            }
            let indexes: Vec<u64> = seen.values().map(|(i, _)| *i).collect();
            if seen.len() == self.procs.len()
                && let Some(&first) = indexes.first()
                && indexes.iter().all(|&i| i == first)
            {
                return Converged {
                    applied_index: first,
                    sha256: seen.into_iter().map(|(id, (_, h))| (id, h)).collect(),
                };
            }
            assert!(
                Instant::now() < deadline,
                "members did not settle at one applied index within {PATIENCE:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for [`Cluster::digests`] and asserts the members' state hashes
    /// are equal there; returns the applied index.
    pub async fn assert_same_state(&self) -> u64 {
        let c = self.digests().await;
        let first = c.sha256.values().next().cloned();
        assert!(
            c.sha256.values().all(|h| Some(h) == first.as_ref()),
            "members at applied index {} hold different states: {:?}",
            c.applied_index,
            c.sha256
        );
        c.applied_index
    }

    /// Every key under `prefix` with its value, through member `id`
    /// (`linearizable` or serializable); the member's error answer
    /// otherwise (status and body).
    pub async fn range_prefix(
        &self,
        id: u64,
        prefix: &str,
        linearizable: bool,
        timeout_ms: u64,
    ) -> Result<BTreeMap<String, String>, (Option<StatusCode>, Value)> {
        let r = self
            .post(
                id,
                &format!("/v1/kv/range?encoding=utf8&timeout_ms={timeout_ms}"),
                json!({ "key": prefix, "prefix": true, "serializable": !linearizable }),
            )
            .await
            .map_err(|e| (None, Value::String(e)))?;
        match r {
            (StatusCode::OK, v) => Ok(v["kvs"]
                .as_array()
                .map(|kvs| {
                    kvs.iter()
                        .filter_map(|kv| {
                            Some((
                                kv["key"].as_str()?.to_string(),
                                kv["value"].as_str()?.to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default()),
            (status, v) => Err((Some(status), v)),
        }
    }

    /// One put through member `id` with a deadline, not retried: `Ok` when
    /// acknowledged, else the member's answer (or the transport error).
    pub async fn try_put(
        &self,
        id: u64,
        key: &str,
        value: &str,
        timeout_ms: u64,
    ) -> Result<(), (Option<StatusCode>, Value)> {
        match self
            .post(
                id,
                &format!("/v1/kv/put?encoding=utf8&timeout_ms={timeout_ms}"),
                json!({ "key": key, "value": value }),
            )
            .await
        {
            Ok((StatusCode::OK, _)) => Ok(()),
            Ok((status, v)) => Err((Some(status), v)),
            Err(e) => Err((None, Value::String(e))),
        }
    }

    /// Every acknowledged write under `prefix` is on every running member:
    /// one linearizable prefix read through each (retried while a member
    /// cannot serve it yet).
    pub async fn check_prefix(&self, prefix: &str, acked: &BTreeMap<String, String>) {
        for &id in self.procs.keys() {
            let deadline = Instant::now() + PATIENCE;
            let got = loop {
                match self.range_prefix(id, prefix, true, 5_000).await {
                    Ok(got) => break got,
                    Err(e) => assert!(
                        Instant::now() < deadline,
                        "member {id} could not read {prefix} linearizably within {PATIENCE:?}: {e:?}"
                    ),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            for (k, v) in acked {
                assert_eq!(
                    got.get(k),
                    Some(v),
                    "acknowledged write {k}={v} missing or wrong on member {id}"
                );
            }
        }
    }
}

impl Cluster {
    /// Starts `n` members running [`node_binary`].
    pub async fn start(n: u64) -> Cluster {
        Cluster::start_with(node_binary(), n).await
    }

    /// Starts `n` members running [`node_binary`] with mutual TLS between
    /// them and TLS (client certificates required) on their client API.
    pub async fn start_tls(n: u64) -> Cluster {
        Cluster::start_options(n, true, false).await
    }

    /// As [`Cluster::start_tls`], each member with its etcd v3 gateway on
    /// (TLS, client certificates required, as on the client API).
    pub async fn start_etcd_tls(n: u64) -> Cluster {
        Cluster::start_options(n, true, true).await
    }

    /// Starts `n` members running [`node_binary`], each with its etcd v3
    /// gateway on (`--etcd-listen`, ports in [`Cluster::etcd`]).
    pub async fn start_etcd(n: u64) -> Cluster {
        Cluster::start_options(n, false, true).await
    }

    /// `n` members running [`node_binary`], with TLS ([`ClusterTls`]) or
    /// `insecure-plaintext`, with or without the etcd gateway.
    async fn start_options(n: u64, tls: bool, etcd: bool) -> Cluster {
        let mut c = Cluster::start_with(node_binary(), 0).await;
        if tls {
            let tls = ClusterTls::new();
            c.client = tls.http_client();
            c.tls = Some(tls);
        }
        c.initial = (1..=n).collect();
        for id in 1..=n {
            c.peer.insert(id, free_port());
            c.http.insert(id, free_port());
            if etcd {
                c.etcd.insert(id, free_port());
            }
        }
        for id in 1..=n {
            c.spawn(id);
        }
        c
    }

    /// The members' etcd gateway addresses (`IP:port`), comma-separated,
    /// for `etcdctl --endpoints`.
    pub fn etcd_endpoints(&self) -> String {
        self.etcd
            .values()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts `n` members running `binary`.
    pub async fn start_with(binary: PathBuf, n: u64) -> Cluster {
        let mut c = Cluster {
            tls: None,
            etcd: BTreeMap::new(),
            dir: tempfile::Builder::new()
                .prefix("ha-node-test-")
                .tempdir()
                .expect("temp dir"),
            initial: (1..=n).collect(),
            peer: (1..=n).map(|id| (id, free_port())).collect(),
            http: (1..=n).map(|id| (id, free_port())).collect(),
            procs: BTreeMap::new(),
            binary,
            links: BTreeMap::new(),
            // No pooled connections: members restart on the same ports.
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .pool_max_idle_per_host(0)
                .build()
                .expect("http client"),
        };
        for id in 1..=n {
            c.spawn(id);
        }
        c
    }

    /// The `--members` list of the bootstrap members.
    pub fn members(&self) -> String {
        self.initial
            .iter()
            .map(|id| format!("{id}=127.0.0.1:{}", self.peer[id]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Where member `id` logs.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    /// Member `id`'s log so far.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Starts member `id` (again), appending to its log. An initial member
    /// gets `--members`; any other member restarts from its data
    /// directory, or, the first time, joins with `--join` through the
    /// lowest-id running member.
    pub fn spawn(&mut self, id: u64) {
        let via = self.procs.keys().copied().find(|&m| m != id);
        self.spawn_joining(id, via);
    }

    /// Whether member `id`'s data directory records a member
    /// (`ha-node.json`).
    pub fn initialised(&self, id: u64) -> bool {
        self.data_dir(id)
            .join(crate::node::identity::IDENTITY_FILE)
            .exists()
    }

    /// Member `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("data-{id}"))
    }

    /// As [`Cluster::spawn`], a new member asking member `via` (its client
    /// API) to add it.
    pub fn spawn_joining(&mut self, id: u64, via: Option<u64>) {
        self.peer.entry(id).or_insert_with(free_port);
        self.http.entry(id).or_insert_with(free_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log file");
        // Settings through a config file, one through a flag that
        // overrides it: both paths are exercised.
        let config = self.dir.path().join(format!("node-{id}.toml"));
        let security = match &self.tls {
            None => "insecure-plaintext = true\n".to_string(),
            Some(tls) => {
                let dir = self.dir.path();
                let files = if dir.join(format!("member-{id}.pem")).exists() {
                    crate::certs::MemberFiles {
                        ca: dir.join("ca.pem"),
                        cert: dir.join(format!("member-{id}.pem")),
                        key: dir.join(format!("member-{id}.key")),
                    }
                } else {
                    let issued = tls
                        .ca
                        .issue_member(id, &["127.0.0.1".to_string(), "localhost".to_string()])
                        .expect("issue a member certificate");
                    crate::certs::write_member(dir, id, &tls.ca.cert_pem(), &issued)
                        .expect("write certificates")
                };
                format!(
                    "tls-ca = \"{}\"\ntls-cert = \"{}\"\ntls-key = \"{}\"\nhttp-require-client-cert = true\n",
                    files.ca.display(),
                    files.cert.display(),
                    files.key.display()
                )
            }
        };
        let mut mode = if self.initial.contains(&id) {
            format!("members = \"{}\"\n", self.members_for(id))
        } else if self.initialised(id) {
            String::new()
        } else {
            let via = via.expect("a running member to join through");
            format!("join = \"127.0.0.1:{}\"\n", self.http[&via])
        };
        if let Some(routes) = self.routes_for(id) {
            // A fault-injection group: slow disks too.
            mode.push_str(&format!(
                "peer-routes = \"{routes}\"\nenable-failpoints = true\n"
            ));
        }
        std::fs::write(
            &config,
            format!(
                "id = {id}\nlisten = \"127.0.0.1:{}\"\ndata-dir = \"{}\"\n{mode}http = \"127.0.0.1:1\"\nrequest-timeout-ms = 5000\nmax-body-bytes = {MAX_BODY}\n{security}",
                self.peer[&id],
                self.data_dir(id).display(),
            ),
        )
        .expect("write config");
        let mut command = Command::new(&self.binary);
        let mut child = command
            .arg("--exit-on-stdin-close")
            .arg("--config")
            .arg(&config)
            .args(["--http", &format!("127.0.0.1:{}", self.http[&id])])
            .args(self.etcd_args(id))
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn ha-node");
        let stdin = child.stdin.take();
        self.procs.insert(id, Proc { child, stdin });
    }

    /// `--etcd-listen` and `--etcd-client-urls` for member `id`, if it
    /// runs the gateway.
    fn etcd_args(&self, id: u64) -> Vec<String> {
        let Some(port) = self.etcd.get(&id) else {
            return Vec::new();
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let urls = self
            .etcd
            .iter()
            .map(|(id, port)| format!("{id}={scheme}://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        vec![
            "--etcd-listen".into(),
            format!("127.0.0.1:{port}"),
            "--etcd-client-urls".into(),
            urls,
        ]
    }

    /// SIGKILL.
    pub fn kill(&mut self, id: u64) {
        drop(self.procs.remove(&id));
    }

    /// Sends `sig` (`-STOP`, `-CONT`, ...) to member `id`'s process:
    /// `-STOP` leaves it alive but answering nothing, like a stalled VM.
    ///
    /// # Errors
    /// The member is not running, or `kill` failed.
    pub fn signal(&self, id: u64, sig: &str) -> std::io::Result<()> {
        let pid = self
            .procs
            .get(&id)
            .ok_or_else(|| std::io::Error::other(format!("member {id} is not running")))?
            .child
            .id()
            .to_string();
        let status = Command::new("kill").args([sig, &pid]).status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!("kill {sig} {pid} failed")));
        }
        Ok(())
    }

    /// SIGTERM, then waits for the process to exit; returns whether it
    /// exited successfully.
    pub async fn terminate(&mut self, id: u64) -> bool {
        self.signal(id, "-TERM")
            .unwrap_or_else(|e| panic!("SIGTERM to member {id}: {e}"));
        let p = self.procs.remove(&id).expect("running member");
        self.exited(id, p, "after SIGTERM").await
    }

    /// Closes the member's standard input and waits for it to exit;
    /// returns whether it exited successfully.
    pub async fn close_stdin(&mut self, id: u64) -> bool {
        let mut p = self.procs.remove(&id).expect("running member");
        drop(p.stdin.take());
        self.exited(id, p, "when its stdin closed").await
    }

    /// Waits for member `id`'s process `p` to exit (within [`PATIENCE`]);
    /// returns whether it exited successfully.
    async fn exited(&self, id: u64, mut p: Proc, what: &str) -> bool {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = p.child.try_wait().expect("wait for ha-node") {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "member {id} did not exit {what}:\n{}",
                self.log(id)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The URL of `path` on member `id`'s client API.
    pub fn url(&self, id: u64, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.http[&id])
    }

    /// POSTs `body` as JSON; the status and the JSON answer.
    pub async fn post(
        &self,
        id: u64,
        path: &str,
        body: Value,
    ) -> Result<(StatusCode, Value), String> {
        let r = self
            .client
            .post(self.url(id, path))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let v = r.json::<Value>().await.map_err(|e| e.to_string())?;
        Ok((status, v))
    }

    /// GETs `path`; the status and the JSON answer.
    pub async fn get(&self, id: u64, path: &str) -> Result<(StatusCode, Value), String> {
        let r = self
            .client
            .get(self.url(id, path))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let v = r.json::<Value>().await.map_err(|e| e.to_string())?;
        Ok((status, v))
    }

    /// Waits until every running member answers `/health` 200 and they
    /// agree on one leader, which it returns.
    pub async fn healthy(&self) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut leaders = Vec::new();
            for &id in self.procs.keys() {
                match self.get(id, "/health").await {
                    Ok((StatusCode::OK, v)) => leaders.push(v["leader"].as_u64()),
                    _ => leaders.push(None),
                }
            }
            if let Some(Some(l)) = leaders.first().copied()
                && leaders.iter().all(|x| *x == Some(l))
                && self.procs.contains_key(&l)
            {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "members not healthy with one leader within {PATIENCE:?}: {leaders:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.peer
            .keys()
            .map(|id| format!("--- member {id} ---\n{}", self.log(*id)))
            .collect()
    }

    /// A put through member `id` (UTF-8 keys and values), retried while the
    /// member says nothing was applied (no leader yet, not reachable...).
    /// Returns once acknowledged.
    pub async fn put(&self, id: u64, key: &str, value: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let r = self
                .post(
                    id,
                    "/v1/kv/put?encoding=utf8",
                    json!({ "key": key, "value": value }),
                )
                .await;
            match r {
                Ok((StatusCode::OK, _)) => return,
                // A maybe-applied write retried is still fine here: the
                // value is the same, and the check is that it is present.
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "put {key} through member {id} not acknowledged within {PATIENCE:?}: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// A linearizable read of `key` through member `id`.
    pub async fn read(&self, id: u64, key: &str) -> Option<String> {
        let (status, v) = self
            .post(id, "/v1/kv/get?encoding=utf8", json!({ "key": key }))
            .await
            .unwrap_or_else(|e| panic!("get {key} from member {id}: {e}"));
        assert_eq!(status, StatusCode::OK, "get {key} from member {id}: {v}");
        v["kv"]["value"].as_str().map(str::to_string)
    }

    /// Every acknowledged write is on every running member (linearizable
    /// reads through each).
    pub async fn check_all(&self, acked: &BTreeMap<String, String>) {
        for &id in self.procs.keys() {
            for (k, v) in acked {
                assert_eq!(
                    self.read(id, k).await.as_deref(),
                    Some(v.as_str()),
                    "acknowledged write {k} missing or wrong on member {id}"
                );
            }
        }
    }

    /// The cluster id the bootstrap members derive.
    pub fn cluster_id(&self) -> ClusterId {
        let ids: Vec<NodeId> = self.initial.iter().map(|&id| NodeId(id)).collect();
        ClusterId::derive(&ids, "")
    }
}

/// For remote clients (`ha_client::RemoteKv`, `ha-bench kv --spawn`).
impl Cluster {
    /// The client-API addresses (`http://127.0.0.1:port`) of members
    /// `order`, in that order: a `RemoteKv` talks to the first one first.
    pub fn endpoints(&self, order: &[u64]) -> Vec<String> {
        order.iter().map(|id| self.url(*id, "")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..500).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
    }
}
