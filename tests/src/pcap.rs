//! Classic pcap files: what a capture holds (link type, packet count, largest frame) and, for
//! raw-IP captures, a copy with an Ethernet header in front of every packet so that it can be
//! replayed onto a veth (which carries Ethernet frames only).

use std::path::Path;

use crate::error::{Error, Result, io_context};

pub const LINKTYPE_ETHERNET: u32 = 1;
/// Raw IPv4/IPv6 without a link header: 101 is the official value, 12 and 14 the historical
/// `DLT_RAW` values some writers use.
pub const RAW_IP_LINKTYPES: &[u32] = &[12, 14, 101];

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// Locally administered MACs used for frames given an Ethernet header.
pub const SYNTH_SRC_MAC: [u8; 6] = [0x02, 0x5a, 0, 0, 0, 1];
pub const SYNTH_DST_MAC: [u8; 6] = [0x02, 0x5a, 0, 0, 0, 2];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

/// A parsed classic pcap file.
#[derive(Clone, Debug)]
pub struct Pcap {
    nanosecond: bool,
    pub snaplen: u32,
    pub linktype: u32,
    pub packets: Vec<PcapPacket>,
}

#[derive(Clone, Debug)]
pub struct PcapPacket {
    pub ts_sec: u32,
    pub ts_frac: u32,
    pub orig_len: u32,
    pub data: Vec<u8>,
}

fn parse_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Parse {
        source_name: path.display().to_string(),
        reason: reason.into(),
    }
}

impl Pcap {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).map_err(io_context(format!("reading {}", path.display())))?;
        Self::parse(&bytes).map_err(|reason| parse_error(path, reason))
    }

    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        if bytes.len() < 24 {
            return Err("shorter than a pcap header".to_owned());
        }
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        let (endian, nanosecond) = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] => (Endian::Little, false),
            [0xa1, 0xb2, 0xc3, 0xd4] => (Endian::Big, false),
            [0x4d, 0x3c, 0xb2, 0xa1] => (Endian::Little, true),
            [0xa1, 0xb2, 0x3c, 0x4d] => (Endian::Big, true),
            [0x0a, 0x0d, 0x0d, 0x0a] => return Err("pcapng is not supported".to_owned()),
            other => return Err(format!("unknown magic {other:02x?}")),
        };
        let u32_at = |at: usize| -> u32 {
            let raw = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
            match endian {
                Endian::Little => u32::from_le_bytes(raw),
                Endian::Big => u32::from_be_bytes(raw),
            }
        };
        let snaplen = u32_at(16);
        // The upper bits may carry FCS information; the link type is the low 28 bits.
        let linktype = u32_at(20) & 0x0fff_ffff;
        let mut packets = Vec::new();
        let mut at = 24;
        while at < bytes.len() {
            if bytes.len() - at < 16 {
                return Err(format!("truncated record header at offset {at}"));
            }
            let incl = u32_at(at + 8) as usize;
            let packet = PcapPacket {
                ts_sec: u32_at(at),
                ts_frac: u32_at(at + 4),
                orig_len: u32_at(at + 12),
                data: Vec::new(),
            };
            at += 16;
            if bytes.len() - at < incl {
                return Err(format!("truncated packet data at offset {at}"));
            }
            packets.push(PcapPacket {
                data: bytes[at..at + incl].to_vec(),
                ..packet
            });
            at += incl;
        }
        Ok(Self {
            nanosecond,
            snaplen,
            linktype,
            packets,
        })
    }

    /// Length of the largest captured packet.
    pub fn max_captured_len(&self) -> usize {
        self.packets.iter().map(|p| p.data.len()).max().unwrap_or(0)
    }

    pub fn is_raw_ip(&self) -> bool {
        RAW_IP_LINKTYPES.contains(&self.linktype)
    }

    /// The same capture as Ethernet frames: unchanged for Ethernet captures; for raw-IP captures
    /// every packet gets a header with [`SYNTH_SRC_MAC`]/[`SYNTH_DST_MAC`] and the `EtherType` of
    /// its IP version. Packets that are neither IPv4 nor IPv6 are an error.
    pub fn to_ethernet(&self) -> std::result::Result<Self, String> {
        if self.linktype == LINKTYPE_ETHERNET {
            return Ok(self.clone());
        }
        if !self.is_raw_ip() {
            return Err(format!(
                "link type {} cannot be replayed on a veth",
                self.linktype
            ));
        }
        let mut packets = Vec::with_capacity(self.packets.len());
        for (index, packet) in self.packets.iter().enumerate() {
            let ethertype = match packet.data.first().map(|b| b >> 4) {
                Some(4) => ETHERTYPE_IPV4,
                Some(6) => ETHERTYPE_IPV6,
                other => {
                    return Err(format!(
                        "packet {index}: IP version {other:?} in a raw-IP capture"
                    ));
                }
            };
            let mut data = Vec::with_capacity(packet.data.len() + 14);
            data.extend_from_slice(&SYNTH_DST_MAC);
            data.extend_from_slice(&SYNTH_SRC_MAC);
            data.extend_from_slice(&ethertype.to_be_bytes());
            data.extend_from_slice(&packet.data);
            packets.push(PcapPacket {
                orig_len: packet.orig_len + 14,
                data,
                ..*packet
            });
        }
        Ok(Self {
            nanosecond: self.nanosecond,
            snaplen: self.snaplen.saturating_add(14),
            linktype: LINKTYPE_ETHERNET,
            packets,
        })
    }

    /// Serialises as a little-endian classic pcap.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let magic: u32 = if self.nanosecond {
            0xa1b2_3c4d
        } else {
            0xa1b2_c3d4
        };
        out.extend_from_slice(&magic.to_le_bytes());
        out.extend_from_slice(&2_u16.to_le_bytes());
        out.extend_from_slice(&4_u16.to_le_bytes());
        out.extend_from_slice(&0_i32.to_le_bytes());
        out.extend_from_slice(&0_u32.to_le_bytes());
        out.extend_from_slice(&self.snaplen.to_le_bytes());
        out.extend_from_slice(&self.linktype.to_le_bytes());
        for packet in &self.packets {
            out.extend_from_slice(&packet.ts_sec.to_le_bytes());
            out.extend_from_slice(&packet.ts_frac.to_le_bytes());
            out.extend_from_slice(&(packet.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&packet.orig_len.to_le_bytes());
            out.extend_from_slice(&packet.data);
        }
        out
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_bytes())
            .map_err(io_context(format!("writing {}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_ip_capture() -> Pcap {
        Pcap {
            nanosecond: false,
            snaplen: 65535,
            linktype: 101,
            packets: vec![
                PcapPacket {
                    ts_sec: 1,
                    ts_frac: 2,
                    orig_len: 20,
                    data: vec![0x45; 20],
                },
                PcapPacket {
                    ts_sec: 3,
                    ts_frac: 4,
                    orig_len: 40,
                    data: vec![0x60; 40],
                },
            ],
        }
    }

    #[test]
    fn round_trips_and_adds_ethernet() {
        let raw = raw_ip_capture();
        let parsed = Pcap::parse(&raw.to_bytes()).expect("own output parses");
        assert_eq!(parsed.linktype, 101);
        assert_eq!(parsed.packets.len(), 2);
        let eth = parsed.to_ethernet().expect("IPv4 and IPv6 convert");
        assert_eq!(eth.linktype, LINKTYPE_ETHERNET);
        assert_eq!(&eth.packets[0].data[12..14], &[0x08, 0x00]);
        assert_eq!(&eth.packets[1].data[12..14], &[0x86, 0xdd]);
        assert_eq!(eth.packets[1].data.len(), 54);
        assert_eq!(eth.max_captured_len(), 54);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Pcap::parse(b"short").is_err());
        assert!(Pcap::parse(&[0u8; 24]).is_err());
        let mut truncated = raw_ip_capture().to_bytes();
        truncated.truncate(truncated.len() - 1);
        assert!(Pcap::parse(&truncated).is_err());
    }
}
