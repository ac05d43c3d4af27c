//! Collections with a fixed capacity that forget their oldest entry when full. Everything the
//! engine remembers about peers or past rounds lives in one of these, so no peer can grow the
//! node's memory by sending more. Ordered maps, so iteration is the same on every run: a
//! simulation seed replays exactly.

use std::collections::{BTreeMap, VecDeque};

/// A map that keeps at most `cap` entries, evicting the oldest insertion first.
#[derive(Debug, Clone)]
pub struct BoundedMap<K, V> {
    map: BTreeMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Ord + Clone, V> BoundedMap<K, V> {
    /// An empty map holding at most `cap` entries (at least one).
    pub fn new(cap: usize) -> Self {
        Self { map: BTreeMap::new(), order: VecDeque::new(), cap: cap.max(1) }
    }

    /// Inserts or replaces; a new key may evict the oldest. Returns whether the key was new.
    pub fn insert(&mut self, key: K, value: V) -> bool {
        if let Some(v) = self.map.get_mut(&key) {
            *v = value;
            return false;
        }
        while self.map.len() >= self.cap {
            let Some(old) = self.order.pop_front() else { break };
            self.map.remove(&old);
        }
        self.order.push_back(key.clone());
        self.map.insert(key, value);
        true
    }

    /// The value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Removes `key` (its slot in the eviction order is dropped lazily).
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let v = self.map.remove(key)?;
        if let Some(pos) = self.order.iter().position(|k| k == key) {
            self.order.remove(pos);
        }
        Some(v)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Every entry, in key order (deterministic, for the simulator's replays).
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }
}

/// A set that keeps at most `cap` members, evicting the oldest insertion first.
#[derive(Debug, Clone)]
pub struct BoundedSet<K>(BoundedMap<K, ()>);

impl<K: Ord + Clone> BoundedSet<K> {
    /// An empty set holding at most `cap` members.
    pub fn new(cap: usize) -> Self {
        Self(BoundedMap::new(cap))
    }

    /// Adds `key`; false when it was already a member.
    pub fn insert(&mut self, key: K) -> bool {
        self.0.insert(key, ())
    }

    /// Whether `key` is a member.
    pub fn contains(&self, key: &K) -> bool {
        self.0.contains(key)
    }

    /// Members held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Records whose last durable write failed (tasks or jobs): each is written again once,
/// then kept here (so it stays in memory) for a grace period in which a new failure would
/// mark it due again. Holds only ids present in memory, so it is bounded by them.
#[derive(Debug, Default)]
pub(crate) struct Unsaved {
    /// id -> when its last retry went out (0: due now).
    at: BTreeMap<fleetmesh_crypto::TaskId, u64>,
}

impl Unsaved {
    /// A write of `id` failed: write it again at the next retry.
    pub(crate) fn mark(&mut self, id: fleetmesh_crypto::TaskId) {
        self.at.insert(id, 0);
    }

    pub(crate) fn remove(&mut self, id: &fleetmesh_crypto::TaskId) {
        self.at.remove(id);
    }

    /// Whether `id` may not leave memory yet.
    pub(crate) fn contains(&self, id: &fleetmesh_crypto::TaskId) -> bool {
        self.at.contains_key(id)
    }

    /// The ids to write again now (stamped as retried); forgets those whose retry had
    /// `grace_ms` to fail and did not.
    pub(crate) fn due(&mut self, now: u64, grace_ms: u64) -> Vec<fleetmesh_crypto::TaskId> {
        self.at.retain(|_, at| *at == 0 || now.saturating_sub(*at) < grace_ms);
        let due: Vec<_> = self.at.iter().filter(|(_, at)| **at == 0).map(|(id, _)| *id).collect();
        for id in &due {
            self.at.insert(*id, now.max(1));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entry_goes_first_and_the_size_never_exceeds_the_cap() {
        let mut m = BoundedMap::new(3);
        for i in 0..10u32 {
            assert!(m.insert(i, i * 2));
            assert!(m.len() <= 3);
        }
        assert!(!m.contains(&6));
        assert_eq!(m.get(&9), Some(&18));
        assert!(!m.insert(9, 1), "replacing is not a new key");
        assert_eq!(m.get(&9), Some(&1));
        assert_eq!(m.remove(&8), Some(16));
        assert!(m.insert(100, 0));
        assert!(m.contains(&7) && m.contains(&9) && m.contains(&100));
    }

    #[test]
    fn a_set_refuses_repeats() {
        let mut s = BoundedSet::new(2);
        assert!(s.insert("a"));
        assert!(!s.insert("a"));
        assert!(s.insert("b") && s.insert("c"));
        assert!(!s.contains(&"a") && s.len() == 2);
    }
}
