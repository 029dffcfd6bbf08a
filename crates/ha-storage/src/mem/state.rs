//! [`MemStateStore`]: the ordered state store in memory, with a simulated
//! durable layer.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use ha_core::{BatchOp, StateStore, StateView, StorageError, WriteBatch};
use parking_lot::Mutex;

use super::injected_write_failure;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory [`StateStore`] for tests and simulation.
///
/// Every write is applied atomically to the current view, which all reads
/// see. A write with `sync` is durable, and makes every earlier write
/// durable too (as on a WAL-based backend); [`MemStateStore::crash`] returns
/// the store as a power failure would leave it, without the writes after the
/// last sync.
///
/// A scan iterates over a snapshot taken when it starts: it never sees a
/// write that lands while it runs, and its callback may call back into the
/// store. (A write during a scan copies the map once, so long scans under
/// heavy writes are slow; this is a test double.)
///
/// Clones share the same data. Writes can be made to fail at run time with
/// [`MemStateStore::set_fail_writes`].
#[derive(Clone, Default)]
pub struct MemStateStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// Shared with running scans; copied on write only while one runs.
    current: Arc<Map>,
    durable: Map,
    /// Written but not synced, oldest first; folded into `durable` by the
    /// next sync so that a sync never copies the whole map.
    unsynced: Vec<WriteBatch>,
    fail_writes: bool,
}

fn apply(map: &mut Map, ops: &[BatchOp]) {
    for op in ops {
        match op {
            BatchOp::Put { key, value } => {
                map.insert(key.clone(), value.clone());
            }
            BatchOp::Delete { key } => {
                map.remove(key);
            }
        }
    }
}

fn apply_owned(map: &mut Map, ops: Vec<BatchOp>) {
    for op in ops {
        match op {
            BatchOp::Put { key, value } => {
                map.insert(key, value);
            }
            BatchOp::Delete { key } => {
                map.remove(&key);
            }
        }
    }
}

impl MemStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store as it would be after a power failure and a restart: only
    /// what a synced write made durable survives. The new store is
    /// independent of this one and its writes do not fail.
    pub fn crash(&self) -> MemStateStore {
        let inner = self.inner.lock();
        MemStateStore {
            inner: Arc::new(Mutex::new(Inner {
                current: Arc::new(inner.durable.clone()),
                durable: inner.durable.clone(),
                unsynced: Vec::new(),
                fail_writes: false,
            })),
        }
    }

    /// While `fail` is true, [`StateStore::write`] changes nothing and
    /// returns [`StorageError::Io`] ("injected write failure"), as a failing
    /// device would. Reads still work.
    pub fn set_fail_writes(&self, fail: bool) {
        self.inner.lock().fail_writes = fail;
    }
}

impl fmt::Debug for MemStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `try_lock`: formatting must not deadlock if a caller holds the lock.
        let Some(inner) = self.inner.try_lock() else {
            return f.write_str("MemStateStore { <locked> }");
        };
        f.debug_struct("MemStateStore")
            .field("keys", &inner.current.len())
            .field("durable_keys", &inner.durable.len())
            .field("unsynced_batches", &inner.unsynced.len())
            .field("fail_writes", &inner.fail_writes)
            .finish()
    }
}

fn scan_map(
    map: &Map,
    start: &[u8],
    end: Option<&[u8]>,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) {
    // `BTreeMap::range` panics on an inverted range; it is simply empty.
    if end.is_some_and(|end| start >= end) {
        return;
    }
    let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
    for (key, value) in map.range::<[u8], _>((Bound::Included(start), upper)) {
        if !visit(key, value) {
            break;
        }
    }
}

/// A point-in-time view: the map as it was, shared until the next write
/// copies it.
struct MapView(Arc<Map>);

impl StateView for MapView {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.0.get(key).cloned())
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        scan_map(&self.0, start, end, visit);
        Ok(())
    }
}

impl StateStore for MemStateStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.inner.lock().current.get(key).cloned())
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        // Release the lock before calling back into user code.
        let snapshot = Arc::clone(&self.inner.lock().current);
        scan_map(&snapshot, start, end, visit);
        Ok(())
    }

    fn read_consistent(
        &self,
        read: &mut dyn FnMut(&dyn StateView) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let view = MapView(Arc::clone(&self.inner.lock().current));
        read(&view)
    }

    fn restore(
        &self,
        pairs: &mut dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>>,
    ) -> Result<(), StorageError> {
        if self.inner.lock().fail_writes {
            return Err(injected_write_failure("restore"));
        }
        let mut map = Map::new();
        let mut failed = None;
        for pair in pairs {
            match pair {
                Ok((key, value)) => {
                    map.insert(key, value);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Like a real backend, a restore that stops part-way leaves what it
        // wrote so far, durably: the engine's pending-install marker is what
        // makes that recoverable.
        let mut inner = self.inner.lock();
        inner.unsynced.clear();
        inner.durable = map.clone();
        inner.current = Arc::new(map);
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut inner = self.inner.lock();
        if inner.fail_writes {
            return Err(injected_write_failure("write"));
        }
        apply(Arc::make_mut(&mut inner.current), batch.ops());
        if sync {
            let inner = &mut *inner;
            for earlier in inner.unsynced.drain(..) {
                apply_owned(&mut inner.durable, earlier.into_ops());
            }
            apply_owned(&mut inner.durable, batch.into_ops());
        } else if !batch.is_empty() {
            inner.unsynced.push(batch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(puts: &[(&str, &str)], deletes: &[&str]) -> WriteBatch {
        let mut b = WriteBatch::new();
        for (k, v) in puts {
            b.put(k.as_bytes(), v.as_bytes());
        }
        for k in deletes {
            b.delete(k.as_bytes());
        }
        b
    }

    fn contents(store: &MemStateStore) -> Vec<(String, String)> {
        let mut out = Vec::new();
        store
            .scan(b"", None, &mut |k, v| {
                out.push((
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                ));
                true
            })
            .unwrap();
        out
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unsynced_write_is_lost_on_crash() {
        let store = MemStateStore::new();
        store.write(batch(&[("a", "1")], &[]), false).unwrap();
        assert_eq!(
            store.get(b"a").unwrap(),
            Some(b"1".to_vec()),
            "readable before the crash"
        );
        assert_eq!(
            contents(&store.crash()),
            pairs(&[]),
            "an unsynced write survived a crash"
        );
    }

    #[test]
    fn synced_write_survives_crash() {
        let store = MemStateStore::new();
        store
            .write(batch(&[("a", "1"), ("b", "2")], &[]), true)
            .unwrap();
        store.write(batch(&[("c", "3")], &["a"]), false).unwrap();
        assert_eq!(contents(&store.crash()), pairs(&[("a", "1"), ("b", "2")]));
    }

    #[test]
    fn synced_write_makes_earlier_unsynced_writes_durable() {
        let store = MemStateStore::new();
        store
            .write(batch(&[("a", "1"), ("b", "2")], &[]), false)
            .unwrap();
        store.write(batch(&[("a", "3")], &["b"]), false).unwrap();
        store.write(batch(&[("c", "4")], &[]), true).unwrap();
        assert_eq!(contents(&store.crash()), pairs(&[("a", "3"), ("c", "4")]));
    }

    #[test]
    fn empty_synced_write_syncs_earlier_writes() {
        let store = MemStateStore::new();
        store.write(batch(&[("a", "1")], &[]), false).unwrap();
        store.write(WriteBatch::new(), true).unwrap();
        assert_eq!(contents(&store.crash()), pairs(&[("a", "1")]));
    }

    #[test]
    fn crash_does_not_disturb_the_original() {
        let store = MemStateStore::new();
        store.write(batch(&[("a", "1")], &[]), false).unwrap();
        let after = store.crash();
        after.write(batch(&[("z", "9")], &[]), true).unwrap();
        assert_eq!(contents(&store), pairs(&[("a", "1")]));
    }

    #[test]
    fn injected_write_failures_change_nothing() {
        let store = MemStateStore::new();
        store.write(batch(&[("a", "1")], &[]), true).unwrap();
        store.set_fail_writes(true);
        let err = store.write(batch(&[("b", "2")], &["a"]), true).unwrap_err();
        match &err {
            StorageError::Io { source, .. } => {
                assert_eq!(source.to_string(), "injected write failure");
            }
            other => panic!("expected an injected Io error, got {other:?}"),
        }
        assert_eq!(
            contents(&store),
            pairs(&[("a", "1")]),
            "a failed write changed the view"
        );
        assert_eq!(contents(&store.crash()), pairs(&[("a", "1")]));
        store.set_fail_writes(false);
        store.write(batch(&[("b", "2")], &[]), true).unwrap();
        assert_eq!(contents(&store.crash()), pairs(&[("a", "1"), ("b", "2")]));
    }

    #[test]
    fn clones_share_the_data() {
        let store = MemStateStore::new();
        let handle = store.clone();
        store.write(batch(&[("a", "1")], &[]), false).unwrap();
        assert_eq!(handle.get(b"a").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn scan_sees_a_snapshot_and_may_call_back_into_the_store() {
        let store = MemStateStore::new();
        store
            .write(batch(&[("a", "1"), ("b", "2")], &[]), false)
            .unwrap();
        let mut seen = Vec::new();
        store
            .scan(b"", None, &mut |k, _| {
                // Neither deadlocks nor shows up in this scan.
                store.write(batch(&[("c", "3")], &[]), false).unwrap();
                assert!(store.get(b"c").unwrap().is_some());
                seen.push(k.to_vec());
                true
            })
            .unwrap();
        assert_eq!(seen, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(store.get(b"c").unwrap(), Some(b"3".to_vec()));
    }
}
