//! `etcdserverpb.Watch`: one bidirectional stream carrying many watches.
//!
//! Each created watch is an ha watch ([`KvClient::watch`]) forwarded by a
//! task of its own into the one response stream. The `created` answer goes
//! out before the watch's first event; its header revision `R` is exactly
//! where a watch without a start revision starts (`R + 1`), so a client
//! that resumes from `R + 1` misses nothing.
//!
//! [`KvClient::watch`]: ha_core::KvClient::watch

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use ha_core::{Error, EventKind, WatchEvent, WatchRequest};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::pb::etcdserverpb::{self as pb, watch_server::Watch};
use crate::pb::mvccpb;
use crate::status::to_status;
use crate::{Inner, convert};

pub(crate) struct WatchService(pub(crate) Arc<Inner>);

type WatchResponses = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;
type Replies = mpsc::Sender<Result<pb::WatchResponse, Status>>;

/// etcd's message for a watch whose start revision was compacted.
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

struct Watcher {
    forward: JoinHandle<()>,
    progress: mpsc::Sender<()>,
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchResponses;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let requests = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(serve_stream(self.0.clone(), requests, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Reads one client stream's requests until it ends, then cancels its
/// watches.
async fn serve_stream(inner: Arc<Inner>, mut requests: Streaming<pb::WatchRequest>, tx: Replies) {
    use pb::watch_request::RequestUnion;
    let mut watches: HashMap<i64, Watcher> = HashMap::new();
    let mut next_id: i64 = 0;
    loop {
        let next = tokio::select! {
            next = requests.next() => next,
            () = tx.closed() => None,
        };
        let Some(Ok(request)) = next else { break };
        // Forget watches whose forwarder ended (cancelled by ha, compacted).
        watches.retain(|_, w| !w.forward.is_finished());
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => {
                let id = if create.watch_id != 0 {
                    create.watch_id
                } else {
                    while watches.contains_key(&next_id) {
                        next_id += 1;
                    }
                    next_id
                };
                if watches.contains_key(&id) {
                    let reply = pb::WatchResponse {
                        watch_id: id,
                        created: true,
                        canceled: true,
                        cancel_reason: "etcdserver: mvcc: watcher ID in use".into(),
                        ..Default::default()
                    };
                    if tx.send(Ok(reply)).await.is_err() {
                        break;
                    }
                    continue;
                }
                if let Some(w) = create_watch(&inner, id, create, &tx).await {
                    watches.insert(id, w);
                }
            }
            Some(RequestUnion::CancelRequest(cancel)) => {
                if let Some(w) = watches.remove(&cancel.watch_id) {
                    // Dropping the ha watch stream cancels it.
                    w.forward.abort();
                    let header = inner.header(ha_core::KvOptions::default()).await.ok();
                    let reply = pb::WatchResponse {
                        header,
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    if tx.send(Ok(reply)).await.is_err() {
                        break;
                    }
                }
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Each watch answers with a progress notification at a
                // revision that skips none of its unsent events.
                for w in watches.values() {
                    let _ = w.progress.try_send(());
                }
            }
            None => {}
        }
    }
    for (_, w) in watches {
        w.forward.abort();
    }
}

/// Starts watch `id`: sends `created` (or why it failed) and returns its
/// forwarder.
async fn create_watch(
    inner: &Arc<Inner>,
    id: i64,
    create: pb::WatchCreateRequest,
    tx: &Replies,
) -> Option<Watcher> {
    let header = match inner.header(ha_core::KvOptions::default()).await {
        Ok(h) => h,
        Err(status) => {
            let _ = tx.send(Ok(canceled(id, None, status.message()))).await;
            return None;
        }
    };
    let mut request = WatchRequest::new(convert::key_range(create.key, create.range_end));
    request.start_revision = if create.start_revision > 0 {
        create.start_revision
    } else {
        header.revision + 1
    };
    request.prev_kv = create.prev_kv;
    request.progress_notify = create.progress_notify;
    for f in create.filters {
        match pb::watch_create_request::FilterType::try_from(f) {
            Ok(pb::watch_create_request::FilterType::Noput) => request.no_put = true,
            Ok(pb::watch_create_request::FilterType::Nodelete) => request.no_delete = true,
            Err(_) => {}
        }
    }
    let created = pb::WatchResponse {
        header: Some(header),
        watch_id: id,
        created: true,
        ..Default::default()
    };
    match inner.kv.watch(request).await {
        Ok(stream) => {
            if tx.send(Ok(created)).await.is_err() {
                return None;
            }
            let (progress, progress_rx) = mpsc::channel(1);
            let forward = tokio::spawn(forward(inner.clone(), id, stream, progress_rx, tx.clone()));
            Some(Watcher { forward, progress })
        }
        Err(Error::Compacted { compact_revision }) => {
            // etcd creates the watch, then cancels it naming the compact
            // revision: the client resumes from there.
            if tx.send(Ok(created)).await.is_ok() {
                let mut reply = canceled(id, Some(header), COMPACTED);
                reply.compact_revision = compact_revision;
                let _ = tx.send(Ok(reply)).await;
            }
            None
        }
        Err(e) => {
            let mut reply = canceled(id, Some(header), to_status(&e).message());
            reply.created = true;
            let _ = tx.send(Ok(reply)).await;
            None
        }
    }
}

fn canceled(id: i64, header: Option<pb::ResponseHeader>, reason: &str) -> pb::WatchResponse {
    pb::WatchResponse {
        header,
        watch_id: id,
        canceled: true,
        cancel_reason: reason.to_owned(),
        ..Default::default()
    }
}

fn event(e: WatchEvent) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            EventKind::Put => mvccpb::event::EventType::Put as i32,
            EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(convert::kv(e.kv)),
        prev_kv: e.prev_kv.map(convert::kv),
    }
}

/// Forwards one ha watch's responses until it ends or is aborted.
async fn forward(
    inner: Arc<Inner>,
    id: i64,
    mut stream: ha_core::WatchStream,
    mut progress: mpsc::Receiver<()>,
    tx: Replies,
) {
    loop {
        tokio::select! {
            next = stream.next() => {
                let reply = match next {
                    Some(Ok(resp)) => pb::WatchResponse {
                        header: Some(convert::header(&resp.header)),
                        watch_id: id,
                        events: resp.events.into_iter().map(event).collect(),
                        ..Default::default()
                    },
                    Some(Err(Error::Compacted { compact_revision })) => {
                        let header = inner.header(ha_core::KvOptions::default()).await.ok();
                        let mut r = canceled(id, header, COMPACTED);
                        r.compact_revision = compact_revision;
                        let _ = tx.send(Ok(r)).await;
                        return;
                    }
                    Some(Err(e)) => {
                        let header = inner.header(ha_core::KvOptions::default()).await.ok();
                        let _ = tx.send(Ok(canceled(id, header, &e.to_string()))).await;
                        return;
                    }
                    None => {
                        let header = inner.header(ha_core::KvOptions::default()).await.ok();
                        let _ = tx.send(Ok(canceled(id, header, "etcdserver: watch ended"))).await;
                        return;
                    }
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
            Some(()) = progress.recv() => stream.request_progress(),
            () = tx.closed() => return,
        }
    }
}
