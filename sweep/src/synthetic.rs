//! Deterministic synthetic trials: a known response surface across loads, so the model's, the
//! policy's and the recommendation's logic can be checked against a truth (the unit tests, the
//! broker test, and a dry run of the policy without nginx).

use std::collections::BTreeMap;

use crate::trial::{Kpis, LoadFeatures, ParamValue, Params, TrialRecord};

/// A trial of service "nginx" at `rate` with the given workers and gzip choice and p99.
pub fn record(id: &str, rate: f64, workers: i64, gzip: &str, p99: f64) -> TrialRecord {
    let mut params = Params::new();
    params.insert("workers".into(), ParamValue::Int(workers));
    params.insert("gzip".into(), ParamValue::Choice(gzip.into()));
    TrialRecord {
        id: id.to_owned(),
        explorer: "grid".into(),
        service: "nginx".into(),
        load: load(rate),
        params,
        kpis: kpis(p99, 0.0, rate),
        started_at_ms: 1_700_000_000_000 + id.len() as u64,
        machine: "test-host 6.1".into(),
        repeats: 1,
        early_stopped: false,
    }
}

/// A load profile whose concurrency follows the rate (as a closed-loop client's would).
pub fn load(rate: f64) -> LoadFeatures {
    LoadFeatures {
        rate_rps: rate,
        concurrency: (rate / 20.0).max(1.0),
        mean_request_bytes: 320.0,
        mean_response_bytes: 8192.0,
        mix: BTreeMap::new(),
    }
}

pub fn kpis(p99: f64, error_rate: f64, rate: f64) -> Kpis {
    Kpis {
        p50_ms: p99 / 3.0,
        p99_ms: p99,
        p999_ms: p99 * 1.8,
        throughput_rps: rate * (1.0 - error_rate),
        error_rate,
        cpu_cores: rate / 1000.0,
        rss_bytes: 64 << 20,
        objective_noise: None,
    }
}

/// The known surface: p99 of a proxy with `workers` workers of 400 rps each (queueing grows as
/// utilisation approaches 1), a per-worker overhead (context switches, cache misses), gzip
/// costing CPU time at high utilisation but saving transfer time at low, and keep-alive helping
/// more the higher the rate. Overload (utilisation ≥ 0.95) fails requests. A deterministic
/// ±1.5% ripple stands in for measurement noise.
pub fn surface(rate: f64, workers: i64, gzip: &str, keepalive_s: f64) -> Kpis {
    let capacity = 400.0 * workers as f64;
    let u = rate / capacity;
    if u >= 0.95 {
        return kpis(500.0, 0.2, rate);
    }
    let gzip_ms = if gzip == "on" { 1.2 * u - 0.3 } else { 0.0 };
    let reconnect_ms = 0.4 * (rate / 3200.0) * (30.0 / keepalive_s.max(1.0)).min(6.0);
    let p99 = 1.0 + 0.3 * workers as f64 + 5.0 * u / (1.0 - u) + gzip_ms + reconnect_ms;
    let ripple = 1.0 + 0.015 * ((rate * 0.37 + workers as f64 * 1.7 + keepalive_s).sin());
    kpis(p99 * ripple, 0.0, rate)
}

/// Load levels spaced by √2 from 100 to 3200 rps.
pub fn load_levels() -> Vec<f64> {
    (0..=10)
        .map(|i| 100.0 * 2f64.powf(f64::from(i) / 2.0))
        .collect()
}

/// The full grid of the surface at every load level.
pub fn grid_records() -> Vec<TrialRecord> {
    let mut out = Vec::new();
    for rate in load_levels() {
        for workers in [1, 2, 4, 8, 16] {
            for gzip in ["off", "on"] {
                for keepalive in [5.0, 60.0] {
                    let id = format!("r{rate:.0}-w{workers}-{gzip}-k{keepalive}");
                    let mut t = record(&id, rate, workers, gzip, 0.0);
                    t.params
                        .insert("keepalive_s".into(), ParamValue::Float(keepalive));
                    t.kpis = surface(rate, workers, gzip, keepalive);
                    out.push(t);
                }
            }
        }
    }
    out
}
