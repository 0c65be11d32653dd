//! The device key cache: key blobs uploaded once and kept in device memory
//! under a byte budget, least recently used evicted first.
//!
//! The cache holds `Arc`s. Evicting an entry only drops the cache's
//! reference; a batch that is still running with the key holds another, so
//! the device copy is wiped (and freed) when the last batch using it is done
//! — never under a running kernel. Wiping is the value's `Drop`.
//!
//! Generic over the stored value so that the policy is tested without a GPU.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::keys::KeyId;

struct Entry<V> {
    value: Arc<V>,
    bytes: usize,
    tick: u64,
}

/// An LRU map from key to device copy with a byte budget.
pub struct KeyCache<V> {
    budget: usize,
    used: usize,
    next_tick: u64,
    entries: HashMap<KeyId, Entry<V>>,
    /// Use order: tick -> key, oldest first.
    order: BTreeMap<u64, KeyId>,
    evictions: u64,
}

impl<V> KeyCache<V> {
    /// An empty cache holding at most `budget` bytes.
    pub fn new(budget: usize) -> KeyCache<V> {
        KeyCache {
            budget,
            used: 0,
            next_tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            evictions: 0,
        }
    }

    /// The entry for `id`, marked as just used.
    pub fn get(&mut self, id: &KeyId) -> Option<Arc<V>> {
        let tick = self.next_tick;
        let e = self.entries.get_mut(id)?;
        self.order.remove(&e.tick);
        e.tick = tick;
        self.order.insert(tick, *id);
        self.next_tick += 1;
        Some(e.value.clone())
    }

    /// Whether a value of `bytes` could ever be cached.
    pub fn fits(&self, bytes: usize) -> bool {
        bytes <= self.budget
    }

    /// Makes room for `bytes` more by evicting the least recently used
    /// entries; returns false when `bytes` exceeds the whole budget. Call
    /// before uploading, so the device never holds more than the budget.
    pub fn make_room(&mut self, bytes: usize) -> bool {
        if !self.fits(bytes) {
            return false;
        }
        while self.used + bytes > self.budget {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.used -= e.bytes;
                self.evictions += 1;
            }
        }
        true
    }

    /// Adds `value` (of `bytes` device bytes) for `id`, evicting as needed.
    /// Returns false (and drops `value`) when it can never fit.
    pub fn insert(&mut self, id: KeyId, value: Arc<V>, bytes: usize) -> bool {
        self.remove(&id);
        if !self.make_room(bytes) {
            return false;
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        self.order.insert(tick, id);
        self.entries.insert(id, Entry { value, bytes, tick });
        self.used += bytes;
        true
    }

    /// Drops the entry for `id`, if any.
    pub fn remove(&mut self, id: &KeyId) {
        if let Some(e) = self.entries.remove(id) {
            self.order.remove(&e.tick);
            self.used -= e.bytes;
        }
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
        self.used = 0;
    }

    /// Bytes held.
    pub fn used(&self) -> usize {
        self.used
    }

    /// The budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries evicted to make room since start.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Stands in for a device copy: counts its wipes.
    struct Blob(Arc<AtomicUsize>);
    impl Drop for Blob {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn id(n: u8) -> KeyId {
        KeyId([n; 32])
    }

    #[test]
    fn least_recently_used_goes_first_and_is_wiped() {
        let wiped = Arc::new(AtomicUsize::new(0));
        let mut c = KeyCache::new(300);
        for n in 0..3 {
            assert!(c.insert(id(n), Arc::new(Blob(wiped.clone())), 100));
        }
        assert_eq!(c.used(), 300);
        c.get(&id(0)); // 1 is now the oldest
        assert!(c.insert(id(3), Arc::new(Blob(wiped.clone())), 100));
        assert!(c.get(&id(1)).is_none());
        assert!(c.get(&id(0)).is_some() && c.get(&id(2)).is_some());
        assert_eq!(wiped.load(Ordering::SeqCst), 1);
        assert_eq!(c.evictions(), 1);
        c.clear();
        assert_eq!(wiped.load(Ordering::SeqCst), 4);
        assert_eq!(c.used(), 0);
    }

    #[test]
    fn an_entry_in_use_is_wiped_only_when_its_user_is_done() {
        let wiped = Arc::new(AtomicUsize::new(0));
        let mut c = KeyCache::new(100);
        c.insert(id(1), Arc::new(Blob(wiped.clone())), 100);
        let in_use = c.get(&id(1)).unwrap();
        c.insert(id(2), Arc::new(Blob(wiped.clone())), 100);
        assert_eq!(wiped.load(Ordering::SeqCst), 0);
        drop(in_use);
        assert_eq!(wiped.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn too_big_is_refused() {
        let wiped = Arc::new(AtomicUsize::new(0));
        let mut c = KeyCache::new(10);
        assert!(!c.insert(id(1), Arc::new(Blob(wiped.clone())), 11));
        assert_eq!(wiped.load(Ordering::SeqCst), 1);
        assert!(c.is_empty());
    }
}
