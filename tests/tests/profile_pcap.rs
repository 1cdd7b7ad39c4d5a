//! Request profiles learned from real captures, checked against `tshark` as the oracle.
//!
//! For each shared capture with HTTP over TCP, tshark lists every request head (TCP
//! reassembly off, retransmissions excluded: what a head-seeing tap reports) with its TCP
//! stream, server, Host, method and target. From those rows, computed now, the test derives
//! per resource: the request count, the endpoint-template mix, the requests per connection
//! and the template-to-template transitions within each connection, and requires the
//! profile of `shadowtap-agent profile --pcap` to hold exactly these. The document must also
//! validate against the JSON Schema in `core/schema/`.

use std::collections::BTreeMap;
use std::path::Path;

use shadowtap_agent::model::{OTHER_TEMPLATE, endpoint_template, normalize_host};
use shadowtap_agent::profile_cmd::from_pcap;
use shadowtap_core::profile::{Distribution, END, ProfileDocument, START};
use shadowtap_tests::support::shared_data_dir;
use shadowtap_tests::tshark::Tshark;

/// What tshark says about one resource.
#[derive(Default, Debug)]
struct Oracle {
    requests: u64,
    templates: BTreeMap<String, u64>,
    /// Requests per stretch of a TCP stream on this resource.
    per_stream: BTreeMap<u64, u64>,
    /// (from, to) template pairs of consecutive requests on a stream.
    transitions: BTreeMap<(String, String), u64>,
}

fn oracle(pcap: &Path) -> BTreeMap<String, Oracle> {
    let tshark = Tshark::locate().expect("tshark is installed by `cargo xtask setup`");
    let rows = tshark
        .fields(
            pcap,
            &["tcp.desegment_tcp_streams:FALSE"],
            "http.request && tcp && !tcp.analysis.retransmission",
            &[
                "tcp.stream",
                "ip.dst",
                "ipv6.dst",
                "tcp.dstport",
                "http.host",
                "http.request.method",
                "http.request.uri",
            ],
        )
        .expect("tshark");
    let mut by_resource: BTreeMap<String, Oracle> = BTreeMap::new();
    let mut stretches: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    // The latest (resource, template) per stream: a transition is within one resource; a
    // request to another resource (another Host on the same connection) starts afresh.
    let mut last_on_stream: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for row in rows {
        let [stream, v4, v6, port, host, method, uri] = &row[..] else {
            panic!("unexpected tshark row {row:?}");
        };
        let stream: u64 = stream.parse().expect("tcp.stream");
        let addr = if v4.is_empty() {
            format!("[{v6}]:{port}")
        } else {
            format!("{v4}:{port}")
        };
        let resource = match normalize_host(host) {
            Some(h) => format!("{}@{addr}", h.to_ascii_lowercase()),
            None => addr,
        };
        // A target whose template would be too long counts as `(other)`, as in the model.
        let path_template = endpoint_template(uri);
        let template = if path_template == OTHER_TEMPLATE {
            OTHER_TEMPLATE.to_owned()
        } else {
            format!("{method} {path_template}")
        };
        let o = by_resource.entry(resource.clone()).or_default();
        o.requests += 1;
        *o.templates.entry(template.clone()).or_default() += 1;
        if let Some((prev_resource, prev)) =
            last_on_stream.insert(stream, (resource.clone(), template.clone()))
            && prev_resource == resource
        {
            *o.transitions.entry((prev, template)).or_default() += 1;
        }
        // A connection's stretch on one resource counts as one connection there.
        let stretch = stretches.entry(stream).or_insert((resource.clone(), 0));
        if stretch.0 != resource {
            *stretch = (resource.clone(), stretch.1 + 1);
        }
        *o.per_stream.entry(stream << 16 | stretch.1).or_default() += 1;
    }
    by_resource
}

fn check(name: &str) {
    let pcap = shared_data_dir()
        .expect("shared data")
        .join("pcap")
        .join(name);
    let want = oracle(&pcap);
    assert!(!want.is_empty(), "{name}: tshark found no HTTP requests");
    // Whole heads, as tshark reads them (a live agent's snaplen is checked in `live.rs`).
    let doc = from_pcap(&pcap, None, None).expect("profile");

    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../core/schema/profile.schema.json"))
            .expect("schema json");
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    let json = serde_json::to_value(&doc).expect("profile json");
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{name}: schema violations: {errors:?}");
    let text = serde_json::to_string(&doc).expect("encode");
    assert_eq!(ProfileDocument::from_json(&text).expect("reads back"), doc);

    let got: BTreeMap<&str, _> = doc
        .resources
        .iter()
        .map(|r| (r.resource.as_str(), r))
        .collect();
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        want.keys().map(String::as_str).collect::<Vec<_>>(),
        "{name}: resources"
    );
    for (id, o) in &want {
        let p = got[id.as_str()];
        assert_eq!(p.requests, o.requests, "{name} {id}: requests");
        let mut mix: BTreeMap<String, u64> = p
            .templates
            .iter()
            .map(|t| (t.template.clone(), t.requests))
            .collect();
        if p.templates_other > 0 {
            mix.insert(OTHER_TEMPLATE.to_owned(), p.templates_other);
        }
        assert_eq!(mix, o.templates, "{name} {id}: template mix");
        let share: f64 = p.templates.iter().map(|t| t.share).sum::<f64>()
            + p.templates_other as f64 / p.requests as f64;
        assert!(
            (share - 1.0).abs() < 1e-9,
            "{name} {id}: shares sum to {share}"
        );

        // Every connection is counted once, ended or still open at the end of the capture.
        let c = &p.connections;
        assert_eq!(
            c.ended + c.open,
            o.per_stream.len() as u64,
            "{name} {id}: connections"
        );
        let expected = Distribution::from_values(o.per_stream.values().copied());
        assert_eq!(
            c.requests_per_connection, expected,
            "{name} {id}: requests per connection"
        );

        let inner: BTreeMap<(String, String), u64> = c
            .transitions
            .iter()
            .filter(|t| t.from != START && t.to != END)
            .map(|t| ((t.from.clone(), t.to.clone()), t.count))
            .collect();
        assert_eq!(inner, o.transitions, "{name} {id}: transitions");
        // A start transition per connection whose open was seen, at most one end per connection.
        let starts: u64 = c
            .transitions
            .iter()
            .filter(|t| t.from == START)
            .map(|t| t.count)
            .sum();
        let ends: u64 = c
            .transitions
            .iter()
            .filter(|t| t.to == END)
            .map(|t| t.count)
            .sum();
        assert!(
            starts <= o.per_stream.len() as u64 && ends <= c.ended,
            "{name} {id}"
        );
        assert_eq!(
            p.request_bytes.count, o.requests,
            "{name} {id}: request sizes"
        );
    }
}

#[test]
fn profile_of_http_packets_matches_tshark() {
    check("http-packets.pcap");
}

#[test]
fn profile_of_many_protocols_matches_tshark() {
    check("many-protocols.pcap");
}

#[test]
fn profile_of_tcp_reassembly_matches_tshark() {
    check("tcp-reassembly.pcap");
}

#[test]
fn profile_of_four_ipv6_http_streams_matches_tshark() {
    check("four_ipv6_http_streams.pcap");
}
