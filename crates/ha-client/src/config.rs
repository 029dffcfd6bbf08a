//! Building a [`RemoteKv`]: member addresses, deadlines, and the typed
//! errors of a bad configuration.

use std::time::Duration;

use crate::client::RemoteKv;

/// Why a [`RemoteKvBuilder`] could not build a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientConfigError {
    /// No member address was given.
    #[error("no member address given; a client needs at least one")]
    NoEndpoints,
    /// A member address is not usable.
    #[error("member address `{endpoint}`: {reason}")]
    InvalidEndpoint {
        /// The address as given.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same member address twice.
    #[error("member address `{0}` is given twice")]
    DuplicateEndpoint(String),
    /// A duration that must be positive is zero.
    #[error("{field} must be greater than zero")]
    Zero {
        /// Which setting.
        field: &'static str,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

/// Builds a [`RemoteKv`]; see [`RemoteKv::builder`].
#[derive(Clone, Debug)]
pub struct RemoteKvBuilder {
    pub(crate) endpoints: Vec<String>,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    #[cfg(feature = "tls")]
    tls_ca_pem: Option<Vec<u8>>,
    #[cfg(feature = "tls")]
    tls_identity_pem: Option<Vec<u8>>,
}

impl RemoteKvBuilder {
    pub(crate) fn new(endpoints: Vec<String>) -> Self {
        RemoteKvBuilder {
            endpoints,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            #[cfg(feature = "tls")]
            tls_ca_pem: None,
            #[cfg(feature = "tls")]
            tls_identity_pem: None,
        }
    }

    /// Trusts the group's CA (PEM) for `https://` members, and only it:
    /// the system's roots are not used. Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// Presents this client certificate (PEM: the certificate chain and
    /// its private key, concatenated) to members that ask for one. Feature
    /// `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_identity_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_identity_pem = Some(pem.into());
        self
    }

    /// The default deadline of a call (5 s); [`ha_core::KvOptions::timeout`]
    /// overrides it per call. Failover to other members happens within it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting to one member may take before the next is
    /// tried (1 s; also bounded by the call's deadline).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The client. Connects to nothing yet.
    ///
    /// # Errors
    /// [`ClientConfigError`]: no address, an address that is not
    /// `http://host:port` (or `https://host:port` with the `tls` feature
    /// and a CA), a duplicate, a zero duration, a CA or identity that does
    /// not parse.
    pub fn build(self) -> Result<RemoteKv, ClientConfigError> {
        if self.endpoints.is_empty() {
            return Err(ClientConfigError::NoEndpoints);
        }
        if self.timeout.is_zero() {
            return Err(ClientConfigError::Zero { field: "timeout" });
        }
        if self.connect_timeout.is_zero() {
            return Err(ClientConfigError::Zero {
                field: "connect_timeout",
            });
        }
        #[cfg(feature = "tls")]
        let tls = self.tls_ca_pem.is_some();
        #[cfg(not(feature = "tls"))]
        let tls = false;
        let mut bases: Vec<String> = Vec::with_capacity(self.endpoints.len());
        for e in &self.endpoints {
            let base = normalize(e, tls)?;
            if bases.contains(&base) {
                return Err(ClientConfigError::DuplicateEndpoint(e.clone()));
            }
            bases.push(base);
        }
        #[allow(unused_mut)]
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .no_proxy()
            .tcp_nodelay(true);
        #[cfg(feature = "tls")]
        if let Some(ca) = &self.tls_ca_pem {
            let ca = reqwest::Certificate::from_pem(ca).map_err(ClientConfigError::Http)?;
            http = http
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca);
            if let Some(id) = &self.tls_identity_pem {
                http = http
                    .identity(reqwest::Identity::from_pem(id).map_err(ClientConfigError::Http)?);
            }
        }
        let http = http.build().map_err(ClientConfigError::Http)?;
        Ok(RemoteKv::new(bases, http, self.timeout))
    }
}

/// `http://host:port` (or, when `tls`, `https://host:port`) with nothing
/// after it, as `scheme://host:port`.
fn normalize(endpoint: &str, tls: bool) -> Result<String, ClientConfigError> {
    let bad = |reason| ClientConfigError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason,
    };
    let url = reqwest::Url::parse(endpoint).map_err(|_| bad("not a URL like http://host:port"))?;
    let scheme = match url.scheme() {
        "http" => "http",
        "https" if tls => "https",
        "https" => {
            return Err(bad(
                "https needs the `tls` feature and the group's CA (tls_ca_pem)",
            ));
        }
        _ => return Err(bad("the scheme must be http or https")),
    };
    let host = url.host_str().ok_or_else(|| bad("no host"))?;
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("give only scheme, host and port"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials in the address are not supported"));
    }
    let port = url.port_or_known_default().ok_or_else(|| bad("no port"))?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(format!("{scheme}://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(endpoints: &[&str]) -> ClientConfigError {
        match RemoteKv::builder(endpoints.iter().copied()).build() {
            Ok(_) => panic!("{endpoints:?} built"),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_configurations_are_typed_errors() {
        assert!(matches!(err(&[]), ClientConfigError::NoEndpoints));
        for bad in [
            "127.0.0.1:8001",
            "https://127.0.0.1:8001",
            "ftp://h:1",
            "http://h:1/v1",
            "http://h:1/?x=1",
            "http://u:p@h:1",
        ] {
            assert!(
                matches!(err(&[bad]), ClientConfigError::InvalidEndpoint { .. }),
                "{bad}"
            );
        }
        assert!(matches!(
            err(&["http://127.0.0.1:1", "http://127.0.0.1:1/"]),
            ClientConfigError::DuplicateEndpoint(_)
        ));
        let zero = RemoteKv::builder(["http://127.0.0.1:1"])
            .timeout(Duration::ZERO)
            .build();
        assert!(matches!(
            zero,
            Err(ClientConfigError::Zero { field: "timeout" })
        ));
    }

    #[test]
    fn addresses_normalize() {
        assert_eq!(
            normalize("http://127.0.0.1:8001/", false).ok().as_deref(),
            Some("http://127.0.0.1:8001")
        );
        assert_eq!(
            normalize("http://h", false).ok().as_deref(),
            Some("http://h:80")
        );
        assert_eq!(
            normalize("http://[::1]:9", false).ok().as_deref(),
            Some("http://[::1]:9")
        );
    }
}
