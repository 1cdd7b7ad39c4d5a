//! The connection shortcut (events of an attributed connection resolve their resource and client
//! through the connection) against the full lookup (normalise, hash, probe) on the same events.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::*;
use crate::events::{
    CloseReason, ConnCloseEvent, ConnOpenEvent, Direction, Event, EventCommon, HttpRequestEvent,
    HttpResponseEvent,
};
use crate::windows::BASE_NS;

/// Host headers as clients send them: case, ports, trailing dots, blanks, none, other hosts.
const HOSTS: [Option<&str>; 10] = [
    Some("svc.example.com"),
    Some("Svc.Example.COM"),
    Some("svc.example.com:80"),
    Some("svc.example.com."),
    Some(" svc.example.com :8080"),
    Some("other.example.com"),
    Some("OTHER.example.com"),
    Some("   "),
    Some(":80"),
    None,
];

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn common(ts_ns: u64, src: (IpAddr, u16), dst: (IpAddr, u16)) -> EventCommon {
    EventCommon {
        ts_ns,
        iface: Arc::from("test"),
        direction: Direction::Ingress,
        src: src.0,
        dst: dst.0,
        src_port: src.1,
        dst_port: dst.1,
    }
}

/// Keep-alive connections whose requests switch hosts, unpaired responses, connections whose
/// close or open is missing, over a few seconds so windows close and roll up.
fn events(seed: u64) -> Vec<Event> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut ts = 1_704_067_200 * BASE_NS;
    for _ in 0..600 {
        let client = (
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1 + rng.below(40) as u8)),
            1024 + rng.below(50) as u16,
        );
        let server = (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + rng.below(3) as u8)),
            80,
        );
        ts += 3_000_000;
        if rng.below(8) != 0 {
            out.push(Event::ConnOpen(ConnOpenEvent {
                common: common(ts, client, server),
                syn_ack: false,
            }));
        }
        for _ in 0..=rng.below(6) {
            let host = HOSTS[rng.below(HOSTS.len() as u64) as usize].map(str::to_owned);
            ts += 1_000_000;
            let request_bytes = 100 + rng.below(500) as u32;
            out.push(Event::HttpRequest(HttpRequestEvent {
                common: common(ts, client, server),
                method: "GET".into(),
                path: format!("/api/items/{}", rng.below(1000)).as_str().into(),
                version: Some("HTTP/1.1".into()),
                host: host.as_deref().map(Into::into),
                bytes: request_bytes,
                content_length: None,
                message_bytes: u64::from(request_bytes),
                truncated: false,
            }));
            ts += 1_000_000;
            // Most responses are paired (they carry the request's Host); some are not.
            let paired = rng.below(5) != 0;
            let body = rng.below(5000);
            out.push(Event::HttpResponse(HttpResponseEvent {
                common: common(ts, server, client),
                status: Some([200, 200, 404, 503][rng.below(4) as usize]),
                bytes: 200,
                content_length: Some(body),
                message_bytes: 200 + body,
                truncated: false,
                latency_us: paired.then(|| 100 + rng.below(10_000)),
                method: paired.then(|| "GET".into()),
                path: paired.then(|| "/api/items/1".into()),
                host: if paired {
                    host.as_deref().map(Into::into)
                } else {
                    None
                },
            }));
        }
        if rng.below(6) != 0 {
            ts += 1_000_000;
            out.push(Event::ConnClose(ConnCloseEvent {
                common: common(ts, client, server),
                reason: CloseReason::Fin,
                duration_us: None,
            }));
        }
    }
    out
}

fn run(
    config: &ModelConfig,
    events: &[Event],
    by_connection: bool,
) -> (Vec<WindowSummary>, ModelStats) {
    let mut model = ModelStore::new(config.clone()).expect("config");
    model.resolve_by_connection = by_connection;
    for e in events {
        model.observe(e);
    }
    model.flush();
    let summaries = model.drain_summaries().collect();
    (summaries, model.stats())
}

#[test]
fn resolving_through_the_connection_matches_the_full_lookup() {
    let configs = [
        ModelConfig::default(),
        // Evictions: connection references to evicted entities must not resolve.
        ModelConfig {
            max_resources: 3,
            max_clients: 7,
            emit: EmitConfig {
                clients: true,
                ..EmitConfig::default()
            },
            ..ModelConfig::default()
        },
        ModelConfig {
            refine_by_host: false,
            client_prefix_v4: 28,
            ..ModelConfig::default()
        },
    ];
    for (i, config) in configs.iter().enumerate() {
        for seed in [0x9E37_79B9_7F4A_7C15, 0xDEAD_BEEF_1234_5678, 7] {
            let events = events(seed);
            let (fast, fast_stats) = run(config, &events, true);
            let (full, full_stats) = run(config, &events, false);
            assert!(fast.len() > 10, "config {i}: too few summaries to compare");
            assert_eq!(fast_stats, full_stats, "config {i} seed {seed:#x}");
            assert_eq!(fast.len(), full.len(), "config {i} seed {seed:#x}");
            for (a, b) in fast.iter().zip(&full) {
                assert_eq!(a, b, "config {i} seed {seed:#x}");
            }
        }
    }
}

#[test]
fn normalised_hosts_are_fixed_points() {
    // The shortcut compares raw bytes with stored hosts; that is only sound if normalising a
    // normalised (lower-cased) host returns it unchanged.
    let alphabet = [
        "a", "B", ".", ":", " ", "\t", "[", "]", "1", "::", "80", "é", "-",
    ];
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for _ in 0..200_000 {
        let raw: String = (0..rng.below(9))
            .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
            .collect();
        if let Some(once) = normalize_host(&raw) {
            let stored = once.to_ascii_lowercase();
            assert_eq!(
                normalize_host(&stored),
                Some(stored.as_str()),
                "normalising {raw:?} gave {once:?}, which is not a fixed point"
            );
        }
    }
}
