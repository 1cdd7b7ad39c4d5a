//! Entity identities (resources and clients), their normalisation, and endpoint templates.
//!
//! Lookups hash and compare the *normalised* form straight from the event's borrowed
//! strings, so finding an existing entity or template never allocates.

use std::fmt;
use std::hash::Hasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use rustc_hash::FxHasher;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::swar::{bytes_in, word_at};
pub(crate) use super::template_key::{TemplateKey, stored_template_hash};

/// A service: destination address and port, refined by the HTTP `Host` or TLS SNI when seen.
///
/// Text form: `host@addr:port` or `addr:port` (IPv6 as `[addr]:port`), lower-case host
/// without port or trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId {
    pub addr: SocketAddr,
    pub host: Option<String>,
}

impl ResourceId {
    /// Builds an id, normalising `host` as lookups do.
    pub fn new(addr: SocketAddr, host: Option<&str>) -> Self {
        Self {
            addr,
            host: host.and_then(normalize_host).map(str::to_ascii_lowercase),
        }
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Some(h) => write!(f, "{h}@{}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Why an entity id did not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid {what} `{text}`")]
pub struct IdParseError {
    what: &'static str,
    text: String,
}

impl FromStr for ResourceId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IdParseError {
            what: "resource id",
            text: s.to_owned(),
        };
        let (host, addr) = match s.rsplit_once('@') {
            Some((h, a)) if !h.is_empty() => (Some(h), a),
            Some(_) => return Err(err()),
            None => (None, s),
        };
        let addr = addr.parse().map_err(|_| err())?;
        // Lookups compare against lower-case stored hosts.
        Ok(Self {
            addr,
            host: host.map(str::to_ascii_lowercase),
        })
    }
}

/// A client: a source address, or the network of its configured prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    /// The address with host bits cleared.
    pub net: IpAddr,
    pub prefix: u8,
}

impl ClientId {
    /// The client of `addr` aggregated to `/v4_prefix` or `/v6_prefix`.
    pub fn of(addr: IpAddr, v4_prefix: u8, v6_prefix: u8) -> Self {
        match addr {
            IpAddr::V4(a) => {
                let prefix = v4_prefix.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                Self {
                    net: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)),
                    prefix,
                }
            }
            IpAddr::V6(a) => {
                let prefix = v6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                Self {
                    net: IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)),
                    prefix,
                }
            }
        }
    }

    pub(crate) fn hash64(&self) -> u64 {
        let mut h = FxHasher::default();
        match self.net {
            IpAddr::V4(a) => h.write_u32(u32::from(a)),
            IpAddr::V6(a) => h.write_u128(u128::from(a)),
        }
        h.write_u8(self.prefix);
        h.finish()
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl FromStr for ClientId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IdParseError {
            what: "client id",
            text: s.to_owned(),
        };
        let (net, prefix) = s.split_once('/').ok_or_else(err)?;
        let net: IpAddr = net.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let id = ClientId::of(net, prefix, prefix);
        if prefix > max || id.net != net {
            return Err(err());
        }
        Ok(id)
    }
}

/// What a window summary describes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityId {
    Resource(ResourceId),
    Client(ClientId),
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntityId::Resource(r) => write!(f, "resource {r}"),
            EntityId::Client(c) => write!(f, "client {c}"),
        }
    }
}

macro_rules! serde_via_string {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_string!(ResourceId);
serde_via_string!(ClientId);

/// The host part of a `Host` header or SNI, without port, surrounding whitespace or trailing
/// dots (case is kept: compare with `eq_ignore_ascii_case`). `None` when nothing is left.
pub fn normalize_host(raw: &str) -> Option<&str> {
    let h = raw.trim_ascii();
    let b = h.as_bytes();
    let h = if b.first() == Some(&b'[') {
        // `[v6]:port`: keep the bracketed address.
        b.iter()
            .position(|&c| c == b']')
            .map_or(h, |end| &h[..=end])
    } else {
        // `name:port`; more than one colon is a bare IPv6 address, kept whole.
        // Host names are short: a plain scan beats a vectorised search's set-up.
        match b.iter().position(|&c| c == b':') {
            Some(i) if !b[i + 1..].contains(&b':') => &h[..i],
            _ => h,
        }
    };
    // Trailing dots, and blanks left before a cut port: the result is then a fixed point
    // (normalising it again returns it), which the connection fast path relies on.
    let mut end = h.len();
    while end > 0 && (h.as_bytes()[end - 1] == b'.' || h.as_bytes()[end - 1].is_ascii_whitespace())
    {
        end -= 1;
    }
    // Only ASCII bytes were cut, so `end` is a character boundary.
    let h = &h[..end];
    (!h.is_empty()).then_some(h)
}

/// Hash of a resource key, from the already-normalised host (case-folded while hashing, so a
/// stored lower-case host and the same host in any case hash alike).
pub(crate) fn resource_hash(addr: SocketAddr, host: Option<&str>) -> u64 {
    let mut h = FxHasher::default();
    match addr.ip() {
        IpAddr::V4(a) => h.write_u64(u64::from(u32::from(a)) << 16 | u64::from(addr.port())),
        IpAddr::V6(a) => {
            h.write_u128(u128::from(a));
            h.write_u16(addr.port());
        }
    }
    if let Some(host) = host {
        write_lowercase(&mut h, host.as_bytes());
    }
    h.finish()
}

/// ASCII lower case of eight bytes at once: `A..=Z` gain 0x20, every other byte (UTF-8
/// included) is unchanged.
#[inline]
fn lowercase_word(w: u64) -> u64 {
    w | (bytes_in(w, b'A', b'Z') >> 2)
}

/// Whether `raw` lower-cased equals `lower` (a stored, already lower-case host), compared a
/// word at a time as [`write_lowercase`] hashes.
#[inline]
pub(crate) fn eq_lowercase(lower: &[u8], raw: &[u8]) -> bool {
    let n = raw.len();
    if lower.len() != n {
        return false;
    }
    if n < 8 {
        return lower
            .iter()
            .zip(raw)
            .all(|(a, b)| *a == b.to_ascii_lowercase());
    }
    let mut at = 0;
    while at + 8 <= n {
        if word_at(lower, at) != lowercase_word(word_at(raw, at)) {
            return false;
        }
        at += 8;
    }
    at == n || word_at(lower, n - 8) == lowercase_word(word_at(raw, n - 8))
}

/// Hashes `bytes` lower-cased, a word at a time. The last word of a key of 8 or more bytes
/// overlaps the previous one (no variable-length copy); the length ends the key, so `ab`
/// and `ab\0` differ.
#[inline]
fn write_lowercase(h: &mut FxHasher, bytes: &[u8]) {
    let n = bytes.len();
    if n >= 8 {
        let mut at = 0;
        while at + 8 <= n {
            h.write_u64(lowercase_word(word_at(bytes, at)));
            at += 8;
        }
        if at < n {
            h.write_u64(lowercase_word(word_at(bytes, n - 8)));
        }
    } else {
        let word = bytes
            .iter()
            .enumerate()
            .fold(0u64, |w, (k, &b)| w | u64::from(b) << (8 * k));
        h.write_u64(lowercase_word(word));
    }
    h.write_u64(n as u64);
}

// ---- endpoint templates ----

/// Placeholder for numeric, UUID and long hexadecimal path segments.
pub const ID_PLACEHOLDER: &str = "{id}";
/// Longest template kept; longer paths count under [`OTHER_TEMPLATE`].
pub const MAX_TEMPLATE_LEN: usize = 256;
/// The template of requests that could not be given their own (table full, path too long).
pub const OTHER_TEMPLATE: &str = "(other)";

/// Whether a path segment is an identifier: all digits, a UUID, or hexadecimal with at least
/// 8 characters of which at least one is a digit (16 or more need no digit).
pub fn is_id_segment(seg: &str) -> bool {
    is_id_bytes(seg.as_bytes())
}

/// [`is_id_segment`] on bytes. Most segments are words that fail at their first or second
/// byte, so the scan stops at the first byte that is not a hex digit.
#[inline]
pub(super) fn is_id_bytes(b: &[u8]) -> bool {
    let n = b.len();
    if n == 0 {
        return false;
    }
    if n == 36 && b[8] == b'-' && b[13] == b'-' && b[18] == b'-' && b[23] == b'-' {
        return b
            .iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) || c.is_ascii_hexdigit());
    }
    let mut all_digits = true;
    let mut any_digit = false;
    for &c in b {
        if c.is_ascii_digit() {
            any_digit = true;
        } else if c.is_ascii_hexdigit() {
            all_digits = false;
        } else {
            return false;
        }
    }
    all_digits || (n >= 8 && (n >= 16 || any_digit))
}

/// The endpoint template of a request target, e.g. `/api/v1/users/12345/orders?x=1` →
/// `/api/v1/users/{id}/orders`. Targets whose template exceeds [`MAX_TEMPLATE_LEN`] give
/// [`OTHER_TEMPLATE`].
pub fn endpoint_template(target: &str) -> String {
    TemplateKey::render("", target).map_or_else(
        || OTHER_TEMPLATE.to_owned(),
        |key| {
            let text = key.to_str();
            text.strip_prefix(' ').unwrap_or(text).to_owned()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_lowercase_matches_bytewise() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                let mut bytes = *b"xY9-Z@[`";
                bytes[pos] = b;
                let want = bytes.map(|c| c.to_ascii_lowercase());
                assert_eq!(
                    lowercase_word(u64::from_le_bytes(bytes)).to_le_bytes(),
                    want,
                    "byte {b:#x} at {pos}"
                );
            }
        }
    }

    #[test]
    fn resource_hash_folds_case_and_separates_lengths() {
        let addr: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        for host in [
            "a",
            "Example.COM",
            "api.v2.Service-Name.example.org",
            "ÄÖ.example",
        ] {
            assert_eq!(
                resource_hash(addr, Some(host)),
                resource_hash(addr, Some(&host.to_ascii_lowercase())),
                "{host}"
            );
        }
        assert_ne!(
            resource_hash(addr, Some("ab")),
            resource_hash(addr, Some("ab\0"))
        );
        assert_ne!(
            resource_hash(addr, Some("abcdefgh")),
            resource_hash(addr, Some("abcdefgh\0"))
        );
        assert_ne!(resource_hash(addr, None), resource_hash(addr, Some("")));
        for (stored, raw, equal) in [
            ("example.com", "EXAMPLE.com", true),
            ("a", "A", true),
            ("abcdefgh", "ABCDEFGH", true),
            (
                "api.v2.service.example.org",
                "API.v2.Service.EXAMPLE.org",
                true,
            ),
            ("example.com", "example.org", false),
            ("example.com", "example.co", false),
            ("abcdefghi", "abcdefghj", false),
            ("a-b", "a\rb", false),
        ] {
            assert_eq!(
                eq_lowercase(stored.as_bytes(), raw.as_bytes()),
                equal,
                "{raw}"
            );
        }
        let other: SocketAddr = "10.0.0.1:81".parse().expect("addr");
        assert_ne!(
            resource_hash(addr, Some("a")),
            resource_hash(other, Some("a"))
        );
    }
}
