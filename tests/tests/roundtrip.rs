//! The shadow-traffic round trip: a request profile learned from a real capture drives
//! `shadowtap-loadgen` against real nginx in a network namespace while the live agent taps
//! the server's veth; the profile the agent learns from that traffic must match the profile
//! it was generated from, by the fidelity measures (template mix JSD ≤ 0.05, request-size
//! KS ≤ 0.1, requests per connection KS ≤ 0.1 and mean within 10%), and the agent must have
//! seen exactly the requests loadgen sent. And loadgen's `--rate forecast` follows a live
//! agent's forecast.
#![allow(clippy::too_many_lines)] // one scenario per test, read top to bottom

use std::time::{Duration, Instant};

use serde_json::Value;
use shadowtap_agent::profile_cmd::from_pcap;
use shadowtap_core::profile::{Fidelity, ProfileDocument};
use shadowtap_tests::scenario::stop_agent_cleanly;
use shadowtap_tests::{
    agent::{CaptureMode, XdpMode, loadgen_binary},
    nginx::{Nginx, PORT},
    scenario::{api_get, must, preflight_agent, serial, start_agent, work_dir},
    support::shared_data_dir,
};

#[test]
fn loadgen_through_the_live_tap_reproduces_its_profile() {
    preflight_agent();
    let _serial = serial();
    let dir = work_dir("roundtrip");
    // The profile as a live agent with the default snaplen learns it.
    let pcap = must(shared_data_dir()).join("pcap/http-packets.pcap");
    let learned = from_pcap(&pcap, None, Some(shadowtap_common::DEFAULT_SNAPLEN)).expect("profile");
    let source = learned.resources[0].clone();
    let profile_path = dir.path().join("source.json");
    std::fs::write(
        &profile_path,
        serde_json::to_string(&learned).expect("json"),
    )
    .expect("write");

    let bed = Nginx::start();
    let agent = start_agent(&bed.pair, CaptureMode::Host, XdpMode::Driver, dir.path());
    let report_path = dir.path().join("report.json");
    let target = format!("http://{}:{PORT}", bed.server_v4);
    let output = must(bed.pair.client.run(
        must(loadgen_binary()),
        [
            "--target",
            target.as_str(),
            "--duration",
            "10s",
            "--max-requests",
            "3000",
            "--rate",
            "300",
            "--connections",
            "8",
            "--seed",
            "3",
            "--quiet",
            "--profile",
            &profile_path.to_string_lossy(),
            "--json",
            &report_path.to_string_lossy(),
        ],
    ));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("report"))
            .expect("json");
    let sent = report["report"]["throughput"]["sent"]
        .as_u64()
        .expect("sent");
    assert!(sent >= 2900, "loadgen sent {sent} of 3000: {stdout}");
    assert_eq!(report["report"]["errors"]["total"], 0, "{stdout}");
    let generated: Fidelity =
        serde_json::from_value(report["fidelity"].clone()).expect("fidelity in the report");
    assert!(
        generated.meets_goals(),
        "what loadgen sent vs the source: {generated:?}"
    );

    // The agent's profile of the same resource (the Host loadgen sent, nginx's address).
    let want_id = format!(
        "{}@{}:{PORT}",
        source
            .host
            .as_deref()
            .expect("the capture's requests carry a Host"),
        bed.server_v4
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let live = loop {
        let (status, body) = must(api_get(&bed.pair.server, "127.0.0.1:9464", "/v1/profile"));
        let found = status
            .contains("200")
            .then(|| ProfileDocument::from_json(&body).expect("a valid profile document"))
            .and_then(|doc| doc.resources.into_iter().find(|r| r.resource == want_id));
        match found {
            Some(r) if r.requests == sent => break r,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the agent's profile of {want_id} never reached {sent} requests: {:?}",
                    other.map(|r| r.requests)
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };
    let _exit = stop_agent_cleanly(agent);
    let round_trip = Fidelity::of(&source, &live);
    println!("round trip {want_id}: {round_trip:?} (loadgen's own: {generated:?})");
    assert!(
        round_trip.meets_goals(),
        "learned at the tap vs the source: {round_trip:?}"
    );
}

/// `--rate forecast`: loadgen follows a running agent's forecast. The agent (1 s observation
/// windows) first sees real traffic long enough to forecast; once traffic stops its last
/// forecast stays put, and loadgen, run inside the agent's namespace, must schedule exactly
/// the forecast's upper bound over its first steps.
#[test]
fn loadgen_follows_a_live_agents_forecast() {
    preflight_agent();
    let _serial = serial();
    let dir = work_dir("forecast-rate");
    let bed = Nginx::start();
    let config = shadowtap_tests::agent::AgentConfig {
        iface: bed.pair.server_if.clone(),
        mode: CaptureMode::Host,
        xdp_mode: XdpMode::Driver,
        stats_interval_secs: 1,
        extra_args: vec!["--observation-window".into(), "1s".into()],
    };
    let mut agent = must(shadowtap_tests::agent::RunningAgent::start(
        &bed.pair.server,
        &config,
        dir.path(),
    ));
    must(agent.wait_attached(
        &bed.pair.server,
        shadowtap_tests::scenario::AGENT_ATTACH_TIMEOUT,
    ));
    let target = format!("http://{}:{PORT}", bed.server_v4);
    let loadgen = must(loadgen_binary());
    // 15 s of demand, 100/s: the in-process collector forecasts after 8 windows.
    let warm = must(bed.pair.client.run(
        &loadgen,
        [
            "--target",
            target.as_str(),
            "--duration",
            "15s",
            "--max-requests",
            "1500",
            "--rate",
            "100",
            "--quiet",
            "--host",
            "forecast.test",
        ],
    ));
    assert!(warm.status.success());
    let id = format!("forecast.test@{}:{PORT}", bed.server_v4);
    let path = format!(
        "/v1/resources/{}/forecast",
        shadowtap_core::http_client::percent_encode(&id)
    );
    // Wait until the forecast has points and stops changing (no traffic, no new decision).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    let forecast: Value = loop {
        std::thread::sleep(Duration::from_millis(1500));
        let (status, body) = must(api_get(&bed.pair.server, "127.0.0.1:9464", &path));
        let v: Option<Value> = status
            .contains("200")
            .then(|| serde_json::from_str(&body).expect("json"));
        let has_points = v.as_ref().is_some_and(|v| {
            v["explanation"]["forecast"]
                .as_array()
                .is_some_and(|a| a.len() >= 3)
        });
        if has_points && body == last {
            break v.expect("checked");
        }
        assert!(
            Instant::now() < deadline,
            "no stable forecast with points: {status} {body}"
        );
        last = body;
    };
    let points = forecast["explanation"]["forecast"]
        .as_array()
        .expect("points");
    let step_ms =
        points[1]["start_ms"].as_u64().expect("ms") - points[0]["start_ms"].as_u64().expect("ms");
    assert_eq!(step_ms, 1000, "1 s windows");
    // Three 1 s steps at speed 1: the upper bound's demand of the first three points.
    let expected: f64 = points[..3]
        .iter()
        .map(|p| p["upper"].as_f64().expect("upper"))
        .sum();
    assert!(expected > 10.0, "a forecast of real demand: {expected}");
    let report_path = dir.path().join("forecast-run.json");
    let local = format!("http://127.0.0.1:{PORT}");
    let out = must(bed.pair.server.run(
        &loadgen,
        [
            "--target",
            local.as_str(),
            "--duration",
            "3s",
            "--max-requests",
            "100000",
            "--rate",
            "forecast",
            "--from-forecast",
            "http://127.0.0.1:9464",
            "--resource",
            id.as_str(),
            "--forecast-bound",
            "upper",
            "--quiet",
            "--json",
            &report_path.to_string_lossy(),
        ],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("report"))
            .expect("json");
    let scheduled = report["throughput"]["scheduled"]
        .as_u64()
        .expect("scheduled") as f64;
    assert!(
        (scheduled - expected).abs() <= 1.0 + 0.01 * expected,
        "scheduled {scheduled} for a forecast of {expected} requests over 3 s"
    );
    stop_agent_cleanly(agent);
}
