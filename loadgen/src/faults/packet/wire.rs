//! Ethernet/IPv4/TCP and ARP frames: building (with the faults applied) and parsing.

use std::net::Ipv4Addr;

use pnet::packet::Packet as _;
use pnet::packet::arp::{
    ArpHardwareTypes, ArpOperation, ArpOperations, ArpPacket, MutableArpPacket,
};
use pnet::packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet::packet::ip::IpNextHeaderProtocols;
use pnet::packet::ipv4::{self, Ipv4Flags, Ipv4Packet, MutableIpv4Packet};
use pnet::packet::tcp::{self, MutableTcpPacket, TcpPacket};
use pnet::util::MacAddr;

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const TCP_LEN: usize = 20;
/// Offset of the TCP checksum in a frame we built (no IP options).
const TCP_CHECKSUM_AT: usize = ETH_LEN + IP_LEN + 16;

/// Both ends of our connection.
#[derive(Clone, Copy, Debug)]
pub(super) struct Endpoints {
    pub our_mac: MacAddr,
    pub peer_mac: MacAddr,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

/// An outgoing segment.
#[derive(Clone, Copy, Debug)]
pub(super) struct Out<'a> {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// MSS option, for SYN.
    pub mss: Option<u16>,
    pub payload: &'a [u8],
}

/// A whole Ethernet frame carrying `seg`, checksums correct.
pub(super) fn tcp_frame(ep: &Endpoints, ip_id: u16, seg: &Out<'_>) -> Vec<u8> {
    let options: &[u8] = match seg.mss {
        Some(_) => &[0; 4],
        None => &[],
    };
    let tcp_len = TCP_LEN + options.len() + seg.payload.len();
    let ip_total = IP_LEN + tcp_len;
    let mut frame = vec![0u8; ETH_LEN + ip_total];

    // The buffers are sized above, so the packet views below always fit.
    let mut eth = MutableEthernetPacket::new(&mut frame).expect("frame fits an Ethernet header");
    eth.set_destination(ep.peer_mac);
    eth.set_source(ep.our_mac);
    eth.set_ethertype(EtherTypes::Ipv4);

    {
        let tcp_buf = &mut frame[ETH_LEN + IP_LEN..];
        if let Some(mss) = seg.mss {
            let [hi, lo] = mss.to_be_bytes();
            tcp_buf[TCP_LEN..TCP_LEN + 4].copy_from_slice(&[2, 4, hi, lo]);
        }
        tcp_buf[TCP_LEN + options.len()..].copy_from_slice(seg.payload);
        let mut tcp = MutableTcpPacket::new(tcp_buf).expect("buffer fits a TCP header");
        tcp.set_source(ep.sport);
        tcp.set_destination(ep.dport);
        tcp.set_sequence(seg.seq);
        tcp.set_acknowledgement(seg.ack);
        tcp.set_data_offset(((TCP_LEN + options.len()) / 4) as u8);
        tcp.set_flags(seg.flags);
        tcp.set_window(seg.window);
        let sum = tcp::ipv4_checksum(&tcp.to_immutable(), &ep.src, &ep.dst);
        tcp.set_checksum(sum);
    }

    let mut ip = MutableIpv4Packet::new(&mut frame[ETH_LEN..]).expect("buffer fits IPv4");
    ip.set_version(4);
    ip.set_header_length((IP_LEN / 4) as u8);
    ip.set_total_length(ip_total as u16);
    ip.set_identification(ip_id);
    ip.set_flags(Ipv4Flags::DontFragment);
    ip.set_ttl(64);
    ip.set_next_level_protocol(IpNextHeaderProtocols::Tcp);
    ip.set_source(ep.src);
    ip.set_destination(ep.dst);
    let sum = ipv4::checksum(&ip.to_immutable());
    ip.set_checksum(sum);
    frame
}

/// Spoils the TCP checksum of a frame from [`tcp_frame`]. XOR with 0x5555 cannot produce the
/// other one's-complement encoding of the same sum (that would need 0xffff).
pub(super) fn corrupt_tcp_checksum(frame: &mut [u8]) {
    frame[TCP_CHECKSUM_AT] ^= 0x55;
    frame[TCP_CHECKSUM_AT + 1] ^= 0x55;
}

/// How many bytes of a frame with `payload` TCP payload bytes to send so that the frame ends
/// before the IPv4 total length says it does: half the payload is cut (at least one byte).
pub(super) fn truncated_len(frame_len: usize, payload: usize) -> usize {
    frame_len - (payload / 2).max(1)
}

/// An ARP request or reply on Ethernet for IPv4.
pub(super) fn arp_frame(
    op: ArpOperation,
    eth_dst: MacAddr,
    sender: (MacAddr, Ipv4Addr),
    target: (MacAddr, Ipv4Addr),
) -> Vec<u8> {
    let mut frame = vec![0u8; ETH_LEN + 28];
    let mut eth = MutableEthernetPacket::new(&mut frame).expect("frame fits an Ethernet header");
    eth.set_destination(eth_dst);
    eth.set_source(sender.0);
    eth.set_ethertype(EtherTypes::Arp);
    let mut arp = MutableArpPacket::new(&mut frame[ETH_LEN..]).expect("buffer fits ARP");
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(op);
    arp.set_sender_hw_addr(sender.0);
    arp.set_sender_proto_addr(sender.1);
    arp.set_target_hw_addr(target.0);
    arp.set_target_proto_addr(target.1);
    frame
}

/// A received TCP segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TcpIn {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub mss: Option<u16>,
    pub payload: Vec<u8>,
}

/// A received frame we care about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Incoming {
    Tcp(TcpIn),
    ArpRequest {
        sender: (MacAddr, Ipv4Addr),
        target: Ipv4Addr,
    },
    ArpReply {
        sender: (MacAddr, Ipv4Addr),
    },
}

/// Ethernet source and destination, and the parsed content when it is IPv4/TCP or ARP.
pub(super) fn parse(frame: &[u8]) -> Option<(MacAddr, MacAddr, Incoming)> {
    let eth = EthernetPacket::new(frame)?;
    let (src, dst) = (eth.get_source(), eth.get_destination());
    let incoming = match eth.get_ethertype() {
        EtherTypes::Arp => parse_arp(eth.payload())?,
        EtherTypes::Ipv4 => Incoming::Tcp(parse_tcp(eth.payload())?),
        _ => return None,
    };
    Some((src, dst, incoming))
}

fn parse_arp(bytes: &[u8]) -> Option<Incoming> {
    let arp = ArpPacket::new(bytes)?;
    if arp.get_protocol_type() != EtherTypes::Ipv4 || arp.get_hw_addr_len() != 6 {
        return None;
    }
    let sender = (arp.get_sender_hw_addr(), arp.get_sender_proto_addr());
    match arp.get_operation() {
        ArpOperations::Request => Some(Incoming::ArpRequest {
            sender,
            target: arp.get_target_proto_addr(),
        }),
        ArpOperations::Reply => Some(Incoming::ArpReply { sender }),
        _ => None,
    }
}

fn parse_tcp(bytes: &[u8]) -> Option<TcpIn> {
    let ip = Ipv4Packet::new(bytes)?;
    let ihl = usize::from(ip.get_header_length()) * 4;
    let more_fragments = ip.get_flags() & Ipv4Flags::MoreFragments != 0;
    if ip.get_version() != 4
        || ihl < IP_LEN
        || ip.get_next_level_protocol() != IpNextHeaderProtocols::Tcp
        || more_fragments
        || ip.get_fragment_offset() != 0
    {
        return None;
    }
    // The frame may carry Ethernet padding past the IP packet; a GSO frame handed up before
    // segmentation may carry total length 0, meaning "the rest of the frame".
    let total = match usize::from(ip.get_total_length()) {
        0 => bytes.len(),
        n => n.min(bytes.len()),
    };
    let tcp_bytes = bytes.get(ihl..total)?;
    let tcp = TcpPacket::new(tcp_bytes)?;
    let doff = usize::from(tcp.get_data_offset()) * 4;
    if doff < TCP_LEN || doff > tcp_bytes.len() {
        return None;
    }
    Some(TcpIn {
        src: ip.get_source(),
        dst: ip.get_destination(),
        sport: tcp.get_source(),
        dport: tcp.get_destination(),
        seq: tcp.get_sequence(),
        ack: tcp.get_acknowledgement(),
        flags: tcp.get_flags(),
        mss: mss_option(&tcp_bytes[TCP_LEN..doff]),
        payload: tcp_bytes[doff..].to_vec(),
    })
}

/// The MSS option's value, if present and well formed.
fn mss_option(mut options: &[u8]) -> Option<u16> {
    while let Some(&kind) = options.first() {
        match kind {
            0 => return None,
            1 => options = &options[1..],
            _ => {
                let len = usize::from(*options.get(1)?);
                if len < 2 || len > options.len() {
                    return None;
                }
                if kind == 2 && len == 4 {
                    return Some(u16::from_be_bytes([options[2], options[3]]));
                }
                options = &options[len..];
            }
        }
    }
    None
}

/// `a` is after `b` in sequence space.
pub(super) fn seq_gt(a: u32, b: u32) -> bool {
    a.wrapping_sub(b).cast_signed() > 0
}

/// `a` is `b` or after it.
pub(super) fn seq_ge(a: u32, b: u32) -> bool {
    a.wrapping_sub(b).cast_signed() >= 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use pnet::packet::tcp::TcpFlags;

    fn endpoints() -> Endpoints {
        Endpoints {
            our_mac: MacAddr::new(2, 0x5a, 10, 0, 0, 3),
            peer_mac: MacAddr::new(2, 0, 0, 0, 0, 2),
            src: Ipv4Addr::new(10, 0, 0, 3),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            sport: 40000,
            dport: 8080,
        }
    }

    fn tcp_checksum_ok(frame: &[u8]) -> bool {
        let ep = endpoints();
        let tcp = TcpPacket::new(&frame[ETH_LEN + IP_LEN..]).expect("tcp");
        tcp::ipv4_checksum(&tcp, &ep.src, &ep.dst) == tcp.get_checksum()
    }

    #[test]
    fn frames_round_trip_and_faults_apply() {
        let ep = endpoints();
        let seg = Out {
            seq: 0xffff_fff0,
            ack: 7,
            flags: TcpFlags::SYN,
            window: 65535,
            mss: Some(1460),
            payload: b"",
        };
        let frame = tcp_frame(&ep, 1, &seg);
        assert!(tcp_checksum_ok(&frame));
        let ip = Ipv4Packet::new(&frame[ETH_LEN..]).expect("ip");
        assert_eq!(ipv4::checksum(&ip), ip.get_checksum());
        let (src, dst, Incoming::Tcp(parsed)) = parse(&frame).expect("parses") else {
            panic!("not TCP");
        };
        assert_eq!((src, dst), (ep.our_mac, ep.peer_mac));
        assert_eq!(parsed.mss, Some(1460));
        assert_eq!(parsed.seq, 0xffff_fff0);
        assert_eq!(parsed.flags, TcpFlags::SYN);

        let data = Out {
            payload: b"GET / HTTP/1.1\r\n",
            mss: None,
            flags: TcpFlags::ACK | TcpFlags::PSH,
            ..seg
        };
        let mut frame = tcp_frame(&ep, 2, &data);
        let Some((_, _, Incoming::Tcp(parsed))) = parse(&frame) else {
            panic!("not TCP");
        };
        assert_eq!(parsed.payload, data.payload);
        // Ethernet padding is not payload.
        let mut padded = frame.clone();
        padded.extend_from_slice(&[0; 8]);
        assert_eq!(parse(&padded), parse(&frame));

        corrupt_tcp_checksum(&mut frame);
        assert!(!tcp_checksum_ok(&frame));
        let cut = truncated_len(frame.len(), data.payload.len());
        assert_eq!(frame.len() - cut, data.payload.len() / 2);
        let total = usize::from(
            Ipv4Packet::new(&frame[ETH_LEN..])
                .expect("ip")
                .get_total_length(),
        );
        assert!(cut - ETH_LEN < total);
    }

    #[test]
    fn arp_round_trips() {
        let ep = endpoints();
        let frame = arp_frame(
            ArpOperations::Request,
            MacAddr::broadcast(),
            (ep.our_mac, ep.src),
            (MacAddr::zero(), ep.dst),
        );
        let (_, dst, incoming) = parse(&frame).expect("parses");
        assert_eq!(dst, MacAddr::broadcast());
        assert_eq!(
            incoming,
            Incoming::ArpRequest {
                sender: (ep.our_mac, ep.src),
                target: ep.dst
            }
        );
    }

    #[test]
    fn sequence_comparisons_wrap() {
        assert!(seq_gt(5, 0xffff_fff0));
        assert!(!seq_gt(0xffff_fff0, 5));
        assert!(seq_ge(7, 7));
    }

    #[test]
    fn mss_option_is_found_among_others() {
        assert_eq!(mss_option(&[1, 1, 2, 4, 0x05, 0xb4]), Some(1460));
        assert_eq!(mss_option(&[4, 2, 2, 4, 0x02, 0x18]), Some(536));
        assert_eq!(mss_option(&[2, 4, 5]), None);
        assert_eq!(mss_option(&[8, 0]), None);
    }
}
