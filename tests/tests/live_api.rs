//! The live agent's local HTTP endpoint and model state: `/v1/resources` reflects real traffic,
//! `/metrics` exposes the kernel counters, the model is snapshotted into `--state-dir` and
//! restored on restart, and a corrupt snapshot is set aside instead of stopping the agent.
#![allow(clippy::too_many_lines)] // one scenario per test, read top to bottom

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use shadowtap_tests::scenario::stop_agent_cleanly;
use shadowtap_tests::{
    agent::{AgentConfig, CaptureMode, RunningAgent, XdpMode},
    netns::{Netns, VethConfig, VethPair},
    scenario::{
        AGENT_ATTACH_TIMEOUT, AGENT_STOP_TIMEOUT, HOSTS, PORT, api_get, must, preflight_agent,
        run_client, serial, start_server, stop_server, traffic_plan, work_dir,
    },
};

const API: &str = "127.0.0.1:9464";

fn peer() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_shadowtap-httppeer"))
}

/// GET `path` from the agent's API inside `ns`. Returns (status line, body).
fn get_in_ns(ns: &Netns, path: &str) -> (String, String) {
    must(api_get(ns, API, path))
}

fn start(pair: &VethPair, dir: &Path, state: &Path) -> RunningAgent {
    let config = AgentConfig {
        iface: pair.server_if.clone(),
        mode: CaptureMode::Host,
        xdp_mode: XdpMode::Driver,
        stats_interval_secs: 1,
        extra_args: vec![
            "--state-dir".into(),
            state.display().to_string(),
            "--metrics-listen".into(),
            API.into(),
        ],
    };
    let mut agent = must(RunningAgent::start(&pair.server, &config, dir));
    must(agent.wait_attached(&pair.server, AGENT_ATTACH_TIMEOUT));
    agent
}

fn resource_ids(pair: &VethPair) -> Vec<String> {
    let (status, body) = get_in_ns(&pair.server, "/v1/resources");
    assert!(status.contains("200"), "{status}: {body}");
    let list: Value = serde_json::from_str(&body).expect("JSON list");
    list.as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect()
}

#[test]
fn api_serves_models_and_state_survives_restart_and_corruption() {
    preflight_agent();
    let _serial = serial();
    let dir = work_dir("api");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(state.join("model.json"), b"{\"not\": a snapshot").expect("corrupt snapshot");

    let pair = must(VethPair::create(VethConfig::default()));
    let server = start_server(peer(), &pair, dir.path());
    let agent = start(&pair, dir.path(), &state);
    // The corrupt snapshot was set aside, not fatal.
    let aside: Vec<_> = std::fs::read_dir(&state)
        .expect("read state dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("model.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "corrupt snapshot set aside: {aside:?}");

    for plan in traffic_plan() {
        run_client(peer(), &pair, &plan, dir.path());
    }
    let _ = stop_server(server);

    // Every Host the clients used becomes a resource within a couple of API refreshes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ids = loop {
        let ids = resource_ids(&pair);
        let all = HOSTS
            .iter()
            .all(|h| ids.iter().any(|id| id.starts_with(&format!("{h}@"))));
        if all || Instant::now() > deadline {
            break ids;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    for host in HOSTS {
        assert!(
            ids.iter()
                .any(|id| id.starts_with(&format!("{host}@")) && id.ends_with(&format!(":{PORT}"))),
            "resource for {host} in {ids:?}"
        );
    }
    let encoded = ids[0]
        .replace('@', "%40")
        .replace(':', "%3A")
        .replace('[', "%5B")
        .replace(']', "%5D");
    // Hour-of-week profiles count closed one-second windows: poll until they have closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let detail = loop {
        let (status, body) = get_in_ns(&pair.server, &format!("/v1/resources/{encoded}"));
        assert!(status.contains("200"), "{status}: {body}");
        let detail: Value = serde_json::from_str(&body).expect("detail JSON");
        let profiled = detail["peak_hours_of_week"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        if profiled || Instant::now() > deadline {
            break detail;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(detail["id"], ids[0].as_str());
    assert!(
        detail["peak_hours_of_week"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{detail}"
    );
    let (status, _) = get_in_ns(&pair.server, "/v1/resources/nope.example%4010.0.0.1%3A1");
    assert!(status.contains("404"), "{status}");
    let (status, metrics) = get_in_ns(&pair.server, "/metrics");
    assert!(status.contains("200"));
    let packets_line = metrics
        .lines()
        .find(|l| l.starts_with("shadowtap_kernel_packets_total{direction=\"ingress\"}"))
        .expect("kernel packet counter exported");
    let packets: f64 = packets_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(packets > 0.0, "{packets_line}");

    let _exit = stop_agent_cleanly(agent);
    let snapshot =
        std::fs::read_to_string(state.join("model.json")).expect("snapshot written on shutdown");
    for host in HOSTS {
        assert!(snapshot.contains(host), "snapshot holds {host}");
    }
    // The in-process collector's state (decisions, timers, demand history) is saved too.
    let fleet: Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("collector.json")).expect("collector state written"),
    )
    .expect("collector state JSON");
    let decided: Vec<&str> = fleet
        .as_array()
        .expect("array of resources")
        .iter()
        .filter(|r| !r["last_decision"].is_null())
        .filter_map(|r| r["resource"].as_str())
        .collect();
    assert!(
        HOSTS
            .iter()
            .all(|h| decided.iter().any(|r| r.starts_with(&format!("{h}@")))),
        "a decision per Host in the collector state: {decided:?}"
    );

    // Restart on the same state: the resources are there before any new traffic.
    let dir2 = work_dir("api-restart");
    let agent = start(&pair, dir2.path(), &state);
    let deadline = Instant::now() + Duration::from_secs(5);
    let restored = loop {
        let ids2 = resource_ids(&pair);
        if ids2.len() >= HOSTS.len() || Instant::now() > deadline {
            break ids2;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    for id in &ids {
        assert!(
            restored.contains(id),
            "{id} restored from the snapshot: {restored:?}"
        );
    }
    // The last decision came back with the collector state: the forecast view answers at once,
    // before any new traffic (a reset would say "cold start").
    let id = decided[0];
    let encoded = id
        .replace('@', "%40")
        .replace(':', "%3A")
        .replace('[', "%5B")
        .replace(']', "%5D");
    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, body) = loop {
        let got = get_in_ns(&pair.server, &format!("/v1/resources/{encoded}/forecast"));
        if got.0.contains("200") || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(status.contains("200"), "{status}: {body}");
    let decision: Value = serde_json::from_str(&body).expect("decision JSON");
    assert_eq!(decision["resource"], id);
    let exit = must(agent.stop(libc::SIGTERM, AGENT_STOP_TIMEOUT));
    assert!(
        exit.status.success(),
        "agent exited with {}; {}",
        exit.status,
        exit.stderr
    );
}
