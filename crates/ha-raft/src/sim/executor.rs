//! A deterministic single-threaded executor with virtual time.
//!
//! Tasks run only when the simulator says so; a woken task goes to the back
//! of one FIFO run queue; timers fire when the simulator moves virtual time
//! past them. Nothing here reads a clock or starts a thread, so the order
//! in which tasks run depends on the seed alone.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Virtual time since the start of a run, in nanoseconds.
pub(crate) type Nanos = u64;

pub(crate) const MICROS: Nanos = 1_000;
pub(crate) const MILLIS: Nanos = 1_000_000;
pub(crate) const SECONDS: Nanos = 1_000_000_000;

#[derive(Default)]
struct Timers {
    now: Nanos,
    next_id: u64,
    /// (deadline, id) → the task to wake.
    pending: BTreeMap<(Nanos, u64), Waker>,
}

/// The simulated clock: a fixed base `Instant` (taken once per run) plus
/// virtual time. Implements [`ha_core::Clock`], so code written against
/// that trait (the recipes, later) runs unchanged inside the simulator.
#[derive(Clone)]
pub(crate) struct SimClock {
    base: Instant,
    timers: Arc<Mutex<Timers>>,
}

impl std::fmt::Debug for SimClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimClock")
            .field("now_ns", &self.now_ns())
            .finish()
    }
}

impl SimClock {
    pub(crate) fn new() -> Self {
        SimClock {
            base: Instant::now(),
            timers: Arc::default(),
        }
    }

    /// Virtual nanoseconds since the start of the run.
    pub(crate) fn now_ns(&self) -> Nanos {
        self.timers.lock().now
    }

    /// The `Instant` the engine sees for virtual time `t`.
    pub(crate) fn instant(&self, t: Nanos) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    pub(crate) fn set_now(&self, t: Nanos) {
        let mut timers = self.timers.lock();
        debug_assert!(t >= timers.now, "virtual time went backwards");
        timers.now = t;
    }

    /// The earliest pending timer.
    pub(crate) fn next_deadline(&self) -> Option<Nanos> {
        self.timers.lock().pending.keys().next().map(|(t, _)| *t)
    }

    /// Wakes every timer due at or before now, earliest first.
    pub(crate) fn fire_due(&self) {
        let mut due = Vec::new();
        {
            let mut timers = self.timers.lock();
            let now = timers.now;
            while let Some(entry) = timers.pending.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
        }
        for w in due {
            w.wake();
        }
    }

    /// Completes after `d` of virtual time.
    pub(crate) fn sleep_ns(&self, d: Nanos) -> Sleep {
        Sleep {
            clock: self.clone(),
            deadline: self.now_ns().saturating_add(d),
            registered: None,
        }
    }
}

#[async_trait::async_trait]
impl ha_core::Clock for SimClock {
    fn now(&self) -> Instant {
        self.instant(self.now_ns())
    }

    async fn sleep(&self, duration: Duration) {
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sleep_ns(ns).await;
    }
}

/// The future of [`SimClock::sleep_ns`].
#[derive(Debug)]
pub(crate) struct Sleep {
    clock: SimClock,
    deadline: Nanos,
    registered: Option<u64>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut timers = self.clock.timers.lock();
        if timers.now >= self.deadline {
            if let Some(id) = self.registered {
                timers.pending.remove(&(self.deadline, id));
            }
            drop(timers);
            self.registered = None;
            return Poll::Ready(());
        }
        let id = match self.registered {
            Some(id) => id,
            None => {
                timers.next_id += 1;
                timers.next_id
            }
        };
        timers
            .pending
            .insert((self.deadline, id), cx.waker().clone());
        drop(timers);
        self.registered = Some(id);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.registered {
            self.clock
                .timers
                .lock()
                .pending
                .remove(&(self.deadline, id));
        }
    }
}

#[derive(Default)]
struct RunQueue {
    ready: VecDeque<u64>,
    queued: BTreeSet<u64>,
}

struct TaskWaker {
    id: u64,
    queue: Arc<Mutex<RunQueue>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut q = self.queue.lock();
        if q.queued.insert(self.id) {
            q.ready.push_back(self.id);
        }
    }
}

type Task = Pin<Box<dyn Future<Output = ()>>>;

/// Runs the simulated clients. See the module docs.
#[derive(Default)]
pub(crate) struct Executor {
    tasks: BTreeMap<u64, (Task, Waker)>,
    queue: Arc<Mutex<RunQueue>>,
    next_id: u64,
}

impl Executor {
    pub(crate) fn spawn(&mut self, fut: impl Future<Output = ()> + 'static) {
        self.next_id += 1;
        let id = self.next_id;
        let waker = Waker::from(Arc::new(TaskWaker {
            id,
            queue: self.queue.clone(),
        }));
        waker.wake_by_ref();
        self.tasks.insert(id, (Box::pin(fut), waker));
    }

    /// Polls woken tasks until none is ready.
    pub(crate) fn run_until_stalled(&mut self) {
        loop {
            let next = {
                let mut q = self.queue.lock();
                let id = q.ready.pop_front();
                if let Some(id) = id {
                    q.queued.remove(&id);
                }
                id
            };
            let Some(id) = next else { return };
            let Some((task, waker)) = self.tasks.get_mut(&id) else {
                continue;
            };
            let waker = waker.clone();
            let mut cx = Context::from_waker(&waker);
            if task.as_mut().poll(&mut cx).is_ready() {
                self.tasks.remove(&id);
            }
        }
    }

    /// Tasks not finished yet.
    pub(crate) fn live(&self) -> usize {
        self.tasks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn timers_fire_in_virtual_time_order_and_tasks_run_fifo() {
        let clock = SimClock::new();
        let mut exec = Executor::default();
        let log = Rc::new(RefCell::new(Vec::new()));
        for (name, delay) in [("slow", 30), ("fast", 10), ("mid", 20), ("also-fast", 10)] {
            let (clock, log) = (clock.clone(), log.clone());
            exec.spawn(async move {
                clock.sleep_ns(delay).await;
                log.borrow_mut().push((clock.now_ns(), name));
            });
        }
        exec.run_until_stalled();
        while let Some(t) = clock.next_deadline() {
            clock.set_now(t);
            clock.fire_due();
            exec.run_until_stalled();
        }
        assert_eq!(
            *log.borrow(),
            [(10, "fast"), (10, "also-fast"), (20, "mid"), (30, "slow")]
        );
        assert_eq!(exec.live(), 0);
    }
}
