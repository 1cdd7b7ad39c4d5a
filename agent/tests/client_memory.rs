//! Memory per modelled client (issue 17, configuration): a generated capture with 100,000
//! distinct client addresses is replayed through the live path's decoder, tracker and model,
//! and the process's peak RSS and the model's evictions are reported.
//!
//! Each measurement runs in a child process (this test binary re-executed with
//! `CLIENT_MEMORY_MAX_CLIENTS` set), so its peak RSS is its own. The child uses the
//! agent binary's allocator (mimalloc).
//!
//! Proves: with the default limit (16,384) the extra clients are evicted and counted; with
//! `max_clients` = 100,000 none is, and the whole process stays within 256 MiB.

use std::{net::Ipv4Addr, path::Path, process::Command};

use shadowtap_agent::{
    decode::pcap_writer::PcapWriter,
    model::{ModelConfig, ModelStore},
    replay::{ReplayOptions, replay_pcap_events},
};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENTS: u32 = 100_000;
/// New clients per second of capture time (the capture spans 100 s).
const CLIENTS_PER_SECOND: u64 = 1000;
const BUDGET_BYTES: u64 = 256 << 20;
const PHASE_VAR: &str = "CLIENT_MEMORY_MAX_CLIENTS";
const PCAP_VAR: &str = "CLIENT_MEMORY_PCAP";

/// What varies between the generated requests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vary {
    /// One client address per request (`Host` and endpoint fixed).
    Client,
    /// One `Host` (a resource) per request, from 1,000 client addresses.
    Resource,
    /// One endpoint template per request (`/api/p{i}/items`), from 1,000 client addresses.
    Template,
}

/// `count` requests, each on its own connection: open, request, answer, close.
fn write_pcap(path: &Path, vary: Vary, count: u32) {
    let server = Ipv4Addr::new(192, 0, 2, 80);
    let file = std::io::BufWriter::new(std::fs::File::create(path).expect("create pcap"));
    let mut pcap = PcapWriter::new(file).expect("pcap header");
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let t0_us = 1_767_571_200_000_000u64;
    for i in 0..count {
        // 10.0.0.1, 10.0.0.2, …: one distinct address per client.
        let n = if vary == Vary::Client { i } else { i % 1000 };
        let client = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + n + 1);
        let sport = 40_000 + (i % 20_000) as u16;
        let ts = t0_us + u64::from(i) * 1_000_000 / CLIENTS_PER_SECOND;
        let request = match vary {
            Vary::Client => format!("GET /api/items/{i} HTTP/1.1\r\nHost: shop.example\r\n\r\n"),
            Vary::Resource => format!("GET /api/items/{i} HTTP/1.1\r\nHost: s{i}.example\r\n\r\n"),
            Vary::Template => format!("GET /api/p{i}/items HTTP/1.1\r\nHost: shop.example\r\n\r\n"),
        };
        pcap.write_http_exchange(
            ts,
            100,
            (client, sport),
            (server, 80),
            request.as_bytes(),
            response,
        )
        .expect("write");
    }

    pcap.finish().expect("flush");
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field in /proc/self/status")
}

/// The child: replays the capture into a model with these limits, prints one JSON line.
/// `max_clients` 0: the decoder and tracker alone, to tell the model's share from theirs.
fn measure(pcap: &Path, max_clients: usize, max_resources_and_templates: usize) {
    let start_rss_kib = status_kib("VmRSS:");
    let mut model = ModelStore::new(ModelConfig {
        max_clients: max_clients.max(1),
        max_resources: max_resources_and_templates,
        max_templates: max_resources_and_templates,
        ..ModelConfig::default()
    })
    .expect("model");
    let mut summaries = 0u64;
    let with_model = max_clients > 0;
    replay_pcap_events(pcap, &ReplayOptions::default(), &mut |event| {
        if with_model {
            model.observe(event);
        }
        // The live loop hands closed windows on every second; do the same.
        summaries += model.drain_summaries().count() as u64;
        Ok(())
    })
    .expect("replay");
    let stats = model.stats();
    let line = serde_json::json!({
        "max_clients": max_clients,
        "clients_created": stats.clients_created,
        "clients_evicted": stats.clients_evicted,
        "clients_active": stats.clients_active,
        "resources_active": stats.resources_active,
        "resources_evicted": stats.resources_evicted,
        "templates": stats.templates,
        "templates_other": stats.templates_other,
        "summaries": summaries,
        "model_approx_bytes": model.approx_memory_bytes(),
        "start_rss_kib": start_rss_kib,
        "rss_kib": status_kib("VmRSS:"),
        "peak_rss_kib": status_kib("VmHWM:"),
    });
    println!("CLIENT_MEMORY {line}");
}

fn run_child(test: &str, pcap: &Path, max_clients: usize) -> serde_json::Value {
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(PHASE_VAR, max_clients.to_string())
        .env(PCAP_VAR, pcap)
        .output()
        .expect("run the measuring child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CLIENT_MEMORY ").map(|(_, m)| m))
        .unwrap_or_else(|| panic!("no measurement in the child's output:\n{stdout}"));
    serde_json::from_str(line).expect("measurement json")
}

#[test]
fn clients_fit_their_memory_budget() {
    const TEST: &str = "clients_fit_their_memory_budget";
    if let (Ok(limit), Some(pcap)) = (std::env::var(PHASE_VAR), std::env::var_os(PCAP_VAR)) {
        let defaults = ModelConfig::default();
        measure(
            Path::new(&pcap),
            limit.parse().expect("limit"),
            defaults.max_resources,
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("clients.pcap");
    write_pcap(&pcap, Vary::Client, CLIENTS);

    let without_model = run_child(TEST, &pcap, 0);
    eprintln!("decoder and tracker alone: {without_model}");
    let default_limit = ModelConfig::default().max_clients;
    let fixed = run_child(TEST, &pcap, default_limit);
    eprintln!("default limit: {fixed}");
    assert_eq!(fixed["clients_created"], u64::from(CLIENTS), "{fixed}");
    assert_eq!(
        fixed["clients_evicted"],
        u64::from(CLIENTS) - default_limit as u64,
        "{fixed}"
    );

    let sized = run_child(TEST, &pcap, CLIENTS as usize);
    eprintln!("max_clients {CLIENTS}: {sized}");
    assert_eq!(sized["clients_evicted"], 0, "{sized}");
    assert_eq!(sized["clients_active"], u64::from(CLIENTS), "{sized}");
    let peak = sized["peak_rss_kib"].as_u64().expect("peak") * 1024;
    assert!(
        peak <= BUDGET_BYTES,
        "peak RSS {} MiB over the {} MiB budget: {sized}",
        peak >> 20,
        BUDGET_BYTES >> 20
    );
    let per_client =
        (sized["rss_kib"].as_u64().expect("rss") - fixed["rss_kib"].as_u64().expect("rss")) * 1024
            / (u64::from(CLIENTS) - default_limit as u64);
    eprintln!("≈ {per_client} bytes of RSS per additional client");
}

/// Resources (one per `Host`, with their demand series and request profile) and endpoint
/// templates: 10,000 of each, against the same capture with the model off. Reports the RSS
/// per entity (docs/configuration.md quotes these) and fails if one grows past twice the
/// documented figure.
#[test]
fn resource_and_template_costs() {
    const TEST: &str = "resource_and_template_costs";
    const COUNT: u32 = 10_000;
    if let (Ok(phase), Some(pcap)) = (std::env::var(PHASE_VAR), std::env::var_os(PCAP_VAR)) {
        // Phase 0: the model off; else 1,000 clients and room for every resource and template.
        let clients = if phase == "0" { 0 } else { 1000 };
        measure(Path::new(&pcap), clients, COUNT as usize + 1);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (vary, name, documented_bytes) in [
        (Vary::Resource, "resource", 6 * 1024),
        (Vary::Template, "template", 2560),
    ] {
        let pcap = dir.path().join(format!("{name}s.pcap"));
        write_pcap(&pcap, vary, COUNT);
        let base = run_child(TEST, &pcap, 0);
        let full = run_child(TEST, &pcap, 1);
        let (active, lost) = match vary {
            Vary::Resource => (&full["resources_active"], &full["resources_evicted"]),
            _ => (&full["templates"], &full["templates_other"]),
        };
        assert!(
            active.as_u64().expect("count") >= u64::from(COUNT),
            "{full}"
        );
        assert_eq!(lost, 0, "{full}");
        let per = (full["peak_rss_kib"].as_u64().expect("rss")
            - base["peak_rss_kib"].as_u64().expect("rss"))
            * 1024
            / u64::from(COUNT);
        eprintln!("{name}: {per} bytes of RSS each; {full}");
        assert!(
            per <= 2 * documented_bytes,
            "{name}: {per} bytes each: {full}"
        );
    }
}
