//! Which watchers a key concerns, cheaply with many watchers: exact keys
//! by one hash lookup, prefixes by one lookup per prefix length in use
//! (not per byte of the key), other ranges by a scan.

use std::collections::{BTreeMap, HashMap};

use ha_core::{KeyRange, WatchId};

#[derive(Debug, Default)]
pub(crate) struct Matcher {
    keys: HashMap<Vec<u8>, Vec<WatchId>>,
    prefixes: HashMap<Vec<u8>, Vec<WatchId>>,
    /// Prefix length → how many prefix entries have it.
    prefix_lens: BTreeMap<usize, usize>,
    /// Ranges that are neither one key nor a prefix.
    ranges: Vec<(WatchId, KeyRange)>,
}

fn remove_id(ids: &mut Vec<WatchId>, id: WatchId) -> bool {
    match ids.iter().position(|&i| i == id) {
        Some(p) => {
            ids.swap_remove(p);
            true
        }
        None => false,
    }
}

impl Matcher {
    pub(crate) fn insert(&mut self, id: WatchId, range: &KeyRange) {
        match range {
            KeyRange::Key(k) => self.keys.entry(k.clone()).or_default().push(id),
            KeyRange::Prefix(p) => {
                let ids = self.prefixes.entry(p.clone()).or_default();
                if ids.is_empty() {
                    *self.prefix_lens.entry(p.len()).or_default() += 1;
                }
                ids.push(id);
            }
            KeyRange::Range { .. } | KeyRange::From(_) => self.ranges.push((id, range.clone())),
        }
    }

    pub(crate) fn remove(&mut self, id: WatchId, range: &KeyRange) {
        match range {
            KeyRange::Key(k) => {
                if let Some(ids) = self.keys.get_mut(k.as_slice()) {
                    remove_id(ids, id);
                    if ids.is_empty() {
                        self.keys.remove(k.as_slice());
                    }
                }
            }
            KeyRange::Prefix(p) => {
                let Some(ids) = self.prefixes.get_mut(p.as_slice()) else {
                    return;
                };
                remove_id(ids, id);
                if ids.is_empty() {
                    self.prefixes.remove(p.as_slice());
                    if let Some(n) = self.prefix_lens.get_mut(&p.len()) {
                        *n -= 1;
                        if *n == 0 {
                            self.prefix_lens.remove(&p.len());
                        }
                    }
                }
            }
            KeyRange::Range { .. } | KeyRange::From(_) => {
                if let Some(p) = self.ranges.iter().position(|(i, _)| *i == id) {
                    self.ranges.swap_remove(p);
                }
            }
        }
    }

    /// Appends to `out` every watcher whose range holds `key` (each once:
    /// a watcher has one range).
    pub(crate) fn matching(&self, key: &[u8], out: &mut Vec<WatchId>) {
        if let Some(ids) = self.keys.get(key) {
            out.extend_from_slice(ids);
        }
        for &len in self.prefix_lens.range(..=key.len()).map(|(l, _)| l) {
            if let Some(ids) = self.prefixes.get(&key[..len]) {
                out.extend_from_slice(ids);
            }
        }
        for (id, range) in &self.ranges {
            if range.contains(key) {
                out.push(*id);
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.prefixes.is_empty() && self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(m: &Matcher, key: &str) -> Vec<u64> {
        let mut out = Vec::new();
        m.matching(key.as_bytes(), &mut out);
        let mut v: Vec<u64> = out.into_iter().map(|i| i.0).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn keys_prefixes_and_ranges_match_what_they_contain() {
        let mut m = Matcher::default();
        let ranges = [
            KeyRange::key("a/b"),
            KeyRange::prefix("a/"),
            KeyRange::prefix("a/b"),
            KeyRange::prefix(""),
            KeyRange::range("a/a", "a/c"),
            KeyRange::From(b"b".to_vec()),
            KeyRange::key("a/b"),
        ];
        for (i, r) in ranges.iter().enumerate() {
            m.insert(WatchId(i as u64), r);
        }
        // Brute force says what must match.
        for key in ["a/b", "a/bc", "a/", "a", "b", "c", "", "a/c"] {
            let want: Vec<u64> = (0..ranges.len() as u64)
                .filter(|&i| ranges[i as usize].contains(key.as_bytes()))
                .collect();
            assert_eq!(ids(&m, key), want, "watchers of {key:?}");
        }
        for (i, r) in ranges.iter().enumerate() {
            m.remove(WatchId(i as u64), r);
        }
        assert!(m.is_empty(), "removing every watcher leaves nothing behind");
        assert!(m.prefix_lens.is_empty());
        assert_eq!(ids(&m, "a/b"), Vec::<u64>::new());
    }
}
