//! Issue 3 end to end: a capture with a known, repeating rate pattern → the shared decoder and
//! tracker → resource models → demand series → augurs forecast → decision engine, which must
//! scale out *before* the next rise, while a reactive rule at the same moment would not.
//!
//! The capture is written by the test as a real pcap file (Ethernet/IPv4/TCP frames carrying
//! HTTP/1.1 requests and responses) and read back through the same pcap reader as
//! `shadowtap-agent replay`.

use std::{net::Ipv4Addr, path::Path, sync::Arc, time::Duration};

use shadowtap_agent::{
    decode::{
        self, LinkType,
        pcap::PcapReader,
        pcap_writer::{PcapWriter, TcpSegment},
    },
    events::{Direction, PacketContext, Tracker, TrackerConfig},
    model::{ModelConfig, ModelStore, ResourceId},
};
use shadowtap_core::{
    decision::{Action, DecisionEngine, DecisionInput, Policy},
    forecast::{ForecastConfig, ResourceForecaster},
};

const STEP_MS: u64 = 60_000;
/// One cycle: 40 quiet minutes at 20 requests/min, then 20 busy minutes at 200 requests/min.
const PERIOD: u64 = 60;
const QUIET: u64 = 40;
const LOW: u64 = 20;
const HIGH: u64 = 200;
const CYCLES: u64 = 5;
/// The series starts on a minute boundary (2026-01-05 00:00 UTC, a Monday).
const T0_MS: u64 = 1_767_571_200_000;

fn rate(minute: u64) -> u64 {
    if minute % PERIOD < QUIET { LOW } else { HIGH }
}

/// Writes the capture: every request on its own keep-alive connection slot, answered 2 ms later.
fn write_pcap(path: &Path) -> u64 {
    let client = Ipv4Addr::new(192, 0, 2, 10);
    let server = Ipv4Addr::new(192, 0, 2, 80);
    let file = std::io::BufWriter::new(std::fs::File::create(path).expect("create pcap"));
    let mut pcap = PcapWriter::new(file).expect("pcap header");
    let mut record = |ts_us: u64, src, dst, sport, dport, seq, payload: &[u8]| {
        let segment = TcpSegment {
            src,
            dst,
            sport,
            dport,
            seq,
            flags: "A",
            payload,
        };
        pcap.write_segment(ts_us, &segment).expect("write");
    };
    let request =
        b"GET /api/v1/orders/1234 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: e2e\r\n\r\n";
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut total = 0;
    let mut seqs = [1u32; 64];
    for minute in 0..CYCLES * PERIOD {
        let n = rate(minute);
        for i in 0..n {
            let ts_us = (T0_MS + minute * STEP_MS) * 1000 + i * (60_000_000 / n);
            let slot = (i % 64) as usize;
            let sport = 40_000 + slot as u16;
            record(ts_us, client, server, sport, 80, seqs[slot], request);
            record(
                ts_us + 2_000,
                server,
                client,
                80,
                sport,
                seqs[slot],
                response,
            );
            seqs[slot] = seqs[slot].wrapping_add(request.len() as u32);
            total += 1;
        }
    }

    pcap.finish().expect("flush");
    total
}

#[test]
fn forecast_scales_out_before_the_rise_that_a_reactive_rule_misses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("cycles.pcap");
    let written = write_pcap(&pcap);

    // Capture → decoder → tracker → models, exactly as the replay path does.
    let mut reader = PcapReader::new(std::io::BufReader::new(
        std::fs::File::open(&pcap).expect("open"),
    ))
    .expect("pcap");
    let mut tracker = Tracker::new(TrackerConfig::default());
    let mut model = ModelStore::new(ModelConfig::default()).expect("model");
    let iface: Arc<str> = Arc::from("cycles.pcap");
    let mut events = Vec::new();
    while let Some(pkt) = reader.next_packet().expect("read packet") {
        let meta =
            decode::decode_frame(LinkType::Ethernet, pkt.data, pkt.orig_len).expect("decode");
        if decode::classify(&meta).is_none() {
            continue;
        }
        let ctx = PacketContext {
            ts_ns: pkt.ts_ns,
            iface: Arc::clone(&iface),
            direction: Direction::Ingress,
        };
        tracker.on_packet(&ctx, &meta, &mut events);
        for e in events.drain(..) {
            model.observe(&e);
        }
    }
    model.flush();
    let _ = model.drain_summaries().count();
    assert_eq!(tracker.stats().requests, written);

    let resource: ResourceId = "shop.example@192.0.2.80:80".parse().expect("resource id");
    let series = model
        .demand_series(&resource, Duration::from_secs(60))
        .expect("demand series");
    assert_eq!(series.len() as u64, CYCLES * PERIOD, "one point per minute");
    for (i, (start, value)) in series.iter().enumerate() {
        assert_eq!(*start, T0_MS + i as u64 * STEP_MS);
        assert_eq!(*value as u64, rate(i as u64), "minute {i}");
    }

    // Learn from everything up to 15 minutes before the last cycle's rise.
    let rise = (CYCLES - 1) * PERIOD + QUIET;
    let now = rise - 15;
    let mut forecaster = ResourceForecaster::new(
        resource.to_string(),
        ForecastConfig {
            step: Duration::from_secs(60),
            max_season: Duration::from_hours(3),
            ..ForecastConfig::default()
        },
    )
    .expect("forecaster");
    for (start, value) in &series[..now as usize] {
        forecaster.observe(*start, *value).expect("observe");
    }
    forecaster.refit().expect("refit");
    let forecast = forecaster.forecast(40).expect("forecast");

    // Capacity 50 requests/min per instance at 80% utilisation: the quiet level needs 1
    // instance, the busy level 5. Provisioning takes 10 minutes; look 10 minutes beyond.
    let policy = Policy {
        capacity_per_instance: 50.0,
        target_utilisation: 0.8,
        provisioning_lead_time: Duration::from_secs(600),
        horizon: Duration::from_secs(600),
        min_instances: 1,
        max_instances: 50,
        // The forecast engine on its own: the default cost band (reactive floor, 1.25x
        // ceiling, skill fallback) is what this rise would otherwise be held to.
        max_cost_ratio: None,
        reactive_floor: false,
        skill_fallback_mase: None,
        skill_fallback_widening: None,
        ..Policy::default()
    };
    let reactive = (series[now as usize - 1].1
        / (policy.capacity_per_instance * policy.target_utilisation))
        .ceil() as u32;
    assert_eq!(reactive, 1, "a reactive rule sees only the quiet level");
    let mut engine = DecisionEngine::new(resource.to_string(), policy);
    let decision = engine.decide(&DecisionInput {
        now_ms: T0_MS + now * STEP_MS,
        forecast: &forecast,
        current_instances: 1,
    });
    eprintln!("decision: {}", decision.explanation.summary);
    assert_eq!(decision.action, Action::ScaleOut, "{decision:#?}");
    assert!(decision.desired_instances >= 5, "{decision:#?}");
    assert!(
        decision.desired_instances <= 8,
        "not wildly over-provisioned: {decision:#?}"
    );
    assert!(
        decision.at_ms < T0_MS + rise * STEP_MS,
        "decided before the rise"
    );
}
