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

/// Values recorded but not yet folded into the sorted buckets, at most.
const PENDING_MAX: usize = 256;

/// The highest value that falls in bucket `index`.
pub const fn bucket_high(index: u16) -> u64 {
    bucket_low(index + 1) - 1
}

/// Sparse counts per bucket, sorted by bucket index, plus a short buffer of recently
/// recorded bucket indices.
///
/// Recording appends the bucket index to the buffer (no search, no shifting of a sorted
/// vector); every [`PENDING_MAX`] records, and whenever the histogram is read or closed,
/// the buffer is sorted and folded into the buckets. Every method sees both, so the buffer is
/// invisible from outside: equality, serialisation and reads are those of the folded form.
#[derive(Clone, Debug, Default)]
pub struct LogHistogram {
    buckets: Vec<(u16, u32)>,
    pending: Vec<u16>,
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

    /// Counts `n` occurrences of `value` (straight into the sorted buckets).
    #[inline]
    pub fn record_n(&mut self, value: u64, n: u32) {
        insert_count(&mut self.buckets, bucket_index(value), n);
    }

    /// Folds the recorded-but-pending values into the sorted buckets (a sort of at most
    /// [`PENDING_MAX`] indices and one linear merge).
    pub fn fold(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        fold_into(&mut self.buckets, &mut self.pending);
        self.pending.clear();
    }

    /// The sorted buckets with the pending values folded in (borrowed when nothing is
    /// pending).
    fn folded_buckets(&self) -> std::borrow::Cow<'_, [(u16, u32)]> {
        if self.pending.is_empty() {
            std::borrow::Cow::Borrowed(&self.buckets)
        } else {
            let mut buckets = self.buckets.clone();
            fold_into(&mut buckets, &mut self.pending.clone());
            std::borrow::Cow::Owned(buckets)
        }
    }

    /// Total count (saturating).
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|&(_, c)| u64::from(c)).sum::<u64>() + self.pending.len() as u64
    }

    /// Total count, as `HdrHistogram::len` names it.
    pub fn len(&self) -> u64 {
        self.count()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.pending.is_empty()
    }

    /// Distinct buckets hit.
    pub fn bucket_count(&self) -> usize {
        self.folded_buckets().len()
    }

    /// Empties the histogram, keeping its storage for reuse.
    pub fn clear(&mut self) {
        self.buckets.clear();
        self.pending.clear();
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<(u16, u32)>()
            + self.pending.capacity() * std::mem::size_of::<u16>()
    }

    /// Adds `other`'s counts (a sorted merge).
    pub fn merge(&mut self, other: &LogHistogram) {
        self.fold();
        let theirs = other.folded_buckets();
        merge_into(&mut self.buckets, &theirs);
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
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        let buckets = self.folded_buckets();
        for &(i, c) in buckets.iter() {
            seen += u64::from(c);
            if seen >= rank {
                return bucket_high(i);
            }
        }
        buckets.last().map_or(0, |&(i, _)| bucket_high(i))
    }
}

/// Adds `count` to bucket `index` of a sorted bucket list.
#[inline]
fn insert_count(buckets: &mut Vec<(u16, u32)>, index: u16, count: u32) {
    match buckets.binary_search_by_key(&index, |&(i, _)| i) {
        Ok(pos) => {
            let slot = &mut buckets[pos].1;
            *slot = slot.saturating_add(count);
        }
        Err(pos) => buckets.insert(pos, (index, count)),
    }
}

/// Below this many indices a comparison sort is cheaper than the counting passes.
const SMALL_SORT: usize = 32;

/// Sorts at most [`PENDING_MAX`] bucket indices: two counting passes of a byte each, on the
/// stack (a comparison sort costs several times more for the few hundred indices here); a
/// pass whose byte is the same for every index is skipped.
fn radix_sort(v: &mut [u16]) {
    debug_assert!(v.len() <= PENDING_MAX);
    if v.len() <= SMALL_SORT {
        // A window that saw a handful of values (most client windows): the passes' fixed
        // cost (two 256-entry count tables) would dwarf the sort.
        v.sort_unstable();
        return;
    }
    let mut scratch = [0u16; PENDING_MAX];
    let Some(tmp) = scratch.get_mut(..v.len()) else {
        v.sort_unstable();
        return;
    };
    for shift in [0u32, 8] {
        let digit = |x: u16| usize::from((x >> shift) & 0xff);
        let mut offsets = [0usize; 256];
        for &x in v.iter() {
            offsets[digit(x)] += 1;
        }
        if v.first().is_some_and(|&x| offsets[digit(x)] == v.len()) {
            continue;
        }
        let mut sum = 0;
        for o in &mut offsets {
            let n = *o;
            *o = sum;
            sum += n;
        }
        for &x in v.iter() {
            let d = digit(x);
            tmp[offsets[d]] = x;
            offsets[d] += 1;
        }
        v.copy_from_slice(tmp);
    }
}

/// Widest index range [`count_runs`] counts over (4 KiB of counters on the stack).
const COUNT_SPAN: usize = 2048;

/// Sorts `pending` bucket indices and adds them into the sorted `buckets`.
///
/// A busy window's indices usually fall in a range of a few hundred to a thousand buckets:
/// counting over that range gives the sorted runs in one pass, several times cheaper than
/// the two radix passes plus a run scan. Few indices over a wide range are sorted instead.
fn fold_into(buckets: &mut Vec<(u16, u32)>, pending: &mut [u16]) {
    let mut runs = [(0u16, 0u32); PENDING_MAX];
    for chunk in pending.chunks_mut(PENDING_MAX) {
        let (lo, hi) = chunk
            .iter()
            .fold((u16::MAX, 0), |(lo, hi), &i| (lo.min(i), hi.max(i)));
        let span = usize::from(hi.saturating_sub(lo)) + 1;
        let n = if chunk.len() > SMALL_SORT && span <= COUNT_SPAN && span <= 16 * chunk.len() {
            count_runs(chunk, lo, span, &mut runs)
        } else {
            radix_sort(chunk);
            runs_of(chunk, &mut runs)
        };
        if buckets.is_empty() {
            buckets.extend_from_slice(&runs[..n]);
        } else {
            merge_into(buckets, &runs[..n]);
        }
    }
}

/// The sorted `(index, count)` runs of at most [`PENDING_MAX`] indices, all in
/// `lo..lo + span` with `span` ≤ [`COUNT_SPAN`], by counting; returns how many.
fn count_runs(indices: &[u16], lo: u16, span: usize, out: &mut [(u16, u32); PENDING_MAX]) -> usize {
    debug_assert!(indices.len() <= PENDING_MAX && span <= COUNT_SPAN);
    let mut counts = [0u16; COUNT_SPAN];
    for &index in indices {
        if let Some(c) = counts.get_mut(usize::from(index.wrapping_sub(lo))) {
            *c += 1;
        }
    }
    let mut n = 0;
    // Four counters per test: most of a range is empty buckets.
    for (quad, chunk) in counts[..span.next_multiple_of(4).min(COUNT_SPAN)]
        .as_chunks::<4>()
        .0
        .iter()
        .enumerate()
    {
        if *chunk == [0; 4] {
            continue;
        }
        for (k, &count) in chunk.iter().enumerate() {
            if count != 0
                && let Some(slot) = out.get_mut(n)
            {
                *slot = (lo + (4 * quad + k) as u16, u32::from(count));
                n += 1;
            }
        }
    }
    n
}

/// Equal indices of a sorted list as `(index, count)` runs, into `out`; returns how many.
fn runs_of(sorted: &[u16], out: &mut [(u16, u32); PENDING_MAX]) -> usize {
    let mut n = 0;
    for &index in sorted.iter().take(PENDING_MAX) {
        if n > 0 && out[n - 1].0 == index {
            out[n - 1].1 += 1;
        } else {
            out[n] = (index, 1);
            n += 1;
        }
    }
    n
}

/// Merges sorted `theirs` into sorted `buckets` in place, counts of equal indices added:
/// from the back into the grown vector (no allocation beyond its growth), then the gap left
/// by equal indices is closed.
fn merge_into(buckets: &mut Vec<(u16, u32)>, theirs: &[(u16, u32)]) {
    let n = buckets.len();
    buckets.resize(n + theirs.len(), (0, 0));
    let (mut i, mut j, mut k) = (n, theirs.len(), n + theirs.len());
    // Invariant: k - i = j + (equal indices merged so far) ≥ j, so writing at k - 1 never
    // overwrites an unread bucket.
    while j > 0 {
        let (index, count) = theirs[j - 1];
        let mine = if i > 0 { Some(buckets[i - 1]) } else { None };
        buckets[k - 1] = match mine {
            Some((mi, mc)) if mi > index => {
                i -= 1;
                (mi, mc)
            }
            Some((mi, mc)) if mi == index => {
                i -= 1;
                j -= 1;
                (mi, mc.saturating_add(count))
            }
            _ => {
                j -= 1;
                (index, count)
            }
        };
        k -= 1;
    }
    if k > i {
        buckets.drain(i..k);
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
    fn in_place_merge_matches_a_map() {
        let mut x = 0x1234_5678_9ABC_DEF1u64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for (n, m, spread) in [
            (0, 0, 10),
            (0, 5, 10),
            (5, 0, 10),
            (3, 17, 40),
            (200, 100, 300),
            (50, 50, 60),
            (1, 300, 2000),
            (800, 200, 1200),
            (40, 40, 2048),
            (300, 300, 7169),
        ] {
            let mut want = std::collections::BTreeMap::<u16, u32>::new();
            let mut list = |len: usize, want: &mut std::collections::BTreeMap<u16, u32>| {
                let mut l = std::collections::BTreeMap::<u16, u32>::new();
                for _ in 0..len {
                    let (i, c) = (next(spread) as u16, 1 + next(9) as u32);
                    *l.entry(i).or_default() += c;
                    *want.entry(i).or_default() += c;
                }
                l.into_iter().collect::<Vec<_>>()
            };
            let mut mine = list(n, &mut want);
            let theirs = list(m, &mut want);
            merge_into(&mut mine, &theirs);
            let want = want.into_iter().collect::<Vec<_>>();
            assert_eq!(mine, want, "{n} + {m} over {spread}");
        }
    }

    #[test]
    fn folds_by_counting_and_by_sorting_match_a_map() {
        let mut x = 0x3C6E_F372_FE94_F82Bu64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        // (pending values, index range): narrow ranges are counted, wide or sparse ones
        // sorted; more than one buffer's worth is folded a buffer at a time.
        for (len, lo, range, existing) in [
            (0usize, 0u16, 1u16, 0usize),
            (33, 0, 1, 0),
            (256, 300, 1, 10),
            (256, 200, 1200, 0),
            (256, 200, 1200, 300),
            (256, 0, 2048, 5),
            (256, 0, 2049, 5),
            (40, 100, 2000, 0),
            (700, 7000, 168, 50),
            (31, 5, 3, 0),
        ] {
            let mut want = std::collections::BTreeMap::<u16, u32>::new();
            let mut buckets: Vec<(u16, u32)> = Vec::new();
            for _ in 0..existing {
                let i = next(u64::from(MAX_BUCKET_INDEX) + 1) as u16;
                *want.entry(i).or_default() += 3;
            }
            buckets.extend(want.iter().map(|(&i, &c)| (i, c)));
            let mut pending: Vec<u16> = (0..len)
                .map(|k| {
                    // Both ends of the range always occur, so the span is exactly `range`.
                    let i = match k {
                        0 => lo,
                        1 => lo + range - 1,
                        _ => lo + next(u64::from(range)) as u16,
                    };
                    *want.entry(i).or_default() += 1;
                    i
                })
                .collect();
            fold_into(&mut buckets, &mut pending);
            assert_eq!(
                buckets,
                want.into_iter().collect::<Vec<_>>(),
                "{len} over {lo}+{range}, {existing} existing"
            );
        }
    }

    #[test]
    fn radix_sort_sorts() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for len in [
            0usize,
            1,
            2,
            7,
            SMALL_SORT,
            SMALL_SORT + 1,
            100,
            PENDING_MAX,
        ] {
            for spread in [1u64, 200, 7000, 65_536] {
                let mut v: Vec<u16> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x % spread) as u16
                    })
                    .collect();
                let mut want = v.clone();
                want.sort_unstable();
                radix_sort(&mut v);
                assert_eq!(v, want, "len {len} spread {spread}");
            }
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
