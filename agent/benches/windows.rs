//! Windowing/model stage throughput in events/s, next to a baseline measured in the same run:
//! a bare `HashMap<(IpAddr, u16, &str), u64>` counter per resource over the same events (the
//! floor for any per-resource aggregation that hashes the event's strings).
//!
//! Workload: a deterministic, realistic event mix — 40 services (by Host) on 8 addresses,
//! 20,000 clients, 30 endpoint templates with numeric/UUID/hex ids, keep-alive connections
//! (open, ~8 request/response pairs, close), statuses mostly 2xx with some 3xx/4xx/5xx,
//! log-normal-ish latencies, 1 in 50 connections TLS — 40,000 events per simulated second,
//! so windows close, roll up and are summarised during the run. Also the events of the
//! shared pcaps, replayed through the real tracker, as a second workload.
//! Run via `cargo bench -p shadowtap-agent --bench windows`.

use std::collections::HashMap;
use std::fs::File;
use std::hint::black_box;
use std::io::BufReader;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shadowtap_agent::decode::{self, LinkType, pcap::PcapReader};
use shadowtap_agent::events::{
    CloseReason, ConnCloseEvent, ConnOpenEvent, Direction, Event, EventCommon, HttpRequestEvent,
    HttpResponseEvent, PacketContext, TlsClientHelloEvent, Tracker, TrackerConfig,
};
use shadowtap_agent::model::{EmitConfig, ModelConfig, ModelStore};

const EVENTS_PER_SEC: u64 = 40_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn common(ts_ns: u64, src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> EventCommon {
    EventCommon {
        ts_ns,
        iface: Arc::from("bench"),
        direction: Direction::Ingress,
        src,
        dst,
        src_port,
        dst_port,
    }
}

fn path(rng: &mut Rng) -> String {
    let t = rng.below(30);
    let id = rng.below(1_000_000);
    match t % 6 {
        0 => format!(
            "/api/v{}/users/{id}/orders?page={}",
            t % 3 + 1,
            rng.below(9)
        ),
        1 => format!(
            "/api/items/{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            rng.next() as u32,
            rng.below(1 << 16),
            rng.below(1 << 12),
            rng.below(1 << 12),
            rng.below(1 << 48)
        ),
        2 => format!("/static/app{t}.js"),
        3 => format!(
            "/objects/{:024x}/raw",
            u128::from(rng.next()) << 32 | u128::from(id)
        ),
        4 => format!("/search?q=term{id}"),
        _ => format!("/svc{t}/health"),
    }
}

/// The synthetic workload, `n` events starting at `start_ns`.
fn synthetic(n: usize, start_ns: u64) -> Vec<Event> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let servers: Vec<IpAddr> = (0..8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i + 1)))
        .collect();
    let hosts: Vec<String> = (0..40).map(|i| format!("svc{i}.example.com")).collect();
    let step = 1_000_000_000 / EVENTS_PER_SEC;
    let mut ts = start_ns;
    let mut out = Vec::with_capacity(n + 32);
    while out.len() < n {
        let client = IpAddr::V4(Ipv4Addr::from(0xC000_0000 | rng.below(20_000) as u32));
        let port = 1024 + rng.below(60_000) as u16;
        let h = rng.below(40) as usize;
        let server = servers[h % servers.len()];
        let tls = rng.below(50) == 0;
        let server_port = if tls { 443 } else { 80 };
        ts += step;
        out.push(Event::ConnOpen(ConnOpenEvent {
            common: common(ts, client, port, server, server_port),
            syn_ack: false,
        }));
        if tls {
            ts += step;
            out.push(Event::TlsClientHello(TlsClientHelloEvent {
                common: common(ts, client, port, server, server_port),
                sni: Some(hosts[h].clone()),
                tls_version: "TLS1.3".into(),
                bytes: 517,
            }));
        } else {
            for _ in 0..=rng.below(15) {
                let p = path(&mut rng);
                let method = if rng.below(5) == 0 { "POST" } else { "GET" };
                ts += step;
                out.push(Event::HttpRequest(HttpRequestEvent {
                    common: common(ts, client, port, server, server_port),
                    method: method.into(),
                    path: p.clone(),
                    version: Some("HTTP/1.1".into()),
                    host: Some(hosts[h].clone()),
                    bytes: 200 + rng.below(600) as u32,
                    content_length: (method == "POST").then(|| rng.below(4096)),
                    truncated: false,
                }));
                let latency = 200 + (rng.below(1000) * rng.below(1000)) / 10;
                let status = match rng.below(100) {
                    0..=84 => 200,
                    85..=89 => 304,
                    90..=96 => 404,
                    _ => 503,
                };
                ts += step;
                out.push(Event::HttpResponse(HttpResponseEvent {
                    common: common(ts, server, server_port, client, port),
                    status: Some(status),
                    bytes: 300,
                    content_length: Some(rng.below(20_000)),
                    truncated: false,
                    latency_us: Some(latency),
                    method: Some(method.into()),
                    path: Some(p),
                    host: Some(hosts[h].clone()),
                }));
            }
        }
        ts += step;
        out.push(Event::ConnClose(ConnCloseEvent {
            common: common(ts, client, port, server, server_port),
            reason: CloseReason::Fin,
            duration_us: None,
        }));
    }
    out.truncate(n);
    out
}

/// Every event the tracker makes of the shared pcaps.
fn pcap_events() -> Vec<Event> {
    let dir = std::env::var_os("SHADOWTAP_SHARED_DATA").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
        PathBuf::from,
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("pcap"))
        .expect("../shared/data/pcap readable (set SHADOWTAP_SHARED_DATA)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut events = Vec::new();
    let mut offset = 0u64;
    for path in files {
        let mut reader = PcapReader::new(BufReader::new(File::open(&path).expect("open pcap")))
            .expect("pcap header");
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut file_events = Vec::new();
        while let Ok(Some(pkt)) = reader.next_packet() {
            let Some(link) = LinkType::from_pcap_linktype(pkt.linktype) else {
                continue;
            };
            let Ok(meta) = decode::decode_frame(link, pkt.data, pkt.orig_len) else {
                continue;
            };
            if decode::classify(&meta).is_some() {
                let ctx = PacketContext {
                    ts_ns: pkt.ts_ns,
                    iface: Arc::from("bench"),
                    direction: Direction::Ingress,
                };
                tracker.on_packet(&ctx, &meta, &mut file_events);
            }
        }
        // Files are from different years: lay them end to end in time.
        let first = file_events.first().map_or(0, ts_of);
        let last = file_events.last().map_or(0, ts_of);
        for e in &mut file_events {
            shift(e, offset.wrapping_sub(first));
        }
        offset += last.saturating_sub(first) + 1_000_000_000;
        events.extend(file_events);
    }
    events
}

fn ts_of(e: &Event) -> u64 {
    match e {
        Event::ConnOpen(x) => x.common.ts_ns,
        Event::ConnClose(x) => x.common.ts_ns,
        Event::HttpRequest(x) => x.common.ts_ns,
        Event::HttpResponse(x) => x.common.ts_ns,
        Event::TlsClientHello(x) => x.common.ts_ns,
        Event::Flow(x) => x.common.ts_ns,
        Event::Stats(x) => x.ts_ns,
    }
}

fn shift(e: &mut Event, by: u64) {
    let ts = match e {
        Event::ConnOpen(x) => &mut x.common.ts_ns,
        Event::ConnClose(x) => &mut x.common.ts_ns,
        Event::HttpRequest(x) => &mut x.common.ts_ns,
        Event::HttpResponse(x) => &mut x.common.ts_ns,
        Event::TlsClientHello(x) => &mut x.common.ts_ns,
        Event::Flow(x) => &mut x.common.ts_ns,
        Event::Stats(x) => &mut x.ts_ns,
    };
    *ts = ts.wrapping_add(by);
}

/// The baseline: one counter per (address, port, Host/SNI) with std's `HashMap`.
fn baseline_pass(events: &[Event]) -> u64 {
    let mut counts: HashMap<(IpAddr, u16, &str), u64> = HashMap::new();
    for e in events {
        let key = match e {
            Event::HttpRequest(r) => (r.common.dst, r.common.dst_port, r.host.as_deref()),
            Event::HttpResponse(r) => (r.common.src, r.common.src_port, r.host.as_deref()),
            Event::TlsClientHello(t) => (t.common.dst, t.common.dst_port, t.sni.as_deref()),
            Event::ConnOpen(c) => (c.common.dst, c.common.dst_port, None),
            Event::ConnClose(c) => (c.common.dst, c.common.dst_port, None),
            _ => continue,
        };
        *counts
            .entry((key.0, key.1, key.2.unwrap_or("")))
            .or_insert(0) += 1;
    }
    counts.values().sum()
}

/// Events/s of `f` over `events`, repeated for at least `min`; between passes (untimed) the
/// events move forward in time by the span of one pass so the model sees time advance.
fn rate(events: &mut [Event], min: Duration, mut f: impl FnMut(&[Event])) -> f64 {
    let span = ts_of(&events[events.len() - 1]) - ts_of(&events[0]) + 1_000_000_000;
    let mut timed = Duration::ZERO;
    let mut n = 0u64;
    while timed < min {
        let start = Instant::now();
        f(events);
        timed += start.elapsed();
        n += events.len() as u64;
        for e in events.iter_mut() {
            shift(e, span);
        }
    }
    n as f64 / timed.as_secs_f64()
}

fn model_pass(model: &mut ModelStore, events: &[Event]) -> usize {
    let mut summaries = 0;
    for e in events {
        model.observe(e);
    }
    summaries += model.drain_summaries().count();
    summaries
}

fn run(name: &str, config: ModelConfig, events: &mut [Event], min: Duration) {
    let mut model = ModelStore::new(config).expect("valid config");
    let mut summaries = 0usize;
    // Warm up both (tables, template interning), then interleave measurements.
    model_pass(&mut model, events);
    black_box(baseline_pass(events));
    let mut model_rates = Vec::new();
    let mut base_rates = Vec::new();
    // SHADOWTAP_BENCH_MODEL_ONLY=1 skips the baseline (for profiling the model alone).
    let model_only = std::env::var_os("SHADOWTAP_BENCH_MODEL_ONLY").is_some();
    for _ in 0..3 {
        if !model_only {
            base_rates.push(rate(events, min, |ev| {
                black_box(baseline_pass(ev));
            }));
        }
        model_rates.push(rate(events, min, |ev| {
            summaries += model_pass(&mut model, ev);
        }));
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (m, b) = (best(&model_rates), best(&base_rates));
    let stats = model.stats();
    println!("windows/{name}: {} events per pass", events.len());
    println!(
        "  model (windows + roll-ups + summaries): {:>7.2} M events/s  ({:.1} ns/event)",
        m / 1e6,
        1e9 / m
    );
    println!(
        "  baseline HashMap<(IpAddr,u16,&str),u64>:{:>7.2} M events/s  ({:.1} ns/event)",
        b / 1e6,
        1e9 / b
    );
    println!("  ratio model/baseline: {:.2}", m / b);
    println!(
        "  resources {} clients {} templates {} summaries {} late_dropped {} memory ≈ {:.1} MiB",
        stats.resources_active,
        stats.clients_active,
        stats.templates,
        summaries,
        stats.late_dropped,
        model.approx_memory_bytes() as f64 / (1 << 20) as f64
    );
}

fn main() {
    let min = Duration::from_millis(
        std::env::var("SHADOWTAP_BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    );
    let mut synthetic = synthetic(400_000, 1_704_067_200_000_000_000);
    run("synthetic", ModelConfig::default(), &mut synthetic, min);
    // Full per-client models too: client histograms, endpoint mixes, roll-ups, summaries.
    let clients = ModelConfig {
        emit: EmitConfig {
            clients: true,
            ..EmitConfig::default()
        },
        ..ModelConfig::default()
    };
    run("synthetic+client-summaries", clients, &mut synthetic, min);
    let mut pcap = pcap_events();
    run("shared-pcaps", ModelConfig::default(), &mut pcap, min);
}
