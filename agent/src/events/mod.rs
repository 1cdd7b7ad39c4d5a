//! Events stage: connection tracking, request/response pairing and the JSON event types.
//!
//! The JSON shape is the event contract (see the project brief): one object per line,
//! `kind` first, then the common packet fields, then the kind's own fields.

mod flow;
mod lru;
mod tracker;

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

pub use flow::{FlowTable, FlowTableConfig, FlowTableStats};
pub use tracker::{Tracker, TrackerConfig, TrackerStats};

use crate::decode::PacketMeta;

/// Where the tracker and the flow table put the events they make. The live pipeline
/// consumes each event where it is made: pushing a 168-byte event into a `Vec` and moving it
/// out again was about a tenth of the live agent's CPU in a profile (`memmove`). Replay and
/// the tests collect events in a `Vec`.
pub trait EventSink {
    fn emit(&mut self, event: Event);
}

impl EventSink for Vec<Event> {
    fn emit(&mut self, event: Event) {
        self.push(event);
    }
}

/// Which hook saw the packet. Pcap replay reports `ingress` (a tap sees traffic arriving)
/// unless a Linux cooked header marks the packet as outgoing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// From the kernel's `DIR_INGRESS` / `DIR_EGRESS` byte.
    pub fn from_kernel(dir: u8) -> Option<Self> {
        match dir {
            shadowtap_common::DIR_INGRESS => Some(Self::Ingress),
            shadowtap_common::DIR_EGRESS => Some(Self::Egress),
            _ => None,
        }
    }
}

/// Where and when a packet was seen; supplied by the capture or replay stage.
#[derive(Clone, Debug)]
pub struct PacketContext {
    /// Unix-epoch nanoseconds.
    pub ts_ns: u64,
    /// Interface name (for pcap replay: the file name).
    pub iface: Arc<str>,
    pub direction: Direction,
}

fn serialize_arc_str<S: Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

/// A string shared by the events of one request: the request event, the response paired
/// with it and the tracker's pending entry hold the same allocation, and a keep-alive
/// connection's next request with the same bytes reuses it (no allocation or copy per
/// request for a repeated method, path, version or Host). Serialises as a plain string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedStr(Arc<str>);

impl SharedStr {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `bytes` as text (invalid UTF-8 replaced), reusing `previous` when it holds the same
    /// text.
    pub fn reuse_or_new(previous: Option<&Self>, bytes: &[u8]) -> Self {
        match previous {
            Some(p) if p.0.as_bytes() == bytes => p.clone(),
            _ => Self(Arc::from(String::from_utf8_lossy(bytes).as_ref())),
        }
    }
}

impl std::ops::Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        Self(Arc::from(s))
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl std::fmt::Display for SharedStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SharedStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Fields every packet-derived event carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventCommon {
    pub ts_ns: u64,
    #[serde(serialize_with = "serialize_arc_str")]
    pub iface: Arc<str>,
    pub direction: Direction,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl EventCommon {
    pub fn of(ctx: &PacketContext, meta: &PacketMeta<'_>) -> Self {
        Self {
            ts_ns: ctx.ts_ns,
            iface: Arc::clone(&ctx.iface),
            direction: ctx.direction,
            src: meta.src,
            dst: meta.dst,
            src_port: meta.src_port,
            dst_port: meta.dst_port,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnOpenEvent {
    #[serde(flatten)]
    pub common: EventCommon,
    /// false: the client's SYN; true: the server's SYN-ACK.
    pub syn_ack: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CloseReason {
    Fin,
    Rst,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnCloseEvent {
    #[serde(flatten)]
    pub common: EventCommon,
    pub reason: CloseReason,
    /// Since the first SYN of the connection, when that was seen.
    pub duration_us: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpRequestEvent {
    #[serde(flatten)]
    pub common: EventCommon,
    pub method: SharedStr,
    pub path: SharedStr,
    /// `HTTP/1.x`, null when the request line was cut before it.
    pub version: Option<SharedStr>,
    pub host: Option<SharedStr>,
    /// On-wire TCP payload length of the segment carrying the head.
    pub bytes: u32,
    pub content_length: Option<u64>,
    /// The whole request's size, head plus body (`HeaderFields::message_size`).
    pub message_bytes: u64,
    /// The captured head ended (snaplen) before the end of the headers.
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpResponseEvent {
    #[serde(flatten)]
    pub common: EventCommon,
    pub status: Option<u16>,
    /// On-wire TCP payload length of the segment carrying the head.
    pub bytes: u32,
    pub content_length: Option<u64>,
    /// The whole response's size, head plus body (`HeaderFields::message_size`).
    pub message_bytes: u64,
    pub truncated: bool,
    /// From the paired request's head to this response's head.
    pub latency_us: Option<u64>,
    /// Of the paired request.
    pub method: Option<SharedStr>,
    pub path: Option<SharedStr>,
    pub host: Option<SharedStr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsClientHelloEvent {
    #[serde(flatten)]
    pub common: EventCommon,
    pub sni: Option<String>,
    /// Highest version offered, e.g. `TLS1.3`.
    pub tls_version: String,
    pub bytes: u32,
}

/// Per-direction flow counters: from the kernel's flow map, or from [`FlowTable`] on the
/// pcap path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowEvent {
    /// `ts_ns` is the flow's last packet; the addresses are the direction's source/dest.
    #[serde(flatten)]
    pub common: EventCommon,
    pub proto: FlowProto,
    pub packets: u64,
    /// Frame bytes.
    pub bytes: u64,
    /// TCP/UDP payload bytes.
    pub payload_bytes: u64,
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    /// OR of the TCP flag bytes seen (0 for UDP).
    pub tcp_flags: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowProto {
    Tcp,
    Udp,
}

impl FlowProto {
    pub fn from_ip_proto(proto: u8) -> Option<Self> {
        match proto {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            _ => None,
        }
    }
}

impl FlowEvent {
    /// Builds a flow event from one entry of the kernel's per-flow map (stats already summed
    /// over CPUs). `mono_to_epoch_ns` is added to the kernel's monotonic timestamps. `None`
    /// for protocols other than TCP/UDP or an unknown address family.
    pub fn from_kernel(
        key: &shadowtap_common::FlowKey,
        stats: &shadowtap_common::FlowStats,
        iface: Arc<str>,
        mono_to_epoch_ns: u64,
    ) -> Option<Self> {
        let addr = |raw: &[u8; 16]| -> Option<IpAddr> {
            match key.family {
                shadowtap_common::AF_V4 => Some(IpAddr::from([raw[0], raw[1], raw[2], raw[3]])),
                shadowtap_common::AF_V6 => Some(IpAddr::from(*raw)),
                _ => None,
            }
        };
        let first = stats.first_ns.saturating_add(mono_to_epoch_ns);
        let last = stats.last_ns.saturating_add(mono_to_epoch_ns);
        Some(Self {
            common: EventCommon {
                ts_ns: last,
                iface,
                direction: Direction::from_kernel(key.direction)?,
                src: addr(&key.src)?,
                dst: addr(&key.dst)?,
                src_port: key.src_port,
                dst_port: key.dst_port,
            },
            proto: FlowProto::from_ip_proto(key.proto)?,
            packets: stats.packets,
            bytes: stats.bytes,
            payload_bytes: stats.payload_bytes,
            first_ts_ns: first,
            last_ts_ns: last,
            tcp_flags: stats.tcp_flags,
        })
    }
}

/// The final (and periodic) counters line. The body is free-form so that the live agent can
/// add kernel counters per direction and replay its own; keys are `snake_case` counter names.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatsEvent {
    pub ts_ns: u64,
    #[serde(flatten)]
    pub counters: serde_json::Map<String, serde_json::Value>,
}

/// One line of the event stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    ConnOpen(ConnOpenEvent),
    ConnClose(ConnCloseEvent),
    HttpRequest(HttpRequestEvent),
    HttpResponse(HttpResponseEvent),
    TlsClientHello(TlsClientHelloEvent),
    Flow(FlowEvent),
    Stats(StatsEvent),
}

impl Event {
    /// The `kind` string of this event.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ConnOpen(_) => "conn_open",
            Event::ConnClose(_) => "conn_close",
            Event::HttpRequest(_) => "http_request",
            Event::HttpResponse(_) => "http_response",
            Event::TlsClientHello(_) => "tls_client_hello",
            Event::Flow(_) => "flow",
            Event::Stats(_) => "stats",
        }
    }
}

/// Counts of events written, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    pub conn_open: u64,
    pub conn_close: u64,
    pub http_request: u64,
    pub http_response: u64,
    pub tls_client_hello: u64,
    pub flow: u64,
    pub stats: u64,
}

impl EventCounts {
    pub fn record(&mut self, event: &Event) {
        let slot = match event {
            Event::ConnOpen(_) => &mut self.conn_open,
            Event::ConnClose(_) => &mut self.conn_close,
            Event::HttpRequest(_) => &mut self.http_request,
            Event::HttpResponse(_) => &mut self.http_response,
            Event::TlsClientHello(_) => &mut self.tls_client_hello,
            Event::Flow(_) => &mut self.flow,
            Event::Stats(_) => &mut self.stats,
        };
        *slot += 1;
    }
}

#[cfg(test)]
mod tests;
