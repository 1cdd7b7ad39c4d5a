//! 100,000 clients through the tap, live (issue 17, configuration): generated captures with
//! one client address per connection are replayed with tcpreplay onto a veth, the real agent
//! in tap mode on the other end, twice in the same run:
//!
//! - with `--max-clients 100000`: every client is modelled (none evicted) and the agent's
//!   peak RSS stays within 256 MiB;
//! - with the default limit (16,384), the baseline: the rest are evicted, and counted exactly.
//!
//! Both peak RSS figures are printed with their ratio, so the cost of the bigger table is
//! visible next to a baseline from the same run. `agent/tests/client_memory.rs` measures the
//! same thing on the replay path, without the kernel, with the decoder's share separated.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shadowtap_agent::decode::pcap_writer::PcapWriter;
use shadowtap_tests::agent::{AgentConfig, CaptureMode, RunningAgent, XdpMode};
use shadowtap_tests::netns::{VethConfig, VethPair};
use shadowtap_tests::scenario::{
    AGENT_ATTACH_TIMEOUT, assert_loss_accounted, must, preflight_agent, serial, stop_agent_cleanly,
    tcpreplay_counts, work_dir,
};
use shadowtap_tests::support::require_tool;

const CLIENTS: u32 = 100_000;
const DEFAULT_MAX_CLIENTS: u64 = 16_384;
const BUDGET_KIB: u64 = 256 * 1024;
/// Frames per second tcpreplay sends (4 frames per client: 80 s per run). The agent runs
/// without the per-request event stream, as the daemon does by default; with it (95 MB of
/// JSON lines) a CPU hog made the ring overflow, and at 10,000/s so did a CPU hog plus a
/// workspace build (counted: `ringbuf_reserve_failed`).
const PPS: &str = "5000";

/// Clients per capture file (tcpreplay plays the files in order).
const CHUNK_CLIENTS: u32 = 5_000;

/// One connection per client (10.0.0.1, 10.0.0.2, …): SYN, request, response, FIN (the shape
/// docs/configuration.md sizes the limits with), written as one capture per
/// [`CHUNK_CLIENTS`] clients. Returns the captures' paths and frames.
fn write_pcaps(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let server = Ipv4Addr::new(192, 0, 2, 80);
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let t0_us = 1_767_571_200_000_000u64;
    let mut chunks = Vec::new();
    for chunk in 0..CLIENTS / CHUNK_CLIENTS {
        let path = dir.join(format!("clients-{chunk:02}.pcap"));
        let file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create pcap"));
        let mut pcap = PcapWriter::new(file).expect("pcap header");
        for i in chunk * CHUNK_CLIENTS..(chunk + 1) * CHUNK_CLIENTS {
            let client = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i + 1);
            let sport = 40_000 + u16::try_from(i % 20_000).expect("port");
            let ts = t0_us + u64::from(i) * 250;
            let request = format!("GET /api/items/{i} HTTP/1.1\r\nHost: shop.example\r\n\r\n");
            pcap.write_http_exchange(
                ts,
                50,
                (client, sport),
                (server, 80),
                request.as_bytes(),
                response,
            )
            .expect("write");
        }

        let frames = pcap.packets();
        pcap.finish().expect("flush");
        chunks.push((path, frames));
    }
    chunks
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

fn model_stat(stats: &Value, key: &str) -> u64 {
    stats
        .pointer(&format!("/model/{key}"))
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("stats line lacks model.{key}: {stats}"))
}

struct Run {
    peak_rss_kib: u64,
    created: u64,
    evicted: u64,
    active: u64,
}

/// Replays the capture through a fresh agent with `extra_args`; returns its model's client
/// counts and peak RSS, after checking that nothing was lost on the way.
fn replay_through_agent(
    chunks: &[(std::path::PathBuf, u64)],
    extra_args: &[&str],
    label: &str,
) -> Run {
    let tcpreplay = must(require_tool("tcpreplay"));
    let dir = work_dir(label);
    let pair = must(VethPair::create(VethConfig {
        mtu: 1500,
        ipv4: false,
        ipv6: false,
    }));
    let config = AgentConfig {
        iface: pair.server_if.clone(),
        mode: CaptureMode::Tap,
        xdp_mode: XdpMode::Driver,
        stats_interval_secs: 1,
        extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut agent = must(RunningAgent::start_stats_only(
        &pair.server,
        &config,
        dir.path(),
    ));
    must(agent.wait_attached(&pair.server, AGENT_ATTACH_TIMEOUT));
    let requests_seen = |log: &shadowtap_tests::events::EventLog| {
        log.last_stats()
            .and_then(|s| s.pointer("/tracker/requests").and_then(Value::as_u64))
            .unwrap_or(0)
    };
    let mut args = vec![
        "--intf1".to_owned(),
        pair.client_if.clone(),
        "--pps".to_owned(),
        PPS.to_owned(),
    ];
    args.extend(chunks.iter().map(|(p, _)| p.to_string_lossy().into_owned()));
    let output = must(pair.client.run(&tcpreplay, &args));
    let frames: u64 = chunks.iter().map(|(_, f)| f).sum();
    let (sent, failed) = tcpreplay_counts(&String::from_utf8_lossy(&output.stdout));
    assert_eq!((sent, failed), (frames, 0), "tcpreplay sent/failed");
    let caught_up = must(agent.wait_for(Duration::from_secs(60), |log| {
        requests_seen(log) >= u64::from(CLIENTS)
    }));
    let peak_rss_kib = peak_rss_kib(agent.pid());
    let exit = stop_agent_cleanly(agent);
    assert!(
        assert_loss_accounted(&exit.log, None),
        "the ring buffer overflowed during the replay"
    );
    let stats = exit.log.last_stats().expect("final stats");
    assert!(caught_up, "the agent fell behind the replay: {stats}");
    // Windows close on the wall clock only after the ring is drained: a busy host's backlog
    // is modelled, not dropped as late.
    assert_eq!(model_stat(stats, "late_dropped"), 0, "{stats}");
    Run {
        peak_rss_kib,
        created: model_stat(stats, "clients_created"),
        evicted: model_stat(stats, "clients_evicted"),
        active: model_stat(stats, "clients_active"),
    }
}

/// Runs one replay up to three times. On a starved machine (a CPU hog plus a workspace build)
/// the debug agent can fall far enough behind that the ring overflows, which it counts
/// (`ringbuf_reserve_failed`) and this test then rejects, since it needs every client; one
/// run in several did so in a loop under load. Memory is what this test measures, so such a
/// run is repeated, saying why; a run that completes is held to every assertion.
fn attempts(mut run: impl FnMut() -> Run) -> Run {
    for attempt in 1..3 {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut run)) {
            Ok(r) => return r,
            Err(_) => eprintln!("attempt {attempt} failed (see above); running it again"),
        }
    }
    run()
}

#[test]
fn tap_models_100k_clients_within_256_mib() {
    preflight_agent();
    let _serial = serial();
    let dir = work_dir("clients-pcap");
    let chunks = write_pcaps(dir.path());

    let baseline = attempts(|| replay_through_agent(&chunks, &[], "clients-default"));
    let sized =
        attempts(|| replay_through_agent(&chunks, &["--max-clients", "100000"], "clients-100k"));
    #[allow(clippy::cast_precision_loss)] // KiB figures are far below 2^53
    let ratio = sized.peak_rss_kib as f64 / baseline.peak_rss_kib as f64;
    eprintln!(
        "{CLIENTS} clients live in tap mode: --max-clients 100000: peak RSS {} KiB ({} evicted); \
         default limit {DEFAULT_MAX_CLIENTS}: peak RSS {} KiB ({} evicted); ratio {ratio:.2}; \
         budget {BUDGET_KIB} KiB",
        sized.peak_rss_kib, sized.evicted, baseline.peak_rss_kib, baseline.evicted
    );

    // The baseline: the default table keeps 16,384 clients; every other one is evicted and
    // counted, none silently dropped.
    assert_eq!(baseline.created, u64::from(CLIENTS));
    assert_eq!(baseline.evicted, u64::from(CLIENTS) - DEFAULT_MAX_CLIENTS);
    assert_eq!(baseline.active, DEFAULT_MAX_CLIENTS);
    // Sized for them, the table keeps all 100,000, within the budget.
    assert_eq!(sized.created, u64::from(CLIENTS));
    assert_eq!(
        sized.evicted, 0,
        "no client evicted with --max-clients 100000"
    );
    assert_eq!(sized.active, u64::from(CLIENTS));
    assert!(
        sized.peak_rss_kib <= BUDGET_KIB,
        "peak RSS {} KiB over the {BUDGET_KIB} KiB budget",
        sized.peak_rss_kib
    );
    // Not vacuous: the bigger table costs memory the baseline does not pay.
    assert!(sized.peak_rss_kib > baseline.peak_rss_kib);
}
