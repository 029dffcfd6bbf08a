//! The DNS interface (feature `dns`): real DNS queries (hickory's client)
//! over UDP and TCP on loopback to a `DnsServer` on one member of a
//! 3-member group: SRV with the A/AAAA of its targets in the additional
//! section, A/AAAA, NXDOMAIN/NODATA with the zone's SOA, REFUSED outside
//! the zone, changes followed, answers kept without quorum, truncation
//! over UDP and the whole answer over TCP.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ha_discovery::{
    Discovery, DiscoveryConfig, DnsConfig, DnsServer, HealthStatus, RecipeEnv, ServiceInstance,
};
use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::op::ResponseCode;
use hickory_net::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;

use super::{Group, eventually};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A DNS client over UDP (with EDNS unless `edns` is false).
fn udp_client(server: SocketAddr, edns: bool) -> Client<TokioRuntimeProvider> {
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::new())
        .with_timeout(Some(CLIENT_TIMEOUT))
        .build();
    let (mut client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(background);
    if !edns {
        client.disable_edns();
    }
    client
}

async fn tcp_client(server: SocketAddr) -> Client<TokioRuntimeProvider> {
    let (connect, handle) = TcpClientStream::new(
        server,
        None,
        Some(CLIENT_TIMEOUT),
        TokioRuntimeProvider::new(),
    );
    let stream = connect.await.expect("TCP connect to the DNS responder");
    let (client, background) =
        Client::<TokioRuntimeProvider>::with_timeout(stream, handle, CLIENT_TIMEOUT);
    tokio::spawn(background);
    client
}

/// What a query returned, in a form that is easy to assert on.
#[derive(Debug)]
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    truncated: bool,
    answers: Vec<Record>,
    additionals: Vec<Record>,
    /// The SOA's (owner, minimum) in the authority section.
    soa: Option<(String, u32)>,
}

async fn query(client: &mut Client<TokioRuntimeProvider>, name: &str, qtype: RecordType) -> Reply {
    let name = Name::from_ascii(name).expect("a valid name");
    let response = client
        .query(name, DNSClass::IN, qtype)
        .await
        .expect("the responder answers");
    let soa = response.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some((r.name.to_ascii(), soa.minimum)),
        _ => None,
    });
    Reply {
        code: response.metadata.response_code,
        authoritative: response.metadata.authoritative,
        truncated: response.metadata.truncation,
        answers: response.answers.clone(),
        additionals: response.additionals.clone(),
        soa,
    }
}

/// (target, port, weight) of every SRV answer.
fn srvs(reply: &Reply) -> BTreeSet<(String, u16, u16)> {
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((srv.target.to_ascii(), srv.port, srv.weight)),
            _ => None,
        })
        .collect()
}

/// (owner, address) of every A/AAAA record in `records`.
fn addresses(records: &[Record]) -> BTreeSet<(String, IpAddr)> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((r.name.to_ascii(), IpAddr::V4(a.0))),
            RData::AAAA(a) => Some((r.name.to_ascii(), IpAddr::V6(a.0))),
            _ => None,
        })
        .collect()
}

fn ips(reply: &Reply) -> BTreeSet<IpAddr> {
    addresses(&reply.answers)
        .into_iter()
        .map(|(_, ip)| ip)
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an IP address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_srv_and_addresses_of_healthy_instances_and_keeps_answering_without_quorum() {
    let mut g = Group::start().await;
    let registry = g.registry(0);
    for instance in [
        ServiceInstance::new("web", "web-1", "127.0.0.1", 8001).weight(3),
        ServiceInstance::new("web", "web-2", "127.0.0.2", 8002),
        ServiceInstance::new("web", "web-6", "::1", 8003),
        ServiceInstance::new("web", "by-name", "localhost", 8004),
        // Not a DNS label: named by a hash of the id.
        ServiceInstance::new("web", "Node:5", "127.0.0.5", 8005),
        ServiceInstance::new("web", "sick", "127.0.0.7", 8007),
        ServiceInstance::new("web", "off", "127.0.0.8", 8008),
    ] {
        registry
            .register_persistent(&instance)
            .await
            .expect("register");
    }
    registry
        .update("web", "sick", |i| i.health = HealthStatus::Unhealthy)
        .await
        .expect("mark unhealthy");
    registry
        .set_enabled("web", "off", false)
        .await
        .expect("disable");

    // The responder runs on member 2; registrations went through member 0.
    let discovery = Discovery::new(
        g.registry(2),
        RecipeEnv::tokio().expect("runtime"),
        DiscoveryConfig {
            query_timeout: Duration::from_millis(500),
            ..DiscoveryConfig::default()
        },
    )
    .expect("discovery");
    let server = DnsServer::start(
        DnsConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ttl: Duration::from_secs(7),
            ..DnsConfig::default()
        },
        [discovery.clone()],
    )
    .await
    .expect("the responder starts");
    let mut udp = udp_client(server.local_addr(), true);

    let srv = query(&mut udp, "web.service.test.ha.", RecordType::SRV).await;
    assert_eq!(srv.code, ResponseCode::NoError, "{srv:?}");
    assert!(srv.authoritative);
    let svc = "web.service.test.ha.";
    let hashed = srvs(&srv)
        .into_iter()
        .find(|(_, port, _)| *port == 8005)
        .map(|(target, _, _)| target)
        .expect("Node:5 has an SRV record");
    assert!(
        hashed.starts_with("i-") && hashed.ends_with(&format!(".{svc}")),
        "{hashed}"
    );
    assert_eq!(
        srvs(&srv),
        BTreeSet::from([
            (format!("web-1.{svc}"), 8001, 3),
            (format!("web-2.{svc}"), 8002, 1),
            (format!("web-6.{svc}"), 8003, 1),
            ("localhost.".to_owned(), 8004, 1),
            (hashed.clone(), 8005, 1),
        ]),
        "the healthy, enabled instances (not sick, not off)"
    );
    assert!(srv.answers.iter().all(|r| r.ttl == 7), "{srv:?}");
    assert_eq!(
        addresses(&srv.additionals),
        BTreeSet::from([
            (format!("web-1.{svc}"), ip("127.0.0.1")),
            (format!("web-2.{svc}"), ip("127.0.0.2")),
            (format!("web-6.{svc}"), ip("::1")),
            (hashed.clone(), ip("127.0.0.5")),
        ]),
        "every SRV target in the zone resolves in the additional section"
    );

    let a = query(&mut udp, svc, RecordType::A).await;
    assert_eq!(
        ips(&a),
        BTreeSet::from([ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.5")])
    );
    let aaaa = query(&mut udp, svc, RecordType::AAAA).await;
    assert_eq!(ips(&aaaa), BTreeSet::from([ip("::1")]));
    // The targets resolve by themselves too (an unhealthy instance's own
    // name as well: it is registered, only left out of the service).
    for (name, expected) in [
        (format!("web-1.{svc}"), "127.0.0.1"),
        (hashed.clone(), "127.0.0.5"),
        (format!("sick.{svc}"), "127.0.0.7"),
        // Case does not matter in DNS.
        ("WEB-2.Web.Service.TEST.HA.".to_owned(), "127.0.0.2"),
    ] {
        let r = query(&mut udp, &name, RecordType::A).await;
        assert_eq!(
            (r.code, ips(&r)),
            (ResponseCode::NoError, BTreeSet::from([ip(expected)])),
            "{name}"
        );
    }
    // A name that exists without records of the type: NODATA with SOA.
    let nodata = query(&mut udp, &format!("web-1.{svc}"), RecordType::AAAA).await;
    assert_eq!(
        (nodata.code, nodata.answers.len(), nodata.soa.clone()),
        (ResponseCode::NoError, 0, Some(("ha.".to_owned(), 7)))
    );
    let ent = query(&mut udp, "service.test.ha.", RecordType::A).await;
    assert_eq!(
        ent.code,
        ResponseCode::NoError,
        "an empty non-terminal is not NXDOMAIN"
    );
    // Unknown names: NXDOMAIN with the SOA (negative caching).
    for name in [
        "nope.service.test.ha.",
        "nobody.web.service.test.ha.",
        "web.service.otherns.ha.",
        "web.svc.test.ha.",
    ] {
        let r = query(&mut udp, name, RecordType::SRV).await;
        assert_eq!(
            (r.code, r.authoritative, r.soa.clone()),
            (ResponseCode::NXDomain, true, Some(("ha.".to_owned(), 7))),
            "{name}"
        );
    }
    let outside = query(&mut udp, "example.com.", RecordType::A).await;
    assert_eq!(outside.code, ResponseCode::Refused);

    // Changes reach the answers (the first query subscribed the service).
    assert!(discovery.is_subscribed("web"));
    registry
        .deregister("web", "web-2")
        .await
        .expect("deregister");
    registry
        .register_persistent(&ServiceInstance::new("web", "web-9", "127.0.0.9", 8009))
        .await
        .expect("register");
    eventually("the DNS answer follows the registry", || {
        let mut udp = udp.clone();
        async move {
            let ports: BTreeSet<u16> = srvs(&query(&mut udp, svc, RecordType::SRV).await)
                .into_iter()
                .map(|(_, port, _)| port)
                .collect();
            ports == BTreeSet::from([8001, 8003, 8004, 8005, 8009])
        }
    })
    .await;

    // Quorum lost: the answers come from the member's cache.
    g.kill(0).await;
    g.kill(1).await;
    assert!(
        discovery
            .registry()
            .snapshot(
                "web",
                ha_discovery::KvOptions::default().with_timeout(Duration::from_millis(300))
            )
            .await
            .is_err(),
        "the group still answers reads: quorum is not lost"
    );
    let srv = query(&mut udp, svc, RecordType::SRV).await;
    assert_eq!(srv.code, ResponseCode::NoError);
    let ports: BTreeSet<u16> = srvs(&srv).into_iter().map(|(_, port, _)| port).collect();
    assert_eq!(ports, BTreeSet::from([8001, 8003, 8004, 8005, 8009]));
    // A service never looked up cannot be answered without the group.
    let unknown = query(&mut udp, "other.service.test.ha.", RecordType::SRV).await;
    assert_eq!(unknown.code, ResponseCode::ServFail);

    server.shutdown().await;
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_truncates_a_large_udp_answer_and_serves_it_whole_over_tcp() {
    let g = Group::start().await;
    let registry = g.registry(1);
    let discovery = Discovery::new(
        g.registry(0),
        RecipeEnv::tokio().expect("runtime"),
        DiscoveryConfig::default(),
    )
    .expect("discovery");
    // Subscribed by the application: answered from the cache from the
    // first query on.
    discovery.subscribe("big").expect("subscribe");
    for n in 0..40u16 {
        registry
            .register_persistent(&ServiceInstance::new(
                "big",
                format!("big-{n:02}"),
                format!("127.0.1.{n}"),
                9000 + n,
            ))
            .await
            .expect("register");
    }
    eventually("the cache holds all 40", || async {
        discovery
            .cached("big", &ha_discovery::InstanceFilter::new())
            .is_some_and(|v| v.len() == 40)
    })
    .await;
    let server = DnsServer::start(
        DnsConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..DnsConfig::default()
        },
        [discovery],
    )
    .await
    .expect("the responder starts");

    // Without EDNS a UDP answer is limited to 512 bytes.
    let mut udp = udp_client(server.local_addr(), false);
    let small = query(&mut udp, "big.service.test.ha.", RecordType::SRV).await;
    assert!(small.truncated, "40 SRV records do not fit in 512 bytes");
    assert!(small.answers.len() < 40);
    let mut tcp = tcp_client(server.local_addr()).await;
    let whole = query(&mut tcp, "big.service.test.ha.", RecordType::SRV).await;
    assert!(!whole.truncated);
    assert_eq!(srvs(&whole).len(), 40);
    assert_eq!(addresses(&whole.additionals).len(), 40);
    assert_eq!(
        whole.answers.first().map(|r| r.ttl),
        Some(5),
        "the default TTL"
    );

    server.shutdown().await;
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_configuration_errors_are_typed() {
    let g = Group::start().await;
    let env = RecipeEnv::tokio().expect("runtime");
    let discovery = |ns: &str| {
        Discovery::new(
            g.registry(0).namespace(ns).expect("namespace"),
            env.clone(),
            DiscoveryConfig::default(),
        )
        .expect("discovery")
    };
    let local = DnsConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..DnsConfig::default()
    };
    for (config, namespaces, what) in [
        (
            DnsConfig {
                domain: "Bad Domain".into(),
                ..local.clone()
            },
            vec![discovery("test")],
            "domain",
        ),
        (local.clone(), vec![discovery("Upper")], "namespace"),
        (local.clone(), vec![], "no namespace"),
        (
            local.clone(),
            vec![discovery("test"), discovery("test")],
            "twice",
        ),
    ] {
        assert!(
            matches!(
                DnsServer::start(config, namespaces).await,
                Err(ha_discovery::DiscoveryError::InvalidConfig { .. })
            ),
            "{what}"
        );
    }
    // A port already taken.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let err = DnsServer::start(
        DnsConfig {
            listen: taken.local_addr().expect("addr"),
            ..DnsConfig::default()
        },
        [discovery("test")],
    )
    .await
    .expect_err("the port is taken");
    assert!(
        matches!(err, ha_discovery::DiscoveryError::Bind { .. }),
        "{err}"
    );
    g.stop().await;
}
