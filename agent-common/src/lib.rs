//! Types shared by the kernel programs (`shadowtap-ebpf`) and the userspace agent.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes it into maps and the ring
//! buffer, userspace reads the same bytes. Field order is chosen so that no implicit padding
//! exists (the verifier rejects reads of uninitialised stack padding in keys).
#![no_std]
// Explicit `_pad` fields keep the #[repr(C)] layouts free of implicit padding (the verifier
// rejects uninitialised stack bytes in map keys); they are public so both sides can zero them.
#![allow(clippy::pub_underscore_fields)]

/// Largest number of frame bytes one ring-buffer record carries: L2–L4 headers plus the head of
/// the payload. 1024 leaves room for a TLS ClientHello head after worst-case IPv6 extension
/// headers; HTTP heads are further limited by the runtime `snaplen`.
pub const MAX_CAPTURE: usize = 1024;
/// Default and maximum HTTP payload head copied per record.
pub const DEFAULT_SNAPLEN: u16 = 128;
pub const MAX_SNAPLEN: u16 = 256;
/// Smallest useful snaplen: both sides classify on the first 8 payload bytes, and a request
/// line needs a few more to name its path.
pub const MIN_SNAPLEN: u16 = 16;
/// TLS ClientHello heads are copied up to this many payload bytes (SNI lives in the extensions).
pub const TLS_HEAD_LEN: u16 = 768;
/// Capacity of the optional port filter map.
pub const MAX_FILTER_PORTS: u32 = 64;
/// Default slot count of the per-CPU flow cache (a power of two).
pub const DEFAULT_FLOW_ENTRIES: u32 = 65_536;

/// Why the kernel emitted a record. Userspace re-parses the copied frame bytes with the same
/// decoder as the pcap path; the kind is the kernel's classification, used for accounting.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// TCP SYN, SYN-ACK, FIN or RST.
    TcpControl = 1,
    /// TCP payload starting with an HTTP/1.x method token or `HTTP/1.` status line.
    HttpHead = 2,
    /// TLS handshake record carrying a ClientHello.
    TlsClientHello = 3,
    /// Not a frame: a flow-cache slot's key and counters, flushed when a colliding flow took
    /// the slot ([`FlowRecord`]). Userspace adds them to the flow's totals.
    FlowEvicted = 4,
}

impl RecordKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::TcpControl),
            2 => Some(Self::HttpHead),
            3 => Some(Self::TlsClientHello),
            4 => Some(Self::FlowEvicted),
            _ => None,
        }
    }
}

/// Direction of the hook that saw the packet.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Header of every ring-buffer record; `cap_len` bytes of the frame follow in `data`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RecordHeader {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the hook ran.
    pub ts_ns: u64,
    pub ifindex: u32,
    /// Length of the whole frame (for GSO skbs on egress: the whole super-packet).
    pub wire_len: u32,
    /// Number of valid bytes in `data`.
    pub cap_len: u16,
    pub kind: u8,
    pub direction: u8,
    pub _pad: u32,
}

/// One ring-buffer record. The kernel reserves the full size but copies only `cap_len` bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Record {
    pub header: RecordHeader,
    pub data: [u8; MAX_CAPTURE],
}

pub const RECORD_HEADER_LEN: usize = core::mem::size_of::<RecordHeader>();

/// Frame bytes a small record carries. Most records (TCP control, HTTP heads with the default
/// snaplen of 128 behind up to 114 bytes of L2–L4 headers) fit, so the kernel reserves 256
/// bytes for them instead of a full [`Record`]: a quarter of the ring space and of the cache
/// lines the consumer touches. Userspace reads `cap_len` bytes either way.
pub const SMALL_CAPTURE: usize = 256 - RECORD_HEADER_LEN;

/// A [`Record`] for heads of at most [`SMALL_CAPTURE`] bytes (same header, shorter data).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SmallRecord {
    pub header: RecordHeader,
    pub data: [u8; SMALL_CAPTURE],
}

/// Runtime configuration, written by userspace into the single-slot `CONFIG` array before
/// attaching (and whenever it changes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `MODE_HOST` (pass) or `MODE_TAP` (account, then drop).
    pub mode: u32,
    /// HTTP payload head bytes per record, 1..=`MAX_SNAPLEN`.
    pub snaplen: u32,
    /// Keep one connection in `sample_n` for L7 records (1 = keep all). Sampling is by a hash of
    /// the connection's 4-tuple so that a request and its response are kept or dropped together.
    pub sample_n: u32,
    /// Non-zero: only packets whose source or destination port is in `PORT_FILTER` are tracked.
    pub port_filter: u32,
    /// Records are submitted without waking the consumer (it polls on a timer), except when the
    /// unread bytes in the ring cross this mark: then one wakeup brings the consumer early. A
    /// wakeup is a self-IPI (`irq_work`) per record, the largest cost of the tap on a busy host.
    /// 0: wake on every record.
    pub wakeup_bytes: u32,
    /// Slots of the direct-mapped flow cache minus one (the slot count is a power of two).
    pub flow_mask: u32,
}

pub const MODE_HOST: u32 = 0;
pub const MODE_TAP: u32 = 1;

impl Config {
    pub const DEFAULT: Self = Self {
        mode: MODE_HOST,
        snaplen: DEFAULT_SNAPLEN as u32,
        sample_n: 1,
        port_filter: 0,
        wakeup_bytes: 0,
        flow_mask: DEFAULT_FLOW_ENTRIES - 1,
    };
}

/// Indices into a [`Counters`] block (one block per hook direction in the per-CPU `COUNTERS`
/// array).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Packets = 0,
    Bytes = 1,
    NonIp = 2,
    Malformed = 3,
    Events = 4,
    RingbufReserveFailed = 5,
    SampledOut = 6,
    Filtered = 7,
    FlowInserts = 8,
    /// Packets not added to any flow: their slot held another flow whose counters could not be
    /// flushed (ring buffer full), so that flow kept the slot.
    FlowUpdateFailed = 9,
    /// Records submitted with a forced consumer wakeup (the ring crossed `wakeup_bytes`).
    RingbufWakeups = 10,
    /// Flows whose flow-cache slot was taken by a colliding flow; each one's counters went to
    /// userspace as a [`RecordKind::FlowEvicted`] record (not in `events_emitted`).
    FlowEvictions = 11,
}

pub const COUNTER_COUNT: u32 = 12;

/// The per-CPU value of the `COUNTERS` map: entry 0 is ingress, entry 1 egress.
pub type Counters = [u64; COUNTER_COUNT as usize];

impl Counter {
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::Packets,
        Counter::Bytes,
        Counter::NonIp,
        Counter::Malformed,
        Counter::Events,
        Counter::RingbufReserveFailed,
        Counter::SampledOut,
        Counter::Filtered,
        Counter::FlowInserts,
        Counter::FlowUpdateFailed,
        Counter::RingbufWakeups,
        Counter::FlowEvictions,
    ];

    /// Stable snake_case name used in JSON stats and Prometheus metrics.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Packets => "packets",
            Counter::Bytes => "bytes",
            Counter::NonIp => "non_ip",
            Counter::Malformed => "malformed",
            Counter::Events => "events_emitted",
            Counter::RingbufReserveFailed => "ringbuf_reserve_failed",
            Counter::SampledOut => "sampled_out",
            Counter::Filtered => "filtered",
            Counter::FlowInserts => "flow_inserts",
            Counter::FlowUpdateFailed => "flow_update_failed",
            Counter::RingbufWakeups => "ringbuf_wakeups",
            Counter::FlowEvictions => "flow_evictions",
        }
    }
}

/// Address family tag in `FlowKey`.
pub const AF_V4: u8 = 4;
pub const AF_V6: u8 = 6;

/// Key of a flow-cache slot: one entry per direction of a 5-tuple per interface.
/// IPv4 addresses are stored in the first four bytes of the 16-byte fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ifindex: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub direction: u8,
    pub _pad: u8,
}

/// Per-flow counters (per CPU; userspace sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    /// Frame bytes as seen by the hook.
    pub bytes: u64,
    /// Transport payload bytes (TCP/UDP payload), the figure applications can check against.
    pub payload_bytes: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// OR of all TCP flags seen.
    pub tcp_flags: u32,
    pub _pad: u32,
}

/// One slot of the per-CPU direct-mapped flow cache (`FLOWS`, a per-CPU array): the flow
/// that owns it and its counters on that CPU. `stats.packets == 0` marks an empty slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    pub key: FlowKey,
    pub _pad: u32,
    pub stats: FlowStats,
}

/// The ring-buffer record of an evicted slot: `header.kind` is [`RecordKind::FlowEvicted`],
/// `cap_len` is 0 (no frame bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlowRecord {
    pub header: RecordHeader,
    pub slot: FlowSlot,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of them are #[repr(C)] plain data without padding and valid for any bit pattern.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::FlowSlot {}
    unsafe impl aya::Pod for super::RecordHeader {}
}
