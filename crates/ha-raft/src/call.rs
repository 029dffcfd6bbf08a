//! Peer calls on a member: the application's [`CallHandler`], run on tokio
//! tasks with bounded concurrency.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use ha_core::{CallReply, Error, NodeId, OverloadReason, Result};
use parking_lot::RwLock;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

/// Answers peer calls ([`Node::call`](crate::Node::call),
/// [`Node::call_leader`](crate::Node::call_leader)) on the member it is set
/// on ([`Node::set_call_handler`](crate::Node::set_call_handler)).
///
/// Each call runs on a task of the application's runtime, up to
/// `Config::max_concurrent_calls` at once. What the application has to say,
/// its own failures included, belongs in the reply bytes: an `Err` reaches
/// the caller as itself only for `NotLeader` and `Overloaded`; any other
/// becomes [`Error::CallFailed`] with its text.
#[async_trait]
pub trait CallHandler: Send + Sync + 'static {
    /// Answers `request` from member `from`.
    async fn handle(&self, from: NodeId, request: Bytes) -> Result<Bytes>;
}

/// The handler slot and the concurrency bound of one member.
pub(crate) struct Calls {
    id: NodeId,
    handler: RwLock<Option<Arc<dyn CallHandler>>>,
    permits: Arc<Semaphore>,
    runtime: Handle,
}

impl Calls {
    pub(crate) fn new(id: NodeId, max_concurrent: usize, runtime: Handle) -> Calls {
        Calls {
            id,
            handler: RwLock::new(None),
            permits: Arc::new(Semaphore::new(max_concurrent)),
            runtime,
        }
    }

    pub(crate) fn set_handler(&self, handler: Arc<dyn CallHandler>) {
        *self.handler.write() = Some(handler);
    }

    /// Runs the handler for `request` on a task and answers `reply` with its
    /// result; answers at once when no handler is set or the bound is
    /// reached. Never blocks.
    pub(crate) fn dispatch(&self, from: NodeId, request: Bytes, reply: CallReply) {
        let handler = self.handler.read().clone();
        let Some(handler) = handler else {
            reply(Err(Error::NoCallHandler { peer: self.id }));
            return;
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            reply(Err(Error::Overloaded {
                reason: OverloadReason::TooManyCalls,
            }));
            return;
        };
        let id = self.id;
        self.runtime.spawn(async move {
            let run = AssertUnwindSafe(handler.handle(from, request)).catch_unwind();
            let result = match run.await {
                Ok(r) => r.map_err(|e| handler_error(id, e)),
                Err(_) => {
                    tracing::error!(node = %id, %from, "call handler panicked");
                    Err(Error::CallFailed {
                        peer: id,
                        reason: Arc::from("the call handler panicked"),
                    })
                }
            };
            drop(permit);
            reply(result);
        });
    }
}

/// What a caller is told when the handler of member `peer` failed with `e`:
/// the errors a caller acts on stay typed, the rest become text.
fn handler_error(peer: NodeId, e: Error) -> Error {
    match e {
        Error::NotLeader { .. } | Error::Overloaded { .. } => e,
        Error::CallFailed { .. } => e,
        other => Error::CallFailed {
            peer,
            reason: Arc::from(other.to_string()),
        },
    }
}
