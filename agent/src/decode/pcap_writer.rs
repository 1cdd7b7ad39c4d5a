//! The reader's counterpart: a streaming writer of classic pcap (little-endian, microsecond
//! timestamps, Ethernet), and a builder for the Ethernet/IPv4/TCP frames that generated
//! captures are made of. Tests, benchmarks and demos generate their captures with these, so a
//! capture they write is one [`super::pcap::PcapReader`] has been shown to read back.

use std::io::{self, Write};
use std::net::Ipv4Addr;

/// `LINKTYPE_ETHERNET`.
const LINKTYPE_ETHERNET: u32 = 1;
/// Largest frame a record may hold (the snaplen in the file header).
const SNAPLEN: u32 = 65_535;

/// Writes packets as they come; nothing is buffered beyond what `W` buffers.
pub struct PcapWriter<W: Write> {
    out: W,
    packets: u64,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header.
    ///
    /// # Errors
    /// The header could not be written.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut header = [0u8; 24];
        header[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        header[4..6].copy_from_slice(&2u16.to_le_bytes());
        header[6..8].copy_from_slice(&4u16.to_le_bytes());
        // thiszone and sigfigs stay 0.
        header[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
        header[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&header)?;
        Ok(Self { out, packets: 0 })
    }

    /// Appends one frame captured whole at `ts_us` (Unix-epoch microseconds).
    ///
    /// # Errors
    /// The frame is longer than the snaplen, the timestamp does not fit the format (after
    /// 2106), or the write failed.
    pub fn write_packet(&mut self, ts_us: u64, frame: &[u8]) -> io::Result<()> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|&l| l <= SNAPLEN)
            .ok_or_else(|| invalid(format!("frame of {} bytes > snaplen", frame.len())))?;
        let secs = u32::try_from(ts_us / 1_000_000)
            .map_err(|_| invalid(format!("timestamp {ts_us} µs does not fit pcap")))?;
        let micros = u32::try_from(ts_us % 1_000_000).unwrap_or_default();
        let mut record = [0u8; 16];
        record[0..4].copy_from_slice(&secs.to_le_bytes());
        record[4..8].copy_from_slice(&micros.to_le_bytes());
        record[8..12].copy_from_slice(&len.to_le_bytes());
        record[12..16].copy_from_slice(&len.to_le_bytes());
        self.out.write_all(&record)?;
        self.out.write_all(frame)?;
        self.packets += 1;
        Ok(())
    }

    /// Appends one TCP segment's frame.
    ///
    /// # Errors
    /// As [`Self::write_packet`], or the payload does not fit one IPv4 packet.
    pub fn write_segment(&mut self, ts_us: u64, segment: &TcpSegment<'_>) -> io::Result<()> {
        self.write_packet(ts_us, &segment.frame()?)
    }

    /// One HTTP exchange on a connection of its own, `step_us` apart: the client's SYN at
    /// `ts_us`, its request, the server's response, the client's FIN (sequence numbers fixed
    /// at 1: the decoder tracks payloads, not a handshake).
    ///
    /// # Errors
    /// As [`Self::write_segment`].
    pub fn write_http_exchange(
        &mut self,
        ts_us: u64,
        step_us: u64,
        (client, sport): (Ipv4Addr, u16),
        (server, dport): (Ipv4Addr, u16),
        request: &[u8],
        response: &[u8],
    ) -> io::Result<()> {
        let out = |flags, payload| TcpSegment {
            src: client,
            dst: server,
            sport,
            dport,
            seq: 1,
            flags,
            payload,
        };
        let back = TcpSegment {
            src: server,
            dst: client,
            sport: dport,
            dport: sport,
            ..out("PA", response)
        };
        self.write_segment(ts_us, &out("S", b""))?;
        self.write_segment(ts_us + step_us, &out("PA", request))?;
        self.write_segment(ts_us + 2 * step_us, &back)?;
        self.write_segment(ts_us + 3 * step_us, &out("FA", b""))
    }

    /// Packets written so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Flushes and hands the sink back.
    ///
    /// # Errors
    /// The flush failed.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One TCP segment of a generated capture, in an IPv4 packet in an Ethernet frame.
#[derive(Clone, Copy, Debug)]
pub struct TcpSegment<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    /// Flag letters as tcpdump prints them: `S`, `A` (ack 1), `P`, `F`, `R`.
    pub flags: &'a str,
    pub payload: &'a [u8],
}

impl TcpSegment<'_> {
    /// Source and destination MACs of every generated frame (locally administered).
    pub const SRC_MAC: [u8; 6] = [0x02, 0x5a, 0, 0, 0, 1];
    pub const DST_MAC: [u8; 6] = [0x02, 0x5a, 0, 0, 0, 2];

    /// The frame's bytes.
    ///
    /// # Errors
    /// The payload does not fit one IPv4 packet.
    pub fn frame(&self) -> io::Result<Vec<u8>> {
        let mut builder = etherparse::PacketBuilder::ethernet2(Self::SRC_MAC, Self::DST_MAC)
            .ipv4(self.src.octets(), self.dst.octets(), 64)
            .tcp(self.sport, self.dport, self.seq, 65_535);
        for flag in self.flags.chars() {
            builder = match flag {
                'S' => builder.syn(),
                'A' => builder.ack(1),
                'P' => builder.psh(),
                'F' => builder.fin(),
                'R' => builder.rst(),
                _ => builder,
            };
        }
        let mut out = Vec::with_capacity(builder.size(self.payload.len()));
        builder
            .write(&mut out, self.payload)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::pcap::PcapReader;
    use crate::decode::{LinkType, TcpFlags, Transport, decode_frame};

    #[test]
    fn the_reader_reads_back_what_the_writer_wrote() {
        let segment = TcpSegment {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(192, 0, 2, 80),
            sport: 40_000,
            dport: 80,
            seq: 7,
            flags: "PA",
            payload: b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        };
        let frame = segment.frame().expect("frame");
        let mut writer = PcapWriter::new(Vec::new()).expect("header");
        writer
            .write_packet(1_767_571_200_123_456, &frame)
            .expect("write");
        writer
            .write_packet(1_767_571_201_000_001, b"\x00")
            .expect("write");
        assert_eq!(writer.packets(), 2);
        let bytes = writer.finish().expect("flush");

        let mut reader = PcapReader::new(bytes.as_slice()).expect("reader");
        let first = reader.next_packet().expect("read").expect("a packet");
        assert_eq!(first.ts_ns, 1_767_571_200_123_456_000);
        assert_eq!(first.linktype, LINKTYPE_ETHERNET);
        assert_eq!(first.data, frame.as_slice());
        let link = LinkType::from_pcap_linktype(first.linktype).expect("Ethernet");
        let meta = decode_frame(link, first.data, first.orig_len).expect("decodes");
        let Transport::Tcp(tcp) = meta.transport else {
            panic!("not TCP: {meta:?}")
        };
        assert_eq!((meta.src_port, meta.dst_port, tcp.seq), (40_000, 80, 7));
        assert_eq!(tcp.flags.0, TcpFlags::PSH | TcpFlags::ACK);
        assert_eq!(meta.payload, segment.payload);
        let second = reader.next_packet().expect("read").expect("a packet");
        assert_eq!(
            (second.ts_ns, second.data),
            (1_767_571_201_000_001_000, &b"\x00"[..])
        );
        assert!(reader.next_packet().expect("read").is_none());
    }

    #[test]
    fn an_http_exchange_is_syn_request_response_fin_step_apart() {
        let client = (Ipv4Addr::new(10, 0, 0, 7), 40_007);
        let server = (Ipv4Addr::new(192, 0, 2, 80), 80);
        let mut writer = PcapWriter::new(Vec::new()).expect("header");
        writer
            .write_http_exchange(
                1_000_000,
                50,
                client,
                server,
                b"GET / HTTP/1.1\r\n\r\n",
                b"ok",
            )
            .expect("write");
        let bytes = writer.finish().expect("flush");
        let mut reader = PcapReader::new(bytes.as_slice()).expect("reader");
        let mut seen = Vec::new();
        while let Some(packet) = reader.next_packet().expect("read") {
            let meta = decode_frame(LinkType::Ethernet, packet.data, packet.orig_len).expect("tcp");
            let Transport::Tcp(tcp) = meta.transport else {
                panic!("not TCP: {meta:?}")
            };
            seen.push((
                packet.ts_ns / 1_000,
                meta.src_port,
                meta.dst_port,
                tcp.flags.0,
                meta.payload.len(),
            ));
        }
        let (ack, psh) = (TcpFlags::ACK, TcpFlags::PSH);
        assert_eq!(
            seen,
            vec![
                (1_000_000, 40_007, 80, TcpFlags::SYN, 0),
                (1_000_050, 40_007, 80, psh | ack, 18),
                (1_000_100, 80, 40_007, psh | ack, 2),
                (1_000_150, 40_007, 80, TcpFlags::FIN | ack, 0),
            ]
        );
    }

    #[test]
    fn refuses_what_the_format_cannot_hold() {
        let mut writer = PcapWriter::new(Vec::new()).expect("header");
        let err = writer
            .write_packet(0, &vec![0; 70_000])
            .expect_err("too long");
        assert!(err.to_string().contains("70000 bytes"), "{err}");
        let err = writer
            .write_packet(u64::from(u32::MAX) * 1_000_000 + 1_000_000, b"x")
            .expect_err("after 2106");
        assert!(err.to_string().contains("does not fit"), "{err}");
        assert_eq!(writer.packets(), 0);
    }
}
