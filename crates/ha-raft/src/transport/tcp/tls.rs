//! Mutual TLS on peer connections (feature `tls`): rustls on ring.
//!
//! Every member presents a certificate signed by the group's CA whose
//! subject alternative names include the DNS name `member-<id>`
//! ([`member_name`]); it checks its peers' certificates against the same
//! CA. The dialer checks the listener's certificate names the member it
//! means to reach (ordinary TLS server-name verification with
//! `member-<id>`); the listener checks, after the hello, that the dialer's
//! certificate names the sender the hello claims. A certificate may carry
//! other names too (host names, IP addresses for the client API). It must
//! allow both TLS server and TLS client use (extended key usages
//! `serverAuth` and `clientAuth`), since members dial each other.
//!
//! The CA, certificate and key are files, re-read when one of them changes
//! (size or modification time, checked at each new connection): rotation
//! needs no restart, and connections already open keep their session. A
//! rotation caught half-written (a file that does not parse) keeps the
//! previous configuration and logs why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use ha_core::NodeId;
use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The DNS name a member's certificate carries: `member-<id>`.
pub fn member_name(id: NodeId) -> String {
    format!("member-{}", id.0)
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable of what it should.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        what: String,
    },
    /// rustls refused the material (a key that does not match, a CA that is
    /// not a certificate, ...).
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// Where a member's TLS material lives: PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The group's CA certificate(s): peers (and, on ha-node's client API,
    /// client certificates) are verified against these.
    pub ca: PathBuf,
    /// This member's certificate chain, leaf first.
    pub cert: PathBuf,
    /// This member's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Size and modification time of each file: a change in either reloads.
type Stamp = [(u64, Option<SystemTime>); 3];

struct Loaded {
    stamp: Stamp,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// How a listener treats client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate signed by the CA (peers).
    Required,
    /// A client may present one (then it must be signed by the CA) or none
    /// (ha-node's client API by default).
    Optional,
}

/// A member's TLS configuration, reloaded from its files when they change.
/// Cheap to share (`Arc`); one per listener kind.
pub struct PeerTls {
    files: TlsFiles,
    client_auth: ClientAuth,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("files", &self.files)
            .field("client_auth", &self.client_auth)
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn stamp(files: &TlsFiles) -> Stamp {
    let one = |p: &Path| match std::fs::metadata(p) {
        Ok(m) => (m.len(), m.modified().ok()),
        Err(_) => (0, None),
    };
    [one(&files.ca), one(&files.cert), one(&files.key)]
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("not PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: format!("no private key in it: {e}"),
    })
}

fn rustls_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Rustls(e.to_string())
}

fn build(files: &TlsFiles, client_auth: ClientAuth) -> Result<Loaded, TlsError> {
    let stamp = stamp(files);
    let mut roots = RootCertStore::empty();
    for ca in certs(&files.ca)? {
        roots.add(ca).map_err(rustls_err)?;
    }
    let roots = Arc::new(roots);
    let chain = certs(&files.cert)?;
    let key = key(&files.key)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
    let verifier = match client_auth {
        ClientAuth::Required => verifier,
        ClientAuth::Optional => verifier.allow_unauthenticated(),
    }
    .build()
    .map_err(rustls_err)?;
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(rustls_err)?;
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(rustls_err)?;
    Ok(Loaded {
        stamp,
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

impl PeerTls {
    /// Loads the files once, now: a member with unusable TLS material
    /// refuses to start rather than fail every connection later.
    ///
    /// # Errors
    /// A file that cannot be read or holds no usable PEM; a key that does
    /// not match the certificate.
    pub fn load(files: TlsFiles, client_auth: ClientAuth) -> Result<Arc<PeerTls>, TlsError> {
        let loaded = build(&files, client_auth)?;
        Ok(Arc::new(PeerTls {
            files,
            client_auth,
            loaded: Mutex::new(loaded),
        }))
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Re-reads the files if any changed since the last load. A change that
    /// does not load (a rotation caught half-written) keeps the previous
    /// configuration and returns the error; the next check tries again.
    ///
    /// # Errors
    /// What [`load`](Self::load) reports.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        let mut loaded = self.loaded.lock();
        if loaded.stamp == now {
            return Ok(false);
        }
        let fresh = build(&self.files, self.client_auth)?;
        *loaded = fresh;
        tracing::info!(cert = %self.files.cert.display(), "TLS certificates reloaded");
        Ok(true)
    }

    fn current(&self) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        if let Err(e) = self.reload_if_changed() {
            tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous certificates");
        }
        let loaded = self.loaded.lock();
        (loaded.server.clone(), loaded.client.clone())
    }

    /// The listener's configuration now (reloaded first if the files
    /// changed).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current().0
    }

    /// The dialer's configuration now (reloaded first if the files
    /// changed): verifies servers against the CA, presents this member's
    /// certificate.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current().1
    }
}

/// Whether `cert` (a verified peer's leaf certificate) names member `id`.
pub(crate) fn names_member(cert: &CertificateDer<'_>, id: NodeId) -> bool {
    let Ok(name) = ServerName::try_from(member_name(id)) else {
        return false;
    };
    match ParsedCertificate::try_from(cert) {
        Ok(parsed) => rustls::client::verify_server_name(&parsed, &name).is_ok(),
        Err(_) => false,
    }
}

/// The server name a dialer verifies: `member-<id>`.
pub(crate) fn server_name(id: NodeId) -> Option<ServerName<'static>> {
    ServerName::try_from(member_name(id)).ok()
}
