//! Space-saving top-k counters (Metwally et al.) over interned endpoint ids.
//!
//! Memory is fixed at `capacity` counters per window. While a window sees no more distinct
//! ids than the capacity the counts are exact; past it, a new id takes over the smallest
//! counter (count + 1), so counts become overestimates but their sum always equals the number
//! of observations.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopK {
    /// (id, count), unordered.
    entries: Vec<(u32, u32)>,
}

impl TopK {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
        }
    }

    /// Counts one occurrence of `id`, keeping at most `capacity` counters.
    #[inline]
    pub fn observe(&mut self, id: u32, capacity: usize) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.0 == id) {
            entry.1 = entry.1.saturating_add(1);
            return;
        }
        if self.entries.len() < capacity.max(1) {
            self.entries.push((id, 1));
            return;
        }
        if let Some(min) = self.entries.iter_mut().min_by_key(|e| e.1) {
            *min = (id, min.1.saturating_add(1));
        }
    }

    /// Adds `other`'s counters, then keeps the `capacity` largest.
    pub fn merge(&mut self, other: &TopK, capacity: usize) {
        for &(id, count) in &other.entries {
            match self.entries.iter_mut().find(|e| e.0 == id) {
                Some(entry) => entry.1 = entry.1.saturating_add(count),
                None => self.entries.push((id, count)),
            }
        }
        let keep = capacity.max(1);
        if self.entries.len() > keep {
            // The `keep` largest (ties by id: a total order, so the same set a sort would
            // keep), without sorting the rest.
            self.entries.select_nth_unstable_by(keep - 1, largest_first);
            self.entries.truncate(keep);
        }
    }

    /// The counters, largest first (ties by id).
    pub fn ranked(&self) -> Vec<(u32, u32)> {
        let mut out = self.entries.clone();
        out.sort_unstable_by(largest_first);
        out
    }

    pub fn entries(&self) -> &[(u32, u32)] {
        &self.entries
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks a deserialised value: ids below `ids`, distinct, counts non-zero.
    pub fn validate(&self, ids: usize) -> Result<(), String> {
        for (i, &(id, count)) in self.entries.iter().enumerate() {
            if id as usize >= ids {
                return Err(format!("endpoint id {id} of {ids}"));
            }
            if count == 0 || self.entries[..i].iter().any(|e| e.0 == id) {
                return Err(format!("endpoint id {id}: zero or repeated counter"));
            }
        }
        Ok(())
    }

    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<(u32, u32)>()
    }
}

/// Larger counts first, ties by smaller id (by reference: a sort's comparator).
#[allow(clippy::trivially_copy_pass_by_ref)]
fn largest_first(a: &(u32, u32), b: &(u32, u32)) -> std::cmp::Ordering {
    b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_within_capacity_and_sum_preserved_beyond() {
        let mut t = TopK::with_capacity(3);
        for id in [1, 1, 2, 3, 1] {
            t.observe(id, 3);
        }
        assert_eq!(t.ranked(), vec![(1, 3), (2, 1), (3, 1)]);
        // A fourth id replaces the smallest counter (id 2, ties by position) with count 2.
        t.observe(4, 3);
        let total: u32 = t.entries().iter().map(|e| e.1).sum();
        assert_eq!(total, 6);
        assert_eq!(t.entries().len(), 3);
        assert!(t.entries().contains(&(4, 2)));
        assert!(t.entries().contains(&(1, 3)));
    }

    #[test]
    fn merge_sums_and_truncates() {
        let mut a = TopK::default();
        let mut b = TopK::default();
        for id in [1, 2, 2] {
            a.observe(id, 8);
        }
        for id in [2, 3, 3, 3] {
            b.observe(id, 8);
        }
        a.merge(&b, 2);
        assert_eq!(a.ranked(), vec![(2, 3), (3, 3)]);
    }

    #[test]
    fn merges_keep_what_a_full_sort_keeps() {
        // Many ties, so which counters survive depends on the tie order (by id).
        let mut rng = 0x243F_6A88_85A3_08D3u64;
        for round in 0..200 {
            let (cap, n) = (1 + round % 9, 1 + round % 23);
            let mut a = TopK::default();
            let mut b = TopK::default();
            for k in 0..n {
                let id = (crate::windows::tests::xorshift(&mut rng) % 40) as u32;
                if k % 2 == 0 {
                    a.observe(id, 64);
                } else {
                    b.observe(id, 64);
                }
            }
            let mut want: Vec<(u32, u32)> = a.entries().to_vec();
            for &(id, c) in b.entries() {
                match want.iter_mut().find(|e| e.0 == id) {
                    Some(e) => e.1 += c,
                    None => want.push((id, c)),
                }
            }
            want.sort_unstable_by(largest_first);
            want.truncate(cap);
            a.merge(&b, cap);
            assert_eq!(a.ranked(), want, "round {round}");
        }
    }
}
