//! A compact log-linear histogram for the hot path.
//!
//! Buckets have the same layout as an `HdrHistogram` with 2 significant digits (256 exact
//! sub-buckets below 256, then 128 sub-buckets per power of two: relative error below 1%), so
//! converting to [`hdrhistogram::Histogram`] for export loses nothing. Storage is sparse (only
//! buckets that were hit, sorted by index) because most entities see few distinct values per
//! window: an idle client costs a few bytes, not the kilobytes of a dense `HdrHistogram`.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Values above this are recorded as this (far beyond any latency in µs or size in bytes).
pub const MAX_VALUE: u64 = 1 << 62;
/// Significant digits of the equivalent `HdrHistogram`.
pub const SIGNIFICANT_DIGITS: u8 = 2;
/// Largest bucket index [`bucket_index`] returns.
pub const MAX_BUCKET_INDEX: u16 = bucket_index(MAX_VALUE);

/// The bucket of `value` (values above [`MAX_VALUE`] are clamped).
pub const fn bucket_index(value: u64) -> u16 {
    let v = if value > MAX_VALUE { MAX_VALUE } else { value };
    if v < 256 {
        v as u16
    } else {
        // floor(log2 v) >= 8; keep the top 8 bits as the mantissa.
        let shift = v.ilog2() - 7;
        let mantissa = v >> shift;
        ((shift as u64) * 128 + mantissa) as u16
    }
}

/// The lowest value that falls in bucket `index`.
pub const fn bucket_low(index: u16) -> u64 {
    let i = index as u64;
    if i < 256 {
        i
    } else {
        let shift = i / 128 - 1;
        (i - shift * 128) << shift
    }
}

/// Sparse counts per bucket, sorted by bucket index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHistogram {
    buckets: Vec<(u16, u32)>,
}

impl LogHistogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts an occurrence of `value`. Allocates only when a bucket is hit for the first
    /// time since the histogram's storage last grew.
    #[inline]
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    #[inline]
    pub fn record_n(&mut self, value: u64, n: u32) {
        let index = bucket_index(value);
        match self.buckets.binary_search_by_key(&index, |&(i, _)| i) {
            Ok(pos) => {
                let slot = &mut self.buckets[pos].1;
                *slot = slot.saturating_add(n);
            }
            Err(pos) => self.buckets.insert(pos, (index, n)),
        }
    }

    /// Total count (saturating).
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|&(_, c)| u64::from(c)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Distinct buckets hit.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Empties the histogram, keeping its storage for reuse.
    pub fn clear(&mut self) {
        self.buckets.clear();
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<(u16, u32)>()
    }

    /// Adds `other`'s counts (a sorted merge).
    pub fn merge(&mut self, other: &LogHistogram) {
        if other.buckets.is_empty() {
            return;
        }
        if self.buckets.is_empty() {
            self.buckets.extend_from_slice(&other.buckets);
            return;
        }
        if other.buckets.len() <= 16 {
            // Few buckets (the common case for a 1 s window): insert in place, reusing storage.
            for &(index, count) in &other.buckets {
                match self.buckets.binary_search_by_key(&index, |&(i, _)| i) {
                    Ok(pos) => {
                        let slot = &mut self.buckets[pos].1;
                        *slot = slot.saturating_add(count);
                    }
                    Err(pos) => self.buckets.insert(pos, (index, count)),
                }
            }
            return;
        }
        let mut merged = Vec::with_capacity(self.buckets.len() + other.buckets.len());
        let (mut a, mut b) = (
            self.buckets.iter().peekable(),
            other.buckets.iter().peekable(),
        );
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&(ia, ca)), Some(&&(ib, cb))) => match ia.cmp(&ib) {
                    std::cmp::Ordering::Equal => {
                        merged.push((ia, ca.saturating_add(cb)));
                        a.next();
                        b.next();
                    }
                    std::cmp::Ordering::Less => {
                        merged.push((ia, ca));
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        merged.push((ib, cb));
                        b.next();
                    }
                },
                (Some(&&x), None) => {
                    merged.push(x);
                    a.next();
                }
                (None, Some(&&y)) => {
                    merged.push(y);
                    b.next();
                }
                (None, None) => break,
            }
        }
        self.buckets = merged;
    }

    /// Checks the invariants of a deserialised histogram: indices sorted, unique, in range,
    /// counts non-zero.
    pub fn validate(&self) -> Result<(), String> {
        let mut previous: Option<u16> = None;
        for &(index, count) in &self.buckets {
            if index > MAX_BUCKET_INDEX {
                return Err(format!("bucket index {index} out of range"));
            }
            if previous.is_some_and(|p| p >= index) {
                return Err("bucket indices not strictly increasing".into());
            }
            if count == 0 {
                return Err(format!("bucket {index} has a zero count"));
            }
            previous = Some(index);
        }
        Ok(())
    }

    /// The equivalent `HdrHistogram` (2 significant digits, auto-resizing).
    pub fn to_hdr(&self) -> Histogram<u64> {
        // Sized for the largest value up front: one allocation, no resizing while recording.
        let high = self
            .buckets
            .last()
            .map_or(2, |&(i, _)| bucket_low(i).max(2));
        let mut h = Histogram::new_with_bounds(1, high, SIGNIFICANT_DIGITS).unwrap_or_else(|e| {
            tracing::warn!(error = %e, high, "histogram bounds rejected");
            new_hdr()
        });
        h.auto(true);
        for &(index, count) in &self.buckets {
            // Auto-resize is on and values are clamped to MAX_VALUE, so this cannot fail on
            // range; a failure would be an hdrhistogram bug, logged rather than panicking.
            if let Err(e) = h.record_n(bucket_low(index), u64::from(count)) {
                tracing::warn!(error = %e, "histogram export failed");
            }
        }
        h
    }
}

impl LogHistogram {
    /// The counts of an `HdrHistogram` (exact when it has 2 significant digits, otherwise
    /// each recorded value is re-bucketed here).
    pub fn from_hdr(h: &Histogram<u64>) -> Self {
        let mut out = LogHistogram::new();
        for v in h.iter_recorded() {
            let mut n = v.count_at_value();
            while n > 0 {
                let chunk = n.min(u64::from(u32::MAX));
                out.record_n(h.lowest_equivalent(v.value_iterated_to()), chunk as u32);
                n -= chunk;
            }
        }
        out
    }

    /// Smallest value recorded (bucket resolution), 0 when empty.
    pub fn min(&self) -> u64 {
        self.buckets.first().map_or(0, |&(i, _)| bucket_low(i))
    }

    /// Largest value recorded (bucket resolution), 0 when empty.
    pub fn max(&self) -> u64 {
        self.buckets.last().map_or(0, |&(i, _)| bucket_low(i))
    }

    /// The value at quantile `q` (0..=1, bucket resolution), 0 when empty.
    pub fn value_at_quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for &(i, c) in &self.buckets {
            seen += u64::from(c);
            if seen >= rank {
                return bucket_low(i);
            }
        }
        self.max()
    }
}

/// An empty export histogram: 2 significant digits, auto-resizing.
pub fn new_hdr() -> Histogram<u64> {
    let mut h = Histogram::new(SIGNIFICANT_DIGITS)
        .expect("2 significant digits is within hdrhistogram's 0..=5");
    h.auto(true);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_hdrhistogram_layout() {
        let mut hdr = new_hdr();
        for v in [
            0u64,
            1,
            255,
            256,
            257,
            511,
            512,
            1000,
            12_345,
            1 << 40,
            MAX_VALUE,
        ] {
            let low = bucket_low(bucket_index(v));
            assert!(low <= v, "{v}: low {low}");
            assert!(
                hdr.equivalent(low, v),
                "{v} and {low} must share an hdr bucket"
            );
            hdr.record(v).expect("record");
        }
        // Relative error under 1% everywhere.
        for v in (256..5_000_000u64).step_by(997) {
            let low = bucket_low(bucket_index(v));
            assert!((v - low) as f64 / v as f64 <= 1.0 / 128.0, "{v}");
        }
        assert_eq!(bucket_index(u64::MAX), MAX_BUCKET_INDEX);
    }

    #[test]
    fn record_merge_and_export() {
        let mut a = LogHistogram::new();
        let mut b = LogHistogram::new();
        for v in [5u64, 300, 300, 70_000] {
            a.record(v);
        }
        for v in [5u64, 1_000_000] {
            b.record(v);
        }
        a.merge(&b);
        assert_eq!(a.count(), 6);
        assert!(a.validate().is_ok());
        let hdr = a.to_hdr();
        assert_eq!(hdr.len(), 6);
        assert_eq!(hdr.count_at(5), 2);
        assert_eq!(hdr.count_at(300), 2);
        assert!(hdr.equivalent(hdr.max(), 1_000_000));
        a.clear();
        assert!(a.is_empty());
    }

    #[test]
    fn validate_rejects_unsorted() {
        let h: LogHistogram = serde_json::from_str(r#"{"buckets":[[5,1],[3,1]]}"#).expect("json");
        assert!(h.validate().is_err());
        let h: LogHistogram = serde_json::from_str(r#"{"buckets":[[3,0]]}"#).expect("json");
        assert!(h.validate().is_err());
    }
}

#[cfg(test)]
mod hdr_tests {
    use super::*;

    #[test]
    fn hdr_round_trip_and_quantiles() {
        let mut h = LogHistogram::new();
        let mut hdr = new_hdr();
        for v in (1..20_000u64).map(|i| i * i % 1_000_003) {
            h.record(v);
            hdr.record(v).expect("record");
        }
        let exported = h.to_hdr();
        assert_eq!(exported.len(), hdr.len());
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            assert!(
                hdr.equivalent(h.value_at_quantile(q), hdr.value_at_quantile(q)),
                "q={q}: {} vs {}",
                h.value_at_quantile(q),
                hdr.value_at_quantile(q)
            );
        }
        assert_eq!(LogHistogram::from_hdr(&exported), h);
        assert_eq!(LogHistogram::from_hdr(&hdr), h);
        // A histogram of another precision is re-bucketed, counts kept.
        let mut fine = Histogram::<u64>::new(3).expect("hdr");
        fine.auto(true);
        fine.record_n(123_456, 7).expect("record");
        let coarse = LogHistogram::from_hdr(&fine);
        assert_eq!(coarse.count(), 7);
        assert!(coarse.max().abs_diff(123_456) < 123_456 / 100);
    }
}
