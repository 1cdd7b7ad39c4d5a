//! Userspace per-flow accounting for the pcap path, mirroring the kernel's `FLOWS` map: one
//! entry per direction of a TCP/UDP 5-tuple per interface, with the same counters. (The live
//! agent reads the kernel map instead and builds events with [`FlowEvent::from_kernel`].)

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use super::lru::Lru;
use super::{Direction, Event, EventCommon, EventSink, FlowEvent, FlowProto, PacketContext};
use crate::decode::{PacketMeta, Transport};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTableConfig {
    /// Flows kept at once; the least recently updated is flushed as an event beyond this.
    pub max_flows: usize,
}

impl Default for FlowTableConfig {
    fn default() -> Self {
        Self {
            max_flows: shadowtap_common::DEFAULT_FLOW_ENTRIES as usize,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowTableStats {
    /// Packets accounted to a flow.
    pub packets: u64,
    /// IP packets of other protocols (ICMP, ...), not accounted to flows.
    pub other_ip_packets: u64,
    pub flows_created: u64,
    /// Flushed early (as events) to make room.
    pub flows_evicted: u64,
    pub flows_active: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    iface: Arc<str>,
    direction: Direction,
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    proto: FlowProto,
}

#[derive(Clone, Copy, Debug)]
struct FlowCounters {
    packets: u64,
    bytes: u64,
    payload_bytes: u64,
    first_ts_ns: u64,
    last_ts_ns: u64,
    tcp_flags: u32,
}

pub struct FlowTable {
    flows: Lru<FlowKey, FlowCounters>,
    stats: FlowTableStats,
}

fn flow_event(key: FlowKey, c: FlowCounters) -> Event {
    Event::Flow(FlowEvent {
        common: EventCommon {
            ts_ns: c.last_ts_ns,
            iface: key.iface,
            direction: key.direction,
            src: key.src,
            dst: key.dst,
            src_port: key.src_port,
            dst_port: key.dst_port,
        },
        proto: key.proto,
        packets: c.packets,
        bytes: c.bytes,
        payload_bytes: c.payload_bytes,
        first_ts_ns: c.first_ts_ns,
        last_ts_ns: c.last_ts_ns,
        tcp_flags: c.tcp_flags,
    })
}

impl FlowTable {
    pub fn new(config: FlowTableConfig) -> Self {
        Self {
            flows: Lru::new(config.max_flows),
            stats: FlowTableStats::default(),
        }
    }

    pub fn stats(&self) -> FlowTableStats {
        FlowTableStats {
            flows_active: self.flows.len() as u64,
            ..self.stats
        }
    }

    /// Accounts one decoded packet. A flow evicted to make room is emitted into `out`, so
    /// its counts are never lost.
    pub fn on_packet<S: EventSink>(
        &mut self,
        ctx: &PacketContext,
        meta: &PacketMeta<'_>,
        out: &mut S,
    ) {
        let (proto, tcp_flags) = match meta.transport {
            Transport::Tcp(t) => (FlowProto::Tcp, u32::from(t.flags.0)),
            Transport::Udp => (FlowProto::Udp, 0),
            // Like the kernel: non-first fragments count under the protocol with ports 0.
            Transport::Fragment { proto } => {
                let Some(p) = FlowProto::from_ip_proto(proto) else {
                    self.stats.other_ip_packets += 1;
                    return;
                };
                (p, 0)
            }
            Transport::Other { .. } => {
                self.stats.other_ip_packets += 1;
                return;
            }
        };
        let key = FlowKey {
            iface: Arc::clone(&ctx.iface),
            direction: ctx.direction,
            src: meta.src,
            dst: meta.dst,
            src_port: meta.src_port,
            dst_port: meta.dst_port,
            proto,
        };
        self.stats.packets += 1;
        let mut created = false;
        let (flow, evicted) = self.flows.get_or_insert_with(&key, ctx.ts_ns, || {
            created = true;
            FlowCounters {
                packets: 0,
                bytes: 0,
                payload_bytes: 0,
                first_ts_ns: ctx.ts_ns,
                last_ts_ns: ctx.ts_ns,
                tcp_flags: 0,
            }
        });
        flow.packets += 1;
        flow.bytes += u64::from(meta.frame_len);
        flow.payload_bytes += u64::from(meta.payload_len);
        flow.first_ts_ns = flow.first_ts_ns.min(ctx.ts_ns);
        flow.last_ts_ns = flow.last_ts_ns.max(ctx.ts_ns);
        flow.tcp_flags |= tcp_flags;
        if created {
            self.stats.flows_created += 1;
        }
        if let Some((key, counters)) = evicted {
            self.stats.flows_evicted += 1;
            out.emit(flow_event(key, counters));
        }
    }

    /// Emits every flow (least recently updated first) and empties the table.
    pub fn drain<S: EventSink>(&mut self, out: &mut S) {
        for (key, counters) in self.flows.drain_oldest_first() {
            out.emit(flow_event(key, counters));
        }
    }
}
