//! The per-packet logic shared by the XDP and tc programs: parse L2–L4 with explicit bounds,
//! account, and emit a ring-buffer record for the few packets userspace needs to see.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use aya_log_ebpf::debug;
use shadowtap_common::{
    AF_V4, AF_V6, Config, Counter, Counters, DEFAULT_FLOW_ENTRIES, FlowKey, FlowRecord, FlowSlot,
    FlowStats, MAX_CAPTURE, MAX_FILTER_PORTS, MAX_SNAPLEN, Record, RecordHeader, RecordKind,
    SMALL_CAPTURE, SmallRecord, TLS_HEAD_LEN,
};

use crate::packet::Packet;

/// Records for userspace. Size is set by userspace at load time (`--ringbuf-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// One block of counters per hook direction: a single lookup per packet finds them all.
#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(2, 0);

/// Runtime configuration, set by userspace at load time in `.rodata`: the verifier sees the
/// values as constants and drops the branches they rule out (port filter, sampling), and no
/// map lookup is paid per packet. Changing it means loading the programs again.
#[unsafe(no_mangle)]
static SHADOWTAP_CONFIG: Config = Config::DEFAULT;

#[map]
static PORT_FILTER: HashMap<u16, u8> = HashMap::with_max_entries(MAX_FILTER_PORTS, 0);

/// The per-CPU direct-mapped flow cache: slot `flow_hash(key) & cfg.flow_mask` holds one
/// flow's key and counters on this CPU. A flow whose slot holds another flow takes it over
/// after flushing the other's counters to userspace as a `FlowEvicted` record, so nothing is
/// lost silently (an array lookup is inlined by the verifier; the LRU hash map it replaces
/// cost about 60 ns per packet). Slot count set by userspace at load (`--flow-entries`,
/// rounded up to a power of two).
#[map]
static FLOWS: PerCpuArray<FlowSlot> = PerCpuArray::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);

const ETH_HLEN: u32 = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// IPv6 extension headers walked before giving up (hop-by-hop, routing, fragment,
/// destination options and AH; a legitimate chain rarely has more than three).
const MAX_IPV6_EXT: usize = 6;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

/// This CPU's counter block for one direction (null only if the map were missing).
type Ctrs = *mut Counters;

#[inline(always)]
fn count(ctrs: Ctrs, counter: Counter, value: u64) {
    if ctrs.is_null() {
        return;
    }
    // SAFETY: per-CPU block, no concurrent writer on this CPU while the program runs; the
    // index is a constant below COUNTER_COUNT.
    unsafe { (*ctrs)[counter as usize] += value };
}

/// An IPv4 address in a flow key's 16-byte field (first four bytes, the rest zero), built
/// from two 8-byte words: zeroing the tail bytewise made LLVM emit a call to a byte-loop
/// `memset` per address on every packet.
#[inline(always)]
fn v4_key_addr(addr: [u8; 4]) -> [u8; 16] {
    let words = [u64::from(u32::from_ne_bytes(addr)).to_le(), 0u64];
    // SAFETY: [u64; 2] and [u8; 16] have the same size and any bit pattern is valid; on a
    // little-endian target the first word's low four bytes are `addr` in order.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(words) }
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// What the L3/L4 walk found.
struct Parsed {
    key: FlowKey,
    /// Offset of the transport payload in the frame, and its length on the wire.
    payload_off: u32,
    payload_len: u32,
    tcp_flags: u8,
}

enum Walk {
    Ok(Parsed),
    NonIp,
    Malformed,
}

/// Runs the whole per-packet path and returns the configured mode so the caller can choose
/// its verdict.
#[inline(always)]
pub fn inspect<P: Packet>(pkt: &P, dir: u8) -> u32 {
    // SAFETY: a plain read of a global; volatile so the compiler does not fold in the
    // default that userspace overrides at load time.
    let cfg = unsafe { core::ptr::read_volatile(&raw const SHADOWTAP_CONFIG) };
    let frame_len = pkt.len();
    let ctrs: Ctrs = COUNTERS
        .get_ptr_mut(dir as u32)
        .unwrap_or(core::ptr::null_mut());
    count(ctrs, Counter::Packets, 1);
    count(ctrs, Counter::Bytes, frame_len as u64);

    let parsed = match walk(pkt, dir) {
        Walk::Ok(p) => p,
        Walk::NonIp => {
            count(ctrs, Counter::NonIp, 1);
            return cfg.mode;
        }
        Walk::Malformed => {
            count(ctrs, Counter::Malformed, 1);
            debug!(pkt_ctx(), "malformed frame of {} bytes", frame_len);
            return cfg.mode;
        }
    };

    if cfg.port_filter != 0
        && PORT_FILTER.get_ptr(&parsed.key.src_port).is_none()
        && PORT_FILTER.get_ptr(&parsed.key.dst_port).is_none()
    {
        count(ctrs, Counter::Filtered, 1);
        return cfg.mode;
    }

    // Flow timestamps only need tick resolution (idle expiry, first/last seen): the coarse
    // clock is a plain load, where the precise one reads the clocksource (the TSC through
    // kvm-clock in a VM). Same CLOCK_MONOTONIC base.
    // SAFETY: reading the kernel's monotonic clock has no preconditions.
    let coarse_now = unsafe { bpf_ktime_get_coarse_ns() };
    update_flow(&parsed, frame_len, coarse_now, &cfg, ctrs);

    if let Some(kind) = classify(pkt, &parsed) {
        if kind != RecordKind::TcpControl && !sampled_in(&parsed.key, cfg.sample_n) {
            count(ctrs, Counter::SampledOut, 1);
        } else {
            emit(pkt, &parsed, kind, &cfg, frame_len, dir, ctrs);
        }
    }
    cfg.mode
}

/// aya-log wants an `EbpfContext`; the log ring buffer does not use it, so a null context is
/// fine. Logging is only on rare paths (and compiled out below the configured level).
#[inline(always)]
fn pkt_ctx() -> NullCtx {
    NullCtx
}

pub struct NullCtx;
impl aya_ebpf::EbpfContext for NullCtx {
    fn as_ptr(&self) -> *mut core::ffi::c_void {
        core::ptr::null_mut()
    }
}

#[inline(always)]
fn walk<P: Packet>(pkt: &P, dir: u8) -> Walk {
    let Some(eth) = pkt.load::<14>(0) else {
        return Walk::Malformed;
    };
    let mut ethertype = be16(&eth, 12);
    let mut l3 = ETH_HLEN;
    // Up to two VLAN tags (802.1ad outer, 802.1Q inner).
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(tag) = pkt.load::<4>(l3) else {
            return Walk::Malformed;
        };
        ethertype = be16(&tag, 2);
        l3 += 4;
    }
    let frame_len = pkt.len();
    let mut key = FlowKey {
        src: [0; 16],
        dst: [0; 16],
        ifindex: pkt.ifindex(),
        src_port: 0,
        dst_port: 0,
        proto: 0,
        family: 0,
        direction: dir,
        _pad: 0,
    };
    let l4: u32;
    let l3_end: u32;
    let mut has_l4 = true;
    match ethertype {
        ETH_P_IP => {
            let Some(ip) = pkt.load::<20>(l3) else {
                return Walk::Malformed;
            };
            if ip[0] >> 4 != 4 {
                return Walk::Malformed;
            }
            let ihl = ((ip[0] & 0x0f) as u32) * 4;
            let total = be16(&ip, 2) as u32;
            if ihl < 20 {
                return Walk::Malformed;
            }
            // A total length of 0 is used by TSO/BIG TCP super-packets: trust the frame.
            let total = if total == 0 { frame_len - l3 } else { total };
            if total < ihl || l3 + total > frame_len {
                return Walk::Malformed;
            }
            let frag = be16(&ip, 6) & 0x1fff;
            has_l4 = frag == 0;
            key.proto = ip[9];
            key.family = AF_V4;
            key.src = v4_key_addr([ip[12], ip[13], ip[14], ip[15]]);
            key.dst = v4_key_addr([ip[16], ip[17], ip[18], ip[19]]);
            l4 = l3 + ihl;
            l3_end = l3 + total;
        }
        ETH_P_IPV6 => {
            let Some(ip) = pkt.load::<40>(l3) else {
                return Walk::Malformed;
            };
            if ip[0] >> 4 != 6 {
                return Walk::Malformed;
            }
            let plen = be16(&ip, 4) as u32;
            let plen = if plen == 0 { frame_len - l3 - 40 } else { plen };
            if l3 + 40 + plen > frame_len {
                return Walk::Malformed;
            }
            key.family = AF_V6;
            key.src.copy_from_slice(&ip[8..24]);
            key.dst.copy_from_slice(&ip[24..40]);
            l3_end = l3 + 40 + plen;
            let mut nh = ip[6];
            let mut off = l3 + 40;
            let mut done = false;
            for _ in 0..MAX_IPV6_EXT {
                match nh {
                    // hop-by-hop, routing, destination options: (len + 1) * 8
                    0 | 43 | 60 => {
                        let Some(h) = pkt.load::<2>(off) else {
                            return Walk::Malformed;
                        };
                        nh = h[0];
                        off += (h[1] as u32 + 1) * 8;
                    }
                    // fragment: fixed 8 bytes; only the first fragment carries L4
                    44 => {
                        let Some(h) = pkt.load::<8>(off) else {
                            return Walk::Malformed;
                        };
                        nh = h[0];
                        if be16(&h, 2) & 0xfff8 != 0 {
                            has_l4 = false;
                        }
                        off += 8;
                    }
                    // authentication header: (len + 2) * 4
                    51 => {
                        let Some(h) = pkt.load::<2>(off) else {
                            return Walk::Malformed;
                        };
                        nh = h[0];
                        off += (h[1] as u32 + 2) * 4;
                    }
                    _ => {
                        done = true;
                        break;
                    }
                }
                if off > l3_end {
                    return Walk::Malformed;
                }
            }
            if !done {
                // Chain longer than we walk: count it rather than guess at the transport.
                return Walk::Malformed;
            }
            key.proto = nh;
            l4 = off;
        }
        _ => return Walk::NonIp,
    }

    let mut parsed = Parsed {
        key,
        payload_off: l3_end,
        payload_len: 0,
        tcp_flags: 0,
    };
    if !has_l4 {
        return Walk::Ok(parsed);
    }
    match parsed.key.proto {
        IPPROTO_TCP => {
            let Some(tcp) = pkt.load::<20>(l4) else {
                return Walk::Malformed;
            };
            let doff = ((tcp[12] >> 4) as u32) * 4;
            if doff < 20 || l4 + doff > l3_end {
                return Walk::Malformed;
            }
            parsed.key.src_port = be16(&tcp, 0);
            parsed.key.dst_port = be16(&tcp, 2);
            parsed.tcp_flags = tcp[13];
            parsed.payload_off = l4 + doff;
            parsed.payload_len = l3_end - (l4 + doff);
        }
        IPPROTO_UDP => {
            let Some(udp) = pkt.load::<8>(l4) else {
                return Walk::Malformed;
            };
            if l4 + 8 > l3_end {
                return Walk::Malformed;
            }
            parsed.key.src_port = be16(&udp, 0);
            parsed.key.dst_port = be16(&udp, 2);
            parsed.payload_off = l4 + 8;
            parsed.payload_len = l3_end - (l4 + 8);
        }
        _ => {}
    }
    Walk::Ok(parsed)
}

/// The flow key as eleven 32-bit words (it is 44 bytes of plain data, 4-aligned).
#[inline(always)]
fn key_words(key: &FlowKey) -> [u32; 11] {
    // SAFETY: FlowKey is #[repr(C)] plain data of 44 bytes without padding.
    unsafe { core::mem::transmute::<FlowKey, [u32; 11]>(*key) }
}

/// Slot hash of a flow key (multiply-xor over its words; not keyed: a crafted collision only
/// makes two flows take turns in a slot, each turn flushed and counted).
#[inline(always)]
fn flow_hash(w: &[u32; 11]) -> u32 {
    let mut h: u64 = 0;
    let mut i = 0;
    while i < 11 {
        h = (h ^ w[i] as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        i += 1;
    }
    (h >> 32) as u32
}

/// Word-wise key equality (`==` on the arrays compiled to a call of a byte-loop `bcmp`).
#[inline(always)]
fn same_key(a: &[u32; 11], b: &[u32; 11]) -> bool {
    let mut diff = 0u32;
    let mut i = 0;
    while i < 11 {
        diff |= a[i] ^ b[i];
        i += 1;
    }
    diff == 0
}

#[inline(always)]
fn update_flow(p: &Parsed, frame_len: u32, now: u64, cfg: &Config, ctrs: Ctrs) {
    let words = key_words(&p.key);
    let idx = flow_hash(&words) & cfg.flow_mask;
    let Some(slot) = FLOWS.get_ptr_mut(idx) else {
        count(ctrs, Counter::FlowUpdateFailed, 1);
        return;
    };
    // SAFETY: this CPU's value of an array slot; only this CPU writes it, and no other program
    // invocation runs on this CPU while we do.
    unsafe {
        let s = &mut (*slot).stats;
        if s.packets != 0 {
            if same_key(&key_words(&(*slot).key), &words) {
                s.packets += 1;
                s.bytes += frame_len as u64;
                s.payload_bytes += p.payload_len as u64;
                s.last_ns = now;
                s.tcp_flags |= p.tcp_flags as u32;
                return;
            }
            // Another flow holds the slot: flush its counters before taking it over.
            if !flush_slot(slot, cfg, ctrs) {
                count(ctrs, Counter::FlowUpdateFailed, 1);
                return;
            }
        }
        (*slot).key = p.key;
        (*slot).stats = FlowStats {
            packets: 1,
            bytes: frame_len as u64,
            payload_bytes: p.payload_len as u64,
            first_ns: now,
            last_ns: now,
            tcp_flags: p.tcp_flags as u32,
            _pad: 0,
        };
    }
    count(ctrs, Counter::FlowInserts, 1);
}

/// Copies an occupied slot into a `FlowEvicted` record and marks the slot empty before the
/// record is submitted (a consumer that has read the record then never sees the flow in the
/// slot too); false, with the slot untouched, when the ring is full.
///
/// # Safety
/// `slot` is this CPU's value of a `FLOWS` slot.
#[inline(always)]
unsafe fn flush_slot(slot: *mut FlowSlot, cfg: &Config, ctrs: Ctrs) -> bool {
    let Some(mut entry) = EVENTS.reserve::<FlowRecord>(0) else {
        count(ctrs, Counter::RingbufReserveFailed, 1);
        return false;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is the reserved, writable record; `slot` is valid per the contract.
    unsafe {
        (*rec).header = RecordHeader {
            ts_ns: (*slot).stats.last_ns,
            ifindex: (*slot).key.ifindex,
            wire_len: 0,
            cap_len: 0,
            kind: RecordKind::FlowEvicted as u8,
            direction: (*slot).key.direction,
            _pad: 0,
        };
        // Word by word: a struct copy compiled to a call of a byte-loop `memcpy`.
        let src = slot.cast::<u64>();
        let dst = (&raw mut (*rec).slot).cast::<u64>();
        let mut i = 0;
        while i < core::mem::size_of::<FlowSlot>() / 8 {
            core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i)));
            i += 1;
        }
        (*slot).stats.packets = 0;
    }
    // A flood of new flows fills the ring with these: the same early wakeup as for frames.
    entry.submit(wakeup_flags(cfg, core::mem::size_of::<FlowRecord>(), ctrs));
    count(ctrs, Counter::FlowEvictions, 1);
    true
}

/// HTTP/1.x method tokens (with their trailing space) and the status-line prefix.
#[inline(always)]
fn is_http_head(b: &[u8; 8]) -> bool {
    matches!(
        b,
        [b'G', b'E', b'T', b' ', ..]
            | [b'P', b'U', b'T', b' ', ..]
            | [b'P', b'O', b'S', b'T', b' ', ..]
            | [b'H', b'E', b'A', b'D', b' ', ..]
            | [b'P', b'A', b'T', b'C', b'H', b' ', ..]
            | [b'T', b'R', b'A', b'C', b'E', b' ', ..]
            | [b'D', b'E', b'L', b'E', b'T', b'E', b' ', ..]
            | [b'O', b'P', b'T', b'I', b'O', b'N', b'S', b' ']
            | [b'C', b'O', b'N', b'N', b'E', b'C', b'T', b' ']
            | [b'H', b'T', b'T', b'P', b'/', b'1', b'.', _]
    )
}

/// TLS record of type handshake (0x16), version 3.x, whose first handshake message is a
/// ClientHello (type 1).
#[inline(always)]
fn is_client_hello(b: &[u8; 8]) -> bool {
    b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04 && b[5] == 0x01
}

/// Must stay in step with `shadowtap_agent::decode::classify`, which applies the same rule to
/// pcap input.
#[inline(always)]
fn classify<P: Packet>(pkt: &P, p: &Parsed) -> Option<RecordKind> {
    if p.key.proto != IPPROTO_TCP {
        return None;
    }
    if p.payload_len >= 8 {
        if let Some(head) = pkt.load::<8>(p.payload_off) {
            if is_http_head(&head) {
                return Some(RecordKind::HttpHead);
            }
            if is_client_hello(&head) {
                return Some(RecordKind::TlsClientHello);
            }
        }
    }
    if p.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
        return Some(RecordKind::TcpControl);
    }
    None
}

/// Keeps one connection in `n`, decided by a hash that is the same for both directions, so a
/// request and its response are kept or dropped together.
#[inline(always)]
fn sampled_in(key: &FlowKey, n: u32) -> bool {
    if n <= 1 {
        return true;
    }
    let mut h: u32 = (key.src_port as u32 ^ key.dst_port as u32).wrapping_mul(0x9e37_79b1);
    let mut i = 0;
    while i < 16 {
        h ^= (key.src[i] ^ key.dst[i]) as u32;
        h = h.wrapping_mul(0x0100_0193);
        i += 1;
    }
    h % n == 0
}

#[inline(always)]
fn emit<P: Packet>(
    pkt: &P,
    p: &Parsed,
    kind: RecordKind,
    cfg: &Config,
    frame_len: u32,
    dir: u8,
    ctrs: Ctrs,
) {
    let want_payload = match kind {
        RecordKind::TcpControl | RecordKind::FlowEvicted => 0,
        RecordKind::HttpHead => {
            if cfg.snaplen == 0 || cfg.snaplen > MAX_SNAPLEN as u32 {
                MAX_SNAPLEN as u32
            } else {
                cfg.snaplen
            }
        }
        RecordKind::TlsClientHello => TLS_HEAD_LEN as u32,
    };
    let payload = if p.payload_len < want_payload {
        p.payload_len
    } else {
        want_payload
    };
    let mut cap = p.payload_off + payload;
    if cap > frame_len {
        cap = frame_len;
    }
    if cap > MAX_CAPTURE as u32 {
        cap = MAX_CAPTURE as u32;
    }

    // Records carry request-response latency: they take the precise clock.
    // SAFETY: reading the kernel's monotonic clock has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let header = RecordHeader {
        ts_ns: now,
        ifindex: pkt.ifindex(),
        wire_len: frame_len,
        cap_len: cap as u16,
        kind: kind as u8,
        direction: dir,
        _pad: 0,
    };
    // Two reservation sizes, each a constant as the verifier requires: most records fit the
    // small one.
    let written = if cap <= SMALL_CAPTURE as u32 {
        write_record::<P, SmallRecord, SMALL_CAPTURE>(pkt, &header, cap, cfg, ctrs)
    } else {
        write_record::<P, Record, MAX_CAPTURE>(pkt, &header, cap, cfg, ctrs)
    };
    let Some(written) = written else {
        count(ctrs, Counter::RingbufReserveFailed, 1);
        return;
    };
    if written {
        count(ctrs, Counter::Events, 1);
    } else {
        count(ctrs, Counter::Malformed, 1);
    }
}

/// A ring-buffer record type: a [`RecordHeader`] followed by `ROOM` bytes of frame.
trait RingRecord {
    fn parts(rec: *mut Self) -> (*mut RecordHeader, *mut u8);
}

impl RingRecord for SmallRecord {
    #[inline(always)]
    fn parts(rec: *mut Self) -> (*mut RecordHeader, *mut u8) {
        // SAFETY: field projections of a valid pointer; nothing is read.
        unsafe { (&raw mut (*rec).header, (*rec).data.as_mut_ptr()) }
    }
}

impl RingRecord for Record {
    #[inline(always)]
    fn parts(rec: *mut Self) -> (*mut RecordHeader, *mut u8) {
        // SAFETY: as above.
        unsafe { (&raw mut (*rec).header, (*rec).data.as_mut_ptr()) }
    }
}

/// Reserves an `R`, writes the header and the first `cap` bytes of the frame, and submits it;
/// `None` when the ring is full, `Some(false)` when the frame could not be copied.
#[inline(always)]
fn write_record<P: Packet, R: RingRecord + 'static, const ROOM: usize>(
    pkt: &P,
    header: &RecordHeader,
    cap: u32,
    cfg: &Config,
    ctrs: Ctrs,
) -> Option<bool> {
    let mut entry = EVENTS.reserve::<R>(0)?;
    let (head, data) = R::parts(entry.as_mut_ptr());
    // SAFETY: `head` and `data` point into the reserved, writable record; the header is written
    // whole and the first `cap` (<= ROOM) bytes of data, which is all userspace reads.
    let copied = unsafe {
        *head = *header;
        pkt.copy_head::<ROOM>(data, cap)
    };
    if copied {
        entry.submit(wakeup_flags(cfg, core::mem::size_of::<R>(), ctrs));
    } else {
        entry.discard(0);
    }
    Some(copied)
}

/// Submit flags for a record of `size` bytes: no wakeup, unless this record takes the unread
/// bytes across `cfg.wakeup_bytes` (then one forced wakeup, counted). The consumer drains on a
/// timer; the mark only brings it early when records arrive faster than the timer drains them.
/// Crossing, not "above", so a consumer that is behind gets one wakeup, not one per record.
#[inline(always)]
fn wakeup_flags(cfg: &Config, size: usize, ctrs: Ctrs) -> u64 {
    let mark = cfg.wakeup_bytes as u64;
    // Each record also takes an 8-byte ring header.
    let size = size as u64 + 8;
    let unread = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if mark == 0 || (unread >= mark && unread < mark + size) {
        count(ctrs, Counter::RingbufWakeups, 1);
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
