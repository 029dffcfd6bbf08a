//! service_mesh: service discovery and client-side load balancing. Three
//! members in one process (memory storage); each hosts one instance of
//! the `orders` service (a real HTTP server on 127.0.0.1), registered
//! through its member's session with an HTTP health check, and runs a
//! health checker. A client balances calls across the instances by weight
//! (smooth weighted round-robin). Then one instance starts failing: the
//! client ejects it after three errors, and the health checks mark it
//! unhealthy so discovery stops returning it. Finally another instance's
//! process "dies" (its session ends) and it is removed. Prints a
//! timeline.
//!
//! ```text
//! cargo run --release -p ha-examples --example service_mesh
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ha_discovery::{
    BalancerConfig, Discovery, DiscoveryConfig, HealthCheck, HealthChecker, InstanceFilter,
    LoadBalancer, RecipeEnv, Registry, ServiceInstance, Session, SmoothWeightedRoundRobin,
};

type ExampleResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// One instance's HTTP server: `/` answers its name, `/health` 200 —
/// both 500 once told to fail.
async fn serve(name: String, failing: Arc<AtomicBool>) -> ExampleResult<u16> {
    let f1 = failing.clone();
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || {
                let (name, failing) = (name.clone(), f1.clone());
                async move {
                    if failing.load(Ordering::SeqCst) {
                        (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new())
                    } else {
                        (axum::http::StatusCode::OK, name)
                    }
                }
            }),
        )
        .route(
            "/health",
            axum::routing::get(move || {
                let failing = failing.clone();
                async move {
                    if failing.load(Ordering::SeqCst) {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(port)
}

/// Makes `n` balanced calls; returns how many each instance answered and
/// how many failed.
async fn calls(
    discovery: &Discovery,
    lb: &LoadBalancer,
    http: &reqwest::Client,
    n: usize,
) -> ExampleResult<(BTreeMap<String, usize>, usize)> {
    let mut answered = BTreeMap::new();
    let mut failed = 0;
    for _ in 0..n {
        let instances = discovery
            .instances("orders", &InstanceFilter::new())
            .await?;
        let Some(call) = lb.pick(&instances, None) else {
            return Err("no instance to call".into());
        };
        let url = format!("http://{}/", call.instance().endpoint());
        match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                *answered.entry(r.text().await?).or_insert(0) += 1;
                call.success();
            }
            _ => {
                failed += 1;
                call.failure();
            }
        }
    }
    Ok((answered, failed))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExampleResult<()> {
    let t0 = Instant::now();
    let at = move || format!("[{:6.3}s]", t0.elapsed().as_secs_f64());

    // Three members in this process, on memory storage.
    let (_network, members) = ha_examples::start_mem_kv_group(3).await?;
    println!("{} three members up", at());

    // Each member hosts one `orders` instance and runs health checks.
    let mut sessions = Vec::new();
    let mut failing = Vec::new();
    let mut checkers = Vec::new();
    for (i, kv) in members.iter().enumerate() {
        let name = format!("orders-{}", i + 1);
        let flag = Arc::new(AtomicBool::new(false));
        let port = serve(name.clone(), flag.clone()).await?;
        let session = Session::builder(kv.clone())
            .ttl(Duration::from_secs(2))
            .start()
            .await?;
        let check = HealthCheck::http("/health", 200)
            .interval(Duration::from_millis(200))
            .timeout(Duration::from_millis(500))
            .thresholds(2, 2);
        let instance = ServiceInstance::new("orders", &name, "127.0.0.1", port)
            .weight(i as u32 + 1)
            .zone("zone-a")
            .check(check);
        Registry::new(Arc::new(kv.clone()))
            .register_ephemeral(&session, &instance)
            .await?;
        checkers.push(
            HealthChecker::builder(&session, format!("member-{}", i + 1))
                .scan_interval(Duration::from_millis(100))
                .start()
                .await?,
        );
        println!(
            "{} {name} registered at 127.0.0.1:{port}, weight {}",
            at(),
            i + 1
        );
        sessions.push(session);
        failing.push(flag);
    }

    // The client: discovery through member 1, smooth weighted round-robin,
    // eject after 3 consecutive errors (at most a third of the instances).
    let env = RecipeEnv::tokio()?;
    let discovery = Discovery::new(
        Registry::new(Arc::new(members[0].clone())),
        env.clone(),
        DiscoveryConfig::default(),
    )?;
    discovery.subscribe("orders")?;
    let lb = LoadBalancer::new(
        SmoothWeightedRoundRobin::new(),
        BalancerConfig {
            consecutive_errors: 3,
            base_ejection: Duration::from_secs(30),
            max_ejected_fraction: 0.34,
            ..BalancerConfig::default()
        },
        env.clock().clone(),
    )?;
    let http = reqwest::Client::new();
    let (answered, failed) = calls(&discovery, &lb, &http, 60).await?;
    println!(
        "{} 60 calls by weight 1:2:3 -> {answered:?}, {failed} failed",
        at()
    );

    // orders-3 starts failing.
    failing[2].store(true, Ordering::SeqCst);
    println!("{} orders-3 starts answering 500", at());
    let (answered, failed) = calls(&discovery, &lb, &http, 30).await?;
    println!(
        "{} 30 calls -> {answered:?}, {failed} failed; ejected by the client: {:?}",
        at(),
        lb.ejected()
    );
    let t_fail = Instant::now();
    loop {
        let healthy = discovery
            .instances("orders", &InstanceFilter::new())
            .await?;
        if healthy.iter().all(|i| i.id != "orders-3") {
            break;
        }
        if t_fail.elapsed() > Duration::from_secs(20) {
            return Err("orders-3 never turned unhealthy".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unhealthy = discovery
        .instances("orders", &InstanceFilter::all())
        .await?
        .into_iter()
        .find(|i| i.id == "orders-3");
    println!(
        "{} health checks marked orders-3 unhealthy (checked by {:?}) after {:?}; discovery no longer returns it",
        at(),
        unhealthy.and_then(|i| i.checked_by),
        t_fail.elapsed()
    );

    // orders-2's process "dies": its session ends.
    let t_kill = Instant::now();
    sessions[1].close().await?;
    checkers[1].stop().await?;
    println!("{} orders-2's process dies (its session ends)", at());
    loop {
        let all = discovery
            .instances("orders", &InstanceFilter::all())
            .await?;
        if all.iter().all(|i| i.id != "orders-2") {
            break;
        }
        if t_kill.elapsed() > Duration::from_secs(20) {
            return Err("orders-2 was never removed".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{} orders-2 removed after {:?}", at(), t_kill.elapsed());
    let (answered, failed) = calls(&discovery, &lb, &http, 20).await?;
    println!("{} 20 calls -> {answered:?}, {failed} failed", at());
    if answered.keys().any(|k| k != "orders-1") || failed > 0 {
        return Err("calls still reached a failed or removed instance".into());
    }

    for c in &checkers {
        let _ = c.stop().await;
    }
    for s in &sessions {
        let _ = s.close().await;
    }
    for m in &members {
        m.shutdown().await?;
    }
    println!("{} done", at());
    Ok(())
}
