//! Space-saving counters of a template's parameter values (Metwally et al.): exact counts
//! while there is room; when full, a new value takes over the smallest counter and inherits
//! its count as its error bound.
//!
//! Every request of a template with `{id}` comes here, and with high-cardinality ids nearly
//! every one is a new value, so a takeover must be cheap: counts in a flat array (the
//! minimum is a scan of 64 words), values in strings reused in place (no allocation once the
//! table is full), an index of value hashes.

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use shadowtap_core::profile::{ParamPopularity, ParamValue, fit_zipf};

use super::profile::{PARAM_COUNTERS, PARAM_TOP};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "ParamCounterForm", into = "ParamCounterForm")]
pub(super) struct ParamCounter {
    values: Vec<String>,
    counts: Vec<u64>,
    errors: Vec<u64>,
    hashes: Vec<u64>,
    /// Slot of each value, by the value's hash.
    index: HashTable<u32>,
    observed: u64,
    /// Distinct values inserted (exact until the first takeover, an upper bound after).
    inserted: u64,
    /// Counters; `0` means the default [`PARAM_COUNTERS`].
    capacity: usize,
}

/// The serialised form: values with their counts and error bounds (the index is rebuilt).
#[derive(Clone, Serialize, Deserialize)]
struct ParamCounterForm {
    values: Vec<(String, u64, u64)>,
    observed: u64,
    inserted: u64,
    /// Absent in snapshots of older versions: the default.
    #[serde(default)]
    capacity: usize,
}

impl From<ParamCounterForm> for ParamCounter {
    fn from(form: ParamCounterForm) -> Self {
        let mut c = Self {
            observed: form.observed,
            inserted: form.inserted,
            capacity: form.capacity,
            ..Self::default()
        };
        let capacity = c.capacity();
        for (value, count, error) in form.values.into_iter().take(capacity) {
            if c.find(&value, hash(&value)).is_none() {
                c.push(value, count, error);
            }
        }
        c
    }
}

impl From<ParamCounter> for ParamCounterForm {
    fn from(c: ParamCounter) -> Self {
        Self {
            values: c
                .values
                .into_iter()
                .zip(c.counts)
                .zip(c.errors)
                .map(|((v, n), e)| (v, n, e))
                .collect(),
            observed: c.observed,
            inserted: c.inserted,
            capacity: c.capacity,
        }
    }
}

impl PartialEq for ParamCounter {
    fn eq(&self, other: &Self) -> bool {
        self.observed == other.observed
            && self.inserted == other.inserted
            && self.sorted() == other.sorted()
    }
}

impl Eq for ParamCounter {}

fn hash(value: &str) -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    h.write(value.as_bytes());
    h.finish()
}

impl ParamCounter {
    /// Counters for a profile that lists `top` values (twice as many counters).
    pub(super) fn listing(top: usize) -> Self {
        Self {
            capacity: if top == PARAM_TOP { 0 } else { top.max(1) * 2 },
            ..Self::default()
        }
    }

    fn capacity(&self) -> usize {
        if self.capacity == 0 {
            PARAM_COUNTERS
        } else {
            self.capacity
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.values.len()
    }

    fn find(&self, value: &str, h: u64) -> Option<usize> {
        let values = &self.values;
        self.index
            .find(h, |&i| values[i as usize] == value)
            .map(|&i| i as usize)
    }

    fn push(&mut self, value: String, count: u64, error: u64) {
        let h = hash(&value);
        let slot = self.values.len() as u32;
        self.values.push(value);
        self.counts.push(count);
        self.errors.push(error);
        self.hashes.push(h);
        let hashes = &self.hashes;
        self.index.insert_unique(h, slot, |&i| hashes[i as usize]);
    }

    pub(super) fn count(&mut self, value: &str) {
        self.observed += 1;
        let h = hash(value);
        if let Some(i) = self.find(value, h) {
            self.counts[i] += 1;
            return;
        }
        self.inserted += 1;
        if self.values.len() < self.capacity() {
            self.push(value.to_owned(), 1, 0);
            return;
        }
        let Some((victim, &min)) = self.counts.iter().enumerate().min_by_key(|(_, c)| **c) else {
            return;
        };
        let old = self.hashes[victim];
        if let Ok(entry) = self.index.find_entry(old, |&i| i as usize == victim) {
            entry.remove();
        }
        let slot = &mut self.values[victim];
        slot.clear();
        slot.push_str(value);
        self.counts[victim] = min + 1;
        self.errors[victim] = min;
        self.hashes[victim] = h;
        let hashes = &self.hashes;
        self.index
            .insert_unique(h, victim as u32, |&i| hashes[i as usize]);
    }

    /// (value, count, error) by count, most first (ties by value).
    fn sorted(&self) -> Vec<(&str, u64, u64)> {
        let mut ranked: Vec<(&str, u64, u64)> = self
            .values
            .iter()
            .zip(&self.counts)
            .zip(&self.errors)
            .map(|((v, &n), &e)| (v.as_str(), n, e))
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        ranked
    }

    pub(super) fn popularity(&self) -> ParamPopularity {
        let ranked = self.sorted();
        let counts: Vec<u64> = ranked.iter().map(|r| r.1).collect();
        let top: Vec<ParamValue> = ranked
            .iter()
            .take(self.capacity() / 2)
            .map(|&(v, n, _)| ParamValue {
                value: v.to_owned(),
                count: n,
            })
            .collect();
        let listed: u64 = top.iter().map(|v| v.count).sum();
        ParamPopularity {
            observed: self.observed,
            distinct_estimate: self.inserted,
            tail_requests: self.observed.saturating_sub(listed),
            zipf: fit_zipf(&counts),
            top,
        }
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.values.iter().map(String::capacity).sum::<usize>()
            + self.values.capacity() * std::mem::size_of::<String>()
            + (self.counts.capacity() + self.errors.capacity() + self.hashes.capacity()) * 8
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--profile-values 100`: 200 counters, 100 listed values, and the setting survives a
    /// snapshot round trip.
    #[test]
    fn a_larger_listing_names_more_values_exactly() {
        let mut c = ParamCounter::listing(100);
        // 150 values, value k asked for 300 - k times: all fit in 200 counters, counts exact.
        for k in 0..150u64 {
            for _ in 0..300 - k {
                c.count(&k.to_string());
            }
        }
        let p = c.popularity();
        assert_eq!(p.top.len(), 100);
        assert_eq!(p.top[99].value, "99");
        assert_eq!(p.top[99].count, 201);
        let json = serde_json::to_string(&c).expect("json");
        let back: ParamCounter = serde_json::from_str(&json).expect("back");
        assert_eq!(back.popularity().top.len(), 100);
        assert_eq!(ParamCounter::default().popularity().top.len(), 0);
        // The default listing is the default table.
        assert_eq!(ParamCounter::listing(PARAM_TOP).capacity(), PARAM_COUNTERS);
    }

    #[test]
    fn space_saving_keeps_heavy_hitters_and_bounds_memory() {
        let mut c = ParamCounter::default();
        // A Zipf-ish stream: value k asked for 1000/k times, plus many one-off values.
        for k in 1..=20u64 {
            for _ in 0..1000 / k {
                c.count(&k.to_string());
            }
        }
        for k in 0..500u64 {
            c.count(&format!("rare{k}"));
        }
        assert!(c.len() <= PARAM_COUNTERS);
        let p = c.popularity();
        assert_eq!(p.observed, (1..=20u64).map(|k| 1000 / k).sum::<u64>() + 500);
        assert_eq!(
            p.top[0],
            ParamValue {
                value: "1".into(),
                count: 1000
            }
        );
        assert_eq!(
            p.top[1],
            ParamValue {
                value: "2".into(),
                count: 500
            }
        );
        assert_eq!(p.distinct_estimate, 520);
        assert_eq!(
            p.tail_requests,
            p.observed - p.top.iter().map(|v| v.count).sum::<u64>()
        );
        let s = p.zipf.expect("fit").s;
        assert!(s > 0.3, "{s}");
    }

    #[test]
    fn snapshots_round_trip() {
        let mut c = ParamCounter::default();
        for k in 0..200u64 {
            c.count(&(k % 70).to_string());
        }
        let json = serde_json::to_string(&c).expect("encode");
        let back: ParamCounter = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, c);
        assert_eq!(back.popularity(), c.popularity());
        // The rebuilt index finds the values again.
        let mut a = back;
        let mut b = c;
        a.count("5");
        b.count("5");
        assert_eq!(a, b);
    }
}
