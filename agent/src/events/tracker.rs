//! Connection tracking: opens and closes, HTTP request/response pairing (FIFO, for
//! pipelining), latency, TLS `ClientHello`s, retransmission suppression.

use std::collections::VecDeque;
use std::net::IpAddr;

use serde::Serialize;

use super::lru::Lru;
use super::{
    CloseReason, ConnCloseEvent, ConnOpenEvent, Event, EventCommon, EventSink, HttpRequestEvent,
    HttpResponseEvent, PacketContext, SharedStr, TlsClientHelloEvent,
};
use crate::decode::{
    HttpHead, PacketMeta, TcpMeta, is_http_head_start, is_tls_client_hello_start,
    parse_client_hello, parse_http_head, tls::version_name,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Connections tracked at once; the least recently active is evicted beyond this.
    pub max_connections: usize,
    /// A connection with no tracked packet for this long is forgotten.
    pub idle_timeout_ns: u64,
    /// Unanswered requests kept per connection and direction (pipelining depth).
    pub max_pending_per_conn: usize,
    /// L7 head sequence numbers remembered per direction for retransmission detection
    /// (1 to [`MAX_REMEMBERED_HEADS`]; beyond it, that many).
    pub remembered_heads: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            max_connections: 65_536,
            idle_timeout_ns: 300 * 1_000_000_000,
            max_pending_per_conn: 64,
            remembered_heads: 16,
        }
    }
}

/// Most head sequence numbers a connection remembers per direction: they live inline in the
/// connection (a `VecDeque` per direction was a heap block to chase on every head).
pub const MAX_REMEMBERED_HEADS: usize = 16;

/// The last few head sequence numbers one endpoint sent, oldest overwritten first.
#[derive(Debug, Default, Clone, Copy)]
struct RecentHeads {
    seqs: [u32; MAX_REMEMBERED_HEADS],
    len: u8,
    /// Where the next one goes once `len` reached the limit.
    next: u8,
}

impl RecentHeads {
    fn contains(&self, seq: u32) -> bool {
        self.seqs[..usize::from(self.len)].contains(&seq)
    }

    /// Remembers `seq`, forgetting the oldest once `limit` are remembered.
    fn push(&mut self, seq: u32, limit: usize) {
        let limit = limit.clamp(1, MAX_REMEMBERED_HEADS);
        if usize::from(self.len) < limit {
            self.seqs[usize::from(self.len)] = seq;
            self.len += 1;
        } else {
            let at = usize::from(self.next) % limit;
            self.seqs[at] = seq;
            self.next = u8::try_from((at + 1) % limit).unwrap_or(0);
        }
    }
}

/// Tracker counters (all monotonic except the `_active` / `_pending` gauges).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrackerStats {
    /// TCP packets handed to the tracker.
    pub packets: u64,
    /// Handed-in packets that carried no control flag and no L7 head.
    pub ignored: u64,
    pub requests: u64,
    pub responses: u64,
    pub paired_responses: u64,
    pub unpaired_responses: u64,
    pub tls_client_hellos: u64,
    /// HTTP heads already seen at the same (connection, direction, TCP seq): not re-emitted.
    /// `retransmits` = `retransmitted_requests` + `retransmitted_responses`.
    pub retransmits: u64,
    pub retransmitted_requests: u64,
    pub retransmitted_responses: u64,
    pub tls_retransmits: u64,
    /// SYN or SYN-ACK repeated with the same sequence number: not re-emitted.
    pub syn_retransmits: u64,
    pub conns_opened: u64,
    pub conns_closed: u64,
    /// Removed to make room (table full).
    pub conns_evicted: u64,
    /// Removed after the idle timeout.
    pub conns_expired: u64,
    /// Requests dropped unanswered: with an evicted/expired connection, a reused port, or
    /// beyond the pipelining depth.
    pub requests_unanswered: u64,
    pub conns_active: u64,
    /// Gauge: closed connections still remembered until their idle expiry.
    pub conns_closed_lingering: u64,
    pub requests_pending: u64,
}

/// One endpoint of a connection.
type Endpoint = (IpAddr, u16);

/// Canonical 4-tuple: the lower endpoint first, so both directions map to one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConnKey {
    lo: Endpoint,
    hi: Endpoint,
}

/// Index of the sending endpoint within its [`ConnKey`] (0 = `lo`).
fn conn_key(meta: &PacketMeta<'_>) -> (ConnKey, usize) {
    let src = (meta.src, meta.src_port);
    let dst = (meta.dst, meta.dst_port);
    if src <= dst {
        (ConnKey { lo: src, hi: dst }, 0)
    } else {
        (ConnKey { lo: dst, hi: src }, 1)
    }
}

#[derive(Clone, Debug)]
struct PendingRequest {
    ts_ns: u64,
    method: SharedStr,
    path: SharedStr,
    host: Option<SharedStr>,
}

/// The strings of a connection's latest request head, which its next request nearly always
/// repeats (method, Host, version; often the path): reused instead of allocated again.
#[derive(Clone, Debug, Default)]
struct HeadStrings {
    method: Option<SharedStr>,
    path: Option<SharedStr>,
    version: Option<SharedStr>,
    host: Option<SharedStr>,
}

#[derive(Debug, Default)]
struct Conn {
    /// Sequence number and sender of the client SYN, once seen.
    syn: Option<(u32, usize)>,
    synack_seq: Option<u32>,
    opened_ns: Option<u64>,
    closed: bool,
    /// Requests sent by each endpoint, awaiting a response from the other.
    pending: [VecDeque<PendingRequest>; 2],
    /// Recent L7 head sequence numbers sent by each endpoint.
    recent_heads: [RecentHeads; 2],
    last_request: HeadStrings,
}

pub struct Tracker {
    config: TrackerConfig,
    conns: Lru<ConnKey, Conn>,
    stats: TrackerStats,
    /// Latest timestamp seen (expiry runs on this clock).
    now_ns: u64,
    last_sweep_ns: u64,
}

/// How often idle connections are swept, in the packets' own clock.
const SWEEP_INTERVAL_NS: u64 = 1_000_000_000;

impl Tracker {
    pub fn new(config: TrackerConfig) -> Self {
        Self {
            conns: Lru::new(config.max_connections),
            config,
            stats: TrackerStats::default(),
            now_ns: 0,
            last_sweep_ns: 0,
        }
    }

    pub fn stats(&self) -> TrackerStats {
        let mut s = self.stats;
        // Closed connections linger until idle expiry (late retransmissions of their FIN or
        // last response are still recognised); they are not active.
        let tracked = self.conns.len() as u64;
        s.conns_active = self.conns.values().filter(|c| !c.closed).count() as u64;
        s.conns_closed_lingering = tracked - s.conns_active;
        s.requests_pending = self
            .conns
            .values()
            .map(|c| (c.pending[0].len() + c.pending[1].len()) as u64)
            .sum();
        s
    }

    /// Processes one packet the kernel rule ([`crate::decode::classify`]) selected; other
    /// packets are counted as ignored.
    pub fn on_packet<S: EventSink>(
        &mut self,
        ctx: &PacketContext,
        meta: &PacketMeta<'_>,
        out: &mut S,
    ) {
        let Some(tcp) = meta.tcp() else {
            self.stats.ignored += 1;
            return;
        };
        self.stats.packets += 1;
        let http = if is_http_head_start(meta.payload) {
            parse_http_head(meta.payload)
        } else {
            None
        };
        let tls = if http.is_none() && is_tls_client_hello_start(meta.payload) {
            parse_client_hello(meta.payload)
        } else {
            None
        };
        if !tcp.flags.is_control() && http.is_none() && tls.is_none() {
            self.stats.ignored += 1;
            return;
        }
        self.advance_clock(ctx.ts_ns);

        let (key, side) = conn_key(meta);
        let (conn, evicted) = self
            .conns
            .get_or_insert_with(&key, ctx.ts_ns, Conn::default);
        let mut step = Step {
            conn,
            stats: &mut self.stats,
            config: &self.config,
            ctx,
            meta,
            tcp,
            side,
            out,
        };
        // Order matters for one segment carrying several things: open, then the head it
        // carries, then the close.
        if tcp.flags.syn() {
            step.syn();
        }
        if let Some(head) = http {
            step.http(&head);
        } else if let Some(hello) = tls {
            step.tls(&hello);
        }
        if tcp.flags.fin() || tcp.flags.rst() {
            step.close();
        }
        if let Some((_, old)) = evicted {
            self.stats.conns_evicted += 1;
            self.drop_conn(&old);
        }
    }

    fn drop_conn(&mut self, conn: &Conn) {
        self.stats.requests_unanswered += (conn.pending[0].len() + conn.pending[1].len()) as u64;
    }

    fn advance_clock(&mut self, ts_ns: u64) {
        self.now_ns = self.now_ns.max(ts_ns);
        if self.now_ns < self.last_sweep_ns.saturating_add(SWEEP_INTERVAL_NS) {
            return;
        }
        self.last_sweep_ns = self.now_ns;
        let cutoff = self.now_ns.saturating_sub(self.config.idle_timeout_ns);
        while let Some((_, conn)) = self.conns.pop_idle(cutoff) {
            self.stats.conns_expired += 1;
            self.drop_conn(&conn);
        }
    }
}

/// One packet's work on its connection.
struct Step<'a, 'm, S> {
    conn: &'a mut Conn,
    stats: &'a mut TrackerStats,
    config: &'a TrackerConfig,
    ctx: &'a PacketContext,
    meta: &'a PacketMeta<'m>,
    tcp: TcpMeta,
    side: usize,
    out: &'a mut S,
}

impl<S: EventSink> Step<'_, '_, S> {
    fn common(&self) -> EventCommon {
        EventCommon::of(self.ctx, self.meta)
    }

    fn syn(&mut self) {
        let seq = self.tcp.seq;
        if self.tcp.flags.ack() {
            if self.conn.synack_seq == Some(seq) {
                self.stats.syn_retransmits += 1;
                return;
            }
            self.conn.synack_seq = Some(seq);
            self.conn.opened_ns.get_or_insert(self.ctx.ts_ns);
        } else {
            if self.conn.syn == Some((seq, self.side)) {
                self.stats.syn_retransmits += 1;
                return;
            }
            if self.conn.syn.is_some() || self.conn.closed {
                // A new SYN on a known 4-tuple: the port was reused, start afresh.
                let stale = std::mem::take(self.conn);
                self.stats.requests_unanswered +=
                    (stale.pending[0].len() + stale.pending[1].len()) as u64;
            }
            self.conn.syn = Some((seq, self.side));
            self.conn.opened_ns = Some(self.ctx.ts_ns);
        }
        self.stats.conns_opened += 1;
        self.out.emit(Event::ConnOpen(ConnOpenEvent {
            common: self.common(),
            syn_ack: self.tcp.flags.ack(),
        }));
    }

    /// Remembers this head's sequence number; true if it was already seen (retransmission).
    fn seen_before(&mut self) -> bool {
        let recent = &mut self.conn.recent_heads[self.side];
        if recent.contains(self.tcp.seq) {
            return true;
        }
        recent.push(self.tcp.seq, self.config.remembered_heads);
        false
    }

    /// The head was cut by the capture length before the end of its headers.
    fn truncated(&self, complete: bool) -> bool {
        !complete && (self.meta.payload.len() as u64) < u64::from(self.meta.payload_len)
    }

    fn http(&mut self, head: &HttpHead<'_>) {
        if self.seen_before() {
            self.stats.retransmits += 1;
            match head {
                HttpHead::Request(_) => self.stats.retransmitted_requests += 1,
                HttpHead::Response(_) => self.stats.retransmitted_responses += 1,
            }
            return;
        }
        match head {
            HttpHead::Request(r) => {
                self.stats.requests += 1;
                let last = &mut self.conn.last_request;
                let method = SharedStr::reuse_or_new(last.method.as_ref(), r.method);
                let path = SharedStr::reuse_or_new(last.path.as_ref(), r.path);
                let version = r
                    .version
                    .map(|v| SharedStr::reuse_or_new(last.version.as_ref(), v));
                let host = r
                    .headers
                    .host
                    .map(|h| SharedStr::reuse_or_new(last.host.as_ref(), h));
                *last = HeadStrings {
                    method: Some(method.clone()),
                    path: Some(path.clone()),
                    version: version.clone().or_else(|| last.version.take()),
                    host: host.clone().or_else(|| last.host.take()),
                };
                let event = HttpRequestEvent {
                    common: self.common(),
                    method,
                    path,
                    version,
                    host,
                    bytes: self.meta.payload_len,
                    content_length: r.headers.content_length,
                    message_bytes: r
                        .headers
                        .message_size(self.meta.payload.len(), self.meta.payload_len),
                    truncated: self.truncated(r.headers.complete()),
                };
                let queue = &mut self.conn.pending[self.side];
                if queue.len() >= self.config.max_pending_per_conn.max(1) {
                    queue.pop_front();
                    self.stats.requests_unanswered += 1;
                }
                queue.push_back(PendingRequest {
                    ts_ns: self.ctx.ts_ns,
                    method: event.method.clone(),
                    path: event.path.clone(),
                    host: event.host.clone(),
                });
                self.out.emit(Event::HttpRequest(event));
            }
            HttpHead::Response(r) => {
                self.stats.responses += 1;
                let queue = &mut self.conn.pending[1 - self.side];
                // An interim 1xx (except 101 Switching Protocols) precedes the real
                // response to the same request: pair it without consuming the request.
                let interim = matches!(r.status, Some(100..=199)) && r.status != Some(101);
                let request = if interim {
                    queue.front().cloned()
                } else {
                    queue.pop_front()
                };
                if request.is_some() {
                    self.stats.paired_responses += 1;
                } else {
                    self.stats.unpaired_responses += 1;
                }
                let (latency_us, method, path, host) = match request {
                    Some(req) => (
                        Some(self.ctx.ts_ns.saturating_sub(req.ts_ns) / 1_000),
                        Some(req.method),
                        Some(req.path),
                        req.host,
                    ),
                    None => (None, None, None, None),
                };
                self.out.emit(Event::HttpResponse(HttpResponseEvent {
                    common: self.common(),
                    status: r.status,
                    bytes: self.meta.payload_len,
                    content_length: r.headers.content_length,
                    message_bytes: r
                        .headers
                        .message_size(self.meta.payload.len(), self.meta.payload_len),
                    truncated: self.truncated(r.headers.complete()),
                    latency_us,
                    method,
                    path,
                    host,
                }));
            }
        }
    }

    fn tls(&mut self, hello: &crate::decode::ClientHello<'_>) {
        if self.seen_before() {
            self.stats.tls_retransmits += 1;
            return;
        }
        self.stats.tls_client_hellos += 1;
        self.out.emit(Event::TlsClientHello(TlsClientHelloEvent {
            common: self.common(),
            sni: hello.sni.map(str::to_owned),
            tls_version: version_name(hello.version()),
            bytes: self.meta.payload_len,
        }));
    }

    fn close(&mut self) {
        if self.conn.closed {
            return;
        }
        self.conn.closed = true;
        self.stats.conns_closed += 1;
        // A closed connection lingers (up to the table's size, 65,536 by default) so late
        // retransmissions are still recognised; its request queues' buffers are not needed
        // for that. Freeing the empty ones saves ~320 B per lingering connection (20 MiB at
        // the default limit). A queue still holding a request (a response after a
        // half-close) is kept.
        for queue in &mut self.conn.pending {
            if queue.is_empty() {
                *queue = VecDeque::new();
            }
        }
        let reason = if self.tcp.flags.rst() {
            CloseReason::Rst
        } else {
            CloseReason::Fin
        };
        let duration_us = self
            .conn
            .opened_ns
            .map(|o| self.ctx.ts_ns.saturating_sub(o) / 1_000);
        self.out.emit(Event::ConnClose(ConnCloseEvent {
            common: self.common(),
            reason,
            duration_us,
        }));
    }
}

#[cfg(test)]
mod recent_heads_tests {
    use super::{MAX_REMEMBERED_HEADS, RecentHeads};

    #[test]
    fn the_oldest_head_is_forgotten_first_once_the_limit_is_reached() {
        let mut r = RecentHeads::default();
        for seq in 1..=4 {
            r.push(seq, 3);
        }
        assert!(!r.contains(1));
        assert!((2..=4).all(|s| r.contains(s)));
        r.push(5, 3);
        assert!(!r.contains(2));
        assert!((3..=5).all(|s| r.contains(s)));
    }

    #[test]
    fn a_limit_beyond_the_inline_room_keeps_the_room_and_zero_keeps_one() {
        let mut r = RecentHeads::default();
        for seq in 0..40 {
            r.push(seq, 1000);
        }
        let kept = (0..40).filter(|&s| r.contains(s)).count();
        assert_eq!(kept, MAX_REMEMBERED_HEADS);
        assert!(r.contains(39) && !r.contains(23));
        let mut one = RecentHeads::default();
        one.push(7, 0);
        one.push(8, 0);
        assert!(one.contains(8) && !one.contains(7));
    }
}
