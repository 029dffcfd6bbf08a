//! Watches through a 3-member group in one process (memory stores): one
//! test per guarantee (ordered, unique, atomic, reliable, resumable,
//! bookmarkable), filters and prev_kv, past and compacted starts, slow
//! watchers, followers, leader changes, snapshot installs, and 10,000
//! watchers on one member.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ha_core::{
    Config, DeleteRequest, Error, EventKind, KeyRange, KvClient, KvOptions, NodeId, PutRequest,
    TxnOp, TxnRequest, WatchCancelReason, WatchRequest, WatchResponse, WatchStream,
};
use ha_raft::{KvConfig, KvNode, MemNetwork};
use ha_storage::{MemLogStore, MemStateStore};

const PATIENCE: Duration = Duration::from_secs(20);

struct Group {
    net: MemNetwork,
    kv: KvConfig,
    small_log: bool,
    members: Vec<NodeId>,
    stores: Vec<(MemLogStore, MemStateStore)>,
    nodes: Vec<KvNode>,
}

impl Group {
    async fn start(kv: KvConfig) -> Group {
        Group::start_with(kv, false).await
    }

    async fn start_with(kv: KvConfig, small_log: bool) -> Group {
        let members: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let mut g = Group {
            net: MemNetwork::new(),
            kv,
            small_log,
            members: members.clone(),
            stores: members
                .iter()
                .map(|_| (MemLogStore::new(), MemStateStore::new()))
                .collect(),
            nodes: Vec::new(),
        };
        for i in 0..members.len() {
            let node = g.boot(i).await;
            g.nodes.push(node);
        }
        g.nodes[0]
            .node()
            .wait_for_leader(PATIENCE)
            .await
            .expect("a leader");
        g
    }

    async fn boot(&self, i: usize) -> KvNode {
        let id = self.members[i];
        let mut config = Config {
            request_timeout: Duration::from_secs(10),
            ..Config::new(id, self.members.clone())
        };
        if self.small_log {
            config.compaction_threshold = 100;
            config.compaction_retain = 20;
            config.snapshot_chunk_size = 4096;
        }
        let (log, state) = &self.stores[i];
        KvNode::start(
            config,
            self.kv.clone(),
            Arc::new(log.clone()),
            Arc::new(state.clone()),
            self.net.transport(id),
        )
        .await
        .expect("member starts")
    }

    /// Index of the leader (waiting for one).
    async fn leader(&self) -> usize {
        let l = self.nodes[0]
            .node()
            .wait_for_leader(PATIENCE)
            .await
            .expect("a leader");
        let id = l.leader.expect("a leader id");
        self.members
            .iter()
            .position(|m| *m == id)
            .expect("leader is a member")
    }

    /// Index of a follower.
    async fn follower(&self) -> usize {
        let l = self.leader().await;
        (l + 1) % self.nodes.len()
    }

    async fn stop(&self) {
        for n in &self.nodes {
            let _ = n.shutdown().await;
        }
    }
}

fn o() -> KvOptions {
    KvOptions::default()
}

async fn put(kv: &KvNode, k: &str, v: &str) -> i64 {
    kv.put(PutRequest::new(k, v), o())
        .await
        .expect("put")
        .header
        .revision
}

/// (revision, kind, key, value) of an event.
type Ev = (i64, EventKind, String, String);

fn evs(r: &WatchResponse) -> Vec<Ev> {
    r.events
        .iter()
        .map(|e| {
            (
                e.kv.mod_revision,
                e.kind,
                String::from_utf8_lossy(&e.kv.key).into_owned(),
                String::from_utf8_lossy(&e.kv.value).into_owned(),
            )
        })
        .collect()
}

/// The next item, within the patience.
async fn next(w: &mut WatchStream) -> Result<WatchResponse, Error> {
    match tokio::time::timeout(PATIENCE, w.next()).await {
        Ok(Some(r)) => r,
        Ok(None) => panic!("watch {} ended without an error", w.id()),
        Err(_) => panic!("watch {} sent nothing for {PATIENCE:?}", w.id()),
    }
}

/// Responses until one's header says every event up to `revision` was
/// sent (asking for progress while none comes: a watcher whose filter
/// drops the last events hears nothing otherwise).
async fn until(w: &mut WatchStream, revision: i64) -> Vec<WatchResponse> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = loop {
            match tokio::time::timeout(Duration::from_millis(200), w.next()).await {
                Ok(Some(r)) => break r,
                Ok(None) => panic!("watch {} ended without an error", w.id()),
                Err(_) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "watch {} did not reach revision {revision}",
                        w.id()
                    );
                    w.request_progress();
                }
            }
        };
        let r = r.expect("watch response");
        let done = r.header.revision >= revision;
        out.push(r);
        if done {
            return out;
        }
    }
}

fn flat(rs: &[WatchResponse]) -> Vec<Ev> {
    rs.iter().flat_map(evs).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_ordered_unique_and_each_revision_arrives_whole() {
    let g = Group::start(KvConfig::default()).await;
    let f = g.follower().await;
    let mut on_follower = g.nodes[f]
        .watch(WatchRequest::prefix("o/"))
        .await
        .expect("watch");
    let mut on_leader = g.nodes[g.leader().await]
        .watch(WatchRequest::prefix("o/"))
        .await
        .expect("watch");
    let mut want: Vec<Ev> = Vec::new();
    let mut last;
    for i in 0..20 {
        let k = format!("o/{}", i % 4);
        last = put(&g.nodes[i % 3], &k, &format!("v{i}")).await;
        want.push((last, EventKind::Put, k, format!("v{i}")));
        if i % 5 == 4 {
            // A transaction writing three keys: one revision.
            let t = TxnRequest {
                compare: vec![],
                success: (0..3)
                    .map(|j| TxnOp::Put(PutRequest::new(format!("o/t{j}"), format!("t{i}"))))
                    .collect(),
                failure: vec![],
            };
            last = g.nodes[i % 3]
                .txn(t, o())
                .await
                .expect("txn")
                .header
                .revision;
            for j in 0..3 {
                want.push((last, EventKind::Put, format!("o/t{j}"), format!("t{i}")));
            }
        }
    }
    let d = g.nodes[1]
        .delete(DeleteRequest::new(KeyRange::prefix("o/t")), o())
        .await
        .expect("delete");
    last = d.header.revision;
    for j in 0..3 {
        want.push((last, EventKind::Delete, format!("o/t{j}"), String::new()));
    }
    for w in [&mut on_follower, &mut on_leader] {
        let rs = until(w, last).await;
        assert_eq!(
            flat(&rs),
            want,
            "watch {}: every event, in order, once",
            w.id()
        );
        // Atomic: a revision's events all sit in one response.
        let mut home: BTreeMap<i64, usize> = BTreeMap::new();
        for (n, r) in rs.iter().enumerate() {
            for e in &r.events {
                let at = *home.entry(e.kv.mod_revision).or_insert(n);
                assert_eq!(at, n, "revision {} split over responses", e.kv.mod_revision);
            }
            assert!(
                r.events
                    .iter()
                    .all(|e| e.kv.mod_revision <= r.header.revision),
                "a response's header is at or past its events"
            );
        }
    }
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_revision_is_missed_under_concurrent_writers() {
    let g = Arc::new(Group::start(KvConfig::default()).await);
    let f = g.follower().await;
    let mut w = g.nodes[f]
        .watch(WatchRequest::prefix("r/"))
        .await
        .expect("watch");
    let mut writers = Vec::new();
    for t in 0..8 {
        let g = g.clone();
        writers.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..40 {
                revs.push(put(&g.nodes[(t + i) % 3], &format!("r/{t}/{}", i % 5), "x").await);
            }
            revs
        }));
    }
    let mut written = BTreeSet::new();
    for h in writers {
        written.extend(h.await.expect("writer"));
    }
    let last = *written.last().expect("writes");
    let seen: Vec<i64> = flat(&until(&mut w, last).await)
        .into_iter()
        .map(|e| e.0)
        .collect();
    // Only these writers write under r/, one key per revision: the watch
    // must show exactly the acknowledged revisions, none twice.
    assert_eq!(seen.len(), written.len(), "duplicates or gaps");
    assert_eq!(seen.iter().copied().collect::<BTreeSet<_>>(), written);
    assert!(seen.windows(2).all(|p| p[0] < p[1]), "out of order");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_the_last_revision_plus_one_gives_exactly_the_missing_events() {
    let g = Group::start(KvConfig::default()).await;
    let first = put(&g.nodes[0], "s/0", "0").await;
    // A full record of everything under s/, from a member that stays.
    let l = g.leader().await;
    let f = g.follower().await;
    let other = 3 - l - f;
    let mut full = g.nodes[other]
        .watch(WatchRequest::prefix("s/").from_revision(first))
        .await
        .expect("watch");
    let mut part = g.nodes[f]
        .watch(WatchRequest::prefix("s/").from_revision(first))
        .await
        .expect("watch");
    let mut last = first;
    for i in 1..15 {
        last = put(&g.nodes[i % 3], &format!("s/{}", i % 4), &i.to_string()).await;
    }
    let mut got = flat(&until(&mut part, last).await);
    let resume = got.last().expect("events").0 + 1;
    drop(part);
    // Missed while nobody watched on that member: writes and a leader
    // change.
    for i in 15..30 {
        last = put(&g.nodes[i % 3], &format!("s/{}", i % 4), &i.to_string()).await;
    }
    let to = g.nodes[f].node().id();
    g.nodes[l]
        .node()
        .transfer_leader(to)
        .await
        .expect("leader transfer");
    for i in 30..40 {
        last = put(&g.nodes[i % 3], &format!("s/{}", i % 4), &i.to_string()).await;
    }
    // Resume on the former leader, which is now a follower.
    let mut resumed = g.nodes[l]
        .watch(WatchRequest::prefix("s/").from_revision(resume))
        .await
        .expect("resume");
    got.extend(flat(&until(&mut resumed, last).await));
    let reference = flat(&until(&mut full, last).await);
    assert_eq!(got, reference, "resumed watch differs from an unbroken one");
    assert_eq!(reference.len(), 40);

    // A member that stops tells its watchers where to resume; resuming
    // on another member gives the rest.
    let mut w = g.nodes[other]
        .watch(WatchRequest::prefix("s/"))
        .await
        .expect("watch");
    let before = put(&g.nodes[0], "s/x", "before").await;
    let seen = flat(&until(&mut w, before).await);
    g.nodes[other].shutdown().await.expect("shutdown");
    let resume = match next(&mut w).await {
        Err(Error::WatchCancelled {
            resume_revision,
            reason: WatchCancelReason::MemberStopped,
        }) => resume_revision,
        other => panic!("expected MemberStopped, got {other:?}"),
    };
    assert!(w.next().await.is_none(), "the stream ends after its error");
    assert_eq!(resume, seen.last().expect("an event").0 + 1);
    let alive = if other == 0 { 1 } else { 0 };
    let after = put(&g.nodes[alive], "s/x", "after").await;
    let mut w = g.nodes[alive]
        .watch(WatchRequest::prefix("s/").from_revision(resume))
        .await
        .expect("resume elsewhere");
    let rest = flat(&until(&mut w, after).await);
    assert_eq!(
        rest,
        vec![(after, EventKind::Put, "s/x".into(), "after".into())]
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_revision_never_skips_an_unseen_event() {
    let g = Arc::new(
        Group::start(KvConfig {
            watch_progress_interval: Duration::from_millis(30),
            ..KvConfig::default()
        })
        .await,
    );
    let f = g.follower().await;
    let mut w = g.nodes[f]
        .watch(WatchRequest::prefix("b/").with_progress_notify())
        .await
        .expect("watch");
    let writer = {
        let g = g.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..60 {
                last = put(&g.nodes[i % 3], &format!("b/{}", i % 3), "x").await;
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(80)).await;
                }
            }
            last
        })
    };
    // Every response is a bookmark: at each one, remember what had
    // arrived. Ask for progress now and then too.
    let mut seen: BTreeSet<i64> = BTreeSet::new();
    let mut bookmarks: Vec<(i64, BTreeSet<i64>)> = Vec::new();
    let mut progress = 0;
    let mut n = 0;
    let last = loop {
        n += 1;
        if n % 7 == 0 {
            w.request_progress();
        }
        let r = next(&mut w).await.expect("response");
        seen.extend(r.events.iter().map(|e| e.kv.mod_revision));
        if r.is_progress_notify() {
            progress += 1;
            bookmarks.push((r.header.revision, seen.clone()));
        }
        if writer.is_finished() {
            let last = writer.await.expect("writer");
            let rest = until(&mut w, last).await;
            seen.extend(flat(&rest).into_iter().map(|e| e.0));
            break last;
        }
    };
    assert!(progress >= 3, "only {progress} progress notifications");
    assert_eq!(seen.len(), 60, "every write seen");
    for (at, seen_then) in bookmarks {
        let owed: Vec<i64> = seen.iter().copied().filter(|r| *r <= at).collect();
        let missing: Vec<&i64> = owed.iter().filter(|r| !seen_then.contains(r)).collect();
        assert!(
            missing.is_empty(),
            "progress at {at} came before events {missing:?} (last write {last})"
        );
    }
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_prev_kv() {
    let g = Group::start(KvConfig::default()).await;
    let n = &g.nodes[0];
    let mut puts = n
        .watch(WatchRequest::prefix("f/").no_delete())
        .await
        .expect("watch");
    let mut dels = n
        .watch(WatchRequest::prefix("f/").no_put().with_prev_kv())
        .await
        .expect("watch");
    let mut prev = n
        .watch(WatchRequest::key("f/a").with_prev_kv())
        .await
        .expect("watch");
    let mut range = n
        .watch(WatchRequest::new(KeyRange::range("f/b", "f/c")))
        .await
        .expect("watch");
    let r1 = put(n, "f/a", "1").await;
    let r2 = put(n, "f/a", "2").await;
    let r3 = put(n, "f/b", "3").await;
    let r4 = n
        .delete(DeleteRequest::new(KeyRange::prefix("f/")), o())
        .await
        .expect("delete")
        .header
        .revision;
    let p = flat(&until(&mut puts, r4).await);
    assert_eq!(
        p.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(),
        vec![
            (r1, EventKind::Put),
            (r2, EventKind::Put),
            (r3, EventKind::Put)
        ]
    );
    let d = until(&mut dels, r4).await;
    let d: Vec<_> = d.iter().flat_map(|r| r.events.iter()).collect();
    assert_eq!(d.len(), 2);
    assert!(d.iter().all(|e| e.kind == EventKind::Delete));
    assert_eq!(
        d.iter()
            .map(|e| e.prev_kv.as_ref().map(|p| p.value.clone()))
            .collect::<Vec<_>>(),
        vec![Some(b"2".to_vec()), Some(b"3".to_vec())],
        "a delete's prev_kv is the deleted value"
    );
    let a = until(&mut prev, r4).await;
    let a: Vec<_> = a.iter().flat_map(|r| r.events.iter()).collect();
    assert_eq!(a.len(), 3);
    assert_eq!(a[0].prev_kv, None, "a create has no prev_kv");
    let p1 = a[1].prev_kv.as_ref().expect("prev_kv of an update");
    assert_eq!((p1.value.as_slice(), p1.mod_revision), (&b"1"[..], r1));
    assert_eq!(a[1].kv.version, 2);
    let b = flat(&until(&mut range, r4).await);
    assert_eq!(
        b.iter().map(|e| (e.0, e.2.as_str())).collect::<Vec<_>>(),
        vec![(r3, "f/b"), (r4, "f/b")]
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_start_in_the_past_but_not_before_the_compaction() {
    // A small chunk makes the catch-up take several turns.
    let g = Group::start(KvConfig {
        watch_catch_up_chunk: 7,
        ..KvConfig::default()
    })
    .await;
    let mut revs = Vec::new();
    for i in 0..50 {
        revs.push(put(&g.nodes[i % 3], &format!("p/{}", i % 6), &i.to_string()).await);
    }
    let f = g.follower().await;
    let mut w = g.nodes[f]
        .watch(
            WatchRequest::prefix("p/")
                .from_revision(revs[10])
                .with_prev_kv(),
        )
        .await
        .expect("watch from the past");
    let live = put(&g.nodes[0], "p/live", "x").await;
    let got = until(&mut w, live).await;
    let got_revs: Vec<i64> = flat(&got).iter().map(|e| e.0).collect();
    let want: Vec<i64> = revs[10..].iter().copied().chain([live]).collect();
    assert_eq!(got_revs, want, "history, then live, without gap or repeat");
    // History carries prev_kv too: p/4 at revs[10] was written at revs[4].
    let first = &got[0].events[0];
    assert_eq!(
        first.prev_kv.as_ref().map(|p| p.mod_revision),
        Some(revs[4])
    );
    g.nodes[0].compact(revs[20], o()).await.expect("compact");
    // Every member applies the compaction; then starts at or below it fail.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for n in &g.nodes {
        loop {
            match n
                .watch(WatchRequest::prefix("p/").from_revision(revs[20]))
                .await
            {
                Err(Error::Compacted { compact_revision }) => {
                    assert_eq!(compact_revision, revs[20]);
                    break;
                }
                Ok(_) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "member {} never applied the compaction",
                    n.node().id()
                ),
                Err(e) => panic!("unexpected {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut w = n
            .watch(WatchRequest::prefix("p/").from_revision(revs[20] + 1))
            .await
            .expect("just after the compaction");
        let got: Vec<i64> = flat(&until(&mut w, live).await)
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(
            got,
            revs[21..].iter().copied().chain([live]).collect::<Vec<_>>()
        );
    }
    assert!(matches!(
        g.nodes[0]
            .watch(WatchRequest::prefix("p/").from_revision(-1))
            .await,
        Err(Error::InvalidRequest { .. })
    ));
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_cancelled_without_slowing_writes_and_resumes_exactly() {
    let g = Arc::new(
        Group::start(KvConfig {
            watch_buffer: 4,
            ..KvConfig::default()
        })
        .await,
    );
    let f = g.follower().await;
    let first = put(&g.nodes[0], "w/start", "x").await;
    // Never read while the writes run.
    let mut slow = g.nodes[f]
        .watch(WatchRequest::prefix("w/").from_revision(first))
        .await
        .expect("watch");
    let mut writers = Vec::new();
    for t in 0..16 {
        let g = g.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..25 {
                put(&g.nodes[(t + i) % 3], &format!("w/{t}"), &i.to_string()).await;
            }
        }));
    }
    // If a watcher could hold the apply thread, these would stall.
    tokio::time::timeout(PATIENCE, async {
        for h in writers {
            h.await.expect("writer");
        }
    })
    .await
    .expect("writes finished while a watcher read nothing");
    let last = put(&g.nodes[0], "w/end", "x").await;
    // Wait until the follower applied the last write.
    let mut probe = g.nodes[f]
        .watch(WatchRequest::key("w/end").from_revision(last))
        .await
        .expect("probe");
    until(&mut probe, last).await;
    let mut got: Vec<Ev> = Vec::new();
    let resume = loop {
        match next(&mut slow).await {
            Ok(r) => got.extend(evs(&r)),
            Err(Error::WatchCancelled {
                resume_revision,
                reason: WatchCancelReason::SlowConsumer,
            }) => break resume_revision,
            Err(e) => panic!("unexpected {e:?}"),
        }
    };
    assert!(got.len() < 402, "the slow watcher was not cancelled early");
    assert!(
        got.last().is_none_or(|e| e.0 < resume),
        "resume revision {resume} at or below a delivered event"
    );
    let mut again = g.nodes[f]
        .watch(WatchRequest::prefix("w/").from_revision(resume))
        .await
        .expect("resume");
    got.extend(flat(&until(&mut again, last).await));
    let revs: Vec<i64> = got.iter().map(|e| e.0).collect();
    assert_eq!(
        revs,
        (first..=last).collect::<Vec<_>>(),
        "delivered + resumed = every revision once"
    );
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_watch_goes_on_across_leader_changes() {
    let g = Group::start(KvConfig::default()).await;
    let f = g.follower().await;
    let mut w = g.nodes[f]
        .watch(WatchRequest::prefix("l/"))
        .await
        .expect("watch");
    let mut written = Vec::new();
    for round in 0..3 {
        for i in 0..10 {
            written.push(put(&g.nodes[i % 3], &format!("l/{round}"), &i.to_string()).await);
        }
        // Hand leadership to the member that is neither leader nor the
        // watched follower, or to the follower itself in the last round.
        let l = g.leader().await;
        let target = if round == 2 { f } else { 3 - l - f };
        if target != l {
            let id = g.nodes[target].node().id();
            g.nodes[l]
                .node()
                .transfer_leader(id)
                .await
                .expect("transfer");
        }
    }
    let last = put(&g.nodes[0], "l/end", "x").await;
    written.push(last);
    let seen: Vec<i64> = flat(&until(&mut w, last).await)
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        seen, written,
        "the watch saw every write across 3 leader changes"
    );
    assert!(g.nodes[f].node().metrics().leader_changes >= 2);
    g.stop().await;
}

/// Isolates member `i`, writes until the leader's log is compacted past
/// it, then heals and waits for `i` to install a snapshot.
async fn catch_up_by_snapshot(g: &Group, i: usize, key: &str, writes: usize) -> i64 {
    let installed = g.nodes[i].node().metrics().snapshots_installed;
    let id = g.members[i];
    g.net.isolate(id);
    let mut last = 0;
    let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
    for n in 0..writes {
        last = put(
            &g.nodes[others[n % 2]],
            &format!("{key}/{}", n % 7),
            &n.to_string(),
        )
        .await;
    }
    let leader = g.nodes[others[0]]
        .node()
        .wait_for_leader(PATIENCE)
        .await
        .expect("leader")
        .leader
        .expect("leader id");
    let leader_log = &g.stores[(leader.0 - 1) as usize].0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let behind = g.nodes[i].node().status().applied;
    while ha_core::LogStore::first_index(leader_log).expect("memory log") <= behind + 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leader's log was not compacted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    g.net.heal();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while g.nodes[i].node().metrics().snapshots_installed == installed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "member {id} did not install a snapshot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_snapshot_install_a_followers_watchers_see_every_revision_or_compacted() {
    let g = Group::start_with(KvConfig::default(), true).await;
    let f = g.follower().await;
    let first = put(&g.nodes[0], "n/0", "x").await;
    let mut w = g.nodes[f]
        .watch(WatchRequest::prefix("n/").from_revision(first))
        .await
        .expect("watch");
    let mut other = g.nodes[f]
        .watch(WatchRequest::prefix("m/"))
        .await
        .expect("watch");
    let last = catch_up_by_snapshot(&g, f, "n", 300).await;
    let seen: Vec<i64> = flat(&until(&mut w, last).await)
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        seen,
        (first..=last).collect::<Vec<_>>(),
        "every revision across the snapshot install"
    );
    // The same again, but the KV history the watcher still needs is
    // compacted meanwhile: it is told so.
    let leader = g.leader().await;
    let cut_at = put(&g.nodes[leader], "n/cut", "x").await;
    until(&mut w, cut_at).await;
    g.net.isolate(g.members[f]);
    let mut compact_to = 0;
    for n in 0..10 {
        compact_to = put(&g.nodes[leader], &format!("n/c{n}"), "x").await;
    }
    g.nodes[leader]
        .compact(compact_to, o())
        .await
        .expect("compact");
    g.net.heal();
    let _ = catch_up_by_snapshot(&g, f, "n", 300).await;
    match next(&mut w).await {
        Err(Error::Compacted { compact_revision }) => assert_eq!(compact_revision, compact_to),
        Ok(r) => panic!("expected Compacted, got events {:?}", evs(&r)),
        Err(e) => panic!("expected Compacted, got {e:?}"),
    }
    // So is a watcher of keys nobody wrote: the compacted revisions could
    // have held (and lost) changes of its keys.
    match next(&mut other).await {
        Err(Error::Compacted { .. }) => {}
        other => panic!("expected Compacted for the idle watcher, got {other:?}"),
    }
    // Watching again from after the compaction works on the member.
    let head = put(&g.nodes[leader], "m/1", "x").await;
    let mut again = g.nodes[f]
        .watch(WatchRequest::prefix("m/").from_revision(compact_to + 1))
        .await
        .expect("watch after the compaction");
    let m = flat(&until(&mut again, head).await);
    assert_eq!(m.iter().map(|e| e.0).collect::<Vec<_>>(), vec![head]);
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watchers_on_one_member_get_what_they_should() {
    let g = Group::start(KvConfig::default()).await;
    let f = g.follower().await;
    let node = &g.nodes[f];
    let mut keys = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..5_000 {
        keys.push(
            node.watch(WatchRequest::key(format!("key/{i}")))
                .await
                .expect("watch"),
        );
        dirs.push(
            node.watch(WatchRequest::prefix(format!("dir/{i}/")))
                .await
                .expect("watch"),
        );
    }
    assert_eq!(node.watchers(), 10_000);
    // Every 50th key and every 40th directory (two keys each), in
    // transactions of 20 puts.
    let mut puts: Vec<PutRequest> = Vec::new();
    for i in (0..5_000).step_by(50) {
        puts.push(PutRequest::new(format!("key/{i}"), "k"));
    }
    for i in (0..5_000).step_by(40) {
        puts.push(PutRequest::new(format!("dir/{i}/a"), "d"));
        puts.push(PutRequest::new(format!("dir/{i}/b"), "d"));
    }
    let mut last = 0;
    for chunk in puts.chunks(20) {
        let t = TxnRequest {
            compare: vec![],
            success: chunk.iter().cloned().map(TxnOp::Put).collect(),
            failure: vec![],
        };
        last = g.nodes[0].txn(t, o()).await.expect("txn").header.revision;
    }
    // Once the member applied the last write, a progress notification
    // (at or past it) proves nothing else came before it.
    let mut probe = node
        .watch(WatchRequest::prefix("").from_revision(last))
        .await
        .expect("probe");
    until(&mut probe, last).await;
    for w in keys.iter().chain(dirs.iter()) {
        w.request_progress();
    }
    for (i, w) in keys.iter_mut().enumerate() {
        let want = if i % 50 == 0 { 1 } else { 0 };
        let got = flat(&until(w, last).await);
        assert_eq!(got.len(), want, "key watcher {i}: {got:?}");
    }
    for (i, w) in dirs.iter_mut().enumerate() {
        let want = if i % 40 == 0 { 2 } else { 0 };
        let got = flat(&until(w, last).await);
        assert_eq!(got.len(), want, "prefix watcher {i}: {got:?}");
    }
    drop(keys);
    drop(dirs);
    drop(probe);
    assert_eq!(node.watchers(), 0, "dropped streams leave the hub");
    g.stop().await;
}
