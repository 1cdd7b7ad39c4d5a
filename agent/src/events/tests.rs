use std::sync::Arc;

use super::*;
use crate::decode::tests::{CLIENT, SERVER, tcp4};
use crate::decode::{LinkType, TcpFlags, classify, decode_frame};

const S: u64 = 1_000_000_000;
const ACK: u8 = TcpFlags::ACK;
const PSH_ACK: u8 = TcpFlags::PSH | TcpFlags::ACK;

struct Harness {
    tracker: Tracker,
    flows: FlowTable,
}

impl Harness {
    fn new(config: TrackerConfig) -> Self {
        Self {
            tracker: Tracker::new(config),
            flows: FlowTable::new(FlowTableConfig::default()),
        }
    }

    /// Feeds a frame the way replay does: flows always, the tracker when classify selects.
    fn feed_cut(&mut self, ts_ns: u64, frame: &[u8], captured: usize) -> Vec<Event> {
        let meta = decode_frame(LinkType::Ethernet, &frame[..captured], frame.len() as u32)
            .expect("test frames decode");
        let ctx = PacketContext {
            ts_ns,
            iface: Arc::from("test0"),
            direction: Direction::Ingress,
        };
        let mut out = Vec::new();
        if classify(&meta).is_some() {
            self.tracker.on_packet(&ctx, &meta, &mut out);
        }
        self.flows.on_packet(&ctx, &meta, &mut out);
        out
    }

    fn feed(&mut self, ts_ns: u64, frame: &[u8]) -> Vec<Event> {
        self.feed_cut(ts_ns, frame, frame.len())
    }
}

fn c2s(port: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp4((CLIENT, port), (SERVER, 80), seq, flags, payload)
}

fn s2c(port: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp4((SERVER, 80), (CLIENT, port), seq, flags, payload)
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::kind).collect()
}

fn response(events: &[Event]) -> &HttpResponseEvent {
    events
        .iter()
        .find_map(|e| match e {
            Event::HttpResponse(r) => Some(r),
            _ => None,
        })
        .expect("an http_response")
}

fn request(events: &[Event]) -> &HttpRequestEvent {
    events
        .iter()
        .find_map(|e| match e {
            Event::HttpRequest(r) => Some(r),
            _ => None,
        })
        .expect("an http_request")
}

const MS: u64 = S / 1000;

/// SYN, SYN-ACK, ACK on client port `p`: client ISN 100, server ISN 900, at 0..2 ms.
fn handshake(h: &mut Harness, p: u16) {
    assert_eq!(
        kinds(&h.feed(0, &c2s(p, 100, TcpFlags::SYN, b""))),
        ["conn_open"]
    );
    let ev = h.feed(MS, &s2c(p, 900, TcpFlags::SYN | ACK, b""));
    let Event::ConnOpen(open) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert!(open.syn_ack);
    assert!(h.feed(2 * MS, &c2s(p, 101, ACK, b"")).is_empty());
}

#[test]
fn request_and_response_pair_with_latency() {
    let mut h = Harness::new(TrackerConfig::default());
    handshake(&mut h, 40_000);
    let get_a = b"GET /a HTTP/1.1\r\nHost: svc.local\r\n\r\n";
    let ev = h.feed(3 * MS, &c2s(40_000, 101, PSH_ACK, get_a));
    let r = request(&ev);
    assert_eq!(
        (r.method.as_str(), r.path.as_str(), r.host.as_deref()),
        ("GET", "/a", Some("svc.local"))
    );
    assert_eq!(
        (r.bytes, r.truncated, r.version.as_deref()),
        (get_a.len() as u32, false, Some("HTTP/1.1"))
    );

    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    let ev = h.feed(8 * MS, &s2c(40_000, 901, PSH_ACK, ok));
    let r = response(&ev);
    assert_eq!(
        (r.status, r.content_length, r.latency_us),
        (Some(200), Some(5), Some(5_000))
    );
    assert_eq!(
        (r.method.as_deref(), r.path.as_deref(), r.host.as_deref()),
        (Some("GET"), Some("/a"), Some("svc.local"))
    );
    let s = h.tracker.stats();
    assert_eq!(
        (s.requests, s.responses, s.paired_responses, s.conns_opened),
        (1, 1, 1, 2)
    );
}

#[test]
fn pipelined_requests_pair_in_order_and_retransmissions_are_counted() {
    let mut h = Harness::new(TrackerConfig::default());
    handshake(&mut h, 40_001);
    h.feed(
        10 * MS,
        &c2s(40_001, 200, PSH_ACK, b"GET /b HTTP/1.1\r\n\r\n"),
    );
    h.feed(
        11 * MS,
        &c2s(40_001, 300, PSH_ACK, b"POST /c HTTP/1.1\r\n\r\n"),
    );
    // The second request again: same connection, direction and sequence number.
    assert!(
        h.feed(
            12 * MS,
            &c2s(40_001, 300, PSH_ACK, b"POST /c HTTP/1.1\r\n\r\n")
        )
        .is_empty()
    );
    let first = h.feed(
        20 * MS,
        &s2c(40_001, 1000, PSH_ACK, b"HTTP/1.1 204 No Content\r\n\r\n"),
    );
    let second = h.feed(
        21 * MS,
        &s2c(40_001, 1100, PSH_ACK, b"HTTP/1.1 201 Created\r\n\r\n"),
    );
    // The same bytes at a new sequence number are a new response (with nothing to pair).
    let third = h.feed(
        22 * MS,
        &s2c(40_001, 1200, PSH_ACK, b"HTTP/1.1 201 Created\r\n\r\n"),
    );
    assert_eq!(
        (
            response(&first).path.as_deref(),
            response(&first).latency_us
        ),
        (Some("/b"), Some(10_000))
    );
    assert_eq!(
        (
            response(&second).path.as_deref(),
            response(&second).latency_us
        ),
        (Some("/c"), Some(10_000))
    );
    assert_eq!(response(&third).latency_us, None);
    let s = h.tracker.stats();
    assert_eq!(
        (
            s.requests,
            s.responses,
            s.paired_responses,
            s.unpaired_responses
        ),
        (2, 3, 2, 1)
    );
    assert_eq!(
        (
            s.retransmits,
            s.retransmitted_requests,
            s.retransmitted_responses
        ),
        (1, 1, 0)
    );
}

#[test]
fn fin_carrying_a_head_reports_request_and_close() {
    let mut h = Harness::new(TrackerConfig::default());
    handshake(&mut h, 40_002);
    let ev = h.feed(
        30 * MS,
        &c2s(
            40_002,
            101,
            PSH_ACK | TcpFlags::FIN,
            b"GET /last HTTP/1.1\r\n\r\n",
        ),
    );
    assert_eq!(kinds(&ev), ["http_request", "conn_close"]);
    let Event::ConnClose(close) = &ev[1] else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (close.reason, close.duration_us),
        (CloseReason::Fin, Some(30_000))
    );
    // The half-closed connection still pairs the answer; a later RST is not a second close.
    let ev = h.feed(
        31 * MS,
        &s2c(40_002, 901, PSH_ACK, b"HTTP/1.1 200 OK\r\n\r\n"),
    );
    assert_eq!(response(&ev).path.as_deref(), Some("/last"));
    assert!(
        h.feed(32 * MS, &s2c(40_002, 1000, TcpFlags::RST, b""))
            .is_empty()
    );
    let s = h.tracker.stats();
    assert_eq!(
        (s.conns_closed, s.paired_responses, s.requests_pending),
        (1, 1, 0)
    );
}

#[test]
fn syn_retransmissions_and_port_reuse() {
    let mut h = Harness::new(TrackerConfig::default());
    assert_eq!(
        kinds(&h.feed(0, &c2s(1, 10, TcpFlags::SYN, b""))),
        ["conn_open"]
    );
    assert!(h.feed(S, &c2s(1, 10, TcpFlags::SYN, b"")).is_empty());
    assert_eq!(
        kinds(&h.feed(S + 1, &s2c(1, 50, TcpFlags::SYN | ACK, b""))),
        ["conn_open"]
    );
    assert!(
        h.feed(S + 2, &s2c(1, 50, TcpFlags::SYN | ACK, b""))
            .is_empty()
    );
    assert_eq!(
        kinds(&h.feed(2 * S, &c2s(1, 11, TcpFlags::RST, b""))),
        ["conn_close"]
    );
    // Same 4-tuple, new initial sequence number: a new connection.
    assert_eq!(
        kinds(&h.feed(3 * S, &c2s(1, 7_000, TcpFlags::SYN, b""))),
        ["conn_open"]
    );
    let ev = h.feed(4 * S, &c2s(1, 7_001, ACK | TcpFlags::FIN, b""));
    let Event::ConnClose(close) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (close.reason, close.duration_us),
        (CloseReason::Fin, Some(1_000_000))
    );
    let s = h.tracker.stats();
    assert_eq!(
        (s.syn_retransmits, s.conns_opened, s.conns_closed),
        (2, 3, 2)
    );
}

#[test]
fn close_without_open_has_no_duration() {
    let mut h = Harness::new(TrackerConfig::default());
    let ev = h.feed(5, &c2s(9, 1, TcpFlags::RST | ACK, b""));
    let Event::ConnClose(close) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!((close.reason, close.duration_us), (CloseReason::Rst, None));
}

#[test]
fn interim_responses_do_not_consume_the_request() {
    let mut h = Harness::new(TrackerConfig::default());
    h.feed(
        0,
        &c2s(
            5,
            1,
            PSH_ACK,
            b"POST /upload HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        ),
    );
    let cont = h.feed(
        S / 1000,
        &s2c(5, 1, PSH_ACK, b"HTTP/1.1 100 Continue\r\n\r\n"),
    );
    let done = h.feed(
        9 * S / 1000,
        &s2c(5, 100, PSH_ACK, b"HTTP/1.1 200 OK\r\n\r\n"),
    );
    assert_eq!(
        (response(&cont).status, response(&cont).latency_us),
        (Some(100), Some(1_000))
    );
    assert_eq!(
        (response(&done).path.as_deref(), response(&done).latency_us),
        (Some("/upload"), Some(9_000))
    );
    assert_eq!(h.tracker.stats().paired_responses, 2);
}

#[test]
fn capacity_eviction_and_idle_expiry_are_counted() {
    let mut h = Harness::new(TrackerConfig {
        max_connections: 2,
        idle_timeout_ns: 10 * S,
        ..TrackerConfig::default()
    });
    for port in 1..=3 {
        h.feed(
            u64::from(port),
            &c2s(port, 1, PSH_ACK, b"GET /x HTTP/1.1\r\n\r\n"),
        );
    }
    let s = h.tracker.stats();
    assert_eq!(
        (s.conns_evicted, s.requests_unanswered, s.conns_active),
        (1, 1, 2)
    );
    // Port 1's connection was evicted: its response cannot be paired.
    let ev = h.feed(10, &s2c(1, 1, PSH_ACK, b"HTTP/1.1 200 OK\r\n\r\n"));
    assert_eq!(response(&ev).latency_us, None);
    // 20 s later everything idle is gone.
    h.feed(20 * S, &c2s(4, 1, TcpFlags::SYN, b""));
    let s = h.tracker.stats();
    assert_eq!(
        (s.conns_expired, s.conns_active, s.unpaired_responses),
        (2, 1, 1)
    );
    assert_eq!(s.requests_unanswered, 3);
}

#[test]
fn head_cut_by_snaplen_is_marked_truncated() {
    let mut h = Harness::new(TrackerConfig::default());
    let head = b"GET /long/path HTTP/1.1\r\nUser-Agent: test\r\nHost: cut.example\r\n\r\n";
    let frame = c2s(7, 1, PSH_ACK, head);
    let ev = h.feed_cut(0, &frame, 54 + 30);
    let r = request(&ev);
    assert!(r.truncated);
    assert_eq!(
        (r.host.as_deref(), r.bytes, r.path.as_str()),
        (None, head.len() as u32, "/long/path")
    );
    let ev = h.feed(1, &c2s(8, 1, PSH_ACK, head));
    assert!(!request(&ev).truncated);
    assert_eq!(request(&ev).host.as_deref(), Some("cut.example"));
}

#[test]
fn tls_client_hello_with_sni_and_retransmission() {
    let mut h = Harness::new(TrackerConfig::default());
    let hello = crate::decode::tls::tests::client_hello("pay.example.com", &[0x0304, 0x0303]);
    let frame = tcp4((CLIENT, 50_000), (SERVER, 443), 1, PSH_ACK, &hello);
    let ev = h.feed(0, &frame);
    let Event::TlsClientHello(t) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (t.sni.as_deref(), t.tls_version.as_str()),
        (Some("pay.example.com"), "TLS1.3")
    );
    assert!(h.feed(1, &frame).is_empty());
    assert_eq!(h.tracker.stats().tls_retransmits, 1);
}

#[test]
fn json_lines_follow_the_contract() {
    let mut h = Harness::new(TrackerConfig::default());
    let ev = h.feed(1_700_000_000 * S, &c2s(4242, 1, TcpFlags::SYN, b""));
    let line = serde_json::to_string(&ev[0]).expect("serialize");
    assert_eq!(
        line,
        r#"{"kind":"conn_open","ts_ns":1700000000000000000,"iface":"test0","direction":"ingress","src":"10.0.0.1","dst":"10.0.0.2","src_port":4242,"dst_port":80,"syn_ack":false}"#
    );
    let ev = h.feed(
        1,
        &c2s(4242, 2, PSH_ACK, b"DELETE /item/9 HTTP/1.0\r\n\r\n"),
    );
    let v: serde_json::Value = serde_json::to_value(request(&ev)).expect("value");
    assert_eq!(v["host"], serde_json::Value::Null);
    assert_eq!(v["content_length"], serde_json::Value::Null);
    assert_eq!(v["method"], "DELETE");
    let line = serde_json::to_string(&ev[0]).expect("serialize");
    assert!(
        line.starts_with(r#"{"kind":"http_request","ts_ns":1,"#),
        "{line}"
    );
}

#[test]
fn flow_table_counts_both_directions_and_flushes_on_eviction() {
    let mut table = FlowTable::new(FlowTableConfig { max_flows: 2 });
    let ctx = |ts_ns| PacketContext {
        ts_ns,
        iface: Arc::from("eth9"),
        direction: Direction::Ingress,
    };
    let frames = [
        c2s(1, 1, TcpFlags::SYN, b""),
        s2c(1, 1, TcpFlags::SYN | ACK, b""),
        c2s(1, 2, PSH_ACK, b"0123456789"),
        c2s(1, 12, ACK | TcpFlags::FIN, b""),
    ];
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let m = decode_frame(LinkType::Ethernet, f, f.len() as u32).expect("decode");
        table.on_packet(&ctx(i as u64), &m, &mut out);
    }
    assert!(out.is_empty());
    let third = c2s(2, 1, TcpFlags::SYN, b"");
    let m = decode_frame(LinkType::Ethernet, &third, third.len() as u32).expect("decode");
    table.on_packet(&ctx(10), &m, &mut out);
    // The server→client flow (last updated at ts 1) made room.
    let [Event::Flow(evicted)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (evicted.common.src_port, evicted.packets, evicted.last_ts_ns),
        (80, 1, 1)
    );
    out.clear();
    table.drain(&mut out);
    let Event::Flow(client) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (
            client.packets,
            client.payload_bytes,
            client.first_ts_ns,
            client.last_ts_ns
        ),
        (3, 10, 0, 3)
    );
    assert_eq!(
        client.bytes,
        frames[0].len() as u64 + frames[2].len() as u64 + frames[3].len() as u64
    );
    assert_eq!(
        client.tcp_flags,
        u32::from(TcpFlags::SYN | PSH_ACK | TcpFlags::FIN)
    );
    assert_eq!(client.proto, FlowProto::Tcp);
    let s = table.stats();
    assert_eq!(
        (s.packets, s.flows_created, s.flows_evicted, s.flows_active),
        (5, 3, 1, 0)
    );
}

#[test]
fn flow_event_from_kernel_map_entry() {
    let key = shadowtap_common::FlowKey {
        src: [192, 168, 7, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        dst: [192, 168, 7, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ifindex: 3,
        src_port: 5000,
        dst_port: 53,
        proto: 17,
        family: shadowtap_common::AF_V4,
        direction: shadowtap_common::DIR_EGRESS,
        _pad: 0,
    };
    let stats = shadowtap_common::FlowStats {
        packets: 2,
        bytes: 180,
        payload_bytes: 96,
        first_ns: 10,
        last_ns: 20,
        tcp_flags: 0,
        _pad: 0,
    };
    let ev = FlowEvent::from_kernel(&key, &stats, Arc::from("eth0"), 1_000).expect("udp v4");
    let v = serde_json::to_value(Event::Flow(ev)).expect("json");
    assert_eq!(v["kind"], "flow");
    assert_eq!(v["src"], "192.168.7.1");
    assert_eq!(v["direction"], "egress");
    assert_eq!(v["proto"], "udp");
    assert_eq!(
        (v["first_ts_ns"].as_u64(), v["last_ts_ns"].as_u64()),
        (Some(1_010), Some(1_020))
    );
    let icmp = shadowtap_common::FlowKey { proto: 1, ..key };
    assert!(FlowEvent::from_kernel(&icmp, &stats, Arc::from("eth0"), 0).is_none());
}

mod random_traffic {
    use super::*;
    use proptest::prelude::*;

    const HEADS: [&[u8]; 6] = [
        b"",
        b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"POST /q HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
        b"not an http head at all",
    ];

    proptest! {
        /// Arbitrary interleavings of a few connections never panic and keep the counters
        /// consistent with the events emitted.
        #[test]
        fn counters_agree_with_events(
            packets in proptest::collection::vec(
                (0u16..4, any::<bool>(), 0u32..6, any::<u8>(), 0usize..HEADS.len(), 0u64..3_000_000_000),
                1..120,
            ),
            capacity in 1usize..4,
        ) {
            let mut h = Harness::new(TrackerConfig {
                max_connections: capacity,
                idle_timeout_ns: 2 * S,
                max_pending_per_conn: 2,
                remembered_heads: 3,
            });
            let mut ts = 0;
            let mut all = Vec::new();
            for (port, from_client, seq, flags, head, gap) in packets {
                ts += gap;
                let frame = if from_client {
                    c2s(port, seq, flags, HEADS[head])
                } else {
                    s2c(port, seq, flags, HEADS[head])
                };
                all.extend(h.feed(ts, &frame));
            }
            let count = |k: &str| all.iter().filter(|e| e.kind() == k).count() as u64;
            let s = h.tracker.stats();
            prop_assert_eq!(count("conn_open"), s.conns_opened);
            prop_assert_eq!(count("conn_close"), s.conns_closed);
            prop_assert_eq!(count("http_request"), s.requests);
            prop_assert_eq!(count("http_response"), s.responses);
            prop_assert_eq!(s.paired_responses + s.unpaired_responses, s.responses);
            prop_assert_eq!(s.retransmits, s.retransmitted_requests + s.retransmitted_responses);
            prop_assert!(s.conns_active <= capacity as u64);
            let paired = all.iter().filter(|e| matches!(e, Event::HttpResponse(r) if r.latency_us.is_some())).count() as u64;
            prop_assert_eq!(paired, s.paired_responses);
        }
    }
}
