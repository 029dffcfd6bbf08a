//! The hub alone: matching, next-revision filtering, catch-up, slow
//! watchers, snapshots, and progress with injected time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use ha_core::{EventKind, KeyRange, KeyValue};

use super::*;

#[derive(Default)]
struct SinkState {
    queue: VecDeque<Delivery>,
    cap: usize,
    closed: Option<Error>,
}

#[derive(Clone)]
struct TestSink(Arc<Mutex<SinkState>>);

impl TestSink {
    fn new(cap: usize) -> Self {
        TestSink(Arc::new(Mutex::new(SinkState {
            cap,
            ..SinkState::default()
        })))
    }
    fn take(&self) -> Vec<Delivery> {
        self.0.lock().expect("sink").queue.drain(..).collect()
    }
    fn closed(&self) -> Option<Error> {
        self.0.lock().expect("sink").closed.clone()
    }
    /// (revision, key) of every event delivered so far, draining.
    fn events(&self) -> Vec<(i64, String)> {
        self.take()
            .into_iter()
            .flat_map(|d| d.events)
            .map(|e| {
                (
                    e.revision(),
                    String::from_utf8_lossy(&e.kv.key).into_owned(),
                )
            })
            .collect()
    }
}

impl WatchSink for TestSink {
    fn offer(&mut self, delivery: Delivery) -> Offer {
        let mut s = self.0.lock().expect("sink");
        if s.closed.is_some() {
            return Offer::Closed;
        }
        if s.queue.len() >= s.cap {
            return Offer::Full;
        }
        s.queue.push_back(delivery);
        Offer::Sent
    }
    fn has_room(&self) -> bool {
        let s = self.0.lock().expect("sink");
        s.queue.len() < s.cap
    }
    fn close(&mut self, error: Error) {
        self.0.lock().expect("sink").closed = Some(error);
    }
}

fn put(key: &str, rev: i64, prev: Option<&str>) -> WatchEvent {
    WatchEvent {
        kind: EventKind::Put,
        kv: KeyValue {
            key: key.into(),
            mod_revision: rev,
            value: format!("v{rev}").into_bytes(),
            ..KeyValue::default()
        },
        prev_kv: prev.map(|v| KeyValue {
            key: key.into(),
            value: v.into(),
            ..KeyValue::default()
        }),
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

const SECOND: Duration = Duration::from_secs(1);

fn hub(revision: i64) -> WatchHub {
    WatchHub::new(
        revision,
        0,
        HubConfig {
            progress_interval: 10 * SECOND,
        },
    )
}

fn watch(h: &mut WatchHub, req: WatchRequest, cap: usize, now: Instant) -> (WatchId, TestSink) {
    let sink = TestSink::new(cap);
    let id = h.add(req, Box::new(sink.clone()), now).expect("watch");
    (id, sink)
}

/// Drives catch-up to the end as the shell's driver does, reading history
/// from `log` in chunks of `chunk` events.
fn catch_up(h: &mut WatchHub, log: &[WatchEvent], chunk: usize, now: Instant) {
    for _ in 0..1000 {
        let Some((from, to)) = h.catch_up_plan() else {
            return;
        };
        let mut events: Vec<WatchEvent> = Vec::new();
        let mut covered = to;
        for e in log
            .iter()
            .filter(|e| e.revision() >= from && e.revision() <= to)
        {
            if events.len() >= chunk && events.last().is_some_and(|l| l.revision() != e.revision())
            {
                covered = e.revision() - 1;
                break;
            }
            events.push(e.clone());
        }
        h.on_history(from, &events, covered, now);
        if h.catch_up_plan() == Some((from, to)) && covered == to {
            return; // only full buffers left
        }
    }
    panic!("catch-up did not finish");
}

#[test]
fn live_events_reach_matching_watchers_with_their_filters() {
    let now = Instant::now();
    let mut h = hub(1);
    let (_, key) = watch(&mut h, WatchRequest::key("a/1"), 8, now);
    let (_, prefix) = watch(&mut h, WatchRequest::prefix("a/").with_prev_kv(), 8, now);
    let (_, range) = watch(
        &mut h,
        WatchRequest::new(KeyRange::range("a/2", "b")),
        8,
        now,
    );
    let (_, no_put) = watch(&mut h, WatchRequest::prefix("").no_put(), 8, now);
    let (_, no_delete) = watch(&mut h, WatchRequest::prefix("").no_delete(), 8, now);
    let (_, other) = watch(&mut h, WatchRequest::key("z"), 8, now);
    // One step, three revisions, the middle one a transaction of two keys.
    h.on_events(
        &[
            put("a/1", 2, None),
            put("a/2", 3, Some("old")),
            del("b", 3),
            del("a/1", 4),
        ],
        4,
        now,
    );
    let prefix_d = prefix.take();
    assert_eq!(prefix_d.len(), 1, "one response per step");
    assert_eq!(
        prefix_d[0].revision, 4,
        "the response is a bookmark at the step's revision"
    );
    assert_eq!(
        prefix_d[0].events[1]
            .prev_kv
            .as_ref()
            .map(|p| p.value.clone()),
        Some(b"old".to_vec()),
        "prev_kv kept when asked"
    );
    let key_d = key.take();
    assert_eq!(
        key_d[0]
            .events
            .iter()
            .map(|e| (e.revision(), e.prev_kv.is_some()))
            .collect::<Vec<_>>(),
        vec![(2, false), (4, false)]
    );
    let range_d = range.take();
    assert!(
        range_d[0].events.iter().all(|e| e.prev_kv.is_none()),
        "prev_kv dropped when not asked"
    );
    assert_eq!(
        range_d[0]
            .events
            .iter()
            .map(|e| e.revision())
            .collect::<Vec<_>>(),
        vec![3]
    );
    assert_eq!(no_put.events(), vec![(3, "b".into()), (4, "a/1".into())]);
    assert_eq!(
        no_delete.events(),
        vec![(2, "a/1".into()), (3, "a/2".into())]
    );
    assert!(other.take().is_empty(), "an unrelated key hears nothing");
    assert_eq!(h.revision(), 4);
}

#[test]
fn a_past_start_catches_up_then_goes_live_without_gap_or_repeat() {
    let now = Instant::now();
    let log: Vec<WatchEvent> = (2..=9)
        .map(|r| put(&format!("k{}", r % 3), r, None))
        .collect();
    let mut h = hub(1);
    h.on_events(&log[..4], 5, now); // revisions 2..=5, nobody watching
    let (_, w) = watch(&mut h, WatchRequest::prefix("k").from_revision(3), 64, now);
    assert_eq!(h.unsynced(), 1);
    assert_eq!(h.catch_up_plan(), Some((3, 5)));
    // Live events arrive before the catch-up: they must wait for it.
    h.on_events(&log[4..5], 6, now);
    assert!(
        w.take().is_empty(),
        "an unsynced watcher gets no live events"
    );
    // History one revision per chunk, then live.
    catch_up(&mut h, &log[..5], 1, now);
    assert_eq!(h.unsynced(), 0);
    h.on_events(&log[5..], 9, now);
    let got: Vec<i64> = w.events().into_iter().map(|(r, _)| r).collect();
    assert_eq!(got, (3..=9).collect::<Vec<_>>());
}

#[test]
fn history_is_never_delivered_below_a_watchers_next_revision() {
    let now = Instant::now();
    let log: Vec<WatchEvent> = (2..=7).map(|r| put("k", r, None)).collect();
    let mut h = hub(1);
    h.on_events(&log, 7, now);
    let (_, early) = watch(&mut h, WatchRequest::key("k").from_revision(2), 64, now);
    let (_, late) = watch(&mut h, WatchRequest::key("k").from_revision(5), 64, now);
    // A chunk from 2 covering 2..=3 leaves the later watcher alone.
    h.on_history(2, &log[..2], 3, now);
    assert!(late.take().is_empty());
    // A plan from the lower next revision reads 4..; a watcher starting at
    // 5 takes only 5.. of it.
    assert_eq!(h.catch_up_plan(), Some((4, 7)));
    h.on_history(4, &log[2..], 7, now);
    assert_eq!(
        early.events().iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6, 7]
    );
    assert_eq!(
        late.events().iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
    // A watcher added after the plan was made, below its start, is left
    // for a later chunk rather than skipped ahead.
    let (_, third) = watch(&mut h, WatchRequest::key("k").from_revision(3), 64, now);
    h.on_history(6, &log[4..], 7, now);
    assert!(third.take().is_empty());
    catch_up(&mut h, &log, 100, now);
    assert_eq!(
        third.events().iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![3, 4, 5, 6, 7]
    );
}

#[test]
fn a_future_start_waits_for_its_revision() {
    let now = Instant::now();
    let mut h = hub(5);
    let (_, w) = watch(&mut h, WatchRequest::key("k").from_revision(8), 64, now);
    assert_eq!(h.unsynced(), 0, "nothing to catch up");
    assert_eq!(h.catch_up_plan(), None);
    h.on_events(&[put("k", 6, None), put("k", 7, None)], 7, now);
    assert!(w.take().is_empty());
    h.on_events(&[put("k", 8, None), put("k", 9, None)], 9, now);
    assert_eq!(
        w.events().iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![8, 9]
    );
}

#[test]
fn a_full_buffer_cancels_a_live_watcher_with_the_revision_to_resume_from() {
    let now = Instant::now();
    let mut h = hub(1);
    let (_, slow) = watch(&mut h, WatchRequest::key("k"), 2, now);
    let (_, fine) = watch(&mut h, WatchRequest::key("k"), 100, now);
    for r in 2..=6 {
        h.on_events(&[put("k", r, None), put("other", r, None)], r, now);
    }
    match slow.closed() {
        Some(Error::WatchCancelled {
            resume_revision: 4,
            reason: WatchCancelReason::SlowConsumer,
        }) => {}
        other => panic!("expected a slow-consumer cancel at 4, got {other:?}"),
    }
    assert_eq!(
        slow.events().iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![2, 3],
        "what fit in the buffer stays, and ends right below the resume revision"
    );
    assert_eq!(h.len(), 1, "the slow watcher is gone, the other stays");
    assert_eq!(fine.events().len(), 5);
}

#[test]
fn a_full_buffer_pauses_catch_up_instead_of_cancelling() {
    let now = Instant::now();
    let log: Vec<WatchEvent> = (2..=11).map(|r| put("k", r, None)).collect();
    let mut h = hub(1);
    h.on_events(&log, 11, now);
    let (_, w) = watch(&mut h, WatchRequest::key("k").from_revision(2), 2, now);
    catch_up(&mut h, &log, 2, now);
    assert!(w.closed().is_none(), "catch-up never cancels");
    assert_eq!(h.catch_up_plan(), None, "a full watcher is not planned for");
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(w.events().into_iter().map(|e| e.0));
        catch_up(&mut h, &log, 2, now);
    }
    assert_eq!(got, (2..=11).collect::<Vec<_>>());
    assert_eq!(h.unsynced(), 0);
}

#[test]
fn compaction_and_snapshots_resync_or_cancel_watchers() {
    let now = Instant::now();
    let mut h = hub(10);
    h.on_compacted(4);
    assert!(matches!(
        h.add(
            WatchRequest::key("k").from_revision(4),
            Box::new(TestSink::new(8)),
            now
        ),
        Err(Error::Compacted {
            compact_revision: 4
        })
    ));
    let (_, behind) = watch(&mut h, WatchRequest::key("k").from_revision(5), 8, now);
    let (_, live) = watch(&mut h, WatchRequest::key("k"), 8, now);
    let (_, ahead) = watch(&mut h, WatchRequest::key("k").from_revision(30), 8, now);
    h.on_compacted(6);
    assert!(
        matches!(
            behind.closed(),
            Some(Error::Compacted {
                compact_revision: 6
            })
        ),
        "an unsynced watcher whose history was compacted is told so"
    );
    // A snapshot at 20, history kept from 15: the live watcher (next 11)
    // lost revisions, the future one waits on.
    h.on_restored(20, 15);
    assert!(matches!(
        live.closed(),
        Some(Error::Compacted {
            compact_revision: 15
        })
    ));
    assert!(ahead.closed().is_none());
    let (_, w) = watch(&mut h, WatchRequest::key("k").from_revision(16), 8, now);
    h.on_restored(25, 15);
    // Both need 16.. or 21..: catch up from history again.
    assert_eq!(h.unsynced(), 1);
    assert_eq!(h.catch_up_plan(), Some((16, 25)));
    let log: Vec<WatchEvent> = (16..=25).map(|r| put("k", r, None)).collect();
    catch_up(&mut h, &log, 3, now);
    h.on_events(&[put("k", 30, None)], 30, now);
    assert_eq!(
        w.events().iter().map(|e| e.0).collect::<Vec<_>>(),
        (16..=25).chain([30]).collect::<Vec<_>>()
    );
    assert_eq!(
        ahead.events().iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![30]
    );
}

#[test]
fn progress_never_skips_an_unsent_event_and_follows_injected_time() {
    let t0 = Instant::now();
    let mut h = hub(1);
    let log: Vec<WatchEvent> = (2..=5).map(|r| put("k", r, None)).collect();
    h.on_events(&log, 5, t0);
    let (past, p) = watch(&mut h, WatchRequest::key("k").from_revision(3), 8, t0);
    let (live, l) = watch(&mut h, WatchRequest::key("k").with_progress_notify(), 8, t0);
    h.request_progress(past, t0);
    h.request_progress(live, t0);
    h.tick(t0);
    assert!(
        p.take().is_empty(),
        "a watcher still catching up gets no progress (etcd: synced watchers only)"
    );
    assert_eq!(
        l.take(),
        vec![Delivery {
            revision: 5,
            events: vec![]
        }]
    );
    // Caught up: its events, then the progress it asked for.
    catch_up(&mut h, &log, 8, t0);
    let got = p.take();
    assert_eq!(
        got.iter()
            .flat_map(|d| d.events.iter().map(|e| e.revision()))
            .collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(
        got.last(),
        Some(&Delivery {
            revision: 5,
            events: vec![]
        }),
        "the owed progress follows the catch-up"
    );
    // Periodic: nothing before the interval, one after it.
    h.tick(t0 + 9 * SECOND);
    assert!(l.take().is_empty());
    h.tick(t0 + 10 * SECOND);
    assert_eq!(l.take().len(), 1);
    assert!(
        p.take().is_empty(),
        "only watchers that asked get periodic progress"
    );
    // An event resets the idle clock.
    h.on_events(&[put("k", 6, None)], 6, t0 + 15 * SECOND);
    assert_eq!(l.take().len(), 1);
    h.tick(t0 + 24 * SECOND);
    assert!(l.take().is_empty());
    h.tick(t0 + 25 * SECOND);
    assert_eq!(
        l.take(),
        vec![Delivery {
            revision: 6,
            events: vec![]
        }]
    );
    // A requested progress that finds the buffer full is sent later.
    let (q, full) = watch(&mut h, WatchRequest::key("q"), 1, t0);
    h.on_events(&[put("q", 7, None)], 7, t0);
    h.request_progress(q, t0);
    assert_eq!(full.take().len(), 1, "the event; the progress did not fit");
    h.tick(t0);
    assert_eq!(
        full.take(),
        vec![Delivery {
            revision: 7,
            events: vec![]
        }]
    );
}

/// A client that keeps one response in flight and asks for progress after
/// each one it reads: its progress requests must not take the slot its
/// catch-up needs.
#[test]
fn progress_asked_during_a_catch_up_does_not_starve_it() {
    let t0 = Instant::now();
    let mut h = hub(1);
    let log: Vec<WatchEvent> = (2..=9).map(|r| put("k", r, None)).collect();
    h.on_events(&log, 9, t0);
    let (id, sink) = watch(&mut h, WatchRequest::key("k").from_revision(2), 1, t0);
    let mut seen = Vec::new();
    for _ in 0..50 {
        catch_up(&mut h, &log, 1, t0);
        h.tick(t0);
        let got = sink.take();
        if got.is_empty() {
            break;
        }
        seen.extend(
            got.iter()
                .flat_map(|d| d.events.iter().map(|e| e.revision())),
        );
        h.request_progress(id, t0);
    }
    assert_eq!(seen, (2..=9).collect::<Vec<_>>(), "every event, in order");
}

#[test]
fn cancel_all_names_each_watchers_resume_revision() {
    let now = Instant::now();
    let mut h = hub(5);
    let (_, live) = watch(&mut h, WatchRequest::key("k"), 8, now);
    let (_, past) = watch(&mut h, WatchRequest::key("k").from_revision(2), 8, now);
    h.on_events(&[put("x", 6, None)], 6, now);
    h.cancel_all(WatchCancelReason::MemberStopped);
    assert!(matches!(
        live.closed(),
        Some(Error::WatchCancelled {
            resume_revision: 7,
            reason: WatchCancelReason::MemberStopped
        })
    ));
    assert!(matches!(
        past.closed(),
        Some(Error::WatchCancelled {
            resume_revision: 2,
            ..
        })
    ));
    assert_eq!(h.len(), 0);
}

#[test]
fn a_cancelled_watcher_is_offered_nothing_more() {
    let now = Instant::now();
    let mut h = hub(5);
    let (id, sink) = watch(&mut h, WatchRequest::new(KeyRange::range("a", "c")), 8, now);
    h.on_events(&[put("a", 6, None), put("c", 6, None)], 6, now);
    assert_eq!(
        sink.events(),
        vec![(6, "a".to_owned())],
        "`end` is not in the range"
    );
    assert!(h.cancel(id));
    assert!(!h.cancel(id), "a second cancel finds nothing");
    h.on_events(&[put("b", 7, None)], 7, now);
    h.request_progress(id, now);
    h.cancel_all(WatchCancelReason::MemberStopped);
    assert!(sink.take().is_empty() && sink.closed().is_none());
    assert_eq!(h.len(), 0);
    // With the injected bug the watcher stays.
    let mut h = hub(5);
    h.set_bugs(crate::bugs::Bugs::with(Some(
        crate::InjectedBug::WatchCancelIgnored,
    )));
    let (id, sink) = watch(&mut h, WatchRequest::key("a"), 8, now);
    assert!(h.cancel(id));
    h.on_events(&[put("a", 6, None)], 6, now);
    assert_eq!(sink.events(), vec![(6, "a".to_owned())]);
}

#[test]
fn ten_thousand_watchers_each_get_exactly_their_events() {
    let now = Instant::now();
    let mut h = hub(1);
    let mut keys = Vec::new();
    let mut prefixes = Vec::new();
    for i in 0..5_000 {
        keys.push(watch(&mut h, WatchRequest::key(format!("key/{i}")), 4, now).1);
        prefixes.push(watch(&mut h, WatchRequest::prefix(format!("dir/{i}/")), 4, now).1);
    }
    // Every 7th key and every 11th directory is written, in steps of 100.
    let mut revisions: Vec<Vec<WatchEvent>> = Vec::new();
    let mut rev = 1;
    for i in (0..5_000).step_by(7) {
        rev += 1;
        revisions.push(vec![put(&format!("key/{i}"), rev, None)]);
    }
    for i in (0..5_000).step_by(11) {
        rev += 1;
        // One revision, two keys; the second is also under dir/{i}0/.
        revisions.push(vec![
            put(&format!("dir/{i}/x"), rev, None),
            put(&format!("dir/{i}0/y"), rev, None),
        ]);
    }
    for step in revisions.chunks(50) {
        let events: Vec<WatchEvent> = step.iter().flatten().cloned().collect();
        let last = events.last().map_or(rev, |e| e.revision());
        h.on_events(&events, last, now);
    }
    for (i, sink) in keys.iter().enumerate() {
        let want = usize::from(i % 7 == 0);
        assert_eq!(sink.events().len(), want, "key watcher {i}");
    }
    for (i, sink) in prefixes.iter().enumerate() {
        let direct = i % 11 == 0;
        // "dir/{n}0/" is watcher 10n, except n = 0 ("dir/00/" is nobody's).
        let via_tens = i > 0 && i % 10 == 0 && (i / 10) % 11 == 0;
        let want = usize::from(direct) + usize::from(via_tens);
        assert_eq!(sink.events().len(), want, "prefix watcher {i}");
    }
    assert_eq!(h.len(), 10_000, "nobody was cancelled");
}
