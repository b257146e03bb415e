//! Keeping the first decision per transaction. A scorer killed mid-batch may have that batch
//! decided again by its successor (the test broker commits, rather than aborts, a killed
//! producer's open transaction), so readers of `decisions` can meet a transaction twice: each
//! keeps the first decision and counts the rest.

use std::borrow::Borrow;
use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

/// The last `capacity` distinct keys inserted, each with the value it was first inserted with;
/// the oldest is forgotten first. Memory stays flat however long it runs.
#[derive(Debug)]
pub struct RecentMap<K, V, S = RandomState> {
    values: HashMap<K, V, S>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> RecentMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self::with_hasher(capacity, RandomState::new())
    }
}

impl<K: Hash + Eq + Clone, V, S: BuildHasher> RecentMap<K, V, S> {
    pub fn with_hasher(capacity: usize, hasher: S) -> Self {
        let capacity = capacity.max(1);
        Self { values: HashMap::with_capacity_and_hasher(capacity.min(1 << 16), hasher), order: VecDeque::new(), capacity }
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.values.get(key)
    }

    /// Inserts `key` with `value` unless it is already there (then its first value stays);
    /// true when it was not there.
    pub fn insert_first(&mut self, key: K, value: V) -> bool {
        match self.values.entry(key) {
            Entry::Occupied(_) => false,
            Entry::Vacant(e) => {
                self.order.push_back(e.key().clone());
                e.insert(value);
                if self.order.len() > self.capacity
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.values.remove(&oldest);
                }
                true
            }
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Hashing for keys that are hashes already (64-bit fingerprints): each is its own hash, so a
/// lookup costs no hashing. Not for keys an outsider chooses freely.
#[derive(Debug, Default, Clone, Copy)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are meant; anything else still hashes, by FNV-1a.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`Prehashed`] hashers, for maps keyed by fingerprints.
pub type PrehashedState = BuildHasherDefault<Prehashed>;

/// The transaction ids of the last `capacity` distinct decisions read, oldest forgotten first.
/// Repeats come within seconds of the original (a replayed batch), so a window of recent ids is
/// enough and keeps memory flat.
#[derive(Debug)]
pub struct FirstSeen(RecentMap<String, ()>);

impl FirstSeen {
    /// The window readers use unless configured otherwise (at 2,000 decisions/s, 100 s).
    pub const DEFAULT_CAPACITY: usize = 200_000;

    pub fn new(capacity: usize) -> Self {
        Self(RecentMap::new(capacity))
    }

    /// True the first time `transaction_id` is offered (within the window); false for a repeat.
    pub fn first(&mut self, transaction_id: &str) -> bool {
        self.0.get(transaction_id).is_none() && self.0.insert_first(transaction_id.to_string(), ())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_spotted_within_the_window_and_memory_stays_bounded() {
        let mut seen = FirstSeen::new(3);
        assert!(seen.first("a"));
        assert!(!seen.first("a"), "a repeat");
        assert!(seen.first("b") && seen.first("c"));
        assert!(!seen.first("a"), "still in the window");
        assert!(seen.first("d"), "pushes a out");
        assert_eq!(seen.len(), 3);
        assert!(seen.first("a"), "forgotten once out of the window");
        assert!(!seen.first("d"));
    }

    #[test]
    fn a_recent_map_keeps_each_keys_first_value_within_its_window() {
        let mut m = RecentMap::new(2);
        assert!(m.insert_first(1u64, "a"));
        assert!(!m.insert_first(1, "b"), "already there");
        assert_eq!(m.get(&1), Some(&"a"), "the first value stays");
        assert!(m.insert_first(2, "c") && m.insert_first(3, "d"));
        assert_eq!((m.get(&1), m.len()), (None, 2), "the oldest goes first");
    }

    #[test]
    fn fingerprint_keys_are_their_own_hash() {
        let mut m: RecentMap<u64, u64, PrehashedState> = RecentMap::with_hasher(3, PrehashedState::default());
        for k in [u64::MAX, 0, 7, 1 << 63] {
            assert!(m.insert_first(k, k.wrapping_add(1)));
            assert_eq!(PrehashedState::default().hash_one(k), k);
        }
        assert_eq!(m.len(), 3);
        assert_eq!((m.get(&u64::MAX), m.get(&0), m.get(&7), m.get(&(1 << 63))), (None, Some(&1), Some(&8), Some(&((1 << 63) + 1))), "the oldest went");
        assert!(!m.insert_first(7, 1), "already there");
    }
}
