//! Byte access to the packet, the same for XDP and tc.
//!
//! All reads go through the `bpf_xdp_load_bytes` / `bpf_skb_load_bytes` helpers into
//! fixed-size stack buffers. That costs a helper call per header but keeps every offset
//! variable (IPv4 options, IPv6 extension headers, VLAN tags) without fighting the
//! verifier's packet-pointer range tracking, and it works on non-linear skbs on egress.

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
    /// Copies the first `len` bytes of the packet to `dst`, which has room for `MAX_CAPTURE`
    /// bytes. `len` must already be in `1..=MAX_CAPTURE`.
    fn copy_head(&self, dst: *mut u8, len: u32) -> bool;
}

/// Clamps `len` into `1..=MAX_CAPTURE` in a form the verifier can follow for a helper's
/// size argument (an explicit compare-and-branch on the register that is passed).
#[inline(always)]
fn bounded(len: u32) -> Option<u32> {
    let len = core::hint::black_box(len);
    if len == 0 || len > MAX_CAPTURE as u32 {
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
    fn copy_head(&self, dst: *mut u8, len: u32) -> bool {
        let Some(len) = bounded(len) else {
            return false;
        };
        // SAFETY: `dst` has MAX_CAPTURE bytes of room and `len <= MAX_CAPTURE`.
        unsafe { bpf_xdp_load_bytes(self.ctx, 0, dst.cast(), len) == 0 }
    }
}

pub struct SkbPacket {
    skb: *mut __sk_buff,
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

    #[inline(always)]
    fn load<const N: usize>(&self, offset: u32) -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        // SAFETY: the helper writes at most N bytes into `buf` and fails on short packets.
        let ret = unsafe {
            bpf_skb_load_bytes(self.skb.cast(), offset, buf.as_mut_ptr().cast(), N as u32)
        };
        (ret == 0).then_some(buf)
    }

    #[inline(always)]
    fn copy_head(&self, dst: *mut u8, len: u32) -> bool {
        let Some(len) = bounded(len) else {
            return false;
        };
        // SAFETY: `dst` has MAX_CAPTURE bytes of room and `len <= MAX_CAPTURE`.
        unsafe { bpf_skb_load_bytes(self.skb.cast(), 0, dst.cast(), len) == 0 }
    }
}
