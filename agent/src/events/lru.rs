//! A bounded map ordered by last use, for the connection and flow tables: O(log n) touch,
//! insert and eviction of the least recently used entry.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

struct Slot<V> {
    value: V,
    last_ns: u64,
    serial: u64,
}

pub(crate) struct Lru<K, V> {
    map: HashMap<K, Slot<V>>,
    /// (last use, insertion serial) → key; the serial breaks ties between equal timestamps.
    order: BTreeMap<(u64, u64), K>,
    next_serial: u64,
    capacity: usize,
}

impl<K: Clone + Eq + Hash, V> Lru<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: BTreeMap::new(),
            next_serial: 0,
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The entry for `key`, marked as used at `now_ns` (never moved back in time).
    pub(crate) fn get_mut(&mut self, key: &K, now_ns: u64) -> Option<&mut V> {
        let slot = self.map.get_mut(key)?;
        if now_ns > slot.last_ns {
            self.order.remove(&(slot.last_ns, slot.serial));
            slot.last_ns = now_ns;
            self.order.insert((now_ns, slot.serial), key.clone());
        }
        Some(&mut slot.value)
    }

    /// Inserts a new entry (the key must not be present). When the map is full the least
    /// recently used entry is removed first and returned.
    pub(crate) fn insert(&mut self, key: K, value: V, now_ns: u64) -> Option<(K, V)> {
        let evicted = if self.map.len() >= self.capacity {
            self.pop_oldest()
        } else {
            None
        };
        let serial = self.next_serial;
        self.next_serial += 1;
        self.order.insert((now_ns, serial), key.clone());
        self.map.insert(
            key,
            Slot {
                value,
                last_ns: now_ns,
                serial,
            },
        );
        evicted
    }

    pub(crate) fn get_or_insert_with(
        &mut self,
        key: &K,
        now_ns: u64,
        make: impl FnOnce() -> V,
    ) -> (&mut V, Option<(K, V)>) {
        let evicted = if self.map.contains_key(key) {
            None
        } else {
            self.insert(key.clone(), make(), now_ns)
        };
        let value = self
            .get_mut(key, now_ns)
            .expect("present: it was either found or just inserted");
        (value, evicted)
    }

    /// Removes and returns the least recently used entry.
    pub(crate) fn pop_oldest(&mut self) -> Option<(K, V)> {
        let (_, key) = self.order.pop_first()?;
        let slot = self.map.remove(&key)?;
        Some((key, slot.value))
    }

    /// Removes and returns the least recently used entry if it was last used before
    /// `cutoff_ns`.
    pub(crate) fn pop_idle(&mut self, cutoff_ns: u64) -> Option<(K, V)> {
        let (&(last, _), _) = self.order.first_key_value()?;
        if last < cutoff_ns {
            self.pop_oldest()
        } else {
            None
        }
    }

    /// All entries, least recently used first, leaving the map empty.
    pub(crate) fn drain_oldest_first(&mut self) -> Vec<(K, V)> {
        let mut out = Vec::with_capacity(self.map.len());
        while let Some(entry) = self.pop_oldest() {
            out.push(entry);
        }
        out
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|s| &s.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut lru = Lru::new(2);
        assert!(lru.insert("a", 1, 10).is_none());
        assert!(lru.insert("b", 2, 20).is_none());
        *lru.get_mut(&"a", 30).expect("a") += 10;
        assert_eq!(lru.insert("c", 3, 40), Some(("b", 2)));
        assert_eq!(lru.pop_idle(30), None);
        assert_eq!(lru.pop_idle(31), Some(("a", 11)));
        assert_eq!(lru.drain_oldest_first(), vec![("c", 3)]);
        assert_eq!(lru.len(), 0);
    }

    #[test]
    fn time_never_moves_back() {
        let mut lru = Lru::new(4);
        lru.insert(1, (), 100);
        lru.insert(2, (), 50);
        let _ = lru.get_mut(&1, 10);
        assert_eq!(lru.pop_oldest(), Some((2, ())));
    }
}
