//! A bounded map ordered by last use, for the connection and flow tables.
//!
//! Entries sit in a slab, linked in order of (last use, insertion): a touch moves the entry to
//! the tail, so touch, insert and eviction are O(1) — the tracker touches a connection on every
//! record, and a B-tree of timestamps (removed and reinserted per touch) was a tenth of the
//! agent's time on a busy host. Timestamps come from two hooks and several CPUs, so one can
//! be slightly older than the tail's: the entry then walks back from the tail to its place
//! (almost always zero or one step), which keeps the list exactly sorted, as eviction and the
//! idle sweep assume. Keys are hashed with FxHash: they are addresses and ports, not input an
//! attacker can choose to collide cheaply enough to matter against the table's bound.

use std::hash::Hash;

use rustc_hash::FxHashMap;

const NIL: u32 = u32::MAX;

struct Node<K, V> {
    key: K,
    value: V,
    last_ns: u64,
    prev: u32,
    next: u32,
}

pub(crate) struct Lru<K, V> {
    index: FxHashMap<K, u32>,
    /// `None` slots are free and listed in `free`.
    nodes: Vec<Option<Node<K, V>>>,
    free: Vec<u32>,
    /// Least recently used first.
    head: u32,
    tail: u32,
    capacity: usize,
}

impl<K: Clone + Eq + Hash, V> Lru<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            index: FxHashMap::default(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    fn node(&self, i: u32) -> &Node<K, V> {
        self.nodes[i as usize]
            .as_ref()
            .expect("linked slots are occupied")
    }

    fn node_mut(&mut self, i: u32) -> &mut Node<K, V> {
        self.nodes[i as usize]
            .as_mut()
            .expect("linked slots are occupied")
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let n = self.node(i);
            (n.prev, n.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.node_mut(prev).next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.node_mut(next).prev = prev;
        }
    }

    /// Links `i` after the last entry whose last use is not later than its own.
    fn link_sorted(&mut self, i: u32) {
        let t = self.node(i).last_ns;
        let mut after = self.tail;
        while after != NIL && self.node(after).last_ns > t {
            after = self.node(after).prev;
        }
        let next = if after == NIL {
            self.head
        } else {
            self.node(after).next
        };
        {
            let n = self.node_mut(i);
            n.prev = after;
            n.next = next;
        }
        if after == NIL {
            self.head = i;
        } else {
            self.node_mut(after).next = i;
        }
        if next == NIL {
            self.tail = i;
        } else {
            self.node_mut(next).prev = i;
        }
    }

    /// The entry for `key`, marked as used at `now_ns` (never moved back in time).
    /// (The tracker goes through [`Lru::get_or_insert_with`]; the tests read entries here.)
    #[cfg(test)]
    pub(crate) fn get_mut(&mut self, key: &K, now_ns: u64) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        self.touch(i, now_ns);
        Some(&mut self.node_mut(i).value)
    }

    /// Marks slot `i` as used at `now_ns` (never moved back in time).
    fn touch(&mut self, i: u32, now_ns: u64) {
        if now_ns > self.node(i).last_ns {
            self.node_mut(i).last_ns = now_ns;
            if self.tail != i {
                self.unlink(i);
                self.link_sorted(i);
            }
        }
    }

    /// Inserts a new entry (the key must not be present). When the map is full the least
    /// recently used entry is removed first and returned.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, key: K, value: V, now_ns: u64) -> Option<(K, V)> {
        self.insert_slot(key, value, now_ns).1
    }

    /// [`Lru::insert`], also returning the new entry's slot.
    fn insert_slot(&mut self, key: K, value: V, now_ns: u64) -> (u32, Option<(K, V)>) {
        let evicted = if self.index.len() >= self.capacity {
            self.pop_oldest()
        } else {
            None
        };
        let node = Node {
            key: key.clone(),
            value,
            last_ns: now_ns,
            prev: NIL,
            next: NIL,
        };
        let i = if let Some(i) = self.free.pop() {
            self.nodes[i as usize] = Some(node);
            i
        } else {
            self.nodes.push(Some(node));
            u32::try_from(self.nodes.len() - 1).expect("fewer than 2^32 entries")
        };
        self.link_sorted(i);
        self.index.insert(key, i);
        (i, evicted)
    }

    pub(crate) fn get_or_insert_with(
        &mut self,
        key: &K,
        now_ns: u64,
        make: impl FnOnce() -> V,
    ) -> (&mut V, Option<(K, V)>) {
        // One hash lookup for a known key (the per-packet case), two only for a new one.
        if let Some(&i) = self.index.get(key) {
            self.touch(i, now_ns);
            return (&mut self.node_mut(i).value, None);
        }
        let (i, evicted) = self.insert_slot(key.clone(), make(), now_ns);
        (&mut self.node_mut(i).value, evicted)
    }

    /// Removes and returns the least recently used entry.
    pub(crate) fn pop_oldest(&mut self) -> Option<(K, V)> {
        let i = self.head;
        if i == NIL {
            return None;
        }
        self.unlink(i);
        let node = self.nodes[i as usize]
            .take()
            .expect("head slot is occupied");
        self.free.push(i);
        self.index.remove(&node.key);
        Some((node.key, node.value))
    }

    /// Removes and returns the least recently used entry if it was last used before
    /// `cutoff_ns`.
    pub(crate) fn pop_idle(&mut self, cutoff_ns: u64) -> Option<(K, V)> {
        if self.head != NIL && self.node(self.head).last_ns < cutoff_ns {
            self.pop_oldest()
        } else {
            None
        }
    }

    /// All entries, least recently used first, leaving the map empty.
    pub(crate) fn drain_oldest_first(&mut self) -> Vec<(K, V)> {
        let mut out = Vec::with_capacity(self.index.len());
        while let Some(entry) = self.pop_oldest() {
            out.push(entry);
        }
        out
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.nodes.iter().flatten().map(|n| &n.value)
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

    /// Against a reference that sorts by (last use, order of reaching it) on every step: the same
    /// evictions, idle pops and final order, with timestamps that step back now and then (as
    /// records from two hooks do) and slots reused after removals.
    #[test]
    fn matches_a_sorted_reference() {
        use std::collections::BTreeMap;
        let mut lru = Lru::new(8);
        // key → (last use, serial)
        let mut reference: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        let mut serial = 0u64;
        let mut state = 0x2545_f491_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let oldest = |r: &BTreeMap<u32, (u64, u64)>| {
            r.iter().min_by_key(|(_, v)| **v).map(|(k, v)| (*k, *v))
        };
        let mut now = 1_000u64;
        for step in 0..5_000 {
            let r = next();
            // Mostly forward, sometimes a little back.
            now = if r % 5 == 0 {
                now.saturating_sub(r % 7)
            } else {
                now + r % 4
            };
            let key = (next() % 12) as u32;
            match next() % 4 {
                0 => {
                    let cutoff = now.saturating_sub(next() % 20);
                    let want = oldest(&reference).filter(|(_, (t, _))| *t < cutoff);
                    let got = lru.pop_idle(cutoff);
                    assert_eq!(got.map(|(k, ())| k), want.map(|(k, _)| k), "step {step}");
                    if let Some((k, _)) = want {
                        reference.remove(&k);
                    }
                }
                _ => {
                    if let Some(v) = reference.get_mut(&key) {
                        assert!(lru.get_mut(&key, now).is_some());
                        // Ties in last use go by the order entries reached it.
                        if now > v.0 {
                            *v = (now, serial);
                            serial += 1;
                        }
                    } else {
                        let want_evicted = (reference.len() >= 8)
                            .then(|| oldest(&reference).map(|(k, _)| k))
                            .flatten();
                        let got = lru.insert(key, (), now).map(|(k, ())| k);
                        assert_eq!(got, want_evicted, "step {step}");
                        if let Some(k) = want_evicted {
                            reference.remove(&k);
                        }
                        reference.insert(key, (now, serial));
                        serial += 1;
                    }
                }
            }
            assert_eq!(lru.len(), reference.len());
        }
        let mut want: Vec<_> = reference.into_iter().collect();
        want.sort_by_key(|(_, v)| *v);
        let got: Vec<u32> = lru
            .drain_oldest_first()
            .into_iter()
            .map(|(k, ())| k)
            .collect();
        assert_eq!(got, want.into_iter().map(|(k, _)| k).collect::<Vec<_>>());
    }
}
