//! Live tests: shared captures replayed onto a veth with tcpreplay, the real agent in tap
//! mode on the other end, against `shadowtap-agent replay` and `profile --pcap` of the same
//! file. They need root, iproute2, bpftool, tcpreplay and a built `shadowtap-agent`
//! (`SHADOWTAP_AGENT_BIN` or `target/{debug,release}`); when one is missing they fail saying
//! so.
//!
//! Tests that run the agent or put load on the machine take a process-wide lock: the machine
//! has two cores, and exact counts need the ring buffer consumer to keep up.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use shadowtap_tests::agent::{CaptureMode, XdpMode};
use shadowtap_tests::events::EventLog;
use shadowtap_tests::json::{first_difference, timing_free};
use shadowtap_tests::netns::{VethConfig, VethPair};
use shadowtap_tests::pcap::Pcap;
use shadowtap_tests::scenario::{
    api_get, assert_loss_accounted, is_ingress, must, preflight_agent, serial, start_agent,
    stop_agent_cleanly, tcpreplay_counts, work_dir,
};
use shadowtap_tests::support::{require_tool, shared_pcap};

/// The live agent's `GET /v1/profile` (rendered every few seconds) against `profile --pcap`.
fn live_profile_matches_replay(pair: &VethPair, original: &Path) {
    let replayed = shadowtap_agent::profile_cmd::from_pcap(
        original,
        None,
        Some(shadowtap_common::DEFAULT_SNAPLEN),
    )
    .expect("profile --pcap");
    let want = timing_free(serde_json::to_value(&replayed).expect("json"));
    assert!(
        want["resources"].as_array().is_some_and(|r| !r.is_empty()),
        "{}: the capture has HTTP requests, so a profile",
        original.display()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = must(api_get(&pair.server, "127.0.0.1:9464", "/v1/profile"));
        let got = status
            .contains("200")
            .then(|| serde_json::from_str::<Value>(&body).expect("profile json"))
            .map(timing_free);
        if got.as_ref() == Some(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: live profile differs from the replay's: {}",
            original.display(),
            got.map_or(format!("live answered {status}: {body}"), |g| {
                first_difference(&g, &want, "")
            })
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// Replays a shared capture onto the client veth; the agent in tap mode on the server veth
/// must count the same HTTP messages as `shadowtap-agent replay` on the same file.
/// `compare_profiles`: also require the live agent's request profile (`GET /v1/profile`) to
/// equal `profile --pcap` of the capture in everything but timing (see
/// [`live_profile_matches_replay`]).
fn tap_matches_replay(pcap_name: &str, compare_profiles: bool) {
    preflight_agent();
    let tcpreplay = must(require_tool("tcpreplay"));
    let _serial = serial();
    let dir = work_dir("replay");
    let original = must(shared_pcap(pcap_name));
    let capture = must(Pcap::read(&original));
    let frames = capture
        .to_ethernet()
        .unwrap_or_else(|e| panic!("{pcap_name} cannot be replayed on a veth: {e}"));
    let replayable = dir.path().join(pcap_name);
    must(frames.write(&replayable));
    let packets = frames.packets.len() as u64;
    // veth forwards frames up to MTU + Ethernet header (+ one VLAN tag).
    let mtu = u32::try_from(frames.max_captured_len().saturating_sub(14))
        .expect("frame length fits u32")
        .max(1500);

    let expected = must(shadowtap_tests::agent::replay(&original, dir.path(), &[]));
    let expected_requests = expected.tally("http_request", "method");
    let expected_responses = expected.tally("http_response", "status");

    // No addresses and IPv6 off: the kernel itself sends nothing on this link.
    let pair = must(VethPair::create(VethConfig {
        mtu,
        ipv4: false,
        ipv6: false,
    }));
    let agent = start_agent(&pair, CaptureMode::Tap, XdpMode::Driver, dir.path());
    let before = must(pair.client.link_stats(&pair.client_if));
    let output = must(pair.client.run(
        &tcpreplay,
        [
            "--intf1",
            pair.client_if.as_str(),
            "--pps",
            "5000",
            &replayable.to_string_lossy(),
        ],
    ));
    let (sent, failed) = tcpreplay_counts(&String::from_utf8_lossy(&output.stdout));
    let link = must(pair.client.link_stats(&pair.client_if)).since(&before);
    assert_eq!((sent, failed), (packets, 0), "tcpreplay sent/failed");
    assert_eq!(
        link.tx_packets, packets,
        "frames the client veth sent: {link:?}"
    );
    assert_eq!(link.tx_dropped, 0, "frames the veth dropped: {link:?}");

    let caught_up = |log: &EventLog| {
        log.tally("http_request", "method") == expected_requests
            && log.tally("http_response", "status") == expected_responses
    };
    must(agent.wait_for(Duration::from_secs(5), caught_up));
    if compare_profiles {
        live_profile_matches_replay(&pair, &original);
    }
    let exit = stop_agent_cleanly(agent);
    let log = &exit.log;
    assert!(
        assert_loss_accounted(log, None),
        "ring buffer overflowed during the replay"
    );
    let stats = log.last_stats().expect("checked above");
    if let Some(ingress_packets) = stats
        .pointer("/kernel/ingress/packets")
        .and_then(Value::as_u64)
    {
        assert_eq!(ingress_packets, packets, "frames the XDP program saw");
    }
    assert_eq!(
        log.tally("http_request", "method"),
        expected_requests,
        "{pcap_name} requests"
    );
    assert_eq!(
        log.tally("http_response", "status"),
        expected_responses,
        "{pcap_name} responses"
    );
    assert!(
        log.of_kind("http_request")
            .chain(log.of_kind("http_response"))
            .all(is_ingress),
        "tap mode sees everything on ingress"
    );
    // Not vacuous: the captures with HTTP in them (all but VlanPackets) yield messages.
    if pcap_name != "VlanPackets.pcap" {
        assert!(
            log.count("http_request") + log.count("http_response") > 0,
            "{pcap_name} carries HTTP, yet neither path found any"
        );
    }
}

#[test]
fn agent_tap_matches_replay_http_packets() {
    tap_matches_replay("http-packets.pcap", true);
}

#[test]
fn agent_tap_matches_replay_650_http_responses() {
    tap_matches_replay("650HttpResponses.pcap", false);
}

#[test]
fn agent_tap_matches_replay_four_ipv6_http_streams() {
    tap_matches_replay("four_ipv6_http_streams.pcap", true);
}

#[test]
fn agent_tap_matches_replay_vlan_packets() {
    tap_matches_replay("VlanPackets.pcap", false);
}

#[test]
fn agent_tap_matches_replay_many_protocols() {
    tap_matches_replay("many-protocols.pcap", true);
}

#[test]
fn agent_tap_matches_replay_tcp_reassembly() {
    tap_matches_replay("tcp-reassembly.pcap", true);
}

#[test]
fn agent_tap_matches_replay_three_http_streams() {
    tap_matches_replay("three_http_streams.pcap", false);
}
