use super::*;
use proptest::prelude::*;

/// (timestamp ns, link type, captured bytes, original length)
type Packet = (u64, u32, Vec<u8>, u32);

fn read_all(bytes: &[u8]) -> Result<Vec<Packet>, PcapError> {
    let mut reader = PcapReader::new(bytes)?;
    let mut out = Vec::new();
    while let Some(p) = reader.next_packet()? {
        out.push((p.ts_ns, p.linktype, p.data.to_vec(), p.orig_len));
    }
    Ok(out)
}

fn pcap_file(
    big_endian: bool,
    nanos: bool,
    linktype: u32,
    packets: &[(u32, u32, &[u8], u32)],
) -> Vec<u8> {
    let w32 = |v: u32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let w16 = |v: u16| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut f = Vec::new();
    f.extend_from_slice(&w32(if nanos { PCAP_MAGIC_NS } else { PCAP_MAGIC_US }));
    f.extend_from_slice(&w16(2));
    f.extend_from_slice(&w16(4));
    f.extend_from_slice(&w32(0));
    f.extend_from_slice(&w32(0));
    f.extend_from_slice(&w32(65_535));
    f.extend_from_slice(&w32(linktype));
    for (sec, frac, data, orig) in packets {
        f.extend_from_slice(&w32(*sec));
        f.extend_from_slice(&w32(*frac));
        f.extend_from_slice(&w32(data.len() as u32));
        f.extend_from_slice(&w32(*orig));
        f.extend_from_slice(data);
    }
    f
}

struct NgWriter {
    big_endian: bool,
    out: Vec<u8>,
}

impl NgWriter {
    fn w32(&self, v: u32) -> [u8; 4] {
        if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }
    fn w16(&self, v: u16) -> [u8; 2] {
        if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }
    fn block(&mut self, block_type: u32, body: &[u8]) {
        let mut body = body.to_vec();
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        let total = body.len() as u32 + 12;
        let (t, l) = (self.w32(block_type), self.w32(total));
        self.out.extend_from_slice(&t);
        self.out.extend_from_slice(&l);
        self.out.extend_from_slice(&body);
        self.out.extend_from_slice(&l);
    }
    fn shb(&mut self) {
        let mut body = self.w32(PCAPNG_BYTE_ORDER_MAGIC).to_vec();
        body.extend_from_slice(&self.w16(1));
        body.extend_from_slice(&self.w16(0));
        body.extend_from_slice(&[0xff; 8]);
        self.block(PCAPNG_SHB, &body);
    }
    fn idb(&mut self, linktype: u16, snaplen: u32, tsresol: Option<u8>, tsoffset: Option<i64>) {
        let mut body = self.w16(linktype).to_vec();
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&self.w32(snaplen));
        if let Some(r) = tsresol {
            body.extend_from_slice(&self.w16(OPT_IF_TSRESOL));
            body.extend_from_slice(&self.w16(1));
            body.extend_from_slice(&[r, 0, 0, 0]);
        }
        if let Some(o) = tsoffset {
            body.extend_from_slice(&self.w16(OPT_IF_TSOFFSET));
            body.extend_from_slice(&self.w16(8));
            body.extend_from_slice(&if self.big_endian {
                o.to_be_bytes()
            } else {
                o.to_le_bytes()
            });
        }
        body.extend_from_slice(&[0, 0, 0, 0]);
        self.block(PCAPNG_IDB, &body);
    }
    fn epb(&mut self, iface: u32, ts: u64, data: &[u8], orig: u32) {
        let mut body = self.w32(iface).to_vec();
        body.extend_from_slice(&self.w32((ts >> 32) as u32));
        body.extend_from_slice(&self.w32(ts as u32));
        body.extend_from_slice(&self.w32(data.len() as u32));
        body.extend_from_slice(&self.w32(orig));
        body.extend_from_slice(data);
        self.block(PCAPNG_EPB, &body);
    }
    fn spb(&mut self, data: &[u8]) {
        let mut body = self.w32(data.len() as u32).to_vec();
        body.extend_from_slice(data);
        self.block(PCAPNG_SPB, &body);
    }
}

#[test]
fn pcap_all_byte_orders_and_resolutions() {
    let pkt: &[u8] = b"\x01\x02\x03\x04\x05";
    for big_endian in [false, true] {
        for nanos in [false, true] {
            let file = pcap_file(
                big_endian,
                nanos,
                113,
                &[(10, 20, pkt, 60), (11, 0, b"", 0)],
            );
            let got = read_all(&file).expect("valid pcap");
            let frac_ns = if nanos { 20 } else { 20_000 };
            assert_eq!(got.len(), 2);
            assert_eq!(got[0], (10_000_000_000 + frac_ns, 113, pkt.to_vec(), 60));
            assert_eq!(got[1], (11_000_000_000, 113, vec![], 0));
        }
    }
}

#[test]
fn pcapng_sections_interfaces_and_blocks() {
    for big_endian in [false, true] {
        let mut w = NgWriter {
            big_endian,
            out: Vec::new(),
        };
        w.shb();
        w.idb(1, 0, None, None);
        w.idb(276, 0, Some(9), Some(100)); // ns resolution, +100 s
        w.block(4, &[1, 2, 3, 4]); // name resolution block: skipped
        w.epb(0, 1_500_000, b"abc", 3); // 1.5 s in µs
        w.epb(1, 2_000_000_001, b"defgh", 90);
        w.spb(b"simple");
        w.idb(113, 0, Some(0x8a), None); // high bit set: 2^-10 s units
        w.epb(2, 1024, b"x", 1);
        // A second section with the other byte order restarts interface numbering.
        let mut w2 = NgWriter {
            big_endian: !big_endian,
            out: Vec::new(),
        };
        w2.shb();
        w2.idb(101, 0, None, None);
        w2.epb(0, 7, b"raw", 3);
        w.out.extend_from_slice(&w2.out);
        let got = read_all(&w.out).expect("valid pcapng");
        assert_eq!(
            got,
            vec![
                (1_500_000_000, 1, b"abc".to_vec(), 3),
                (102_000_000_001, 276, b"defgh".to_vec(), 90),
                (0, 1, b"simple".to_vec(), 6),
                (1_000_000_000, 113, b"x".to_vec(), 1),
                (7_000, 101, b"raw".to_vec(), 3),
            ]
        );
    }
}

#[test]
fn every_truncation_errors_with_the_offset_of_the_cut_record() {
    let mut w = NgWriter {
        big_endian: false,
        out: Vec::new(),
    };
    w.shb();
    w.idb(1, 0, None, None);
    w.epb(0, 1, b"0123456789", 10);
    w.epb(0, 2, b"abcdefghij", 10);
    let ng = w.out;
    let pcap = pcap_file(
        true,
        false,
        1,
        &[(1, 1, b"0123456789", 10), (2, 2, b"abcdefghij", 10)],
    );
    for file in [ng, pcap] {
        let full = read_all(&file).expect("valid").len();
        for cut in 0..file.len() {
            match read_all(&file[..cut]) {
                // A cut exactly at a record boundary is a shorter, valid file.
                Ok(packets) => assert!(packets.len() < full, "cut {cut}"),
                Err(e) => {
                    assert!(e.offset() <= cut as u64, "cut {cut}: {e}");
                    assert!(e.to_string().contains("byte"), "{e}");
                }
            }
        }
    }
}

#[test]
fn corrupt_lengths_are_errors_not_allocations() {
    let mut file = pcap_file(false, false, 1, &[(1, 1, b"abcd", 4)]);
    file[24 + 8..24 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = read_all(&file).expect_err("corrupt length");
    assert!(
        matches!(err, PcapError::Corrupt { offset: 32, .. }),
        "{err}"
    );

    let mut w = NgWriter {
        big_endian: false,
        out: Vec::new(),
    };
    w.shb();
    w.idb(1, 0, None, None);
    w.epb(0, 1, b"abcd", 4);
    let epb_at = w.out.len() - 36;
    let mut bad_trailer = w.out.clone();
    let last = bad_trailer.len() - 4;
    bad_trailer[last] ^= 0x40;
    let err = read_all(&bad_trailer).expect_err("bad trailer");
    assert_eq!(err.offset(), last as u64, "{err}");

    let mut bad_iface = w.out.clone();
    bad_iface[epb_at + 8] = 5;
    let err = read_all(&bad_iface).expect_err("unknown interface");
    assert!(err.to_string().contains("interface 5"), "{err}");

    assert!(matches!(
        read_all(b"not a capture"),
        Err(PcapError::BadMagic { .. })
    ));
    assert!(matches!(
        read_all(b""),
        Err(PcapError::Truncated { offset: 0, .. })
    ));
}

#[test]
fn shared_pcaps_roundtrip_through_pcapng() {
    let dir = crate::decode::tests::shared_pcap_dir();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("shared pcap dir") {
        let path = entry.expect("dir entry").path();
        let bytes = std::fs::read(&path).expect("read pcap");
        let packets = read_all(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!packets.is_empty(), "{}", path.display());
        let mut w = NgWriter {
            big_endian: true,
            out: Vec::new(),
        };
        w.shb();
        w.idb(packets[0].1 as u16, 0, Some(9), None);
        for (ts, _, data, orig) in &packets {
            w.epb(0, *ts, data, *orig);
        }
        assert_eq!(
            read_all(&w.out).expect("our pcapng"),
            packets,
            "{}",
            path.display()
        );
        files += 1;
    }
    assert!(files >= 7, "expected the shared pcaps in {}", dir.display());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = read_all(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_valid_headers_never_panic(
        ng in any::<bool>(),
        tail in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut file = if ng {
            let mut w = NgWriter { big_endian: false, out: Vec::new() };
            w.shb();
            w.idb(1, 0, None, None);
            w.out
        } else {
            pcap_file(false, false, 1, &[])
        };
        file.extend_from_slice(&tail);
        let _ = read_all(&file);
    }
}
