//! Decode stage: one parser for frames from pcap files and from kernel ring-buffer records.
//!
//! The kernel copies the first bytes of a frame (L2–L4 headers plus a payload head) into a
//! record; userspace re-parses those bytes here, exactly as it parses a pcap packet. Keeping
//! one parser (and one [`classify`] rule) is what makes `replay` a faithful model of the live
//! tap: the two paths cannot drift apart.
//!
//! Every function in this module is total: arbitrary bytes give `Ok` with whatever could be
//! decoded or a [`DecodeError`], never a panic.

mod frame;
pub mod http;
pub mod pcap;
pub mod pcap_writer;
pub mod tls;

pub use frame::{PacketMeta, TcpFlags, TcpMeta, Transport, decode_frame};
pub use http::{HttpHead, HttpRequestHead, HttpResponseHead, parse_http_head};
pub use tls::{ClientHello, parse_client_hello};

use shadowtap_common::RecordKind;

/// Link-layer framing of the bytes handed to [`decode_frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// Ethernet II, optionally with up to two VLAN tags (pcap link type 1; kernel records).
    Ethernet,
    /// Linux "cooked" capture v1, 16-byte header (pcap link type 113).
    LinuxSll,
    /// Linux "cooked" capture v2, 20-byte header (pcap link type 276).
    LinuxSll2,
    /// Raw IPv4/IPv6 without a link header (pcap link types 101, 12, 14, 228, 229).
    RawIp,
}

impl LinkType {
    /// Maps a pcap/pcapng `LINKTYPE_*` number to the framings we decode.
    pub fn from_pcap_linktype(linktype: u32) -> Option<Self> {
        // The upper bits of the pcap header's link-type field carry FCS information.
        match linktype & 0x0fff_ffff {
            1 => Some(Self::Ethernet),
            113 => Some(Self::LinuxSll),
            276 => Some(Self::LinuxSll2),
            // 101 is LINKTYPE_RAW; 12 and 14 are the platform DLT_RAW values found in old
            // files (the shared IPv6 capture uses 12); 228/229 are IPv4-only/IPv6-only raw.
            12 | 14 | 101 | 228 | 229 => Some(Self::RawIp),
            _ => None,
        }
    }
}

/// Protocol layer named in a [`DecodeError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    Link,
    Vlan,
    Ipv4,
    Ipv6,
    Ipv6Ext,
    Tcp,
    Udp,
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layer::Link => "link header",
            Layer::Vlan => "VLAN tag",
            Layer::Ipv4 => "IPv4 header",
            Layer::Ipv6 => "IPv6 header",
            Layer::Ipv6Ext => "IPv6 extension header",
            Layer::Tcp => "TCP header",
            Layer::Udp => "UDP header",
        })
    }
}

/// Why a frame could not be decoded. Each variant is counted separately by callers
/// ([`DecodeError::kind`] is the stable counter name).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The captured bytes end inside a header.
    #[error("truncated {layer} at byte {offset}: need {needed} bytes, have {available}")]
    Truncated {
        layer: Layer,
        offset: usize,
        needed: usize,
        available: usize,
    },
    /// A header field is impossible (bad version, header length below the minimum, ...).
    #[error("malformed {layer} at byte {offset}: {reason}")]
    Malformed {
        layer: Layer,
        offset: usize,
        reason: &'static str,
    },
    /// A well-formed frame that does not carry IPv4/IPv6 (ARP, LLC, LLDP, ...).
    #[error("not IP (ether type {ether_type:#06x})")]
    NonIp { ether_type: u16 },
    /// The capture's link type is not one we decode.
    #[error("unsupported link type {0}")]
    UnsupportedLink(u32),
    /// IP, but framed in a way we deliberately do not follow (more than two VLAN tags,
    /// an IPv6 extension chain longer than the kernel walks).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

impl DecodeError {
    /// Stable `snake_case` counter name for this error's variant.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::NonIp { .. } => "non_ip",
            DecodeError::UnsupportedLink(_) => "unsupported_link",
            DecodeError::Unsupported(_) => "unsupported",
        }
    }
}

/// Per-variant counts of [`DecodeError`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DecodeErrorCounts {
    pub truncated: u64,
    pub malformed: u64,
    pub non_ip: u64,
    pub unsupported_link: u64,
    pub unsupported: u64,
}

impl DecodeErrorCounts {
    pub fn record(&mut self, err: &DecodeError) {
        let slot = match err {
            DecodeError::Truncated { .. } => &mut self.truncated,
            DecodeError::Malformed { .. } => &mut self.malformed,
            DecodeError::NonIp { .. } => &mut self.non_ip,
            DecodeError::UnsupportedLink(_) => &mut self.unsupported_link,
            DecodeError::Unsupported(_) => &mut self.unsupported,
        };
        *slot += 1;
    }

    pub fn total(&self) -> u64 {
        self.truncated + self.malformed + self.non_ip + self.unsupported_link + self.unsupported
    }
}

/// Bytes of payload the kernel inspects to classify a segment (it loads exactly 8).
pub const CLASSIFY_HEAD_LEN: usize = 8;

/// HTTP/1.x method tokens recognised at the start of a TCP payload, each with its space.
pub const HTTP_METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// True when `payload` begins with an HTTP/1.x method token or the `HTTP/1.` status-line
/// prefix. Needs [`CLASSIFY_HEAD_LEN`] bytes, like the kernel.
pub fn is_http_head_start(payload: &[u8]) -> bool {
    payload.len() >= CLASSIFY_HEAD_LEN
        && (payload.starts_with(b"HTTP/1.") || HTTP_METHODS.iter().any(|m| payload.starts_with(m)))
}

/// True when `payload` begins with a TLS handshake record (type 0x16, version 3.0..=3.4)
/// whose first handshake message is a `ClientHello` (type 1).
pub fn is_tls_client_hello_start(payload: &[u8]) -> bool {
    payload.len() >= CLASSIFY_HEAD_LEN
        && payload[0] == 0x16
        && payload[1] == 0x03
        && payload[2] <= 0x04
        && payload[5] == 0x01
}

/// The kernel's rule for which packets deserve a ring-buffer record (see
/// `agent-ebpf/src/tap.rs::classify`; the two must stay in step).
///
/// L7 heads win over control flags: a FIN segment carrying an HTTP head is classified
/// [`RecordKind::HttpHead`], and the tracker still sees (and acts on) its FIN flag, so both
/// the request and the close are reported. Control flags decide only when the payload is
/// not an L7 head.
pub fn classify(meta: &PacketMeta<'_>) -> Option<RecordKind> {
    let Transport::Tcp(tcp) = meta.transport else {
        return None;
    };
    if is_http_head_start(meta.payload) {
        return Some(RecordKind::HttpHead);
    }
    if is_tls_client_hello_start(meta.payload) {
        return Some(RecordKind::TlsClientHello);
    }
    if tcp.flags.is_control() {
        return Some(RecordKind::TcpControl);
    }
    None
}

#[cfg(test)]
pub(crate) mod tests;
