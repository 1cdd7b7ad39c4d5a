//! Issue 4, end to end with the live agent: real HTTP traffic at a rising rate between two
//! namespaces → XDP/tc → agent models → observations through the spool to a real Kafka-protocol
//! broker (nisshi) → `shadowtap-collector` → scale-out event → `shadowtap-provisioner --dry-run`.
//!
//! Broker, collector and provisioner run inside the server namespace, on its own loopback, so
//! nothing listens outside namespaces this test creates.
#![allow(clippy::too_many_lines)] // one scenario per test, read top to bottom

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use shadowtap_tests::scenario::stop_agent_cleanly;
use shadowtap_tests::{
    agent::{AgentConfig, RunningAgent},
    events::{field_str, field_u64},
    netns::{Netns, VethConfig, VethPair},
    process::BackgroundProcess,
    scenario::{
        AGENT_ATTACH_TIMEOUT, must, preflight_agent, serial, start_server, stop_server, work_dir,
    },
    support::{require_tool, target_dir, workspace_root},
};

const BROKER: &str = "127.0.0.1:19092";
const COLLECTOR_HTTP: &str = "127.0.0.1:9465";

fn peer() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_shadowtap-httppeer"))
}

/// A workspace binary built by `cargo xtask test` (`cargo build --workspace --bins`).
fn workspace_bin(name: &str) -> PathBuf {
    let agent = shadowtap_tests::agent::agent_binary().expect("agent binary");
    let dir = agent
        .parent()
        .map_or_else(|| target_dir().join("debug"), Path::to_path_buf);
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} missing: build the workspace binaries first (`cargo xtask test` does)",
        bin.display()
    );
    bin
}

fn wait_listening(ns: &Netns, addr: &str, what: &str, log: &BackgroundProcess) {
    let addr: SocketAddr = addr.parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ns.tcp_connect(addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {addr}: {}",
            log.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn http_get(ns: &Netns, addr: &str, path: &str) -> Option<String> {
    let mut s = ns
        .tcp_connect(addr.parse().ok()?, Duration::from_secs(1))
        .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Client phases of rising rate: (connections, requests per connection).
const PHASES: &[(u32, u32)] = &[(1, 2), (2, 4), (4, 6), (6, 8), (8, 10)];

#[test]
fn live_agent_to_kafka_collector_and_provisioner() {
    preflight_agent();
    let nisshi = must(require_tool("nisshi"));
    let collector_bin = workspace_bin("shadowtap-collector");
    let provisioner_bin = workspace_bin("shadowtap-provisioner");
    let _serial = serial();
    let dir = work_dir("kafka");
    let pair = must(VethPair::create(VethConfig::default()));
    let server_v4 = pair.server_v4.expect("ipv4");
    let ns = &pair.server;

    let url = format!("tcp://{BROKER}");
    let mut broker_cmd = ns.command(&nisshi);
    broker_cmd.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ]);
    broker_cmd.args([
        "--storage-engine",
        "memory://nisshi/",
        "--group-initial-rebalance-delay",
        "0s",
    ]);
    let broker = must(BackgroundProcess::spawn(broker_cmd, "nisshi", dir.path()));
    wait_listening(ns, BROKER, "nisshi", &broker);

    let policy = workspace_root().join("deploy/demo-policy.toml");
    let mut collector_cmd = ns.command(&collector_bin);
    collector_cmd
        .args(["--kafka-brokers", BROKER, "--policy"])
        .arg(&policy)
        .args([
            "--metrics-addr",
            COLLECTOR_HTTP,
            "--merge-wait",
            "200ms",
            "--idle-close",
            "2s",
        ])
        .env("RUST_LOG", "info,rdkafka=warn");
    let collector = must(BackgroundProcess::spawn(
        collector_cmd,
        "collector",
        dir.path(),
    ));
    wait_listening(ns, COLLECTOR_HTTP, "collector", &collector);

    let mut prov_cmd = ns.command(&provisioner_bin);
    prov_cmd
        .args([
            "--kafka-brokers",
            BROKER,
            "--group-id",
            "live-e2e",
            "--dry-run",
        ])
        .args([
            "--exec",
            "kubectl scale deployment/{resource} --replicas={target}",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    let provisioner = must(BackgroundProcess::spawn(
        prov_cmd,
        "provisioner",
        dir.path(),
    ));

    let server = start_server(peer(), &pair, dir.path());
    let spool = dir.path().join("spool").display().to_string();
    let config = AgentConfig::host_driver(
        &pair.server_if.clone(),
        &[
            "--kafka-brokers",
            BROKER,
            "--observation-window",
            "1s",
            "--spool-dir",
            &spool,
            "--metrics-listen",
            "off",
        ],
    );
    let mut agent = must(RunningAgent::start(ns, &config, dir.path()));
    must(agent.wait_attached(ns, AGENT_ATTACH_TIMEOUT));

    // Rising rate on one Host: each phase about a second.
    let target = format!("{server_v4}:8080");
    for (connections, requests) in PHASES {
        let started = Instant::now();
        let status = pair
            .client
            .command(peer())
            .args(["client", "--connect", &target, "--hosts", "rise.example"])
            .args([
                "--connections",
                &connections.to_string(),
                "--requests-per-conn",
                &requests.to_string(),
            ])
            .args(["--parallel", &connections.to_string()])
            .stdout(Stdio::null())
            .status()
            .expect("client");
        assert!(status.success());
        if let Some(rest) = Duration::from_millis(1100).checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let _ = stop_server(server);
    let exit = stop_agent_cleanly(agent);
    let resource = format!("rise.example@{target}");

    // What the agent itself saw: requests of the resource per one-second window.
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    for e in exit.log.of_kind("http_request") {
        if field_str(e, "host") == Some("rise.example") {
            let ts = field_u64(e, "ts_ns").expect("ts_ns");
            *seen.entry(ts / 1_000_000_000 * 1000).or_default() += 1;
        }
    }
    let total: u64 = seen.values().sum();
    let planned: u64 = PHASES.iter().map(|(c, r)| u64::from(c * r)).sum();
    assert_eq!(total, planned, "agent saw every request");

    // The provisioner receives scale-outs for the resource, each one's window demand equal
    // to what the agent saw in that second.
    let read = || -> Vec<Value> {
        let out = provisioner.stdout().unwrap_or_default();
        out.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let is_out = |v: &Value| v["resource"] == resource.as_str() && v["action"] == "scale_out";
    let deadline = Instant::now() + Duration::from_secs(40);
    while !read().iter().any(is_out) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    // Later windows close within the collector's idle-close (2 s); let them arrive.
    std::thread::sleep(Duration::from_secs(4));
    let lines = read();
    let outs: Vec<&Value> = lines.iter().filter(|v| is_out(v)).collect();
    assert!(
        !outs.is_empty(),
        "no scale-out for {resource}; provisioner lines {lines:#?}\ncollector: {}\nmetrics: {:?}",
        collector.stderr_tail(),
        http_get(ns, COLLECTOR_HTTP, "/metrics")
    );
    for v in &outs {
        let window = v["window_start_ms"].as_u64().expect("window_start_ms");
        assert_eq!(
            v["requests"].as_u64(),
            Some(seen.get(&window).copied().unwrap_or(0)),
            "merged demand of window {window} equals the requests the agent saw: {v}"
        );
        let target = v["target"].as_u64().expect("target");
        assert!(target >= 2, "{v}");
        assert_eq!(v["dry_run"], true);
        assert_eq!(
            v["command"],
            format!("kubectl scale deployment/'{resource}' --replicas='{target}'")
        );
    }
    // Duplicates are dropped by id, so ids are unique.
    let mut ids: Vec<&str> = lines.iter().filter_map(|v| v["id"].as_str()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "provisioner acted on a duplicate id");
    drop(provisioner);
    drop(collector);
    drop(broker);
}
