//! The collector's in-process work per observation, without Kafka: decode the record, merge it
//! ([`Fleet::ingest`]), decide, build the scale event's JSON, and once per batch serialise the
//! touched resources' state snapshots — what `shadowtap-collector`'s loop does between
//! consuming a batch and publishing it. The baseline, measured in the same run on the same
//! records, is decoding alone.
//!
//! Workloads as in `cargo xtask bench collector`: 200 resources with one agent each (every
//! observation closes a window), and 50 resources with 20 agents each; decisions on observed
//! demand, and with the collector's own forecaster (default).
//!
//! Rates are per second of the thread's CPU time (not inflated by other work on the machine).
//!
//! `cargo bench -p shadowtap-core --bench fleet`; env `BENCH_FLEET_WINDOWS` (windows per
//! resource, default 400), `BENCH_FLEET_BATCH` (records per batch, default 1000),
//! `BENCH_FLEET_ONLY` (comma-separated subset of observed, forecast, fleet).

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use shadowtap_core::{
    ClosedWindow, Fleet, FleetConfig, Observation, WindowCounts, decision::PolicySet,
    decode_observation, encode_observation, fleet::FitBudget, forecast::ForecastConfig,
};

/// The collector's allocator (see `collector/src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../agent/benches/common/cpu_time.rs"]
mod cpu_time;
#[path = "common/demand.rs"]
mod demand;

const POLICY: &str = r#"
[defaults]
capacity_per_instance = 100.0
target_utilisation = 1.0
provisioning_lead_time = "1s"
horizon = "1s"
min_instances = 1
max_instances = 100000000
scale_out_cooldown = "0s"
scale_in_cooldown = "1h"
scale_in_stabilisation = "1h"
"#;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An observation shaped like the collector bench's: 50 latency samples, 8 endpoints, and a
/// latency histogram of 2 significant digits, the precision agents export
/// (`agent/src/windows/hist.rs`).
fn observation(agent: &str, resource: &str, start_ms: u64, requests: u64) -> Observation {
    let mut latency_us = hdrhistogram::Histogram::new(2).expect("2 significant digits");
    latency_us.auto(true);
    let mut c = WindowCounts {
        requests,
        responses: requests,
        bytes_in: requests * 300,
        bytes_out: requests * 2000,
        latency_us,
        ..WindowCounts::default()
    };
    for i in 0..50 {
        c.latency_us.record(500 + i * 97).expect("latency");
    }
    for e in 0..8 {
        c.endpoints
            .insert(format!("GET /api/v1/items/{e}"), requests / 8);
    }
    Observation {
        agent_id: agent.to_owned(),
        resource: resource.to_owned(),
        window_start_ms: start_ms,
        window_end_ms: start_ms + 1000,
        seq: start_ms / 1000,
        summary: c,
    }
}

/// (key, value) records in produce order: window by window, every resource, every agent.
/// Encoded (key, value) records.
type Records = Vec<(Vec<u8>, Vec<u8>)>;

fn records(resources: u64, windows: u64, agents: u64) -> Records {
    let mut out = Vec::new();
    for w in 0..windows {
        for r in 0..resources {
            let resource = format!("svc-{r}");
            for a in 0..agents {
                let obs = observation(
                    &format!("agent-{a}"),
                    &resource,
                    1_700_000_000_000 + w * 1000,
                    demand::requests(r, a, w),
                );
                out.push((resource.clone().into_bytes(), encode_observation(&obs)));
            }
        }
    }
    out
}

struct Run {
    seconds: f64,
    events: u64,
    bytes: usize,
    fits: u64,
    fit_seconds: f64,
    deferred: u64,
    form_reuses: u64,
}

fn decode_only(records: &Records) -> Run {
    let t = cpu_time::thread();
    let mut bytes = 0;
    for (k, v) in records {
        let obs = decode_observation(Some(k), v).expect("decode");
        bytes += obs.resource.len();
    }
    Run {
        seconds: cpu_time::thread().saturating_sub(t).as_secs_f64(),
        events: 0,
        bytes,
        fits: 0,
        fit_seconds: 0.0,
        deferred: 0,
        form_reuses: 0,
    }
}

fn collector_work(records: &Records, batch: usize, case: &Case) -> Run {
    let policies = PolicySet::from_toml(POLICY).expect("policy");
    let defaults = FleetConfig::default();
    let mut fleet = Fleet::new(
        FleetConfig {
            merge_wait: Duration::ZERO,
            idle_close: Duration::from_secs(2),
            min_forecast_history: case.min_history,
            fit_budget: case.fit_budget,
            forecast: ForecastConfig {
                model_search_every: case
                    .search_every
                    .unwrap_or(defaults.forecast.model_search_every),
                ..defaults.forecast.clone()
            },
            ..defaults
        },
        policies,
    );
    let source = fleet.config().source.clone();
    let t = cpu_time::thread();
    let mut events = 0;
    let mut bytes = 0;
    for chunk in records.chunks(batch) {
        let mut dirty: HashSet<String> = HashSet::new();
        // As the collector: each closed window becomes its event at once.
        let mut publish = |c: &ClosedWindow| {
            if let Some(event) = c.scale_event(&source) {
                bytes += event.to_json().len();
                events += 1;
            }
        };
        for (k, v) in chunk {
            let obs = decode_observation(Some(k), v).expect("decode");
            dirty.insert(obs.resource.clone());
            for c in fleet.ingest(obs, Instant::now()).1 {
                publish(&c);
            }
        }
        for c in fleet.tick(Instant::now()) {
            publish(&c);
        }
        for r in dirty {
            if let Some(snap) = fleet.snapshot(&r) {
                bytes += serde_json::to_vec(&snap).expect("json").len();
            }
        }
    }
    let seconds = cpu_time::thread().saturating_sub(t).as_secs_f64();
    let stats = fleet.stats();
    Run {
        seconds,
        events,
        bytes,
        fits: stats.forecast_fits,
        fit_seconds: stats.forecast_fit_us as f64 / 1e6,
        deferred: stats.forecast_refits_deferred,
        form_reuses: stats.forecast_form_reuses,
    }
}

/// The cases `BENCH_FLEET_ONLY` asks for, in order.
fn plan(runs_part: &dyn Fn(&str) -> bool) -> Vec<Case> {
    let unlimited = FitBudget::UNLIMITED;
    let budget = FitBudget::default();
    let case = |label, fleet, min_history, fit_budget| Case {
        label,
        fleet,
        min_history,
        fit_budget,
        search_every: None,
    };
    let mut cases: Vec<Case> = Vec::new();
    if runs_part("observed") {
        cases.push(case(
            "1 agent/resource, observed demand",
            false,
            1_000_000,
            budget,
        ));
    }
    if runs_part("forecast") {
        // Every refit searches every ETS form, as before `model_search_every`: the same-run
        // baseline of the default's form reuse.
        cases.push(Case {
            search_every: Some(1),
            ..case(
                "1 agent/resource, no fit budget, search every refit",
                false,
                8,
                unlimited,
            )
        });
        cases.push(case(
            "1 agent/resource, forecaster, no fit budget",
            false,
            8,
            unlimited,
        ));
        cases.push(case(
            "1 agent/resource, forecaster (default)",
            false,
            8,
            budget,
        ));
    }
    if runs_part("fleet") {
        cases.push(Case {
            search_every: Some(1),
            ..case(
                "20 agents/resource, no fit budget, search every refit",
                true,
                8,
                unlimited,
            )
        });
        cases.push(case(
            "20 agents/resource, forecaster, no fit budget",
            true,
            8,
            unlimited,
        ));
        cases.push(case(
            "20 agents/resource, forecaster (default)",
            true,
            8,
            budget,
        ));
    }
    cases
}

/// One configuration of the collector's work.
struct Case {
    label: &'static str,
    fleet: bool,
    min_history: usize,
    fit_budget: FitBudget,
    /// `ForecastConfig::model_search_every`; `None`: the default.
    search_every: Option<usize>,
}

fn main() {
    let windows = env_or("BENCH_FLEET_WINDOWS", 400);
    let batch = env_or("BENCH_FLEET_BATCH", 1000) as usize;
    let only = std::env::var("BENCH_FLEET_ONLY").unwrap_or_default();
    let runs_part = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    let single = records(200, windows, 1);
    let fleet = records(50, windows.div_ceil(20), 20);
    println!(
        "fleet bench: {} records (200 resources x {windows} windows x 1 agent), {} (50 x {} x 20 agents), batches of {batch}",
        single.len(),
        fleet.len(),
        windows.div_ceil(20)
    );
    let base = decode_only(&single);
    let per_s = |r: &Run, n: usize| n as f64 / r.seconds;
    println!(
        "  {:<52}{:>12.0} obs/s  {:>8.0} ns/obs  (checksum {})",
        "baseline: decode only",
        per_s(&base, single.len()),
        base.seconds * 1e9 / single.len() as f64,
        base.bytes
    );
    let cases = plan(&runs_part);
    for c in &cases {
        let recs = if c.fleet { &fleet } else { &single };
        let r = collector_work(recs, batch, c);
        println!(
            "  {:<56}{:>12.0} obs/s  {:>8.0} ns/obs  ({:.3}x baseline; {} events, {} fits in {:.2} s ({} of one form), {} refits deferred; {} bytes)",
            c.label,
            per_s(&r, recs.len()),
            r.seconds * 1e9 / recs.len() as f64,
            per_s(&r, recs.len()) / per_s(&base, single.len()),
            r.events,
            r.fits,
            r.fit_seconds,
            r.form_reuses,
            r.deferred,
            r.bytes
        );
    }
}
