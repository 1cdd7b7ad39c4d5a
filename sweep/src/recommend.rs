//! When to recommend new parameters: the forecast load moves into a region where other
//! parameters win by more than a configured margin.
//!
//! The gain compares the current and the recommended parameters on the policy's own footing
//! at the forecast load: their weighted mean relative regret over the same neighbours (or the
//! model's predictions), as the cost ratio (1 + regret_current) / (1 + regret_recommended) − 1.
//! 0.2 means the current parameters are expected to cost 20% more. Current parameters that are
//! infeasible there (they fail requests) have an infinite regret: always recommended away
//! from. Parameters the policy cannot score are kept (no evidence is no reason to change).
//!
//! The [`Recommender`] remembers what it last recommended per service, so a forecast that stays
//! in the same region does not repeat the recommendation every tick.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    canary::CanaryPlan,
    events::{ForecastLoad, RecommendationData, RecommendationEvent, SWEEP_EVENT_DATA_VERSION},
    policy::{Policy, PolicyError, params_key},
    trial::Params,
};

/// What the recommender needs to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecommendConfig {
    /// CloudEvents `source` of the events.
    pub source: String,
    /// Recommend only when the expected gain exceeds this (0.1 = 10%).
    pub margin: f64,
    /// The canary plan sent with every recommendation.
    pub canary: CanaryPlan,
}

impl Default for RecommendConfig {
    fn default() -> Self {
        Self {
            source: "urn:shadowtap:sweep".to_owned(),
            margin: 0.10,
            canary: CanaryPlan::default(),
        }
    }
}

/// What [`Recommender::consider`] concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Publish this.
    Recommend(Box<RecommendationEvent>),
    /// Keep the current parameters; why.
    Keep(String),
}

/// The expected gain of parameters with `recommended_regret` over ones with `current_regret`
/// (see the module docs).
pub fn expected_gain(current_regret: f64, recommended_regret: f64) -> f64 {
    if current_regret.is_infinite() {
        return f64::INFINITY;
    }
    (1.0 + current_regret) / (1.0 + recommended_regret).max(1e-12) - 1.0
}

/// Decides recommendations, one service at a time, and remembers the last one.
#[derive(Debug, Default)]
pub struct Recommender {
    config: RecommendConfig,
    /// Per service: the parameters last recommended.
    last: BTreeMap<String, String>,
}

impl Recommender {
    pub fn new(config: RecommendConfig) -> Self {
        Self {
            config,
            last: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &RecommendConfig {
        &self.config
    }

    /// Should `service`, running `current`, change parameters for `forecast`?
    pub fn consider(
        &mut self,
        policy: &Policy,
        service: &str,
        current: &Params,
        forecast: &ForecastLoad,
        now_ms: u64,
    ) -> Result<Verdict, PolicyError> {
        let answer = policy.recommend(&forecast.load)?;
        if params_key(&answer.params) == params_key(current) {
            self.last.remove(service);
            return Ok(Verdict::Keep(
                "the current parameters are the best known at the forecast load".to_owned(),
            ));
        }
        let Some(recommended_score) = policy.score(&answer.params, &forecast.load) else {
            return Ok(Verdict::Keep(
                "the policy's answer cannot be scored at the forecast load".to_owned(),
            ));
        };
        let current_score = policy.score(current, &forecast.load);
        let Some(current_standing) = current_score else {
            return Ok(Verdict::Keep(
                "the current parameters were never measured near the forecast load and \
                 there is no model to predict them"
                    .to_owned(),
            ));
        };
        let gain = expected_gain(
            current_standing.relative_regret,
            recommended_score.relative_regret,
        );
        if gain <= self.config.margin {
            return Ok(Verdict::Keep(format!(
                "expected gain {:.1}% is within the margin of {:.1}%",
                gain * 100.0,
                self.config.margin * 100.0
            )));
        }
        let key = params_key(&answer.params);
        if self.last.get(service) == Some(&key) {
            return Ok(Verdict::Keep(
                "already recommended these parameters for this service".to_owned(),
            ));
        }
        self.last.insert(service.to_owned(), key);
        let data = RecommendationData {
            schema_version: SWEEP_EVENT_DATA_VERSION,
            service: service.to_owned(),
            objective: *policy.objective(),
            forecast: forecast.clone(),
            current_params: current.clone(),
            recommended_params: answer.params,
            current_score,
            recommended_score,
            improvement: gain.is_finite().then_some(gain),
            margin: self.config.margin,
            explanation: answer.explanation,
            canary: self.config.canary.clone(),
            decided_at_ms: now_ms,
        };
        Ok(Verdict::Recommend(Box::new(
            RecommendationEvent::recommendation(&self.config.source, data),
        )))
    }

    /// The canary rolled back: forget the recommendation so the same one may be made again
    /// once the policy has learnt more (a new sweep), instead of being suppressed forever.
    pub fn rolled_back(&mut self, service: &str) {
        self.last.remove(service);
    }
}

#[cfg(test)]
#[path = "recommend_tests.rs"]
mod tests;
