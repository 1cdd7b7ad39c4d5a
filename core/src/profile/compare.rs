//! How close two profiles are: the measures the load generator's fidelity report and tests
//! use (template mix, request sizes, requests per connection).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Distribution, ResourceProfile};

/// Jensen–Shannon divergence (base 2, so within 0..=1) between two weightings of the same
/// keys; a key missing on one side has weight 0 there. 0 when both are empty.
#[allow(clippy::many_single_char_names)] // p, q, m as in the definition
pub fn js_divergence(p: &BTreeMap<String, f64>, q: &BTreeMap<String, f64>) -> f64 {
    let sp: f64 = p.values().sum();
    let sq: f64 = q.values().sum();
    if sp <= 0.0 || sq <= 0.0 {
        return if sp <= 0.0 && sq <= 0.0 { 0.0 } else { 1.0 };
    }
    let keys: BTreeSet<&String> = p.keys().chain(q.keys()).collect();
    let kl_term = |a: f64, m: f64| if a > 0.0 { a * (a / m).log2() } else { 0.0 };
    let mut js = 0.0;
    for k in keys {
        let a = p.get(k).copied().unwrap_or(0.0) / sp;
        let b = q.get(k).copied().unwrap_or(0.0) / sq;
        let m = f64::midpoint(a, b);
        js += 0.5 * kl_term(a, m) + 0.5 * kl_term(b, m);
    }
    js.clamp(0.0, 1.0)
}

/// Two-sample Kolmogorov–Smirnov statistic: the largest gap between the two CDFs, evaluated
/// at every bucket edge of either side (values spread evenly within buckets). 0 when both
/// are empty, 1 when only one is.
pub fn ks_statistic(a: &Distribution, b: &Distribution) -> f64 {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return 0.0,
        (true, false) | (false, true) => return 1.0,
        (false, false) => {}
    }
    let edges = a
        .buckets
        .iter()
        .chain(&b.buckets)
        .flat_map(|k| [k.low as f64, k.high as f64 + 1.0]);
    edges
        .map(|x| (a.cdf(x) - b.cdf(x)).abs())
        .fold(0.0, f64::max)
}

/// The fidelity measures of a candidate profile (e.g. learned from generated traffic)
/// against a reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Jensen–Shannon divergence of the template mix (goal ≤ 0.05).
    pub template_mix_jsd: f64,
    /// KS statistic of request sizes (goal ≤ 0.1).
    pub request_bytes_ks: f64,
    /// KS statistic of requests per connection.
    pub requests_per_connection_ks: f64,
    /// Mean requests per connection, candidate / reference.
    pub requests_per_connection_mean_ratio: f64,
}

impl Fidelity {
    pub fn of(reference: &ResourceProfile, candidate: &ResourceProfile) -> Self {
        Self::of_parts(
            reference,
            &candidate.template_mix(),
            &candidate.request_bytes,
            &candidate.connections.requests_per_connection,
        )
    }

    /// Against traffic described by its template mix, request sizes and requests per
    /// connection (e.g. what a generator sent).
    pub fn of_parts(
        reference: &ResourceProfile,
        mix: &BTreeMap<String, f64>,
        request_bytes: &Distribution,
        requests_per_connection: &Distribution,
    ) -> Self {
        let r = &reference.connections.requests_per_connection;
        let c = requests_per_connection;
        Self {
            template_mix_jsd: js_divergence(&reference.template_mix(), mix),
            request_bytes_ks: ks_statistic(&reference.request_bytes, request_bytes),
            requests_per_connection_ks: ks_statistic(r, c),
            requests_per_connection_mean_ratio: if r.mean > 0.0 { c.mean / r.mean } else { 0.0 },
        }
    }

    /// The goals: template mix JSD ≤ 0.05, request-size KS ≤ 0.1, and requests per
    /// connection within KS 0.1 and a mean within 10%.
    pub fn meets_goals(&self) -> bool {
        self.template_mix_jsd <= 0.05
            && self.request_bytes_ks <= 0.1
            && self.requests_per_connection_ks <= 0.1
            && (self.requests_per_connection_mean_ratio - 1.0).abs() <= 0.1
    }
}
