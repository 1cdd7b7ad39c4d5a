//! Byte access to the packet, the same for XDP and tc.
//!
//! Header reads are fixed-size copies at a variable offset (IPv4 options, IPv6 extension
//! headers, VLAN tags). XDP frames are linear, so they read the packet directly after a bounds
//! check. An skb's headers are nearly always in its linear part, read directly too; bytes
//! beyond it (the payload of an egress skb usually sits in page fragments) go through
//! `bpf_skb_load_bytes`, which handles non-linear skbs. Copies of a record's frame head use the
//! load-bytes helpers on both hooks.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, xdp_md},
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use shadowtap_common::MAX_CAPTURE;

pub trait Packet {
    /// Length of the whole packet in bytes.
    fn len(&self) -> u32;
    fn ifindex(&self) -> u32;
    /// Reads `N` bytes at `offset`; `None` when the packet is shorter.
    fn load<const N: usize>(&self, offset: u32) -> Option<[u8; N]>;
    /// Copies the first `len` bytes of the packet to `dst`, which has room for `ROOM` bytes.
    /// `len` must already be in `1..=ROOM`.
    fn copy_head<const ROOM: usize>(&self, dst: *mut u8, len: u32) -> bool;
}

/// Clamps `len` into `1..=ROOM` in a form the verifier can follow for a helper's size argument
/// (an explicit compare-and-branch on the register that is passed).
#[inline(always)]
fn bounded<const ROOM: usize>(len: u32) -> Option<u32> {
    let len = core::hint::black_box(len);
    if len == 0 || len > ROOM as u32 || len > MAX_CAPTURE as u32 {
        return None;
    }
    Some(len)
}

pub struct XdpPacket {
    ctx: *mut xdp_md,
    data: usize,
    data_end: usize,
    ifindex: u32,
}

/// Largest offset a header read may start at. Bounding the offset gives the verifier a
/// known range for `data + offset`, which direct packet access requires.
const MAX_HEADER_OFFSET: usize = 4096;

impl XdpPacket {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            ctx: ctx.ctx,
            data: ctx.data(),
            data_end: ctx.data_end(),
            ifindex: ctx.ingress_ifindex() as u32,
        }
    }
}

impl Packet for XdpPacket {
    #[inline(always)]
    fn len(&self) -> u32 {
        (self.data_end - self.data) as u32
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Direct packet access: XDP frames are linear (we do not opt into multi-buffer), so a
    /// bounds check against `data_end` replaces a helper call per header.
    #[inline(always)]
    fn load<const N: usize>(&self, offset: u32) -> Option<[u8; N]> {
        let off = offset as usize;
        if off > MAX_HEADER_OFFSET {
            return None;
        }
        let start = self.data + off;
        if start + N > self.data_end {
            return None;
        }
        // SAFETY: [start, start + N) lies inside the frame, checked just above.
        Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
    }

    #[inline(always)]
    fn copy_head<const ROOM: usize>(&self, dst: *mut u8, len: u32) -> bool {
        let Some(len) = bounded::<ROOM>(len) else {
            return false;
        };
        // SAFETY: `dst` has ROOM bytes of room and `len <= ROOM`.
        unsafe { bpf_xdp_load_bytes(self.ctx, 0, dst.cast(), len) == 0 }
    }
}

pub struct SkbPacket {
    skb: *mut __sk_buff,
    /// The linear part of the skb, readable directly.
    data: usize,
    data_end: usize,
    len: u32,
    ifindex: u32,
}

impl SkbPacket {
    #[inline(always)]
    pub fn new(ctx: &TcContext) -> Self {
        let skb = ctx.as_ptr().cast::<__sk_buff>();
        // SAFETY: the context pointer is valid for the program's lifetime.
        let ifindex = unsafe { (*skb).ifindex };
        Self {
            skb,
            data: ctx.data(),
            data_end: ctx.data_end(),
            len: ctx.skb.len(),
            ifindex,
        }
    }
}

impl Packet for SkbPacket {
    #[inline(always)]
    fn len(&self) -> u32 {
        self.len
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Directly from the linear part when the bytes lie in it (headers nearly always do; a
    /// helper call per header was a measurable share of the egress program), else through
    /// the helper, which also reads page fragments.
    #[inline(always)]
    fn load<const N: usize>(&self, offset: u32) -> Option<[u8; N]> {
        let off = offset as usize;
        if off <= MAX_HEADER_OFFSET {
            let start = self.data + off;
            if start + N <= self.data_end {
                // SAFETY: [start, start + N) lies inside the linear data, checked just above.
                return Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) });
            }
        }
        // Uninitialised: the helper takes uninitialised memory and fills all N bytes or fails
        // (zeroing first compiled to a byte-loop `memset` call per read).
        let mut buf = core::mem::MaybeUninit::<[u8; N]>::uninit();
        // SAFETY: the helper writes exactly N bytes into `buf` or fails on short packets.
        let ret = unsafe {
            bpf_skb_load_bytes(self.skb.cast(), offset, buf.as_mut_ptr().cast(), N as u32)
        };
        // SAFETY: on success all N bytes were written.
        (ret == 0).then(|| unsafe { buf.assume_init() })
    }

    #[inline(always)]
    fn copy_head<const ROOM: usize>(&self, dst: *mut u8, len: u32) -> bool {
        let Some(len) = bounded::<ROOM>(len) else {
            return false;
        };
        // SAFETY: `dst` has ROOM bytes of room and `len <= ROOM`.
        unsafe { bpf_skb_load_bytes(self.skb.cast(), 0, dst.cast(), len) == 0 }
    }
}
