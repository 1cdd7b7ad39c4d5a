//! Streaming reader for pcap (both byte orders, µs and ns timestamps) and pcapng (SHB, IDB,
//! EPB, SPB and the obsolete PB; other blocks are skipped).
//!
//! Hand-written rather than a crate so that every failure names the byte offset where the
//! file stops making sense, and so that a corrupt length can never make us allocate
//! gigabytes or panic.

use std::io::{self, Read};

/// Largest record or block we accept. Real frames are at most 256 KiB (the largest snaplen
/// any tool writes); anything far beyond that is a corrupt length field.
const MAX_BLOCK_LEN: usize = 16 * 1024 * 1024;

const PCAP_MAGIC_US: u32 = 0xa1b2_c3d4;
const PCAP_MAGIC_NS: u32 = 0xa1b2_3c4d;
const PCAPNG_SHB: u32 = 0x0a0d_0d0a;
const PCAPNG_BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
const PCAPNG_IDB: u32 = 1;
const PCAPNG_OBSOLETE_PB: u32 = 2;
const PCAPNG_SPB: u32 = 3;
const PCAPNG_EPB: u32 = 6;
const OPT_IF_TSRESOL: u16 = 9;
const OPT_IF_TSOFFSET: u16 = 14;

/// Why a capture file cannot be read further. Every variant names a byte offset.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("I/O error at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("file ends at byte {offset} inside {what}: {needed} bytes needed, {available} present")]
    Truncated {
        offset: u64,
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("not a pcap or pcapng file: magic {magic:#010x} at byte 0")]
    BadMagic { magic: u32 },
    #[error("corrupt capture at byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
}

impl PcapError {
    /// Byte offset in the file where the problem was found.
    pub fn offset(&self) -> u64 {
        match self {
            PcapError::Io { offset, .. }
            | PcapError::Truncated { offset, .. }
            | PcapError::Corrupt { offset, .. } => *offset,
            PcapError::BadMagic { .. } => 0,
        }
    }
}

/// One packet. `data` borrows the reader's buffer until the next call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcapPacket<'a> {
    /// Unix-epoch nanoseconds.
    pub ts_ns: u64,
    /// `LINKTYPE_*` of the packet's interface.
    pub linktype: u32,
    /// Captured bytes.
    pub data: &'a [u8],
    /// Original length on the wire (at least `data.len()`).
    pub orig_len: u32,
    /// File offset of the record or block holding the packet.
    pub offset: u64,
}

#[derive(Clone, Copy, Debug)]
struct Interface {
    linktype: u32,
    snaplen: u32,
    /// Timestamp units per second (10^6 unless `if_tsresol` says otherwise).
    units_per_sec: u128,
    /// `if_tsoffset`, seconds added to every timestamp.
    offset_s: i64,
}

#[derive(Clone, Copy, Debug)]
enum Format {
    Pcap { nanos: bool, linktype: u32 },
    PcapNg,
}

/// Capture file format, for reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureFormat {
    Pcap,
    PcapNg,
}

/// A packet found in a pcapng block body: its byte range in the buffer and metadata.
struct BlockPacket {
    start: usize,
    end: usize,
    iface: usize,
    ts_units: u64,
    orig_len: u32,
}

pub struct PcapReader<R> {
    inner: R,
    /// Bytes consumed so far (the offset of the next unread byte).
    offset: u64,
    format: Format,
    /// Byte order of the file (pcap) or of the current section (pcapng).
    big_endian: bool,
    /// Interfaces described so far in the current pcapng section.
    interfaces: Vec<Interface>,
    buf: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize, big_endian: bool) -> u16 {
    let v = [b[at], b[at + 1]];
    if big_endian {
        u16::from_be_bytes(v)
    } else {
        u16::from_le_bytes(v)
    }
}

fn u32_at(b: &[u8], at: usize, big_endian: bool) -> u32 {
    let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    if big_endian {
        u32::from_be_bytes(v)
    } else {
        u32::from_le_bytes(v)
    }
}

/// Nanoseconds for `units` ticks of `units_per_sec` plus `offset_s` seconds, saturating.
fn ticks_to_ns(units: u64, units_per_sec: u128, offset_s: i64) -> u64 {
    let ns = u128::from(units) * 1_000_000_000 / units_per_sec.max(1);
    let ns = i128::try_from(ns).unwrap_or(i128::MAX) + i128::from(offset_s) * 1_000_000_000;
    u64::try_from(ns.max(0)).unwrap_or(u64::MAX)
}

impl<R: Read> PcapReader<R> {
    /// Reads the file header (pcap) or first section header (pcapng).
    pub fn new(inner: R) -> Result<Self, PcapError> {
        let mut reader = Self {
            inner,
            offset: 0,
            format: Format::PcapNg,
            big_endian: false,
            interfaces: Vec::new(),
            buf: Vec::with_capacity(65_536),
        };
        let mut magic = [0u8; 4];
        reader.read_exact_at(&mut magic, "the file magic", false)?;
        let le = u32::from_le_bytes(magic);
        let be = u32::from_be_bytes(magic);
        if le == PCAPNG_SHB {
            reader.read_section_header()?;
            return Ok(reader);
        }
        let (big_endian, nanos) = match (le, be) {
            (PCAP_MAGIC_US, _) => (false, false),
            (PCAP_MAGIC_NS, _) => (false, true),
            (_, PCAP_MAGIC_US) => (true, false),
            (_, PCAP_MAGIC_NS) => (true, true),
            _ => return Err(PcapError::BadMagic { magic: be }),
        };
        let mut rest = [0u8; 20];
        reader.read_exact_at(&mut rest, "the pcap file header", false)?;
        let linktype = u32_at(&rest, 16, big_endian);
        reader.big_endian = big_endian;
        reader.format = Format::Pcap { nanos, linktype };
        Ok(reader)
    }

    pub fn format(&self) -> CaptureFormat {
        match self.format {
            Format::Pcap { .. } => CaptureFormat::Pcap,
            Format::PcapNg => CaptureFormat::PcapNg,
        }
    }

    /// File offset of the next unread byte.
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// Fills `out` completely. At a record boundary (`eof_ok`) a clean end of file returns
    /// `Ok(false)`; anywhere else a short read is a truncation error.
    fn read_exact_at(
        &mut self,
        out: &mut [u8],
        what: &'static str,
        eof_ok: bool,
    ) -> Result<bool, PcapError> {
        let start = self.offset;
        let mut got = 0;
        while got < out.len() {
            match self.inner.read(&mut out[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(PcapError::Io {
                        offset: start + got as u64,
                        source,
                    });
                }
            }
        }
        self.offset += got as u64;
        if got == out.len() {
            Ok(true)
        } else if got == 0 && eof_ok {
            Ok(false)
        } else {
            Err(PcapError::Truncated {
                offset: start,
                what,
                needed: out.len(),
                available: got,
            })
        }
    }

    /// Reads `len` bytes into the internal buffer.
    fn read_into_buf(&mut self, len: usize, what: &'static str) -> Result<(), PcapError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.resize(len, 0);
        let result = self.read_exact_at(&mut buf, what, false);
        self.buf = buf;
        result.map(|_| ())
    }

    /// Parses a pcapng section header block whose type bytes were already consumed.
    fn read_section_header(&mut self) -> Result<(), PcapError> {
        let block_start = self.offset - 4;
        let mut head = [0u8; 8];
        self.read_exact_at(&mut head, "a pcapng section header", false)?;
        let big_endian = match (
            u32::from_le_bytes([head[4], head[5], head[6], head[7]]),
            u32::from_be_bytes([head[4], head[5], head[6], head[7]]),
        ) {
            (PCAPNG_BYTE_ORDER_MAGIC, _) => false,
            (_, PCAPNG_BYTE_ORDER_MAGIC) => true,
            _ => {
                return Err(PcapError::Corrupt {
                    offset: block_start + 8,
                    reason: "pcapng section header without a valid byte-order magic".to_owned(),
                });
            }
        };
        let total = u32_at(&head, 0, big_endian) as usize;
        if total < 28 || !total.is_multiple_of(4) || total > MAX_BLOCK_LEN {
            return Err(PcapError::Corrupt {
                offset: block_start + 4,
                reason: format!("pcapng section header length {total} is invalid"),
            });
        }
        self.read_into_buf(total - 12, "a pcapng section header")?;
        let trailer = u32_at(&self.buf, total - 16, big_endian) as usize;
        if trailer != total {
            return Err(PcapError::Corrupt {
                offset: block_start + total as u64 - 4,
                reason: format!("block length trailer {trailer} does not match header {total}"),
            });
        }
        // A new section starts a new interface list and may switch byte order.
        self.format = Format::PcapNg;
        self.big_endian = big_endian;
        self.interfaces.clear();
        Ok(())
    }

    /// The next packet, `Ok(None)` at a clean end of file.
    pub fn next_packet(&mut self) -> Result<Option<PcapPacket<'_>>, PcapError> {
        match self.format {
            Format::Pcap { nanos, linktype } => self.next_pcap(nanos, linktype),
            Format::PcapNg => self.next_pcapng(),
        }
    }

    fn next_pcap(
        &mut self,
        nanos: bool,
        linktype: u32,
    ) -> Result<Option<PcapPacket<'_>>, PcapError> {
        let big_endian = self.big_endian;
        let record_start = self.offset;
        let mut head = [0u8; 16];
        if !self.read_exact_at(&mut head, "a pcap record header", true)? {
            return Ok(None);
        }
        let sec = u64::from(u32_at(&head, 0, big_endian));
        let frac = u64::from(u32_at(&head, 4, big_endian));
        let incl_len = u32_at(&head, 8, big_endian);
        let orig_len = u32_at(&head, 12, big_endian);
        if incl_len as usize > MAX_BLOCK_LEN {
            return Err(PcapError::Corrupt {
                offset: record_start + 8,
                reason: format!("record length {incl_len} exceeds {MAX_BLOCK_LEN}"),
            });
        }
        self.read_into_buf(incl_len as usize, "a pcap packet")?;
        let frac_ns = if nanos { frac } else { frac * 1_000 };
        Ok(Some(PcapPacket {
            ts_ns: sec.saturating_mul(1_000_000_000).saturating_add(frac_ns),
            linktype,
            data: &self.buf,
            orig_len: orig_len.max(incl_len),
            offset: record_start,
        }))
    }

    fn next_pcapng(&mut self) -> Result<Option<PcapPacket<'_>>, PcapError> {
        loop {
            let block_start = self.offset;
            let mut type_bytes = [0u8; 4];
            if !self.read_exact_at(&mut type_bytes, "a pcapng block header", true)? {
                return Ok(None);
            }
            if u32::from_le_bytes(type_bytes) == PCAPNG_SHB {
                self.read_section_header()?;
                continue;
            }
            let big_endian = self.big_endian;
            let mut len_bytes = [0u8; 4];
            self.read_exact_at(&mut len_bytes, "a pcapng block header", false)?;
            let block_type = u32_at(&type_bytes, 0, big_endian);
            let total = u32_at(&len_bytes, 0, big_endian) as usize;
            if total < 12 || !total.is_multiple_of(4) || total > MAX_BLOCK_LEN {
                return Err(PcapError::Corrupt {
                    offset: block_start + 4,
                    reason: format!("pcapng block length {total} is invalid"),
                });
            }
            self.read_into_buf(total - 8, "a pcapng block")?;
            let body_len = total - 12;
            let trailer = u32_at(&self.buf, body_len, big_endian) as usize;
            if trailer != total {
                return Err(PcapError::Corrupt {
                    offset: block_start + total as u64 - 4,
                    reason: format!("block length trailer {trailer} does not match header {total}"),
                });
            }
            let body_offset = block_start + 8;
            if let Some(p) = self.pcapng_block(block_type, body_len, body_offset, big_endian)? {
                let interface = self.interfaces[p.iface];
                return Ok(Some(PcapPacket {
                    ts_ns: ticks_to_ns(p.ts_units, interface.units_per_sec, interface.offset_s),
                    linktype: interface.linktype,
                    data: &self.buf[p.start..p.end],
                    orig_len: p
                        .orig_len
                        .max(u32::try_from(p.end - p.start).unwrap_or(u32::MAX)),
                    offset: block_start,
                }));
            }
        }
    }

    /// Interprets one block body in `self.buf[..body_len]`: records interfaces, and for
    /// packet blocks returns where the packet is and its metadata.
    fn pcapng_block(
        &mut self,
        block_type: u32,
        body_len: usize,
        body_offset: u64,
        big_endian: bool,
    ) -> Result<Option<BlockPacket>, PcapError> {
        let body = &self.buf[..body_len];
        let block = Block {
            body,
            offset: body_offset,
            big_endian,
        };
        match block_type {
            PCAPNG_IDB => {
                let iface = block.interface()?;
                self.interfaces.push(iface);
                Ok(None)
            }
            PCAPNG_EPB | PCAPNG_OBSOLETE_PB => {
                block.packet(block_type, self.interfaces.len()).map(Some)
            }
            PCAPNG_SPB => {
                let Some(first) = self.interfaces.first() else {
                    return Err(block.corrupt(0, "simple packet block before any interface".into()));
                };
                block.simple_packet(first.snaplen).map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// The body of one pcapng block and where it sits in the file.
struct Block<'a> {
    body: &'a [u8],
    offset: u64,
    big_endian: bool,
}

impl Block<'_> {
    fn corrupt(&self, at: usize, reason: String) -> PcapError {
        PcapError::Corrupt {
            offset: self.offset + at as u64,
            reason,
        }
    }

    fn u16(&self, at: usize) -> u16 {
        u16_at(self.body, at, self.big_endian)
    }

    fn u32(&self, at: usize) -> u32 {
        u32_at(self.body, at, self.big_endian)
    }

    /// Interface description block: link type, snap length, timestamp resolution/offset.
    fn interface(&self) -> Result<Interface, PcapError> {
        let body_len = self.body.len();
        if body_len < 8 {
            return Err(self.corrupt(0, "interface description block too short".into()));
        }
        let mut iface = Interface {
            linktype: u32::from(self.u16(0)),
            snaplen: self.u32(4),
            units_per_sec: 1_000_000,
            offset_s: 0,
        };
        let mut at = 8;
        while at + 4 <= body_len {
            let code = self.u16(at);
            let len = usize::from(self.u16(at + 2));
            let value_at = at + 4;
            if value_at + len > body_len {
                return Err(self.corrupt(at, format!("option {code} overruns its block")));
            }
            match (code, len) {
                (0, _) => break,
                (OPT_IF_TSRESOL, 1) => {
                    let v = self.body[value_at];
                    let exp = u32::from(v & 0x7f);
                    iface.units_per_sec = if v & 0x80 == 0 {
                        10u128.checked_pow(exp)
                    } else {
                        2u128.checked_pow(exp)
                    }
                    .filter(|&u| u <= u128::from(u64::MAX))
                    .ok_or_else(|| {
                        self.corrupt(value_at, format!("if_tsresol {v:#04x} out of range"))
                    })?;
                }
                (OPT_IF_TSOFFSET, 8) => {
                    let mut raw = [0u8; 8];
                    raw.copy_from_slice(&self.body[value_at..value_at + 8]);
                    iface.offset_s = if self.big_endian {
                        i64::from_be_bytes(raw)
                    } else {
                        i64::from_le_bytes(raw)
                    };
                }
                _ => {}
            }
            at = value_at + len.div_ceil(4) * 4;
        }
        Ok(iface)
    }

    /// Enhanced (or obsolete) packet block.
    fn packet(&self, block_type: u32, interfaces: usize) -> Result<BlockPacket, PcapError> {
        let body_len = self.body.len();
        if body_len < 20 {
            return Err(self.corrupt(0, "packet block too short".into()));
        }
        let iface = if block_type == PCAPNG_EPB {
            self.u32(0) as usize
        } else {
            usize::from(self.u16(0))
        };
        if iface >= interfaces {
            return Err(self.corrupt(
                0,
                format!("packet for interface {iface}, but only {interfaces} described"),
            ));
        }
        let ts_units = (u64::from(self.u32(4)) << 32) | u64::from(self.u32(8));
        let cap_len = self.u32(12) as usize;
        let orig_len = self.u32(16);
        if 20 + cap_len > body_len {
            return Err(self.corrupt(
                12,
                format!("captured length {cap_len} exceeds the block body of {body_len} bytes"),
            ));
        }
        Ok(BlockPacket {
            start: 20,
            end: 20 + cap_len,
            iface,
            ts_units,
            orig_len,
        })
    }

    /// Simple packet block: no timestamp, interface 0, captured length implied.
    fn simple_packet(&self, snaplen: u32) -> Result<BlockPacket, PcapError> {
        let body_len = self.body.len();
        if body_len < 4 {
            return Err(self.corrupt(0, "simple packet block too short".into()));
        }
        let orig_len = self.u32(0);
        let mut cap_len = (orig_len as usize).min(body_len - 4);
        if snaplen != 0 {
            cap_len = cap_len.min(snaplen as usize);
        }
        Ok(BlockPacket {
            start: 4,
            end: 4 + cap_len,
            iface: 0,
            ts_units: 0,
            orig_len,
        })
    }
}

#[cfg(test)]
mod tests;
