//! K-fold cross-validated error of the KPI model, per KPI: how far its predictions for trials
//! it did not see are from their measurements, and whether its error estimate is honest (how
//! many measurements fall within two predicted sigmas).

use std::fmt;

use serde::Serialize;

use crate::{
    kpi_model::{ALL_KPIS, KpiModel, ModelError, STABLE_ERROR_RATE},
    trial::{KpiName, TrialRecord},
};

/// One KPI's cross-validated error.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KpiCvError {
    pub kpi: KpiName,
    /// Mean absolute percentage error over the held-out trials with a non-zero measurement
    /// (`None` when every measurement was zero, e.g. an error rate that never left 0).
    pub mape: Option<f64>,
    /// The same over the held-out trials that did not fail requests (measured error rate below
    /// [`STABLE_ERROR_RATE`]): an overload cliff (latency ×100 from one load step to the next)
    /// dominates `mape`, while the policy only ranks configurations that hold the load.
    pub mape_stable: Option<f64>,
    /// Root mean squared error, in the KPI's unit.
    pub rmse: f64,
    /// Share of held-out measurements within two predicted sigmas (≈0.95 when the error
    /// estimate is honest).
    pub coverage_2sigma: f64,
    /// The same over the stable held-out trials (latency models are fitted on stable trials
    /// only, so an overloaded trial's latency is not what they predict).
    pub coverage_2sigma_stable: f64,
    pub predictions: usize,
}

/// The model's cross-validated error on one set of trials.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CvReport {
    pub folds: usize,
    pub trials: usize,
    pub per_kpi: Vec<KpiCvError>,
}

impl CvReport {
    pub fn get(&self, kpi: KpiName) -> Option<&KpiCvError> {
        self.per_kpi.iter().find(|e| e.kpi == kpi)
    }
}

impl fmt::Display for CvReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "KPI model, {}-fold cross-validation over {} trials",
            self.folds, self.trials
        )?;
        writeln!(
            f,
            "{:<16} {:>9} {:>13} {:>14} {:>10} {:>10}",
            "kpi", "MAPE", "MAPE stable", "RMSE", "in 2σ", "in 2σ st."
        )?;
        for e in &self.per_kpi {
            let pct = |m: Option<f64>| {
                m.map_or_else(|| "n/a".to_owned(), |m| format!("{:.1}%", m * 100.0))
            };
            writeln!(
                f,
                "{:<16} {:>9} {:>13} {:>14.4} {:>9.0}% {:>9.0}%",
                serde_json::to_value(e.kpi)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                pct(e.mape),
                pct(e.mape_stable),
                e.rmse,
                e.coverage_2sigma * 100.0,
                e.coverage_2sigma_stable * 100.0
            )?;
        }
        Ok(())
    }
}

/// K-fold cross-validation: trial i is in fold i mod `folds` (the caller's order, usually
/// time, interleaves loads and parameters across folds); each fold is predicted by a model
/// fitted to the others. Early-stopped trials are neither fitted nor scored.
pub fn cross_validate(records: &[TrialRecord], folds: usize) -> Result<CvReport, ModelError> {
    let usable: Vec<&TrialRecord> = records.iter().filter(|r| !r.early_stopped).collect();
    let folds = folds.clamp(2, usable.len().max(2));
    if usable.len() < folds + 3 {
        return Err(ModelError::TooFewTrials {
            needed: folds + 3,
            got: usable.len(),
        });
    }
    // (measured, predicted, sigma) per KPI, and whether the trial was stable.
    let mut pairs: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); ALL_KPIS.len()];
    let mut stable: Vec<bool> = Vec::new();
    for fold in 0..folds {
        let train: Vec<TrialRecord> = usable
            .iter()
            .enumerate()
            .filter(|(i, _)| i % folds != fold)
            .map(|(_, r)| (*r).clone())
            .collect();
        let model = KpiModel::fit(&train)?;
        for r in usable.iter().skip(fold).step_by(folds) {
            let p = model.predict(&r.load, &r.params);
            stable.push(r.kpis.error_rate < STABLE_ERROR_RATE);
            for (slot, kpi) in pairs.iter_mut().zip(ALL_KPIS) {
                let predicted = p.get(kpi);
                slot.push((kpi.value(&r.kpis), predicted.value, predicted.error));
            }
        }
    }
    let per_kpi = ALL_KPIS
        .iter()
        .zip(&pairs)
        .map(|(&kpi, pairs)| {
            let n = pairs.len().max(1) as f64;
            let rmse = (pairs.iter().map(|(m, p, _)| (m - p).powi(2)).sum::<f64>() / n).sqrt();
            let nonzero: Vec<f64> = pairs
                .iter()
                .filter(|(m, _, _)| m.abs() > 0.0)
                .map(|(m, p, _)| ((m - p) / m).abs())
                .collect();
            let mape = mean(&nonzero);
            let nonzero_stable: Vec<f64> = pairs
                .iter()
                .zip(&stable)
                .filter(|((m, _, _), s)| **s && m.abs() > 0.0)
                .map(|((m, p, _), _)| ((m - p) / m).abs())
                .collect();
            let mape_stable = mean(&nonzero_stable);
            let within = |(m, p, s): &(f64, f64, f64)| (m - p).abs() <= 2.0 * s + 1e-12;
            let covered = pairs.iter().filter(|t| within(t)).count();
            let stable_pairs: Vec<&(f64, f64, f64)> = pairs
                .iter()
                .zip(&stable)
                .filter(|(_, s)| **s)
                .map(|(t, _)| t)
                .collect();
            let covered_stable = stable_pairs.iter().filter(|t| within(t)).count();
            KpiCvError {
                kpi,
                mape,
                mape_stable,
                rmse,
                coverage_2sigma: covered as f64 / n,
                coverage_2sigma_stable: covered_stable as f64 / stable_pairs.len().max(1) as f64,
                predictions: pairs.len(),
            }
        })
        .collect();
    Ok(CvReport {
        folds,
        trials: usable.len(),
        per_kpi,
    })
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{grid_records, load, surface};
    use crate::trial::{ParamValue, Params};

    #[test]
    fn the_model_predicts_an_unseen_configuration_of_the_known_surface() {
        let records = grid_records();
        let model = KpiModel::fit(&records).expect("fit");
        // Between the grid's keep-alive values and between two load levels.
        let mut params = Params::new();
        params.insert("workers".into(), ParamValue::Int(4));
        params.insert("gzip".into(), ParamValue::Choice("off".into()));
        params.insert("keepalive_s".into(), ParamValue::Float(20.0));
        let rate = 560.0;
        let truth = surface(rate, 4, "off", 20.0).p99_ms;
        let p = model.predict(&load(rate), &params).get(KpiName::P99Ms);
        assert!(
            ((p.value - truth) / truth).abs() < 0.15,
            "predicted {p:?}, true {truth}"
        );
        // Far outside the data the error estimate grows.
        let far = model.predict(&load(200_000.0), &params).get(KpiName::P99Ms);
        assert!(far.error > 3.0 * p.error, "near {p:?}, far {far:?}");
    }

    #[test]
    fn cross_validation_reports_every_kpi_with_an_honest_error_estimate() {
        let records = grid_records();
        let report = cross_validate(&records, 5).expect("cv");
        eprintln!("{report}");
        assert_eq!(report.per_kpi.len(), ALL_KPIS.len());
        assert_eq!(report.trials, records.len());
        let p99 = report.get(KpiName::P99Ms).expect("p99");
        assert_eq!(p99.predictions, records.len());
        let mape = p99.mape_stable.expect("p99 is never zero");
        assert!(mape < 0.15, "p99 MAPE on stable trials {mape}");
        assert!(p99.mape.is_some_and(|all| all >= mape));
        assert!(p99.coverage_2sigma_stable > 0.8, "{p99:?}");
        // The synthetic RSS is constant: predicted exactly, MAPE ~0.
        let rss = report.get(KpiName::RssBytes).expect("rss");
        assert!(rss.mape.is_some_and(|m| m < 1e-6), "{rss:?}");
        assert!(report.to_string().contains("p99_ms"));
    }

    #[test]
    fn too_few_trials_is_an_error() {
        let records = grid_records();
        assert!(matches!(
            cross_validate(&records[..4], 5),
            Err(ModelError::TooFewTrials { .. })
        ));
        assert!(KpiModel::fit(&records[..2]).is_err());
    }
}
