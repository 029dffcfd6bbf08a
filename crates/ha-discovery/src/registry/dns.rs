//! A DNS interface to discovery (feature `dns`): a responder
//! (hickory-server) answering SRV and A/AAAA queries for the healthy
//! instances of a service, from the member-local [`Discovery`] cache, so
//! it keeps answering while the group has no quorum.
//!
//! Names, under a configured domain (default `ha.`):
//! - `<service>.service.<namespace>.ha.`: SRV — one record per available
//!   instance (priority 1, weight = the instance's weight, its port), the
//!   target being the instance's own name (below) when its address is an
//!   IP address, with the A/AAAA record in the additional section, or the
//!   instance's host name otherwise; A/AAAA — the IP addresses of the
//!   available instances.
//! - `<instance>.<service>.service.<namespace>.ha.`: A/AAAA (and SRV) of
//!   one registered instance. `<instance>` is the instance id when it is
//!   a lowercase DNS label (`[a-z0-9_-]`, at most 63 bytes, not starting
//!   with `-`), else `i-` and 16 hex digits of a stable hash of the id.
//!
//! Answers carry the configured TTL (default 5 s); a service with no
//! registered instance is NXDOMAIN, a name that exists without records of
//! the asked type is NOERROR with no answer (both with the zone's SOA for
//! negative caching); names outside the domain are REFUSED. Answers are
//! shuffled (clients that take the first record spread their load); a
//! UDP answer larger than the client's buffer (512 bytes without EDNS) is
//! truncated and flagged, and the client retries over TCP, which the
//! responder also serves on the same port.
//!
//! Where answers come from: a service that is subscribed on its
//! [`Discovery`] (by the application, or by the responder on the first
//! query for it, up to [`DnsConfig::max_services`]) is answered from the
//! cache without a round trip to the group; any other is read from the
//! group within the discovery's query timeout (and from the cache if the
//! group does not answer). DNS names are matched in lowercase, so a
//! service (or namespace) is reachable by DNS only when its name is a
//! lowercase DNS label.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use rand::seq::SliceRandom;
use tokio::net::{TcpListener, UdpSocket};

use super::cache::Discovery;
use super::error::{DiscoveryError, DiscoveryResult};
use super::filter::InstanceFilter;
use super::health::stable_hash;
use super::instance::ServiceInstance;

/// How the DNS responder behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsConfig {
    /// Where to listen, UDP and TCP (default `127.0.0.1:8600`; port 0
    /// picks a free one, see [`DnsServer::local_addr`]).
    pub listen: SocketAddr,
    /// The domain answered for (default `ha.`): `web.service.default.ha.`.
    pub domain: String,
    /// TTL of every answer and of negative answers (default 5 s; whole
    /// seconds, rounded down).
    pub ttl: Duration,
    /// Which instances a service name returns (default: healthy and
    /// enabled; a protect threshold set here applies too).
    pub filter: InstanceFilter,
    /// Services the responder subscribes to on their first query, at most
    /// (default 1024); past that a query reads the group each time.
    pub max_services: usize,
    /// A TCP connection that sends no query for this long is closed
    /// (default 10 s).
    pub tcp_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8600)),
            domain: "ha.".to_owned(),
            ttl: Duration::from_secs(5),
            filter: InstanceFilter::default(),
            max_services: 1024,
            tcp_timeout: Duration::from_secs(10),
        }
    }
}

/// A DNS responder serving the services of one or more namespaces (one
/// [`Discovery`] each). Stops on [`DnsServer::shutdown`] or when dropped.
pub struct DnsServer {
    local_addr: SocketAddr,
    server: Server<Handler>,
}

impl fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Binds UDP and TCP on `config.listen` and starts answering for the
    /// namespaces of `namespaces` (on the current tokio runtime).
    ///
    /// # Errors
    /// [`DiscoveryError::InvalidConfig`] for a domain or a namespace that
    /// is not made of lowercase DNS labels, two discoveries of the same
    /// namespace, none at all, or a TTL over `u32::MAX` seconds;
    /// [`DiscoveryError::Bind`] when a socket cannot be bound.
    pub async fn start(
        config: DnsConfig,
        namespaces: impl IntoIterator<Item = Discovery>,
    ) -> DiscoveryResult<DnsServer> {
        let bad = |reason| DiscoveryError::InvalidConfig { reason };
        let domain = config.domain.trim_end_matches('.');
        let domain_labels: Vec<&str> = domain.split('.').collect();
        if !domain_labels.iter().all(|l| is_dns_label(l)) {
            return Err(bad(
                "the DNS domain must be lowercase DNS labels separated by dots",
            ));
        }
        let zone = Name::from_labels(domain_labels.iter().map(|l| l.as_bytes()))
            .map_err(|_| bad("the DNS domain is not a valid name"))?;
        let ttl = u32::try_from(config.ttl.as_secs())
            .map_err(|_| bad("the DNS TTL must fit in 32 bits of seconds"))?;
        let mut by_namespace = HashMap::new();
        for d in namespaces {
            let ns = d.registry().namespace_name().to_owned();
            if !is_dns_label(&ns) {
                return Err(bad(
                    "a namespace served by DNS must be a lowercase DNS label",
                ));
            }
            if by_namespace.insert(ns, d).is_some() {
                return Err(bad("two discoveries of the same namespace"));
            }
        }
        if by_namespace.is_empty() {
            return Err(bad("the DNS responder needs at least one namespace"));
        }
        let soa = soa_record(&zone, ttl).map_err(|_| bad("the DNS domain is too long"))?;
        let bind_error = |e: std::io::Error| DiscoveryError::Bind {
            addr: config.listen,
            source: Arc::new(e),
        };
        let udp = UdpSocket::bind(config.listen).await.map_err(bind_error)?;
        let local_addr = udp.local_addr().map_err(bind_error)?;
        // The same port for TCP (truncated answers are retried there).
        let tcp = TcpListener::bind(local_addr)
            .await
            .map_err(|e| DiscoveryError::Bind {
                addr: local_addr,
                source: Arc::new(e),
            })?;
        let handler = Handler {
            zone,
            ttl,
            soa,
            filter: config.filter.clone(),
            max_services: config.max_services,
            on_demand: AtomicUsize::new(0),
            namespaces: by_namespace,
        };
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, config.tcp_timeout, 64);
        tracing::info!(addr = %local_addr, domain = %config.domain, "DNS responder listening");
        Ok(DnsServer { local_addr, server })
    }

    /// The address the responder listens on (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening and waits for the server's tasks to end (a socket
    /// error that had stopped it earlier is logged).
    pub async fn shutdown(mut self) {
        if let Err(e) = self.server.shutdown_gracefully().await {
            tracing::warn!(error = %e, "the DNS responder had stopped with an error");
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // Stops the accept loops; their tasks end on their own.
        self.server.shutdown_token().cancel();
    }
}

/// `[a-z0-9_-]{1,63}`, not starting with `-`.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The label naming an instance in DNS (see the module docs).
pub(crate) fn instance_label(id: &str) -> String {
    if is_dns_label(id) {
        id.to_owned()
    } else {
        format!("i-{:016x}", stable_hash(&[b"dns-instance", id.as_bytes()]))
    }
}

fn soa_record(zone: &Name, ttl: u32) -> Result<Record, hickory_server::proto::ProtoError> {
    let mname = zone.prepend_label("ns")?;
    let rname = zone.prepend_label("hostmaster")?;
    // refresh, retry, expire: conventional values; nothing transfers
    // this zone. minimum: the negative-caching TTL.
    let soa = SOA::new(mname, rname, 1, 3600, 600, 86400, ttl);
    Ok(Record::from_rdata(zone.clone(), ttl, RData::SOA(soa)))
}

/// What a query name is, relative to the zone.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// Not in the zone.
    Outside,
    /// The zone's apex.
    Apex,
    /// A name in the zone that has no records but has names below it
    /// (`<ns>.ha.`, `service.<ns>.ha.`).
    EmptyNonTerminal,
    /// `<service>.service.<ns>.ha.`
    Service { namespace: String, service: String },
    /// `<instance>.<service>.service.<ns>.ha.`
    Instance {
        namespace: String,
        service: String,
        instance: String,
    },
    /// Anything else in the zone.
    NoSuchName,
}

/// Classifies `name` (already lowercase) against `zone`.
fn classify(zone: &Name, name: &Name, namespaces: &HashMap<String, Discovery>) -> Target {
    if !zone.zone_of(name) {
        return Target::Outside;
    }
    let labels: Vec<&[u8]> = name.iter().collect();
    let rel = &labels[..labels.len() - zone.iter().count()];
    let text = |l: &[u8]| std::str::from_utf8(l).ok().map(str::to_owned);
    let known_ns = |l: &[u8]| text(l).filter(|ns| namespaces.contains_key(ns));
    match rel {
        [] => Target::Apex,
        [ns] if known_ns(ns).is_some() => Target::EmptyNonTerminal,
        [svc_word, ns] if *svc_word == b"service" && known_ns(ns).is_some() => {
            Target::EmptyNonTerminal
        }
        [service, svc_word, ns] if *svc_word == b"service" => match (known_ns(ns), text(service)) {
            (Some(namespace), Some(service)) => Target::Service { namespace, service },
            _ => Target::NoSuchName,
        },
        [instance, service, svc_word, ns] if *svc_word == b"service" => {
            match (known_ns(ns), text(service), text(instance)) {
                (Some(namespace), Some(service), Some(instance)) => Target::Instance {
                    namespace,
                    service,
                    instance,
                },
                _ => Target::NoSuchName,
            }
        }
        _ => Target::NoSuchName,
    }
}

/// A response before encoding.
#[derive(Debug, Default)]
struct Answer {
    code: ResponseCode,
    answers: Vec<Record>,
    additionals: Vec<Record>,
    /// The zone's SOA goes in the authority section (negative answers).
    soa: bool,
}

impl Answer {
    fn code(code: ResponseCode) -> Answer {
        Answer {
            code,
            ..Answer::default()
        }
    }
    fn negative(code: ResponseCode) -> Answer {
        Answer {
            code,
            soa: true,
            ..Answer::default()
        }
    }
}

/// The records of one instance.
struct Named<'a> {
    instance: &'a ServiceInstance,
    /// `<instance>.<service>.service.<ns>.<zone>`
    name: Name,
    ip: Option<IpAddr>,
}

impl<'a> Named<'a> {
    /// `instance` under `service_name`.
    fn of(service_name: &Name, instance: &'a ServiceInstance) -> Option<Named<'a>> {
        Some(Named {
            instance,
            name: service_name
                .prepend_label(instance_label(&instance.id))
                .ok()?,
            ip: instance.address.parse().ok(),
        })
    }

    fn address_records(&self, qtype: RecordType, ttl: u32) -> Option<Record> {
        match (self.ip?, qtype) {
            (IpAddr::V4(v4), RecordType::A) => {
                Some(Record::from_rdata(self.name.clone(), ttl, RData::A(A(v4))))
            }
            (IpAddr::V6(v6), RecordType::AAAA) => Some(Record::from_rdata(
                self.name.clone(),
                ttl,
                RData::AAAA(AAAA(v6)),
            )),
            _ => None,
        }
    }

    /// The SRV record owned by `owner`, and the target's address record
    /// (for the additional section) when the target is ours.
    fn srv(&self, owner: &Name, ttl: u32) -> Option<(Record, Option<Record>)> {
        let weight = u16::try_from(self.instance.weight).unwrap_or(u16::MAX);
        let (target, glue) = match self.ip {
            Some(IpAddr::V4(_)) => (self.name.clone(), self.address_records(RecordType::A, ttl)),
            Some(IpAddr::V6(_)) => (
                self.name.clone(),
                self.address_records(RecordType::AAAA, ttl),
            ),
            None => {
                // A host name: the client resolves it itself.
                let host = self.instance.address.trim_end_matches('.');
                match Name::from_ascii(format!("{host}.")) {
                    Ok(name) => (name, None),
                    Err(_) => {
                        tracing::debug!(instance = %self.instance.id, address = %self.instance.address,
                            "address is neither an IP address nor a host name; left out of SRV answers");
                        return None;
                    }
                }
            }
        };
        let srv = SRV::new(1, weight, self.instance.port, target);
        Some((
            Record::from_rdata(owner.clone(), ttl, RData::SRV(srv)),
            glue,
        ))
    }
}

struct Handler {
    zone: Name,
    ttl: u32,
    soa: Record,
    filter: InstanceFilter,
    max_services: usize,
    on_demand: AtomicUsize,
    namespaces: HashMap<String, Discovery>,
}

impl Handler {
    /// Every registered instance of `service` (`None`: the group did not
    /// answer and nothing is cached).
    async fn instances(
        &self,
        discovery: &Discovery,
        service: &str,
    ) -> Option<Vec<ServiceInstance>> {
        let all = InstanceFilter::all();
        if discovery.is_subscribed(service) {
            if let Some(cached) = discovery.cached(service, &all) {
                return Some(cached);
            }
        } else if self
            .on_demand
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_services).then_some(n + 1)
            })
            .is_ok()
        {
            // From now on the cache follows this service.
            if discovery.subscribe(service).is_err() {
                return Some(Vec::new());
            }
        }
        match discovery.instances(service, &all).await {
            Ok(list) => Some(list),
            Err(DiscoveryError::InvalidName { .. }) => Some(Vec::new()),
            Err(e) => {
                tracing::debug!(service, error = %e, "DNS: no answer from the group and nothing cached");
                None
            }
        }
    }

    async fn answer(&self, name: &Name, qtype: RecordType) -> Answer {
        let target = classify(&self.zone, name, &self.namespaces);
        let (namespace, service, instance) = match target {
            Target::Outside => return Answer::code(ResponseCode::Refused),
            Target::Apex => {
                if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                    return Answer {
                        answers: vec![self.soa.clone()],
                        ..Answer::default()
                    };
                }
                return Answer::negative(ResponseCode::NoError);
            }
            Target::EmptyNonTerminal => return Answer::negative(ResponseCode::NoError),
            Target::NoSuchName => return Answer::negative(ResponseCode::NXDomain),
            Target::Service { namespace, service } => (namespace, service, None),
            Target::Instance {
                namespace,
                service,
                instance,
            } => (namespace, service, Some(instance)),
        };
        let Some(discovery) = self.namespaces.get(&namespace) else {
            return Answer::negative(ResponseCode::NXDomain);
        };
        let Some(all) = self.instances(discovery, &service).await else {
            return Answer::code(ResponseCode::ServFail);
        };
        if all.is_empty() {
            return Answer::negative(ResponseCode::NXDomain);
        }
        let service_name = match self.zone.prepend_label(namespace.as_bytes()).and_then(|n| {
            n.prepend_label("service")?
                .prepend_label(service.as_bytes())
        }) {
            Ok(n) => n,
            Err(_) => return Answer::negative(ResponseCode::NXDomain),
        };
        let ttl = self.ttl;
        let mut answer = Answer::default();
        match instance {
            Some(label) => {
                let Some(one) = all
                    .iter()
                    .find(|i| instance_label(&i.id) == label)
                    .and_then(|i| Named::of(&service_name, i))
                else {
                    return Answer::negative(ResponseCode::NXDomain);
                };
                match qtype {
                    RecordType::A | RecordType::AAAA => {
                        answer.answers.extend(one.address_records(qtype, ttl));
                    }
                    RecordType::SRV => {
                        if let Some((srv, glue)) = one.srv(name, ttl) {
                            answer.answers.push(srv);
                            answer.additionals.extend(glue);
                        }
                    }
                    _ => {}
                }
            }
            None => {
                let available = self.filter.apply(&all);
                let named: Vec<Named<'_>> = available
                    .iter()
                    .filter_map(|i| Named::of(&service_name, i))
                    .collect();
                match qtype {
                    RecordType::A | RecordType::AAAA => {
                        answer
                            .answers
                            .extend(named.iter().filter_map(|n| n.address_records(qtype, ttl)));
                    }
                    RecordType::SRV => {
                        for (srv, glue) in named.iter().filter_map(|n| n.srv(name, ttl)) {
                            answer.answers.push(srv);
                            answer.additionals.extend(glue);
                        }
                    }
                    _ => {}
                }
            }
        }
        // Clients that take the first record spread their load.
        answer.answers.shuffle(&mut rand::thread_rng());
        answer.soa = answer.answers.is_empty();
        answer
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let answer = if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            Answer::code(ResponseCode::NotImp)
        } else {
            match request.request_info() {
                Err(_) => Answer::code(ResponseCode::FormErr),
                Ok(info) if info.query.query_class() != DNSClass::IN => {
                    Answer::code(ResponseCode::Refused)
                }
                Ok(info) => {
                    let name = Name::from(info.query.name());
                    let qtype = info.query.query_type();
                    self.answer(&name, qtype).await
                }
            }
        };
        metadata.response_code = answer.code;
        metadata.authoritative = !matches!(
            answer.code,
            ResponseCode::Refused | ResponseCode::NotImp | ResponseCode::FormErr
        );
        // A client that sent EDNS gets EDNS back, and answers up to the
        // buffer it announced (hickory truncates past it).
        let edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(theirs.max_payload().max(512));
            ours.set_version(0);
            ours
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let soa = answer.soa.then_some(&self.soa);
        let response = builder.build(
            metadata,
            answer.answers.iter(),
            std::iter::empty(),
            soa,
            answer.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "DNS: cannot send a response");
                let mut failed = metadata;
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: failed,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_labels_are_the_id_when_it_is_a_dns_label_else_a_stable_hash() {
        assert_eq!(instance_label("web-1"), "web-1");
        assert_eq!(instance_label("a_b"), "a_b");
        for id in ["Web1", "10.0.0.1:80", "-x", "é", &"x".repeat(64)] {
            let l = instance_label(id);
            assert!(
                l.starts_with("i-") && l.len() == 18 && is_dns_label(&l),
                "{id} -> {l}"
            );
            assert_eq!(l, instance_label(id), "stable");
        }
        assert_ne!(instance_label("Web1"), instance_label("WEB1"));
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "web", "a-b", "a_b", "_srv", "0abc", &"x".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "A", "a.b", "a b", "é", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}
