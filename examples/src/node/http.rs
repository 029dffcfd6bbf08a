//! The client API's listener: optional TLS, connection limits, a deadline
//! for the TLS handshake and for each request's headers, and a bound on
//! requests in flight per connection. Connections are served by hyper
//! (HTTP/1.1) one task each; a stop drains them gracefully.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use ha_raft::tls::PeerTls;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;
use tower::limit::ConcurrencyLimit;

/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The client API's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once; one more is closed at once, unread.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// A TLS handshake, and each request's headers, must complete within
    /// this time, or the connection is closed (an idle keep-alive
    /// connection too).
    pub handshake_timeout: Duration,
    /// Requests in flight on one connection. With HTTP/1.1 a connection
    /// carries one request at a time (pipelined ones wait unread); with
    /// HTTP/2 (the etcd gateway) it is the streams a connection may open.
    pub max_in_flight_per_connection: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            max_connections_per_ip: 256,
            handshake_timeout: Duration::from_secs(10),
            max_in_flight_per_connection: 16,
        }
    }
}

/// Counters of the client API's listener (exported on `/metrics`).
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Connections accepted and served.
    pub accepted: Counter,
    /// Connections closed at once because a limit was reached.
    pub over_limit: Counter,
    /// TLS handshakes that failed or timed out.
    pub tls_failed: Counter,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A connection counted in the limits until dropped.
struct Slot {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

fn admit(open: &Arc<Mutex<Open>>, limits: &HttpLimits, ip: IpAddr) -> Option<Slot> {
    let mut o = open.lock();
    let from_ip = o.per_ip.get(&ip).copied().unwrap_or(0);
    if o.total >= limits.max_connections || from_ip >= limits.max_connections_per_ip {
        return None;
    }
    o.total += 1;
    *o.per_ip.entry(ip).or_default() += 1;
    Some(Slot {
        open: open.clone(),
        ip,
    })
}

/// The HTTP version a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1: the JSON client API.
    Http1,
    /// HTTP/2 (prior knowledge, or ALPN `h2` under TLS): gRPC, the etcd
    /// gateway.
    Http2,
}

/// A client connection's bytes: plain TCP or TLS.
type HttpIo = Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

/// Serves `router` on `listener` until `stop` resolves, then lets open
/// requests finish for up to `drain` (watch streams end once the member
/// stopped) and closes what is left.
#[allow(clippy::too_many_arguments)] // one call site per listener
pub async fn serve(
    listener: TcpListener,
    router: Router,
    protocol: Protocol,
    limits: HttpLimits,
    tls: Option<Arc<PeerTls>>,
    counters: Arc<HttpCounters>,
    stop: impl Future<Output = ()>,
    drain: Duration,
) {
    let open = Arc::new(Mutex::new(Open::default()));
    let graceful = GracefulShutdown::new();
    // Connection tasks: reaped as they end; aborted if the drain runs out.
    let mut tasks = tokio::task::JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => r,
        };
        let (tcp, remote): (TcpStream, SocketAddr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(slot) = admit(&open, &limits, remote.ip()) else {
            counters.over_limit.inc();
            tracing::debug!(%remote, "HTTP connection limit reached; connection closed");
            continue;
        };
        counters.accepted.inc();
        let _ = tcp.set_nodelay(true);
        let watcher = graceful.watcher();
        let router = router.clone();
        let tls = tls.clone();
        let counters = counters.clone();
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let _slot = slot;
            let io: HttpIo = match tls {
                None => Either::Left(tcp),
                Some(tls) => {
                    let config = match protocol {
                        Protocol::Http1 => tls.server_config(),
                        // gRPC clients insist on ALPN `h2`.
                        Protocol::Http2 => {
                            let mut c = (*tls.server_config()).clone();
                            c.alpn_protocols = vec![b"h2".to_vec()];
                            Arc::new(c)
                        }
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await
                    {
                        Ok(Ok(s)) => Either::Right(Box::new(s)),
                        Ok(Err(e)) => {
                            counters.tls_failed.inc();
                            tracing::info!(%remote, error = %e, "HTTP TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            counters.tls_failed.inc();
                            tracing::info!(%remote, "HTTP TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let service = TowerToHyperService::new(ConcurrencyLimit::new(
                router,
                limits.max_in_flight_per_connection,
            ));
            let result = match protocol {
                Protocol::Http1 => {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.handshake_timeout)
                        .serve_connection(TokioIo::new(io), service);
                    watcher.watch(conn).await
                }
                Protocol::Http2 => {
                    // Streams in flight per connection: the same bound.
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .max_concurrent_streams(limits.max_in_flight_per_connection as u32)
                        .serve_connection(TokioIo::new(io), service);
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still open after {drain:?}; stopping anyway");
    }
    tasks.abort_all();
}
