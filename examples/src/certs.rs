//! Certificates for a group (rcgen): a CA, and per member a certificate
//! naming it `member-<id>` (plus host names and IP addresses for its
//! client API), usable as TLS server and client. Used by `ha-certs`
//! (`scripts/gen-certs`) and by the process tests.
//!
//! A CA generated here is a plain file-based CA for a private group: keep
//! `ca.key` offline once the members have their certificates.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused (a bad name, ...).
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A certificate authority for one group.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// How long certificates are valid.
#[derive(Clone, Copy, Debug)]
pub enum Validity {
    /// rcgen's default span (from 1975 to 4096): for tests and demos.
    Default,
    /// Already expired (valid only during the year 2000): for tests.
    Expired,
}

impl Ca {
    /// A new CA (its own key) named `name`.
    ///
    /// # Errors
    /// When rcgen fails.
    pub fn new(name: &str) -> Result<Ca, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    /// A CA from its certificate and key (PEM), to issue more certificates
    /// (a member that joins later).
    ///
    /// # Errors
    /// When either does not parse.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Ca {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate the members and clients trust, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA's private key, PEM: keep it away from the members.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate for `names` (DNS names or IP addresses), valid for TLS
    /// server and client use.
    ///
    /// # Errors
    /// When a name is not valid or rcgen fails.
    pub fn issue(&self, names: &[String], validity: Validity) -> Result<Issued, CertError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if let Validity::Expired = validity {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2000, 12, 31);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A member's certificate: `member-<id>` first, then `extra` names
    /// (the host names and IPs its client API is reached by).
    ///
    /// # Errors
    /// As [`Ca::issue`].
    pub fn issue_member(&self, id: u64, extra: &[String]) -> Result<Issued, CertError> {
        let mut names = vec![format!("member-{id}")];
        names.extend(extra.iter().cloned());
        self.issue(&names, Validity::Default)
    }
}

/// Writes `text` to `path` through a temporary file and a rename, so a
/// member re-reading it never sees it half-written.
///
/// # Errors
/// When the file cannot be written.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Where [`write_member`] put a member's files.
#[derive(Clone, Debug)]
pub struct MemberFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The member's certificate.
    pub cert: PathBuf,
    /// The member's key.
    pub key: PathBuf,
}

/// Writes `ca.pem` (if `ca_pem` is given), `member-<id>.pem` and
/// `member-<id>.key` into `dir`.
///
/// # Errors
/// When a file cannot be written.
pub fn write_member(
    dir: &Path,
    id: u64,
    ca_pem: &str,
    issued: &Issued,
) -> Result<MemberFiles, CertError> {
    let files = MemberFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("member-{id}.pem")),
        key: dir.join(format!("member-{id}.key")),
    };
    write_atomically(&files.ca, ca_pem)?;
    write_atomically(&files.cert, &issued.cert)?;
    write_atomically(&files.key, &issued.key)?;
    Ok(files)
}
