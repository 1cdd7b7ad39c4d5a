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
        Ok(Self {
            addr,
            host: host.map(str::to_owned),
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
    let h = if h.starts_with('[') {
        // `[v6]:port`: keep the bracketed address.
        h.find(']').map_or(h, |end| &h[..=end])
    } else {
        match h.split_once(':') {
            Some((name, port)) if !port.contains(':') => name,
            _ => h,
        }
    };
    let h = h.trim_end_matches('.');
    (!h.is_empty()).then_some(h)
}

/// Hash of a resource key, from the already-normalised host (case-folded while hashing).
pub(crate) fn resource_hash(addr: SocketAddr, host: Option<&str>) -> u64 {
    let mut h = FxHasher::default();
    match addr.ip() {
        IpAddr::V4(a) => h.write_u32(u32::from(a)),
        IpAddr::V6(a) => h.write_u128(u128::from(a)),
    }
    h.write_u16(addr.port());
    if let Some(host) = host {
        write_lowercase(&mut h, host.as_bytes());
    }
    h.finish()
}

fn write_lowercase(h: &mut FxHasher, bytes: &[u8]) {
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(buf.len()) {
        let out = &mut buf[..chunk.len()];
        for (o, b) in out.iter_mut().zip(chunk) {
            *o = b.to_ascii_lowercase();
        }
        h.write(out);
    }
    h.write_u8(0xff);
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

fn is_id_bytes(b: &[u8]) -> bool {
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
    {
        return true;
    }
    b.len() >= 8
        && b.iter().all(u8::is_ascii_hexdigit)
        && (b.len() >= 16 || b.iter().any(u8::is_ascii_digit))
}

/// The path part of a request target: no query or fragment; absolute-form
/// (`http://host/p`) reduced to its path.
fn path_only(target: &[u8]) -> &[u8] {
    let end = target
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    let p = &target[..end];
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if p.len() > scheme.len() && p[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &p[scheme.len()..];
            return rest
                .iter()
                .position(|&b| b == b'/')
                .map_or(&b"/"[..], |i| &rest[i..]);
        }
    }
    p
}

/// Calls `piece` with each piece of the template of `method target` in order; stops early
/// when `piece` returns false. Returns false if it was stopped. Pieces split the target at
/// ASCII bytes, so each is valid UTF-8 when the target is.
fn for_each_piece(method: &str, target: &str, mut piece: impl FnMut(&[u8]) -> bool) -> bool {
    if !piece(method.as_bytes()) || !piece(b" ") {
        return false;
    }
    let path = path_only(target.as_bytes());
    let mut start = 0;
    loop {
        let end = path[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(path.len(), |i| start + i);
        let seg = &path[start..end];
        let rendered = if is_id_bytes(seg) {
            ID_PLACEHOLDER.as_bytes()
        } else {
            seg
        };
        if !piece(rendered) {
            return false;
        }
        if end == path.len() {
            return true;
        }
        if !piece(b"/") {
            return false;
        }
        start = end + 1;
    }
}

/// The endpoint template of a request target, e.g. `/api/v1/users/12345/orders?x=1` →
/// `/api/v1/users/{id}/orders`.
pub fn endpoint_template(target: &str) -> String {
    let key = template_key("", target);
    key.strip_prefix(' ').unwrap_or(&key).to_owned()
}

/// Hash and length of the rendered `METHOD template` key, without building it.
pub(crate) fn template_hash(method: &str, target: &str) -> (u64, usize) {
    let mut h = FxHasher::default();
    let mut len = 0usize;
    for_each_piece(method, target, |p| {
        h.write(p);
        len += p.len();
        true
    });
    (h.finish(), len)
}

/// Whether `stored` equals the rendered `METHOD template` key of the request.
pub(crate) fn template_eq(stored: &str, method: &str, target: &str) -> bool {
    let mut rest = stored.as_bytes();
    for_each_piece(method, target, |p| match rest.strip_prefix(p) {
        Some(r) => {
            rest = r;
            true
        }
        None => false,
    }) && rest.is_empty()
}

/// The rendered `METHOD template` key.
pub(crate) fn template_key(method: &str, target: &str) -> String {
    let mut out = Vec::new();
    for_each_piece(method, target, |p| {
        out.extend_from_slice(p);
        true
    });
    // Pieces are whole UTF-8 sequences of valid strings, so this never replaces anything.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Hash of a stored template key (consistent with [`template_hash`]).
pub(crate) fn stored_template_hash(key: &str) -> u64 {
    let mut h = FxHasher::default();
    // The stored key is the concatenation of the pieces; hash its bytes in the same pieces.
    let (method, target) = key.split_once(' ').unwrap_or((key, ""));
    for_each_piece(method, target, |p| {
        h.write(p);
        true
    });
    h.finish()
}
