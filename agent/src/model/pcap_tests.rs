//! End to end: a real capture through the shared decoder and tracker into the model, checked
//! against the replay's JSON event stream.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use super::*;
use crate::decode::pcap::PcapReader;
use crate::decode::{LinkType, classify, decode_frame};
use crate::events::{Direction, Event, PacketContext, Tracker, TrackerConfig};
use crate::windows::Level;

fn host_key(host: Option<&str>) -> String {
    host.and_then(normalize_host)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default()
}

/// `http_request` events per normalised Host and per client address, from the replay's
/// JSON lines.
fn requests_from_replay(path: &std::path::Path) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let mut out = Vec::new();
    crate::replay::replay_pcap(path, &mut out).expect("replay");
    let mut per_host = BTreeMap::new();
    let mut per_client = BTreeMap::new();
    for line in std::str::from_utf8(&out).expect("utf-8").lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        if v["kind"] == "http_request" {
            *per_host.entry(host_key(v["host"].as_str())).or_insert(0) += 1;
            let src: std::net::IpAddr = v["src"].as_str().expect("src").parse().expect("ip");
            let client = ClientId::of(src, 32, 128).to_string();
            *per_client.entry(client).or_insert(0) += 1;
        }
    }
    (per_host, per_client)
}

/// Every event of the capture, as the replay's tracker produces them.
fn events_of(path: &std::path::Path) -> Vec<Event> {
    let file = File::open(path).expect("open pcap");
    let mut reader = PcapReader::new(BufReader::new(file)).expect("pcap header");
    let mut tracker = Tracker::new(TrackerConfig::default());
    let iface: Arc<str> = Arc::from("replay");
    let mut events = Vec::new();
    while let Some(packet) = reader.next_packet().expect("packet") {
        let Some(link) = LinkType::from_pcap_linktype(packet.linktype) else {
            continue;
        };
        let Ok(meta) = decode_frame(link, packet.data, packet.orig_len) else {
            continue;
        };
        if classify(&meta).is_some() {
            let ctx = PacketContext {
                ts_ns: packet.ts_ns,
                iface: Arc::clone(&iface),
                direction: Direction::Ingress,
            };
            tracker.on_packet(&ctx, &meta, &mut events);
        }
    }
    events
}

#[test]
fn shared_pcap_requests_per_host_match_the_event_stream() {
    let dir = crate::decode::tests::shared_pcap_dir();
    let requests = check_capture(&dir.join("http-packets.pcap"));
    assert_eq!(requests, 112, "the README's tshark count");
    // The other captures with HTTP: IPv6, many protocols, segmented streams. Counts are
    // `tshark -r FILE -Y "http.request && tcp" | wc -l` (many-protocols also has 14 SSDP
    // M-SEARCH requests over UDP, which tshark calls HTTP and the tap does not model).
    for (name, tshark) in [
        ("four_ipv6_http_streams.pcap", 9),
        ("many-protocols.pcap", 153),
        ("tcp-reassembly.pcap", 14),
        ("three_http_streams.pcap", 3),
    ] {
        assert_eq!(check_capture(&dir.join(name)), tshark, "{name}");
    }
}

/// Replays `path` into a model and checks requests per Host and per client against the
/// replay's event stream at every window level; returns the number of requests.
fn check_capture(path: &std::path::Path) -> u64 {
    let name = path.display();
    let (expected, expected_clients) = requests_from_replay(path);

    let events = events_of(path);
    let mut model = ModelStore::new(ModelConfig {
        emit: EmitConfig {
            clients: true,
            ..EmitConfig::default()
        },
        ..ModelConfig::default()
    })
    .expect("config");
    for event in &events {
        model.observe(event);
    }
    model.flush();
    let stats = model.stats();
    assert_eq!(stats.late_dropped, 0, "{name}");
    let total = expected.values().sum::<u64>();
    assert_eq!(stats.http_requests, total, "{name}");

    let mut per_level: BTreeMap<Level, BTreeMap<String, u64>> = BTreeMap::new();
    let mut per_client: BTreeMap<Level, BTreeMap<String, u64>> = BTreeMap::new();
    for s in model.drain_summaries() {
        let Some(level) = s.level() else { continue };
        let (map, key) = match &s.entity {
            EntityId::Resource(r) => (&mut per_level, host_key(r.host.as_deref())),
            EntityId::Client(c) => (&mut per_client, c.to_string()),
        };
        *map.entry(level).or_default().entry(key).or_insert(0) += s.requests;
    }
    for level in Level::ALL {
        // Entities with connections or responses but no request show up with 0.
        let mut got = per_level.remove(&level).unwrap_or_default();
        got.retain(|_, n| *n > 0);
        assert_eq!(got, expected, "{name} {level:?}");
        let mut got = per_client.remove(&level).unwrap_or_default();
        got.retain(|_, n| *n > 0);
        assert_eq!(got, expected_clients, "{name} {level:?}");
    }
    // Every host-refined resource the model knows had requests.
    assert!(model.resource_count() >= expected.len());
    let responses: u64 = events
        .iter()
        .filter(|e| matches!(e, Event::HttpResponse(_)))
        .count() as u64;
    assert_eq!(stats.http_responses, responses, "{name}");
    total
}
