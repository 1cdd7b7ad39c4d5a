//! Per-resource gauges of a fleet's decisions and forecast accuracy, for `/metrics` of both
//! the agent's in-process collector and `shadowtap-collector`.

use super::Fleet;
use crate::metrics::Exposition;

type Getter = fn(&Fleet, &str) -> Option<f64>;

/// Name, help and value of each per-resource gauge family.
fn resource_families() -> [(&'static str, &'static str, Getter); 14] {
    [
        (
            "shadowtap_resource_current_instances",
            "Instances before the last decision.",
            |f, r| f.last_decision(r).map(|d| f64::from(d.current_instances)),
        ),
        (
            "shadowtap_resource_desired_instances",
            "Instances the last decision asked for.",
            |f, r| f.last_decision(r).map(|d| f64::from(d.desired_instances)),
        ),
        (
            "shadowtap_resource_forecast_peak_point",
            "Point forecast at the decision window's peak.",
            |f, r| f.last_decision(r).map(|d| d.explanation.peak_point),
        ),
        (
            "shadowtap_resource_forecast_peak_upper",
            "Upper interval bound at the decision window's peak.",
            |f, r| f.last_decision(r).map(|d| d.explanation.peak_upper),
        ),
        (
            "shadowtap_resource_forecast_interval_widening",
            "Widening applied after coverage misses.",
            |f, r| f.accuracy(r).map(|a| a.widening),
        ),
        (
            "shadowtap_resource_forecast_mase",
            "Online MASE against the model's reference, cumulative since start (for reports).",
            |f, r| f.accuracy(r).and_then(|a| a.mase),
        ),
        (
            "shadowtap_resource_forecast_recent_mase",
            "MASE over the recent window against the current model's reference; decisions \
                 fall back to the reactive rule at skill_fallback_mase.",
            |f, r| f.accuracy(r).and_then(|a| a.recent_mase),
        ),
        (
            "shadowtap_resource_forecast_coverage",
            "Share of observations inside the interval.",
            |f, r| f.accuracy(r).and_then(|a| a.coverage),
        ),
        (
            "shadowtap_resource_forecast_changepoints",
            "Level changes the forecaster found in the history behind the last decision.",
            |f, r| {
                f.last_decision(r)
                    .map(|d| d.explanation.changepoints_ms.len() as f64)
            },
        ),
        (
            "shadowtap_resource_forecast_skill_fallback",
            "1 when the last decision did not follow the forecast for lack of skill.",
            |f, r| {
                f.last_decision(r)
                    .map(|d| f64::from(u8::from(d.explanation.skill_fallback)))
            },
        ),
        (
            "shadowtap_resource_cost_capped",
            "1 when the last decision was cut to max_cost_ratio over the reactive rule.",
            |f, r| {
                f.last_decision(r)
                    .map(|d| f64::from(u8::from(d.explanation.cost_capped)))
            },
        ),
        (
            "shadowtap_resource_reactive_instances",
            "Instances the reactive rule would run (the floor and base of the cost ceiling).",
            |f, r| {
                f.last_decision(r)
                    .map(|d| f64::from(d.explanation.reactive_instances))
            },
        ),
        (
            "shadowtap_resource_forecast_outliers",
            "Outliers the forecaster found in the history behind the last decision.",
            |f, r| {
                f.last_decision(r)
                    .map(|d| d.explanation.outliers_ms.len() as f64)
            },
        ),
        (
            "shadowtap_resource_forecast_interval_level",
            "Nominal interval level the coverage is held against.",
            |f, r| f.accuracy(r).map(|a| a.level),
        ),
    ]
}

impl Fleet {
    /// Per-resource gauges: instances, the forecast the last decision rested on, and accuracy.
    pub fn render_resource_metrics(&self, page: &mut Exposition) {
        let mut names: Vec<&str> = self.resources().collect();
        names.sort_unstable();
        for (name, help, get) in resource_families() {
            let samples: Vec<(Vec<(&str, &str)>, f64)> = names
                .iter()
                .filter_map(|r| get(self, r).map(|v| (vec![("resource", *r)], v)))
                .collect();
            if samples.is_empty() {
                continue;
            }
            let refs: Vec<(&[(&str, &str)], f64)> =
                samples.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
            page.family(name, "gauge", help, &refs);
        }
    }
}
