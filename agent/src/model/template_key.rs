//! Rendering a request's `METHOD /endpoint/{id}` template key, a word at a time.
//!
//! Every request is templated, so this is the hottest string work of the model. The path is
//! read eight bytes at a time: one pass of bit tricks per word finds the segment separators,
//! the end of the path (`?` or `#`) and which bytes are digits and hexadecimal digits, and the
//! word is copied to the key as it is. At a separator the segment's flags say whether it is an
//! identifier; if so, [`ID_PLACEHOLDER`] replaces it and the rest of the word is copied again
//! at the shifted position.

use std::hash::Hasher;

use rustc_hash::FxHasher;

use super::ids::{ID_PLACEHOLDER, MAX_TEMPLATE_LEN, OTHER_TEMPLATE, is_id_bytes};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;
const LOW7: u64 = !HIGH;
/// Room past [`MAX_TEMPLATE_LEN`] for a whole word written at the last position.
const SLACK: usize = 8;

/// High bit of every byte of `w` that equals `c` (exact: no carries between bytes).
#[inline]
fn bytes_eq(w: u64, c: u8) -> u64 {
    let x = w ^ (ONES * u64::from(c));
    !(((x & LOW7) + LOW7) | x) & HIGH
}

/// High bit of every byte of `w` in `lo..=hi` (ASCII bounds; bytes ≥ 0x80 never match).
#[inline]
fn bytes_in(w: u64, lo: u8, hi: u8) -> u64 {
    let low7 = w & LOW7;
    let at_least_lo = low7 + ONES * u64::from(0x80 - lo);
    let above_hi = low7 + ONES * u64::from(0x7F - hi);
    at_least_lo & !above_hi & !w & HIGH
}

/// High bits of the first `k` bytes of a word, for `k` in `0..=8` (a table: no branch).
const FIRST_BYTES: [u64; 9] = {
    let mut t = [0u64; 9];
    let mut k = 1;
    while k < 9 {
        t[k] = if k == 8 {
            HIGH
        } else {
            HIGH & ((1u64 << (8 * k)) - 1)
        };
        k += 1;
    }
    t
};

/// High bits of the first `k` bytes of a word (`k` ≥ 8: all of them).
#[inline]
fn first_bytes(k: usize) -> u64 {
    FIRST_BYTES[k.min(8)]
}

/// Eight bytes of `p` from `at`, zero past its end.
#[inline]
fn load(p: &[u8], at: usize) -> u64 {
    let rest = p.get(at..).unwrap_or_default();
    if let Some(word) = rest.first_chunk::<8>() {
        u64::from_le_bytes(*word)
    } else {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        u64::from_le_bytes(word)
    }
}

/// The request target from its path on: absolute-form (`http://host/p`) loses its scheme and
/// authority. The query and fragment are still attached; the renderer stops at them.
fn path_start(target: &[u8]) -> &[u8] {
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

    /// Takes in the bytes of `part` (high-bit mask) given the word's digit and hex masks.
    #[inline]
    fn see(&mut self, part: u64, digit: u64, hex: u64) {
        self.all_digits &= part & !digit == 0;
        self.all_hex &= part & !hex == 0;
        self.any_digit |= part & digit != 0;
    }

    /// Whether the segment `source` (these flags describe it) is an identifier: see
    /// [`super::is_id_segment`].
    #[inline]
    fn is_id(&self, source: &[u8]) -> bool {
        let n = source.len();
        n > 0
            && (self.all_digits
                || (self.all_hex && n >= 8 && (n >= 16 || self.any_digit))
                || (n == 36 && is_id_bytes(source)))
    }
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

    /// Writes a word at `at` of the key. Past the longest key nothing is written: the bytes
    /// there are still classified (a long identifier renders as the short placeholder), and
    /// a segment kept verbatim that far makes the key too long anyway.
    #[inline]
    fn store(&mut self, at: usize, word: u64) {
        if let Some(slot) = self.buf.get_mut(at..at + 8) {
            slot.copy_from_slice(&word.to_le_bytes());
        }
    }

    #[inline]
    fn render_path(&mut self, method: &str, target: &str) -> Option<()> {
        self.push(method.as_bytes())?;
        self.push(b" ")?;
        let path = path_start(target.as_bytes());
        let n = path.len();
        let mut seg = Segment::new(0, self.len);
        let mut at = 0;
        loop {
            let word = load(path, at);
            let valid = first_bytes(n - at);
            let ends = (bytes_eq(word, b'?') | bytes_eq(word, b'#')) & valid;
            let limit = if ends == 0 {
                (n - at).min(8)
            } else {
                (ends.trailing_zeros() / 8) as usize
            };
            // Where this word's first byte goes: segments so far kept their length.
            self.store(seg.out + (at - seg.src), word);
            let digit = bytes_in(word, b'0', b'9');
            let hex = digit | bytes_in(word | (ONES * 0x20), b'a', b'f');
            let mut slashes = bytes_eq(word, b'/') & first_bytes(limit);
            let mut from = 0;
            while slashes != 0 {
                let b = (slashes.trailing_zeros() / 8) as usize;
                slashes &= slashes - 1;
                seg.see(first_bytes(b) & !first_bytes(from), digit, hex);
                let end = self.end_segment(&seg, &path[seg.src..at + b])?;
                if end >= MAX_TEMPLATE_LEN {
                    return None;
                }
                if end != seg.out + (at + b - seg.src) {
                    // Replaced by the placeholder: the rest of the word moves.
                    self.store(end, load(path, at + b));
                }
                seg = Segment::new(at + b + 1, end + 1);
                from = b + 1;
            }
            seg.see(first_bytes(limit) & !first_bytes(from), digit, hex);
            if ends != 0 || at + 8 >= n {
                self.len = self.end_segment(&seg, &path[seg.src..at + limit])?;
                return Some(());
            }
            at += 8;
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

    #[test]
    fn byte_masks_are_exact_for_every_byte_in_every_position() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                let mut bytes = *b"zz/9?A#f";
                bytes[pos] = b;
                let w = u64::from_le_bytes(bytes);
                let expect = |f: &dyn Fn(u8) -> bool| {
                    bytes.iter().enumerate().fold(
                        0u64,
                        |m, (i, &c)| if f(c) { m | 0x80 << (8 * i) } else { m },
                    )
                };
                assert_eq!(bytes_eq(w, b'/'), expect(&|c| c == b'/'), "{b:#x}@{pos}");
                assert_eq!(bytes_eq(w, b'?'), expect(&|c| c == b'?'), "{b:#x}@{pos}");
                assert_eq!(
                    bytes_in(w, b'0', b'9'),
                    expect(&|c: u8| c.is_ascii_digit()),
                    "{b:#x}@{pos}"
                );
                assert_eq!(
                    bytes_in(w, b'0', b'9') | bytes_in(w | (ONES * 0x20), b'a', b'f'),
                    expect(&|c: u8| c.is_ascii_hexdigit()),
                    "{b:#x}@{pos}"
                );
            }
        }
    }
}
