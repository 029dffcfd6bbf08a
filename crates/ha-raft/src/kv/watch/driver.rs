//! The shell around the [`WatchHub`]: the MVCC machine shared between the
//! apply thread and the watch driver, the observer that feeds the hub from
//! the apply thread, and the driver thread that catches unsynced watchers
//! up from history (in chunks, so the apply thread never waits long) and
//! gives the hub the time.
//!
//! Lock order: machine, then hub. The apply thread holds the machine while
//! it applies and tells the hub; the driver takes the machine for one
//! history chunk, then the hub to deliver it; streams and `KvNode::watch`
//! take only the hub.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use ha_core::{
    ApplyContext, Error, LeaseId, StateMachine, StateStore, StorageError, WatchCancelReason,
    WatchEvent, WriteBatch,
};
use ha_storage::kv::{KvObserver, MvccMachine};
use parking_lot::Mutex;

use super::hub::WatchHub;
use crate::shell::Node;

/// The MVCC machine as the engine's state machine, shared with the watch
/// driver for history reads.
pub(crate) struct SharedMachine<S: StateStore + ?Sized>(pub(crate) Arc<Mutex<MvccMachine<S>>>);

impl<S: StateStore + ?Sized> StateMachine for SharedMachine<S> {
    fn apply(&mut self, ctx: &ApplyContext, command: &[u8], batch: &mut WriteBatch) -> Bytes {
        self.0.lock().apply(ctx, command, batch)
    }

    fn on_committed(&mut self, applied_index: u64) {
        self.0.lock().on_committed(applied_index);
    }

    fn restored(&mut self, applied_index: u64) -> Result<(), StorageError> {
        self.0.lock().restored(applied_index)
    }

    fn query(&self, query: &[u8]) -> Bytes {
        self.0.lock().query(query)
    }
}

/// Wakes the driver (a new watcher, a snapshot, owed progress).
#[derive(Clone)]
pub(crate) struct Wake(Sender<()>);

impl Wake {
    pub(crate) fn wake(&self) {
        match self.0.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}

/// Feeds the hub from the apply thread (called with the machine locked).
pub(crate) struct HubObserver {
    pub(crate) hub: Arc<Mutex<WatchHub>>,
    pub(crate) wake: Wake,
}

impl KvObserver for HubObserver {
    fn events(&mut self, events: &[WatchEvent], revision: i64) {
        self.hub.lock().on_events(events, revision, Instant::now());
    }

    fn compacted(&mut self, compact_revision: i64) {
        self.hub.lock().on_compacted(compact_revision);
    }

    fn restored(&mut self, revision: i64, compact_revision: i64, _: &[(LeaseId, Duration)]) {
        self.hub.lock().on_restored(revision, compact_revision);
        self.wake.wake();
    }
}

/// How the driver runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DriverConfig {
    /// Most events read from history under one hold of the machine.
    pub(crate) chunk_events: usize,
    /// How often the hub is given the time (periodic progress, owed
    /// progress, watchers paused on a full buffer).
    pub(crate) tick: Duration,
}

/// The driver thread; stops when asked, or when the member stops (then it
/// cancels every watch with `MemberStopped`).
pub(crate) struct Driver {
    pub(crate) wake: Wake,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Driver {
    pub(crate) fn start<S: StateStore + ?Sized>(
        machine: Arc<Mutex<MvccMachine<S>>>,
        hub: Arc<Mutex<WatchHub>>,
        node: Node,
        config: DriverConfig,
        wake: (Sender<()>, Receiver<()>),
    ) -> std::io::Result<Driver> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = wake;
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("ha-watch-{}", node.id()))
                .spawn(move || run(&*machine, &hub, &node, config, &rx, &stop))?
        };
        Ok(Driver {
            wake: Wake(tx),
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Asks the thread to stop (it does within one wait) and hands over
    /// its handle, the first time.
    fn ask_to_stop(&self) -> Option<JoinHandle<()>> {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.wake();
        self.thread.lock().take()
    }

    /// Asks the thread to stop without joining it: for a kill, which must
    /// not wait.
    pub(crate) fn stop_soon(&self) {
        drop(self.ask_to_stop());
    }

    /// Asks the thread to stop and waits until it has, off the runtime's
    /// threads. The thread holds the state machine and with it the state
    /// store: an application that exits right after a shutdown must find
    /// the store free, or RocksDB aborts in its static destructors.
    pub(crate) async fn stop(&self) {
        if let Some(thread) = self.ask_to_stop() {
            // The thread ends within one wait; a panic in it was already
            // reported where it happened.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// A wake channel for [`Driver::start`] (made first, so that the observer
/// can hold its sender before the member starts).
pub(crate) fn wake_channel() -> (Sender<()>, Receiver<()>) {
    crossbeam_channel::bounded(1)
}

pub(crate) fn wake_of(tx: &Sender<()>) -> Wake {
    Wake(tx.clone())
}

fn run<S: StateStore + ?Sized>(
    machine: &Mutex<MvccMachine<S>>,
    hub: &Mutex<WatchHub>,
    node: &Node,
    config: DriverConfig,
    wake: &Receiver<()>,
    stop: &AtomicBool,
) {
    // Short waits while some watcher is paused on a full buffer.
    let paused_poll = Duration::from_millis(5);
    loop {
        let wait = if hub.lock().unsynced() > 0 {
            paused_poll.min(config.tick)
        } else {
            config.tick
        };
        match wake.recv_timeout(wait) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if node.check_running().is_err() {
            // Whatever was applied has been delivered; nothing more comes.
            hub.lock().cancel_all(WatchCancelReason::MemberStopped);
            return;
        }
        catch_up(machine, hub, config.chunk_events);
        hub.lock().tick(Instant::now());
    }
}

/// Reads history chunk by chunk until no unsynced watcher with room is
/// left; the machine is held for one chunk at a time.
fn catch_up<S: StateStore + ?Sized>(
    machine: &Mutex<MvccMachine<S>>,
    hub: &Mutex<WatchHub>,
    chunk_events: usize,
) {
    loop {
        let m = machine.lock();
        // Bound before locking the hub: the plan's end is the hub's
        // revision, which moves only under the machine lock held here.
        let plan = hub.lock().catch_up_plan();
        let Some((from, to)) = plan else {
            return;
        };
        let read = m.history(from, to, chunk_events);
        let mut h = hub.lock();
        match read {
            Ok((events, covered)) => h.on_history(from, &events, covered, Instant::now()),
            Err(Error::Compacted { compact_revision }) => h.on_history_compacted(compact_revision),
            Err(e) => {
                tracing::warn!(error = %e, from, to, "reading watch history failed; retrying later");
                return;
            }
        }
        drop(h);
        drop(m);
        if hub.lock().catch_up_plan() == Some((from, to)) {
            // Nothing moved (only paused watchers): wait for room.
            return;
        }
    }
}
