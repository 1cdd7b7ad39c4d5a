//! Folding and merging the sorted `(bucket index, count)` lists of [`super::LogHistogram`]:
//! sorting recorded indices, counting them into runs, merging lists in place, and adding up
//! many lists at once.

use super::PENDING_MAX;

/// Adds `count` to bucket `index` of a sorted bucket list.
#[inline]
pub(super) fn insert_count(buckets: &mut Vec<(u16, u32)>, index: u16, count: u32) {
    match buckets.binary_search_by_key(&index, |&(i, _)| i) {
        Ok(pos) => {
            let slot = &mut buckets[pos].1;
            *slot = slot.saturating_add(count);
        }
        Err(pos) => buckets.insert(pos, (index, count)),
    }
}

/// Up to this many indices are inserted one by one (a binary search each, into a list that
/// is short in the windows that see so few values).
pub(super) const FEW: usize = 4;

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

/// Widest index range counted densely: 4 KiB of `u16` counters on the stack in
/// [`count_runs`], 8 KiB of `u32` in [`add_lists`].
const COUNT_SPAN: usize = 2048;

/// Sorts `pending` bucket indices and adds them into the sorted `buckets`.
///
/// A busy window's indices usually fall in a range of a few hundred to a thousand buckets:
/// counting over that range gives the sorted runs in one pass, several times cheaper than
/// the two radix passes plus a run scan. Few indices over a wide range are sorted instead.
pub(super) fn fold_into(buckets: &mut Vec<(u16, u32)>, pending: &mut [u16]) {
    if pending.len() <= FEW {
        // A few values (a sparse entity's window): no table, no sort.
        for &index in pending.iter() {
            insert_count(buckets, index, 1);
        }
        return;
    }
    if pending.len() <= SMALL_SORT {
        // A quiet window's handful of values (most windows): a table of a few runs, not the
        // 2 KiB one a full buffer needs.
        pending.sort_unstable();
        let mut runs = [(0u16, 0u32); SMALL_SORT];
        let n = runs_of(pending, &mut runs);
        add_runs(buckets, &runs[..n]);
        return;
    }
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
        add_runs(buckets, &runs[..n]);
    }
}

/// Adds sorted `runs` into the sorted `buckets`.
#[inline]
fn add_runs(buckets: &mut Vec<(u16, u32)>, runs: &[(u16, u32)]) {
    if buckets.is_empty() {
        buckets.extend_from_slice(runs);
    } else {
        merge_into(buckets, runs);
    }
}

/// Narrow spans are counted in this many counters: clearing the full [`COUNT_SPAN`] on every
/// fold would cost more than the counting for the narrow ranges most windows see.
const NARROW_SPAN: usize = 256;

/// The sorted `(index, count)` runs of at most [`PENDING_MAX`] indices, all in
/// `lo..lo + span` with `span` ≤ [`COUNT_SPAN`], by counting; returns how many.
fn count_runs(indices: &[u16], lo: u16, span: usize, out: &mut [(u16, u32); PENDING_MAX]) -> usize {
    if span <= NARROW_SPAN {
        count_runs_in::<NARROW_SPAN>(indices, lo, span, out)
    } else {
        count_runs_in::<COUNT_SPAN>(indices, lo, span, out)
    }
}

/// [`count_runs`] with `N` ≥ `span` counters on the stack.
#[inline]
fn count_runs_in<const N: usize>(
    indices: &[u16],
    lo: u16,
    span: usize,
    out: &mut [(u16, u32); PENDING_MAX],
) -> usize {
    debug_assert!(indices.len() <= PENDING_MAX && span <= N);
    let mut counts = [0u16; N];
    for &index in indices {
        if let Some(c) = counts.get_mut(usize::from(index.wrapping_sub(lo))) {
            *c += 1;
        }
    }
    let mut n = 0;
    each_nonzero(
        &counts[..span.next_multiple_of(4).min(N)],
        lo,
        |index, count| {
            if let Some(slot) = out.get_mut(n) {
                *slot = (index, count);
                n += 1;
            }
        },
    );
    n
}

/// Equal indices of a sorted list as `(index, count)` runs, into `out` (at most its length of
/// indices are read); returns how many.
fn runs_of(sorted: &[u16], out: &mut [(u16, u32)]) -> usize {
    let mut n = 0;
    for &index in sorted.iter().take(out.len()) {
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
pub(super) fn merge_into(buckets: &mut Vec<(u16, u32)>, theirs: &[(u16, u32)]) {
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

/// Calls `emit(lo + i, count)` for every non-zero `counts[i]`, in order, testing four
/// counters at a time: most of a range is empty buckets.
#[inline]
fn each_nonzero<C: Copy + Default + PartialEq + Into<u32>>(
    counts: &[C],
    lo: u16,
    mut emit: impl FnMut(u16, u32),
) {
    let zero = C::default();
    let (quads, rest) = counts.as_chunks::<4>();
    for (quad, chunk) in quads.iter().enumerate() {
        if *chunk == [zero; 4] {
            continue;
        }
        for (k, &count) in chunk.iter().enumerate() {
            if count != zero {
                emit(lo + (4 * quad + k) as u16, count.into());
            }
        }
    }
    for (k, &count) in rest.iter().enumerate() {
        if count != zero {
            emit(lo + (4 * quads.len() + k) as u16, count.into());
        }
    }
}

/// Absorbed lists past this many entries (and past twice the buckets) are added up at once.
pub(super) const ABSORBED_MAX: usize = 1024;

/// Adds `lists` — sorted `(index, count)` lists one after another, as
/// [`super::LogHistogram::absorb`] appends them — into the sorted `buckets`. Many entries
/// over a narrow index range by dense counters (each entry added once, the buckets rewritten
/// once); a few, or many spread wide, by sorting the entries and one in-place merge. `lists`
/// is left unspecified.
pub(super) fn add_lists(buckets: &mut Vec<(u16, u32)>, lists: &mut [(u16, u32)]) {
    if lists.len() <= SMALL_SORT {
        // A quiet window's few absorbed entries: sorting them and one merge costs less than
        // clearing and scanning even the small counters.
        sort_and_merge(buckets, lists);
        return;
    }
    let Some((lo, hi)) = buckets.iter().chain(lists.iter()).map(|&(i, _)| i).fold(
        None,
        |range: Option<(u16, u16)>, i| {
            Some(range.map_or((i, i), |(lo, hi)| (lo.min(i), hi.max(i))))
        },
    ) else {
        return;
    };
    let span = usize::from(hi - lo) + 1;
    // Dense counting pays for clearing its counters: worth it when the entries cover a good
    // part of the range (a busy window), not for a few entries spread wide (a quiet one).
    let entries = buckets.len() + lists.len();
    if span <= NARROW_SPAN {
        add_dense::<NARROW_SPAN>(buckets, lists, lo, span);
        return;
    }
    if span <= COUNT_SPAN && span <= 8 * entries {
        add_dense::<COUNT_SPAN>(buckets, lists, lo, span);
        return;
    }
    sort_and_merge(buckets, lists);
}

/// [`add_lists`] by sorting the entries: equal indices added up in place, then one merge.
fn sort_and_merge(buckets: &mut Vec<(u16, u32)>, lists: &mut [(u16, u32)]) {
    lists.sort_unstable_by_key(|&(i, _)| i);
    let mut n = 0;
    for k in 0..lists.len() {
        if n > 0 && lists[n - 1].0 == lists[k].0 {
            lists[n - 1].1 = lists[n - 1].1.saturating_add(lists[k].1);
        } else {
            lists[n] = lists[k];
            n += 1;
        }
    }
    merge_into(buckets, &lists[..n]);
}

/// [`add_lists`] by `N` ≥ `span` dense counters over `lo..lo + span`.
#[inline]
fn add_dense<const N: usize>(
    buckets: &mut Vec<(u16, u32)>,
    lists: &[(u16, u32)],
    lo: u16,
    span: usize,
) {
    debug_assert!(span <= N);
    let mut counts = [0u32; N];
    for &(index, count) in buckets.iter().chain(lists.iter()) {
        if let Some(c) = counts.get_mut(usize::from(index - lo)) {
            *c = c.saturating_add(count);
        }
    }
    buckets.clear();
    each_nonzero(
        &counts[..span.next_multiple_of(4).min(N)],
        lo,
        |index, count| {
            buckets.push((index, count));
        },
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::MAX_BUCKET_INDEX;
    use super::*;

    /// `entries` as a sorted bucket list (equal indices added), each also added to `want`.
    fn sorted_list(entries: Vec<(u16, u32)>, want: &mut BTreeMap<u16, u32>) -> Vec<(u16, u32)> {
        let mut list = BTreeMap::<u16, u32>::new();
        for (index, count) in entries {
            *list.entry(index).or_default() += count;
            *want.entry(index).or_default() += count;
        }
        list.into_iter().collect()
    }

    #[test]
    fn in_place_merge_matches_a_map() {
        let mut x = 0x1234_5678_9ABC_DEF1u64;
        let mut next = |m: u64| crate::windows::tests::xorshift(&mut x) % m;
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
            let mut want = BTreeMap::new();
            let mut list = |len: usize, want: &mut BTreeMap<u16, u32>| {
                let entries: Vec<_> = (0..len)
                    .map(|_| (next(spread) as u16, 1 + next(9) as u32))
                    .collect();
                sorted_list(entries, want)
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
        let mut next = |m: u64| crate::windows::tests::xorshift(&mut x) % m;
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
            (32, 400, 900, 12),
            (1, 3, 1, 5),
            (1, 900, 1, 0),
        ] {
            let mut want = BTreeMap::<u16, u32>::new();
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
    fn added_lists_match_a_map_on_every_path() {
        let mut x = 0x6A09_E667_F3BC_C908u64;
        let mut next = |m: u64| crate::windows::tests::xorshift(&mut x) % m;
        // (buckets, lists, entries per list, index range from 40): a few entries (up to 32)
        // are sorted; more over a narrow range are counted in the small counters; over a
        // wide one in the large counters when the entries fill it enough, else sorted; wider
        // than the counters is sorted.
        for (existing, lists, per_list, range) in [
            (0usize, 0usize, 0usize, 1u16),
            (0, 3, 1, 1),
            (5, 10, 3, 200),
            (5, 11, 3, 200),
            (0, 10, 20, 256),
            (3, 10, 3, 257),
            (100, 10, 40, 1500),
            (2, 10, 2, 1500),
            (50, 6, 50, 2048),
            (50, 6, 50, 2049),
            (10, 60, 30, 7000),
        ] {
            let mut want = BTreeMap::new();
            let mut list = |len: usize, want: &mut BTreeMap<u16, u32>| {
                let entries: Vec<_> = (0..len)
                    .map(|k| {
                        // Both ends of the range occur, so the span is exactly `range`.
                        let i = 40
                            + match k {
                                0 => 0,
                                1 => range - 1,
                                _ => next(u64::from(range)) as u16,
                            };
                        (i, 1 + next(5) as u32)
                    })
                    .collect();
                sorted_list(entries, want)
            };
            let mut buckets = list(existing, &mut want);
            let mut appended = Vec::new();
            for _ in 0..lists {
                appended.extend(list(per_list, &mut want));
            }
            add_lists(&mut buckets, &mut appended);
            assert_eq!(
                buckets,
                want.into_iter().collect::<Vec<_>>(),
                "{existing} + {lists}×{per_list} over {range}"
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
}
