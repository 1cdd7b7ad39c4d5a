//! Rendering a request's `METHOD /endpoint/{id}` template key, sixteen bytes at a time.
//!
//! Every request is templated, so this is the hottest string work of the model. The path is
//! read in blocks of 16 bytes: per block, one set of vector compares (SSE2 on x86-64; bit
//! tricks on two 64-bit words elsewhere) gives bit masks of the segment separators, the end
//! of the path (`?` or `#`), the digits and the hexadecimal digits, and the block is copied to
//! the key as it is. At a separator the masks say whether the segment was an identifier; if
//! so, [`ID_PLACEHOLDER`] replaces it and the rest of the block is copied again at the
//! shifted position.

use std::hash::Hasher;

use rustc_hash::FxHasher;

use super::ids::{ID_PLACEHOLDER, MAX_TEMPLATE_LEN, OTHER_TEMPLATE, is_id_bytes};

/// Bytes per block.
const BLOCK: usize = 16;
/// Room past [`MAX_TEMPLATE_LEN`] for a whole block written at the last position.
const SLACK: usize = BLOCK;
/// Paths ending within this many bytes are rendered from whole-path masks.
const WIDE: usize = 64;

/// What [`TemplateKey::render_short`] did.
enum Short {
    Rendered,
    /// The key would be longer than [`MAX_TEMPLATE_LEN`].
    TooLong,
    /// The path goes on past [`WIDE`] bytes.
    Wider,
}

/// The lowest `k` bits of a 64-bit mask (`k` ≤ 64), without a branch.
#[inline]
fn low_bits64(k: usize) -> u64 {
    !u64::MAX.unbounded_shl(k as u32)
}

/// The dashes of a UUID (`8-4-4-4-12`), as bits of its first byte's position.
const UUID_DASHES: u64 = 1 << 8 | 1 << 13 | 1 << 18 | 1 << 23;

/// Per-byte classes of one block, one bit per byte (bit `i` is byte `i`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Classes {
    slash: u32,
    /// `?` or `#`: the path ends there.
    end: u32,
    digit: u32,
    hex: u32,
}

/// [`Classes`] of a block with 64-bit bit tricks (any target; the fallback without SSE2).
#[cfg_attr(
    target_arch = "x86_64",
    allow(dead_code, reason = "SSE2 is used there; tested on every target")
)]
#[inline]
fn classes_portable(block: &[u8; BLOCK]) -> Classes {
    use super::swar::{ONES, bytes_eq, bytes_in};
    /// The high bits of a word's bytes gathered into eight bits, byte `i` to bit `i`.
    fn gather(high_bits: u64) -> u32 {
        ((high_bits >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
    }
    let mut c = Classes {
        slash: 0,
        end: 0,
        digit: 0,
        hex: 0,
    };
    for (half, bytes) in block.as_chunks::<8>().0.iter().enumerate() {
        let w = u64::from_le_bytes(*bytes);
        let digit = bytes_in(w, b'0', b'9');
        let shift = 8 * half;
        c.slash |= gather(bytes_eq(w, b'/')) << shift;
        c.end |= gather(bytes_eq(w, b'?') | bytes_eq(w, b'#')) << shift;
        c.digit |= gather(digit) << shift;
        c.hex |= gather(digit | bytes_in(w | (ONES * 0x20), b'a', b'f')) << shift;
    }
    c
}

/// [`Classes`] of a block with SSE2 compares.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn classes_sse2(block: &[u8; BLOCK]) -> Classes {
    use std::arch::x86_64::{
        _mm_and_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_cmplt_epi8, _mm_loadu_si128,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: `block` is 16 readable bytes; the load has no alignment requirement.
    let v = unsafe { _mm_loadu_si128(block.as_ptr().cast()) };
    let slash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'/'.cast_signed()));
    let end = _mm_or_si128(
        _mm_cmpeq_epi8(v, _mm_set1_epi8(b'?'.cast_signed())),
        _mm_cmpeq_epi8(v, _mm_set1_epi8(b'#'.cast_signed())),
    );
    // Signed compares: bytes ≥ 0x80 are negative, below every ASCII bound.
    let digit = _mm_and_si128(
        _mm_cmpgt_epi8(v, _mm_set1_epi8((b'0' - 1).cast_signed())),
        _mm_cmplt_epi8(v, _mm_set1_epi8((b'9' + 1).cast_signed())),
    );
    let folded = _mm_or_si128(v, _mm_set1_epi8(0x20));
    let alpha = _mm_and_si128(
        _mm_cmpgt_epi8(folded, _mm_set1_epi8((b'a' - 1).cast_signed())),
        _mm_cmplt_epi8(folded, _mm_set1_epi8((b'f' + 1).cast_signed())),
    );
    Classes {
        slash: _mm_movemask_epi8(slash).cast_unsigned(),
        end: _mm_movemask_epi8(end).cast_unsigned(),
        digit: _mm_movemask_epi8(digit).cast_unsigned(),
        hex: _mm_movemask_epi8(_mm_or_si128(digit, alpha)).cast_unsigned(),
    }
}

/// [`Classes`] of a block: SSE2 on x86-64, bit tricks elsewhere.
#[inline]
fn classes(block: &[u8; BLOCK]) -> Classes {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of the x86-64 baseline, so every x86-64 CPU has it.
        unsafe { classes_sse2(block) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        classes_portable(block)
    }
}

/// The lowest `k` bits (`k` ≥ 16: a whole block's).
#[inline]
fn low_bits(k: usize) -> u32 {
    (1u32 << k.min(BLOCK)) - 1
}

/// Sixteen bytes of `p` from `at`, zero past its end.
#[inline]
fn load(p: &[u8], at: usize) -> [u8; BLOCK] {
    let rest = p.get(at..).unwrap_or_default();
    if let Some(block) = rest.first_chunk::<BLOCK>() {
        *block
    } else {
        let mut block = [0u8; BLOCK];
        block[..rest.len()].copy_from_slice(rest);
        block
    }
}

/// The request target from its path on: absolute-form (`http://host/p`) loses its scheme and
/// authority. The query and fragment are still attached; the renderer stops at them.
pub(super) fn path_start(target: &[u8]) -> &[u8] {
    // Origin-form (`/…`) is what nearly every request sends.
    if !matches!(target.first(), Some(b'h' | b'H')) {
        return target;
    }
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        let n = scheme.len();
        if target.len() > n
            && !matches!(target[n], b'?' | b'#')
            && target[..n].eq_ignore_ascii_case(scheme)
        {
            let rest = &target[n..];
            return match rest.iter().position(|&c| matches!(c, b'/' | b'?' | b'#')) {
                Some(i) if rest[i] == b'/' => &rest[i..],
                _ => b"/",
            };
        }
    }
    target
}

/// What is known of the segment being read.
#[derive(Clone, Copy)]
struct Segment {
    /// Where it starts in the path and in the key.
    src: usize,
    out: usize,
    all_digits: bool,
    all_hex: bool,
    any_digit: bool,
}

impl Segment {
    fn new(src: usize, out: usize) -> Self {
        Self {
            src,
            out,
            all_digits: true,
            all_hex: true,
            any_digit: false,
        }
    }

    /// Takes in the bytes of `part` (bit mask) given the block's digit and hex masks.
    #[inline]
    fn see(&mut self, part: u32, digit: u32, hex: u32) {
        self.all_digits &= part & !digit == 0;
        self.all_hex &= part & !hex == 0;
        self.any_digit |= part & digit != 0;
    }

    /// Whether the segment `source` (these flags describe it) is an identifier.
    #[inline]
    fn is_id(&self, source: &[u8]) -> bool {
        is_id_rule(
            source.len(),
            self.all_digits,
            self.all_hex,
            self.any_digit,
            || is_id_bytes(source),
        )
    }
}

/// The identifier rule of [`super::is_id_segment`] on a segment's length and byte classes,
/// shared by both renderers; `is_uuid` is asked only of 36-byte segments.
#[inline]
fn is_id_rule(
    len: usize,
    all_digits: bool,
    all_hex: bool,
    any_digit: bool,
    is_uuid: impl FnOnce() -> bool,
) -> bool {
    len > 0
        && (all_digits
            || (all_hex && len >= 8 && (len >= 16 || any_digit))
            || (len == 36 && is_uuid()))
}

/// A rendered `METHOD /template/{id}` key on the stack: the hot path renders once, then
/// hashes and compares the bytes, and allocates only when the template is new.
pub(crate) struct TemplateKey {
    buf: [u8; MAX_TEMPLATE_LEN + SLACK],
    len: usize,
}

impl Default for TemplateKey {
    fn default() -> Self {
        Self::new()
    }
}

impl TemplateKey {
    /// Renders the key of `method target`; `None` when it is longer than
    /// [`MAX_TEMPLATE_LEN`].
    #[inline]
    pub fn render(method: &str, target: &str) -> Option<Self> {
        let mut key = Self::new();
        key.render_into(method, target).then_some(key)
    }

    /// An empty key, to render into again and again.
    pub fn new() -> Self {
        Self {
            buf: [0; MAX_TEMPLATE_LEN + SLACK],
            len: 0,
        }
    }

    /// [`Self::render`] into this key's storage (no zeroing, no copy of the result); false
    /// when the key would be longer than [`MAX_TEMPLATE_LEN`].
    #[inline]
    pub fn render_into(&mut self, method: &str, target: &str) -> bool {
        self.len = 0;
        self.render_path(method, target).is_some()
    }

    /// Writes a block at `at` of the key. Past the longest key nothing is written: the bytes
    /// there are still classified (a long identifier renders as the short placeholder), and
    /// a segment kept verbatim that far makes the key too long anyway.
    #[inline]
    fn store(&mut self, at: usize, block: &[u8; BLOCK]) {
        if let Some(slot) = self.buf.get_mut(at..at + BLOCK) {
            slot.copy_from_slice(block);
        }
    }

    #[inline]
    fn render_path(&mut self, method: &str, target: &str) -> Option<()> {
        self.push(method.as_bytes())?;
        self.push(b" ")?;
        let path = path_start(target.as_bytes());
        match self.render_short(path) {
            Short::Rendered => Some(()),
            Short::TooLong => None,
            Short::Wider => self.render_blocks(path),
        }
    }

    /// Renders a path that ends within its first [`WIDE`] bytes (nearly every real one) from
    /// whole-path bit masks: each segment is classified by a few mask tests and copied in
    /// 16-byte moves, with no per-block bookkeeping.
    #[inline]
    fn render_short(&mut self, path: &[u8]) -> Short {
        let n = path.len().min(WIDE);
        // Zero past the end, and room for a 16-byte move from the last byte.
        let mut src = [0u8; WIDE + BLOCK];
        src[..n].copy_from_slice(&path[..n]);
        let (mut slash, mut end, mut digit, mut hex) = (0u64, 0u64, 0u64, 0u64);
        for (i, block) in src[..WIDE]
            .as_chunks::<BLOCK>()
            .0
            .iter()
            .take(n.div_ceil(BLOCK))
            .enumerate()
        {
            let c = classes(block);
            let shift = BLOCK * i;
            slash |= u64::from(c.slash) << shift;
            end |= u64::from(c.end) << shift;
            digit |= u64::from(c.digit) << shift;
            hex |= u64::from(c.hex) << shift;
        }
        let ends = end & low_bits64(n);
        let len = if ends != 0 {
            ends.trailing_zeros() as usize
        } else if path.len() <= WIDE {
            n
        } else {
            return Short::Wider;
        };
        let valid = low_bits64(len);
        let (not_digit, not_hex) = (!digit & valid, !hex & valid);
        let mut slashes = slash & valid;
        let mut out = self.len;
        let mut start = 0;
        // Bits from the segment's start on.
        let mut from_start = u64::MAX;
        loop {
            // The segment's separator as a bit (none for the last segment).
            let stop_bit = slashes.isolate_lowest_one();
            let (stop, below_stop) = if slashes == 0 {
                (len, valid)
            } else {
                (stop_bit.trailing_zeros() as usize, stop_bit - 1)
            };
            let seg_len = stop - start;
            let seg = below_stop & from_start;
            let is_id = is_id_rule(
                seg_len,
                not_digit & seg == 0,
                not_hex & seg == 0,
                digit & seg != 0,
                || {
                    not_hex & seg == UUID_DASHES << start
                        && [8, 13, 18, 23].iter().all(|&d| src[start + d] == b'-')
                },
            );
            if is_id {
                let placeholder = ID_PLACEHOLDER.as_bytes();
                if out + placeholder.len() > MAX_TEMPLATE_LEN {
                    return Short::TooLong;
                }
                self.buf[out..out + placeholder.len()].copy_from_slice(placeholder);
                out += placeholder.len();
            } else {
                if out + seg_len > MAX_TEMPLATE_LEN {
                    return Short::TooLong;
                }
                // Whole 16-byte moves: the bytes past the segment are overwritten next.
                let mut k = 0;
                while k < seg_len {
                    let from = start + k;
                    self.buf[out + k..out + k + BLOCK].copy_from_slice(&src[from..from + BLOCK]);
                    k += BLOCK;
                }
                out += seg_len;
            }
            if slashes == 0 {
                break;
            }
            slashes &= slashes - 1;
            if out >= MAX_TEMPLATE_LEN {
                return Short::TooLong;
            }
            self.buf[out] = b'/';
            out += 1;
            start = stop + 1;
            // Bits above the separator (none when it was the 64th byte).
            from_start = !(stop_bit << 1).wrapping_sub(1);
        }
        self.len = out;
        Short::Rendered
    }

    /// Renders a path of any length block by block (paths that [`Self::render_short`] leaves).
    fn render_blocks(&mut self, path: &[u8]) -> Option<()> {
        let n = path.len();
        let mut seg = Segment::new(0, self.len);
        let mut at = 0;
        loop {
            let block = load(path, at);
            let c = classes(&block);
            let ends = c.end & low_bits(n - at);
            let limit = if ends == 0 {
                (n - at).min(BLOCK)
            } else {
                ends.trailing_zeros() as usize
            };
            // Where this block's first byte goes: segments so far kept their length.
            self.store(seg.out + (at - seg.src), &block);
            let mut slashes = c.slash & low_bits(limit);
            let mut from = 0;
            while slashes != 0 {
                let b = slashes.trailing_zeros() as usize;
                slashes &= slashes - 1;
                seg.see(low_bits(b) & !low_bits(from), c.digit, c.hex);
                let end = self.end_segment(&seg, &path[seg.src..at + b])?;
                if end >= MAX_TEMPLATE_LEN {
                    return None;
                }
                if end != seg.out + (at + b - seg.src) {
                    // Replaced by the placeholder: the rest of the block moves.
                    self.store(end, &load(path, at + b));
                }
                seg = Segment::new(at + b + 1, end + 1);
                from = b + 1;
            }
            seg.see(low_bits(limit) & !low_bits(from), c.digit, c.hex);
            if ends != 0 || at + BLOCK >= n {
                self.len = self.end_segment(&seg, &path[seg.src..at + limit])?;
                return Some(());
            }
            at += BLOCK;
        }
    }

    /// Ends segment `seg` (its bytes `source` are already in place at `seg.out`); returns the
    /// key's new end, after a placeholder when the segment is an identifier, or `None` when
    /// the key no longer fits.
    #[inline]
    fn end_segment(&mut self, seg: &Segment, source: &[u8]) -> Option<usize> {
        if !seg.is_id(source) {
            let end = seg.out + source.len();
            return (end <= MAX_TEMPLATE_LEN).then_some(end);
        }
        let placeholder = ID_PLACEHOLDER.as_bytes();
        let end = seg.out + placeholder.len();
        if end > MAX_TEMPLATE_LEN {
            return None;
        }
        self.buf[seg.out..end].copy_from_slice(placeholder);
        Some(end)
    }

    #[inline]
    fn push(&mut self, bytes: &[u8]) -> Option<()> {
        let end = self.len + bytes.len();
        if end > MAX_TEMPLATE_LEN {
            return None;
        }
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
        Some(())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The key as text. Segments split the target at ASCII bytes and the placeholder is
    /// ASCII, so the bytes are valid UTF-8 whenever the request's strings were.
    pub fn to_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or(OTHER_TEMPLATE)
    }

    pub fn hash(&self) -> u64 {
        stored_template_hash(self.as_bytes())
    }
}

/// Hash of a template key's bytes (stored keys and freshly rendered ones alike).
pub(crate) fn stored_template_hash(key: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(key);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classes of `block`, byte by byte.
    fn expected(block: &[u8; BLOCK]) -> Classes {
        let bits = |f: fn(u8) -> bool| {
            block
                .iter()
                .enumerate()
                .fold(0u32, |m, (i, &c)| if f(c) { m | 1 << i } else { m })
        };
        Classes {
            slash: bits(|c| c == b'/'),
            end: bits(|c| c == b'?' || c == b'#'),
            digit: bits(|c| c.is_ascii_digit()),
            hex: bits(|c| c.is_ascii_hexdigit()),
        }
    }

    #[test]
    fn block_classes_are_exact_for_every_byte_in_every_position() {
        for b in 0..=255u8 {
            for pos in 0..BLOCK {
                let mut block = *b"zz/9?A#f0-G\xc3\xa9/?7";
                block[pos] = b;
                let want = expected(&block);
                assert_eq!(classes_portable(&block), want, "{b:#x}@{pos}");
                assert_eq!(classes(&block), want, "{b:#x}@{pos}");
            }
        }
    }

    /// Renders `path` after `GET ` with the short renderer and with the block renderer.
    fn both(path: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>, bool) {
        let mut short = TemplateKey::new();
        short.push(b"GET ").expect("fits");
        let short_out = short.render_short(path);
        let wider = matches!(short_out, Short::Wider);
        let short_key = matches!(short_out, Short::Rendered).then(|| short.as_bytes().to_vec());
        let mut blocks = TemplateKey::new();
        blocks.push(b"GET ").expect("fits");
        let block_key = blocks
            .render_blocks(path)
            .map(|()| blocks.as_bytes().to_vec());
        (short_key, block_key, wider)
    }

    #[test]
    fn short_renderer_hands_longer_paths_on() {
        let long = format!("/{}", "a".repeat(70));
        assert!(both(long.as_bytes()).2);
        // The path ends within 64 bytes though the target goes on: rendered short.
        let query = format!("/users/42?{}", "q".repeat(100));
        let (short, blocks, wider) = both(query.as_bytes());
        assert!(!wider);
        assert_eq!(short.as_deref(), Some(&b"GET /users/{id}"[..]));
        assert_eq!(short, blocks);
        // Exactly 64 bytes, and 65.
        for n in [63, 64, 65] {
            let p = format!("/{}", "1".repeat(n - 1));
            let (short, blocks, wider) = both(p.as_bytes());
            assert_eq!(wider, n > 64);
            if !wider {
                assert_eq!(short, blocks);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        #[test]
        fn short_and_block_renderers_agree(
            path in "([/?#.0-9a-fA-FgG\\-]|[0-9]{8,20}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}){0,24}",
        ) {
            let (short, blocks, wider) = both(path.as_bytes());
            if !wider {
                proptest::prop_assert_eq!(short, blocks);
            }
        }
    }
}
