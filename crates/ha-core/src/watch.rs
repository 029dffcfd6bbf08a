//! Watch vocabulary: the change events the KV reports to watchers, what a
//! watcher asks for ([`WatchRequest`]), what it receives
//! ([`WatchResponse`]) and the stream it receives them on
//! ([`WatchStream`]).
//!
//! A watch keeps etcd's six guarantees: events arrive in revision order
//! (ordered), each at most once (unique), all events of one revision in
//! one response (atomic), with no gap (reliable), from any uncompacted
//! revision (resumable: after an error, watch again from the revision it
//! names), and with progress notifications whose revision never skips an
//! event not yet sent (bookmarkable).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use crate::error::Result;
use crate::kv::{KeyRange, KeyValue, ResponseHeader};

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted (explicitly, or with its lease).
    Delete,
}

/// One change of one key, at the revision in `kv.mod_revision`.
///
/// For a delete, `kv` holds only the key and the revision of the delete
/// (`mod_revision`), as in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change.
    pub kv: KeyValue,
    /// The key before the change, when the watcher asked for it and the
    /// key existed.
    pub prev_kv: Option<KeyValue>,
}

impl WatchEvent {
    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// What to watch, from when, and how.
///
/// ```
/// use ha_core::WatchRequest;
/// let w = WatchRequest::prefix("app/").from_revision(42).with_prev_kv().no_delete();
/// assert_eq!(w.start_revision, 42);
/// assert!(w.prev_kv && w.no_delete && !w.no_put);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRequest {
    /// The keys watched.
    pub range: KeyRange,
    /// The first revision whose events are wanted; 0: from the answering
    /// member's next revision. A revision at or below the compact
    /// revision fails with [`crate::Error::Compacted`]; a revision the
    /// member has not reached yet simply waits for it.
    pub start_revision: i64,
    /// Leave puts out.
    pub no_put: bool,
    /// Leave deletes out.
    pub no_delete: bool,
    /// Fill [`WatchEvent::prev_kv`].
    pub prev_kv: bool,
    /// Send a progress notification when the watch has been idle for the
    /// member's progress interval (`KvConfig::watch_progress_interval`).
    pub progress_notify: bool,
}

impl WatchRequest {
    /// Watches `range` from the next revision, every event kind, no
    /// `prev_kv`, no periodic progress.
    pub fn new(range: KeyRange) -> Self {
        WatchRequest {
            range,
            start_revision: 0,
            no_put: false,
            no_delete: false,
            prev_kv: false,
            progress_notify: false,
        }
    }
    /// Watches one key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        WatchRequest::new(KeyRange::key(key))
    }
    /// Watches every key with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        WatchRequest::new(KeyRange::prefix(prefix))
    }
    /// Starts at `revision` (0: the next one).
    pub fn from_revision(mut self, revision: i64) -> Self {
        self.start_revision = revision;
        self
    }
    /// Asks for each event's previous key-value.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    /// Leaves puts out.
    pub fn no_put(mut self) -> Self {
        self.no_put = true;
        self
    }
    /// Leaves deletes out.
    pub fn no_delete(mut self) -> Self {
        self.no_delete = true;
        self
    }
    /// Asks for periodic progress notifications while idle.
    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
    /// True when `event` is one this watch delivers (its key in range, its
    /// kind not filtered out), whatever its revision.
    pub fn wants(&self, event: &WatchEvent) -> bool {
        let kind_ok = match event.kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        };
        kind_ok && self.range.contains(&event.kv.key)
    }
}

/// One message of a watch: the events of one or more whole revisions, or
/// none (a progress notification).
///
/// `header.revision` is a bookmark: every matching event at or below it
/// has been sent, in this response or an earlier one. Watching again from
/// `header.revision + 1` misses nothing and repeats nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchResponse {
    /// The header; see the type's docs for what `revision` promises.
    pub header: ResponseHeader,
    /// The events, in revision order, each revision's together.
    pub events: Vec<WatchEvent>,
}

impl WatchResponse {
    /// True for a progress notification (no events; `header.revision` is
    /// the progress revision).
    pub fn is_progress_notify(&self) -> bool {
        self.events.is_empty()
    }
}

/// A watch's id, unique on the member that serves it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchId(pub u64);

impl fmt::Display for WatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The control side of a watch, implemented by whoever serves it (the
/// in-process member, or a remote client's connection).
pub trait WatchControl: Send + Sync + 'static {
    /// Asks for a progress notification as soon as possible.
    fn request_progress(&self);
    /// Ends the watch; called once, when its [`WatchStream`] is dropped.
    fn cancel(&self);
}

/// The responses of one watch, as a [`Stream`].
///
/// Yields `Ok(WatchResponse)` in order. It ends with one `Err` when the
/// watch is cancelled: [`crate::Error::WatchCancelled`] (watch again from
/// its `resume_revision`, on this or any member) or
/// [`crate::Error::Compacted`] (the revisions it still needed were
/// compacted: read the current state, then watch from after it). Dropping
/// the stream cancels the watch.
///
/// # Cancel safety
/// Polling is cancel safe: a response is either returned or stays queued.
pub struct WatchStream {
    id: WatchId,
    responses: Pin<Box<dyn Stream<Item = Result<WatchResponse>> + Send>>,
    control: Box<dyn WatchControl>,
}

impl WatchStream {
    /// Builds a watch stream from the responses and the control of an
    /// implementation (for `KvClient` implementors).
    pub fn new(
        id: WatchId,
        responses: Pin<Box<dyn Stream<Item = Result<WatchResponse>> + Send>>,
        control: Box<dyn WatchControl>,
    ) -> Self {
        WatchStream {
            id,
            responses,
            control,
        }
    }

    /// The watch's id.
    pub fn id(&self) -> WatchId {
        self.id
    }

    /// Asks for a progress notification: a response without events whose
    /// `header.revision` is the revision up to which every matching event
    /// has been sent.
    pub fn request_progress(&self) {
        self.control.request_progress();
    }
}

impl fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchStream").field("id", &self.id).finish()
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchResponse>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.responses.as_mut().poll_next(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.control.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(Arc<AtomicUsize>, Arc<AtomicUsize>);
    impl WatchControl for Counting {
        fn request_progress(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn cancel(&self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Empty;
    impl Stream for Empty {
        type Item = Result<WatchResponse>;
        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(None)
        }
    }

    #[test]
    fn dropping_the_stream_cancels_the_watch_once() {
        let (progress, cancels) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let s = WatchStream::new(
            WatchId(7),
            Box::pin(Empty),
            Box::new(Counting(progress.clone(), cancels.clone())),
        );
        assert_eq!(s.id(), WatchId(7));
        s.request_progress();
        assert_eq!(cancels.load(Ordering::SeqCst), 0);
        drop(s);
        assert_eq!(progress.load(Ordering::SeqCst), 1);
        assert_eq!(cancels.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn wants_applies_range_and_filters() {
        let ev = |kind, key: &str| WatchEvent {
            kind,
            kv: KeyValue {
                key: key.into(),
                ..KeyValue::default()
            },
            prev_kv: None,
        };
        let w = WatchRequest::prefix("a/").no_delete();
        assert!(w.wants(&ev(EventKind::Put, "a/x")));
        assert!(!w.wants(&ev(EventKind::Delete, "a/x")));
        assert!(!w.wants(&ev(EventKind::Put, "b/x")));
        let w = WatchRequest::key("a").no_put();
        assert!(w.wants(&ev(EventKind::Delete, "a")));
        assert!(!w.wants(&ev(EventKind::Put, "a")));
        assert!(!w.wants(&ev(EventKind::Delete, "ab")));
    }
}
