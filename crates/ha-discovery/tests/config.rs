//! The config center through a 3-member group in one process (memory
//! stores and network, like recipes.rs; RocksDB with compression off for
//! the secrets scan): publish / validate / reject, compare-and-set,
//! history, rollback and trimming, the version watch across a leader
//! change and a compaction, typed hot reload surviving a bad version,
//! grey release with promote and abort, the cache at start without a
//! group, and secrets never stored in plaintext.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use ha_discovery::{
    Clock, Config, ConfigCenter, ConfigCenterError, ConfigEvent, ConfigFormat, ConfigId,
    ConfigInstance, ConfigSource, GreyRule, HistoryLimit, KvClient, KvConfig, KvNode, KvOptions,
    MemLogStore, MemNetwork, MemStateStore, NodeId, Publish, RecipeEnv, SecretKey, Session,
    TokioSpawn, TypedConfig,
};
use serde::Deserialize;

const PATIENCE: Duration = Duration::from_secs(20);

mod common;
use common::Group;

impl Group {
    fn center(&self, i: usize) -> ConfigCenter {
        ConfigCenter::builder(self.node(i).clone())
            .author(format!("member-{}", i + 1))
            .build()
            .expect("center")
    }
}

fn id(data_id: &str) -> ConfigId {
    ConfigId::new("prod", "web", data_id).expect("valid id")
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct AppSettings {
    name: String,
    port: u16,
}

fn settings(name: &str, port: u16) -> Publish {
    Publish::new(
        ConfigFormat::Json,
        format!(r#"{{"name":"{name}","port":{port}}}"#),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_validates_rejects_and_lists() {
    let g = Group::start().await;
    let center = ConfigCenter::builder(g.node(0).clone())
        .author("alice")
        .validator(|_: &ConfigId, _: ConfigFormat, content: &[u8]| {
            if content.windows(9).any(|w| w == b"forbidden") {
                Err("forbidden word".to_string())
            } else {
                Ok(())
            }
        })
        .build()
        .expect("center");
    let app = id("app.json");
    let v1 = center
        .publish(&app, settings("web", 80).message("first"))
        .await
        .expect("publish v1");
    assert_eq!(
        (v1.version, v1.author.as_str(), v1.message.as_str()),
        (1, "alice", "first")
    );
    assert!(v1.timestamp.elapsed().unwrap_or_default() < Duration::from_secs(60));

    // A bad format and a validator's refusal change nothing and say why.
    let bad = center
        .publish(&app, Publish::new(ConfigFormat::Json, r#"{"name": "#))
        .await;
    assert!(
        matches!(
            &bad,
            Err(ConfigCenterError::Invalid {
                format: ConfigFormat::Json,
                ..
            })
        ),
        "{bad:?}"
    );
    let refused = center
        .publish(&app, Publish::new(ConfigFormat::Text, "a forbidden value"))
        .await;
    assert!(
        matches!(&refused, Err(ConfigCenterError::Rejected { reason, .. }) if reason == "forbidden word"),
        "{refused:?}"
    );
    for (format, content) in [
        (ConfigFormat::Yaml, "a: [1, 2"),
        (ConfigFormat::Toml, "a = "),
        (ConfigFormat::Properties, "a=\\u12"),
    ] {
        let r = center.publish(&app, Publish::new(format, content)).await;
        assert!(
            matches!(r, Err(ConfigCenterError::Invalid { .. })),
            "{format}: {r:?}"
        );
    }
    // A secret without a key is refused before anything is written.
    let r = center.publish(&app, settings("x", 1).secret()).await;
    assert!(
        matches!(r, Err(ConfigCenterError::SecretKeyMissing { .. })),
        "{r:?}"
    );
    let now = center.get(&app).await.expect("get").expect("exists");
    assert_eq!(now.meta, v1, "a refused publish changed the config");
    assert_eq!(center.history(&app).await.expect("history").len(), 1);

    // Every format publishes; reads from another member see it.
    for (name, format, content) in [
        ("a.yaml", ConfigFormat::Yaml, "a: 1\n"),
        ("b.toml", ConfigFormat::Toml, "a = 1\n"),
        ("c.properties", ConfigFormat::Properties, "a=1\n"),
        ("d.txt", ConfigFormat::Text, "hello"),
    ] {
        center
            .publish(&id(name), Publish::new(format, content))
            .await
            .expect("publish");
    }
    let other = ConfigCenter::builder(g.node(2).clone())
        .build()
        .expect("center");
    assert_eq!(
        other
            .get(&id("d.txt"))
            .await
            .expect("get")
            .expect("exists")
            .content,
        b"hello"
    );
    center
        .publish(
            &ConfigId::new("prod", "api", "z.txt").expect("id"),
            Publish::new(ConfigFormat::Text, "z"),
        )
        .await
        .expect("publish");

    // Paging through one group, then the whole namespace.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = other
            .list("prod", Some("web"), after.as_ref(), 2)
            .await
            .expect("list");
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|m| m.id.data_id().to_string()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["a.yaml", "app.json", "b.toml", "c.properties", "d.txt"]
    );
    let all = other.list("prod", None, None, 100).await.expect("list");
    assert_eq!(all.items.len(), 6);
    assert_eq!(all.items[0].id.group(), "api");
    assert!(all.next.is_none());

    // Delete removes the config and its history.
    assert!(center.delete(&app).await.expect("delete"));
    assert!(center.get(&app).await.expect("get").is_none());
    assert!(center.history(&app).await.expect("history").is_empty());
    assert!(!center.delete(&app).await.expect("delete again"));
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_conflicts() {
    let g = Group::start().await;
    let (a, b) = (g.center(0), g.center(1));
    let cfg = id("cas.json");
    a.publish(&cfg, settings("a", 1).expect_version(0))
        .await
        .expect("create");
    let r = b.publish(&cfg, settings("b", 2).expect_version(0)).await;
    assert!(
        matches!(
            r,
            Err(ConfigCenterError::Conflict {
                expected: 0,
                current: 1,
                ..
            })
        ),
        "{r:?}"
    );
    // Two publishers expecting version 1 at once: exactly one wins.
    let (ra, rb) = tokio::join!(
        a.publish(&cfg, settings("a", 3).expect_version(1)),
        b.publish(&cfg, settings("b", 4).expect_version(1)),
    );
    let wins = [ra.is_ok(), rb.is_ok()];
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{ra:?} {rb:?}");
    let loser = if ra.is_ok() { rb } else { ra };
    assert!(
        matches!(
            loser,
            Err(ConfigCenterError::Conflict {
                expected: 1,
                current: 2,
                ..
            })
        ),
        "{loser:?}"
    );
    // Without CAS, concurrent publishers all land, each on its own version.
    let publishes: Vec<_> = (0..6)
        .map(|i| {
            let c = if i % 2 == 0 { a.clone() } else { b.clone() };
            let cfg = cfg.clone();
            tokio::spawn(async move { c.publish(&cfg, settings("x", i)).await })
        })
        .collect();
    let mut versions = Vec::new();
    for p in publishes {
        versions.push(p.await.expect("task").expect("publish").version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (3..=8).collect::<Vec<_>>());
    g.stop().await;
}

/// A clock the test moves by hand (sleeps are real).
struct ManualClock {
    base: Instant,
    offset: parking_lot::Mutex<Duration>,
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *self.offset.lock()
    }
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_rollback_diff_and_trimming() {
    let g = Group::start().await;
    let center = ConfigCenter::builder(g.node(0).clone())
        .history(HistoryLimit {
            max_versions: Some(3),
            max_age: None,
        })
        .build()
        .expect("center");
    let cfg = id("hist.yaml");
    for port in 1..=5u16 {
        center
            .publish(
                &cfg,
                Publish::new(ConfigFormat::Yaml, format!("name: web\nport: {port}\n"))
                    .message(format!("port {port}")),
            )
            .await
            .expect("publish");
    }
    let versions: Vec<u64> = center
        .history(&cfg)
        .await
        .expect("history")
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, [3, 4, 5], "history trimmed to the last 3");
    assert!(center.get_version(&cfg, 2).await.expect("read").is_none());

    let diff = center.diff(&cfg, 4, 5).await.expect("diff");
    assert!(
        diff.contains("-port: 4") && diff.contains("+port: 5"),
        "{diff}"
    );
    assert!(matches!(
        center.diff(&cfg, 1, 5).await,
        Err(ConfigCenterError::VersionNotFound { version: 1, .. })
    ));

    let back = center.rollback(&cfg, 4).await.expect("rollback");
    assert_eq!(back.version, 6);
    assert_eq!(back.message, "rollback to version 4");
    let now = center.get(&cfg).await.expect("get").expect("exists");
    assert_eq!(now.content_str(), "name: web\nport: 4\n");
    assert!(matches!(
        center.rollback(&cfg, 1).await,
        Err(ConfigCenterError::VersionNotFound { version: 1, .. })
    ));

    // KV compaction does not touch history: versions are their own keys.
    g.node(0)
        .compact(now.meta.revision, KvOptions::default())
        .await
        .expect("compact");
    let versions: Vec<u64> = center
        .history(&cfg)
        .await
        .expect("history")
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, [4, 5, 6]);
    assert_eq!(
        center
            .get_version(&cfg, 4)
            .await
            .expect("read")
            .expect("kept")
            .content,
        b"name: web\nport: 4\n"
    );

    // Trimming by age, on the publisher's clock.
    let clock = Arc::new(ManualClock {
        base: Instant::now(),
        offset: parking_lot::Mutex::new(Duration::ZERO),
    });
    let env = RecipeEnv::new(
        clock.clone(),
        Arc::new(TokioSpawn::current().expect("tokio")),
    );
    let aged = ConfigCenter::builder(g.node(1).clone())
        .env(env)
        .history(HistoryLimit {
            max_versions: None,
            max_age: Some(Duration::from_secs(60)),
        })
        .build()
        .expect("center");
    let cfg = id("aged.txt");
    aged.publish(&cfg, Publish::new(ConfigFormat::Text, "1"))
        .await
        .expect("v1");
    aged.publish(&cfg, Publish::new(ConfigFormat::Text, "2"))
        .await
        .expect("v2");
    *clock.offset.lock() += Duration::from_secs(50);
    aged.publish(&cfg, Publish::new(ConfigFormat::Text, "3"))
        .await
        .expect("v3");
    *clock.offset.lock() += Duration::from_secs(20);
    aged.publish(&cfg, Publish::new(ConfigFormat::Text, "4"))
        .await
        .expect("v4");
    let versions: Vec<u64> = aged
        .history(&cfg)
        .await
        .expect("history")
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, [3, 4], "versions older than 60 s dropped");
    g.stop().await;
}

/// Publishes until it lands (the group may be electing); returns the
/// version.
async fn publish_retrying(center: &ConfigCenter, cfg: &ConfigId, n: u16) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match center.publish(cfg, settings("w", n)).await {
            Ok(m) => return m.version,
            Err(e) => {
                assert!(Instant::now() < deadline, "publish never landed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn next_version(watch: &mut ha_discovery::ConfigWatch) -> u64 {
    match tokio::time::timeout(PATIENCE, watch.next()).await {
        Ok(Some(Ok(ConfigEvent::Published(e)))) => e.meta.version,
        other => panic!("expected a version, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_every_version_in_order_across_a_leader_change() {
    let mut g = Group::start().await;
    let leader = g.leader().await;
    let follower = (leader + 1) % 3;
    let publisher_member = (leader + 2) % 3;
    let watcher = g.center(follower);
    let publisher = g.center(publisher_member);
    let cfg = id("watched.json");
    publisher.publish(&cfg, settings("w", 0)).await.expect("v1");
    let mut watch = watcher.watch(&cfg).await.expect("watch");
    assert_eq!(watch.start_version(), 1);

    let mut published = Vec::new();
    for n in 1..=10 {
        published.push(publish_retrying(&publisher, &cfg, n).await);
    }
    g.kill(leader).await;
    for n in 11..=20 {
        published.push(publish_retrying(&publisher, &cfg, n).await);
    }
    let last = *published.last().expect("published");
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        got.push(next_version(&mut watch).await);
    }
    assert_eq!(
        got,
        (2..=last).collect::<Vec<_>>(),
        "versions skipped or out of order across the leader change"
    );
    assert_ne!(g.leader().await, leader);

    // A dropped watch resumes from the last version it delivered, even
    // after the KV history it needs is compacted: the versions come back
    // from the history keys.
    drop(watch);
    for n in 21..=23 {
        publish_retrying(&publisher, &cfg, n).await;
    }
    let now = publisher.get(&cfg).await.expect("get").expect("exists");
    g.node(follower)
        .compact(now.meta.revision, KvOptions::default())
        .await
        .expect("compact");
    let mut resumed = watcher.watch_from(&cfg, last);
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(next_version(&mut resumed).await);
    }
    assert_eq!(again, [last + 1, last + 2, last + 3]);
    // And the resumed watch goes on live.
    let v = publish_retrying(&publisher, &cfg, 24).await;
    assert_eq!(next_version(&mut resumed).await, v);
    // A delete is an event too.
    publisher.delete(&cfg).await.expect("delete");
    let ev = tokio::time::timeout(PATIENCE, resumed.next()).await;
    assert!(matches!(ev, Ok(Some(Ok(ConfigEvent::Deleted)))), "{ev:?}");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_listener_survives_a_bad_version() {
    let g = Group::start().await;
    let center = g.center(0);
    let cfg = id("typed.json");
    center.publish(&cfg, settings("web", 80)).await.expect("v1");
    let typed: TypedConfig<AppSettings> = TypedConfig::builder(&g.center(1), cfg.clone())
        .start()
        .await
        .expect("typed");
    assert_eq!(
        *typed.get(),
        AppSettings {
            name: "web".into(),
            port: 80
        }
    );
    let changes = Arc::new(AtomicUsize::new(0));
    let counted = changes.clone();
    typed.on_change(move |v, s| {
        assert_eq!(v.port, if s.version == 2 { 81 } else { 82 });
        counted.fetch_add(1, Ordering::SeqCst);
    });

    center.publish(&cfg, settings("web", 81)).await.expect("v2");
    typed
        .wait_until(PATIENCE, |s| s.version == 2)
        .await
        .expect("reloads v2");
    assert_eq!(typed.get().port, 81);

    // Valid JSON, wrong shape: the last good value stays, and it says so.
    center
        .publish(
            &cfg,
            Publish::new(ConfigFormat::Json, r#"{"name":"web","port":"eighty"}"#),
        )
        .await
        .expect("v3 is valid JSON");
    let status = typed
        .wait_until(PATIENCE, |s| s.failed_version == Some(3))
        .await
        .expect("reports v3");
    assert_eq!(status.version, 2);
    assert!(
        matches!(
            status.last_error,
            Some(ConfigCenterError::Deserialize { version: 3, .. })
        ),
        "{:?}",
        status.last_error
    );
    assert_eq!(typed.get().port, 81, "a bad version replaced the value");

    center.publish(&cfg, settings("web", 82)).await.expect("v4");
    let status = typed
        .wait_until(PATIENCE, |s| s.version == 4)
        .await
        .expect("reloads v4");
    assert_eq!(
        (status.failed_version, status.source),
        (None, ConfigSource::Group)
    );
    assert!(status.last_error.is_none());
    assert_eq!(typed.get().port, 82);
    assert_eq!(
        changes.load(Ordering::SeqCst),
        2,
        "callbacks ran for each good version only"
    );
    drop(typed);
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grey_release_reaches_exactly_the_selected_instances() {
    let g = Group::start().await;
    let admin = g.center(0);
    let cfg = id("grey.json");
    admin
        .publish(&cfg, settings("stable", 1))
        .await
        .expect("v1");
    let instances = [
        ConfigInstance::new("a").label("zone", "eu"),
        ConfigInstance::new("b").label("zone", "us"),
        ConfigInstance::new("c").label("zone", "us"),
    ];
    let mut typed = Vec::new();
    let mut sessions = Vec::new();
    for (i, inst) in instances.iter().enumerate() {
        let center = g.center(i);
        let session = Session::builder(g.node(i).clone())
            .start()
            .await
            .expect("session");
        let t: TypedConfig<AppSettings> = TypedConfig::builder(&center, cfg.clone())
            .instance(inst.clone())
            .report_through(session.clone())
            .start()
            .await
            .expect("typed");
        typed.push(t);
        sessions.push(session);
    }
    // Every instance reports it runs v1.
    // Waits until every instance reports it runs stable `version`.
    let all_report = |version: u64| {
        let admin = admin.clone();
        let cfg = cfg.clone();
        async move {
            let want: Vec<_> = ["a", "b", "c"]
                .iter()
                .map(|n| (n.to_string(), version, false))
                .collect();
            let deadline = Instant::now() + PATIENCE;
            loop {
                let r = admin.rollout(&cfg).await.expect("rollout");
                let mut reports: Vec<_> = r
                    .instances
                    .iter()
                    .map(|i| (i.instance.clone(), i.version, i.grey))
                    .collect();
                reports.sort();
                if reports == want {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "rollout {reports:?}, want {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    all_report(1).await;

    // Grey to zone=eu: only "a" runs the candidate.
    let candidate = admin
        .publish_grey(
            &cfg,
            settings("candidate", 2),
            GreyRule::label("zone", "eu"),
        )
        .await
        .expect("grey");
    assert_eq!(candidate.version, 2);
    typed[0]
        .wait_until(PATIENCE, |s| s.grey && s.version == 2)
        .await
        .expect("a gets the candidate");
    let rollout = admin.rollout(&cfg).await.expect("rollout");
    assert_eq!(rollout.stable.as_ref().map(|m| m.version), Some(1));
    assert_eq!(
        rollout
            .candidate
            .as_ref()
            .map(|(m, rule)| (m.version, rule.clone())),
        Some((2, GreyRule::label("zone", "eu")))
    );
    // The others stay on stable: wait for a's report, then check them all.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = admin.rollout(&cfg).await.expect("rollout");
        let mut reports: Vec<_> = r
            .instances
            .iter()
            .map(|i| (i.instance.clone(), i.version, i.grey))
            .collect();
        reports.sort();
        if reports
            == [
                ("a".to_string(), 2, true),
                ("b".to_string(), 1, false),
                ("c".to_string(), 1, false),
            ]
        {
            break;
        }
        assert!(Instant::now() < deadline, "rollout {reports:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(typed[0].get().name, "candidate");
    assert_eq!(typed[1].get().name, "stable");
    assert_eq!(typed[2].get().name, "stable");

    // Promote: everyone on the candidate's content as stable version 2.
    let promoted = admin.promote(&cfg).await.expect("promote");
    assert_eq!(promoted.version, 2);
    for t in &typed {
        t.wait_until(PATIENCE, |s| s.version == 2 && !s.grey)
            .await
            .expect("promoted everywhere");
        assert_eq!(t.get().name, "candidate");
    }
    all_report(2).await;
    assert!(
        admin
            .rollout(&cfg)
            .await
            .expect("rollout")
            .candidate
            .is_none()
    );
    assert!(matches!(
        admin.promote(&cfg).await,
        Err(ConfigCenterError::NoGrey { .. })
    ));

    // Grey to instance "c" by id, then abort: c goes back to stable.
    admin
        .publish_grey(&cfg, settings("risky", 3), GreyRule::instances(["c"]))
        .await
        .expect("grey to c");
    typed[2]
        .wait_until(PATIENCE, |s| s.grey && s.version == 3)
        .await
        .expect("c gets it");
    assert_eq!(typed[2].get().name, "risky");
    assert_eq!(typed[0].status().version, 2);
    assert_eq!(typed[1].status().version, 2);
    admin.abort(&cfg).await.expect("abort");
    typed[2]
        .wait_until(PATIENCE, |s| !s.grey && s.version == 2)
        .await
        .expect("c back on stable");
    assert_eq!(typed[2].get().name, "candidate");
    assert!(matches!(
        admin.abort(&cfg).await,
        Err(ConfigCenterError::NoGrey { .. })
    ));

    // Reports are session-bound: a closed session's report disappears.
    sessions[1].close().await.expect("close");
    let r = admin.rollout(&cfg).await.expect("rollout");
    let names: Vec<_> = r.instances.iter().map(|i| i.instance.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
    drop(typed);
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_on_cached_config_without_a_group() {
    let cache = tempfile::tempdir().expect("tempdir");
    let cfg = id("cached.json");
    {
        let g = Group::start().await;
        g.center(0)
            .publish(&cfg, settings("web", 80))
            .await
            .expect("v1");
        g.center(0)
            .publish(&cfg, settings("web", 81))
            .await
            .expect("v2");
        let typed: TypedConfig<AppSettings> = TypedConfig::builder(&g.center(1), cfg.clone())
            .cache_dir(cache.path())
            .start()
            .await
            .expect("typed");
        assert_eq!(typed.status().source, ConfigSource::Group);
        drop(typed);
        g.stop().await;
    }
    // A lone member of a 3-member group: no quorum, nothing answers.
    let net = MemNetwork::new();
    let members: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let lone = KvNode::start(
        Config {
            request_timeout: Duration::from_secs(1),
            ..Config::new(NodeId(1), members)
        },
        KvConfig::default(),
        Arc::new(MemLogStore::new()),
        Arc::new(MemStateStore::new()),
        net.transport(NodeId(1)),
    )
    .await
    .expect("member starts");
    let center = ConfigCenter::builder(lone.clone()).build().expect("center");
    let typed: TypedConfig<AppSettings> = TypedConfig::builder(&center, cfg.clone())
        .cache_dir(cache.path())
        .startup_timeout(Duration::from_millis(500))
        .start()
        .await
        .expect("starts from the cache");
    let status = typed.status();
    assert_eq!((status.source, status.version), (ConfigSource::Cache, 2));
    assert!(typed.is_cached());
    assert!(matches!(status.last_error, Some(ConfigCenterError::Kv(_))));
    assert_eq!(typed.get().port, 81);
    drop(typed);

    // Without a cache there is nothing to run on: a clear error.
    let empty = tempfile::tempdir().expect("tempdir");
    let r = TypedConfig::<AppSettings>::builder(&center, cfg)
        .cache_dir(empty.path())
        .startup_timeout(Duration::from_millis(500))
        .start()
        .await;
    assert!(matches!(r, Err(ConfigCenterError::Kv(_))), "{r:?}");
    let _ = lone.shutdown().await;
}

/// Every byte of every file under `dir`, searched for `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read file");
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_any_data_file_in_plaintext() {
    use ha_discovery::{RocksEnv, StorageConfig};
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = StorageConfig {
        compression: ha_storage::Compression::None,
        ..StorageConfig::default()
    }
    .validate()
    .expect("storage config");
    let env = RocksEnv::new(&storage).expect("rocks env");
    let net = MemNetwork::new();
    let members: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let mut nodes = Vec::new();
    for &m in &members {
        let (log, state) = env
            .open(&dir.path().join(format!("member-{m}")), &storage)
            .expect("open storage");
        nodes.push(
            KvNode::start(
                Config {
                    request_timeout: Duration::from_secs(5),
                    ..Config::new(m, members.clone())
                },
                KvConfig::default(),
                Arc::new(log),
                Arc::new(state),
                net.transport(m),
            )
            .await
            .expect("member starts"),
        );
    }
    nodes[0]
        .node()
        .wait_for_leader(PATIENCE)
        .await
        .expect("a leader");
    let key = SecretKey::generate();
    let center = ConfigCenter::builder(nodes[0].clone())
        .secret_key(key.clone())
        .build()
        .expect("center");
    let secret = id("db.properties");
    let control = id("control.txt");
    for v in 0..5 {
        center
            .publish(
                &secret,
                Publish::new(
                    ConfigFormat::Properties,
                    format!("password=S3CRET-PLAINTEXT-MARKER-{v}\n"),
                )
                .secret(),
            )
            .await
            .expect("secret publish");
    }
    center
        .publish(
            &control,
            Publish::new(ConfigFormat::Text, "CONTROL-PLAINTEXT-MARKER"),
        )
        .await
        .expect("control publish");
    // Every member has applied it (read locally on each).
    for n in &nodes {
        let deadline = Instant::now() + PATIENCE;
        while n
            .get(
                format!("_config/cfg/{}/cur", "prod/web/control.txt").into_bytes(),
                KvOptions::serializable(),
            )
            .await
            .expect("local read")
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "a member never applied the control"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Reading: with the key, without it, with another.
    let got = center.get(&secret).await.expect("get").expect("exists");
    assert_eq!(got.content_str(), "password=S3CRET-PLAINTEXT-MARKER-4\n");
    assert!(got.meta.secret);
    let keyless = ConfigCenter::builder(nodes[1].clone())
        .build()
        .expect("center");
    assert!(matches!(
        keyless.get(&secret).await,
        Err(ConfigCenterError::SecretKeyMissing { .. })
    ));
    let wrong = ConfigCenter::builder(nodes[2].clone())
        .secret_key(SecretKey::generate())
        .build()
        .expect("center");
    assert!(matches!(
        wrong.get(&secret).await,
        Err(ConfigCenterError::Decrypt { .. })
    ));
    // Rollback and promote of a secret keep it encrypted.
    center.rollback(&secret, 1).await.expect("rollback");
    assert_eq!(
        center
            .get(&secret)
            .await
            .expect("get")
            .expect("exists")
            .content_str(),
        "password=S3CRET-PLAINTEXT-MARKER-0\n"
    );

    for n in &nodes {
        n.shutdown().await.expect("shutdown");
    }
    drop(nodes);
    // The scan can see plaintext (the control), and sees no secret.
    let control_files = files_containing(dir.path(), b"CONTROL-PLAINTEXT-MARKER");
    assert!(
        !control_files.is_empty(),
        "the scan found no plaintext at all: it cannot prove anything"
    );
    let leaked = files_containing(dir.path(), b"S3CRET-PLAINTEXT-MARKER");
    assert!(leaked.is_empty(), "secret plaintext in {leaked:?}");
}
