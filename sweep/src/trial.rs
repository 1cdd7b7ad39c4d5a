//! The records every stage of a sweep shares: parameter values, load-profile features, KPIs,
//! the objective that ranks them, and one trial's full record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One parameter's value in a trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Int(i64),
    Float(f64),
    Choice(String),
}

impl ParamValue {
    /// The value as a number for distances and models (`None` for a choice).
    #[must_use]
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            #[allow(clippy::cast_precision_loss)] // parameter integers are small
            Self::Int(v) => Some(*v as f64),
            Self::Float(v) => Some(*v),
            Self::Choice(_) => None,
        }
    }
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Int(v) => write!(f, "{v}"),
            Self::Float(v) => write!(f, "{v}"),
            Self::Choice(v) => f.write_str(v),
        }
    }
}

/// A full assignment of the catalogue's parameters, by name (ordered, so it prints and hashes
/// the same way every time).
pub type Params = BTreeMap<String, ParamValue>;

/// What characterises a load profile for the policy's nearest-neighbour search: the features a
/// tapped profile or a forecast gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadFeatures {
    /// Offered request rate, requests per second.
    pub rate_rps: f64,
    /// Concurrent connections the clients keep open.
    pub concurrency: f64,
    /// Mean request size on the wire, bytes.
    pub mean_request_bytes: f64,
    /// Mean response size on the wire, bytes.
    pub mean_response_bytes: f64,
    /// Share of requests per endpoint template (sums to 1 when known; empty when not).
    #[serde(default)]
    pub mix: BTreeMap<String, f64>,
}

/// Key performance indicators measured on one shadow under one load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kpis {
    /// Latency percentiles in milliseconds, corrected for coordinated omission.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Completed requests per second.
    pub throughput_rps: f64,
    /// Share of requests that failed (connection errors, timeouts, 5xx).
    pub error_rate: f64,
    /// Mean CPU the shadow's cgroup used, in cores.
    pub cpu_cores: f64,
    /// Peak resident memory of the shadow's cgroup, bytes.
    pub rss_bytes: u64,
    /// Standard deviation of the objective over repeated measurements of the same trial, when
    /// it was repeated (noise larger than the effect is reported, not hidden).
    #[serde(default)]
    pub objective_noise: Option<f64>,
}

/// Which KPI a sweep optimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KpiName {
    P50Ms,
    P99Ms,
    P999Ms,
    ThroughputRps,
    ErrorRate,
    CpuCores,
    RssBytes,
}

impl KpiName {
    #[must_use]
    pub fn value(self, k: &Kpis) -> f64 {
        match self {
            Self::P50Ms => k.p50_ms,
            Self::P99Ms => k.p99_ms,
            Self::P999Ms => k.p999_ms,
            Self::ThroughputRps => k.throughput_rps,
            Self::ErrorRate => k.error_rate,
            Self::CpuCores => k.cpu_cores,
            #[allow(clippy::cast_precision_loss)] // memory in bytes fits f64's 53 bits here
            Self::RssBytes => k.rss_bytes as f64,
        }
    }

    /// True when a larger value is better.
    #[must_use]
    pub fn higher_is_better(self) -> bool {
        matches!(self, Self::ThroughputRps)
    }
}

/// The objective that ranks trials: one KPI to minimise or maximise, with a ceiling on the
/// error rate (a configuration that fails requests is never "fast").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    pub kpi: KpiName,
    /// Trials whose error rate is above this are infeasible.
    pub max_error_rate: f64,
}

impl Objective {
    /// A cost to minimise: the KPI (negated when higher is better); infeasible trials cost
    /// `f64::INFINITY`.
    #[must_use]
    pub fn cost(&self, k: &Kpis) -> f64 {
        if k.error_rate > self.max_error_rate || !KpiName::value(self.kpi, k).is_finite() {
            return f64::INFINITY;
        }
        let v = self.kpi.value(k);
        if self.kpi.higher_is_better() { -v } else { v }
    }
}

/// Everything recorded about one trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// Unique id (sweep id and sequence number).
    pub id: String,
    /// Which explorer proposed it (grid, random, lhs, bandit, bayes, contextual).
    pub explorer: String,
    /// The service tuned (e.g. "nginx-proxy-cache").
    pub service: String,
    pub load: LoadFeatures,
    pub params: Params,
    pub kpis: Kpis,
    /// Unix milliseconds when the trial started.
    pub started_at_ms: u64,
    /// Host name and kernel of the machine it ran on.
    pub machine: String,
    /// How many measurements were averaged into `kpis`.
    pub repeats: u32,
    /// True when the trial was stopped early as clearly bad (its KPIs are partial).
    pub early_stopped: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kpis(p99: f64, err: f64) -> Kpis {
        Kpis {
            p50_ms: 1.0,
            p99_ms: p99,
            p999_ms: p99 * 2.0,
            throughput_rps: 1000.0,
            error_rate: err,
            cpu_cores: 0.5,
            rss_bytes: 1 << 20,
            objective_noise: None,
        }
    }

    #[test]
    fn objective_ranks_feasible_trials_and_rejects_failing_ones() {
        let o = Objective {
            kpi: KpiName::P99Ms,
            max_error_rate: 0.01,
        };
        assert!(o.cost(&kpis(5.0, 0.0)) < o.cost(&kpis(7.0, 0.0)));
        assert!(o.cost(&kpis(1.0, 0.5)).is_infinite());
        let t = Objective {
            kpi: KpiName::ThroughputRps,
            max_error_rate: 0.01,
        };
        assert!((t.cost(&kpis(5.0, 0.0)) + 1000.0).abs() < 1e-9);
    }

    #[test]
    fn params_round_trip_through_json() {
        let mut p = Params::new();
        p.insert("workers".into(), ParamValue::Int(2));
        p.insert("gzip".into(), ParamValue::Choice("off".into()));
        p.insert("keepalive_s".into(), ParamValue::Float(7.5));
        let s = serde_json::to_string(&p).expect("encode");
        let back: Params = serde_json::from_str(&s).expect("decode");
        assert_eq!(back, p);
    }
}
