//! Loads derived from the profiles of real captures (`runner::from_agent`), checked against
//! `tshark` as the oracle.
//!
//! For each shared capture with HTTP, tshark lists every request head (as
//! `tests/tests/profile_pcap.rs` does: reassembly off, retransmissions excluded) with its
//! time, TCP stream, server, Host, method and target. From those rows the test computes per
//! resource the rate the agent's profile defines ((requests − 1) over the span from the first
//! request to the last), each template's share of the requests, the distinct `{id}` values
//! of each template and the TCP connections; the load derived from the profile of
//! `shadowtap-agent profile --pcap` must hold exactly these. `peak` is checked on a decision
//! made by the real fleet (core's decision engine) from a known demand series.

// Rates are compared exactly: the oracle does the profile's arithmetic on the same integers.
#![allow(clippy::float_cmp)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use shadowtap_agent::model::{OTHER_TEMPLATE, endpoint_template, normalize_host};
use shadowtap_agent::profile_cmd::from_pcap;
use shadowtap_core::decision::PolicySet;
use shadowtap_core::{Fleet, FleetConfig, Observation, WindowCounts};
use shadowtap_loadgen::generate::ForecastBound;
use shadowtap_sweep::runner::LoadKind;
use shadowtap_sweep::runner::from_agent::{
    AgentLoad, FromAgentError, connections_at, derive, derive_current,
};
use shadowtap_tests::support::shared_data_dir;
use shadowtap_tests::tshark::{Tshark, parse_epoch_ns};

/// What tshark says about one resource.
#[derive(Default, Debug)]
struct Oracle {
    requests: u64,
    first_ns: u64,
    last_ns: u64,
    templates: BTreeMap<String, u64>,
    /// Per template, the distinct paths (query dropped): one per `{id}` value combination.
    paths: BTreeMap<String, BTreeSet<String>>,
    streams: BTreeSet<u64>,
}

fn pcap(name: &str) -> std::path::PathBuf {
    shared_data_dir()
        .expect("shared data")
        .join("pcap")
        .join(name)
}

fn oracle(pcap: &Path) -> BTreeMap<String, Oracle> {
    let tshark = Tshark::locate().expect("tshark is installed by `cargo xtask setup`");
    let rows = tshark
        .fields(
            pcap,
            &["tcp.desegment_tcp_streams:FALSE"],
            "http.request && tcp && !tcp.analysis.retransmission",
            &[
                "frame.time_epoch",
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
    for row in rows {
        let [time, stream, v4, v6, port, host, method, uri] = &row[..] else {
            panic!("unexpected tshark row {row:?}");
        };
        let ts = parse_epoch_ns(time).expect("frame.time_epoch");
        let addr = if v4.is_empty() {
            format!("[{v6}]:{port}")
        } else {
            format!("{v4}:{port}")
        };
        let resource = match normalize_host(host) {
            Some(h) => format!("{}@{addr}", h.to_ascii_lowercase()),
            None => addr,
        };
        let path_template = endpoint_template(uri);
        let template = if path_template == OTHER_TEMPLATE {
            OTHER_TEMPLATE.to_owned()
        } else {
            format!("{method} {path_template}")
        };
        let o = by_resource.entry(resource).or_default();
        // The profile's span: from the first request it processed to the latest time seen.
        if o.requests == 0 {
            o.first_ns = ts;
        }
        o.last_ns = o.last_ns.max(ts);
        o.requests += 1;
        *o.templates.entry(template.clone()).or_default() += 1;
        let path = uri.split('?').next().unwrap_or(uri).to_owned();
        o.paths.entry(template).or_default().insert(path);
        o.streams.insert(stream.parse().expect("tcp.stream"));
    }
    by_resource
}

/// Every resource of the capture with a rate (two requests or more) derives a `current` load
/// that holds tshark's rate, mix and key space exactly; the others are refused by name.
fn check_current(name: &str) -> usize {
    let pcap = pcap(name);
    let want = oracle(&pcap);
    let doc = from_pcap(&pcap, None, None).expect("profile");
    let json = serde_json::to_string(&doc).expect("profile JSON");
    let from = format!("pcap:{name}");
    let mut derived = 0;
    for (resource, o) in &want {
        let result = derive(
            AgentLoad::Current,
            &from,
            resource,
            &json,
            None,
            ForecastBound::Point,
        );
        if o.requests < 2 || o.last_ns == o.first_ns {
            let err = result.expect_err("one request has no rate");
            assert!(
                matches!(err, FromAgentError::NoRequests { .. }),
                "{resource}: {err}"
            );
            assert!(err.to_string().contains(resource.as_str()), "{err}");
            continue;
        }
        let spec = result.unwrap_or_else(|e| panic!("{resource}: {e}"));
        derived += 1;
        assert_eq!(spec.kind, LoadKind::Current);
        let span_s = (o.last_ns - o.first_ns) as f64 / 1e9;
        let rate = (o.requests - 1) as f64 / span_s;
        assert_eq!(spec.rate_rps, rate, "{resource}: rate");
        // The mix: every template with its share of tshark's requests and its distinct
        // values; nothing else (no `(other)` requests in these captures unless tshark saw
        // them too).
        let mix: BTreeMap<&str, (f64, u64)> = spec
            .mix
            .iter()
            .map(|m| (m.name.as_str(), (m.weight, m.keys)))
            .collect();
        let expected: BTreeMap<&str, (f64, u64)> = o
            .templates
            .iter()
            .map(|(t, &n)| {
                let keys = if t.contains("{id}") {
                    o.paths[t].len() as u64
                } else {
                    1
                };
                (t.as_str(), (n as f64 / o.requests as f64, keys))
            })
            .collect();
        assert_eq!(mix, expected, "{resource}: mix");
        let total: f64 = spec.mix.iter().map(|m| m.weight).sum();
        assert!(
            (total - 1.0).abs() < 1e-9,
            "{resource}: weights add to {total}"
        );
        // Response sizes are the profile's per-template means (head + Content-Length).
        let profile = doc.resource(Some(resource)).expect("resource");
        for m in &spec.mix {
            let t = profile
                .templates
                .iter()
                .find(|t| t.template == m.name)
                .expect("template");
            let mean = if t.response_bytes.count > 0 {
                t.response_bytes.mean
            } else {
                profile.response_bytes.mean
            };
            assert_eq!(
                m.response_bytes,
                mean.round() as usize,
                "{resource} {}",
                m.name
            );
        }
        // Connections: never more than the TCP connections tshark saw, at least one.
        assert!(
            (1..=o.streams.len()).contains(&spec.connections),
            "{resource}: {} connections, {} streams",
            spec.connections,
            o.streams.len()
        );
    }
    derived
}

#[test]
fn current_of_http_packets_matches_tshark() {
    assert_eq!(check_current("http-packets.pcap"), 1);
}

#[test]
fn current_of_many_protocols_matches_tshark() {
    // Every resource with two or more requests in the capture.
    let want = oracle(&pcap("many-protocols.pcap"));
    let with_rate = want
        .values()
        .filter(|o| o.requests >= 2 && o.last_ns > o.first_ns)
        .count();
    assert!(with_rate > 5, "{with_rate}");
    assert_eq!(check_current("many-protocols.pcap"), with_rate);
}

#[test]
fn current_of_ipv6_streams_matches_tshark() {
    assert_eq!(check_current("four_ipv6_http_streams.pcap"), 1);
}

/// A fleet fed `demand` (requests per 60 s window) for `resource`; its last decision's JSON
/// is what the agent's `/v1/resources/{id}/forecast` serves.
fn decision_json(resource: &str, demand: &[u64]) -> String {
    let policies = PolicySet::from_toml(
        "[defaults]\ncapacity_per_instance = 100.0\ntarget_utilisation = 1.0\n",
    )
    .expect("policy");
    let mut fleet = Fleet::new(FleetConfig::default(), policies);
    let step = 60_000;
    let t0 = 1_700_000_000_000 - 1_700_000_000_000 % step;
    for (w, &requests) in demand.iter().enumerate() {
        let start = t0 + w as u64 * step;
        fleet.ingest(
            Observation {
                agent_id: "a".into(),
                resource: resource.into(),
                window_start_ms: start,
                window_end_ms: start + step,
                seq: w as u64,
                summary: WindowCounts {
                    requests,
                    ..WindowCounts::default()
                },
            },
            Instant::now(),
        );
    }
    fleet.flush();
    let decision = fleet.last_decision(resource).expect("a decision");
    serde_json::to_string(decision).expect("decision JSON")
}

/// The highest forecast rate of a decision, computed from its JSON fields: demand per step
/// over the step's seconds.
fn forecast_peak(json: &str, field: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(json).expect("json");
    let points = v["explanation"]["forecast"].as_array().expect("forecast");
    let start = |i: usize| points[i]["start_ms"].as_u64().expect("start_ms");
    let step_s = (start(1) - start(0)) as f64 / 1000.0;
    points
        .iter()
        .map(|p| p[field].as_f64().expect("demand") / step_s)
        .fold(0.0, f64::max)
}

#[test]
fn peak_is_the_profile_mix_at_the_forecast_peak() {
    let pcap = pcap("http-packets.pcap");
    let doc = from_pcap(&pcap, None, None).expect("profile");
    let profile = &doc.resources[0];
    let json = serde_json::to_string(&doc).expect("profile JSON");
    let current = derive_current(profile, "pcap").expect("current");
    // Two hours of a daily-ish wave around 600 requests a minute.
    let demand: Vec<u64> = (0..120u64)
        .map(|w| 600 + (300.0 * (w as f64 / 20.0).sin()) as u64)
        .collect();
    let forecast = decision_json(&profile.resource, &demand);
    for (bound, field) in [
        (ForecastBound::Point, "point"),
        (ForecastBound::Upper, "upper"),
    ] {
        let peak = derive(
            AgentLoad::Peak,
            "pcap",
            &profile.resource,
            &json,
            Some(&forecast),
            bound,
        )
        .expect("peak");
        let want = forecast_peak(&forecast, field);
        assert!(want > 0.0);
        assert_eq!(peak.kind, LoadKind::ForecastPeak);
        assert_eq!(peak.rate_rps, want, "{bound:?}");
        assert_eq!(peak.mix, current.mix, "the mix does not change at the peak");
        assert_eq!(peak.connections, connections_at(profile, want));
    }
    let upper = derive(
        AgentLoad::Peak,
        "pcap",
        &profile.resource,
        &json,
        Some(&forecast),
        ForecastBound::Upper,
    )
    .expect("upper");
    let point = derive(
        AgentLoad::Peak,
        "pcap",
        &profile.resource,
        &json,
        Some(&forecast),
        ForecastBound::Point,
    )
    .expect("point");
    assert!(upper.rate_rps >= point.rate_rps);
    // Connections scale with the rate (the rule is linear in it, then rounded up).
    let ratio = upper.connections as f64 / current.connections as f64;
    let rate_ratio = upper.rate_rps / current.rate_rps;
    assert!(
        (ratio - rate_ratio).abs() <= rate_ratio / current.connections as f64 + 1.0,
        "{ratio} vs {rate_ratio}"
    );
}

#[test]
fn peak_before_the_forecast_is_fitted_is_refused() {
    let pcap = pcap("http-packets.pcap");
    let doc = from_pcap(&pcap, None, None).expect("profile");
    let json = serde_json::to_string(&doc).expect("profile JSON");
    let resource = &doc.resources[0].resource;
    // Three windows: the decision rests on the last observation, no model yet.
    let cold = decision_json(resource, &[600, 610, 620]);
    let err = derive(
        AgentLoad::Peak,
        "http://agent:9464",
        resource,
        &json,
        Some(&cold),
        ForecastBound::Point,
    )
    .expect_err("no forecast yet");
    assert!(matches!(err, FromAgentError::NoForecast { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(resource.as_str()) && text.contains("http://agent:9464"),
        "{text}"
    );
    // An unknown resource names the ones the profile holds.
    let err = derive(
        AgentLoad::Current,
        "http://agent:9464",
        "nope@10.0.0.1:80",
        &json,
        None,
        ForecastBound::Point,
    )
    .expect_err("unknown");
    let text = err.to_string();
    assert!(
        text.contains("\"nope@10.0.0.1:80\" not known to the agent at http://agent:9464")
            && text.contains(resource.as_str()),
        "{text}"
    );
}
