//! What-if scenarios (TOML): a learned profile, changed — a flash sale's rate, a shift in the
//! template mix, request-size inflation, a new client population — run against a target next
//! to the unchanged baseline, and optionally taken through the decision engine's policy for
//! the capacity answer ("this scenario needs N instances, provisioned by T").
//!
//! ```toml
//! name = "flash sale"
//! duration = "20m"                # of the scenario's rate curve
//! [rate]
//! shape = "flash-sale"            # or "constant"
//! multiplier = 10                 # peak over the baseline rate
//! ramp = "5m"
//! hold = "10m"
//! decay = "5m"
//! [mix]                           # request-weight multipliers per template
//! "POST /cart" = 3.0
//! [sizes]
//! request_inflation = 1.5         # request sizes ×1.5
//! [[population]]                  # a share of new connections behaves differently
//! share = 0.3
//! temperature = 2.0               # e.g. new users explore more endpoints
//! ```

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};
use shadowtap_core::{
    decision::{DecisionEngine, DecisionInput, Policy},
    forecast::{DemandForecast, ForecastPoint, ModelKind},
    profile::{Bucket, Distribution, ResourceProfile},
};

use crate::{PiecewiseLinear, RateCurve, parse_duration};

/// A scenario file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Length of the scenario's rate curve (e.g. "20m").
    pub duration: String,
    #[serde(default)]
    pub rate: RateShape,
    /// Template → weight multiplier (templates not named keep 1).
    #[serde(default)]
    pub mix: BTreeMap<String, f64>,
    #[serde(default)]
    pub sizes: Sizes,
    #[serde(default)]
    pub population: Vec<Population>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Sizes {
    /// Request sizes are multiplied by this (1 = unchanged).
    #[serde(default = "one")]
    pub request_inflation: f64,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            request_inflation: 1.0,
        }
    }
}

fn one() -> f64 {
    1.0
}

/// How the rate moves over the scenario, relative to the baseline rate.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "shape", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RateShape {
    Constant {
        #[serde(default = "one")]
        multiplier: f64,
    },
    /// Ramp to `multiplier` × baseline over `ramp`, hold, decay back over `decay`.
    FlashSale {
        multiplier: f64,
        ramp: String,
        hold: String,
        decay: String,
    },
}

impl Default for RateShape {
    fn default() -> Self {
        Self::Constant { multiplier: 1.0 }
    }
}

/// A share of new connections that behaves differently.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Population {
    /// Fraction of connections (0 < share ≤ 1; all populations together ≤ 1).
    pub share: f64,
    /// Their sampling temperature (above 1: they wander to rarer endpoints).
    #[serde(default = "one")]
    pub temperature: f64,
    /// Their own template-weight multipliers, on top of the scenario's.
    #[serde(default)]
    pub mix: BTreeMap<String, f64>,
}

/// A bad scenario, with the field named.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("scenario field `{field}`: {reason}")]
    Field { field: String, reason: String },
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
    ScenarioError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

fn duration(field: &str, text: &str) -> Result<Duration, ScenarioError> {
    parse_duration(text).map_err(|e| bad(field, e.to_string()))
}

fn positive(field: &str, v: f64) -> Result<f64, ScenarioError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(bad(field, format!("{v} must be a positive number")))
    }
}

impl Scenario {
    /// Parses and checks a scenario against the profile it will change.
    pub fn from_toml(text: &str, profile: &ResourceProfile) -> Result<Self, ScenarioError> {
        let s: Self = toml::from_str(text)?;
        s.validate(profile)?;
        Ok(s)
    }

    pub fn validate(&self, profile: &ResourceProfile) -> Result<(), ScenarioError> {
        if duration("duration", &self.duration)?.is_zero() {
            return Err(bad("duration", "must be longer than 0"));
        }
        match &self.rate {
            RateShape::Constant { multiplier } => {
                positive("rate.multiplier", *multiplier)?;
            }
            RateShape::FlashSale {
                multiplier,
                ramp,
                hold,
                decay,
            } => {
                positive("rate.multiplier", *multiplier)?;
                duration("rate.ramp", ramp)?;
                duration("rate.hold", hold)?;
                duration("rate.decay", decay)?;
            }
        }
        let check_mix = |at: &str, mix: &BTreeMap<String, f64>| {
            for (template, w) in mix {
                if !profile.templates.iter().any(|t| &t.template == template) {
                    return Err(bad(
                        format!("{at}.\"{template}\""),
                        format!("no such template in the profile of {}", profile.resource),
                    ));
                }
                if !(w.is_finite() && *w >= 0.0) {
                    return Err(bad(format!("{at}.\"{template}\""), "must be ≥ 0"));
                }
            }
            Ok(())
        };
        check_mix("mix", &self.mix)?;
        positive("sizes.request_inflation", self.sizes.request_inflation)?;
        let mut total = 0.0;
        for (i, p) in self.population.iter().enumerate() {
            let at = format!("population[{i}]");
            if !(p.share > 0.0 && p.share <= 1.0) {
                return Err(bad(format!("{at}.share"), "must be within (0, 1]"));
            }
            if !(p.temperature.is_finite() && p.temperature >= 0.0) {
                return Err(bad(format!("{at}.temperature"), "must be ≥ 0"));
            }
            check_mix(&format!("{at}.mix"), &p.mix)?;
            total += p.share;
        }
        if total > 1.0 + 1e-9 {
            return Err(bad("population", format!("shares add up to {total} > 1")));
        }
        Ok(())
    }

    /// The scenario's rate curve over a baseline of `base` requests per second.
    pub fn curve(&self, base: f64) -> PiecewiseLinear {
        let d = |t: &str| parse_duration(t).unwrap_or_default();
        match &self.rate {
            RateShape::Constant { multiplier } => {
                PiecewiseLinear::new([(Duration::ZERO, base * multiplier)])
            }
            RateShape::FlashSale {
                multiplier,
                ramp,
                hold,
                decay,
            } => {
                let (ramp, hold, decay) = (d(ramp), d(hold), d(decay));
                let peak = base * multiplier;
                PiecewiseLinear::new([
                    (Duration::ZERO, base),
                    (ramp, peak),
                    (ramp + hold, peak),
                    (ramp + hold + decay, base),
                ])
            }
        }
    }

    /// Length of the scenario.
    pub fn length(&self) -> Duration {
        parse_duration(&self.duration).unwrap_or_default()
    }

    /// The profile as this scenario changes it (mix weights and request sizes).
    pub fn apply(&self, profile: &ResourceProfile) -> ResourceProfile {
        let mut out = reweigh(profile, &self.mix);
        let factor = self.sizes.request_inflation;
        if (factor - 1.0).abs() > f64::EPSILON {
            for t in &mut out.templates {
                t.request_bytes = inflate(&t.request_bytes, factor);
            }
            out.request_bytes = inflate(&out.request_bytes, factor);
        }
        out
    }

    /// Each population's profile (the scenario's, reweighed again) with its share and
    /// temperature; the rest of the connections are `(scenario profile, 1 − Σ shares, 1)`.
    pub fn populations(&self, profile: &ResourceProfile) -> Vec<(ResourceProfile, f64, f64)> {
        let base = self.apply(profile);
        let mut out: Vec<(ResourceProfile, f64, f64)> = self
            .population
            .iter()
            .map(|p| (reweigh(&base, &p.mix), p.share, p.temperature))
            .collect();
        let rest = 1.0 - self.population.iter().map(|p| p.share).sum::<f64>();
        if rest > 1e-9 {
            out.insert(0, (base, rest, 1.0));
        }
        out
    }

    /// The capacity answer: the scenario's demand per `step` (the demand step the policy's
    /// capacity is given in, 60 s in the agent by default), taken through the decision engine
    /// as a perfect forecast, starting from `instances`.
    pub fn capacity(
        &self,
        base: f64,
        policy: &Policy,
        step: Duration,
        instances: u32,
    ) -> CapacityAnswer {
        let curve = self.curve(base);
        let step = step.max(Duration::from_secs(1));
        let step_ms = step.as_millis() as u64;
        let steps = (self.length().as_millis() as u64).div_ceil(step_ms).max(1);
        // Demand per step: the rate integrated over it (midpoint rule on 1 s).
        let demand: Vec<f64> = (0..steps)
            .map(|k| {
                let (from, to) = (k * step_ms, (k + 1) * step_ms);
                (from..to)
                    .step_by(1000)
                    .map(|ms| curve.rate_at(Duration::from_millis(ms + 500)))
                    .sum::<f64>()
                    * (step_ms as f64 / 1000.0)
                    / ((to - from).div_ceil(1000) as f64)
            })
            .collect();
        let horizon = (policy.horizon.as_millis() as u64).div_ceil(step_ms).max(1);
        let mut engine = DecisionEngine::new("what-if", policy.clone());
        let mut current = instances;
        let mut answer = CapacityAnswer {
            peak_rate: demand.iter().copied().fold(0.0, f64::max) / step.as_secs_f64(),
            needed_instances: instances,
            provision_by_s: None,
            timeline: Vec::new(),
        };
        for k in 0..steps {
            let now_ms = k * step_ms;
            let points = (k + 1..=k + horizon)
                .map(|j| {
                    let v = demand.get(j as usize).copied().unwrap_or(0.0);
                    ForecastPoint {
                        start_ms: j * step_ms,
                        point: v,
                        lower: v,
                        upper: v,
                    }
                })
                .collect();
            let forecast = DemandForecast {
                resource: "what-if".into(),
                issued_at_ms: now_ms,
                step_ms,
                level: 0.0,
                widening: 1.0,
                model: ModelKind::Naive,
                points,
                last_observed: demand.get(k as usize).copied(),
                outliers_ms: Vec::new(),
                changepoints_ms: Vec::new(),
            };
            let d = engine.decide(&DecisionInput {
                now_ms,
                forecast: &forecast,
                current_instances: current,
            });
            if d.desired_instances > current && answer.provision_by_s.is_none() {
                answer.provision_by_s = Some(now_ms / 1000);
            }
            current = d.desired_instances;
            answer.needed_instances = answer.needed_instances.max(current);
            answer.timeline.push((now_ms / 1000, current));
        }
        answer
    }
}

/// "This scenario needs N instances, provisioned by T."
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CapacityAnswer {
    /// Highest rate of the scenario, requests per second.
    pub peak_rate: f64,
    /// Most instances the policy asks for during the scenario.
    pub needed_instances: u32,
    /// Seconds into the scenario at which the first scale-out must be asked for (the
    /// policy's lead time already accounted for by the engine); `None`: never.
    pub provision_by_s: Option<u64>,
    /// (seconds into the scenario, desired instances) per policy step.
    pub timeline: Vec<(u64, u32)>,
}

/// The profile with template weights multiplied: request counts, and the transitions into
/// each template, so both the mix and the Markov chain shift.
fn reweigh(profile: &ResourceProfile, mix: &BTreeMap<String, f64>) -> ResourceProfile {
    let mut out = profile.clone();
    if mix.is_empty() {
        return out;
    }
    let w = |t: &str| mix.get(t).copied().unwrap_or(1.0);
    let scale = |n: u64, f: f64| (n as f64 * f).round() as u64;
    for t in &mut out.templates {
        t.requests = scale(t.requests, w(&t.template));
    }
    for tr in &mut out.connections.transitions {
        tr.count = scale(tr.count, w(&tr.to));
    }
    out.connections.transitions.retain(|t| t.count > 0);
    out.templates.retain(|t| t.requests > 0);
    let total: u64 = out.templates.iter().map(|t| t.requests).sum();
    for t in &mut out.templates {
        t.share = t.requests as f64 / total.max(1) as f64;
    }
    out.requests = total;
    out
}

fn inflate(d: &Distribution, factor: f64) -> Distribution {
    let s = |v: u64| (v as f64 * factor).round() as u64;
    let mut buckets: Vec<Bucket> = Vec::new();
    for b in &d.buckets {
        let (low, high) = (s(b.low), s(b.high).max(s(b.low)));
        match buckets.last_mut() {
            // Rounding can make small buckets meet: merge rather than overlap.
            Some(last) if low <= last.high => {
                last.high = last.high.max(high);
                last.count += b.count;
            }
            _ => buckets.push(Bucket {
                low,
                high,
                count: b.count,
            }),
        }
    }
    Distribution::from_buckets(buckets)
}

#[cfg(test)]
#[path = "scenario_tests.rs"]
mod tests;
