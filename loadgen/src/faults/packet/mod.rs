//! Packet-level faults: our own TCP over an AF_PACKET channel (`pnet` datalink), so single
//! segments can be spoiled, reordered or repeated.
//!
//! # Why the kernel stays out of it
//!
//! A raw-socket TCP client has a classic problem: the host's own TCP stack sees the target's
//! SYN-ACK, finds no socket for it and answers with RST, killing the connection. The usual fix
//! is a firewall rule dropping outgoing RSTs, which needs nft/iptables (absent on minimal hosts
//! and kernels without netfilter), and leaves a host-wide rule behind if the process dies.
//!
//! Instead these faults use an identity the host does not have: a source IPv4 address that no
//! interface carries, and a MAC address of our own (locally administered, derived from that
//! address unless given). Frames for that MAC arrive as `PACKET_OTHERHOST`, which the host's IP
//! layer discards before routing or TCP look at them (with forwarding on or off), so the host
//! never answers — no RST, no ICMP — and there is nothing to clean up. We answer ARP for the
//! address ourselves while a fault runs, and our ARP request for the target (or next hop) makes
//! the target learn us. The AF_PACKET socket still sees every frame, and ours are built whole,
//! which a raw IP socket would not allow: the kernel rewrites the IPv4 total length of
//! `IP_HDRINCL` packets, so a truncated segment could not be sent through one.
//!
//! The source address must be on the interface's subnet and unused (an address in use would
//! be answered by its owner too); [`Link::open`] refuses one configured on this host.

mod conn;
mod link;
mod wire;

use std::hash::{BuildHasher as _, RandomState};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use conn::{Conn, End, Mutation, Plan};
use link::Link;
use wire::Endpoints;

use super::response::Head;
use super::{
    FaultError, FaultKind, FaultOptions, FaultOutcome, FaultResult, netns, normal_request,
};

/// Where and as whom packet-level faults send.
///
/// The faults run their own TCP on an AF_PACKET channel, as an identity the host does not
/// have: `source` is an unassigned address of the interface's subnet and frames leave from our
/// own MAC. Replies to that MAC are `PACKET_OTHERHOST` to the host, whose IP layer discards
/// them, so its TCP never sees the target's SYN-ACK and never answers it with a reset — no
/// firewall rule is needed. Needs CAP_NET_RAW. See `docs/faults.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketOptions {
    /// The interface to send on, in [`FaultOptions::netns`] when that is set.
    pub interface: String,
    /// Our IPv4 address: on the interface's subnet, configured nowhere on this host (see the
    /// module docs of `faults::packet` for why).
    pub source: Ipv4Addr,
    /// Our MAC address; `None` derives `02:5a:a.b.c.d` from `source`. Must differ from the
    /// interface's own.
    pub source_mac: Option<[u8; 6]>,
    /// Send to this on-link router instead of the target directly.
    pub next_hop: Option<Ipv4Addr>,
    /// `None` picks successive ports from a random start in 32768..61000.
    pub source_port: Option<u16>,
    /// The request is split into this many segments (at least 2; fewer when the peer's MSS
    /// forces more, or the request is shorter).
    pub segments: usize,
    /// Initial retransmission timeout; doubles on each retransmission up to 2 s.
    pub rto: Duration,
}

impl PacketOptions {
    pub fn new(interface: impl Into<String>, source: Ipv4Addr) -> Self {
        Self {
            interface: interface.into(),
            source,
            source_mac: None,
            next_hop: None,
            source_port: None,
            segments: 4,
            rto: Duration::from_millis(200),
        }
    }

    pub(crate) fn source_mac(&self) -> [u8; 6] {
        self.source_mac.unwrap_or_else(|| {
            let [a, b, c, d] = self.source.octets();
            [0x02, 0x5a, a, b, c, d]
        })
    }
}

pub(super) async fn run(
    kind: FaultKind,
    target: SocketAddr,
    host: &str,
    path: &str,
    opts: &FaultOptions,
) -> Result<FaultResult, FaultError> {
    let popts = opts
        .packet
        .clone()
        .ok_or(FaultError::MissingPacketOptions(kind))?;
    let IpAddr::V4(dst) = target.ip() else {
        return Err(FaultError::NotIpv4(target));
    };
    let request = normal_request(host, path, None);
    let timeout = opts.timeout;
    // Blocking socket I/O for up to `timeout`, and possibly inside another namespace: a thread
    // of its own (see `netns`), not the runtime's.
    netns::run_in(opts.netns.as_deref(), move || {
        run_blocking(kind, (dst, target.port()), &request, &popts, timeout)
    })
    .await
}

fn run_blocking(
    kind: FaultKind,
    target: (Ipv4Addr, u16),
    request: &[u8],
    popts: &PacketOptions,
    timeout: Duration,
) -> Result<FaultResult, FaultError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut link = Link::open(popts)?;
    let peer_mac = link.resolve(popts.next_hop.unwrap_or(target.0), popts.rto, deadline)?;
    let ep = Endpoints {
        our_mac: link.our_mac,
        peer_mac,
        src: link.our_ip,
        dst: target.0,
        sport: popts.source_port.unwrap_or_else(next_port),
        dport: target.1,
    };
    let mut conn = Conn::new(&mut link, ep, random_u64() as u32, popts.rto, deadline);
    let result =
        |outcome, status, variant: String, retransmissions, faulty_segment_acked| FaultResult {
            kind,
            outcome,
            status,
            variant,
            retransmissions,
            faulty_segment_acked,
            elapsed: started.elapsed(),
        };
    match conn.handshake()? {
        None => {}
        Some(End::Refused) => {
            return Ok(result(
                FaultOutcome::ConnectionRefused,
                None,
                String::new(),
                0,
                None,
            ));
        }
        Some(_) => return Ok(result(FaultOutcome::Timeout, None, String::new(), 0, None)),
    }
    let segments = split(request.len(), popts.segments, usize::from(conn.peer_mss()));
    let (plan, variant) = plan(kind, &segments);
    let exchange = conn.exchange(request, &segments, &plan)?;
    match exchange.end {
        End::Complete | End::PeerClosed => {
            conn.close()?;
        }
        End::TimedOut => conn.abort()?,
        End::Reset | End::Refused => {}
    }
    let (mut outcome, status) = match (exchange.head, &exchange.end) {
        (Head::Final { status, .. }, _) => (FaultOutcome::from_status(status), Some(status)),
        (Head::Partial, End::Reset) => (FaultOutcome::ConnectionReset, None),
        (Head::Partial, End::TimedOut) => (FaultOutcome::Timeout, None),
        (Head::Partial, _) if exchange.received == 0 => (FaultOutcome::ClosedWithoutResponse, None),
        // Not HTTP, or a head the close cut short.
        (Head::Invalid | Head::Partial, _) => (FaultOutcome::InvalidResponse, None),
    };
    let faulty_acked = plan.faulty.map(|_| exchange.faulty_acked);
    if faulty_acked == Some(true) {
        outcome = FaultOutcome::FaultySegmentAccepted;
    }
    Ok(result(
        outcome,
        status,
        variant,
        exchange.retransmissions,
        faulty_acked,
    ))
}

/// Byte ranges of at most `mss` bytes, about `wanted` of them (at least 2 when possible).
fn split(len: usize, wanted: usize, mss: usize) -> Vec<Range<usize>> {
    let count = wanted.max(2).min(len.max(1));
    let size = len.div_ceil(count).clamp(1, mss.max(1));
    (0..len)
        .step_by(size)
        .map(|start| start..(start + size).min(len))
        .collect()
}

fn plan(kind: FaultKind, segments: &[Range<usize>]) -> (Plan, String) {
    let n = segments.len();
    let in_order: Vec<usize> = (0..n).collect();
    // The middle segment: with data on both sides, the target sees a gap and then a fill.
    let middle = n / 2;
    let spoiled = |mutation| Plan {
        order: in_order.clone(),
        copies: 1,
        faulty: Some((middle, mutation)),
    };
    match kind {
        FaultKind::BadChecksum => (
            spoiled(Mutation::BadChecksum),
            format!(
                "segment {} of {n} first sent with a bad TCP checksum",
                middle + 1
            ),
        ),
        FaultKind::TruncatedSegment => {
            let payload = segments[middle].len();
            let cut = (payload / 2).max(1);
            (
                spoiled(Mutation::Truncate),
                format!(
                    "segment {} of {n} first sent {cut} of {payload} payload bytes short of its \
                     IPv4 total length",
                    middle + 1
                ),
            )
        }
        FaultKind::OutOfOrder => (
            Plan {
                order: in_order.into_iter().rev().collect(),
                copies: 1,
                faulty: None,
            },
            format!("{n} segments in reverse order"),
        ),
        _ => (
            Plan {
                order: in_order,
                copies: 2,
                faulty: None,
            },
            format!("{n} segments, each sent twice"),
        ),
    }
}

/// Not for security: distinct initial sequence numbers and port offsets per call and process.
fn random_u64() -> u64 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    RandomState::new().hash_one((Instant::now(), CALLS.fetch_add(1, Ordering::Relaxed)))
}

/// Successive ephemeral ports from a random start, so that one process does not reuse a
/// 4-tuple the target may still hold in TIME_WAIT.
fn next_port() -> u16 {
    const FIRST: u32 = 32768;
    const COUNT: u32 = 61000 - 32768;
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = *START.get_or_init(|| random_u64() as u32 % COUNT);
    let i = NEXT.fetch_add(1, Ordering::Relaxed);
    (FIRST + (start + i) % COUNT) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_split_into_the_wanted_segments() {
        let s = split(100, 4, 1460);
        assert_eq!(s, vec![0..25, 25..50, 50..75, 75..100]);
        assert_eq!(split(10, 4, 3).len(), 4);
        assert!(split(10, 4, 3).iter().all(|r| r.len() <= 3));
        assert_eq!(split(1, 4, 1460), vec![0..1]);
        assert_eq!(split(7, 1, 1460).len(), 2);
    }

    #[test]
    fn plans_spoil_the_middle_or_reorder() {
        let segs = split(100, 4, 1460);
        let (p, _) = plan(FaultKind::BadChecksum, &segs);
        assert_eq!(p.faulty, Some((2, Mutation::BadChecksum)));
        let (p, _) = plan(FaultKind::OutOfOrder, &segs);
        assert_eq!(p.order, vec![3, 2, 1, 0]);
        let (p, _) = plan(FaultKind::DuplicateSegment, &segs);
        assert_eq!((p.copies, p.faulty), (2, None));
    }

    #[test]
    fn ports_are_successive_and_ephemeral() {
        let a = next_port();
        let b = next_port();
        assert!((32768..61000).contains(&a));
        assert!(b == a + 1 || b == 32768);
    }

    #[test]
    fn default_mac_is_local_unicast() {
        let mac = PacketOptions::new("eth0", Ipv4Addr::new(10, 1, 2, 3)).source_mac();
        assert_eq!(mac, [0x02, 0x5a, 10, 1, 2, 3]);
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered, unicast");
    }
}
