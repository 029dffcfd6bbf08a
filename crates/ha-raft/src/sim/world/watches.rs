//! Watches under faults (KV workload): watch sessions opened at random
//! revisions on random members through each member's PRODUCTION
//! `WatchHub` (sans-IO; the world drives it as the shell's watch driver
//! does: live events after every apply step, history chunks from the
//! machine for watchers in the past, compactions and reloads). A session
//! whose member crashed or whose watch was cancelled resumes on a member
//! from the revision after the last one it was sent everything up to
//! (resumable). At the end each session's stream is checked against what
//! the machines applied: ordered, unique, atomic (a revision's events in
//! one response, all of them), reliable (no revision with a matching
//! event missing up to the last revision sent).

use std::sync::Arc;

use ha_core::{Error, KeyRange, WatchEvent, WatchRequest};
use parking_lot::Mutex;

use super::{Event, World};
use crate::kv::watch::{Delivery, HubConfig, Offer, WatchHub, WatchSink};
use crate::sim::check::Violation;
use crate::sim::executor::{MILLIS, Nanos};
use crate::sim::kvload::{self, SimMachine};

const WATCH_GUARANTEES: &str = "watch guarantees";
/// Watch sessions per run.
const SESSIONS: usize = 4;
/// History events read per catch-up chunk (small, so that chunks happen).
const CHUNK: usize = 16;

/// What the hubs handed the sessions' sinks.
pub(crate) type WatchLog = Arc<Mutex<Vec<(usize, Result<Delivery, Error>)>>>;

/// A watcher's sink: never full (slow watchers are not simulated).
struct SimSink {
    session: usize,
    log: WatchLog,
}

impl WatchSink for SimSink {
    fn offer(&mut self, delivery: Delivery) -> Offer {
        self.log.lock().push((self.session, Ok(delivery)));
        Offer::Sent
    }

    fn has_room(&self) -> bool {
        true
    }

    fn close(&mut self, error: Error) {
        self.log.lock().push((self.session, Err(error)));
    }
}

/// One watch session of a client.
#[derive(Debug)]
pub(crate) struct Session {
    /// One key (`k{n}`), or every client key.
    key: Option<u8>,
    /// The first revision wanted (set at the first open).
    start: Option<i64>,
    /// The next revision to ask for when resuming.
    next: i64,
    /// The member and its life the watch is open on.
    open_on: Option<(usize, u64)>,
    /// Responses: (revision covered, events).
    received: Vec<(i64, Vec<WatchEvent>)>,
    /// The watch can no longer go on (compacted away).
    ended: Option<String>,
    resumes: u64,
}

impl Session {
    fn range(&self) -> KeyRange {
        match self.key {
            Some(k) => KeyRange::key(kvload::key_name(k)),
            None => KeyRange::prefix(kvload::KEY_PREFIX),
        }
    }
}

impl World {
    /// Plans the sessions: each opens at a random time of the chaos window.
    pub(super) fn plan_watches(&mut self, start: Nanos, span: Nanos) {
        for s in 0..SESSIONS {
            let key = (s % 2 == 0).then(|| self.rng.below(self.cfg.keys.max(1)) as u8);
            self.watches.push(Session {
                key,
                start: None,
                next: 0,
                open_on: None,
                received: Vec::new(),
                ended: None,
                resumes: 0,
            });
            let at = start + self.rng.between(0, span / 2);
            self.at(at, Event::WatchOpen { w: s });
        }
    }

    /// A session opens (or resumes) on a random running member.
    pub(super) fn watch_open(&mut self, w: usize) {
        if self.watches[w].ended.is_some() || self.watches[w].open_on.is_some() || self.halted {
            return;
        }
        let m = self.rng.below(self.members.len());
        let back = self.rng.between(0, 20) as i64;
        let now = self.instant_of(m);
        let life = self.members[m].life;
        let Some(p) = self.members[m].proc.as_mut() else {
            let d = self.rng.between(20 * MILLIS, 200 * MILLIS);
            self.after(d, Event::WatchOpen { w });
            return;
        };
        let Some(hub) = p.hub.as_mut() else {
            let d = self.rng.between(20 * MILLIS, 200 * MILLIS);
            self.after(d, Event::WatchOpen { w });
            return;
        };
        let session = &mut self.watches[w];
        if session.start.is_none() {
            let current = kvload::current_revision(|q| p.applier.query(q));
            let start = (current - back).max(1);
            session.start = Some(start);
            session.next = start;
        } else {
            session.resumes += 1;
            self.counters.watch_resumes += 1;
        }
        let mut request = WatchRequest::new(session.range());
        request.start_revision = session.next;
        let sink = Box::new(SimSink {
            session: w,
            log: self.watch_log.clone(),
        });
        match hub.add(request, sink, now) {
            Ok(_) => session.open_on = Some((m, life)),
            Err(e) => session.ended = Some(format!("opening at {} failed: {e}", session.next)),
        }
        let next = session.next;
        self.trace(|| format!("watch {w} opens on member {} at {next}", m + 1));
        self.catch_up(m);
    }

    /// The watch driver's work on member `m`: history chunks for watchers
    /// in the past, until none is left.
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

    /// Hands what the hubs sent to the sessions.
    pub(super) fn take_watch_log(&mut self) {
        let mut log: Vec<(usize, Result<Delivery, Error>)> =
            std::mem::take(&mut *self.watch_log.lock());
        // The hub offers to its watchers in hash-map order: per session the
        // order is kept, across sessions it is made the same in every run.
        log.sort_by_key(|(w, _)| *w);
        for (w, item) in log {
            let session = &mut self.watches[w];
            match item {
                Ok(d) => {
                    self.counters.watch_events += d.events.len() as u64;
                    session.next = session.next.max(d.revision + 1);
                    session.received.push((d.revision, d.events));
                }
                Err(e) => {
                    session.open_on = None;
                    if matches!(e, Error::Compacted { .. }) {
                        session.ended = Some(e.to_string());
                    } else {
                        let d = self.rng.between(10 * MILLIS, 100 * MILLIS);
                        self.after(d, Event::WatchOpen { w });
                    }
                }
            }
        }
        self.flush_raw_watches();
    }

    /// Member `m`'s process is gone: its watches end; their sessions
    /// resume elsewhere.
    pub(super) fn watches_lost(&mut self, m: usize) {
        for w in 0..self.watches.len() {
            if self.watches[w].open_on.is_some_and(|(on, _)| on == m) {
                self.watches[w].open_on = None;
                let d = self.rng.between(10 * MILLIS, 200 * MILLIS);
                self.after(d, Event::WatchOpen { w });
            }
        }
    }

    /// A new hub for member `m` (its machine is at `revision`).
    pub(super) fn new_hub(&self, revision: i64, compact_revision: i64) -> WatchHub {
        let mut hub = WatchHub::new(
            revision,
            compact_revision,
            HubConfig {
                // Only watches that ask for it (`progress_notify`) get
                // periodic notifications; the built-in sessions do not.
                progress_interval: std::time::Duration::from_millis(500),
            },
        );
        hub.set_bugs(self.bugs);
        hub
    }

    /// Every session's stream against what the machines applied.
    pub(super) fn check_watches(&mut self) -> Vec<Violation> {
        let mut found = Vec::new();
        for (w, s) in self.watches.iter().enumerate() {
            let Some(start) = s.start else { continue };
            let range = s.range();
            let mut covered = start - 1;
            let mut seen: Vec<&WatchEvent> = Vec::new();
            let mut bad: Option<String> = None;
            for (revision, events) in &s.received {
                let mut last = covered;
                for e in events {
                    let r = e.revision();
                    if r <= covered || r < last || r > *revision {
                        bad = Some(format!(
                            "a response covering up to {revision} holds an event of revision {r} \
                             after revision {last} (everything up to {covered} was sent before)"
                        ));
                        break;
                    }
                    last = r;
                    seen.push(e);
                }
                if bad.is_some() {
                    break;
                }
                // Atomic: every revision in the response is complete.
                for r in events.iter().map(|e| e.revision()) {
                    let want: Vec<&WatchEvent> = self
                        .kv_truth
                        .events_between(r, r)
                        .flat_map(|(_, evs)| evs.iter().filter(|e| range.contains(&e.kv.key)))
                        .collect();
                    let got: Vec<&WatchEvent> =
                        events.iter().filter(|e| e.revision() == r).collect();
                    if !same(&want, &got) {
                        bad = Some(format!(
                            "revision {r}: sent {} events, the machines applied {} matching",
                            got.len(),
                            want.len()
                        ));
                        break;
                    }
                }
                if bad.is_some() {
                    break;
                }
                covered = covered.max(*revision);
            }
            if bad.is_none() {
                // Reliable: every revision with a matching event up to the
                // last one covered was sent.
                let want: Vec<&WatchEvent> = self
                    .kv_truth
                    .events_between(start, covered)
                    .flat_map(|(_, evs)| evs.iter().filter(|e| range.contains(&e.kv.key)))
                    .collect();
                if !same(&want, &seen) {
                    let missing = want
                        .iter()
                        .find(|e| !seen.iter().any(|s| same(&[*s], &[**e])))
                        .map(|e| e.revision());
                    bad = Some(format!(
                        "sent {} events for revisions {start}..={covered}, the machines applied {} \
                         matching (first missing at revision {missing:?}; {} resumes)",
                        seen.len(),
                        want.len(),
                        s.resumes
                    ));
                }
            }
            if let Some(detail) = bad {
                let what = match s.key {
                    Some(k) => kvload::key_name(k),
                    None => "every key".to_owned(),
                };
                found.push(Violation::new(
                    WATCH_GUARANTEES,
                    format!("watch {w} of {what} from revision {start}: {detail}"),
                ));
            }
        }
        found
    }
}

/// The same changes (kind, key, value, revisions, version, lease), in the
/// same order; `prev_kv` is not compared (not asked for).
fn same(a: &[&WatchEvent], b: &[&WatchEvent]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.kind == y.kind && x.kv == y.kv)
}
