//! HTTPS health checks against a local HTTPS endpoint with a self-signed
//! certificate (rcgen): with `tls_skip_verify` a failing endpoint flips
//! unhealthy then healthy on every member; without it the certificate is
//! refused (unhealthy); plain HTTP to the TLS port fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ha_discovery::{HealthCheck, HealthChecker, HealthStatus, InstanceFilter, ServiceInstance};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{Endpoint, Group, eventually, health_everywhere, local_ids};

/// An axum listener that does the TLS handshake of each connection.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // A client that refuses the certificate (or speaks plain
            // HTTP) fails the handshake: wait for the next one.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A local HTTPS endpoint (self-signed for 127.0.0.1) whose `/health`
/// answers 200 or 503 at the test's command.
async fn start_tls_endpoint() -> Endpoint {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .expect("self-signed certificate");
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("server certificate");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let port = tcp.local_addr().expect("local addr").port();
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    };
    Endpoint::serving(port, |app| async move {
        let _ = axum::serve(listener, app).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_https_endpoint_goes_unhealthy_then_healthy_and_certificates_are_verified() {
    let g = Group::start().await;
    let endpoint = start_tls_endpoint().await;
    let mut checkers = Vec::new();
    for i in 0..3 {
        let session = g.session(i).await;
        checkers.push(
            HealthChecker::builder(&session, format!("member-{i}"))
                .scan_interval(Duration::from_millis(50))
                .start()
                .await
                .expect("checker starts"),
        );
    }
    let registry = g.registry(0);
    let quick = |check: HealthCheck| {
        check
            .interval(Duration::from_millis(50))
            .timeout(Duration::from_millis(1000))
            .thresholds(2, 2)
    };
    let on_endpoint = |id: &str, check: HealthCheck| {
        ServiceInstance::new("secure", id, "127.0.0.1", endpoint.port).check(quick(check))
    };
    for instance in [
        // Self-signed: only checkable without verification.
        on_endpoint(
            "skip",
            HealthCheck::https("/health", 200).tls_skip_verify(true),
        ),
        // Verified: the self-signed certificate chains to no trusted root.
        on_endpoint("strict", HealthCheck::https("/health", 200)),
        // Plain HTTP to a TLS port.
        on_endpoint("plain", HealthCheck::http("/health", 200)),
    ] {
        registry
            .register_persistent(&instance)
            .await
            .expect("register");
    }
    eventually("the certificate-verifying check fails", || async {
        health_everywhere(&g, "secure", "strict").await == [Some(HealthStatus::Unhealthy); 3]
    })
    .await;
    eventually("plain HTTP to the TLS port fails", || async {
        health_everywhere(&g, "secure", "plain").await == [Some(HealthStatus::Unhealthy); 3]
    })
    .await;
    assert_eq!(
        health_everywhere(&g, "secure", "skip").await,
        [Some(HealthStatus::Healthy); 3],
        "the HTTPS check without verification passes"
    );

    endpoint.healthy.store(false, Ordering::SeqCst);
    let t = eventually("skip is unhealthy on every member", || async {
        health_everywhere(&g, "secure", "skip").await == [Some(HealthStatus::Unhealthy); 3]
    })
    .await;
    println!("failing HTTPS endpoint seen unhealthy everywhere after {t:?}");
    assert!(
        local_ids(&registry, "secure", &InstanceFilter::new())
            .await
            .is_empty(),
        "no instance of the service is healthy"
    );
    endpoint.healthy.store(true, Ordering::SeqCst);
    let t = eventually("skip is healthy again on every member", || async {
        health_everywhere(&g, "secure", "skip").await == [Some(HealthStatus::Healthy); 3]
    })
    .await;
    println!("recovered HTTPS endpoint seen healthy everywhere after {t:?}");
    assert_eq!(
        local_ids(&registry, "secure", &InstanceFilter::new()).await,
        ["skip"],
        "verification still refuses the certificate, plain HTTP still fails"
    );
    for c in &checkers {
        c.stop().await.expect("checker stops");
    }
    g.stop().await;
}
