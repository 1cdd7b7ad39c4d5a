//! Windowing/model stage throughput in events per CPU-second (one core), next to a baseline
//! measured in the same run: a bare hash-table counter per (address, port, Host) with std's
//! hasher over the same events (the floor for any per-resource aggregation that hashes the
//! event's strings).
//!
//! Two feeds: **hot**, batches of 512 events whose bytes were just read, as the agent hands
//! the model the events the tracker has just built; **cold**, one pass over the whole
//! workload, so every event's strings come from memory. Timing is thread CPU time, so a busy
//! machine does not inflate the figures.
//!
//! Workload: a deterministic, realistic event mix — 40 services (by Host) on 8 addresses,
//! 20,000 clients, 30 endpoint templates with numeric/UUID/hex ids, keep-alive connections
//! (open, ~8 request/response pairs, close), statuses mostly 2xx with some 3xx/4xx/5xx,
//! log-normal-ish latencies, 1 in 50 connections TLS — 40,000 events per simulated second,
//! so windows close, roll up and are summarised during the run. Also the events of the
//! shared pcaps, replayed through the real tracker, as a second workload.
//! Run via `cargo bench -p shadowtap-agent --bench windows`.

#[path = "common/cpu_time.rs"]
mod cpu_time;
#[path = "common/window_stage.rs"]
mod window_stage;

use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::hint::black_box;
use std::io::BufReader;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use hashbrown::HashTable;
use std::time::Duration;

use shadowtap_agent::decode::{self, LinkType, pcap::PcapReader};
use shadowtap_agent::events::{
    CloseReason, ConnCloseEvent, ConnOpenEvent, Direction, Event, EventCommon, HttpRequestEvent,
    HttpResponseEvent, PacketContext, TlsClientHelloEvent, Tracker, TrackerConfig,
};
use shadowtap_agent::model::{EmitConfig, EntityId, ModelConfig, ModelStore};
use shadowtap_agent::windows::Level;

/// The same allocator as the shipped binaries (see `agent/src/main.rs`), so that what is
/// measured is what runs.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
                let bytes = 200 + rng.below(600) as u32;
                let content_length = (method == "POST").then(|| rng.below(4096));
                out.push(Event::HttpRequest(HttpRequestEvent {
                    common: common(ts, client, port, server, server_port),
                    method: method.into(),
                    path: p.as_str().into(),
                    version: Some("HTTP/1.1".into()),
                    host: Some(hosts[h].as_str().into()),
                    bytes,
                    content_length,
                    message_bytes: u64::from(bytes) + content_length.unwrap_or(0),
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
                let body = rng.below(20_000);
                out.push(Event::HttpResponse(HttpResponseEvent {
                    common: common(ts, server, server_port, client, port),
                    status: Some(status),
                    bytes: 300,
                    content_length: Some(body),
                    message_bytes: 300 + body,
                    truncated: false,
                    latency_us: Some(latency),
                    method: Some(method.into()),
                    path: Some(p.as_str().into()),
                    host: Some(hosts[h].as_str().into()),
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

/// The baseline: one counter per (address, port, Host/SNI) in a hash table with std's
/// hasher, probed with the event's borrowed strings (what `HashMap<(IpAddr, u16, String),
/// u64>` costs, minus a key allocation per event).
/// (server address, port, Host or SNI).
type BaselineKey = (IpAddr, u16, Box<str>);

struct Baseline {
    table: HashTable<(BaselineKey, u64)>,
    hasher: RandomState,
}

impl Baseline {
    fn new() -> Self {
        Self {
            table: HashTable::new(),
            hasher: RandomState::new(),
        }
    }

    fn pass(&mut self, events: &[Event]) {
        for e in events {
            let (ip, port, host) = match e {
                Event::HttpRequest(r) => (r.common.dst, r.common.dst_port, r.host.as_deref()),
                Event::HttpResponse(r) => (r.common.src, r.common.src_port, r.host.as_deref()),
                Event::TlsClientHello(t) => (t.common.dst, t.common.dst_port, t.sni.as_deref()),
                Event::ConnOpen(c) => (c.common.dst, c.common.dst_port, None),
                Event::ConnClose(c) => (c.common.dst, c.common.dst_port, None),
                _ => continue,
            };
            let host = host.unwrap_or("");
            let hash = self.hasher.hash_one((ip, port, host));
            if let Some((_, n)) = self
                .table
                .find_mut(hash, |(k, _)| k.0 == ip && k.1 == port && &*k.2 == host)
            {
                *n += 1;
            } else {
                let hasher = &self.hasher;
                self.table
                    .insert_unique(hash, ((ip, port, host.into()), 1), |(k, _)| {
                        hasher.hash_one((k.0, k.1, &*k.2))
                    });
            }
        }
    }

    fn total(&self) -> u64 {
        self.table.iter().map(|(_, n)| n).sum()
    }
}

/// Moves every event forward by the span of one pass, so the model sees time advance.
fn next_pass(events: &mut [Event]) {
    let span = ts_of(&events[events.len() - 1]) - ts_of(&events[0]) + 1_000_000_000;
    for e in events.iter_mut() {
        shift(e, span);
    }
}

/// Events per timed batch. The agent observes each event right after the tracker built it;
/// a batch is warmed first so its events are in cache likewise, and is long enough that
/// reading the thread's CPU clock around it costs nothing measurable per event.
const BATCH: usize = 512;

/// Reads every byte of the batch's events, strings included (untimed), so they are in cache
/// as they are in the agent, where the tracker has just built them.
fn warm(batch: &[Event]) {
    let mut sum = 0u64;
    // The event's own fields (its strings follow).
    for e in batch {
        let c = match e {
            Event::HttpRequest(r) => {
                sum = sum.wrapping_add(u64::from(r.bytes) + r.content_length.unwrap_or(0));
                &r.common
            }
            Event::HttpResponse(r) => {
                sum = sum.wrapping_add(u64::from(r.bytes) + r.latency_us.unwrap_or(0));
                sum = sum.wrapping_add(u64::from(r.status.unwrap_or(0)));
                &r.common
            }
            Event::TlsClientHello(t) => &t.common,
            Event::ConnOpen(o) => &o.common,
            Event::ConnClose(c) => &c.common,
            _ => continue,
        };
        let addr = |a: IpAddr| match a {
            IpAddr::V4(a) => u64::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a) as u64,
        };
        sum = sum
            .wrapping_add(c.ts_ns)
            .wrapping_add(addr(c.src) ^ addr(c.dst))
            .wrapping_add(u64::from(c.src_port) << 16 | u64::from(c.dst_port));
    }
    let mut add = |s: &str| sum = s.bytes().fold(sum, |a, b| a.wrapping_add(u64::from(b)));
    for e in batch {
        match e {
            Event::HttpRequest(r) => {
                add(&r.method);
                add(&r.path);
                r.host.as_deref().map(&mut add);
                r.version.as_deref().map(&mut add);
            }
            Event::HttpResponse(r) => {
                r.method.as_deref().map(&mut add);
                r.path.as_deref().map(&mut add);
                r.host.as_deref().map(&mut add);
            }
            Event::TlsClientHello(t) => {
                t.sni.as_deref().map(&mut add);
                add(&t.tls_version);
            }
            _ => {}
        }
    }
    black_box(sum);
}

/// Events per CPU-second of `f` over `events`, repeated for at least `min`; between passes
/// (untimed) the events move forward in time. `hot`: the events are fed in batches of
/// [`BATCH`] that were just read (as the live runtime feeds them); otherwise one pass
/// streams them all from memory, cache misses on every event's strings included.
fn rate(events: &mut [Event], min: Duration, hot: bool, mut f: impl FnMut(&[Event])) -> f64 {
    let mut timed = Duration::ZERO;
    let mut n = 0u64;
    while timed < min {
        if hot {
            for batch in events.chunks(BATCH) {
                warm(batch);
                let start = cpu_time::thread();
                f(batch);
                timed += cpu_time::thread().saturating_sub(start);
            }
        } else {
            let start = cpu_time::thread();
            f(events);
            timed += cpu_time::thread().saturating_sub(start);
        }
        n += events.len() as u64;
        next_pass(events);
    }
    n as f64 / timed.as_secs_f64()
}

/// What a model pass emitted: summaries, and the requests of the resources' windows among
/// them per level (so the run can check that every request was counted once at each level).
#[derive(Clone, Copy, Default)]
struct Emitted {
    summaries: usize,
    resource_requests: [u64; 3],
}

/// Adds per-level counts (indexed by [`Level::index`]).
fn add_per_level(into: &mut [u64; 3], more: [u64; 3]) {
    for (a, b) in into.iter_mut().zip(more) {
        *a += b;
    }
}

impl std::ops::AddAssign for Emitted {
    fn add_assign(&mut self, other: Emitted) {
        self.summaries += other.summaries;
        add_per_level(&mut self.resource_requests, other.resource_requests);
    }
}

fn drain(model: &mut ModelStore) -> Emitted {
    let mut out = Emitted::default();
    for s in model.drain_summaries() {
        out.summaries += 1;
        if let (EntityId::Resource(_), Some(level)) = (&s.entity, s.level()) {
            out.resource_requests[level.index()] += s.requests;
        }
    }
    out
}

// Not inlined, so that a profiler can be pointed at it (one call per pass).
#[inline(never)]
fn model_pass(model: &mut ModelStore, events: &[Event]) -> Emitted {
    for e in events {
        model.observe(e);
    }
    drain(model)
}

/// Best-of-three events/s of the model and of the baseline over `events`.
fn measure(config: &ModelConfig, events: &mut [Event], min: Duration, hot: bool) -> Measured {
    let mut model = ModelStore::new(config.clone()).expect("valid config");
    let mut baseline = Baseline::new();
    // Warm up both (tables, template interning), then interleave measurements.
    let mut emitted = model_pass(&mut model, events);
    baseline.pass(events);
    next_pass(events);
    let mut model_rates = Vec::new();
    let mut base_rates = Vec::new();
    // SHADOWTAP_BENCH_MODEL_ONLY=1 skips the baseline (for profiling the model alone).
    let model_only = std::env::var_os("SHADOWTAP_BENCH_MODEL_ONLY").is_some();
    for _ in 0..3 {
        if !model_only {
            base_rates.push(rate(events, min, hot, |ev| baseline.pass(ev)));
        }
        model_rates.push(rate(events, min, hot, |ev| {
            emitted += model_pass(&mut model, ev);
        }));
    }
    black_box(baseline.total());
    // Every request admitted is in exactly one resource window of each length, once all are
    // closed (untimed, as at the end of a replay; the end of stream closes roll-ups too).
    let timed_summaries = emitted.summaries;
    model.flush();
    emitted += drain(&mut model);
    let stats = model.stats();
    for (level, &windowed) in Level::ALL.iter().zip(&emitted.resource_requests) {
        if stats.late_dropped == 0 {
            assert_eq!(
                windowed, stats.http_requests,
                "requests in resources' {level:?} windows and requests observed"
            );
        } else {
            // Late events (other captures, via SHADOWTAP_SHARED_DATA) are dropped, not windowed.
            assert!(
                windowed <= stats.http_requests,
                "{level:?}: {windowed} windowed"
            );
        }
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    Measured {
        model: best(&model_rates),
        baseline: best(&base_rates),
        summaries: timed_summaries,
        requests_windowed: emitted.resource_requests[0],
        model_store: model,
    }
}

struct Measured {
    model: f64,
    baseline: f64,
    summaries: usize,
    /// Requests in the resources' 1 s windows (all of them, checked against those observed).
    requests_windowed: u64,
    model_store: ModelStore,
}

fn run(name: &str, config: &ModelConfig, events: &mut [Event], min: Duration) {
    println!("windows/{name}: {} events per pass", events.len());
    for (hot, label) in [
        (
            true,
            "hot: batches of 512 just read (in cache, as the agent sees each event the tracker built)",
        ),
        (false, "cold: every event streamed from memory"),
    ] {
        let m = measure(config, events, min, hot);
        println!("  {label}");
        println!(
            "    whole model path (identification, templating, windows, summaries): {:>7.2} M events/s/core ({:.1} ns/event)",
            m.model / 1e6,
            1e9 / m.model
        );
        println!(
            "    baseline hash-table counter:                                         {:>7.2} M events/s/core ({:.1} ns/event)",
            m.baseline / 1e6,
            1e9 / m.baseline
        );
        println!("    ratio model/baseline: {:.2}", m.model / m.baseline);
        if hot {
            // The goal is the windows stage's (the `windows-stage/…` lines); the
            // whole path is held to the same figure here for reference.
            println!(
                "    whole path (identification, templating, windows, summaries) >= 10 M events/s/core: {} (the goal is the windows stage's: windows-stage/…)",
                if m.model >= 10e6 { "yes" } else { "no" }
            );
        }
        let stats = m.model_store.stats();
        println!(
            "    resources {} clients {} templates {} summaries {} late_dropped {} memory ≈ {:.1} MiB",
            stats.resources_active,
            stats.clients_active,
            stats.templates,
            m.summaries,
            stats.late_dropped,
            m.model_store.approx_memory_bytes() as f64 / (1 << 20) as f64
        );
        println!(
            "    requests in resources' 1 s windows: {} of {} observed",
            m.requests_windowed, stats.http_requests
        );
    }
}

fn main() {
    // SHADOWTAP_BENCH_WORKLOAD=NAME[,NAME…] runs only the workloads named; `windows-stage`
    // names both of its workloads, `windows-stage/synthetic` or `windows-stage/shared-pcaps`
    // one.
    let only = std::env::var("SHADOWTAP_BENCH_WORKLOAD").ok();
    let wanted = |name: &str| {
        only.as_deref().is_none_or(|w| {
            w.split(',')
                .any(|w| w == name || name.split_once('/').is_some_and(|(stage, _)| w == stage))
        })
    };
    let min = Duration::from_millis(
        std::env::var("SHADOWTAP_BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    );
    let mut synthetic = synthetic(400_000, 1_704_067_200_000_000_000);
    if wanted("synthetic") {
        run("synthetic", &ModelConfig::default(), &mut synthetic, min);
    }
    // The request profiles' share of the model's cost: the same feed without them.
    if wanted("synthetic-no-profiles") {
        let no_profiles = ModelConfig {
            profiles: false,
            ..ModelConfig::default()
        };
        run("synthetic-no-profiles", &no_profiles, &mut synthetic, min);
    }
    if wanted("synthetic-profile-sample-8") {
        let sampled = ModelConfig {
            profile_sample: 8,
            ..ModelConfig::default()
        };
        run("synthetic-profile-sample-8", &sampled, &mut synthetic, min);
    }
    if wanted("windows-stage/synthetic") {
        window_stage::run("synthetic", &ModelConfig::default(), &synthetic, min);
    }
    // Full per-client models too: client histograms, endpoint mixes, roll-ups, summaries.
    let clients = ModelConfig {
        emit: EmitConfig {
            clients: true,
            ..EmitConfig::default()
        },
        ..ModelConfig::default()
    };
    if wanted("synthetic+client-summaries") {
        run("synthetic+client-summaries", &clients, &mut synthetic, min);
    }
    if wanted("shared-pcaps") || wanted("windows-stage/shared-pcaps") {
        let mut pcap = pcap_events();
        if wanted("shared-pcaps") {
            run("shared-pcaps", &ModelConfig::default(), &mut pcap, min);
        }
        if wanted("windows-stage/shared-pcaps") {
            window_stage::run("shared-pcaps", &ModelConfig::default(), &pcap, min);
        }
    }
}
