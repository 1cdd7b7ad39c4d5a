//! shadowtap kernel programs.
//!
//! `shadowtap_xdp` (ingress) and `shadowtap_tc` (egress, host mode) share one parser
//! (`tap::inspect`), generic over how packet bytes are read. Every packet updates the per-CPU
//! counters and its flow's slot in the per-CPU flow cache; only TCP open/close, HTTP/1.x heads
//! and TLS ClientHellos produce a ring-buffer record carrying the frame's head (headers plus at
//! most `snaplen` payload bytes — never bodies). Userspace re-parses those bytes with the same
//! decoder as the pcap path.
#![no_std]
#![no_main]

mod packet;
mod tap;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use shadowtap_common::{DIR_EGRESS, DIR_INGRESS, MODE_TAP};

use crate::packet::{SkbPacket, XdpPacket};

#[xdp]
pub fn shadowtap_xdp(ctx: XdpContext) -> u32 {
    let pkt = XdpPacket::new(&ctx);
    let mode = tap::inspect(&pkt, DIR_INGRESS);
    // Tap mode: the port is a dedicated SPAN/mirror port, nothing on the host consumes its
    // frames, so drop them after accounting instead of paying for the stack.
    if mode == MODE_TAP {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[classifier]
pub fn shadowtap_tc(ctx: TcContext) -> i32 {
    let pkt = SkbPacket::new(&ctx);
    let _ = tap::inspect(&pkt, DIR_EGRESS);
    // TC_ACT_UNSPEC is TCX_NEXT for tcx links: let any later program decide.
    TC_ACT_UNSPEC
}

/// A bare XDP_PASS program, the baseline of `cargo xtask bench`.
#[xdp]
pub fn shadowtap_xdp_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// A bare tc program, with the bare XDP one the hook-cost baseline of `cargo xtask bench live`
/// (`shadowtap-agent run --baseline-programs`).
#[classifier]
pub fn shadowtap_tc_baseline(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
