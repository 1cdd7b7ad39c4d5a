//! The load→parameters policy: given the current or forecast load profile, the best known
//! parameters, by weighted k-nearest neighbours over load features, and by the KPI model where
//! no measured load is close enough. Every answer carries its explanation.
//!
//! **Load levels.** Trials are grouped by the load profile they ran at (rate, concurrency,
//! sizes and mix equal to 3 decimals of their logarithms / shares); each level knows the
//! objective cost of every parameter set measured there (the mean over repeated trials).
//!
//! **Distance.** A load is the vector of [`FeatureEncoder`] load columns: ln rate,
//! ln concurrency, ln mean request and response size, and the share of each endpoint template,
//! each standardised by its mean and standard deviation over the store's distinct load levels
//! (so a level with many trials does not weigh more, and a feature the sweep never varied
//! drops out). The distance is Euclidean in that space: 1.0 is one standard deviation of the
//! sweep's own load spread. Logarithms, because a service responds to load ratios: 100→200 rps
//! is as far as 1000→2000 rps.
//!
//! **Choice.** The k nearest levels within `max_distance` are the neighbours, weighted
//! 1/(d + 0.05)² (an exact match dominates; 0.05 keeps the weight finite). Each parameter set
//! measured at any neighbour is a candidate, scored by its weighted mean *relative regret*
//! (cost / the neighbour's optimum − 1, so a high-load neighbour with large latencies does not
//! outweigh a low-load one). Where a candidate was not measured at a neighbour the KPI model
//! predicts its cost there; a candidate covering less than half the neighbour weight is not
//! scored. The lowest weighted regret wins. With no neighbour in range, every known parameter
//! set is predicted at the load by the KPI model and the lowest predicted cost plus one sigma
//! wins (conservative: a guess that might be bad loses to a sure one that is nearly as good).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    features::FeatureEncoder,
    kpi_model::{KpiModel, KpiPrediction, ModelError, Predicted},
    trial::{LoadFeatures, Objective, Params, TrialRecord},
};

/// Tuning of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// Neighbours used at most.
    pub k: usize,
    /// Farthest neighbour used, in standardised load units (see the module docs).
    pub max_distance: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            k: 4,
            max_distance: 1.0,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("no completed, feasible trials to learn a policy from")]
    NoTrials,
    #[error("no load level within {max_distance} and no KPI model ({model})")]
    NoAnswer { max_distance: f64, model: String },
}

/// Where a cost came from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CostSource {
    /// The mean of `trials` measured trials.
    Measured { trials: usize },
    /// The KPI model's prediction, with its one-sigma error.
    Predicted {
        #[serde(with = "crate::json_f64")]
        error: f64,
    },
}

/// One neighbour the answer used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighbourUsed {
    pub load: LoadFeatures,
    pub distance: f64,
    /// Normalised weight (the neighbours' weights sum to 1).
    pub weight: f64,
    /// The best parameters measured at that load and their cost.
    pub best_params: Params,
    pub best_cost: f64,
    /// The recommended parameters' cost there.
    #[serde(with = "crate::json_f64")]
    pub chosen_cost: f64,
    pub chosen_cost_source: CostSource,
}

/// Why the policy answered as it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Explanation {
    Neighbours {
        neighbours: Vec<NeighbourUsed>,
        /// Weighted mean relative regret of the answer over the neighbours.
        #[serde(with = "crate::json_f64")]
        relative_regret: f64,
        candidates_scored: usize,
    },
    Model {
        prediction: KpiPrediction,
        cost: Predicted,
        /// The nearest measured load's distance (beyond `max_distance`, or none at all).
        nearest_distance: Option<f64>,
        max_distance: f64,
        candidates_scored: usize,
    },
}

/// The policy's answer for one load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub params: Params,
    pub explanation: Explanation,
}

/// A parameter set's expected standing at a load (see [`Policy::score`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Weighted mean cost over the neighbours (or the model's prediction).
    #[serde(with = "crate::json_f64")]
    pub cost: f64,
    /// Weighted mean relative regret against each neighbour's optimum (or against the best
    /// predicted candidate).
    #[serde(with = "crate::json_f64")]
    pub relative_regret: f64,
}

/// Mean cost and trial count per parameter set, keyed by its canonical JSON.
type CostsByParams = BTreeMap<String, (Params, f64, usize)>;
/// A candidate's score, the candidate, and its cost at each neighbour.
type Scored<'a> = (Score, &'a Params, Vec<(f64, CostSource)>);

#[derive(Debug, Clone)]
struct LoadLevel {
    load: LoadFeatures,
    x: Vec<f64>,
    /// Mean cost and trial count per parameter set, keyed by its canonical JSON.
    costs: BTreeMap<String, (Params, f64, usize)>,
    best_key: String,
    best_cost: f64,
}

/// The fitted policy.
#[derive(Debug, Clone)]
pub struct Policy {
    objective: Objective,
    config: PolicyConfig,
    encoder: FeatureEncoder,
    levels: Vec<LoadLevel>,
    model: Result<KpiModel, ModelError>,
    candidates: BTreeMap<String, Params>,
}

/// The grouping key of a load profile (see the module docs).
pub fn load_key(load: &LoadFeatures) -> String {
    use std::fmt::Write as _;
    let ln = |v: f64| v.max(1e-6).ln();
    let mut key = format!(
        "{:.3}/{:.3}/{:.3}/{:.3}",
        ln(load.rate_rps),
        ln(load.concurrency),
        ln(load.mean_request_bytes),
        ln(load.mean_response_bytes)
    );
    for (endpoint, share) in &load.mix {
        let _ = write!(key, "/{endpoint}={share:.3}");
    }
    key
}

pub(crate) fn params_key(params: &Params) -> String {
    serde_json::to_string(params).unwrap_or_default()
}

impl Policy {
    /// Learns the policy from completed trials (early-stopped ones are ignored) and fits the
    /// KPI model on the same trials.
    pub fn fit(
        records: &[TrialRecord],
        objective: Objective,
        config: PolicyConfig,
    ) -> Result<Self, PolicyError> {
        let usable: Vec<&TrialRecord> = records.iter().filter(|r| !r.early_stopped).collect();
        let mut grouped: BTreeMap<String, (LoadFeatures, CostsByParams)> = BTreeMap::new();
        let mut candidates = BTreeMap::new();
        for r in &usable {
            let key = params_key(&r.params);
            candidates.insert(key.clone(), r.params.clone());
            let level = grouped
                .entry(load_key(&r.load))
                .or_insert_with(|| (r.load.clone(), BTreeMap::new()));
            let slot = level.1.entry(key).or_insert((r.params.clone(), 0.0, 0));
            slot.1 += objective.cost(&r.kpis);
            slot.2 += 1;
        }
        let loads: Vec<&LoadFeatures> = grouped.values().map(|(l, _)| l).collect();
        let encoder = FeatureEncoder::fit_load(&loads);
        let mut levels = Vec::new();
        for (load, mut costs) in grouped.into_values() {
            for slot in costs.values_mut() {
                slot.1 /= slot.2 as f64;
            }
            let best = costs
                .iter()
                .filter(|(_, s)| s.1.is_finite())
                .min_by(|a, b| a.1.1.total_cmp(&b.1.1).then_with(|| a.0.cmp(b.0)));
            let Some((best_key, best)) = best else {
                continue; // nothing feasible was measured at this load
            };
            let (best_key, best_cost) = (best_key.clone(), best.1);
            levels.push(LoadLevel {
                x: encoder.encode(&load, None),
                load,
                costs,
                best_key,
                best_cost,
            });
        }
        if levels.is_empty() {
            return Err(PolicyError::NoTrials);
        }
        let owned: Vec<TrialRecord> = usable.into_iter().cloned().collect();
        Ok(Self {
            objective,
            config,
            encoder,
            levels,
            model: KpiModel::fit(&owned),
            candidates,
        })
    }

    /// The KPI model fitted with the policy, when there were enough trials.
    pub fn model(&self) -> Option<&KpiModel> {
        self.model.as_ref().ok()
    }

    pub fn objective(&self) -> &Objective {
        &self.objective
    }

    /// Distance from `load` to every measured level, nearest first.
    fn nearest(&self, load: &LoadFeatures) -> Vec<(f64, &LoadLevel)> {
        let x = self.encoder.encode(load, None);
        let mut out: Vec<(f64, &LoadLevel)> = self
            .levels
            .iter()
            .map(|l| {
                let d2: f64 = l.x.iter().zip(&x).map(|(a, b)| (a - b).powi(2)).sum();
                (d2.sqrt(), l)
            })
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    /// The neighbours in range with normalised weights.
    fn neighbours(&self, load: &LoadFeatures) -> (Vec<(f64, f64, &LoadLevel)>, Option<f64>) {
        let all = self.nearest(load);
        let nearest = all.first().map(|(d, _)| *d);
        let used: Vec<(f64, &LoadLevel)> = all
            .into_iter()
            .filter(|(d, _)| *d <= self.config.max_distance)
            .take(self.config.k.max(1))
            .collect();
        let raw: Vec<f64> = used.iter().map(|(d, _)| 1.0 / (d + 0.05).powi(2)).collect();
        let total: f64 = raw.iter().sum();
        let weighted = used
            .into_iter()
            .zip(raw)
            .map(|((d, l), w)| (d, w / total, l))
            .collect();
        (weighted, nearest)
    }

    /// A candidate's cost at one level: measured, else predicted.
    fn cost_at(&self, level: &LoadLevel, key: &str, params: &Params) -> Option<(f64, CostSource)> {
        if let Some((_, cost, trials)) = level.costs.get(key) {
            return Some((*cost, CostSource::Measured { trials: *trials }));
        }
        let model = self.model.as_ref().ok()?;
        let p = model.predict(&level.load, params).cost(&self.objective);
        Some((p.value, CostSource::Predicted { error: p.error }))
    }

    /// Weighted regret and cost of `params` over `neighbours`, with the per-neighbour costs;
    /// `None` when it covers less than half the weight.
    fn score_over(
        &self,
        neighbours: &[(f64, f64, &LoadLevel)],
        params: &Params,
    ) -> Option<(Score, Vec<(f64, CostSource)>)> {
        let key = params_key(params);
        let (mut regret, mut cost, mut covered) = (0.0, 0.0, 0.0);
        let mut per = Vec::with_capacity(neighbours.len());
        for (_, w, level) in neighbours {
            let Some((c, source)) = self.cost_at(level, &key, params) else {
                per.push((
                    f64::NAN,
                    CostSource::Predicted {
                        error: f64::INFINITY,
                    },
                ));
                continue;
            };
            regret += w * (c - level.best_cost) / level.best_cost.abs().max(1e-12);
            cost += w * c;
            covered += w;
            per.push((c, source));
        }
        (covered >= 0.5).then(|| {
            (
                Score {
                    cost: cost / covered,
                    relative_regret: regret / covered,
                },
                per,
            )
        })
    }

    /// How `params` is expected to do at `load`: over the neighbours when there are any in
    /// range, else by the model. `None` when neither can say.
    pub fn score(&self, params: &Params, load: &LoadFeatures) -> Option<Score> {
        let (neighbours, _) = self.neighbours(load);
        if !neighbours.is_empty() {
            return self.score_over(&neighbours, params).map(|(s, _)| s);
        }
        let model = self.model.as_ref().ok()?;
        let best = self.model_ranking(model, load).first()?.1.value;
        let cost = model.predict(load, params).cost(&self.objective).value;
        Some(Score {
            cost,
            relative_regret: (cost - best) / best.abs().max(1e-12),
        })
    }

    /// Every known parameter set by predicted cost + one sigma at `load`, best first.
    fn model_ranking(&self, model: &KpiModel, load: &LoadFeatures) -> Vec<(&Params, Predicted)> {
        let mut ranked: Vec<(&Params, Predicted)> = self
            .candidates
            .values()
            .map(|p| (p, model.predict(load, p).cost(&self.objective)))
            .collect();
        ranked.sort_by(|a, b| (a.1.value + a.1.error).total_cmp(&(b.1.value + b.1.error)));
        ranked
    }

    /// The best known parameters for `load`, with the explanation.
    pub fn recommend(&self, load: &LoadFeatures) -> Result<Answer, PolicyError> {
        let (neighbours, nearest) = self.neighbours(load);
        if !neighbours.is_empty() {
            let mut keys: Vec<&String> = neighbours
                .iter()
                .flat_map(|(_, _, l)| l.costs.keys())
                .collect();
            keys.sort();
            keys.dedup();
            let mut best: Option<Scored<'_>> = None;
            let mut scored = 0;
            for key in keys {
                let params = &self.candidates[key.as_str()];
                let Some((score, per)) = self.score_over(&neighbours, params) else {
                    continue;
                };
                scored += 1;
                if best
                    .as_ref()
                    .is_none_or(|(b, _, _)| score.relative_regret < b.relative_regret)
                {
                    best = Some((score, params, per));
                }
            }
            if let Some((score, params, per)) = best {
                let used = neighbours
                    .iter()
                    .zip(per)
                    .map(|((d, w, level), (cost, source))| NeighbourUsed {
                        load: level.load.clone(),
                        distance: *d,
                        weight: *w,
                        best_params: level.costs[&level.best_key].0.clone(),
                        best_cost: level.best_cost,
                        chosen_cost: cost,
                        chosen_cost_source: source,
                    })
                    .collect();
                return Ok(Answer {
                    params: params.clone(),
                    explanation: Explanation::Neighbours {
                        neighbours: used,
                        relative_regret: score.relative_regret,
                        candidates_scored: scored,
                    },
                });
            }
        }
        let model = self.model.as_ref().map_err(|e| PolicyError::NoAnswer {
            max_distance: self.config.max_distance,
            model: e.to_string(),
        })?;
        let ranking = self.model_ranking(model, load);
        let (params, cost) = ranking.first().ok_or(PolicyError::NoTrials)?;
        Ok(Answer {
            params: (*params).clone(),
            explanation: Explanation::Model {
                prediction: model.predict(load, params),
                cost: *cost,
                nearest_distance: nearest,
                max_distance: self.config.max_distance,
                candidates_scored: ranking.len(),
            },
        })
    }
}

pub use crate::policy_eval::{
    HeldOutReport, format_held_out, held_out_all, held_out_evaluation, held_out_evaluation_with,
};
