//! Canary evaluation and drift detection, both on what the tap measures per instance.
//!
//! The agent exposes, per resource (a service instance, `host@ip:port`), its last closed minute
//! on `GET /v1/resources`: `{"id": …, "last_minute": {"window_start_ns", "requests",
//! "error_rate", "latency_us_p99", …}}`. [`InstanceWindow::from_agent_resources`] reads that
//! shape, so a canary is judged on the same numbers the dashboard shows.
//!
//! **Canary semantics.** The recommended parameters are applied to one instance; after the
//! plan's window its tapped window is compared with the other instances merged (requests
//! summed, error rate and p99 request-weighted: the agent publishes percentiles, not
//! histograms, per instance). Promote when the canary carried its share of the traffic and
//! neither its error rate nor its p99 is worse than the baseline by more than the plan allows;
//! roll back when either is; extend by one window when there was too little traffic to tell,
//! and roll back once the extensions are used up (no evidence is not a pass).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    events::{DriftData, SWEEP_EVENT_DATA_VERSION},
    kpi_model::KpiPrediction,
    trial::{KpiName, LoadFeatures, Params},
};

/// One instance's tapped window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceWindow {
    pub instance: String,
    pub requests: u64,
    pub window_secs: f64,
    pub error_rate: f64,
    pub latency_us_p99: u64,
}

impl InstanceWindow {
    pub fn rate_per_sec(&self) -> f64 {
        if self.window_secs > 0.0 {
            self.requests as f64 / self.window_secs
        } else {
            0.0
        }
    }

    /// The windows in an agent's `/v1/resources` body (resources without a closed minute are
    /// skipped).
    pub fn from_agent_resources(body: &str) -> Result<Vec<Self>, serde_json::Error> {
        #[derive(Deserialize)]
        struct Resource {
            id: String,
            last_minute: Option<Minute>,
        }
        #[derive(Deserialize)]
        struct Minute {
            requests: u64,
            error_rate: f64,
            latency_us_p99: u64,
        }
        let resources: Vec<Resource> = serde_json::from_str(body)?;
        Ok(resources
            .into_iter()
            .filter_map(|r| {
                let m = r.last_minute?;
                Some(Self {
                    instance: r.id,
                    requests: m.requests,
                    window_secs: 60.0,
                    error_rate: m.error_rate,
                    latency_us_p99: m.latency_us_p99,
                })
            })
            .collect())
    }

    /// The request-weighted merge of `windows` (named `instance`).
    pub fn merge(instance: &str, windows: &[&Self]) -> Self {
        let requests: u64 = windows.iter().map(|w| w.requests).sum();
        let weight = |w: &Self| w.requests as f64 / (requests.max(1)) as f64;
        Self {
            instance: instance.to_owned(),
            requests,
            window_secs: windows.iter().map(|w| w.window_secs).fold(0.0, f64::max),
            error_rate: windows.iter().map(|w| weight(w) * w.error_rate).sum(),
            latency_us_p99: windows
                .iter()
                .map(|w| weight(w) * w.latency_us_p99 as f64)
                .sum::<f64>()
                .round() as u64,
        }
    }
}

/// How a recommendation is tried before it is rolled out (sent with the recommendation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryPlan {
    /// Instances the new parameters are applied to first.
    pub instances: u32,
    /// How long the canary is compared with the rest before deciding.
    pub window_secs: u64,
    /// Requests the canary and the baseline each need for a verdict.
    pub min_requests: u64,
    /// The canary's rate must be at least this share of a baseline instance's (a canary that
    /// sheds traffic looks fast).
    pub min_rate_share: f64,
    /// Roll back when the canary's p99 exceeds the baseline's times this.
    pub max_p99_ratio: f64,
    /// Roll back when the canary's error rate exceeds the baseline's plus this.
    pub max_error_rate_increase: f64,
    /// Windows added when there was too little traffic, before rolling back.
    pub max_extensions: u32,
}

impl Default for CanaryPlan {
    fn default() -> Self {
        Self {
            instances: 1,
            window_secs: 600,
            min_requests: 500,
            min_rate_share: 0.5,
            max_p99_ratio: 1.10,
            max_error_rate_increase: 0.002,
            max_extensions: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryDecision {
    Promote,
    Rollback,
    /// Too little evidence: compare for another window.
    Extend,
}

/// A canary verdict with its reasons and the numbers compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryOutcome {
    pub decision: CanaryDecision,
    pub reasons: Vec<String>,
    pub canary: Option<InstanceWindow>,
    pub baseline: Option<InstanceWindow>,
}

/// Judges `canary_instance` against the other instances in `windows` (one window each), after
/// `extensions` extensions already granted.
pub fn evaluate_canary(
    plan: &CanaryPlan,
    canary_instance: &str,
    windows: &[InstanceWindow],
    extensions: u32,
) -> CanaryOutcome {
    let canary = windows.iter().find(|w| w.instance == canary_instance);
    let others: Vec<&InstanceWindow> = windows
        .iter()
        .filter(|w| w.instance != canary_instance)
        .collect();
    let baseline = (!others.is_empty()).then(|| InstanceWindow::merge("baseline", &others));
    let undecided = |reason: String| {
        let out_of_time = extensions >= plan.max_extensions;
        CanaryOutcome {
            decision: if out_of_time {
                CanaryDecision::Rollback
            } else {
                CanaryDecision::Extend
            },
            reasons: vec![if out_of_time {
                format!("{reason}; no extension left ({extensions} used)")
            } else {
                reason
            }],
            canary: canary.cloned(),
            baseline: baseline.clone(),
        }
    };
    let (Some(c), Some(b)) = (canary, baseline.as_ref()) else {
        return undecided(format!(
            "canary {canary_instance} {} at the tap, {} other instances",
            if canary.is_some() { "seen" } else { "not seen" },
            others.len()
        ));
    };
    if c.requests < plan.min_requests || b.requests < plan.min_requests {
        return undecided(format!(
            "too few requests: canary {}, baseline {} (need {})",
            c.requests, b.requests, plan.min_requests
        ));
    }
    let per_instance = b.rate_per_sec() / others.len() as f64;
    let share = c.rate_per_sec() / per_instance.max(1e-9);
    if share < plan.min_rate_share {
        return undecided(format!(
            "canary took {:.0}% of a baseline instance's rate (need {:.0}%)",
            share * 100.0,
            plan.min_rate_share * 100.0
        ));
    }
    let mut reasons = Vec::new();
    let mut failed = false;
    let error_limit = b.error_rate + plan.max_error_rate_increase;
    failed |= c.error_rate > error_limit;
    reasons.push(format!(
        "error rate {:.4} vs baseline {:.4} (limit {:.4}): {}",
        c.error_rate,
        b.error_rate,
        error_limit,
        if c.error_rate > error_limit {
            "worse"
        } else {
            "ok"
        }
    ));
    let p99_limit = b.latency_us_p99 as f64 * plan.max_p99_ratio;
    let p99_worse = c.latency_us_p99 as f64 > p99_limit;
    failed |= p99_worse;
    reasons.push(format!(
        "p99 {} µs vs baseline {} µs (limit {:.0}): {}",
        c.latency_us_p99,
        b.latency_us_p99,
        p99_limit,
        if p99_worse { "worse" } else { "ok" }
    ));
    CanaryOutcome {
        decision: if failed {
            CanaryDecision::Rollback
        } else {
            CanaryDecision::Promote
        },
        reasons,
        canary: Some(c.clone()),
        baseline: baseline.clone(),
    }
}

/// When the primary's tapped KPIs count as drifted from the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftConfig {
    /// Outside ± this many of the model's error estimates…
    pub sigmas: f64,
    /// …and outside ± this share of the prediction (so a very confident model is not flagged
    /// for differences nobody cares about)…
    pub min_relative: f64,
    /// …for this many consecutive windows.
    pub windows: u32,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            sigmas: 2.0,
            min_relative: 0.10,
            windows: 3,
        }
    }
}

/// Watches the primary's tapped p99 and error rate against the model's prediction for the
/// parameters it runs; flags the mapping for re-evaluation once per drift episode.
#[derive(Debug, Default)]
pub struct DriftDetector {
    config: DriftConfig,
    /// Consecutive out-of-band windows per (service, KPI).
    streaks: BTreeMap<(String, String), u32>,
    flagged: BTreeMap<String, bool>,
    flagged_total: u64,
}

impl DriftDetector {
    pub fn new(config: DriftConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Mappings flagged so far (the `shadowtap_sweep_drift_flagged_total` counter).
    pub fn flagged_total(&self) -> u64 {
        self.flagged_total
    }

    /// True while `service`'s mapping awaits re-evaluation.
    pub fn is_flagged(&self, service: &str) -> bool {
        self.flagged.get(service).copied().unwrap_or(false)
    }

    /// The mapping was re-evaluated (a new sweep ran): watch it afresh.
    pub fn clear(&mut self, service: &str) {
        self.flagged.remove(service);
        self.streaks.retain(|(s, _), _| s != service);
    }

    /// One closed window of the primary; returns the flag when this window starts a drift.
    pub fn observe(
        &mut self,
        service: &str,
        params: &Params,
        load: &LoadFeatures,
        prediction: &KpiPrediction,
        observed: &InstanceWindow,
        window_end_ms: u64,
    ) -> Option<DriftData> {
        let checks = [
            (KpiName::P99Ms, observed.latency_us_p99 as f64 / 1000.0),
            (KpiName::ErrorRate, observed.error_rate),
        ];
        let mut flag = None;
        let already_flagged = self.is_flagged(service);
        for (kpi, value) in checks {
            let predicted = prediction.get(kpi);
            let band = (self.config.sigmas * predicted.error)
                .max(self.config.min_relative * predicted.value.abs());
            let key = (service.to_owned(), format!("{kpi:?}"));
            let outside = (value - predicted.value).abs() > band || !predicted.value.is_finite();
            let streak = self.streaks.entry(key).or_insert(0);
            *streak = if outside { *streak + 1 } else { 0 };
            if *streak >= self.config.windows && !already_flagged && flag.is_none() {
                flag = Some(DriftData {
                    schema_version: SWEEP_EVENT_DATA_VERSION,
                    service: service.to_owned(),
                    params: params.clone(),
                    load: load.clone(),
                    kpi,
                    predicted,
                    observed: value,
                    z: (value - predicted.value) / predicted.error.max(1e-12),
                    windows: *streak,
                    window_end_ms,
                });
            }
        }
        if flag.is_some() {
            self.flagged.insert(service.to_owned(), true);
            self.flagged_total += 1;
        }
        flag
    }
}

#[path = "canary_tests.rs"]
#[cfg(test)]
mod tests;
