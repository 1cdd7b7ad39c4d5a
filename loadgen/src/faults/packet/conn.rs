//! A minimal TCP client over [`Link`]: handshake, a request sent as planned segments (with the
//! fault applied to first transmissions), retransmission of whatever the target did not
//! acknowledge, the response received and acknowledged in order, then FIN.
//!
//! Deliberately small: no window scaling, SACK or timestamps are offered, so the target uses
//! none; the request must fit the target's first window (requests here are a few hundred
//! bytes). Out-of-order response data is dropped and left to the target's retransmission.

use std::time::{Duration, Instant};

use pnet::packet::tcp::TcpFlags;

use super::link::Link;
use super::wire::{self, Endpoints, Out, TcpIn, seq_ge, seq_gt};
use crate::faults::FaultError;
use crate::faults::response::{self, Head};

/// What the first transmission of a segment looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mutation {
    BadChecksum,
    Truncate,
}

/// The order and shape of first transmissions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Plan {
    /// Segment indices in sending order.
    pub order: Vec<usize>,
    /// How many times each is sent back to back.
    pub copies: usize,
    /// The segment whose first transmission is spoiled.
    pub faulty: Option<(usize, Mutation)>,
}

/// How the exchange ended, before the close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// Our SYN was answered with RST.
    Refused,
    /// The target reset the connection.
    Reset,
    /// The target sent FIN.
    PeerClosed,
    /// The response announced by its head is complete.
    Complete,
    /// The deadline passed.
    TimedOut,
}

pub(super) struct Exchange {
    pub end: End,
    pub head: Head,
    /// Response bytes received.
    pub received: usize,
    pub retransmissions: u32,
    /// Whether the spoiled segment was acknowledged before its intact retransmission.
    pub faulty_acked: bool,
}

const WINDOW: u16 = 65535;
const OUR_MSS: u16 = 1460;
/// Retransmission timeouts double up to this.
const MAX_RTO: Duration = Duration::from_secs(2);
/// The close handshake may take at most this long past the response.
const CLOSE_BUDGET: Duration = Duration::from_secs(1);

pub(super) struct Conn<'a> {
    link: &'a mut Link,
    ep: Endpoints,
    ip_id: u16,
    iss: u32,
    snd_una: u32,
    snd_nxt: u32,
    rcv_nxt: u32,
    peer_mss: u16,
    rto: Duration,
    deadline: Instant,
    response: Vec<u8>,
    peer_fin: bool,
    reset: bool,
}

impl<'a> Conn<'a> {
    pub(super) fn new(
        link: &'a mut Link,
        ep: Endpoints,
        iss: u32,
        rto: Duration,
        deadline: Instant,
    ) -> Self {
        Self {
            link,
            ep,
            ip_id: iss as u16,
            iss,
            snd_una: iss,
            snd_nxt: iss,
            rcv_nxt: 0,
            peer_mss: 536,
            rto,
            deadline,
            response: Vec::new(),
            peer_fin: false,
            reset: false,
        }
    }

    pub(super) fn peer_mss(&self) -> u16 {
        self.peer_mss
    }

    fn emit(&mut self, seg: &Out<'_>, mutation: Option<Mutation>) -> Result<(), FaultError> {
        self.ip_id = self.ip_id.wrapping_add(1);
        let mut frame = wire::tcp_frame(&self.ep, self.ip_id, seg);
        let len = match mutation {
            None => frame.len(),
            Some(Mutation::BadChecksum) => {
                wire::corrupt_tcp_checksum(&mut frame);
                frame.len()
            }
            Some(Mutation::Truncate) => wire::truncated_len(frame.len(), seg.payload.len()),
        };
        self.link.send(&frame[..len])
    }

    fn control(&mut self, seq: u32, flags: u8) -> Result<(), FaultError> {
        let seg = Out {
            seq,
            ack: self.rcv_nxt,
            flags,
            window: WINDOW,
            mss: None,
            payload: &[],
        };
        self.emit(&seg, None)
    }

    fn recv(&mut self, until: Instant) -> Result<Option<TcpIn>, FaultError> {
        self.link
            .recv_tcp((self.ep.dst, self.ep.dport), self.ep.sport, until)
    }

    /// SYN until SYN-ACK (then ACK), RST, or the deadline. `Ok(None)` when established.
    pub(super) fn handshake(&mut self) -> Result<Option<End>, FaultError> {
        let mut rto = self.rto;
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                return Ok(Some(End::TimedOut));
            }
            let syn = Out {
                seq: self.iss,
                ack: 0,
                flags: TcpFlags::SYN,
                window: WINDOW,
                mss: Some(OUR_MSS),
                payload: &[],
            };
            self.emit(&syn, None)?;
            let until = self.deadline.min(now + rto);
            rto = (rto * 2).min(MAX_RTO);
            while let Some(seg) = self.recv(until)? {
                let acks_syn =
                    seg.flags & TcpFlags::ACK != 0 && seg.ack == self.iss.wrapping_add(1);
                if seg.flags & TcpFlags::RST != 0 {
                    if acks_syn {
                        return Ok(Some(End::Refused));
                    }
                } else if seg.flags & TcpFlags::SYN != 0 && acks_syn {
                    self.rcv_nxt = seg.seq.wrapping_add(1);
                    self.snd_una = self.iss.wrapping_add(1);
                    self.snd_nxt = self.snd_una;
                    self.peer_mss = seg.mss.unwrap_or(536).max(1);
                    self.control(self.snd_nxt, TcpFlags::ACK)?;
                    return Ok(None);
                } else if seg.flags & TcpFlags::ACK != 0 {
                    // An ACK that is not for our SYN comes from a connection on the same ports
                    // that the target still remembers (TIME_WAIT): reset it as RFC 793 says, and
                    // the next SYN opens a fresh connection.
                    self.control(seg.ack, TcpFlags::RST)?;
                }
            }
        }
    }

    /// Sends `request` as `segments` (byte ranges) following `plan`, retransmits what the
    /// target does not acknowledge within the RTO, and collects the response.
    pub(super) fn exchange(
        &mut self,
        request: &[u8],
        segments: &[std::ops::Range<usize>],
        plan: &Plan,
    ) -> Result<Exchange, FaultError> {
        let base = self.snd_una;
        let seq_of = |offset: usize| base.wrapping_add(offset as u32);
        self.snd_nxt = seq_of(request.len());
        for &i in &plan.order {
            let range = segments[i].clone();
            let mutation = plan.faulty.and_then(|(f, m)| (f == i).then_some(m));
            for copy in 0..plan.copies {
                let seg = self.data(seq_of(range.start), &request[range.clone()]);
                self.emit(&seg, if copy == 0 { mutation } else { None })?;
            }
        }
        let faulty_end = plan.faulty.map(|(f, _)| seq_of(segments[f].end));
        let faulty_start = plan.faulty.map(|(f, _)| seq_of(segments[f].start));
        let mut repaired = false;
        let mut faulty_acked = false;
        let mut retransmissions = 0;
        let mut rto = self.rto;
        let mut timer = Instant::now();
        let end = loop {
            let head = response::parse(&self.response);
            let all_acked = self.snd_una == self.snd_nxt;
            if self.reset {
                break End::Reset;
            }
            if all_acked && head.complete(self.response.len()) {
                break End::Complete;
            }
            if self.peer_fin {
                break End::PeerClosed;
            }
            let now = Instant::now();
            if now >= self.deadline {
                break End::TimedOut;
            }
            if !all_acked && now >= timer + rto {
                // Like TCP's RTO: resend the first unacknowledged segment, intact.
                let offset = self.snd_una.wrapping_sub(base) as usize;
                if let Some(range) = segments.iter().find(|r| r.contains(&offset)).cloned() {
                    let seg = self.data(seq_of(range.start), &request[range.clone()]);
                    self.emit(&seg, None)?;
                    retransmissions += 1;
                    if faulty_start == Some(seq_of(range.start)) {
                        repaired = true;
                    }
                }
                timer = now;
                rto = (rto * 2).min(MAX_RTO);
                continue;
            }
            let until = if all_acked {
                self.deadline
            } else {
                self.deadline.min(timer + rto)
            };
            if let Some(seg) = self.recv(until)?
                && self.on_segment(&seg)?
            {
                // Progress restarts the timer, as in TCP.
                timer = Instant::now();
                rto = self.rto;
                if !repaired && faulty_end.is_some_and(|e| seq_ge(self.snd_una, e)) {
                    faulty_acked = true;
                }
            }
        };
        Ok(Exchange {
            end,
            head: response::parse(&self.response),
            received: self.response.len(),
            retransmissions,
            faulty_acked,
        })
    }

    fn data<'b>(&self, seq: u32, payload: &'b [u8]) -> Out<'b> {
        Out {
            seq,
            ack: self.rcv_nxt,
            flags: TcpFlags::ACK | TcpFlags::PSH,
            window: WINDOW,
            mss: None,
            payload,
        }
    }

    /// Processes one segment of the connection; returns whether it acknowledged new data.
    fn on_segment(&mut self, seg: &TcpIn) -> Result<bool, FaultError> {
        if seg.flags & TcpFlags::RST != 0 {
            // Only an in-window reset counts (RFC 5961); others are stale or forged.
            if seq_ge(seg.seq, self.rcv_nxt)
                && seq_gt(self.rcv_nxt.wrapping_add(u32::from(WINDOW)), seg.seq)
            {
                self.reset = true;
            }
            return Ok(false);
        }
        if seg.flags & TcpFlags::SYN != 0 {
            // A repeated SYN-ACK: our ACK was lost.
            self.control(self.snd_nxt, TcpFlags::ACK)?;
            return Ok(false);
        }
        let mut progress = false;
        if seg.flags & TcpFlags::ACK != 0
            && seq_gt(seg.ack, self.snd_una)
            && seq_ge(self.snd_nxt, seg.ack)
        {
            self.snd_una = seg.ack;
            progress = true;
        }
        let len = seg.payload.len() as u32;
        // Only data that starts at or before what we expect is taken; a duplicate or a segment
        // past a gap is not, and the ACK below tells the target what we still lack.
        if len > 0
            && seq_ge(self.rcv_nxt, seg.seq)
            && seq_gt(seg.seq.wrapping_add(len), self.rcv_nxt)
        {
            let skip = self.rcv_nxt.wrapping_sub(seg.seq) as usize;
            self.response.extend_from_slice(&seg.payload[skip..]);
            self.rcv_nxt = seg.seq.wrapping_add(len);
        }
        if seg.flags & TcpFlags::FIN != 0 && seg.seq.wrapping_add(len) == self.rcv_nxt {
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
            self.peer_fin = true;
        }
        if len > 0 || seg.flags & TcpFlags::FIN != 0 {
            self.control(self.snd_nxt, TcpFlags::ACK)?;
        }
        Ok(progress)
    }

    /// FIN, then wait (briefly) for its ACK and the target's FIN. Returns whether the close was
    /// orderly; if not, the connection is reset so the target does not keep it.
    pub(super) fn close(&mut self) -> Result<bool, FaultError> {
        let fin_seq = self.snd_nxt;
        self.snd_nxt = self.snd_nxt.wrapping_add(1);
        let budget_end = self.deadline.min(Instant::now() + CLOSE_BUDGET);
        let mut rto = self.rto;
        while Instant::now() < budget_end {
            self.control(fin_seq, TcpFlags::FIN | TcpFlags::ACK)?;
            let until = budget_end.min(Instant::now() + rto);
            rto = (rto * 2).min(MAX_RTO);
            while let Some(seg) = self.recv(until)? {
                self.on_segment(&seg)?;
                if self.reset {
                    return Ok(false);
                }
                if self.peer_fin && self.snd_una == self.snd_nxt {
                    return Ok(true);
                }
            }
        }
        self.abort()?;
        Ok(false)
    }

    /// RST, so the target drops its side of a connection we give up on.
    pub(super) fn abort(&mut self) -> Result<(), FaultError> {
        if self.reset {
            return Ok(());
        }
        self.control(self.snd_nxt, TcpFlags::RST | TcpFlags::ACK)
    }
}
