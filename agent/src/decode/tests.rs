//! Decoder tests, and frame builders shared with the events tests.

use std::net::IpAddr;
use std::path::PathBuf;

use etherparse::{PacketBuilder, TcpHeader};
use proptest::prelude::*;
use shadowtap_common::RecordKind;

use super::pcap::PcapReader;
use super::*;

/// `../shared/data/pcap` relative to the repository, or `$SHADOWTAP_SHARED_DATA/pcap`.
pub(crate) fn shared_pcap_dir() -> PathBuf {
    std::env::var_os("SHADOWTAP_SHARED_DATA")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
            PathBuf::from,
        )
        .join("pcap")
}

/// Every frame of every shared pcap: (file name, link type, bytes, wire length).
/// (file name, link type, frame bytes, wire length)
pub(crate) type SharedFrame = (String, LinkType, Vec<u8>, u32);

pub(crate) fn shared_frames() -> Vec<SharedFrame> {
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(shared_pcap_dir())
        .expect("shared pcap dir (set SHADOWTAP_SHARED_DATA)")
        .map(|e| e.expect("dir entry").path())
        .collect();
    paths.sort();
    for path in paths {
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let bytes = std::fs::read(&path).expect("read pcap");
        let mut reader = PcapReader::new(&bytes[..]).expect("pcap header");
        while let Some(p) = reader.next_packet().expect("pcap record") {
            let link = LinkType::from_pcap_linktype(p.linktype).expect("supported link type");
            out.push((name.clone(), link, p.data.to_vec(), p.orig_len));
        }
    }
    out
}

pub(crate) const CLIENT: [u8; 4] = [10, 0, 0, 1];
pub(crate) const SERVER: [u8; 4] = [10, 0, 0, 2];

/// An Ethernet/IPv4/TCP frame. `flags` uses [`TcpFlags`] bits.
pub(crate) fn tcp4(
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    seq: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut tcp = TcpHeader::new(src.1, dst.1, seq, 64_000);
    let f = TcpFlags(flags);
    tcp.fin = f.fin();
    tcp.syn = f.syn();
    tcp.rst = f.rst();
    tcp.psh = f.has(TcpFlags::PSH);
    if f.ack() {
        tcp.ack = true;
        tcp.acknowledgment_number = 1;
    }
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.0, dst.0, 64)
        .tcp_header(tcp)
        .write(&mut out, payload)
        .expect("build frame");
    out
}

fn decode_eth(frame: &[u8]) -> PacketMeta<'_> {
    decode_frame(LinkType::Ethernet, frame, frame.len() as u32).expect("decodes")
}

#[test]
fn ipv4_tcp_fields() {
    let frame = tcp4(
        (CLIENT, 40_000),
        (SERVER, 80),
        1234,
        TcpFlags::PSH | TcpFlags::ACK,
        b"GET / HTTP/1.1\r\n\r\n",
    );
    let m = decode_eth(&frame);
    assert_eq!(m.src, IpAddr::from(CLIENT));
    assert_eq!(m.dst, IpAddr::from(SERVER));
    assert_eq!((m.src_port, m.dst_port), (40_000, 80));
    let tcp = m.tcp().expect("tcp");
    assert_eq!(tcp.seq, 1234);
    assert_eq!(tcp.flags.0, TcpFlags::PSH | TcpFlags::ACK);
    assert_eq!(m.payload, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(m.payload_len, 18);
    assert_eq!(m.payload_offset, 14 + 20 + 20);
    assert!(m.ip_len_from_header);
    assert_eq!(classify(&m), Some(RecordKind::HttpHead));
}

#[test]
fn ethernet_padding_is_not_payload() {
    let mut frame = tcp4((CLIENT, 1), (SERVER, 2), 0, TcpFlags::ACK, b"");
    frame.resize(60, 0xee);
    let m = decode_eth(&frame);
    assert_eq!(m.payload_len, 0);
    assert!(m.payload.is_empty());
    assert_eq!(m.frame_len, 60);
}

#[test]
fn tso_total_length_zero_falls_back_to_wire_length() {
    let payload = vec![b'x'; 100];
    let mut frame = tcp4((CLIENT, 1), (SERVER, 2), 0, TcpFlags::ACK, &payload);
    frame[16] = 0;
    frame[17] = 0;
    // The kernel saw a 64 KB super-packet but copied only its head.
    let m = decode_frame(LinkType::Ethernet, &frame[..80], 65_000).expect("decodes");
    assert!(!m.ip_len_from_header);
    assert_eq!(m.payload_len, 65_000 - 14 - 20 - 20);
    assert_eq!(m.payload.len(), 80 - 54);
    // A length beyond the frame is inconsistent too: same fallback.
    frame[16] = 0xff;
    frame[17] = 0xff;
    let m = decode_eth(&frame);
    assert!(!m.ip_len_from_header);
    assert_eq!(m.payload_len, 100);
}

#[test]
fn captured_head_keeps_wire_payload_length() {
    let payload = vec![b'y'; 1000];
    let frame = tcp4((CLIENT, 1), (SERVER, 2), 0, TcpFlags::ACK, &payload);
    let m = decode_frame(LinkType::Ethernet, &frame[..64], frame.len() as u32).expect("decodes");
    assert_eq!(m.payload_len, 1000);
    assert_eq!(m.payload, &payload[..10]);
}

#[test]
fn vlan_tags_one_two_three() {
    let mut single = Vec::new();
    PacketBuilder::ethernet2([0; 6], [1; 6])
        .single_vlan(etherparse::VlanId::try_new(7).expect("vlan id"))
        .ipv4(CLIENT, SERVER, 9)
        .udp(5353, 53)
        .write(&mut single, b"q")
        .expect("build");
    let m = decode_eth(&single);
    assert_eq!(
        (m.vlan_tags, m.transport, m.payload),
        (1, Transport::Udp, &b"q"[..])
    );

    let mut double = Vec::new();
    PacketBuilder::ethernet2([0; 6], [1; 6])
        .double_vlan(
            etherparse::VlanId::try_new(7).expect("vlan id"),
            etherparse::VlanId::try_new(8).expect("vlan id"),
        )
        .ipv6([1; 16], [2; 16], 9)
        .udp(1, 2)
        .write(&mut double, b"zz")
        .expect("build");
    let m = decode_eth(&double);
    assert_eq!(m.vlan_tags, 2);
    assert_eq!(m.src, IpAddr::from([1u8; 16]));
    assert_eq!(m.payload_len, 2);

    // A third tag: insert one more 802.1Q tag after the MACs.
    let mut triple = double[..12].to_vec();
    triple.extend_from_slice(&[0x81, 0x00, 0x00, 0x09]);
    triple.extend_from_slice(&double[12..]);
    assert!(matches!(
        decode_frame(LinkType::Ethernet, &triple, triple.len() as u32),
        Err(DecodeError::Unsupported(_))
    ));
}

/// IPv6 with hop-by-hop, routing, destination options and a fragment header.
fn ipv6_with_extensions(frag_offset: u16, more: bool) -> Vec<u8> {
    let tcp = {
        let mut v = Vec::new();
        TcpHeader::new(443, 55_000, 77, 1000)
            .write(&mut v)
            .expect("tcp header");
        v.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        v
    };
    let mut exts = Vec::new();
    exts.extend_from_slice(&[43, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop → routing (PadN)
    exts.extend_from_slice(&[60, 2, 0, 0, 0, 0, 0, 0]); // routing → dest-opts, 24 bytes
    exts.extend_from_slice(&[0; 16]);
    exts.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]); // dest-opts → fragment
    let frag = (frag_offset << 3) | u16::from(more);
    exts.extend_from_slice(&[6, 0]);
    exts.extend_from_slice(&frag.to_be_bytes());
    exts.extend_from_slice(&[0, 0, 0, 1]);
    let payload_len = (exts.len() + tcp.len()) as u16;
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&payload_len.to_be_bytes());
    f.extend_from_slice(&[0, 64]); // next header hop-by-hop
    f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend_from_slice(&exts);
    f.extend_from_slice(&tcp);
    f
}

#[test]
fn ipv6_extension_headers_and_fragments() {
    let first = ipv6_with_extensions(0, true);
    let m = decode_eth(&first);
    assert_eq!((m.src_port, m.dst_port), (443, 55_000));
    assert_eq!(m.payload, b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(m.payload_len, 19);
    assert_eq!(classify(&m), Some(RecordKind::HttpHead));

    let later = ipv6_with_extensions(185, false);
    let m = decode_eth(&later);
    assert_eq!(m.transport, Transport::Fragment { proto: 6 });
    assert_eq!((m.src_port, m.payload_len, m.payload), (0, 0, &[][..]));
    assert_eq!(classify(&m), None);
}

#[test]
fn ipv4_fragments_and_options() {
    let mut frame = tcp4((CLIENT, 1), (SERVER, 2), 0, TcpFlags::SYN, b"");
    // Later fragment: offset 100 (in 8-byte units).
    frame[20] = 0;
    frame[21] = 100;
    let m = decode_eth(&frame);
    assert_eq!(m.transport, Transport::Fragment { proto: 6 });
    // First fragment with MF: transport is parsed.
    frame[20] = 0x20;
    frame[21] = 0;
    assert!(decode_eth(&frame).tcp().is_some());

    let mut with_options = Vec::new();
    let mut ip = etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, CLIENT, SERVER)
        .expect("ipv4 header");
    ip.options = [1, 1, 1, 0][..].try_into().expect("options");
    PacketBuilder::ethernet2([0; 6], [1; 6])
        .ip(etherparse::IpHeaders::Ipv4(
            ip,
            etherparse::Ipv4Extensions::default(),
        ))
        .udp(7, 9)
        .write(&mut with_options, b"abc")
        .expect("build");
    let m = decode_eth(&with_options);
    assert_eq!((m.src_port, m.dst_port, m.payload), (7, 9, &b"abc"[..]));
    assert_eq!(m.payload_offset, 14 + 24 + 8);
}

#[test]
fn linux_cooked_and_raw_links_see_the_same_packet() {
    let frame = tcp4((CLIENT, 9), (SERVER, 80), 5, TcpFlags::SYN, b"");
    let eth = decode_eth(&frame);
    let ip = &frame[14..];

    let mut sll = vec![0, 4, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x08, 0x00];
    sll.extend_from_slice(ip);
    let m = decode_frame(LinkType::LinuxSll, &sll, sll.len() as u32).expect("sll");
    assert!(m.link_outgoing);

    let mut sll2 = vec![
        0x08, 0x00, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0,
    ];
    sll2.extend_from_slice(ip);
    let m2 = decode_frame(LinkType::LinuxSll2, &sll2, sll2.len() as u32).expect("sll2");
    assert!(!m2.link_outgoing);

    let raw = decode_frame(LinkType::RawIp, ip, ip.len() as u32).expect("raw");
    for other in [m, m2, raw] {
        assert_eq!(
            (
                other.src,
                other.dst,
                other.src_port,
                other.dst_port,
                other.tcp()
            ),
            (eth.src, eth.dst, eth.src_port, eth.dst_port, eth.tcp())
        );
    }
}

#[test]
fn non_ip_and_bad_versions() {
    let mut arp = vec![0xff; 12];
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    assert_eq!(
        decode_frame(LinkType::Ethernet, &arp, 42),
        Err(DecodeError::NonIp { ether_type: 0x0806 })
    );
    let mut llc = vec![0xff; 12];
    llc.extend_from_slice(&[0x00, 0x26, 0x42, 0x42, 0x03]);
    assert!(matches!(
        decode_frame(LinkType::Ethernet, &llc, 60),
        Err(DecodeError::NonIp { .. })
    ));
    let mut frame = tcp4((CLIENT, 1), (SERVER, 2), 0, 0, b"");
    frame[14] = 0x55;
    assert!(matches!(
        decode_frame(LinkType::Ethernet, &frame, frame.len() as u32),
        Err(DecodeError::Malformed {
            layer: Layer::Ipv4,
            offset: 14,
            ..
        })
    ));
    frame[14] = 0x45;
    frame[14 + 20 + 12] = 0x40; // TCP data offset 4
    assert!(matches!(
        decode_frame(LinkType::Ethernet, &frame, frame.len() as u32),
        Err(DecodeError::Malformed {
            layer: Layer::Tcp,
            ..
        })
    ));
    assert!(matches!(
        decode_frame(LinkType::RawIp, &[0x15], 1),
        Err(DecodeError::Malformed { .. })
    ));
    assert_eq!(DecodeError::UnsupportedLink(147).kind(), "unsupported_link");
}

#[test]
fn classify_follows_the_kernel_rule() {
    use RecordKind::{HttpHead, TcpControl, TlsClientHello};
    let c = |flags: u8, payload: &[u8]| {
        let frame = tcp4((CLIENT, 1), (SERVER, 2), 0, flags, payload);
        let m = decode_eth(&frame);
        classify(&m)
    };
    assert_eq!(c(TcpFlags::SYN, b""), Some(TcpControl));
    assert_eq!(c(TcpFlags::SYN | TcpFlags::ACK, b""), Some(TcpControl));
    assert_eq!(c(TcpFlags::RST, b""), Some(TcpControl));
    assert_eq!(c(TcpFlags::ACK, b""), None);
    assert_eq!(c(TcpFlags::ACK, b"some body bytes"), None);
    assert_eq!(
        c(TcpFlags::ACK | TcpFlags::FIN, b"some body bytes"),
        Some(TcpControl)
    );
    // The L7 kind wins; the tracker still sees the FIN flag on the same packet.
    assert_eq!(
        c(TcpFlags::ACK | TcpFlags::FIN, b"GET / HTTP/1.1\r\n"),
        Some(HttpHead)
    );
    for m in HTTP_METHODS {
        let mut p = m.to_vec();
        p.extend_from_slice(b"/ HTTP/1.1\r\n");
        assert_eq!(
            c(TcpFlags::ACK, &p),
            Some(HttpHead),
            "{}",
            String::from_utf8_lossy(m)
        );
    }
    assert_eq!(c(TcpFlags::ACK, b"HTTP/1.0 200 OK\r\n"), Some(HttpHead));
    assert_eq!(c(TcpFlags::ACK, b"HTTP/2.0 200 OK\r\n"), None);
    assert_eq!(
        c(TcpFlags::ACK, b"GET /"),
        None,
        "fewer than 8 bytes, as in the kernel"
    );
    assert_eq!(c(TcpFlags::ACK, b"GETX / HTTP/1.1\r\n"), None);
    assert_eq!(
        c(
            TcpFlags::ACK,
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01]
        ),
        Some(TlsClientHello)
    );
    assert_eq!(
        c(
            TcpFlags::ACK,
            &[0x16, 0x03, 0x05, 0x02, 0x00, 0x01, 0x00, 0x01]
        ),
        None
    );
    assert_eq!(
        c(
            TcpFlags::ACK,
            &[0x16, 0x03, 0x03, 0x02, 0x00, 0x02, 0x00, 0x01]
        ),
        None
    );
    // UDP is never a record, whatever it carries.
    let mut udp = Vec::new();
    PacketBuilder::ethernet2([0; 6], [1; 6])
        .ipv4(CLIENT, SERVER, 9)
        .udp(1900, 1900)
        .write(&mut udp, b"M-SEARCH * HTTP/1.1\r\n")
        .expect("build");
    assert_eq!(classify(&decode_eth(&udp)), None);
}

/// Cutting a real frame anywhere gives the same packet with less payload, or a clean
/// truncation error: never a panic, never different addresses or lengths.
#[test]
fn every_truncation_of_every_shared_frame() {
    let mut checked = 0u64;
    for (name, link, frame, wire_len) in shared_frames() {
        let full = decode_frame(link, &frame, wire_len);
        for cut in 0..frame.len() {
            let part = decode_frame(link, &frame[..cut], wire_len);
            checked += 1;
            match (&full, part) {
                (Ok(f), Ok(p)) => {
                    assert_eq!(
                        (p.src, p.dst, p.src_port, p.dst_port),
                        (f.src, f.dst, f.src_port, f.dst_port),
                        "{name} cut {cut}"
                    );
                    assert_eq!(
                        (p.transport, p.payload_len, p.frame_len),
                        (f.transport, f.payload_len, f.frame_len),
                        "{name} cut {cut}"
                    );
                    assert!(f.payload.starts_with(p.payload), "{name} cut {cut}");
                    assert_eq!(
                        p.payload.len(),
                        f.payload
                            .len()
                            .min(cut.saturating_sub(f.payload_offset as usize))
                    );
                }
                (Ok(_), Err(e)) => {
                    assert!(
                        matches!(e, DecodeError::Truncated { .. }),
                        "{name} cut {cut}: {e}"
                    );
                }
                (Err(_), _) => {}
            }
        }
    }
    assert!(checked > 1_000_000, "only {checked} truncations checked");
}

#[test]
fn shared_frames_decode_without_unexpected_errors() {
    let mut errors = DecodeErrorCounts::default();
    let mut decoded = 0;
    for (name, link, frame, wire_len) in shared_frames() {
        match decode_frame(link, &frame, wire_len) {
            Ok(m) => {
                decoded += 1;
                assert!(m.payload.len() <= m.payload_len as usize, "{name}");
            }
            Err(e) => {
                // Real captures hold ARP, LLDP, STP and friends: those are non-IP. Nothing
                // in them is truncated or malformed at the headers.
                assert!(matches!(e, DecodeError::NonIp { .. }), "{name}: {e}");
                errors.record(&e);
            }
        }
    }
    assert!(decoded > 7_000, "{decoded}");
    assert!(errors.non_ip > 0);
}

fn link_strategy() -> impl Strategy<Value = LinkType> {
    prop_oneof![
        Just(LinkType::Ethernet),
        Just(LinkType::LinuxSll),
        Just(LinkType::LinuxSll2),
        Just(LinkType::RawIp),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(
        link in link_strategy(),
        data in proptest::collection::vec(any::<u8>(), 0..300),
        wire_len in any::<u32>(),
    ) {
        if let Ok(m) = decode_frame(link, &data, wire_len) {
            prop_assert!(m.payload.len() <= m.payload_len as usize);
            prop_assert!(m.payload_offset as usize + m.payload.len() <= data.len().max(m.payload_offset as usize));
            let _ = classify(&m);
        }
    }

    #[test]
    fn mutated_real_frames_never_panic(
        index in any::<proptest::sample::Index>(),
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
        wire_delta in -100i64..100,
    ) {
        static FRAMES: std::sync::OnceLock<Vec<SharedFrame>> = std::sync::OnceLock::new();
        let frames = FRAMES.get_or_init(shared_frames);
        let (_, link, frame, wire_len) = &frames[index.index(frames.len())];
        let mut data = frame.clone();
        for (at, v) in flips {
            let i = at.index(data.len());
            data[i] = v;
        }
        let wire = (i64::from(*wire_len) + wire_delta).clamp(0, i64::from(u32::MAX)) as u32;
        if let Ok(m) = decode_frame(*link, &data, wire) {
            prop_assert!(m.payload.len() <= m.payload_len as usize);
            let _ = classify(&m);
            let _ = parse_http_head(m.payload);
            let _ = parse_client_hello(m.payload);
        }
    }
}

/// IPv6 with `n` destination-options headers before TCP.
fn ipv6_with_n_extensions(n: usize) -> Vec<u8> {
    let mut tcp = Vec::new();
    TcpHeader::new(1, 2, 3, 4)
        .write(&mut tcp)
        .expect("tcp header");
    let mut exts = Vec::new();
    for i in 0..n {
        let next = if i + 1 == n { 6 } else { 60 };
        exts.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    let first = if n == 0 { 6 } else { 60 };
    let mut f = vec![0x60, 0, 0, 0];
    f.extend_from_slice(&((exts.len() + tcp.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[first, 64]);
    f.extend_from_slice(&[0xfe; 32]);
    f.extend_from_slice(&exts);
    f.extend_from_slice(&tcp);
    f
}

#[test]
fn ipv6_extension_chain_limit_matches_the_kernel() {
    for n in 0..6 {
        let f = ipv6_with_n_extensions(n);
        let m = decode_frame(LinkType::RawIp, &f, f.len() as u32).expect("decodes");
        assert_eq!(
            (m.src_port, m.dst_port, m.payload_offset as usize),
            (1, 2, 40 + 8 * n + 20)
        );
    }
    let f = ipv6_with_n_extensions(6);
    assert!(matches!(
        decode_frame(LinkType::RawIp, &f, f.len() as u32),
        Err(DecodeError::Unsupported(_))
    ));
}
