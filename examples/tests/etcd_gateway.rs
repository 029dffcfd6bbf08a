//! ha-node's etcd gateway as a client library sees it: the `etcd-client`
//! crate multiplexes every call of a process over one HTTP/2 connection
//! per endpoint, so the gateway's per-connection stream bound is that
//! client's concurrency.
#![cfg(feature = "etcd")]

use etcd_client::{Client, EventType, WatchOptions};
use ha_examples::procs::{Cluster, PATIENCE, one_at_a_time};

/// More calls in flight on one connection than the client API's HTTP/1.1
/// bound (16): each watch holds a stream open for as long as it lives.
const STREAMS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_connection_carries_many_concurrent_calls() {
    one_at_a_time(async {
        let c = Cluster::start_etcd(1).await;
        c.healthy().await;
        let endpoint = format!("http://{}", c.etcd_endpoints());
        let mut client = tokio::time::timeout(PATIENCE, Client::connect([endpoint], None))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut watches = Vec::new();
        for i in 0..STREAMS {
            let opened = tokio::time::timeout(
                PATIENCE,
                client.watch(format!("w/{i}"), Some(WatchOptions::new())),
            )
            .await
            .unwrap_or_else(|_| {
                panic!("watch {i} was not opened: the connection is out of streams")
            })
            .expect("watch");
            watches.push(opened);
        }
        for (i, stream) in watches.iter_mut().enumerate() {
            let created = tokio::time::timeout(PATIENCE, stream.message())
                .await
                .unwrap_or_else(|_| panic!("watch {i} never confirmed"))
                .expect("watch stream")
                .expect("a first response");
            assert!(
                created.created(),
                "watch {i}: first response is the creation"
            );
        }
        // Every stream is live: each sees its own key's put.
        for i in 0..STREAMS {
            tokio::time::timeout(PATIENCE, client.put(format!("w/{i}"), "v", None))
                .await
                .expect("put in time")
                .expect("put");
        }
        for (i, stream) in watches.iter_mut().enumerate() {
            let resp = tokio::time::timeout(PATIENCE, stream.message())
                .await
                .unwrap_or_else(|_| panic!("watch {i} saw no event"))
                .expect("watch stream")
                .expect("an event");
            let event = &resp.events()[0];
            assert_eq!(event.event_type(), EventType::Put);
            let kv = event.kv().expect("kv");
            assert_eq!(kv.key(), format!("w/{i}").as_bytes());
        }
    })
    .await;
}
