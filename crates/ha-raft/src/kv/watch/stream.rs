//! The in-process side of a watch: a bounded tokio channel per watcher
//! (the hub's [`WatchSink`]), the stream that reads it, and the control
//! that reaches the hub.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::Stream;
use ha_core::{ClusterId, Error, ResponseHeader, Result, WatchControl, WatchId, WatchResponse};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::driver::Wake;
use super::hub::{Delivery, Offer, WatchHub, WatchSink};
use crate::shell::Node;

/// The error a closed watch ends with, shared by sink and stream.
type FinalError = Arc<Mutex<Option<Error>>>;

pub(crate) struct ChannelSink {
    tx: Option<mpsc::Sender<Delivery>>,
    last: FinalError,
}

impl WatchSink for ChannelSink {
    fn offer(&mut self, delivery: Delivery) -> Offer {
        let Some(tx) = &self.tx else {
            return Offer::Closed;
        };
        match tx.try_send(delivery) {
            Ok(()) => Offer::Sent,
            Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }

    fn has_room(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.capacity() > 0)
    }

    fn close(&mut self, error: Error) {
        *self.last.lock() = Some(error);
        // The stream sees the end after what is queued, then the error.
        self.tx = None;
    }
}

struct ChannelStream {
    rx: mpsc::Receiver<Delivery>,
    last: FinalError,
    node: Node,
    cluster_id: ClusterId,
    done: bool,
}

impl Stream for ChannelStream {
    type Item = Result<WatchResponse>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(d)) => Poll::Ready(Some(Ok(WatchResponse {
                header: ResponseHeader {
                    cluster_id: self.cluster_id,
                    member_id: self.node.id(),
                    revision: d.revision,
                    raft_term: self.node.leader().term,
                },
                events: d.events,
            }))),
            Poll::Ready(None) => {
                self.done = true;
                let last = self.last.lock().take();
                Poll::Ready(last.map(Err))
            }
        }
    }
}

struct HubControl {
    hub: Arc<Mutex<WatchHub>>,
    id: WatchId,
    wake: Wake,
}

impl WatchControl for HubControl {
    fn request_progress(&self) {
        self.hub.lock().request_progress(self.id, Instant::now());
        // Owed progress (a full buffer) is retried by the driver's tick.
        self.wake.wake();
    }

    fn cancel(&self) {
        self.hub.lock().cancel(self.id);
    }
}

/// Registers a watcher with a buffer of `buffer` responses.
///
/// # Errors
/// As [`WatchHub::add`].
pub(crate) fn open(
    hub: &Arc<Mutex<WatchHub>>,
    wake: &Wake,
    node: &Node,
    cluster_id: ClusterId,
    request: ha_core::WatchRequest,
    buffer: usize,
) -> Result<ha_core::WatchStream> {
    let (tx, rx) = mpsc::channel(buffer.max(1));
    let last: FinalError = Arc::new(Mutex::new(None));
    let sink = ChannelSink {
        tx: Some(tx),
        last: last.clone(),
    };
    let id = hub.lock().add(request, Box::new(sink), Instant::now())?;
    wake.wake();
    Ok(ha_core::WatchStream::new(
        id,
        Box::pin(ChannelStream {
            rx,
            last,
            node: node.clone(),
            cluster_id,
            done: false,
        }),
        Box::new(HubControl {
            hub: hub.clone(),
            id,
            wake: wake.clone(),
        }),
    ))
}
