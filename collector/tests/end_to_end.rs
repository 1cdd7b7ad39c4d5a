//! Issue 4, test 1: rising demand built from a real capture → agent-side producer (spool +
//! idempotent Kafka producer) → collector process → scale-out event → `shadowtap-provisioner`'s
//! exec driver (in-process, dry run), checked against the same observations run through the in-process fleet logic,
//! and every published event validated against the checked-in JSON Schema.
#![allow(clippy::too_many_lines, clippy::similar_names)] // long scenario tests; metric values are small integers

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use common::*;
use shadowtap_core::{
    Fleet, FleetConfig, Observation, ObservationSink, ScaleEvent, SinkConfig, WindowCounts,
    decision::PolicySet,
};

/// The busiest host's HTTP requests and responses from a real capture.
fn pcap_traffic() -> (String, Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let path = shared_data("pcap/http-packets.pcap");
    let mut out = Vec::new();
    shadowtap_agent::replay::replay_pcap(&path, &mut out).expect("replay pcap");
    let events: Vec<serde_json::Value> = String::from_utf8(out)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("event json"))
        .collect();
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for e in events.iter().filter(|e| e["kind"] == "http_request") {
        if let Some(h) = e["host"].as_str() {
            *per_host.entry(h.to_owned()).or_default() += 1;
        }
    }
    let host = per_host
        .iter()
        .max_by_key(|(h, n)| (**n, std::cmp::Reverse((*h).clone())))
        .map(|(h, _)| h.clone())
        .expect("the capture has HTTP requests with a Host");
    let requests = events
        .iter()
        .filter(|e| e["kind"] == "http_request" && e["host"] == host.as_str())
        .cloned()
        .collect();
    let responses = events
        .iter()
        .filter(|e| e["kind"] == "http_response" && e["host"] == host.as_str())
        .cloned()
        .collect();
    (host, requests, responses)
}

/// Window `k` carries the capture's traffic for the host `k + 1` times: a rising rate.
fn rising_windows(
    host: &str,
    requests: &[serde_json::Value],
    responses: &[serde_json::Value],
) -> Vec<Observation> {
    (0..9u64)
        .map(|k| {
            let mut c = WindowCounts::default();
            for _ in 0..=k {
                for r in requests {
                    c.requests += 1;
                    c.bytes_in += r["bytes"].as_u64().unwrap_or(0);
                    let endpoint = format!(
                        "{} {}",
                        r["method"].as_str().unwrap_or("?"),
                        r["path"].as_str().unwrap_or("?")
                    );
                    *c.endpoints.entry(endpoint).or_default() += 1;
                }
                for r in responses {
                    c.responses += 1;
                    c.bytes_out += r["bytes"].as_u64().unwrap_or(0);
                    if r["status"].as_u64().is_some_and(|s| s >= 500) {
                        c.errors += 1;
                    }
                    if let Some(l) = r["latency_us"].as_u64() {
                        c.latency_us.record(l).expect("latency");
                    }
                }
            }
            c.truncate_endpoints(20);
            Observation {
                agent_id: "agent-pcap".to_owned(),
                resource: host.to_owned(),
                window_start_ms: T0_MS + k * STEP_MS,
                window_end_ms: T0_MS + (k + 1) * STEP_MS,
                seq: k,
                summary: c,
            }
        })
        .collect()
}

#[test]
fn rising_rate_reaches_the_provisioner_as_a_scale_out() {
    let started = Instant::now();
    let (host, requests, responses) = pcap_traffic();
    assert!(
        requests.len() >= 5,
        "{} requests for {host}",
        requests.len()
    );
    let windows = rising_windows(&host, &requests, &responses);
    let per_window = requests.len() as u64;
    // Capacity so that the first windows fit one instance and later ones need several.
    let capacity = (per_window * 2) as f64;
    let policy_text = POLICY.replace(
        "capacity_per_instance = 100.0",
        &format!("capacity_per_instance = {capacity:.1}"),
    );

    // Reference: the same observations through the in-process fleet logic, catching up as
    // the collector does by default (the windows are of 2023: long stale).
    let policies = PolicySet::from_toml(&policy_text).expect("policy");
    let mut reference = Fleet::new(
        FleetConfig {
            catch_up: true,
            ..FleetConfig::default()
        },
        policies,
    );
    let mut expected: Vec<ScaleEvent> = Vec::new();
    for w in &windows {
        let (_, closed) = reference.ingest(w.clone(), Instant::now());
        expected.extend(
            closed
                .iter()
                .filter_map(|c| c.scale_event("urn:shadowtap:collector")),
        );
    }
    expected.extend(
        reference
            .flush()
            .iter()
            .filter_map(|c| c.scale_event("urn:shadowtap:collector")),
    );
    assert!(
        !expected.is_empty(),
        "the reference made no scaling decision"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start();
    let rt = runtime();
    create_topics(&rt, &broker, 2);
    let policy = write_policy(dir.path(), &policy_text);
    let collector = spawn_collector(&broker, &policy, &dir.path().join("collector.log"), &[]);
    let (_provisioner, events_rx) = spawn_provisioner(&broker, "prov-e2e");

    let sink_stats = rt.block_on(async {
        let sink =
            ObservationSink::start(SinkConfig::new(kafka(&broker), dir.path().join("spool")))
                .expect("sink");
        for w in &windows {
            sink.send(w).expect("spool");
        }
        assert!(
            sink.flush(Duration::from_secs(30)).await,
            "observations not delivered"
        );
        let stats = sink.stats();
        sink.shutdown().await;
        stats
    });
    assert_eq!(sink_stats.delivered, windows.len() as u64);
    assert_eq!(sink_stats.spool.depth_records, 0);
    assert_eq!(sink_stats.spool.dropped_records, 0);

    // The provisioner sees every expected event, first of all the scale-out.
    let mut got: Vec<serde_json::Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while got.len() < expected.len() && Instant::now() < deadline {
        if let Ok(v) = events_rx.recv_timeout(Duration::from_millis(200)) {
            got.push(v);
        }
    }
    let log = std::fs::read_to_string(dir.path().join("collector.log")).unwrap_or_default();
    assert_eq!(
        got.len(),
        expected.len(),
        "provisioner lines {got:#?}\ncollector log:\n{log}"
    );
    let first = &got[0];
    assert_eq!(first["resource"], host.as_str());
    assert_eq!(first["action"], "scale_out");
    assert_eq!(first["id"], expected[0].id.as_str());
    assert_eq!(first["target"], expected[0].data.target_instances);
    assert_eq!(first["dry_run"], true);
    assert_eq!(
        first["command"],
        format!(
            "kubectl scale deployment/'{host}' --replicas='{}'",
            expected[0].data.target_instances
        )
    );
    let got_ids: BTreeSet<String> = got
        .iter()
        .map(|v| v["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let want_ids: BTreeSet<String> = expected.iter().map(|e| e.id.clone()).collect();
    assert_eq!(got_ids, want_ids);
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g["target"], e.data.target_instances);
        // Independent check: the window's demand, rebuilt from the capture, and a target that
        // covers it.
        let k = (e.data.window.start_ms - T0_MS) / STEP_MS;
        assert_eq!(g["requests"], per_window * (k + 1));
        assert!(f64::from(e.data.target_instances) * capacity >= (per_window * (k + 1)) as f64);
    }

    // Every published event matches the JSON Schema in the repo.
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../schema/scale-event.schema.json"))
            .expect("schema json");
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    let records = read_topic(
        &broker,
        "shadowtap.scale-events",
        Duration::from_secs(10),
        Duration::ZERO,
        |r| r.len() >= expected.len(),
    );
    assert!(records.len() >= expected.len());
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(&r.value).expect("event json");
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "schema errors {errors:?} in {v}");
        // Decided while catching up, and said so.
        let window_end_ms = v["data"]["window"]["end_ms"].as_u64().expect("end_ms");
        let behind_ms = v["data"]["explanation"]["behind_ms"]
            .as_u64()
            .expect("behind_ms");
        assert!(
            behind_ms > 0 && behind_ms < shadowtap_core::fleet::unix_now_ms() - window_end_ms,
            "behind_ms {behind_ms} of a window ending {window_end_ms}"
        );
        assert_eq!(r.key, host.as_bytes());
        assert_eq!(
            r.headers.get("content-type").map(Vec::as_slice),
            Some(&b"application/cloudevents+json; charset=utf-8"[..])
        );
    }
    // A broken event fails the schema: the check can fail.
    let mut broken: serde_json::Value = serde_json::from_slice(&records[0].value).expect("json");
    broken["data"]["action"] = "explode".into();
    assert!(!validator.is_valid(&broken));

    // Metrics and health.
    let mut page = String::new();
    assert!(
        wait_for(Duration::from_secs(10), || {
            page = http_get(collector.metrics_port, "/metrics").unwrap_or_default();
            metric(&page, "shadowtap_collector_observations_processed_total").is_some()
        }),
        "metrics page: {page}\ncollector log:\n{log}"
    );
    assert!(
        metric(&page, "shadowtap_collector_observations_processed_total").unwrap_or(0.0)
            >= windows.len() as f64,
        "{page}"
    );
    assert!(http_get(collector.metrics_port, "/healthz").is_some_and(|b| b.contains("200 OK")));
    assert!(started.elapsed() < Duration::from_secs(90));
}
