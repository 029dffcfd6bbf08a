//! ha-node as real processes on loopback: three members, writes through
//! each over HTTP, SIGKILL and SIGTERM of the leader, restart and catch-up,
//! hostile bytes on a peer port, a watch over server-sent events, and the
//! client API's routes and errors.
//!
//! Every process is killed when its handle drops, and every test runs
//! under a hard time bound. The tests take the same lock: three RocksDB
//! processes per test are enough for a two-core machine.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ha_core::{ClusterId, NodeId};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use ha_examples::procs::{Cluster, MAX_BODY, PATIENCE, one_at_a_time};

/// A peer-protocol hello (the wire format `TcpTransport` documents).
fn hello(cluster: &ClusterId, from: u64, to: u64) -> Vec<u8> {
    let mut b = b"HARP".to_vec();
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&cluster.0);
    b.extend_from_slice(&from.to_be_bytes());
    b.extend_from_slice(&to.to_be_bytes());
    b
}

/// Sends `bytes` to a peer port and expects the member to close the
/// connection without writing anything.
async fn expect_closed(addr: SocketAddr, bytes: &[u8], case: &str) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the peer port");
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("{case}: the member wrote {n} bytes on a peer connection"),
        Err(_) => panic!("{case}: connection not closed within {PATIENCE:?}"),
    }
}

/// Prometheus text: the value of the first sample whose line starts with
/// `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_loses_no_acknowledged_write_and_hostile_peers_are_cut_off() {
    one_at_a_time(async {
        let mut c = Cluster::start_with(env!("CARGO_BIN_EXE_ha-node").into(), 3).await;
        let leader = c.healthy().await;
        let mut acked = BTreeMap::new();
        for id in 1..=3u64 {
            for i in 0..10 {
                let (k, v) = (format!("k/{id}/{i}"), format!("v{id}-{i}"));
                c.put(id, &k, &v).await;
                acked.insert(k, v);
            }
        }

        c.kill(leader);
        let others: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
        for &id in &others {
            for i in 0..10 {
                let (k, v) = (format!("after-kill/{id}/{i}"), format!("w{id}-{i}"));
                c.put(id, &k, &v).await;
                acked.insert(k, v);
            }
        }
        let new_leader = c.healthy().await;
        assert_ne!(new_leader, leader, "a killed member cannot lead");

        c.spawn(leader);
        c.healthy().await;
        // It caught up: every acknowledged write, read linearizably
        // through every member, the restarted one included.
        c.check_all(&acked).await;

        // Hostile bytes on a member's peer port close that connection only.
        let target = others[0];
        let addr: SocketAddr = format!("127.0.0.1:{}", c.peer[&target])
            .parse()
            .expect("addr");
        let other_cluster = ClusterId::derive(&[NodeId(1), NodeId(2), NodeId(3)], "another group");
        // From an id that is no member: a real member's connection stays.
        let mut oversized = hello(&c.cluster_id(), 99, target);
        oversized.extend_from_slice(&u32::MAX.to_be_bytes());
        expect_closed(addr, b"GET / HTTP/1.1\r\nHost: ha\r\n\r\n", "garbage").await;
        expect_closed(
            addr,
            &hello(&other_cluster, leader, target),
            "another cluster's id",
        )
        .await;
        expect_closed(addr, &oversized, "an oversized frame").await;
        c.put(target, "after-hostile", "still-serving").await;
        acked.insert("after-hostile".into(), "still-serving".into());
        c.check_all(&acked).await;

        let metrics = c
            .client
            .get(c.url(target, "/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        for (reason, what) in [
            ("bad_magic", "garbage"),
            ("other_cluster", "another cluster's id"),
            ("frame_too_large", "an oversized frame"),
        ] {
            assert_eq!(
                sample(
                    &metrics,
                    &format!("ha_peer_connections_rejected_total{{reason=\"{reason}\"}}")
                ),
                Some(1.0),
                "{what} counted once in /metrics:\n{metrics}"
            );
        }
        for series in [
            "ha_term ",
            "ha_commit_index ",
            "ha_leader_changes_total ",
            "ha_entries_per_sync ",
            "ha_watchers ",
            "ha_apply_lag_entries ",
            "ha_sync_duration_seconds_count ",
            "ha_read_duration_seconds_count{consistency=\"linearizable\"} ",
        ] {
            assert!(
                sample(&metrics, series).is_some(),
                "{series} missing from /metrics:\n{metrics}"
            );
        }
        assert_eq!(sample(&metrics, "ha_healthy "), Some(1.0));
        assert!(
            sample(&metrics, "ha_node_proposals_total{op=\"put\"}").is_some_and(|n| n >= 1.0),
            "puts through this member counted:\n{metrics}"
        );
        assert!(
            sample(&metrics, "ha_proposal_duration_seconds_count ").is_some_and(|n| n >= 1.0),
            "proposal latencies recorded:\n{metrics}"
        );
        // Every running peer's link is connected (the killed member was
        // restarted and caught up above).
        let connected = metrics
            .lines()
            .filter(|l| l.starts_with("ha_peer_link_state{") && l.contains("state=\"connected\""))
            .filter(|l| l.ends_with(" 1"))
            .count();
        assert!(
            connected >= 1,
            "peer links connected in /metrics:\n{metrics}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_leader_hands_leadership_over_and_loses_nothing() {
    one_at_a_time(async {
        let mut c = Cluster::start_with(env!("CARGO_BIN_EXE_ha-node").into(), 3).await;
        let leader = c.healthy().await;
        let mut acked = BTreeMap::new();
        for i in 0..30u64 {
            let id = i % 3 + 1;
            let (k, v) = (format!("t/{i}"), format!("{i}"));
            c.put(id, &k, &v).await;
            acked.insert(k, v);
        }
        let (_, before) = c.get(leader, "/v1/status").await.expect("status");
        let stopped_at = Instant::now();
        assert!(
            c.terminate(leader).await,
            "ha-node exits 0 after SIGTERM:\n{}",
            c.log(leader)
        );
        let new_leader = c.healthy().await;
        let took = stopped_at.elapsed();
        assert_ne!(new_leader, leader);
        assert!(
            c.log(leader)
                .contains("handed leadership over before shutdown"),
            "the stopping leader handed leadership over:\n{}",
            c.log(leader)
        );
        assert!(
            took < Duration::from_secs(10),
            "a new leader after SIGTERM took {took:?}"
        );
        let (_, after) = c.get(new_leader, "/v1/status").await.expect("status");
        assert!(
            after["term"].as_u64() > before["term"].as_u64(),
            "a new term: {before} -> {after}"
        );
        for i in 30..40u64 {
            let id = if i % 2 == 0 {
                new_leader
            } else {
                (1..=3)
                    .find(|&x| x != leader && x != new_leader)
                    .expect("third")
            };
            let (k, v) = (format!("t/{i}"), format!("{i}"));
            c.put(id, &k, &v).await;
            acked.insert(k, v);
        }
        c.check_all(&acked).await;
        c.spawn(leader);
        c.healthy().await;
        c.check_all(&acked).await;
        // A member whose supervisor's end of its stdin closes stops cleanly.
        assert!(
            c.close_stdin(leader).await,
            "clean exit on stdin close:\n{}",
            c.log(leader)
        );
        assert!(c.log(leader).contains("standard input closed"));
    })
    .await;
}

/// Server-sent events of one watch, parsed as they arrive.
struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    /// The next `(event, data)`, skipping comments (keep-alives); fails
    /// when none comes within [`PATIENCE`].
    async fn next(&mut self) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut data) = (String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = e.trim().to_string();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let v = serde_json::from_str(&data).expect("SSE data is JSON");
                return Some((event, v));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("no SSE event (keep-alives aside) within the patience")
                .ok()??;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("SSE is UTF-8"));
        }
    }
}

async fn watch(c: &Cluster, id: u64, body: Value) -> Sse {
    let response = reqwest::Client::new()
        .post(c.url(id, "/v1/watch?encoding=utf8"))
        .json(&body)
        .send()
        .await
        .expect("watch request");
    assert_eq!(response.status(), StatusCode::OK);
    let mut sse = Sse {
        response,
        buffer: String::new(),
    };
    let (event, data) = sse.next().await.expect("the created event");
    assert_eq!(event, "created", "{data}");
    sse
}

/// Collects `(key, value, revision)` of put events until `until` holds or
/// the watch is cancelled; returns the cancel event's data if it was.
async fn collect(
    sse: &mut Sse,
    seen: &mut Vec<(String, String, i64)>,
    until: impl Fn(&[(String, String, i64)]) -> bool,
) -> Option<Value> {
    while !until(seen) {
        let (event, data) = sse.next().await?;
        match event.as_str() {
            "watch" => {
                for e in data["events"].as_array().expect("events") {
                    seen.push((
                        e["kv"]["key"].as_str().expect("key").to_string(),
                        e["kv"]["value"].as_str().expect("value").to_string(),
                        e["kv"]["mod_revision"].as_i64().expect("revision"),
                    ));
                }
            }
            "cancelled" => return Some(data),
            other => panic!("unexpected SSE event {other}: {data}"),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_over_sse_sees_writes_through_another_member_and_resumes_after_its_member_stops() {
    one_at_a_time(async {
        let mut c = Cluster::start_with(env!("CARGO_BIN_EXE_ha-node").into(), 3).await;
        let leader = c.healthy().await;
        // Watch on a follower, write through another member.
        let watcher = (1..=3).find(|&id| id != leader).expect("a follower");
        let writer = (1..=3).find(|&id| id != watcher).expect("another member");
        let mut sse = watch(&c, watcher, json!({ "key": "w/", "prefix": true })).await;
        for i in 0..5 {
            c.put(writer, &format!("w/{i}"), &format!("{i}")).await;
        }
        c.put(writer, "elsewhere", "not watched").await;
        let mut seen = Vec::new();
        let cancelled = collect(&mut sse, &mut seen, |s| s.len() >= 5).await;
        assert!(cancelled.is_none(), "watch cancelled early: {cancelled:?}");
        let keys: Vec<&str> = seen.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["w/0", "w/1", "w/2", "w/3", "w/4"],
            "in order, once each"
        );
        assert!(
            seen.windows(2).all(|w| w[0].2 < w[1].2),
            "revisions ascend: {seen:?}"
        );

        // More writes, then the watcher's member stops: its stream ends
        // with the revision to resume from, and a watch on another member
        // from there gets exactly what was missed.
        for i in 5..8 {
            c.put(writer, &format!("w/{i}"), &format!("{i}")).await;
        }
        assert!(c.terminate(watcher).await, "clean exit");
        let cancelled = collect(&mut sse, &mut seen, |_| false)
            .await
            .expect("the stream ends with a cancelled event");
        assert_eq!(cancelled["reason"], "member_stopped", "{cancelled}");
        let resume = cancelled["resume_revision"]
            .as_i64()
            .expect("resume_revision");
        assert!(
            seen.iter().all(|(_, _, r)| *r < resume),
            "everything below {resume} was delivered: {seen:?}"
        );
        let mut resumed = watch(
            &c,
            writer,
            json!({ "key": "w/", "prefix": true, "start_revision": resume }),
        )
        .await;
        c.put(writer, "w/8", "8").await;
        collect(&mut resumed, &mut seen, |s| {
            s.iter().any(|(k, _, _)| k == "w/8")
        })
        .await;
        let keys: Vec<String> = seen.iter().map(|(k, _, _)| k.clone()).collect();
        let want: Vec<String> = (0..9).map(|i| format!("w/{i}")).collect();
        assert_eq!(
            keys, want,
            "every write seen exactly once across the resume"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_api_serves_every_route_and_answers_bad_requests_with_typed_errors() {
    one_at_a_time(async {
        let c = Cluster::start_with(env!("CARGO_BIN_EXE_ha-node").into(), 3).await;
        let leader = c.healthy().await;
        let f = (1..=3).find(|&id| id != leader).expect("a follower");

        // Base64 is the default encoding: "a" = YQ==, "b" = Yg==.
        let (s, v) = c
            .post(
                f,
                "/v1/kv/put",
                json!({ "key": "YQ==", "value": "Yg==", "prev_kv": true }),
            )
            .await
            .expect("put");
        assert_eq!(s, StatusCode::OK, "{v}");
        let rev = v["header"]["revision"].as_i64().expect("revision");
        let (s, v) = c
            .post(f, "/v1/kv/get", json!({ "key": "YQ==" }))
            .await
            .expect("get");
        assert_eq!(
            (s, v["kv"]["value"].as_str()),
            (StatusCode::OK, Some("Yg==")),
            "{v}"
        );
        let (s, v) = c
            .post(
                f,
                "/v1/kv/range",
                json!({ "key": "YQ==", "serializable": true, "count_only": true }),
            )
            .await
            .expect("range");
        assert_eq!((s, v["count"].as_u64()), (StatusCode::OK, Some(1)), "{v}");

        // A transaction: compare-and-swap, then a read in the same branch.
        let (s, v) = c
            .post(f, "/v1/kv/txn?encoding=utf8", json!({
                "compare": [{ "key": "a", "op": "=", "value": "b" }],
                "success": [{ "put": { "key": "a", "value": "c" } }, { "range": { "key": "a" } }],
                "failure": []
            }))
            .await
            .expect("txn");
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["succeeded"], true, "{v}");
        assert_eq!(v["responses"][1]["range"]["kvs"][0]["value"], "c", "{v}");
        let (s, v) = c
            .post(
                leader,
                "/v1/kv/delete?encoding=utf8",
                json!({ "key": "a", "prefix": true, "prev_kv": true }),
            )
            .await
            .expect("delete");
        assert_eq!((s, v["deleted"].as_u64()), (StatusCode::OK, Some(1)), "{v}");

        // Leases: grant, put with it, keep alive, time to live with keys,
        // list, revoke (its key goes), then 404 for it.
        let (s, v) = c
            .post(f, "/v1/lease/grant", json!({ "ttl_ms": 10_000 }))
            .await
            .expect("grant");
        assert_eq!(s, StatusCode::OK, "{v}");
        let lease = v["id"].as_i64().expect("lease id");
        c.post(
            f,
            "/v1/kv/put?encoding=utf8",
            json!({ "key": "leased", "value": "x", "lease": lease }),
        )
        .await
        .expect("put");
        let (s, v) = c
            .post(f, "/v1/lease/keepalive", json!({ "id": lease }))
            .await
            .expect("keepalive");
        assert_eq!((s, v["id"].as_i64()), (StatusCode::OK, Some(lease)), "{v}");
        let (s, v) = c
            .post(
                leader,
                "/v1/lease/ttl?encoding=utf8",
                json!({ "id": lease, "keys": true }),
            )
            .await
            .expect("ttl");
        assert_eq!(
            (s, v["keys"].clone()),
            (StatusCode::OK, json!(["leased"])),
            "{v}"
        );
        let (s, v) = c.get(f, "/v1/lease/list").await.expect("list");
        assert!(
            s == StatusCode::OK
                && v["leases"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|x| x["id"] == lease)),
            "{v}"
        );
        let (s, v) = c
            .post(f, "/v1/lease/revoke", json!({ "id": lease }))
            .await
            .expect("revoke");
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            c.read(leader, "leased").await,
            None,
            "a revoked lease's key is gone"
        );
        let (s, v) = c
            .post(f, "/v1/lease/keepalive", json!({ "id": lease }))
            .await
            .expect("keepalive");
        assert_eq!(
            (s, v["error"].as_str(), v["lease"].as_i64()),
            (StatusCode::NOT_FOUND, Some("lease_not_found"), Some(lease)),
            "{v}"
        );

        // Compaction, then a read below it: 410 with the compact revision.
        let (_, v) = c
            .post(
                f,
                "/v1/kv/put?encoding=utf8",
                json!({ "key": "z", "value": "1" }),
            )
            .await
            .expect("put");
        let head = v["header"]["revision"].as_i64().expect("revision");
        let (s, v) = c
            .post(f, "/v1/kv/compact", json!({ "revision": head }))
            .await
            .expect("compact");
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = c
            .post(f, "/v1/kv/range", json!({ "key": "YQ==", "revision": rev }))
            .await
            .expect("range");
        assert_eq!(
            (s, v["error"].as_str(), v["compact_revision"].as_i64()),
            (StatusCode::GONE, Some("compacted"), Some(head)),
            "{v}"
        );

        // Bad requests: a reason, never a panic or a dropped connection.
        let raw = |path: &str, body: &'static str| {
            c.client
                .post(c.url(f, path))
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        let r = raw("/v1/kv/put", "{not json").await.expect("send");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let v: Value = r.json().await.expect("json error body");
        assert_eq!(v["error"], "bad_json", "{v}");
        let r = raw("/v1/kv/put", r#"{"key":"a","value":"b"}"#)
            .await
            .expect("send");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"], "bad_encoding", "`a` is not base64: {v}");
        let r = raw("/v1/kv/put", r#"{"key":"YQ==","unknown":1}"#)
            .await
            .expect("send");
        assert_eq!(
            r.status(),
            StatusCode::BAD_REQUEST,
            "unknown fields are refused"
        );
        let (s, v) = c
            .post(f, "/v1/kv/put", json!({ "key": "", "value": "" }))
            .await
            .expect("put");
        assert_eq!(
            (s, v["error"].as_str(), v["reason"].as_str()),
            (
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                Some("empty_key")
            ),
            "{v}"
        );
        let big = "A".repeat(3 * MAX_BODY);
        let r = c
            .client
            .post(c.url(f, "/v1/kv/put"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"key":"YQ==","value":"{big}"}}"#))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"], "body_too_large", "{v}");
        let (s, v) = c
            .post(f, "/v1/kv/put?timeout_ms=abc", json!({}))
            .await
            .expect("put");
        assert_eq!(
            (s, v["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{v}"
        );
        let (s, v) = c.get(f, "/v1/nope").await.expect("404");
        assert_eq!(
            (s, v["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("no_such_route")),
            "{v}"
        );

        // Membership and leadership: a follower refuses with the leader's id.
        let (s, v) = c.get(f, "/v1/members").await.expect("members");
        assert_eq!(
            (s, v["members"].as_array().map(Vec::len)),
            (StatusCode::OK, Some(3)),
            "{v}"
        );
        let (s, v) = c
            .post(f, "/v1/members/remove", json!({ "id": leader }))
            .await
            .expect("remove");
        assert_eq!(
            (s, v["error"].as_str(), v["leader_hint"].as_u64()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("not_leader"),
                Some(leader)
            ),
            "{v}"
        );
        let (s, v) = c
            .post(leader, "/v1/members/promote", json!({ "id": f }))
            .await
            .expect("promote");
        assert_eq!(
            (s, v["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_membership_change")),
            "promoting a voter: {v}"
        );
        let (s, v) = c
            .post(leader, "/v1/leader/transfer", json!({ "to": f }))
            .await
            .expect("transfer");
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(c.healthy().await, f, "leadership moved to {f}");

        let (s, v) = c.get(f, "/v1/status").await.expect("status");
        assert_eq!(
            (s, v["role"].as_str(), v["id"].as_u64()),
            (StatusCode::OK, Some("leader"), Some(f)),
            "{v}"
        );
        let (s, v) = c.get(f, "/health").await.expect("health");
        assert_eq!(
            (s, v["healthy"].as_bool()),
            (StatusCode::OK, Some(true)),
            "{v}"
        );
        // Fault injection is not served without --enable-failpoints.
        let (s, v) = c
            .post(f, "/v1/debug/disk-delay", json!({ "ms": 100 }))
            .await
            .expect("disk delay");
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_by_address_is_promoted_and_every_member_learns_its_address() {
    one_at_a_time(async {
        let mut c = Cluster::start_with(env!("CARGO_BIN_EXE_ha-node").into(), 3).await;
        let leader = c.healthy().await;
        let mut acked = BTreeMap::new();
        for i in 0..10 {
            c.put(i % 3 + 1, &format!("j/{i}"), "before").await;
            acked.insert(format!("j/{i}"), "before".to_string());
        }
        // `--join <client API of member 1>`, no `--members`: it asks the
        // group to add it.
        c.spawn(4);
        let address = format!("127.0.0.1:{}", c.peer[&4]);
        // Promoted once caught up; every member's address book learns the
        // new member's address from the replicated membership.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut done = true;
            for id in 1..=3u64 {
                let (_, v) = c.get(id, "/v1/members").await.expect("members");
                let four = v["members"]
                    .as_array()
                    .and_then(|m| m.iter().find(|x| x["id"] == 4))
                    .cloned();
                done &= four
                    .is_some_and(|f| f["role"] == "voter" && f["peer_address"] == json!(address));
            }
            if done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member 4 not a voter known everywhere:\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.healthy().await;
        // Lead through it: the others must reach it by the learned address.
        let (s, v) = c
            .post(leader, "/v1/leader/transfer", json!({ "to": 4 }))
            .await
            .expect("transfer");
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(c.healthy().await, 4);
        for i in 10..20 {
            c.put(i % 4 + 1, &format!("j/{i}"), "after").await;
            acked.insert(format!("j/{i}"), "after".to_string());
        }
        c.check_all(&acked).await;
    })
    .await;
}

/// Mutual TLS between the members and TLS on their client API
/// (`Cluster::start_tls`): `cargo test --test ha_node tls`.
mod tls {
    use super::*;
    use ha_core::{KvClient, KvOptions};
    use ha_examples::certs::{Ca, Validity};

    /// A plaintext hello to a TLS peer port: a TLS alert at most, then the
    /// end of the connection.
    async fn expect_refused(addr: SocketAddr, bytes: &[u8], case: &str) {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the peer port");
        let _ = s.write_all(bytes).await;
        let mut got = Vec::new();
        match tokio::time::timeout(PATIENCE, s.read_to_end(&mut got)).await {
            Ok(_) => assert!(
                got.first().is_none_or(|&b| b == 0x15),
                "{case}: the member answered something other than a TLS alert: {got:?}"
            ),
            Err(_) => panic!("{case}: connection not closed within {PATIENCE:?}"),
        }
    }

    /// An HTTPS client trusting `ca_pem`, presenting `identity` (PEM).
    fn https(ca_pem: &str, identity: Option<String>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(0);
        if let Some(id) = identity {
            b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).unwrap());
        }
        b.build().unwrap()
    }

    /// `--join` over HTTPS: the new member trusts only the CA and presents
    /// its own member certificate to the member it asks (which requires
    /// client certificates), then talks to its peers over mutual TLS.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_a_member_joins_by_address_over_https_with_its_own_certificate() {
        one_at_a_time(async {
            let mut c = Cluster::start_tls(3).await;
            c.healthy().await;
            c.put(1, "t/before", "1").await;
            c.spawn(4);
            let address = format!("127.0.0.1:{}", c.peer[&4]);
            let deadline = Instant::now() + PATIENCE;
            loop {
                let (_, v) = c.get(1, "/v1/members").await.expect("members");
                let four = v["members"]
                    .as_array()
                    .and_then(|m| m.iter().find(|x| x["id"] == 4))
                    .cloned();
                if four.is_some_and(|f| f["role"] == "voter" && f["peer_address"] == json!(address))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "member 4 did not join over TLS:\n{}",
                    c.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            c.healthy().await;
            c.put(4, "t/after", "2").await;
            let acked = BTreeMap::from([
                ("t/before".to_string(), "1".to_string()),
                ("t/after".to_string(), "2".to_string()),
            ]);
            c.check_all(&acked).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_members_serve_https_to_the_right_clients_and_refuse_the_rest() {
        one_at_a_time(async {
            let c = Cluster::start_tls(3).await;
            let leader = c.healthy().await;
            let mut acked = BTreeMap::new();
            for i in 0..6u64 {
                c.put(i % 3 + 1, &format!("t/{i}"), "v").await;
                acked.insert(format!("t/{i}"), "v".to_string());
            }
            let tls = c.tls.as_ref().expect("TLS cluster");
            let ca_pem = tls.ca.cert_pem();
            // RemoteKv with the group's CA and a client certificate.
            let kv = ha_client::RemoteKv::builder(c.endpoints(&[1, 2, 3]))
                .tls_ca_pem(ca_pem.clone())
                .tls_identity_pem(format!("{}{}", tls.client.cert, tls.client.key))
                .build()
                .expect("TLS RemoteKv");
            kv.put(
                ha_core::PutRequest::new("t/remote", "r"),
                KvOptions::default(),
            )
            .await
            .expect("put through RemoteKv over TLS");
            acked.insert("t/remote".into(), "r".into());
            // Refused on the client API: plaintext; no client certificate;
            // a certificate of another CA; a CA the client does not trust.
            let health = |scheme: &str| format!("{scheme}://127.0.0.1:{}/health", c.http[&leader]);
            let stranger = Ca::new("stranger").unwrap();
            let foreign = stranger
                .issue(&["client".to_string()], Validity::Default)
                .unwrap();
            let expired = tls
                .ca
                .issue(&["client".to_string()], Validity::Expired)
                .unwrap();
            let refused: Vec<(&str, reqwest::Client, String)> = vec![
                (
                    "plaintext HTTP",
                    reqwest::Client::builder()
                        .timeout(Duration::from_secs(5))
                        .build()
                        .unwrap(),
                    health("http"),
                ),
                (
                    "no client certificate",
                    https(&ca_pem, None),
                    health("https"),
                ),
                (
                    "a client certificate of another CA",
                    https(&ca_pem, Some(format!("{}{}", foreign.cert, foreign.key))),
                    health("https"),
                ),
                (
                    "an expired client certificate",
                    https(&ca_pem, Some(format!("{}{}", expired.cert, expired.key))),
                    health("https"),
                ),
                (
                    "a client that does not trust the group's CA",
                    https(
                        &stranger.cert_pem(),
                        Some(format!("{}{}", tls.client.cert, tls.client.key)),
                    ),
                    health("https"),
                ),
            ];
            for (case, client, url) in refused {
                let r = client.get(&url).send().await;
                assert!(
                    r.as_ref().map(|r| !r.status().is_success()).unwrap_or(true),
                    "{case}: answered {:?}",
                    r.map(|r| r.status())
                );
            }
            // Refused on the peer port: a plaintext peer.
            let peer = format!("127.0.0.1:{}", c.peer[&leader]).parse().unwrap();
            let other = if leader == 1 { 2 } else { 1 };
            expect_refused(
                peer,
                &hello(&c.cluster_id(), other, leader),
                "plaintext peer",
            )
            .await;
            // The group keeps serving.
            for i in 6..12u64 {
                c.put(i % 3 + 1, &format!("t/{i}"), "w").await;
                acked.insert(format!("t/{i}"), "w".to_string());
            }
            c.check_all(&acked).await;
        })
        .await;
    }
}

/// A member's `/metrics` text.
async fn metrics_text(c: &Cluster, id: u64) -> String {
    c.client
        .get(c.url(id, "/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Opens up to `n` connections to `addr` from 127.0.0.2 (loopback, but
/// another source address than the test's own client) and holds them,
/// silent.
async fn flood(addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("addr"))
            .expect("bind 127.0.0.2");
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), socket.connect(addr)).await
        {
            held.push(s);
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_a_connection_flood_on_both_ports_leaves_the_group_serving_writes() {
    one_at_a_time(async {
        let c = Cluster::start_with(env!("CARGO_BIN_EXE_ha-node").into(), 3).await;
        let leader = c.healthy().await;
        let mut acked = BTreeMap::new();
        c.put(leader, "f/0", "before").await;
        acked.insert("f/0".to_string(), "before".to_string());
        // Beyond the per-address limits (64 peer, 256 HTTP connections),
        // held open and silent while the group is used.
        let peer: SocketAddr = format!("127.0.0.1:{}", c.peer[&leader]).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", c.http[&leader]).parse().unwrap();
        let held_peer = flood(peer, 150).await;
        let held_http = flood(http, 400).await;
        for i in 1..=9u64 {
            c.put(i % 3 + 1, &format!("f/{i}"), "during").await;
            acked.insert(format!("f/{i}"), "during".to_string());
        }
        c.check_all(&acked).await;
        let text = metrics_text(&c, leader).await;
        let peer_refused = sample(
            &text,
            "ha_peer_connections_rejected_total{reason=\"too_many_connections\"}",
        )
        .unwrap_or(0.0);
        let http_refused = sample(&text, "ha_node_http_connections_over_limit_total").unwrap_or(0.0);
        assert!(
            peer_refused > 0.0 && http_refused > 0.0,
            "the flood ({} peer, {} HTTP connections) met no limit: peer {peer_refused}, http {http_refused}",
            held_peer.len(),
            held_http.len()
        );
        drop((held_peer, held_http));
        c.put(leader, "f/after", "after").await;
        acked.insert("f/after".to_string(), "after".to_string());
        c.check_all(&acked).await;
    })
    .await;
}

/// Membership over the client API: join by address, leaving, address
/// updates, and the start mode a data directory allows
/// (`cargo test --test ha_node membership`).
mod membership {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use ha_examples::procs::free_port;
    use parking_lot::Mutex;

    const BIN: &str = env!("CARGO_BIN_EXE_ha-node");

    /// Puts `w/<n>` through the target members in turn until stopped,
    /// keeping what was acknowledged.
    struct Writer {
        stop: Arc<AtomicBool>,
        targets: Arc<Mutex<Vec<u16>>>,
        acked: Arc<Mutex<BTreeMap<String, String>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Writer {
        fn start(c: &Cluster, ids: &[u64]) -> Writer {
            let stop = Arc::new(AtomicBool::new(false));
            let targets: Arc<Mutex<Vec<u16>>> =
                Arc::new(Mutex::new(ids.iter().map(|id| c.http[id]).collect()));
            let acked = Arc::new(Mutex::new(BTreeMap::new()));
            let client = c.client.clone();
            let task = tokio::spawn({
                let (stop, targets, acked) = (stop.clone(), targets.clone(), acked.clone());
                async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let ports: Vec<u16> = targets.lock().clone();
                        let port = ports[n as usize % ports.len()];
                        let (key, value) = (format!("w/{n:06}"), format!("v{n}@{port}"));
                        let sent = client
                            .post(format!(
                                "http://127.0.0.1:{port}/v1/kv/put?encoding=utf8&timeout_ms=2000"
                            ))
                            .json(&json!({ "key": key, "value": value }))
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status() == StatusCode::OK => {
                                acked.lock().insert(key, value);
                            }
                            // Not acknowledged (maybe applied): not checked.
                            _ => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                        n += 1;
                    }
                }
            });
            Writer {
                stop,
                targets,
                acked,
                task,
            }
        }

        fn add(&self, c: &Cluster, id: u64) {
            self.targets.lock().push(c.http[&id]);
        }

        fn drop_target(&self, c: &Cluster, id: u64) {
            self.targets.lock().retain(|p| *p != c.http[&id]);
        }

        /// Waits until `n` more writes have been acknowledged.
        async fn progress(&self, c: &Cluster, n: usize, phase: &str) {
            let want = self.acked.lock().len() + n;
            let deadline = Instant::now() + PATIENCE;
            while self.acked.lock().len() < want {
                assert!(
                    Instant::now() < deadline,
                    "writes stalled {phase}: {} acknowledged, waiting for {want}\n{}",
                    self.acked.lock().len(),
                    c.logs()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        async fn finish(self) -> BTreeMap<String, String> {
            self.stop.store(true, Ordering::Relaxed);
            self.task.await.expect("writer task");
            std::mem::take(&mut *self.acked.lock())
        }
    }

    /// Waits until every running member lists `who` as a voter at its peer
    /// port.
    async fn wait_voter(c: &Cluster, who: u64) {
        let address = format!("127.0.0.1:{}", c.peer[&who]);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut done = true;
            for &id in c.procs.keys() {
                done &= c
                    .listed(id, who)
                    .await
                    .is_some_and(|m| m["role"] == "voter" && m["peer_address"] == json!(address));
            }
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "member {who} not a voter known everywhere:\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes member `who` through whichever member leads (the leader
    /// itself hands leadership over first and names its successor).
    async fn remove(c: &Cluster, who: u64) {
        if let Err(e) = c.remove_member(who, PATIENCE).await {
            panic!("{e}\n{}", c.logs());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn membership_bootstrap_three_join_two_by_address_remove_two_under_writes() {
        one_at_a_time(async {
            let mut c = Cluster::start_with(BIN.into(), 3).await;
            let leader = c.healthy().await;
            let writer = Writer::start(&c, &[1, 2, 3]);
            writer.progress(&c, 20, "before the joins").await;
            // Member 4 asks a follower (forwarded to the leader over a
            // peer call); member 5 asks member 4.
            let follower = (1..=3).find(|&id| id != leader).expect("a follower");
            c.spawn_joining(4, Some(follower));
            wait_voter(&c, 4).await;
            c.spawn_joining(5, Some(4));
            wait_voter(&c, 5).await;
            for id in [4, 5] {
                assert!(c.initialised(id), "member {id} wrote no ha-node.json");
                let (_, v) = c.get(id, "/v1/status").await.expect("status");
                assert_eq!(
                    v["cluster_id"],
                    json!(c.cluster_id().to_string()),
                    "member {id} learned another cluster id"
                );
                writer.add(&c, id);
            }
            writer.progress(&c, 20, "after the joins").await;
            // Remove a follower, then the leader.
            let leader = c.healthy().await;
            let follower = (1..=5).find(|&id| id != leader).expect("a follower");
            for (who, phase) in [
                (follower, "after removing a follower"),
                (leader, "after removing the leader"),
            ] {
                writer.drop_target(&c, who);
                remove(&c, who).await;
                c.terminate(who).await;
                let now = c.healthy().await;
                assert_ne!(now, who, "the removed member still leads");
                writer.progress(&c, 20, phase).await;
            }
            let acked = writer.finish().await;
            for &id in c.procs.keys() {
                let (_, v) = c.get(id, "/v1/members").await.expect("members");
                let voters = v["members"]
                    .as_array()
                    .map(|m| m.iter().filter(|x| x["role"] == "voter").count());
                assert_eq!(voters, Some(3), "member {id}: {v}");
                for who in [follower, leader] {
                    assert!(
                        v["removed"]
                            .as_array()
                            .is_some_and(|r| r.iter().any(|x| *x == who)),
                        "member {id} does not list {who} as removed: {v}"
                    );
                }
            }
            assert!(
                acked.len() >= 80,
                "only {} writes acknowledged",
                acked.len()
            );
            c.check_prefix("w/", &acked).await;
            c.assert_same_state().await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn membership_a_member_restarted_on_a_new_port_announces_it_and_every_member_learns_it() {
        one_at_a_time(async {
            let mut c = Cluster::start_with(BIN.into(), 3).await;
            let leader = c.healthy().await;
            let mut acked = BTreeMap::new();
            for i in 0..6 {
                c.put(i % 3 + 1, &format!("a/{i}"), "before").await;
                acked.insert(format!("a/{i}"), "before".to_string());
            }
            // A follower moves: same data directory, new peer port.
            let moved = (1..=3).find(|&id| id != leader).expect("a follower");
            assert!(c.terminate(moved).await, "member {moved} did not stop cleanly");
            let old = c.peer[&moved];
            let new = free_port();
            c.peer.insert(moved, new);
            c.spawn(moved);
            let address = format!("127.0.0.1:{new}");
            let deadline = Instant::now() + PATIENCE;
            loop {
                let mut done = true;
                for &id in c.procs.keys() {
                    done &= c.listed(id, moved).await.is_some_and(|m| {
                        m["address"] == json!(address) && m["peer_address"] == json!(address)
                    });
                }
                if done {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "member {moved}'s new address {address} (was port {old}) not learned everywhere:\n{}",
                    c.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            c.healthy().await;
            for i in 6..12 {
                c.put(i % 3 + 1, &format!("a/{i}"), "after").await;
                acked.insert(format!("a/{i}"), "after".to_string());
            }
            c.check_all(&acked).await;
            // The route, through a follower (forwarded): the same address
            // again is accepted; a bad address and an unknown member are
            // refused.
            let other = (1..=3).find(|&id| id != moved).expect("another member");
            let path = format!("/v1/members/{moved}/address");
            let (s, v) = c
                .post(other, &path, json!({ "address": address }))
                .await
                .expect("address update");
            assert_eq!(s, StatusCode::OK, "{v}");
            let (s, v) = c
                .post(other, &path, json!({ "address": "0.0.0.0:1" }))
                .await
                .expect("bad address");
            assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
            let (s, v) = c
                .post(other, "/v1/members/99/address", json!({ "address": address }))
                .await
                .expect("unknown member");
            assert_eq!(
                (s, v["error"].as_str()),
                (StatusCode::NOT_FOUND, Some("no_such_member")),
                "{v}"
            );
        })
        .await;
    }

    /// Runs ha-node with `args` to its end; whether it succeeded, and its
    /// standard error.
    async fn run_node(args: Vec<String>) -> (bool, String) {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(BIN)
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run ha-node");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .expect("ha-node runner")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn membership_the_wrong_start_mode_is_refused_and_join_errors_are_named() {
        one_at_a_time(async {
            let mut c = Cluster::start_with(BIN.into(), 3).await;
            c.healthy().await;
            assert!(c.terminate(3).await, "member 3 did not stop cleanly");
            let data3 = c.data_dir(3).display().to_string();
            let fresh = c.dir.path().join("fresh").display().to_string();
            let common = |id: u64, dir: &str| -> Vec<String> {
                [
                    "--id",
                    &id.to_string(),
                    "--listen",
                    &format!("127.0.0.1:{}", free_port()),
                    "--http",
                    "127.0.0.1:0",
                    "--data-dir",
                    dir,
                    "--insecure-plaintext",
                    "--join-timeout-ms",
                    "1500",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            };
            let join_via_1 = ["--join".to_string(), format!("127.0.0.1:{}", c.http[&1])];
            let cases: Vec<(&str, Vec<String>, &str)> = vec![
                (
                    "--join on an initialised data dir",
                    [common(3, &data3), join_via_1.to_vec()].concat(),
                    "without --join",
                ),
                (
                    "--members of another cluster",
                    [
                        common(3, &data3),
                        vec![
                            "--members".into(),
                            format!("3=127.0.0.1:{},9=127.0.0.1:1", free_port()),
                        ],
                    ]
                    .concat(),
                    "without --members",
                ),
                (
                    "a fresh data dir with neither",
                    common(7, &fresh),
                    "--join <client API address",
                ),
                (
                    "joining under an id that is a member",
                    [common(2, &fresh), join_via_1.to_vec()].concat(),
                    "member 2 is already a member",
                ),
                (
                    "joining through an address nobody answers",
                    [
                        common(7, &fresh),
                        vec!["--join".into(), format!("127.0.0.1:{}", free_port())],
                    ]
                    .concat(),
                    "cannot reach",
                ),
            ];
            for (case, args, expect) in cases {
                let (ok, stderr) = run_node(args).await;
                assert!(!ok, "{case}: ha-node started\n{stderr}");
                assert!(
                    stderr.contains(expect),
                    "{case}: expected `{expect}` in:\n{stderr}"
                );
            }
            assert!(
                !c.dir.path().join("fresh").join("ha-node.json").exists(),
                "a refused join left an identity behind"
            );
            // The refusals changed nothing: member 3 restarts from its data
            // directory and the group serves.
            c.spawn(3);
            c.healthy().await;
            c.put(3, "after", "refusals").await;
        })
        .await;
    }
}
