//! Watches under faults (KV workload): watch sessions opened at random
//! revisions on random members through each member's PRODUCTION
//! `WatchHub` (sans-IO; the world drives it as the shell's watch driver
//! does: live events after every apply step, history chunks from the
//! machine for watchers in the past, compactions and reloads, and the
//! time for progress).
//!
//! Each session reads its watch through a bounded buffer (the stream's
//! channel): an eager reader drains it after every hub step; a slow one
//! reads a few responses at seeded intervals and may stall for a while,
//! so the hub's slow-watcher paths run (a live watcher whose buffer is
//! full is cancelled with a resumable error; catch-up pauses while the
//! buffer is full). Sessions watch one key, a `[key, end)` range, a
//! prefix or every key, ask for `prev_kv`, filter puts or deletes, take
//! periodic progress notifications and request progress; some cancel
//! their own watch now and then (`WatchHub::cancel`, what the in-process
//! `WatchControl::cancel` calls when a stream is dropped) and watch
//! again. A member's graceful stop (its removal) ends its watches as
//! `KvNode::shutdown` does (`cancel_all`: `WatchCancelled {
//! MemberStopped }` after what is queued); a crash breaks the connection
//! (what the reader had not read is lost, and the stream ends as the
//! remote client's does: `WatchCancelled { MemberStopped }` at one past
//! what it read). A session whose watch ended or that cancelled it
//! resumes on a member, as a real client does, from the revision after
//! the last one it read everything up to; one refused or cancelled as
//! `Compacted` skips the compacted revisions and resumes after them.
//!
//! At the end every session asks for progress (when it finds nothing to
//! read) until it has caught up with the final revision, and its stream
//! is checked against what the machines applied: ordered, unique,
//! atomic, reliable, `prev_kv` and filters, bookmarkable (a progress
//! notification at R only once every wanted event up to R was sent;
//! progress never goes backwards in a stream), resumable (a cancel names
//! a revision from which nothing is lost), nothing offered to a stream
//! after its client cancelled it, and caught up.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ha_core::{
    Error, EventKind, KeyRange, KeyValue, WatchCancelReason, WatchEvent, WatchId, WatchRequest,
};
use parking_lot::Mutex;

use super::{Event, World};
use crate::kv::watch::{Delivery, HubConfig, Offer, WatchHub, WatchSink};
use crate::sim::Counters;
use crate::sim::check::Violation;
use crate::sim::executor::{MILLIS, Nanos, SECONDS};
use crate::sim::history::{
    EventSeen, HistoryOp, Inputs, OpKind, Outcome, Outputs, SeenKv, WatchFilter, WatchLog,
    WatchRead,
};
use crate::sim::kvload::{self, SimMachine};
use crate::sim::rng::SimRng;

const WATCH_GUARANTEES: &str = "watch guarantees";
/// The client id of the sessions' `watch` records (plus the session).
const WATCH_CLIENT: u64 = 2_000_000;
/// Watch sessions per run.
const SESSIONS: usize = 6;
/// History events read per catch-up chunk (small, so that chunks happen).
const CHUNK: usize = 16;
/// The buffer of an eager reader (drained after every hub step).
const EAGER_BUFFER: usize = 64;
/// How long the end of a run waits for every session to catch up.
const CATCH_UP_LIMIT: Nanos = 10 * SECONDS;
/// The seed of the sessions' own random stream (mixed with the run's),
/// so that watch choices never move the workload's or the faults'.
pub(super) const WATCH_STREAM: u64 = 0x3a7c_4e11_0b5e_7ee5;
/// The seed of each session's second stream (mixed with the run's and
/// the session's): its range and its self-cancels, drawn apart so that
/// the first stream's draws stay where they were.
const MORE_STREAM: u64 = 0x5c1f_0c0d_e2a7_91b3;

/// The bounded buffer between a member's hub and a session's reader (the
/// watch stream's channel): deliveries up to its capacity, then the error
/// that ended the watch.
#[derive(Debug, Default)]
struct Buffer {
    queue: VecDeque<Result<Delivery, Error>>,
    /// Deliveries queued (the closing error takes no room).
    held: usize,
    cap: usize,
    /// Offers refused because the buffer was full.
    refused: u64,
    /// Times the hub found no room (a catch-up paused).
    no_room: u64,
    /// The reader gave this stream up (its member is gone).
    detached: bool,
    /// The session cancelled this stream (`WatchHub::cancel` returned):
    /// the hub must never offer it anything again.
    cancelled: bool,
    /// Offers and closes the hub made after the cancel.
    after_cancel: u64,
}

impl Buffer {
    /// Adds what happened to this stream's buffer to the run's counters
    /// (once, when the stream ends).
    fn count(&mut self, c: &mut Counters) {
        c.watch_full += std::mem::take(&mut self.refused);
        c.watch_paused += std::mem::take(&mut self.no_room);
    }
}

type SharedBuffer = Arc<Mutex<Buffer>>;

/// A watcher's sink: the session's buffer.
struct SimSink(SharedBuffer);

impl WatchSink for SimSink {
    fn offer(&mut self, delivery: Delivery) -> Offer {
        let mut b = self.0.lock();
        if b.cancelled {
            // The receiver is gone, as a dropped stream's channel is.
            b.after_cancel += 1;
            return Offer::Closed;
        }
        if b.detached {
            return Offer::Closed;
        }
        if b.held >= b.cap {
            b.refused += 1;
            return Offer::Full;
        }
        b.held += 1;
        b.queue.push_back(Ok(delivery));
        Offer::Sent
    }

    fn has_room(&self) -> bool {
        let mut b = self.0.lock();
        let room = b.cancelled || b.detached || b.held < b.cap;
        if !room {
            b.no_room += 1;
        }
        room
    }

    fn close(&mut self, error: Error) {
        let mut b = self.0.lock();
        if b.cancelled {
            b.after_cancel += 1;
            return;
        }
        b.queue.push_back(Err(error));
    }
}

/// How a session reads its buffer.
#[derive(Clone, Copy, Debug)]
enum Reader {
    /// Everything, after every hub step.
    Eager,
    /// Up to `batch` responses every `every.0..every.1` of virtual time.
    Slow { every: (Nanos, Nanos), batch: usize },
}

/// The watch a session has open.
#[derive(Debug)]
struct Open {
    m: usize,
    life: u64,
    id: WatchId,
    buf: SharedBuffer,
    /// Which of the session's streams (opens) this is.
    stream: u32,
    /// The member stopped gracefully: its hub's `cancel_all` queued the
    /// closing error after what it had sent.
    stopped: bool,
}

/// A response the session read.
#[derive(Debug)]
struct Received {
    stream: u32,
    /// The revision up to which the watch has been sent everything.
    revision: i64,
    /// None: a progress notification.
    events: Vec<WatchEvent>,
}

/// A session's second random stream.
struct MoreRng(SimRng);

impl std::fmt::Debug for MoreRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MoreRng")
    }
}

/// One watch session of a client.
#[derive(Debug)]
pub(crate) struct Session {
    /// The request (its start revision set at each open).
    request: WatchRequest,
    reader: Reader,
    cap: usize,
    /// The reader reads nothing in this window.
    stall: Option<(Nanos, Nanos)>,
    /// The chance, per read, that the reader asks for progress.
    ask_progress: f64,
    /// The first revision wanted (set at the first open).
    start: Option<i64>,
    /// The next revision to ask for when resuming: one past the last
    /// revision the session read everything up to.
    next: i64,
    open_on: Option<Open>,
    streams: u32,
    received: Vec<Received>,
    /// Cancels read: (the resume revision the error named, the session's
    /// next revision then).
    cancels: Vec<(i64, i64)>,
    /// Revisions skipped because they were compacted away.
    gaps: Vec<(i64, i64)>,
    /// Something that breaks the guarantees on its own (seen during the
    /// run).
    broken: Option<String>,
    resumes: u64,
    /// When and on which member (1-based) the session first opened.
    opened: Option<(Nanos, u64)>,
    /// The second stream: the range, self-cancels.
    more: MoreRng,
    /// The session cancels its own watch every `.0..=.1` of virtual time
    /// until `.2` (the end of the chaos window).
    self_cancel: Option<(Nanos, Nanos, Nanos)>,
    /// The streams the session cancelled itself, with their buffers.
    dropped: Vec<(u32, SharedBuffer)>,
}

impl Session {
    fn describe(&self) -> String {
        let range = match &self.request.range {
            KeyRange::Key(k) => String::from_utf8_lossy(k).into_owned(),
            KeyRange::Prefix(p) if p.is_empty() => "every key".to_owned(),
            KeyRange::Prefix(p) => format!("prefix {}", String::from_utf8_lossy(p)),
            KeyRange::Range { start, end } => format!(
                "range [{}, {})",
                String::from_utf8_lossy(start),
                String::from_utf8_lossy(end)
            ),
            other => format!("{other:?}"),
        };
        let mut opts = Vec::new();
        if self.request.prev_kv {
            opts.push("prev_kv");
        }
        if self.request.no_put {
            opts.push("no_put");
        }
        if self.request.no_delete {
            opts.push("no_delete");
        }
        if self.request.progress_notify {
            opts.push("progress_notify");
        }
        if self.self_cancel.is_some() {
            opts.push("cancels itself");
        }
        let reader = match self.reader {
            Reader::Eager => "eager reader".to_owned(),
            Reader::Slow { .. } => format!("slow reader, buffer {}", self.cap),
        };
        opts.push(&reader);
        format!("{range} ({})", opts.join(", "))
    }

    fn wants(&self, e: &WatchEvent) -> bool {
        let kind = match e.kind {
            EventKind::Put => !self.request.no_put,
            EventKind::Delete => !self.request.no_delete,
        };
        kind && covers(&self.request.range, &e.kv.key)
    }

    fn in_gap(&self, rev: i64) -> bool {
        self.gaps.iter().any(|&(a, b)| a <= rev && rev <= b)
    }
}

/// True when `range` holds `key` — the check's own reading of a range,
/// not the production `KeyRange::contains` the hub matches with.
fn covers(range: &KeyRange, key: &[u8]) -> bool {
    match range {
        KeyRange::Key(k) => k.as_slice() == key,
        KeyRange::Prefix(p) => key.len() >= p.len() && &key[..p.len()] == p.as_slice(),
        KeyRange::Range { start, end } => {
            start.as_slice() <= key && key.cmp(end.as_slice()) == std::cmp::Ordering::Less
        }
        KeyRange::From(start) => start.as_slice() <= key,
    }
}

/// A `[key, end)` range over the workload's keys: from one of them to a
/// later one (possibly past the last), or into the leased keys `l*`.
fn key_span(rng: &mut SimRng, keys: usize) -> KeyRange {
    let a = rng.below(keys);
    let end = if rng.chance(0.25) {
        kvload::leased_key_name(rng.below(3) as u8)
    } else {
        kvload::key_name(rng.between(a as u64 + 1, keys as u64) as u8)
    };
    KeyRange::range(kvload::key_name(a as u8), end)
}

/// An applied event and the key's value before it (per the events before).
struct Truth<'a> {
    rev: i64,
    event: &'a WatchEvent,
    prev: Option<KeyValue>,
}

impl World {
    /// Plans the sessions: each opens at a random time of the chaos
    /// window; its reader starts then and reads until the end.
    pub(super) fn plan_watches(&mut self, start: Nanos, span: Nanos) {
        let keys = self.cfg.keys.max(1);
        for s in 0..SESSIONS {
            let mut more = SimRng::new(
                self.seed ^ MORE_STREAM ^ (s as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            let rng = &mut self.watch_rng;
            let mut request = WatchRequest::new(match s % 3 {
                0 => {
                    let key = kvload::key_name(rng.below(keys) as u8);
                    if more.chance(0.5) {
                        key_span(&mut more, keys)
                    } else {
                        KeyRange::key(key)
                    }
                }
                1 => KeyRange::prefix(kvload::KEY_PREFIX),
                // Every key: the leased ones too (expiries delete them).
                _ => KeyRange::prefix(""),
            });
            request.prev_kv = rng.chance(0.5);
            match rng.below(4) {
                0 => request.no_put = true,
                1 => request.no_delete = true,
                _ => {}
            }
            request.progress_notify = rng.chance(0.5);
            let ask_progress = rng.pick(&[0.0, 0.05, 0.2]);
            let (reader, cap) = if rng.chance(0.4) {
                (Reader::Eager, EAGER_BUFFER)
            } else {
                let every = (MILLIS, rng.between(2 * MILLIS, 40 * MILLIS));
                let batch = rng.between(1, 4) as usize;
                (Reader::Slow { every, batch }, rng.pick(&[1, 2, 4, 8]))
            };
            let stall = (matches!(reader, Reader::Slow { .. }) && rng.chance(0.6)).then(|| {
                let from = start + rng.between(0, span);
                (from, from + rng.between(100 * MILLIS, 1500 * MILLIS))
            });
            let at = start + rng.between(0, span / 2);
            // Half the sessions cancel their own watch now and then during
            // the chaos window.
            let self_cancel = more.chance(0.5).then(|| {
                let lo = more.between(200 * MILLIS, 800 * MILLIS);
                (
                    lo,
                    lo + more.between(200 * MILLIS, 1500 * MILLIS),
                    start + span,
                )
            });
            if let Some((lo, hi, _)) = self_cancel {
                let first = at + more.between(lo, hi);
                self.at(first, Event::WatchCancel { w: s });
            }
            self.watches.push(Session {
                request,
                reader,
                cap,
                stall,
                ask_progress,
                start: None,
                next: 0,
                open_on: None,
                streams: 0,
                received: Vec::new(),
                cancels: Vec::new(),
                gaps: Vec::new(),
                broken: None,
                resumes: 0,
                opened: None,
                more: MoreRng(more),
                self_cancel,
                dropped: Vec::new(),
            });
            self.at(at, Event::WatchOpen { w: s });
            self.at(at, Event::WatchRead { w: s });
        }
    }

    /// A session opens (or resumes) on a random running member.
    pub(super) fn watch_open(&mut self, w: usize) {
        if self.watches[w].broken.is_some() || self.watches[w].open_on.is_some() || self.halted {
            return;
        }
        let m = self.watch_rng.below(self.members.len());
        let back = self.watch_rng.between(0, 20) as i64;
        let retry = self.watch_rng.between(20 * MILLIS, 200 * MILLIS);
        let now = self.instant_of(m);
        let life = self.members[m].life;
        let Some(hub_revision) = self.members[m]
            .proc
            .as_mut()
            .filter(|p| p.hub.is_some())
            .map(|p| kvload::current_revision(|q| p.applier.query(q)))
        else {
            self.after(retry, Event::WatchOpen { w });
            return;
        };
        let session = &mut self.watches[w];
        if session.start.is_none() {
            let start = (hub_revision - back).max(1);
            session.start = Some(start);
            session.next = start;
        } else {
            session.resumes += 1;
            self.counters.watch_resumes += 1;
        }
        let mut request = session.request.clone();
        request.start_revision = session.next;
        let buf = Arc::new(Mutex::new(Buffer {
            cap: session.cap,
            ..Buffer::default()
        }));
        let Some(hub) = self.members[m].proc.as_mut().and_then(|p| p.hub.as_mut()) else {
            return;
        };
        let next = session.next;
        match hub.add(request, Box::new(SimSink(buf.clone())), now) {
            Ok(id) => {
                session.opened.get_or_insert((self.now, m as u64 + 1));
                session.streams += 1;
                session.open_on = Some(Open {
                    m,
                    life,
                    id,
                    buf,
                    stream: session.streams,
                    stopped: false,
                });
                self.trace(|| format!("watch {w} opens on member {} at {next}", m + 1));
                self.catch_up(m);
            }
            Err(Error::Compacted { compact_revision }) => {
                self.trace(|| {
                    format!(
                        "watch {w} refused at {next} on member {}: compacted at {compact_revision}",
                        m + 1
                    )
                });
                self.skip_compacted(w, compact_revision);
                self.after(retry, Event::WatchOpen { w });
            }
            Err(e) => {
                session.broken = Some(format!("opening at {next} on member {} failed: {e}", m + 1));
            }
        }
    }

    /// The session learned that history up to `compact_revision` is gone:
    /// it goes on after it (a client that re-reads the keys would).
    fn skip_compacted(&mut self, w: usize, compact_revision: i64) {
        let s = &mut self.watches[w];
        if compact_revision < s.next {
            s.broken = Some(format!(
                "told its history was compacted at {compact_revision}, but it needed only \
                 revisions from {} on",
                s.next
            ));
            return;
        }
        s.gaps.push((s.next, compact_revision));
        s.next = compact_revision + 1;
        self.counters.watch_compacted += 1;
    }

    /// The session's reader: reads what it may, sometimes asks for
    /// progress (at the end: whenever it finds nothing to read, until
    /// caught up), and reads again later.
    pub(super) fn watch_read(&mut self, w: usize) {
        if let Some((from, until)) = self.watches[w].stall
            && from <= self.now
            && self.now < until
            && !self.watch_final
        {
            self.at(until, Event::WatchRead { w });
            return;
        }
        let (batch, wait) = match self.watches[w].reader {
            Reader::Eager => (usize::MAX, self.watch_rng.between(5 * MILLIS, 50 * MILLIS)),
            Reader::Slow { every, batch } => (batch, self.watch_rng.between(every.0, every.1)),
        };
        let read = self.read_buffer(w, batch);
        // At the end, a session not yet caught up asks whenever it finds
        // nothing to read (asking after every response would fill a small
        // buffer with notifications and starve the catch-up: see NOTES).
        let ask = if self.watch_final {
            read == 0 && self.watches[w].next <= self.kv_truth.last_revision()
        } else {
            self.watch_rng.chance(self.watches[w].ask_progress)
        };
        if let Some((m, life, id)) = self.watches[w]
            .open_on
            .as_ref()
            .map(|o| (o.m, o.life, o.id))
            && self.alive(m, life)
            && self.members[m].paused_until <= self.now
        {
            // The driver wakes (room in a buffer resumes catch-up) and the
            // progress request reaches the hub in either order, as two
            // threads would.
            let driver_first = self.watch_rng.chance(0.5);
            if driver_first {
                self.catch_up(m);
            }
            let now = self.instant_of(m);
            if ask && let Some(hub) = self.members[m].proc.as_mut().and_then(|p| p.hub.as_mut()) {
                hub.request_progress(id, now);
            }
            if driver_first {
                self.take_watch_log();
            } else {
                self.catch_up(m);
            }
        }
        self.after(wait, Event::WatchRead { w });
    }

    /// Reads up to `max` responses from session `w`'s buffer; how many.
    fn read_buffer(&mut self, w: usize, max: usize) -> usize {
        for n in 0..max {
            let Some(open) = &self.watches[w].open_on else {
                return n;
            };
            let stream = open.stream;
            let item = {
                let mut b = open.buf.lock();
                let Some(item) = b.queue.pop_front() else {
                    return n;
                };
                if item.is_ok() {
                    b.held -= 1;
                }
                item
            };
            self.receive(w, stream, item);
        }
        max
    }

    /// Session `w` reads one response of its stream.
    fn receive(&mut self, w: usize, stream: u32, item: Result<Delivery, Error>) {
        let s = &mut self.watches[w];
        let d = match item {
            Ok(d) => d,
            Err(e) => {
                if let Some(open) = s.open_on.take() {
                    if open.stopped
                        && matches!(
                            e,
                            Error::WatchCancelled {
                                reason: WatchCancelReason::MemberStopped,
                                ..
                            }
                        )
                    {
                        self.counters.watch_stopped += 1;
                    }
                    open.buf.lock().count(&mut self.counters);
                }
                let next = s.next;
                self.trace(|| format!("watch {w} ends at {next}: {e}"));
                match e {
                    Error::Compacted { compact_revision } => {
                        self.skip_compacted(w, compact_revision)
                    }
                    Error::WatchCancelled {
                        resume_revision,
                        reason,
                    } => {
                        if reason == WatchCancelReason::SlowConsumer {
                            self.counters.watch_slow += 1;
                        }
                        self.watches[w].cancels.push((resume_revision, next));
                    }
                    other => {
                        self.watches[w].broken = Some(format!("ended with {other}"));
                        return;
                    }
                }
                let d = self.watch_rng.between(10 * MILLIS, 100 * MILLIS);
                self.after(d, Event::WatchOpen { w });
                return;
            }
        };
        if d.events.is_empty() {
            self.counters.watch_progress += 1;
        } else {
            self.counters.watch_events += d.events.len() as u64;
        }
        s.next = s.next.max(d.revision + 1);
        s.received.push(Received {
            stream,
            revision: d.revision,
            events: d.events,
        });
    }

    /// The watch driver's work on member `m`: history chunks for watchers
    /// in the past, until none with room is left.
    pub(super) fn catch_up(&mut self, m: usize) {
        let now = self.instant_of(m);
        if let Some(p) = self.members[m].proc.as_mut()
            && let Some(hub) = p.hub.as_mut()
        {
            let machine: &SimMachine = p.applier.machine();
            while let Some((from, to)) = hub.catch_up_plan() {
                match machine.history(from, to, CHUNK) {
                    Ok((events, covered)) => hub.on_history(from, &events, covered, now),
                    Err(Error::Compacted { compact_revision }) => {
                        hub.on_history_compacted(compact_revision)
                    }
                    Err(_) => break,
                }
                if hub.catch_up_plan() == Some((from, to)) {
                    break;
                }
            }
        }
        self.take_watch_log();
    }

    /// Eager readers read what the hubs sent them (after every hub step).
    pub(super) fn take_watch_log(&mut self) {
        for w in 0..self.watches.len() {
            if matches!(self.watches[w].reader, Reader::Eager) {
                let _ = self.read_buffer(w, usize::MAX);
            }
        }
        self.flush_raw_watches();
    }

    /// Member `m` stops gracefully (an operator stops it, as
    /// `KvNode::shutdown` does): its hub ends every watch with
    /// `WatchCancelled { MemberStopped }`, queued after what it had sent;
    /// the readers read it all in their own time and resume.
    pub(super) fn watches_stop(&mut self, m: usize) {
        let life = self.members[m].life;
        let Some(hub) = self.members[m].proc.as_mut().and_then(|p| p.hub.as_mut()) else {
            return;
        };
        hub.cancel_all(WatchCancelReason::MemberStopped);
        for s in &mut self.watches {
            if let Some(o) = s.open_on.as_mut()
                && o.m == m
                && o.life == life
            {
                o.stopped = true;
            }
        }
        self.trace(|| format!("member {} stops its watches", m + 1));
        self.take_watch_log();
    }

    /// Member `m`'s process is gone. Watches its graceful stop ended
    /// already hold their end; on the others the connection broke: what
    /// their readers had not read is lost, and the stream ends as the
    /// remote client's does (`WatchCancelled { MemberStopped }` at one
    /// past the last revision read), which the reader sees at its next
    /// read.
    pub(super) fn watches_lost(&mut self, m: usize) {
        let life = self.members[m].life;
        for s in &mut self.watches {
            let Some(open) = s
                .open_on
                .as_ref()
                .filter(|o| o.m == m && o.life == life && !o.stopped)
            else {
                continue;
            };
            let mut b = open.buf.lock();
            if b.detached {
                continue;
            }
            b.detached = true;
            b.queue.clear();
            b.held = 0;
            b.queue.push_back(Err(Error::WatchCancelled {
                resume_revision: s.next,
                reason: WatchCancelReason::MemberStopped,
            }));
            self.counters.watch_broken += 1;
        }
    }

    /// Session `w` cancels its own watch, as a client dropping its stream
    /// does (`WatchControl::cancel`: the member's `WatchHub::cancel`), and
    /// watches again a little later from one past the last revision it
    /// read everything up to. What it had not read is dropped with the
    /// stream; the hub must never offer that stream anything again.
    pub(super) fn watch_cancel(&mut self, w: usize) {
        let Some((lo, hi, until)) = self.watches[w].self_cancel else {
            return;
        };
        if self.halted || self.watch_final || self.watches[w].broken.is_some() {
            return;
        }
        let more = &mut self.watches[w].more.0;
        let (next_in, retry, reopen) = (
            more.between(lo, hi),
            more.between(10 * MILLIS, 100 * MILLIS),
            more.between(10 * MILLIS, 300 * MILLIS),
        );
        let Some((m, life, id)) = self.watches[w]
            .open_on
            .as_ref()
            .map(|o| (o.m, o.life, o.id))
        else {
            // Between two watches: cancel the next one.
            if self.now + retry < until {
                self.after(retry, Event::WatchCancel { w });
            }
            return;
        };
        let alive = self.alive(m, life);
        if alive && self.members[m].paused_until > self.now {
            // The member's process is stopped (the control's call would
            // wait for it): try again.
            self.after(retry, Event::WatchCancel { w });
            return;
        }
        let known = alive
            && self.members[m]
                .proc
                .as_mut()
                .and_then(|p| p.hub.as_mut())
                .is_some_and(|hub| hub.cancel(id));
        let s = &mut self.watches[w];
        let Some(open) = s.open_on.take() else {
            return;
        };
        {
            let mut b = open.buf.lock();
            b.cancelled = true;
            b.queue.clear();
            b.held = 0;
            b.count(&mut self.counters);
        }
        s.dropped.push((open.stream, open.buf));
        let next = s.next;
        self.counters.watch_cancels += 1;
        self.trace(|| {
            format!(
                "watch {w} cancels itself on member {} at {next}{}",
                m + 1,
                if known { "" } else { " (already ended there)" }
            )
        });
        self.after(reopen, Event::WatchOpen { w });
        if self.now + next_in < until {
            self.after(next_in, Event::WatchCancel { w });
        }
    }

    /// A new hub for member `m` (its machine is at `revision`).
    pub(super) fn new_hub(&self, revision: i64, compact_revision: i64) -> WatchHub {
        let mut hub = WatchHub::new(
            revision,
            compact_revision,
            HubConfig {
                // Watches that ask for it (`progress_notify`) get a
                // notification after this long without a response.
                progress_interval: std::time::Duration::from_millis(500),
            },
        );
        hub.set_bugs(self.bugs);
        hub
    }

    /// The end of a run (the group converged): every session asks for
    /// progress until it has been sent everything up to the final
    /// revision, within a deadline (the check reports a session that did
    /// not get there).
    pub(super) fn watches_catch_up(&mut self) {
        if self.watches.is_empty() {
            return;
        }
        self.watch_final = true;
        let limit = self.now + CATCH_UP_LIMIT;
        self.run_until(limit, |w| {
            let top = w.kv_truth.last_revision();
            w.watches.iter().all(|s| {
                s.broken.is_some()
                    || s.open_on
                        .as_ref()
                        .is_some_and(|o| o.buf.lock().queue.is_empty())
                        && s.next > top
            })
        });
        if !self.halted {
            self.watch_final_revision = Some(self.kv_truth.last_revision());
        }
    }

    /// The sessions as `watch` records of the history (what each read,
    /// response by response), for the history check and `ha-sim check`.
    pub(super) fn record_watches(&mut self) {
        for (w, s) in self.watches.iter().enumerate() {
            let (Some(start), Some((opened, member))) = (s.start, s.opened) else {
                continue;
            };
            let key = match &s.request.range {
                KeyRange::Key(k) => String::from_utf8_lossy(k).into_owned(),
                KeyRange::Prefix(p) => format!("{}*", String::from_utf8_lossy(p)),
                KeyRange::Range { start, end } => format!(
                    "[{},{})",
                    String::from_utf8_lossy(start),
                    String::from_utf8_lossy(end)
                ),
                other => format!("{other:?}"),
            };
            let filter = if s.request.no_put {
                Some(WatchFilter::NoPut)
            } else if s.request.no_delete {
                Some(WatchFilter::NoDelete)
            } else {
                None
            };
            let reads = s
                .received
                .iter()
                .map(|r| WatchRead {
                    stream: r.stream,
                    revision: r.revision,
                    events: r
                        .events
                        .iter()
                        .map(|e| {
                            let put = e.kind == EventKind::Put;
                            EventSeen {
                                put,
                                key: String::from_utf8_lossy(&e.kv.key).into_owned(),
                                value: SeenKv::from(&e.kv).value.filter(|_| put),
                                mod_revision: e.revision(),
                            }
                        })
                        .collect(),
                })
                .collect();
            let id = self.ops.len() as u64;
            self.ops.push(HistoryOp {
                id,
                client: WATCH_CLIENT + w as u64,
                member,
                incarnation: 0,
                op: OpKind::Watch,
                inputs: Inputs {
                    key,
                    revision: Some(start),
                    filter,
                    ..Inputs::default()
                },
                invoke_ns: opened,
                complete_ns: self.now,
                outcome: Outcome::Ok,
                outputs: Outputs {
                    watch: Some(WatchLog {
                        reads,
                        gaps: s.gaps.iter().map(|&(a, b)| [a, b]).collect(),
                    }),
                    ..Outputs::default()
                },
            });
        }
    }

    /// Every applied event with the key's previous value.
    fn truth(&self) -> Vec<Truth<'_>> {
        let mut current: HashMap<&[u8], &KeyValue> = HashMap::new();
        let mut out = Vec::new();
        for (&rev, events) in self.kv_truth.events_between(1, i64::MAX) {
            for event in events {
                let key = event.kv.key.as_slice();
                let prev = current.get(key).map(|kv| (*kv).clone());
                match event.kind {
                    EventKind::Put => current.insert(key, &event.kv),
                    EventKind::Delete => current.remove(key),
                };
                out.push(Truth { rev, event, prev });
            }
        }
        out
    }

    /// Every session's stream against what the machines applied.
    pub(super) fn check_watches(&mut self) -> Vec<Violation> {
        for s in &self.watches {
            if let Some(open) = &s.open_on {
                open.buf.lock().count(&mut self.counters);
            }
        }
        let truth = self.truth();
        let mut found = Vec::new();
        for (w, s) in self.watches.iter().enumerate() {
            let Some(start) = s.start else { continue };
            if let Some(detail) = check_session(s, start, &truth, self.watch_final_revision) {
                found.push(Violation::new(
                    WATCH_GUARANTEES,
                    format!(
                        "watch {w} of {} from revision {start}: {detail} ({} resumes)",
                        s.describe(),
                        s.resumes
                    ),
                ));
            }
        }
        found
    }
}

/// The first thing wrong with session `s`'s stream, if any.
fn check_session(
    s: &Session,
    start: i64,
    truth: &[Truth<'_>],
    final_revision: Option<i64>,
) -> Option<String> {
    if let Some(b) = &s.broken {
        return Some(b.clone());
    }
    for (stream, buf) in &s.dropped {
        let after = buf.lock().after_cancel;
        if after > 0 {
            return Some(format!(
                "its client cancelled stream {stream} (WatchControl::cancel returned), but the \
                 hub then offered that stream {after} more responses (it did not forget the \
                 watcher)"
            ));
        }
    }
    let want: Vec<&Truth<'_>> = truth
        .iter()
        .filter(|t| t.rev >= start && !s.in_gap(t.rev) && s.wants(t.event))
        .collect();
    // Wanted events at or below `r`.
    let due = |r: i64| want.partition_point(|t| t.rev <= r);
    let show = |t: &Truth<'_>| {
        format!(
            "{:?} {} at {}",
            t.event.kind,
            String::from_utf8_lossy(&t.event.kv.key),
            t.rev
        )
    };
    // Events sent so far (they must be `want[..sent]`), and the revision
    // the stream was sent everything up to.
    let mut sent = 0usize;
    let mut covered = start - 1;
    let mut last: Option<(u32, i64)> = None;
    for rcv in &s.received {
        let r = rcv.revision;
        if let Some((stream, before)) = last
            && stream == rcv.stream
            && r < before
        {
            return Some(format!(
                "a {} at revision {r} came after one at {before} in the same stream",
                if rcv.events.is_empty() {
                    "progress notification"
                } else {
                    "response"
                }
            ));
        }
        last = Some((rcv.stream, r));
        let mut prev_rev = covered;
        for e in &rcv.events {
            let er = e.revision();
            if er <= covered || er < prev_rev || er > r {
                return Some(format!(
                    "a response covering up to {r} holds an event of revision {er} after \
                     revision {prev_rev} (everything up to {covered} was sent before): not \
                     ordered or not unique"
                ));
            }
            prev_rev = er;
            let Some(t) = want.get(sent) else {
                return Some(format!(
                    "sent {:?} {} at {er}, which the watch does not want (filtered or not \
                     applied)",
                    e.kind,
                    String::from_utf8_lossy(&e.kv.key)
                ));
            };
            if t.rev < er {
                return Some(format!(
                    "{} was never sent (the next event sent is of revision {er}): not reliable",
                    show(t)
                ));
            }
            if t.rev > er || t.event.kind != e.kind || t.event.kv != e.kv {
                return Some(format!(
                    "sent {:?} {} at {er} ({:?}), the machines applied {} ({:?}) next: a \
                     filtered, foreign or wrong event",
                    e.kind,
                    String::from_utf8_lossy(&e.kv.key),
                    e.kv,
                    show(t),
                    t.event.kv
                ));
            }
            let expected = if s.request.prev_kv {
                t.prev.as_ref()
            } else {
                None
            };
            if e.prev_kv.as_ref() != expected {
                return Some(format!(
                    "{} carries prev_kv {:?}, the key held {:?} before it{}",
                    show(t),
                    e.prev_kv,
                    t.prev,
                    if s.request.prev_kv {
                        ""
                    } else {
                        " (prev_kv not asked for)"
                    }
                ));
            }
            sent += 1;
        }
        let owed = due(r);
        if owed > sent {
            let missing = show(want[sent]);
            return Some(if rcv.events.is_empty() {
                format!(
                    "a progress notification at {r} came before {missing} was sent: not \
                     bookmarkable"
                )
            } else if rcv.events.iter().any(|e| e.revision() == want[sent].rev) {
                format!("a response covering up to {r} lacks {missing}: not atomic")
            } else {
                format!(
                    "a response covering up to {r} came, but {missing} was never sent: not reliable"
                )
            });
        }
        covered = covered.max(r);
    }
    for &(resume, next) in &s.cancels {
        if resume < next {
            return Some(format!(
                "a cancel named resume revision {resume}, but revisions up to {} were sent: \
                 resuming there repeats them",
                next - 1
            ));
        }
        if let Some(t) = want.iter().find(|t| t.rev >= next && t.rev < resume) {
            return Some(format!(
                "a cancel named resume revision {resume} with {} not sent: resuming there \
                 loses it",
                show(t)
            ));
        }
    }
    if let Some(top) = final_revision
        && covered < top
    {
        return Some(format!(
            "caught up only to revision {covered} of {top} by the end (not every event was \
             eventually sent)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, create: i64, rev: i64, version: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: create,
            mod_revision: rev,
            version,
            ..KeyValue::default()
        }
    }

    fn put(key: &str, value: &str, create: i64, rev: i64, version: i64) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Put,
            kv: kv(key, value, create, rev, version),
            prev_kv: None,
        }
    }

    fn del(key: &str, rev: i64) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.into(),
                mod_revision: rev,
                ..KeyValue::default()
            },
            prev_kv: None,
        }
    }

    /// Revisions 2..=4: put a, then put a and delete b in one revision
    /// (b was put at 1), then delete a.
    fn applied() -> Vec<WatchEvent> {
        vec![
            put("b", "x", 1, 1, 1),
            put("a", "1", 2, 2, 1),
            put("a", "2", 2, 3, 2),
            del("b", 3),
            del("a", 4),
        ]
    }

    fn truth(events: &[WatchEvent]) -> Vec<Truth<'_>> {
        let mut current: HashMap<&[u8], &KeyValue> = HashMap::new();
        events
            .iter()
            .map(|event| {
                let key = event.kv.key.as_slice();
                let prev = current.get(key).map(|kv| (*kv).clone());
                match event.kind {
                    EventKind::Put => current.insert(key, &event.kv),
                    EventKind::Delete => current.remove(key),
                };
                Truth {
                    rev: event.kv.mod_revision,
                    event,
                    prev,
                }
            })
            .collect()
    }

    fn session(request: WatchRequest, received: Vec<(i64, Vec<WatchEvent>)>) -> Session {
        Session {
            request,
            reader: Reader::Eager,
            cap: EAGER_BUFFER,
            stall: None,
            ask_progress: 0.0,
            start: Some(2),
            next: 2,
            open_on: None,
            streams: 1,
            received: received
                .into_iter()
                .map(|(revision, events)| Received {
                    stream: 1,
                    revision,
                    events,
                })
                .collect(),
            cancels: Vec::new(),
            gaps: Vec::new(),
            broken: None,
            resumes: 0,
            opened: None,
            more: MoreRng(SimRng::new(0)),
            self_cancel: None,
            dropped: Vec::new(),
        }
    }

    /// The events of revisions `from..=to` as a watch with `prev_kv`
    /// gets them.
    fn with_prev(t: &[Truth<'_>], from: i64, to: i64) -> Vec<WatchEvent> {
        t.iter()
            .filter(|t| t.rev >= from && t.rev <= to)
            .map(|t| WatchEvent {
                prev_kv: t.prev.clone(),
                ..t.event.clone()
            })
            .collect()
    }

    fn check(s: &Session, t: &[Truth<'_>], top: Option<i64>) -> String {
        check_session(s, 2, t, top).unwrap_or_default()
    }

    #[test]
    fn a_correct_stream_passes_and_each_kind_of_fault_is_named() {
        let events = applied();
        let t = truth(&events);
        let all = WatchRequest::prefix("").with_prev_kv();
        let good = session(
            all.clone(),
            vec![
                (2, with_prev(&t, 2, 2)),
                (2, vec![]),
                (4, with_prev(&t, 3, 4)),
            ],
        );
        assert_eq!(check(&good, &t, Some(4)), "");
        // Caught up only to 3 of 4.
        let short = session(all.clone(), vec![(3, with_prev(&t, 2, 3))]);
        assert_eq!(check(&short, &t, None), "");
        assert!(check(&short, &t, Some(4)).contains("caught up only to revision 3 of 4"));
        // A progress notification ahead of revision 3's events.
        let ahead = session(
            all.clone(),
            vec![
                (2, with_prev(&t, 2, 2)),
                (3, vec![]),
                (4, with_prev(&t, 3, 4)),
            ],
        );
        assert!(check(&ahead, &t, None).contains("not bookmarkable"));
        // Revision 3 split over two responses.
        let mut split = with_prev(&t, 2, 3);
        split.pop();
        let split = session(all.clone(), vec![(3, split)]);
        assert!(check(&split, &t, None).contains("not atomic"));
        // Revision 2 never sent.
        let gap = session(all.clone(), vec![(4, with_prev(&t, 3, 4))]);
        assert!(check(&gap, &t, None).contains("not reliable"));
        // Revision 2 sent twice.
        let twice = session(
            all.clone(),
            vec![(2, with_prev(&t, 2, 2)), (3, with_prev(&t, 2, 3))],
        );
        assert!(check(&twice, &t, None).contains("not ordered or not unique"));
        // A wrong prev_kv, and one sent though not asked for.
        let mut wrong = with_prev(&t, 2, 4);
        wrong[1].prev_kv = None;
        let wrong = session(all.clone(), vec![(4, wrong)]);
        assert!(check(&wrong, &t, None).contains("carries prev_kv None"));
        let unasked = session(WatchRequest::prefix(""), vec![(4, with_prev(&t, 2, 4))]);
        assert!(check(&unasked, &t, None).contains("prev_kv not asked for"));
        // A filtered event sent.
        let no_put = session(
            WatchRequest::prefix("").with_prev_kv().no_put(),
            vec![(4, with_prev(&t, 2, 4))],
        );
        assert!(check(&no_put, &t, None).contains("filtered, foreign or wrong"));
        let mut deletes = with_prev(&t, 2, 4);
        deletes.retain(|e| e.kind == EventKind::Delete);
        let no_put = session(
            WatchRequest::prefix("").with_prev_kv().no_put(),
            vec![(4, deletes)],
        );
        assert_eq!(check(&no_put, &t, Some(4)), "");
        // Progress backwards within a stream.
        let back = session(all.clone(), vec![(4, with_prev(&t, 2, 4)), (3, vec![])]);
        assert!(check(&back, &t, None).contains("in the same stream"));
        // A cancel whose resume revision skips revision 3.
        let mut cancelled = session(all.clone(), vec![(2, with_prev(&t, 2, 2))]);
        cancelled.cancels.push((4, 3));
        assert!(check(&cancelled, &t, None).contains("resuming there loses it"));
        // A compacted gap is not owed.
        let mut skipped = session(all, vec![(4, with_prev(&t, 4, 4))]);
        skipped.gaps.push((2, 3));
        assert_eq!(check(&skipped, &t, Some(4)), "");
    }

    #[test]
    fn a_range_excludes_its_end_and_a_cancelled_stream_is_offered_nothing() {
        let events = applied();
        let t = truth(&events);
        // [a, b): every event of a, none of b.
        let range = WatchRequest::new(KeyRange::range("a", "b"));
        let only_a: Vec<WatchEvent> = events
            .iter()
            .filter(|e| e.kv.key == b"a")
            .cloned()
            .collect();
        let good = session(range.clone(), vec![(4, only_a)]);
        assert_eq!(check(&good, &t, Some(4)), "");
        let with_end = session(range.clone(), vec![(4, events[1..].to_vec())]);
        assert!(check(&with_end, &t, None).contains("filtered, foreign or wrong"));
        let short = session(range, vec![(4, vec![events[1].clone(), events[4].clone()])]);
        assert!(check(&short, &t, None).contains("never sent"));
        // A stream its client cancelled: the hub must not offer it more.
        let mut s = session(WatchRequest::prefix(""), Vec::new());
        let buf: SharedBuffer = Arc::new(Mutex::new(Buffer {
            cap: 1,
            cancelled: true,
            ..Buffer::default()
        }));
        let mut sink = SimSink(buf.clone());
        s.dropped.push((1, buf));
        assert_eq!(check(&s, &t, None), "");
        let offered = sink.offer(Delivery {
            revision: 2,
            events: Vec::new(),
        });
        assert_eq!(offered, Offer::Closed);
        assert!(check(&s, &t, None).contains("offered that stream 1 more"));
    }
}
