use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::events::{
    CloseReason, ConnCloseEvent, ConnOpenEvent, Direction, Event, EventCommon, HttpRequestEvent,
    HttpResponseEvent, TlsClientHelloEvent,
};
use crate::windows::{BASE_NS, Level};

const S: u64 = BASE_NS;
/// Monday 2024-01-01 00:00:00 UTC.
const MONDAY: u64 = 1_704_067_200 * S;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn common(ts_ns: u64, src: &str, src_port: u16, dst: &str, dst_port: u16) -> EventCommon {
    EventCommon {
        ts_ns,
        iface: Arc::from("test"),
        direction: Direction::Ingress,
        src: ip(src),
        dst: ip(dst),
        src_port,
        dst_port,
    }
}

pub(super) fn request(ts_ns: u64, client: &str, host: Option<&str>, path: &str) -> Event {
    Event::HttpRequest(HttpRequestEvent {
        common: common(ts_ns, client, 40_000, "10.0.0.1", 80),
        method: "GET".into(),
        path: path.into(),
        version: Some("HTTP/1.1".into()),
        host: host.map(Into::into),
        bytes: 100,
        content_length: None,
        message_bytes: 100,
        truncated: false,
    })
}

fn response(ts_ns: u64, client: &str, host: Option<&str>, status: u16, latency: u64) -> Event {
    Event::HttpResponse(HttpResponseEvent {
        common: common(ts_ns, "10.0.0.1", 80, client, 40_000),
        status: Some(status),
        bytes: 200,
        content_length: Some(1000),
        // A 200-byte head in its own segment, the body after it.
        message_bytes: 1200,
        truncated: false,
        latency_us: Some(latency),
        method: Some("GET".into()),
        path: Some("/x".into()),
        host: host.map(Into::into),
    })
}

fn resource(host: Option<&str>) -> ResourceId {
    ResourceId::new(SocketAddr::new(ip("10.0.0.1"), 80), host)
}

fn summaries_of(model: &mut ModelStore, level: Level) -> Vec<WindowSummary> {
    model
        .drain_summaries()
        .filter(|s| s.level() == Some(level))
        .collect()
}

#[test]
fn endpoint_templates() {
    let table = [
        (
            "/api/v1/users/12345/orders?x=1",
            "/api/v1/users/{id}/orders",
        ),
        ("/", "/"),
        ("/index.html", "/index.html"),
        (
            "/orders/3f2504e0-4f89-11d3-9a0c-0305e82c3301/items",
            "/orders/{id}/items",
        ),
        (
            "/orders/3F2504E0-4F89-11D3-9A0C-0305E82C3301",
            "/orders/{id}",
        ),
        (
            "/blobs/sha1/2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
            "/blobs/sha1/{id}",
        ),
        (
            "/objects/507f1f77bcf86cd799439011/raw#frag",
            "/objects/{id}/raw",
        ),
        ("/v2/files/5f2b7c9e/download", "/v2/files/{id}/download"),
        ("/static/facade/deadbeef", "/static/facade/deadbeef"),
        ("/users/42/", "/users/{id}/"),
        ("/v1/2024/report-7", "/v1/{id}/report-7"),
        ("http://example.com/a/99?q", "/a/{id}"),
        ("HTTPS://example.com", "/"),
        ("*", "*"),
        ("/a//b", "/a//b"),
        ("/users/12a", "/users/12a"),
    ];
    for (path, want) in table {
        assert_eq!(endpoint_template(path), want, "{path}");
    }
    assert!(is_id_segment("0"));
    assert!(!is_id_segment(""));
    assert!(!is_id_segment("v1"));
}

#[test]
fn template_hashes_agree_with_stored_keys() {
    for (method, path) in [
        ("GET", "/a/1/b?x"),
        ("POST", "http://h/x/ab12cd34ef"),
        ("GET", "*"),
    ] {
        let key = ids::TemplateKey::render(method, path).expect("short");
        assert_eq!(
            key.hash(),
            ids::stored_template_hash(key.to_str().as_bytes())
        );
        let other = ids::TemplateKey::render("PUT", path).expect("short");
        assert_ne!(key.as_bytes(), other.as_bytes());
    }
    // Too long for a template of its own.
    let long = format!("/{}", "g".repeat(ids::MAX_TEMPLATE_LEN));
    assert!(ids::TemplateKey::render("GET", &long).is_none());
    assert!(ids::TemplateKey::render("GET", &long[..ids::MAX_TEMPLATE_LEN - 4]).is_some());
    // Long identifiers render as the placeholder: the template is short, so it is kept.
    for (target, want) in [
        (format!("/x/{}", "1".repeat(300)), "GET /x/{id}".to_owned()),
        (
            format!("/sha/{}", format!("/{}", "ab12".repeat(16)).repeat(5)),
            format!("GET /sha/{}", "/{id}".repeat(5)),
        ),
    ] {
        let key = ids::TemplateKey::render("GET", &target).expect("short template");
        assert_eq!(key.to_str(), want);
        assert_eq!(key.to_str(), reference_template("GET", &target));
    }
}

/// The one-pass renderer against a plain reference: split at `/`, replace identifier
/// segments, join.
fn reference_template(method: &str, target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let path = ["http://", "https://"]
        .iter()
        .find(|s| {
            path.len() > s.len() && path.as_bytes()[..s.len()].eq_ignore_ascii_case(s.as_bytes())
        })
        .map_or(path, |s| {
            let rest = &path[s.len()..];
            rest.find('/').map_or("/", |i| &rest[i..])
        });
    let segments: Vec<&str> = path
        .split('/')
        .map(|seg| {
            let b = seg.as_bytes();
            let uuid = b.len() == 36
                && b.iter().enumerate().all(|(i, c)| match i {
                    8 | 13 | 18 | 23 => *c == b'-',
                    _ => c.is_ascii_hexdigit(),
                });
            let id = !b.is_empty()
                && (b.iter().all(u8::is_ascii_digit)
                    || uuid
                    || (b.len() >= 8
                        && b.iter().all(u8::is_ascii_hexdigit)
                        && (b.len() >= 16 || b.iter().any(u8::is_ascii_digit))));
            if id { ids::ID_PLACEHOLDER } else { seg }
        })
        .collect();
    format!("{method} {}", segments.join("/"))
}

proptest::proptest! {
    #[test]
    fn one_pass_templates_match_the_reference(
        method in "[A-Z]{1,7}",
        target in "(https?://[a-z.]{0,6})?(/([0-9]{1,12}|[0-9]{100,300}|[0-9a-fA-F]{6,40}|[a-z]{1,6}|[a-z]{60,120}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[-a-z0-9._~%]{0,8})){0,8}([?#][^ ]{0,10})?",
    ) {
        let want = reference_template(&method, &target);
        match ids::TemplateKey::render(&method, &target) {
            Some(key) => proptest::prop_assert_eq!(key.to_str(), want.as_str()),
            None => proptest::prop_assert!(want.len() > ids::MAX_TEMPLATE_LEN),
        }
    }
}

proptest::proptest! {
    // Short random targets over a small alphabet: many cases are cheap, and an identifier
    // followed by more bytes in the same word needs a few thousand to show up reliably.
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
    #[test]
    fn templates_of_any_target_match_the_reference(
        target in "(HTTPS?://|https?://)?([/?#.:é0-9a-fA-FgG\\-]|[0-9]{8,20}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}){0,40}",
    ) {
        let want = reference_template("GET", &target);
        match ids::TemplateKey::render("GET", &target) {
            Some(key) => proptest::prop_assert_eq!(key.to_str(), want.as_str()),
            None => proptest::prop_assert!(want.len() > ids::MAX_TEMPLATE_LEN),
        }
    }
}

#[test]
fn ids_normalise_and_round_trip() {
    assert_eq!(normalize_host("Example.COM:8080"), Some("Example.COM"));
    assert_eq!(
        normalize_host(" api.example.com. "),
        Some("api.example.com")
    );
    assert_eq!(normalize_host("[::1]:443"), Some("[::1]"));
    assert_eq!(normalize_host("::1"), Some("::1"));
    assert_eq!(normalize_host(":80"), None);
    let r = ResourceId::new(
        "10.0.0.1:80".parse().expect("addr"),
        Some("WWW.Example.com:80"),
    );
    assert_eq!(r.to_string(), "www.example.com@10.0.0.1:80");
    assert_eq!(r.to_string().parse::<ResourceId>().expect("parse"), r);
    let v6 = ResourceId::new("[2001:db8::1]:443".parse().expect("addr"), None);
    assert_eq!(v6.to_string(), "[2001:db8::1]:443");
    assert_eq!(v6.to_string().parse::<ResourceId>().expect("parse"), v6);
    assert!("@1.2.3.4:80".parse::<ResourceId>().is_err());
    assert!("nonsense".parse::<ResourceId>().is_err());
    let c = ClientId::of(ip("192.168.7.200"), 24, 64);
    assert_eq!(c.to_string(), "192.168.7.0/24");
    assert_eq!(c.to_string().parse::<ClientId>().expect("parse"), c);
    let c6 = ClientId::of(ip("2001:db8:1:2:3:4:5:6"), 24, 64);
    assert_eq!(c6.to_string(), "2001:db8:1:2::/64");
    assert_eq!(ClientId::of(ip("1.2.3.4"), 0, 0).to_string(), "0.0.0.0/0");
    assert!(
        "192.168.7.1/24".parse::<ClientId>().is_err(),
        "host bits set"
    );
    assert!("1.2.3.4/33".parse::<ClientId>().is_err());
}

#[test]
fn clients_aggregate_to_prefix() {
    let mut model = ModelStore::new(ModelConfig {
        client_prefix_v4: 24,
        emit: EmitConfig {
            clients: true,
            ..EmitConfig::default()
        },
        ..ModelConfig::default()
    })
    .expect("config");
    for (i, client) in ["192.0.2.1", "192.0.2.77", "198.51.100.3"]
        .into_iter()
        .enumerate()
    {
        model.observe(&request(MONDAY + i as u64, client, Some("a"), "/"));
    }
    model.flush();
    assert_eq!(model.client_count(), 2);
    let per_client: HashMap<String, u64> = summaries_of(&mut model, Level::Minute)
        .into_iter()
        .filter_map(|s| match s.entity {
            EntityId::Client(c) => Some((c.to_string(), s.requests)),
            EntityId::Resource(_) => None,
        })
        .collect();
    assert_eq!(per_client["192.0.2.0/24"], 2);
    assert_eq!(per_client["198.51.100.0/24"], 1);
}

#[test]
fn status_classes_latency_and_error_rate() {
    let mut model = ModelStore::new(ModelConfig::default()).expect("config");
    let statuses = [200, 200, 201, 204, 301, 404, 500, 503, 101, 200];
    for (i, status) in statuses.into_iter().enumerate() {
        let ts = MONDAY + i as u64 * 1000;
        model.observe(&request(ts, "192.0.2.1", Some("shop"), "/cart/17"));
        model.observe(&response(
            ts + 500,
            "192.0.2.1",
            Some("shop"),
            status,
            100 + i as u64,
        ));
    }
    model.flush();
    let minute = summaries_of(&mut model, Level::Minute);
    let shop: Vec<_> = minute
        .iter()
        .filter(|s| s.entity == EntityId::Resource(resource(Some("shop"))))
        .collect();
    assert_eq!(shop.len(), 1);
    let s = shop[0];
    assert_eq!((s.requests, s.responses), (10, 10));
    assert_eq!(s.status.success, 5);
    assert_eq!(s.status.redirection, 1);
    assert_eq!(s.status.client_error, 1);
    assert_eq!(s.status.server_error, 2);
    assert_eq!(s.status.informational, 1);
    assert!((s.error_rate() - 0.2).abs() < 1e-12);
    assert!((s.client_error_rate() - 0.1).abs() < 1e-12);
    assert_eq!(s.latency_us.len(), 10);
    assert_eq!(s.latency_us.min(), 100);
    assert_eq!(s.latency_us.max(), 109);
    assert_eq!(s.bytes_in, 1000);
    assert_eq!(s.bytes_out, 10 * 1200);
    assert_eq!(s.request_size_bytes.len(), 10);
    assert_eq!(s.endpoints.get("GET /cart/{id}"), Some(&10));
    assert_eq!(s.endpoints_other, 0);
}

#[test]
fn model_rollups_match_and_late_events_are_counted() {
    let mut model = ModelStore::new(ModelConfig::default()).expect("config");
    let mut sent = 0u64;
    for i in 0..900u64 {
        // 900 requests over 90 s, then one 5 s late.
        model.observe(&request(
            MONDAY + i * S / 10,
            "192.0.2.9",
            Some("h"),
            "/p/1",
        ));
        sent += 1;
    }
    model.observe(&request(MONDAY + 84 * S, "192.0.2.9", Some("h"), "/p/1"));
    // Within the 1 s lateness: still counted.
    model.observe(&request(
        MONDAY + 89 * S + S / 2,
        "192.0.2.9",
        Some("h"),
        "/p/1",
    ));
    sent += 1;
    model.flush();
    assert_eq!(model.stats().late_dropped, 1);
    let all: Vec<WindowSummary> = model.drain_summaries().collect();
    for level in Level::ALL {
        let total: u64 = all
            .iter()
            .filter(|s| s.level() == Some(level) && matches!(s.entity, EntityId::Resource(_)))
            .map(|s| s.requests)
            .sum();
        assert_eq!(total, sent, "{level:?}");
    }
    let minutes: Vec<_> = all
        .iter()
        .filter(|s| s.level() == Some(Level::Minute))
        .collect();
    assert_eq!(minutes.len(), 2);
    assert_eq!(minutes[0].requests, 600);
    assert_eq!(minutes[0].window_start_ns, MONDAY);
    assert_eq!(minutes[0].window_len_ns, 60 * S);
}

#[test]
fn connections_count_on_the_resource_the_request_names() {
    let mut model = ModelStore::new(ModelConfig::default()).expect("config");
    let open = |ts, port| {
        Event::ConnOpen(ConnOpenEvent {
            common: common(ts, "192.0.2.1", port, "10.0.0.1", 80),
            syn_ack: false,
        })
    };
    let close = |ts, port| {
        // The server closes first: src/dst are reversed.
        Event::ConnClose(ConnCloseEvent {
            common: common(ts, "10.0.0.1", 80, "192.0.2.1", port),
            reason: CloseReason::Fin,
            duration_us: None,
        })
    };
    model.observe(&open(MONDAY, 40_000));
    model.observe(&open(MONDAY + 1, 40_001));
    let mut req = request(MONDAY + 10, "192.0.2.1", Some("api"), "/x");
    model.observe(&req);
    if let Event::HttpRequest(r) = &mut req {
        r.common.src_port = 40_001;
        r.common.ts_ns = MONDAY + 20;
    }
    model.observe(&req);
    // A connection that never carried a request counts on the bare address.
    model.observe(&open(MONDAY + 30, 40_002));
    for (i, port) in [40_000u16, 40_001, 40_002].into_iter().enumerate() {
        model.observe(&close(MONDAY + 2 * S + i as u64, port));
    }
    model.observe(&close(MONDAY + 3 * S, 50_000));
    model.flush();
    assert_eq!(model.stats().closes_untracked, 1);
    let minute = summaries_of(&mut model, Level::Minute);
    let api = minute
        .iter()
        .find(|s| s.entity == EntityId::Resource(resource(Some("api"))))
        .expect("api");
    assert_eq!((api.connections_opened, api.connections_closed), (2, 2));
    assert_eq!(api.concurrent_connections_max, 2);
    assert_eq!(api.requests, 2);
    let bare = minute
        .iter()
        .find(|s| s.entity == EntityId::Resource(resource(None)))
        .expect("bare address");
    assert_eq!((bare.connections_opened, bare.connections_closed), (1, 1));
    assert_eq!(model.stats().conns_tracked, 0);
}

#[test]
fn tls_refines_by_sni_and_unpaired_responses_follow_their_connection() {
    let mut model = ModelStore::new(ModelConfig::default()).expect("config");
    model.observe(&Event::ConnOpen(ConnOpenEvent {
        common: common(MONDAY, "192.0.2.5", 40_000, "10.0.0.1", 80),
        syn_ack: false,
    }));
    model.observe(&request(MONDAY + 5, "192.0.2.5", Some("Web.Example"), "/"));
    let mut unpaired = response(MONDAY + 9, "192.0.2.5", None, 200, 1);
    if let Event::HttpResponse(r) = &mut unpaired {
        r.latency_us = None;
    }
    model.observe(&unpaired);
    model.observe(&Event::TlsClientHello(TlsClientHelloEvent {
        common: common(MONDAY + 20, "192.0.2.5", 40_100, "10.0.0.1", 443),
        sni: Some("secure.example".into()),
        tls_version: "TLS1.3".into(),
        bytes: 517,
    }));
    model.flush();
    let minute = summaries_of(&mut model, Level::Minute);
    let web = minute
        .iter()
        .find(|s| s.entity == EntityId::Resource(resource(Some("web.example"))))
        .expect("web");
    assert_eq!(
        (web.requests, web.responses, web.connections_opened),
        (1, 1, 1)
    );
    assert!(web.latency_us.is_empty());
    let tls_id = ResourceId::new(
        "10.0.0.1:443".parse().expect("addr"),
        Some("secure.example"),
    );
    let tls = minute
        .iter()
        .find(|s| s.entity == EntityId::Resource(tls_id.clone()))
        .expect("tls");
    assert_eq!((tls.tls_handshakes, tls.bytes_in), (1, 517));
    assert_eq!(model.resource_count(), 2);
}

#[test]
fn resource_eviction_is_bounded_counted_and_flushes_windows() {
    let mut model = ModelStore::new(ModelConfig {
        max_resources: 8,
        ..ModelConfig::default()
    })
    .expect("config");
    let mut sent = 0u64;
    for i in 0..200u64 {
        let host = format!("h{}", i % 50);
        model.observe(&request(MONDAY + i * 1000, "192.0.2.1", Some(&host), "/"));
        sent += 1;
        assert!(model.resource_count() <= 8);
    }
    model.flush();
    let stats = model.stats();
    assert!(stats.resources_evicted > 0);
    assert_eq!(
        stats.resources_evicted,
        stats.resources_created - stats.resources_active
    );
    // Evicted resources' open windows were flushed as summaries: nothing was lost.
    let total: u64 = summaries_of(&mut model, Level::Minute)
        .iter()
        .filter(|s| matches!(s.entity, EntityId::Resource(_)))
        .map(|s| s.requests)
        .sum();
    assert_eq!(total, sent);
}

#[test]
fn random_source_flood_stays_within_bounds() {
    const MAX_CLIENTS: usize = 10_000;
    let mut model = ModelStore::new(ModelConfig {
        max_clients: MAX_CLIENTS,
        max_resources: 64,
        max_connections: 4096,
        ..ModelConfig::default()
    })
    .expect("config");
    // Per-client budget: windows, a small histogram, top-k counters and the hour-of-week
    // profile, with generous slack; plus fixed tables.
    let budget = MAX_CLIENTS * 4096 + 64 * 64 * 1024 + (8 << 20);
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut distinct = std::collections::HashSet::new();
    let mut memory_at_half = 0;
    let mut event = request(MONDAY, "192.0.2.1", Some("victim"), "/login");
    for i in 0..1_000_000u64 {
        let src = crate::windows::tests::xorshift(&mut rng) as u32;
        distinct.insert(src);
        if let Event::HttpRequest(r) = &mut event {
            r.common.src = IpAddr::V4(Ipv4Addr::from(src));
            r.common.ts_ns = MONDAY + i * 10_000; // 100k requests/s
        }
        model.observe(&event);
        if i % 50_000 == 0 {
            assert!(model.client_count() <= MAX_CLIENTS);
            assert!(
                model.approx_memory_bytes() <= budget,
                "{}",
                model.approx_memory_bytes()
            );
            model.drain_summaries().for_each(drop);
        }
        if i == 500_000 {
            memory_at_half = model.approx_memory_bytes();
        }
    }
    let stats = model.stats();
    assert_eq!(stats.clients_active as usize, model.client_count());
    assert_eq!(model.client_count(), MAX_CLIENTS);
    assert!(stats.clients_created >= distinct.len() as u64);
    assert_eq!(
        stats.clients_evicted,
        stats.clients_created - stats.clients_active
    );
    let memory = model.approx_memory_bytes();
    assert!(memory <= budget, "{memory} > {budget}");
    assert!(
        memory <= memory_at_half + memory_at_half / 4,
        "memory keeps growing: {memory_at_half} → {memory}"
    );
    assert_eq!(stats.resources_active, 1);
}

#[test]
fn summary_merge_is_associative_and_sums() {
    let mut parts = Vec::new();
    for (seed, host_count) in [(1u64, 3u64), (2, 5), (3, 7)] {
        let mut model = ModelStore::new(ModelConfig::default()).expect("config");
        for i in 0..host_count * 10 {
            let path = format!("/item/{}/{}", i, ["a", "b", "c"][(i % 3) as usize]);
            model.observe(&request(
                MONDAY + i * 1000 + seed,
                "192.0.2.1",
                Some("m"),
                &path,
            ));
            model.observe(&response(
                MONDAY + i * 1000 + seed + 1,
                "192.0.2.1",
                Some("m"),
                [200, 500][(i % 2) as usize],
                i * seed + 1,
            ));
        }
        model.flush();
        let s = summaries_of(&mut model, Level::Minute)
            .into_iter()
            .find(|s| matches!(s.entity, EntityId::Resource(_)))
            .expect("summary");
        parts.push(s);
    }
    let (a, b, c) = (&parts[0], &parts[1], &parts[2]);
    let mut left = a.clone();
    left.merge(b);
    left.merge(c);
    let mut bc = b.clone();
    bc.merge(c);
    let mut right = a.clone();
    right.merge(&bc);
    assert_eq!(left, right);
    assert_eq!(left.requests, a.requests + b.requests + c.requests);
    assert_eq!(
        left.status.server_error,
        a.status.server_error + b.status.server_error + c.status.server_error
    );
    assert_eq!(
        left.latency_us.len(),
        a.latency_us.len() + b.latency_us.len() + c.latency_us.len()
    );
    assert_eq!(
        left.latency_us.max(),
        a.latency_us
            .max()
            .max(b.latency_us.max())
            .max(c.latency_us.max())
    );
    assert_eq!(
        left.endpoints.values().sum::<u64>() + left.endpoints_other,
        left.requests
    );
    // JSON round trip keeps everything, histograms included (base64 HdrHistogram V2).
    let json = serde_json::to_string(&left).expect("json");
    assert!(json.contains(r#""resource":"m@10.0.0.1:80""#), "{json}");
    let back: WindowSummary = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, left);
    let mut truncated = left.clone();
    truncated.truncate_endpoints(1);
    assert_eq!(truncated.endpoints.len(), 1);
    assert_eq!(
        truncated.endpoints.values().sum::<u64>() + truncated.endpoints_other,
        left.requests
    );
    let bad = json.replace(r#""latency_us":""#, r#""latency_us":"!!"#);
    assert!(serde_json::from_str::<WindowSummary>(&bad).is_err());
}

#[test]
fn demand_series_and_hour_of_week() {
    let mut model = ModelStore::new(ModelConfig {
        demand_history: 10,
        ..ModelConfig::default()
    })
    .expect("config");
    // Minute m gets m+1 requests, minutes 0..5 of Monday 10:00 UTC.
    let base = MONDAY + 10 * 3600 * S;
    for m in 0..5u64 {
        for k in 0..=m {
            model.observe(&request(base + m * 60 * S + k, "192.0.2.1", Some("d"), "/"));
        }
    }
    model.advance_to(base + 7 * 60 * S + 2 * S);
    let id = resource(Some("d"));
    let series = model
        .demand_series(&id, Duration::from_secs(60))
        .expect("series");
    let start_ms = base / 1_000_000;
    let want: Vec<(u64, f64)> = (0..7u64)
        .map(|m| {
            (
                start_ms + m * 60_000,
                if m < 5 { (m + 1) as f64 } else { 0.0 },
            )
        })
        .collect();
    assert_eq!(series, want);
    let two = model
        .demand_series(&id, Duration::from_secs(120))
        .expect("series");
    assert_eq!(two[0], (start_ms, 3.0));
    assert!(model.demand_series(&id, Duration::from_secs(90)).is_err());
    assert!(
        model
            .demand_series(&resource(Some("nope")), Duration::from_secs(60))
            .expect("ok")
            .is_empty()
    );
    let profile = model
        .hour_of_week(&EntityId::Resource(id.clone()))
        .expect("profile");
    assert_eq!(profile[10], 15, "Monday 10:00 is hour 10 of the week");
    assert_eq!(profile.iter().sum::<u64>(), 15);
    assert_eq!(model.peak_hours(&EntityId::Resource(id), 3), vec![(10, 15)]);
    // Clients keep their profile, but no demand series: only resources are forecast.
    let client = EntityId::Client(ClientId::of(ip("192.0.2.1"), 32, 128));
    assert_eq!(model.peak_hours(&client, 1), vec![(10, 15)]);
    assert!(
        model.clients.iter().all(|c| c.demand.heap_bytes() == 0),
        "client demand series kept"
    );
    assert!(model.resources.iter().any(|r| r.demand.heap_bytes() > 0));
}

#[test]
fn config_is_validated() {
    for bad in [
        ModelConfig {
            max_clients: 0,
            ..ModelConfig::default()
        },
        ModelConfig {
            client_prefix_v4: 33,
            ..ModelConfig::default()
        },
        ModelConfig {
            endpoint_counters: 2,
            top_k: 5,
            ..ModelConfig::default()
        },
        ModelConfig {
            demand_step_secs: 0,
            ..ModelConfig::default()
        },
    ] {
        assert!(matches!(
            ModelStore::new(bad),
            Err(ModelError::Config { .. })
        ));
    }
}
