//! Eight bytes at a time: exact per-byte tests on a 64-bit word, without carries between
//! bytes. Host hashing lower-cases with them everywhere; template rendering uses them where
//! SSE2 is not available.

pub(super) const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;
const LOW7: u64 = !HIGH;

/// High bit of every byte of `w` that equals `c`.
#[cfg_attr(
    target_arch = "x86_64",
    allow(dead_code, reason = "templates use SSE2 there; tested on every target")
)]
#[inline]
pub(super) fn bytes_eq(w: u64, c: u8) -> u64 {
    let x = w ^ (ONES * u64::from(c));
    !(((x & LOW7) + LOW7) | x) & HIGH
}

/// High bit of every byte of `w` in `lo..=hi` (ASCII bounds; bytes ≥ 0x80 never match).
#[inline]
pub(super) fn bytes_in(w: u64, lo: u8, hi: u8) -> u64 {
    let low7 = w & LOW7;
    let at_least_lo = low7 + ONES * u64::from(0x80 - lo);
    let above_hi = low7 + ONES * u64::from(0x7F - hi);
    at_least_lo & !above_hi & !w & HIGH
}

/// Eight bytes of `bytes` from `at` (the caller checked the bounds).
#[inline]
pub(super) fn word_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Sixteen bytes of `bytes` from `at` (the caller checked the bounds).
#[inline]
fn block_at(bytes: &[u8], at: usize) -> u128 {
    let mut block = [0u8; 16];
    block.copy_from_slice(&bytes[at..at + 16]);
    u128::from_le_bytes(block)
}

/// `a == b` for the short strings the hot path compares (hosts, template keys): up to 32
/// bytes by two overlapping loads per side instead of a call to `memcmp`.
#[inline]
pub(super) fn short_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        16..=32 => block_at(a, 0) == block_at(b, 0) && block_at(a, n - 16) == block_at(b, n - 16),
        8..16 => word_at(a, 0) == word_at(b, 0) && word_at(a, n - 8) == word_at(b, n - 8),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::short_eq;

    #[test]
    fn short_eq_is_slice_equality() {
        let base: Vec<u8> = (0u8..40).map(|i| b'a' + i % 26).collect();
        for n in 0..=40 {
            let a = &base[..n];
            assert!(short_eq(a, a));
            if n > 0 {
                assert!(!short_eq(a, &base[..n - 1]), "lengths {n} and {}", n - 1);
            }
            for pos in 0..n {
                let mut b = a.to_vec();
                b[pos] ^= 0x20;
                assert!(!short_eq(a, &b), "{n} bytes, differing at {pos}");
            }
        }
    }
}
