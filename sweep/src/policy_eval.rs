//! Held-out evaluation of the policy (issue 16's goal: the recommendation for a held-out load
//! profile is within 10% of that profile's own optimum).
//!
//! One load level's trials are removed, the policy is fitted on the rest and asked for that
//! load; the recommendation's true cost is what the held-out trials themselves measured for
//! those parameters, compared with the best the held-out trials measured.

use serde::Serialize;

use crate::{
    policy::{Answer, Policy, PolicyConfig, PolicyError, load_key, params_key},
    trial::{LoadFeatures, Objective, Params, TrialRecord},
};

/// The goal: the recommendation's true cost within this fraction of the optimum.
pub const HELD_OUT_GOAL: f64 = 0.10;

/// The outcome of holding one load level out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldOutReport {
    pub held_out_load: LoadFeatures,
    /// Trials at that load (removed from the policy's training).
    pub held_out_trials: usize,
    pub answer: Answer,
    /// Mean measured cost of the recommended parameters at the held-out load; `None` when the
    /// held-out trials never measured them.
    pub recommended_true_cost: Option<f64>,
    pub optimum_params: Params,
    pub optimum_cost: f64,
    /// (recommended − optimum) / |optimum|.
    pub relative_gap: Option<f64>,
    /// `relative_gap` ≤ [`HELD_OUT_GOAL`].
    pub within_goal: bool,
}

/// [`held_out_evaluation_with`] with the default [`PolicyConfig`].
pub fn held_out_evaluation(
    records: &[TrialRecord],
    objective: &Objective,
    held_out_load: &LoadFeatures,
) -> Result<HeldOutReport, PolicyError> {
    held_out_evaluation_with(records, objective, held_out_load, PolicyConfig::default())
}

/// Removes the trials at `held_out_load` (same [`load_key`]), fits the policy on the rest,
/// asks it for that load and scores the answer against the held-out trials' own measurements.
pub fn held_out_evaluation_with(
    records: &[TrialRecord],
    objective: &Objective,
    held_out_load: &LoadFeatures,
    config: PolicyConfig,
) -> Result<HeldOutReport, PolicyError> {
    let key = load_key(held_out_load);
    let (held, train): (Vec<TrialRecord>, Vec<TrialRecord>) = records
        .iter()
        .filter(|r| !r.early_stopped)
        .cloned()
        .partition(|r| load_key(&r.load) == key);
    let mut measured: std::collections::BTreeMap<String, (Params, f64, usize)> =
        std::collections::BTreeMap::new();
    for r in &held {
        let slot = measured
            .entry(params_key(&r.params))
            .or_insert((r.params.clone(), 0.0, 0));
        slot.1 += objective.cost(&r.kpis);
        slot.2 += 1;
    }
    let (optimum_params, optimum_cost) = measured
        .values()
        .map(|(p, sum, n)| (p, sum / *n as f64))
        .filter(|(_, c)| c.is_finite())
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(p, c)| (p.clone(), c))
        .ok_or(PolicyError::NoTrials)?;
    let policy = Policy::fit(&train, *objective, config)?;
    let answer = policy.recommend(held_out_load)?;
    let recommended_true_cost = measured
        .get(&params_key(&answer.params))
        .map(|(_, sum, n)| sum / *n as f64);
    let relative_gap =
        recommended_true_cost.map(|c| (c - optimum_cost) / optimum_cost.abs().max(1e-12));
    Ok(HeldOutReport {
        held_out_load: held_out_load.clone(),
        held_out_trials: held.len(),
        answer,
        recommended_true_cost,
        optimum_params,
        optimum_cost,
        relative_gap,
        within_goal: relative_gap.is_some_and(|g| g <= HELD_OUT_GOAL),
    })
}

/// Every load level held out in turn (the first and last by rate are included: the policy then
/// extrapolates, which is worth knowing too). Levels whose evaluation fails are reported as
/// the error text.
pub fn held_out_all(
    records: &[TrialRecord],
    objective: &Objective,
    config: PolicyConfig,
) -> Vec<(LoadFeatures, Result<HeldOutReport, String>)> {
    let mut levels: Vec<&LoadFeatures> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in records.iter().filter(|r| !r.early_stopped) {
        if seen.insert(load_key(&r.load)) {
            levels.push(&r.load);
        }
    }
    levels.sort_by(|a, b| a.rate_rps.total_cmp(&b.rate_rps));
    levels
        .into_iter()
        .map(|l| {
            let report =
                held_out_evaluation_with(records, objective, l, config).map_err(|e| e.to_string());
            (l.clone(), report)
        })
        .collect()
}

/// One line per held-out level: rate, method, gap to the optimum, goal met.
pub fn format_held_out(reports: &[(LoadFeatures, Result<HeldOutReport, String>)]) -> String {
    use std::fmt::Write as _;
    let mut out =
        String::from("held-out load    method      recommended   optimum      gap   ≤10%\n");
    for (load, report) in reports {
        let _ = match report {
            Ok(r) => {
                let method = match r.answer.explanation {
                    crate::policy::Explanation::Neighbours { .. } => "neighbours",
                    crate::policy::Explanation::Model { .. } => "model",
                };
                writeln!(
                    out,
                    "{:>9.1} rps   {method:<10} {:>12} {:>9.3} {:>8} {:>6}",
                    load.rate_rps,
                    r.recommended_true_cost
                        .map_or_else(|| "unmeasured".to_owned(), |c| format!("{c:.3}")),
                    r.optimum_cost,
                    r.relative_gap
                        .map_or_else(|| "-".to_owned(), |g| format!("{:.1}%", g * 100.0)),
                    if r.within_goal { "yes" } else { "no" }
                )
            }
            Err(e) => writeln!(out, "{:>9.1} rps   error: {e}", load.rate_rps),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{CostSource, Explanation};
    use crate::synthetic::{grid_records, load, load_levels};
    use crate::trial::{KpiName, ParamValue};

    fn p99() -> Objective {
        Objective {
            kpi: KpiName::P99Ms,
            max_error_rate: 0.01,
        }
    }

    fn workers(p: &Params) -> i64 {
        match p.get("workers") {
            Some(ParamValue::Int(w)) => *w,
            other => panic!("workers: {other:?}"),
        }
    }

    #[test]
    fn a_measured_load_gets_its_own_optimum_explained_by_its_neighbours() {
        let records = grid_records();
        let policy = Policy::fit(&records, p99(), PolicyConfig::default()).expect("fit");
        for rate in [100.0, 800.0, 3200.0] {
            let answer = policy.recommend(&load(rate)).expect("answer");
            let Explanation::Neighbours { neighbours, .. } = &answer.explanation else {
                panic!("expected neighbours: {answer:?}");
            };
            // The exact level is the nearest, at distance 0, with most of the weight, and the
            // answer is what was measured best there.
            let own = &neighbours[0];
            assert!(own.distance < 1e-9 && own.weight > 0.5, "{own:?}");
            assert_eq!(answer.params, own.best_params, "at {rate}");
            assert!(matches!(
                own.chosen_cost_source,
                CostSource::Measured { trials: 1 }
            ));
            assert!(
                neighbours
                    .windows(2)
                    .all(|w| w[0].distance <= w[1].distance)
            );
        }
        // The known surface: more load needs more workers.
        let low = workers(&policy.recommend(&load(100.0)).expect("low").params);
        let high = workers(&policy.recommend(&load(3200.0)).expect("high").params);
        assert!(low < high, "low {low}, high {high}");
    }

    #[test]
    fn a_load_far_from_every_measurement_is_answered_by_the_model_with_its_error() {
        let records = grid_records();
        let policy = Policy::fit(&records, p99(), PolicyConfig::default()).expect("fit");
        // Responses 16 times larger than any measured: no neighbour in range.
        let mut far = load(800.0);
        far.mean_response_bytes *= 16.0;
        let answer = policy.recommend(&far).expect("answer");
        let Explanation::Model {
            cost,
            nearest_distance,
            max_distance,
            candidates_scored,
            ..
        } = &answer.explanation
        else {
            panic!("expected the model: {answer:?}");
        };
        assert!(nearest_distance.is_some_and(|d| d > *max_distance));
        assert!(cost.value.is_finite() && cost.error > 0.0, "{cost:?}");
        assert_eq!(*candidates_scored, 20);
        // The model knows it is guessing: its error there is larger than at a measured load.
        let near = policy
            .model()
            .expect("model")
            .predict(&load(800.0), &answer.params)
            .cost(&p99());
        assert!(cost.error > 2.0 * near.error, "far {cost:?}, near {near:?}");
    }

    #[test]
    fn every_interior_held_out_load_is_within_ten_percent_of_its_optimum() {
        let records = grid_records();
        let levels = load_levels();
        for &rate in &levels[1..levels.len() - 1] {
            let report = held_out_evaluation(&records, &p99(), &load(rate)).expect("evaluation");
            eprintln!(
                "rate {rate:.0}: recommended workers {} cost {:?}, optimum workers {} cost {:.3}, gap {:?}",
                workers(&report.answer.params),
                report.recommended_true_cost,
                workers(&report.optimum_params),
                report.optimum_cost,
                report.relative_gap
            );
            assert_eq!(report.held_out_trials, 20);
            // The held-out level itself is not among the neighbours.
            if let Explanation::Neighbours { neighbours, .. } = &report.answer.explanation {
                assert!(neighbours.iter().all(|n| n.distance > 1e-6));
            }
            assert!(report.within_goal, "{report:#?}");
        }
        let all = held_out_all(&records, &p99(), PolicyConfig::default());
        assert_eq!(all.len(), levels.len());
        let table = format_held_out(&all);
        eprintln!("{table}");
        assert_eq!(table.lines().count(), levels.len() + 1);
    }

    #[test]
    fn without_a_close_neighbour_or_model_there_is_no_answer() {
        let records: Vec<TrialRecord> = grid_records().into_iter().take(2).collect();
        let config = PolicyConfig {
            k: 2,
            max_distance: 0.1,
        };
        let policy = Policy::fit(&records, p99(), config).expect("fit");
        assert!(policy.model().is_none());
        let err = policy.recommend(&load(50_000.0)).expect_err("no answer");
        assert!(matches!(err, PolicyError::NoAnswer { .. }), "{err}");
    }
}
