//! [`WatchHub`]: every watcher of one member, sans-IO. It is told what the
//! MVCC machine applied (events, compaction, snapshot installs), is handed
//! history chunks for watchers that start in the past, and is given the
//! time for periodic progress; it hands responses to each watcher's
//! [`WatchSink`] and never waits for one. The shell and the simulator
//! drive it alike.
//!
//! Each watcher has a next revision: every event below it that it wants
//! has been handed to its sink, and nothing below it is handed again.
//! A watcher is *synced* when its next revision is past the hub's
//! revision (it gets live events as they are applied; one that starts in
//! the future simply waits for them), *unsynced* otherwise (it gets
//! history, chunk by chunk, until it reaches the hub's revision). The two
//! never overlap: live events go to synced watchers only, history only to
//! unsynced ones, so nothing is lost or repeated in between.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use ha_core::{Error, InvalidRequest, WatchCancelReason, WatchEvent, WatchId, WatchRequest};

use super::index::Matcher;

/// What a sink is handed: the events of whole revisions (none for a
/// progress notification), and the revision up to which the watcher has
/// now been sent everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub(crate) revision: i64,
    pub(crate) events: Vec<WatchEvent>,
}

/// What became of an offered delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Queued for the watcher.
    Sent,
    /// The watcher's buffer is full; the delivery was dropped.
    Full,
    /// Nobody listens any more.
    Closed,
}

/// Where a watcher's responses go: a bounded buffer that never blocks.
pub(crate) trait WatchSink: Send {
    /// Queues `delivery` if there is room.
    fn offer(&mut self, delivery: Delivery) -> Offer;
    /// True when an offer now would be queued.
    fn has_room(&self) -> bool;
    /// Ends the watch with `error`, after what is already queued.
    fn close(&mut self, error: Error);
}

struct Watcher {
    request: WatchRequest,
    /// See the module docs; for a synced watcher the effective next
    /// revision is `max(next, hub.revision + 1)`.
    next: i64,
    synced: bool,
    sink: Box<dyn WatchSink>,
    /// When the watcher was last sent anything (periodic progress).
    last_sent: Instant,
}

/// Tuning of a [`WatchHub`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct HubConfig {
    /// A watcher asking for it gets a progress notification after this
    /// long without any response.
    pub(crate) progress_interval: Duration,
}

pub(crate) struct WatchHub {
    /// Injected bug (i): a past start revision is taken one too late.
    resume_late: bool,
    /// Injected bug: progress names the hub's revision, even for a
    /// watcher still catching up.
    progress_ahead: bool,
    /// Injected bug: a client's cancel is ignored (the watcher stays and
    /// is offered responses until its sink reports it closed).
    cancel_ignored: bool,
    config: HubConfig,
    /// The last revision the machine reported as committed.
    revision: i64,
    compact_revision: i64,
    watchers: HashMap<WatchId, Watcher>,
    matcher: Matcher,
    unsynced: BTreeSet<WatchId>,
    progress_notify: BTreeSet<WatchId>,
    /// Asked for progress and not yet sent it (the buffer was full, or the
    /// watcher is still catching up).
    progress_requested: BTreeSet<WatchId>,
    next_id: u64,
    /// Scratch space for matching.
    matched: Vec<WatchId>,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHub")
            .field("revision", &self.revision)
            .field("compact_revision", &self.compact_revision)
            .field("watchers", &self.watchers.len())
            .field("unsynced", &self.unsynced.len())
            .finish()
    }
}

impl WatchHub {
    /// A hub for a machine at `revision`, compacted at `compact_revision`.
    pub(crate) fn new(revision: i64, compact_revision: i64, config: HubConfig) -> Self {
        WatchHub {
            resume_late: false,
            progress_ahead: false,
            cancel_ignored: false,
            config,
            revision,
            compact_revision,
            watchers: HashMap::new(),
            matcher: Matcher::default(),
            unsynced: BTreeSet::new(),
            progress_notify: BTreeSet::new(),
            progress_requested: BTreeSet::new(),
            next_id: 1,
            matched: Vec::new(),
        }
    }

    /// Switches injected bugs on (the simulator's; off in production).
    pub(crate) fn set_bugs(&mut self, bugs: crate::bugs::Bugs) {
        self.resume_late = bugs.watch_resume_late;
        self.progress_ahead = bugs.watch_progress_ahead;
        self.cancel_ignored = bugs.watch_cancel_ignored;
    }

    #[cfg(test)]
    pub(crate) fn revision(&self) -> i64 {
        self.revision
    }

    pub(crate) fn len(&self) -> usize {
        self.watchers.len()
    }

    /// Watchers that still need history.
    pub(crate) fn unsynced(&self) -> usize {
        self.unsynced.len()
    }

    fn effective_next(&self, w: &Watcher) -> i64 {
        if w.synced {
            w.next.max(self.revision + 1)
        } else {
            w.next
        }
    }

    /// Registers a watcher.
    ///
    /// # Errors
    /// `InvalidRequest` for a negative start revision; `Compacted` for one
    /// at or below the compact revision.
    pub(crate) fn add(
        &mut self,
        request: WatchRequest,
        sink: Box<dyn WatchSink>,
        now: Instant,
    ) -> Result<WatchId, Error> {
        if request.start_revision < 0 {
            return Err(Error::InvalidRequest {
                reason: InvalidRequest::NegativeRevision,
            });
        }
        let next = if request.start_revision == 0 {
            self.revision + 1
        } else if self.resume_late {
            request.start_revision + 1
        } else {
            request.start_revision
        };
        if self.compact_revision > 0 && next <= self.compact_revision {
            return Err(Error::Compacted {
                compact_revision: self.compact_revision,
            });
        }
        let id = WatchId(self.next_id);
        self.next_id += 1;
        let synced = next > self.revision;
        self.matcher.insert(id, &request.range);
        if !synced {
            self.unsynced.insert(id);
        }
        if request.progress_notify {
            self.progress_notify.insert(id);
        }
        self.watchers.insert(
            id,
            Watcher {
                request,
                next,
                synced,
                sink,
                last_sent: now,
            },
        );
        Ok(id)
    }

    /// Forgets a watcher (its stream was dropped).
    pub(crate) fn remove(&mut self, id: WatchId) -> bool {
        match self.watchers.remove(&id) {
            Some(w) => {
                self.forget(id, &w);
                true
            }
            None => false,
        }
    }

    /// The watch's client cancelled it (`WatchControl::cancel`: its
    /// stream was dropped): the watcher is forgotten at once, and its sink
    /// is never offered anything again.
    pub(crate) fn cancel(&mut self, id: WatchId) -> bool {
        if self.cancel_ignored {
            return self.watchers.contains_key(&id);
        }
        self.remove(id)
    }

    fn forget(&mut self, id: WatchId, w: &Watcher) {
        self.matcher.remove(id, &w.request.range);
        self.unsynced.remove(&id);
        self.progress_notify.remove(&id);
        self.progress_requested.remove(&id);
    }

    fn close(&mut self, id: WatchId, error: Error) {
        if let Some(mut w) = self.watchers.remove(&id) {
            self.forget(id, &w);
            w.sink.close(error);
        }
    }

    /// Ends every watch (the member stops); each error names the revision
    /// to resume from.
    pub(crate) fn cancel_all(&mut self, reason: WatchCancelReason) {
        let ids: Vec<WatchId> = self.watchers.keys().copied().collect();
        for id in ids {
            let resume_revision = match self.watchers.get(&id) {
                Some(w) => self.effective_next(w),
                None => continue,
            };
            self.close(
                id,
                Error::WatchCancelled {
                    resume_revision,
                    reason,
                },
            );
        }
    }

    /// The events an apply step committed, in revision order; `revision`
    /// is the machine's revision after the step. Synced watchers get theirs
    /// at once, one response per watcher holding whole revisions; one
    /// whose buffer is full is cancelled with the revision to resume from.
    pub(crate) fn on_events(&mut self, events: &[WatchEvent], revision: i64, now: Instant) {
        let old = self.revision;
        let revision = revision.max(old);
        if !self.matcher.is_empty() {
            let mut batches: HashMap<WatchId, Vec<WatchEvent>> = HashMap::new();
            let mut matched = std::mem::take(&mut self.matched);
            for event in events {
                let rev = event.revision();
                if rev <= old {
                    continue;
                }
                matched.clear();
                self.matcher.matching(&event.kv.key, &mut matched);
                for id in &matched {
                    let Some(w) = self.watchers.get(id) else {
                        continue;
                    };
                    if !w.synced || rev < w.next || !w.request.wants(event) {
                        continue;
                    }
                    batches
                        .entry(*id)
                        .or_default()
                        .push(shape(event, w.request.prev_kv));
                }
            }
            self.matched = matched;
            for (id, events) in batches {
                let Some(w) = self.watchers.get_mut(&id) else {
                    continue;
                };
                let resume_revision = w.next.max(old + 1);
                match w.sink.offer(Delivery { revision, events }) {
                    Offer::Sent => {
                        w.next = revision + 1;
                        w.last_sent = now;
                    }
                    Offer::Full => self.close(
                        id,
                        Error::WatchCancelled {
                            resume_revision,
                            reason: WatchCancelReason::SlowConsumer,
                        },
                    ),
                    Offer::Closed => {
                        self.remove(id);
                    }
                }
            }
        }
        self.revision = revision;
    }

    /// The step compacted history up to `compact_revision`: watchers still
    /// needing revisions at or below it cannot get them.
    pub(crate) fn on_compacted(&mut self, compact_revision: i64) {
        self.compact_revision = self.compact_revision.max(compact_revision);
        let lost: Vec<WatchId> = self
            .unsynced
            .iter()
            .copied()
            .filter(|id| {
                self.watchers
                    .get(id)
                    .is_some_and(|w| w.next <= self.compact_revision)
            })
            .collect();
        for id in lost {
            self.close(
                id,
                Error::Compacted {
                    compact_revision: self.compact_revision,
                },
            );
        }
    }

    /// A snapshot replaced the machine's state: every watcher catches up
    /// again from history (the events it missed are there, unless
    /// compacted).
    pub(crate) fn on_restored(&mut self, revision: i64, compact_revision: i64) {
        let nexts: Vec<(WatchId, i64)> = self
            .watchers
            .iter()
            .map(|(id, w)| (*id, self.effective_next(w)))
            .collect();
        self.revision = revision;
        for (id, next) in nexts {
            if let Some(w) = self.watchers.get_mut(&id) {
                w.next = next;
                w.synced = next > revision;
                if w.synced {
                    self.unsynced.remove(&id);
                } else {
                    self.unsynced.insert(id);
                }
            }
        }
        self.compact_revision = compact_revision;
        self.on_compacted(compact_revision);
    }

    /// The history chunk to read next, `(from, to)`: from the lowest next
    /// revision of an unsynced watcher that has room, up to the hub's
    /// revision. `None` when no such watcher exists.
    pub(crate) fn catch_up_plan(&self) -> Option<(i64, i64)> {
        let from = self
            .unsynced
            .iter()
            .filter_map(|id| self.watchers.get(id))
            .filter(|w| w.sink.has_room())
            .map(|w| w.next)
            .min()?;
        Some((from, self.revision))
    }

    /// History read for a plan starting at `from`: every event of
    /// revisions `from..=covered`. Unsynced watchers whose next revision
    /// lies in that span get theirs and move past it (becoming synced when
    /// they reach the hub's revision); one whose buffer is full stays where
    /// it was and is offered the chunk again later.
    pub(crate) fn on_history(
        &mut self,
        from: i64,
        events: &[WatchEvent],
        covered: i64,
        now: Instant,
    ) {
        let covered = covered.min(self.revision);
        let due: Vec<WatchId> = self
            .unsynced
            .iter()
            .copied()
            .filter(|id| {
                self.watchers
                    .get(id)
                    .is_some_and(|w| w.next >= from && w.next <= covered)
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let mut batches: HashMap<WatchId, Vec<WatchEvent>> = HashMap::new();
        let mut matched = std::mem::take(&mut self.matched);
        for event in events {
            let rev = event.revision();
            if rev < from || rev > covered {
                continue;
            }
            matched.clear();
            self.matcher.matching(&event.kv.key, &mut matched);
            for id in &matched {
                let Some(w) = self.watchers.get(id) else {
                    continue;
                };
                if w.synced
                    || rev < w.next
                    || w.next < from
                    || w.next > covered
                    || !w.request.wants(event)
                {
                    continue;
                }
                batches
                    .entry(*id)
                    .or_default()
                    .push(shape(event, w.request.prev_kv));
            }
        }
        self.matched = matched;
        for id in due {
            let offer = match (batches.remove(&id), self.watchers.get_mut(&id)) {
                (_, None) => continue,
                (None, Some(_)) => Offer::Sent,
                (Some(events), Some(w)) => w.sink.offer(Delivery {
                    revision: covered,
                    events,
                }),
            };
            match offer {
                Offer::Sent => {
                    let revision = self.revision;
                    if let Some(w) = self.watchers.get_mut(&id) {
                        w.next = covered + 1;
                        w.last_sent = now;
                        if w.next > revision {
                            w.synced = true;
                            self.unsynced.remove(&id);
                        }
                    }
                    // Progress asked for during the catch-up is due now.
                    self.send_owed_progress(id, now);
                }
                Offer::Full => {}
                Offer::Closed => {
                    self.remove(id);
                }
            }
        }
    }

    /// History from a plan was compacted away (`Compacted` from the
    /// machine).
    pub(crate) fn on_history_compacted(&mut self, compact_revision: i64) {
        self.on_compacted(compact_revision);
    }

    /// A watcher asks for progress: sent now if it is synced and its
    /// buffer has room, else once both hold (as etcd, progress goes to
    /// synced watchers only: one still catching up from history would
    /// otherwise spend its buffer on notifications instead of events).
    pub(crate) fn request_progress(&mut self, id: WatchId, now: Instant) {
        let Some(w) = self.watchers.get(&id) else {
            return;
        };
        if !self.progress_due(w) || !self.send_progress(id, now) {
            self.progress_requested.insert(id);
        }
    }

    /// Whether a watcher may be sent progress: once synced (with the
    /// injected `watch-progress-ahead` bug, always).
    fn progress_due(&self, w: &Watcher) -> bool {
        w.synced || self.progress_ahead
    }

    /// Sends progress `id` asked for and is still owed, if it may go now
    /// and fits.
    fn send_owed_progress(&mut self, id: WatchId, now: Instant) {
        let due = self.watchers.get(&id).is_some_and(|w| self.progress_due(w));
        if due && self.progress_requested.contains(&id) && self.send_progress(id, now) {
            self.progress_requested.remove(&id);
        }
    }

    /// The progress revision of a watcher: every event it wants at or
    /// below it has been sent; never beyond the hub's revision.
    fn progress_revision(&self, w: &Watcher) -> i64 {
        if self.progress_ahead {
            return self.revision;
        }
        (self.effective_next(w) - 1).min(self.revision)
    }

    /// True when sent (or the watcher is gone).
    fn send_progress(&mut self, id: WatchId, now: Instant) -> bool {
        let Some(w) = self.watchers.get(&id) else {
            return true;
        };
        let revision = self.progress_revision(w);
        let Some(w) = self.watchers.get_mut(&id) else {
            return true;
        };
        match w.sink.offer(Delivery {
            revision,
            events: Vec::new(),
        }) {
            Offer::Sent => {
                w.last_sent = now;
                true
            }
            Offer::Full => false,
            Offer::Closed => {
                self.remove(id);
                true
            }
        }
    }

    /// Time passes: requested progress still owed is sent where there is
    /// room, and watchers that asked for periodic progress and got nothing
    /// for the progress interval get a notification.
    pub(crate) fn tick(&mut self, now: Instant) {
        // A removed watcher leaves this set with it (`forget`).
        let owed: Vec<WatchId> = self.progress_requested.iter().copied().collect();
        for id in owed {
            self.send_owed_progress(id, now);
        }
        let interval = self.config.progress_interval;
        let idle: Vec<WatchId> = self
            .progress_notify
            .iter()
            .copied()
            .filter(|id| {
                self.watchers.get(id).is_some_and(|w| {
                    self.progress_due(w) && now.saturating_duration_since(w.last_sent) >= interval
                })
            })
            .collect();
        for id in idle {
            // A full buffer means the watcher is not idle: skip it.
            self.send_progress(id, now);
        }
    }
}

/// The event as a watcher sees it (without `prev_kv` unless asked).
fn shape(event: &WatchEvent, prev_kv: bool) -> WatchEvent {
    WatchEvent {
        kind: event.kind,
        kv: event.kv.clone(),
        prev_kv: if prev_kv { event.prev_kv.clone() } else { None },
    }
}

#[cfg(test)]
mod tests;
