//! config_center: three instances (one per member of a 3-member group in
//! this process, memory storage) each hold a `TypedConfig<AppSettings>`
//! that reloads when the config changes. The example publishes a change
//! (all three reload), grey-releases a candidate to the instance in
//! zone=eu only (the rollout shows who runs what), promotes it, then
//! rolls back to the first version — and prints the history and a diff.
//!
//! ```text
//! cargo run --release -p ha-examples --example config_center
//! ```

use std::time::{Duration, Instant};

use ha_discovery::{
    ConfigCenter, ConfigFormat, ConfigId, ConfigInstance, GreyRule, Publish, Rollout, Session,
    TypedConfig,
};
use serde::Deserialize;

type ExampleResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What the application reads.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // Printed through Debug.
struct AppSettings {
    greeting: String,
    max_connections: u32,
    feature_x: bool,
}

const WAIT: Duration = Duration::from_secs(10);

fn settings(greeting: &str, max_connections: u32, feature_x: bool) -> String {
    format!("greeting: {greeting}\nmax_connections: {max_connections}\nfeature_x: {feature_x}\n")
}

fn print_rollout(r: &Rollout) {
    let stable = r.stable.as_ref().map_or(0, |m| m.version);
    match &r.candidate {
        Some((m, rule)) => println!(
            "  rollout: stable v{stable}, candidate v{} for {rule:?}",
            m.version
        ),
        None => println!("  rollout: stable v{stable}, no candidate"),
    }
    let mut reports = r.instances.clone();
    reports.sort_by(|a, b| a.instance.cmp(&b.instance));
    for i in reports {
        println!(
            "    {} runs v{}{}",
            i.instance,
            i.version,
            if i.grey { " (grey)" } else { "" }
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExampleResult<()> {
    let t0 = Instant::now();
    let at = move || format!("[{:6.3}s]", t0.elapsed().as_secs_f64());

    // Three members in this process, on memory storage.
    let (_network, members) = ha_examples::start_mem_kv_group(3).await?;
    println!("{} three members up", at());

    // The operator's side: a center that publishes, with a validator.
    let admin = ConfigCenter::builder(members[0].clone())
        .author("ops@example")
        .validator(|_: &ConfigId, _: ConfigFormat, content: &[u8]| {
            if content.is_empty() {
                Err("empty config".to_string())
            } else {
                Ok(())
            }
        })
        .build()?;
    let id = ConfigId::new("prod", "web", "app.yaml")?;
    let v1 = admin
        .publish(
            &id,
            Publish::new(ConfigFormat::Yaml, settings("hello", 100, false)).message("initial"),
        )
        .await?;
    println!("{} published {id} v{}", at(), v1.version);

    // Three instances, one per member, each in a zone.
    let cache = tempfile::tempdir()?;
    let zones = ["eu", "us", "us"];
    let mut instances = Vec::new();
    let mut sessions = Vec::new();
    for (i, kv) in members.iter().enumerate() {
        let name = format!("instance-{}", i + 1);
        let center = ConfigCenter::builder(kv.clone()).build()?;
        let session = Session::new(kv.clone()).await?;
        let typed: TypedConfig<AppSettings> = TypedConfig::builder(&center, id.clone())
            .instance(ConfigInstance::new(&name).label("zone", zones[i]))
            .report_through(session.clone())
            .cache_dir(cache.path().join(&name))
            .start()
            .await?;
        println!(
            "{} {name} (zone={}) starts with v{}: {:?}",
            at(),
            zones[i],
            typed.status().version,
            typed.get()
        );
        let tag = name.clone();
        typed.on_change(move |value, status| {
            println!(
                "{} {tag} reloaded v{}{}: {value:?}",
                at(),
                status.version,
                if status.grey { " (grey)" } else { "" }
            );
        });
        instances.push(typed);
        sessions.push(session);
    }

    // 1. A change for everyone.
    let v2 = admin
        .publish(
            &id,
            Publish::new(ConfigFormat::Yaml, settings("hello", 200, false))
                .message("more connections")
                .expect_version(v1.version),
        )
        .await?;
    println!(
        "{} published v{} (compare-and-set on v{})",
        at(),
        v2.version,
        v1.version
    );
    for t in &instances {
        t.wait_until(WAIT, |s| s.version == v2.version).await?;
    }

    // A broken publish is refused and changes nothing.
    let refused = admin
        .publish(&id, Publish::new(ConfigFormat::Yaml, "greeting: [unclosed"))
        .await;
    println!(
        "{} a malformed publish is refused: {}",
        at(),
        refused.err().map_or("accepted?!".into(), |e| e.to_string())
    );

    // 2. Grey release to zone=eu only.
    let candidate = admin
        .publish_grey(
            &id,
            Publish::new(ConfigFormat::Yaml, settings("bonjour", 200, true))
                .message("try feature x"),
            GreyRule::label("zone", "eu"),
        )
        .await?;
    println!("{} grey release of v{} to zone=eu", at(), candidate.version);
    instances[0]
        .wait_until(WAIT, |s| s.grey && s.version == candidate.version)
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    print_rollout(&admin.rollout(&id).await?);

    // 3. Promote it, then decide it was wrong and roll back to v1.
    let promoted = admin.promote(&id).await?;
    println!("{} promoted the candidate as v{}", at(), promoted.version);
    for t in &instances {
        t.wait_until(WAIT, |s| s.version == promoted.version && !s.grey)
            .await?;
    }
    let back = admin.rollback(&id, v1.version).await?;
    println!(
        "{} rolled back to v{} as v{}",
        at(),
        v1.version,
        back.version
    );
    for t in &instances {
        t.wait_until(WAIT, |s| s.version == back.version).await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    print_rollout(&admin.rollout(&id).await?);

    println!("history of {id}:");
    for m in admin.history(&id).await? {
        println!("  v{} by {}: {:?}", m.version, m.author, m.message);
    }
    println!("diff v{} -> v{}:", v2.version, promoted.version);
    print!("{}", admin.diff(&id, v2.version, promoted.version).await?);

    drop(instances);
    for s in sessions {
        s.close().await?;
    }
    for m in &members {
        m.shutdown().await?;
    }
    println!("{} done", at());
    Ok(())
}
