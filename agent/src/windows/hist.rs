//! A compact log-linear histogram for the hot path.
//!
//! Buckets have the same layout as an `HdrHistogram` with 2 significant digits (256 exact
//! sub-buckets below 256, then 128 sub-buckets per power of two: relative error below 1%), so
//! converting to [`hdrhistogram::Histogram`] for export loses nothing. Storage is sparse (only
//! buckets that were hit, sorted by index) because most entities see few distinct values per
//! window: an idle client costs a few bytes, not the kilobytes of a dense `HdrHistogram`.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

#[path = "hist_fold.rs"]
mod fold;

use fold::{ABSORBED_MAX, add_lists, fold_into, insert_count, merge_into};

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

/// Values recorded but not yet folded into the sorted buckets, at most.
const PENDING_MAX: usize = 256;

/// [`LogHistogram::absorb`] merges at once while the two lists hold at most this many
/// buckets together (and none are waiting to be added).
const SMALL_MERGE: usize = 32;

/// The highest value that falls in bucket `index`.
pub const fn bucket_high(index: u16) -> u64 {
    bucket_low(index + 1) - 1
}

/// Sparse counts per bucket, sorted by bucket index, plus a short buffer of recently
/// recorded bucket indices and the bucket lists of absorbed roll-ups.
///
/// Recording appends the bucket index to the buffer (no search, no shifting of a sorted
/// vector); every [`PENDING_MAX`] records and at [`LogHistogram::fold`] the buffer is sorted
/// and folded into the buckets, and absorbed lists are added in. A read while values are
/// pending or lists absorbed folds a copy (the histogram itself is unchanged), so the
/// buffers are invisible from outside: equality, serialisation and reads are those of the
/// folded form.
#[derive(Clone, Debug, Default)]
pub struct LogHistogram {
    buckets: Vec<(u16, u32)>,
    pending: Vec<u16>,
    /// Sorted bucket lists of roll-ups ([`LogHistogram::absorb`]) not yet added to
    /// `buckets`, one after another: a 10 s window takes ten 1 s lists and adds them up once.
    absorbed: Vec<(u16, u32)>,
}

/// The serialised form: the folded buckets only.
#[derive(Serialize, Deserialize)]
struct LogHistogramForm {
    buckets: Vec<(u16, u32)>,
}

impl Serialize for LogHistogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let buckets = self.folded_buckets();
        LogHistogramForm {
            buckets: buckets.into_owned(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for LogHistogram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let form = LogHistogramForm::deserialize(d)?;
        Ok(Self {
            buckets: form.buckets,
            pending: Vec::new(),
            absorbed: Vec::new(),
        })
    }
}

impl PartialEq for LogHistogram {
    fn eq(&self, other: &Self) -> bool {
        self.folded_buckets() == other.folded_buckets()
    }
}

impl Eq for LogHistogram {}

impl LogHistogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts an occurrence of `value`: an append, folded in every [`PENDING_MAX`] records.
    #[inline]
    pub fn record(&mut self, value: u64) {
        if self.pending.len() >= PENDING_MAX {
            self.fold();
        }
        self.pending.push(bucket_index(value));
    }

    /// Counts `n` occurrences of `value` (straight into the sorted buckets; none when `n`
    /// is 0, so no bucket holds a zero count).
    #[inline]
    pub fn record_n(&mut self, value: u64, n: u32) {
        if n > 0 {
            insert_count(&mut self.buckets, bucket_index(value), n);
        }
    }

    /// Folds the recorded-but-pending values into the sorted buckets (a count or sort of at
    /// most [`PENDING_MAX`] indices and one linear merge) and adds the absorbed lists in
    /// (see [`Self::absorb`]).
    #[inline]
    pub fn fold(&mut self) {
        // Most folds find nothing to do (a window's histogram that saw no value, or one
        // already folded): that check is inlined, the work is not.
        if !self.pending.is_empty() || !self.absorbed.is_empty() {
            self.fold_pending();
        }
    }

    #[inline(never)]
    fn fold_pending(&mut self) {
        if !self.pending.is_empty() {
            fold_into(&mut self.buckets, &mut self.pending);
            self.pending.clear();
        }
        if !self.absorbed.is_empty() {
            add_lists(&mut self.buckets, &mut self.absorbed);
            self.absorbed.clear();
        }
    }

    /// The sorted buckets with the pending values and absorbed lists folded in (borrowed
    /// when nothing is pending).
    #[inline]
    fn folded_buckets(&self) -> std::borrow::Cow<'_, [(u16, u32)]> {
        if self.pending.is_empty() && self.absorbed.is_empty() {
            std::borrow::Cow::Borrowed(&self.buckets)
        } else {
            let mut folded = self.clone();
            folded.fold();
            std::borrow::Cow::Owned(folded.buckets)
        }
    }

    /// Total count, of the folded form: each bucket's count saturates at `u32::MAX`, so
    /// pending values or absorbed lists that would pass it are not counted twice.
    pub fn count(&self) -> u64 {
        total(&self.folded_buckets())
    }

    /// Total count, as `HdrHistogram::len` names it.
    pub fn len(&self) -> u64 {
        self.count()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.pending.is_empty() && self.absorbed.is_empty()
    }

    /// Distinct buckets hit.
    pub fn bucket_count(&self) -> usize {
        self.folded_buckets().len()
    }

    /// Empties the histogram, keeping its storage for reuse.
    pub fn clear(&mut self) {
        self.buckets.clear();
        self.pending.clear();
        self.absorbed.clear();
        // A busy minute's lists can grow it several times past the buckets; the next
        // window starts from the bound's worth.
        self.absorbed.shrink_to(ABSORBED_MAX);
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        (self.buckets.capacity() + self.absorbed.capacity()) * std::mem::size_of::<(u16, u32)>()
            + self.pending.capacity() * std::mem::size_of::<u16>()
    }

    /// Adds `other`'s counts (a sorted merge).
    pub fn merge(&mut self, other: &LogHistogram) {
        self.fold();
        let theirs = other.folded_buckets();
        merge_into(&mut self.buckets, &theirs);
    }

    /// Adds `other`'s counts later: its sorted buckets are appended, and added up with the
    /// others at the next [`Self::fold`] (a read before that folds a copy). For roll-ups,
    /// where a longer window takes many shorter ones and is folded when it closes: each
    /// fold writes the buckets once instead of once per merge. The appended lists are
    /// bounded: they are added in once they hold more than both [`ABSORBED_MAX`] entries
    /// and twice the buckets. Short lists are merged at once (see [`SMALL_MERGE`]).
    pub fn absorb(&mut self, other: &LogHistogram) {
        let theirs = other.folded_buckets();
        if theirs.is_empty() {
            return;
        }
        if self.absorbed.is_empty() {
            if self.buckets.is_empty() {
                self.buckets.extend_from_slice(&theirs);
                return;
            }
            if self.buckets.len() + theirs.len() <= SMALL_MERGE {
                // A quiet window's short lists: merged now for less than sorting them later.
                merge_into(&mut self.buckets, &theirs);
                return;
            }
        }
        self.absorbed.extend_from_slice(&theirs);
        if self.absorbed.len() > ABSORBED_MAX.max(2 * self.buckets.len()) {
            add_lists(&mut self.buckets, &mut self.absorbed);
            self.absorbed.clear();
        }
    }

    /// Checks the invariants of a deserialised histogram: indices sorted, unique, in range,
    /// counts non-zero.
    pub fn validate(&self) -> Result<(), String> {
        let mut previous: Option<u16> = None;
        for &(index, count) in self.folded_buckets().iter() {
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
        let buckets = self.folded_buckets();
        let high = buckets.last().map_or(2, |&(i, _)| bucket_low(i).max(2));
        let mut h = Histogram::new_with_bounds(1, high, SIGNIFICANT_DIGITS).unwrap_or_else(|e| {
            tracing::warn!(error = %e, high, "histogram bounds rejected");
            new_hdr()
        });
        h.auto(true);
        for &(index, count) in buckets.iter() {
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
            // Bucket counts saturate at u32::MAX: one call, whatever the count.
            let n = u32::try_from(v.count_at_value()).unwrap_or(u32::MAX);
            out.record_n(h.lowest_equivalent(v.value_iterated_to()), n);
        }
        out
    }

    /// The folded `(bucket index, count)` list, ascending (see [`bucket_low`] and
    /// [`bucket_high`] for a bucket's range).
    pub fn buckets(&self) -> Vec<(u16, u32)> {
        self.folded_buckets().into_owned()
    }

    /// Smallest value recorded (bucket resolution), 0 when empty.
    pub fn min(&self) -> u64 {
        self.folded_buckets()
            .first()
            .map_or(0, |&(i, _)| bucket_low(i))
    }

    /// Largest value recorded (bucket resolution), 0 when empty.
    pub fn max(&self) -> u64 {
        self.folded_buckets()
            .last()
            .map_or(0, |&(i, _)| bucket_low(i))
    }

    /// The value at quantile `q` (0..=1, the highest value of its bucket, as
    /// `HdrHistogram::value_at_quantile` reports it), 0 when empty.
    pub fn value_at_quantile(&self, q: f64) -> u64 {
        let buckets = self.folded_buckets();
        let total = total(&buckets);
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for &(i, c) in buckets.iter() {
            seen += u64::from(c);
            if seen >= rank {
                return bucket_high(i);
            }
        }
        buckets.last().map_or(0, |&(i, _)| bucket_high(i))
    }
}

/// Sum of a bucket list's counts.
fn total(buckets: &[(u16, u32)]) -> u64 {
    buckets.iter().map(|&(_, c)| u64::from(c)).sum()
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
        for i in [0u16, 1, 255, 256, 300, 383, 384, MAX_BUCKET_INDEX] {
            assert_eq!(bucket_index(bucket_high(i)), i, "high of {i}");
            if i < MAX_BUCKET_INDEX {
                // (Values past the last bucket clamp into it.)
                assert_eq!(bucket_index(bucket_high(i) + 1), i + 1, "past {i}");
            }
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
    fn pending_records_are_invisible() {
        // The same values through the append buffer and straight into sorted buckets.
        let mut appended = LogHistogram::new();
        let mut direct = LogHistogram::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..(3 * PENDING_MAX as u64 + 17) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = if i % 3 == 0 { x % 300 } else { x % 100_000 };
            appended.record(v);
            direct.record_n(v, 1);
            if i % 97 == 0 {
                // Every read agrees at every fill level of the buffer.
                assert_eq!(appended, direct);
                assert_eq!(appended.count(), direct.count());
                assert_eq!(appended.max(), direct.max());
                assert_eq!(appended.min(), direct.min());
                assert_eq!(
                    appended.value_at_quantile(0.9),
                    direct.value_at_quantile(0.9)
                );
                assert_eq!(appended.bucket_count(), direct.bucket_count());
            }
        }
        assert!(
            !appended.pending.is_empty(),
            "the test must end with values pending"
        );
        assert!(appended.pending.len() <= PENDING_MAX);
        let json = serde_json::to_string(&appended).expect("json");
        assert_eq!(json, serde_json::to_string(&direct).expect("json"));
        let back: LogHistogram = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, direct);
        assert!(appended.validate().is_ok());
        assert_eq!(appended.to_hdr(), direct.to_hdr());
        // Merging a histogram with values pending counts them.
        let mut merged = LogHistogram::new();
        merged.record(5);
        merged.merge(&appended);
        assert_eq!(merged.count(), direct.count() + 1);
        appended.fold();
        assert!(appended.pending.is_empty());
        assert_eq!(appended.buckets, direct.buckets);
    }

    #[test]
    fn absorbed_counts_saturate_like_eager_merges() {
        let mut lazy = LogHistogram::new();
        lazy.record_n(5, u32::MAX);
        lazy.record_n(9, 1);
        let mut eager = lazy.clone();
        let mut big = LogHistogram::new();
        big.record_n(5, u32::MAX);
        // Enough other buckets that the list is absorbed, not merged at once.
        let others = SMALL_MERGE as u64;
        for k in 0..others {
            big.record_n(1_000 + 1_000 * k, 1);
        }
        lazy.absorb(&big);
        eager.merge(&big);
        assert!(
            !lazy.absorbed.is_empty(),
            "the test must read with lists absorbed"
        );
        assert_eq!(lazy.count(), u64::from(u32::MAX) + 1 + others);
        assert_eq!(lazy.count(), eager.count());
        assert_eq!(
            lazy.value_at_quantile(0.999_999_9),
            eager.value_at_quantile(0.999_999_9)
        );
        // A zero count is no occurrence: no bucket for it.
        lazy.record_n(3, 0);
        assert_eq!(lazy.min(), 5);
        assert_eq!(lazy, eager);
    }

    #[test]
    fn absorbed_lists_read_and_fold_like_eager_merges() {
        let mut x = 0x6A09_E667_F3BC_C908u64;
        let mut next = |m: u64| crate::windows::tests::xorshift(&mut x) % m;
        // (windows absorbed, values per window, value range): a narrow range adds up in
        // dense counters, a wide one by sorting; enough windows pass the absorbed bound; a
        // few values per window are merged at once until the buckets outgrow that.
        for (windows, per_window, range) in [
            (10usize, 300usize, 100_000u64),
            (20, 3, 5_000),
            (60, 250, 100_000),
            (10, 40, 1 << 40),
            (3, 1, 10),
            (12, 0, 10),
        ] {
            let mut lazy = LogHistogram::new();
            let mut eager = LogHistogram::new();
            for w in 0..windows {
                let mut one = LogHistogram::new();
                for _ in 0..per_window {
                    one.record(next(range));
                }
                one.fold();
                lazy.absorb(&one);
                eager.merge(&one);
                if w % 4 == 1 {
                    // Reads see the absorbed lists without folding them.
                    assert_eq!(lazy, eager);
                    assert_eq!(lazy.count(), eager.count());
                    assert_eq!(lazy.value_at_quantile(0.99), eager.value_at_quantile(0.99));
                    assert_eq!(lazy.max(), eager.max());
                }
            }
            assert!(
                lazy.absorbed.len() <= ABSORBED_MAX.max(2 * lazy.buckets.len()) + 2 * per_window
            );
            assert_eq!(
                serde_json::to_string(&lazy).expect("json"),
                serde_json::to_string(&eager).expect("json")
            );
            lazy.fold();
            assert!(lazy.absorbed.is_empty());
            assert_eq!(
                lazy.buckets, eager.buckets,
                "{windows} x {per_window} over {range}"
            );
            assert!(lazy.validate().is_ok());
        }
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
