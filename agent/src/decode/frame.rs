//! L2–L4 decoding with etherparse's header slices, walked by hand so that the length rules
//! match the kernel program (`agent-ebpf/src/tap.rs::walk`) and truncated heads decode.

use std::net::IpAddr;

use etherparse::{
    Ethernet2HeaderSlice, IpAuthHeaderSlice, Ipv4HeaderSlice, Ipv6FragmentHeaderSlice,
    Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice, TcpHeaderSlice, UdpHeaderSlice,
    err,
};

use super::{DecodeError, Layer, LinkType};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
/// Pre-standard `QinQ` outer tag still emitted by some switches.
const ETHERTYPE_QINQ_OLD: u16 = 0x9100;
/// Values below this in a type/length field are 802.3 lengths or Linux pseudo-protocols.
const ETHERTYPE_MIN: u16 = 0x0600;
const MAX_VLAN_TAGS: u8 = 2;
/// Same bound as the kernel walk: longer chains are reported, not guessed at.
const MAX_IPV6_EXT: usize = 6;
const SLL_LEN: usize = 16;
const SLL2_LEN: usize = 20;
/// `PACKET_OUTGOING` in the Linux cooked header's packet-type field.
const PACKET_OUTGOING: u16 = 4;
const ARPHRD_NETLINK: u16 = 824;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// TCP flag bits (byte 13 of the TCP header, the same byte the kernel ORs into flow stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    pub fn has(self, bits: u8) -> bool {
        self.0 & bits != 0
    }
    pub fn syn(self) -> bool {
        self.has(Self::SYN)
    }
    pub fn fin(self) -> bool {
        self.has(Self::FIN)
    }
    pub fn rst(self) -> bool {
        self.has(Self::RST)
    }
    pub fn ack(self) -> bool {
        self.has(Self::ACK)
    }
    /// SYN, FIN or RST: the flags that change connection state.
    pub fn is_control(self) -> bool {
        self.has(Self::SYN | Self::FIN | Self::RST)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpMeta {
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub window: u16,
}

/// What sits on top of IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp(TcpMeta),
    Udp,
    /// A non-first IP fragment: no transport header (ports are 0).
    Fragment {
        proto: u8,
    },
    /// Another IP protocol (ICMP, ESP, ...): not parsed further (ports are 0).
    Other {
        proto: u8,
    },
}

/// Everything the later stages need from one frame. `payload` borrows the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketMeta<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// 0 unless TCP/UDP.
    pub src_port: u16,
    pub dst_port: u16,
    /// IP protocol number of the transport (after IPv6 extension headers).
    pub ip_proto: u8,
    pub transport: Transport,
    /// The captured part of the TCP/UDP payload (Ethernet padding excluded); empty for other
    /// protocols and fragments.
    pub payload: &'a [u8],
    /// The on-wire TCP/UDP payload length (0 for other protocols and fragments).
    pub payload_len: u32,
    /// Offset of the TCP/UDP payload in the frame (= header bytes before it).
    pub payload_offset: u32,
    /// Original frame length on the wire.
    pub frame_len: u32,
    /// False when the IP length field was 0 or inconsistent with the frame (TSO/GSO
    /// super-packets, jumbograms) and `payload_len` was derived from the frame length.
    pub ip_len_from_header: bool,
    /// Number of VLAN tags that were skipped (0..=2).
    pub vlan_tags: u8,
    /// A Linux cooked capture marked the packet as sent by the capturing host.
    pub link_outgoing: bool,
}

impl PacketMeta<'_> {
    pub fn tcp(&self) -> Option<TcpMeta> {
        match self.transport {
            Transport::Tcp(t) => Some(t),
            _ => None,
        }
    }
}

fn tail(data: &[u8], offset: usize) -> &[u8] {
    data.get(offset..).unwrap_or_default()
}

fn be16(data: &[u8], offset: usize) -> u16 {
    match data.get(offset..offset + 2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

fn truncated(layer: Layer, offset: usize, needed: usize, available: usize) -> DecodeError {
    DecodeError::Truncated {
        layer,
        offset,
        needed,
        available,
    }
}

fn from_len_error(layer: Layer, offset: usize, e: &err::LenError) -> DecodeError {
    truncated(layer, offset, e.required_len, e.len)
}

/// Result of the link-layer step: where IP starts and with which ether type.
struct Link {
    l3: usize,
    ether_type: u16,
    vlan_tags: u8,
    outgoing: bool,
}

fn decode_link(link: LinkType, data: &[u8]) -> Result<Link, DecodeError> {
    let (mut l3, mut ether_type, outgoing) = match link {
        LinkType::Ethernet => {
            let eth = Ethernet2HeaderSlice::from_slice(data)
                .map_err(|e| from_len_error(Layer::Link, 0, &e))?;
            (eth.slice().len(), eth.ether_type().0, false)
        }
        LinkType::LinuxSll => {
            if data.len() < SLL_LEN {
                return Err(truncated(Layer::Link, 0, SLL_LEN, data.len()));
            }
            if be16(data, 2) == ARPHRD_NETLINK {
                return Err(DecodeError::NonIp {
                    ether_type: be16(data, 14),
                });
            }
            (SLL_LEN, be16(data, 14), be16(data, 0) == PACKET_OUTGOING)
        }
        LinkType::LinuxSll2 => {
            if data.len() < SLL2_LEN {
                return Err(truncated(Layer::Link, 0, SLL2_LEN, data.len()));
            }
            if be16(data, 8) == ARPHRD_NETLINK {
                return Err(DecodeError::NonIp {
                    ether_type: be16(data, 0),
                });
            }
            (
                SLL2_LEN,
                be16(data, 0),
                u16::from(data[10]) == PACKET_OUTGOING,
            )
        }
        LinkType::RawIp => {
            let Some(first) = data.first() else {
                return Err(truncated(Layer::Link, 0, 1, 0));
            };
            let ether_type = match first >> 4 {
                4 => ETHERTYPE_IPV4,
                6 => ETHERTYPE_IPV6,
                _ => {
                    return Err(DecodeError::Malformed {
                        layer: Layer::Link,
                        offset: 0,
                        reason: "raw IP packet with a version other than 4 or 6",
                    });
                }
            };
            return Ok(Link {
                l3: 0,
                ether_type,
                vlan_tags: 0,
                outgoing: false,
            });
        }
    };
    let mut vlan_tags = 0;
    while matches!(
        ether_type,
        ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD
    ) {
        if vlan_tags == MAX_VLAN_TAGS {
            return Err(DecodeError::Unsupported("more than two VLAN tags"));
        }
        let tag = SingleVlanHeaderSlice::from_slice(tail(data, l3))
            .map_err(|e| from_len_error(Layer::Vlan, l3, &e))?;
        ether_type = tag.ether_type().0;
        l3 += tag.slice().len();
        vlan_tags += 1;
    }
    if ether_type < ETHERTYPE_MIN {
        return Err(DecodeError::NonIp { ether_type });
    }
    Ok(Link {
        l3,
        ether_type,
        vlan_tags,
        outgoing,
    })
}

/// Result of the network-layer step.
struct Net {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// Offset of the transport header.
    l4: usize,
    /// End of the IP datagram in frame coordinates (from the length field, or the frame).
    ip_end: usize,
    ip_len_from_header: bool,
    /// False for non-first fragments.
    has_l4: bool,
}

/// Chooses the IP datagram length: the header's value when it is plausible, else what the
/// frame leaves after the link header. 0 is what TSO/GSO and BIG TCP super-packets carry;
/// a value beyond the frame is a lie we cannot act on. A value below the frame is normal
/// (Ethernet padding) and is what keeps padding out of `payload_len`.
fn ip_datagram_len(header_value: usize, min: usize, l3_wire: usize) -> (usize, bool) {
    if header_value == 0 || header_value < min || header_value > l3_wire {
        (l3_wire, false)
    } else {
        (header_value, true)
    }
}

fn decode_ipv4(data: &[u8], l3: usize, l3_wire: usize) -> Result<Net, DecodeError> {
    use err::ipv4::{HeaderError, HeaderSliceError};
    let ip = Ipv4HeaderSlice::from_slice(tail(data, l3)).map_err(|e| match e {
        HeaderSliceError::Len(l) => from_len_error(Layer::Ipv4, l3, &l),
        HeaderSliceError::Content(c) => DecodeError::Malformed {
            layer: Layer::Ipv4,
            offset: l3,
            reason: match c {
                HeaderError::UnexpectedVersion { .. } => "version is not 4",
                HeaderError::HeaderLengthSmallerThanHeader { .. } => "header length below 20",
            },
        },
    })?;
    let header_len = ip.slice().len();
    let (ip_len, from_header) = ip_datagram_len(usize::from(ip.total_len()), header_len, l3_wire);
    Ok(Net {
        src: IpAddr::V4(ip.source_addr()),
        dst: IpAddr::V4(ip.destination_addr()),
        proto: ip.protocol().0,
        l4: l3 + header_len,
        ip_end: l3 + ip_len,
        ip_len_from_header: from_header,
        has_l4: ip.fragments_offset().value() == 0,
    })
}

fn decode_ipv6(data: &[u8], l3: usize, l3_wire: usize) -> Result<Net, DecodeError> {
    use err::ipv6::HeaderSliceError;
    let ip = Ipv6HeaderSlice::from_slice(tail(data, l3)).map_err(|e| match e {
        HeaderSliceError::Len(l) => from_len_error(Layer::Ipv6, l3, &l),
        HeaderSliceError::Content(_) => DecodeError::Malformed {
            layer: Layer::Ipv6,
            offset: l3,
            reason: "version is not 6",
        },
    })?;
    let header_len = ip.slice().len();
    let payload_length = usize::from(ip.payload_length());
    // A payload length of 0 marks jumbograms and BIG TCP GSO packets.
    let declared = if payload_length == 0 {
        0
    } else {
        header_len + payload_length
    };
    let (ip_len, from_header) = ip_datagram_len(declared, header_len, l3_wire);
    let ip_end = l3 + ip_len;
    let mut next = ip.next_header().0;
    let mut off = l3 + header_len;
    let mut has_l4 = true;
    let mut done = false;
    for _ in 0..MAX_IPV6_EXT {
        let len = match next {
            // hop-by-hop, routing, destination options: (len + 1) * 8 bytes
            0 | 43 | 60 => {
                let ext = Ipv6RawExtHeaderSlice::from_slice(tail(data, off))
                    .map_err(|e| from_len_error(Layer::Ipv6Ext, off, &e))?;
                next = ext.next_header().0;
                ext.slice().len()
            }
            // fragment: only the first fragment carries the transport header
            44 => {
                let frag = Ipv6FragmentHeaderSlice::from_slice(tail(data, off))
                    .map_err(|e| from_len_error(Layer::Ipv6Ext, off, &e))?;
                if frag.fragment_offset().value() != 0 {
                    has_l4 = false;
                }
                next = frag.next_header().0;
                frag.slice().len()
            }
            // authentication header: (len + 2) * 4 bytes
            51 => {
                use err::ip_auth::HeaderSliceError;
                let auth = IpAuthHeaderSlice::from_slice(tail(data, off)).map_err(|e| match e {
                    HeaderSliceError::Len(l) => from_len_error(Layer::Ipv6Ext, off, &l),
                    HeaderSliceError::Content(_) => DecodeError::Malformed {
                        layer: Layer::Ipv6Ext,
                        offset: off,
                        reason: "authentication header with zero payload length",
                    },
                })?;
                next = auth.next_header().0;
                auth.slice().len()
            }
            _ => {
                done = true;
                break;
            }
        };
        off += len;
        if off > ip_end {
            return Err(DecodeError::Malformed {
                layer: Layer::Ipv6Ext,
                offset: off - len,
                reason: "extension headers run past the IPv6 payload length",
            });
        }
    }
    if !done {
        // Like the kernel walk: after six extension headers we stop rather than guess.
        return Err(DecodeError::Unsupported(
            "IPv6 extension header chain of six or more headers",
        ));
    }
    Ok(Net {
        src: IpAddr::V6(ip.source_addr()),
        dst: IpAddr::V6(ip.destination_addr()),
        proto: next,
        l4: off,
        ip_end,
        ip_len_from_header: from_header,
        has_l4,
    })
}

/// Decodes one frame. `data` may be a captured head of the frame; `wire_len` is the
/// original frame length (values below `data.len()` are raised to it).
pub fn decode_frame(
    link: LinkType,
    data: &[u8],
    wire_len: u32,
) -> Result<PacketMeta<'_>, DecodeError> {
    let captured = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let wire_len = wire_len.max(captured);
    let l2 = decode_link(link, data)?;
    let l3_wire = (wire_len as usize).saturating_sub(l2.l3);
    let net = match l2.ether_type {
        ETHERTYPE_IPV4 => decode_ipv4(data, l2.l3, l3_wire)?,
        ETHERTYPE_IPV6 => decode_ipv6(data, l2.l3, l3_wire)?,
        other => return Err(DecodeError::NonIp { ether_type: other }),
    };
    let mut meta = PacketMeta {
        src: net.src,
        dst: net.dst,
        src_port: 0,
        dst_port: 0,
        ip_proto: net.proto,
        transport: Transport::Other { proto: net.proto },
        payload: &[],
        payload_len: 0,
        payload_offset: u32::try_from(net.ip_end).unwrap_or(u32::MAX),
        frame_len: wire_len,
        ip_len_from_header: net.ip_len_from_header,
        vlan_tags: l2.vlan_tags,
        link_outgoing: l2.outgoing,
    };
    if !net.has_l4 {
        meta.transport = Transport::Fragment { proto: net.proto };
        return Ok(meta);
    }
    let l4 = net.l4;
    let header_len = match net.proto {
        IPPROTO_TCP => {
            use err::tcp::HeaderSliceError;
            let tcp = TcpHeaderSlice::from_slice(tail(data, l4)).map_err(|e| match e {
                HeaderSliceError::Len(l) => {
                    transport_len_error(Layer::Tcp, l4, l.required_len, l.len, net.ip_end)
                }
                HeaderSliceError::Content(_) => DecodeError::Malformed {
                    layer: Layer::Tcp,
                    offset: l4,
                    reason: "data offset below 5",
                },
            })?;
            meta.src_port = tcp.source_port();
            meta.dst_port = tcp.destination_port();
            meta.transport = Transport::Tcp(TcpMeta {
                seq: tcp.sequence_number(),
                ack: tcp.acknowledgment_number(),
                flags: TcpFlags(tcp.slice()[13]),
                window: tcp.window_size(),
            });
            tcp.slice().len()
        }
        IPPROTO_UDP => {
            let udp = UdpHeaderSlice::from_slice(tail(data, l4)).map_err(|l| {
                transport_len_error(Layer::Udp, l4, l.required_len, l.len, net.ip_end)
            })?;
            meta.src_port = udp.source_port();
            meta.dst_port = udp.destination_port();
            meta.transport = Transport::Udp;
            udp.slice().len()
        }
        _ => return Ok(meta),
    };
    let payload_offset = l4 + header_len;
    if payload_offset > net.ip_end {
        return Err(DecodeError::Malformed {
            layer: if net.proto == IPPROTO_TCP {
                Layer::Tcp
            } else {
                Layer::Udp
            },
            offset: l4,
            reason: "transport header runs past the IP length",
        });
    }
    let captured_end = data.len().min(net.ip_end);
    meta.payload = data.get(payload_offset..captured_end).unwrap_or_default();
    meta.payload_len = u32::try_from(net.ip_end - payload_offset).unwrap_or(u32::MAX);
    meta.payload_offset = u32::try_from(payload_offset).unwrap_or(u32::MAX);
    Ok(meta)
}

/// A transport header that does not fit: past the IP datagram it is malformed, past the
/// captured bytes only truncated.
fn transport_len_error(
    layer: Layer,
    l4: usize,
    needed: usize,
    available: usize,
    ip_end: usize,
) -> DecodeError {
    if l4 + needed > ip_end {
        DecodeError::Malformed {
            layer,
            offset: l4,
            reason: "transport header runs past the IP length",
        }
    } else {
        truncated(layer, l4, needed, available)
    }
}
